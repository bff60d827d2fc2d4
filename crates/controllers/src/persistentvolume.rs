//! The PersistentVolume controller (upstream's pv_controller): binds claims to volumes both ways
//! (`claim.spec.volumeName` and `volume.spec.claimRef`) and keeps their phases (claims Pending,
//! Bound or Lost; volumes Available, Bound, Released or Failed).
//!
//! A claim of a `WaitForFirstConsumer` class waits until the scheduler names its pod's node in
//! the `volume.kubernetes.io/selected-node` annotation; then a matching volume the node can reach
//! is bound, or, if none, the claim is handed to its class's provisioner by the
//! `volume.kubernetes.io/storage-provisioner` annotation (an external provisioner's contract: for
//! `berth.dev/local-path` that is the agent of the selected node, which creates a volume already
//! pointing at the claim, which this controller then binds).
//!
//! Releasing: when a bound volume's claim is gone the volume is Released; under the Delete
//! reclaim policy its provisioner deletes it (upstream's in-tree deleters are gone, so a
//! volume without one is Failed, as upstream reports).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Affinity, Node, NodeAffinity, ObjectReference, PersistentVolume, PersistentVolumeClaim, PodSpec};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::cache::Cache;
use crate::events::Recorder;
use crate::workqueue::{WorkQueue, run_workers};

pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// A class whose volumes are all made by hand.
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
const RESYNC: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Claim(String, String),
    Volume(String),
}

struct Ctx {
    client: Client,
    claims: Cache<PersistentVolumeClaim>,
    volumes: Cache<PersistentVolume>,
    classes: Cache<StorageClass>,
    nodes: Cache<Node>,
    queue: WorkQueue<Key>,
    recorder: Recorder,
}

fn claim_key(claim: &PersistentVolumeClaim) -> Key {
    Key::Claim(claim.namespace().unwrap_or_default(), claim.name_any())
}

fn claim_ref_key(volume: &PersistentVolume) -> Option<Key> {
    let r = volume.spec.as_ref()?.claim_ref.as_ref()?;
    Some(Key::Claim(r.namespace.clone()?, r.name.clone()?))
}

pub async fn run(client: Client) {
    let (queue, rx) = WorkQueue::<Key>::new();
    let q = queue.clone();
    let claims = Cache::<PersistentVolumeClaim>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            if let Some(claim) = new.or(old) {
                q.add(claim_key(claim));
                // A deleted claim releases its volume.
                if new.is_none()
                    && let Some(volume) = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty())
                {
                    q.add(Key::Volume(volume));
                }
            }
        }),
    );
    let q = queue.clone();
    let volumes = Cache::<PersistentVolume>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            if let Some(volume) = new.or(old) {
                q.add(Key::Volume(volume.name_any()));
                if let Some(key) = claim_ref_key(volume) {
                    q.add(key);
                }
            }
        }),
    );
    let classes = Cache::<StorageClass>::spawn(Api::all(client.clone()), Box::new(|_, _| {}));
    let nodes = Cache::<Node>::spawn(Api::all(client.clone()), Box::new(|_, _| {}));
    claims.synced().await;
    volumes.synced().await;
    classes.synced().await;
    nodes.synced().await;
    let ctx = Arc::new(Ctx { client: client.clone(), claims, volumes, classes, nodes, queue: queue.clone(), recorder: Recorder::new(client, "persistentvolume-controller") });
    // Upstream resyncs every 15s: claims wait on classes, nodes and provisioners that change
    // without touching the claim.
    let resync = ctx.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RESYNC).await;
            for claim in resync.claims.all() {
                resync.queue.add(claim_key(&claim));
            }
            for volume in resync.volumes.all() {
                resync.queue.add(Key::Volume(volume.name_any()));
            }
        }
    });
    run_workers(queue, rx, 2, move |key: Key| {
        let ctx = ctx.clone();
        async move {
            let result = match &key {
                Key::Claim(ns, name) => sync_claim(&ctx, ns, name).await,
                Key::Volume(name) => sync_volume(&ctx, name).await,
            };
            if let Err(error) = result {
                tracing::debug!(%error, ?key, "persistent volume sync failed; retrying");
                ctx.queue.add_after(key, Duration::from_secs(2));
            }
        }
    })
    .await;
}

fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

fn claim_phase(claim: &PersistentVolumeClaim) -> &str {
    claim.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn volume_phase(volume: &PersistentVolume) -> &str {
    volume.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

/// `storageClassName` of a claim; an absent one and "" both mean no class here (the admission
/// plugin already gave absent ones the default).
fn claim_class(claim: &PersistentVolumeClaim) -> &str {
    claim.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or("")
}

fn volume_class(volume: &PersistentVolume) -> &str {
    volume.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or("")
}

async fn sync_claim(ctx: &Ctx, ns: &str, name: &str) -> Result<(), kube::Error> {
    let Some(claim) = ctx.claims.get(ns, name) else { return Ok(()) };
    let volume_name = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
    if volume_name.is_empty() { sync_unbound_claim(ctx, &claim).await } else { sync_bound_claim(ctx, &claim, &volume_name).await }
}

async fn sync_unbound_claim(ctx: &Ctx, claim: &PersistentVolumeClaim) -> Result<(), kube::Error> {
    if claim.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let class_name = claim_class(claim);
    let class = (!class_name.is_empty()).then(|| ctx.classes.get("", class_name)).flatten();
    let delayed = class.as_ref().is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
    let selected = annotation(&claim.metadata, ANN_SELECTED_NODE).map(str::to_string);
    if delayed && selected.is_none() {
        ctx.recorder.normal(claim, "WaitForFirstConsumer", "waiting for first consumer to be created before binding".into());
        return set_claim_pending(ctx, claim).await;
    }
    let node = selected.as_deref().and_then(|n| ctx.nodes.get("", n));
    let volumes = ctx.volumes.all();
    if let Some(volume) = find_matching_volume(claim, &volumes, delayed.then_some(node.as_deref()).flatten()) {
        return bind(ctx, &volume, claim).await;
    }
    match class {
        Some(class) if class.provisioner != NO_PROVISIONER => {
            if annotation(&claim.metadata, ANN_STORAGE_PROVISIONER) != Some(class.provisioner.as_str()) {
                let patch = json!({"metadata": {"annotations": {ANN_STORAGE_PROVISIONER: class.provisioner, ANN_BETA_STORAGE_PROVISIONER: class.provisioner}}});
                claims_api(ctx, claim).patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
            }
            let message = format!(
                "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.",
                class.provisioner
            );
            ctx.recorder.normal(claim, "ExternalProvisioning", message);
        }
        Some(_) => {}
        None if class_name.is_empty() => ctx.recorder.normal(claim, "FailedBinding", "no persistent volumes available for this claim and no storage class is set".into()),
        None => ctx.recorder.warning(claim, "ProvisioningFailed", format!("storageclass.storage.k8s.io \"{class_name}\" not found")),
    }
    set_claim_pending(ctx, claim).await
}

async fn sync_bound_claim(ctx: &Ctx, claim: &PersistentVolumeClaim, volume_name: &str) -> Result<(), kube::Error> {
    let volume = match ctx.volumes.get("", volume_name) {
        Some(v) => Some(v),
        // The informer may lag a volume made a moment ago.
        None => Api::<PersistentVolume>::all(ctx.client.clone()).get_opt(volume_name).await?.map(Arc::new),
    };
    let bind_completed = annotation(&claim.metadata, ANN_BIND_COMPLETED).is_some();
    let Some(volume) = volume else {
        if bind_completed {
            if claim_phase(claim) != "Lost" {
                ctx.recorder.warning(claim, "ClaimLost", "Bound claim has lost its PersistentVolume. Data on the volume is lost!".into());
                set_claim_status(ctx, claim, json!({"phase": "Lost"})).await?;
            }
            return Ok(());
        }
        // Pre-bound by the user to a volume that does not exist yet.
        ctx.recorder.normal(claim, "FailedBinding", format!("volume \"{volume_name}\" not found"));
        return set_claim_pending(ctx, claim).await;
    };
    let claim_ref = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    match claim_ref {
        None => bind(ctx, &volume, claim).await,
        Some(r) if refers_to(r, claim) && (r.uid.as_deref().unwrap_or("").is_empty() || r.uid == claim.metadata.uid) => bind(ctx, &volume, claim).await,
        Some(_) if bind_completed => {
            if claim_phase(claim) != "Lost" {
                ctx.recorder.warning(claim, "ClaimMisbound", "Two claims are bound to the same volume, this one is bound incorrectly".into());
                set_claim_status(ctx, claim, json!({"phase": "Lost"})).await?;
            }
            Ok(())
        }
        Some(_) => {
            ctx.recorder.warning(claim, "FailedBinding", format!("volume \"{volume_name}\" already bound to a different claim."));
            set_claim_pending(ctx, claim).await
        }
    }
}

fn refers_to(r: &ObjectReference, claim: &PersistentVolumeClaim) -> bool {
    r.name.as_deref() == claim.metadata.name.as_deref() && r.namespace.as_deref() == claim.metadata.namespace.as_deref()
}

/// Upstream's FindMatchingVolume: a volume pre-bound to this claim if it fits, else the smallest
/// Available one of the same class, volume mode, access modes (a superset), enough capacity,
/// matching the claim's selector and, when `node` is given, reachable from it.
fn find_matching_volume(claim: &PersistentVolumeClaim, volumes: &[Arc<PersistentVolume>], node: Option<&Node>) -> Option<Arc<PersistentVolume>> {
    let spec = claim.spec.as_ref()?;
    let requested = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).and_then(|q| crate::resourcequota::milli(&q.0)).unwrap_or(0);
    let wanted_modes: Vec<&String> = spec.access_modes.iter().flatten().collect();
    let claim_mode = spec.volume_mode.as_deref().unwrap_or("Filesystem");
    let fits = |volume: &PersistentVolume| -> Option<i128> {
        let vspec = volume.spec.as_ref()?;
        if volume.metadata.deletion_timestamp.is_some() || volume_class(volume) != claim_class(claim) || vspec.volume_mode.as_deref().unwrap_or("Filesystem") != claim_mode {
            return None;
        }
        let modes = vspec.access_modes.clone().unwrap_or_default();
        if !wanted_modes.iter().all(|m| modes.contains(m)) {
            return None;
        }
        let capacity = vspec.capacity.as_ref().and_then(|c| c.get("storage")).and_then(|q| crate::resourcequota::milli(&q.0)).unwrap_or(0);
        if capacity < requested {
            return None;
        }
        if let Some(selector) = &spec.selector
            && !crate::labels::matches(selector, volume.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
        {
            return None;
        }
        if let Some(node) = node
            && !volume_reachable_from(volume, node)
        {
            return None;
        }
        Some(capacity)
    };
    let prebound = volumes.iter().find(|v| {
        v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some_and(|r| refers_to(r, claim) && (r.uid.as_deref().unwrap_or("").is_empty() || r.uid == claim.metadata.uid))
    });
    if let Some(volume) = prebound {
        return fits(volume).map(|_| volume.clone());
    }
    volumes
        .iter()
        .filter(|v| v.spec.as_ref().is_some_and(|s| s.claim_ref.is_none()) && volume_phase(v) == "Available")
        .filter_map(|v| fits(v).map(|capacity| (capacity, v)))
        .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name_any().cmp(&b.1.name_any())))
        .map(|(_, v)| v.clone())
}

/// Whether the volume's required node affinity admits `node`.
pub fn volume_reachable_from(volume: &PersistentVolume, node: &Node) -> bool {
    let Some(required) = volume.spec.as_ref().and_then(|s| s.node_affinity.as_ref()).and_then(|a| a.required.clone()) else { return true };
    let spec = PodSpec { affinity: Some(Affinity { node_affinity: Some(NodeAffinity { required_during_scheduling_ignored_during_execution: Some(required), ..Default::default() }), ..Default::default() }), ..Default::default() };
    crate::daemonset::matches_node(&spec, node)
}

fn claims_api(ctx: &Ctx, claim: &PersistentVolumeClaim) -> Api<PersistentVolumeClaim> {
    Api::namespaced(ctx.client.clone(), &claim.namespace().unwrap_or_default())
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

async fn set_claim_pending(ctx: &Ctx, claim: &PersistentVolumeClaim) -> Result<(), kube::Error> {
    if claim_phase(claim) == "Pending" {
        return Ok(());
    }
    set_claim_status(ctx, claim, json!({"phase": "Pending"})).await
}

async fn set_claim_status(ctx: &Ctx, claim: &PersistentVolumeClaim, status: Value) -> Result<(), kube::Error> {
    claims_api(ctx, claim).patch_status(&claim.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    Ok(())
}

async fn set_volume_phase(ctx: &Ctx, volume: &PersistentVolume, phase: &str, message: Option<&str>) -> Result<(), kube::Error> {
    if volume_phase(volume) == phase && volume.status.as_ref().and_then(|s| s.message.as_deref()) == message {
        return Ok(());
    }
    let status = json!({"phase": phase, "message": message, "lastPhaseTransitionTime": now()});
    Api::<PersistentVolume>::all(ctx.client.clone()).patch_status(&volume.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    Ok(())
}

/// Binds both ways, in upstream's order (volume, its phase, claim, its status), writing only what
/// is not so already; a write lost to a concurrent change fails and the key is retried.
async fn bind(ctx: &Ctx, volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> Result<(), kube::Error> {
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let volume_name = volume.name_any();
    let current_ref = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    if current_ref.is_none_or(|r| r.uid != claim.metadata.uid || !refers_to(r, claim)) {
        let mut meta = json!({"resourceVersion": volume.resource_version()});
        if current_ref.is_none() {
            meta["annotations"] = json!({ANN_BOUND_BY_CONTROLLER: "yes"});
        }
        let claim_ref = json!({
            "kind": "PersistentVolumeClaim", "apiVersion": "v1",
            "namespace": claim.namespace(), "name": claim.name_any(), "uid": claim.metadata.uid, "resourceVersion": claim.resource_version(),
        });
        volumes.patch(&volume_name, &PatchParams::default(), &Patch::Merge(json!({"metadata": meta, "spec": {"claimRef": claim_ref}}))).await?;
    }
    if volume_phase(volume) != "Bound" {
        let status = json!({"phase": "Bound", "message": null, "lastPhaseTransitionTime": now()});
        volumes.patch_status(&volume_name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    }
    let bound_name = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).unwrap_or("");
    if bound_name != volume_name || annotation(&claim.metadata, ANN_BIND_COMPLETED).is_none() {
        let mut annotations = json!({ANN_BIND_COMPLETED: "yes"});
        if bound_name.is_empty() {
            annotations[ANN_BOUND_BY_CONTROLLER] = json!("yes");
        }
        let patch = json!({"metadata": {"resourceVersion": claim.resource_version(), "annotations": annotations}, "spec": {"volumeName": volume_name}});
        claims_api(ctx, claim).patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    let vspec = volume.spec.clone().unwrap_or_default();
    let status = json!({"phase": "Bound", "accessModes": vspec.access_modes, "capacity": vspec.capacity});
    let current = claim.status.as_ref().map(|s| json!({"phase": s.phase, "accessModes": s.access_modes, "capacity": s.capacity}));
    if current.as_ref() != Some(&status) {
        set_claim_status(ctx, claim, status).await?;
        ctx.recorder.normal(claim, "Bound", format!("Successfully bound to volume {volume_name}"));
    }
    Ok(())
}

async fn sync_volume(ctx: &Ctx, name: &str) -> Result<(), kube::Error> {
    let Some(volume) = ctx.volumes.get("", name) else { return Ok(()) };
    let Some(claim_ref) = volume.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
        return set_volume_phase(ctx, &volume, "Available", None).await;
    };
    let ref_uid = claim_ref.uid.clone().unwrap_or_default();
    if ref_uid.is_empty() {
        // Pre-bound by the user to a claim by name: the claim's sync binds it.
        if let Some(key) = claim_ref_key(&volume) {
            ctx.queue.add(key);
        }
        return set_volume_phase(ctx, &volume, "Available", None).await;
    }
    let (ns, claim_name) = (claim_ref.namespace.clone().unwrap_or_default(), claim_ref.name.clone().unwrap_or_default());
    let mut claim = ctx.claims.get(&ns, &claim_name);
    if claim.as_ref().is_none_or(|c| c.metadata.uid.as_deref() != Some(ref_uid.as_str())) {
        // Before releasing, make sure the informer is not merely behind.
        claim = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns).get_opt(&claim_name).await?.map(Arc::new);
    }
    let claim = claim.filter(|c| c.metadata.uid.as_deref() == Some(ref_uid.as_str()));
    let Some(claim) = claim else {
        return release(ctx, &volume).await;
    };
    let bound_to = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
    if bound_to.is_empty() {
        // Binding in progress (or a provisioned volume waiting for its claim): the claim's sync
        // finishes it.
        ctx.queue.add(claim_key(&claim));
        return Ok(());
    }
    if bound_to == name {
        return set_volume_phase(ctx, &volume, "Bound", None).await;
    }
    if annotation(&volume.metadata, ANN_BOUND_BY_CONTROLLER).is_some() {
        // We bound it, but the claim went to another volume: free this one.
        let patch = json!({"metadata": {"resourceVersion": volume.resource_version()}, "spec": {"claimRef": null}});
        Api::<PersistentVolume>::all(ctx.client.clone()).patch(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        return set_volume_phase(ctx, &volume, "Available", None).await;
    }
    Ok(())
}

/// The claim is gone: Released, then reclaimed by policy. Deleting belongs to the volume's
/// provisioner; a volume nobody provisioned cannot be deleted and is Failed, as upstream.
async fn release(ctx: &Ctx, volume: &PersistentVolume) -> Result<(), kube::Error> {
    let phase = volume_phase(volume);
    if phase == "Failed" {
        return Ok(());
    }
    let policy = volume.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()).unwrap_or("Retain");
    let provisioned = annotation(&volume.metadata, ANN_PROVISIONED_BY).is_some();
    match policy {
        "Delete" if !provisioned => {
            let message = format!("error getting deleter volume plugin for volume \"{}\": no deletable volume plugin matched", volume.name_any());
            ctx.recorder.warning(volume, "VolumeFailedDelete", message.clone());
            set_volume_phase(ctx, volume, "Failed", Some(&message)).await
        }
        "Recycle" => {
            let message = "the Recycle reclaim policy is not supported";
            ctx.recorder.warning(volume, "VolumeFailedRecycle", message.into());
            set_volume_phase(ctx, volume, "Failed", Some(message)).await
        }
        _ => set_volume_phase(ctx, volume, "Released", None).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(extra: Value) -> PersistentVolumeClaim {
        let mut c = json!({"metadata": {"name": "data", "namespace": "default", "uid": "c1"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "fast"}});
        merge(&mut c, extra);
        serde_json::from_value(c).unwrap()
    }

    fn volume(name: &str, extra: Value) -> Arc<PersistentVolume> {
        let mut v = json!({"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "capacity": {"storage": "2Gi"}, "storageClassName": "fast", "hostPath": {"path": "/x"}}, "status": {"phase": "Available"}});
        merge(&mut v, extra);
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn merge(base: &mut Value, extra: Value) {
        match (base, extra) {
            (Value::Object(b), Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})).unwrap()
    }

    #[test]
    fn the_smallest_fitting_available_volume_matches() {
        let volumes = vec![
            volume("big", json!({"spec": {"capacity": {"storage": "10Gi"}}})),
            volume("small", json!({})),
            volume("too-small", json!({"spec": {"capacity": {"storage": "500Mi"}}})),
            volume("other-class", json!({"spec": {"storageClassName": "slow"}})),
            volume("wrong-modes", json!({"spec": {"accessModes": ["ReadOnlyMany"]}})),
            volume("released", json!({"status": {"phase": "Released"}})),
        ];
        assert_eq!(find_matching_volume(&claim(json!({})), &volumes, None).map(|v| v.name_any()).as_deref(), Some("small"));
        let selective = claim(json!({"spec": {"selector": {"matchLabels": {"tier": "gold"}}}}));
        assert!(find_matching_volume(&selective, &volumes, None).is_none());
        let labelled = vec![volume("gold", json!({"metadata": {"labels": {"tier": "gold"}}}))];
        assert!(find_matching_volume(&selective, &labelled, None).is_some());
    }

    #[test]
    fn prebound_volumes_win_and_node_affinity_limits() {
        let pinned = |name: &str, node: &str| {
            volume(name, json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}}))
        };
        let volumes = vec![pinned("on-a", "a"), pinned("on-b", "b")];
        assert_eq!(find_matching_volume(&claim(json!({})), &volumes, Some(&node("b"))).map(|v| v.name_any()).as_deref(), Some("on-b"));
        assert!(find_matching_volume(&claim(json!({})), &volumes, Some(&node("c"))).is_none());
        let prebound = volume("mine", json!({"spec": {"capacity": {"storage": "100Gi"}, "claimRef": {"namespace": "default", "name": "data", "uid": "c1"}}, "status": {"phase": "Pending"}}));
        let volumes = vec![volume("small", json!({})), prebound];
        assert_eq!(find_matching_volume(&claim(json!({})), &volumes, None).map(|v| v.name_any()).as_deref(), Some("mine"));
    }
}
