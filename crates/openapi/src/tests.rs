//! Unit tests over the built documents. They also simulate what kubectl does with them
//! (server-side field validation detection, strategic-merge-patch metadata lookup, explain's
//! GVK search), following the upstream code paths described in the research notes.

use super::*;

const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn spec(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    subresources: &[&str],
) -> ResourceSpec {
    let short = match group {
        "" => "core",
        g => g.split('.').next().unwrap_or(g),
    };
    let definition = if group == "apiextensions.k8s.io" {
        format!("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{version}.{kind}")
    } else {
        format!("io.k8s.api.{short}.{version}.{kind}")
    };
    ResourceSpec {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        namespaced,
        verbs: ALL_VERBS.iter().map(|s| s.to_string()).collect(),
        subresources: subresources.iter().map(|s| s.to_string()).collect(),
        definition,
    }
}

/// The built-in resources of the brief (what the API server registers).
pub(crate) fn test_resources() -> Vec<ResourceSpec> {
    const NS: bool = true;
    const CL: bool = false;
    vec![
        spec("", "v1", "Namespace", "namespaces", CL, &["status"]),
        spec("", "v1", "Pod", "pods", NS, &["status"]),
        spec("", "v1", "Service", "services", NS, &["status"]),
        spec("", "v1", "Endpoints", "endpoints", NS, &[]),
        spec("", "v1", "ConfigMap", "configmaps", NS, &[]),
        spec("", "v1", "Secret", "secrets", NS, &[]),
        spec("", "v1", "ServiceAccount", "serviceaccounts", NS, &[]),
        spec("", "v1", "Node", "nodes", CL, &["status"]),
        spec("", "v1", "Event", "events", NS, &[]),
        spec(
            "",
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            CL,
            &["status"],
        ),
        spec(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            NS,
            &["status"],
        ),
        spec("", "v1", "ResourceQuota", "resourcequotas", NS, &["status"]),
        spec("", "v1", "LimitRange", "limitranges", NS, &[]),
        spec(
            "",
            "v1",
            "ReplicationController",
            "replicationcontrollers",
            NS,
            &["status", "scale"],
        ),
        spec("", "v1", "PodTemplate", "podtemplates", NS, &[]),
        spec(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            NS,
            &["status", "scale"],
        ),
        spec(
            "apps",
            "v1",
            "ReplicaSet",
            "replicasets",
            NS,
            &["status", "scale"],
        ),
        spec("apps", "v1", "DaemonSet", "daemonsets", NS, &["status"]),
        spec(
            "apps",
            "v1",
            "StatefulSet",
            "statefulsets",
            NS,
            &["status", "scale"],
        ),
        spec(
            "apps",
            "v1",
            "ControllerRevision",
            "controllerrevisions",
            NS,
            &[],
        ),
        spec("batch", "v1", "Job", "jobs", NS, &["status"]),
        spec("batch", "v1", "CronJob", "cronjobs", NS, &["status"]),
        spec(
            "autoscaling",
            "v1",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            NS,
            &["status"],
        ),
        spec(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            NS,
            &["status"],
        ),
        spec("coordination.k8s.io", "v1", "Lease", "leases", NS, &[]),
        spec(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            NS,
            &[],
        ),
        spec("events.k8s.io", "v1", "Event", "events", NS, &[]),
        spec(
            "networking.k8s.io",
            "v1",
            "Ingress",
            "ingresses",
            NS,
            &["status"],
        ),
        spec(
            "networking.k8s.io",
            "v1",
            "IngressClass",
            "ingressclasses",
            CL,
            &[],
        ),
        spec(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            NS,
            &[],
        ),
        spec(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            NS,
            &["status"],
        ),
        spec("rbac.authorization.k8s.io", "v1", "Role", "roles", NS, &[]),
        spec(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            NS,
            &[],
        ),
        spec(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            CL,
            &[],
        ),
        spec(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            CL,
            &[],
        ),
        spec(
            "scheduling.k8s.io",
            "v1",
            "PriorityClass",
            "priorityclasses",
            CL,
            &[],
        ),
        spec(
            "storage.k8s.io",
            "v1",
            "StorageClass",
            "storageclasses",
            CL,
            &[],
        ),
        spec(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            CL,
            &["status"],
        ),
    ]
}

fn widget_spec(version: &str) -> ResourceSpec {
    ResourceSpec {
        group: "stable.example.com".into(),
        version: version.into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
        namespaced: true,
        verbs: ALL_VERBS.iter().map(|s| s.to_string()).collect(),
        subresources: vec!["status".into(), "scale".into()],
        definition: format!("com.example.stable.{version}.Widget"),
    }
}

fn widget_schema() -> Value {
    json!({
        "type": "object",
        "description": "A widget.",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "size": {"type": "integer", "format": "int64", "minimum": 1},
                    "color": {"type": "string", "enum": ["red", "blue"]},
                    "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                    "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "maybe": {"type": "string", "nullable": true},
                },
                "required": ["size"],
            },
            "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}},
        },
    })
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("valid JSON")
}

fn all_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                out.push(r.to_string());
            }
            m.values().for_each(|x| all_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| all_refs(x, out)),
        _ => {}
    }
}

/// Every `$ref` of `doc` must resolve as a JSON pointer within `doc`.
fn assert_refs_resolve(doc: &Value, what: &str) {
    let mut refs = Vec::new();
    all_refs(doc, &mut refs);
    assert!(!refs.is_empty(), "{what}: no references at all");
    for r in refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{what}: non-local ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "{what}: dangling ref {r}");
    }
}

fn v3(api: &OpenApi, gv: &str) -> Value {
    parse(
        &api.v3_document(gv)
            .unwrap_or_else(|| panic!("no document for {gv}"))
            .0,
    )
}

fn built() -> OpenApi {
    OpenApi::new(&test_resources())
}

/// kubectl's `supportsQueryParamV3` (cli-runtime query_param_verifier_v3.go): the first PATCH
/// operation whose `x-kubernetes-group-version-kind` matches decides.
fn supports_query_param(doc: &Value, gvk: (&str, &str, &str), param: &str) -> Result<bool, String> {
    let paths = doc["paths"]
        .as_object()
        .ok_or("Invalid OpenAPI V3 document")?;
    for item in paths.values() {
        let Some(op) = item.get("patch") else {
            continue;
        };
        let g = &op["x-kubernetes-group-version-kind"];
        if g["group"] != gvk.0 || g["version"] != gvk.1 || g["kind"] != gvk.2 {
            continue;
        }
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        return Ok(params
            .iter()
            .any(|p| p["name"] == param && p["in"] == "query"));
    }
    Err(format!("Path not found for GVK {gvk:?}"))
}

/// kubectl's `PatchMetaFromOpenAPIV3` (apimachinery strategicpatch/meta.go): walk properties,
/// read patch extensions on the property, then resolve `allOf[0]` and `$ref`.
fn patch_meta(
    doc: &Value,
    definition: &str,
    path: &[&str],
) -> Result<(Option<String>, Option<String>), String> {
    let schemas = &doc["components"]["schemas"];
    let mut schema = schemas.get(definition).ok_or("no such definition")?;
    let mut meta = (None, None);
    for key in path {
        let props = schema
            .get("properties")
            .and_then(Value::as_object)
            .ok_or(format!("unable to find api field {key}"))?;
        let mut sub = props
            .get(*key)
            .ok_or(format!("unable to find api field {key}"))?;
        meta = (
            sub.get("x-kubernetes-patch-strategy")
                .and_then(Value::as_str)
                .map(String::from),
            sub.get("x-kubernetes-patch-merge-key")
                .and_then(Value::as_str)
                .map(String::from),
        );
        if let Some(items) = sub.get("items") {
            sub = items;
        }
        if let Some(first) = sub.get("allOf").and_then(|a| a.get(0)) {
            sub = first;
        }
        if let Some(r) = sub.get("$ref").and_then(Value::as_str) {
            let name = r.strip_prefix("#/components/schemas/").ok_or("bad ref")?;
            sub = schemas.get(name).ok_or(format!("unable to resolve {r}"))?;
        }
        schema = sub;
    }
    Ok(meta)
}

/// kubectl explain's template (1.27: GET on `<prefix>/<plural>`; later also namespaced and
/// `{name}` paths): the operation's GVK, then a component carrying that GVK in its list.
fn explain_finds(doc: &Value, group: &str, version: &str, plural: &str) -> bool {
    let prefix = if group.is_empty() {
        "/api".to_string()
    } else {
        format!("/apis/{group}")
    };
    let Some(op) = doc["paths"]
        .get(format!("{prefix}/{version}/{plural}"))
        .and_then(|p| p.get("get"))
    else {
        return false;
    };
    let gvk = &op["x-kubernetes-group-version-kind"];
    doc["components"]["schemas"]
        .as_object()
        .map(|s| {
            s.values().any(|c| {
                c["x-kubernetes-group-version-kind"]
                    .as_array()
                    .is_some_and(|l| l.contains(gvk))
            })
        })
        .unwrap_or(false)
}

#[test]
fn builds_quickly_and_knows_every_builtin() {
    let start = std::time::Instant::now();
    let api = built();
    let elapsed = start.elapsed();
    // Debug build on a shared machine: generous bound; release start-up is far below a second.
    assert!(elapsed.as_secs_f64() < 5.0, "building took {elapsed:?}");
    assert!(
        api.unknown_definitions().is_empty(),
        "unknown: {:?}",
        api.unknown_definitions()
    );
    let start = std::time::Instant::now();
    let pb = api.v2_protobuf().unwrap();
    eprintln!(
        "v3 documents: {elapsed:?}; v2 JSON + protobuf ({} bytes): {:?}",
        pb.len(),
        start.elapsed()
    );
}

#[test]
fn documents_are_json_and_refs_resolve() {
    let api = built();
    let index = parse(&api.v3_index());
    let paths = index["paths"].as_object().unwrap();
    assert!(paths.contains_key("api/v1"));
    assert!(paths.contains_key("apis/apps/v1"));
    assert!(paths.contains_key("apis/autoscaling/v2"));
    for (gv, entry) in paths {
        let url = entry["serverRelativeURL"].as_str().unwrap();
        let hash = api.v3_hash(gv).unwrap();
        assert_eq!(url, format!("/openapi/v3/{gv}?hash={hash}"));
        assert_eq!(hash.len(), 128);
        let doc = v3(&api, gv);
        assert_eq!(doc["openapi"], "3.0.0");
        assert_refs_resolve(&doc, gv);
        // v3 never puts siblings next to a $ref.
        let mut stack = vec![&doc];
        while let Some(v) = stack.pop() {
            match v {
                Value::Object(m) => {
                    if m.get("$ref").is_some_and(Value::is_string) {
                        assert_eq!(m.len(), 1, "{gv}: $ref with siblings: {v}");
                    }
                    stack.extend(m.values());
                }
                Value::Array(a) => stack.extend(a.iter()),
                _ => {}
            }
        }
    }
    let v2 = parse(&api.v2_document());
    assert_eq!(v2["swagger"], "2.0");
    assert_refs_resolve(&v2, "v2");
    assert!(api.v3_document("apis/nothing/v1").is_none());
    assert!(api.v3_document("/openapi/v3/apis/apps/v1?hash=x").is_some());
}

#[test]
fn pod_schema_has_gvk_and_merge_keys() {
    let api = built();
    let doc = v3(&api, "api/v1");
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["io.k8s.api.core.v1.Pod"]["x-kubernetes-group-version-kind"],
        json!([{"group": "", "kind": "Pod", "version": "v1"}])
    );
    assert_eq!(
        schemas["io.k8s.api.core.v1.PodList"]["x-kubernetes-group-version-kind"][0]["kind"],
        "PodList"
    );
    let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
    assert_eq!(containers["x-kubernetes-list-type"], "map");
    assert_eq!(containers["x-kubernetes-list-map-keys"], json!(["name"]));
    let ports = &schemas["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"];
    assert_eq!(ports["x-kubernetes-patch-merge-key"], "port");
    assert_eq!(
        ports["x-kubernetes-list-map-keys"],
        json!(["port", "protocol"])
    );
    let finalizers =
        &schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["finalizers"];
    assert_eq!(finalizers["x-kubernetes-patch-strategy"], "merge");
    assert_eq!(finalizers["x-kubernetes-list-type"], "set");
    assert_eq!(
        schemas["io.k8s.api.core.v1.LocalObjectReference"]["x-kubernetes-map-type"],
        "atomic"
    );
    // A described reference is wrapped in allOf, as upstream serves v3.
    let metadata = &schemas["io.k8s.api.core.v1.Pod"]["properties"]["metadata"];
    assert_eq!(
        metadata["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    assert!(metadata["description"].is_string());
    // Upstream's v3 shapes for IntOrString and Quantity.
    assert_eq!(
        schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"],
        "int-or-string"
    );
    assert!(schemas["io.k8s.apimachinery.pkg.api.resource.Quantity"]["oneOf"].is_array());
    // DeleteOptions carries a GVK for every group-version.
    let delete_gvks = schemas["io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"]["x-kubernetes-group-version-kind"].as_array().unwrap();
    assert!(
        delete_gvks.contains(&json!({"group": "apps", "kind": "DeleteOptions", "version": "v1"}))
    );
    // v2 keeps the v2 shapes.
    let v2 = parse(&api.v2_document());
    assert_eq!(
        v2["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["type"],
        "string"
    );
    assert_eq!(
        v2["definitions"]["io.k8s.api.core.v1.Pod"]["properties"]["metadata"]["$ref"],
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
}

#[test]
fn every_extension_row_lands_on_a_property() {
    let defs = schemas::builtin_definitions();
    for row in extensions::FIELD_EXTENSIONS {
        let def = defs
            .get(row.0)
            .unwrap_or_else(|| panic!("table names unknown definition {}", row.0));
        assert!(
            def["properties"].get(row.1).is_some(),
            "{}.{} is not a property",
            row.0,
            row.1
        );
        if !row.5.is_empty() {
            assert_eq!(
                row.4, "map",
                "{}.{}: list-map keys without list type map",
                row.0, row.1
            );
        }
    }
    for (name, _) in extensions::TYPE_MAP_TYPES {
        assert!(defs.contains_key(*name), "{name}");
    }
}

#[test]
fn field_validation_is_declared_where_kubectl_looks() {
    let api = built();
    let core = v3(&api, "api/v1");
    let post = &core["paths"]["/api/v1/namespaces"]["post"];
    assert!(
        post["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
    );
    assert_eq!(post["x-kubernetes-action"], "post");
    assert_eq!(
        post["x-kubernetes-group-version-kind"],
        json!({"group": "", "kind": "Namespace", "version": "v1"})
    );
    // Every PATCH operation (the verifier picks any one with the GVK) declares the parameter.
    for r in test_resources() {
        let doc = v3(&api, &paths::gv_path(&r.group, &r.version));
        assert_eq!(
            supports_query_param(&doc, (&r.group, &r.version, &r.kind), "fieldValidation"),
            Ok(true),
            "{}",
            r.kind
        );
        for item in doc["paths"].as_object().unwrap().values() {
            if let Some(op) = item.get("patch") {
                assert!(
                    op["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == "fieldValidation")
                );
                assert!(
                    op["requestBody"]["content"]
                        .get("application/strategic-merge-patch+json")
                        .is_some()
                );
                assert!(op["x-kubernetes-group-version-kind"].is_object());
            }
        }
    }
    // Scale subresources are patched as autoscaling/v1 Scale.
    let apps = v3(&api, "apis/apps/v1");
    let scale =
        &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["patch"];
    assert_eq!(scale["x-kubernetes-group-version-kind"]["kind"], "Scale");
    assert!(
        apps["components"]["schemas"]
            .get("io.k8s.api.autoscaling.v1.Scale")
            .is_some()
    );
}

#[test]
fn strategic_merge_patch_metadata_resolves_like_kubectl() {
    let api = built();
    let apps = v3(&api, "apis/apps/v1");
    let d = "io.k8s.api.apps.v1.Deployment";
    assert_eq!(
        patch_meta(&apps, d, &["spec", "template", "spec", "containers"]).unwrap(),
        (Some("merge".into()), Some("name".into()))
    );
    assert_eq!(
        patch_meta(&apps, d, &["spec", "template", "spec", "containers", "env"]).unwrap(),
        (Some("merge".into()), Some("name".into()))
    );
    assert_eq!(
        patch_meta(
            &apps,
            d,
            &["spec", "template", "spec", "containers", "ports"]
        )
        .unwrap(),
        (Some("merge".into()), Some("containerPort".into()))
    );
    assert_eq!(
        patch_meta(&apps, d, &["spec", "template", "spec", "volumes"]).unwrap(),
        (Some("merge,retainKeys".into()), Some("name".into()))
    );
    assert_eq!(
        patch_meta(&apps, d, &["spec", "strategy"])
            .unwrap()
            .0
            .as_deref(),
        Some("retainKeys")
    );
    assert_eq!(
        patch_meta(&apps, d, &["metadata", "ownerReferences"]).unwrap(),
        (Some("merge".into()), Some("uid".into()))
    );
    let core = v3(&api, "api/v1");
    assert_eq!(
        patch_meta(&core, "io.k8s.api.core.v1.Service", &["spec", "ports"]).unwrap(),
        (Some("merge".into()), Some("port".into()))
    );
    // What apply finds for the GVK: exactly one component with the Deployment GVK.
    let with_gvk = apps["components"]["schemas"]
        .as_object()
        .unwrap()
        .values()
        .filter(|s| {
            s["x-kubernetes-group-version-kind"]
                .as_array()
                .is_some_and(|l| {
                    l.contains(&json!({"group": "apps", "kind": "Deployment", "version": "v1"}))
                })
        })
        .count();
    assert_eq!(with_gvk, 1);
}

#[test]
fn explain_finds_every_kind() {
    let api = built();
    for r in test_resources() {
        let doc = v3(&api, &paths::gv_path(&r.group, &r.version));
        assert!(
            explain_finds(&doc, &r.group, &r.version, &r.plural),
            "explain cannot find {}",
            r.plural
        );
    }
}

#[test]
fn custom_resources_come_and_go() {
    let mut api = built();
    let index_before = api.v3_index_document().etag;
    let v2_before = api.v2_etag();
    let core_hash = api.v3_hash("api/v1").unwrap().to_string();
    let crd = "widgets.stable.example.com";
    api.set_custom(
        crd,
        &[
            (widget_spec("v1"), widget_schema()),
            (widget_spec("v2"), Value::Null),
        ],
    );

    let index_with = api.v3_index_document().etag;
    assert_ne!(index_before, index_with);
    assert_ne!(v2_before, api.v2_etag());
    assert_eq!(
        api.v3_hash("api/v1").unwrap(),
        core_hash,
        "built-in documents are unaffected"
    );
    let index = parse(&api.v3_index());
    assert!(index["paths"].get("apis/stable.example.com/v1").is_some());
    assert!(index["paths"].get("apis/stable.example.com/v2").is_some());

    let doc = v3(&api, "apis/stable.example.com/v1");
    assert_refs_resolve(&doc, "widgets v1");
    let schemas = &doc["components"]["schemas"];
    let widget = &schemas["com.example.stable.v1.Widget"];
    assert_eq!(
        widget["x-kubernetes-group-version-kind"],
        json!([{"group": "stable.example.com", "kind": "Widget", "version": "v1"}])
    );
    assert_eq!(
        widget["properties"]["spec"]["properties"]["size"]["minimum"],
        1
    );
    assert!(widget["properties"]["metadata"]["allOf"].is_array());
    assert!(schemas.get("com.example.stable.v1.WidgetList").is_some());
    assert!(
        schemas
            .get("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
            .is_some()
    );
    assert!(explain_finds(&doc, "stable.example.com", "v1", "widgets"));
    assert_eq!(
        supports_query_param(
            &doc,
            ("stable.example.com", "v1", "Widget"),
            "fieldValidation"
        ),
        Ok(true)
    );
    // No strategic merge patch for custom resources: kubectl then sends a merge patch.
    let patch =
        &doc["paths"]["/apis/stable.example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"];
    let content = patch["requestBody"]["content"].as_object().unwrap();
    assert!(!content.contains_key("application/strategic-merge-patch+json"));
    assert!(content.contains_key("application/merge-patch+json"));
    // Schema-less version: free-form object.
    let v2doc = v3(&api, "apis/stable.example.com/v2");
    assert_eq!(
        v2doc["components"]["schemas"]["com.example.stable.v2.Widget"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
    // The schema document used for patching includes custom definitions.
    assert!(
        api.schema_document()["components"]["schemas"]
            .get("com.example.stable.v1.Widget")
            .is_some()
    );
    // v2: the custom schema, reduced to what v2 can say.
    let v2 = parse(&api.v2_document());
    assert_refs_resolve(&v2, "v2 with CRD");
    let w2 = &v2["definitions"]["com.example.stable.v1.Widget"]["properties"]["spec"]["properties"];
    assert!(w2["port"].get("anyOf").is_none() && w2["port"].get("type").is_none());
    assert!(w2["maybe"].get("nullable").is_none());

    // Changing the schema changes the hash; removing the CRD restores the original index.
    let mut changed = widget_schema();
    changed["properties"]["spec"]["properties"]["size"]["minimum"] = json!(2);
    let v1_hash = api
        .v3_hash("apis/stable.example.com/v1")
        .unwrap()
        .to_string();
    api.set_custom(crd, &[(widget_spec("v1"), changed)]);
    assert_ne!(api.v3_hash("apis/stable.example.com/v1").unwrap(), v1_hash);
    assert!(api.v3_document("apis/stable.example.com/v2").is_none());
    api.remove_custom(crd);
    assert!(api.v3_document("apis/stable.example.com/v1").is_none());
    assert_eq!(api.v3_index_document().etag, index_before);
    assert_eq!(api.v2_etag(), v2_before);
}

#[test]
fn v2_protobuf_carries_definitions_paths_and_extensions() {
    use proto::decode::fields;
    let mut api = built();
    api.set_custom(
        "widgets.stable.example.com",
        &[(widget_spec("v1"), widget_schema())],
    );
    let json_doc = parse(&api.v2_document());
    let pb = api.v2_protobuf().unwrap();
    let top = fields(&pb);
    let str_field = |msg: &[u8], n: u32| -> Option<String> {
        fields(msg)
            .into_iter()
            .find(|f| f.0 == n)
            .map(|f| String::from_utf8(f.2.to_vec()).unwrap())
    };
    assert_eq!(str_field(&pb, 1).as_deref(), Some("2.0"));
    let defs = top.iter().find(|f| f.0 == 9).expect("definitions").2;
    let named: Vec<_> = fields(defs).into_iter().filter(|f| f.0 == 1).collect();
    assert_eq!(
        named.len(),
        json_doc["definitions"].as_object().unwrap().len()
    );
    // Find Pod and its GVK vendor extension (Schema field 31: NamedAny{name, Any{yaml}}).
    let pod = named
        .iter()
        .find(|f| str_field(f.2, 1).as_deref() == Some("io.k8s.api.core.v1.Pod"))
        .expect("Pod");
    let pod_schema = fields(pod.2).into_iter().find(|f| f.0 == 2).unwrap().2;
    let ext = fields(pod_schema)
        .into_iter()
        .filter(|f| f.0 == 31)
        .find(|f| str_field(f.2, 1).as_deref() == Some("x-kubernetes-group-version-kind"))
        .expect("gvk ext");
    let any = fields(ext.2).into_iter().find(|f| f.0 == 2).unwrap().2;
    let yaml = str_field(any, 2).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&yaml).unwrap(),
        json!([{"group": "", "kind": "Pod", "version": "v1"}])
    );
    // Paths: same count; the pod PATCH carries consumes and a fieldValidation query parameter.
    let paths = top.iter().find(|f| f.0 == 8).expect("paths").2;
    let path_items: Vec<_> = fields(paths).into_iter().filter(|f| f.0 == 2).collect();
    assert_eq!(
        path_items.len(),
        json_doc["paths"].as_object().unwrap().len()
    );
    let pod_item = path_items
        .iter()
        .find(|f| {
            str_field(f.2, 1).as_deref() == Some("/api/v1/namespaces/{namespace}/pods/{name}")
        })
        .unwrap();
    let item = fields(pod_item.2).into_iter().find(|f| f.0 == 2).unwrap().2;
    let patch = fields(item)
        .into_iter()
        .find(|f| f.0 == 8)
        .expect("patch op")
        .2;
    let consumes: Vec<String> = fields(patch)
        .into_iter()
        .filter(|f| f.0 == 7)
        .map(|f| String::from_utf8(f.2.to_vec()).unwrap())
        .collect();
    assert!(consumes.contains(&"application/strategic-merge-patch+json".to_string()));
    let has_field_validation = fields(patch).into_iter().filter(|f| f.0 == 8).any(|p| {
        // ParametersItem.parameter(1) → Parameter.non_body_parameter(2) → query(3) → name(4)
        fields(p.2).into_iter().filter(|f| f.0 == 1).any(|param| {
            fields(param.2).into_iter().filter(|f| f.0 == 2).any(|nb| {
                fields(nb.2)
                    .into_iter()
                    .filter(|f| f.0 == 3)
                    .any(|qs| str_field(qs.2, 4).as_deref() == Some("fieldValidation"))
            })
        })
    });
    assert!(has_field_validation);
}

/// Writes the documents (with one CRD) to `$OPENAPI_DUMP_DIR` for manual checks against real
/// kubectl binaries: `OPENAPI_DUMP_DIR=/tmp/x cargo test -p openapi dump -- --ignored`.
#[test]
#[ignore]
fn dump() {
    let Ok(dir) = std::env::var("OPENAPI_DUMP_DIR") else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    let mut api = built();
    api.set_custom(
        "widgets.stable.example.com",
        &[(widget_spec("v1"), widget_schema())],
    );
    std::fs::create_dir_all(dir.join("v3")).unwrap();
    std::fs::write(dir.join("v2.json"), api.v2_document()).unwrap();
    std::fs::write(dir.join("v2.pb"), api.v2_protobuf().unwrap()).unwrap();
    std::fs::write(dir.join("v3index.json"), api.v3_index()).unwrap();
    for gv in api.group_versions() {
        let (body, etag) = api.v3_document(&gv).unwrap();
        let file = gv.replace('/', "__");
        std::fs::write(dir.join("v3").join(format!("{file}.json")), body).unwrap();
        std::fs::write(dir.join("v3").join(format!("{file}.etag")), etag).unwrap();
    }
    let resources: Vec<Value> = test_resources()
        .into_iter()
        .chain([widget_spec("v1")])
        .map(|r| json!({"group": r.group, "version": r.version, "kind": r.kind, "plural": r.plural, "namespaced": r.namespaced, "verbs": r.verbs, "subresources": r.subresources}))
        .collect();
    std::fs::write(
        dir.join("resources.json"),
        serde_json::to_vec_pretty(&resources).unwrap(),
    )
    .unwrap();
}

/// The calls the API server makes (crates/apiserver/src/openapi_docs.rs), with their types.
#[test]
#[allow(clippy::useless_conversion)]
fn api_server_contract() {
    fn takes_bytes(_: Bytes) {}
    let specs: Vec<ResourceSpec> = test_resources();
    let mut built: OpenApi = OpenApi::new(&specs);
    let _doc: Value = built.schema_document();
    let index = built.v3_index();
    takes_bytes(Bytes::from(index));
    let doc: Option<(Bytes, String)> = built.v3_document("apis/apps/v1");
    let Some((body, etag)) = doc else { panic!() };
    takes_bytes(body);
    assert_eq!(Some(etag.as_str()), built.v3_hash("apis/apps/v1"));
    let pb: Option<Bytes> = built.v2_protobuf();
    takes_bytes(pb.unwrap());
    takes_bytes(built.v2_document());
    let crd_name: &str = "widgets.stable.example.com";
    let custom: Vec<(ResourceSpec, Value)> = vec![(widget_spec("v1"), Value::Null)];
    built.set_custom(crd_name, &custom);
    built.set_custom(crd_name, &[]);
}
