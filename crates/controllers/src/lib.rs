//! Controllers: each watches the API through a [`kube::Client`] and writes back through it, as
//! kube-controller-manager's do, so they run the same in-process or against any server.
//!
//! Start with [`run_all`]. Modules: [`graph`] (a live view of every object's owner references,
//! shared by the garbage collector), [`garbage_collector`] (background, foreground and orphan
//! deletion), [`namespace`] (emptying a terminating namespace, then finalizing it).

pub mod cache;
pub mod deployment;
pub mod garbage_collector;
pub mod graph;
pub mod labels;
pub mod namespace;
pub mod replicaset;
pub mod workqueue;

use std::time::Duration;

/// Runs every controller until the process ends.
pub async fn run_all(client: kube::Client) {
    let graph = graph::Graph::start(client.clone(), Duration::from_secs(15));
    tokio::join!(garbage_collector::run(client.clone(), graph.clone()), namespace::run(client.clone(), graph), replicaset::run(client.clone()), deployment::run(client));
}
