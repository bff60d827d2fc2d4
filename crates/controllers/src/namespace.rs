//! The namespace controller: when a namespace is terminating, deletes everything in it, and once
//! nothing is left, removes the `kubernetes` finalizer through the `finalize` subresource so the
//! API server can delete the namespace itself.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};

use crate::graph::Graph;

const FINALIZER: &str = "kubernetes";

pub async fn run(client: kube::Client, graph: Graph) {
    graph.on_changes(Duration::from_secs(3), || {
        let (client, graph) = (client.clone(), graph.clone());
        async move { reconcile(&client, &graph).await }
    }).await;
}

pub async fn reconcile(client: &kube::Client, graph: &Graph) {
    let terminating: Vec<String> = graph.deleting().into_iter().filter(|n| n.is_namespace()).map(|n| n.name).collect();
    for ns in terminating {
        let contents = graph.in_namespace(&ns);
        for node in contents.iter().filter(|n| !n.deleting) {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &*node.resource);
            match api.delete(&node.name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(error) => tracing::warn!(%error, namespace = %ns, name = %node.name, "namespace cleanup delete failed"),
            }
        }
        // The graph does not hold events (see graph::ignored): they go by collection.
        if contents.is_empty() && graph.synced() && delete_events(client, &ns).await {
            finalize(client, &ns).await;
        }
    }
}

async fn delete_events(client: &kube::Client, namespace: &str) -> bool {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    match api.delete_collection(&DeleteParams::background(), &ListParams::default()).await {
        Ok(_) => true,
        Err(error) => {
            tracing::debug!(%error, %namespace, "deleting the namespace's events failed; will retry");
            false
        }
    }
}

async fn finalize(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let Ok(Some(mut ns)) = api.get_opt(name).await else { return };
    let Some(spec) = ns.spec.as_mut() else { return };
    let Some(finalizers) = spec.finalizers.as_mut() else { return };
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return;
    }
    finalizers.retain(|f| f != FINALIZER);
    if let Err(error) = api.replace_subresource("finalize", name, &PostParams::default(), &ns).await {
        tracing::debug!(%error, namespace = %name, "finalize failed; will retry");
    } else {
        tracing::info!(namespace = %name, "namespace finalized");
    }
}
