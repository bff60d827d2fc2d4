//! Volume binding, the part of upstream's VolumeBinding (and VolumeZone) plugins Berth needs:
//! a pod's claims must exist and not be terminating; a claim bound to a volume with required node
//! affinity confines the pod to the nodes it admits; an unbound claim of an `Immediate` class
//! makes the pod wait for the PersistentVolume controller; an unbound claim of a
//! `WaitForFirstConsumer` class fits a node when its class can provision there (allowed
//! topologies) or, for classes without a provisioner, when an available volume reachable from the
//! node matches it. When the pod is bound, such claims get the chosen node in
//! `volume.kubernetes.io/selected-node` (upstream's PreBind), which is what the PersistentVolume
//! controller and the provisioner wait for.
//!
//! Unlike upstream, the scheduler neither binds static volumes itself nor waits for the claims to
//! be bound before binding the pod: the PersistentVolume controller binds, and the node agent
//! waits for the bound volume before it starts the pod.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;

use crate::filters::{Outcome, Plugin, Status};
use crate::model::{NodeInfo, PodInfo};
use crate::quantity::parse_value;
use crate::selectors::{NodeTerm, any_term_matches, parse_node_selector};

pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
pub const ERR_NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const ERR_BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
pub const ERR_UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";
const ERR_TOPOLOGY: &str = "node(s) didn't satisfy the storage class's allowed topologies";

/// Claims, volumes and classes as the watches deliver them.
#[derive(Default)]
pub struct Volumes {
    claims: HashMap<(String, String), Arc<PersistentVolumeClaim>>,
    volumes: HashMap<String, Arc<PersistentVolume>>,
    classes: HashMap<String, Arc<StorageClass>>,
}

impl Volumes {
    pub fn apply_claim(&mut self, claim: PersistentVolumeClaim) {
        let key = (claim.metadata.namespace.clone().unwrap_or_default(), claim.metadata.name.clone().unwrap_or_default());
        self.claims.insert(key, Arc::new(claim));
    }
    pub fn delete_claim(&mut self, key: &str) {
        if let Some((ns, name)) = key.split_once('/') {
            self.claims.remove(&(ns.to_string(), name.to_string()));
        }
    }
    pub fn claim_keys(&self) -> Vec<String> {
        self.claims.keys().map(|(ns, name)| format!("{ns}/{name}")).collect()
    }
    pub fn apply_volume(&mut self, volume: PersistentVolume) {
        self.volumes.insert(volume.metadata.name.clone().unwrap_or_default(), Arc::new(volume));
    }
    pub fn delete_volume(&mut self, name: &str) {
        self.volumes.remove(name);
    }
    pub fn volume_keys(&self) -> Vec<String> {
        self.volumes.keys().cloned().collect()
    }
    pub fn apply_class(&mut self, class: StorageClass) {
        self.classes.insert(class.metadata.name.clone().unwrap_or_default(), Arc::new(class));
    }
    pub fn delete_class(&mut self, name: &str) {
        self.classes.remove(name);
    }
    pub fn class_keys(&self) -> Vec<String> {
        self.classes.keys().cloned().collect()
    }

    fn delayed_class(&self, claim: &PersistentVolumeClaim) -> Option<&Arc<StorageClass>> {
        let name = claim.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).filter(|n| !n.is_empty())?;
        self.classes.get(name).filter(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"))
    }

    /// The pod's unbound claims of WaitForFirstConsumer classes that do not name `node` yet: what
    /// PreBind annotates.
    pub fn claims_to_select(&self, pod: &PodInfo, node: &str) -> Vec<String> {
        claim_names(pod)
            .filter_map(|name| self.claims.get(&(pod.namespace.clone(), name)))
            .filter(|c| c.spec.as_ref().and_then(|s| s.volume_name.as_deref()).unwrap_or("").is_empty())
            .filter(|c| self.delayed_class(c).is_some())
            .filter(|c| c.metadata.annotations.as_ref().and_then(|a| a.get(ANN_SELECTED_NODE)).map(String::as_str) != Some(node))
            .filter_map(|c| c.metadata.name.clone())
            .collect()
    }
}

fn claim_names(pod: &PodInfo) -> impl Iterator<Item = String> + '_ {
    pod.pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone()))
}

/// What an unbound WaitForFirstConsumer claim needs from a node.
#[derive(Clone, Debug)]
pub enum Unbound {
    /// Dynamic provisioning, limited to the class's allowed topologies (empty: anywhere).
    Provision(Vec<Vec<(String, Vec<String>)>>),
    /// No provisioner: one of these volumes' node affinities (None: reachable from anywhere).
    Static(Vec<Option<Vec<NodeTerm>>>),
}

/// One pod's volume needs, computed once per scheduling attempt (upstream's PreFilter).
#[derive(Clone, Debug)]
pub enum PodVolumes {
    /// Fails on every node: a claim is missing, terminating, or waits for immediate binding.
    Rejected(String),
    Needs { bound: Vec<Vec<NodeTerm>>, unbound: Vec<Unbound> },
}

impl PodVolumes {
    /// None when the pod has no claims.
    pub fn prepare(volumes: &Volumes, pod: &PodInfo) -> Option<PodVolumes> {
        let names: Vec<String> = claim_names(pod).collect();
        if names.is_empty() {
            return None;
        }
        let mut bound = Vec::new();
        let mut unbound = Vec::new();
        for name in names {
            let Some(claim) = volumes.claims.get(&(pod.namespace.clone(), name.clone())) else {
                return Some(PodVolumes::Rejected(format!("persistentvolumeclaim \"{name}\" not found")));
            };
            if claim.metadata.deletion_timestamp.is_some() {
                return Some(PodVolumes::Rejected(format!("persistentvolumeclaim \"{name}\" is being deleted")));
            }
            let volume_name = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
            if !volume_name.is_empty() {
                // A bound claim whose volume the watch has not delivered yet constrains nothing
                // until it does (the volume event requeues the pod).
                if let Some(terms) = volumes.volumes.get(&volume_name).and_then(|v| required_terms(v)) {
                    bound.push(terms);
                }
                continue;
            }
            let Some(class) = volumes.delayed_class(claim) else {
                return Some(PodVolumes::Rejected(ERR_UNBOUND_IMMEDIATE.to_string()));
            };
            if class.provisioner != NO_PROVISIONER {
                let topologies = class
                    .allowed_topologies
                    .iter()
                    .flatten()
                    .map(|term| term.match_label_expressions.iter().flatten().map(|e| (e.key.clone(), e.values.clone())).collect())
                    .collect();
                unbound.push(Unbound::Provision(topologies));
            } else {
                let candidates = volumes.volumes.values().filter(|v| static_match(claim, v)).map(|v| required_terms(v)).collect();
                unbound.push(Unbound::Static(candidates));
            }
        }
        Some(PodVolumes::Needs { bound, unbound })
    }

    pub fn filter(&self, node: &NodeInfo) -> Outcome {
        match self {
            PodVolumes::Rejected(message) => Err(Status { plugin: Plugin::VolumeBinding, unresolvable: true, reasons: vec![message.clone().into()] }),
            PodVolumes::Needs { bound, unbound } => {
                let labels = node.labels();
                if !bound.iter().all(|terms| any_term_matches(terms, &node.name, labels)) {
                    return Err(Status { plugin: Plugin::VolumeBinding, unresolvable: true, reasons: vec![ERR_NODE_CONFLICT.into()] });
                }
                for need in unbound {
                    let fits = match need {
                        Unbound::Provision(topologies) => topologies.is_empty() || topologies.iter().any(|term| term.iter().all(|(k, values)| labels.get(k).is_some_and(|v| values.contains(v)))),
                        Unbound::Static(candidates) => candidates.iter().any(|terms| terms.as_ref().is_none_or(|t| any_term_matches(t, &node.name, labels))),
                    };
                    if !fits {
                        let reason = if matches!(need, Unbound::Provision(_)) { ERR_TOPOLOGY } else { ERR_BIND_CONFLICT };
                        return Err(Status { plugin: Plugin::VolumeBinding, unresolvable: true, reasons: vec![reason.into()] });
                    }
                }
                Ok(())
            }
        }
    }
}

fn required_terms(volume: &PersistentVolume) -> Option<Vec<NodeTerm>> {
    volume.spec.as_ref()?.node_affinity.as_ref()?.required.as_ref().map(parse_node_selector)
}

/// Whether an available volume could be bound to `claim` (class, modes, size, selector aside:
/// the PersistentVolume controller checks everything when it binds).
fn static_match(claim: &PersistentVolumeClaim, volume: &PersistentVolume) -> bool {
    let (Some(spec), Some(vspec)) = (claim.spec.as_ref(), volume.spec.as_ref()) else { return false };
    let available = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Available") && vspec.claim_ref.is_none();
    let class = spec.storage_class_name.as_deref().unwrap_or("") == vspec.storage_class_name.as_deref().unwrap_or("");
    let modes = vspec.access_modes.clone().unwrap_or_default();
    let modes_ok = spec.access_modes.iter().flatten().all(|m| modes.contains(m));
    let size = |q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>| q.and_then(|q| parse_value(&q.0).ok()).unwrap_or(0);
    let requested = size(spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")));
    let capacity = size(vspec.capacity.as_ref().and_then(|c| c.get("storage")));
    available && class && modes_ok && capacity >= requested
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{node, pod};
    use serde_json::json;

    fn volumes() -> Volumes {
        let mut v = Volumes::default();
        v.apply_class(serde_json::from_value(json!({"metadata": {"name": "local"}, "provisioner": "berth.dev/local-path", "volumeBindingMode": "WaitForFirstConsumer"})).unwrap());
        v.apply_class(serde_json::from_value(json!({"metadata": {"name": "manual"}, "provisioner": NO_PROVISIONER, "volumeBindingMode": "WaitForFirstConsumer"})).unwrap());
        v.apply_class(serde_json::from_value(json!({"metadata": {"name": "now"}, "provisioner": "x", "volumeBindingMode": "Immediate"})).unwrap());
        v
    }

    fn claim(name: &str, class: &str, volume: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"storageClassName": class, "volumeName": volume, "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})).unwrap()
    }

    fn pinned_volume(name: &str, class: &str, node: &str, available: bool) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "5Gi"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}},
            "status": {"phase": if available { "Available" } else { "Bound" }},
        }))
        .unwrap()
    }

    fn using(claims: &[&str]) -> PodInfo {
        let volumes: Vec<_> = claims.iter().map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}})).collect();
        pod("p", json!({"spec": {"volumes": volumes}}))
    }

    fn host(name: &str) -> NodeInfo {
        node(name, "4", "8Gi", 110, json!({"metadata": {"labels": {"kubernetes.io/hostname": name}}}))
    }

    #[test]
    fn bound_volumes_pin_the_pod_and_missing_claims_reject_everywhere() {
        let mut v = volumes();
        v.apply_claim(claim("data", "local", Some("pv-1")));
        v.apply_volume(pinned_volume("pv-1", "local", "a", false));
        let needs = PodVolumes::prepare(&v, &using(&["data"])).unwrap();
        assert!(needs.filter(&host("a")).is_ok());
        assert_eq!(needs.filter(&host("b")).unwrap_err().reasons, vec![ERR_NODE_CONFLICT]);
        assert!(PodVolumes::prepare(&v, &using(&[])).is_none());
        let missing = PodVolumes::prepare(&v, &using(&["nope"])).unwrap();
        assert_eq!(missing.filter(&host("a")).unwrap_err().reasons, vec!["persistentvolumeclaim \"nope\" not found"]);
    }

    #[test]
    fn unbound_claims_by_binding_mode() {
        let mut v = volumes();
        v.apply_claim(claim("later", "local", None));
        v.apply_claim(claim("now", "now", None));
        v.apply_claim(claim("static", "manual", None));
        v.apply_volume(pinned_volume("pv-b", "manual", "b", true));
        assert!(PodVolumes::prepare(&v, &using(&["later"])).unwrap().filter(&host("a")).is_ok());
        assert_eq!(PodVolumes::prepare(&v, &using(&["now"])).unwrap().filter(&host("a")).unwrap_err().reasons, vec![ERR_UNBOUND_IMMEDIATE]);
        let needs = PodVolumes::prepare(&v, &using(&["static"])).unwrap();
        assert!(needs.filter(&host("b")).is_ok());
        assert_eq!(needs.filter(&host("a")).unwrap_err().reasons, vec![ERR_BIND_CONFLICT]);
        let p = using(&["later", "static"]);
        assert_eq!(v.claims_to_select(&p, "b"), vec!["later".to_string(), "static".to_string()]);
    }
}
