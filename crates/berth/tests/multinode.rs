//! Two nodes on one machine: `berth server` with its agent on the host, and a second
//! `berth agent` in its own network namespace, joined with the server's node token. Pods on the
//! two nodes reach each other over the routes the agents install (host-gw). Needs root,
//! iproute2, nftables and scripts/setup's packages.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testsupport::{Server, eventually};

const NETNS: &str = "berth-test-n2";
const HOST_IP: &str = "10.99.0.1";
const NODE2_IP: &str = "10.99.0.2";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace joined to the host by a veth pair, removed on drop.
struct Netns;

impl Netns {
    fn create() -> Self {
        let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
        let _ = Command::new("ip").args(["link", "del", "bt-host"]).status();
        ip(&["netns", "add", NETNS]);
        ip(&["link", "add", "bt-host", "type", "veth", "peer", "name", "bt-node"]);
        ip(&["link", "set", "bt-node", "netns", NETNS]);
        ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", "bt-host"]);
        ip(&["link", "set", "bt-host", "up"]);
        ip(&["-n", NETNS, "addr", "add", &format!("{NODE2_IP}/24"), "dev", "bt-node"]);
        ip(&["-n", NETNS, "link", "set", "bt-node", "up"]);
        ip(&["-n", NETNS, "link", "set", "lo", "up"]);
        ip(&["-n", NETNS, "route", "add", "default", "via", HOST_IP]);
        Netns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
        let _ = Command::new("ip").args(["link", "del", "bt-host"]).status();
    }
}

struct Agent {
    child: Child,
    dir: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn node_ready(server: &Server, node: &str) -> bool {
    let out = server.kubectl(&["get", "node", node, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]);
    String::from_utf8_lossy(&out.stdout) == "True"
}

#[test]
fn pods_on_two_nodes_reach_each_other() {
    let _netns = Netns::create();
    let server = Server::start_with_agent_on(env!("CARGO_BIN_EXE_berth"), HOST_IP, &["--node-ip", HOST_IP]);
    let token = std::fs::read_to_string(server.data_dir().join("node-token")).expect("the server writes a node token");

    // The second node: another data dir, the same test image, inside the namespace.
    let dir = std::env::temp_dir().join(format!("berth-node2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("agent").join("images")).expect("node 2 dirs");
    std::fs::copy(server.data_dir().join("agent/images/busybox.tar"), dir.join("agent/images/busybox.tar")).expect("copy the test image");
    let log = std::fs::File::create(std::env::temp_dir().join(format!("berth-node2-{}.log", std::process::id()))).expect("log");
    // nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mounts runc needs.
    let child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{NETNS}"))
        .args([env!("CARGO_BIN_EXE_berth"), "agent"])
        .args(["--server", &format!("https://{HOST_IP}:{}", server.port), "--token", token.trim()])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--node-name", "berth-test-2", "--node-ip", NODE2_IP, "--kubelet-port", "0"])
        // As every test agent: disk thresholds depend on the machine's free space, not on this test.
        .args(["--eviction-hard", "memory.available<100Mi"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the second agent");
    let agent = Agent { child, dir };

    // A wrong token is refused before anything is trusted.
    let wrong = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["agent", "--server", &format!("https://{HOST_IP}:{}", server.port), "--token", &format!("B10{}::node:nope", "0".repeat(64))])
        .arg("--data-dir")
        .arg(std::env::temp_dir().join(format!("berth-wrong-{}", std::process::id())))
        .output()
        .expect("run berth agent");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("does not match the token"), "{}", String::from_utf8_lossy(&wrong.stderr));

    let both = eventually(Duration::from_secs(90), || (node_ready(&server, "berth-test") && node_ready(&server, "berth-test-2")).then_some(()));
    assert!(both.is_some(), "both nodes Ready:\n{}", server.ok(&["get", "nodes", "-o", "wide"]));
    let cidrs = server.ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"]);
    assert_eq!(cidrs.split_whitespace().count(), 2, "{cidrs}");

    let overrides = |node: &str, command: &str| format!(r#"{{"spec":{{"nodeName":"{node}","containers":[{{"name":"c","image":"berth.dev/busybox:1","command":["sh","-c","{command}"]}}]}}}}"#);
    server.ok(&["run", "server-pod", "--image=berth.dev/busybox:1", "--overrides", &overrides("berth-test-2", "httpd -f -p 8080 -h /etc")]);
    let target = eventually(Duration::from_secs(60), || {
        let ip = server.ok(&["get", "pod", "server-pod", "-o", "jsonpath={.status.podIP}"]);
        (!ip.is_empty() && server.ok(&["get", "pod", "server-pod", "-o", "jsonpath={.status.phase}"]) == "Running").then_some(ip)
    })
    .unwrap_or_else(|| panic!("server pod never ran: {}", server.ok(&["describe", "pod", "server-pod"])));
    // nc, not wget: Debian's static busybox wget crashes in its resolver.
    let script = format!("until printf 'GET /hostname HTTP/1.0\\\\r\\\\n\\\\r\\\\n' | nc -w 2 {target} 8080 | grep -q server-pod; do sleep 1; done; echo reached; ping -c 1 -W 2 {target} && echo pinged; sleep 3600");
    server.ok(&["run", "client-pod", "--image=berth.dev/busybox:1", "--overrides", &overrides("berth-test", &script)]);
    // Not `ok`: the logs are refused while the container is still being created.
    let logs = || String::from_utf8_lossy(&server.kubectl(&["logs", "client-pod"]).stdout).into_owned();
    let reached = eventually(Duration::from_secs(60), || {
        let logs = logs();
        (logs.contains("reached") && logs.contains("pinged")).then_some(logs)
    });
    assert!(reached.is_some(), "cross-node traffic: {}\n{}", logs(), server.ok(&["get", "pods", "-o", "wide"]));
    // The second node's endpoint serves logs through the API server.
    let logs = server.ok(&["logs", "server-pod"]);
    assert!(!logs.contains("error"), "{logs}");

    // Tear the second node's pods down through its agent before it goes.
    server.ok(&["delete", "pod", "server-pod", "--grace-period=1"]);
    let gone = eventually(Duration::from_secs(30), || (!server.kubectl(&["get", "pod", "server-pod"]).status.success()).then_some(()));
    assert!(gone.is_some());
    drop(agent);
}
