//! What the server serves: one [`ResourceDef`] per group/version/resource, built in or added by a
//! CustomResourceDefinition. Discovery, routing, storage keys and OpenAPI all read this one table,
//! so adding a kind is adding a row (and, if it needs one, a strategy), never a handler.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::conversion::Conversion;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    Status,
    Scale,
}

/// How a custom resource's scale subresource maps onto its fields.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status: bool,
    pub scale: Option<ScalePaths>,
    /// Whether `metadata.generation` counts spec changes (upstream does for most kinds with a spec).
    pub tracks_generation: bool,
    /// The group/version whose objects are stored; a resource served in several versions stores one.
    pub storage_group: String,
    pub storage_version: String,
    /// How objects convert between the stored version and this one.
    pub conversion: Conversion,
    /// Set for custom resources: the CRD's structural schema for this version.
    pub schema: Option<Arc<Value>>,
    /// Set for custom resources: `additionalPrinterColumns` of this version.
    pub printer_columns: Option<Arc<Value>>,
    /// Custom resources: fields usable in field selectors besides metadata.name/namespace
    /// (`selectableFields`, as `spec.color`).
    pub selectable_fields: Vec<String>,
    pub custom: bool,
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `pods`, or `deployments.apps`: how upstream names a resource in messages.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// Storage key prefix for every object of this resource (all namespaces).
    pub fn key_prefix(&self) -> String {
        let group = if self.storage_group.is_empty() { "core" } else { &self.storage_group };
        format!("/registry/{group}/{}/", self.plural)
    }

    pub fn namespace_prefix(&self, namespace: &str) -> String {
        format!("{}{namespace}/", self.key_prefix())
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("{}{ns}/{name}", self.key_prefix()),
            None => format!("{}{name}", self.key_prefix()),
        }
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    all: bool,
    status: bool,
    scale: bool,
    generation: bool,
    stored_as: Option<(&'static str, &'static str, Conversion)>,
}

const fn b(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
) -> Builtin {
    Builtin { group, version, kind, plural, namespaced, short_names, all: false, status: false, scale: false, generation: false, stored_as: None }
}

impl Builtin {
    const fn all(mut self) -> Self {
        self.all = true;
        self
    }
    const fn status(mut self) -> Self {
        self.status = true;
        self
    }
    const fn scale(mut self) -> Self {
        self.scale = true;
        self
    }
    const fn generation(mut self) -> Self {
        self.generation = true;
        self
    }
    /// Served from objects stored in another group/version, converted both ways.
    const fn stored_as(mut self, group: &'static str, version: &'static str, conversion: Conversion) -> Self {
        self.stored_as = Some((group, version, conversion));
        self
    }
}

const NS: bool = true;
const CLUSTER: bool = false;

const BUILTINS: &[Builtin] = &[
    b("", "v1", "Namespace", "namespaces", CLUSTER, &["ns"]).status(),
    b("", "v1", "Pod", "pods", NS, &["po"]).all().status(),
    b("", "v1", "Service", "services", NS, &["svc"]).all().status(),
    b("", "v1", "Endpoints", "endpoints", NS, &["ep"]),
    b("", "v1", "ConfigMap", "configmaps", NS, &["cm"]),
    b("", "v1", "Secret", "secrets", NS, &[]),
    b("", "v1", "ServiceAccount", "serviceaccounts", NS, &["sa"]),
    b("", "v1", "Node", "nodes", CLUSTER, &["no"]).status(),
    b("", "v1", "Event", "events", NS, &["ev"]),
    b("", "v1", "PersistentVolume", "persistentvolumes", CLUSTER, &["pv"]).status(),
    b("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", NS, &["pvc"]).status(),
    b("", "v1", "ResourceQuota", "resourcequotas", NS, &["quota"]).status(),
    b("", "v1", "LimitRange", "limitranges", NS, &["limits"]),
    b("", "v1", "ReplicationController", "replicationcontrollers", NS, &["rc"]).all().status().scale().generation(),
    b("", "v1", "PodTemplate", "podtemplates", NS, &[]),
    b("apps", "v1", "Deployment", "deployments", NS, &["deploy"]).all().status().scale().generation(),
    b("apps", "v1", "ReplicaSet", "replicasets", NS, &["rs"]).all().status().scale().generation(),
    b("apps", "v1", "DaemonSet", "daemonsets", NS, &["ds"]).all().status().generation(),
    b("apps", "v1", "StatefulSet", "statefulsets", NS, &["sts"]).all().status().scale().generation(),
    b("apps", "v1", "ControllerRevision", "controllerrevisions", NS, &[]),
    b("batch", "v1", "Job", "jobs", NS, &[]).all().status().generation(),
    b("batch", "v1", "CronJob", "cronjobs", NS, &["cj"]).all().status().generation(),
    b("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", NS, &["hpa"]).all().status().generation(),
    b("autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", NS, &["hpa"])
        .all()
        .status()
        .generation()
        .stored_as("autoscaling", "v2", Conversion::HpaV1),
    b("coordination.k8s.io", "v1", "Lease", "leases", NS, &[]),
    b("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", NS, &[]),
    b("events.k8s.io", "v1", "Event", "events", NS, &["ev"]).stored_as("", "v1", Conversion::EventsV1),
    b("networking.k8s.io", "v1", "Ingress", "ingresses", NS, &["ing"]).status().generation(),
    b("networking.k8s.io", "v1", "IngressClass", "ingressclasses", CLUSTER, &[]),
    b("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", NS, &["netpol"]).generation(),
    b("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", NS, &["pdb"]).status().generation(),
    b("rbac.authorization.k8s.io", "v1", "Role", "roles", NS, &[]),
    b("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", NS, &[]),
    b("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", CLUSTER, &[]),
    b("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", CLUSTER, &[]),
    b("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", CLUSTER, &["pc"]),
    b("storage.k8s.io", "v1", "StorageClass", "storageclasses", CLUSTER, &["sc"]),
    b("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", CLUSTER, &["crd", "crds"]).status().generation(),
];

fn builtin_defs() -> Vec<ResourceDef> {
    BUILTINS
        .iter()
        .map(|r| ResourceDef {
            group: r.group.into(),
            version: r.version.into(),
            kind: r.kind.into(),
            list_kind: format!("{}List", r.kind),
            plural: r.plural.into(),
            singular: r.kind.to_lowercase(),
            namespaced: r.namespaced,
            short_names: r.short_names.iter().map(|s| s.to_string()).collect(),
            categories: if r.all { vec!["all".into()] } else { vec![] },
            status: r.status,
            scale: r.scale.then(|| ScalePaths {
                spec_replicas: ".spec.replicas".into(),
                status_replicas: ".status.replicas".into(),
                label_selector: Some(".status.selector".into()),
            }),
            tracks_generation: r.generation,
            storage_group: r.stored_as.map_or(r.group, |(g, _, _)| g).into(),
            storage_version: r.stored_as.map_or(r.version, |(_, v, _)| v).into(),
            conversion: r.stored_as.map_or(Conversion::None, |(_, _, c)| c),
            schema: None,
            printer_columns: None,
            selectable_fields: Vec::new(),
            custom: false,
        })
        .collect()
}

/// (group, version, plural) → definition, with the groups in the order discovery lists them.
#[derive(Default)]
struct Table {
    by_path: BTreeMap<(String, String, String), Arc<ResourceDef>>,
    /// Group names in discovery order; built-ins first as upstream orders them, CRD groups after.
    group_order: Vec<String>,
}

/// The live set of served resources. Built-ins are fixed; custom resources come and go with CRDs.
pub struct Registry {
    table: RwLock<Table>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        let mut table = Table::default();
        for def in builtin_defs() {
            if !table.group_order.contains(&def.group) {
                table.group_order.push(def.group.clone());
            }
            table.by_path.insert((def.group.clone(), def.version.clone(), def.plural.clone()), Arc::new(def));
        }
        Self { table: RwLock::new(table) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.read().by_path.get(&(group.to_string(), version.to_string(), plural.to_string())).cloned()
    }

    /// The definition serving `kind` in `group/version`.
    pub fn by_kind(&self, group: &str, version: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        self.read().by_path.values().find(|d| d.group == group && d.version == version && d.kind == kind).cloned()
    }

    pub fn all(&self) -> Vec<Arc<ResourceDef>> {
        self.read().by_path.values().cloned().collect()
    }

    /// Served groups in discovery order, each with its versions (preferred first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let table = self.read();
        table
            .group_order
            .iter()
            .filter_map(|g| {
                let mut versions: Vec<String> = Vec::new();
                for ((group, version, _), _) in table.by_path.iter() {
                    if group == g && !versions.contains(version) {
                        versions.push(version.clone());
                    }
                }
                versions.sort_by(|a, b| version_priority(b).cmp(&version_priority(a)));
                (!versions.is_empty()).then(|| (g.clone(), versions))
            })
            .collect()
    }

    pub fn resources_in(&self, group: &str, version: &str) -> Vec<Arc<ResourceDef>> {
        self.read().by_path.values().filter(|d| d.group == group && d.version == version).cloned().collect()
    }

    /// Replaces every custom resource of one CRD (all its versions) with `defs`.
    pub fn set_custom(&self, group: &str, plural: &str, defs: Vec<ResourceDef>) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        table.by_path.retain(|(g, _, p), d| !(d.custom && g == group && p == plural));
        for def in defs {
            if !table.group_order.contains(&def.group) {
                table.group_order.push(def.group.clone());
            }
            table.by_path.insert((def.group.clone(), def.version.clone(), def.plural.clone()), Arc::new(def));
        }
        let Table { by_path, group_order } = &mut *table;
        group_order.retain(|g| g.is_empty() || by_path.keys().any(|(group, _, _)| group == g));
    }
}

/// Kubernetes version ordering: GA > beta > alpha, then by number (v2 > v1, v1beta2 > v1beta1).
pub fn version_priority(version: &str) -> (u8, u32, u32) {
    let Some(rest) = version.strip_prefix('v') else { return (0, 0, 0) };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let Ok(major) = digits.parse::<u32>() else { return (0, 0, 0) };
    let tail = &rest[digits.len()..];
    let (stage, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(0))
    } else {
        return (0, 0, 0);
    };
    (stage, major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_like_upstream() {
        let mut v = vec!["v1beta1", "v1", "v2alpha1", "v2", "v1beta2", "foo"];
        v.sort_by(|a, b| version_priority(b).cmp(&version_priority(a)));
        assert_eq!(v, ["v2", "v1", "v1beta2", "v1beta1", "v2alpha1", "foo"]);
    }

    #[test]
    fn keys_separate_groups_and_namespaces() {
        let registry = Registry::new();
        let pods = registry.get("", "v1", "pods").unwrap();
        assert_eq!(pods.key(Some("default"), "web"), "/registry/core/pods/default/web");
        let ns = registry.get("", "v1", "namespaces").unwrap();
        assert_eq!(ns.key(Some("ignored"), "default"), "/registry/core/namespaces/default");
        let deploy = registry.get("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.qualified_plural(), "deployments.apps");
        assert!(registry.by_kind("apps", "v1", "Deployment").is_some());
    }
}
