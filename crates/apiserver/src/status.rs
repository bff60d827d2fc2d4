//! Every failure a client sees is a metav1 `Status` with the reason and code upstream uses, so
//! kubectl and client libraries classify it (IsNotFound, IsConflict, ...) exactly as they would
//! against kube-apiserver.

use serde_json::{Value, json};

use crate::resources::ResourceDef;

/// One invalid field, as in `Status.details.causes`.
#[derive(Clone, Debug)]
pub struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl std::fmt::Display) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Self { reason: "FieldValueInvalid", field: field.into(), message: format!("Invalid value: {shown}: {detail}") }
    }
    pub fn required(field: impl Into<String>) -> Self {
        Self { reason: "FieldValueRequired", field: field.into(), message: "Required value".into() }
    }
    pub fn required_because(field: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self { reason: "FieldValueRequired", field: field.into(), message: format!("Required value: {detail}") }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self { reason: "FieldValueForbidden", field: field.into(), message: format!("Forbidden: {detail}") }
    }
    pub fn unsupported(field: impl Into<String>, value: &Value, allowed: &[&str]) -> Self {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!("Unsupported value: {value}: supported values: {}", allowed.join(", ")),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self { reason: "FieldValueDuplicate", field: field.into(), message: format!("Duplicate value: {value}") }
    }
    pub fn immutable(field: impl Into<String>) -> Self {
        Self { reason: "FieldValueInvalid", field: field.into(), message: "field is immutable".into() }
    }
}

#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds a client should wait before retrying (for 429/500 style answers).
    pub retry_after: Option<u32>,
}

pub type ApiResult<T> = Result<T, ApiError>;

fn details(name: &str, def: &ResourceDef) -> Value {
    let mut d = json!({ "name": name, "kind": def.plural });
    if !def.group.is_empty() {
        d["group"] = json!(def.group);
    }
    d
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None, retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }
    pub fn not_found_path(path: &str) -> Self {
        let _ = path;
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }
    pub fn not_found(def: &ResourceDef, name: &str) -> Self {
        Self { details: Some(details(name, def)), ..Self::new(404, "NotFound", format!("{} \"{name}\" not found", def.qualified_plural())) }
    }
    pub fn namespace_not_found(namespace: &str) -> Self {
        Self {
            details: Some(json!({ "name": namespace, "kind": "namespaces" })),
            ..Self::new(404, "NotFound", format!("namespaces \"{namespace}\" not found"))
        }
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }
    pub fn already_exists(def: &ResourceDef, name: &str) -> Self {
        Self {
            details: Some(details(name, def)),
            ..Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", def.qualified_plural()))
        }
    }
    pub fn conflict(def: &ResourceDef, name: &str, why: &str) -> Self {
        Self {
            details: Some(details(name, def)),
            ..Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": {why}", def.qualified_plural()))
        }
    }
    pub fn stale(def: &ResourceDef, name: &str) -> Self {
        Self::conflict(def, name, "the object has been modified; please apply your changes to the latest version and try again")
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", message)
    }
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {content_type:?})"))
    }
    pub fn invalid(def: &ResourceDef, name: &str, causes: Vec<Cause>) -> Self {
        let summary: Vec<String> = causes
            .iter()
            .map(|c| if c.field.is_empty() { c.message.clone() } else { format!("{}: {}", c.field, c.message) })
            .collect();
        let summary = if summary.len() == 1 { summary[0].clone() } else { format!("[{}]", summary.join(", ")) };
        let mut d = json!({ "name": name, "kind": def.kind });
        if !def.group.is_empty() {
            d["group"] = json!(def.group);
        }
        d["causes"] = causes.iter().map(|c| json!({ "reason": c.reason, "message": c.message, "field": c.field })).collect();
        Self { details: Some(d), ..Self::new(422, "Invalid", format!("{} \"{name}\" is invalid: {summary}", def.kind)) }
    }
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(500, "InternalError", format!("Internal error occurred: {message}"))
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self { retry_after: Some(1), ..Self::new(429, "TooManyRequests", message) }
    }

    /// The `Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        if let Some(after) = self.retry_after {
            status["details"]["retryAfterSeconds"] = json!(after);
        }
        status
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::Compacted { requested, compacted } => {
                ApiError::gone(format!("too old resource version: {requested} ({compacted})"))
            }
            store::StoreError::FutureRevision { requested, current } => {
                let mut err = ApiError::timeout(format!("Too large resource version: {requested}, current: {current}"));
                err.details = Some(json!({ "causes": [{ "reason": "ResourceVersionTooLarge", "message": "Too large resource version" }], "retryAfterSeconds": 1 }));
                err
            }
            other => ApiError::internal(other),
        }
    }
}
