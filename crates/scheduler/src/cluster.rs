//! The in-memory snapshot every decision reads: nodes with the pods counted on them, namespace
//! labels, priority classes, and which pending pods are nominated to which node.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::model::{NodeInfo, PodInfo, PriorityClasses};
use crate::selectors::{LabelSelector, Labels};

/// Pods keyed by the address of their shared PodInfo: unique while the set holds it, and cheaper
/// to hash than a uid.
type PodSet = HashMap<usize, Arc<PodInfo>>;

fn key(pod: &Arc<PodInfo>) -> usize {
    Arc::as_ptr(pod) as usize
}

#[derive(Default)]
pub struct Cluster {
    /// Nodes, and placeholders for node names that pods use before (or after) the node exists.
    pub nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Indexes into `nodes` of the nodes that exist: what a pod is scheduled over.
    pub order: Vec<usize>,
    pub namespaces: HashMap<String, Labels>,
    pub classes: PriorityClasses,
    /// Claims, volumes and storage classes (the VolumeBinding filter).
    pub volumes: crate::volumebinding::Volumes,
    /// Pending pods that preempted victims on a node, by uid, with that node.
    nominations: HashMap<String, (String, Arc<PodInfo>)>,
    nominated_on: HashMap<String, Vec<Arc<PodInfo>>>,
    /// Every pod counted on a node, and indexes over them, so that affinity and spread look at
    /// the pods a selector can match instead of every pod in the cluster.
    all_pods: PodSet,
    by_label: HashMap<String, HashMap<String, PodSet>>,
    with_affinity: PodSet,
    with_required_anti_affinity: PodSet,
}

impl Cluster {
    #[cfg(test)]
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn slot(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.nodes.push(NodeInfo::placeholder(name));
        let i = self.nodes.len() - 1;
        self.index.insert(name.to_string(), i);
        i
    }

    /// Adds or updates a node; returns whether pods that did not fit before might fit now.
    pub fn apply_node(&mut self, node: Arc<Node>) -> bool {
        let Some(name) = node.metadata.name.clone() else { return false };
        let i = self.slot(&name);
        let existed = self.nodes[i].node.is_some();
        let relevant = self.nodes[i].set_node(node);
        if !existed {
            self.order.push(i);
        }
        relevant
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else { return };
        self.nodes[i].node = None;
        if self.nodes[i].pods.is_empty() {
            self.drop_slot(i);
        }
        self.rebuild_order();
    }

    /// Forgets an unused placeholder, moving the last slot into its place.
    fn drop_slot(&mut self, i: usize) {
        let removed = self.nodes.swap_remove(i);
        self.index.remove(&removed.name);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
    }

    fn rebuild_order(&mut self) {
        self.order = (0..self.nodes.len()).filter(|&i| self.nodes[i].node.is_some()).collect();
    }

    /// Counts `pod` on the node it names.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        if pod.node_name.is_empty() {
            return;
        }
        let i = self.slot(&pod.node_name.clone());
        let k = key(&pod);
        for (name, value) in pod.labels() {
            self.by_label.entry(name.clone()).or_default().entry(value.clone()).or_default().insert(k, pod.clone());
        }
        if pod.has_pod_affinity() {
            self.with_affinity.insert(k, pod.clone());
        }
        if !pod.required_anti_affinity.is_empty() {
            self.with_required_anti_affinity.insert(k, pod.clone());
        }
        self.all_pods.insert(k, pod.clone());
        self.nodes[i].add_pod(pod);
    }

    pub fn remove_pod(&mut self, node: &str, uid: &str) -> Option<Arc<PodInfo>> {
        let i = *self.index.get(node)?;
        let removed = self.nodes[i].remove_pod(uid);
        if let Some(pod) = &removed {
            let k = key(pod);
            for (name, value) in pod.labels() {
                if let Some(values) = self.by_label.get_mut(name) {
                    if let Some(set) = values.get_mut(value) {
                        set.remove(&k);
                        if set.is_empty() {
                            values.remove(value);
                        }
                    }
                    if values.is_empty() {
                        self.by_label.remove(name);
                    }
                }
            }
            self.with_affinity.remove(&k);
            self.with_required_anti_affinity.remove(&k);
            self.all_pods.remove(&k);
        }
        if self.nodes[i].node.is_none() && self.nodes[i].pods.is_empty() {
            self.drop_slot(i);
            self.rebuild_order();
        }
        removed
    }

    pub fn namespace_labels(&self, namespace: &str) -> Option<&Labels> {
        self.namespaces.get(namespace)
    }

    pub fn nominate(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.clear_nomination(&pod.uid);
        self.nominated_on.entry(node.to_string()).or_default().push(pod.clone());
        self.nominations.insert(pod.uid.clone(), (node.to_string(), pod));
    }

    pub fn clear_nomination(&mut self, uid: &str) -> Option<String> {
        let (node, _) = self.nominations.remove(uid)?;
        if let Some(list) = self.nominated_on.get_mut(&node) {
            list.retain(|p| p.uid != uid);
            if list.is_empty() {
                self.nominated_on.remove(&node);
            }
        }
        Some(node)
    }

    pub fn nomination(&self, uid: &str) -> Option<&str> {
        self.nominations.get(uid).map(|(n, _)| n.as_str())
    }

    /// Pods nominated to `node`.
    pub fn nominated_on(&self, node: &str) -> &[Arc<PodInfo>] {
        self.nominated_on.get(node).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn any_pod_with_affinity(&self) -> bool {
        !self.with_affinity.is_empty()
    }

    pub fn any_pod_with_required_anti_affinity(&self) -> bool {
        !self.with_required_anti_affinity.is_empty()
    }

    /// Counted pods with any affinity term.
    pub fn pods_with_affinity(&self) -> impl Iterator<Item = &Arc<PodInfo>> {
        self.with_affinity.values()
    }

    pub fn pods_with_required_anti_affinity(&self) -> impl Iterator<Item = &Arc<PodInfo>> {
        self.with_required_anti_affinity.values()
    }

    /// Counted pods `selector` may match: a superset, narrowed by the label index through the
    /// most selective `In` or `Exists` requirement; callers still check the selector.
    pub fn candidates(&self, selector: &LabelSelector) -> Vec<&Arc<PodInfo>> {
        if selector.is_nothing() {
            return Vec::new();
        }
        let mut best: Option<Vec<&PodSet>> = None;
        let size = |sets: &Vec<&PodSet>| sets.iter().map(|s| s.len()).sum::<usize>();
        for (name, values) in selector.in_requirements() {
            let sets: Vec<&PodSet> = values.iter().filter_map(|v| self.by_label.get(name).and_then(|m| m.get(v))).collect();
            if best.as_ref().is_none_or(|b| size(&sets) < size(b)) {
                best = Some(sets);
            }
        }
        for name in selector.required_keys() {
            let sets: Vec<&PodSet> = self.by_label.get(name).map(|m| m.values().collect()).unwrap_or_default();
            if best.as_ref().is_none_or(|b| size(&sets) < size(b)) {
                best = Some(sets);
            }
        }
        match best {
            Some(sets) => sets.into_iter().flat_map(|s| s.values()).collect(),
            None => self.all_pods.values().collect(),
        }
    }

    /// The node a counted pod is on, if that node exists.
    pub fn node_of(&self, pod: &PodInfo) -> Option<(usize, &NodeInfo)> {
        let i = *self.index.get(&pod.node_name)?;
        let node = &self.nodes[i];
        node.node.is_some().then_some((i, node))
    }

    pub fn has_nominations(&self) -> bool {
        !self.nominations.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{node, pod};
    use serde_json::json;

    #[test]
    fn pods_before_their_node_and_node_removal() {
        let mut c = Cluster::default();
        let p = Arc::new(pod("a", json!({"spec": {"nodeName": "n2"}})));
        c.add_pod(p.clone());
        assert!(c.order.is_empty(), "a placeholder is not schedulable");
        let n1 = node("n1", "1", "1Gi", 10, json!({})).node.expect("node");
        let n2 = node("n2", "1", "1Gi", 10, json!({})).node.expect("node");
        assert!(c.apply_node(n1.clone()));
        assert!(c.apply_node(n2.clone()));
        assert!(!c.apply_node(n2), "an identical update changes nothing");
        assert_eq!(c.order.len(), 2);
        assert_eq!(c.node("n2").map(|n| n.pods.len()), Some(1));
        c.remove_node("n1");
        assert_eq!(c.order.len(), 1);
        assert!(c.node("n1").is_none());
        c.remove_node("n2");
        assert!(c.node("n2").is_some(), "kept while a pod still names it");
        c.remove_pod("n2", &p.uid);
        assert!(c.node("n2").is_none());
        assert!(c.order.is_empty());
    }
}
