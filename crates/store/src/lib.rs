//! Revisioned key-value storage with the semantics the API server needs from etcd v3.
//!
//! Every write gets the next value of one store-wide revision; that number is what clients see as
//! `resourceVersion`. Writes are create-if-absent, or compare-and-swap on a key's last modification
//! revision. Reads are ranges over a key prefix at one consistent revision, paginated. Watches replay
//! every change after a given revision, for as long as that revision has not been compacted away.
//!
//! Start with [`Store`], the interface the API server programs against, and [`EmbeddedStore`], the
//! single-file default. Architecture invariant: this crate knows nothing of Kubernetes: keys are
//! strings, values are opaque bytes.

mod codec;
mod embedded;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use embedded::{EmbeddedStore, EmbeddedOptions};

/// The store-wide, strictly increasing write counter. Zero means "nothing written yet".
pub type Revision = u64;

/// One key at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Arc<str>,
    pub value: Bytes,
    /// Revision of the write that created the key (it survives updates, not a delete and re-create).
    pub create_revision: Revision,
    /// Revision of the last write to the key; the compare-and-swap token.
    pub mod_revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change as watchers see it.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    /// For a put, the new value. For a delete, the last value the key had, with `mod_revision` set
    /// to the revision of the delete (so every event carries the revision it happened at).
    pub kv: KeyValue,
    /// The value before this change, if the key existed.
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A read of the keys under `prefix`, in key order.
#[derive(Clone, Debug, Default)]
pub struct RangeRequest {
    pub prefix: String,
    /// Start strictly after this key (the pagination cursor).
    pub start_after: Option<String>,
    /// At most this many keys; 0 means all.
    pub limit: usize,
    /// Read as of this revision instead of the newest; pagination passes the first page's revision.
    pub revision: Option<Revision>,
}

#[derive(Clone, Debug)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// The revision the read was served at.
    pub revision: Revision,
    /// How many matching keys follow the last one returned.
    pub remaining: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0:?} already exists")]
    AlreadyExists(String),
    #[error("key {0:?} not found")]
    NotFound(String),
    #[error("key {key:?} was modified: expected revision {expected}, found {actual}")]
    Conflict { key: String, expected: Revision, actual: Revision },
    #[error("revision {requested} has been compacted; the oldest kept is {compacted}")]
    Compacted { requested: Revision, compacted: Revision },
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision { requested: Revision, current: Revision },
    #[error("storage failure: {0}")]
    Backend(String),
    #[error("the store is closed")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of changes, in revision order, without gaps.
pub struct Watch {
    pub(crate) inner: embedded::WatchInner,
}

impl Watch {
    /// The next change, or `None` when the store closed. A watcher that falls so far behind that
    /// the changes it missed were compacted gets `Err(Compacted)` and must start over.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.inner.next().await
    }
}

/// The interface the API server uses. Implementations: [`EmbeddedStore`]; an etcd v3 client fits
/// it unchanged (revision = etcd's header revision, create/update/delete = single-key txns).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The value of `key` at the newest revision, and that revision.
    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision)>;
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse>;
    /// Writes `key` only if it does not exist.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;
    /// Writes `key` only if its last modification was at `expected_revision`.
    async fn update(&self, key: &str, value: Bytes, expected_revision: Revision) -> Result<KeyValue>;
    /// Deletes `key` (only if last modified at `expected_revision`, when given); returns the value
    /// it had and the revision of the delete.
    async fn delete(&self, key: &str, expected_revision: Option<Revision>) -> Result<(KeyValue, Revision)>;
    /// Every change under `prefix` with a revision greater than `after`.
    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch>;
    /// Forgets history at and before `revision`: watches and reads from there fail with Compacted.
    async fn compact(&self, revision: Revision) -> Result<()>;
    fn current_revision(&self) -> Revision;
    fn compacted_revision(&self) -> Revision;
}
