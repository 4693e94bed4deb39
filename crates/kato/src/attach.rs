//! `kato node attach CORE --token T [-e ROLES]`: joins this node to a cluster before its
//! first start.
//!
//! It connects to the core's NATS server as the restricted `join` user (which may only
//! ask to join and read the answer), presents the token with this node's id, address and
//! roles, and on success writes `cluster.json` (0600) with the node's own credentials;
//! `stratod` joins the cluster with it from then on. On any failure nothing is written.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use strato_bus::Bus;
use strato_core::home::{ClusterMembership, Layout, NodeIdentity};
use strato_core::messages::{JoinReply, JoinRequest, SealedJoinReply};
use strato_core::subjects;

/// The core's NATS port unless CORE names another.
const DEFAULT_PORT: u16 = 4222;

/// `ADDRESS` or `ADDRESS:PORT`.
fn core_endpoint(core: &str) -> anyhow::Result<(IpAddr, u16)> {
    if let Ok(ip) = core.parse::<IpAddr>() {
        return Ok((ip, DEFAULT_PORT));
    }
    let addr: std::net::SocketAddr = core.parse().with_context(|| {
        format!("'{core}' is not an address: give the core's IP address, e.g. 10.0.0.1 or 10.0.0.1:4222")
    })?;
    Ok((addr.ip(), addr.port()))
}

/// The source address of this host's default route.
fn default_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback()).then_some(ip)
}

pub async fn attach(
    home: &Path,
    core: &str,
    token: &str,
    roles: &[String],
    address: Option<IpAddr>,
) -> anyhow::Result<()> {
    let layout = Layout::new(home.to_path_buf());
    if layout.control_socket().exists()
        && std::os::unix::net::UnixStream::connect(layout.control_socket()).is_ok()
    {
        bail!("stratod is running on this node: stop it first (`kato stop`), attach, then `kato start`");
    }
    if layout.cluster_file().exists() {
        bail!(
            "this node already belongs to a cluster ({}): detach it first (`kato node detach`)",
            layout.cluster_file().display()
        );
    }
    let (core_ip, port) = core_endpoint(core)?;
    let (secret, ca_fingerprint) = token.trim().split_once('.').with_context(|| {
        "this token does not name the cluster's CA: copy the whole token `kato node token` printed".to_string()
    })?;
    let address = address
        .or_else(default_address)
        .context("this host has no default route: give its address with --address")?;
    for r in roles {
        r.parse::<strato_core::Role>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    let identity = NodeIdentity::load_or_create(&layout)?;
    // The join user's password is public: the token is the secret.
    let join_url = format!(
        "nats://join:join@{}",
        std::net::SocketAddr::new(core_ip, port)
    );
    let pinned = std::sync::Arc::new(strato_tls::PinnedCa::new(ca_fingerprint));
    let tls = pinned.client_config().context("TLS set-up")?;
    let bus = tokio::time::timeout(
        Duration::from_secs(10),
        strato_bus::NatsBus::connect_with_inbox_prefix(&join_url, subjects::JOIN_INBOX_PREFIX, tls),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the core at {core_ip}:{port} did not answer within 10 s"))?
    .with_context(|| format!("cannot reach the core's NATS server at {core_ip}:{port}; check the address and that `kato node setup core` ran there"))?;
    let ca = pinned
        .ca()
        .context("the core's TLS certificate was not checked")?;
    let handshake = strato_tls::Handshake::new().context("making this node's join key")?;
    let request = JoinRequest {
        token: secret.to_string(),
        node_id: identity.id.clone(),
        address: address.to_string(),
        roles: roles.to_vec(),
        public_key: hex::encode(&handshake.public),
    };
    let reply = bus
        .request(
            subjects::CLUSTER_JOIN,
            serde_json::to_vec(&request)?.into(),
            Duration::from_secs(10),
        )
        .await
        .with_context(|| format!("the core at {core_ip}:{port} did not take the join request"))?;
    let answer = open_answer(handshake, secret, &reply.payload)?;
    let nats_url = match answer {
        JoinReply::Joined { nats_url, .. } => nats_url,
        JoinReply::Refused { reason } => bail!("the core refused this node: {reason}"),
    };
    let ca_file = layout.cluster_ca_file();
    std::fs::write(&ca_file, strato_tls::certificate_pem(ca.as_ref()))
        .with_context(|| format!("cannot write {}", ca_file.display()))?;
    let membership = ClusterMembership {
        node_id: identity.id.clone(),
        nats_url,
        address,
        ca_file: Some(ca_file),
    };
    let path = layout.cluster_file();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&membership)?)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, &path)?;
    println!(
        "node {} joined the cluster of {core_ip}:{port} as {address}; start it with `kato start`",
        identity.id
    );
    Ok(())
}

/// `kato node detach`: this node leaves its cluster (it must be stopped). The core still
/// holds its credentials until `kato node remove` there.
pub fn detach(home: &Path) -> anyhow::Result<()> {
    let layout = Layout::new(home.to_path_buf());
    if std::os::unix::net::UnixStream::connect(layout.control_socket()).is_ok() {
        bail!("stratod is running on this node: stop it first (`kato stop`)");
    }
    match std::fs::remove_file(layout.cluster_file()) {
        Ok(()) => {
            println!("this node left its cluster; on the core, `kato node remove` revokes its credentials");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("this node is not attached to a cluster")
        }
        Err(e) => Err(e).context("cannot remove cluster.json"),
    }
}

/// The core's answer, opened with the token's secret. Only a refusal comes unsealed (the
/// core could not read the request, so it had no secret to seal with).
fn open_answer(
    handshake: strato_tls::Handshake,
    token: &str,
    payload: &[u8],
) -> anyhow::Result<JoinReply> {
    if let Ok(sealed) = serde_json::from_slice::<SealedJoinReply>(payload) {
        let bytes = hex::decode(&sealed.sealed).context("the core's answer is malformed")?;
        let core_key = hex::decode(&sealed.public_key).context("the core's answer is malformed")?;
        let secret = handshake
            .secret(&core_key, token)
            .context("the core's answer carries no usable key")?;
        let plain = strato_tls::open(&secret, &bytes)
            .context("the core's answer was not sealed with this token: is it the whole token `kato node token` printed?")?;
        return serde_json::from_slice(&plain).context("the core's answer is malformed");
    }
    match serde_json::from_slice::<JoinReply>(payload) {
        Ok(refused @ JoinReply::Refused { .. }) => Ok(refused),
        Ok(JoinReply::Joined { .. }) => bail!(
            "the core's answer came unsealed: refusing credentials anyone could have read or sent"
        ),
        Err(e) => Err(e).context("the core's answer is malformed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_is_an_address_with_an_optional_port() {
        assert_eq!(
            core_endpoint("10.0.0.1").unwrap(),
            ("10.0.0.1".parse().unwrap(), 4222)
        );
        assert_eq!(
            core_endpoint("10.0.0.1:5000").unwrap(),
            ("10.0.0.1".parse().unwrap(), 5000)
        );
        assert!(core_endpoint("core.example.com").is_err());
    }
}
