//! The `berth` command: thin glue over the component crates.

mod bench;
mod bench_podstartup;
mod bench_scheduler;
mod images;

// Under write load glibc malloc took a quarter of the server's CPU (arena locks, consolidation);
// with mimalloc `berth bench api` creates 45% more ConfigMaps per second (4,800 -> 6,900/s).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (a stable index in its option enum; the -sys crate has no
/// constant for it). Purging freed pages at once instead of after 10 ms saves the node agent
/// a few MiB of RSS; the API server keeps the default, because immediate purging cost it ~4%
/// of its CPU in madvise calls and TLB shootdowns under load (`berth bench scheduler` profile).
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc's `mi_option_allow_thp` (index 43 in the v3 header that libmimalloc-sys 0.1.49
/// builds by default; Cargo.lock pins it). With it on, mimalloc asks for transparent huge pages on its
/// arenas, and the kernel backs a 2 MiB range with a huge page (or khugepaged collapses one)
/// even where only a few small objects live: the node agent idled at 16 MiB of heap RSS for
/// 6 MiB of live data, and the combined server at 50 MiB more RSS at 50,000 pods, with no gain
/// in speed (`berth bench scheduler`: 603 -> 628 pods/s, the same CPU per pod). mimalloc then
/// also sets the process's PR_SET_THP_DISABLE, which children inherit: the agent clears it for
/// the containerd it starts, so containers keep the machine's THP setting.
#[cfg(feature = "mimalloc")]
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// The option must be set before the first allocation, when mimalloc reserves its first arena,
/// and the Rust runtime allocates before `main`: so from a constructor, which runs earlier.
#[cfg(feature = "mimalloc")]
#[used]
#[unsafe(link_section = ".init_array")]
static MIMALLOC_OPTIONS: extern "C" fn() = {
    extern "C" fn before_main() {
        // SAFETY: setting an option is thread-safe in mimalloc, takes plain integers and needs
        // nothing initialised first.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) };
    }
    before_main
};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "A light, Kubernetes-compatible container orchestrator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the API server and its store.
    Server(ServerArgs),
    /// Run the scheduler against a cluster (it also runs inside `berth server`).
    Scheduler(ClientArgs),
    /// Run the controllers against a cluster (they also run inside `berth server`).
    ControllerManager {
        #[command(flatten)]
        client: ClientArgs,
        /// How long a node may miss heartbeats before it is marked Unknown (e.g. 40s).
        #[arg(long = "node-monitor-grace-period", default_value = "40s", value_parser = parse_duration)]
        node_monitor_grace_period: std::time::Duration,
        /// Range nodes' pod CIDRs come from (a /24 each; IPV4,IPV6 for dual stack; empty: none).
        #[arg(long = "cluster-cidr", default_value = controllers::nodeipam::DEFAULT_CLUSTER_CIDR, value_parser = controllers::nodeipam::parse_cluster_cidr)]
        cluster_cidr: String,
        /// How many terminated (Succeeded or Failed) pods may exist before the oldest are deleted.
        #[arg(long = "terminated-pod-gc-threshold", default_value_t = controllers::podgc::TERMINATED_THRESHOLD)]
        terminated_pod_gc_threshold: usize,
    },
    /// Run a node agent (the kubelet's job) against a cluster: pods bound to this node run in
    /// containers through containerd.
    Agent(AgentArgs),
    /// Register simulated nodes that run pods without containers (for tests and scale, as KWOK).
    SimNodes(SimNodesArgs),
    /// Measure a running or self-started server.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Build the node's pause and busybox images, import them into containerd, serve them as a
    /// registry.
    Images {
        #[command(subcommand)]
        what: images::ImagesCommand,
    },
}

#[derive(clap::Args, Clone)]
pub struct ClientArgs {
    /// The cluster to talk to.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
}

#[derive(clap::Args, Clone)]
pub struct AgentArgs {
    /// The cluster, as a kubeconfig; or join with --server and --token.
    #[arg(long, env = "KUBECONFIG", required_unless_present = "server")]
    kubeconfig: Option<PathBuf>,
    /// The server to join (https://HOST:PORT), with --token.
    #[arg(long, requires = "token")]
    server: Option<String>,
    /// The server's node token (its DATA/node-token).
    #[arg(long, env = "BERTH_TOKEN")]
    token: Option<String>,
    /// Where the agent keeps containerd, images, pod volumes and logs (DATA/agent).
    #[arg(long, default_value = "/var/lib/berth")]
    data_dir: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
}

/// How this machine's node agent runs (`berth server` runs one too, unless --disable-agent).
#[derive(clap::Args, Clone)]
pub struct NodeArgs {
    /// The Node's name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// The address the node reports and serves its endpoint on (default: the default route's).
    #[arg(long)]
    node_ip: Option<String>,
    /// Use this CRI socket instead of starting the agent's own containerd.
    #[arg(long)]
    container_runtime_endpoint: Option<PathBuf>,
    /// Port of the agent's HTTPS endpoint (logs); 0 picks a free one.
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// The static busybox the sandbox image is built from.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Labels for the Node, as KEY=VALUE (repeatable).
    #[arg(long = "node-label", value_parser = parse_extended)]
    node_labels: Vec<(String, String)>,
    /// A directory of static pod manifests (default DATA/agent/manifests).
    #[arg(long)]
    pod_manifest_path: Option<PathBuf>,
    /// Hard eviction thresholds, as the kubelet's (empty turns eviction off).
    #[arg(long, default_value = agent::eviction::DEFAULT_EVICTION_HARD)]
    eviction_hard: String,
    /// A registry to pull from over plain HTTP, as HOST:PORT (repeatable; written to
    /// DATA/agent/containerd/certs.d, containerd's registry hosts directory).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT", value_parser = agent::registries::parse_host)]
    insecure_registries: Vec<String>,
    /// The low-level runtime pods run with: auto (crun when installed and usable, else runc),
    /// runc or crun. Ignored with --container-runtime-endpoint.
    #[arg(long, default_value = "auto", value_parser = ["auto", "runc", "crun"])]
    default_runtime: String,
}

impl NodeArgs {
    fn config(&self, data_dir: &std::path::Path, client_ca_pem: Option<String>) -> agent::AgentConfig {
        agent::AgentConfig {
            node_name: self.node_name.clone().unwrap_or_else(agent::default_node_name),
            node_ip: self.node_ip.clone().unwrap_or_else(agent::default_node_ip),
            dir: data_dir.join("agent"),
            runtime_endpoint: self.container_runtime_endpoint.clone(),
            port: self.kubelet_port,
            busybox: self.busybox.clone(),
            labels: self.node_labels.iter().cloned().collect(),
            client_ca_pem,
            pod_manifest_path: self.pod_manifest_path.clone(),
            eviction_hard: self.eviction_hard.clone(),
            insecure_registries: self.insecure_registries.clone(),
            default_runtime: self.default_runtime.parse().unwrap_or_default(),
        }
    }
}

/// The CA in a kubeconfig's current cluster: the agent trusts client certificates it signed.
fn kubeconfig_ca(kubeconfig: &std::path::Path) -> anyhow::Result<Option<String>> {
    use base64::Engine;
    let config = kube::config::Kubeconfig::read_from(kubeconfig).context("reading the kubeconfig")?;
    let current = config.current_context.clone().unwrap_or_default();
    let cluster_name = config.contexts.iter().find(|c| c.name == current).and_then(|c| c.context.as_ref()).map(|c| c.cluster.clone()).unwrap_or_default();
    let cluster = config.clusters.iter().find(|c| c.name == cluster_name).and_then(|c| c.cluster.as_ref());
    let Some(cluster) = cluster else { return Ok(None) };
    if let Some(data) = &cluster.certificate_authority_data {
        let pem = base64::engine::general_purpose::STANDARD.decode(data.trim()).context("decoding certificate-authority-data")?;
        return Ok(Some(String::from_utf8_lossy(&pem).into_owned()));
    }
    match &cluster.certificate_authority {
        Some(path) => Ok(Some(std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?)),
        None => Ok(None),
    }
}

#[derive(clap::Args, Clone)]
pub struct SimNodesArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// How many nodes.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Node names are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "sim-")]
    prefix: String,
    #[arg(long, default_value = "8")]
    cpu: String,
    #[arg(long, default_value = "32Gi")]
    memory: String,
    #[arg(long, default_value_t = 110)]
    pods: u32,
    /// Extended resources, as NAME=COUNT (repeatable), e.g. nvidia.com/gpu=4.
    #[arg(long = "extended", value_parser = parse_extended)]
    extended: Vec<(String, String)>,
}

fn parse_extended(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("expected NAME=COUNT, got {text:?}"))
}

#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// Where the store, certificates and admin kubeconfig live.
    #[arg(long, default_value = "/var/lib/berth")]
    pub data_dir: PathBuf,
    /// Address and port the API server listens on (HTTPS).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Network Service ClusterIPs are allocated from.
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cluster_ip_range: String,
    /// Extra DNS names or IPs for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// How often old revisions are compacted away (e.g. 5m, 30s, 500ms; 0 disables).
    #[arg(long = "etcd-compaction-interval", default_value = "5m", value_parser = parse_duration)]
    pub compaction_interval: std::time::Duration,
    /// Do not run the controllers in this process.
    #[arg(long)]
    pub disable_controllers: bool,
    /// Do not run the scheduler in this process.
    #[arg(long)]
    pub disable_scheduler: bool,
    /// How long a node may miss heartbeats before it is marked Unknown and its pods are evicted
    /// after their tolerations (e.g. 40s).
    #[arg(long = "node-monitor-grace-period", default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: std::time::Duration,
    /// How many terminated (Succeeded or Failed) pods may exist before the oldest are deleted.
    #[arg(long = "terminated-pod-gc-threshold", default_value_t = controllers::podgc::TERMINATED_THRESHOLD)]
    pub terminated_pod_gc_threshold: usize,
    /// Seconds a pod that sets no toleration of `node.kubernetes.io/not-ready:NoExecute` stays
    /// on a not-ready node before eviction.
    #[arg(long = "default-not-ready-toleration-seconds", default_value_t = 300)]
    pub default_not_ready_toleration_seconds: i64,
    /// Seconds a pod that sets no toleration of `node.kubernetes.io/unreachable:NoExecute` stays
    /// on an unreachable node before eviction.
    #[arg(long = "default-unreachable-toleration-seconds", default_value_t = 300)]
    pub default_unreachable_toleration_seconds: i64,
    /// Range nodes' pod CIDRs come from (a /24 each; IPV4,IPV6 for dual stack; empty: none).
    #[arg(long = "cluster-cidr", default_value = controllers::nodeipam::DEFAULT_CLUSTER_CIDR, value_parser = controllers::nodeipam::parse_cluster_cidr)]
    pub cluster_cidr: String,
    /// Do not run a node agent in this process (a control-plane-only server).
    #[arg(long)]
    pub disable_agent: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

impl ServerArgs {
    pub fn config(&self) -> apiserver::Config {
        apiserver::Config {
            data_dir: self.data_dir.clone(),
            listen: self.listen,
            extra_sans: self.tls_san.clone(),
            service_cidr: self.service_cluster_ip_range.clone(),
            compaction_interval: self.compaction_interval,
            default_tolerations: apiserver::strategy::DefaultTolerations {
                not_ready_seconds: self.default_not_ready_toleration_seconds,
                unreachable_seconds: self.default_unreachable_toleration_seconds,
            },
        }
    }
}

/// Parses durations as Kubernetes flags write them: `5m`, `30s`, `500ms`, `1h`, or `0`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("invalid duration {text:?}"))?;
    let seconds = match unit {
        "" if n == 0.0 => 0.0,
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration {text:?}: use a unit of ms, s, m or h")),
    };
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// Opens the store and starts the API server; returns once it is serving.
pub async fn start_server(args: &ServerArgs) -> anyhow::Result<(apiserver::Running, Arc<store::EmbeddedStore>)> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let store = Arc::new(
        store::EmbeddedStore::open(store::EmbeddedOptions::new(args.data_dir.join("state.redb")))
            .with_context(|| format!("opening the store in {}", args.data_dir.display()))?,
    );
    let running = apiserver::serve(args.config(), store.clone()).await.context("starting the API server")?;
    Ok((running, store))
}

/// A Kubernetes client for in-process components: they reach the API over HTTPS like any other
/// client, with the admin credentials.
async fn client_for(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    Ok(controllers::client::build(config_for(kubeconfig).await?)?)
}

/// A client configuration that names its component in User-Agent, as upstream's components do:
/// the API server records a write without a fieldManager under that name (the part before the
/// first `/`), so managedFields show `kube-controller-manager` rather than `unknown`.
async fn component_config(kubeconfig: &std::path::Path, component: &str) -> anyhow::Result<kube::Config> {
    let mut config = config_for(kubeconfig).await?;
    config.headers.push((http::header::USER_AGENT, component_user_agent(component)?));
    Ok(config)
}

fn component_user_agent(component: &str) -> anyhow::Result<http::HeaderValue> {
    let agent = format!("{component}/v{} ({}/{}) berth", env!("CARGO_PKG_VERSION"), std::env::consts::OS, std::env::consts::ARCH);
    http::HeaderValue::from_str(&agent).context("user agent")
}

/// How a component reaches the API: over the network with a kubeconfig, or, inside `berth
/// server`, through the API server's in-process service (the same API, without TLS and TCP).
#[derive(Clone)]
enum ComponentClient {
    Remote(kube::Config),
    InProcess(apiserver::in_process::InProcess),
}

impl ComponentClient {
    /// The in-process client of `running` for `component`, acting as the admin user (which the
    /// remote form's kubeconfig is too) and handled on the current runtime (the API server's).
    fn in_process(running: &apiserver::Running, component: &str) -> anyhow::Result<Self> {
        let identity = apiserver::tls::Identity::admin();
        let service = apiserver::in_process::InProcess::new(running.server.clone(), identity, Some(component_user_agent(component)?), tokio::runtime::Handle::current());
        Ok(ComponentClient::InProcess(service))
    }

    /// A client; call it on the runtime that will use it.
    fn build(&self) -> Result<kube::Client, kube::Error> {
        match self {
            ComponentClient::Remote(config) => controllers::client::build(config.clone()),
            ComponentClient::InProcess(service) => Ok(controllers::client::over_service(service.clone())),
        }
    }
}

async fn config_for(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Config> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).context("reading the admin kubeconfig")?;
    kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default()).await.context("loading the admin kubeconfig")
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    #[cfg(feature = "mimalloc")]
    if matches!(cli.command, Command::Agent(_)) {
        // SAFETY: setting an option is thread-safe in mimalloc and takes plain integers.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Server(args) => run_server(args).await,
            Command::Scheduler(args) => {
                let client = controllers::client::build(component_config(&args.kubeconfig, "kube-scheduler").await?)?;
                scheduler::run(client, scheduler::SchedulerOptions::default()).await.context("scheduler")
            }
            Command::ControllerManager { client, node_monitor_grace_period, cluster_cidr, terminated_pod_gc_threshold } => {
                let root_ca_pem = kubeconfig_ca(&client.kubeconfig)?;
                let config = component_config(&client.kubeconfig, "kube-controller-manager").await?;
                run_controllers_as_leader(ComponentClient::Remote(config), controllers::Options { node_monitor_grace_period, cluster_cidr, root_ca_pem, terminated_pod_gc_threshold }).await
            }
            Command::Agent(args) => {
                let kubeconfig = match (&args.server, &args.token, &args.kubeconfig) {
                    (Some(server), Some(token), _) => agent::join::bootstrap(server, token, &args.data_dir.join("agent")).await.context("joining the cluster")?.0,
                    (_, _, Some(kubeconfig)) => kubeconfig.clone(),
                    _ => anyhow::bail!("give --kubeconfig, or --server with --token"),
                };
                let client = client_for(&kubeconfig).await?;
                let ca = kubeconfig_ca(&kubeconfig)?;
                let running = agent::start(client, args.node.config(&args.data_dir, ca)).await.context("starting the node agent")?;
                tokio::select! {
                    _ = running.wait() => anyhow::bail!("the node agent stopped"),
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            }
            Command::SimNodes(args) => {
                let client = client_for(&args.client.kubeconfig).await?;
                let options = simnodes::SimOptions { count: args.count, prefix: args.prefix, cpu: args.cpu, memory: args.memory, pods: args.pods, extended: args.extended, ..Default::default() };
                tokio::select! {
                    result = simnodes::run(client, options) => result.context("simulated nodes"),
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            }
            Command::Bench { what } => bench::run(what).await,
            Command::Images { what } => images::run(what).await,
        }
    })
}

/// Runs the controllers while holding the `kube-controller-manager` Lease in kube-system, so
/// several controller managers (or servers) can run side by side with one active. Losing the
/// lease stops every controller task; the process then competes again and, if it wins, starts
/// them afresh (upstream's process exits instead and is restarted by its supervisor).
async fn run_controllers_as_leader(source: ComponentClient, options: controllers::Options) -> anyhow::Result<()> {
    let lease = scheduler::leader::LeaseConfig::new("kube-system", "kube-controller-manager", scheduler::leader::Elector::default_identity());
    let elector = scheduler::leader::Elector::new(source.build()?, lease).context("leader election")?;
    loop {
        let mut leadership = elector.acquire().await;
        tracing::info!(identity = elector.identity(), "controller manager is the leader");
        let source = source.clone();
        let mut running = controllers::Running::start(move || source.build(), options.clone()).context("starting the controllers")?;
        tokio::select! {
            _ = leadership.lost() => {
                tracing::warn!("lost the kube-controller-manager lease; the controllers stop until it is regained");
                running.stop();
            }
            _ = running.exited() => {
                leadership.release().await;
                anyhow::bail!("the controllers stopped");
            }
        }
    }
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let (running, store) = start_server(&args).await?;
    if !args.disable_controllers {
        let source = ComponentClient::in_process(&running, "kube-controller-manager")?;
        let root_ca_pem = kubeconfig_ca(&running.kubeconfig)?;
        let options = controllers::Options {
            node_monitor_grace_period: args.node_monitor_grace_period,
            cluster_cidr: args.cluster_cidr.clone(),
            root_ca_pem,
            terminated_pod_gc_threshold: args.terminated_pod_gc_threshold,
        };
        // Elected like the scheduler, so servers sharing one store (etcd) run one set of controllers.
        tokio::spawn(async move {
            if let Err(error) = run_controllers_as_leader(source, options).await {
                tracing::error!(error = format!("{error:#}"), "the controller manager stopped");
            }
        });
    }
    if !args.disable_scheduler {
        // The scheduler's watches and bindings get threads of their own: on the API server's
        // runtime they queued behind request handling under load (pod latency p50 35 s instead
        // of 0.4 s with 50,000 pods in `berth bench scheduler`).
        let source = ComponentClient::in_process(&running, "kube-scheduler")?;
        std::thread::Builder::new().name("scheduler-rt".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("scheduler-io").enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => return tracing::error!(%error, "starting the scheduler's runtime"),
            };
            let result = runtime.block_on(async move { scheduler::run(source.build()?, scheduler::SchedulerOptions::default()).await.map_err(anyhow::Error::from) });
            if let Err(error) = result {
                tracing::error!(error = format!("{error:#}"), "the scheduler stopped");
            }
        })?;
    }
    let _agent = if args.disable_agent {
        None
    } else {
        let client = client_for(&running.kubeconfig).await?;
        let ca = kubeconfig_ca(&running.kubeconfig)?;
        Some(agent::start(client, args.node.config(&args.data_dir, ca)).await.context("starting the node agent (--disable-agent runs the control plane alone)")?)
    };
    tracing::info!(address = %running.addr, kubeconfig = %running.kubeconfig.display(), "berth API server is serving");
    eprintln!("berth: serving on https://{}; export KUBECONFIG={}", running.addr, running.kubeconfig.display());
    eprintln!("berth: other machines join with: berth agent --server https://{} --token $(cat {})", running.addr, args.data_dir.join("node-token").display());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
    running.stop();
    store.close();
    Ok(())
}
