//! Deployment behaviours as upstream defines them, against `berth server` with simulated nodes
//! (so pods become Running and Ready): revision history pruning, minReadySeconds, the progress
//! deadline and its conditions, and `kubectl rollout restart`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testsupport::{Server, SimNodes, eventually};

/// A server with one simulated node that is Ready.
fn cluster() -> (Server, SimNodes) {
    let s = Server::start(env!("CARGO_BIN_EXE_berth"));
    let nodes = SimNodes::start(env!("CARGO_BIN_EXE_berth"), &s, "sim-", 1, &["--cpu", "4", "--memory", "8Gi"]);
    wait_for("a ready node", Duration::from_secs(30), || {
        s.get_json(&["nodes"])["items"].as_array().is_some_and(|n| {
            n.len() == 1 && n.iter().all(|n| n["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")))
        })
    });
    (s, nodes)
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    assert!(eventually(timeout, || check().then_some(())).is_some(), "timed out waiting for {what}");
}

fn live_pods(s: &Server, selector: &str) -> Vec<Value> {
    s.get_json(&["pods", "-l", selector])["items"].as_array().cloned().unwrap_or_default().into_iter().filter(|p| p["metadata"].get("deletionTimestamp").is_none()).collect()
}

fn replicasets(s: &Server, selector: &str) -> Vec<Value> {
    s.get_json(&["rs", "-l", selector])["items"].as_array().cloned().unwrap_or_default()
}

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn condition(d: &Value, type_: &str) -> Value {
    d["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == type_).cloned()).unwrap_or(Value::Null)
}

fn deployment(name: &str, replicas: i32, extra_spec: &str) -> String {
    format!(
        r#"{{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {{"name": "{name}"}},
            "spec": {{{extra_spec} "replicas": {replicas}, "selector": {{"matchLabels": {{"app": "{name}"}}}},
              "template": {{"metadata": {{"labels": {{"app": "{name}"}}}}, "spec": {{"containers": [{{"name": "c", "image": "nginx:1"}}]}}}}}}}}"#
    )
}

/// Upstream's cleanupDeployment: old ReplicaSets scaled to 0 beyond revisionHistoryLimit are
/// deleted, lowest revision first; the current one is never counted.
#[test]
fn revision_history_limit_prunes_the_oldest_revisions() {
    let (s, _nodes) = cluster();
    s.ok_stdin(&["apply", "-f", "-"], &deployment("hist", 1, r#""revisionHistoryLimit": 1,"#));
    s.ok(&["rollout", "status", "deployment/hist", "--timeout=60s"]);
    // Revisions 2, 3 and 4 from three template changes, each rolled out fully.
    for version in 2..=4 {
        s.ok(&["set", "image", "deployment/hist", &format!("c=nginx:{version}")]);
        s.ok(&["rollout", "status", "deployment/hist", "--timeout=60s"]);
        // The current ReplicaSet and the one revision before it, nothing older.
        let want: BTreeSet<i64> = [version - 1, version].into();
        let mut have = BTreeSet::new();
        wait_for(&format!("revisions {want:?} after rolling to nginx:{version}"), Duration::from_secs(30), || {
            have = replicasets(&s, "app=hist").iter().map(revision).collect();
            have == want
        });
    }
    let sets = replicasets(&s, "app=hist");
    let image = |rs: &Value| rs["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap_or("").to_string();
    let current = sets.iter().find(|rs| revision(rs) == 4).expect("revision 4");
    let previous = sets.iter().find(|rs| revision(rs) == 3).expect("revision 3");
    assert_eq!((image(current).as_str(), image(previous).as_str()), ("nginx:4", "nginx:3"));
    assert_eq!(current["spec"]["replicas"], 1);
    assert_eq!(previous["spec"]["replicas"], 0);
    let history = s.ok(&["rollout", "history", "deployment/hist"]);
    let revisions: Vec<&str> = history.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| w.chars().all(|c| c.is_ascii_digit())).collect();
    assert_eq!(revisions, ["3", "4"], "{history}");
    // The kept revision is still there to roll back to.
    s.ok(&["rollout", "undo", "deployment/hist"]);
    s.ok(&["rollout", "status", "deployment/hist", "--timeout=60s"]);
    wait_for("rolled back onto the kept ReplicaSet as revision 5", Duration::from_secs(30), || {
        let sets = replicasets(&s, "app=hist");
        sets.len() == 2 && sets.iter().any(|rs| image(rs) == "nginx:3" && revision(rs) == 5 && rs["spec"]["replicas"] == 1)
    });
}

/// A pod counts as available only once it has been Ready for minReadySeconds, in the
/// ReplicaSet's and so the Deployment's status; a changed minReadySeconds reaches the ReplicaSet.
#[test]
fn min_ready_seconds_delays_availability() {
    const MIN_READY: i64 = 6;
    let (s, _nodes) = cluster();
    s.ok_stdin(&["apply", "-f", "-"], &deployment("slow", 2, &format!(r#""minReadySeconds": {MIN_READY},"#)));
    let status = |s: &Server| {
        let d = s.get_json(&["deployment", "slow"]);
        (d["status"]["readyReplicas"].as_i64().unwrap_or(0), d["status"]["availableReplicas"].as_i64().unwrap_or(0))
    };
    let mut seen = (0, 0);
    wait_for("all ready, none yet available", Duration::from_secs(30), || {
        seen = status(&s);
        seen.0 == 2 && seen.1 < 2
    });
    let started = Instant::now();
    wait_for("all available", Duration::from_secs(30), || status(&s) == (2, 2));
    // Ready for minReadySeconds by then: never counted available early.
    for pod in live_pods(&s, "app=slow") {
        let ready = pod["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready" && c["status"] == "True")).expect("a Ready pod").clone();
        let since = ready["lastTransitionTime"].as_str().unwrap().to_string();
        let age = seconds_since(&since);
        assert!(age >= MIN_READY, "pod {} counted available {age}s after Ready at {since}", pod["metadata"]["name"]);
    }
    assert!(started.elapsed() < Duration::from_secs(MIN_READY as u64 + 20), "availability took {:?}", started.elapsed());
    let d = s.get_json(&["deployment", "slow"]);
    assert_eq!(condition(&d, "Available")["status"], "True", "{d}");

    // As upstream's getNewReplicaSet, the Deployment's minReadySeconds is kept on its current
    // ReplicaSet, so pods added by a scale-up wait the new value.
    s.ok(&["patch", "deployment", "slow", "--type=merge", "-p", r#"{"spec":{"minReadySeconds":4,"replicas":3}}"#]);
    wait_for("the ReplicaSet to take minReadySeconds 4", Duration::from_secs(30), || {
        let sets = replicasets(&s, "app=slow");
        sets.len() == 1 && sets[0]["spec"]["minReadySeconds"] == 4
    });
    wait_for("the third pod ready but not yet available", Duration::from_secs(30), || status(&s) == (3, 2));
    wait_for("the third pod available", Duration::from_secs(30), || status(&s) == (3, 3));
}

/// Seconds from an RFC 3339 UTC timestamp (as the API server writes them) to now.
fn seconds_since(rfc3339: &str) -> i64 {
    let out = Command::new("date").args(["-u", "-d", rfc3339, "+%s"]).output().expect("date");
    let then: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("epoch seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    now - then
}

/// Upstream's progress.go: no progress within progressDeadlineSeconds makes Progressing False
/// with ProgressDeadlineExceeded (and it stays so until there is progress); a complete rollout is
/// Progressing True with NewReplicaSetAvailable and Available True with MinimumReplicasAvailable.
#[test]
fn progress_deadline_and_conditions() {
    let (s, _nodes) = cluster();
    s.ok_stdin(&["apply", "-f", "-"], &deployment("healthy", 2, ""));
    s.ok_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "stuck"},
            "spec": {"replicas": 1, "progressDeadlineSeconds": 3, "selector": {"matchLabels": {"app": "stuck"}},
              "template": {"metadata": {"labels": {"app": "stuck"}},
                "spec": {"nodeSelector": {"disk": "nowhere"}, "containers": [{"name": "c", "image": "nginx:1"}]}}}}"#,
    );

    s.ok(&["rollout", "status", "deployment/healthy", "--timeout=60s"]);
    let mut d = Value::Null;
    wait_for("healthy conditions", Duration::from_secs(30), || {
        d = s.get_json(&["deployment", "healthy"]);
        condition(&d, "Available")["status"] == "True" && condition(&d, "Progressing")["reason"] == "NewReplicaSetAvailable"
    });
    let (available, progressing) = (condition(&d, "Available"), condition(&d, "Progressing"));
    assert_eq!((available["status"].as_str(), available["reason"].as_str()), (Some("True"), Some("MinimumReplicasAvailable")), "{d}");
    assert_eq!(progressing["status"], "True", "{d}");
    let rs = replicasets(&s, "app=healthy");
    let message = format!("ReplicaSet \"{}\" has successfully progressed.", rs[0]["metadata"]["name"].as_str().unwrap());
    assert_eq!(progressing["message"], message.as_str());

    wait_for("the stuck deployment to time out", Duration::from_secs(30), || condition(&s.get_json(&["deployment", "stuck"]), "Progressing")["reason"] == "ProgressDeadlineExceeded");
    let d = s.get_json(&["deployment", "stuck"]);
    assert_eq!(condition(&d, "Progressing")["status"], "False", "{d}");
    assert_eq!((condition(&d, "Available")["status"].as_str(), condition(&d, "Available")["reason"].as_str()), (Some("False"), Some("MinimumReplicasUnavailable")), "{d}");
    let err = s.fails(&["rollout", "status", "deployment/stuck", "--timeout=20s"]);
    assert!(err.contains("exceeded its progress deadline"), "{err}");
    // Timed out stays timed out while nothing moves: the controller's later looks (it requeues
    // unfinished deployments every few seconds) must not turn it back to progressing.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        let d = s.get_json(&["deployment", "stuck"]);
        let c = condition(&d, "Progressing");
        assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("ProgressDeadlineExceeded")), "{d}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // A node that fits: the pod runs, which is progress, and the rollout completes.
    s.ok(&["label", "node", "sim-0", "disk=nowhere"]);
    s.ok(&["rollout", "status", "deployment/stuck", "--timeout=60s"]);
    wait_for("the stuck deployment to complete", Duration::from_secs(30), || {
        let d = s.get_json(&["deployment", "stuck"]);
        condition(&d, "Progressing")["reason"] == "NewReplicaSetAvailable" && condition(&d, "Progressing")["status"] == "True" && condition(&d, "Available")["status"] == "True"
    });
}

/// `kubectl rollout restart` stamps the template with restartedAt: a new ReplicaSet replaces
/// every old pod, and `kubectl rollout status` sees it through.
#[test]
fn rollout_restart_replaces_the_pods() {
    let (s, _nodes) = cluster();
    s.ok_stdin(&["apply", "-f", "-"], &deployment("web", 3, ""));
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let before: BTreeSet<String> = live_pods(&s, "app=web").iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(before.len(), 3);
    let first = replicasets(&s, "app=web");
    assert_eq!(first.len(), 1);
    let old_name = first[0]["metadata"]["name"].as_str().unwrap().to_string();

    s.ok(&["rollout", "restart", "deployment/web"]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);

    let sets = replicasets(&s, "app=web");
    assert_eq!(sets.len(), 2, "{sets:?}");
    let new = sets.iter().find(|rs| rs["metadata"]["name"] != old_name.as_str()).unwrap();
    let stamp = new["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].as_str().unwrap_or("");
    assert!(!stamp.is_empty(), "the new ReplicaSet's template has no restartedAt: {new}");
    assert_eq!(revision(new), 2);
    let hash = new["metadata"]["labels"]["pod-template-hash"].as_str().unwrap().to_string();
    wait_for("only the new ReplicaSet's pods, running", Duration::from_secs(30), || {
        let pods = live_pods(&s, "app=web");
        pods.len() == 3
            && pods.iter().all(|p| {
                p["metadata"]["labels"]["pod-template-hash"] == hash.as_str()
                    && p["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] == stamp
                    && p["status"]["phase"] == "Running"
                    && !before.contains(p["metadata"]["name"].as_str().unwrap())
            })
    });
    wait_for("the old ReplicaSet scaled to 0", Duration::from_secs(30), || {
        let old = s.get_json(&["rs", &old_name]);
        old["spec"]["replicas"] == 0 && old["status"]["replicas"].as_i64().unwrap_or(0) == 0
    });
    let d = s.get_json(&["deployment", "web"]);
    assert_eq!((d["status"]["updatedReplicas"].as_i64(), d["status"]["availableReplicas"].as_i64()), (Some(3), Some(3)), "{d}");
}
