//! Controllers: each watches the API through a [`kube::Client`] and writes back through it, as
//! kube-controller-manager's do, so they run the same in-process or against any server.
//!
//! Start with [`run_all`]. Building blocks: [`workqueue`], [`cache`] (informers), [`labels`],
//! [`graph`] (every object's owner references, for the garbage collector). Controllers: one module
//! each, named for the resource they reconcile.

pub mod cache;
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
}

impl Default for Options {
    fn default() -> Self {
        Self { node_monitor_grace_period: Duration::from_secs(40), cluster_cidr: nodeipam::DEFAULT_CLUSTER_CIDR.to_string(), root_ca_pem: None }
    }
}

/// Runs every controller until the process ends.
pub async fn run_all(client: kube::Client, options: Options) {
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
        podgc::run(client.clone()),
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
