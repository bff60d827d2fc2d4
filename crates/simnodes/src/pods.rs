//! The kubelet's part for pods bound to simulated nodes: one watch of every bound pod (filtered
//! here by node name, so thousands of nodes cost one stream), a work queue keyed by pod uid, and
//! a fixed pool of workers that write what a kubelet would report through `pods/status`:
//! Running with addresses and ready containers, then, for pods that do not restart always,
//! containers that exit after `finish_after`; pods being deleted are deleted for good with a
//! zero grace period (reported terminated first when finalizers keep them around).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use scheduler::decode::WatchedPod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::task::JoinSet;

use crate::addresses::{self, IpPool};
use crate::queue::Queue;
use crate::{EXIT_CODE_ANNOTATION, ErrorLog, FIELD_MANAGER, POD_WORKERS, Sim, now, status_code};

/// Pod conditions the kubelet owns; others (readiness gates, DisruptionTarget) are left alone.
const OWNED_CONDITIONS: [&str; 5] = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"];
/// What a container that exits on SIGTERM reports: 128 + 15.
const KILLED_EXIT_CODE: i32 = 143;
/// The shortest run of a restarted container, so a failing pod with `finish_after` zero does not
/// restart in a tight loop.
const MIN_RESTART_RUN: Duration = Duration::from_secs(1);

static WATCH_ERRORS: ErrorLog = ErrorLog::new("pod watch");
static WRITE_ERRORS: ErrorLog = ErrorLog::new("pod status write");
static DELETE_ERRORS: ErrorLog = ErrorLog::new("pod delete");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Debug)]
struct ContainerSpec {
    name: String,
    image: String,
    /// An init container with restartPolicy Always (a sidecar): runs alongside the others.
    sidecar: bool,
}

/// A container run that ended.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Exit {
    code: i32,
    started: Timestamp,
    finished: Timestamp,
}

/// The simulated containers of one pod.
#[derive(Clone, Debug, PartialEq)]
struct Run {
    /// `status.startTime`: when the node first took the pod on.
    start: Timestamp,
    /// When the current run of the regular containers started.
    since: Timestamp,
    restarts: i32,
    /// The previous run's end, shown as lastState after a restart.
    last: Option<Exit>,
    /// Set once the containers have stopped for good: the pod is terminal.
    exit: Option<Exit>,
    /// Terminal by someone else's report (or an earlier run's): never written again.
    frozen: bool,
}

/// What is kept of the current status: enough to tell whether a write is needed and to take
/// over a pod that was already running before this process started.
#[derive(Clone, Debug)]
struct Observed {
    phase: String,
    pod_ip: Option<Ipv4Addr>,
    signature: u64,
    /// (type, status, lastTransitionTime) of the kubelet's conditions and readiness gates.
    conditions: Vec<(String, String, Option<Timestamp>)>,
    adopt: Option<Run>,
}

/// What the simulator keeps of a pod bound to one of its nodes: what it needs to act, not the
/// whole object (tens of thousands of pods are held at once).
#[derive(Clone, Debug)]
struct PodView {
    namespace: String,
    name: String,
    uid: Arc<str>,
    resource_version: String,
    node: usize,
    deleting: bool,
    finalizers: bool,
    policy: RestartPolicy,
    host_network: bool,
    exit_code: i32,
    containers: Vec<ContainerSpec>,
    init_containers: Vec<ContainerSpec>,
    readiness_gates: Vec<String>,
    observed: Observed,
}

struct Entry {
    view: PodView,
    run: Option<Run>,
    ip: Option<Ipv4Addr>,
    delete_sent: bool,
}

struct State {
    pods: HashMap<Arc<str>, Entry>,
    /// Per node; None for a node without an IPv4 pod CIDR.
    pools: Vec<Option<IpPool>>,
}

pub(crate) struct Pods {
    sim: Arc<Sim>,
    state: Mutex<State>,
    queue: Queue<Arc<str>>,
}

/// Starts the pod watch and the workers.
pub(crate) fn start(sim: &Arc<Sim>, tasks: &mut JoinSet<()>) {
    let pools = sim.registered.iter().map(|r| r.get().and_then(|r| r.pod_cidr).map(IpPool::new)).collect();
    let pods = Arc::new(Pods { sim: sim.clone(), state: Mutex::new(State { pods: HashMap::new(), pools }), queue: Queue::new() });
    tasks.spawn(watch(pods.clone()));
    for _ in 0..POD_WORKERS {
        let pods = pods.clone();
        tasks.spawn(async move {
            loop {
                let uid = pods.queue.next().await;
                pods.work(&uid).await;
                pods.queue.done(&uid);
            }
        });
    }
}

async fn watch(pods: Arc<Pods>) {
    // Decoded without managedFields (never read here), as the scheduler's watch does.
    let api: Api<WatchedPod> = Api::all(pods.sim.client.clone());
    // Only bound pods; which node is checked here, so one watch serves every simulated node.
    let config = watcher::Config::default().fields("spec.nodeName!=");
    loop {
        let mut stream = watcher(api.clone(), config.clone()).default_backoff().boxed();
        let mut fresh: Option<HashMap<Arc<str>, PodView>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => fresh = Some(HashMap::new()),
                Ok(watcher::Event::InitApply(WatchedPod(pod))) => {
                    if let (Some(fresh), Some(view)) = (fresh.as_mut(), pods.view(&pod)) {
                        fresh.insert(view.uid.clone(), view);
                    }
                }
                Ok(watcher::Event::InitDone) => pods.resync(fresh.take().unwrap_or_default()),
                Ok(watcher::Event::Apply(WatchedPod(pod))) => {
                    if let Some(view) = pods.view(&pod) {
                        pods.observe(view, false);
                    }
                }
                Ok(watcher::Event::Delete(WatchedPod(pod))) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        pods.forget(uid);
                    }
                }
                Err(error) => WATCH_ERRORS.record("pods", &error),
            }
        }
    }
}

/// Whether resourceVersion `a` is at least as new as `b`. They are opaque to clients, but every
/// etcd-style server (this one included) hands out increasing integers; anything else is taken
/// as newer.
fn not_older(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a >= b,
        _ => true,
    }
}

impl Pods {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn view(&self, pod: &Pod) -> Option<PodView> {
        let node = *self.sim.index.get(pod.spec.as_ref()?.node_name.as_deref()?)?;
        view_of(pod, node)
    }

    /// A newer version of a pod arrived: from the watch, or (`known_only`) as the answer to our
    /// own write, which may arrive after the watch reported the pod deleted and so must not
    /// bring it back.
    fn observe(&self, view: PodView, known_only: bool) {
        let uid = view.uid.clone();
        let changed = {
            let mut state = self.lock();
            let State { pods, pools } = &mut *state;
            match pods.get_mut(&uid) {
                Some(entry) if not_older(&view.resource_version, &entry.view.resource_version) => {
                    let changed = entry.view.resource_version != view.resource_version;
                    entry.view = view;
                    changed
                }
                Some(_) => false,
                None if known_only => false,
                None => {
                    let ip = reserve(pools, &view);
                    pods.insert(uid.clone(), Entry { view, run: None, ip, delete_sent: false });
                    true
                }
            }
        };
        if changed {
            self.queue.add(uid);
        }
    }

    /// The watch listed every bound pod afresh: pods missing from the list are gone.
    fn resync(&self, fresh: HashMap<Arc<str>, PodView>) {
        let uids: Vec<Arc<str>> = fresh.keys().cloned().collect();
        {
            let mut state = self.lock();
            let gone: Vec<Arc<str>> = state.pods.keys().filter(|u| !fresh.contains_key(*u)).cloned().collect();
            for uid in gone {
                remove(&mut state, &uid);
            }
            let State { pods, pools } = &mut *state;
            // Addresses already in use are claimed before any new pod is given one.
            for (uid, view) in fresh {
                match pods.get_mut(&uid) {
                    Some(entry) => {
                        if not_older(&view.resource_version, &entry.view.resource_version) {
                            entry.view = view;
                        }
                    }
                    None => {
                        let ip = reserve(pools, &view);
                        pods.insert(uid, Entry { view, run: None, ip, delete_sent: false });
                    }
                }
            }
        }
        tracing::info!(pods = uids.len(), "simulated nodes: bound pods listed");
        for uid in uids {
            self.queue.add(uid);
        }
    }

    fn forget(&self, uid: &str) {
        let mut state = self.lock();
        remove(&mut state, uid);
        // Give back the table of a mass deletion; the map never shrinks by itself.
        if state.pods.capacity() > 4096 && state.pods.len() * 8 < state.pods.capacity() {
            state.pods.shrink_to_fit();
        }
    }

    /// Decides what to write for pod `uid` now, advancing its simulated containers.
    fn plan(&self, uid: &Arc<str>, now: Timestamp) -> Option<Plan> {
        let mut state = self.lock();
        let State { pods, pools } = &mut *state;
        let entry = pods.get_mut(uid)?;
        let view = &entry.view;
        let target = Target { namespace: view.namespace.clone(), name: view.name.clone(), uid: uid.clone() };
        if view.deleting && entry.delete_sent {
            return None;
        }
        if entry.run.is_none() && view.deleting && view.observed.adopt.is_none() {
            // Never started here: nothing to stop, nothing to report.
            return Some(Plan { target, action: Action::Delete, wake: None });
        }
        let run = entry.run.get_or_insert_with(|| view.observed.adopt.clone().unwrap_or_else(|| Run::fresh(now)));
        if is_terminal(&view.observed.phase) && run.exit.is_none() {
            // Someone else ended it (the kubelet may never move a pod out of a terminal phase).
            run.exit = Some(Exit { code: i32::from(view.observed.phase != "Succeeded"), started: run.since, finished: now });
            run.frozen = true;
        }
        let wake = if view.deleting {
            if run.exit.is_none() {
                run.exit = Some(Exit { code: KILLED_EXIT_CODE, started: run.since, finished: now });
            }
            None
        } else {
            advance(run, view.policy, view.exit_code, self.sim.options.finish_after, now)
        };
        let frozen = run.frozen;
        // A pod keeps the address it was reported with, even one this process could not claim.
        let needs_ip = entry.ip.is_none() && view.observed.pod_ip.is_none() && !view.host_network && !frozen && !view.deleting;
        let node = view.node;
        if needs_ip {
            // A finished pod's address may be handed over once none is left: its sandbox (and
            // so its address) would be gone on a real node.
            let ip = pools[node].as_mut().and_then(|pool| pool.allocate(uid, |holder| pods.get(holder).is_none_or(|e| e.run.as_ref().is_some_and(|r| r.exit.is_some()))));
            if ip.is_none() && pools[node].is_some() {
                tracing::warn!(node = %self.sim.names[node], "no pod address left on the node");
            }
            let entry = pods.get_mut(uid)?;
            entry.ip = ip;
        }
        let entry = pods.get_mut(uid)?;
        let view = &entry.view;
        let run = entry.run.as_ref()?;
        let host_ip = addresses::node_ip(view.node);
        let pod_ip = if view.host_network { Some(host_ip) } else { entry.ip.or(view.observed.pod_ip) };
        let status = desired_status(view, run, pod_ip, host_ip, now);
        let differs = !run.frozen && signature(&status) != view.observed.signature;
        let action = match (view.deleting, differs) {
            // The kubelet reports a deleted pod terminal before deleting it; only a pod held by
            // finalizers (a Job's tracking finalizer, say) outlives the delete, so only there can
            // anyone act on that report. Elsewhere it would double the cost of every deletion.
            (true, true) if view.finalizers => Action::Status { body: status_patch(view, &status)?, then_delete: true },
            (true, _) => Action::Delete,
            (false, true) => Action::Status { body: status_patch(view, &status)?, then_delete: false },
            (false, false) => Action::Nothing,
        };
        Some(Plan { target, action, wake })
    }

    async fn work(&self, uid: &Arc<str>) {
        let Some(plan) = self.plan(uid, now()) else {
            self.queue.forget(uid);
            return;
        };
        let api: Api<WatchedPod> = Api::namespaced(self.sim.client.clone(), &plan.target.namespace);
        let result = match plan.action {
            Action::Nothing => Ok(()),
            Action::Status { body, then_delete } => match api.patch_status(&plan.target.name, &PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &Patch::Strategic(body)).await {
                Ok(WatchedPod(pod)) => {
                    if let Some(view) = self.view(&pod) {
                        self.observe(view, true);
                    }
                    if then_delete { self.delete(&api, &plan.target).await } else { Ok(()) }
                }
                Err(e) => Err((e, &WRITE_ERRORS)),
            },
            Action::Delete => self.delete(&api, &plan.target).await,
        };
        match result {
            Ok(()) => {
                self.queue.forget(uid);
                if let Some(wake) = plan.wake {
                    self.queue.add_after(uid.clone(), wake);
                }
            }
            // Gone: the watch brings the deletion.
            Err((e, _)) if status_code(&e) == Some(404) => self.queue.forget(uid),
            // Changed since we looked (or replaced by a pod of the same name): the watch brings
            // the newer version; look again shortly.
            Err((e, _)) if status_code(&e) == Some(409) => {
                tracing::debug!(error = %e, pod = %plan.target.name, "pod changed under a write; retrying");
                self.queue.retry(uid.clone());
            }
            Err((e, log)) => {
                log.record(&format!("{}/{}", plan.target.namespace, plan.target.name), &e);
                self.queue.retry(uid.clone());
            }
        }
    }

    /// Deletes the pod for good, as the kubelet does once its containers are stopped: grace
    /// period zero, only if it is still the same pod.
    async fn delete(&self, api: &Api<WatchedPod>, target: &Target) -> Result<(), (kube::Error, &'static ErrorLog)> {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(target.uid.to_string()), resource_version: None }),
            ..Default::default()
        };
        let result = match api.delete(&target.name, &params).await {
            Ok(_) => Ok(()),
            // Gone already, or a different pod by now.
            Err(e) if matches!(status_code(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err((e, &DELETE_ERRORS)),
        };
        if result.is_ok()
            && let Some(entry) = self.lock().pods.get_mut(&target.uid)
        {
            // With finalizers the pod stays until they are removed; one delete is enough.
            entry.delete_sent = true;
        }
        result
    }
}

struct Target {
    namespace: String,
    name: String,
    uid: Arc<str>,
}

enum Action {
    Nothing,
    Status { body: serde_json::Value, then_delete: bool },
    Delete,
}

struct Plan {
    target: Target,
    action: Action,
    /// When to look again (a container due to exit).
    wake: Option<Duration>,
}

fn reserve(pools: &mut [Option<IpPool>], view: &PodView) -> Option<Ipv4Addr> {
    if view.host_network {
        return None;
    }
    let ip = view.observed.pod_ip?;
    pools.get_mut(view.node)?.as_mut()?.reserve(ip, &view.uid).then_some(ip)
}

fn remove(state: &mut State, uid: &str) {
    if let Some(entry) = state.pods.remove(uid)
        && let Some(ip) = entry.ip
        && let Some(Some(pool)) = state.pools.get_mut(entry.view.node)
    {
        pool.release(ip, uid);
    }
}

fn is_terminal(phase: &str) -> bool {
    phase == "Succeeded" || phase == "Failed"
}

fn ts(t: &Option<Time>) -> Option<Timestamp> {
    t.as_ref().map(|t| t.0)
}

impl Run {
    fn fresh(now: Timestamp) -> Self {
        Self { start: now, since: now, restarts: 0, last: None, exit: None, frozen: false }
    }
}

/// Moves the simulated containers on to `now`; returns how long until the next thing happens.
fn advance(run: &mut Run, policy: RestartPolicy, exit_code: i32, finish_after: Duration, now: Timestamp) -> Option<Duration> {
    if policy == RestartPolicy::Always || run.exit.is_some() {
        return None;
    }
    let length = if run.restarts > 0 { finish_after.max(MIN_RESTART_RUN) } else { finish_after };
    let due = run.since.checked_add(length).unwrap_or(run.since);
    if now < due {
        return Some(Duration::try_from(now.duration_until(due)).unwrap_or_default());
    }
    let exit = Exit { code: exit_code, started: run.since, finished: due };
    if exit_code != 0 && policy == RestartPolicy::OnFailure {
        run.last = Some(exit);
        run.restarts += 1;
        run.since = now;
        return Some(finish_after.max(MIN_RESTART_RUN));
    }
    run.exit = Some(exit);
    None
}

fn view_of(pod: &Pod, node: usize) -> Option<PodView> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref()?;
    let uid: Arc<str> = Arc::from(meta.uid.as_deref()?);
    let policy = match spec.restart_policy.as_deref() {
        Some("Never") => RestartPolicy::Never,
        Some("OnFailure") => RestartPolicy::OnFailure,
        _ => RestartPolicy::Always,
    };
    let exit_code = meta.annotations.as_ref().and_then(|a| a.get(EXIT_CODE_ANNOTATION)).and_then(|v| v.trim().parse::<i32>().ok()).unwrap_or(0);
    let containers = spec.containers.iter().map(|c| ContainerSpec { name: c.name.clone(), image: c.image.clone().unwrap_or_default(), sidecar: false }).collect();
    let init_containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ContainerSpec { name: c.name.clone(), image: c.image.clone().unwrap_or_default(), sidecar: c.restart_policy.as_deref() == Some("Always") })
        .collect();
    let readiness_gates: Vec<String> = spec.readiness_gates.iter().flatten().map(|g| g.condition_type.clone()).collect();
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_default();
    let conditions = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| OWNED_CONDITIONS.contains(&c.type_.as_str()) || readiness_gates.contains(&c.type_))
        .map(|c| (c.type_.clone(), c.status.clone(), ts(&c.last_transition_time)))
        .collect();
    let observed = Observed {
        pod_ip: status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()),
        signature: signature(&status),
        conditions,
        adopt: adopt(&status, &phase),
        phase,
    };
    Some(PodView {
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
        uid,
        resource_version: meta.resource_version.clone().unwrap_or_default(),
        node,
        deleting: meta.deletion_timestamp.is_some(),
        finalizers: meta.finalizers.as_ref().is_some_and(|f| !f.is_empty()),
        policy,
        host_network: spec.host_network.unwrap_or(false),
        exit_code,
        containers,
        init_containers,
        readiness_gates,
        observed,
    })
}

/// The run a pod's current status describes, when a node has reported it before (this
/// simulator before a restart): taken over instead of starting the pod again.
fn adopt(status: &PodStatus, phase: &str) -> Option<Run> {
    if !(phase == "Running" || is_terminal(phase)) {
        return None;
    }
    let statuses = status.container_statuses.as_deref().unwrap_or_default();
    let start = ts(&status.start_time);
    if statuses.is_empty() || start.is_none() {
        // Terminal without any container report: someone else failed it; keep it as it is.
        return is_terminal(phase).then(|| {
            let at = start.unwrap_or_else(now);
            Run { start: at, since: at, restarts: 0, last: None, exit: Some(Exit { code: i32::from(phase != "Succeeded"), started: at, finished: at }), frozen: true }
        });
    }
    let start = start?;
    let state = |s: &ContainerStatus| s.state.clone().unwrap_or_default();
    let since = statuses
        .iter()
        .filter_map(|s| state(s).running.and_then(|r| ts(&r.started_at)).or_else(|| state(s).terminated.and_then(|t| ts(&t.started_at))))
        .min()
        .unwrap_or(start);
    let restarts = statuses.iter().map(|s| s.restart_count).max().unwrap_or(0);
    let exit_of = |t: &ContainerStateTerminated| Exit {
        code: t.exit_code,
        started: ts(&t.started_at).unwrap_or(since),
        finished: ts(&t.finished_at).unwrap_or(since),
    };
    let last = statuses.iter().find_map(|s| s.last_state.as_ref()?.terminated.as_ref().map(exit_of));
    let exit = is_terminal(phase).then(|| {
        let ended: Vec<Exit> = statuses.iter().filter_map(|s| state(s).terminated.as_ref().map(exit_of)).collect();
        let code = ended.iter().map(|e| e.code).find(|c| *c != 0).unwrap_or(i32::from(phase != "Succeeded"));
        let finished = ended.iter().map(|e| e.finished).max().unwrap_or(since);
        Exit { code, started: since, finished }
    });
    let frozen = exit.is_some();
    Some(Run { start, since, restarts, last, exit, frozen })
}

/// A digest-like image ID; real ones name the image's content, which a simulator has none of.
fn image_id(image: &str) -> String {
    if image.contains('@') {
        return image.to_string();
    }
    let repo = match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    };
    let digest: String = (0u8..4)
        .map(|seed| {
            let mut h = DefaultHasher::new();
            (seed, image).hash(&mut h);
            format!("{:016x}", h.finish())
        })
        .collect();
    format!("{repo}@sha256:{digest}")
}

fn container_id(uid: &str, name: &str, restarts: i32) -> String {
    if restarts == 0 { format!("sim://{uid}-{name}") } else { format!("sim://{uid}-{name}-{restarts}") }
}

fn terminated(e: &Exit, id: &str) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: e.code,
            reason: Some(if e.code == 0 { "Completed" } else { "Error" }.into()),
            started_at: Some(Time(e.started)),
            finished_at: Some(Time(e.finished)),
            container_id: Some(id.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn running(since: Timestamp) -> ContainerState {
    ContainerState { running: Some(ContainerStateRunning { started_at: Some(Time(since)) }), ..Default::default() }
}

/// The status a kubelet would report for `view` with containers as `run` describes.
fn desired_status(view: &PodView, run: &Run, pod_ip: Option<Ipv4Addr>, host_ip: Ipv4Addr, now: Timestamp) -> PodStatus {
    let uid = &*view.uid;
    let phase = match &run.exit {
        None => "Running",
        Some(e) if e.code == 0 => "Succeeded",
        Some(_) => "Failed",
    };
    let terminal = run.exit.is_some();
    let status_of = |c: &ContainerSpec, state: ContainerState, last: Option<ContainerState>, ready: bool, started: bool, restarts: i32, id: String| ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: image_id(&c.image),
        container_id: Some(id),
        state: Some(state),
        last_state: last,
        ready,
        started: Some(started),
        restart_count: restarts,
        ..Default::default()
    };
    let containers: Vec<ContainerStatus> = view
        .containers
        .iter()
        .map(|c| {
            let id = container_id(uid, &c.name, run.restarts);
            let last = run.last.as_ref().map(|e| terminated(e, &container_id(uid, &c.name, run.restarts - 1)));
            match &run.exit {
                Some(e) => status_of(c, terminated(e, &id), last, false, false, run.restarts, id.clone()),
                None => status_of(c, running(run.since), last, true, true, run.restarts, id.clone()),
            }
        })
        .collect();
    let init_containers: Vec<ContainerStatus> = view
        .init_containers
        .iter()
        .map(|c| {
            let id = container_id(uid, &c.name, 0);
            if !c.sidecar {
                let done = Exit { code: 0, started: run.start, finished: run.start };
                return status_of(c, terminated(&done, &id), None, true, false, 0, id.clone());
            }
            match &run.exit {
                // Sidecars are stopped with the pod: on deletion they are killed like the rest.
                Some(e) => {
                    let code = if view.deleting { KILLED_EXIT_CODE } else { 0 };
                    let stop = Exit { code, started: run.start, finished: e.finished };
                    status_of(c, terminated(&stop, &id), None, false, false, 0, id.clone())
                }
                None => status_of(c, running(run.start), None, true, true, 0, id.clone()),
            }
        })
        .collect();
    let end_reason = match phase {
        "Succeeded" => Some("PodCompleted"),
        "Failed" => Some("PodFailed"),
        _ => None,
    };
    let unready_gates: Vec<String> = view
        .readiness_gates
        .iter()
        .filter_map(|gate| match view.observed.conditions.iter().find(|(t, ..)| t == gate) {
            None => Some(format!("corresponding condition of pod readiness gate {gate:?} does not exist.")),
            Some((_, s, _)) if s != "True" => Some(format!("the status of pod readiness gate {gate:?} is not \"True\", but {s}")),
            Some(_) => None,
        })
        .collect();
    let ready = if terminal {
        ("False", end_reason, None)
    } else if !unready_gates.is_empty() {
        ("False", Some("ReadinessGatesNotReady"), Some(unready_gates.join(", ")))
    } else {
        ("True", None, None)
    };
    let wanted: [(&str, &str, Option<&str>, Option<String>); 5] = [
        ("PodReadyToStartContainers", if terminal { "False" } else { "True" }, None, None),
        ("Initialized", "True", if phase == "Succeeded" { Some("PodCompleted") } else { None }, None),
        ("Ready", ready.0, ready.1, ready.2),
        ("ContainersReady", if terminal { "False" } else { "True" }, end_reason, None),
        ("PodScheduled", "True", None, None),
    ];
    let conditions = wanted
        .into_iter()
        .map(|(type_, status, reason, message)| {
            // As the kubelet's status manager: the transition time moves only with the status.
            let since = view.observed.conditions.iter().find(|(t, s, _)| t == type_ && s == status).and_then(|(_, _, at)| *at).unwrap_or(now);
            PodCondition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: reason.map(str::to_string),
                message,
                last_transition_time: Some(Time(since)),
                ..Default::default()
            }
        })
        .collect();
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP { ip: host_ip.to_string() }]),
        pod_ip: pod_ip.map(|ip| ip.to_string()),
        pod_ips: pod_ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
        start_time: Some(Time(run.start)),
        init_container_statuses: (!init_containers.is_empty()).then_some(init_containers),
        container_statuses: Some(containers),
        ..Default::default()
    }
}

/// The strategic merge patch the kubelet's status manager sends: the pod's uid (and, here, the
/// resourceVersion the status was computed from) guard against writing over a newer pod or a
/// pod of the same name created since; conditions merge by type, so others' conditions stay.
fn status_patch(view: &PodView, status: &PodStatus) -> Option<serde_json::Value> {
    let status = serde_json::to_value(status).ok()?;
    Some(json!({"metadata": {"uid": &*view.uid, "resourceVersion": view.resource_version}, "status": status}))
}

/// A digest of the parts of a status the simulator writes, to tell whether a write is needed.
fn signature(status: &PodStatus) -> u64 {
    let mut h = DefaultHasher::new();
    (&status.phase, &status.host_ip, &status.pod_ip).hash(&mut h);
    let mut conditions: Vec<(&str, &str, Option<&str>)> = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| OWNED_CONDITIONS.contains(&c.type_.as_str()))
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()))
        .collect();
    conditions.sort_unstable();
    conditions.hash(&mut h);
    fn state(s: Option<&ContainerState>) -> (u8, i32, Option<&str>) {
        match s {
            Some(ContainerState { running: Some(_), .. }) => (1, 0, None),
            Some(ContainerState { terminated: Some(t), .. }) => (2, t.exit_code, t.reason.as_deref()),
            Some(ContainerState { waiting: Some(w), .. }) => (3, 0, w.reason.as_deref()),
            _ => (0, 0, None),
        }
    }
    for list in [&status.init_container_statuses, &status.container_statuses] {
        for c in list.iter().flatten() {
            (&c.name, c.ready, c.started, c.restart_count, &c.container_id, state(c.state.as_ref()), state(c.last_state.as_ref())).hash(&mut h);
        }
        0xffu8.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(policy: &str, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u-1", "resourceVersion": "7", "annotations": annotations},
            "spec": {
                "nodeName": "sim-1",
                "restartPolicy": policy,
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [{"name": "app", "image": "nginx:1.27"}]
            },
            "status": {"phase": "Pending", "qosClass": "BestEffort"}
        }))
        .unwrap()
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    #[test]
    fn a_new_pod_is_reported_running_and_ready() {
        let view = view_of(&pod("Always", json!({})), 1).unwrap();
        assert!(view.observed.adopt.is_none());
        let run = Run::fresh(at(0));
        let status = desired_status(&view, &run, Some(Ipv4Addr::new(10, 244, 1, 2)), addresses::node_ip(1), at(0));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.2"));
        assert_eq!(status.host_ip.as_deref(), Some("10.200.0.2"));
        let conditions = status.conditions.as_ref().unwrap();
        for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready", "PodReadyToStartContainers"] {
            assert!(conditions.iter().any(|c| c.type_ == t && c.status == "True"), "{t} True");
        }
        let app = &status.container_statuses.as_ref().unwrap()[0];
        assert!(app.ready && app.started == Some(true) && app.state.as_ref().unwrap().running.is_some());
        assert_eq!(app.container_id.as_deref(), Some("sim://u-1-app"));
        assert!(app.image_id.starts_with("nginx@sha256:") && app.image_id.len() == "nginx@sha256:".len() + 64);
        let init = &status.init_container_statuses.as_ref().unwrap()[0];
        assert_eq!(init.state.as_ref().unwrap().terminated.as_ref().unwrap().reason.as_deref(), Some("Completed"));
        // Once written and read back, nothing more needs writing.
        let mut written = pod("Always", json!({}));
        written.status = Some(status.clone());
        let reread = view_of(&written, 1).unwrap();
        assert_eq!(reread.observed.signature, signature(&status));
        assert_eq!(reread.observed.adopt.as_ref().map(|r| (r.start, r.since, r.exit.is_some())), Some((at(0), at(0), false)));
    }

    #[test]
    fn never_pods_finish_with_their_exit_code() {
        let view = view_of(&pod("Never", json!({EXIT_CODE_ANNOTATION: "3"})), 1).unwrap();
        let mut run = Run::fresh(at(0));
        assert_eq!(advance(&mut run, view.policy, view.exit_code, Duration::from_secs(2), at(1)), Some(Duration::from_secs(1)));
        assert_eq!(advance(&mut run, view.policy, view.exit_code, Duration::from_secs(2), at(5)), None);
        let status = desired_status(&view, &run, None, addresses::node_ip(1), at(5));
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        let t = status.container_statuses.as_ref().unwrap()[0].state.clone().unwrap().terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref(), t.finished_at), (3, Some("Error"), Some(Time(at(2)))));
        let ready = status.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("PodFailed")));
    }

    #[test]
    fn on_failure_pods_restart() {
        let view = view_of(&pod("OnFailure", json!({EXIT_CODE_ANNOTATION: "1"})), 1).unwrap();
        let mut run = Run::fresh(at(0));
        let wake = advance(&mut run, view.policy, view.exit_code, Duration::from_secs(2), at(3));
        assert_eq!((wake, run.restarts, run.exit), (Some(Duration::from_secs(2)), 1, None));
        let status = desired_status(&view, &run, None, addresses::node_ip(1), at(3));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let app = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(app.restart_count, 1);
        assert_eq!(app.last_state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 1);
        // Succeeding OnFailure pods end Succeeded.
        let ok = view_of(&pod("OnFailure", json!({})), 1).unwrap();
        let mut run = Run::fresh(at(0));
        advance(&mut run, ok.policy, ok.exit_code, Duration::from_secs(1), at(1));
        assert_eq!(desired_status(&ok, &run, None, addresses::node_ip(1), at(1)).phase.as_deref(), Some("Succeeded"));
    }

    #[test]
    fn readiness_gates_hold_ready_back() {
        let mut p = pod("Always", json!({}));
        p.spec.as_mut().unwrap().readiness_gates = Some(vec![k8s_openapi::api::core::v1::PodReadinessGate { condition_type: "example.com/lb".into() }]);
        let view = view_of(&p, 1).unwrap();
        let status = desired_status(&view, &Run::fresh(at(0)), None, addresses::node_ip(1), at(0));
        let ready = status.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("ReadinessGatesNotReady")));
    }

    #[test]
    fn resource_versions_compare_as_numbers() {
        assert!(not_older("10", "9"));
        assert!(not_older("9", "9"));
        assert!(!not_older("9", "10"));
        assert!(not_older("abc", "10"));
    }

    #[test]
    fn image_ids_look_like_digests() {
        assert!(image_id("registry:5000/team/app:v1").starts_with("registry:5000/team/app@sha256:"));
        assert!(image_id("registry:5000/team/app").starts_with("registry:5000/team/app@sha256:"));
        assert_eq!(image_id("nginx@sha256:abc"), "nginx@sha256:abc");
    }
}
