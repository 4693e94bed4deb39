//! `strato-bench density`: how many app instances one node holds.
//!
//! Starts `--count` real containers of Strato's small static file server (the one the
//! static buildpack ships), each as the DEA runs an instance: a runc container, a memory
//! limit, by default a network namespace of its own. Checks that every one answers HTTP,
//! and measures what they cost the machine: the drop of `MemAvailable` (processes, page
//! tables, cgroups, namespaces, veths: everything) divided by the count. From that it
//! works out how many would fit in the memory a DEA offers on a 24 GiB node (80%,
//! `dea_ng/resources/memory_max_percent`), DESIGN.md's target being at least 1000.
//! Everything is removed at the end, also on Ctrl-C.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use strato_container::{ContainerDriver, ContainerSpec, Mount, RuncDriver, Stack};

use crate::stats::{human, percentile};

/// DESIGN.md's target: instances of a tiny app per 24 GiB node.
const TARGET_PER_NODE: u64 = 1000;
const NODE_BYTES: u64 = 24 << 30;
/// The share of a node's memory a DEA offers (`memory_max_percent`).
const DEA_SHARE: f64 = 0.8;
const UID: u32 = 65534;
/// The port every instance listens on (each has its own network namespace) or the first
/// of a range (host network).
const PORT: u16 = 8000;

#[derive(Args, Debug)]
pub struct DensityOptions {
    /// How many instances to start.
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// The memory limit of each instance, in MB (a limit, not a reservation).
    #[arg(long, default_value_t = 32)]
    memory_mb: u64,
    /// Run the instances on the host network instead of a namespace each.
    #[arg(long)]
    host_network: bool,
}

/// The static server binary, next to this one (`cargo build --release --bins`).
fn static_server() -> anyhow::Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("strato-static")));
    let path = match beside {
        Some(p) if p.is_file() => p,
        _ => strato_e2e::bin_dir().join("strato-static"),
    };
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: build it with `cargo build --release -p strato-static`",
        path.display()
    );
    Ok(path)
}

fn mem_available() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("/proc/meminfo has no MemAvailable")
}

/// Whether the server at `addr` answers `GET /` with 200.
fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

pub fn run(options: &DensityOptions, as_json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(options.count >= 1, "--count must be at least 1");
    let server = static_server()?;
    let state = tempfile::Builder::new()
        .prefix("strato-bench-density-")
        .tempdir()
        .context("cannot create a temp dir; check that /tmp is writable")?;
    let site = state.path().join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("index.html"), "<h1>hello</h1>\n")?;
    let mut driver = RuncDriver::new(state.path().join("containers"), Stack::host_default());
    if !options.host_network {
        let net = strato_container::network::IsolatedNetwork::setup(Default::default())
            .context("cannot set up the container network")?;
        driver = driver.with_network(std::sync::Arc::new(net));
    }
    driver
        .check_available()
        .context("the density benchmark needs the runc driver (root)")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let before = mem_available()?;
    let outcome = runtime.block_on(async {
        let started = tokio::select! {
            r = start_all(&driver, options, &server, &site) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        let measured = match started {
            Ok((addrs, starts, _held)) => {
                // Let the servers settle, then check and measure.
                tokio::time::sleep(Duration::from_secs(2)).await;
                // An instance that does not answer at once gets two more tries, 3 s apart
                // (1000 servers starting on 2 cores take a moment).
                let mut silent: Vec<SocketAddr> =
                    addrs.iter().copied().filter(|a| !answers(*a)).collect();
                for _ in 0..2 {
                    if silent.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    silent.retain(|a| !answers(*a));
                }
                if let Some(first) = silent.first() {
                    eprintln!(
                        "{} instance(s) never answered, e.g. at {first}",
                        silent.len()
                    );
                }
                let answering = addrs.len() - silent.len();
                let after = mem_available();
                Ok((addrs.len(), answering, starts, after))
            }
            Err(e) => Err(e),
        };
        crate::container_bench::remove_all(&driver).await;
        measured
    });
    let (started, answering, mut starts, after) = outcome?;
    let after = after?;
    let per_instance = before.saturating_sub(after) / started.max(1) as u64;
    let per_node = if per_instance == 0 {
        u64::MAX
    } else {
        ((NODE_BYTES as f64 * DEA_SHARE) / per_instance as f64) as u64
    };
    starts.sort();
    let p50 = percentile(&starts, 50.0).unwrap_or_default();
    let met = per_node >= TARGET_PER_NODE && answering == started;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "instances": started,
                "answering": answering,
                "memory_per_instance_bytes": per_instance,
                "instances_per_24gib_node": per_node,
                "start_p50_ms": p50.as_secs_f64() * 1000.0,
                "target_per_node": TARGET_PER_NODE,
                "met": met,
            }))?
        );
    } else {
        println!(
            "density benchmark: {started} instances of strato-static, {} MB limit each, {}\n",
            options.memory_mb,
            if options.host_network {
                "host network"
            } else {
                "a network namespace each"
            }
        );
        println!("answering HTTP:          {answering} of {started}");
        println!("start p50:               {}", human(p50));
        println!(
            "memory per instance:     {:.2} MiB (MemAvailable drop / instances)",
            per_instance as f64 / (1u64 << 20) as f64
        );
        println!(
            "instances per 24 GiB node (80% to the DEA): {per_node} (target >= {TARGET_PER_NODE}: {})",
            if met { "met" } else { "MISSED" }
        );
    }
    Ok(())
}

async fn start_all(
    driver: &RuncDriver,
    options: &DensityOptions,
    server: &std::path::Path,
    site: &std::path::Path,
) -> anyhow::Result<(
    Vec<SocketAddr>,
    Vec<Duration>,
    Vec<strato_container::RunningContainer>,
)> {
    let mut addrs = Vec::with_capacity(options.count);
    let mut starts = Vec::with_capacity(options.count);
    let mut held = Vec::with_capacity(options.count);
    let server_dir = server
        .parent()
        .context("the server binary has no directory")?;
    for i in 0..options.count {
        let port = if options.host_network {
            PORT + i as u16
        } else {
            PORT
        };
        let id = format!("density-{}-{i}", std::process::id());
        let argv = vec!["/opt/strato/strato-static".to_string(), "/srv".to_string()];
        let mut spec = ContainerSpec::new(&id, argv, UID, UID);
        spec.env.push(format!("PORT={port}"));
        spec.memory_limit_bytes = Some(options.memory_mb << 20);
        spec.cwd = "/".to_string();
        spec.mounts.push(Mount {
            source: server_dir.to_path_buf(),
            destination: "/opt/strato".to_string(),
            read_only: true,
        });
        spec.mounts.push(Mount {
            source: site.to_path_buf(),
            destination: "/srv".to_string(),
            read_only: true,
        });
        let begin = Instant::now();
        let running = driver.run(spec).await.with_context(|| {
            format!("cannot start instance {i} (after {} started)", addrs.len())
        })?;
        starts.push(begin.elapsed());
        let ip = running.address.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        addrs.push(SocketAddr::new(ip, port));
        // Kept until the end: dropping it would let go of the container's runc process.
        held.push(running);
        if (i + 1) % 50 == 0 {
            eprintln!("{} instances started", i + 1);
        }
    }
    Ok((addrs, starts, held))
}
