//! WATCH: a stream of `{"type": ..., "object": ...}` lines, one per change, over a chunked (HTTP/1.1)
//! or streamed (HTTP/2) response, with upstream's start-point rules, selector transitions
//! (an object that stops matching is DELETED for this watcher), bookmarks, and 410 for a start
//! revision that was compacted.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use store::{EventKind, Revision};
use tokio::sync::mpsc;

use crate::cacher::{CachedEvent, WatchType};
use crate::conversion::Conversion;
use crate::http::{Body, Format, Query, Server};
use crate::list::Filter;
use crate::objects;
use crate::printers as tables;
use crate::resources::ResourceDef;
use crate::status::{ApiError, ApiResult};

const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);
/// Upstream's default `--min-request-timeout`; each watch ends after a random time between one
/// and two times it unless the client asks for less, spreading reconnections.
const DEFAULT_TIMEOUT_SECS: u64 = 1800;

pub async fn serve_one(server: &Arc<Server>, def: &ResourceDef, ns: Option<&str>, name: &str, query: &Query, format: Format) -> ApiResult<Response<Body>> {
    let filter = Filter::from_query(def, query)?.with_name(name)?;
    start(server, def, ns, query, format, filter).await
}

pub async fn serve(server: &Arc<Server>, def: &ResourceDef, ns: Option<&str>, query: &Query, format: Format) -> ApiResult<Response<Body>> {
    let filter = Filter::from_query(def, query)?;
    start(server, def, ns, query, format, filter).await
}

struct WatchParams {
    bookmarks: bool,
    initial_events: bool,
    initial_events_end: bool,
    start: Option<Revision>,
    timeout: Duration,
}

fn params(query: &Query) -> ApiResult<WatchParams> {
    let rv = query.get("resourceVersion").unwrap_or("");
    let send_initial = match query.get("sendInitialEvents") {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => return Err(ApiError::bad_request(format!("invalid sendInitialEvents {other:?}"))),
    };
    let matching = query.get("resourceVersionMatch").unwrap_or("");
    if send_initial.is_some() && matching != "NotOlderThan" {
        return Err(ApiError::bad_request("sendInitialEvents is forbidden unless resourceVersionMatch is NotOlderThan"));
    }
    let start = if rv.is_empty() || rv == "0" { None } else { Some(rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?) };
    let bookmarks = query.flag("allowWatchBookmarks");
    // Without a start revision a watch first lists what exists ("get state and start at most
    // recent"), unless the client opts out with sendInitialEvents=false.
    let initial_events = send_initial.unwrap_or(start.is_none());
    let timeout = match query.get("timeoutSeconds") {
        Some(t) if !t.is_empty() => Duration::from_secs(t.parse().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?),
        _ => Duration::from_secs(DEFAULT_TIMEOUT_SECS + fastrand::u64(0..DEFAULT_TIMEOUT_SECS)),
    };
    Ok(WatchParams { bookmarks, initial_events, initial_events_end: send_initial == Some(true) && bookmarks, start, timeout })
}

async fn start(server: &Arc<Server>, def: &ResourceDef, ns: Option<&str>, query: &Query, format: Format, filter: Filter) -> ApiResult<Response<Body>> {
    let params = params(query)?;
    let api = server.api.clone();
    let prefix = match ns {
        Some(ns) if def.namespaced => def.namespace_prefix(ns),
        _ => def.key_prefix(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let def = Arc::new(def.clone());
    let mut encoder = Encoder { def: def.clone(), format, first: true };

    // Decide the start point now, so a bad or compacted revision still gets a proper answer.
    let mut initial = Vec::new();
    let after = if params.initial_events {
        let snapshot = api.range(&def, prefix.clone(), None, 0, None).await?;
        for kv in snapshot.kvs {
            let obj = objects::decode(&kv).map_err(ApiError::internal)?;
            if filter.matches(&obj) {
                initial.push(obj);
            }
        }
        snapshot.revision
    } else {
        params.start.unwrap_or_else(|| api.store.current_revision())
    };
    let watch = api.watch_cache.watch(&def.key_prefix(), &prefix, after);
    server.metrics.watch_started(&def.plural);
    let metrics = server.metrics.clone();
    let resource = def.plural.clone();
    tokio::spawn(async move {
        let _guard = WatchCount { metrics, resource };
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(encoder.error(&ApiError::from(e))).await;
                return;
            }
        };
        for obj in initial {
            if tx.send(encoder.event("ADDED", &obj)).await.is_err() {
                return;
            }
        }
        let mut last_sent = after;
        if params.initial_events_end {
            let bookmark = encoder.bookmark(last_sent, true);
            if tx.send(bookmark).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(params.timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if params.bookmarks => {
                    if tx.send(encoder.bookmark(last_sent, false)).await.is_err() {
                        return;
                    }
                }
                next = watch.next() => {
                    let Some(next) = next else { return };
                    let event = match next {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = tx.send(encoder.error(&ApiError::from(e))).await;
                            return;
                        }
                    };
                    last_sent = event.revision();
                    let Some(frame) = translate(&event, &filter, &mut encoder) else { continue };
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx)) });
    let body: Body = BodyExt::boxed_unsync(StreamBody::new(stream.boxed()));
    let mut resp = Response::new(body);
    let content_type = if format == Format::Table { "application/json;as=Table;v=v1;g=meta.k8s.io" } else { "application/json" };
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    Ok(resp)
}

struct WatchCount {
    metrics: Arc<crate::metrics::Metrics>,
    resource: String,
}

impl Drop for WatchCount {
    fn drop(&mut self) {
        self.metrics.watch_ended(&self.resource);
    }
}

/// Turns a store change into this watcher's event, applying selector transitions.
fn translate(event: &CachedEvent, filter: &Filter, encoder: &mut Encoder) -> Option<Bytes> {
    let def = encoder.def.clone();
    if def.conversion == Conversion::None && matches!(encoder.format, Format::Json | Format::Metadata) {
        // The common cases: lines built once per event for all watchers from the stored bytes,
        // and selectors matched against a partial decode shared by all filtered watchers.
        let line = |kind: WatchType| if encoder.format == Format::Json { event.json_line(kind) } else { event.metadata_line(kind) };
        if filter.is_everything() {
            return Some(line(event.natural_type()));
        }
        let paths = filter.selectable_paths();
        let now = event.selectable(paths).is_some_and(|o| filter.matches(o));
        return match event.event.kind {
            EventKind::Put => {
                let had_prev = event.event.prev.is_some();
                let before = had_prev && event.selectable_prev(paths).is_some_and(|p| filter.matches(p));
                match (before, now, had_prev) {
                    (_, true, false) | (false, true, true) => Some(line(WatchType::Added)),
                    (true, true, true) => Some(line(WatchType::Modified)),
                    (true, false, _) => Some(line(WatchType::Deleted)),
                    (false, false, _) => None,
                }
            }
            EventKind::Delete => now.then(|| line(WatchType::Deleted)),
        };
    }
    // Borrowed from the shared event unless this version needs a converted copy.
    fn served<'a>(def: &ResourceDef, obj: Option<&'a Value>) -> Option<Cow<'a, Value>> {
        let obj = obj?;
        Some(if def.conversion == Conversion::None { Cow::Borrowed(obj) } else { Cow::Owned(def.from_storage(obj.clone())) })
    }
    let served = |obj| served(&def, obj);
    // Stored bytes serve as they are when only the event type depends on this watcher.
    let as_stored = encoder.format == Format::Json && def.conversion == Conversion::None;
    let mut emit = |kind: WatchType, obj: &Value| if as_stored { event.json_line(kind) } else { encoder.event(kind.as_str(), obj) };
    match event.event.kind {
        EventKind::Put => {
            let obj = served(event.object())?;
            let now = filter.matches(&obj);
            let had_prev = event.event.prev.is_some();
            let before = had_prev && served(event.prev()).is_some_and(|p| filter.matches(&p));
            match (before, now, had_prev) {
                (_, true, false) | (false, true, true) => Some(emit(WatchType::Added, &obj)),
                (true, true, true) => Some(emit(WatchType::Modified, &obj)),
                (true, false, _) => Some(emit(WatchType::Deleted, &obj)),
                (false, false, _) => None,
            }
        }
        EventKind::Delete => {
            let obj = served(event.object())?;
            filter.matches(&obj).then(|| emit(WatchType::Deleted, &obj))
        }
    }
}

struct Encoder {
    def: Arc<ResourceDef>,
    format: Format,
    first: bool,
}

impl Encoder {
    fn line(value: &Value) -> Bytes {
        let mut out = serde_json::to_vec(value).unwrap_or_default();
        out.push(b'\n');
        Bytes::from(out)
    }

    fn event(&mut self, kind: &str, obj: &Value) -> Bytes {
        let object = if self.format == Format::Table {
            let options = tables::TableOptions {
                include_object: tables::IncludeObject::Metadata,
                resource_version: None,
                continue_token: None,
                remaining_item_count: None,
                printer_columns: self.def.printer_columns.as_deref().cloned(),
                no_headers: !self.first,
            };
            self.first = false;
            tables::table_for((&self.def.group, &self.def.kind), &[obj], &options, jiff::Timestamp::now())
        } else if self.format == Format::Metadata {
            crate::http::partial_metadata(obj)
        } else {
            obj.clone()
        };
        Self::line(&json!({"type": kind, "object": object}))
    }

    fn bookmark(&self, revision: Revision, initial_events_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_events_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        Self::line(&json!({"type": "BOOKMARK", "object": {"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": meta}}))
    }

    fn error(&self, err: &ApiError) -> Bytes {
        Self::line(&json!({"type": "ERROR", "object": err.to_status()}))
    }
}
