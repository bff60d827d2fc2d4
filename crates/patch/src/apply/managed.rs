//! `metadata.managedFields`: who owns which fields, decoded into sets and encoded back in
//! Kubernetes' order.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::fieldpath::FieldSet;

/// How a manager last wrote: through server-side apply, or any other write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Operation {
    /// Server-side apply.
    Apply,
    /// Create, update or a non-apply patch.
    Update,
}

impl Operation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// What makes two managedFields entries the same owner. Appliers are one owner whatever
/// version they apply with; updaters are distinct per API version (upstream's
/// `BuildManagerIdentifier`). Field order gives upstream's sort of encoded identifiers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ManagerId {
    pub manager: String,
    pub operation: Operation,
    pub api_version: Option<String>,
    pub subresource: String,
}

impl ManagerId {
    pub(crate) fn new(
        manager: &str,
        operation: Operation,
        api_version: &str,
        subresource: &str,
    ) -> Self {
        ManagerId {
            manager: if manager.is_empty() {
                "unknown".into()
            } else {
                manager.into()
            },
            operation,
            api_version: (operation == Operation::Update).then(|| api_version.to_string()),
            subresource: subresource.into(),
        }
    }

    /// Upstream's `printManager`: `"name"`, plus the subresource, plus `using <version>` for
    /// updaters.
    pub(crate) fn describe(&self) -> String {
        let mut s = quote(&self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {}", quote(&self.subresource)));
        }
        if let Some(v) = &self.api_version {
            s.push_str(&format!(" using {v}"));
        }
        s
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// One owner's fields.
#[derive(Debug, Clone)]
pub(crate) struct Owned {
    pub set: FieldSet,
    pub api_version: String,
    /// `set` as `FieldsV1`, when it was read from a stored object and has not changed since:
    /// written back as it was instead of encoding the set again. Most writes change one
    /// manager's fields, and encoding every other manager's was a tenth of a pod status write.
    encoded: Option<Value>,
}

impl Owned {
    pub(crate) fn new(set: FieldSet, api_version: String) -> Self {
        Owned { set, api_version, encoded: None }
    }

    /// Gives up `fields`; a set that changes is encoded afresh.
    pub(crate) fn remove_fields(&mut self, fields: &FieldSet) {
        if self.set.intersects(fields) {
            self.set.remove_paths(fields);
            self.encoded = None;
        }
    }

    /// The API version and `FieldsV1`, for writing the entry out.
    fn into_encoded(self) -> (String, Value) {
        let fields_v1 = self.encoded.unwrap_or_else(|| self.set.to_fields_v1());
        (self.api_version, fields_v1)
    }
}

/// Owners compare by what they own, however they were read.
impl PartialEq for Owned {
    fn eq(&self, other: &Self) -> bool {
        self.set == other.set && self.api_version == other.api_version
    }
}

/// Where managedFields were read from: a stored object (written in this encoding by the server,
/// so each entry's `fieldsV1` may be written back verbatim), or a client's request (encoded
/// afresh, in the server's canonical form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Stored,
    Request,
}

/// All owners of an object, with the time each last changed something.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ManagedFields {
    pub fields: BTreeMap<ManagerId, Owned>,
    pub times: BTreeMap<ManagerId, String>,
}

/// Reads `metadata.managedFields`; absent or null is empty.
pub(crate) fn decode(obj: &Value, source: Source) -> Result<ManagedFields, String> {
    let mut out = ManagedFields::default();
    let entries = match obj.get("metadata").and_then(|m| m.get("managedFields")) {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err("managedFields must be a list".into()),
    };
    for (i, entry) in entries.iter().enumerate() {
        let Value::Object(e) = entry else {
            return Err(format!("managed fields entry {i} must be an object"));
        };
        let fields_v1 = e.get("fieldsV1");
        let encoded = match (source, fields_v1) {
            (Source::Stored, Some(v @ Value::Object(_))) => Some(v.clone()),
            _ => None,
        };
        insert_entry(&mut out, i, e, fields_v1, encoded)?;
    }
    Ok(out)
}

/// [`decode`] of a stored list the caller owns: each entry's `fieldsV1` moves into the entry
/// kept for writing back instead of being copied.
pub(crate) fn decode_stored_owned(list: Value) -> Result<ManagedFields, String> {
    let mut out = ManagedFields::default();
    let entries = match list {
        Value::Null => return Ok(out),
        Value::Array(entries) => entries,
        _ => return Err("managedFields must be a list".into()),
    };
    for (i, entry) in entries.into_iter().enumerate() {
        let Value::Object(mut e) = entry else {
            return Err(format!("managed fields entry {i} must be an object"));
        };
        let fields_v1 = e.remove("fieldsV1");
        let (fields_v1, encoded) = match fields_v1 {
            Some(v @ Value::Object(_)) => (None, Some(v)),
            other => (other, None),
        };
        check_entry(i, &e)?;
        let set = read_set(encoded.as_ref().or(fields_v1.as_ref()))?;
        insert_decoded(&mut out, &e, set, encoded)?;
    }
    Ok(out)
}

fn read_set(fields_v1: Option<&Value>) -> Result<FieldSet, String> {
    match fields_v1 {
        None | Some(Value::Null) => Ok(FieldSet::new()),
        Some(v) => FieldSet::from_fields_v1(v).map_err(|err| format!("error decoding set: {err}")),
    }
}

fn insert_entry(
    out: &mut ManagedFields,
    i: usize,
    e: &Map<String, Value>,
    fields_v1: Option<&Value>,
    encoded: Option<Value>,
) -> Result<(), String> {
    // The entry's other fields are checked before its set is read, as before.
    check_entry(i, e)?;
    let set = read_set(fields_v1)?;
    insert_decoded(out, e, set, encoded)
}

fn check_entry(i: usize, e: &Map<String, Value>) -> Result<(), String> {
    let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
    if !matches!(text("operation"), "Apply" | "Update") {
        return Err("operation must be `Apply` or `Update`".into());
    }
    if text("apiVersion").is_empty() {
        return Err("apiVersion must not be empty".into());
    }
    match text("fieldsType") {
        "FieldsV1" => Ok(()),
        "" => Err(format!("missing fieldsType in managed fields entry {i}")),
        other => Err(format!(
            "invalid fieldsType {other:?} in managed fields entry {i}"
        )),
    }
}

/// Records an entry whose fields [`check_entry`] accepted.
fn insert_decoded(
    out: &mut ManagedFields,
    e: &Map<String, Value>,
    set: FieldSet,
    encoded: Option<Value>,
) -> Result<(), String> {
    let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
    let operation = match text("operation") {
        "Apply" => Operation::Apply,
        _ => Operation::Update,
    };
    let api_version = text("apiVersion");
    let id = ManagerId {
        manager: text("manager").to_string(),
        operation,
        api_version: (operation == Operation::Update).then(|| api_version.to_string()),
        subresource: text("subresource").to_string(),
    };
    if let Some(t) = e.get("time").and_then(Value::as_str) {
        out.times.insert(id.clone(), t.to_string());
    }
    out.fields.insert(
        id,
        Owned {
            set,
            api_version: api_version.to_string(),
            encoded,
        },
    );
    Ok(())
}

/// True for the two ways a client asks to reset ownership: `managedFields: []` or a single
/// empty entry.
pub(crate) fn is_reset(obj: &Value) -> bool {
    match obj.get("metadata").and_then(|m| m.get("managedFields")) {
        Some(Value::Array(entries)) => match entries.as_slice() {
            [] => true,
            [Value::Object(e)] => e.is_empty(),
            _ => false,
        },
        _ => false,
    }
}

/// Removes `metadata.managedFields` from an object.
pub(crate) fn strip(obj: &mut Value) {
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        meta.remove("managedFields");
    }
}

/// Writes the owners into `metadata.managedFields`, sorted as upstream (operation, time,
/// manager, version, subresource); no owners removes the field.
pub(crate) fn encode_into(obj: &mut Value, managed: ManagedFields) {
    let Value::Object(root) = obj else { return };
    if managed.fields.is_empty() {
        if let Some(Value::Object(meta)) = root.get_mut("metadata") {
            meta.remove("managedFields");
        }
        return;
    }
    let ManagedFields { fields, mut times } = managed;
    let mut entries: Vec<(ManagerId, Owned, Option<String>)> = fields
        .into_iter()
        .map(|(id, owned)| {
            let time = times.remove(&id);
            (id, owned, time)
        })
        .collect();
    entries.sort_by(|a, b| {
        a.0.operation
            .cmp(&b.0.operation)
            .then_with(|| unix_seconds(a.2.as_ref()).cmp(&unix_seconds(b.2.as_ref())))
            .then_with(|| a.0.manager.cmp(&b.0.manager))
            .then_with(|| a.1.api_version.cmp(&b.1.api_version))
            .then_with(|| a.0.subresource.cmp(&b.0.subresource))
    });
    let list = entries
        .into_iter()
        .map(|(id, owned, time)| {
            let mut e = Map::new();
            if !id.manager.is_empty() {
                e.insert("manager".into(), Value::String(id.manager));
            }
            e.insert(
                "operation".into(),
                Value::String(id.operation.as_str().into()),
            );
            let (api_version, fields_v1) = owned.into_encoded();
            e.insert("apiVersion".into(), Value::String(api_version));
            if let Some(t) = time {
                e.insert("time".into(), Value::String(t));
            }
            e.insert("fieldsType".into(), Value::String("FieldsV1".into()));
            e.insert("fieldsV1".into(), fields_v1);
            if !id.subresource.is_empty() {
                e.insert("subresource".into(), Value::String(id.subresource));
            }
            Value::Object(e)
        })
        .collect();
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// Seconds since the epoch of an RFC 3339 time (fraction and offset honoured); unparsable or
/// absent times sort first, as a zero time does upstream.
pub(crate) fn unix_seconds(t: Option<&String>) -> i64 {
    t.and_then(|t| parse_rfc3339(t)).unwrap_or(0)
}

fn parse_rfc3339(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { t.get(r)?.parse().ok() };
    if b.len() < 20
        || b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || b.get(13) != Some(&b':')
    {
        return None;
    }
    let (y, mo, d, h, mi, s) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let mut rest = &t[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        r if r.len() == 6 && (r.starts_with('+') || r.starts_with('-')) => {
            let hours: i64 = r.get(1..3)?.parse().ok()?;
            let mins: i64 = r.get(4..6)?.parse().ok()?;
            let sign = if r.starts_with('-') { -1 } else { 1 };
            sign * (hours * 3600 + mins * 60)
        }
        _ => return None,
    };
    // Days from civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s - offset)
}

/// Upstream keeps at most this many `Update` owners; older ones merge into per-version
/// "ancient-changes" buckets.
pub(crate) const MAX_UPDATE_MANAGERS: usize = 10;

pub(crate) fn cap_update_managers(managed: &mut ManagedFields) {
    let mut updaters: Vec<ManagerId> = managed
        .fields
        .keys()
        .filter(|id| id.operation == Operation::Update)
        .cloned()
        .collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return;
    }
    updaters.sort_by(|a, b| {
        unix_seconds(managed.times.get(a))
            .cmp(&unix_seconds(managed.times.get(b)))
            .then_with(|| a.cmp(b))
    });
    let mut first_for_version: BTreeMap<String, ManagerId> = BTreeMap::new();
    let mut length = updaters.len();
    for id in updaters {
        if length <= MAX_UPDATE_MANAGERS {
            break;
        }
        let Some(owned) = managed.fields.get(&id).cloned() else {
            continue;
        };
        let time = managed.times.get(&id).cloned();
        let version = owned.api_version.clone();
        let bucket = ManagerId::new("ancient-changes", Operation::Update, &version, "");
        match first_for_version.get(&version) {
            Some(first) => {
                if !managed.fields.contains_key(&bucket)
                    && let Some(first_owned) = managed.fields.remove(first)
                {
                    managed.times.remove(first);
                    managed.fields.insert(bucket.clone(), first_owned);
                }
                let bucket_set = managed
                    .fields
                    .get(&bucket)
                    .map(|o| o.set.clone())
                    .unwrap_or_default();
                managed.fields.insert(bucket.clone(), Owned::new(owned.set.union(&bucket_set), version));
                managed.fields.remove(&id);
                managed.times.remove(&id);
                match time {
                    Some(t) => managed.times.insert(bucket, t),
                    None => managed.times.remove(&bucket),
                };
                length -= 1;
            }
            None => {
                first_for_version.insert(version, id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc3339_parsing() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        assert_eq!(
            parse_rfc3339("2024-02-29T13:00:00.123+01:00"),
            Some(1_709_208_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn an_owned_stored_list_decodes_as_the_borrowed_one_does() {
        let list = json!([
            {"manager": "a", "operation": "Update", "apiVersion": "v1", "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:x": {}}}},
            {"manager": "b", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {".": {}, "f:y": {}}}, "subresource": "status"},
            {"manager": "c", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1"}
        ]);
        let borrowed = decode(&json!({"metadata": {"managedFields": list.clone()}}), Source::Stored).unwrap();
        let owned = decode_stored_owned(list).unwrap();
        assert_eq!(owned, borrowed);
        // Equality of owners ignores the kept encoding: compare that too.
        let encodings = |m: &ManagedFields| m.fields.values().map(|o| o.encoded.clone()).collect::<Vec<_>>();
        assert_eq!(encodings(&owned), encodings(&borrowed));
        assert!(decode_stored_owned(json!({"not": "a list"})).is_err());
        assert!(decode_stored_owned(Value::Null).unwrap().fields.is_empty());
    }

    #[test]
    fn decode_rejects_bad_entries() {
        let obj = |e: Value| json!({"metadata": {"managedFields": [e]}});
        let ok = json!({"manager": "m", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {}});
        assert!(decode(&obj(ok.clone()), Source::Request).is_ok());
        let mut bad = ok.clone();
        bad["operation"] = json!("Patch");
        assert_eq!(
            decode(&obj(bad), Source::Request).unwrap_err(),
            "operation must be `Apply` or `Update`"
        );
        let mut bad = ok.clone();
        bad["apiVersion"] = json!("");
        assert_eq!(
            decode(&obj(bad), Source::Request).unwrap_err(),
            "apiVersion must not be empty"
        );
        let mut bad = ok.clone();
        bad["fieldsType"] = json!("FieldsV2");
        assert_eq!(
            decode(&obj(bad), Source::Request).unwrap_err(),
            "invalid fieldsType \"FieldsV2\" in managed fields entry 0"
        );
        let mut bad = ok;
        bad.as_object_mut().map(|m| m.remove("fieldsType"));
        assert_eq!(
            decode(&obj(bad), Source::Request).unwrap_err(),
            "missing fieldsType in managed fields entry 0"
        );
    }

    #[test]
    fn updaters_are_distinct_per_version_appliers_are_not() {
        let a = ManagerId::new("m", Operation::Update, "apps/v1", "");
        let b = ManagerId::new("m", Operation::Update, "apps/v1beta1", "");
        assert_ne!(a, b);
        let c = ManagerId::new("m", Operation::Apply, "apps/v1", "");
        let d = ManagerId::new("m", Operation::Apply, "apps/v1beta1", "");
        assert_eq!(c, d);
        assert_eq!(
            ManagerId::new("", Operation::Apply, "v1", "").manager,
            "unknown"
        );
        assert_eq!(a.describe(), "\"m\" using apps/v1");
        assert_eq!(
            ManagerId::new("k", Operation::Apply, "v1", "status").describe(),
            "\"k\" with subresource \"status\""
        );
    }

    #[test]
    fn reset_detection() {
        assert!(is_reset(&json!({"metadata": {"managedFields": []}})));
        assert!(is_reset(&json!({"metadata": {"managedFields": [{}]}})));
        assert!(!is_reset(&json!({"metadata": {}})));
        assert!(!is_reset(&json!({"metadata": {"managedFields": null}})));
        assert!(!is_reset(
            &json!({"metadata": {"managedFields": [{"manager": "x"}]}})
        ));
    }

    #[test]
    fn capping_merges_oldest_updaters_per_version() {
        let mut m = ManagedFields::default();
        for i in 0..12 {
            let id = ManagerId::new(&format!("m{i:02}"), Operation::Update, "v1", "");
            let set = FieldSet::from_paths([&[super::super::fieldpath::PathElement::Field(
                format!("f{i}"),
            )][..]]);
            m.fields.insert(id.clone(), Owned::new(set, "v1".into()));
            m.times.insert(id, format!("2024-01-01T00:00:{i:02}Z"));
        }
        cap_update_managers(&mut m);
        assert_eq!(m.fields.len(), MAX_UPDATE_MANAGERS);
        let bucket = ManagerId::new("ancient-changes", Operation::Update, "v1", "");
        let owned = m.fields.get(&bucket).expect("bucket");
        assert_eq!(owned.set.paths().len(), 3);
        assert_eq!(
            m.times.get(&bucket).map(String::as_str),
            Some("2024-01-01T00:00:02Z")
        );
    }
}
