//! Local-path storage on this node, as k3s's local-path-provisioner with one provisioner per node
//! (external-provisioner's distributed mode): claims of a `berth.dev/local-path` class whose pod
//! the scheduler put on this node get a PersistentVolume for `DATA/agent/storage/
//! pvc-<uid>_<namespace>_<name>`, pinned to this node and already pointing at the claim (the
//! PersistentVolume controller binds the two). A Released volume under the Delete policy has its
//! directory removed here, then its object deleted.
//!
//! Also what pods' `persistentVolumeClaim` volumes resolve to: the claim's bound volume's path
//! (local or hostPath), created on first use for volumes provisioned here.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use controllers::cache::Cache;
use controllers::persistentvolume::{ANN_PROVISIONED_BY, ANN_SELECTED_NODE, ANN_STORAGE_PROVISIONER};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use crate::pods::Context;

pub const PROVISIONER: &str = "berth.dev/local-path";
/// Which node's agent provisioned (and cleans up) a volume.
pub const ANN_NODE: &str = "berth.dev/local-path-node";
const RESYNC: Duration = Duration::from_secs(10);

/// `DATA/agent/storage`, next to the agent's `pods` directory.
pub fn storage_dir(ctx: &Context) -> PathBuf {
    ctx.pods_dir.parent().unwrap_or(&ctx.pods_dir).join("storage")
}

/// The directory of a claim's volume, named as local-path-provisioner names it.
fn volume_dir(base: &Path, volume: &str, claim: &PersistentVolumeClaim) -> PathBuf {
    base.join(format!("{volume}_{}_{}", claim.namespace().unwrap_or_default(), claim.name_any()))
}

fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

fn volume_path(volume: &PersistentVolume) -> Option<&str> {
    let spec = volume.spec.as_ref()?;
    spec.local.as_ref().map(|l| l.path.as_str()).or_else(|| spec.host_path.as_ref().map(|h| h.path.as_str()))
}

fn create_world_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // As local-path-provisioner: any container user may write to its volume.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
}

/// The host path of each `persistentVolumeClaim` volume of `pod`, by claim name, or why there is
/// none yet (the pod waits, retrying).
pub async fn claim_paths(ctx: &Context, pod: &Pod) -> BTreeMap<String, Result<PathBuf, String>> {
    let namespace = pod.namespace().unwrap_or_default();
    let mut paths = BTreeMap::new();
    let names = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone()));
    for name in names {
        let path = resolve_claim(ctx, &namespace, &name).await;
        paths.insert(name, path);
    }
    paths
}

async fn resolve_claim(ctx: &Context, namespace: &str, name: &str) -> Result<PathBuf, String> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let claim = claims.get_opt(name).await.map_err(|e| format!("getting persistentvolumeclaim \"{name}\": {e}"))?.ok_or_else(|| format!("persistentvolumeclaim \"{name}\" not found"))?;
    let volume_name = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
    let phase = claim.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    if volume_name.is_empty() || phase != "Bound" {
        return Err(format!("PVC {namespace}/{name} has non-bound phase ({phase:?}) or empty pvc.Spec.VolumeName ({volume_name:?})"));
    }
    let volume = Api::<PersistentVolume>::all(ctx.client.clone()).get_opt(&volume_name).await.map_err(|e| format!("getting persistentvolume \"{volume_name}\": {e}"))?.ok_or_else(|| format!("persistentvolume \"{volume_name}\" not found"))?;
    let bound_uid = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).and_then(|r| r.uid.clone());
    if bound_uid != claim.metadata.uid {
        return Err(format!("expected PV {volume_name} to be bound to PVC {namespace}/{name} (uid {}), but it is bound elsewhere", claim.metadata.uid.unwrap_or_default()));
    }
    let path = PathBuf::from(volume_path(&volume).ok_or_else(|| format!("persistentvolume \"{volume_name}\" is neither a local nor a hostPath volume"))?);
    let ours = annotation(&volume.metadata, ANN_PROVISIONED_BY) == Some(PROVISIONER);
    let create = ours || volume.spec.as_ref().and_then(|s| s.host_path.as_ref()).and_then(|h| h.type_.as_deref()) == Some("DirectoryOrCreate");
    if create {
        create_world_writable(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    } else if !path.exists() {
        return Err(format!("path {} of persistentvolume \"{volume_name}\" does not exist", path.display()));
    }
    Ok(path)
}

/// Provisions for this node's claims and cleans up this node's released volumes, on every
/// change and every few seconds.
pub async fn run(ctx: Arc<Context>) {
    let wake = Arc::new(Notify::new());
    let claims = Cache::<PersistentVolumeClaim>::spawn(Api::all(ctx.client.clone()), notifier(&wake));
    let volumes = Cache::<PersistentVolume>::spawn(Api::all(ctx.client.clone()), notifier(&wake));
    claims.synced().await;
    volumes.synced().await;
    let recorder = controllers::events::Recorder::new(ctx.client.clone(), PROVISIONER);
    let base = storage_dir(&ctx);
    loop {
        for claim in claims.all() {
            if wants_volume_here(&claim, &ctx.node_name) {
                let name = format!("pvc-{}", claim.metadata.uid.clone().unwrap_or_default());
                if volumes.get("", &name).is_none()
                    && let Err(error) = provision(&ctx.client, &recorder, &base, &ctx.node_name, &claim, &name).await
                {
                    tracing::warn!(%error, claim = %format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any()), "provisioning a local-path volume failed");
                    recorder.warning(claim.as_ref(), "ProvisioningFailed", format!("failed to provision volume with StorageClass {:?}: {error}", claim.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default()));
                }
            }
        }
        for volume in volumes.all() {
            if releasable_here(&volume, &ctx.node_name)
                && let Err(error) = delete_volume(&ctx.client, &base, &volume).await
            {
                tracing::warn!(%error, volume = %volume.name_any(), "deleting a released local-path volume failed");
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

fn notifier<K>(wake: &Arc<Notify>) -> controllers::cache::OnChange<K> {
    let wake = wake.clone();
    Box::new(move |_, _| wake.notify_one())
}

/// An unbound live claim handed to our provisioner with this node selected.
fn wants_volume_here(claim: &PersistentVolumeClaim, node: &str) -> bool {
    claim.metadata.deletion_timestamp.is_none()
        && annotation(&claim.metadata, ANN_STORAGE_PROVISIONER) == Some(PROVISIONER)
        && annotation(&claim.metadata, ANN_SELECTED_NODE) == Some(node)
        && claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).unwrap_or("").is_empty()
}

fn releasable_here(volume: &PersistentVolume, node: &str) -> bool {
    annotation(&volume.metadata, ANN_PROVISIONED_BY) == Some(PROVISIONER)
        && annotation(&volume.metadata, ANN_NODE) == Some(node)
        && volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released")
        && volume.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete")
}

async fn provision(client: &Client, recorder: &controllers::events::Recorder, base: &Path, node: &str, claim: &PersistentVolumeClaim, name: &str) -> Result<(), String> {
    let spec = claim.spec.clone().unwrap_or_default();
    let class_name = spec.storage_class_name.clone().unwrap_or_default();
    let class = Api::<StorageClass>::all(client.clone()).get_opt(&class_name).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("storageclass.storage.k8s.io \"{class_name}\" not found"))?;
    if class.provisioner != PROVISIONER {
        return Ok(());
    }
    if spec.volume_mode.as_deref().is_some_and(|m| m != "Filesystem") {
        return Err("only the Filesystem volume mode is supported".into());
    }
    let storage = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).map(|q| q.0.clone()).ok_or("the claim requests no storage size")?;
    recorder.normal(claim, "Provisioning", format!("External provisioner is provisioning volume for claim \"{}/{}\"", claim.namespace().unwrap_or_default(), claim.name_any()));
    let dir = volume_dir(base, name, claim);
    create_world_writable(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let volume = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {ANN_PROVISIONED_BY: PROVISIONER, ANN_NODE: node}},
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": spec.access_modes,
            "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            "storageClassName": class_name,
            "volumeMode": "Filesystem",
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": claim.namespace(), "name": claim.name_any(), "uid": claim.metadata.uid, "resourceVersion": claim.resource_version()},
            "local": {"path": dir.display().to_string()},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
        },
    });
    let volume: PersistentVolume = serde_json::from_value(volume).map_err(|e| e.to_string())?;
    match Api::<PersistentVolume>::all(client.clone()).create(&PostParams::default(), &volume).await {
        Ok(_) => {
            recorder.normal(claim, "ProvisioningSucceeded", format!("Successfully provisioned volume {name}"));
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

/// Removes the volume's directory, then the volume. Only directories this provisioner made (under
/// the storage directory, named `pvc-*`) are ever removed.
async fn delete_volume(client: &Client, base: &Path, volume: &PersistentVolume) -> Result<(), String> {
    if let Some(path) = volume_path(volume).map(PathBuf::from) {
        let inside = path.parent() == Some(base) && path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("pvc-"));
        if !inside {
            return Err(format!("refusing to remove {}: not a local-path volume directory under {}", path.display(), base.display()));
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(volume = %volume.name_any(), dir = %path.display(), "removed a released local-path volume"),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(format!("removing {}: {error}", path.display())),
        }
    }
    let params = DeleteParams { preconditions: Some(Preconditions { uid: volume.metadata.uid.clone(), resource_version: None }), ..Default::default() };
    match Api::<PersistentVolume>::all(client.clone()).delete(&volume.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_nodes_released_deletable_volumes_are_cleaned() {
        let volume = |node: &str, phase: &str, policy: &str| -> PersistentVolume {
            serde_json::from_value(json!({
                "metadata": {"name": "pvc-1", "annotations": {ANN_PROVISIONED_BY: PROVISIONER, ANN_NODE: node}},
                "spec": {"persistentVolumeReclaimPolicy": policy, "local": {"path": "/x/pvc-1_default_data"}},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        assert!(releasable_here(&volume("n1", "Released", "Delete"), "n1"));
        assert!(!releasable_here(&volume("n2", "Released", "Delete"), "n1"));
        assert!(!releasable_here(&volume("n1", "Bound", "Delete"), "n1"));
        assert!(!releasable_here(&volume("n1", "Released", "Retain"), "n1"));
    }

    #[test]
    fn claims_are_ours_once_the_scheduler_picked_this_node() {
        let claim = |node: &str, provisioner: &str, volume: Option<&str>| -> PersistentVolumeClaim {
            serde_json::from_value(json!({
                "metadata": {"name": "data", "namespace": "default", "uid": "u", "annotations": {ANN_SELECTED_NODE: node, ANN_STORAGE_PROVISIONER: provisioner}},
                "spec": {"volumeName": volume},
            }))
            .unwrap()
        };
        assert!(wants_volume_here(&claim("n1", PROVISIONER, None), "n1"));
        assert!(!wants_volume_here(&claim("n2", PROVISIONER, None), "n1"));
        assert!(!wants_volume_here(&claim("n1", "other", None), "n1"));
        assert!(!wants_volume_here(&claim("n1", PROVISIONER, Some("pvc-u")), "n1"));
        assert_eq!(volume_dir(Path::new("/d"), "pvc-u", &claim("n1", PROVISIONER, None)), PathBuf::from("/d/pvc-u_default_data"));
    }
}
