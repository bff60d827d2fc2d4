//! Whether serializing a value with `serde_json::to_value` would give a JSON value equal to one
//! already at hand, answered without building it. Writes mostly send objects already in their
//! typed form; checking that is several times cheaper than serializing a second copy (and
//! dropping the first).
//!
//! The answer is exact: any doubt (a shape serde_json's value serializer treats specially, a
//! number of another kind) answers "no", and the caller serializes as before.

use serde::ser::{self, Impossible, Serialize};
use serde_json::{Map, Number, Value};

/// True when `serde_json::to_value(value)` would equal `json`.
pub fn serializes_as<T: Serialize + ?Sized>(value: &T, json: &Value) -> bool {
    value.serialize(Expect(json)).is_ok()
}

/// The only error: the serialized value would differ.
#[derive(Debug)]
pub struct Differs;

impl std::fmt::Display for Differs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the serialized value differs")
    }
}

impl std::error::Error for Differs {}

impl ser::Error for Differs {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Differs
    }
}

fn check(ok: bool) -> Result<(), Differs> {
    if ok { Ok(()) } else { Err(Differs) }
}

/// serde_json serializes these names as something other than a struct (raw JSON, arbitrary
/// precision numbers): never claim to know what they become.
fn special_name(name: &str) -> bool {
    name.starts_with("$serde_json::private::")
}

fn is_integer(n: &Number) -> bool {
    n.is_i64() || n.is_u64()
}

/// Serializes into a comparison with the expected value.
struct Expect<'a>(&'a Value);

impl<'a> ser::Serializer for Expect<'a> {
    type Ok = ();
    type Error = Differs;
    type SerializeSeq = ExpectSeq<'a>;
    type SerializeTuple = ExpectSeq<'a>;
    type SerializeTupleStruct = ExpectSeq<'a>;
    type SerializeTupleVariant = ExpectSeq<'a>;
    type SerializeMap = ExpectMap<'a>;
    type SerializeStruct = ExpectMap<'a>;
    type SerializeStructVariant = ExpectMap<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Differs> {
        check(self.0.as_bool() == Some(v))
    }
    fn serialize_i8(self, v: i8) -> Result<(), Differs> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Differs> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Differs> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Differs> {
        check(matches!(self.0, Value::Number(n) if is_integer(n) && n.as_i64() == Some(v)))
    }
    fn serialize_i128(self, v: i128) -> Result<(), Differs> {
        match i64::try_from(v) {
            Ok(v) => self.serialize_i64(v),
            Err(_) => match u64::try_from(v) {
                Ok(v) => self.serialize_u64(v),
                Err(_) => Err(Differs),
            },
        }
    }
    fn serialize_u8(self, v: u8) -> Result<(), Differs> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Differs> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Differs> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Differs> {
        check(matches!(self.0, Value::Number(n) if is_integer(n) && n.as_u64() == Some(v)))
    }
    fn serialize_u128(self, v: u128) -> Result<(), Differs> {
        u64::try_from(v).map_err(|_| Differs).and_then(|v| self.serialize_u64(v))
    }
    fn serialize_f32(self, v: f32) -> Result<(), Differs> {
        check(*self.0 == Value::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Differs> {
        check(*self.0 == Value::from(v))
    }
    fn serialize_char(self, v: char) -> Result<(), Differs> {
        let mut buf = [0u8; 4];
        self.serialize_str(v.encode_utf8(&mut buf))
    }
    fn serialize_str(self, v: &str) -> Result<(), Differs> {
        check(self.0.as_str() == Some(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Differs> {
        let Value::Array(items) = self.0 else { return Err(Differs) };
        check(items.len() == v.len() && items.iter().zip(v).all(|(item, b)| item.as_u64() == Some(u64::from(*b)) && item.is_u64()))
    }
    fn serialize_none(self) -> Result<(), Differs> {
        check(self.0.is_null())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Differs> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Differs> {
        check(self.0.is_null())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Differs> {
        check(self.0.is_null())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<(), Differs> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, name: &'static str, value: &T) -> Result<(), Differs> {
        if special_name(name) {
            return Err(Differs);
        }
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(self, _: &'static str, _: u32, variant: &'static str, value: &T) -> Result<(), Differs> {
        value.serialize(Expect(single_entry(self.0, variant)?))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<ExpectSeq<'a>, Differs> {
        match self.0 {
            Value::Array(items) => Ok(ExpectSeq { items, next: 0 }),
            _ => Err(Differs),
        }
    }
    fn serialize_tuple(self, len: usize) -> Result<ExpectSeq<'a>, Differs> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, name: &'static str, len: usize) -> Result<ExpectSeq<'a>, Differs> {
        if special_name(name) {
            return Err(Differs);
        }
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, variant: &'static str, len: usize) -> Result<ExpectSeq<'a>, Differs> {
        Expect(single_entry(self.0, variant)?).serialize_seq(Some(len))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<ExpectMap<'a>, Differs> {
        match self.0 {
            Value::Object(map) => Ok(ExpectMap { map, seen: 0, key: None }),
            _ => Err(Differs),
        }
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<ExpectMap<'a>, Differs> {
        if special_name(name) {
            return Err(Differs);
        }
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(self, _: &'static str, _: u32, variant: &'static str, len: usize) -> Result<ExpectMap<'a>, Differs> {
        Expect(single_entry(self.0, variant)?).serialize_map(Some(len))
    }
}

/// An enum variant with data serializes as `{variant: data}`.
fn single_entry<'a>(value: &'a Value, variant: &str) -> Result<&'a Value, Differs> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get(variant).ok_or(Differs),
        _ => Err(Differs),
    }
}

struct ExpectSeq<'a> {
    items: &'a [Value],
    next: usize,
}

impl ExpectSeq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Differs> {
        let item = self.items.get(self.next).ok_or(Differs)?;
        self.next += 1;
        value.serialize(Expect(item))
    }

    fn finish(self) -> Result<(), Differs> {
        check(self.next == self.items.len())
    }
}

/// serde's four sequence shapes are one here: elements in order, then none left over.
macro_rules! expect_seq {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for ExpectSeq<'_> {
            type Ok = ();
            type Error = Differs;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Differs> {
                self.element(value)
            }
            fn end(self) -> Result<(), Differs> {
                self.finish()
            }
        }
    )*};
}

expect_seq!(SerializeSeq::serialize_element, SerializeTuple::serialize_element, SerializeTupleStruct::serialize_field, SerializeTupleVariant::serialize_field);

/// Each serialized entry must be in the map with an equal value; at the end, the entries seen
/// must be all of the map's (a key serialized twice would be counted twice and so fail).
struct ExpectMap<'a> {
    map: &'a Map<String, Value>,
    seen: usize,
    key: Option<String>,
}

impl ExpectMap<'_> {
    fn entry<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Differs> {
        let expected = self.map.get(key).ok_or(Differs)?;
        self.seen += 1;
        value.serialize(Expect(expected))
    }

    fn finish(self) -> Result<(), Differs> {
        check(self.seen == self.map.len())
    }
}

impl ser::SerializeMap for ExpectMap<'_> {
    type Ok = ();
    type Error = Differs;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Differs> {
        self.key = Some(key.serialize(MapKey)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Differs> {
        let key = self.key.take().ok_or(Differs)?;
        self.entry(&key, value)
    }
    fn end(self) -> Result<(), Differs> {
        self.finish()
    }
}

/// A struct and a struct variant's fields are entries with known names.
macro_rules! expect_struct {
    ($($trait:ident),*) => {$(
        impl ser::$trait for ExpectMap<'_> {
            type Ok = ();
            type Error = Differs;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Differs> {
                self.entry(key, value)
            }
            fn end(self) -> Result<(), Differs> {
                self.finish()
            }
        }
    )*};
}

expect_struct!(SerializeStruct, SerializeStructVariant);

/// A map key as serde_json writes it: strings as they are, numbers, booleans and characters as
/// their text; anything else is not a valid key (and `to_value` would have failed).
struct MapKey;

impl ser::Serializer for MapKey {
    type Ok = String;
    type Error = Differs;
    type SerializeSeq = Impossible<String, Differs>;
    type SerializeTuple = Impossible<String, Differs>;
    type SerializeTupleStruct = Impossible<String, Differs>;
    type SerializeTupleVariant = Impossible<String, Differs>;
    type SerializeMap = Impossible<String, Differs>;
    type SerializeStruct = Impossible<String, Differs>;
    type SerializeStructVariant = Impossible<String, Differs>;

    fn serialize_bool(self, v: bool) -> Result<String, Differs> {
        Ok(v.to_string())
    }
    fn serialize_i8(self, v: i8) -> Result<String, Differs> {
        Ok(v.to_string())
    }
    fn serialize_i16(self, v: i16) -> Result<String, Differs> {
        Ok(v.to_string())
    }
    fn serialize_i32(self, v: i32) -> Result<String, Differs> {
        Ok(v.to_string())
    }
    fn serialize_i64(self, v: i64) -> Result<String, Differs> {
        Ok(v.to_string())
    }
    fn serialize_u8(self, v: u8) -> Result<String, Differs> {
        Ok(v.to_string())
    }
    fn serialize_u16(self, v: u16) -> Result<String, Differs> {
        Ok(v.to_string())
    }
    fn serialize_u32(self, v: u32) -> Result<String, Differs> {
        Ok(v.to_string())
    }
    fn serialize_u64(self, v: u64) -> Result<String, Differs> {
        Ok(v.to_string())
    }
    fn serialize_f32(self, _: f32) -> Result<String, Differs> {
        Err(Differs)
    }
    fn serialize_f64(self, _: f64) -> Result<String, Differs> {
        Err(Differs)
    }
    fn serialize_char(self, v: char) -> Result<String, Differs> {
        Ok(v.to_string())
    }
    fn serialize_str(self, v: &str) -> Result<String, Differs> {
        Ok(v.to_string())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<String, Differs> {
        Err(Differs)
    }
    fn serialize_none(self) -> Result<String, Differs> {
        Err(Differs)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, Differs> {
        Err(Differs)
    }
    fn serialize_unit(self) -> Result<String, Differs> {
        Err(Differs)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<String, Differs> {
        Err(Differs)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<String, Differs> {
        Ok(variant.to_string())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<String, Differs> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(self, _: &'static str, _: u32, _: &'static str, _: &T) -> Result<String, Differs> {
        Err(Differs)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Differs> {
        Err(Differs)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Differs> {
        Err(Differs)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Differs> {
        Err(Differs)
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self::SerializeTupleVariant, Differs> {
        Err(Differs)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Differs> {
        Err(Differs)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Differs> {
        Err(Differs)
    }
    fn serialize_struct_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Self::SerializeStructVariant, Differs> {
        Err(Differs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    /// The claim checked directly: `serializes_as` answers yes exactly when `to_value` equals.
    fn agrees<T: Serialize>(value: &T, json: &Value) -> bool {
        let answer = serializes_as(value, json);
        assert_eq!(answer, serde_json::to_value(value).ok().as_ref() == Some(json), "{json}");
        answer
    }

    #[test]
    fn a_typed_object_serializes_as_its_own_json_and_not_as_a_different_one() {
        let json = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "1"}, "creationTimestamp": "2024-01-02T03:04:05Z"},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}],
                     "resources": {"requests": {"cpu": "10m"}}, "livenessProbe": {"httpGet": {"port": "http", "path": "/"}}}],
                     "activeDeadlineSeconds": 30},
            "status": {"phase": "Running"}
        });
        let pod: Pod = serde_json::from_value(json.clone()).expect("a pod");
        assert!(agrees(&pod, &json));
        for changed in [
            // A field the type does not have (at the top and deep down), a null the type leaves
            // out, times not in their canonical form.
            json!({"metadata": {"name": "p", "bogus": 1}}),
            json!({"spec": {"containers": [{"name": "c", "imagee": "typo"}]}}),
            json!({"metadata": {"name": "p", "labels": null}}),
            json!({"metadata": {"name": "p", "creationTimestamp": "2024-01-02T05:04:05+02:00"}}),
            json!({"metadata": {"name": "p", "creationTimestamp": "2024-01-02T03:04:05.5Z"}}),
        ] {
            let mut input = json.clone();
            merge(&mut input, &changed);
            let pod: Pod = serde_json::from_value(input.clone()).expect("still a pod");
            assert!(!agrees(&pod, &input), "{input}");
        }
        // Numbers and strings: an integer matches an integer of any width, not a float.
        assert!(agrees(&5i32, &json!(5)));
        assert!(!agrees(&5i32, &json!(5.0)));
        assert!(agrees(&1.5f64, &json!(1.5)));
        assert!(!agrees(&1.0f64, &json!(1)));
        assert!(agrees(&Some("x"), &json!("x")));
        assert!(agrees(&None::<String>, &Value::Null));
        let map: std::collections::BTreeMap<i32, bool> = [(1, true)].into();
        assert!(agrees(&map, &json!({"1": true})));
        assert!(!agrees(&map, &json!({"1": true, "2": false})));
    }

    fn merge(target: &mut Value, patch: &Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    match t.get_mut(k) {
                        Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                        _ => {
                            t.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            (t, p) => *t = p.clone(),
        }
    }
}
