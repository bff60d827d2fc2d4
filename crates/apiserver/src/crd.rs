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
        if v.pointer("/schema/openAPIV3Schema").is_none() {
            causes.push(Cause::required(format!("spec.versions[{i}].schema.openAPIV3Schema")));
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
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let shown: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        causes.push(Cause { reason: "FieldValueNotSupported", field: field.clone(), message: format!("Unsupported value: {value}: supported values: {}", shown.join(", ")) });
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            causes.push(Cause::invalid(field.clone(), value, format!("{path} in body should be greater than or equal to {min}")));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            causes.push(Cause::invalid(field.clone(), value, format!("{path} in body should be less than or equal to {max}")));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            causes.push(Cause::invalid(field.clone(), value, format!("{path} in body should be at least {min} chars long")));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            causes.push(Cause { reason: "FieldValueTooLong", field: field.clone(), message: format!("Too long: may not be more than {max} bytes") });
        }
    }
    match value {
        Value::Object(map) => check_object(schema, map, path, causes, unknown),
        Value::Array(items) => {
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                causes.push(Cause::invalid(field.clone(), &json!(items.len()), format!("{path} in body should have at least {min} items")));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && (items.len() as u64) > max
            {
                causes.push(Cause { reason: "FieldValueTooMany", field: field.clone(), message: format!("Too many: {}: must have at most {max} items", items.len()) });
            }
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
