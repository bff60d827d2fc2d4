//! Scores: how good each feasible node is, 0-100 per plugin after normalization, summed with
//! upstream's default weights (TaintToleration 3, NodeAffinity 2, PodTopologySpread 2,
//! InterPodAffinity 2, NodeResourcesFit 1, NodeResourcesBalancedAllocation 1).

use std::collections::HashMap;

use crate::cluster::Cluster;
use crate::model::{NodeInfo, PodInfo};
use crate::selectors::Labels;

pub const MAX_NODE_SCORE: i64 = 100;
const HOSTNAME: &str = "kubernetes.io/hostname";
/// Upstream's `hardPodAffinityWeight`: how much an existing pod's required affinity towards the
/// incoming pod counts as a preference.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

pub const WEIGHT_TAINT_TOLERATION: i64 = 3;
pub const WEIGHT_NODE_AFFINITY: i64 = 2;
pub const WEIGHT_TOPOLOGY_SPREAD: i64 = 2;
pub const WEIGHT_INTER_POD_AFFINITY: i64 = 2;
pub const WEIGHT_RESOURCES_FIT: i64 = 1;
pub const WEIGHT_BALANCED_ALLOCATION: i64 = 1;

/// The weighted total of every score plugin for each of `feasible` (node indexes).
pub fn score_nodes(cluster: &Cluster, pod: &PodInfo, feasible: &[usize]) -> Vec<i64> {
    let nodes: Vec<&NodeInfo> = feasible.iter().map(|&i| &cluster.nodes[i]).collect();
    let mut total = vec![0_i64; nodes.len()];
    let mut add = |weight: i64, scores: Option<Vec<i64>>| {
        if let Some(scores) = scores {
            for (t, s) in total.iter_mut().zip(scores) {
                *t += weight * s;
            }
        }
    };
    add(WEIGHT_TAINT_TOLERATION, Some(taint_toleration(pod, &nodes)));
    add(WEIGHT_NODE_AFFINITY, node_affinity(pod, &nodes));
    add(WEIGHT_RESOURCES_FIT, Some(nodes.iter().map(|n| least_allocated(pod, n)).collect()));
    add(WEIGHT_BALANCED_ALLOCATION, balanced_allocation(pod, &nodes));
    add(WEIGHT_TOPOLOGY_SPREAD, topology_spread(cluster, pod, &nodes));
    add(WEIGHT_INTER_POD_AFFINITY, inter_pod_affinity(cluster, pod, &nodes));
    total
}

/// Scales raw scores to 0..=100 by the highest one, optionally reversed (upstream's
/// `DefaultNormalizeScore`).
pub fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let v = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

/// Fewer untolerated PreferNoSchedule taints is better.
pub fn taint_toleration(pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    let tolerations: Vec<_> = pod.tolerations().iter().filter(|t| matches!(t.effect.as_deref(), None | Some("") | Some("PreferNoSchedule"))).cloned().collect();
    let mut scores: Vec<i64> =
        nodes.iter().map(|n| n.taints().iter().filter(|t| t.effect == "PreferNoSchedule" && !crate::selectors::tolerated(&tolerations, t)).count() as i64).collect();
    normalize(&mut scores, true);
    scores
}

/// The summed weights of the preferred node affinity terms each node matches.
pub fn node_affinity(pod: &PodInfo, nodes: &[&NodeInfo]) -> Option<Vec<i64>> {
    if pod.preferred_node_terms.is_empty() {
        return None;
    }
    let mut scores: Vec<i64> = nodes.iter().map(|n| pod.preferred_node_terms.iter().filter(|(_, t)| t.matches(&n.name, n.labels())).map(|(w, _)| i64::from(*w)).sum()).collect();
    normalize(&mut scores, false);
    Some(scores)
}

/// NodeResourcesFit's LeastAllocated strategy over cpu and memory: the share left free after
/// placing the pod, counting defaults for containers without requests.
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let parts =
        [(node.allocatable.milli_cpu, node.non_zero_milli_cpu + pod.requests.non_zero_milli_cpu), (node.allocatable.memory, node.non_zero_memory + pod.requests.non_zero_memory)];
    let mut sum = 0;
    let mut weights = 0;
    for (capacity, requested) in parts {
        if capacity == 0 {
            continue;
        }
        sum += if requested > capacity { 0 } else { (capacity - requested) * MAX_NODE_SCORE / capacity };
        weights += 1;
    }
    if weights == 0 { 0 } else { sum / weights }
}

/// Prefers nodes whose cpu and memory would be used in equal shares. Skipped for pods that
/// request neither, which would otherwise all pile onto the most balanced node.
pub fn balanced_allocation(pod: &PodInfo, nodes: &[&NodeInfo]) -> Option<Vec<i64>> {
    let req = &pod.requests.requests;
    if req.milli_cpu == 0 && req.memory == 0 {
        return None;
    }
    Some(
        nodes
            .iter()
            .map(|n| {
                let fraction = |capacity: i64, requested: i64| (capacity > 0).then(|| (requested as f64 / capacity as f64).min(1.0));
                let cpu = fraction(n.allocatable.milli_cpu, n.requested.milli_cpu + req.milli_cpu);
                let memory = fraction(n.allocatable.memory, n.requested.memory + req.memory);
                // With two resources the standard deviation is half their difference.
                let std = match (cpu, memory) {
                    (Some(c), Some(m)) => ((c - m) / 2.0).abs(),
                    _ => 0.0,
                };
                ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
            })
            .collect(),
    )
}

fn count_matching(node: &NodeInfo, pod: &PodInfo, selector: &crate::selectors::LabelSelector) -> i64 {
    node.pods.iter().filter(|p| !p.deleting && p.namespace == pod.namespace && selector.matches(p.labels())).count() as i64
}

/// ScheduleAnyway topology spread: fewer matching pods in a node's domains is better, each
/// constraint weighted by the log of its number of domains.
pub fn topology_spread(cluster: &Cluster, pod: &PodInfo, nodes: &[&NodeInfo]) -> Option<Vec<i64>> {
    let soft: Vec<usize> = pod.spread.iter().enumerate().filter(|(_, c)| !c.hard).map(|(i, _)| i).collect();
    if soft.is_empty() {
        return None;
    }
    let has_all_keys = |labels: &Labels| soft.iter().all(|&i| labels.contains_key(&pod.spread[i].topology_key));
    let ignored: Vec<bool> = nodes.iter().map(|n| !has_all_keys(n.labels())).collect();
    let considered = ignored.iter().filter(|i| !**i).count();
    // Per soft constraint: topology value -> matching pods, for the domains of scored nodes.
    let mut pair_counts: Vec<HashMap<&str, i64>> = vec![HashMap::new(); soft.len()];
    let mut weights = Vec::with_capacity(soft.len());
    for (k, &ci) in soft.iter().enumerate() {
        let key = &pod.spread[ci].topology_key;
        if key == HOSTNAME {
            weights.push(((considered + 2) as f64).ln());
            continue;
        }
        for (n, _) in nodes.iter().zip(&ignored).filter(|(_, ig)| !**ig) {
            if let Some(v) = n.labels().get(key) {
                pair_counts[k].entry(v.as_str()).or_insert(0);
            }
        }
        weights.push(((pair_counts[k].len() + 2) as f64).ln());
    }
    for (k, &ci) in soft.iter().enumerate() {
        let c = &pod.spread[ci];
        if c.topology_key == HOSTNAME || pair_counts[k].is_empty() {
            continue;
        }
        for other in cluster.candidates(&c.selector) {
            if other.deleting || other.namespace != pod.namespace || !c.selector.matches(other.labels()) {
                continue;
            }
            let Some((_, node)) = cluster.node_of(other) else { continue };
            let labels = node.labels();
            if !has_all_keys(labels) || (c.honor_node_affinity && !crate::filters::node_affinity_matches(pod, node)) {
                continue;
            }
            if c.honor_taints && crate::selectors::first_untolerated(node.taints(), pod.tolerations(), |t| t.effect == "NoSchedule" || t.effect == "NoExecute").is_some() {
                continue;
            }
            if let Some(v) = labels.get(&c.topology_key)
                && let Some(count) = pair_counts[k].get_mut(v.as_str())
            {
                *count += 1;
            }
        }
    }
    let raw: Vec<Option<i64>> = nodes
        .iter()
        .zip(&ignored)
        .map(|(n, ig)| {
            if *ig {
                return None;
            }
            let mut score = 0.0;
            for (k, &ci) in soft.iter().enumerate() {
                let c = &pod.spread[ci];
                let Some(v) = n.labels().get(&c.topology_key) else { continue };
                let count = if c.topology_key == HOSTNAME { count_matching(n, pod, &c.selector) } else { pair_counts[k].get(v.as_str()).copied().unwrap_or(0) };
                score += count as f64 * weights[k] + f64::from(c.max_skew - 1);
            }
            Some(score.round() as i64)
        })
        .collect();
    let min = raw.iter().flatten().copied().min().unwrap_or(0);
    let max = raw.iter().flatten().copied().max().unwrap_or(0);
    Some(
        raw.into_iter()
            .map(|s| match s {
                None => 0,
                Some(_) if max == 0 => MAX_NODE_SCORE,
                Some(s) => MAX_NODE_SCORE * (max + min - s) / max,
            })
            .collect(),
    )
}

/// Adds `weight` to the domain `labels` has for `key`.
fn bump<'c>(topology: &mut HashMap<&'c str, HashMap<&'c str, i64>>, labels: &'c Labels, key: &str, weight: i64) {
    if let Some((k, v)) = labels.get_key_value(key) {
        *topology.entry(k.as_str()).or_default().entry(v.as_str()).or_insert(0) += weight;
    }
}

/// Preferred inter-pod affinity and anti-affinity (both directions), plus existing pods'
/// required affinity towards the incoming pod, summed per topology domain.
pub fn inter_pod_affinity(cluster: &Cluster, pod: &PodInfo, nodes: &[&NodeInfo]) -> Option<Vec<i64>> {
    let has_preferences = !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
    if !has_preferences && !cluster.any_pod_with_affinity() {
        return None;
    }
    let pod_ns = cluster.namespace_labels(&pod.namespace);
    let mut topology: HashMap<&str, HashMap<&str, i64>> = HashMap::new();
    for (sign, terms) in [(1, &pod.preferred_affinity), (-1, &pod.preferred_anti_affinity)] {
        for (w, t) in terms {
            for existing in cluster.candidates(&t.selector) {
                let Some((_, node)) = cluster.node_of(existing) else { continue };
                if t.matches(existing, cluster.namespace_labels(&existing.namespace)) {
                    bump(&mut topology, node.labels(), &t.topology_key, sign * i64::from(*w));
                }
            }
        }
    }
    for existing in cluster.pods_with_affinity() {
        let Some((_, node)) = cluster.node_of(existing) else { continue };
        let labels = node.labels();
        for t in &existing.required_affinity {
            if t.matches(pod, pod_ns) {
                bump(&mut topology, labels, &t.topology_key, HARD_POD_AFFINITY_WEIGHT);
            }
        }
        for (w, t) in &existing.preferred_affinity {
            if t.matches(pod, pod_ns) {
                bump(&mut topology, labels, &t.topology_key, i64::from(*w));
            }
        }
        for (w, t) in &existing.preferred_anti_affinity {
            if t.matches(pod, pod_ns) {
                bump(&mut topology, labels, &t.topology_key, -i64::from(*w));
            }
        }
    }
    if topology.values().all(HashMap::is_empty) {
        return None;
    }
    let raw: Vec<i64> = nodes
        .iter()
        .map(|n| {
            let labels = n.labels();
            topology.iter().map(|(k, values)| labels.get(*k).and_then(|v| values.get(v.as_str())).copied().unwrap_or(0)).sum()
        })
        .collect();
    let min = raw.iter().copied().min().unwrap_or(0);
    let max = raw.iter().copied().max().unwrap_or(0);
    let span = max - min;
    Some(raw.into_iter().map(|s| if span > 0 { (MAX_NODE_SCORE as f64 * ((s - min) as f64 / span as f64)) as i64 } else { 0 }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::cluster_of;
    use crate::model::testing::{node, pod, requests};
    use serde_json::json;

    fn refs(c: &Cluster) -> Vec<&NodeInfo> {
        c.order.iter().map(|&i| &c.nodes[i]).collect()
    }

    #[test]
    fn least_allocated_and_balanced() {
        let used = pod("u", json!({"spec": {"nodeName": "busy", "containers": [{"name": "c", "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}}]}}));
        let c = cluster_of(vec![node("idle", "4", "4Gi", 110, json!({})), node("busy", "4", "4Gi", 110, json!({}))], vec![used]);
        let p = pod("p", requests(json!({"cpu": "1", "memory": "1Gi"})));
        let idle = c.node("idle").expect("idle");
        let busy = c.node("busy").expect("busy");
        // idle: cpu (4000-1000)/4000 = 75, memory 75 -> 75. busy: cpu 0, memory 50 -> 25.
        assert_eq!(least_allocated(&p, idle), 75);
        assert_eq!(least_allocated(&p, busy), 25);
        // Best-effort pods count as 100m and 200Mi.
        let be = pod("be", json!({}));
        assert_eq!(least_allocated(&be, idle), ((4000 - 100) * 100 / 4000 + ((4 << 30) - (200 << 20)) * 100 / (4 << 30)) / 2);
        let balanced = balanced_allocation(&p, &[idle, busy]).expect("scored");
        // idle: 0.25 vs 0.25 -> 100; busy: 1.0 vs 0.5 -> std 0.25 -> 75.
        assert_eq!(balanced, vec![100, 75]);
        assert!(balanced_allocation(&be, &[idle]).is_none(), "best-effort pods skip balance");
    }

    #[test]
    fn prefer_no_schedule_taints() {
        let c = cluster_of(
            vec![
                node("clean", "1", "1Gi", 10, json!({})),
                node("one", "1", "1Gi", 10, json!({"spec": {"taints": [{"key": "a", "effect": "PreferNoSchedule"}]}})),
                node("two", "1", "1Gi", 10, json!({"spec": {"taints": [{"key": "a", "effect": "PreferNoSchedule"}, {"key": "b", "effect": "PreferNoSchedule"}]}})),
            ],
            vec![],
        );
        assert_eq!(taint_toleration(&pod("p", json!({})), &refs(&c)), vec![100, 50, 0]);
        let tolerant = pod("p", json!({"spec": {"tolerations": [{"operator": "Exists"}]}}));
        assert_eq!(taint_toleration(&tolerant, &refs(&c)), vec![100, 100, 100]);
    }

    #[test]
    fn preferred_node_affinity() {
        let c = cluster_of(
            vec![
                node("a", "1", "1Gi", 10, json!({"metadata": {"labels": {"disk": "ssd", "zone": "z1"}}})),
                node("b", "1", "1Gi", 10, json!({"metadata": {"labels": {"disk": "ssd"}}})),
                node("c", "1", "1Gi", 10, json!({})),
            ],
            vec![],
        );
        let p = pod(
            "p",
            json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 30, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
                {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}},
            ]}}}}),
        );
        assert_eq!(node_affinity(&p, &refs(&c)), Some(vec![100, 75, 0]));
        assert_eq!(node_affinity(&pod("q", json!({})), &refs(&c)), None);
    }

    #[test]
    fn preferred_pod_affinity_and_anti_affinity() {
        let zone = |name: &str, z: &str| node(name, "1", "1Gi", 10, json!({"metadata": {"labels": {"zone": z}}}));
        let cache = pod("cache", json!({"metadata": {"labels": {"app": "cache"}}, "spec": {"nodeName": "a1"}}));
        let batch = pod("batch", json!({"metadata": {"labels": {"app": "batch"}}, "spec": {"nodeName": "b1"}}));
        let c = cluster_of(vec![zone("a1", "a"), zone("a2", "a"), zone("b1", "b"), zone("c1", "c")], vec![cache, batch]);
        let p = pod(
            "web",
            json!({"spec": {"affinity": {
                "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}}]},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "batch"}}, "topologyKey": "zone"}}]},
            }}}),
        );
        // Raw: zone a +50, zone b -50, zone c 0 -> normalized by min..max.
        assert_eq!(inter_pod_affinity(&c, &p, &refs(&c)), Some(vec![100, 100, 0, 50]));
        assert_eq!(inter_pod_affinity(&c, &pod("q", json!({})), &refs(&c)), None);
    }

    #[test]
    fn schedule_anyway_spread() {
        let zone = |name: &str, z: &str| node(name, "1", "1Gi", 10, json!({"metadata": {"labels": {"zone": z}}}));
        let x = |name: &str, n: &str| pod(name, json!({"metadata": {"labels": {"app": "x"}}, "spec": {"nodeName": n}}));
        let c = cluster_of(vec![zone("a1", "a"), zone("b1", "b"), zone("c1", "c"), node("bare", "1", "1Gi", 10, json!({}))], vec![x("1", "a1"), x("2", "a1"), x("3", "b1")]);
        let p = pod(
            "new",
            json!({"metadata": {"labels": {"app": "x"}}, "spec": {"topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "x"}}}]}}),
        );
        let scores = topology_spread(&c, &p, &refs(&c)).expect("scored");
        // weight ln(3+2); raw a = round(2*1.609) = 3, b = 2, c = 0; bare is ignored.
        assert_eq!(scores, vec![0, 33, 100, 0]);
        assert!(topology_spread(&c, &pod("q", json!({})), &refs(&c)).is_none());
    }
}
