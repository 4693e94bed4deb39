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
    /// another container of this host already publishes one (the error names it). Ports
    /// left published by a `stratod` that died are taken over.
    pub fn publish(&self, attachment: &Attachment, ports: &[u16]) -> Result<(), ContainerError> {
        let ports = distinct_ports(ports)?;
        if ports.is_empty() {
            return Ok(());
        }
        // One transaction: all or nothing; `create` fails on a port already in the map.
        let create = format!(
            "create element inet {TABLE} published {{ {} }}\n",
            published_elements(&ports, attachment.address)
        );
        let Err(error) = nft(&create) else {
            return Ok(());
        };
        let held = published_holders(&ports);
        if held.is_empty() {
            // Not a conflict: nft itself failed (the table gone, nft broken).
            return Err(error);
        }
        let (stale, live): (Vec<_>, Vec<_>) = held
            .into_iter()
            .partition(|&(_, holder)| self.address_unclaimed(holder));
        if live.is_empty() {
            let stale_ports: Vec<u16> = stale.iter().map(|&(port, _)| port).collect();
            self.unpublish(&stale_ports);
            return match nft(&create) {
                Ok(()) => Ok(()),
                Err(error) => Err(publish_conflict(&published_holders(&ports)).unwrap_or(error)),
            };
        }
        Err(publish_conflict(&live).unwrap_or(error))
    }

    /// Stops publishing `ports` (those not published are ignored).
    pub fn unpublish(&self, ports: &[u16]) {
        for p in ports {
            let _ = nft(&format!(
                "delete element inet {TABLE} published {{ {p} }}\n"
            ));
        }
    }

    /// Whether no live container holds `address`: its slot is free, or the `stratod`
    /// that claimed it is gone. Addresses outside this network's subnet count as held.
    fn address_unclaimed(&self, address: Ipv4Addr) -> bool {
        let Some(slot) = slot_of(self.cfg.subnet, address) else {
            return false;
        };
        let path = self.slot_file(slot);
        !path.exists() || owner_gone(&path)
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
    /// gone is reclaimed (its namespace, veth and published ports removed first).
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
                        withdraw_published_to(self.attachment(slot).address);
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

/// The slot whose container has `address`, if it is one of `subnet`'s container
/// addresses.
fn slot_of(subnet: Ipv4Addr, address: Ipv4Addr) -> Option<u32> {
    let offset = u32::from(address).checked_sub(u32::from(subnet))?;
    (offset % 4 == 2 && offset / 4 < SLOTS).then_some(offset / 4)
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

/// `ports` without repeats, in order; port 0 cannot be published.
fn distinct_ports(ports: &[u16]) -> Result<Vec<u16>, ContainerError> {
    if ports.contains(&0) {
        return Err(ContainerError::InvalidSpec(
            "port 0 cannot be published: list the TCP ports the app listens on".to_string(),
        ));
    }
    let mut distinct = Vec::with_capacity(ports.len());
    for &p in ports {
        if !distinct.contains(&p) {
            distinct.push(p);
        }
    }
    Ok(distinct)
}

/// `port : address, …` for the `published` map.
fn published_elements(ports: &[u16], address: Ipv4Addr) -> String {
    ports
        .iter()
        .map(|p| format!("{p} : {address}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The error for ports that containers of this host already publish (`None` for none).
fn publish_conflict(held: &[(u16, Ipv4Addr)]) -> Option<ContainerError> {
    if held.is_empty() {
        return None;
    }
    let which = held
        .iter()
        .map(|(port, holder)| format!("port {port} (to {holder})"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(ContainerError::InvalidSpec(format!(
        "cannot publish {which}: another container on this host publishes it; \
         pick another port or stop that container first"
    )))
}

/// The entries of the `published` map (empty when it cannot be read).
fn published_entries() -> Vec<(u16, Ipv4Addr)> {
    let out = Command::new("/usr/sbin/nft")
        .args(["-j", "list", "map", "inet", TABLE, "published"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => parse_published(&out.stdout),
        _ => Vec::new(),
    }
}

/// Which of `ports` are published, and to which container address.
fn published_holders(ports: &[u16]) -> Vec<(u16, Ipv4Addr)> {
    published_entries()
        .into_iter()
        .filter(|(port, _)| ports.contains(port))
        .collect()
}

/// Stops publishing every port that leads to `address` (a container that is gone).
fn withdraw_published_to(address: Ipv4Addr) {
    for (port, _) in published_entries()
        .into_iter()
        .filter(|&(_, holder)| holder == address)
    {
        let _ = nft(&format!(
            "delete element inet {TABLE} published {{ {port} }}\n"
        ));
    }
}

/// Reads `nft -j list map …` output: `{"map": {…, "elem": [[port, "address"], …]}}`.
fn parse_published(json: &[u8]) -> Vec<(u16, Ipv4Addr)> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let maps = value["nftables"].as_array().into_iter().flatten();
    maps.filter_map(|item| item["map"]["elem"].as_array())
        .flatten()
        .filter_map(|pair| {
            let port = u16::try_from(pair.get(0)?.as_u64()?).ok()?;
            let address = pair.get(1)?.as_str()?.parse().ok()?;
            Some((port, address))
        })
        .collect()
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
    fn container_addresses_map_back_to_their_slots() {
        let subnet = NetworkConfig::default().subnet;
        for slot in [0, 70, SLOTS - 1] {
            assert_eq!(
                slot_of(subnet, slot_attachment(subnet, slot).address),
                Some(slot)
            );
        }
        assert_eq!(slot_of(subnet, slot_attachment(subnet, 3).gateway), None);
        assert_eq!(slot_of(subnet, Ipv4Addr::new(10, 212, 255, 254)), None);
        assert_eq!(slot_of(subnet, Ipv4Addr::new(10, 214, 0, 2)), None);
    }

    #[test]
    fn published_ports_are_distinct_and_never_zero() {
        assert_eq!(distinct_ports(&[8080, 9000, 8080]).unwrap(), [8080, 9000]);
        let err = distinct_ports(&[8080, 0]).unwrap_err().to_string();
        assert!(err.contains("port 0"), "{err}");
        assert_eq!(
            published_elements(&[80, 443], Ipv4Addr::new(10, 213, 0, 2)),
            "80 : 10.213.0.2, 443 : 10.213.0.2"
        );
    }

    #[test]
    fn conflicts_name_the_port_and_say_who_holds_it() {
        assert!(publish_conflict(&[]).is_none());
        let err = publish_conflict(&[(8080, Ipv4Addr::new(10, 213, 0, 6))])
            .unwrap()
            .to_string();
        assert!(err.contains("port 8080"), "{err}");
        assert!(
            err.contains("another container on this host publishes it"),
            "{err}"
        );
    }

    #[test]
    fn published_map_json_is_read() {
        // What `nft -j list map inet strato published` prints (nftables 1.0.6).
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"map": {"family": "inet", "name": "published", "table": "strato", "type": "inet_service", "handle": 6, "map": "ipv4_addr", "elem": [[8001, "10.213.0.2"], [9000, "10.213.0.6"]]}}]}"#;
        assert_eq!(
            parse_published(json),
            [
                (8001, Ipv4Addr::new(10, 213, 0, 2)),
                (9000, Ipv4Addr::new(10, 213, 0, 6))
            ]
        );
        assert!(parse_published(b"{}").is_empty());
        assert!(parse_published(b"garbage").is_empty());
    }

    /// A network namespace of its own for nft experiments, removed on drop.
    struct ScratchNetns(String);

    impl ScratchNetns {
        fn new(tag: &str) -> ScratchNetns {
            let name = format!("strato-unit-{tag}-{}", std::process::id());
            let ok = Command::new("/usr/sbin/ip")
                .args(["netns", "add", &name])
                .status()
                .expect("run ip (needs root and iproute2)")
                .success();
            assert!(ok, "ip netns add {name}");
            ScratchNetns(name)
        }

        /// Runs `nft` in the namespace with `script` on stdin (empty: none), returning
        /// stdout or panicking with stderr.
        fn nft(&self, args: &[&str], script: &str) -> String {
            let mut child = Command::new("/usr/sbin/ip")
                .args(["netns", "exec", &self.0, "/usr/sbin/nft"])
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run nft");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "nft {args:?}: {}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    }

    impl Drop for ScratchNetns {
        fn drop(&mut self) {
            let _ = Command::new("/usr/sbin/ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }

    /// The table as Strato made it before published ports existed.
    const TABLE_WITHOUT_PUBLISHING: &str = "table inet strato {
  set open_ports { type inet_service; flags interval; }
  chain input {
    type filter hook input priority filter - 5; policy accept;
    iifname \"stv*\" ct state established,related accept
    iifname \"stv*\" icmp type { echo-request, destination-unreachable, time-exceeded } accept
    iifname \"stv*\" tcp dport @open_ports accept
    iifname \"stv*\" meta l4proto tcp reject with tcp reset
    iifname \"stv*\" reject
  }
  chain forward {
    type filter hook forward priority filter - 5; policy accept;
    iifname \"stv*\" oifname \"stv*\" reject
    oifname \"stv*\" ct state established,related accept
    oifname \"stv*\" drop
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.213.0.0/16 oifname != \"stv*\" masquerade
  }
}
add element inet strato open_ports { 8080 }
";

    fn sorted_lines(listing: &str) -> Vec<String> {
        let mut lines: Vec<String> = listing.lines().map(|l| l.trim().to_string()).collect();
        lines.sort();
        lines
    }

    #[test]
    fn an_old_table_is_upgraded_to_exactly_the_new_rules() {
        let subnet = NetworkConfig::default().subnet;
        let fresh = ScratchNetns::new("fresh");
        fresh.nft(&["-f", "-"], &ruleset(subnet));
        fresh.nft(
            &["-f", "-"],
            "add element inet strato open_ports { 8080 }\n",
        );
        let fresh_listing = fresh.nft(&["list", "table", "inet", TABLE], "");
        assert!(
            fresh_listing.contains("dnat ip to tcp dport map @published"),
            "{fresh_listing}"
        );

        let old = ScratchNetns::new("old");
        old.nft(&["-f", "-"], TABLE_WITHOUT_PUBLISHING);
        old.nft(&["-f", "-"], &publishing_upgrade());
        let upgraded = old.nft(&["list", "table", "inet", TABLE], "");
        // Same rules, each once (the open port kept); only the order of chains differs.
        assert_eq!(
            sorted_lines(&upgraded),
            sorted_lines(&fresh_listing),
            "{upgraded}"
        );
        let at = |rule: &str| {
            upgraded
                .find(rule)
                .unwrap_or_else(|| panic!("{rule} missing:\n{upgraded}"))
        };
        assert!(
            at("iifname \"stv*\" oifname \"stv*\" reject") < at("ct status dnat accept")
                && at("ct status dnat accept") < at("oifname \"stv*\" drop"),
            "container to container is rejected before DNAT'd traffic is let in:\n{upgraded}"
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
