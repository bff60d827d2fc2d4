//! Preemption (upstream's DefaultPreemption): when a pod fits nowhere, find a node where evicting
//! lower-priority pods makes it fit, evicting as few and as unimportant pods as possible.

use std::borrow::Cow;
use std::sync::Arc;

use crate::cluster::Cluster;
use crate::filters::{CycleState, FitError, Plugin, Status, histogram, run_filters};
use crate::model::{NodeInfo, PodInfo};

pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
/// Upstream's `minCandidateNodesPercentage` and `minCandidateNodesAbsolute`: how many candidate
/// nodes to find before choosing among them.
const MIN_CANDIDATES_PERCENTAGE: usize = 10;
const MIN_CANDIDATES_ABSOLUTE: usize = 100;

#[derive(Debug)]
pub struct Candidate {
    /// Index into `cluster.nodes`.
    pub node: usize,
    /// Most important first.
    pub victims: Vec<Arc<PodInfo>>,
}

#[derive(Debug)]
pub enum Preemption {
    Nominate(Candidate),
    /// The text after "preemption: " in the pod's condition; `clear_nomination` when the pod
    /// should lose a nomination it holds (preemption cannot help it anywhere).
    Failed {
        message: String,
        clear_nomination: bool,
    },
}

impl<'a> CycleState<'a> {
    /// Counts `other` (on `node`) in or out of the topology counts, for simulating evictions.
    fn update(&mut self, cluster: &Cluster, other: &PodInfo, node: &NodeInfo, delta: i64) {
        if let Some(a) = &mut self.affinity {
            a.update(cluster, self.pod, other, node.labels(), delta);
        }
        if let Some(s) = &mut self.spread {
            s.update(self.pod, other, node, delta);
        }
    }
}

pub fn preempt(cluster: &Cluster, pod: &PodInfo, fit: &FitError) -> Preemption {
    if pod.preempt_never {
        return Preemption::Failed { message: "not eligible due to preemptionPolicy=Never.".into(), clear_nomination: false };
    }
    // Victims already terminating on the node this pod preempted for will make room: wait for
    // them rather than evicting more.
    let nominated = cluster.nomination(&pod.uid).unwrap_or(&pod.nominated_node);
    if let Some(i) = cluster.node_index(nominated) {
        let unresolvable_there = fit.statuses.iter().any(|(n, s)| *n == i && s.unresolvable);
        if !unresolvable_there && cluster.nodes[i].pods.iter().any(|p| p.deleting && p.priority < pod.priority) {
            return Preemption::Failed { message: "not eligible due to a terminating pod on the nominated node.".into(), clear_nomination: false };
        }
    }
    let all = fit.num_all_nodes;
    let potential: Vec<usize> = fit.statuses.iter().filter(|(_, s)| !s.unresolvable).map(|(i, _)| *i).collect();
    if potential.is_empty() {
        return Preemption::Failed { message: format!("0/{all} nodes are available: {all} {NOT_HELPFUL}."), clear_nomination: true };
    }
    let wanted = (potential.len() * MIN_CANDIDATES_PERCENTAGE / 100).max(MIN_CANDIDATES_ABSOLUTE).min(potential.len());
    let offset = fastrand::usize(..potential.len());
    let state = CycleState::prepare(cluster, pod);
    let mut candidates = Vec::new();
    let mut statuses = Vec::new();
    for k in 0..potential.len() {
        let i = potential[(offset + k) % potential.len()];
        match select_victims(cluster, &state, i) {
            Ok(victims) => {
                candidates.push(Candidate { node: i, victims });
                if candidates.len() >= wanted {
                    break;
                }
            }
            Err(status) => statuses.push(status),
        }
    }
    if candidates.is_empty() {
        let absent = all.saturating_sub(statuses.len());
        let reasons = histogram(statuses.iter(), Some((NOT_HELPFUL, absent)));
        return Preemption::Failed { message: format!("0/{all} nodes are available: {reasons}."), clear_nomination: true };
    }
    Preemption::Nominate(pick(candidates))
}

/// The fewest, least important pods on node `i` whose eviction lets the pod fit, or why none do.
pub fn select_victims(cluster: &Cluster, state: &CycleState, i: usize) -> Result<Vec<Arc<PodInfo>>, Status> {
    let pod = state.pod;
    let node = &cluster.nodes[i];
    let mut potential: Vec<Arc<PodInfo>> = node.pods.iter().filter(|p| p.priority < pod.priority).cloned().collect();
    if potential.is_empty() {
        return Err(Status { plugin: Plugin::NodeResourcesFit, unresolvable: true, reasons: vec![Cow::Borrowed(NO_VICTIMS)] });
    }
    let mut sim = node.clone();
    let mut sim_state = state.clone();
    for v in &potential {
        sim.remove_pod(&v.uid);
        sim_state.update(cluster, v, node, -1);
    }
    run_filters(cluster, &sim_state, &sim)?;
    // Give back the most important pods first; whatever no longer fits stays a victim.
    potential.sort_by(|a, b| {
        if a.more_important_than(b) {
            std::cmp::Ordering::Less
        } else if b.more_important_than(a) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    let mut victims = Vec::new();
    for v in potential {
        sim.add_pod(v.clone());
        sim_state.update(cluster, &v, node, 1);
        if run_filters(cluster, &sim_state, &sim).is_err() {
            sim.remove_pod(&v.uid);
            sim_state.update(cluster, &v, node, -1);
            victims.push(v);
        }
    }
    Ok(victims)
}

/// Upstream's pickOneNodeForPreemption (without PodDisruptionBudgets): lowest highest-priority
/// victim, then lowest sum of priorities, then fewest victims, then the node whose most
/// important victims started last, then the first.
fn pick(mut candidates: Vec<Candidate>) -> Candidate {
    let highest = |c: &Candidate| c.victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN);
    // Offsetting each priority to be positive makes more victims always cost more.
    let sum = |c: &Candidate| c.victims.iter().map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1).sum::<i64>();
    // Among the highest-priority victims, the earliest start; never started counts as newest.
    let earliest_start = |c: &Candidate| {
        let top = highest(c);
        c.victims.iter().filter(|v| v.priority == top).map(|v| v.start_time).min_by(|a, b| match (a, b) {
            (Some(a), Some(b)) => a.cmp(b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        })
    };
    let mut best = 0;
    for k in 1..candidates.len() {
        let (a, b) = (&candidates[k], &candidates[best]);
        let better = (highest(a), sum(a), a.victims.len()).cmp(&(highest(b), sum(b), b.victims.len())).then_with(|| {
            // Later is better; `None` (not started) is the latest.
            match (earliest_start(a).flatten(), earliest_start(b).flatten()) {
                (Some(x), Some(y)) => y.cmp(&x),
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(_), None) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            }
        });
        if better == std::cmp::Ordering::Less {
            best = k;
        }
    }
    candidates.swap_remove(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::{Cursor, ScheduleError, schedule};
    use crate::filters::cluster_of;
    use crate::model::testing::{node, pod};
    use serde_json::json;

    fn running(name: &str, node: &str, priority: i32, cpu: &str, started: &str) -> PodInfo {
        pod(
            name,
            json!({"spec": {"nodeName": node, "priority": priority, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
                   "status": {"startTime": started}}),
        )
    }

    fn pending(priority: i32, cpu: &str) -> PodInfo {
        pod("new", json!({"spec": {"priority": priority, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}))
    }

    fn fit_error(c: &Cluster, p: &PodInfo) -> FitError {
        match schedule(c, p, 1, &mut Cursor::default()) {
            Err(ScheduleError::Unfit(f)) => f,
            other => panic!("expected no fit, got {other:?}"),
        }
    }

    #[test]
    fn evicts_the_fewest_lowest_priority_pods() {
        let t = "2024-01-01T00:00:00Z";
        let c = cluster_of(
            vec![node("a", "4", "8Gi", 110, json!({})), node("b", "4", "8Gi", 110, json!({}))],
            vec![
                // a: two low pods and a mid one; evicting one low pod is enough.
                running("a-low-1", "a", 1, "1500m", t),
                running("a-low-2", "a", 1, "1500m", t),
                running("a-mid", "a", 50, "500m", t),
                // b: one pod of higher (but still lower than incoming) priority.
                running("b-mid", "b", 50, "3500m", t),
            ],
        );
        let p = pending(100, "2");
        let fit = fit_error(&c, &p);
        match preempt(&c, &p, &fit) {
            Preemption::Nominate(cand) => {
                assert_eq!(c.nodes[cand.node].name, "a", "a's highest victim has priority 1, b's 50");
                assert_eq!(cand.victims.len(), 1);
                assert!(cand.victims[0].name.starts_with("a-low"));
            }
            other => panic!("expected a nomination, got {other:?}"),
        }
    }

    #[test]
    fn nothing_to_evict() {
        let c = cluster_of(
            vec![
                node("a", "2", "8Gi", 110, json!({})),
                node("tainted", "2", "8Gi", 110, json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}})),
                node("small", "1", "8Gi", 110, json!({})),
            ],
            vec![running("same", "a", 100, "2", "2024-01-01T00:00:00Z")],
        );
        let p = pending(100, "2");
        let fit = fit_error(&c, &p);
        match preempt(&c, &p, &fit) {
            Preemption::Failed { message, clear_nomination } => {
                assert_eq!(message, format!("0/3 nodes are available: 1 {NO_VICTIMS}, 2 {NOT_HELPFUL}."));
                assert!(clear_nomination);
            }
            other => panic!("expected failure, got {other:?}"),
        }
        let mut fit_msg = fit.clone();
        fit_msg.post_filter = Some(format!("preemption: 0/3 nodes are available: 1 {NO_VICTIMS}, 2 {NOT_HELPFUL}."));
        assert_eq!(
            fit_msg.message(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {k: }, 2 Insufficient cpu. preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn policy_never_and_terminating_victims() {
        let c = cluster_of(vec![node("a", "1", "8Gi", 110, json!({}))], vec![running("low", "a", 1, "1", "2024-01-01T00:00:00Z")]);
        let never = pod("new", json!({"spec": {"priority": 100, "preemptionPolicy": "Never", "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}}));
        let fit = fit_error(&c, &never);
        assert!(matches!(preempt(&c, &never, &fit), Preemption::Failed { ref message, clear_nomination: false } if message == "not eligible due to preemptionPolicy=Never."));
        let mut terminating = running("low", "a", 1, "1", "2024-01-01T00:00:00Z");
        terminating.deleting = true;
        let c = cluster_of(vec![node("a", "1", "8Gi", 110, json!({}))], vec![terminating]);
        let mut p = pending(100, "1");
        p.nominated_node = "a".into();
        let fit = fit_error(&c, &p);
        assert!(matches!(preempt(&c, &p, &fit), Preemption::Failed { clear_nomination: false, .. }));
    }

    #[test]
    fn prefers_evicting_the_newest_among_equals() {
        let c = cluster_of(
            vec![node("old", "1", "8Gi", 110, json!({})), node("new", "1", "8Gi", 110, json!({}))],
            vec![running("o", "old", 1, "1", "2020-01-01T00:00:00Z"), running("n", "new", 1, "1", "2024-01-01T00:00:00Z")],
        );
        let p = pending(100, "1");
        let fit = fit_error(&c, &p);
        for _ in 0..20 {
            match preempt(&c, &p, &fit) {
                Preemption::Nominate(cand) => assert_eq!(c.nodes[cand.node].name, "new"),
                other => panic!("expected a nomination, got {other:?}"),
            }
        }
    }

    #[test]
    fn anti_affinity_victims() {
        // The incoming pod refuses to share a node with app=noisy; only evicting it helps.
        let noisy = pod("noisy", json!({"metadata": {"labels": {"app": "noisy"}}, "spec": {"nodeName": "a", "priority": 1}}));
        let quiet = pod("quiet", json!({"spec": {"nodeName": "a", "priority": 1}}));
        let c = cluster_of(vec![node("a", "4", "8Gi", 110, json!({}))], vec![noisy, quiet]);
        let p = pod(
            "new",
            json!({"spec": {"priority": 100, "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "noisy"}}, "topologyKey": "kubernetes.io/hostname"}]}}}}),
        );
        let fit = fit_error(&c, &p);
        match preempt(&c, &p, &fit) {
            Preemption::Nominate(cand) => assert_eq!(cand.victims.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["noisy"]),
            other => panic!("expected a nomination, got {other:?}"),
        }
    }
}
