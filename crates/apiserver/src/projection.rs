//! Partial decoding of stored objects: only the listed paths become a `Value`, the rest of the
//! bytes are scanned and skipped.
//!
//! Selectors read a handful of fields (labels, name, namespace, a pod's node or phase), yet a
//! full decode builds a map node and a string for every field of the object, managedFields
//! included. Every filtered watcher of a busy resource (the scheduler's and the nodes' pod
//! watches) paid that for each change, twice when the previous state mattered.

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A tree of dotted paths; a node where a path ends keeps its whole subtree.
#[derive(Debug, Default)]
pub struct Paths {
    whole: bool,
    children: Vec<(String, Paths)>,
}

impl Paths {
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        let mut root = Paths::default();
        for path in paths {
            let mut node = &mut root;
            for segment in path.split('.').filter(|s| !s.is_empty()) {
                if node.whole {
                    break;
                }
                let index = match node.children.iter().position(|(k, _)| k == segment) {
                    Some(i) => i,
                    None => {
                        node.children.push((segment.to_string(), Paths::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[index].1;
            }
            // A shorter path wins: the whole subtree covers any longer one.
            node.whole = true;
            node.children.clear();
        }
        root
    }

    fn child(&self, key: &str) -> Option<&Paths> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, p)| p)
    }
}

/// Decodes `raw`, keeping only `paths`. Values on the way to a path that are not objects are
/// dropped, as if the path were absent.
pub fn project(raw: &[u8], paths: &Paths) -> serde_json::Result<Value> {
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let value = Projection(paths).deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

struct Projection<'p>(&'p Paths);

impl<'de> DeserializeSeed<'de> for Projection<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.0.whole {
            return Value::deserialize(deserializer);
        }
        deserializer.deserialize_any(self)
    }
}

/// A map key, borrowed from the input unless it had escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for Projection<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = Map::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match self.0.child(&key) {
                Some(paths) => {
                    let value = map.next_value_seed(Projection(paths))?;
                    if !value.is_null() || paths.whole {
                        kept.insert(key.into_owned(), value);
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(kept))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_the_listed_paths() {
        let raw = serde_json::to_vec(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "labels": {"app": "x", "tier": "web"}, "managedFields": [{"manager": "m"}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}], "hostNetwork": true},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}], "conditions": []}
        }))
        .unwrap();
        let paths = Paths::new(["metadata.name", "metadata.labels", "spec.nodeName", "spec.hostNetwork", "status.podIPs", "status.nominatedNodeName"]);
        let projected = project(&raw, &paths).unwrap();
        assert_eq!(
            projected,
            json!({
                "metadata": {"name": "p", "labels": {"app": "x", "tier": "web"}},
                "spec": {"nodeName": "n1", "hostNetwork": true},
                "status": {"podIPs": [{"ip": "10.0.0.1"}]}
            })
        );
    }

    #[test]
    fn a_shorter_path_keeps_the_whole_subtree_and_odd_shapes_are_dropped() {
        let paths = Paths::new(["source.component", "source", "spec.x"]);
        let projected = project(br#"{"source":{"component":"c","host":"h"},"spec":"not an object","escaped\"key":1}"#, &paths).unwrap();
        assert_eq!(projected, json!({"source": {"component": "c", "host": "h"}}));
        let projected = project(br#"{"spec":{"x":null}}"#, &paths).unwrap();
        assert_eq!(projected, json!({"spec": {"x": null}}));
        assert!(project(b"{\"spec\":", &paths).is_err());
        assert!(project(b"{} trailing", &paths).is_err());
    }
}
