//! PATCH in its four upstream forms: JSON Patch, JSON Merge Patch, strategic merge patch (with
//! merge keys from the served OpenAPI schema) and server-side apply.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::api::{Part, WriteOptions, Written};
use crate::http::Server;
use crate::objects;
use crate::resources::ResourceDef;
use crate::status::{ApiError, ApiResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str, def_custom: bool) -> ApiResult<Self> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        let t = match media {
            "application/json-patch+json" => Self::Json,
            "application/merge-patch+json" => Self::Merge,
            "application/strategic-merge-patch+json" => Self::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+json" => Self::Apply,
            other => {
                return Err(ApiError::unsupported_media_type_patch(other, def_custom));
            }
        };
        if t == Self::Strategic && def_custom {
            return Err(ApiError::unsupported_media_type_patch(media, true));
        }
        Ok(t)
    }
}

impl ApiError {
    fn unsupported_media_type_patch(media: &str, custom: bool) -> ApiError {
        let accepted = if custom {
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
        } else {
            "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
        };
        let mut e = ApiError::unsupported_media_type(media);
        e.message = format!("the body of the request was in an unknown format - accepted media types include: {accepted}");
        e
    }
}

/// Upstream's code for each patch failure (400 malformed, 422 inapplicable, 500 otherwise), with
/// the matching reason.
fn patch_error(e: patch::PatchError) -> ApiError {
    let message = e.to_string();
    match e.status_code() {
        400 => ApiError::bad_request(message),
        422 => {
            let mut err = ApiError::bad_request(message);
            err.code = 422;
            err.reason = "Invalid";
            err
        }
        _ => ApiError::internal(message),
    }
}

/// What a patch is applied to: the schema's definition name in the served OpenAPI, and the
/// served group/version, kind and subresource (server-side apply checks and records them).
pub struct Target<'a> {
    pub definition: &'a str,
    pub api_version: &'a str,
    pub kind: &'a str,
    pub subresource: &'a str,
}

/// Applies a patch body to `current` (a whole object, or a Scale).
pub fn apply_to(server: &Server, target: &Target<'_>, current: &Value, content_type: &str, raw: &[u8], opts: &WriteOptions) -> ApiResult<Value> {
    let kind = PatchType::from_content_type(content_type, false)?;
    apply_patch(server, target, Some(current), kind, raw, opts)
}

fn apply_error(e: patch::apply::ApplyError) -> ApiError {
    match &e {
        patch::apply::ApplyError::Conflicts(conflicts) => {
            let mut err = ApiError::bad_request(e.to_string());
            err.code = 409;
            err.reason = "Conflict";
            let causes: Vec<Value> = conflicts.iter().map(|c| json!({"reason": "FieldManagerConflict", "message": c.message(), "field": c.field})).collect();
            err.details = Some(json!({"causes": causes}));
            err
        }
        patch::apply::ApplyError::BadRequest(m) => ApiError::bad_request(m.clone()),
        _ => ApiError::internal(e),
    }
}

fn apply_patch(server: &Server, target: &Target<'_>, current: Option<&Value>, kind: PatchType, raw: &[u8], opts: &WriteOptions) -> ApiResult<Value> {
    let definition = target.definition;
    let parse_json = |raw: &[u8]| -> ApiResult<Value> { serde_json::from_slice(raw).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}"))) };
    match kind {
        PatchType::Json => {
            let ops = parse_json(raw)?;
            let current = current.ok_or_else(|| ApiError::not_found_path(""))?;
            patch::json_patch(current, &ops).map_err(patch_error)
        }
        PatchType::Merge => {
            let p = parse_json(raw)?;
            if !p.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let current = current.ok_or_else(|| ApiError::not_found_path(""))?;
            patch::json_merge_patch(current, &p).map_err(patch_error)
        }
        PatchType::Strategic => {
            let p = parse_json(raw)?;
            let current = current.ok_or_else(|| ApiError::not_found_path(""))?;
            let doc = server.openapi.schema_document();
            match patch::OpenApiSchema::new(&doc, definition) {
                Some(schema) => patch::strategic_merge_patch(current, &p, &schema),
                None => patch::strategic_merge_patch(current, &p, &patch::NoSchema),
            }
            .map_err(patch_error)
        }
        PatchType::Apply => {
            let applied = crate::http::decode_object("application/yaml", raw)?;
            let manager = opts.field_manager.as_deref().filter(|m| !m.is_empty()).ok_or_else(|| {
                ApiError::bad_request("PATCH requests with the apply content type require a fieldManager query parameter")
            })?;
            let doc = server.openapi.schema_document();
            let now = objects::now_rfc3339();
            let options = patch::apply::ApplyOptions {
                manager,
                api_version: target.api_version,
                kind: target.kind,
                subresource: target.subresource,
                force: opts.force,
                now: &now,
                reset_fields: None,
            };
            match patch::OpenApiSchema::new(&doc, definition) {
                Some(schema) => patch::apply::server_side_apply(current, &applied, &schema, &options),
                None => patch::apply::server_side_apply(current, &applied, &patch::NoSchema, &options),
            }
            .map_err(apply_error)
        }
    }
}

pub async fn patch(server: &Arc<Server>, def: &ResourceDef, ns: Option<&str>, name: &str, part: Part, content_type: &str, raw: &[u8], opts: &WriteOptions) -> ApiResult<Written> {
    let kind = PatchType::from_content_type(content_type, def.custom)?;
    let definition = def_definition_name(def);
    let api_version = def.api_version();
    let subresource = if part == Part::Status { "status" } else { "" };
    let server2 = server.clone();
    let mut opts = opts.clone();
    opts.applied = kind == PatchType::Apply;
    let opts = &opts;
    let patch_fn = move |current: Option<&Value>| -> ApiResult<Value> {
        if current.is_none() && kind != PatchType::Apply {
            return Err(ApiError::not_found_path(""));
        }
        let target = Target { definition: &definition, api_version: &api_version, kind: &def.kind, subresource };
        let mut patched = apply_patch(&server2, &target, current, kind, raw, opts)?;
        if kind == PatchType::Apply && current.is_none() {
            objects::metadata_mut(&mut patched).insert("name".into(), json!(name));
        }
        Ok(patched)
    };
    let written = server.api.patch(def, ns, name, part, opts, &patch_fn).await?;
    Ok(written)
}

/// The OpenAPI definition name of a resource's kind (`io.k8s.api.apps.v1.Deployment`); custom
/// resources use upstream's reversed-group form (`com.example.v1.Widget`).
pub fn def_definition_name(def: &ResourceDef) -> String {
    if def.custom {
        let reversed: Vec<&str> = def.group.split('.').rev().collect();
        return format!("{}.{}.{}", reversed.join("."), def.version, def.kind);
    }
    if def.group == "apiextensions.k8s.io" {
        return format!("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{}.{}", def.version, def.kind);
    }
    let short = match def.group.as_str() {
        "" => "core",
        g => g.split('.').next().unwrap_or(g),
    };
    format!("io.k8s.api.{short}.{}.{}", def.version, def.kind)
}
