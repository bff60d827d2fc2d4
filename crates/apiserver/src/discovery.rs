//! Discovery documents: `/version`, `/api`, `/apis`, and each group-version's resource list, built
//! from the registry so custom resources appear as soon as their CRD is stored.

use serde_json::{Value, json};

use crate::resources::{Registry, ResourceDef, version_priority};

/// The Kubernetes version whose API we serve; kubectl picks its own version from this.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "33";
pub const GIT_VERSION: &str = "v1.33.0+berth";

pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": GIT_VERSION,
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, goarch()),
    })
}

fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
}

pub fn group_list(registry: &Registry) -> Value {
    let mut groups: Vec<Value> = registry.groups().iter().filter(|(g, _)| !g.is_empty()).map(|(g, vs)| group_json(g, vs)).collect();
    groups.push(crate::resource_metrics::group_entry());
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    registry.groups().into_iter().find(|(g, _)| g == name && !g.is_empty()).map(|(g, vs)| {
        let mut v = group_json(&g, &vs);
        v["kind"] = json!("APIGroup");
        v["apiVersion"] = json!("v1");
        v
    })
}

fn resource_entries(def: &ResourceDef) -> Vec<Value> {
    let mut main = json!({
        "name": def.plural,
        "singularName": def.singular,
        "namespaced": def.namespaced,
        "kind": def.kind,
        "verbs": def.verbs(),
    });
    if !def.short_names.is_empty() {
        main["shortNames"] = json!(def.short_names);
    }
    if !def.categories.is_empty() {
        main["categories"] = json!(def.categories);
    }
    let mut out = vec![main];
    if def.status {
        out.push(json!({"name": format!("{}/status", def.plural), "singularName": "", "namespaced": def.namespaced, "kind": def.kind, "verbs": ["get", "patch", "update"]}));
    }
    if def.scale.is_some() {
        out.push(json!({"name": format!("{}/scale", def.plural), "singularName": "", "namespaced": def.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
    }
    if def.group.is_empty() && def.kind == "ServiceAccount" {
        out.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
    }
    if def.group.is_empty() && def.kind == "Namespace" {
        out.push(json!({"name": "namespaces/finalize", "singularName": "", "namespaced": false, "kind": "Namespace", "verbs": ["update"]}));
    }
    if def.group.is_empty() && def.kind == "Pod" {
        out.push(json!({"name": "pods/binding", "singularName": "", "namespaced": true, "kind": "Binding", "verbs": ["create"]}));
        out.push(json!({"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}));
        out.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
        for (sub, kind) in [("attach", "PodAttachOptions"), ("exec", "PodExecOptions"), ("portforward", "PodPortForwardOptions")] {
            out.push(json!({"name": format!("pods/{sub}"), "singularName": "", "namespaced": true, "kind": kind, "verbs": ["create", "get"]}));
        }
    }
    out
}

/// The APIResourceList of one group-version, or None if nothing is served there.
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let defs = registry.resources_in(group, version);
    if defs.is_empty() {
        return None;
    }
    let resources: Vec<Value> = defs.iter().flat_map(|d| resource_entries(d)).collect();
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

/// Aggregated discovery (apidiscovery.k8s.io/v2): every group-version in one answer, which is
/// what kubectl 1.27+ asks for first and saves it one request per group-version.
pub fn aggregated(registry: &Registry, core: bool, api_version: &str) -> Value {
    let mut groups: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, mut versions)| {
            versions.sort_by(|a, b| version_priority(b).cmp(&version_priority(a)));
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = registry
                        .resources_in(&g, v)
                        .iter()
                        .map(|def| {
                            let mut subresources = Vec::new();
                            if def.status {
                                subresources.push(json!({"subresource": "status", "responseKind": {"group": def.group, "version": def.version, "kind": def.kind}, "verbs": ["get", "patch", "update"]}));
                            }
                            if def.scale.is_some() {
                                subresources.push(json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
                            }
                            if def.group.is_empty() && def.kind == "ServiceAccount" {
                                subresources.push(json!({"subresource": "token", "responseKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}, "verbs": ["create"]}));
                            }
                            if def.group.is_empty() && def.kind == "Pod" {
                                subresources.push(json!({"subresource": "binding", "responseKind": {"group": "", "version": "v1", "kind": "Binding"}, "verbs": ["create"]}));
                                subresources.push(json!({"subresource": "eviction", "responseKind": {"group": "policy", "version": "v1", "kind": "Eviction"}, "verbs": ["create"]}));
                                subresources.push(json!({"subresource": "log", "responseKind": {"group": "", "version": "v1", "kind": "Pod"}, "verbs": ["get"]}));
                                for (sub, kind) in [("attach", "PodAttachOptions"), ("exec", "PodExecOptions"), ("portforward", "PodPortForwardOptions")] {
                                    subresources.push(json!({"subresource": sub, "responseKind": {"group": "", "version": "v1", "kind": kind}, "verbs": ["create", "get"]}));
                                }
                            }
                            let mut r = json!({
                                "resource": def.plural,
                                "responseKind": {"group": def.group, "version": def.version, "kind": def.kind},
                                "scope": if def.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": def.singular,
                                "verbs": def.verbs(),
                            });
                            if !def.short_names.is_empty() {
                                r["shortNames"] = json!(def.short_names);
                            }
                            if !def.categories.is_empty() {
                                r["categories"] = json!(def.categories);
                            }
                            if !subresources.is_empty() {
                                r["subresources"] = json!(subresources);
                            }
                            r
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": vs})
        })
        .collect();
    if !core {
        groups.push(crate::resource_metrics::aggregated_group());
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": groups})
}
