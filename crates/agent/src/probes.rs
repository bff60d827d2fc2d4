//! Startup, liveness and readiness probes (exec, httpGet over HTTP or HTTPS, tcpSocket, gRPC)
//! with the upstream timing fields. Readiness feeds the Ready condition; a failed liveness or
//! startup probe stops the container, and the pod worker restarts it under the restart policy.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::pki_types::ServerName;
use hyper_util::rt::TokioIo;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Endpoint;
use tonic_prost::ProstCodec;

use crate::cri::api;
use crate::pods::Context;
use crate::runtime_state::PodRuntime;

#[derive(Clone, Debug, Default)]
struct Counter {
    successes: i32,
    failures: i32,
    next: Option<Instant>,
}

/// One container instance's probe results.
#[derive(Clone, Debug, Default)]
pub struct ProbeState {
    container_id: String,
    pub ready: Option<bool>,
    pub started: Option<bool>,
    startup: Counter,
    liveness: Counter,
    readiness: Counter,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

fn seconds(value: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(value.unwrap_or(default).max(0) as u64)
}

/// Runs every probe that is due for the pod's running containers; returns how long until the
/// next one is due.
pub async fn run_due(ctx: &Context, pod: &Pod, runtime: &PodRuntime, states: &mut HashMap<String, ProbeState>, pod_ips: &[String]) -> Duration {
    let mut wake = Duration::from_secs(10);
    let Some(spec) = pod.spec.as_ref() else { return wake };
    let sidecars = spec.init_containers.iter().flatten().filter(|c| crate::status::is_sidecar(c));
    for container in spec.containers.iter().chain(sidecars) {
        let Some(info) = runtime.latest(&container.name).filter(|c| c.is_running()) else {
            states.remove(&container.name);
            continue;
        };
        if container.startup_probe.is_none() && container.liveness_probe.is_none() && container.readiness_probe.is_none() {
            continue;
        }
        let state = states.entry(container.name.clone()).or_default();
        if state.container_id != info.id {
            *state = ProbeState { container_id: info.id.clone(), ..Default::default() };
        }
        let started_at = Instant::now() - started_ago(info.status.started_at);
        if state.started != Some(true) {
            match &container.startup_probe {
                None => state.started = Some(true),
                Some(probe) => {
                    state.started = Some(false);
                    match step(ctx, pod, container, &info.id, probe, Kind::Startup, &mut state.startup, started_at, pod_ips).await {
                        Outcome::Wait(d) => wake = wake.min(d),
                        Outcome::Succeeded => state.started = Some(true),
                        Outcome::FailedThreshold => {
                            kill(ctx, pod, container, &info.id, "startup").await;
                            continue;
                        }
                    }
                }
            }
        }
        if state.started != Some(true) {
            continue;
        }
        if let Some(probe) = &container.liveness_probe {
            match step(ctx, pod, container, &info.id, probe, Kind::Liveness, &mut state.liveness, started_at, pod_ips).await {
                Outcome::Wait(d) => wake = wake.min(d),
                Outcome::Succeeded => {}
                Outcome::FailedThreshold => {
                    kill(ctx, pod, container, &info.id, "liveness").await;
                    continue;
                }
            }
        }
        if let Some(probe) = &container.readiness_probe {
            if state.ready.is_none() {
                state.ready = Some(false);
            }
            match step(ctx, pod, container, &info.id, probe, Kind::Readiness, &mut state.readiness, started_at, pod_ips).await {
                Outcome::Wait(d) => wake = wake.min(d),
                Outcome::Succeeded => state.ready = Some(true),
                Outcome::FailedThreshold => state.ready = Some(false),
            }
        }
        // After running, every probe has a next time; wake for the earliest.
        for counter in [&state.startup, &state.liveness, &state.readiness] {
            if let Some(next) = counter.next {
                wake = wake.min(next.saturating_duration_since(Instant::now()));
            }
        }
    }
    wake
}

fn started_ago(started_at_nanos: i64) -> Duration {
    let now = jiff::Timestamp::now().as_nanosecond();
    Duration::from_nanos((now - started_at_nanos as i128).max(0) as u64)
}

enum Outcome {
    /// Not due yet, or ran without reaching a threshold.
    Wait(Duration),
    Succeeded,
    FailedThreshold,
}

#[allow(clippy::too_many_arguments)]
async fn step(ctx: &Context, pod: &Pod, container: &Container, container_id: &str, probe: &Probe, kind: Kind, counter: &mut Counter, started_at: Instant, pod_ips: &[String]) -> Outcome {
    let now = Instant::now();
    let first_due = started_at + seconds(probe.initial_delay_seconds, 0);
    let due = counter.next.unwrap_or(first_due).max(first_due);
    if now < due {
        return Outcome::Wait(due - now);
    }
    let period = seconds(probe.period_seconds, 10).max(Duration::from_secs(1));
    counter.next = Some(now + period);
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let result = execute(ctx, container, container_id, probe, timeout, pod_ips).await;
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    match result {
        Ok(warning) => {
            if let Some(warning) = warning {
                ctx.event(pod, Some(&container.name), "Warning", "ProbeWarning", format!("{} probe warning: {warning}", kind.name()));
            }
            counter.failures = 0;
            counter.successes += 1;
            if counter.successes >= success_threshold { Outcome::Succeeded } else { Outcome::Wait(period) }
        }
        Err(message) => {
            counter.successes = 0;
            counter.failures += 1;
            ctx.event(pod, Some(&container.name), "Warning", "Unhealthy", format!("{} probe failed: {message}", kind.name()));
            if counter.failures >= failure_threshold {
                counter.failures = 0;
                Outcome::FailedThreshold
            } else {
                Outcome::Wait(period)
            }
        }
    }
}

async fn kill(ctx: &Context, pod: &Pod, container: &Container, container_id: &str, which: &str) {
    ctx.event(pod, Some(&container.name), "Normal", "Killing", format!("Container {} failed {which} probe, will be restarted", container.name));
    let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
    if let Err(status) = ctx.cri.runtime.clone().stop_container(api::StopContainerRequest { container_id: container_id.to_string(), timeout: grace }).await {
        tracing::warn!(%status, "stopping a container after a failed probe");
    }
}

fn resolve_port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("couldn't find port {name:?} in the container's ports"))
        }
    }
}

/// Runs a postStart or preStop handler (exec, httpGet, tcpSocket or sleep), as a probe runs.
pub(crate) async fn run_handler(ctx: &Context, container: &Container, container_id: &str, handler: &k8s_openapi::api::core::v1::LifecycleHandler, timeout: Duration, pod_ips: &[String]) -> Result<(), String> {
    if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(timeout)).await;
        return Ok(());
    }
    let probe = Probe { exec: handler.exec.clone(), http_get: handler.http_get.clone(), tcp_socket: handler.tcp_socket.clone(), ..Default::default() };
    execute(ctx, container, container_id, &probe, timeout, pod_ips).await.map(|_warning| ())
}

/// Runs one probe: `Ok(Some(warning))` passes but is worth an event (upstream's probe.Warning).
async fn execute(ctx: &Context, container: &Container, container_id: &str, probe: &Probe, timeout: Duration, pod_ips: &[String]) -> Result<Option<String>, String> {
    if let Some(exec) = &probe.exec {
        let request = api::ExecSyncRequest { container_id: container_id.to_string(), cmd: exec.command.clone().unwrap_or_default(), timeout: timeout.as_secs() as i64 };
        return match tokio::time::timeout(timeout + Duration::from_secs(1), ctx.cri.runtime.clone().exec_sync(request)).await {
            Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
            Ok(Err(status)) => Err(status.message().to_string()),
            Ok(Ok(response)) => {
                let response = response.into_inner();
                if response.exit_code == 0 {
                    Ok(None)
                } else {
                    let output = String::from_utf8_lossy(&response.stdout).into_owned() + &String::from_utf8_lossy(&response.stderr);
                    Err(format!("command {:?} exited with {}: {}", exec.command.clone().unwrap_or_default().join(" "), response.exit_code, output.trim()))
                }
            }
        };
    }
    let default_host = pod_ips.first().cloned().unwrap_or_else(|| "127.0.0.1".into());
    if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(container, &tcp.port)?;
        let host = tcp.host.clone().filter(|h| !h.is_empty()).unwrap_or(default_host);
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(_)) => Ok(None),
            Ok(Err(error)) => Err(format!("dial tcp {host}:{port}: {error}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(http) = &probe.http_get {
        return http_get(container, http, &default_host, timeout).await;
    }
    if let Some(grpc) = &probe.grpc {
        let port = u16::try_from(grpc.port).map_err(|_| format!("invalid port {}", grpc.port))?;
        // Upstream has no host field for gRPC: it always dials the pod IP.
        return grpc_check(&default_host, port, grpc.service.as_deref().unwrap_or(""), timeout).await.map(|()| None);
    }
    Err("the probe has no handler".into())
}

/// `host:port`, with IPv6 addresses bracketed (Go's `net.JoinHostPort`), for URLs, Host headers
/// and gRPC targets.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// Where one request of an HTTP(S) probe goes.
#[derive(Clone, Debug, PartialEq)]
struct Target {
    https: bool,
    /// The host name or address as dialled: IPv6 without brackets.
    host: String,
    port: u16,
    /// `host:port` as written in the URL, which is also the default Host header.
    authority: String,
    /// Path and query.
    path: String,
}

impl Target {
    fn url(&self) -> String {
        format!("{}://{}{}", if self.https { "https" } else { "http" }, self.authority, self.path)
    }

    /// Resolves a redirect's Location against this URL, as a browser (and Go's client) does:
    /// absolute, scheme-relative, absolute-path and relative references.
    fn follow(&self, location: &str) -> Result<Target, String> {
        let location = location.split('#').next().unwrap_or("");
        let bad = |why: &str| format!("failed to parse Location header {location:?}: {why}");
        if let Some((scheme, rest)) = scheme_of(location) {
            let https = match scheme.to_ascii_lowercase().as_str() {
                "http" => false,
                "https" => true,
                other => return Err(format!("unsupported protocol scheme {other:?}")),
            };
            return Self::absolute(https, rest).map_err(|e| bad(&e));
        }
        if let Some(rest) = location.strip_prefix("//") {
            return Self::absolute(self.https, rest).map_err(|e| bad(&e));
        }
        let path = if location.starts_with('/') {
            location.to_string()
        } else if location.starts_with('?') {
            format!("{}{location}", self.path.split('?').next().unwrap_or("/"))
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            format!("{}{location}", &base[..base.rfind('/').map_or(0, |i| i + 1)])
        };
        Ok(Target { path: remove_dot_segments(&path), ..self.clone() })
    }

    /// `authority[/path]` of an absolute URL.
    fn absolute(https: bool, rest: &str) -> Result<Target, String> {
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let parsed: hyper::http::uri::Authority = authority.parse().map_err(|e| format!("{e}"))?;
        let host = parsed.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err("no host".into());
        }
        let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = if path.starts_with('?') { format!("/{path}") } else if path.is_empty() { "/".into() } else { remove_dot_segments(path) };
        Ok(Target { https, host, port, authority: authority.to_string(), path })
    }
}

/// The scheme and the rest of an absolute URL; `None` for a relative reference.
fn scheme_of(location: &str) -> Option<(&str, &str)> {
    location.split_once("://").filter(|(scheme, _)| !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
}

/// RFC 3986's dot-segment removal on a path (the query, if any, is kept as it is).
fn remove_dot_segments(path_and_query: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    let mut path = out.join("/");
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    }
}

/// Redirects a probe follows before it gives up, as Go's client.
const MAX_REDIRECTS: usize = 10;
/// How much of a response body upstream keeps for its messages.
const MAX_BODY: usize = 10 * 1024;

/// The kubelet's HTTP(S) prober: a GET whose 2xx and 3xx answers pass. Redirects on the same
/// host name are followed (up to ten, to any port or scheme); one to another host is not, and
/// that 3xx passes with a warning carrying the body, as upstream's "Probe terminated redirects".
/// `Ok(Some(warning))` is such a pass.
async fn http_get(container: &Container, http: &HTTPGetAction, default_host: &str, timeout: Duration) -> Result<Option<String>, String> {
    let port = resolve_port(container, &http.port)?;
    let host = http.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| default_host.to_string());
    let https = http.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
    let path = http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
    let path = if path.starts_with('/') { path } else { format!("/{path}") };
    let first = Target { https, authority: join_host_port(&host, port), host, port, path };
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut host_header = None;
    for header in http.http_headers.iter().flatten() {
        if header.name.eq_ignore_ascii_case("host") {
            host_header = Some(header.value.clone());
        } else {
            headers.push((header.name.clone(), header.value.clone()));
        }
    }
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("user-agent")) {
        headers.push(("User-Agent".into(), "kube-probe/1.33".into()));
    }
    // An Accept header given empty means none at all; none given means */*.
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("accept")) {
        headers.push(("Accept".into(), "*/*".into()));
    }
    headers.retain(|(name, value)| !(name.eq_ignore_ascii_case("accept") && value.is_empty()));
    let walk = async {
        let mut target = first.clone();
        let mut host_header = host_header.filter(|h| *h != first.authority);
        let mut hops = 0;
        loop {
            let url = target.url();
            let response = send_get(&target, host_header.as_deref().unwrap_or(&target.authority), &headers).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
            let code = response.status().as_u16();
            if !(200..400).contains(&code) {
                return Err(format!("HTTP probe failed with statuscode: {code}"));
            }
            if code < 300 {
                return Ok(None);
            }
            let location = response.headers().get(hyper::header::LOCATION).map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned()).filter(|l| !l.is_empty());
            let next = match location.filter(|_| matches!(code, 301 | 302 | 303 | 307 | 308)) {
                Some(location) => Some((target.follow(&location).map_err(|e| format!("Get \"{url}\": {e}"))?, location)),
                None => None,
            };
            match next {
                Some((next, location)) if next.host == first.host => {
                    hops += 1;
                    if hops > MAX_REDIRECTS {
                        return Err(format!("Get \"{}\": stopped after {MAX_REDIRECTS} redirects", next.url()));
                    }
                    // A Host header survives only a relative redirect (Go's client).
                    if scheme_of(&location).is_some() || location.starts_with("//") {
                        host_header = None;
                    }
                    target = next;
                }
                _ => {
                    let body = read_body(response.into_body()).await;
                    return Ok(Some(format!("Probe terminated redirects, Response body: {body}")));
                }
            }
        }
    };
    match tokio::time::timeout(timeout, walk).await {
        Ok(result) => result,
        Err(_) => Err(format!("Get \"{}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)", first.url())),
    }
}

/// One GET on a fresh connection (the kubelet keeps none alive); the body is left unread.
async fn send_get(target: &Target, host_header: &str, headers: &[(String, String)]) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await.map_err(|e| format!("dial tcp {}: {e}", join_host_port(&target.host, target.port)))?;
    let mut request = hyper::Request::get(target.path.as_str()).header(hyper::header::HOST, host_header);
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.header(hyper::header::CONNECTION, "close").body(http_body_util::Empty::<bytes::Bytes>::new()).map_err(|e| e.to_string())?;
    let mut builder = hyper::client::conn::http1::Builder::new();
    builder.title_case_headers(true);
    if target.https {
        // SNI comes from the dialled host, not a Host header (as Go's client does); rustls,
        // like Go, sends none for an IP address.
        let name = ServerName::try_from(target.host.clone()).map_err(|e| e.to_string())?;
        let tls = tls_connector()?.connect(name, tcp).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = builder.handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await.map_err(|e| e.to_string())
    } else {
        let (mut sender, connection) = builder.handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await.map_err(|e| e.to_string())
    }
}

/// Up to [`MAX_BODY`] bytes of a body, as text; a longer body is cut, a broken one ends early.
async fn read_body(mut body: hyper::body::Incoming) -> String {
    use http_body_util::BodyExt;
    let mut kept = Vec::new();
    while kept.len() < MAX_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    kept.extend_from_slice(&data[..data.len().min(MAX_BODY - kept.len())]);
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// One client configuration for every HTTPS probe: building it loads the provider's algorithms,
/// which is wasted work at every probe period.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::join::AcceptAnyServerCert(provider)))
            .with_no_client_auth();
        // The request is written as HTTP/1.1, so that is all we may offer.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    });
    config.clone().map(tokio_rustls::TlsConnector::from)
}

/// grpc.health.v1.HealthCheckRequest, written by hand: two one-field messages do not warrant a
/// build script and protoc.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// grpc.health.v1.HealthCheckResponse; `status` is a `ServingStatus`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

pub(crate) const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
const SERVING: i32 = 1;

/// The enum's name as Go's generated `String()` prints it, which upstream's message quotes.
fn serving_status_name(status: i32) -> String {
    match status {
        0 => "UNKNOWN".into(),
        SERVING => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        other => other.to_string(),
    }
}

/// Go's rendering of a whole-second duration (`1s`, `1m30s`), as upstream's messages print it.
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

/// The kubelet's gRPC prober: grpc.health.v1.Health/Check over plain-text HTTP/2; only SERVING
/// succeeds. The messages are upstream's.
async fn grpc_check(host: &str, port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    let addr = join_host_port(host, port);
    let deadline = tokio::time::Instant::now() + timeout;
    let within = go_duration(timeout);
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .and_then(|e| e.user_agent("kube-probe/1.33"))
        .map_err(|e| format!("error: failed to connect service at {addr:?}: {e}"))?
        .connect_timeout(timeout);
    // Upstream dials with WithBlock and so retries a refused connection until the deadline; we
    // fail at once with the cause, which says more than "context deadline exceeded" would.
    let channel = match tokio::time::timeout_at(deadline, endpoint.connect()).await {
        Err(_) => return Err(format!("timeout: failed to connect service {addr:?} within {within}: context deadline exceeded")),
        Ok(Err(e)) => return Err(format!("error: failed to connect service at {addr:?}: {}", error_chain(&e))),
        Ok(Ok(channel)) => channel,
    };
    let mut client = tonic::client::Grpc::new(channel);
    let call = async {
        client.ready().await.map_err(|e| tonic::Status::unavailable(error_chain(&e)))?;
        let mut request = tonic::Request::new(HealthCheckRequest { service: service.to_string() });
        // Sent as grpc-timeout, as Go's client derives it from the context's deadline.
        request.set_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()));
        client.unary(request, PathAndQuery::from_static(HEALTH_CHECK_PATH), ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default()).await
    };
    let response = match tokio::time::timeout_at(deadline, call).await {
        Err(_) => return Err(format!("timeout: health rpc did not complete within {within}")),
        Ok(Err(status)) => {
            return Err(match status.code() {
                tonic::Code::Unimplemented => format!("error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}", status.message()),
                tonic::Code::DeadlineExceeded => format!("timeout: health rpc did not complete within {within}"),
                // tonic enforces the grpc-timeout we send and reports its expiry as Cancelled,
                // keeping only the message; Go reports its own deadline as DeadlineExceeded.
                tonic::Code::Cancelled if status.message() == tonic::TimeoutExpired(()).to_string() => format!("timeout: health rpc did not complete within {within}"),
                code => format!("error: health rpc probe failed: rpc error: code = {code:?} desc = {}", status.message()),
            });
        }
        Ok(Ok(response)) => response.into_inner(),
    };
    if response.status == SERVING { Ok(()) } else { Err(format!("service unhealthy (responded with {:?})", serving_status_name(response.status))) }
}

/// An error with its sources: tonic's transport errors alone say only "transport error".
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use k8s_openapi::api::core::v1::HTTPHeader;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tonic::codegen::{BoxFuture, Service, http};

    use super::*;

    fn container() -> Container {
        Container { name: "app".into(), ..Default::default() }
    }

    fn https_get(host: Option<&str>, port: u16, path: &str, headers: &[(&str, &str)]) -> HTTPGetAction {
        HTTPGetAction {
            host: host.map(String::from),
            port: IntOrString::Int(port.into()),
            path: Some(path.into()),
            scheme: Some("HTTPS".into()),
            http_headers: Some(headers.iter().map(|(name, value)| HTTPHeader { name: name.to_string(), value: value.to_string() }).collect()),
        }
    }

    /// What the TLS server saw of one request: the SNI name and the request head.
    type Seen = Arc<Mutex<Vec<(Option<String>, String)>>>;

    /// A request's head, up to the blank line; `None` if the client went away first.
    async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        Some(String::from_utf8_lossy(&head).into_owned())
    }

    /// A TLS server on 127.0.0.1 with a self-signed certificate (which the prober must accept):
    /// `/fail` answers 500, `/moved` 302, anything else 200.
    async fn tls_server() -> (u16, Seen) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let seen = Seen::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, record) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let sni = tls.get_ref().1.server_name().map(String::from);
                    let Some(head) = read_head(&mut tls).await else { return };
                    let status = match head.split_whitespace().nth(1) {
                        Some("/fail") => "500 Internal Server Error",
                        Some("/moved") => "302 Found\r\nLocation: /elsewhere",
                        _ => "200 OK",
                    };
                    record.lock().expect("lock").push((sni, head));
                    let _ = tls.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (port, seen)
    }

    #[tokio::test]
    async fn https_probes_skip_verification_and_follow_the_status_code_rules() {
        let (port, seen) = tls_server().await;
        let timeout = Duration::from_secs(5);
        http_get(&container(), &https_get(None, port, "/healthz", &[]), "127.0.0.1", timeout).await.expect("a 200 over TLS succeeds");
        {
            let seen = seen.lock().expect("lock");
            let (sni, head) = &seen[0];
            assert_eq!(sni, &None, "no SNI for an IP address");
            assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
            assert!(head.contains(&format!("Host: 127.0.0.1:{port}\r\n")), "{head}");
            assert!(head.contains("User-Agent: kube-probe/1.33\r\n"), "{head}");
        }
        let error = http_get(&container(), &https_get(None, port, "/fail", &[]), "127.0.0.1", timeout).await.expect_err("a 500 fails");
        assert_eq!(error, "HTTP probe failed with statuscode: 500");
        let moved = http_get(&container(), &https_get(None, port, "/moved", &[]), "127.0.0.1", timeout).await.expect("a redirect on the same host is followed");
        assert_eq!(moved, None);
        assert!(seen.lock().expect("lock").last().expect("a request").1.starts_with("GET /elsewhere HTTP/1.1\r\n"));

        // The probe's host gives the SNI name; a Host header replaces only the header.
        http_get(&container(), &https_get(Some("localhost"), port, "/", &[("Host", "example.test"), ("X-Probe", "1")]), "10.255.255.1", timeout).await.expect("by name");
        {
            let seen = seen.lock().expect("lock");
            let (sni, head) = seen.last().expect("a request");
            assert_eq!(sni.as_deref(), Some("localhost"));
            assert!(head.contains("Host: example.test\r\n") && !head.contains("Host: localhost"), "{head}");
            assert!(head.contains("X-Probe: 1\r\n"), "{head}");
        }

        // A plain HTTP server is not an HTTPS one.
        let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let plain_port = plain.local_addr().expect("address").port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = plain.accept().await {
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
            }
        });
        let error = http_get(&container(), &https_get(None, plain_port, "/", &[]), "127.0.0.1", timeout).await.expect_err("no TLS");
        assert!(error.starts_with(&format!("Get \"https://127.0.0.1:{plain_port}/\": ")), "{error}");
        // And the plain server still passes an HTTP probe (the scheme is the only difference).
        let mut plain_get = https_get(None, plain_port, "/", &[]);
        plain_get.scheme = Some("HTTP".into());
        http_get(&container(), &plain_get, "127.0.0.1", timeout).await.expect("plain HTTP");
    }

    /// A plain HTTP server on 127.0.0.1 that answers each request line's path from `routes`
    /// (path, status line and extra headers, body); it records each request head.
    async fn http_server(routes: &'static [(&'static str, &'static str, &'static str)]) -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut tcp).await else { return };
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    record.lock().expect("lock").push(head);
                    let (status, body) = routes.iter().find(|(p, _, _)| *p == path).map(|(_, status, body)| (*status, *body)).unwrap_or(("404 Not Found", ""));
                    let status = status.replace("PORT", &port.to_string());
                    let _ = tcp.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).await;
                    let _ = tcp.shutdown().await;
                });
            }
        });
        (port, seen)
    }

    fn http_get_action(path: &str, port: u16, headers: &[(&str, &str)]) -> HTTPGetAction {
        HTTPGetAction { scheme: Some("HTTP".into()), ..https_get(None, port, path, headers) }
    }

    #[tokio::test]
    async fn http_probes_follow_redirects_on_the_same_host_only() {
        static ROUTES: &[(&str, &str, &str)] = &[
            ("/start", "302 Found\r\nLocation: next/../hop", ""),
            ("/hop", "301 Moved Permanently\r\nLocation: http://127.0.0.1:PORT/ok?x=1#frag", ""),
            ("/ok?x=1", "200 OK", "fine"),
            ("/away", "302 Found\r\nLocation: http://localhost:PORT/ok?x=1", "gone away"),
            ("/nowhere", "302 Found", "no location"),
            ("/loop", "307 Temporary Redirect\r\nLocation: /loop", ""),
            ("/broken", "302 Found\r\nLocation: /fail", ""),
            ("/fail", "503 Service Unavailable", ""),
            ("/absolute", "302 Found\r\nLocation: //127.0.0.1:PORT/ok?x=1", ""),
        ];
        let (port, seen) = http_server(ROUTES).await;
        let timeout = Duration::from_secs(5);
        let probe = |path: &str, headers: &[(&str, &str)]| http_get_action(path, port, headers);

        // A relative redirect keeps a Host header; an absolute one goes to the new URL's host.
        let result = http_get(&container(), &probe("/start", &[("Host", "app.test"), ("X-Probe", "1")]), "127.0.0.1", timeout).await;
        assert_eq!(result, Ok(None));
        let heads: Vec<String> = std::mem::take(&mut *seen.lock().expect("lock"));
        let lines: Vec<&str> = heads.iter().map(|h| h.lines().next().unwrap_or("")).collect();
        assert_eq!(lines, ["GET /start HTTP/1.1", "GET /hop HTTP/1.1", "GET /ok?x=1 HTTP/1.1"]);
        assert!(heads[1].contains("Host: app.test\r\n") && heads[1].contains("X-Probe: 1\r\n"), "{}", heads[1]);
        assert!(heads[2].contains(&format!("Host: 127.0.0.1:{port}\r\n")) && heads[2].contains("X-Probe: 1\r\n"), "{}", heads[2]);
        assert!(heads[2].contains("User-Agent: kube-probe/1.33\r\n") && heads[2].contains("Accept: */*\r\n"), "{}", heads[2]);

        let result = http_get(&container(), &probe("/absolute", &[]), "127.0.0.1", timeout).await;
        assert_eq!(result, Ok(None), "a scheme-relative redirect on the same host");

        // Another host name (even for the same address) is not followed: a pass with a warning.
        let result = http_get(&container(), &probe("/away", &[]), "127.0.0.1", timeout).await;
        assert_eq!(result, Ok(Some("Probe terminated redirects, Response body: gone away".to_string())));
        let result = http_get(&container(), &probe("/nowhere", &[]), "127.0.0.1", timeout).await;
        assert_eq!(result, Ok(Some("Probe terminated redirects, Response body: no location".to_string())));

        // The final answer decides, and a loop ends after ten redirects.
        let result = http_get(&container(), &probe("/broken", &[]), "127.0.0.1", timeout).await;
        assert_eq!(result, Err("HTTP probe failed with statuscode: 503".to_string()));
        seen.lock().expect("lock").clear();
        let result = http_get(&container(), &probe("/loop", &[]), "127.0.0.1", timeout).await;
        assert_eq!(result, Err(format!("Get \"http://127.0.0.1:{port}/loop\": stopped after 10 redirects")));
        assert_eq!(seen.lock().expect("lock").len(), 11, "the first request and ten redirects");

        // An Accept header given empty is left out.
        seen.lock().expect("lock").clear();
        http_get(&container(), &probe("/ok?x=1", &[("Accept", "")]), "127.0.0.1", timeout).await.expect("200");
        assert!(!seen.lock().expect("lock")[0].contains("Accept"), "no Accept header");
    }

    #[test]
    fn redirect_locations_resolve_as_urls_do() {
        let base = Target { https: false, host: "10.0.0.1".into(), port: 8080, authority: "10.0.0.1:8080".into(), path: "/a/b/c?q=1".into() };
        let url = |location: &str| base.follow(location).map(|t| t.url());
        assert_eq!(url("d").as_deref(), Ok("http://10.0.0.1:8080/a/b/d"));
        assert_eq!(url("../d").as_deref(), Ok("http://10.0.0.1:8080/a/d"));
        assert_eq!(url("./").as_deref(), Ok("http://10.0.0.1:8080/a/b/"));
        assert_eq!(url("/x/./y/../z?k=v#f").as_deref(), Ok("http://10.0.0.1:8080/x/z?k=v"));
        assert_eq!(url("?k=v").as_deref(), Ok("http://10.0.0.1:8080/a/b/c?k=v"));
        assert_eq!(url("//other:81/p").as_deref(), Ok("http://other:81/p"));
        assert_eq!(url("HTTPS://[::1]/p").as_deref(), Ok("https://[::1]/p"));
        let v6 = base.follow("https://[::1]/p").expect("IPv6");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 443));
        assert_eq!(base.follow("http://host").map(|t| t.path).as_deref(), Ok("/"));
        assert_eq!(url("ftp://host/file"), Err("unsupported protocol scheme \"ftp\"".to_string()));
        assert!(url("http://bad host/").is_err_and(|e| e.starts_with("failed to parse Location header")));
        assert_eq!(remove_dot_segments("/../../x"), "/x");
    }

    /// grpc.health.v1.Health written by hand: SERVING for "", NOT_SERVING for "sick", NotFound
    /// (as grpc-go's health server answers) for anything else.
    #[derive(Clone)]
    struct Health;

    impl tonic::server::NamedService for Health {
        const NAME: &'static str = "grpc.health.v1.Health";
    }

    struct Check;

    impl tonic::server::UnaryService<HealthCheckRequest> for Check {
        type Response = HealthCheckResponse;
        type Future = BoxFuture<tonic::Response<HealthCheckResponse>, tonic::Status>;
        fn call(&mut self, request: tonic::Request<HealthCheckRequest>) -> Self::Future {
            let status = match request.into_inner().service.as_str() {
                "" => Ok(SERVING),
                "sick" => Ok(2),
                _ => Err(tonic::Status::not_found("unknown service")),
            };
            Box::pin(async move { status.map(|status| tonic::Response::new(HealthCheckResponse { status })) })
        }
    }

    impl Service<http::Request<tonic::body::Body>> for Health {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;
        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
            Box::pin(async move {
                if request.uri().path() == HEALTH_CHECK_PATH {
                    Ok(tonic::server::Grpc::new(ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default()).unary(Check, request).await)
                } else {
                    Ok(tonic::Status::unimplemented("").into_http())
                }
            })
        }
    }

    /// A gRPC server with some other service only: the router answers Unimplemented.
    #[derive(Clone)]
    struct Other(Health);

    impl tonic::server::NamedService for Other {
        const NAME: &'static str = "example.Other";
    }

    impl Service<http::Request<tonic::body::Body>> for Other {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;
        fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
            self.0.poll_ready(cx)
        }
        fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
            self.0.call(request)
        }
    }

    #[tokio::test]
    async fn grpc_probes_call_the_health_service() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(tonic::transport::Server::builder().add_service(Health).serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
        let timeout = Duration::from_secs(5);
        grpc_check("127.0.0.1", port, "", timeout).await.expect("SERVING succeeds");
        assert_eq!(grpc_check("127.0.0.1", port, "sick", timeout).await, Err("service unhealthy (responded with \"NOT_SERVING\")".into()));
        let error = grpc_check("127.0.0.1", port, "other", timeout).await.expect_err("unknown service");
        assert_eq!(error, "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service");

        let other = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let other_port = other.local_addr().expect("address").port();
        tokio::spawn(tonic::transport::Server::builder().add_service(Other(Health)).serve_with_incoming(tonic::transport::server::TcpIncoming::from(other)));
        let error = grpc_check("127.0.0.1", other_port, "", timeout).await.expect_err("no health service");
        assert!(error.starts_with("error: this server does not implement the grpc health protocol (grpc.health.v1.Health): "), "{error}");

        // Nothing listening: a failure, not a hang.
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let closed_port = closed.local_addr().expect("address").port();
        drop(closed);
        let error = grpc_check("127.0.0.1", closed_port, "", timeout).await.expect_err("refused");
        assert!(error.starts_with(&format!("error: failed to connect service at \"127.0.0.1:{closed_port}\": ")), "{error}");

        // A server that is not a gRPC health server, and one that never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let silent_port = silent.local_addr().expect("address").port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = silent.accept().await {
                held.push(tcp);
            }
        });
        let error = grpc_check("127.0.0.1", silent_port, "", Duration::from_secs(1)).await.expect_err("silent");
        assert!(error.starts_with("timeout: "), "{error}");
        assert!(error.contains("within 1s"), "{error}");
    }

    #[test]
    fn go_durations_and_host_ports_print_as_upstream() {
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(join_host_port("fd00::5", 8080), "[fd00::5]:8080");
        assert_eq!(join_host_port("10.0.0.5", 8080), "10.0.0.5:8080");
    }
}
