//! Patch metadata: where in an object tree lists merge by key, maps are replaced, and so on.
//!
//! The algorithms walk the object and the schema together; a position the schema does not
//! describe (`None` from a lookup) behaves like [`NoSchema`], exactly as upstream treats fields
//! without struct tags: maps merge, lists are replaced whole.

use serde_json::{Map, Value};

/// Patch metadata for one position in an object tree.
///
/// A position is a field (or list element, or map value). The extensions describe how *that*
/// field is patched: Kubernetes puts `x-kubernetes-patch-strategy: merge` on the `containers`
/// property, and the element schema (`Container`) is reached through [`PatchSchema::items`].
pub trait PatchSchema: Sized {
    /// Schema of the named property of this object.
    fn property(&self, name: &str) -> Option<Self>;
    /// Schema of this list's elements.
    fn items(&self) -> Option<Self>;
    /// Schema of this map's values when it is a string-keyed map (`additionalProperties`).
    fn additional_properties(&self) -> Option<Self>;
    /// `x-kubernetes-patch-strategy` here: "merge", "replace", "retainKeys", "merge,retainKeys".
    fn patch_strategy(&self) -> Option<&str>;
    /// `x-kubernetes-patch-merge-key` here.
    fn patch_merge_key(&self) -> Option<&str>;
    /// `x-kubernetes-list-type` here: "atomic", "set" or "map" (server-side apply).
    fn list_type(&self) -> Option<&str> {
        None
    }
    /// `x-kubernetes-list-map-keys` here (server-side apply).
    fn list_map_keys(&self) -> Vec<String> {
        Vec::new()
    }
    /// `x-kubernetes-map-type` here: "atomic" or "granular" (server-side apply).
    fn map_type(&self) -> Option<&str> {
        None
    }
    /// The schema's `default` here; server-side apply uses it for list-map key fields the
    /// object omits (a port's `protocol` defaults to "TCP").
    fn default_value(&self) -> Option<&serde_json::Value> {
        None
    }

    /// Schema of a map entry: a declared property, else the map's value schema.
    fn child(&self, name: &str) -> Option<Self> {
        self.property(name).or_else(|| self.additional_properties())
    }
}

/// A schema that knows nothing: maps merge, lists are replaced atomically.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoSchema;

impl PatchSchema for NoSchema {
    fn property(&self, _: &str) -> Option<Self> {
        None
    }
    fn items(&self) -> Option<Self> {
        None
    }
    fn additional_properties(&self) -> Option<Self> {
        None
    }
    fn patch_strategy(&self) -> Option<&str> {
        None
    }
    fn patch_merge_key(&self) -> Option<&str> {
        None
    }
}

/// [`PatchSchema`] over a served OpenAPI document (v3 `components/schemas` or v2 `definitions`).
///
/// A position is the schema object as written at that place, which may be a bare `$ref` or
/// Kubernetes' v3 wrapper `{"allOf":[{"$ref":...}], "x-kubernetes-...": ...}`. Extensions are
/// read from the wrapper first and then along the reference chain, because Kubernetes puts
/// field-level extensions on the property and type-level ones (`x-kubernetes-map-type`) on the
/// referenced definition.
#[derive(Debug, Clone, Copy)]
pub struct OpenApiSchema<'a> {
    doc: &'a Value,
    /// `components/schemas` (v3) and `definitions` (v2): references resolve with one lookup
    /// instead of walking a JSON pointer from the document root.
    schemas: Table<'a>,
    definitions: Table<'a>,
    /// The schema objects describing this position (see [`OpenApiSchema::chain`]), resolved
    /// once when the position is reached: every question asked of a position reads them, and a
    /// walk over an object asks several per field.
    chain: Chain<'a>,
}

/// A table of named schemas in the document, if it has one.
type Table<'a> = Option<&'a Map<String, Value>>;

/// Most chains are a property and the definition it refers to; longer ones spill to
/// resolving on every question.
const INLINE_CHAIN: usize = 6;

#[derive(Debug, Clone, Copy)]
struct Chain<'a> {
    nodes: [&'a Value; INLINE_CHAIN],
    len: usize,
    /// The chain did not fit: resolve it from `nodes[0]` each time.
    spilled: bool,
}

/// Stands in for "any value" (`additionalProperties: true`): no properties, no extensions.
static ANY: Value = Value::Null;

/// Bounds `$ref`/`allOf` chains so a cyclic or hostile document cannot loop forever.
const MAX_CHAIN: usize = 16;

impl<'a> OpenApiSchema<'a> {
    /// The schema of the named definition, looked up in `components/schemas` (v3) and then in
    /// `definitions` (v2). `None` when the document has no such definition.
    pub fn new(doc: &'a Value, definition: &str) -> Option<Self> {
        let (schemas, definitions) = Self::tables(doc);
        let node = schemas.and_then(|s| s.get(definition)).or_else(|| definitions.and_then(|d| d.get(definition)))?;
        Some(Self::from_parts(doc, schemas, definitions, node))
    }

    /// A position given directly by its schema object within `doc` (references in `node` are
    /// resolved against `doc`).
    pub fn from_node(doc: &'a Value, node: &'a Value) -> Self {
        let (schemas, definitions) = Self::tables(doc);
        Self::from_parts(doc, schemas, definitions, node)
    }

    fn tables(doc: &'a Value) -> (Table<'a>, Table<'a>) {
        let schemas = doc.get("components").and_then(|c| c.get("schemas")).and_then(Value::as_object);
        let definitions = doc.get("definitions").and_then(Value::as_object);
        (schemas, definitions)
    }

    fn from_parts(doc: &'a Value, schemas: Table<'a>, definitions: Table<'a>, node: &'a Value) -> Self {
        let mut schema = OpenApiSchema { doc, schemas, definitions, chain: Chain { nodes: [node; INLINE_CHAIN], len: 0, spilled: false } };
        let mut chain = schema.chain;
        schema.collect_inline(node, 0, &mut chain);
        if chain.spilled {
            chain.nodes[0] = node;
        }
        schema.chain = chain;
        schema
    }

    /// [`OpenApiSchema::collect`] into the inline chain, giving up when it is full.
    fn collect_inline(&self, node: &'a Value, depth: usize, chain: &mut Chain<'a>) {
        if chain.spilled || depth > MAX_CHAIN {
            return;
        }
        if chain.len == INLINE_CHAIN {
            chain.spilled = true;
            return;
        }
        chain.nodes[chain.len] = node;
        chain.len += 1;
        if let Some(target) = node.get("$ref").and_then(Value::as_str).and_then(|r| self.resolve(r)) {
            self.collect_inline(target, depth + 1, chain);
        }
        if let Some(all) = node.get("allOf").and_then(Value::as_array) {
            for member in all {
                self.collect_inline(member, depth + 1, chain);
            }
        }
    }

    /// The schema objects that describe this position, outermost first: the node itself, then
    /// what its `$ref` points at, and the members of `allOf`, depth-first.
    fn for_each_in_chain<T>(&self, mut f: impl FnMut(&'a Value) -> Option<T>) -> Option<T> {
        if self.chain.spilled {
            let mut all = Vec::new();
            self.collect(self.chain.nodes[0], 0, &mut all);
            return all.into_iter().find_map(f);
        }
        self.chain.nodes[..self.chain.len].iter().find_map(|n| f(n))
    }

    fn collect(&self, node: &'a Value, depth: usize, out: &mut Vec<&'a Value>) {
        if depth > MAX_CHAIN || out.len() > 4 * MAX_CHAIN {
            return;
        }
        out.push(node);
        if let Some(target) = node.get("$ref").and_then(Value::as_str).and_then(|r| self.resolve(r)) {
            self.collect(target, depth + 1, out);
        }
        if let Some(all) = node.get("allOf").and_then(Value::as_array) {
            for member in all {
                self.collect(member, depth + 1, out);
            }
        }
    }

    fn resolve(&self, reference: &str) -> Option<&'a Value> {
        if let Some(name) = reference.strip_prefix("#/components/schemas/")
            && !name.contains(['/', '~'])
        {
            return self.schemas?.get(name);
        }
        if let Some(name) = reference.strip_prefix("#/definitions/")
            && !name.contains(['/', '~'])
        {
            return self.definitions?.get(name);
        }
        // Any other JSON pointer into the document.
        let pointer = reference.strip_prefix('#')?;
        self.doc.pointer(pointer)
    }

    fn first(&self, f: impl Fn(&'a Value) -> Option<&'a Value>) -> Option<&'a Value> {
        self.for_each_in_chain(f)
    }

    fn extension(&self, name: &str) -> Option<&'a Value> {
        self.first(|n| n.get(name))
    }

    fn at(&self, node: &'a Value) -> Self {
        Self::from_parts(self.doc, self.schemas, self.definitions, node)
    }
}

impl PatchSchema for OpenApiSchema<'_> {
    fn property(&self, name: &str) -> Option<Self> {
        self.first(|n| n.get("properties").and_then(|p| p.get(name)))
            .map(|n| self.at(n))
    }

    fn items(&self) -> Option<Self> {
        self.first(|n| n.get("items")).map(|n| self.at(n))
    }

    fn additional_properties(&self) -> Option<Self> {
        match self.first(|n| n.get("additionalProperties"))? {
            v @ Value::Object(_) => Some(self.at(v)),
            Value::Bool(true) => Some(self.at(&ANY)),
            _ => None,
        }
    }

    fn patch_strategy(&self) -> Option<&str> {
        self.extension("x-kubernetes-patch-strategy")
            .and_then(Value::as_str)
    }

    fn patch_merge_key(&self) -> Option<&str> {
        self.extension("x-kubernetes-patch-merge-key")
            .and_then(Value::as_str)
    }

    fn list_type(&self) -> Option<&str> {
        self.extension("x-kubernetes-list-type")
            .and_then(Value::as_str)
    }

    fn list_map_keys(&self) -> Vec<String> {
        self.extension("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|keys| {
                keys.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn map_type(&self) -> Option<&str> {
        self.extension("x-kubernetes-map-type")
            .and_then(Value::as_str)
    }

    fn default_value(&self) -> Option<&Value> {
        self.extension("default")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v3_doc() -> Value {
        json!({"components": {"schemas": {
            "Pod": {"type": "object", "properties": {
                "metadata": {"allOf": [{"$ref": "#/components/schemas/Meta"}], "default": {}},
                "spec": {"allOf": [{"$ref": "#/components/schemas/PodSpec"}]}
            }},
            "Meta": {"type": "object", "properties": {
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "finalizers": {"type": "array", "items": {"type": "string"},
                    "x-kubernetes-patch-strategy": "merge", "x-kubernetes-list-type": "set"}
            }},
            "PodSpec": {"type": "object", "properties": {
                "containers": {"type": "array",
                    "items": {"allOf": [{"$ref": "#/components/schemas/Container"}], "default": {}},
                    "x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": "name",
                    "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
                "selector": {"allOf": [{"$ref": "#/components/schemas/Selector"}]}
            }},
            "Container": {"type": "object", "properties": {"name": {"type": "string"}}},
            "Selector": {"type": "object", "x-kubernetes-map-type": "atomic"}
        }}})
    }

    #[test]
    fn v3_wrapped_refs_and_extensions() {
        let doc = v3_doc();
        let pod = OpenApiSchema::new(&doc, "Pod").expect("Pod");
        let spec = pod.property("spec").expect("spec");
        let containers = spec.property("containers").expect("containers");
        assert_eq!(containers.patch_strategy(), Some("merge"));
        assert_eq!(containers.patch_merge_key(), Some("name"));
        assert_eq!(containers.list_type(), Some("map"));
        assert_eq!(containers.list_map_keys(), vec!["name".to_string()]);
        let container = containers.items().expect("items");
        assert!(container.property("name").is_some());
        assert!(container.property("nope").is_none());
        assert_eq!(container.patch_strategy(), None);
        let selector = spec.property("selector").expect("selector");
        assert_eq!(selector.map_type(), Some("atomic"));
        let labels = pod
            .property("metadata")
            .and_then(|m| m.property("labels"))
            .expect("labels");
        assert!(labels.additional_properties().is_some());
        assert!(labels.child("app").is_some());
        let fin = pod
            .property("metadata")
            .and_then(|m| m.property("finalizers"))
            .expect("fin");
        assert_eq!(fin.list_type(), Some("set"));
    }

    #[test]
    fn v2_definitions() {
        let doc = json!({"definitions": {
            "D": {"properties": {"spec": {"$ref": "#/definitions/S"}}},
            "S": {"properties": {"ports": {"type": "array", "items": {"$ref": "#/definitions/P"},
                "x-kubernetes-patch-merge-key": "containerPort",
                "x-kubernetes-patch-strategy": "merge"}}},
            "P": {"properties": {"containerPort": {"type": "integer"}}}
        }});
        let d = OpenApiSchema::new(&doc, "D").expect("D");
        let ports = d
            .property("spec")
            .and_then(|s| s.property("ports"))
            .expect("ports");
        assert_eq!(ports.patch_merge_key(), Some("containerPort"));
        assert!(
            ports
                .items()
                .and_then(|p| p.property("containerPort"))
                .is_some()
        );
        assert!(OpenApiSchema::new(&doc, "Missing").is_none());
    }

    #[test]
    fn cyclic_refs_terminate() {
        let doc = json!({"definitions": {"A": {"$ref": "#/definitions/A"}}});
        let a = OpenApiSchema::new(&doc, "A").expect("A");
        assert!(a.property("x").is_none());
        assert!(a.patch_strategy().is_none());
    }

    #[test]
    fn additional_properties_true_is_schemaless() {
        let doc = json!({"definitions": {"M": {"additionalProperties": true}}});
        let m = OpenApiSchema::new(&doc, "M").expect("M");
        let v = m.child("anything").expect("value schema");
        assert!(v.patch_strategy().is_none());
        assert!(v.property("x").is_none());
    }
}
