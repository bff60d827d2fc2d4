//! The node agent on the real stack: `berth server` with its agent, its own containerd, crun (or
//! runc where crun cannot run) and Debian's CNI plugins, driven with the real kubectl. Needs root
//! and scripts/setup's packages.
//!
//! Each test starts its own server; they run one at a time because every agent on the machine
//! shares the host's `berth0` bridge and pod address range.

use std::time::Duration;

use serde_json::Value;
use testsupport::{AgentServer, Server, agent_server, eventually};


fn server() -> AgentServer {
    agent_server(env!("CARGO_BIN_EXE_berth"), &[])
}

/// The pod, or null while it does not exist: a controller may not have made it yet.
fn pod(server: &Server, name: &str) -> Value {
    let text = server.ok(&["get", "pod", name, "-o", "json", "--ignore-not-found"]);
    if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).expect("kubectl printed JSON") }
}

fn wait_pod(server: &Server, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(90), || {
        let p = pod(server, name);
        check(&p).then_some(p)
    })
    .unwrap_or_else(|| panic!("pod {name}: {what} never happened:\n{}\n{}", server.ok(&["describe", "pod", name]), server.log().lines().rev().take(40).collect::<Vec<_>>().join("\n")))
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

fn container_status<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["status"]["containerStatuses"].as_array().and_then(|list| list.iter().find(|c| c["name"] == name)).unwrap_or(&Value::Null)
}

#[test]
fn a_pod_runs_in_a_container_and_its_logs_show() {
    let server = server();
    let node = server.get_json(&["node", "berth-test"]);
    assert_eq!(node["status"]["nodeInfo"]["containerRuntimeVersion"].as_str().unwrap_or("").split("://").next(), Some("containerd"));
    assert!(node["spec"]["podCIDR"].as_str().is_some_and(|c| c.ends_with("/24")), "{node}");
    assert!(node["status"]["capacity"]["cpu"].as_str().is_some_and(|c| c.parse::<u32>().unwrap_or(0) >= 1));

    server.ok(&["run", "hello", "--image=berth.dev/busybox:1", "--restart=Never", "--", "sh", "-c", "echo to stderr >&2; sleep 1; grep THP_enabled /proc/self/status; echo hello from a container; echo pod ip $(hostname -i)"]);
    let p = wait_pod(&server, "hello", "Succeeded", |p| phase(p) == "Succeeded");
    let status = container_status(&p, "hello");
    assert_eq!(status["state"]["terminated"]["exitCode"], 0);
    assert_eq!(status["state"]["terminated"]["reason"], "Completed");
    assert!(status["containerID"].as_str().is_some_and(|id| id.starts_with("containerd://")));
    let ip = p["status"]["podIP"].as_str().unwrap_or("").to_string();
    assert!(ip.starts_with("10.42."), "pod IP from the node's CIDR: {p}");
    assert_eq!(p["status"]["hostIP"], "127.0.0.1");

    let logs = server.ok(&["logs", "hello"]);
    assert!(logs.contains("hello from a container\n"), "{logs}");
    assert!(logs.contains("to stderr\n"), "{logs}");
    assert!(logs.contains(&format!("pod ip {ip}")), "the container sees its pod IP: {logs}");
    // The server's allocator turns transparent huge pages off for its own process; containers
    // must not inherit that, so they see what any process on this machine sees.
    let own_thp = std::fs::read_to_string("/proc/self/status").unwrap_or_default().lines().find(|l| l.starts_with("THP_enabled:")).map(str::to_string);
    if let Some(own_thp) = own_thp {
        assert!(logs.contains(&format!("{own_thp}\n")), "the container's {own_thp}: {logs}");
    }
    assert_eq!(server.ok(&["logs", "hello", "--tail=1"]), format!("pod ip {ip}\n"));
    let stamped = server.ok(&["logs", "hello", "--timestamps", "--tail=1"]);
    assert!(stamped.split_once(' ').is_some_and(|(t, rest)| t.contains('T') && rest == format!("pod ip {ip}\n")), "{stamped}");

    let events = server.ok(&["get", "events", "--field-selector", "involvedObject.name=hello", "-o", "jsonpath={.items[*].reason}"]);
    for reason in ["Scheduled", "Created", "Started"] {
        assert!(events.contains(reason), "event {reason} in {events}");
    }

    // Deleting the pod stops it gracefully and removes it from the runtime and the API.
    server.ok(&["run", "sleeper", "--image=berth.dev/busybox:1", "--", "sleep", "3600"]);
    wait_pod(&server, "sleeper", "Running and Ready", |p| phase(p) == "Running" && container_status(p, "sleeper")["ready"] == true);
    server.ok(&["delete", "pod", "sleeper", "--grace-period=1"]);
    let gone = eventually(Duration::from_secs(30), || (!server.kubectl(&["get", "pod", "sleeper"]).status.success()).then_some(()));
    assert!(gone.is_some(), "the deleted pod went away");
    let tasks = String::from_utf8_lossy(&server.ctr(&["tasks", "ls"]).stdout).into_owned();
    assert_eq!(tasks.lines().count(), 1, "no containers left running (only the header): {tasks}");
}

#[test]
fn crashing_containers_restart_with_back_off_and_keep_previous_logs() {
    let server = server();
    server.ok(&["run", "crasher", "--image=berth.dev/busybox:1", "--", "sh", "-c", "echo run at $(date +%s); exit 3"]);
    let p = wait_pod(&server, "crasher", "a restart and back-off", |p| {
        let s = container_status(p, "crasher");
        s["restartCount"].as_i64().unwrap_or(0) >= 1 && s["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let s = container_status(&p, "crasher");
    assert_eq!(s["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(s["lastState"]["terminated"]["reason"], "Error");
    assert!(s["state"]["waiting"]["message"].as_str().unwrap_or("").starts_with("back-off 10s restarting failed container=crasher"), "{s}");
    assert_eq!(phase(&p), "Running", "an Always pod between restarts is Running, as upstream");
    let previous = server.ok(&["logs", "crasher", "--previous"]);
    assert!(previous.starts_with("run at "), "{previous}");
    let events = server.ok(&["get", "events", "--field-selector", "involvedObject.name=crasher", "-o", "jsonpath={.items[*].reason}"]);
    assert!(events.contains("Started"), "{events}");

    // OnFailure pods that succeed stop restarting; Never pods that fail are Failed.
    server.ok(&["run", "fails-once", "--image=berth.dev/busybox:1", "--restart=Never", "--", "sh", "-c", "exit 7"]);
    let p = wait_pod(&server, "fails-once", "Failed", |p| phase(p) == "Failed");
    assert_eq!(container_status(&p, "fails-once")["state"]["terminated"]["exitCode"], 7);
    assert_eq!(container_status(&p, "fails-once")["restartCount"], 0);
}

#[test]
fn configuration_volumes_probes_and_failures() {
    let server = server();
    server.ok(&["create", "configmap", "settings", "--from-literal=color=blue", "--from-literal=size=L"]);
    server.ok(&["create", "secret", "generic", "creds", "--from-literal=password=s3cret"]);
    server.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: configured, labels: {app: demo}}
spec:
  initContainers:
  - name: prepare
    image: berth.dev/busybox:1
    command: ["sh", "-c", "echo prepared > /work/ready-marker"]
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: main
    image: berth.dev/busybox:1
    command: ["sh", "-c", "echo COLOR=$COLOR PASSWORD=$PASSWORD NAME=$MY_NAME GREETING=$(GREETING) cfg_size=$cfg_size; while true; do sleep 1; done"]
    env:
    - {name: COLOR, valueFrom: {configMapKeyRef: {name: settings, key: color}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: MY_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: GREETING, value: "hi-$(MY_NAME)"}
    envFrom: [{prefix: cfg_, configMapRef: {name: settings}}]
    readinessProbe:
      exec: {command: ["cat", "/work/ready-marker"]}
      periodSeconds: 1
    volumeMounts:
    - {name: work, mountPath: /work}
    - {name: config, mountPath: /etc/config}
    - {name: secret, mountPath: /etc/secret}
    - {name: podinfo, mountPath: /etc/podinfo}
  - name: sidekick
    image: berth.dev/busybox:1
    command: ["sh", "-c", "while true; do cat /shared/ready-marker > /dev/null && echo sidekick sees the marker; sleep 5; done"]
    volumeMounts: [{name: work, mountPath: /shared}]
  volumes:
  - {name: work, emptyDir: {}}
  - {name: config, configMap: {name: settings}}
  - {name: secret, secret: {secretName: creds, defaultMode: 0400}}
  - name: podinfo
    downwardAPI:
      items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]
"#,
    );
    let p = wait_pod(&server, "configured", "Ready", |p| phase(p) == "Running" && p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")));
    assert_eq!(p["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"], "Completed");
    let logs = server.ok(&["logs", "configured", "-c", "main"]);
    assert!(logs.contains("COLOR=blue PASSWORD=s3cret NAME=configured GREETING=hi-configured cfg_size=L"), "{logs}");
    let exec_free_check = eventually(Duration::from_secs(20), || server.ok(&["logs", "configured", "-c", "sidekick"]).contains("sidekick sees the marker").then_some(()));
    assert!(exec_free_check.is_some(), "the emptyDir is shared between containers");

    // The files, read by a second pod on the same volumes' sources (exec is not there yet).
    server.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  containers:
  - name: reader
    image: berth.dev/busybox:1
    command: ["sh", "-c", "while true; do echo color=$(cat /etc/config/color) password=$(cat /etc/secret/password) mode=$(stat -L -c %a /etc/secret/password); sleep 1; done"]
    volumeMounts:
    - {name: config, mountPath: /etc/config}
    - {name: secret, mountPath: /etc/secret}
  volumes:
  - {name: config, configMap: {name: settings}}
  - {name: secret, secret: {secretName: creds, defaultMode: 0400}}
"#,
    );
    wait_pod(&server, "reader", "Running", |p| phase(p) == "Running");
    let seen = eventually(Duration::from_secs(20), || server.ok(&["logs", "reader", "--tail=1"]).contains("color=blue password=s3cret mode=400").then_some(()));
    assert!(seen.is_some(), "{}", server.ok(&["logs", "reader", "--tail=3"]));
    // A changed ConfigMap reaches the mounted files of the running pod.
    server.ok(&["patch", "configmap", "settings", "-p", r#"{"data":{"color":"green"}}"#]);
    let updated = eventually(Duration::from_secs(40), || server.ok(&["logs", "reader", "--tail=1"]).contains("color=green").then_some(()));
    assert!(updated.is_some(), "{}", server.ok(&["logs", "reader", "--tail=3"]));

    // A failing liveness probe restarts the container.
    server.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: unhealthy}
spec:
  containers:
  - name: app
    image: berth.dev/busybox:1
    command: ["sh", "-c", "touch /tmp/healthy; sleep 3; rm /tmp/healthy; sleep 3600"]
    livenessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 1
      failureThreshold: 2
"#,
    );
    wait_pod(&server, "unhealthy", "a liveness restart", |p| container_status(p, "app")["restartCount"].as_i64().unwrap_or(0) >= 1);
    let events = server.ok(&["get", "events", "--field-selector", "involvedObject.name=unhealthy", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains("Liveness probe failed"), "{events}");
    assert!(events.contains("failed liveness probe, will be restarted"), "{events}");

    // HTTPS and gRPC probes reach the pod IP; busybox httpd speaks neither TLS nor gRPC, so they
    // fail (the unit tests in the agent's probes cover success). The API server accepts a gRPC
    // probe and defaults its service as upstream does.
    server.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  containers:
  - name: web
    image: berth.dev/busybox:1
    command: ["httpd", "-f", "-p", "8080"]
    readinessProbe:
      httpGet: {port: 8080, scheme: HTTPS}
      periodSeconds: 1
  - name: rpc
    image: berth.dev/busybox:1
    command: ["httpd", "-f", "-p", "9090"]
    readinessProbe:
      grpc: {port: 9090}
      periodSeconds: 1
"#,
    );
    let p = wait_pod(&server, "probed", "Running", |p| phase(p) == "Running" && p["status"]["podIP"].is_string());
    assert_eq!(p["spec"]["containers"][1]["readinessProbe"]["grpc"], serde_json::json!({"port": 9090, "service": ""}));
    let ip = p["status"]["podIP"].as_str().unwrap_or_default().to_string();
    let events = eventually(Duration::from_secs(30), || {
        let events = server.ok(&["get", "events", "--field-selector", "involvedObject.name=probed", "-o", "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}"]);
        (events.contains(&format!("Readiness probe failed: Get \"https://{ip}:8080/\"")) && events.contains("Readiness probe failed: error: ")).then_some(events)
    });
    let p = pod(&server, "probed");
    assert!(events.is_some(), "{}", server.ok(&["describe", "pod", "probed"]));
    for name in ["web", "rpc"] {
        assert_eq!(container_status(&p, name)["ready"], false, "{p}");
    }

    // Upstream reasons for what cannot start.
    server.ok(&["run", "no-image", "--image=berth.dev/does-not-exist:1"]);
    let p = wait_pod(&server, "no-image", "an image pull error", |p| {
        let reason = container_status(p, "no-image")["state"]["waiting"]["reason"].as_str().unwrap_or("").to_string();
        reason == "ErrImagePull" || reason == "ImagePullBackOff"
    });
    assert_eq!(phase(&p), "Pending");
    server.ok(&["run", "no-config", "--image=berth.dev/busybox:1", "--overrides", r#"{"spec":{"containers":[{"name":"no-config","image":"berth.dev/busybox:1","env":[{"name":"X","valueFrom":{"configMapKeyRef":{"name":"missing","key":"k"}}}]}]}}"#]);
    let p = wait_pod(&server, "no-config", "a configuration error", |p| container_status(p, "no-config")["state"]["waiting"]["reason"] == "CreateContainerConfigError");
    assert_eq!(container_status(&p, "no-config")["state"]["waiting"]["message"], "configmap \"missing\" not found");

    // Over its memory limit, a container is OOMKilled and reported so.
    server.ok(&["run", "hungry", "--image=berth.dev/busybox:1", "--restart=Never", "--overrides", r#"{"spec":{"containers":[{"name":"hungry","image":"berth.dev/busybox:1","command":["sh","-c","dd if=/dev/zero of=/dev/null bs=64M count=1"],"resources":{"limits":{"memory":"16Mi"}}}]}}"#]);
    let p = wait_pod(&server, "hungry", "OOMKilled", |p| phase(p) == "Failed");
    let terminated = &container_status(&p, "hungry")["state"]["terminated"];
    assert_eq!(terminated["reason"], "OOMKilled", "{p}");
    assert_eq!(terminated["exitCode"], 137);
}

#[test]
fn a_deployment_runs_and_killed_containers_come_back() {
    let server = server();
    server.ok(&["create", "deployment", "web", "--image=berth.dev/busybox:1", "--replicas=3", "--", "httpd", "-f", "-p", "8080"]);
    let ready = eventually(Duration::from_secs(90), || {
        let d = server.get_json(&["deployment", "web"]);
        (d["status"]["readyReplicas"] == 3).then_some(())
    });
    assert!(ready.is_some(), "{}", server.ok(&["get", "pods", "-o", "wide"]));
    let pods = server.get_json(&["pods", "-l", "app=web"]);
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    let ips: std::collections::HashSet<String> = items.iter().filter_map(|p| p["status"]["podIP"].as_str().map(String::from)).collect();
    assert_eq!(ips.len(), 3, "each pod has its own IP");
    // The pods serve on their IPs (the host reaches them over the bridge).
    for ip in &ips {
        let answered = eventually(Duration::from_secs(10), || std::net::TcpStream::connect_timeout(&format!("{ip}:8080").parse().ok()?, Duration::from_secs(1)).ok());
        assert!(answered.is_some(), "httpd answers on {ip}:8080");
    }

    // Kill one container behind the agent's back: it is restarted in place.
    let victim = items[0]["metadata"]["name"].as_str().unwrap_or("").to_string();
    let id = items[0]["status"]["containerStatuses"][0]["containerID"].as_str().unwrap_or("").trim_start_matches("containerd://").to_string();
    let killed = server.ctr(&["tasks", "kill", "--signal", "SIGKILL", &id]);
    assert!(killed.status.success(), "ctr kill: {}", String::from_utf8_lossy(&killed.stderr));
    let p = wait_pod(&server, &victim, "a restart", |p| container_status(p, "busybox")["restartCount"].as_i64().unwrap_or(0) >= 1 && container_status(p, "busybox")["ready"] == true);
    assert_eq!(container_status(&p, "busybox")["lastState"]["terminated"]["exitCode"], 137);

    // Scaling down removes pods from the node.
    server.ok(&["scale", "deployment", "web", "--replicas=1"]);
    let scaled = eventually(Duration::from_secs(60), || {
        let out = String::from_utf8_lossy(&server.ctr(&["containers", "ls", "-q"]).stdout).into_owned();
        // One app container and its sandbox.
        (out.lines().count() == 2).then_some(())
    });
    assert!(scaled.is_some(), "{}", String::from_utf8_lossy(&server.ctr(&["containers", "ls"]).stdout));
}

#[test]
fn hooks_bad_commands_and_recovery_from_restarts() {
    let mut server = server();
    let marker_dir = std::env::temp_dir().join(format!("berth-prestop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&marker_dir);
    let manifest = r#"
apiVersion: v1
kind: Pod
metadata: {name: hooked}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: app
    image: berth.dev/busybox:1
    command: ["sh", "-c", "sleep 1; cat /tmp/hook; sleep 3600"]
    lifecycle:
      postStart: {exec: {command: ["sh", "-c", "echo from-post-start > /tmp/hook"]}}
      preStop: {exec: {command: ["sh", "-c", "echo from-pre-stop > /marker/out"]}}
    volumeMounts: [{name: marker, mountPath: /marker}]
  volumes:
  - name: marker
    hostPath: {path: MARKER, type: DirectoryOrCreate}
"#
    .replace("MARKER", &marker_dir.display().to_string());
    server.ok_stdin(&["apply", "-f", "-"], &manifest);
    wait_pod(&server, "hooked", "Running", |p| phase(p) == "Running");
    let hooked = eventually(Duration::from_secs(20), || server.ok(&["logs", "hooked"]).contains("from-post-start").then_some(()));
    assert!(hooked.is_some(), "postStart ran before the app read its file: {}", server.ok(&["logs", "hooked"]));

    // A command that does not exist: the start fails and the pod reports it, as upstream.
    server.ok(&["run", "bad-command", "--image=berth.dev/busybox:1", "--restart=Never", "--command", "--", "/no/such/program"]);
    let p = wait_pod(&server, "bad-command", "Failed", |p| phase(p) == "Failed");
    let terminated = &container_status(&p, "bad-command")["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 128, "{p}");
    assert_eq!(terminated["reason"], "StartError", "{p}");

    // containerd killed: the agent starts it again and running containers never noticed.
    server.ok(&["run", "steady", "--image=berth.dev/busybox:1", "--", "sleep", "3600"]);
    wait_pod(&server, "steady", "Running", |p| phase(p) == "Running");
    let config = server.data_dir().join("agent/containerd/config.toml").display().to_string();
    let killed = std::process::Command::new("pkill").args(["-KILL", "-f", &format!("containerd --config {config}")]).status().expect("pkill");
    assert!(killed.success(), "containerd was running");
    server.ok(&["run", "after-containerd", "--image=berth.dev/busybox:1", "--", "sleep", "3600"]);
    wait_pod(&server, "after-containerd", "Running after containerd came back", |p| phase(p) == "Running");
    assert_eq!(container_status(&pod(&server, "steady"), "steady")["restartCount"], 0);

    // The whole server and agent restarted: pods keep running, nothing restarts, logs still work.
    server.restart();
    let ready = eventually(Duration::from_secs(60), || {
        let out = server.kubectl(&["get", "node", "berth-test", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]);
        (String::from_utf8_lossy(&out.stdout) == "True").then_some(())
    });
    assert!(ready.is_some(), "the node is Ready again");
    server.ok(&["run", "after-restart", "--image=berth.dev/busybox:1", "--", "sleep", "3600"]);
    wait_pod(&server, "after-restart", "Running after the agent restarted", |p| phase(p) == "Running");
    for name in ["steady", "hooked"] {
        let p = pod(&server, name);
        assert_eq!(phase(&p), "Running", "{p}");
        assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0, "{p}");
    }
    assert!(server.ok(&["logs", "hooked"]).contains("from-post-start"));

    // preStop runs before the container is stopped.
    server.ok(&["delete", "pod", "hooked"]);
    let out = std::fs::read_to_string(marker_dir.join("out")).unwrap_or_default();
    assert_eq!(out, "from-pre-stop\n");
    let _ = std::fs::remove_dir_all(&marker_dir);
}

#[test]
fn static_pods_from_the_manifest_directory_run_as_mirror_pods() {
    let server = server();
    let manifests = server.data_dir().join("agent").join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifest dir");
    std::fs::write(
        manifests.join("static-web.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: static-web\n  namespace: kube-system\nspec:\n  containers:\n  - name: web\n    image: berth.dev/busybox:1\n    command: [sh, -c, 'echo version one; sleep 3600']\n",
    )
    .expect("write manifest");
    let mirror = "static-web-berth-test";
    let p = eventually(Duration::from_secs(60), || {
        let out = server.kubectl(&["get", "pod", "-n", "kube-system", mirror, "-o", "json"]);
        let p: Value = serde_json::from_slice(&out.stdout).ok()?;
        (p["status"]["phase"] == "Running").then_some(p)
    })
    .unwrap_or_else(|| panic!("the static pod never ran: {}", server.ok(&["get", "pods", "-A", "-o", "wide"])));
    assert_eq!(p["metadata"]["annotations"]["kubernetes.io/config.source"], "file");
    assert!(p["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string());
    assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "Node");
    assert!(server.ok(&["logs", "-n", "kube-system", mirror]).contains("version one"));

    // A changed manifest replaces the pod.
    std::fs::write(
        manifests.join("static-web.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: static-web\n  namespace: kube-system\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: web\n    image: berth.dev/busybox:1\n    command: [sh, -c, 'echo version two; sleep 3600']\n",
    )
    .expect("rewrite manifest");
    let replaced = eventually(Duration::from_secs(90), || {
        let out = server.kubectl(&["logs", "-n", "kube-system", mirror]);
        String::from_utf8_lossy(&out.stdout).contains("version two").then_some(())
    });
    assert!(replaced.is_some(), "{}", server.ok(&["get", "pods", "-A"]));

    // A removed manifest removes the pod.
    std::fs::remove_file(manifests.join("static-web.yaml")).expect("remove manifest");
    let gone = eventually(Duration::from_secs(60), || (!server.kubectl(&["get", "pod", "-n", "kube-system", mirror]).status.success()).then_some(()));
    assert!(gone.is_some(), "{}", server.ok(&["get", "pods", "-A"]));
}

#[test]
fn a_node_under_pressure_reports_it_and_evicts_pods() {
    // A threshold no machine meets: the node is under memory pressure from the start.
    let server = agent_server(env!("CARGO_BIN_EXE_berth"), &["--eviction-hard", "memory.available<1000Ti"]);
    let pressured = eventually(Duration::from_secs(60), || {
        let out = server.kubectl(&["get", "node", "berth-test", "-o", "json"]);
        let node: Value = serde_json::from_slice(&out.stdout).ok()?;
        let conditions = node["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let memory = conditions.iter().any(|c| c["type"] == "MemoryPressure" && c["status"] == "True" && c["reason"] == "KubeletHasInsufficientMemory");
        let tainted = node["spec"]["taints"].as_array().is_some_and(|t| t.iter().any(|t| t["key"] == "node.kubernetes.io/memory-pressure" && t["effect"] == "NoSchedule"));
        (memory && tainted).then_some(())
    });
    assert!(pressured.is_some(), "{}", server.ok(&["get", "node", "berth-test", "-o", "yaml"]));
    // The kubelet tells the change on its Node, as upstream's does.
    let told = eventually(Duration::from_secs(30), || {
        let out = server.ok(&["get", "events", "--field-selector", "involvedObject.name=berth-test", "-o", r#"jsonpath={range .items[*]}{.reason}/{.source.component}/{.message}{"\n"}{end}"#]);
        out.contains("NodeHasInsufficientMemory/kubelet/Node berth-test status is now: NodeHasInsufficientMemory").then_some(())
    });
    assert!(told.is_some(), "{}", server.ok(&["get", "events", "-o", "wide"]));
    // Placed on the node directly (the scheduler keeps pods off a node with the taint).
    server.ok(&["run", "victim", "--image=berth.dev/busybox:1", "--overrides", r#"{"spec":{"nodeName":"berth-test"}}"#, "--", "sleep", "3600"]);
    let p = wait_pod(&server, "victim", "Evicted", |p| phase(p) == "Failed" && p["status"]["reason"] == "Evicted");
    assert!(p["status"]["message"].as_str().unwrap_or("").starts_with("The node was low on resource: memory."), "{p}");
    assert!(p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "DisruptionTarget" && c["reason"] == "TerminationByKubelet")), "{p}");
    let events = server.ok(&["get", "events", "--field-selector", "involvedObject.name=victim", "-o", "jsonpath={.items[*].reason}"]);
    assert!(events.contains("Evicted"), "{events}");
    // The evicted pod's containers are stopped.
    let stopped = eventually(Duration::from_secs(30), || {
        let tasks = String::from_utf8_lossy(&server.ctr(&["tasks", "ls"]).stdout).into_owned();
        tasks.lines().skip(1).all(|l| !l.contains("RUNNING")).then_some(())
    });
    assert!(stopped.is_some(), "{}", String::from_utf8_lossy(&server.ctr(&["tasks", "ls"]).stdout));
}

const LOGGER: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: logger}
spec:
  replicas: 1
  serviceName: logger
  selector: {matchLabels: {app: logger}}
  template:
    metadata: {labels: {app: logger}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: berth.dev/busybox:1
        command: ["sh", "-c", "date >> /data/log; cat /data/log; sleep 3600"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"#;

#[test]
fn statefulset_data_survives_its_pod_on_a_local_path_volume() {
    let server = server();
    let class = server.get_json(&["storageclass", "local-path"]);
    assert_eq!(class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"], "true");
    assert_eq!((class["provisioner"].as_str(), class["volumeBindingMode"].as_str(), class["reclaimPolicy"].as_str()), (Some("berth.dev/local-path"), Some("WaitForFirstConsumer"), Some("Delete")));

    server.ok_stdin(&["apply", "-f", "-"], LOGGER);
    let first = wait_pod(&server, "logger-0", "Running", |p| phase(p) == "Running" && container_status(p, "main")["ready"] == true);
    let claim = server.get_json(&["pvc", "data-logger-0"]);
    assert_eq!(claim["spec"]["storageClassName"], "local-path", "the default class is filled in");
    assert_eq!(claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"], "berth-test", "the scheduler names the node");
    assert_eq!(claim["status"]["phase"], "Bound");
    assert_eq!(claim["status"]["capacity"]["storage"], "1Gi");
    let volume_name = claim["spec"]["volumeName"].as_str().unwrap_or("").to_string();
    assert_eq!(volume_name, format!("pvc-{}", claim["metadata"]["uid"].as_str().unwrap_or("")));
    let volume = server.get_json(&["pv", &volume_name]);
    assert_eq!(volume["status"]["phase"], "Bound");
    assert_eq!(volume["spec"]["claimRef"]["name"], "data-logger-0");
    assert_eq!(volume["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0], "berth-test");
    let dir = server.data_dir().join("agent").join("storage").join(format!("{volume_name}_default_data-logger-0"));
    assert_eq!(volume["spec"]["local"]["path"].as_str(), Some(dir.to_str().unwrap_or("")));
    let table = server.ok(&["get", "pvc,pv"]);
    assert_eq!(table.matches("Bound").count(), 2, "{table}");
    let lines = |pod: &str| eventually(Duration::from_secs(20), || Some(server.ok(&["logs", pod])).filter(|l| !l.is_empty())).unwrap_or_default().lines().count();
    assert_eq!(lines("logger-0"), 1);
    assert_eq!(std::fs::read_to_string(dir.join("log")).unwrap_or_default().lines().count(), 1, "the data is in the node's directory");

    // The set makes the pod again; the new one sees what the old one wrote.
    server.ok(&["delete", "pod", "logger-0"]);
    let uid = first["metadata"]["uid"].clone();
    wait_pod(&server, "logger-0", "made again and Running", |p| p["metadata"]["uid"] != uid && phase(p) == "Running" && container_status(p, "main")["ready"] == true);
    assert_eq!(lines("logger-0"), 2, "{}", server.ok(&["logs", "logger-0"]));

    // A pod naming a claim that does not exist does not schedule.
    server.ok(&["run", "orphan", "--image=berth.dev/busybox:1", "--overrides", r#"{"spec":{"volumes":[{"name":"v","persistentVolumeClaim":{"claimName":"nope"}}]}}"#]);
    let p = wait_pod(&server, "orphan", "unschedulable", |p| p["status"]["conditions"][0]["reason"] == "Unschedulable");
    assert!(p["status"]["conditions"][0]["message"].as_str().unwrap_or("").contains("persistentvolumeclaim \"nope\" not found"), "{p}");

    // Deleting the claim (once no pod uses it) deletes the volume and its directory.
    server.ok(&["delete", "statefulset", "logger"]);
    server.ok(&["delete", "pvc", "data-logger-0", "--wait=false"]);
    let gone = eventually(Duration::from_secs(60), || {
        let volumes = server.get_json(&["pv"]);
        (volumes["items"].as_array().is_some_and(|v| v.is_empty()) && !dir.exists()).then_some(())
    });
    assert!(gone.is_some(), "the volume and {} are removed: {}", dir.display(), server.ok(&["get", "pv,pvc", "-o", "wide"]));
    assert!(!server.kubectl(&["get", "pvc", "data-logger-0"]).status.success());
}

/// kubectl as someone holding only `token` (no client certificate).
fn kubectl_with_token(server: &Server, token: &str, args: &[&str]) -> std::process::Output {
    let address = format!("https://127.0.0.1:{}", server.port);
    let ca = server.data_dir().join("pki").join("ca.crt");
    let mut full = vec!["--kubeconfig", "/dev/null", "--server", &address, "--certificate-authority", ca.to_str().unwrap_or(""), "--token", token];
    full.extend_from_slice(args);
    server.kubectl_command(&full).output().expect("run kubectl")
}

#[test]
fn pods_get_service_account_tokens_that_authenticate_them() {
    let server = server();
    let sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let script = format!("cat {sa_dir}/namespace; echo; cat {sa_dir}/ca.crt; cat {sa_dir}/token; echo; sleep 3600");
    server.ok(&["run", "client", "--image=berth.dev/busybox:1", "--", "sh", "-c", &script]);
    let p = wait_pod(&server, "client", "Running", |p| phase(p) == "Running");
    let volume = p["spec"]["volumes"].as_array().and_then(|v| v.iter().find(|v| v["name"].as_str().is_some_and(|n| n.starts_with("kube-api-access-")))).cloned().unwrap_or_default();
    assert_eq!(volume["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"], 3607, "{p}");
    assert_eq!(p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"], sa_dir);

    let logs = eventually(Duration::from_secs(20), || Some(server.ok(&["logs", "client"])).filter(|l| l.contains("END CERTIFICATE"))).unwrap_or_default();
    let ca = std::fs::read_to_string(server.data_dir().join("pki").join("ca.crt")).unwrap_or_default();
    assert!(logs.starts_with("default\n"), "the namespace file: {logs}");
    assert!(logs.contains(&ca), "ca.crt is the cluster CA: {logs}");
    let token = logs.lines().last().unwrap_or("").trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {logs}");

    let whoami = kubectl_with_token(&server, &token, &["auth", "whoami", "-o", "json"]);
    assert!(whoami.status.success(), "{}", String::from_utf8_lossy(&whoami.stderr));
    let review: Value = serde_json::from_slice(&whoami.stdout).unwrap_or_default();
    assert_eq!(review["status"]["userInfo"]["username"], "system:serviceaccount:default:default");
    let groups = review["status"]["userInfo"]["groups"].to_string();
    assert!(groups.contains("\"system:serviceaccounts\"") && groups.contains("system:serviceaccounts:default"), "{groups}");
    assert!(kubectl_with_token(&server, &token, &["get", "pods"]).status.success(), "the token lists pods");
    let forged = format!("{token}x");
    assert!(!kubectl_with_token(&server, &forged, &["get", "pods"]).status.success(), "a tampered token is refused");

    // kubectl create token, and its limits.
    let made = server.ok(&["create", "token", "default", "--duration=20m"]);
    assert!(kubectl_with_token(&server, made.trim(), &["auth", "whoami"]).status.success());
    let short = server.fails(&["create", "token", "default", "--duration=1m"]);
    assert!(short.contains("may not specify a duration less than 10 minutes"), "{short}");
    let discovery = server.ok(&["get", "--raw", "/.well-known/openid-configuration"]);
    assert!(discovery.contains("\"issuer\":\"https://kubernetes.default.svc.cluster.local\""), "{discovery}");
    assert!(server.ok(&["get", "--raw", "/openid/v1/jwks"]).contains("\"kty\":\"EC\""));

    // The pod's token dies with the pod.
    server.ok(&["delete", "pod", "client", "--grace-period=0", "--force"]);
    let refused = eventually(Duration::from_secs(20), || (!kubectl_with_token(&server, &token, &["get", "pods"]).status.success()).then_some(()));
    assert!(refused.is_some(), "a token bound to a deleted pod is refused");

    // Pods that opt out get no token volume.
    server.ok(&["run", "no-token", "--image=berth.dev/busybox:1", "--overrides", r#"{"spec":{"automountServiceAccountToken":false}}"#, "--", "sleep", "3600"]);
    let p = pod(&server, "no-token");
    assert!(p["spec"].get("volumes").is_none_or(|v| v.as_array().is_some_and(|v| v.is_empty())), "{p}");
}

const LOCKED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: locked}
spec:
  restartPolicy: Never
  securityContext: {runAsUser: 1000, runAsGroup: 3000}
  initContainers:
  - name: sidecar
    image: berth.dev/busybox:1
    restartPolicy: Always
    command: ["sh", "-c", "echo sidecar was here > /cache/note; exec sleep 3600"]
    volumeMounts: [{name: cache, mountPath: /cache}]
  containers:
  - name: main
    image: berth.dev/busybox:1
    command: ["sh", "-c", "echo uid=$(id -u) gid=$(id -g); touch /x 2>/dev/null && echo rootfs writable || echo rootfs read-only; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; echo cache on $(grep ' /cache ' /proc/mounts | cut -d' ' -f3); for i in 1 2 3 4 5; do [ -f /cache/note ] && break; sleep 1; done; cat /cache/note"]
    securityContext:
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
    volumeMounts: [{name: cache, mountPath: /cache}]
  volumes:
  - {name: cache, emptyDir: {medium: Memory}}
"#;

/// A privileged container next to an ordinary one in the same pod.
const PRIVILEGED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: privileged}
spec:
  restartPolicy: Never
  containers:
  - name: admin
    image: berth.dev/busybox:1
    command: ["sh", "-c", "grep -E '^CapEff' /proc/self/status; mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && echo tmpfs mounted; ip link set lo mtu 9000 && echo lo mtu changed"]
    securityContext: {privileged: true}
  - name: plain
    image: berth.dev/busybox:1
    command: ["sh", "-c", "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t 2>/dev/null && echo tmpfs mounted || echo mount refused"]
"#;

/// The test's (root's) effective capabilities as /proc shows them. A privileged container gets
/// every capability its runtime holds, which is not always every bit up to cap_last_cap
/// (a host may withhold some from root), so this is the mask to expect.
fn host_cap_eff() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("CapEff:")).unwrap_or_default().to_string();
    assert!(line.len() > "CapEff:".len() && !line.ends_with("0000000000000000"), "the agent tests run as root: {line:?}");
    line
}

#[test]
fn security_context_sidecars_memory_volumes_host_ports_and_deadlines() {
    let server = server();
    // privileged: every capability, mounts and network administration allowed; its neighbour
    // in the (then privileged) sandbox stays unprivileged.
    server.ok_stdin(&["apply", "-f", "-"], PRIVILEGED);
    let p = wait_pod(&server, "privileged", "both containers finished", |p| ["admin", "plain"].iter().all(|c| !container_status(p, c)["state"]["terminated"].is_null()));
    let logs = server.ok(&["logs", "privileged", "-c", "admin"]);
    for expected in [host_cap_eff().as_str(), "tmpfs mounted", "lo mtu changed"] {
        assert!(logs.contains(expected), "{expected:?} not in the logs:\n{logs}\n{p}");
    }
    let logs = server.ok(&["logs", "privileged", "-c", "plain"]);
    assert!(logs.contains("mount refused"), "{logs}");

    // Users, a read-only root, no capabilities, no privilege escalation; a sidecar started
    // before the app container; an emptyDir in memory.
    server.ok_stdin(&["apply", "-f", "-"], LOCKED);
    let p = wait_pod(&server, "locked", "main finished", |p| !container_status(p, "main")["state"]["terminated"].is_null());
    let logs = server.ok(&["logs", "locked", "-c", "main"]);
    for expected in ["uid=1000 gid=3000", "rootfs read-only", "CapEff:\t0000000000000000", "NoNewPrivs:\t1", "cache on tmpfs", "sidecar was here"] {
        assert!(logs.contains(expected), "{expected:?} not in the logs:\n{logs}");
    }
    let sidecar = p["status"]["initContainerStatuses"].as_array().and_then(|l| l.iter().find(|c| c["name"] == "sidecar").cloned()).unwrap_or_default();
    let sidecar_started = sidecar["state"]["running"]["startedAt"].as_str().or(sidecar["state"]["terminated"]["startedAt"].as_str()).unwrap_or("").to_string();
    let main_started = container_status(&p, "main")["state"]["terminated"]["startedAt"].as_str().unwrap_or("").to_string();
    assert!(!sidecar_started.is_empty() && sidecar_started <= main_started, "sidecar {sidecar_started} before main {main_started}: {p}");

    // runAsNonRoot with an image that runs as root: refused before it starts.
    server.ok(&["run", "rootless", "--image=berth.dev/busybox:1", "--overrides", r#"{"spec":{"securityContext":{"runAsNonRoot":true}}}"#, "--", "sleep", "3600"]);
    let p = wait_pod(&server, "rootless", "a configuration error", |p| container_status(p, "rootless")["state"]["waiting"]["reason"] == "CreateContainerConfigError");
    let message = container_status(&p, "rootless")["state"]["waiting"]["message"].as_str().unwrap_or("").to_string();
    assert!(message.contains("runAsNonRoot and image will run as root"), "{message}");

    // A hostPort reaches the pod through the node's address (the CNI portmap plugin).
    server.ok(&["run", "exposed", "--image=berth.dev/busybox:1", "--port=8080", "--overrides",
        r#"{"spec":{"containers":[{"name":"exposed","image":"berth.dev/busybox:1","command":["httpd","-f","-p","8080"],"ports":[{"containerPort":8080,"hostPort":18080}]}]}}"#]);
    wait_pod(&server, "exposed", "Running", |p| phase(p) == "Running");
    let node_ip = server.get_json(&["node", "berth-test"])["status"]["addresses"].as_array().and_then(|a| a.iter().find(|a| a["type"] == "InternalIP").and_then(|a| a["address"].as_str().map(String::from))).unwrap_or_default();
    let answered = eventually(Duration::from_secs(20), || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect_timeout(&format!("{node_ip}:18080").parse().ok()?, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply.starts_with("HTTP/1.").then_some(reply)
    });
    assert!(answered.is_some(), "nothing answered on {node_ip}:18080");

    // activeDeadlineSeconds: the agent stops the pod and fails it.
    server.ok(&["run", "bounded", "--image=berth.dev/busybox:1", "--restart=Never", "--overrides", r#"{"spec":{"activeDeadlineSeconds":3}}"#, "--", "sleep", "3600"]);
    let p = wait_pod(&server, "bounded", "DeadlineExceeded", |p| phase(p) == "Failed");
    assert_eq!(p["status"]["reason"], "DeadlineExceeded", "{p}");
}
