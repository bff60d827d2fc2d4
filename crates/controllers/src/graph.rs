//! A live view of every object in the cluster: identity, owners, finalizers, deletion state.
//! Built from one watcher per listable resource (rediscovered periodically so custom resources
//! join), it is what the garbage collector and namespace controller reason over instead of
//! listing the API on every decision.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// What the graph keeps of one object.
#[derive(Clone, Debug)]
pub struct Node {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub owners: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    pub finalizers: Vec<String>,
    pub deleting: bool,
    pub resource_version: String,
}

#[derive(Default)]
struct State {
    nodes: HashMap<String, Node>,
    /// Resources whose watcher has delivered its initial list.
    synced: HashSet<String>,
    watched: HashSet<String>,
}

#[derive(Clone)]
pub struct Graph {
    state: Arc<Mutex<State>>,
    /// Bumped on every change; each controller waits on its own receiver.
    changes: watch::Sender<u64>,
}

fn resource_key(ar: &ApiResource) -> String {
    format!("{}/{}", ar.api_version, ar.plural)
}

impl Graph {
    /// Starts watching every resource now and every `rediscover` interval.
    pub fn start(client: kube::Client, rediscover: Duration) -> Self {
        let graph = Graph { state: Arc::default(), changes: watch::Sender::new(0) };
        let g = graph.clone();
        tokio::spawn(async move {
            loop {
                match Discovery::new(client.clone()).run().await {
                    Ok(discovery) => {
                        for group in discovery.groups() {
                            for (ar, caps) in group.recommended_resources() {
                                if !caps.supports_operation(verbs::WATCH) || !caps.supports_operation(verbs::DELETE) {
                                    continue;
                                }
                                g.watch(client.clone(), ar, caps.scope == Scope::Namespaced);
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "discovery failed"),
                }
                tokio::time::sleep(rediscover).await;
            }
        });
        graph
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watch(&self, client: kube::Client, ar: ApiResource, namespaced: bool) {
        let key = resource_key(&ar);
        if !self.lock().watched.insert(key.clone()) {
            return;
        }
        let g = self.clone();
        tokio::spawn(async move {
            let api: Api<DynamicObject> = Api::all_with(client, &ar);
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
            let mut fresh: HashMap<String, Node> = HashMap::new();
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(e) => e,
                    Err(error) => {
                        tracing::debug!(%error, resource = %key, "watch error; retrying");
                        continue;
                    }
                };
                let mut state = g.lock();
                match event {
                    watcher::Event::Init => fresh.clear(),
                    watcher::Event::InitApply(obj) => {
                        if let Some(node) = to_node(&ar, namespaced, &obj) {
                            fresh.insert(node.uid.clone(), node);
                        }
                    }
                    watcher::Event::InitDone => {
                        state.nodes.retain(|_, n| resource_key(&n.resource) != key);
                        state.nodes.extend(fresh.drain());
                        state.synced.insert(key.clone());
                    }
                    watcher::Event::Apply(obj) => {
                        if let Some(node) = to_node(&ar, namespaced, &obj) {
                            state.nodes.insert(node.uid.clone(), node);
                        }
                    }
                    watcher::Event::Delete(obj) => {
                        if let Some(uid) = obj.metadata.uid.as_ref() {
                            state.nodes.remove(uid);
                        }
                    }
                }
                drop(state);
                g.changes.send_modify(|n| *n += 1);
            }
        });
    }

    /// Runs `pass` after every burst of changes, and at least every `tick`, forever.
    pub async fn on_changes<F: std::future::Future<Output = ()>>(&self, tick: Duration, mut pass: impl FnMut() -> F) {
        let mut changes = self.subscribe();
        loop {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(tick) => {}
            }
            // Let a burst of changes settle into one pass.
            tokio::time::sleep(Duration::from_millis(100)).await;
            pass().await;
        }
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// True once every resource watched so far has listed its objects.
    pub fn synced(&self) -> bool {
        let state = self.lock();
        !state.watched.is_empty() && state.watched.iter().all(|k| state.synced.contains(k))
    }

    pub fn snapshot(&self) -> Vec<Node> {
        self.lock().nodes.values().cloned().collect()
    }

    pub fn contains_uid(&self, uid: &str) -> bool {
        self.lock().nodes.contains_key(uid)
    }
}

fn to_node(ar: &ApiResource, namespaced: bool, obj: &DynamicObject) -> Option<Node> {
    let meta = &obj.metadata;
    Some(Node {
        resource: ar.clone(),
        namespaced,
        namespace: meta.namespace.clone(),
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        owners: meta.owner_references.clone().unwrap_or_default(),
        finalizers: meta.finalizers.clone().unwrap_or_default(),
        deleting: meta.deletion_timestamp.is_some(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
    })
}
