//! The Kubernetes client every component uses: kube's, but over one HTTP/2 connection.
//!
//! kube-rs speaks HTTP/1 only, so its pool opens a connection per request in flight and keeps
//! them: at 50,000 pods the controller manager held 1,024 TLS connections to the API server (the
//! depth of kube's request buffer), each with its buffers and TLS state on both ends. client-go
//! multiplexes everything over one HTTP/2 connection, and so does this client. Keepalive pings
//! find a dead connection, which HTTP/1's read timeout did before (a long watch may be silent).

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use kube::client::retry::RetryPolicy;
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(15);

/// A client for `config` with kube's layers (base URI, server-error retries, authentication,
/// extra headers such as the User-Agent) over HTTP/2. The server must speak HTTP/2: Berth's
/// does (ALPN over TLS, prior knowledge in plain text), as does kube-apiserver.
pub fn build(config: kube::Config) -> Result<kube::Client, kube::Error> {
    let tls = config.rustls_client_config()?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http2().build();
    let mut http = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    http.http2_only(true)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .http2_keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .http2_keep_alive_while_idle(true);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http.build(connector));
    Ok(kube::Client::new(service, config.default_namespace))
}

/// A client that hands its requests to `service` instead of a connection: the server's own
/// components use the API server's in-process service. Server errors are retried as [`build`]
/// retries them; authentication and the User-Agent are the service's business. Must be called
/// within the runtime the client will be used on.
pub fn over_service<S, B>(service: S) -> kube::Client
where
    S: tower::Service<http::Request<kube::client::Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let service = ServiceBuilder::new().layer(RetryLayer::new(RetryPolicy::server_retry())).map_err(Into::<BoxError>::into).service(service);
    kube::Client::new(service, "default")
}

/// The name of an object a create made: all that controllers creating from a template (pods
/// of a ReplicaSet or Job) read from the answer. Decoding the whole created object cost more than
/// the request itself in `berth bench scheduler`.
#[derive(serde::Deserialize)]
struct CreatedName {
    metadata: CreatedMeta,
}

#[derive(serde::Deserialize)]
struct CreatedMeta {
    #[serde(default)]
    name: String,
}

/// Creates `object` in `namespace` (as `Api::create` does) and returns its name.
pub async fn create_for_name<K>(client: &kube::Client, namespace: &str, params: &kube::api::PostParams, object: &K) -> Result<String, kube::Error>
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize,
{
    let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
    let mut request = kube::core::Request::new(K::url_path(&(), Some(namespace))).create(params, body).map_err(kube::Error::BuildRequest)?;
    request.extensions_mut().insert("create");
    let created: CreatedName = client.request(request).await?;
    Ok(created.metadata.name)
}
