//! Workload controllers driven with the real kubectl: ReplicaSets and Deployments keep what the
//! user declared.

use std::time::Duration;

use serde_json::Value;
use testsupport::{Server, eventually};

fn server() -> Server {
    Server::start(env!("CARGO_BIN_EXE_berth"))
}

fn pods(s: &Server, selector: &str) -> Vec<Value> {
    s.get_json(&["pods", "-l", selector])["items"].as_array().cloned().unwrap_or_default()
}

fn live_pods(s: &Server, selector: &str) -> Vec<Value> {
    pods(s, selector).into_iter().filter(|p| p["metadata"].get("deletionTimestamp").is_none()).collect()
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    assert!(eventually(Duration::from_secs(30), || check().then_some(())).is_some(), "timed out waiting for {what}");
}

const REPLICASET: &str = r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: busybox}]}
"#;

#[test]
fn replicaset_keeps_its_count_adopts_and_reports() {
    let s = server();
    // An orphan that matches is adopted instead of creating a third pod.
    s.ok_stdin(&["create", "-f", "-"], r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stray", "labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}"#);
    s.ok_stdin(&["apply", "-f", "-"], REPLICASET);
    wait_for("3 pods", || live_pods(&s, "app=web").len() == 3);
    let all = live_pods(&s, "app=web");
    assert!(all.iter().all(|p| p["metadata"]["ownerReferences"][0]["name"] == "web" && p["metadata"]["ownerReferences"][0]["controller"] == true), "{all:?}");
    assert!(all.iter().any(|p| p["metadata"]["name"] == "stray"));
    wait_for("status.replicas 3", || s.get_json(&["rs", "web"])["status"]["replicas"] == 3);

    // A deleted pod is replaced.
    let victim = all.iter().find(|p| p["metadata"]["name"] != "stray").unwrap()["metadata"]["name"].as_str().unwrap().to_string();
    s.ok(&["delete", "pod", &victim, "--wait=false"]);
    wait_for("replacement", || {
        let now = live_pods(&s, "app=web");
        now.len() == 3 && now.iter().all(|p| p["metadata"]["name"] != victim.as_str())
    });

    s.ok(&["scale", "rs", "web", "--replicas=1"]);
    wait_for("scale down to 1", || live_pods(&s, "app=web").len() == 1);
    wait_for("status after scale down", || {
        let rs = s.get_json(&["rs", "web"]);
        rs["status"]["replicas"] == 1 && rs["status"]["observedGeneration"] == rs["metadata"]["generation"]
    });

    // Relabelled out of the selector: released, and replaced.
    let kept = live_pods(&s, "app=web")[0]["metadata"]["name"].as_str().unwrap().to_string();
    s.ok(&["label", "pod", &kept, "app=other", "--overwrite"]);
    wait_for("release and replace", || {
        let released = s.get_json(&["pod", &kept]);
        released["metadata"].get("ownerReferences").is_none_or(|o| o.as_array().is_some_and(|a| a.is_empty())) && live_pods(&s, "app=web").len() == 1
    });

    // Cascading delete through the garbage collector.
    s.ok(&["delete", "rs", "web"]);
    wait_for("pods of the deleted ReplicaSet gone", || pods(&s, "app=web").is_empty());
}
