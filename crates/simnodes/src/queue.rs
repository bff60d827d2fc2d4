//! A work queue in client-go's mould: a key waits at most once, a key being worked on is not
//! handed to a second worker (a change meanwhile queues it again for afterwards), and keys can
//! come back after a delay (timers, retries with backoff). Workers take keys, look up the
//! newest state themselves, and so coalesce bursts of changes into one write.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

struct Inner<K> {
    ready: VecDeque<K>,
    queued: HashSet<K>,
    active: HashSet<K>,
    /// Keys added while active: queued again when their worker is done.
    again: HashSet<K>,
    delayed: BinaryHeap<Reverse<(Instant, u64, K)>>,
    seq: u64,
    failures: HashMap<K, u32>,
}

pub struct Queue<K> {
    inner: Mutex<Inner<K>>,
    notify: Notify,
}

impl<K: Clone + Eq + Hash + Ord> Queue<K> {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                active: HashSet::new(),
                again: HashSet::new(),
                delayed: BinaryHeap::new(),
                seq: 0,
                failures: HashMap::new(),
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, key: K) {
        if Self::push(&mut self.lock(), key) {
            self.notify.notify_one();
        }
    }

    fn push(inner: &mut Inner<K>, key: K) -> bool {
        if inner.active.contains(&key) {
            inner.again.insert(key);
            false
        } else if inner.queued.insert(key.clone()) {
            inner.ready.push_back(key);
            true
        } else {
            false
        }
    }

    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        {
            let mut inner = self.lock();
            inner.seq += 1;
            let seq = inner.seq;
            inner.delayed.push(Reverse((Instant::now() + delay, seq, key)));
        }
        // A sleeping worker may be waiting for a later deadline.
        self.notify.notify_one();
    }

    /// Retries `key` after a delay that doubles with each consecutive failure.
    pub fn retry(&self, key: K) {
        let delay = {
            let mut inner = self.lock();
            let n = inner.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            BACKOFF_BASE.saturating_mul(1u32 << (*n - 1).min(16)).min(BACKOFF_MAX)
        };
        self.add_after(key, delay);
    }

    /// Clears `key`'s failure count after a success.
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// The next key to work on; waits for one.
    pub async fn next(&self) -> K {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deadline = {
                let mut inner = self.lock();
                let now = Instant::now();
                while inner.delayed.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
                    if let Some(Reverse((_, _, key))) = inner.delayed.pop() {
                        Self::push(&mut inner, key);
                    }
                }
                if let Some(key) = inner.ready.pop_front() {
                    inner.queued.remove(&key);
                    inner.active.insert(key.clone());
                    if !inner.ready.is_empty() {
                        // Let another idle worker pick up the rest.
                        self.notify.notify_one();
                    }
                    return key;
                }
                inner.delayed.peek().map(|Reverse((at, _, _))| *at)
            };
            match deadline {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `key` as no longer being worked on.
    pub fn done(&self, key: &K) {
        let requeued = {
            let mut inner = self.lock();
            inner.active.remove(key);
            inner.again.remove(key) && Self::push(&mut inner, key.clone())
        };
        if requeued {
            self.notify.notify_one();
        }
    }

    /// Keys waiting now (not counting delayed ones).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dedups_and_holds_back_active_keys() {
        let q: Queue<u32> = Queue::new();
        q.add(1);
        q.add(1);
        q.add(2);
        assert_eq!(q.len(), 2);
        let k = q.next().await;
        assert_eq!(k, 1);
        // Changed while being worked on: not handed out twice at once.
        q.add(1);
        assert_eq!(q.next().await, 2);
        assert_eq!(q.len(), 0);
        q.done(&1);
        assert_eq!(q.next().await, 1);
    }

    #[tokio::test]
    async fn delayed_keys_come_back_in_order() {
        let q: Queue<u32> = Queue::new();
        let start = Instant::now();
        q.add_after(7, Duration::from_millis(120));
        q.add_after(8, Duration::from_millis(30));
        assert_eq!(q.next().await, 8);
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(q.next().await, 7);
        assert!(start.elapsed() >= Duration::from_millis(120));
    }

    #[tokio::test]
    async fn retries_back_off() {
        let q: Queue<u32> = Queue::new();
        q.retry(3);
        let start = Instant::now();
        assert_eq!(q.next().await, 3);
        q.done(&3);
        q.retry(3);
        assert_eq!(q.next().await, 3);
        assert!(start.elapsed() >= BACKOFF_BASE * 3);
        q.forget(&3);
    }
}
