//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics, so that of
//! several replicas of a component exactly one acts.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), scheduler::leader::LeaderError> {
//! use scheduler::leader::{Elector, LeaseConfig};
//! let elector = Elector::new(client, LeaseConfig::new("kube-system", "kube-controller-manager", Elector::default_identity()))?;
//! loop {
//!     let mut leadership = elector.acquire().await;
//!     tokio::select! {
//!         _ = leadership.lost() => {}          // stop working, then try again
//!         _ = std::future::pending::<()>() => {} // the work
//!     }
//! }
//! # }
//! ```
//!
//! How it stays safe: a candidate takes the lease only when it is free or its holder has not
//! renewed it for `lease_duration` *as observed locally* (clocks of different machines are never
//! compared); the holder renews every `retry_period` and gives up leadership when it could not
//! renew for `renew_deadline`, which is shorter than `lease_duration`, so it stops before anyone
//! else may start. Every write is a compare-and-swap on the lease's resourceVersion.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per process (see [`Elector::default_identity`]).
    pub identity: String,
    /// How long others wait after the last observed renewal before taking over.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it considers leadership lost.
    pub renew_deadline: Duration,
    /// How often the holder renews, and candidates retry.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Upstream's defaults for kube-scheduler and kube-controller-manager: 15s lease, 10s renew
    /// deadline, renewal every 2s.
    pub fn new(namespace: &str, name: &str, identity: String) -> Self {
        LeaseConfig {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election configuration: {0}")]
    Config(&'static str),
}

/// What this process last saw of the lease, and when (local monotonic time).
struct Observed {
    spec: Option<LeaseSpec>,
    at: Instant,
}

struct Inner {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Mutex<Observed>,
}

/// Competes for one lease. Cheap to clone.
#[derive(Clone)]
pub struct Elector {
    inner: Arc<Inner>,
}

/// Held while this process is the leader; renewal runs in the background until it is dropped
/// or released.
pub struct Leadership {
    lost: watch::Receiver<bool>,
    renewer: JoinHandle<()>,
    inner: Arc<Inner>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Result<Self, LeaderError> {
        if config.retry_period.is_zero() {
            return Err(LeaderError::Config("retry period must be positive"));
        }
        if config.renew_deadline <= config.retry_period {
            return Err(LeaderError::Config("renew deadline must exceed the retry period"));
        }
        if config.lease_duration <= config.renew_deadline {
            return Err(LeaderError::Config("lease duration must exceed the renew deadline"));
        }
        if config.identity.is_empty() {
            return Err(LeaderError::Config("identity must not be empty"));
        }
        let api = Api::namespaced(client, &config.namespace);
        Ok(Elector { inner: Arc::new(Inner { api, config, observed: Mutex::new(Observed { spec: None, at: Instant::now() }) }) })
    }

    /// `<hostname>_<random uuid>`, as upstream components name themselves.
    pub fn default_identity() -> String {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        format!("{host}_{}", uuid::Uuid::new_v4())
    }

    pub fn identity(&self) -> &str {
        &self.inner.config.identity
    }

    /// Waits until this process holds the lease, retrying every `retry_period` (jittered).
    pub async fn acquire(&self) -> Leadership {
        let inner = &self.inner;
        loop {
            match inner.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => tracing::debug!(%error, lease = %inner.config.name, "acquiring the lease failed"),
            }
            // client-go's jitter factor 1.2: retries of many candidates do not line up.
            let jitter = inner.config.retry_period.mul_f64(1.2 * fastrand::f64());
            tokio::time::sleep(inner.config.retry_period + jitter).await;
        }
        tracing::info!(lease = %inner.config.name, identity = %inner.config.identity, "became leader");
        let (tx, rx) = watch::channel(false);
        let renewer = tokio::spawn(renew(inner.clone(), tx));
        Leadership { lost: rx, renewer, inner: inner.clone() }
    }
}

/// Renews every `retry_period`; gives up (and reports it) after `renew_deadline` of failures.
async fn renew(inner: Arc<Inner>, lost: watch::Sender<bool>) {
    let config = &inner.config;
    'renewals: loop {
        tokio::time::sleep(config.retry_period).await;
        let deadline = tokio::time::Instant::now() + config.renew_deadline;
        loop {
            match tokio::time::timeout_at(deadline, inner.try_acquire_or_renew()).await {
                Ok(Ok(true)) => continue 'renewals,
                Ok(Ok(false)) => tracing::warn!(lease = %config.name, "lease is held by another identity"),
                Ok(Err(error)) => tracing::warn!(%error, lease = %config.name, "renewing the lease failed"),
                Err(_) => {}
            }
            if tokio::time::Instant::now() + config.retry_period >= deadline {
                break 'renewals;
            }
            tokio::time::sleep(config.retry_period).await;
        }
    }
    tracing::warn!(lease = %config.name, identity = %config.identity, "leadership lost");
    let _ = lost.send(true);
}

impl Inner {
    fn observe(&self, spec: Option<LeaseSpec>) -> Instant {
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        if observed.spec != spec {
            observed.spec = spec;
            observed.at = Instant::now();
        }
        observed.at
    }

    /// One round of client-go's tryAcquireOrRenew: Ok(true) when this identity holds the lease
    /// afterwards.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let config = &self.config;
        let now = MicroTime(Timestamp::now());
        let duration_seconds = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(current) = self.api.get_opt(&config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(config.name.clone()), namespace: Some(config.namespace.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(config.identity.clone()),
                    lease_duration_seconds: Some(duration_seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec);
                    Ok(true)
                }
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let observed_at = self.observe(Some(spec.clone()));
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let held_by_us = holder == config.identity;
        let their_duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
        if !holder.is_empty() && !held_by_us && observed_at + their_duration > Instant::now() {
            return Ok(false);
        }
        let mut next = spec.clone();
        if !held_by_us {
            next.acquire_time = Some(now.clone());
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        next.holder_identity = Some(config.identity.clone());
        next.lease_duration_seconds = Some(duration_seconds);
        next.renew_time = Some(now);
        let mut updated = current;
        updated.spec = Some(next);
        // The resourceVersion from the read makes this a compare-and-swap.
        match self.api.replace(&config.name, &PostParams::default(), &updated).await {
            Ok(written) => {
                self.observe(written.spec);
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Leadership {
    /// Completes once leadership is lost (renewal failed for `renew_deadline`). The caller must
    /// stop acting as leader right away.
    pub async fn lost(&mut self) {
        while !*self.lost.borrow_and_update() {
            if self.lost.changed().await.is_err() {
                // The renewer is gone without a verdict: it cannot have renewed either.
                return;
            }
        }
    }

    pub fn is_leader(&self) -> bool {
        !*self.lost.borrow() && !self.renewer.is_finished()
    }

    /// Stops renewing and hands the lease back so another candidate need not wait for it to
    /// expire.
    pub async fn release(self) {
        self.renewer.abort();
        let config = &self.inner.config;
        let Ok(Some(mut lease)) = self.inner.api.get_opt(&config.name).await else { return };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
            return;
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = Some(String::new());
        spec.lease_duration_seconds = Some(1);
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
        if let Err(error) = self.inner.api.replace(&config.name, &PostParams::default(), &lease).await {
            tracing::debug!(%error, lease = %config.name, "releasing the lease failed");
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
