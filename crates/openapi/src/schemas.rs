//! The definitions of the built-in kinds, generated from `k8s-openapi`'s `schemars`
//! implementations and completed with what upstream's documents carry and `k8s-openapi` leaves
//! out: the Kubernetes extensions (from [`crate::extensions`]), the list kinds, and the
//! `x-kubernetes-group-version-kind` markers.
//!
//! Definitions are kept in one neutral ("base") form: references are `#/definitions/<name>` and
//! may carry sibling keywords (a description, extensions), exactly as OpenAPI v2 allows. The v2
//! and v3 renderers ([`to_v2`], [`to_v3`]) derive the served shapes from it.

use std::collections::BTreeSet;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::extensions::{FIELD_EXTENSIONS, TYPE_MAP_TYPES};

pub(crate) const DEF_PREFIX: &str = "#/definitions/";
pub(crate) const V3_PREFIX: &str = "#/components/schemas/";

pub(crate) const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
pub(crate) const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
pub(crate) const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
pub(crate) const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
pub(crate) const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
pub(crate) const WATCH_EVENT: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent";
pub(crate) const API_RESOURCE_LIST: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.APIResourceList";
pub(crate) const SCALE: &str = "io.k8s.api.autoscaling.v1.Scale";
const INT_OR_STRING: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
const APIEXT: &str = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1";

/// Meta definitions every group-version document carries (the operations refer to them).
pub(crate) const META_ROOTS: &[&str] = &[
    DELETE_OPTIONS,
    STATUS,
    PATCH,
    WATCH_EVENT,
    API_RESOURCE_LIST,
];

pub(crate) type Defs = Map<String, Value>;

macro_rules! roots {
    ($gen:ident; $($t:ty),* $(,)?) => { $( let _ = $gen.subschema_for::<$t>(); )* };
}

/// Every definition reachable from the kinds Berth knows about, in base form, without
/// extensions or GVK markers yet.
fn generate() -> Defs {
    use k8s_openapi::api as a;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/definitions".into();
        s.meta_schema = None;
        s.transforms = Vec::new();
    });
    let mut g = settings.into_generator();
    roots!(g;
        a::core::v1::Namespace, a::core::v1::Pod, a::core::v1::Service, a::core::v1::Endpoints,
        a::core::v1::ConfigMap, a::core::v1::Secret, a::core::v1::ServiceAccount, a::core::v1::Node,
        a::core::v1::Event, a::core::v1::PersistentVolume, a::core::v1::PersistentVolumeClaim,
        a::core::v1::ResourceQuota, a::core::v1::LimitRange, a::core::v1::ReplicationController,
        a::core::v1::PodTemplate, a::core::v1::Binding, a::core::v1::ComponentStatus,
        a::apps::v1::Deployment, a::apps::v1::ReplicaSet, a::apps::v1::DaemonSet,
        a::apps::v1::StatefulSet, a::apps::v1::ControllerRevision,
        a::batch::v1::Job, a::batch::v1::CronJob,
        a::autoscaling::v1::HorizontalPodAutoscaler, a::autoscaling::v1::Scale,
        a::autoscaling::v2::HorizontalPodAutoscaler,
        a::coordination::v1::Lease,
        a::discovery::v1::EndpointSlice,
        a::events::v1::Event,
        a::networking::v1::Ingress, a::networking::v1::IngressClass, a::networking::v1::NetworkPolicy,
        a::policy::v1::PodDisruptionBudget, a::policy::v1::Eviction,
        a::rbac::v1::Role, a::rbac::v1::RoleBinding, a::rbac::v1::ClusterRole, a::rbac::v1::ClusterRoleBinding,
        a::scheduling::v1::PriorityClass,
        a::storage::v1::StorageClass, a::storage::v1::CSIDriver, a::storage::v1::CSINode,
        a::storage::v1::VolumeAttachment, a::storage::v1::CSIStorageCapacity,
        a::node::v1::RuntimeClass,
        apiext::CustomResourceDefinition,
        meta::DeleteOptions, meta::Status, meta::Patch, meta::APIResourceList,
        meta::WatchEvent<a::core::v1::Pod>,
    );
    g.take_definitions(false)
}

/// The built-in definitions in base form, complete with extensions (but without GVK markers,
/// which depend on the resources served).
pub(crate) fn builtin_definitions() -> Defs {
    let mut defs = generate();

    // Shapes upstream publishes for the "any of several types" definitions. Both documents take
    // the v2 shape here; the v3 renderer swaps in the v3 shape (see `to_v3`).
    if let Some(d) = defs.get_mut(INT_OR_STRING) {
        let description = d.get("description").cloned().unwrap_or(Value::Null);
        *d = json!({"description": description, "format": "int-or-string", "type": "string"});
    }
    if let Some(d) = defs.get_mut(QUANTITY) {
        let description = d.get("description").cloned().unwrap_or(Value::Null);
        *d = json!({"description": description, "type": "string"});
    }
    // Free-form JSON values in CRD schemas: upstream publishes them with no type at all.
    for name in [
        "JSON",
        "JSONSchemaPropsOrArray",
        "JSONSchemaPropsOrBool",
        "JSONSchemaPropsOrStringArray",
    ] {
        if let Some(d) = defs.get_mut(&format!("{APIEXT}.{name}")) {
            let description = d.get("description").cloned().unwrap_or(Value::Null);
            *d = json!({"description": description});
        }
    }

    for e in FIELD_EXTENSIONS {
        let Some(prop) = defs
            .get_mut(e.0)
            .and_then(|d| d.get_mut("properties"))
            .and_then(|p| p.get_mut(e.1))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let (strategy, merge_key, list_type, map_keys, map_type) = (e.2, e.3, e.4, e.5, e.6);
        if !list_type.is_empty() {
            prop.insert("x-kubernetes-list-type".into(), json!(list_type));
        }
        if !map_keys.is_empty() {
            prop.insert("x-kubernetes-list-map-keys".into(), json!(map_keys));
        }
        if !map_type.is_empty() {
            prop.insert("x-kubernetes-map-type".into(), json!(map_type));
        }
        if !merge_key.is_empty() {
            prop.insert("x-kubernetes-patch-merge-key".into(), json!(merge_key));
        }
        if !strategy.is_empty() {
            prop.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
        }
    }
    for (definition, map_type) in TYPE_MAP_TYPES {
        if let Some(d) = defs.get_mut(*definition).and_then(Value::as_object_mut) {
            d.insert("x-kubernetes-map-type".into(), json!(map_type));
        }
    }
    defs
}

/// One group/version/kind, as the `x-kubernetes-group-version-kind` extension spells it.
pub(crate) fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "kind": kind, "version": version})
}

/// Adds `gvk` to the `x-kubernetes-group-version-kind` list of a definition (once).
pub(crate) fn add_gvk(def: &mut Value, gvk: Value) {
    let Some(obj) = def.as_object_mut() else {
        return;
    };
    let list = obj
        .entry("x-kubernetes-group-version-kind")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Some(arr) = list.as_array_mut()
        && !arr.contains(&gvk)
    {
        arr.push(gvk);
    }
}

/// The schema of `<Kind>List` for a kind whose definition is `item`.
pub(crate) fn list_definition(item_def: &str, item: Option<&Value>, kind: &str) -> Value {
    let prop = |name: &str, fallback: &str| {
        item.and_then(|d| d.get("properties"))
            .and_then(|p| p.get(name))
            .cloned()
            .unwrap_or_else(|| json!({"description": fallback, "type": "string"}))
    };
    json!({
        "description": format!("{kind}List is a list of {kind} objects."),
        "type": "object",
        "properties": {
            "apiVersion": prop("apiVersion", "The versioned schema of this representation of an object."),
            "items": {
                "description": format!("The {kind} objects in this list."),
                "type": "array",
                "items": {"$ref": format!("{DEF_PREFIX}{item_def}")},
            },
            "kind": prop("kind", "The REST resource this object represents."),
            "metadata": {
                "$ref": format!("{DEF_PREFIX}{LIST_META}"),
                "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
            },
        },
        "required": ["items"],
    })
}

/// The base-form definition of a custom resource: the CRD's `openAPIV3Schema` (or a free-form
/// object when it has none) with `apiVersion`, `kind` and `metadata` filled in as upstream does.
pub(crate) fn custom_definition(schema: &Value) -> Value {
    let mut def = match schema {
        Value::Object(m) => Value::Object(m.clone()),
        _ => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    };
    let obj = def.as_object_mut().expect("object");
    obj.entry("type").or_insert_with(|| json!("object"));
    let props = obj
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(props) = props.as_object_mut() {
        props.insert(
            "apiVersion".into(),
            json!({"description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources", "type": "string"}),
        );
        props.insert(
            "kind".into(),
            json!({"description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds", "type": "string"}),
        );
        props.insert(
            "metadata".into(),
            json!({"$ref": format!("{DEF_PREFIX}{OBJECT_META}"), "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}),
        );
    }
    def
}

/// Names of the definitions `value` refers to directly.
fn refs_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str)
                && let Some(name) = r.strip_prefix(DEF_PREFIX)
            {
                out.push(name.to_string());
            }
            for v in m.values() {
                refs_in(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs_in(v, out)),
        _ => {}
    }
}

/// The names of every definition reachable from `roots` through `lookup`.
pub(crate) fn closure<'a>(
    roots: impl IntoIterator<Item = String>,
    lookup: impl Fn(&str) -> Option<&'a Value>,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<String> = roots.into_iter().collect();
    while let Some(name) = stack.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(def) = lookup(&name) {
            let mut found = Vec::new();
            refs_in(def, &mut found);
            stack.extend(found.into_iter().filter(|n| !seen.contains(n)));
        }
    }
    seen
}

/// The v3 form of a base-form schema: references point into `components/schemas`, and a
/// reference with siblings is wrapped as `allOf: [{$ref}]` next to them, as upstream serves it.
pub(crate) fn to_v3(value: &Value) -> Value {
    match value {
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len() + 1);
            let reference =
                m.get("$ref")
                    .and_then(Value::as_str)
                    .map(|r| match r.strip_prefix(DEF_PREFIX) {
                        Some(name) => format!("{V3_PREFIX}{name}"),
                        None => r.to_string(),
                    });
            match reference {
                Some(r) if m.len() == 1 => {
                    out.insert("$ref".into(), Value::String(r));
                }
                Some(r) => {
                    out.insert("allOf".into(), json!([{"$ref": r}]));
                    for (k, v) in m {
                        if k != "$ref" {
                            out.insert(k.clone(), to_v3(v));
                        }
                    }
                }
                None => {
                    for (k, v) in m {
                        out.insert(k.clone(), to_v3(v));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_v3).collect()),
        other => other.clone(),
    }
}

/// The v3 form of a whole definition (with the v3-only shapes of IntOrString and Quantity).
pub(crate) fn definition_to_v3(name: &str, def: &Value) -> Value {
    match name {
        INT_OR_STRING => json!({
            "description": def.get("description").cloned().unwrap_or(Value::Null),
            "format": "int-or-string",
            "oneOf": [{"type": "integer"}, {"type": "string"}],
        }),
        QUANTITY => json!({
            "description": def.get("description").cloned().unwrap_or(Value::Null),
            "oneOf": [{"type": "string"}, {"type": "number"}],
        }),
        _ => to_v3(def),
    }
}

/// What OpenAPI v2 (and kubectl's v2 model parser) can take of a custom resource's v3 schema:
/// no `oneOf`/`anyOf`/`allOf`/`not`/`nullable`, one type per schema, arrays with one `items`
/// schema, no type beside a `$ref`.
pub(crate) fn custom_to_v2(value: &Value) -> Value {
    const DROP: &[&str] = &["oneOf", "anyOf", "allOf", "not", "nullable"];
    match value {
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, v) in m {
                if DROP.contains(&k.as_str()) {
                    continue;
                }
                let converted = match k.as_str() {
                    "properties" | "patternProperties" | "definitions" => match v {
                        Value::Object(props) => Value::Object(
                            props
                                .iter()
                                .map(|(pk, pv)| (pk.clone(), custom_to_v2(pv)))
                                .collect(),
                        ),
                        other => other.clone(),
                    },
                    "items" => match v {
                        Value::Array(a) => a.first().map(custom_to_v2).unwrap_or_else(|| json!({})),
                        other => custom_to_v2(other),
                    },
                    "additionalProperties" => match v {
                        Value::Bool(b) => Value::Bool(*b),
                        other => custom_to_v2(other),
                    },
                    // Values, not schemas.
                    "default" | "enum" | "example" | "required" => v.clone(),
                    k if k.starts_with("x-") => v.clone(),
                    _ => v.clone(),
                };
                out.insert(k.clone(), converted);
            }
            if let Some(Value::Array(types)) = out.get("type") {
                let first = types.iter().find(|t| t.as_str() != Some("null")).cloned();
                match first {
                    Some(t) => out.insert("type".into(), t),
                    None => out.remove("type"),
                };
            }
            if out.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                out.remove("type");
            }
            if out.get("type").and_then(Value::as_str) == Some("array")
                && !out.contains_key("items")
            {
                out.insert("items".into(), json!({}));
            }
            if out.contains_key("$ref") {
                out.remove("type");
                out.remove("properties");
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(custom_to_v2).collect()),
        other => other.clone(),
    }
}
