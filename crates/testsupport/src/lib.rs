//! Helpers for integration tests: a real `berth server` in a temporary data dir on a free loopback
//! port, and the real `kubectl` pointed at it. Nothing here fakes the server or the client.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The kubectl to test with: `$BERTH_KUBECTL` if set (a path to one version), else `kubectl`.
pub fn kubectl_binary() -> String {
    std::env::var("BERTH_KUBECTL").unwrap_or_else(|_| "kubectl".to_string())
}

pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!("berth-{label}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("BERTH_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A running `berth server` child process.
pub struct Server {
    binary: PathBuf,
    pub dir: TempDir,
    pub port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// The address the API server listens on (loopback unless a test needs other hosts to reach it).
    listen_ip: String,
    /// Whether `berth server` runs its node agent (needs containerd; most tests run without).
    agent: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

impl Server {
    /// Starts the server binary (tests pass `env!("CARGO_BIN_EXE_berth")`) and waits until kubectl
    /// can reach it.
    pub fn start(binary: &str) -> Self {
        Self::start_with(binary, &[])
    }

    /// Starts with extra `berth server` flags.
    pub fn start_with(binary: &str, args: &[&str]) -> Self {
        Self::start_inner(binary, args, false, "127.0.0.1")
    }

    /// Starts with the node agent on (containerd, runc and CNI plugins must be installed:
    /// scripts/setup). `args` are extra `berth server` flags.
    pub fn start_with_agent(binary: &str, args: &[&str]) -> Self {
        Self::start_inner(binary, args, true, "127.0.0.1")
    }

    /// Starts with the node agent, the API server listening on `listen_ip` (for agents in other
    /// network namespaces); `args` may set the agent's own `--node-ip`.
    pub fn start_with_agent_on(binary: &str, listen_ip: &str, args: &[&str]) -> Self {
        Self::start_inner(binary, args, true, listen_ip)
    }

    fn start_inner(binary: &str, args: &[&str], agent: bool, listen_ip: &str) -> Self {
        let mut extra_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let dir = TempDir::new("server");
        if agent {
            // The node reports loopback (the API server reaches its endpoint there) on a free port,
            // and the test image is imported at start like any air-gapped image.
            if !args.contains(&"--node-ip") {
                extra_args.extend(["--node-ip", "127.0.0.1"].map(String::from));
            }
            extra_args.extend(["--kubelet-port", "0", "--node-name", "berth-test"].map(String::from));
            // Disk thresholds would evict test pods on a nearly full CI disk; memory stays guarded.
            if !args.contains(&"--eviction-hard") {
                extra_args.extend(["--eviction-hard", "memory.available<100Mi"].map(String::from));
            }
            let images = dir.path.join("agent").join("images");
            std::fs::create_dir_all(&images).expect("images dir");
            let status = Command::new(binary).args(["images", "build", "busybox", "--out"]).arg(images.join("busybox.tar")).status().expect("run berth images build");
            assert!(status.success(), "building the busybox test image failed (is busybox-static installed? run scripts/setup)");
        }
        let mut server = Self { binary: PathBuf::from(binary), dir, port: free_port(), child: None, extra_args, listen_ip: listen_ip.to_string(), agent };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path.join("server.log")).expect("server log");
        let child = Command::new(&self.binary)
            .arg("server")
            .arg("--data-dir")
            .arg(&self.dir.path)
            .arg("--listen")
            .arg(format!("{}:{}", self.listen_ip, self.port))
            .args(&self.extra_args)
            .args(if self.agent { &[][..] } else { &["--disable-agent"][..] })
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start berth server");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("berth server exited early with {status}; log:\n{}", self.log());
            }
            if self.kubeconfig().exists() && self.kubectl(&["get", "--raw", "/readyz"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("berth server not ready after 60s; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("server.log")).unwrap_or_default()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path.join("admin.kubeconfig")
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir.path
    }

    /// Stops with SIGTERM (as Ctrl-C would) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills with SIGKILL: no chance to flush anything.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same data dir and port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn start_again(&mut self) {
        self.spawn();
    }

    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(kubectl_binary());
        cmd.env("KUBECONFIG", self.kubeconfig()).env_remove("KUBERNETES_SERVICE_HOST").args(args);
        cmd
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args).stdin(Stdio::null()).output().expect("run kubectl")
    }

    /// kubectl with `input` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self.kubectl_command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run kubectl");
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        child.wait_with_output().expect("kubectl output")
    }

    /// Runs kubectl and panics with its output unless it succeeded; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert_success(args, &out, self);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ok_stdin(&self, args: &[&str], input: &str) -> String {
        let out = self.kubectl_stdin(args, input);
        assert_success(args, &out, self);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(!out.status.success(), "kubectl {args:?} unexpectedly succeeded: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `kubectl get ... -o json` parsed.
    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["get"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&full)).expect("kubectl printed JSON")
    }
}

fn assert_success(args: &[&str], out: &Output, server: &Server) {
    assert!(
        out.status.success(),
        "kubectl {args:?} failed ({}):\nstdout: {}\nstderr: {}\nserver log tail:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log().lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

impl Server {
    /// The socket of the agent's containerd.
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.path.join("agent").join("containerd").join("containerd.sock")
    }

    /// `ctr` against the agent's containerd, in the CRI namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr").arg("--address").arg(self.containerd_socket()).args(["--namespace", "k8s.io"]).args(args).output().expect("run ctr")
    }

    /// Deletes every pod so the agent tears down containers, sandboxes and their network
    /// namespaces, then kills whatever is left: containers outlive containerd in their shims.
    fn teardown_agent(&mut self) {
        if self.child.is_some() {
            // Workload controllers first: pods deleted while their ReplicaSet still exists are
            // replaced, and a replacement whose sandbox was being created when the server stopped
            // left its network namespace and pod IP behind (containerd sets up the network
            // before it records the sandbox, so `ctr` showed nothing for a moment).
            let _ = self.kubectl(&["delete", "deployments,replicasets,replicationcontrollers,statefulsets,daemonsets,jobs,cronjobs", "--all", "--all-namespaces", "--wait=false"]);
            // Containers too, not only tasks: a sandbox's network (its namespace, its pod IP on
            // the shared bridge) goes only when the agent removes the sandbox, and a leftover
            // would answer for an address the next test's pods get again.
            let mut quiet_rounds = 0;
            let mut round = 0;
            eventually(Duration::from_secs(45), || {
                if round % 10 == 0 {
                    let _ = self.kubectl(&["delete", "pods", "--all", "--all-namespaces", "--grace-period=0", "--force", "--wait=false"]);
                }
                round += 1;
                let empty = |what: &str| {
                    let out = self.ctr(&[what, "ls", "-q"]);
                    out.status.success() && out.stdout.iter().all(|b| b.is_ascii_whitespace())
                };
                // Mirror pods of static pods come back whatever is deleted; their containers keep
                // `ctr` from ever being empty, so they wait out the timeout as before.
                let pods_left = || {
                    let listing = r#"jsonpath={range .items[*]}{.metadata.name}{"="}{.metadata.annotations.kubernetes\.io/config\.mirror}{"\n"}{end}"#;
                    let out = self.kubectl(&["get", "pods", "--all-namespaces", "-o", listing]);
                    !out.status.success() || String::from_utf8_lossy(&out.stdout).lines().any(|pod| pod.ends_with('='))
                };
                if empty("tasks") && empty("containers") && !pods_left() {
                    quiet_rounds += 1;
                } else {
                    quiet_rounds = 0;
                }
                // Twice in a row: one look can fall between a sandbox's network and its record.
                (quiet_rounds >= 2).then_some(())
            });
        }
        // Whatever is left is killed and deleted, so no shim outlives its containerd.
        let tasks = String::from_utf8_lossy(&self.ctr(&["tasks", "ls", "-q"]).stdout).into_owned();
        for id in tasks.split_whitespace() {
            let _ = self.ctr(&["tasks", "delete", "--force", id]);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.agent {
            self.teardown_agent();
        }
        self.kill_hard();
    }
}

/// Polls `check` until it returns Some or the timeout passes.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Agents on one machine share the host's `berth0` bridge and pod address range, so a test
/// binary runs one agent at a time.
static AGENT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A server with its node agent, holding the one-agent-at-a-time lock until dropped (after the
/// server: fields drop in order).
pub struct AgentServer {
    pub server: Server,
    _guard: std::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for AgentServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl std::ops::DerefMut for AgentServer {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

/// Starts `berth server` with its agent (extra server flags in `args`) once no other agent of
/// this test binary runs, and waits until the node `berth-test` is Ready.
pub fn agent_server(binary: &str, args: &[&str]) -> AgentServer {
    let guard = AGENT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start_with_agent(binary, args);
    let ready = eventually(Duration::from_secs(60), || {
        let out = server.kubectl(&["get", "node", "berth-test", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]);
        (String::from_utf8_lossy(&out.stdout) == "True").then_some(())
    });
    assert!(ready.is_some(), "node berth-test never became Ready:\n{}", server.log());
    AgentServer { server, _guard: guard }
}

/// `berth sim-nodes` against a server: `count` simulated nodes named PREFIX0 … with `flags`
/// (capacity and the like). Dropping it stops the process, and so its nodes' heartbeats.
pub struct SimNodes(Child);

impl SimNodes {
    pub fn start(binary: &str, server: &Server, prefix: &str, count: usize, flags: &[&str]) -> Self {
        let child = Command::new(binary)
            .args(["sim-nodes", "--kubeconfig"])
            .arg(server.kubeconfig())
            .args(["--prefix", prefix, "--count", &count.to_string()])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start berth sim-nodes");
        SimNodes(child)
    }
}

impl Drop for SimNodes {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
