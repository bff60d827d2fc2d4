//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector, adopts
//! matching orphans and releases pods that stopped matching, and reports counts in status. The
//! same loop runs ReplicationControllers, seen as ReplicaSets whose selector is a plain map.
//!
//! As upstream, it remembers the creates and deletes it issued ("expectations") and does not
//! act again for a ReplicaSet until its cache has seen them, so a slow watch never makes it
//! create or delete twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::cached_pod::CachedPod;
use crate::cache::Cache;
use crate::events::{self, Recorder};
use crate::labels;
use crate::workqueue::{WorkQueue, run_workers};

type Key = (String, String);

/// Most pods created for one ReplicaSet in one sync (upstream's burstReplicas).
const BURST: usize = 500;
/// How long unmet expectations hold a ReplicaSet back (a lost watch event must not stall it).
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Expectation {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Option<Instant>,
}

/// The owners one instance of this controller manages, seen as ReplicaSets.
#[derive(Clone)]
enum Owners {
    ReplicaSets(Cache<ReplicaSet>),
    ReplicationControllers(Cache<ReplicationController>),
}

impl Owners {
    fn kind(&self) -> (&'static str, &'static str, &'static str) {
        match self {
            Owners::ReplicaSets(_) => ("apps/v1", "ReplicaSet", "replicasets"),
            Owners::ReplicationControllers(_) => ("v1", "ReplicationController", "replicationcontrollers"),
        }
    }

    fn get(&self, ns: &str, name: &str) -> Option<Arc<ReplicaSet>> {
        match self {
            Owners::ReplicaSets(c) => c.get(ns, name),
            Owners::ReplicationControllers(c) => c.get(ns, name).map(|rc| Arc::new(as_replicaset(&rc))),
        }
    }

    fn in_namespace(&self, ns: &str) -> Vec<Arc<ReplicaSet>> {
        match self {
            Owners::ReplicaSets(c) => c.in_namespace(ns),
            Owners::ReplicationControllers(c) => c.in_namespace(ns).iter().map(|rc| Arc::new(as_replicaset(rc))).collect(),
        }
    }

    async fn synced(&self) {
        match self {
            Owners::ReplicaSets(c) => c.synced().await,
            Owners::ReplicationControllers(c) => c.synced().await,
        }
    }
}

/// A ReplicationController in ReplicaSet form: its map selector becomes matchLabels.
fn as_replicaset(rc: &ReplicationController) -> ReplicaSet {
    let spec = rc.spec.clone().unwrap_or_default();
    let status = rc.status.clone().map(|s| k8s_openapi::api::apps::v1::ReplicaSetStatus {
        replicas: s.replicas,
        fully_labeled_replicas: s.fully_labeled_replicas,
        ready_replicas: s.ready_replicas,
        available_replicas: s.available_replicas,
        observed_generation: s.observed_generation,
        conditions: s.conditions.map(|cs| {
            cs.into_iter()
                .map(|c| k8s_openapi::api::apps::v1::ReplicaSetCondition { type_: c.type_, status: c.status, reason: c.reason, message: c.message, last_transition_time: c.last_transition_time })
                .collect()
        }),
        ..Default::default()
    });
    ReplicaSet {
        metadata: rc.metadata.clone(),
        spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
            replicas: spec.replicas,
            min_ready_seconds: spec.min_ready_seconds,
            selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector { match_labels: spec.selector, match_expressions: None },
            template: spec.template,
        }),
        status,
    }
}

struct Ctx {
    client: Client,
    recorder: Recorder,
    replicasets: Owners,
    pods: Cache<CachedPod>,
    expectations: Mutex<HashMap<Key, Expectation>>,
    queue: WorkQueue<Key>,
}

pub async fn run(client: Client) {
    let (queue, rx) = WorkQueue::new();
    let q = queue.clone();
    let replicasets = Owners::ReplicaSets(Cache::<ReplicaSet>::spawn(
        Api::all(client.clone()),
        Box::new(move |_, new| {
            if let Some(rs) = new {
                q.add((rs.namespace().unwrap_or_default(), rs.name_any()));
            }
        }),
    ));
    run_with(client, replicasets, queue, rx).await;
}

/// The replication controller: the same loop over core/v1 ReplicationControllers.
pub async fn run_replication_controllers(client: Client) {
    let (queue, rx) = WorkQueue::new();
    let q = queue.clone();
    let owners = Owners::ReplicationControllers(Cache::<ReplicationController>::spawn(
        Api::all(client.clone()),
        Box::new(move |_, new| {
            if let Some(rc) = new {
                q.add((rc.namespace().unwrap_or_default(), rc.name_any()));
            }
        }),
    ));
    run_with(client, owners, queue, rx).await;
}

async fn run_with(client: Client, replicasets: Owners, queue: WorkQueue<Key>, rx: tokio::sync::mpsc::UnboundedReceiver<Key>) {
    let q = queue.clone();
    let rs_for_pods = replicasets.clone();
    let pods = Cache::<CachedPod>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            for pod in [old, new].into_iter().flatten() {
                enqueue_for_pod(&q, &rs_for_pods, pod);
            }
        }),
    );
    replicasets.synced().await;
    pods.synced().await;
    let component = match replicasets {
        Owners::ReplicaSets(_) => "replicaset-controller",
        Owners::ReplicationControllers(_) => "replication-controller",
    };
    let recorder = Recorder::new(client.clone(), component);
    let ctx = Arc::new(Ctx { client, recorder, replicasets, pods, expectations: Mutex::new(HashMap::new()), queue: queue.clone() });
    run_workers(queue, rx, 4, move |key| {
        let ctx = ctx.clone();
        async move {
            if let Err(error) = sync(&ctx, &key).await {
                tracing::debug!(%error, namespace = %key.0, name = %key.1, "replicaset sync failed; retrying");
                ctx.queue.add_after(key, Duration::from_secs(1));
            }
        }
    })
    .await;
}

/// A pod change wakes its controlling ReplicaSet, or for an orphan every ReplicaSet that may
/// adopt it.
fn enqueue_for_pod(queue: &WorkQueue<Key>, replicasets: &Owners, pod: &CachedPod) {
    let ns = pod.namespace().unwrap_or_default();
    match controller_of(pod) {
        Some(owner) if owner.kind == replicasets.kind().1 => queue.add((ns, owner.name.clone())),
        Some(_) => {}
        None => {
            let labels = pod.labels();
            for rs in replicasets.in_namespace(&ns) {
                if rs.spec.as_ref().is_some_and(|s| labels::matches(&s.selector, labels)) {
                    queue.add((ns.clone(), rs.name_any()));
                }
            }
        }
    }
}

fn controller_of(pod: &CachedPod) -> Option<&OwnerReference> {
    pod.metadata.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))
}

pub(crate) fn is_active(pod: &CachedPod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    pod.metadata.deletion_timestamp.is_none() && phase != "Succeeded" && phase != "Failed"
}

pub(crate) fn ready_since(pod: &CachedPod) -> Option<jiff::Timestamp> {
    let condition = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(condition.last_transition_time.as_ref().map(|t| t.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

/// Ready for at least `min_ready` (upstream's IsPodAvailable).
pub(crate) fn is_available(pod: &CachedPod, min_ready: i32, now: jiff::Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready <= 0 => true,
        Some(since) => since + jiff::SignedDuration::from_secs(i64::from(min_ready)) <= now,
    }
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

async fn sync(ctx: &Ctx, key: &Key) -> Result<(), SyncError> {
    let (ns, name) = key;
    let Some(rs) = ctx.replicasets.get(ns, name) else {
        ctx.expectations.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        return Ok(());
    };
    let Some(spec) = rs.spec.clone() else { return Ok(()) };
    let uid = rs.uid().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);

    let mut owned: Vec<Arc<CachedPod>> = Vec::new();
    for pod in ctx.pods.controlled_by(&uid) {
        if labels::matches(&spec.selector, pod.labels()) {
            owned.push(pod);
        } else if rs.metadata.deletion_timestamp.is_none() {
            release(&pods_api, &pod, &uid).await;
        }
    }
    if rs.metadata.deletion_timestamp.is_none() {
        for pod in ctx.pods.orphans_in(ns) {
            if controller_of(&pod).is_none() && pod.metadata.deletion_timestamp.is_none() && labels::matches(&spec.selector, pod.labels()) && adopt(&pods_api, &pod, owner_ref(&rs, &ctx.replicasets)).await {
                owned.push(pod);
            }
        }
    }
    let active: Vec<Arc<CachedPod>> = owned.iter().filter(|p| is_active(p)).cloned().collect();

    let mut failure = None;
    if rs.metadata.deletion_timestamp.is_none() && expectations_met(ctx, key) {
        let want = spec.replicas.unwrap_or(1).max(0) as usize;
        if active.len() < want {
            failure = create_pods(ctx, key, &rs, want - active.len()).await;
        } else if active.len() > want {
            delete_pods(ctx, key, &rs, &pods_api, &active, active.len() - want).await;
        }
    }
    update_status(ctx, &rs, &owned, failure).await?;
    // Pods become available minReadySeconds after Ready without any event to announce it.
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = jiff::Timestamp::now();
    if min_ready > 0 && active.iter().any(|p| ready_since(p).is_some() && !is_available(p, min_ready, now)) {
        ctx.queue.add_after(key.clone(), Duration::from_secs(1));
    }
    Ok(())
}

fn expectations_met(ctx: &Ctx, key: &Key) -> bool {
    let mut all = ctx.expectations.lock().unwrap_or_else(|e| e.into_inner());
    let Some(exp) = all.get_mut(key) else { return true };
    exp.creates.retain(|name| ctx.pods.get(&key.0, name).is_none());
    exp.deletes.retain(|name| ctx.pods.get(&key.0, name).is_some_and(|p| p.metadata.deletion_timestamp.is_none()));
    let met = (exp.creates.is_empty() && exp.deletes.is_empty()) || exp.since.is_some_and(|s| s.elapsed() > EXPECTATION_TIMEOUT);
    if met {
        all.remove(key);
    }
    met
}

fn expect(ctx: &Ctx, key: &Key, creates: &[String], deletes: &[String]) {
    let mut all = ctx.expectations.lock().unwrap_or_else(|e| e.into_inner());
    let exp = all.entry(key.clone()).or_default();
    exp.creates.extend(creates.iter().cloned());
    exp.deletes.extend(deletes.iter().cloned());
    exp.since = Some(Instant::now());
}

fn owner_ref(rs: &ReplicaSet, owners: &Owners) -> OwnerReference {
    let (api_version, kind, _) = owners.kind();
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: rs.name_any(),
        uid: rs.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

async fn adopt(api: &Api<Pod>, pod: &CachedPod, owner: OwnerReference) -> bool {
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.push(owner);
    // The resourceVersion makes adoption a compare-and-swap against a concurrent adopter.
    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": pod.resource_version()}});
    api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await.is_ok()
}

async fn release(api: &Api<Pod>, pod: &CachedPod, uid: &str) {
    let refs: Vec<&OwnerReference> = pod.metadata.owner_references.iter().flatten().filter(|o| o.uid != uid).collect();
    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": pod.resource_version()}});
    if let Err(error) = api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        tracing::debug!(%error, pod = %pod.name_any(), "releasing pod failed");
    }
}

fn pod_from_template(rs: &ReplicaSet, owner: OwnerReference) -> Pod {
    let template = rs.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Creates `count` pods in doubling batches (1, 2, 4, ...) so a template that cannot work fails
/// once, not `count` times. Returns the error message of a failed create.
async fn create_pods(ctx: &Ctx, key: &Key, rs: &ReplicaSet, count: usize) -> Option<String> {
    let template = pod_from_template(rs, owner_ref(rs, &ctx.replicasets));
    let mut remaining = count.min(BURST);
    let mut batch = 1;
    while remaining > 0 {
        let size = batch.min(remaining);
        let params = PostParams::default();
        let results = futures_util::future::join_all((0..size).map(|_| crate::client::create_for_name(&ctx.client, &key.0, &params, &template))).await;
        let created: Vec<String> = results.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
        expect(ctx, key, &created, &[]);
        let (api_version, kind, _) = ctx.replicasets.kind();
        for name in &created {
            ctx.recorder.record_for(events::reference(rs, api_version, kind), "Normal", "SuccessfulCreate", format!("Created pod: {name}"));
        }
        if let Some(Err(error)) = results.into_iter().find(|r| r.is_err()) {
            tracing::warn!(%error, replicaset = %key.1, "creating pods failed");
            ctx.recorder.record_for(events::reference(rs, api_version, kind), "Warning", "FailedCreate", format!("Error creating: {error}"));
            return Some(error.to_string());
        }
        remaining -= size;
        batch *= 2;
    }
    None
}

/// Upstream's ranking of which pods go first when scaling down.
fn deletion_rank(pod: &CachedPod) -> impl Ord {
    let status = pod.status.as_ref();
    let assigned = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| !n.is_empty());
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let ready = ready_since(pod);
    let restarts: i32 = status.and_then(|s| s.container_statuses.as_ref()).map(|cs| cs.iter().map(|c| c.restart_count).sum()).unwrap_or(0);
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    // Ascending: unassigned, earlier phase, not ready, ready more recently, more restarts, newer.
    (assigned, phase, ready.is_some(), std::cmp::Reverse(ready), std::cmp::Reverse(restarts), std::cmp::Reverse(created))
}

async fn delete_pods(ctx: &Ctx, key: &Key, rs: &ReplicaSet, api: &Api<Pod>, active: &[Arc<CachedPod>], count: usize) {
    let mut victims: Vec<&Arc<CachedPod>> = active.iter().collect();
    victims.sort_by_cached_key(|p| deletion_rank(p));
    let victims: Vec<&Arc<CachedPod>> = victims.into_iter().take(count.min(BURST)).collect();
    let names: Vec<String> = victims.iter().map(|p| p.name_any()).collect();
    expect(ctx, key, &[], &names);
    let deletes = victims.iter().map(|pod| {
        let params = DeleteParams { preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }), ..Default::default() };
        let name = pod.name_any();
        async move { (name.clone(), api.delete(&name, &params).await) }
    });
    let (api_version, kind, _) = ctx.replicasets.kind();
    for (name, result) in futures_util::future::join_all(deletes).await {
        match result {
            Ok(_) => ctx.recorder.record_for(events::reference(rs, api_version, kind), "Normal", "SuccessfulDelete", format!("Deleted pod: {name}")),
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {}
            Err(error) => tracing::warn!(%error, pod = %name, "deleting pod failed"),
        }
    }
}

async fn update_status(ctx: &Ctx, rs: &ReplicaSet, owned: &[Arc<CachedPod>], failure: Option<String>) -> Result<(), SyncError> {
    let spec = rs.spec.clone().unwrap_or_default();
    let now = jiff::Timestamp::now();
    let active: Vec<&Arc<CachedPod>> = owned.iter().filter(|p| is_active(p)).collect();
    let template_labels: BTreeMap<String, String> = spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
    let fully_labeled = active.iter().filter(|p| labels::matches_map(&template_labels, p.labels())).count();
    let ready = active.iter().filter(|p| ready_since(p).is_some()).count();
    let available = active.iter().filter(|p| is_available(p, spec.min_ready_seconds.unwrap_or(0), now)).count();
    let old = rs.status.clone().unwrap_or_default();
    let mut conditions = old.conditions.clone().unwrap_or_default();
    conditions.retain(|c| c.type_ != "ReplicaFailure");
    if let Some(message) = &failure {
        conditions.push(k8s_openapi::api::apps::v1::ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some(message.clone()),
            last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
        });
    }
    let status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs.metadata.generation,
        "conditions": if conditions.is_empty() { serde_json::Value::Null } else { json!(conditions) },
    });
    let unchanged = old.replicas as usize == active.len()
        && old.fully_labeled_replicas.unwrap_or(0) as usize == fully_labeled
        && old.ready_replicas.unwrap_or(0) as usize == ready
        && old.available_replicas.unwrap_or(0) as usize == available
        && old.observed_generation == rs.metadata.generation
        && old.conditions.clone().unwrap_or_default().len() == conditions.len()
        && failure.is_none();
    if unchanged {
        return Ok(());
    }
    let (api_version, kind, plural) = ctx.replicasets.kind();
    let resource = kube::api::ApiResource::from_gvk_with_plural(&kube::core::GroupVersionKind::gvk(api_version.split_once('/').map_or("", |(g, _)| g), api_version.rsplit('/').next().unwrap_or("v1"), kind), plural);
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(ctx.client.clone(), &rs.namespace().unwrap_or_default(), &resource);
    match api.patch_status(&rs.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
