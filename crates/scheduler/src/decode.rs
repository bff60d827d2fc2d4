//! Watched objects decoded without what scheduling never reads.
//!
//! Every pod change reaches the scheduler whole, managedFields included, and decoding those
//! field trees (a `serde_json::Value` per node, dropped at once by `slim`) took a quarter of the
//! scheduler's watch thread in the scheduler benchmark. Here they are skipped while parsing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
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

/// A pod as the scheduler's watch decodes it: a whole `Pod` but for its metadata's
/// managedFields and last-applied annotation.
#[derive(Clone, Debug, Default)]
pub struct WatchedPod(pub Pod);

impl<'de> Deserialize<'de> for WatchedPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Parts {
            #[serde(default, deserialize_with = "meta_without_managed_fields")]
            metadata: ObjectMeta,
            #[serde(default)]
            spec: Option<PodSpec>,
            #[serde(default)]
            status: Option<PodStatus>,
        }
        let parts = Parts::deserialize(deserializer)?;
        Ok(WatchedPod(Pod { metadata: parts.metadata, spec: parts.spec, status: parts.status }))
    }
}

impl kube::Resource for WatchedPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        <Pod as kube::Resource>::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        <Pod as kube::Resource>::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        <Pod as kube::Resource>::version(&())
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        <Pod as kube::Resource>::api_version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        <Pod as kube::Resource>::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

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
