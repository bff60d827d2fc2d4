//! The node agent: the kubelet's job for one node. It registers the Node and keeps its Lease and
//! status fresh, runs the pods bound to it in containers through CRI on containerd (its own
//! containerd by default, as k3s), and serves their logs to the API server.
//!
//! Modules: `containerd` (the supervised containerd), `cri` (the CRI client), `node` (registration,
//! heartbeats, CNI config), `pods` (pod workers and the runtime relister), `runtime_state` (the
//! runtime's view of a pod), `status` (pod status computation), `env` and `volumes` (what a
//! container is given), `storage` (local-path volumes: provisioning, claims, cleanup), `tokens`
//! (service account tokens of projected volumes), `resources` (cgroup settings, QoS), `probes`,
//! `logs` (CRI log files),
//! `server` (the HTTPS endpoint the API server proxies `kubectl logs` to), `streaming` (exec,
//! attach and port-forward through the runtime's streaming server), `stats` (CPU and memory usage
//! of the node, pods and containers for `kubectl top`), `registries` (containerd's registry hosts
//! for `--insecure-registry`).

pub mod containerd;
pub mod cri;
pub mod env;
pub mod eviction;
pub mod join;
pub mod logs;
pub mod network;
pub mod node;
pub mod pods;
pub mod probes;
pub mod registries;
pub mod resources;
pub mod runtime_state;
pub mod server;
pub mod static_pods;
pub mod stats;
pub mod status;
pub mod storage;
pub mod streaming;
pub mod tokens;
pub mod volumes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use images::PAUSE_IMAGE;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Containerd(#[from] containerd::ContainerdError),
    #[error(transparent)]
    Cri(#[from] cri::CriError),
    #[error("images: {0}")]
    Images(String),
    #[error("registering the node: {0}")]
    Register(kube::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("agent server: {0}")]
    Server(String),
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    /// The address the node reports (InternalIP) and serves on.
    pub node_ip: String,
    /// `DATA/agent`: containerd, images, pod volumes, logs.
    pub dir: PathBuf,
    /// An existing CRI socket instead of the agent's own containerd.
    pub runtime_endpoint: Option<PathBuf>,
    /// Port of the agent's HTTPS endpoint (the kubelet's 10250); 0 picks a free one.
    pub port: u16,
    /// The static busybox the sandbox image is built from.
    pub busybox: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// PEM of the CA that signs the API server's client certificate (from the kubeconfig).
    pub client_ca_pem: Option<String>,
    /// Static pod manifests (default `DATA/agent/manifests`).
    pub pod_manifest_path: Option<PathBuf>,
    /// Hard eviction thresholds (`--eviction-hard`; empty: no eviction).
    pub eviction_hard: String,
    /// Registries (HOST:PORT) the agent's containerd pulls from over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Which low-level runtime the agent's own containerd gives pods.
    pub default_runtime: containerd::DefaultRuntime,
}

/// A hostname usable as a node name: lowercase, as the kubelet does.
pub fn default_node_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_lowercase()).unwrap_or_default();
    if name.is_empty() { "berth-node".into() } else { name }
}

/// The first non-loopback IPv4 address of the interface holding the default route, or
/// 127.0.0.1 on a machine without one.
pub fn default_node_ip() -> String {
    // A UDP "connect" picks the source address the kernel would route with; nothing is sent.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok();
    socket
        .and_then(|s| s.connect("10.255.255.255:9").ok().and_then(|_| s.local_addr().ok()))
        .map(|a| a.ip().to_string())
        .filter(|ip| ip != "0.0.0.0")
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// Builds the sandbox image into `DATA/agent/images` (it is ours, never downloaded) and imports
/// every archive there into containerd (air-gapped images, as k3s's agent/images).
async fn import_images(config: &AgentConfig, socket: &std::path::Path) -> Result<(), AgentError> {
    let dir = config.dir.join("images");
    std::fs::create_dir_all(&dir).map_err(|source| AgentError::Io { path: dir.clone(), source })?;
    let pause = dir.join("berth-pause.tar");
    if !pause.exists() {
        let builder = images::pause_image(PAUSE_IMAGE, &config.busybox).map_err(|e| AgentError::Images(format!("building the sandbox image from {}: {e}", config.busybox.display())))?;
        builder.write(&pause).map_err(|e| AgentError::Images(e.to_string()))?;
    }
    let mut archives: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| AgentError::Io { path: dir.clone(), source })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    archives.sort();
    for archive in archives {
        images::import(socket, &archive).await.map_err(|e| AgentError::Images(format!("importing {}: {e}", archive.display())))?;
        tracing::info!(archive = %archive.display(), "imported image archive");
    }
    Ok(())
}

/// Starts the agent; returns once the node is registered, with the tasks running in the background.
pub async fn start(client: kube::Client, config: AgentConfig) -> Result<RunningAgent, AgentError> {
    std::fs::create_dir_all(&config.dir).map_err(|source| AgentError::Io { path: config.dir.clone(), source })?;
    let paths = containerd::ContainerdPaths::under(&config.dir);
    let (socket, own_containerd) = match &config.runtime_endpoint {
        Some(endpoint) => (endpoint.clone(), None),
        None => {
            registries::write_plain_http(&paths.hosts_dir, &config.insecure_registries)?;
            let running = containerd::Containerd::start(paths.clone(), containerd::ContainerdSettings::for_host(config.default_runtime)?).await?;
            (paths.socket.clone(), Some(running))
        }
    };
    import_images(&config, &socket).await?;
    let cri = cri::Cri::connect(&socket)?;
    let version = wait_for_runtime(&cri).await?;
    tracing::info!(runtime = %version, node = %config.node_name, "container runtime ready");

    let pods_dir = config.dir.join("pods");
    let logs_dir = config.dir.join("logs").join("pods");
    for dir in [&pods_dir, &logs_dir] {
        std::fs::create_dir_all(dir).map_err(|source| AgentError::Io { path: dir.clone(), source })?;
    }
    let node_settings = node::NodeSettings {
        name: config.node_name.clone(),
        ip: config.node_ip.clone(),
        kubelet_port: config.port,
        data_dir: config.dir.clone(),
        cni_conf_dir: paths.cni_conf_dir.clone(),
        labels: config.labels.clone(),
    };
    // The kubelet's events name its node as their source's host.
    let recorder = controllers::events::Recorder::new(client.clone(), "kubelet").with_host(config.node_name.clone());
    let ctx = Arc::new(pods::Context {
        client: client.clone(),
        cri: cri.clone(),
        node_name: config.node_name.clone(),
        node_ip: config.node_ip.clone(),
        node_memory: node::measure(&config.dir).memory_bytes,
        pods_dir,
        logs_dir,
        recorder: recorder.clone(),
        pods: Default::default(),
        tokens: Default::default(),
        sources: Default::default(),
        stats: Default::default(),
        starts: tokio::sync::Semaphore::new(pods::sandbox_concurrency()),
    });
    let server = server::serve(ctx.clone(), &config).await?;
    let node_settings = node::NodeSettings { kubelet_port: server.port, ..node_settings };
    let thresholds = eviction::parse_thresholds(&config.eviction_hard).map_err(|e| AgentError::Server(e.to_string()))?;
    let pressure = eviction::SharedPressure::default();
    let node_agent = node::NodeAgent::new(client.clone(), cri.clone(), node_settings, pressure.clone(), recorder);
    let registered = node_agent.register().await.map_err(AgentError::Register)?;
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(containerd) = own_containerd {
        tasks.spawn(containerd.supervise());
    }
    tasks.spawn(node_agent.run(registered));
    tasks.spawn(network::run(client.clone(), config.node_name.clone(), config.node_ip.clone()));
    tasks.spawn(eviction::run(ctx.clone(), thresholds, pressure, config.dir.clone(), paths.dir.join("root")));
    let manifests = config.pod_manifest_path.clone().unwrap_or_else(|| config.dir.join("manifests"));
    tasks.spawn(static_pods::run(ctx.clone(), manifests));
    tasks.spawn(pods::run(ctx.clone()));
    tasks.spawn(stats::run(ctx.clone()));
    tasks.spawn(storage::run(ctx.clone()));
    Ok(RunningAgent { tasks, port: server.port })
}

async fn wait_for_runtime(cri: &cri::Cri) -> Result<String, AgentError> {
    let mut attempts = 0;
    loop {
        match cri.version().await {
            Ok(version) => return Ok(version),
            Err(error) if attempts >= 100 => return Err(error.into()),
            Err(_) => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The agent's background tasks; dropping it stops them (and the agent's containerd, whose
/// containers keep running in their shims, as when the kubelet stops).
pub struct RunningAgent {
    tasks: tokio::task::JoinSet<()>,
    pub port: u16,
}

impl RunningAgent {
    /// Waits until a task ends (none should).
    pub async fn wait(mut self) {
        self.tasks.join_next().await;
    }
}
