//! The DEA role: runs droplets as container instances on this node.
//!
//! [`run`] listens on the bus for `dea.<id>.start`, `dea.stop`, `dea.find.droplet`,
//! `dea.<id>.exec`, `dea.<id>.files`, `dea.<id>.session` (streaming exec over the DEA's
//! own WebSocket endpoint, [`session`]) and `router.start`; it publishes `dea.advertise`,
//! `dea.heartbeat`, `router.register`/`unregister`, `droplet.exited` and every line of app
//! output on `apptail.<app>`. Containers go through a [`ContainerDriver`] (runc in
//! production), so the same code runs isolated or, where runc cannot run, unisolated.
//!
//! Every DEA answers `dea.find.droplet`, with an empty list when it has no instance of the
//! app, so the controller's collector is done once each live DEA has answered.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strato_bus::SharedBus;
use strato_container::ContainerDriver;
use tokio_util::sync::CancellationToken;

mod agent;
pub mod droplet;
pub mod env;
pub mod files;
mod instance;
mod ports;
mod pty;
pub mod session;
pub mod tools;

pub use files::{FileEntry, FilesReply, FilesRequest};

/// Container ids of DEA instances start with this, so cleanup never touches other users of
/// the same driver (e.g. staging containers).
pub const CONTAINER_PREFIX: &str = "dea-";

/// Everything a DEA needs to know about its node.
#[derive(Clone, Debug)]
pub struct DeaConfig {
    /// This DEA's id (subjects `dea.<id>.*`).
    pub id: String,
    /// The address routers use to reach instances (published in `router.register`).
    pub host_ip: String,
    /// One dir per instance: `app/` (mounted at `/home/stackato/app`), `staging_info.json`.
    pub containers_dir: PathBuf,
    /// Verified droplets, `<sha256>.tgz`.
    pub droplets_cache: PathBuf,
    /// Ports handed to instances (inclusive).
    pub port_range: (u16, u16),
    /// Memory this DEA offers to instances, in MB.
    pub memory_mb: u64,
    /// The stack name advertised (`"default"`).
    pub stack: String,
    pub zone: String,
    pub advertise_interval: Duration,
    pub heartbeat_interval: Duration,
    pub register_interval: Duration,
    /// SIGTERM, then SIGKILL after this.
    pub stop_grace: Duration,
    /// How long a crashed instance's files stay for `files`.
    pub crash_retention: Duration,
    /// The user and group apps run as.
    pub uid: u32,
    pub gid: u32,
    /// `KEY=VALUE` pairs every app gets (host CA and proxy settings).
    pub extra_env: Vec<String>,
    /// Give each instance dir a filesystem of the app's disk quota (loop-mounted image;
    /// needs root). Default: when running as root.
    pub disk_quota: bool,
    /// Publish each instance's port on this host (DNAT from `host_ip:port` into its
    /// container) and register `host_ip:port` with the routers, instead of the container's
    /// own address: in a cluster the routers run on other hosts, which cannot reach
    /// container addresses.
    pub publish: bool,
}

impl DeaConfig {
    /// A config with the default timings of `strato_core::timings`, dirs under `base_dir`,
    /// ports 61000–61999, 4 GB, uid/gid 1000.
    pub fn new(
        id: impl Into<String>,
        host_ip: impl Into<String>,
        base_dir: &std::path::Path,
    ) -> Self {
        use strato_core::timings;
        DeaConfig {
            id: id.into(),
            host_ip: host_ip.into(),
            containers_dir: base_dir.join("containers"),
            droplets_cache: base_dir.join("droplets"),
            port_range: (61000, 61999),
            memory_mb: 4096,
            stack: "default".to_string(),
            zone: "default".to_string(),
            advertise_interval: timings::DEA_ADVERTISE_INTERVAL,
            heartbeat_interval: timings::DEA_HEARTBEAT_INTERVAL,
            register_interval: timings::ROUTE_REGISTER_INTERVAL,
            stop_grace: timings::STOP_GRACE,
            crash_retention: timings::CRASH_RETENTION,
            uid: 1000,
            gid: 1000,
            extra_env: Vec::new(),
            disk_quota: strato_core::home::is_root(),
            publish: false,
        }
    }
}

/// Runs the DEA until `shutdown` is cancelled; then stops every instance (publishing
/// `droplet.exited` with `DEA_SHUTDOWN`), publishes `dea.shutdown` and returns.
/// Containers left by a previous run are removed at start.
pub async fn run(
    cfg: DeaConfig,
    bus: SharedBus,
    driver: Arc<dyn ContainerDriver>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    agent::Dea::new(cfg, bus, driver, shutdown).run().await
}
