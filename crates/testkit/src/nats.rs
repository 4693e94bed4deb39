//! A real `nats-server` (with JetStream) for tests, on a free loopback port.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::ServerProcess;
use crate::TempDir;

/// Where Debian installs `nats-server` (`/usr/sbin`), and where other installs put it.
const NATS_SERVER_PATHS: [&str; 3] = [
    "/usr/sbin/nats-server",
    "/usr/bin/nats-server",
    "/usr/local/bin/nats-server",
];
const START_TIMEOUT: Duration = Duration::from_secs(15);
const PORT_ATTEMPTS: usize = 3;

/// A `nats-server` child with JetStream enabled and its store in a temp dir.
///
/// Dropping it kills and reaps the server and removes the store. The server also dies if
/// the thread that started it exits, so start it on the test's own thread (not inside
/// `spawn_blocking` or a static that outlives the test).
pub struct NatsServer {
    process: Option<ServerProcess>,
    addr: IpAddr,
    port: u16,
    // Declared last so the server is stopped before its store is removed.
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server on 127.0.0.1 and waits until it accepts connections.
    pub fn start() -> anyhow::Result<NatsServer> {
        Self::start_on(IpAddr::from([127, 0, 0, 1]))
    }

    /// Starts a server listening on `addr` (e.g. a test LAN's gateway, for nodes in other
    /// network namespaces) and waits until it accepts connections.
    pub fn start_on(addr: IpAddr) -> anyhow::Result<NatsServer> {
        let dir = crate::temp_dir()?;
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = crate::free_port();
            match launch(dir.path(), addr, port) {
                Ok(process) => {
                    return Ok(NatsServer {
                        process: Some(process),
                        addr,
                        port,
                        dir,
                    })
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt was made"))
    }

    /// The client URL, `nats://ADDRESS:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", SocketAddr::new(self.addr, self.port))
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across [`NatsServer::restart`]).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// True while the server process is alive.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// Kills the server at once (SIGKILL), as a crash would. Clients see the connection drop.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Stops the server gracefully (SIGTERM), killing it if it takes too long.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Stops the server if it runs, then starts it again on the same port and store, so
    /// clients can reconnect and JetStream data survives.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.process = Some(launch(self.dir.path(), self.addr, self.port)?);
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `nats-server` on `port` with its store under `dir` and waits for it.
fn launch(dir: &Path, addr: IpAddr, port: u16) -> anyhow::Result<ServerProcess> {
    let mut command = Command::new(find_nats_server()?);
    command
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--port")
        .arg(port.to_string())
        .arg("--jetstream")
        .arg("--store_dir")
        .arg(dir.join("jetstream"))
        .current_dir(dir);
    let mut process = ServerProcess::spawn(
        command,
        "nats-server",
        &dir.join("nats-server.log"),
        libc::SIGTERM,
        Duration::from_secs(5),
    )?;
    let addr = SocketAddr::new(addr, port);
    process.wait_until_ready(START_TIMEOUT, || greets_like_nats(addr))?;
    Ok(process)
}

/// The installed `nats-server` binary.
fn find_nats_server() -> anyhow::Result<&'static Path> {
    NATS_SERVER_PATHS
        .iter()
        .map(Path::new)
        .find(|path| path.exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "nats-server is not installed (looked in {}); install it with `apt install nats-server`",
                NATS_SERVER_PATHS.join(", ")
            )
        })
}

/// True when a NATS server answers on `addr` (it greets every client with `INFO {...}`),
/// so another program that happens to hold the port does not count.
fn greets_like_nats(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let mut greeting = [0u8; 4];
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .is_ok()
        && stream.read_exact(&mut greeting).is_ok()
        && &greeting == b"INFO"
}
