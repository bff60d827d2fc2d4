//! Prometheus metrics in the text exposition format: request counts and latencies by verb,
//! resource and code, and open watches by resource. Names follow kube-apiserver's so existing
//! dashboards and queries work.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use http::Method;

const BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 5.0, 10.0, 60.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    total: u64,
}

impl Histogram {
    fn observe(&mut self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.total += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {}", self.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.total);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.total);
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, String, u16), u64>,
    latency: BTreeMap<(String, String), Histogram>,
    watches: BTreeMap<String, i64>,
    storage: BTreeMap<(&'static str, String), Histogram>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn observe_request(&self, method: &Method, verb: &str, resource: &str, code: u16, elapsed: Duration) {
        let verb = if verb.is_empty() { method.as_str().to_ascii_uppercase() } else { verb.to_ascii_uppercase() };
        let mut inner = self.lock();
        *inner.requests.entry((verb.clone(), resource.to_string(), method.as_str().to_string(), code)).or_default() += 1;
        if verb == "WATCH" {
            return;
        }
        inner.latency.entry((verb, resource.to_string())).or_default().observe(elapsed);
    }

    /// One store operation (`get`, `list`, `create`, `update`, `delete`) on a resource prefix.
    pub fn observe_storage(&self, operation: &'static str, resource: &str, elapsed: Duration) {
        self.lock().storage.entry((operation, resource.to_string())).or_default().observe(elapsed);
    }

    pub fn watch_started(&self, resource: &str) {
        *self.lock().watches.entry(resource.to_string()).or_default() += 1;
    }

    pub fn watch_ended(&self, resource: &str) {
        *self.lock().watches.entry(resource.to_string()).or_default() -= 1;
    }

    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, resource and HTTP response code.\n# TYPE apiserver_request_total counter\n");
        for ((verb, resource, method, code), n) in &inner.requests {
            let _ = writeln!(out, "apiserver_request_total{{verb=\"{verb}\",resource=\"{resource}\",method=\"{method}\",code=\"{code}\"}} {n}");
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb and resource.\n# TYPE apiserver_request_duration_seconds histogram\n");
        for ((verb, resource), h) in &inner.latency {
            h.render(&mut out, "apiserver_request_duration_seconds", &format!("verb=\"{verb}\",resource=\"{resource}\""));
        }
        out.push_str("# HELP apiserver_storage_request_duration_seconds Store request latency in seconds for each operation and resource.\n# TYPE apiserver_storage_request_duration_seconds histogram\n");
        for ((operation, resource), h) in &inner.storage {
            h.render(&mut out, "apiserver_storage_request_duration_seconds", &format!("operation=\"{operation}\",type=\"{resource}\""));
        }
        out.push_str("# HELP apiserver_registered_watchers Number of currently open watches for a given resource.\n# TYPE apiserver_registered_watchers gauge\n");
        for (resource, n) in &inner.watches {
            let _ = writeln!(out, "apiserver_registered_watchers{{resource=\"{resource}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_histograms() {
        let m = Metrics::default();
        m.observe_request(&Method::GET, "list", "pods", 200, Duration::from_millis(3));
        m.observe_request(&Method::POST, "create", "pods", 201, Duration::from_millis(30));
        m.watch_started("pods");
        let text = m.render();
        assert!(text.contains("apiserver_request_total{verb=\"LIST\",resource=\"pods\",method=\"GET\",code=\"200\"} 1"));
        assert!(text.contains("apiserver_request_duration_seconds_bucket{verb=\"CREATE\",resource=\"pods\",le=\"0.05\"} 1"));
        assert!(text.contains("apiserver_registered_watchers{resource=\"pods\"} 1"));
        m.observe_storage("create", "pods", Duration::from_millis(2));
        assert!(m.render().contains("apiserver_storage_request_duration_seconds_count{operation=\"create\",type=\"pods\"} 1"));
    }
}

/// A store that times every operation into [`Metrics`], labelled by the resource its key names
/// (`/registry/<group>/<resource>/...`).
pub struct MeteredStore {
    inner: std::sync::Arc<dyn store::Store>,
    metrics: std::sync::Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: std::sync::Arc<dyn store::Store>, metrics: std::sync::Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

fn resource_of(key: &str) -> &str {
    key.trim_start_matches("/registry/").split('/').nth(1).unwrap_or("")
}

#[async_trait::async_trait]
impl store::Store for MeteredStore {
    async fn get(&self, key: &str) -> store::Result<(Option<store::KeyValue>, store::Revision)> {
        let started = std::time::Instant::now();
        let out = self.inner.get(key).await;
        self.metrics.observe_storage("get", resource_of(key), started.elapsed());
        out
    }
    async fn range(&self, request: store::RangeRequest) -> store::Result<store::RangeResponse> {
        let started = std::time::Instant::now();
        let resource = resource_of(&request.prefix).to_string();
        let out = self.inner.range(request).await;
        self.metrics.observe_storage("list", &resource, started.elapsed());
        out
    }
    async fn create(&self, key: &str, value: bytes::Bytes) -> store::Result<store::KeyValue> {
        let started = std::time::Instant::now();
        let out = self.inner.create(key, value).await;
        self.metrics.observe_storage("create", resource_of(key), started.elapsed());
        out
    }
    async fn update(&self, key: &str, value: bytes::Bytes, expected_revision: store::Revision) -> store::Result<store::KeyValue> {
        let started = std::time::Instant::now();
        let out = self.inner.update(key, value, expected_revision).await;
        self.metrics.observe_storage("update", resource_of(key), started.elapsed());
        out
    }
    async fn delete(&self, key: &str, expected_revision: Option<store::Revision>) -> store::Result<(store::KeyValue, store::Revision)> {
        let started = std::time::Instant::now();
        let out = self.inner.delete(key, expected_revision).await;
        self.metrics.observe_storage("delete", resource_of(key), started.elapsed());
        out
    }
    fn watch(&self, prefix: &str, after: store::Revision) -> store::Result<store::Watch> {
        self.inner.watch(prefix, after)
    }
    async fn compact(&self, revision: store::Revision) -> store::Result<()> {
        self.inner.compact(revision).await
    }
    fn current_revision(&self) -> store::Revision {
        self.inner.current_revision()
    }
    fn compacted_revision(&self) -> store::Revision {
        self.inner.compacted_revision()
    }
}
