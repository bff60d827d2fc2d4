//! The scheduler's view of pods and nodes: each API object parsed once into what filters and
//! scores need (requests, ports, selectors, affinity terms), and per node the running totals of
//! what its pods request, kept up to date from the watch so no decision reads the API.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, Taint, Toleration};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::jiff::Timestamp;

use crate::resources::{HostPort, PodRequests, Resources, host_ports, pod_requests};
use crate::selectors::{LabelSelector, Labels, NodeTerm, parse_node_selector};

static NO_LABELS: Labels = BTreeMap::new();

/// PriorityClasses by name, resolving a pod's priority the way the Priority admission plugin
/// would have (this API server does not run it, so `spec.priority` may be unset).
#[derive(Clone, Debug, Default)]
pub struct PriorityClasses {
    classes: HashMap<String, ClassInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ClassInfo {
    value: i32,
    global_default: bool,
    preempt_never: bool,
}

/// Built in upstream and always present there; here only when created.
const SYSTEM_CLASSES: [(&str, i32); 2] = [("system-cluster-critical", 2_000_000_000), ("system-node-critical", 2_000_001_000)];

impl PriorityClasses {
    /// Returns whether anything changed.
    pub fn apply(&mut self, class: &PriorityClass) -> bool {
        let Some(name) = class.metadata.name.clone() else { return false };
        let info = ClassInfo { value: class.value, global_default: class.global_default.unwrap_or(false), preempt_never: class.preemption_policy.as_deref() == Some("Never") };
        self.classes.insert(name, info.clone()) != Some(info)
    }

    pub fn remove(&mut self, name: &str) -> bool {
        self.classes.remove(name).is_some()
    }

    pub fn names(&self) -> Vec<String> {
        self.classes.keys().cloned().collect()
    }

    /// (priority, may not preempt) for a pod spec.
    pub fn resolve(&self, priority: Option<i32>, class_name: Option<&str>, preemption_policy: Option<&str>) -> (i32, bool) {
        let class = match class_name.filter(|n| !n.is_empty()) {
            Some(name) => self
                .classes
                .get(name)
                .cloned()
                .or_else(|| SYSTEM_CLASSES.iter().find(|(n, _)| *n == name).map(|(_, value)| ClassInfo { value: *value, global_default: false, preempt_never: false })),
            // Several global defaults: upstream admission picks the lowest value.
            None => self.classes.values().filter(|c| c.global_default).min_by_key(|c| c.value).cloned(),
        };
        let value = priority.or(class.as_ref().map(|c| c.value)).unwrap_or(0);
        let never = match preemption_policy {
            Some(p) => p == "Never",
            None => class.is_some_and(|c| c.preempt_never),
        };
        (value, never)
    }
}

/// A pod affinity term with its namespaces and selector resolved against the pod that owns it.
#[derive(Clone, Debug)]
pub struct AffinityTerm {
    pub namespaces: Vec<String>,
    /// Missing selects no namespace; `{}` selects all.
    pub namespace_selector: LabelSelector,
    pub selector: LabelSelector,
    pub topology_key: String,
}

impl AffinityTerm {
    fn parse(owner_namespace: &str, owner_labels: &Labels, term: &PodAffinityTerm) -> Self {
        let mut namespaces = term.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && term.namespace_selector.is_none() {
            namespaces.push(owner_namespace.to_string());
        }
        let mut selector = LabelSelector::parse(term.label_selector.as_ref());
        // Upstream's API server folds these keys into the selector at pod creation; this one does
        // not, so it happens here, with the same result.
        if term.label_selector.is_some() {
            for key in term.match_label_keys.iter().flatten() {
                if let Some(v) = owner_labels.get(key) {
                    selector.require_equal(key, v);
                }
            }
            for key in term.mismatch_label_keys.iter().flatten() {
                if let Some(v) = owner_labels.get(key) {
                    selector.require_not_equal(key, v);
                }
            }
        }
        AffinityTerm { namespaces, namespace_selector: LabelSelector::parse(term.namespace_selector.as_ref()), selector, topology_key: term.topology_key.clone() }
    }

    /// Whether `pod` is one of the pods this term selects; `namespace_labels` are the labels of
    /// the pod's namespace, when known.
    pub fn matches(&self, pod: &PodInfo, namespace_labels: Option<&Labels>) -> bool {
        let in_namespace = self.namespaces.contains(&pod.namespace) || namespace_labels.is_some_and(|l| self.namespace_selector.matches(l));
        in_namespace && self.selector.matches(pod.labels())
    }
}

#[derive(Clone, Debug)]
pub struct SpreadConstraint {
    pub max_skew: i32,
    pub topology_key: String,
    /// `whenUnsatisfiable: DoNotSchedule` filters; `ScheduleAnyway` only scores.
    pub hard: bool,
    pub selector: LabelSelector,
    pub min_domains: i32,
    /// `nodeAffinityPolicy` (default Honor): only nodes the pod may run on count.
    pub honor_node_affinity: bool,
    /// `nodeTaintsPolicy` (default Ignore).
    pub honor_taints: bool,
}

/// A pod, parsed for scheduling.
#[derive(Clone, Debug)]
pub struct PodInfo {
    /// The whole pod while it waits to be scheduled. Once it is assigned, nothing reads it again
    /// and the driver swaps in [`PodInfo::released`]'s shared empty pod: a typed Pod is ~2 KB
    /// of inline space however little it holds. What is read of assigned pods is below.
    pub pod: Arc<Pod>,
    pub labels: Labels,
    pub resource_version: Option<String>,
    /// `spec.priority`, `spec.priorityClassName` and `spec.preemptionPolicy`, from which the
    /// priority is resolved again when priority classes change.
    pub priority_source: (Option<i32>, Option<String>, Option<String>),
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node_name: String,
    pub scheduler_name: String,
    pub deleting: bool,
    /// Succeeded or Failed: holds no resources.
    pub terminal: bool,
    pub priority: i32,
    /// `preemptionPolicy: Never`.
    pub preempt_never: bool,
    pub requests: PodRequests,
    pub host_ports: Vec<HostPort>,
    pub required_node_terms: Option<Vec<NodeTerm>>,
    pub preferred_node_terms: Vec<(i32, NodeTerm)>,
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<(i32, AffinityTerm)>,
    pub preferred_anti_affinity: Vec<(i32, AffinityTerm)>,
    pub spread: Vec<SpreadConstraint>,
    /// When the pod started running; unset means "not yet", which ranks as the newest.
    pub start_time: Option<Timestamp>,
    /// `status.nominatedNodeName`.
    pub nominated_node: String,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>, classes: &PriorityClasses) -> Self {
        let meta = &pod.metadata;
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.as_ref();
        let namespace = meta.namespace.clone().unwrap_or_default();
        let labels = meta.labels.as_ref().unwrap_or(&NO_LABELS);
        let (priority, preempt_never) = classes.resolve(spec.priority, spec.priority_class_name.as_deref(), spec.preemption_policy.as_deref());
        let priority_source = (spec.priority, spec.priority_class_name.clone(), spec.preemption_policy.clone());
        let affinity = spec.affinity.as_ref();
        let node_affinity = affinity.and_then(|a| a.node_affinity.as_ref());
        let pod_affinity = affinity.and_then(|a| a.pod_affinity.as_ref());
        let pod_anti_affinity = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let terms = |list: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> { list.into_iter().flatten().map(|t| AffinityTerm::parse(&namespace, labels, t)).collect() };
        let spread = spec
            .topology_spread_constraints
            .iter()
            .flatten()
            .map(|c| {
                let mut selector = LabelSelector::parse(c.label_selector.as_ref());
                if c.label_selector.is_some() {
                    for key in c.match_label_keys.iter().flatten() {
                        if let Some(v) = labels.get(key) {
                            selector.require_equal(key, v);
                        }
                    }
                }
                SpreadConstraint {
                    max_skew: c.max_skew,
                    topology_key: c.topology_key.clone(),
                    hard: c.when_unsatisfiable == "DoNotSchedule",
                    selector,
                    min_domains: c.min_domains.unwrap_or(1).max(1),
                    honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                    honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
                }
            })
            .collect();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
        PodInfo {
            uid: meta.uid.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            node_name: spec.node_name.clone().unwrap_or_default(),
            scheduler_name: spec.scheduler_name.clone().unwrap_or_else(|| "default-scheduler".to_string()),
            deleting: meta.deletion_timestamp.is_some(),
            terminal: phase == "Succeeded" || phase == "Failed",
            priority,
            preempt_never,
            requests: pod_requests(&spec),
            host_ports: host_ports(&spec),
            required_node_terms: node_affinity.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()).map(parse_node_selector),
            preferred_node_terms: node_affinity
                .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())
                .into_iter()
                .flatten()
                .map(|p| (p.weight, NodeTerm::parse(&p.preference)))
                .collect(),
            required_affinity: terms(pod_affinity.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())),
            required_anti_affinity: terms(pod_anti_affinity.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())),
            preferred_affinity: pod_affinity
                .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())
                .into_iter()
                .flatten()
                .map(|w| (w.weight, AffinityTerm::parse(&namespace, labels, &w.pod_affinity_term)))
                .collect(),
            preferred_anti_affinity: pod_anti_affinity
                .and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())
                .into_iter()
                .flatten()
                .map(|w| (w.weight, AffinityTerm::parse(&namespace, labels, &w.pod_affinity_term)))
                .collect(),
            spread,
            start_time: status.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
            nominated_node: status.and_then(|s| s.nominated_node_name.clone()).unwrap_or_default(),
            labels: labels.clone(),
            resource_version: meta.resource_version.clone(),
            priority_source,
            namespace,
            pod,
        }
    }

    /// Drops the typed pod once nothing will read it again (see [`PodInfo::pod`]).
    pub fn release_pod(&mut self) {
        static EMPTY: std::sync::OnceLock<Arc<Pod>> = std::sync::OnceLock::new();
        self.pod = EMPTY.get_or_init(|| Arc::new(Pod::default())).clone();
    }

    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    pub fn tolerations(&self) -> &[Toleration] {
        self.pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or(&[])
    }

    pub fn node_selector(&self) -> Option<&BTreeMap<String, String>> {
        self.pod.spec.as_ref().and_then(|s| s.node_selector.as_ref())
    }

    pub fn has_pod_affinity(&self) -> bool {
        !(self.required_affinity.is_empty() && self.required_anti_affinity.is_empty() && self.preferred_affinity.is_empty() && self.preferred_anti_affinity.is_empty())
    }

    /// Whether `self` matches all of its own required affinity terms (the first pod of a group
    /// with affinity to itself may go anywhere its topology exists).
    pub fn matches_own_affinity(&self, namespace_labels: Option<&Labels>) -> bool {
        self.required_affinity.iter().all(|t| t.matches(self, namespace_labels))
    }

    /// A copy assigned to `node`, as the cache holds it between deciding and the watch
    /// confirming the binding.
    pub fn assumed_on(&self, node: &str) -> PodInfo {
        PodInfo { node_name: node.to_string(), ..self.clone() }
    }

    /// Whether a change between `self` and `newer` could change where the pod fits (labels or
    /// spec); status-only writes, including our own, do not.
    pub fn scheduling_relevant_change(&self, newer: &PodInfo) -> bool {
        self.labels != newer.labels || self.pod.spec != newer.pod.spec || self.priority != newer.priority
    }

    /// More important pods are preempted last: higher priority, then running longer.
    pub fn more_important_than(&self, other: &PodInfo) -> bool {
        if self.priority != other.priority {
            return self.priority > other.priority;
        }
        match (self.start_time, other.start_time) {
            (Some(a), Some(b)) => a < b,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// One node and the pods the scheduler counts on it (bound and assumed).
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    /// Missing while pods name a node the watch has not delivered (or has deleted).
    pub node: Option<Arc<Node>>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    pub allowed_pods: i64,
    pub requested: Resources,
    pub non_zero_milli_cpu: i64,
    pub non_zero_memory: i64,
    pub pods: Vec<Arc<PodInfo>>,
    /// One entry per bound host port of each pod (so removing a pod removes exactly its own).
    pub ports: Vec<HostPort>,
    /// Pods with any affinity term, and with required anti-affinity: the affinity checks skip
    /// nodes without them.
    pub pods_with_affinity: usize,
    pub pods_with_required_anti_affinity: usize,
}

impl NodeInfo {
    pub fn placeholder(name: &str) -> Self {
        NodeInfo {
            name: name.to_string(),
            node: None,
            unschedulable: false,
            allocatable: Resources::default(),
            allowed_pods: 0,
            requested: Resources::default(),
            non_zero_milli_cpu: 0,
            non_zero_memory: 0,
            pods: Vec::new(),
            ports: Vec::new(),
            pods_with_affinity: 0,
            pods_with_required_anti_affinity: 0,
        }
    }

    pub fn labels(&self) -> &Labels {
        self.node.as_ref().and_then(|n| n.metadata.labels.as_ref()).unwrap_or(&NO_LABELS)
    }

    pub fn taints(&self) -> &[Taint] {
        self.node.as_ref().and_then(|n| n.spec.as_ref()).and_then(|s| s.taints.as_deref()).unwrap_or(&[])
    }

    /// Installs a new version of the node object; returns whether anything a filter looks at
    /// changed (heartbeats and condition timestamps do not count).
    pub fn set_node(&mut self, node: Arc<Node>) -> bool {
        let spec = node.spec.as_ref();
        let allocatable_list = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let allocatable = allocatable_list.map(Resources::from_list).unwrap_or_default();
        let allowed_pods = allocatable_list.and_then(|l| l.get(crate::resources::PODS)).and_then(|q| crate::quantity::parse_value(&q.0).ok()).unwrap_or(0);
        let unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let relevant = match &self.node {
            None => true,
            Some(old) => {
                old.metadata.labels != node.metadata.labels
                    || old.spec.as_ref().and_then(|s| s.taints.as_ref()) != spec.and_then(|s| s.taints.as_ref())
                    || self.unschedulable != unschedulable
                    || self.allocatable != allocatable
                    || self.allowed_pods != allowed_pods
            }
        };
        self.node = Some(node);
        self.allocatable = allocatable;
        self.allowed_pods = allowed_pods;
        self.unschedulable = unschedulable;
        relevant
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests.requests);
        self.non_zero_milli_cpu += pod.requests.non_zero_milli_cpu;
        self.non_zero_memory += pod.requests.non_zero_memory;
        self.ports.extend(pod.host_ports.iter().cloned());
        if pod.has_pod_affinity() {
            self.pods_with_affinity += 1;
        }
        if !pod.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity += 1;
        }
        self.pods.push(pod);
    }

    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let i = self.pods.iter().position(|p| p.uid == uid)?;
        let pod = self.pods.swap_remove(i);
        self.requested.subtract(&pod.requests.requests);
        self.non_zero_milli_cpu -= pod.requests.non_zero_milli_cpu;
        self.non_zero_memory -= pod.requests.non_zero_memory;
        for port in &pod.host_ports {
            if let Some(j) = self.ports.iter().position(|p| p == port) {
                self.ports.swap_remove(j);
            }
        }
        if pod.has_pod_affinity() {
            self.pods_with_affinity -= 1;
        }
        if !pod.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity -= 1;
        }
        Some(pod)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders for unit tests: nodes and pods from compact JSON.

    use super::*;
    use serde_json::{Value, json};

    pub fn node(name: &str, cpu: &str, memory: &str, pods: i64, extra: Value) -> NodeInfo {
        let mut n = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods.to_string()}},
        });
        merge(&mut n, extra);
        let node: Node = serde_json::from_value(n).expect("node");
        let mut info = NodeInfo::placeholder(name);
        info.set_node(Arc::new(node));
        info
    }

    pub fn pod(name: &str, spec_and_meta: Value) -> PodInfo {
        pod_with_classes(name, spec_and_meta, &PriorityClasses::default())
    }

    pub fn pod_with_classes(name: &str, spec_and_meta: Value, classes: &PriorityClasses) -> PodInfo {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "c"}]},
        });
        merge(&mut p, spec_and_meta);
        PodInfo::new(Arc::new(serde_json::from_value(p).expect("pod")), classes)
    }

    /// `{"cpu": "1"}` requests for a pod spec's only container.
    pub fn requests(resources: Value) -> Value {
        json!({"spec": {"containers": [{"name": "c", "resources": {"requests": resources}}]}})
    }

    pub fn merge(base: &mut Value, extra: Value) {
        match (base, extra) {
            (Value::Object(b), Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn priority_from_spec_class_or_global_default() {
        let mut classes = PriorityClasses::default();
        let class = |name: &str, value: i32, default: bool| -> PriorityClass {
            serde_json::from_value(json!({"metadata": {"name": name}, "value": value, "globalDefault": default})).expect("class")
        };
        assert_eq!(pod_with_classes("a", json!({}), &classes).priority, 0);
        classes.apply(&class("high", 1000, false));
        classes.apply(&class("base", 10, true));
        assert_eq!(pod_with_classes("a", json!({}), &classes).priority, 10);
        assert_eq!(pod_with_classes("a", json!({"spec": {"priorityClassName": "high"}}), &classes).priority, 1000);
        assert_eq!(pod_with_classes("a", json!({"spec": {"priority": 7, "priorityClassName": "high"}}), &classes).priority, 7);
        assert_eq!(pod_with_classes("a", json!({"spec": {"priorityClassName": "system-node-critical"}}), &classes).priority, 2_000_001_000);
        assert!(pod_with_classes("a", json!({"spec": {"preemptionPolicy": "Never"}}), &classes).preempt_never);
    }

    #[test]
    fn node_totals_follow_pods() {
        let mut n = node("n", "4", "8Gi", 110, json!({}));
        let p = Arc::new(pod(
            "a",
            json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1", "example.com/dongle": "1"}}, "ports": [{"containerPort": 80, "hostPort": 80}]}]}}),
        ));
        n.add_pod(p.clone());
        assert_eq!(n.requested.milli_cpu, 1000);
        assert_eq!(n.requested.scalar("example.com/dongle"), 1);
        assert_eq!(n.non_zero_memory, crate::resources::DEFAULT_MEMORY_REQUEST);
        assert_eq!(n.ports.len(), 1);
        assert!(n.remove_pod(&p.uid).is_some());
        assert_eq!(n.requested.milli_cpu, 0);
        assert!(n.ports.is_empty());
        assert_eq!(n.allowed_pods, 110);
        assert_eq!(n.allocatable.memory, 8 << 30);
    }
}
