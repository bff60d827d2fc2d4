//! `berth bench api`: drives an API server over HTTPS the way a busy cluster does and prints what
//! it measured. With no `--kubeconfig` it starts its own `berth server` as a child process on a
//! fresh data dir, so the server's RSS is measured apart from the load generator's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use serde_json::{Value, json};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Create/list/watch throughput and latency of the API server.
    Api(ApiBench),
    /// Scheduling throughput and latency with simulated nodes and Deployments.
    Scheduler(crate::bench_scheduler::SchedulerBench),
    /// Pod start-up latency and idle cost of a real node agent (containerd; needs root).
    PodStartup(crate::bench_podstartup::PodStartupBench),
}

#[derive(clap::Args)]
pub struct ApiBench {
    /// Use this server instead of starting one (its RSS is then not measured).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Concurrent clients creating ConfigMaps.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// ConfigMaps created in the create phase.
    #[arg(long, default_value_t = 20_000)]
    creates: usize,
    /// Pods created, then listed.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Concurrent watchers in the watch phase.
    #[arg(long, default_value_t = 1_000)]
    watchers: usize,
    /// Writes whose delivery to every watcher is timed.
    #[arg(long, default_value_t = 20)]
    watch_events: usize,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Api(args) => api(args).await,
        BenchCommand::Scheduler(args) => crate::bench_scheduler::run(args).await,
        BenchCommand::PodStartup(args) => crate::bench_podstartup::run(args).await,
    }
}

pub(crate) struct Child {
    pub(crate) process: std::process::Child,
    _dir: TempDir,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `berth server` on a free loopback port and waits for its kubeconfig and /readyz.
/// `extra` are server flags (the API bench turns the controllers and scheduler off: it measures
/// the API server, and a scheduler answering thousands of node-less pods is another workload).
pub(crate) async fn start_child(extra: &[&str]) -> anyhow::Result<(Child, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("berth-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let process = std::process::Command::new(std::env::current_exe()?)
        .args(["server", "--data-dir"])
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        // Benchmarks measure the control plane; a node agent would need containerd.
        .arg("--disable-agent")
        .env("BERTH_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("starting berth server")?;
    let child = Child { process, _dir: TempDir(dir.clone()) };
    let kubeconfig = dir.join("admin.kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if kubeconfig.exists()
            && let Ok(client) = Client::from_kubeconfig(&kubeconfig, 1).await
            && client.request("GET", "/readyz", None).await.is_ok_and(|(code, _)| code == 200)
        {
            return Ok((child, kubeconfig));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("berth server did not become ready within 30s")
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user and system) a process has used so far, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are fixed.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks / per_second as f64)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn api(args: ApiBench) -> anyhow::Result<()> {
    let (child, kubeconfig) = match &args.kubeconfig {
        Some(k) => (None, k.clone()),
        None => {
            let (c, k) = start_child(&["--disable-controllers", "--disable-scheduler"]).await?;
            (Some(c), k)
        }
    };
    let pid = child.as_ref().map(|c| c.process.id());
    let client = Arc::new(Client::from_kubeconfig(&kubeconfig, 8).await?);
    let ns = format!("bench-{}", std::process::id());
    client.must("POST", "/api/v1/namespaces", Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))).await?;
    println!("berth bench api: {} clients, {} creates, {} pods, {} watchers", args.clients, args.creates, args.pods, args.watchers);
    if child.is_some() {
        println!("(the API server alone: controllers and scheduler disabled; `berth bench scheduler` measures them)");
    }

    // 1. ConfigMap creates from concurrent clients.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let client = client.clone();
        let ns = ns.clone();
        let count = args.creates / args.clients + usize::from(c < args.creates % args.clients);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            for i in 0..count {
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{c}-{i}"), "labels": {"bench": "create"}}, "data": {"key": "value", "n": i.to_string()}});
                let t = Instant::now();
                client.must("POST", &format!("/api/v1/namespaces/{ns}/configmaps"), Some(body)).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "create configmaps: {} in {:.2} s = {:.0} creates/s; latency p50 {} p99 {}",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99))
    );

    // 2. Pods, then full lists.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let client = client.clone();
        let ns = ns.clone();
        let count = args.pods / args.clients + usize::from(c < args.pods % args.clients);
        tasks.push(tokio::spawn(async move {
            for i in 0..count {
                let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("pod-{c}-{i}"), "labels": {"app": "bench", "shard": (i % 10).to_string()}},
                    "spec": {"containers": [{"name": "main", "image": "busybox:1.36", "command": ["sleep", "3600"], "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}});
                client.must("POST", &format!("/api/v1/namespaces/{ns}/pods"), Some(body)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!("create pods: {} in {:.2} s", args.pods, started.elapsed().as_secs_f64());
    if let Some(pid) = pid
        && let Some(rss) = rss_kib(pid)
    {
        println!("server RSS after {} pods and {} configmaps, before listing: {:.1} MiB", args.pods, args.creates, rss as f64 / 1024.0);
    }
    let mut list_times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let (code, body) = client.request("GET", "/api/v1/pods", None).await?;
        let took = t.elapsed();
        if code != 200 {
            bail!("list pods answered {code}");
        }
        let items = serde_json::from_slice::<Value>(&body)?["items"].as_array().map_or(0, Vec::len);
        if items < args.pods {
            bail!("list returned {items} pods, expected at least {}", args.pods);
        }
        list_times.push(took);
    }
    list_times.sort();
    println!("list {} pods: median {} (best {}, worst {})", args.pods, ms(list_times[2]), ms(list_times[0]), ms(list_times[4]));
    if let Some(pid) = pid
        && let Some(rss) = rss_kib(pid)
    {
        println!("server RSS after {} pods and {} configmaps: {:.1} MiB", args.pods, args.creates, rss as f64 / 1024.0);
    }

    // 3. Watch fan-out: many watchers on one namespace's ConfigMaps; time from a write's answer
    // to its event arriving at each watcher.
    let watch_ns = format!("{ns}-watch");
    client.must("POST", "/api/v1/namespaces", Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": watch_ns}}))).await?;
    let rv = client.must("GET", &format!("/api/v1/namespaces/{watch_ns}/configmaps"), None).await?["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
    let (arrivals_tx, mut arrivals_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut watchers = Vec::new();
    let ready = Arc::new(tokio::sync::Barrier::new(args.watchers + 1));
    for _ in 0..args.watchers {
        let client = client.clone();
        let path = format!("/api/v1/namespaces/{watch_ns}/configmaps?watch=true&resourceVersion={rv}");
        let tx = arrivals_tx.clone();
        let ready = ready.clone();
        watchers.push(tokio::spawn(async move {
            let mut body = match client.stream("GET", &path).await {
                Ok(b) => b,
                Err(e) => {
                    ready.wait().await;
                    return Err(e);
                }
            };
            ready.wait().await;
            let mut buf = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                let Some(data) = frame.data_ref() else { continue };
                buf.extend_from_slice(data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if let Ok(event) = serde_json::from_slice::<Value>(&line)
                        && let Some(name) = event["object"]["metadata"]["name"].as_str()
                    {
                        let _ = tx.send((name.to_string(), Instant::now()));
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    drop(arrivals_tx);
    ready.wait().await;
    let mut delivery = Vec::new();
    for i in 0..args.watch_events {
        let name = format!("watched-{i}");
        let sent = Instant::now();
        client.must("POST", &format!("/api/v1/namespaces/{watch_ns}/configmaps"), Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}))).await?;
        let mut seen = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while seen < args.watchers {
            match tokio::time::timeout_at(deadline, arrivals_rx.recv()).await {
                Ok(Some((n, at))) if n == name => {
                    seen += 1;
                    delivery.push(at.saturating_duration_since(sent));
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("watchers ended early"),
                Err(_) => bail!("only {seen} of {} watchers saw {name} within 30s", args.watchers),
            }
        }
    }
    for w in &watchers {
        w.abort();
    }
    delivery.sort();
    println!(
        "watch delivery to {} watchers ({} events): p50 {} p99 {} max {}",
        args.watchers,
        args.watch_events,
        ms(percentile(&delivery, 0.5)),
        ms(percentile(&delivery, 0.99)),
        ms(*delivery.last().unwrap_or(&Duration::ZERO))
    );
    if let Some(pid) = pid
        && let Some(rss) = rss_kib(pid)
    {
        println!("server RSS at the end: {:.1} MiB", rss as f64 / 1024.0);
    }
    drop(child);
    Ok(())
}

/// A minimal HTTPS/2 client with the kubeconfig's client certificate, multiplexing requests over
/// a few connections.
pub struct Client {
    senders: Vec<http2::SendRequest<Full<Bytes>>>,
    next: std::sync::atomic::AtomicUsize,
    authority: String,
}

fn kubeconfig_field(doc: &Value, pointer: &str) -> anyhow::Result<Vec<u8>> {
    let text = doc.pointer(pointer).and_then(Value::as_str).ok_or_else(|| anyhow!("kubeconfig has no {pointer}"))?;
    Ok(base64::engine::general_purpose::STANDARD.decode(text.trim())?)
}

impl Client {
    pub async fn from_kubeconfig(path: &Path, connections: usize) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let doc = yaml_to_json(&text)?;
        let server = doc.pointer("/clusters/0/cluster/server").and_then(Value::as_str).ok_or_else(|| anyhow!("kubeconfig has no server"))?;
        let authority = server.trim_start_matches("https://").trim_end_matches('/').to_string();
        let ca = kubeconfig_field(&doc, "/clusters/0/cluster/certificate-authority-data")?;
        let cert = kubeconfig_field(&doc, "/users/0/user/client-certificate-data")?;
        let key = kubeconfig_field(&doc, "/users/0/user/client-key-data")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca) {
            roots.add(c?)?;
        }
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(&key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?.with_root_certificates(roots).with_client_auth_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let host = authority.rsplit_once(':').map_or(authority.as_str(), |(h, _)| h).to_string();
        let mut senders = Vec::new();
        for _ in 0..connections.max(1) {
            let tcp = tokio::net::TcpStream::connect(&authority).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(ServerName::try_from(host.clone())?, tcp).await?;
            let (sender, conn) = http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            senders.push(sender);
        }
        Ok(Self { senders, next: Default::default(), authority })
    }

    fn sender(&self) -> http2::SendRequest<Full<Bytes>> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.senders.len();
        self.senders[i].clone()
    }

    fn build(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<http::Request<Full<Bytes>>> {
        let bytes = body.map(|b| Bytes::from(serde_json::to_vec(&b).unwrap_or_default())).unwrap_or_default();
        Ok(http::Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Full::new(bytes))?)
    }

    pub async fn request(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Bytes)> {
        let req = self.build(method, path, body)?;
        let mut sender = self.sender();
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((code, bytes))
    }

    pub async fn must(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (code, bytes) = self.request(method, path, body).await?;
        if !(200..300).contains(&code) {
            bail!("{method} {path} answered {code}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub async fn stream(&self, method: &str, path: &str) -> anyhow::Result<hyper::body::Incoming> {
        let req = self.build(method, path, None)?;
        let mut sender = self.sender();
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        if resp.status() != 200 {
            bail!("{method} {path} answered {}", resp.status());
        }
        Ok(resp.into_body())
    }
}

/// Our kubeconfigs are simple YAML; parse them with the same YAML library the server uses.
fn yaml_to_json(text: &str) -> anyhow::Result<Value> {
    let value: Value = apiserver::http::decode_object("application/yaml", text.as_bytes()).map_err(|e| anyhow!(e.message))?;
    Ok(value)
}
