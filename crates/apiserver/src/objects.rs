//! Objects as JSON: the stored form, and the few metadata operations every kind shares.
//!
//! Stored objects never contain `metadata.resourceVersion`: the store's revision is the truth, and
//! it is spliced into the bytes on the way out. Stored bytes always start with apiVersion, kind and
//! metadata in that order, which is what lets the splice work on bytes instead of re-parsing every
//! object of a large list.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use store::{KeyValue, Revision};

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn now_micro() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

pub fn metadata(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    metadata(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or("")
}

/// Puts apiVersion, kind, metadata first and drops the resourceVersion, then serializes.
///
/// Serializes straight from `obj` (no reordered copy of the object) into a per-thread buffer,
/// and keeps an exact-size copy: bytes serialized into a growing vector would keep its doubled
/// capacity for as long as the object is stored, up to half of it unused.
pub fn encode_for_storage(obj: &Value) -> Bytes {
    const KEPT_BUFFER: usize = 1 << 20;
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let empty = Map::new();
    let fields = obj.as_object().unwrap_or(&empty);
    BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        buffer.clear();
        // Serializing a map of JSON values cannot fail.
        let _ = serde_json::to_writer(&mut *buffer, &StorageOrder(fields));
        let bytes = Bytes::copy_from_slice(&buffer);
        if buffer.capacity() > KEPT_BUFFER {
            *buffer = Vec::new();
        }
        bytes
    })
}

/// An object's fields in stored order: apiVersion, kind, metadata (without resourceVersion),
/// then the rest as they come.
struct StorageOrder<'a>(&'a Map<String, Value>);

impl serde::Serialize for StorageOrder<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for key in ["apiVersion", "kind", "metadata"] {
            match self.0.get(key) {
                Some(Value::Object(meta)) if key == "metadata" => map.serialize_entry(key, &WithoutResourceVersion(meta))?,
                Some(value) => map.serialize_entry(key, value)?,
                None => {}
            }
        }
        for (key, value) in self.0 {
            if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

struct WithoutResourceVersion<'a>(&'a Map<String, Value>);

impl serde::Serialize for WithoutResourceVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.0 {
            if key != "resourceVersion" {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

/// The stored bytes with `metadata.resourceVersion` set to `revision`.
pub fn with_resource_version(raw: &[u8], revision: Revision) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 40);
    write_with_resource_version(&mut out, raw, revision);
    out
}

/// Appends the stored bytes with `metadata.resourceVersion` set to `revision` to `out` (lists
/// write every item straight into the response buffer this way).
pub fn write_with_resource_version(out: &mut Vec<u8>, raw: &[u8], revision: Revision) {
    const MARKER: &[u8] = b"\"metadata\":{";
    // Only the top-level metadata qualifies, which in our stored form comes right after two short
    // string fields, so look near the start only.
    let window = &raw[..raw.len().min(512)];
    if let Some(pos) = window.windows(MARKER.len()).position(|w| w == MARKER) {
        let insert_at = pos + MARKER.len();
        out.extend_from_slice(&raw[..insert_at]);
        out.extend_from_slice(b"\"resourceVersion\":\"");
        out.extend_from_slice(revision.to_string().as_bytes());
        out.push(b'"');
        if raw.get(insert_at) != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(&raw[insert_at..]);
        return;
    }
    // Not in our stored form (should not happen): take the slow, certain path.
    match serde_json::from_slice::<Value>(raw) {
        Ok(mut v) => {
            metadata_mut(&mut v).insert("resourceVersion".into(), json!(revision.to_string()));
            out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
        }
        Err(_) => out.extend_from_slice(raw),
    }
}

/// Parses a stored object and sets its resourceVersion.
pub fn decode(kv: &KeyValue) -> Result<Value, serde_json::Error> {
    let mut v: Value = serde_json::from_slice(&kv.value)?;
    metadata_mut(&mut v).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    Ok(v)
}

pub fn labels(obj: &Value) -> Option<&Map<String, Value>> {
    metadata(obj).and_then(|m| m.get("labels")).and_then(Value::as_object)
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    metadata(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

pub fn is_deleting(obj: &Value) -> bool {
    metadata(obj).and_then(|m| m.get("deletionTimestamp")).is_some_and(|v| !v.is_null())
}

/// The parts of an object that are not metadata or status: a change in them bumps generation.
pub fn spec_part(obj: &Value) -> Value {
    match obj.as_object() {
        Some(fields) => Value::Object(
            fields
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => Value::Null,
    }
}

/// A random suffix as upstream's generateName uses: 5 characters from a set without vowels and
/// look-alike characters, so generated names never spell words.
pub fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_version_is_spliced_into_stored_bytes() {
        let stored = encode_for_storage(&json!({"metadata": {"name": "a", "resourceVersion": "5"}, "kind": "ConfigMap", "apiVersion": "v1", "data": {"x": "y"}}));
        assert!(stored.starts_with(br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}"#));
        let out: Value = serde_json::from_slice(&with_resource_version(&stored, 42)).unwrap();
        assert_eq!(out["metadata"]["resourceVersion"], "42");
        assert_eq!(out["data"]["x"], "y");
        let empty = encode_for_storage(&json!({"apiVersion": "v1", "kind": "X", "metadata": {}}));
        let out: Value = serde_json::from_slice(&with_resource_version(&empty, 7)).unwrap();
        assert_eq!(out["metadata"], json!({"resourceVersion": "7"}));
    }
}
