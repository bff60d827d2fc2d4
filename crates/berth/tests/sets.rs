//! StatefulSets and DaemonSets driven with the real kubectl. No kubelet or scheduler runs here:
//! the tests create Node objects themselves and play the kubelet by patching pod status.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use testsupport::{Server, eventually};

fn server() -> Server {
    Server::start(env!("CARGO_BIN_EXE_berth"))
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    assert!(eventually(Duration::from_secs(60), || check().then_some(())).is_some(), "timed out waiting for {what}");
}

fn items(s: &Server, args: &[&str]) -> Vec<Value> {
    s.get_json(args)["items"].as_array().cloned().unwrap_or_default()
}

fn live(pods: Vec<Value>) -> Vec<Value> {
    pods.into_iter().filter(|p| p["metadata"].get("deletionTimestamp").is_none()).collect()
}

/// One object, or `None` when it does not exist.
fn get(s: &Server, kind: &str, name: &str) -> Option<Value> {
    let out = s.kubectl(&["get", kind, name, "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("kubectl printed JSON"))
}

fn names(objects: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = objects.iter().map(|o| o["metadata"]["name"].as_str().unwrap_or_default().to_string()).collect();
    names.sort();
    names
}

/// Waits for an event with `reason` and `message` on the `kind` named `name` (controllers record
/// in the background, so it may trail the change it describes) and returns it.
fn await_event(s: &Server, kind: &str, name: &str, reason: &str, message: &str) -> Value {
    let selector = format!("involvedObject.kind={kind},involvedObject.name={name},reason={reason}");
    let found = eventually(Duration::from_secs(30), || items(s, &["events", "--field-selector", &selector]).into_iter().find(|e| e["message"] == message));
    found.unwrap_or_else(|| panic!("no {reason} event \"{message}\" on {kind} {name}; have {:?}", items(s, &["events", "--field-selector", &selector])))
}

/// What the kubelet would report once the pod's containers run and pass readiness.
fn mark_ready(s: &Server, pod: &str) {
    s.ok(&["patch", "pod", pod, "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#]);
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && pod["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn rfc3339_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Registers a node as a kubelet would: the object, then a Ready status with a fresh heartbeat
/// (so the node lifecycle controller leaves it untainted).
fn add_node(s: &Server, name: &str, labels: Value, taints: Value) {
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}});
    s.ok_stdin(&["create", "-f", "-"], &node.to_string());
    let now = rfc3339_now();
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    s.ok(&["patch", "node", name, "--subresource=status", "--type=merge", "-p", &status.to_string()]);
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  replicas: 3
  serviceName: web
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: "nginx:1"}]}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"#;

fn web_pods(s: &Server) -> Vec<Value> {
    live(items(s, &["pods", "-l", "app=web"]))
}

fn revision_label(pod: &Value) -> String {
    pod["metadata"]["labels"]["controller-revision-hash"].as_str().unwrap_or_default().to_string()
}

fn image(pod: &Value) -> String {
    pod["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_string()
}

/// Waits for pod `name` to exist and makes it Ready.
fn await_and_ready(s: &Server, name: &str) -> Value {
    wait_for(name, || get(s, "pod", name).is_some_and(|p| p["metadata"].get("deletionTimestamp").is_none()));
    mark_ready(s, name);
    get(s, "pod", name).expect("pod just seen")
}

#[test]
fn statefulset_orders_pods_keeps_storage_and_rolls_by_partition() {
    let s = server();
    s.ok_stdin(&["apply", "-f", "-"], WEB);

    // Ordered creation: each ordinal only once its predecessor is Running and Ready, its claim
    // made first.
    wait_for("web-0", || get(&s, "pod", "web-0").is_some());
    assert!(get(&s, "pvc", "data-web-0").is_some(), "the claim exists before its pod");
    assert!(get(&s, "pod", "web-1").is_none(), "web-1 must wait for web-0 to be Ready");
    let web0 = get(&s, "pod", "web-0").unwrap();
    let labels = &web0["metadata"]["labels"];
    assert_eq!(labels["statefulset.kubernetes.io/pod-name"], "web-0");
    assert_eq!(labels["apps.kubernetes.io/pod-index"], "0");
    assert!(labels["controller-revision-hash"].as_str().is_some_and(|h| h.starts_with("web-")), "{labels}");
    assert_eq!(web0["spec"]["hostname"], "web-0");
    assert_eq!(web0["spec"]["subdomain"], "web");
    let volume = web0["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "data").cloned().unwrap();
    assert_eq!(volume["persistentVolumeClaim"]["claimName"], "data-web-0");
    assert_eq!(web0["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");
    assert_eq!(web0["metadata"]["ownerReferences"][0]["controller"], true);
    // Upstream's wording, on the set ("success" for claims, "successful" for pods).
    await_event(&s, "StatefulSet", "web", "SuccessfulCreate", "create Claim data-web-0 Pod web-0 in StatefulSet web success");
    let created = await_event(&s, "StatefulSet", "web", "SuccessfulCreate", "create Pod web-0 in StatefulSet web successful");
    assert_eq!(created["type"], "Normal");
    assert_eq!(created["source"]["component"], "statefulset-controller");
    assert_eq!(created["involvedObject"]["namespace"], "default");

    mark_ready(&s, "web-0");
    wait_for("web-1", || get(&s, "pod", "web-1").is_some());
    assert!(get(&s, "pod", "web-2").is_none(), "web-2 must wait for web-1 to be Ready");
    mark_ready(&s, "web-1");
    await_and_ready(&s, "web-2");
    assert_eq!(names(&items(&s, &["pvc"])), ["data-web-0", "data-web-1", "data-web-2"]);

    wait_for("status of three ready replicas", || {
        let st = s.get_json(&["sts", "web"]);
        let status = &st["status"];
        status["replicas"] == 3 && status["readyReplicas"] == 3 && status["availableReplicas"] == 3 && status["currentReplicas"] == 3 && status["updatedReplicas"] == 3 && status["observedGeneration"] == st["metadata"]["generation"] && status["currentRevision"] == status["updateRevision"]
    });
    let first_revision = s.get_json(&["sts", "web"])["status"]["currentRevision"].as_str().unwrap().to_string();
    let revision = get(&s, "controllerrevision", &first_revision).expect("the current revision exists");
    assert_eq!(revision["revision"], 1);
    assert_eq!(revision["data"]["spec"]["template"]["$patch"], "replace");
    assert_eq!(revision["metadata"]["ownerReferences"][0]["name"], "web");
    assert!(web_pods(&s).iter().all(|p| revision_label(p) == first_revision));

    // Scale down from the highest ordinal, one at a time; claims are retained.
    s.ok(&["scale", "sts", "web", "--replicas=1"]);
    wait_for("scale down to web-0", || {
        let now = names(&web_pods(&s));
        assert!(!(now.contains(&"web-2".to_string()) && !now.contains(&"web-1".to_string())), "web-1 went before web-2: {now:?}");
        now == ["web-0"]
    });
    assert_eq!(names(&items(&s, &["pvc"])), ["data-web-0", "data-web-1", "data-web-2"], "Retain keeps claims of removed pods");
    assert!(items(&s, &["pvc"]).iter().all(|c| c["metadata"].get("ownerReferences").is_none()), "Retain adds no owners");
    await_event(&s, "StatefulSet", "web", "SuccessfulDelete", "delete Pod web-2 in StatefulSet web successful");

    s.ok(&["scale", "sts", "web", "--replicas=3"]);
    await_and_ready(&s, "web-1");
    await_and_ready(&s, "web-2");
    wait_for("three ready again", || s.get_json(&["sts", "web"])["status"]["readyReplicas"] == 3);

    // A partitioned rolling update: only ordinals >= 1, highest first, each waiting for the
    // one above to be Ready again.
    s.ok(&["patch", "sts", "web", "--type=merge", "-p", r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":1}}}}"#]);
    let old_web2 = get(&s, "pod", "web-2").unwrap()["metadata"]["uid"].clone();
    s.ok(&["set", "image", "sts/web", "web=nginx:2"]);
    wait_for("an update revision", || {
        let status = s.get_json(&["sts", "web"])["status"].clone();
        status["updateRevision"] != status["currentRevision"]
    });
    let update_revision = s.get_json(&["sts", "web"])["status"]["updateRevision"].as_str().unwrap().to_string();
    wait_for("web-2 recreated at the update revision", || get(&s, "pod", "web-2").is_some_and(|p| p["metadata"]["uid"] != old_web2 && revision_label(&p) == update_revision));
    let web2 = get(&s, "pod", "web-2").unwrap();
    assert_eq!(image(&web2), "nginx:2");
    let web1 = get(&s, "pod", "web-1").unwrap();
    assert_eq!(revision_label(&web1), first_revision, "web-1 waits until the new web-2 is Ready");
    mark_ready(&s, "web-2");
    wait_for("web-1 recreated at the update revision", || get(&s, "pod", "web-1").is_some_and(|p| revision_label(&p) == update_revision));
    mark_ready(&s, "web-1");
    wait_for("partitioned update done", || {
        let status = s.get_json(&["sts", "web"])["status"].clone();
        status["updatedReplicas"] == 2 && status["currentReplicas"] == 1 && status["readyReplicas"] == 3
    });
    let web0 = get(&s, "pod", "web-0").unwrap();
    assert_eq!(revision_label(&web0), first_revision, "below the partition nothing changes");
    assert_eq!(image(&web0), "nginx:1");
    assert_eq!(s.get_json(&["sts", "web"])["status"]["currentRevision"], first_revision.as_str());
    assert_eq!(items(&s, &["controllerrevisions"]).len(), 2);

    // Partition 0 finishes the rollout; the update revision becomes current.
    s.ok(&["patch", "sts", "web", "--type=merge", "-p", r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#]);
    wait_for("web-0 updated", || get(&s, "pod", "web-0").is_some_and(|p| revision_label(&p) == update_revision));
    mark_ready(&s, "web-0");
    wait_for("rollout complete", || {
        let status = s.get_json(&["sts", "web"])["status"].clone();
        status["currentRevision"] == update_revision.as_str() && status["updatedReplicas"] == 3 && status["currentReplicas"] == 3
    });

    // A failed pod is deleted and made again under the same name.
    let failed_uid = get(&s, "pod", "web-1").unwrap()["metadata"]["uid"].clone();
    s.ok(&["patch", "pod", "web-1", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Failed"}}"#]);
    wait_for("web-1 replaced", || get(&s, "pod", "web-1").is_some_and(|p| p["metadata"]["uid"] != failed_uid && p["metadata"].get("deletionTimestamp").is_none()));

    s.ok(&["delete", "sts", "web"]);
    wait_for("pods collected with the set", || items(&s, &["pods", "-l", "app=web"]).is_empty());
    assert_eq!(items(&s, &["pvc"]).len(), 3, "claims outlive the set under Retain");
}

const DB: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 2
  podManagementPolicy: Parallel
  serviceName: db
  ordinals: {start: 5}
  persistentVolumeClaimRetentionPolicy: {whenDeleted: Delete, whenScaled: Delete}
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: "postgres:16"}]}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"#;

#[test]
fn parallel_statefulset_with_start_ordinal_deletes_claims_by_policy() {
    let s = server();
    s.ok_stdin(&["apply", "-f", "-"], DB);
    // Parallel: both at once, without waiting for readiness.
    wait_for("db-5 and db-6", || names(&live(items(&s, &["pods", "-l", "app=db"]))) == ["db-5", "db-6"]);
    wait_for("claims owned by the set", || {
        let claims = items(&s, &["pvc"]);
        names(&claims) == ["data-db-5", "data-db-6"] && claims.iter().all(|c| c["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet")
    });

    // whenScaled: Delete: the scaled-away pod's claim goes with it.
    s.ok(&["scale", "sts", "db", "--replicas=1"]);
    wait_for("db-6 and its claim gone", || names(&live(items(&s, &["pods", "-l", "app=db"]))) == ["db-5"] && names(&items(&s, &["pvc"])) == ["data-db-5"]);

    // whenDeleted: Delete: the rest go with the set.
    s.ok(&["delete", "sts", "db"]);
    wait_for("pods and claims collected", || items(&s, &["pods", "-l", "app=db"]).is_empty() && items(&s, &["pvc"]).is_empty());
}

const AGENT: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      nodeSelector: {disk: ssd}
      containers: [{name: agent, image: "agent:1"}]
"#;

fn agent_pods(s: &Server) -> Vec<Value> {
    live(items(s, &["pods", "-l", "app=agent"]))
}

/// The node a daemon pod is pinned to by its required node affinity.
fn pinned_node(pod: &Value) -> String {
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    assert_eq!(terms.as_array().map(Vec::len), Some(1), "{terms}");
    let field = &terms[0]["matchFields"][0];
    assert_eq!(field["key"], "metadata.name");
    assert_eq!(field["operator"], "In");
    field["values"][0].as_str().unwrap_or_default().to_string()
}

fn pinned_nodes(s: &Server) -> Vec<String> {
    let mut nodes: Vec<String> = agent_pods(s).iter().map(pinned_node).collect();
    nodes.sort();
    nodes
}

#[test]
fn daemonset_runs_one_pod_per_eligible_node_and_follows_nodes() {
    let s = server();
    add_node(&s, "n1", json!({"disk": "ssd"}), json!([]));
    add_node(&s, "n2", json!({"disk": "ssd"}), json!([]));
    add_node(&s, "n3", json!({"disk": "ssd"}), json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]));
    add_node(&s, "n4", json!({"disk": "hdd"}), json!([]));
    s.ok_stdin(&["apply", "-f", "-"], AGENT);

    // n3's taint is not tolerated; n4 is not selected.
    wait_for("pods on n1 and n2", || pinned_nodes(&s) == ["n1", "n2"]);
    // The events name the pods the server generated, not the generateName prefix.
    for pod in agent_pods(&s) {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let event = await_event(&s, "DaemonSet", "agent", "SuccessfulCreate", &format!("Created pod: {name}"));
        assert_eq!(event["source"]["component"], "daemonset-controller");
    }
    let pod = agent_pods(&s)[0].clone();
    assert!(pod["spec"].get("nodeName").is_none(), "binding is the scheduler's job");
    let tolerations = pod["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    for (key, effect) in [("node.kubernetes.io/not-ready", "NoExecute"), ("node.kubernetes.io/unreachable", "NoExecute"), ("node.kubernetes.io/unschedulable", "NoSchedule"), ("node.kubernetes.io/disk-pressure", "NoSchedule")] {
        assert!(tolerations.iter().any(|t| t["key"] == key && t["effect"] == effect && t["operator"] == "Exists"), "missing {key}:{effect} in {tolerations:?}");
    }
    let hash = pod["metadata"]["labels"]["controller-revision-hash"].as_str().unwrap().to_string();
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "DaemonSet");
    assert!(get(&s, "controllerrevision", &format!("agent-{hash}")).is_some());
    wait_for("status", || {
        let ds = s.get_json(&["ds", "agent"]);
        let st = &ds["status"];
        st["desiredNumberScheduled"] == 2 && st["currentNumberScheduled"] == 2 && st["numberMisscheduled"] == 0 && st["updatedNumberScheduled"] == 2 && st["numberUnavailable"] == 2 && st["observedGeneration"] == ds["metadata"]["generation"]
    });

    // Nodes come, change and go.
    add_node(&s, "n5", json!({"disk": "ssd"}), json!([]));
    wait_for("a pod for the new node", || pinned_nodes(&s) == ["n1", "n2", "n5"]);
    s.ok(&["label", "node", "n4", "disk=ssd", "--overwrite"]);
    wait_for("a pod for the relabelled node", || pinned_nodes(&s) == ["n1", "n2", "n4", "n5"]);
    s.ok(&["label", "node", "n2", "disk=hdd", "--overwrite"]);
    wait_for("no pod on the node no longer selected", || pinned_nodes(&s) == ["n1", "n4", "n5"]);
    s.ok(&["delete", "node", "n1"]);
    wait_for("no pod for the removed node", || pinned_nodes(&s) == ["n4", "n5"]);
    s.ok(&["taint", "node", "n3", "gpu-"]);
    wait_for("a pod once the taint is gone", || pinned_nodes(&s) == ["n3", "n4", "n5"]);

    for pod in agent_pods(&s) {
        mark_ready(&s, pod["metadata"]["name"].as_str().unwrap());
    }
    wait_for("ready status", || {
        let st = s.get_json(&["ds", "agent"])["status"].clone();
        st["desiredNumberScheduled"] == 3 && st["numberReady"] == 3 && st["numberAvailable"] == 3 && st.get("numberUnavailable").is_none_or(|n| *n == 0)
    });

    // A rolling update replaces one pod at a time (maxUnavailable 1).
    s.ok(&["set", "image", "ds/agent", "agent=agent:2"]);
    wait_for("all pods replaced", || {
        let pods = agent_pods(&s);
        let not_ready = pods.iter().filter(|p| !is_ready(p)).count();
        assert!(not_ready <= 1, "more than maxUnavailable pods down: {}", names(&pods).join(","));
        for pod in pods.iter().filter(|p| !is_ready(p)) {
            mark_ready(&s, pod["metadata"]["name"].as_str().unwrap());
        }
        pods.len() == 3 && pods.iter().all(|p| image(p) == "agent:2" && is_ready(p))
    });
    wait_for("updated status", || {
        let st = s.get_json(&["ds", "agent"])["status"].clone();
        st["updatedNumberScheduled"] == 3 && st["numberAvailable"] == 3
    });
    assert_eq!(items(&s, &["controllerrevisions", "-l", "app=agent"]).len(), 2);

    // A failed daemon pod is reported, deleted and replaced.
    let failed = agent_pods(&s).into_iter().find(|p| pinned_node(p) == "n3").expect("a pod on n3");
    let failed_name = failed["metadata"]["name"].as_str().unwrap().to_string();
    s.ok(&["patch", "pod", &failed_name, "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Failed"}}"#]);
    let warning = await_event(&s, "DaemonSet", "agent", "FailedDaemonPod", &format!("Found failed daemon pod default/{failed_name} on node n3, will try to kill it"));
    assert_eq!(warning["type"], "Warning");
    await_event(&s, "DaemonSet", "agent", "SuccessfulDelete", &format!("Deleted pod: {failed_name}"));
    wait_for("a new pod on n3", || agent_pods(&s).iter().any(|p| pinned_node(p) == "n3" && p["metadata"]["name"] != failed_name.as_str()));

    s.ok(&["delete", "ds", "agent"]);
    wait_for("pods collected with the set", || items(&s, &["pods", "-l", "app=agent"]).is_empty());
}
