//! Test harness shared by every crate's tests: free ports, temp dirs and real servers.
//!
//! Tests use real parts, never mocks. This crate starts them from the Debian binaries on
//! loopback — [`NatsServer`] (`nats-server` with JetStream) and [`Postgres`] (a throwaway
//! cluster) — each on a free port in a fresh temp dir, so tests run in parallel, and each
//! stopped, reaped and removed on drop, also when a test fails.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;

mod nats;
pub mod netns;
mod postgres;
mod process;

pub use nats::{NatsCluster, NatsServer};
pub use postgres::Postgres;
pub use tempfile::TempDir;

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it for a bind to :0).
///
/// Another process may grab it before you bind; the servers here retry with a new port
/// when that happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("binding 127.0.0.1:0 must work on a machine that runs tests")
}

/// A fresh temp dir, removed when the returned guard drops.
pub fn temp_dir() -> anyhow::Result<TempDir> {
    tempfile::Builder::new()
        .prefix("strato-test-")
        .tempdir()
        .context("cannot create a temp dir; check that $TMPDIR (or /tmp) is writable")
}

/// Waits until something accepts TCP connections on `addr`, for at most `timeout`.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("nothing accepted connections on {addr} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("the free port should still be free");
    }

    #[test]
    fn wait_for_tcp_sees_a_listener_and_times_out_without_one() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        wait_for_tcp(addr, Duration::from_secs(2)).unwrap();
        drop(listener);
        let started = Instant::now();
        assert!(wait_for_tcp(addr, Duration::from_millis(100)).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn temp_dir_is_removed_on_drop() {
        let dir = temp_dir().unwrap();
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("f"), b"x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }
}
