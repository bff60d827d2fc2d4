//! pods/binding: how a scheduler assigns a pod to a node. Sets `spec.nodeName` once, and records
//! the PodScheduled condition, exactly once per pod.

use serde_json::{Value, json};

use crate::api::{Api, Part, WriteOptions};
use crate::objects;
use crate::resources::ResourceDef;
use crate::status::{ApiError, ApiResult, Cause};

pub async fn bind(api: &Api, def: &ResourceDef, ns: Option<&str>, name: &str, binding: &Value) -> ApiResult<Value> {
    let node = binding.pointer("/target/name").and_then(Value::as_str).unwrap_or("").to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(def, name, vec![Cause::required("target.name")]));
    }
    let binding_name = objects::name(binding);
    if !binding_name.is_empty() && binding_name != name {
        return Err(ApiError::bad_request("the name of the binding must match the name of the pod"));
    }
    let node_for_patch = node.clone();
    let pod_def = def.clone();
    let patch = move |current: Option<&Value>| -> ApiResult<Value> {
        let mut pod = current.cloned().ok_or_else(|| ApiError::not_found(&pod_def, name))?;
        if objects::is_deleting(&pod) {
            return Err(ApiError::conflict(&pod_def, name, "pod is being deleted, cannot be assigned to a host"));
        }
        let existing = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
        if !existing.is_empty() {
            return Err(ApiError::conflict(&pod_def, name, &format!("pod {name} is already assigned to node \"{existing}\"")));
        }
        pod["spec"]["nodeName"] = json!(node_for_patch);
        // Written as the typed round trip would leave it (no null lastProbeTime): the write
        // skips that round trip.
        let condition = json!({"lastTransitionTime": objects::now_rfc3339(), "status": "True", "type": "PodScheduled"});
        let conditions = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let mut conditions: Vec<Value> = conditions.into_iter().filter(|c| c.get("type") != Some(&json!("PodScheduled"))).collect();
        conditions.push(condition);
        pod["status"]["conditions"] = json!(conditions);
        Ok(pod)
    };
    // nodeName is spec and the condition is status: both go in one compare-and-swap.
    let options = WriteOptions { server_built: true, ..WriteOptions::default() };
    api.patch(def, ns, name, Part::All, &options, &patch).await?;
    Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}))
}
