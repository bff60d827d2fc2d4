//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) into the
//! JSON objects the rest of the server works on.
//!
//! client-go's typed clients (and so `kubectl create deployment|configmap|secret|...`, `kubectl
//! drain`, most operators) send bodies as protobuf with no JSON fallback. Berth stores JSON, so
//! it decodes the wire format generically, driven by a field table generated from the upstream
//! `.proto` files and Go struct tags (`tools/protobuf-schema/generate.py` writes `schema.txt`).
//! The JSON produced is what Go's encoding/json would print for the decoded struct: zero values of
//! non-pointer `omitempty` fields are left out, embedded structs are inlined, times are RFC 3339,
//! IntOrString, Quantity, RawExtension and FieldsV1 have their JSON forms.
//!
//! Responses stay JSON: clients decode by the response's Content-Type, so answering JSON to a
//! protobuf request is valid negotiation.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{Map, Value};

/// The four bytes that open every Kubernetes protobuf document.
pub const MAGIC: &[u8] = b"k8s\0";

const META_V1: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the body does not start with the Kubernetes protobuf envelope")]
    NoEnvelope,
    #[error("truncated or malformed protobuf data")]
    Malformed,
    #[error("field {field} has wire type {wire}, expected {expected}")]
    WireType { field: String, wire: u8, expected: &'static str },
    #[error("no protobuf schema for {api_version}, Kind={kind}")]
    UnknownKind { api_version: String, kind: String },
    #[error("unsupported content encoding {0:?}")]
    ContentEncoding(String),
    #[error("field {field}: {detail}")]
    Value { field: String, detail: String },
}

/// Decodes one enveloped object (`k8s\0` + runtime.Unknown) into JSON with apiVersion and kind.
pub fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    let body = bytes.strip_prefix(MAGIC).ok_or(DecodeError::NoEnvelope)?;
    let (mut api_version, mut kind, mut raw, mut encoding) = (String::new(), String::new(), &[][..], String::new());
    let mut reader = Reader::new(body);
    while let Some((number, wire)) = reader.key()? {
        match (number, wire) {
            (1, LEN) => {
                let mut type_meta = Reader::new(reader.bytes()?);
                while let Some((n, w)) = type_meta.key()? {
                    match (n, w) {
                        (1, LEN) => api_version = type_meta.string("apiVersion")?,
                        (2, LEN) => kind = type_meta.string("kind")?,
                        _ => type_meta.skip(w)?,
                    }
                }
            }
            (2, LEN) => raw = reader.bytes()?,
            (3, LEN) => encoding = reader.string("contentEncoding")?,
            _ => reader.skip(wire)?,
        }
    }
    if !encoding.is_empty() {
        return Err(DecodeError::ContentEncoding(encoding));
    }
    let schema = schema();
    let message = schema.message_for(&api_version, &kind).ok_or_else(|| DecodeError::UnknownKind { api_version: api_version.clone(), kind: kind.clone() })?;
    let mut object = Map::new();
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind));
    decode_message_into(schema, message, raw, &mut object)?;
    Ok(Value::Object(object))
}

#[derive(Debug)]
struct Schema {
    messages: HashMap<String, Message>,
    /// (group, version) -> proto package holding that group-version's kinds.
    packages: HashMap<(String, String), String>,
}

#[derive(Debug, Default)]
struct Message {
    fields: HashMap<u32, Field>,
}

#[derive(Debug)]
struct Field {
    /// JSON name; `None` for an embedded struct whose fields land in the parent.
    json: Option<String>,
    ty: String,
    shape: Shape,
    keeps_zero: bool,
}

#[derive(Debug, PartialEq)]
enum Shape {
    Single,
    Repeated,
    Map { key: String },
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| parse_schema(include_str!("schema.txt")))
}

fn parse_schema(text: &str) -> Schema {
    let mut messages = HashMap::new();
    let mut packages = HashMap::new();
    let mut current: Option<(String, Message)> = None;
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["G", group, version, package] => {
                let group = if *group == "-" { "" } else { group };
                packages.insert((group.to_string(), version.to_string()), package.to_string());
            }
            ["M", name] => {
                if let Some((name, message)) = current.take() {
                    messages.insert(name, message);
                }
                current = Some((name.to_string(), Message::default()));
            }
            ["F", number, json, ty, shape, zero] => {
                let (Some((_, message)), Ok(number)) = (current.as_mut(), number.parse::<u32>()) else { continue };
                let shape = match *shape {
                    "r" => Shape::Repeated,
                    s if s.starts_with("m:") => Shape::Map { key: s[2..].to_string() },
                    _ => Shape::Single,
                };
                let json = (*json != "~").then(|| json.to_string());
                message.fields.insert(number, Field { json, ty: ty.to_string(), shape, keeps_zero: *zero == "z" });
            }
            _ => {}
        }
    }
    if let Some((name, message)) = current {
        messages.insert(name, message);
    }
    Schema { messages, packages }
}

impl Schema {
    fn message_for(&self, api_version: &str, kind: &str) -> Option<&Message> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let in_group = self.packages.get(&(group.to_string(), version.to_string())).and_then(|package| self.messages.get(&format!(".{package}.{kind}")));
        // Options kinds (DeleteOptions, ...) are registered in every group-version but live in meta/v1.
        in_group.or_else(|| self.messages.get(&format!(".{META_V1}.{kind}")))
    }
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let (&byte, rest) = self.data.split_first().ok_or(DecodeError::Malformed)?;
            self.data = rest;
            if shift == 63 && byte > 1 {
                return Err(DecodeError::Malformed);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed)
    }

    fn key(&mut self) -> Result<Option<(u32, u8)>, DecodeError> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| DecodeError::Malformed)?;
        if number == 0 {
            return Err(DecodeError::Malformed);
        }
        Ok(Some((number, (key & 7) as u8)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.data.len() < n {
            return Err(DecodeError::Malformed);
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::Malformed)?;
        self.take(len)
    }

    fn string(&mut self, field: &str) -> Result<String, DecodeError> {
        let raw = self.bytes()?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::Value { field: field.into(), detail: "string is not UTF-8".into() })
    }

    fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            FIXED32 => self.take(4).map(drop),
            _ => Err(DecodeError::Malformed),
        }
    }
}

fn decode_message(schema: &Schema, ty: &str, data: &[u8]) -> Result<Value, DecodeError> {
    if let Some(special) = decode_special(ty, data)? {
        return Ok(special);
    }
    let message = schema.messages.get(ty).ok_or_else(|| DecodeError::Value { field: ty.into(), detail: "no schema for this message".into() })?;
    let mut object = Map::new();
    decode_message_into(schema, message, data, &mut object)?;
    Ok(Value::Object(object))
}

fn decode_message_into(schema: &Schema, message: &Message, data: &[u8], out: &mut Map<String, Value>) -> Result<(), DecodeError> {
    let mut reader = Reader::new(data);
    while let Some((number, wire)) = reader.key()? {
        let Some(field) = message.fields.get(&number) else {
            // Fields this table does not know (a newer client) are skipped, as Go's decoder does.
            reader.skip(wire)?;
            continue;
        };
        let name = field.json.as_deref().unwrap_or("");
        match &field.shape {
            Shape::Map { key } => {
                let entry = reader_len(&mut reader, wire, name)?;
                let (k, v) = decode_map_entry(schema, key, &field.ty, entry, name)?;
                let map = out.entry(name.to_string()).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(map) = map {
                    map.insert(k, v);
                }
            }
            Shape::Repeated if wire == LEN && is_packable(&field.ty) => {
                let mut packed = Reader::new(reader.bytes()?);
                while !packed.data.is_empty() {
                    let value = scalar(&mut packed, &field.ty, wire_of(&field.ty), name)?;
                    push(out, name, value);
                }
            }
            Shape::Repeated => {
                let value = value_of(schema, &mut reader, field, wire, name)?;
                push(out, name, value.unwrap_or(Value::Null));
            }
            Shape::Single => {
                let Some(value) = value_of(schema, &mut reader, field, wire, name)? else {
                    out.remove(name);
                    continue;
                };
                match (&field.json, value) {
                    (None, Value::Object(inner)) => out.extend(inner),
                    (None, _) => {}
                    (Some(json), value) => {
                        if field.keeps_zero || !is_zero(&value) || value.is_object() {
                            out.insert(json.clone(), value);
                        } else {
                            out.remove(json);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn reader_len<'a>(reader: &mut Reader<'a>, wire: u8, field: &str) -> Result<&'a [u8], DecodeError> {
    if wire != LEN {
        return Err(DecodeError::WireType { field: field.into(), wire, expected: "length-delimited" });
    }
    reader.bytes()
}

fn push(out: &mut Map<String, Value>, name: &str, value: Value) {
    let list = out.entry(name.to_string()).or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = list {
        list.push(value);
    }
}

/// A single value of a field; `None` for a value Go's JSON would print as null (zero Time).
fn value_of(schema: &Schema, reader: &mut Reader<'_>, field: &Field, wire: u8, name: &str) -> Result<Option<Value>, DecodeError> {
    if field.ty.starts_with('.') {
        let data = reader_len(reader, wire, name)?;
        if data.is_empty() && is_time(&field.ty) {
            return Ok(None);
        }
        return decode_message(schema, &field.ty, data).map(Some);
    }
    let expected = wire_of(&field.ty);
    if wire != expected {
        return Err(DecodeError::WireType { field: name.into(), wire, expected: wire_name(expected) });
    }
    scalar(reader, &field.ty, wire, name).map(Some)
}

fn decode_map_entry(schema: &Schema, key_ty: &str, value_ty: &str, entry: &[u8], name: &str) -> Result<(String, Value), DecodeError> {
    let mut reader = Reader::new(entry);
    let (mut key, mut value) = (String::new(), None);
    let value_field = Field { json: Some(name.into()), ty: value_ty.into(), shape: Shape::Single, keeps_zero: true };
    while let Some((number, wire)) = reader.key()? {
        match number {
            1 => {
                key = match scalar(&mut reader, key_ty, wire, name)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                }
            }
            2 => value = value_of(schema, &mut reader, &value_field, wire, name)?,
            _ => reader.skip(wire)?,
        }
    }
    let value = match value {
        Some(v) => v,
        // An absent value is the type's zero value.
        None if value_ty.starts_with('.') => decode_message(schema, value_ty, &[])?,
        None => zero_of(value_ty),
    };
    Ok((key, value))
}

fn is_packable(ty: &str) -> bool {
    !matches!(ty, "string" | "bytes") && !ty.starts_with('.')
}

fn wire_of(ty: &str) -> u8 {
    match ty {
        "double" | "fixed64" | "sfixed64" => FIXED64,
        "float" | "fixed32" | "sfixed32" => FIXED32,
        "string" | "bytes" => LEN,
        _ => VARINT,
    }
}

fn wire_name(wire: u8) -> &'static str {
    match wire {
        VARINT => "varint",
        FIXED64 => "64-bit",
        FIXED32 => "32-bit",
        _ => "length-delimited",
    }
}

fn scalar(reader: &mut Reader<'_>, ty: &str, wire: u8, field: &str) -> Result<Value, DecodeError> {
    if wire != wire_of(ty) {
        return Err(DecodeError::WireType { field: field.into(), wire, expected: wire_name(wire_of(ty)) });
    }
    Ok(match ty {
        "string" => Value::String(reader.string(field)?),
        "bytes" => Value::String(base64::engine::general_purpose::STANDARD.encode(reader.bytes()?)),
        "bool" => Value::Bool(reader.varint()? != 0),
        // Negative int32 values are sign-extended to 64 bits on the wire.
        "int32" => Value::from(reader.varint()? as i64 as i32),
        "int64" => Value::from(reader.varint()? as i64),
        "uint32" => Value::from(reader.varint()? as u32),
        "uint64" => Value::from(reader.varint()?),
        "sint32" | "sint64" => {
            let v = reader.varint()?;
            Value::from(((v >> 1) as i64) ^ -((v & 1) as i64))
        }
        "double" => {
            let raw = reader.take(8)?;
            let v = f64::from_le_bytes(raw.try_into().map_err(|_| DecodeError::Malformed)?);
            serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null)
        }
        "float" => {
            let raw = reader.take(4)?;
            let v = f32::from_le_bytes(raw.try_into().map_err(|_| DecodeError::Malformed)?);
            serde_json::Number::from_f64(f64::from(v)).map(Value::Number).unwrap_or(Value::Null)
        }
        other => return Err(DecodeError::Value { field: field.into(), detail: format!("unknown scalar type {other}") }),
    })
}

fn zero_of(ty: &str) -> Value {
    match ty {
        "string" | "bytes" => Value::String(String::new()),
        "bool" => Value::Bool(false),
        _ => Value::from(0),
    }
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Null => true,
        _ => false,
    }
}

fn is_time(ty: &str) -> bool {
    ty == ".k8s.io.apimachinery.pkg.apis.meta.v1.Time" || ty == ".k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime"
}

/// Types whose JSON form is not an object of their proto fields.
fn decode_special(ty: &str, data: &[u8]) -> Result<Option<Value>, DecodeError> {
    let Some(short) = ty.strip_prefix(".k8s.io.") else { return Ok(None) };
    let fields = || -> Result<HashMap<u32, Vec<RawValue>>, DecodeError> { raw_fields(data) };
    Ok(Some(match short {
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let f = fields()?;
            let seconds = f.get(&1).and_then(|v| v.last()).map(RawValue::int).unwrap_or(0);
            let nanos = f.get(&2).and_then(|v| v.last()).map(RawValue::int).unwrap_or(0);
            Value::String(format_time(seconds, nanos, short.ends_with("MicroTime"))?)
        }
        "apimachinery.pkg.apis.meta.v1.Duration" => {
            let nanos = fields()?.get(&1).and_then(|v| v.last()).map(RawValue::int).unwrap_or(0);
            Value::String(go_duration(nanos))
        }
        "apimachinery.pkg.util.intstr.IntOrString" => {
            let f = fields()?;
            let kind = f.get(&1).and_then(|v| v.last()).map(RawValue::int).unwrap_or(0);
            if kind == 1 {
                Value::String(f.get(&3).and_then(|v| v.last()).map(RawValue::text).transpose()?.unwrap_or_default())
            } else {
                Value::from(f.get(&2).and_then(|v| v.last()).map(RawValue::int).unwrap_or(0) as i32)
            }
        }
        "apimachinery.pkg.api.resource.Quantity" | "apimachinery.pkg.api.resource.QuantityValue" => {
            Value::String(fields()?.get(&1).and_then(|v| v.last()).map(RawValue::text).transpose()?.unwrap_or_else(|| "0".into()))
        }
        "apimachinery.pkg.runtime.RawExtension" | "apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            let f = fields()?;
            match f.get(&1).and_then(|v| v.last()) {
                Some(RawValue::Bytes(raw)) if raw.starts_with(MAGIC) => decode(raw)?,
                Some(RawValue::Bytes(raw)) if !raw.is_empty() => serde_json::from_slice(raw)
                    .map_err(|e| DecodeError::Value { field: short.rsplit('.').next().unwrap_or(short).into(), detail: format!("embedded document is not JSON: {e}") })?,
                _ => Value::Null,
            }
        }
        // Named string slices (`type ExtraValue []string`) print as plain arrays.
        s if s.ends_with(".ExtraValue") || s == "apimachinery.pkg.apis.meta.v1.Verbs" => {
            let f = fields()?;
            let items = f.get(&1).map(|v| v.iter().map(|item| item.text().map(Value::String)).collect::<Result<Vec<_>, _>>()).transpose()?;
            Value::Array(items.unwrap_or_default())
        }
        _ => return Ok(None),
    }))
}

enum RawValue<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

impl RawValue<'_> {
    fn int(&self) -> i64 {
        match self {
            RawValue::Int(v) => *v as i64,
            RawValue::Bytes(_) => 0,
        }
    }
    fn text(&self) -> Result<String, DecodeError> {
        match self {
            RawValue::Bytes(b) => String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Value { field: "string".into(), detail: "string is not UTF-8".into() }),
            RawValue::Int(_) => Err(DecodeError::Malformed),
        }
    }
}

fn raw_fields(data: &[u8]) -> Result<HashMap<u32, Vec<RawValue<'_>>>, DecodeError> {
    let mut fields: HashMap<u32, Vec<RawValue<'_>>> = HashMap::new();
    let mut reader = Reader::new(data);
    while let Some((number, wire)) = reader.key()? {
        let value = match wire {
            VARINT => RawValue::Int(reader.varint()?),
            LEN => RawValue::Bytes(reader.bytes()?),
            other => {
                reader.skip(other)?;
                continue;
            }
        };
        fields.entry(number).or_default().push(value);
    }
    Ok(fields)
}

fn format_time(seconds: i64, nanos: i64, micro: bool) -> Result<String, DecodeError> {
    let ts = jiff::Timestamp::new(seconds, if micro { nanos as i32 } else { 0 })
        .map_err(|e| DecodeError::Value { field: "time".into(), detail: e.to_string() })?;
    let base = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    Ok(if micro { format!("{base}.{:06}Z", ts.subsec_nanosecond() / 1000) } else { format!("{base}Z") })
}

/// Go's `time.Duration.String()`: "1h2m3.5s", "1.5ms", "0s".
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let fraction = |value: u64, unit: u64| -> String {
        let (whole, rest) = (value / unit, value % unit);
        if rest == 0 {
            return whole.to_string();
        }
        let width = unit.ilog10() as usize;
        let frac = format!("{rest:0width$}");
        format!("{whole}.{}", frac.trim_end_matches('0'))
    };
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", fraction(n, 1_000));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", fraction(n, 1_000_000));
    }
    let (hours, rest) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (minutes, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let seconds = fraction(rest, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{sign}{seconds}s"),
        (0, m) => format!("{sign}{m}m{seconds}s"),
        (h, m) => format!("{sign}{h}h{m}m{seconds}s"),
    }
}

#[cfg(test)]
mod tests;
