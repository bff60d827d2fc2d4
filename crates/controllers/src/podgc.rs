//! The pod garbage collector: force-deletes pods that no kubelet will ever finish: pods bound to
//! nodes that no longer exist, and terminating pods that were never scheduled; and deletes the
//! oldest terminated pods beyond a threshold (upstream's --terminated-pod-gc-threshold).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::{Client, ResourceExt};

use crate::cached_pod::CachedPod;
use crate::cache::Cache;

const PERIOD: Duration = Duration::from_secs(10);
/// A node must stay missing this long before its pods are removed: a node being re-registered or
/// a cache catching up is not a node that is gone.
const QUARANTINE: Duration = Duration::from_secs(40);
pub const TERMINATED_THRESHOLD: usize = 12_500;

pub async fn run(client: Client) {
    let nodes = Cache::<Node>::spawn(Api::all(client.clone()), Box::new(|_, _| {}));
    let pods = Cache::<CachedPod>::spawn(Api::all(client.clone()), Box::new(|_, _| {}));
    nodes.synced().await;
    pods.synced().await;
    let mut missing_since: std::collections::HashMap<String, Instant> = std::collections::HashMap::new();
    let mut ticker = tokio::time::interval(PERIOD);
    loop {
        ticker.tick().await;
        let existing: HashSet<String> = nodes.all().iter().map(|n| n.name_any()).collect();
        let all = pods.all();
        let mut terminated = Vec::new();
        let mut doomed = Vec::new();
        let mut still_missing = HashSet::new();
        for pod in &all {
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
            match &node {
                Some(n) if !existing.contains(n) => {
                    still_missing.insert(n.clone());
                    if missing_since.entry(n.clone()).or_insert_with(Instant::now).elapsed() >= QUARANTINE {
                        doomed.push((pod.clone(), "its node no longer exists"));
                    }
                }
                None if pod.metadata.deletion_timestamp.is_some() => doomed.push((pod.clone(), "it is terminating and was never scheduled")),
                _ => {}
            }
            if phase == "Succeeded" || phase == "Failed" {
                terminated.push(pod.clone());
            }
        }
        missing_since.retain(|n, _| still_missing.contains(n));
        if terminated.len() > TERMINATED_THRESHOLD {
            terminated.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            let excess = terminated.len() - TERMINATED_THRESHOLD;
            doomed.extend(terminated.into_iter().take(excess).map(|p| (p, "too many terminated pods")));
        }
        for (pod, why) in doomed {
            let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
            let params = DeleteParams { grace_period_seconds: Some(0), preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }), ..Default::default() };
            match api.delete(&pod.name_any(), &params).await {
                Ok(_) => tracing::info!(pod = %pod.name_any(), why, "pod garbage collected"),
                Err(error) => tracing::debug!(%error, pod = %pod.name_any(), "pod garbage collection failed"),
            }
        }
    }
}
