//! Strategic merge patch application (`application/strategic-merge-patch+json`).
//!
//! Follows apimachinery's `StrategicMergeMapPatch` (server side: parallel lists are applied,
//! unmatched nulls are dropped). Where upstream leaves directive keys or nulls in the result and
//! relies on decoding into Go structs to drop them, we drop them here, because our objects stay
//! JSON: the stored result is what upstream's typed round trip would produce.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::error::{GO_MAP, GO_SLICE, PatchError, go_fmt, json_kind};
use crate::schema::PatchSchema;

const DIRECTIVE: &str = "$patch";
const DELETE: &str = "delete";
const REPLACE: &str = "replace";
const MERGE: &str = "merge";
const RETAIN_KEYS_STRATEGY: &str = "retainKeys";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";

/// Applies a strategic merge patch to `original`.
///
/// Maps merge recursively and `null` deletes a key. Lists are replaced unless the schema gives
/// them `x-kubernetes-patch-strategy: merge`: then lists of maps merge element-wise by
/// `x-kubernetes-patch-merge-key` and lists of scalars become a set union. The directives
/// `$patch` (`replace`, `delete`; `merge` is rejected as upstream does), `$retainKeys`,
/// `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>` are honoured.
///
/// The patch must be a JSON object (`null` counts as an empty one, as Go decodes it); the
/// original must be an object too.
pub fn strategic_merge_patch(
    original: &Value,
    patch: &Value,
    schema: &impl PatchSchema,
) -> Result<Value, PatchError> {
    let patch = match patch {
        Value::Object(m) => m.clone(),
        Value::Null => Map::new(),
        other => {
            return Err(PatchError::NotAnObject {
                found: json_kind(other),
            });
        }
    };
    let original = match original {
        Value::Object(m) => m.clone(),
        Value::Null => Map::new(),
        _ => return Err(PatchError::BadJsonDoc),
    };
    merge_map(original, patch, Some(schema)).map(Value::Object)
}

/// Patch metadata of one field, as upstream's `PatchMeta` plus the retainKeys flag split off.
struct FieldMeta {
    strategy: String,
    merge_key: String,
}

fn field_meta<S: PatchSchema>(schema: Option<&S>) -> Result<FieldMeta, PatchError> {
    let strategies: Vec<&str> = match schema.and_then(|s| s.patch_strategy()) {
        Some(s) if !s.is_empty() => s.split(',').collect(),
        _ => Vec::new(),
    };
    // "retainKeys" may be combined with one other strategy; it is applied through the
    // `$retainKeys` directive in the patch, so only the other strategy matters here.
    let strategy = match strategies.as_slice() {
        [] => "",
        [one] if *one == RETAIN_KEYS_STRATEGY => "",
        [one] => one,
        [a, b] if *a == RETAIN_KEYS_STRATEGY => b,
        [a, b] if *b == RETAIN_KEYS_STRATEGY => a,
        _ => {
            let list = Value::Array(
                strategies
                    .iter()
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            );
            return Err(PatchError::UnexpectedPatchStrategy {
                strategies: go_fmt(&list),
            });
        }
    };
    Ok(FieldMeta {
        strategy: strategy.to_string(),
        merge_key: schema
            .and_then(|s| s.patch_merge_key())
            .unwrap_or_default()
            .to_string(),
    })
}

fn merge_map<S: PatchSchema>(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    schema: Option<&S>,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(directive) = patch.get(DIRECTIVE) {
        return match directive.as_str() {
            Some(REPLACE) => {
                patch.remove(DIRECTIVE);
                Ok(literal_map(patch))
            }
            // Upstream returns an empty map rather than removing the key holding it.
            Some(DELETE) => Ok(Map::new()),
            _ => Err(PatchError::BadPatchType {
                directive: go_fmt(directive),
                map: go_fmt(&Value::Object(patch.clone())),
            }),
        };
    }

    apply_retain_keys(&mut original, &mut patch)?;
    merge_set_element_order(&mut original, &mut patch, schema)?;

    for (key, patch_value) in patch {
        let (key, is_delete_list) = if key.starts_with(DELETE_FROM_PRIMITIVE_LIST) {
            (
                extract_key(
                    &key,
                    DELETE_FROM_PRIMITIVE_LIST,
                    PatchError::BadPatchFormatForPrimitiveList,
                )?,
                true,
            )
        } else {
            (key, false)
        };

        if patch_value.is_null() {
            // Also true for "$deleteFromPrimitiveList/x: null", which drops x, as upstream.
            original.remove(&key);
            continue;
        }

        let Some(original_value) = original.get_mut(&key) else {
            if !is_delete_list {
                insert_clean(&mut original, key, patch_value);
            }
            continue;
        };

        match (original_value, patch_value) {
            (Value::Object(o), Value::Object(p)) => {
                let child = schema.and_then(|s| s.child(&key));
                let meta = field_meta(child.as_ref())?;
                let o = std::mem::take(o);
                let merged = if meta.strategy == REPLACE {
                    literal_map(p)
                } else {
                    merge_map(o, p, child.as_ref())?
                };
                original.insert(key, Value::Object(merged));
            }
            (Value::Array(o), Value::Array(p)) => {
                let child = schema.and_then(|s| s.child(&key));
                let meta = field_meta(child.as_ref())?;
                let o = std::mem::take(o);
                let merged = if meta.strategy == MERGE || is_delete_list {
                    let items = child.as_ref().and_then(|c| c.items());
                    merge_slice(o, p, items.as_ref(), &meta.merge_key, &key, is_delete_list)?
                } else {
                    literal_list(p)
                };
                original.insert(key, Value::Array(merged));
            }
            (_, patch_value) => {
                // Scalars, or a change of kind: the patch value wins. A deletion list only ever
                // deletes, so it never replaces a non-list.
                if !is_delete_list {
                    insert_clean(&mut original, key, patch_value);
                }
            }
        }
    }
    Ok(original)
}

/// `$retainKeys: [...]` clears every original key not listed; every key the patch sets must be
/// listed.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), PatchError> {
    let Some(retain) = patch.remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(retain) = retain else {
        return Err(PatchError::BadPatchFormatForRetainKeys);
    };
    let retained = |k: &str| retain.iter().any(|v| v.as_str() == Some(k));
    for (k, v) in patch.iter() {
        if v.is_null()
            || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
            || k.starts_with(SET_ELEMENT_ORDER)
        {
            continue;
        }
        if !retained(k) {
            return Err(PatchError::BadPatchFormatForRetainKeys);
        }
    }
    original.retain(|k, _| retained(k));
    Ok(())
}

/// Strips `<prefix>/` from a parallel-list key.
fn extract_key(key: &str, prefix: &str, err: PatchError) -> Result<String, PatchError> {
    match key.split_once('/') {
        Some((p, rest)) if p == prefix => Ok(rest.to_string()),
        _ => Err(err),
    }
}

/// Processes every `$setElementOrder/<field>` in `patch`: merges `<field>` (removing it from the
/// patch) and then orders the result by the directive, keeping live-only items in their
/// relative live order.
fn merge_set_element_order<S: PatchSchema>(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    schema: Option<&S>,
) -> Result<(), PatchError> {
    let keys: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
        .cloned()
        .collect();
    for directive_key in keys {
        let Some(order) = patch.remove(&directive_key) else {
            continue;
        };
        let Value::Array(order) = order else {
            return Err(PatchError::bad_arg_type(GO_SLICE, &order));
        };
        let key = extract_key(
            &directive_key,
            SET_ELEMENT_ORDER,
            PatchError::BadPatchFormatForSetElementOrderList,
        )?;

        let original_list = match original.get(&key) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(other) => return Err(PatchError::bad_arg_type(GO_SLICE, other)),
        };
        let patch_list = match patch.get(&key) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(other) => return Err(PatchError::bad_arg_type(GO_SLICE, other)),
        };
        let child = schema.and_then(|s| s.child(&key));
        let meta = field_meta(child.as_ref())?;
        validate_patch_with_set_order(
            patch_list.as_deref().unwrap_or(&[]),
            &order,
            &meta.merge_key,
        )?;

        let live = original_list.clone().unwrap_or_default();
        let merged = match (original_list, patch_list) {
            (None, None) => continue,
            (Some(o), None) => o,
            (None, Some(p)) => p.into_iter().filter_map(remove_directives).collect(),
            (Some(o), Some(p)) => {
                if meta.strategy == MERGE {
                    let items = child.as_ref().and_then(|c| c.items());
                    merge_slice(o, p, items.as_ref(), &meta.merge_key, &key, false)?
                } else {
                    literal_list(p)
                }
            }
        };

        let (patch_items, server_only) = partition(merged, &order, &meta.merge_key)?;
        let ordered =
            normalize_element_order(patch_items, server_only, &order, &live, &meta.merge_key)?;
        original.insert(key.clone(), Value::Array(ordered));
        patch.remove(&key);
    }
    Ok(())
}

/// The patch list (deletions aside) must be a subsequence of its `$setElementOrder` list.
fn validate_patch_with_set_order(
    patch: &[Value],
    order: &[Value],
    merge_key: &str,
) -> Result<(), PatchError> {
    if patch.is_empty() || order.is_empty() {
        return Ok(());
    }
    let non_delete: Vec<&Value> = if merge_key.is_empty() {
        patch.iter().collect()
    } else {
        let mut kept = Vec::new();
        for item in patch {
            let Value::Object(m) = item else {
                return Err(PatchError::bad_arg_type(GO_MAP, item));
            };
            if m.get(DIRECTIVE).and_then(Value::as_str) != Some(DELETE) {
                kept.push(item);
            }
        }
        kept
    };
    let (mut pi, mut oi) = (0, 0);
    while pi < non_delete.len() && oi < order.len() {
        if non_delete[pi].get(DIRECTIVE).is_some() {
            pi += 1;
            continue;
        }
        if merge_key_value_equal(non_delete[pi], &order[oi], merge_key)? {
            pi += 1;
        }
        oi += 1;
    }
    if pi < non_delete.len() && oi >= order.len() {
        return Err(PatchError::SetElementOrderMismatch {
            patch: go_fmt(&Value::Array(patch.to_vec())),
            order: go_fmt(&Value::Array(order.to_vec())),
        });
    }
    Ok(())
}

fn merge_key_value_equal(left: &Value, right: &Value, merge_key: &str) -> Result<bool, PatchError> {
    if merge_key.is_empty() {
        return Ok(scalar_eq(left, right));
    }
    let l = left
        .as_object()
        .ok_or_else(|| PatchError::bad_arg_type(GO_MAP, left))?;
    let r = right
        .as_object()
        .ok_or_else(|| PatchError::bad_arg_type(GO_MAP, right))?;
    let lk = l
        .get(merge_key)
        .ok_or_else(|| PatchError::no_merge_key(left, merge_key))?;
    let rk = r
        .get(merge_key)
        .ok_or_else(|| PatchError::no_merge_key(right, merge_key))?;
    Ok(scalar_eq(lk, rk))
}

/// Merges two lists whose field has strategy `merge` (or is a `$deleteFromPrimitiveList`).
fn merge_slice<S: PatchSchema>(
    original: Vec<Value>,
    patch: Vec<Value>,
    elem_schema: Option<&S>,
    merge_key: &str,
    field: &str,
    is_delete_list: bool,
) -> Result<Vec<Value>, PatchError> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let kind = slice_element_kind(&original, &patch)?;

    let (original, patch, merged) = if kind != Kind::Map {
        if is_delete_list {
            return Ok(original
                .into_iter()
                .filter(|v| !patch.iter().any(|d| scalar_eq(v, d)))
                .collect());
        }
        let mut both = original.clone();
        both.extend(patch.iter().cloned());
        let merged = dedup_scalars(both);
        (original, patch, merged)
    } else {
        if merge_key.is_empty() {
            return Err(PatchError::NoMergeKeyDeclared {
                field: field.to_string(),
            });
        }
        let (original, patch) = merge_slice_special_elements(original, patch, merge_key)?;
        let merged = merge_slice_plain_elements(original.clone(), &patch, merge_key, elem_schema)?;
        (original, patch, merged)
    };

    let key = if kind == Kind::Map { merge_key } else { "" };
    let (patch_items, server_only) = partition(merged, &patch, key)?;
    normalize_element_order(patch_items, server_only, &patch, &original, key)
}

/// Applies `$patch` elements of a list of maps: `delete` removes every live element with that
/// key, `replace` makes the rest of the patch list the whole list. Returns the updated original
/// and the patch without directive elements.
fn merge_slice_special_elements(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    merge_key: &str,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for item in patch {
        let Some(directive) = item.get(DIRECTIVE) else {
            plain.push(item);
            continue;
        };
        match directive.as_str() {
            Some(DELETE) => {
                let Some(key_value) = item.get(merge_key) else {
                    return Err(PatchError::no_merge_key(&item, merge_key));
                };
                for existing in &original {
                    if !existing.is_object() {
                        return Err(PatchError::bad_arg_type(GO_MAP, existing));
                    }
                }
                original.retain(|e| !e.get(merge_key).is_some_and(|k| scalar_eq(k, key_value)));
            }
            // Keep scanning so later directive elements are still dropped from the list.
            Some(REPLACE) => replace = true,
            Some(MERGE) => return Err(PatchError::MergeDirectiveInList),
            _ => {
                return Err(PatchError::BadPatchType {
                    directive: go_fmt(directive),
                    map: go_fmt(&item),
                });
            }
        }
    }
    if replace {
        Ok((literal_list(plain), Vec::new()))
    } else {
        Ok((original, plain))
    }
}

/// Merges each patch element into the first live element with the same key, or appends it.
fn merge_slice_plain_elements<S: PatchSchema>(
    mut original: Vec<Value>,
    patch: &[Value],
    merge_key: &str,
    elem_schema: Option<&S>,
) -> Result<Vec<Value>, PatchError> {
    for item in patch {
        let Value::Object(item_map) = item else {
            return Err(PatchError::bad_arg_type(GO_MAP, item));
        };
        let Some(key_value) = item_map.get(merge_key) else {
            return Err(PatchError::no_merge_key(item, merge_key));
        };
        let mut found = None;
        for (i, existing) in original.iter().enumerate() {
            let Value::Object(m) = existing else {
                return Err(PatchError::bad_arg_type(GO_MAP, existing));
            };
            if m.get(merge_key).is_some_and(|k| scalar_eq(k, key_value)) {
                found = Some(i);
                break;
            }
        }
        match found {
            Some(i) => {
                let existing = match std::mem::take(&mut original[i]) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                original[i] = Value::Object(merge_map(existing, item_map.clone(), elem_schema)?);
            }
            None => original.push(literal(item.clone())),
        }
    }
    Ok(original)
}

/// Splits `merged` into the items that appear in `by` (matched by merge key, or by value for
/// scalars) and the rest, each keeping its order.
fn partition(
    merged: Vec<Value>,
    by: &[Value],
    merge_key: &str,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut in_by = Vec::with_capacity(merged.len());
    let mut rest = Vec::with_capacity(merged.len());
    for item in merged {
        let present = if merge_key.is_empty() {
            by.iter().any(|b| scalar_eq(b, &item))
        } else {
            let Value::Object(m) = &item else {
                return Err(PatchError::bad_arg_type(GO_MAP, &item));
            };
            let Some(key_value) = m.get(merge_key) else {
                return Err(PatchError::no_merge_key(&item, merge_key));
            };
            let mut present = false;
            for b in by {
                let Value::Object(bm) = b else {
                    return Err(PatchError::bad_arg_type(GO_MAP, b));
                };
                if bm.get(merge_key).is_some_and(|k| scalar_eq(k, key_value)) {
                    present = true;
                    break;
                }
            }
            present
        };
        if present {
            in_by.push(item)
        } else {
            rest.push(item)
        }
    }
    Ok((in_by, rest))
}

/// Orders patch items by `patch_order` and live-only items by `server_order`, then interleaves
/// them: a live-only item goes before a patch item only when both are live and it came first
/// there. Hence new patch items land ahead of the live-only items that follow them, as upstream.
fn normalize_element_order(
    patch: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: &str,
) -> Result<Vec<Value>, PatchError> {
    let patch = normalize_slice_order(patch, patch_order, merge_key)?;
    let server_only = normalize_slice_order(server_only, server_order, merge_key)?;

    let mut out = Vec::with_capacity(patch.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patch.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                match (
                    index_of(server_order, l, merge_key),
                    index_of(server_order, r, merge_key),
                ) {
                    (Some(li), Some(ri)) => li < ri,
                    _ => false,
                }
            }
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    Ok(out)
}

fn normalize_slice_order(
    items: Vec<Value>,
    order: &[Value],
    merge_key: &str,
) -> Result<Vec<Value>, PatchError> {
    if !merge_key.is_empty() {
        for v in items.iter().chain(order) {
            let Value::Object(m) = v else {
                return Err(PatchError::bad_arg_type(GO_MAP, v));
            };
            if !m.contains_key(merge_key) {
                return Err(PatchError::no_merge_key(v, merge_key));
            }
        }
    }
    let mut keyed: Vec<(Option<usize>, Value)> = items
        .into_iter()
        .map(|v| (index_of(order, &v, merge_key), v))
        .collect();
    // Items absent from `order` keep their place relative to each other (upstream's comparator
    // is not a strict order for them; only degenerate patches reach that case).
    keyed.sort_by(|(a, _), (b, _)| match (a, b) {
        (Some(a), Some(b)) => a.cmp(b),
        _ => Ordering::Equal,
    });
    Ok(keyed.into_iter().map(|(_, v)| v).collect())
}

fn index_of(list: &[Value], item: &Value, merge_key: &str) -> Option<usize> {
    if merge_key.is_empty() {
        list.iter().position(|v| scalar_eq(v, item))
    } else {
        let key_value = item.get(merge_key);
        list.iter()
            .position(|v| match (v.get(merge_key), key_value) {
                (Some(a), Some(b)) => scalar_eq(a, b),
                (None, None) => true,
                _ => false,
            })
    }
}

fn dedup_scalars(items: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(items.len());
    for item in items {
        if !out.iter().any(|v| scalar_eq(v, &item)) {
            out.push(item);
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Number,
    String,
    Map,
}

fn kind_of(v: &Value) -> Result<Kind, PatchError> {
    Ok(match v {
        Value::Null => Kind::Null,
        Value::Bool(_) => Kind::Bool,
        Value::Number(_) => Kind::Number,
        Value::String(_) => Kind::String,
        Value::Object(_) => Kind::Map,
        Value::Array(_) => return Err(PatchError::NoListOfLists),
    })
}

/// All elements of both lists must share one kind, and none may be a list.
fn slice_element_kind(original: &[Value], patch: &[Value]) -> Result<Kind, PatchError> {
    let mut kind = None;
    for v in original.iter().chain(patch) {
        let k = kind_of(v)?;
        match kind {
            None => kind = Some(k),
            Some(prev) if prev != k => {
                let lists = Value::Array(vec![
                    Value::Array(original.to_vec()),
                    Value::Array(patch.to_vec()),
                ]);
                return Err(PatchError::MixedListElementTypes {
                    lists: go_fmt(&lists),
                });
            }
            Some(_) => {}
        }
    }
    // Callers only ask when at least one list is non-empty.
    Ok(kind.unwrap_or(Kind::Null))
}

/// Equality as Go's `==` on decoded JSON scalars, except that numbers compare by value
/// (1 and 1.0 are the same number in a Kubernetes object).
pub(crate) fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        _ => a == b,
    }
}

fn is_directive_key(k: &str) -> bool {
    k == DIRECTIVE
        || k == RETAIN_KEYS
        || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
        || k.starts_with(SET_ELEMENT_ORDER)
}

fn insert_clean(map: &mut Map<String, Value>, key: String, value: Value) {
    match remove_directives(value) {
        Some(v) => {
            map.insert(key, v);
        }
        None => {
            map.remove(&key);
        }
    }
}

// Two ways of making a patch value fit to store as is. Upstream drops maps carrying `$patch`
// when a value is new to the object (`removeDirectives`), but stores replaced values raw and
// lets decoding into typed objects drop directive keys and nulls. We keep that split, doing the
// decoder's part ourselves since our objects stay JSON.

/// For values new to the object: maps carrying `$patch` vanish (`None` means "do not keep").
fn remove_directives(value: Value) -> Option<Value> {
    match value {
        Value::Object(m) if m.contains_key(DIRECTIVE) => None,
        Value::Object(m) => Some(Value::Object(
            m.into_iter()
                .filter(|(k, v)| !v.is_null() && !is_directive_key(k))
                .filter_map(|(k, v)| remove_directives(v).map(|v| (k, v)))
                .collect(),
        )),
        Value::Array(items) => Some(Value::Array(
            items.into_iter().filter_map(remove_directives).collect(),
        )),
        other => Some(other),
    }
}

/// For values taken literally (replace): directive keys and null entries go, maps stay.
fn literal(value: Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(literal_map(m)),
        Value::Array(items) => Value::Array(literal_list(items)),
        other => other,
    }
}

fn literal_map(m: Map<String, Value>) -> Map<String, Value> {
    m.into_iter()
        .filter(|(k, v)| !v.is_null() && !is_directive_key(k))
        .map(|(k, v)| (k, literal(v)))
        .collect()
}

fn literal_list(items: Vec<Value>) -> Vec<Value> {
    items.into_iter().map(literal).collect()
}

#[cfg(test)]
mod tests;
