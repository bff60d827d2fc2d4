//! ClusterIP allocation for Services from the service CIDR.
//!
//! The set of allocated addresses is rebuilt from the stored Services at start-up and kept in
//! memory; allocation and release happen under one lock, so two Services never get the same
//! address from this server. (Several servers sharing one store would need the allocation itself
//! stored, as upstream's IPAddress objects do.)

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use serde_json::{Value, json};
use store::{RangeRequest, Store};

use crate::resources::ResourceDef;
use crate::status::{ApiError, ApiResult, Cause};

pub struct ServiceIps {
    network: u32,
    prefix_len: u8,
    used: Mutex<HashSet<u32>>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid service CIDR {0:?}: expected an IPv4 network such as 10.43.0.0/16 with a prefix of /8 to /28")]
pub struct CidrError(String);

impl ServiceIps {
    pub fn new(cidr: &str) -> Result<Self, CidrError> {
        let err = || CidrError(cidr.to_string());
        let (addr, len) = cidr.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
        let prefix_len: u8 = len.parse().map_err(|_| err())?;
        if !(8..=28).contains(&prefix_len) {
            return Err(err());
        }
        let mask = u32::MAX << (32 - prefix_len);
        Ok(Self { network: u32::from(addr) & mask, prefix_len, used: Mutex::new(HashSet::new()) })
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix_len)
    }

    /// The first usable address: upstream gives it to the `kubernetes` Service.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    fn contains(&self, ip: u32) -> bool {
        ip > self.network && ip < self.network + self.size() - 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the addresses of every stored Service as used.
    pub async fn load(&self, store: &dyn Store, services: &ResourceDef) -> Result<(), store::StoreError> {
        let all = store.range(RangeRequest { prefix: services.key_prefix(), ..Default::default() }).await?;
        let mut used = self.lock();
        for kv in all.kvs {
            if let Ok(obj) = serde_json::from_slice::<Value>(&kv.value)
                && let Some(ip) = cluster_ip(&obj)
            {
                used.insert(ip);
            }
        }
        Ok(())
    }

    /// Gives `service` a ClusterIP if it needs one, or reserves the one it asks for. Returns the
    /// address reserved, so a failed write can release it.
    pub async fn allocate_for(&self, def: &ResourceDef, service: &mut Value, _store: &dyn Store) -> ApiResult<Option<u32>> {
        let name = crate::objects::name(service).to_string();
        let service_type = service.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
        if service_type == "ExternalName" {
            return Ok(None);
        }
        let requested = service.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("").to_string();
        if requested == "None" {
            service["spec"]["clusterIPs"] = json!(["None"]);
            return Ok(None);
        }
        let mut used = self.lock();
        let ip = if requested.is_empty() {
            let size = self.size();
            let start = fastrand::u32(1..size - 1);
            let free = (0..size - 2).map(|i| self.network + 1 + (start - 1 + i) % (size - 2)).find(|ip| !used.contains(ip));
            free.ok_or_else(|| ApiError::internal("failed to allocate a serviceIP: range is full"))?
        } else {
            let parsed: Ipv4Addr = requested.parse().map_err(|_| {
                ApiError::invalid(def, &name, vec![Cause::invalid("spec.clusterIPs[0]", &json!(requested), "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")])
            })?;
            let ip = u32::from(parsed);
            if !self.contains(ip) {
                return Err(ApiError::invalid(
                    def,
                    &name,
                    vec![Cause::invalid("spec.clusterIPs", &json!([requested]), "failed to allocate IP: the provided IP is not in the valid range")],
                ));
            }
            if used.contains(&ip) {
                return Err(ApiError::invalid(
                    def,
                    &name,
                    vec![Cause::invalid("spec.clusterIPs", &json!([requested]), "failed to allocate IP: provided IP is already allocated")],
                ));
            }
            ip
        };
        used.insert(ip);
        let text = Ipv4Addr::from(ip).to_string();
        service["spec"]["clusterIP"] = json!(text);
        service["spec"]["clusterIPs"] = json!([text]);
        Ok(Some(ip))
    }

    pub fn release(&self, ip: u32) {
        self.lock().remove(&ip);
    }

    pub fn release_of(&self, service: &Value) {
        if let Some(ip) = cluster_ip(service) {
            self.release(ip);
        }
    }
}

fn cluster_ip(service: &Value) -> Option<u32> {
    let ip: Ipv4Addr = service.pointer("/spec/clusterIP")?.as_str()?.parse().ok()?;
    Some(u32::from(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        let ips = ServiceIps::new("10.43.0.0/16").unwrap();
        assert_eq!(ips.first(), Ipv4Addr::new(10, 43, 0, 1));
        assert!(ips.contains(u32::from(Ipv4Addr::new(10, 43, 255, 254))));
        assert!(!ips.contains(u32::from(Ipv4Addr::new(10, 43, 255, 255))));
        assert!(ServiceIps::new("10.43.0.0").is_err());
        assert!(ServiceIps::new("10.43.0.0/30").is_err());
    }
}
