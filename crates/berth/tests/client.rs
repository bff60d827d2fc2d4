//! The API server driven by the Rust `kube` client: pagination, watches, and 410 Gone after
//! compaction, as client-go-style reflectors rely on them.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use testsupport::Server;

async fn client(server: &Server) -> kube::Client {
    let config = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"batch": "one"}}, "data": {"k": "v"}})).unwrap()
}

#[tokio::test]
async fn list_pages_with_continue_tokens_at_one_revision() {
    let server = Server::start(env!("CARGO_BIN_EXE_berth"));
    let api: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
    // The root CA publisher's kube-root-ca.crt is in every namespace, as upstream: wait for it so
    // the count below is fixed.
    while api.get_opt("kube-root-ca.crt").await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..25 {
        api.create(&PostParams::default(), &configmap(&format!("cm-{i:02}"))).await.unwrap();
    }
    let first = api.list(&ListParams::default().labels("batch=one").limit(10)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let revision = first.metadata.resource_version.clone().unwrap();
    // Created after the first page: must not appear in later pages.
    api.create(&PostParams::default(), &configmap("cm-99")).await.unwrap();
    let mut names: Vec<String> = first.items.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
    let mut next = Some(token);
    while let Some(token) = next {
        let page = api.list(&ListParams::default().labels("batch=one").limit(10).continue_token(&token)).await.unwrap();
        assert_eq!(page.metadata.resource_version.as_deref(), Some(revision.as_str()));
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        next = page.metadata.continue_.filter(|c| !c.is_empty());
    }
    let expected: Vec<String> = (0..25).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!(names, expected);
    let unfiltered = api.list(&ListParams::default().limit(5)).await.unwrap();
    assert_eq!(unfiltered.metadata.remaining_item_count, Some(22), "26 of ours and kube-root-ca.crt");
}

#[tokio::test]
async fn watch_from_a_revision_sees_every_change_in_order() {
    let server = Server::start(env!("CARGO_BIN_EXE_berth"));
    let api: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
    // The root CA publisher writes kube-root-ca.crt into the namespace at its own pace; the label
    // selector keeps that write out of the sequence this test checks.
    let start = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut stream = api.watch(&WatchParams::default().labels("batch=one").timeout(30), &start).await.unwrap().boxed();
    let created = api.create(&PostParams::default(), &configmap("w")).await.unwrap();
    let mut changed = created.clone();
    changed.data = Some([("k".to_string(), "v2".to_string())].into());
    api.replace("w", &PostParams::default(), &changed).await.unwrap();
    api.delete("w", &Default::default()).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await.expect("event in time").unwrap().expect("stream open");
        kinds.push(match event {
            WatchEvent::Added(c) => format!("ADDED {}", c.metadata.name.unwrap()),
            WatchEvent::Modified(c) => format!("MODIFIED {}", c.data.unwrap()["k"]),
            WatchEvent::Deleted(c) => format!("DELETED {}", c.metadata.name.unwrap()),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        });
    }
    assert_eq!(kinds, ["ADDED w", "MODIFIED v2", "DELETED w"]);
}

#[tokio::test]
async fn compacted_revisions_answer_410_gone() {
    let server = Server::start_with(env!("CARGO_BIN_EXE_berth"), &["--etcd-compaction-interval=1s"]);
    let api: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
    let old = api.create(&PostParams::default(), &configmap("first")).await.unwrap().metadata.resource_version.unwrap();
    for i in 0..5 {
        api.create(&PostParams::default(), &configmap(&format!("later-{i}"))).await.unwrap();
    }
    // Two intervals: the first remembers the revision, the second compacts up to it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    api.create(&PostParams::default(), &configmap("after")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut stream = api.watch(&WatchParams::default().timeout(10), &old).await.unwrap().boxed();
    match tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await.expect("answer in time") {
        Ok(Some(WatchEvent::Error(e))) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    // The kube runtime watcher recovers from 410 by listing again.
    let stream = kube::runtime::watcher(api.clone(), kube::runtime::watcher::Config::default());
    let seen = tokio::time::timeout(Duration::from_secs(10), stream.filter_map(|e| async move { e.ok() }).take(3).collect::<Vec<_>>()).await;
    assert!(seen.is_ok(), "watcher made progress after compaction");
}

#[tokio::test]
async fn metadata_only_reads_for_metadata_informers() {
    let server = Server::start(env!("CARGO_BIN_EXE_berth"));
    let api: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
    api.create(&PostParams::default(), &configmap("meta")).await.unwrap();
    let one = api.get_metadata("meta").await.unwrap();
    assert_eq!(one.metadata.labels.unwrap()["batch"], "one");
    // Labelled: the namespace also holds the root CA publisher's kube-root-ca.crt.
    let list = api.list_metadata(&ListParams::default().labels("batch=one")).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());
}
