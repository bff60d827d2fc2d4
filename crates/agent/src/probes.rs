//! Startup, liveness and readiness probes (exec, httpGet, tcpSocket) with the upstream timing
//! fields. Readiness feeds the Ready condition; a failed liveness or startup probe stops the
//! container, and the pod worker restarts it under the restart policy.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cri::api;
use crate::pods::Context;
use crate::runtime_state::PodRuntime;

#[derive(Clone, Debug, Default)]
struct Counter {
    successes: i32,
    failures: i32,
    next: Option<Instant>,
}

/// One container instance's probe results.
#[derive(Clone, Debug, Default)]
pub struct ProbeState {
    container_id: String,
    pub ready: Option<bool>,
    pub started: Option<bool>,
    startup: Counter,
    liveness: Counter,
    readiness: Counter,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

fn seconds(value: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(value.unwrap_or(default).max(0) as u64)
}

/// Runs every probe that is due for the pod's running containers; returns how long until the
/// next one is due.
pub async fn run_due(ctx: &Context, pod: &Pod, runtime: &PodRuntime, states: &mut HashMap<String, ProbeState>, pod_ips: &[String]) -> Duration {
    let mut wake = Duration::from_secs(10);
    let Some(spec) = pod.spec.as_ref() else { return wake };
    let sidecars = spec.init_containers.iter().flatten().filter(|c| crate::status::is_sidecar(c));
    for container in spec.containers.iter().chain(sidecars) {
        let Some(info) = runtime.latest(&container.name).filter(|c| c.is_running()) else {
            states.remove(&container.name);
            continue;
        };
        if container.startup_probe.is_none() && container.liveness_probe.is_none() && container.readiness_probe.is_none() {
            continue;
        }
        let state = states.entry(container.name.clone()).or_default();
        if state.container_id != info.id {
            *state = ProbeState { container_id: info.id.clone(), ..Default::default() };
        }
        let started_at = Instant::now() - started_ago(info.status.started_at);
        if state.started != Some(true) {
            match &container.startup_probe {
                None => state.started = Some(true),
                Some(probe) => {
                    state.started = Some(false);
                    match step(ctx, pod, container, &info.id, probe, Kind::Startup, &mut state.startup, started_at, pod_ips).await {
                        Outcome::Wait(d) => wake = wake.min(d),
                        Outcome::Succeeded => state.started = Some(true),
                        Outcome::FailedThreshold => {
                            kill(ctx, pod, container, &info.id, "startup").await;
                            continue;
                        }
                    }
                }
            }
        }
        if state.started != Some(true) {
            continue;
        }
        if let Some(probe) = &container.liveness_probe {
            match step(ctx, pod, container, &info.id, probe, Kind::Liveness, &mut state.liveness, started_at, pod_ips).await {
                Outcome::Wait(d) => wake = wake.min(d),
                Outcome::Succeeded => {}
                Outcome::FailedThreshold => {
                    kill(ctx, pod, container, &info.id, "liveness").await;
                    continue;
                }
            }
        }
        if let Some(probe) = &container.readiness_probe {
            if state.ready.is_none() {
                state.ready = Some(false);
            }
            match step(ctx, pod, container, &info.id, probe, Kind::Readiness, &mut state.readiness, started_at, pod_ips).await {
                Outcome::Wait(d) => wake = wake.min(d),
                Outcome::Succeeded => state.ready = Some(true),
                Outcome::FailedThreshold => state.ready = Some(false),
            }
        }
        // After running, every probe has a next time; wake for the earliest.
        for counter in [&state.startup, &state.liveness, &state.readiness] {
            if let Some(next) = counter.next {
                wake = wake.min(next.saturating_duration_since(Instant::now()));
            }
        }
    }
    wake
}

fn started_ago(started_at_nanos: i64) -> Duration {
    let now = jiff::Timestamp::now().as_nanosecond();
    Duration::from_nanos((now - started_at_nanos as i128).max(0) as u64)
}

enum Outcome {
    /// Not due yet, or ran without reaching a threshold.
    Wait(Duration),
    Succeeded,
    FailedThreshold,
}

#[allow(clippy::too_many_arguments)]
async fn step(ctx: &Context, pod: &Pod, container: &Container, container_id: &str, probe: &Probe, kind: Kind, counter: &mut Counter, started_at: Instant, pod_ips: &[String]) -> Outcome {
    let now = Instant::now();
    let first_due = started_at + seconds(probe.initial_delay_seconds, 0);
    let due = counter.next.unwrap_or(first_due).max(first_due);
    if now < due {
        return Outcome::Wait(due - now);
    }
    let period = seconds(probe.period_seconds, 10).max(Duration::from_secs(1));
    counter.next = Some(now + period);
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let result = execute(ctx, container, container_id, probe, timeout, pod_ips).await;
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    match result {
        Ok(()) => {
            counter.failures = 0;
            counter.successes += 1;
            if counter.successes >= success_threshold { Outcome::Succeeded } else { Outcome::Wait(period) }
        }
        Err(message) => {
            counter.successes = 0;
            counter.failures += 1;
            ctx.event(pod, Some(&container.name), "Warning", "Unhealthy", format!("{} probe failed: {message}", kind.name()));
            if counter.failures >= failure_threshold {
                counter.failures = 0;
                Outcome::FailedThreshold
            } else {
                Outcome::Wait(period)
            }
        }
    }
}

async fn kill(ctx: &Context, pod: &Pod, container: &Container, container_id: &str, which: &str) {
    ctx.event(pod, Some(&container.name), "Normal", "Killing", format!("Container {} failed {which} probe, will be restarted", container.name));
    let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
    if let Err(status) = ctx.cri.runtime.clone().stop_container(api::StopContainerRequest { container_id: container_id.to_string(), timeout: grace }).await {
        tracing::warn!(%status, "stopping a container after a failed probe");
    }
}

fn resolve_port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("couldn't find port {name:?} in the container's ports"))
        }
    }
}

/// Runs a postStart or preStop handler (exec, httpGet, tcpSocket or sleep), as a probe runs.
pub(crate) async fn run_handler(ctx: &Context, container: &Container, container_id: &str, handler: &k8s_openapi::api::core::v1::LifecycleHandler, timeout: Duration, pod_ips: &[String]) -> Result<(), String> {
    if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(timeout)).await;
        return Ok(());
    }
    let probe = Probe { exec: handler.exec.clone(), http_get: handler.http_get.clone(), tcp_socket: handler.tcp_socket.clone(), ..Default::default() };
    execute(ctx, container, container_id, &probe, timeout, pod_ips).await
}

async fn execute(ctx: &Context, container: &Container, container_id: &str, probe: &Probe, timeout: Duration, pod_ips: &[String]) -> Result<(), String> {
    if let Some(exec) = &probe.exec {
        let request = api::ExecSyncRequest { container_id: container_id.to_string(), cmd: exec.command.clone().unwrap_or_default(), timeout: timeout.as_secs() as i64 };
        return match tokio::time::timeout(timeout + Duration::from_secs(1), ctx.cri.runtime.clone().exec_sync(request)).await {
            Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
            Ok(Err(status)) => Err(status.message().to_string()),
            Ok(Ok(response)) => {
                let response = response.into_inner();
                if response.exit_code == 0 {
                    Ok(())
                } else {
                    let output = String::from_utf8_lossy(&response.stdout).into_owned() + &String::from_utf8_lossy(&response.stderr);
                    Err(format!("command {:?} exited with {}: {}", exec.command.clone().unwrap_or_default().join(" "), response.exit_code, output.trim()))
                }
            }
        };
    }
    let default_host = pod_ips.first().cloned().unwrap_or_else(|| "127.0.0.1".into());
    if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(container, &tcp.port)?;
        let host = tcp.host.clone().filter(|h| !h.is_empty()).unwrap_or(default_host);
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("dial tcp {host}:{port}: {error}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(http) = &probe.http_get {
        let port = resolve_port(container, &http.port)?;
        let host = http.host.clone().filter(|h| !h.is_empty()).unwrap_or(default_host);
        if http.scheme.as_deref() == Some("HTTPS") {
            return Err("HTTPS probes are not supported by the berth agent yet".into());
        }
        let path = http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
        let mut headers = String::new();
        let mut has_host = false;
        let mut has_agent = false;
        for header in http.http_headers.iter().flatten() {
            has_host |= header.name.eq_ignore_ascii_case("host");
            has_agent |= header.name.eq_ignore_ascii_case("user-agent");
            headers.push_str(&format!("{}: {}\r\n", header.name, header.value));
        }
        if !has_host {
            headers.push_str(&format!("Host: {host}:{port}\r\n"));
        }
        if !has_agent {
            headers.push_str("User-Agent: kube-probe/1.33\r\n");
        }
        let request = format!("GET {path} HTTP/1.1\r\n{headers}Accept: */*\r\nConnection: close\r\n\r\n");
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("Get \"http://{host}:{port}{path}\": dial tcp: {e}"))?;
            stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
            let mut head = vec![0u8; 512];
            let mut filled = 0;
            while filled < head.len() {
                let n = stream.read(&mut head[filled..]).await.map_err(|e| e.to_string())?;
                if n == 0 || head[..filled + n].windows(2).any(|w| w == b"\r\n") {
                    filled += n;
                    break;
                }
                filled += n;
            }
            let line = String::from_utf8_lossy(&head[..filled]).lines().next().unwrap_or("").to_string();
            let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("malformed HTTP response: {line:?}"))?;
            if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP probe failed with statuscode: {code}")) }
        };
        return match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("Get \"http://{host}:{port}{path}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)")),
        };
    }
    if probe.grpc.is_some() {
        return Err("gRPC probes are not supported by the berth agent yet".into());
    }
    Err("the probe has no handler".into())
}
