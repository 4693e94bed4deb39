//! A service role as `stratod` runs it: the type's node (its real servers), the gateway
//! serving the broker API on a port of its own, announcements of that gateway on the bus
//! so the controller finds it, and for the databases the quota enforcer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strato_bus::SharedBus;
use strato_core::messages::BrokerAnnounce;
use strato_core::subjects;
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use crate::{NodeConfig, Plan, ServiceKind, ServiceNode};

/// How often a gateway announces itself (the controller also asks at its own start).
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(10);

/// Everything one service role needs, read by `stratod` from its options and the config
/// store (`<type>_node/capacity`, `<type>_node/max_db_size`, `<type>_node/address`).
#[derive(Clone, Debug)]
pub struct RoleConfig {
    pub kind: ServiceKind,
    pub node: NodeConfig,
    /// The plans on offer; the first is the default.
    pub plans: Vec<Plan>,
    /// Where the gateway listens (port 0: any free port).
    pub gateway_addr: SocketAddr,
    /// The uid and gid app instances run as (owners of filesystem services).
    pub app_uid: u32,
    pub app_gid: u32,
    /// How often database sizes are checked against their plans.
    pub quota_interval: Duration,
}

/// Opens the node of `cfg.kind`: prepares its data, starts its servers.
pub async fn open_node(cfg: &RoleConfig) -> Result<Arc<dyn ServiceNode>, crate::ServiceError> {
    let node = cfg.node.clone();
    Ok(match cfg.kind {
        ServiceKind::Postgresql => Arc::new(crate::postgresql::PostgresNode::open(node).await?),
        ServiceKind::Mysql => Arc::new(crate::mysql::MysqlNode::open(node).await?),
        ServiceKind::Redis => Arc::new(crate::redis::RedisNode::open(node).await?),
        ServiceKind::Filesystem => {
            Arc::new(crate::filesystem::FilesystemNode::open(node, cfg.app_uid, cfg.app_gid).await?)
        }
    })
}

/// Runs the role until `cancel`; the servers are shut down cleanly at the end.
pub async fn run(cfg: RoleConfig, bus: SharedBus, cancel: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.node.dir)?;
    let node = open_node(&cfg).await?;
    let result = serve(&cfg, node.clone(), bus, cancel).await;
    node.shutdown().await;
    result
}

async fn serve(
    cfg: &RoleConfig,
    node: Arc<dyn ServiceNode>,
    bus: SharedBus,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.gateway_addr).await?;
    let local = listener.local_addr()?;
    // The gateway's password changes with every start; the controller learns it from
    // the next announcement.
    let announce = BrokerAnnounce {
        label: cfg.kind.label().to_string(),
        url: format!("http://{local}"),
        username: "strato".to_string(),
        password: crate::random_secret(32),
    };
    let gateway = Gateway::new(
        node.clone(),
        cfg.plans.clone(),
        &announce.username,
        &announce.password,
    );
    let server = tokio::spawn(crate::gateway::serve(gateway, listener, cancel.clone()));
    let mut discover = bus.subscribe(subjects::SERVICE_DISCOVER).await?;
    let mut announce_tick = tokio::time::interval(ANNOUNCE_INTERVAL);
    let mut quota_tick = tokio::time::interval(cfg.quota_interval);
    tracing::info!(kind = %cfg.kind, gateway = %local, "service role ready");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = announce_tick.tick() => publish(&bus, &announce).await,
            Some(_) = discover.next() => publish(&bus, &announce).await,
            _ = quota_tick.tick() => enforce(&node).await,
        }
    }
    let _ = server.await;
    Ok(())
}

async fn publish(bus: &SharedBus, announce: &BrokerAnnounce) {
    if let Err(e) =
        strato_bus::publish_json(bus.as_ref(), subjects::SERVICE_ANNOUNCE, announce).await
    {
        tracing::warn!(error = %e, "could not announce the service gateway");
    }
}

async fn enforce(node: &Arc<dyn ServiceNode>) {
    match node.enforce_quotas().await {
        Ok(changes) => {
            for c in changes {
                tracing::info!(
                    instance = %c.id,
                    used = c.used_bytes,
                    limit = c.limit_bytes,
                    writable = c.writable,
                    "service instance quota state changed"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "quota check failed"),
    }
}
