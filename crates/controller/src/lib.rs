//! The controller role: Strato's REST API in Cloud Foundry v2 shapes.
//!
//! It owns the controller database and decides what should run; it never touches a
//! container itself. Staging goes to a stager over the bus, instances to DEAs over the bus
//! (placement in [`runner`]), and the health manager's decisions come back over the bus too.
//! The HTTP surface lives in [`api`]; everything it needs hangs off one [`Controller`].

pub mod access;
pub mod api;
pub mod auth;
pub mod bits;
pub mod blob_urls;
pub mod body;
pub mod bootstrap;
pub mod cf;
pub mod clients;
pub mod domains;
pub mod drains;
pub mod exec;
pub mod logs;
pub mod peers;
pub mod quota;
pub mod quotas;
pub mod releases;
pub mod runner;
pub mod services;
pub mod staging;
pub mod tenancy;
pub mod throttle;
pub mod tunnel;
pub mod uaa;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strato_bus::SharedBus;
use strato_db::Db;

/// Settings the controller reads at start (each can later come from the config store).
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// The shared app domain (`localhost` on a micro cloud).
    pub domain: String,
    /// Packages and droplets, content-addressed (shared with the stager on one node).
    pub blobs_dir: PathBuf,
    pub resources_dir: PathBuf,
    /// Largest app upload accepted, in MB.
    pub max_upload_mb: u64,
    /// Secret used to sign tokens.
    pub token_secret: Vec<u8>,
    pub staging_timeout: Duration,
    pub default_memory_mb: i64,
    pub default_disk_mb: i64,
    pub access_token_ttl: Duration,
    pub runner: runner::RunnerTimings,
    /// How many releases per app keep their droplet for a rollback (`max_releases`).
    pub max_releases: u64,
    /// `http://ADDRESS:PORT` where stagers and DEAs on other nodes reach this controller
    /// (through the node's router). Set in a cluster: blobs then travel as signed HTTP
    /// URLs ([`blob_urls`]); unset on a micro cloud, where they are shared files.
    pub blob_base_url: Option<String>,
    /// Where the cluster's routers reach this controller: set in a cluster, where every
    /// controller registers `api.DOMAIN` there so routers spread API requests over them
    /// ([`peers`]).
    pub api_address: Option<std::net::SocketAddr>,
    /// What the cluster's routers send as `X-Strato-Router`: a request carrying it came
    /// through one, so its `X-Forwarded-For` names the client (login throttling, audit).
    pub router_proof: Option<String>,
}

impl ControllerConfig {
    pub fn new(domain: &str, home: &strato_core::home::Layout, token_secret: Vec<u8>) -> Self {
        ControllerConfig {
            domain: domain.to_string(),
            blobs_dir: home.blobs(),
            resources_dir: home.resource_cache(),
            max_upload_mb: 1024,
            token_secret,
            staging_timeout: strato_core::timings::STAGING_TIMEOUT,
            default_memory_mb: 256,
            default_disk_mb: 2048,
            access_token_ttl: Duration::from_secs(3600),
            runner: runner::RunnerTimings::default(),
            max_releases: 5,
            blob_base_url: None,
            api_address: None,
            router_proof: None,
        }
    }
}

/// Everything a request handler can reach.
pub struct Controller {
    /// This incarnation's id: how it tells its own bus messages from its peers'.
    pub id: String,
    pub cfg: ControllerConfig,
    pub db: Db,
    pub bus: SharedBus,
    pub blobs: strato_blobs::BlobStore,
    /// Signs blob URLs for other nodes (a cluster only).
    pub blob_signer: Option<blob_urls::BlobSigner>,
    pub auth: auth::Tokens,
    pub logs: logs::LogStore,
    pub staging: staging::StagingLogs,
    pub runner: runner::Runner,
    pub brokers: services::Brokers,
    pub throttle: throttle::LoginThrottle,
}

pub type Shared = Arc<Controller>;

impl Controller {
    /// Connects the pieces and starts the background listeners (DEA adverts, app logs,
    /// health manager requests). Serve the result with [`api::router`].
    pub async fn start(
        cfg: ControllerConfig,
        db: Db,
        bus: SharedBus,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Shared> {
        std::fs::create_dir_all(&cfg.resources_dir)?;
        let blobs = strato_blobs::BlobStore::open(&cfg.blobs_dir)?;
        let auth = auth::Tokens::new(&cfg.token_secret, cfg.access_token_ttl);
        let logs = logs::LogStore::new(2000);
        let runner = runner::Runner::new(bus.clone(), cfg.runner);
        let blob_signer = cfg
            .blob_base_url
            .as_deref()
            .map(|base| blob_urls::BlobSigner::new(&cfg.token_secret, base));
        let c = Arc::new(Controller {
            id: strato_core::new_guid(),
            cfg,
            db,
            bus,
            blobs,
            blob_signer,
            auth,
            logs,
            staging: staging::StagingLogs::default(),
            runner,
            brokers: services::Brokers::default(),
            throttle: throttle::LoginThrottle::default(),
        });
        c.logs.listen(c.bus.clone(), shutdown.clone()).await?;
        c.runner.listen(shutdown.clone()).await?;
        runner::serve_health_manager(c.clone(), shutdown.clone()).await?;
        services::listen(c.clone(), shutdown.clone()).await?;
        drains::run_forwarder(c.clone(), shutdown.clone()).await?;
        peers::listen(c.clone(), shutdown.clone()).await?;
        tokio::spawn(api::refresh_all_routes(c.clone()));
        Ok(c)
    }
}
