//! Node-pressure eviction, as the kubelet's eviction manager: hard thresholds on what is left of
//! memory, the node and image filesystems, inodes and process IDs (`--eviction-hard`, upstream's
//! defaults `memory.available<100Mi,nodefs.available<10%,imagefs.available<15%,nodefs.inodesFree<5%`).
//! A crossed threshold sets the node's MemoryPressure, DiskPressure or PIDPressure condition and
//! evicts one pod per pass: BestEffort before Burstable before Guaranteed, lower priority first,
//! newest first. An evicted pod is stopped at once and left in the API as Failed with reason
//! `Evicted`, as upstream, so its controller replaces it elsewhere.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use crate::pods::Context;
use crate::runtime_state;

const CHECK_EVERY: Duration = Duration::from_secs(10);
pub const DEFAULT_EVICTION_HARD: &str = "memory.available<100Mi,nodefs.available<10%,imagefs.available<15%,nodefs.inodesFree<5%";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    MemoryAvailable,
    NodefsAvailable,
    NodefsInodesFree,
    ImagefsAvailable,
    PidAvailable,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodefsAvailable => "nodefs.available",
            Signal::NodefsInodesFree => "nodefs.inodesFree",
            Signal::ImagefsAvailable => "imagefs.available",
            Signal::PidAvailable => "pid.available",
        }
    }
    /// The resource named in the eviction message and the condition it sets.
    fn resource(self) -> (&'static str, &'static str) {
        match self {
            Signal::MemoryAvailable => ("memory", "MemoryPressure"),
            Signal::NodefsAvailable | Signal::ImagefsAvailable => ("ephemeral-storage", "DiskPressure"),
            Signal::NodefsInodesFree => ("inodes", "DiskPressure"),
            Signal::PidAvailable => ("pids", "PIDPressure"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    Quantity(i64),
    Percent(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub below: Amount,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid eviction threshold {0:?}: expected SIGNAL<QUANTITY or SIGNAL<PERCENT%, with SIGNAL one of memory.available, nodefs.available, nodefs.inodesFree, imagefs.available, pid.available")]
pub struct ThresholdError(String);

/// Parses `--eviction-hard`; an empty string disables eviction.
pub fn parse_thresholds(text: &str) -> Result<Vec<Threshold>, ThresholdError> {
    let mut thresholds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || ThresholdError(part.to_string());
        let (name, value) = part.split_once('<').ok_or_else(bad)?;
        let signal = match name.trim() {
            "memory.available" => Signal::MemoryAvailable,
            "nodefs.available" => Signal::NodefsAvailable,
            "nodefs.inodesFree" => Signal::NodefsInodesFree,
            "imagefs.available" => Signal::ImagefsAvailable,
            "pid.available" => Signal::PidAvailable,
            _ => return Err(bad()),
        };
        let value = value.trim();
        let below = match value.strip_suffix('%') {
            Some(percent) => Amount::Percent(percent.parse::<f64>().ok().filter(|p| (0.0..=100.0).contains(p)).ok_or_else(bad)?),
            None => Amount::Quantity(scheduler::quantity::parse_value(value).map_err(|_| bad())?),
        };
        thresholds.push(Threshold { signal, below });
    }
    Ok(thresholds)
}

/// What is available of a resource, and its total.
#[derive(Clone, Copy, Debug)]
struct Observation {
    available: i64,
    capacity: i64,
}

fn statvfs(path: &Path) -> Option<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a properly sized, writable struct.
    (unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) } == 0).then_some(stats)
}

fn meminfo(key: &str) -> Option<i64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<i64>().ok()).map(|kib| kib * 1024)
}

fn observe(signal: Signal, nodefs: &Path, imagefs: &Path) -> Option<Observation> {
    match signal {
        Signal::MemoryAvailable => Some(Observation { available: meminfo("MemAvailable:")?, capacity: meminfo("MemTotal:")? }),
        Signal::NodefsAvailable | Signal::ImagefsAvailable => {
            let stats = statvfs(if signal == Signal::NodefsAvailable { nodefs } else { imagefs })?;
            Some(Observation { available: (stats.f_bavail as i64) * (stats.f_frsize as i64), capacity: (stats.f_blocks as i64) * (stats.f_frsize as i64) })
        }
        Signal::NodefsInodesFree => {
            let stats = statvfs(nodefs)?;
            // Filesystems without inode limits report zero; they cannot run out.
            (stats.f_files > 0).then(|| Observation { available: stats.f_favail as i64, capacity: stats.f_files as i64 })
        }
        Signal::PidAvailable => {
            let max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok()?.trim().parse().ok()?;
            let used = std::fs::read_dir("/proc").ok()?.flatten().filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))).count() as i64;
            Some(Observation { available: max - used, capacity: max })
        }
    }
}

fn crossed(threshold: &Threshold, observation: Observation) -> bool {
    let limit = match threshold.below {
        Amount::Quantity(q) => q,
        Amount::Percent(p) => (observation.capacity as f64 * p / 100.0) as i64,
    };
    observation.available < limit
}

/// The node conditions the eviction manager reports (read by the node status heartbeat).
#[derive(Clone, Debug, Default)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

pub type SharedPressure = Arc<Mutex<Pressure>>;

fn qos_rank(pod: &Pod) -> u8 {
    match crate::resources::qos_class(pod) {
        "BestEffort" => 0,
        "Burstable" => 1,
        _ => 2,
    }
}

/// Watches the thresholds and evicts, forever.
pub async fn run(ctx: Arc<Context>, thresholds: Vec<Threshold>, pressure: SharedPressure, nodefs: PathBuf, imagefs: PathBuf) {
    if thresholds.is_empty() {
        return;
    }
    loop {
        let mut now_pressure = Pressure::default();
        let mut starved: Option<Signal> = None;
        for threshold in &thresholds {
            let Some(observation) = observe(threshold.signal, &nodefs, &imagefs) else { continue };
            if crossed(threshold, observation) {
                match threshold.signal.resource().1 {
                    "MemoryPressure" => now_pressure.memory = true,
                    "DiskPressure" => now_pressure.disk = true,
                    _ => now_pressure.pid = true,
                }
                starved.get_or_insert(threshold.signal);
            }
        }
        *pressure.lock().unwrap_or_else(|e| e.into_inner()) = now_pressure;
        if let Some(signal) = starved {
            evict_one(&ctx, signal, &thresholds).await;
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

async fn evict_one(ctx: &Context, signal: Signal, thresholds: &[Threshold]) {
    let mut candidates: Vec<Arc<Pod>> = ctx
        .pods
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
        // Static (mirror) pods and system-critical pods are not evicted, as upstream.
        .filter(|p| !p.annotations().contains_key(crate::static_pods::ANNOTATION_MIRROR))
        .filter(|p| p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0) < 2_000_000_000)
        .cloned()
        .collect();
    candidates.sort_by_key(|p| {
        let priority = p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        let started = p.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0.as_second()).unwrap_or(0);
        (qos_rank(p), priority, std::cmp::Reverse(started))
    });
    let Some(pod) = candidates.first() else { return };
    let (resource, _) = signal.resource();
    let threshold = thresholds.iter().find(|t| t.signal == signal).map(|t| match t.below {
        Amount::Quantity(q) => q.to_string(),
        Amount::Percent(p) => format!("{p}%"),
    });
    let message = format!("The node was low on resource: {resource}. Threshold quantity: {}, signal: {}. ", threshold.unwrap_or_default(), signal.name());
    tracing::warn!(pod = %pod.name_any(), %message, "evicting a pod");
    ctx.event(pod, None, "Warning", "Evicted", message.clone());
    // Hard eviction: no grace period.
    if let Ok(runtime) = runtime_state::inspect_pod(&ctx.cri, &pod.uid().unwrap_or_default()).await {
        for container in runtime.containers.iter().filter(|c| !c.is_exited()) {
            let _ = ctx.cri.runtime.clone().stop_container(crate::cri::api::StopContainerRequest { container_id: container.id.clone(), timeout: 0 }).await;
        }
    }
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    let mut conditions: Vec<serde_json::Value> = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default().into_iter().filter(|c| c.type_ != "DisruptionTarget").map(|c| serde_json::to_value(c).unwrap_or_default()).collect();
    conditions.push(json!({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet", "message": message, "lastTransitionTime": now}));
    let patch = json!({"status": {"phase": "Failed", "reason": "Evicted", "message": message, "conditions": conditions}});
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    if let Err(error) = api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        tracing::warn!(%error, pod = %pod.name_any(), "reporting an eviction");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_defaults_and_rejects_nonsense() {
        let thresholds = parse_thresholds(DEFAULT_EVICTION_HARD).unwrap();
        assert_eq!(thresholds.len(), 4);
        assert_eq!(thresholds[0], Threshold { signal: Signal::MemoryAvailable, below: Amount::Quantity(100 << 20) });
        assert_eq!(thresholds[1], Threshold { signal: Signal::NodefsAvailable, below: Amount::Percent(10.0) });
        assert!(parse_thresholds("").unwrap().is_empty());
        for bad in ["memory<1Gi", "memory.available>1Gi", "nodefs.available<200%", "pid.available<lots"] {
            assert!(parse_thresholds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn thresholds_compare_quantities_and_percentages() {
        let observation = Observation { available: 50, capacity: 1000 };
        assert!(crossed(&Threshold { signal: Signal::MemoryAvailable, below: Amount::Quantity(100) }, observation));
        assert!(!crossed(&Threshold { signal: Signal::MemoryAvailable, below: Amount::Quantity(10) }, observation));
        assert!(crossed(&Threshold { signal: Signal::NodefsAvailable, below: Amount::Percent(10.0) }, observation));
        assert!(!crossed(&Threshold { signal: Signal::NodefsAvailable, below: Amount::Percent(1.0) }, observation));
    }
}
