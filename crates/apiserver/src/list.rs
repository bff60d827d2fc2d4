//! LIST and DELETECOLLECTION: consistent, paginated reads with label and field selectors, written
//! out as the kind's List (built from the stored bytes, without re-encoding each object) or as a
//! Table.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::Response;
use serde_json::{Value, json};
use store::{KeyValue, Revision};

use crate::api::{Api, DeleteOptions, Deleted};
use crate::http::{Body, Format, Query, Server, bytes_response, render};
use crate::objects;
use crate::projection::Paths;
use crate::selection as selectors;
use crate::printers as tables;
use crate::resources::ResourceDef;
use crate::status::{ApiError, ApiResult};

/// Label and field selectors of a request, checked up front so a bad one is a 400 before any read.
pub struct Filter {
    labels: Option<selectors::LabelSelector>,
    fields: Option<selectors::FieldSelector>,
    group: String,
    kind: String,
    /// A custom resource's selectableFields.
    custom_fields: Vec<String>,
    /// Every path a selector of this kind can read: what a partial decode must keep.
    selectable: Arc<Paths>,
}

impl Filter {
    pub fn from_query(def: &ResourceDef, query: &Query) -> ApiResult<Self> {
        let labels = match query.get("labelSelector").filter(|s| !s.trim().is_empty()) {
            Some(s) => Some(selectors::LabelSelector::parse(s).map_err(|e| {
                let message = e.to_string();
                ApiError::bad_request(if message.starts_with("unable to parse requirement") { message } else { format!("unable to parse requirement: {message}") })
            })?),
            None => None,
        };
        let fields = match query.get("fieldSelector").filter(|s| !s.trim().is_empty()) {
            Some(s) => {
                let sel = selectors::FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?;
                for field in sel.fields() {
                    if !def.selectable_fields.iter().any(|f| f == field) {
                        selectors::validate_field(&def.group, &def.kind, field).map_err(|e| ApiError::bad_request(e.to_string()))?;
                    }
                }
                Some(sel)
            }
            None => None,
        };
        let selectable = Paths::new(
            ["metadata.name", "metadata.namespace", "metadata.labels"]
                .into_iter()
                .chain(selectors::kind_fields(&def.group, &def.kind).iter().copied())
                .chain(def.selectable_fields.iter().map(String::as_str)),
        );
        Ok(Self { labels, fields, group: def.group.clone(), kind: def.kind.clone(), custom_fields: def.selectable_fields.clone(), selectable: Arc::new(selectable) })
    }

    pub fn with_name(mut self, name: &str) -> ApiResult<Self> {
        let by_name = selectors::FieldSelector::parse(&format!("metadata.name={name}")).map_err(|e| ApiError::bad_request(e.to_string()))?;
        self.fields = Some(match self.fields.take() {
            Some(existing) => existing.and(by_name),
            None => by_name,
        });
        Ok(self)
    }

    pub fn is_everything(&self) -> bool {
        self.labels.is_none() && self.fields.is_none()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(labels) = &self.labels {
            let empty = serde_json::Map::new();
            if !labels.matches(objects::labels(obj).unwrap_or(&empty)) {
                return false;
            }
        }
        if let Some(fields) = &self.fields {
            let group = &self.group;
            let kind = &self.kind;
            let value_of = |f: &str| {
                if self.custom_fields.iter().any(|c| c == f) {
                    selectors::path_value(obj, f)
                } else {
                    selectors::field_value(group, kind, obj, f).ok().flatten()
                }
            };
            if !fields.matches(value_of) {
                return false;
            }
        }
        true
    }

    /// The paths `matches` may read, for deciding on a partial decode of the object.
    pub fn selectable_paths(&self) -> &Paths {
        &self.selectable
    }

    /// Matches stored bytes, parsing only when a selector needs the object, and then only the
    /// fields selectors read.
    pub fn matches_kv(&self, kv: &KeyValue) -> bool {
        if self.is_everything() {
            return true;
        }
        match crate::projection::project(&kv.value, &self.selectable) {
            Ok(obj) => self.matches(&obj),
            Err(_) => false,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: Revision,
    start: String,
}

fn encode_continue(rv: Revision, start: &str) -> String {
    let raw = serde_json::to_vec(&ContinueToken { rv, start: start.to_string() }).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str, prefix: &str) -> ApiResult<ContinueToken> {
    let bad = || ApiError::bad_request("continue key is not valid: the token is malformed");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).map_err(|_| bad())?;
    let token: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if !token.start.starts_with(prefix) {
        return Err(ApiError::bad_request("continue key is not valid: it does not belong to this list"));
    }
    Ok(token)
}

/// The revision a list reads at, following upstream's resourceVersion / resourceVersionMatch rules.
fn read_revision(api: &Api, query: &Query, limited: bool) -> ApiResult<Option<Revision>> {
    let rv = query.get("resourceVersion").unwrap_or("");
    let matching = query.get("resourceVersionMatch").unwrap_or("");
    if !matching.is_empty() && rv.is_empty() {
        return Err(ApiError::bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided"));
    }
    if rv.is_empty() || rv == "0" {
        if matching == "Exact" && rv == "0" {
            return Err(ApiError::bad_request("resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\""));
        }
        return Ok(None);
    }
    let wanted: Revision = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
    match matching {
        "Exact" => Ok(Some(wanted)),
        "" if limited => Ok(Some(wanted)),
        "" | "NotOlderThan" => {
            let current = api.store.current_revision();
            if wanted > current {
                return Err(store::StoreError::FutureRevision { requested: wanted, current }.into());
            }
            Ok(None)
        }
        other => Err(ApiError::bad_request(format!("resourceVersionMatch {other:?} is not supported; use Exact or NotOlderThan"))),
    }
}

/// A page of matching objects.
pub struct Page {
    pub items: Vec<KeyValue>,
    pub revision: Revision,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

pub async fn read_page(api: &Api, def: &ResourceDef, namespace: Option<&str>, query: &Query, filter: &Filter) -> ApiResult<Page> {
    let prefix = match namespace {
        Some(ns) if def.namespaced => def.namespace_prefix(ns),
        _ => def.key_prefix(),
    };
    let limit: usize = match query.get("limit") {
        Some(l) if !l.is_empty() => l.parse().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        _ => 0,
    };
    let (mut revision, mut start_after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            if query.get("resourceVersion").is_some_and(|rv| !rv.is_empty() && rv != "0") {
                return Err(ApiError::bad_request("specifying resource version is not allowed when using continue"));
            }
            let token = decode_continue(token, &prefix)?;
            (Some(token.rv), Some(token.start))
        }
        None => (read_revision(api, query, limit > 0)?, None),
    };
    let mut items = Vec::new();
    loop {
        // Pages are read in chunks so that selective filters still fill a page without reading
        // everything at once.
        let chunk = match limit {
            0 => 0,
            _ if filter.is_everything() => limit - items.len(),
            _ => (limit - items.len()).max(64),
        };
        let resp = match api.range(def, prefix.clone(), start_after.clone(), chunk, revision).await {
            Ok(resp) => resp,
            Err(e) if e.code == 410 && query.get("continue").is_some() => {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            Err(e) => return Err(e),
        };
        revision = Some(resp.revision);
        let count = resp.kvs.len();
        let mut last_key = None;
        let mut unconsumed = 0;
        for (i, kv) in resp.kvs.into_iter().enumerate() {
            last_key = Some(kv.key.to_string());
            if filter.matches_kv(&kv) {
                items.push(kv);
                if limit > 0 && items.len() == limit {
                    unconsumed = count - i - 1;
                    break;
                }
            }
        }
        let left = resp.remaining + unconsumed;
        if limit > 0 && items.len() == limit {
            let continue_token = (left > 0).then(|| encode_continue(resp.revision, items.last().map(|kv| kv.key.as_ref()).unwrap_or("")));
            let remaining = (left > 0 && filter.is_everything()).then_some(left);
            return Ok(Page { items, revision: resp.revision, continue_token, remaining });
        }
        if resp.remaining == 0 {
            return Ok(Page { items, revision: resp.revision, continue_token: None, remaining: None });
        }
        start_after = last_key;
    }
}

pub async fn serve(server: &Arc<Server>, def: &ResourceDef, namespace: Option<&str>, query: &Query, format: Format) -> ApiResult<Response<Body>> {
    let filter = Filter::from_query(def, query)?;
    let page = read_page(&server.api, def, namespace, query, &filter).await?;
    if format == Format::Table {
        let table = table_of(def, &page.items, query, Some(&page))?;
        return Ok(crate::http::json_response(200, &table));
    }
    if format == Format::Metadata {
        let items: Vec<Value> = page.items.iter().map(|kv| objects::decode(kv).map(|o| crate::http::partial_metadata(&o))).collect::<Result<_, _>>().map_err(ApiError::internal)?;
        let mut meta = json!({"resourceVersion": page.revision.to_string()});
        if let Some(c) = &page.continue_token {
            meta["continue"] = json!(c);
        }
        let list = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items});
        return Ok(crate::http::json_response(200, &list));
    }
    let body = list_bytes(def, &page);
    if format == Format::Json {
        return Ok(bytes_response(200, body, "application/json"));
    }
    let value: Value = serde_json::from_slice(&body).map_err(ApiError::internal)?;
    Ok(render(200, &value, format))
}

/// `{"kind":"PodList",...,"items":[...]}` assembled from stored bytes.
pub fn list_bytes(def: &ResourceDef, page: &Page) -> Bytes {
    let mut meta = json!({"resourceVersion": page.revision.to_string()});
    if let Some(c) = &page.continue_token {
        meta["continue"] = json!(c);
    }
    if let Some(r) = page.remaining {
        meta["remainingItemCount"] = json!(r);
    }
    let size: usize = page.items.iter().map(|kv| kv.value.len() + 40).sum();
    let mut out = Vec::with_capacity(size + 256);
    out.extend_from_slice(format!("{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[", def.list_kind, def.api_version(), meta).as_bytes());
    for (i, kv) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        objects::write_with_resource_version(&mut out, &kv.value, kv.mod_revision);
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

/// The metav1 Table for `items`, as `kubectl get` asks for.
pub fn table_of(def: &ResourceDef, items: &[KeyValue], query: &Query, page: Option<&Page>) -> ApiResult<Value> {
    let objects: Vec<Value> = items.iter().map(objects::decode).collect::<Result<_, _>>().map_err(ApiError::internal)?;
    let refs: Vec<&Value> = objects.iter().collect();
    let include = match query.get("includeObject") {
        None | Some("") | Some("Metadata") => tables::IncludeObject::Metadata,
        Some("None") => tables::IncludeObject::None,
        Some("Object") => tables::IncludeObject::Object,
        Some(other) => return Err(ApiError::bad_request(format!("includeObject {other:?} is not supported; use None, Metadata or Object"))),
    };
    let options = tables::TableOptions {
        include_object: include,
        resource_version: page.map(|p| p.revision.to_string()),
        continue_token: page.and_then(|p| p.continue_token.clone()),
        remaining_item_count: page.and_then(|p| p.remaining.map(|r| r as i64)),
        printer_columns: def.printer_columns.as_deref().cloned(),
        no_headers: false,
    };
    Ok(tables::table_for((&def.group, &def.kind), &refs, &options, jiff::Timestamp::now()))
}

pub async fn delete_collection(server: &Arc<Server>, def: &ResourceDef, namespace: Option<&str>, query: &Query, opts: &DeleteOptions, format: Format) -> ApiResult<Response<Body>> {
    let filter = Filter::from_query(def, query)?;
    let page = read_page(&server.api, def, namespace, &Query::parse(None), &filter).await?;
    let mut deleted = Vec::new();
    for kv in &page.items {
        let obj: Value = serde_json::from_slice(&kv.value).map_err(ApiError::internal)?;
        let ns = objects::meta_str(&obj, "namespace").map(str::to_string);
        match server.api.delete(def, ns.as_deref(), objects::name(&obj), opts).await {
            Ok(Deleted::Gone(o) | Deleted::Pending(o)) => deleted.push(o),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({"kind": def.list_kind, "apiVersion": def.api_version(), "metadata": {"resourceVersion": server.api.store.current_revision().to_string()}, "items": deleted});
    Ok(render(200, &list, if matches!(format, Format::Table | Format::Metadata) { Format::Json } else { format }))
}
