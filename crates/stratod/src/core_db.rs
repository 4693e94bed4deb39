//! The controller database a core node runs itself, when the operator gives none
//! (`kato node setup core` without `STRATO_DATABASE_URL`): a PostgreSQL cluster from the
//! Debian binaries under `STRATO_HOME/controller-db`, run by the `postgres` system user
//! and listening on the core's cluster address, with one database and login role for the
//! controllers (password auth). It is the same server the `postgresql` data service runs,
//! in a directory of its own, so the platform's and the tenants' data never mix.
//!
//! Controllers on other nodes ask the core for its URL over the bus (authenticated NATS,
//! TLS) when they start: no operator copies a password between machines.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use strato_core::home::Layout;
use strato_services::postgresql::PostgresNode;
use strato_services::{InstanceId, NodeConfig, Plan, ServiceNode};
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// Controllers ask the core for the controller database here.
pub const DATABASE_SUBJECT: &str = "strato.cluster.database";
/// The database's instance id (it names the database and its login role).
const INSTANCE: &str = "controller";

#[derive(Debug, Serialize, Deserialize)]
struct DatabaseAnswer {
    url: Option<String>,
}

fn config(layout: &Layout, address: IpAddr) -> NodeConfig {
    NodeConfig {
        dir: layout.root.join("controller-db"),
        address,
        port: 0,
        port_range: None,
        capacity: 1,
    }
}

/// Makes the database (the cluster first, with `initdb`) and returns its URL; the server
/// is stopped again (the core's next start runs it).
pub async fn provision(layout: &Layout, address: IpAddr) -> anyhow::Result<String> {
    let server = PostgresNode::open(config(layout, address))
        .await
        .context("starting the controller's PostgreSQL")?;
    let id = InstanceId::new(INSTANCE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let made = server.provision(&id, &Plan::default()).await;
    server.shutdown().await;
    let credentials = made.context("creating the controller database")?;
    Ok(credentials.uri)
}

/// Runs the core's controller database; stopped with [`PostgresNode`]'s shutdown (or
/// killed when dropped).
pub async fn start(layout: &Layout, address: IpAddr) -> anyhow::Result<PostgresNode> {
    PostgresNode::open(config(layout, address))
        .await
        .context("starting the controller's PostgreSQL (STRATO_HOME/controller-db)")
}

/// On the core: answers controllers asking for the database, until `cancel`. A URL on
/// loopback is kept to itself (no other node could reach it).
pub async fn serve(
    node: std::sync::Arc<Node>,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut asks = node.bus.subscribe(DATABASE_SUBJECT).await?;
    Ok(tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                _ = cancel.cancelled() => return,
                m = asks.next() => match m { Some(m) => m, None => return },
            };
            let url = node.opts.database_url.clone().filter(|u| shareable(u));
            let _ = strato_bus::reply_json(node.bus.as_ref(), &m, &DatabaseAnswer { url }).await;
        }
    }))
}

/// True for a PostgreSQL URL other nodes can use: a `postgres://` URL whose host is not
/// loopback (`localhost`, `127.0.0.0/8`, `[::1]`) nor a unix socket.
fn shareable(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    !host.is_empty()
        && !host.eq_ignore_ascii_case("localhost")
        && !host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The controller database of the cluster, asked of the core.
pub async fn ask_core(node: &Node) -> anyhow::Result<String> {
    let answer: DatabaseAnswer = strato_bus::request_json(
        node.bus.as_ref(),
        DATABASE_SUBJECT,
        &serde_json::json!({}),
        Duration::from_secs(5),
    )
    .await
    .context(
        "cannot ask the core for the controller database; give this node STRATO_DATABASE_URL",
    )?;
    answer.url.context("the core has no controller database other nodes can reach; give this node STRATO_DATABASE_URL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_urls_other_nodes_can_use_are_handed_out() {
        assert!(shareable("postgres://u:p@10.0.0.1:5432/strato"));
        assert!(shareable("postgresql://u:p@db.example.com/strato"));
        assert!(shareable("postgres://u:p@[fd00::1]:5432/strato"));
        assert!(!shareable("postgres://u:p@127.0.0.1:5432/strato"));
        assert!(!shareable("postgres://u:p@localhost/strato"));
        assert!(!shareable("postgres://u:p@[::1]:5432/strato"));
        assert!(!shareable("postgres://u:p@/strato?host=/run/postgresql"));
        assert!(!shareable("sqlite:///var/lib/strato/cc.sqlite"));
    }
}
