//! A small read-only OCI distribution (registry v2) server for image archives, so nodes can be
//! tested pulling over the network (pull policies, imagePullSecrets) without an outside registry.
//!
//! Served: `GET`/`HEAD` of `/v2/`, `/v2/<name>/manifests/<tag or digest>` (with the manifest's
//! media type as Content-Type and `Docker-Content-Digest`), `/v2/<name>/blobs/<digest>`, and
//! `GET /v2/<name>/tags/list`. Anything else is refused as the distribution spec words it
//! (`UNSUPPORTED`, 405). With credentials configured every request needs HTTP basic auth; without
//! it the answer is 401 with `WWW-Authenticate: Basic realm=...`, which is what makes containerd
//! retry with the pull secret's credentials.
//!
//! Content comes from OCI image-layout archives (what [`crate::ImageBuilder`] writes): each
//! manifest named in an archive's `index.json` (containerd's or the OCI reference annotation,
//! `berth.dev/busybox:1`) is served under its repository path without the domain (`busybox`) and
//! its tag; a bare tag in the OCI annotation is served under the archive's file stem. Every blob
//! is checked against its digest when loaded, and kept in memory (our images are a few MiB).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, Error, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, Result};

/// The realm of the basic-auth challenge.
pub const REALM: &str = "berth-registry";

#[derive(Default)]
struct Repository {
    tags: BTreeMap<String, String>,
    manifests: BTreeSet<String>,
    blobs: BTreeSet<String>,
}

/// What is served: repositories with their tags, and the blobs (manifests included) by digest.
#[derive(Default)]
pub struct Content {
    repositories: BTreeMap<String, Repository>,
    blobs: HashMap<String, Bytes>,
    /// Media types of manifests, from the descriptors that point at them.
    media_types: HashMap<String, String>,
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Splits a full reference (`berth.dev/test/busybox:1`) into repository path and tag; the domain
/// (a first component with a dot or port, or `localhost`) is dropped. None without a tag.
fn repository_and_tag(reference: &str) -> Option<(String, String)> {
    let name = reference.split('@').next()?;
    let (path, tag) = name.rsplit_once(':').filter(|(path, tag)| !tag.contains('/') && !path.is_empty())?;
    let path = match path.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => rest,
        _ => path,
    };
    Some((path.to_string(), tag.to_string()))
}

/// Distribution's repository name grammar: lowercase alphanumeric components separated by `/`,
/// each with single `.`, `_`, `__` or `-` runs inside.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
                && part.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
                && part.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
        })
}

impl Content {
    /// Every `*.tar` archive in `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let read_error = |source| Error::Read { path: dir.to_path_buf(), source };
        let mut archives: Vec<PathBuf> = std::fs::read_dir(dir).map_err(read_error)?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "tar")).collect();
        archives.sort();
        let mut content = Content::default();
        for archive in archives {
            let bytes = std::fs::read(&archive).map_err(|source| Error::Read { path: archive.clone(), source })?;
            content.add_archive(&archive, &bytes)?;
        }
        Ok(content)
    }

    /// Adds one OCI image-layout archive; `origin` names it in errors and gives bare tags their
    /// repository (the file stem).
    pub fn add_archive(&mut self, origin: &Path, archive: &[u8]) -> Result<()> {
        let malformed = |reason: String| Error::MalformedArchive { path: origin.to_path_buf(), reason };
        let mut index = None;
        let mut blobs = HashMap::new();
        let mut tar = tar::Archive::new(archive);
        for entry in tar.entries().map_err(|e| malformed(e.to_string()))? {
            let mut entry = entry.map_err(|e| malformed(e.to_string()))?;
            let path = entry.path().map_err(|e| malformed(e.to_string()))?.to_string_lossy().trim_start_matches("./").to_string();
            if path == "index.json" {
                let mut text = Vec::new();
                entry.read_to_end(&mut text).map_err(|e| malformed(e.to_string()))?;
                index = Some(serde_json::from_slice::<Value>(&text).map_err(|e| malformed(format!("index.json: {e}")))?);
            } else if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty() && !h.contains('/')) {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).map_err(|e| malformed(e.to_string()))?;
                let digest = sha256_digest(&bytes);
                if digest != format!("sha256:{hex}") {
                    return Err(malformed(format!("blob {hex} has digest {digest}")));
                }
                blobs.insert(digest, Bytes::from(bytes));
            }
        }
        let index = index.ok_or_else(|| malformed("no index.json".into()))?;
        let stem = origin.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
        for descriptor in index["manifests"].as_array().ok_or_else(|| malformed("index.json has no manifests".into()))? {
            let annotations = &descriptor["annotations"];
            let reference = annotations[ANNOTATION_CONTAINERD_NAME].as_str().or_else(|| annotations[ANNOTATION_REF_NAME].as_str());
            let Some(reference) = reference else { continue };
            let (name, tag) = match repository_and_tag(reference) {
                Some(found) => found,
                None if !reference.contains('/') && !reference.contains(':') => (stem.clone(), reference.to_string()),
                None => return Err(malformed(format!("{reference:?} has no tag"))),
            };
            if !valid_name(&name) {
                return Err(malformed(format!("{name:?} is not a valid repository name")));
            }
            let digest = descriptor["digest"].as_str().ok_or_else(|| malformed("a manifest descriptor has no digest".into()))?.to_string();
            let mut repository = std::mem::take(self.repositories.entry(name.clone()).or_default());
            let result = self.add_manifest(&mut repository, &blobs, &digest, descriptor["mediaType"].as_str(), &malformed);
            repository.tags.insert(tag, digest);
            self.repositories.insert(name, repository);
            result?;
        }
        Ok(())
    }

    /// Records a manifest (or index) and everything it references as part of `repository`.
    fn add_manifest(&mut self, repository: &mut Repository, blobs: &HashMap<String, Bytes>, digest: &str, media_type: Option<&str>, malformed: &dyn Fn(String) -> Error) -> Result<()> {
        let bytes = blobs.get(digest).ok_or_else(|| malformed(format!("manifest {digest} is missing")))?.clone();
        let manifest: Value = serde_json::from_slice(&bytes).map_err(|e| malformed(format!("manifest {digest}: {e}")))?;
        let media_type = manifest["mediaType"].as_str().or(media_type).unwrap_or(if manifest.get("manifests").is_some() { MEDIA_TYPE_INDEX } else { MEDIA_TYPE_MANIFEST });
        self.media_types.insert(digest.to_string(), media_type.to_string());
        self.blobs.insert(digest.to_string(), bytes);
        repository.manifests.insert(digest.to_string());
        if let Some(children) = manifest["manifests"].as_array() {
            for child in children {
                let child_digest = child["digest"].as_str().ok_or_else(|| malformed(format!("an entry of index {digest} has no digest")))?;
                self.add_manifest(repository, blobs, child_digest, child["mediaType"].as_str(), malformed)?;
            }
            return Ok(());
        }
        for descriptor in std::iter::once(&manifest["config"]).chain(manifest["layers"].as_array().into_iter().flatten()) {
            let blob_digest = descriptor["digest"].as_str().ok_or_else(|| malformed(format!("manifest {digest} lacks a config or layer digest")))?;
            let blob = blobs.get(blob_digest).ok_or_else(|| malformed(format!("blob {blob_digest} of manifest {digest} is missing")))?;
            self.blobs.insert(blob_digest.to_string(), blob.clone());
            repository.blobs.insert(blob_digest.to_string());
        }
        Ok(())
    }

    /// `name:tag` of everything served.
    pub fn references(&self) -> Vec<String> {
        self.repositories.iter().flat_map(|(name, repo)| repo.tags.keys().map(move |tag| format!("{name}:{tag}"))).collect()
    }
}

/// The server's state: content and the credentials it requires, if any.
pub struct Registry {
    content: Content,
    /// The accepted `Authorization` header value (`Basic base64(user:password)`).
    authorization: Option<String>,
}

fn response(status: StatusCode, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("Docker-Distribution-API-Version", HeaderValue::from_static("registry/2.0"));
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    response
}

/// A distribution-spec error: `{"errors": [{"code", "message", "detail"}]}`.
fn error(status: StatusCode, code: &str, message: &str, detail: Value) -> Response<Full<Bytes>> {
    let body = json!({"errors": [{"code": code, "message": message, "detail": detail}]});
    response(status, "application/json; charset=utf-8", Bytes::from(body.to_string()))
}

fn content_response(body: &Bytes, content_type: &str, digest: &str) -> Response<Full<Bytes>> {
    let mut response = response(StatusCode::OK, content_type, body.clone());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Ok(value) = HeaderValue::from_str(digest) {
        headers.insert("Docker-Content-Digest", value);
    }
    response
}

impl Registry {
    /// `credentials` is `user:password` to require basic auth.
    pub fn new(content: Content, credentials: Option<&str>) -> Self {
        let authorization = credentials.map(|c| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(c)));
        Self { content, authorization }
    }

    pub fn content(&self) -> &Content {
        &self.content
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.authorization else { return true };
        let given = headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes).unwrap_or_default();
        // Compared in full whatever the first difference, so timing says nothing about it.
        given.len() == expected.len() && given.iter().zip(expected.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Answers one request (bodies of HEAD answers are dropped by the HTTP layer, which keeps
    /// their Content-Length).
    pub fn handle(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let Some(rest) = path.strip_prefix("/v2") else {
            return error(StatusCode::NOT_FOUND, "NOT_FOUND", "not found", Value::Null);
        };
        if !self.authorized(headers) {
            let mut response = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required", Value::Null);
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"berth-registry\""));
            return response;
        }
        if method != Method::GET && method != Method::HEAD {
            return error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "The operation is unsupported.", json!({"method": method.as_str()}));
        }
        if rest.is_empty() || rest == "/" {
            return response(StatusCode::OK, "application/json; charset=utf-8", Bytes::from_static(b"{}"));
        }
        let rest = &rest[1..];
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return self.with_repository(name, |repo| {
                let body = json!({"name": name, "tags": repo.tags.keys().collect::<Vec<_>>()});
                response(StatusCode::OK, "application/json; charset=utf-8", Bytes::from(body.to_string()))
            });
        }
        if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
            return self.with_repository(name, |repo| {
                let digest = if reference.starts_with("sha256:") { repo.manifests.get(reference) } else { repo.tags.get(reference) };
                match digest.and_then(|d| Some((d, self.content.blobs.get(d)?))) {
                    Some((digest, bytes)) => {
                        let media_type = self.content.media_types.get(digest).map(String::as_str).unwrap_or(MEDIA_TYPE_MANIFEST);
                        content_response(bytes, media_type, digest)
                    }
                    None => error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "manifest unknown", json!({"name": name, "reference": reference})),
                }
            });
        }
        if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
            return self.with_repository(name, |repo| match repo.blobs.get(digest).or_else(|| repo.manifests.get(digest)).and_then(|d| self.content.blobs.get(d)) {
                Some(bytes) => content_response(bytes, "application/octet-stream", digest),
                None => error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown to registry", json!({"digest": digest})),
            });
        }
        error(StatusCode::NOT_FOUND, "NOT_FOUND", "not found", Value::Null)
    }

    fn with_repository(&self, name: &str, answer: impl FnOnce(&Repository) -> Response<Full<Bytes>>) -> Response<Full<Bytes>> {
        if !valid_name(name) {
            return error(StatusCode::BAD_REQUEST, "NAME_INVALID", "invalid repository name", json!({"name": name}));
        }
        match self.content.repositories.get(name) {
            Some(repo) => answer(repo),
            None => error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "repository name not known to registry", json!({"name": name})),
        }
    }
}

/// Serves `registry` on `listener` over plain HTTP/1.1 until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors or a connection reset before it was taken: passing conditions.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = registry.handle(request.method(), request.uri().path(), request.headers());
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ImageBuilder;

    fn registry(credentials: Option<&str>) -> (Registry, crate::Archive) {
        let mut image = ImageBuilder::new("berth.dev/test/hello:2").unwrap();
        image.file_bytes("hello", "/greeting", 0o644).unwrap();
        let archive = image.build().unwrap();
        let mut content = Content::default();
        content.add_archive(Path::new("/x/hello.tar"), &archive.bytes).unwrap();
        (Registry::new(content, credentials), archive)
    }

    fn get(registry: &Registry, method: Method, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        let response = registry.handle(&method, path, &HeaderMap::new());
        let (parts, body) = response.into_parts();
        let bytes = ready_bytes(body);
        (parts.status, parts.headers, bytes)
    }

    /// Full bodies are ready at once: poll them without a runtime.
    fn ready_bytes(body: Full<Bytes>) -> Bytes {
        use hyper::body::Body;
        let mut body = std::pin::pin!(body);
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        match body.as_mut().poll_frame(&mut context) {
            std::task::Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
            _ => Bytes::new(),
        }
    }

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(repository_and_tag("berth.dev/busybox:1"), Some(("busybox".into(), "1".into())));
        assert_eq!(repository_and_tag("127.0.0.1:5000/a/b:v2"), Some(("a/b".into(), "v2".into())));
        assert_eq!(repository_and_tag("library/busybox:1.36@sha256:abc"), Some(("library/busybox".into(), "1.36".into())));
        assert_eq!(repository_and_tag("registry:5000/x"), None);
        assert!(valid_name("test/hello") && !valid_name("Test") && !valid_name("a//b") && !valid_name("-a"));
    }

    #[test]
    fn manifests_and_blobs_by_tag_and_digest() {
        let (registry, archive) = registry(None);
        assert_eq!(registry.content().references(), ["test/hello:2"]);
        let (status, headers, body) = get(&registry, Method::GET, "/v2/");
        assert_eq!((status, body.as_ref()), (StatusCode::OK, b"{}".as_ref()));
        assert_eq!(headers["Docker-Distribution-API-Version"], "registry/2.0");

        let (status, headers, manifest) = get(&registry, Method::GET, "/v2/test/hello/manifests/2");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], MEDIA_TYPE_MANIFEST);
        assert_eq!(headers["Docker-Content-Digest"], archive.manifest_digest.as_str());
        assert_eq!(sha256_digest(&manifest), archive.manifest_digest);
        let (status, headers, _) = get(&registry, Method::HEAD, &format!("/v2/test/hello/manifests/{}", archive.manifest_digest));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_LENGTH], manifest.len().to_string().as_str());

        for digest in [&archive.config_digest, &archive.layer_digest] {
            let (status, headers, blob) = get(&registry, Method::GET, &format!("/v2/test/hello/blobs/{digest}"));
            assert_eq!(status, StatusCode::OK);
            assert_eq!(&sha256_digest(&blob), digest);
            assert_eq!(headers["Docker-Content-Digest"], digest.as_str());
        }
        let (_, _, tags) = get(&registry, Method::GET, "/v2/test/hello/tags/list");
        assert_eq!(serde_json::from_slice::<Value>(&tags).unwrap(), json!({"name": "test/hello", "tags": ["2"]}));

        let code = |path: &str| {
            let (status, _, body) = get(&registry, Method::GET, path);
            (status.as_u16(), serde_json::from_slice::<Value>(&body).map(|v| v["errors"][0]["code"].clone()).unwrap_or_default())
        };
        assert_eq!(code("/v2/test/hello/manifests/3"), (404, json!("MANIFEST_UNKNOWN")));
        assert_eq!(code("/v2/other/manifests/2"), (404, json!("NAME_UNKNOWN")));
        assert_eq!(code("/v2/test/hello/blobs/sha256:0000"), (404, json!("BLOB_UNKNOWN")));
        assert_eq!(code("/v2/Test/manifests/2"), (400, json!("NAME_INVALID")));
        let (status, _, _) = get(&registry, Method::PUT, "/v2/test/hello/manifests/2");
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn credentials_are_required_when_configured() {
        let (registry, _) = registry(Some("puller:s3cret"));
        let (status, headers, body) = get(&registry, Method::GET, "/v2/test/hello/manifests/2");
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Basic realm=\"berth-registry\"");
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["errors"][0]["code"], "UNAUTHORIZED");
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic cHVsbGVyOnMzY3JldA=="));
        assert_eq!(registry.handle(&Method::GET, "/v2/test/hello/manifests/2", &headers).status(), StatusCode::OK);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic cHVsbGVyOndyb25n"));
        assert_eq!(registry.handle(&Method::GET, "/v2/", &headers).status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn archives_with_bad_blobs_are_refused() {
        let (_, archive) = registry(None);
        let mut bytes = archive.bytes.clone();
        let position = {
            let mut tar = tar::Archive::new(archive.bytes.as_slice());
            let mut entries = tar.entries().unwrap();
            let blob = entries.find(|e| e.as_ref().is_ok_and(|e| e.header().entry_type().is_file())).unwrap().unwrap();
            blob.raw_file_position() as usize
        };
        bytes[position] ^= 0xff;
        let result = Content::default().add_archive(Path::new("/x/bad.tar"), &bytes);
        assert!(matches!(&result, Err(Error::MalformedArchive { reason, .. }) if reason.contains("has digest")), "{:?}", result.err());
    }
}
