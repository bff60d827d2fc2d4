//! The OpenAPI documents Berth serves, shaped like upstream's so stock kubectl works unchanged:
//!
//! - `/openapi/v3`: an index of group-versions with hashed URLs ([`OpenApi::v3_index`]);
//! - `/openapi/v3/<gv>`: one document per group-version ([`OpenApi::v3_document`]) with the
//!   schemas of its kinds under `components/schemas` and its REST paths;
//! - `/openapi/v2`: one document with everything, as JSON ([`OpenApi::v2_document`]) and as
//!   gnostic protobuf ([`OpenApi::v2_protobuf`]), which is the only form kubectl asks for.
//!
//! Schemas come from `k8s-openapi`'s `schemars` implementations (upstream definition names and
//! descriptions), completed with the Kubernetes extensions upstream publishes (patch strategies
//! and merge keys, list and map types, group-version-kind markers). Custom resources are added
//! and removed at runtime with [`OpenApi::set_custom`].
//!
//! Every document is serialized once, when built; requests get the stored bytes.

mod extensions;
pub mod hash;
mod paths;
mod proto;
mod schemas;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use schemas::{Defs, META_ROOTS, SCALE};

/// The Kubernetes version the published documents describe.
pub const KUBERNETES_VERSION: &str = "v1.33.0";

/// One served resource (a plural under a group-version), as the API server's registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSpec {
    /// API group; empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The plural resource name used in paths (`deployments`).
    pub plural: String,
    pub namespaced: bool,
    /// Kubernetes verbs: get, list, watch, create, update, patch, delete, deletecollection.
    pub verbs: Vec<String>,
    /// Subresources with their own paths: `status`, `scale` (others are ignored).
    pub subresources: Vec<String>,
    /// The OpenAPI definition of the kind (`io.k8s.api.apps.v1.Deployment`; for custom
    /// resources upstream's reversed-group form, `com.example.v1.Widget`). Its list kind is
    /// `<definition>List`.
    pub definition: String,
}

/// A served document: its bytes and their hash (the ETag, and the `hash` of hashed URLs).
#[derive(Debug, Clone)]
pub struct Document {
    pub body: Bytes,
    pub etag: String,
}

impl Document {
    fn json(value: &Value) -> Document {
        let body = serde_json::to_vec(value).expect("documents serialize");
        let etag = hash::etag(&body);
        Document {
            body: Bytes::from(body),
            etag,
        }
    }
}

/// What does not depend on custom resources, computed once.
struct Builtin {
    /// Built-in definitions in base form (v2-style references), with GVK markers.
    defs: Defs,
    /// The same, in v3 form.
    defs_v3: Defs,
    resources: Vec<ResourceSpec>,
    /// Definitions the resources named that no built-in schema provides (served as free-form
    /// objects so every reference still resolves).
    unknown: Vec<String>,
}

/// One custom resource version: its spec and its two definitions (kind and list), base form.
struct Custom {
    spec: ResourceSpec,
    defs: Vec<(String, Value)>,
}

struct V2 {
    json: Document,
    protobuf: Document,
}

/// The documents of one API server: built-in kinds fixed at construction, custom resources
/// changed with [`OpenApi::set_custom`].
pub struct OpenApi {
    builtin: Arc<Builtin>,
    /// CRD name → the versions it serves.
    custom: BTreeMap<String, Vec<Custom>>,
    /// Group-version path (`apis/apps/v1`) → serialized v3 document.
    docs: BTreeMap<String, Document>,
    index: Document,
    /// Built on first request and after each change.
    v2: OnceLock<V2>,
}

impl OpenApi {
    /// Builds the documents for the built-in resources `resources`.
    pub fn new(resources: &[ResourceSpec]) -> OpenApi {
        let builtin = Arc::new(build_builtin(resources));
        let mut api = OpenApi {
            builtin,
            custom: BTreeMap::new(),
            docs: BTreeMap::new(),
            index: Document {
                body: Bytes::new(),
                etag: String::new(),
            },
            v2: OnceLock::new(),
        };
        let gvs: BTreeSet<String> = resources
            .iter()
            .map(|r| paths::gv_path(&r.group, &r.version))
            .collect();
        for gv in gvs {
            api.rebuild_gv(&gv);
        }
        api.rebuild_index();
        api
    }

    /// Definitions named by built-in resources that have no schema here (served as free-form
    /// objects).
    pub fn unknown_definitions(&self) -> &[String] {
        &self.builtin.unknown
    }

    /// The `/openapi/v3` index: `{"paths": {"apis/apps/v1": {"serverRelativeURL":
    /// "/openapi/v3/apis/apps/v1?hash=…"}}}`.
    pub fn v3_index(&self) -> Bytes {
        self.index.body.clone()
    }

    /// The index with its ETag.
    pub fn v3_index_document(&self) -> Document {
        self.index.clone()
    }

    /// The v3 document of a group-version (`api/v1`, `apis/apps/v1`; a leading `/` or
    /// `/openapi/v3/` is accepted) and its hash, or `None` when nothing is served there.
    pub fn v3_document(&self, group_version_path: &str) -> Option<(Bytes, String)> {
        let key = normalize_gv_path(group_version_path);
        self.docs.get(key).map(|d| (d.body.clone(), d.etag.clone()))
    }

    /// The current hash of a group-version's document (what its index URL carries).
    pub fn v3_hash(&self, group_version_path: &str) -> Option<&str> {
        self.docs
            .get(normalize_gv_path(group_version_path))
            .map(|d| d.etag.as_str())
    }

    /// The group-version paths the index lists.
    pub fn group_versions(&self) -> Vec<String> {
        self.docs.keys().cloned().collect()
    }

    /// The `/openapi/v2` document as JSON.
    pub fn v2_document(&self) -> Bytes {
        self.v2().json.body.clone()
    }

    /// The `/openapi/v2` document as gnostic protobuf
    /// (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`), what client-go requests.
    pub fn v2_protobuf(&self) -> Option<Bytes> {
        Some(self.v2().protobuf.body.clone())
    }

    /// The v2 document's hash (same for both encodings, as upstream).
    pub fn v2_etag(&self) -> String {
        self.v2().json.etag.clone()
    }

    /// Every definition (built-in and custom) in v3 form, as `{"components": {"schemas": …}}`:
    /// what strategic merge patch and server-side apply read merge keys and list types from.
    pub fn schema_document(&self) -> Value {
        let mut schemas = self.builtin.defs_v3.clone();
        for versions in self.custom.values() {
            for c in versions {
                for (name, def) in &c.defs {
                    schemas.insert(name.clone(), schemas::definition_to_v3(name, def));
                }
            }
        }
        json!({"components": {"schemas": schemas}})
    }

    /// Replaces what the CRD `crd_name` serves with `versions`: for each served version its
    /// resource and its `openAPIV3Schema` (`Value::Null` when it has none). An empty slice
    /// removes the CRD. The affected group-version documents, the index and v2 get new hashes.
    pub fn set_custom(&mut self, crd_name: &str, versions: &[(ResourceSpec, Value)]) {
        let mut touched: BTreeSet<String> = BTreeSet::new();
        if let Some(old) = self.custom.remove(crd_name) {
            touched.extend(
                old.iter()
                    .map(|c| paths::gv_path(&c.spec.group, &c.spec.version)),
            );
        }
        if !versions.is_empty() {
            let entries: Vec<Custom> = versions
                .iter()
                .map(|(spec, schema)| custom_entry(spec, schema))
                .collect();
            touched.extend(
                entries
                    .iter()
                    .map(|c| paths::gv_path(&c.spec.group, &c.spec.version)),
            );
            self.custom.insert(crd_name.to_string(), entries);
        }
        for gv in &touched {
            self.rebuild_gv(gv);
        }
        self.rebuild_index();
        self.v2 = OnceLock::new();
    }

    /// Removes a CRD's documents (same as `set_custom(crd_name, &[])`).
    pub fn remove_custom(&mut self, crd_name: &str) {
        self.set_custom(crd_name, &[]);
    }

    fn customs(&self) -> impl Iterator<Item = &Custom> {
        self.custom.values().flatten()
    }

    fn rebuild_gv(&mut self, gv: &str) {
        let builtin: Vec<&ResourceSpec> = self
            .builtin
            .resources
            .iter()
            .filter(|r| paths::gv_path(&r.group, &r.version) == gv)
            .collect();
        let custom: Vec<&Custom> = self
            .customs()
            .filter(|c| paths::gv_path(&c.spec.group, &c.spec.version) == gv)
            .collect();
        if builtin.is_empty() && custom.is_empty() {
            self.docs.remove(gv);
            return;
        }
        let doc = build_gv_document(&self.builtin, &builtin, &custom);
        self.docs.insert(gv.to_string(), Document::json(&doc));
    }

    fn rebuild_index(&mut self) {
        let mut paths = Map::new();
        for (gv, doc) in &self.docs {
            paths.insert(
                gv.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={}", doc.etag)}),
            );
        }
        self.index = Document::json(&json!({"paths": paths}));
    }

    fn v2(&self) -> &V2 {
        self.v2.get_or_init(|| {
            let doc = build_v2_document(&self.builtin, &self.customs().collect::<Vec<_>>());
            let json = Document::json(&doc);
            let protobuf = Document {
                body: Bytes::from(proto::encode_v2(&doc)),
                etag: json.etag.clone(),
            };
            V2 { json, protobuf }
        })
    }
}

fn normalize_gv_path(p: &str) -> &str {
    let p = p.strip_prefix("/openapi/v3").unwrap_or(p);
    let p = p.trim_start_matches('/');
    p.split('?').next().unwrap_or(p).trim_end_matches('/')
}

fn build_builtin(resources: &[ResourceSpec]) -> Builtin {
    let mut defs = schemas::builtin_definitions();
    let mut unknown = Vec::new();

    for r in resources {
        if !defs.contains_key(&r.definition) {
            unknown.push(r.definition.clone());
            defs.insert(
                r.definition.clone(),
                json!({"description": format!("{} (schema not published).", r.kind), "type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        }
        let list_name = format!("{}List", r.definition);
        if !defs.contains_key(&list_name) {
            let list = schemas::list_definition(&r.definition, defs.get(&r.definition), &r.kind);
            defs.insert(list_name.clone(), list);
        }
        if let Some(d) = defs.get_mut(&r.definition) {
            schemas::add_gvk(d, schemas::gvk(&r.group, &r.version, &r.kind));
        }
        if let Some(d) = defs.get_mut(&list_name) {
            schemas::add_gvk(
                d,
                schemas::gvk(&r.group, &r.version, &format!("{}List", r.kind)),
            );
        }
    }

    // Meta kinds, marked as upstream marks them: DeleteOptions and WatchEvent belong to every
    // group-version; Status and APIResourceList to v1; Scale to autoscaling/v1.
    let gvs: BTreeSet<(String, String)> = resources
        .iter()
        .map(|r| (r.group.clone(), r.version.clone()))
        .collect();
    for (name, kind) in [
        (schemas::DELETE_OPTIONS, "DeleteOptions"),
        (schemas::WATCH_EVENT, "WatchEvent"),
    ] {
        if let Some(d) = defs.get_mut(name) {
            for (g, v) in &gvs {
                schemas::add_gvk(d, schemas::gvk(g, v, kind));
            }
        }
    }
    for (name, kind) in [
        (schemas::STATUS, "Status"),
        (schemas::API_RESOURCE_LIST, "APIResourceList"),
    ] {
        if let Some(d) = defs.get_mut(name) {
            schemas::add_gvk(d, schemas::gvk("", "v1", kind));
        }
    }
    if let Some(d) = defs.get_mut(SCALE) {
        schemas::add_gvk(d, schemas::gvk("autoscaling", "v1", "Scale"));
    }

    let defs_v3: Defs = defs
        .iter()
        .map(|(k, v)| (k.clone(), schemas::definition_to_v3(k, v)))
        .collect();
    Builtin {
        defs,
        defs_v3,
        resources: resources.to_vec(),
        unknown,
    }
}

fn custom_entry(spec: &ResourceSpec, schema: &Value) -> Custom {
    let mut def = schemas::custom_definition(schema);
    schemas::add_gvk(
        &mut def,
        schemas::gvk(&spec.group, &spec.version, &spec.kind),
    );
    let list_name = format!("{}List", spec.definition);
    let mut list = schemas::list_definition(&spec.definition, Some(&def), &spec.kind);
    schemas::add_gvk(
        &mut list,
        schemas::gvk(&spec.group, &spec.version, &format!("{}List", spec.kind)),
    );
    Custom {
        spec: spec.clone(),
        defs: vec![(spec.definition.clone(), def), (list_name, list)],
    }
}

/// The roots a resource's operations refer to.
fn resource_roots(spec: &ResourceSpec) -> Vec<String> {
    let mut roots = vec![spec.definition.clone(), format!("{}List", spec.definition)];
    if spec.subresources.iter().any(|s| s == "scale") {
        roots.push(SCALE.to_string());
    }
    roots
}

fn build_gv_document(builtin: &Builtin, resources: &[&ResourceSpec], custom: &[&Custom]) -> Value {
    let (group, version) = resources
        .first()
        .map(|r| (r.group.as_str(), r.version.as_str()))
        .or_else(|| {
            custom
                .first()
                .map(|c| (c.spec.group.as_str(), c.spec.version.as_str()))
        })
        .unwrap_or(("", "v1"));

    let mut items = vec![paths::root_path(group, version)];
    let mut roots: Vec<String> = META_ROOTS.iter().map(|s| s.to_string()).collect();
    let mut sorted: Vec<(&ResourceSpec, bool)> = resources
        .iter()
        .map(|r| (*r, false))
        .chain(custom.iter().map(|c| (&c.spec, true)))
        .collect();
    sorted.sort_by(|a, b| a.0.plural.cmp(&b.0.plural));
    for (spec, is_custom) in &sorted {
        items.extend(paths::resource_paths(spec, *is_custom));
        roots.extend(resource_roots(spec));
    }

    let custom_defs: BTreeMap<&str, &Value> = custom
        .iter()
        .flat_map(|c| c.defs.iter().map(|(n, d)| (n.as_str(), d)))
        .collect();
    let lookup = |name: &str| {
        custom_defs
            .get(name)
            .copied()
            .or_else(|| builtin.defs.get(name))
    };
    let names = schemas::closure(roots, lookup);

    let mut components = Map::new();
    for name in &names {
        if let Some(def) = custom_defs.get(name.as_str()) {
            components.insert(name.clone(), schemas::definition_to_v3(name, def));
        } else if let Some(def) = builtin.defs_v3.get(name) {
            components.insert(name.clone(), def.clone());
        }
    }

    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": paths::render_v3(&items),
        "components": {
            "schemas": components,
            "securitySchemes": {
                "BearerToken": {"description": "Bearer Token authentication", "in": "header", "name": "authorization", "type": "apiKey"},
            },
        },
        "security": [{"BearerToken": []}],
    })
}

fn build_v2_document(builtin: &Builtin, custom: &[&Custom]) -> Value {
    let mut all: Vec<(&ResourceSpec, bool)> = builtin
        .resources
        .iter()
        .map(|r| (r, false))
        .chain(custom.iter().map(|c| (&c.spec, true)))
        .collect();
    all.sort_by(|a, b| {
        (paths::gv_path(&a.0.group, &a.0.version), &a.0.plural)
            .cmp(&(paths::gv_path(&b.0.group, &b.0.version), &b.0.plural))
    });

    let mut path_map = Map::new();
    let mut seen_gv = BTreeSet::new();
    for (spec, is_custom) in &all {
        if seen_gv.insert((spec.group.clone(), spec.version.clone())) {
            paths::render_v2(
                &[paths::root_path(&spec.group, &spec.version)],
                &mut path_map,
            );
        }
        paths::render_v2(&paths::resource_paths(spec, *is_custom), &mut path_map);
    }

    let mut definitions = builtin.defs.clone();
    for c in custom {
        for (name, def) in &c.defs {
            definitions.insert(name.clone(), schemas::custom_to_v2(def));
        }
    }
    let mut sorted: Vec<(String, Value)> = definitions.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));

    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": path_map,
        "definitions": Map::from_iter(sorted),
        "securityDefinitions": {
            "BearerToken": {"description": "Bearer Token authentication", "in": "header", "name": "authorization", "type": "apiKey"},
        },
        "security": [{"BearerToken": []}],
    })
}

#[cfg(test)]
mod tests;
