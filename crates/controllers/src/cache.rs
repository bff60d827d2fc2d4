//! An informer: a watch-fed, in-memory copy of one resource with the indexes controllers query
//! (by namespace, by controlling owner), and a callback per change that feeds work queues.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

type Key = (String, String);

pub struct Cache<K> {
    state: Arc<RwLock<State<K>>>,
    synced: watch::Receiver<bool>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone(), synced: self.synced.clone() }
    }
}

struct State<K> {
    /// Namespace, then name: lookups borrow the caller's strings instead of building a key.
    by_namespace: HashMap<String, HashMap<String, Arc<K>>>,
    by_controller: HashMap<String, HashSet<Key>>,
    /// Names per namespace of objects with no controlling owner (what controllers may adopt),
    /// so an adoption check does not scan the whole namespace.
    orphans: HashMap<String, HashSet<String>>,
}

impl<K> Default for State<K> {
    fn default() -> Self {
        Self { by_namespace: HashMap::new(), by_controller: HashMap::new(), orphans: HashMap::new() }
    }
}

fn key_of<K: Resource>(obj: &K) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

fn controller_uid<K: Resource>(obj: &K) -> Option<String> {
    obj.meta().owner_references.as_ref()?.iter().find(|o| o.controller == Some(true)).map(|o| o.uid.clone())
}

impl<K: Resource> State<K> {
    fn insert(&mut self, obj: Arc<K>) -> Option<Arc<K>> {
        let key = key_of(obj.as_ref());
        let old = self.remove(&key);
        match controller_uid(obj.as_ref()) {
            Some(uid) => {
                self.by_controller.entry(uid).or_default().insert(key.clone());
            }
            None => {
                self.orphans.entry(key.0.clone()).or_default().insert(key.1.clone());
            }
        }
        self.by_namespace.entry(key.0).or_default().insert(key.1, obj);
        old
    }

    fn remove(&mut self, key: &Key) -> Option<Arc<K>> {
        let names = self.by_namespace.get_mut(&key.0)?;
        let old = names.remove(&key.1)?;
        if names.is_empty() {
            self.by_namespace.remove(&key.0);
        }
        match controller_uid(old.as_ref()) {
            Some(uid) => {
                if let Some(keys) = self.by_controller.get_mut(&uid) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.by_controller.remove(&uid);
                    }
                }
            }
            None => {
                if let Some(names) = self.orphans.get_mut(&key.0) {
                    names.remove(&key.1);
                    if names.is_empty() {
                        self.orphans.remove(&key.0);
                    }
                }
            }
        }
        Some(old)
    }

    fn get(&self, namespace: &str, name: &str) -> Option<&Arc<K>> {
        self.by_namespace.get(namespace)?.get(name)
    }
}

/// What changed: `(old, new)`; `new` is `None` for a delete.
pub type OnChange<K> = Box<dyn Fn(Option<&K>, Option<&K>) + Send + Sync>;

/// The informers of one controller manager run, one per type and URL (client-go's shared
/// informer factory): every controller asking for pods gets the same cache, so a pod is held once, not once per
/// controller (typed objects are large: a copy per controller cost ~15 KB per pod each).
type Handler<K> = Arc<dyn Fn(Option<&K>, Option<&K>) + Send + Sync>;
type Handlers<K> = Arc<RwLock<Vec<Handler<K>>>>;

struct SharedEntry<K> {
    cache: Cache<K>,
    handlers: Handlers<K>,
}

type RegistryKey = (u64, std::any::TypeId, String);
type Registry = std::sync::Mutex<HashMap<RegistryKey, Box<dyn std::any::Any + Send + Sync>>>;

fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

tokio::task_local! {
    /// Which set of shared informers `Cache::spawn` joins: one per [`with_shared_informers`] call.
    static SCOPE: u64;
}

/// Runs `work` with its own set of shared informers: every `Cache::spawn` made directly inside it
/// (not in tasks it spawns) shares one cache per resource, and when `work` ends or is dropped the
/// set is forgotten, so a later run (a new leader term) starts from fresh watches instead of
/// caches whose tasks died with the previous run. Outside any such scope nothing is shared.
pub async fn with_shared_informers<F: std::future::Future>(work: F) -> F::Output {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    struct Forget(u64);
    impl Drop for Forget {
        fn drop(&mut self) {
            registry().lock().unwrap_or_else(|e| e.into_inner()).retain(|key, _| key.0 != self.0);
        }
    }
    let scope = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _forget = Forget(scope);
    SCOPE.scope(scope, work).await
}

impl<K> Cache<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    /// The process's informer for `api` (started on first use); `on_change` runs after the cache
    /// holds each change, and first for every object already held.
    pub fn spawn(api: Api<K>, on_change: OnChange<K>) -> Self {
        let Ok(scope) = SCOPE.try_with(|scope| *scope) else {
            return Self::spawn_one(api, on_change);
        };
        let key = (scope, std::any::TypeId::of::<K>(), api.resource_url().to_string());
        let handler: Handler<K> = Arc::from(on_change);
        let mut shared = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = shared.get(&key).and_then(|entry| entry.downcast_ref::<SharedEntry<K>>()) {
            entry.handlers.write().unwrap_or_else(|e| e.into_inner()).push(handler.clone());
            let cache = entry.cache.clone();
            drop(shared);
            // A late subscriber first hears of what is already there (queues dedupe any overlap).
            for obj in cache.all() {
                handler(None, Some(obj.as_ref()));
            }
            return cache;
        }
        let handlers: Handlers<K> = Arc::new(RwLock::new(vec![handler]));
        let fan_out = handlers.clone();
        let cache = Self::spawn_one(
            api,
            Box::new(move |old, new| {
                let current: Vec<_> = fan_out.read().unwrap_or_else(|e| e.into_inner()).clone();
                for handler in current {
                    handler(old, new);
                }
            }),
        );
        shared.insert(key, Box::new(SharedEntry { cache: cache.clone(), handlers }));
        cache
    }

    fn spawn_one(api: Api<K>, on_change: OnChange<K>) -> Self {
        let state: Arc<RwLock<State<K>>> = Arc::default();
        let (synced_tx, synced) = watch::channel(false);
        let cache = Self { state: state.clone(), synced };
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
            let mut fresh: Vec<Arc<K>> = Vec::new();
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(e) => e,
                    Err(error) => {
                        tracing::debug!(%error, "informer watch error; retrying");
                        continue;
                    }
                };
                match event {
                    watcher::Event::Init => fresh.clear(),
                    watcher::Event::InitApply(obj) => fresh.push(Arc::new(slim(obj))),
                    watcher::Event::InitDone => {
                        let mut changes = Vec::new();
                        {
                            let mut st = state.write().unwrap_or_else(|e| e.into_inner());
                            let keep: HashSet<Key> = fresh.iter().map(|o| key_of(o.as_ref())).collect();
                            let gone: Vec<Key> = st
                                .by_namespace
                                .iter()
                                .flat_map(|(ns, names)| names.keys().map(move |name| (ns.clone(), name.clone())))
                                .filter(|k| !keep.contains(k))
                                .collect();
                            for key in gone {
                                if let Some(old) = st.remove(&key) {
                                    changes.push((Some(old), None));
                                }
                            }
                            for obj in fresh.drain(..) {
                                let old = st.insert(obj.clone());
                                changes.push((old, Some(obj)));
                            }
                        }
                        let _ = synced_tx.send(true);
                        for (old, new) in changes {
                            on_change(old.as_deref(), new.as_deref());
                        }
                    }
                    watcher::Event::Apply(obj) => {
                        let obj = Arc::new(slim(obj));
                        let old = state.write().unwrap_or_else(|e| e.into_inner()).insert(obj.clone());
                        on_change(old.as_deref(), Some(obj.as_ref()));
                    }
                    watcher::Event::Delete(obj) => {
                        let removed = state.write().unwrap_or_else(|e| e.into_inner()).remove(&key_of(&obj));
                        on_change(removed.as_deref().or(Some(&obj)), None);
                    }
                }
            }
        });
        cache
    }
}

/// Drops what no controller reads before an object is cached, as upstream's informers' transform
/// does: managedFields are often the largest part of an object (writes that omit them keep the
/// stored ones, so a cached object can still be sent back).
fn slim<K: Resource + 'static>(mut obj: K) -> K {
    obj.meta_mut().managed_fields = None;
    let any = &mut obj as &mut dyn std::any::Any;
    if let Some(pod) = any.downcast_mut::<crate::cached_pod::CachedPod>() {
        pod.shrink();
    } else if let Some(pod) = any.downcast_mut::<Pod>() {
        slim_pod(pod);
    }
    obj
}

/// A typed pod costs ~17 KB in memory for ~2.5 KB of JSON (measured with a counting allocator
/// on a Deployment's pod), most of it in parts no controller reads: the service account's
/// projected volume and the containers' mounts, commands and probes. Kept: everything in status,
/// labels and annotations, owners, tolerations, claim volumes, container names, images, ports
/// and resources. Controllers never write a cached pod back whole (they patch), so nothing
/// dropped here can be lost.
pub fn slim_pod(pod: &mut Pod) {
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    if let Some(status) = pod.status.as_mut() {
        shrink(&mut status.conditions);
        shrink(&mut status.container_statuses);
        shrink(&mut status.init_container_statuses);
        shrink(&mut status.pod_ips);
        shrink(&mut status.host_ips);
    }
    let Some(spec) = pod.spec.as_mut() else { return };
    if let Some(volumes) = spec.volumes.as_mut() {
        volumes.retain(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some());
    }
    shrink(&mut spec.volumes);
    shrink(&mut spec.tolerations);
    spec.containers.shrink_to_fit();
    shrink(&mut spec.init_containers);
    for container in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
        container.env = None;
        container.env_from = None;
        container.command = None;
        container.args = None;
        container.volume_mounts = None;
        container.volume_devices = None;
        container.liveness_probe = None;
        container.readiness_probe = None;
        container.startup_probe = None;
        container.lifecycle = None;
        container.security_context = None;
        container.termination_message_path = None;
        container.termination_message_policy = None;
        container.working_dir = None;
    }
    spec.ephemeral_containers = None;
}

/// Gives back what a list does not use: JSON decoding grows vectors by doubling, and typed
/// elements are large (a Volume is 3.2 KB, a Container 2.1 KB, a PodCondition 160 B), so the
/// spare capacity of a pod's lists cost ~4 KB per cached pod; an emptied list is dropped.
pub fn shrink<T>(list: &mut Option<Vec<T>>) {
    match list {
        Some(items) if items.is_empty() => *list = None,
        Some(items) => items.shrink_to_fit(),
        None => {}
    }
}

impl<K: Resource> Cache<K> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State<K>> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the initial list has arrived.
    pub async fn synced(&self) {
        let mut rx = self.synced.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.read().get(namespace, name).cloned()
    }

    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.read().by_namespace.get(namespace).map(|names| names.values().cloned().collect()).unwrap_or_default()
    }

    /// Objects whose controlling ownerReference has `uid`.
    pub fn controlled_by(&self, uid: &str) -> Vec<Arc<K>> {
        let state = self.read();
        let Some(keys) = state.by_controller.get(uid) else { return vec![] };
        keys.iter().filter_map(|(ns, name)| state.get(ns, name).cloned()).collect()
    }

    /// Objects in `namespace` with no controlling ownerReference.
    pub fn orphans_in(&self, namespace: &str) -> Vec<Arc<K>> {
        let state = self.read();
        let Some(names) = state.orphans.get(namespace) else { return vec![] };
        names.iter().filter_map(|name| state.get(namespace, name).cloned()).collect()
    }

    pub fn all(&self) -> Vec<Arc<K>> {
        self.read().by_namespace.values().flat_map(|names| names.values().cloned()).collect()
    }
}
