//! The root CA publisher (upstream's root-ca-cert-publisher): every active namespace has the
//! `kube-root-ca.crt` ConfigMap holding the cluster CA, which service account token volumes
//! project as `ca.crt`; it is put back if deleted and reset if edited.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::cache::Cache;
use crate::workqueue::{WorkQueue, run_workers};

pub const NAME: &str = "kube-root-ca.crt";
const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

pub async fn run(client: Client, ca_pem: String) {
    let (queue, rx) = WorkQueue::<String>::new();
    let q = queue.clone();
    let namespaces = Cache::<Namespace>::spawn(
        Api::all(client.clone()),
        Box::new(move |_, new| {
            if let Some(ns) = new {
                q.add(ns.name_any());
            }
        }),
    );
    let q = queue.clone();
    let maps = Cache::<ConfigMap>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            if let Some(cm) = new.or(old).filter(|cm| cm.name_any() == NAME) {
                q.add(cm.namespace().unwrap_or_default());
            }
        }),
    );
    namespaces.synced().await;
    maps.synced().await;
    let ctx = Arc::new((client, namespaces, maps, queue.clone(), ca_pem));
    run_workers(queue, rx, 1, move |ns: String| {
        let ctx = ctx.clone();
        async move {
            let (client, namespaces, maps, queue, ca_pem) = &*ctx;
            let Some(namespace) = namespaces.get("", &ns) else { return };
            let terminating = namespace.metadata.deletion_timestamp.is_some() || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
            if terminating {
                return;
            }
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            let wanted = BTreeMap::from([("ca.crt".to_string(), ca_pem.clone())]);
            let result = match maps.get(&ns, NAME) {
                Some(cm) if cm.data.as_ref() == Some(&wanted) => return,
                Some(cm) => {
                    let patch = json!({"metadata": {"resourceVersion": cm.resource_version()}, "data": {"ca.crt": ca_pem}});
                    api.patch(NAME, &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| ())
                }
                None => {
                    let annotations = BTreeMap::from([(DESCRIPTION_ANNOTATION.to_string(), DESCRIPTION.to_string())]);
                    let cm = ConfigMap { metadata: ObjectMeta { name: Some(NAME.into()), namespace: Some(ns.clone()), annotations: Some(annotations), ..Default::default() }, data: Some(wanted), ..Default::default() };
                    api.create(&PostParams::default(), &cm).await.map(|_| ())
                }
            };
            match result {
                Ok(()) => {}
                // Gone or terminating namespaces refuse new objects; an update event retries.
                Err(kube::Error::Api(status)) if matches!(status.code, 403 | 404 | 409) => {}
                Err(error) => {
                    tracing::debug!(%error, namespace = %ns, "publishing the root CA failed; retrying");
                    queue.add_after(ns, Duration::from_secs(2));
                }
            }
        }
    })
    .await;
}
