//! The garbage collector: deletes objects whose owners are all gone (background deletion),
//! deletes the dependents of an owner held by the `foregroundDeletion` finalizer, letting it go
//! once those with `blockOwnerDeletion` are gone, and strips owner references to an owner held
//! by the `orphan` finalizer before letting it go.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::json;

use crate::graph::{Graph, Node};

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

pub async fn run(client: kube::Client, graph: Graph) {
    graph.on_changes(Duration::from_secs(5), || {
        let (client, graph) = (client.clone(), graph.clone());
        async move { reconcile(&client, &graph).await }
    }).await;
}

fn api_for(client: &kube::Client, node: &Node) -> Api<DynamicObject> {
    match (&node.namespace, node.namespaced) {
        (Some(ns), true) => Api::namespaced_with(client.clone(), ns, &*node.resource),
        _ => Api::all_with(client.clone(), &*node.resource),
    }
}

async fn remove_finalizer(client: &kube::Client, node: &Node, finalizer: &str) {
    let kept: Vec<&String> = node.finalizers.iter().filter(|f| f.as_str() != finalizer).collect();
    // The resourceVersion makes this a compare-and-swap on the state we reasoned about.
    let patch = json!({"metadata": {"finalizers": kept, "resourceVersion": node.resource_version}});
    if let Err(error) = api_for(client, node).patch(&node.name, &PatchParams::default(), &Patch::Merge(patch)).await {
        tracing::debug!(%error, name = %node.name, "removing finalizer failed; will retry");
    }
}

/// Deletes `node`; false when it should be tried again.
async fn delete(client: &kube::Client, node: &Node, policy: kube::api::PropagationPolicy) -> bool {
    // Preconditions on uid and resourceVersion: the graph may lag behind the server, and an
    // object that changed since (say, had its owner reference removed) must not be deleted on
    // the strength of what it was.
    let preconditions = kube::api::Preconditions { uid: Some(node.uid.clone()), resource_version: Some(node.resource_version.clone()) };
    let params = DeleteParams { propagation_policy: Some(policy), preconditions: Some(preconditions), ..Default::default() };
    match api_for(client, node).delete(&node.name, &params).await {
        Ok(_) => {
            tracing::info!(resource = %node.resource.plural, name = %node.name, "garbage collector deleted object");
            true
        }
        // Gone already, or changed since (a newer version of it will be looked at).
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => true,
        Err(error) => {
            tracing::warn!(%error, name = %node.name, "garbage collector delete failed");
            false
        }
    }
}

/// Whether the owner is really gone: not in the graph and not found (or replaced) on the server.
async fn owner_absent(client: &kube::Client, graph: &Graph, dependent: &Node, owner: &OwnerReference) -> bool {
    let Some((ar, namespaced)) = graph.resource_for(&owner.api_version, &owner.kind) else {
        let (group, version) = match owner.api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), owner.api_version.clone()),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, &owner.kind);
        return match kube::discovery::pinned_kind(client, &gvk).await {
            Ok((ar, caps)) => lookup_absent(client, dependent, owner, &ar, caps.scope == kube::discovery::Scope::Namespaced).await,
            // A kind the server does not serve cannot own anything.
            Err(kube::Error::Api(e)) if e.code == 404 => true,
            Err(_) => false,
        };
    };
    lookup_absent(client, dependent, owner, &ar, namespaced).await
}

async fn lookup_absent(client: &kube::Client, dependent: &Node, owner: &OwnerReference, ar: &ApiResource, namespaced: bool) -> bool {
    let api: Api<DynamicObject> = match (&dependent.namespace, namespaced) {
        (Some(ns), true) => Api::namespaced_with(client.clone(), ns, ar),
        (None, true) => return true,
        _ => Api::all_with(client.clone(), ar),
    };
    match api.get_opt(&owner.name).await {
        Ok(None) => true,
        Ok(Some(live)) => live.metadata.uid.as_deref() != Some(owner.uid.as_str()),
        Err(_) => false,
    }
}

/// One pass: owners being deleted (few), then the objects whose owners changed or went away
/// since the last pass. Nothing here walks the whole cluster.
pub async fn reconcile(client: &kube::Client, graph: &Graph) {
    for node in graph.deleting() {
        let is_orphaning = node.finalizers.iter().any(|f| f == ORPHAN);
        let is_foreground = node.finalizers.iter().any(|f| f == FOREGROUND);
        if !is_orphaning && !is_foreground {
            continue;
        }
        let deps = graph.dependents_of(&node.uid);
        if is_orphaning {
            let mut all_released = true;
            for dep in &deps {
                let kept: Vec<_> = dep.owners.iter().filter(|o| o.uid != node.uid).collect();
                let patch = json!({"metadata": {"ownerReferences": kept, "resourceVersion": dep.resource_version}});
                if api_for(client, dep).patch(&dep.name, &PatchParams::default(), &Patch::Merge(patch)).await.is_err() {
                    all_released = false;
                }
            }
            if all_released {
                remove_finalizer(client, &node, ORPHAN).await;
            }
        } else {
            for dep in deps.iter().filter(|d| !d.deleting) {
                delete(client, dep, kube::api::PropagationPolicy::Foreground).await;
            }
            // Every dependent is deleted, but only those whose reference to this owner has
            // blockOwnerDeletion hold it back (upstream's blockingDependents); the others may
            // outlive it, e.g. while finalizers of their own keep them.
            let blocking = deps.iter().any(|d| d.owners.iter().any(|o| o.uid == node.uid && o.block_owner_deletion == Some(true)));
            if !blocking {
                remove_finalizer(client, &node, FOREGROUND).await;
            }
        }
    }
    if !graph.synced() {
        // Until every resource has listed, a missing owner may just not be seen yet; the dirty
        // set keeps until then.
        return;
    }
    for node in graph.take_dirty() {
        if node.deleting || node.owners.is_empty() || node.owners.iter().any(|o| graph.contains_uid(&o.uid)) {
            continue;
        }
        let mut all_absent = true;
        for owner in &node.owners {
            if !owner_absent(client, graph, &node, owner).await {
                all_absent = false;
                break;
            }
        }
        if all_absent && !delete(client, &node, kube::api::PropagationPolicy::Background).await {
            graph.mark_dirty(&node.uid);
        }
    }
}
