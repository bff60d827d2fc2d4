//! pods/eviction: a delete that respects PodDisruptionBudgets (what `kubectl drain` uses). A pod
//! covered by a budget with no disruption left is refused with 429; otherwise the budget's
//! allowance is taken (compare-and-swap on its status, so two evictions cannot both use the last
//! one) and the pod is deleted.

use serde_json::{Value, json};

use crate::api::{Api, DeleteOptions, Part, WriteOptions};
use crate::objects;
use crate::resources::ResourceDef;
use crate::selection::LabelSelector;
use crate::status::{ApiError, ApiResult};

pub async fn evict(api: &Api, pod_def: &ResourceDef, ns: Option<&str>, name: &str, eviction: &Value, dry_run: bool) -> ApiResult<Value> {
    let pod = api.get(pod_def, ns, name).await?;
    let mut opts = DeleteOptions { dry_run, ..Default::default() };
    if let Some(body) = eviction.get("deleteOptions").filter(|o| o.is_object()) {
        opts.merge_body(body)?;
    }
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
    // Upstream lets pods that serve nothing go without consulting budgets.
    let ignore_budgets = objects::is_deleting(&pod) || matches!(phase, "Succeeded" | "Failed" | "Pending");
    if !ignore_budgets {
        take_disruption(api, ns.unwrap_or(""), &pod, dry_run).await?;
    }
    api.delete(pod_def, ns, name, &opts).await?;
    Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}))
}

async fn take_disruption(api: &Api, ns: &str, pod: &Value, dry_run: bool) -> ApiResult<()> {
    let Some(pdb_def) = api.registry.get("policy", "v1", "poddisruptionbudgets") else { return Ok(()) };
    let page = api.range(&pdb_def, pdb_def.namespace_prefix(ns), None, 0, None).await?;
    let empty = serde_json::Map::new();
    let labels = objects::labels(pod).unwrap_or(&empty);
    let mut covering = Vec::new();
    for kv in &page.kvs {
        let pdb = objects::decode(kv).map_err(ApiError::internal)?;
        let Some(selector) = pdb.pointer("/spec/selector") else { continue };
        if LabelSelector::from_value(selector).is_some_and(|sel| sel.matches(labels)) {
            covering.push(pdb);
        }
    }
    let pdb = match covering.len() {
        0 => return Ok(()),
        1 => covering.remove(0),
        _ => return Err(ApiError::internal("This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.")),
    };
    let pdb_name = objects::name(&pdb).to_string();
    let pod_name = objects::name(pod).to_string();
    let refuse = |pdb: &Value| -> Option<ApiError> {
        let status = pdb.get("status")?;
        let observed = status.get("observedGeneration").and_then(Value::as_i64).unwrap_or(0);
        let generation = pdb.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
        if observed < generation {
            return Some(ApiError::too_many_requests("Cannot evict pod as it would violate the pod's disruption budget."));
        }
        let allowed = status.get("disruptionsAllowed").and_then(Value::as_i64).unwrap_or(0);
        if allowed > 0 {
            return None;
        }
        let desired = status.get("desiredHealthy").and_then(Value::as_i64).unwrap_or(0);
        let current = status.get("currentHealthy").and_then(Value::as_i64).unwrap_or(0);
        let mut err = ApiError::too_many_requests("Cannot evict pod as it would violate the pod's disruption budget.");
        err.details = Some(json!({"causes": [{"reason": "DisruptionBudget", "message": format!("The disruption budget {} needs {desired} healthy pods and has {current} currently", objects::name(pdb))}]}));
        Some(err)
    };
    if pdb.get("status").is_none() {
        // No controller has looked at the budget yet: upstream refuses until it has.
        return Err(ApiError::too_many_requests("Cannot evict pod as it would violate the pod's disruption budget."));
    }
    if let Some(err) = refuse(&pdb) {
        return Err(err);
    }
    if dry_run {
        return Ok(());
    }
    let now = objects::now_rfc3339();
    let take = move |current: Option<&Value>| -> ApiResult<Value> {
        let mut pdb = current.cloned().ok_or_else(|| ApiError::too_many_requests("the disruption budget is gone; retry"))?;
        if let Some(err) = refuse(&pdb) {
            return Err(err);
        }
        let allowed = pdb.pointer("/status/disruptionsAllowed").and_then(Value::as_i64).unwrap_or(0);
        pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
        if !pdb["status"]["disruptedPods"].is_object() {
            pdb["status"]["disruptedPods"] = json!({});
        }
        pdb["status"]["disruptedPods"][&pod_name] = json!(now);
        Ok(pdb)
    };
    api.patch(&pdb_def, Some(ns), &pdb_name, Part::Status, &WriteOptions::default(), &take).await?;
    Ok(())
}
