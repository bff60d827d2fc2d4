//! Filters: whether a pod may run on a node, with upstream's plugin order and failure reasons.
//!
//! Per-pod work that does not depend on the node (the topology counts behind inter-pod affinity
//! and topology spread) happens once in [`CycleState::prepare`], so the per-node check is a few
//! map lookups and can run over thousands of nodes per pod.

use std::borrow::Cow;
use std::collections::HashMap;

use k8s_openapi::api::core::v1::Taint;

use crate::cluster::Cluster;
use crate::model::{NodeInfo, PodInfo};
use crate::resources::{HostPort, Resources};
use crate::selectors::{Labels, any_term_matches, first_untolerated, tolerated};

pub const ERR_NODE_NAME: &str = "node(s) didn't match the requested node name";
pub const ERR_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const ERR_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const ERR_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const ERR_TOO_MANY_PODS: &str = "Too many pods";
pub const ERR_POD_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const ERR_POD_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const ERR_EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";
pub const ERR_SPREAD: &str = "node(s) didn't match pod topology spread constraints";
pub const ERR_SPREAD_LABEL: &str = "node(s) didn't match pod topology spread constraints (missing required label)";

/// The filter plugins, in upstream's default order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Plugin {
    NodeUnschedulable,
    NodeName,
    TaintToleration,
    NodeAffinity,
    NodePorts,
    NodeResourcesFit,
    PodTopologySpread,
    InterPodAffinity,
    VolumeBinding,
}

impl Plugin {
    pub const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// Why one node was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub plugin: Plugin,
    /// Upstream's `UnschedulableAndUnresolvable`: evicting pods from this node would not help,
    /// so preemption skips it.
    pub unresolvable: bool,
    pub reasons: Vec<Cow<'static, str>>,
}

impl Status {
    fn new(plugin: Plugin, unresolvable: bool, reason: impl Into<Cow<'static, str>>) -> Self {
        Status { plugin, unresolvable, reasons: vec![reason.into()] }
    }
}

pub type Outcome = Result<(), Status>;

/// Topology pair counts: topology key -> value -> count.
#[derive(Clone, Debug, Default)]
pub struct TopologyCounts(HashMap<String, HashMap<String, i64>>);

impl TopologyCounts {
    fn add(&mut self, key: &str, labels: &Labels, delta: i64) {
        let Some(value) = labels.get(key) else { return };
        // Look up before inserting: most calls hit an existing pair and need no allocation.
        if !self.0.contains_key(key) {
            self.0.insert(key.to_string(), HashMap::new());
        }
        let Some(values) = self.0.get_mut(key) else { return };
        let n = match values.get_mut(value) {
            Some(n) => n,
            None => values.entry(value.clone()).or_insert(0),
        };
        *n += delta;
        if *n == 0 {
            values.remove(value);
        }
    }

    pub fn get(&self, key: &str, value: &str) -> i64 {
        self.0.get(key).and_then(|m| m.get(value)).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(HashMap::is_empty)
    }
}

/// Inter-pod affinity counts for one incoming pod (upstream's preFilterState).
#[derive(Clone, Debug, Default)]
pub struct AffinityState {
    /// Where existing pods' required anti-affinity terms select the incoming pod.
    pub existing_anti: TopologyCounts,
    /// Where pods matching all of the incoming pod's required affinity terms run.
    pub affinity: TopologyCounts,
    /// Where pods matching the incoming pod's required anti-affinity terms run.
    pub anti: TopologyCounts,
}

impl AffinityState {
    /// Adds (`delta` 1) or removes (-1) `other`, running on a node with `node_labels`.
    pub fn update(&mut self, cluster: &Cluster, pod: &PodInfo, other: &PodInfo, node_labels: &Labels, delta: i64) {
        let pod_ns = cluster.namespace_labels(&pod.namespace);
        for term in &other.required_anti_affinity {
            if term.matches(pod, pod_ns) {
                self.existing_anti.add(&term.topology_key, node_labels, delta);
            }
        }
        if pod.required_affinity.is_empty() && pod.required_anti_affinity.is_empty() {
            return;
        }
        let other_ns = cluster.namespace_labels(&other.namespace);
        if !pod.required_affinity.is_empty() && pod.required_affinity.iter().all(|t| t.matches(other, other_ns)) {
            for term in &pod.required_affinity {
                self.affinity.add(&term.topology_key, node_labels, delta);
            }
        }
        for term in &pod.required_anti_affinity {
            if term.matches(other, other_ns) {
                self.anti.add(&term.topology_key, node_labels, delta);
            }
        }
    }
}

/// Topology spread counts for the incoming pod's `DoNotSchedule` constraints.
#[derive(Clone, Debug, Default)]
pub struct SpreadState {
    /// Indexes into the pod's constraints.
    pub constraints: Vec<usize>,
    /// Per constraint: topology value -> matching pods, for every eligible domain (zero included).
    pub counts: Vec<HashMap<String, i64>>,
    /// Per constraint: the global minimum the skew is measured against.
    pub min: Vec<i64>,
}

impl SpreadState {
    fn recompute_min(&mut self, pod: &PodInfo) {
        self.min = self
            .constraints
            .iter()
            .zip(&self.counts)
            .map(|(&ci, counts)| {
                let c = &pod.spread[ci];
                // Fewer domains than minDomains: the missing ones count as empty.
                if (counts.len() as i64) < i64::from(c.min_domains) { 0 } else { counts.values().copied().min().unwrap_or(0) }
            })
            .collect();
    }

    /// Adds or removes `other` (preemption simulates removing victims).
    pub fn update(&mut self, pod: &PodInfo, other: &PodInfo, node: &NodeInfo, delta: i64) {
        if other.namespace != pod.namespace || other.deleting {
            return;
        }
        let labels = node.labels();
        for (k, &ci) in self.constraints.iter().enumerate() {
            let c = &pod.spread[ci];
            if let Some(value) = labels.get(&c.topology_key)
                && let Some(n) = self.counts[k].get_mut(value)
                && c.selector.matches(other.labels())
            {
                *n += delta;
            }
        }
        self.recompute_min(pod);
    }
}

/// Everything the filters of one scheduling attempt share.
#[derive(Clone)]
pub struct CycleState<'a> {
    pub pod: &'a PodInfo,
    pub affinity: Option<AffinityState>,
    pub spread: Option<SpreadState>,
    pub volumes: Option<crate::volumebinding::PodVolumes>,
}

/// Whether the pod's nodeSelector and required node affinity allow `node`.
pub fn node_affinity_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let labels = node.labels();
    if let Some(selector) = pod.node_selector()
        && !selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    match &pod.required_node_terms {
        Some(terms) => any_term_matches(terms, &node.name, labels),
        None => true,
    }
}

fn no_schedule(t: &Taint) -> bool {
    t.effect == "NoSchedule" || t.effect == "NoExecute"
}

impl<'a> CycleState<'a> {
    pub fn prepare(cluster: &Cluster, pod: &'a PodInfo) -> Self {
        CycleState { pod, affinity: prepare_affinity(cluster, pod), spread: prepare_spread(cluster, pod), volumes: crate::volumebinding::PodVolumes::prepare(&cluster.volumes, pod) }
    }
}

fn prepare_affinity(cluster: &Cluster, pod: &PodInfo) -> Option<AffinityState> {
    let incoming = !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty();
    if !incoming && !cluster.any_pod_with_required_anti_affinity() {
        return None;
    }
    let mut state = AffinityState::default();
    let pod_ns = cluster.namespace_labels(&pod.namespace);
    for other in cluster.pods_with_required_anti_affinity() {
        let Some((_, node)) = cluster.node_of(other) else { continue };
        for term in &other.required_anti_affinity {
            if term.matches(pod, pod_ns) {
                state.existing_anti.add(&term.topology_key, node.labels(), 1);
            }
        }
    }
    // Pods matching all affinity terms are among those matching the first.
    if let Some(first) = pod.required_affinity.first() {
        for other in cluster.candidates(&first.selector) {
            let Some((_, node)) = cluster.node_of(other) else { continue };
            let other_ns = cluster.namespace_labels(&other.namespace);
            if pod.required_affinity.iter().all(|t| t.matches(other, other_ns)) {
                for term in &pod.required_affinity {
                    state.affinity.add(&term.topology_key, node.labels(), 1);
                }
            }
        }
    }
    for term in &pod.required_anti_affinity {
        for other in cluster.candidates(&term.selector) {
            let Some((_, node)) = cluster.node_of(other) else { continue };
            if term.matches(other, cluster.namespace_labels(&other.namespace)) {
                state.anti.add(&term.topology_key, node.labels(), 1);
            }
        }
    }
    Some(state)
}

fn prepare_spread(cluster: &Cluster, pod: &PodInfo) -> Option<SpreadState> {
    let constraints: Vec<usize> = pod.spread.iter().enumerate().filter(|(_, c)| c.hard).map(|(i, _)| i).collect();
    if constraints.is_empty() {
        return None;
    }
    // Every eligible node's domain counts, even with no matching pod: per constraint, the domain
    // of each node index.
    let mut counts = vec![HashMap::new(); constraints.len()];
    let mut domain_of: Vec<Vec<Option<&str>>> = vec![vec![None; cluster.nodes.len()]; constraints.len()];
    for &i in &cluster.order {
        let node = &cluster.nodes[i];
        let labels = node.labels();
        if !constraints.iter().all(|&ci| labels.contains_key(&pod.spread[ci].topology_key)) {
            continue;
        }
        for (k, &ci) in constraints.iter().enumerate() {
            let c = &pod.spread[ci];
            if c.honor_node_affinity && !node_affinity_matches(pod, node) {
                continue;
            }
            if c.honor_taints && first_untolerated(node.taints(), pod.tolerations(), no_schedule).is_some() {
                continue;
            }
            let Some(value) = labels.get(&c.topology_key) else { continue };
            if !counts[k].contains_key(value) {
                counts[k].insert(value.clone(), 0);
            }
            domain_of[k][i] = Some(value.as_str());
        }
    }
    for (k, &ci) in constraints.iter().enumerate() {
        let c = &pod.spread[ci];
        for other in cluster.candidates(&c.selector) {
            if other.deleting || other.namespace != pod.namespace || !c.selector.matches(other.labels()) {
                continue;
            }
            if let Some(value) = cluster.node_index(&other.node_name).and_then(|i| domain_of[k][i])
                && let Some(n) = counts[k].get_mut(value)
            {
                *n += 1;
            }
        }
    }
    let mut state = SpreadState { constraints, counts, min: Vec::new() };
    state.recompute_min(pod);
    Some(state)
}

/// Pods nominated to a node that a filter must treat as already there: equal or higher
/// priority than the incoming pod (lower ones would be preempted anyway).
#[derive(Default)]
pub struct Nominated {
    pub pods: i64,
    pub requests: Resources,
    pub ports: Vec<HostPort>,
}

impl Nominated {
    pub fn on(cluster: &Cluster, pod: &PodInfo, node: &str) -> Option<Nominated> {
        if !cluster.has_nominations() {
            return None;
        }
        let mut extra: Option<Nominated> = None;
        for p in cluster.nominated_on(node) {
            if p.uid == pod.uid || p.priority < pod.priority {
                continue;
            }
            let e = extra.get_or_insert_with(Nominated::default);
            e.pods += 1;
            e.requests.add(&p.requests.requests);
            e.ports.extend(p.host_ports.iter().cloned());
        }
        extra
    }
}

/// Runs every filter in order and stops at the first rejection, as upstream does.
pub fn run_filters(cluster: &Cluster, state: &CycleState, node: &NodeInfo) -> Outcome {
    let pod = state.pod;
    node_unschedulable(pod, node)?;
    node_name(pod, node)?;
    taint_toleration(pod, node)?;
    node_affinity(pod, node)?;
    let nominated = Nominated::on(cluster, pod, &node.name);
    node_ports(pod, node, nominated.as_ref())?;
    resource_fit(pod, node, nominated.as_ref())?;
    if let Some(volumes) = &state.volumes {
        volumes.filter(node)?;
    }
    if let Some(spread) = &state.spread {
        topology_spread(pod, spread, node)?;
    }
    if let Some(affinity) = &state.affinity {
        inter_pod_affinity(cluster, pod, affinity, node)?;
    }
    Ok(())
}

pub fn node_unschedulable(pod: &PodInfo, node: &NodeInfo) -> Outcome {
    if !node.unschedulable {
        return Ok(());
    }
    let taint = Taint { key: "node.kubernetes.io/unschedulable".into(), effect: "NoSchedule".into(), ..Default::default() };
    if tolerated(pod.tolerations(), &taint) { Ok(()) } else { Err(Status::new(Plugin::NodeUnschedulable, true, ERR_UNSCHEDULABLE)) }
}

pub fn node_name(pod: &PodInfo, node: &NodeInfo) -> Outcome {
    if pod.node_name.is_empty() || pod.node_name == node.name { Ok(()) } else { Err(Status::new(Plugin::NodeName, true, ERR_NODE_NAME)) }
}

pub fn taint_toleration(pod: &PodInfo, node: &NodeInfo) -> Outcome {
    match first_untolerated(node.taints(), pod.tolerations(), no_schedule) {
        None => Ok(()),
        Some(t) => Err(Status::new(Plugin::TaintToleration, true, format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.as_deref().unwrap_or("")))),
    }
}

pub fn node_affinity(pod: &PodInfo, node: &NodeInfo) -> Outcome {
    if node_affinity_matches(pod, node) { Ok(()) } else { Err(Status::new(Plugin::NodeAffinity, true, ERR_NODE_AFFINITY)) }
}

pub fn node_ports(pod: &PodInfo, node: &NodeInfo, nominated: Option<&Nominated>) -> Outcome {
    if pod.host_ports.is_empty() {
        return Ok(());
    }
    let nominated_ports = nominated.map_or(&[][..], |n| n.ports.as_slice());
    let mut used = node.ports.iter().chain(nominated_ports);
    if used.any(|u| pod.host_ports.iter().any(|want| u.conflicts(want))) {
        return Err(Status::new(Plugin::NodePorts, false, ERR_PORTS));
    }
    Ok(())
}

/// Requests against allocatable, reporting every resource that is short (upstream keeps all).
pub fn resource_fit(pod: &PodInfo, node: &NodeInfo, nominated: Option<&Nominated>) -> Outcome {
    let mut reasons: Vec<Cow<'static, str>> = Vec::new();
    let mut unresolvable = false;
    let extra_pods = nominated.map_or(0, |n| n.pods);
    if node.pods.len() as i64 + extra_pods + 1 > node.allowed_pods {
        reasons.push(ERR_TOO_MANY_PODS.into());
    }
    let want = &pod.requests.requests;
    if !want.is_zero() {
        let alloc = &node.allocatable;
        let extra = nominated.map(|n| &n.requests);
        let used = |f: fn(&Resources) -> i64| f(&node.requested) + extra.map_or(0, f);
        let mut check = |need: i64, allocatable: i64, used: i64, reason: Cow<'static, str>| {
            if need > 0 && need > allocatable - used {
                reasons.push(reason);
                unresolvable |= need > allocatable;
            }
        };
        check(want.milli_cpu, alloc.milli_cpu, used(|r| r.milli_cpu), "Insufficient cpu".into());
        check(want.memory, alloc.memory, used(|r| r.memory), "Insufficient memory".into());
        check(want.ephemeral_storage, alloc.ephemeral_storage, used(|r| r.ephemeral_storage), "Insufficient ephemeral-storage".into());
        for (name, need) in &want.scalars {
            let used = node.requested.scalar(name) + extra.map_or(0, |e| e.scalar(name));
            check(*need, alloc.scalar(name), used, format!("Insufficient {name}").into());
        }
    }
    if reasons.is_empty() { Ok(()) } else { Err(Status { plugin: Plugin::NodeResourcesFit, unresolvable, reasons }) }
}

pub fn topology_spread(pod: &PodInfo, state: &SpreadState, node: &NodeInfo) -> Outcome {
    let labels = node.labels();
    for (k, &ci) in state.constraints.iter().enumerate() {
        let c = &pod.spread[ci];
        let Some(value) = labels.get(&c.topology_key) else {
            return Err(Status::new(Plugin::PodTopologySpread, true, ERR_SPREAD_LABEL));
        };
        let self_match = i64::from(c.selector.matches(pod.labels()));
        let matching = state.counts[k].get(value).copied().unwrap_or(0);
        if matching + self_match - state.min[k] > i64::from(c.max_skew) {
            return Err(Status::new(Plugin::PodTopologySpread, false, ERR_SPREAD));
        }
    }
    Ok(())
}

pub fn inter_pod_affinity(cluster: &Cluster, pod: &PodInfo, state: &AffinityState, node: &NodeInfo) -> Outcome {
    let labels = node.labels();
    // Affinity: every term needs a matching pod in this node's domain; all topology keys must
    // exist on the node.
    let mut pods_exist = true;
    for term in &pod.required_affinity {
        match labels.get(&term.topology_key) {
            Some(value) => {
                if state.affinity.get(&term.topology_key, value) <= 0 {
                    pods_exist = false;
                }
            }
            None => return Err(Status::new(Plugin::InterPodAffinity, true, ERR_POD_AFFINITY)),
        }
    }
    // The first pod of a group with affinity to itself has nothing to join yet.
    let first_of_group = state.affinity.is_empty() && pod.matches_own_affinity(cluster.namespace_labels(&pod.namespace));
    if !pods_exist && !first_of_group {
        return Err(Status::new(Plugin::InterPodAffinity, true, ERR_POD_AFFINITY));
    }
    if !state.anti.is_empty() {
        for term in &pod.required_anti_affinity {
            if let Some(value) = labels.get(&term.topology_key)
                && state.anti.get(&term.topology_key, value) > 0
            {
                return Err(Status::new(Plugin::InterPodAffinity, false, ERR_POD_ANTI_AFFINITY));
            }
        }
    }
    if !state.existing_anti.is_empty() && labels.iter().any(|(k, v)| state.existing_anti.get(k, v) > 0) {
        return Err(Status::new(Plugin::InterPodAffinity, false, ERR_EXISTING_ANTI_AFFINITY));
    }
    Ok(())
}

/// "0/N nodes are available: <count> <reason>, ...": every reason of every rejected node,
/// counted, sorted as strings (so "10 x" sorts before "2 y", as upstream's does).
pub fn histogram<'s>(statuses: impl Iterator<Item = &'s Status>, absent: Option<(&str, usize)>) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in statuses {
        for r in &s.reasons {
            *counts.entry(r.as_ref()).or_insert(0) += 1;
        }
    }
    if let Some((reason, n)) = absent.filter(|(_, n)| *n > 0) {
        *counts.entry(reason).or_insert(0) += n;
    }
    let mut parts: Vec<String> = counts.into_iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    parts.join(", ")
}

/// A pod that fits no node: the per-node reasons, and what preemption had to say.
#[derive(Clone, Debug)]
pub struct FitError {
    pub num_all_nodes: usize,
    /// One status per node that was checked and rejected, by node index.
    pub statuses: Vec<(usize, Status)>,
    /// "preemption: ..." when preemption ran and did not nominate a node.
    pub post_filter: Option<String>,
}

impl FitError {
    pub fn message(&self) -> String {
        let mut msg = format!("0/{} nodes are available", self.num_all_nodes);
        let reasons = histogram(self.statuses.iter().map(|(_, s)| s), None);
        msg.push(':');
        if !reasons.is_empty() {
            msg.push(' ');
            msg.push_str(&reasons);
            msg.push('.');
        }
        if let Some(post) = &self.post_filter {
            msg.push(' ');
            msg.push_str(post);
        }
        msg
    }

    /// The plugins that rejected some node, as a bit set (what cluster events may fix).
    pub fn rejectors(&self) -> u16 {
        self.statuses.iter().fold(0, |acc, (_, s)| acc | s.plugin.bit())
    }
}

/// Shared by tests of this crate: a cluster holding `nodes` and the `pods` bound to them.
#[cfg(test)]
pub(crate) fn cluster_of(nodes: Vec<NodeInfo>, pods: Vec<PodInfo>) -> Cluster {
    let mut c = Cluster::default();
    for n in nodes {
        if let Some(node) = n.node.clone() {
            c.apply_node(node);
        }
    }
    for p in pods {
        c.add_pod(std::sync::Arc::new(p));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{node, pod, requests};
    use serde_json::json;
    use std::sync::Arc;

    fn check(cluster: &Cluster, p: &PodInfo, node_name: &str) -> Outcome {
        let state = CycleState::prepare(cluster, p);
        let node = cluster.node(node_name).expect("node");
        run_filters(cluster, &state, node)
    }

    fn reasons(o: Outcome) -> Vec<String> {
        match o {
            Ok(()) => vec![],
            Err(s) => s.reasons.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn taints_and_tolerations() {
        let tainted = node(
            "cp",
            "4",
            "4Gi",
            110,
            json!({"spec": {"taints": [
                {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
                {"key": "soft", "value": "x", "effect": "PreferNoSchedule"},
            ]}}),
        );
        let c = cluster_of(vec![tainted], vec![]);
        let plain = pod("p", json!({}));
        let err = check(&c, &plain, "cp").expect_err("tainted");
        assert!(err.unresolvable);
        assert_eq!(err.reasons, vec![Cow::<str>::Owned("node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }".into())]);
        let tolerant = pod("t", json!({"spec": {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}}));
        assert_eq!(check(&c, &tolerant, "cp"), Ok(()), "PreferNoSchedule never filters");
        let noexec = cluster_of(vec![node("n", "1", "1Gi", 10, json!({"spec": {"taints": [{"key": "k", "value": "v", "effect": "NoExecute"}]}}))], vec![]);
        assert_eq!(reasons(check(&noexec, &plain, "n")), ["node(s) had untolerated taint {k: v}"]);
    }

    #[test]
    fn cordoned_nodes() {
        let c = cluster_of(vec![node("n", "1", "1Gi", 10, json!({"spec": {"unschedulable": true}}))], vec![]);
        assert_eq!(reasons(check(&c, &pod("p", json!({})), "n")), [ERR_UNSCHEDULABLE]);
        let tolerant = pod("p", json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}}));
        assert_eq!(check(&c, &tolerant, "n"), Ok(()));
    }

    #[test]
    fn node_selector_and_required_affinity() {
        let c = cluster_of(vec![node("ssd", "1", "1Gi", 10, json!({"metadata": {"labels": {"disk": "ssd", "cores": "16"}}}))], vec![]);
        assert_eq!(check(&c, &pod("p", json!({"spec": {"nodeSelector": {"disk": "ssd"}}})), "ssd"), Ok(()));
        assert_eq!(reasons(check(&c, &pod("p", json!({"spec": {"nodeSelector": {"disk": "hdd"}}})), "ssd")), [ERR_NODE_AFFINITY]);
        let affinity = |expr: serde_json::Value| json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [expr]}}}}});
        let gt = pod("p", affinity(json!({"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["8"]}]})));
        assert_eq!(check(&c, &gt, "ssd"), Ok(()));
        let lt = pod("p", affinity(json!({"matchExpressions": [{"key": "cores", "operator": "Lt", "values": ["8"]}]})));
        assert_eq!(reasons(check(&c, &lt, "ssd")), [ERR_NODE_AFFINITY]);
        let by_name = pod("p", affinity(json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["ssd"]}]})));
        assert_eq!(check(&c, &by_name, "ssd"), Ok(()));
    }

    #[test]
    fn resources_and_pod_count() {
        let busy =
            pod("busy", json!({"spec": {"nodeName": "n", "containers": [{"name": "c", "resources": {"requests": {"cpu": "1500m", "memory": "1Gi", "nvidia.com/gpu": "1"}}}]}}));
        let c = cluster_of(vec![node("n", "2", "2Gi", 2, json!({"status": {"allocatable": {"nvidia.com/gpu": "1"}}}))], vec![busy]);
        assert_eq!(check(&c, &pod("p", requests(json!({"cpu": "500m"}))), "n"), Ok(()));
        let err = check(&c, &pod("p", requests(json!({"cpu": "0.6", "memory": "1.5Gi", "nvidia.com/gpu": "1"}))), "n").expect_err("too big");
        assert_eq!(err.reasons, ["Insufficient cpu", "Insufficient memory", "Insufficient nvidia.com/gpu"]);
        assert!(!err.unresolvable, "evicting `busy` would make room");
        let err = check(&c, &pod("p", requests(json!({"cpu": "3"}))), "n").expect_err("bigger than the node");
        assert!(err.unresolvable);
        let err = check(&c, &pod("p", requests(json!({"example.com/fpga": "1"}))), "n").expect_err("no such resource");
        assert_eq!(err.reasons, ["Insufficient example.com/fpga"]);
        let full = cluster_of(vec![node("n", "2", "2Gi", 1, json!({}))], vec![pod("x", json!({"spec": {"nodeName": "n"}}))]);
        assert_eq!(reasons(check(&full, &pod("p", json!({})), "n")), [ERR_TOO_MANY_PODS]);
    }

    #[test]
    fn requested_node_name() {
        let c = cluster_of(vec![node("a", "1", "1Gi", 10, json!({})), node("b", "1", "1Gi", 10, json!({}))], vec![]);
        let pinned = pod("p", json!({"spec": {"nodeName": "a"}}));
        assert_eq!(check(&c, &pinned, "a"), Ok(()));
        let err = check(&c, &pinned, "b").expect_err("not the named node");
        assert_eq!(err.plugin, Plugin::NodeName);
        assert!(err.unresolvable, "no preemption makes b into a");
        assert_eq!(err.reasons, ["node(s) didn't match the requested node name"]);
        let anywhere = pod("q", json!({}));
        assert_eq!(check(&c, &anywhere, "a"), Ok(()));
        assert_eq!(check(&c, &anywhere, "b"), Ok(()));
    }

    #[test]
    fn ephemeral_storage() {
        let storage = |gi: &str| json!({"status": {"allocatable": {"ephemeral-storage": gi}}});
        let scratch = |name: &str, node: &str, size: &str| {
            pod(name, json!({"spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"ephemeral-storage": size}}}]}}))
        };
        let c = cluster_of(vec![node("n", "4", "4Gi", 10, storage("10Gi")), node("roomy", "4", "4Gi", 10, storage("100Gi"))], vec![scratch("busy", "n", "6Gi")]);
        let want = |size: &str| pod("p", requests(json!({"ephemeral-storage": size})));
        assert_eq!(check(&c, &want("4Gi"), "n"), Ok(()), "exactly what is left");
        let err = check(&c, &want("5Gi"), "n").expect_err("busy holds 6Gi of 10Gi");
        assert_eq!(err.plugin, Plugin::NodeResourcesFit);
        assert_eq!(err.reasons, ["Insufficient ephemeral-storage"]);
        assert!(!err.unresolvable, "evicting `busy` would make room");
        assert_eq!(check(&c, &want("5Gi"), "roomy"), Ok(()));
        let err = check(&c, &want("11Gi"), "n").expect_err("bigger than the node");
        assert!(err.unresolvable);
        assert_eq!(check(&c, &want("11Gi"), "roomy"), Ok(()));
        let none = cluster_of(vec![node("bare", "4", "4Gi", 10, json!({}))], vec![]);
        assert_eq!(reasons(check(&none, &want("1Mi"), "bare")), ["Insufficient ephemeral-storage"], "a node reporting none has none");
        assert_eq!(check(&none, &pod("p", json!({})), "bare"), Ok(()), "a pod asking none fits anywhere");
    }

    #[test]
    fn host_ports() {
        let with_port =
            |name: &str, port: i32, node: &str| pod(name, json!({"spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": port}]}]}}));
        let c = cluster_of(vec![node("n", "1", "1Gi", 10, json!({}))], vec![with_port("a", 8080, "n")]);
        assert_eq!(reasons(check(&c, &with_port("b", 8080, ""), "n")), [ERR_PORTS]);
        assert_eq!(check(&c, &with_port("b", 8081, ""), "n"), Ok(()));
    }

    fn zone_node(name: &str, zone: &str) -> NodeInfo {
        node(name, "8", "8Gi", 110, json!({"metadata": {"labels": {"zone": zone}}}))
    }

    fn labelled(name: &str, node: &str, app: &str) -> PodInfo {
        pod(name, json!({"metadata": {"labels": {"app": app}}, "spec": {"nodeName": node}}))
    }

    #[test]
    fn required_pod_affinity_and_anti_affinity() {
        let nodes = vec![zone_node("a1", "a"), zone_node("a2", "a"), zone_node("b1", "b"), node("bare", "8", "8Gi", 110, json!({}))];
        let c = cluster_of(nodes, vec![labelled("db", "a1", "db")]);
        let term = json!({"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"});
        let near = pod("web", json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term.clone()]}}}}));
        assert_eq!(check(&c, &near, "a2"), Ok(()), "same zone as db");
        assert_eq!(reasons(check(&c, &near, "b1")), [ERR_POD_AFFINITY]);
        assert!(check(&c, &near, "bare").expect_err("no zone label").unresolvable);
        let far = pod("web", json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}}}));
        assert_eq!(reasons(check(&c, &far, "a2")), [ERR_POD_ANTI_AFFINITY]);
        assert_eq!(check(&c, &far, "b1"), Ok(()));
        assert_eq!(check(&c, &far, "bare"), Ok(()), "no domain, no conflict");
        // An existing pod's anti-affinity keeps matching pods out of its zone.
        let loner = pod(
            "loner",
            json!({"spec": {"nodeName": "b1", "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}]}}}}),
        );
        let c = cluster_of(vec![zone_node("a1", "a"), zone_node("b1", "b"), zone_node("b2", "b")], vec![loner]);
        let web = pod("w", json!({"metadata": {"labels": {"app": "web"}}}));
        assert_eq!(reasons(check(&c, &web, "b2")), [ERR_EXISTING_ANTI_AFFINITY]);
        assert_eq!(check(&c, &web, "a1"), Ok(()));
    }

    #[test]
    fn first_pod_of_a_self_affine_group_goes_anywhere_with_the_topology() {
        let c = cluster_of(vec![zone_node("a1", "a"), node("bare", "8", "8Gi", 110, json!({}))], vec![]);
        let p = pod(
            "first",
            json!({"metadata": {"labels": {"app": "cache"}}, "spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}]}}}}),
        );
        assert_eq!(check(&c, &p, "a1"), Ok(()));
        assert!(check(&c, &p, "bare").is_err());
    }

    #[test]
    fn affinity_namespaces() {
        let mut c = cluster_of(vec![zone_node("a1", "a"), zone_node("b1", "b")], vec![]);
        let other_ns = pod("db", json!({"metadata": {"namespace": "data", "labels": {"app": "db"}}, "spec": {"nodeName": "a1"}}));
        c.add_pod(Arc::new(other_ns));
        c.namespaces.insert("data".into(), [("team".to_string(), "storage".to_string())].into());
        let aff = |term: serde_json::Value| pod("web", json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}}}));
        let own_ns = aff(json!({"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}));
        // Only pods of its own namespace count, so nothing matches and the pod does not match its own
        // term either.
        assert!(check(&c, &own_ns, "a1").is_err());
        let listed = aff(json!({"labelSelector": {"matchLabels": {"app": "db"}}, "namespaces": ["data"], "topologyKey": "zone"}));
        assert_eq!(check(&c, &listed, "a1"), Ok(()));
        assert!(check(&c, &listed, "b1").is_err());
        let by_selector = aff(json!({"labelSelector": {"matchLabels": {"app": "db"}}, "namespaceSelector": {"matchLabels": {"team": "storage"}}, "topologyKey": "zone"}));
        assert_eq!(check(&c, &by_selector, "a1"), Ok(()));
        let all = aff(json!({"labelSelector": {"matchLabels": {"app": "db"}}, "namespaceSelector": {}, "topologyKey": "zone"}));
        assert_eq!(check(&c, &all, "a1"), Ok(()));
        assert!(check(&c, &all, "b1").is_err());
    }

    #[test]
    fn topology_spread_do_not_schedule() {
        let nodes = vec![zone_node("a1", "a"), zone_node("b1", "b"), zone_node("c1", "c"), node("bare", "8", "8Gi", 110, json!({}))];
        let pods = vec![labelled("x1", "a1", "x"), labelled("x2", "a1", "x"), labelled("x3", "b1", "x"), labelled("other", "c1", "y")];
        let c = cluster_of(nodes.clone(), pods.clone());
        let spread = |skew: i32, min_domains: Option<i32>| {
            let mut constraint = json!({"maxSkew": skew, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "x"}}});
            if let Some(m) = min_domains {
                constraint["minDomains"] = json!(m);
            }
            pod("new", json!({"metadata": {"labels": {"app": "x"}}, "spec": {"topologySpreadConstraints": [constraint]}}))
        };
        // Counts: a=2, b=1, c=0 (the pod labelled y does not count).
        let p = spread(1, None);
        assert_eq!(check(&c, &p, "c1"), Ok(()));
        assert_eq!(reasons(check(&c, &p, "b1")), [ERR_SPREAD]);
        assert_eq!(reasons(check(&c, &p, "a1")), [ERR_SPREAD]);
        assert_eq!(reasons(check(&c, &p, "bare")), [ERR_SPREAD_LABEL]);
        assert_eq!(check(&c, &spread(2, None), "b1"), Ok(()));
        // Counts: a=2, b=1, c=1, so the minimum is 1...
        let mut more = pods;
        more.push(labelled("x4", "c1", "x"));
        let c = cluster_of(nodes, more);
        assert_eq!(check(&c, &spread(1, None), "b1"), Ok(()));
        assert_eq!(check(&c, &spread(1, Some(3)), "b1"), Ok(()));
        // ...unless there are fewer domains than minDomains: then it is 0.
        assert_eq!(reasons(check(&c, &spread(1, Some(4)), "b1")), [ERR_SPREAD]);
        // ScheduleAnyway constraints never filter.
        let soft = pod(
            "new",
            json!({"metadata": {"labels": {"app": "x"}}, "spec": {"topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "x"}}}]}}),
        );
        assert_eq!(check(&c, &soft, "a1"), Ok(()));
    }

    #[test]
    fn spread_only_counts_nodes_the_pod_may_use() {
        // Zone c exists only on a node the pod's selector excludes, so it is not a domain: the
        // minimum is zone b's 1, not 0.
        let nodes = vec![
            node("a1", "8", "8Gi", 110, json!({"metadata": {"labels": {"zone": "a", "pool": "x"}}})),
            node("b1", "8", "8Gi", 110, json!({"metadata": {"labels": {"zone": "b", "pool": "x"}}})),
            node("c1", "8", "8Gi", 110, json!({"metadata": {"labels": {"zone": "c", "pool": "y"}}})),
        ];
        let c = cluster_of(nodes, vec![labelled("x1", "a1", "x"), labelled("x2", "b1", "x")]);
        let p = pod(
            "new",
            json!({"metadata": {"labels": {"app": "x"}}, "spec": {"nodeSelector": {"pool": "x"}, "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "x"}}}]}}),
        );
        assert_eq!(check(&c, &p, "a1"), Ok(()));
    }

    #[test]
    fn nominated_pods_hold_their_room() {
        let mut c = cluster_of(vec![node("n", "2", "2Gi", 10, json!({}))], vec![]);
        let high = pod_priority("high", 100, "1500m");
        c.nominate(Arc::new(high), "n");
        let low = pod_priority("low", 1, "1");
        assert_eq!(reasons(check(&c, &low, "n")), ["Insufficient cpu"]);
        let higher = pod_priority("higher", 1000, "1");
        assert_eq!(check(&c, &higher, "n"), Ok(()), "lower-priority nominations do not count");
    }

    fn pod_priority(name: &str, priority: i32, cpu: &str) -> PodInfo {
        let mut v = requests(json!({"cpu": cpu}));
        v["spec"]["priority"] = json!(priority);
        pod(name, v)
    }

    #[test]
    fn aggregated_message() {
        let unresolvable = |r: &str| Status { plugin: Plugin::TaintToleration, unresolvable: true, reasons: vec![r.to_string().into()] };
        let cpu = Status { plugin: Plugin::NodeResourcesFit, unresolvable: false, reasons: vec!["Insufficient cpu".into()] };
        let both = Status { plugin: Plugin::NodeResourcesFit, unresolvable: false, reasons: vec!["Insufficient cpu".into(), "Insufficient memory".into()] };
        let fit = FitError {
            num_all_nodes: 4,
            statuses: vec![(0, unresolvable("node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }")), (1, cpu.clone()), (2, cpu), (3, both)],
            post_filter: Some("preemption: 0/4 nodes are available: 1 Preemption is not helpful for scheduling, 3 No preemption victims found for incoming pod.".into()),
        };
        assert_eq!(
            fit.message(),
            "0/4 nodes are available: 1 Insufficient memory, 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 3 Insufficient cpu. \
             preemption: 0/4 nodes are available: 1 Preemption is not helpful for scheduling, 3 No preemption victims found for incoming pod."
        );
        assert_eq!(fit.rejectors(), Plugin::TaintToleration.bit() | Plugin::NodeResourcesFit.bit());
    }
}
