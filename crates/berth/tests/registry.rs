//! Image pulls over the network: `berth images serve` as a registry on loopback, the agent's
//! containerd told it speaks plain HTTP (`--insecure-registry`), pods pulling from it with and
//! without credentials. Needs root and scripts/setup's packages, as tests/agent.rs.
//!
//! Tests here run one at a time (one agent per machine, see tests/agent.rs).

use std::io::BufRead;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use testsupport::{Server, TempDir, agent_server, eventually};


/// A `berth images serve` child, killed on drop.
struct Registry {
    child: Child,
    address: String,
    _stdout: std::io::BufReader<ChildStdout>,
}

impl Registry {
    fn start(dir: &std::path::Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["images", "serve"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run berth images serve");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("the registry's first line");
        // "serving on http://127.0.0.1:PORT: name:tag, ..."
        let address = line.strip_prefix("serving on http://").and_then(|rest| rest.split_once(": ")).map(|(a, _)| a.to_string());
        let address = address.unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Registry { child, address, _stdout: stdout }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_pod(server: &Server, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(90), || {
        let p = server.get_json(&["pod", name]);
        check(&p).then_some(p)
    })
    .unwrap_or_else(|| panic!("pod {name}: {what} never happened:\n{}\n{}", server.ok(&["describe", "pod", name]), server.log().lines().rev().take(40).collect::<Vec<_>>().join("\n")))
}

fn waiting_reason(p: &Value) -> String {
    p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str().unwrap_or("").to_string()
}

fn events(server: &Server, pod: &str) -> Vec<(String, String)> {
    let list = server.get_json(&["events", "--field-selector", &format!("involvedObject.name={pod}")]);
    let mut items = list["items"].as_array().cloned().unwrap_or_default();
    items.sort_by_key(|e| e["firstTimestamp"].as_str().unwrap_or("").to_string());
    items.iter().map(|e| (e["reason"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string())).collect()
}

fn pod_yaml(name: &str, image: &str, secret: Option<&str>) -> String {
    let secrets = secret.map(|s| format!("  imagePullSecrets: [{{name: {s}}}]\n")).unwrap_or_default();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  automountServiceAccountToken: false
{secrets}  containers:
  - name: app
    image: {image}
    imagePullPolicy: Always
    command: ["sh", "-c", "echo running from the registry; sleep 3600"]
"#
    )
}

#[test]
fn pods_pull_from_a_registry_on_loopback_with_and_without_credentials() {
    // The test image under a name nothing on the node has: it can only come from the registry.
    let content = TempDir::new("registry");
    let built = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["images", "build", "busybox", "--name", "berth.dev/mirror/busybox:2", "--out"])
        .arg(content.path.join("busybox.tar"))
        .status()
        .expect("berth images build");
    assert!(built.success());
    let open = Registry::start(&content.path, &[]);
    let locked = Registry::start(&content.path, &["--basic-auth", "puller:s3cret"]);

    let server = agent_server(env!("CARGO_BIN_EXE_berth"), &["--insecure-registry", &open.address, "--insecure-registry", &locked.address]);
    let hosts = std::fs::read_to_string(server.data_dir().join("agent/containerd/certs.d").join(&open.address).join("hosts.toml")).expect("hosts.toml written");
    assert!(hosts.contains(&format!("server = \"http://{}\"", open.address)), "{hosts}");

    // Pulled over plain HTTP, by tag (Always pulls even when present).
    let image = format!("{}/mirror/busybox:2", open.address);
    server.ok_stdin(&["apply", "-f", "-"], &pod_yaml("pulled", &image, None));
    let p = wait_pod(&server, "pulled", "Running", |p| p["status"]["phase"] == "Running");
    assert!(p["status"]["containerStatuses"][0]["imageID"].as_str().is_some_and(|id| id.contains("sha256:")), "{p}");
    let logs = eventually(Duration::from_secs(20), || Some(server.ok(&["logs", "pulled"])).filter(|l| l.contains("running from the registry")));
    assert!(logs.is_some());
    let seen = events(&server, "pulled");
    let reasons: Vec<&str> = seen.iter().map(|(r, _)| r.as_str()).collect();
    let pulling = reasons.iter().position(|r| *r == "Pulling").unwrap_or_else(|| panic!("{seen:?}"));
    let pulled = reasons.iter().position(|r| *r == "Pulled").unwrap_or_else(|| panic!("{seen:?}"));
    assert!(pulling < pulled && pulled < reasons.iter().position(|r| *r == "Started").unwrap_or(0), "{seen:?}");
    assert!(seen[pulled].1.starts_with(&format!("Successfully pulled image \"{image}\" in ")), "{seen:?}");

    // Basic auth: refused without credentials, as upstream reports it.
    let image = format!("{}/mirror/busybox:2", locked.address);
    server.ok_stdin(&["apply", "-f", "-"], &pod_yaml("denied", &image, None));
    let p = wait_pod(&server, "denied", "an image pull error", |p| matches!(waiting_reason(p).as_str(), "ErrImagePull" | "ImagePullBackOff"));
    assert_eq!(p["status"]["phase"], "Pending");
    let failed = events(&server, "denied").into_iter().find(|(r, m)| r == "Failed" && m.starts_with("Failed to pull image"));
    assert!(failed.as_ref().is_some_and(|(_, m)| m.contains("401 Unauthorized")), "{failed:?}");
    wait_pod(&server, "denied", "ImagePullBackOff", |p| waiting_reason(p) == "ImagePullBackOff");

    // With a docker-registry secret naming the registry, the same image is pulled.
    server.ok(&["create", "secret", "docker-registry", "regcred", &format!("--docker-server={}", locked.address), "--docker-username=puller", "--docker-password=s3cret"]);
    server.ok_stdin(&["apply", "-f", "-"], &pod_yaml("allowed", &image, Some("regcred")));
    wait_pod(&server, "allowed", "Running", |p| p["status"]["phase"] == "Running");
    assert!(events(&server, "allowed").iter().any(|(r, m)| r == "Pulled" && m.contains(&image)));

    // A secret for another registry is no help.
    server.ok(&["create", "secret", "docker-registry", "othercred", "--docker-server=registry.example:5000", "--docker-username=puller", "--docker-password=s3cret"]);
    server.ok_stdin(&["apply", "-f", "-"], &pod_yaml("mismatched", &image, Some("othercred")));
    wait_pod(&server, "mismatched", "an image pull error", |p| matches!(waiting_reason(p).as_str(), "ErrImagePull" | "ImagePullBackOff"));
}
