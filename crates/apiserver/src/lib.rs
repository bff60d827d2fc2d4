//! The Berth API server: the Kubernetes REST API over HTTPS on top of a revisioned [`store::Store`].
//!
//! Start with [`serve`], which wires the pieces: [`tls`] (certificates and kubeconfig),
//! [`http`] (routing and negotiation), [`api`] (the generic registry every resource shares),
//! [`strategy`] (what differs per kind), [`list`] and [`watch`] (reads), [`patching`] (the four
//! patch types), [`crd`] (custom resources) and [`discovery`] / [`openapi_docs`] (what clients
//! learn about the API). Architecture invariant: no handler knows a kind by name except through
//! a strategy hook; adding a kind is adding a row to [`resources`].

pub mod admission;
pub mod allocator;
pub mod api;
pub mod binding;
pub mod cacher;
pub mod cel;
pub mod conversion;
pub mod crd;
pub mod crd_controller;
pub mod discovery;
pub mod eviction;
pub mod join;
pub mod http;
pub mod in_process;
pub mod list;
pub mod metrics;
pub mod node_proxy;
pub mod objects;
pub mod openapi_docs;
pub mod patching;
pub mod pod_log;
pub mod protobuf;
pub mod printers;
pub mod projection;
pub mod resource_metrics;
pub mod resources;
pub mod scale;
pub mod selection;
pub mod serializes_as;
pub mod serviceaccount;
pub mod status;
pub mod storage;
pub mod streaming;
pub mod strategy;
pub mod tls;
pub mod typed;
pub mod validation;
pub mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use store::Store;
use tokio::net::TcpListener;

pub use tls::Identity;

#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Extra names and addresses the serving certificate covers.
    pub extra_sans: Vec<String>,
    pub service_cidr: String,
    /// How often history older than one interval is compacted away (upstream's
    /// `--etcd-compaction-interval`); zero disables compaction.
    pub compaction_interval: std::time::Duration,
    pub default_tolerations: strategy::DefaultTolerations,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Cidr(#[from] allocator::CidrError),
    #[error("start-up: {0}")]
    Startup(String),
}

/// A running server: its address and what it was built from.
pub struct Running {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub server: Arc<http::Server>,
    accept: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting connections. Acknowledged writes are already durable.
    pub fn stop(self) {
        self.accept.abort();
    }
}

/// Builds every part over `store` and starts serving on `config.listen`.
pub async fn serve(config: Config, store: Arc<dyn Store>) -> Result<Running, ServeError> {
    let listener = TcpListener::bind(config.listen).await.map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen { addr: config.listen, source })?;

    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string(), "kubernetes".to_string(), "kubernetes.default".to_string(), "kubernetes.default.svc".to_string()];
    if !addr.ip().is_unspecified() && !hosts.contains(&addr.ip().to_string()) {
        hosts.push(addr.ip().to_string());
    }
    for san in &config.extra_sans {
        if !hosts.contains(san) {
            hosts.push(san.clone());
        }
    }
    let pki = tls::Pki::load_or_create(&config.data_dir.join("pki"), &hosts)?;
    let kube_host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let server_url = format!("https://{}", SocketAddr::new(kube_host.parse().unwrap_or(addr.ip()), addr.port()));
    let kubeconfig = config.data_dir.join("admin.kubeconfig");
    pki.write_admin_kubeconfig(&kubeconfig, &server_url)?;
    let tls_config = pki.server_config()?;
    let node_token = join::load_or_create_token(&config.data_dir, &pki.ca_pem)?;
    let nodes = Arc::new(node_proxy::NodeClient::new(&pki.kubelet_client_cert_pem, &pki.kubelet_client_key_pem)?);

    let metrics = Arc::new(metrics::Metrics::default());
    let store: Arc<dyn Store> = Arc::new(metrics::MeteredStore::new(store, metrics.clone()));
    let registry = Arc::new(resources::Registry::new());
    let service_ips = allocator::ServiceIps::new(&config.service_cidr)?;
    if let Some(services) = registry.get("", "v1", "services") {
        service_ips.load(&*store, &services).await?;
    }
    let openapi = Arc::new(openapi_docs::OpenApiDocs::new(&registry));
    let mut api = api::Api::new(store.clone(), registry.clone(), service_ips, openapi.clone());
    api.default_tolerations = config.default_tolerations;
    let api = Arc::new(api);
    api.bootstrap().await.map_err(|e| ServeError::Startup(e.message))?;
    storage::ensure_local_path_class(&api).await.map_err(|e| ServeError::Startup(e.message))?;
    let service_accounts = Arc::new(serviceaccount::TokenIssuer::load_or_create(&pki.dir, format!("{server_url}/openid/v1/jwks"))?);
    crd_controller::start(api.clone(), openapi.clone()).await.map_err(|e| ServeError::Startup(e.message))?;

    if !config.compaction_interval.is_zero() {
        tokio::spawn(compact_periodically(store.clone(), config.compaction_interval));
    }

    let server = Arc::new(http::Server {
        api,
        metrics,
        openapi,
        advertise_address: addr.to_string(),
        // Joining agents authenticate with the node token (see join.rs).
        tokens: HashMap::from([(node_token, join::node_identity())]),
        ca_pem: pki.ca_pem.clone(),
        nodes,
        service_accounts,
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let accept_server = server.clone();
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, _peer) = match listener.accept().await {
                Ok(c) => c,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let server = accept_server.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(error) => {
                        tracing::debug!(%error, "TLS handshake failed");
                        return;
                    }
                };
                let identity = tls.get_ref().1.peer_certificates().and_then(|certs| certs.first()).and_then(|c| tls::identity_from_cert(c));
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let server = server.clone();
                    let identity = identity.clone();
                    async move { Ok::<_, std::convert::Infallible>(http::handle(server, http::from_network(req), identity).await) }
                });
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http2().max_concurrent_streams(1000);
                // exec, attach and port-forward take over their connection after a 101.
                if let Err(error) = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            });
        }
    });
    Ok(Running { addr, kubeconfig, server, accept })
}

/// Every interval, forgets history up to the revision that was current one interval earlier, so
/// watchers and paginated lists have at least one interval to catch up (as upstream's compactor).
async fn compact_periodically(store: Arc<dyn Store>, interval: std::time::Duration) {
    let mut previous = None;
    loop {
        tokio::time::sleep(interval).await;
        let current = store.current_revision();
        if let Some(revision) = previous.filter(|r| *r > store.compacted_revision()) {
            match store.compact(revision).await {
                Ok(()) => tracing::debug!(revision, "compacted"),
                Err(error) => tracing::warn!(%error, "compaction failed"),
            }
        }
        previous = Some(current);
    }
}
