//! The node IPAM controller (kube-controller-manager's range allocator with
//! `--allocate-node-cidrs`, as k3s runs it): every Node without `spec.podCIDRs` gets the next free
//! block of the cluster CIDR (a /24 per node from IPv4 ranges, a /64 from IPv6 ones; one of each
//! for a dual-stack `--cluster-cidr`). The node's pods take their IPs from it.
//!
//! Blocks nodes already have are kept and marked used, also those set by someone else (`berth
//! sim-nodes` sets its own); blocks outside the cluster CIDR are left alone and not tracked. The
//! used set lives in memory only: on start it is rebuilt from the nodes before anything is
//! allocated. A deleted node's blocks are free again. When the range is exhausted the node gets an
//! event `CIDRNotAvailable` and is retried. `spec.podCIDR(s)` cannot change once set (the API
//! server refuses), so a lost race with another writer ends in a refused patch and the node's own
//! value being adopted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::cache::Cache;
use crate::events::Recorder;
use crate::workqueue::{WorkQueue, run_workers};

/// k3s's default `--cluster-cidr`.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
/// The block a node gets (upstream's `--node-cidr-mask-size-ipv4/ipv6` defaults).
const NODE_MASK_V4: u8 = 24;
const NODE_MASK_V6: u8 = 64;
/// Upstream refuses cluster ranges with more than 2^16 node blocks.
const MAX_MASK_DIFF: u8 = 16;
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("invalid CIDR {0:?}")]
    InvalidCidr(String),
    #[error("cluster CIDR {cidr} is smaller than a node's /{node_mask}")]
    TooSmall { cidr: String, node_mask: u8 },
    #[error("cluster CIDR {cidr} holds more than 2^{MAX_MASK_DIFF} node blocks of /{node_mask}")]
    TooLarge { cidr: String, node_mask: u8 },
    #[error("at most one cluster CIDR per IP family, got {0:?}")]
    DualStack(String),
}

/// An IPv4 or IPv6 network, addresses as 128-bit numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    v6: bool,
    addr: u128,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::y/n`; bits beyond the prefix are dropped (Go's ParseCIDR).
    pub fn parse(text: &str) -> Result<Self, IpamError> {
        let bad = || IpamError::InvalidCidr(text.to_string());
        let (ip, prefix) = text.trim().split_once('/').ok_or_else(bad)?;
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let (v6, addr, bits) = match ip {
            IpAddr::V4(v4) => (false, u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (true, u128::from(v6), 128),
        };
        if prefix > bits {
            return Err(bad());
        }
        let cidr = Self { v6, addr, prefix };
        Ok(Self { addr: cidr.first(), ..cidr })
    }

    fn bits(&self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }

    fn host_bits(&self) -> u32 {
        u32::from(self.bits() - self.prefix)
    }

    fn first(&self) -> u128 {
        let host = self.host_bits();
        if host >= 128 { 0 } else { self.addr >> host << host }
    }

    fn last(&self) -> u128 {
        let host = self.host_bits();
        let span = if host >= 128 { u128::MAX } else { (1u128 << host) - 1 };
        self.first() | span
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = if self.v6 { IpAddr::from(self.addr.to_be_bytes()) } else { IpAddr::from((self.addr as u32).to_be_bytes()) };
        write!(f, "{ip}/{}", self.prefix)
    }
}

/// What marking a node's block as used found.
#[derive(Debug, PartialEq, Eq)]
pub enum Occupied {
    Yes,
    /// Not in the cluster range (or another family): not ours to track.
    Outside,
}

/// The node blocks of one cluster range, with a used bit each (upstream's cidrset). Allocation
/// goes round-robin from after the last block handed out, so a block freed by a deleted node is
/// not reused at once (addresses of its pods may still be in caches).
pub struct CidrSet {
    cluster: Cidr,
    node_mask: u8,
    used: Vec<u64>,
    count: usize,
    allocated: usize,
    next: usize,
}

impl CidrSet {
    pub fn new(cluster: Cidr) -> Result<Self, IpamError> {
        let node_mask = if cluster.v6 { NODE_MASK_V6 } else { NODE_MASK_V4 };
        if cluster.prefix > node_mask {
            return Err(IpamError::TooSmall { cidr: cluster.to_string(), node_mask });
        }
        if node_mask - cluster.prefix > MAX_MASK_DIFF {
            return Err(IpamError::TooLarge { cidr: cluster.to_string(), node_mask });
        }
        let count = 1usize << (node_mask - cluster.prefix);
        Ok(Self { cluster, node_mask, used: vec![0; count.div_ceil(64)], count, allocated: 0, next: 0 })
    }

    fn block_bits(&self) -> u32 {
        u32::from(self.cluster.bits() - self.node_mask)
    }

    fn block(&self, index: usize) -> Cidr {
        Cidr { v6: self.cluster.v6, addr: self.cluster.first() + ((index as u128) << self.block_bits()), prefix: self.node_mask }
    }

    fn is_used(&self, i: usize) -> bool {
        self.used[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize, used: bool) {
        if self.is_used(i) != used {
            self.used[i / 64] ^= 1 << (i % 64);
            if used {
                self.allocated += 1;
            } else {
                self.allocated -= 1;
            }
        }
    }

    /// The next free block, or None when every block is used.
    pub fn allocate_next(&mut self) -> Option<Cidr> {
        if self.allocated == self.count {
            return None;
        }
        let index = (0..self.count).map(|i| (self.next + i) % self.count).find(|&i| !self.is_used(i))?;
        self.set(index, true);
        self.next = (index + 1) % self.count;
        Some(self.block(index))
    }

    /// The blocks `cidr` overlaps in this range (a node's CIDR may be larger or smaller than a
    /// block); None when it is outside.
    fn indices(&self, cidr: &Cidr) -> Option<std::ops::RangeInclusive<usize>> {
        if cidr.v6 != self.cluster.v6 {
            return None;
        }
        let (start, end) = (cidr.first().max(self.cluster.first()), cidr.last().min(self.cluster.last()));
        if start > end {
            return None;
        }
        let offset = |a: u128| ((a - self.cluster.first()) >> self.block_bits()) as usize;
        Some(offset(start)..=offset(end))
    }

    pub fn occupy(&mut self, cidr: &Cidr) -> Occupied {
        let Some(range) = self.indices(cidr) else { return Occupied::Outside };
        for i in range {
            self.set(i, true);
        }
        Occupied::Yes
    }

    pub fn release(&mut self, cidr: &Cidr) {
        if let Some(range) = self.indices(cidr) {
            for i in range {
                self.set(i, false);
            }
        }
    }

    pub fn contains(&self, cidr: &Cidr) -> bool {
        self.indices(cidr).is_some()
    }
}

/// Checks a `--cluster-cidr` value (one CIDR, or one IPv4 and one IPv6 separated by a comma; empty
/// turns allocation off); for use as a command-line value parser.
pub fn parse_cluster_cidr(text: &str) -> Result<String, String> {
    Allocator::new(text).map(|_| text.to_string()).map_err(|e| e.to_string())
}

/// The cluster's ranges and which blocks each node holds.
pub struct Allocator {
    sets: Vec<CidrSet>,
    /// The blocks of each node that lie in our ranges, as last seen or assigned.
    held: HashMap<String, Vec<Cidr>>,
}

impl Allocator {
    pub fn new(cluster_cidrs: &str) -> Result<Self, IpamError> {
        let mut sets: Vec<CidrSet> = Vec::new();
        for part in cluster_cidrs.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let set = CidrSet::new(Cidr::parse(part)?)?;
            if sets.iter().any(|s| s.cluster.v6 == set.cluster.v6) {
                return Err(IpamError::DualStack(cluster_cidrs.to_string()));
            }
            sets.push(set);
        }
        Ok(Self { sets, held: HashMap::new() })
    }

    pub fn is_enabled(&self) -> bool {
        !self.sets.is_empty()
    }

    /// Records that `node` holds `cidrs` (what its spec says): marks ours used, frees what it
    /// held before and no longer does.
    pub fn observe(&mut self, node: &str, cidrs: &[String]) {
        let parsed: Vec<Cidr> = cidrs.iter().filter_map(|c| Cidr::parse(c).ok()).collect();
        let mut ours = Vec::new();
        for cidr in parsed {
            for set in &mut self.sets {
                if set.occupy(&cidr) == Occupied::Yes {
                    ours.push(cidr);
                }
            }
        }
        if let Some(before) = self.held.insert(node.to_string(), ours.clone()) {
            for cidr in before.into_iter().filter(|c| !ours.contains(c)) {
                self.release_unless_held(&cidr);
            }
        }
        if ours.is_empty() {
            self.held.remove(node);
        }
    }

    /// The blocks for a node that has none: those already handed to it (a patch that has not
    /// reached the cache yet), else a new one from each range. None when a range is exhausted
    /// (nothing is taken then).
    pub fn assign(&mut self, node: &str) -> Option<Vec<Cidr>> {
        if let Some(held) = self.held.get(node).filter(|h| !h.is_empty()) {
            return Some(held.clone());
        }
        let mut taken = Vec::new();
        for i in 0..self.sets.len() {
            match self.sets[i].allocate_next() {
                Some(cidr) => taken.push(cidr),
                None => {
                    for cidr in &taken {
                        self.release_unless_held(cidr);
                    }
                    return None;
                }
            }
        }
        self.held.insert(node.to_string(), taken.clone());
        Some(taken)
    }

    /// The node is gone (or its assignment failed): its blocks are free.
    pub fn forget(&mut self, node: &str) {
        if let Some(held) = self.held.remove(node) {
            for cidr in held {
                self.release_unless_held(&cidr);
            }
        }
    }

    /// Two nodes may claim the same block (set by hand): it stays used while either has it.
    fn release_unless_held(&mut self, cidr: &Cidr) {
        if self.held.values().flatten().any(|c| c == cidr) {
            return;
        }
        for set in &mut self.sets {
            if set.contains(cidr) {
                set.release(cidr);
            }
        }
    }
}

fn pod_cidrs(node: &Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    let list: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default().into_iter().filter(|c| !c.is_empty()).collect();
    if !list.is_empty() {
        return list;
    }
    spec.and_then(|s| s.pod_cidr.clone()).filter(|c| !c.is_empty()).into_iter().collect()
}

pub async fn run(client: Client, cluster_cidr: String) {
    let allocator = match Allocator::new(&cluster_cidr) {
        Ok(a) if a.is_enabled() => a,
        Ok(_) => {
            tracing::info!("no cluster CIDR: node pod CIDRs are not allocated");
            return;
        }
        Err(error) => {
            tracing::error!(%error, "node IPAM controller not started");
            return;
        }
    };
    let allocator = Arc::new(Mutex::new(allocator));
    let (queue, rx) = WorkQueue::<String>::new();
    let q = queue.clone();
    let nodes = Cache::<Node>::spawn(
        Api::all(client.clone()),
        Box::new(move |old, new| {
            // Heartbeats change status only: nothing to do unless the node came, went, changed
            // its blocks or still has none.
            let relevant = match (old, new) {
                (Some(old), Some(new)) => pod_cidrs(new).is_empty() || pod_cidrs(old) != pod_cidrs(new),
                _ => true,
            };
            if let (true, Some(node)) = (relevant, new.or(old)) {
                q.add(node.name_any());
            }
        }),
    );
    nodes.synced().await;
    // Everything nodes already hold is used before anything is handed out.
    {
        let mut allocator = allocator.lock().unwrap_or_else(|e| e.into_inner());
        for node in nodes.all() {
            allocator.observe(&node.name_any(), &pod_cidrs(&node));
        }
    }
    let recorder = Recorder::new(client.clone(), "cidrAllocator");
    let ctx = Arc::new((client, nodes, allocator, recorder, queue.clone()));
    run_workers(queue, rx, 2, move |name: String| {
        let ctx = ctx.clone();
        async move {
            let (client, nodes, allocator, recorder, queue) = &*ctx;
            sync(client, nodes, allocator, recorder, queue, name).await;
        }
    })
    .await;
}

async fn sync(client: &Client, nodes: &Cache<Node>, allocator: &Mutex<Allocator>, recorder: &Recorder, queue: &WorkQueue<String>, name: String) {
    let lock = || allocator.lock().unwrap_or_else(|e| e.into_inner());
    let Some(node) = nodes.get("", &name) else {
        lock().forget(&name);
        return;
    };
    let current = pod_cidrs(&node);
    if !current.is_empty() {
        lock().observe(&name, &current);
        return;
    }
    if node.metadata.deletion_timestamp.is_some() {
        return;
    }
    let Some(cidrs) = lock().assign(&name) else {
        tracing::info!(node = %name, "no pod CIDR left to allocate");
        recorder.normal(node.as_ref(), "CIDRNotAvailable", format!("Node {name} status is now: CIDRNotAvailable"));
        queue.add_after(name, RETRY);
        return;
    };
    let cidrs: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    let patch = json!({"spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}});
    match Api::<Node>::all(client.clone()).patch(&name, &PatchParams::default(), &Patch::Strategic(patch)).await {
        Ok(patched) => {
            tracing::info!(node = %name, cidrs = ?cidrs, "allocated pod CIDRs");
            lock().observe(&name, &pod_cidrs(&patched));
        }
        Err(kube::Error::Api(status)) if status.code == 404 => lock().forget(&name),
        Err(error) => {
            // Refused (someone set another value meanwhile) or unreachable: take back ours; the
            // next pass adopts the node's own value or tries again.
            tracing::info!(%error, node = %name, "assigning pod CIDRs failed");
            recorder.normal(node.as_ref(), "CIDRAssignmentFailed", format!("Node {name} status is now: CIDRAssignmentFailed"));
            lock().forget(&name);
            queue.add_after(name, RETRY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn parses_and_prints_both_families() {
        assert_eq!(cidr("10.42.0.0/16").to_string(), "10.42.0.0/16");
        assert_eq!(cidr("10.42.3.7/16").to_string(), "10.42.0.0/16");
        assert_eq!(cidr("fd00:42::/56").to_string(), "fd00:42::/56");
        assert!(Cidr::parse("10.42.0.0").is_err());
        assert!(Cidr::parse("10.42.0.0/33").is_err());
        assert!(Cidr::parse("nonsense/8").is_err());
        assert!(matches!(CidrSet::new(cidr("10.42.0.0/25")), Err(IpamError::TooSmall { .. })));
        assert!(matches!(CidrSet::new(cidr("10.0.0.0/7")), Err(IpamError::TooLarge { .. })));
        assert!(parse_cluster_cidr("10.42.0.0/16,fd00:42::/56").is_ok());
        assert!(parse_cluster_cidr("10.42.0.0/16,10.43.0.0/16").is_err());
        assert!(parse_cluster_cidr("").is_ok());
    }

    #[test]
    fn allocates_each_block_once_round_robin() {
        let mut set = CidrSet::new(cidr("10.42.0.0/22")).unwrap();
        let got: Vec<String> = std::iter::from_fn(|| set.allocate_next()).map(|c| c.to_string()).collect();
        assert_eq!(got, ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24", "10.42.3.0/24"]);
        set.release(&cidr("10.42.1.0/24"));
        assert_eq!(set.allocate_next(), Some(cidr("10.42.1.0/24")));
        assert_eq!(set.allocate_next(), None);
        // A freed block is not handed out again before the others.
        let mut set = CidrSet::new(cidr("10.42.0.0/22")).unwrap();
        let first = set.allocate_next().unwrap();
        set.release(&first);
        assert_eq!(set.allocate_next(), Some(cidr("10.42.1.0/24")));
    }

    #[test]
    fn occupies_what_overlaps_and_ignores_the_rest() {
        let mut set = CidrSet::new(cidr("10.42.0.0/22")).unwrap();
        assert_eq!(set.occupy(&cidr("10.244.0.0/24")), Occupied::Outside);
        assert_eq!(set.occupy(&cidr("fd00::/64")), Occupied::Outside);
        assert_eq!(set.occupy(&cidr("10.42.0.0/23")), Occupied::Yes, "a larger block covers two");
        assert_eq!(set.occupy(&cidr("10.42.3.128/25")), Occupied::Yes, "a smaller one takes its block");
        assert_eq!(set.allocate_next(), Some(cidr("10.42.2.0/24")));
        assert_eq!(set.allocate_next(), None);
        // A range larger than the cluster's covers all of it.
        let mut set = CidrSet::new(cidr("10.42.0.0/23")).unwrap();
        assert_eq!(set.occupy(&cidr("10.0.0.0/8")), Occupied::Yes);
        assert_eq!(set.allocate_next(), None);
    }

    #[test]
    fn ipv6_blocks_are_slash_64() {
        let mut set = CidrSet::new(cidr("fd00:42::/63")).unwrap();
        assert_eq!(set.allocate_next(), Some(cidr("fd00:42::/64")));
        assert_eq!(set.allocate_next(), Some(cidr("fd00:42:0:1::/64")));
        assert_eq!(set.allocate_next(), None);
    }

    #[test]
    fn allocator_keeps_existing_blocks_and_frees_deleted_nodes() {
        let mut a = Allocator::new("10.42.0.0/22").unwrap();
        a.observe("sim-0", &["10.244.0.0/24".into()]);
        a.observe("old", &["10.42.0.0/24".into()]);
        let new = a.assign("new").unwrap();
        assert_eq!(new, vec![cidr("10.42.1.0/24")]);
        assert_eq!(a.assign("new").unwrap(), new, "asked again before the patch is seen: the same block");
        a.observe("new", &["10.42.1.0/24".into()]);
        assert_eq!(a.assign("b").unwrap(), vec![cidr("10.42.2.0/24")]);
        assert_eq!(a.assign("c").unwrap(), vec![cidr("10.42.3.0/24")]);
        assert_eq!(a.assign("d"), None, "exhausted");
        a.forget("old");
        assert_eq!(a.assign("d").unwrap(), vec![cidr("10.42.0.0/24")]);
        // Two nodes claiming one block by hand: it stays used until both are gone.
        a.observe("twin", &["10.42.3.0/24".into()]);
        a.forget("c");
        a.forget("sim-0");
        assert_eq!(a.assign("e"), None);
        a.forget("twin");
        assert_eq!(a.assign("e").unwrap(), vec![cidr("10.42.3.0/24")]);
    }

    #[test]
    fn dual_stack_assigns_one_block_per_family_or_none() {
        let mut a = Allocator::new("10.42.0.0/24, fd00:42::/64").unwrap();
        assert_eq!(a.assign("n1").unwrap(), vec![cidr("10.42.0.0/24"), cidr("fd00:42::/64")]);
        assert_eq!(a.assign("n2"), None);
        a.forget("n1");
        assert_eq!(a.assign("n2").unwrap().len(), 2);
    }
}
