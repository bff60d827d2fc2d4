//! JSON merge patch (RFC 7386) and JSON Patch (RFC 6902).

use json_patch::{PatchErrorKind, PatchOperation};
use serde_json::Value;

use crate::error::PatchError;

/// Applies a JSON merge patch (RFC 7386, `application/merge-patch+json`).
///
/// Objects merge recursively, `null` removes a key, anything else (lists included) replaces.
/// A patch that is not an object replaces the whole document, as the RFC says; a caller that
/// needs an object back must check the result.
pub fn json_merge_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let mut doc = original.clone();
    json_patch::merge(&mut doc, patch);
    Ok(doc)
}

/// Applies a JSON Patch (RFC 6902, `application/json-patch+json`): a list of operations applied
/// in order, all or nothing.
///
/// A document that is not a list of well-formed operations is [`PatchError::InvalidJsonPatch`]
/// (upstream answers 400); a failing operation is [`PatchError::JsonPatchFailed`] (422) with
/// evanphx/json-patch's wording, which is what kube-apiserver reports.
pub fn json_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops = decode(patch)?;
    let mut doc = original.clone();
    for (i, op) in ops.iter().enumerate() {
        // One operation at a time: on failure `doc` is still the state the operation saw, which
        // the message describes.
        if let Err(e) = json_patch::patch(&mut doc, std::slice::from_ref(op)) {
            return Err(PatchError::JsonPatchFailed {
                operation: i,
                message: describe(&doc, op, &e.kind),
            });
        }
    }
    Ok(doc)
}

fn decode(patch: &Value) -> Result<Vec<PatchOperation>, PatchError> {
    let Value::Array(items) = patch else {
        return Err(PatchError::InvalidJsonPatch(format!(
            "json: cannot unmarshal {} into Go value of type jsonpatch.Patch",
            crate::error::json_kind(patch)
        )));
    };
    items
        .iter()
        .map(|item| {
            serde_json::from_value::<PatchOperation>(item.clone())
                .map_err(|e| PatchError::InvalidJsonPatch(format!("invalid operation {item}: {e}")))
        })
        .collect()
}

/// Upstream-style text for a failed operation, from the document state it ran against.
fn describe(doc: &Value, op: &PatchOperation, kind: &PatchErrorKind) -> String {
    let path = op.path().as_str();
    let (parent, last) = split_pointer(path);
    let parent_exists = doc.pointer(parent).is_some();
    let bad_index = || match doc.pointer(parent) {
        Some(Value::Array(_)) => Some(last.clone()),
        _ => None,
    };
    match (op, kind) {
        (PatchOperation::Test(_), _) => format!("testing value {path} failed: test failed"),
        (PatchOperation::Add(_), _) => match bad_index() {
            Some(idx) => format!(
                "error in add for path: '{path}': Unable to access invalid index: {idx}: invalid index referenced"
            ),
            None => format!(
                "add operation does not apply: doc is missing path: \"{path}\": missing value"
            ),
        },
        (PatchOperation::Remove(_), _) if !parent_exists => {
            format!(
                "remove operation does not apply: doc is missing path: \"{path}\": missing value"
            )
        }
        (PatchOperation::Remove(_), _) => match bad_index() {
            Some(idx) => format!(
                "error in remove for path: '{path}': Unable to access invalid index: {idx}: invalid index referenced"
            ),
            None => format!(
                "error in remove for path: '{path}': Unable to remove nonexistent key: {last}: missing value"
            ),
        },
        (PatchOperation::Replace(_), _) if !parent_exists => {
            format!("replace operation does not apply: doc is missing path: {path}: missing value")
        }
        (PatchOperation::Replace(_), _) => {
            format!("replace operation does not apply: doc is missing key: {path}: missing value")
        }
        (PatchOperation::Move(m), PatchErrorKind::InvalidFromPointer) => format!(
            "move operation does not apply: doc is missing from path: {}: missing value",
            m.from.as_str()
        ),
        (PatchOperation::Move(_), PatchErrorKind::CannotMoveInsideItself) => {
            format!("move operation does not apply: cannot move the value inside itself: {path}")
        }
        (PatchOperation::Move(_), _) => {
            format!(
                "move operation does not apply: doc is missing destination path: {path}: missing value"
            )
        }
        (PatchOperation::Copy(c), PatchErrorKind::InvalidFromPointer) => format!(
            "copy operation does not apply: doc is missing from path: \"{}\": missing value",
            c.from.as_str()
        ),
        (PatchOperation::Copy(_), _) => {
            format!(
                "copy operation does not apply: doc is missing destination path: {path}: missing value"
            )
        }
    }
}

/// Splits a JSON pointer into its parent pointer and its last token (unescaped).
fn split_pointer(path: &str) -> (&str, String) {
    match path.rfind('/') {
        Some(i) => (
            &path[..i],
            path[i + 1..].replace("~1", "/").replace("~0", "~"),
        ),
        None => ("", String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "app", "image": "nginx:1"}, {"name": "sidecar", "image": "envoy"}
            ]}}}
        })
    }

    #[test]
    fn merge_patch_merges_maps_and_deletes_with_null() {
        let out = json_merge_patch(
            &deployment(),
            &json!({"metadata": {"labels": {"tier": null, "env": "prod"}}, "spec": {"replicas": 3}}),
        )
        .unwrap();
        assert_eq!(
            out["metadata"]["labels"],
            json!({"app": "web", "env": "prod"})
        );
        assert_eq!(out["spec"]["replicas"], 3);
        assert_eq!(out["spec"]["template"], deployment()["spec"]["template"]);
    }

    #[test]
    fn merge_patch_replaces_lists() {
        let out = json_merge_patch(
            &deployment(),
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "only", "image": "x"}]}}}}),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "x"}])
        );
    }

    #[test]
    fn merge_patch_nested_new_object_drops_nulls() {
        let out = json_merge_patch(&json!({}), &json!({"a": {"b": null, "c": 1}})).unwrap();
        assert_eq!(out, json!({"a": {"c": 1}}));
    }

    #[test]
    fn merge_patch_non_object_replaces_document() {
        assert_eq!(
            json_merge_patch(&deployment(), &json!([1])).unwrap(),
            json!([1])
        );
        assert_eq!(
            json_merge_patch(&json!({"a": 1}), &json!({})).unwrap(),
            json!({"a": 1})
        );
    }

    #[test]
    fn json_patch_applies_operations_in_order() {
        let out = json_patch(
            &deployment(),
            &json!([
                {"op": "test", "path": "/spec/replicas", "value": 1},
                {"op": "replace", "path": "/spec/replicas", "value": 5},
                {"op": "add", "path": "/metadata/labels/env", "value": "prod"},
                {"op": "remove", "path": "/metadata/labels/tier"},
                {"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "c3"}},
                {"op": "move", "from": "/metadata/labels/env", "path": "/metadata/labels/stage"},
                {"op": "copy", "from": "/metadata/name", "path": "/metadata/labels/name"}
            ]),
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
        assert_eq!(
            out["metadata"]["labels"],
            json!({"app": "web", "stage": "prod", "name": "web"})
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][2],
            json!({"name": "c3"})
        );
    }

    #[test]
    fn json_patch_is_all_or_nothing_and_reports_the_failing_op() {
        let err = json_patch(
            &deployment(),
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 5},
                {"op": "test", "path": "/spec/replicas", "value": 1}
            ]),
        )
        .unwrap_err();
        assert_eq!(
            err,
            PatchError::JsonPatchFailed {
                operation: 1,
                message: "testing value /spec/replicas failed: test failed".into()
            }
        );
        assert_eq!(err.status_code(), 422);
    }

    #[test]
    fn json_patch_error_messages() {
        let msg = |p: Value| json_patch(&deployment(), &p).unwrap_err().to_string();
        assert_eq!(
            msg(json!([{"op": "remove", "path": "/spec/paused"}])),
            "error in remove for path: '/spec/paused': Unable to remove nonexistent key: paused: missing value"
        );
        assert_eq!(
            msg(json!([{"op": "replace", "path": "/spec/paused", "value": true}])),
            "replace operation does not apply: doc is missing key: /spec/paused: missing value"
        );
        assert_eq!(
            msg(json!([{"op": "add", "path": "/spec/strategy/type", "value": "Recreate"}])),
            "add operation does not apply: doc is missing path: \"/spec/strategy/type\": missing value"
        );
        assert_eq!(
            msg(json!([{"op": "add", "path": "/spec/template/spec/containers/7", "value": {}}])),
            "error in add for path: '/spec/template/spec/containers/7': Unable to access invalid index: 7: invalid index referenced"
        );
        assert_eq!(
            msg(json!([{"op": "move", "from": "/nope", "path": "/x"}])),
            "move operation does not apply: doc is missing from path: /nope: missing value"
        );
        assert_eq!(
            msg(json!([{"op": "copy", "from": "/nope", "path": "/x"}])),
            "copy operation does not apply: doc is missing from path: \"/nope\": missing value"
        );
    }

    #[test]
    fn json_patch_rejects_malformed_documents() {
        let err = json_patch(&deployment(), &json!({"op": "add"})).unwrap_err();
        assert_eq!(err.status_code(), 400);
        assert!(err.to_string().contains("cannot unmarshal object"));
        let err =
            json_patch(&deployment(), &json!([{"op": "frobnicate", "path": "/a"}])).unwrap_err();
        assert!(matches!(err, PatchError::InvalidJsonPatch(_)));
        let err = json_patch(&deployment(), &json!([{"op": "add", "path": "/a"}])).unwrap_err();
        assert!(matches!(err, PatchError::InvalidJsonPatch(_)));
    }

    #[test]
    fn json_patch_escaped_pointer_tokens() {
        let doc = json!({"metadata": {"annotations": {"example.com/a": "1"}}});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "remove", "path": "/metadata/annotations/example.com~1a"}
            ]),
        )
        .unwrap();
        assert_eq!(out, json!({"metadata": {"annotations": {}}}));
    }
}
