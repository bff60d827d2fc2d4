//! Watched objects decoded without what scheduling never reads.
//!
//! Every pod change reaches the scheduler whole, managedFields included, and decoding those
//! field trees (a `serde_json::Value` per node, dropped at once by `slim`) took a quarter of the
//! scheduler's watch thread in the scheduler benchmark. Here they are skipped while parsing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::{Deserialize, Deserializer};

/// ObjectMeta as components read it: no managedFields (often the largest part of an object)
/// and no last-applied annotation. Listed field by field so serde skips the rest unbuilt.
/// The controller manager's pod cache decodes its metadata this way too.
pub fn meta_without_managed_fields<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        #[serde(default)]
        annotations: Option<BTreeMap<String, String>>,
        #[serde(default)]
        creation_timestamp: Option<Time>,
        #[serde(default)]
        deletion_grace_period_seconds: Option<i64>,
        #[serde(default)]
        deletion_timestamp: Option<Time>,
        #[serde(default)]
        finalizers: Option<Vec<String>>,
        #[serde(default)]
        generate_name: Option<String>,
        #[serde(default)]
        generation: Option<i64>,
        #[serde(default)]
        labels: Option<BTreeMap<String, String>>,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        namespace: Option<String>,
        #[serde(default)]
        owner_references: Option<Vec<OwnerReference>>,
        #[serde(default)]
        resource_version: Option<String>,
        #[serde(default)]
        uid: Option<String>,
    }
    let meta = Meta::deserialize(deserializer)?;
    let annotations = meta.annotations.map(|mut annotations| {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        annotations
    });
    Ok(ObjectMeta {
        annotations: annotations.filter(|a| !a.is_empty()),
        creation_timestamp: meta.creation_timestamp,
        deletion_grace_period_seconds: meta.deletion_grace_period_seconds,
        deletion_timestamp: meta.deletion_timestamp,
        finalizers: meta.finalizers,
        generate_name: meta.generate_name,
        generation: meta.generation,
        labels: meta.labels,
        name: meta.name,
        namespace: meta.namespace,
        owner_references: meta.owner_references.map(|mut refs| {
            refs.shrink_to_fit();
            refs
        }),
        resource_version: meta.resource_version,
        uid: meta.uid,
        ..Default::default()
    })
}

/// A whole `Pod` but for its metadata's managedFields and last-applied annotation (the
/// simulated nodes' watch; the scheduler's decodes less, see [`SchedulingPod`]).
#[derive(Clone, Debug, Default)]
pub struct WatchedPod(pub Pod);

/// A pod's three parts, its metadata without managedFields, its spec and status as `Spec` and
/// `Status` decode them.
#[derive(Deserialize)]
struct PodParts<Spec, Status> {
    #[serde(default, deserialize_with = "meta_without_managed_fields")]
    metadata: ObjectMeta,
    #[serde(default = "Option::default")]
    spec: Option<Spec>,
    #[serde(default = "Option::default")]
    status: Option<Status>,
}

impl<'de> Deserialize<'de> for WatchedPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let parts = PodParts::<PodSpec, PodStatus>::deserialize(deserializer)?;
        Ok(WatchedPod(Pod { metadata: parts.metadata, spec: parts.spec, status: parts.status }))
    }
}

/// A pod as the scheduler's watch decodes it: what [`WatchedPod`] holds after the scheduler's
/// `slim`, built directly. Containers keep only name, image, ports, resources, resize and
/// restart policy; only volumes that name a claim are kept; ephemeral containers and container
/// statuses are skipped unparsed. Every pod change (its creation, binding and each status
/// write) passes through here, and the skipped parts were most of the decoding.
///
/// The spec and status structs below list every field of `PodSpec` and `PodStatus` and build
/// them without `..Default::default()`, so a field k8s-openapi adds fails to compile here
/// instead of silently reading as unset.
#[derive(Clone, Debug, Default)]
pub struct SchedulingPod(pub Pod);

impl<'de> Deserialize<'de> for SchedulingPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let parts = PodParts::<SlimSpec, SlimStatus>::deserialize(deserializer)?;
        Ok(SchedulingPod(Pod { metadata: parts.metadata, spec: parts.spec.map(SlimSpec::into_spec), status: parts.status.map(SlimStatus::into_status) }))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimContainer {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    ports: Option<Vec<k8s_openapi::api::core::v1::ContainerPort>>,
    #[serde(default)]
    resize_policy: Option<Vec<k8s_openapi::api::core::v1::ContainerResizePolicy>>,
    #[serde(default)]
    resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    #[serde(default)]
    restart_policy: Option<String>,
}

impl SlimContainer {
    fn into_container(self) -> Container {
        Container {
            name: self.name.unwrap_or_default(),
            image: self.image,
            ports: self.ports,
            resize_policy: self.resize_policy,
            resources: self.resources,
            restart_policy: self.restart_policy,
            ..Default::default()
        }
    }
}

/// A volume as far as the scheduler reads it: only claims matter.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimVolume {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    persistent_volume_claim: Option<k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource>,
    #[serde(default)]
    ephemeral: Option<k8s_openapi::api::core::v1::EphemeralVolumeSource>,
}

fn containers(list: Option<Vec<SlimContainer>>) -> Option<Vec<Container>> {
    list.map(|list| list.into_iter().map(SlimContainer::into_container).collect()).filter(|c: &Vec<Container>| !c.is_empty())
}

/// What `shrink` in the driver leaves of a list: no spare capacity, and none for an empty one.
fn shrunk<T>(list: Option<Vec<T>>) -> Option<Vec<T>> {
    list.filter(|l| !l.is_empty()).map(|mut l| {
        l.shrink_to_fit();
        l
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimSpec {
    #[serde(default)]
    active_deadline_seconds: Option<i64>,
    #[serde(default)]
    affinity: Option<k8s_openapi::api::core::v1::Affinity>,
    #[serde(default)]
    automount_service_account_token: Option<bool>,
    #[serde(default)]
    containers: Option<Vec<SlimContainer>>,
    #[serde(default)]
    dns_config: Option<k8s_openapi::api::core::v1::PodDNSConfig>,
    #[serde(default)]
    dns_policy: Option<String>,
    #[serde(default)]
    enable_service_links: Option<bool>,
    #[serde(default)]
    host_aliases: Option<Vec<k8s_openapi::api::core::v1::HostAlias>>,
    #[serde(default, rename = "hostIPC")]
    host_ipc: Option<bool>,
    #[serde(default)]
    host_network: Option<bool>,
    #[serde(default, rename = "hostPID")]
    host_pid: Option<bool>,
    #[serde(default)]
    host_users: Option<bool>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    image_pull_secrets: Option<Vec<k8s_openapi::api::core::v1::LocalObjectReference>>,
    #[serde(default)]
    init_containers: Option<Vec<SlimContainer>>,
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    node_selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    os: Option<k8s_openapi::api::core::v1::PodOS>,
    #[serde(default)]
    overhead: Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    #[serde(default)]
    preemption_policy: Option<String>,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    priority_class_name: Option<String>,
    #[serde(default)]
    readiness_gates: Option<Vec<k8s_openapi::api::core::v1::PodReadinessGate>>,
    #[serde(default)]
    resource_claims: Option<Vec<k8s_openapi::api::core::v1::PodResourceClaim>>,
    #[serde(default)]
    resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    #[serde(default)]
    restart_policy: Option<String>,
    #[serde(default)]
    runtime_class_name: Option<String>,
    #[serde(default)]
    scheduler_name: Option<String>,
    #[serde(default)]
    scheduling_gates: Option<Vec<k8s_openapi::api::core::v1::PodSchedulingGate>>,
    #[serde(default)]
    security_context: Option<k8s_openapi::api::core::v1::PodSecurityContext>,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    service_account_name: Option<String>,
    #[serde(default, rename = "setHostnameAsFQDN")]
    set_hostname_as_fqdn: Option<bool>,
    #[serde(default)]
    share_process_namespace: Option<bool>,
    #[serde(default)]
    subdomain: Option<String>,
    #[serde(default)]
    termination_grace_period_seconds: Option<i64>,
    #[serde(default)]
    tolerations: Option<Vec<k8s_openapi::api::core::v1::Toleration>>,
    #[serde(default)]
    topology_spread_constraints: Option<Vec<k8s_openapi::api::core::v1::TopologySpreadConstraint>>,
    #[serde(default)]
    volumes: Option<Vec<SlimVolume>>,
}

impl SlimSpec {
    fn into_spec(self) -> PodSpec {
        let volumes = self.volumes.map(|volumes| {
            volumes
                .into_iter()
                .filter(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
                .map(|v| Volume { name: v.name.unwrap_or_default(), persistent_volume_claim: v.persistent_volume_claim, ephemeral: v.ephemeral, ..Default::default() })
                .collect()
        });
        PodSpec {
            active_deadline_seconds: self.active_deadline_seconds,
            affinity: self.affinity,
            automount_service_account_token: self.automount_service_account_token,
            containers: containers(self.containers).unwrap_or_default(),
            dns_config: self.dns_config,
            dns_policy: self.dns_policy,
            enable_service_links: self.enable_service_links,
            ephemeral_containers: None,
            host_aliases: self.host_aliases,
            host_ipc: self.host_ipc,
            host_network: self.host_network,
            host_pid: self.host_pid,
            host_users: self.host_users,
            hostname: self.hostname,
            image_pull_secrets: self.image_pull_secrets,
            init_containers: shrunk(containers(self.init_containers)),
            node_name: self.node_name,
            node_selector: self.node_selector,
            os: self.os,
            overhead: self.overhead,
            preemption_policy: self.preemption_policy,
            priority: self.priority,
            priority_class_name: self.priority_class_name,
            readiness_gates: self.readiness_gates,
            resource_claims: self.resource_claims,
            resources: self.resources,
            restart_policy: self.restart_policy,
            runtime_class_name: self.runtime_class_name,
            scheduler_name: self.scheduler_name,
            scheduling_gates: self.scheduling_gates,
            security_context: self.security_context,
            service_account: self.service_account,
            service_account_name: self.service_account_name,
            set_hostname_as_fqdn: self.set_hostname_as_fqdn,
            share_process_namespace: self.share_process_namespace,
            subdomain: self.subdomain,
            termination_grace_period_seconds: self.termination_grace_period_seconds,
            tolerations: shrunk(self.tolerations),
            topology_spread_constraints: self.topology_spread_constraints,
            volumes: shrunk(volumes),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimStatus {
    #[serde(default)]
    conditions: Option<Vec<k8s_openapi::api::core::v1::PodCondition>>,
    #[serde(default, rename = "hostIP")]
    host_ip: Option<String>,
    #[serde(default, rename = "hostIPs")]
    host_ips: Option<Vec<k8s_openapi::api::core::v1::HostIP>>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    nominated_node_name: Option<String>,
    #[serde(default)]
    observed_generation: Option<i64>,
    #[serde(default)]
    phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pod_ips: Option<Vec<k8s_openapi::api::core::v1::PodIP>>,
    #[serde(default)]
    qos_class: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    resize: Option<String>,
    #[serde(default)]
    resource_claim_statuses: Option<Vec<k8s_openapi::api::core::v1::PodResourceClaimStatus>>,
    #[serde(default)]
    start_time: Option<Time>,
}

impl SlimStatus {
    fn into_status(self) -> PodStatus {
        PodStatus {
            conditions: shrunk(self.conditions),
            container_statuses: None,
            ephemeral_container_statuses: None,
            host_ip: self.host_ip,
            host_ips: shrunk(self.host_ips),
            init_container_statuses: None,
            message: self.message,
            nominated_node_name: self.nominated_node_name,
            observed_generation: self.observed_generation,
            phase: self.phase,
            pod_ip: self.pod_ip,
            pod_ips: shrunk(self.pod_ips),
            qos_class: self.qos_class,
            reason: self.reason,
            resize: self.resize,
            resource_claim_statuses: self.resource_claim_statuses,
            start_time: self.start_time,
        }
    }
}

/// `kube::Resource` for a pod decoded our own way (a type with `metadata: ObjectMeta` at `.0` or
/// a named field): to the API it is a `Pod`. Needs `kube` and `k8s-openapi` where it is used.
#[macro_export]
macro_rules! pod_resource {
    ($pod:ty, $($meta:tt)+) => {
        impl ::kube::Resource for $pod {
            type DynamicType = ();
            type Scope = ::k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> ::std::borrow::Cow<'_, str> {
                <::k8s_openapi::api::core::v1::Pod as ::kube::Resource>::kind(&())
            }
            fn group(_: &()) -> ::std::borrow::Cow<'_, str> {
                <::k8s_openapi::api::core::v1::Pod as ::kube::Resource>::group(&())
            }
            fn version(_: &()) -> ::std::borrow::Cow<'_, str> {
                <::k8s_openapi::api::core::v1::Pod as ::kube::Resource>::version(&())
            }
            fn api_version(_: &()) -> ::std::borrow::Cow<'_, str> {
                <::k8s_openapi::api::core::v1::Pod as ::kube::Resource>::api_version(&())
            }
            fn plural(_: &()) -> ::std::borrow::Cow<'_, str> {
                <::k8s_openapi::api::core::v1::Pod as ::kube::Resource>::plural(&())
            }
            fn meta(&self) -> &::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.$($meta)+
            }
            fn meta_mut(&mut self) -> &mut ::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.$($meta)+
            }
        }
    };
}

pod_resource!(WatchedPod, 0.metadata);
pod_resource!(SchedulingPod, 0.metadata);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_pod_is_the_pod_without_ownership_records() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "uid": "u", "resourceVersion": "7", "labels": {"app": "a"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "me"},
                         "managedFields": [{"manager": "m", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"containers": [{"name": "c", "image": "i"}], "nodeName": "node-1"},
            "status": {"phase": "Running"}
        });
        let WatchedPod(pod) = serde_json::from_value(json.clone()).unwrap();
        let mut full: Pod = serde_json::from_value(json).unwrap();
        full.metadata.managed_fields = None;
        full.metadata.annotations = Some([("keep".to_string(), "me".to_string())].into());
        assert_eq!(pod, full);
    }
}
