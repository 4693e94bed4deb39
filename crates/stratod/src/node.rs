//! One node: its identity, its shared pieces (bus, config store, database, container
//! driver) and the roles it runs.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strato_bus::{InProcBus, SharedBus};
use strato_container::ContainerDriver;
use strato_core::home::Layout;
use strato_core::Role;
use strato_kv::ConfigStore;
use tokio_util::sync::CancellationToken;

use crate::supervisor::{RoleFactory, Supervisor};

/// `stratod` options; each also reads an environment variable.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "stratod",
    version,
    about = "Strato node agent: runs this node's roles"
)]
pub struct Options {
    /// Data directory (default /var/lib/strato as root, ~/.local/share/strato otherwise).
    #[arg(long, env = "STRATO_HOME")]
    pub home: Option<PathBuf>,
    /// Port of the router (apps and the API).
    #[arg(long, env = "STRATO_HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// Port of the router's HTTPS listener (certificates from this node's CA, or custom
    /// ones installed with `kato op custom_ssl_cert`); 0 turns HTTPS off.
    #[arg(long, env = "STRATO_HTTPS_PORT", default_value_t = 8443)]
    pub https_port: u16,
    /// Address the router listens on.
    #[arg(long, env = "STRATO_HTTP_ADDR", default_value = "0.0.0.0")]
    pub http_addr: std::net::IpAddr,
    /// The app domain (apps at NAME.DOMAIN, the API at api.DOMAIN).
    #[arg(long, env = "STRATO_DOMAIN", default_value = "localhost")]
    pub domain: String,
    /// A NATS server for the bus (cluster), or every server of a NATS cluster as a
    /// comma-separated list; without it the bus is in-process.
    #[arg(long, env = "STRATO_NATS_URL")]
    pub nats_url: Option<String>,
    /// Controller database (default: SQLite under the data directory).
    #[arg(long, env = "STRATO_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The address other nodes of a cluster reach this node at (default: the address of
    /// the host's default route). Used with a NATS bus: routers elsewhere reach this
    /// node's app instances there, and DEAs elsewhere fetch droplets from its controller.
    #[arg(long, env = "STRATO_NODE_ADDRESS")]
    pub node_address: Option<std::net::IpAddr>,
    /// CA certificate(s), PEM: talk to NATS over TLS verified against them.
    #[arg(long, env = "STRATO_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// Use the unisolated process driver even where runc works (development only).
    #[arg(long, env = "STRATO_PROCESS_DRIVER", default_value_t = false)]
    pub process_driver: bool,
    /// Largest app upload accepted, in MB.
    #[arg(long, env = "STRATO_MAX_UPLOAD_MB", default_value_t = 1024)]
    pub max_upload_mb: u64,
    /// First port handed to app instances.
    #[arg(long, env = "STRATO_APP_PORT_BASE", default_value_t = 61000)]
    pub app_port_base: u16,
    /// Give every container a network namespace of its own, so instances reach only the
    /// router, the data services and the outside (runc driver only).
    #[arg(long, env = "STRATO_NETWORK_ISOLATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub network_isolation: bool,
    /// First of the 1000 ports data-service servers listen on (containers may connect to
    /// these and to the router, nothing else on this host).
    #[arg(long, env = "STRATO_SERVICE_PORT_BASE", default_value_t = 30000)]
    pub service_port_base: u16,
}

impl Options {
    /// Whether this node is part of a cluster (its bus is NATS).
    pub fn clustered(&self) -> bool {
        self.nats_url.is_some()
    }

    /// The address other nodes reach this one at: `--node-address`, else the address of
    /// the default route.
    pub fn cluster_address(&self) -> Option<std::net::IpAddr> {
        self.node_address
            .or_else(strato_services::address::default_route_address)
    }

    /// The ports data services listen on, inclusive.
    pub fn service_ports(&self) -> (u16, u16) {
        (
            self.service_port_base,
            self.service_port_base.saturating_add(999),
        )
    }
}

pub use strato_core::home::NodeIdentity;

/// The uid and gid apps and staging run as (no such user on the host).
const APP_UID: u32 = 20000;

/// Shared pieces every role factory captures.
pub struct Node {
    pub opts: Options,
    pub layout: Layout,
    pub identity: NodeIdentity,
    pub bus: SharedBus,
    pub kv: Arc<dyn ConfigStore>,
    /// The controller database, opened when the node first runs the controller.
    pub db: tokio::sync::OnceCell<strato_db::Db>,
    pub driver: Arc<dyn ContainerDriver>,
    pub api_listener: TcpListener,
    pub supervisor: Supervisor,
    /// The cluster's NATS server, on the core node (`kato node setup core`).
    pub bus_server: Option<crate::bus_server::SharedBusServer>,
    pub shutdown: CancellationToken,
    pub started_at: String,
    /// The cloud's domain: `cluster/domain` in the config store once `kato node rename`
    /// set it, else `STRATO_DOMAIN`. Read when a role starts.
    domain: std::sync::RwLock<String>,
    /// The controller database this core runs itself ([`crate::core_db`]).
    managed_db: Option<strato_services::postgresql::PostgresNode>,
    /// The core's controller database URL, once asked for ([`Node::database_url`]).
    core_database_url: tokio::sync::OnceCell<String>,
}

/// Where `kato node rename` keeps the cloud's domain.
pub const DOMAIN_KEY: &str = "cluster/domain";
/// Bumped by `kato op regenerate token-signing-secret`: every controller starts again
/// and reads the new secret from the database.
pub const SECRET_GENERATION_KEY: &str = "cluster/token_secret_generation";

/// runc when it can run containers here (it is installed, and a test container runs),
/// else the process driver, said loudly.
async fn choose_driver(opts: &Options, layout: &Layout) -> Arc<dyn ContainerDriver> {
    let runc = strato_container::RuncDriver::new(
        layout.containers(),
        strato_container::Stack::host_default(),
    );
    if !opts.process_driver {
        let usable = match runc.check_available() {
            Ok(()) => runc.probe().await,
            Err(e) => Err(e),
        };
        match usable {
            Ok(()) if opts.network_isolation => {
                let mut open_ports = vec![(opts.http_port, opts.http_port), opts.service_ports()];
                if opts.https_port != 0 {
                    open_ports.push((opts.https_port, opts.https_port));
                }
                let cfg = strato_container::network::NetworkConfig {
                    open_ports,
                    ..Default::default()
                };
                match strato_container::network::IsolatedNetwork::setup(cfg) {
                    Ok(net) => return Arc::new(runc.with_network(Arc::new(net))),
                    Err(e) => {
                        tracing::warn!("containers share the host network: cannot set up their own ({e}); set STRATO_NETWORK_ISOLATION=false to silence this");
                        return Arc::new(runc);
                    }
                }
            }
            Ok(()) => return Arc::new(runc),
            Err(e) => {
                tracing::warn!("runc cannot run here ({e}); falling back to the process driver. Check that `runc run` works as root (cgroups mounted, not nested in a container that forbids it) and restart stratod; STRATO_PROCESS_DRIVER=true chooses the process driver knowingly")
            }
        }
    }
    eprintln!("stratod: WARNING: app instances are NOT isolated (process driver): no container, no memory limit, running as this user");
    Arc::new(strato_container::ProcessDriver::new())
}

/// Roles this node should run: from the config store, or the micro cloud's set on a new node.
pub async fn configured_roles(kv: &dyn ConfigStore, node_id: &str) -> anyhow::Result<Vec<Role>> {
    let prefix = format!("node/{node_id}/roles");
    if kv.list(&prefix).await?.is_empty() {
        let roles = first_roles()?;
        set_roles(kv, node_id, &roles).await?;
        return Ok(roles);
    }
    stored_roles(kv, node_id).await
}

/// The roles the config store holds for a node (none when it holds none).
pub async fn stored_roles(kv: &dyn ConfigStore, node_id: &str) -> anyhow::Result<Vec<Role>> {
    let prefix = format!("node/{node_id}/roles");
    let leaves = kv.list(&prefix).await?;
    let mut roles = Vec::new();
    for (path, v) in leaves {
        if v.value == serde_json::Value::Bool(true) {
            if let Some(name) = path.rsplit('/').next() {
                if let Ok(r) = name.parse::<Role>() {
                    roles.extend(r.expand());
                }
            }
        }
    }
    roles.sort();
    roles.dedup();
    Ok(roles)
}

/// Where a role assigned with `kato role add -s` waits for the next `kato start`.
pub fn held_key(node_id: &str, role: Role) -> String {
    format!("node/{node_id}/held/{}", role.name())
}

/// Roles assigned to a node but not to be started until the next `kato start`, as
/// `kato role add -s` named them (`primary` stays `primary`).
pub async fn held_roles(kv: &dyn ConfigStore, node_id: &str) -> anyhow::Result<Vec<Role>> {
    let leaves = kv.list(&format!("node/{node_id}/held")).await?;
    Ok(leaves
        .into_iter()
        .filter(|(_, v)| v.value == serde_json::Value::Bool(true))
        .filter_map(|(path, _)| path.rsplit('/').next()?.parse::<Role>().ok())
        .collect())
}

/// Forgets every hold of this node (`kato start`).
pub async fn release_holds(kv: &dyn ConfigStore, node_id: &str) -> anyhow::Result<()> {
    for (path, _) in kv.list(&format!("node/{node_id}/held")).await? {
        kv.del(&path).await?;
    }
    Ok(())
}

/// The role tasks to run for `assigned` roles of which `held` wait: a task runs when any
/// role it hosts is assigned and not held (`logs` lives in the controller's task).
fn runnable(assigned: &[Role], held: &[Role]) -> Vec<Role> {
    let held: Vec<Role> = held.iter().flat_map(|r| r.expand()).collect();
    let mut tasks: Vec<Role> = assigned
        .iter()
        .filter(|r| !held.contains(r))
        .map(|r| hosting_role(*r))
        .collect();
    tasks.sort();
    tasks.dedup();
    tasks
}

/// The roles of a new node: `STRATO_ROLES` (comma-separated, e.g. `micro` or
/// `controller,dea,router`) when set, else the micro cloud's set.
fn first_roles() -> anyhow::Result<Vec<Role>> {
    let Some(list) = std::env::var("STRATO_ROLES")
        .ok()
        .filter(|v| !v.trim().is_empty())
    else {
        return Ok(Role::micro());
    };
    let mut roles = vec![Role::Base];
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "micro" {
            roles.extend(Role::micro());
        } else {
            let role: Role = name
                .parse()
                .with_context(|| format!("STRATO_ROLES names an unknown role {name:?}"))?;
            roles.extend(role.expand());
        }
    }
    roles.sort();
    roles.dedup();
    Ok(roles)
}

/// The role whose task serves `role`: the logs role lives inside the controller for now,
/// so its state is the controller's.
pub fn hosting_role(role: Role) -> Role {
    match role {
        Role::Logs => Role::Controller,
        r => r,
    }
}

/// Writes a role set to the config store (what `kato node setup micro` does).
pub async fn set_roles(kv: &dyn ConfigStore, node_id: &str, roles: &[Role]) -> anyhow::Result<()> {
    let mut doc = serde_json::Map::new();
    for r in roles {
        doc.insert(r.name().to_string(), serde_json::Value::Bool(true));
    }
    kv.set(
        &format!("node/{node_id}/roles"),
        serde_json::Value::Object(doc),
    )
    .await?;
    Ok(())
}

impl Node {
    /// The factory that runs one incarnation of `role`.
    pub fn factory(self: &Arc<Self>, role: Role) -> Option<RoleFactory> {
        let node = self.clone();
        let f: RoleFactory = match role {
            Role::Controller => Arc::new(move |cancel| {
                let node = node.clone();
                Box::pin(async move { node.run_controller(cancel).await })
            }),
            Role::Router => Arc::new(move |cancel| {
                let node = node.clone();
                Box::pin(async move {
                    let mut cfg = strato_router::RouterConfig {
                        listen: SocketAddr::new(node.opts.http_addr, node.opts.http_port),
                        domain: node.domain(),
                        // A cluster's controllers register `api.DOMAIN` instead.
                        api_backend: if node.opts.clustered() {
                            None
                        } else {
                            Some(node.api_listener.local_addr()?)
                        },
                        https: node.https_settings()?,
                        ..Default::default()
                    };
                    let c = Role::Router.component();
                    cfg.api_proof = node.router_proof().await;
                    cfg.route_ttl = node.config_secs(c, "route_ttl", cfg.route_ttl).await;
                    cfg.drain = node.config_secs(c, "drain", cfg.drain).await;
                    cfg.dea_deadline = node.config_secs(c, "dea_deadline", cfg.dea_deadline).await;
                    cfg.register_interval = node
                        .config_secs(c, "register_interval", cfg.register_interval)
                        .await;
                    cfg.response_timeout = node
                        .config_secs(c, "response_timeout", cfg.response_timeout)
                        .await;
                    cfg.body_read_timeout = node
                        .config_secs(c, "body_read_timeout", cfg.body_read_timeout)
                        .await;
                    let router = strato_router::Router::bind(cfg, node.bus.clone())
                        .await
                        .with_context(|| format!("the router cannot listen on port {} or {}; set STRATO_HTTP_PORT and STRATO_HTTPS_PORT to free ports", node.opts.http_port, node.opts.https_port))?;
                    router.serve(cancel).await;
                    Ok(())
                })
            }),
            Role::Stager => Arc::new(move |cancel| {
                let node = node.clone();
                Box::pin(async move {
                    let mut cfg =
                        strato_stager::StagerConfig::under(&node.layout.root.join("stager"));
                    cfg.blobs_dir = node.layout.blobs();
                    cfg.uid = APP_UID;
                    cfg.gid = APP_UID;
                    if let Some(order) = node.buildpack_order().await {
                        cfg.buildpack_order = order;
                    }
                    strato_stager::run(cfg, node.bus.clone(), node.driver.clone(), cancel).await
                })
            }),
            Role::Dea => Arc::new(move |cancel| {
                let node = node.clone();
                Box::pin(async move {
                    let mut cfg = strato_dea::DeaConfig::new(
                        node.identity.id.clone(),
                        "127.0.0.1",
                        &node.layout.root.join("dea"),
                    );
                    if node.opts.clustered() {
                        let address = node.opts.cluster_address().context("this node has no default route to find its cluster address from; set STRATO_NODE_ADDRESS")?;
                        cfg.host_ip = address.to_string();
                        cfg.publish = true;
                    }
                    cfg.uid = APP_UID;
                    cfg.gid = APP_UID;
                    cfg.port_range = (
                        node.opts.app_port_base,
                        node.opts.app_port_base.saturating_add(999),
                    );
                    cfg.memory_mb = dea_memory_mb();
                    cfg.zone = node.availability_zone().await;
                    let c = Role::Dea.component();
                    cfg.advertise_interval = node
                        .config_secs(c, "advertise_interval", cfg.advertise_interval)
                        .await;
                    cfg.heartbeat_interval = node
                        .config_secs(c, "heartbeat_interval", cfg.heartbeat_interval)
                        .await;
                    cfg.register_interval = node
                        .config_secs(c, "register_interval", cfg.register_interval)
                        .await;
                    cfg.stop_grace = node.config_secs(c, "stop_grace", cfg.stop_grace).await;
                    cfg.crash_retention = node
                        .config_secs(c, "crash_retention", cfg.crash_retention)
                        .await;
                    cfg.extra_env = strato_stager::config::inherited_env(std::env::vars());
                    strato_dea::run(cfg, node.bus.clone(), node.driver.clone(), cancel).await
                })
            }),
            Role::HealthManager => Arc::new(move |cancel| {
                let node = node.clone();
                Box::pin(async move {
                    let mut cfg = strato_health::HealthConfig::default();
                    let c = Role::HealthManager.component();
                    cfg.interval = node.config_secs(c, "interval", cfg.interval).await;
                    cfg.heartbeat_deadline = node
                        .config_secs(c, "heartbeat_deadline", cfg.heartbeat_deadline)
                        .await;
                    cfg.backoff_max = node.config_secs(c, "backoff_max", cfg.backoff_max).await;
                    cfg.immediate_restarts = node
                        .config_u64(c, "immediate_restarts", cfg.immediate_restarts.into())
                        .await
                        .try_into()
                        .unwrap_or(cfg.immediate_restarts);
                    node.run_health_manager(cfg, cancel).await
                })
            }),
            Role::Postgresql | Role::Mysql | Role::Redis | Role::Filesystem => {
                Arc::new(move |cancel| {
                    let node = node.clone();
                    Box::pin(async move {
                        let cfg = node.service_role_config(role).await?;
                        strato_services::role::run(cfg, node.bus.clone(), cancel).await
                    })
                })
            }
            // The logs role is served by the controller's log store for now; base is the agent.
            _ => return None,
        };
        Some(f)
    }

    /// A duration in seconds (fractions allowed) from the config store, or `default`.
    /// Timings are config keys (DESIGN "Decisions"); a role reads them when it starts, so
    /// `kato restart ROLE` applies a change.
    /// The operator's detection order for built-in buildpacks, if one is set (and good).
    async fn buildpack_order(&self) -> Option<Vec<String>> {
        let value = self
            .kv
            .get(crate::settings::BUILDPACK_ORDER)
            .await
            .ok()
            .flatten()?;
        crate::settings::buildpack_order(&value.value)
            .inspect_err(|e| tracing::warn!("{e}; using the default order"))
            .ok()
    }

    async fn config_secs(&self, component: &str, key: &str, default: Duration) -> Duration {
        // A timing read here and not listed would be stored unchecked by `kato config set`.
        debug_assert!(
            crate::settings::is_seconds(component, key),
            "{component}/{key} is read as seconds: list it in settings::SECONDS"
        );
        let value = self
            .kv
            .get(&format!("{component}/{key}"))
            .await
            .ok()
            .flatten();
        crate::settings::seconds(value.as_ref().map(|v| &v.value)).unwrap_or_else(|bad| {
            if bad {
                tracing::warn!(
                    "{component}/{key} must be a positive number of seconds; using {}",
                    default.as_secs_f64()
                );
            }
            default
        })
    }

    /// Runs the health manager. With a PostgreSQL database (a cluster) it first waits
    /// to hold the `strato.health_manager` advisory lock, so one health manager acts in
    /// the whole cluster however many nodes have the role; losing the lock's connection
    /// ends this incarnation (the supervisor starts it again as a standby).
    async fn run_health_manager(
        &self,
        cfg: strato_health::HealthConfig,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let url = self
            .database_url()
            .await?
            .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
        let Some(url) = url else {
            if self.opts.clustered() {
                anyhow::bail!("a cluster's health manager needs the PostgreSQL controller database for its lock (one acts at a time); give this node STRATO_DATABASE_URL or run the core's");
            }
            return strato_health::run(cfg, self.bus.clone(), cancel).await;
        };
        let Some(mut lead) = strato_db::leader::Leadership::acquire(
            &url,
            "strato.health_manager",
            Duration::from_secs(1),
            &cancel,
        )
        .await
        .context("electing the health manager")?
        else {
            return Ok(());
        };
        tokio::select! {
            done = strato_health::run(cfg, self.bus.clone(), cancel.clone()) => done,
            _ = lead.lost(Duration::from_secs(2)) => {
                anyhow::bail!("lost the health manager's lock (its database connection broke)")
            }
        }
    }

    /// This node's availability zone (`kato node availabilityzone`), `default` unset.
    pub async fn availability_zone(&self) -> String {
        match self.kv.get(&zone_key(&self.identity.id)).await {
            Ok(Some(v)) => v
                .value
                .as_str()
                .filter(|z| !z.is_empty())
                .unwrap_or("default")
                .to_string(),
            _ => "default".to_string(),
        }
    }

    /// The node's certificate authority, created on first use.
    pub fn authority(&self) -> anyhow::Result<strato_tls::Authority> {
        node_authority(&self.layout, &self.identity.id)
    }

    /// The certificates operators installed (`kato op custom_ssl_cert`).
    pub fn custom_certs(&self) -> strato_tls::CustomCerts {
        strato_tls::CustomCerts::new(self.layout.tls_custom())
    }

    /// The router's HTTPS listener, unless `STRATO_HTTPS_PORT` is 0. Clients that send no
    /// server name (an address as the target) get a certificate for 127.0.0.1.
    fn https_settings(&self) -> anyhow::Result<Option<strato_router::HttpsSettings>> {
        if self.opts.https_port == 0 {
            return Ok(None);
        }
        // The CA signs for the cloud's own names and addresses only, so a client cannot
        // make it sign for every name it invents; other domains need a custom certificate.
        let domain = self.domain().to_ascii_lowercase();
        let resolver = strato_tls::CertResolver::new(
            Arc::new(self.authority()?),
            self.custom_certs(),
            "127.0.0.1",
        )?
        .issuing_only_for(Box::new(move |name| {
            name == domain
                || name
                    .strip_suffix(domain.as_str())
                    .is_some_and(|p| p.ends_with('.'))
                || name.parse::<std::net::IpAddr>().is_ok()
        }));
        let tls = strato_tls::server_config(Arc::new(resolver))?;
        Ok(Some(strato_router::HttpsSettings::new(
            SocketAddr::new(self.opts.http_addr, self.opts.https_port),
            tls,
        )))
    }

    /// A number from the config store (`component/key`), or `default`.
    async fn config_u64(&self, component: &str, key: &str, default: u64) -> u64 {
        match self.kv.get(&format!("{component}/{key}")).await {
            Ok(Some(v)) => v.value.as_u64().unwrap_or_else(|| {
                tracing::warn!("{component}/{key} is not a whole number; using {default}");
                default
            }),
            _ => default,
        }
    }

    /// The settings of a service role: data under `STRATO_HOME/services/<type>`, limits
    /// from `<type>_node/capacity` and `<type>_node/max_db_size` (MB), credentials naming
    /// `<type>_node/address` or else the host's default-route address.
    async fn service_role_config(
        &self,
        role: Role,
    ) -> anyhow::Result<strato_services::role::RoleConfig> {
        let kind: strato_services::ServiceKind = role.name().parse()?;
        let component = role.component();
        let capacity = self.config_u64(component, "capacity", 200).await;
        let size_mb = self.config_u64(component, "max_db_size", 100).await;
        let address = match self.kv.get(&format!("{component}/address")).await {
            Ok(Some(v)) => v
                .value
                .as_str()
                .and_then(|a| a.parse().ok())
                .with_context(|| format!("{component}/address must be an IP address"))?,
            _ => strato_services::address::default_route_address().unwrap_or_else(|| {
                tracing::warn!("this host has no default route; service credentials will name 127.0.0.1 (set {component}/address)");
                std::net::IpAddr::from([127, 0, 0, 1])
            }),
        };
        Ok(strato_services::role::RoleConfig {
            kind,
            node: strato_services::NodeConfig {
                dir: self.layout.services().join(kind.label()),
                address,
                port: 0,
                port_range: Some(self.opts.service_ports()),
                capacity,
            },
            plans: vec![strato_services::Plan {
                name: "free".to_string(),
                size_mb,
            }],
            gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            app_uid: APP_UID,
            app_gid: APP_UID,
            quota_interval: Duration::from_secs(5),
        })
    }

    async fn run_controller(self: Arc<Self>, cancel: CancellationToken) -> anyhow::Result<()> {
        let db = self.controller_db().await?;
        let secret = strato_controller::bootstrap::shared_token_secret(
            &db,
            &self.layout.token_secret_file(),
        )
        .await?;
        let mut cfg =
            strato_controller::ControllerConfig::new(&self.domain(), &self.layout, secret);
        cfg.max_upload_mb = self
            .config_u64(
                Role::Controller.component(),
                "max_client_upload",
                self.opts.max_upload_mb,
            )
            .await;
        let c = Role::Controller.component();
        cfg.staging_timeout = self
            .config_secs(c, "staging_timeout", cfg.staging_timeout)
            .await;
        cfg.runner.dea_expiry = self
            .config_secs(c, "dea_expiry", cfg.runner.dea_expiry)
            .await;
        cfg.runner.start_shield = self
            .config_secs(c, "start_shield", cfg.runner.start_shield)
            .await;
        cfg.max_releases = self
            .config_u64(c, "max_releases", cfg.max_releases)
            .await
            .max(1);
        cfg.router_proof = self.router_proof().await;
        let listener = if self.opts.clustered() {
            // Its own port on the cluster address, closed when the role stops, so routers
            // and DEAs elsewhere are refused at once and turn to another controller.
            let address = self.opts.cluster_address().context(
                "this node has no default route to find its cluster address from; set STRATO_NODE_ADDRESS",
            )?;
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(address, 0))
                .await
                .with_context(|| format!("binding the API on {address}"))?;
            let local = listener.local_addr()?;
            cfg.api_address = Some(local);
            cfg.blob_base_url = Some(format!("http://{local}"));
            listener
        } else {
            tokio::net::TcpListener::from_std(self.api_listener.try_clone()?)?
        };
        let c =
            strato_controller::Controller::start(cfg, db, self.bus.clone(), cancel.clone()).await?;
        let app = strato_controller::api::router(c);
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await?;
        Ok(())
    }

    /// In a cluster, the secret its routers show its controllers (`X-Strato-Router`), kept
    /// at `cluster/router_proof`: made by whichever role asks first.
    pub async fn router_proof(&self) -> Option<String> {
        const KEY: &str = "cluster/router_proof";
        if !self.opts.clustered() {
            return None;
        }
        for _ in 0..2 {
            if let Ok(Some(v)) = self.kv.get(KEY).await {
                if let Some(proof) = v.value.as_str() {
                    return Some(proof.to_string());
                }
            }
            let fresh: [u8; 32] = rand::random();
            let fresh = serde_json::Value::String(hex::encode(fresh));
            let _ = self
                .kv
                .set_if(KEY, fresh, strato_kv::Condition::Absent)
                .await;
        }
        tracing::warn!("cannot read or make the routers' proof: controllers will not believe X-Forwarded-For from other nodes' routers");
        None
    }

    /// The cloud's domain (apps at NAME.DOMAIN, the API at api.DOMAIN).
    pub fn domain(&self) -> String {
        self.domain
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes a new domain (`kato node rename`); the roles that read it must start again.
    pub fn set_domain(&self, domain: &str) {
        *self.domain.write().unwrap_or_else(|p| p.into_inner()) = domain.to_string();
    }

    /// Restarts `role` if it runs, so it reads its settings again; a role taken from this
    /// node (or held) meanwhile is not started again. True when it runs again.
    pub async fn restart_role(self: &Arc<Self>, role: Role) -> bool {
        if !self.supervisor.stop(role, Duration::from_secs(30)).await {
            return false;
        }
        let held = held_roles(self.kv.as_ref(), &self.identity.id)
            .await
            .unwrap_or_default();
        let stored = stored_roles(self.kv.as_ref(), &self.identity.id)
            .await
            .unwrap_or_default();
        if !runnable(&stored, &held).contains(&role) {
            tracing::info!(
                role = role.name(),
                "not restarted: the role is no longer this node's"
            );
            return false;
        }
        match self.factory(role) {
            Some(f) => {
                self.supervisor.start(role, f);
                true
            }
            None => false,
        }
    }

    /// The controller database, opened (and migrated) on first use. In a cluster only a
    /// node given the database (`STRATO_DATABASE_URL`, as its controllers are) has one.
    pub async fn controller_db(&self) -> anyhow::Result<strato_db::Db> {
        Ok(self
            .db
            .get_or_try_init(|| async {
                let mut opts = self.opts.clone();
                opts.database_url = self.database_url().await?;
                opts.domain = self.domain();
                open_controller_db(&opts, &self.layout).await
            })
            .await?
            .clone())
    }

    /// The controller database's URL: the node's own setting; in a cluster without one,
    /// the core's (asked once); `None` on a micro cloud (SQLite under the home).
    pub async fn database_url(&self) -> anyhow::Result<Option<String>> {
        if let Some(url) = &self.opts.database_url {
            return Ok(Some(url.clone()));
        }
        if !self.opts.clustered() {
            return Ok(None);
        }
        let url = self
            .core_database_url
            .get_or_try_init(|| crate::core_db::ask_core(self))
            .await?;
        Ok(Some(url.clone()))
    }

    /// Brings the running roles in line with the config store: starts what was added,
    /// stops what was removed (`kato role add|remove`, from this node or any other).
    pub async fn apply_roles(self: &Arc<Self>) -> anyhow::Result<()> {
        let held = held_roles(self.kv.as_ref(), &self.identity.id).await?;
        let stored = stored_roles(self.kv.as_ref(), &self.identity.id).await?;
        let assigned: Vec<Role> = stored.iter().map(|r| hosting_role(*r)).collect();
        let running = self.supervisor.running();
        for role in &running {
            if !assigned.contains(role) {
                tracing::info!(
                    role = role.name(),
                    "role removed from this node: stopping it"
                );
                self.supervisor.stop(*role, Duration::from_secs(30)).await;
            }
        }
        // A held role is not started here; one already running keeps running.
        let wanted = runnable(&stored, &held);
        for role in wanted {
            if let Some(f) = self.factory(role) {
                // Starting a running role does nothing.
                self.supervisor.start(role, f);
            }
        }
        Ok(())
    }

    /// Starts every configured role that is not running.
    pub async fn start_roles(self: &Arc<Self>) -> anyhow::Result<Vec<Role>> {
        let held = held_roles(self.kv.as_ref(), &self.identity.id).await?;
        let configured = configured_roles(self.kv.as_ref(), &self.identity.id).await?;
        // The same tasks as a live change would run (`logs` lives in the controller's).
        for task in runnable(&configured, &held) {
            if let Some(f) = self.factory(task) {
                self.supervisor.start(task, f);
            }
        }
        let held: Vec<Role> = held.iter().flat_map(|r| r.expand()).collect();
        Ok(configured
            .into_iter()
            .filter(|r| !held.contains(r))
            .collect())
    }
}

/// Where a node's availability zone is kept.
pub fn zone_key(node_id: &str) -> String {
    format!("node/{node_id}/availability_zone")
}

/// Hands every change at or below `prefix` (from `from_revision`, or from now) to
/// `apply`, one after the other, until the watch ends; `what` names it in the log.
async fn follow<F, Fut>(
    node: &Arc<Node>,
    prefix: &str,
    from_revision: Option<u64>,
    what: &'static str,
    apply: F,
) -> anyhow::Result<tokio::task::JoinHandle<()>>
where
    F: Fn(Arc<Node>, strato_kv::Change) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut changes = node.kv.watch(prefix, from_revision).await?;
    let node = node.clone();
    Ok(tokio::spawn(async move {
        while let Some(change) = changes.next().await {
            match change {
                Ok(change) => apply(node.clone(), change).await,
                Err(e) => {
                    tracing::warn!("lost the watch on {what}: {e}");
                    return;
                }
            }
        }
    }))
}

/// Follows `node/<id>` in the config store and applies every change live, without
/// restarting `stratod`: roles added or removed, and a new availability zone (the DEA
/// starts again to advertise it).
async fn follow_roles(node: Arc<Node>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let prefix = format!("node/{}", node.identity.id);
    follow(
        &node,
        &prefix,
        None,
        "this node's settings",
        |node, change| async move {
            if change.path == zone_key(&node.identity.id)
                && node
                    .supervisor
                    .stop(Role::Dea, Duration::from_secs(30))
                    .await
            {
                tracing::info!("availability zone changed: restarting the DEA");
            }
            if let Err(e) = node.apply_roles().await {
                tracing::warn!("cannot apply this node's roles: {e:#}");
            }
        },
    )
    .await
}

/// Follows the cloud-wide settings in the config store and applies them on this node: a
/// new domain (`kato node rename`), a new token-signing secret. The store's watch misses
/// no change, so a node that was busy or cut off catches up when it reads again.
async fn follow_cluster(
    node: Arc<Node>,
    from_revision: Option<u64>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    follow(&node, "cluster", from_revision, "the cluster's settings", |node, change| async move {
        if change.path == DOMAIN_KEY {
            let Some(domain) = change.value.as_ref().and_then(|v| v.as_str()) else {
                return;
            };
            let valid = domain == "localhost" || strato_core::names::check_domain(domain).is_ok();
            if valid && domain != node.domain() {
                // The name is taken here, in order; the roles restart on whatever it is
                // when they start (app instances keep running, and re-register).
                node.set_domain(domain);
                tokio::spawn(async move {
                    for role in [Role::Controller, Role::Router] {
                        node.restart_role(role).await;
                    }
                    tracing::info!(domain = %node.domain(), "the cloud's domain changed: controller and router restarted");
                });
            }
        } else if change.path == SECRET_GENERATION_KEY && node.restart_role(Role::Controller).await {
            tracing::info!("the token-signing secret changed: controller restarted");
        }
    })
    .await
}

/// 80% of the machine's memory, in MB (the `dea_ng/resources/memory_max_percent` default).
fn dea_memory_mb() -> u64 {
    let total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(4 * 1024 * 1024);
    total_kb / 1024 * 8 / 10
}

fn lock_pid_file(layout: &Layout) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::Write;
    let path = layout.pid_file();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    let mut lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| {
            anyhow::anyhow!(
                "another stratod is already running with STRATO_HOME={} (see `kato status`)",
                layout.root.display()
            )
        })?;
    lock.set_len(0)?;
    writeln!(lock, "{}", std::process::id())?;
    Ok(lock)
}

/// Where this node's cluster settings come from, first found wins: the environment
/// (`STRATO_NATS_URL`, `STRATO_NODE_ADDRESS`); on the core node its own NATS server,
/// started here; on an attached node `cluster.json` (`kato node attach`).
fn join_settings(
    opts: &mut Options,
    layout: &Layout,
    node_id: &str,
) -> anyhow::Result<Option<crate::bus_server::BusServer>> {
    use crate::bus_server::BusServer;
    let dir = layout.bus_server();
    if let Some(settings) = BusServer::settings(&dir)? {
        let address = settings.address;
        let authority = node_authority(layout, node_id)?;
        let server = BusServer::start(&dir, settings, &authority)
            .context("starting the cluster's NATS server")?;
        if opts.nats_url.is_none() {
            opts.nats_url = Some(server.core_url()?);
            opts.nats_ca = Some(server.ca_file());
        }
        opts.node_address.get_or_insert(address);
        return Ok(Some(server));
    }
    if opts.nats_url.is_none() {
        match std::fs::read(layout.cluster_file()) {
            Ok(bytes) => {
                let m: strato_core::home::ClusterMembership = serde_json::from_slice(&bytes)
                    .with_context(|| {
                        format!(
                            "{} is damaged; attach again with `kato node attach`",
                            layout.cluster_file().display()
                        )
                    })?;
                opts.nats_url = Some(m.nats_url);
                opts.node_address.get_or_insert(m.address);
                if opts.nats_ca.is_none() {
                    opts.nats_ca = m.ca_file;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("cannot read cluster.json"),
        }
    }
    Ok(None)
}

/// The certificate authority of node `node_id`, created on first use under its home.
fn node_authority(layout: &Layout, node_id: &str) -> anyhow::Result<strato_tls::Authority> {
    let short: String = node_id.chars().take(8).collect();
    strato_tls::Authority::load_or_create(&layout.tls_ca(), &format!("Strato CA {short}"))
        .context("the node's certificate authority")
}

/// The bus and the config store: NATS and a JetStream bucket in a cluster, in-process and
/// a redb file on a micro cloud.
async fn connect_bus_and_store(
    opts: &Options,
    layout: &Layout,
    is_core: bool,
) -> anyhow::Result<(SharedBus, Arc<dyn ConfigStore>)> {
    let Some(url) = &opts.nats_url else {
        let kv = strato_kv::RedbStore::open(layout.config_store())
            .context("opening the config store")?;
        return Ok((Arc::new(InProcBus::new()), Arc::new(kv)));
    };
    let bus = match &opts.nats_ca {
        Some(ca) => strato_bus::NatsBus::connect_tls(url, ca).await,
        None => strato_bus::NatsBus::connect(url).await,
    };
    let bus = bus.with_context(|| {
        format!(
            "cannot connect to NATS at {}: check STRATO_NATS_URL and that the core node is up",
            strato_core::names::without_password(url)
        )
    })?;
    let kv = strato_kv::JetStreamStore::connect(
        url,
        CONFIG_BUCKET,
        strato_kv::JetStreamOptions {
            ca_file: opts.nats_ca.clone(),
            // One copy per server of a NATS cluster of three, so the config store survives
            // losing any one (two copies would stop it when either server is down).
            replicas: if strato_core::names::nats_servers(url).1.len() >= 3 {
                3
            } else {
                1
            },
            ..Default::default()
        },
    )
    .await
    .with_context(|| {
        format!(
            "opening the cluster's config store (JetStream bucket {CONFIG_BUCKET} at {})",
            strato_core::names::without_password(url)
        )
    })?;
    if is_core {
        carry_over_local_settings(layout, &kv).await?;
    }
    Ok((Arc::new(bus), Arc::new(kv)))
}

/// The core (`kato node setup core`) had its settings in its own config store: they are
/// copied into the cluster's, each only where the cluster has none, and the local file
/// is renamed `.migrated` once all are there (a copy cut short goes on at the next
/// start), so no setting is lost on the way.
async fn carry_over_local_settings(layout: &Layout, kv: &dyn ConfigStore) -> anyhow::Result<()> {
    let local = layout.config_store();
    if !local.exists() {
        return Ok(());
    }
    let leaves = {
        let old =
            strato_kv::RedbStore::open(&local).context("opening this node's own config store")?;
        old.list("").await?
    };
    for (path, v) in &leaves {
        match kv
            .set_if(path, v.value.clone(), strato_kv::Condition::Absent)
            .await
        {
            Ok(_) | Err(strato_kv::KvError::Conflict { .. }) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("copying {path} into the cluster's config store"))
            }
        }
    }
    let kept = local.with_extension("migrated");
    std::fs::rename(&local, &kept)
        .with_context(|| format!("renaming {} to {}", local.display(), kept.display()))?;
    tracing::info!(
        settings = leaves.len(),
        "this node's settings were copied into the cluster's config store (the old file is {})",
        kept.display()
    );
    Ok(())
}

/// Refuses to start a node whose id another live node of the cluster already has (its
/// `STRATO_HOME` was copied): two nodes with one id would fight over one set of roles,
/// one DEA's instances, one set of routes.
async fn refuse_a_taken_id(bus: &SharedBus, id: &str) -> anyhow::Result<()> {
    let found = crate::discovery::discover(bus, Duration::from_millis(700)).await?;
    if let Some(other) = found.iter().find(|c| c["node"] == id) {
        anyhow::bail!(
            "node id {id} is already used by the node at {} (a copied STRATO_HOME?): move node.json away on this node to give it a new id",
            other["host"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// The JetStream key-value bucket holding a cluster's config store.
pub const CONFIG_BUCKET: &str = "strato_config";

/// Opens the controller database (migrating it) and makes the admin user, org and space
/// on first start.
async fn open_controller_db(opts: &Options, layout: &Layout) -> anyhow::Result<strato_db::Db> {
    let db_url = opts
        .database_url
        .clone()
        .unwrap_or_else(|| strato_db::Db::sqlite_url(&layout.controller_db()));
    let db = strato_db::Db::connect(&db_url)
        .await
        .context("opening the controller database")?;
    let boot = strato_controller::bootstrap::ensure(
        &db,
        &opts.domain,
        &layout.admin_password_file(),
        std::env::var("STRATO_ADMIN_PASSWORD").ok(),
    )
    .await?;
    if let Some(pw) = &boot.generated_password {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            println!("admin password (shown once): {pw}");
        }
        println!(
            "admin password saved in {} (mode 0600)",
            layout.admin_password_file().display()
        );
    }
    Ok(db)
}

/// Runs the node until SIGTERM/SIGINT or `kato stop`.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATO_LOG")
        .unwrap_or_else(|_| "info,sqlx=warn,hyper=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();

    let root = opts
        .home
        .clone()
        .unwrap_or_else(strato_core::home::strato_home);
    let layout = Layout::new(root);
    for d in [layout.root.clone(), layout.root.join("run"), layout.logs()] {
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&layout.root, std::fs::Permissions::from_mode(0o711));
        let _ = std::fs::set_permissions(
            layout.root.join("run"),
            std::fs::Permissions::from_mode(0o700),
        );
    }
    // Held until the process exits (the kernel lets go of it then), not until this
    // function returns: tasks still holding the config store and databases finish after
    // that, and `kato stop` waits for the lock to know the files are free.
    std::mem::forget(lock_pid_file(&layout)?);
    let identity = NodeIdentity::load_or_create(&layout)?;
    let mut opts = opts;
    let bus_server = join_settings(&mut opts, &layout, &identity.id)?;
    let managed_db = match crate::bus_server::BusServer::settings(&layout.bus_server())? {
        Some(core) if opts.database_url.is_none() && core.database_url.is_some() => {
            let db = crate::core_db::start(&layout, core.address).await?;
            opts.database_url = core.database_url;
            Some(db)
        }
        _ => None,
    };
    let (bus, kv) = connect_bus_and_store(&opts, &layout, bus_server.is_some()).await?;
    if opts.clustered() {
        refuse_a_taken_id(&bus, &identity.id).await?;
    }
    // The cluster settings are followed from here on: none changed in between is missed.
    let cluster_revision = kv.current_revision().await.ok();
    if let Ok(Some(v)) = kv.get(DOMAIN_KEY).await {
        if let Some(domain) = v.value.as_str().filter(|d| !d.is_empty()) {
            opts.domain = domain.to_string();
        }
    }
    let roles = configured_roles(kv.as_ref(), &identity.id).await?;
    let db = tokio::sync::OnceCell::new();
    // A controller away from the core asks the core for its database once the role runs.
    let ask_the_core = opts.clustered() && opts.database_url.is_none();
    if roles.contains(&Role::Controller) && !ask_the_core {
        // At once, so a first start prints where the admin password is.
        db.set(open_controller_db(&opts, &layout).await?)
            .map_err(|_| anyhow::anyhow!("the controller database was opened twice"))?;
    }
    let driver = choose_driver(&opts, &layout).await;
    let api_listener = TcpListener::bind("127.0.0.1:0").context("binding the API port")?;
    api_listener.set_nonblocking(true)?;
    let node = Arc::new(Node {
        opts: opts.clone(),
        layout: layout.clone(),
        identity,
        bus,
        kv,
        db,
        driver,
        api_listener,
        supervisor: Supervisor::default(),
        bus_server: bus_server.map(|s| Arc::new(std::sync::Mutex::new(s))),
        shutdown: CancellationToken::new(),
        started_at: strato_core::now_rfc3339(),
        domain: std::sync::RwLock::new(opts.domain.clone()),
        managed_db,
        core_database_url: tokio::sync::OnceCell::new(),
    });
    if let Some(address) = node
        .opts
        .cluster_address()
        .filter(|_| node.opts.clustered())
    {
        // So `kato node list` can name this node by its address while it is down.
        let key = format!("node/{}/address", node.identity.id);
        if let Err(e) = node.kv.set(&key, address.to_string().into()).await {
            tracing::warn!("cannot record this node's address in the config store: {e}");
        }
    }
    let ca = node.authority()?;
    tracing::info!(fingerprint = %ca.fingerprint(), "certificate authority at {}", node.layout.tls_ca().display());
    let control = crate::control::serve(node.clone()).await?;
    let discovery = crate::discovery::serve(node.clone(), node.shutdown.clone()).await?;
    let follower = follow_roles(node.clone()).await?;
    let cluster_follower = follow_cluster(node.clone(), cluster_revision).await?;
    let renewals = node.bus_server.clone().map(|server| {
        let node = node.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(6 * 3600));
            loop {
                every.tick().await;
                let renewed = match node.authority() {
                    Ok(authority) => crate::bus_server::renew_certificate(&server, authority).await,
                    Err(e) => Err(e),
                };
                match renewed {
                    Ok(true) => tracing::info!("the cluster's NATS server has a new certificate"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("cannot renew the NATS server's certificate: {e:#}"),
                }
            }
        })
    });
    let joins = match &node.bus_server {
        Some(server) => Some((
            crate::cluster_join::serve(node.clone(), server.clone(), node.shutdown.clone()).await?,
            crate::core_db::serve(node.clone(), node.shutdown.clone()).await?,
        )),
        None => None,
    };
    let roles = node.start_roles().await?;
    tracing::info!(node = %node.identity.id, roles = ?roles.iter().map(|r| r.name()).collect::<Vec<_>>(), driver = node.driver.name(), "stratod running; router on port {}", opts.http_port);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        _ = node.shutdown.cancelled() => tracing::info!("stop requested through the control API"),
    }
    node.supervisor.shut_down(Duration::from_secs(30)).await;
    for task in control {
        task.abort();
    }
    discovery.abort();
    follower.abort();
    cluster_follower.abort();
    if let Some(renewals) = renewals {
        renewals.abort();
    }
    if let Some((joins, database)) = joins {
        joins.abort();
        database.abort();
    }
    let _ = std::fs::remove_file(layout.control_socket());
    if let Some(db) = node.db.get() {
        db.close().await;
    }
    if let Some(server) = &node.managed_db {
        strato_services::ServiceNode::shutdown(server).await;
    }
    tracing::info!("stratod stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_roles_wait_and_a_shared_task_runs_for_any_of_its_roles() {
        use Role::*;
        assert_eq!(
            runnable(&[Base, Controller, HealthManager, Router], &[Primary]),
            vec![Base]
        );
        assert_eq!(runnable(&[Dea, Logs], &[Logs]), vec![Dea]);
        assert_eq!(runnable(&[Controller, Logs], &[Logs]), vec![Controller]);
        assert_eq!(runnable(&[Dea, Router], &[]), vec![Dea, Router]);
    }
}
