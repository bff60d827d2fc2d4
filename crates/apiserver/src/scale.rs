//! The scale subresource: an autoscaling/v1 Scale view of any resource with replicas, as
//! `kubectl scale` and autoscalers use it.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::api::{Part, WriteOptions};
use crate::http::Server;
use crate::objects;
use crate::resources::ResourceDef;
use crate::status::{ApiError, ApiResult, Cause};
use crate::api::Api;

fn pointer(path: &str) -> String {
    path.replace('.', "/")
}

/// metav1.FormatLabelSelector: `a=b,c in (d,e)`.
pub fn format_selector(selector: &Value) -> String {
    let mut parts = Vec::new();
    // RC selectors are plain maps; the others are LabelSelectors.
    let labels = selector.get("matchLabels").or(if selector.get("matchExpressions").is_none() { Some(selector) } else { None });
    if let Some(map) = labels.and_then(Value::as_object) {
        for (k, v) in map {
            if let Some(v) = v.as_str() {
                parts.push(format!("{k}={v}"));
            }
        }
    }
    for expr in selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let key = expr.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = expr.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        match expr.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

pub fn to_scale(def: &ResourceDef, obj: &Value) -> Value {
    let paths = def.scale.clone().unwrap_or_else(|| crate::resources::ScalePaths {
        spec_replicas: ".spec.replicas".into(),
        status_replicas: ".status.replicas".into(),
        label_selector: None,
    });
    let spec_replicas = obj.pointer(&pointer(&paths.spec_replicas)).and_then(Value::as_i64).unwrap_or(0);
    let status_replicas = obj.pointer(&pointer(&paths.status_replicas)).and_then(Value::as_i64).unwrap_or(0);
    let selector = if def.custom {
        paths.label_selector.as_deref().and_then(|p| obj.pointer(&pointer(p))).and_then(Value::as_str).map(str::to_string)
    } else {
        obj.pointer("/spec/selector").map(format_selector)
    };
    let meta = objects::metadata(obj).cloned().unwrap_or_default();
    let mut scale_meta = serde_json::Map::new();
    for field in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = meta.get(field) {
            scale_meta.insert(field.into(), v.clone());
        }
    }
    let mut status = json!({"replicas": status_replicas});
    if let Some(sel) = selector.filter(|s| !s.is_empty()) {
        status["selector"] = json!(sel);
    }
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": scale_meta, "spec": {"replicas": spec_replicas}, "status": status})
}

fn replicas_of(def: &ResourceDef, scale: &Value, name: &str) -> ApiResult<i64> {
    let replicas = scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
    if replicas < 0 {
        let scale_def = ResourceDef { kind: "Scale".into(), group: "autoscaling".into(), ..def.clone() };
        return Err(ApiError::invalid(&scale_def, name, vec![Cause::invalid("spec.replicas", &json!(replicas), "must be greater than or equal to 0")]));
    }
    Ok(replicas)
}

/// Sets the object's replicas from a Scale, guarded by the Scale's resourceVersion if given.
async fn write_replicas(api: &Api, def: &ResourceDef, ns: Option<&str>, name: &str, scale: &Value, opts: &WriteOptions) -> ApiResult<Value> {
    let replicas = replicas_of(def, scale, name)?;
    let paths = def.scale.clone().ok_or_else(|| ApiError::not_found_path("scale"))?;
    let rv = scale.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    let spec_pointer = pointer(&paths.spec_replicas);
    let patch = move |current: Option<&Value>| -> ApiResult<Value> {
        let mut obj = current.cloned().ok_or_else(|| ApiError::not_found_path(""))?;
        if let Some(rv) = &rv {
            objects::metadata_mut(&mut obj).insert("resourceVersion".into(), json!(rv));
        }
        set_pointer(&mut obj, &spec_pointer, json!(replicas));
        Ok(obj)
    };
    let written = api.patch(def, ns, name, Part::Main, opts, &patch).await?;
    Ok(to_scale(def, &written.object))
}

fn set_pointer(obj: &mut Value, pointer: &str, value: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = pointer.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            cur[*part] = value;
            return;
        }
        if !cur.get(*part).is_some_and(Value::is_object) {
            cur[*part] = json!({});
        }
        cur = &mut cur[*part];
    }
}

pub async fn update(api: &Api, def: &ResourceDef, ns: Option<&str>, name: &str, scale: Value, opts: &WriteOptions) -> ApiResult<Value> {
    write_replicas(api, def, ns, name, &scale, opts).await
}

pub async fn patch(server: &Arc<Server>, def: &ResourceDef, ns: Option<&str>, name: &str, content_type: &str, raw: &[u8], opts: &WriteOptions) -> ApiResult<Value> {
    let current = server.api.get(def, ns, name).await?;
    let scale = to_scale(def, &current);
    let target = crate::patching::Target { definition: "io.k8s.api.autoscaling.v1.Scale", api_version: "autoscaling/v1", kind: "Scale", subresource: "scale" };
    let patched = crate::patching::apply_to(server, &target, &scale, content_type, raw, opts)?;
    write_replicas(&server.api, def, ns, name, &patched, opts).await
}
