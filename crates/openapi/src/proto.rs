//! The protobuf form of the v2 document (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`),
//! which is the only form client-go's `OpenAPISchema()` asks for and parses.
//!
//! The message layout is gnostic's `openapi.v2.Document` (package `openapi.v2`); field numbers
//! below follow that schema. Only what our v2 JSON document contains is encoded (and only what
//! kubectl reads from it matters: definitions with their extensions, and each path's operations
//! with parameters, consumes and extensions). Extension and `default`/`enum` values are carried,
//! as gnostic does, as YAML text: we write JSON, which YAML parsers read as flow style.

use serde_json::{Map, Value};

#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }
    fn string_always(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    fn msg(&mut self, field: u32, m: Msg) {
        self.bytes(field, &m.0);
    }
    fn boolean(&mut self, field: u32, b: bool) {
        if b {
            self.key(field, 0);
            self.varint(1);
        }
    }
    fn int64(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v as u64);
        }
    }
    fn double(&mut self, field: u32, v: f64) {
        if v != 0.0 {
            self.key(field, 1);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
}

fn str_of<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or("")
}

fn bool_of(m: &Map<String, Value>, k: &str) -> bool {
    m.get(k).and_then(Value::as_bool).unwrap_or(false)
}

/// `Any { yaml = 2 }`.
fn any(v: &Value) -> Msg {
    let mut m = Msg::default();
    let text = serde_json::to_string(v).unwrap_or_default();
    m.string(2, &format!("{text}\n"));
    m
}

/// `repeated NamedAny vendor_extension` entries for the `x-` keys of `m`.
fn extensions(out: &mut Msg, field: u32, m: &Map<String, Value>) {
    for (k, v) in m {
        if k.starts_with("x-") {
            let mut named = Msg::default();
            named.string(1, k);
            named.msg(2, any(v));
            out.msg(field, named);
        }
    }
}

fn strings(out: &mut Msg, field: u32, v: Option<&Value>) {
    if let Some(Value::Array(a)) = v {
        for s in a.iter().filter_map(Value::as_str) {
            out.string_always(field, s);
        }
    }
}

/// `openapi.v2.Schema`.
fn schema(v: &Value) -> Msg {
    let mut out = Msg::default();
    let Value::Object(m) = v else { return out };
    out.string(1, str_of(m, "$ref"));
    out.string(2, str_of(m, "format"));
    out.string(3, str_of(m, "title"));
    out.string(4, str_of(m, "description"));
    if let Some(d) = m.get("default") {
        out.msg(5, any(d));
    }
    if let Some(x) = m.get("multipleOf").and_then(Value::as_f64) {
        out.double(6, x);
    }
    if let Some(x) = m.get("maximum").and_then(Value::as_f64) {
        out.double(7, x);
    }
    out.boolean(8, bool_of(m, "exclusiveMaximum"));
    if let Some(x) = m.get("minimum").and_then(Value::as_f64) {
        out.double(9, x);
    }
    out.boolean(10, bool_of(m, "exclusiveMinimum"));
    for (field, key) in [(11, "maxLength"), (12, "minLength")] {
        if let Some(x) = m.get(key).and_then(Value::as_i64) {
            out.int64(field, x);
        }
    }
    out.string(13, str_of(m, "pattern"));
    for (field, key) in [(14, "maxItems"), (15, "minItems")] {
        if let Some(x) = m.get(key).and_then(Value::as_i64) {
            out.int64(field, x);
        }
    }
    out.boolean(16, bool_of(m, "uniqueItems"));
    for (field, key) in [(17, "maxProperties"), (18, "minProperties")] {
        if let Some(x) = m.get(key).and_then(Value::as_i64) {
            out.int64(field, x);
        }
    }
    strings(&mut out, 19, m.get("required"));
    if let Some(Value::Array(values)) = m.get("enum") {
        for e in values {
            out.msg(20, any(e));
        }
    }
    match m.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut ap = Msg::default();
            // oneof member `bool boolean = 2`: a set oneof field is written even when false.
            ap.key(2, 0);
            ap.varint(*b as u64);
            out.msg(21, ap);
        }
        Some(s @ Value::Object(_)) => {
            let mut ap = Msg::default();
            ap.msg(1, schema(s));
            out.msg(21, ap);
        }
        _ => {}
    }
    match m.get("type") {
        Some(Value::String(t)) => {
            let mut ti = Msg::default();
            ti.string_always(1, t);
            out.msg(22, ti);
        }
        Some(Value::Array(ts)) => {
            let mut ti = Msg::default();
            for t in ts.iter().filter_map(Value::as_str) {
                ti.string_always(1, t);
            }
            out.msg(22, ti);
        }
        _ => {}
    }
    match m.get("items") {
        Some(s @ Value::Object(_)) => {
            let mut items = Msg::default();
            items.msg(1, schema(s));
            out.msg(23, items);
        }
        Some(Value::Array(list)) => {
            let mut items = Msg::default();
            for s in list {
                items.msg(1, schema(s));
            }
            out.msg(23, items);
        }
        _ => {}
    }
    if let Some(Value::Array(all)) = m.get("allOf") {
        for s in all {
            out.msg(24, schema(s));
        }
    }
    if let Some(Value::Object(props)) = m.get("properties") {
        let mut p = Msg::default();
        for (name, s) in props {
            let mut named = Msg::default();
            named.string_always(1, name);
            named.msg(2, schema(s));
            p.msg(1, named);
        }
        out.msg(25, p);
    }
    out.string(26, str_of(m, "discriminator"));
    out.boolean(27, bool_of(m, "readOnly"));
    if let Some(e) = m.get("example") {
        out.msg(30, any(e));
    }
    extensions(&mut out, 31, m);
    out
}

/// `ParametersItem` wrapping a `Parameter` (body or query/path).
fn parameter(v: &Value) -> Msg {
    let mut item = Msg::default();
    let Value::Object(m) = v else { return item };
    if let Some(r) = m.get("$ref").and_then(Value::as_str) {
        let mut jr = Msg::default();
        jr.string(1, r);
        item.msg(2, jr);
        return item;
    }
    let mut param = Msg::default();
    match str_of(m, "in") {
        "body" => {
            let mut b = Msg::default();
            b.string(1, str_of(m, "description"));
            b.string(2, str_of(m, "name"));
            b.string(3, "body");
            b.boolean(4, bool_of(m, "required"));
            if let Some(s) = m.get("schema") {
                b.msg(5, schema(s));
            }
            extensions(&mut b, 6, m);
            param.msg(1, b);
        }
        location @ ("query" | "path") => {
            // QueryParameterSubSchema and PathParameterSubSchema differ only by
            // `allow_empty_value` (query field 5), which shifts the later field numbers.
            let query = location == "query";
            let shift = if query { 1 } else { 0 };
            let mut s = Msg::default();
            s.boolean(1, bool_of(m, "required"));
            s.string(2, location);
            s.string(3, str_of(m, "description"));
            s.string(4, str_of(m, "name"));
            s.string(5 + shift, str_of(m, "type"));
            s.string(6 + shift, str_of(m, "format"));
            s.boolean(19 + shift, bool_of(m, "uniqueItems"));
            extensions(&mut s, 22 + shift, m);
            let mut nb = Msg::default();
            nb.msg(if query { 3 } else { 4 }, s);
            param.msg(2, nb);
        }
        _ => return item,
    }
    item.msg(1, param);
    item
}

fn operation(v: &Value) -> Msg {
    let mut out = Msg::default();
    let Value::Object(m) = v else { return out };
    strings(&mut out, 1, m.get("tags"));
    out.string(2, str_of(m, "summary"));
    out.string(3, str_of(m, "description"));
    out.string(5, str_of(m, "operationId"));
    strings(&mut out, 6, m.get("produces"));
    strings(&mut out, 7, m.get("consumes"));
    if let Some(Value::Array(params)) = m.get("parameters") {
        for p in params {
            out.msg(8, parameter(p));
        }
    }
    if let Some(Value::Object(responses)) = m.get("responses") {
        let mut rs = Msg::default();
        for (code, r) in responses {
            let Value::Object(rm) = r else { continue };
            let mut resp = Msg::default();
            resp.string(1, str_of(rm, "description"));
            if let Some(s) = rm.get("schema") {
                let mut si = Msg::default();
                si.msg(1, schema(s));
                resp.msg(2, si);
            }
            extensions(&mut resp, 5, rm);
            let mut value = Msg::default();
            value.msg(1, resp);
            let mut named = Msg::default();
            named.string_always(1, code);
            named.msg(2, value);
            rs.msg(1, named);
        }
        out.msg(9, rs);
    }
    strings(&mut out, 10, m.get("schemes"));
    out.boolean(11, bool_of(m, "deprecated"));
    extensions(&mut out, 13, m);
    out
}

/// Encodes a v2 (swagger 2.0) JSON document as gnostic's `openapi.v2.Document`.
pub(crate) fn encode_v2(doc: &Value) -> Vec<u8> {
    let mut out = Msg::default();
    let Value::Object(m) = doc else { return out.0 };
    out.string(1, str_of(m, "swagger"));
    if let Some(Value::Object(info)) = m.get("info") {
        let mut i = Msg::default();
        i.string(1, str_of(info, "title"));
        i.string(2, str_of(info, "version"));
        i.string(3, str_of(info, "description"));
        out.msg(2, i);
    }
    if let Some(Value::Object(paths)) = m.get("paths") {
        let mut ps = Msg::default();
        for (path, item) in paths {
            let Value::Object(im) = item else { continue };
            let mut pi = Msg::default();
            for (field, method) in [
                (2, "get"),
                (3, "put"),
                (4, "post"),
                (5, "delete"),
                (6, "options"),
                (7, "head"),
                (8, "patch"),
            ] {
                if let Some(op) = im.get(method) {
                    pi.msg(field, operation(op));
                }
            }
            if let Some(Value::Array(params)) = im.get("parameters") {
                for p in params {
                    pi.msg(9, parameter(p));
                }
            }
            extensions(&mut pi, 10, im);
            let mut named = Msg::default();
            named.string_always(1, path);
            named.msg(2, pi);
            ps.msg(2, named);
        }
        out.msg(8, ps);
    }
    if let Some(Value::Object(defs)) = m.get("definitions") {
        let mut ds = Msg::default();
        for (name, s) in defs {
            let mut named = Msg::default();
            named.string_always(1, name);
            named.msg(2, schema(s));
            ds.msg(1, named);
        }
        out.msg(9, ds);
    }
    extensions(&mut out, 16, m);
    out.0
}

#[cfg(test)]
pub(crate) mod decode {
    //! A minimal protobuf reader for tests: enough to walk the encoded document.

    pub(crate) fn varint(b: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = b[*pos];
            *pos += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }

    /// (field number, wire type, payload) of each top-level field of a message.
    pub(crate) fn fields(b: &[u8]) -> Vec<(u32, u8, &[u8])> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < b.len() {
            let key = varint(b, &mut pos);
            let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
            match wire {
                0 => {
                    let start = pos;
                    varint(b, &mut pos);
                    out.push((field, wire, &b[start..pos]));
                }
                1 => {
                    out.push((field, wire, &b[pos..pos + 8]));
                    pos += 8;
                }
                2 => {
                    let len = varint(b, &mut pos) as usize;
                    out.push((field, wire, &b[pos..pos + len]));
                    pos += len;
                }
                _ => panic!("unexpected wire type {wire}"),
            }
        }
        out
    }
}
