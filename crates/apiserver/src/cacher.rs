//! The watch cache: one store watch per resource, shared by every watcher of that resource.
//!
//! As kube-apiserver's cacher does, each change is taken from the store once, decoded at most once
//! and serialized at most once per event type, however many watchers receive it; a watcher
//! without selectors that wants plain JSON gets the pre-built line and never parses the object.
//! A window of recent events lets a new watch start from a recent revision without reading
//! history from the store. A watcher that starts before the window, or falls behind it, reads
//! from the store directly (which answers 410 Gone once that history is compacted).
//!
//! Lists need no cache of their own here: the embedded store keeps the current state in memory,
//! so `resourceVersion=0` and consistent lists never touch the disk.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use serde_json::Value;
use store::{Event, EventKind, Revision, Store, StoreError};
use tokio::sync::broadcast;

use crate::objects;
use crate::projection::{self, Paths};

/// Events kept per resource for watches that start slightly in the past. The window holds the
/// raw events only (their bytes are shared with the store), not what watchers derived from them,
/// so it costs little memory.
const WINDOW: usize = 512;
/// Events a slow watcher may fall behind the live feed before it is moved to the store.
const FANOUT_BUFFER: usize = 1024;

/// `ADDED`, `MODIFIED` or `DELETED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchType {
    Added,
    Modified,
    Deleted,
}

impl WatchType {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchType::Added => "ADDED",
            WatchType::Modified => "MODIFIED",
            WatchType::Deleted => "DELETED",
        }
    }
}

/// One store change with what watchers derive from it, computed once on first use.
pub struct CachedEvent {
    pub event: Event,
    object: OnceLock<Option<Value>>,
    prev: OnceLock<Option<Value>>,
    /// The object and its previous state cut down to what selectors read.
    selectable: OnceLock<Option<Value>>,
    selectable_prev: OnceLock<Option<Value>>,
    lines: [OnceLock<Bytes>; 3],
    metadata_lines: [OnceLock<Bytes>; 3],
}

impl CachedEvent {
    fn new(event: Event) -> Self {
        Self {
            event,
            object: OnceLock::new(),
            prev: OnceLock::new(),
            selectable: OnceLock::new(),
            selectable_prev: OnceLock::new(),
            lines: Default::default(),
            metadata_lines: Default::default(),
        }
    }

    pub fn revision(&self) -> Revision {
        self.event.revision()
    }

    /// The object after the change (for a delete, its last state), as stored.
    pub fn object(&self) -> Option<&Value> {
        self.object.get_or_init(|| objects::decode(&self.event.kv).ok()).as_ref()
    }

    /// The object before the change, as stored.
    pub fn prev(&self) -> Option<&Value> {
        self.prev.get_or_init(|| self.event.prev.as_ref().and_then(|kv| objects::decode(kv).ok())).as_ref()
    }

    /// The object after the change with only `paths` decoded. Every watcher of one resource
    /// asks with the same paths (its kind's selectable fields), so the first answer serves all.
    pub fn selectable(&self, paths: &Paths) -> Option<&Value> {
        self.selectable.get_or_init(|| projection::project(&self.event.kv.value, paths).ok()).as_ref()
    }

    /// The object before the change with only `paths` decoded.
    pub fn selectable_prev(&self, paths: &Paths) -> Option<&Value> {
        self.selectable_prev.get_or_init(|| self.event.prev.as_ref().and_then(|kv| projection::project(&kv.value, paths).ok())).as_ref()
    }

    /// What an unfiltered watcher sees.
    pub fn natural_type(&self) -> WatchType {
        match (self.event.kind, self.event.prev.is_some()) {
            (EventKind::Delete, _) => WatchType::Deleted,
            (EventKind::Put, true) => WatchType::Modified,
            (EventKind::Put, false) => WatchType::Added,
        }
    }

    /// `{"type":...,"object":<stored bytes with resourceVersion>}\n`, built from the stored bytes
    /// without parsing them.
    pub fn json_line(&self, kind: WatchType) -> Bytes {
        let slot = match kind {
            WatchType::Added => &self.lines[0],
            WatchType::Modified => &self.lines[1],
            WatchType::Deleted => &self.lines[2],
        };
        slot.get_or_init(|| {
            let mut out = Vec::with_capacity(self.event.kv.value.len() + 48);
            out.extend_from_slice(b"{\"type\":\"");
            out.extend_from_slice(kind.as_str().as_bytes());
            out.extend_from_slice(b"\",\"object\":");
            objects::write_with_resource_version(&mut out, &self.event.kv.value, self.event.kv.mod_revision);
            out.extend_from_slice(b"}\n");
            Bytes::from(out)
        })
        .clone()
    }
}

impl CachedEvent {
    /// `{"type":...,"object":<PartialObjectMetadata>}\n` for metadata-only watchers (the garbage
    /// collector's graph watches every resource this way), cut from the stored bytes: the
    /// metadata is located without building a value, and the revision spliced in.
    pub fn metadata_line(&self, kind: WatchType) -> Bytes {
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(borrow)]
            metadata: Option<&'a serde_json::value::RawValue>,
        }
        let slot = match kind {
            WatchType::Added => &self.metadata_lines[0],
            WatchType::Modified => &self.metadata_lines[1],
            WatchType::Deleted => &self.metadata_lines[2],
        };
        slot.get_or_init(|| {
            let head = serde_json::from_slice::<Head>(&self.event.kv.value).ok();
            let metadata = head.as_ref().and_then(|h| h.metadata).map(|m| m.get()).filter(|m| m.starts_with('{')).unwrap_or("{}");
            let mut out = Vec::with_capacity(metadata.len() + 128);
            out.extend_from_slice(b"{\"type\":\"");
            out.extend_from_slice(kind.as_str().as_bytes());
            out.extend_from_slice(b"\",\"object\":{\"kind\":\"PartialObjectMetadata\",\"apiVersion\":\"meta.k8s.io/v1\",\"metadata\":{\"resourceVersion\":\"");
            out.extend_from_slice(self.event.kv.mod_revision.to_string().as_bytes());
            out.push(b'"');
            let rest = &metadata[1..];
            if !rest.trim_start().starts_with('}') {
                out.push(b',');
            }
            out.extend_from_slice(rest.as_bytes());
            out.extend_from_slice(b"}}\n");
            Bytes::from(out)
        })
        .clone()
    }
}

/// The shared feeds, one per resource key prefix, started on first watch.
pub struct WatchCache {
    store: Arc<dyn Store>,
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
}

struct Feed {
    window: RwLock<Window>,
    fanout: broadcast::Sender<Arc<CachedEvent>>,
}

struct Window {
    /// Every change after this revision is in `events` (or was, until the feed ended).
    complete_after: Revision,
    events: VecDeque<Event>,
    ended: bool,
}

impl Window {
    /// The events after `after` under `prefix`, for a watcher joining or catching up.
    fn replay(&self, after: Revision, prefix: &str) -> VecDeque<Arc<CachedEvent>> {
        self.events.iter().filter(|e| e.revision() > after && e.kv.key.starts_with(prefix)).map(|e| Arc::new(CachedEvent::new(e.clone()))).collect()
    }
}

impl WatchCache {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, feeds: Mutex::new(HashMap::new()) }
    }

    /// Every change under `prefix` (which lies inside `resource_prefix`) after `after`.
    pub fn watch(&self, resource_prefix: &str, prefix: &str, after: Revision) -> Result<CacheWatch, StoreError> {
        if after > self.store.current_revision() || after < self.store.compacted_revision() {
            // The store answers a revision from the future, or one compacted away (410 Gone),
            // even when the window still holds the events.
            return self.direct(prefix, after);
        }
        let feed = self.feed(resource_prefix)?;
        let window = feed.window.read().unwrap_or_else(|e| e.into_inner());
        if window.ended || after < window.complete_after {
            drop(window);
            return self.direct(prefix, after);
        }
        // Subscribing under the window lock means every event is either in the window now or
        // arrives on the receiver; the overlap is skipped by revision.
        let live = feed.fanout.subscribe();
        let backlog = window.replay(after, prefix);
        drop(window);
        Ok(CacheWatch { store: self.store.clone(), prefix: prefix.to_string(), seen: after, backlog, source: Source::Shared { feed, live } })
    }

    fn direct(&self, prefix: &str, after: Revision) -> Result<CacheWatch, StoreError> {
        let watch = self.store.watch(prefix, after)?;
        Ok(CacheWatch { store: self.store.clone(), prefix: prefix.to_string(), seen: after, backlog: VecDeque::new(), source: Source::Direct(watch) })
    }

    fn feed(&self, resource_prefix: &str) -> Result<Arc<Feed>, StoreError> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(feed) = feeds.get(resource_prefix)
            && !feed.window.read().unwrap_or_else(|e| e.into_inner()).ended
        {
            return Ok(feed.clone());
        }
        let start = self.store.current_revision();
        let mut source = self.store.watch(resource_prefix, start)?;
        let (fanout, _) = broadcast::channel(FANOUT_BUFFER);
        let feed = Arc::new(Feed { window: RwLock::new(Window { complete_after: start, events: VecDeque::new(), ended: false }), fanout });
        feeds.insert(resource_prefix.to_string(), feed.clone());
        let weak = Arc::downgrade(&feed);
        tokio::spawn(async move {
            loop {
                let next = source.next().await;
                let Some(feed) = weak.upgrade() else { return };
                let mut window = feed.window.write().unwrap_or_else(|e| e.into_inner());
                match next {
                    Some(Ok(event)) => {
                        if window.events.len() == WINDOW
                            && let Some(oldest) = window.events.pop_front()
                        {
                            window.complete_after = oldest.revision();
                        }
                        window.events.push_back(event.clone());
                        // No receivers is fine: the window still serves the next watcher.
                        let _ = feed.fanout.send(Arc::new(CachedEvent::new(event)));
                    }
                    // The store closed or the feed fell behind compaction: watchers move to the
                    // store, which gives each the right answer for its own position.
                    _ => {
                        window.ended = true;
                        return;
                    }
                }
            }
        });
        Ok(feed)
    }
}

pub struct CacheWatch {
    store: Arc<dyn Store>,
    prefix: String,
    /// Every change at or below this revision was delivered or skipped.
    seen: Revision,
    backlog: VecDeque<Arc<CachedEvent>>,
    source: Source,
}

enum Source {
    Shared { feed: Arc<Feed>, live: broadcast::Receiver<Arc<CachedEvent>> },
    Direct(store::Watch),
}

impl CacheWatch {
    /// The next change under the prefix, in revision order without gaps.
    pub async fn next(&mut self) -> Option<Result<Arc<CachedEvent>, StoreError>> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                self.seen = event.revision();
                return Some(Ok(event));
            }
            let received = match &mut self.source {
                Source::Direct(watch) => {
                    return match watch.next().await? {
                        Ok(event) => {
                            self.seen = event.revision();
                            Some(Ok(Arc::new(CachedEvent::new(event))))
                        }
                        Err(e) => Some(Err(e)),
                    };
                }
                Source::Shared { live, .. } => live.recv().await,
            };
            match received {
                Ok(event) => {
                    if event.revision() > self.seen && event.event.kv.key.starts_with(&self.prefix) {
                        self.seen = event.revision();
                        return Some(Ok(event));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Err(e) = self.resync() {
                        return Some(Err(e));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => match self.store.watch(&self.prefix, self.seen) {
                    Ok(watch) => self.source = Source::Direct(watch),
                    Err(e) => return Some(Err(e)),
                },
            }
        }
    }

    /// After falling behind the fan-out: refill from the window if it still covers our position,
    /// otherwise continue from the store.
    fn resync(&mut self) -> Result<(), StoreError> {
        let Source::Shared { feed, .. } = &self.source else { return Ok(()) };
        let feed = feed.clone();
        let window = feed.window.read().unwrap_or_else(|e| e.into_inner());
        if !window.ended && self.seen >= window.complete_after {
            let live = feed.fanout.subscribe();
            self.backlog = window.replay(self.seen, &self.prefix);
            drop(window);
            self.source = Source::Shared { feed, live };
            return Ok(());
        }
        drop(window);
        self.source = Source::Direct(self.store.watch(&self.prefix, self.seen)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn store() -> (Arc<dyn Store>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("berth-cacher-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = store::EmbeddedStore::open(store::EmbeddedOptions::new(dir.join("state.redb"))).expect("open store");
        (Arc::new(store), dir)
    }

    fn value(name: &str) -> Bytes {
        Bytes::from(format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}}}}"#))
    }

    #[tokio::test]
    async fn watchers_share_one_decoded_event_and_see_every_change_in_order() {
        let (store, dir) = store();
        let cache = WatchCache::new(store.clone());
        let start = store.current_revision();
        let mut a = cache.watch("/registry/core/configmaps/", "/registry/core/configmaps/", start).unwrap();
        let mut b = cache.watch("/registry/core/configmaps/", "/registry/core/configmaps/ns1/", start).unwrap();
        store.create("/registry/core/configmaps/ns1/x", value("x")).await.unwrap();
        store.create("/registry/core/configmaps/ns2/y", value("y")).await.unwrap();
        let from_a = a.next().await.unwrap().unwrap();
        let from_b = b.next().await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&from_a, &from_b), "one shared event");
        assert_eq!(from_a.natural_type(), WatchType::Added);
        let line = from_a.json_line(WatchType::Added);
        let parsed: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(parsed["type"], "ADDED");
        assert_eq!(parsed["object"]["metadata"]["resourceVersion"], from_a.revision().to_string());
        assert_eq!(a.next().await.unwrap().unwrap().event.kv.key.as_ref(), "/registry/core/configmaps/ns2/y");

        // A watch starting in the recent past is served from the window.
        let mut late = cache.watch("/registry/core/configmaps/", "/registry/core/configmaps/", start).unwrap();
        assert_eq!(late.next().await.unwrap().unwrap().revision(), from_a.revision());
        // One from before the window's start reads the store.
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn metadata_lines_are_cut_from_the_stored_bytes() {
        let event = |value: &str| {
            CachedEvent::new(Event { kind: EventKind::Put, kv: store::KeyValue { key: "/k".into(), value: Bytes::from(value.to_string()), mod_revision: 9, create_revision: 9 }, prev: None })
        };
        let line = event(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","labels":{"x":"y"}},"data":{"k":"v"}}"#).metadata_line(WatchType::Added);
        let parsed: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"type": "ADDED", "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "9", "name": "a", "labels": {"x": "y"}}}})
        );
        let empty: Value = serde_json::from_slice(&event(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#).metadata_line(WatchType::Deleted)).unwrap();
        assert_eq!(empty["object"]["metadata"], serde_json::json!({"resourceVersion": "9"}));
        let none: Value = serde_json::from_slice(&event(r#"{"apiVersion":"v1","kind":"ConfigMap"}"#).metadata_line(WatchType::Modified)).unwrap();
        assert_eq!((none["type"].as_str(), &none["object"]["metadata"]), (Some("MODIFIED"), &serde_json::json!({"resourceVersion": "9"})));
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_catches_up_without_gaps() {
        let (store, dir) = store();
        let cache = WatchCache::new(store.clone());
        let start = store.current_revision();
        let mut slow = cache.watch("/registry/core/configmaps/", "/registry/core/configmaps/", start).unwrap();
        let total = FANOUT_BUFFER + WINDOW + 50;
        for i in 0..total {
            store.create(&format!("/registry/core/configmaps/ns/cm{i:05}"), value("x")).await.unwrap();
        }
        let mut last = start;
        for _ in 0..total {
            let event = slow.next().await.unwrap().unwrap();
            assert_eq!(event.revision(), last + 1, "no gaps, in order");
            last = event.revision();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
