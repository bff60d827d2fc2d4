//! A work queue with client-go's guarantees: a key waiting in the queue is there once however
//! often it is added, and one key is never processed by two workers at the same time (an add
//! while it is processed runs it again afterwards).

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

pub struct WorkQueue<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

struct Inner<K> {
    state: Mutex<State<K>>,
    ready: mpsc::UnboundedSender<K>,
}

struct State<K> {
    /// Added and not yet handed to a worker.
    dirty: HashSet<K>,
    /// Handed to a worker and not yet done.
    processing: HashSet<K>,
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    /// The queue and the receiving end its workers pull from.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<K>) {
        let (ready, rx) = mpsc::unbounded_channel();
        let state = Mutex::new(State { dirty: HashSet::new(), processing: HashSet::new() });
        (Self { inner: Arc::new(Inner { state, ready }) }, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, key: K) {
        let mut state = self.lock();
        if !state.dirty.insert(key.clone()) {
            return;
        }
        if !state.processing.contains(&key) {
            let _ = self.inner.ready.send(key);
        }
    }

    pub fn add_after(&self, key: K, delay: Duration) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// A worker took `key` from the receiver: returns false when it was already handed out (a
    /// stale duplicate in the channel), which the worker then skips.
    pub fn start(&self, key: &K) -> bool {
        let mut state = self.lock();
        if state.processing.contains(key) || !state.dirty.remove(key) {
            return false;
        }
        state.processing.insert(key.clone());
        true
    }

    /// The worker finished `key`; if it was added meanwhile, it goes back in line.
    pub fn done(&self, key: &K) {
        let mut state = self.lock();
        state.processing.remove(key);
        if state.dirty.contains(key) {
            let _ = self.inner.ready.send(key.clone());
        }
    }
}

/// Runs `workers` tasks taking keys from `rx` and calling `handle` on each, one key at a time.
pub async fn run_workers<K, F, Fut>(queue: WorkQueue<K>, rx: mpsc::UnboundedReceiver<K>, workers: usize, handle: F)
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    F: Fn(K) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let handle = Arc::new(handle);
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let (queue, rx, handle) = (queue.clone(), rx.clone(), handle.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(key) = rx.lock().await.recv().await else { return };
                if !queue.start(&key) {
                    continue;
                }
                handle(key.clone()).await;
                queue.done(&key);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_queued_once_and_never_processed_twice_at_once() {
        let (queue, mut rx) = WorkQueue::new();
        queue.add("a");
        queue.add("a");
        queue.add("b");
        let first = rx.recv().await.unwrap();
        assert!(queue.start(&first));
        queue.add(first); // while processing: not handed out again yet
        let second = rx.recv().await.unwrap();
        assert_ne!(first, second);
        assert!(queue.start(&second));
        assert!(rx.try_recv().is_err());
        queue.done(&first);
        assert_eq!(rx.recv().await.unwrap(), first);
    }
}
