//! What differs between kinds on the write path: defaults, validation, and which fields a write
//! may touch. The generic handlers call these hooks; a kind without special rules needs nothing
//! here. Defaults follow upstream's `SetDefaults_*` functions for the fields clients rely on.

use serde_json::{Map, Value, json};

use crate::resources::ResourceDef;
use crate::status::Cause;
use crate::validation::{NameRule, validate_object_meta};

fn set_default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_string(), value);
    }
}

fn object_at<'a>(obj: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut cur = obj;
    for key in path {
        cur = cur.get_mut(*key)?;
    }
    cur.as_object_mut()
}

fn ensure_object<'a>(obj: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    if !obj.get(key).is_some_and(Value::is_object) {
        obj.insert(key.to_string(), json!({}));
    }
    obj.get_mut(key).and_then(Value::as_object_mut).expect("just inserted an object")
}

pub fn name_rule(def: &ResourceDef) -> NameRule {
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Namespace") => NameRule::Label,
        ("", "Service") => NameRule::Dns1035,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

/// Fills in the fields upstream defaults.
pub fn apply_defaults(def: &ResourceDef, obj: &mut Value) {
    if def.custom {
        return;
    }
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => {
            if let Some(spec) = object_at(obj, &["spec"]) {
                default_pod_spec(spec);
            }
        }
        ("", "PodTemplate") => default_template(obj, &["template"]),
        ("", "ReplicationController") => {
            if let Some(spec) = object_at(obj, &["spec"]) {
                set_default(spec, "replicas", json!(1));
            }
            default_template(obj, &["spec", "template"]);
            // An RC without a selector selects its template's labels.
            let labels = obj.pointer("/spec/template/metadata/labels").cloned();
            if let (Some(spec), Some(labels)) = (object_at(obj, &["spec"]), labels) {
                set_default(spec, "selector", labels);
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = object_at(obj, &["spec"]) {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                let strategy = ensure_object(spec, "strategy");
                set_default(strategy, "type", json!("RollingUpdate"));
                if strategy.get("type") == Some(&json!("RollingUpdate")) {
                    let rolling = ensure_object(strategy, "rollingUpdate");
                    set_default(rolling, "maxUnavailable", json!("25%"));
                    set_default(rolling, "maxSurge", json!("25%"));
                }
            }
            default_template(obj, &["spec", "template"]);
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = object_at(obj, &["spec"]) {
                set_default(spec, "replicas", json!(1));
            }
            default_template(obj, &["spec", "template"]);
        }
        ("apps", "DaemonSet") => {
            if let Some(spec) = object_at(obj, &["spec"]) {
                set_default(spec, "revisionHistoryLimit", json!(10));
                let strategy = ensure_object(spec, "updateStrategy");
                set_default(strategy, "type", json!("RollingUpdate"));
                if strategy.get("type") == Some(&json!("RollingUpdate")) {
                    let rolling = ensure_object(strategy, "rollingUpdate");
                    set_default(rolling, "maxUnavailable", json!(1));
                    set_default(rolling, "maxSurge", json!(0));
                }
            }
            default_template(obj, &["spec", "template"]);
        }
        ("apps", "StatefulSet") => {
            if let Some(spec) = object_at(obj, &["spec"]) {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                set_default(spec, "revisionHistoryLimit", json!(10));
                let strategy = ensure_object(spec, "updateStrategy");
                set_default(strategy, "type", json!("RollingUpdate"));
                if strategy.get("type") == Some(&json!("RollingUpdate")) {
                    let rolling = ensure_object(strategy, "rollingUpdate");
                    set_default(rolling, "partition", json!(0));
                }
                let retention = ensure_object(spec, "persistentVolumeClaimRetentionPolicy");
                set_default(retention, "whenDeleted", json!("Retain"));
                set_default(retention, "whenScaled", json!("Retain"));
            }
            default_template(obj, &["spec", "template"]);
        }
        ("batch", "Job") => {
            default_job_spec(obj, &["spec"]);
        }
        ("batch", "CronJob") => {
            if let Some(spec) = object_at(obj, &["spec"]) {
                set_default(spec, "concurrencyPolicy", json!("Allow"));
                set_default(spec, "suspend", json!(false));
                set_default(spec, "successfulJobsHistoryLimit", json!(3));
                set_default(spec, "failedJobsHistoryLimit", json!(1));
            }
            default_job_spec(obj, &["spec", "jobTemplate", "spec"]);
        }
        ("", "Service") => default_service(obj),
        ("", "Node") => {
            if let Some(spec) = object_at(obj, &["spec"]) {
                crate::validation::default_node_pod_cidrs(spec);
            }
        }
        ("", "Namespace") => {
            let name = crate::objects::name(obj).to_string();
            if !name.is_empty() {
                let meta = crate::objects::metadata_mut(obj);
                let labels = ensure_object(meta, "labels");
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            if let Some(o) = obj.as_object_mut() {
                let spec = ensure_object(o, "spec");
                set_default(spec, "finalizers", json!(["kubernetes"]));
            }
        }
        ("", "Secret") => {
            if let Some(o) = obj.as_object_mut() {
                set_default(o, "type", json!("Opaque"));
            }
        }
        ("", "PersistentVolumeClaim") => {
            if let Some(spec) = object_at(obj, &["spec"]) {
                set_default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        ("", "PersistentVolume") => {
            if let Some(spec) = object_at(obj, &["spec"]) {
                set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
                set_default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            let has_egress = obj.pointer("/spec/egress").is_some();
            if let Some(spec) = object_at(obj, &["spec"]) {
                let types = if has_egress { json!(["Ingress", "Egress"]) } else { json!(["Ingress"]) };
                set_default(spec, "policyTypes", types);
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            if let Some(o) = obj.as_object_mut() {
                set_default(o, "preemptionPolicy", json!("PreemptLowerPriority"));
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            if let Some(o) = obj.as_object_mut() {
                set_default(o, "reclaimPolicy", json!("Delete"));
                set_default(o, "volumeBindingMode", json!("Immediate"));
            }
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            if let Some(spec) = object_at(obj, &["spec"]) {
                set_default(spec, "minReplicas", json!(1));
                if def.version == "v2" {
                    set_default(spec, "metrics", json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]));
                }
            }
        }
        _ => {}
    }
}

fn default_template(obj: &mut Value, path: &[&str]) {
    if let Some(template) = object_at(obj, path) {
        let spec = ensure_object(template, "spec");
        default_pod_spec(spec);
    }
}

fn default_job_spec(obj: &mut Value, path: &[&str]) {
    if let Some(spec) = object_at(obj, path) {
        set_default(spec, "parallelism", json!(1));
        set_default(spec, "backoffLimit", json!(6));
        set_default(spec, "completionMode", json!("NonIndexed"));
        set_default(spec, "suspend", json!(false));
        set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
        if spec.get("completions").is_none() && spec.get("parallelism") == Some(&json!(1)) {
            spec.insert("completions".into(), json!(1));
        }
        let template = ensure_object(spec, "template");
        let pod_spec = ensure_object(template, "spec");
        set_default(pod_spec, "restartPolicy", json!("Never"));
        default_pod_spec(pod_spec);
    }
}

pub fn default_pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers"] {
        if let Some(Value::Array(containers)) = spec.get_mut(list) {
            for container in containers.iter_mut().filter_map(Value::as_object_mut) {
                default_container(container);
            }
        }
    }
    if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
        for volume in volumes.iter_mut().filter_map(Value::as_object_mut) {
            for source in ["configMap", "secret"] {
                if let Some(Value::Object(src)) = volume.get_mut(source) {
                    set_default(src, "defaultMode", json!(420));
                }
            }
        }
    }
}

fn default_container(container: &mut Map<String, Value>) {
    let image = container.get("image").and_then(Value::as_str).unwrap_or("");
    let pull = if image_uses_latest(image) { "Always" } else { "IfNotPresent" };
    set_default(container, "imagePullPolicy", json!(pull));
    set_default(container, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(container, "terminationMessagePolicy", json!("File"));
    set_default(container, "resources", json!({}));
    if let Some(Value::Array(ports)) = container.get_mut("ports") {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(port, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(Value::Object(p)) = container.get_mut(probe) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
            if let Some(Value::Object(get)) = p.get_mut("httpGet") {
                set_default(get, "path", json!("/"));
                set_default(get, "scheme", json!("HTTP"));
            }
            // Upstream's `+default=""` on GRPCAction.service: clients see the empty service,
            // which the health protocol reads as "the server as a whole".
            if let Some(Value::Object(grpc)) = p.get_mut("grpc") {
                set_default(grpc, "service", json!(""));
            }
        }
    }
}

/// An image without a tag, or tagged `latest`, and without a digest, is always pulled.
fn image_uses_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

fn default_service(obj: &mut Value) {
    let Some(spec) = object_at(obj, &["spec"]) else { return };
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let service_type = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
    if service_type != "ExternalName" {
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        set_default(spec, "ipFamilies", json!(["IPv4"]));
    }
    if service_type == "NodePort" || service_type == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(port, "protocol", json!("TCP"));
            if let Some(p) = port.get("port").cloned() {
                set_default(port, "targetPort", p);
            }
        }
    }
}

/// Kind-specific validation of a new or updated object. `old` is set on update.
pub fn validate(def: &ResourceDef, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(meta) = crate::objects::metadata(obj) {
        validate_object_meta(meta, name_rule(def), &mut causes);
    } else {
        causes.push(Cause::required("metadata"));
    }
    if def.custom {
        // The CRD's x-kubernetes-validations (CEL), with oldSelf on updates.
        if let Some(schema) = &def.schema {
            causes.extend(crate::cel::validate(schema, obj, old));
        }
        return causes;
    }
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => {
            validate_pod_spec(obj.get("spec"), "spec", &mut causes);
            if let (Some(old), Some(spec)) = (old, obj.get("spec")) {
                validate_pod_update(old.get("spec"), spec, &mut causes);
            }
        }
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet") => {
            validate_selector_matches_template(obj, &mut causes);
            validate_pod_spec(obj.pointer("/spec/template/spec"), "spec.template.spec", &mut causes);
            if let Some(old) = old
                && old.pointer("/spec/selector") != obj.pointer("/spec/selector")
            {
                causes.push(Cause::invalid("spec.selector", obj.pointer("/spec/selector").unwrap_or(&Value::Null), "field is immutable"));
            }
            if let Some(r) = obj.pointer("/spec/replicas").and_then(Value::as_i64)
                && r < 0
            {
                causes.push(Cause::invalid("spec.replicas", &json!(r), "must be greater than or equal to 0"));
            }
        }
        ("batch", "Job") => {
            validate_pod_spec(obj.pointer("/spec/template/spec"), "spec.template.spec", &mut causes);
            let restart = obj.pointer("/spec/template/spec/restartPolicy").and_then(Value::as_str).unwrap_or("");
            if restart != "Never" && restart != "OnFailure" {
                causes.push(Cause::unsupported("spec.template.spec.restartPolicy", &json!(restart), &["OnFailure", "Never"]));
            }
        }
        ("batch", "CronJob") => {
            if obj.pointer("/spec/schedule").and_then(Value::as_str).is_none_or(str::is_empty) {
                causes.push(Cause::required("spec.schedule"));
            }
            validate_pod_spec(obj.pointer("/spec/jobTemplate/spec/template/spec"), "spec.jobTemplate.spec.template.spec", &mut causes);
        }
        ("", "Service") => validate_service(obj, old, &mut causes),
        ("", "Node") => crate::validation::validate_node(obj, old, &mut causes),
        ("", "ConfigMap" | "Secret") => {
            for field in ["data", "binaryData", "stringData"] {
                if let Some(map) = obj.get(field).and_then(Value::as_object) {
                    for key in map.keys() {
                        if !is_config_key(key) {
                            causes.push(Cause::invalid(
                                format!("{field}[{key}]"),
                                &json!(key),
                                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                            ));
                        }
                    }
                }
            }
            if let (Some(old), true) = (old, def.kind == "Secret") {
                if old.get("type") != obj.get("type") {
                    causes.push(Cause::invalid("type", obj.get("type").unwrap_or(&Value::Null), "field is immutable"));
                }
            }
            if let Some(old) = old
                && old.get("immutable") == Some(&json!(true))
                && (old.get("data") != obj.get("data") || old.get("binaryData") != obj.get("binaryData"))
            {
                causes.push(Cause::forbidden("data", format!("field is immutable when `immutable` is set")));
            }
        }
        _ => {}
    }
    causes
}

fn is_config_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 253 && key.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')) && key != "." && key != ".."
}

fn validate_selector_matches_template(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(selector) = obj.pointer("/spec/selector") else {
        causes.push(Cause::required("spec.selector"));
        return;
    };
    let match_labels = selector.get("matchLabels").and_then(Value::as_object);
    let has_expressions = selector.get("matchExpressions").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    if match_labels.is_none_or(|m| m.is_empty()) && !has_expressions {
        causes.push(Cause::invalid("spec.selector", selector, "empty selector is invalid for deployment"));
        return;
    }
    let template_labels = obj.pointer("/spec/template/metadata/labels").and_then(Value::as_object);
    if let Some(match_labels) = match_labels {
        let ok = match_labels.iter().all(|(k, v)| template_labels.and_then(|t| t.get(k)) == Some(v));
        if !ok {
            causes.push(Cause::invalid(
                "spec.template.metadata.labels",
                &template_labels.map_or(Value::Null, |t| Value::Object(t.clone())),
                "`selector` does not match template `labels`",
            ));
        }
    }
}

fn validate_pod_spec(spec: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let Some(spec) = spec else {
        causes.push(Cause::required(path));
        return;
    };
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    let mut names = std::collections::HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec.get(list).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let field = format!("{path}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required(format!("{field}.name"))),
                Some(name) => {
                    for problem in crate::validation::name_problems(name, NameRule::Label) {
                        causes.push(Cause::invalid(format!("{field}.name"), &json!(name), problem));
                    }
                    if !names.insert(name.to_string()) {
                        causes.push(Cause::duplicate(format!("{field}.name"), &json!(name)));
                    }
                }
            }
            if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
                causes.push(Cause::required(format!("{field}.image")));
            }
            for (j, port) in c.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let p = port.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&p) {
                    causes.push(Cause::invalid(format!("{field}.ports[{j}].containerPort"), &json!(p), "must be between 1 and 65535, inclusive"));
                }
            }
            // Only sidecars (restartable init containers) may probe among init containers.
            let sidecar = c.get("restartPolicy").and_then(Value::as_str) == Some("Always");
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let Some(value) = c.get(probe).filter(|v| !v.is_null()) else { continue };
                if list == "initContainers" && !sidecar {
                    causes.push(Cause::forbidden(format!("{field}.{probe}"), "may not be set for init containers without restartPolicy=Always"));
                    continue;
                }
                validate_probe(value, probe, &format!("{field}.{probe}"), causes);
            }
        }
    }
    if let Some(policy) = spec.get("restartPolicy").and_then(Value::as_str)
        && !matches!(policy, "Always" | "OnFailure" | "Never")
    {
        causes.push(Cause::unsupported(format!("{path}.restartPolicy"), &json!(policy), &["Always", "OnFailure", "Never"]));
    }
}

/// Upstream's probe validation: exactly one handler with a valid port, non-negative timings,
/// a success threshold of 1 where only one success can count (liveness, startup).
fn validate_probe(probe: &Value, kind: &str, path: &str, causes: &mut Vec<Cause>) {
    let handlers: Vec<&str> = ["exec", "httpGet", "tcpSocket", "grpc"].into_iter().filter(|h| probe.get(*h).is_some_and(|v| !v.is_null())).collect();
    match handlers.as_slice() {
        [] => causes.push(Cause::required_because(path, "must specify a handler type")),
        [_, extra @ ..] => {
            for handler in extra {
                causes.push(Cause::forbidden(format!("{path}.{handler}"), "may not specify more than 1 handler type"));
            }
        }
    }
    if let Some(exec) = probe.get("exec").filter(|v| !v.is_null())
        && exec.get("command").and_then(Value::as_array).is_none_or(Vec::is_empty)
    {
        causes.push(Cause::required(format!("{path}.exec.command")));
    }
    if let Some(http) = probe.get("httpGet").filter(|v| !v.is_null()) {
        validate_probe_port(http.get("port"), &format!("{path}.httpGet.port"), causes);
        if let Some(scheme) = http.get("scheme").and_then(Value::as_str)
            && !matches!(scheme, "HTTP" | "HTTPS")
        {
            causes.push(Cause::unsupported(format!("{path}.httpGet.scheme"), &json!(scheme), &["HTTP", "HTTPS"]));
        }
    }
    if let Some(tcp) = probe.get("tcpSocket").filter(|v| !v.is_null()) {
        validate_probe_port(tcp.get("port"), &format!("{path}.tcpSocket.port"), causes);
    }
    if let Some(grpc) = probe.get("grpc").filter(|v| !v.is_null()) {
        let port = grpc.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::invalid(format!("{path}.grpc.port"), &json!(port), "must be between 1 and 65535, inclusive"));
        }
    }
    for timing in ["initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold"] {
        if let Some(n) = probe.get(timing).and_then(Value::as_i64)
            && n < 0
        {
            causes.push(Cause::invalid(format!("{path}.{timing}"), &json!(n), "must be greater than or equal to 0"));
        }
    }
    if let Some(grace) = probe.get("terminationGracePeriodSeconds").and_then(Value::as_i64) {
        if kind == "readinessProbe" {
            causes.push(Cause::invalid(format!("{path}.terminationGracePeriodSeconds"), &json!(grace), "must not be set for readinessProbes"));
        } else if grace <= 0 {
            causes.push(Cause::invalid(format!("{path}.terminationGracePeriodSeconds"), &json!(grace), "must be greater than 0"));
        }
    }
    if kind != "readinessProbe"
        && let Some(threshold) = probe.get("successThreshold").and_then(Value::as_i64)
        && threshold != 1
    {
        causes.push(Cause::invalid(format!("{path}.successThreshold"), &json!(threshold), "must be 1"));
    }
}

/// A probe's port: a number from 1 to 65535 or a container port's name (an IANA service name).
fn validate_probe_port(port: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    match port {
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(0);
            if !(1..=65535).contains(&n) {
                causes.push(Cause::invalid(path, &json!(n), "must be between 1 and 65535, inclusive"));
            }
        }
        Some(Value::String(name)) => {
            if let Some(problem) = port_name_problem(name) {
                causes.push(Cause::invalid(path, &json!(name), problem));
            }
        }
        _ => causes.push(Cause::required(path)),
    }
}

/// Upstream's IsValidPortName: at most 15 lowercase letters, digits and dashes, at least one
/// letter, no dash at either end and no two in a row.
fn port_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 15 {
        return Some("must be no more than 15 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Some("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if name.contains("--") {
        return Some("must not contain consecutive hyphens");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some("must contain at least one letter (a-z)");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("must not begin or end with a hyphen");
    }
    None
}

/// Upstream allows a running pod's spec to change only in a few places (images, active deadline,
/// tolerations additions, scheduling gates removal).
fn validate_pod_update(old: Option<&Value>, new: &Value, causes: &mut Vec<Cause>) {
    let Some(old) = old else { return };
    // Compared in place: copying two pod specs to strip the mutable fields cost more than the
    // rest of a binding's validation.
    if !same_but_mutable(old, new) {
        causes.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
    if old.get("nodeName").is_some_and(|n| !n.is_null()) && old.get("nodeName") != new.get("nodeName") {
        causes.push(Cause::forbidden("spec.nodeName", "pod updates may not change fields other than `spec.containers[*].image`"));
    }
}

/// Whether two pod specs are equal but for the fields a running pod may change.
fn same_but_mutable(old: &Value, new: &Value) -> bool {
    const MUTABLE: [&str; 4] = ["activeDeadlineSeconds", "tolerations", "schedulingGates", "nodeName"];
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else { return old == new };
    let compared = |m: &'_ serde_json::Map<String, Value>| m.keys().filter(|k| !MUTABLE.contains(&k.as_str())).count();
    compared(o) == compared(n)
        && o.iter().filter(|(k, _)| !MUTABLE.contains(&k.as_str())).all(|(k, ov)| match (k.as_str(), n.get(k)) {
            (_, None) => false,
            ("containers" | "initContainers", Some(nv)) => match (ov.as_array(), nv.as_array()) {
                (Some(a), Some(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_but_image(x, y)),
                _ => ov == nv,
            },
            (_, Some(nv)) => ov == nv,
        })
}

fn same_but_image(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return a == b };
    let others = |m: &'_ serde_json::Map<String, Value>| m.keys().filter(|k| *k != "image").count();
    others(a) == others(b) && a.iter().filter(|(k, _)| *k != "image").all(|(k, v)| b.get(k) == Some(v))
}

fn validate_service(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec");
    let service_type = spec.and_then(|s| s.get("type")).and_then(Value::as_str).unwrap_or("ClusterIP");
    if !matches!(service_type, "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") {
        causes.push(Cause::unsupported("spec.type", &json!(service_type), &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]));
    }
    let ports = spec.and_then(|s| s.get("ports")).and_then(Value::as_array);
    let headless = spec.and_then(|s| s.get("clusterIP")).and_then(Value::as_str) == Some("None");
    if service_type != "ExternalName" && !headless && ports.is_none_or(Vec::is_empty) {
        causes.push(Cause::required("spec.ports"));
    }
    let multiple = ports.is_some_and(|p| p.len() > 1);
    let mut names = std::collections::HashSet::new();
    for (i, port) in ports.into_iter().flatten().enumerate() {
        let p = port.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&p) {
            causes.push(Cause::invalid(format!("spec.ports[{i}].port"), &json!(p), "must be between 1 and 65535, inclusive"));
        }
        let name = port.get("name").and_then(Value::as_str).unwrap_or("");
        if multiple && name.is_empty() {
            causes.push(Cause::required(format!("spec.ports[{i}].name")));
        }
        if !name.is_empty() && !names.insert(name.to_string()) {
            causes.push(Cause::duplicate(format!("spec.ports[{i}].name"), &json!(name)));
        }
    }
    if let Some(old) = old {
        let old_ip = old.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("");
        let new_ip = obj.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("");
        if !old_ip.is_empty() && old_ip != new_ip && service_type != "ExternalName" {
            causes.push(Cause::invalid("spec.clusterIPs[0]", &json!(new_ip), "may not change once set"));
        }
    }
}

/// Status a kind starts with: a client cannot set status on create.
/// Upstream's mutating admission on create, for the plugins every cluster enables:
/// DefaultTolerationSeconds (pods tolerate not-ready/unreachable nodes for 300 s before the
/// node lifecycle controller evicts them) and ServiceAccount (pods run as `default`).
/// How long a pod stays on a not-ready or unreachable node when it does not say (upstream's
/// DefaultTolerationSeconds admission, set by kube-apiserver's
/// `--default-not-ready-toleration-seconds` and `--default-unreachable-toleration-seconds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefaultTolerations {
    pub not_ready_seconds: i64,
    pub unreachable_seconds: i64,
}

impl Default for DefaultTolerations {
    fn default() -> Self {
        DefaultTolerations { not_ready_seconds: 300, unreachable_seconds: 300 }
    }
}

pub fn admit_create(def: &ResourceDef, obj: &mut Value, defaults: DefaultTolerations) {
    if def.custom || def.group.as_str() != "" || def.kind != "Pod" {
        return;
    }
    let Some(spec) = object_at(obj, &["spec"]) else { return };
    let account = spec.get("serviceAccountName").and_then(Value::as_str).filter(|a| !a.is_empty()).or_else(|| spec.get("serviceAccount").and_then(Value::as_str).filter(|a| !a.is_empty())).unwrap_or("default").to_string();
    spec.insert("serviceAccountName".into(), json!(account));
    spec.insert("serviceAccount".into(), json!(account));
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else { return };
    for (key, seconds) in [("node.kubernetes.io/not-ready", defaults.not_ready_seconds), ("node.kubernetes.io/unreachable", defaults.unreachable_seconds)] {
        // Any toleration of this key with NoExecute (or every effect) already decides for the pod.
        let covered = list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let matches_key = t.get("key").and_then(Value::as_str) == Some(key) || (t.get("key").is_none_or(|k| k == "") && t.get("operator").and_then(Value::as_str) == Some("Exists"));
            matches_key && (effect.is_empty() || effect == "NoExecute")
        });
        if !covered {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
        }
    }
}

pub fn initial_status(def: &ResourceDef, obj: &mut Value) {
    if !def.status {
        return;
    }
    let Some(o) = obj.as_object_mut() else { return };
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => {
            let qos = qos_class(o.get("spec"));
            o.insert("status".into(), json!({"phase": "Pending", "qosClass": qos}));
        }
        ("", "Namespace") => {
            o.insert("status".into(), json!({"phase": "Active"}));
        }
        ("", "PersistentVolumeClaim") | ("", "PersistentVolume") => {
            o.insert("status".into(), json!({"phase": "Pending"}));
        }
        ("", "Node") => {
            // Nodes register with their status, as the kubelet does.
        }
        ("apiextensions.k8s.io", _) => {
            o.insert("status".into(), json!({}));
        }
        _ => {
            if def.custom {
                o.remove("status");
            } else {
                o.insert("status".into(), json!({}));
            }
        }
    }
}

/// Guaranteed when every container has equal cpu and memory requests and limits; BestEffort when
/// none has any; Burstable otherwise.
pub fn qos_class(spec: Option<&Value>) -> &'static str {
    let Some(spec) = spec else { return "BestEffort" };
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec.get(*l).and_then(Value::as_array).into_iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        for res in ["cpu", "memory"] {
            let r = requests.and_then(|m| m.get(res)).or_else(|| limits.and_then(|m| m.get(res)));
            let l = limits.and_then(|m| m.get(res));
            if r.is_some() || l.is_some() {
                any = true;
            }
            if l.is_none() || r != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    #[test]
    fn deployment_defaults_like_upstream() {
        let registry = Registry::new();
        let def = registry.get("apps", "v1", "deployments").unwrap();
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
        apply_defaults(&def, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert!(validate(&def, &d, None).is_empty());
        d["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        assert_eq!(validate(&def, &d, None)[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn probes_are_validated_like_upstream() {
        let pod = |probes: Value| {
            let mut container = json!({"name": "c", "image": "i"});
            for (k, v) in probes.as_object().into_iter().flatten() {
                container[k] = v.clone();
            }
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [container]}})
        };
        let fields = |pod: Value| -> Vec<(String, String)> {
            let mut causes = Vec::new();
            validate_pod_spec(pod.get("spec"), "spec", &mut causes);
            causes.into_iter().map(|c| (c.field, c.message)).collect()
        };
        assert!(fields(pod(json!({"livenessProbe": {"httpGet": {"port": "http"}}, "readinessProbe": {"grpc": {"port": 9000}, "successThreshold": 3}}))).is_empty());
        let problems = fields(pod(json!({
            "livenessProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}, "successThreshold": 2},
            "readinessProbe": {"periodSeconds": -1},
            "startupProbe": {"httpGet": {"port": 70000, "scheme": "FTP"}, "terminationGracePeriodSeconds": 0},
        })));
        let expect = [
            ("spec.containers[0].livenessProbe.tcpSocket", "may not specify more than 1 handler type"),
            ("spec.containers[0].livenessProbe.successThreshold", "must be 1"),
            ("spec.containers[0].readinessProbe", "must specify a handler type"),
            ("spec.containers[0].readinessProbe.periodSeconds", "must be greater than or equal to 0"),
            ("spec.containers[0].startupProbe.httpGet.port", "must be between 1 and 65535, inclusive"),
            ("spec.containers[0].startupProbe.httpGet.scheme", "supported values"),
            ("spec.containers[0].startupProbe.terminationGracePeriodSeconds", "must be greater than 0"),
        ];
        for (field, message) in expect {
            assert!(problems.iter().any(|(f, m)| f == field && m.contains(message)), "{field}: {message} not in {problems:?}");
        }
        assert_eq!(problems.len(), expect.len(), "{problems:?}");
        let bad_name = fields(pod(json!({"livenessProbe": {"tcpSocket": {"port": "No_Such"}}})));
        assert_eq!(bad_name.len(), 1, "{bad_name:?}");
        let init = json!({"spec": {"containers": [{"name": "c", "image": "i"}], "initContainers": [{"name": "i", "image": "i", "readinessProbe": {"tcpSocket": {"port": 1}}}]}});
        assert!(fields(init)[0].1.contains("may not be set for init containers"));
    }

    #[test]
    fn probes_are_defaulted_like_upstream() {
        let registry = Registry::new();
        let def = registry.get("", "v1", "pods").unwrap();
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox:1",
            "livenessProbe": {"grpc": {"port": 9000}}, "readinessProbe": {"grpc": {"port": 9000, "service": "ready"}}, "startupProbe": {"httpGet": {"port": 80}}}]}});
        apply_defaults(&def, &mut p);
        let c = &p["spec"]["containers"][0];
        assert_eq!(c["livenessProbe"], json!({"grpc": {"port": 9000, "service": ""}, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}));
        assert_eq!(c["readinessProbe"]["grpc"]["service"], "ready");
        assert_eq!(c["startupProbe"]["httpGet"], json!({"port": 80, "path": "/", "scheme": "HTTP"}));
        assert!(validate(&def, &p, None).is_empty(), "{:?}", validate(&def, &p, None));
    }

    #[test]
    fn image_pull_policy_follows_the_tag() {
        assert!(image_uses_latest("busybox"));
        assert!(image_uses_latest("localhost:5000/busybox:latest"));
        assert!(image_uses_latest("localhost:5000/busybox"));
        assert!(!image_uses_latest("busybox:1.36"));
        assert!(!image_uses_latest("busybox@sha256:abc"));
    }

    #[test]
    fn qos() {
        let best = json!({"containers": [{"name": "a"}]});
        assert_eq!(qos_class(Some(&best)), "BestEffort");
        let g = json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
        assert_eq!(qos_class(Some(&g)), "Guaranteed");
        let b = json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]});
        assert_eq!(qos_class(Some(&b)), "Burstable");
    }
}
