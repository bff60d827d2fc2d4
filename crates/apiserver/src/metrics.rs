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

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, String, u16), u64>,
    latency: BTreeMap<(String, String), Histogram>,
    watches: BTreeMap<String, i64>,
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
        let h = inner.latency.entry((verb, resource.to_string())).or_default();
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.total += 1;
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
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "apiserver_request_duration_seconds_bucket{{verb=\"{verb}\",resource=\"{resource}\",le=\"{b}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "apiserver_request_duration_seconds_bucket{{verb=\"{verb}\",resource=\"{resource}\",le=\"+Inf\"}} {}", h.total);
            let _ = writeln!(out, "apiserver_request_duration_seconds_sum{{verb=\"{verb}\",resource=\"{resource}\"}} {}", h.sum);
            let _ = writeln!(out, "apiserver_request_duration_seconds_count{{verb=\"{verb}\",resource=\"{resource}\"}} {}", h.total);
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
    }
}
