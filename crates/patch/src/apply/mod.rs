//! Server-side apply and field ownership (`metadata.managedFields`).
//!
//! [`server_side_apply`] merges an applied configuration into the live object, records what
//! the applying manager now owns, removes what it owned before and no longer applies (unless
//! someone else owns it), and refuses to change fields other managers own unless forced.
//! [`record_update`] records ownership for any other write (create, update, non-apply patch).
//!
//! The algorithm is structured-merge-diff's `Updater` wrapped the way kube-apiserver wraps it
//! (strip of identity fields, the "before-first-apply" owner, per-version update owners capped
//! at ten, kubectl's last-applied annotation interplay). Objects are served in one version,
//! so no conversion between versions happens here.

mod fieldpath;
mod managed;
mod typed;

use serde_json::{Map, Value};

pub use fieldpath::{FieldSet, Path, PathElement};

use crate::schema::PatchSchema;
use managed::{ManagedFields, ManagerId, Operation, Owned, Source};
use typed::Mode;

/// kubectl's client-side apply annotation.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Who applies, and how.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions<'a> {
    /// The `fieldManager` query parameter (required for apply; empty becomes "unknown").
    pub manager: &'a str,
    /// The served group/version, e.g. "apps/v1"; the configuration must use it.
    pub api_version: &'a str,
    /// The served kind; the configuration must use it.
    pub kind: &'a str,
    /// "" for the resource itself, else e.g. "status" or "scale".
    pub subresource: &'a str,
    /// `force=true`: take ownership of conflicting fields instead of failing.
    pub force: bool,
    /// The operation's time, RFC 3339 (`2024-05-01T10:00:00Z`), recorded in managedFields.
    pub now: &'a str,
    /// Fields this endpoint resets (e.g. `.status` on the main resource); nobody gains
    /// ownership of them here.
    pub reset_fields: Option<&'a FieldSet>,
}

/// Who writes, for a non-apply write.
#[derive(Debug, Clone, Copy)]
pub struct UpdateOptions<'a> {
    /// The `fieldManager` query parameter, or the client's default (user agent); empty
    /// becomes "unknown".
    pub manager: &'a str,
    /// The group/version the request used, e.g. "apps/v1".
    pub api_version: &'a str,
    /// "" for the resource itself, else e.g. "status".
    pub subresource: &'a str,
    /// The operation's time, RFC 3339.
    pub now: &'a str,
    /// Fields this endpoint resets; nobody gains ownership of them here.
    pub reset_fields: Option<&'a FieldSet>,
}

/// One field another manager owns and the apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The other manager's name.
    pub manager: String,
    /// How upstream names that manager in messages: `"kubectl-client-side-apply" using v1`.
    pub manager_description: String,
    /// The field, as upstream prints paths: `.spec.replicas`,
    /// `.spec.template.spec.containers[name="app"].image`.
    pub field: String,
}

impl Conflict {
    /// The text of the `FieldManagerConflict` status cause.
    pub fn message(&self) -> String {
        format!("conflict with {}", self.manager_description)
    }
}

/// Why an apply failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    /// Fields owned by other managers would change (409 Conflict; causes are the conflicts).
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<Conflict>),
    /// The request itself is wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// The configuration or the stored ownership could not be processed; upstream reports
    /// these as internal errors (500).
    #[error("{0}")]
    Internal(String),
}

impl ApplyError {
    /// The HTTP status kube-apiserver answers.
    pub fn status_code(&self) -> u16 {
        match self {
            ApplyError::Conflicts(_) => 409,
            ApplyError::BadRequest(_) => 400,
            ApplyError::Internal(_) => 500,
        }
    }
}

/// Upstream's conflict message: one conflict on one line, several grouped by manager.
fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!("Apply failed with 1 conflict: {}: {}", c.message(), c.field);
    }
    let mut managers: Vec<&str> = conflicts
        .iter()
        .map(|c| c.manager_description.as_str())
        .collect();
    managers.sort();
    managers.dedup();
    let mut lines = Vec::new();
    for m in managers {
        lines.push(format!("conflicts with {m}:"));
        for c in conflicts.iter().filter(|c| c.manager_description == m) {
            lines.push(format!("- {}", c.field));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// Applies `config` (the request body of an `application/apply-patch+yaml` PATCH, as JSON)
/// to `live` (`None` when apply creates the object) and returns the new object with its
/// `metadata.managedFields` updated.
///
/// When nothing but ownership changes the returned object equals `live` apart from
/// managedFields; the caller decides whether that is worth a write.
pub fn server_side_apply<S: PatchSchema>(
    live: Option<&Value>,
    config: &Value,
    schema: &S,
    opts: &ApplyOptions<'_>,
) -> Result<Value, ApplyError> {
    let Value::Object(config_map) = config else {
        return Err(ApplyError::BadRequest(format!(
            "error decoding YAML: error unmarshaling JSON: while decoding JSON: json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
            crate::error::json_kind(config)
        )));
    };
    let applied_version = config_map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let applied_kind = config_map.get("kind").and_then(Value::as_str).unwrap_or("");
    if applied_version != opts.api_version || applied_kind != opts.kind {
        return Err(ApplyError::BadRequest(format!(
            "invalid object type: {}",
            gvk_string(applied_version, applied_kind)
        )));
    }
    if config
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .is_some_and(|v| !v.is_null())
    {
        return Err(ApplyError::BadRequest(
            "metadata.managedFields must be nil".into(),
        ));
    }
    let mut config = config.clone();
    managed::strip(&mut config);
    typed::validate(&config, Some(schema)).map_err(|e| {
        ApplyError::Internal(format!(
            "failed to create typed patch object ({}): {e}",
            object_gvknn(&config)
        ))
    })?;

    let mut live_obj = live.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    let managed = managed::decode(&live_obj, Source::Stored)
        .map_err(|e| ApplyError::Internal(format!("failed to decode managed fields: {e}")))?;
    managed::strip(&mut live_obj);

    let updater = Updater {
        schema,
        reset: opts.reset_fields,
        api_version: opts.api_version,
        subresource: opts.subresource,
        now: opts.now,
    };
    let id = ManagerId::new(
        opts.manager,
        Operation::Apply,
        opts.api_version,
        opts.subresource,
    );

    let (mut object, managed) =
        match updater.apply(&live_obj, &config, managed.clone(), &id, opts.force) {
            // kubectl switching from client-side to server-side apply: fields it set client-side
            // (still as recorded in the last-applied annotation) may be taken over silently.
            Err(ApplyError::Conflicts(conflicts)) if id.manager == "kubectl" => {
                let Some(allowed) = updater.allowed_conflicts_from_last_applied(&live_obj) else {
                    return Err(ApplyError::Conflicts(conflicts));
                };
                let remaining: Vec<Conflict> = conflicts
                    .into_iter()
                    .filter(|c| !allowed.contains(&c.field))
                    .collect();
                if !remaining.is_empty() {
                    return Err(ApplyError::Conflicts(remaining));
                }
                updater.apply(&live_obj, &config, managed, &id, true)?
            }
            other => other?,
        };

    if id.manager == "kubectl" {
        update_last_applied(&mut object, &config);
    }
    managed::encode_into(&mut object, managed);
    Ok(object)
}

/// Records the manager of a non-apply write (create when `old` is `None`) in
/// `new`'s `metadata.managedFields` and returns the object to store.
///
/// Clients may set managedFields themselves on the main resource: a valid non-empty list in
/// `new` is taken as the starting point, `[]` (or `[{}]`) resets ownership, anything else
/// falls back to `old`'s. Objects that carry no ownership are only tracked from creation on
/// (or from their first apply).
pub fn record_update<S: PatchSchema>(
    old: Option<&Value>,
    new: &Value,
    schema: &S,
    opts: &UpdateOptions<'_>,
) -> Value {
    record_update_owned(old, new.clone(), schema, opts)
}

/// [`record_update`] taking the new object by value: the API server's writes own it, and
/// copying a whole object per write was a fifth of a status patch's cost.
pub fn record_update_owned<S: PatchSchema>(
    old: Option<&Value>,
    new: Value,
    schema: &S,
    opts: &UpdateOptions<'_>,
) -> Value {
    let mut new_obj = new;
    let old_managed = || {
        old.and_then(|o| managed::decode(o, Source::Stored).ok())
            .unwrap_or_default()
    };
    // Most updates send back what they read (patches always do): that is the stored record,
    // whose encoding can be kept, and taken from the request rather than copied.
    let sent_stored = old.is_some_and(|o| {
        let sent = new_obj.get("metadata").and_then(|m| m.get("managedFields"));
        sent.is_some_and(|sent| o.get("metadata").and_then(|m| m.get("managedFields")).is_some_and(|stored| fieldpath::values_equal(stored, sent)))
    });
    let take_stored = |obj: &mut Value| {
        let list = obj
            .get_mut("metadata")
            .and_then(|m| m.as_object_mut())
            .and_then(|m| m.remove("managedFields"))
            .unwrap_or(Value::Null);
        managed::decode_stored_owned(list).ok().unwrap_or_default()
    };
    let mut managed = if !opts.subresource.is_empty() {
        if sent_stored { take_stored(&mut new_obj) } else { old_managed() }
    } else if managed::is_reset(&new_obj) {
        ManagedFields::default()
    } else if sent_stored {
        take_stored(&mut new_obj)
    } else {
        match managed::decode(&new_obj, Source::Request) {
            Ok(m) if !m.fields.is_empty() => m,
            _ => old_managed(),
        }
    };

    managed::strip(&mut new_obj);
    if !new_obj.is_object() {
        return new_obj;
    }
    // The comparison skips metadata.managedFields, so the old object is read as it is.
    let no_old = Value::Object(Map::new());
    let old_obj = old.unwrap_or(&no_old);

    if managed.fields.is_empty() {
        let creating = old.is_none_or(|o| {
            o.pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
        });
        if !creating {
            return new_obj;
        }
    }

    let updater = Updater {
        schema,
        reset: opts.reset_fields,
        api_version: opts.api_version,
        subresource: opts.subresource,
        now: opts.now,
    };
    let id = ManagerId::new(
        opts.manager,
        Operation::Update,
        opts.api_version,
        opts.subresource,
    );
    updater.update(old_obj, &new_obj, &mut managed, &id);
    managed::encode_into(&mut new_obj, managed);
    new_obj
}

/// The fields `config` sets, as server-side apply records them for its manager.
pub fn applied_field_set<S: PatchSchema>(config: &Value, schema: &S) -> Result<FieldSet, String> {
    typed::field_set(config, Some(schema), Mode::Strict)
}

/// Identity fields nobody owns (upstream's `stripMetaManager`), built once.
fn strip_set() -> &'static FieldSet {
    static SET: std::sync::OnceLock<FieldSet> = std::sync::OnceLock::new();
    SET.get_or_init(build_strip_set)
}

fn build_strip_set() -> FieldSet {
    let f = |s: &str| PathElement::Field(s.into());
    let mut set = FieldSet::new();
    set.insert(&[f("apiVersion")]);
    set.insert(&[f("kind")]);
    set.insert(&[f("metadata")]);
    for name in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ] {
        set.insert(&[f("metadata"), f(name)]);
    }
    set
}

struct Updater<'a, S> {
    schema: &'a S,
    reset: Option<&'a FieldSet>,
    api_version: &'a str,
    subresource: &'a str,
    now: &'a str,
}

impl<S: PatchSchema> Updater<'_, S> {
    fn schema(&self) -> Option<&S> {
        Some(self.schema)
    }

    fn field_set(&self, v: &Value) -> FieldSet {
        typed::field_set(v, self.schema(), Mode::Lenient).unwrap_or_default()
    }

    fn ensure(&self, set: &FieldSet) -> FieldSet {
        typed::ensure_named_fields_are_members(set, self.schema())
    }

    fn filter(&self, set: FieldSet) -> FieldSet {
        match self.reset {
            Some(r) => set.recursive_difference(r),
            None => set,
        }
    }

    fn remove(&self, v: &Value, set: &FieldSet) -> Value {
        typed::remove_items(v, set, self.schema()).unwrap_or_else(|| Value::Object(Map::new()))
    }

    /// The apply chain below kubectl's last-applied handling: start tracking if nobody owns
    /// anything yet, merge, prune, check conflicts, strip identity fields, stamp the time.
    fn apply(
        &self,
        live: &Value,
        config: &Value,
        mut managed: ManagedFields,
        id: &ManagerId,
        force: bool,
    ) -> Result<(Value, ManagedFields), ApplyError> {
        if managed.fields.is_empty() {
            // Whatever the object holds before its first apply belongs to someone else.
            let before = ManagerId::new(
                "before-first-apply",
                Operation::Update,
                self.api_version,
                self.subresource,
            );
            self.update(&Value::Object(Map::new()), live, &mut managed, &before);
        }

        let mut path = Vec::new();
        let merged = typed::merge(Some(live), Some(config), self.schema(), &mut path)
            .map_err(|e| ApplyError::Internal(format!("failed to merge config: {e}")))?
            .unwrap_or_else(|| Value::Object(Map::new()));
        let last = managed.fields.get(id).map(|o| o.set.clone());
        let set = typed::field_set(config, self.schema(), Mode::Strict)
            .map_err(|e| ApplyError::Internal(format!("failed to get field set: {e}")))?;
        managed
            .fields
            .insert(id.clone(), Owned::new(self.filter(set), self.api_version.into()));

        let new = match last {
            Some(last) if !last.is_empty() => self.prune(&merged, &managed, &last),
            _ => merged,
        };
        self.resolve_conflicts(live, &new, &mut managed, id, force)?;
        strip_identity(&mut managed, id);

        if fieldpath::values_equal(live, &new) {
            return Ok((live.clone(), managed));
        }
        managed.times.insert(id.clone(), self.now.to_string());
        Ok((new, managed))
    }

    /// Removes what the manager applied last time and no longer applies, unless another
    /// manager (or the new configuration) owns it.
    fn prune(&self, merged: &Value, managed: &ManagedFields, last: &FieldSet) -> Value {
        let last = self.ensure(last);
        let pruned = self.remove(merged, &last);

        // Add back whatever someone owns.
        let owned = managed
            .fields
            .values()
            .fold(FieldSet::new(), |acc, o| acc.union(&o.set));
        let merged_set = self.ensure(&self.field_set(merged));
        let pruned_set = self.ensure(&self.field_set(&pruned));
        let pruned = self.remove(
            merged,
            &merged_set.difference(&pruned_set.union(&self.ensure(&owned))),
        );

        // Only remove what this manager owned last time.
        let pruned_set = self.ensure(&self.field_set(&pruned));
        self.remove(
            merged,
            &merged_set.difference(&pruned_set).intersection(&last),
        )
    }

    /// Other managers lose what this write changed (or it fails, unless forced) and what it
    /// removed.
    fn resolve_conflicts(
        &self,
        old: &Value,
        new: &Value,
        managed: &mut ManagedFields,
        workflow: &ManagerId,
        force: bool,
    ) -> Result<typed::Comparison, ApplyError> {
        let cmp = typed::compare(old, new, self.schema()).filter(self.reset);
        let mut conflicts: Vec<(ManagerId, FieldSet)> = Vec::new();
        // A create has no other owners: the changed set is not needed.
        if managed.fields.keys().any(|id| id != workflow) {
            let changed = cmp.modified.union(&cmp.added);
            for (id, owned) in &managed.fields {
                if id == workflow || !owned.set.intersects(&changed) {
                    continue;
                }
                conflicts.push((id.clone(), owned.set.intersection(&changed)));
            }
        }
        if !force && !conflicts.is_empty() {
            let list = conflicts
                .iter()
                .flat_map(|(id, set)| {
                    set.paths().into_iter().map(move |p| Conflict {
                        manager: id.manager.clone(),
                        manager_description: id.describe(),
                        field: p.to_string(),
                    })
                })
                .collect();
            return Err(ApplyError::Conflicts(list));
        }
        for (id, overlap) in conflicts {
            if let Some(owned) = managed.fields.get_mut(&id) {
                owned.remove_fields(&overlap);
            }
        }
        if !cmp.removed.is_empty() {
            for (id, owned) in managed.fields.iter_mut() {
                if id != workflow {
                    owned.remove_fields(&cmp.removed);
                }
            }
        }
        let emptied: Vec<ManagerId> = managed
            .fields
            .iter()
            .filter(|(_, o)| o.set.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        for id in emptied {
            managed.fields.remove(&id);
            managed.times.remove(&id);
        }
        Ok(cmp)
    }

    /// Ownership for a non-apply write: the writer gains what it changed, others lose it.
    fn update(&self, old: &Value, new: &Value, managed: &mut ManagedFields, id: &ManagerId) {
        // Work under a scratch identity so the writer's earlier entry is treated like any
        // other owner, then fold the result into that entry (upstream's managedFieldsUpdater).
        let scratch = ManagerId::new("current-operation", Operation::Apply, "", "\u{0}scratch");
        let cmp = match self.resolve_conflicts(old, new, managed, &scratch, true) {
            Ok(cmp) => cmp,
            Err(_) => return,
        };
        let typed::Comparison { modified, added, .. } = cmp;
        // One side is usually empty (a create adds, a status write mostly modifies): move it
        // rather than copy it into the other.
        let changed = match (modified.is_empty(), added.is_empty()) {
            (true, _) => added,
            (_, true) => modified,
            _ => {
                let mut both = modified;
                both.union_with(&added);
                both
            }
        };
        let mut set = self.filter(changed);
        set.remove_paths(strip_set());
        if !set.is_empty() {
            let merged = match managed.fields.get(id) {
                Some(prev) => {
                    set.union_with(&prev.set);
                    set
                }
                None => set,
            };
            // Rewriting fields it already owns (a status update) leaves the entry, and its
            // encoding, as it was; only the time moves.
            let unchanged = managed.fields.get(id).is_some_and(|prev| prev.set == merged && prev.api_version == self.api_version);
            if !unchanged {
                managed
                    .fields
                    .insert(id.clone(), Owned::new(merged, self.api_version.into()));
            }
            managed.times.insert(id.clone(), self.now.to_string());
        }
        managed::cap_update_managers(managed);
    }

    /// The conflicts kubectl may override when moving from client-side apply: fields of the
    /// last-applied annotation whose live values still match it.
    fn allowed_conflicts_from_last_applied(&self, live: &Value) -> Option<Vec<String>> {
        let text = live
            .pointer("/metadata/annotations")?
            .get(LAST_APPLIED_ANNOTATION)?
            .as_str()?;
        if text.is_empty() {
            return None;
        }
        let last: Value = serde_json::from_str(text).ok()?;
        if last.get("apiVersion").and_then(Value::as_str) != Some(self.api_version) {
            return None;
        }
        let set = typed::field_set(&last, self.schema(), Mode::Strict).ok()?;
        let cmp = typed::compare(&last, live, self.schema());
        let allowed = set
            .difference(&cmp.modified)
            .difference(&cmp.added)
            .difference(&cmp.removed);
        Some(allowed.paths().into_iter().map(|p| p.to_string()).collect())
    }
}

/// Identity fields are never owned (upstream's stripMetaManager).
fn strip_identity(managed: &mut ManagedFields, id: &ManagerId) {
    if let Some(owned) = managed.fields.get_mut(id) {
        owned.remove_fields(strip_set());
        if owned.set.is_empty() {
            managed.fields.remove(id);
            managed.times.remove(id);
        }
    }
}

/// kubectl keeps its last-applied annotation current when it applies server-side, so a later
/// client-side apply still computes the right patch.
fn update_last_applied(object: &mut Value, config: &Value) {
    let has = object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED_ANNOTATION))
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty());
    if !has {
        return;
    }
    let mut applied = config.clone();
    if let Some(Value::Object(annotations)) = applied.pointer_mut("/metadata/annotations") {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
    let mut text = String::new();
    fieldpath::write_go_json(&applied, true, &mut text);
    text.push('\n');
    if let Some(Value::Object(annotations)) = object.pointer_mut("/metadata/annotations") {
        annotations.insert(LAST_APPLIED_ANNOTATION.into(), Value::String(text));
    }
}

/// Go's `GroupVersionKind.String()`: "apps/v1, Kind=Deployment", "/v1, Kind=Pod".
fn gvk_string(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    format!("{group}/{version}, Kind={kind}")
}

/// Upstream's `objectGVKNN`: "namespace/name; group/version, Kind=Kind".
fn object_gvknn(obj: &Value) -> String {
    let text = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("");
    format!(
        "{}/{}; {}",
        text("/metadata/namespace"),
        text("/metadata/name"),
        gvk_string(text("/apiVersion"), text("/kind"))
    )
}

#[cfg(test)]
mod tests;
