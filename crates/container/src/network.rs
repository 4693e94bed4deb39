//! Per-container network namespaces, so an app instance reaches the outside world and the
//! ports the platform publishes to apps, and nothing else on the host or in other
//! containers.
//!
//! Each isolated container gets a network namespace of its own and a *routed* veth pair:
//! the host side `stv<slot>` holds `base + 4·slot + 1/30`, the container's `eth0` holds
//! `+2/30` with a default route through the host side. There is no bridge, so every packet
//! between two containers crosses the host's IP layer, where one nftables table
//! (`inet strato`) decides:
//!
//! - container → container: rejected (instances talk to each other through the router);
//! - container → this host: only TCP ports in the `open_ports` set (the router, the data
//!   services' port range) — never the platform's internal ports (the controller, the
//!   node agent's endpoints, the bus); refused at once with a TCP reset;
//! - container → elsewhere: allowed and masqueraded behind the host's address (package
//!   registries, external databases);
//! - elsewhere → container: only replies to the container's own connections, and
//!   connections to a port the container *publishes*: in a cluster, routers on other
//!   hosts reach an instance at `host-address:port`, which the `published` map sends on
//!   (DNAT) to the container's address and the same port. Another container cannot use
//!   that way in either: container → container stays rejected after the DNAT too.
//!
//! The table and the slot allocation are host-wide, shared by every `stratod` on the
//! machine (tests run several at once): slots are claimed with files created exclusively
//! under `/run/strato/net/slots`, the table is created once under a lock, and each network
//! handle adds the ports it publishes. The last handle to leave with no slot in use
//! removes the table.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::ContainerError;

/// The nftables table every isolated container's traffic goes through.
const TABLE: &str = "strato";
/// Host-side veth names start with this (the rules match `stv*`).
const HOST_IF_PREFIX: &str = "stv";

/// Where the slots of containers live and which host ports they may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The first address of the containers' /16 (a /30 per container).
    pub subnet: Ipv4Addr,
    /// Host-wide state (slot claims, the setup lock).
    pub run_dir: PathBuf,
    /// Inclusive TCP port ranges on this host that containers may connect to.
    pub open_ports: Vec<(u16, u16)>,
}

impl Default for NetworkConfig {
    /// `10.213.0.0/16`, state under `/run/strato/net`, no open ports.
    fn default() -> Self {
        NetworkConfig {
            subnet: Ipv4Addr::new(10, 213, 0, 0),
            run_dir: PathBuf::from("/run/strato/net"),
            open_ports: Vec::new(),
        }
    }
}

/// 16384 /30 blocks fill the /16.
const SLOTS: u32 = 1 << 14;

/// One container's place on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub slot: u32,
    /// The container's address (its `eth0`).
    pub address: Ipv4Addr,
    /// The host side of the veth pair, the container's gateway.
    pub gateway: Ipv4Addr,
    /// `/var/run/netns/<name>`, for the OCI config's network namespace.
    pub netns_path: PathBuf,
}

/// The host's container network: set up once per driver, then [`attach`](Self::attach)
/// and [`detach`](Self::detach) per container.
pub struct IsolatedNetwork {
    cfg: NetworkConfig,
    /// Next slot to try (keeps recently freed slots cool).
    next: Mutex<u32>,
    /// This handle's file under `users/`: the table stays while any live handle has one.
    user_file: PathBuf,
}

impl IsolatedNetwork {
    /// Enables IPv4 forwarding, creates the nftables table unless it exists and opens
    /// `cfg.open_ports`. Needs root, `ip` (iproute2) and `nft` (nftables).
    pub fn setup(cfg: NetworkConfig) -> Result<Self, ContainerError> {
        for tool in ["/usr/sbin/ip", "/usr/sbin/nft"] {
            if !Path::new(tool).is_file() {
                return Err(ContainerError::InvalidSpec(format!(
                    "{tool} not found: install Debian's iproute2 and nftables packages"
                )));
            }
        }
        for dir in ["slots", "users"] {
            std::fs::create_dir_all(cfg.run_dir.join(dir)).map_err(ContainerError::io(format!(
                "create {}",
                cfg.run_dir.display()
            )))?;
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(ContainerError::io("enable IPv4 forwarding"))?;
        static HANDLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let user_file = cfg.run_dir.join("users").join(format!(
            "{} {}",
            std::process::id(),
            HANDLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let net = IsolatedNetwork {
            cfg,
            next: Mutex::new(0),
            user_file,
        };
        {
            let _lock = net.lock()?;
            std::fs::write(&net.user_file, std::process::id().to_string())
                .map_err(ContainerError::io("register the network handle"))?;
            if !table_exists() {
                nft(&ruleset(net.cfg.subnet))?;
            } else if !published_map_exists() {
                // A table made by a Strato without published ports: add them in place
                // (the other rules and the open ports stay, containers keep running).
                nft(&publishing_upgrade())?;
            }
            if !net.cfg.open_ports.is_empty() {
                nft(&format!(
                    "add element inet {TABLE} open_ports {{ {} }}\n",
                    port_list(&net.cfg.open_ports)
                ))?;
            }
        }
        Ok(net)
    }

    /// The settings this network was set up with.
    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    /// Lets containers reach more TCP ports of this host (e.g. a service's new server).
    pub fn open(&self, ports: &[(u16, u16)]) -> Result<(), ContainerError> {
        if ports.is_empty() {
            return Ok(());
        }
        nft(&format!(
            "add element inet {TABLE} open_ports {{ {} }}\n",
            port_list(ports)
        ))
    }

    /// Gives container `id` a network namespace, a veth pair and its addresses.
    pub fn attach(&self, id: &str) -> Result<Attachment, ContainerError> {
        let (slot, _claim) = self.claim(id)?;
        let attachment = self.attachment(slot);
        match plumb(&attachment) {
            Ok(()) => Ok(attachment),
            Err(e) => {
                unplumb(slot);
                let _ = std::fs::remove_file(self.slot_file(slot));
                Err(e)
            }
        }
    }

    /// Makes each of `ports` of the container at `attachment` reachable at the same port
    /// on every non-loopback address of this host. Fails, publishing none of them, when
    /// another container of this host already publishes one.
    pub fn publish(&self, attachment: &Attachment, ports: &[u16]) -> Result<(), ContainerError> {
        if ports.is_empty() {
            return Ok(());
        }
        let elements = ports
            .iter()
            .map(|p| format!("{p} : {}", attachment.address))
            .collect::<Vec<_>>()
            .join(", ");
        // One transaction: all or nothing; `create` fails on a port already in the map.
        nft(&format!(
            "create element inet {TABLE} published {{ {elements} }}\n"
        ))
        .map_err(|e| {
            ContainerError::InvalidSpec(format!(
                "cannot publish port(s) {ports:?}: another container on this host publishes one of them ({e})"
            ))
        })
    }

    /// Stops publishing `ports` (those not published are ignored).
    pub fn unpublish(&self, ports: &[u16]) {
        for p in ports {
            let _ = nft(&format!(
                "delete element inet {TABLE} published {{ {p} }}\n"
            ));
        }
    }

    /// Removes the namespace and veth pair of `slot` and frees it. Idempotent.
    pub fn detach(&self, slot: u32) {
        unplumb(slot);
        let _ = std::fs::remove_file(self.slot_file(slot));
    }

    /// Where container `slot` lives.
    pub fn attachment(&self, slot: u32) -> Attachment {
        slot_attachment(self.cfg.subnet, slot)
    }

    fn slot_file(&self, slot: u32) -> PathBuf {
        self.cfg.run_dir.join("slots").join(slot.to_string())
    }

    /// Claims a free slot by creating its file exclusively; a slot whose owner process is
    /// gone is reclaimed (its namespace and veth removed first).
    fn claim(&self, id: &str) -> Result<(u32, File), ContainerError> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..SLOTS {
            let slot = (*next + i) % SLOTS;
            let path = self.slot_file(slot);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut file) => {
                    let _ = writeln!(file, "{} {id}", std::process::id());
                    *next = (slot + 1) % SLOTS;
                    return Ok((slot, file));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if owner_gone(&path) {
                        unplumb(slot);
                        let _ = std::fs::remove_file(&path);
                    }
                }
                Err(e) => {
                    return Err(ContainerError::Io {
                        context: format!("claim {}", path.display()),
                        source: e,
                    })
                }
            }
        }
        Err(ContainerError::InvalidSpec(format!(
            "all {SLOTS} container network slots of this host are in use"
        )))
    }

    fn lock(&self) -> Result<File, ContainerError> {
        let path = self.cfg.run_dir.join("setup.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ContainerError::io(format!("open {}", path.display())))?;
        // SAFETY: flock on a descriptor we own; released when `file` is closed.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } != 0 {
            return Err(ContainerError::Io {
                context: format!("lock {}", path.display()),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(file)
    }
}

impl Drop for IsolatedNetwork {
    /// The last handle out (no live handle and no claimed slot left on the host) removes
    /// the table.
    fn drop(&mut self) {
        let Ok(_lock) = self.lock() else { return };
        let _ = std::fs::remove_file(&self.user_file);
        // Ports stay open while the table does: another handle on this host may have
        // opened the same ones (nft sets do not count references).
        let live = |dir: &str| {
            std::fs::read_dir(self.cfg.run_dir.join(dir))
                .map(|d| d.flatten().any(|e| !owner_gone(&e.path())))
                .unwrap_or(false)
        };
        let in_use = live("users") || live("slots");
        if !in_use {
            let _ = nft(&format!("delete table inet {TABLE}\n"));
        }
    }
}

fn slot_attachment(subnet: Ipv4Addr, slot: u32) -> Attachment {
    let base = u32::from(subnet) + 4 * slot;
    Attachment {
        slot,
        address: Ipv4Addr::from(base + 2),
        gateway: Ipv4Addr::from(base + 1),
        netns_path: PathBuf::from(format!("/var/run/netns/{}", netns_name(slot))),
    }
}

fn netns_name(slot: u32) -> String {
    format!("strato-{slot}")
}

fn host_if(slot: u32) -> String {
    format!("{HOST_IF_PREFIX}{slot}")
}

/// The namespace, the veth pair with one end in it, addresses and routes.
fn plumb(a: &Attachment) -> Result<(), ContainerError> {
    let ns = netns_name(a.slot);
    let host = host_if(a.slot);
    ip_batch(
        None,
        &format!(
            "netns add {ns}\n\
             link add {host} type veth peer name eth0 netns {ns}\n\
             addr add {}/30 dev {host}\n\
             link set {host} up\n",
            a.gateway
        ),
    )?;
    ip_batch(
        Some(&ns),
        &format!(
            "link set lo up\n\
             addr add {}/30 dev eth0\n\
             link set eth0 up\n\
             route add default via {}\n",
            a.address, a.gateway
        ),
    )
}

/// Deleting the namespace destroys its end of the veth pair and so the pair.
fn unplumb(slot: u32) {
    let _ = Command::new("/usr/sbin/ip")
        .args(["link", "del", &host_if(slot)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = Command::new("/usr/sbin/ip")
        .args(["netns", "del", &netns_name(slot)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn ip_batch(netns: Option<&str>, script: &str) -> Result<(), ContainerError> {
    let mut cmd = Command::new("/usr/sbin/ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    run_with_input(cmd, script, "ip")
}

fn nft(script: &str) -> Result<(), ContainerError> {
    let mut cmd = Command::new("/usr/sbin/nft");
    cmd.args(["-f", "-"]);
    run_with_input(cmd, script, "nft")
}

fn run_with_input(mut cmd: Command, input: &str, what: &str) -> Result<(), ContainerError> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ContainerError::io(format!("run {what}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(ContainerError::io(format!("write to {what}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(ContainerError::io(format!("wait for {what}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ContainerError::Runtime {
            op: "network",
            id: what.to_string(),
            message: format!(
                "{} (input: {})",
                String::from_utf8_lossy(&out.stderr).trim(),
                input.trim().replace('\n', "; ")
            ),
        })
    }
}

fn table_exists() -> bool {
    Command::new("/usr/sbin/nft")
        .args(["list", "table", "inet", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn published_map_exists() -> bool {
    Command::new("/usr/sbin/nft")
        .args(["list", "map", "inet", TABLE, "published"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn port_list(ports: &[(u16, u16)]) -> String {
    ports
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{}-{}", a.min(b), a.max(b))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rules of the forward chain: container → container rejected (also when addressed
/// through a published port), published ports in, replies in, nothing else in.
fn forward_rules() -> String {
    let p = HOST_IF_PREFIX;
    format!(
        "iifname \"{p}*\" oifname \"{p}*\" reject
    oifname \"{p}*\" ct state established,related accept
    oifname \"{p}*\" ct status dnat accept
    oifname \"{p}*\" drop"
    )
}

/// The map of published ports and the DNAT chains that use it. Loopback addresses are
/// left alone: a packet from 127.0.0.1 cannot be routed to a container.
fn publishing_chains() -> String {
    let dnat = "fib daddr type local ip daddr != 127.0.0.0/8 dnat ip to tcp dport map @published";
    format!(
        "  map published {{ type inet_service : ipv4_addr; }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    {dnat}
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    {dnat}
  }}
"
    )
}

/// Brings a table made before published ports existed up to date, in one transaction.
fn publishing_upgrade() -> String {
    format!(
        "table inet {TABLE} {{
{}}}
flush chain inet {TABLE} forward
table inet {TABLE} {{
  chain forward {{
    {}
  }}
}}
",
        publishing_chains(),
        forward_rules()
    )
}

/// The host-wide rules (see the module docs).
fn ruleset(subnet: Ipv4Addr) -> String {
    let p = HOST_IF_PREFIX;
    format!(
        "table inet {TABLE} {{
  set open_ports {{ type inet_service; flags interval; }}
{}  chain input {{
    type filter hook input priority filter - 5; policy accept;
    iifname \"{p}*\" ct state established,related accept
    iifname \"{p}*\" icmp type {{ echo-request, destination-unreachable, time-exceeded }} accept
    iifname \"{p}*\" tcp dport @open_ports accept
    iifname \"{p}*\" meta l4proto tcp reject with tcp reset
    iifname \"{p}*\" reject
  }}
  chain forward {{
    type filter hook forward priority filter - 5; policy accept;
    {}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet}/16 oifname != \"{p}*\" masquerade
  }}
}}
",
        publishing_chains(),
        forward_rules()
    )
}

/// Whether the process that claimed a slot (first word of its file) is gone.
fn owner_gone(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    match text
        .split_whitespace()
        .next()
        .and_then(|p| p.parse::<i32>().ok())
    {
        Some(pid) if pid > 0 => !Path::new(&format!("/proc/{pid}")).exists(),
        // A claim being written right now has no pid yet.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_slash_30s() {
        let subnet = NetworkConfig::default().subnet;
        let a = slot_attachment(subnet, 0);
        assert_eq!(a.gateway, Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(a.address, Ipv4Addr::new(10, 213, 0, 2));
        let b = slot_attachment(subnet, 70);
        assert_eq!(b.gateway, Ipv4Addr::new(10, 213, 1, 25));
        assert_eq!(b.address, Ipv4Addr::new(10, 213, 1, 26));
        let last = slot_attachment(subnet, SLOTS - 1);
        assert_eq!(last.address, Ipv4Addr::new(10, 213, 255, 254));
        assert!(
            host_if(SLOTS - 1).len() <= 15,
            "Linux interface names are at most 15 bytes"
        );
    }

    #[test]
    fn port_lists_are_nft_syntax() {
        assert_eq!(
            port_list(&[(8080, 8080), (30010, 30000)]),
            "8080, 30000-30010"
        );
    }
}
