//! Storage every cluster gets, as k3s ships it: the `local-path` StorageClass (node-local
//! directories, provisioned by each node's agent), made the default class at start when missing;
//! and the two admission plugins upstream enables on PersistentVolumeClaim create:
//! DefaultStorageClass (a claim that names no class gets the default one) and
//! StorageObjectInUseProtection (the `kubernetes.io/pvc-protection` finalizer, which the
//! controllers drop once no pod uses the claim).

use serde_json::{Value, json};

use crate::api::{Api, WriteOptions};
use crate::objects::{self, metadata_mut};
use crate::status::ApiResult;

pub const LOCAL_PATH_CLASS: &str = "local-path";
pub const LOCAL_PATH_PROVISIONER: &str = "berth.dev/local-path";
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
const BETA_DEFAULT_CLASS_ANNOTATION: &str = "storageclass.beta.kubernetes.io/is-default-class";
pub const PVC_PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";

/// Creates the `local-path` class unless it exists. A class deleted by the administrator comes
/// back on the next start, as k3s's packaged manifests do.
pub async fn ensure_local_path_class(api: &Api) -> ApiResult<()> {
    let Some(def) = api.registry.get("storage.k8s.io", "v1", "storageclasses") else { return Ok(()) };
    let class = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": LOCAL_PATH_CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": LOCAL_PATH_PROVISIONER,
        "reclaimPolicy": "Delete",
        // Node-local storage must wait for the pod's node (the scheduler names it on the claim).
        "volumeBindingMode": "WaitForFirstConsumer",
    });
    match api.create(&def, None, class, &WriteOptions::default()).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Upstream's IsDefaultAnnotation (either annotation, "true").
pub fn is_default_class(class: &Value) -> bool {
    let annotations = class.pointer("/metadata/annotations");
    [DEFAULT_CLASS_ANNOTATION, BETA_DEFAULT_CLASS_ANNOTATION].iter().any(|key| annotations.and_then(|a| a.get(*key)).and_then(Value::as_str) == Some("true"))
}

/// The admission of a new claim. A claim with `storageClassName: ""` asked for no class and keeps
/// it; only an absent field is defaulted, as upstream.
pub async fn admit_claim(api: &Api, obj: &mut Value) -> ApiResult<()> {
    let unset = obj.pointer("/spec/storageClassName").is_none_or(Value::is_null);
    if unset
        && let Some(class) = default_class(api).await?
        && let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.insert("storageClassName".into(), json!(class));
    }
    let meta = metadata_mut(obj);
    let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(list) = finalizers.as_array_mut()
        && !list.iter().any(|f| f == PVC_PROTECTION_FINALIZER)
    {
        list.push(json!(PVC_PROTECTION_FINALIZER));
    }
    Ok(())
}

/// The default class; of several, the newest (then the first by name), as upstream since 1.28.
async fn default_class(api: &Api) -> ApiResult<Option<String>> {
    let Some(def) = api.registry.get("storage.k8s.io", "v1", "storageclasses") else { return Ok(None) };
    let page = api.range(&def, def.key_prefix(), None, 0, None).await?;
    let mut best: Option<(String, String)> = None;
    for kv in &page.kvs {
        let Ok(class) = objects::decode(kv) else { continue };
        if !is_default_class(&class) {
            continue;
        }
        let created = objects::meta_str(&class, "creationTimestamp").unwrap_or("").to_string();
        let name = objects::name(&class).to_string();
        if best.as_ref().is_none_or(|(at, _)| created > *at) {
            best = Some((created, name));
        }
    }
    Ok(best.map(|(_, name)| name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_class_annotations() {
        assert!(is_default_class(&json!({"metadata": {"annotations": {DEFAULT_CLASS_ANNOTATION: "true"}}})));
        assert!(is_default_class(&json!({"metadata": {"annotations": {BETA_DEFAULT_CLASS_ANNOTATION: "true"}}})));
        assert!(!is_default_class(&json!({"metadata": {"annotations": {DEFAULT_CLASS_ANNOTATION: "false"}}})));
        assert!(!is_default_class(&json!({"metadata": {}})));
    }

    #[test]
    fn the_default_class_is_marked_in_tables() {
        use crate::printers::{IncludeObject, TableOptions, table_for};
        let class = |name: &str, default: &str| json!({"metadata": {"name": name, "annotations": {DEFAULT_CLASS_ANNOTATION: default}}, "provisioner": LOCAL_PATH_PROVISIONER});
        let (local, other) = (class(LOCAL_PATH_CLASS, "true"), class("slow", "false"));
        let options = TableOptions { include_object: IncludeObject::None, resource_version: None, continue_token: None, remaining_item_count: None, printer_columns: None, no_headers: false };
        let table = table_for(("storage.k8s.io", "StorageClass"), &[&local, &other], &options, jiff::Timestamp::now());
        assert_eq!(table["rows"][0]["cells"][0], "local-path (default)");
        assert_eq!(table["rows"][1]["cells"][0], "slow");
    }
}
