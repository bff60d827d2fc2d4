//! Resource amounts as integers, and a pod's effective requests computed the way upstream's
//! `resource.PodRequests` does (init containers, sidecars, overhead).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::{parse_milli, parse_value};

pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
pub const PODS: &str = "pods";

/// What a container without a CPU request is assumed to use when spreading load by score
/// (upstream's `DefaultMilliCPURequest`); filters still see zero.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// The memory counterpart (`DefaultMemoryRequest`, 200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Amounts of the resources a pod can request: CPU in millicores, the rest in whole units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Extended resources (`nvidia.com/gpu`, `hugepages-2Mi`, ...), sorted by name. A few at
    /// most, so a sorted vector beats a map.
    pub scalars: Vec<(String, i64)>,
}

impl Resources {
    /// Reads a ResourceList; `pods` is not a requestable amount and is left out. Unparsable
    /// quantities count as zero: validation rejects them before they are stored.
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Self {
        let mut r = Resources::default();
        for (name, q) in list {
            r.set(name, &q.0);
        }
        r
    }

    fn set(&mut self, name: &str, quantity: &str) {
        match name {
            CPU => self.milli_cpu = parse_milli(quantity).unwrap_or(0),
            MEMORY => self.memory = parse_value(quantity).unwrap_or(0),
            EPHEMERAL_STORAGE => self.ephemeral_storage = parse_value(quantity).unwrap_or(0),
            PODS => {}
            other => self.set_scalar(other, parse_value(quantity).unwrap_or(0)),
        }
    }

    pub fn scalar(&self, name: &str) -> i64 {
        match self.scalars.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => self.scalars[i].1,
            Err(_) => 0,
        }
    }

    pub fn set_scalar(&mut self, name: &str, value: i64) {
        match self.scalars.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => self.scalars[i].1 = value,
            Err(i) => self.scalars.insert(i, (name.to_string(), value)),
        }
    }

    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_add(other.ephemeral_storage);
        for (name, v) in &other.scalars {
            let sum = self.scalar(name).saturating_add(*v);
            self.set_scalar(name, sum);
        }
    }

    pub fn subtract(&mut self, other: &Resources) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        for (name, v) in &other.scalars {
            let rest = self.scalar(name) - v;
            self.set_scalar(name, rest);
        }
    }

    /// Each amount becomes the larger of the two.
    pub fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (name, v) in &other.scalars {
            let max = self.scalar(name).max(*v);
            self.set_scalar(name, max);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0 && self.memory == 0 && self.ephemeral_storage == 0 && self.scalars.iter().all(|(_, v)| *v == 0)
    }
}

/// A pod's requests: `requests` is what filters compare with allocatable; `non_zero_*` are what
/// scores use, with defaults standing in for containers that request nothing, so best-effort pods
/// still spread instead of piling onto one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRequests {
    pub requests: Resources,
    pub non_zero_milli_cpu: i64,
    pub non_zero_memory: i64,
}

/// A container's requests; a resource with a limit but no request requests its limit, as API
/// defaulting makes it upstream.
fn container_requests(container: &Container, non_zero: bool) -> Resources {
    let mut r = Resources::default();
    let resources = container.resources.as_ref();
    let requests = resources.and_then(|r| r.requests.as_ref());
    let limits = resources.and_then(|r| r.limits.as_ref());
    if let Some(limits) = limits {
        for (name, q) in limits {
            if requests.is_none_or(|req| !req.contains_key(name)) {
                r.set(name, &q.0);
            }
        }
    }
    if let Some(requests) = requests {
        for (name, q) in requests {
            r.set(name, &q.0);
        }
    }
    if non_zero {
        let has = |name: &str| requests.is_some_and(|m| m.contains_key(name)) || limits.is_some_and(|m| m.contains_key(name));
        if !has(CPU) {
            r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
        }
        if !has(MEMORY) {
            r.memory = DEFAULT_MEMORY_REQUEST;
        }
    }
    r
}

fn sum_requests(spec: &PodSpec, non_zero: bool) -> Resources {
    let mut total = Resources::default();
    for c in &spec.containers {
        total.add(&container_requests(c, non_zero));
    }
    // Sidecars (restartable init containers) run beside everything started after them; a plain
    // init container runs alone, beside only the sidecars started before it. The pod needs the
    // larger of the steady state and the biggest init step.
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let own = container_requests(c, non_zero);
        if c.restart_policy.as_deref() == Some("Always") {
            total.add(&own);
            sidecars.add(&own);
            init_peak.max_with(&sidecars);
        } else {
            let mut step = own;
            step.add(&sidecars);
            init_peak.max_with(&step);
        }
    }
    total.max_with(&init_peak);
    if let Some(overhead) = &spec.overhead {
        total.add(&Resources::from_list(overhead));
    }
    total
}

pub fn pod_requests(spec: &PodSpec) -> PodRequests {
    let requests = sum_requests(spec, false);
    let non_zero = sum_requests(spec, true);
    PodRequests { requests, non_zero_milli_cpu: non_zero.milli_cpu, non_zero_memory: non_zero.memory }
}

/// A host port a pod binds, with upstream's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

const BIND_ALL: &str = "0.0.0.0";

impl HostPort {
    /// Two bindings clash on the same protocol and port when either binds every address or both
    /// bind the same one.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port && self.protocol == other.protocol && (self.ip == BIND_ALL || other.ip == BIND_ALL || self.ip == other.ip)
    }
}

pub fn host_ports(spec: &PodSpec) -> Vec<HostPort> {
    let mut ports = Vec::new();
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            let Some(port) = p.host_port.filter(|p| *p > 0) else { continue };
            let ip = p.host_ip.clone().filter(|ip| !ip.is_empty()).unwrap_or_else(|| BIND_ALL.to_string());
            let protocol = p.protocol.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "TCP".to_string());
            ports.push(HostPort { ip, protocol, port });
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> PodSpec {
        serde_json::from_value(value).expect("pod spec")
    }

    #[test]
    fn containers_sum_and_limits_stand_in_for_missing_requests() {
        let s = spec(json!({"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "1", "nvidia.com/gpu": "2"}, "requests": {"memory": "1Gi"}}},
        ]}));
        let r = pod_requests(&s);
        assert_eq!(r.requests.milli_cpu, 1250);
        assert_eq!(r.requests.memory, 64 * 1024 * 1024 + (1 << 30));
        assert_eq!(r.requests.scalar("nvidia.com/gpu"), 2);
        assert_eq!(r.non_zero_milli_cpu, 1250);
    }

    #[test]
    fn init_containers_take_the_max_and_sidecars_add_up() {
        // Regular: 1 cpu. Plain init: 3 cpu (alone). Sidecar: 500m, running beside everything.
        let s = spec(json!({
            "initContainers": [
                {"name": "init", "resources": {"requests": {"cpu": "3"}}},
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}},
                {"name": "late-init", "resources": {"requests": {"cpu": "2"}}},
            ],
            "containers": [{"name": "main", "resources": {"requests": {"cpu": "1"}}}],
            "overhead": {"cpu": "100m", "memory": "10Mi"},
        }));
        let r = pod_requests(&s);
        // max(1 + 0.5 steady, 3 first init, 2 + 0.5 late init) + 0.1 overhead
        assert_eq!(r.requests.milli_cpu, 3100);
        assert_eq!(r.requests.memory, 10 * 1024 * 1024);
    }

    #[test]
    fn scores_see_defaults_for_best_effort_containers() {
        let s = spec(json!({"containers": [{"name": "a"}, {"name": "b", "resources": {"requests": {"cpu": "0"}}}]}));
        let r = pod_requests(&s);
        assert!(r.requests.is_zero());
        // "0" is an explicit request and stays zero; only missing requests get the default.
        assert_eq!(r.non_zero_milli_cpu, DEFAULT_MILLI_CPU_REQUEST);
        assert_eq!(r.non_zero_memory, 2 * DEFAULT_MEMORY_REQUEST);
    }

    #[test]
    fn host_port_conflicts() {
        let all = HostPort { ip: "0.0.0.0".into(), protocol: "TCP".into(), port: 80 };
        let one = HostPort { ip: "10.0.0.1".into(), protocol: "TCP".into(), port: 80 };
        let other = HostPort { ip: "10.0.0.2".into(), protocol: "TCP".into(), port: 80 };
        let udp = HostPort { ip: "0.0.0.0".into(), protocol: "UDP".into(), port: 80 };
        assert!(all.conflicts(&one) && one.conflicts(&all));
        assert!(!one.conflicts(&other));
        assert!(one.conflicts(&one.clone()));
        assert!(!all.conflicts(&udp));
        let s = spec(json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]}]}));
        assert_eq!(host_ports(&s), vec![HostPort { ip: "0.0.0.0".into(), protocol: "TCP".into(), port: 8080 }]);
    }
}
