//! Requests and limits turned into cgroup settings through CRI, and QoS classes, as the kubelet
//! computes them (cpu shares from requests, CFS quota from limits, memory limit, OOM score).

use k8s_openapi::api::core::v1::{Container, Pod};
use scheduler::quantity;

use crate::cri::api;

const CPU_PERIOD_US: i64 = 100_000;
const MIN_SHARES: i64 = 2;
const MIN_QUOTA_US: i64 = 1_000;

fn amount(container: &Container, kind: &str, resource: &str, milli: bool) -> Option<i64> {
    let resources = container.resources.as_ref()?;
    let map = match kind {
        "limits" => resources.limits.as_ref(),
        _ => resources.requests.as_ref(),
    }?;
    let text = &map.get(resource)?.0;
    if milli { quantity::parse_milli(text).ok() } else { quantity::parse_value(text).ok() }
}

/// Upstream's QoS: Guaranteed when every container limits cpu and memory and requests equal
/// limits; BestEffort when nothing requests or limits cpu or memory; Burstable otherwise.
pub fn qos_class(pod: &Pod) -> &'static str {
    let containers: Vec<&Container> = crate::env::all_containers(pod).collect();
    let mut any = false;
    let mut guaranteed = true;
    for container in &containers {
        for resource in ["cpu", "memory"] {
            let milli = resource == "cpu";
            let limit = amount(container, "limits", resource, milli);
            // An unset request defaults to the limit (API defaulting does the same).
            let request = amount(container, "requests", resource, milli).or(limit);
            if limit.is_some() || request.is_some_and(|r| r > 0) {
                any = true;
            }
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The container's cgroup settings. `node_memory` (bytes) scales the OOM score of Burstable pods.
pub fn linux_resources(pod: &Pod, container: &Container, node_memory: i64) -> api::LinuxContainerResources {
    let cpu_limit = amount(container, "limits", "cpu", true);
    let cpu_request = amount(container, "requests", "cpu", true).or(cpu_limit);
    let memory_limit = amount(container, "limits", "memory", false);
    let memory_request = amount(container, "requests", "memory", false).or(memory_limit).unwrap_or(0);
    let shares = cpu_request.map(|m| (m * 1024 / 1000).max(MIN_SHARES)).unwrap_or(MIN_SHARES);
    let (period, quota) = match cpu_limit {
        Some(milli) => (CPU_PERIOD_US, (milli * CPU_PERIOD_US / 1000).max(MIN_QUOTA_US)),
        None => (0, 0),
    };
    let oom_score_adj = match qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let score = if node_memory > 0 { 1000 - (1000 * memory_request) / node_memory } else { 999 };
            score.clamp(2, 999)
        }
    };
    api::LinuxContainerResources {
        cpu_period: period,
        cpu_quota: quota,
        cpu_shares: shares,
        memory_limit_in_bytes: memory_limit.unwrap_or(0),
        oom_score_adj,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(resources: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "resources": resources}]}})).unwrap()
    }

    #[test]
    fn classes_and_cgroup_values() {
        let best = pod(serde_json::json!({}));
        assert_eq!(qos_class(&best), "BestEffort");
        let r = linux_resources(&best, &best.spec.as_ref().unwrap().containers[0], 8 << 30);
        assert_eq!((r.cpu_shares, r.cpu_quota, r.memory_limit_in_bytes, r.oom_score_adj), (2, 0, 0, 1000));

        let guaranteed = pod(serde_json::json!({"limits": {"cpu": "500m", "memory": "64Mi"}}));
        assert_eq!(qos_class(&guaranteed), "Guaranteed");
        let r = linux_resources(&guaranteed, &guaranteed.spec.as_ref().unwrap().containers[0], 8 << 30);
        assert_eq!((r.cpu_shares, r.cpu_period, r.cpu_quota, r.memory_limit_in_bytes, r.oom_score_adj), (512, 100_000, 50_000, 64 << 20, -997));

        let burstable = pod(serde_json::json!({"requests": {"memory": "1Gi"}}));
        assert_eq!(qos_class(&burstable), "Burstable");
        let r = linux_resources(&burstable, &burstable.spec.as_ref().unwrap().containers[0], 4 << 30);
        assert_eq!(r.oom_score_adj, 750);
    }
}
