//! pods/exec, pods/attach and pods/portforward: `kubectl exec`, `attach`, `cp` and
//! `port-forward`. Upstream: pkg/registry/core/pod/rest/subresources.go, ExecLocation and
//! friends in pkg/registry/core/pod/strategy.go, and the apiserver's stream translator and
//! tunneling handler.
//!
//! The agent speaks one protocol: SPDY/3.1, the kubelet's, at `/exec/{ns}/{pod}/{container}`,
//! `/attach/...` and `/portForward/{ns}/{pod}`; it passes the upgraded connection on to the
//! runtime's streaming server unchanged. Clients arrive three ways:
//!
//! - SPDY (kubectl up to 1.29, and newer ones when WebSocket fails): the upgrade request goes to
//!   the agent as it came, and after both upgrades the bytes are relayed untouched.
//! - WebSocket `v5.channel.k8s.io`/`v4.channel.k8s.io` for exec and attach (kubectl 1.30+): the
//!   WebSocket is terminated here and each channel becomes a SPDY stream to the agent
//!   ([`bridge::remote_command`]); v5's close message half-closes stdin, which `kubectl cp`
//!   and `exec -i` need to say EOF.
//! - WebSocket `SPDY/3.1+portforward.k8s.io` for port-forward (kubectl 1.31+): SPDY frames in
//!   binary messages, unwrapped onto a SPDY connection to the agent ([`bridge::tunnel`]).

pub mod bridge;
pub mod spdy;
pub mod websocket;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::http::{Body, Server, full};
use crate::node_proxy::{NodeError, NodeLocation, error_from_node, kubelet_endpoint, request_error};
use crate::pod_log::choose_container;
use crate::resources::ResourceDef;
use crate::status::{ApiError, ApiResult};

pub const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const REMOTE_COMMAND_V4: &str = "v4.channel.k8s.io";
const REMOTE_COMMAND_V5: &str = "v5.channel.k8s.io";
const PORT_FORWARD_V1: &str = "portforward.k8s.io";
const TUNNEL_PREFIX: &str = "SPDY/3.1+";
/// How much of an agent's error answer is read.
const MAX_ERROR_BODY: usize = 50_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Exec,
    Attach,
    PortForward,
}

impl Kind {
    pub fn from_subresource(sub: &str) -> Option<Self> {
        match sub {
            "exec" => Some(Kind::Exec),
            "attach" => Some(Kind::Attach),
            "portforward" => Some(Kind::PortForward),
            _ => None,
        }
    }

    fn resource(self) -> &'static str {
        match self {
            Kind::Exec => "pods/exec",
            Kind::Attach => "pods/attach",
            Kind::PortForward => "pods/portforward",
        }
    }
}

/// PodExecOptions, PodAttachOptions and PodPortForwardOptions as they arrive in the query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub container: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    pub ports: Vec<u16>,
}

impl StreamOptions {
    /// The API's parameter conversion: `command` and `ports` repeat; for the rest the first value
    /// counts; a flag is true unless `0` or `false`.
    pub fn from_query(raw: Option<&str>) -> ApiResult<Self> {
        let mut opts = Self::default();
        let mut seen = std::collections::HashSet::new();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "command" => opts.command.push(value.to_string()),
                "ports" => {
                    for port in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        let port = port.parse::<u16>().map_err(|_| ApiError::bad_request(format!("strconv.ParseInt: parsing {port:?}: invalid syntax")))?;
                        opts.ports.push(port);
                    }
                }
                _ if !seen.insert(key.to_string()) => {}
                "container" => opts.container = value.to_string(),
                "stdin" => opts.stdin = flag(&value),
                "stdout" => opts.stdout = flag(&value),
                "stderr" => opts.stderr = flag(&value),
                "tty" => opts.tty = flag(&value),
                _ => {}
            }
        }
        Ok(opts)
    }

    /// Upstream's validation of the options (validation.ValidatePodPortForwardOptions and the
    /// exec/attach checks of the registry).
    pub fn validate(&self, kind: Kind) -> ApiResult<()> {
        match kind {
            Kind::Exec if self.command.is_empty() => Err(ApiError::bad_request("you must specify at least 1 command")),
            Kind::Exec | Kind::Attach if !(self.stdin || self.stdout || self.stderr) => Err(ApiError::bad_request("you must specify at least 1 of stdin, stdout, stderr")),
            Kind::PortForward if self.ports.contains(&0) => Err(ApiError::bad_request("port 0 must be in the range 1 to 65535")),
            _ => Ok(()),
        }
    }

    /// The agent's path and query, with the kubelet's parameter names.
    pub fn agent_path(&self, kind: Kind, namespace: &str, pod: &str, container: &str) -> String {
        let segment = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        let mut query = form_urlencoded::Serializer::new(String::new());
        let path = match kind {
            Kind::Exec | Kind::Attach => {
                if kind == Kind::Exec {
                    for command in &self.command {
                        query.append_pair("command", command);
                    }
                }
                for (set, name) in [(self.stdin, "input"), (self.stdout, "output"), (self.stderr, "error"), (self.tty, "tty")] {
                    if set {
                        query.append_pair(name, "1");
                    }
                }
                let verb = if kind == Kind::Exec { "exec" } else { "attach" };
                format!("/{verb}/{}/{}/{}", segment(namespace), segment(pod), segment(container))
            }
            Kind::PortForward => {
                for port in &self.ports {
                    query.append_pair("port", &port.to_string());
                }
                format!("/portForward/{}/{}", segment(namespace), segment(pod))
            }
        };
        let query = query.finish();
        if query.is_empty() { path } else { format!("{path}?{query}") }
    }
}

fn flag(value: &str) -> bool {
    !(value == "0" || value.eq_ignore_ascii_case("false"))
}

/// The values of a header that may repeat and may list several values in one line.
fn header_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect()
}

fn is_upgrade_to(headers: &HeaderMap, protocol: &str) -> bool {
    let connection_upgrade = header_values(headers, "connection").iter().any(|v| v.eq_ignore_ascii_case("upgrade"));
    connection_upgrade && header_values(headers, "upgrade").iter().any(|v| v.eq_ignore_ascii_case(protocol))
}

/// How the client wants to talk.
#[derive(Debug, PartialEq, Eq)]
enum ClientProtocol {
    Spdy,
    /// Remote command over WebSocket; `true` for v5 (with the close message).
    RemoteCommandWebSocket(bool),
    PortForwardTunnel,
}

fn client_protocol(kind: Kind, headers: &HeaderMap) -> ApiResult<ClientProtocol> {
    if is_upgrade_to(headers, "websocket") {
        let offered = header_values(headers, "sec-websocket-protocol");
        let has = |p: &str| offered.iter().any(|o| o == p);
        return match kind {
            Kind::PortForward if has(&format!("{TUNNEL_PREFIX}{PORT_FORWARD_V1}")) => Ok(ClientProtocol::PortForwardTunnel),
            Kind::Exec | Kind::Attach if has(REMOTE_COMMAND_V5) => Ok(ClientProtocol::RemoteCommandWebSocket(true)),
            Kind::Exec | Kind::Attach if has(REMOTE_COMMAND_V4) => Ok(ClientProtocol::RemoteCommandWebSocket(false)),
            _ => Err(ApiError::bad_request(format!("unable to upgrade: no supported WebSocket subprotocol among {offered:?}"))),
        };
    }
    if is_upgrade_to(headers, "SPDY/3.1") {
        return Ok(ClientProtocol::Spdy);
    }
    Err(ApiError::bad_request("Upgrade request required"))
}

/// `GET|POST .../pods/{name}/exec|attach|portforward`.
pub async fn serve(server: &Server, pod_def: &ResourceDef, namespace: &str, name: &str, kind: Kind, mut req: Request<crate::http::RequestBody>) -> ApiResult<Response<Body>> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return Err(ApiError::method_not_allowed("the server does not allow this method on the requested resource"));
    }
    let opts = StreamOptions::from_query(req.uri().query())?;
    opts.validate(kind)?;
    let protocol = client_protocol(kind, req.headers())?;
    let pod = server.api.get(pod_def, Some(namespace), name).await?;
    let container = if kind == Kind::PortForward { String::new() } else { choose_container(&pod, &opts.container)? };
    let node_name = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    }
    let nodes = server.api.registry.get("", "v1", "nodes").ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let node = server.api.get(&nodes, None, node_name).await?;
    let (host, port) = kubelet_endpoint(&node)?;
    let location = NodeLocation { host, port, path_and_query: opts.agent_path(kind, namespace, name, &container) };

    let client_upgrade = hyper::upgrade::on(&mut req);
    let agent_protocols: Vec<String> = match &protocol {
        ClientProtocol::Spdy => header_values(req.headers(), STREAM_PROTOCOL_HEADER),
        ClientProtocol::RemoteCommandWebSocket(_) => vec![REMOTE_COMMAND_V4.to_string()],
        ClientProtocol::PortForwardTunnel => vec![PORT_FORWARD_V1.to_string()],
    };
    let agent = upgrade_agent(server, &location, req.method().clone(), &agent_protocols).await.map_err(|e| match e {
        AgentAnswer::Failed(error) => request_error(&location, &error),
        AgentAnswer::Refused(code, text) => error_from_node(code, kind.resource(), name, &text),
    })?;

    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    match protocol {
        ClientProtocol::Spdy => {
            headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            if let Some(chosen) = agent.headers.get(STREAM_PROTOCOL_HEADER) {
                headers.insert(STREAM_PROTOCOL_HEADER, chosen.clone());
            }
            tokio::spawn(async move {
                let Ok(client) = client_upgrade.await else { return };
                let mut client = TokioIo::new(client);
                let mut agent_io = TokioIo::new(agent.io);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut agent_io).await;
            });
        }
        ClientProtocol::RemoteCommandWebSocket(v5) => {
            websocket_accept(headers, req.headers(), if v5 { REMOTE_COMMAND_V5 } else { REMOTE_COMMAND_V4 })?;
            let streams = bridge::Streams { stdin: opts.stdin, stdout: opts.stdout, stderr: opts.stderr, tty: opts.tty };
            tokio::spawn(async move {
                let Ok(client) = client_upgrade.await else { return };
                bridge::remote_command(client, agent.io, streams, v5).await;
            });
        }
        ClientProtocol::PortForwardTunnel => {
            websocket_accept(headers, req.headers(), &format!("{TUNNEL_PREFIX}{PORT_FORWARD_V1}"))?;
            tokio::spawn(async move {
                let Ok(client) = client_upgrade.await else { return };
                bridge::tunnel(client, agent.io).await;
            });
        }
    }
    Ok(response)
}

fn websocket_accept(headers: &mut HeaderMap, request: &HeaderMap, protocol: &str) -> ApiResult<()> {
    let key = request.get("sec-websocket-key").and_then(|k| k.to_str().ok()).ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?;
    let accept = HeaderValue::from_str(&websocket::accept_key(key)).map_err(|e| ApiError::internal(e))?;
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert("sec-websocket-accept", accept);
    headers.insert("sec-websocket-protocol", HeaderValue::from_str(protocol).map_err(|e| ApiError::internal(e))?);
    Ok(())
}

/// The agent's side of an upgraded connection.
struct AgentStream {
    io: hyper::upgrade::Upgraded,
    headers: HeaderMap,
}

enum AgentAnswer {
    Failed(NodeError),
    Refused(u16, String),
}

impl From<NodeError> for AgentAnswer {
    fn from(e: NodeError) -> Self {
        AgentAnswer::Failed(e)
    }
}

impl From<hyper::Error> for AgentAnswer {
    fn from(e: hyper::Error) -> Self {
        AgentAnswer::Failed(NodeError::Http(e))
    }
}

/// Asks the agent for a SPDY connection at `location` offering `protocols`.
async fn upgrade_agent(server: &Server, location: &NodeLocation, method: Method, protocols: &[String]) -> Result<AgentStream, AgentAnswer> {
    let tls = server.nodes.connect(&location.host, location.port).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "agent connection ended with an error");
        }
    });
    let mut request = Request::builder()
        .method(method)
        .uri(location.path_and_query.as_str())
        .header(header::HOST, location.authority())
        .header(header::USER_AGENT, concat!("berth-apiserver/", env!("CARGO_PKG_VERSION")))
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1");
    for protocol in protocols {
        request = request.header(STREAM_PROTOCOL_HEADER, protocol.as_str());
    }
    let request = request.body(Empty::<Bytes>::new()).map_err(|e| AgentAnswer::Failed(NodeError::Request(e)))?;
    let response = match tokio::time::timeout(std::time::Duration::from_secs(60), sender.send_request(request)).await {
        Ok(response) => response?,
        Err(_) => return Err(AgentAnswer::Failed(NodeError::HeaderTimeout)),
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let code = response.status().as_u16();
        let mut body = response.into_body();
        let mut text = Vec::new();
        let read = async {
            while text.len() < MAX_ERROR_BODY {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            text.extend_from_slice(&data);
                        }
                    }
                    _ => break,
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
        text.truncate(MAX_ERROR_BODY);
        // An upgrade-aware proxy reports a backend's refusal with the backend's code.
        return Err(AgentAnswer::Refused(code, String::from_utf8_lossy(&text).into_owned()));
    }
    let headers = response.headers().clone();
    let io = hyper::upgrade::on(response).await?;
    Ok(AgentStream { io, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_convert_and_map_to_the_kubelet_query() {
        let o = StreamOptions::from_query(Some("command=sh&command=-c&command=echo%20hi&container=c&stdin=true&stdout=1&stderr=false&tty=true&tty=false")).unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdin && o.stdout && !o.stderr && o.tty, "the first value of a flag counts");
        assert_eq!(o.agent_path(Kind::Exec, "default", "web", "c"), "/exec/default/web/c?command=sh&command=-c&command=echo+hi&input=1&output=1&tty=1");
        assert_eq!(o.agent_path(Kind::Attach, "default", "web", "c"), "/attach/default/web/c?input=1&output=1&tty=1");
        let p = StreamOptions::from_query(Some("ports=8080&ports=9090,53")).unwrap();
        assert_eq!(p.ports, [8080, 9090, 53]);
        assert_eq!(p.agent_path(Kind::PortForward, "ns", "db", ""), "/portForward/ns/db?port=8080&port=9090&port=53");
        assert_eq!(StreamOptions::from_query(Some("ports=http")).unwrap_err().code, 400);
        assert_eq!(StreamOptions::default().validate(Kind::Exec).unwrap_err().message, "you must specify at least 1 command");
        let no_streams = StreamOptions { command: vec!["true".into()], ..Default::default() };
        assert_eq!(no_streams.validate(Kind::Exec).unwrap_err().code, 400);
        assert!(StreamOptions::default().validate(Kind::PortForward).is_ok());
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn the_client_protocol_comes_from_the_upgrade_headers() {
        let ws = headers(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-protocol", "v5.channel.k8s.io, v4.channel.k8s.io")]);
        assert_eq!(client_protocol(Kind::Exec, &ws).unwrap(), ClientProtocol::RemoteCommandWebSocket(true));
        let v4 = headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket"), ("sec-websocket-protocol", "v4.channel.k8s.io")]);
        assert_eq!(client_protocol(Kind::Attach, &v4).unwrap(), ClientProtocol::RemoteCommandWebSocket(false));
        assert_eq!(client_protocol(Kind::PortForward, &ws).unwrap_err().code, 400);
        let tunnel = headers(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-protocol", "SPDY/3.1+portforward.k8s.io")]);
        assert_eq!(client_protocol(Kind::PortForward, &tunnel).unwrap(), ClientProtocol::PortForwardTunnel);
        let spdy = headers(&[("connection", "Upgrade"), ("upgrade", "SPDY/3.1"), ("x-stream-protocol-version", "v4.channel.k8s.io"), ("x-stream-protocol-version", "v3.channel.k8s.io")]);
        assert_eq!(client_protocol(Kind::Exec, &spdy).unwrap(), ClientProtocol::Spdy);
        assert_eq!(header_values(&spdy, STREAM_PROTOCOL_HEADER), ["v4.channel.k8s.io", "v3.channel.k8s.io"]);
        assert_eq!(client_protocol(Kind::Exec, &HeaderMap::new()).unwrap_err().message, "Upgrade request required");
    }
}
