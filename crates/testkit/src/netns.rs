//! A test LAN of network namespaces: separate "hosts" on one machine, so cluster tests
//! can run several nodes and kill, cut off or degrade one of them.
//!
//! [`Lan::new`] makes a bridge in the root namespace with a private /24 whose `.1` is the
//! root namespace itself (the LAN's gateway: servers started there, such as NATS, are
//! reachable from every host). [`Lan::add_host`] makes a namespace with a veth pair on the
//! bridge, an address and a default route through the gateway. Programs run inside a host
//! with [`Host::command`] (through `nsenter --net`, so they share the machine's mounts).
//!
//! Subnets are claimed with files created exclusively under `/run/strato-test-lan`, so
//! tests in parallel never collide; a claim whose process is gone is taken over. Dropping
//! the [`Lan`] (also when a test panics) kills every process of every host, deletes the
//! namespaces, veths and bridge, and releases the claim.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const CLAIMS: &str = "/run/strato-test-lan";
/// Third octet of the first subnet; up to 200 LANs at once.
const FIRST: u32 = 20;
const COUNT: u32 = 200;

/// A bridge with hosts on it; everything is removed on drop.
pub struct Lan {
    inner: Arc<LanInner>,
    next_host: u8,
}

struct LanInner {
    index: u32,
    bridge: String,
    claim: PathBuf,
    hosts: std::sync::Mutex<Vec<String>>,
}

/// One host (network namespace) of a [`Lan`].
#[derive(Clone)]
pub struct Host {
    name: String,
    netns: String,
    address: Ipv4Addr,
    /// The root-namespace end of its veth pair.
    outer: String,
    _lan: Arc<LanInner>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("/usr/sbin/ip", args)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn nft_in(netns: &str, script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("/usr/sbin/ip")
        .args(["netns", "exec", netns, "/usr/sbin/nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether the process whose pid a claim file holds is gone.
fn claim_is_stale(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    match text.trim().parse::<u32>() {
        Ok(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
        Err(_) => false,
    }
}

impl Lan {
    /// Claims a free subnet and makes its bridge. Needs root and iproute2.
    pub fn new() -> anyhow::Result<Lan> {
        std::fs::create_dir_all(CLAIMS).with_context(|| format!("cannot create {CLAIMS}"))?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .context("cannot enable IPv4 forwarding (tests with a LAN need root)")?;
        for i in 0..COUNT {
            let index = FIRST + i;
            let claim = Path::new(CLAIMS).join(index.to_string());
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&claim);
            let mut file = match file {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if claim_is_stale(&claim) {
                        cleanup_index(index);
                        let _ = std::fs::remove_file(&claim);
                    }
                    continue;
                }
                Err(e) => return Err(e).context("cannot claim a test subnet"),
            };
            writeln!(file, "{}", std::process::id())?;
            // Leftovers of a test that died without cleaning up.
            cleanup_index(index);
            let inner = Arc::new(LanInner {
                index,
                bridge: format!("stl{index}"),
                claim,
                hosts: Default::default(),
            });
            let lan = Lan {
                inner,
                next_host: 2,
            };
            let gw = format!("{}/24", lan.gateway());
            let bridge = lan.inner.bridge.as_str();
            ip(&["link", "add", bridge, "type", "bridge"])?;
            ip(&["addr", "add", &gw, "dev", bridge])?;
            ip(&["link", "set", bridge, "up"])?;
            return Ok(lan);
        }
        bail!("all {COUNT} test subnets under {CLAIMS} are in use")
    }

    /// The root namespace's address on the LAN (`10.216.N.1`).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 216, self.inner.index as u8, 1)
    }

    /// Adds a host: a namespace with an address on the LAN and a default route through
    /// the gateway.
    pub fn add_host(&mut self, name: &str) -> anyhow::Result<Host> {
        if self.next_host == 255 {
            bail!("a test LAN holds at most 253 hosts");
        }
        let n = self.next_host;
        self.next_host += 1;
        let index = self.inner.index;
        let netns = format!("stl{index}-{name}");
        let outer = format!("stl{index}h{n}");
        let address = Ipv4Addr::new(10, 216, index as u8, n);
        self.inner
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(netns.clone());
        ip(&["netns", "add", &netns])?;
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        ip(&["link", "set", &outer, "master", &self.inner.bridge])?;
        ip(&["link", "set", &outer, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", netns.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["link", "set", "lo", "up"])?;
        inside(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        inside(&["link", "set", "eth0", "up"])?;
        inside(&[
            "route",
            "add",
            "default",
            "via",
            &self.gateway().to_string(),
        ])?;
        // Containers of a node are routed behind it: let it forward.
        run(
            "/usr/sbin/ip",
            &[
                "netns",
                "exec",
                &netns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        Ok(Host {
            name: name.to_string(),
            netns,
            address,
            outer,
            _lan: self.inner.clone(),
        })
    }
}

impl Host {
    /// The name given to [`Lan::add_host`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address on the LAN.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The namespace's name (`ip netns`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// A command that runs `program` inside this host's network namespace (and nowhere
    /// else: the mounts, pids and users are the machine's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("/usr/bin/nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(program);
        cmd
    }

    /// The pids of every process in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        netns_pids(&self.netns)
    }

    /// Kills every process of the host (SIGKILL), waiting up to 10 s for them to go.
    pub fn kill_all(&self) {
        kill_netns(&self.netns);
    }

    /// Takes the host off the LAN: its link goes down, its processes keep running.
    pub fn cut(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.outer, "down"])
    }

    /// Puts the host back on the LAN.
    pub fn heal(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.outer, "up"])
    }

    /// Drops `percent` of the packets the host sends and receives (nftables `numgen`:
    /// this kernel has no netem); 0 removes the rule.
    pub fn packet_loss(&self, percent: u8) -> anyhow::Result<()> {
        let _ = nft_in(&self.netns, "delete table inet strato_test_loss\n");
        if percent == 0 {
            return Ok(());
        }
        // `numgen random mod 100` yields 0..=99, so `< 100` is spelled `<= 99`.
        let p = percent.min(100) - 1;
        nft_in(
            &self.netns,
            &format!(
                "table inet strato_test_loss {{
  chain input {{ type filter hook input priority -10; policy accept; iifname \"eth0\" numgen random mod 100 <= {p} drop; }}
  chain output {{ type filter hook output priority -10; policy accept; oifname \"eth0\" numgen random mod 100 <= {p} drop; }}
}}
"
            ),
        )
    }
}

fn netns_pids(netns: &str) -> Vec<i32> {
    Command::new("/usr/sbin/ip")
        .args(["netns", "pids", netns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn kill_netns(netns: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = netns_pids(netns);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            // SAFETY: plain syscall; the pid was just listed as living in our test netns.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes every namespace and link of LAN `index` (named `stl<index>...`).
fn cleanup_index(index: u32) {
    let prefix = format!("stl{index}-");
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(&prefix) {
                kill_netns(&name);
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
    let links = Command::new("/usr/sbin/ip")
        .args(["-o", "link", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let bridge = format!("stl{index}");
    let veth = format!("stl{index}h");
    for line in links.lines() {
        let Some(name) = line.split(':').nth(1).map(|n| n.trim()) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if name == bridge || name.starts_with(&veth) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let hosts =
            std::mem::take(&mut *self.inner.hosts.lock().unwrap_or_else(|p| p.into_inner()));
        for netns in hosts {
            kill_netns(&netns);
            let _ = ip(&["netns", "del", &netns]);
        }
        cleanup_index(self.inner.index);
        let _ = std::fs::remove_file(&self.inner.claim);
    }
}
