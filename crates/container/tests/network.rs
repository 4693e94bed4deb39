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
    fx.driver.delete(&id).await.unwrap();
    assert!(
        !Path::new(&path).exists(),
        "{path} removed with the container"
    );
    let link = std::process::Command::new("/usr/sbin/ip")
        .args(["link", "show", &format!("stv{slot}")])
        .output()
        .unwrap();
    assert!(!link.status.success(), "the veth pair is gone");
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

#[tokio::test]
async fn a_published_port_is_reached_at_the_host_address_by_the_host_only() {
    let Some(host) = host_address() else {
        eprintln!("SKIPPED: this host has no default route, so no address to publish on");
        return;
    };
    let port = TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut fx = Fixture::new(vec![]);
    let mut server = fx.spec(
        "pub",
        &format!("exec /usr/bin/python3 -m http.server {port} --bind 0.0.0.0"),
    );
    server.publish = vec![port];
    let running = fx.driver.run(server).await.expect("server container");
    let own = running.address.expect("an address of its own");
    wait_for_listener(own, port).await;
    // The host (as a router on this node would) reaches it at the host's address.
    wait_for_listener(IpAddr::V4(host), port).await;

    // Publishing the same port again fails and leaves nothing behind.
    let mut twin = fx.spec("twin", "sleep 30");
    twin.publish = vec![port];
    let twin_id = twin.id.clone();
    let err = fx.driver.run(twin).await.err().expect("the port is taken");
    assert!(err.to_string().contains("publish"), "{err}");
    assert!(
        !fx.state
            .path()
            .join("containers/bundles")
            .join(&twin_id)
            .exists(),
        "no bundle left for the refused container"
    );

    // Another container cannot use the published port to reach the first one.
    let probe = fx.spec("probe", &connect_probe(&host.to_string(), port));
    let out = stdout_of(&fx.driver, probe).await;
    assert!(
        out.trim() == "refused" || out.trim() == "timeout",
        "a container must not reach another through its published port: {out}"
    );

    // Deleted: the port no longer leads anywhere.
    let id = fx.ids[0].clone();
    drop(running);
    fx.driver.delete(&id).await.expect("delete");
    let gone = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect((IpAddr::V4(host), port)),
    )
    .await;
    assert!(
        !matches!(gone, Ok(Ok(_))),
        "the published port still connects after delete"
    );
}
