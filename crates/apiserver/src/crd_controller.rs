//! Keeps the served custom resources in step with the stored CRDs: registers their versions for
//! routing, discovery and OpenAPI, marks them NamesAccepted and Established, and on CRD deletion
//! removes every custom object before letting the CRD go (upstream's cleanup finalizer).

use std::sync::Arc;

use serde_json::{Value, json};
use store::EventKind;

use crate::api::{Api, DeleteOptions, Part, WriteOptions};
use crate::crd::resource_defs;
use crate::objects;
use crate::openapi_docs::OpenApiDocs;
use crate::resources::ResourceDef;
use crate::status::{ApiError, ApiResult};

const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

fn crd_def(api: &Api) -> Arc<ResourceDef> {
    api.registry.get("apiextensions.k8s.io", "v1", "customresourcedefinitions").expect("CRDs are built in")
}

/// Loads every stored CRD, then follows changes in the background.
pub async fn start(api: Arc<Api>, openapi: Arc<OpenApiDocs>) -> ApiResult<()> {
    let def = crd_def(&api);
    let existing = api.range(&def, def.key_prefix(), None, 0, None).await?;
    for kv in &existing.kvs {
        let crd = objects::decode(kv).map_err(ApiError::internal)?;
        register(&api, &openapi, &crd);
    }
    let mut watch = api.store.watch(&def.key_prefix(), existing.revision)?;
    for kv in existing.kvs {
        let crd = objects::decode(&kv).map_err(ApiError::internal)?;
        reconcile(&api, &crd).await;
    }
    tokio::spawn(async move {
        while let Some(event) = watch.next().await {
            let event = match event {
                Ok(e) => e,
                Err(error) => {
                    tracing::error!(%error, "CRD watch ended");
                    return;
                }
            };
            let Ok(crd) = objects::decode(&event.kv) else { continue };
            match event.kind {
                EventKind::Put => {
                    register(&api, &openapi, &crd);
                    reconcile(&api, &crd).await;
                }
                EventKind::Delete => unregister(&api, &openapi, &crd),
            }
        }
    });
    Ok(())
}

fn names(crd: &Value) -> (String, String) {
    let group = crd.pointer("/spec/group").and_then(Value::as_str).unwrap_or("").to_string();
    let plural = crd.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or("").to_string();
    (group, plural)
}

fn register(api: &Api, openapi: &OpenApiDocs, crd: &Value) {
    let (group, plural) = names(crd);
    let defs = resource_defs(crd);
    openapi.set_custom(crd, &defs);
    api.registry.set_custom(&group, &plural, defs);
}

fn unregister(api: &Api, openapi: &OpenApiDocs, crd: &Value) {
    let (group, plural) = names(crd);
    openapi.set_custom(crd, &[]);
    api.registry.set_custom(&group, &plural, vec![]);
}

/// Brings one CRD's status and finalizers to where they should be.
async fn reconcile(api: &Api, crd: &Value) {
    if let Err(e) = try_reconcile(api, crd).await {
        tracing::warn!(crd = objects::name(crd), error = %e.message, "CRD reconcile failed");
    }
}

async fn try_reconcile(api: &Api, crd: &Value) -> ApiResult<()> {
    let def = crd_def(api);
    let name = objects::name(crd).to_string();
    if objects::is_deleting(crd) {
        if objects::finalizers(crd).iter().any(|f| f == CLEANUP_FINALIZER) {
            delete_all_instances(api, crd).await?;
            let drop_finalizer = |current: Option<&Value>| -> ApiResult<Value> {
                let mut obj = current.cloned().ok_or_else(|| ApiError::not_found_path(""))?;
                let kept: Vec<String> = objects::finalizers(&obj).into_iter().filter(|f| f != CLEANUP_FINALIZER).collect();
                objects::metadata_mut(&mut obj).insert("finalizers".into(), json!(kept));
                Ok(obj)
            };
            api.patch(&def, None, &name, Part::Main, &WriteOptions::default(), &drop_finalizer).await?;
        }
        return Ok(());
    }
    if !objects::finalizers(crd).iter().any(|f| f == CLEANUP_FINALIZER) {
        let add_finalizer = |current: Option<&Value>| -> ApiResult<Value> {
            let mut obj = current.cloned().ok_or_else(|| ApiError::not_found_path(""))?;
            let mut finalizers = objects::finalizers(&obj);
            if !finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
                finalizers.push(CLEANUP_FINALIZER.into());
            }
            objects::metadata_mut(&mut obj).insert("finalizers".into(), json!(finalizers));
            Ok(obj)
        };
        api.patch(&def, None, &name, Part::Main, &WriteOptions::default(), &add_finalizer).await?;
        return Ok(());
    }
    let established = crd
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c.get("type") == Some(&json!("Established")) && c.get("status") == Some(&json!("True"))));
    let accepted_match = crd.pointer("/status/acceptedNames") == crd.pointer("/spec/names");
    if established && accepted_match {
        return Ok(());
    }
    let set_status = |current: Option<&Value>| -> ApiResult<Value> {
        let mut obj = current.cloned().ok_or_else(|| ApiError::not_found_path(""))?;
        let now = objects::now_rfc3339();
        let mut names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
        if names.get("singular").is_none()
            && let Some(kind) = names.get("kind").and_then(Value::as_str)
        {
            names["singular"] = json!(kind.to_lowercase());
        }
        if names.get("listKind").is_none()
            && let Some(kind) = names.get("kind").and_then(Value::as_str)
        {
            names["listKind"] = json!(format!("{kind}List"));
        }
        let storage: Vec<Value> = obj
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|v| v.get("storage") == Some(&json!(true)))
            .filter_map(|v| v.get("name").cloned())
            .collect();
        obj["status"] = json!({
            "acceptedNames": names,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now, "reason": "NoConflicts", "message": "no conflicts found"},
                {"type": "Established", "status": "True", "lastTransitionTime": now, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}
            ],
            "storedVersions": storage,
        });
        Ok(obj)
    };
    api.patch(&def, None, &name, Part::Status, &WriteOptions::default(), &set_status).await?;
    Ok(())
}

async fn delete_all_instances(api: &Api, crd: &Value) -> ApiResult<()> {
    let defs = resource_defs(crd);
    let Some(def) = defs.first() else { return Ok(()) };
    let all = api.range(&def, def.key_prefix(), None, 0, None).await?;
    let opts = DeleteOptions::default();
    for kv in all.kvs {
        let obj: Value = serde_json::from_slice(&kv.value).map_err(ApiError::internal)?;
        let ns = objects::meta_str(&obj, "namespace").map(str::to_string);
        // Instances with finalizers of their own stay until their controllers let go.
        match api.delete(def, ns.as_deref(), objects::name(&obj), &opts).await {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
