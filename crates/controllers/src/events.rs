//! An event recorder, as client-go's: controllers say what they did as core/v1 Events on the
//! object concerned (`kubectl describe` and `kubectl get events` show them). A repeat of the same
//! event on the same object within ten minutes bumps the first one's count instead of adding
//! another, as upstream's correlator does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

const SIMILAR_WINDOW: Duration = Duration::from_secs(600);
const REMEMBERED: usize = 4096;

/// Recent events by what makes them the same (object, type, reason, message): the name of the
/// Event written, its count, and when it was last seen.
type Seen = HashMap<String, (String, i32, Instant)>;

#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: &'static str,
    /// The node a per-node component (the kubelet) runs on: the source's host.
    host: Option<String>,
    instance: String,
    seen: Arc<Mutex<Seen>>,
}

impl Recorder {
    pub fn new(client: Client, component: &'static str) -> Self {
        let instance = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "berth".into());
        Self { client, component, host: None, instance, seen: Arc::default() }
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

    /// Records in the background: an event must never hold up or fail the work it describes.
    pub fn record_for(&self, involved: ObjectReference, type_: &str, reason: &str, message: String) {
        let this = self.clone();
        let (type_, reason) = (type_.to_string(), reason.to_string());
        tokio::spawn(async move { this.write(involved, type_, reason, message).await });
    }

    pub fn component(&self) -> &'static str {
        self.component
    }

    async fn write(&self, involved: ObjectReference, type_: String, reason: String, message: String) {
        // A cluster-scoped object (a Node) has no namespace, or upstream's empty one; client-go
        // files its events in "default".
        let ns = involved.namespace.clone().filter(|ns| !ns.is_empty()).unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let now = jiff::Timestamp::now();
        let key = format!("{}/{}/{}/{}", involved.uid.as_deref().unwrap_or(""), type_, reason, message);
        let repeat = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|_, (_, _, at)| at.elapsed() < SIMILAR_WINDOW);
            if seen.len() > REMEMBERED {
                seen.clear();
            }
            match seen.get_mut(&key) {
                Some((name, count, at)) => {
                    *count += 1;
                    *at = Instant::now();
                    Some((name.clone(), *count))
                }
                None => None,
            }
        };
        if let Some((name, count)) = repeat {
            let patch = json!({"count": count, "lastTimestamp": Time(now)});
            if api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await.is_ok() {
                return;
            }
        }
        let name = format!("{}.{:x}", involved.name.as_deref().unwrap_or("object"), now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(ns.clone()), ..Default::default() },
            involved_object: involved,
            reason: Some(reason),
            message: Some(message),
            type_: Some(type_),
            count: Some(1),
            first_timestamp: Some(Time(now)),
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
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                self.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (name, 1, Instant::now()));
            }
            Err(error) => tracing::debug!(%error, "recording an event failed"),
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
