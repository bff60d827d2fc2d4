//! HTTP in and out: routing Kubernetes URLs to registry operations, reading bodies (JSON or
//! YAML, size-limited), content negotiation (JSON, YAML, Table), and turning results and
//! [`ApiError`]s into responses.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use serde_json::{Value, json};

use crate::api::{Api, DeleteOptions, Deleted, FieldValidation, Part, WriteOptions};
use crate::resources::{ResourceDef, Subresource};
use crate::status::{ApiError, ApiResult};
use crate::tls::Identity;
use crate::{discovery, list, metrics::Metrics, openapi_docs::OpenApiDocs, patching, scale, watch};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A request body from any transport: a network connection, or an in-process component
/// (see [`crate::in_process`]).
pub type RequestBody = http_body_util::combinators::BoxBody<Bytes, BodyError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Reading a request body failed (the connection broke). A concrete type rather than a boxed
/// error: rustc cannot prove the boxed one's lifetime bounds inside the handlers' futures.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// A request from a network connection, as the handlers take it.
pub fn from_network(req: http::Request<hyper::body::Incoming>) -> http::Request<RequestBody> {
    req.map(|body| body.map_err(|e| BodyError(e.to_string())).boxed())
}

/// Upstream's limit on request bodies.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

pub struct Server {
    pub api: Arc<Api>,
    pub metrics: Arc<Metrics>,
    pub openapi: Arc<OpenApiDocs>,
    pub advertise_address: String,
    /// Bearer tokens accepted in place of a client certificate, with the identity each stands for.
    pub tokens: HashMap<String, Identity>,
    /// The cluster CA, served unauthenticated at /cacerts for joining agents to check.
    pub ca_pem: String,
    /// Connections to nodes' agents (pods/log).
    pub nodes: Arc<crate::node_proxy::NodeClient>,
    /// Signs and checks service account tokens.
    pub service_accounts: Arc<crate::serviceaccount::TokenIssuer>,
}

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

pub fn json_response(code: u16, value: &Value) -> Response<Body> {
    bytes_response(code, Bytes::from(serde_json::to_vec(value).unwrap_or_default()), "application/json")
}

pub fn bytes_response(code: u16, body: Bytes, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub fn error_response(err: &ApiError) -> Response<Body> {
    let mut resp = json_response(err.code, &err.to_status());
    if let Some(after) = err.retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(after));
    }
    resp
}

/// Query parameters (the last value wins, like Go's url.Values.Get on single-valued params).
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        Self(form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect())
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1" | "True"))
    }
    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!("Invalid dryRun value {other:?}: only \"All\" is supported"))),
        }
    }
    /// Write options; a write without `fieldManager` is recorded under the client's name (the
    /// user agent up to its first `/`), as upstream does.
    pub fn write_options(&self, headers: &HeaderMap) -> ApiResult<WriteOptions> {
        let field_manager = self.get("fieldManager").filter(|m| !m.is_empty()).map(str::to_string).or_else(|| {
            let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
            let name = agent.split('/').next().unwrap_or("").trim();
            (!name.is_empty()).then(|| name.to_string())
        });
        if let Some(m) = &field_manager
            && m.len() > 128
        {
            return Err(ApiError::bad_request("fieldManager: Too long: may not be longer than 128"));
        }
        Ok(WriteOptions {
            dry_run: self.dry_run()?,
            field_validation: FieldValidation::parse(self.get("fieldValidation"))?,
            field_manager,
            force: self.flag("force"),
            applied: false,
            server_built: false,
        })
    }
}

/// What the client accepts back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    Table,
    /// `as=PartialObjectMetadata(List)`: metadata only, for metadata informers.
    Metadata,
}

pub fn negotiate(headers: &HeaderMap) -> ApiResult<Format> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return Ok(Format::Json) };
    let mut offered_only_other = true;
    for part in accept.split(',') {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or("");
        let params: Vec<&str> = params.collect();
        let meta_group = params.iter().any(|p| p.starts_with("g=meta.k8s.io"));
        let is_table = params.contains(&"as=Table") && meta_group;
        let is_metadata = (params.contains(&"as=PartialObjectMetadata") || params.contains(&"as=PartialObjectMetadataList")) && meta_group;
        match media {
            "application/json" if is_table => return Ok(Format::Table),
            "application/json" if is_metadata => return Ok(Format::Metadata),
            "application/json" | "*/*" | "application/*" if params.iter().all(|p| !p.starts_with("as=")) => return Ok(Format::Json),
            "application/yaml" if params.is_empty() => return Ok(Format::Yaml),
            "" => {}
            _ => {}
        }
        if media.starts_with("application/json") || media == "*/*" {
            offered_only_other = false;
        }
    }
    if offered_only_other {
        Err(ApiError::not_acceptable("only the following media types are accepted: application/json, application/yaml, application/json;as=Table;v=v1;g=meta.k8s.io"))
    } else {
        Ok(Format::Json)
    }
}

/// A write's answer. JSON comes straight from the stored bytes where they are the object's, as
/// a GET's does: serializing the object again was 4% of the server's CPU in `berth bench scheduler`.
fn answer_write(code: u16, written: &crate::api::Written, format: Format) -> Response<Body> {
    let response = match (&written.stored, format) {
        (Some(kv), Format::Json) => bytes_response(code, Api::raw_bytes(kv), "application/json"),
        _ => render(code, &written.object, format),
    };
    with_warnings(response, &written.warnings)
}

pub fn render(code: u16, value: &Value, format: Format) -> Response<Body> {
    match format {
        Format::Yaml => match serde_saphyr::to_string(value) {
            Ok(text) => bytes_response(code, Bytes::from(text), "application/yaml"),
            Err(e) => error_response(&ApiError::internal(e)),
        },
        _ => json_response(code, value),
    }
}

/// Reads a request body up to the size limit and decodes JSON or YAML into a value.
pub async fn read_body(body: RequestBody) -> ApiResult<Bytes> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::too_large(format!("the request body is larger than the limit of {MAX_BODY_BYTES} bytes")))
        }
        Err(e) => Err(ApiError::bad_request(format!("failed to read the request body: {e}"))),
    }
}

pub fn decode_object(content_type: &str, raw: &[u8]) -> ApiResult<Value> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let value: Value = match media {
        "application/json" | "" => serde_json::from_slice(raw).map_err(|e| ApiError::bad_request(format!("the body of the request could not be decoded as JSON: {e}")))?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            let text = std::str::from_utf8(raw).map_err(|_| ApiError::bad_request("the YAML body is not UTF-8"))?;
            serde_saphyr::from_str(text).map_err(|e| ApiError::bad_request(format!("the body of the request could not be decoded as YAML: {e}")))?
        }
        "application/vnd.kubernetes.protobuf" => {
            crate::protobuf::decode(raw).map_err(|e| ApiError::bad_request(format!("the body of the request could not be decoded as protobuf: {e}")))?
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !value.is_object() {
        return Err(ApiError::bad_request("the body of the request must be an object"));
    }
    Ok(value)
}

/// Where a resource URL points.
pub struct Target {
    pub def: Arc<ResourceDef>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    pub watch_path: bool,
}

/// Resolves `/api/v1/...` or `/apis/g/v/...` remainder segments to a target.
fn resolve(server: &Server, group: &str, version: &str, segs: &[&str]) -> ApiResult<Target> {
    let registry = &server.api.registry;
    let (watch_path, segs) = match segs.first() {
        Some(&"watch") => (true, &segs[1..]),
        _ => (false, segs),
    };
    let not_found = || ApiError::not_found_path("");
    let lookup = |plural: &str| registry.get(group, version, plural).ok_or_else(not_found);
    // /namespaces/{ns}/{resource}... unless it is the namespace object itself or its subresource.
    if segs.first() == Some(&"namespaces") && segs.len() >= 3 && !(segs.len() == 3 && matches!(segs[2], "status" | "finalize")) {
        let def = lookup(segs[2])?;
        if !def.namespaced {
            return Err(not_found());
        }
        return Ok(Target {
            def,
            namespace: Some(segs[1].to_string()),
            name: segs.get(3).map(|s| s.to_string()),
            subresource: segs.get(4).map(|s| s.to_string()),
            watch_path,
        })
        .and_then(|t| if segs.len() > 5 { Err(not_found()) } else { Ok(t) });
    }
    let Some(plural) = segs.first() else { return Err(not_found()) };
    let def = lookup(plural)?;
    if def.namespaced && segs.len() > 1 {
        // Namespaced objects are addressed only through /namespaces/{ns}/.
        return Err(not_found());
    }
    if segs.len() > 3 {
        return Err(not_found());
    }
    Ok(Target { def, namespace: None, name: segs.get(1).map(|s| s.to_string()), subresource: segs.get(2).map(|s| s.to_string()), watch_path })
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The request path split into decoded segments.
fn segments(path: &str) -> Vec<String> {
    path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect()
}

fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version") || path.starts_with("/healthz/") || path.starts_with("/livez/") || path.starts_with("/readyz/")
}

pub async fn handle(server: Arc<Server>, req: http::Request<RequestBody>, identity: Option<Identity>) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let identity = match identity {
        Some(identity) => Some(identity),
        None => bearer_identity(&server, req.headers()).await,
    };
    let (verb, resource, resp) = if method == Method::GET && path == "/cacerts" {
        ("get", String::new(), bytes_response(200, Bytes::from(server.ca_pem.clone()), "text/plain; charset=utf-8"))
    } else if identity.is_none() && !is_public(&path) {
        ("", String::new(), error_response(&ApiError::unauthorized()))
    } else if let (&Method::POST, Some(identity)) = (&method, identity.as_ref().filter(|_| path == "/apis/authentication.k8s.io/v1/selfsubjectreviews")) {
        ("create", "selfsubjectreviews".into(), json_response(201, &crate::serviceaccount::self_subject_review(identity)))
    } else {
        route(&server, req).await
    };
    server.metrics.observe_request(&method, verb, &resource, resp.status().as_u16(), started.elapsed());
    resp
}

async fn bearer_identity(server: &Server, headers: &HeaderMap) -> Option<Identity> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = auth.strip_prefix("Bearer ")?.trim();
    match server.tokens.get(token) {
        Some(identity) => Some(identity.clone()),
        None => crate::serviceaccount::authenticate(&server.api, &server.service_accounts, token).await,
    }
}

/// Dispatches; returns the verb and resource for metrics with the response.
async fn route(server: &Arc<Server>, req: http::Request<RequestBody>) -> (&'static str, String, Response<Body>) {
    let path = req.uri().path().to_string();
    let segs = segments(&path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let headers = req.headers().clone();
    let get_only = |resp: Response<Body>| if req.method() == Method::GET || req.method() == Method::HEAD { resp } else { error_response(&ApiError::method_not_allowed("the server does not allow this method on the requested resource")) };
    match segs.as_slice() {
        ["version"] => return ("get", String::new(), get_only(json_response(200, &discovery::version()))),
        ["healthz" | "livez" | "readyz", ..] => return ("get", String::new(), get_only(bytes_response(200, Bytes::from_static(b"ok"), "text/plain; charset=utf-8"))),
        ["metrics"] => return ("get", String::new(), get_only(bytes_response(200, Bytes::from(server.metrics.render()), "text/plain; version=0.0.4; charset=utf-8"))),
        [".well-known", "openid-configuration"] => return ("get", String::new(), get_only(json_response(200, &server.service_accounts.openid_configuration()))),
        ["openid", "v1", "jwks"] => {
            let body = Bytes::from(server.service_accounts.jwks().to_string());
            return ("get", String::new(), get_only(bytes_response(200, body, "application/jwk-set+json")));
        }
        ["openapi", "v2"] => return ("get", String::new(), get_only(server.openapi.serve_v2(&headers))),
        ["openapi", "v3"] => return ("get", String::new(), get_only(server.openapi.serve_v3_index(&headers))),
        ["openapi", "v3", rest @ ..] => {
            let query = Query::parse(req.uri().query());
            return ("get", String::new(), get_only(server.openapi.serve_v3(&rest.join("/"), query.get("hash"), &headers)));
        }
        // Built in rather than aggregated; the group and its resources are not in the registry.
        ["apis", crate::resource_metrics::GROUP, rest @ ..] => return crate::resource_metrics::route(server, req, rest).await,
        ["api"] => return ("get", String::new(), get_only(discovery_root(server, &headers, true))),
        ["apis"] => return ("get", String::new(), get_only(discovery_root(server, &headers, false))),
        ["api", "v1"] => {
            let doc = discovery::resource_list(&server.api.registry, "", "v1");
            return ("get", String::new(), get_only(doc.map_or_else(|| error_response(&ApiError::not_found_path(&path)), |d| json_response(200, &d))));
        }
        ["apis", group] => {
            let doc = discovery::group(&server.api.registry, group);
            return ("get", String::new(), get_only(doc.map_or_else(|| error_response(&ApiError::not_found_path(&path)), |d| json_response(200, &d))));
        }
        ["apis", group, version] => {
            let doc = discovery::resource_list(&server.api.registry, group, version);
            return ("get", String::new(), get_only(doc.map_or_else(|| error_response(&ApiError::not_found_path(&path)), |d| json_response(200, &d))));
        }
        _ => {}
    }
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (group, version, rest),
        _ => return ("", String::new(), error_response(&ApiError::not_found_path(&path))),
    };
    let target = match resolve(server, group, version, rest) {
        Ok(t) => t,
        Err(e) => return ("", String::new(), error_response(&e)),
    };
    let resource = target.def.plural.clone();
    let (verb, resp) = match serve_resource(server, req, target).await {
        Ok((verb, resp)) => (verb, resp),
        Err((verb, e)) => (verb, error_response(&e)),
    };
    (verb, resource, resp)
}

fn discovery_root(server: &Server, headers: &HeaderMap, core: bool) -> Response<Body> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    for part in accept.split(',') {
        if part.contains("as=APIGroupDiscoveryList") && part.contains("g=apidiscovery.k8s.io") {
            let version = if part.contains("v=v2beta1") { "v2beta1" } else { "v2" };
            let doc = discovery::aggregated(&server.api.registry, core, &format!("apidiscovery.k8s.io/{version}"));
            let content_type = if version == "v2" {
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            } else {
                "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
            };
            let mut resp = json_response(200, &doc);
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            return resp;
        }
    }
    if core {
        json_response(200, &discovery::core_versions(&server.advertise_address))
    } else {
        json_response(200, &discovery::group_list(&server.api.registry))
    }
}

type Served = Result<(&'static str, Response<Body>), (&'static str, ApiError)>;

fn with_warnings(mut resp: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

async fn serve_resource(server: &Arc<Server>, req: http::Request<RequestBody>, target: Target) -> Served {
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    let headers = req.headers().clone();
    let api = &server.api;
    let def = target.def.clone();
    let ns = target.namespace.as_deref();
    let is_pod = def.kind == "Pod" && def.group.is_empty();
    if let (true, Some("log"), Some(name)) = (is_pod, target.subresource.as_deref(), target.name.as_deref()) {
        // A text stream from the node, not an object: no content negotiation; upstream's metrics
        // count it as CONNECT.
        if method != Method::GET {
            return Err(("", ApiError::method_not_allowed("the server does not allow this method on the requested resource")));
        }
        let resp = crate::pod_log::serve(server, &def, ns.unwrap_or_default(), name, req.uri().query()).await.map_err(|e| ("connect", e))?;
        return Ok(("connect", resp));
    }
    if let (true, Some(kind), Some(name)) = (is_pod, target.subresource.as_deref().and_then(crate::streaming::Kind::from_subresource), target.name.as_deref()) {
        let resp = crate::streaming::serve(server, &def, ns.unwrap_or_default(), name, kind, req).await.map_err(|e| ("connect", e))?;
        return Ok(("connect", resp));
    }
    let format = negotiate(&headers).map_err(|e| ("", e))?;
    let sub = match target.subresource.as_deref() {
        None => None,
        Some("status") if def.status => Some(Subresource::Status),
        Some("scale") if def.scale.is_some() => Some(Subresource::Scale),
        Some("finalize") if def.kind == "Namespace" && def.group.is_empty() => Some(Subresource::Status),
        // pods/binding is create-only and handled below.
        Some("binding" | "eviction") if def.kind == "Pod" && def.group.is_empty() && method == Method::POST => None,
        Some("token") if def.kind == "ServiceAccount" && def.group.is_empty() && method == Method::POST => None,
        Some(other) => return Err(("", ApiError::not_found_path(other))),
    };
    let finalize = target.subresource.as_deref() == Some("finalize");
    let part = if sub == Some(Subresource::Status) && !finalize { Part::Status } else { Part::Main };
    let watching = target.watch_path || query.flag("watch");

    match (&method, target.name.as_deref()) {
        (&Method::GET, None) if watching => {
            let resp = watch::serve(server, &def, ns, &query, format).await.map_err(|e| ("watch", e))?;
            Ok(("watch", resp))
        }
        (&Method::GET, None) => {
            let resp = list::serve(server, &def, ns, &query, format).await.map_err(|e| ("list", e))?;
            Ok(("list", resp))
        }
        (&Method::GET, Some(name)) if watching => {
            // A watch on one object is a watch with a name field selector.
            let resp = watch::serve_one(server, &def, ns, name, &query, format).await.map_err(|e| ("watch", e))?;
            Ok(("watch", resp))
        }
        (&Method::GET, Some(name)) => {
            if sub == Some(Subresource::Scale) {
                let obj = api.get(&def, ns, name).await.map_err(|e| ("get", e))?;
                return Ok(("get", json_response(200, &scale::to_scale(&def, &obj))));
            }
            if format == Format::Metadata {
                let obj = api.get(&def, ns, name).await.map_err(|e| ("get", e))?;
                return Ok(("get", json_response(200, &partial_metadata(&obj))));
            }
            if format == Format::Table {
                let kv = api.get_kv(&def, ns, name).await.map_err(|e| ("get", e))?;
                let table = list::table_of(&def, &[kv], &query, None).map_err(|e| ("get", e))?;
                return Ok(("get", json_response(200, &table)));
            }
            let kv = api.get_kv(&def, ns, name).await.map_err(|e| ("get", e))?;
            if format == Format::Json {
                return Ok(("get", bytes_response(200, Api::raw_bytes(&kv), "application/json")));
            }
            let obj = crate::objects::decode(&kv).map_err(|e| ("get", ApiError::internal(e)))?;
            Ok(("get", render(200, &obj, format)))
        }
        (&Method::POST, None) => {
            let opts = query.write_options(&headers).map_err(|e| ("create", e))?;
            let content_type = header_str(&headers, header::CONTENT_TYPE);
            let raw = read_body(req.into_body()).await.map_err(|e| ("create", e))?;
            let body = decode_object(&content_type, &raw).map_err(|e| ("create", e))?;
            let written = api.create(&def, ns, body, &opts).await.map_err(|e| ("create", e))?;
            Ok(("create", answer_write(201, &written, format)))
        }
        (&Method::POST, Some(name)) if def.kind == "Pod" && def.group.is_empty() && target.subresource.as_deref() == Some("binding") => {
            let raw = read_body(req.into_body()).await.map_err(|e| ("create", e))?;
            let body = decode_object(&header_str(&headers, header::CONTENT_TYPE), &raw).map_err(|e| ("create", e))?;
            let status = crate::binding::bind(api, &def, ns, name, &body).await.map_err(|e| ("create", e))?;
            Ok(("create", json_response(201, &status)))
        }
        (&Method::POST, Some(name)) if def.kind == "Pod" && def.group.is_empty() && target.subresource.as_deref() == Some("eviction") => {
            let opts = query.write_options(&headers).map_err(|e| ("create", e))?;
            let raw = read_body(req.into_body()).await.map_err(|e| ("create", e))?;
            let body = decode_object(&header_str(&headers, header::CONTENT_TYPE), &raw).map_err(|e| ("create", e))?;
            let status = crate::eviction::evict(api, &def, ns, name, &body, opts.dry_run).await.map_err(|e| ("create", e))?;
            Ok(("create", json_response(201, &status)))
        }
        (&Method::POST, Some(name)) if def.kind == "ServiceAccount" && def.group.is_empty() && target.subresource.as_deref() == Some("token") => {
            let raw = read_body(req.into_body()).await.map_err(|e| ("create", e))?;
            let body = decode_object(&header_str(&headers, header::CONTENT_TYPE), &raw).map_err(|e| ("create", e))?;
            let request = crate::serviceaccount::create_token(api, &server.service_accounts, ns.unwrap_or("default"), name, &body).await.map_err(|e| ("create", e))?;
            Ok(("create", render(201, &request, format)))
        }
        (&Method::PUT, Some(name)) => {
            let opts = query.write_options(&headers).map_err(|e| ("update", e))?;
            let content_type = header_str(&headers, header::CONTENT_TYPE);
            let raw = read_body(req.into_body()).await.map_err(|e| ("update", e))?;
            let body = decode_object(&content_type, &raw).map_err(|e| ("update", e))?;
            if sub == Some(Subresource::Scale) {
                let written = scale::update(api, &def, ns, name, body, &opts).await.map_err(|e| ("update", e))?;
                return Ok(("update", json_response(200, &written)));
            }
            let written = api.update(&def, ns, name, body, part, &opts).await.map_err(|e| ("update", e))?;
            let code = if written.created { 201 } else { 200 };
            Ok(("update", answer_write(code, &written, format)))
        }
        (&Method::PATCH, Some(name)) => {
            let opts = query.write_options(&headers).map_err(|e| ("patch", e))?;
            let content_type = header_str(&headers, header::CONTENT_TYPE);
            let raw = read_body(req.into_body()).await.map_err(|e| ("patch", e))?;
            if sub == Some(Subresource::Scale) {
                let written = scale::patch(server, &def, ns, name, &content_type, &raw, &opts).await.map_err(|e| ("patch", e))?;
                return Ok(("patch", json_response(200, &written)));
            }
            let written = patching::patch(server, &def, ns, name, part, &content_type, &raw, &opts).await.map_err(|e| ("patch", e))?;
            let code = if written.created { 201 } else { 200 };
            Ok(("patch", answer_write(code, &written, format)))
        }
        (&Method::DELETE, Some(name)) => {
            let content_type = header_str(&headers, header::CONTENT_TYPE);
            let opts = delete_options(&query, &content_type, req.into_body()).await.map_err(|e| ("delete", e))?;
            match api.delete(&def, ns, name, &opts).await.map_err(|e| ("delete", e))? {
                Deleted::Pending(obj) => Ok(("delete", render(200, &obj, format))),
                Deleted::Gone(obj) if def.kind == "Pod" && def.group.is_empty() => Ok(("delete", render(200, &obj, format))),
                Deleted::Gone(obj) => {
                    let mut details = json!({"name": name, "kind": def.plural, "uid": crate::objects::meta_str(&obj, "uid")});
                    if !def.group.is_empty() {
                        details["group"] = json!(def.group);
                    }
                    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details});
                    Ok(("delete", json_response(200, &status)))
                }
            }
        }
        (&Method::DELETE, None) => {
            let content_type = header_str(&headers, header::CONTENT_TYPE);
            let opts = delete_options(&query, &content_type, req.into_body()).await.map_err(|e| ("deletecollection", e))?;
            let resp = list::delete_collection(server, &def, ns, &query, &opts, format).await.map_err(|e| ("deletecollection", e))?;
            Ok(("deletecollection", resp))
        }
        _ => Err(("", ApiError::method_not_allowed("the server does not allow this method on the requested resource"))),
    }
}

/// An object reduced to its metadata (metav1.PartialObjectMetadata).
pub fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

async fn delete_options(query: &Query, content_type: &str, body: RequestBody) -> ApiResult<DeleteOptions> {
    let mut opts = DeleteOptions {
        grace_period_seconds: match query.get("gracePeriodSeconds") {
            Some(g) => Some(g.parse().map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?),
            None => None,
        },
        propagation_policy: query.get("propagationPolicy").map(str::to_string),
        dry_run: query.dry_run()?,
        ..Default::default()
    };
    if query.get("orphanDependents") == Some("true") && opts.propagation_policy.is_none() {
        opts.propagation_policy = Some("Orphan".into());
    }
    let raw = read_body(body).await?;
    if !raw.iter().all(u8::is_ascii_whitespace) {
        let body = decode_object(content_type, &raw).map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {}", e.message)))?;
        opts.merge_body(&body)?;
    }
    Ok(opts)
}
