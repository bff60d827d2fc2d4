//! Resource usage for the resource metrics API (`kubectl top`): cAdvisor's part of the kubelet,
//! reduced to what metrics.k8s.io serves (CPU and memory working set of the node, pods and
//! containers).
//!
//! A sampler reads cumulative CPU time and the memory working set every [`INTERVAL`]: containers
//! through CRI `ListContainerStats` (containerd 1.6 fills `usage_core_nano_seconds` and
//! `working_set_bytes` from the container's cgroup, v1 or v2, with working set = usage -
//! inactive_file as upstream), the node from `/proc/stat` and `/proc/meminfo`. CPU usage is the
//! rate between a reading and the one before it, so the agent does what metrics-server does
//! between two scrapes; the window is the time between the two readings.
//!
//! A container first seen in a round, when an earlier round did run, started after that round (or
//! its stats were unavailable): its creation time with zero CPU stands in for the earlier reading,
//! so a new pod shows usage one round after it starts instead of two. After an agent restart
//! nothing is known about earlier usage, and containers wait for the second round.
//!
//! Served as JSON at the agent's `GET /stats/resource` (see [`Summary`]); the API server turns it
//! into metrics.k8s.io `NodeMetrics` and `PodMetrics`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::cri::{CriError, api};
use crate::pods::Context;
use crate::runtime_state::{LABEL_CONTAINER_NAME, LABEL_MANAGED, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};

/// How often usage is read (metrics-server's default resolution is 15 s, the kubelet's cAdvisor
/// housekeeping 10 s).
pub const INTERVAL: Duration = Duration::from_secs(10);

/// What `GET /stats/resource` answers. `node` is null until two readings of the node exist; a pod
/// is listed once every running container of it has a usage rate.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub node: Option<NodeStats>,
    pub pods: Vec<PodStats>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeStats {
    pub name: String,
    pub usage: Usage,
}

#[derive(Clone, Debug, Serialize)]
pub struct PodStats {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The sum of the containers' usage, at the earliest container's timestamp and window (as
    /// metrics-server reports a pod).
    pub usage: Usage,
    pub containers: Vec<ContainerStats>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ContainerStats {
    pub name: String,
    pub usage: Usage,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// When the later reading was taken (RFC 3339).
    pub timestamp: String,
    /// Time between the two readings the CPU rate comes from.
    pub window_nanoseconds: u64,
    /// CPU usage rate over the window, in billionths of a core.
    pub cpu_nano_cores: u64,
    /// Cumulative CPU time at `timestamp`.
    pub cpu_usage_core_nanoseconds: u64,
    /// Memory working set at `timestamp`.
    pub memory_working_set_bytes: u64,
}

/// One cumulative reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cumulative {
    /// Nanoseconds since the Unix epoch.
    at: i64,
    cpu: u64,
}

/// A container's reading in one round.
#[derive(Clone, Debug)]
struct ContainerReading {
    id: String,
    pod_uid: String,
    pod_namespace: String,
    pod_name: String,
    name: String,
    created_at: i64,
    at: i64,
    cpu: u64,
    memory: u64,
}

#[derive(Default)]
struct State {
    /// When the previous round started.
    previous_round: Option<i64>,
    node_previous: Option<Cumulative>,
    containers_previous: HashMap<String, Cumulative>,
    summary: Summary,
}

/// The sampler's results, shared with the endpoint.
#[derive(Default)]
pub struct ResourceStats {
    state: Mutex<State>,
}

/// CPU rate between two cumulative readings, in nanocores, with the window. None without elapsed
/// time or when the counter went backwards (a container's cgroup was recreated).
fn rate(previous: Cumulative, current: Cumulative) -> Option<(u64, u64)> {
    let window = u64::try_from(current.at - previous.at).ok().filter(|w| *w > 0)?;
    let used = current.cpu.checked_sub(previous.cpu)?;
    let nano_cores = (u128::from(used) * 1_000_000_000 / u128::from(window)).min(u128::from(u64::MAX)) as u64;
    Some((nano_cores, window))
}

fn rfc3339(nanos: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(nanos)).map(|t| t.to_string()).unwrap_or_default()
}

fn usage_of(previous: Cumulative, current: Cumulative, memory: u64) -> Option<Usage> {
    let (cpu_nano_cores, window) = rate(previous, current)?;
    Some(Usage { timestamp: rfc3339(current.at), window_nanoseconds: window, cpu_nano_cores, cpu_usage_core_nanoseconds: current.cpu, memory_working_set_bytes: memory })
}

impl ResourceStats {
    pub fn summary(&self) -> Summary {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).summary.clone()
    }

    /// Takes one round's readings and publishes the usage computed against the previous round.
    fn record(&self, node_name: &str, round: i64, node: Option<(Cumulative, u64)>, containers: Vec<ContainerReading>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let node_stats = match (state.node_previous, node) {
            (Some(previous), Some((current, memory))) => usage_of(previous, current, memory).map(|usage| NodeStats { name: node_name.to_string(), usage }),
            _ => None,
        };
        // A failed node reading keeps the last published one; its timestamp shows its age.
        if node_stats.is_some() {
            state.summary.node = node_stats;
        }
        if let Some((current, _)) = node {
            state.node_previous = Some(current);
        }

        let mut pods: BTreeMap<(String, String, String), (Vec<ContainerStats>, bool)> = BTreeMap::new();
        let mut seen = HashMap::new();
        for reading in containers {
            let current = Cumulative { at: reading.at, cpu: reading.cpu };
            let previous = state.containers_previous.get(&reading.id).copied().or_else(|| {
                // New since the last round: it started from zero at its creation.
                state.previous_round.filter(|_| reading.created_at > 0).map(|_| Cumulative { at: reading.created_at, cpu: 0 })
            });
            let usage = previous.and_then(|p| usage_of(p, current, reading.memory));
            let entry = pods.entry((reading.pod_namespace.clone(), reading.pod_name.clone(), reading.pod_uid.clone())).or_insert_with(|| (Vec::new(), true));
            match usage {
                Some(usage) => entry.0.push(ContainerStats { name: reading.name.clone(), usage }),
                None => entry.1 = false,
            }
            seen.insert(reading.id, current);
        }
        state.containers_previous = seen;
        state.previous_round = Some(round);
        state.summary.pods = pods
            .into_iter()
            .filter(|(_, (containers, complete))| *complete && !containers.is_empty())
            .map(|((namespace, name, uid), (mut containers, _))| {
                containers.sort_by(|a, b| a.name.cmp(&b.name));
                PodStats { namespace, name, uid, usage: pod_usage(&containers), containers }
            })
            .collect();
    }
}

fn pod_usage(containers: &[ContainerStats]) -> Usage {
    let earliest = containers.iter().min_by(|a, b| a.usage.timestamp.cmp(&b.usage.timestamp)).map(|c| &c.usage);
    Usage {
        timestamp: earliest.map(|u| u.timestamp.clone()).unwrap_or_default(),
        window_nanoseconds: earliest.map(|u| u.window_nanoseconds).unwrap_or_default(),
        cpu_nano_cores: containers.iter().map(|c| c.usage.cpu_nano_cores).sum(),
        cpu_usage_core_nanoseconds: containers.iter().map(|c| c.usage.cpu_usage_core_nanoseconds).sum(),
        memory_working_set_bytes: containers.iter().map(|c| c.usage.memory_working_set_bytes).sum(),
    }
}

/// Cumulative busy CPU time of the machine from `/proc/stat`'s first line (USER_HZ ticks of user,
/// nice, system, irq, softirq and steal; guest time is already inside user and nice).
fn node_cpu_nanoseconds(proc_stat: &str, ticks_per_second: u64) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    Some(busy.checked_mul(1_000_000_000 / ticks_per_second.max(1))?)
}

/// The node's memory working set from `/proc/meminfo`: what is in use (total - free) minus the
/// inactive page cache the kernel can drop, as cAdvisor's usage - inactive_file of the root cgroup.
fn node_working_set(meminfo: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.split(':').next() == Some(name))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
    };
    let used = field("MemTotal")?.saturating_sub(field("MemFree")?);
    Some(used.saturating_sub(field("Inactive(file)").unwrap_or(0)))
}

fn read_node() -> Option<(Cumulative, u64)> {
    // SAFETY: sysconf only reads a constant of the C library.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let at = now_nanos();
    let cpu = node_cpu_nanoseconds(&std::fs::read_to_string("/proc/stat").ok()?, u64::try_from(ticks).unwrap_or(100))?;
    let memory = node_working_set(&std::fs::read_to_string("/proc/meminfo").ok()?)?;
    Some((Cumulative { at, cpu }, memory))
}

fn now_nanos() -> i64 {
    i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

/// The running containers this agent made, with their CRI stats.
async fn read_containers(ctx: &Context) -> Result<Vec<ContainerReading>, CriError> {
    let managed = HashMap::from([(LABEL_MANAGED.to_string(), "true".to_string())]);
    let mut runtime = ctx.cri.runtime.clone();
    let running = runtime
        .list_containers(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                state: Some(api::ContainerStateValue { state: api::ContainerState::ContainerRunning as i32 }),
                label_selector: managed.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    let stats = runtime
        .list_container_stats(api::ListContainerStatsRequest { filter: Some(api::ContainerStatsFilter { label_selector: managed, ..Default::default() }) })
        .await?
        .into_inner()
        .stats;
    let stats: HashMap<String, api::ContainerStats> = stats.into_iter().filter_map(|s| Some((s.attributes.as_ref()?.id.clone(), s))).collect();
    let mut readings = Vec::new();
    for container in running {
        let Some(stat) = stats.get(&container.id) else { continue };
        let label = |key: &str| container.labels.get(key).cloned().unwrap_or_default();
        let Some(cpu) = stat.cpu.as_ref().and_then(|c| Some((c.timestamp, c.usage_core_nano_seconds.as_ref()?.value))) else { continue };
        let memory = stat.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map(|v| v.value).unwrap_or(0);
        readings.push(ContainerReading {
            id: container.id.clone(),
            pod_uid: label(LABEL_POD_UID),
            pod_namespace: label(LABEL_POD_NAMESPACE),
            pod_name: label(LABEL_POD_NAME),
            name: label(LABEL_CONTAINER_NAME),
            created_at: container.created_at,
            at: if cpu.0 > 0 { cpu.0 } else { now_nanos() },
            cpu: cpu.1,
            memory,
        });
    }
    Ok(readings)
}

/// Reads usage every [`INTERVAL`], forever.
pub async fn run(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let round = now_nanos();
        let node = read_node();
        if node.is_none() {
            tracing::warn!("reading /proc/stat or /proc/meminfo failed: no node usage this round");
        }
        let containers = match read_containers(&ctx).await {
            Ok(containers) => containers,
            Err(error) => {
                tracing::warn!(%error, "container stats");
                continue;
            }
        };
        ctx.stats.record(&ctx.node_name, round, node, containers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000_000;

    fn reading(id: &str, pod: &str, name: &str, created_at: i64, at: i64, cpu: u64, memory: u64) -> ContainerReading {
        ContainerReading {
            id: id.into(),
            pod_uid: format!("uid-{pod}"),
            pod_namespace: "default".into(),
            pod_name: pod.into(),
            name: name.into(),
            created_at,
            at,
            cpu,
            memory,
        }
    }

    #[test]
    fn rates_need_time_and_a_growing_counter() {
        let a = Cumulative { at: 10 * SECOND, cpu: 1_000_000_000 };
        assert_eq!(rate(a, Cumulative { at: 20 * SECOND, cpu: 6_000_000_000 }), Some((500_000_000, 10 * SECOND as u64)));
        assert_eq!(rate(a, Cumulative { at: 10 * SECOND, cpu: 2_000_000_000 }), None);
        assert_eq!(rate(a, Cumulative { at: 20 * SECOND, cpu: 0 }), None);
    }

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\nintr 1\n";
        // (100+5+50+3+2+1) ticks of 10 ms.
        assert_eq!(node_cpu_nanoseconds(stat, 100), Some(161 * 10_000_000));
        assert_eq!(node_cpu_nanoseconds("intr 1\n", 100), None);
        let meminfo = "MemTotal:       1000 kB\nMemFree:         200 kB\nMemAvailable:    700 kB\nInactive(file):  300 kB\n";
        assert_eq!(node_working_set(meminfo), Some(500 * 1024));
    }

    #[test]
    fn pods_appear_once_every_container_has_a_rate() {
        let stats = ResourceStats::default();
        let node = |at: i64, cpu: u64| Some((Cumulative { at, cpu }, 4096));
        // First round after a restart: the long-running container waits for a second reading.
        stats.record("n", 100 * SECOND, node(100 * SECOND, 0), vec![reading("old", "a", "c", SECOND, 100 * SECOND, 50 * SECOND as u64, 8192)]);
        let summary = stats.summary();
        assert!(summary.node.is_none() && summary.pods.is_empty(), "{summary:?}");

        // Second round: the old container has a rate; a container created since the last round
        // counts from its creation; a pod with one container lacking stats waits.
        stats.record(
            "n",
            110 * SECOND,
            node(110 * SECOND, 5 * SECOND as u64),
            vec![
                reading("old", "a", "c", SECOND, 110 * SECOND, 55 * SECOND as u64, 8192),
                reading("new", "b", "web", 108 * SECOND, 110 * SECOND, SECOND as u64, 1024),
                reading("new2", "b", "side", 108 * SECOND, 110 * SECOND, 0, 2048),
            ],
        );
        let summary = stats.summary();
        let node = summary.node.expect("node usage");
        assert_eq!((node.name.as_str(), node.usage.cpu_nano_cores, node.usage.window_nanoseconds), ("n", 500_000_000, 10 * SECOND as u64));
        assert_eq!(summary.pods.len(), 2);
        let a = &summary.pods[0];
        assert_eq!((a.name.as_str(), a.usage.cpu_nano_cores, a.usage.memory_working_set_bytes), ("a", 500_000_000, 8192));
        let b = &summary.pods[1];
        assert_eq!(b.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["side", "web"]);
        assert_eq!(b.containers[1].usage.cpu_nano_cores, 500_000_000, "1 s of CPU in the 2 s since creation");
        assert_eq!((b.usage.cpu_nano_cores, b.usage.memory_working_set_bytes, b.usage.window_nanoseconds), (500_000_000, 3072, 2 * SECOND as u64));

        // A restarted container (new id, counter from zero) in a pod still counts from creation;
        // gone containers are forgotten.
        stats.record("n", 120 * SECOND, None, vec![reading("old-2", "a", "c", 119 * SECOND, 120 * SECOND, SECOND as u64 / 10, 100)]);
        let summary = stats.summary();
        assert_eq!(summary.pods.len(), 1);
        assert_eq!(summary.pods[0].usage.cpu_nano_cores, 100_000_000);
        assert!(summary.node.is_some(), "a failed node reading keeps the last one");
    }
}
