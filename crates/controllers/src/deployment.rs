//! The Deployment controller: one ReplicaSet per pod template revision, rolled with the
//! Deployment's strategy (RollingUpdate within maxSurge/maxUnavailable, or Recreate), revision
//! annotations kubectl's `rollout history|undo` read, history pruning, and the status and
//! conditions `kubectl rollout status` waits on.
//!
//! It works from ReplicaSet status (which the ReplicaSet controller keeps from the pods), so it
//! needs no pod cache of its own; only Recreate's hand-over lists the pods themselves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::cache::Cache;
use crate::events::Recorder;
use crate::labels;
use crate::workqueue::{WorkQueue, run_workers};

type Key = (String, String);

pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const HASH_LABEL: &str = "pod-template-hash";
/// Annotations of a Deployment that are its own and not copied onto its ReplicaSets.
const NOT_COPIED: [&str; 5] = ["kubectl.kubernetes.io/last-applied-configuration", REVISION, "deployment.kubernetes.io/revision-history", DESIRED_REPLICAS, MAX_REPLICAS];

struct Ctx {
    client: Client,
    recorder: Recorder,
    deployments: Cache<Deployment>,
    replicasets: Cache<ReplicaSet>,
    queue: WorkQueue<Key>,
}

pub async fn run(client: Client) {
    let (queue, rx) = WorkQueue::new();
    let q = queue.clone();
    let deployments = Cache::<Deployment>::spawn(
        Api::all(client.clone()),
        Box::new(move |_, new| {
            if let Some(d) = new {
                q.add((d.namespace().unwrap_or_default(), d.name_any()));
            }
        }),
    );
    let q = queue.clone();
    let for_rs = deployments.clone();
    let replicasets = Cache::<ReplicaSet>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            for rs in [old, new].into_iter().flatten() {
                let ns = rs.namespace().unwrap_or_default();
                match rs.owner_references().iter().find(|o| o.controller == Some(true)) {
                    Some(owner) if owner.kind == "Deployment" => q.add((ns, owner.name.clone())),
                    Some(_) => {}
                    None => {
                        for d in for_rs.in_namespace(&ns) {
                            if d.spec.as_ref().is_some_and(|s| labels::matches(&s.selector, rs.labels())) {
                                q.add((ns.clone(), d.name_any()));
                            }
                        }
                    }
                }
            }
        }),
    );
    deployments.synced().await;
    replicasets.synced().await;
    let recorder = Recorder::new(client.clone(), "deployment-controller");
    let ctx = Arc::new(Ctx { client, recorder, deployments, replicasets, queue: queue.clone() });
    run_workers(queue, rx, 4, move |key| {
        let ctx = ctx.clone();
        async move {
            if let Err(error) = sync(&ctx, &key).await {
                tracing::debug!(%error, namespace = %key.0, name = %key.1, "deployment sync failed; retrying");
                ctx.queue.add_after(key, Duration::from_secs(1));
            }
        }
    })
    .await;
}

/// `maxSurge`/`maxUnavailable` against `replicas`: surge rounds up, unavailability down, and
/// both zero would never progress, so unavailability becomes 1.
pub fn resolve_fenceposts(surge: Option<&IntOrString>, unavailable: Option<&IntOrString>, replicas: i32) -> (i32, i32) {
    let value = |v: Option<&IntOrString>, round_up: bool| -> i32 {
        match v {
            None => {
                let quarter = f64::from(replicas) * 0.25;
                (if round_up { quarter.ceil() } else { quarter.floor() }) as i32
            }
            Some(IntOrString::Int(n)) => *n,
            Some(IntOrString::String(s)) => {
                let percent: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
                let scaled = percent * f64::from(replicas) / 100.0;
                (if round_up { scaled.ceil() } else { scaled.floor() }) as i32
            }
        }
    };
    let surge = value(surge, true);
    let unavailable = value(unavailable, false);
    if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable) }
}

/// FNV-1a of the template, rendered with upstream's alphabet of unambiguous characters.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(&serde_json::to_vec(template).unwrap_or_default());
    if let Some(n) = collision_count {
        feed(&n.to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string().bytes().map(|b| ALPHABET[b as usize % ALPHABET.len()] as char).collect()
}

/// Templates equal apart from the pod-template-hash label the controller adds.
fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| -> Value {
        let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
        if let Some(labels) = v.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
            labels.remove(HASH_LABEL);
            if labels.is_empty() {
                v["metadata"].as_object_mut().map(|m| m.remove("labels"));
            }
        }
        if v.pointer("/metadata").and_then(Value::as_object).is_some_and(|m| m.is_empty())
            && let Some(obj) = v.as_object_mut()
        {
            obj.remove("metadata");
        }
        v
    };
    strip(a) == strip(b)
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations().get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// Recreate's gate (upstream's oldPodsRunning): whether any pod of an old ReplicaSet has not
/// finished, terminating ones included. ReplicaSet status stops counting a pod once its
/// deletion starts, but its containers may run until the node confirms it gone, and Recreate
/// promises old and new never run together. Asked of the API only once the old ReplicaSets
/// report no pods, so only during that hand-over; while pods remain, the Deployment is looked
/// at again shortly, as nothing else would wake it when the last one goes.
async fn old_pods_running(ctx: &Ctx, d: &Deployment, old: &[Arc<ReplicaSet>]) -> Result<bool, kube::Error> {
    if old.is_empty() {
        return Ok(false);
    }
    let namespace = d.namespace().unwrap_or_default();
    let selector = d.spec.as_ref().map(|s| labels::to_string(&s.selector)).unwrap_or_default();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let old_uids: Vec<String> = old.iter().filter_map(|rs| rs.uid()).collect();
    let running = pods.list(&kube::api::ListParams::default().labels(&selector)).await?.items.iter().any(|pod| {
        pod.owner_references().iter().any(|o| o.controller == Some(true) && old_uids.contains(&o.uid))
            && !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
    });
    if running {
        ctx.queue.add_after((namespace, d.name_any()), Duration::from_secs(1));
    }
    Ok(running)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (s.replicas, s.ready_replicas.unwrap_or(0), s.available_replicas.unwrap_or(0))
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

async fn sync(ctx: &Ctx, key: &Key) -> Result<(), SyncError> {
    let (ns, name) = key;
    let Some(d) = ctx.deployments.get(ns, name) else { return Ok(()) };
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let Some(spec) = d.spec.clone() else { return Ok(()) };
    let uid = d.uid().unwrap_or_default();
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);

    let mut owned: Vec<Arc<ReplicaSet>> = ctx.replicasets.controlled_by(&uid).into_iter().filter(|rs| labels::matches(&spec.selector, rs.labels())).collect();
    for rs in ctx.replicasets.in_namespace(ns) {
        let orphan = !rs.owner_references().iter().any(|o| o.controller == Some(true));
        if orphan && rs.metadata.deletion_timestamp.is_none() && labels::matches(&spec.selector, rs.labels()) {
            let mut refs = rs.owner_references().to_vec();
            refs.push(owner_ref(&d));
            let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.resource_version()}});
            if rs_api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await.is_ok() {
                owned.push(rs);
            }
        }
    }
    owned.sort_by_key(|rs| (rs.metadata.creation_timestamp.as_ref().map(|t| t.0), rs.name_any()));
    let template = spec.template.clone();
    let new_rs = owned.iter().find(|rs| rs.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| same_template(t, &template))).cloned();
    let old: Vec<Arc<ReplicaSet>> = owned.iter().filter(|rs| new_rs.as_ref().is_none_or(|n| n.uid() != rs.uid())).cloned().collect();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let rolling = spec.strategy.as_ref().and_then(|s| s.rolling_update.clone());
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let (surge, unavailable) = if recreate { (0, 0) } else { resolve_fenceposts(rolling.as_ref().and_then(|r| r.max_surge.as_ref()), rolling.as_ref().and_then(|r| r.max_unavailable.as_ref()), replicas) };
    let max_revision = owned.iter().map(|rs| revision_of(rs)).max().unwrap_or(0);
    let paused = spec.paused == Some(true);

    let mut created = None;
    let new_rs = if paused {
        new_rs
    } else {
        match new_rs {
            Some(rs) => Some(keep_current(ctx, &d, &rs, &old, max_revision, replicas, surge).await?),
            None if recreate && (old.iter().any(|rs| spec_replicas(rs) > 0 || status_of(rs).0 > 0) || old_pods_running(ctx, &d, &old).await?) => None,
            None => {
                let rs = create_new(ctx, &d, &old, max_revision, replicas, surge).await?;
                created = rs.as_ref().map(|r| r.name_any());
                rs.map(Arc::new)
            }
        }
    };

    if paused {
        // A paused Deployment still follows scale changes, on its newest ReplicaSet.
        if let Some(rs) = &new_rs
            && old.iter().all(|o| spec_replicas(o) == 0)
            && spec_replicas(rs) != replicas
        {
            scale(ctx, &rs_api, rs, replicas, &d, surge).await?;
        }
    } else if recreate {
        for rs in old.iter().filter(|rs| spec_replicas(rs) > 0) {
            scale(ctx, &rs_api, rs, 0, &d, surge).await?;
        }
        if let Some(rs) = &new_rs
            && old.iter().all(|o| spec_replicas(o) == 0 && status_of(o).0 == 0)
            && spec_replicas(rs) != replicas
            && !old_pods_running(ctx, &d, &old).await?
        {
            scale(ctx, &rs_api, rs, replicas, &d, surge).await?;
        }
    } else if let Some(rs) = &new_rs {
        roll(ctx, &rs_api, &d, rs, &old, replicas, surge, unavailable).await?;
    }

    prune_history(&rs_api, &d, &old).await;
    update_status(ctx, &d, new_rs.as_deref(), &owned, replicas, unavailable, created).await?;
    Ok(())
}

fn owner_ref(d: &Deployment) -> OwnerReference {
    OwnerReference { api_version: "apps/v1".into(), kind: "Deployment".into(), name: d.name_any(), uid: d.uid().unwrap_or_default(), controller: Some(true), block_owner_deletion: Some(true) }
}

fn copied_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.annotations().iter().filter(|(k, _)| !NOT_COPIED.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Creates the ReplicaSet for the current template, sized so the rollout starts within maxSurge.
async fn create_new(ctx: &Ctx, d: &Deployment, old: &[Arc<ReplicaSet>], max_revision: i64, replicas: i32, surge: i32) -> Result<Option<ReplicaSet>, SyncError> {
    let spec = d.spec.clone().unwrap_or_default();
    let collisions = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&spec.template, collisions);
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
    let mut selector = spec.selector.clone();
    selector.match_labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
    let old_total: i32 = old.iter().map(|rs| spec_replicas(rs)).sum();
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let initial = if old_total == 0 || recreate { replicas } else { (replicas + surge - old_total).clamp(0, replicas) };
    let mut annotations = copied_annotations(d);
    annotations.insert(REVISION.into(), (max_revision + 1).to_string());
    annotations.insert(DESIRED_REPLICAS.into(), replicas.to_string());
    annotations.insert(MAX_REPLICAS.into(), (replicas + surge).to_string());
    let rs = ReplicaSet {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(format!("{}-{hash}", d.name_any())),
            namespace: d.namespace(),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_ref(d)]),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec { replicas: Some(initial), min_ready_seconds: spec.min_ready_seconds, selector, template: Some(template) }),
        status: None,
    };
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    match api.create(&PostParams::default(), &rs).await {
        Ok(created) => {
            ctx.recorder.normal(d, "ScalingReplicaSet", format!("Scaled up replica set {} to {initial} from 0", created.name_any()));
            Ok(Some(created))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Same name, other template: a hash collision. Upstream bumps collisionCount so the
            // next hash differs.
            let existing = api.get_opt(&rs.name_any()).await?;
            let ours = existing.as_ref().and_then(|e| e.spec.as_ref()).and_then(|s| s.template.as_ref()).is_some_and(|t| same_template(t, &spec.template));
            if !ours {
                let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
                deployments.patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": {"collisionCount": collisions.unwrap_or(0) + 1}}))).await?;
            }
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The existing ReplicaSet for the current template becomes the newest revision (a rollback
/// reuses an old one) and carries the Deployment's annotations.
async fn keep_current(ctx: &Ctx, d: &Deployment, rs: &Arc<ReplicaSet>, old: &[Arc<ReplicaSet>], max_revision: i64, replicas: i32, surge: i32) -> Result<Arc<ReplicaSet>, SyncError> {
    let old_max = old.iter().map(|o| revision_of(o)).max().unwrap_or(0);
    let mut wanted = copied_annotations(d);
    let revision = if revision_of(rs) <= old_max { max_revision.max(old_max) + 1 } else { revision_of(rs) };
    wanted.insert(REVISION.into(), revision.to_string());
    wanted.insert(DESIRED_REPLICAS.into(), replicas.to_string());
    wanted.insert(MAX_REPLICAS.into(), (replicas + surge).to_string());
    let current = rs.annotations();
    // minReadySeconds is not part of the template, so a change to it is no new revision; as
    // upstream's getNewReplicaSet, the current ReplicaSet takes it over.
    let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let min_ready_changed = rs.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0) != min_ready;
    if wanted.iter().all(|(k, v)| current.get(k) == Some(v)) && !min_ready_changed {
        return Ok(rs.clone());
    }
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    let mut patch = json!({"metadata": {"annotations": wanted, "resourceVersion": rs.resource_version()}});
    if min_ready_changed {
        patch["spec"] = json!({"minReadySeconds": min_ready});
    }
    Ok(Arc::new(api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?))
}

async fn scale(ctx: &Ctx, api: &Api<ReplicaSet>, rs: &ReplicaSet, to: i32, d: &Deployment, surge: i32) -> Result<(), SyncError> {
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let patch = json!({
        "metadata": {"annotations": {DESIRED_REPLICAS: replicas.to_string(), MAX_REPLICAS: (replicas + surge).to_string()}, "resourceVersion": rs.resource_version()},
        "spec": {"replicas": to},
    });
    api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    let from = spec_replicas(rs);
    let direction = if to > from { "up" } else { "down" };
    ctx.recorder.normal(d, "ScalingReplicaSet", format!("Scaled {direction} replica set {} to {to} from {from}", rs.name_any()));
    Ok(())
}

/// One step of a rolling update: grow the new ReplicaSet within maxSurge, shrink old ones within
/// maxUnavailable (unhealthy pods first), as upstream's rolloutRolling does.
async fn roll(ctx: &Ctx, api: &Api<ReplicaSet>, d: &Deployment, new: &ReplicaSet, old: &[Arc<ReplicaSet>], replicas: i32, surge: i32, unavailable: i32) -> Result<(), SyncError> {
    let all_spec: i32 = old.iter().map(|rs| spec_replicas(rs)).sum::<i32>() + spec_replicas(new);
    let new_spec = spec_replicas(new);
    if new_spec > replicas {
        scale(ctx, api, new, replicas, d, surge).await?;
        return Ok(());
    }
    if new_spec < replicas {
        let room = replicas + surge - all_spec;
        if room > 0 {
            scale(ctx, api, new, new_spec + room.min(replicas - new_spec), d, surge).await?;
            return Ok(());
        }
    }
    let old_total: i32 = old.iter().map(|rs| spec_replicas(rs)).sum();
    if old_total == 0 {
        return Ok(());
    }
    let min_available = replicas - unavailable;
    let new_unavailable = new_spec - status_of(new).2;
    let mut budget = all_spec - min_available - new_unavailable;
    if budget <= 0 {
        return Ok(());
    }
    let mut targets: BTreeMap<String, i32> = old.iter().map(|rs| (rs.name_any(), spec_replicas(rs))).collect();
    // Old pods that are not available cost no availability to remove.
    for rs in old {
        let unhealthy = spec_replicas(rs) - status_of(rs).2;
        let cut = unhealthy.min(budget).max(0);
        if cut > 0 {
            *targets.entry(rs.name_any()).or_default() -= cut;
            budget -= cut;
        }
    }
    let available_total: i32 = old.iter().map(|rs| status_of(rs).2).sum::<i32>() + status_of(new).2;
    let mut can_remove = (available_total - min_available).min(all_spec - min_available - new_unavailable);
    for rs in old {
        if can_remove <= 0 {
            break;
        }
        let target = targets.entry(rs.name_any()).or_default();
        let cut = (*target).min(can_remove);
        *target -= cut;
        can_remove -= cut;
    }
    for rs in old {
        let target = targets.get(&rs.name_any()).copied().unwrap_or(0).max(0);
        if target != spec_replicas(rs) {
            scale(ctx, api, rs, target, d, surge).await?;
        }
    }
    Ok(())
}

/// Deletes old, empty ReplicaSets beyond `revisionHistoryLimit` (default 10), oldest first.
async fn prune_history(api: &Api<ReplicaSet>, d: &Deployment, old: &[Arc<ReplicaSet>]) {
    let limit = d.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10).max(0) as usize;
    let mut empty: Vec<&Arc<ReplicaSet>> = old.iter().filter(|rs| spec_replicas(rs) == 0 && status_of(rs).0 == 0 && rs.metadata.deletion_timestamp.is_none()).collect();
    if empty.len() <= limit {
        return;
    }
    empty.sort_by_key(|rs| revision_of(rs));
    for rs in &empty[..empty.len() - limit] {
        let params = DeleteParams { preconditions: Some(Preconditions { uid: rs.uid(), resource_version: None }), ..Default::default() };
        if let Err(error) = api.delete(&rs.name_any(), &params).await {
            tracing::debug!(%error, replicaset = %rs.name_any(), "pruning old replica set failed");
        }
    }
}

fn condition(type_: &str, status: &str, reason: &str, message: String, previous: Option<&DeploymentCondition>, now: Time) -> DeploymentCondition {
    // lastTransitionTime moves only when the status flips; lastUpdateTime on every change.
    let same_status = previous.is_some_and(|p| p.status == status);
    let same = previous.is_some_and(|p| p.status == status && p.reason.as_deref() == Some(reason) && p.message.as_deref() == Some(message.as_str()));
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: if same { previous.and_then(|p| p.last_update_time.clone()) } else { Some(now.clone()) },
        last_transition_time: if same_status { previous.and_then(|p| p.last_transition_time.clone()) } else { Some(now) },
    }
}

async fn update_status(ctx: &Ctx, d: &Deployment, new: Option<&ReplicaSet>, owned: &[Arc<ReplicaSet>], replicas: i32, unavailable: i32, created: Option<String>) -> Result<(), SyncError> {
    // Fresh ReplicaSet states from the cache: the scale patches above may have moved them.
    let fresh: Vec<Arc<ReplicaSet>> = owned.iter().filter_map(|rs| ctx.replicasets.get(&rs.namespace().unwrap_or_default(), &rs.name_any()).or_else(|| Some(rs.clone()))).collect();
    let total: i32 = fresh.iter().map(|rs| status_of(rs).0).sum();
    let ready: i32 = fresh.iter().map(|rs| status_of(rs).1).sum();
    let available: i32 = fresh.iter().map(|rs| status_of(rs).2).sum();
    let updated = new.and_then(|n| fresh.iter().find(|rs| rs.uid() == n.uid())).map(|rs| status_of(rs).0).unwrap_or(0);
    let old_status = d.status.clone().unwrap_or_default();
    let previous = |t: &str| old_status.conditions.iter().flatten().find(|c| c.type_ == t).cloned();
    let now = Time(jiff::Timestamp::now());
    let new_name = new.map(|n| n.name_any()).unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();

    let available_condition = if available >= replicas - unavailable {
        condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.".into(), previous("Available").as_ref(), now.clone())
    } else {
        condition("Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.".into(), previous("Available").as_ref(), now.clone())
    };
    let prev_progress = previous("Progressing");
    let complete = updated == replicas && total == replicas && available == replicas;
    let progressing = if spec.paused == Some(true) {
        condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into(), prev_progress.as_ref(), now.clone())
    } else if let Some(name) = &created {
        condition("Progressing", "True", "NewReplicaSetCreated", format!("Created new replica set \"{name}\""), prev_progress.as_ref(), now.clone())
    } else if complete {
        condition("Progressing", "True", "NewReplicaSetAvailable", format!("ReplicaSet \"{new_name}\" has successfully progressed."), prev_progress.as_ref(), now.clone())
    } else {
        // Progress as upstream's DeploymentProgressing: more updated, ready or available pods, or
        // fewer old ones. Zero counts are omitted from stored status, so a missing one is 0; and
        // only gains count, so pods flapping between ready and not never hold the deadline off.
        let was = |n: Option<i32>| n.unwrap_or(0);
        let moved = updated > was(old_status.updated_replicas)
            || ready > was(old_status.ready_replicas)
            || available > was(old_status.available_replicas)
            || total - updated < was(old_status.replicas) - was(old_status.updated_replicas);
        let deadline = i64::from(spec.progress_deadline_seconds.unwrap_or(600));
        let last = prev_progress.as_ref().and_then(|c| c.last_update_time.as_ref()).map(|t| t.0);
        // Once timed out it stays so until there is progress (upstream's DeploymentTimedOut),
        // rather than counting the deadline again from when the timeout was recorded.
        let timed_out = prev_progress.as_ref().is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
        // Time spent paused does not count either: resuming starts the deadline afresh
        // (upstream's DeploymentResumed condition).
        let resumed = prev_progress.as_ref().is_some_and(|c| c.reason.as_deref() == Some("DeploymentPaused"));
        let stalled = timed_out || (!resumed && last.is_some_and(|t| jiff::Timestamp::now().duration_since(t).as_secs() > deadline));
        if moved || !stalled {
            let keep = prev_progress.as_ref().filter(|c| c.status == "True" && !moved);
            match keep {
                Some(c) => c.clone(),
                None => {
                    let mut c = condition("Progressing", "True", "ReplicaSetUpdated", format!("ReplicaSet \"{new_name}\" is progressing."), prev_progress.as_ref(), now.clone());
                    // Progress restarts the deadline, which counts from lastUpdateTime, even when
                    // reason and message stay the same (upstream replaces the condition).
                    if moved {
                        c.last_update_time = Some(now.clone());
                    }
                    c
                }
            }
        } else {
            condition("Progressing", "False", "ProgressDeadlineExceeded", format!("ReplicaSet \"{new_name}\" has timed out progressing."), prev_progress.as_ref(), now.clone())
        }
    };
    let conditions = vec![available_condition, progressing];
    let status = json!({
        "observedGeneration": d.metadata.generation,
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (replicas - available).max(0),
        "conditions": conditions,
        "collisionCount": old_status.collision_count,
    });
    let same = serde_json::to_value(&old_status).ok().is_some_and(|old| {
        let mut old = old;
        let mut new = status.clone();
        for v in [&mut old, &mut new] {
            if let Some(obj) = v.as_object_mut() {
                obj.retain(|_, x| !x.is_null() && *x != json!(0));
            }
        }
        old == new
    });
    // Revision and progress checks that wait on time (deadline) need a later look.
    if !complete && spec.paused != Some(true) {
        ctx.queue.add_after((d.namespace().unwrap_or_default(), d.name_any()), Duration::from_secs(5));
    }
    let mut patch = json!({"status": status});
    if let Some(rs) = new {
        let revision = revision_of(rs).to_string();
        if d.annotations().get(REVISION) != Some(&revision) {
            let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
            deployments.patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {REVISION: revision}}}))).await?;
        }
    }
    if same {
        return Ok(());
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    if let Some(obj) = patch.pointer_mut("/status").and_then(Value::as_object_mut) {
        obj.retain(|_, v| !v.is_null());
    }
    match deployments.patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenceposts_round_like_upstream() {
        let pct = |s: &str| Some(IntOrString::String(s.into()));
        assert_eq!(resolve_fenceposts(None, None, 10), (3, 2));
        assert_eq!(resolve_fenceposts(pct("25%").as_ref(), pct("25%").as_ref(), 1), (1, 0));
        assert_eq!(resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 5), (0, 1));
        assert_eq!(resolve_fenceposts(pct("50%").as_ref(), Some(&IntOrString::Int(2)), 3), (2, 2));
    }

    #[test]
    fn template_hash_is_stable_and_ignores_our_label() {
        let t: PodTemplateSpec = serde_json::from_value(json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}})).unwrap();
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert_ne!(h, template_hash(&t, Some(1)));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        let mut labelled = t.clone();
        labelled.metadata.as_mut().unwrap().labels.as_mut().unwrap().insert(HASH_LABEL.into(), h);
        assert!(same_template(&t, &labelled));
    }
}
