//! Errors returned by every patch flavour.
//!
//! Messages follow upstream's wording (kube-apiserver, apimachinery's `mergepatch` and
//! evanphx/json-patch) so clients and tests that match on text see what they expect; values
//! embedded in messages are rendered the way Go's `%v` prints decoded JSON (`map[k:v]`).

use serde_json::Value;

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The patch document's top level is not a JSON object (strategic merge patch requires one).
    #[error("json: cannot unmarshal {found} into Go value of type map[string]interface {{}}")]
    NotAnObject {
        /// Go's name for the JSON kind found: "array", "string", "number" or "bool".
        found: &'static str,
    },
    /// The object being patched is not a JSON object.
    #[error("invalid JSON document")]
    BadJsonDoc,
    /// A list nested directly in a list was met where elements had to be merged.
    #[error("lists of lists are not supported")]
    NoListOfLists,
    /// `$deleteFromPrimitiveList/...` was malformed.
    #[error("invalid patch format of primitive list")]
    BadPatchFormatForPrimitiveList,
    /// `$retainKeys` was not a list, or the patch set a key the list does not retain.
    #[error("invalid patch format of retainKeys")]
    BadPatchFormatForRetainKeys,
    /// `$setElementOrder/...` was malformed.
    #[error("invalid patch format of setElementOrder list")]
    BadPatchFormatForSetElementOrderList,
    /// An element of a list merged by key lacks that key.
    #[error("map: {map} does not contain declared merge key: {key}")]
    NoMergeKey {
        /// The element, Go-formatted.
        map: String,
        /// The declared merge key.
        key: String,
    },
    /// A value had the wrong JSON kind for its position (e.g. a `$setElementOrder` that is not a
    /// list). Type names are Go's (`[]interface {}`, `map[string]interface {}`, `string`, ...).
    #[error("expected a {expected}, but received a {actual}")]
    BadArgType {
        /// Go type name expected.
        expected: &'static str,
        /// Go type name received.
        actual: &'static str,
    },
    /// `$patch` carried a value that is not a known directive for its position.
    #[error("unknown patch type: {directive} in map: {map}")]
    BadPatchType {
        /// The directive, Go-formatted.
        directive: String,
        /// The map that carried it, Go-formatted.
        map: String,
    },
    /// `$patch: merge` inside a list.
    #[error("merging lists cannot yet be specified in the patch")]
    MergeDirectiveInList,
    /// The order of a patch list contradicts its `$setElementOrder` list.
    #[error("The order in patch list:\n{patch}\n doesn't match $setElementOrder list:\n{order}\n")]
    SetElementOrderMismatch {
        /// The patch list, Go-formatted.
        patch: String,
        /// The `$setElementOrder` list, Go-formatted.
        order: String,
    },
    /// A list whose elements are maps is to be merged, but no merge key is declared for it.
    #[error("cannot merge lists without merge key for {field}")]
    NoMergeKeyDeclared {
        /// The list's field name.
        field: String,
    },
    /// Elements of one list (live and patch together) have different JSON kinds.
    #[error("list element types are not identical: {lists}")]
    MixedListElementTypes {
        /// The lists, Go-formatted.
        lists: String,
    },
    /// The schema declares an unusable `x-kubernetes-patch-strategy`.
    #[error("unexpected patch strategy: {strategies}")]
    UnexpectedPatchStrategy {
        /// The strategies, Go-formatted (`[merge replace]`).
        strategies: String,
    },
    /// A JSON Patch document could not be decoded.
    #[error("{0}")]
    InvalidJsonPatch(String),
    /// A JSON Patch operation failed; the message names the operation and path.
    #[error("{message}")]
    JsonPatchFailed {
        /// Index of the failing operation.
        operation: usize,
        /// Upstream-style description of the failure.
        message: String,
    },
}

impl PatchError {
    /// The HTTP status kube-apiserver answers for this error.
    ///
    /// Upstream maps only a few strategic-merge-patch errors to 400/422 and lets the rest
    /// through as plain errors, which become 500 InternalError; we reproduce that split so
    /// clients branching on the code behave the same.
    pub fn status_code(&self) -> u16 {
        match self {
            PatchError::NotAnObject { .. }
            | PatchError::BadJsonDoc
            | PatchError::BadPatchFormatForPrimitiveList
            | PatchError::BadPatchFormatForRetainKeys
            | PatchError::BadPatchFormatForSetElementOrderList
            | PatchError::InvalidJsonPatch(_) => 400,
            PatchError::NoListOfLists | PatchError::JsonPatchFailed { .. } => 422,
            _ => 500,
        }
    }

    pub(crate) fn no_merge_key(map: &Value, key: &str) -> Self {
        PatchError::NoMergeKey {
            map: go_fmt(map),
            key: key.to_string(),
        }
    }

    pub(crate) fn bad_arg_type(expected: &'static str, actual: &Value) -> Self {
        PatchError::BadArgType {
            expected,
            actual: go_type(actual),
        }
    }
}

/// Go's `reflect.TypeOf` name for a value decoded from JSON, used in upstream messages.
pub(crate) fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int64",
        Value::String(_) => "string",
        Value::Array(_) => GO_SLICE,
        Value::Object(_) => GO_MAP,
    }
}

pub(crate) const GO_SLICE: &str = "[]interface {}";
pub(crate) const GO_MAP: &str = "map[string]interface {}";

/// Go's `encoding/json` name for a JSON kind, as in "cannot unmarshal array into ...".
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Renders a value like Go's `fmt` `%v` renders decoded JSON: maps with sorted keys as
/// `map[k:v]`, lists as `[a b]`, strings bare, null as `<nil>`.
pub(crate) fn go_fmt(v: &Value) -> String {
    let mut out = String::new();
    write_go(v, &mut out);
    out
}

fn write_go(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                write_go(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push_str("map[");
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                if let Some(val) = map.get(k.as_str()) {
                    write_go(val, out);
                }
            }
            out.push(']');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_formatting_matches_fmt_v() {
        assert_eq!(
            go_fmt(&json!({"value": "b", "image": 1})),
            "map[image:1 value:b]"
        );
        assert_eq!(go_fmt(&json!([1, "a", null, true])), "[1 a <nil> true]");
        assert_eq!(go_fmt(&json!({"a": {"b": []}})), "map[a:map[b:[]]]");
    }

    #[test]
    fn messages_match_upstream() {
        let e = PatchError::no_merge_key(&json!({"image": "nginx"}), "name");
        assert_eq!(
            e.to_string(),
            "map: map[image:nginx] does not contain declared merge key: name"
        );
        let e = PatchError::bad_arg_type(GO_SLICE, &json!("x"));
        assert_eq!(
            e.to_string(),
            "expected a []interface {}, but received a string"
        );
        let e = PatchError::NotAnObject { found: "array" };
        assert_eq!(
            e.to_string(),
            "json: cannot unmarshal array into Go value of type map[string]interface {}"
        );
    }

    #[test]
    fn status_codes_follow_upstream_split() {
        assert_eq!(PatchError::BadPatchFormatForRetainKeys.status_code(), 400);
        assert_eq!(
            PatchError::NotAnObject { found: "string" }.status_code(),
            400
        );
        assert_eq!(PatchError::NoListOfLists.status_code(), 422);
        assert_eq!(
            PatchError::no_merge_key(&json!({}), "name").status_code(),
            500
        );
    }
}
