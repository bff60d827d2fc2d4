//! The resource quota controller: keeps `status.hard` and `status.used` of every ResourceQuota,
//! counting what its namespace holds for each resource the quota names: object counts
//! (`pods`, `services`, `count/deployments.apps`, ...) and compute requests and limits of pods
//! that are not finished. (Refusing writes over quota is the API server's admission, not this.)

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use serde_json::json;

const PERIOD: Duration = Duration::from_secs(5);

pub async fn run(client: Client) {
    let mut ticker = tokio::time::interval(PERIOD);
    loop {
        ticker.tick().await;
        let quotas: Api<ResourceQuota> = Api::all(client.clone());
        let Ok(list) = quotas.list(&ListParams::default()).await else { continue };
        for quota in list.items {
            if let Err(error) = sync(&client, &quota).await {
                tracing::debug!(%error, quota = %quota.name_any(), "quota usage update failed");
            }
        }
    }
}

/// Parses a quantity into thousandths of its unit (milli-cores, milli-bytes), enough precision
/// for requests and limits.
pub fn milli(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some((value * factor * 1000.0).round() as i128)
}

/// Renders thousandths back in the shortest exact form (binary or decimal suffix, whichever is
/// shorter: 256Mi, 2G), milli for fractions.
pub fn render(milli: i128) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let whole = milli / 1000;
    if whole == 0 {
        return "0".into();
    }
    let largest = |units: &[(&str, i128)]| units.iter().find(|(_, unit)| whole % unit == 0 && whole >= *unit).map(|(suffix, unit)| format!("{}{suffix}", whole / unit));
    let binary = largest(&[("Ei", 1 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)]);
    let decimal = largest(&[("E", 10i128.pow(18)), ("P", 10i128.pow(15)), ("T", 10i128.pow(12)), ("G", 10i128.pow(9)), ("M", 10i128.pow(6)), ("k", 1000)]);
    [binary, decimal].into_iter().flatten().min_by_key(String::len).unwrap_or_else(|| whole.to_string())
}

fn pod_amount(pod: &Pod, kind: &str, resource: &str) -> i128 {
    let Some(spec) = &pod.spec else { return 0 };
    let of = |c: &k8s_openapi::api::core::v1::Container| -> i128 {
        let map = c.resources.as_ref().and_then(|r| if kind == "limits" { r.limits.as_ref() } else { r.requests.as_ref() });
        map.and_then(|m| m.get(resource)).and_then(|q| milli(&q.0)).unwrap_or(0)
    };
    let sum: i128 = spec.containers.iter().map(of).sum();
    let init = spec.init_containers.iter().flatten().map(of).max().unwrap_or(0);
    let overhead = spec.overhead.as_ref().and_then(|o| o.get(resource)).and_then(|q| milli(&q.0)).unwrap_or(0);
    sum.max(init) + overhead
}

fn counted_resource(name: &str) -> Option<(String, String, String)> {
    // (group, version, plural) of legacy names and `count/<plural>.<group>`.
    let legacy = match name {
        "pods" | "services" | "configmaps" | "secrets" | "persistentvolumeclaims" | "replicationcontrollers" | "resourcequotas" => Some(name),
        _ => None,
    };
    if let Some(plural) = legacy {
        return Some((String::new(), "v1".into(), plural.into()));
    }
    let rest = name.strip_prefix("count/")?;
    let (plural, group) = rest.split_once('.').unwrap_or((rest, ""));
    let version = match group {
        "" | "apps" | "batch" | "rbac.authorization.k8s.io" | "networking.k8s.io" | "policy" | "coordination.k8s.io" | "discovery.k8s.io" | "storage.k8s.io" | "scheduling.k8s.io" => "v1",
        "autoscaling" => "v2",
        _ => "v1",
    };
    Some((group.into(), version.into(), plural.into()))
}

async fn sync(client: &Client, quota: &ResourceQuota) -> Result<(), kube::Error> {
    let ns = quota.namespace().unwrap_or_default();
    let hard: BTreeMap<String, Quantity> = quota.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
    let pods: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items;
    let live: Vec<&Pod> = pods.iter().filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))).collect();
    let mut used: BTreeMap<String, Quantity> = BTreeMap::new();
    for name in hard.keys() {
        let amount = match name.as_str() {
            "pods" | "count/pods" => Some(live.len() as i128 * 1000),
            "cpu" | "requests.cpu" => Some(live.iter().map(|p| pod_amount(p, "requests", "cpu")).sum()),
            "memory" | "requests.memory" => Some(live.iter().map(|p| pod_amount(p, "requests", "memory")).sum()),
            "ephemeral-storage" | "requests.ephemeral-storage" => Some(live.iter().map(|p| pod_amount(p, "requests", "ephemeral-storage")).sum()),
            "limits.cpu" => Some(live.iter().map(|p| pod_amount(p, "limits", "cpu")).sum()),
            "limits.memory" => Some(live.iter().map(|p| pod_amount(p, "limits", "memory")).sum()),
            "limits.ephemeral-storage" => Some(live.iter().map(|p| pod_amount(p, "limits", "ephemeral-storage")).sum()),
            other => match counted_resource(other) {
                Some((group, version, plural)) => {
                    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, &version, ""), &plural);
                    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
                    match api.list_metadata(&ListParams::default()).await {
                        Ok(list) => Some(list.items.len() as i128 * 1000),
                        Err(_) => None,
                    }
                }
                None => None,
            },
        };
        if let Some(amount) = amount {
            used.insert(name.clone(), Quantity(render(amount)));
        }
    }
    let status = quota.status.clone().unwrap_or_default();
    if status.hard.as_ref() == Some(&hard) && status.used.as_ref() == Some(&used) {
        return Ok(());
    }
    let api: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
    api.patch_status(&quota.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": {"hard": hard, "used": used}}))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_add_up_and_render_canonically() {
        assert_eq!(milli("100m"), Some(100));
        assert_eq!(milli("1.5"), Some(1500));
        assert_eq!(milli("128Mi"), Some(128 * 1024 * 1024 * 1000));
        assert_eq!(render(milli("100Mi").unwrap() + milli("156Mi").unwrap()), "256Mi");
        assert_eq!(render(milli("250m").unwrap() * 4), "1");
        assert_eq!(render(milli("250m").unwrap() * 3), "750m");
        assert_eq!(render(milli("1G").unwrap() * 2), "2G");
        assert_eq!(render(3000), "3");
    }
}
