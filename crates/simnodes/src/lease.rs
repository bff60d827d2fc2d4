//! The fast heartbeat: a coordination.k8s.io/v1 Lease per node in `kube-node-lease`, renewed
//! every `heartbeat` the way the kubelet's lease controller does (an update of the copy it last
//! wrote; a fresh read only after a conflict). The node lifecycle controller reads these, so when
//! the simulator stops, its nodes go NotReady after the lease duration.

use std::sync::Arc;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::Api;

use crate::{ErrorLog, Sim, backoff, is_permanent, now, post_params, spread, status_code};

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The kubelet's default (nodeLeaseDurationSeconds).
pub const LEASE_DURATION_SECONDS: i32 = 40;
const ATTEMPTS: u32 = 3;

static RENEW_ERRORS: ErrorLog = ErrorLog::new("node lease renewal");

fn owner(sim: &Sim, i: usize) -> Option<Vec<OwnerReference>> {
    // The lease goes with its node when the node is deleted.
    let uid = sim.registered[i].get().map(|r| r.uid.clone()).filter(|u| !u.is_empty())?;
    Some(vec![OwnerReference { api_version: "v1".into(), kind: "Node".into(), name: sim.names[i].clone(), uid, ..Default::default() }])
}

fn refresh(sim: &Sim, i: usize, lease: &mut Lease) {
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(sim.names[i].clone());
    spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
    spec.renew_time = Some(MicroTime(now()));
    if lease.metadata.owner_references.as_ref().is_none_or(|o| o.is_empty()) {
        lease.metadata.owner_references = owner(sim, i);
    }
}

async fn try_renew(sim: &Sim, api: &Api<Lease>, i: usize) -> Result<(), kube::Error> {
    let name = &sim.names[i];
    let cached = sim.leases[i].lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut lease = match cached {
        Some(lease) => lease,
        None => match api.get_opt(name).await? {
            Some(lease) => lease,
            None => {
                let mut lease = Lease { metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(LEASE_NAMESPACE.into()), ..Default::default() }, spec: None };
                refresh(sim, i, &mut lease);
                let created = api.create(&post_params(), &lease).await?;
                *sim.leases[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(slim(created));
                return Ok(());
            }
        },
    };
    refresh(sim, i, &mut lease);
    let renewed = api.replace(name, &post_params(), &lease).await?;
    *sim.leases[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(slim(renewed));
    Ok(())
}

/// The copy kept between renewals, without managedFields: an update that leaves them out keeps
/// the server's, and thousands of field trees are most of what the copies would weigh.
fn slim(mut lease: Lease) -> Lease {
    lease.metadata.managed_fields = None;
    lease
}

/// Renews (or creates) node `i`'s lease, retrying a few times within the period.
pub(crate) async fn renew(sim: &Sim, i: usize) {
    let api: Api<Lease> = Api::namespaced(sim.client.clone(), LEASE_NAMESPACE);
    for attempt in 0..ATTEMPTS {
        match try_renew(sim, &api, i).await {
            Ok(()) => return,
            Err(e) => {
                // The cached copy is gone (taken above); the next try reads the lease afresh.
                let conflict = matches!(status_code(&e), Some(409));
                if attempt + 1 == ATTEMPTS || is_permanent(&e) {
                    RENEW_ERRORS.record(&sim.names[i], &e);
                    return;
                }
                if !conflict {
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }
}

/// Renews every node's lease once per `heartbeat`, spread evenly over the period.
pub(crate) async fn run(sim: Arc<Sim>) {
    let s = sim.clone();
    spread(sim.names.len(), sim.options.heartbeat, sim.heartbeat_writes.clone(), move |i| {
        let s = s.clone();
        async move { renew(&s, i).await }
    })
    .await
}
