//! Controllers: each watches the API through a [`kube::Client`] and writes back through it, as
//! kube-controller-manager's do, so they run the same in-process or against any server.
//!
//! Start with [`run_all`]. Building blocks: [`workqueue`], [`cache`] (informers), [`labels`],
//! [`graph`] (every object's owner references, for the garbage collector). Controllers: one module
//! each, named for the resource they reconcile.

pub mod cache;
pub mod deployment;
pub mod endpoints;
pub mod garbage_collector;
pub mod graph;
pub mod labels;
pub mod namespace;
pub mod replicaset;
pub mod serviceaccount;
pub mod workqueue;

use std::time::Duration;

/// Runs every controller until the process ends.
pub async fn run_all(client: kube::Client) {
    let graph = graph::Graph::start(client.clone(), Duration::from_secs(15));
    tokio::join!(
        garbage_collector::run(client.clone(), graph.clone()),
        namespace::run(client.clone(), graph),
        replicaset::run(client.clone()),
        deployment::run(client.clone()),
        serviceaccount::run(client.clone()),
        endpoints::run(client.clone()),
    );
}
