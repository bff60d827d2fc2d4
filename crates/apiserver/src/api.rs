//! The generic registry: one implementation of get, list, create, update, patch and delete for
//! every resource, parameterised by its [`ResourceDef`] and the hooks in [`crate::strategy`].
//! HTTP concerns (routing, negotiation, streaming) live in [`crate::http`]; this module speaks in
//! JSON values and [`ApiError`]s.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use store::{KeyValue, RangeRequest, Revision, Store, StoreError};

use crate::allocator::ServiceIps;
use crate::objects::{self, encode_for_storage, metadata_mut};
use crate::resources::{Registry, ResourceDef};
use crate::status::{ApiError, ApiResult, Cause};
use crate::{strategy, typed};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> ApiResult<Self> {
        match s {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some("Ignore") => Ok(Self::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter {other:?} is invalid; valid values are Ignore, Warn and Strict"
            ))),
        }
    }
}

/// Upstream's `maxNameGenerationCreateAttempts`: names tried for one create with generateName.
const MAX_NAME_GENERATION_ATTEMPTS: usize = 8;

/// Options common to every write.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    pub field_manager: Option<String>,
    pub force: bool,
    /// Set by server-side apply, which records managed fields itself.
    pub applied: bool,
    /// Set by the server's own changes to a stored object (pod binding), which upstream writes
    /// straight to storage: the object is stored in its typed form and stays so (no typed round
    /// trip), and no manager is recorded for the change (no managedFields entry).
    pub server_built: bool,
}

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
    /// Spec and status together: for server-internal writes such as pod binding.
    All,
}

/// What a successful write hands back.
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    /// True when the write created the object (201 instead of 200).
    pub created: bool,
    /// `object` as stored, when the stored bytes are exactly its JSON (no conversion): a JSON
    /// response is cut from them, as a GET's is, instead of serializing `object` again.
    pub stored: Option<KeyValue>,
}

impl Written {
    fn unstored(object: Value, warnings: Vec<String>, created: bool) -> Self {
        Written { object, warnings, created, stored: None }
    }
}

/// The stored form of an object when it is also the served form.
fn served_as_stored(def: &ResourceDef, kv: KeyValue) -> Option<KeyValue> {
    (def.conversion == crate::conversion::Conversion::None).then_some(kv)
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Merges a DeleteOptions body over the query parameters (the body wins, as upstream).
    pub fn merge_body(&mut self, body: &Value) -> ApiResult<()> {
        if let Some(g) = body.get("gracePeriodSeconds").filter(|v| !v.is_null()) {
            self.grace_period_seconds = Some(g.as_i64().ok_or_else(|| ApiError::bad_request("gracePeriodSeconds must be an integer"))?);
        }
        if let Some(p) = body.get("propagationPolicy").and_then(Value::as_str) {
            self.propagation_policy = Some(p.to_string());
        }
        if body.get("orphanDependents") == Some(&json!(true)) && self.propagation_policy.is_none() {
            self.propagation_policy = Some("Orphan".into());
        }
        if let Some(pre) = body.get("preconditions") {
            self.precondition_uid = pre.get("uid").and_then(Value::as_str).map(str::to_string);
            self.precondition_resource_version = pre.get("resourceVersion").and_then(Value::as_str).map(str::to_string);
        }
        if let Some(d) = body.get("dryRun").and_then(Value::as_array) {
            self.dry_run = d.iter().any(|v| v == "All");
        }
        Ok(())
    }
}

/// The result of a delete: the object is gone, or it is now terminating and still readable.
pub enum Deleted {
    Gone(Value),
    Pending(Value),
}

/// How many times a server-side read-modify-write retries a lost compare-and-swap before giving up.
const MAX_CAS_RETRIES: usize = 16;

pub struct Api {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub service_ips: ServiceIps,
    pub openapi: Arc<crate::openapi_docs::OpenApiDocs>,
    pub watch_cache: crate::cacher::WatchCache,
    /// Tolerations of not-ready and unreachable nodes given to pods that set none.
    pub default_tolerations: strategy::DefaultTolerations,
}

/// What a write to the status subresource stores: `old` with the status, labels, annotations,
/// owner references and finalizers of `new` (as upstream's status strategies). Parts `new` left
/// as they were are moved from it rather than copied from `old`: a status write usually sends
/// the whole object back, and copying a pod's spec cost more than comparing it.
fn status_write(old: &Value, new: Value) -> Value {
    const FROM_NEW_META: [&str; 4] = ["labels", "annotations", "ownerReferences", "finalizers"];
    let (Some(old_obj), Value::Object(mut new_obj)) = (old.as_object(), new) else {
        return old.clone();
    };
    let same_or_old = |new_value: Option<Value>, old_value: &Value| match new_value {
        Some(v) if v == *old_value => v,
        _ => old_value.clone(),
    };
    let mut merged = serde_json::Map::with_capacity(old_obj.len() + 1);
    for (key, old_value) in old_obj {
        match key.as_str() {
            "status" => {
                if let Some(status) = new_obj.remove("status") {
                    merged.insert(key.clone(), status);
                }
            }
            "metadata" => {
                let mut new_meta = match new_obj.remove("metadata") {
                    Some(Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                };
                let Some(old_meta) = old_value.as_object() else {
                    merged.insert(key.clone(), old_value.clone());
                    continue;
                };
                let mut meta = serde_json::Map::with_capacity(old_meta.len() + FROM_NEW_META.len());
                for (field, old_field) in old_meta {
                    if FROM_NEW_META.contains(&field.as_str()) {
                        if let Some(v) = new_meta.remove(field.as_str()) {
                            meta.insert(field.clone(), v);
                        }
                    } else {
                        meta.insert(field.clone(), same_or_old(new_meta.remove(field.as_str()), old_field));
                    }
                }
                for field in FROM_NEW_META {
                    if let Some(v) = new_meta.remove(field) {
                        meta.insert(field.into(), v);
                    }
                }
                merged.insert(key.clone(), Value::Object(meta));
            }
            _ => {
                merged.insert(key.clone(), same_or_old(new_obj.remove(key.as_str()), old_value));
            }
        }
    }
    if !old_obj.contains_key("status")
        && let Some(status) = new_obj.remove("status")
    {
        merged.insert("status".into(), status);
    }
    Value::Object(merged)
}

/// Equal apart from `metadata.resourceVersion` and `metadata.managedFields`: a write that changes
/// nothing else is a no-op (compared in place; copying both objects cost more than the check).
fn same_but_bookkeeping(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return a == b };
    let bookkeeping = |k: &str| k == "resourceVersion" || k == "managedFields";
    let same_meta = match (a.get("metadata").and_then(Value::as_object), b.get("metadata").and_then(Value::as_object)) {
        (Some(ma), Some(mb)) => {
            ma.iter().filter(|(k, _)| !bookkeeping(k)).all(|(k, v)| mb.get(k) == Some(v))
                && mb.keys().filter(|k| !bookkeeping(k)).all(|k| ma.contains_key(k))
        }
        (ma, mb) => ma == mb,
    };
    same_meta
        && a.iter().filter(|(k, _)| *k != "metadata").all(|(k, v)| b.get(k) == Some(v))
        && b.keys().filter(|k| *k != "metadata").all(|k| a.contains_key(k))
}

fn parse_rv(s: &str) -> ApiResult<Revision> {
    s.parse::<Revision>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

impl Api {
    pub fn new(store: Arc<dyn Store>, registry: Arc<Registry>, service_ips: ServiceIps, openapi: Arc<crate::openapi_docs::OpenApiDocs>) -> Self {
        let watch_cache = crate::cacher::WatchCache::new(store.clone());
        Self { store, registry, service_ips, openapi, watch_cache, default_tolerations: strategy::DefaultTolerations::default() }
    }

    /// Records who made a non-apply write in `metadata.managedFields`, as upstream does for every
    /// write, so a later server-side apply sees the right owners.
    fn record_manager(&self, def: &ResourceDef, old: Option<&Value>, new: Value, part: Part, opts: &WriteOptions) -> Value {
        if opts.applied || opts.server_built {
            return new;
        }
        let manager = opts.field_manager.as_deref().unwrap_or("unknown");
        let api_version = def.api_version();
        let now = objects::now_rfc3339();
        let options = patch::apply::UpdateOptions {
            manager,
            api_version: &api_version,
            subresource: if part == Part::Status { "status" } else { "" },
            now: &now,
            reset_fields: None,
        };
        let doc = self.openapi.schema_document();
        let definition = crate::patching::def_definition_name(def);
        match patch::OpenApiSchema::new(&doc, &definition) {
            Some(schema) => patch::apply::record_update_owned(old, new, &schema, &options),
            None => patch::apply::record_update_owned(old, new, &patch::NoSchema, &options),
        }
    }

    fn namespace_def(&self) -> Arc<ResourceDef> {
        self.registry.get("", "v1", "namespaces").expect("namespaces are built in")
    }

    pub async fn get_kv(&self, def: &ResourceDef, namespace: Option<&str>, name: &str) -> ApiResult<KeyValue> {
        let (kv, _) = self.store.get(&def.key(namespace, name)).await?;
        kv.map(|kv| def.served_kv(kv)).ok_or_else(|| ApiError::not_found(def, name))
    }

    pub async fn get(&self, def: &ResourceDef, namespace: Option<&str>, name: &str) -> ApiResult<Value> {
        let kv = self.get_kv(def, namespace, name).await?;
        objects::decode(&kv).map_err(ApiError::internal)
    }

    /// Checks the namespace a namespaced object is created in exists and is not terminating.
    async fn check_namespace(&self, def: &ResourceDef, namespace: Option<&str>, name: &str) -> ApiResult<()> {
        if !def.namespaced {
            return Ok(());
        }
        let Some(ns) = namespace else { return Err(ApiError::bad_request("a namespace is required for namespaced resources")) };
        let ns_def = self.namespace_def();
        let (kv, _) = self.store.get(&ns_def.key(None, ns)).await?;
        let Some(kv) = kv else { return Err(ApiError::namespace_not_found(ns)) };
        let obj: Value = serde_json::from_slice(&kv.value).map_err(ApiError::internal)?;
        if objects::is_deleting(&obj) && def.kind != "Event" {
            let mut err = ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                def.plural
            ));
            err.details = Some(json!({"kind": def.plural, "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]}));
            return Err(err);
        }
        Ok(())
    }

    /// Normalizes apiVersion/kind/namespace of a body against the endpoint it was sent to.
    fn check_identity(&self, def: &ResourceDef, namespace: Option<&str>, obj: &mut Value) -> ApiResult<()> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body of the request must be a JSON or YAML object"));
        }
        let api_version = def.api_version();
        match obj.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => obj["apiVersion"] = json!(api_version),
            Some(v) if v == api_version => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
        }
        match obj.get("kind").and_then(Value::as_str) {
            None | Some("") => obj["kind"] = json!(def.kind),
            Some(k) if k == def.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!("the kind in the data ({k}) does not match the expected kind ({})", def.kind)));
            }
        }
        let meta = metadata_mut(obj);
        if def.namespaced {
            match (meta.get("namespace").and_then(Value::as_str), namespace) {
                (Some(body_ns), Some(url_ns)) if !body_ns.is_empty() && body_ns != url_ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (_, Some(url_ns)) => {
                    meta.insert("namespace".into(), json!(url_ns));
                }
                (_, None) => {}
            }
        } else {
            meta.remove("namespace");
        }
        Ok(())
    }

    /// Type-checks and prunes a built-in object; custom resources go through their schema.
    fn decode_typed(&self, def: &ResourceDef, obj: Value, validation: FieldValidation, warnings: &mut Vec<String>) -> ApiResult<Value> {
        if def.custom {
            return crate::crd::validate_custom(def, obj, validation, warnings);
        }
        match typed::decode(&def.group, &def.version, &def.kind, obj) {
            Err(e) => Err(ApiError::bad_request(format!("{} in version \"{}\" cannot be handled as a {}: {e}", def.kind, def.version, def.kind))),
            Ok(decoded) => {
                if !decoded.unknown_fields.is_empty() {
                    match validation {
                        FieldValidation::Strict => {
                            let list: Vec<String> = decoded.unknown_fields.iter().map(|f| format!("unknown field \"{f}\"")).collect();
                            return Err(ApiError::bad_request(format!("strict decoding error: {}", list.join(", "))));
                        }
                        FieldValidation::Warn => warnings.extend(decoded.unknown_fields.iter().map(|f| format!("unknown field \"{f}\""))),
                        FieldValidation::Ignore => {}
                    }
                }
                Ok(decoded.object)
            }
        }
    }

    pub async fn create(&self, def: &ResourceDef, namespace: Option<&str>, mut obj: Value, opts: &WriteOptions) -> ApiResult<Written> {
        self.check_identity(def, namespace, &mut obj)?;
        let mut warnings = Vec::new();
        let mut obj = self.decode_typed(def, obj, opts.field_validation, &mut warnings)?;
        let mut generated_from = None;
        {
            let meta = metadata_mut(&mut obj);
            if meta.get("resourceVersion").and_then(Value::as_str).is_some_and(|rv| !rv.is_empty()) {
                return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
            }
            let has_name = meta.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
            if !has_name && let Some(prefix) = meta.get("generateName").and_then(Value::as_str).filter(|p| !p.is_empty()) {
                let name = format!("{prefix}{}", objects::random_suffix(5));
                generated_from = Some(prefix.to_string());
                meta.insert("name".into(), json!(name));
            }
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), json!(objects::now_rfc3339()));
            for server_owned in ["deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
                meta.remove(server_owned);
            }
            if def.tracks_generation || def.custom {
                meta.insert("generation".into(), json!(1));
            } else {
                meta.remove("generation");
            }
        }
        strategy::initial_status(def, &mut obj);
        strategy::admit_create(def, &mut obj, self.default_tolerations);
        crate::admission::admit_create(self, def, namespace, &mut obj).await?;
        strategy::apply_defaults(def, &mut obj);
        let name = objects::name(&obj).to_string();
        let causes = strategy::validate(def, &obj, None);
        if !causes.is_empty() {
            return Err(ApiError::invalid(def, &name, causes));
        }
        self.check_namespace(def, namespace, &name).await?;
        let mut obj = self.record_manager(def, None, obj, Part::Main, opts);
        let allocated = if def.kind == "Service" && def.group.is_empty() {
            self.service_ips.allocate_for(def, &mut obj, &*self.store).await?
        } else {
            None
        };
        if def.kind == "CustomResourceDefinition" {
            crate::crd::validate_crd(def, &obj)?;
        }
        if opts.dry_run {
            if let Some(ip) = allocated {
                self.service_ips.release(ip);
            }
            return Ok(Written::unstored(obj, warnings, true));
        }
        let mut name = name;
        let mut attempts = 1;
        let created = loop {
            let key = def.key(namespace, &name);
            match self.store.create(&key, storage_bytes(def, &obj)).await {
                // A generated name that is taken gets another suffix, as upstream's registry
                // tries eight before giving up (a ReplicaSet's pods share one prefix, so with
                // 27^5 suffixes collisions do happen in clusters of tens of thousands of pods).
                Err(StoreError::AlreadyExists(_)) if attempts < MAX_NAME_GENERATION_ATTEMPTS && generated_from.is_some() => {
                    attempts += 1;
                    name = format!("{}{}", generated_from.as_deref().unwrap_or_default(), objects::random_suffix(5));
                    metadata_mut(&mut obj).insert("name".into(), json!(name));
                }
                other => break other,
            }
        };
        match created {
            Ok(kv) => {
                metadata_mut(&mut obj).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                Ok(Written { object: obj, warnings, created: true, stored: served_as_stored(def, kv) })
            }
            Err(e) => {
                if let Some(ip) = allocated {
                    self.service_ips.release(ip);
                }
                Err(match e {
                    StoreError::AlreadyExists(_) => ApiError::already_exists(def, &name),
                    other => other.into(),
                })
            }
        }
    }

    /// Runs the update pipeline on `new` against the stored `current` and writes it with a
    /// compare-and-swap on `current`'s revision.
    async fn write_update(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        current: &KeyValue,
        old: Option<Value>,
        new: Value,
        part: Part,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        // Callers that already decoded `current` (patches) hand it over rather than pay twice.
        let old: Value = match old {
            Some(old) => old,
            None => objects::decode(current).map_err(ApiError::internal)?,
        };
        let mut new = new;
        self.check_identity(def, namespace, &mut new)?;
        if objects::name(&new) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                objects::name(&new)
            )));
        }
        if let Some(rv) = objects::meta_str(&new, "resourceVersion").filter(|rv| !rv.is_empty())
            && parse_rv(rv)? != current.mod_revision
        {
            return Err(ApiError::stale(def, name));
        }
        // A uid in the body is a precondition: the write is for that object, not a namesake
        // created since (the kubelet's status patches rely on this).
        if let Some(uid) = objects::meta_str(&new, "uid").filter(|u| !u.is_empty())
            && Some(uid) != objects::meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                def,
                name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", objects::meta_str(&old, "uid").unwrap_or("")),
            ));
        }
        let mut warnings = Vec::new();
        let mut new = if opts.server_built { new } else { self.decode_typed(def, new, opts.field_validation, &mut warnings)? };
        // Server-owned metadata cannot be changed by a client.
        {
            let old_meta = objects::metadata(&old);
            let meta = metadata_mut(&mut new);
            for field in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "selfLink"] {
                match old_meta.and_then(|m| m.get(field)) {
                    Some(v) => meta.insert(field.into(), v.clone()),
                    None => meta.remove(field),
                };
            }
            if objects::is_deleting(&old) {
                // A terminating object may drop finalizers but not gain new ones.
                let old_finalizers = objects::finalizers(&old);
                let added: Vec<String> = objects::finalizers(&new).into_iter().filter(|f| !old_finalizers.contains(f)).collect();
                if !added.is_empty() {
                    return Err(ApiError::invalid(
                        def,
                        name,
                        vec![Cause::forbidden("metadata.finalizers", format!("no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"))],
                    ));
                }
            }
        }
        match part {
            Part::Main if def.status => {
                // The main resource ignores status; the status subresource carries it.
                match old.get("status") {
                    Some(s) if new.get("status") != Some(s) => new["status"] = s.clone(),
                    Some(_) => {}
                    None => {
                        if let Some(o) = new.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            Part::Main | Part::All => {}
            Part::Status => new = status_write(&old, new),
        }
        strategy::apply_defaults(def, &mut new);
        if (def.tracks_generation || def.custom) && part != Part::Status && objects::spec_part(&old) != objects::spec_part(&new) {
            let generation = objects::metadata(&old).and_then(|m| m.get("generation")).and_then(Value::as_i64).unwrap_or(0);
            metadata_mut(&mut new).insert("generation".into(), json!(generation + 1));
        }
        let causes = strategy::validate(def, &new, Some(&old));
        if !causes.is_empty() {
            return Err(ApiError::invalid(def, name, causes));
        }
        if def.kind == "CustomResourceDefinition" {
            crate::crd::validate_crd(def, &new)?;
        }
        let mut new = self.record_manager(def, Some(&old), new, part, opts);
        let unchanged = same_but_bookkeeping(&new, &old);
        if opts.dry_run {
            return Ok(Written::unstored(new, warnings, false));
        }
        // Removing the last finalizer from an object whose deletion is due completes the delete.
        if objects::is_deleting(&new) && objects::finalizers(&new).is_empty() && deletion_due(&new) {
            let key = def.key(namespace, name);
            return match self.store.delete(&key, Some(current.mod_revision)).await {
                Ok((_, rev)) => {
                    metadata_mut(&mut new).insert("resourceVersion".into(), json!(rev.to_string()));
                    Ok(Written::unstored(new, warnings, false))
                }
                Err(e) => Err(write_error(def, name, e)),
            };
        }
        if unchanged {
            // Upstream skips no-op writes: the revision does not move and watchers see nothing.
            return Ok(Written { object: old, warnings, created: false, stored: served_as_stored(def, current.clone()) });
        }
        let key = def.key(namespace, name);
        match self.store.update(&key, storage_bytes(def, &new), current.mod_revision).await {
            Ok(kv) => {
                metadata_mut(&mut new).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                Ok(Written { object: new, warnings, created: false, stored: served_as_stored(def, kv) })
            }
            Err(e) => Err(write_error(def, name, e)),
        }
    }

    /// PUT: replace the object (or its status).
    pub async fn update(&self, def: &ResourceDef, namespace: Option<&str>, name: &str, new: Value, part: Part, opts: &WriteOptions) -> ApiResult<Written> {
        let rv_given = objects::meta_str(&new, "resourceVersion").is_some_and(|rv| !rv.is_empty());
        let mut attempts = 0;
        loop {
            let current = match self.get_kv(def, namespace, name).await {
                Ok(kv) => kv,
                Err(e) if e.code == 404 && part == Part::Main && allows_create_on_update(def) => {
                    let mut new = new.clone();
                    metadata_mut(&mut new).remove("resourceVersion");
                    return self.create(def, namespace, new, opts).await;
                }
                Err(e) => return Err(e),
            };
            match self.write_update(def, namespace, name, &current, None, new.clone(), part, opts).await {
                Err(e) if e.code == 409 && e.reason == "Conflict" && !rv_given && attempts < MAX_CAS_RETRIES => attempts += 1,
                other => return other,
            }
        }
    }

    /// PATCH: read, apply `patch_fn`, write with compare-and-swap, retrying lost races.
    pub async fn patch(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        part: Part,
        opts: &WriteOptions,
        patch_fn: &(dyn Fn(Option<&Value>) -> ApiResult<Value> + Send + Sync),
    ) -> ApiResult<Written> {
        let mut attempts = 0;
        loop {
            let current = match self.get_kv(def, namespace, name).await {
                Ok(kv) => kv,
                Err(e) if e.code == 404 => {
                    // Only server-side apply creates through PATCH; others see NotFound.
                    let created = patch_fn(None).map_err(|_| e.clone())?;
                    return self.create(def, namespace, created, opts).await;
                }
                Err(e) => return Err(e),
            };
            let old = objects::decode(&current).map_err(ApiError::internal)?;
            let patched = patch_fn(Some(&old))?;
            let rv_given = objects::meta_str(&patched, "resourceVersion").is_some_and(|rv| Some(rv) != objects::meta_str(&old, "resourceVersion"));
            match self.write_update(def, namespace, name, &current, Some(old), patched, part, opts).await {
                Err(e) if e.code == 409 && e.reason == "Conflict" && !rv_given && attempts < MAX_CAS_RETRIES => attempts += 1,
                other => return other,
            }
        }
    }

    pub async fn delete(&self, def: &ResourceDef, namespace: Option<&str>, name: &str, opts: &DeleteOptions) -> ApiResult<Deleted> {
        let mut attempts = 0;
        loop {
            match self.try_delete(def, namespace, name, opts).await {
                Err(e) if e.code == 409 && e.reason == "Conflict" && opts.precondition_resource_version.is_none() && attempts < MAX_CAS_RETRIES => {
                    attempts += 1
                }
                other => return other,
            }
        }
    }

    async fn try_delete(&self, def: &ResourceDef, namespace: Option<&str>, name: &str, opts: &DeleteOptions) -> ApiResult<Deleted> {
        let current = self.get_kv(def, namespace, name).await?;
        let mut obj = objects::decode(&current).map_err(ApiError::internal)?;
        if let Some(uid) = &opts.precondition_uid
            && objects::meta_str(&obj, "uid") != Some(uid.as_str())
        {
            return Err(ApiError::conflict(
                def,
                name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", objects::meta_str(&obj, "uid").unwrap_or("")),
            ));
        }
        if let Some(rv) = &opts.precondition_resource_version
            && parse_rv(rv)? != current.mod_revision
        {
            return Err(ApiError::conflict(
                def,
                name,
                &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", current.mod_revision),
            ));
        }
        let policy = opts.propagation_policy.as_deref().unwrap_or("Background");
        if !matches!(policy, "Background" | "Foreground" | "Orphan") {
            return Err(ApiError::invalid(
                def,
                name,
                vec![Cause::unsupported("propagationPolicy", &json!(policy), &["Foreground", "Background", "Orphan"])],
            ));
        }
        let mut finalizers = objects::finalizers(&obj);
        let already_deleting = objects::is_deleting(&obj);
        let mut changed = false;
        let wanted = match policy {
            "Foreground" => Some("foregroundDeletion"),
            "Orphan" => Some("orphan"),
            _ => None,
        };
        if let Some(f) = wanted
            && !finalizers.iter().any(|x| x == f)
            && (!already_deleting || opts.propagation_policy.is_some())
        {
            finalizers.retain(|x| x != "foregroundDeletion" && x != "orphan");
            finalizers.push(f.to_string());
            changed = true;
        }
        let grace = self.grace_period(def, &obj, opts);
        // Namespaces keep their spec finalizers until the namespace controller has emptied them.
        let spec_finalizers = def.kind == "Namespace"
            && def.group.is_empty()
            && obj.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
        let pending = !finalizers.is_empty() || grace > 0 || spec_finalizers;
        if !pending {
            if opts.dry_run {
                return Ok(Deleted::Gone(obj));
            }
            let key = def.key(namespace, name);
            return match self.store.delete(&key, Some(current.mod_revision)).await {
                Ok((_, rev)) => {
                    metadata_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
                    if def.kind == "Service" && def.group.is_empty() {
                        self.service_ips.release_of(&obj);
                    }
                    Ok(Deleted::Gone(obj))
                }
                Err(e) => Err(write_error(def, name, e)),
            };
        }
        let meta = metadata_mut(&mut obj);
        if changed {
            meta.insert("finalizers".into(), json!(finalizers));
        }
        if !already_deleting {
            let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
            meta.insert("deletionTimestamp".into(), json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            changed = true;
        } else if grace < meta.get("deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0) {
            // A second delete may shorten the grace period, never lengthen it.
            let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
            meta.insert("deletionTimestamp".into(), json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            changed = true;
        }
        if def.kind == "Namespace" && def.group.is_empty() {
            obj["status"]["phase"] = json!("Terminating");
            changed = true;
        }
        if !changed || opts.dry_run {
            return Ok(Deleted::Pending(obj));
        }
        match self.store.update(&def.key(namespace, name), storage_bytes(def, &obj), current.mod_revision).await {
            Ok(kv) => {
                metadata_mut(&mut obj).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                Ok(Deleted::Pending(obj))
            }
            Err(e) => Err(write_error(def, name, e)),
        }
    }

    /// Pods are deleted gracefully once a node runs them; everything else at once.
    fn grace_period(&self, def: &ResourceDef, obj: &Value, opts: &DeleteOptions) -> i64 {
        if !(def.kind == "Pod" && def.group.is_empty()) {
            return 0;
        }
        let scheduled = obj.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        let phase = obj.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
        if !scheduled || phase == "Succeeded" || phase == "Failed" {
            return 0;
        }
        let grace = opts
            .grace_period_seconds
            .or_else(|| obj.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
            .unwrap_or(30);
        // A requested 0 deletes at once (kubectl --force --grace-period=0).
        grace.max(0)
    }

    /// A consistent page of `def`'s objects under `prefix`, in `def`'s version.
    pub async fn range(&self, def: &ResourceDef, prefix: String, start_after: Option<String>, limit: usize, revision: Option<Revision>) -> ApiResult<store::RangeResponse> {
        let mut resp = self.store.range(RangeRequest { prefix, start_after, limit, revision }).await?;
        if def.conversion != crate::conversion::Conversion::None {
            resp.kvs = resp.kvs.into_iter().map(|kv| def.served_kv(kv)).collect();
        }
        Ok(resp)
    }

    /// Ensures the namespaces every cluster has exist.
    pub async fn bootstrap(&self) -> ApiResult<()> {
        let ns_def = self.namespace_def();
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match self.create(&ns_def, None, obj, &WriteOptions::default()).await {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn raw_bytes(kv: &KeyValue) -> Bytes {
        Bytes::from(objects::with_resource_version(&kv.value, kv.mod_revision))
    }
}

/// The API error for a failed single-object store write.
fn storage_bytes(def: &ResourceDef, obj: &Value) -> Bytes {
    match def.conversion {
        crate::conversion::Conversion::None => encode_for_storage(obj),
        _ => encode_for_storage(&def.to_storage(obj)),
    }
}

fn write_error(def: &ResourceDef, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict { .. } => ApiError::stale(def, name),
        StoreError::NotFound(_) => ApiError::not_found(def, name),
        other => other.into(),
    }
}

/// Whether a terminating object's grace period has run out.
fn deletion_due(obj: &Value) -> bool {
    objects::metadata(obj).and_then(|m| m.get("deletionGracePeriodSeconds")).and_then(Value::as_i64).unwrap_or(0) == 0
}

/// Upstream lets PUT create these kinds (clients of leases and endpoints rely on it).
fn allows_create_on_update(def: &ResourceDef) -> bool {
    matches!((def.group.as_str(), def.kind.as_str()), ("", "Endpoints") | ("coordination.k8s.io", "Lease") | ("", "Node"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An API over a fresh store in a temporary directory (removed by the caller).
    async fn test_api() -> (std::path::PathBuf, Arc<Registry>, Api) {
        let dir = std::env::temp_dir().join(format!("berth-api-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store: Arc<dyn Store> = Arc::new(store::EmbeddedStore::open(store::EmbeddedOptions::new(dir.join("state.redb"))).expect("open store"));
        let registry = Arc::new(Registry::new());
        let openapi = Arc::new(crate::openapi_docs::OpenApiDocs::new(&registry));
        let api = Api::new(store, registry.clone(), ServiceIps::new("10.43.0.0/16").expect("cidr"), openapi);
        api.bootstrap().await.expect("bootstrap");
        (dir, registry, api)
    }

    #[tokio::test]
    async fn a_taken_generated_name_is_generated_again() {
        let (dir, registry, api) = test_api().await;
        let def = registry.get("", "v1", "configmaps").expect("configmaps");
        let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "taken-"}});
        // The same seed draws the same suffix, so the second create first tries a taken name.
        fastrand::seed(7);
        let first = api.create(&def, Some("default"), config_map.clone(), &WriteOptions::default()).await.expect("first create");
        fastrand::seed(7);
        let second = api.create(&def, Some("default"), config_map, &WriteOptions::default()).await.expect("second create gets another name");
        let (first, second) = (objects::name(&first.object).to_string(), objects::name(&second.object).to_string());
        assert!(first.starts_with("taken-") && second.starts_with("taken-") && first.len() == second.len(), "{first} {second}");
        assert_ne!(first, second);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_written_object_is_its_stored_bytes_unless_converted() {
        let (dir, registry, api) = test_api().await;
        let def = registry.get("", "v1", "configmaps").expect("configmaps");
        let created = api.create(&def, Some("default"), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "1"}}), &WriteOptions::default()).await.expect("create");
        let updated = api.update(&def, Some("default"), "c", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "2"}}), Part::Main, &WriteOptions::default()).await.expect("update");
        // A no-op write answers with what is stored.
        let same = api.update(&def, Some("default"), "c", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "2"}}), Part::Main, &WriteOptions::default()).await.expect("no-op update");
        for written in [&created, &updated, &same] {
            let stored = written.stored.as_ref().expect("stored bytes");
            let parsed: Value = serde_json::from_slice(&Api::raw_bytes(stored)).expect("json");
            assert_eq!(parsed, written.object);
        }
        assert_eq!(same.stored.as_ref().map(|kv| kv.mod_revision), updated.stored.as_ref().map(|kv| kv.mod_revision));
        let dry = WriteOptions { dry_run: true, ..WriteOptions::default() };
        let not_stored = api.create(&def, Some("default"), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}}), &dry).await.expect("dry run");
        assert!(not_stored.stored.is_none());
        // autoscaling/v1 is served from v2: its answer is the converted object, not the stored one.
        let hpa = registry.get("autoscaling", "v1", "horizontalpodautoscalers").expect("hpa v1");
        let scaler = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}, "minReplicas": 1, "maxReplicas": 3}});
        let converted = api.create(&hpa, Some("default"), scaler, &WriteOptions::default()).await.expect("hpa create");
        assert!(converted.stored.is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_status_write_takes_status_and_listed_metadata_from_the_request_only() {
        let old = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "uid": "u1", "labels": {"a": "1"}, "finalizers": ["f"], "managedFields": [{"manager": "m"}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Pending"}
        });
        // The request changes the spec and the uid (ignored), status, labels and annotations
        // (taken), and drops the finalizers (taken: upstream lets a status write drop them).
        let new = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "uid": "u2", "labels": {"a": "2"}, "annotations": {"b": "x"}, "managedFields": [{"manager": "other"}]},
            "spec": {"nodeName": "n2", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running"}
        });
        let written = status_write(&old, new);
        assert_eq!(
            written,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "uid": "u1", "labels": {"a": "2"}, "managedFields": [{"manager": "m"}], "annotations": {"b": "x"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
                "status": {"phase": "Running"}
            })
        );
        // The stored key order is kept, so an unchanged part serializes as before.
        let keys: Vec<&String> = written.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        assert_eq!(keys, ["apiVersion", "kind", "metadata", "spec", "status"]);
        // A request without status removes it; one for an object without status adds it.
        let without = status_write(&old, json!({"metadata": {"name": "p"}}));
        assert!(without.get("status").is_none() && without["spec"] == old["spec"], "{without}");
        let added = status_write(&json!({"metadata": {"name": "p"}, "spec": {}}), json!({"metadata": {"name": "p"}, "status": {"phase": "Running"}}));
        assert_eq!(added["status"]["phase"], "Running");
    }
}
