//! Isolated container networking against real runc, iproute2 and nftables (needs root).
//!
//! Probes run inside real containers with the stack's `/usr/bin/python3`: what an app
//! instance can and cannot connect to. A guard deletes the containers (freeing their
//! namespaces and veth pairs) even when an assertion fails.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strato_container::network::{IsolatedNetwork, NetworkConfig};
use strato_container::{ContainerDriver, ContainerSpec, OutputStream, RuncDriver, Stack};

const UID: u32 = 4331;

struct Fixture {
    driver: Arc<RuncDriver>,
    ids: Vec<String>,
    state: tempfile::TempDir,
}

impl Fixture {
    fn new(open_ports: Vec<(u16, u16)>) -> Fixture {
        let state = tempfile::tempdir().expect("temp dir");
        let net = IsolatedNetwork::setup(NetworkConfig {
            open_ports,
            ..Default::default()
        })
        .expect("set up the container network (needs root, iproute2, nftables)");
        let driver = RuncDriver::new(state.path().join("containers"), Stack::host_default())
            .with_network(Arc::new(net));
        driver.check_available().expect("runc must be usable");
        Fixture {
            driver: Arc::new(driver),
            ids: Vec::new(),
            state,
        }
    }

    fn spec(&mut self, name: &str, script: &str) -> ContainerSpec {
        let id = format!("net-{name}-{}", std::process::id());
        self.ids.push(id.clone());
        let argv = vec!["/bin/sh".into(), "-c".into(), script.into()];
        let mut spec = ContainerSpec::new(id, argv, UID, UID);
        spec.cwd = "/tmp".to_string();
        spec
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let driver = self.driver.clone();
        let ids = std::mem::take(&mut self.ids);
        // Drop may run inside the test's runtime: delete from a thread of our own.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            for id in ids {
                let _ = rt.block_on(driver.delete(&id));
            }
        })
        .join()
        .unwrap();
    }
}

/// A python one-liner printing `ok`, `refused` or `timeout` for a TCP connect.
fn connect_probe(host: &str, port: u16) -> String {
    format!(
        "/usr/bin/python3 -c \"import socket,sys\ns=socket.socket()\ns.settimeout(3)\ntry:\n s.connect(('{host}',{port})); print('ok')\nexcept ConnectionRefusedError: print('refused')\nexcept OSError as e: print('timeout' if 'timed out' in str(e) else 'error '+str(e))\""
    )
}

async fn stdout_of(driver: &RuncDriver, spec: ContainerSpec) -> String {
    let mut running = driver.run(spec).await.expect("container starts");
    let mut out = String::new();
    while let Ok(Some(line)) =
        tokio::time::timeout(Duration::from_secs(30), running.output.recv()).await
    {
        if line.stream == OutputStream::Stdout {
            out.push_str(&line.text);
            out.push('\n');
        }
    }
    running.wait().await.expect("container exits");
    out
}

async fn wait_for_listener(addr: IpAddr, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect((addr, port)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr}:{port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn instances_reach_open_host_ports_but_not_each_other_nor_the_rest_of_the_host() {
    // Two listeners on every host address: one published to containers, one not (as the
    // controller's and the node agent's ports are not).
    let open = TcpListener::bind("0.0.0.0:0").unwrap();
    let closed = TcpListener::bind("0.0.0.0:0").unwrap();
    let (open_port, closed_port) = (
        open.local_addr().unwrap().port(),
        closed.local_addr().unwrap().port(),
    );
    let mut fx = Fixture::new(vec![(open_port, open_port)]);

    // A server in one container: the host reaches it at the container's address.
    let server = fx.spec(
        "server",
        "exec /usr/bin/python3 -m http.server 8000 --bind 0.0.0.0",
    );
    let running = fx.driver.run(server).await.expect("server container");
    let Some(server_addr) = running.address else {
        panic!("an isolated container has an address of its own");
    };
    assert!(
        matches!(server_addr, IpAddr::V4(a) if a.octets()[..2] == [10, 213]),
        "{server_addr}"
    );
    wait_for_listener(server_addr, 8000).await;

    // A second container probes the first one and the host.
    let gateway = match server_addr {
        IpAddr::V4(a) => Ipv4Addr::from(u32::from(a) - 1),
        IpAddr::V6(_) => unreachable!(),
    };
    let script = [
        connect_probe(&server_addr.to_string(), 8000),
        connect_probe(&gateway.to_string(), open_port),
        connect_probe(&gateway.to_string(), closed_port),
    ]
    .join("; ");
    let probe = fx.spec("probe", &script);
    let out = stdout_of(&fx.driver, probe).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["refused", "ok", "refused"],
        "another container's port, an open host port, a closed host port: {out}"
    );
    drop(running);
}

#[tokio::test]
async fn deleting_a_container_removes_its_network_namespace() {
    let mut fx = Fixture::new(Vec::new());
    let spec = fx.spec("ns", "sleep 30");
    let id = spec.id.clone();
    let running = fx.driver.run(spec).await.expect("container starts");
    let addr = running.address.expect("an address of its own");
    let netns: Vec<_> = std::fs::read_dir("/var/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let slot = (u32::from(match addr {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!(),
    }) - u32::from(Ipv4Addr::new(10, 213, 0, 0))
        - 2)
        / 4;
    let path = format!("/var/run/netns/strato-{slot}");
    assert!(netns.iter().any(|p| p == Path::new(&path)), "{path} exists");
    // Tests in parallel may claim the freed slot at once: what must be gone is this
    // container's namespace and veth (their identities), not the names.
    use std::os::unix::fs::MetadataExt;
    let namespace = std::fs::metadata(&path).unwrap().ino();
    let veth = ifindex(&format!("stv{slot}")).expect("the host side of the veth pair");
    fx.driver.delete(&id).await.unwrap();
    assert!(
        std::fs::metadata(&path).map_or(true, |m| m.ino() != namespace),
        "{path} removed with the container"
    );
    assert_ne!(
        ifindex(&format!("stv{slot}")),
        Some(veth),
        "the veth pair is gone"
    );
}

/// The interface index of `name` on the host, if it exists.
fn ifindex(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A global IPv4 address of this host (the source of its default route).
fn host_address() -> Option<Ipv4Addr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(a) if !a.is_loopback() => Some(a),
        _ => None,
    }
}

/// A free TCP port of this host.
fn free_port() -> u16 {
    TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `/run/strato/net/slots`: which container network slots of this host are claimed.
fn slot_claims() -> Vec<(String, String)> {
    std::fs::read_dir("/run/strato/net/slots")
        .map(|dir| {
            dir.flatten()
                .map(|e| {
                    let claim = std::fs::read_to_string(e.path()).unwrap_or_default();
                    (e.file_name().to_string_lossy().into_owned(), claim)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Namespaces `strato-<slot>` whose slot is not claimed: leaked by a failed start.
/// (Slots are claimed before their namespace is made and freed after it is removed.)
fn unclaimed_namespaces() -> Vec<String> {
    let claimed: Vec<String> = slot_claims().into_iter().map(|(slot, _)| slot).collect();
    std::fs::read_dir("/var/run/netns")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let slot = name.strip_prefix("strato-")?.to_string();
                    (slot.parse::<u32>().is_ok() && !claimed.contains(&slot)).then_some(name)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What `host:port` leads to: `Some(true)` connected, `Some(false)` refused, `None`
/// nothing within 3 s.
async fn connects(host: Ipv4Addr, port: u16) -> Option<bool> {
    let attempt = tokio::net::TcpStream::connect((IpAddr::V4(host), port));
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(_)) => Some(true),
        Ok(Err(_)) => Some(false),
        Err(_) => None,
    }
}

#[tokio::test]
async fn a_published_port_is_reached_at_the_host_address_by_the_host_only() {
    let Some(host) = host_address() else {
        eprintln!("SKIPPED: this host has no default route, so no address to publish on");
        return;
    };
    let port = free_port();
    let mut fx = Fixture::new(vec![]);
    let mut server = fx.spec(
        "pub",
        &format!("exec /usr/bin/python3 -m http.server {port} --bind 0.0.0.0"),
    );
    server.publish = vec![port];
    let id = server.id.clone();
    let running = fx.driver.run(server).await.expect("server container");
    let own = running.address.expect("an address of its own");
    wait_for_listener(own, port).await;
    // Nothing of the host listens on the port: only the DNAT can answer there. The host
    // (as a router on this node would, and as routers on other hosts do) reaches it.
    wait_for_listener(IpAddr::V4(host), port).await;

    // Publishing the same port again fails, names it and leaves nothing behind.
    let mut twin = fx.spec("twin", "sleep 30");
    twin.publish = vec![port];
    let twin_id = twin.id.clone();
    let err = fx.driver.run(twin).await.err().expect("the port is taken");
    let message = err.to_string();
    assert!(
        message.contains(&format!("port {port}"))
            && message.contains("another container on this host publishes it"),
        "{message}"
    );
    assert!(
        !fx.state
            .path()
            .join("containers/bundles")
            .join(&twin_id)
            .exists(),
        "no bundle left for the refused container"
    );
    let twin_claims: Vec<_> = slot_claims()
        .into_iter()
        .filter(|(_, claim)| claim.contains(&twin_id))
        .collect();
    assert!(twin_claims.is_empty(), "slot left claimed: {twin_claims:?}");
    let leaked = unclaimed_namespaces();
    assert!(leaked.is_empty(), "namespaces left behind: {leaked:?}");
    // The refused start did not withdraw the first container's port.
    assert_eq!(
        connects(host, port).await,
        Some(true),
        "the first container's port still answers at {host}:{port}"
    );

    // Another container cannot use the published port to reach the first one.
    let probe = fx.spec("probe", &connect_probe(&host.to_string(), port));
    let out = stdout_of(&fx.driver, probe).await;
    assert!(
        out.trim() == "refused" || out.trim() == "timeout",
        "a container must not reach another through its published port: {out}"
    );

    // Deleted: the port no longer connects, and it is the host's own again (a host
    // listener gets the connections instead of a DNAT to a container that is gone).
    drop(running);
    fx.driver.delete(&id).await.expect("delete");
    assert_ne!(
        connects(host, port).await,
        Some(true),
        "the published port still connects after delete"
    );
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .expect("the port is free on the host again");
    let (accepted, connected) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(3), listener.accept()),
        connects(host, port)
    );
    assert!(
        matches!(accepted, Ok(Ok(_))) && connected == Some(true),
        "after delete {host}:{port} must reach the host, not the deleted container"
    );
}

/// A slot claimed by a process that has exited, as a crashed `stratod` leaves it, and
/// `port` published to it. On drop the claim file is removed unless another driver
/// already took the slot over, and the port if it still leads to the dead slot.
struct DeadClaim {
    path: std::path::PathBuf,
    address: Ipv4Addr,
    port: u16,
}

impl DeadClaim {
    fn new(port: u16) -> DeadClaim {
        let mut exited = std::process::Command::new("/bin/true").spawn().unwrap();
        exited.wait().unwrap();
        // High slots: drivers claim from slot 0 up, so none will race for this one.
        let slot = (1 << 14) - 1 - std::process::id() % 1000;
        let path = std::path::PathBuf::from(format!("/run/strato/net/slots/{slot}"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("claim {}: {e}", path.display()));
        std::io::Write::write_all(&mut file, format!("{} crashed", exited.id()).as_bytes())
            .unwrap();
        let address = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 213, 0, 0)) + 4 * slot + 2);
        let claim = DeadClaim {
            path,
            address,
            port,
        };
        nft(&format!(
            "add element inet strato published {{ {port} : {address} }}\n"
        ));
        claim
    }
}

impl Drop for DeadClaim {
    fn drop(&mut self) {
        if std::fs::read_to_string(&self.path).is_ok_and(|c| c.ends_with(" crashed")) {
            let _ = std::fs::remove_file(&self.path);
        }
        let entry = std::process::Command::new("/usr/sbin/nft")
            .args(["list", "map", "inet", "strato", "published"])
            .output();
        let leftover = format!("{} : {}", self.port, self.address);
        if entry.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(&leftover)) {
            let _ = std::process::Command::new("/usr/sbin/nft")
                .args(["delete", "element", "inet", "strato", "published"])
                .arg(format!("{{ {} }}", self.port))
                .status();
        }
    }
}

fn nft(script: &str) {
    let mut child = std::process::Command::new("/usr/sbin/nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft -f: {script}");
}

#[tokio::test]
async fn a_port_left_published_by_a_crashed_stratod_is_taken_over() {
    let Some(host) = host_address() else {
        eprintln!("SKIPPED: this host has no default route, so no address to publish on");
        return;
    };
    let port = free_port();
    let mut fx = Fixture::new(vec![]);
    let dead = DeadClaim::new(port);
    let mut server = fx.spec(
        "takeover",
        &format!("exec /usr/bin/python3 -m http.server {port} --bind 0.0.0.0"),
    );
    server.publish = vec![port];
    let id = server.id.clone();
    let running = fx
        .driver
        .run(server)
        .await
        .expect("a port of a dead container is free to publish");
    wait_for_listener(IpAddr::V4(host), port).await;
    drop(running);
    fx.driver.delete(&id).await.expect("delete");
    drop(dead);
}
