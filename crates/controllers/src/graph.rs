//! A live view of every object in the cluster: identity, owners, finalizers, deletion state.
//! Built from one watcher per listable resource (rediscovered periodically so custom resources
//! join), it is what the garbage collector and namespace controller reason over instead of
//! listing the API on every decision.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource};
use kube::discovery::{Discovery, Scope, verbs};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::core::DynamicResourceScope;
use kube::runtime::{WatchStreamExt, watcher};
use serde::{Deserialize, Deserializer};
use tokio::sync::watch;

/// What the graph keeps of one object.
#[derive(Clone, Debug)]
pub struct Node {
    pub resource: Arc<ApiResource>,
    pub namespaced: bool,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub owners: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    pub finalizers: Vec<String>,
    pub deleting: bool,
    pub resource_version: String,
}

impl Node {
    pub fn is_namespace(&self) -> bool {
        self.resource.api_version == "v1" && self.resource.kind == "Namespace"
    }
}

/// The nodes plus the indexes controllers query, all kept up to date on every change so a pass
/// costs what changed, not the size of the cluster.
#[derive(Default)]
struct State {
    nodes: HashMap<String, Node>,
    /// Owner uid -> uids of the objects that name it in ownerReferences.
    dependents: HashMap<String, HashSet<String>>,
    /// Uids of objects with a deletionTimestamp.
    deleting: HashSet<String>,
    /// Uids the garbage collector should look at: objects whose owners changed or went away.
    dirty: HashSet<String>,
    /// (apiVersion, kind) -> resource, for every resource watched.
    kinds: HashMap<(String, String), (Arc<ApiResource>, bool)>,
    /// Resources whose watcher has delivered its initial list.
    synced: HashSet<String>,
    watched: HashSet<String>,
}

impl State {
    fn insert(&mut self, node: Node) {
        self.remove(&node.uid.clone(), false);
        for owner in &node.owners {
            self.dependents.entry(owner.uid.clone()).or_default().insert(node.uid.clone());
        }
        if node.deleting {
            self.deleting.insert(node.uid.clone());
        }
        if !node.owners.is_empty() {
            self.dirty.insert(node.uid.clone());
        }
        self.nodes.insert(node.uid.clone(), node);
    }

    /// Forgets `uid`; when it is really gone (`gone`), its dependents need a look.
    fn remove(&mut self, uid: &str, gone: bool) {
        let Some(old) = self.nodes.remove(uid) else { return };
        for owner in &old.owners {
            if let Some(set) = self.dependents.get_mut(&owner.uid) {
                set.remove(uid);
                if set.is_empty() {
                    self.dependents.remove(&owner.uid);
                }
            }
        }
        self.deleting.remove(uid);
        if gone {
            self.dirty.remove(uid);
            if let Some(deps) = self.dependents.get(uid) {
                self.dirty.extend(deps.iter().cloned());
            }
        }
    }
}

#[derive(Clone)]
pub struct Graph {
    state: Arc<Mutex<State>>,
    /// Bumped on every change; each controller waits on its own receiver.
    changes: watch::Sender<u64>,
}

/// Events are never owners or owned in practice, and there are more of them than of anything
/// else (upstream's garbage collector ignores them too); the namespace controller deletes them
/// by collection instead.
fn ignored(ar: &ApiResource) -> bool {
    ar.plural == "events" && (ar.group.is_empty() || ar.group == "events.k8s.io")
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
                                if !caps.supports_operation(verbs::WATCH) || !caps.supports_operation(verbs::DELETE) || ignored(&ar) {
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
        let ar = Arc::new(ar);
        {
            let mut state = self.lock();
            if !state.watched.insert(key.clone()) {
                return;
            }
            state.kinds.insert((ar.api_version.clone(), ar.kind.clone()), (ar.clone(), namespaced));
        }
        let g = self.clone();
        tokio::spawn(async move {
            let api: Api<GraphObject> = Api::all_with(client, &*ar);
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
                        if let Some(node) = to_node(&ar, namespaced, &obj.metadata) {
                            fresh.insert(node.uid.clone(), node);
                        }
                    }
                    watcher::Event::InitDone => {
                        let stale: Vec<String> = state.nodes.values().filter(|n| Arc::ptr_eq(&n.resource, &ar) && !fresh.contains_key(&n.uid)).map(|n| n.uid.clone()).collect();
                        for uid in stale {
                            state.remove(&uid, true);
                        }
                        for (_, node) in fresh.drain() {
                            state.insert(node);
                        }
                        state.synced.insert(key.clone());
                    }
                    watcher::Event::Apply(obj) => {
                        if let Some(node) = to_node(&ar, namespaced, &obj.metadata) {
                            state.insert(node);
                        }
                    }
                    watcher::Event::Delete(obj) => {
                        if let Some(uid) = obj.metadata.uid.as_ref() {
                            state.remove(uid, true);
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

    pub fn contains_uid(&self, uid: &str) -> bool {
        self.lock().nodes.contains_key(uid)
    }

    /// Objects being deleted.
    pub fn deleting(&self) -> Vec<Node> {
        let state = self.lock();
        state.deleting.iter().filter_map(|uid| state.nodes.get(uid).cloned()).collect()
    }

    /// Objects whose ownerReferences name `uid`.
    pub fn dependents_of(&self, uid: &str) -> Vec<Node> {
        let state = self.lock();
        state.dependents.get(uid).map(|deps| deps.iter().filter_map(|d| state.nodes.get(d).cloned()).collect()).unwrap_or_default()
    }

    /// Takes the objects whose owners changed or went away since the last call.
    pub fn take_dirty(&self) -> Vec<Node> {
        let mut state = self.lock();
        let dirty = std::mem::take(&mut state.dirty);
        dirty.into_iter().filter_map(|uid| state.nodes.get(&uid).cloned()).collect()
    }

    /// Asks for another look at `uid` on the next pass (after a failed attempt).
    pub fn mark_dirty(&self, uid: &str) {
        self.lock().dirty.insert(uid.to_string());
    }

    /// The watched resource serving `kind` in `api_version`, and whether it is namespaced.
    pub fn resource_for(&self, api_version: &str, kind: &str) -> Option<(Arc<ApiResource>, bool)> {
        self.lock().kinds.get(&(api_version.to_string(), kind.to_string())).cloned()
    }

    /// Every object in namespace `ns` (a scan: only for namespaces being deleted).
    pub fn in_namespace(&self, ns: &str) -> Vec<Node> {
        self.lock().nodes.values().filter(|n| n.namespaced && n.namespace.as_deref() == Some(ns)).cloned().collect()
    }
}

/// An object as the graph decodes it: the metadata it keeps, and nothing else built. Every pod
/// change passes through here; its managedFields, labels and spec are skipped unparsed.
#[derive(Clone, Debug, Deserialize)]
struct GraphObject {
    #[serde(default, deserialize_with = "graph_meta")]
    metadata: ObjectMeta,
}

fn graph_meta<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        #[serde(default)]
        deletion_timestamp: Option<Time>,
        #[serde(default)]
        finalizers: Option<Vec<String>>,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        namespace: Option<String>,
        #[serde(default)]
        owner_references: Option<Vec<OwnerReference>>,
        #[serde(default)]
        resource_version: Option<String>,
        #[serde(default)]
        uid: Option<String>,
    }
    let meta = Option::<Meta>::deserialize(deserializer)?;
    Ok(meta.map_or_else(ObjectMeta::default, |meta| ObjectMeta {
        deletion_timestamp: meta.deletion_timestamp,
        finalizers: meta.finalizers,
        name: meta.name,
        namespace: meta.namespace,
        owner_references: meta.owner_references,
        resource_version: meta.resource_version,
        uid: meta.uid,
        ..ObjectMeta::default()
    }))
}

impl kube::Resource for GraphObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn kind(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn to_node(ar: &Arc<ApiResource>, namespaced: bool, meta: &ObjectMeta) -> Option<Node> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_decodes_only_the_metadata_it_keeps() {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                "labels": {"app": "a"}, "finalizers": ["f"], "deletionTimestamp": "2026-01-01T00:00:00Z",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "o", "controller": true}],
                "managedFields": [{"manager": "m", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        });
        let object: GraphObject = serde_json::from_value(pod).expect("decodes");
        let ar = Arc::new(ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()));
        let node = to_node(&ar, true, &object.metadata).expect("a node");
        assert_eq!((node.name.as_str(), node.namespace.as_deref(), node.uid.as_str(), node.resource_version.as_str()), ("p", Some("ns"), "u", "7"));
        assert_eq!((node.finalizers, node.deleting, node.owners[0].name.as_str()), (vec!["f".to_string()], true, "rs"));
        assert!(object.metadata.managed_fields.is_none() && object.metadata.labels.is_none());
        let bare: GraphObject = serde_json::from_value(serde_json::json!({"metadata": null})).expect("null metadata decodes");
        assert!(to_node(&ar, true, &bare.metadata).is_none());
    }
}
