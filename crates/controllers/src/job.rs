//! The Job controller (batch/v1), after kube-controller-manager's: runs pods from the template
//! until `completions` of them succeed (or, with no `completions`, until one succeeds and the rest
//! finish: work-queue semantics), at most `parallelism` at a time; replaces failed pods with an
//! exponential back-off; fails the Job on `backoffLimit`, `activeDeadlineSeconds`, a
//! `podFailurePolicy` FailJob rule or, for Indexed Jobs with `backoffLimitPerIndex`, failed
//! indexes; deletes the active pods of a suspended Job. The TTL-after-finished controller lives
//! here too: it deletes a finished Job `ttlSecondsAfterFinished` after it finished.
//!
//! Counting follows upstream's tracking with finalizers: every pod is created with the
//! `batch.kubernetes.io/job-tracking` finalizer; a finished pod's uid first goes into
//! `status.uncountedTerminatedPods`, then its finalizer is removed, then it moves into
//! `succeeded`/`failed`. A pod is therefore counted exactly once even if it is deleted right after
//! it finished. As upstream (1.31+), a Job first gets the interim condition `SuccessCriteriaMet`
//! or `FailureTarget` and the terminal `Complete`/`Failed` only once no pod is terminating.
//!
//! Like the ReplicaSet controller it remembers the creates, deletes and finalizer removals it
//! issued and does not act on a Job again until its cache has seen them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, PodFailurePolicy, SuccessPolicy};
use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::cached_pod::CachedPod;
use crate::cache::Cache;
use crate::events::Recorder;
use crate::labels;
use crate::replicaset::{is_active, ready_since};
use crate::workqueue::{WorkQueue, run_workers};

type Key = (String, String);

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";
/// Both an annotation and a label on the pods of Indexed Jobs.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
const INDEX_IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";
const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The `spec.managedBy` value that means this controller; any other leaves the Job alone.
const MANAGED_BY: &str = "kubernetes.io/job-controller";
const COMPONENT: &str = "job-controller";

/// Upstream keeps `uncountedTerminatedPods` under ~20 KB by moving at most this many pods per sync.
const MAX_UNCOUNTED: usize = 500;
const MAX_CREATE_DELETE: usize = 500;
/// Replacement pods wait 10 s after the first failure, doubling per further failure. The API
/// documentation says the delay is capped at 6 minutes; the controller's code (which this follows)
/// caps it at 10.
const POD_FAILURE_BACKOFF: SignedDuration = SignedDuration::from_secs(10);
const MAX_POD_FAILURE_BACKOFF: SignedDuration = SignedDuration::from_mins(10);
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Upstream's `MaxGeneratedNameLength`: generateName prefixes longer than this are cut.
const MAX_GENERATE_NAME: usize = 58;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Work {
    Job(Key),
    /// A pod that still carries the tracking finalizer but no Job will count it any more.
    OrphanPod(Key),
    /// The TTL-after-finished controller's key.
    Ttl(Key),
}

#[derive(Default)]
struct Expectation {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Option<Instant>,
}

/// How often pods of a Job failed since its last success, for the re-creation back-off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackoffRecord {
    pub failures_after_last_success: i32,
    pub last_failure_time: Option<Timestamp>,
}

struct Ctx {
    client: Client,
    jobs: Cache<Job>,
    pods: Cache<CachedPod>,
    queue: WorkQueue<Work>,
    expectations: Mutex<HashMap<Key, Expectation>>,
    /// Uids of pods whose finalizer this controller removed and whose update the cache has not
    /// shown yet: they must not be counted a second time.
    finalizer_removals: Mutex<HashMap<Key, HashSet<String>>>,
    backoff: Mutex<HashMap<Key, BackoffRecord>>,
    /// The delayed requeue already pending per work item, so frequent syncs do not stack timers.
    wakeups: Mutex<HashMap<Work, Instant>>,
    recorder: Recorder,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key_of<K: kube::Resource>(obj: &K) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Requeues `work` after `delay` unless a wake-up at or before that is already pending.
fn wake_after(ctx: &Ctx, work: Work, delay: Duration) {
    let now = Instant::now();
    let at = now + delay;
    {
        let mut pending = lock(&ctx.wakeups);
        if pending.get(&work).is_some_and(|p| *p > now && *p <= at) {
            return;
        }
        if pending.len() > 4096 {
            pending.retain(|_, p| *p > now);
        }
        pending.insert(work.clone(), at);
    }
    ctx.queue.add_after(work, delay);
}

/// Runs the Job controller and the TTL-after-finished controller until the process ends.
pub async fn run(client: Client) {
    let (queue, rx) = WorkQueue::new();
    let q = queue.clone();
    let jobs = Cache::<Job>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            if let Some(job) = new.or(old) {
                q.add(Work::Job(key_of(job)));
            }
            if let Some(job) = new
                && needs_ttl_cleanup(job)
            {
                q.add(Work::Ttl(key_of(job)));
            }
        }),
    );
    let q = queue.clone();
    let jobs_for_pods = jobs.clone();
    let pods = Cache::<CachedPod>::spawn(Api::all(client.clone()), Box::new(move |old, new| on_pod_change(&q, &jobs_for_pods, old, new)));
    jobs.synced().await;
    pods.synced().await;
    let recorder = Recorder::new(client.clone(), COMPONENT);
    let ctx = Arc::new(Ctx {
        client,
        jobs,
        pods,
        queue: queue.clone(),
        expectations: Mutex::new(HashMap::new()),
        finalizer_removals: Mutex::new(HashMap::new()),
        backoff: Mutex::new(HashMap::new()),
        wakeups: Mutex::new(HashMap::new()),
        recorder,
    });
    run_workers(queue, rx, 4, move |work| {
        let ctx = ctx.clone();
        async move {
            let result = match &work {
                Work::Job(key) => sync_job(&ctx, key).await,
                Work::OrphanPod(key) => sync_orphan_pod(&ctx, key).await,
                Work::Ttl(key) => sync_ttl(&ctx, key).await,
            };
            if let Err(error) = result {
                tracing::debug!(%error, ?work, "job sync failed; retrying");
                ctx.queue.add_after(work, Duration::from_secs(1));
            }
        }
    })
    .await;
}

fn controller_of(pod: &CachedPod) -> Option<&OwnerReference> {
    pod.metadata.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))
}

fn has_finalizer(pod: &CachedPod) -> bool {
    pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

/// The Job a controller reference names, if the cache holds that very Job (same uid).
fn resolve(jobs: &Cache<Job>, ns: &str, owner: &OwnerReference) -> Option<Arc<Job>> {
    if owner.kind != "Job" {
        return None;
    }
    jobs.get(ns, &owner.name).filter(|j| j.uid().as_deref() == Some(owner.uid.as_str()))
}

/// A pod change wakes the Job that controls it, or for an orphan every Job that may adopt it;
/// a finalizer no Job will remove any more is handed to the orphan path.
fn on_pod_change(queue: &WorkQueue<Work>, jobs: &Cache<Job>, old: Option<&CachedPod>, new: Option<&CachedPod>) {
    for pod in [old, new].into_iter().flatten() {
        let ns = pod.namespace().unwrap_or_default();
        match controller_of(pod) {
            Some(owner) if owner.kind == "Job" => {
                if let Some(job) = resolve(jobs, &ns, owner) {
                    queue.add(Work::Job(key_of(job.as_ref())));
                }
            }
            Some(_) => {}
            None => {
                for job in jobs.in_namespace(&ns) {
                    if let Some(selector) = adoption_selector(&job)
                        && labels::matches(&selector, pod.labels())
                    {
                        queue.add(Work::Job(key_of(job.as_ref())));
                    }
                }
            }
        }
    }
    if let Some(pod) = new
        && has_finalizer(pod)
    {
        let orphaned = match controller_of(pod) {
            None => true,
            Some(owner) if owner.kind == "Job" => resolve(jobs, &pod.namespace().unwrap_or_default(), owner).is_none_or(|j| is_finished(&j)),
            Some(_) => false,
        };
        if orphaned {
            queue.add(Work::OrphanPod(key_of(pod)));
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

// ---------------------------------------------------------------------------------------------
// Small predicates over Jobs and pods.

fn conditions(job: &Job) -> &[JobCondition] {
    job.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default()
}

fn find_condition<'a>(list: &'a [JobCondition], type_: &str) -> Option<&'a JobCondition> {
    list.iter().find(|c| c.type_ == type_)
}

fn condition_true(job: &Job, type_: &str) -> bool {
    find_condition(conditions(job), type_).is_some_and(|c| c.status == "True")
}

/// Complete or Failed: nothing more happens to the Job.
pub fn is_finished(job: &Job) -> bool {
    conditions(job).iter().any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn is_suspended(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.suspend) == Some(true)
}

fn managed_elsewhere(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.managed_by.as_deref()).is_some_and(|m| m != MANAGED_BY)
}

fn phase(pod: &CachedPod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn is_ready(pod: &CachedPod) -> bool {
    ready_since(pod).is_some()
}

fn is_terminating(pod: &CachedPod) -> bool {
    pod.metadata.deletion_timestamp.is_some() && !matches!(phase(pod), "Succeeded" | "Failed")
}

/// With a pod failure policy (or `podReplacementPolicy: Failed`) a terminating pod is replaced
/// only once it has actually failed, so that the policy can look at its final state.
fn only_replace_failed(spec: &JobSpec) -> bool {
    spec.pod_replacement_policy.as_deref() == Some("Failed") || spec.pod_failure_policy.is_some()
}

fn is_pod_failed(pod: &CachedPod, spec: &JobSpec) -> bool {
    if phase(pod) == "Failed" {
        return true;
    }
    if only_replace_failed(spec) {
        return false;
    }
    // A deleted pod may never reach a terminal phase (no kubelet to run it): count it as failed.
    pod.metadata.deletion_timestamp.is_some() && phase(pod) != "Succeeded"
}

fn is_indexed(spec: &JobSpec) -> bool {
    spec.completion_mode.as_deref() == Some("Indexed")
}

fn has_backoff_limit_per_index(spec: &JobSpec) -> bool {
    is_indexed(spec) && spec.backoff_limit_per_index.is_some()
}

/// The completion index a pod of an Indexed Job carries in its annotation.
pub fn completion_index(pod: &CachedPod) -> Option<i32> {
    pod.annotations().get(COMPLETION_INDEX)?.parse::<i32>().ok().filter(|i| *i >= 0)
}

fn annotation_count(pod: &CachedPod, key: &str) -> i32 {
    pod.annotations().get(key).and_then(|v| v.parse::<i32>().ok()).filter(|v| *v >= 0).unwrap_or(0)
}

fn valid_index(pod: &CachedPod, completions: i32) -> Option<i32> {
    completion_index(pod).filter(|i| *i < completions)
}

/// The selector the Job's pods are matched with. The API server normally generates
/// `batch.kubernetes.io/controller-uid=<uid>` into `spec.selector` (and the template's labels);
/// when it has not, the controller uses that selector implicitly.
fn selector_of(job: &Job) -> LabelSelector {
    match job.spec.as_ref().and_then(|s| s.selector.clone()) {
        Some(selector) => selector,
        None => LabelSelector { match_labels: Some(BTreeMap::from([(CONTROLLER_UID_LABEL.to_string(), job.uid().unwrap_or_default())])), match_expressions: None },
    }
}

/// The selector orphans are adopted with; an empty one would adopt every pod of the namespace.
fn adoption_selector(job: &Job) -> Option<LabelSelector> {
    let selector = selector_of(job);
    let empty = selector.match_labels.as_ref().is_none_or(BTreeMap::is_empty) && selector.match_expressions.as_ref().is_none_or(Vec::is_empty);
    (!empty).then_some(selector)
}

// ---------------------------------------------------------------------------------------------
// Completed indexes: upstream's ordered intervals, printed as "1,3-5".

/// Sorted, disjoint, non-adjacent closed intervals of completion indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Intervals(pub Vec<(i32, i32)>);

impl Intervals {
    /// Parses `status.completedIndexes`-style text, dropping indexes at or beyond `completions`
    /// and skipping malformed parts, as upstream does.
    pub fn parse(text: &str, completions: i32) -> Self {
        let mut out: Vec<(i32, i32)> = Vec::new();
        if text.is_empty() {
            return Self(out);
        }
        for part in text.split(',') {
            let mut bounds = part.splitn(2, '-');
            let Some(Ok(first)) = bounds.next().map(str::parse::<i32>) else { continue };
            if first >= completions {
                break;
            }
            let last = match bounds.next() {
                Some(l) => match l.parse::<i32>() {
                    Ok(l) => l.min(completions - 1),
                    Err(_) => continue,
                },
                None => first,
            };
            match out.last_mut() {
                Some(prev) if prev.1 == first - 1 => prev.1 = last,
                _ => out.push((first, last)),
            }
        }
        Self(out)
    }

    /// These intervals plus `indexes` (in increasing order).
    pub fn with_indexes(&self, indexes: &[i32]) -> Self {
        self.merge(&Self(indexes.iter().map(|i| (*i, *i)).collect()))
    }

    pub fn merge(&self, other: &Self) -> Self {
        let mut all: Vec<(i32, i32)> = self.0.iter().chain(other.0.iter()).copied().collect();
        all.sort();
        let mut out: Vec<(i32, i32)> = Vec::with_capacity(all.len());
        for (first, last) in all {
            match out.last_mut() {
                Some(prev) if first <= prev.1 + 1 => prev.1 = prev.1.max(last),
                _ => out.push((first, last)),
            }
        }
        Self(out)
    }

    pub fn total(&self) -> usize {
        self.0.iter().map(|(f, l)| (l - f + 1) as usize).sum()
    }

    pub fn has(&self, index: i32) -> bool {
        let at = self.0.partition_point(|(_, last)| *last < index);
        self.0.get(at).is_some_and(|(first, _)| *first <= index)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Intervals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (first, last)) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{first}")?;
            if last == &(first + 1) {
                write!(f, ",{last}")?;
            } else if last > first {
                write!(f, "-{last}")?;
            }
        }
        Ok(())
    }
}

/// The first `count` indexes below `completions` that are neither succeeded, failed nor held
/// by a pod in `busy`.
pub fn first_pending_indexes(busy: &[i32], succeeded: &Intervals, failed: Option<&Intervals>, count: usize, completions: i32) -> Vec<i32> {
    let mut busy: Vec<i32> = busy.to_vec();
    busy.sort_unstable();
    busy.dedup();
    let mut taken = succeeded.with_indexes(&busy);
    if let Some(failed) = failed {
        taken = taken.merge(failed);
    }
    (0..completions).filter(|i| !taken.has(*i)).take(count).collect()
}

/// Whether a success policy's rules are met by the succeeded indexes, with upstream's message.
pub fn match_success_policy(policy: Option<&SuccessPolicy>, completions: i32, succeeded: &Intervals) -> Option<String> {
    let policy = policy?;
    if succeeded.is_empty() {
        return None;
    }
    for (n, rule) in policy.rules.iter().enumerate() {
        let met = match &rule.succeeded_indexes {
            Some(text) => {
                let required = Intervals::parse(text, completions);
                if required.is_empty() {
                    continue;
                }
                let contained: usize = required.0.iter().map(|(f, l)| (*f..=*l).filter(|i| succeeded.has(*i)).count()).sum();
                contained == required.total() || rule.succeeded_count.is_some_and(|c| contained >= c.max(0) as usize)
            }
            None => rule.succeeded_count.is_some_and(|c| succeeded.total() >= c.max(0) as usize),
        };
        if met {
            return Some(format!("Matched rules at index {n}"));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Pod failure policy.

/// What a failure policy says about one failed pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyMatch {
    /// The Job's failure message when a FailJob rule matched.
    pub fail_job: Option<String>,
    /// Whether the failure counts towards backoffLimit (an Ignore rule says no).
    pub counts: bool,
    /// The matched rule's action.
    pub action: Option<String>,
}

/// Matches a failed pod against the rules in order; the first matching rule decides. Exit codes
/// come from terminated containers (init containers after regular ones); a zero exit code never
/// matches.
pub fn match_pod_failure_policy(policy: Option<&PodFailurePolicy>, pod: &CachedPod) -> PolicyMatch {
    let unmatched = PolicyMatch { fail_job: None, counts: true, action: None };
    let Some(policy) = policy else { return unmatched };
    let status = pod.status.clone().unwrap_or_default();
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    for (n, rule) in policy.rules.iter().enumerate() {
        let matched: Option<String> = if let Some(req) = &rule.on_exit_codes {
            let statuses = status.container_statuses.iter().flatten().chain(status.init_container_statuses.iter().flatten());
            statuses
                .filter_map(|cs| Some((cs, cs.state.as_ref()?.terminated.as_ref()?.exit_code)))
                .find(|(cs, code)| {
                    req.container_name.as_ref().is_none_or(|c| c == &cs.name)
                        && *code != 0
                        && match req.operator.as_str() {
                            "In" => req.values.contains(code),
                            "NotIn" => !req.values.contains(code),
                            _ => false,
                        }
                })
                .map(|(cs, code)| format!("Container {} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {n}", cs.name, rule.action))
        } else if let Some(patterns) = &rule.on_pod_conditions {
            status
                .conditions
                .iter()
                .flatten()
                .find(|c| patterns.iter().any(|p| p.type_ == c.type_ && p.status == c.status))
                .map(|c| format!("Pod {ns}/{name} has condition {} matching {} rule at index {n}", c.type_, rule.action))
        } else {
            None
        };
        let Some(message) = matched else { continue };
        let action = Some(rule.action.clone());
        match rule.action.as_str() {
            "Ignore" => return PolicyMatch { fail_job: None, counts: false, action },
            "Count" | "FailIndex" => return PolicyMatch { fail_job: None, counts: true, action },
            "FailJob" => return PolicyMatch { fail_job: Some(message), counts: true, action },
            _ => {}
        }
    }
    unmatched
}

fn fail_job_message(spec: &JobSpec, pods: &[Arc<CachedPod>]) -> Option<String> {
    let policy = spec.pod_failure_policy.as_ref()?;
    pods.iter().filter(|p| is_pod_failed(p, spec)).find_map(|p| match_pod_failure_policy(Some(policy), p).fail_job)
}

// ---------------------------------------------------------------------------------------------
// Re-creation back-off.

/// When a pod finished: its containers' latest finish, else when it stopped being ready, else
/// when it was deleted, else its creation.
pub fn finish_time(pod: &CachedPod) -> Timestamp {
    let status = pod.status.as_ref();
    let containers = status.and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    let from_containers = containers.iter().try_fold(None::<Timestamp>, |latest, cs| {
        let at = cs.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref()?.0;
        Some(Some(latest.map_or(at, |l: Timestamp| l.max(at))))
    });
    if let Some(Some(at)) = from_containers {
        return at;
    }
    let not_ready = status.and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "False")).and_then(|c| c.last_transition_time.as_ref());
    if let Some(at) = not_ready {
        return at.0;
    }
    if let Some(deleted) = &pod.metadata.deletion_timestamp {
        return deleted.0 - SignedDuration::from_secs(pod.metadata.deletion_grace_period_seconds.unwrap_or(0));
    }
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The record after this sync's newly finished pods: a success resets the failure count except
/// for failures that happened after the last success.
pub fn next_backoff_record(old: BackoffRecord, new_succeeded: &[Arc<CachedPod>], new_failed: &[Arc<CachedPod>]) -> BackoffRecord {
    let mut failed: Vec<Timestamp> = new_failed.iter().map(|p| finish_time(p)).collect();
    failed.sort();
    if new_succeeded.is_empty() {
        let Some(last) = failed.last() else { return old };
        return BackoffRecord { failures_after_last_success: old.failures_after_last_success + failed.len() as i32, last_failure_time: Some(*last) };
    }
    let last_success = new_succeeded.iter().map(|p| finish_time(p)).max().unwrap_or(Timestamp::UNIX_EPOCH);
    let after: Vec<Timestamp> = failed.into_iter().filter(|t| *t > last_success).collect();
    BackoffRecord { failures_after_last_success: after.len() as i32, last_failure_time: after.last().copied() }
}

/// How long re-creation must still wait after `failures` failures, the last at `last`.
pub fn remaining_backoff(failures: i32, last: Option<Timestamp>, now: Timestamp) -> SignedDuration {
    let Some(last) = last.filter(|_| failures > 0) else { return SignedDuration::ZERO };
    let mut delay = POD_FAILURE_BACKOFF;
    for _ in 1..failures {
        delay *= 2;
        if delay >= MAX_POD_FAILURE_BACKOFF {
            delay = MAX_POD_FAILURE_BACKOFF;
            break;
        }
    }
    let elapsed = now.duration_since(last);
    if delay < elapsed { SignedDuration::ZERO } else { delay - elapsed }
}

fn to_std(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

// ---------------------------------------------------------------------------------------------
// Conditions.

fn new_condition(type_: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: (!reason.is_empty()).then(|| reason.to_string()),
        message: (!message.is_empty()).then(|| message.to_string()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets a condition, or adds it unless it would be added as False; true when the list changed.
fn ensure_condition(list: &mut Vec<JobCondition>, type_: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> bool {
    if let Some(existing) = list.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != status || existing.reason.as_deref().unwrap_or("") != reason || existing.message.as_deref().unwrap_or("") != message {
            *existing = new_condition(type_, status, reason, message, now);
            return true;
        }
        return false;
    }
    if status != "False" {
        list.push(new_condition(type_, status, reason, message, now));
        return true;
    }
    false
}

fn failure_target(reason: &str, message: &str, now: Timestamp) -> JobCondition {
    new_condition("FailureTarget", "True", reason, message, now)
}

fn is_success_criteria_met(c: Option<&JobCondition>) -> bool {
    c.is_some_and(|c| c.type_ == "SuccessCriteriaMet" && c.status == "True")
}

fn job_event(ctx: &Ctx, job: &Job, warning: bool, reason: &str, message: String) {
    if warning {
        ctx.recorder.warning(job, reason, message);
    } else {
        ctx.recorder.normal(job, reason, message);
    }
}

// ---------------------------------------------------------------------------------------------
// Expectations.

fn expectations_met(ctx: &Ctx, key: &Key) -> bool {
    let mut all = lock(&ctx.expectations);
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
    let mut all = lock(&ctx.expectations);
    let exp = all.entry(key.clone()).or_default();
    exp.creates.extend(creates.iter().cloned());
    exp.deletes.extend(deletes.iter().cloned());
    exp.since = Some(Instant::now());
}

fn delete_observed(ctx: &Ctx, key: &Key, name: &str) {
    if let Some(exp) = lock(&ctx.expectations).get_mut(key) {
        exp.deletes.remove(name);
    }
}

/// The uids whose finalizer removal the cache has not shown yet.
fn pending_finalizer_removals(ctx: &Ctx, key: &Key, pods: &[Arc<CachedPod>]) -> HashSet<String> {
    let mut all = lock(&ctx.finalizer_removals);
    let Some(uids) = all.get_mut(key) else { return HashSet::new() };
    let still: HashSet<String> = pods.iter().filter(|p| has_finalizer(p)).filter_map(|p| p.uid()).collect();
    uids.retain(|uid| still.contains(uid));
    let out = uids.clone();
    if uids.is_empty() {
        all.remove(key);
    }
    out
}

fn forget(ctx: &Ctx, key: &Key) {
    lock(&ctx.expectations).remove(key);
    lock(&ctx.finalizer_removals).remove(key);
    lock(&ctx.backoff).remove(key);
    let mut wakeups = lock(&ctx.wakeups);
    wakeups.remove(&Work::Job(key.clone()));
    wakeups.remove(&Work::Ttl(key.clone()));
}

// ---------------------------------------------------------------------------------------------
// The sync.

/// Everything one sync learns about a Job before it writes (upstream's syncJobCtx).
struct Tracking {
    pods: Vec<Arc<CachedPod>>,
    active_pods: Vec<Arc<CachedPod>>,
    finished: Option<JobCondition>,
    succeeded: i32,
    failed: i32,
    prev_succeeded_indexes: Intervals,
    succeeded_indexes: Intervals,
    failed_indexes: Option<Intervals>,
    new_backoff: BackoffRecord,
    expected_rm: HashSet<String>,
    uncounted_succeeded: HashSet<String>,
    uncounted_failed: HashSet<String>,
    /// Per index, the failed pod whose deletion waits until its replacement carries its failure
    /// count (backoffLimitPerIndex).
    delayed: HashMap<i32, Arc<CachedPod>>,
    terminating: i32,
    ready: i32,
}

async fn sync_job(ctx: &Ctx, key: &Key) -> Result<(), SyncError> {
    let (ns, name) = key;
    let Some(shared) = ctx.jobs.get(ns, name) else {
        forget(ctx, key);
        release_pods_of_gone_job(ctx, ns, name);
        return Ok(());
    };
    if managed_elsewhere(&shared) {
        return Ok(());
    }
    if is_finished(&shared) {
        lock(&ctx.backoff).remove(key);
        // A backstop: the finalizers should all be gone before the Job is marked finished.
        for pod in ctx.pods.controlled_by(&shared.uid().unwrap_or_default()) {
            if has_finalizer(&pod) {
                ctx.queue.add(Work::OrphanPod(key_of(pod.as_ref())));
            }
        }
        return Ok(());
    }
    let Some(spec) = shared.spec.clone() else { return Ok(()) };
    let mode = spec.completion_mode.as_deref().unwrap_or("NonIndexed");
    if mode != "NonIndexed" && mode != "Indexed" {
        job_event(ctx, &shared, true, "UnknownCompletionMode", "Skipped Job sync because completion mode is unknown".into());
        return Ok(());
    }
    let indexed = mode == "Indexed";
    let completions = spec.completions;
    if indexed && completions.is_none() {
        tracing::debug!(namespace = %ns, name = %name, "indexed job without completions; skipped");
        return Ok(());
    }
    let completions_n = completions.unwrap_or(0);
    let suspended = is_suspended(&shared);
    let mut job = (*shared).clone();
    let now = Timestamp::now();
    let status = job.status.get_or_insert_with(Default::default);
    let uncounted = status.uncounted_terminated_pods.get_or_insert_with(Default::default);
    let uncounted_succeeded: HashSet<String> = uncounted.succeeded.iter().flatten().cloned().collect();
    let uncounted_failed: HashSet<String> = uncounted.failed.iter().flatten().cloned().collect();

    // Checked before the pods are read: a pod created after this check is seen next time.
    let satisfied = expectations_met(ctx, key);
    let pods = pods_for_job(ctx, &job).await;
    let active_pods: Vec<Arc<CachedPod>> = pods.iter().filter(|p| is_active(p)).cloned().collect();
    let expected_rm = pending_finalizer_removals(ctx, key, &pods);
    let mut t = Tracking {
        ready: active_pods.iter().filter(|p| is_ready(p)).count() as i32,
        terminating: pods.iter().filter(|p| is_terminating(p)).count() as i32,
        pods,
        active_pods,
        finished: None,
        succeeded: 0,
        failed: 0,
        prev_succeeded_indexes: Intervals::default(),
        succeeded_indexes: Intervals::default(),
        failed_indexes: None,
        new_backoff: BackoffRecord::default(),
        expected_rm,
        uncounted_succeeded,
        uncounted_failed,
        delayed: HashMap::new(),
    };
    let mut active = t.active_pods.len() as i32;

    // Finished pods not counted yet: they still carry the finalizer and are in no uncounted list.
    let fresh = |p: &Arc<CachedPod>, uncounted: &HashSet<String>| -> bool {
        let uid = p.uid().unwrap_or_default();
        has_finalizer(p) && !uncounted.contains(&uid) && !t.expected_rm.contains(&uid) && (!indexed || valid_index(p, completions_n).is_some())
    };
    let new_succeeded: Vec<Arc<CachedPod>> = t.pods.iter().filter(|p| fresh(p, &t.uncounted_succeeded) && phase(p) == "Succeeded").cloned().collect();
    let new_failed: Vec<Arc<CachedPod>> = t.pods.iter().filter(|p| fresh(p, &t.uncounted_failed) && is_pod_failed(p, &spec)).cloned().collect();
    let counted_failures = new_failed.iter().filter(|p| match_pod_failure_policy(spec.pod_failure_policy.as_ref(), p).counts).count();
    let status = job.status.get_or_insert_with(Default::default);
    t.succeeded = status.succeeded.unwrap_or(0) + new_succeeded.len() as i32 + t.uncounted_succeeded.len() as i32;
    t.failed = status.failed.unwrap_or(0) + counted_failures as i32 + t.uncounted_failed.len() as i32;

    let mut start_time_set = false;
    if status.start_time.is_none() && !suspended {
        status.start_time = Some(Time(now));
        start_time_set = true;
    }
    let old_backoff = lock(&ctx.backoff).get(key).copied().unwrap_or_default();
    t.new_backoff = next_backoff_record(old_backoff, &new_succeeded, &new_failed);

    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let exceeds_backoff = t.failed > backoff_limit;
    t.finished = find_condition(conditions(&job), "SuccessCriteriaMet").filter(|c| c.status == "True").cloned();
    // Once success criteria are met the failure policy no longer matters.
    if t.finished.is_none() {
        if let Some(target) = find_condition(conditions(&job), "FailureTarget").filter(|c| c.status == "True") {
            t.finished = Some(new_condition("Failed", "True", target.reason.as_deref().unwrap_or(""), target.message.as_deref().unwrap_or(""), now));
        } else if let Some(message) = fail_job_message(&spec, &t.pods) {
            t.finished = Some(failure_target("PodFailurePolicy", &message, now));
        }
    }
    if t.finished.is_none() {
        if exceeds_backoff || past_backoff_limit_on_failure(&spec, &t.pods) {
            t.finished = Some(failure_target("BackoffLimitExceeded", "Job has reached the specified backoff limit", now));
        } else if past_active_deadline(&job, now) {
            t.finished = Some(failure_target("DeadlineExceeded", "Job was active longer than specified deadline", now));
        } else if let (Some(deadline), Some(start), false) = (spec.active_deadline_seconds, job.status.as_ref().and_then(|s| s.start_time.as_ref()), is_suspended(&job)) {
            let left = SignedDuration::from_secs(deadline) - now.duration_since(start.0);
            wake_after(ctx, Work::Job(key.clone()), to_std(left));
        }
    }
    if indexed {
        let completed = job.status.as_ref().and_then(|s| s.completed_indexes.clone()).unwrap_or_default();
        t.prev_succeeded_indexes = Intervals::parse(&completed, completions_n);
        let mut new_indexes: Vec<i32> = t.pods.iter().filter(|p| phase(p) == "Succeeded" && has_finalizer(p)).filter_map(|p| valid_index(p, completions_n)).collect();
        new_indexes.sort_unstable();
        new_indexes.dedup();
        t.succeeded_indexes = t.prev_succeeded_indexes.with_indexes(&new_indexes);
        t.succeeded = t.succeeded_indexes.total() as i32;
        if let Some(per_index) = spec.backoff_limit_per_index {
            let failed_indexes = failed_indexes(&job, &spec, &t.pods, per_index, completions_n);
            if t.finished.is_none() {
                if spec.max_failed_indexes.is_some_and(|m| failed_indexes.total() > m.max(0) as usize) {
                    t.finished = Some(failure_target("MaxFailedIndexesExceeded", "Job has exceeded the specified maximal number of failed indexes", now));
                } else if failed_indexes.total() > 0 && (failed_indexes.total() + t.succeeded_indexes.total()) as i32 >= completions_n {
                    t.finished = Some(failure_target("FailedIndexes", "Job has failed indexes", now));
                }
            }
            t.failed_indexes = Some(failed_indexes);
            t.delayed = delayed_deletions(&spec, &t, completions_n);
        }
        if t.finished.is_none()
            && let Some(message) = match_success_policy(spec.success_policy.as_ref(), completions_n, &t.succeeded_indexes)
        {
            t.finished = Some(new_condition("SuccessCriteriaMet", "True", "SuccessPolicy", &message, now));
        }
    }

    let mut suspend_changed = false;
    let mut manage_error: Option<SyncError> = None;
    if t.finished.is_some() {
        let (deleted_ready, deleted, error) = delete_active_pods(ctx, &job, &t.active_pods).await;
        if deleted != active || !satisfied {
            // Pods may remain, or pods this controller created may not be in the cache yet.
            t.finished = None;
        }
        active -= deleted;
        t.terminating += deleted;
        t.ready -= deleted_ready;
        manage_error = error;
    } else {
        let mut managed = false;
        if satisfied && job.metadata.deletion_timestamp.is_none() {
            let (now_active, error) = manage_job(ctx, key, &job, &spec, &mut t, now).await;
            active = now_active;
            manage_error = error;
            managed = true;
        }
        let complete = match completions {
            None => t.succeeded > 0 && active == 0,
            Some(c) => t.succeeded >= c && active == 0,
        };
        if complete {
            t.finished = Some(new_condition("SuccessCriteriaMet", "True", "CompletionsReached", "Reached expected number of succeeded pods", now));
        } else if managed {
            let status = job.status.get_or_insert_with(Default::default);
            let conds = status.conditions.get_or_insert_with(Vec::new);
            if suspended {
                if ensure_condition(conds, "Suspended", "True", "JobSuspended", "Job suspended", now) {
                    suspend_changed = true;
                    job_event(ctx, &job, false, "Suspended", "Job suspended".into());
                }
            } else if ensure_condition(conds, "Suspended", "False", "JobResumed", "Job resumed", now) {
                suspend_changed = true;
                job_event(ctx, &job, false, "Resumed", "Job resumed".into());
                // activeDeadlineSeconds counts from the last resume.
                job.status.get_or_insert_with(Default::default).start_time = Some(Time(now));
            }
            if job.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(Vec::is_empty) {
                job.status.get_or_insert_with(Default::default).conditions = None;
            }
        }
    }

    let status = job.status.get_or_insert_with(Default::default);
    let needs_flush = suspend_changed || start_time_set || active != status.active.unwrap_or(0) || status.ready != Some(t.ready) || status.terminating != Some(t.terminating);
    status.active = (active != 0).then_some(active);
    status.ready = Some(t.ready);
    status.terminating = Some(t.terminating);
    track_status_and_remove_finalizers(ctx, key, &mut job, &spec, &mut t, needs_flush, now).await?;
    match manage_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// With restartPolicy OnFailure failures show as container restarts of running pods.
fn past_backoff_limit_on_failure(spec: &JobSpec, pods: &[Arc<CachedPod>]) -> bool {
    if spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) != Some("OnFailure") {
        return false;
    }
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(phase(p), "Running" | "Pending"))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()))
        .map(|c| c.restart_count)
        .sum();
    let limit = spec.backoff_limit.unwrap_or(6);
    if limit == 0 { restarts > 0 } else { restarts >= limit }
}

fn past_active_deadline(job: &Job, now: Timestamp) -> bool {
    let Some(deadline) = job.spec.as_ref().and_then(|s| s.active_deadline_seconds) else { return false };
    let Some(start) = job.status.as_ref().and_then(|s| s.start_time.as_ref()) else { return false };
    !is_suspended(job) && now.duration_since(start.0) >= SignedDuration::from_secs(deadline)
}

fn failed_indexes(job: &Job, spec: &JobSpec, pods: &[Arc<CachedPod>], per_index: i32, completions: i32) -> Intervals {
    let prev = job.status.as_ref().and_then(|s| s.failed_indexes.clone()).map(|f| Intervals::parse(&f, completions)).unwrap_or_default();
    let mut new: Vec<i32> = pods.iter().filter(|p| has_finalizer(p) && is_index_failed(spec, p, per_index)).filter_map(|p| valid_index(p, completions)).collect();
    new.sort_unstable();
    new.dedup();
    prev.with_indexes(&new)
}

fn is_index_failed(spec: &JobSpec, pod: &CachedPod, per_index: i32) -> bool {
    if !is_pod_failed(pod, spec) {
        return false;
    }
    let m = match_pod_failure_policy(spec.pod_failure_policy.as_ref(), pod);
    if m.action.as_deref() == Some("FailIndex") {
        return true;
    }
    m.counts && annotation_count(pod, INDEX_FAILURE_COUNT) >= per_index
}

fn delayed_deletions(spec: &JobSpec, t: &Tracking, completions: i32) -> HashMap<i32, Arc<CachedPod>> {
    let active: HashSet<i32> = t.active_pods.iter().filter_map(|p| completion_index(p)).collect();
    let mut out: HashMap<i32, Arc<CachedPod>> = HashMap::new();
    for pod in &t.pods {
        let uid = pod.uid().unwrap_or_default();
        if !has_finalizer(pod) || t.expected_rm.contains(&uid) || !is_pod_failed(pod, spec) {
            continue;
        }
        let Some(ix) = valid_index(pod, completions) else { continue };
        if t.succeeded_indexes.has(ix) || t.failed_indexes.as_ref().is_some_and(|f| f.has(ix)) || active.contains(&ix) {
            continue;
        }
        let absolute = |p: &CachedPod| annotation_count(p, INDEX_FAILURE_COUNT) + annotation_count(p, INDEX_IGNORED_FAILURE_COUNT);
        match out.get(&ix) {
            Some(prev) if !(absolute(prev) <= absolute(pod) && finish_time(pod) >= finish_time(prev)) => {}
            _ => {
                out.insert(ix, pod.clone());
            }
        }
    }
    out
}

/// The Job's pods: those it controls and still selects, plus orphans it adopts (with the
/// tracking finalizer added); pods it controls that no longer match are released.
async fn pods_for_job(ctx: &Ctx, job: &Job) -> Vec<Arc<CachedPod>> {
    let ns = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let selector = selector_of(job);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let deleting = job.metadata.deletion_timestamp.is_some();
    let mut out = Vec::new();
    for pod in ctx.pods.controlled_by(&uid) {
        if labels::matches(&selector, pod.labels()) {
            out.push(pod);
        } else if !deleting {
            let refs: Vec<&OwnerReference> = pod.owner_references().iter().filter(|o| o.uid != uid).collect();
            let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": pod.resource_version()}});
            if let Err(error) = api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
                tracing::debug!(%error, pod = %pod.name_any(), "releasing pod failed");
            }
        }
    }
    let Some(adoption) = adoption_selector(job).filter(|_| !deleting) else { return out };
    for pod in ctx.pods.orphans_in(&ns) {
        if controller_of(&pod).is_some() || pod.metadata.deletion_timestamp.is_some() || !labels::matches(&adoption, pod.labels()) {
            continue;
        }
        let mut refs = pod.owner_references().to_vec();
        refs.push(controller_ref(job));
        let mut finalizers = pod.finalizers().to_vec();
        if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
            finalizers.push(TRACKING_FINALIZER.into());
        }
        // The resourceVersion makes adoption a compare-and-swap against a concurrent adopter.
        let patch = json!({"metadata": {"ownerReferences": refs, "finalizers": finalizers, "resourceVersion": pod.resource_version()}});
        if api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await.is_ok() {
            let mut adopted = (*pod).clone();
            adopted.metadata.owner_references = Some(refs);
            adopted.metadata.finalizers = Some(finalizers);
            out.push(Arc::new(adopted));
        }
    }
    out
}

fn controller_ref(job: &Job) -> OwnerReference {
    OwnerReference { api_version: "batch/v1".into(), kind: "Job".into(), name: job.name_any(), uid: job.uid().unwrap_or_default(), controller: Some(true), block_owner_deletion: Some(true) }
}

/// A Job that is gone leaves pods with finalizers nobody counts any more.
fn release_pods_of_gone_job(ctx: &Ctx, ns: &str, name: &str) {
    for pod in ctx.pods.in_namespace(ns) {
        if has_finalizer(&pod) && controller_of(&pod).is_some_and(|o| o.kind == "Job" && o.name == name) {
            ctx.queue.add(Work::OrphanPod(key_of(pod.as_ref())));
        }
    }
}

/// Upstream's ActivePods order: pods earlier in it are removed first.
fn removal_rank(pod: &CachedPod) -> impl Ord + use<> {
    let assigned = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| !n.is_empty());
    let phase = match phase(pod) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    };
    let ready = ready_since(pod);
    let restarts: i32 = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).map(|cs| cs.iter().map(|c| c.restart_count).sum()).unwrap_or(0);
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (assigned, phase, ready.is_some(), std::cmp::Reverse(ready), std::cmp::Reverse(restarts), created.is_some(), std::cmp::Reverse(created))
}

/// Active pods to delete: for Indexed Jobs first those without a valid index and duplicates of
/// an index, then by rank until `at_least` are chosen.
fn active_pods_for_removal(spec: &JobSpec, active: &[Arc<CachedPod>], at_least: usize) -> Vec<Arc<CachedPod>> {
    let mut remove: Vec<Arc<CachedPod>> = Vec::new();
    let mut left: Vec<Arc<CachedPod>> = Vec::new();
    if is_indexed(spec) {
        let completions = spec.completions.unwrap_or(0);
        let mut by_index: BTreeMap<i32, Vec<Arc<CachedPod>>> = BTreeMap::new();
        for pod in active {
            match valid_index(pod, completions) {
                Some(ix) => by_index.entry(ix).or_default().push(pod.clone()),
                None => remove.push(pod.clone()),
            }
        }
        for (_, mut same) in by_index {
            same.sort_by_cached_key(|p| removal_rank(p));
            // The best-placed pod of the index stays.
            if let Some(keep) = same.pop() {
                left.push(keep);
            }
            remove.extend(same);
        }
    } else {
        left = active.to_vec();
    }
    if remove.len() < at_least {
        left.sort_by_cached_key(|p| removal_rank(p));
        let more = at_least - remove.len();
        remove.extend(left.into_iter().take(more));
    }
    remove
}

/// Deletes active pods of a finishing Job, keeping their finalizers: the status tracking counts
/// them and removes the finalizers. Returns (deleted ready, deleted, first error).
async fn delete_active_pods(ctx: &Ctx, job: &Job, pods: &[Arc<CachedPod>]) -> (i32, i32, Option<SyncError>) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let results = futures_util::future::join_all(pods.iter().map(|pod| {
        let api = api.clone();
        async move { (pod.clone(), api.delete(&pod.name_any(), &DeleteParams::default()).await) }
    }))
    .await;
    let (mut ready, mut deleted, mut error) = (0, 0, None);
    for (pod, result) in results {
        match result {
            Err(e) if !not_found(&e) => {
                job_event(ctx, job, true, "FailedDelete", format!("Error deleting: {e}"));
                error.get_or_insert(SyncError::Kube(e));
                continue;
            }
            Err(_) => deleted += 1,
            Ok(_) => {
                deleted += 1;
                job_event(ctx, job, false, "SuccessfulDelete", format!("Deleted pod: {}", pod.name_any()));
            }
        }
        if is_ready(&pod) {
            ready += 1;
        }
    }
    (ready, deleted, error)
}

/// Deletes pods the Job no longer wants (suspended, too many), removing their finalizers first
/// since they will never be counted. Returns (deleted ready, deleted, first error).
async fn delete_job_pods(ctx: &Ctx, key: &Key, job: &Job, pods: &[Arc<CachedPod>]) -> (i32, i32, Option<SyncError>) {
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    expect(ctx, key, &[], &names);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.0);
    let results = futures_util::future::join_all(pods.iter().map(|pod| {
        let api = api.clone();
        async move {
            let name = pod.name_any();
            if has_finalizer(pod) {
                match api.patch(&name, &PatchParams::default(), &remove_finalizer_patch()).await {
                    Err(e) if !not_found(&e) => return (pod.clone(), Err(e)),
                    _ => {}
                }
            }
            (pod.clone(), api.delete(&name, &DeleteParams::default()).await.map(|_| ()))
        }
    }))
    .await;
    let (mut ready, mut deleted, mut error) = (0, 0, None);
    for (pod, result) in results {
        match result {
            Ok(()) => {
                deleted += 1;
                job_event(ctx, job, false, "SuccessfulDelete", format!("Deleted pod: {}", pod.name_any()));
            }
            Err(e) => {
                delete_observed(ctx, key, &pod.name_any());
                if !not_found(&e) {
                    tracing::debug!(error = %e, pod = %pod.name_any(), "deleting pod failed");
                    job_event(ctx, job, true, "FailedDelete", format!("Error deleting: {e}"));
                    error.get_or_insert(SyncError::Kube(e));
                    continue;
                }
            }
        }
        if is_ready(&pod) {
            ready += 1;
        }
    }
    (ready, deleted, error)
}

fn remove_finalizer_patch() -> Patch<serde_json::Value> {
    Patch::Strategic(json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}}))
}

/// Creates or deletes pods towards the wanted number of active pods; returns the active count
/// and the first error.
async fn manage_job(ctx: &Ctx, key: &Key, job: &Job, spec: &JobSpec, t: &mut Tracking, now: Timestamp) -> (i32, Option<SyncError>) {
    let mut active = t.active_pods.len() as i32;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    if is_suspended(job) {
        let victims = active_pods_for_removal(spec, &t.active_pods, t.active_pods.len());
        let (ready, removed, error) = delete_job_pods(ctx, key, job, &victims).await;
        t.terminating += removed;
        t.ready -= ready;
        return (active - removed, error);
    }
    let want = match spec.completions {
        // Work-queue semantics: after the first success the running pods are left to finish.
        None if t.succeeded > 0 => active,
        None => parallelism,
        Some(c) => (c - t.succeeded).clamp(0, parallelism),
    };
    let excess = (active - want).max(0) as usize;
    let mut victims = active_pods_for_removal(spec, &t.active_pods, excess);
    victims.truncate(MAX_CREATE_DELETE);
    if !victims.is_empty() {
        // Deletion and creation never happen in the same sync; deletion goes first.
        let (ready, removed, error) = delete_job_pods(ctx, key, job, &victims).await;
        t.terminating += removed;
        t.ready -= ready;
        return (active - removed, error);
    }
    let terminating = if only_replace_failed(spec) { t.terminating } else { 0 };
    let diff = want - terminating - active;
    if diff <= 0 {
        return (active, None);
    }
    let per_index = has_backoff_limit_per_index(spec);
    if !per_index {
        let wait = remaining_backoff(t.new_backoff.failures_after_last_success, t.new_backoff.last_failure_time, now);
        if wait > SignedDuration::ZERO {
            wake_after(ctx, Work::Job(key.clone()), to_std(wait).max(Duration::from_secs(1)));
            return (active, None);
        }
    }
    let count = (diff as usize).min(MAX_CREATE_DELETE);
    let mut indexes: Vec<Option<i32>> = vec![None; count];
    if is_indexed(spec) {
        let mut busy: Vec<i32> = t.active_pods.iter().filter_map(|p| completion_index(p)).collect();
        if only_replace_failed(spec) {
            busy.extend(t.pods.iter().filter(|p| is_terminating(p)).filter_map(|p| completion_index(p)));
        }
        let mut pending = first_pending_indexes(&busy, &t.succeeded_indexes, t.failed_indexes.as_ref(), count, spec.completions.unwrap_or(0));
        if per_index {
            let mut soonest: Option<SignedDuration> = None;
            pending.retain(|ix| {
                let wait = t.delayed.get(ix).map_or(SignedDuration::ZERO, |p| {
                    let failures = annotation_count(p, INDEX_FAILURE_COUNT) + annotation_count(p, INDEX_IGNORED_FAILURE_COUNT) + 1;
                    remaining_backoff(failures, Some(finish_time(p)), now)
                });
                if wait > SignedDuration::ZERO {
                    soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                }
                wait <= SignedDuration::ZERO
            });
            if pending.is_empty()
                && let Some(wait) = soonest
            {
                wake_after(ctx, Work::Job(key.clone()), to_std(wait).max(Duration::from_secs(1)));
                return (active, None);
            }
        }
        indexes = pending.into_iter().map(Some).collect();
    }
    let (created, error) = create_pods(ctx, key, job, spec, &indexes, &t.delayed).await;
    active += created;
    (active, error)
}

/// The pod for one creation: the template with the Job's labels, the tracking finalizer and, for
/// Indexed Jobs, the index annotation, label, hostname and `JOB_COMPLETION_INDEX`.
pub fn pod_for(job: &Job, spec: &JobSpec, index: Option<i32>, replaced: Option<&CachedPod>) -> Pod {
    let template = spec.template.clone();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    if spec.manual_selector != Some(true) {
        let uid = job.uid().unwrap_or_default();
        let name = job.name_any();
        for (k, v) in [(CONTROLLER_UID_LABEL, &uid), (LEGACY_CONTROLLER_UID_LABEL, &uid), (JOB_NAME_LABEL, &name), (LEGACY_JOB_NAME_LABEL, &name)] {
            labels.entry(k.to_string()).or_insert_with(|| v.clone());
        }
    }
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut finalizers = meta.finalizers.unwrap_or_default();
    if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
        finalizers.push(TRACKING_FINALIZER.into());
    }
    let mut pod_spec = template.spec.unwrap_or_default();
    let mut generate_name = format!("{}-", job.name_any());
    if let Some(ix) = index {
        // The kubelet fills the variable from the label through the downward API.
        for container in pod_spec.init_containers.iter_mut().flatten().chain(pod_spec.containers.iter_mut()) {
            add_index_env(container);
        }
        annotations.insert(COMPLETION_INDEX.into(), ix.to_string());
        labels.insert(COMPLETION_INDEX.into(), ix.to_string());
        pod_spec.hostname = Some(format!("{}-{ix}", job.name_any()));
        let suffix = format!("-{ix}-");
        let name = job.name_any();
        generate_name = if name.len() + suffix.len() > MAX_GENERATE_NAME {
            let keep = MAX_GENERATE_NAME.saturating_sub(suffix.len());
            format!("{}{suffix}", name.get(..keep).unwrap_or(&name))
        } else {
            format!("{name}{suffix}")
        };
        if has_backoff_limit_per_index(spec) {
            let (failures, ignored) = match replaced {
                Some(prev) => {
                    let (f, i) = (annotation_count(prev, INDEX_FAILURE_COUNT), annotation_count(prev, INDEX_IGNORED_FAILURE_COUNT));
                    if match_pod_failure_policy(spec.pod_failure_policy.as_ref(), prev).counts { (f + 1, i) } else { (f, i + 1) }
                }
                None => (0, 0),
            };
            annotations.insert(INDEX_FAILURE_COUNT.into(), failures.to_string());
            if ignored > 0 {
                annotations.insert(INDEX_IGNORED_FAILURE_COUNT.into(), ignored.to_string());
            }
        }
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(finalizers),
            owner_references: Some(vec![controller_ref(job)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

fn add_index_env(container: &mut Container) {
    let env = container.env.get_or_insert_with(Vec::new);
    if env.iter().any(|e| e.name == COMPLETION_INDEX_ENV) {
        return;
    }
    env.push(EnvVar {
        name: COMPLETION_INDEX_ENV.into(),
        value: None,
        value_from: Some(EnvVarSource { field_ref: Some(ObjectFieldSelector { api_version: None, field_path: format!("metadata.labels['{COMPLETION_INDEX}']") }), ..Default::default() }),
    });
}

/// Creates one pod per entry of `indexes` in doubling batches (1, 2, 4, ...), stopping at the
/// first failed batch so a template that cannot work fails once. Returns how many were created.
async fn create_pods(ctx: &Ctx, key: &Key, job: &Job, spec: &JobSpec, indexes: &[Option<i32>], delayed: &HashMap<i32, Arc<CachedPod>>) -> (i32, Option<SyncError>) {
    let mut created = 0;
    let mut rest = indexes;
    let mut batch = 1;
    while !rest.is_empty() {
        let (now, later) = rest.split_at(batch.min(rest.len()));
        rest = later;
        batch *= 2;
        let results = futures_util::future::join_all(now.iter().map(|ix| {
            let pod = pod_for(job, spec, *ix, ix.and_then(|i| delayed.get(&i)).map(|p| p.as_ref()));
            async move { crate::client::create_for_name(&ctx.client, &key.0, &PostParams::default(), &pod).await }
        }))
        .await;
        let names: Vec<String> = results.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
        expect(ctx, key, &names, &[]);
        for name in &names {
            job_event(ctx, job, false, "SuccessfulCreate", format!("Created pod: {name}"));
        }
        created += names.len() as i32;
        if let Some(Err(error)) = results.into_iter().find(|r| r.is_err()) {
            let terminating_ns = matches!(&error, kube::Error::Api(s) if s.message.contains("is being terminated"));
            if !terminating_ns {
                tracing::warn!(%error, job = %key.1, "creating pods failed");
                job_event(ctx, job, true, "FailedCreate", format!("Error creating: {error}"));
            }
            return (created, Some(SyncError::Kube(error)));
        }
    }
    (created, None)
}

// ---------------------------------------------------------------------------------------------
// Status tracking with finalizers.

/// Whether a pod's finalizer may go: always once the Job is finishing or deleted, or when the
/// pod succeeded; a failed pod unless its index still waits for a replacement.
fn can_remove_finalizer(job: &Job, t: &Tracking, pod: &Arc<CachedPod>, failed: bool) -> bool {
    if job.metadata.deletion_timestamp.is_some() || t.finished.is_some() || phase(pod) == "Succeeded" {
        return true;
    }
    if !failed {
        return false;
    }
    if let Some(ix) = completion_index(pod)
        && t.delayed.get(&ix).is_some_and(|p| p.uid() == pod.uid())
    {
        return false;
    }
    true
}

/// Moves uids out of the uncounted lists into the counters once their pods lost the finalizer
/// (or are gone); true when anything moved.
fn clean_uncounted(job: &mut Job, with_finalizer: &HashSet<String>) -> bool {
    let status = job.status.get_or_insert_with(Default::default);
    let uncounted = status.uncounted_terminated_pods.get_or_insert_with(Default::default);
    let mut changed = false;
    for (list, counter) in [(&mut uncounted.succeeded, &mut status.succeeded), (&mut uncounted.failed, &mut status.failed)] {
        let before = list.as_ref().map_or(0, Vec::len);
        let kept: Vec<String> = list.iter().flatten().filter(|u| with_finalizer.contains(*u)).cloned().collect();
        if kept.len() != before {
            changed = true;
            let total = counter.unwrap_or(0) + (before - kept.len()) as i32;
            *counter = (total != 0).then_some(total);
            *list = (!kept.is_empty()).then_some(kept);
        }
    }
    changed
}

fn uncounted_len(job: &Job) -> usize {
    job.status.as_ref().and_then(|s| s.uncounted_terminated_pods.as_ref()).map_or(0, |u| u.succeeded.as_ref().map_or(0, Vec::len) + u.failed.as_ref().map_or(0, Vec::len))
}

/// Upstream's trackJobStatusAndRemoveFinalizers: records newly finished pods as uncounted,
/// writes that, removes their finalizers, moves them into the counters, and finishes the Job
/// when nothing is left to count or terminate.
async fn track_status_and_remove_finalizers(ctx: &Ctx, key: &Key, job: &mut Job, spec: &JobSpec, t: &mut Tracking, mut needs_flush: bool, now: Timestamp) -> Result<(), SyncError> {
    let indexed = is_indexed(spec);
    let completions = spec.completions.unwrap_or(0);
    if indexed {
        // Completed indexes are recorded in order.
        t.pods.sort_by_key(|p| completion_index(p).unwrap_or(-1));
    }
    let mut with_finalizer: HashSet<String> = t.pods.iter().filter(|p| has_finalizer(p)).filter_map(|p| p.uid()).filter(|u| !t.expected_rm.contains(u)).collect();
    if clean_uncounted(job, &with_finalizer) {
        needs_flush = true;
    }
    let mut to_remove: Vec<Arc<CachedPod>> = Vec::new();
    let mut new_indexes: Vec<i32> = Vec::new();
    let mut reached_max = false;
    let pods = t.pods.clone();
    for pod in &pods {
        let uid = pod.uid().unwrap_or_default();
        if !has_finalizer(pod) || t.expected_rm.contains(&uid) {
            continue;
        }
        let failed = is_pod_failed(pod, spec);
        if !can_remove_finalizer(job, t, pod, failed) {
            continue;
        }
        to_remove.push(pod.clone());
        let status = job.status.get_or_insert_with(Default::default);
        let uncounted = status.uncounted_terminated_pods.get_or_insert_with(Default::default);
        if phase(pod) == "Succeeded" && !t.uncounted_failed.contains(&uid) {
            if indexed {
                if let Some(ix) = valid_index(pod, completions)
                    && !t.prev_succeeded_indexes.has(ix)
                {
                    new_indexes.push(ix);
                    needs_flush = true;
                }
            } else if !t.uncounted_succeeded.contains(&uid) {
                needs_flush = true;
                uncounted.succeeded.get_or_insert_with(Vec::new).push(uid.clone());
            }
        } else if failed || (t.finished.is_some() && !is_success_criteria_met(t.finished.as_ref())) {
            // A finishing Job counts every pod that did not succeed as failed.
            let index_ok = !indexed || valid_index(pod, completions).is_some();
            if !t.uncounted_failed.contains(&uid) && index_ok && match_pod_failure_policy(spec.pod_failure_policy.as_ref(), pod).counts {
                needs_flush = true;
                uncounted.failed.get_or_insert_with(Vec::new).push(uid.clone());
            }
        }
        if new_indexes.len() + uncounted_len(job) >= MAX_UNCOUNTED {
            // The rest waits for the next sync, which the status and pod updates trigger.
            reached_max = true;
            break;
        }
    }
    if indexed {
        new_indexes.sort_unstable();
        t.succeeded_indexes = t.succeeded_indexes.with_indexes(&new_indexes);
        let text = t.succeeded_indexes.to_string();
        let status = job.status.get_or_insert_with(Default::default);
        if status.completed_indexes.as_deref().unwrap_or("") != text {
            needs_flush = true;
        }
        let total = t.succeeded_indexes.total() as i32;
        status.succeeded = (total != 0).then_some(total);
        status.completed_indexes = (!text.is_empty()).then_some(text);
        let failed_text = t.failed_indexes.as_ref().map(Intervals::to_string);
        if status.failed_indexes != failed_text {
            status.failed_indexes = failed_text;
            needs_flush = true;
        }
    }
    if let Some(target) = t.finished.clone().filter(|c| c.type_ == "FailureTarget") {
        // The interim condition is written before any finalizer goes, so the reason survives.
        job.status.get_or_insert_with(Default::default).conditions.get_or_insert_with(Vec::new).push(target.clone());
        needs_flush = true;
        t.finished = Some(new_condition("Failed", "True", target.reason.as_deref().unwrap_or(""), target.message.as_deref().unwrap_or(""), now));
    }
    if let Some(met) = t.finished.clone().filter(|c| is_success_criteria_met(Some(c))) {
        if !condition_true(job, "SuccessCriteriaMet") {
            job.status.get_or_insert_with(Default::default).conditions.get_or_insert_with(Vec::new).push(met.clone());
            needs_flush = true;
        }
        t.finished = Some(new_condition("Complete", "True", met.reason.as_deref().unwrap_or(""), met.message.as_deref().unwrap_or(""), now));
    }

    // Flush the uncounted pods, remove finalizers, then count them.
    if needs_flush {
        *job = update_status(ctx, job).await?;
        lock(&ctx.backoff).insert(key.clone(), t.new_backoff);
        needs_flush = false;
    }
    let mut remove_error = None;
    if !to_remove.is_empty() {
        let (removed, error) = remove_finalizers(ctx, key, &to_remove).await;
        for uid in removed {
            with_finalizer.remove(&uid);
        }
        remove_error = error;
    }
    if clean_uncounted(job, &with_finalizer) {
        needs_flush = true;
    }
    if let Some(error) = remove_error {
        if needs_flush {
            update_status(ctx, job).await?;
        }
        return Err(error);
    }
    let finished = !reached_max && enact_finished(job, t);
    if finished {
        needs_flush = true;
    }
    if needs_flush {
        *job = update_status(ctx, job).await?;
        if finished && let Some(c) = &t.finished {
            record_finished(ctx, job, spec, c);
        }
    }
    Ok(())
}

fn enact_finished(job: &mut Job, t: &Tracking) -> bool {
    let Some(cond) = &t.finished else { return false };
    if uncounted_len(job) > 0 || t.terminating > 0 {
        return false;
    }
    let status = job.status.get_or_insert_with(Default::default);
    let list = status.conditions.get_or_insert_with(Vec::new);
    let at = cond.last_transition_time.as_ref().map_or(Timestamp::now(), |t| t.0);
    ensure_condition(list, &cond.type_, &cond.status, cond.reason.as_deref().unwrap_or(""), cond.message.as_deref().unwrap_or(""), at);
    if cond.type_ == "Complete" {
        status.completion_time = list.iter().find(|c| c.type_ == "Complete").and_then(|c| c.last_transition_time.clone());
    }
    true
}

fn record_finished(ctx: &Ctx, job: &Job, spec: &JobSpec, cond: &JobCondition) {
    if cond.type_ == "Complete" {
        if let Some(c) = spec.completions
            && job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > c
        {
            job_event(ctx, job, true, "TooManySucceededPods", "Too many succeeded pods running after completion count reached".into());
        }
        job_event(ctx, job, false, "Completed", "Job completed".into());
    } else {
        job_event(ctx, job, true, cond.reason.as_deref().unwrap_or("Failed"), cond.message.clone().unwrap_or_default());
    }
}

/// Removes the tracking finalizer; returns the uids it is gone from (already deleted pods
/// included) and the first error.
async fn remove_finalizers(ctx: &Ctx, key: &Key, pods: &[Arc<CachedPod>]) -> (Vec<String>, Option<SyncError>) {
    let uids: Vec<String> = pods.iter().filter_map(|p| p.uid()).collect();
    lock(&ctx.finalizer_removals).entry(key.clone()).or_default().extend(uids);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.0);
    let results = futures_util::future::join_all(pods.iter().map(|pod| {
        let api = api.clone();
        async move { (pod.uid().unwrap_or_default(), api.patch(&pod.name_any(), &PatchParams::default(), &remove_finalizer_patch()).await) }
    }))
    .await;
    let mut removed = Vec::new();
    let mut error = None;
    for (uid, result) in results {
        match result {
            Ok(_) => removed.push(uid),
            Err(e) => {
                // No update will show this removal: stop expecting it.
                if let Some(set) = lock(&ctx.finalizer_removals).get_mut(key) {
                    set.remove(&uid);
                }
                if not_found(&e) {
                    removed.push(uid);
                } else {
                    error.get_or_insert(SyncError::Kube(e));
                }
            }
        }
    }
    (removed, error)
}

/// Writes the whole status with the object's resourceVersion, so a write based on a stale copy
/// fails instead of counting pods twice.
async fn update_status(ctx: &Ctx, job: &Job) -> Result<Job, SyncError> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    Ok(api.replace_status(&job.name_any(), &PostParams::default(), job).await?)
}

/// Removes the tracking finalizer from a pod no unfinished Job controls any more.
async fn sync_orphan_pod(ctx: &Ctx, key: &Key) -> Result<(), SyncError> {
    let Some(pod) = ctx.pods.get(&key.0, &key.1) else { return Ok(()) };
    if !has_finalizer(&pod) {
        return Ok(());
    }
    if let Some(owner) = controller_of(&pod) {
        if owner.kind != "Job" || owner.api_version != "batch/v1" {
            return Ok(());
        }
        if let Some(job) = resolve(&ctx.jobs, &key.0, owner)
            && (managed_elsewhere(&job) || !is_finished(&job))
        {
            return Ok(());
        }
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.0);
    match api.patch(&key.1, &PatchParams::default(), &remove_finalizer_patch()).await {
        Err(e) if !not_found(&e) => Err(e.into()),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// TTL after finished.

fn needs_ttl_cleanup(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished).is_some() && is_finished(job) && job.metadata.deletion_timestamp.is_none()
}

/// When the finished Job's TTL runs out: the Complete/Failed condition's transition plus the TTL.
pub fn ttl_expiry(job: &Job) -> Option<Timestamp> {
    if !needs_ttl_cleanup(job) {
        return None;
    }
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let finished = conditions(job).iter().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?.last_transition_time.as_ref()?.0;
    Some(finished + SignedDuration::from_secs(i64::from(ttl)))
}

async fn sync_ttl(ctx: &Ctx, key: &Key) -> Result<(), SyncError> {
    let Some(job) = ctx.jobs.get(&key.0, &key.1) else { return Ok(()) };
    let now = Timestamp::now();
    let Some(expiry) = ttl_expiry(&job) else { return Ok(()) };
    if expiry > now {
        wake_after(ctx, Work::Ttl(key.clone()), to_std(expiry.duration_since(now)));
        return Ok(());
    }
    // The cached TTL may be stale: decide again on a fresh read.
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &key.0);
    let Some(fresh) = api.get_opt(&key.1).await? else { return Ok(()) };
    match ttl_expiry(&fresh) {
        None => return Ok(()),
        Some(expiry) if expiry > now => {
            wake_after(ctx, Work::Ttl(key.clone()), to_std(expiry.duration_since(now)));
            return Ok(());
        }
        Some(_) => {}
    }
    // Foreground, as upstream: the Job stays visible until its pods are gone.
    let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Foreground), preconditions: Some(Preconditions { uid: fresh.uid(), resource_version: None }), ..Default::default() };
    tracing::debug!(namespace = %key.0, name = %key.1, "cleaning up finished job");
    match api.delete(&key.1, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => Ok(()),
        Err(e) => Err(SyncError::Other(format!("deleting job after its ttl: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule, SuccessPolicyRule};
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodCondition, PodStatus};

    #[test]
    fn completed_indexes_format_and_parse() {
        let iv = Intervals::default().with_indexes(&[1, 3, 4, 5]);
        assert_eq!(iv.to_string(), "1,3-5");
        assert_eq!(Intervals::default().with_indexes(&[0, 1]).to_string(), "0,1");
        assert_eq!(Intervals::default().with_indexes(&[0, 1, 2]).to_string(), "0-2");
        assert_eq!(iv.total(), 4);
        assert!(iv.has(4) && !iv.has(2) && !iv.has(6));
        let parsed = Intervals::parse("1,3-5,7", 6);
        assert_eq!(parsed, Intervals(vec![(1, 1), (3, 5)]));
        assert_eq!(Intervals::parse("0,1,2-4", 10), Intervals(vec![(0, 4)]));
        assert_eq!(Intervals::parse("2-9", 5), Intervals(vec![(2, 4)]));
        assert_eq!(Intervals::parse("x,3", 5), Intervals(vec![(3, 3)]));
        assert_eq!(parsed.with_indexes(&[2, 6]).to_string(), "1-6");
        assert_eq!(Intervals(vec![(0, 1)]).merge(&Intervals(vec![(3, 4)])).to_string(), "0,1,3,4");
    }

    #[test]
    fn pending_indexes_skip_busy_succeeded_and_failed() {
        let succeeded = Intervals::parse("0,2", 6);
        let failed = Intervals::parse("4", 6);
        assert_eq!(first_pending_indexes(&[1], &succeeded, Some(&failed), 10, 6), vec![3, 5]);
        assert_eq!(first_pending_indexes(&[], &succeeded, None, 1, 6), vec![1]);
    }

    fn failed_pod(exit: &[(&str, i32)], conditions: &[(&str, &str)]) -> CachedPod {
        CachedPod::from(Pod {
            metadata: ObjectMeta { name: Some("p".into()), namespace: Some("ns".into()), ..Default::default() },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Failed".into()),
                container_statuses: Some(
                    exit.iter()
                        .map(|(name, code)| ContainerStatus {
                            name: name.to_string(),
                            state: Some(ContainerState { terminated: Some(ContainerStateTerminated { exit_code: *code, ..Default::default() }), ..Default::default() }),
                            ..Default::default()
                        })
                        .collect(),
                ),
                conditions: Some(conditions.iter().map(|(t, s)| PodCondition { type_: t.to_string(), status: s.to_string(), ..Default::default() }).collect()),
                ..Default::default()
            }),
        })
    }

    fn rule(action: &str, codes: Option<(&str, Vec<i32>)>, conditions: &[(&str, &str)]) -> PodFailurePolicyRule {
        PodFailurePolicyRule {
            action: action.into(),
            on_exit_codes: codes.map(|(op, values)| PodFailurePolicyOnExitCodesRequirement { container_name: None, operator: op.into(), values }),
            on_pod_conditions: (!conditions.is_empty()).then(|| conditions.iter().map(|(t, s)| PodFailurePolicyOnPodConditionsPattern { type_: t.to_string(), status: s.to_string() }).collect()),
        }
    }

    #[test]
    fn failure_policy_first_matching_rule_decides() {
        let policy =
            PodFailurePolicy { rules: vec![rule("Ignore", None, &[("DisruptionTarget", "True")]), rule("FailJob", Some(("In", vec![42])), &[]), rule("Count", Some(("NotIn", vec![1, 2])), &[])] };
        let disrupted = failed_pod(&[("main", 42)], &[("DisruptionTarget", "True")]);
        let m = match_pod_failure_policy(Some(&policy), &disrupted);
        assert_eq!((m.counts, m.action.as_deref(), m.fail_job.is_none()), (false, Some("Ignore"), true));

        let fatal = failed_pod(&[("main", 42)], &[]);
        let m = match_pod_failure_policy(Some(&policy), &fatal);
        assert_eq!(m.action.as_deref(), Some("FailJob"));
        assert_eq!(m.fail_job.as_deref(), Some("Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"));

        let other = failed_pod(&[("main", 7)], &[]);
        assert_eq!(match_pod_failure_policy(Some(&policy), &other).action.as_deref(), Some("Count"));
        // Exit code 1 matches nothing: counted, no action.
        let plain = failed_pod(&[("main", 1)], &[]);
        assert_eq!(match_pod_failure_policy(Some(&policy), &plain), PolicyMatch { fail_job: None, counts: true, action: None });
        // Zero exit codes never match, even NotIn.
        let zero = failed_pod(&[("main", 0)], &[]);
        assert_eq!(match_pod_failure_policy(Some(&policy), &zero).action, None);
        // A container name restricts the rule.
        let named = PodFailurePolicy {
            rules: vec![PodFailurePolicyRule {
                action: "FailIndex".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement { container_name: Some("side".into()), operator: "In".into(), values: vec![3] }),
                on_pod_conditions: None,
            }],
        };
        assert_eq!(match_pod_failure_policy(Some(&named), &failed_pod(&[("main", 3)], &[])).action, None);
        assert_eq!(match_pod_failure_policy(Some(&named), &failed_pod(&[("main", 1), ("side", 3)], &[])).action.as_deref(), Some("FailIndex"));
        let m = match_pod_failure_policy(Some(&policy), &failed_pod(&[], &[("DisruptionTarget", "False")]));
        assert!(m.counts && m.action.is_none());
    }

    #[test]
    fn success_policy_rules() {
        let policy = SuccessPolicy {
            rules: vec![
                SuccessPolicyRule { succeeded_indexes: Some("0,2-3".into()), succeeded_count: None },
                SuccessPolicyRule { succeeded_indexes: Some("5-9".into()), succeeded_count: Some(2) },
                SuccessPolicyRule { succeeded_indexes: None, succeeded_count: Some(6) },
            ],
        };
        let p = Some(&policy);
        assert_eq!(match_success_policy(p, 10, &Intervals::parse("0,2", 10)), None);
        assert_eq!(match_success_policy(p, 10, &Intervals::parse("0,2,3", 10)).as_deref(), Some("Matched rules at index 0"));
        assert_eq!(match_success_policy(p, 10, &Intervals::parse("6,8", 10)).as_deref(), Some("Matched rules at index 1"));
        assert_eq!(match_success_policy(p, 10, &Intervals::parse("0-1,4-5,7,9", 10)).as_deref(), Some("Matched rules at index 1"));
        assert_eq!(match_success_policy(p, 10, &Intervals::parse("0-5", 10)).as_deref(), Some("Matched rules at index 0"));
    }

    fn finished_at(secs: i64, phase: &str) -> Arc<CachedPod> {
        let at = Timestamp::from_second(secs).unwrap();
        Arc::new(CachedPod::from(Pod {
            metadata: ObjectMeta::default(),
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "c".into(),
                    state: Some(ContainerState { terminated: Some(ContainerStateTerminated { finished_at: Some(Time(at)), ..Default::default() }), ..Default::default() }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }))
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_and_resets_on_success() {
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let at = |s: i64| t0 + SignedDuration::from_secs(s);
        assert_eq!(remaining_backoff(0, Some(t0), t0), SignedDuration::ZERO);
        assert_eq!(remaining_backoff(1, Some(t0), at(4)), SignedDuration::from_secs(6));
        assert_eq!(remaining_backoff(3, Some(t0), at(4)), SignedDuration::from_secs(36));
        assert_eq!(remaining_backoff(3, Some(t0), at(41)), SignedDuration::ZERO);
        assert_eq!(remaining_backoff(20, Some(t0), t0), SignedDuration::from_mins(10));

        let failed = [finished_at(1_000_010, "Failed"), finished_at(1_000_030, "Failed")];
        let r = next_backoff_record(BackoffRecord { failures_after_last_success: 1, last_failure_time: Some(t0) }, &[], &failed);
        assert_eq!(r, BackoffRecord { failures_after_last_success: 3, last_failure_time: Some(at(30)) });
        // A success at +20 leaves only the failure after it.
        let r = next_backoff_record(r, &[finished_at(1_000_020, "Succeeded")], &failed);
        assert_eq!(r, BackoffRecord { failures_after_last_success: 1, last_failure_time: Some(at(30)) });
        let r = next_backoff_record(r, &[finished_at(1_000_040, "Succeeded")], &[]);
        assert_eq!(r, BackoffRecord::default());
    }

    fn job(name: &str, spec: JobSpec) -> Job {
        Job { metadata: ObjectMeta { name: Some(name.into()), namespace: Some("ns".into()), uid: Some("u-1".into()), ..Default::default() }, spec: Some(spec), status: None }
    }

    #[test]
    fn indexed_pods_carry_index_labels_hostname_and_env() {
        let mut spec = JobSpec { completion_mode: Some("Indexed".into()), completions: Some(3), ..Default::default() };
        spec.template.spec = Some(k8s_openapi::api::core::v1::PodSpec { containers: vec![Container { name: "c".into(), ..Default::default() }], ..Default::default() });
        let j = job("work", spec.clone());
        let pod = pod_for(&j, &spec, Some(2), None);
        let meta = &pod.metadata;
        assert_eq!(meta.generate_name.as_deref(), Some("work-2-"));
        assert_eq!(meta.annotations.as_ref().unwrap()[COMPLETION_INDEX], "2");
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[COMPLETION_INDEX], "2");
        assert_eq!(labels[CONTROLLER_UID_LABEL], "u-1");
        assert_eq!(labels[LEGACY_JOB_NAME_LABEL], "work");
        assert_eq!(meta.finalizers.as_deref(), Some(&[TRACKING_FINALIZER.to_string()][..]));
        let pod_spec = pod.spec.unwrap();
        assert_eq!(pod_spec.hostname.as_deref(), Some("work-2"));
        let env = pod_spec.containers[0].env.clone().unwrap();
        assert_eq!(env[0].name, "JOB_COMPLETION_INDEX");
        assert_eq!(env[0].value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path, "metadata.labels['batch.kubernetes.io/job-completion-index']");

        let long = "x".repeat(60);
        let pod = pod_for(&job(&long, spec.clone()), &spec, Some(12), None);
        let generated = pod.metadata.generate_name.unwrap();
        assert!(generated.ends_with("-12-") && generated.len() == MAX_GENERATE_NAME, "{generated}");
    }

    #[test]
    fn indexed_removal_prefers_duplicates_and_invalid_indexes() {
        let spec = JobSpec { completion_mode: Some("Indexed".into()), completions: Some(3), ..Default::default() };
        let pod = |name: &str, ix: Option<&str>| {
            Arc::new(CachedPod {
                metadata: ObjectMeta { name: Some(name.into()), annotations: ix.map(|i| BTreeMap::from([(COMPLETION_INDEX.to_string(), i.to_string())])), ..Default::default() },
                ..Default::default()
            })
        };
        let active = vec![pod("a", Some("0")), pod("b", Some("0")), pod("c", Some("7")), pod("d", None), pod("e", Some("1"))];
        let names: Vec<String> = active_pods_for_removal(&spec, &active, 0).iter().map(|p| p.name_any()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&"c".to_string()) && names.contains(&"d".to_string()));
    }

    #[test]
    fn ttl_expiry_counts_from_the_finish() {
        let mut j = job("j", JobSpec { ttl_seconds_after_finished: Some(30), ..Default::default() });
        assert_eq!(ttl_expiry(&j), None);
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        j.status = Some(k8s_openapi::api::batch::v1::JobStatus { conditions: Some(vec![new_condition("Complete", "True", "", "", at)]), ..Default::default() });
        assert_eq!(ttl_expiry(&j), Some(at + SignedDuration::from_secs(30)));
    }

    #[test]
    fn conditions_are_replaced_only_on_change() {
        let t0 = Timestamp::from_second(1).unwrap();
        let mut list = Vec::new();
        assert!(!ensure_condition(&mut list, "Suspended", "False", "JobResumed", "Job resumed", t0));
        assert!(list.is_empty());
        assert!(ensure_condition(&mut list, "Suspended", "True", "JobSuspended", "Job suspended", t0));
        assert!(!ensure_condition(&mut list, "Suspended", "True", "JobSuspended", "Job suspended", t0));
        assert!(ensure_condition(&mut list, "Suspended", "False", "JobResumed", "Job resumed", t0));
        assert_eq!(list.len(), 1);
    }
}
