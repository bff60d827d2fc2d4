//! The running scheduler. Watches keep the snapshot and queue current; one thread takes pods off
//! the queue and decides, holding the state lock only for the decision; async tasks carry the
//! decisions out through the API (bindings, status conditions, evictions, events) so that a slow
//! API call never stalls the next decision.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, Namespace, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::algorithm::{Cursor, ScheduleError, schedule};
use crate::cluster::Cluster;
use crate::decode::SchedulingPod;
use crate::filters::Plugin;
use crate::model::PodInfo;
use crate::preemption::{Preemption, preempt};
use crate::queue::{ALL_PLUGINS, SchedulingQueue};

const SYNCED_NODES: u8 = 1;
const SYNCED_PODS: u8 = 2;
const SYNCED_CLASSES: u8 = 4;
const SYNCED_NAMESPACES: u8 = 8;
const SYNCED_CLAIMS: u8 = 16;
const SYNCED_VOLUMES: u8 = 32;
const SYNCED_STORAGE_CLASSES: u8 = 64;
const SYNCED_ALL: u8 = SYNCED_NODES | SYNCED_PODS | SYNCED_CLASSES | SYNCED_NAMESPACES | SYNCED_CLAIMS | SYNCED_VOLUMES | SYNCED_STORAGE_CLASSES;

/// API calls carrying out decisions at once; more wait in the channel.
const MAX_IN_FLIGHT_ACTIONS: usize = 64;
const MAX_IN_FLIGHT_EVENTS: usize = 16;
/// Events waiting to be written; beyond this they are dropped, as client-go's broadcaster does,
/// rather than slowing scheduling down.
const EVENT_BACKLOG: usize = 4096;
/// The longest the scheduling thread sleeps without looking at the queue.
const IDLE_WAIT: Duration = Duration::from_secs(1);
const UNSCHEDULABLE_FLUSH_INTERVAL: Duration = Duration::from_secs(30);
/// Watch events applied under one lock acquisition.
const WATCH_BATCH: usize = 256;

/// Cluster events that may let a parked pod fit, as the plugins that rejected it (upstream's
/// queueing hints, coarsely): a deleted pod frees resources, ports and topology slots; a new or
/// relabelled pod may satisfy affinity or even out a spread.
const ON_ASSIGNED_POD_DELETE: u16 = Plugin::NodeResourcesFit.bit() | Plugin::NodePorts.bit() | Plugin::InterPodAffinity.bit() | Plugin::PodTopologySpread.bit();
const ON_ASSIGNED_POD_CHANGE: u16 = Plugin::InterPodAffinity.bit() | Plugin::PodTopologySpread.bit();

pub(crate) struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
enum Nomination {
    Keep,
    Set(String),
    Clear,
}

#[derive(Debug)]
enum Action {
    Bind { pod: Arc<PodInfo>, node: String },
    Failed { pod: Arc<PodInfo>, reason: &'static str, message: String, nomination: Nomination },
    Preempt { pod: Arc<PodInfo>, node: String, victims: Vec<Arc<PodInfo>>, demoted: Vec<Arc<PodInfo>> },
}

pub(crate) struct State {
    cluster: Cluster,
    queue: SchedulingQueue,
    /// The latest version of every pod the watch delivered, by uid.
    pods: HashMap<String, Arc<PodInfo>>,
    /// Pods counted on a node while their binding is in flight: uid -> node.
    assumed: HashMap<String, String>,
    synced: u8,
    cursor: Cursor,
    scheduler_name: String,
}

impl State {
    fn new(scheduler_name: &str) -> Self {
        State {
            cluster: Cluster::default(),
            queue: SchedulingQueue::default(),
            pods: HashMap::new(),
            assumed: HashMap::new(),
            synced: 0,
            cursor: Cursor::default(),
            scheduler_name: scheduler_name.to_string(),
        }
    }

    /// Applies a pod from the watch; returns whether the scheduling thread has new work.
    fn apply_pod(&mut self, mut pod: Pod, now: Instant) -> bool {
        slim(&mut pod);
        let mut info = PodInfo::new(Arc::new(pod), &self.cluster.classes);
        if !info.node_name.is_empty() {
            slim_assigned(&mut info);
        }
        let info = Arc::new(info);
        if info.uid.is_empty() {
            return false;
        }
        if info.terminal {
            return self.delete_pod(&info.uid, now);
        }
        let old = self.pods.insert(info.uid.clone(), info.clone());
        if let Some(node) = self.assumed.get(&info.uid).cloned() {
            if info.node_name.is_empty() {
                // Binding still in flight: the assumed copy keeps holding its room.
                return false;
            }
            self.assumed.remove(&info.uid);
            self.cluster.remove_pod(&node, &info.uid);
            return self.assigned(info, None, now);
        }
        if !info.node_name.is_empty() {
            return self.assigned(info, old.filter(|o| !o.node_name.is_empty()), now);
        }
        // Gated pods wait outside the queue until their gates are removed (upstream's
        // SchedulingGates plugin).
        let gated = info.pod.spec.as_ref().and_then(|s| s.scheduling_gates.as_ref()).is_some_and(|g| !g.is_empty());
        if info.scheduler_name != self.scheduler_name || info.deleting || gated {
            self.queue.remove(&info.uid);
            self.cluster.clear_nomination(&info.uid);
            return false;
        }
        if let Some(node) = self.cluster.nomination(&info.uid).map(str::to_string) {
            self.cluster.nominate(info.clone(), &node);
        } else if old.is_none() && !info.nominated_node.is_empty() {
            // Nominated before this process started watching (a previous leader preempted).
            self.cluster.nominate(info.clone(), &info.nominated_node.clone());
        }
        self.queue.add_or_update(info, now)
    }

    fn assigned(&mut self, info: Arc<PodInfo>, old: Option<Arc<PodInfo>>, now: Instant) -> bool {
        self.queue.remove(&info.uid);
        self.cluster.clear_nomination(&info.uid);
        let changed = match &old {
            Some(o) => {
                self.cluster.remove_pod(&o.node_name, &o.uid);
                o.labels != info.labels
            }
            None => true,
        };
        self.cluster.add_pod(info);
        changed && self.queue.move_unschedulable(ON_ASSIGNED_POD_CHANGE, now)
    }

    fn delete_pod(&mut self, uid: &str, now: Instant) -> bool {
        let Some(old) = self.pods.remove(uid) else { return false };
        self.queue.remove(uid);
        self.cluster.clear_nomination(uid);
        let node = self.assumed.remove(uid).or_else(|| (!old.node_name.is_empty()).then(|| old.node_name.clone()));
        match node {
            Some(node) => {
                self.cluster.remove_pod(&node, uid);
                self.queue.move_unschedulable(ON_ASSIGNED_POD_DELETE, now)
            }
            None => false,
        }
    }

    /// A binding failed: the pod no longer holds room on the node, and is retried after its
    /// backoff (unless the watch already showed it bound or gone).
    fn forget_assumed(&mut self, uid: &str, now: Instant) {
        if let Some(node) = self.assumed.remove(uid) {
            self.cluster.remove_pod(&node, uid);
            self.queue.error(uid, now);
            // Others may fit where it was assumed.
            self.queue.move_unschedulable(ON_ASSIGNED_POD_DELETE, now);
        }
    }

    /// Priority classes changed: pods that take their priority from a class get it anew.
    fn reprioritize(&mut self, now: Instant) -> bool {
        let changed: Vec<Arc<PodInfo>> = self
            .pods
            .values()
            .filter_map(|p| {
                let (spec_priority, class_name, policy) = &p.priority_source;
                let (priority, never) = self.cluster.classes.resolve(*spec_priority, class_name.as_deref(), policy.as_deref());
                (priority != p.priority || never != p.preempt_never).then(|| Arc::new(PodInfo { priority, preempt_never: never, ..(**p).clone() }))
            })
            .collect();
        let mut wake = false;
        for info in changed {
            self.pods.insert(info.uid.clone(), info.clone());
            if let Some(node) = self.assumed.get(&info.uid).cloned() {
                self.cluster.remove_pod(&node, &info.uid);
                self.cluster.add_pod(Arc::new(info.assumed_on(&node)));
            } else if !info.node_name.is_empty() {
                self.cluster.remove_pod(&info.node_name, &info.uid);
                self.cluster.add_pod(info);
            } else if self.queue.contains(&info.uid) {
                wake |= self.queue.add_or_update(info, now);
            }
        }
        wake
    }

    /// One scheduling attempt; returns what to do through the API.
    fn schedule_one(&mut self, pod: Arc<PodInfo>, threads: usize) -> Vec<Action> {
        let now = Instant::now();
        if pod.deleting || !pod.node_name.is_empty() {
            self.queue.remove(&pod.uid);
            return Vec::new();
        }
        match schedule(&self.cluster, &pod, threads, &mut self.cursor) {
            Ok(i) => {
                let node = self.cluster.nodes[i].name.clone();
                self.cluster.clear_nomination(&pod.uid);
                // Counted at once, so the next pods see this one's requests before the watch
                // reports the binding.
                self.cluster.add_pod(Arc::new(pod.assumed_on(&node)));
                self.assumed.insert(pod.uid.clone(), node.clone());
                tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), %node, "assumed");
                vec![Action::Bind { pod, node }]
            }
            Err(ScheduleError::NoNodes) => {
                self.queue.error(&pod.uid, now);
                vec![Action::Failed { pod, reason: "SchedulerError", message: "no nodes available to schedule pods".into(), nomination: Nomination::Keep }]
            }
            Err(ScheduleError::Unfit(mut fit)) => {
                let mut actions = Vec::new();
                let nomination = match preempt(&self.cluster, &pod, &fit) {
                    Preemption::Nominate(candidate) => {
                        let node = self.cluster.nodes[candidate.node].name.clone();
                        // Lower-priority pods nominated there lose the room they were promised.
                        let demoted: Vec<Arc<PodInfo>> = self.cluster.nominated_on(&node).iter().filter(|p| p.uid != pod.uid && p.priority < pod.priority).cloned().collect();
                        for d in &demoted {
                            self.cluster.clear_nomination(&d.uid);
                        }
                        self.cluster.nominate(pod.clone(), &node);
                        tracing::info!(
                            pod = %format!("{}/{}", pod.namespace, pod.name),
                            %node,
                            victims = ?candidate.victims.iter().map(|v| format!("{}/{}", v.namespace, v.name)).collect::<Vec<_>>(),
                            "preempting"
                        );
                        actions.push(Action::Preempt { pod: pod.clone(), node: node.clone(), victims: candidate.victims, demoted });
                        Nomination::Set(node)
                    }
                    Preemption::Failed { message, clear_nomination } => {
                        fit.post_filter = Some(format!("preemption: {message}"));
                        let cleared = clear_nomination && self.cluster.clear_nomination(&pod.uid).is_some();
                        if clear_nomination && (cleared || !pod.nominated_node.is_empty()) { Nomination::Clear } else { Nomination::Keep }
                    }
                };
                self.queue.unschedulable(&pod.uid, fit.rejectors(), now);
                let message = fit.message();
                tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), %message, "unschedulable");
                actions.push(Action::Failed { pod, reason: "Unschedulable", message, nomination });
                actions
            }
        }
    }
}

/// One kind of watched object and how it changes the state.
trait Watched: kube::Resource<DynamicType = ()> + Clone + k8s_openapi::serde::de::DeserializeOwned + Debug + Send + 'static {
    const SYNCED: u8;
    fn key(&self) -> Option<String>;
    fn apply(self, state: &mut State, now: Instant) -> bool;
    fn delete(state: &mut State, key: &str, now: Instant) -> bool;
    fn keys(state: &State) -> Vec<String>;
}

impl Watched for SchedulingPod {
    const SYNCED: u8 = SYNCED_PODS;
    fn key(&self) -> Option<String> {
        self.0.metadata.uid.clone()
    }
    fn apply(self, state: &mut State, now: Instant) -> bool {
        state.apply_pod(self.0, now)
    }
    fn delete(state: &mut State, key: &str, now: Instant) -> bool {
        state.delete_pod(key, now)
    }
    fn keys(state: &State) -> Vec<String> {
        state.pods.keys().cloned().collect()
    }
}

/// Drops what scheduling never reads before a pod is held, for every pod of the cluster: a typed
/// pod costs ~17 KB for ~2.5 KB of JSON, most of it in managedFields, the service account's
/// projected volume, container mounts and probes, and container statuses. Kept: metadata
/// (labels, owners), scheduling fields, claim volumes, container resources and ports, and the
/// status fields the scheduler reads (conditions, nominatedNodeName, startTime, phase).
fn slim(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    if let Some(spec) = pod.spec.as_mut() {
        if let Some(volumes) = spec.volumes.as_mut() {
            volumes.retain(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some());
        }
        for container in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
            let kept = k8s_openapi::api::core::v1::Container {
                name: std::mem::take(&mut container.name),
                image: container.image.take(),
                ports: container.ports.take(),
                resources: container.resources.take(),
                resize_policy: container.resize_policy.take(),
                restart_policy: container.restart_policy.take(),
                ..Default::default()
            };
            *container = kept;
        }
        spec.ephemeral_containers = None;
        shrink(&mut spec.volumes);
        shrink(&mut spec.tolerations);
        spec.containers.shrink_to_fit();
        shrink(&mut spec.init_containers);
    }
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
        shrink(&mut status.conditions);
        shrink(&mut status.pod_ips);
        shrink(&mut status.host_ips);
    }
}

/// Gives back what a list does not use: JSON decoding grows vectors by doubling and typed
/// elements are large (a Volume is 3.2 KB, a Container 2.1 KB), so spare capacity cost ~4 KB
/// per held pod; an emptied list is dropped.
fn shrink<T>(list: &mut Option<Vec<T>>) {
    match list {
        Some(items) if items.is_empty() => *list = None,
        Some(items) => items.shrink_to_fit(),
        None => {}
    }
}

/// Everything the scheduler reads of an assigned pod (requests, ports, labels, affinity terms,
/// start time, phase, priority) is already parsed into its [`PodInfo`]: a bound pod's spec no
/// longer changes where it fits, and only a pending pod's PodScheduled condition is consulted.
fn slim_assigned(info: &mut PodInfo) {
    info.release_pod();
}

impl Watched for Node {
    const SYNCED: u8 = SYNCED_NODES;
    fn key(&self) -> Option<String> {
        self.metadata.name.clone()
    }
    fn apply(mut self, state: &mut State, now: Instant) -> bool {
        self.metadata.managed_fields = None;
        state.cluster.apply_node(Arc::new(self)) && state.queue.move_unschedulable(ALL_PLUGINS, now)
    }
    fn delete(state: &mut State, key: &str, _: Instant) -> bool {
        state.cluster.remove_node(key);
        false
    }
    fn keys(state: &State) -> Vec<String> {
        state.cluster.order.iter().map(|&i| state.cluster.nodes[i].name.clone()).collect()
    }
}

impl Watched for Namespace {
    const SYNCED: u8 = SYNCED_NAMESPACES;
    fn key(&self) -> Option<String> {
        self.metadata.name.clone()
    }
    fn apply(self, state: &mut State, now: Instant) -> bool {
        let Some(name) = self.metadata.name else { return false };
        let labels = self.metadata.labels.unwrap_or_default();
        let changed = state.cluster.namespaces.get(&name) != Some(&labels);
        state.cluster.namespaces.insert(name, labels);
        changed && state.queue.move_unschedulable(Plugin::InterPodAffinity.bit(), now)
    }
    fn delete(state: &mut State, key: &str, _: Instant) -> bool {
        state.cluster.namespaces.remove(key);
        false
    }
    fn keys(state: &State) -> Vec<String> {
        state.cluster.namespaces.keys().cloned().collect()
    }
}

impl Watched for PriorityClass {
    const SYNCED: u8 = SYNCED_CLASSES;
    fn key(&self) -> Option<String> {
        self.metadata.name.clone()
    }
    fn apply(self, state: &mut State, now: Instant) -> bool {
        state.cluster.classes.apply(&self) && state.reprioritize(now)
    }
    fn delete(state: &mut State, key: &str, now: Instant) -> bool {
        state.cluster.classes.remove(key) && state.reprioritize(now)
    }
    fn keys(state: &State) -> Vec<String> {
        state.cluster.classes.names()
    }
}

/// Claims, volumes and storage classes: any change may let a pod the VolumeBinding filter
/// rejected fit.
macro_rules! watched_volume_object {
    ($type:ty, $synced:expr, $key:expr, $apply:ident, $delete:ident, $keys:ident) => {
        impl Watched for $type {
            const SYNCED: u8 = $synced;
            fn key(&self) -> Option<String> {
                #[allow(clippy::redundant_closure_call)]
                ($key)(self)
            }
            fn apply(mut self, state: &mut State, now: Instant) -> bool {
                self.metadata.managed_fields = None;
                state.cluster.volumes.$apply(self);
                state.queue.move_unschedulable(Plugin::VolumeBinding.bit(), now)
            }
            fn delete(state: &mut State, key: &str, now: Instant) -> bool {
                state.cluster.volumes.$delete(key);
                state.queue.move_unschedulable(Plugin::VolumeBinding.bit(), now)
            }
            fn keys(state: &State) -> Vec<String> {
                state.cluster.volumes.$keys()
            }
        }
    };
}

watched_volume_object!(PersistentVolumeClaim, SYNCED_CLAIMS, |c: &PersistentVolumeClaim| Some(format!("{}/{}", c.metadata.namespace.as_deref()?, c.metadata.name.as_deref()?)), apply_claim, delete_claim, claim_keys);
watched_volume_object!(PersistentVolume, SYNCED_VOLUMES, |v: &PersistentVolume| v.metadata.name.clone(), apply_volume, delete_volume, volume_keys);
watched_volume_object!(StorageClass, SYNCED_STORAGE_CLASSES, |c: &StorageClass| c.metadata.name.clone(), apply_class, delete_class, class_keys);

/// Feeds one watch into the state, a batch of events per lock.
async fn watch<K: Watched>(api: Api<K>, config: watcher::Config, shared: Arc<Shared>) {
    let mut batches = std::pin::pin!(watcher(api, config).default_backoff().ready_chunks(WATCH_BATCH));
    let mut fresh: Option<HashSet<String>> = None;
    while let Some(batch) = batches.next().await {
        let now = Instant::now();
        let mut wake = false;
        {
            let mut state = shared.lock();
            for event in batch {
                match event {
                    Err(error) => tracing::debug!(%error, kind = %K::kind(&()), "watch error; retrying"),
                    Ok(watcher::Event::Init) => fresh = Some(HashSet::new()),
                    Ok(watcher::Event::InitApply(obj)) => {
                        if let (Some(f), Some(k)) = (fresh.as_mut(), obj.key()) {
                            f.insert(k);
                        }
                        wake |= obj.apply(&mut state, now);
                    }
                    Ok(watcher::Event::InitDone) => {
                        // After a relist, whatever the list no longer has was deleted meanwhile.
                        if let Some(f) = fresh.take() {
                            for k in K::keys(&state) {
                                if !f.contains(&k) {
                                    K::delete(&mut state, &k, now);
                                }
                            }
                        }
                        state.synced |= K::SYNCED;
                        wake = true;
                    }
                    Ok(watcher::Event::Apply(obj)) => wake |= obj.apply(&mut state, now),
                    Ok(watcher::Event::Delete(obj)) => {
                        if let Some(k) = obj.key() {
                            wake |= K::delete(&mut state, &k, now);
                        }
                    }
                }
            }
        }
        if wake {
            shared.wake.notify_all();
        }
    }
}

/// The decision loop, on its own thread: it only computes, so it never waits on the network.
fn decide(shared: Arc<Shared>, actions: mpsc::UnboundedSender<Action>, threads: usize) {
    let mut last_flush = Instant::now();
    loop {
        let mut state = shared.lock();
        let pod = loop {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            if now.duration_since(last_flush) >= UNSCHEDULABLE_FLUSH_INTERVAL {
                state.queue.flush_unschedulable(now);
                last_flush = now;
            }
            if state.synced == SYNCED_ALL
                && let Some(pod) = state.queue.pop(now)
            {
                break pod;
            }
            let wait = state.queue.next_backoff_end().map_or(IDLE_WAIT, |t| t.saturating_duration_since(now).min(IDLE_WAIT));
            state = shared.wake.wait_timeout(state, wait.max(Duration::from_millis(1))).unwrap_or_else(|e| e.into_inner()).0;
        };
        let out = state.schedule_one(pod, threads);
        drop(state);
        for action in out {
            if actions.send(action).is_err() {
                return;
            }
        }
    }
}

/// Writes Events in the background; dropped when the backlog is full.
#[derive(Clone)]
struct Recorder {
    tx: mpsc::Sender<Event>,
    component: String,
    instance: String,
}

static LAST_EVENT_NANOS: AtomicU64 = AtomicU64::new(0);

impl Recorder {
    fn record(&self, pod: &PodInfo, type_: &str, reason: &str, action: &str, message: String, related: Option<&PodInfo>) {
        let now = Timestamp::now();
        let nanos = u64::try_from(now.as_nanosecond()).unwrap_or(0);
        // Unique names even for events in the same nanosecond.
        let next = |last: u64| last.max(nanos.saturating_sub(1)) + 1;
        let stamp = next(LAST_EVENT_NANOS.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(next(last))).unwrap_or_else(|last| last));
        let reference = |p: &PodInfo| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(p.name.clone()),
            namespace: Some(p.namespace.clone()),
            uid: Some(p.uid.clone()),
            resource_version: p.resource_version.clone(),
            ..Default::default()
        };
        let event = Event {
            metadata: ObjectMeta { name: Some(format!("{}.{stamp:x}", pod.name)), namespace: Some(pod.namespace.clone()), ..Default::default() },
            involved_object: reference(pod),
            related: related.map(reference),
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            action: Some(action.into()),
            source: Some(EventSource { component: Some(self.component.clone()), host: None }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.instance.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            ..Default::default()
        };
        if self.tx.try_send(event).is_err() {
            tracing::debug!(reason, "event backlog full; event dropped");
        }
    }
}

async fn write_events(client: kube::Client, mut rx: mpsc::Receiver<Event>) {
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT_EVENTS));
    let mut tasks = JoinSet::new();
    while let Some(event) = rx.recv().await {
        let Ok(permit) = limit.clone().acquire_owned().await else { break };
        while tasks.try_join_next().is_some() {}
        let api: Api<Event> = Api::namespaced(client.clone(), event.metadata.namespace.as_deref().unwrap_or("default"));
        tasks.spawn(async move {
            if let Err(error) = api.create(&PostParams::default(), &event).await {
                tracing::debug!(%error, "writing an event failed");
            }
            drop(permit);
        });
    }
}

struct Executor {
    client: kube::Client,
    shared: Arc<Shared>,
    events: Recorder,
    scheduler_name: String,
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl Executor {
    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn run(&self, action: Action) {
        match action {
            Action::Bind { pod, node } => self.bind(pod, node).await,
            Action::Failed { pod, reason, message, nomination } => self.failed(&pod, reason, message, nomination).await,
            Action::Preempt { pod, node, victims, demoted } => {
                futures_util::future::join_all(victims.iter().map(|v| self.evict(v, &pod, &node))).await;
                for d in demoted {
                    let patch = json!({"status": {"nominatedNodeName": null}});
                    if let Err(error) = self.pods(&d.namespace).patch_status(&d.name, &PatchParams::default(), &Patch::Strategic(patch)).await {
                        tracing::debug!(%error, pod = %d.name, "clearing a nomination failed");
                    }
                }
            }
        }
    }

    async fn bind(&self, pod: Arc<PodInfo>, node: String) {
        if let Err(error) = self.select_node_for_claims(&pod, &node).await {
            tracing::warn!(%error, pod = %format!("{}/{}", pod.namespace, pod.name), %node, "naming the node on the pod's claims failed");
            self.shared.lock().forget_assumed(&pod.uid, Instant::now());
            self.shared.wake.notify_all();
            self.failed(&pod, "SchedulerError", format!("running PreBind plugin \"VolumeBinding\": {error}"), Nomination::Keep).await;
            return;
        }
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let result = self.pods(&pod.namespace).create_subresource::<_, Value>("binding", &pod.name, &PostParams::default(), &binding).await;
        match result {
            Ok(_) => {
                let message = format!("Successfully assigned {}/{} to {}", pod.namespace, pod.name, node);
                self.events.record(&pod, "Normal", "Scheduled", "Binding", message, None);
            }
            Err(error) => {
                tracing::warn!(%error, pod = %format!("{}/{}", pod.namespace, pod.name), %node, "binding failed");
                self.shared.lock().forget_assumed(&pod.uid, Instant::now());
                self.shared.wake.notify_all();
                // A 404 naming the pod means it is gone; one without details means the server
                // does not serve pods/binding, which must show in the pod's events.
                let pod_gone = matches!(&error, kube::Error::Api(s) if s.code == 404 && s.details.is_some());
                if !pod_gone {
                    let why = match &error {
                        kube::Error::Api(s) => s.message.clone(),
                        other => other.to_string(),
                    };
                    self.failed(&pod, "SchedulerError", format!("binding rejected: {why}"), Nomination::Keep).await;
                }
            }
        }
    }

    /// Upstream's VolumeBinding PreBind, minimally: unbound WaitForFirstConsumer claims learn the
    /// chosen node, which the PersistentVolume controller and provisioners wait for.
    async fn select_node_for_claims(&self, pod: &PodInfo, node: &str) -> Result<(), kube::Error> {
        let claims = self.shared.lock().cluster.volumes.claims_to_select(pod, node);
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &pod.namespace);
        for claim in claims {
            let patch = json!({"metadata": {"annotations": {crate::volumebinding::ANN_SELECTED_NODE: node}}});
            api.patch(&claim, &PatchParams::default(), &Patch::Merge(patch)).await?;
        }
        Ok(())
    }

    /// Records why the pod did not schedule: the PodScheduled=False condition (only when it
    /// changes, as upstream avoids no-op writes) and a FailedScheduling event (every attempt).
    async fn failed(&self, pod: &PodInfo, reason: &str, message: String, nomination: Nomination) {
        let current = pod.pod.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
        let same_condition = current.is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some(reason) && c.message.as_deref() == Some(message.as_str()));
        let mut status = serde_json::Map::new();
        if !same_condition {
            let transition = match current {
                Some(c) if c.status == "False" => c.last_transition_time.as_ref().map(|t| json!(t)).unwrap_or_else(|| json!(Time(Timestamp::now()))),
                _ => json!(Time(Timestamp::now())),
            };
            status.insert(
                "conditions".into(),
                json!([{"type": "PodScheduled", "status": "False", "reason": reason, "message": message, "lastProbeTime": null, "lastTransitionTime": transition}]),
            );
        }
        match &nomination {
            Nomination::Set(node) if pod.nominated_node != *node => {
                status.insert("nominatedNodeName".into(), json!(node));
            }
            Nomination::Clear => {
                status.insert("nominatedNodeName".into(), Value::Null);
            }
            _ => {}
        }
        if !status.is_empty() {
            let patch = json!({"status": status});
            if let Err(error) = self.pods(&pod.namespace).patch_status(&pod.name, &PatchParams::default(), &Patch::Strategic(patch)).await
                && !is_status(&error, 404)
            {
                tracing::warn!(%error, pod = %format!("{}/{}", pod.namespace, pod.name), "updating the PodScheduled condition failed");
            }
        }
        self.events.record(pod, "Warning", "FailedScheduling", "Scheduling", message, None);
    }

    /// Marks the victim (DisruptionTarget), deletes it with its own grace period, and says why.
    async fn evict(&self, victim: &PodInfo, preemptor: &PodInfo, node: &str) {
        let api = self.pods(&victim.namespace);
        let condition = json!({"status": {"conditions": [{
            "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
            "message": format!("{}: preempting to accommodate a higher priority pod", self.scheduler_name),
            "lastTransitionTime": Time(Timestamp::now()),
        }]}});
        if let Err(error) = api.patch_status(&victim.name, &PatchParams::default(), &Patch::Strategic(condition)).await {
            tracing::debug!(%error, pod = %victim.name, "marking a victim failed");
        }
        let params = DeleteParams { preconditions: Some(Preconditions { uid: Some(victim.uid.clone()), resource_version: None }), ..Default::default() };
        match api.delete(&victim.name, &params).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => return,
            Err(error) => {
                tracing::warn!(%error, pod = %format!("{}/{}", victim.namespace, victim.name), "deleting a victim failed");
                return;
            }
        }
        let message = format!("Preempted by pod {} on node {}", preemptor.uid, node);
        self.events.record(victim, "Normal", "Preempted", "Preempting", message, Some(preemptor));
    }
}

async fn execute(executor: Arc<Executor>, mut rx: mpsc::UnboundedReceiver<Action>) {
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT_ACTIONS));
    // Owning the tasks means stopping this future stops them (leadership lost).
    let mut tasks = JoinSet::new();
    while let Some(action) = rx.recv().await {
        let Ok(permit) = limit.clone().acquire_owned().await else { break };
        while tasks.try_join_next().is_some() {}
        let executor = executor.clone();
        tasks.spawn(async move {
            executor.run(action).await;
            drop(permit);
        });
    }
}

/// A started scheduler: its watches, executor and decision thread.
pub(crate) struct Running {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    thread: Option<std::thread::JoinHandle<()>>,
    exited: oneshot::Receiver<()>,
}

/// Tells `run` when the decision thread ends, however it ends (a panic included).
struct ExitSignal(Option<oneshot::Sender<()>>);

impl Drop for ExitSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Running {
    pub(crate) fn start(client: kube::Client, scheduler_name: &str, parallelism: usize, identity: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared { state: Mutex::new(State::new(scheduler_name)), wake: Condvar::new(), stop: AtomicBool::new(false) });
        let mut tasks = JoinSet::new();
        // Terminal pods hold nothing, so the server filters them out (upstream's informer does
        // the same); one leaving the selector arrives as a deletion.
        let pods = watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed");
        tasks.spawn(watch(Api::<SchedulingPod>::all(client.clone()), pods, shared.clone()));
        tasks.spawn(watch(Api::<Node>::all(client.clone()), watcher::Config::default(), shared.clone()));
        tasks.spawn(watch(Api::<Namespace>::all(client.clone()), watcher::Config::default(), shared.clone()));
        tasks.spawn(watch(Api::<PriorityClass>::all(client.clone()), watcher::Config::default(), shared.clone()));
        tasks.spawn(watch(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default(), shared.clone()));
        tasks.spawn(watch(Api::<PersistentVolume>::all(client.clone()), watcher::Config::default(), shared.clone()));
        tasks.spawn(watch(Api::<StorageClass>::all(client.clone()), watcher::Config::default(), shared.clone()));
        let (event_tx, event_rx) = mpsc::channel(EVENT_BACKLOG);
        tasks.spawn(write_events(client.clone(), event_rx));
        let (action_tx, action_rx) = mpsc::unbounded_channel();
        let executor = Executor {
            client,
            shared: shared.clone(),
            events: Recorder { tx: event_tx, component: scheduler_name.to_string(), instance: identity.to_string() },
            scheduler_name: scheduler_name.to_string(),
        };
        tasks.spawn(execute(Arc::new(executor), action_rx));
        let threads = parallelism.clamp(1, std::thread::available_parallelism().map_or(1, |n| n.get()));
        let (exit_tx, exited) = oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new().name("scheduler".into()).spawn(move || {
            let _signal = ExitSignal(Some(exit_tx));
            decide(thread_shared, action_tx, threads);
        })?;
        Ok(Running { shared, tasks, thread: Some(thread), exited })
    }

    /// Completes if the decision thread ends on its own (it only does by panicking).
    pub(crate) async fn exited(&mut self) {
        let _ = (&mut self.exited).await;
    }

    pub(crate) async fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        self.tasks.shutdown().await;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::merge;

    fn pod(name: &str, extra: Value) -> Pod {
        let mut p = json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")}, "spec": {"containers": [{"name": "c"}]}});
        merge(&mut p, extra);
        serde_json::from_value(p).expect("pod")
    }

    #[test]
    fn the_scheduling_decode_is_the_watched_pod_slimmed() {
        // Every part of a pod the scheduler keeps or drops, with the names that are not plain
        // camelCase (hostIPC, podIPs, ...).
        let containers = json!([{"name": "c", "image": "i", "env": [{"name": "E", "value": "v"}], "ports": [{"containerPort": 80, "hostPort": 8080}],
                                 "resources": {"requests": {"cpu": "100m"}}, "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"}],
                                 "volumeMounts": [{"name": "v", "mountPath": "/v"}], "livenessProbe": {"exec": {"command": ["true"]}}}]);
        let volumes = json!([{"name": "data", "persistentVolumeClaim": {"claimName": "pvc"}},
                             {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"]}}}},
                             {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
                             {"name": "empty", "emptyDir": {}}]);
        let scheduling = json!({
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "a"}}}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]}]}}},
        });
        let mut spec = json!({
            "activeDeadlineSeconds": 5, "automountServiceAccountToken": false, "dnsPolicy": "ClusterFirst", "enableServiceLinks": true,
            "hostIPC": true, "hostNetwork": true, "hostPID": true, "hostUsers": false, "hostname": "h", "subdomain": "s",
            "setHostnameAsFQDN": true, "shareProcessNamespace": true, "nodeName": "node-1", "nodeSelector": {"disk": "ssd"},
            "os": {"name": "linux"}, "overhead": {"cpu": "10m"}, "preemptionPolicy": "Never", "priority": 7, "priorityClassName": "high",
            "readinessGates": [{"conditionType": "x"}], "resources": {"requests": {"cpu": "1"}}, "restartPolicy": "Always",
            "runtimeClassName": "rc", "schedulerName": "other", "schedulingGates": [{"name": "g"}], "securityContext": {"runAsUser": 1},
            "serviceAccount": "sa", "serviceAccountName": "sa", "terminationGracePeriodSeconds": 3,
        });
        let more = json!({
            "dnsConfig": {"nameservers": ["1.1.1.1"]}, "hostAliases": [{"ip": "1.2.3.4", "hostnames": ["a"]}],
            "imagePullSecrets": [{"name": "pull"}], "resourceClaims": [{"name": "rc", "resourceClaimName": "claim"}],
            "containers": containers,
            "initContainers": [{"name": "init", "image": "i", "restartPolicy": "Always", "command": ["sh"]}],
            "ephemeralContainers": [{"name": "debug", "image": "i"}],
            "volumes": volumes,
        });
        merge(&mut spec, scheduling);
        merge(&mut spec, more);
        let status = json!({
            "phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}], "hostIP": "10.0.0.1", "hostIPs": [{"ip": "10.0.0.1"}],
            "podIP": "10.42.0.5", "podIPs": [{"ip": "10.42.0.5"}], "message": "m", "reason": "r", "nominatedNodeName": "node-2",
            "observedGeneration": 2, "qosClass": "Burstable", "resize": "InProgress", "startTime": "2026-01-01T00:00:00Z",
            "resourceClaimStatuses": [{"name": "rc", "resourceClaimName": "claim"}],
            "containerStatuses": [{"name": "c", "image": "i", "imageID": "x", "ready": true, "restartCount": 0, "state": {"running": {}}}],
            "initContainerStatuses": [{"name": "init", "image": "i", "imageID": "x", "ready": true, "restartCount": 0}]
        });
        let metadata = json!({"name": "p", "namespace": "n", "uid": "u", "resourceVersion": "7", "labels": {"app": "a"},
                              "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "me"},
                              "managedFields": [{"manager": "m", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]});
        let json = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status});
        let crate::decode::WatchedPod(mut watched) = serde_json::from_value(json.clone()).expect("watched pod");
        slim(&mut watched);
        let SchedulingPod(decoded) = serde_json::from_value(json).expect("scheduling pod");
        assert_eq!(decoded, watched);
        assert_eq!(decoded.spec.as_ref().and_then(|s| s.volumes.as_ref()).map(Vec::len), Some(2));
        // And a bare pod, as the API hands out none.
        let crate::decode::WatchedPod(mut bare) = serde_json::from_value(json!({"metadata": {"name": "b"}, "spec": {}, "status": {}})).expect("bare");
        slim(&mut bare);
        let SchedulingPod(bare_decoded) = serde_json::from_value(json!({"metadata": {"name": "b"}, "spec": {}, "status": {}})).expect("bare");
        assert_eq!(bare_decoded, bare);
    }

    fn node(name: &str, cpu: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name}, "status": {"allocatable": {"cpu": cpu, "memory": "1Gi", "pods": "10"}}})).expect("node")
    }

    fn ready_state() -> State {
        let mut s = State::new("default-scheduler");
        s.synced = SYNCED_ALL;
        s
    }

    fn cpu(c: &str) -> Value {
        json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": c}}}]}})
    }

    #[test]
    fn assumed_pods_count_until_the_watch_confirms() {
        let now = Instant::now();
        let mut s = ready_state();
        Node::apply(node("n", "1"), &mut s, now);
        s.apply_pod(pod("a", cpu("600m")), now);
        s.apply_pod(pod("b", cpu("600m")), now);
        let first = s.queue.pop(now).expect("a");
        let actions = s.schedule_one(first, 1);
        assert!(matches!(&actions[..], [Action::Bind { node, .. }] if node == "n"));
        // The second pod sees the first one's CPU although no watch event said it is bound.
        let second = s.queue.pop(now).expect("b");
        let actions = s.schedule_one(second, 1);
        assert!(matches!(&actions[..], [Action::Failed { reason: "Unschedulable", .. }]), "{actions:?}");
        // A status-only update of the in-flight pod keeps the assumption.
        let mut status_only = cpu("600m");
        merge(&mut status_only, json!({"status": {"phase": "Pending"}}));
        s.apply_pod(pod("a", status_only), now);
        assert_eq!(s.cluster.node("n").map(|n| n.requested.milli_cpu), Some(600));
        // The watch confirms; then the pod is deleted and `b` is woken.
        let mut bound = cpu("600m");
        merge(&mut bound, json!({"spec": {"nodeName": "n"}}));
        s.apply_pod(pod("a", bound), now);
        assert!(s.assumed.is_empty());
        assert_eq!(s.cluster.node("n").map(|n| n.requested.milli_cpu), Some(600));
        let later = now + Duration::from_secs(5);
        assert!(s.delete_pod("uid-a", later));
        assert_eq!(s.cluster.node("n").map(|n| n.requested.milli_cpu), Some(0));
        assert_eq!(s.queue.pop(later).map(|p| p.name.clone()), Some("b".into()));
    }

    #[test]
    fn failed_binding_releases_the_room() {
        let now = Instant::now();
        let mut s = ready_state();
        Node::apply(node("n", "1"), &mut s, now);
        s.apply_pod(pod("a", cpu("600m")), now);
        let a = s.queue.pop(now).expect("a");
        s.schedule_one(a, 1);
        s.forget_assumed("uid-a", now);
        assert_eq!(s.cluster.node("n").map(|n| n.requested.milli_cpu), Some(0));
        assert!(s.queue.pop(now).is_none(), "backing off");
        assert!(s.queue.pop(now + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn pods_for_other_schedulers_and_terminal_pods_are_ignored() {
        let now = Instant::now();
        let mut s = ready_state();
        s.apply_pod(pod("other", json!({"spec": {"schedulerName": "custom"}})), now);
        s.apply_pod(pod("done", json!({"status": {"phase": "Succeeded"}})), now);
        s.apply_pod(pod("gone", json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}})), now);
        assert!(s.queue.is_empty());
        // Without nodes the attempt is an error, retried after its backoff.
        s.apply_pod(pod("p", json!({})), now);
        let p = s.queue.pop(now).expect("p");
        let actions = s.schedule_one(p, 1);
        assert!(matches!(&actions[..], [Action::Failed { reason: "SchedulerError", .. }]));
        Node::apply(node("n", "1"), &mut s, now);
        assert!(s.queue.pop(now).is_none());
        let p = s.queue.pop(now + Duration::from_secs(2)).expect("retried");
        assert!(matches!(&s.schedule_one(p, 1)[..], [Action::Bind { .. }]));
    }

    #[test]
    fn class_changes_reprioritize() {
        let now = Instant::now();
        let mut s = ready_state();
        s.apply_pod(pod("p", json!({"spec": {"priorityClassName": "high"}})), now);
        assert_eq!(s.pods["uid-p"].priority, 0);
        let class: PriorityClass = serde_json::from_value(json!({"metadata": {"name": "high"}, "value": 1000})).expect("class");
        class.apply(&mut s, now);
        assert_eq!(s.pods["uid-p"].priority, 1000);
        assert_eq!(s.queue.pop(now).map(|p| p.priority), Some(1000));
    }

    /// Decisions per second on 5,000 nodes, including assuming each pod; API calls excluded.
    /// `cargo test --release -p scheduler throughput -- --ignored --nocapture`
    #[test]
    #[ignore = "measures throughput; run explicitly in release mode"]
    fn throughput_on_5000_nodes() {
        let now = Instant::now();
        let mut s = ready_state();
        for i in 0..5000 {
            let n: Node = serde_json::from_value(json!({
                "metadata": {"name": format!("node-{i:04}"), "labels": {"kubernetes.io/hostname": format!("node-{i:04}"), "zone": format!("zone-{}", i % 10)}},
                "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"}},
            }))
            .expect("node");
            Node::apply(n, &mut s, now);
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut run = |label: &str, count: usize, extra: Value| {
            for i in 0..count {
                let mut p = json!({"metadata": {"labels": {"app": label}}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}});
                merge(&mut p, extra.clone());
                s.apply_pod(pod(&format!("{label}-{i}"), p), now);
            }
            let start = Instant::now();
            let mut bound = 0;
            while let Some(p) = s.queue.pop(now) {
                bound += s.schedule_one(p, threads).iter().filter(|a| matches!(a, Action::Bind { .. })).count();
            }
            let elapsed = start.elapsed();
            eprintln!("{label}: {bound} pods in {elapsed:?}: {:.0} pods/s", bound as f64 / elapsed.as_secs_f64());
            assert_eq!(bound, count);
        };
        run("plain", 20_000, json!({}));
        run(
            "spread",
            2_000,
            json!({"spec": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}]}}),
        );
        run(
            "anti",
            2_000,
            json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "anti"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}),
        );
    }
}
