//! Server-side printing: the metav1 `Table` kube-apiserver returns for
//! `Accept: application/json;as=Table;g=meta.k8s.io;v=v1`, with the columns upstream prints for
//! each kind (these are exactly what `kubectl get` shows), CRD `additionalPrinterColumns`, and
//! upstream's default (Name, Created At) for everything else.

use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

pub struct TableOptions {
    pub include_object: IncludeObject,
    pub resource_version: Option<String>,
    pub continue_token: Option<String>,
    pub remaining_item_count: Option<i64>,
    /// A custom resource's `additionalPrinterColumns`.
    pub printer_columns: Option<Value>,
    /// Leave out column definitions (watch events after the first).
    pub no_headers: bool,
}

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    priority: u8,
}

const fn col(name: &'static str) -> Column {
    Column { name, kind: "string", format: "", priority: 0 }
}
const fn int(name: &'static str) -> Column {
    Column { name, kind: "integer", format: "", priority: 0 }
}
const fn wide(name: &'static str) -> Column {
    Column { name, kind: "string", format: "", priority: 1 }
}
const NAME: Column = Column { name: "Name", kind: "string", format: "name", priority: 0 };
const AGE: Column = col("Age");

/// Upstream's duration.HumanDuration: short, coarser as it grows.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let minutes = s / 60;
    let hours = s / 3600;
    let days = s / 86400;
    if s < 120 {
        format!("{s}s")
    } else if minutes < 10 {
        if s % 60 == 0 { format!("{minutes}m") } else { format!("{minutes}m{}s", s % 60) }
    } else if hours < 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        if minutes % 60 == 0 { format!("{hours}h") } else { format!("{hours}h{}m", minutes % 60) }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 192 {
        if hours % 24 == 0 { format!("{days}d") } else { format!("{days}d{}h", hours % 24) }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        let years = days / 365;
        if days % 365 == 0 { format!("{years}y") } else { format!("{years}y{}d", days % 365) }
    } else {
        format!("{}y", days / 365)
    }
}

fn age_of(timestamp: Option<&Value>, now: jiff::Timestamp) -> String {
    match timestamp.and_then(Value::as_str).and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        Some(t) => human_duration((now - t).get_seconds()),
        None => "<unknown>".into(),
    }
}

fn age(obj: &Value, now: jiff::Timestamp) -> Value {
    json!(age_of(obj.pointer("/metadata/creationTimestamp"), now))
}

fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn n(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(text: String) -> String {
    if text.is_empty() { "<none>".into() } else { text }
}

fn count(obj: &Value, pointers: &[&str]) -> i64 {
    pointers
        .iter()
        .map(|p| match obj.pointer(p) {
            Some(Value::Object(m)) => m.len() as i64,
            Some(Value::Array(a)) => a.len() as i64,
            _ => 0,
        })
        .sum()
}

fn containers_and_images(obj: &Value, spec_pointer: &str) -> (String, String) {
    let containers = obj.pointer(&format!("{spec_pointer}/containers")).and_then(Value::as_array).cloned().unwrap_or_default();
    let names: Vec<&str> = containers.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).collect();
    let images: Vec<&str> = containers.iter().filter_map(|c| c.get("image").and_then(Value::as_str)).collect();
    (names.join(","), images.join(","))
}

fn selector_text(obj: &Value, pointer: &str) -> String {
    obj.pointer(pointer).map(crate::scale::format_selector).filter(|s| !s.is_empty()).unwrap_or_else(|| "<none>".into())
}

/// Pod STATUS as `kubectl get pods` shows it.
fn pod_status(pod: &Value) -> String {
    let mut reason = s(pod, "/status/phase").to_string();
    if !s(pod, "/status/reason").is_empty() {
        reason = s(pod, "/status/reason").to_string();
    }
    let init_specs = pod.pointer("/spec/initContainers").and_then(Value::as_array).map_or(0, Vec::len);
    let mut initializing = false;
    for (i, status) in pod.pointer("/status/initContainerStatuses").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if let Some(term) = status.pointer("/state/terminated") {
            if term.get("exitCode").and_then(Value::as_i64) == Some(0) {
                continue;
            }
            reason = match term.get("reason").and_then(Value::as_str).filter(|r| !r.is_empty()) {
                Some(r) => format!("Init:{r}"),
                None => match term.get("signal").and_then(Value::as_i64).filter(|s| *s != 0) {
                    Some(sig) => format!("Init:Signal:{sig}"),
                    None => format!("Init:ExitCode:{}", term.get("exitCode").and_then(Value::as_i64).unwrap_or(0)),
                },
            };
        } else if let Some(r) = status.pointer("/state/waiting/reason").and_then(Value::as_str).filter(|r| !r.is_empty() && *r != "PodInitializing") {
            reason = format!("Init:{r}");
        } else if status.get("started") == Some(&json!(true)) && status.pointer("/state/running").is_some() {
            // A running sidecar (restartable init container) does not hold initialization.
            continue;
        } else {
            reason = format!("Init:{i}/{init_specs}");
        }
        initializing = true;
        break;
    }
    if !initializing {
        let mut has_running = false;
        let statuses = pod.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
        for status in statuses.iter().rev() {
            if let Some(r) = status.pointer("/state/waiting/reason").and_then(Value::as_str).filter(|r| !r.is_empty()) {
                reason = r.to_string();
            } else if let Some(term) = status.pointer("/state/terminated") {
                reason = match term.get("reason").and_then(Value::as_str).filter(|r| !r.is_empty()) {
                    Some(r) => r.to_string(),
                    None => match term.get("signal").and_then(Value::as_i64).filter(|s| *s != 0) {
                        Some(sig) => format!("Signal:{sig}"),
                        None => format!("ExitCode:{}", term.get("exitCode").and_then(Value::as_i64).unwrap_or(0)),
                    },
                };
            } else if status.get("ready") == Some(&json!(true)) && status.pointer("/state/running").is_some() {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            let ready = pod
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().any(|c| c.get("type") == Some(&json!("Ready")) && c.get("status") == Some(&json!("True"))));
            reason = if ready { "Running".into() } else { "NotReady".into() };
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
        reason = if s(pod, "/status/reason") == "NodeLost" { "Unknown".into() } else { "Terminating".into() };
    }
    reason
}

fn pod_row(pod: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let statuses = pod.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
    let total = pod.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
    let sidecars = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, |cs| cs.iter().filter(|c| c.get("restartPolicy") == Some(&json!("Always"))).count());
    let ready = statuses.iter().filter(|c| c.get("ready") == Some(&json!(true))).count();
    let mut restarts: i64 = statuses.iter().map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0)).sum();
    let mut last_restart: Option<String> = None;
    for c in &statuses {
        if let Some(finished) = c.pointer("/lastState/terminated/finishedAt").and_then(Value::as_str)
            && last_restart.as_deref().is_none_or(|l| finished > l)
        {
            last_restart = Some(finished.to_string());
        }
    }
    for c in pod.pointer("/status/initContainerStatuses").and_then(Value::as_array).into_iter().flatten() {
        restarts += c.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
    }
    let restarts = match last_restart {
        Some(at) if restarts > 0 => format!("{restarts} ({} ago)", age_of(Some(&json!(at)), now)),
        _ => restarts.to_string(),
    };
    let ip = or_none(s(pod, "/status/podIP").to_string());
    let node = or_none(s(pod, "/spec/nodeName").to_string());
    let nominated = or_none(s(pod, "/status/nominatedNodeName").to_string());
    let gates = pod.pointer("/spec/readinessGates").and_then(Value::as_array).map_or("<none>".to_string(), |g| {
        let conditions = pod.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        let met = g
            .iter()
            .filter(|gate| conditions.iter().any(|c| c.get("type") == gate.get("conditionType") && c.get("status") == Some(&json!("True"))))
            .count();
        format!("{met}/{}", g.len())
    });
    vec![json!(format!("{ready}/{}", total + sidecars)), json!(pod_status(pod)), json!(restarts), age(pod, now), json!(ip), json!(node), json!(nominated), json!(gates)]
}

fn service_row(svc: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let service_type = s(svc, "/spec/type");
    let cluster_ip = or_none(s(svc, "/spec/clusterIP").to_string());
    let external = match service_type {
        "ExternalName" => s(svc, "/spec/externalName").to_string(),
        "LoadBalancer" => {
            let ingress: Vec<String> = svc
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("ip").or(i.get("hostname")).and_then(Value::as_str).map(str::to_string))
                .collect();
            if ingress.is_empty() { "<pending>".into() } else { ingress.join(",") }
        }
        _ => {
            let ips: Vec<&str> = svc.pointer("/spec/externalIPs").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
            if ips.is_empty() { "<none>".into() } else { ips.join(",") }
        }
    };
    let ports: Vec<String> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64).filter(|n| *n != 0) {
                Some(node_port) => format!("{port}:{node_port}/{protocol}"),
                None => format!("{port}/{protocol}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() { "<none>".to_string() } else { ports.join(",") };
    let selector = svc.pointer("/spec/selector").and_then(Value::as_object).map_or("<none>".to_string(), |m| {
        let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
        or_none(parts.join(","))
    });
    vec![json!(service_type), json!(cluster_ip), json!(external), json!(ports), age(svc, now), json!(selector)]
}

fn node_row(node: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let conditions = node.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut status = match conditions.iter().find(|c| c.get("type") == Some(&json!("Ready"))).and_then(|c| c.get("status")).and_then(Value::as_str) {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if node.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            k.strip_prefix("node-role.kubernetes.io/").map(str::to_string).or_else(|| (k == "kubernetes.io/role").then(|| v.as_str().unwrap_or("").to_string()))
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    let address = |kind: &str| {
        node.pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| a.get("type") == Some(&json!(kind)))
            .and_then(|a| a.get("address"))
            .and_then(Value::as_str)
            .map_or("<none>".to_string(), str::to_string)
    };
    vec![
        json!(status),
        json!(or_none(roles.join(","))),
        age(node, now),
        json!(s(node, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(or_none(s(node, "/status/nodeInfo/osImage").to_string())),
        json!(or_none(s(node, "/status/nodeInfo/kernelVersion").to_string())),
        json!(or_none(s(node, "/status/nodeInfo/containerRuntimeVersion").to_string())),
    ]
}

fn job_status(job: &Value) -> &'static str {
    let conditions = job.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let has = |t: &str| conditions.iter().any(|c| c.get("type") == Some(&json!(t)) && c.get("status") == Some(&json!("True")));
    if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if job.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
        "Terminating"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("Suspended") {
        "Suspended"
    } else {
        "Running"
    }
}

fn job_row(job: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let completions = match job.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{}/{c}", n(job, "/status/succeeded")),
        None => {
            let parallelism = job.pointer("/spec/parallelism").and_then(Value::as_i64).unwrap_or(0);
            if parallelism > 1 { format!("{}/1 of {parallelism}", n(job, "/status/succeeded")) } else { format!("{}/1", n(job, "/status/succeeded")) }
        }
    };
    let start = job.pointer("/status/startTime").and_then(Value::as_str).and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let end = job.pointer("/status/completionTime").and_then(Value::as_str).and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let duration = match (start, end) {
        (Some(s), Some(e)) => human_duration((e - s).get_seconds()),
        (Some(s), None) => human_duration((now - s).get_seconds()),
        _ => String::new(),
    };
    let (containers, images) = containers_and_images(job, "/spec/template/spec");
    vec![json!(job_status(job)), json!(completions), json!(duration), age(job, now), json!(containers), json!(images), json!(selector_text(job, "/spec/selector"))]
}

/// The columns and a row builder for a built-in kind, if upstream has a printer for it.
#[allow(clippy::type_complexity)]
fn printer(group: &str, kind: &str) -> Option<(Vec<Column>, Box<dyn Fn(&Value, jiff::Timestamp) -> Vec<Value>>)> {
    Some(match (group, kind) {
        ("", "Pod") => (
            vec![NAME, col("Ready"), col("Status"), col("Restarts"), AGE, wide("IP"), wide("Node"), wide("Nominated Node"), wide("Readiness Gates")],
            Box::new(pod_row),
        ),
        ("", "Service") => (vec![NAME, col("Type"), col("Cluster-IP"), col("External-IP"), col("Port(s)"), AGE, wide("Selector")], Box::new(service_row)),
        ("", "Node") => (
            vec![NAME, col("Status"), col("Roles"), AGE, col("Version"), wide("Internal-IP"), wide("External-IP"), wide("OS-Image"), wide("Kernel-Version"), wide("Container-Runtime")],
            Box::new(node_row),
        ),
        ("", "Namespace") => (vec![NAME, col("Status"), AGE], Box::new(|o, now| vec![json!(s(o, "/status/phase")), age(o, now)])),
        ("", "ConfigMap") => (vec![NAME, int("Data"), AGE], Box::new(|o, now| vec![json!(count(o, &["/data", "/binaryData"])), age(o, now)])),
        ("", "Secret") => (vec![NAME, col("Type"), int("Data"), AGE], Box::new(|o, now| vec![json!(s(o, "/type")), json!(count(o, &["/data"])), age(o, now)])),
        ("", "ServiceAccount") => (vec![NAME, int("Secrets"), AGE], Box::new(|o, now| vec![json!(count(o, &["/secrets"])), age(o, now)])),
        ("", "Endpoints") => (
            vec![NAME, col("Endpoints"), AGE],
            Box::new(|o, now| {
                let mut eps = Vec::new();
                for subset in o.get("subsets").and_then(Value::as_array).into_iter().flatten() {
                    let ports: Vec<i64> = subset.get("ports").and_then(Value::as_array).into_iter().flatten().filter_map(|p| p.get("port").and_then(Value::as_i64)).collect();
                    for addr in subset.get("addresses").and_then(Value::as_array).into_iter().flatten() {
                        let ip = addr.get("ip").and_then(Value::as_str).unwrap_or("");
                        if ports.is_empty() {
                            eps.push(ip.to_string());
                        }
                        for p in &ports {
                            eps.push(format!("{ip}:{p}"));
                        }
                    }
                }
                let text = if eps.len() > 3 { format!("{} + {} more...", eps[..3].join(","), eps.len() - 3) } else { or_none(eps.join(",")) };
                vec![json!(text), age(o, now)]
            }),
        ),
        ("", "Event") | ("events.k8s.io", "Event") => (
            vec![col("Last Seen"), col("Type"), col("Reason"), col("Object"), col("Message")],
            Box::new(|o, now| {
                let last = o.get("lastTimestamp").or(o.get("eventTime")).or(o.get("deprecatedLastTimestamp")).filter(|v| !v.is_null()).or(o.pointer("/metadata/creationTimestamp"));
                let regarding = o.get("involvedObject").or(o.get("regarding")).cloned().unwrap_or(Value::Null);
                let object = format!("{}/{}", regarding.get("kind").and_then(Value::as_str).unwrap_or("").to_lowercase(), regarding.get("name").and_then(Value::as_str).unwrap_or(""));
                let message = o.get("message").or(o.get("note")).and_then(Value::as_str).unwrap_or("").trim().to_string();
                vec![json!(age_of(last, now)), json!(s(o, "/type")), json!(s(o, "/reason")), json!(object), json!(message)]
            }),
        ),
        ("", "PersistentVolumeClaim") => (
            vec![NAME, col("Status"), col("Volume"), col("Capacity"), col("Access Modes"), col("StorageClass"), AGE],
            Box::new(|o, now| {
                let modes: Vec<&str> = o.pointer("/status/accessModes").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(short_mode).collect();
                vec![json!(s(o, "/status/phase")), json!(s(o, "/spec/volumeName")), json!(s(o, "/status/capacity/storage")), json!(modes.join(",")), json!(s(o, "/spec/storageClassName")), age(o, now)]
            }),
        ),
        ("", "PersistentVolume") => (
            vec![NAME, col("Capacity"), col("Access Modes"), col("Reclaim Policy"), col("Status"), col("Claim"), col("StorageClass"), col("Reason"), AGE],
            Box::new(|o, now| {
                let modes: Vec<&str> = o.pointer("/spec/accessModes").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(short_mode).collect();
                let claim = if s(o, "/spec/claimRef/name").is_empty() { String::new() } else { format!("{}/{}", s(o, "/spec/claimRef/namespace"), s(o, "/spec/claimRef/name")) };
                vec![json!(s(o, "/spec/capacity/storage")), json!(modes.join(",")), json!(s(o, "/spec/persistentVolumeReclaimPolicy")), json!(s(o, "/status/phase")), json!(claim), json!(s(o, "/spec/storageClassName")), json!(s(o, "/status/reason")), age(o, now)]
            }),
        ),
        ("apps", "Deployment") => (
            vec![NAME, col("Ready"), int("Up-to-date"), int("Available"), AGE, wide("Containers"), wide("Images"), wide("Selector")],
            Box::new(|o, now| {
                let (c, i) = containers_and_images(o, "/spec/template/spec");
                vec![
                    json!(format!("{}/{}", n(o, "/status/readyReplicas"), n(o, "/spec/replicas"))),
                    json!(n(o, "/status/updatedReplicas")),
                    json!(n(o, "/status/availableReplicas")),
                    age(o, now),
                    json!(c),
                    json!(i),
                    json!(selector_text(o, "/spec/selector")),
                ]
            }),
        ),
        ("apps", "ReplicaSet") | ("", "ReplicationController") => (
            vec![NAME, int("Desired"), int("Current"), int("Ready"), AGE, wide("Containers"), wide("Images"), wide("Selector")],
            Box::new(|o, now| {
                let (c, i) = containers_and_images(o, "/spec/template/spec");
                vec![json!(n(o, "/spec/replicas")), json!(n(o, "/status/replicas")), json!(n(o, "/status/readyReplicas")), age(o, now), json!(c), json!(i), json!(selector_text(o, "/spec/selector"))]
            }),
        ),
        ("apps", "StatefulSet") => (
            vec![NAME, col("Ready"), AGE, wide("Containers"), wide("Images")],
            Box::new(|o, now| {
                let (c, i) = containers_and_images(o, "/spec/template/spec");
                vec![json!(format!("{}/{}", n(o, "/status/readyReplicas"), n(o, "/spec/replicas"))), age(o, now), json!(c), json!(i)]
            }),
        ),
        ("apps", "DaemonSet") => (
            vec![NAME, int("Desired"), int("Current"), int("Ready"), int("Up-to-date"), int("Available"), col("Node Selector"), AGE, wide("Containers"), wide("Images"), wide("Selector")],
            Box::new(|o, now| {
                let (c, i) = containers_and_images(o, "/spec/template/spec");
                let node_selector = o.pointer("/spec/template/spec/nodeSelector").and_then(Value::as_object).map_or(String::new(), |m| {
                    m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
                });
                vec![
                    json!(n(o, "/status/desiredNumberScheduled")),
                    json!(n(o, "/status/currentNumberScheduled")),
                    json!(n(o, "/status/numberReady")),
                    json!(n(o, "/status/updatedNumberScheduled")),
                    json!(n(o, "/status/numberAvailable")),
                    json!(or_none(node_selector)),
                    age(o, now),
                    json!(c),
                    json!(i),
                    json!(selector_text(o, "/spec/selector")),
                ]
            }),
        ),
        ("batch", "Job") => (
            vec![NAME, col("Status"), col("Completions"), col("Duration"), AGE, wide("Containers"), wide("Images"), wide("Selector")],
            Box::new(job_row),
        ),
        ("batch", "CronJob") => (
            vec![NAME, col("Schedule"), col("Timezone"), col("Suspend"), int("Active"), col("Last Schedule"), AGE, wide("Containers"), wide("Images"), wide("Selector")],
            Box::new(|o, now| {
                let (c, i) = containers_and_images(o, "/spec/jobTemplate/spec/template/spec");
                let last = o.pointer("/status/lastScheduleTime").filter(|v| !v.is_null()).map_or("<none>".to_string(), |t| age_of(Some(t), now));
                vec![
                    json!(s(o, "/spec/schedule")),
                    json!(or_none(s(o, "/spec/timeZone").to_string())),
                    json!(o.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false).to_string().replace("true", "True").replace("false", "False")),
                    json!(count(o, &["/status/active"])),
                    json!(last),
                    age(o, now),
                    json!(c),
                    json!(i),
                    json!(selector_text(o, "/spec/jobTemplate/spec/selector")),
                ]
            }),
        ),
        ("coordination.k8s.io", "Lease") => (vec![NAME, col("Holder"), AGE], Box::new(|o, now| vec![json!(s(o, "/spec/holderIdentity")), age(o, now)])),
        ("autoscaling", "HorizontalPodAutoscaler") => (
            vec![NAME, col("Reference"), col("Targets"), int("MinPods"), int("MaxPods"), int("Replicas"), AGE],
            Box::new(|o, now| {
                let reference = format!("{}/{}", s(o, "/spec/scaleTargetRef/kind"), s(o, "/spec/scaleTargetRef/name"));
                let min = o.pointer("/spec/minReplicas").and_then(Value::as_i64).unwrap_or(1);
                vec![json!(reference), json!("<unknown>"), json!(min), json!(n(o, "/spec/maxReplicas")), json!(n(o, "/status/currentReplicas")), age(o, now)]
            }),
        ),
        ("networking.k8s.io", "Ingress") => (
            vec![NAME, col("Class"), col("Hosts"), col("Address"), col("Ports"), AGE],
            Box::new(|o, now| {
                let hosts: Vec<&str> = o.pointer("/spec/rules").and_then(Value::as_array).into_iter().flatten().filter_map(|r| r.get("host").and_then(Value::as_str)).collect();
                let ports = if o.pointer("/spec/tls").and_then(Value::as_array).is_some_and(|t| !t.is_empty()) { "80, 443" } else { "80" };
                vec![json!(or_none(s(o, "/spec/ingressClassName").to_string())), json!(if hosts.is_empty() { "*".to_string() } else { hosts.join(",") }), json!(""), json!(ports), age(o, now)]
            }),
        ),
        ("policy", "PodDisruptionBudget") => (
            vec![NAME, col("Min Available"), col("Max Unavailable"), int("Allowed Disruptions"), AGE],
            Box::new(|o, now| {
                let show = |p: &str| o.pointer(p).map_or("N/A".to_string(), |v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
                vec![json!(show("/spec/minAvailable")), json!(show("/spec/maxUnavailable")), json!(n(o, "/status/disruptionsAllowed")), age(o, now)]
            }),
        ),
        ("scheduling.k8s.io", "PriorityClass") => (
            vec![NAME, int("Value"), col("Global-Default"), AGE, col("PreemptionPolicy")],
            Box::new(|o, now| vec![json!(n(o, "/value")), json!(o.get("globalDefault").and_then(Value::as_bool).unwrap_or(false)), age(o, now), json!(s(o, "/preemptionPolicy"))]),
        ),
        ("storage.k8s.io", "StorageClass") => (
            vec![NAME, col("Provisioner"), col("ReclaimPolicy"), col("VolumeBindingMode"), col("AllowVolumeExpansion"), AGE],
            Box::new(|o, now| {
                vec![json!(s(o, "/provisioner")), json!(s(o, "/reclaimPolicy")), json!(s(o, "/volumeBindingMode")), json!(o.get("allowVolumeExpansion").and_then(Value::as_bool).unwrap_or(false)), age(o, now)]
            }),
        ),
        _ => return None,
    })
}

/// The Name cell; the default StorageClass reads "NAME (default)", as upstream prints it.
fn name_cell(group: &str, kind: &str, obj: &Value) -> String {
    let name = s(obj, "/metadata/name");
    if (group, kind) == ("storage.k8s.io", "StorageClass") && crate::storage::is_default_class(obj) { format!("{name} (default)") } else { name.to_string() }
}

fn short_mode(mode: &str) -> &str {
    match mode {
        "ReadWriteOnce" => "RWO",
        "ReadOnlyMany" => "ROX",
        "ReadWriteMany" => "RWX",
        "ReadWriteOncePod" => "RWOP",
        other => other,
    }
}

/// Evaluates the simple JSONPath forms printer columns use: `.a.b`, `.a[0].b`,
/// `.a[?(@.type=="Ready")].status`.
fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}').trim_start_matches('.');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("[?(@.") {
            let end = after.find(")]")?;
            let (cond, tail) = (&after[..end], &after[end + 2..]);
            let (field, want) = cond.split_once("==")?;
            let want = want.trim().trim_matches('"').trim_matches('\'');
            cur = cur.as_array()?.iter().find(|item| item.get(field.trim()).and_then(Value::as_str) == Some(want))?;
            rest = tail.trim_start_matches('.');
            continue;
        }
        if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let index: usize = after[..end].parse().ok()?;
            cur = cur.as_array()?.get(index)?;
            rest = after[end + 1..].trim_start_matches('.');
            continue;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        cur = cur.get(&rest[..end])?;
        rest = rest[end..].trim_start_matches('.');
    }
    Some(cur)
}

/// The Table for `objects` of one kind.
pub fn table_for(kind: (&str, &str), objects: &[&Value], options: &TableOptions, now: jiff::Timestamp) -> Value {
    let (group, kind_name) = kind;
    let mut definitions: Vec<Value> = Vec::new();
    let rows: Vec<Vec<Value>>;
    if let Some(columns) = options.printer_columns.as_ref().and_then(Value::as_array) {
        // A custom resource: its printer columns, Age last unless the CRD places one.
        definitions.push(column_json(&NAME));
        let mut has_age = false;
        for c in columns {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            has_age |= name.eq_ignore_ascii_case("age");
            definitions.push(json!({"name": name, "type": c.get("type").cloned().unwrap_or(json!("string")), "format": c.get("format").cloned().unwrap_or(json!("")), "description": c.get("description").cloned().unwrap_or(json!("")), "priority": c.get("priority").cloned().unwrap_or(json!(0))}));
        }
        if !has_age {
            definitions.push(column_json(&AGE));
        }
        rows = objects
            .iter()
            .map(|o| {
                let mut cells = vec![json!(s(o, "/metadata/name"))];
                for c in columns {
                    let value = json_path(o, c.get("jsonPath").and_then(Value::as_str).unwrap_or("")).cloned().unwrap_or(Value::Null);
                    let cell = match (c.get("type").and_then(Value::as_str), &value) {
                        (Some("date"), Value::String(_)) => json!(age_of(Some(&value), now)),
                        (_, Value::Null) => json!("<none>"),
                        _ => value,
                    };
                    cells.push(cell);
                }
                if !has_age {
                    cells.push(age(o, now));
                }
                cells
            })
            .collect();
    } else if let Some((columns, row)) = printer(group, kind_name) {
        definitions = columns.iter().map(column_json).collect();
        let has_name = columns.first().is_some_and(|c| c.format == "name");
        rows = objects
            .iter()
            .map(|o| {
                let mut cells = if has_name { vec![json!(name_cell(group, kind_name, o))] } else { vec![] };
                cells.extend(row(o, now));
                cells
            })
            .collect();
    } else {
        definitions = vec![column_json(&NAME), json!({"name": "Created At", "type": "date", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0})];
        rows = objects.iter().map(|o| vec![json!(s(o, "/metadata/name")), o.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null)]).collect();
    }
    let rows: Vec<Value> = rows
        .into_iter()
        .zip(objects)
        .map(|(cells, o)| {
            let mut row = json!({"cells": cells});
            match options.include_object {
                IncludeObject::None => {}
                IncludeObject::Metadata => row["object"] = crate::http::partial_metadata(o),
                IncludeObject::Object => row["object"] = (*o).clone(),
            }
            row
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = &options.resource_version {
        meta["resourceVersion"] = json!(rv);
    }
    if let Some(c) = &options.continue_token {
        meta["continue"] = json!(c);
    }
    if let Some(r) = options.remaining_item_count {
        meta["remainingItemCount"] = json!(r);
    }
    let mut table = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": definitions, "rows": rows});
    if options.no_headers {
        table["columnDefinitions"] = json!([]);
    }
    table
}

fn column_json(c: &Column) -> Value {
    json!({"name": c.name, "type": c.kind, "format": c.format, "description": "", "priority": c.priority})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        for (secs, want) in [(0, "0s"), (59, "59s"), (119, "119s"), (125, "2m5s"), (600, "10m"), (3 * 3600 + 60, "3h1m"), (10 * 3600, "10h"), (3 * 86400 + 3600, "3d1h"), (30 * 86400, "30d"), (3 * 365 * 86400 + 86400, "3y1d"), (-5, "<invalid>")] {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }

    #[test]
    fn pod_status_and_ready_columns() {
        let now: jiff::Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 3, "state": {"running": {}}, "lastState": {"terminated": {"finishedAt": "2026-01-01T00:05:00Z"}}},
                {"name": "b", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let table = table_for(("", "Pod"), &[&pod], &TableOptions { include_object: IncludeObject::None, resource_version: None, continue_token: None, remaining_item_count: None, printer_columns: None, no_headers: false }, now);
        let cells = &table["rows"][0]["cells"];
        assert_eq!(cells[0], "p");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3 (5m ago)");
        assert_eq!(cells[4], "10m");
        let mut terminating = pod.clone();
        terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:09:00Z");
        assert_eq!(pod_status(&terminating), "Terminating");
        let init = json!({"spec": {"initContainers": [{"name": "i"}]}, "status": {"phase": "Pending", "initContainerStatuses": [{"name": "i", "state": {"running": {}}}]}});
        assert_eq!(pod_status(&init), "Init:0/1");
    }

    #[test]
    fn deployment_and_custom_columns() {
        let now: jiff::Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        let opts = |cols| TableOptions { include_object: IncludeObject::Metadata, resource_version: Some("7".into()), continue_token: None, remaining_item_count: None, printer_columns: cols, no_headers: false };
        let d = json!({"metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}, "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let t = table_for(("apps", "Deployment"), &[&d], &opts(None), now);
        assert_eq!(t["rows"][0]["cells"], json!(["web", "2/3", 3, 2, "30s", "c", "busybox", "<none>"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let w = json!({"metadata": {"name": "w", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"size": 3}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let cols = json!([{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}, {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}]);
        let t = table_for(("example.com", "Widget"), &[&w], &opts(Some(cols)), now);
        assert_eq!(t["rows"][0]["cells"], json!(["w", 3, "True", "30s"]));
        let r = json!({"metadata": {"name": "role", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        let t = table_for(("rbac.authorization.k8s.io", "Role"), &[&r], &opts(None), now);
        assert_eq!(t["columnDefinitions"][1]["name"], "Created At");
    }
}
