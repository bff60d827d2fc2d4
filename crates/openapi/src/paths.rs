//! The REST paths of the served resources, in a neutral model rendered as OpenAPI v3 (per
//! group-version documents) and v2 (the single document).
//!
//! What kubectl reads from here (see /work/research/kubectl-openapi.md): the PATCH operation of
//! each kind, with `x-kubernetes-group-version-kind`, the `fieldValidation` query parameter
//! (server-side field validation detection) and the request content types (whether client-side
//! apply may send a strategic merge patch); and, for `kubectl explain`, a GET on the collection
//! path (`/apis/<g>/<v>/<plural>` also for namespaced kinds) carrying the GVK.

use serde_json::{Map, Value, json};

use crate::ResourceSpec;
use crate::schemas::{
    API_RESOURCE_LIST, DEF_PREFIX, DELETE_OPTIONS, PATCH, SCALE, STATUS, V3_PREFIX, gvk,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum In {
    Query,
    Path,
}

#[derive(Clone, Copy)]
struct Param {
    name: &'static str,
    location: In,
    ty: &'static str,
    description: &'static str,
}

const fn q(name: &'static str, ty: &'static str, description: &'static str) -> Param {
    Param {
        name,
        location: In::Query,
        ty,
        description,
    }
}

const PRETTY: Param = q(
    "pretty",
    "string",
    "If 'true', the output is pretty printed.",
);
const NAME: Param = Param {
    name: "name",
    location: In::Path,
    ty: "string",
    description: "name of the object",
};
const NAMESPACE: Param = Param {
    name: "namespace",
    location: In::Path,
    ty: "string",
    description: "object name and auth scope, such as for teams and projects",
};

const ALLOW_WATCH_BOOKMARKS: Param = q(
    "allowWatchBookmarks",
    "boolean",
    "Requests watch events of type BOOKMARK; servers may ignore it.",
);
const CONTINUE: Param = q(
    "continue",
    "string",
    "The continue token of a previous paginated list call, to fetch the next chunk.",
);
const FIELD_SELECTOR: Param = q(
    "fieldSelector",
    "string",
    "Restricts the returned objects by their fields. Defaults to everything.",
);
const LABEL_SELECTOR: Param = q(
    "labelSelector",
    "string",
    "Restricts the returned objects by their labels. Defaults to everything.",
);
const LIMIT: Param = q(
    "limit",
    "integer",
    "The maximum number of objects to return in one list call; more may be fetched with the continue token.",
);
const RESOURCE_VERSION: Param = q(
    "resourceVersion",
    "string",
    "Constrains which resource versions a request may be served from. Defaults to unset.",
);
const RESOURCE_VERSION_MATCH: Param = q(
    "resourceVersionMatch",
    "string",
    "How resourceVersion applies to list calls (NotOlderThan or Exact). Defaults to unset.",
);
const SEND_INITIAL_EVENTS: Param = q(
    "sendInitialEvents",
    "boolean",
    "With watch=true, start the watch with synthetic events for the current state of the collection.",
);
const TIMEOUT_SECONDS: Param = q(
    "timeoutSeconds",
    "integer",
    "Timeout for the list/watch call, regardless of activity.",
);
const WATCH: Param = q(
    "watch",
    "boolean",
    "Watch for changes to the described resources and return them as a stream of add, update and remove notifications.",
);
const DRY_RUN: Param = q(
    "dryRun",
    "string",
    "When present, modifications are not persisted. The only valid value is All (all dry run stages are processed).",
);
const FIELD_MANAGER: Param = q(
    "fieldManager",
    "string",
    "Name of the actor making the change, used to track field ownership. Required for apply patches.",
);
const FIELD_VALIDATION: Param = q(
    "fieldValidation",
    "string",
    "How the server treats unknown and duplicate fields in the request object: Ignore drops them, Warn drops them with a warning per field, Strict rejects the request.",
);
const FORCE: Param = q(
    "force",
    "boolean",
    "Take ownership of fields another manager owns (apply patches only); must be unset for other patch types.",
);
const GRACE_PERIOD_SECONDS: Param = q(
    "gracePeriodSeconds",
    "integer",
    "Seconds before the object is deleted; zero means immediately. Defaults to the kind's default.",
);
const IGNORE_STORE_READ_ERROR: Param = q(
    "ignoreStoreReadErrorWithClusterBreakingPotential",
    "boolean",
    "Deletes an object that can no longer be read from storage (for example, undecryptable); dangerous.",
);
const ORPHAN_DEPENDENTS: Param = q(
    "orphanDependents",
    "boolean",
    "Deprecated in favour of propagationPolicy: whether dependents are orphaned.",
);
const PROPAGATION_POLICY: Param = q(
    "propagationPolicy",
    "string",
    "Garbage collection of dependents: Orphan, Background or Foreground.",
);

const LIST_PARAMS: &[Param] = &[
    ALLOW_WATCH_BOOKMARKS,
    CONTINUE,
    FIELD_SELECTOR,
    LABEL_SELECTOR,
    LIMIT,
    RESOURCE_VERSION,
    RESOURCE_VERSION_MATCH,
    SEND_INITIAL_EVENTS,
    TIMEOUT_SECONDS,
    WATCH,
];
const WRITE_PARAMS: &[Param] = &[DRY_RUN, FIELD_MANAGER, FIELD_VALIDATION];
const PATCH_PARAMS: &[Param] = &[DRY_RUN, FIELD_MANAGER, FIELD_VALIDATION, FORCE];
const DELETE_PARAMS: &[Param] = &[
    DRY_RUN,
    GRACE_PERIOD_SECONDS,
    IGNORE_STORE_READ_ERROR,
    ORPHAN_DEPENDENTS,
    PROPAGATION_POLICY,
];
const DELETE_COLLECTION_PARAMS: &[Param] = &[
    CONTINUE,
    DRY_RUN,
    FIELD_SELECTOR,
    GRACE_PERIOD_SECONDS,
    IGNORE_STORE_READ_ERROR,
    LABEL_SELECTOR,
    LIMIT,
    ORPHAN_DEPENDENTS,
    PROPAGATION_POLICY,
    RESOURCE_VERSION,
    RESOURCE_VERSION_MATCH,
    SEND_INITIAL_EVENTS,
    TIMEOUT_SECONDS,
];

/// Patch content types: apply, JSON patch, merge patch, and strategic merge patch for built-in
/// kinds only (custom resources do not take it, and kubectl reads its absence as "use a merge
/// patch").
const PATCH_TYPES_BUILTIN: &[&str] = &[
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];
const PATCH_TYPES_CUSTOM: &[&str] = &[
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
];
const PRODUCES: &[&str] = &["application/json", "application/yaml"];
const PRODUCES_LIST: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/json;stream=watch",
];

enum Body {
    Object(String),
    DeleteOptions,
    Patch { custom: bool },
}

struct Op {
    method: &'static str,
    action: Option<&'static str>,
    operation_id: String,
    description: String,
    gvk: Option<Value>,
    params: &'static [Param],
    body: Option<Body>,
    /// (status code, description, definition returned)
    responses: Vec<(&'static str, &'static str, String)>,
    list: bool,
}

pub(crate) struct PathItem {
    path: String,
    params: Vec<Param>,
    ops: Vec<Op>,
}

/// Names used in operation ids and tags: `rbac.authorization.k8s.io` → `RbacAuthorization`,
/// the core group → `Core`.
fn group_camel(group: &str) -> String {
    if group.is_empty() {
        return "Core".into();
    }
    let trimmed = group.strip_suffix(".k8s.io").unwrap_or(group);
    trimmed
        .split(['.', '-'])
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// The tag of a group-version's operations (`core_v1`, `rbacAuthorization_v1`).
fn tag(group: &str, version: &str) -> String {
    let camel = group_camel(group);
    let mut c = camel.chars();
    let lower: String = c
        .next()
        .map(|f| f.to_lowercase().chain(c).collect())
        .unwrap_or_default();
    format!("{lower}_{version}")
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub(crate) fn prefix(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

/// The key of a group-version in the v3 index (`api/v1`, `apis/apps/v1`).
pub(crate) fn gv_path(group: &str, version: &str) -> String {
    prefix(group, version)[1..].to_string()
}

/// Paths of one resource (collection, item, all-namespaces list, subresources).
pub(crate) fn resource_paths(spec: &ResourceSpec, custom: bool) -> Vec<PathItem> {
    let has = |verb: &str| spec.verbs.iter().any(|v| v == verb);
    let p = prefix(&spec.group, &spec.version);
    let ids = format!("{}{}", group_camel(&spec.group), capitalize(&spec.version));
    let scope = if spec.namespaced { "Namespaced" } else { "" };
    let kind = &spec.kind;
    let item_def = spec.definition.clone();
    let list_def = format!("{}List", spec.definition);
    let the_gvk = gvk(&spec.group, &spec.version, kind);
    let base = if spec.namespaced {
        format!("{p}/namespaces/{{namespace}}/{}", spec.plural)
    } else {
        format!("{p}/{}", spec.plural)
    };
    let scope_params: Vec<Param> = if spec.namespaced {
        vec![NAMESPACE, PRETTY]
    } else {
        vec![PRETTY]
    };
    let item_params: Vec<Param> = if spec.namespaced {
        vec![NAME, NAMESPACE, PRETTY]
    } else {
        vec![NAME, PRETTY]
    };
    let op = |method,
              action,
              id: String,
              description: String,
              params,
              body,
              responses: Vec<(&'static str, &'static str, String)>,
              g: &Value| Op {
        method,
        action: Some(action),
        operation_id: id,
        description,
        gvk: Some(g.clone()),
        params,
        body,
        responses,
        list: action == "list",
    };
    let ok = |def: &str| vec![("200", "OK", def.to_string())];
    let ok_created = |def: &str| {
        vec![
            ("200", "OK", def.to_string()),
            ("201", "Created", def.to_string()),
        ]
    };
    let status_ok = vec![
        ("200", "OK", STATUS.to_string()),
        ("202", "Accepted", STATUS.to_string()),
    ];

    let mut out = Vec::new();

    let mut collection = Vec::new();
    if has("list") {
        collection.push(op(
            "get",
            "list",
            format!("list{ids}{scope}{kind}"),
            format!("list or watch objects of kind {kind}"),
            LIST_PARAMS,
            None,
            ok(&list_def),
            &the_gvk,
        ));
    }
    if has("create") {
        let mut r = ok_created(&item_def);
        r.push(("202", "Accepted", item_def.clone()));
        collection.push(op(
            "post",
            "post",
            format!("create{ids}{scope}{kind}"),
            format!("create a {kind}"),
            WRITE_PARAMS,
            Some(Body::Object(item_def.clone())),
            r,
            &the_gvk,
        ));
    }
    if has("deletecollection") {
        collection.push(op(
            "delete",
            "deletecollection",
            format!("delete{ids}Collection{scope}{kind}"),
            format!("delete a collection of {kind} objects"),
            DELETE_COLLECTION_PARAMS,
            Some(Body::DeleteOptions),
            ok(STATUS),
            &the_gvk,
        ));
    }
    if !collection.is_empty() {
        out.push(PathItem {
            path: base.clone(),
            params: scope_params.clone(),
            ops: collection,
        });
    }

    let item_path = format!("{base}/{{name}}");
    let mut item = Vec::new();
    if has("get") {
        item.push(op(
            "get",
            "get",
            format!("read{ids}{scope}{kind}"),
            format!("read the specified {kind}"),
            &[],
            None,
            ok(&item_def),
            &the_gvk,
        ));
    }
    if has("update") {
        item.push(op(
            "put",
            "put",
            format!("replace{ids}{scope}{kind}"),
            format!("replace the specified {kind}"),
            WRITE_PARAMS,
            Some(Body::Object(item_def.clone())),
            ok_created(&item_def),
            &the_gvk,
        ));
    }
    if has("patch") {
        item.push(op(
            "patch",
            "patch",
            format!("patch{ids}{scope}{kind}"),
            format!("partially update the specified {kind}"),
            PATCH_PARAMS,
            Some(Body::Patch { custom }),
            ok_created(&item_def),
            &the_gvk,
        ));
    }
    if has("delete") {
        item.push(op(
            "delete",
            "delete",
            format!("delete{ids}{scope}{kind}"),
            format!("delete a {kind}"),
            DELETE_PARAMS,
            Some(Body::DeleteOptions),
            status_ok.clone(),
            &the_gvk,
        ));
    }
    if !item.is_empty() {
        out.push(PathItem {
            path: item_path.clone(),
            params: item_params.clone(),
            ops: item,
        });
    }

    for sub in &spec.subresources {
        let (def, sub_gvk, label) = match sub.as_str() {
            "status" | "ephemeralcontainers" | "resize" => {
                (item_def.clone(), the_gvk.clone(), capitalize(sub))
            }
            "scale" => (
                SCALE.to_string(),
                gvk("autoscaling", "v1", "Scale"),
                "Scale".to_string(),
            ),
            _ => continue,
        };
        let label = if sub == "ephemeralcontainers" {
            "EphemeralContainers".to_string()
        } else {
            label
        };
        let mut ops = Vec::new();
        if has("get") {
            ops.push(op(
                "get",
                "get",
                format!("read{ids}{scope}{kind}{label}"),
                format!("read {sub} of the specified {kind}"),
                &[],
                None,
                ok(&def),
                &sub_gvk,
            ));
        }
        if has("update") {
            ops.push(op(
                "put",
                "put",
                format!("replace{ids}{scope}{kind}{label}"),
                format!("replace {sub} of the specified {kind}"),
                WRITE_PARAMS,
                Some(Body::Object(def.clone())),
                ok_created(&def),
                &sub_gvk,
            ));
        }
        if has("patch") {
            ops.push(op(
                "patch",
                "patch",
                format!("patch{ids}{scope}{kind}{label}"),
                format!("partially update {sub} of the specified {kind}"),
                PATCH_PARAMS,
                Some(Body::Patch { custom }),
                ok_created(&def),
                &sub_gvk,
            ));
        }
        if !ops.is_empty() {
            out.push(PathItem {
                path: format!("{item_path}/{sub}"),
                params: item_params.clone(),
                ops,
            });
        }
    }

    // Namespaced kinds are also listed across namespaces; kubectl explain (1.27/1.28) looks for
    // the GVK on exactly this path.
    if spec.namespaced && has("list") {
        out.push(PathItem {
            path: format!("{p}/{}", spec.plural),
            params: vec![PRETTY],
            ops: vec![op(
                "get",
                "list",
                format!("list{ids}{kind}ForAllNamespaces"),
                format!("list or watch objects of kind {kind}"),
                LIST_PARAMS,
                None,
                ok(&list_def),
                &the_gvk,
            )],
        });
    }
    out
}

/// `GET /apis/<group>/<version>/`: the group-version's resource list.
pub(crate) fn root_path(group: &str, version: &str) -> PathItem {
    PathItem {
        path: format!("{}/", prefix(group, version)),
        params: Vec::new(),
        ops: vec![Op {
            method: "get",
            action: None,
            operation_id: format!(
                "get{}{}APIResources",
                group_camel(group),
                capitalize(version)
            ),
            description: "get available resources".into(),
            gvk: None,
            params: &[],
            body: None,
            responses: vec![("200", "OK", API_RESOURCE_LIST.to_string())],
            list: false,
        }],
    }
}

fn tag_of(path: &str) -> String {
    // "/api/v1/..." or "/apis/<group>/<version>/..."
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", v, ..] => tag("", v),
        ["apis", g, v, ..] => tag(g, v),
        _ => String::new(),
    }
}

fn v3_param(p: &Param) -> Value {
    let mut m = Map::new();
    m.insert("description".into(), json!(p.description));
    m.insert(
        "in".into(),
        json!(if p.location == In::Path {
            "path"
        } else {
            "query"
        }),
    );
    m.insert("name".into(), json!(p.name));
    if p.location == In::Path {
        m.insert("required".into(), json!(true));
    }
    m.insert("schema".into(), json!({"type": p.ty, "uniqueItems": true}));
    Value::Object(m)
}

fn v2_param(p: &Param) -> Value {
    let mut m = Map::new();
    m.insert("description".into(), json!(p.description));
    m.insert(
        "in".into(),
        json!(if p.location == In::Path {
            "path"
        } else {
            "query"
        }),
    );
    m.insert("name".into(), json!(p.name));
    if p.location == In::Path {
        m.insert("required".into(), json!(true));
    }
    m.insert("type".into(), json!(p.ty));
    m.insert("uniqueItems".into(), json!(true));
    Value::Object(m)
}

fn v3_ref(def: &str) -> Value {
    json!({"$ref": format!("{V3_PREFIX}{def}")})
}

fn v2_ref(def: &str) -> Value {
    json!({"$ref": format!("{DEF_PREFIX}{def}")})
}

/// The v3 `paths` object for `items`.
pub(crate) fn render_v3(items: &[PathItem]) -> Value {
    let mut paths = Map::new();
    for item in items {
        let mut pi = Map::new();
        for op in &item.ops {
            let mut o = Map::new();
            o.insert("description".into(), json!(op.description));
            o.insert("operationId".into(), json!(op.operation_id));
            if !op.params.is_empty() {
                o.insert(
                    "parameters".into(),
                    Value::Array(op.params.iter().map(v3_param).collect()),
                );
            }
            match &op.body {
                Some(Body::Object(def)) => {
                    o.insert(
                        "requestBody".into(),
                        json!({"content": {"*/*": {"schema": v3_ref(def)}}, "required": true}),
                    );
                }
                Some(Body::DeleteOptions) => {
                    o.insert(
                        "requestBody".into(),
                        json!({"content": {"*/*": {"schema": v3_ref(DELETE_OPTIONS)}}}),
                    );
                }
                Some(Body::Patch { custom }) => {
                    let types = if *custom {
                        PATCH_TYPES_CUSTOM
                    } else {
                        PATCH_TYPES_BUILTIN
                    };
                    let content: Map<String, Value> = types
                        .iter()
                        .map(|t| (t.to_string(), json!({"schema": v3_ref(PATCH)})))
                        .collect();
                    o.insert(
                        "requestBody".into(),
                        json!({"content": content, "required": true}),
                    );
                }
                None => {}
            }
            let mut responses = Map::new();
            for (code, description, def) in &op.responses {
                let produces = if op.list { PRODUCES_LIST } else { PRODUCES };
                let content: Map<String, Value> = produces
                    .iter()
                    .map(|t| (t.to_string(), json!({"schema": v3_ref(def)})))
                    .collect();
                responses.insert(
                    code.to_string(),
                    json!({"content": content, "description": description}),
                );
            }
            responses.insert("401".into(), json!({"description": "Unauthorized"}));
            o.insert("responses".into(), Value::Object(responses));
            o.insert("tags".into(), json!([tag_of(&item.path)]));
            if let Some(action) = op.action {
                o.insert("x-kubernetes-action".into(), json!(action));
            }
            if let Some(g) = &op.gvk {
                o.insert("x-kubernetes-group-version-kind".into(), g.clone());
            }
            pi.insert(op.method.into(), Value::Object(o));
        }
        if !item.params.is_empty() {
            pi.insert(
                "parameters".into(),
                Value::Array(item.params.iter().map(v3_param).collect()),
            );
        }
        paths.insert(item.path.clone(), Value::Object(pi));
    }
    Value::Object(paths)
}

/// The v2 `paths` entries for `items`, added to `paths`.
pub(crate) fn render_v2(items: &[PathItem], paths: &mut Map<String, Value>) {
    for item in items {
        let mut pi = Map::new();
        for op in &item.ops {
            let mut o = Map::new();
            match &op.body {
                Some(Body::Patch { custom }) => {
                    let types = if *custom {
                        PATCH_TYPES_CUSTOM
                    } else {
                        PATCH_TYPES_BUILTIN
                    };
                    o.insert("consumes".into(), json!(types));
                }
                _ => {
                    o.insert("consumes".into(), json!(["*/*"]));
                }
            }
            o.insert("description".into(), json!(op.description));
            o.insert("operationId".into(), json!(op.operation_id));
            let mut params: Vec<Value> = Vec::new();
            match &op.body {
                Some(Body::Object(def)) => params.push(json!({"in": "body", "name": "body", "required": true, "schema": v2_ref(def)})),
                Some(Body::DeleteOptions) => params.push(json!({"in": "body", "name": "body", "schema": v2_ref(DELETE_OPTIONS)})),
                Some(Body::Patch { .. }) => params.push(json!({"in": "body", "name": "body", "required": true, "schema": v2_ref(PATCH)})),
                None => {}
            }
            params.extend(op.params.iter().map(v2_param));
            if !params.is_empty() {
                o.insert("parameters".into(), Value::Array(params));
            }
            o.insert(
                "produces".into(),
                json!(if op.list { PRODUCES_LIST } else { PRODUCES }),
            );
            let mut responses = Map::new();
            for (code, description, def) in &op.responses {
                responses.insert(
                    code.to_string(),
                    json!({"description": description, "schema": v2_ref(def)}),
                );
            }
            responses.insert("401".into(), json!({"description": "Unauthorized"}));
            o.insert("responses".into(), Value::Object(responses));
            o.insert("schemes".into(), json!(["https"]));
            o.insert("tags".into(), json!([tag_of(&item.path)]));
            if let Some(action) = op.action {
                o.insert("x-kubernetes-action".into(), json!(action));
            }
            if let Some(g) = &op.gvk {
                o.insert("x-kubernetes-group-version-kind".into(), g.clone());
            }
            pi.insert(op.method.into(), Value::Object(o));
        }
        if !item.params.is_empty() {
            pi.insert(
                "parameters".into(),
                Value::Array(item.params.iter().map(v2_param).collect()),
            );
        }
        paths.insert(item.path.clone(), Value::Object(pi));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(group_camel(""), "Core");
        assert_eq!(
            group_camel("rbac.authorization.k8s.io"),
            "RbacAuthorization"
        );
        assert_eq!(group_camel("stable.example.com"), "StableExampleCom");
        assert_eq!(tag("networking.k8s.io", "v1"), "networking_v1");
        assert_eq!(tag("", "v1"), "core_v1");
        assert_eq!(gv_path("apps", "v1"), "apis/apps/v1");
        assert_eq!(gv_path("", "v1"), "api/v1");
    }
}
