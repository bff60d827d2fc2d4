//! `berth bench scheduler`: a self-started server (API, controllers, scheduler) with simulated
//! nodes; Deployments create the pods. Prints pods scheduled per second, time until all are
//! Running, per-pod scheduling latency (first seen by a watch -> bound) and the server's RSS.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::bench::{cpu_seconds, ms, percentile, rss_kib, start_child};

#[derive(clap::Args)]
pub struct SchedulerBench {
    /// Simulated nodes.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pods, created through Deployments.
    #[arg(long, default_value_t = 50_000)]
    pods: usize,
    /// Deployments the pods are spread over.
    #[arg(long, default_value_t = 500)]
    deployments: usize,
    /// Run the controller manager and the scheduler as processes of their own (as upstream
    /// deploys them), so each one's RSS is printed apart from the API server's.
    #[arg(long)]
    split: bool,
}

/// A pod as the measuring watch reads it: name, node and phase, and the metadata its watcher
/// resumes from. Everything else is skipped unparsed.
#[derive(Clone, Debug, serde::Deserialize)]
struct MeasuredPod {
    #[serde(default, deserialize_with = "measured_meta")]
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    #[serde(default)]
    spec: MeasuredSpec,
    #[serde(default)]
    status: MeasuredStatus,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeasuredSpec {
    #[serde(default)]
    node_name: Option<String>,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
struct MeasuredStatus {
    #[serde(default)]
    phase: Option<String>,
}

fn measured_meta<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        namespace: Option<String>,
        #[serde(default)]
        resource_version: Option<String>,
        #[serde(default)]
        uid: Option<String>,
    }
    let meta = <Option<Meta> as serde::Deserialize>::deserialize(deserializer)?;
    Ok(meta.map_or_else(Default::default, |m| k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        resource_version: m.resource_version,
        uid: m.uid,
        ..Default::default()
    }))
}

scheduler::pod_resource!(MeasuredPod, metadata);

/// A component process started by the bench; killed when dropped.
struct Component(std::process::Child);

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_component(what: &str, kubeconfig: &std::path::Path) -> anyhow::Result<Component> {
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg(what)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("BERTH_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting berth {what}"))?;
    Ok(Component(child))
}

async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default()).await?;
    Ok(controllers::client::build(config)?)
}

pub async fn run(args: SchedulerBench) -> anyhow::Result<()> {
    let split_flags: &[&str] = if args.split { &["--disable-controllers", "--disable-scheduler"] } else { &[] };
    let (child, kubeconfig) = start_child(split_flags).await?;
    let pid = child.process.id();
    let components = if args.split {
        vec![("controller manager", start_component("controller-manager", &kubeconfig)?), ("scheduler", start_component("scheduler", &kubeconfig)?)]
    } else {
        Vec::new()
    };
    let client = client(&kubeconfig).await?;
    println!("berth bench scheduler: {} nodes, {} pods in {} deployments", args.nodes, args.pods, args.deployments);

    let sim = simnodes::SimOptions { count: args.nodes, prefix: "bench-".into(), cpu: "32".into(), memory: "128Gi".into(), pods: 110, ..Default::default() };
    let sim_client = client.clone();
    let sim_task = tokio::spawn(async move { simnodes::run(sim_client, sim).await });
    let nodes: Api<Node> = Api::all(client.clone());
    let registering = Instant::now();
    loop {
        let count = nodes.list_metadata(&ListParams::default()).await?.items.len();
        if count >= args.nodes {
            break;
        }
        if registering.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("only {count} of {} nodes registered in 10 minutes", args.nodes);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("nodes registered: {} in {:.1} s", args.nodes, registering.elapsed().as_secs_f64());

    let ns = "bench-scheduler";
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}}))?).await?;
    // One watch sees every pod: first sighting, binding, Running. It decodes only what it
    // reads, so the measurement costs the CPU it measures as little as it can.
    let pods: Api<MeasuredPod> = Api::namespaced(client.clone(), ns);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, bool, bool, Instant)>();
    let watch_task = tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default()).default_backoff().applied_objects().boxed();
        while let Some(Ok(pod)) = stream.next().await {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let bound = pod.spec.node_name.as_ref().is_some_and(|n| !n.is_empty());
            let running = pod.status.phase.as_deref() == Some("Running");
            if tx.send((name, bound, running, Instant::now())).is_err() {
                return;
            }
        }
    });

    // CPU used from here until every pod runs, per process: a figure the VM's speed on the day
    // moves far less than a rate does.
    let mut measured: Vec<(&str, u32)> = vec![(if args.split { "API server" } else { "server" }, pid)];
    measured.extend(components.iter().map(|(what, c)| (*what, c.0.id())));
    measured.push(("bench process (simulated nodes, watch)", std::process::id()));
    let cpu_before: Vec<Option<f64>> = measured.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();

    let per = args.pods.div_ceil(args.deployments.max(1));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    for i in 0..args.deployments {
        let replicas = per.min(args.pods.saturating_sub(i * per));
        if replicas == 0 {
            break;
        }
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": format!("d{i}")},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": format!("d{i}")}},
                     "template": {"metadata": {"labels": {"app": format!("d{i}")}},
                                  "spec": {"containers": [{"name": "c", "image": "bench", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}
        }))?;
        deployments.create(&PostParams::default(), &d).await.context("creating a deployment")?;
    }
    println!("deployments created in {:.1} s", start.elapsed().as_secs_f64());

    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut bound_at: HashMap<String, Instant> = HashMap::new();
    let mut running = 0usize;
    let mut running_names = std::collections::HashSet::new();
    let mut first_bound: Option<Instant> = None;
    let mut last_bound = start;
    let deadline = start + Duration::from_secs(1800);
    // Progress every 10 s, so a phase that lags (binding, or reporting Running) shows.
    let mut next_progress = start + Duration::from_secs(10);
    while running < args.pods && Instant::now() < deadline {
        if Instant::now() >= next_progress {
            let cpu: Vec<String> = measured.iter().zip(&cpu_before).filter_map(|((what, pid), before)| Some(format!("{what} {:.1} s", cpu_seconds(*pid)? - (*before)?))).collect();
            println!("  at {:>4.0} s: {} bound, {running} Running; CPU {}", start.elapsed().as_secs_f64(), bound_at.len(), cpu.join(", "));
            next_progress += Duration::from_secs(10);
        }
        let Ok(Some((name, bound, is_running, at))) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await else { break };
        seen.entry(name.clone()).or_insert(at);
        if bound && !bound_at.contains_key(&name) {
            bound_at.insert(name.clone(), at);
            first_bound.get_or_insert(at);
            last_bound = at;
        }
        if is_running && running_names.insert(name) {
            running += 1;
        }
    }
    let all_running = start.elapsed();
    let cpu_used: Vec<Option<f64>> = measured.iter().zip(&cpu_before).map(|((_, pid), before)| Some(cpu_seconds(*pid)? - (*before)?)).collect();
    let mut latencies: Vec<Duration> = bound_at.iter().filter_map(|(name, at)| seen.get(name).map(|s| at.saturating_duration_since(*s))).collect();
    latencies.sort();
    let span = last_bound.saturating_duration_since(first_bound.unwrap_or(start)).as_secs_f64().max(0.001);
    println!(
        "scheduled {} pods in {:.1} s = {:.0} pods/s; per-pod latency p50 {} p99 {}",
        bound_at.len(),
        span,
        bound_at.len() as f64 / span,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99))
    );
    println!("{running} of {} pods Running {:.1} s after the first deployment was created", args.pods, all_running.as_secs_f64());
    let per_pod = |seconds: f64| seconds * 1000.0 / running.max(1) as f64;
    let parts: Vec<String> = measured.iter().zip(&cpu_used).filter_map(|((what, _), used)| used.map(|u| format!("{what} {:.2}", per_pod(u)))).collect();
    let total: f64 = cpu_used.iter().flatten().sum();
    println!("CPU per running pod: {:.2} ms ({})", per_pod(total), parts.join(", "));
    if let Some(kib) = rss_kib(pid) {
        let what = if args.split { "API server RSS" } else { "server RSS (API, controllers, scheduler)" };
        println!("{what}: {:.1} MiB", kib as f64 / 1024.0);
    }
    for (what, component) in &components {
        if let Some(kib) = rss_kib(component.0.id()) {
            println!("{what} RSS: {:.1} MiB", kib as f64 / 1024.0);
        }
    }
    if let Some(kib) = rss_kib(std::process::id()) {
        println!("bench process RSS (simulated nodes and watch): {:.1} MiB", kib as f64 / 1024.0);
    }
    print_request_mix(&client, args.pods).await;
    sim_task.abort();
    watch_task.abort();
    drop(components);
    drop(child);
    Ok(())
}

/// Where the API server's work came from: requests per pod, by verb and resource (from its
/// `apiserver_request_total`), so a change in the mix shows next to the throughput it explains.
async fn print_request_mix(client: &kube::Client, pods: usize) {
    let request = match http::Request::get("/metrics").body(Vec::new()) {
        Ok(request) => request,
        Err(_) => return,
    };
    let Ok(text) = client.request_text(request).await else {
        println!("(the server's /metrics could not be read)");
        return;
    };
    let mut totals: HashMap<(String, String), f64> = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let label = |name: &str| line.split(&format!("{name}=\"")).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("").to_string();
        let Some(count) = line.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()) else { continue };
        *totals.entry((label("verb"), label("resource"))).or_default() += count;
    }
    let mut rows: Vec<_> = totals.into_iter().filter(|(_, n)| *n >= pods as f64 / 100.0).collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let all: f64 = rows.iter().map(|(_, n)| n).sum();
    println!("API requests per pod: {:.2} in all", all / pods.max(1) as f64);
    for ((verb, resource), n) in rows {
        println!("  {verb:>7} {resource:<28} {:.2}", n / pods.max(1) as f64);
    }
}
