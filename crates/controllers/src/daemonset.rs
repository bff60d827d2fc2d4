//! The DaemonSet controller: one pod per eligible node, following upstream's
//! pkg/controller/daemon. A node is eligible when the pod template's nodeName, nodeSelector and
//! required node affinity select it and its NoSchedule/NoExecute taints are tolerated (with the
//! tolerations the controller adds to every daemon pod). As upstream, pods are not bound here:
//! each is pinned to its node by a required node affinity on `metadata.name` and the scheduler
//! binds it.
//!
//! Template changes roll out per the update strategy (RollingUpdate within maxUnavailable or
//! maxSurge, or OnDelete), tracked with ControllerRevisions whose hash labels the pods.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, PodTemplateSpec, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::cached_pod::CachedPod;
use crate::cache::Cache;
use crate::events::{self, Recorder};
use crate::history::{self, EXPECTATION_TIMEOUT, Expectations, POD_REVISION_LABEL};
use crate::labels;
use crate::replicaset::{is_available, ready_since};
use crate::workqueue::{WorkQueue, run_workers};

/// Most creates or deletes one sync issues (upstream's BurstReplicas).
const BURST: usize = 250;
/// The pod label older controllers used instead of the revision hash.
const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";
/// The DaemonSet annotation holding that generation.
const TEMPLATE_GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";
/// Backoff before deleting another failed pod on the same node (kube-controller-manager's).
const FAILED_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

type Key = (String, String);

struct Ctx {
    client: Client,
    recorder: Recorder,
    sets: Cache<DaemonSet>,
    pods: Cache<CachedPod>,
    nodes: Cache<Node>,
    revisions: Cache<ControllerRevision>,
    expectations: Arc<Expectations>,
    /// Per DaemonSet, generation and node: when a failed pod was last deleted, and the delay.
    backoff: Mutex<HashMap<String, (Instant, Duration)>>,
    queue: WorkQueue<Key>,
}

pub async fn run(client: Client) {
    let (queue, rx) = WorkQueue::new();
    let expectations = Arc::new(Expectations::default());
    let q = queue.clone();
    let sets = Cache::<DaemonSet>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            if let Some(ds) = new.or(old) {
                q.add((ds.namespace().unwrap_or_default(), ds.name_any()));
            }
        }),
    );
    let (q, for_pods, exp) = (queue.clone(), sets.clone(), expectations.clone());
    let pods = Cache::<CachedPod>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            if let Some(pod) = new.or(old)
                && let Some(owner) = history::controller_of(pod).filter(|o| o.kind == "DaemonSet")
            {
                let key = (pod.namespace().unwrap_or_default(), owner.name.clone());
                let uid = pod.uid().unwrap_or_default();
                if old.is_none() && new.is_some() {
                    exp.observe_add(&key, &uid);
                }
                if new.is_none_or(|p| p.metadata.deletion_timestamp.is_some()) {
                    exp.observe_delete(&key, &uid);
                }
            }
            for obj in [old, new].into_iter().flatten() {
                enqueue_owner(&q, &for_pods, obj);
            }
        }),
    );
    let (q, for_nodes) = (queue.clone(), sets.clone());
    let nodes = Cache::<Node>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            for ds in for_nodes.all() {
                // Only a change in what the node means for the set wakes it; a removed node
                // always does (its pods must go).
                let before = old.map(|n| node_should_run(n, &ds)).unwrap_or((false, false));
                let after = new.map(|n| node_should_run(n, &ds)).unwrap_or((false, false));
                if before != after || new.is_none() {
                    q.add((ds.namespace().unwrap_or_default(), ds.name_any()));
                }
            }
        }),
    );
    let (q, for_revisions) = (queue.clone(), sets.clone());
    let revisions = Cache::<ControllerRevision>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            for obj in [old, new].into_iter().flatten() {
                enqueue_owner(&q, &for_revisions, obj);
            }
        }),
    );
    sets.synced().await;
    pods.synced().await;
    nodes.synced().await;
    revisions.synced().await;
    let recorder = Recorder::new(client.clone(), "daemonset-controller");
    let ctx = Arc::new(Ctx { client, recorder, sets, pods, nodes, revisions, expectations, backoff: Mutex::new(HashMap::new()), queue: queue.clone() });
    run_workers(queue, rx, 4, move |key| {
        let ctx = ctx.clone();
        async move {
            if let Err(error) = sync(&ctx, &key).await {
                tracing::debug!(%error, namespace = %key.0, name = %key.1, "daemonset sync failed; retrying");
                ctx.queue.add_after(key, Duration::from_secs(1));
            }
        }
    })
    .await;
}

fn enqueue_owner<K: kube::Resource>(queue: &WorkQueue<Key>, sets: &Cache<DaemonSet>, obj: &K) {
    let ns = obj.namespace().unwrap_or_default();
    match history::controller_of(obj) {
        Some(owner) if owner.kind == "DaemonSet" => queue.add((ns, owner.name.clone())),
        Some(_) => {}
        None => {
            for ds in sets.in_namespace(&ns) {
                if ds.spec.as_ref().is_some_and(|s| labels::matches(&s.selector, obj.labels())) {
                    queue.add((ns.clone(), ds.name_any()));
                }
            }
        }
    }
}

// Node eligibility.

/// Adds `toleration` to `spec`, replacing one with the same key, operator, value and effect
/// (upstream's AddOrUpdateTolerationInPodSpec).
fn add_or_update_toleration(spec: &mut PodSpec, toleration: Toleration) {
    let same = |t: &Toleration| t.key.as_deref().unwrap_or("") == toleration.key.as_deref().unwrap_or("") && t.effect.as_deref().unwrap_or("") == toleration.effect.as_deref().unwrap_or("") && t.operator.as_deref().unwrap_or("") == toleration.operator.as_deref().unwrap_or("") && t.value.as_deref().unwrap_or("") == toleration.value.as_deref().unwrap_or("");
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    match tolerations.iter_mut().find(|t| same(t)) {
        Some(existing) => *existing = toleration,
        None => tolerations.push(toleration),
    }
}

/// The tolerations every daemon pod gets, so node conditions do not evict or exclude it: it
/// stays through not-ready and unreachable, and runs under resource pressure, on cordoned nodes,
/// and (host network only) before the network is up.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let exists = |key: &str, effect: &str| Toleration { key: Some(key.into()), operator: Some("Exists".into()), effect: Some(effect.into()), ..Default::default() };
    add_or_update_toleration(spec, exists("node.kubernetes.io/not-ready", "NoExecute"));
    add_or_update_toleration(spec, exists("node.kubernetes.io/unreachable", "NoExecute"));
    add_or_update_toleration(spec, exists("node.kubernetes.io/disk-pressure", "NoSchedule"));
    add_or_update_toleration(spec, exists("node.kubernetes.io/memory-pressure", "NoSchedule"));
    add_or_update_toleration(spec, exists("node.kubernetes.io/pid-pressure", "NoSchedule"));
    add_or_update_toleration(spec, exists("node.kubernetes.io/unschedulable", "NoSchedule"));
    if spec.host_network == Some(true) {
        add_or_update_toleration(spec, exists("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
}

/// Toleration.ToleratesTaint: an empty effect or key matches any; Exists ignores the value.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if toleration.effect.as_deref().is_some_and(|e| !e.is_empty() && e != taint.effect) {
        return false;
    }
    if toleration.key.as_deref().is_some_and(|k| !k.is_empty() && k != taint.key) {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

fn untolerated(taints: &[Taint], tolerations: &[Toleration], effects: &[&str]) -> bool {
    taints.iter().filter(|t| effects.contains(&t.effect.as_str())).any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), [want]) = (value.and_then(|v| number(v)), values) else { return false };
            let Some(want) = number(want) else { return false };
            if req.operator == "Gt" { have > want } else { have < want }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    // An empty term selects nothing.
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let name = node.name_any();
    expressions.iter().all(|r| requirement_matches(r, node.labels().get(&r.key)))
        // Node fields select on metadata.name only, with In and NotIn.
        && fields.iter().all(|r| r.key == "metadata.name" && matches!(r.operator.as_str(), "In" | "NotIn") && requirement_matches(r, Some(&name)))
}

/// Whether `spec`'s nodeSelector and required node affinity select `node` (upstream's
/// GetRequiredNodeAffinity(pod).Match(node)).
pub fn matches_node(spec: &PodSpec, node: &Node) -> bool {
    if let Some(selector) = &spec.node_selector
        && !selector.iter().all(|(k, v)| node.labels().get(k) == Some(v))
    {
        return false;
    }
    let required = spec.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()).and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)))
}

/// The template's pod spec as the controller will create it, tolerations included.
fn daemon_pod_spec(ds: &DaemonSet) -> PodSpec {
    let mut spec = ds.spec.as_ref().and_then(|s| s.template.spec.clone()).unwrap_or_default();
    add_daemon_tolerations(&mut spec);
    spec
}

/// (shouldRun, shouldContinueRunning): whether a daemon pod should start on `node`, and whether
/// one already there may stay. A pod that tolerates the node's NoExecute taints but not its
/// NoSchedule ones stays but is not started.
pub fn node_should_run(node: &Node, ds: &DaemonSet) -> (bool, bool) {
    let spec = daemon_pod_spec(ds);
    if spec.node_name.as_deref().is_some_and(|n| !n.is_empty() && n != node.name_any()) {
        return (false, false);
    }
    if !matches_node(&spec, node) {
        return (false, false);
    }
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    if untolerated(taints, tolerations, &["NoSchedule", "NoExecute"]) {
        return (false, !untolerated(taints, tolerations, &["NoExecute"]));
    }
    (true, true)
}

/// Pins a pod to `node` by replacing its required node affinity terms with one selecting the
/// node's name (upstream's ReplaceDaemonSetPodNodeNameNodeAffinity).
pub fn pin_to_node(affinity: Option<Affinity>, node: &str) -> Affinity {
    let term = NodeSelectorTerm { match_expressions: None, match_fields: Some(vec![NodeSelectorRequirement { key: "metadata.name".into(), operator: "In".into(), values: Some(vec![node.into()]) }]) };
    let mut affinity = affinity.unwrap_or_default();
    let node_affinity = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    match node_affinity.required_during_scheduling_ignored_during_execution.as_mut() {
        Some(required) => required.node_selector_terms = vec![term],
        None => node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector { node_selector_terms: vec![term] }),
    }
    affinity
}

/// The node a daemon pod is for: its nodeName once bound, else the node its affinity pins.
pub fn target_node(pod: &CachedPod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(name) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(name.clone());
    }
    let required = spec.affinity.as_ref()?.node_affinity.as_ref()?.required_during_scheduling_ignored_during_execution.as_ref()?;
    required.node_selector_terms.iter().flat_map(|t| t.match_fields.iter().flatten()).find(|r| r.key == "metadata.name" && r.operator == "In").and_then(|r| match r.values.as_deref() {
        Some([one]) => Some(one.clone()),
        _ => None,
    })
}

// Update strategy.

fn rolling(spec: &DaemonSetSpec) -> Option<&k8s_openapi::api::apps::v1::RollingUpdateDaemonSet> {
    let strategy = spec.update_strategy.as_ref()?;
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") != "RollingUpdate" {
        return None;
    }
    strategy.rolling_update.as_ref()
}

/// An int or percentage of `total`, percentages rounded up (upstream's DaemonSet counts).
fn scaled(value: Option<&IntOrString>, total: usize) -> usize {
    match value {
        None => 0,
        Some(IntOrString::Int(n)) => usize::try_from(*n).unwrap_or(0),
        Some(IntOrString::String(s)) => {
            let percent: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            (percent * total as f64 / 100.0).ceil().max(0.0) as usize
        }
    }
}

/// (maxSurge, maxUnavailable) for `desired` nodes; both zero would never progress, so
/// unavailability becomes 1.
pub fn surge_and_unavailable(spec: &DaemonSetSpec, desired: usize) -> (usize, usize) {
    let Some(r) = rolling(spec) else { return (0, 0) };
    let surge = scaled(r.max_surge.as_ref(), desired);
    let unavailable = scaled(r.max_unavailable.as_ref(), desired);
    if desired > 0 && surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable) }
}

fn allows_surge(spec: &DaemonSetSpec) -> bool {
    rolling(spec).is_some_and(|r| scaled(r.max_surge.as_ref(), 1) != 0)
}

fn template_generation(ds: &DaemonSet) -> Option<String> {
    let value = ds.annotations().get(TEMPLATE_GENERATION_ANNOTATION)?;
    value.parse::<i64>().ok().map(|g| g.to_string())
}

/// Whether `pod` was made from the current template (by revision hash, or by the template
/// generation older controllers labelled pods with).
fn is_updated(pod: &CachedPod, hash: &str, generation: Option<&str>) -> bool {
    let labels = pod.labels();
    (!hash.is_empty() && labels.get(POD_REVISION_LABEL).map(String::as_str) == Some(hash)) || generation.is_some_and(|g| labels.get(TEMPLATE_GENERATION_LABEL).map(String::as_str) == Some(g))
}

fn phase(pod: &CachedPod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn bound(pod: &CachedPod) -> bool {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty())
}

/// Bound pods first, then oldest, then by name (upstream's podByCreationTimestampAndPhase).
fn sort_oldest_first(pods: &mut [Arc<CachedPod>]) {
    pods.sort_by(|a, b| {
        let created = |p: &CachedPod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        bound(b).cmp(&bound(a)).then_with(|| created(a).cmp(&created(b))).then_with(|| a.name_any().cmp(&b.name_any()))
    });
}

/// A node's live pods as (current, old), at most one of each.
type Split = (Option<Arc<CachedPod>>, Option<Arc<CachedPod>>);

/// The one current and one old pod among a node's live pods, or `None` when there are more of
/// either (the manage pass prunes those first).
fn split_pods(pods: &[Arc<CachedPod>], hash: &str, generation: Option<&str>) -> Option<Split> {
    let (mut new, mut old) = (None, None);
    for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let slot = if is_updated(pod, hash, generation) { &mut new } else { &mut old };
        if slot.is_some() {
            return None;
        }
        *slot = Some(pod.clone());
    }
    Some((new, old))
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("hash collision for daemonset {0}; collisionCount raised")]
    Collision(String),
}

async fn sync(ctx: &Ctx, key: &Key) -> Result<(), SyncError> {
    let (ns, name) = key;
    let Some(ds) = ctx.sets.get(ns, name) else {
        ctx.expectations.forget(key);
        return Ok(());
    };
    let Some(spec) = ds.spec.clone() else { return Ok(()) };
    // A selector selecting everything is refused, as upstream does.
    if spec.selector.match_labels.as_ref().is_none_or(|m| m.is_empty()) && spec.selector.match_expressions.as_ref().is_none_or(|m| m.is_empty()) {
        return Ok(());
    }
    // Status cannot be computed reliably while the garbage collector takes the set apart.
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let nodes = ctx.nodes.all();
    let (current, old) = construct_history(ctx, &ds, &spec).await?;
    let hash = current.labels().get(POD_REVISION_LABEL).cloned().unwrap_or_default();
    if !ctx.expectations.satisfied(key) {
        ctx.queue.add_after(key.clone(), EXPECTATION_TIMEOUT);
        return update_status(ctx, &ds, &spec, &nodes, &hash, false).await;
    }
    let result = update_pods(ctx, key, &ds, &spec, &nodes, &hash, &old).await;
    let status = update_status(ctx, &ds, &spec, &nodes, &hash, true).await;
    result?;
    status
}

async fn update_pods(ctx: &Ctx, key: &Key, ds: &DaemonSet, spec: &DaemonSetSpec, nodes: &[Arc<Node>], hash: &str, old: &[Arc<ControllerRevision>]) -> Result<(), SyncError> {
    manage(ctx, key, ds, spec, nodes, hash).await?;
    if ctx.expectations.satisfied(key) && rolling(spec).is_some() {
        rolling_update(ctx, key, ds, spec, nodes, hash).await?;
    }
    cleanup_history(ctx, ds, spec, old).await
}

/// The set's pods (adopting and releasing as needed) by the node they are for. Terminal pods
/// already being deleted are left out unless `with_finished`.
async fn pods_by_node(ctx: &Ctx, ds: &DaemonSet, spec: &DaemonSetSpec, with_finished: bool) -> Result<HashMap<String, Vec<Arc<CachedPod>>>, SyncError> {
    let api: Api<CachedPod> = Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    let pods = history::claim(&api, &ctx.pods, ds, |p: &CachedPod| labels::matches(&spec.selector, p.labels())).await?;
    let mut by_node: HashMap<String, Vec<Arc<CachedPod>>> = HashMap::new();
    for pod in pods {
        if !with_finished && matches!(phase(&pod), "Failed" | "Succeeded") && pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(node) = target_node(&pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }
    Ok(by_node)
}

/// Starts pods on nodes that should run one and lack it, and deletes pods that should not be
/// where they are (upstream's manage and podsShouldBeOnNode).
async fn manage(ctx: &Ctx, key: &Key, ds: &DaemonSet, spec: &DaemonSetSpec, nodes: &[Arc<Node>], hash: &str) -> Result<(), SyncError> {
    let by_node = pods_by_node(ctx, ds, spec, false).await?;
    let surge = allows_surge(spec);
    let mut create_on: Vec<String> = Vec::new();
    let mut delete: Vec<Arc<CachedPod>> = Vec::new();
    for node in nodes {
        let node_name = node.name_any();
        let (should_run, should_continue) = node_should_run(node, ds);
        let pods = by_node.get(&node_name);
        if should_run && pods.is_none() {
            create_on.push(node_name);
            continue;
        }
        let Some(pods) = pods else { continue };
        if !should_continue {
            delete.extend(pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).cloned());
            continue;
        }
        let mut running: Vec<Arc<CachedPod>> = Vec::new();
        for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            match phase(pod) {
                "Failed" => {
                    // The kubelet may keep rejecting the pod; back off instead of hot-looping.
                    let backoff_key = format!("{}/{}/{node_name}", ds.uid().unwrap_or_default(), ds.status.as_ref().and_then(|s| s.observed_generation).unwrap_or(0));
                    match failed_backoff(ctx, &backoff_key) {
                        Some(wait) => ctx.queue.add_after(key.clone(), wait),
                        None => {
                            // A pod the kubelet keeps rejecting is otherwise invisible churn.
                            let message = format!("Found failed daemon pod {}/{} on node {node_name}, will try to kill it", pod.namespace().unwrap_or_default(), pod.name_any());
                            ctx.recorder.warning(ds, "FailedDaemonPod", message);
                            delete.push(pod.clone());
                        }
                    }
                }
                "Succeeded" => delete.push(pod.clone()),
                _ => running.push(pod.clone()),
            }
        }
        sort_oldest_first(&mut running);
        if !surge {
            // One pod per node: the oldest stays.
            delete.extend(running.iter().skip(1).cloned());
            continue;
        }
        if running.is_empty() {
            if should_run {
                create_on.push(node_name);
            }
            continue;
        }
        // While surging a node may hold the oldest current pod and the oldest old one; the old
        // one goes once it is not ready or the new one is available.
        let (mut newest, mut oldest) = (None, None);
        for pod in &running {
            let slot = if pod.labels().get(POD_REVISION_LABEL).map(String::as_str) == Some(hash) { &mut newest } else { &mut oldest };
            if slot.is_none() {
                *slot = Some(pod.clone());
            } else {
                delete.push(pod.clone());
            }
        }
        if let (Some(new), Some(old)) = (newest, oldest)
            && (ready_since(&old).is_none() || is_available(&new, spec.min_ready_seconds.unwrap_or(0), jiff::Timestamp::now()))
        {
            delete.push(old);
        }
    }
    // Unscheduled pods for nodes that no longer exist: no kubelet will ever run them, and the
    // pod garbage collector only handles bound pods.
    let known: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    for (node, pods) in &by_node {
        if !known.contains(node) {
            delete.extend(pods.iter().filter(|p| !bound(p) && p.metadata.deletion_timestamp.is_none()).cloned());
        }
    }
    sync_nodes(ctx, key, ds, spec, &delete, &create_on, hash).await
}

/// Whether a failed pod on this node must wait before it is deleted (and for how long); records
/// a deletion otherwise.
fn failed_backoff(ctx: &Ctx, key: &str) -> Option<Duration> {
    let mut all = ctx.backoff.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|_, (at, _)| at.elapsed() < 2 * FAILED_BACKOFF_MAX);
    let now = Instant::now();
    match all.get_mut(key) {
        Some((at, delay)) if at.elapsed() < *delay => Some(*delay - at.elapsed()),
        Some((at, delay)) => {
            *delay = (*delay * 2).min(FAILED_BACKOFF_MAX);
            *at = now;
            None
        }
        None => {
            all.insert(key.to_string(), (now, FAILED_BACKOFF_INITIAL));
            None
        }
    }
}

/// The pod for `node`: the template with the daemon tolerations, the revision hash label, and
/// pinned to the node.
fn pod_for_node(ds: &DaemonSet, template: &PodTemplateSpec, hash: &str, node: &str) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = meta.labels.unwrap_or_default();
    if let Some(generation) = template_generation(ds) {
        labels.insert(TEMPLATE_GENERATION_LABEL.into(), generation);
    }
    if !hash.is_empty() {
        labels.insert(POD_REVISION_LABEL.into(), hash.into());
    }
    let mut spec = template.spec.clone().unwrap_or_default();
    add_daemon_tolerations(&mut spec);
    spec.affinity = Some(pin_to_node(spec.affinity.take(), node));
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            namespace: ds.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![history::controller_ref(ds)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Deletes `delete` and creates a pod on each of `create_on`, at most BURST of each, creating in
/// doubling batches so a template that cannot work fails once, not once per node.
async fn sync_nodes(ctx: &Ctx, key: &Key, ds: &DaemonSet, spec: &DaemonSetSpec, delete: &[Arc<CachedPod>], create_on: &[String], hash: &str) -> Result<(), SyncError> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    let mut first_error: Option<kube::Error> = None;
    let mut rest = &create_on[..create_on.len().min(BURST)];
    let mut size = 1;
    while !rest.is_empty() {
        let (batch, tail) = rest.split_at(size.min(rest.len()));
        let results = futures_util::future::join_all(batch.iter().map(|node| {
            let pod = pod_for_node(ds, &spec.template, hash, node);
            let api = api.clone();
            async move { api.create(&PostParams::default(), &pod).await }
        }))
        .await;
        let mut failed = false;
        for result in results {
            match result {
                Ok(pod) => {
                    // The name the server generated, not the template's generateName prefix.
                    ctx.recorder.normal(ds, "SuccessfulCreate", format!("Created pod: {}", pod.name_any()));
                    ctx.expectations.expect_create(key, &pod.uid().unwrap_or_default());
                }
                Err(error) => {
                    tracing::warn!(%error, daemonset = %key.1, "creating daemon pod failed");
                    if !events::namespace_terminating(&error) {
                        ctx.recorder.warning(ds, "FailedCreate", format!("Error creating: {}", events::describe(&error)));
                    }
                    failed = true;
                    first_error.get_or_insert(error);
                }
            }
        }
        if failed {
            break;
        }
        rest = tail;
        size *= 2;
    }
    let deletes = delete.iter().take(BURST).map(|pod| {
        let params = DeleteParams { preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }), ..Default::default() };
        let uid = pod.uid().unwrap_or_default();
        ctx.expectations.expect_delete(key, &uid);
        let api = api.clone();
        async move {
            let name = pod.name_any();
            let result = api.delete(&name, &params).await;
            (uid, name, result)
        }
    });
    for (uid, name, result) in futures_util::future::join_all(deletes.collect::<Vec<_>>()).await {
        match result {
            Ok(_) => ctx.recorder.normal(ds, "SuccessfulDelete", format!("Deleted pod: {name}")),
            Err(error) => {
                ctx.expectations.observe_delete(key, &uid);
                // Gone already, or a new pod of that name: nothing of ours failed.
                if !matches!(&error, kube::Error::Api(s) if matches!(s.code, 404 | 409)) {
                    ctx.recorder.warning(ds, "FailedDelete", format!("Error deleting: {}", events::describe(&error)));
                    first_error.get_or_insert(error);
                }
            }
        }
    }
    match first_error {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}

/// One step of a rolling update (upstream's rollingUpdate): without surge, delete old pods while
/// at most maxUnavailable are unavailable (the manage pass then starts new ones); with surge,
/// start new pods beside available old ones, up to maxSurge at a time, and delete each old pod
/// once its replacement is available.
async fn rolling_update(ctx: &Ctx, key: &Key, ds: &DaemonSet, spec: &DaemonSetSpec, nodes: &[Arc<Node>], hash: &str) -> Result<(), SyncError> {
    let mut by_node = pods_by_node(ctx, ds, spec, false).await?;
    let mut desired: usize = 0;
    for node in nodes {
        if node_should_run(node, ds).0 {
            desired += 1;
            by_node.entry(node.name_any()).or_default();
        }
    }
    let (max_surge, max_unavailable) = surge_and_unavailable(spec, desired);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = jiff::Timestamp::now();
    let generation = template_generation(ds);
    let available = |p: &CachedPod| is_available(p, min_ready, now);
    let mut names: Vec<&String> = by_node.keys().collect();
    names.sort();

    if max_surge == 0 {
        let mut unavailable = 0;
        let mut replace: Vec<Arc<CachedPod>> = Vec::new();
        let mut candidates: Vec<Arc<CachedPod>> = Vec::new();
        for node in names {
            let Some((new, old)) = split_pods(&by_node[node], hash, generation.as_deref()) else {
                unavailable += 1;
                continue;
            };
            match (new, old) {
                (None, None) | (Some(_), Some(_)) => unavailable += 1,
                (Some(new), None) => {
                    if !available(&new) {
                        unavailable += 1;
                    }
                }
                (None, Some(old)) if !available(&old) => {
                    // Replacing a pod that is down costs no availability.
                    replace.push(old);
                    unavailable += 1;
                }
                (None, Some(old)) => {
                    if unavailable < max_unavailable {
                        candidates.push(old);
                    }
                }
            }
        }
        let room = max_unavailable.saturating_sub(unavailable).min(candidates.len());
        replace.extend(candidates.into_iter().take(room));
        return sync_nodes(ctx, key, ds, spec, &replace, &[], hash).await;
    }

    let node_objects: HashMap<String, &Arc<Node>> = nodes.iter().map(|n| (n.name_any(), n)).collect();
    let should_run = |node: &str| node_objects.get(node).is_some_and(|n| node_should_run(n, ds).0);
    let mut delete: Vec<Arc<CachedPod>> = Vec::new();
    let mut leaving: Vec<Arc<CachedPod>> = Vec::new();
    let mut allowed: Vec<String> = Vec::new();
    let mut candidates: Vec<String> = Vec::new();
    let mut surging = 0;
    let mut available_count: usize = 0;
    for node in names {
        let Some((new, old)) = split_pods(&by_node[node], hash, generation.as_deref()) else {
            surging += 1;
            continue;
        };
        if let Some(pod) = old.as_ref().or(new.as_ref())
            && available(pod)
        {
            available_count += 1;
        }
        match (new, old) {
            (_, None) => {}
            (None, Some(old)) if !available(&old) => {
                if should_run(node) {
                    allowed.push(node.clone());
                } else {
                    delete.push(old);
                }
            }
            (None, Some(old)) => {
                if !should_run(node) {
                    leaving.push(old);
                } else if surging < max_surge {
                    candidates.push(node.clone());
                }
            }
            (Some(new), Some(old)) => {
                if available(&new) {
                    delete.push(old);
                } else {
                    surging += 1;
                }
            }
        }
    }
    // Pods on nodes the set no longer selects go only once the rest keeps full availability.
    let spare = available_count.saturating_sub(desired).min(leaving.len());
    delete.extend(leaving.into_iter().take(spare));
    let room = max_surge.saturating_sub(surging).min(candidates.len());
    allowed.extend(candidates.into_iter().take(room));
    sync_nodes(ctx, key, ds, spec, &delete, &allowed, hash).await
}

/// The set's revisions: the one matching its template now (made if missing, deduplicated, moved
/// to the newest revision number) and the older ones.
async fn construct_history(ctx: &Ctx, ds: &DaemonSet, spec: &DaemonSetSpec) -> Result<(Arc<ControllerRevision>, Vec<Arc<ControllerRevision>>), SyncError> {
    let ns = ds.namespace().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let data = history::template_patch(&spec.template);
    let mut current: Vec<Arc<ControllerRevision>> = Vec::new();
    let mut old: Vec<Arc<ControllerRevision>> = Vec::new();
    for mut revision in history::claim_revisions(&api, &ctx.revisions, ds, &spec.selector).await? {
        if !revision.labels().contains_key(POD_REVISION_LABEL) {
            // The name stands in for the hash, which then cannot collide.
            let patch = json!({"metadata": {"labels": {POD_REVISION_LABEL: revision.name_any()}, "resourceVersion": revision.resource_version()}});
            revision = Arc::new(api.patch(&revision.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?);
        }
        if revision.data.as_ref().is_some_and(|d| d.0 == data) {
            current.push(revision);
        } else {
            old.push(revision);
        }
    }
    let next = old.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
    let cur = if current.is_empty() {
        Arc::new(snapshot(ctx, &api, ds, spec, next).await?)
    } else {
        let keep = dedup(ctx, &api, ds, spec, &current).await?;
        if keep.revision < next { Arc::new(history::set_revision_number(&api, &keep, next).await?) } else { keep }
    };
    Ok((cur, old))
}

async fn snapshot(ctx: &Ctx, api: &Api<ControllerRevision>, ds: &DaemonSet, spec: &DaemonSetSpec, revision: i64) -> Result<ControllerRevision, SyncError> {
    let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
    let hash = crate::deployment::template_hash(&spec.template, collisions);
    let mut labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    labels.insert(POD_REVISION_LABEL.into(), hash.clone());
    let mut wanted = history::new_revision(ds, Some(&labels), history::template_patch(&spec.template), revision);
    wanted.metadata.name = Some(format!("{}-{hash}", ds.name_any()));
    match api.create(&PostParams::default(), &wanted).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let existing = api.get(&wanted.name_any()).await?;
            if history::same_data(&existing, &wanted) {
                return Ok(existing);
            }
            // Another template has this name: bump collisionCount (unless ours was stale) so the
            // next hash differs, and retry.
            let sets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
            let fresh = sets.get(&ds.name_any()).await?;
            let fresh_count = fresh.status.as_ref().and_then(|s| s.collision_count);
            if fresh_count == collisions {
                let patch = json!({"status": {"collisionCount": collisions.unwrap_or(0) + 1}});
                sets.patch_status(&ds.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
            }
            Err(SyncError::Collision(ds.name_any()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Several revisions with the current template: keep the newest, relabel pods of the others to
/// it, delete the others.
async fn dedup(ctx: &Ctx, api: &Api<ControllerRevision>, ds: &DaemonSet, spec: &DaemonSetSpec, current: &[Arc<ControllerRevision>]) -> Result<Arc<ControllerRevision>, SyncError> {
    let Some(keep) = current.iter().max_by_key(|r| r.revision).cloned() else {
        return Err(SyncError::Collision(ds.name_any()));
    };
    if current.len() == 1 {
        return Ok(keep);
    }
    let keep_hash = keep.labels().get(POD_REVISION_LABEL).cloned().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    for pods in pods_by_node(ctx, ds, spec, true).await?.values() {
        for pod in pods.iter().filter(|p| p.labels().get(POD_REVISION_LABEL) != Some(&keep_hash)) {
            let patch = json!({"metadata": {"labels": {POD_REVISION_LABEL: keep_hash}}});
            pods_api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
        }
    }
    for revision in current.iter().filter(|r| r.name_any() != keep.name_any()) {
        history::delete(api, revision).await?;
    }
    Ok(keep)
}

/// Deletes the oldest old revisions beyond revisionHistoryLimit that no pod still uses.
async fn cleanup_history(ctx: &Ctx, ds: &DaemonSet, spec: &DaemonSetSpec, old: &[Arc<ControllerRevision>]) -> Result<(), SyncError> {
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10)).unwrap_or(0);
    let Some(mut to_kill) = old.len().checked_sub(limit).filter(|n| *n > 0) else { return Ok(()) };
    let live: HashSet<String> = pods_by_node(ctx, ds, spec, true).await?.values().flatten().filter_map(|p| p.labels().get(POD_REVISION_LABEL).cloned()).collect();
    let mut old: Vec<Arc<ControllerRevision>> = old.to_vec();
    old.sort_by_key(|r| r.revision);
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    for revision in old {
        if to_kill == 0 {
            break;
        }
        if revision.labels().get(POD_REVISION_LABEL).is_some_and(|h| live.contains(h)) {
            continue;
        }
        history::delete(&api, &revision).await?;
        to_kill -= 1;
    }
    Ok(())
}

/// Status counts over nodes (upstream's updateDaemonSetStatus).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub desired: i32,
    pub current: i32,
    pub misscheduled: i32,
    pub ready: i32,
    pub available: i32,
    pub updated: i32,
}

pub fn count(ds: &DaemonSet, nodes: &[Arc<Node>], by_node: &HashMap<String, Vec<Arc<CachedPod>>>, hash: &str, now: jiff::Timestamp) -> Counts {
    let min_ready = ds.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let generation = template_generation(ds);
    let mut c = Counts::default();
    for node in nodes {
        let (should_run, _) = node_should_run(node, ds);
        let pods = by_node.get(&node.name_any()).filter(|p| !p.is_empty());
        match (should_run, pods) {
            (true, None) => c.desired += 1,
            (true, Some(pods)) => {
                c.desired += 1;
                c.current += 1;
                let mut pods = pods.clone();
                sort_oldest_first(&mut pods);
                let pod = &pods[0];
                if ready_since(pod).is_some() {
                    c.ready += 1;
                    if is_available(pod, min_ready, now) {
                        c.available += 1;
                    }
                }
                if is_updated(pod, hash, generation.as_deref()) {
                    c.updated += 1;
                }
            }
            (false, Some(_)) => c.misscheduled += 1,
            (false, None) => {}
        }
    }
    c
}

async fn update_status(ctx: &Ctx, ds: &DaemonSet, spec: &DaemonSetSpec, nodes: &[Arc<Node>], hash: &str, observe_generation: bool) -> Result<(), SyncError> {
    let by_node = pods_by_node(ctx, ds, spec, false).await?;
    let c = count(ds, nodes, &by_node, hash, jiff::Timestamp::now());
    let unavailable = c.desired - c.available;
    let old = ds.status.clone().unwrap_or_default();
    // Without observing the generation (pending expectations), it is no reason to write.
    let generation_seen = !observe_generation || old.observed_generation.unwrap_or(0) >= ds.metadata.generation.unwrap_or(0);
    let same = old.desired_number_scheduled == c.desired
        && old.current_number_scheduled == c.current
        && old.number_misscheduled == c.misscheduled
        && old.number_ready == c.ready
        && old.updated_number_scheduled.unwrap_or(0) == c.updated
        && old.number_available.unwrap_or(0) == c.available
        && old.number_unavailable.unwrap_or(0) == unavailable
        && generation_seen;
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    if min_ready > 0 && c.ready != c.available {
        // Pods turn available minReadySeconds after Ready with no event to say so.
        ctx.queue.add_after((ds.namespace().unwrap_or_default(), ds.name_any()), Duration::from_secs(u64::try_from(min_ready).unwrap_or(0)));
    }
    if same {
        return Ok(());
    }
    let mut status = json!({
        "desiredNumberScheduled": c.desired,
        "currentNumberScheduled": c.current,
        "numberMisscheduled": c.misscheduled,
        "numberReady": c.ready,
        "updatedNumberScheduled": c.updated,
        "numberAvailable": c.available,
        "numberUnavailable": unavailable,
    });
    if observe_generation {
        status["observedGeneration"] = json!(ds.metadata.generation);
    }
    let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    match api.patch_status(&ds.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})).unwrap()
    }

    fn daemon(pod_spec: serde_json::Value) -> DaemonSet {
        let mut spec = json!({"containers": [{"name": "c", "image": "agent"}]});
        if let (Some(base), Some(extra)) = (spec.as_object_mut(), pod_spec.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "default", "uid": "ds-uid"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"metadata": {"labels": {"app": "agent"}}, "spec": spec}}
        }))
        .unwrap()
    }

    #[test]
    fn taints_need_tolerations_and_noexecute_decides_staying() {
        let plain = daemon(json!({}));
        assert_eq!(node_should_run(&node("a", json!({}), json!([])), &plain), (true, true));
        let gpu = node("b", json!({}), json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]));
        assert_eq!(node_should_run(&gpu, &plain), (false, true), "NoSchedule: no new pod, an existing one stays");
        let evicting = node("c", json!({}), json!([{"key": "gpu", "value": "yes", "effect": "NoExecute"}]));
        assert_eq!(node_should_run(&evicting, &plain), (false, false));
        let soft = node("d", json!({}), json!([{"key": "gpu", "effect": "PreferNoSchedule"}]));
        assert_eq!(node_should_run(&soft, &plain), (true, true), "PreferNoSchedule does not exclude");

        let equal = daemon(json!({"tolerations": [{"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}]}));
        assert_eq!(node_should_run(&gpu, &equal), (true, true));
        let wrong_value = daemon(json!({"tolerations": [{"key": "gpu", "value": "no"}]}));
        assert_eq!(node_should_run(&gpu, &wrong_value), (false, true));
        let exists_any = daemon(json!({"tolerations": [{"operator": "Exists"}]}));
        assert_eq!(node_should_run(&evicting, &exists_any), (true, true));
        let other_effect = daemon(json!({"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}));
        assert_eq!(node_should_run(&evicting, &other_effect), (false, false));
    }

    #[test]
    fn default_tolerations_cover_node_conditions() {
        let plain = daemon(json!({}));
        for (key, effect) in [
            ("node.kubernetes.io/unschedulable", "NoSchedule"),
            ("node.kubernetes.io/memory-pressure", "NoSchedule"),
            ("node.kubernetes.io/disk-pressure", "NoSchedule"),
            ("node.kubernetes.io/pid-pressure", "NoSchedule"),
            ("node.kubernetes.io/not-ready", "NoExecute"),
            ("node.kubernetes.io/unreachable", "NoExecute"),
        ] {
            assert_eq!(node_should_run(&node("n", json!({}), json!([{"key": key, "effect": effect}])), &plain), (true, true), "{key}:{effect}");
        }
        let unreachable = node("n", json!({}), json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}, {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]));
        assert_eq!(node_should_run(&unreachable, &plain), (false, true), "an unreachable node keeps its pod but gets no new one");
        let no_network = node("n", json!({}), json!([{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]));
        assert_eq!(node_should_run(&no_network, &plain), (false, true));
        assert_eq!(node_should_run(&no_network, &daemon(json!({"hostNetwork": true}))), (true, true));
        // Not duplicated when the template already has one.
        let mut spec = daemon(json!({"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]})).spec.unwrap().template.spec.unwrap();
        add_daemon_tolerations(&mut spec);
        let tolerations = spec.tolerations.unwrap();
        assert_eq!(tolerations.len(), 6);
        assert_eq!(tolerations.iter().filter(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")).count(), 1);
        assert!(tolerations.iter().all(|t| t.toleration_seconds.is_none()));
    }

    #[test]
    fn node_selector_and_required_affinity() {
        let a = node("a", json!({"disk": "ssd", "cores": "8"}), json!([]));
        let b = node("b", json!({"disk": "hdd", "cores": "2"}), json!([]));
        let by_selector = daemon(json!({"nodeSelector": {"disk": "ssd"}}));
        assert_eq!(node_should_run(&a, &by_selector), (true, true));
        assert_eq!(node_should_run(&b, &by_selector), (false, false));

        let affinity = |terms: serde_json::Value| daemon(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}));
        let gt = affinity(json!([{"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}]));
        assert!(node_should_run(&a, &gt).0 && !node_should_run(&b, &gt).0);
        let either = affinity(json!([{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["nvme"]}]}, {"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}]));
        assert!(!node_should_run(&a, &either).0 && node_should_run(&b, &either).0, "terms are ORed");
        let both = affinity(json!([{"matchExpressions": [{"key": "disk", "operator": "Exists"}, {"key": "gpu", "operator": "DoesNotExist"}, {"key": "cores", "operator": "Lt", "values": ["4"]}]}]));
        assert!(!node_should_run(&a, &both).0 && node_should_run(&b, &both).0, "expressions are ANDed");
        let by_name = affinity(json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]));
        assert!(!node_should_run(&a, &by_name).0 && node_should_run(&b, &by_name).0);
        assert!(!node_should_run(&a, &affinity(json!([{}]))).0, "an empty term selects nothing");
        assert!(!node_should_run(&a, &affinity(json!([]))).0, "no terms select nothing");
        let named = daemon(json!({"nodeName": "b"}));
        assert_eq!(node_should_run(&a, &named), (false, false));
        assert_eq!(node_should_run(&b, &named), (true, true));
    }

    #[test]
    fn pods_are_pinned_to_their_node() {
        let ds = daemon(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}}}));
        let spec = ds.spec.clone().unwrap();
        let pod = pod_for_node(&ds, &spec.template, "abc", "node-1");
        assert_eq!(target_node(&CachedPod::from(&pod)).as_deref(), Some("node-1"));
        let terms = &pod.spec.as_ref().unwrap().affinity.as_ref().unwrap().node_affinity.as_ref().unwrap().required_during_scheduling_ignored_during_execution.as_ref().unwrap().node_selector_terms;
        assert_eq!(terms.len(), 1, "the node's name replaces the template's terms");
        assert_eq!(pod.labels().get(POD_REVISION_LABEL).map(String::as_str), Some("abc"));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("agent-"));
        assert_eq!(pod.owner_references()[0].kind, "DaemonSet");
        let mut bound = pod.clone();
        bound.spec.as_mut().unwrap().node_name = Some("node-2".into());
        assert_eq!(target_node(&CachedPod::from(&bound)).as_deref(), Some("node-2"));
    }

    #[test]
    fn rolling_budgets_round_up() {
        let ds = |ru: serde_json::Value| -> DaemonSetSpec { serde_json::from_value(json!({"selector": {}, "template": {}, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": ru}})).unwrap() };
        assert_eq!(surge_and_unavailable(&ds(json!({"maxUnavailable": 1, "maxSurge": 0})), 5), (0, 1));
        assert_eq!(surge_and_unavailable(&ds(json!({"maxUnavailable": "30%", "maxSurge": 0})), 5), (0, 2));
        assert_eq!(surge_and_unavailable(&ds(json!({"maxUnavailable": 0, "maxSurge": "10%"})), 5), (1, 0));
        assert_eq!(surge_and_unavailable(&ds(json!({"maxUnavailable": 0, "maxSurge": 0})), 5), (0, 1));
        assert!(allows_surge(&ds(json!({"maxUnavailable": 0, "maxSurge": "1%"}))));
        assert!(!allows_surge(&ds(json!({"maxUnavailable": 1, "maxSurge": 0}))));
    }
}
