//! The pod status the agent reports, computed from the runtime's view of the pod, as the
//! kubelet's status manager computes it: container states, phase, conditions.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodIP, HostIP,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::cri::api;
use crate::runtime_state::{ContainerInfo, PodRuntime};

/// A waiting reason the agent set for a container that has no running instance (image pull
/// failures, configuration errors, back-off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

/// What the sync decided that the runtime cannot tell: waiting reasons, probe results, a pod
/// level failure.
#[derive(Clone, Debug, Default)]
pub struct Observations {
    pub waiting: HashMap<String, Waiting>,
    /// Readiness by container name, from readiness probes; containers without one are ready
    /// when running (and, with a startup probe, started).
    pub ready: HashMap<String, bool>,
    pub started: HashMap<String, bool>,
    /// Pod-level terminal failure (e.g. DeadlineExceeded).
    pub failed: Option<(String, String)>,
    pub pod_ips: Vec<String>,
    pub sandbox_ready: bool,
    /// Termination messages read from the containers' message files, by container ID.
    pub termination_messages: HashMap<String, String>,
}

fn time_from_nanos(nanos: i64) -> Option<Time> {
    if nanos <= 0 {
        return None;
    }
    jiff::Timestamp::from_nanosecond(nanos as i128).ok().map(|t| Time(t.round(jiff::Unit::Second).unwrap_or(t)))
}

fn terminated(info: &ContainerInfo, messages: &HashMap<String, String>) -> ContainerStateTerminated {
    let status = &info.status;
    let reason = if !status.reason.is_empty() && status.reason != "Completed" && status.reason != "Error" {
        // The runtime knows better (OOMKilled, ContainerCannotRun, ...).
        status.reason.clone()
    } else if status.exit_code == 0 {
        "Completed".to_string()
    } else {
        "Error".to_string()
    };
    ContainerStateTerminated {
        container_id: Some(format!("containerd://{}", info.id)),
        exit_code: status.exit_code,
        reason: Some(reason),
        message: messages.get(&info.id).cloned().filter(|m| !m.is_empty()).or_else(|| Some(status.message.clone()).filter(|m| !m.is_empty())),
        started_at: time_from_nanos(status.started_at),
        finished_at: time_from_nanos(status.finished_at),
        signal: None,
    }
}

fn container_status(container: &Container, runtime: &PodRuntime, observed: &Observations) -> ContainerStatus {
    let latest = runtime.latest(&container.name);
    let previous = runtime.previous(&container.name);
    let waiting_override = observed.waiting.get(&container.name);
    let mut status = ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        image_id: String::new(),
        restart_count: latest.map(|c| c.attempt as i32).unwrap_or(0),
        ready: false,
        started: Some(false),
        ..Default::default()
    };
    if let Some(info) = latest {
        status.container_id = Some(format!("containerd://{}", info.id));
        status.image_id = info.status.image_ref.clone();
    }
    let waiting = |reason: &str, message: &str| ContainerState {
        waiting: Some(ContainerStateWaiting { reason: Some(reason.to_string()), message: Some(message.to_string()).filter(|m| !m.is_empty()) }),
        ..Default::default()
    };
    match latest {
        Some(info) if info.is_running() => {
            status.state = Some(ContainerState { running: Some(ContainerStateRunning { started_at: time_from_nanos(info.status.started_at) }), ..Default::default() });
            let started = observed.started.get(&container.name).copied().unwrap_or(true);
            status.started = Some(started);
            status.ready = started && observed.ready.get(&container.name).copied().unwrap_or(true);
            if let Some(prev) = previous.filter(|p| p.is_exited()) {
                status.last_state = Some(ContainerState { terminated: Some(terminated(prev, &observed.termination_messages)), ..Default::default() });
            }
        }
        Some(info) if info.is_exited() => match waiting_override {
            // Exited and waiting to be restarted: the exit is the last state.
            Some(w) => {
                status.state = Some(waiting(&w.reason, &w.message));
                status.last_state = Some(ContainerState { terminated: Some(terminated(info, &observed.termination_messages)), ..Default::default() });
            }
            None => {
                status.state = Some(ContainerState { terminated: Some(terminated(info, &observed.termination_messages)), ..Default::default() });
                if let Some(prev) = previous.filter(|p| p.is_exited()) {
                    status.last_state = Some(ContainerState { terminated: Some(terminated(prev, &observed.termination_messages)), ..Default::default() });
                }
            }
        },
        Some(_) => {
            status.state = Some(match waiting_override {
                Some(w) => waiting(&w.reason, &w.message),
                None => waiting("ContainerCreating", ""),
            });
        }
        None => {
            status.state = Some(match waiting_override {
                Some(w) => waiting(&w.reason, &w.message),
                None => waiting("ContainerCreating", ""),
            });
        }
    }
    status
}

/// Whether an init container is a sidecar (restartable init container).
pub fn is_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

/// The pod's status: containers, phase, conditions, IPs. `previous` is the status the API has, so
/// transition times and the start time stay as they were when nothing changed.
pub fn compute(pod: &Pod, runtime: &PodRuntime, observed: &Observations, host_ip: &str, now: jiff::Timestamp) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let previous = pod.status.clone().unwrap_or_default();
    let restart_policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
    let init_statuses: Vec<ContainerStatus> = spec.init_containers.iter().flatten().map(|c| container_status(c, runtime, observed)).collect();
    let app_statuses: Vec<ContainerStatus> = spec.containers.iter().map(|c| container_status(c, runtime, observed)).collect();

    let init_done = spec.init_containers.iter().flatten().zip(&init_statuses).all(|(c, s)| {
        if is_sidecar(c) {
            s.started == Some(true) || s.state.as_ref().is_some_and(|st| st.running.is_some())
        } else {
            s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code == 0)
        }
    });
    let init_failed = restart_policy == "Never"
        && spec.init_containers.iter().flatten().zip(&init_statuses).any(|(c, s)| !is_sidecar(c) && s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code != 0));

    let phase = if let Some((_, _)) = &observed.failed {
        "Failed".to_string()
    } else if init_failed {
        "Failed".to_string()
    } else if !init_done {
        "Pending".to_string()
    } else {
        app_phase(&app_statuses, &restart_policy)
    };
    // A terminal phase never goes back (the API server refuses it too).
    let phase = match previous.phase.as_deref() {
        Some(p @ ("Succeeded" | "Failed")) => p.to_string(),
        _ => phase,
    };

    let containers_ready = !app_statuses.is_empty() && app_statuses.iter().all(|s| s.ready);
    let readiness_gates_ok = spec.readiness_gates.iter().flatten().all(|gate| previous.conditions.iter().flatten().any(|c| c.type_ == gate.condition_type && c.status == "True"));
    let mut owned: BTreeMap<&str, (bool, Option<&str>, Option<String>)> = BTreeMap::new();
    owned.insert("PodReadyToStartContainers", (observed.sandbox_ready, None, None));
    owned.insert("Initialized", (init_done, (!init_done).then_some("ContainersNotInitialized"), (!init_done).then(|| format!("containers with incomplete status: [{}]", incomplete(spec.init_containers.iter().flatten(), &init_statuses)))));
    let not_ready = || format!("containers with unready status: [{}]", app_statuses.iter().filter(|s| !s.ready).map(|s| s.name.as_str()).collect::<Vec<_>>().join(" "));
    let pod_terminal = phase == "Succeeded" || phase == "Failed";
    let ready = containers_ready && !pod_terminal;
    owned.insert("ContainersReady", (ready, (!ready).then_some(if pod_terminal { "PodCompleted" } else { "ContainersNotReady" }), (!ready && !pod_terminal).then(not_ready)));
    let pod_ready = ready && readiness_gates_ok;
    owned.insert("Ready", (pod_ready, (!pod_ready).then_some(if pod_terminal { "PodCompleted" } else if ready { "ReadinessGatesNotReady" } else { "ContainersNotReady" }), (!pod_ready && !pod_terminal && !ready).then(not_ready)));

    let mut conditions: Vec<PodCondition> = Vec::new();
    for (type_, (status, reason, message)) in &owned {
        let status = if *status { "True" } else { "False" };
        let old = previous.conditions.iter().flatten().find(|c| c.type_ == *type_);
        let transition = match old {
            Some(old) if old.status == status => old.last_transition_time.clone(),
            _ => Some(Time(now)),
        };
        conditions.push(PodCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.map(str::to_string),
            message: message.clone(),
            last_transition_time: transition,
            last_probe_time: None,
            observed_generation: None,
        });
    }
    // Conditions others own (PodScheduled, DisruptionTarget, readiness gates) are kept.
    for condition in previous.conditions.iter().flatten() {
        if !owned.contains_key(condition.type_.as_str()) {
            conditions.push(condition.clone());
        }
    }
    conditions.sort_by_key(|c| condition_order(&c.type_));

    let host_network = spec.host_network.unwrap_or(false);
    let pod_ips: Vec<String> = if host_network { vec![host_ip.to_string()] } else { observed.pod_ips.clone() };
    let (reason, message) = match &observed.failed {
        Some((reason, message)) => (Some(reason.clone()), Some(message.clone())),
        None => (previous.reason.clone().filter(|_| pod_terminal), previous.message.clone().filter(|_| pod_terminal)),
    };
    PodStatus {
        phase: Some(phase),
        conditions: Some(conditions),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP { ip: host_ip.to_string() }]),
        pod_ip: pod_ips.first().cloned().or_else(|| previous.pod_ip.clone()),
        pod_ips: if pod_ips.is_empty() { previous.pod_ips.clone() } else { Some(pod_ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()) },
        start_time: previous.start_time.clone().or(Some(Time(now))),
        init_container_statuses: if init_statuses.is_empty() { None } else { Some(init_statuses) },
        container_statuses: Some(app_statuses),
        qos_class: previous.qos_class.clone().or_else(|| Some(crate::resources::qos_class(pod).to_string())),
        reason,
        message,
        nominated_node_name: previous.nominated_node_name.clone(),
        ..Default::default()
    }
}

fn incomplete<'a>(containers: impl Iterator<Item = &'a Container>, statuses: &[ContainerStatus]) -> String {
    containers
        .zip(statuses)
        .filter(|(c, s)| {
            if is_sidecar(c) {
                s.state.as_ref().is_none_or(|st| st.running.is_none())
            } else {
                s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_none_or(|t| t.exit_code != 0)
            }
        })
        .map(|(c, _)| c.name.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn condition_order(type_: &str) -> usize {
    match type_ {
        "PodReadyToStartContainers" => 0,
        "Initialized" => 1,
        "Ready" => 2,
        "ContainersReady" => 3,
        "PodScheduled" => 4,
        _ => 5,
    }
}

/// The phase from the app containers, as upstream's getPhase: a container waiting after it has
/// run before counts as stopped (it is between restarts).
fn app_phase(statuses: &[ContainerStatus], restart_policy: &str) -> String {
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for status in statuses {
        let state = status.state.clone().unwrap_or_default();
        if state.running.is_some() {
            running += 1;
        } else if let Some(t) = &state.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if state.waiting.is_some() {
            if status.last_state.as_ref().is_some_and(|s| s.terminated.is_some()) {
                stopped += 1;
            } else {
                waiting += 1;
            }
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match restart_policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "OnFailure" => "Running",
            _ => "Failed",
        }
    } else {
        "Pending"
    }
    .to_string()
}

/// The CRI state of a container in the words of the API, for events and logs.
pub fn describe_state(state: i32) -> &'static str {
    match api::ContainerState::try_from(state) {
        Ok(api::ContainerState::ContainerCreated) => "created",
        Ok(api::ContainerState::ContainerRunning) => "running",
        Ok(api::ContainerState::ContainerExited) => "exited",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, state: serde_json::Value, last: Option<serde_json::Value>) -> ContainerStatus {
        serde_json::from_value(serde_json::json!({"name": name, "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": state, "lastState": last})).unwrap()
    }

    #[test]
    fn phase_follows_upstream_rules() {
        let running = serde_json::json!({"running": {}});
        let ok = serde_json::json!({"terminated": {"exitCode": 0}});
        let bad = serde_json::json!({"terminated": {"exitCode": 1}});
        let backoff = serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}});
        let creating = serde_json::json!({"waiting": {"reason": "ContainerCreating"}});
        assert_eq!(app_phase(&[status("a", running.clone(), None)], "Always"), "Running");
        assert_eq!(app_phase(&[status("a", creating, None), status("b", running, None)], "Always"), "Pending");
        assert_eq!(app_phase(&[status("a", ok.clone(), None)], "Never"), "Succeeded");
        assert_eq!(app_phase(&[status("a", ok.clone(), None), status("b", bad.clone(), None)], "Never"), "Failed");
        assert_eq!(app_phase(&[status("a", bad.clone(), None)], "OnFailure"), "Running");
        assert_eq!(app_phase(&[status("a", backoff, Some(bad))], "Always"), "Running");
        assert_eq!(app_phase(&[status("a", ok, None)], "Always"), "Running");
    }
}
