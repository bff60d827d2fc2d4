//! pods/log: `kubectl logs`. The options are checked here, the container is chosen, and the
//! request goes on to the agent of the pod's node (`/containerLogs/{ns}/{pod}/{container}`, the
//! kubelet's path), whose answer streams back unbuffered as text/plain. Upstream:
//! pkg/registry/core/pod/rest/log.go and LogLocation in pkg/registry/core/pod/strategy.go.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::http::{Body, Server, full};
use crate::node_proxy::{NodeLocation, error_from_node, kubelet_endpoint, request_error};
use crate::resources::ResourceDef;
use crate::status::{ApiError, ApiResult, Cause};

/// `v1.PodLogOptions` as it arrives in the query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodLogOptions {
    pub container: String,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub since_seconds: Option<i64>,
    pub since_time: Option<jiff::Timestamp>,
    pub tail_lines: Option<i64>,
    pub limit_bytes: Option<i64>,
    /// Accepted for compatibility; agents' certificates are never verified yet (see
    /// [`crate::node_proxy`]), so it changes nothing.
    pub insecure_skip_tls_verify_backend: bool,
}

impl PodLogOptions {
    /// Decodes the query with the API's parameter conversion: the first value of a repeated
    /// parameter counts; a flag is true unless absent, `0` or `false`; numbers are decimal;
    /// `sinceTime` is RFC 3339. A value that does not convert is a 400.
    pub fn from_query(raw: Option<&str>) -> ApiResult<Self> {
        let mut opts = Self::default();
        let mut seen = std::collections::HashSet::new();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if !seen.insert(key.clone()) {
                continue;
            }
            let flag = || !(value == "0" || value.eq_ignore_ascii_case("false"));
            let int = || value.parse::<i64>().map_err(|_| ApiError::bad_request(format!("strconv.ParseInt: parsing {:?}: invalid syntax", value.as_ref())));
            match key.as_ref() {
                "container" => opts.container = value.to_string(),
                "follow" => opts.follow = flag(),
                "previous" => opts.previous = flag(),
                "timestamps" => opts.timestamps = flag(),
                "insecureSkipTLSVerifyBackend" => opts.insecure_skip_tls_verify_backend = flag(),
                "sinceSeconds" => opts.since_seconds = Some(int()?),
                "tailLines" => opts.tail_lines = Some(int()?),
                "limitBytes" => opts.limit_bytes = Some(int()?),
                "sinceTime" if !value.is_empty() && value != "null" => {
                    let time = value.parse::<jiff::Timestamp>().map_err(|e| ApiError::bad_request(format!("parsing time {:?} as \"2006-01-02T15:04:05Z07:00\": {e}", value.as_ref())))?;
                    opts.since_time = Some(time);
                }
                _ => {}
            }
        }
        Ok(opts)
    }

    /// Upstream's ValidatePodLogOptions, answered as `PodLogOptions "NAME" is invalid`.
    pub fn validate(&self, pod_name: &str) -> ApiResult<()> {
        let mut causes = Vec::new();
        if let Some(t) = self.tail_lines.filter(|t| *t < 0) {
            causes.push(Cause::invalid("tailLines", &json!(t), "must be greater than or equal to 0"));
        }
        if let Some(b) = self.limit_bytes.filter(|b| *b < 1) {
            causes.push(Cause::invalid("limitBytes", &json!(b), "must be greater than 0"));
        }
        match (self.since_seconds, self.since_time) {
            (Some(_), Some(_)) => causes.push(Cause::forbidden("", "at most one of `sinceTime` or `sinceSeconds` may be specified")),
            (Some(s), None) if s < 1 => causes.push(Cause::invalid("sinceSeconds", &json!(s), "must be greater than 0")),
            _ => {}
        }
        if causes.is_empty() {
            return Ok(());
        }
        // Go prints each field error as "field: detail", also when the field is empty.
        let summary: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let summary = if summary.len() == 1 { summary[0].clone() } else { format!("[{}]", summary.join(", ")) };
        Err(ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("PodLogOptions {pod_name:?} is invalid: {summary}"),
            details: Some(json!({
                "name": pod_name,
                "kind": "PodLogOptions",
                "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
            })),
            retry_after: None,
        })
    }

    /// The query for the agent, as upstream's url.Values.Encode writes it (keys sorted; flags only
    /// when set; sinceTime to the second).
    pub fn agent_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if self.follow {
            query.append_pair("follow", "true");
        }
        if let Some(b) = self.limit_bytes {
            query.append_pair("limitBytes", &b.to_string());
        }
        if self.previous {
            query.append_pair("previous", "true");
        }
        if let Some(s) = self.since_seconds {
            query.append_pair("sinceSeconds", &s.to_string());
        }
        if let Some(t) = self.since_time {
            let whole = jiff::Timestamp::from_second(t.as_second()).unwrap_or(t);
            query.append_pair("sinceTime", &whole.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
        if let Some(t) = self.tail_lines {
            query.append_pair("tailLines", &t.to_string());
        }
        if self.timestamps {
            query.append_pair("timestamps", "true");
        }
        query.finish()
    }
}

/// The names of a pod's containers in upstream's visiting order: init, regular, ephemeral.
fn container_names(pod: &Value) -> Vec<&str> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array).into_iter().flatten())
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect()
}

/// Upstream's validateContainer: the named container must exist; without a name, a pod with one
/// regular container means that one (kubectl picks a default itself before asking).
pub fn choose_container(pod: &Value, wanted: &str) -> ApiResult<String> {
    let name = crate::objects::name(pod);
    if wanted.is_empty() {
        let regular = pod.pointer("/spec/containers").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        return match regular {
            [only] => Ok(only.get("name").and_then(Value::as_str).unwrap_or_default().to_string()),
            [] => Err(ApiError::bad_request(format!("a container name must be specified for pod {name}"))),
            _ => Err(ApiError::bad_request(format!("a container name must be specified for pod {name}, choose one of: [{}]", container_names(pod).join(" ")))),
        };
    }
    if container_names(pod).contains(&wanted) {
        Ok(wanted.to_string())
    } else {
        Err(ApiError::bad_request(format!("container {wanted} is not valid for pod {name}")))
    }
}

/// `GET .../pods/{name}/log`.
pub async fn serve(server: &Server, pod_def: &ResourceDef, namespace: &str, name: &str, raw_query: Option<&str>) -> ApiResult<Response<Body>> {
    let opts = PodLogOptions::from_query(raw_query)?;
    opts.validate(name)?;
    let pod = server.api.get(pod_def, Some(namespace), name).await?;
    let container = choose_container(&pod, &opts.container)?;
    let node_name = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
    if node_name.is_empty() {
        // No node, no log yet: upstream answers 204 with nothing (kubectl prints nothing).
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        return Ok(resp);
    }
    let nodes = server.api.registry.get("", "v1", "nodes").ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let node = server.api.get(&nodes, None, node_name).await?;
    let (host, port) = kubelet_endpoint(&node)?;
    let query = opts.agent_query();
    let mut path_and_query = format!("/containerLogs/{namespace}/{name}/{container}");
    if !query.is_empty() {
        path_and_query = format!("{path_and_query}?{query}");
    }
    let location = NodeLocation { host, port, path_and_query };
    let answer = server.nodes.get(&location).await.map_err(|e| request_error(&location, &e))?;
    let status = answer.status().as_u16();
    if !(200..=206).contains(&status) {
        let text = answer.error_text().await;
        return Err(error_from_node(status, "pods/log", name, &text));
    }
    let mut resp = Response::new(answer.relay());
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> ApiResult<PodLogOptions> {
        PodLogOptions::from_query(Some(q))
    }

    #[test]
    fn query_converts_as_upstream() {
        let o = parse("container=web&follow=true&previous=1&timestamps=yes&tailLines=5&limitBytes=100&sinceSeconds=60&follow=false").unwrap();
        assert_eq!(o.container, "web");
        assert!(o.follow, "the first value counts");
        assert!(o.previous && o.timestamps);
        assert_eq!((o.tail_lines, o.limit_bytes, o.since_seconds), (Some(5), Some(100), Some(60)));
        let o = parse("follow=0&timestamps=False&sinceTime=2024-05-01T10%3A00%3A00Z").unwrap();
        assert!(!o.follow && !o.timestamps);
        assert_eq!(o.since_time, Some("2024-05-01T10:00:00Z".parse().unwrap()));
        let err = parse("tailLines=ten").unwrap_err();
        assert_eq!((err.code, err.message.as_str()), (400, "strconv.ParseInt: parsing \"ten\": invalid syntax"));
        assert_eq!(parse("sinceTime=yesterday").unwrap_err().code, 400);
    }

    #[test]
    fn validation_messages_match_upstream() {
        let err = parse("tailLines=-1").unwrap().validate("web").unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        assert_eq!(err.message, "PodLogOptions \"web\" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0");
        let err = parse("limitBytes=0&sinceSeconds=0").unwrap().validate("web").unwrap_err();
        assert_eq!(
            err.message,
            "PodLogOptions \"web\" is invalid: [limitBytes: Invalid value: 0: must be greater than 0, sinceSeconds: Invalid value: 0: must be greater than 0]"
        );
        assert_eq!(err.details.as_ref().unwrap()["causes"][0]["field"], "limitBytes");
        let err = parse("sinceSeconds=5&sinceTime=2024-05-01T10:00:00Z").unwrap().validate("web").unwrap_err();
        assert_eq!(err.message, "PodLogOptions \"web\" is invalid: : Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified");
        assert!(parse("tailLines=0&limitBytes=1&sinceSeconds=1").unwrap().validate("web").is_ok());
    }

    #[test]
    fn container_choice_matches_upstream() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"initContainers": [{"name": "init"}], "containers": [{"name": "a"}]}});
        assert_eq!(choose_container(&one, "").unwrap(), "a");
        assert_eq!(choose_container(&one, "init").unwrap(), "init");
        assert_eq!(choose_container(&one, "b").unwrap_err().message, "container b is not valid for pod p");
        let two = json!({"metadata": {"name": "p"}, "spec": {"initContainers": [{"name": "init"}], "containers": [{"name": "a"}, {"name": "b"}], "ephemeralContainers": [{"name": "debug"}]}});
        let err = choose_container(&two, "").unwrap_err();
        assert_eq!((err.code, err.reason), (400, "BadRequest"));
        assert_eq!(err.message, "a container name must be specified for pod p, choose one of: [init a b debug]");
        assert_eq!(choose_container(&two, "debug").unwrap(), "debug");
    }

    #[test]
    fn agent_query_is_sorted_and_sparse() {
        let o = parse("timestamps=true&tailLines=1&follow=true&container=a&insecureSkipTLSVerifyBackend=true&sinceTime=2024-05-01T10:00:00.5%2B02:00").unwrap();
        assert_eq!(o.agent_query(), "follow=true&sinceTime=2024-05-01T08%3A00%3A00Z&tailLines=1&timestamps=true");
        assert_eq!(PodLogOptions::default().agent_query(), "");
    }
}
