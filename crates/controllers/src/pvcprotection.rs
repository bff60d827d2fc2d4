//! PVC protection (upstream's pvc-protection controller): a claim being deleted keeps its
//! `kubernetes.io/pvc-protection` finalizer (added on create by admission) while a scheduled,
//! unfinished pod uses it, so the volume's data is not released under a running pod.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::cached_pod::CachedPod;
use crate::cache::Cache;
use crate::workqueue::{WorkQueue, run_workers};

pub const FINALIZER: &str = "kubernetes.io/pvc-protection";

fn claims_of(pod: &CachedPod) -> impl Iterator<Item = String> + '_ {
    pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone()))
}

/// Whether `pod` may have `claim` mounted: once scheduled and until it finished.
fn uses(pod: &CachedPod, claim: &str) -> bool {
    let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
    let finished = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    scheduled && !finished && claims_of(pod).any(|c| c == claim)
}

pub async fn run(client: Client) {
    let (queue, rx) = WorkQueue::<(String, String)>::new();
    let q = queue.clone();
    let claims = Cache::<PersistentVolumeClaim>::spawn(
        Api::all(client.clone()),
        Box::new(move |_, new| {
            if let Some(claim) = new.filter(|c| c.metadata.deletion_timestamp.is_some() && c.finalizers().iter().any(|f| f == FINALIZER)) {
                q.add((claim.namespace().unwrap_or_default(), claim.name_any()));
            }
        }),
    );
    let q = queue.clone();
    let pods = Cache::<CachedPod>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            // A pod that stops using its claims (gone or finished) may free a deleted claim.
            if let Some(pod) = old.or(new) {
                for claim in claims_of(pod) {
                    q.add((pod.namespace().unwrap_or_default(), claim));
                }
            }
        }),
    );
    claims.synced().await;
    pods.synced().await;
    let ctx = Arc::new((client, claims, pods, queue.clone()));
    run_workers(queue, rx, 1, move |(ns, name): (String, String)| {
        let ctx = ctx.clone();
        async move {
            let (client, claims, pods, queue) = &*ctx;
            let Some(claim) = claims.get(&ns, &name) else { return };
            if claim.metadata.deletion_timestamp.is_none() || !claim.finalizers().iter().any(|f| f == FINALIZER) {
                return;
            }
            if pods.in_namespace(&ns).iter().any(|p| uses(p, &name)) {
                return;
            }
            // The informer may be behind a pod created a moment ago: ask the server, as upstream.
            let live = Api::<CachedPod>::namespaced(client.clone(), &ns).list(&Default::default()).await;
            match live {
                Ok(list) if list.items.iter().any(|p| uses(p, &name)) => return,
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "listing pods for pvc protection; retrying");
                    queue.add_after((ns, name), Duration::from_secs(2));
                    return;
                }
            }
            let finalizers: Vec<String> = claim.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
            let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": claim.resource_version()}});
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    tracing::debug!(%error, "removing the pvc-protection finalizer; retrying");
                    queue.add_after((ns, name), Duration::from_secs(1));
                }
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scheduled_unfinished_pods_hold_a_claim() {
        let pod = |node: Option<&str>, phase: &str| -> CachedPod {
            serde_json::from_value(json!({
                "metadata": {"name": "p"},
                "spec": {"nodeName": node, "containers": [], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        assert!(uses(&pod(Some("n"), "Running"), "data"));
        assert!(!uses(&pod(Some("n"), "Running"), "other"));
        assert!(!uses(&pod(None, "Pending"), "data"));
        assert!(!uses(&pod(Some("n"), "Succeeded"), "data"));
    }
}
