//! Component discovery (REFERENCE §5): every role a node runs answers
//! `vcap.component.discover` and the node announces its roles on
//! `vcap.component.announce` when it starts, so `kato status --all` and `kato node list`
//! see the whole cluster through the bus, with no list of nodes kept anywhere.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use strato_bus::SharedBus;
use strato_core::{subjects, Role};
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// What one role of this node says about itself: `type`, `index`, `uuid` and `host` as
/// Cloud Foundry's components announce them, plus the node, role and state. A role the
/// node is given but does not run (stopped with `kato stop ROLE`) answers as stopped, so
/// the node can still be found and started again from another.
async fn components(node: &Node) -> Vec<Value> {
    let host = node
        .opts
        .clustered()
        .then(|| node.opts.cluster_address())
        .flatten()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let statuses = node.supervisor.status();
    let mut roles: Vec<Role> = statuses
        .iter()
        .filter_map(|s| s.role.parse::<Role>().ok())
        .collect();
    let configured = crate::node::configured_roles(node.kv.as_ref(), &node.identity.id)
        .await
        .unwrap_or_default();
    for r in configured.into_iter().filter(|r| *r != Role::Base) {
        let r = crate::node::hosting_role(r);
        if !roles.contains(&r) {
            roles.push(r);
        }
    }
    roles
        .into_iter()
        .map(|role| {
            let status = statuses.iter().find(|s| s.role == role.name());
            json!({
                "type": role.component(),
                "index": 0,
                "uuid": format!("{}:{}", node.identity.id, role.name()),
                "host": host,
                "node": node.identity.id,
                "role": role.name(),
                "state": status.map_or("stopped", |s| s.state.as_str()),
                "since": status.map_or(node.started_at.as_str(), |s| s.since.as_str()),
                "restarts": status.map_or(0, |s| s.restarts),
                "version": strato_core::VERSION,
            })
        })
        .collect()
}

/// Announces this node's components now, then answers every discover until `cancel`.
pub async fn serve(
    node: Arc<Node>,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut requests = node.bus.subscribe(subjects::COMPONENT_DISCOVER).await?;
    // Once this returns the server knows the subscription: a node that says it runs
    // answers the very next discover.
    node.bus.flush().await?;
    // The roles start in the background: announce them once they had a moment.
    let announcing = node.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for c in components(&announcing).await {
            let _ =
                strato_bus::publish_json(announcing.bus.as_ref(), subjects::COMPONENT_ANNOUNCE, &c)
                    .await;
        }
    });
    Ok(tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = cancel.cancelled() => return,
                m = requests.next() => match m {
                    Some(m) => m,
                    None => return,
                },
            };
            let Some(reply) = message.reply else { continue };
            for c in components(&node).await {
                let _ = strato_bus::publish_json(node.bus.as_ref(), &reply, &c).await;
            }
        }
    }))
}

/// Asks every component of the cluster to identify itself and collects the answers that
/// arrive within `wait`, sorted by node and role.
pub async fn discover(bus: &SharedBus, wait: Duration) -> anyhow::Result<Vec<Value>> {
    let inbox = bus.new_inbox();
    let mut answers = bus.subscribe(&inbox).await?;
    bus.flush().await?;
    bus.publish_with_reply(subjects::COMPONENT_DISCOVER, &inbox, Default::default())
        .await?;
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, answers.next()).await {
        if let Ok(v) = serde_json::from_slice::<Value>(&message.payload) {
            found.push(v);
        }
    }
    let key = |v: &Value| {
        (
            v["host"].as_str().unwrap_or_default().to_string(),
            v["node"].as_str().unwrap_or_default().to_string(),
            v["role"].as_str().unwrap_or_default().to_string(),
        )
    };
    found.sort_by_key(key);
    found.dedup_by(|a, b| key(a) == key(b));
    Ok(found)
}
