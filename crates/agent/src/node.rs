//! The agent's Node: registration with capacity measured from the machine, the status heartbeat
//! (conditions, addresses, node info), the Lease heartbeat, and the CNI configuration written
//! once the control plane has given the node a pod CIDR. As the kubelet, the agent tells of its
//! conditions' changes as events on its Node (NodeReady, NodeHasSufficientMemory, ...).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use controllers::events::Recorder;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo, ObjectReference};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::cri::Cri;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_DURATION_SECONDS: i32 = 40;
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Status is posted when it changes, and at least this often otherwise (as the kubelet).
const STATUS_REPORT: Duration = Duration::from_secs(60);
pub const MAX_PODS: i64 = 110;
pub const KUBELET_VERSION: &str = "v1.33.0+berth";

#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub name: String,
    pub ip: String,
    pub kubelet_port: u16,
    pub data_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
}

/// Memory, CPU and disk of this machine, as the kubelet's cAdvisor would report them.
#[derive(Clone, Debug)]
pub struct Capacity {
    pub cpus: usize,
    pub memory_bytes: i64,
    pub ephemeral_bytes: i64,
}

pub fn measure(data_dir: &Path) -> Capacity {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| text.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<i64>().ok()))
        .unwrap_or(0);
    Capacity { cpus, memory_bytes: memory_kib * 1024, ephemeral_bytes: filesystem_size(data_dir).unwrap_or(0) }
}

fn filesystem_size(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a properly sized, writable struct.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) };
    (rc == 0).then(|| (stats.f_blocks as i64) * (stats.f_frsize as i64))
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_else(|| "Linux".into())
}

fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn condition(type_: &str, ok: bool, true_reason: &str, false_reason: &str, message: &str, now: jiff::Timestamp, previous: Option<&NodeCondition>) -> NodeCondition {
    let status = if ok { "True" } else { "False" };
    let transition = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(Time(now)),
    };
    NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(if ok { true_reason } else { false_reason }.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: transition,
    }
}

/// The events upstream's kubelet records when it sets its node's conditions (reasons, in the
/// order of the conditions): a pressure condition says where it stands at the first status and
/// at every change (one absent before counts as Unknown); Ready only when a status it had
/// changes, Unknown (set by the node lifecycle controller) included.
pub fn status_events(previous: &[NodeCondition], next: &[NodeCondition]) -> Vec<&'static str> {
    next.iter()
        .filter_map(|condition| {
            let before = previous.iter().find(|p| p.type_ == condition.type_).map(|p| p.status.as_str());
            let on = condition.status == "True";
            let pick = |yes: &'static str, no: &'static str| if on { yes } else { no };
            let changed = before.unwrap_or("Unknown") != condition.status;
            match condition.type_.as_str() {
                "MemoryPressure" if changed => Some(pick("NodeHasInsufficientMemory", "NodeHasSufficientMemory")),
                "DiskPressure" if changed => Some(pick("NodeHasDiskPressure", "NodeHasNoDiskPressure")),
                "PIDPressure" if changed => Some(pick("NodeHasInsufficientPID", "NodeHasSufficientPID")),
                "Ready" if before.is_some() && changed => Some(pick("NodeReady", "NodeNotReady")),
                _ => None,
            }
        })
        .collect()
}

pub struct NodeAgent {
    client: Client,
    cri: Cri,
    settings: NodeSettings,
    capacity: Capacity,
    pressure: crate::eviction::SharedPressure,
    recorder: Recorder,
}

impl NodeAgent {
    pub fn new(client: Client, cri: Cri, settings: NodeSettings, pressure: crate::eviction::SharedPressure, recorder: Recorder) -> Self {
        let capacity = measure(&settings.data_dir);
        Self { client, cri, settings, capacity, pressure, recorder }
    }

    /// Records the status events of going from `previous` to `next` (once `next` is posted).
    fn record_status_events(&self, previous: Option<&NodeStatus>, next: &NodeStatus) {
        let conditions = |status: Option<&NodeStatus>| status.and_then(|s| s.conditions.clone()).unwrap_or_default();
        let name = &self.settings.name;
        // The kubelet's reference to its node: no namespace (the event lands in "default") and
        // the node's name for uid, which `kubectl describe node` looks for besides the real one.
        let reference = ObjectReference { kind: Some("Node".into()), name: Some(name.clone()), uid: Some(name.clone()), ..Default::default() };
        for reason in status_events(&conditions(previous), &conditions(Some(next))) {
            self.recorder.record_for(reference.clone(), "Normal", reason, format!("Node {name} status is now: {reason}"));
        }
    }

    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    fn resources(&self) -> BTreeMap<String, Quantity> {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(self.capacity.cpus.to_string())),
            ("memory".to_string(), Quantity(format!("{}Ki", self.capacity.memory_bytes / 1024))),
            ("pods".to_string(), Quantity(MAX_PODS.to_string())),
            ("ephemeral-storage".to_string(), Quantity(format!("{}Ki", self.capacity.ephemeral_bytes / 1024))),
        ])
    }

    async fn status(&self, previous: Option<&NodeStatus>, pod_cidr: Option<&str>) -> NodeStatus {
        let now = jiff::Timestamp::now();
        let runtime_version = self.cri.version().await.unwrap_or_default();
        let readiness = self.cri.status().await;
        let cni_written = pod_cidr.is_some() && self.settings.cni_conf_dir.join(CNI_CONFLIST).exists();
        let (ready, message) = match &readiness {
            Ok(r) if r.runtime_ready && r.network_ready && cni_written => (true, "kubelet is posting ready status".to_string()),
            Ok(r) if !r.runtime_ready => (false, format!("container runtime not ready: {}", r.message)),
            Ok(r) if !r.network_ready => (false, format!("container runtime network not ready: {}", r.message)),
            Ok(_) => (false, "container runtime network not ready: waiting for a pod CIDR from the control plane".to_string()),
            Err(error) => (false, format!("container runtime is down: {error}")),
        };
        let old = |type_: &str| previous.and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == type_));
        let pressure = self.pressure.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let says = |under: bool, yes: &'static str, no: &'static str| if under { yes } else { no };
        let conditions = vec![
            condition("MemoryPressure", pressure.memory, "KubeletHasInsufficientMemory", "KubeletHasSufficientMemory", says(pressure.memory, "kubelet has insufficient memory available", "kubelet has sufficient memory available"), now, old("MemoryPressure")),
            condition("DiskPressure", pressure.disk, "KubeletHasDiskPressure", "KubeletHasNoDiskPressure", says(pressure.disk, "kubelet has disk pressure", "kubelet has no disk pressure"), now, old("DiskPressure")),
            condition("PIDPressure", pressure.pid, "KubeletHasInsufficientPID", "KubeletHasSufficientPID", says(pressure.pid, "kubelet has insufficient PID available", "kubelet has sufficient PID available"), now, old("PIDPressure")),
            condition("Ready", ready, "KubeletReady", "KubeletNotReady", &message, now, old("Ready")),
        ];
        NodeStatus {
            capacity: Some(self.resources()),
            allocatable: Some(self.resources()),
            addresses: Some(vec![
                NodeAddress { type_: "InternalIP".into(), address: self.settings.ip.clone() },
                NodeAddress { type_: "Hostname".into(), address: self.settings.name.clone() },
            ]),
            conditions: Some(conditions),
            daemon_endpoints: Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: self.settings.kubelet_port as i32 }) }),
            node_info: Some(NodeSystemInfo {
                architecture: architecture().into(),
                boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
                container_runtime_version: runtime_version,
                kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
                kube_proxy_version: String::new(),
                kubelet_version: KUBELET_VERSION.into(),
                machine_id: read_trimmed("/etc/machine-id"),
                operating_system: "linux".into(),
                os_image: os_image(),
                system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
                swap: None,
            }),
            ..Default::default()
        }
    }

    /// Creates the Node, or takes over an existing one of the same name (an agent restart).
    pub async fn register(&self) -> Result<Node, kube::Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), self.settings.name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), architecture().to_string()),
            ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
            ("beta.kubernetes.io/arch".to_string(), architecture().to_string()),
        ]);
        labels.extend(self.settings.labels.clone());
        let node = match api.get_opt(&self.settings.name).await? {
            Some(node) => {
                let patch = json!({"metadata": {"labels": labels}});
                api.patch(&self.settings.name, &PatchParams::default(), &Patch::Merge(patch)).await?;
                node
            }
            None => {
                let node = Node { metadata: ObjectMeta { name: Some(self.settings.name.clone()), labels: Some(labels), ..Default::default() }, spec: Some(NodeSpec::default()), status: None };
                match api.create(&PostParams::default(), &node).await {
                    Ok(node) => node,
                    Err(kube::Error::Api(status)) if status.code == 409 => api.get(&self.settings.name).await?,
                    Err(error) => return Err(error),
                }
            }
        };
        // A node taken over keeps its conditions' transition times, and only changes are told.
        let status = self.status(node.status.as_ref(), node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref())).await;
        let posted = api.patch_status(&self.settings.name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
        self.record_status_events(node.status.as_ref(), &status);
        Ok(posted)
    }

    /// The status heartbeat, the Lease heartbeat and the CNI configuration, forever.
    pub async fn run(self, mut node: Node) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let mut last_report = std::time::Instant::now();
        let mut last_reported: Option<serde_json::Value> = None;
        let mut lease_copy: Option<Lease> = None;
        loop {
            if let Err(error) = self.renew_lease(&leases, &node, &mut lease_copy).await {
                tracing::warn!(%error, "renewing the node lease");
                lease_copy = None;
            }
            match nodes.get(&self.settings.name).await {
                Ok(fresh) => node = fresh,
                Err(error) => tracing::warn!(%error, "reading the node"),
            }
            let pod_cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.clone());
            if let Some(cidr) = &pod_cidr
                && let Err(error) = write_cni_config(&self.settings.cni_conf_dir, cidr, &self.settings.data_dir)
            {
                tracing::warn!(%error, "writing the CNI configuration");
            }
            let status = self.status(node.status.as_ref(), pod_cidr.as_deref()).await;
            // Compare without heartbeat times: only a real change or the periodic report posts.
            let mut comparable = serde_json::to_value(&status).unwrap_or_default();
            for condition in comparable.pointer_mut("/conditions").and_then(|c| c.as_array_mut()).into_iter().flatten() {
                condition.as_object_mut().map(|c| c.remove("lastHeartbeatTime"));
            }
            if last_reported.as_ref() != Some(&comparable) || last_report.elapsed() >= STATUS_REPORT {
                match nodes.patch_status(&self.settings.name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await {
                    Ok(updated) => {
                        self.record_status_events(node.status.as_ref(), &status);
                        node = updated;
                        last_reported = Some(comparable);
                        last_report = std::time::Instant::now();
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => {
                        tracing::warn!("the node was deleted; registering it again");
                        match self.register().await {
                            Ok(registered) => node = registered,
                            Err(error) => tracing::warn!(%error, "registering the node"),
                        }
                    }
                    Err(error) => tracing::warn!(%error, "posting the node status"),
                }
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
    }

    async fn renew_lease(&self, api: &Api<Lease>, node: &Node, copy: &mut Option<Lease>) -> Result<(), kube::Error> {
        let name = &self.settings.name;
        let mut lease = match copy.take() {
            Some(lease) => lease,
            None => match api.get_opt(name).await? {
                Some(lease) => lease,
                None => Lease { metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(LEASE_NAMESPACE.into()), ..Default::default() }, spec: None },
            },
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(name.clone());
        spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        if lease.metadata.owner_references.as_ref().is_none_or(|o| o.is_empty())
            && let Some(uid) = node.uid()
        {
            lease.metadata.owner_references = Some(vec![OwnerReference { api_version: "v1".into(), kind: "Node".into(), name: name.clone(), uid, ..Default::default() }]);
        }
        let written = if lease.metadata.resource_version.is_some() { api.replace(name, &PostParams::default(), &lease).await? } else { api.create(&PostParams::default(), &lease).await? };
        *copy = Some(written);
        Ok(())
    }
}

pub const CNI_CONFLIST: &str = "10-berth.conflist";
/// The node's pod bridge (created by the CNI bridge plugin at the first sandbox).
pub const BRIDGE: &str = "berth0";

/// The pod network: a bridge per node with host-local addresses from the node's pod CIDR and
/// the portmap plugin for hostPort, from Debian's containernetworking-plugins (routes between
/// nodes and masquerading are network.rs's). containerd's CRI
/// plugin runs them; the file is rewritten only when it would change.
pub fn write_cni_config(dir: &Path, pod_cidr: &str, data_dir: &Path) -> std::io::Result<()> {
    let config = json!({
        "cniVersion": "0.4.0",
        "name": "berth",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                // A bridge left with another CIDR's gateway (this host was another node of an
                // earlier cluster) would otherwise fail every sandbox: the plugin refuses a
                // second IPv4 address unless told to replace it.
                "forceAddress": true,
                // Masquerading is one rule of the agent's (network.rs), not chains per pod.
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": data_dir.join("cni").join("ipam").display().to_string(),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    });
    let text = serde_json::to_string_pretty(&config).unwrap_or_default();
    let path = dir.join(CNI_CONFLIST);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".berth.conflist.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditions(statuses: &[(&str, &str)]) -> Vec<NodeCondition> {
        statuses.iter().map(|(type_, status)| NodeCondition { type_: type_.to_string(), status: status.to_string(), ..Default::default() }).collect()
    }

    #[test]
    fn status_events_follow_the_kubelet() {
        let healthy = conditions(&[("MemoryPressure", "False"), ("DiskPressure", "False"), ("PIDPressure", "False"), ("Ready", "True")]);
        // The first status: where each pressure stands, nothing about Ready.
        assert_eq!(status_events(&[], &healthy), ["NodeHasSufficientMemory", "NodeHasNoDiskPressure", "NodeHasSufficientPID"]);
        assert!(status_events(&healthy, &healthy).is_empty(), "no change, no event");
        let not_ready = conditions(&[("MemoryPressure", "False"), ("DiskPressure", "False"), ("PIDPressure", "False"), ("Ready", "False")]);
        assert_eq!(status_events(&healthy, &not_ready), ["NodeNotReady"]);
        assert_eq!(status_events(&not_ready, &healthy), ["NodeReady"]);
        // Back after the node lifecycle controller marked everything Unknown.
        let unknown = conditions(&[("MemoryPressure", "Unknown"), ("DiskPressure", "Unknown"), ("PIDPressure", "Unknown"), ("Ready", "Unknown")]);
        assert_eq!(status_events(&unknown, &healthy), ["NodeHasSufficientMemory", "NodeHasNoDiskPressure", "NodeHasSufficientPID", "NodeReady"]);
        let pressed = conditions(&[("MemoryPressure", "True"), ("DiskPressure", "True"), ("PIDPressure", "True"), ("Ready", "True")]);
        assert_eq!(status_events(&healthy, &pressed), ["NodeHasInsufficientMemory", "NodeHasDiskPressure", "NodeHasInsufficientPID"]);
    }
}
