//! The endpoints and endpointslice controllers (one loop): for every Service with a selector,
//! the addresses of the pods it selects, ready and not ready, with its ports resolved against
//! each pod's named container ports. Written as core/v1 Endpoints (named like the Service) and
//! discovery.k8s.io/v1 EndpointSlices (owned by the Service, at most 100 endpoints each).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};

use crate::cached_pod::CachedPod;
use crate::cache::Cache;
use crate::labels;
use crate::replicaset::ready_since;
use crate::workqueue::{WorkQueue, run_workers};

type Key = (String, String);

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const MAX_ENDPOINTS_PER_SLICE: usize = 100;

struct Ctx {
    client: Client,
    services: Cache<Service>,
    pods: Cache<CachedPod>,
    endpoints: Cache<Endpoints>,
    slices: Cache<EndpointSlice>,
    queue: WorkQueue<Key>,
    /// Slices created (generated names) that the cache has not shown yet, per Service: until it
    /// does, the Service waits, or a lagging cache would make it create them twice.
    unseen: Mutex<HashMap<Key, (Vec<String>, Instant)>>,
}

pub async fn run(client: Client) {
    let (queue, rx) = WorkQueue::new();
    let q = queue.clone();
    let services = Cache::<Service>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            if let Some(svc) = new.or(old) {
                q.add((svc.namespace().unwrap_or_default(), svc.name_any()));
            }
        }),
    );
    let q = queue.clone();
    let for_pods = services.clone();
    let pods = Cache::<CachedPod>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            for pod in [old, new].into_iter().flatten() {
                let ns = pod.namespace().unwrap_or_default();
                for svc in for_pods.in_namespace(&ns) {
                    if selector_of(&svc).is_some_and(|sel| labels::matches_map(&sel, pod.labels())) {
                        q.add((ns.clone(), svc.name_any()));
                    }
                }
            }
        }),
    );
    let endpoints = Cache::<Endpoints>::spawn(Api::all(client.clone()), Box::new(|_, _| {}));
    let slices = Cache::<EndpointSlice>::spawn(Api::all(client.clone()), Box::new(|_, _| {}));
    services.synced().await;
    pods.synced().await;
    endpoints.synced().await;
    slices.synced().await;
    let ctx = Arc::new(Ctx { client, services, pods, endpoints, slices, queue: queue.clone(), unseen: Mutex::new(HashMap::new()) });
    run_workers(queue, rx, 4, move |key| {
        let ctx = ctx.clone();
        async move {
            if let Err(error) = sync(&ctx, &key).await {
                tracing::debug!(%error, namespace = %key.0, service = %key.1, "endpoints sync failed; retrying");
                ctx.queue.add_after(key, Duration::from_secs(1));
            }
        }
    })
    .await;
}

/// A Service's selector; `None` for a Service without one, whose endpoints the user manages.
fn selector_of(svc: &Service) -> Option<BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.clone().filter(|s| !s.is_empty())
}

/// The container port a Service port points at on this pod: a number as is, a name looked up
/// among the pod's container ports with the same protocol.
fn target_port(port: &ServicePort, pod: &CachedPod) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match port.target_port.as_ref() {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod.spec.as_ref()?.containers.iter().flat_map(|c| c.ports.iter().flatten()).find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == protocol).map(|p| p.container_port),
    }
}

struct Member {
    ip: String,
    ready: bool,
    terminating: bool,
    node: Option<String>,
    hostname: Option<String>,
    target: ObjectReference,
    ports: Vec<(Option<String>, i32, String)>,
}

fn members(svc: &Service, pods: &[Arc<CachedPod>]) -> Vec<Member> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut out = Vec::new();
    for pod in pods {
        let status = pod.status.clone().unwrap_or_default();
        let Some(ip) = status.pod_ip.clone().filter(|ip| !ip.is_empty()) else { continue };
        let phase = status.phase.as_deref().unwrap_or("");
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = publish_not_ready || (ready_since(pod).is_some() && !terminating);
        let ports = spec.ports.iter().flatten().filter_map(|p| target_port(p, pod).map(|t| (p.name.clone(), t, p.protocol.clone().unwrap_or_else(|| "TCP".into())))).collect();
        let pod_spec = pod.spec.clone().unwrap_or_default();
        let hostname = pod_spec.subdomain.as_ref().filter(|s| Some(s.as_str()) == Some(svc.name_any().as_str())).and(pod_spec.hostname.clone());
        out.push(Member {
            ip,
            ready,
            terminating,
            node: pod_spec.node_name.clone(),
            hostname,
            target: ObjectReference { kind: Some("Pod".into()), namespace: pod.namespace(), name: Some(pod.name_any()), uid: pod.uid(), ..Default::default() },
            ports,
        });
    }
    out.sort_by(|a, b| a.ip.cmp(&b.ip));
    out
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

async fn sync(ctx: &Ctx, key: &Key) -> Result<(), SyncError> {
    let (ns, name) = key;
    let endpoints_api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
    let slices_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let Some(svc) = ctx.services.get(ns, name) else {
        // Slices go with their owner through the garbage collector; Endpoints are ours to remove.
        if ctx.endpoints.get(ns, name).is_some() {
            ignore_missing(endpoints_api.delete(name, &DeleteParams::default()).await.map(|_| ()))?;
        }
        return Ok(());
    };
    let Some(selector) = selector_of(&svc) else { return Ok(()) };
    let pods: Vec<Arc<CachedPod>> = ctx.pods.in_namespace(ns).into_iter().filter(|p| labels::matches_map(&selector, p.labels())).collect();
    let members = members(&svc, &pods);
    write_endpoints(ctx, &svc, &members, &endpoints_api).await?;
    write_slices(ctx, &svc, &members, &slices_api).await
}

fn ignore_missing(result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        other => other,
    }
}

fn endpoints_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert("service.kubernetes.io/headless".into(), String::new());
    }
    labels
}

async fn write_endpoints(ctx: &Ctx, svc: &Service, members: &[Member], api: &Api<Endpoints>) -> Result<(), SyncError> {
    // Subsets group addresses by identical port sets, as upstream repacks them.
    let mut by_ports: BTreeMap<Vec<(Option<String>, i32, String)>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> = BTreeMap::new();
    for m in members.iter().filter(|m| !m.ports.is_empty() && !m.terminating) {
        let mut ports = m.ports.clone();
        ports.sort();
        let address = EndpointAddress { ip: m.ip.clone(), hostname: m.hostname.clone(), node_name: m.node.clone(), target_ref: Some(m.target.clone()) };
        let entry = by_ports.entry(ports).or_default();
        if m.ready { entry.0.push(address) } else { entry.1.push(address) }
    }
    let subsets: Vec<EndpointSubset> = by_ports
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: Some(ports.into_iter().map(|(name, port, protocol)| EndpointPort { name, port, protocol: Some(protocol), app_protocol: None }).collect()),
        })
        .collect();
    let ns = svc.namespace().unwrap_or_default();
    let wanted = Endpoints {
        metadata: ObjectMeta { name: Some(svc.name_any()), namespace: Some(ns.clone()), labels: Some(endpoints_labels(svc)), ..Default::default() },
        subsets: (!subsets.is_empty()).then_some(subsets),
    };
    match ctx.endpoints.get(&ns, &svc.name_any()) {
        Some(current) if current.subsets == wanted.subsets && current.metadata.labels == wanted.metadata.labels => Ok(()),
        Some(current) => {
            let mut next = wanted;
            next.metadata.resource_version = current.resource_version();
            next.metadata.annotations = current.metadata.annotations.clone();
            api.replace(&svc.name_any(), &PostParams::default(), &next).await?;
            Ok(())
        }
        None => {
            match api.create(&PostParams::default(), &wanted).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    // Created meanwhile (our cache lags): look again shortly.
                    ctx.queue.add_after((ns, svc.name_any()), Duration::from_millis(500));
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

async fn write_slices(ctx: &Ctx, svc: &Service, members: &[Member], api: &Api<EndpointSlice>) -> Result<(), SyncError> {
    let ns = svc.namespace().unwrap_or_default();
    let key = (ns.clone(), svc.name_any());
    {
        let mut unseen = ctx.unseen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((names, since)) = unseen.get_mut(&key) {
            names.retain(|n| ctx.slices.get(&ns, n).is_none());
            if names.is_empty() || since.elapsed() > Duration::from_secs(10) {
                unseen.remove(&key);
            } else {
                ctx.queue.add_after(key, Duration::from_millis(200));
                return Ok(());
            }
        }
    }
    let uid = svc.uid().unwrap_or_default();
    let mut ports: Vec<SlicePort> = Vec::new();
    for (name, port, protocol) in members.iter().flat_map(|m| m.ports.iter()) {
        if !ports.iter().any(|p| p.name == *name && p.protocol.as_deref() == Some(protocol.as_str())) {
            ports.push(SlicePort { name: name.clone(), port: Some(*port), protocol: Some(protocol.clone()), app_protocol: None });
        }
    }
    let endpoints: Vec<Endpoint> = members
        .iter()
        .map(|m| Endpoint {
            addresses: vec![m.ip.clone()],
            conditions: Some(EndpointConditions { ready: Some(m.ready), serving: Some(m.ready || m.terminating), terminating: Some(m.terminating) }),
            hostname: m.hostname.clone(),
            node_name: m.node.clone(),
            target_ref: Some(m.target.clone()),
            ..Default::default()
        })
        .collect();
    let chunks: Vec<Vec<Endpoint>> = if endpoints.is_empty() { vec![vec![]] } else { endpoints.chunks(MAX_ENDPOINTS_PER_SLICE).map(|c| c.to_vec()).collect() };
    let mut labels = endpoints_labels(svc);
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let mut existing: Vec<Arc<EndpointSlice>> = ctx.slices.controlled_by(&uid).into_iter().filter(|s| s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)).collect();
    existing.sort_by_key(|s| s.name_any());
    let owner = OwnerReference { api_version: "v1".into(), kind: "Service".into(), name: svc.name_any(), uid, controller: Some(true), block_owner_deletion: Some(true) };
    for (i, chunk) in chunks.into_iter().enumerate() {
        let wanted = EndpointSlice {
            metadata: ObjectMeta { generate_name: Some(format!("{}-", svc.name_any())), namespace: Some(ns.clone()), labels: Some(labels.clone()), owner_references: Some(vec![owner.clone()]), ..Default::default() },
            address_type: "IPv4".into(),
            endpoints: chunk,
            ports: Some(ports.clone()),
        };
        match existing.get(i) {
            Some(current) if current.endpoints == wanted.endpoints && current.ports == wanted.ports && current.metadata.labels == wanted.metadata.labels => {}
            Some(current) => {
                let mut next = wanted;
                next.metadata.name = Some(current.name_any());
                next.metadata.generate_name = None;
                next.metadata.resource_version = current.resource_version();
                api.replace(&current.name_any(), &PostParams::default(), &next).await?;
            }
            None => {
                let created = api.create(&PostParams::default(), &wanted).await?;
                let mut unseen = ctx.unseen.lock().unwrap_or_else(|e| e.into_inner());
                let entry = unseen.entry(key.clone()).or_insert_with(|| (Vec::new(), Instant::now()));
                entry.0.push(created.name_any());
            }
        }
    }
    let used = endpoints.len().div_ceil(MAX_ENDPOINTS_PER_SLICE).max(1);
    for extra in existing.iter().skip(used) {
        ignore_missing(api.delete(&extra.name_any(), &DeleteParams::default()).await.map(|_| ()))?;
    }
    Ok(())
}
