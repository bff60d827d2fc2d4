//! A container's environment as the kubelet builds it: `envFrom` first, then `env` in order,
//! with `$(VAR)` references expanded against what came before, and values from ConfigMaps,
//! Secrets, the pod itself (downward API) and the container's resources.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client};

use scheduler::quantity;

/// Why a container cannot be configured; reported as `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKey { key: String, namespace: String, name: String },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKey { key: String, namespace: String, name: String },
    #[error("{0}")]
    Field(String),
    #[error("reading {what}: {source}")]
    Api { what: String, source: kube::Error },
}

/// How long a ConfigMap or Secret read for one pod's volumes serves the other pods' volume
/// refreshes.
const SHARED_FOR: Duration = Duration::from_secs(5);

/// ConfigMaps and Secrets read for volume refreshes, shared by all pod workers for a few
/// seconds. Every pod refreshes its volumes every 10 s, and every pod mounts its namespace's
/// `kube-root-ca.crt`: unshared, 100 pods on a node cost the API server 10 GETs a second, for
/// as long as they run. Only objects that exist are shared, so a ConfigMap created just before
/// its pod is never hidden behind an earlier "not found".
#[derive(Default)]
pub struct SharedSources {
    configmaps: Mutex<HashMap<(String, String), (Instant, ConfigMap)>>,
    secrets: Mutex<HashMap<(String, String), (Instant, Secret)>>,
}

fn shared_get<T: Clone>(map: &Mutex<HashMap<(String, String), (Instant, T)>>, namespace: &str, name: &str) -> Option<T> {
    let map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.get(&(namespace.to_string(), name.to_string())).filter(|(at, _)| at.elapsed() < SHARED_FOR).map(|(_, object)| object.clone())
}

fn shared_put<T>(map: &Mutex<HashMap<(String, String), (Instant, T)>>, namespace: &str, name: &str, object: T) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.retain(|_, (at, _)| at.elapsed() < SHARED_FOR);
    map.insert((namespace.to_string(), name.to_string()), (Instant::now(), object));
}

/// Fetches ConfigMaps and Secrets of one namespace, once each per container start (or per
/// volume refresh, shared with other pods' refreshes when built with `with_shared`).
pub struct Sources {
    configmaps: Api<ConfigMap>,
    secrets: Api<Secret>,
    namespace: String,
    cache_cm: BTreeMap<String, Option<ConfigMap>>,
    cache_secret: BTreeMap<String, Option<Secret>>,
    shared: Option<Arc<SharedSources>>,
}

impl Sources {
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            configmaps: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            cache_cm: BTreeMap::new(),
            cache_secret: BTreeMap::new(),
            shared: None,
        }
    }

    pub fn with_shared(client: Client, namespace: &str, shared: Arc<SharedSources>) -> Self {
        Self { shared: Some(shared), ..Self::new(client, namespace) }
    }

    pub async fn configmap(&mut self, name: &str) -> Result<Option<ConfigMap>, ConfigError> {
        if let Some(found) = self.cache_cm.get(name) {
            return Ok(found.clone());
        }
        if let Some(found) = self.shared.as_ref().and_then(|s| shared_get(&s.configmaps, &self.namespace, name)) {
            self.cache_cm.insert(name.to_string(), Some(found.clone()));
            return Ok(Some(found));
        }
        let found = self.configmaps.get_opt(name).await.map_err(|source| ConfigError::Api { what: format!("configmap {name}"), source })?;
        if let (Some(shared), Some(object)) = (&self.shared, &found) {
            shared_put(&shared.configmaps, &self.namespace, name, object.clone());
        }
        self.cache_cm.insert(name.to_string(), found.clone());
        Ok(found)
    }

    pub async fn secret(&mut self, name: &str) -> Result<Option<Secret>, ConfigError> {
        if let Some(found) = self.cache_secret.get(name) {
            return Ok(found.clone());
        }
        if let Some(found) = self.shared.as_ref().and_then(|s| shared_get(&s.secrets, &self.namespace, name)) {
            self.cache_secret.insert(name.to_string(), Some(found.clone()));
            return Ok(Some(found));
        }
        let found = self.secrets.get_opt(name).await.map_err(|source| ConfigError::Api { what: format!("secret {name}"), source })?;
        if let (Some(shared), Some(object)) = (&self.shared, &found) {
            shared_put(&shared.secrets, &self.namespace, name, object.clone());
        }
        self.cache_secret.insert(name.to_string(), found.clone());
        Ok(found)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

fn configmap_value(cm: &ConfigMap, key: &str) -> Option<String> {
    cm.data.as_ref().and_then(|d| d.get(key).cloned()).or_else(|| cm.binary_data.as_ref().and_then(|d| d.get(key)).map(|b| String::from_utf8_lossy(&b.0).into_owned()))
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret.data.as_ref().and_then(|d| d.get(key)).map(|b| String::from_utf8_lossy(&b.0).into_owned()).or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key).cloned()))
}

/// The container's environment, in order, with later names overriding earlier ones.
pub async fn container_env(pod: &Pod, container: &Container, host_ip: &str, pod_ips: &[String], sources: &mut Sources) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        if let Some(existing) = env.iter_mut().find(|(n, _)| *n == name) {
            existing.1 = value;
        } else {
            env.push((name, value));
        }
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(reference) = &from.config_map_ref {
            let optional = reference.optional.unwrap_or(false);
            match sources.configmap(&reference.name).await? {
                Some(cm) => {
                    for (key, value) in cm.data.iter().flatten() {
                        set(&mut env, format!("{prefix}{key}"), value.clone());
                    }
                }
                None if optional => {}
                None => return Err(ConfigError::ConfigMapNotFound(reference.name.clone())),
            }
        }
        if let Some(reference) = &from.secret_ref {
            let optional = reference.optional.unwrap_or(false);
            match sources.secret(&reference.name).await? {
                Some(secret) => {
                    for (key, value) in secret.data.iter().flatten() {
                        set(&mut env, format!("{prefix}{key}"), String::from_utf8_lossy(&value.0).into_owned());
                    }
                }
                None if optional => {}
                None => return Err(ConfigError::SecretNotFound(reference.name.clone())),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            if let Some(selector) = &from.config_map_key_ref {
                let optional = selector.optional.unwrap_or(false);
                match sources.configmap(&selector.name).await? {
                    Some(cm) => match configmap_value(&cm, &selector.key) {
                        Some(v) => v,
                        None if optional => continue,
                        None => return Err(ConfigError::ConfigMapKey { key: selector.key.clone(), namespace: sources.namespace().into(), name: selector.name.clone() }),
                    },
                    None if optional => continue,
                    None => return Err(ConfigError::ConfigMapNotFound(selector.name.clone())),
                }
            } else if let Some(selector) = &from.secret_key_ref {
                let optional = selector.optional.unwrap_or(false);
                match sources.secret(&selector.name).await? {
                    Some(secret) => match secret_value(&secret, &selector.key) {
                        Some(v) => v,
                        None if optional => continue,
                        None => return Err(ConfigError::SecretKey { key: selector.key.clone(), namespace: sources.namespace().into(), name: selector.name.clone() }),
                    },
                    None if optional => continue,
                    None => return Err(ConfigError::SecretNotFound(selector.name.clone())),
                }
            } else if let Some(field) = &from.field_ref {
                pod_field(pod, &field.field_path, host_ip, pod_ips)?
            } else if let Some(resource) = &from.resource_field_ref {
                let target = match resource.container_name.as_deref().filter(|n| !n.is_empty()) {
                    Some(name) => all_containers(pod).find(|c| c.name == name).ok_or_else(|| ConfigError::Field(format!("container {name} not found")))?,
                    None => container,
                };
                resource_field(target, &resource.resource, resource.divisor.as_ref().map(|d| d.0.as_str()))?
            } else {
                String::new()
            }
        } else {
            expand(var.value.as_deref().unwrap_or(""), &env)
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

pub fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.map(|s| s.init_containers.iter().flatten()).into_iter().flatten().chain(spec.map(|s| s.containers.iter()).into_iter().flatten())
}

/// Downward API field paths (the ones upstream allows in env and volumes).
pub fn pod_field(pod: &Pod, path: &str, host_ip: &str, pod_ips: &[String]) -> Result<String, ConfigError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let subscript = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix).and_then(|rest| rest.strip_prefix("['").or_else(|| rest.strip_prefix("[\""))).and_then(|rest| rest.strip_suffix("']").or_else(|| rest.strip_suffix("\"]"))).map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.hostIP" => host_ip.to_string(),
        "status.hostIPs" => host_ip.to_string(),
        "status.podIP" => pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => pod_ips.join(","),
        _ => {
            if let Some(key) = subscript("metadata.labels") {
                meta.labels.as_ref().and_then(|l| l.get(&key).cloned()).unwrap_or_default()
            } else if let Some(key) = subscript("metadata.annotations") {
                meta.annotations.as_ref().and_then(|a| a.get(&key).cloned()).unwrap_or_default()
            } else {
                return Err(ConfigError::Field(format!("unsupported fieldPath: {path}")));
            }
        }
    })
}

/// `key="value"` lines, sorted, as the downward API writes label and annotation files.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter().flatten().map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone()))).collect::<Vec<_>>().join("\n")
}

/// `limits.cpu`, `requests.memory`, ... divided by the divisor and rounded up, as upstream.
/// Upstream reports a missing limit as the node's allocatable; we fall back to the request,
/// and to 0 without one.
pub fn resource_field(container: &Container, resource: &str, divisor: Option<&str>) -> Result<String, ConfigError> {
    let resources = container.resources.as_ref();
    let (kind, name) = resource.split_once('.').ok_or_else(|| ConfigError::Field(format!("unsupported resource: {resource}")))?;
    let pick = |map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| map.and_then(|m| m.get(name)).map(|q| q.0.clone());
    let value = match kind {
        "limits" => pick(resources.and_then(|r| r.limits.as_ref())).or_else(|| pick(resources.and_then(|r| r.requests.as_ref()))),
        "requests" => pick(resources.and_then(|r| r.requests.as_ref())),
        _ => return Err(ConfigError::Field(format!("unsupported resource: {resource}"))),
    };
    let value = value.unwrap_or_else(|| "0".into());
    let amount = quantity::parse_milli(&value).map_err(|_| ConfigError::Field(format!("bad quantity {value}")))?;
    let divisor = quantity::parse_milli(divisor.unwrap_or("1")).map_err(|_| ConfigError::Field(format!("bad divisor for {resource}")))?;
    if divisor <= 0 {
        return Err(ConfigError::Field(format!("divisor must be positive: {resource}")));
    }
    Ok(format!("{}", (amount + divisor - 1).div_euclid(divisor)))
}

/// Expands `$(NAME)` from `env`; `$$` escapes a `$`; unknown references stay as written.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if bytes[i + 1] == b'(' {
                if let Some(end) = text[i + 2..].find(')') {
                    let name = &text[i + 2..i + 2 + end];
                    if let Some((_, value)) = env.iter().find(|(n, _)| n == name) {
                        out.push_str(value);
                    } else {
                        out.push_str(&text[i..i + 3 + end]);
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_sources_serve_for_a_few_seconds_then_expire() {
        let shared = SharedSources::default();
        let cm = |v: &str| ConfigMap { data: Some(BTreeMap::from([("k".to_string(), v.to_string())])), ..Default::default() };
        assert!(shared_get(&shared.configmaps, "ns", "a").is_none());
        shared_put(&shared.configmaps, "ns", "a", cm("1"));
        assert_eq!(shared_get(&shared.configmaps, "ns", "a").and_then(|c| c.data), cm("1").data);
        assert!(shared_get(&shared.configmaps, "other", "a").is_none(), "namespaces are apart");
        // An entry older than SHARED_FOR is not served, and goes at the next insert.
        let old = Instant::now().checked_sub(SHARED_FOR + Duration::from_secs(1)).expect("clock far enough from boot");
        shared.configmaps.lock().unwrap().insert(("ns".into(), "b".into()), (old, cm("stale")));
        assert!(shared_get(&shared.configmaps, "ns", "b").is_none());
        shared_put(&shared.configmaps, "ns", "c", cm("3"));
        assert!(!shared.configmaps.lock().unwrap().contains_key(&("ns".to_string(), "b".to_string())));
    }

    #[test]
    fn expands_references_escapes_and_leaves_unknown_ones() {
        let env = vec![("A".to_string(), "1".to_string()), ("B".to_string(), "two".to_string())];
        assert_eq!(expand("$(A)-$(B)", &env), "1-two");
        assert_eq!(expand("$$(A) $(C) $ (A) $(A", &env), "$(A) $(C) $ (A) $(A");
        assert_eq!(expand("é$(A)", &env), "é1");
    }

    #[test]
    fn resource_fields_round_up_by_divisor() {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}, "requests": {"cpu": "100m"}}
        }))
        .unwrap();
        assert_eq!(resource_field(&container, "limits.cpu", None).unwrap(), "1");
        assert_eq!(resource_field(&container, "limits.cpu", Some("1m")).unwrap(), "250");
        assert_eq!(resource_field(&container, "limits.memory", Some("1Mi")).unwrap(), "64");
        assert_eq!(resource_field(&container, "requests.memory", None).unwrap(), "0");
    }
}
