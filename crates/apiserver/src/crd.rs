//! CustomResourceDefinitions: turning a CRD into served resources, and checking custom objects
//! against the CRD's structural schema (types, required fields, enums, bounds) with upstream's
//! pruning of fields the schema does not declare.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::api::FieldValidation;
use crate::conversion::Conversion;
use crate::resources::{ResourceDef, ScalePaths};
use crate::status::{ApiError, ApiResult, Cause};

/// The resources a CRD serves, one per served version. Only an Established-worthy CRD (valid
/// names, at least one served version, exactly one storage version) yields any.
pub fn resource_defs(crd: &Value) -> Vec<ResourceDef> {
    let Some(spec) = crd.get("spec") else { return vec![] };
    let group = spec.get("group").and_then(Value::as_str).unwrap_or("");
    let names = spec.get("names").cloned().unwrap_or(Value::Null);
    let plural = names.get("plural").and_then(Value::as_str).unwrap_or("");
    let kind = names.get("kind").and_then(Value::as_str).unwrap_or("");
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return vec![];
    }
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default()
    };
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let versions = spec.get("versions").and_then(Value::as_array).cloned().unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v.get("storage") == Some(&json!(true)))
        .and_then(|v| v.get("name").and_then(Value::as_str))
        .unwrap_or("")
        .to_string();
    versions
        .iter()
        .filter(|v| v.get("served") == Some(&json!(true)))
        .filter_map(|v| {
            let version = v.get("name").and_then(Value::as_str)?;
            let sub = v.get("subresources");
            let scale = sub.and_then(|s| s.get("scale")).map(|s| ScalePaths {
                spec_replicas: s.get("specReplicasPath").and_then(Value::as_str).unwrap_or(".spec.replicas").to_string(),
                status_replicas: s.get("statusReplicasPath").and_then(Value::as_str).unwrap_or(".status.replicas").to_string(),
                label_selector: s.get("labelSelectorPath").and_then(Value::as_str).map(str::to_string),
            });
            Some(ResourceDef {
                group: group.to_string(),
                version: version.to_string(),
                kind: kind.to_string(),
                list_kind: names.get("listKind").and_then(Value::as_str).map_or_else(|| format!("{kind}List"), str::to_string),
                plural: plural.to_string(),
                singular: names.get("singular").and_then(Value::as_str).map_or_else(|| kind.to_lowercase(), str::to_string),
                namespaced,
                short_names: strings(names.get("shortNames")),
                categories: strings(names.get("categories")),
                status: sub.and_then(|s| s.get("status")).is_some(),
                scale,
                tracks_generation: true,
                storage_group: group.to_string(),
                storage_version: storage_version.clone(),
                // Always rewritten, so objects stored before a storage-version switch read right.
                conversion: Conversion::ApiVersion,
                schema: v.pointer("/schema/openAPIV3Schema").cloned().map(Arc::new),
                printer_columns: v.get("additionalPrinterColumns").cloned().map(Arc::new),
                selectable_fields: v
                    .get("selectableFields")
                    .and_then(Value::as_array)
                    .map(|fields| fields.iter().filter_map(|f| f.get("jsonPath").and_then(Value::as_str)).map(|p| p.trim_start_matches('.').to_string()).collect())
                    .unwrap_or_default(),
                custom: true,
            })
        })
        .collect()
}

/// Rules a CRD must meet before it is stored.
pub fn validate_crd(def: &ResourceDef, crd: &Value) -> ApiResult<()> {
    let name = crate::objects::name(crd);
    let mut causes = Vec::new();
    let spec = crd.get("spec").cloned().unwrap_or(Value::Null);
    let group = spec.get("group").and_then(Value::as_str).unwrap_or("");
    let plural = spec.pointer("/names/plural").and_then(Value::as_str).unwrap_or("");
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if !group.contains('.') {
        causes.push(Cause::invalid("spec.group", &json!(group), "should be a domain with at least one dot"));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural"));
    }
    if spec.pointer("/names/kind").and_then(Value::as_str).is_none_or(str::is_empty) {
        causes.push(Cause::required("spec.names.kind"));
    }
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid("metadata.name", &json!(name), "must be spec.names.plural+\".\"+spec.group"));
    }
    let versions = spec.get("versions").and_then(Value::as_array).cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required("spec.versions"));
    }
    let storage = versions.iter().filter(|v| v.get("storage") == Some(&json!(true))).count();
    if !versions.is_empty() && storage != 1 {
        causes.push(Cause::invalid("spec.versions", &json!(versions.iter().filter_map(|v| v.get("name")).collect::<Vec<_>>()), "must have exactly one version marked as storage version"));
    }
    for (i, v) in versions.iter().enumerate() {
        match v.pointer("/schema/openAPIV3Schema") {
            None => causes.push(Cause::required(format!("spec.versions[{i}].schema.openAPIV3Schema"))),
            Some(schema) => {
                for (path, message) in crate::cel::check_rules(schema) {
                    let field = format!("spec.versions[{i}].schema.openAPIV3Schema.{path}");
                    causes.push(Cause { reason: "FieldValueInvalid", field, message: format!("Invalid value: \"object\": {message}") });
                }
            }
        }
    }
    if causes.is_empty() { Ok(()) } else { Err(ApiError::invalid(def, name, causes)) }
}

/// Validates a custom object against its version's schema, pruning undeclared fields.
pub fn validate_custom(def: &ResourceDef, mut obj: Value, validation: FieldValidation, warnings: &mut Vec<String>) -> ApiResult<Value> {
    let name = crate::objects::name(&obj).to_string();
    let Some(schema) = def.schema.clone() else { return Ok(obj) };
    let mut causes = Vec::new();
    let mut unknown = Vec::new();
    if let Some(fields) = obj.as_object_mut() {
        let props = schema.get("properties").and_then(Value::as_object);
        apply_defaults(props, fields, true);
        let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
        let keys: Vec<String> = fields.keys().cloned().collect();
        for key in keys {
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match props.and_then(|p| p.get(&key)) {
                Some(sub) => {
                    if let Some(value) = fields.get_mut(&key) {
                        check(sub, value, &format!(".{key}"), &mut causes, &mut unknown);
                    }
                }
                None if preserve => {}
                None => {
                    fields.remove(&key);
                    unknown.push(format!(".{key}"));
                }
            }
        }
        for req in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !fields.contains_key(req) {
                causes.push(Cause::required(req.to_string()));
            }
        }
    }
    if !unknown.is_empty() {
        match validation {
            FieldValidation::Strict => {
                let list: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.'))).collect();
                return Err(ApiError::bad_request(format!("strict decoding error: {}", list.join(", "))));
            }
            FieldValidation::Warn => warnings.extend(unknown.iter().map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.')))),
            FieldValidation::Ignore => {}
        }
    }
    if causes.is_empty() { Ok(obj) } else { Err(ApiError::invalid(def, &name, causes)) }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(schema: &Value, value: &mut Value, path: &str, causes: &mut Vec<Cause>, unknown: &mut Vec<String>) {
    let field = path.trim_start_matches('.').to_string();
    if value.is_null() {
        if schema.get("nullable") != Some(&json!(true)) {
            // Upstream drops nulls for non-nullable fields rather than failing.
            *value = Value::Null;
        }
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
        if !(value.is_string() || type_name(value) == "integer") {
            causes.push(Cause::invalid(field, value, "must be an integer or a string"));
        }
        return;
    }
    let expected = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let actual = type_name(value);
    let type_ok = match expected {
        "" => true,
        "number" => actual == "number" || actual == "integer",
        e => e == actual,
    };
    if !type_ok {
        causes.push(Cause {
            reason: "FieldValueTypeInvalid",
            field,
            message: format!("Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""),
        });
        return;
    }
    check_value(schema, value, &field, causes);
    match value {
        Value::Object(map) => check_object(schema, map, path, causes, unknown),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), causes, unknown);
                }
            }
        }
        _ => {}
    }
}

fn check_object(schema: &Value, map: &mut Map<String, Value>, path: &str, causes: &mut Vec<Cause>, unknown: &mut Vec<String>) {
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let embedded = schema.get("x-kubernetes-embedded-resource") == Some(&json!(true));
    let props = schema.get("properties").and_then(Value::as_object);
    apply_defaults(props, map, false);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let child_path = format!("{path}.{key}");
        if embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(sub) = props.and_then(|p| p.get(&key)) {
            if let Some(v) = map.get_mut(&key) {
                check(sub, v, &child_path, causes, unknown);
            }
        } else if let Some(sub) = additional {
            if let Some(v) = map.get_mut(&key) {
                check(sub, v, &child_path, causes, unknown);
            }
        } else if !preserve && (props.is_some() || schema.get("additionalProperties") != Some(&json!(true))) {
            map.remove(&key);
            unknown.push(child_path);
        }
    }
    for req in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if !map.contains_key(req) {
            causes.push(Cause::required(format!("{}.{req}", path.trim_start_matches('.'))));
        }
    }
}

/// Fills absent (or null, non-nullable) properties that declare a `default`, as upstream's
/// structural defaulting does on every request.
fn apply_defaults(props: Option<&Map<String, Value>>, map: &mut Map<String, Value>, root: bool) {
    let Some(props) = props else { return };
    for (key, sub) in props {
        if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let Some(default) = sub.get("default") else { continue };
        let missing = match map.get(key) {
            None => true,
            Some(Value::Null) => sub.get("nullable") != Some(&json!(true)),
            Some(_) => false,
        };
        if missing {
            map.insert(key.clone(), default.clone());
        }
    }
}

/// The value validations of one schema node (and of its allOf/anyOf/oneOf/not, which in a
/// structural schema hold value validations only).
fn check_value(schema: &Value, value: &Value, field: &str, causes: &mut Vec<Cause>) {
    let int = |key: &str| schema.get(key).and_then(Value::as_u64);
    let flag = |key: &str| schema.get(key) == Some(&json!(true));
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let shown: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        causes.push(Cause { reason: "FieldValueNotSupported", field: field.to_string(), message: format!("Unsupported value: {value}: supported values: {}", shown.join(", ")) });
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if flag("exclusiveMinimum") && n <= min {
                causes.push(Cause::invalid(field, value, format!("{field} in body should be greater than {min}")));
            } else if n < min {
                causes.push(Cause::invalid(field, value, format!("{field} in body should be greater than or equal to {min}")));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if flag("exclusiveMaximum") && n >= max {
                causes.push(Cause::invalid(field, value, format!("{field} in body should be less than {max}")));
            } else if n > max {
                causes.push(Cause::invalid(field, value, format!("{field} in body should be less than or equal to {max}")));
            }
        }
        if let Some(factor) = schema.get("multipleOf").and_then(Value::as_f64).filter(|f| *f > 0.0) {
            let quotient = n / factor;
            if (quotient - quotient.round()).abs() > 1e-9 {
                causes.push(Cause::invalid(field, value, format!("{field} in body should be a multiple of {factor}")));
            }
        }
    }
    if let Some(text) = value.as_str() {
        let len = text.chars().count() as u64;
        if let Some(min) = int("minLength")
            && len < min
        {
            causes.push(Cause::invalid(field, value, format!("{field} in body should be at least {min} chars long")));
        }
        if let Some(max) = int("maxLength")
            && len > max
        {
            causes.push(Cause { reason: "FieldValueTooLong", field: field.to_string(), message: format!("Too long: may not be more than {max} bytes") });
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            match compiled(pattern) {
                Some(re) if !re.is_match(text) => causes.push(Cause::invalid(field, value, format!("{field} in body should match '{pattern}'"))),
                _ => {}
            }
        }
        if let Some(format) = schema.get("format").and_then(Value::as_str)
            && !format_ok(format, text)
        {
            causes.push(Cause::invalid(field, value, format!("{field} in body must be of type {format}: {value}")));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = int("minItems")
            && (items.len() as u64) < min
        {
            causes.push(Cause::invalid(field, &json!(items.len()), format!("{field} in body should have at least {min} items")));
        }
        if let Some(max) = int("maxItems")
            && (items.len() as u64) > max
        {
            causes.push(Cause { reason: "FieldValueTooMany", field: field.to_string(), message: format!("Too many: {}: must have at most {max} items", items.len()) });
        }
        let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
        if flag("uniqueItems") || list_type == Some("set") {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    causes.push(Cause::duplicate(format!("{field}[{i}]"), item));
                }
            }
        }
        if list_type == Some("map") {
            let keys: Vec<&str> = schema.get("x-kubernetes-list-map-keys").and_then(Value::as_array).map(|k| k.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            let key_of = |item: &Value| -> Vec<Value> { keys.iter().map(|k| item.get(*k).cloned().unwrap_or(Value::Null)).collect() };
            for (i, item) in items.iter().enumerate() {
                let key = key_of(item);
                if items[..i].iter().any(|earlier| key_of(earlier) == key) {
                    let shown: Map<String, Value> = keys.iter().zip(key).map(|(k, v)| (k.to_string(), v)).collect();
                    causes.push(Cause::duplicate(format!("{field}[{i}]"), &Value::Object(shown)));
                }
            }
        }
    }
    if let Some(map) = value.as_object() {
        if let Some(min) = int("minProperties")
            && (map.len() as u64) < min
        {
            causes.push(Cause::invalid(field, &json!(map.len()), format!("{field} in body should have at least {min} properties")));
        }
        if let Some(max) = int("maxProperties")
            && (map.len() as u64) > max
        {
            causes.push(Cause { reason: "FieldValueTooMany", field: field.to_string(), message: format!("Too many: {}: must have at most {max} items", map.len()) });
        }
    }
    let passes = |sub: &Value| {
        let mut inner = Vec::new();
        check_value(sub, value, field, &mut inner);
        inner.is_empty()
    };
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for sub in all {
            check_value(sub, value, field, causes);
        }
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(|sub| passes(sub))
    {
        causes.push(Cause::invalid(field, value, format!("{field} in body must validate at least one schema (anyOf)")));
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array)
        && one.iter().filter(|sub| passes(sub)).count() != 1
    {
        causes.push(Cause::invalid(field, value, format!("{field} in body must validate one and only one schema (oneOf)")));
    }
    if let Some(not) = schema.get("not")
        && passes(not)
    {
        causes.push(Cause::invalid(field, value, format!("{field} in body should not be valid against the given schema")));
    }
}

/// Compiled `pattern`s, shared: schemas repeat on every request.
fn compiled(pattern: &str) -> Option<regex::Regex> {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Option<regex::Regex>>>> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() > 4096 {
        cache.clear();
    }
    cache.entry(pattern.to_string()).or_insert_with(|| regex::Regex::new(pattern).ok()).clone()
}

/// The string formats upstream checks (kube-openapi's format registry); others pass.
fn format_ok(format: &str, text: &str) -> bool {
    use std::net::IpAddr;
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    match format {
        "byte" => base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text).is_ok(),
        "date" => jiff::civil::Date::strptime("%Y-%m-%d", text).is_ok(),
        "date-time" | "datetime" => text.parse::<jiff::Timestamp>().is_ok(),
        "uuid" => {
            let parts: Vec<&str> = text.split('-').collect();
            parts.len() == 5 && [8, 4, 4, 4, 12].iter().zip(&parts).all(|(n, p)| hex(p, *n))
        }
        "ipv4" => text.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => text.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => text.split_once('/').is_some_and(|(ip, bits)| {
            let max = match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => 32,
                Ok(IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            bits.parse::<u8>().is_ok_and(|b| b <= max)
        }),
        "mac" => {
            let parts: Vec<&str> = text.split([':', '-']).collect();
            parts.len() == 6 && parts.iter().all(|p| hex(p, 2))
        }
        "hostname" => !text.is_empty() && text.len() <= 253 && text.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') && !label.starts_with('-') && !label.ends_with('-')
        }),
        "email" => text.split_once('@').is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')),
        "uri" => text.split_once(':').is_some_and(|(scheme, _)| !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))),
        "duration" => go_duration_ok(text),
        _ => true,
    }
}

/// Go's time.ParseDuration syntax: "300ms", "-1.5h", "2h45m".
fn go_duration_ok(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    if body == "0" {
        return true;
    }
    let mut rest = body;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if digits == 0 || rest[..digits].parse::<f64>().is_err() {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"].iter().filter(|u| rest.starts_with(*u)).max_by_key(|u| u.len());
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
          "metadata": {"name": "widgets.example.com"},
          "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
              "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
              "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "required": ["size"], "properties": {
                  "size": {"type": "integer", "minimum": 1}, "color": {"type": "string", "enum": ["red", "blue"]},
                  "replicas": {"type": "integer"}, "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}}}}]}})
    }

    #[test]
    fn crd_yields_a_resource_per_served_version() {
        let defs = resource_defs(&crd());
        assert_eq!(defs.len(), 1);
        assert_eq!((defs[0].plural.as_str(), defs[0].kind.as_str(), defs[0].status), ("widgets", "Widget", true));
        assert_eq!(defs[0].short_names, ["wd"]);
    }

    #[test]
    fn custom_objects_are_validated_and_pruned() {
        let def = resource_defs(&crd()).remove(0);
        let obj = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"size": 2, "color": "red", "bogus": 1, "extra": {"anything": [1]}}});
        let mut warnings = vec![];
        let out = validate_custom(&def, obj.clone(), FieldValidation::Warn, &mut warnings).unwrap();
        assert!(out["spec"].get("bogus").is_none());
        assert_eq!(out["spec"]["extra"]["anything"][0], 1);
        assert_eq!(warnings, ["unknown field \"spec.bogus\""]);
        assert!(validate_custom(&def, obj, FieldValidation::Strict, &mut vec![]).is_err());
        let bad = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 0, "color": "green"}});
        let err = validate_custom(&def, bad, FieldValidation::Warn, &mut vec![]).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.contains("spec.size"), "{}", err.message);
        assert!(err.message.contains("spec.color"), "{}", err.message);
        let missing = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": "big"}});
        assert_eq!(validate_custom(&def, missing, FieldValidation::Warn, &mut vec![]).unwrap_err().code, 422);
    }
}

#[cfg(test)]
mod value_validation_tests {
    use super::*;

    fn def_with(schema: Value) -> ResourceDef {
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
          "metadata": {"name": "gadgets.example.com"},
          "spec": {"group": "example.com", "scope": "Namespaced", "names": {"plural": "gadgets", "kind": "Gadget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "selectableFields": [{"jsonPath": ".spec.color"}],
              "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": schema}}}}]}});
        resource_defs(&crd).remove(0)
    }

    fn causes(def: &ResourceDef, spec: Value) -> Vec<String> {
        let obj = json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": spec});
        match validate_custom(def, obj, FieldValidation::Strict, &mut vec![]) {
            Ok(_) => vec![],
            Err(e) => e
                .details
                .and_then(|d| d.get("causes").and_then(Value::as_array).cloned())
                .unwrap_or_default()
                .iter()
                .map(|c| format!("{} {}: {}", c["reason"].as_str().unwrap_or(""), c["field"].as_str().unwrap_or(""), c["message"].as_str().unwrap_or("")))
                .collect(),
        }
    }

    #[test]
    fn strings_numbers_lists_and_combinators_are_checked_like_upstream() {
        let def = def_with(json!({"type": "object", "properties": {
            "name": {"type": "string", "pattern": "^[a-z]+$"},
            "when": {"type": "string", "format": "date-time"},
            "ip": {"type": "string", "format": "ipv4"},
            "port": {"type": "integer", "minimum": 0, "exclusiveMinimum": true, "multipleOf": 5},
            "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                      "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
            "labels": {"type": "object", "maxProperties": 1, "additionalProperties": {"type": "string"}},
            "size": {"type": "string", "anyOf": [{"pattern": "^small$"}, {"pattern": "^large$"}]}}}));
        assert_eq!(causes(&def, json!({"name": "ok", "when": "2026-11-29T08:00:00Z", "ip": "10.0.0.1", "port": 10, "tags": ["a", "b"],
            "ports": [{"name": "http"}, {"name": "grpc"}], "labels": {"a": "b"}, "size": "large"})), Vec::<String>::new());
        let found = causes(&def, json!({"name": "Not-OK", "when": "yesterday", "ip": "10.0.0.300", "port": 7, "tags": ["a", "a"],
            "ports": [{"name": "http"}, {"name": "http"}], "labels": {"a": "b", "c": "d"}, "size": "medium"}));
        let text = found.join("\n");
        for expected in [
            "FieldValueInvalid spec.name: Invalid value: \"Not-OK\": spec.name in body should match '^[a-z]+$'",
            "spec.when in body must be of type date-time",
            "spec.ip in body must be of type ipv4",
            "spec.port in body should be a multiple of 5",
            "FieldValueDuplicate spec.tags[1]: Duplicate value: \"a\"",
            "FieldValueDuplicate spec.ports[1]: Duplicate value: {\"name\":\"http\"}",
            "FieldValueTooMany spec.labels",
            "spec.size in body must validate at least one schema (anyOf)",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(causes(&def, json!({"port": 0})).join("").contains("should be greater than 0"));
    }

    #[test]
    fn defaults_fill_absent_fields_at_every_level() {
        let def = def_with(json!({"type": "object", "default": {}, "properties": {
            "replicas": {"type": "integer", "default": 1},
            "mode": {"type": "string", "default": "fast"},
            "items": {"type": "array", "items": {"type": "object", "properties": {"weight": {"type": "integer", "default": 10}}}}}}));
        let obj = json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {"mode": "slow", "items": [{}, {"weight": 3}]}});
        let out = validate_custom(&def, obj, FieldValidation::Strict, &mut vec![]).unwrap();
        assert_eq!(out["spec"], json!({"mode": "slow", "items": [{"weight": 10}, {"weight": 3}], "replicas": 1}));
        let bare = json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}});
        let out = validate_custom(&def, bare, FieldValidation::Strict, &mut vec![]).unwrap();
        assert_eq!(out["spec"], json!({"replicas": 1, "mode": "fast"}));
    }

    #[test]
    fn selectable_fields_come_from_the_version() {
        let def = def_with(json!({"type": "object"}));
        assert_eq!(def.selectable_fields, ["spec.color"]);
        assert!(go_duration_ok("1h30m") && go_duration_ok("-1.5s") && go_duration_ok("0") && !go_duration_ok("5 minutes"));
    }
}
