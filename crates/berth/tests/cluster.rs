//! The control plane end to end with simulated nodes (`berth sim-nodes`, as KWOK): the scheduler
//! places pods, the nodes report them Running and Ready, Deployments roll within their budget,
//! and a node that stops heartbeating has its pods replaced elsewhere.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use testsupport::{Server, SimNodes, eventually};

/// `kubectl get pods --watch` running in the background: every event it has printed so far.
struct PodWatch {
    child: Child,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl PodWatch {
    fn start(server: &Server, selector: &str) -> Self {
        let mut child = server
            .kubectl_command(&["get", "pods", "-l", selector, "--watch", "--output-watch-events", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kubectl get --watch");
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().expect("piped stdout");
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            while let Ok(n) = std::io::Read::read(&mut stdout, &mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        });
        PodWatch { child, output }
    }

    /// The complete events printed so far, in order.
    fn events(&self) -> Vec<Value> {
        let output = self.output.lock().unwrap().clone();
        serde_json::Deserializer::from_slice(&output).into_iter::<Value>().map_while(Result::ok).collect()
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a pod counts toward a Deployment's availability: Ready and not being deleted.
fn is_available(pod: &Value) -> bool {
    pod["metadata"].get("deletionTimestamp").is_none()
        && pod["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Simulated nodes with the capacity these tests count on.
fn sim_nodes(server: &Server, prefix: &str, count: usize) -> SimNodes {
    SimNodes::start(env!("CARGO_BIN_EXE_berth"), server, prefix, count, &["--cpu", "4", "--memory", "8Gi", "--pods", "50", "--extended", "example.com/widget=2"])
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    assert!(eventually(timeout, || check().then_some(())).is_some(), "timed out waiting for {what}");
}

fn running_pods(s: &Server, selector: &str) -> Vec<Value> {
    s.get_json(&["pods", "-l", selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none() && p["status"]["phase"] == "Running")
        .collect()
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 1}}
  template:
    metadata: {labels: {app: web}}
    spec:
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers:
      - {name: web, image: "nginx:1", resources: {requests: {cpu: 100m}}}
"#;

#[test]
fn deployments_run_roll_and_survive_a_node_failure() {
    let s = Server::start_with(env!("CARGO_BIN_EXE_berth"), &["--node-monitor-grace-period=5s"]);
    let mut doomed = Some(sim_nodes(&s, "a-", 2));
    let _survivor = sim_nodes(&s, "b-", 1);
    wait_for("3 ready nodes", Duration::from_secs(30), || {
        s.get_json(&["nodes"])["items"].as_array().is_some_and(|n| {
            n.len() == 3 && n.iter().all(|n| n["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")))
        })
    });

    s.ok_stdin(&["apply", "-f", "-"], DEPLOYMENT);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert_eq!(running_pods(&s, "app=web").len(), 4);

    // A rolling update never leaves fewer than replicas - maxUnavailable available: checked on
    // every pod event of the rollout, as a watch of the pods sees them.
    let watch = PodWatch::start(&s, "app=web");
    wait_for("the watch's initial pods", Duration::from_secs(30), || watch.events().len() >= 4);
    s.ok(&["set", "image", "deployment/web", "web=nginx:2"]);
    let mut lowest = i64::MAX;
    wait_for("rollout of nginx:2", Duration::from_secs(60), || {
        let d = s.get_json(&["deployment", "web"]);
        let available = d["status"]["availableReplicas"].as_i64().unwrap_or(0);
        if d["status"]["observedGeneration"] == d["metadata"]["generation"] {
            lowest = lowest.min(available);
        }
        d["status"]["updatedReplicas"] == 4 && available == 4 && d["status"]["replicas"] == 4
    });
    assert!(lowest >= 3, "availability dropped to {lowest} during the rollout");
    s.ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
    wait_for("the watch to see the last old pod go", Duration::from_secs(30), || {
        watch.events().iter().filter(|e| e["type"] == "DELETED").count() >= 4
    });
    let mut pods: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
    let mut lowest_seen = usize::MAX;
    let mut new_image_seen = false;
    for event in watch.events() {
        let pod = &event["object"];
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if event["type"] == "DELETED" {
            pods.remove(&name);
        } else {
            pods.insert(name, pod.clone());
        }
        new_image_seen |= pod["spec"]["containers"][0]["image"] == "nginx:2";
        if pods.len() >= 4 {
            lowest_seen = lowest_seen.min(pods.values().filter(|p| is_available(p)).count());
        }
    }
    assert!(new_image_seen, "the watch saw no pod of the new template");
    assert!(lowest_seen >= 3, "the watched pods' availability dropped to {lowest_seen} during the rollout");
    let images: Vec<&str> = pods.values().filter(|p| is_available(p)).filter_map(|p| p["spec"]["containers"][0]["image"].as_str()).collect();
    assert_eq!(images, ["nginx:2"; 4], "after the rollout the watch ends on four available new pods");
    drop(watch);
    let history = s.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains("2"), "{history}");

    // The a- nodes stop heartbeating: their pods are evicted and replaced on b-0.
    drop(doomed.take());
    wait_for("all web pods running on b-0", Duration::from_secs(90), || {
        let pods = running_pods(&s, "app=web");
        pods.len() == 4 && pods.iter().all(|p| p["spec"]["nodeName"] == "b-0")
    });
    let node = s.get_json(&["node", "a-0"]);
    assert!(node["spec"]["taints"].as_array().is_some_and(|t| t.iter().any(|t| t["key"] == "node.kubernetes.io/unreachable")), "{node}");
}

#[test]
fn jobs_and_unschedulable_pods_with_simulated_nodes() {
    let s = Server::start(env!("CARGO_BIN_EXE_berth"));
    let _nodes = sim_nodes(&s, "sim-", 2);
    s.ok(&["create", "job", "once", "--image=busybox", "--", "true"]);
    wait_for("job complete", Duration::from_secs(60), || s.get_json(&["job", "once"])["status"]["succeeded"] == 1);
    s.ok(&["wait", "--for=condition=Complete", "job/once", "--timeout=30s"]);

    s.ok_stdin(
        &["create", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "huge"}, "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "64"}}}]}}"#,
    );
    wait_for("an Unschedulable explanation", Duration::from_secs(30), || {
        unschedulable_message(&s.get_json(&["pod", "huge"])).is_some_and(|m| m.contains("2 Insufficient cpu"))
    });

    // The nodes have the capacity their flags gave them, extended resources included, and the
    // scheduler counts those like any other.
    let node = s.get_json(&["node", "sim-0"]);
    let capacity = &node["status"]["capacity"];
    assert_eq!((&capacity["cpu"], &capacity["memory"], &capacity["pods"], &capacity["example.com/widget"]), (&"4".into(), &"8Gi".into(), &"50".into(), &"2".into()), "{node}");
    assert_eq!(node["status"]["allocatable"]["example.com/widget"], "2", "{node}");
    let widgets = |name: &str, count: u32| {
        format!(r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}}, "spec": {{"containers": [{{"name": "c", "image": "busybox", "resources": {{"requests": {{"example.com/widget": "{count}"}}, "limits": {{"example.com/widget": "{count}"}}}}}}]}}}}"#)
    };
    s.ok_stdin(&["create", "-f", "-"], &widgets("two-widgets", 2));
    wait_for("a pod using both widgets of a node Running", Duration::from_secs(30), || s.get_json(&["pod", "two-widgets"])["status"]["phase"] == "Running");
    s.ok_stdin(&["create", "-f", "-"], &widgets("three-widgets", 3));
    wait_for("no node with three widgets", Duration::from_secs(30), || {
        unschedulable_message(&s.get_json(&["pod", "three-widgets"])).is_some_and(|m| m.contains("2 Insufficient example.com/widget"))
    });
}

/// The message of the pod's PodScheduled=False condition with reason Unschedulable, if any.
fn unschedulable_message(pod: &Value) -> Option<String> {
    let conditions = pod["status"]["conditions"].as_array()?;
    let condition = conditions.iter().find(|c| c["type"] == "PodScheduled" && c["status"] == "False" && c["reason"] == "Unschedulable")?;
    condition["message"].as_str().map(str::to_string)
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn controllers_and_scheduler_run_as_separate_processes_with_leases() {
    let s = Server::start_with(env!("CARGO_BIN_EXE_berth"), &["--disable-controllers", "--disable-scheduler"]);
    let spawn = |args: &[&str]| {
        Process(Command::new(env!("CARGO_BIN_EXE_berth")).args(args).arg("--kubeconfig").arg(s.kubeconfig()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn berth"))
    };
    let _cm = spawn(&["controller-manager"]);
    let _sched = spawn(&["scheduler"]);
    let _nodes = sim_nodes(&s, "sim-", 1);
    s.ok(&["create", "deployment", "web", "--image=nginx", "--replicas=2"]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    for lease in ["kube-controller-manager", "kube-scheduler"] {
        let holder = s.get_json(&["-n", "kube-system", "lease", lease])["spec"]["holderIdentity"].as_str().unwrap_or("").to_string();
        assert!(!holder.is_empty(), "{lease} has no holder");
    }
}

/// The server's own controllers are elected too: while another identity holds the
/// kube-controller-manager Lease they do nothing, and they take over when it is free again.
#[test]
fn in_process_controllers_stand_by_while_another_holds_the_lease() {
    let s = Server::start(env!("CARGO_BIN_EXE_berth"));
    let _nodes = sim_nodes(&s, "sim-", 1);
    let holder = |s: &Server| s.get_json(&["-n", "kube-system", "lease", "kube-controller-manager"])["spec"]["holderIdentity"].as_str().unwrap_or("").to_string();
    let ours = eventually(Duration::from_secs(30), || {
        let kubectl = s.kubectl(&["-n", "kube-system", "get", "lease", "kube-controller-manager", "-o", "jsonpath={.spec.holderIdentity}"]);
        let holder = String::from_utf8_lossy(&kubectl.stdout).to_string();
        (kubectl.status.success() && !holder.is_empty()).then_some(holder)
    })
    .expect("the server's controllers take the lease");

    // An intruder takes the lease for an hour; the server's renewal sees it and stops its controllers.
    let renew = chrono_like_now();
    s.ok(&["-n", "kube-system", "patch", "lease", "kube-controller-manager", "--type=merge", "-p",
        &format!(r#"{{"spec":{{"holderIdentity":"intruder","leaseDurationSeconds":3600,"renewTime":"{renew}","acquireTime":"{renew}"}}}}"#)]);
    // Upstream's timing: renewals keep being tried for the 10 s renew deadline before giving up.
    wait_for("the server to notice", Duration::from_secs(40), || s.log().contains("lost the kube-controller-manager lease"));
    assert_eq!(holder(&s), "intruder", "the server must not take a held lease back");
    s.ok(&["create", "deployment", "standby", "--image=nginx", "--replicas=1"]);
    std::thread::sleep(Duration::from_secs(4));
    let sets = s.get_json(&["replicasets", "-l", "app=standby"]);
    assert_eq!(sets["items"].as_array().map(Vec::len), Some(0), "controllers acted without the lease: {sets}");

    // The intruder lets go: the server leads again with fresh controllers.
    s.ok(&["-n", "kube-system", "delete", "lease", "kube-controller-manager"]);
    s.ok(&["rollout", "status", "deployment/standby", "--timeout=90s"]);
    let again = holder(&s);
    assert!(!again.is_empty() && again != "intruder", "holder after release: {again:?} (was {ours:?})");
}

/// RFC 3339 with microseconds, as a Lease's MicroTime fields want, without a date crate.
fn chrono_like_now() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"]).output().expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn blue_green_and_canary_examples() {
    let s = Server::start(env!("CARGO_BIN_EXE_berth"));
    let _nodes = sim_nodes(&s, "sim-", 2);
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

    s.ok(&["create", "namespace", "bg"]);
    s.ok(&["-n", "bg", "apply", "-f", &format!("{examples}/blue-green/app.yaml")]);
    let in_bg = |images: Vec<String>| move |s: &Server| -> bool {
        let got = endpoint_images_ns(s, "bg", "shop");
        got == images
    };
    let blue = vec!["shop:1.0".to_string(); 3];
    let green = vec!["shop:2.0".to_string(); 3];
    wait_for("blue serves", Duration::from_secs(60), || in_bg(blue.clone())(&s));
    s.ok(&["-n", "bg", "patch", "service", "shop", "-p", r#"{"spec":{"selector":{"app":"shop","track":"green"}}}"#]);
    wait_for("green serves", Duration::from_secs(60), || in_bg(green.clone())(&s));
    s.ok(&["-n", "bg", "patch", "service", "shop", "-p", r#"{"spec":{"selector":{"app":"shop","track":"blue"}}}"#]);
    wait_for("rolled back to blue", Duration::from_secs(60), || in_bg(blue.clone())(&s));

    s.ok(&["create", "namespace", "canary"]);
    s.ok(&["-n", "canary", "apply", "-f", &format!("{examples}/canary/app.yaml")]);
    let split = |stable: usize, canary: usize| {
        let mut want = vec!["shop:1.0".to_string(); stable];
        want.extend(vec!["shop:2.0".to_string(); canary]);
        want
    };
    wait_for("9:1 split", Duration::from_secs(60), || endpoint_images_ns(&s, "canary", "shop") == split(9, 1));
    s.ok(&["-n", "canary", "scale", "deployment", "shop-canary", "--replicas=5"]);
    s.ok(&["-n", "canary", "scale", "deployment", "shop-stable", "--replicas=5"]);
    wait_for("5:5 split", Duration::from_secs(60), || endpoint_images_ns(&s, "canary", "shop") == split(5, 5));
}

fn endpoint_images_ns(s: &Server, ns: &str, service: &str) -> Vec<String> {
    let slices = s.get_json(&["-n", ns, "endpointslices", "-l", &format!("kubernetes.io/service-name={service}")]);
    let mut images = Vec::new();
    for slice in slices["items"].as_array().cloned().unwrap_or_default() {
        for ep in slice["endpoints"].as_array().cloned().unwrap_or_default() {
            if ep["conditions"]["ready"] == true
                && let Some(name) = ep["targetRef"]["name"].as_str()
            {
                // A pod deleted since the slice was read shows as gone; callers poll until the
                // slices catch up.
                let out = s.kubectl(&["-n", ns, "get", "pod", name, "-o", "json"]);
                let pod: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                images.push(pod["spec"]["containers"][0]["image"].as_str().unwrap_or("(gone)").to_string());
            }
        }
    }
    images.sort();
    images
}

#[test]
fn disruption_budgets_and_quotas_report_status() {
    let s = Server::start(env!("CARGO_BIN_EXE_berth"));
    let _nodes = sim_nodes(&s, "sim-", 1);
    s.ok(&["create", "quota", "small", "--hard=pods=10,requests.cpu=2,count/deployments.apps=5"]);
    s.ok(&["create", "deployment", "web", "--image=nginx", "--replicas=4"]);
    s.ok(&["create", "poddisruptionbudget", "web", "--selector=app=web", "--min-available=75%"]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    wait_for("pdb status", Duration::from_secs(30), || {
        let pdb = s.get_json(&["pdb", "web"]);
        let st = &pdb["status"];
        st["expectedPods"] == 4 && st["currentHealthy"] == 4 && st["desiredHealthy"] == 3 && st["disruptionsAllowed"] == 1
    });
    wait_for("quota usage", Duration::from_secs(30), || {
        let used = s.get_json(&["quota", "small"])["status"]["used"].clone();
        used["pods"] == "4" && used["count/deployments.apps"] == "1" && used["requests.cpu"] == "0"
    });
}

#[test]
fn drain_evicts_within_the_disruption_budget() {
    let s = Server::start(env!("CARGO_BIN_EXE_berth"));
    let _a = sim_nodes(&s, "a-", 1);
    s.ok(&["create", "deployment", "web", "--image=nginx", "--replicas=2"]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    s.ok(&["create", "poddisruptionbudget", "web", "--selector=app=web", "--min-available=2"]);
    wait_for("pdb observed", Duration::from_secs(30), || s.get_json(&["pdb", "web"])["status"]["currentHealthy"] == 2);
    // The budget allows no disruption: drain gives up rather than break it.
    let err = s.fails(&["drain", "a-0", "--ignore-daemonsets", "--timeout=5s"]);
    assert!(err.contains("disruption budget"), "{err}");
    assert!(s.get_json(&["node", "a-0"])["spec"]["unschedulable"] == true, "drain cordons first");
    // A second node and a looser budget: drain moves the pods.
    let _b = sim_nodes(&s, "b-", 1);
    s.ok(&["patch", "pdb", "web", "--type=merge", "-p", r#"{"spec":{"minAvailable":1}}"#]);
    wait_for("pdb allows one", Duration::from_secs(30), || s.get_json(&["pdb", "web"])["status"]["disruptionsAllowed"] == 1);
    s.ok(&["drain", "a-0", "--ignore-daemonsets", "--timeout=90s"]);
    wait_for("pods on b-0", Duration::from_secs(60), || {
        let pods = running_pods(&s, "app=web");
        pods.len() == 2 && pods.iter().all(|p| p["spec"]["nodeName"] == "b-0")
    });
}

#[test]
fn recreate_stops_every_old_pod_before_starting_new_ones() {
    let s = Server::start(env!("CARGO_BIN_EXE_berth"));
    let _nodes = sim_nodes(&s, "sim-", 2);
    s.ok_stdin(&["apply", "-f", "-"], &DEPLOYMENT.replace("{rollingUpdate: {maxSurge: 1, maxUnavailable: 1}}", "{type: Recreate}"));
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let watch = PodWatch::start(&s, "app=web");
    wait_for("the watch's initial pods", Duration::from_secs(30), || watch.events().len() >= 4);
    s.ok(&["set", "image", "deployment/web", "web=nginx:2"]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    wait_for("four new pods seen Running", Duration::from_secs(30), || {
        let events = watch.events();
        let running: std::collections::BTreeSet<&str> = events
            .iter()
            .filter(|e| e["object"]["spec"]["containers"][0]["image"] == "nginx:2" && e["object"]["status"]["phase"] == "Running")
            .filter_map(|e| e["object"]["metadata"]["name"].as_str())
            .collect();
        running.len() == 4
    });
    let events = watch.events();
    let image = |e: &Value| e["object"]["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_string();
    let last_old_gone = events.iter().rposition(|e| e["type"] == "DELETED" && image(e) == "nginx:1");
    let first_new = events.iter().position(|e| image(e) == "nginx:2");
    let old_deleted = events.iter().filter(|e| e["type"] == "DELETED" && image(e) == "nginx:1").count();
    assert_eq!(old_deleted, 4, "every old pod is deleted");
    assert!(last_old_gone < first_new, "a new pod appeared (event {first_new:?}) before the last old pod was gone (event {last_old_gone:?})");
}

#[test]
fn affinity_anti_affinity_and_spread_place_pods_as_upstream() {
    let s = Server::start(env!("CARGO_BIN_EXE_berth"));
    let _a = sim_nodes(&s, "a-", 2);
    let _b = sim_nodes(&s, "b-", 1);
    wait_for("3 nodes", Duration::from_secs(30), || s.get_json(&["nodes"])["items"].as_array().is_some_and(|n| n.len() == 3));
    s.ok(&["label", "node", "a-0", "a-1", "topology.kubernetes.io/zone=zone-a"]);
    s.ok(&["label", "node", "b-0", "topology.kubernetes.io/zone=zone-b"]);
    let zone_of = |node: &str| if node.starts_with("a-") { "zone-a" } else { "zone-b" };
    let placed = |selector: &str| -> Vec<String> {
        running_pods(&s, selector).iter().filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_string)).collect()
    };

    // Even across zones with DoNotSchedule: two zones, four pods, two each (not 3/1 by node).
    s.ok_stdin(&["apply", "-f", "-"], r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: spread}
spec:
  replicas: 4
  selector: {matchLabels: {app: spread}}
  template:
    metadata: {labels: {app: spread}}
    spec:
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: spread}}}
      containers: [{name: c, image: busybox}]
"#);
    wait_for("4 spread pods Running", Duration::from_secs(60), || placed("app=spread").len() == 4);
    let zones: Vec<&str> = placed("app=spread").iter().map(|n| zone_of(n)).collect();
    assert_eq!(zones.iter().filter(|z| **z == "zone-b").count(), 2, "{zones:?}");

    // Required node affinity: only zone-b.
    s.ok_stdin(&["apply", "-f", "-"], r#"
apiVersion: v1
kind: Pod
metadata: {name: in-b, labels: {app: in-b}}
spec:
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{matchExpressions: [{key: topology.kubernetes.io/zone, operator: In, values: [zone-b]}]}]
  containers: [{name: c, image: busybox}]
"#);
    wait_for("the zone-b pod Running", Duration::from_secs(30), || placed("app=in-b") == ["b-0"]);

    // Required anti-affinity by host: one per node, and the fourth explains why it waits.
    s.ok_stdin(&["apply", "-f", "-"], r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: solo}
spec:
  replicas: 4
  selector: {matchLabels: {app: solo}}
  template:
    metadata: {labels: {app: solo}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: solo}}}
      containers: [{name: c, image: busybox}]
"#);
    wait_for("3 solo pods Running on distinct nodes", Duration::from_secs(60), || {
        let mut nodes = placed("app=solo");
        nodes.sort();
        nodes == ["a-0", "a-1", "b-0"]
    });
    wait_for("the fourth solo pod Unschedulable by anti-affinity", Duration::from_secs(30), || {
        s.get_json(&["pods", "-l", "app=solo"])["items"].as_array().is_some_and(|pods| {
            pods.iter().any(|p| {
                unschedulable_message(p).as_deref()
                    == Some("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.")
            })
        })
    });
}

#[test]
fn terminated_pods_beyond_the_threshold_are_collected_oldest_first() {
    let s = Server::start_with(env!("CARGO_BIN_EXE_berth"), &["--terminated-pod-gc-threshold=2"]);
    let _nodes = sim_nodes(&s, "sim-", 1);
    for name in ["done-1", "done-2", "done-3", "done-4"] {
        s.ok_stdin(
            &["create", "-f", "-"],
            &format!(r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}", "labels": {{"app": "done"}}}}, "spec": {{"restartPolicy": "Never", "containers": [{{"name": "c", "image": "busybox"}}]}}}}"#),
        );
        // Creation times a second apart, so "oldest" does not fall back to names.
        std::thread::sleep(Duration::from_millis(1100));
    }
    s.ok_stdin(&["create", "-f", "-"], r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "still-running", "labels": {"app": "done"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}"#);
    let names = || -> Vec<String> {
        s.get_json(&["pods", "-l", "app=done"])["items"].as_array().cloned().unwrap_or_default().iter().filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string)).collect()
    };
    wait_for("the two oldest terminated pods collected", Duration::from_secs(60), || names() == ["done-3", "done-4", "still-running"]);
    for name in ["done-3", "done-4"] {
        assert_eq!(s.get_json(&["pod", name])["status"]["phase"], "Succeeded");
    }
}
