//! The scheduler: kube-scheduler's job, as an API client. It watches pods, nodes, namespaces and
//! PriorityClasses into an in-memory snapshot, takes pending pods of its scheduler name off a
//! priority queue, picks a node with upstream's default filters and scores, and binds through
//! `pods/{name}/binding`; pods that fit nowhere get `PodScheduled=False` with upstream's
//! aggregated message, a FailedScheduling event, and preemption of lower-priority pods when that
//! would help. Only the holder of the `kube-system/kube-scheduler` Lease schedules.
//!
//! Start with [`run`]. Public besides it: [`leader`] (Lease-based leader election, for other
//! components too) and [`quantity`] (resource quantity parsing). Inside, from the bottom up:
//! `resources` (a pod's effective requests), `selectors` (label and node selectors,
//! tolerations), `model` (pods and nodes parsed for scheduling), `cluster` (the snapshot),
//! `filters` and `scores` (the plugins), `volumebinding` (claims and volumes), `algorithm` (one decision), `preemption`, `queue`, and
//! `driver` (watches, the decision thread, API calls).

mod algorithm;
mod cluster;
pub mod decode;
mod driver;
mod filters;
pub mod leader;
mod model;
mod preemption;
pub mod quantity;
mod queue;
mod resources;
mod scores;
mod selectors;
mod volumebinding;

/// The Lease only one scheduler at a time may hold, as upstream names it.
pub const LEASE_NAMESPACE: &str = "kube-system";
pub const LEASE_NAME: &str = "kube-scheduler";

#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Pods whose `spec.schedulerName` is this are ours; also the events' source component.
    pub scheduler_name: String,
    /// Threads that filter nodes for one pod at a time (capped at the available cores).
    pub parallelism: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions { scheduler_name: "default-scheduler".to_string(), parallelism: 16 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Leader(#[from] leader::LeaderError),
    #[error("starting the scheduling thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("the scheduling thread stopped unexpectedly")]
    Crashed,
}

/// Schedules pods until the process ends: waits for the leader Lease, schedules while holding
/// it, and when it is lost stops and competes again (with fresh caches).
pub async fn run(client: kube::Client, options: SchedulerOptions) -> Result<(), SchedulerError> {
    let identity = leader::Elector::default_identity();
    let elector = leader::Elector::new(client.clone(), leader::LeaseConfig::new(LEASE_NAMESPACE, LEASE_NAME, identity.clone()))?;
    loop {
        let mut leadership = elector.acquire().await;
        let mut running = driver::Running::start(client.clone(), &options.scheduler_name, options.parallelism, &identity)?;
        tokio::select! {
            _ = leadership.lost() => {
                tracing::warn!("lost the scheduler lease; scheduling stops until it is regained");
                running.stop().await;
            }
            _ = running.exited() => {
                running.stop().await;
                leadership.release().await;
                return Err(SchedulerError::Crashed);
            }
        }
    }
}
