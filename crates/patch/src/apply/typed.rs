//! Schema-aware walks over JSON objects, after structured-merge-diff's `typed` package:
//! the field set of a value, merging an applied configuration into a live object, comparing
//! two objects, and removing a set of fields.
//!
//! The value decides the shape (map, list, scalar); the schema only says how a map or list
//! behaves. Positions the schema does not describe are "deduced": maps are granular and every
//! key is owned as a member, lists are atomic.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::fieldpath::{FieldSet, Path, PathElement, get_in_step, values_equal};
use crate::schema::PatchSchema;

/// How a list's elements are identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListKind {
    /// The list is one value.
    Atomic,
    /// Scalars identified by value.
    Set,
    /// Maps identified by these fields.
    Map(Vec<String>),
}

/// `x-kubernetes-list-type` decides; without it Kubernetes derives the type from the
/// strategic-merge-patch metadata (merge with key → map, merge without key → set), else atomic.
pub(crate) fn list_kind<S: PatchSchema>(schema: Option<&S>) -> ListKind {
    let Some(s) = schema else {
        return ListKind::Atomic;
    };
    let by_merge_key = || {
        s.patch_merge_key()
            .filter(|k| !k.is_empty())
            .map(|k| vec![k.to_string()])
    };
    match s.list_type() {
        Some("atomic") => ListKind::Atomic,
        Some("set") => ListKind::Set,
        Some("map") => {
            let keys = s.list_map_keys();
            if !keys.is_empty() {
                ListKind::Map(keys)
            } else {
                by_merge_key().map_or(ListKind::Atomic, ListKind::Map)
            }
        }
        _ => {
            let merges = s
                .patch_strategy()
                .is_some_and(|st| st.split(',').any(|p| p == "merge"));
            if merges {
                by_merge_key().map_or(ListKind::Set, ListKind::Map)
            } else {
                ListKind::Atomic
            }
        }
    }
}

fn map_is_atomic<S: PatchSchema>(schema: Option<&S>) -> bool {
    schema.and_then(|s| s.map_type()) == Some("atomic")
}

fn child_schema<S: PatchSchema>(schema: Option<&S>, pe: &PathElement) -> Option<S> {
    match pe {
        PathElement::Field(name) => schema.and_then(|s| s.child(name)),
        PathElement::Key(_) | PathElement::Value(_) => schema.and_then(|s| s.items()),
        PathElement::Index(_) => None,
    }
}

fn is_empty_container(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    }
}

/// The path element identifying a list item.
fn item_element<S: PatchSchema>(
    item: &Value,
    kind: &ListKind,
    item_schema: Option<&S>,
) -> Result<PathElement, String> {
    match kind {
        ListKind::Atomic => Err("invalid indexing of non-associative list".into()),
        ListKind::Set => match item {
            Value::Object(_) => {
                Err("associative list without keys has an element that's a map type".into())
            }
            Value::Array(_) => Err("not supported: associative list with lists as elements".into()),
            Value::Null => {
                Err("associative list without keys has an element that's an explicit null".into())
            }
            v => Ok(PathElement::Value(v.clone())),
        },
        ListKind::Map(keys) => {
            let m = match item {
                Value::Object(m) => m,
                Value::Null => {
                    return Err("associative list with keys may not have a null element".into());
                }
                _ => return Err("associative list with keys may not have non-map elements".into()),
            };
            let mut fields = Vec::new();
            for key in keys {
                if let Some(v) = m.get(key) {
                    fields.push((key.clone(), v.clone()));
                } else if let Some(d) = item_schema
                    .and_then(|s| s.property(key))
                    .and_then(|p| p.default_value().cloned())
                {
                    fields.push((key.clone(), d));
                }
            }
            if fields.is_empty() {
                let quoted: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
                return Err(format!(
                    "associative list with keys has an element that omits all key fields [{}] (and doesn't have default values for any key fields)",
                    quoted.join(" ")
                ));
            }
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(PathElement::Key(fields))
        }
    }
}

/// How strictly to read a value: an applied configuration must be well formed; a stored object
/// is read leniently (a list that cannot be keyed is treated as atomic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Strict,
    Lenient,
}

/// Element identities of a list, or `None` when the list is to be treated as atomic.
fn index_list<S: PatchSchema>(
    items: &[Value],
    kind: &ListKind,
    item_schema: Option<&S>,
    mode: Mode,
    path: &[PathElement],
) -> Result<Option<Vec<PathElement>>, String> {
    if *kind == ListKind::Atomic {
        return Ok(None);
    }
    let mut pes = Vec::with_capacity(items.len());
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        match item_element(item, kind, item_schema) {
            Ok(pe) => {
                if !seen.insert(pe.clone()) && mode == Mode::Strict {
                    return Err(format!(
                        "{}: duplicate entries for key {pe}",
                        Path(path.to_vec())
                    ));
                }
                pes.push(pe);
            }
            Err(e) if mode == Mode::Strict => {
                return Err(format!("{}: element {i}: {e}", Path(path.to_vec())));
            }
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(pes))
}

/// Checks an applied configuration is well formed: list items carry their keys, no duplicates.
pub(crate) fn validate<S: PatchSchema>(v: &Value, schema: Option<&S>) -> Result<(), String> {
    field_set(v, schema, Mode::Strict).map(|_| ())
}

/// The fields a value sets, as structured-merge-diff's `ToFieldSet`: leaves, list items, and
/// map keys that are not struct fields (or are null or empty maps).
pub(crate) fn field_set<S: PatchSchema>(
    v: &Value,
    schema: Option<&S>,
    mode: Mode,
) -> Result<FieldSet, String> {
    let mut set = FieldSet::new();
    walk_field_set(v, schema, mode, &mut Vec::new(), &mut set)?;
    Ok(set)
}

fn walk_field_set<S: PatchSchema>(
    v: &Value,
    schema: Option<&S>,
    mode: Mode,
    path: &mut Vec<PathElement>,
    set: &mut FieldSet,
) -> Result<(), String> {
    match v {
        Value::Object(m) => {
            if map_is_atomic(schema) {
                set.insert(path);
                return Ok(());
            }
            for (k, val) in m {
                let property = schema.and_then(|s| s.property(k));
                let declared = property.is_some();
                let child = property.or_else(|| schema.and_then(|s| s.additional_properties()));
                path.push(PathElement::Field(k.clone()));
                walk_field_set(val, child.as_ref(), mode, path, set)?;
                if val.is_null() || val.as_object().is_some_and(Map::is_empty) || !declared {
                    set.insert(path);
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            let item_schema = schema.and_then(|s| s.items());
            let Some(pes) =
                index_list(items, &list_kind(schema), item_schema.as_ref(), mode, path)?
            else {
                set.insert(path);
                return Ok(());
            };
            let mut count: BTreeMap<&PathElement, usize> = BTreeMap::new();
            for pe in &pes {
                *count.entry(pe).or_default() += 1;
            }
            for (item, pe) in items.iter().zip(&pes) {
                path.push(pe.clone());
                // Duplicated items (only possible in stored objects) are owned as a whole.
                if count.get(pe).copied().unwrap_or(0) <= 1 {
                    walk_field_set(item, item_schema.as_ref(), mode, path, set)?;
                }
                set.insert(path);
                path.pop();
            }
        }
        _ => set.insert(path),
    }
    Ok(())
}

/// Merges an applied configuration (`rhs`) into a live object (`lhs`): the configuration's
/// values win, granular maps and keyed lists merge item by item, atomic ones are replaced.
/// Explicit nulls in the configuration remove the field. `None` means "absent".
pub(crate) fn merge<S: PatchSchema>(
    lhs: Option<&Value>,
    rhs: Option<&Value>,
    schema: Option<&S>,
    path: &mut Vec<PathElement>,
) -> Result<Option<Value>, String> {
    let (l, r) = match (lhs, rhs) {
        (l, None) => return Ok(l.cloned()),
        (_, Some(Value::Null)) => return Ok(None),
        (None, Some(r)) => return Ok(Some(strip_nulls(r.clone()))),
        (Some(l), Some(r)) => (l, r),
    };
    match (l, r) {
        (Value::Object(lm), Value::Object(rm)) => {
            if map_is_atomic(schema) || (lm.is_empty() && rm.is_empty()) {
                return Ok(Some(strip_nulls(r.clone())));
            }
            let mut out = Map::new();
            for (k, lv) in lm {
                let child = schema.and_then(|s| s.child(k));
                path.push(PathElement::Field(k.clone()));
                let merged = merge(Some(lv), rm.get(k), child.as_ref(), path)?;
                path.pop();
                if let Some(v) = merged {
                    out.insert(k.clone(), v);
                }
            }
            for (k, rv) in rm {
                if !lm.contains_key(k) && !rv.is_null() {
                    out.insert(k.clone(), strip_nulls(rv.clone()));
                }
            }
            Ok(Some(Value::Object(out)))
        }
        (Value::Array(la), Value::Array(ra)) => {
            let kind = list_kind(schema);
            if kind == ListKind::Atomic || (la.is_empty() && ra.is_empty()) {
                return Ok(Some(strip_nulls(r.clone())));
            }
            let item_schema = schema.and_then(|s| s.items());
            let Some(rpes) = index_list(ra, &kind, item_schema.as_ref(), Mode::Strict, path)?
            else {
                return Ok(Some(strip_nulls(r.clone())));
            };
            let Some(lpes) = index_list(la, &kind, item_schema.as_ref(), Mode::Lenient, path)?
            else {
                return Ok(Some(strip_nulls(r.clone())));
            };
            merge_list_items(la, &lpes, ra, &rpes, item_schema.as_ref(), path)
                .map(|items| Some(Value::Array(items)))
        }
        // Scalars, or a change of kind: the configuration wins.
        _ => Ok(Some(strip_nulls(r.clone()))),
    }
}

/// Interleaves live and applied items as structured-merge-diff does: applied items keep their
/// applied order, live-only items stay where they were relative to the items around them.
fn merge_list_items<S: PatchSchema>(
    la: &[Value],
    lpes: &[PathElement],
    ra: &[Value],
    rpes: &[PathElement],
    item_schema: Option<&S>,
    path: &mut Vec<PathElement>,
) -> Result<Vec<Value>, String> {
    // For live items seen twice there is no single counterpart: merge against null, which
    // lets the applied item replace them all.
    let mut observed_l: BTreeMap<&PathElement, Option<&Value>> = BTreeMap::new();
    for (pe, item) in lpes.iter().zip(la) {
        observed_l
            .entry(pe)
            .and_modify(|v| *v = None)
            .or_insert(Some(item));
    }
    let observed_r: BTreeMap<&PathElement, &Value> = rpes.iter().zip(ra).collect();
    let mut shared = rpes.iter().filter(|pe| observed_l.contains_key(pe));
    let mut next_shared = shared.next();
    let mut merged_r: BTreeSet<&PathElement> = BTreeSet::new();
    let mut out = Vec::with_capacity(la.len().max(ra.len()));
    let null = Value::Null;
    let lchild = |pe: &PathElement| observed_l.get(pe).map(|v| v.unwrap_or(&null));

    let (mut li, mut ri) = (0, 0);
    while li < lpes.len() || ri < rpes.len() {
        let before = (li, ri);
        if li < lpes.len() && ri < rpes.len() {
            let pe = &lpes[li];
            if *pe == rpes[ri] {
                merged_r.insert(pe);
                out.extend(merge_item(
                    lchild(pe),
                    observed_r.get(pe).copied(),
                    pe,
                    item_schema,
                    path,
                )?);
                li += 1;
                ri += 1;
                next_shared = shared.next();
                continue;
            }
            if observed_r.contains_key(pe) && next_shared.is_some_and(|n| n != pe) {
                li += 1;
                continue;
            }
        }
        if li < lpes.len() {
            let pe = &lpes[li];
            if !observed_r.contains_key(pe) {
                out.extend(merge_item(Some(&la[li]), None, pe, item_schema, path)?);
                li += 1;
                continue;
            } else if merged_r.contains(pe) {
                li += 1;
            }
        }
        if ri < rpes.len() {
            let pe = &rpes[ri];
            merged_r.insert(pe);
            out.extend(merge_item(
                lchild(pe),
                observed_r.get(pe).copied(),
                pe,
                item_schema,
                path,
            )?);
            ri += 1;
            if next_shared == Some(pe) {
                next_shared = shared.next();
            }
        }
        if (li, ri) == before {
            // Cannot happen for well-formed input; never loop forever on malformed input.
            li += 1;
        }
    }
    Ok(out)
}

fn merge_item<S: PatchSchema>(
    l: Option<&Value>,
    r: Option<&Value>,
    pe: &PathElement,
    item_schema: Option<&S>,
    path: &mut Vec<PathElement>,
) -> Result<Option<Value>, String> {
    path.push(pe.clone());
    let out = merge(l, r, item_schema, path);
    path.pop();
    out
}

/// Drops null map entries: a null in an applied configuration means "unset".
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// Fields added, modified and removed between two objects.
#[derive(Debug, Clone, Default)]
pub(crate) struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

impl Comparison {
    pub(crate) fn filter(self, reset: Option<&FieldSet>) -> Comparison {
        match reset {
            None => self,
            Some(r) => Comparison {
                added: self.added.recursive_difference(r),
                modified: self.modified.recursive_difference(r),
                removed: self.removed.recursive_difference(r),
            },
        }
    }
}

/// Compares two objects as structured-merge-diff's `Compare`: changed leaves are modified;
/// present-on-one-side nodes are added or removed, together with everything below them.
pub(crate) fn compare<S: PatchSchema>(lhs: &Value, rhs: &Value, schema: Option<&S>) -> Comparison {
    // Against nothing (a create), everything is added: build that set bottom-up rather than
    // inserting each path from the root.
    if let (Some(l), Some(r)) = (lhs.as_object(), rhs.as_object())
        && l.is_empty()
        && !r.is_empty()
        && !map_is_atomic(schema)
    {
        let mut added = FieldSet::new();
        for (k, v) in r {
            let child = schema.and_then(|s| s.child(k));
            add_with_subtree(&mut added, PathElement::Field(k.clone()), added_below(v, child.as_ref(), k == "metadata"));
        }
        return Comparison { added, ..Comparison::default() };
    }
    let mut c = Comparison::default();
    walk_compare(Some(lhs), Some(rhs), schema, &mut Vec::new(), &mut c);
    c
}

fn add_with_subtree(set: &mut FieldSet, pe: PathElement, below: FieldSet) {
    if below.is_empty() {
        set.insert_member(pe);
    } else {
        set.insert_member(pe.clone());
        set.set_child(pe, below);
    }
}

/// What `walk_compare(None, Some(v))` records below `v`'s own path, as a set relative to it
/// (`v` itself is always recorded, by the caller). `is_metadata`: `v` is the object's
/// metadata, whose managedFields are never owned.
fn added_below<S: PatchSchema>(v: &Value, schema: Option<&S>, is_metadata: bool) -> FieldSet {
    let mut below = FieldSet::new();
    match v {
        Value::Object(m) if !m.is_empty() && !map_is_atomic(schema) => {
            for (k, child_value) in m {
                if is_metadata && k == "managedFields" {
                    continue;
                }
                let child = schema.and_then(|s| s.child(k));
                add_with_subtree(&mut below, PathElement::Field(k.clone()), added_below(child_value, child.as_ref(), false));
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let kind = list_kind(schema);
            let item_schema = schema.and_then(|s| s.items());
            if let Ok(Some(pes)) = index_list(items, &kind, item_schema.as_ref(), Mode::Lenient, &[]) {
                // Elements sharing a key are recorded as the element alone, as compare does.
                let mut counts: BTreeMap<&PathElement, usize> = BTreeMap::new();
                for pe in &pes {
                    *counts.entry(pe).or_default() += 1;
                }
                for (pe, item) in pes.iter().zip(items) {
                    if counts.get(pe).copied().unwrap_or(0) > 1 {
                        below.insert_member(pe.clone());
                    } else {
                        add_with_subtree(&mut below, pe.clone(), added_below(item, item_schema.as_ref(), false));
                    }
                }
            }
        }
        _ => {}
    }
    below
}

fn walk_compare<S: PatchSchema>(
    l: Option<&Value>,
    r: Option<&Value>,
    schema: Option<&S>,
    path: &mut Vec<PathElement>,
    c: &mut Comparison,
) {
    let leaf = |c: &mut Comparison, path: &[PathElement]| match (l, r) {
        (None, Some(_)) => c.added.insert(path),
        (Some(_), None) => c.removed.insert(path),
        (Some(a), Some(b)) if !values_equal(a, b) => c.modified.insert(path),
        _ => {}
    };
    // An unchanged subtree holds no change: one equality pass is far cheaper than walking it
    // with schema lookups and paths (a status write leaves the whole spec as it was).
    if let (Some(a), Some(b)) = (l, r)
        && (a.is_object() || a.is_array())
        && values_equal(a, b)
    {
        return;
    }
    let shape = match (l, r) {
        (None, None) => return,
        (Some(v), None) | (None, Some(v)) => v,
        (Some(a), Some(b)) => {
            let same = matches!(
                (a, b),
                (Value::Object(_), Value::Object(_)) | (Value::Array(_), Value::Array(_))
            ) || !(a.is_object() || a.is_array() || b.is_object() || b.is_array());
            if !same {
                // A change of kind: what was below the old value is gone, what is below the
                // new one is new, and the field itself changed.
                descend_only(a, false, schema, path, c);
                descend_only(b, true, schema, path, c);
                c.modified.insert(path);
                return;
            }
            b
        }
    };
    match shape {
        Value::Object(_) => {
            let (lm, rm) = (l.and_then(Value::as_object), r.and_then(Value::as_object));
            if map_is_atomic(schema) || (is_empty_container(l) && is_empty_container(r)) {
                leaf(c, path);
                return;
            }
            let empty = Map::new();
            let (lm, rm) = (lm.unwrap_or(&empty), rm.unwrap_or(&empty));
            // Ownership records are never owned themselves: skipping them spares callers
            // copying objects just to strip them.
            let in_metadata = matches!(path.as_slice(), [PathElement::Field(f)] if f == "metadata");
            let mut cursor = Some(rm.iter());
            let mut found = 0;
            for (k, lv) in lm {
                if in_metadata && k == "managedFields" {
                    continue;
                }
                let rv = get_in_step(rm, &mut cursor, k);
                found += usize::from(rv.is_some());
                let child = schema.and_then(|s| s.child(k));
                path.push(PathElement::Field(k.clone()));
                walk_compare(Some(lv), rv, child.as_ref(), path, c);
                path.pop();
            }
            // Keys only the new side has exist only if it has more than were found.
            let compared = rm.len() - usize::from(in_metadata && rm.contains_key("managedFields"));
            if compared > found {
                for (k, rv) in rm {
                    if !lm.contains_key(k) && !(in_metadata && k == "managedFields") {
                        let child = schema.and_then(|s| s.child(k));
                        path.push(PathElement::Field(k.clone()));
                        walk_compare(None, Some(rv), child.as_ref(), path, c);
                        path.pop();
                    }
                }
            }
        }
        Value::Array(_) => {
            let empty = Vec::new();
            let la = l.and_then(Value::as_array).unwrap_or(&empty);
            let ra = r.and_then(Value::as_array).unwrap_or(&empty);
            let kind = list_kind(schema);
            if kind == ListKind::Atomic || (la.is_empty() && ra.is_empty()) {
                leaf(c, path);
                return;
            }
            let item_schema = schema.and_then(|s| s.items());
            let lpes = index_list(la, &kind, item_schema.as_ref(), Mode::Lenient, path)
                .ok()
                .flatten();
            let rpes = index_list(ra, &kind, item_schema.as_ref(), Mode::Lenient, path)
                .ok()
                .flatten();
            let (Some(lpes), Some(rpes)) = (lpes, rpes) else {
                leaf(c, path);
                return;
            };
            compare_list_items(la, &lpes, ra, &rpes, item_schema.as_ref(), path, c);
        }
        _ => {
            leaf(c, path);
            return;
        }
    }
    match (l, r) {
        (None, Some(_)) => c.added.insert(path),
        (Some(_), None) => c.removed.insert(path),
        _ => {}
    }
}

/// Records everything below a granular container as added or removed.
fn descend_only<S: PatchSchema>(
    v: &Value,
    added: bool,
    schema: Option<&S>,
    path: &mut Vec<PathElement>,
    c: &mut Comparison,
) {
    fn sides(x: &Value, added: bool) -> (Option<&Value>, Option<&Value>) {
        if added {
            (None, Some(x))
        } else {
            (Some(x), None)
        }
    }
    match v {
        Value::Object(m) if !map_is_atomic(schema) => {
            for (k, child_value) in m {
                let child = schema.and_then(|s| s.child(k));
                let (cl, cr) = sides(child_value, added);
                path.push(PathElement::Field(k.clone()));
                walk_compare(cl, cr, child.as_ref(), path, c);
                path.pop();
            }
        }
        Value::Array(items) => {
            let item_schema = schema.and_then(|s| s.items());
            if let Ok(Some(pes)) = index_list(
                items,
                &list_kind(schema),
                item_schema.as_ref(),
                Mode::Lenient,
                path,
            ) {
                for (item, pe) in items.iter().zip(pes) {
                    let (cl, cr) = sides(item, added);
                    path.push(pe);
                    walk_compare(cl, cr, item_schema.as_ref(), path, c);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
fn compare_list_items<S: PatchSchema>(
    la: &[Value],
    lpes: &[PathElement],
    ra: &[Value],
    rpes: &[PathElement],
    item_schema: Option<&S>,
    path: &mut Vec<PathElement>,
    c: &mut Comparison,
) {
    let mut order: Vec<&PathElement> = Vec::new();
    let mut lvals: BTreeMap<&PathElement, Vec<&Value>> = BTreeMap::new();
    for (pe, item) in lpes.iter().zip(la) {
        let e = lvals.entry(pe).or_default();
        if e.is_empty() {
            order.push(pe);
        }
        e.push(item);
    }
    let mut rvals: BTreeMap<&PathElement, Vec<&Value>> = BTreeMap::new();
    for (pe, item) in rpes.iter().zip(ra) {
        let e = rvals.entry(pe).or_default();
        if e.is_empty() && !lvals.contains_key(pe) {
            order.push(pe);
        }
        e.push(item);
    }
    let none = Vec::new();
    for pe in order {
        let l = lvals.get(pe).unwrap_or(&none);
        let r = rvals.get(pe).unwrap_or(&none);
        path.push(pe.clone());
        match (l.len(), r.len()) {
            (0..=1, 0..=1) => {
                walk_compare(l.first().copied(), r.first().copied(), item_schema, path, c)
            }
            (2.., 2..) => {
                let same = l.len() == r.len() && l.iter().zip(r).all(|(a, b)| values_equal(a, b));
                if !same {
                    c.modified.insert(path);
                }
            }
            (2.., _) => {
                if let Some(first) = r.first() {
                    walk_compare(None, Some(first), item_schema, path, c);
                }
                c.removed.insert(path);
            }
            (_, _) => {
                if let Some(first) = l.first() {
                    walk_compare(Some(first), None, item_schema, path, c);
                }
                c.added.insert(path);
            }
        }
        path.pop();
    }
}

/// Removes the paths in `set` from `v`. Maps and lists left empty by the removal vanish, as
/// they do upstream once the object is decoded into its Go type.
pub(crate) fn remove_items<S: PatchSchema>(
    v: &Value,
    set: &FieldSet,
    schema: Option<&S>,
) -> Option<Value> {
    match v {
        Value::Object(m) => {
            if m.is_empty() || map_is_atomic(schema) {
                return Some(v.clone());
            }
            let mut out = Map::new();
            for (k, val) in m {
                let pe = PathElement::Field(k.clone());
                if set.has_member(&pe) {
                    continue;
                }
                match set.with_prefix(&pe) {
                    Some(sub) => {
                        let child = schema.and_then(|s| s.child(k));
                        if let Some(kept) = remove_items(val, sub, child.as_ref()) {
                            out.insert(k.clone(), kept);
                        }
                    }
                    None => {
                        out.insert(k.clone(), val.clone());
                    }
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(items) => {
            let kind = list_kind(schema);
            let item_schema = schema.and_then(|s| s.items());
            let Ok(Some(pes)) = index_list(items, &kind, item_schema.as_ref(), Mode::Lenient, &[])
            else {
                return Some(v.clone());
            };
            if items.is_empty() {
                return Some(v.clone());
            }
            let mut out = Vec::with_capacity(items.len());
            for (item, pe) in items.iter().zip(&pes) {
                if set.has_member(pe) {
                    continue;
                }
                match set.with_prefix(pe) {
                    Some(sub) => out.extend(remove_items(item, sub, item_schema.as_ref())),
                    None => out.push(item.clone()),
                }
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => Some(other.clone()),
    }
}

/// Adds, as members, the struct fields a set passes through (`.spec` for `.spec.replicas`),
/// so removing the set also removes containers left without owned content.
pub(crate) fn ensure_named_fields_are_members<S: PatchSchema>(
    set: &FieldSet,
    schema: Option<&S>,
) -> FieldSet {
    let mut out = FieldSet::new();
    for m in set.members() {
        out.insert_member(m.clone());
    }
    for (pe, child) in set.children() {
        if let PathElement::Field(name) = pe
            && schema.and_then(|s| s.property(name)).is_some()
        {
            out.insert_member(pe.clone());
        }
        out.set_child(
            pe.clone(),
            ensure_named_fields_are_members(child, child_schema(schema, pe).as_ref()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::OpenApiSchema;
    use serde_json::json;

    fn doc() -> Value {
        json!({"definitions": {
            "Root": {"properties": {
                "set": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                "setNum": {"type": "array", "items": {"type": "number"}, "x-kubernetes-list-type": "set"},
                "list": {"type": "array", "items": {"$ref": "#/definitions/Item"},
                    "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["key", "id"]},
                "mergeList": {"type": "array", "items": {"$ref": "#/definitions/Item"},
                    "x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": "key"},
                "atomic": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "atomic"},
                "plain": {"type": "array", "items": {"type": "string"}},
                "struct": {"$ref": "#/definitions/Item"},
                "atomicMap": {"type": "object", "x-kubernetes-map-type": "atomic",
                    "additionalProperties": {"type": "string"}},
                "s": {"type": "string"}, "b": {"type": "boolean"}
            }},
            "Item": {"properties": {
                "key": {"type": "string"}, "id": {"type": "integer"},
                "value": {"type": "object", "additionalProperties": {"type": "string"}},
                "bv": {"type": "boolean"}, "nv": {"type": "number"}
            }}
        }})
    }

    fn with_root<R>(f: impl FnOnce(&OpenApiSchema<'_>) -> R) -> R {
        let d = doc();
        let root = OpenApiSchema::new(&d, "Root").expect("Root");
        f(&root)
    }

    fn merged(lhs: Value, rhs: Value) -> Value {
        with_root(|s| {
            merge(Some(&lhs), Some(&rhs), Some(s), &mut Vec::new())
                .unwrap()
                .unwrap_or(Value::Null)
        })
    }

    #[test]
    fn a_create_records_what_a_walk_against_nothing_records() {
        let objects = [
            json!({"s": "x", "b": false, "set": ["a", "b", "a"], "setNum": [1, 2],
                   "list": [{"key": "k", "id": 1, "value": {"x": "1"}}, {"key": "k", "id": 2, "bv": true},
                            {"key": "d", "id": 3}, {"key": "d", "id": 3, "nv": 1.5}],
                   "mergeList": [{"key": "m", "value": {}}], "atomic": ["x"], "plain": ["p", "q"],
                   "struct": {"key": "s", "value": {"a": "b"}}, "atomicMap": {"a": "b"},
                   "metadata": {"name": "n", "managedFields": [{"manager": "m"}], "labels": {"a": "b"}},
                   "empty": {}, "emptyList": [], "nothing": null}),
            json!({"metadata": {"managedFields": []}}),
            json!({"list": [{"value": {"x": "1"}}], "struct": {}}),
        ];
        with_root(|s| {
            for obj in &objects {
                let fast = compare(&json!({}), obj, Some(s));
                let mut slow = Comparison::default();
                walk_compare(Some(&json!({})), Some(obj), Some(s), &mut Vec::new(), &mut slow);
                assert_eq!(fast.added, slow.added, "{obj}");
                assert!(fast.modified.is_empty() && fast.removed.is_empty());
            }
        });
    }

    #[test]
    fn list_kinds_from_extensions() {
        with_root(|s| {
            let kind = |f: &str| list_kind(s.property(f).as_ref());
            assert_eq!(kind("set"), ListKind::Set);
            assert_eq!(kind("list"), ListKind::Map(vec!["key".into(), "id".into()]));
            assert_eq!(kind("mergeList"), ListKind::Map(vec!["key".into()]));
            assert_eq!(kind("atomic"), ListKind::Atomic);
            assert_eq!(kind("plain"), ListKind::Atomic);
            assert_eq!(list_kind::<OpenApiSchema<'_>>(None), ListKind::Atomic);
        });
    }

    #[test]
    fn set_merge_orders_like_structured_merge_diff() {
        let cases: Vec<(Value, Value, Value)> = vec![
            (
                json!(["ant", "bee", "cat"]),
                json!(["ant", "bee"]),
                json!(["ant", "bee", "cat"]),
            ),
            (
                json!(["ant", "bee"]),
                json!(["ant", "bee", "cat"]),
                json!(["ant", "bee", "cat"]),
            ),
            (
                json!(["ant", "bee", "cat"]),
                json!([]),
                json!(["ant", "bee", "cat"]),
            ),
            (
                json!([]),
                json!(["ant", "bee", "cat"]),
                json!(["ant", "bee", "cat"]),
            ),
            (
                json!(["ant", "bee"]),
                json!(["bee", "ant"]),
                json!(["bee", "ant"]),
            ),
            (
                json!(["ant", "bee", "cat"]),
                json!(["dog", "eel", "fox"]),
                json!(["ant", "bee", "cat", "dog", "eel", "fox"]),
            ),
            (
                json!(["ant", "bee", "cat"]),
                json!(["cat", "dog", "eel", "fox"]),
                json!(["ant", "bee", "cat", "dog", "eel", "fox"]),
            ),
            (
                json!(["ant", "bee", "cat", "gnu", "fox"]),
                json!(["cat", "dog", "eel", "fox"]),
                json!(["ant", "bee", "cat", "gnu", "dog", "eel", "fox"]),
            ),
            (
                json!(["cat", "dog", "eel", "fox"]),
                json!(["ant", "cat", "eel"]),
                json!(["ant", "cat", "dog", "eel", "fox"]),
            ),
            (
                json!(["ant", "bee", "cat", "xerus", "yak", "zebu"]),
                json!(["dog", "eel", "fox", "xerus", "yak", "zebu"]),
                json!([
                    "ant", "bee", "cat", "dog", "eel", "fox", "xerus", "yak", "zebu"
                ]),
            ),
            (
                json!(["cat", "ant", "gnu", "fox"]),
                json!(["cat", "fox", "ant", "gnu"]),
                json!(["cat", "fox", "ant", "gnu"]),
            ),
            (
                json!(["ant", "bee", "cat", "dog"]),
                json!(["dog", "eel", "fox", "ant"]),
                json!(["bee", "cat", "dog", "eel", "fox", "ant"]),
            ),
            (
                json!(["cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay"]),
                json!(["two", "hen", "three", "eel", "four", "koi", "lynx"]),
                json!([
                    "cat", "dog", "fox", "gnu", "two", "hen", "ibis", "jay", "three", "eel",
                    "four", "koi", "lynx"
                ]),
            ),
            (
                json!([
                    "ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay"
                ]),
                json!([
                    "one", "bee", "two", "hen", "three", "eel", "four", "koi", "lynx"
                ]),
                json!([
                    "ant", "one", "bee", "cat", "dog", "fox", "gnu", "two", "hen", "ibis", "jay",
                    "three", "eel", "four", "koi", "lynx"
                ]),
            ),
            // Duplicates in the live list.
            (
                json!(["ant", "bee", "bee"]),
                json!(["cat"]),
                json!(["ant", "bee", "bee", "cat"]),
            ),
            (
                json!(["ant", "bee", "bee"]),
                json!(["bee"]),
                json!(["ant", "bee"]),
            ),
            (
                json!(["ant", "bee", "bee"]),
                json!(["ant"]),
                json!(["ant", "bee", "bee"]),
            ),
            (
                json!(["ant", "bee", "cat", "dog", "eel", "cat"]),
                json!(["one", "bee", "two", "eel", "dog"]),
                json!(["ant", "one", "bee", "cat", "two", "eel", "cat", "dog"]),
            ),
            (
                json!(["ant", "bee", "cat", "dog", "eel", "cat"]),
                json!(["one", "bee", "two", "cat", "eel", "dog"]),
                json!(["ant", "one", "bee", "two", "cat", "eel", "dog"]),
            ),
            (
                json!(["ant", "ant", "bee", "bee"]),
                json!(["bee", "cat", "dog"]),
                json!(["ant", "ant", "bee", "cat", "dog"]),
            ),
            (
                json!(["cat", "ant", "gnu", "fox", "cat", "ant"]),
                json!(["cat", "fox", "ant", "gnu"]),
                json!(["cat", "fox", "ant", "gnu"]),
            ),
        ];
        for (l, r, want) in cases {
            let got = merged(json!({"set": l.clone()}), json!({"set": r.clone()}));
            assert_eq!(got, json!({"set": want}), "live {l} applied {r}");
        }
        assert_eq!(
            merged(
                json!({"setNum": [1, 2, 3.5]}),
                json!({"setNum": [1.0, 2, 3]})
            ),
            json!({"setNum": [1.0, 2, 3.5, 3]})
        );
    }

    #[test]
    fn keyed_list_merge() {
        let cases: Vec<(Value, Value, Value)> = vec![
            (
                json!([{"key": "a", "id": 1, "value": {"x": "1"}}]),
                json!([{"key": "a", "id": 2, "value": {"x": "1"}}]),
                json!([{"key": "a", "id": 1, "value": {"x": "1"}}, {"key": "a", "id": 2, "value": {"x": "1"}}]),
            ),
            (
                json!([{"key": "a", "id": 1}, {"key": "b", "id": 1}]),
                json!([{"key": "a", "id": 1}, {"key": "a", "id": 2}]),
                json!([{"key": "a", "id": 1}, {"key": "b", "id": 1}, {"key": "a", "id": 2}]),
            ),
            (
                json!([{"key": "b", "id": 2}]),
                json!([{"key": "a", "id": 1}, {"key": "b", "id": 2}, {"key": "c", "id": 3}]),
                json!([{"key": "a", "id": 1}, {"key": "b", "id": 2}, {"key": "c", "id": 3}]),
            ),
            (
                json!([{"key": "a", "id": 1}, {"key": "b", "id": 2}, {"key": "c", "id": 3}]),
                json!([{"key": "c", "id": 3}, {"key": "a", "id": 1}]),
                json!([{"key": "b", "id": 2}, {"key": "c", "id": 3}, {"key": "a", "id": 1}]),
            ),
            // Duplicated live items collapse into the applied one.
            (
                json!([{"key": "a", "id": 1, "bv": true}, {"key": "b", "id": 2}, {"key": "a", "id": 1, "bv": false, "nv": 2}]),
                json!([{"key": "a", "id": 1, "nv": 3}, {"key": "c", "id": 3}, {"key": "b", "id": 2}]),
                json!([{"key": "a", "id": 1, "nv": 3}, {"key": "c", "id": 3}, {"key": "b", "id": 2}]),
            ),
            (
                json!([{"key": "a", "id": 1, "nv": 1}, {"key": "a", "id": 1, "nv": 2}]),
                json!([]),
                json!([{"key": "a", "id": 1, "nv": 1}, {"key": "a", "id": 1, "nv": 2}]),
            ),
            // Items merge field by field.
            (
                json!([{"key": "a", "id": 1, "bv": true, "value": {"x": "1"}}]),
                json!([{"key": "a", "id": 1, "nv": 5, "value": {"y": "2"}}]),
                json!([{"key": "a", "id": 1, "bv": true, "value": {"x": "1", "y": "2"}, "nv": 5}]),
            ),
        ];
        for (l, r, want) in cases {
            let got = merged(json!({"list": l.clone()}), json!({"list": r.clone()}));
            assert_eq!(got, json!({"list": want}), "live {l} applied {r}");
        }
    }

    #[test]
    fn atomic_values_are_replaced() {
        assert_eq!(
            merged(json!({"atomic": ["a", "b"]}), json!({"atomic": []})),
            json!({"atomic": []})
        );
        assert_eq!(
            merged(json!({"plain": ["a", "a"]}), json!({"plain": ["a"]})),
            json!({"plain": ["a"]})
        );
        assert_eq!(
            merged(
                json!({"atomicMap": {"a": "1"}}),
                json!({"atomicMap": {"b": "2"}})
            ),
            json!({"atomicMap": {"b": "2"}})
        );
        assert_eq!(
            merged(json!({"s": "x", "b": true}), json!({"s": "y"})),
            json!({"s": "y", "b": true})
        );
        assert_eq!(
            merged(json!({"struct": {"key": "a"}}), json!({"struct": "scalar"})),
            json!({"struct": "scalar"})
        );
        assert_eq!(merged(json!({"s": "x"}), json!({"s": null})), json!({}));
    }

    #[test]
    fn applied_list_errors_name_the_path_and_element() {
        with_root(|s| {
            let bad = json!({"list": [{"key": "a", "id": 1}, {"value": {}}]});
            let err = validate(&bad, Some(s)).unwrap_err();
            assert_eq!(
                err,
                ".list: element 1: associative list with keys has an element that omits all key fields [\"key\" \"id\"] (and doesn't have default values for any key fields)"
            );
            let err = validate(&json!({"set": [{"a": 1}]}), Some(s)).unwrap_err();
            assert_eq!(
                err,
                ".set: element 0: associative list without keys has an element that's a map type"
            );
            let err = validate(&json!({"set": ["a", "a"]}), Some(s)).unwrap_err();
            assert_eq!(err, ".set: duplicate entries for key [=\"a\"]");
            let err = validate(&json!({"list": [null]}), Some(s)).unwrap_err();
            assert!(err.contains("may not have a null element"), "{err}");
            // A live list that cannot be keyed is treated as atomic rather than failing.
            assert!(
                field_set(&json!({"set": [{"a": 1}]}), Some(s), Mode::Lenient)
                    .unwrap()
                    .has(&[PathElement::Field("set".into())])
            );
        });
    }

    #[test]
    fn comparison_reports_added_modified_removed() {
        with_root(|s| {
            let l = json!({"s": "x", "b": true, "set": ["a", "b"], "list": [{"key": "a", "id": 1, "nv": 1}],
                "atomic": ["q"], "struct": {"key": "k"}});
            let r = json!({"s": "y", "set": ["a", "c"], "list": [{"key": "a", "id": 1, "nv": 2}, {"key": "b", "id": 1}],
                "atomic": ["q", "r"], "struct": {"key": "k"}, "value": {"new": "1"}});
            let c = compare(&l, &r, Some(s));
            let f = |n: &str| PathElement::Field(n.into());
            let key =
                |k: &str| PathElement::Key(vec![("id".into(), json!(1)), ("key".into(), json!(k))]);
            assert!(c.modified.has(&[f("s")]));
            assert!(c.modified.has(&[f("atomic")]));
            assert!(c.modified.has(&[f("list"), key("a"), f("nv")]));
            assert!(c.removed.has(&[f("b")]));
            assert!(c.removed.has(&[f("set"), PathElement::Value(json!("b"))]));
            assert!(c.added.has(&[f("set"), PathElement::Value(json!("c"))]));
            assert!(c.added.has(&[f("list"), key("b")]));
            assert!(c.added.has(&[f("list"), key("b"), f("key")]));
            assert!(c.added.has(&[f("value")]));
            assert!(c.added.has(&[f("value"), f("new")]));
            assert!(!c.modified.has(&[f("struct"), f("key")]));
            let same = compare(&l, &l, Some(s));
            assert!(same.added.is_empty() && same.modified.is_empty() && same.removed.is_empty());
            // Numbers compare by value.
            assert!(
                compare(&json!({"s": 1}), &json!({"s": 1.0}), Some(s))
                    .modified
                    .is_empty()
            );
        });
    }

    #[test]
    fn removing_items() {
        with_root(|s| {
            let f = |n: &str| PathElement::Field(n.into());
            let v = json!({"s": "x", "set": ["a", "b"], "list": [{"key": "a", "id": 1, "nv": 1, "bv": true}], "struct": {"key": "k"}});
            let mut set = FieldSet::new();
            set.insert(&[f("s")]);
            set.insert(&[f("set"), PathElement::Value(json!("a"))]);
            set.insert(&[
                f("list"),
                PathElement::Key(vec![("id".into(), json!(1)), ("key".into(), json!("a"))]),
                f("nv"),
            ]);
            set.insert(&[f("struct"), f("key")]);
            let out = remove_items(&v, &set, Some(s)).unwrap();
            assert_eq!(
                out,
                json!({"set": ["b"], "list": [{"key": "a", "id": 1, "bv": true}]})
            );
        });
    }

    #[test]
    fn named_fields_become_members() {
        with_root(|s| {
            let f = |n: &str| PathElement::Field(n.into());
            let mut set = FieldSet::new();
            set.insert(&[f("struct"), f("value"), f("x")]);
            let out = ensure_named_fields_are_members(&set, Some(s));
            assert!(out.has(&[f("struct")]));
            assert!(out.has(&[f("struct"), f("value")]));
            // Map keys are not struct fields.
            assert!(!out.has(&[f("struct"), f("value"), f("y")]));
            assert!(out.has(&[f("struct"), f("value"), f("x")]));
        });
    }
}
