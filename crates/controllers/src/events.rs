//! An event recorder, as client-go's: controllers say what they did as core/v1 Events on the
//! object concerned (`kubectl describe` and `kubectl get events` show them). Every event passes
//! upstream's correlator first (client-go `tools/record`, same defaults):
//! - a repeat of the same event bumps the first one's count instead of adding another;
//! - more than ten events on one object that differ only in message within ten minutes are
//!   combined into one ("(combined from similar events): ...") whose count grows;
//! - each source may write 25 events about one object at once, then one per five minutes;
//!   the rest are dropped (their counts still grow, so the next write carries them).
//!
//! The last one is what keeps a ReplicaSet of 10,000 pods from writing 10,000 events.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

/// Upstream's `defaultAggregateIntervalInSeconds`: similar events further apart start afresh.
const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
/// Upstream's `defaultAggregateMaxEvents`: distinct messages before similar events combine.
const AGGREGATE_MAX_EVENTS: usize = 10;
/// Upstream's `defaultSpamBurst` and `defaultSpamQPS` (one event per 300 s).
const SPAM_BURST: f64 = 25.0;
const SPAM_REFILL: Duration = Duration::from_secs(300);
/// Upstream's `maxLruCacheEntries`, per cache.
const REMEMBERED: usize = 4096;

/// A map that forgets its least recently used entries beyond [`REMEMBERED`] (client-go's
/// caches are LRUs of that size). Eviction is done in bulk, so its cost is amortised.
struct Lru<V> {
    entries: HashMap<String, (V, u64)>,
    clock: u64,
}

impl<V> Default for Lru<V> {
    fn default() -> Self {
        Self { entries: HashMap::new(), clock: 0 }
    }
}

impl<V> Lru<V> {
    fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> V) -> &mut V {
        self.clock += 1;
        let clock = self.clock;
        if !self.entries.contains_key(key) {
            if self.entries.len() >= REMEMBERED {
                self.evict_oldest(REMEMBERED / 8);
            }
            self.entries.insert(key.to_string(), (make(), clock));
        }
        let (value, used) = self.entries.get_mut(key).expect("present: inserted above");
        *used = clock;
        value
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(value, used)| {
            *used = clock;
            value
        })
    }

    fn insert(&mut self, key: String, value: V) {
        self.clock += 1;
        if self.entries.len() >= REMEMBERED && !self.entries.contains_key(&key) {
            self.evict_oldest(REMEMBERED / 8);
        }
        self.entries.insert(key, (value, self.clock));
    }

    fn evict_oldest(&mut self, count: usize) {
        let mut ages: Vec<u64> = self.entries.values().map(|(_, used)| *used).collect();
        let count = count.min(ages.len());
        if count == 0 {
            return;
        }
        let (_, cutoff, _) = ages.select_nth_unstable(count - 1);
        let cutoff = *cutoff;
        self.entries.retain(|_, (_, used)| *used > cutoff);
    }
}

/// Similar events (same object, type and reason) seen recently: their distinct messages.
struct Aggregate {
    messages: HashSet<String>,
    last: Instant,
}

/// The last Event written (or about to be) for one event key.
struct Observed {
    name: String,
    count: i32,
    first: jiff::Timestamp,
}

/// A token bucket per source and object.
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// What the correlator decided for one event.
#[derive(Debug, PartialEq)]
enum Write {
    /// A new Event object.
    Create { name: String, message: String, count: i32, first: jiff::Timestamp },
    /// Bump an earlier Event; created afresh with `count` if it is gone.
    Patch { name: String, message: String, count: i32, first: jiff::Timestamp },
    /// Dropped by the spam filter.
    Skip,
}

#[derive(Default)]
struct Correlator {
    aggregates: Lru<Aggregate>,
    observed: Lru<Observed>,
    spam: Lru<Bucket>,
}

/// What identifies an event for the correlator; the source is the recorder's own.
struct Incoming<'a> {
    involved: &'a ObjectReference,
    type_: &'a str,
    reason: &'a str,
    message: &'a str,
}

impl Correlator {
    /// Upstream's EventCorrelate: aggregate, then observe (dedupe), then filter spam. Counts
    /// grow even for events the filter drops, so the next write that passes is accurate.
    fn correlate(&mut self, event: &Incoming, now: Instant, timestamp: jiff::Timestamp) -> Write {
        let object = object_key(event.involved);
        let aggregate_key = format!("{object}\x00{}\x00{}", event.type_, event.reason);
        let aggregate = self.aggregates.get_or_insert_with(&aggregate_key, || Aggregate { messages: HashSet::new(), last: now });
        if now.duration_since(aggregate.last) > AGGREGATE_WINDOW {
            aggregate.messages.clear();
        }
        aggregate.messages.insert(event.message.to_string());
        aggregate.last = now;
        let (key, message) = if aggregate.messages.len() < AGGREGATE_MAX_EVENTS {
            let field_path = event.involved.field_path.as_deref().unwrap_or("");
            (format!("{aggregate_key}\x00{field_path}\x00{}", event.message), event.message.to_string())
        } else {
            // As upstream: drop one remembered message so the set stays at the threshold.
            if let Some(any) = aggregate.messages.iter().next().cloned() {
                aggregate.messages.remove(&any);
            }
            (aggregate_key, format!("(combined from similar events): {}", event.message))
        };

        let write = match self.observed.get_mut(&key) {
            Some(seen) => {
                seen.count = seen.count.saturating_add(1);
                Write::Patch { name: seen.name.clone(), message, count: seen.count, first: seen.first }
            }
            None => {
                let name = event_name(event.involved, timestamp);
                self.observed.insert(key, Observed { name: name.clone(), count: 1, first: timestamp });
                Write::Create { name, message, count: 1, first: timestamp }
            }
        };

        let bucket = self.spam.get_or_insert_with(&object, || Bucket { tokens: SPAM_BURST, refilled: now });
        let refill = now.duration_since(bucket.refilled).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        bucket.tokens = (bucket.tokens + refill).min(SPAM_BURST);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            return Write::Skip;
        }
        bucket.tokens -= 1.0;
        write
    }
}

/// The involved object as upstream's spam key names it (the source is the recorder's).
fn object_key(involved: &ObjectReference) -> String {
    let part = |s: &Option<String>| s.as_deref().unwrap_or("").to_string();
    [part(&involved.kind), part(&involved.namespace), part(&involved.name), part(&involved.uid), part(&involved.api_version)].join("\x00")
}

/// Upstream's event names: the object's name and the time in hex nanoseconds.
fn event_name(involved: &ObjectReference, now: jiff::Timestamp) -> String {
    format!("{}.{:x}", involved.name.as_deref().unwrap_or("object"), now.as_nanosecond())
}

#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: &'static str,
    /// The node a per-node component (the kubelet) runs on: the source's host.
    host: Option<String>,
    instance: String,
    correlator: Arc<Mutex<Correlator>>,
}

impl Recorder {
    pub fn new(client: Client, component: &'static str) -> Self {
        let instance = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "berth".into());
        Self { client, component, host: None, instance, correlator: Arc::default() }
    }

    /// As client-go's EventSource{Host}: the kubelet's events name its node, which is also their
    /// reporting instance.
    pub fn with_host(self, host: impl Into<String>) -> Self {
        let host = host.into();
        Self { instance: host.clone(), host: Some(host), ..self }
    }

    pub fn normal<K: Resource<DynamicType = ()>>(&self, object: &K, reason: &str, message: String) {
        self.record(object, "Normal", reason, message);
    }

    pub fn warning<K: Resource<DynamicType = ()>>(&self, object: &K, reason: &str, message: String) {
        self.record(object, "Warning", reason, message);
    }

    pub fn record<K: Resource<DynamicType = ()>>(&self, object: &K, type_: &str, reason: &str, message: String) {
        self.record_for(reference(object, &K::api_version(&()), &K::kind(&())), type_, reason, message);
    }

    /// Correlates now (so events keep their order) and writes in the background: an event must
    /// never hold up or fail the work it describes.
    pub fn record_for(&self, involved: ObjectReference, type_: &str, reason: &str, message: String) {
        let now = jiff::Timestamp::now();
        let incoming = Incoming { involved: &involved, type_, reason, message: &message };
        let write = self.correlator.lock().unwrap_or_else(|e| e.into_inner()).correlate(&incoming, Instant::now(), now);
        if write == Write::Skip {
            tracing::debug!(reason, "event dropped by the spam filter");
            return;
        }
        let this = self.clone();
        let (type_, reason) = (type_.to_string(), reason.to_string());
        tokio::spawn(async move { this.write(involved, type_, reason, write, now).await });
    }

    pub fn component(&self) -> &'static str {
        self.component
    }

    async fn write(&self, involved: ObjectReference, type_: String, reason: String, write: Write, now: jiff::Timestamp) {
        // A cluster-scoped object (a Node) has no namespace, or upstream's empty one; client-go
        // files its events in "default".
        let ns = involved.namespace.clone().filter(|ns| !ns.is_empty()).unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let (name, message, count, first) = match write {
            Write::Skip => return,
            Write::Patch { name, message, count, first } => {
                let patch = json!({"count": count, "lastTimestamp": Time(now), "message": message});
                match api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                    Ok(_) => return,
                    // Gone (expired, or its create failed): written afresh, as upstream does.
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => {
                        tracing::debug!(%error, "updating an event failed");
                        return;
                    }
                }
                (name, message, count, first)
            }
            Write::Create { name, message, count, first } => (name, message, count, first),
        };
        let event = Event {
            metadata: ObjectMeta { name: Some(name), namespace: Some(ns.clone()), ..Default::default() },
            involved_object: involved,
            reason: Some(reason),
            message: Some(message),
            type_: Some(type_),
            count: Some(count),
            first_timestamp: Some(Time(first)),
            last_timestamp: Some(Time(now)),
            // The legacy (core/v1) recorder form: no eventTime, no action.
            event_time: None::<MicroTime>,
            source: Some(EventSource { component: Some(self.component.into()), host: self.host.clone() }),
            reporting_component: Some(self.component.into()),
            reporting_instance: Some(self.instance.clone()),
            action: None,
            related: None,
            series: None,
        };
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            tracing::debug!(%error, "recording an event failed");
        }
    }
}

/// An API error as upstream's event messages quote it: the server's message alone (client-go's
/// StatusError), not kube's debug rendering of the whole Status.
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

/// Whether a create failed because its namespace is being deleted (upstream records no event
/// then: the event could not be written there either).
pub fn namespace_terminating(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

/// A reference to `object` as `apiVersion`/`kind` (for objects handled under another type).
pub fn reference<K: Resource>(object: &K, api_version: &str, kind: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        namespace: object.namespace(),
        name: Some(object.name_any()),
        uid: object.uid(),
        resource_version: object.resource_version(),
        field_path: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str) -> ObjectReference {
        ObjectReference { api_version: Some("apps/v1".into()), kind: Some("ReplicaSet".into()), namespace: Some("ns".into()), name: Some(name.into()), uid: Some(format!("uid-{name}")), ..Default::default() }
    }

    fn correlate(c: &mut Correlator, involved: &ObjectReference, reason: &str, message: &str, now: Instant) -> Write {
        c.correlate(&Incoming { involved, type_: "Normal", reason, message }, now, jiff::Timestamp::now())
    }

    #[test]
    fn a_repeat_bumps_the_count_of_the_first_event() {
        let mut c = Correlator::default();
        let now = Instant::now();
        let Write::Create { name, count: 1, .. } = correlate(&mut c, &rs("a"), "BackOff", "Back-off", now) else { panic!("first is created") };
        let Write::Patch { name: patched, count: 2, message, .. } = correlate(&mut c, &rs("a"), "BackOff", "Back-off", now) else { panic!("repeat is a patch") };
        assert_eq!((patched, message.as_str()), (name, "Back-off"));
        // Another object's event is its own.
        assert!(matches!(correlate(&mut c, &rs("b"), "BackOff", "Back-off", now), Write::Create { .. }));
    }

    #[test]
    fn similar_events_combine_after_ten_messages() {
        let mut c = Correlator::default();
        let now = Instant::now();
        for i in 0..9 {
            let write = correlate(&mut c, &rs("a"), "SuccessfulCreate", &format!("Created pod: p{i}"), now);
            assert!(matches!(write, Write::Create { count: 1, .. }), "event {i}: {write:?}");
        }
        let Write::Create { name, message, .. } = correlate(&mut c, &rs("a"), "SuccessfulCreate", "Created pod: p9", now) else { panic!("tenth starts the combined event") };
        assert_eq!(message, "(combined from similar events): Created pod: p9");
        let Write::Patch { name: patched, message, count: 2, .. } = correlate(&mut c, &rs("a"), "SuccessfulCreate", "Created pod: p10", now) else { panic!("then it is bumped") };
        assert_eq!((patched, message.as_str()), (name, "(combined from similar events): Created pod: p10"));
        // Another reason is not similar.
        assert!(matches!(correlate(&mut c, &rs("a"), "SuccessfulDelete", "Deleted pod: p0", now), Write::Create { .. }));
        // Ten minutes later the messages start counting afresh.
        let later = now + AGGREGATE_WINDOW + Duration::from_secs(1);
        let write = correlate(&mut c, &rs("a"), "SuccessfulCreate", "Created pod: q0", later);
        assert!(matches!(write, Write::Create { ref message, .. } if message == "Created pod: q0"));
    }

    #[test]
    fn spam_filter_allows_a_burst_of_25_per_object_then_one_per_five_minutes() {
        let mut c = Correlator::default();
        let now = Instant::now();
        let written = (0..100).filter(|i| correlate(&mut c, &rs("a"), "SuccessfulCreate", &format!("Created pod: p{i}"), now) != Write::Skip).count();
        assert_eq!(written, 25);
        // Another object has its own bucket.
        assert_ne!(correlate(&mut c, &rs("b"), "SuccessfulCreate", "Created pod: x", now), Write::Skip);
        assert_eq!(correlate(&mut c, &rs("a"), "SuccessfulCreate", "Created pod: p100", now + Duration::from_secs(200)), Write::Skip);
        // The count of the combined event kept growing while its writes were dropped.
        let Write::Patch { count, .. } = correlate(&mut c, &rs("a"), "SuccessfulCreate", "Created pod: p101", now + SPAM_REFILL) else { panic!("a token came back") };
        assert_eq!(count, 93);
        assert_eq!(correlate(&mut c, &rs("a"), "SuccessfulCreate", "Created pod: p102", now + SPAM_REFILL), Write::Skip);
    }

    #[test]
    fn the_caches_forget_the_least_recently_used() {
        let mut lru: Lru<u32> = Lru::default();
        for i in 0..REMEMBERED as u32 {
            lru.insert(format!("k{i}"), i);
        }
        assert!(lru.get_mut("k0").is_some());
        lru.insert("new".into(), 0);
        assert!(lru.entries.len() <= REMEMBERED);
        assert!(lru.get_mut("k0").is_some(), "recently used stays");
        assert!(lru.get_mut("k1").is_none(), "oldest goes");
        assert!(lru.get_mut("new").is_some());
    }
}
