//! Field paths and field sets, and their `FieldsV1` wire form.
//!
//! A [`FieldSet`] is a trie: `members` are the path elements owned at this level, `children`
//! the subtrees below. In `FieldsV1` a member is `"f:name": {}`, a child is
//! `"f:name": {...}`, and a node that is both carries `".": {}`. Elements are kept sorted in
//! structured-merge-diff's order so the encoding is byte-for-byte what Kubernetes writes.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

/// One step of a path into an object.
#[derive(Debug, Clone)]
pub enum PathElement {
    /// A field of a map or struct: `f:name`.
    Field(String),
    /// An element of a list keyed by some of its fields (`x-kubernetes-list-type: map`),
    /// fields sorted by name: `k:{"name":"app"}`.
    Key(Vec<(String, Value)>),
    /// An element of a set (`x-kubernetes-list-type: set`): `v:"value"`.
    Value(Value),
    /// A list position; only read, never produced here: `i:0`.
    Index(usize),
}

impl PathElement {
    fn rank(&self) -> u8 {
        match self {
            PathElement::Field(_) => 0,
            PathElement::Key(_) => 1,
            PathElement::Value(_) => 2,
            PathElement::Index(_) => 3,
        }
    }

    /// The `FieldsV1` key for this element.
    pub fn to_fields_v1_key(&self) -> String {
        match self {
            PathElement::Field(name) => format!("f:{name}"),
            PathElement::Key(fields) => {
                let mut out = String::from("k:{");
                for (i, (name, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_go_json_string(name, &mut out);
                    out.push(':');
                    write_go_json(value, false, &mut out);
                }
                out.push('}');
                out
            }
            PathElement::Value(v) => {
                let mut out = String::from("v:");
                write_go_json(v, false, &mut out);
                out
            }
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses a `FieldsV1` key. `Ok(None)` for an unknown element type, which readers skip so
    /// that fields written by a newer server survive.
    pub fn from_fields_v1_key(key: &str) -> Result<Option<PathElement>, String> {
        let b = key.as_bytes();
        if b.len() < 2 {
            return Err(format!("key must be 2 characters long: {key}"));
        }
        if b[1] != b':' {
            return Err(format!("missing colon: {key}"));
        }
        let rest = &key[2..];
        Ok(Some(match b[0] {
            b'f' => PathElement::Field(rest.to_string()),
            b'v' => {
                PathElement::Value(serde_json::from_str(rest).map_err(|e| format!("{key}: {e}"))?)
            }
            b'k' => {
                let Value::Object(m) =
                    serde_json::from_str::<Value>(rest).map_err(|e| format!("{key}: {e}"))?
                else {
                    return Err(format!("{key}: key element must be a JSON object"));
                };
                let mut fields: Vec<(String, Value)> = m.into_iter().collect();
                fields.sort_by(|a, b| a.0.cmp(&b.0));
                PathElement::Key(fields)
            }
            b'i' => PathElement::Index(rest.parse().map_err(|e| format!("{key}: {e}"))?),
            _ => return Ok(None),
        }))
    }
}

impl Ord for PathElement {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (PathElement::Field(a), PathElement::Field(b)) => a.cmp(b),
            (PathElement::Key(a), PathElement::Key(b)) => cmp_fields(a, b),
            (PathElement::Value(a), PathElement::Value(b)) => cmp_values(a, b),
            (PathElement::Index(a), PathElement::Index(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for PathElement {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for PathElement {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for PathElement {}

/// Upstream's `PathElement.String()`: `.name`, `[name="app"]`, `[="x"]`, `[0]`.
impl fmt::Display for PathElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Field(name) => write!(f, ".{name}"),
            PathElement::Key(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("{k}={}", value_string(v)))
                    .collect();
                write!(f, "[{}]", parts.join(","))
            }
            PathElement::Value(v) => write!(f, "[={}]", value_string(v)),
            PathElement::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A path from the object root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Path(pub Vec<PathElement>);

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for pe in &self.0 {
            write!(f, "{pe}")?;
        }
        Ok(())
    }
}

/// structured-merge-diff's `value.ToString`, used in paths shown to users.
fn value_string(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}")),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(value_string).collect::<Vec<_>>().join(",")
        ),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", value_string(v)))
            .collect(),
    }
}

fn cmp_fields(a: &[(String, Value)], b: &[(String, Value)]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let c = x.0.cmp(&y.0).then_with(|| cmp_values(&x.1, &y.1));
        if c != Ordering::Equal {
            return c;
        }
    }
    a.len().cmp(&b.len())
}

/// structured-merge-diff's total order on values: numbers (compared numerically), strings,
/// booleans, lists, maps, null.
pub(crate) fn cmp_values(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::String(_) => 1,
            Value::Bool(_) => 2,
            Value::Array(_) => 3,
            Value::Object(_) => 4,
            Value::Null => 5,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => {
                let (x, y) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                x.partial_cmp(&y).unwrap_or(Ordering::Equal)
            }
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let c = cmp_values(p, q);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            let mut xs: Vec<(&String, &Value)> = x.iter().collect();
            let mut ys: Vec<(&String, &Value)> = y.iter().collect();
            xs.sort_by(|p, q| p.0.cmp(q.0));
            ys.sort_by(|p, q| p.0.cmp(q.0));
            for (p, q) in xs.iter().zip(&ys) {
                let c = p.0.cmp(q.0).then_with(|| cmp_values(p.1, q.1));
                if c != Ordering::Equal {
                    return c;
                }
            }
            xs.len().cmp(&ys.len())
        }
        (Value::Null, Value::Null) => Ordering::Equal,
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Deep equality where numbers compare by value (a stored 1 equals an applied 1.0).
pub(crate) fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => cmp_values(a, b) == Ordering::Equal,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() {
                return false;
            }
            // Two versions of one object almost always list their keys in the same order:
            // walking both side by side spares a hash lookup per key.
            let mut theirs = y.iter();
            for (k, v) in x {
                match theirs.next() {
                    Some((yk, w)) if yk == k => {
                        if !values_equal(v, w) {
                            return false;
                        }
                    }
                    _ => return x.iter().all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w))),
                }
            }
            true
        }
        _ => a == b,
    }
}

/// `map.get(key)`, trying the next entry of `cursor` first: when two maps list their keys in
/// the same order, walking them side by side finds each key without hashing it. Once out of
/// step the cursor is dropped and lookups hash, so no order costs more than hashing.
pub(crate) fn get_in_step<'a>(
    map: &'a Map<String, Value>,
    cursor: &mut Option<serde_json::map::Iter<'a>>,
    key: &str,
) -> Option<&'a Value> {
    if let Some(entries) = cursor {
        match entries.next() {
            Some((k, v)) if k == key => return Some(v),
            _ => *cursor = None,
        }
    }
    map.get(key)
}

/// A set of field paths: what one manager owns, or what changed between two objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    members: BTreeSet<PathElement>,
    children: BTreeMap<PathElement, FieldSet>,
}

impl FieldSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set holding the given paths.
    pub fn from_paths<'a>(paths: impl IntoIterator<Item = &'a [PathElement]>) -> Self {
        let mut s = FieldSet::new();
        for p in paths {
            s.insert(p);
        }
        s
    }

    /// True when the set holds no path.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    /// Adds a path; the empty path (the whole object) is never tracked.
    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            // Most inserts pass through a child that exists: look it up before paying for a
            // copy of its key.
            [first, rest @ ..] => match self.children.get_mut(first) {
                Some(child) => child.insert(rest),
                None => self.children.entry(first.clone()).or_default().insert(rest),
            },
        }
    }

    /// True when the exact path is a member.
    pub fn has(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.has(rest)),
        }
    }

    pub(crate) fn has_member(&self, pe: &PathElement) -> bool {
        self.members.contains(pe)
    }

    pub(crate) fn insert_member(&mut self, pe: PathElement) {
        self.members.insert(pe);
    }

    /// The subtree below `pe`, if any path continues through it.
    pub fn with_prefix(&self, pe: &PathElement) -> Option<&FieldSet> {
        self.children.get(pe)
    }

    pub(crate) fn children(&self) -> impl Iterator<Item = (&PathElement, &FieldSet)> {
        self.children.iter()
    }

    pub(crate) fn members(&self) -> impl Iterator<Item = &PathElement> {
        self.members.iter()
    }

    pub(crate) fn set_child(&mut self, pe: PathElement, child: FieldSet) {
        if child.is_empty() {
            self.children.remove(&pe);
        } else {
            self.children.insert(pe, child);
        }
    }

    /// Every path in the set: this level's members first, then each subtree in order.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect_paths(&mut Vec::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: &mut Vec<PathElement>, out: &mut Vec<Path>) {
        for m in &self.members {
            let mut p = prefix.clone();
            p.push(m.clone());
            out.push(Path(p));
        }
        for (pe, child) in &self.children {
            prefix.push(pe.clone());
            child.collect_paths(prefix, out);
            prefix.pop();
        }
    }

    /// Paths in either set.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.union_with(other);
        out
    }

    /// Adds every path of `other`, in place.
    pub fn union_with(&mut self, other: &FieldSet) {
        for pe in &other.members {
            if !self.members.contains(pe) {
                self.members.insert(pe.clone());
            }
        }
        for (pe, child) in &other.children {
            match self.children.get_mut(pe) {
                Some(mine) => mine.union_with(child),
                None => {
                    self.children.insert(pe.clone(), child.clone());
                }
            }
        }
    }

    /// Removes the exact paths of `other`, in place (as [`FieldSet::difference`]).
    pub fn remove_paths(&mut self, other: &FieldSet) {
        if !other.members.is_empty() {
            self.members.retain(|pe| !other.members.contains(pe));
        }
        for (pe, theirs) in &other.children {
            if let Some(mine) = self.children.get_mut(pe) {
                mine.remove_paths(theirs);
                if mine.is_empty() {
                    self.children.remove(pe);
                }
            }
        }
    }

    /// True when some path is in both sets; builds nothing.
    pub fn intersects(&self, other: &FieldSet) -> bool {
        let (small, large) = if self.members.len() <= other.members.len() { (&self.members, &other.members) } else { (&other.members, &self.members) };
        small.iter().any(|pe| large.contains(pe))
            || self.children.iter().any(|(pe, child)| other.children.get(pe).is_some_and(|theirs| child.intersects(theirs)))
    }

    /// Paths of `self` that are not in `other` (exact paths; a member of `other` does not
    /// remove what lies below it).
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            members: self.members.difference(&other.members).cloned().collect(),
            children: BTreeMap::new(),
        };
        for (pe, child) in &self.children {
            let diff = match other.children.get(pe) {
                Some(theirs) => child.difference(theirs),
                None => child.clone(),
            };
            if !diff.is_empty() {
                out.children.insert(pe.clone(), diff);
            }
        }
        out
    }

    /// Like [`FieldSet::difference`], but a member of `other` also removes everything below it.
    pub fn recursive_difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            members: self.members.difference(&other.members).cloned().collect(),
            children: BTreeMap::new(),
        };
        for (pe, child) in &self.children {
            if other.members.contains(pe) {
                continue;
            }
            let diff = match other.children.get(pe) {
                Some(theirs) => child.recursive_difference(theirs),
                None => child.clone(),
            };
            if !diff.is_empty() {
                out.children.insert(pe.clone(), diff);
            }
        }
        out
    }

    /// Paths in both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            members: self.members.intersection(&other.members).cloned().collect(),
            children: BTreeMap::new(),
        };
        for (pe, child) in &self.children {
            if let Some(theirs) = other.children.get(pe) {
                let both = child.intersection(theirs);
                if !both.is_empty() {
                    out.children.insert(pe.clone(), both);
                }
            }
        }
        out
    }

    /// The `FieldsV1` JSON form.
    pub fn to_fields_v1(&self) -> Value {
        Value::Object(self.emit(false))
    }

    fn emit(&self, include_self: bool) -> Map<String, Value> {
        let mut out = Map::new();
        if include_self && !self.is_empty() {
            out.insert(".".into(), Value::Object(Map::new()));
        }
        // Members and children interleave in element order; an element that is both is
        // written once, as a child marked with ".".
        let mut keys: BTreeSet<&PathElement> = self.members.iter().collect();
        keys.extend(self.children.keys());
        for pe in keys {
            let value = match self.children.get(pe) {
                Some(child) => Value::Object(child.emit(self.members.contains(pe))),
                None => Value::Object(Map::new()),
            };
            out.insert(pe.to_fields_v1_key(), value);
        }
        out
    }

    /// Parses the `FieldsV1` JSON form.
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, String> {
        let Value::Object(m) = v else {
            return Err("FieldsV1 must be a JSON object".into());
        };
        Ok(Self::read(m)?.0.unwrap_or_default())
    }

    /// Returns the subtree (if any) and whether the node itself is a member.
    fn read(m: &Map<String, Value>) -> Result<(Option<FieldSet>, bool), String> {
        let mut set: Option<FieldSet> = None;
        let mut is_member = false;
        for (key, value) in m {
            if key == "." {
                is_member = true;
                continue;
            }
            let Some(pe) = PathElement::from_fields_v1_key(key)? else {
                continue;
            };
            let Value::Object(inner) = value else {
                return Err(format!("value of {key} must be a JSON object"));
            };
            let (grandchildren, child_is_member) = Self::read(inner)?;
            let s = set.get_or_insert_with(FieldSet::new);
            if child_is_member {
                s.members.insert(pe.clone());
            }
            if let Some(g) = grandchildren {
                s.children.insert(pe, g);
            }
        }
        if set.is_none() {
            is_member = true;
        }
        Ok((set, is_member))
    }
}

/// Compact JSON as Go's `encoding/json` writes it: `<`, `>`, `&`, U+2028 and U+2029 escaped,
/// and optionally object keys sorted (Go sorts map keys).
pub(crate) fn write_go_json(v: &Value, sort_keys: bool, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_go_json_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json(item, sort_keys, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            if sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json_string(k, out);
                out.push(':');
                write_go_json(val, sort_keys, out);
            }
            out.push('}');
        }
    }
}

fn write_go_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(name: &str) -> PathElement {
        PathElement::Field(name.into())
    }

    fn k(name: &str, v: Value) -> PathElement {
        PathElement::Key(vec![(name.into(), v)])
    }

    #[test]
    fn equality_ignores_key_order_and_compares_numbers_by_value() {
        let a = json!({"x": 1, "y": {"p": [1, 2], "q": "s"}, "z": null});
        assert!(values_equal(&a, &json!({"x": 1.0, "y": {"p": [1, 2], "q": "s"}, "z": null})));
        assert!(values_equal(&a, &json!({"z": null, "y": {"q": "s", "p": [1, 2]}, "x": 1})));
        assert!(!values_equal(&a, &json!({"x": 1, "y": {"p": [2, 1], "q": "s"}, "z": null})));
        assert!(!values_equal(&a, &json!({"x": 1, "y": {"p": [1, 2], "q": "s"}, "w": null})));
        assert!(!values_equal(&a, &json!({"y": {"q": "s", "p": [1, 2]}, "x": 1, "w": null})));
    }

    #[test]
    fn lookups_in_step_fall_back_to_hashing() {
        let m = json!({"a": 1, "b": 2, "c": 3});
        let m = m.as_object().unwrap();
        let mut cursor = Some(m.iter());
        assert_eq!(get_in_step(m, &mut cursor, "a"), Some(&json!(1)));
        assert!(cursor.is_some());
        assert_eq!(get_in_step(m, &mut cursor, "c"), Some(&json!(3)));
        assert!(cursor.is_none());
        assert_eq!(get_in_step(m, &mut cursor, "b"), Some(&json!(2)));
        assert_eq!(get_in_step(m, &mut cursor, "nope"), None);
    }

    #[test]
    fn in_place_operations_agree_with_copying_ones() {
        let a = FieldSet::from_paths([
            &[f("spec"), f("replicas")][..],
            &[f("spec"), f("template"), f("labels")][..],
            &[f("spec")][..],
            &[f("status"), f("ready")][..],
            &[f("metadata"), f("labels"), f("app")][..],
        ]);
        let b = FieldSet::from_paths([
            &[f("spec"), f("replicas")][..],
            &[f("spec"), f("paused")][..],
            &[f("status"), f("ready")][..],
            &[f("kind")][..],
        ]);
        let disjoint = FieldSet::from_paths([&[f("metadata"), f("name")][..], &[f("spec"), f("template")][..]]);
        for (x, y) in [(&a, &b), (&b, &a), (&a, &disjoint), (&disjoint, &a), (&a, &a)] {
            let mut union = x.clone();
            union.union_with(y);
            assert_eq!(union, x.union(y));
            let mut rest = x.clone();
            rest.remove_paths(y);
            assert_eq!(rest, x.difference(y));
            assert_eq!(x.intersects(y), !x.intersection(y).is_empty());
        }
        assert!(!a.intersects(&disjoint));
        assert!(a.intersects(&b));
    }

    #[test]
    fn fields_v1_round_trip_with_self_markers() {
        let wire = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}}
                }}}
            }
        });
        let set = FieldSet::from_fields_v1(&wire).unwrap();
        assert!(set.has(&[f("spec"), f("replicas")]));
        assert!(set.has(&[f("metadata"), f("labels")]));
        assert!(set.has(&[f("metadata"), f("labels"), f("app")]));
        assert!(!set.has(&[f("metadata")]));
        let item = [
            f("spec"),
            f("template"),
            f("spec"),
            f("containers"),
            k("name", json!("app")),
        ];
        assert!(set.has(&item));
        assert_eq!(set.to_fields_v1(), wire);
        assert_eq!(
            serde_json::to_string(&set.to_fields_v1()).unwrap(),
            serde_json::to_string(&wire).unwrap()
        );
    }

    #[test]
    fn encoding_orders_like_upstream() {
        let mut s = FieldSet::new();
        s.insert(&[f("b")]);
        s.insert(&[f("a"), f("x")]);
        s.insert(&[PathElement::Value(json!("z"))]);
        s.insert(&[k("port", json!(80))]);
        s.insert(&[f("a")]);
        let text = serde_json::to_string(&s.to_fields_v1()).unwrap();
        assert_eq!(
            text,
            r#"{"f:a":{".":{},"f:x":{}},"f:b":{},"k:{\"port\":80}":{},"v:\"z\"":{}}"#
        );
    }

    #[test]
    fn key_elements_sort_their_fields_and_escape_like_go() {
        let pe = PathElement::from_fields_v1_key(r#"k:{"protocol":"TCP","containerPort":80}"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            pe.to_fields_v1_key(),
            r#"k:{"containerPort":80,"protocol":"TCP"}"#
        );
        assert_eq!(
            PathElement::Value(json!("a<b")).to_fields_v1_key(),
            r#"v:"a\u003cb""#
        );
    }

    #[test]
    fn malformed_and_unknown_keys() {
        assert!(FieldSet::from_fields_v1(&json!({"x": {}})).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"fx": {}})).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"f:a": 1})).is_err());
        assert!(FieldSet::from_fields_v1(&json!([])).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"k:[1]": {}})).is_err());
        let s = FieldSet::from_fields_v1(&json!({"z:future": {}, "f:a": {}})).unwrap();
        assert_eq!(s.paths().len(), 1);
        assert!(FieldSet::from_fields_v1(&json!({})).unwrap().is_empty());
    }

    #[test]
    fn path_display_matches_upstream() {
        let p = Path(vec![
            f("spec"),
            f("containers"),
            k("name", json!("app")),
            f("image"),
        ]);
        assert_eq!(p.to_string(), r#".spec.containers[name="app"].image"#);
        let p = Path(vec![
            f("metadata"),
            f("finalizers"),
            PathElement::Value(json!("a")),
        ]);
        assert_eq!(p.to_string(), r#".metadata.finalizers[="a"]"#);
        let two = PathElement::Key(vec![
            ("containerPort".into(), json!(80)),
            ("protocol".into(), json!("TCP")),
        ]);
        assert_eq!(two.to_string(), r#"[containerPort=80,protocol="TCP"]"#);
        assert_eq!(PathElement::Index(3).to_string(), "[3]");
    }

    #[test]
    fn set_algebra() {
        let a = FieldSet::from_paths([&[f("a"), f("x")][..], &[f("a"), f("y")], &[f("b")]]);
        let b = FieldSet::from_paths([&[f("a"), f("y")][..], &[f("c")]]);
        let u = a.union(&b);
        assert_eq!(u.paths().len(), 4);
        let d = a.difference(&b);
        assert_eq!(d, FieldSet::from_paths([&[f("a"), f("x")][..], &[f("b")]]));
        let i = a.intersection(&b);
        assert_eq!(i, FieldSet::from_paths([&[f("a"), f("y")][..]]));
        // A member removes its subtree only in the recursive difference.
        let top = FieldSet::from_paths([&[f("a")][..]]);
        assert_eq!(a.difference(&top), a);
        assert_eq!(
            a.recursive_difference(&top),
            FieldSet::from_paths([&[f("b")][..]])
        );
        assert!(a.difference(&a).is_empty());
    }

    #[test]
    fn numbers_compare_by_value() {
        assert_eq!(k("p", json!(80)), k("p", json!(80.0)));
        assert!(values_equal(
            &json!({"a": [1, 2.0]}),
            &json!({"a": [1.0, 2]})
        ));
        assert!(!values_equal(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert_eq!(cmp_values(&json!(1), &json!("a")), Ordering::Less);
        assert_eq!(cmp_values(&json!(null), &json!({})), Ordering::Greater);
    }
}
