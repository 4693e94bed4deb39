//! The address service credentials name (DESIGN "Decisions"): the node's own address as
//! containers and other nodes see it, never 127.0.0.1, so credentials stay valid when
//! instances get their own network namespaces or run elsewhere.
//!
//! An operator sets it with the config key `<type>_node/address`; otherwise it is the
//! source address of the default route, found without sending a packet or asking DNS.

use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};

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

/// A port that can be bound on `address` right now and is not in `taken`: any free one
/// when `range` is `None`, else one from the inclusive range (where containers are allowed
/// to connect; see `strato_container::network`), starting at a random place so nodes
/// sharing a host rarely race for the same one.
pub fn free_port(
    address: IpAddr,
    range: Option<(u16, u16)>,
    taken: &[u16],
) -> std::io::Result<u16> {
    let bindable = |port: u16| -> Option<u16> {
        let listener = TcpListener::bind((address, port)).ok()?;
        let port = listener.local_addr().ok()?.port();
        (!taken.contains(&port)).then_some(port)
    };
    let found = match range {
        None => (0..50).find_map(|_| bindable(0)),
        Some((a, b)) => {
            let (first, last) = (a.min(b).max(1), a.max(b));
            let size = u32::from(last - first) + 1;
            let start = rand::random::<u32>() % size;
            (0..size).find_map(|i| bindable(first + ((start + i) % size) as u16))
        }
    };
    found.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            match range {
                Some((a, b)) => format!("no free port in {a}-{b} on {address}"),
                None => format!("no free port on {address}"),
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_stay_in_the_range_and_skip_taken_ones() {
        let lo = IpAddr::from([127, 0, 0, 1]);
        let held = TcpListener::bind((lo, 0)).unwrap();
        let p = held.local_addr().unwrap().port();
        // The only port of the range is held: none free.
        assert!(free_port(lo, Some((p, p)), &[]).is_err());
        let q = free_port(lo, None, &[]).unwrap();
        assert_eq!(free_port(lo, Some((q, q)), &[]).unwrap(), q);
        assert!(free_port(lo, Some((q, q)), &[q]).is_err());
    }

    #[test]
    fn the_default_route_address_is_never_loopback() {
        if let Some(ip) = default_route_address() {
            assert!(!ip.is_loopback());
        }
    }
}
