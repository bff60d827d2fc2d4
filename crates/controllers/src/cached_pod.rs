//! The pod as the controller manager's informer keeps it: only what controllers read.
//!
//! A typed `Pod` is large however little it holds, because every optional part is inline: a
//! Container is 2,120 bytes, a ContainerStatus 752, the PodSpec 1,416. A Deployment's pod,
//! slimmed as far as a `Pod` allows, still took ~8.3 KB; at 50,000 pods that was most of the
//! controller manager's memory. `CachedPod` is decoded straight from the watch (serde skips
//! everything else, managedFields included), so the parts nobody reads are never built.
//!
//! Controllers never write a cached pod back whole (they patch), so nothing left out here can be
//! lost. Writes go through `Api<Pod>`, or `Api<CachedPod>` where the answer is only cached.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{Affinity, ContainerPort, ContainerState, EphemeralVolumeSource, PersistentVolumeClaimVolumeSource, Pod, PodIP, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::NamespaceResourceScope;
use serde::{Deserialize, Deserializer};

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedPod {
    #[serde(default, deserialize_with = "scheduler::decode::meta_without_managed_fields")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<CachedPodSpec>,
    #[serde(default)]
    pub status: Option<CachedPodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodSpec {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub subdomain: Option<String>,
    #[serde(default)]
    pub containers: Vec<CachedContainer>,
    #[serde(default)]
    pub init_containers: Option<Vec<CachedContainer>>,
    #[serde(default)]
    pub tolerations: Option<Vec<Toleration>>,
    /// Read for a DaemonSet pod's target node; boxed, as most pods have none.
    #[serde(default)]
    pub affinity: Option<Box<Affinity>>,
    /// Only volumes that name a claim (directly or as a generic ephemeral volume).
    #[serde(default, deserialize_with = "claim_volumes")]
    pub volumes: Option<Vec<CachedVolume>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainer {
    pub name: String,
    #[serde(default)]
    pub ports: Option<Vec<ContainerPort>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedVolume {
    pub name: String,
    #[serde(default)]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
    /// Boxed: the claim template inside is large and rare.
    #[serde(default)]
    pub ephemeral: Option<Box<EphemeralVolumeSource>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub conditions: Option<Vec<CachedPodCondition>>,
    #[serde(default)]
    pub container_statuses: Option<Vec<CachedContainerStatus>>,
    #[serde(default)]
    pub init_container_statuses: Option<Vec<CachedContainerStatus>>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIP>>,
    #[serde(default)]
    pub start_time: Option<Time>,
}

/// A condition without its reason, message and probe time (a typed PodCondition is 160 bytes,
/// five per pod): controllers read which conditions hold and since when.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub last_transition_time: Option<Time>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainerStatus {
    pub name: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default)]
    pub state: Option<ContainerState>,
}

fn claim_volumes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<CachedVolume>>, D::Error> {
    let volumes: Option<Vec<CachedVolume>> = Option::deserialize(deserializer)?;
    let mut kept: Vec<CachedVolume> = volumes.into_iter().flatten().filter(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some()).collect();
    kept.shrink_to_fit();
    Ok(Some(kept).filter(|v| !v.is_empty()))
}

impl CachedPod {
    /// Gives back what decoding over-allocated: JSON decoding grows vectors by doubling.
    pub(crate) fn shrink(&mut self) {
        if let Some(status) = self.status.as_mut() {
            crate::cache::shrink(&mut status.conditions);
            crate::cache::shrink(&mut status.container_statuses);
            crate::cache::shrink(&mut status.init_container_statuses);
            crate::cache::shrink(&mut status.pod_ips);
        }
        if let Some(spec) = self.spec.as_mut() {
            spec.containers.shrink_to_fit();
            crate::cache::shrink(&mut spec.init_containers);
            crate::cache::shrink(&mut spec.tolerations);
        }
    }
}

/// For code that holds a whole pod (tests, a pod just written): the same projection the watch
/// decoding makes.
impl From<&Pod> for CachedPod {
    fn from(pod: &Pod) -> Self {
        serde_json::to_value(pod).ok().and_then(|value| serde_json::from_value(value).ok()).unwrap_or_default()
    }
}

impl From<Pod> for CachedPod {
    fn from(pod: Pod) -> Self {
        Self::from(&pod)
    }
}

impl kube::Resource for CachedPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_keeps_what_controllers_read_and_drops_the_rest() {
        let pod: CachedPod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-0", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                "labels": {"app": "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "me"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "s1", "controller": true}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
                "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["f"]
            },
            "spec": {
                "nodeName": "n1", "hostname": "web-0", "subdomain": "web",
                "containers": [{"name": "c", "image": "busybox", "command": ["sh"], "ports": [{"name": "http", "containerPort": 80}]}],
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "volumes": [
                    {"name": "token", "projected": {"sources": []}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-web-0"}}
                ]
            },
            "status": {
                "phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "containerStatuses": [{"name": "c", "ready": true, "restartCount": 2, "image": "busybox", "imageID": "x",
                    "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]
            }
        }))
        .expect("decodes");
        assert!(pod.metadata.managed_fields.is_none());
        assert_eq!(pod.metadata.annotations, Some(std::collections::BTreeMap::from([("keep".to_string(), "me".to_string())])));
        assert_eq!(pod.metadata.owner_references.as_ref().map(Vec::len), Some(1));
        assert!(pod.metadata.deletion_timestamp.is_some());
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!((spec.node_name.as_deref(), spec.hostname.as_deref(), spec.subdomain.as_deref()), (Some("n1"), Some("web-0"), Some("web")));
        assert_eq!(spec.containers[0].ports.as_ref().expect("ports")[0].container_port, 80);
        let volumes = spec.volumes.as_ref().expect("the claim volume");
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()), Some("data-web-0"));
        let status = pod.status.as_ref().expect("status");
        assert_eq!((status.phase.as_deref(), status.pod_ip.as_deref()), (Some("Running"), Some("10.0.0.5")));
        let container = &status.container_statuses.as_ref().expect("statuses")[0];
        assert_eq!((container.ready, container.restart_count), (true, 2));
        assert_eq!(container.state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code), Some(3));

        use kube::ResourceExt;
        assert_eq!(pod.labels().get("app").map(String::as_str), Some("web"));
        assert_eq!(<CachedPod as kube::Resource>::url_path(&(), Some("ns")), "/api/v1/namespaces/ns/pods");
    }
}
