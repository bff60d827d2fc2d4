//! Pod traffic between nodes, host-gw style (flannel's host-gw backend): a route to every other
//! node's pod CIDR through that node's InternalIP, and one masquerade rule for traffic leaving the
//! cluster. Pod-to-pod traffic keeps its source address; only traffic to addresses outside all
//! pod CIDRs is masqueraded, by one nftables rule instead of per-pod iptables chains (the CNI
//! bridge plugin's ipMasq), which also keeps pod start-up cheap.
//!
//! Nodes must share a link (one L2 segment), as host-gw requires.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

/// The nftables table the agent owns; replaced as a whole on every change.
const NFT_TABLE: &str = "berth";
const RESYNC: Duration = Duration::from_secs(5);

fn internal_ip(node: &Node) -> Option<String> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    addresses.iter().find(|a| a.type_ == "InternalIP").map(|a| a.address.clone())
}

fn pod_cidrs(node: &Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    let mut cidrs: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if cidrs.is_empty()
        && let Some(cidr) = spec.and_then(|s| s.pod_cidr.clone())
    {
        cidrs.push(cidr);
    }
    cidrs.into_iter().filter(|c| !c.contains(':')).collect()
}

/// The nftables script for the node's own pod CIDR given every pod CIDR of the cluster.
fn nft_script(own: &str, all: &[String]) -> String {
    let set = all.join(", ");
    format!(
        "table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {own} ip daddr != {{ {set} }} masquerade\n  }}\n}}\n"
    )
}

/// The bridge plugin's gateway for an IPv4 CIDR: its first address.
fn gateway_of(cidr: &str) -> Option<String> {
    let (network, length) = cidr.split_once('/')?;
    let length: u32 = length.parse().ok().filter(|l| *l <= 30)?;
    let network = u32::from(network.parse::<std::net::Ipv4Addr>().ok()?);
    let mask = if length == 0 { 0 } else { u32::MAX << (32 - length) };
    Some(std::net::Ipv4Addr::from((network & mask) + 1).to_string())
}

async fn run_command(program: &str, args: &[&str], input: Option<&str>) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new(program);
    command.args(args).stdin(if input.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() }).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("{program}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await.map_err(|e| format!("{program}: {e}"))?;
    }
    let output = child.wait_with_output().await.map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() { Ok(()) } else { Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim())) }
}

/// Keeps routes and the masquerade rule in step with the cluster's nodes, forever.
pub async fn run(client: Client, node_name: String, node_ip: String) {
    let nodes: Api<Node> = Api::all(client);
    let mut routes: BTreeMap<String, String> = BTreeMap::new();
    let mut applied_script = String::new();
    loop {
        match nodes.list(&ListParams::default()).await {
            Ok(list) => {
                let own = list.items.iter().find(|n| n.name_any() == node_name).map(pod_cidrs).unwrap_or_default();
                let mut all: Vec<String> = list.items.iter().flat_map(pod_cidrs).collect();
                all.sort();
                all.dedup();
                let mut wanted: BTreeMap<String, String> = BTreeMap::new();
                for node in list.items.iter().filter(|n| n.name_any() != node_name) {
                    let Some(ip) = internal_ip(node) else { continue };
                    if ip == node_ip {
                        continue;
                    }
                    for cidr in pod_cidrs(node) {
                        wanted.insert(cidr, ip.clone());
                    }
                }
                for (cidr, via) in &wanted {
                    if routes.get(cidr) != Some(via) {
                        match run_command("ip", &["route", "replace", cidr, "via", via], None).await {
                            Ok(()) => {
                                routes.insert(cidr.clone(), via.clone());
                            }
                            Err(error) => tracing::warn!(%error, "adding a route to another node's pods"),
                        }
                    }
                }
                let stale: Vec<String> = routes.keys().filter(|c| !wanted.contains_key(*c)).cloned().collect();
                for cidr in stale {
                    let _ = run_command("ip", &["route", "del", &cidr], None).await;
                    routes.remove(&cidr);
                }
                if let Some(own) = own.first() {
                    // The bridge's own route to the pod CIDR. It is the kernel's, made when the
                    // bridge got its gateway address; but a bridge that outlived an earlier
                    // cluster on this host (where another node had this CIDR, routed elsewhere)
                    // keeps the address without the route, and the host could not reach its
                    // own pods. Restoring it is a no-op when it is there.
                    if let Some(gateway) = gateway_of(own) {
                        let bridge = crate::node::BRIDGE;
                        if let Err(error) = run_command("ip", &["route", "replace", own, "dev", bridge, "proto", "kernel", "scope", "link", "src", &gateway], None).await {
                            tracing::debug!(%error, "the pod bridge has no gateway address yet");
                        }
                    }
                    let script = nft_script(own, &all);
                    if script != applied_script {
                        match run_command("nft", &["-f", "-"], Some(&script)).await {
                            Ok(()) => applied_script = script,
                            Err(error) => tracing::warn!(%error, "installing the masquerade rule (is nftables installed?)"),
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "listing nodes for routes"),
        }
        tokio::time::sleep(RESYNC).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_the_first_address() {
        assert_eq!(gateway_of("10.42.3.0/24").as_deref(), Some("10.42.3.1"));
        assert_eq!(gateway_of("10.42.3.7/24").as_deref(), Some("10.42.3.1"));
        assert_eq!(gateway_of("fd00::/64"), None);
        assert_eq!(gateway_of("10.42.0.0/32"), None);
    }

    #[test]
    fn masquerades_only_traffic_leaving_the_pod_networks() {
        let script = nft_script("10.42.0.0/24", &["10.42.0.0/24".into(), "10.42.1.0/24".into()]);
        assert!(script.contains("ip saddr 10.42.0.0/24 ip daddr != { 10.42.0.0/24, 10.42.1.0/24 } masquerade"), "{script}");
        // Declared, deleted and re-created: applying it twice leaves one copy.
        assert!(script.starts_with("table ip berth\ndelete table ip berth\n"));
    }
}
