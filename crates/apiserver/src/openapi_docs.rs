//! Serving the OpenAPI documents built by the `openapi` crate: `/openapi/v3` (index with hashed,
//! immutable per-group-version URLs), `/openapi/v3/<gv>`, and `/openapi/v2`; plus the schema
//! document strategic merge patch and apply read merge keys from.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};
use serde_json::Value;

use crate::http::{Body, bytes_response, error_response};
use crate::resources::{Registry, ResourceDef};
use crate::status::ApiError;

pub struct OpenApiDocs {
    inner: RwLock<openapi::OpenApi>,
    /// Parsed once per change: every definition, for patch merge-key lookups.
    schema_doc: RwLock<Arc<Value>>,
}

fn spec_of(def: &ResourceDef) -> openapi::ResourceSpec {
    let mut subresources = Vec::new();
    if def.status {
        subresources.push("status".to_string());
    }
    if def.scale.is_some() {
        subresources.push("scale".to_string());
    }
    openapi::ResourceSpec {
        group: def.group.clone(),
        version: def.version.clone(),
        kind: def.kind.clone(),
        plural: def.plural.clone(),
        namespaced: def.namespaced,
        verbs: def.verbs().iter().map(|v| v.to_string()).collect(),
        subresources,
        definition: crate::patching::def_definition_name(def),
    }
}

impl OpenApiDocs {
    pub fn new(registry: &Registry) -> Self {
        let specs: Vec<openapi::ResourceSpec> = registry.all().iter().filter(|d| !d.custom).map(|d| spec_of(d)).collect();
        let built = openapi::OpenApi::new(&specs);
        let schema_doc = Arc::new(built.schema_document());
        Self { inner: RwLock::new(built), schema_doc: RwLock::new(schema_doc) }
    }

    pub fn schema_document(&self) -> Arc<Value> {
        self.schema_doc.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the documents of a CRD's group-versions (empty `defs` removes them).
    pub fn set_custom(&self, crd: &Value, defs: &[ResourceDef]) {
        let specs: Vec<(openapi::ResourceSpec, Value)> =
            defs.iter().map(|d| (spec_of(d), d.schema.as_deref().cloned().unwrap_or(Value::Null))).collect();
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.set_custom(crate::objects::name(crd), &specs);
        *self.schema_doc.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(inner.schema_document());
    }

    pub fn serve_v3_index(&self, _headers: &HeaderMap) -> Response<Body> {
        let index = self.inner.read().unwrap_or_else(|e| e.into_inner()).v3_index();
        bytes_response(200, Bytes::from(index), "application/json")
    }

    pub fn serve_v3(&self, path: &str, hash: Option<&str>, headers: &HeaderMap) -> Response<Body> {
        let doc = self.inner.read().unwrap_or_else(|e| e.into_inner()).v3_document(path);
        let Some((body, etag)) = doc else { return error_response(&ApiError::not_found_path(path)) };
        let quoted = format!("\"{etag}\"");
        if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(quoted.as_str()) {
            let mut resp = bytes_response(304, Bytes::new(), "application/json");
            resp.headers_mut().insert(header::ETAG, HeaderValue::from_str(&quoted).unwrap_or(HeaderValue::from_static("\"\"")));
            return resp;
        }
        if hash.is_some_and(|h| h != etag.as_str()) {
            // A hashed URL from an older index: send the client to the current one, as upstream.
            let mut resp = bytes_response(301, Bytes::new(), "application/json");
            let location = format!("/openapi/v3/{}?hash={etag}", path.trim_start_matches('/'));
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            return resp;
        }
        let mut resp = bytes_response(200, body, "application/json");
        resp.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept"));
        if let Ok(v) = HeaderValue::from_str(&quoted) {
            resp.headers_mut().insert(header::ETAG, v);
        }
        let cache = if hash.is_some() { "public, immutable" } else { "no-cache, private" };
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        resp
    }

    pub fn serve_v2(&self, headers: &HeaderMap) -> Response<Body> {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if accept.contains("protobuf") && !accept.contains("application/json") {
            return match inner.v2_protobuf() {
                Some(body) => bytes_response(200, body, "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"),
                None => error_response(&ApiError::not_acceptable("only application/json is served for /openapi/v2")),
            };
        }
        bytes_response(200, inner.v2_document(), "application/json")
    }
}
