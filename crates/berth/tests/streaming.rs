//! kubectl exec, cp, attach and port-forward on the real stack (API server, agent, containerd),
//! with kubectl versions that speak SPDY (1.27–1.29) and WebSocket (1.30+ for exec, 1.31+ for
//! port-forward). Needs root and scripts/setup's packages, as tests/agent.rs.
//!
//! Tests run one at a time: every agent on the machine shares the host's bridge and pod range.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testsupport::{AgentServer, Server, TempDir, agent_server, eventually};


fn server() -> AgentServer {
    agent_server(env!("CARGO_BIN_EXE_berth"), &[])
}

/// The kubectls to try: one that speaks only SPDY and the newest ones (WebSocket), those
/// installed. `$BERTH_KUBECTL` (or `kubectl`) is always among them.
fn kubectls() -> Vec<(String, PathBuf)> {
    let mut out = vec![("default".to_string(), PathBuf::from(testsupport::kubectl_binary()))];
    let sdk = Path::new("/usr/lib/google-cloud-sdk/bin");
    for version in ["1.27", "1.30", "1.33"] {
        out.push((version.to_string(), sdk.join(format!("kubectl.{version}"))));
    }
    out.push(("1.37".to_string(), Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ci/tools/kubectl-1.37/bin/kubectl")));
    out.retain(|(name, path)| name == "default" || path.exists());
    out
}

fn kubectl(server: &Server, bin: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("KUBECONFIG", server.kubeconfig()).env_remove("KUBERNETES_SERVICE_HOST").args(args);
    cmd
}

fn run(server: &Server, bin: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = kubectl(server, bin, args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run kubectl");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = wait_output(child, Duration::from_secs(60)).unwrap_or_else(|| panic!("kubectl {args:?} did not finish within 60s:\n{}", tail(&server.log())));
    let _ = writer.join();
    out
}

/// The child's output once it exits, or `None` (and the child killed) after `timeout`. The
/// output is read while the child runs, so a large one cannot block it on a full pipe.
fn wait_output(child: std::process::Child, timeout: Duration) -> Option<Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.ok(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            None
        }
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().rev().take(30).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn wait_running(server: &Server, name: &str) {
    let running = eventually(Duration::from_secs(90), || {
        let p = server.get_json(&["pod", name]);
        (p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["state"]["running"].is_object()).then_some(())
    });
    assert!(running.is_some(), "pod {name} never ran:\n{}\n{}", server.ok(&["describe", "pod", name]), tail(&server.log()));
}

#[test]
fn exec_and_cp_with_spdy_and_websocket_kubectls() {
    let server = server();
    server.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: shell}
spec:
  automountServiceAccountToken: false
  containers: [{name: shell, image: berth.dev/busybox:1, command: ["sleep", "3600"]}]
"#,
    );
    wait_running(&server, "shell");
    let local = TempDir::new("streaming-cp");

    for (version, bin) in kubectls() {
        let ctx = format!("kubectl {version}");
        let out = run(&server, &bin, &["exec", "shell", "--", "echo", "hi"], b"");
        assert!(out.status.success(), "{ctx}: exec failed: {}\n{}", text(&out.stderr), tail(&server.log()));
        assert_eq!(text(&out.stdout), "hi\n", "{ctx}");

        // The command's exit code is kubectl's, and stderr stays apart from stdout.
        let out = run(&server, &bin, &["exec", "shell", "--", "sh", "-c", "echo out; echo err >&2; exit 3"], b"");
        assert_eq!(out.status.code(), Some(3), "{ctx}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "out\n", "{ctx}");
        assert!(text(&out.stderr).starts_with("err\n"), "{ctx}: {}", text(&out.stderr));

        // stdin reaches the command, and its end is the command's EOF.
        let input: Vec<u8> = (0..20_000).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        let out = run(&server, &bin, &["exec", "-i", "shell", "--", "sh", "-c", "cat; echo done"], &input);
        assert!(out.status.success(), "{ctx}: {}", text(&out.stderr));
        let mut expected = input.clone();
        expected.extend_from_slice(b"done\n");
        assert!(out.stdout == expected, "{ctx}: exec -i echoed {} bytes of {}", out.stdout.len(), expected.len());

        // A terminal: kubectl needs one of its own for -t, which `script` provides.
        let line = format!("KUBECONFIG={} {} exec -it shell -- tty", server.kubeconfig().display(), bin.display());
        let child = Command::new("script").args(["-qec", &line, "/dev/null"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("script");
        let out = wait_output(child, Duration::from_secs(60)).expect("exec -it finished");
        let shown = text(&out.stdout);
        assert!(shown.contains("/dev/pts/"), "{ctx}: exec -it has a terminal: {shown:?} {}", text(&out.stderr));

        // kubectl cp: tar in the container, both ways.
        let source = local.path.join(format!("source-{version}"));
        let content: String = (0..5000).map(|i| format!("{version} {i}\n")).collect();
        std::fs::write(&source, &content).unwrap();
        let remote = format!("shell:/tmp/copied-{version}");
        let out = run(&server, &bin, &["cp", source.to_str().unwrap(), &remote], b"");
        assert!(out.status.success(), "{ctx}: cp into the pod: {}", text(&out.stderr));
        let out = run(&server, &bin, &["exec", "shell", "--", "md5sum", &format!("/tmp/copied-{version}")], b"");
        let sum = text(&out.stdout);
        let back = local.path.join(format!("back-{version}"));
        let out = run(&server, &bin, &["cp", &remote, back.to_str().unwrap()], b"");
        assert!(out.status.success(), "{ctx}: cp out of the pod: {}", text(&out.stderr));
        assert_eq!(std::fs::read_to_string(&back).unwrap_or_default(), content, "{ctx}: the file came back whole ({sum})");
    }

    // Errors are Status answers before any upgrade.
    let out = run(&server, Path::new(&testsupport::kubectl_binary()), &["exec", "shell", "-c", "nope", "--", "true"], b"");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("container nope is not valid for pod shell"), "{}", text(&out.stderr));
    let out = run(&server, Path::new(&testsupport::kubectl_binary()), &["exec", "missing", "--", "true"], b"");
    assert!(text(&out.stderr).contains("pods \"missing\" not found"), "{}", text(&out.stderr));
}

#[test]
fn attach_and_port_forward() {
    let server = server();
    server.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  automountServiceAccountToken: false
  containers:
  - name: httpd
    image: berth.dev/busybox:1
    command: ["sh", "-c", "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  automountServiceAccountToken: false
  containers:
  - name: ticker
    image: berth.dev/busybox:1
    command: ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  automountServiceAccountToken: false
  containers:
  - name: reader
    image: berth.dev/busybox:1
    stdin: true
    stdinOnce: true
    command: ["sh", "-c", "read x; echo got $x; sleep 3600"]
"#,
    );
    for name in ["web", "ticker", "reader"] {
        wait_running(&server, name);
    }
    let default = PathBuf::from(testsupport::kubectl_binary());
    let local = TempDir::new("streaming-pf");

    // attach: the running container's output, then the first stdin attach feeds its read.
    let child = kubectl(&server, &default, &["attach", "ticker"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("attach");
    let (child, lines) = read_lines_until(child, Duration::from_secs(30), |line| line.starts_with("tick "));
    drop(child);
    assert!(lines.iter().any(|l| l.starts_with("tick ")), "attach showed the output: {lines:?}\n{}", tail(&server.log()));
    let child = kubectl(&server, &default, &["attach", "-i", "reader"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("attach -i");
    let mut child = child;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"hello\n");
    }
    let (child, lines) = read_lines_until(child, Duration::from_secs(30), |line| line.starts_with("got "));
    drop(child);
    assert!(lines.iter().any(|l| l == "got hello"), "attach -i fed stdin: {lines:?}\n{}", tail(&server.log()));

    for (version, bin) in kubectls() {
        let ctx = format!("kubectl {version}");
        let errors = local.path.join(format!("port-forward-{version}.err"));
        let stderr = std::fs::File::create(&errors).expect("stderr file");
        let child = kubectl(&server, &bin, &["port-forward", "pod/web", "0:8080"]).stdout(Stdio::piped()).stderr(stderr).spawn().expect("port-forward");
        let (child, lines) = read_lines_until(child, Duration::from_secs(30), |line| line.starts_with("Forwarding from 127.0.0.1:"));
        let port = lines
            .iter()
            .find_map(|l| l.strip_prefix("Forwarding from 127.0.0.1:").and_then(|rest| rest.split(' ').next()).and_then(|p| p.parse::<u16>().ok()))
            .unwrap_or_else(|| panic!("{ctx}: no forwarded port in {lines:?}"));
        // Two connections: each is its own pair of streams on the one session.
        // httpd may still be starting: the first connection is retried.
        let mut last = String::new();
        let first = eventually(Duration::from_secs(20), || match http_get(port) {
            Ok(body) => Some(body),
            Err(e) => {
                last = e.to_string();
                std::thread::sleep(Duration::from_millis(500));
                None
            }
        });
        let first = first.unwrap_or_else(|| panic!("{ctx}: GET through the forwarded port: {last}\n{}\n{}", std::fs::read_to_string(&errors).unwrap_or_default(), tail(&server.log())));
        assert!(first.starts_with("HTTP/1.") && first.contains("hello from web"), "{ctx}: {first}");
        let second = http_get(port).unwrap_or_else(|e| panic!("{ctx}: second GET: {e}"));
        assert!(second.contains("hello from web"), "{ctx}: {second}");
        drop(child);
    }
}

/// Kills the child when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the child's stdout line by line until `done` matches one or `timeout` passes.
fn read_lines_until(mut child: std::process::Child, timeout: Duration, done: impl Fn(&str) -> bool + Send + 'static) -> (Running, Vec<String>) {
    let stdout = child.stdout.take().expect("stdout");
    let (mut tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Reading goes on after `done`: a closed pipe would kill kubectl at its next line.
        let mut finished = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !finished {
                finished = done(&line);
                let _ = tx.send(line);
                if finished {
                    tx = std::sync::mpsc::channel().0;
                }
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    (Running(child), lines)
}

fn http_get(port: u16) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(b"GET /index.html HTTP/1.0\r\nHost: web\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}
