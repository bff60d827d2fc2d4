//! The agent's HTTPS endpoint (the kubelet's port 10250): the API server proxies
//! `kubectl logs` here and reads resource usage for metrics.k8s.io (`/stats/resource`, JSON
//! described in [`crate::stats`]). Only clients with a certificate from the cluster CA are served (the API
//! server presents its kubelet-client certificate); the serving certificate is the agent's own,
//! self-signed, which the API server does not verify yet, as upstream without
//! `--kubelet-certificate-authority`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::ResourceExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::cri::api;
use crate::logs::{self, LogQuery, QueryError};
use crate::pods::Context;
use crate::runtime_state;
use crate::{AgentConfig, AgentError};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

pub struct ServerHandle {
    pub port: u16,
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message.into())).map_err(|never: Infallible| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn tls_config(config: &AgentConfig) -> Result<rustls::ServerConfig, AgentError> {
    let err = |e: String| AgentError::Server(e);
    let mut sans = vec![config.node_name.clone(), "localhost".to_string()];
    sans.push(config.node_ip.clone());
    let key = rcgen::KeyPair::generate().map_err(|e| err(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(sans).map_err(|e| err(e.to_string()))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("{}@berth-agent", config.node_name));
    let cert = params.self_signed(&key).map_err(|e| err(e.to_string()))?;
    let chain = vec![cert.der().clone()];
    let key_der = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).map_err(|e| err(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| err(e.to_string()))?;
    let builder = match &config.client_ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert.map_err(|e| err(e.to_string()))?).map_err(|e| err(e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().map_err(|e| err(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => {
            tracing::warn!("no client CA given: the agent's endpoint serves any client");
            builder.with_no_client_auth()
        }
    };
    let mut tls = builder.with_single_cert(chain, key_der).map_err(|e| err(e.to_string()))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Binds the endpoint and serves it in the background.
pub async fn serve(ctx: Arc<Context>, config: &AgentConfig) -> Result<ServerHandle, AgentError> {
    let address: SocketAddr = format!("{}:{}", if config.node_ip.contains(':') { format!("[{}]", config.node_ip) } else { config.node_ip.clone() }, config.port)
        .parse()
        .map_err(|e| AgentError::Server(format!("bad listen address: {e}")))?;
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| AgentError::Server(format!("binding {address}: {e}")))?;
    let port = listener.local_addr().map_err(|e| AgentError::Server(e.to_string()))?.port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(config)?));
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "agent endpoint accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(move |request| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(route(ctx, request).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection_with_upgrades(TokioIo::new(tls), service).await;
            });
        }
    });
    Ok(ServerHandle { port })
}

async fn route(ctx: Arc<Context>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    if crate::streaming::handles(&path) {
        return crate::streaming::serve(&ctx, request).await;
    }
    if request.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["containerLogs", namespace, pod, container] => container_logs(&ctx, namespace, pod, container, &query).await,
        ["stats", "resource"] => {
            let mut response = text(StatusCode::OK, serde_json::to_string(&ctx.stats.summary()).unwrap_or_default());
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
            response
        }
        _ => text(StatusCode::NOT_FOUND, format!("404 page not found: {path}")),
    }
}

async fn container_logs(ctx: &Context, namespace: &str, pod_name: &str, container: &str, query: &str) -> Response<Body> {
    let query = match LogQuery::parse(query, jiff::Timestamp::now()) {
        Ok(query) => query,
        Err(QueryError::BadRequest(message)) => return text(StatusCode::BAD_REQUEST, message),
        Err(QueryError::Invalid(message)) => return text(StatusCode::UNPROCESSABLE_ENTITY, message),
    };
    let pod = ctx.pods.lock().unwrap_or_else(|e| e.into_inner()).values().find(|p| p.namespace().as_deref() == Some(namespace) && p.name_any() == pod_name).cloned();
    let Some(pod) = pod else {
        return text(StatusCode::NOT_FOUND, format!("pod \"{pod_name}\" in namespace \"{namespace}\" is not known to this node"));
    };
    let runtime = match runtime_state::inspect_pod(&ctx.cri, &pod.uid().unwrap_or_default()).await {
        Ok(runtime) => runtime,
        Err(error) => return text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    };
    let instance = if query.previous { runtime.previous(container) } else { runtime.latest(container) };
    let Some(instance) = instance else {
        let message = if query.previous {
            format!("previous terminated container \"{container}\" in pod \"{pod_name}\" not found")
        } else {
            let reason = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.iter().flatten().chain(s.init_container_statuses.iter().flatten()).find(|c| c.name == container).cloned())
                .and_then(|c| c.state.and_then(|s| s.waiting).and_then(|w| w.reason))
                .unwrap_or_else(|| "ContainerCreating".into());
            format!("container \"{container}\" in pod \"{pod_name}\" is waiting to start: {reason}")
        };
        return text(StatusCode::BAD_REQUEST, message);
    };
    let path = std::path::PathBuf::from(&instance.status.log_path);
    let id = instance.id.clone();
    let cri = ctx.cri.clone();
    let running = instance.is_running();
    // Following ends when the container stops: its log is then complete.
    let stop = async move {
        if !running {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match cri.runtime.clone().container_status(api::ContainerStatusRequest { container_id: id.clone(), verbose: false }).await {
                Ok(response) if response.get_ref().status.as_ref().is_some_and(|s| s.state == api::ContainerState::ContainerRunning as i32) => {}
                _ => return,
            }
        }
    };
    match logs::read_logs(path.clone(), query.options, stop).await {
        Ok(stream) => {
            let body = StreamBody::new(stream.map(|chunk| chunk.map(Frame::data)));
            let mut response = Response::new(BodyExt::boxed_unsync(body));
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
            response
        }
        // Nothing written yet.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => text(StatusCode::OK, ""),
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("reading {}: {error}", path.display())),
    }
}
