//! The service account controller: every active namespace has a `default` ServiceAccount, which
//! pods use when they name none (and which the namespace keeps even if someone deletes it).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::cache::Cache;
use crate::workqueue::{WorkQueue, run_workers};

const DEFAULT: &str = "default";

pub async fn run(client: Client) {
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
    let accounts = Cache::<ServiceAccount>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            // A deleted default account is recreated.
            if new.is_none()
                && let Some(sa) = old
                && sa.name_any() == DEFAULT
            {
                q.add(sa.namespace().unwrap_or_default());
            }
        }),
    );
    namespaces.synced().await;
    accounts.synced().await;
    let ctx = Arc::new((client, namespaces, accounts, queue.clone()));
    run_workers(queue, rx, 2, move |ns: String| {
        let ctx = ctx.clone();
        async move {
            let (client, namespaces, accounts, queue) = &*ctx;
            let Some(namespace) = namespaces.get("", &ns) else { return };
            let terminating = namespace.metadata.deletion_timestamp.is_some() || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
            if terminating || accounts.get(&ns, DEFAULT).is_some() {
                return;
            }
            let sa = ServiceAccount { metadata: kube::api::ObjectMeta { name: Some(DEFAULT.into()), namespace: Some(ns.clone()), ..Default::default() }, ..Default::default() };
            match Api::<ServiceAccount>::namespaced(client.clone(), &ns).create(&PostParams::default(), &sa).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 409 || status.code == 403 || status.code == 404 => {}
                Err(error) => {
                    tracing::debug!(%error, namespace = %ns, "creating the default service account failed; retrying");
                    queue.add_after(ns, Duration::from_secs(2));
                }
            }
        }
    })
    .await;
}
