//! Node registration and the slow heartbeat: the Node object with the labels, capacity,
//! addresses and system info a kubelet reports, and its status conditions re-reported every
//! minute (the lease is the fast heartbeat, as with a real kubelet since node leases).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;

use crate::addresses::{self, Cidr};
use crate::{ErrorLog, NODE_MARKER, Registered, SimError, Sim, backoff, is_permanent, now, post_params, spread, status_code};

pub const KUBELET_VERSION: &str = "v1.33.0-berth-sim";
/// How often each node re-reports its status (the kubelet's nodeStatusReportFrequency is 5m;
/// once a minute keeps lastHeartbeatTime fresh for tools that still read it).
pub const STATUS_REPORT_PERIOD: Duration = Duration::from_secs(60);
const REGISTRATION_CONCURRENCY: usize = 32;

static REGISTER_ERRORS: ErrorLog = ErrorLog::new("node registration");
static STATUS_ERRORS: ErrorLog = ErrorLog::new("node status report");

/// The conditions a kubelet owns, in the order it reports them:
/// (type, status, reason, message).
const CONDITIONS: [(&str, &str, &str, &str); 4] = [
    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
];

fn labels(name: &str) -> BTreeMap<String, String> {
    [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
        ("type", "sim"),
        (NODE_MARKER, "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn annotations() -> BTreeMap<String, String> {
    [(NODE_MARKER, "true"), ("volumes.kubernetes.io/controller-managed-attach-detach", "true")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn capacity(sim: &Sim) -> BTreeMap<String, Quantity> {
    let o = &sim.options;
    let mut c: BTreeMap<String, Quantity> = [
        ("cpu", o.cpu.clone()),
        ("memory", o.memory.clone()),
        ("pods", o.pods.to_string()),
        ("ephemeral-storage", "100Gi".to_string()),
        ("hugepages-1Gi", "0".to_string()),
        ("hugepages-2Mi", "0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    for (name, value) in &o.extended {
        c.insert(name.clone(), Quantity(value.clone()));
    }
    c
}

/// The node's status as its kubelet would report it now. Conditions other kubelet-like
/// reporters added (node-problem-detector's, say) are kept; a condition's lastTransitionTime
/// moves only when its status changes.
pub(crate) fn desired_status(sim: &Sim, i: usize, existing: Option<&NodeStatus>, now: Timestamp) -> NodeStatus {
    let name = &sim.names[i];
    let old: &[NodeCondition] = existing.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let mut conditions: Vec<NodeCondition> = old.iter().filter(|c| !CONDITIONS.iter().any(|(t, ..)| *t == c.type_)).cloned().collect();
    for (type_, status, reason, message) in CONDITIONS {
        let since = old
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        conditions.push(NodeCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(since),
        });
    }
    let capacity = capacity(sim);
    NodeStatus {
        capacity: Some(capacity.clone()),
        allocatable: Some(capacity),
        conditions: Some(conditions),
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: addresses::node_ip(i).to_string() },
            NodeAddress { type_: "Hostname".into(), address: name.clone() },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }) }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            operating_system: "linux".into(),
            os_image: "Berth Simulated Linux".into(),
            kernel_version: "6.8.0-berth-sim".into(),
            kubelet_version: KUBELET_VERSION.into(),
            container_runtime_version: "sim://1".into(),
            // The kubelet stopped reporting it (DisableNodeKubeProxyVersion).
            kube_proxy_version: String::new(),
            machine_id: format!("{:032x}", i as u128 + 1),
            system_uuid: format!("00000000-0000-4000-8000-{:012x}", i + 1),
            boot_id: sim.boot_id.clone(),
            swap: None,
        }),
        ..existing.cloned().unwrap_or_default()
    }
}

fn fresh_node(sim: &Sim, i: usize, now: Timestamp) -> Node {
    let cidr = addresses::default_pod_cidr(i);
    Node {
        metadata: ObjectMeta { name: Some(sim.names[i].clone()), labels: Some(labels(&sim.names[i])), annotations: Some(annotations()), ..Default::default() },
        spec: Some(NodeSpec { pod_cidr: Some(cidr.clone()), pod_cidrs: Some(vec![cidr]), ..Default::default() }),
        status: Some(desired_status(sim, i, None, now)),
    }
}

/// Adds our labels and annotations to an existing Node, and our pod CIDR when the control plane
/// has not assigned one (it may not change once set).
fn adopt(sim: &Sim, i: usize, node: &mut Node) {
    node.metadata.labels.get_or_insert_with(BTreeMap::new).extend(labels(&sim.names[i]));
    node.metadata.annotations.get_or_insert_with(BTreeMap::new).extend(annotations());
    let spec = node.spec.get_or_insert_with(NodeSpec::default);
    if spec.pod_cidr.as_deref().unwrap_or_default().is_empty() && spec.pod_cidrs.as_ref().is_none_or(|c| c.is_empty()) {
        let cidr = addresses::default_pod_cidr(i);
        spec.pod_cidr = Some(cidr.clone());
        spec.pod_cidrs = Some(vec![cidr]);
    }
}

fn registered(node: &Node) -> Registered {
    let spec = node.spec.as_ref();
    let cidr = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .into_iter()
        .flatten()
        .chain(spec.and_then(|s| s.pod_cidr.as_ref()))
        .find_map(|c| Cidr::parse(c));
    Registered { uid: node.metadata.uid.clone().unwrap_or_default(), pod_cidr: cidr }
}

async fn try_register(sim: &Sim, api: &Api<Node>, i: usize) -> Result<Registered, kube::Error> {
    let name = &sim.names[i];
    let now = now();
    match api.create(&post_params(), &fresh_node(sim, i, now)).await {
        Ok(node) => return Ok(registered(&node)),
        Err(e) if status_code(&e) == Some(409) => {}
        Err(e) => return Err(e),
    }
    // Registered by an earlier run (or someone else): bring it in line, as the kubelet does on
    // restart, without taking anything the control plane set.
    let existing = api.get(name).await?;
    let mut wanted = existing.clone();
    adopt(sim, i, &mut wanted);
    let current = if wanted.metadata != existing.metadata || wanted.spec != existing.spec {
        api.replace(name, &post_params(), &wanted).await?
    } else {
        existing
    };
    let mut with_status = current.clone();
    with_status.status = Some(desired_status(sim, i, current.status.as_ref(), now));
    let node = api.replace_status(name, &post_params(), &with_status).await?;
    Ok(registered(&node))
}

async fn register(sim: &Sim, i: usize) -> Result<(), SimError> {
    let api: Api<Node> = Api::all(sim.client.clone());
    let mut attempt = 0;
    loop {
        match try_register(sim, &api, i).await {
            Ok(reg) => {
                if reg.pod_cidr.is_none() {
                    tracing::warn!(node = %sim.names[i], "node has no IPv4 pod CIDR; its pods get no IP");
                }
                let _ = sim.registered[i].set(reg);
                break;
            }
            Err(e) if is_permanent(&e) => return Err(SimError::Rejected { node: sim.names[i].clone(), source: e }),
            Err(e) => {
                REGISTER_ERRORS.record(&sim.names[i], &e);
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
    // The kubelet creates its lease right after registering; the renewal loop takes over.
    crate::lease::renew(sim, i).await;
    Ok(())
}

/// Registers every node, a bounded number at a time; returns once all are registered.
pub(crate) async fn register_all(sim: &Arc<Sim>) -> Result<(), SimError> {
    futures_util::stream::iter(0..sim.names.len())
        .map(|i| register(sim, i))
        .buffer_unordered(REGISTRATION_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

async fn report_status(sim: &Sim, i: usize) {
    let api: Api<Node> = Api::all(sim.client.clone());
    let name = &sim.names[i];
    for attempt in 0..3 {
        // Read first: a condition someone else changed (Ready=Unknown from a lease that lapsed)
        // gets a new lastTransitionTime when it turns back.
        let result = async {
            let mut node = api.get(name).await?;
            node.status = Some(desired_status(sim, i, node.status.as_ref(), now()));
            api.replace_status(name, &post_params(), &node).await
        }
        .await;
        match result {
            Ok(_) => return,
            Err(e) if status_code(&e) == Some(409) && attempt < 2 => continue,
            // Deleted nodes stay deleted, as with a kubelet: it does not register again.
            Err(e) => {
                STATUS_ERRORS.record(name, &e);
                return;
            }
        }
    }
}

/// Re-reports every node's status once per [`STATUS_REPORT_PERIOD`], spread over the period.
pub(crate) async fn run_status(sim: Arc<Sim>) {
    let s = sim.clone();
    spread(sim.names.len(), STATUS_REPORT_PERIOD, sim.heartbeat_writes.clone(), move |i| {
        let s = s.clone();
        async move { report_status(&s, i).await }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> Sim {
        // A client is needed for the type only; nothing here talks to a server.
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let options = crate::SimOptions { count: 3, extended: vec![("nvidia.com/gpu".into(), "4".into())], ..Default::default() };
        Sim::new(client, options)
    }

    #[tokio::test]
    async fn registers_like_a_kubelet() {
        let sim = sim();
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let node = fresh_node(&sim, 1, t0);
        assert_eq!(node.metadata.name.as_deref(), Some("sim-1"));
        let labels = node.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "sim-1");
        assert_eq!(labels["type"], "sim");
        assert_eq!(node.spec.as_ref().unwrap().pod_cidr.as_deref(), Some("10.244.1.0/24"));
        let status = node.status.as_ref().unwrap();
        let cap = status.capacity.as_ref().unwrap();
        assert_eq!((cap["cpu"].0.as_str(), cap["memory"].0.as_str(), cap["pods"].0.as_str()), ("8", "32Gi", "110"));
        assert_eq!(cap["nvidia.com/gpu"].0, "4");
        assert_eq!(status.allocatable, status.capacity);
        let ready = status.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("True", Some("KubeletReady")));
        assert_eq!(status.addresses.as_ref().unwrap()[0].address, "10.200.0.2");
        assert_eq!(status.node_info.as_ref().unwrap().kubelet_version, KUBELET_VERSION);
    }

    #[tokio::test]
    async fn status_keeps_transition_times_and_foreign_conditions() {
        let sim = sim();
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let t1 = Timestamp::from_second(1_700_000_060).unwrap();
        let mut status = desired_status(&sim, 0, None, t0);
        let conditions = status.conditions.as_mut().unwrap();
        conditions.push(NodeCondition { type_: "KernelDeadlock".into(), status: "False".into(), ..Default::default() });
        // The node lifecycle controller marked it Unknown meanwhile.
        let ready = conditions.iter_mut().find(|c| c.type_ == "Ready").unwrap();
        ready.status = "Unknown".into();
        let next = desired_status(&sim, 0, Some(&status), t1);
        let find = |t: &str| next.conditions.as_ref().unwrap().iter().find(|c| c.type_ == t).cloned().unwrap();
        assert_eq!(find("MemoryPressure").last_transition_time, Some(Time(t0)));
        assert_eq!(find("MemoryPressure").last_heartbeat_time, Some(Time(t1)));
        assert_eq!(find("Ready").last_transition_time, Some(Time(t1)));
        assert_eq!(find("Ready").status, "True");
        assert_eq!(find("KernelDeadlock").status, "False");
    }

    #[tokio::test]
    async fn adopting_keeps_the_control_planes_cidr() {
        let sim = sim();
        let mut node = Node { spec: Some(NodeSpec { pod_cidr: Some("10.9.0.0/24".into()), ..Default::default() }), ..Default::default() };
        adopt(&sim, 2, &mut node);
        assert_eq!(node.spec.as_ref().unwrap().pod_cidr.as_deref(), Some("10.9.0.0/24"));
        assert_eq!(registered(&node).pod_cidr, Cidr::parse("10.9.0.0/24"));
        let mut bare = Node::default();
        adopt(&sim, 2, &mut bare);
        assert_eq!(bare.spec.as_ref().unwrap().pod_cidrs.as_deref(), Some(&["10.244.2.0/24".to_string()][..]));
    }
}
