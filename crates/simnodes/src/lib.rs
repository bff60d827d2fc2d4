//! Simulated nodes, in the spirit of KWOK: Node objects that register, renew their leases and
//! report status like a kubelet's, and pods bound to them that start, run, finish and are deleted
//! as a kubelet would report them, without any container running. Everything goes through a
//! [`kube::Client`], so the simulator works against any Kubernetes API server.
//!
//! [`run`] is the entry point. Modules: `node` (registration and the slow status heartbeat),
//! `lease` (the fast heartbeat: one coordination.k8s.io Lease per node), `pods` (one watch of
//! bound pods, a work queue and the kubelet's status reports), `addresses` (node and pod IPs),
//! `queue` (the work queue).
//!
//! Scale: one process drives thousands of nodes and tens of thousands of pods with one client,
//! one pod watch, a fixed number of workers and heartbeats spread evenly over their period; no
//! task exists per node or per pod.

mod addresses;
mod lease;
mod node;
mod pods;
mod queue;

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// What to simulate. Node `i` is named `{prefix}{i}`.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub count: usize,
    pub prefix: String,
    /// Capacity (and allocatable) of each node, as Kubernetes quantities.
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    /// Extended resources, e.g. `("nvidia.com/gpu", "4")`.
    pub extended: Vec<(String, String)>,
    /// How often each node's Lease is renewed (the kubelet's default is 10s).
    pub heartbeat: Duration,
    /// How long containers of pods whose restartPolicy is not Always run before they exit.
    pub finish_after: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            count: 1,
            prefix: "sim-".to_string(),
            cpu: "8".to_string(),
            memory: "32Gi".to_string(),
            pods: 110,
            extended: Vec::new(),
            heartbeat: Duration::from_secs(10),
            finish_after: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulation options: {0}")]
    InvalidOptions(String),
    /// The server refused a node as invalid or forbidden; retrying would not help.
    #[error("the API server rejected node {node}: {source}")]
    Rejected {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// The annotation on a pod that sets its containers' exit code (default 0).
pub const EXIT_CODE_ANNOTATION: &str = "sim.berth.dev/exit-code";
/// The annotation (and label) that marks a Node as simulated.
pub const NODE_MARKER: &str = "sim.berth.dev/node";

/// Runs until the future is dropped (the process stops): registers and heartbeats the nodes,
/// plays the kubelet's part for pods bound to them.
///
/// Returns early only with an error: options that cannot work, or a node the server rejects
/// outright. Transient API errors are logged and retried with backoff. Dropping the future stops
/// every heartbeat at once, which is how node failure is simulated.
pub async fn run(client: kube::Client, options: SimOptions) -> Result<(), SimError> {
    validate(&options)?;
    let sim = Arc::new(Sim::new(client, options));
    // Owned here, so dropping this future aborts every task below.
    let mut tasks = JoinSet::new();
    node::register_all(&sim).await?;
    tracing::info!(nodes = sim.names.len(), prefix = %sim.options.prefix, "simulated nodes registered");
    tasks.spawn(lease::run(sim.clone()));
    tasks.spawn(node::run_status(sim.clone()));
    pods::start(&sim, &mut tasks);
    while let Some(done) = tasks.join_next().await {
        if let Err(error) = done {
            tracing::error!(%error, "a simulated-node task ended");
        }
    }
    Ok(())
}

fn validate(options: &SimOptions) -> Result<(), SimError> {
    let max = addresses::MAX_NODES_BY_CIDR.min(addresses::MAX_NODES_BY_IP);
    if options.count > max {
        return Err(SimError::InvalidOptions(format!("count {} is more than the {max} nodes the address ranges allow", options.count)));
    }
    if options.prefix.is_empty() {
        return Err(SimError::InvalidOptions("prefix must not be empty".into()));
    }
    if options.heartbeat.is_zero() {
        return Err(SimError::InvalidOptions("heartbeat must be longer than zero".into()));
    }
    Ok(())
}

/// What registration learnt about a node.
#[derive(Clone, Debug)]
pub(crate) struct Registered {
    pub uid: String,
    /// The node's pod CIDR, ours or the control plane's; None when it is not IPv4.
    pub pod_cidr: Option<addresses::Cidr>,
}

/// State shared by every part of the simulator.
pub(crate) struct Sim {
    pub client: kube::Client,
    pub options: SimOptions,
    pub names: Vec<String>,
    pub index: HashMap<String, usize>,
    /// Changes each time the simulator starts, as a real boot ID does on reboot.
    pub boot_id: String,
    pub registered: Vec<OnceLock<Registered>>,
    /// The newest copy of each node's Lease, so a renewal is one update (as the kubelet's).
    pub leases: Vec<Mutex<Option<k8s_openapi::api::coordination::v1::Lease>>>,
    /// Bounds heartbeat writes (leases and node status) so a slow server is not flooded; pod
    /// writes are bounded by the number of pod workers.
    pub heartbeat_writes: Arc<Semaphore>,
}

/// Concurrent requests for registration and heartbeats.
pub(crate) const HEARTBEAT_CONCURRENCY: usize = 16;
/// Pod workers, each with at most one request in flight.
pub(crate) const POD_WORKERS: usize = 32;

impl Sim {
    fn new(client: kube::Client, options: SimOptions) -> Self {
        let names: Vec<String> = (0..options.count).map(|i| format!("{}{i}", options.prefix)).collect();
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        let registered = (0..options.count).map(|_| OnceLock::new()).collect();
        let leases = (0..options.count).map(|_| Mutex::new(None)).collect();
        Self {
            client,
            options,
            names,
            index,
            boot_id: uuid::Uuid::new_v4().to_string(),
            registered,
            leases,
            heartbeat_writes: Arc::new(Semaphore::new(HEARTBEAT_CONCURRENCY)),
        }
    }
}

/// Runs `work(i)` for every node once per `period`, node `i` at offset `i * period / count`,
/// so the load is even instead of arriving in one burst. A node whose previous round is still
/// under way (a slow server) is skipped rather than piled up.
pub(crate) async fn spread<F, Fut>(count: usize, period: Duration, limit: Arc<Semaphore>, work: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if count == 0 {
        return std::future::pending().await;
    }
    // At most ten rounds a second: finer slicing only costs wakeups.
    let slices = count.min((period.as_millis() / 100).max(1) as usize);
    let step = period / slices as u32;
    // The first round is one step away: registration has just done the work once.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let busy: Arc<Vec<AtomicBool>> = Arc::new((0..count).map(|_| AtomicBool::new(false)).collect());
    let work = Arc::new(work);
    let mut running = JoinSet::new();
    let mut slice = 0;
    loop {
        tick.tick().await;
        while running.try_join_next().is_some() {}
        for i in slice * count / slices..(slice + 1) * count / slices {
            if busy[i].swap(true, Ordering::AcqRel) {
                continue;
            }
            let (busy, work, limit) = (busy.clone(), work.clone(), limit.clone());
            running.spawn(async move {
                if let Ok(_permit) = limit.acquire_owned().await {
                    work(i).await;
                }
                busy[i].store(false, Ordering::Release);
            });
        }
        slice = (slice + 1) % slices;
    }
}

/// Logs failures of one kind at most once per interval as a warning (with how many were
/// suppressed), the rest at debug: thousands of nodes failing together must not flood the log.
pub(crate) struct ErrorLog {
    what: &'static str,
    state: Mutex<(Option<Instant>, u64)>,
}

const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl ErrorLog {
    pub const fn new(what: &'static str) -> Self {
        Self { what, state: Mutex::new((None, 0)) }
    }

    pub fn record(&self, subject: &str, error: &dyn Display) {
        let suppressed = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match state.0 {
                Some(at) if at.elapsed() < ERROR_LOG_INTERVAL => {
                    state.1 += 1;
                    None
                }
                _ => {
                    let n = state.1;
                    *state = (Some(Instant::now()), 0);
                    Some(n)
                }
            }
        };
        match suppressed {
            Some(suppressed) => tracing::warn!(%error, subject, suppressed, "{} failed; will retry", self.what),
            None => tracing::debug!(%error, subject, "{} failed; will retry", self.what),
        }
    }
}

/// The HTTP status of an API error.
pub(crate) fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Errors that retrying the same request cannot fix.
pub(crate) fn is_permanent(error: &kube::Error) -> bool {
    matches!(status_code(error), Some(400 | 401 | 403 | 405 | 413 | 415 | 422))
}

/// Doubling delays for retrying a request in place, capped.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200).saturating_mul(1u32 << attempt.min(8)).min(Duration::from_secs(30))
}

/// The field manager of every write: the simulator writes what a kubelet would, so its fields
/// show up under the kubelet's name in managedFields.
pub(crate) const FIELD_MANAGER: &str = "kubelet";

pub(crate) fn post_params() -> kube::api::PostParams {
    kube::api::PostParams { field_manager: Some(FIELD_MANAGER.to_string()), ..Default::default() }
}

pub(crate) fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        assert!(validate(&SimOptions::default()).is_ok());
        assert!(validate(&SimOptions { count: 1_000_000, ..Default::default() }).is_err());
        assert!(validate(&SimOptions { prefix: String::new(), ..Default::default() }).is_err());
        assert!(validate(&SimOptions { heartbeat: Duration::ZERO, ..Default::default() }).is_err());
    }

    #[tokio::test]
    async fn spread_visits_every_node_each_period() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(spread(7, Duration::from_millis(350), Arc::new(Semaphore::new(2)), move |i| {
            let s = s.clone();
            async move { s.lock().unwrap().push((i, Instant::now())) }
        }));
        tokio::time::sleep(Duration::from_millis(600)).await;
        task.abort();
        let seen = seen.lock().unwrap().clone();
        for i in 0..7 {
            assert!(seen.iter().any(|(n, _)| *n == i), "node {i} visited");
        }
        // Node 0 and node 6 are not visited in the same instant.
        let first = |n: usize| seen.iter().find(|(i, _)| *i == n).map(|(_, t)| *t).unwrap();
        assert!(first(6).duration_since(first(0)) >= Duration::from_millis(200));
    }
}
