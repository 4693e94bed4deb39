//! The test LAN against real iproute2 and nftables (needs root): hosts reach each other,
//! and the failure tools do what cluster tests rely on.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::Duration;

use strato_testkit::netns::{Host, Lan};

/// A TCP listener inside `host` (python's http.server), killed on drop.
struct Listener(Child);

impl Listener {
    fn start(host: &Host, port: u16) -> Listener {
        let mut child = host
            .command("/usr/bin/python3")
            .args(["-u", "-c"])
            .arg(format!(
                "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0',{port}))\ns.listen(16)\nprint('listening', flush=True)\nwhile True:\n c,_=s.accept(); c.close()"
            ))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 in the host");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening");
        Listener(child)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(700)).is_ok()
}

/// Whether `from` reaches `addr` (a connect from inside the host).
fn connects_from(from: &Host, addr: SocketAddr) -> bool {
    from.command("/usr/bin/python3")
        .args(["-c"])
        .arg(format!(
            "import socket,sys\ns=socket.socket()\ns.settimeout(1)\ntry:\n s.connect(('{}',{})); sys.exit(0)\nexcept OSError: sys.exit(1)",
            addr.ip(),
            addr.port()
        ))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn hosts_reach_each_other_until_cut_and_again_when_healed() {
    let mut lan = Lan::new().unwrap();
    let a = lan.add_host("a").unwrap();
    let b = lan.add_host("b").unwrap();
    assert_ne!(a.address(), b.address());
    let _listener = Listener::start(&a, 8500);
    let at_a = SocketAddr::from((a.address(), 8500));
    assert!(
        connects(at_a),
        "the root namespace (gateway) reaches a host"
    );
    assert!(connects_from(&b, at_a), "one host reaches another");

    a.cut().unwrap();
    assert!(!connects(at_a), "a cut host is unreachable");
    assert!(!connects_from(&b, at_a));
    a.heal().unwrap();
    assert!(connects(at_a), "healed");

    a.packet_loss(100).unwrap();
    assert!(!connects(at_a), "100% loss");
    a.packet_loss(0).unwrap();
    assert!(connects(at_a), "loss removed");
}

#[test]
fn kill_all_stops_every_process_of_the_host() {
    let mut lan = Lan::new().unwrap();
    let a = lan.add_host("k").unwrap();
    let mut sleeper = a.command("/bin/sleep").arg("1000").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!a.pids().is_empty());
    a.kill_all();
    assert!(a.pids().is_empty());
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "killed");
}

#[test]
fn two_lans_get_different_subnets_and_leave_nothing_behind() {
    let (netns, bridge) = {
        let mut one = Lan::new().unwrap();
        let two = Lan::new().unwrap();
        assert_ne!(one.gateway(), two.gateway());
        let h = one.add_host("x").unwrap();
        (
            h.netns().to_string(),
            format!("stl{}", one.gateway().octets()[2]),
        )
    };
    let namespaces = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains(&netns),
        "{netns} removed"
    );
    let links = std::process::Command::new("ip")
        .args(["link", "show", &bridge])
        .output()
        .unwrap();
    assert!(!links.status.success(), "bridge {bridge} removed");
}
