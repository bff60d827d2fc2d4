//! What the runtime holds for one pod, read back from CRI. The agent keeps no state of its own
//! about containers: like the kubelet, it derives everything from sandbox and container labels,
//! so a restarted agent picks up where it left off.

use std::collections::HashMap;

use crate::cri::{Cri, CriError, api};

pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Marks sandboxes and containers this agent made, so it never touches anything else in the
/// runtime (a shared containerd may run other workloads).
pub const LABEL_MANAGED: &str = "berth.dev/managed";
pub const ANNOTATION_TERMINATION_GRACE: &str = "io.kubernetes.pod.terminationGracePeriod";

#[derive(Clone, Debug)]
pub struct SandboxInfo {
    pub id: String,
    pub attempt: u32,
    pub ready: bool,
    pub created_at: i64,
    pub ip: Option<String>,
    pub extra_ips: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub attempt: u32,
    pub sandbox_id: String,
    pub status: api::ContainerStatus,
}

impl ContainerInfo {
    pub fn state(&self) -> api::ContainerState {
        api::ContainerState::try_from(self.status.state).unwrap_or(api::ContainerState::ContainerUnknown)
    }
    pub fn is_running(&self) -> bool {
        self.state() == api::ContainerState::ContainerRunning
    }
    pub fn is_exited(&self) -> bool {
        self.state() == api::ContainerState::ContainerExited
    }
}

/// Every sandbox and container of one pod, newest first.
#[derive(Clone, Debug, Default)]
pub struct PodRuntime {
    pub sandboxes: Vec<SandboxInfo>,
    pub containers: Vec<ContainerInfo>,
}

impl PodRuntime {
    pub fn current_sandbox(&self) -> Option<&SandboxInfo> {
        self.sandboxes.first()
    }

    /// The newest instance of the named container (in the current sandbox or any earlier one).
    pub fn latest(&self, name: &str) -> Option<&ContainerInfo> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The instance before the newest one, for `kubectl logs --previous` and `lastState`.
    pub fn previous(&self, name: &str) -> Option<&ContainerInfo> {
        self.containers.iter().filter(|c| c.name == name).nth(1)
    }

    pub fn is_empty(&self) -> bool {
        self.sandboxes.is_empty() && self.containers.is_empty()
    }
}

fn pod_filter(uid: &str) -> HashMap<String, String> {
    HashMap::from([(LABEL_POD_UID.to_string(), uid.to_string())])
}

/// Reads the runtime's view of the pod with this UID.
pub async fn inspect_pod(cri: &Cri, uid: &str) -> Result<PodRuntime, CriError> {
    let mut runtime = cri.runtime.clone();
    let sandboxes = runtime
        .list_pod_sandbox(api::ListPodSandboxRequest {
            filter: Some(api::PodSandboxFilter { label_selector: pod_filter(uid), ..Default::default() }),
        })
        .await?
        .into_inner()
        .items;
    let mut infos = Vec::with_capacity(sandboxes.len());
    for sandbox in sandboxes {
        let ready = sandbox.state == api::PodSandboxState::SandboxReady as i32;
        let (mut ip, mut extra_ips) = (None, Vec::new());
        if ready {
            match runtime.pod_sandbox_status(api::PodSandboxStatusRequest { pod_sandbox_id: sandbox.id.clone(), verbose: false }).await {
                Ok(status) => {
                    if let Some(network) = status.into_inner().status.and_then(|s| s.network) {
                        ip = Some(network.ip).filter(|ip| !ip.is_empty());
                        extra_ips = network.additional_ips.into_iter().map(|p| p.ip).collect();
                    }
                }
                Err(status) if status.code() == tonic::Code::NotFound => continue,
                Err(status) => return Err(status.into()),
            }
        }
        infos.push(SandboxInfo { id: sandbox.id, attempt: sandbox.metadata.map(|m| m.attempt).unwrap_or(0), ready, created_at: sandbox.created_at, ip, extra_ips });
    }
    infos.sort_by(|a, b| b.created_at.cmp(&a.created_at));

    let listed = runtime
        .list_containers(api::ListContainersRequest { filter: Some(api::ContainerFilter { label_selector: pod_filter(uid), ..Default::default() }) })
        .await?
        .into_inner()
        .containers;
    let mut containers = Vec::with_capacity(listed.len());
    for container in listed {
        let status = match runtime.container_status(api::ContainerStatusRequest { container_id: container.id.clone(), verbose: false }).await {
            Ok(response) => match response.into_inner().status {
                Some(status) => status,
                None => continue,
            },
            // Removed between the list and the status call.
            Err(status) if status.code() == tonic::Code::NotFound => continue,
            Err(status) => return Err(status.into()),
        };
        let metadata = container.metadata.unwrap_or_default();
        containers.push(ContainerInfo { id: container.id, name: metadata.name, attempt: metadata.attempt, sandbox_id: container.pod_sandbox_id, status });
    }
    // Newest first: by attempt, then creation time (a new sandbox restarts attempts from the
    // previous maximum, so attempt order is creation order).
    containers.sort_by(|a, b| (b.attempt, b.status.created_at).cmp(&(a.attempt, a.status.created_at)));
    Ok(PodRuntime { sandboxes: infos, containers })
}

/// UIDs of every pod that has anything in the runtime made by this agent.
pub async fn pods_in_runtime(cri: &Cri) -> Result<Vec<String>, CriError> {
    let mut runtime = cri.runtime.clone();
    let managed = HashMap::from([(LABEL_MANAGED.to_string(), "true".to_string())]);
    let sandboxes = runtime
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: Some(api::PodSandboxFilter { label_selector: managed.clone(), ..Default::default() }) })
        .await?
        .into_inner()
        .items;
    let containers = runtime
        .list_containers(api::ListContainersRequest { filter: Some(api::ContainerFilter { label_selector: managed, ..Default::default() }) })
        .await?
        .into_inner()
        .containers;
    let mut uids: Vec<String> = sandboxes.iter().filter_map(|s| s.labels.get(LABEL_POD_UID).cloned()).chain(containers.iter().filter_map(|c| c.labels.get(LABEL_POD_UID).cloned())).collect();
    uids.sort();
    uids.dedup();
    Ok(uids)
}
