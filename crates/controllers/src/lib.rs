//! Controllers: each watches the API through a [`kube::Client`] and writes back through it, as
//! kube-controller-manager's do, so they run the same in-process or against any server.
//!
//! Start with [`run_all`]. Building blocks: [`workqueue`], [`cache`] (informers), [`labels`],
//! [`graph`] (every object's owner references, for the garbage collector). Controllers: one module
//! each, named for the resource they reconcile.

pub mod cache;
pub mod cached_pod;
pub mod client;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod events;
pub mod garbage_collector;
pub mod graph;
pub mod history;
pub mod job;
pub mod labels;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod persistentvolume;
pub mod podgc;
pub mod pvcprotection;
pub mod replicaset;
pub mod resourcequota;
pub mod rootcacert;
pub mod serviceaccount;
pub mod statefulset;
pub mod workqueue;

use std::time::Duration;

/// Settings of the controller manager (upstream's kube-controller-manager flags).
#[derive(Clone, Debug)]
pub struct Options {
    /// How long a node may go without renewing its Lease before it is marked Unknown and tainted
    /// unreachable (`--node-monitor-grace-period`).
    pub node_monitor_grace_period: Duration,
    /// Where nodes' pod CIDRs come from (`--cluster-cidr`: one range, or an IPv4 and an IPv6 one
    /// separated by a comma; empty allocates none).
    pub cluster_cidr: String,
    /// The cluster CA (PEM) published to every namespace as `kube-root-ca.crt` (upstream's
    /// `--root-ca-file`); none publishes nothing.
    pub root_ca_pem: Option<String>,
    /// How many terminated pods may exist before the oldest are deleted
    /// (`--terminated-pod-gc-threshold`).
    pub terminated_pod_gc_threshold: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            node_monitor_grace_period: Duration::from_secs(40),
            cluster_cidr: nodeipam::DEFAULT_CLUSTER_CIDR.to_string(),
            root_ca_pem: None,
            terminated_pod_gc_threshold: podgc::TERMINATED_THRESHOLD,
        }
    }
}

/// Controllers running on a runtime of their own, so that stopping them (the leader lease lost)
/// stops every informer and worker they spawned, and a new leader term starts from fresh caches.
pub struct Running {
    runtime: Option<tokio::runtime::Runtime>,
    exited: tokio::sync::oneshot::Receiver<()>,
}

impl Running {
    /// Starts every controller with a client from `make_client`, called inside the new runtime
    /// (a client's connections and its request buffer live on the runtime that made them, and
    /// must die with it).
    pub fn start(make_client: impl FnOnce() -> Result<kube::Client, kube::Error> + Send + 'static, options: Options) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("controllers").enable_all().build()?;
        let (exited_tx, exited) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            match make_client() {
                Ok(client) => run_all(client, options).await,
                Err(error) => tracing::error!(%error, "building the controllers' client"),
            }
            let _ = exited_tx.send(());
        });
        Ok(Self { runtime: Some(runtime), exited })
    }

    /// Resolves if the controllers end on their own (they run until stopped otherwise).
    pub async fn exited(&mut self) {
        let _ = (&mut self.exited).await;
    }

    /// Stops every controller task without waiting for them (they hold nothing that needs a
    /// graceful end: all state is in the API).
    pub fn stop(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs every controller until the process ends.
pub async fn run_all(client: kube::Client, options: Options) {
    cache::with_shared_informers(run_every_controller(client, options)).await
}

async fn run_every_controller(client: kube::Client, options: Options) {
    let graph = graph::Graph::start(client.clone(), Duration::from_secs(15));
    tokio::join!(
        garbage_collector::run(client.clone(), graph.clone()),
        namespace::run(client.clone(), graph),
        replicaset::run(client.clone()),
        replicaset::run_replication_controllers(client.clone()),
        deployment::run(client.clone()),
        statefulset::run(client.clone()),
        daemonset::run(client.clone()),
        serviceaccount::run(client.clone()),
        endpoints::run(client.clone()),
        nodelifecycle::run(client.clone(), options.node_monitor_grace_period),
        nodeipam::run(client.clone(), options.cluster_cidr.clone()),
        podgc::run(client.clone(), options.terminated_pod_gc_threshold),
        resourcequota::run(client.clone()),
        disruption::run(client.clone()),
        job::run(client.clone()),
        cronjob::run(client.clone()),
        persistentvolume::run(client.clone()),
        pvcprotection::run(client.clone()),
        async {
            if let Some(ca) = options.root_ca_pem.clone() {
                rootcacert::run(client.clone(), ca).await;
            }
        },
    );
}
