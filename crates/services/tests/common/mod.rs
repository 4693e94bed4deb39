//! What the service node tests share: the address credentials name, ids, plans, and the
//! uids a server process runs as (read from /proc, to prove it is not root).
#![allow(dead_code)] // each test binary uses its own part

use std::net::{IpAddr, Ipv4Addr};

use strato_services::{InstanceId, Plan};

/// The node's reachable address, as credentials name it (loopback only without a route).
pub fn address() -> IpAddr {
    strato_services::address::default_route_address().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

pub fn id(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

pub fn plan(size_mb: u64) -> Plan {
    Plan {
        name: "free".into(),
        size_mb,
    }
}

/// The real, effective, saved and filesystem uids of `pid`.
pub fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|u| u.parse().unwrap())
        .collect()
}
