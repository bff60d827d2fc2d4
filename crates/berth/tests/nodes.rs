//! Nodes get pod CIDRs from the cluster CIDR (the node IPAM controller), as a kubelet-less user
//! sees it through kubectl.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use testsupport::{Server, eventually};

fn node_yaml(name: &str, pod_cidr: Option<&str>) -> String {
    let spec = pod_cidr.map(|c| format!("spec:\n  podCIDR: {c}\n")).unwrap_or_default();
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n{spec}")
}

fn pod_cidrs(s: &Server, name: &str) -> Vec<String> {
    let node = s.get_json(&["node", name]);
    node.pointer("/spec/podCIDRs").and_then(Value::as_array).into_iter().flatten().filter_map(|c| c.as_str().map(str::to_string)).collect()
}

/// Waits for the node to have a pod CIDR; checks podCIDR mirrors podCIDRs.
fn assigned(s: &Server, name: &str) -> String {
    let cidr = eventually(Duration::from_secs(30), || pod_cidrs(s, name).first().cloned()).unwrap_or_else(|| panic!("node {name} got no pod CIDR; log:\n{}", s.log()));
    let node = s.get_json(&["node", name]);
    assert_eq!(node["spec"]["podCIDR"], cidr.as_str());
    assert_eq!(pod_cidrs(s, name), [cidr.clone()]);
    cidr
}

/// Waits for the CIDRNotAvailable event on the node.
fn saw_exhaustion(s: &Server, name: &str) {
    let selector = format!("involvedObject.name={name},reason=CIDRNotAvailable");
    let found = eventually(Duration::from_secs(30), || {
        let events = s.get_json(&["events", "-n", "default", "--field-selector", &selector]);
        let items = events["items"].as_array().cloned().unwrap_or_default();
        items.first().cloned()
    });
    let event = found.unwrap_or_else(|| panic!("no CIDRNotAvailable event for {name}"));
    assert_eq!(event["message"], format!("Node {name} status is now: CIDRNotAvailable"));
    assert_eq!(event["involvedObject"]["kind"], "Node");
}

#[test]
fn nodes_get_distinct_blocks_and_keep_them() {
    // Four /24 blocks, so exhaustion is reached quickly.
    let mut s = Server::start_with(env!("CARGO_BIN_EXE_berth"), &["--cluster-cidr", "10.42.0.0/22"]);
    // A node that came with a block of ours keeps it, and nobody else gets it; one from elsewhere
    // (as berth sim-nodes sets) is left alone.
    s.ok_stdin(&["create", "-f", "-"], &node_yaml("preset-in", Some("10.42.1.0/24")));
    s.ok_stdin(&["create", "-f", "-"], &node_yaml("preset-out", Some("10.244.0.0/24")));
    for name in ["a", "b", "c"] {
        s.ok_stdin(&["create", "-f", "-"], &node_yaml(name, None));
    }
    let got: BTreeSet<String> = ["a", "b", "c"].iter().map(|n| assigned(&s, n)).collect();
    assert_eq!(got, BTreeSet::from(["10.42.0.0/24".to_string(), "10.42.2.0/24".into(), "10.42.3.0/24".into()]));
    assert_eq!(pod_cidrs(&s, "preset-in"), ["10.42.1.0/24"]);
    assert_eq!(pod_cidrs(&s, "preset-out"), ["10.244.0.0/24"]);

    // Once set, a pod CIDR stays.
    let a_cidr = pod_cidrs(&s, "a")[0].clone();
    let err = s.fails(&["patch", "node", "a", "--type", "merge", "-p", r#"{"spec":{"podCIDR":"10.42.9.0/24"}}"#]);
    assert!(err.contains(r#"spec.podCIDRs: Forbidden: node updates may not change podCIDR except from "" to valid"#), "{err}");
    assert_eq!(pod_cidrs(&s, "a"), [a_cidr.clone()]);

    // The range is used up: the next node waits, with an event saying why.
    s.ok_stdin(&["create", "-f", "-"], &node_yaml("d", None));
    saw_exhaustion(&s, "d");
    assert!(pod_cidrs(&s, "d").is_empty());

    // After a restart the used blocks are rebuilt from the nodes, so nothing is handed out twice.
    s.restart();
    s.ok_stdin(&["create", "-f", "-"], &node_yaml("e", None));
    saw_exhaustion(&s, "e");
    assert!(pod_cidrs(&s, "e").is_empty() && pod_cidrs(&s, "d").is_empty());

    // A deleted node's block goes to a waiting one.
    s.ok(&["delete", "node", "a"]);
    let reused = eventually(Duration::from_secs(30), || ["d", "e"].iter().find_map(|n| pod_cidrs(&s, n).first().cloned())).expect("d or e gets a's block");
    assert_eq!(reused, a_cidr);
    let all: Vec<String> = ["preset-in", "b", "c", "d", "e"].iter().flat_map(|n| pod_cidrs(&s, n)).collect();
    assert_eq!(all.len(), 4, "one of d and e still waits: {all:?}");
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 4, "no block twice: {all:?}");
}
