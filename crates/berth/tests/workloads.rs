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

/// Waits for an event with `reason` and `message` on the `kind` named `name` in namespace
/// "default" (where events on cluster-scoped objects go too) and returns it.
fn await_event(s: &Server, kind: &str, name: &str, reason: &str, message: &str) -> Value {
    let selector = format!("involvedObject.kind={kind},involvedObject.name={name},reason={reason}");
    let list = || s.get_json(&["events", "-n", "default", "--field-selector", &selector])["items"].as_array().cloned().unwrap_or_default();
    let found = eventually(Duration::from_secs(30), || list().into_iter().find(|e| e["message"] == message));
    found.unwrap_or_else(|| panic!("no {reason} event \"{message}\" on {kind} {name}; have {:?}", list()))
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
    // The controller manager is named in User-Agent, so its creates are owned by it, as upstream.
    let created = all.iter().find(|p| p["metadata"]["name"] != "stray").unwrap()["metadata"]["name"].as_str().unwrap().to_string();
    let managers = s.get_json(&["pod", &created, "--show-managed-fields"])["metadata"]["managedFields"].clone();
    assert!(managers.as_array().is_some_and(|m| m.iter().any(|m| m["manager"] == "kube-controller-manager" && m["operation"] == "Update")), "{managers}");
    wait_for("status.replicas 3", || s.get_json(&["rs", "web"])["status"]["replicas"] == 3);
    wait_for("a SuccessfulCreate event", || {
        s.get_json(&["events", "--field-selector", "involvedObject.kind=ReplicaSet,involvedObject.name=web"])["items"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["reason"] == "SuccessfulCreate" && e["source"]["component"] == "replicaset-controller"))
    });

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

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 3}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: "busybox:1"}]}
"#;

fn replicasets(s: &Server) -> Vec<Value> {
    s.get_json(&["rs", "-l", "app=web"])["items"].as_array().cloned().unwrap_or_default()
}

fn rs_with_image<'a>(sets: &'a [Value], image: &str) -> Option<&'a Value> {
    sets.iter().find(|rs| rs["spec"]["template"]["spec"]["containers"][0]["image"] == image)
}

#[test]
fn deployment_rolls_revisions_and_rolls_back() {
    let s = server();
    s.ok_stdin(&["apply", "-f", "-"], DEPLOYMENT);
    wait_for("first replica set with 3 pods", || {
        let sets = replicasets(&s);
        sets.len() == 1 && sets[0]["status"]["replicas"] == 3 && live_pods(&s, "app=web").len() == 3
    });
    let first = replicasets(&s)[0].clone();
    assert_eq!(first["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    let hash = first["metadata"]["labels"]["pod-template-hash"].as_str().unwrap().to_string();
    assert_eq!(first["metadata"]["name"], format!("web-{hash}"));
    assert!(live_pods(&s, "app=web").iter().all(|p| p["metadata"]["labels"]["pod-template-hash"] == hash.as_str()));

    s.ok(&["set", "image", "deployment/web", "web=busybox:2"]);
    wait_for("rolled to the second template", || {
        let sets = replicasets(&s);
        let new = rs_with_image(&sets, "busybox:2");
        let old = rs_with_image(&sets, "busybox:1");
        new.is_some_and(|n| n["spec"]["replicas"] == 3 && n["status"]["replicas"] == 3) && old.is_some_and(|o| o["spec"]["replicas"] == 0)
    });
    let deploy = s.get_json(&["deployment", "web"]);
    assert_eq!(deploy["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2");
    let described = s.ok(&["describe", "deployment", "web"]);
    assert!(described.contains("ScalingReplicaSet") && described.contains("Scaled up replica set"), "{described}");
    wait_for("deployment status", || {
        let d = s.get_json(&["deployment", "web"]);
        d["status"]["updatedReplicas"] == 3 && d["status"]["replicas"] == 3 && d["status"]["observedGeneration"] == d["metadata"]["generation"]
    });
    let history = s.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    s.ok(&["rollout", "undo", "deployment/web"]);
    wait_for("back on the first replica set as revision 3", || {
        let sets = replicasets(&s);
        rs_with_image(&sets, "busybox:1").is_some_and(|rs| rs["spec"]["replicas"] == 3 && rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3")
            && rs_with_image(&sets, "busybox:2").is_some_and(|rs| rs["spec"]["replicas"] == 0)
    });
    assert_eq!(replicasets(&s).len(), 2, "the rollback reuses the old replica set");

    s.ok(&["scale", "deployment", "web", "--replicas=5"]);
    wait_for("scaled to 5", || live_pods(&s, "app=web").len() == 5);

    // Paused: template changes wait; resume rolls them out.
    s.ok(&["rollout", "pause", "deployment/web"]);
    s.ok(&["set", "image", "deployment/web", "web=busybox:3"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(rs_with_image(&replicasets(&s), "busybox:3").is_none(), "a paused deployment must not roll");
    wait_for("paused condition", || {
        s.get_json(&["deployment", "web"])["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["reason"] == "DeploymentPaused"))
    });
    s.ok(&["rollout", "resume", "deployment/web"]);
    // No pod here ever becomes available (no nodes), so the rollout goes as far as maxUnavailable
    // allows and waits, as upstream's does.
    wait_for("rolling after resume", || rs_with_image(&replicasets(&s), "busybox:3").is_some_and(|rs| rs["spec"]["replicas"].as_i64().unwrap_or(0) >= 1));

    // Recreate: old pods go before new ones come.
    s.ok(&["patch", "deployment", "web", "--type=merge", "-p", r#"{"spec":{"strategy":{"type":"Recreate","rollingUpdate":null}}}"#]);
    s.ok(&["set", "image", "deployment/web", "web=busybox:4"]);
    wait_for("recreated", || {
        let sets = replicasets(&s);
        rs_with_image(&sets, "busybox:4").is_some_and(|rs| rs["status"]["replicas"] == 5) && sets.iter().filter(|rs| rs["spec"]["replicas"] != 0).count() == 1
    });

    s.ok(&["delete", "deployment", "web"]);
    wait_for("cascade to replica sets and pods", || replicasets(&s).is_empty() && pods(&s, "app=web").is_empty());
}

#[test]
fn namespaces_get_a_default_service_account() {
    let s = server();
    s.ok(&["create", "namespace", "team"]);
    wait_for("default service account", || s.kubectl(&["-n", "team", "get", "serviceaccount", "default"]).status.success());
    s.ok(&["-n", "team", "delete", "serviceaccount", "default"]);
    wait_for("default service account recreated", || s.kubectl(&["-n", "team", "get", "serviceaccount", "default"]).status.success());
}

#[test]
fn services_get_endpoints_and_slices_of_their_pods() {
    let s = server();
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}"#,
    );
    for (name, ip, ready) in [("a", "10.244.0.10", "True"), ("b", "10.244.0.11", "False")] {
        s.ok_stdin(
            &["apply", "-f", "-"],
            &format!(r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}", "labels": {{"app": "web"}}}},
                "spec": {{"nodeName": "n1", "containers": [{{"name": "c", "image": "busybox", "ports": [{{"name": "http", "containerPort": 8080}}]}}]}}}}"#),
        );
        s.ok(&["patch", "pod", name, "--subresource=status", "--type=merge", "-p",
            &format!(r#"{{"status": {{"phase": "Running", "podIP": "{ip}", "podIPs": [{{"ip": "{ip}"}}], "conditions": [{{"type": "Ready", "status": "{ready}"}}]}}}}"#)]);
    }
    wait_for("endpoints with one ready and one not-ready address", || {
        let ep = s.get_json(&["endpoints", "web"]);
        let subset = &ep["subsets"][0];
        subset["addresses"][0]["ip"] == "10.244.0.10" && subset["notReadyAddresses"][0]["ip"] == "10.244.0.11" && subset["ports"][0]["port"] == 8080
    });
    wait_for("an endpoint slice", || {
        let slices = s.get_json(&["endpointslices", "-l", "kubernetes.io/service-name=web"]);
        slices["items"].as_array().is_some_and(|items| {
            items.len() == 1 && items[0]["endpoints"].as_array().is_some_and(|e| e.len() == 2) && items[0]["ports"][0]["port"] == 8080 && items[0]["ports"][0]["name"] == "http"
        })
    });
    // Readiness follows the pod.
    s.ok(&["patch", "pod", "b", "--subresource=status", "--type=merge", "-p", r#"{"status": {"conditions": [{"type": "Ready", "status": "True"}]}}"#]);
    wait_for("both ready", || s.get_json(&["endpoints", "web"])["subsets"][0]["addresses"].as_array().is_some_and(|a| a.len() == 2));
    s.ok(&["delete", "service", "web"]);
    wait_for("endpoints and slices removed with the service", || {
        !s.kubectl(&["get", "endpoints", "web"]).status.success() && s.get_json(&["endpointslices", "-l", "kubernetes.io/service-name=web"])["items"].as_array().is_some_and(|i| i.is_empty())
    });
}

#[test]
fn silent_nodes_become_unknown_tainted_and_their_pods_are_evicted() {
    let s = Server::start_with(env!("CARGO_BIN_EXE_berth"), &["--node-monitor-grace-period=3s"]);
    s.ok_stdin(
        &["create", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}"#,
    );
    s.ok(&["patch", "node", "n1", "--subresource=status", "--type=merge", "-p",
        r#"{"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": "2020-01-01T00:00:00Z"}]}}"#]);
    // Admission gives every pod the default 300 s tolerations; this one asks for 1 s.
    s.ok_stdin(
        &["create", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "quick"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}],
            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 1}]}}"#,
    );
    s.ok_stdin(&["create", "-f", "-"], r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "patient"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}"#);
    // Ready as a kubelet would have reported it before falling silent.
    s.ok(&["patch", "pod", "patient", "--subresource=status", "--type=merge", "-p", r#"{"status": {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True", "message": "from the kubelet"}]}}"#]);
    let patient = s.get_json(&["pod", "patient"]);
    assert_eq!(patient["spec"]["serviceAccountName"], "default");
    let tolerations = patient["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    assert!(tolerations.iter().any(|t| t["key"] == "node.kubernetes.io/not-ready" && t["tolerationSeconds"] == 300), "{tolerations:?}");
    assert!(tolerations.iter().any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["tolerationSeconds"] == 300), "{tolerations:?}");

    wait_for("node marked Unknown and tainted unreachable", || {
        let node = s.get_json(&["node", "n1"]);
        let ready = node["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned()).unwrap_or_default();
        let taints = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
        ready["status"] == "Unknown" && ready["reason"] == "NodeStatusUnknown" && taints.iter().any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute")
    });
    // Node events as upstream's node controller writes them: no namespace on the reference.
    let registered = await_event(&s, "Node", "n1", "RegisteredNode", "Node n1 event: Registered Node n1 in Controller");
    assert_eq!(registered["source"]["component"], "node-controller");
    let not_ready = await_event(&s, "Node", "n1", "NodeNotReady", "Node n1 status is now: NodeNotReady");
    assert_eq!(not_ready["type"], "Normal");
    assert!(not_ready["involvedObject"].get("namespace").is_none(), "{not_ready}");
    assert_eq!(not_ready["involvedObject"]["uid"], s.get_json(&["node", "n1"])["metadata"]["uid"]);
    let pod_not_ready = await_event(&s, "Pod", "patient", "NodeNotReady", "Node is not ready");
    assert_eq!(pod_not_ready["type"], "Warning");
    // Evicted: deleted gracefully, so it stays Terminating until a kubelet confirms, as upstream.
    wait_for("the pod tolerating 1 s evicted", || s.get_json(&["pod", "quick"])["metadata"].get("deletionTimestamp").is_some());
    let eviction = await_event(&s, "Pod", "quick", "TaintManagerEviction", "Marking for deletion Pod default/quick");
    assert_eq!(eviction["source"]["component"], "taint-eviction-controller");
    let patient = s.get_json(&["pod", "patient"]);
    assert!(patient["metadata"].get("deletionTimestamp").is_none(), "a pod tolerating 300 s stays for now");
    // Only its Ready condition changed: the others stay as the node wrote them.
    let conditions = patient["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let condition = |type_: &str| conditions.iter().find(|c| c["type"] == type_).cloned().unwrap_or_default();
    assert_eq!((condition("Ready")["status"].as_str(), condition("Ready")["reason"].as_str()), (Some("False"), Some("NodeNotReady")), "{conditions:?}");
    assert_eq!(condition("PodScheduled")["status"], "True", "{conditions:?}");
    assert_eq!(condition("Ready")["message"], "from the kubelet", "{conditions:?}");

    // The node comes back: a fresh heartbeat clears the taints.
    let fresh = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    s.ok(&["patch", "node", "n1", "--subresource=status", "--type=merge", "-p",
        &format!(r#"{{"status": {{"conditions": [{{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": "{fresh}"}}]}}}}"#)]);
    wait_for("taints removed", || s.get_json(&["node", "n1"])["spec"]["taints"].as_array().is_none_or(|t| t.is_empty()));
    // The patient pod's scheduled eviction is called off, once; the evicted one's is not.
    let cancelled = await_event(&s, "Pod", "patient", "TaintManagerEviction", "Cancelling deletion of Pod default/patient");
    assert_eq!(cancelled["source"]["component"], "taint-eviction-controller");
    assert_eq!(cancelled["type"], "Normal");
    // A few more monitor rounds (2 s each) say nothing more.
    std::thread::sleep(Duration::from_secs(5));
    let evictions = |pod: &str| {
        let selector = format!("involvedObject.kind=Pod,involvedObject.name={pod},reason=TaintManagerEviction");
        s.get_json(&["events", "-n", "default", "--field-selector", &selector])["items"].as_array().cloned().unwrap_or_default()
    };
    let patient_events = evictions("patient");
    assert!(patient_events.len() == 1 && patient_events[0]["count"] == 1, "{patient_events:?}");
    assert!(s.get_json(&["pod", "patient"])["metadata"].get("deletionTimestamp").is_none());
    let quick_events = evictions("quick");
    assert!(quick_events.iter().all(|e| !e["message"].as_str().unwrap_or("").starts_with("Cancelling")), "{quick_events:?}");
}


#[test]
fn the_default_eviction_tolerations_are_the_servers_to_set() {
    let s = Server::start_with(
        env!("CARGO_BIN_EXE_berth"),
        &["--node-monitor-grace-period=3s", "--default-not-ready-toleration-seconds=7", "--default-unreachable-toleration-seconds=1"],
    );
    s.ok_stdin(&["create", "-f", "-"], r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}"#);
    s.ok(&["patch", "node", "n1", "--subresource=status", "--type=merge", "-p",
        r#"{"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": "2020-01-01T00:00:00Z"}]}}"#]);
    s.ok_stdin(&["create", "-f", "-"], r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}"#);
    let tolerations = s.get_json(&["pod", "plain"])["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    assert!(tolerations.iter().any(|t| t["key"] == "node.kubernetes.io/not-ready" && t["effect"] == "NoExecute" && t["tolerationSeconds"] == 7), "{tolerations:?}");
    assert!(tolerations.iter().any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute" && t["tolerationSeconds"] == 1), "{tolerations:?}");
    // The silent node becomes unreachable, and the pod goes after the server's default second.
    wait_for("the pod evicted after the default unreachable toleration", || s.get_json(&["pod", "plain"])["metadata"].get("deletionTimestamp").is_some());
    await_event(&s, "Pod", "plain", "TaintManagerEviction", "Marking for deletion Pod default/plain");
}

#[test]
fn replication_controllers_are_kept_too() {
    let s = server();
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "old"},
            "spec": {"replicas": 2, "selector": {"app": "old"}, "template": {"metadata": {"labels": {"app": "old"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}"#,
    );
    wait_for("2 pods owned by the RC", || {
        let all = live_pods(&s, "app=old");
        all.len() == 2 && all.iter().all(|p| p["metadata"]["ownerReferences"][0]["kind"] == "ReplicationController")
    });
    wait_for("rc status", || s.get_json(&["rc", "old"])["status"]["replicas"] == 2);
    s.ok(&["scale", "rc", "old", "--replicas=0"]);
    wait_for("scaled to zero", || live_pods(&s, "app=old").is_empty());
}
