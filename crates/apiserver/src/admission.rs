//! Mutating admission that needs to read other objects (so it cannot live in the synchronous
//! `strategy::admit_create`): DefaultStorageClass and StorageObjectInUseProtection on claims
//! ([`crate::storage`]), ServiceAccount token volumes on pods ([`crate::serviceaccount`]).

use serde_json::Value;

use crate::api::Api;
use crate::resources::ResourceDef;
use crate::status::ApiResult;

/// Runs on create, after the built-in defaults of `strategy::admit_create` and before
/// defaulting and validation, like upstream's mutating admission chain.
pub async fn admit_create(api: &Api, def: &ResourceDef, namespace: Option<&str>, obj: &mut Value) -> ApiResult<()> {
    if def.custom || !def.group.is_empty() {
        return Ok(());
    }
    match def.kind.as_str() {
        "PersistentVolumeClaim" => crate::storage::admit_claim(api, obj).await,
        "Pod" => crate::serviceaccount::admit_pod(api, namespace.unwrap_or("default"), obj).await,
        _ => Ok(()),
    }
}
