//! `kubectl top` on the real stack: the agent reads usage through CRI and /proc, the API server
//! serves metrics.k8s.io from it. Needs root and scripts/setup's packages, as tests/agent.rs.
//!
//! Tests here run one at a time (one agent per machine, see tests/agent.rs).

use std::time::Duration;

use serde_json::Value;
use testsupport::{AgentServer, agent_server, eventually};


fn server() -> AgentServer {
    agent_server(env!("CARGO_BIN_EXE_berth"), &[])
}

/// `kubectl top` rows as (name, millicores, mebibytes), from output without headers.
fn top_rows(text: &str) -> Vec<(String, i64, i64)> {
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            let milli = |c: &str| c.strip_suffix('m').and_then(|n| n.parse::<i64>().ok());
            let mebi = |c: &str| c.strip_suffix("Mi").and_then(|n| n.parse::<i64>().ok());
            // Pods: NAME CPU MEMORY; nodes: NAME CPU CPU% MEMORY MEMORY%.
            let memory = if cells.len() >= 5 { cells.get(3) } else { cells.get(2) };
            Some((cells.first()?.to_string(), milli(cells.get(1)?)?, mebi(memory?)?))
        })
        .collect()
}

#[test]
fn kubectl_top_shows_pod_and_node_usage() {
    let server = server();
    // kubectl top first checks that the group is served.
    assert!(server.ok(&["api-versions"]).lines().any(|l| l == "metrics.k8s.io/v1beta1"));
    assert!(server.ok(&["api-resources", "--api-group=metrics.k8s.io"]).contains("PodMetrics"));

    // One pod spins on a CPU, one holds ~48 MiB in a tmpfs (charged to its cgroup as shared
    // memory, so part of the working set), one can never be scheduled. The pods need no API
    // credentials.
    server.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: busy, labels: {app: busy}}
spec:
  automountServiceAccountToken: false
  containers:
  - {name: spin, image: "berth.dev/busybox:1", command: ["sh", "-c", "while :; do :; done"]}
---
apiVersion: v1
kind: Pod
metadata: {name: hog, labels: {app: hog}}
spec:
  automountServiceAccountToken: false
  containers:
  - {name: hold, image: "berth.dev/busybox:1", command: ["sh", "-c", "head -c 50000000 /dev/zero > /dev/shm/blob; sleep 3600"]}
  - {name: idle, image: "berth.dev/busybox:1", command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: nowhere, labels: {app: nowhere}}
spec:
  automountServiceAccountToken: false
  nodeSelector: {no-such-label: "true"}
  containers:
  - {name: c, image: "berth.dev/busybox:1"}
"#,
    );
    // A pod without metrics (new, so kubectl blames timing, as it does with metrics-server), and
    // the API's answers for it.
    let err = server.fails(&["top", "pod", "-l", "app=nowhere"]);
    assert!(err.contains("metrics not available yet"), "{err}");
    let err = server.fails(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nowhere"]);
    assert!(err.contains("podmetrics.metrics.k8s.io \"default/nowhere\" not found"), "{err}");

    for name in ["busy", "hog"] {
        let running = eventually(Duration::from_secs(90), || (server.get_json(&["pod", name])["status"]["phase"] == "Running").then_some(()));
        assert!(running.is_some(), "{name} never ran:\n{}", server.ok(&["describe", "pod", name]));
    }

    // Usage shows within a couple of the agent's 10 s rounds.
    let rows = eventually(Duration::from_secs(60), || {
        let out = server.kubectl(&["top", "pod", "--no-headers"]);
        let rows = top_rows(&String::from_utf8_lossy(&out.stdout));
        (rows.len() == 2).then_some(rows)
    })
    .unwrap_or_else(|| panic!("no pod metrics:\n{}\n{}", server.ok(&["get", "pods"]), server.log()));
    let busy = rows.iter().find(|r| r.0 == "busy").expect("busy listed");
    let hog = rows.iter().find(|r| r.0 == "hog").expect("hog listed");
    // One spinning shell uses at most one core; on a loaded machine it still gets a share.
    assert!(busy.1 >= 50 && busy.1 <= 1100, "busy CPU {}m", busy.1);
    assert!(busy.1 > hog.1, "busy {}m vs hog {}m", busy.1, hog.1);
    assert!((40..200).contains(&hog.2), "hog memory {}Mi", hog.2);

    // Per container, and selected by label.
    let containers = server.ok(&["top", "pod", "hog", "--containers", "--no-headers"]);
    assert!(containers.lines().any(|l| l.split_whitespace().nth(1) == Some("hold")), "{containers}");
    assert!(containers.lines().any(|l| l.split_whitespace().nth(1) == Some("idle")), "{containers}");
    let selected = top_rows(&server.ok(&["top", "pod", "-l", "app=busy", "--no-headers"]));
    assert_eq!(selected.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["busy"]);

    // The node, with the whole machine's numbers.
    let nodes = top_rows(&server.ok(&["top", "node", "--no-headers"]));
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let cores = server.get_json(&["node", "berth-test"])["status"]["capacity"]["cpu"].as_str().unwrap_or("1").parse::<i64>().unwrap_or(1);
    assert!(nodes[0].0 == "berth-test" && nodes[0].1 >= busy.1 / 2 && nodes[0].1 <= cores * 1000 + 100, "{nodes:?}");
    assert!(nodes[0].2 > hog.2, "{nodes:?}");

    // The raw API: upstream's shapes.
    let list: Value = serde_json::from_str(&server.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods"])).expect("PodMetricsList JSON");
    assert_eq!(list["kind"], "PodMetricsList");
    assert_eq!(list["apiVersion"], "metrics.k8s.io/v1beta1");
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.iter().map(|i| i["metadata"]["name"].as_str().unwrap_or("")).collect::<Vec<_>>(), ["busy", "hog"]);
    let busy = &items[0];
    assert_eq!(busy["metadata"]["labels"]["app"], "busy");
    assert!(busy["timestamp"].as_str().is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()), "{busy}");
    assert!(busy["window"].as_str().is_some_and(|w| w.ends_with('s')), "{busy}");
    assert_eq!(busy["containers"][0]["name"], "spin");
    let cpu = busy["containers"][0]["usage"]["cpu"].as_str().unwrap_or("");
    assert!(cpu.ends_with('n') || cpu.ends_with('u') || cpu.ends_with('m'), "cpu {cpu}");
    let memory = items[1]["containers"][0]["usage"]["memory"].as_str().unwrap_or("");
    assert!(memory.ends_with("Ki") || memory.ends_with("Mi"), "memory {memory}");
    let node: Value = serde_json::from_str(&server.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes/berth-test"])).expect("NodeMetrics JSON");
    assert_eq!(node["kind"], "NodeMetrics");
    assert!(node["usage"]["cpu"].is_string() && node["usage"]["memory"].is_string(), "{node}");

    // kubectl get works on the kinds too, with metrics-server's columns.
    let table = server.ok(&["get", "podmetrics", "busy"]);
    assert!(table.starts_with("NAME") && table.contains("WINDOW") && table.contains("busy"), "{table}");
}
