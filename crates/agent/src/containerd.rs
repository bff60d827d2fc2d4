//! The agent's own containerd, as k3s runs one: Debian's `containerd` binary with a config,
//! root, state and socket under the agent's data directory, so it never touches a system
//! containerd, and restarted when it dies.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot start {binary}: {source} (install containerd and runc, e.g. with scripts/setup)")]
    Spawn { binary: String, source: std::io::Error },
    #[error("containerd did not open {socket} within {seconds} s; its log is {log}")]
    NotReady { socket: PathBuf, seconds: u64, log: PathBuf },
    #[error("{0}")]
    Runtime(String),
}

/// Where one containerd keeps everything.
#[derive(Clone, Debug)]
pub struct ContainerdPaths {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The CNI configuration directory containerd's CRI plugin reads.
    pub cni_conf_dir: PathBuf,
    /// Registry hosts configuration (`<host:port>/hosts.toml`), read at every pull.
    pub hosts_dir: PathBuf,
}

impl ContainerdPaths {
    pub fn under(agent_dir: &Path) -> Self {
        let dir = agent_dir.join("containerd");
        Self {
            socket: dir.join("containerd.sock"),
            config: dir.join("config.toml"),
            log: dir.join("containerd.log"),
            cni_conf_dir: agent_dir.join("cni").join("net.d"),
            hosts_dir: dir.join("certs.d"),
            dir,
        }
    }
}

/// Settings containerd's CRI plugin needs from the agent.
#[derive(Clone, Debug)]
pub struct ContainerdSettings {
    pub sandbox_image: String,
    /// Where Debian's `containernetworking-plugins` put the plugin binaries.
    pub cni_bin_dir: PathBuf,
    /// crun, when it is installed and can run here: offered as the `crun` runtime handler.
    pub crun: Option<PathBuf>,
    /// The handler (`runc` or `crun`) pods get when they name none.
    pub default_runtime: String,
}

impl Default for ContainerdSettings {
    fn default() -> Self {
        Self { sandbox_image: crate::PAUSE_IMAGE.to_string(), cni_bin_dir: PathBuf::from("/usr/lib/cni"), crun: None, default_runtime: "runc".into() }
    }
}

/// Which low-level runtime new pods run with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultRuntime {
    /// crun when it is installed and works with this host's cgroups, else runc.
    #[default]
    Auto,
    Runc,
    Crun,
}

impl std::str::FromStr for DefaultRuntime {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "runc" => Ok(Self::Runc),
            "crun" => Ok(Self::Crun),
            other => Err(format!("unknown runtime {other:?}: expected auto, runc or crun")),
        }
    }
}

impl ContainerdSettings {
    /// Settings with the runtime handlers this host can offer. crun starts a container with far
    /// less CPU than runc (a small C program, where runc pays Go's start-up on every call), and
    /// container creation is most of a pod's start-up cost on a small machine.
    pub fn for_host(wanted: DefaultRuntime) -> Result<Self, ContainerdError> {
        let crun = crun_binary().map(|binary| crun_unusable_reason(Path::new("/sys/fs/cgroup")).map_or(Ok(binary), Err));
        let (crun, default_runtime) = match (wanted, crun) {
            (DefaultRuntime::Runc, crun) => (crun.and_then(Result::ok), "runc"),
            (DefaultRuntime::Auto, None) => (None, "runc"),
            (DefaultRuntime::Auto, Some(Err(reason))) => {
                tracing::info!(%reason, "crun cannot run containers on this host; pods run with runc");
                (None, "runc")
            }
            (DefaultRuntime::Auto | DefaultRuntime::Crun, Some(Ok(binary))) => (Some(binary), "crun"),
            (DefaultRuntime::Crun, None) => return Err(ContainerdError::Runtime("crun is not installed (scripts/setup installs it)".into())),
            (DefaultRuntime::Crun, Some(Err(reason))) => return Err(ContainerdError::Runtime(format!("crun cannot run containers on this host: {reason}"))),
        };
        Ok(Self { crun, default_runtime: default_runtime.into(), ..Self::default() })
    }
}

fn crun_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("crun")).find(|candidate| candidate.is_file())
}

/// Why crun would fail to create containers under this cgroup layout, if it would. crun refuses
/// a hybrid layout (v1 controllers, plus a v2 hierarchy at `unified`) while any controller is
/// attached to the v2 side: some minimal VMs mount every v1 controller but hugetlb, which then
/// sits on v2. scripts/setup mounts such leftovers as v1 hierarchies, as systemd would.
fn crun_unusable_reason(cgroup_root: &Path) -> Option<String> {
    if cgroup_root.join("cgroup.controllers").exists() {
        return None; // the unified (v2-only) layout
    }
    let controllers = std::fs::read_to_string(cgroup_root.join("unified").join("cgroup.controllers")).ok()?;
    let attached = controllers.split_whitespace().collect::<Vec<_>>().join(" ");
    (!attached.is_empty()).then(|| format!("hybrid cgroups with controllers on the v2 hierarchy ({attached}); mount them as v1 hierarchies (scripts/setup does) or run with --default-runtime runc"))
}

/// containerd 1.6's config (version 2 schema). The CRI stream server (exec, attach,
/// port-forward) listens on loopback on a free port: only the agent talks to it.
fn config_toml(paths: &ContainerdPaths, settings: &ContainerdSettings) -> String {
    let q = |p: &Path| toml_string(&p.display().to_string());
    format!(
        r#"version = 2
root = {root}
state = {state}
# Snapshotters this machine cannot use only log errors at start; keep them out.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = {socket}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox}
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  restrict_oom_score_adj = {restrict_oom}
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = {default_runtime}
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's state would otherwise be shared with a system containerd's (/run/containerd/runc).
        Root = {runc_root}
{crun_handler}  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {hosts}
"#,
        root = q(&paths.dir.join("root")),
        state = q(&paths.dir.join("state")),
        socket = q(&paths.socket),
        opt = q(&paths.dir.join("opt")),
        sandbox = toml_string(&settings.sandbox_image),
        cni_bin = q(&settings.cni_bin_dir),
        restrict_oom = !can_lower_oom_score(),
        runc_root = q(&paths.dir.join("state").join("runc")),
        default_runtime = toml_string(&settings.default_runtime),
        crun_handler = settings.crun.as_deref().map(|binary| crun_handler(binary, &paths.dir.join("state").join("crun"))).unwrap_or_default(),
        cni_conf = q(&paths.cni_conf_dir),
        hosts = q(&paths.hosts_dir),
    )
}

/// The `crun` handler: runc's shim, driving the crun binary instead.
fn crun_handler(binary: &Path, root: &Path) -> String {
    let q = |p: &Path| toml_string(&p.display().to_string());
    format!(
        r#"    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
        SystemdCgroup = false
        BinaryName = {binary}
        Root = {root}
"#,
        binary = q(binary),
        root = q(root),
    )
}

/// Lowering an OOM score (the sandbox's -998, Guaranteed pods' -997) needs CAP_SYS_RESOURCE.
/// Without it (a container or a restricted VM) every sandbox would fail to start, so containerd is
/// told to clamp scores to its own instead, as rootless setups do.
fn can_lower_oom_score() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok()))
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A running containerd owned by the agent.
pub struct Containerd {
    pub paths: ContainerdPaths,
    child: Child,
}

impl Containerd {
    /// Writes the config and starts containerd; returns once its socket accepts connections.
    pub async fn start(paths: ContainerdPaths, settings: ContainerdSettings) -> Result<Self, ContainerdError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ContainerdError::Io { path, source }
        };
        for dir in [&paths.dir, &paths.cni_conf_dir, &paths.hosts_dir] {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        std::fs::write(&paths.config, config_toml(&paths, &settings)).map_err(io(&paths.config))?;
        let child = spawn(&paths).await?;
        let containerd = Self { paths, child };
        containerd.wait_ready(Duration::from_secs(30)).await?;
        Ok(containerd)
    }

    async fn wait_ready(&self, limit: Duration) -> Result<(), ContainerdError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if tokio::net::UnixStream::connect(&self.paths.socket).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ContainerdError::NotReady { socket: self.paths.socket.clone(), seconds: limit.as_secs(), log: self.paths.log.clone() });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for containerd to exit and starts it again, forever. Containers keep running
    /// meanwhile (their shims outlive containerd), so a restart loses nothing.
    pub async fn supervise(mut self) {
        loop {
            let status = self.child.wait().await;
            tracing::warn!(?status, log = %self.paths.log.display(), "containerd exited; restarting it");
            tokio::time::sleep(Duration::from_secs(1)).await;
            match spawn(&self.paths).await {
                Ok(child) => {
                    self.child = child;
                    if let Err(error) = self.wait_ready(Duration::from_secs(30)).await {
                        tracing::error!(%error, "containerd restart");
                    }
                }
                Err(error) => tracing::error!(%error, "containerd restart"),
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

async fn spawn(paths: &ContainerdPaths) -> Result<Child, ContainerdError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .map_err(|source| ContainerdError::Io { path: paths.log.clone(), source })?;
    let log_err = log.try_clone().map_err(|source| ContainerdError::Io { path: paths.log.clone(), source })?;
    // A stale socket from a killed containerd would make the readiness check pass at once.
    let _ = std::fs::remove_file(&paths.socket);
    let mut command = Command::new("containerd");
    // containerd goes when the agent goes, even killed without a chance to clean up (containers
    // live on in their shims; the next agent's containerd picks them up).
    // The agent's own allocator turns transparent huge pages off for the agent's process; that
    // flag is inherited, and containerd, its shims and every container would otherwise run
    // with THP off whatever the machine's setting.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 || libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .arg("--config")
        .arg(&paths.config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ContainerdError::Spawn { binary: "containerd".into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_quotes_paths_and_names_the_sandbox_image() {
        let paths = ContainerdPaths::under(Path::new("/data/a \"b\"/agent"));
        let text = config_toml(&paths, &ContainerdSettings::default());
        assert!(text.contains(r#"address = "/data/a \"b\"/agent/containerd/containerd.sock""#), "{text}");
        assert!(text.contains(&format!("sandbox_image = \"{}\"", crate::PAUSE_IMAGE)));
        assert!(text.contains(r#"bin_dir = "/usr/lib/cni""#));
        assert!(text.contains(r#"config_path = "/data/a \"b\"/agent/containerd/certs.d""#), "{text}");
        assert!(text.contains(r#"default_runtime_name = "runc""#) && !text.contains("runtimes.crun"), "{text}");
    }

    #[test]
    fn crun_is_a_second_handler_with_its_own_state() {
        let paths = ContainerdPaths::under(Path::new("/data/agent"));
        let settings = ContainerdSettings { crun: Some("/usr/bin/crun".into()), default_runtime: "crun".into(), ..Default::default() };
        let text = config_toml(&paths, &settings);
        assert!(text.contains(r#"default_runtime_name = "crun""#), "{text}");
        let crun = text.split("runtimes.crun.options]").nth(1).expect("a crun handler");
        assert!(crun.contains(r#"BinaryName = "/usr/bin/crun""#) && crun.contains(r#"Root = "/data/agent/containerd/state/crun""#), "{text}");
        let runc = text.split("runtimes.runc.options]").nth(1).and_then(|t| t.split("runtimes.crun").next()).expect("a runc handler");
        assert!(!runc.contains("BinaryName"), "runc stays runc: {text}");
    }

    #[test]
    fn crun_refuses_hybrid_cgroups_with_controllers_on_v2() {
        let root = std::env::temp_dir().join(format!("berth-cgroup-layout-{}", std::process::id()));
        let unified = root.join("unified");
        std::fs::create_dir_all(&unified).unwrap();
        std::fs::write(unified.join("cgroup.controllers"), "hugetlb\n").unwrap();
        let reason = crun_unusable_reason(&root).expect("hugetlb on v2 makes crun fail");
        assert!(reason.contains("hugetlb"), "{reason}");
        std::fs::write(unified.join("cgroup.controllers"), "\n").unwrap();
        assert_eq!(crun_unusable_reason(&root), None, "an empty v2 side is what systemd's hybrid mode leaves");
        std::fs::write(root.join("cgroup.controllers"), "cpu memory\n").unwrap();
        assert_eq!(crun_unusable_reason(&root), None, "unified layout");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
