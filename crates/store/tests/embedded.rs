//! The embedded store against the behaviour the API server relies on.

use bytes::Bytes;
use store::{EmbeddedOptions, EmbeddedStore, EventKind, RangeRequest, Store, StoreError};

fn temp_store() -> (tempdir::Dir, EmbeddedStore) {
    let dir = tempdir::Dir::new();
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path.join("state.redb"))).unwrap();
    (dir, store)
}

mod tempdir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }
    impl Dir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!("berth-store-test-{}-{}", std::process::id(), fastrand_suffix()));
            std::fs::create_dir_all(&path).unwrap();
            Self { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
    fn fastrand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed) * 1000 + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64 % 1000
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test]
async fn revisions_increase_and_cas_is_enforced() {
    let (_dir, store) = temp_store();
    let a = store.create("/r/a", b("1")).await.unwrap();
    assert_eq!((a.create_revision, a.mod_revision), (1, 1));
    assert!(matches!(store.create("/r/a", b("x")).await, Err(StoreError::AlreadyExists(_))));
    let a2 = store.update("/r/a", b("2"), a.mod_revision).await.unwrap();
    assert_eq!((a2.create_revision, a2.mod_revision), (1, 2));
    assert!(matches!(store.update("/r/a", b("3"), a.mod_revision).await, Err(StoreError::Conflict { expected: 1, actual: 2, .. })));
    assert!(matches!(store.update("/r/missing", b("3"), 1).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.delete("/r/a", Some(1)).await, Err(StoreError::Conflict { .. })));
    let (gone, rev) = store.delete("/r/a", Some(2)).await.unwrap();
    assert_eq!((gone.value, rev), (b("2"), 3));
    assert_eq!(store.get("/r/a").await.unwrap(), (None, 3));
    assert_eq!(store.current_revision(), 3);
}

#[tokio::test]
async fn paginated_range_reads_one_consistent_revision() {
    let (_dir, store) = temp_store();
    for i in 0..5 {
        store.create(&format!("/pods/ns/p{i}"), b("v")).await.unwrap();
    }
    store.create("/podsx/other", b("v")).await.unwrap();
    let first = store.range(RangeRequest { prefix: "/pods/".into(), limit: 2, ..Default::default() }).await.unwrap();
    assert_eq!(first.kvs.len(), 2);
    assert_eq!(first.remaining, 3);
    // Writes after the first page must not show in later pages.
    store.create("/pods/ns/p9", b("late")).await.unwrap();
    store.delete("/pods/ns/p3", None).await.unwrap();
    let mut keys: Vec<String> = first.kvs.iter().map(|kv| kv.key.to_string()).collect();
    let mut cursor = keys.last().cloned();
    loop {
        let page = store
            .range(RangeRequest { prefix: "/pods/".into(), limit: 2, start_after: cursor.clone(), revision: Some(first.revision) })
            .await
            .unwrap();
        assert_eq!(page.revision, first.revision);
        keys.extend(page.kvs.iter().map(|kv| kv.key.to_string()));
        cursor = keys.last().cloned();
        if page.remaining == 0 {
            break;
        }
    }
    assert_eq!(keys, ["/pods/ns/p0", "/pods/ns/p1", "/pods/ns/p2", "/pods/ns/p3", "/pods/ns/p4"]);
}

#[tokio::test]
async fn reads_at_an_older_revision_undo_history() {
    let (_dir, store) = temp_store();
    let a = store.create("/k/a", b("a1")).await.unwrap();
    let rev = store.create("/k/b", b("b1")).await.unwrap().mod_revision;
    store.update("/k/a", b("a2"), a.mod_revision).await.unwrap();
    store.delete("/k/b", None).await.unwrap();
    store.create("/k/c", b("c1")).await.unwrap();
    let old = store.range(RangeRequest { prefix: "/k/".into(), revision: Some(rev), ..Default::default() }).await.unwrap();
    let got: Vec<(String, Bytes)> = old.kvs.iter().map(|kv| (kv.key.to_string(), kv.value.clone())).collect();
    assert_eq!(got, [("/k/a".to_string(), b("a1")), ("/k/b".to_string(), b("b1"))]);
    assert!(matches!(
        store.range(RangeRequest { prefix: "/k/".into(), revision: Some(99), ..Default::default() }).await,
        Err(StoreError::FutureRevision { .. })
    ));
}

#[tokio::test]
async fn watch_replays_history_then_follows_live_writes() {
    let (_dir, store) = temp_store();
    let a = store.create("/w/a", b("1")).await.unwrap();
    store.create("/other/x", b("1")).await.unwrap();
    store.update("/w/a", b("2"), a.mod_revision).await.unwrap();
    let mut watch = store.watch("/w/", 0).unwrap();
    let e1 = watch.next().await.unwrap().unwrap();
    assert_eq!((e1.kind, e1.revision(), e1.prev.is_none()), (EventKind::Put, 1, true));
    let e2 = watch.next().await.unwrap().unwrap();
    assert_eq!((e2.revision(), e2.prev.as_ref().map(|p| p.value.clone())), (3, Some(b("1"))));
    store.delete("/w/a", None).await.unwrap();
    let e3 = watch.next().await.unwrap().unwrap();
    assert_eq!((e3.kind, e3.revision(), e3.kv.value.clone()), (EventKind::Delete, 4, b("2")));
}

#[tokio::test]
async fn a_watcher_that_lags_behind_the_live_buffer_catches_up_from_disk() {
    let (_dir, store) = temp_store();
    let mut watch = store.watch("/lag/", 0).unwrap();
    let total = 5000;
    for i in 0..total {
        store.create(&format!("/lag/{i:05}"), b("v")).await.unwrap();
    }
    for expected in 1..=total {
        let event = watch.next().await.unwrap().unwrap();
        assert_eq!(event.revision(), expected as u64);
    }
}

#[tokio::test]
async fn compaction_expires_old_watches_and_reads() {
    let (_dir, store) = temp_store();
    for i in 0..10 {
        store.create(&format!("/c/{i}"), b("v")).await.unwrap();
    }
    store.compact(6).await.unwrap();
    assert_eq!(store.compacted_revision(), 6);
    assert!(matches!(store.watch("/c/", 2), Err(StoreError::Compacted { requested: 2, compacted: 6 })));
    assert!(matches!(
        store.range(RangeRequest { prefix: "/c/".into(), revision: Some(3), ..Default::default() }).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut watch = store.watch("/c/", 6).unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().revision(), 7);
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempdir::Dir::new();
    let path = dir.path.join("state.redb");
    {
        let store = EmbeddedStore::open(EmbeddedOptions::new(&path)).unwrap();
        store.create("/p/a", b("1")).await.unwrap();
        store.create("/p/b", b("2")).await.unwrap();
        store.delete("/p/b", None).await.unwrap();
        store.close();
    }
    let store = EmbeddedStore::open(EmbeddedOptions::new(&path)).unwrap();
    assert_eq!(store.current_revision(), 3);
    let (a, _) = store.get("/p/a").await.unwrap();
    assert_eq!(a.unwrap().value, b("1"));
    assert_eq!(store.get("/p/b").await.unwrap().0, None);
    assert_eq!(store.create("/p/c", b("3")).await.unwrap().mod_revision, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_each_get_a_distinct_revision() {
    let (_dir, store) = temp_store();
    let store = std::sync::Arc::new(store);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..50 {
                revs.push(store.create(&format!("/cc/{t}/{i}"), b("v")).await.unwrap().mod_revision);
            }
            revs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 800);
    assert_eq!(store.current_revision(), 800);
}

/// What the store should hold: every revision's map, and every change with the value before it.
#[derive(Default)]
struct Model {
    snapshots: Vec<std::collections::BTreeMap<String, (Bytes, u64, u64)>>,
    events: Vec<(EventKind, String, Bytes, Option<Bytes>)>,
}

impl Model {
    fn now(&self) -> std::collections::BTreeMap<String, (Bytes, u64, u64)> {
        self.snapshots.last().cloned().unwrap_or_default()
    }
}

/// Checks reads at every revision from the compacted one on, and a watch from the compacted one,
/// against the model.
async fn check_against(store: &EmbeddedStore, model: &Model) {
    let compacted = store.compacted_revision();
    let current = store.current_revision();
    assert_eq!(current as usize, model.snapshots.len());
    for rev in compacted.max(1)..=current {
        let got = store.range(RangeRequest { prefix: "/m/".into(), revision: Some(rev), ..Default::default() }).await.unwrap();
        let got: Vec<(String, Bytes, u64, u64)> = got.kvs.into_iter().map(|kv| (kv.key.to_string(), kv.value, kv.create_revision, kv.mod_revision)).collect();
        let want: Vec<(String, Bytes, u64, u64)> = model.snapshots[rev as usize - 1].iter().map(|(k, (v, c, m))| (k.clone(), v.clone(), *c, *m)).collect();
        assert_eq!(got, want, "read at revision {rev} (compacted {compacted})");
    }
    let mut watch = store.watch("/m/", compacted).unwrap();
    for rev in compacted + 1..=current {
        let event = watch.next().await.unwrap().unwrap();
        let (kind, key, value, prev) = &model.events[rev as usize - 1];
        assert_eq!(event.revision(), rev);
        assert_eq!((&event.kind, &*event.kv.key, &event.kv.value), (kind, key.as_str(), value), "event at {rev}");
        assert_eq!(event.prev.map(|p| p.value), *prev, "previous value of the event at {rev}");
    }
}

#[tokio::test]
async fn compaction_keeps_what_reads_and_watches_after_it_need() {
    let dir = tempdir::Dir::new();
    let path = dir.path.join("state.redb");
    let mut store = EmbeddedStore::open(EmbeddedOptions::new(&path)).unwrap();
    let mut model = Model::default();
    // A fixed pseudo-random walk over a few keys: creates, updates, deletes and re-creates, with
    // compactions and restarts in between.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for step in 0..400u64 {
        let key = format!("/m/{}", next() % 6);
        let mut now = model.now();
        let value = Bytes::from(format!("v{step}"));
        let (kind, prev) = match now.get(&key).cloned() {
            None => {
                let kv = store.create(&key, value.clone()).await.unwrap();
                now.insert(key.clone(), (value.clone(), kv.create_revision, kv.mod_revision));
                (EventKind::Put, None)
            }
            Some((old, create, modified)) if next() % 4 == 0 => {
                store.delete(&key, Some(modified)).await.unwrap();
                now.remove(&key);
                let _ = create;
                (EventKind::Delete, Some(old))
            }
            Some((old, create, modified)) => {
                let kv = store.update(&key, value.clone(), modified).await.unwrap();
                now.insert(key.clone(), (value.clone(), create, kv.mod_revision));
                (EventKind::Put, Some(old))
            }
        };
        let event_value = if kind == EventKind::Delete { prev.clone().unwrap() } else { value };
        model.events.push((kind, key, event_value, prev));
        model.snapshots.push(now);
        if step % 37 == 36 {
            let current = store.current_revision();
            store.compact(current - next() % 20).await.unwrap();
            check_against(&store, &model).await;
        }
        if step % 101 == 100 {
            store.close();
            drop(store);
            store = EmbeddedStore::open(EmbeddedOptions::new(&path)).unwrap();
            check_against(&store, &model).await;
        }
    }
    check_against(&store, &model).await;
}

#[tokio::test]
async fn a_file_in_the_first_format_is_migrated_on_open() {
    let dir = tempdir::Dir::new();
    let path = dir.path.join("state.redb");
    {
        // The first format: values in the live table after two revisions, history with copies.
        let kv: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("kv_v1");
        let history: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("history_v1");
        let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta_v1");
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(kv).unwrap();
            for (key, create, modified, value) in [("/v1/a", 1u64, 3u64, "a2"), ("/v1/b", 2, 2, "b1")] {
                let mut raw = Vec::new();
                raw.extend_from_slice(&create.to_le_bytes());
                raw.extend_from_slice(&modified.to_le_bytes());
                raw.extend_from_slice(value.as_bytes());
                table.insert(key, raw.as_slice()).unwrap();
            }
            txn.open_table(history).unwrap().insert(3, &b"old history"[..]).unwrap();
            txn.open_table(meta).unwrap().insert("revision", 4).unwrap();
        }
        txn.commit().unwrap();
    }
    for _ in 0..2 {
        let store = EmbeddedStore::open(EmbeddedOptions::new(&path)).unwrap();
        assert_eq!((store.current_revision(), store.compacted_revision()), (4, 4));
        let (a, _) = store.get("/v1/a").await.unwrap();
        let a = a.unwrap();
        assert_eq!((a.value, a.create_revision, a.mod_revision), (b("a2"), 1, 3));
        let all = store.range(RangeRequest { prefix: "/v1/".into(), revision: Some(4), ..Default::default() }).await.unwrap();
        assert_eq!(all.kvs.len(), 2);
        store.close();
    }
    let store = EmbeddedStore::open(EmbeddedOptions::new(&path)).unwrap();
    let mut watch = store.watch("/v1/", 4).unwrap();
    let updated = store.update("/v1/a", b("a3"), 3).await.unwrap();
    assert_eq!(updated.mod_revision, 5);
    let event = watch.next().await.unwrap().unwrap();
    assert_eq!(event.prev.map(|p| (p.value, p.mod_revision)), Some((b("a2"), 3)));
    store.delete("/v1/b", None).await.unwrap();
    let event = watch.next().await.unwrap().unwrap();
    assert_eq!((event.kind, event.kv.value), (EventKind::Delete, b("b1")));
}
