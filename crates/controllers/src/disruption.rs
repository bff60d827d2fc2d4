//! The disruption controller: PodDisruptionBudget status — how many selected pods are healthy,
//! how many must be, and so how many voluntary disruptions (evictions) are allowed now.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::ReplicationController;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::cached_pod::CachedPod;
use crate::labels;
use crate::replicaset::ready_since;

const PERIOD: Duration = Duration::from_secs(3);

pub async fn run(client: Client) {
    let mut ticker = tokio::time::interval(PERIOD);
    loop {
        ticker.tick().await;
        let Ok(list) = Api::<PodDisruptionBudget>::all(client.clone()).list(&ListParams::default()).await else { continue };
        for pdb in list.items {
            if let Err(error) = sync(&client, &pdb).await {
                tracing::debug!(%error, pdb = %pdb.name_any(), "disruption budget update failed");
            }
        }
    }
}

/// The replicas the pods' controllers want (upstream's "expected pods" for percentages and
/// maxUnavailable): a ReplicaSet owned by a Deployment counts as the Deployment.
async fn expected_from_controllers(client: &Client, ns: &str, pods: &[&CachedPod]) -> Option<i32> {
    let mut owners: BTreeSet<(String, String)> = BTreeSet::new();
    for pod in pods {
        let owner = pod.owner_references().iter().find(|o| o.controller == Some(true))?;
        owners.insert((owner.kind.clone(), owner.name.clone()));
    }
    let mut total = 0;
    let mut counted: BTreeSet<(String, String)> = BTreeSet::new();
    for (kind, name) in owners {
        let (kind, name, replicas) = match kind.as_str() {
            "ReplicaSet" => {
                let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns).get(&name).await.ok()?;
                match rs.owner_references().iter().find(|o| o.controller == Some(true) && o.kind == "Deployment") {
                    Some(d) => {
                        let deployment = Api::<Deployment>::namespaced(client.clone(), ns).get(&d.name).await.ok()?;
                        ("Deployment".to_string(), d.name.clone(), deployment.spec.and_then(|s| s.replicas).unwrap_or(1))
                    }
                    None => (kind, name, rs.spec.and_then(|s| s.replicas).unwrap_or(1)),
                }
            }
            "StatefulSet" => {
                let sts = Api::<StatefulSet>::namespaced(client.clone(), ns).get(&name).await.ok()?;
                (kind, name, sts.spec.and_then(|s| s.replicas).unwrap_or(1))
            }
            "ReplicationController" => {
                let rc = Api::<ReplicationController>::namespaced(client.clone(), ns).get(&name).await.ok()?;
                (kind, name, rc.spec.and_then(|s| s.replicas).unwrap_or(1))
            }
            _ => return None,
        };
        if counted.insert((kind, name)) {
            total += replicas;
        }
    }
    Some(total)
}

fn scaled(value: &IntOrString, total: i32, round_up: bool) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let percent: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let v = percent * f64::from(total) / 100.0;
            (if round_up { v.ceil() } else { v.floor() }) as i32
        }
    }
}

async fn sync(client: &Client, pdb: &PodDisruptionBudget) -> Result<(), kube::Error> {
    let ns = pdb.namespace().unwrap_or_default();
    let spec = pdb.spec.clone().unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    let all = Api::<CachedPod>::namespaced(client.clone(), &ns).list(&ListParams::default()).await?.items;
    let pods: Vec<&CachedPod> = all.iter().filter(|p| labels::matches(&selector, p.labels()) && p.metadata.deletion_timestamp.is_none()).collect();
    let healthy = pods.iter().filter(|p| ready_since(p).is_some()).count() as i32;
    let (expected, desired) = match (&spec.min_available, &spec.max_unavailable) {
        (Some(IntOrString::Int(n)), _) => (pods.len() as i32, *n),
        (Some(min), _) => {
            let expected = expected_from_controllers(client, &ns, &pods).await.unwrap_or(pods.len() as i32);
            (expected, scaled(min, expected, true))
        }
        (None, Some(max)) => {
            let expected = expected_from_controllers(client, &ns, &pods).await.unwrap_or(pods.len() as i32);
            (expected, (expected - scaled(max, expected, true)).max(0))
        }
        (None, None) => (pods.len() as i32, 0),
    };
    let allowed = (healthy - desired).max(0);
    let old = pdb.status.clone().unwrap_or_default();
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    let (status, reason, message) = if allowed > 0 { ("True", "SufficientPods", "") } else { ("False", "InsufficientPods", "") };
    let previous = old.conditions.iter().flatten().find(|c| c.type_ == "DisruptionAllowed");
    let transition = previous.filter(|c| c.status == status).map(|c| c.last_transition_time.clone()).unwrap_or(now);
    let unchanged = old.current_healthy == healthy
        && old.desired_healthy == desired
        && old.expected_pods == expected
        && old.disruptions_allowed == allowed
        && old.observed_generation == pdb.metadata.generation
        && previous.is_some_and(|c| c.status == status && c.reason == reason);
    if unchanged {
        return Ok(());
    }
    let status = json!({"status": {
        "observedGeneration": pdb.metadata.generation,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "disruptionsAllowed": allowed,
        "disruptedPods": old.disrupted_pods.unwrap_or_default(),
        "conditions": [{"type": "DisruptionAllowed", "status": status, "reason": reason, "message": message, "lastTransitionTime": transition, "observedGeneration": pdb.metadata.generation}],
    }});
    Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns).patch_status(&pdb.name_any(), &PatchParams::default(), &Patch::Merge(status)).await?;
    Ok(())
}
