//! Built-in kinds pass through their k8s-openapi types on every write: that checks every field's
//! type and drops fields the kind does not have, exactly what decoding into Go structs does
//! upstream. The fields dropped are reported so `fieldValidation=Strict|Warn` can act on them.

use k8s_openapi::api;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
use serde_json::Value;

/// The outcome of decoding: the object as its type knows it, and the paths of fields it lacked.
pub struct Decoded {
    pub object: Value,
    pub unknown_fields: Vec<String>,
}

macro_rules! round_trip_table {
    ($group:expr, $version:expr, $kind:expr, $value:expr; $( ($g:literal, $v:literal, $k:literal, $t:ty) ),* $(,)?) => {
        match ($group, $version, $kind) {
            $( ($g, $v, $k) => round_trip_as::<$t>($value), )*
            // No built-in type (a custom resource): nothing to check here.
            _ => Ok(Decoded { object: $value, unknown_fields: Vec::new() }),
        }
    };
}

/// Decodes `value` as `T` and hands back what `T` serializes to. Most objects are already in
/// that form; then the input itself is handed back (checked by `serializes_as`), which spares
/// building a second copy. Otherwise the typed form is serialized and the fields it lost are
/// reported.
fn round_trip_as<T: serde::de::DeserializeOwned + serde::Serialize>(value: Value) -> Result<Decoded, String> {
    // Decoding from a borrowed value spares a deep copy of the whole object.
    let typed = T::deserialize(&value).map_err(|e| e.to_string())?;
    if crate::serializes_as::serializes_as(&typed, &value) {
        return Ok(Decoded { object: value, unknown_fields: Vec::new() });
    }
    let object = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut unknown_fields = Vec::new();
    find_unknown(&value, &object, &mut String::new(), &mut unknown_fields);
    Ok(Decoded { object, unknown_fields })
}

fn round_trip(group: &str, version: &str, kind: &str, value: Value) -> Result<Decoded, String> {
    round_trip_table!(group, version, kind, value;
        ("", "v1", "Namespace", api::core::v1::Namespace),
        ("", "v1", "Pod", api::core::v1::Pod),
        ("", "v1", "Service", api::core::v1::Service),
        ("", "v1", "Endpoints", api::core::v1::Endpoints),
        ("", "v1", "ConfigMap", api::core::v1::ConfigMap),
        ("", "v1", "Secret", api::core::v1::Secret),
        ("", "v1", "ServiceAccount", api::core::v1::ServiceAccount),
        ("", "v1", "Node", api::core::v1::Node),
        ("", "v1", "Event", api::core::v1::Event),
        ("", "v1", "PersistentVolume", api::core::v1::PersistentVolume),
        ("", "v1", "PersistentVolumeClaim", api::core::v1::PersistentVolumeClaim),
        ("", "v1", "ResourceQuota", api::core::v1::ResourceQuota),
        ("", "v1", "LimitRange", api::core::v1::LimitRange),
        ("", "v1", "ReplicationController", api::core::v1::ReplicationController),
        ("", "v1", "PodTemplate", api::core::v1::PodTemplate),
        ("", "v1", "Binding", api::core::v1::Binding),
        ("apps", "v1", "Deployment", api::apps::v1::Deployment),
        ("apps", "v1", "ReplicaSet", api::apps::v1::ReplicaSet),
        ("apps", "v1", "DaemonSet", api::apps::v1::DaemonSet),
        ("apps", "v1", "StatefulSet", api::apps::v1::StatefulSet),
        ("apps", "v1", "ControllerRevision", api::apps::v1::ControllerRevision),
        ("batch", "v1", "Job", api::batch::v1::Job),
        ("batch", "v1", "CronJob", api::batch::v1::CronJob),
        ("autoscaling", "v1", "HorizontalPodAutoscaler", api::autoscaling::v1::HorizontalPodAutoscaler),
        ("autoscaling", "v2", "HorizontalPodAutoscaler", api::autoscaling::v2::HorizontalPodAutoscaler),
        ("autoscaling", "v1", "Scale", api::autoscaling::v1::Scale),
        ("coordination.k8s.io", "v1", "Lease", api::coordination::v1::Lease),
        ("discovery.k8s.io", "v1", "EndpointSlice", api::discovery::v1::EndpointSlice),
        ("events.k8s.io", "v1", "Event", api::events::v1::Event),
        ("networking.k8s.io", "v1", "Ingress", api::networking::v1::Ingress),
        ("networking.k8s.io", "v1", "IngressClass", api::networking::v1::IngressClass),
        ("networking.k8s.io", "v1", "NetworkPolicy", api::networking::v1::NetworkPolicy),
        ("policy", "v1", "PodDisruptionBudget", api::policy::v1::PodDisruptionBudget),
        ("policy", "v1", "Eviction", api::policy::v1::Eviction),
        ("rbac.authorization.k8s.io", "v1", "Role", api::rbac::v1::Role),
        ("rbac.authorization.k8s.io", "v1", "RoleBinding", api::rbac::v1::RoleBinding),
        ("rbac.authorization.k8s.io", "v1", "ClusterRole", api::rbac::v1::ClusterRole),
        ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", api::rbac::v1::ClusterRoleBinding),
        ("scheduling.k8s.io", "v1", "PriorityClass", api::scheduling::v1::PriorityClass),
        ("storage.k8s.io", "v1", "StorageClass", api::storage::v1::StorageClass),
        ("apiextensions.k8s.io", "v1", "CustomResourceDefinition", apiextensions::CustomResourceDefinition),
    )
}

/// Decodes `value` (whose apiVersion and kind are already set) as its built-in type, giving the
/// object as that type serializes it and the fields it dropped. A kind without a built-in type
/// (a custom resource) comes back as it was; `Err` carries the decode error text.
pub fn decode(group: &str, version: &str, kind: &str, value: Value) -> Result<Decoded, String> {
    round_trip(group, version, kind, value)
}

/// Walks input and decoded output side by side; a field with a value in the input and none in
/// the output was unknown to the type. (`null` inputs decode to absent and are not unknown.)
fn find_unknown(input: &Value, output: &Value, path: &mut String, found: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (key, value) in i {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                match o.get(key) {
                    Some(out) => find_unknown(value, out, path, found),
                    None if value.is_null() => {}
                    None => found.push(path.clone()),
                }
                path.truncate(len);
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (a, b)) in i.iter().zip(o).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{n}]"));
                find_unknown(a, b, path, found);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_dropped_and_reported_with_their_path() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "bogus": 1, "labels": null},
            "spec": {"containers": [{"name": "c", "image": "busybox", "imagee": "typo"}]}
        });
        let decoded = decode("", "v1", "Pod", pod).unwrap();
        assert_eq!(decoded.unknown_fields, ["metadata.bogus", "spec.containers[0].imagee"]);
        assert!(decoded.object["spec"]["containers"][0].get("imagee").is_none());
    }

    #[test]
    fn wrong_types_are_errors() {
        let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": "three"}});
        assert!(decode("apps", "v1", "Deployment", deploy.clone()).is_err());
        let custom = decode("example.com", "v1", "Widget", deploy.clone()).unwrap();
        assert_eq!(custom.object, deploy);
        assert!(custom.unknown_fields.is_empty());
    }
}
