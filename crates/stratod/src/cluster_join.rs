//! Joining the cluster with a token: the core's side of `kato node attach`.
//!
//! `kato node setup core` (and `kato node token`) make join tokens. Only a token's sha256
//! is kept, in the config store at `cluster/join_tokens/<first 16 hex>` with its expiry
//! and the attaches it has left. A joining node sends the token over NATS as the
//! restricted `join` user; the core checks it, spends one use (compare-and-set, so two
//! nodes racing for the last use cannot both win), gives the node NATS credentials of
//! its own and its first roles, and answers with its URL. Anything wrong is refused with
//! the reason and changes nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use strato_core::messages::{JoinReply, JoinRequest, SealedJoinReply};
use strato_core::{subjects, Role};
use strato_kv::{Condition, ConfigStore, KvError};
use tokio_util::sync::CancellationToken;

use crate::bus_server::{self, SharedBusServer};
use crate::node::Node;

/// A join token's lifetime unless told otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn token_key(token: &str) -> (String, String) {
    let sha = hex::encode(Sha256::digest(token.trim().as_bytes()));
    (format!("cluster/join_tokens/{}", &sha[..16]), sha)
}

/// Makes a token good for `uses` attaches within `ttl`; returns it (shown once, only its
/// hash is kept).
pub async fn create_token(
    kv: &dyn ConfigStore,
    uses: u32,
    ttl: Duration,
) -> anyhow::Result<String> {
    use rand::Rng;
    let bytes: [u8; 20] = rand::thread_rng().gen();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let (key, sha) = token_key(&token);
    kv.set(
        &key,
        json!({"sha256": sha, "expires_at": unix_now() + ttl.as_secs(), "uses_left": uses}),
    )
    .await?;
    Ok(token)
}

/// Spends one use of `token`, or says why it cannot be used.
async fn spend(kv: &dyn ConfigStore, token: &str) -> Result<(), String> {
    let refused = || {
        "the join token is wrong, expired or used up: make a new one on the core with `kato node token`".to_string()
    };
    let (key, sha) = token_key(token);
    for _ in 0..5 {
        let Some(current) = kv.get(&key).await.map_err(|e| e.to_string())? else {
            return Err(refused());
        };
        let v = &current.value;
        let uses = v["uses_left"].as_u64().unwrap_or(0);
        if v["sha256"] != sha.as_str()
            || v["expires_at"].as_u64().unwrap_or(0) < unix_now()
            || uses == 0
        {
            return Err(refused());
        }
        // The whole document's revision is its newest leaf's.
        match kv
            .set_if(
                &format!("{key}/uses_left"),
                json!(uses - 1),
                Condition::Revision(current.revision),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(KvError::Conflict { .. }) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the join token is being used by several nodes at once; try again".to_string())
}

fn check(req: &JoinRequest) -> Result<Vec<Role>, String> {
    let id_ok = !req.node_id.is_empty()
        && req.node_id.len() <= 64
        && req
            .node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !id_ok {
        return Err(format!("'{}' is not a node id", req.node_id));
    }
    if req.address.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("'{}' is not an IP address", req.address));
    }
    let names: Vec<&str> = if req.roles.is_empty() {
        vec!["dea"]
    } else {
        req.roles.iter().map(String::as_str).collect()
    };
    names
        .iter()
        .map(|n| n.parse::<Role>().map_err(|e| e.to_string()))
        .collect()
}

/// Answers join requests until `cancel`.
pub async fn serve(
    node: Arc<Node>,
    server: SharedBusServer,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut requests = node.bus.subscribe(subjects::CLUSTER_JOIN).await?;
    node.bus.flush().await?;
    Ok(tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = cancel.cancelled() => return,
                m = requests.next() => match m { Some(m) => m, None => return },
            };
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            // Nothing is spent before the answer can be sealed: a request that cannot be
            // read, or whose key is unusable, is refused in the clear (no secret in it).
            let prepared = strato_bus::decode::<JoinRequest>(&message)
                .map_err(|e| format!("malformed join request: {e}"))
                .and_then(|req| sealing_for(&req).map(|sealing| (req, sealing)));
            let (req, (secret, public_key)) = match prepared {
                Ok(p) => p,
                Err(reason) => {
                    tracing::warn!("refused a node's join: {reason}");
                    let answer = JoinReply::Refused { reason };
                    let _ = strato_bus::publish_json(node.bus.as_ref(), &reply, &answer).await;
                    continue;
                }
            };
            let answer = join(&node, &server, &req).await;
            if let JoinReply::Refused { reason } = &answer {
                tracing::warn!("refused a node's join: {reason}");
            }
            let sealed = serde_json::to_vec(&answer)
                .map_err(|e| e.to_string())
                .and_then(|plain| strato_tls::seal(&secret, &plain).map_err(|e| e.to_string()));
            match sealed {
                Ok(sealed) => {
                    let answer = SealedJoinReply {
                        sealed: hex::encode(sealed),
                        public_key,
                    };
                    let _ = strato_bus::publish_json(node.bus.as_ref(), &reply, &answer).await;
                }
                Err(e) => tracing::warn!("cannot seal a join answer: {e}"),
            }
        }
    }))
}

/// The secret to seal the answer with (an X25519 exchange with the joining node's key,
/// bound to the token it presented) and the core's public key to send along.
fn sealing_for(req: &JoinRequest) -> Result<(String, String), String> {
    let peer = hex::decode(req.public_key.trim()).map_err(|_| {
        "the join request carries no usable public key; use a kato of this version".to_string()
    })?;
    let handshake = strato_tls::Handshake::new().map_err(|e| e.to_string())?;
    let public_key = hex::encode(&handshake.public);
    let secret = handshake
        .secret(&peer, &req.token)
        .map_err(|_| "the join request's public key is not an X25519 key".to_string())?;
    Ok((secret, public_key))
}

async fn join(node: &Node, server: &SharedBusServer, req: &JoinRequest) -> JoinReply {
    let refused = |reason: String| JoinReply::Refused { reason };
    let roles = match check(req) {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    if let Err(e) = spend(node.kv.as_ref(), &req.token).await {
        return refused(e);
    }
    let url = match bus_server::add_node(server, &req.node_id).await {
        Ok(url) => url,
        Err(e) => return refused(format!("{e:#}")),
    };
    let mut doc = serde_json::Map::new();
    for r in &roles {
        doc.insert(r.name().to_string(), Value::Bool(true));
    }
    doc.insert("base".to_string(), Value::Bool(true));
    if let Err(e) = node
        .kv
        .set(&format!("node/{}/roles", req.node_id), Value::Object(doc))
        .await
    {
        let _ = bus_server::remove_node(server, &req.node_id).await;
        return refused(format!("cannot record the node's roles: {e}"));
    }
    tracing::info!(node = %req.node_id, address = %req.address, roles = ?roles.iter().map(|r| r.name()).collect::<Vec<_>>(), "a node joined the cluster");
    JoinReply::Joined {
        node_id: req.node_id.clone(),
        nats_url: url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, address: &str, roles: &[&str]) -> JoinRequest {
        JoinRequest {
            token: "t".into(),
            node_id: id.into(),
            address: address.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            public_key: String::new(),
        }
    }

    #[test]
    fn requests_are_checked_before_anything_is_spent() {
        assert_eq!(
            check(&req("abc-1", "10.0.0.2", &[])).unwrap(),
            vec![Role::Dea]
        );
        assert!(check(&req("a b", "10.0.0.2", &[])).is_err());
        assert!(check(&req("abc", "nowhere", &[])).is_err());
        let e = check(&req("abc", "10.0.0.2", &["teapot"])).unwrap_err();
        assert!(e.contains("teapot"), "{e}");
    }

    #[tokio::test]
    async fn a_token_is_spent_once_per_use_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let kv = strato_kv::RedbStore::open(dir.path().join("kv.redb")).unwrap();
        let token = create_token(&kv, 2, Duration::from_secs(60)).await.unwrap();
        assert!(spend(&kv, "wrong").await.is_err());
        assert!(spend(&kv, &token).await.is_ok());
        assert!(spend(&kv, &token).await.is_ok());
        let used_up = spend(&kv, &token).await.unwrap_err();
        assert!(used_up.contains("used up"), "{used_up}");
        let old = create_token(&kv, 5, Duration::from_secs(0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(spend(&kv, &old).await.is_err(), "expired");
    }
}
