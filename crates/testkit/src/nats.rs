//! A real `nats-server` (with JetStream) for tests, on a free loopback port, and a NATS
//! cluster of three such servers.

use std::io::{Read, Write};
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

/// A NATS cluster: servers routed to each other (cluster `strato`), each with JetStream,
/// so a stream of three replicas survives losing any one server.
///
/// Dropping it kills every server and removes their stores.
pub struct NatsCluster {
    servers: Vec<ClusterMember>,
    addr: IpAddr,
    dir: TempDir,
}

struct ClusterMember {
    process: Option<ServerProcess>,
    port: u16,
    route_port: u16,
}

impl NatsCluster {
    /// Starts `n` servers on `addr` and waits until each accepts clients and JetStream
    /// answers (its cluster elected a leader).
    pub fn start_on(addr: IpAddr, n: usize) -> anyhow::Result<NatsCluster> {
        // Its 2n free ports may be taken by a parallel test before a server binds them:
        // then the whole cluster starts again on new ones.
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            match Self::start_once(addr, n) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no attempt to start a NATS cluster")))
    }

    fn start_once(addr: IpAddr, n: usize) -> anyhow::Result<NatsCluster> {
        let dir = crate::temp_dir()?;
        let members: Vec<(u16, u16)> = (0..n)
            .map(|_| (crate::free_port(), crate::free_port()))
            .collect();
        let mut cluster = NatsCluster {
            servers: Vec::new(),
            addr,
            dir,
        };
        for (i, &(port, route_port)) in members.iter().enumerate() {
            let routes: Vec<String> = members
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, r))| format!("nats://{}", SocketAddr::new(addr, *r)))
                .collect();
            let process = launch_member(cluster.dir.path(), addr, i, port, route_port, &routes)?;
            cluster.servers.push(ClusterMember {
                process: Some(process),
                port,
                route_port,
            });
        }
        cluster.wait_jetstream(START_TIMEOUT)?;
        Ok(cluster)
    }

    /// Three servers on 127.0.0.1.
    pub fn start() -> anyhow::Result<NatsCluster> {
        Self::start_on(IpAddr::from([127, 0, 0, 1]), 3)
    }

    /// Every server's client URL, comma-separated: what `STRATO_NATS_URL` takes.
    pub fn urls(&self) -> String {
        (0..self.servers.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Server `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!(
            "nats://{}",
            SocketAddr::new(self.addr, self.servers[i].port)
        )
    }

    /// Server `i`'s client port.
    pub fn port(&self, i: usize) -> u16 {
        self.servers[i].port
    }

    /// Kills server `i` at once (SIGKILL), as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.servers[i].process.take() {
            process.kill();
        }
    }

    /// Starts server `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        let routes: Vec<String> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, m)| format!("nats://{}", SocketAddr::new(self.addr, m.route_port)))
            .collect();
        let member = &self.servers[i];
        let process = launch_member(
            self.dir.path(),
            self.addr,
            i,
            member.port,
            member.route_port,
            &routes,
        )?;
        self.servers[i].process = Some(process);
        Ok(())
    }

    /// Waits until JetStream answers on every running server.
    pub fn wait_jetstream(&self, wait: Duration) -> anyhow::Result<()> {
        let until = std::time::Instant::now() + wait;
        for m in self.servers.iter().filter(|m| m.process.is_some()) {
            let addr = SocketAddr::new(self.addr, m.port);
            while !jetstream_answers(addr) {
                anyhow::ensure!(
                    std::time::Instant::now() < until,
                    "the NATS cluster's JetStream did not answer on {addr} within {wait:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// Server `i` of a cluster, its store under `dir/s<i>`.
fn launch_member(
    dir: &Path,
    addr: IpAddr,
    i: usize,
    port: u16,
    route_port: u16,
    routes: &[String],
) -> anyhow::Result<ServerProcess> {
    let own = dir.join(format!("s{i}"));
    std::fs::create_dir_all(&own)?;
    let mut command = Command::new(find_nats_server()?);
    command
        .arg("--server_name")
        .arg(format!("s{i}"))
        .arg("--cluster_name")
        .arg("strato")
        .arg("--cluster")
        .arg(format!("nats://{}", SocketAddr::new(addr, route_port)))
        .arg("--routes")
        .arg(routes.join(","));
    spawn_server(command, &own, addr, port)
}

/// True when JetStream answers an account info request on the server at `addr` (a
/// clustered JetStream answers only once its servers elected a leader).
fn jetstream_answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .is_err()
    {
        return false;
    }
    let request = "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB _READY.x 1\r\nPUB $JS.API.INFO _READY.x 0\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            return false;
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if let Some(at) = text.find("MSG _READY.x") {
            let reply = &text[at..];
            if reply.contains("account_info_response") {
                return !reply.contains("\"error\"");
            }
        }
    }
    false
}

/// Spawns `nats-server` on `port` with its store under `dir` and waits for it.
fn launch(dir: &Path, addr: IpAddr, port: u16) -> anyhow::Result<ServerProcess> {
    spawn_server(Command::new(find_nats_server()?), dir, addr, port)
}

/// Adds the client address, JetStream and its store under `dir` to `command` (a
/// `nats-server`), runs it and waits until it greets clients.
fn spawn_server(
    mut command: Command,
    dir: &Path,
    addr: IpAddr,
    port: u16,
) -> anyhow::Result<ServerProcess> {
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
