//! The scheduling queue, upstream's three queues in one map: active (by priority, then arrival),
//! backoff (failed recently: 1s doubling to 10s per attempt) and unschedulable (waiting for a
//! cluster change that might help, or at most five minutes).

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::PodInfo;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Upstream's `podMaxInUnschedulablePodsDuration`: a pod no event woke is retried anyway.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

/// Every plugin: cluster events that may fix anything (a node added or changed).
pub const ALL_PLUGINS: u16 = u16::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// In the active heap under this sequence number.
    Active(u64),
    /// In the backoff heap under this sequence number, until the instant.
    Backoff(u64, Instant),
    Unschedulable(Instant),
    /// Popped: being scheduled, or assumed and being bound.
    InFlight,
}

struct Queued {
    info: Arc<PodInfo>,
    attempts: u32,
    last_failure: Option<Instant>,
    place: Place,
    /// Plugins that rejected it last time (bit set), to wake it only for events that matter.
    rejectors: u16,
}

#[derive(PartialEq, Eq)]
struct ActiveEntry {
    priority: i32,
    seq: u64,
    uid: String,
}

impl Ord for ActiveEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Max-heap: higher priority first, then earlier arrival.
        self.priority.cmp(&other.priority).then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for ActiveEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

pub fn backoff_for(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (INITIAL_BACKOFF * (1_u32 << doublings)).min(MAX_BACKOFF)
}

/// Heap entries are never removed in place; an entry whose sequence number no longer matches the
/// pod's place is stale and skipped when it surfaces.
#[derive(Default)]
pub struct SchedulingQueue {
    active: BinaryHeap<ActiveEntry>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    pods: HashMap<String, Queued>,
    seq: u64,
}

impl SchedulingQueue {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn push_active(&mut self, uid: &str) {
        let seq = self.next_seq();
        let Some(q) = self.pods.get_mut(uid) else { return };
        q.place = Place::Active(seq);
        let priority = q.info.priority;
        self.active.push(ActiveEntry { priority, seq, uid: uid.to_string() });
    }

    fn push_backoff(&mut self, uid: &str, until: Instant) {
        let seq = self.next_seq();
        let Some(q) = self.pods.get_mut(uid) else { return };
        q.place = Place::Backoff(seq, until);
        self.backoff.push(Reverse((until, seq, uid.to_string())));
    }

    /// Back to active when its backoff is over, else to the backoff heap.
    fn requeue(&mut self, uid: &str, now: Instant) {
        let Some(q) = self.pods.get(uid) else { return };
        match q.last_failure.map(|t| t + backoff_for(q.attempts)) {
            Some(until) if until > now => self.push_backoff(uid, until),
            _ => self.push_active(uid),
        }
    }

    /// A pending pod was added or changed. Returns whether the active queue grew.
    pub fn add_or_update(&mut self, info: Arc<PodInfo>, now: Instant) -> bool {
        let uid = info.uid.clone();
        let Some(q) = self.pods.get_mut(&uid) else {
            self.pods.insert(uid.clone(), Queued { info, attempts: 0, last_failure: None, place: Place::InFlight, rejectors: 0 });
            self.push_active(&uid);
            return true;
        };
        let relevant = q.info.scheduling_relevant_change(&info);
        let priority_changed = q.info.priority != info.priority;
        q.info = info;
        match q.place {
            Place::Unschedulable(_) if relevant => {
                self.requeue(&uid, now);
                true
            }
            Place::Active(_) if priority_changed => {
                self.push_active(&uid);
                true
            }
            _ => false,
        }
    }

    pub fn remove(&mut self, uid: &str) -> bool {
        self.pods.remove(uid).is_some()
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// The next pod to schedule, highest priority first.
    pub fn pop(&mut self, now: Instant) -> Option<Arc<PodInfo>> {
        self.flush_backoff(now);
        while let Some(entry) = self.active.pop() {
            let Some(q) = self.pods.get_mut(&entry.uid) else { continue };
            if q.place != Place::Active(entry.seq) {
                continue;
            }
            q.place = Place::InFlight;
            q.attempts += 1;
            return Some(q.info.clone());
        }
        None
    }

    /// The attempt found no node: park the pod until a cluster event in `rejectors` happens.
    pub fn unschedulable(&mut self, uid: &str, rejectors: u16, now: Instant) {
        if let Some(q) = self.pods.get_mut(uid) {
            q.last_failure = Some(now);
            q.rejectors = rejectors;
            q.place = Place::Unschedulable(now);
        }
    }

    /// The attempt failed for another reason (API error, no nodes): retry after the backoff.
    pub fn error(&mut self, uid: &str, now: Instant) {
        let Some(q) = self.pods.get_mut(uid) else { return };
        q.last_failure = Some(now);
        q.attempts = q.attempts.max(1);
        let until = now + backoff_for(q.attempts);
        self.push_backoff(uid, until);
    }

    /// A cluster event that could help pods rejected by any plugin in `mask`. Returns whether
    /// the active queue grew.
    pub fn move_unschedulable(&mut self, mask: u16, now: Instant) -> bool {
        let woken: Vec<String> =
            self.pods.iter().filter(|(_, q)| matches!(q.place, Place::Unschedulable(_)) && (q.rejectors & mask != 0 || q.rejectors == 0)).map(|(uid, _)| uid.clone()).collect();
        let mut grew = false;
        for uid in woken {
            self.requeue(&uid, now);
            grew |= matches!(self.pods.get(&uid).map(|q| q.place), Some(Place::Active(_)));
        }
        grew
    }

    /// Moves pods whose backoff ended to the active heap.
    fn flush_backoff(&mut self, now: Instant) {
        while let Some(Reverse((until, seq, _))) = self.backoff.peek() {
            if *until > now {
                break;
            }
            let (until, seq) = (*until, *seq);
            let Some(Reverse((_, _, uid))) = self.backoff.pop() else { break };
            if self.pods.get(&uid).is_some_and(|q| q.place == Place::Backoff(seq, until)) {
                self.push_active(&uid);
            }
        }
    }

    /// Retries pods parked longer than [`MAX_UNSCHEDULABLE`].
    pub fn flush_unschedulable(&mut self, now: Instant) -> bool {
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, q)| matches!(q.place, Place::Unschedulable(since) if now.duration_since(since) >= MAX_UNSCHEDULABLE))
            .map(|(uid, _)| uid.clone())
            .collect();
        let grew = !stale.is_empty();
        for uid in stale {
            self.requeue(&uid, now);
        }
        grew
    }

    /// When the earliest backoff ends.
    pub fn next_backoff_end(&self) -> Option<Instant> {
        self.backoff.peek().map(|Reverse((until, _, _))| *until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::pod;
    use serde_json::json;

    fn p(name: &str, priority: i32) -> Arc<PodInfo> {
        Arc::new(pod(name, json!({"spec": {"priority": priority}})))
    }

    #[test]
    fn priority_then_arrival() {
        let now = Instant::now();
        let mut q = SchedulingQueue::default();
        q.add_or_update(p("low-1", 1), now);
        q.add_or_update(p("high", 10), now);
        q.add_or_update(p("low-2", 1), now);
        let order: Vec<String> = std::iter::from_fn(|| q.pop(now)).map(|p| p.name.clone()).collect();
        assert_eq!(order, ["high", "low-1", "low-2"]);
    }

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        assert_eq!(backoff_for(1), Duration::from_secs(1));
        assert_eq!(backoff_for(2), Duration::from_secs(2));
        assert_eq!(backoff_for(4), Duration::from_secs(8));
        assert_eq!(backoff_for(5), Duration::from_secs(10));
        assert_eq!(backoff_for(100), Duration::from_secs(10));
    }

    #[test]
    fn unschedulable_pods_wait_for_a_relevant_event_and_their_backoff() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::default();
        let a = p("a", 0);
        q.add_or_update(a.clone(), t0);
        assert!(q.pop(t0).is_some());
        q.unschedulable(&a.uid, 1 << 3, t0);
        assert!(q.pop(t0 + Duration::from_secs(60)).is_none(), "parked until an event");
        assert!(!q.move_unschedulable(1 << 5, t0), "an event for another plugin");
        // Woken right away it still owes its 1s backoff.
        assert!(!q.move_unschedulable(1 << 3, t0 + Duration::from_millis(200)));
        assert!(q.pop(t0 + Duration::from_millis(500)).is_none());
        assert_eq!(q.next_backoff_end(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(q.pop(t0 + Duration::from_secs(1)).map(|p| p.name.clone()), Some("a".to_string()));
        // Second failure: 2s; no event, but after five minutes it is retried.
        let t1 = t0 + Duration::from_secs(2);
        q.unschedulable(&a.uid, 1 << 3, t1);
        assert!(!q.flush_unschedulable(t1 + Duration::from_secs(299)));
        assert!(q.flush_unschedulable(t1 + MAX_UNSCHEDULABLE));
        assert!(q.pop(t1 + MAX_UNSCHEDULABLE).is_some());
    }

    #[test]
    fn spec_changes_wake_a_parked_pod_status_changes_do_not() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::default();
        let a = p("a", 0);
        q.add_or_update(a.clone(), t0);
        q.pop(t0);
        q.unschedulable(&a.uid, 1, t0);
        let mut status_only = (*a.pod).clone();
        status_only.status = Some(Default::default());
        assert!(!q.add_or_update(Arc::new(pod_from(status_only.clone())), t0 + Duration::from_secs(5)));
        let mut relabelled = status_only;
        relabelled.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        assert!(q.add_or_update(Arc::new(pod_from(relabelled)), t0 + Duration::from_secs(5)));
        assert!(q.pop(t0 + Duration::from_secs(5)).is_some());
    }

    fn pod_from(p: k8s_openapi::api::core::v1::Pod) -> PodInfo {
        PodInfo::new(Arc::new(p), &Default::default())
    }

    #[test]
    fn removed_pods_are_skipped() {
        let now = Instant::now();
        let mut q = SchedulingQueue::default();
        let a = p("a", 0);
        q.add_or_update(a.clone(), now);
        q.add_or_update(p("b", 0), now);
        q.remove(&a.uid);
        assert_eq!(q.pop(now).map(|p| p.name.clone()), Some("b".to_string()));
        assert!(q.pop(now).is_none());
    }
}
