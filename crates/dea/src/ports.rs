//! Hands out instance ports from the configured range: never one in use by another
//! instance, and only ports that can be bound right now (something else may hold one).

use std::collections::HashSet;
use std::net::TcpListener;

pub struct PortAllocator {
    first: u16,
    last: u16,
    next: u16,
    used: HashSet<u16>,
}

impl PortAllocator {
    /// Ports `first..=last`.
    pub fn new((first, last): (u16, u16)) -> Self {
        let (first, last) = if first <= last {
            (first, last)
        } else {
            (last, first)
        };
        PortAllocator {
            first,
            last,
            next: first,
            used: HashSet::new(),
        }
    }

    /// A free, bindable port, or `None` when the range is exhausted.
    pub fn allocate(&mut self) -> Option<u16> {
        let size = u32::from(self.last - self.first) + 1;
        for _ in 0..size {
            let port = self.next;
            self.next = if port >= self.last {
                self.first
            } else {
                port + 1
            };
            if self.used.contains(&port) {
                continue;
            }
            if TcpListener::bind(("0.0.0.0", port)).is_ok() {
                self.used.insert(port);
                return Some(port);
            }
        }
        None
    }

    pub fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_used_and_bound_ports() {
        let held = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let mut ports = PortAllocator::new((port, port.saturating_add(1)));
        let got = ports.allocate();
        assert_ne!(got, Some(port), "a bound port is skipped");
        if let Some(p) = got {
            assert_eq!(ports.allocate(), None, "range exhausted");
            ports.release(p);
            assert_eq!(ports.allocate(), Some(p));
        }
    }
}
