//! Pod workers: one task per pod bound to this node, each driving the runtime towards the pod's
//! spec (sandbox, init containers in order, app containers, restarts with back-off, graceful
//! termination) and reporting the status back, as the kubelet's pod workers and kuberuntime do.
//!
//! A worker wakes when its pod changes, when the relister sees its containers change state,
//! when a back-off or probe falls due, and every few seconds anyway (ConfigMap and Secret
//! volumes are refreshed then).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Container, ObjectReference, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::cri::{Cri, CriError, api};
use crate::env::{self, ConfigError, Sources};
use crate::probes::{self, ProbeState};
use crate::runtime_state::{self, ContainerInfo, LABEL_CONTAINER_NAME, LABEL_MANAGED, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID, PodRuntime};
use crate::status::{self, Observations, Waiting};
use crate::volumes;

const RESYNC: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long without failing starts its back-off afresh.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
const DEFAULT_GRACE: i64 = 30;

/// What every pod worker shares.
pub struct Context {
    pub client: Client,
    pub cri: Cri,
    pub node_name: String,
    pub node_ip: String,
    /// Node memory capacity in bytes (OOM scores of Burstable pods).
    pub node_memory: i64,
    pub pods_dir: PathBuf,
    pub logs_dir: PathBuf,
    pub recorder: controllers::events::Recorder,
    /// Pods known to the agent, by UID (the log server resolves names through it).
    pub pods: Mutex<HashMap<String, Arc<Pod>>>,
    /// Service account tokens of projected volumes.
    pub tokens: crate::tokens::TokenCache,
    /// ConfigMaps and Secrets that volume refreshes share.
    pub sources: Arc<crate::env::SharedSources>,
    /// Resource usage for `kubectl top` (the endpoint's `/stats/resource`).
    pub stats: crate::stats::ResourceStats,
    /// Bounds how many sandboxes are created at once (see `sandbox_concurrency`).
    pub starts: tokio::sync::Semaphore,
}

impl Context {
    pub fn pod_log_dir(&self, pod: &Pod) -> PathBuf {
        self.logs_dir.join(format!("{}_{}_{}", pod.namespace().unwrap_or_default(), pod.name_any(), pod.uid().unwrap_or_default()))
    }

    pub(crate) fn event(&self, pod: &Pod, container: Option<&str>, type_: &str, reason: &str, message: String) {
        let field_path = container.map(|name| {
            let init = pod.spec.as_ref().and_then(|s| s.init_containers.as_ref()).is_some_and(|list| list.iter().any(|c| c.name == name));
            if init { format!("spec.initContainers{{{name}}}") } else { format!("spec.containers{{{name}}}") }
        });
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: pod.namespace(),
            name: Some(pod.name_any()),
            uid: pod.uid(),
            resource_version: pod.resource_version(),
            field_path,
        };
        self.recorder.record_for(reference, type_, reason, message);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Cri(#[from] CriError),
    #[error("API: {0}")]
    Api(#[from] kube::Error),
}

impl From<tonic::Status> for SyncError {
    fn from(status: tonic::Status) -> Self {
        SyncError::Cri(CriError::Call(status))
    }
}

#[derive(Clone, Copy, Debug)]
struct Backoff {
    delay: Duration,
    until: Instant,
    last_start: Instant,
}

/// A worker's memory between syncs; everything else is re-read from the runtime each time.
#[derive(Default)]
struct PodState {
    waiting: HashMap<String, Waiting>,
    crash: HashMap<String, Backoff>,
    image: HashMap<String, Backoff>,
    volumes_at: Option<Instant>,
    volume_paths: BTreeMap<String, PathBuf>,
    volume_error: Option<String>,
    probes: HashMap<String, ProbeState>,
    failed: Option<(String, String)>,
    reported: Option<Value>,
    /// The pod is gone from the node and the API: the worker can end.
    finished: bool,
}

/// How long until `backoff` allows another try; a fresh or expired back-off allows it now.
fn next_backoff(previous: Option<&Backoff>) -> Backoff {
    let now = Instant::now();
    let delay = match previous {
        Some(b) if b.last_start.elapsed() < BACKOFF_RESET => (b.delay * 2).min(BACKOFF_MAX),
        _ => BACKOFF_START,
    };
    Backoff { delay, until: now + delay, last_start: now }
}

fn default_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        "IfNotPresent"
    } else if !last.contains(':') || last.ends_with(":latest") {
        "Always"
    } else {
        "IfNotPresent"
    }
}

/// The registry host of an image reference, as Docker normalizes it.
fn registry_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first,
        _ => "docker.io",
    }
}

impl Context {
    /// Credentials for `image` from the pod's imagePullSecrets (dockerconfigjson or dockercfg).
    async fn pull_auth(&self, pod: &Pod, image: &str) -> Option<api::AuthConfig> {
        let host = registry_host(image);
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        for reference in pod.spec.as_ref()?.image_pull_secrets.iter().flatten() {
            let Ok(Some(secret)) = secrets.get_opt(&reference.name).await else { continue };
            let data = secret.data.unwrap_or_default();
            let config: Value = match (data.get(".dockerconfigjson"), data.get(".dockercfg")) {
                (Some(json), _) => serde_json::from_slice::<Value>(&json.0).ok().and_then(|v| v.get("auths").cloned()).unwrap_or(Value::Null),
                (None, Some(cfg)) => serde_json::from_slice(&cfg.0).unwrap_or(Value::Null),
                _ => continue,
            };
            for (server, entry) in config.as_object().into_iter().flatten() {
                let server_host = server.trim_start_matches("https://").trim_start_matches("http://").split('/').next().unwrap_or("");
                let matches = server_host == host || (host == "docker.io" && (server_host == "index.docker.io" || server_host == "registry-1.docker.io"));
                if !matches {
                    continue;
                }
                let text = |key: &str| entry.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
                // No server_address, as the kubelet sends none for pull secrets: containerd would
                // parse it as a URL and offer the credentials only to that URL's host, so a
                // scheme-less `host:port` fails to parse and `https://index.docker.io/v1/` never
                // matches the host it pulls from (registry-1.docker.io).
                return Some(api::AuthConfig { username: text("username"), password: text("password"), auth: text("auth"), ..Default::default() });
            }
        }
        None
    }

    /// Makes sure the container's image is present, honouring the pull policy and back-off.
    async fn ensure_image(&self, pod: &Pod, container: &Container, state: &mut PodState) -> Result<(), Waiting> {
        let image = container.image.clone().unwrap_or_default();
        if image.is_empty() {
            return Err(Waiting { reason: "InvalidImageName".into(), message: "the container has no image".into() });
        }
        let policy = container.image_pull_policy.clone().unwrap_or_else(|| default_pull_policy(&image).to_string());
        let spec = api::ImageSpec { image: image.clone(), ..Default::default() };
        let present = match self.cri.images.clone().image_status(api::ImageStatusRequest { image: Some(spec.clone()), verbose: false }).await {
            Ok(response) => response.into_inner().image.is_some(),
            Err(status) => return Err(Waiting { reason: "ErrImagePull".into(), message: format!("image status: {}", status.message()) }),
        };
        if policy == "Never" {
            if present {
                return Ok(());
            }
            let message = format!("Container image \"{image}\" is not present with pull policy of Never");
            self.event(pod, Some(&container.name), "Warning", "ErrImageNeverPull", message.clone());
            return Err(Waiting { reason: "ErrImageNeverPull".into(), message });
        }
        if present && policy != "Always" {
            return Ok(());
        }
        if let Some(backoff) = state.image.get(&image)
            && Instant::now() < backoff.until
        {
            return Err(Waiting { reason: "ImagePullBackOff".into(), message: format!("Back-off pulling image \"{image}\"") });
        }
        self.event(pod, Some(&container.name), "Normal", "Pulling", format!("Pulling image \"{image}\""));
        let started = Instant::now();
        let auth = self.pull_auth(pod, &image).await;
        let request = api::PullImageRequest { image: Some(spec), auth, sandbox_config: None };
        match self.cri.images.clone().pull_image(request).await {
            Ok(_) => {
                state.image.remove(&image);
                self.event(pod, Some(&container.name), "Normal", "Pulled", format!("Successfully pulled image \"{image}\" in {:.3}s", started.elapsed().as_secs_f64()));
                Ok(())
            }
            Err(status) => {
                let backoff = next_backoff(state.image.get(&image));
                state.image.insert(image.clone(), backoff);
                let message = format!("Failed to pull image \"{image}\": {}", status.message());
                self.event(pod, Some(&container.name), "Warning", "Failed", message.clone());
                self.event(pod, Some(&container.name), "Warning", "Failed", "Error: ErrImagePull".into());
                Err(Waiting { reason: "ErrImagePull".into(), message })
            }
        }
    }
}

/// Whether any container of the pod, init and ephemeral ones included, asks for `privileged`.
fn has_privileged_container(spec: &k8s_openapi::api::core::v1::PodSpec) -> bool {
    let privileged = |security: Option<&k8s_openapi::api::core::v1::SecurityContext>| security.and_then(|s| s.privileged).unwrap_or(false);
    spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| privileged(c.security_context.as_ref()))
        || spec.ephemeral_containers.iter().flatten().any(|c| privileged(c.security_context.as_ref()))
}

fn sandbox_config(ctx: &Context, pod: &Pod, attempt: u32) -> api::PodSandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let uid = pod.uid().unwrap_or_default();
    let mut labels: HashMap<String, String> = pod.labels().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.insert(LABEL_POD_UID.into(), uid.clone());
    labels.insert(LABEL_POD_NAME.into(), pod.name_any());
    labels.insert(LABEL_POD_NAMESPACE.into(), pod.namespace().unwrap_or_default());
    labels.insert(LABEL_MANAGED.into(), "true".into());
    let annotations: HashMap<String, String> = pod.annotations().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let host_network = spec.host_network.unwrap_or(false);
    let mut port_mappings = Vec::new();
    for container in &spec.containers {
        for port in container.ports.iter().flatten() {
            if let Some(host_port) = port.host_port.filter(|p| *p > 0) {
                let protocol = match port.protocol.as_deref() {
                    Some("UDP") => api::Protocol::Udp,
                    Some("SCTP") => api::Protocol::Sctp,
                    _ => api::Protocol::Tcp,
                };
                port_mappings.push(api::PortMapping { protocol: protocol as i32, container_port: port.container_port, host_port, host_ip: port.host_ip.clone().unwrap_or_default() });
            }
        }
    }
    let pod_security = spec.security_context.clone().unwrap_or_default();
    let namespace_mode = |host: bool| if host { api::NamespaceMode::Node as i32 } else { api::NamespaceMode::Pod as i32 };
    let hostname = spec.hostname.clone().unwrap_or_else(|| pod.name_any().chars().take(63).collect::<String>().trim_end_matches('.').to_string());
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata { name: pod.name_any(), uid, namespace: pod.namespace().unwrap_or_default(), attempt }),
        hostname: if host_network { String::new() } else { hostname },
        log_directory: ctx.pod_log_dir(pod).display().to_string(),
        dns_config: None,
        port_mappings,
        labels,
        annotations,
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: format!("/berth/pod{}", pod.uid().unwrap_or_default()),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: namespace_mode(host_network),
                    pid: if spec.host_pid.unwrap_or(false) { api::NamespaceMode::Node as i32 } else if spec.share_process_namespace.unwrap_or(false) { api::NamespaceMode::Pod as i32 } else { api::NamespaceMode::Container as i32 },
                    ipc: namespace_mode(spec.host_ipc.unwrap_or(false)),
                    ..Default::default()
                }),
                run_as_user: pod_security.run_as_user.map(|value| api::Int64Value { value }),
                run_as_group: pod_security.run_as_group.map(|value| api::Int64Value { value }),
                supplemental_groups: pod_security.supplemental_groups.clone().unwrap_or_default(),
                // containerd refuses a privileged container in an unprivileged sandbox; upstream
                // makes the sandbox privileged when any container of the pod is.
                privileged: has_privileged_container(&spec),
                ..Default::default()
            }),
            sysctls: pod_security.sysctls.iter().flatten().map(|s| (s.name.clone(), s.value.clone())).collect(),
            ..Default::default()
        }),
        windows: None,
    }
}

/// Why a container could not be created or started, with the waiting reason to show.
struct StartFailure(Waiting);

impl From<ConfigError> for StartFailure {
    fn from(error: ConfigError) -> Self {
        StartFailure(Waiting { reason: "CreateContainerConfigError".into(), message: error.to_string() })
    }
}

/// The user a container's image runs as, for the runAsNonRoot check.
async fn image_user(cri: &Cri, image: &str) -> Option<(Option<i64>, String)> {
    let response = cri.images.clone().image_status(api::ImageStatusRequest { image: Some(api::ImageSpec { image: image.to_string(), ..Default::default() }), verbose: false }).await.ok()?.into_inner();
    let image = response.image?;
    Some((image.uid.map(|u| u.value), image.username))
}

fn termination_log_path(ctx: &Context, pod: &Pod, container: &str, attempt: u32) -> PathBuf {
    ctx.pods_dir.join(pod.uid().unwrap_or_default()).join("containers").join(container).join(attempt.to_string())
}

async fn start_container(ctx: &Context, pod: &Pod, container: &Container, sandbox: &api::PodSandboxConfig, sandbox_id: &str, attempt: u32, pod_ips: &[String], state: &mut PodState) -> Result<(), StartFailure> {
    ctx.ensure_image(pod, container, state).await.map_err(StartFailure)?;
    let spec = pod.spec.clone().unwrap_or_default();
    let namespace = pod.namespace().unwrap_or_default();
    let mut sources = Sources::new(ctx.client.clone(), &namespace);
    let env = env::container_env(pod, container, &ctx.node_ip, pod_ips, &mut sources).await?;
    let expand_all = |list: &Option<Vec<String>>| list.iter().flatten().map(|s| env::expand(s, &env)).collect::<Vec<_>>();

    // Security context: the container's settings override the pod's.
    let pod_security = spec.security_context.clone().unwrap_or_default();
    let security = container.security_context.clone().unwrap_or_default();
    let run_as_user = security.run_as_user.or(pod_security.run_as_user);
    let run_as_group = security.run_as_group.or(pod_security.run_as_group);
    let run_as_non_root = security.run_as_non_root.or(pod_security.run_as_non_root).unwrap_or(false);
    let identity = format!("pod: \"{}_{}({})\", container: {}", pod.name_any(), namespace, pod.uid().unwrap_or_default(), container.name);
    if run_as_non_root {
        match run_as_user {
            Some(0) => return Err(StartFailure(Waiting { reason: "CreateContainerConfigError".into(), message: format!("container's runAsUser breaks non-root policy ({identity})") })),
            Some(_) => {}
            None => match image_user(&ctx.cri, container.image.as_deref().unwrap_or("")).await {
                Some((Some(0), _)) | Some((None, _)) => {
                    let (uid, name) = image_user(&ctx.cri, container.image.as_deref().unwrap_or("")).await.unwrap_or((None, String::new()));
                    let message = if uid.is_none() && !name.is_empty() {
                        format!("container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root ({identity})")
                    } else {
                        format!("container has runAsNonRoot and image will run as root ({identity})")
                    };
                    return Err(StartFailure(Waiting { reason: "CreateContainerConfigError".into(), message }));
                }
                _ => {}
            },
        }
    }

    // Volumes and the files the agent provides.
    let uid = pod.uid().unwrap_or_default();
    let mut extra: Vec<(PathBuf, String)> = Vec::new();
    let hosts = ctx.pods_dir.join(&uid).join("etc-hosts");
    if !spec.host_network.unwrap_or(false) && hosts.exists() {
        extra.push((hosts, "/etc/hosts".into()));
    }
    let message_path = container.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
    let message_file = termination_log_path(ctx, pod, &container.name, attempt);
    if let Some(parent) = message_file.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if std::fs::write(&message_file, b"").is_ok() {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&message_file, std::fs::Permissions::from_mode(0o666));
        extra.push((message_file, message_path));
    }
    let mounts = volumes::container_mounts(container, &state.volume_paths, &env, &extra).map_err(|e| StartFailure(Waiting { reason: "CreateContainerConfigError".into(), message: e.to_string() }))?;

    let capabilities = security.capabilities.clone().map(|caps| api::Capability {
        add_capabilities: caps.add.unwrap_or_default().into_iter().map(|c| c.trim_start_matches("CAP_").to_string()).map(|c| format!("CAP_{c}")).collect(),
        drop_capabilities: caps.drop.unwrap_or_default().into_iter().map(|c| if c == "ALL" { c } else { format!("CAP_{}", c.trim_start_matches("CAP_")) }).collect(),
        add_ambient_capabilities: Vec::new(),
    });
    let privileged = security.privileged.unwrap_or(false);
    let linux = api::LinuxContainerConfig {
        resources: Some(crate::resources::linux_resources(pod, container, ctx.node_memory)),
        security_context: Some(api::LinuxContainerSecurityContext {
            capabilities,
            privileged,
            namespace_options: sandbox.linux.as_ref().and_then(|l| l.security_context.as_ref()).and_then(|s| s.namespace_options.clone()),
            run_as_user: run_as_user.map(|value| api::Int64Value { value }),
            run_as_group: run_as_group.map(|value| api::Int64Value { value }),
            readonly_rootfs: security.read_only_root_filesystem.unwrap_or(false),
            supplemental_groups: pod_security.supplemental_groups.clone().unwrap_or_default(),
            no_new_privs: security.allow_privilege_escalation == Some(false),
            ..Default::default()
        }),
    };
    let mut labels = HashMap::from([
        (LABEL_POD_UID.to_string(), uid.clone()),
        (LABEL_POD_NAME.to_string(), pod.name_any()),
        (LABEL_POD_NAMESPACE.to_string(), namespace.clone()),
        (LABEL_CONTAINER_NAME.to_string(), container.name.clone()),
        (LABEL_MANAGED.to_string(), "true".to_string()),
    ]);
    labels.retain(|_, v| !v.is_empty());
    let annotations = HashMap::from([
        ("io.kubernetes.container.restartCount".to_string(), attempt.to_string()),
        (runtime_state::ANNOTATION_TERMINATION_GRACE.to_string(), spec.termination_grace_period_seconds.unwrap_or(DEFAULT_GRACE).to_string()),
    ]);
    let config = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata { name: container.name.clone(), attempt }),
        image: Some(api::ImageSpec { image: container.image.clone().unwrap_or_default(), ..Default::default() }),
        command: expand_all(&container.command),
        args: expand_all(&container.args),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: env.iter().map(|(key, value)| api::KeyValue { key: key.clone(), value: value.clone() }).collect(),
        mounts,
        labels,
        annotations,
        log_path: format!("{}/{}.log", container.name, attempt),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(linux),
        ..Default::default()
    };
    let mut runtime = ctx.cri.runtime.clone();
    let created = runtime
        .create_container(api::CreateContainerRequest { pod_sandbox_id: sandbox_id.to_string(), config: Some(config), sandbox_config: Some(sandbox.clone()) })
        .await
        .map_err(|status| {
            let message = status.message().to_string();
            ctx.event(pod, Some(&container.name), "Warning", "Failed", format!("Error: {message}"));
            StartFailure(Waiting { reason: "CreateContainerError".into(), message })
        })?
        .into_inner()
        .container_id;
    ctx.event(pod, Some(&container.name), "Normal", "Created", format!("Created container {}", container.name));
    if let Err(status) = runtime.start_container(api::StartContainerRequest { container_id: created.clone() }).await {
        let message = status.message().to_string();
        ctx.event(pod, Some(&container.name), "Warning", "Failed", format!("Error: {message}"));
        return Err(StartFailure(Waiting { reason: "RunContainerError".into(), message }));
    }
    ctx.event(pod, Some(&container.name), "Normal", "Started", format!("Started container {}", container.name));
    state.probes.remove(&container.name);
    // postStart runs right after the start and holds the container back until it is done (as
    // upstream); a failure kills the container, which then restarts under its policy.
    if let Some(handler) = container.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
        let grace = spec.termination_grace_period_seconds.unwrap_or(DEFAULT_GRACE).max(0);
        if let Err(message) = probes::run_handler(ctx, container, &created, handler, Duration::from_secs(30), pod_ips).await {
            ctx.event(pod, Some(&container.name), "Warning", "FailedPostStartHook", format!("PostStartHook failed: {message}"));
            let _ = runtime.stop_container(api::StopContainerRequest { container_id: created.clone(), timeout: grace }).await;
            return Err(StartFailure(Waiting { reason: "PostStartHookError".into(), message }));
        }
    }
    Ok(())
}

/// Whether an exited container should run again under the pod's restart policy.
fn should_restart(policy: &str, exited: &ContainerInfo) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exited.status.exit_code != 0,
        _ => true,
    }
}

enum Step {
    /// Start (or restart) this container now.
    Start,
    /// Nothing to do for it.
    Keep,
    /// It is waiting for its back-off.
    BackOff(Waiting),
}

fn restart_step(pod: &Pod, container: &str, exited: &ContainerInfo, state: &mut PodState) -> Step {
    if let Some(backoff) = state.crash.get(container)
        && Instant::now() < backoff.until
    {
        let message = format!("back-off {}s restarting failed container={} pod={}_{}({})", backoff.delay.as_secs(), container, pod.name_any(), pod.namespace().unwrap_or_default(), pod.uid().unwrap_or_default());
        return Step::BackOff(Waiting { reason: "CrashLoopBackOff".into(), message });
    }
    let _ = exited;
    let backoff = next_backoff(state.crash.get(container));
    state.crash.insert(container.to_string(), backoff);
    Step::Start
}

/// One pass of the worker over its pod.
async fn sync_pod(ctx: &Context, pod: &Pod, state: &mut PodState) -> Result<Duration, SyncError> {
    let uid = pod.uid().unwrap_or_default();
    let runtime = runtime_state::inspect_pod(&ctx.cri, &uid).await?;
    if pod.metadata.deletion_timestamp.is_some() {
        terminate(ctx, pod, &runtime, state).await?;
        return Ok(RESYNC);
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        // Finished pods keep their containers (for logs) but not their sandbox or IP.
        kill_containers(ctx, pod, &runtime, Some(0)).await;
        for sandbox in runtime.sandboxes.iter().filter(|s| s.ready) {
            let _ = ctx.cri.runtime.clone().stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: sandbox.id.clone() }).await;
        }
        return Ok(RESYNC * 6);
    }
    if state.failed.is_none()
        && let Some(deadline) = spec.active_deadline_seconds
        && let Some(start) = pod.status.as_ref().and_then(|s| s.start_time.as_ref())
        && jiff::Timestamp::now().duration_since(start.0).as_secs() >= deadline
    {
        let message = "Pod was active on the node longer than the specified deadline".to_string();
        ctx.event(pod, None, "Normal", "DeadlineExceeded", message.clone());
        state.failed = Some(("DeadlineExceeded".into(), message));
    }
    if state.failed.is_some() {
        kill_containers(ctx, pod, &runtime, Some(spec.termination_grace_period_seconds.unwrap_or(DEFAULT_GRACE))).await;
        let runtime = runtime_state::inspect_pod(&ctx.cri, &uid).await?;
        report(ctx, pod, &runtime, state, false).await?;
        return Ok(RESYNC);
    }
    let policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());

    // The sandbox: reuse the ready one, or make a new one (and restart every container in it).
    let needs_sandbox = runtime.containers.is_empty() || runtime_wants_to_run(&spec, &runtime, &policy);
    let current = runtime.current_sandbox().filter(|s| s.ready).cloned();
    let (sandbox_id, attempt, mut pod_ips) = match current {
        Some(sandbox) => {
            let mut ips: Vec<String> = sandbox.ip.iter().cloned().collect();
            ips.extend(sandbox.extra_ips.iter().cloned());
            (sandbox.id, sandbox.attempt, ips)
        }
        None if !needs_sandbox => {
            report(ctx, pod, &runtime, state, false).await?;
            return Ok(RESYNC);
        }
        None => {
            let attempt = runtime.sandboxes.first().map(|s| s.attempt + 1).unwrap_or(0);
            if !runtime.sandboxes.is_empty() {
                ctx.event(pod, None, "Normal", "SandboxChanged", "Pod sandbox changed, it will be killed and re-created.".into());
                kill_containers(ctx, pod, &runtime, Some(0)).await;
            }
            let config = sandbox_config(ctx, pod, attempt);
            let _ = std::fs::create_dir_all(ctx.pod_log_dir(pod));
            let permit = ctx.starts.acquire().await;
            let created = ctx.cri.runtime.clone().run_pod_sandbox(api::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() }).await;
            drop(permit);
            match created {
                Ok(response) => {
                    let id = response.into_inner().pod_sandbox_id;
                    let refreshed = runtime_state::inspect_pod(&ctx.cri, &uid).await?;
                    let ips = refreshed.sandboxes.iter().find(|s| s.id == id).map(|s| s.ip.iter().cloned().chain(s.extra_ips.iter().cloned()).collect()).unwrap_or_default();
                    (id, attempt, ips)
                }
                Err(status) => {
                    let message = format!("Failed to create pod sandbox: {}", status.message());
                    ctx.event(pod, None, "Warning", "FailedCreatePodSandBox", message);
                    report(ctx, pod, &runtime, state, false).await?;
                    return Ok(Duration::from_secs(5));
                }
            }
        }
    };
    if spec.host_network.unwrap_or(false) {
        pod_ips = vec![ctx.node_ip.clone()];
    }
    write_hosts_file(ctx, pod, &pod_ips);

    // Volumes, refreshed every resync so ConfigMap and Secret changes reach the files.
    if state.volumes_at.is_none_or(|at| at.elapsed() >= RESYNC) {
        let mut sources = Sources::with_shared(ctx.client.clone(), &pod.namespace().unwrap_or_default(), ctx.sources.clone());
        let claim_paths = crate::storage::claim_paths(ctx, pod).await;
        let claims = |name: &str| claim_paths.get(name).cloned().unwrap_or_else(|| Err(format!("persistentvolumeclaim \"{name}\" was not looked up")));
        let pod_tokens = crate::tokens::pod_tokens(ctx, pod).await;
        let tokens = |source: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection| pod_tokens.get(&crate::tokens::projection_key(source)).cloned().unwrap_or_else(|| Err("no token was requested".into()));
        match volumes::prepare(&ctx.pods_dir, pod, &ctx.node_ip, &pod_ips, &mut sources, &claims, &tokens).await {
            Ok(paths) => {
                state.volume_paths = paths;
                state.volume_error = None;
                state.volumes_at = Some(Instant::now());
            }
            Err(error) => {
                let message = format!("MountVolume.SetUp failed: {error}");
                if state.volume_error.as_deref() != Some(message.as_str()) {
                    ctx.event(pod, None, "Warning", "FailedMount", message.clone());
                }
                state.volume_error = Some(message);
                state.volumes_at = None;
            }
        }
    }
    if state.volume_error.is_some() {
        report(ctx, pod, &runtime, state, true).await?;
        return Ok(Duration::from_secs(2));
    }

    let sandbox = sandbox_config(ctx, pod, attempt);
    let in_sandbox = |name: &str| runtime.containers.iter().find(|c| c.name == name && c.sandbox_id == sandbox_id);
    let next_attempt = |name: &str| runtime.latest(name).map(|c| c.attempt + 1).unwrap_or(0);
    let mut wake = RESYNC;
    let mut started_any = false;

    // Init containers, in order: each must finish (sidecars: be started) before the next.
    let mut init_done = true;
    for container in spec.init_containers.iter().flatten() {
        let sidecar = status::is_sidecar(container);
        let step = match in_sandbox(&container.name) {
            None => Step::Start,
            Some(c) if c.is_running() => {
                if sidecar {
                    Step::Keep
                } else {
                    init_done = false;
                    break;
                }
            }
            Some(c) if c.is_exited() && !sidecar && c.status.exit_code == 0 => Step::Keep,
            Some(c) if c.is_exited() => {
                if !sidecar && policy == "Never" {
                    init_done = false;
                    break;
                }
                restart_step(pod, &container.name, c, state)
            }
            Some(_) => {
                init_done = false;
                break;
            }
        };
        match step {
            Step::Keep => {
                state.waiting.remove(&container.name);
            }
            Step::Start => {
                init_done = false;
                match start_container(ctx, pod, container, &sandbox, &sandbox_id, next_attempt(&container.name), &pod_ips, state).await {
                    Ok(()) => {
                        state.waiting.remove(&container.name);
                        started_any = true;
                    }
                    Err(StartFailure(waiting)) => {
                        state.waiting.insert(container.name.clone(), waiting);
                        wake = wake.min(Duration::from_secs(2));
                    }
                }
                break;
            }
            Step::BackOff(waiting) => {
                init_done = false;
                wake = wake.min(state.crash.get(&container.name).map(|b| b.until.saturating_duration_since(Instant::now())).unwrap_or(wake));
                state.waiting.insert(container.name.clone(), waiting);
                break;
            }
        }
    }

    if init_done {
        for container in &spec.containers {
            let step = match in_sandbox(&container.name) {
                None => Step::Start,
                Some(c) if c.is_exited() && should_restart(&policy, c) => restart_step(pod, &container.name, c, state),
                Some(_) => Step::Keep,
            };
            match step {
                Step::Keep => {
                    state.waiting.remove(&container.name);
                }
                Step::Start => match start_container(ctx, pod, container, &sandbox, &sandbox_id, next_attempt(&container.name), &pod_ips, state).await {
                    Ok(()) => {
                        state.waiting.remove(&container.name);
                        started_any = true;
                    }
                    Err(StartFailure(waiting)) => {
                        state.waiting.insert(container.name.clone(), waiting);
                        wake = wake.min(Duration::from_secs(2));
                    }
                },
                Step::BackOff(waiting) => {
                    wake = wake.min(state.crash.get(&container.name).map(|b| b.until.saturating_duration_since(Instant::now())).unwrap_or(wake));
                    state.waiting.insert(container.name.clone(), waiting);
                }
            }
        }
    } else {
        for container in &spec.containers {
            state.waiting.entry(container.name.clone()).or_insert(Waiting { reason: "PodInitializing".into(), message: String::new() });
        }
    }

    let runtime = if started_any { runtime_state::inspect_pod(&ctx.cri, &uid).await? } else { runtime };
    // Probes of running containers; a failed liveness probe restarts the container.
    let probe_wake = probes::run_due(ctx, pod, &runtime, &mut state.probes, &pod_ips).await;
    wake = wake.min(probe_wake);
    remove_old_instances(ctx, &runtime).await;
    report_with_ips(ctx, pod, &runtime, state, true, &pod_ips).await?;
    Ok(wake.max(Duration::from_millis(100)))
}

/// How many pod sandboxes are created at once. Creating one is CPU work (a shim, the network
/// plugins, the pause container): when 100 pods arrive together and all start at once, every
/// one of them finishes near the end; a few at a time, first come first served, cuts the
/// median pod's start-up by about a third with the last one no later (100-pod bench, two rounds
/// each: p50 8.4-8.9 s -> 5.5-6.0 s, p99 9.0-10.7 s -> 9.6-10.0 s). Image pulls are not held
/// back by it.
pub fn sandbox_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).saturating_mul(4).clamp(4, 64)
}

/// Whether any container still has work to do (so a dead sandbox must be replaced).
fn runtime_wants_to_run(spec: &k8s_openapi::api::core::v1::PodSpec, runtime: &PodRuntime, policy: &str) -> bool {
    spec.containers.iter().any(|c| match runtime.latest(&c.name) {
        None => true,
        Some(info) if info.is_exited() => should_restart(policy, info),
        Some(_) => true,
    })
}

/// Keeps the newest and the previous instance of each container (for `--previous` logs) and
/// removes older ones, as the kubelet's container GC does.
async fn remove_old_instances(ctx: &Context, runtime: &PodRuntime) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for container in &runtime.containers {
        let count = seen.entry(container.name.as_str()).or_default();
        *count += 1;
        if *count > 2 && container.is_exited() {
            let _ = ctx.cri.runtime.clone().remove_container(api::RemoveContainerRequest { container_id: container.id.clone() }).await;
        }
    }
}

fn write_hosts_file(ctx: &Context, pod: &Pod, pod_ips: &[String]) {
    let path = ctx.pods_dir.join(pod.uid().unwrap_or_default()).join("etc-hosts");
    let spec = pod.spec.clone().unwrap_or_default();
    let hostname = spec.hostname.clone().unwrap_or_else(|| pod.name_any());
    let mut text = String::from("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
    if let Some(ip) = pod_ips.first() {
        let fqdn = spec.subdomain.as_ref().map(|sub| format!("{hostname}.{sub}.{}.svc.cluster.local\t", pod.namespace().unwrap_or_default())).unwrap_or_default();
        text.push_str(&format!("{ip}\t{fqdn}{hostname}\n"));
    }
    for alias in spec.host_aliases.iter().flatten() {
        text.push_str(&format!("\n# Entries added by HostAliases.\n{}\t{}\n", alias.ip, alias.hostnames.clone().unwrap_or_default().join("\t")));
    }
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(&path, text);
    }
}

/// Stops every running container of the pod, each with the grace period (`None`: the pod's).
async fn kill_containers(ctx: &Context, pod: &Pod, runtime: &PodRuntime, grace: Option<i64>) {
    let grace = grace.unwrap_or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(DEFAULT_GRACE)).max(0);
    let pod_ips: Vec<String> = pod.status.as_ref().and_then(|s| s.pod_ips.as_ref()).map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect()).unwrap_or_default();
    let stops = runtime.containers.iter().filter(|c| !c.is_exited()).map(|container| {
        let pod_ips = &pod_ips;
        async move {
            ctx.event(pod, Some(&container.name), "Normal", "Killing", format!("Stopping container {}", container.name));
            let deadline = Instant::now() + Duration::from_secs(grace as u64);
            // preStop runs within the grace period; the stop gets what is left (at least 2 s
            // when there was a hook, as upstream, so the process can still handle SIGTERM).
            let spec = env::all_containers(pod).find(|c| c.name == container.name);
            let mut remaining = grace;
            if let Some(handler) = spec.and_then(|c| c.lifecycle.as_ref()).and_then(|l| l.pre_stop.as_ref())
                && let Some(spec) = spec
                && grace > 0
            {
                match tokio::time::timeout(Duration::from_secs(grace as u64), probes::run_handler(ctx, spec, &container.id, handler, Duration::from_secs(grace as u64), pod_ips)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(message)) => ctx.event(pod, Some(&container.name), "Warning", "FailedPreStopHook", format!("PreStopHook failed: {message}")),
                    Err(_) => ctx.event(pod, Some(&container.name), "Warning", "FailedPreStopHook", format!("PreStopHook did not finish within the grace period of {grace}s")),
                }
                remaining = (deadline.saturating_duration_since(Instant::now()).as_secs() as i64).max(2);
            }
            if let Err(status) = ctx.cri.runtime.clone().stop_container(api::StopContainerRequest { container_id: container.id.clone(), timeout: remaining }).await {
                tracing::warn!(%status, pod = %pod.name_any(), "stopping a container");
            }
        }
    });
    futures_util::future::join_all(stops).await;
}

/// Graceful termination of a pod being deleted: stop its containers within the grace period,
/// tear down the sandbox, report the final status and finish the deletion in the API.
async fn terminate(ctx: &Context, pod: &Pod, runtime: &PodRuntime, state: &mut PodState) -> Result<(), SyncError> {
    let grace = pod.metadata.deletion_grace_period_seconds.or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds)).unwrap_or(DEFAULT_GRACE);
    kill_containers(ctx, pod, runtime, Some(grace)).await;
    let uid = pod.uid().unwrap_or_default();
    let runtime = runtime_state::inspect_pod(&ctx.cri, &uid).await?;
    // The final status: containers terminated (the API keeps it until the object is gone).
    let _ = report(ctx, pod, &runtime, state, false).await;
    remove_pod_from_runtime(ctx, &runtime).await?;
    volumes::cleanup(&ctx.pods_dir, &uid).await;
    let _ = std::fs::remove_dir_all(ctx.pod_log_dir(pod));
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let params = DeleteParams { grace_period_seconds: Some(0), preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }), ..Default::default() };
    match api.delete(&pod.name_any(), &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(error) => return Err(error.into()),
    }
    state.finished = true;
    Ok(())
}

/// Removes a pod's sandboxes (their network namespaces and pod IPs go with them) and
/// containers. A failure is returned so the caller retries: a pod given up on here would keep
/// its address on the bridge until the agent restarts.
async fn remove_pod_from_runtime(ctx: &Context, runtime: &PodRuntime) -> Result<(), tonic::Status> {
    // Already gone counts as done: CRI's stop and remove are idempotent, but not every
    // runtime says so for an unknown id.
    let done = |result: Result<(), tonic::Status>| match result {
        Err(status) if status.code() != tonic::Code::NotFound => Err(status),
        _ => Ok(()),
    };
    let mut client = ctx.cri.runtime.clone();
    for sandbox in &runtime.sandboxes {
        done(client.stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: sandbox.id.clone() }).await.map(drop))?;
        done(client.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: sandbox.id.clone() }).await.map(drop))?;
    }
    for container in &runtime.containers {
        done(client.remove_container(api::RemoveContainerRequest { container_id: container.id.clone() }).await.map(drop))?;
    }
    Ok(())
}

async fn report(ctx: &Context, pod: &Pod, runtime: &PodRuntime, state: &mut PodState, sandbox_ready: bool) -> Result<(), SyncError> {
    let ips: Vec<String> = runtime.current_sandbox().filter(|s| s.ready).map(|s| s.ip.iter().cloned().chain(s.extra_ips.iter().cloned()).collect()).unwrap_or_default();
    report_with_ips(ctx, pod, runtime, state, sandbox_ready, &ips).await
}

/// Computes the pod's status and writes it when it differs from what was last written.
async fn report_with_ips(ctx: &Context, pod: &Pod, runtime: &PodRuntime, state: &mut PodState, sandbox_ready: bool, pod_ips: &[String]) -> Result<(), SyncError> {
    let mut observed = Observations { waiting: state.waiting.clone(), failed: state.failed.clone(), pod_ips: pod_ips.to_vec(), sandbox_ready, ..Default::default() };
    for (name, probe) in &state.probes {
        if let Some(ready) = probe.ready {
            observed.ready.insert(name.clone(), ready);
        }
        if let Some(started) = probe.started {
            observed.started.insert(name.clone(), started);
        }
    }
    for container in env::all_containers(pod) {
        let has_readiness = container.readiness_probe.is_some();
        let has_startup = container.startup_probe.is_some();
        if has_readiness {
            observed.ready.entry(container.name.clone()).or_insert(false);
        }
        if has_startup {
            observed.started.entry(container.name.clone()).or_insert(false);
        }
    }
    for info in runtime.containers.iter().filter(|c| c.is_exited()) {
        let path = termination_log_path(ctx, pod, &info.name, info.attempt);
        if let Ok(bytes) = std::fs::read(&path) {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned();
            if !text.is_empty() {
                observed.termination_messages.insert(info.id.clone(), text);
            }
        }
    }
    let status = status::compute(pod, runtime, &observed, &ctx.node_ip, jiff::Timestamp::now());
    let new = serde_json::to_value(&status).unwrap_or(Value::Null);
    let current = pod.status.as_ref().and_then(|s| serde_json::to_value(s).ok()).unwrap_or(Value::Null);
    if new == current || state.reported.as_ref() == Some(&new) && current == Value::Null {
        return Ok(());
    }
    // A merge patch with nulls for what is no longer set: the agent owns the whole status except
    // the conditions `compute` already carried over.
    let mut patch = new.clone();
    if let (Some(patch_map), Some(current_map)) = (patch.as_object_mut(), current.as_object()) {
        for key in current_map.keys() {
            if !patch_map.contains_key(key) {
                patch_map.insert(key.clone(), Value::Null);
            }
        }
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    match api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": patch}))).await {
        Ok(_) => {
            state.reported = Some(new);
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// A worker's handles: the latest pod (None once it is gone from the API) and a wake-up.
struct WorkerHandle {
    pod: watch::Sender<Option<Arc<Pod>>>,
    poke: Arc<Notify>,
}

async fn pod_worker(ctx: Arc<Context>, uid: String, mut pod_rx: watch::Receiver<Option<Arc<Pod>>>, poke: Arc<Notify>) -> String {
    let mut state = PodState::default();
    loop {
        let pod = pod_rx.borrow_and_update().clone();
        let wait = match pod {
            // Boxed: a sync's state machine is ~26 KB, and an idle worker (most of them, most
            // of the time) need not carry it between syncs.
            Some(pod) => match Box::pin(sync_pod(&ctx, &pod, &mut state)).await {
                Ok(wait) => wait,
                Err(error) => {
                    tracing::warn!(%error, pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), "pod sync failed; retrying");
                    Duration::from_secs(2)
                }
            },
            None => {
                // Gone from the API (deleted with no grace, or the node changed): clean up.
                match runtime_state::inspect_pod(&ctx.cri, &uid).await {
                    Ok(runtime) => {
                        let dummy = Pod::default();
                        kill_containers(&ctx, &dummy, &runtime, Some(2)).await;
                        match remove_pod_from_runtime(&ctx, &runtime).await {
                            Err(status) => tracing::warn!(%status, %uid, "removing a removed pod's sandbox; retrying"),
                            Ok(()) => {
                                volumes::cleanup(&ctx.pods_dir, &uid).await;
                                if let Ok(entries) = std::fs::read_dir(&ctx.logs_dir) {
                                    for entry in entries.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(&format!("_{uid}"))) {
                                        let _ = std::fs::remove_dir_all(entry.path());
                                    }
                                }
                                state.finished = true;
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, %uid, "cleaning up a removed pod; retrying");
                    }
                }
                Duration::from_secs(2)
            }
        };
        if state.finished {
            ctx.pods.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
            return uid;
        }
        tokio::select! {
            changed = pod_rx.changed() => if changed.is_err() { return uid; },
            _ = poke.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Watches the pods bound to this node and keeps one worker per pod; relists the runtime every
/// second and wakes the workers whose containers changed state (the kubelet's PLEG).
pub async fn run(ctx: Arc<Context>) {
    let workers: Arc<Mutex<HashMap<String, WorkerHandle>>> = Arc::default();
    let mut tasks: JoinSet<String> = JoinSet::new();
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut events = watcher(api, config).boxed();
    let mut listed: HashSet<String> = HashSet::new();
    let mut relist = tokio::time::interval(Duration::from_secs(1));
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fingerprints: HashMap<String, String> = HashMap::new();
    let mut synced_once = false;

    let spawn_or_update = |tasks: &mut JoinSet<String>, uid: String, pod: Option<Arc<Pod>>| {
        let mut map = workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pod) = &pod {
            ctx.pods.lock().unwrap_or_else(|e| e.into_inner()).insert(uid.clone(), pod.clone());
        }
        match map.get(&uid) {
            Some(handle) => {
                let _ = handle.pod.send(pod);
            }
            None => {
                let (tx, rx) = watch::channel(pod);
                let poke = Arc::new(Notify::new());
                tasks.spawn(pod_worker(ctx.clone(), uid.clone(), rx, poke.clone()));
                map.insert(uid, WorkerHandle { pod: tx, poke });
            }
        }
    };

    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(pod))) | Some(Ok(watcher::Event::InitApply(pod))) => {
                    let uid = pod.uid().unwrap_or_default();
                    listed.insert(uid.clone());
                    spawn_or_update(&mut tasks, uid, Some(Arc::new(pod)));
                }
                Some(Ok(watcher::Event::Delete(pod))) => {
                    let uid = pod.uid().unwrap_or_default();
                    if workers.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&uid) {
                        spawn_or_update(&mut tasks, uid, None);
                    }
                }
                Some(Ok(watcher::Event::Init)) => listed.clear(),
                Some(Ok(watcher::Event::InitDone)) => {
                    // Pods that vanished while the watch was down, and pods the runtime still
                    // runs that the API no longer has (e.g. after an agent restart).
                    let known: Vec<String> = workers.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
                    for uid in known.into_iter().filter(|uid| !listed.contains(uid)) {
                        spawn_or_update(&mut tasks, uid, None);
                    }
                    match runtime_state::pods_in_runtime(&ctx.cri).await {
                        Ok(uids) => {
                            for uid in uids.into_iter().filter(|uid| !listed.contains(uid)) {
                                spawn_or_update(&mut tasks, uid, None);
                            }
                        }
                        Err(error) => tracing::warn!(%error, "listing the runtime's pods"),
                    }
                    synced_once = true;
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "pod watch error; the watcher retries");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                None => return,
            },
            Some(done) = tasks.join_next() => {
                if let Ok(uid) = done {
                    let mut map = workers.lock().unwrap_or_else(|e| e.into_inner());
                    // A worker that ended while a newer pod with the same UID arrived is
                    // restarted by the next event; drop only finished ones.
                    if map.get(&uid).is_some_and(|h| h.pod.is_closed() || h.pod.borrow().as_ref().is_none_or(|p| p.metadata.deletion_timestamp.is_some())) {
                        map.remove(&uid);
                    }
                }
            }
            _ = relist.tick(), if synced_once => {
                match relist_fingerprints(&ctx.cri).await {
                    Ok(current) => {
                        let mut orphans = Vec::new();
                        {
                            let map = workers.lock().unwrap_or_else(|e| e.into_inner());
                            for (uid, print) in &current {
                                match map.get(uid) {
                                    Some(handle) if fingerprints.get(uid) != Some(print) => handle.poke.notify_one(),
                                    Some(_) => {}
                                    // Sandboxes are only made by workers, and workers only for
                                    // pods the watch delivered: one with no worker belongs to no
                                    // pod in the API (its worker ended, or it was made behind the
                                    // agent's back). A worker with no pod removes it.
                                    None => orphans.push(uid.clone()),
                                }
                            }
                        }
                        for uid in orphans {
                            tracing::info!(%uid, "removing a pod the API does not have from the runtime");
                            spawn_or_update(&mut tasks, uid, None);
                        }
                        fingerprints = current;
                    }
                    Err(error) => tracing::debug!(%error, "relisting the runtime"),
                }
            }
        }
    }
}

/// Per pod UID, the IDs and states of its sandboxes and containers, in one string: a change
/// means the pod's worker should look.
async fn relist_fingerprints(cri: &Cri) -> Result<HashMap<String, String>, CriError> {
    let managed = HashMap::from([(LABEL_MANAGED.to_string(), "true".to_string())]);
    let mut runtime = cri.runtime.clone();
    let containers = runtime
        .list_containers(api::ListContainersRequest { filter: Some(api::ContainerFilter { label_selector: managed.clone(), ..Default::default() }) })
        .await?
        .into_inner()
        .containers;
    let sandboxes = runtime
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: Some(api::PodSandboxFilter { label_selector: managed, ..Default::default() }) })
        .await?
        .into_inner()
        .items;
    let mut prints: HashMap<String, Vec<String>> = HashMap::new();
    for container in containers {
        if let Some(uid) = container.labels.get(LABEL_POD_UID) {
            prints.entry(uid.clone()).or_default().push(format!("c{}:{}", container.id, container.state));
        }
    }
    for sandbox in sandboxes {
        if let Some(uid) = sandbox.labels.get(LABEL_POD_UID) {
            prints.entry(uid.clone()).or_default().push(format!("s{}:{}", sandbox.id, sandbox.state));
        }
    }
    Ok(prints
        .into_iter()
        .map(|(uid, mut parts)| {
            parts.sort();
            (uid, parts.join(","))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults_and_registry_hosts() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/busybox"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/busybox:1"), "IfNotPresent");
        assert_eq!(default_pull_policy("x@sha256:00"), "IfNotPresent");
        assert_eq!(registry_host("busybox"), "docker.io");
        assert_eq!(registry_host("library/busybox"), "docker.io");
        assert_eq!(registry_host("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000");
        assert_eq!(registry_host("berth.dev/pause:1"), "berth.dev");
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let first = next_backoff(None);
        assert_eq!(first.delay, BACKOFF_START);
        let mut b = first;
        for _ in 0..10 {
            b = next_backoff(Some(&b));
        }
        assert_eq!(b.delay, BACKOFF_MAX);
    }
}
