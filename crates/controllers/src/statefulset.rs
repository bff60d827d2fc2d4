//! The StatefulSet controller: pods with stable names `<set>-<ordinal>`, stable storage (one
//! PersistentVolumeClaim per claim template and ordinal, made before the pod), ordered or
//! parallel pod management, and revision-based updates (RollingUpdate with partition and
//! optional maxUnavailable, or OnDelete), following upstream's stateful_set_control.go.
//!
//! Each template the set ever had is a ControllerRevision; `status.currentRevision` is what the
//! pods ran before the update in progress and `status.updateRevision` what they are moving to.
//! Pods below the partition are (re)made from the current revision, the others from the update
//! revision.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetSpec, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
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

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// Most requests one parallel batch issues (upstream's MaxBatchSize).
const MAX_BATCH: usize = 500;

type Key = (String, String);

struct Ctx {
    client: Client,
    recorder: Recorder,
    sets: Cache<StatefulSet>,
    pods: Cache<CachedPod>,
    revisions: Cache<ControllerRevision>,
    claims: Cache<PersistentVolumeClaim>,
    expectations: Arc<Expectations>,
    queue: WorkQueue<Key>,
}

pub async fn run(client: Client) {
    let (queue, rx) = WorkQueue::new();
    let expectations = Arc::new(Expectations::default());
    let q = queue.clone();
    let sets = Cache::<StatefulSet>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            // A deleted set is synced once more so its expectations are dropped.
            if let Some(set) = new.or(old) {
                q.add((set.namespace().unwrap_or_default(), set.name_any()));
            }
        }),
    );
    let (q, for_pods, exp) = (queue.clone(), sets.clone(), expectations.clone());
    let pods = Cache::<CachedPod>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            if let Some(pod) = new.or(old)
                && let Some(owner) = history::controller_of(pod).filter(|o| o.kind == "StatefulSet")
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
    let (q, for_revisions) = (queue.clone(), sets.clone());
    let revisions = Cache::<ControllerRevision>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            for obj in [old, new].into_iter().flatten() {
                enqueue_owner(&q, &for_revisions, obj);
            }
        }),
    );
    // Claims are only looked up; their changes need no sync.
    let claims = Cache::<PersistentVolumeClaim>::spawn(Api::all(client.clone()), Box::new(|_, _| {}));
    sets.synced().await;
    pods.synced().await;
    revisions.synced().await;
    claims.synced().await;
    let recorder = Recorder::new(client.clone(), "statefulset-controller");
    let ctx = Arc::new(Ctx { client, recorder, sets, pods, revisions, claims, expectations, queue: queue.clone() });
    run_workers(queue, rx, 4, move |key| {
        let ctx = ctx.clone();
        async move {
            if let Err(error) = sync(&ctx, &key).await {
                tracing::debug!(%error, namespace = %key.0, name = %key.1, "statefulset sync failed; retrying");
                ctx.queue.add_after(key, Duration::from_secs(1));
            }
        }
    })
    .await;
}

/// A change to a pod or revision wakes its controlling StatefulSet, or for an orphan every set
/// whose selector matches (one may adopt it).
fn enqueue_owner<K: kube::Resource>(queue: &WorkQueue<Key>, sets: &Cache<StatefulSet>, obj: &K) {
    let ns = obj.namespace().unwrap_or_default();
    match history::controller_of(obj) {
        Some(owner) if owner.kind == "StatefulSet" => queue.add((ns, owner.name.clone())),
        Some(_) => {}
        None => {
            for set in sets.in_namespace(&ns) {
                if set.spec.as_ref().is_some_and(|s| labels::matches(&s.selector, obj.labels())) {
                    queue.add((ns.clone(), set.name_any()));
                }
            }
        }
    }
}

// Identity: names, ordinals and the revision a new pod is made from.

/// The ordinal of `pod_name` if it names a pod of set `set_name` (`<set>-<digits>`).
pub fn ordinal_of(set_name: &str, pod_name: &str) -> Option<i32> {
    let digits = pod_name.strip_prefix(set_name)?.strip_prefix('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn start_ordinal(spec: &StatefulSetSpec) -> i32 {
    spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0).max(0)
}

fn replica_count(spec: &StatefulSetSpec) -> i32 {
    spec.replicas.unwrap_or(1).max(0)
}

pub fn pod_name(set: &str, ordinal: i32) -> String {
    format!("{set}-{ordinal}")
}

pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

fn strategy_type(spec: &StatefulSetSpec) -> &str {
    spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()).unwrap_or("RollingUpdate")
}

fn partition(spec: &StatefulSetSpec) -> i32 {
    spec.update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref()).and_then(|r| r.partition).unwrap_or(0)
}

/// Whether a missing pod at `ordinal` is made from the current revision rather than the update
/// revision. Upstream's condition, precedence and all: ordinals below the partition keep the
/// current revision; without a rollingUpdate block, the first `currentReplicas` do.
pub fn uses_current_revision(spec: &StatefulSetSpec, current_replicas: i32, ordinal: i32) -> bool {
    let start = start_ordinal(spec);
    let rolling = spec.update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
    (strategy_type(spec) == "RollingUpdate" && rolling.is_none() && ordinal < start + current_replicas) || (rolling.is_some() && ordinal < start + partition(spec))
}

/// maxUnavailable resolved against the replica count: percentages round down, never below 1.
pub fn max_unavailable(value: &IntOrString, replicas: i32) -> usize {
    let n = match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let percent: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            (percent * f64::from(replicas) / 100.0).floor() as i32
        }
    };
    n.max(1) as usize
}

// Pod states, as upstream's stateful_set_utils.go names them.

fn phase(pod: &CachedPod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn terminating(pod: &CachedPod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn running_and_ready(pod: &CachedPod) -> bool {
    phase(pod) == "Running" && ready_since(pod).is_some()
}

fn healthy(pod: &CachedPod) -> bool {
    running_and_ready(pod) && !terminating(pod)
}

/// A slot without a pod counts as unavailable, as upstream's not-yet-created pod objects do.
fn unavailable(pod: Option<&CachedPod>, min_ready: i32, now: jiff::Timestamp) -> bool {
    pod.is_none_or(|p| !healthy(p) || !is_available(p, min_ready, now))
}

fn revision_of(pod: &CachedPod) -> &str {
    pod.labels().get(POD_REVISION_LABEL).map(String::as_str).unwrap_or("")
}

// The decisions of one sync, kept apart from the API calls so they can be tested.

/// What to do for one in-range ordinal (by its index in the ordinal range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaStep {
    /// A failed or succeeded pod: delete it; a later sync makes it again.
    Replace(usize),
    /// No pod: make its claims, then the pod.
    Create(usize),
    /// A pending pod: make any claims it still misses.
    Claims(usize),
    /// An existing pod: restore its identity label and claim ownership if they drifted.
    Check(usize),
}

/// Upstream's pass over the replicas. Ordered (monotonic) management stops at the first pod
/// that is not Running, Ready and available (after creating or replacing at most one); the
/// returned flag says it stopped.
pub fn plan_replicas(slots: &[Option<&CachedPod>], monotonic: bool, min_ready: i32, now: jiff::Timestamp) -> (Vec<ReplicaStep>, bool) {
    let mut steps = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        match slot {
            Some(pod) if matches!(phase(pod), "Failed" | "Succeeded") => {
                if !terminating(pod) {
                    steps.push(ReplicaStep::Replace(i));
                }
                if monotonic {
                    return (steps, true);
                }
            }
            None => {
                steps.push(ReplicaStep::Create(i));
                if monotonic {
                    return (steps, true);
                }
            }
            Some(pod) => {
                if phase(pod) == "Pending" {
                    steps.push(ReplicaStep::Claims(i));
                }
                if monotonic && (terminating(pod) || !running_and_ready(pod) || !is_available(pod, min_ready, now)) {
                    return (steps, true);
                }
                steps.push(ReplicaStep::Check(i));
            }
        }
    }
    (steps, false)
}

/// Which pods beyond the ordinal range to delete, given them highest ordinal first. Ordered
/// management deletes one at a time, waits for it to terminate, and only deletes an unhealthy pod
/// if it is the first unhealthy one (`first_unhealthy`, an index into `condemned`). The flag says
/// later work (updates) must wait.
pub fn plan_condemned(condemned: &[&CachedPod], first_unhealthy: Option<usize>, monotonic: bool, min_ready: i32, now: jiff::Timestamp) -> (Vec<usize>, bool) {
    let mut victims = Vec::new();
    for (i, pod) in condemned.iter().enumerate() {
        if terminating(pod) {
            if monotonic {
                return (victims, true);
            }
            continue;
        }
        if monotonic && first_unhealthy != Some(i) && (!running_and_ready(pod) || !is_available(pod, min_ready, now)) {
            return (victims, true);
        }
        victims.push(i);
        if monotonic {
            return (victims, true);
        }
    }
    (victims, false)
}

/// The pods a RollingUpdate deletes now (indexes into the ordinal range), highest first, only at
/// or above the partition. Without maxUnavailable one pod at a time, each waiting for the ones
/// above it to be available again; with it, up to maxUnavailable pods may be down at once.
pub fn plan_rolling_update(slots: &[Option<&CachedPod>], update_revision: &str, partition: i32, max_unavailable: Option<usize>, min_ready: i32, now: jiff::Timestamp) -> Vec<usize> {
    let floor = usize::try_from(partition.max(0)).unwrap_or(0);
    let outdated = |pod: Option<&CachedPod>| pod.is_some_and(|p| revision_of(p) != update_revision && !terminating(p));
    match max_unavailable {
        None => {
            for target in (floor..slots.len()).rev() {
                if outdated(slots[target]) {
                    return vec![target];
                }
                if unavailable(slots[target], min_ready, now) {
                    return vec![];
                }
            }
            vec![]
        }
        Some(max) => {
            let down = slots.iter().filter(|p| unavailable(**p, min_ready, now)).count();
            let budget = max.saturating_sub(down);
            (floor..slots.len()).rev().filter(|t| outdated(slots[*t])).take(budget).collect()
        }
    }
}

/// Status counts over existing pods (upstream's computeReplicaStatus).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i32,
    pub ready: i32,
    pub available: i32,
    pub current: i32,
    pub updated: i32,
}

pub fn count<'a>(pods: impl IntoIterator<Item = &'a CachedPod>, min_ready: i32, now: jiff::Timestamp, current_revision: &str, update_revision: &str) -> Counts {
    let mut c = Counts::default();
    for pod in pods {
        c.replicas += 1;
        if running_and_ready(pod) {
            c.ready += 1;
            if is_available(pod, min_ready, now) {
                c.available += 1;
            }
        }
        if !terminating(pod) {
            if revision_of(pod) == current_revision {
                c.current += 1;
            }
            if revision_of(pod) == update_revision {
                c.updated += 1;
            }
        }
    }
    c
}

// Storage.

fn retention(spec: &StatefulSetSpec) -> (bool, bool) {
    let policy = spec.persistent_volume_claim_retention_policy.as_ref();
    let delete = |v: Option<&String>| v.is_some_and(|v| v == "Delete");
    (delete(policy.and_then(|p| p.when_deleted.as_ref())), delete(policy.and_then(|p| p.when_scaled.as_ref())))
}

/// Which owners a claim should have under the retention policy: the set (deleted with it) and/or
/// its pod (deleted with the pod once scaled away).
pub fn wanted_claim_owners(when_deleted_delete: bool, when_scaled_delete: bool, scaled_down: bool) -> (bool, bool) {
    let pod = when_scaled_delete && scaled_down;
    let set = when_deleted_delete && !pod;
    (set, pod)
}

fn pod_owner_ref(pod: &impl kube::Resource) -> OwnerReference {
    OwnerReference { api_version: "v1".into(), kind: "Pod".into(), name: pod.name_any(), uid: pod.uid().unwrap_or_default(), controller: Some(true), block_owner_deletion: Some(true) }
}

/// The claims a pod at `ordinal` uses, by template name.
fn claims_for(set: &StatefulSet, spec: &StatefulSetSpec, ordinal: i32) -> Vec<(String, PersistentVolumeClaim)> {
    let name = set.name_any();
    let mut out = Vec::new();
    for template in spec.volume_claim_templates.iter().flatten() {
        let template_name = template.name_any();
        let mut claim = template.clone();
        let mut labels = claim.metadata.labels.take().unwrap_or_default();
        labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
        claim.metadata = ObjectMeta {
            name: Some(claim_name(&template_name, &name, ordinal)),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: claim.metadata.annotations.take(),
            finalizers: claim.metadata.finalizers.take(),
            ..Default::default()
        };
        claim.status = None;
        out.push((template_name, claim));
    }
    out
}

fn storage_matches(set: &StatefulSet, spec: &StatefulSetSpec, pod: &CachedPod, ordinal: i32) -> bool {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    claims_for(set, spec, ordinal).iter().all(|(template, claim)| {
        volumes.into_iter().flatten().any(|v| &v.name == template && v.persistent_volume_claim.as_ref().is_some_and(|c| Some(&c.claim_name) == claim.metadata.name.as_ref()))
    })
}

/// A new pod of the set at `ordinal` from `template` (upstream's newStatefulSetPod plus the
/// revision label).
pub fn new_pod(set: &StatefulSet, spec: &StatefulSetSpec, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let name = pod_name(&set.name_any(), ordinal);
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(POD_REVISION_LABEL.into(), revision.into());
    let mut pod_spec = template.spec.clone().unwrap_or_default();
    pod_spec.hostname = Some(name.clone());
    pod_spec.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
    let claims = claims_for(set, spec, ordinal);
    let mut volumes: Vec<Volume> = claims
        .iter()
        .map(|(template, claim)| Volume {
            name: template.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: claim.name_any(), read_only: None }),
            ..Default::default()
        })
        .collect();
    // A template volume with a claim template's name gives way to the claim.
    volumes.extend(pod_spec.volumes.take().into_iter().flatten().filter(|v| !claims.iter().any(|(t, _)| t == &v.name)));
    pod_spec.volumes = Some(volumes).filter(|v| !v.is_empty());
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![history::controller_ref(set)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("persistent volume claim {0} is being deleted")]
    ClaimTerminating(String),
}

impl SyncError {
    /// The error as an event message quotes it.
    fn describe(&self) -> String {
        match self {
            SyncError::Kube(error) => events::describe(error),
            other => other.to_string(),
        }
    }
}

/// Upstream's recordPodEvent: what was done to one of the set's pods, said on the set. `verb` is
/// lower case ("create", "delete", "update"); the reason is `Successful<Verb>`/`Failed<Verb>`.
fn record_pod(work: &Work<'_>, verb: &str, pod: &str, error: Option<String>) {
    let set = work.set.name_any();
    match error {
        None => work.ctx.recorder.normal(work.set, &format!("Successful{}", title(verb)), format!("{verb} Pod {pod} in StatefulSet {set} successful")),
        Some(error) => work.ctx.recorder.warning(work.set, &format!("Failed{}", title(verb)), format!("{verb} Pod {pod} in StatefulSet {set} failed error: {error}")),
    }
}

/// Upstream's recordClaimEvent, its wording kept ("success", and "for" only on failure).
fn record_claim(work: &Work<'_>, verb: &str, claim: &str, pod: &str, error: Option<String>) {
    let set = work.set.name_any();
    match error {
        None => work.ctx.recorder.normal(work.set, &format!("Successful{}", title(verb)), format!("{verb} Claim {claim} Pod {pod} in StatefulSet {set} success")),
        Some(error) => work.ctx.recorder.warning(work.set, &format!("Failed{}", title(verb)), format!("{verb} Claim {claim} for Pod {pod} in StatefulSet {set} failed error: {error}")),
    }
}

fn title(verb: &str) -> String {
    let mut chars = verb.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// One sync's view of the set, shared by its steps.
struct Work<'a> {
    ctx: &'a Ctx,
    key: &'a Key,
    set: &'a StatefulSet,
    spec: &'a StatefulSetSpec,
    pods: Api<Pod>,
    claims: Api<PersistentVolumeClaim>,
    start: i32,
    slots: Vec<Option<Arc<CachedPod>>>,
    current_template: PodTemplateSpec,
    update_template: PodTemplateSpec,
    current_name: String,
    update_name: String,
    current_replicas: i32,
}

async fn sync(ctx: &Ctx, key: &Key) -> Result<(), SyncError> {
    let (ns, name) = key;
    let Some(set) = ctx.sets.get(ns, name) else {
        ctx.expectations.forget(key);
        return Ok(());
    };
    let Some(spec) = set.spec.clone() else { return Ok(()) };
    if !ctx.expectations.satisfied(key) {
        // The watch event that settles them syncs again; this is the backstop for a lost one.
        ctx.queue.add_after(key.clone(), EXPECTATION_TIMEOUT);
        return Ok(());
    }
    let revisions_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);

    let mut revisions = history::claim_revisions(&revisions_api, &ctx.revisions, set.as_ref(), &spec.selector).await?;
    history::sort_revisions(&mut revisions);
    let set_name = set.name_any();
    let pods = history::claim(&Api::<CachedPod>::namespaced(ctx.client.clone(), ns), &ctx.pods, set.as_ref(), |p: &CachedPod| labels::matches(&spec.selector, p.labels()) && ordinal_of(&set_name, &p.name_any()).is_some()).await?;

    // The update revision is the set's template now; an equal older revision is reused (a
    // rollback) by moving it to the front of history.
    let status = set.status.clone().unwrap_or_default();
    let mut collisions = status.collision_count.unwrap_or(0);
    let data = history::template_patch(&spec.template);
    let candidate = history::new_revision(set.as_ref(), spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref()), data, history::next_revision(&revisions));
    let equal = revisions.iter().rfind(|r| history::same_data(r, &candidate)).cloned();
    let update = match equal {
        Some(found) if revisions.last().is_some_and(|last| last.name_any() == found.name_any()) => found,
        Some(found) => Arc::new(history::set_revision_number(&revisions_api, &found, candidate.revision).await?),
        None => Arc::new(history::create(&revisions_api, &set_name, &candidate, &mut collisions).await?),
    };
    let current = revisions.iter().find(|r| status.current_revision.as_deref() == Some(r.name_any().as_str())).cloned().unwrap_or_else(|| update.clone());

    let start = start_ordinal(&spec);
    let count_wanted = replica_count(&spec);
    let mut slots: Vec<Option<Arc<CachedPod>>> = vec![None; usize::try_from(count_wanted).unwrap_or(0)];
    let mut condemned: Vec<Arc<CachedPod>> = Vec::new();
    for pod in &pods {
        let Some(ordinal) = ordinal_of(&set_name, &pod.name_any()) else { continue };
        match usize::try_from(ordinal - start).ok().filter(|i| *i < slots.len()) {
            Some(i) => slots[i] = Some(pod.clone()),
            None => condemned.push(pod.clone()),
        }
    }
    condemned.sort_by_key(|p| std::cmp::Reverse(ordinal_of(&set_name, &p.name_any())));

    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = jiff::Timestamp::now();
    let existing: Vec<Arc<CachedPod>> = slots.iter().flatten().chain(condemned.iter()).cloned().collect();
    let mut counts = count(existing.iter().map(|p| p.as_ref()), min_ready, now, &current.name_any(), &update.name_any());

    let work = Work {
        ctx,
        key,
        set: set.as_ref(),
        spec: &spec,
        pods: pods_api.clone(),
        claims: Api::namespaced(ctx.client.clone(), ns),
        start,
        slots,
        current_template: history::template_of(&current).unwrap_or_else(|| spec.template.clone()),
        update_template: history::template_of(&update).unwrap_or_else(|| spec.template.clone()),
        current_name: current.name_any(),
        update_name: update.name_any(),
        current_replicas: status.current_replicas.unwrap_or(0),
    };
    let result = if set.metadata.deletion_timestamp.is_some() { Ok(()) } else { act(&work, &condemned, &mut counts, min_ready, now).await };

    let status_result = update_status(ctx, &set, &spec, &work, counts, collisions).await;
    truncate_history(&revisions_api, &spec, &revisions, &pods, &work).await;
    if min_ready > 0 {
        // Pods turn available minReadySeconds after Ready with no event to say so.
        let soonest = existing.iter().filter_map(|p| ready_since(p).filter(|_| running_and_ready(p) && !is_available(p, min_ready, now))).map(|since| since + jiff::SignedDuration::from_secs(i64::from(min_ready))).min();
        if let Some(at) = soonest {
            let wait = at.duration_since(now).unsigned_abs() + Duration::from_millis(100);
            ctx.queue.add_after(key.clone(), wait);
        }
    }
    result?;
    status_result
}

/// Creates, deletes and repairs pods for one sync, in upstream's order: replicas in the range,
/// then pods beyond it, then the rolling update.
async fn act(work: &Work<'_>, condemned: &[Arc<CachedPod>], counts: &mut Counts, min_ready: i32, now: jiff::Timestamp) -> Result<(), SyncError> {
    let monotonic = work.spec.pod_management_policy.as_deref() != Some("Parallel");
    let slots: Vec<Option<&CachedPod>> = work.slots.iter().map(|s| s.as_deref()).collect();
    let (steps, blocked) = plan_replicas(&slots, monotonic, min_ready, now);
    run_batched(monotonic, &steps, |step| replica_step(work, step)).await?;
    if blocked {
        return Ok(());
    }

    let set_name = &work.set.name_any();
    let condemned_refs: Vec<&CachedPod> = condemned.iter().map(|p| p.as_ref()).collect();
    // Claims of pods about to go follow the scale-down half of the retention policy first.
    run_batched(monotonic, &condemned_refs, |pod| async move {
        let ordinal = ordinal_of(set_name, &pod.name_any()).unwrap_or(-1);
        fix_claim_owners(work, *pod, ordinal).await
    })
    .await?;
    let first_unhealthy = if slots.iter().any(|p| unavailable(*p, min_ready, now)) {
        None
    } else {
        // Condemned pods are highest first; the first unhealthy one is the lowest.
        (0..condemned_refs.len()).rev().find(|i| unavailable(Some(condemned_refs[*i]), min_ready, now))
    };
    let (victims, wait) = plan_condemned(&condemned_refs, first_unhealthy, monotonic, min_ready, now);
    let victims: Vec<&CachedPod> = victims.into_iter().map(|i| condemned_refs[i]).collect();
    run_batched(monotonic, &victims, |pod| async move { delete_pod(work, pod).await }).await?;
    if wait || strategy_type(work.spec) == "OnDelete" {
        return Ok(());
    }

    let rolling = work.spec.update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
    let max = rolling.and_then(|r| r.max_unavailable.as_ref()).map(|m| max_unavailable(m, replica_count(work.spec)));
    for target in plan_rolling_update(&slots, &work.update_name, partition(work.spec), max, min_ready, now) {
        if let Some(pod) = slots[target] {
            delete_pod(work, pod).await?;
            counts.current -= 1;
        }
    }
    Ok(())
}

/// Runs `f` over `items`: one after another, stopping at the first error, for ordered
/// management; in doubling parallel batches (upstream's slowStartBatch) for Parallel.
async fn run_batched<'a, T, F, Fut>(monotonic: bool, items: &'a [T], f: F) -> Result<(), SyncError>
where
    F: Fn(&'a T) -> Fut,
    Fut: std::future::Future<Output = Result<(), SyncError>>,
{
    if monotonic {
        for item in items {
            f(item).await?;
        }
        return Ok(());
    }
    let mut rest = items;
    let mut size = 1;
    while !rest.is_empty() {
        let (batch, tail) = rest.split_at(size.min(rest.len()));
        let results = futures_util::future::join_all(batch.iter().map(&f)).await;
        if let Some(error) = results.into_iter().find_map(Result::err) {
            return Err(error);
        }
        rest = tail;
        size = (size * 2).min(MAX_BATCH);
    }
    Ok(())
}

async fn replica_step(work: &Work<'_>, step: &ReplicaStep) -> Result<(), SyncError> {
    match *step {
        ReplicaStep::Replace(i) => match work.slots[i].as_deref() {
            Some(pod) => delete_pod(work, pod).await,
            None => Ok(()),
        },
        ReplicaStep::Create(i) => create_pod(work, work.start + i as i32).await,
        ReplicaStep::Claims(i) => match work.slots[i].as_deref() {
            Some(pod) => {
                create_claims(work, work.start + i as i32).await?;
                fix_claim_owners(work, pod, work.start + i as i32).await
            }
            None => Ok(()),
        },
        ReplicaStep::Check(i) => match work.slots[i].as_deref() {
            Some(pod) => check_pod(work, pod, work.start + i as i32).await,
            None => Ok(()),
        },
    }
}

async fn create_pod(work: &Work<'_>, ordinal: i32) -> Result<(), SyncError> {
    let name = pod_name(&work.set.name_any(), ordinal);
    let (_, when_scaled_delete) = retention(work.spec);
    if when_scaled_delete && claims_stale(work, &name, ordinal) {
        // A claim still owned by the previous pod of this name is about to be collected; the new
        // pod must not bind to it.
        work.ctx.queue.add_after(work.key.clone(), Duration::from_secs(1));
        return Ok(());
    }
    if let Err(error) = create_claims(work, ordinal).await {
        record_pod(work, "create", &name, Some(error.describe()));
        return Err(error);
    }
    let (template, revision) = if uses_current_revision(work.spec, work.current_replicas, ordinal) {
        (&work.current_template, &work.current_name)
    } else {
        (&work.update_template, &work.update_name)
    };
    let pod = new_pod(work.set, work.spec, template, ordinal, revision);
    let created = match work.pods.create(&PostParams::default(), &pod).await {
        Ok(created) => created,
        Err(error) => {
            // AlreadyExists only means our cache is behind: no failure to tell (as upstream).
            if !matches!(&error, kube::Error::Api(s) if s.code == 409) {
                record_pod(work, "create", &name, Some(events::describe(&error)));
            }
            return Err(error.into());
        }
    };
    record_pod(work, "create", &name, None);
    work.ctx.expectations.expect_create(work.key, &created.uid().unwrap_or_default());
    fix_claim_owners(work, &created, ordinal).await
}

/// Whether a claim of the pod `name` is owned by an earlier pod of that name (the pod ref is
/// left from a scale-down under whenScaled: Delete).
fn claims_stale(work: &Work<'_>, name: &str, ordinal: i32) -> bool {
    let ns = work.set.namespace().unwrap_or_default();
    claims_for(work.set, work.spec, ordinal).iter().any(|(_, claim)| {
        work.ctx.claims.get(&ns, &claim.name_any()).is_some_and(|existing| existing.owner_references().iter().any(|o| o.kind == "Pod" && o.name == name))
    })
}

async fn create_claims(work: &Work<'_>, ordinal: i32) -> Result<(), SyncError> {
    let ns = work.set.namespace().unwrap_or_default();
    let (when_deleted, when_scaled) = retention(work.spec);
    let scaled_down = ordinal < work.start || ordinal >= work.start + replica_count(work.spec);
    // The set's reference goes on at creation; the pod's needs the pod's uid and comes after.
    let (want_set, _) = wanted_claim_owners(when_deleted, when_scaled, scaled_down);
    let pod = pod_name(&work.set.name_any(), ordinal);
    for (_, mut claim) in claims_for(work.set, work.spec, ordinal) {
        if want_set {
            claim.metadata.owner_references = Some(vec![history::controller_ref(work.set)]);
        }
        match work.ctx.claims.get(&ns, &claim.name_any()) {
            Some(existing) if existing.metadata.deletion_timestamp.is_some() => return Err(SyncError::ClaimTerminating(claim.name_any())),
            Some(_) => {}
            None => match work.claims.create(&PostParams::default(), &claim).await {
                Ok(_) => record_claim(work, "create", &claim.name_any(), &pod, None),
                // Made already; our cache has not caught up.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(e) => {
                    record_claim(work, "create", &claim.name_any(), &pod, Some(events::describe(&e)));
                    return Err(e.into());
                }
            },
        }
    }
    Ok(())
}

/// Puts the retention policy's owner references on `pod`'s claims (upstream's
/// UpdatePodClaimForRetentionPolicy). Claims controlled by something else, or still referring to
/// an earlier incarnation of the set or pod, are left alone.
async fn fix_claim_owners(work: &Work<'_>, pod: &impl kube::Resource, ordinal: i32) -> Result<(), SyncError> {
    let ns = work.set.namespace().unwrap_or_default();
    let set_uid = work.set.uid().unwrap_or_default();
    let pod_uid = pod.uid().unwrap_or_default();
    let set_name = work.set.name_any();
    let pod_name = pod.name_any();
    let (when_deleted, when_scaled) = retention(work.spec);
    let scaled_down = ordinal < work.start || ordinal >= work.start + replica_count(work.spec);
    let (want_set, want_pod) = wanted_claim_owners(when_deleted, when_scaled, scaled_down);
    for (_, claim) in claims_for(work.set, work.spec, ordinal) {
        let Some(existing) = work.ctx.claims.get(&ns, &claim.name_any()) else { continue };
        if existing.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let refs = existing.owner_references();
        let is_set = |o: &OwnerReference| o.kind == "StatefulSet" && o.name == set_name;
        let is_pod = |o: &OwnerReference| o.kind == "Pod" && o.name == pod_name;
        let stale = refs.iter().any(|o| (is_set(o) && o.uid != set_uid) || (is_pod(o) && o.uid != pod_uid));
        let foreign = refs.iter().any(|o| o.controller == Some(true) && !is_set(o) && !is_pod(o));
        if stale || foreign {
            continue;
        }
        let has_set = refs.iter().any(|o| o.uid == set_uid && o.controller == Some(true));
        let has_pod = refs.iter().any(|o| o.uid == pod_uid && o.controller == Some(true));
        let loose = refs.iter().any(|o| (is_set(o) || is_pod(o)) && o.controller != Some(true));
        if has_set == want_set && has_pod == want_pod && !loose {
            continue;
        }
        let mut wanted: Vec<OwnerReference> = refs.iter().filter(|o| !is_set(o) && !is_pod(o)).cloned().collect();
        if want_set {
            wanted.push(history::controller_ref(work.set));
        }
        if want_pod {
            wanted.push(pod_owner_ref(pod));
        }
        let patch = json!({"metadata": {"ownerReferences": wanted, "resourceVersion": existing.resource_version()}});
        work.claims.patch(&existing.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    Ok(())
}

/// Restores a drifted identity label and the storage and retention invariants of a running pod.
async fn check_pod(work: &Work<'_>, pod: &CachedPod, ordinal: i32) -> Result<(), SyncError> {
    let name = pod.name_any();
    if pod.labels().get(POD_NAME_LABEL) != Some(&name) {
        let patch = json!({"metadata": {"labels": {POD_NAME_LABEL: name, POD_INDEX_LABEL: ordinal.to_string()}}});
        let result = work.pods.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await;
        record_pod(work, "update", &name, result.as_ref().err().map(events::describe));
        result?;
    }
    // A pod's volumes cannot change; all that can be done for a missing claim is to make it.
    if !storage_matches(work.set, work.spec, pod, ordinal) {
        create_claims(work, ordinal).await?;
    }
    fix_claim_owners(work, pod, ordinal).await
}

async fn delete_pod(work: &Work<'_>, pod: &CachedPod) -> Result<(), SyncError> {
    let params = DeleteParams { preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }), ..Default::default() };
    work.ctx.expectations.expect_delete(work.key, &pod.uid().unwrap_or_default());
    let name = pod.name_any();
    match work.pods.delete(&name, &params).await {
        Ok(_) => {
            record_pod(work, "delete", &name, None);
            Ok(())
        }
        // Gone already, or replaced by a pod of the same name: nothing of ours failed.
        Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {
            work.ctx.expectations.observe_delete(work.key, &pod.uid().unwrap_or_default());
            Ok(())
        }
        Err(e) => {
            record_pod(work, "delete", &name, Some(events::describe(&e)));
            work.ctx.expectations.observe_delete(work.key, &pod.uid().unwrap_or_default());
            Err(e.into())
        }
    }
}

async fn update_status(ctx: &Ctx, set: &StatefulSet, spec: &StatefulSetSpec, work: &Work<'_>, counts: Counts, collisions: i32) -> Result<(), SyncError> {
    let old = set.status.clone().unwrap_or_default();
    let wanted = replica_count(spec);
    let mut current_replicas = counts.current;
    let mut current_revision = work.current_name.clone();
    // A finished rolling update makes the update revision current.
    if strategy_type(spec) == "RollingUpdate" && counts.updated == wanted && counts.ready == wanted && counts.replicas == wanted {
        current_replicas = counts.updated;
        current_revision = work.update_name.clone();
    }
    let new = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: counts.replicas,
        ready_replicas: Some(counts.ready),
        available_replicas: Some(counts.available),
        current_replicas: Some(current_replicas),
        updated_replicas: Some(counts.updated),
        current_revision: Some(current_revision),
        update_revision: Some(work.update_name.clone()),
        collision_count: Some(collisions),
        conditions: old.conditions.clone(),
    };
    let same = old.observed_generation == new.observed_generation
        && old.replicas == new.replicas
        && old.ready_replicas.unwrap_or(0) == counts.ready
        && old.available_replicas.unwrap_or(0) == counts.available
        && old.current_replicas.unwrap_or(0) == current_replicas
        && old.updated_replicas.unwrap_or(0) == counts.updated
        && old.current_revision == new.current_revision
        && old.update_revision == new.update_revision
        && old.collision_count.unwrap_or(0) == collisions;
    if same {
        return Ok(());
    }
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    let patch = json!({"status": {
        "observedGeneration": new.observed_generation,
        "replicas": new.replicas,
        "readyReplicas": counts.ready,
        "availableReplicas": counts.available,
        "currentReplicas": current_replicas,
        "updatedReplicas": counts.updated,
        "currentRevision": new.current_revision,
        "updateRevision": new.update_revision,
        "collisionCount": collisions,
    }});
    match api.patch_status(&set.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the oldest revisions beyond revisionHistoryLimit that no pod uses and that are
/// neither current nor the update.
async fn truncate_history(api: &Api<ControllerRevision>, spec: &StatefulSetSpec, revisions: &[Arc<ControllerRevision>], pods: &[Arc<CachedPod>], work: &Work<'_>) {
    let Ok(limit) = usize::try_from(spec.revision_history_limit.unwrap_or(10)) else { return };
    let mut live: HashSet<&str> = pods.iter().map(|p| revision_of(p)).collect();
    live.insert(&work.current_name);
    live.insert(&work.update_name);
    let old: Vec<&Arc<ControllerRevision>> = revisions.iter().filter(|r| !live.contains(r.name_any().as_str())).collect();
    if old.len() <= limit {
        return;
    }
    for revision in &old[..old.len() - limit] {
        if let Err(error) = history::delete(api, revision).await {
            tracing::debug!(%error, revision = %revision.name_any(), "pruning statefulset history failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(yaml: serde_json::Value) -> StatefulSet {
        serde_json::from_value(yaml).unwrap()
    }

    fn web(extra: serde_json::Value) -> StatefulSet {
        let mut base = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "set-uid"},
            "spec": {
                "replicas": 3,
                "serviceName": "nginx",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}], "volumes": [{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}],
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
            }
        });
        merge(&mut base, extra);
        set(base)
    }

    fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
        match (base, extra) {
            (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    fn pod(name: &str, phase: &str, ready: bool, revision: &str) -> CachedPod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("{name}-uid"), "labels": {POD_REVISION_LABEL: revision}},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::now()
    }

    #[test]
    fn ordinals_come_from_names_of_this_set_only() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-1-0"), None);
        assert_eq!(ordinal_of("web-1", "web-1-0"), Some(0));
        assert_eq!(ordinal_of("web", "webx-0"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(ordinal_of("web", "web-99999999999"), None);
        let s = web(json!({"spec": {"ordinals": {"start": 5}}}));
        assert_eq!(start_ordinal(s.spec.as_ref().unwrap()), 5);
    }

    #[test]
    fn new_pods_carry_identity_storage_and_revision() {
        let s = web(json!({}));
        let spec = s.spec.clone().unwrap();
        let p = new_pod(&s, &spec, &spec.template, 2, "web-abc");
        assert_eq!(p.name_any(), "web-2");
        let labels = p.labels();
        assert_eq!(labels.get(POD_NAME_LABEL).map(String::as_str), Some("web-2"));
        assert_eq!(labels.get(POD_INDEX_LABEL).map(String::as_str), Some("2"));
        assert_eq!(labels.get(POD_REVISION_LABEL).map(String::as_str), Some("web-abc"));
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        let pod_spec = p.spec.as_ref().unwrap();
        assert_eq!(pod_spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(pod_spec.subdomain.as_deref(), Some("nginx"));
        let volumes = pod_spec.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 2, "the claim replaces the template volume of the same name: {volumes:?}");
        assert_eq!(volumes[0].persistent_volume_claim.as_ref().unwrap().claim_name, "data-web-2");
        assert_eq!(volumes[1].name, "tmp");
        assert!(storage_matches(&s, &spec, &CachedPod::from(&p), 2));
        assert_eq!(p.owner_references()[0].kind, "StatefulSet");
        let claims = claims_for(&s, &spec, 2);
        assert_eq!(claims[0].1.name_any(), "data-web-2");
        assert_eq!(claims[0].1.labels().get("app").map(String::as_str), Some("web"));
    }

    #[test]
    fn ordered_creation_waits_for_each_predecessor() {
        let ready0 = pod("web-0", "Running", true, "r");
        let pending1 = pod("web-1", "Pending", false, "r");
        // Nothing yet: create web-0 only.
        assert_eq!(plan_replicas(&[None, None, None], true, 0, now()), (vec![ReplicaStep::Create(0)], true));
        // web-0 ready: create web-1 only.
        assert_eq!(plan_replicas(&[Some(&ready0), None, None], true, 0, now()), (vec![ReplicaStep::Check(0), ReplicaStep::Create(1)], true));
        // web-1 not ready yet: wait, no web-2.
        assert_eq!(plan_replicas(&[Some(&ready0), Some(&pending1), None], true, 0, now()), (vec![ReplicaStep::Check(0), ReplicaStep::Claims(1)], true));
        // Parallel creates everything at once.
        let (steps, blocked) = plan_replicas(&[Some(&ready0), Some(&pending1), None], false, 0, now());
        assert_eq!(steps, vec![ReplicaStep::Check(0), ReplicaStep::Claims(1), ReplicaStep::Check(1), ReplicaStep::Create(2)]);
        assert!(!blocked);
        // A failed pod is deleted (and made again by a later sync).
        let failed = pod("web-0", "Failed", false, "r");
        assert_eq!(plan_replicas(&[Some(&failed), None], true, 0, now()), (vec![ReplicaStep::Replace(0)], true));
        // minReadySeconds: ready but not yet available holds the next ordinal back.
        let mut fresh = ready0.clone();
        fresh.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        assert_eq!(plan_replicas(&[Some(&fresh), None], true, 30, now()), (vec![], true));
    }

    #[test]
    fn scale_down_goes_from_the_top_one_at_a_time() {
        let p4 = pod("web-4", "Running", true, "r");
        let p3 = pod("web-3", "Running", true, "r");
        assert_eq!(plan_condemned(&[&p4, &p3], None, true, 0, now()), (vec![0], true));
        assert_eq!(plan_condemned(&[&p4, &p3], None, false, 0, now()), (vec![0, 1], false));
        // The top one still terminating: wait.
        let mut going = p4.clone();
        going.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        assert_eq!(plan_condemned(&[&going, &p3], None, true, 0, now()), (vec![], true));
        // An unhealthy pod goes only if it is the first unhealthy one.
        let sick4 = pod("web-4", "Running", false, "r");
        assert_eq!(plan_condemned(&[&sick4, &p3], Some(0), true, 0, now()), (vec![0], true));
        let sick3 = pod("web-3", "Running", false, "r");
        assert_eq!(plan_condemned(&[&sick4, &sick3], Some(1), true, 0, now()), (vec![], true));
        assert_eq!(plan_condemned(&[], None, true, 0, now()), (vec![], false));
    }

    #[test]
    fn rolling_update_respects_partition_and_order() {
        let old: Vec<CachedPod> = (0..4).map(|i| pod(&format!("web-{i}"), "Running", true, "old")).collect();
        let slots: Vec<Option<&CachedPod>> = old.iter().map(Some).collect();
        // Highest first, one at a time.
        assert_eq!(plan_rolling_update(&slots, "new", 0, None, 0, now()), vec![3]);
        // web-3 updated but not ready: wait for it.
        let new3 = pod("web-3", "Running", false, "new");
        let slots: Vec<Option<&CachedPod>> = vec![Some(&old[0]), Some(&old[1]), Some(&old[2]), Some(&new3)];
        assert_eq!(plan_rolling_update(&slots, "new", 0, None, 0, now()), Vec::<usize>::new());
        // web-3 updated and ready: next is web-2.
        let new3 = pod("web-3", "Running", true, "new");
        let slots: Vec<Option<&CachedPod>> = vec![Some(&old[0]), Some(&old[1]), Some(&old[2]), Some(&new3)];
        assert_eq!(plan_rolling_update(&slots, "new", 0, None, 0, now()), vec![2]);
        // Partition 3: nothing below ordinal 3 is touched.
        assert_eq!(plan_rolling_update(&slots, "new", 3, None, 0, now()), Vec::<usize>::new());
        // Partition 2 reaches web-2 but no lower.
        let new2 = pod("web-2", "Running", true, "new");
        let slots: Vec<Option<&CachedPod>> = vec![Some(&old[0]), Some(&old[1]), Some(&new2), Some(&new3)];
        assert_eq!(plan_rolling_update(&slots, "new", 2, None, 0, now()), Vec::<usize>::new());
        assert_eq!(plan_rolling_update(&slots, "new", 0, None, 0, now()), vec![1]);
        // A partition beyond the replicas updates nothing.
        assert_eq!(plan_rolling_update(&slots, "new", 10, None, 0, now()), Vec::<usize>::new());
        // maxUnavailable 2: two at once, fewer while some are already down.
        let slots: Vec<Option<&CachedPod>> = old.iter().map(Some).collect();
        assert_eq!(plan_rolling_update(&slots, "new", 0, Some(2), 0, now()), vec![3, 2]);
        let down = pod("web-0", "Running", false, "old");
        let slots: Vec<Option<&CachedPod>> = vec![Some(&down), Some(&old[1]), Some(&old[2]), Some(&old[3])];
        assert_eq!(plan_rolling_update(&slots, "new", 0, Some(2), 0, now()), vec![3]);
        assert_eq!(plan_rolling_update(&slots, "new", 1, Some(3), 0, now()), vec![3, 2]);
    }

    #[test]
    fn new_pods_below_the_partition_keep_the_current_revision() {
        let s = web(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 2}}}}));
        let spec = s.spec.unwrap();
        assert!(uses_current_revision(&spec, 3, 0));
        assert!(uses_current_revision(&spec, 3, 1));
        assert!(!uses_current_revision(&spec, 3, 2));
        let s = web(json!({"spec": {"ordinals": {"start": 10}, "updateStrategy": {"rollingUpdate": {"partition": 1}}}}));
        let spec = s.spec.unwrap();
        assert!(uses_current_revision(&spec, 3, 10));
        assert!(!uses_current_revision(&spec, 3, 11));
        let s = web(json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}}));
        assert!(!uses_current_revision(&s.spec.unwrap(), 3, 0));
        assert_eq!(max_unavailable(&IntOrString::String("10%".into()), 5), 1);
        assert_eq!(max_unavailable(&IntOrString::String("50%".into()), 5), 2);
        assert_eq!(max_unavailable(&IntOrString::Int(3), 5), 3);
    }

    #[test]
    fn status_counts_and_claim_owners() {
        let pods = [pod("web-0", "Running", true, "a"), pod("web-1", "Running", false, "b"), pod("web-2", "Pending", false, "b")];
        let c = count(pods.iter(), 0, now(), "a", "b");
        assert_eq!(c, Counts { replicas: 3, ready: 1, available: 1, current: 1, updated: 2 });
        // (whenDeleted Delete?, whenScaled Delete?, scaled down?) -> (set ref, pod ref)
        assert_eq!(wanted_claim_owners(false, false, true), (false, false));
        assert_eq!(wanted_claim_owners(true, false, true), (true, false));
        assert_eq!(wanted_claim_owners(false, true, false), (false, false));
        assert_eq!(wanted_claim_owners(false, true, true), (false, true));
        assert_eq!(wanted_claim_owners(true, true, false), (true, false));
        assert_eq!(wanted_claim_owners(true, true, true), (false, true));
    }
}
