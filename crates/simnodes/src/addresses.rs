//! Addresses of simulated nodes and their pods: a node's InternalIP and default pod CIDR follow
//! from its index, and pod IPs are handed out from the node's CIDR the way the host-local IPAM
//! plugin does (sequentially, the gateway `.1` kept back, freed addresses reused last).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Node InternalIPs come from 10.200.0.0/16; `.0.0` is the network, so index 0 is 10.200.0.1.
pub const MAX_NODES_BY_IP: usize = 65_534;

/// /24s from 10.244.0.0 (flannel's default) up to 10.255.255.0, then from the shared address
/// space 100.64.0.0/10: enough for far more nodes than one process simulates.
const TEN_SLASH_24S: usize = (256 - 244) * 256;
const SHARED_SLASH_24S: usize = 1 << 14;
pub const MAX_NODES_BY_CIDR: usize = TEN_SLASH_24S + SHARED_SLASH_24S;

pub fn node_ip(index: usize) -> Ipv4Addr {
    let n = u32::try_from(index + 1).unwrap_or(u32::MAX) & 0xffff;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) | n)
}

/// The pod CIDR a simulated node asks for when the control plane has not assigned one:
/// 10.244.<index>.0/24 for the first 256 nodes, continuing upwards.
pub fn default_pod_cidr(index: usize) -> String {
    let base = if index < TEN_SLASH_24S {
        u32::from(Ipv4Addr::new(10, 244, 0, 0)) + ((index as u32) << 8)
    } else {
        u32::from(Ipv4Addr::new(100, 64, 0, 0)) + (((index - TEN_SLASH_24S) as u32) << 8)
    };
    format!("{}/24", Ipv4Addr::from(base))
}

/// An IPv4 block, as in `spec.podCIDR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: u32,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = text.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        if prefix > 32 {
            return None;
        }
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        Some(Self { network: u32::from(addr) & mask, prefix })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
        u32::from(ip) & mask == self.network
    }

    /// Addresses in the block, network and broadcast included.
    fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }
}

/// One node's pod addresses. Offsets 0 (network), 1 (the bridge/gateway) and the broadcast
/// address are never given out.
pub struct IpPool {
    cidr: Cidr,
    /// Offset after the last one handed out: the next search starts here, so an address just
    /// freed is not reused at once (as host-local does).
    next: u32,
    holders: HashMap<u32, Arc<str>>,
}

impl IpPool {
    pub fn new(cidr: Cidr) -> Self {
        Self { cidr, next: 2, holders: HashMap::new() }
    }

    fn first(&self) -> u32 {
        2
    }

    /// One past the last usable offset.
    fn end(&self) -> u32 {
        u32::try_from(self.cidr.size().saturating_sub(1)).unwrap_or(u32::MAX)
    }

    fn offset_of(&self, ip: Ipv4Addr) -> Option<u32> {
        self.cidr.contains(ip).then(|| u32::from(ip) - self.cidr.network)
    }

    fn ip_at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.cidr.network + offset)
    }

    /// Records that `uid` already has `ip` (a pod that was running before this process started).
    /// False when the address is outside the block or held by another pod.
    pub fn reserve(&mut self, ip: Ipv4Addr, uid: &Arc<str>) -> bool {
        let Some(offset) = self.offset_of(ip) else { return false };
        match self.holders.get(&offset) {
            Some(holder) => holder == uid,
            None => {
                self.holders.insert(offset, uid.clone());
                true
            }
        }
    }

    /// The next free address for `uid`. When every address is taken, one held by a pod for which
    /// `reusable` answers true (a finished pod whose sandbox would be gone) is handed over.
    pub fn allocate(&mut self, uid: &Arc<str>, reusable: impl Fn(&str) -> bool) -> Option<Ipv4Addr> {
        let (first, end) = (self.first(), self.end());
        if end <= first {
            return None;
        }
        let span = end - first;
        let start = if (first..end).contains(&self.next) { self.next } else { first };
        let pick = (0..span)
            .map(|i| first + (start - first + i) % span)
            .find(|o| !self.holders.contains_key(o))
            .or_else(|| {
                let mut taken: Vec<u32> = self.holders.iter().filter(|(_, h)| reusable(h)).map(|(o, _)| *o).collect();
                taken.sort_unstable();
                taken.first().copied()
            })?;
        self.holders.insert(pick, uid.clone());
        self.next = pick + 1;
        Some(self.ip_at(pick))
    }

    pub fn release(&mut self, ip: Ipv4Addr, uid: &str) {
        if let Some(offset) = self.offset_of(ip)
            && self.holders.get(&offset).is_some_and(|h| &**h == uid)
        {
            self.holders.remove(&offset);
        }
    }

    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.holders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_follow_the_index() {
        assert_eq!(node_ip(0), Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(node_ip(300), Ipv4Addr::new(10, 200, 1, 45));
        assert_eq!(default_pod_cidr(0), "10.244.0.0/24");
        assert_eq!(default_pod_cidr(7), "10.244.7.0/24");
        assert_eq!(default_pod_cidr(256), "10.245.0.0/24");
        assert_eq!(default_pod_cidr(TEN_SLASH_24S - 1), "10.255.255.0/24");
        assert_eq!(default_pod_cidr(TEN_SLASH_24S), "100.64.0.0/24");
        assert_eq!(default_pod_cidr(MAX_NODES_BY_CIDR - 1), "100.127.255.0/24");
    }

    #[test]
    fn cidr_parsing() {
        let c = Cidr::parse("10.244.3.0/24").unwrap();
        assert!(c.contains(Ipv4Addr::new(10, 244, 3, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 4, 1)));
        assert_eq!(Cidr::parse("10.244.3.7/24"), Some(c));
        assert!(Cidr::parse("fd00::/64").is_none());
        assert!(Cidr::parse("10.0.0.0/33").is_none());
    }

    #[test]
    fn pool_hands_out_sequentially_and_reuses_last() {
        let mut pool = IpPool::new(Cidr::parse("10.244.1.0/29").unwrap());
        let uids: Vec<Arc<str>> = (0..6).map(|i| Arc::from(format!("u{i}"))).collect();
        let a = pool.allocate(&uids[0], |_| false).unwrap();
        let b = pool.allocate(&uids[1], |_| false).unwrap();
        assert_eq!((a, b), (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3)));
        pool.release(a, "u0");
        // .2 was just freed: the next pod gets .4, not .2.
        assert_eq!(pool.allocate(&uids[2], |_| false), Some(Ipv4Addr::new(10, 244, 1, 4)));
        assert_eq!(pool.allocate(&uids[3], |_| false), Some(Ipv4Addr::new(10, 244, 1, 5)));
        assert_eq!(pool.allocate(&uids[4], |_| false), Some(Ipv4Addr::new(10, 244, 1, 6)));
        // Wraps around to the freed .2; .7 is the broadcast address.
        assert_eq!(pool.allocate(&uids[5], |_| false), Some(Ipv4Addr::new(10, 244, 1, 2)));
        let extra: Arc<str> = Arc::from("x");
        assert_eq!(pool.allocate(&extra, |_| false), None);
        // A finished pod's address may be taken over when nothing else is left.
        assert_eq!(pool.allocate(&extra, |h| h == "u1"), Some(Ipv4Addr::new(10, 244, 1, 3)));
        assert_eq!(pool.in_use(), 5);
    }

    #[test]
    fn reserve_keeps_existing_addresses() {
        let mut pool = IpPool::new(Cidr::parse("10.244.1.0/24").unwrap());
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        assert!(pool.reserve(Ipv4Addr::new(10, 244, 1, 2), &a));
        assert!(pool.reserve(Ipv4Addr::new(10, 244, 1, 2), &a));
        assert!(!pool.reserve(Ipv4Addr::new(10, 244, 1, 2), &b));
        assert!(!pool.reserve(Ipv4Addr::new(10, 9, 1, 2), &b));
        assert_eq!(pool.allocate(&b, |_| false), Some(Ipv4Addr::new(10, 244, 1, 3)));
    }
}
