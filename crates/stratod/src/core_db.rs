//! The controller database a core node runs itself, when the operator gives none
//! (`kato node setup core` without `STRATO_DATABASE_URL`): a PostgreSQL cluster from the
//! Debian binaries under `STRATO_HOME/controller-db`, run by the `postgres` system user
//! and listening on the core's cluster address, with one database and login role for the
//! controllers (password auth). It is the same server the `postgresql` data service runs,
//! in a directory of its own, so the platform's and the tenants' data never mix.
//!
//! Controllers on other nodes ask the core for its URL over the bus when they start, so no
//! operator copies a password between machines. Every member may use the bus, so the ask
//! is authenticated with the asking node's own NATS password (an HMAC only that node and
//! the core can make), the core answers only nodes given the controller or health
//! manager role, and the answer is sealed to the asker's ephemeral X25519 key and that
//! password: another node that reads the answer cannot open it.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use strato_core::home::Layout;
use strato_services::postgresql::PostgresNode;
use strato_services::{InstanceId, NodeConfig, Plan, ServiceNode};
use tokio_util::sync::CancellationToken;

use crate::node::Node;
use strato_core::Role;

/// Controllers ask the core for the controller database here.
pub const DATABASE_SUBJECT: &str = "strato.cluster.database";
/// The database's instance id (it names the database and its login role).
const INSTANCE: &str = "controller";

/// A node asks for the controller database.
#[derive(Debug, Serialize, Deserialize)]
pub struct DatabaseAsk {
    pub node_id: String,
    /// The asker's ephemeral X25519 public key (hex).
    pub public_key: String,
    /// HMAC-SHA256 (hex) of [`ask_text`] under the node's NATS password.
    pub mac: String,
}

/// The core's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DatabaseAnswer {
    /// The URL, sealed (`strato_tls::seal`, hex) with the exchange's secret.
    Sealed {
        sealed: String,
        public_key: String,
    },
    Refused {
        reason: String,
    },
}

/// What a [`DatabaseAsk`]'s MAC covers.
pub fn ask_text(node_id: &str, public_key: &str) -> String {
    format!("strato database ask v1\n{node_id}\n{public_key}")
}

fn mac_of(password: &str, text: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(password.as_bytes()).expect("HMAC takes any key");
    mac.update(text.as_bytes());
    mac
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
            let answer = match strato_bus::decode::<DatabaseAsk>(&m) {
                Ok(ask) => answer(&node, &ask).await,
                Err(e) => Err(format!("malformed ask: {e}")),
            };
            let answer = answer.unwrap_or_else(|reason| {
                tracing::warn!("refused a node the controller database: {reason}");
                DatabaseAnswer::Refused { reason }
            });
            let _ = strato_bus::reply_json(node.bus.as_ref(), &m, &answer).await;
        }
    }))
}

async fn answer(node: &Node, ask: &DatabaseAsk) -> Result<DatabaseAnswer, String> {
    let users = crate::bus_server::BusServer::users(&node.layout.bus_server())
        .map_err(|e| format!("{e:#}"))?;
    let password = users
        .passwords
        .get(&crate::bus_server::node_user(&ask.node_id))
        .ok_or_else(|| format!("node {} has not joined this cluster", ask.node_id))?;
    let mac = hex::decode(&ask.mac).map_err(|_| "the ask's MAC is not hex".to_string())?;
    mac_of(password, &ask_text(&ask.node_id, &ask.public_key))
        .verify_slice(&mac)
        .map_err(|_| format!("the ask does not come from node {}", ask.node_id))?;
    let roles = crate::node::stored_roles(node.kv.as_ref(), &ask.node_id)
        .await
        .map_err(|e| e.to_string())?;
    if !roles
        .iter()
        .any(|r| matches!(r, Role::Controller | Role::HealthManager))
    {
        return Err(format!(
            "node {} has neither the controller nor the health manager role",
            ask.node_id
        ));
    }
    let url = node
        .opts
        .database_url
        .clone()
        .filter(|u| shareable(u))
        .ok_or("the core has no controller database other nodes can reach")?;
    let peer = hex::decode(&ask.public_key).map_err(|_| "the ask's key is not hex".to_string())?;
    let handshake = strato_tls::Handshake::new().map_err(|e| e.to_string())?;
    let public_key = hex::encode(&handshake.public);
    let secret = handshake
        .secret(&peer, password)
        .map_err(|_| "the ask's key is not an X25519 key".to_string())?;
    let sealed = strato_tls::seal(&secret, url.as_bytes()).map_err(|e| e.to_string())?;
    Ok(DatabaseAnswer::Sealed {
        sealed: hex::encode(sealed),
        public_key,
    })
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

/// The controller database of the cluster, asked of the core with this node's NATS
/// credentials.
pub async fn ask_core(node: &Node) -> anyhow::Result<String> {
    let give = "give this node STRATO_DATABASE_URL";
    let password = node
        .opts
        .nats_url
        .as_deref()
        .and_then(|url| strato_core::names::nats_servers(url).0)
        .map(|(_, password)| password)
        .with_context(|| format!("this node has no NATS credentials of its own to ask the core for the controller database with; {give}"))?;
    let handshake = strato_tls::Handshake::new()?;
    let public_key = hex::encode(&handshake.public);
    let mac = mac_of(&password, &ask_text(&node.identity.id, &public_key));
    let ask = DatabaseAsk {
        node_id: node.identity.id.clone(),
        public_key,
        mac: hex::encode(mac.finalize().into_bytes()),
    };
    let answer: DatabaseAnswer = strato_bus::request_json(
        node.bus.as_ref(),
        DATABASE_SUBJECT,
        &ask,
        Duration::from_secs(5),
    )
    .await
    .with_context(|| format!("cannot ask the core for the controller database; {give}"))?;
    match answer {
        DatabaseAnswer::Sealed { sealed, public_key } => {
            let core_key = hex::decode(public_key).context("the core's answer is malformed")?;
            let secret = handshake.secret(&core_key, &password)?;
            let sealed = hex::decode(sealed).context("the core's answer is malformed")?;
            let url = strato_tls::open(&secret, &sealed)
                .context("the core's answer was not sealed for this node")?;
            String::from_utf8(url).context("the core's answer is malformed")
        }
        DatabaseAnswer::Refused { reason } => {
            anyhow::bail!("the core did not give the controller database: {reason}; {give}")
        }
    }
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
