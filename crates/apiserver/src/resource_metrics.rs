//! The resource metrics API, `metrics.k8s.io/v1beta1` (`kubectl top`), built in instead of
//! served by metrics-server behind the aggregation layer.
//!
//! `nodes` (NodeMetrics, cluster-scoped) and `pods` (PodMetrics, namespaced) answer get and list
//! (label and field selectors, Table output) by asking the agents of the nodes concerned for
//! their usage (`GET /stats/resource` through [`crate::node_proxy`]; the JSON is described in
//! the agent's `stats` module). Agents compute CPU rates between their own readings, so nothing
//! is kept here and every answer is as fresh as the agents' last reading (at most 10 s old).
//!
//! As metrics-server: a node or pod whose agent cannot be reached, or which has no usage yet, is
//! left out of lists, and a get of it is a NotFound for `nodemetrics`/`podmetrics` (kubectl top
//! then says "metrics not available yet" for new pods). Watch is not served.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Response};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{Body, Format, Query, Server, error_response, json_response, negotiate, render};
use crate::list::{Filter, read_page};
use crate::node_proxy::{NodeLocation, kubelet_endpoint};
use crate::objects;
use crate::status::{ApiError, ApiResult};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
const GROUP_VERSION: &str = "metrics.k8s.io/v1beta1";
/// The agent's usage endpoint.
pub const AGENT_PATH: &str = "/stats/resource";
/// metrics-server's default scrape timeout: a slow node must not hold up the others' answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Agents asked at once: a cluster of many (simulated, unreachable) nodes must not exhaust file
/// descriptors.
const AGENTS_AT_ONCE: usize = 64;
const MAX_AGENT_BODY: usize = 16 << 20;

// ---- discovery ----

/// The group's entry in `/apis` (APIGroupList).
pub fn group_entry() -> Value {
    let version = json!({"groupVersion": GROUP_VERSION, "version": VERSION});
    json!({"name": GROUP, "versions": [version.clone()], "preferredVersion": version})
}

/// `/apis/metrics.k8s.io`.
pub fn api_group() -> Value {
    let mut group = group_entry();
    group["kind"] = json!("APIGroup");
    group["apiVersion"] = json!("v1");
    group
}

/// `/apis/metrics.k8s.io/v1beta1`. No singular names (metrics-server long had none): kubectl then
/// derives them from the kinds, so `kubectl get podmetrics|nodemetrics` work (and `pod`/`node`
/// keep meaning the core resources).
pub fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
        ],
    })
}

/// The group in aggregated discovery (apidiscovery.k8s.io/v2 APIGroupDiscovery).
pub fn aggregated_group() -> Value {
    let resource = |plural: &str, kind: &str, scope: &str| {
        json!({"resource": plural, "responseKind": {"group": GROUP, "version": VERSION, "kind": kind}, "scope": scope, "singularResource": "", "verbs": ["get", "list"]})
    };
    json!({
        "metadata": {"name": GROUP, "creationTimestamp": null},
        "versions": [{"version": VERSION, "resources": [resource("nodes", "NodeMetrics", "Cluster"), resource("pods", "PodMetrics", "Namespaced")], "freshness": "Current"}],
    })
}

// ---- what agents answer ----

#[derive(Debug, Deserialize)]
struct AgentSummary {
    node: Option<AgentNode>,
    #[serde(default)]
    pods: Vec<AgentPod>,
}

#[derive(Debug, Deserialize)]
struct AgentNode {
    usage: AgentUsage,
}

#[derive(Debug, Deserialize)]
struct AgentPod {
    namespace: String,
    name: String,
    #[serde(default)]
    uid: String,
    usage: AgentUsage,
    containers: Vec<AgentContainer>,
}

#[derive(Debug, Deserialize)]
struct AgentContainer {
    name: String,
    usage: AgentUsage,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentUsage {
    timestamp: String,
    window_nanoseconds: u64,
    cpu_nano_cores: u64,
    memory_working_set_bytes: u64,
}

// ---- quantities and durations as Go prints them ----

/// A decimal quantity `mantissa × 10^exponent` in resource.Quantity's canonical form: trailing
/// zeros folded into an exponent that is a multiple of 3, with its SI suffix (`1500000n` is
/// `1500u`, `250000000n` is `250m`).
pub fn decimal_quantity(mut mantissa: u64, mut exponent: i32) -> String {
    if mantissa == 0 {
        return "0".into();
    }
    while mantissa % 10 == 0 {
        mantissa /= 10;
        exponent += 1;
    }
    match exponent.rem_euclid(3) {
        1 => {
            mantissa *= 10;
            exponent -= 1;
        }
        2 => {
            mantissa *= 100;
            exponent -= 2;
        }
        _ => {}
    }
    let suffix = match exponent {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        other => return format!("{mantissa}e{other}"),
    };
    format!("{mantissa}{suffix}")
}

/// Bytes as a BinarySI quantity in canonical form: the largest power-of-1024 suffix that keeps
/// the number whole (`1234Ki`); under 1024 (either sign), a plain decimal number.
pub fn binary_quantity(bytes: u64) -> String {
    if bytes < 1024 {
        return decimal_quantity(bytes, 0);
    }
    let mut amount = bytes;
    let mut power = 0;
    while amount % 1024 == 0 && power < 6 {
        amount /= 1024;
        power += 1;
    }
    format!("{amount}{}", ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power])
}

/// Go's time.Duration.String (what metav1.Duration serializes to): `10.5s`, `1m0.2s`, `150ms`.
pub fn go_duration(nanos: u64) -> String {
    fn fraction(whole: u64, rest: u64, digits: u32) -> String {
        let mut text = format!("{whole}");
        if rest > 0 {
            let frac = format!("{rest:0width$}", width = digits as usize);
            text.push('.');
            text.push_str(frac.trim_end_matches('0'));
        }
        text
    }
    match nanos {
        0 => "0s".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}µs", fraction(n / 1_000, n % 1_000, 3)),
        n if n < 1_000_000_000 => format!("{}ms", fraction(n / 1_000_000, n % 1_000_000, 6)),
        n => {
            let seconds = n / 1_000_000_000;
            let (hours, minutes, secs) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
            let mut text = String::new();
            if hours > 0 {
                text.push_str(&format!("{hours}h"));
            }
            if hours > 0 || minutes > 0 {
                text.push_str(&format!("{minutes}m"));
            }
            text.push_str(&format!("{}s", fraction(secs, n % 1_000_000_000, 9)));
            text
        }
    }
}

/// metav1.Time: RFC 3339 to the second.
fn meta_time(rfc3339: &str) -> Value {
    match rfc3339.parse::<jiff::Timestamp>() {
        Ok(t) => json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        Err(_) => Value::Null,
    }
}

fn usage_json(usage: &AgentUsage) -> Value {
    json!({"cpu": decimal_quantity(usage.cpu_nano_cores, -9), "memory": binary_quantity(usage.memory_working_set_bytes)})
}

fn metadata(obj: &Value, now: &str) -> Value {
    let mut meta = json!({"name": objects::name(obj)});
    if let Some(ns) = objects::meta_str(obj, "namespace") {
        meta["namespace"] = json!(ns);
    }
    meta["creationTimestamp"] = json!(now);
    if let Some(labels) = objects::labels(obj).filter(|l| !l.is_empty()) {
        meta["labels"] = Value::Object(labels.clone());
    }
    meta
}

fn node_metrics(node: &Value, usage: &AgentUsage, now: &str) -> Value {
    json!({
        "kind": "NodeMetrics",
        "apiVersion": GROUP_VERSION,
        "metadata": metadata(node, now),
        "timestamp": meta_time(&usage.timestamp),
        "window": go_duration(usage.window_nanoseconds),
        "usage": usage_json(usage),
    })
}

fn pod_metrics(pod: &Value, stats: &AgentPod, now: &str) -> Value {
    let containers: Vec<Value> = stats.containers.iter().map(|c| json!({"name": c.name, "usage": usage_json(&c.usage)})).collect();
    json!({
        "kind": "PodMetrics",
        "apiVersion": GROUP_VERSION,
        "metadata": metadata(pod, now),
        "timestamp": meta_time(&stats.usage.timestamp),
        "window": go_duration(stats.usage.window_nanoseconds),
        "containers": containers,
    })
}

fn not_found(resource: &str, name: &str) -> ApiError {
    ApiError {
        code: 404,
        reason: "NotFound",
        message: format!("{resource}.{GROUP} \"{name}\" not found"),
        details: Some(json!({"name": name, "group": GROUP, "kind": resource})),
        retry_after: None,
    }
}

// ---- asking agents ----

/// The usage a node's agent reports; None (logged) when it cannot be had, as metrics-server
/// skips nodes it fails to scrape.
async fn agent_summary(server: &Server, node: &Value) -> Option<AgentSummary> {
    let name = objects::name(node).to_string();
    let fetch = async {
        let (host, port) = kubelet_endpoint(node).map_err(|e| e.message)?;
        let location = NodeLocation { host, port, path_and_query: AGENT_PATH.to_string() };
        let answer = server.nodes.get(&location).await.map_err(|e| crate::node_proxy::request_error(&location, &e).message)?;
        let status = answer.status().as_u16();
        if status != 200 {
            return Err(format!("{} answered {status}: {}", location.url(), answer.error_text().await));
        }
        let body = Limited::new(answer.relay(), MAX_AGENT_BODY).collect().await.map_err(|e| format!("reading {}: {e}", location.url()))?.to_bytes();
        serde_json::from_slice::<AgentSummary>(&body).map_err(|e| format!("decoding {}: {e}", location.url()))
    };
    match tokio::time::timeout(AGENT_TIMEOUT, fetch).await {
        Ok(Ok(summary)) => Some(summary),
        Ok(Err(error)) => {
            tracing::warn!(node = %name, %error, "no resource metrics from the node");
            None
        }
        Err(_) => {
            tracing::warn!(node = %name, "no resource metrics from the node: timed out");
            None
        }
    }
}

/// The selectors of a request, as a query of their own (paging does not apply: metrics lists are
/// computed whole, as metrics-server's).
fn selector_query(query: &Query) -> Query {
    let mut only = form_urlencoded::Serializer::new(String::new());
    for key in ["labelSelector", "fieldSelector"] {
        if let Some(value) = query.get(key) {
            only.append_pair(key, value);
        }
    }
    Query::parse(Some(&only.finish()))
}

async fn list_objects(server: &Server, group_version_plural: (&str, &str, &str), namespace: Option<&str>, query: &Query) -> ApiResult<Vec<Value>> {
    let (group, version, plural) = group_version_plural;
    let def = server.api.registry.get(group, version, plural).ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    let query = selector_query(query);
    let filter = Filter::from_query(&def, &query)?;
    let page = read_page(&server.api, &def, namespace, &query, &filter).await?;
    page.items.iter().map(objects::decode).collect::<Result<_, _>>().map_err(ApiError::internal)
}

async fn get_object(server: &Server, plural: &str, namespace: Option<&str>, name: &str) -> ApiResult<Value> {
    let def = server.api.registry.get("", "v1", plural).ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    server.api.get(&def, namespace, name).await
}

/// Each node's agent summary, in the order of `nodes`.
async fn agent_summaries(server: &Server, nodes: &[Value]) -> Vec<Option<AgentSummary>> {
    use futures_util::StreamExt;
    // Collected first: a lazy map inside the stream makes the future's Send-ness not provable.
    let asks: Vec<_> = nodes.iter().map(|node| agent_summary(server, node)).collect();
    futures_util::stream::iter(asks).buffered(AGENTS_AT_ONCE).collect().await
}

async fn nodes_metrics(server: &Server, nodes: &[Value]) -> Vec<Value> {
    let summaries = agent_summaries(server, nodes).await;
    let now = objects::now_rfc3339();
    let mut items: Vec<Value> = nodes
        .iter()
        .zip(summaries)
        .filter_map(|(node, summary)| Some(node_metrics(node, &summary?.node?.usage, &now)))
        .collect();
    items.sort_by(|a, b| objects::name(a).cmp(objects::name(b)));
    items
}

/// Metrics of `pods` (sorted by namespace and name), from the agents of their nodes.
async fn pods_metrics(server: &Server, pods: &[Value]) -> ApiResult<Vec<Value>> {
    let mut node_names: Vec<&str> = pods.iter().filter_map(|p| p.pointer("/spec/nodeName").and_then(Value::as_str)).filter(|n| !n.is_empty()).collect();
    node_names.sort_unstable();
    node_names.dedup();
    let mut nodes = Vec::new();
    for name in node_names {
        match get_object(server, "nodes", None, name).await {
            Ok(node) => nodes.push(node),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let summaries = agent_summaries(server, &nodes).await;
    // The agents' pods by (namespace, name); the uid tells a recreated pod of the same name apart.
    let mut known: BTreeMap<(String, String), AgentPod> = BTreeMap::new();
    for summary in summaries.into_iter().flatten() {
        for pod in summary.pods {
            known.insert((pod.namespace.clone(), pod.name.clone()), pod);
        }
    }
    let now = objects::now_rfc3339();
    let mut items = Vec::new();
    let mut sorted: Vec<&Value> = pods.iter().collect();
    sorted.sort_by(|a, b| (objects::meta_str(a, "namespace"), objects::name(a)).cmp(&(objects::meta_str(b, "namespace"), objects::name(b))));
    for pod in sorted {
        let key = (objects::meta_str(pod, "namespace").unwrap_or_default().to_string(), objects::name(pod).to_string());
        let Some(stats) = known.get(&key) else { continue };
        let uid = objects::meta_str(pod, "uid").unwrap_or_default();
        if !stats.uid.is_empty() && stats.uid != uid {
            continue;
        }
        items.push(pod_metrics(pod, stats, &now));
    }
    Ok(items)
}

// ---- serving ----

fn list_json(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": GROUP_VERSION, "metadata": {}, "items": items})
}

/// metrics-server's Table: Name, one column per resource (cpu, memory), Window.
fn table(items: &[Value], query: &Query) -> ApiResult<Value> {
    let include = query.get("includeObject").unwrap_or("Metadata");
    if !matches!(include, "" | "Metadata" | "None" | "Object") {
        return Err(ApiError::bad_request(format!("includeObject {include:?} is not supported; use None, Metadata or Object")));
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut cpu_nano: u64 = 0;
            let mut memory: u64 = 0;
            let usages: Vec<&Value> = match item.get("containers").and_then(Value::as_array) {
                Some(containers) => containers.iter().filter_map(|c| c.get("usage")).collect(),
                None => item.get("usage").into_iter().collect(),
            };
            for usage in usages {
                cpu_nano += usage.get("cpu").and_then(Value::as_str).and_then(parse_nano).unwrap_or(0);
                memory += usage.get("memory").and_then(Value::as_str).and_then(parse_bytes).unwrap_or(0);
            }
            let mut row = json!({"cells": [objects::name(item), decimal_quantity(cpu_nano, -9), binary_quantity(memory), item.get("window").cloned().unwrap_or(json!(""))]});
            match include {
                "None" => {}
                "Object" => row["object"] = item.clone(),
                _ => row["object"] = crate::http::partial_metadata(item),
            }
            row
        })
        .collect();
    let column = |name: &str, format: &str, description: &str| json!({"name": name, "type": "string", "format": format, "description": description, "priority": 0});
    Ok(json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": [column("Name", "name", "Name of the resource"), column("cpu", "quantity", ""), column("memory", "quantity", ""), column("Window", "duration", "")],
        "rows": rows,
    }))
}

/// Our own quantities back: nanocores from the canonical decimal form.
fn parse_nano(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let exponent: i32 = match suffix {
        "n" => -9,
        "u" => -6,
        "m" => -3,
        "" => 0,
        "k" => 3,
        "M" => 6,
        "G" => 9,
        _ => return None,
    };
    let scale = exponent + 9;
    number.checked_mul(10u64.checked_pow(u32::try_from(scale).ok()?)?)
}

fn parse_bytes(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let power = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].iter().position(|s| *s == suffix)?;
    number.parse::<u64>().ok()?.checked_mul(1024u64.checked_pow(u32::try_from(power).ok()?)?)
}

fn respond(value: &Value, format: Format, query: &Query) -> ApiResult<Response<Body>> {
    match format {
        Format::Table => {
            let items: Vec<Value> = match value.get("items").and_then(Value::as_array) {
                Some(items) => items.clone(),
                None => vec![value.clone()],
            };
            Ok(json_response(200, &table(&items, query)?))
        }
        Format::Metadata => match value.get("items").and_then(Value::as_array) {
            Some(items) => {
                let items: Vec<Value> = items.iter().map(crate::http::partial_metadata).collect();
                Ok(json_response(200, &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "items": items})))
            }
            None => Ok(json_response(200, &crate::http::partial_metadata(value))),
        },
        other => Ok(render(200, value, other)),
    }
}

/// Serves everything under `/apis/metrics.k8s.io`; `rest` is the path after it. Returns the verb
/// and resource for request metrics with the response.
pub async fn route(server: &Arc<Server>, req: http::Request<crate::http::RequestBody>, rest: &[&str]) -> (&'static str, String, Response<Body>) {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return ("", String::new(), error_response(&ApiError::method_not_allowed("the server does not allow this method on the requested resource")));
    }
    match rest {
        [] => return ("get", String::new(), json_response(200, &api_group())),
        [VERSION] => return ("get", String::new(), json_response(200, &resource_list())),
        _ => {}
    }
    let query = Query::parse(req.uri().query());
    let resource = match rest {
        [VERSION, "nodes", ..] => "nodes",
        [VERSION, "pods", ..] | [VERSION, "namespaces", _, "pods", ..] => "pods",
        _ => "",
    };
    let result = async {
        if query.flag("watch") || rest.get(1) == Some(&"watch") {
            return Err(("watch", ApiError::method_not_allowed("the server does not allow this method on the requested resource")));
        }
        let format = negotiate(req.headers()).map_err(|e| ("", e))?;
        match rest {
            [VERSION, "nodes"] => {
                let nodes = list_objects(server, ("", "v1", "nodes"), None, &query).await.map_err(|e| ("list", e))?;
                let items = nodes_metrics(server, &nodes).await;
                respond(&list_json("NodeMetricsList", items), format, &query).map(|r| ("list", r)).map_err(|e| ("list", e))
            }
            [VERSION, "nodes", name] => {
                let node = get_object(server, "nodes", None, name).await.map_err(|e| ("get", e))?;
                let item = nodes_metrics(server, std::slice::from_ref(&node)).await.into_iter().next().ok_or_else(|| ("get", not_found("nodemetrics", name)))?;
                respond(&item, format, &query).map(|r| ("get", r)).map_err(|e| ("get", e))
            }
            [VERSION, "pods"] | [VERSION, "namespaces", _, "pods"] => {
                let namespace = if rest.len() == 4 { Some(rest[2]) } else { None };
                let pods = list_objects(server, ("", "v1", "pods"), namespace, &query).await.map_err(|e| ("list", e))?;
                let items = pods_metrics(server, &pods).await.map_err(|e| ("list", e))?;
                respond(&list_json("PodMetricsList", items), format, &query).map(|r| ("list", r)).map_err(|e| ("list", e))
            }
            [VERSION, "namespaces", namespace, "pods", name] => {
                let pod = get_object(server, "pods", Some(namespace), name).await.map_err(|e| ("get", e))?;
                let item = pods_metrics(server, std::slice::from_ref(&pod)).await.map_err(|e| ("get", e))?.into_iter().next();
                let item = item.ok_or_else(|| ("get", not_found("podmetrics", &format!("{namespace}/{name}"))))?;
                respond(&item, format, &query).map(|r| ("get", r)).map_err(|e| ("get", e))
            }
            _ => Err(("", ApiError::not_found_path(""))),
        }
    }
    .await;
    match result {
        Ok((verb, response)) => (verb, resource.to_string(), response),
        Err((verb, error)) => (verb, resource.to_string(), error_response(&error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_canonical_as_upstream() {
        assert_eq!(decimal_quantity(0, -9), "0");
        assert_eq!(decimal_quantity(123_456, -9), "123456n");
        assert_eq!(decimal_quantity(1_500_000, -9), "1500u");
        assert_eq!(decimal_quantity(250_000_000, -9), "250m");
        assert_eq!(decimal_quantity(2_000_000_000, -9), "2");
        assert_eq!(decimal_quantity(12_340_000_000, -9), "12340m");
        assert_eq!(binary_quantity(0), "0");
        assert_eq!(binary_quantity(512), "512");
        assert_eq!(binary_quantity(1_536), "1536");
        assert_eq!(binary_quantity(1_263_616), "1234Ki");
        assert_eq!(binary_quantity(64 << 20), "64Mi");
        for n in [0, 7, 123_456, 1_500_000, 999_999_999_000] {
            assert_eq!(parse_nano(&decimal_quantity(n, -9)), Some(n));
        }
        for b in [0, 512, 1_536, 1_263_616, 64 << 20] {
            assert_eq!(parse_bytes(&binary_quantity(b)), Some(b));
        }
    }

    #[test]
    fn durations_print_as_go() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(999), "999ns");
        assert_eq!(go_duration(1_500), "1.5µs");
        assert_eq!(go_duration(150_000_000), "150ms");
        assert_eq!(go_duration(10_000_000_000), "10s");
        assert_eq!(go_duration(10_005_000_000), "10.005s");
        assert_eq!(go_duration(60_200_000_000), "1m0.2s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    }

    #[test]
    fn objects_have_upstream_shapes() {
        let usage = || AgentUsage { timestamp: "2024-05-01T10:00:00.123456789Z".into(), window_nanoseconds: 10_000_000_000, cpu_nano_cores: 998_000_000, memory_working_set_bytes: 1_048_576 };
        let pod = json!({"metadata": {"name": "busy", "namespace": "default", "uid": "u1", "labels": {"app": "x"}}});
        let stats = AgentPod { namespace: "default".into(), name: "busy".into(), uid: "u1".into(), usage: usage(), containers: vec![AgentContainer { name: "c".into(), usage: usage() }] };
        let m = pod_metrics(&pod, &stats, "2024-05-01T10:00:05Z");
        assert_eq!(m["kind"], "PodMetrics");
        assert_eq!(m["apiVersion"], "metrics.k8s.io/v1beta1");
        assert_eq!(m["metadata"], json!({"name": "busy", "namespace": "default", "creationTimestamp": "2024-05-01T10:00:05Z", "labels": {"app": "x"}}));
        assert_eq!(m["timestamp"], "2024-05-01T10:00:00Z");
        assert_eq!(m["window"], "10s");
        assert_eq!(m["containers"], json!([{"name": "c", "usage": {"cpu": "998m", "memory": "1Mi"}}]));
        let t = table(&[m], &Query::parse(None)).unwrap();
        assert_eq!(t["rows"][0]["cells"], json!(["busy", "998m", "1Mi", "10s"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let err = not_found("podmetrics", "default/busy");
        assert_eq!(err.message, "podmetrics.metrics.k8s.io \"default/busy\" not found");
    }
}
