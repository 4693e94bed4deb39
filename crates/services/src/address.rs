//! The address service credentials name (DESIGN "Decisions"): the node's own address as
//! containers and other nodes see it, never 127.0.0.1, so credentials stay valid when
//! instances get their own network namespaces or run elsewhere.
//!
//! An operator sets it with the config key `<type>_node/address`; otherwise it is the
//! source address of the default route, found without sending a packet or asking DNS.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};

/// The source address the kernel would use to reach the outside, or `None` when the host
/// has no route (then only an operator-set address can work).
pub fn default_route_address() -> Option<IpAddr> {
    // connect() on a UDP socket only selects a route; nothing is sent. 192.0.2.1 is
    // TEST-NET-1, never a real host.
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_address_is_never_loopback() {
        if let Some(ip) = default_route_address() {
            assert!(!ip.is_loopback());
        }
    }
}
