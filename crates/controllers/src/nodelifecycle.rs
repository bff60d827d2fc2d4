//! The node lifecycle controller: a node whose kubelet stops renewing its Lease (and posting
//! status) for the grace period becomes Unknown and tainted `node.kubernetes.io/unreachable`; a
//! node reporting Ready=False is tainted `node.kubernetes.io/not-ready`. Pods on a node with
//! NoExecute taints are evicted once they stop tolerating them (immediately, or after their
//! `tolerationSeconds`, 300 s by default through admission), and are marked not Ready so
//! Services stop sending them traffic. When the node comes back, the taints go. Memory, disk and
//! PID pressure reported by the node's agent become NoSchedule taints of their own.
//!
//! Events follow kube-controller-manager: the node lifecycle controller ("node-controller")
//! says RegisteredNode/RemovingNode and NodeNotReady on nodes and NodeNotReady on their pods;
//! evictions are told by the taint eviction controller ("taint-eviction-controller"), which
//! upstream runs apart since 1.29: "Marking for deletion" when a pod is deleted, and
//! "Cancelling deletion" when a pod whose eviction was scheduled is spared after all (its node's
//! taints went, or it now tolerates them for good). The node's own NodeReady/NodeNotReady are
//! the kubelet's (the agent's); this controller says NodeNotReady only when it marks a silent
//! node Unknown itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, ObjectReference, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::cached_pod::CachedPod;
use crate::cache::Cache;
use crate::events::Recorder;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// NoSchedule taints for conditions the kubelet reports (upstream's TaintNodesByCondition).
const CONDITION_TAINTS: [(&str, &str); 3] =
    [("MemoryPressure", "node.kubernetes.io/memory-pressure"), ("DiskPressure", "node.kubernetes.io/disk-pressure"), ("PIDPressure", "node.kubernetes.io/pid-pressure")];
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How often nodes are checked (upstream's --node-monitor-period).
const MONITOR_PERIOD: Duration = Duration::from_secs(2);

pub async fn run(client: Client, grace_period: Duration) {
    let nodes = Cache::<Node>::spawn(Api::all(client.clone()), Box::new(|_, _| {}));
    let leases = Cache::<Lease>::spawn(Api::namespaced(client.clone(), LEASE_NAMESPACE), Box::new(|_, _| {}));
    let pods = Cache::<CachedPod>::spawn(Api::all(client.clone()), Box::new(|_, _| {}));
    nodes.synced().await;
    leases.synced().await;
    pods.synced().await;
    // A node first seen now gets a full grace period, even if its last heartbeat is old (the
    // controller may have been down, not the node).
    let started = jiff::Timestamp::now();
    let recorder = Recorder::new(client.clone(), "node-controller");
    let evictions = Recorder::new(client.clone(), "taint-eviction-controller");
    let mut known: HashSet<String> = HashSet::new();
    let mut pending = Pending::new();
    let mut ticker = tokio::time::interval(MONITOR_PERIOD);
    loop {
        ticker.tick().await;
        let now = jiff::Timestamp::now();
        let all = nodes.all();
        track_registrations(&recorder, &mut known, &all);
        for node in all {
            if let Err(error) = check_node(&client, &recorder, &node, &leases, grace_period, started, now).await {
                tracing::debug!(%error, node = %node.name_any(), "node health update failed");
            }
        }
        evict(&client, &recorder, &evictions, &nodes, &pods, &mut pending, now).await;
    }
}

/// A reference to a node as upstream's node events carry it: no namespace (the recorder files
/// the event in "default") and no resourceVersion.
fn node_ref(name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference { api_version: Some("v1".into()), kind: Some("Node".into()), name: Some(name.into()), uid, ..Default::default() }
}

/// Upstream's RegisteredNode/RemovingNode. As there, a controller that starts (or a new leader)
/// registers every node it finds.
fn track_registrations(recorder: &Recorder, known: &mut HashSet<String>, nodes: &[Arc<Node>]) {
    let present: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    for node in nodes {
        let name = node.name_any();
        if !known.contains(&name) {
            recorder.record_for(node_ref(&name, node.uid()), "Normal", "RegisteredNode", format!("Node {name} event: Registered Node {name} in Controller"));
        }
    }
    for name in known.difference(&present) {
        // The node is gone; its uid with it.
        recorder.record_for(node_ref(name, None), "Normal", "RemovingNode", format!("Node {name} event: Removing Node {name} from Controller"));
    }
    *known = present;
}

fn last_heartbeat(node: &Node, leases: &Cache<Lease>) -> Option<jiff::Timestamp> {
    let lease = leases.get(LEASE_NAMESPACE, &node.name_any()).and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
    let posted = node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
    lease.into_iter().chain(posted).max()
}

fn ready_status(node: &Node) -> &str {
    node.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready")).map(|c| c.status.as_str()).unwrap_or("Unknown")
}

async fn check_node(client: &Client, recorder: &Recorder, node: &Node, leases: &Cache<Lease>, grace: Duration, started: jiff::Timestamp, now: jiff::Timestamp) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let heartbeat = last_heartbeat(node, leases).unwrap_or(jiff::Timestamp::UNIX_EPOCH).max(started);
    let silent = now.duration_since(heartbeat).as_secs_f64() > grace.as_secs_f64();
    let ready = ready_status(node);
    if silent && ready != "Unknown" {
        // Upstream's wording, on every condition the kubelet owns.
        let conditions: Vec<NodeCondition> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|mut c| {
                if matches!(c.type_.as_str(), "Ready" | "MemoryPressure" | "DiskPressure" | "PIDPressure") {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(Time(now));
                }
                c
            })
            .collect();
        api.patch_status(&node.name_any(), &PatchParams::default(), &Patch::Strategic(json!({"status": {"conditions": conditions}}))).await?;
        tracing::info!(node = %node.name_any(), "node stopped posting status; marked Unknown");
        // Only the change this controller makes is its to tell; a NotReady the node reports
        // itself is the kubelet's event upstream.
        if ready == "True" {
            let name = node.name_any();
            recorder.record_for(node_ref(&name, node.uid()), "Normal", "NodeNotReady", format!("Node {name} status is now: NodeNotReady"));
        }
    }
    let effective = if silent { "Unknown" } else { ready };
    let mut wanted: Vec<(&str, &str)> = match effective {
        "True" => vec![],
        "False" => vec![(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")],
        _ => vec![(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")],
    };
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    for (condition, taint) in CONDITION_TAINTS {
        if !silent && conditions.is_some_and(|c| c.iter().any(|c| c.type_ == condition && c.status == "True")) {
            wanted.push((taint, "NoSchedule"));
        }
    }
    let current = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let ours = |t: &Taint| t.key == UNREACHABLE || t.key == NOT_READY || CONDITION_TAINTS.iter().any(|(_, key)| t.key == *key);
    let mut next: Vec<Taint> = current.iter().filter(|t| !ours(t) || wanted.contains(&(t.key.as_str(), t.effect.as_str()))).cloned().collect();
    for (key, effect) in &wanted {
        if !next.iter().any(|t| t.key == *key && t.effect == *effect) {
            next.push(Taint { key: key.to_string(), effect: effect.to_string(), value: None, time_added: (*effect == "NoExecute").then_some(Time(now)) });
        }
    }
    if next != current {
        let patch = json!({"metadata": {"resourceVersion": node.resource_version()}, "spec": {"taints": next}});
        api.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    Ok(())
}

fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_ok = toleration.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = match toleration.operator.as_deref() {
        Some("Exists") => toleration.key.as_deref().is_none_or(|k| k.is_empty() || k == taint.key),
        _ => toleration.key.as_deref() == Some(taint.key.as_str()) && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    };
    effect_ok && key_ok
}

/// When a pod must leave a node with these NoExecute taints: `None` never, else the time.
pub fn eviction_time(pod: &CachedPod, taints: &[Taint], now: jiff::Timestamp) -> Option<jiff::Timestamp> {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let mut due: Option<jiff::Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let added = taint.time_added.as_ref().map(|t| t.0).unwrap_or(now);
        let mut best: Option<Option<i64>> = None; // Some(None) = tolerated forever
        for t in tolerations.iter().filter(|t| tolerates(t, taint)) {
            let seconds = t.toleration_seconds;
            best = Some(match (best, seconds) {
                (Some(None), _) | (_, None) => None,
                (Some(Some(a)), Some(b)) => Some(a.max(b)),
                (None, Some(b)) => Some(b),
            });
        }
        let at = match best {
            None => now,
            Some(None) => continue,
            Some(Some(seconds)) => added + jiff::SignedDuration::from_secs(seconds.max(0)),
        };
        due = Some(due.map_or(at, |d: jiff::Timestamp| d.min(at)));
    }
    due
}

/// Pods whose eviction is scheduled but not yet due, by namespace and name, with their uid: as
/// much of upstream's timed eviction queue as it takes to tell when a deletion is called off.
type Pending = HashMap<(String, String), String>;

async fn evict(client: &Client, recorder: &Recorder, evictions: &Recorder, nodes: &Cache<Node>, pods: &Cache<CachedPod>, pending: &mut Pending, now: jiff::Timestamp) {
    let tainted: HashMap<String, (Vec<Taint>, bool)> = nodes
        .all()
        .iter()
        .filter_map(|n| {
            let taints: Vec<Taint> = n.spec.as_ref()?.taints.clone()?.into_iter().filter(|t| t.effect == "NoExecute").collect();
            let unhealthy = ready_status(n) != "True";
            (!taints.is_empty() || unhealthy).then(|| (n.name_any(), (taints, unhealthy)))
        })
        .collect();
    let mut scheduled = Pending::new();
    // No tainted or unhealthy node: no pod to look at, only pending evictions to call off.
    let candidates = if tainted.is_empty() { Vec::new() } else { pods.all() };
    for pod in candidates {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else { continue };
        let Some((taints, unhealthy)) = tainted.get(node) else { continue };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        if *unhealthy {
            mark_not_ready(&api, recorder, &pod, now).await;
        }
        match eviction_time(&pod, taints, now) {
            Some(at) if at <= now => {
                let params = DeleteParams { preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }), ..Default::default() };
                match api.delete(&pod.name_any(), &params).await {
                    Ok(_) => {
                        tracing::info!(pod = %pod.name_any(), node, "evicted pod from tainted node");
                        let message = format!("Marking for deletion Pod {}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
                        evictions.normal(pod.as_ref(), "TaintManagerEviction", message);
                    }
                    Err(error) => tracing::debug!(%error, pod = %pod.name_any(), "eviction failed"),
                }
            }
            Some(_) => {
                scheduled.insert((pod.namespace().unwrap_or_default(), pod.name_any()), pod.uid().unwrap_or_default());
            }
            None => {}
        }
    }
    for ((namespace, name), uid) in pending.iter().filter(|(key, _)| !scheduled.contains_key(*key)) {
        let Some(pod) = pods.get(namespace, name) else { continue };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).and_then(|n| nodes.get("", n));
        let taints: Option<Vec<Taint>> = node.map(|n| n.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default());
        if spared(&pod, uid, taints.as_deref(), now) {
            evictions.normal(pod.as_ref(), "TaintManagerEviction", format!("Cancelling deletion of Pod {namespace}/{name}"));
        }
    }
    *pending = scheduled;
}

/// Whether a pod whose eviction was scheduled has been spared: the same pod, not being deleted,
/// on a node still there (`taints` is `None` for a node gone, whose pods the pod GC deletes), and
/// no longer due to leave it at all. A pod evicted, deleted or replaced is not.
fn spared(pod: &CachedPod, uid: &str, taints: Option<&[Taint]>, now: jiff::Timestamp) -> bool {
    let Some(taints) = taints else { return false };
    pod.uid().as_deref() == Some(uid) && pod.metadata.deletion_timestamp.is_none() && eviction_time(pod, taints, now).is_none()
}

/// Upstream's MarkPodsNotReady: a pod on a node that stopped reporting is not Ready. A strategic
/// merge patch (conditions merge by type) changes the Ready condition only, so the others, and
/// the message of this one, stay as the kubelet wrote them.
async fn mark_not_ready(api: &Api<Pod>, recorder: &Recorder, pod: &Arc<CachedPod>, now: jiff::Timestamp) {
    let ready = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if !ready {
        return;
    }
    let ready = json!({"type": "Ready", "status": "False", "reason": "NodeNotReady", "lastTransitionTime": Time(now)});
    let patch = json!({"metadata": {"resourceVersion": pod.resource_version()}, "status": {"conditions": [ready]}});
    match api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
        Ok(_) => recorder.warning(pod.as_ref(), "NodeNotReady", "Node is not ready".into()),
        Err(error) => tracing::debug!(%error, pod = %pod.name_any(), "marking pod not ready failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(tolerations: serde_json::Value) -> CachedPod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}})).unwrap()
    }

    #[test]
    fn eviction_follows_toleration_seconds() {
        let now = jiff::Timestamp::from_second(1_000_000).unwrap();
        let added = jiff::Timestamp::from_second(999_900).unwrap();
        let taints = vec![Taint { key: UNREACHABLE.into(), effect: "NoExecute".into(), value: None, time_added: Some(Time(added)) }];
        assert_eq!(eviction_time(&pod(json!([])), &taints, now), Some(now), "no toleration: now");
        let default = pod(json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]));
        assert_eq!(eviction_time(&default, &taints, now), Some(jiff::Timestamp::from_second(1_000_200).unwrap()));
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction_time(&forever, &taints, now), None);
    }

    #[test]
    fn only_a_pod_still_there_and_no_longer_due_is_spared() {
        let now = jiff::Timestamp::from_second(1_000_000).unwrap();
        let taint = Taint { key: UNREACHABLE.into(), effect: "NoExecute".into(), value: None, time_added: Some(Time(now)) };
        let mut p = pod(json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]));
        p.metadata.uid = Some("u1".into());
        assert!(spared(&p, "u1", Some(&[]), now), "the node's taints went");
        assert!(!spared(&p, "u1", Some(std::slice::from_ref(&taint)), now), "still scheduled");
        assert!(!spared(&p, "u0", Some(&[]), now), "another pod of the same name");
        assert!(!spared(&p, "u1", None, now), "its node is gone");
        p.metadata.deletion_timestamp = Some(Time(now));
        assert!(!spared(&p, "u1", Some(&[]), now), "being deleted");
    }
}
