//! One scheduling decision: filter nodes (in parallel chunks, stopping once enough fit, as
//! upstream's percentageOfNodesToScore does), score the feasible ones, pick the best (ties broken
//! at random).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cluster::Cluster;
use crate::filters::{CycleState, FitError, Status, run_filters};
use crate::model::PodInfo;
use crate::scores::score_nodes;

/// Below this many nodes every node is checked and scored.
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
const MIN_FEASIBLE_NODES_PERCENTAGE: usize = 5;
/// Nodes checked on the calling thread before helpers join: for most pods the first few hundred
/// nodes already yield enough feasible ones, and starting threads would cost more than it saves.
const SEQUENTIAL_NODES: usize = 512;
/// Nodes a helper thread claims at a time.
const CHUNK: usize = 64;

#[derive(Debug)]
pub enum ScheduleError {
    /// The cluster has no nodes at all.
    NoNodes,
    Unfit(FitError),
}

/// How many feasible nodes to look for before scoring (upstream's adaptive
/// percentageOfNodesToScore: 50% minus 1% per 125 nodes, at least 5%, at least 100 nodes).
pub fn num_feasible_nodes_to_find(all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND {
        return all;
    }
    let percentage = 50_usize.saturating_sub(all / 125).max(MIN_FEASIBLE_NODES_PERCENTAGE);
    (all * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// Where the next pod's node search starts, so successive pods look at different nodes.
#[derive(Default)]
pub struct Cursor(pub usize);

/// Picks a node for `pod`; returns its index in `cluster.nodes`.
pub fn schedule(cluster: &Cluster, pod: &PodInfo, threads: usize, cursor: &mut Cursor) -> Result<usize, ScheduleError> {
    if cluster.order.is_empty() {
        return Err(ScheduleError::NoNodes);
    }
    let state = CycleState::prepare(cluster, pod);
    // A pod that preempted victims goes where it made room if it fits there now.
    let nominated = cluster.nomination(&pod.uid).unwrap_or(&pod.nominated_node);
    if let Some(i) = cluster.node_index(nominated)
        && cluster.nodes[i].node.is_some()
        && run_filters(cluster, &state, &cluster.nodes[i]).is_ok()
    {
        return Ok(i);
    }
    let (feasible, statuses) = find_feasible(cluster, &state, threads, cursor);
    match feasible.len() {
        0 => Err(ScheduleError::Unfit(FitError { num_all_nodes: cluster.order.len(), statuses, post_filter: None })),
        1 => Ok(feasible[0]),
        _ => {
            let scores = score_nodes(cluster, pod, &feasible);
            Ok(select_host(&feasible, &scores))
        }
    }
}

/// The highest score; among equals, each is equally likely.
pub fn select_host(nodes: &[usize], scores: &[i64]) -> usize {
    let mut best = 0;
    let mut ties = 0;
    for (k, &s) in scores.iter().enumerate() {
        if k == 0 || s > scores[best] {
            best = k;
            ties = 1;
        } else if s == scores[best] {
            ties += 1;
            if fastrand::usize(..ties) == 0 {
                best = k;
            }
        }
    }
    nodes[best]
}

type Checked = (Vec<usize>, Vec<(usize, Status)>);

/// Feasible nodes (indexes into `cluster.nodes`) until enough are found, and the statuses of the
/// rejected ones.
pub fn find_feasible(cluster: &Cluster, state: &CycleState, threads: usize, cursor: &mut Cursor) -> Checked {
    let order = &cluster.order;
    let n = order.len();
    let want = num_feasible_nodes_to_find(n);
    let start = cursor.0 % n;
    let at = |k: usize| order[(start + k) % n];
    let mut feasible = Vec::with_capacity(want.min(n));
    let mut statuses = Vec::new();
    let mut processed = 0;
    let sequential = SEQUENTIAL_NODES.min(n);
    let check = |k: usize, feasible: &mut Vec<usize>, statuses: &mut Vec<(usize, Status)>| {
        let i = at(k);
        match run_filters(cluster, state, &cluster.nodes[i]) {
            Ok(()) => feasible.push(i),
            Err(s) => statuses.push((i, s)),
        }
    };
    while processed < sequential && feasible.len() < want {
        check(processed, &mut feasible, &mut statuses);
        processed += 1;
    }
    if feasible.len() < want && processed < n {
        if threads > 1 && n - processed > CHUNK {
            let next = AtomicUsize::new(processed);
            let found = AtomicUsize::new(feasible.len());
            let checked = AtomicUsize::new(0);
            let results: Mutex<Vec<Checked>> = Mutex::new(Vec::new());
            let work = || {
                let mut mine: Checked = (Vec::new(), Vec::new());
                while found.load(Ordering::Relaxed) < want {
                    let from = next.fetch_add(CHUNK, Ordering::Relaxed);
                    if from >= n {
                        break;
                    }
                    for k in from..(from + CHUNK).min(n) {
                        if found.load(Ordering::Relaxed) >= want {
                            break;
                        }
                        let before = mine.0.len();
                        check(k, &mut mine.0, &mut mine.1);
                        checked.fetch_add(1, Ordering::Relaxed);
                        if mine.0.len() > before {
                            found.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                results.lock().unwrap_or_else(|e| e.into_inner()).push(mine);
            };
            std::thread::scope(|s| {
                for _ in 1..threads {
                    s.spawn(work);
                }
                work();
            });
            for (f, st) in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
                feasible.extend(f);
                statuses.extend(st);
            }
            feasible.truncate(want);
            processed += checked.into_inner();
        } else {
            while processed < n && feasible.len() < want {
                check(processed, &mut feasible, &mut statuses);
                processed += 1;
            }
        }
    }
    cursor.0 = (start + processed) % n;
    (feasible, statuses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::cluster_of;
    use crate::model::testing::{node, pod, requests};
    use serde_json::json;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn sampling_sizes_follow_upstream() {
        assert_eq!(num_feasible_nodes_to_find(50), 50);
        assert_eq!(num_feasible_nodes_to_find(100), 100);
        assert_eq!(num_feasible_nodes_to_find(1000), 420);
        assert_eq!(num_feasible_nodes_to_find(5000), 500);
        assert_eq!(num_feasible_nodes_to_find(6000), 300);
        assert_eq!(num_feasible_nodes_to_find(100_000), 5000);
    }

    fn big_cluster(n: usize) -> Cluster {
        let nodes = (0..n).map(|i| node(&format!("n{i:05}"), "8", "32Gi", 110, json!({"metadata": {"labels": {"rack": (i % 10).to_string()}}}))).collect();
        cluster_of(nodes, vec![])
    }

    #[test]
    fn stops_after_enough_feasible_nodes_and_moves_on() {
        let c = big_cluster(5000);
        let p = pod("p", requests(json!({"cpu": "1"})));
        let state = CycleState::prepare(&c, &p);
        let mut cursor = Cursor::default();
        let (feasible, statuses) = find_feasible(&c, &state, 1, &mut cursor);
        assert_eq!(feasible.len(), 500);
        assert!(statuses.is_empty());
        assert_eq!(cursor.0, 500);
        let (again, _) = find_feasible(&c, &state, 1, &mut cursor);
        assert!(again.iter().all(|i| !feasible.contains(i)), "the next search starts where the last stopped");
    }

    #[test]
    fn parallel_search_over_mostly_infeasible_nodes() {
        let c = big_cluster(5000);
        // One rack in ten fits: the search must go past the sequential prefix.
        let p = pod("p", json!({"spec": {"nodeSelector": {"rack": "3"}}}));
        let state = CycleState::prepare(&c, &p);
        let (feasible, statuses) = find_feasible(&c, &state, 4, &mut Cursor::default());
        assert_eq!(feasible.len(), 500);
        assert!(feasible.iter().all(|&i| c.nodes[i].labels()["rack"] == "3"));
        assert_eq!(feasible.iter().collect::<HashSet<_>>().len(), 500, "no node twice");
        assert!(statuses.iter().all(|(i, _)| c.nodes[*i].labels()["rack"] != "3"));
        let none = pod("p", json!({"spec": {"nodeSelector": {"rack": "none"}}}));
        let state = CycleState::prepare(&c, &none);
        let (feasible, statuses) = find_feasible(&c, &state, 4, &mut Cursor::default());
        assert!(feasible.is_empty());
        assert_eq!(statuses.len(), 5000, "every node reports why");
    }

    #[test]
    fn picks_the_best_and_breaks_ties_at_random() {
        assert_eq!(select_host(&[7, 8, 9], &[10, 30, 20]), 8);
        let mut seen = HashSet::new();
        for _ in 0..200 {
            seen.insert(select_host(&[1, 2, 3, 4], &[5, 9, 9, 9]));
        }
        assert_eq!(seen, HashSet::from([2, 3, 4]));
    }

    #[test]
    fn schedules_onto_the_least_allocated_node() {
        let busy = pod("busy", json!({"spec": {"nodeName": "a", "containers": [{"name": "c", "resources": {"requests": {"cpu": "3", "memory": "3Gi"}}}]}}));
        let c = cluster_of(vec![node("a", "4", "4Gi", 110, json!({})), node("b", "4", "4Gi", 110, json!({}))], vec![busy]);
        let p = pod("p", requests(json!({"cpu": "500m", "memory": "512Mi"})));
        let chosen = schedule(&c, &p, 1, &mut Cursor::default()).expect("fits");
        assert_eq!(c.nodes[chosen].name, "b");
        let huge = pod("p", requests(json!({"cpu": "5"})));
        match schedule(&c, &huge, 1, &mut Cursor::default()) {
            Err(ScheduleError::Unfit(fit)) => assert_eq!(fit.message(), "0/2 nodes are available: 2 Insufficient cpu."),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(schedule(&Cluster::default(), &p, 1, &mut Cursor::default()), Err(ScheduleError::NoNodes)));
    }

    #[test]
    fn nominated_node_is_tried_first() {
        let mut c = cluster_of(vec![node("a", "4", "4Gi", 110, json!({})), node("b", "1", "4Gi", 110, json!({}))], vec![]);
        let p = Arc::new(pod("p", requests(json!({"cpu": "500m"}))));
        c.nominate(p.clone(), "b");
        for _ in 0..10 {
            assert_eq!(c.nodes[schedule(&c, &p, 1, &mut Cursor::default()).expect("fits")].name, "b");
        }
    }
}
