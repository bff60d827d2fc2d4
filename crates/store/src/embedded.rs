//! The single-file default: redb for durability, an immutable in-memory map for reads.
//!
//! Why this shape: every read the API server makes is a point or prefix read of the newest data,
//! and the whole data set of a small cluster fits in memory, so reads are served from a persistent
//! (structurally shared) ordered map without touching the file. Writes go to one writer thread that
//! takes every request waiting at that moment, checks their preconditions in order, and commits
//! them in one redb transaction (one fsync for many writes: group commit). A write is acknowledged
//! only after its transaction is durable, so kill -9 never loses an acknowledged write.
//!
//! History (one record per revision) stays in the file until compaction; it feeds watches that
//! start in the past or fall behind, and reads at an older revision, which undo history from the
//! newest map. Each value is written once, as etcd's MVCC store does: in the history record of the
//! write that made it. A live key points at its newest record, and each record at the one before
//! it, so an update writes its new value and nothing else.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use imbl::OrdMap;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle, WriteTransaction};
use tokio::sync::{broadcast, oneshot};

use crate::codec::{Record, decode_kv_v1};
use crate::{Event, EventKind, KeyValue, RangeRequest, RangeResponse, Result, Revision, Store, StoreError, Watch};

/// Live keys: `(create_revision, mod_revision)`; the value is in the history record at
/// `mod_revision`.
const KV: TableDefinition<&str, (u64, u64)> = TableDefinition::new("kv_v2");
/// One record per revision (`codec::Record`). Records at or below the compacted revision are
/// exactly each key's newest value as of that revision, kept while a live key or a later record
/// points at them.
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history_v2");
/// The first format, which copied values into the live table and into history (with the previous
/// value again): migrated on open.
const KV_V1: TableDefinition<&str, &[u8]> = TableDefinition::new("kv_v1");
const HISTORY_V1: TableDefinition<u64, &[u8]> = TableDefinition::new("history_v1");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta_v1");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// Watchers further behind than this many writes re-read what they missed from the file, so a
/// slow watcher costs disk reads rather than unbounded memory.
const LIVE_EVENT_BUFFER: usize = 1024;
/// How long a paginated read keeps the snapshot it started from in memory.
const PINNED_SNAPSHOT_TTL: Duration = Duration::from_secs(300);

type Map = OrdMap<Arc<str>, KeyValue>;

#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    pub path: PathBuf,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// redb's page cache. 12 MiB measured as the knee: 8 MiB cost a sixth of create throughput,
    /// 16 MiB added 6 MiB of RSS for nothing measurable (`berth bench api`).
    pub cache_bytes: usize,
}

impl EmbeddedOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), max_batch: 512, cache_bytes: 12 * 1024 * 1024 }
    }
}

struct State {
    revision: Revision,
    compacted: Revision,
    map: Map,
}

struct Shared {
    db: Database,
    state: RwLock<State>,
    live: broadcast::Sender<Arc<Event>>,
    pinned: Mutex<BTreeMap<Revision, (Map, Instant)>>,
}

enum Op {
    Create { key: Arc<str>, value: Bytes },
    Update { key: Arc<str>, value: Bytes, expected: Revision },
    Delete { key: Arc<str>, expected: Option<Revision> },
    Compact { revision: Revision },
}

enum Outcome {
    Put(KeyValue),
    Deleted(KeyValue, Revision),
    Compacted,
}

struct WriteRequest {
    op: Op,
    reply: oneshot::Sender<Result<Outcome>>,
}

pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writer: Mutex<Option<std_mpsc::Sender<WriteRequest>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store file and loads the newest state into memory.
    pub fn open(options: EmbeddedOptions) -> Result<Self> {
        if let Some(dir) = options.path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        // Reads are served from memory, so redb's page cache only helps writes and start-up; its
        // 1 GiB default would mostly hold copies of what the map already has.
        let db = Database::builder().set_cache_size(options.cache_bytes).create(&options.path).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        migrate_v1(&txn)?;
        {
            txn.open_table(KV).map_err(backend)?;
            txn.open_table(HISTORY).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;

        let read = db.begin_read().map_err(backend)?;
        let meta = read.open_table(META).map_err(backend)?;
        let revision = meta.get(META_REVISION).map_err(backend)?.map_or(0, |v| v.value());
        let compacted = meta.get(META_COMPACTED).map_err(backend)?.map_or(0, |v| v.value());
        let history = read.open_table(HISTORY).map_err(backend)?;
        let mut map = Map::new();
        for entry in read.open_table(KV).map_err(backend)?.iter().map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            let (create_revision, mod_revision) = v.value();
            let key: Arc<str> = Arc::from(k.value());
            let value = value_at(&history, mod_revision)?;
            map.insert(key.clone(), KeyValue { key, value, create_revision, mod_revision });
        }
        drop(history);
        drop(meta);
        drop(read);

        let (live, _) = broadcast::channel(LIVE_EVENT_BUFFER);
        let shared = Arc::new(Shared {
            db,
            state: RwLock::new(State { revision, compacted, map }),
            live,
            pinned: Mutex::new(BTreeMap::new()),
        });
        let (tx, rx) = std_mpsc::channel();
        let writer_shared = shared.clone();
        let max_batch = options.max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&writer_shared, &rx, max_batch))
            .map_err(backend)?;
        Ok(Self { shared, writer: Mutex::new(Some(tx)), writer_thread: Mutex::new(Some(thread)) })
    }

    /// Stops accepting writes and waits until every accepted write is committed.
    pub fn close(&self) {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.writer_thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.read_state().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.shared.state.read().unwrap_or_else(|e| e.into_inner())
    }

    async fn submit(&self, op: Op) -> Result<Outcome> {
        let (reply, answer) = oneshot::channel();
        {
            let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let writer = writer.as_ref().ok_or(StoreError::Closed)?;
            writer.send(WriteRequest { op, reply }).map_err(|_| StoreError::Closed)?;
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// The map as of `revision`: the newest one, a snapshot a paginated read pinned, or the newest
    /// with history undone back to that revision.
    fn map_at(&self, revision: Option<Revision>) -> Result<(Map, Revision)> {
        let (map, current, compacted) = {
            let state = self.read_state();
            (state.map.clone(), state.revision, state.compacted)
        };
        let Some(wanted) = revision else { return Ok((map, current)) };
        if wanted == current {
            return Ok((map, current));
        }
        if wanted > current {
            return Err(StoreError::FutureRevision { requested: wanted, current });
        }
        if wanted < compacted {
            return Err(StoreError::Compacted { requested: wanted, compacted });
        }
        if let Some((pinned, _)) = self.shared.pinned.lock().unwrap_or_else(|e| e.into_inner()).get(&wanted) {
            return Ok((pinned.clone(), wanted));
        }
        let mut map = map;
        let read = self.shared.db.begin_read().map_err(backend)?;
        let history = read.open_table(HISTORY).map_err(backend)?;
        for entry in history.range((Bound::Excluded(wanted), Bound::Included(current))).map_err(backend)?.rev() {
            let (_, raw) = entry.map_err(backend)?;
            let record = Record::decode(raw.value())?;
            match previous(&history, &record)? {
                Some(prev) => {
                    map.insert(prev.key.clone(), prev);
                }
                None => {
                    map.remove(record.key);
                }
            }
        }
        Ok((map, wanted))
    }

    fn pin(&self, revision: Revision, map: &Map) {
        let now = Instant::now();
        let mut pinned = self.shared.pinned.lock().unwrap_or_else(|e| e.into_inner());
        pinned.retain(|_, (_, at)| now.duration_since(*at) < PINNED_SNAPSHOT_TTL);
        pinned.entry(revision).or_insert_with(|| (map.clone(), now));
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision)> {
        let state = self.read_state();
        Ok((state.map.get(key).cloned(), state.revision))
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        let (map, revision) = self.map_at(request.revision)?;
        let start = match &request.start_after {
            Some(after) if after.as_str() >= request.prefix.as_str() => Bound::Excluded(after.as_str()),
            _ => Bound::Included(request.prefix.as_str()),
        };
        let mut matching = map.range::<_, str>((start, Bound::Unbounded)).take_while(|(k, _)| k.starts_with(&request.prefix));
        let limit = if request.limit == 0 { usize::MAX } else { request.limit };
        let kvs: Vec<KeyValue> = matching.by_ref().take(limit).map(|(_, kv)| kv.clone()).collect();
        let remaining = matching.count();
        if remaining > 0 {
            self.pin(revision, &map);
        }
        Ok(RangeResponse { kvs, revision, remaining })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        match self.submit(Op::Create { key: Arc::from(key), value }).await? {
            Outcome::Put(kv) => Ok(kv),
            _ => Err(backend("unexpected write outcome")),
        }
    }

    async fn update(&self, key: &str, value: Bytes, expected_revision: Revision) -> Result<KeyValue> {
        match self.submit(Op::Update { key: Arc::from(key), value, expected: expected_revision }).await? {
            Outcome::Put(kv) => Ok(kv),
            _ => Err(backend("unexpected write outcome")),
        }
    }

    async fn delete(&self, key: &str, expected_revision: Option<Revision>) -> Result<(KeyValue, Revision)> {
        match self.submit(Op::Delete { key: Arc::from(key), expected: expected_revision }).await? {
            Outcome::Deleted(kv, revision) => Ok((kv, revision)),
            _ => Err(backend("unexpected write outcome")),
        }
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        // Subscribe before reading history so nothing committed in between is missed; the overlap
        // is skipped by revision.
        let live = self.shared.live.subscribe();
        let mut inner = WatchInner { shared: self.shared.clone(), prefix: prefix.to_string(), seen: after, live, backlog: VecDeque::new() };
        inner.catch_up()?;
        Ok(Watch { inner })
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.submit(Op::Compact { revision }).await.map(|_| ())
    }

    fn current_revision(&self) -> Revision {
        self.read_state().revision
    }

    fn compacted_revision(&self) -> Revision {
        self.read_state().compacted
    }
}

pub(crate) struct WatchInner {
    shared: Arc<Shared>,
    prefix: String,
    /// Every change at or below this revision has been delivered or skipped.
    seen: Revision,
    live: broadcast::Receiver<Arc<Event>>,
    backlog: VecDeque<Event>,
}

impl WatchInner {
    /// Reads every change after `seen` from the file into the backlog.
    fn catch_up(&mut self) -> Result<()> {
        let (current, compacted) = {
            let state = self.shared.state.read().unwrap_or_else(|e| e.into_inner());
            (state.revision, state.compacted)
        };
        if self.seen < compacted {
            return Err(StoreError::Compacted { requested: self.seen, compacted });
        }
        if self.seen > current {
            return Err(StoreError::FutureRevision { requested: self.seen, current });
        }
        if self.seen == current {
            return Ok(());
        }
        let read = self.shared.db.begin_read().map_err(backend)?;
        let history = read.open_table(HISTORY).map_err(backend)?;
        for entry in history.range((Bound::Excluded(self.seen), Bound::Included(current))).map_err(backend)? {
            let (rev, raw) = entry.map_err(backend)?;
            let record = Record::decode(raw.value())?;
            if record.key.starts_with(&self.prefix) {
                self.backlog.push_back(event_at(&history, rev.value(), &record)?);
            }
        }
        self.seen = current;
        Ok(())
    }

    pub(crate) async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                return Some(Ok(event));
            }
            match self.live.recv().await {
                Ok(event) => {
                    if event.revision() <= self.seen {
                        continue;
                    }
                    self.seen = event.revision();
                    if event.kv.key.starts_with(&self.prefix) {
                        return Some(Ok((*event).clone()));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Err(e) = self.catch_up() {
                        return Some(Err(e));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

fn writer_loop(shared: &Shared, requests: &std_mpsc::Receiver<WriteRequest>, max_batch: usize) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match requests.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        commit_batch(shared, batch);
    }
}

/// Applies a batch in order to a copy of the newest map, persists the successful writes in one
/// transaction, then publishes: new map first, then events, then replies, so a writer that got its
/// answer always reads its own write.
fn commit_batch(shared: &Shared, batch: Vec<WriteRequest>) {
    let (mut revision, mut compacted, mut map) = {
        let state = shared.state.read().unwrap_or_else(|e| e.into_inner());
        (state.revision, state.compacted, state.map.clone())
    };
    let compacted_before = compacted;
    let mut events = Vec::new();
    let mut compact_to = None;
    let mut outcomes = Vec::with_capacity(batch.len());
    for request in &batch {
        let outcome = apply(&mut map, &mut revision, &request.op, &mut events, compacted, &mut compact_to);
        if let (Ok(Outcome::Compacted), Some(to)) = (&outcome, compact_to) {
            compacted = compacted.max(to);
        }
        outcomes.push(outcome);
    }
    let persisted = if events.is_empty() && compact_to.is_none() { Ok(()) } else { persist(&shared.db, &events, revision, compact_to.map(|to| (compacted_before, to))) };
    if let Err(error) = persisted {
        tracing::error!(%error, "store commit failed");
        for request in batch {
            let _ = request.reply.send(Err(StoreError::Backend(error.to_string())));
        }
        return;
    }
    {
        let mut state = shared.state.write().unwrap_or_else(|e| e.into_inner());
        state.revision = revision;
        state.compacted = compacted;
        state.map = map;
    }
    if compact_to.is_some() {
        shared.pinned.lock().unwrap_or_else(|e| e.into_inner()).retain(|rev, _| *rev >= compacted);
    }
    for event in events {
        // No receivers is fine: nobody is watching.
        let _ = shared.live.send(Arc::new(event));
    }
    for (request, outcome) in batch.into_iter().zip(outcomes) {
        let _ = request.reply.send(outcome);
    }
}

fn apply(map: &mut Map, revision: &mut Revision, op: &Op, events: &mut Vec<Event>, compacted: Revision, compact_to: &mut Option<Revision>) -> Result<Outcome> {
    match op {
        Op::Create { key, value } => {
            if map.contains_key(key) {
                return Err(StoreError::AlreadyExists(key.to_string()));
            }
            *revision += 1;
            let kv = KeyValue { key: key.clone(), value: value.clone(), create_revision: *revision, mod_revision: *revision };
            map.insert(key.clone(), kv.clone());
            events.push(Event { kind: EventKind::Put, kv: kv.clone(), prev: None });
            Ok(Outcome::Put(kv))
        }
        Op::Update { key, value, expected } => {
            let prev = map.get(key).cloned().ok_or_else(|| StoreError::NotFound(key.to_string()))?;
            if prev.mod_revision != *expected {
                return Err(StoreError::Conflict { key: key.to_string(), expected: *expected, actual: prev.mod_revision });
            }
            *revision += 1;
            let kv = KeyValue { key: key.clone(), value: value.clone(), create_revision: prev.create_revision, mod_revision: *revision };
            map.insert(key.clone(), kv.clone());
            events.push(Event { kind: EventKind::Put, kv: kv.clone(), prev: Some(prev) });
            Ok(Outcome::Put(kv))
        }
        Op::Delete { key, expected } => {
            let prev = map.get(key).cloned().ok_or_else(|| StoreError::NotFound(key.to_string()))?;
            if let Some(expected) = expected
                && prev.mod_revision != *expected
            {
                return Err(StoreError::Conflict { key: key.to_string(), expected: *expected, actual: prev.mod_revision });
            }
            *revision += 1;
            map.remove(key);
            let tombstone = KeyValue { mod_revision: *revision, ..prev.clone() };
            events.push(Event { kind: EventKind::Delete, kv: tombstone, prev: Some(prev.clone()) });
            Ok(Outcome::Deleted(prev, *revision))
        }
        Op::Compact { revision: to } => {
            if *to > *revision {
                return Err(StoreError::FutureRevision { requested: *to, current: *revision });
            }
            if *to <= compacted {
                return Ok(Outcome::Compacted);
            }
            *compact_to = Some(compact_to.map_or(*to, |c| c.max(*to)));
            Ok(Outcome::Compacted)
        }
    }
}

/// `compact`: from the last compacted revision to the new one.
fn persist(db: &Database, events: &[Event], revision: Revision, compact: Option<(Revision, Revision)>) -> Result<()> {
    let txn = db.begin_write().map_err(backend)?;
    {
        let mut kv = txn.open_table(KV).map_err(backend)?;
        let mut history = txn.open_table(HISTORY).map_err(backend)?;
        for event in events {
            let prev_revision = event.prev.as_ref().map_or(0, |p| p.mod_revision);
            let record = match event.kind {
                EventKind::Put => {
                    kv.insert(&*event.kv.key, (event.kv.create_revision, event.kv.mod_revision)).map_err(backend)?;
                    Record { kind: EventKind::Put, create_revision: event.kv.create_revision, prev_revision, key: &event.kv.key, value: &event.kv.value }
                }
                EventKind::Delete => {
                    kv.remove(&*event.kv.key).map_err(backend)?;
                    Record { kind: EventKind::Delete, create_revision: event.kv.create_revision, prev_revision, key: &event.kv.key, value: &[] }
                }
            };
            history.insert(event.revision(), record.encode().as_slice()).map_err(backend)?;
        }
        let mut meta = txn.open_table(META).map_err(backend)?;
        meta.insert(META_REVISION, revision).map_err(backend)?;
        if let Some((from, to)) = compact {
            compact_history(&mut history, from, to)?;
            meta.insert(META_COMPACTED, to).map_err(backend)?;
        }
    }
    txn.commit().map_err(backend)?;
    Ok(())
}

/// Drops the records in `(from, to]` except each key's newest value as of `to`, and the older
/// newest values those records replace. What stays at or below `to` is then, per key, its value
/// at `to` (none for a key deleted by then): all a read at `to` or later, or a watch from `to`,
/// can reach through the live table or a later record's `prev_revision`.
fn compact_history(history: &mut Table<u64, &[u8]>, from: Revision, to: Revision) -> Result<()> {
    let window = (Bound::Excluded(from), Bound::Included(to));
    let mut newest: HashMap<String, Option<Revision>> = HashMap::new();
    let mut replaced = Vec::new();
    for entry in history.range(window).map_err(backend)? {
        let (rev, raw) = entry.map_err(backend)?;
        let record = Record::decode(raw.value())?;
        // Only a key's first record in the window can point below it, at the value the last
        // compaction kept for that key.
        if record.prev_revision != 0 && record.prev_revision <= from {
            replaced.push(record.prev_revision);
        }
        newest.insert(record.key.to_string(), (record.kind == EventKind::Put).then_some(rev.value()));
    }
    let keep: HashSet<Revision> = newest.into_values().flatten().collect();
    history.retain_in(window, |rev, _| keep.contains(&rev)).map_err(backend)?;
    for rev in replaced {
        history.remove(rev).map_err(backend)?;
    }
    Ok(())
}

/// The value written at `revision`.
fn value_at(history: &impl ReadableTable<u64, &'static [u8]>, revision: Revision) -> Result<Bytes> {
    let raw = history.get(revision).map_err(backend)?.ok_or_else(|| StoreError::Backend(format!("history record {revision} is missing")))?;
    Ok(Bytes::copy_from_slice(Record::decode(raw.value())?.value))
}

/// The key as it was before `record`'s write.
fn previous(history: &impl ReadableTable<u64, &'static [u8]>, record: &Record<'_>) -> Result<Option<KeyValue>> {
    if record.prev_revision == 0 {
        return Ok(None);
    }
    let raw = history.get(record.prev_revision).map_err(backend)?.ok_or_else(|| StoreError::Backend(format!("history record {} is missing", record.prev_revision)))?;
    let prev = Record::decode(raw.value())?;
    Ok(Some(KeyValue { key: Arc::from(record.key), value: Bytes::copy_from_slice(prev.value), create_revision: prev.create_revision, mod_revision: record.prev_revision }))
}

/// The change `record` made at `revision`, as watchers see it.
fn event_at(history: &impl ReadableTable<u64, &'static [u8]>, revision: Revision, record: &Record<'_>) -> Result<Event> {
    let prev = previous(history, record)?;
    let kv = match (record.kind, &prev) {
        (EventKind::Put, _) => KeyValue { key: Arc::from(record.key), value: Bytes::copy_from_slice(record.value), create_revision: record.create_revision, mod_revision: revision },
        (EventKind::Delete, Some(prev)) => KeyValue { mod_revision: revision, ..prev.clone() },
        (EventKind::Delete, None) => return Err(StoreError::Backend(format!("history record {revision} deletes nothing"))),
    };
    Ok(Event { kind: record.kind, kv, prev })
}

/// Rewrites a first-format file: each live value becomes the only record of its key, at its
/// revision, and the old history goes (watches from before the upgrade start over with a list).
fn migrate_v1(txn: &WriteTransaction) -> Result<()> {
    let has_v1 = txn.list_tables().map_err(backend)?.any(|table| table.name() == KV_V1.name());
    if !has_v1 {
        return Ok(());
    }
    {
        let old = txn.open_table(KV_V1).map_err(backend)?;
        let mut kv = txn.open_table(KV).map_err(backend)?;
        let mut history = txn.open_table(HISTORY).map_err(backend)?;
        for entry in old.iter().map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            let live = decode_kv_v1(k.value(), v.value())?;
            kv.insert(k.value(), (live.create_revision, live.mod_revision)).map_err(backend)?;
            let record = Record { kind: EventKind::Put, create_revision: live.create_revision, prev_revision: 0, key: k.value(), value: &live.value };
            history.insert(live.mod_revision, record.encode().as_slice()).map_err(backend)?;
        }
        let mut meta = txn.open_table(META).map_err(backend)?;
        let revision = meta.get(META_REVISION).map_err(backend)?.map_or(0, |v| v.value());
        meta.insert(META_COMPACTED, revision).map_err(backend)?;
    }
    txn.delete_table(KV_V1).map_err(backend)?;
    txn.delete_table(HISTORY_V1).map_err(backend)?;
    tracing::info!("store file migrated to the value-once format");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history_revisions(store: &EmbeddedStore) -> Vec<Revision> {
        let read = store.shared.db.begin_read().unwrap();
        let history = read.open_table(HISTORY).unwrap();
        history.iter().unwrap().map(|entry| entry.unwrap().0.value()).collect()
    }

    #[tokio::test]
    async fn compaction_leaves_only_the_values_at_the_compacted_revision() {
        let dir = std::env::temp_dir().join(format!("berth-store-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = EmbeddedStore::open(EmbeddedOptions::new(dir.join("state.redb"))).unwrap();
        let a = store.create("/a", Bytes::from_static(b"1")).await.unwrap(); // 1
        let b = store.create("/b", Bytes::from_static(b"1")).await.unwrap(); // 2
        let a = store.update("/a", Bytes::from_static(b"2"), a.mod_revision).await.unwrap(); // 3
        store.delete("/b", Some(b.mod_revision)).await.unwrap(); // 4
        store.create("/c", Bytes::from_static(b"1")).await.unwrap(); // 5
        store.compact(4).await.unwrap();
        // /a's value at 4 was written at 3; /b was deleted; 5 is after the compacted revision.
        assert_eq!(history_revisions(&store), [3, 5]);
        store.update("/a", Bytes::from_static(b"3"), a.mod_revision).await.unwrap(); // 6
        store.compact(6).await.unwrap();
        // 3 was replaced by 6, which is /a's value now.
        assert_eq!(history_revisions(&store), [5, 6]);
        store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
