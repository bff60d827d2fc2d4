//! The pod garbage collector: force-deletes pods that no kubelet will ever finish: pods bound to
//! nodes that no longer exist, and terminating pods that were never scheduled; and deletes the
//! oldest terminated pods beyond a threshold (upstream's --terminated-pod-gc-threshold).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
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
/// Upstream's default `--terminated-pod-gc-threshold`.
pub const TERMINATED_THRESHOLD: usize = 12_500;

pub async fn run(client: Client, terminated_threshold: usize) {
    let nodes = Cache::<Node>::spawn(Api::all(client.clone()), Box::new(|_, _| {}));
    let pods = Cache::<CachedPod>::spawn(Api::all(client.clone()), Box::new(|_, _| {}));
    nodes.synced().await;
    pods.synced().await;
    let mut missing_since: HashMap<String, Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(PERIOD);
    loop {
        ticker.tick().await;
        let existing: HashSet<String> = nodes.all().iter().map(|n| n.name_any()).collect();
        for (pod, why) in doomed(&pods.all(), &existing, &mut missing_since, Instant::now(), terminated_threshold) {
            let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
            let params = DeleteParams { grace_period_seconds: Some(0), preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }), ..Default::default() };
            match api.delete(&pod.name_any(), &params).await {
                Ok(_) => tracing::info!(pod = %pod.name_any(), why, "pod garbage collected"),
                Err(error) => tracing::debug!(%error, pod = %pod.name_any(), "pod garbage collection failed"),
            }
        }
    }
}

/// One pass's decision: the pods to force-delete, and why. `missing_since` carries, between
/// passes, when each missing node was first seen missing (the quarantine); `now` is this pass.
fn doomed(all: &[Arc<CachedPod>], existing: &HashSet<String>, missing_since: &mut HashMap<String, Instant>, now: Instant, threshold: usize) -> Vec<(Arc<CachedPod>, &'static str)> {
    let mut terminated = Vec::new();
    let mut doomed = Vec::new();
    let mut still_missing = HashSet::new();
    for pod in all {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
        match &node {
            Some(n) if !existing.contains(n) => {
                still_missing.insert(n.clone());
                if now.duration_since(*missing_since.entry(n.clone()).or_insert(now)) >= QUARANTINE {
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
    if terminated.len() > threshold {
        // Oldest first, the name breaking ties as upstream's byEvictionAndCreationTimestamp does:
        // the cache lists pods in no particular order, so equal timestamps alone would pick
        // arbitrarily. (Upstream also puts evicted pods first; the cached pod keeps no status
        // reason to tell them by.)
        terminated.sort_by(|a, b| {
            let created = |p: &CachedPod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(a).cmp(&created(b)).then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        let excess = terminated.len() - threshold;
        doomed.extend(terminated.into_iter().take(excess).map(|p| (p, "too many terminated pods")));
    }
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn pod(name: &str, node: Option<&str>, phase: &str, created: i64) -> Arc<CachedPod> {
        let created = jiff::Timestamp::from_second(created).unwrap().to_string();
        Arc::new(serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase},
        }))
        .unwrap())
    }

    fn terminating(name: &str, node: Option<&str>) -> Arc<CachedPod> {
        let mut p = (*pod(name, node, "Pending", 1)).clone();
        p.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::from_second(2).unwrap()));
        Arc::new(p)
    }

    fn nodes(names: &[&str]) -> HashSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn names(doomed: &[(Arc<CachedPod>, &'static str)]) -> Vec<String> {
        doomed.iter().map(|(p, _)| p.name_any()).collect()
    }

    #[test]
    fn only_the_oldest_terminated_pods_beyond_the_threshold_go() {
        let pods = vec![
            pod("new-ok", Some("n"), "Succeeded", 500),
            pod("old-fail", Some("n"), "Failed", 100),
            pod("running", Some("n"), "Running", 1),
            pod("pending", None, "Pending", 2),
            pod("mid-ok", Some("n"), "Succeeded", 300),
            pod("oldest-ok", Some("n"), "Succeeded", 50),
        ];
        let mut missing = HashMap::new();
        let now = Instant::now();
        // Four terminated pods against a threshold of two: the two oldest go, nothing running.
        let gone = doomed(&pods, &nodes(&["n"]), &mut missing, now, 2);
        assert_eq!(names(&gone), ["oldest-ok", "old-fail"]);
        assert!(gone.iter().all(|(_, why)| *why == "too many terminated pods"));
        // At or under the threshold, none.
        assert!(doomed(&pods, &nodes(&["n"]), &mut missing, now, 4).is_empty());
        assert!(doomed(&pods, &nodes(&["n"]), &mut missing, now, 5).is_empty());
        // Threshold zero: every terminated pod, oldest first.
        assert_eq!(names(&doomed(&pods, &nodes(&["n"]), &mut missing, now, 0)), ["oldest-ok", "old-fail", "mid-ok", "new-ok"]);
    }

    #[test]
    fn terminated_pods_created_together_go_by_name() {
        let pods = vec![pod("c", Some("n"), "Failed", 7), pod("a", Some("n"), "Failed", 7), pod("b", Some("n"), "Failed", 7)];
        let gone = doomed(&pods, &nodes(&["n"]), &mut HashMap::new(), Instant::now(), 1);
        assert_eq!(names(&gone), ["a", "b"]);
    }

    #[test]
    fn pods_on_a_vanished_node_go_once_it_stays_gone_past_quarantine() {
        let pods = vec![pod("orphan", Some("gone"), "Running", 1), pod("home", Some("here"), "Running", 1), pod("unbound", None, "Pending", 1)];
        let existing = nodes(&["here"]);
        let mut missing = HashMap::new();
        let t0 = Instant::now();
        assert!(doomed(&pods, &existing, &mut missing, t0, TERMINATED_THRESHOLD).is_empty(), "a node just missed may be re-registering");
        assert!(doomed(&pods, &existing, &mut missing, t0 + QUARANTINE / 2, TERMINATED_THRESHOLD).is_empty());
        let gone = doomed(&pods, &existing, &mut missing, t0 + QUARANTINE, TERMINATED_THRESHOLD);
        assert_eq!(names(&gone), ["orphan"]);
        assert_eq!(gone[0].1, "its node no longer exists");
    }

    #[test]
    fn a_node_that_comes_back_restarts_its_quarantine() {
        let pods = vec![pod("p", Some("flaky"), "Running", 1)];
        let mut missing = HashMap::new();
        let t0 = Instant::now();
        assert!(doomed(&pods, &nodes(&[]), &mut missing, t0, TERMINATED_THRESHOLD).is_empty());
        assert!(doomed(&pods, &nodes(&["flaky"]), &mut missing, t0 + QUARANTINE / 2, TERMINATED_THRESHOLD).is_empty());
        assert!(missing.is_empty(), "a node seen again leaves quarantine");
        // Missing again: the clock starts over from here, not from t0.
        assert!(doomed(&pods, &nodes(&[]), &mut missing, t0 + QUARANTINE, TERMINATED_THRESHOLD).is_empty());
        assert_eq!(names(&doomed(&pods, &nodes(&[]), &mut missing, t0 + QUARANTINE * 2, TERMINATED_THRESHOLD)), ["p"]);
    }

    #[test]
    fn unscheduled_terminating_pods_go_at_once() {
        let pods = vec![terminating("never-bound", None), terminating("bound", Some("n")), pod("waiting", None, "Pending", 1)];
        let gone = doomed(&pods, &nodes(&["n"]), &mut HashMap::new(), Instant::now(), TERMINATED_THRESHOLD);
        assert_eq!(names(&gone), ["never-bound"], "a bound pod is its kubelet's to finish; a pending one is the scheduler's");
        assert_eq!(gone[0].1, "it is terminating and was never scheduled");
    }
}
