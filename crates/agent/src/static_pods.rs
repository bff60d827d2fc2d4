//! Static pods: Pod manifests in a directory on the node (`--pod-manifest-path`, by default
//! `DATA/agent/manifests`) run on this node without a scheduler. As the kubelet does, each file
//! becomes a mirror pod `NAME-NODE` in the API, annotated with `kubernetes.io/config.mirror` and
//! owned by the Node; a changed file replaces the pod, a removed file deletes it, and a deleted
//! mirror pod comes back.
//!
//! Unlike the kubelet, the agent runs static pods through their mirror pods, so they need the
//! API server to be reachable (a control plane that is itself made of static pods is not the
//! use case here).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};

use crate::pods::Context;

pub const ANNOTATION_SOURCE: &str = "kubernetes.io/config.source";
pub const ANNOTATION_HASH: &str = "kubernetes.io/config.hash";
pub const ANNOTATION_MIRROR: &str = "kubernetes.io/config.mirror";
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// One manifest, ready to be a mirror pod.
#[derive(Debug, Clone)]
struct StaticPod {
    pod: Pod,
    hash: String,
}

fn content_hash(text: &str) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Reads the manifests; files that do not parse are reported and skipped, as the kubelet does.
fn read_manifests(dir: &Path, node: &str) -> BTreeMap<(String, String), StaticPod> {
    let mut pods = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return pods };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json")).collect();
    paths.sort();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let parsed: Result<Pod, String> = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            serde_saphyr::from_str(&text).map_err(|e| e.to_string())
        };
        let mut pod = match parsed {
            Ok(pod) => pod,
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "skipping a static pod manifest that does not parse");
                continue;
            }
        };
        let Some(name) = pod.metadata.name.clone().filter(|n| !n.is_empty()) else {
            tracing::warn!(file = %path.display(), "skipping a static pod manifest without metadata.name");
            continue;
        };
        let namespace = pod.metadata.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
        let hash = content_hash(&text);
        let mirror_name = format!("{name}-{node}");
        pod.metadata.name = Some(mirror_name.clone());
        pod.metadata.namespace = Some(namespace.clone());
        pod.metadata.resource_version = None;
        pod.metadata.uid = None;
        let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert(ANNOTATION_SOURCE.into(), "file".into());
        annotations.insert(ANNOTATION_HASH.into(), hash.clone());
        annotations.insert(ANNOTATION_MIRROR.into(), hash.clone());
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(node.to_string());
        }
        pod.status = None;
        pods.insert((namespace, mirror_name), StaticPod { pod, hash });
    }
    pods
}

/// Keeps the mirror pods in step with the manifest directory, forever. Existing mirror pods are
/// read from the agent's own pod cache (the watch of this node's pods), not listed: a list of
/// every pod on the node every few seconds cost the API server and the agent far more than the
/// few mirror pods it was looking for (about 3 MB of decoding per check at 100 pods).
pub async fn run(ctx: Arc<Context>, dir: PathBuf) {
    if let Err(error) = std::fs::create_dir_all(&dir) {
        tracing::warn!(%error, dir = %dir.display(), "cannot create the static pod directory");
    }
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node_name = ctx.node_name.clone();
    loop {
        let wanted = read_manifests(&dir, &node_name);
        let existing: HashMap<(String, String), Arc<Pod>> = ctx
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|p| p.annotations().contains_key(ANNOTATION_MIRROR))
            .map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), p.clone()))
            .collect();
        for (key, mirror) in &existing {
            let current = wanted.get(key).map(|s| s.hash.as_str());
            if current != mirror.annotations().get(ANNOTATION_MIRROR).map(String::as_str) && mirror.metadata.deletion_timestamp.is_none() {
                // Removed or changed: the old pod goes (gracefully, through its worker).
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.0);
                if let Err(error) = api.delete(&key.1, &DeleteParams::default()).await {
                    tracing::debug!(%error, pod = %key.1, "deleting a mirror pod");
                }
            }
        }
        let missing: Vec<_> = wanted.iter().filter(|(key, _)| !existing.contains_key(*key)).collect();
        if !missing.is_empty() {
            let owner = nodes.get_opt(&node_name).await.ok().flatten().and_then(|node| {
                Some(OwnerReference { api_version: "v1".into(), kind: "Node".into(), name: node_name.clone(), uid: node.uid()?, controller: Some(true), block_owner_deletion: None })
            });
            for (key, static_pod) in missing {
                let mut pod = static_pod.pod.clone();
                pod.metadata.owner_references = owner.clone().map(|o| vec![o]);
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.0);
                match api.create(&PostParams::default(), &pod).await {
                    Ok(_) => tracing::info!(pod = %key.1, namespace = %key.0, "created a mirror pod for a static pod"),
                    // Already there: the watch has not brought it to the cache yet.
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(error) => tracing::warn!(%error, pod = %key.1, "creating a mirror pod"),
                }
            }
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_mirror_pods_for_this_node() {
        let dir = std::env::temp_dir().join(format!("berth-static-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("web.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: kube-system}\nspec:\n  containers: [{name: c, image: i}]\n").unwrap();
        std::fs::write(dir.join("broken.yaml"), "this: [is not a pod").unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let pods = read_manifests(&dir, "node-a");
        assert_eq!(pods.len(), 1);
        let web = &pods[&("kube-system".to_string(), "web-node-a".to_string())];
        assert_eq!(web.pod.spec.as_ref().unwrap().node_name.as_deref(), Some("node-a"));
        assert_eq!(web.pod.annotations()[ANNOTATION_MIRROR], web.hash);
        assert_eq!(web.pod.annotations()[ANNOTATION_SOURCE], "file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
