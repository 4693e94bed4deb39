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
/// Cloud Foundry's components announce them, plus the node, role and state.
fn components(node: &Node) -> Vec<Value> {
    let host = node
        .opts
        .clustered()
        .then(|| node.opts.cluster_address())
        .flatten()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let statuses = node.supervisor.status();
    let mut out = Vec::new();
    for status in statuses {
        let Ok(role) = status.role.parse::<Role>() else {
            continue;
        };
        out.push(json!({
            "type": role.component(),
            "index": 0,
            "uuid": format!("{}:{}", node.identity.id, role.name()),
            "host": host,
            "node": node.identity.id,
            "role": role.name(),
            "state": status.state,
            "since": status.since,
            "restarts": status.restarts,
            "version": strato_core::VERSION,
        }));
    }
    out
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
        for c in components(&announcing) {
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
            for c in components(&node) {
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
