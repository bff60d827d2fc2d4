//! `berth bench pod-startup`: a self-started control plane and a separate `berth agent` process
//! (its own containerd) on this machine; N pods created at once, all landing on the one node.
//! Prints create -> Running and create -> Ready latencies, then the agent's RSS and CPU while it
//! idles with the pods running. Needs root and scripts/setup's packages.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::bench::{ms, percentile, rss_kib, start_child};

#[derive(clap::Args)]
pub struct PodStartupBench {
    /// Pods created at once.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// How long the agent is watched idling with the pods running.
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    idle: Duration,
}

struct AgentProcess {
    child: std::process::Child,
    dir: PathBuf,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn containerd_pid(agent_dir: &Path) -> Option<u32> {
    let config = agent_dir.join("agent").join("containerd").join("config.toml");
    let wanted = config.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let text = String::from_utf8_lossy(&cmdline);
        (text.starts_with("containerd\0") && text.contains(&wanted)).then_some(pid)
    })
}

pub async fn run(args: PodStartupBench) -> anyhow::Result<()> {
    let (_server, kubeconfig) = start_child(&[]).await?;
    let client = crate::client_for(&kubeconfig).await?;
    let dir = std::env::temp_dir().join(format!("berth-bench-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let images = dir.join("agent").join("images");
    std::fs::create_dir_all(&images)?;
    images::busybox_image(images::BUSYBOX_IMAGE, Path::new(images::DEFAULT_BUSYBOX))
        .context("building the busybox image (install busybox-static: scripts/setup)")?
        .write(&images.join("busybox.tar"))
        .context("writing the busybox image")?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("agent")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--data-dir")
        .arg(&dir)
        .args(["--node-name", "bench-node", "--node-ip", "127.0.0.1", "--kubelet-port", "0"])
        // Disk thresholds depend on the machine the bench runs on; they are not what it measures.
        .args(["--eviction-hard", "memory.available<100Mi"])
        .env("BERTH_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("starting berth agent")?;
    let agent = AgentProcess { child, dir: dir.clone() };
    let agent_pid = agent.child.id();

    let nodes: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        let ready = nodes.get_opt("bench-node").await?.and_then(|n| n.status).and_then(|s| s.conditions).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the agent's node did not become Ready in 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("berth bench pod-startup: {} pods on one node (agent Ready after {:.1} s)", args.pods, started.elapsed().as_secs_f64());

    let ns = "bench-pod-startup";
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}}))?).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, bool, bool, bool, Instant)>();
    let watched = pods.clone();
    let watch_task = tokio::spawn(async move {
        let mut stream = watcher(watched, watcher::Config::default()).default_backoff().applied_objects().boxed();
        while let Some(Ok(pod)) = stream.next().await {
            let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
            let status = pod.status.unwrap_or_default();
            let running = status.phase.as_deref() == Some("Running");
            let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
            if tx.send((pod.metadata.name.unwrap_or_default(), bound, running, ready, Instant::now())).is_err() {
                return;
            }
        }
    });

    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..args.pods {
        let pods = pods.clone();
        let name = format!("startup-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": images::BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]
            }
        }))?;
        creates.spawn(async move {
            let at = Instant::now();
            pods.create(&PostParams::default(), &pod).await.map(|_| (name, at))
        });
    }
    while let Some(result) = creates.join_next().await {
        let (name, at) = result??;
        created.insert(name, at);
    }
    let mut bound: HashMap<String, Instant> = HashMap::new();
    let mut running: HashMap<String, Instant> = HashMap::new();
    let mut ready: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while ready.len() < args.pods {
        let Ok(Some((name, is_bound, is_running, is_ready, at))) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else {
            bail!("only {} of {} pods Ready after 10 minutes", ready.len(), args.pods);
        };
        if is_bound {
            bound.entry(name.clone()).or_insert(at);
        }
        if is_running {
            running.entry(name.clone()).or_insert(at);
        }
        if is_ready {
            ready.entry(name).or_insert(at);
        }
    }
    watch_task.abort();
    let latencies = |seen: &HashMap<String, Instant>| -> Vec<Duration> {
        let mut list: Vec<Duration> = seen.iter().filter_map(|(name, at)| created.get(name).map(|c| at.saturating_duration_since(*c))).collect();
        list.sort();
        list
    };
    let to_bound = latencies(&bound);
    let to_running = latencies(&running);
    let to_ready = latencies(&ready);
    println!("create -> bound:   p50 {}, p99 {}, max {}", ms(percentile(&to_bound, 0.50)), ms(percentile(&to_bound, 0.99)), ms(to_bound.last().copied().unwrap_or_default()));
    println!("create -> Running: p50 {}, p99 {}, max {}", ms(percentile(&to_running, 0.50)), ms(percentile(&to_running, 0.99)), ms(to_running.last().copied().unwrap_or_default()));
    println!("create -> Ready:   p50 {}, p99 {}, max {}", ms(percentile(&to_ready, 0.50)), ms(percentile(&to_ready, 0.99)), ms(to_ready.last().copied().unwrap_or_default()));

    // Idle: let the start-up settle, then measure over the window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let containerd = containerd_pid(&dir);
    let before = (cpu_ticks(agent_pid), containerd.and_then(cpu_ticks));
    let window = Instant::now();
    tokio::time::sleep(args.idle).await;
    let after = (cpu_ticks(agent_pid), containerd.and_then(cpu_ticks));
    let seconds = window.elapsed().as_secs_f64();
    let percent = |b: Option<u64>, a: Option<u64>| match (b, a) {
        (Some(b), Some(a)) => format!("{:.1}%", (a.saturating_sub(b)) as f64 / ticks_per_second() / seconds * 100.0),
        _ => "n/a".into(),
    };
    let rss = |pid: Option<u32>| pid.and_then(rss_kib).map(|k| format!("{:.1} MiB", k as f64 / 1024.0)).unwrap_or_else(|| "n/a".into());
    println!("idle with {} pods over {:.0} s: agent RSS {}, CPU {} of one core; its containerd RSS {}, CPU {}", args.pods, seconds, rss(Some(agent_pid)), percent(before.0, after.0), rss(containerd), percent(before.1, after.1));

    // Clean up through the agent, so sandboxes and their network namespaces go too.
    pods.delete_collection(&DeleteParams::default(), &ListParams::default()).await?;
    let cleanup = Instant::now();
    while !pods.list_metadata(&ListParams::default()).await?.items.is_empty() && cleanup.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(agent);
    Ok(())
}
