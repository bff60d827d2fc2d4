//! exec, attach and port-forward: the kubelet's `/exec/{ns}/{pod}/{container}`,
//! `/attach/{ns}/{pod}/{container}` and `/portForward/{ns}/{pod}`.
//!
//! The API server arrives with a SPDY/3.1 upgrade request (it turns WebSocket clients into SPDY
//! itself). The agent asks the runtime for a streaming URL (CRI Exec, Attach, PortForward),
//! sends the same upgrade request there, and once the runtime's streaming server switched
//! protocols answers 101 with its headers and relays the bytes both ways. Like the kubelet with
//! its streaming proxy, the runtime's streaming server stays on 127.0.0.1 and only the agent's
//! authenticated endpoint is reachable from outside.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kube::ResourceExt;

use crate::cri::api;
use crate::pods::Context;
use crate::runtime_state;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// How long the runtime may take to answer the upgrade.
const RUNTIME_TIMEOUT: Duration = Duration::from_secs(30);
/// Request headers passed on to the runtime: those of the upgrade and its negotiation.
const FORWARDED: [&str; 6] = ["connection", "upgrade", "x-stream-protocol-version", "sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Exec,
    Attach,
    PortForward,
}

/// Whether `path` is one of ours.
pub fn handles(path: &str) -> bool {
    ["/exec/", "/attach/", "/portForward/"].iter().any(|prefix| path.starts_with(prefix))
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message.into())).map_err(|never: Infallible| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The options in the query, as the kubelet reads them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    ports: Vec<i32>,
}

impl Options {
    fn parse(query: &str) -> Result<Self, String> {
        let mut opts = Options::default();
        let flag = |v: &str| v == "1" || v.eq_ignore_ascii_case("true");
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = unescape(value, true);
            match unescape(key, true).as_str() {
                "command" => opts.command.push(value),
                "input" => opts.stdin = flag(&value),
                "output" => opts.stdout = flag(&value),
                "error" => opts.stderr = flag(&value),
                "tty" => opts.tty = flag(&value),
                "port" => opts.ports.push(value.parse::<u16>().map_err(|_| format!("invalid port {value:?}"))?.into()),
                _ => {}
            }
        }
        // A terminal joins stderr to stdout.
        if opts.tty {
            opts.stderr = false;
        }
        Ok(opts)
    }
}

/// Percent-decoding (and `+` as space in a query), lossy for bad UTF-8.
fn unescape(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header_has(headers: &HeaderMap, name: &str, wanted: &str) -> bool {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|v| v.trim().eq_ignore_ascii_case(wanted))
}

pub async fn serve(ctx: &Context, mut request: Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let path = request.uri().path().to_string();
    let parts: Vec<String> = path.trim_start_matches('/').split('/').map(|p| unescape(p, false)).collect();
    let (kind, namespace, pod_name, container) = match parts.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["exec", ns, pod, container] => (Kind::Exec, ns.to_string(), pod.to_string(), container.to_string()),
        ["attach", ns, pod, container] => (Kind::Attach, ns.to_string(), pod.to_string(), container.to_string()),
        ["portForward", ns, pod] => (Kind::PortForward, ns.to_string(), pod.to_string(), String::new()),
        _ => return text(StatusCode::NOT_FOUND, format!("404 page not found: {path}")),
    };
    let options = match Options::parse(request.uri().query().unwrap_or("")) {
        Ok(options) => options,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    if !header_has(request.headers(), "connection", "upgrade") || request.headers().get(header::UPGRADE).is_none() {
        return text(StatusCode::BAD_REQUEST, "Upgrade request required");
    }
    if kind == Kind::Exec && options.command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "you must specify at least 1 command");
    }
    if kind != Kind::PortForward && !(options.stdin || options.stdout || options.stderr) {
        return text(StatusCode::BAD_REQUEST, "you must specify at least 1 of stdin, stdout, stderr");
    }

    let pod = ctx.pods.lock().unwrap_or_else(|e| e.into_inner()).values().find(|p| p.namespace().as_deref() == Some(namespace.as_str()) && p.name_any() == pod_name).cloned();
    let Some(pod) = pod else {
        return text(StatusCode::NOT_FOUND, format!("pod \"{pod_name}\" in namespace \"{namespace}\" is not known to this node"));
    };
    let runtime = match runtime_state::inspect_pod(&ctx.cri, &pod.uid().unwrap_or_default()).await {
        Ok(runtime) => runtime,
        Err(error) => return text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    };
    let mut cri = ctx.cri.runtime.clone();
    let url = match kind {
        Kind::Exec | Kind::Attach => {
            let Some(instance) = runtime.latest(&container).filter(|c| c.is_running()) else {
                return text(StatusCode::BAD_REQUEST, format!("container {container} is not running in pod {pod_name}"));
            };
            let id = instance.id.clone();
            let answer = if kind == Kind::Exec {
                cri.exec(api::ExecRequest { container_id: id, cmd: options.command.clone(), tty: options.tty, stdin: options.stdin, stdout: options.stdout, stderr: options.stderr }).await.map(|r| r.into_inner().url)
            } else {
                cri.attach(api::AttachRequest { container_id: id, stdin: options.stdin, tty: options.tty, stdout: options.stdout, stderr: options.stderr }).await.map(|r| r.into_inner().url)
            };
            match answer {
                Ok(url) => url,
                Err(status) => return text(StatusCode::INTERNAL_SERVER_ERROR, status.message().to_string()),
            }
        }
        Kind::PortForward => {
            let Some(sandbox) = runtime.current_sandbox().filter(|s| s.ready) else {
                return text(StatusCode::BAD_REQUEST, format!("pod {pod_name} has no running sandbox"));
            };
            match cri.port_forward(api::PortForwardRequest { pod_sandbox_id: sandbox.id.clone(), port: options.ports.clone() }).await {
                Ok(response) => response.into_inner().url,
                Err(status) => return text(StatusCode::INTERNAL_SERVER_ERROR, status.message().to_string()),
            }
        }
    };

    let client_upgrade = hyper::upgrade::on(&mut request);
    let (runtime_response, runtime_io) = match connect_runtime(&url, request.method().clone(), request.headers()).await {
        Ok(connected) => connected,
        Err(response) => return response,
    };
    let mut response = text(StatusCode::SWITCHING_PROTOCOLS, "");
    response.headers_mut().clear();
    for (name, value) in runtime_response.iter() {
        response.headers_mut().append(name, value.clone());
    }
    tokio::spawn(async move {
        let Ok(client) = client_upgrade.await else { return };
        let mut client = TokioIo::new(client);
        let mut runtime = TokioIo::new(runtime_io);
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut runtime).await {
            tracing::debug!(%error, "streaming session ended with an error");
        }
    });
    response
}

/// Sends the upgrade request to the runtime's streaming server; the headers of its 101 and the
/// upgraded connection, or the answer to give when it refused.
async fn connect_runtime(url: &str, method: Method, incoming: &HeaderMap) -> Result<(HeaderMap, hyper::upgrade::Upgraded), Response<Body>> {
    let failed = |message: String| text(StatusCode::INTERNAL_SERVER_ERROR, message);
    let uri: hyper::Uri = url.parse().map_err(|e| failed(format!("runtime streaming URL {url:?}: {e}")))?;
    let (Some(host), Some("http")) = (uri.host(), uri.scheme_str()) else {
        return Err(failed(format!("runtime streaming URL {url:?} is not plain http")));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let path = uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into());
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| failed(format!("dial tcp {authority}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| failed(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "runtime streaming connection ended with an error");
            }
        });
        let mut request = Request::builder().method(method).uri(path).header(header::HOST, authority.as_str());
        for name in FORWARDED {
            for value in incoming.get_all(name) {
                request = request.header(name, value.clone());
            }
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|e| failed(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| failed(e.to_string()))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(text(status, String::from_utf8_lossy(&body).trim().to_string()));
        }
        let headers = response.headers().clone();
        let io = hyper::upgrade::on(response).await.map_err(|e| failed(e.to_string()))?;
        Ok((headers, io))
    };
    match tokio::time::timeout(RUNTIME_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(failed(format!("timed out waiting for the runtime's streaming server at {authority}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_as_the_kubelet_reads_them() {
        let o = Options::parse("command=sh&command=-c&command=echo+hi&input=1&output=1&error=1&tty=1").unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdin && o.stdout && o.tty);
        assert!(!o.stderr, "a terminal has no separate stderr");
        assert_eq!(Options::parse("port=80&port=8080").unwrap().ports, [80, 8080]);
        assert!(Options::parse("port=x").is_err());
        assert_eq!(unescape("a%2Fb+c%zz%4", true), "a/b c%zz%4");
        assert_eq!(unescape("a+b", false), "a+b");
        assert!(handles("/exec/a/b/c") && handles("/portForward/a/b") && !handles("/containerLogs/a/b/c"));
    }
}
