//! Connections from the API server to nodes' agents (the kubelet API: `/containerLogs`, later
//! `/exec`, `/attach`, `/portForward`).
//!
//! Where a node's agent listens comes from its Node object ([`kubelet_endpoint`]). Each request
//! gets its own HTTP/1.1 connection over TLS ([`NodeClient::connect`] gives the bare stream, which
//! the upgrade-based subresources will take over; [`NodeClient::get`] sends one GET on it), because
//! these requests are long-lived streams that would only block one another on a shared
//! connection. The connection lives as long as the response body: dropping the relayed body (the
//! client went away) closes it, so the agent stops following.
//!
//! Security: the API server authenticates itself to agents with the `kubelet-client` certificate
//! of [`crate::tls::Pki`] (signed by the cluster CA). It does NOT verify the agent's serving
//! certificate, as kube-apiserver does not unless given `--kubelet-certificate-authority`: nodes'
//! serving certificates are not issued by the cluster yet. The handshake still checks that the
//! peer holds the key of the certificate it shows, so only an attacker on the path can
//! impersonate a node. Hardening this (issuing node serving certificates from the CA and verifying
//! them against the node's addresses) belongs to the security work.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::http::Body;
use crate::status::ApiError;
use crate::tls::TlsError;

/// The agent port when a Node does not report one (the kubelet's default).
pub const DEFAULT_KUBELET_PORT: u16 = 10250;
/// Go's dialer default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Agents answer with headers at once, even when following; a node that does not is broken.
const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of an error body is read (upstream's GenericHttpResponseChecker limit).
const MAX_ERROR_BODY: usize = 50_000;
/// Which node address the API server connects to, in order (k3s's
/// `--kubelet-preferred-address-types`); a node with none of them is reached at its first address.
const PREFERRED_ADDRESS_TYPES: [&str; 3] = ["InternalIP", "ExternalIP", "Hostname"];

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("dial tcp {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("dial tcp {addr}: i/o timeout")]
    ConnectTimeout { addr: String },
    #[error("tls: {0}")]
    Tls(std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("net/http: timeout awaiting response headers")]
    HeaderTimeout,
    #[error("{0}")]
    Request(#[from] http::Error),
}

/// Where an agent request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLocation {
    pub host: String,
    pub port: u16,
    /// Path with its query, already escaped.
    pub path_and_query: String,
}

impl NodeLocation {
    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') { format!("[{}]:{}", self.host, self.port) } else { format!("{}:{}", self.host, self.port) }
    }

    pub fn url(&self) -> String {
        format!("https://{}{}", self.authority(), self.path_and_query)
    }
}

/// Where the agent of `node` (a Node object) listens: its preferred address and the port it
/// reports in `status.daemonEndpoints.kubeletEndpoint` (upstream's NodeConnectionInfoGetter).
pub fn kubelet_endpoint(node: &Value) -> Result<(String, u16), ApiError> {
    let addresses: Vec<(&str, &str)> = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a.get("type")?.as_str()?, a.get("address")?.as_str()?)))
        .filter(|(_, address)| !address.is_empty())
        .collect();
    let host = PREFERRED_ADDRESS_TYPES
        .iter()
        .find_map(|wanted| addresses.iter().find(|(t, _)| t == wanted))
        .or_else(|| addresses.first())
        .map(|(_, address)| address.to_string());
    let Some(host) = host else {
        let known = node.pointer("/status/addresses").map(Value::to_string).unwrap_or_else(|| "[]".into());
        return Err(unknown_error(500, format!("no preferred addresses found; known addresses: {known}")));
    };
    let port = node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(Value::as_i64).unwrap_or(0);
    let port = u16::try_from(port).ok().filter(|p| *p > 0).unwrap_or(DEFAULT_KUBELET_PORT);
    Ok((host, port))
}

/// An error the way kube-apiserver reports a plain Go error (a failed dial, say): reason
/// Unknown, the error's text as the message.
pub fn unknown_error(code: u16, message: String) -> ApiError {
    ApiError { code, reason: "", message, details: None, retry_after: None }
}

/// A failed request to `location`, worded as Go's http.Client words it.
pub fn request_error(location: &NodeLocation, error: &NodeError) -> ApiError {
    unknown_error(500, format!("Get \"{}\": {error}", location.url()))
}

/// An agent's non-2xx answer as upstream's GenericHttpResponseChecker turns it into a Status:
/// 400 and 500 keep the agent's text as the message; other codes get the generic wording for
/// the code, naming the subresource and object (`the server could not find the requested
/// resource ( pods/log web)`).
pub fn error_from_node(code: u16, resource: &str, name: &str, body: &str) -> ApiError {
    match code {
        500 => return ApiError::internal(body),
        400 => return ApiError::bad_request(body),
        _ => {}
    }
    let (reason, message): (&'static str, String) = match code {
        409 => ("Conflict", "the server reported a conflict".into()),
        404 => ("NotFound", "the server could not find the requested resource".into()),
        401 => ("Unauthorized", "the server has asked for the client to provide credentials".into()),
        403 => ("Forbidden", body.to_string()),
        406 => ("NotAcceptable", if body.is_empty() || body == "unknown" { "the server was unable to respond with a content type that the client supports".into() } else { body.to_string() }),
        415 => ("UnsupportedMediaType", body.to_string()),
        405 => ("MethodNotAllowed", "the server does not allow this method on the requested resource".into()),
        422 => ("Invalid", "the server rejected our request due to an error in our request".into()),
        503 => ("ServiceUnavailable", "the server is currently unable to handle the request".into()),
        504 => ("Timeout", "the server was unable to return a response in the time allotted, but may still be processing the request".into()),
        429 => ("TooManyRequests", "the server has received too many requests and has asked us to try again later".into()),
        c if c >= 500 => ("InternalError", format!("an error on the server ({body:?}) has prevented the request from succeeding")),
        c => ("", format!("the server responded with the status code {c} but did not return more information")),
    };
    // Upstream formats "(verb resource name)" with an empty verb, hence the leading space.
    ApiError {
        code,
        reason,
        message: format!("{message} ( {resource} {name})"),
        details: Some(json!({"name": name, "kind": resource})),
        retry_after: None,
    }
}

/// Makes connections to agents, authenticated by the API server's client certificate.
pub struct NodeClient {
    connector: TlsConnector,
}

impl NodeClient {
    /// `cert_pem` and `key_pem` are the API server's client certificate for agents (the Pki's
    /// `kubelet-client` pair).
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let pem_err = |what: &str, e: rustls::pki_types::pem::Error| TlsError::Pem { path: what.into(), message: e.to_string() };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| pem_err(crate::tls::KUBELET_CLIENT_CERT, e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| pem_err(crate::tls::KUBELET_CLIENT_KEY, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCertificate { provider }))
            .with_client_auth_cert(certs, key)?;
        // HTTP/1.1 only: exec, attach and port-forward upgrade the connection, which HTTP/2 cannot.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { connector: TlsConnector::from(Arc::new(config)) })
    }

    /// A TLS connection to an agent.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TlsStream<TcpStream>, NodeError> {
        let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port))).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(source)) => return Err(NodeError::Connect { addr, source }),
            Err(_) => return Err(NodeError::ConnectTimeout { addr }),
        };
        let _ = tcp.set_nodelay(true);
        // The name only feeds SNI: the certificate is not checked against it (see the module docs).
        let name = ServerName::try_from(host.to_string()).unwrap_or_else(|_| ServerName::try_from("node").expect("a valid DNS name"));
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => Err(NodeError::Tls(e)),
            Err(_) => Err(NodeError::Tls(std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timeout"))),
        }
    }

    /// Sends `GET location` on a new connection; the connection lives as long as the response.
    pub async fn get(&self, location: &NodeLocation) -> Result<NodeResponse, NodeError> {
        let tls = self.connect(&location.host, location.port).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let connection = AbortOnDrop(tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "agent connection ended with an error");
            }
        }));
        let request = Request::get(location.path_and_query.as_str())
            .header(header::HOST, location.authority())
            .header(header::USER_AGENT, concat!("berth-apiserver/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())?;
        let response = match tokio::time::timeout(RESPONSE_HEADER_TIMEOUT, sender.send_request(request)).await {
            Ok(r) => r?,
            Err(_) => return Err(NodeError::HeaderTimeout),
        };
        Ok(NodeResponse { response, connection })
    }
}

/// An agent's answer, holding its connection open.
pub struct NodeResponse {
    pub response: Response<Incoming>,
    connection: AbortOnDrop,
}

impl NodeResponse {
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// The first bytes of the body (an error text), lossily decoded.
    pub async fn error_text(self) -> String {
        let mut body = self.response.into_body();
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
        let _ = tokio::time::timeout(RESPONSE_HEADER_TIMEOUT, read).await;
        text.truncate(MAX_ERROR_BODY);
        String::from_utf8_lossy(&text).into_owned()
    }

    /// The body as ours, passed on frame by frame as it arrives (a followed log reaches the
    /// client line by line). A failure mid-way ends the body early, as upstream's copy does.
    pub fn relay(self) -> Body {
        let NodeResponse { response, connection } = self;
        let state = (response.into_body(), connection);
        let frames = futures_util::stream::unfold(state, |(mut body, connection)| async move {
            loop {
                match body.frame().await {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) if data.is_empty() => continue,
                        Ok(data) => return Some((Ok::<_, Infallible>(Frame::data(data)), (body, connection))),
                        Err(_trailers) => continue,
                    },
                    Some(Err(error)) => {
                        tracing::debug!(%error, "agent response ended with an error");
                        return None;
                    }
                    None => return None,
                }
            }
        });
        StreamBody::new(frames).boxed_unsync()
    }
}

/// Ends the connection task when the response (and so the relayed body) is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts any server certificate, but still checks the handshake signatures, so the peer must
/// hold the key of the certificate it presents. See the module docs for why.
#[derive(Debug)]
struct AnyServerCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(&self, _end_entity: &CertificateDer<'_>, _intermediates: &[CertificateDer<'_>], _server_name: &ServerName<'_>, _ocsp_response: &[u8], _now: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_prefers_internal_ip_and_the_reported_port() {
        let node = json!({"status": {
            "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "ExternalIP", "address": "203.0.113.5"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 11250}},
        }});
        assert_eq!(kubelet_endpoint(&node).unwrap(), ("10.0.0.5".to_string(), 11250));
        let node = json!({"status": {"addresses": [{"type": "InternalDNS", "address": "n1.local"}]}});
        assert_eq!(kubelet_endpoint(&node).unwrap(), ("n1.local".to_string(), DEFAULT_KUBELET_PORT));
        let err = kubelet_endpoint(&json!({"status": {}})).unwrap_err();
        assert_eq!(err.message, "no preferred addresses found; known addresses: []");
    }

    #[test]
    fn node_errors_read_as_upstream() {
        let err = error_from_node(404, "pods/log", "web", "pod not found");
        assert_eq!((err.code, err.reason, err.message.as_str()), (404, "NotFound", "the server could not find the requested resource ( pods/log web)"));
        let err = error_from_node(400, "pods/log", "web", "container \"c\" in pod \"web\" is waiting to start: ContainerCreating");
        assert_eq!((err.code, err.reason), (400, "BadRequest"));
        assert_eq!(err.message, "container \"c\" in pod \"web\" is waiting to start: ContainerCreating");
        assert_eq!(error_from_node(500, "pods/log", "web", "boom").message, "Internal error occurred: boom");
        assert_eq!(error_from_node(502, "pods/log", "web", "x").reason, "InternalError");
        let location = NodeLocation { host: "::1".into(), port: 1, path_and_query: "/containerLogs/a/b/c".into() };
        assert_eq!(location.url(), "https://[::1]:1/containerLogs/a/b/c");
    }

    /// A TLS endpoint that, like an agent, requires a client certificate from the cluster CA; the
    /// client presents the Pki's kubelet-client certificate and accepts the endpoint's own.
    #[tokio::test]
    async fn get_presents_the_kubelet_client_certificate() {
        let dir = std::env::temp_dir().join(format!("berth-node-proxy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pki = crate::tls::Pki::load_or_create(&dir, &["127.0.0.1".to_string()]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pki.server_cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap().with_client_cert_verifier(verifier).with_single_cert(certs, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            let user = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| crate::tls::identity_from_cert(c)).unwrap();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let text = format!("{} {} {:?}\n", req.uri(), user.user, user.groups);
                async move { Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(text)))) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
        });
        let client = NodeClient::new(&pki.kubelet_client_cert_pem, &pki.kubelet_client_key_pem).unwrap();
        let location = NodeLocation { host: "127.0.0.1".into(), port, path_and_query: "/containerLogs/ns/pod/c?follow=true".into() };
        let response = client.get(&location).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.relay().collect().await.unwrap().to_bytes();
        assert_eq!(body, Bytes::from("/containerLogs/ns/pod/c?follow=true kube-apiserver-kubelet-client [\"system:masters\"]\n"));

        // Nothing listens on a just-closed port: the error reads as Go's.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let location = NodeLocation { host: "127.0.0.1".into(), port: closed, path_and_query: "/x".into() };
        let err = client.get(&location).await.err().unwrap();
        assert!(request_error(&location, &err).message.starts_with(&format!("Get \"https://127.0.0.1:{closed}/x\": dial tcp 127.0.0.1:{closed}: ")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
