//! A small OpenAPI v3 document shaped like the one Kubernetes serves for apps/v1, for tests.
//! Properties use the `allOf` wrapper with extensions on the property, as upstream publishes.

use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::schema::OpenApiSchema;

fn r(name: &str) -> Value {
    json!({"allOf": [{"$ref": format!("#/components/schemas/{name}")}], "default": {}})
}

fn merge_list(item: &str, key: &str, map_keys: &[&str]) -> Value {
    json!({
        "type": "array", "items": r(item),
        "x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": key,
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": map_keys
    })
}

fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string", "default": ""}})
}

fn string_map() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string", "default": ""}})
}

fn build() -> Value {
    let mut strategy = r("DeploymentStrategy");
    strategy["x-kubernetes-patch-strategy"] = json!("retainKeys");
    let mut volumes = merge_list("Volume", "name", &["name"]);
    volumes["x-kubernetes-patch-strategy"] = json!("merge,retainKeys");
    let mut finalizers = strings();
    finalizers["x-kubernetes-patch-strategy"] = json!("merge");
    finalizers["x-kubernetes-list-type"] = json!("set");
    let mut tolerations = json!({"type": "array", "items": r("Toleration")});
    tolerations["x-kubernetes-list-type"] = json!("atomic");
    let mut replaced = r("DeploymentStrategy");
    replaced["x-kubernetes-patch-strategy"] = json!("replace");
    let mut weird = strings();
    weird["x-kubernetes-patch-strategy"] = json!("merge,replace");
    let keyless =
        json!({"type": "array", "items": r("Toleration"), "x-kubernetes-patch-strategy": "merge"});

    json!({"openapi": "3.0.0", "components": {"schemas": {
        "io.k8s.api.apps.v1.Deployment": {"type": "object", "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": r("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            "spec": r("io.k8s.api.apps.v1.DeploymentSpec"),
            "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}
        }},
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": {"type": "object", "properties": {
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "labels": string_map(),
            "annotations": string_map(),
            "finalizers": finalizers,
            "ownerReferences": merge_list("OwnerReference", "uid", &["uid"]),
            "managedFields": {"type": "array", "items": r("ManagedFieldsEntry")}
        }},
        "OwnerReference": {"type": "object", "properties": {
            "uid": {"type": "string"}, "name": {"type": "string"}, "kind": {"type": "string"}
        }, "x-kubernetes-map-type": "atomic"},
        "ManagedFieldsEntry": {"type": "object", "properties": {
            "manager": {"type": "string"}, "fieldsV1": {"type": "object"}
        }},
        "io.k8s.api.apps.v1.DeploymentSpec": {"type": "object", "properties": {
            "replicas": {"type": "integer"},
            "paused": {"type": "boolean"},
            "selector": r("LabelSelector"),
            "strategy": strategy,
            "replacedStrategy": replaced,
            "weirdList": weird,
            "keylessMergeList": keyless,
            "template": r("PodTemplateSpec")
        }},
        "LabelSelector": {"type": "object", "properties": {
            "matchLabels": string_map(),
            "matchExpressions": {"type": "array", "items": {"type": "object"},
                "x-kubernetes-list-type": "atomic"}
        }, "x-kubernetes-map-type": "atomic"},
        "DeploymentStrategy": {"type": "object", "properties": {
            "type": {"type": "string"},
            "rollingUpdate": r("RollingUpdate")
        }},
        "RollingUpdate": {"type": "object", "properties": {
            "maxSurge": {"type": "string"}, "maxUnavailable": {"type": "string"}
        }},
        "PodTemplateSpec": {"type": "object", "properties": {
            "metadata": r("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            "spec": r("PodSpec")
        }},
        "PodSpec": {"type": "object", "properties": {
            "containers": merge_list("Container", "name", &["name"]),
            "initContainers": merge_list("Container", "name", &["name"]),
            "volumes": volumes,
            "tolerations": tolerations,
            "nodeSelector": string_map(),
            "imagePullSecrets": merge_list("LocalObjectReference", "name", &["name"])
        }},
        "LocalObjectReference": {"type": "object", "properties": {"name": {"type": "string"}},
            "x-kubernetes-map-type": "atomic"},
        "Toleration": {"type": "object", "properties": {
            "key": {"type": "string"}, "operator": {"type": "string"}, "effect": {"type": "string"}
        }},
        "Container": {"type": "object", "properties": {
            "name": {"type": "string"},
            "image": {"type": "string"},
            "args": strings(),
            "command": strings(),
            "env": merge_list("EnvVar", "name", &["name"]),
            "ports": merge_list("ContainerPort", "containerPort", &["containerPort", "protocol"]),
            "volumeMounts": merge_list("VolumeMount", "mountPath", &["mountPath"]),
            "resources": r("ResourceRequirements")
        }},
        "EnvVar": {"type": "object", "properties": {
            "name": {"type": "string"}, "value": {"type": "string"}, "valueFrom": {"type": "object"}
        }},
        "ContainerPort": {"type": "object", "properties": {
            "containerPort": {"type": "integer"}, "protocol": {"type": "string", "default": "TCP"},
            "name": {"type": "string"}
        }},
        "VolumeMount": {"type": "object", "properties": {
            "mountPath": {"type": "string"}, "name": {"type": "string"}
        }},
        "ResourceRequirements": {"type": "object", "properties": {
            "limits": string_map(), "requests": string_map()
        }},
        "Volume": {"type": "object", "properties": {
            "name": {"type": "string"},
            "configMap": {"type": "object", "properties": {"name": {"type": "string"}}},
            "secret": {"type": "object", "properties": {"secretName": {"type": "string"}}},
            "emptyDir": {"type": "object", "properties": {"medium": {"type": "string"}}}
        }}
    }}})
}

pub(crate) fn doc() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

pub(crate) fn deployment_schema() -> OpenApiSchema<'static> {
    match OpenApiSchema::new(doc(), "io.k8s.api.apps.v1.Deployment") {
        Some(s) => s,
        None => panic!("test document lacks Deployment"),
    }
}

/// A Deployment as stored: two containers, env, ports, volumes, finalizers.
pub(crate) fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "default",
            "labels": {"app": "web", "tier": "frontend"},
            "annotations": {"owner": "team-a"},
            "finalizers": ["example.com/a", "example.com/b"]
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "nginx:1.25",
                            "args": ["--port", "8080"],
                            "env": [{"name": "MODE", "value": "prod"}, {"name": "DEBUG", "value": "0"}],
                            "ports": [{"containerPort": 8080, "protocol": "TCP"}, {"containerPort": 9090, "protocol": "TCP"}],
                            "volumeMounts": [{"mountPath": "/etc/conf", "name": "conf"}]
                        },
                        {"name": "sidecar", "image": "envoy:1.30"}
                    ],
                    "volumes": [{"name": "conf", "configMap": {"name": "web-conf"}}],
                    "tolerations": [{"key": "a", "operator": "Exists"}],
                    "nodeSelector": {"disk": "ssd"}
                }
            }
        }
    })
}
