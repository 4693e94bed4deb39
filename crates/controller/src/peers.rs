//! What the controllers of one cluster tell each other over the bus, so that any of them
//! can answer any request: every package and droplet one stores is copied to the others
//! (and fetched from a peer on a miss), a staging log one controller gathers is followed
//! through another, and each registers `api.DOMAIN` with the routers so they spread API
//! requests over all of them. A micro cloud has one controller and none of this runs.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::Method;
use serde::{Deserialize, Serialize};
use strato_blobs::BlobKind;
use strato_core::messages::{RouteRegistration, RouterStart};
use strato_core::subjects;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// A controller stored a blob: `url` fetches it (signed, good for an hour).
pub const BLOB_STORED: &str = "strato.cc.blob.stored";
/// A controller deleted a blob no app uses any more: the others delete their copies.
pub const BLOB_RELEASED: &str = "strato.cc.blob.released";
/// Which controller holds this blob? Those that do answer with a URL.
pub const BLOB_LOCATE: &str = "strato.cc.blob.locate";
/// The lines of a staging task from `from` on; only the controller running it answers.
pub const STAGING_LOG: &str = "strato.cc.staging_log";

/// How long a peer is given to say it holds a blob.
const LOCATE_WAIT: Duration = Duration::from_secs(2);
/// How long the controller running a staging task holds a log request for new lines.
const LOG_POLL: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
struct BlobStored {
    controller: String,
    kind: String,
    sha256: String,
    url: String,
}

/// One blob, by kind and sha256: what `strato.cc.blob.locate` asks for and
/// `strato.cc.blob.released` says is gone.
#[derive(Debug, Serialize, Deserialize)]
struct BlobRef {
    kind: String,
    sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct BlobLocation {
    url: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct StagingLogRequest {
    task: String,
    from: usize,
}

/// Lines of a staging log; `done` once the task is over and these were the last.
#[derive(Debug, Serialize, Deserialize)]
pub struct StagingLogChunk {
    pub lines: Vec<String>,
    pub done: bool,
}

/// Starts answering peers and copying their blobs (a cluster only), and registering this
/// controller's API address with the routers when it has one.
pub async fn listen(c: Shared, shutdown: CancellationToken) -> anyhow::Result<()> {
    if c.blob_signer.is_none() {
        return Ok(());
    }
    let mut stored = c.bus.subscribe(BLOB_STORED).await?;
    let mut released = c.bus.subscribe(BLOB_RELEASED).await?;
    let mut locate = c.bus.subscribe(BLOB_LOCATE).await?;
    let mut logs = c.bus.subscribe(STAGING_LOG).await?;
    let (task, stop) = (c.clone(), shutdown.clone());
    tokio::spawn(async move {
        let c = task;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                m = stored.next() => {
                    let Some(m) = m else { break };
                    let Ok(msg) = strato_bus::decode::<BlobStored>(&m) else { continue };
                    if msg.controller != c.id {
                        let c = c.clone();
                        tokio::spawn(async move { copy_blob(&c, &msg).await });
                    }
                }
                m = released.next() => {
                    let Some(m) = m else { break };
                    let Ok(msg) = strato_bus::decode::<BlobRef>(&m) else { continue };
                    if let Some(kind) = BlobKind::from_name(&msg.kind) {
                        crate::api::release_local_blob(&c, kind, &msg.sha256).await;
                    }
                }
                m = locate.next() => {
                    let Some(m) = m else { break };
                    let Ok(msg) = strato_bus::decode::<BlobRef>(&m) else { continue };
                    if let Some(url) = held_blob_url(&c, &msg) {
                        let _ = strato_bus::reply_json(c.bus.as_ref(), &m, &BlobLocation { url }).await;
                    }
                }
                m = logs.next() => {
                    let Some(m) = m else { break };
                    let Ok(req) = strato_bus::decode::<StagingLogRequest>(&m) else { continue };
                    // Only the controller running the task answers.
                    let Some(log) = c.staging.get(&req.task) else { continue };
                    let c = c.clone();
                    tokio::spawn(async move {
                        let chunk = match tokio::time::timeout(LOG_POLL, log.next_lines(req.from)).await {
                            Ok(Some(lines)) => StagingLogChunk { lines: within_a_message(lines), done: false },
                            Ok(None) => StagingLogChunk { lines: vec![], done: true },
                            Err(_) => StagingLogChunk { lines: vec![], done: false },
                        };
                        let _ = strato_bus::reply_json(c.bus.as_ref(), &m, &chunk).await;
                    });
                }
            }
        }
    });
    tokio::spawn(catch_up(c.clone()));
    if let Some(addr) = c.cfg.api_address {
        register_api(c.clone(), addr, shutdown).await?;
    }
    Ok(())
}

/// Copies from its peers the packages and droplets of every app that this controller
/// missed while it was down, so it can serve them even when those peers go.
async fn catch_up(c: Shared) {
    let apps = match c.db.list_apps(&Default::default()).await {
        Ok(apps) => apps,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list apps to copy their blobs from the other controllers");
            return;
        }
    };
    let mut wanted: Vec<(BlobKind, String)> = Vec::new();
    for a in apps {
        wanted.extend(a.droplet_hash.map(|d| (BlobKind::Droplet, d)));
        wanted.extend(a.package_hash.map(|p| (BlobKind::Package, p)));
    }
    let mut copied = 0;
    for (kind, sha) in wanted {
        if !c.blobs.exists(kind, &sha) && fetch_missing(&c, kind, &sha).await {
            copied += 1;
        }
    }
    if copied > 0 {
        tracing::info!(
            copied,
            "copied the blobs this controller missed from the other controllers"
        );
    }
}

/// A signed URL for a blob this controller holds.
fn held_blob_url(c: &Shared, msg: &BlobRef) -> Option<String> {
    let kind = BlobKind::from_name(&msg.kind)?;
    let signer = c.blob_signer.as_ref()?;
    c.blobs
        .exists(kind, &msg.sha256)
        .then(|| signer.fresh_url(&Method::GET, kind, &msg.sha256))
}

/// The most log text one relayed answer carries: well under NATS's 1 MiB message limit;
/// the rest follows in the next answer.
const CHUNK_BYTES: usize = 256 * 1024;

/// The first lines of `lines` that fit one answer (at least one, cut to fit if alone).
fn within_a_message(lines: Vec<String>) -> Vec<String> {
    let mut size = 0;
    let mut out = Vec::new();
    for mut line in lines {
        if !out.is_empty() && size + line.len() > CHUNK_BYTES {
            break;
        }
        if line.len() > CHUNK_BYTES {
            let mut cut = CHUNK_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        size += line.len() + 1;
        out.push(line);
    }
    out
}

/// Tells the other controllers this one stored a blob, so they copy it.
pub async fn blob_stored(c: &Shared, kind: BlobKind, sha: &str) {
    let Some(signer) = &c.blob_signer else { return };
    let msg = BlobStored {
        controller: c.id.clone(),
        kind: kind.name().to_string(),
        sha256: sha.to_string(),
        url: signer.fresh_url(&Method::GET, kind, sha),
    };
    if let Err(e) = strato_bus::publish_json(c.bus.as_ref(), BLOB_STORED, &msg).await {
        tracing::warn!(error = %e, "cannot tell the other controllers about a new blob; they fetch it when asked");
    }
}

/// Tells the other controllers a blob was deleted here (no app uses it any more).
pub async fn blob_released(c: &Shared, kind: BlobKind, sha: &str) {
    if c.blob_signer.is_none() {
        return;
    }
    let msg = BlobRef {
        kind: kind.name().to_string(),
        sha256: sha.to_string(),
    };
    let _ = strato_bus::publish_json(c.bus.as_ref(), BLOB_RELEASED, &msg).await;
}

/// Only blob URLs of a controller are fetched from what the bus says (never a file).
fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

async fn copy_blob(c: &Shared, msg: &BlobStored) {
    let Some(kind) = BlobKind::from_name(&msg.kind) else {
        return;
    };
    if !is_http(&msg.url) {
        return;
    }
    match strato_blobs::remote::fetch(&c.blobs, kind, &msg.sha256, &msg.url).await {
        Ok(_) => {
            tracing::debug!(kind = %msg.kind, sha256 = %msg.sha256, "copied a blob from another controller")
        }
        Err(e) => {
            tracing::warn!(kind = %msg.kind, sha256 = %msg.sha256, error = %e, "cannot copy a blob from another controller; it is fetched when asked for")
        }
    }
}

/// Fetches a blob this controller lacks from a peer that holds it; true when it is here
/// now. A micro cloud, or a blob no controller holds, gives false.
pub async fn fetch_missing(c: &Shared, kind: BlobKind, sha: &str) -> bool {
    if c.blob_signer.is_none() {
        return false;
    }
    let ask = BlobRef {
        kind: kind.name().to_string(),
        sha256: sha.to_string(),
    };
    let location: BlobLocation = match strato_bus::request_json::<_, BlobLocation>(
        c.bus.as_ref(),
        BLOB_LOCATE,
        &ask,
        LOCATE_WAIT,
    )
    .await
    {
        Ok(l) if is_http(&l.url) => l,
        _ => return false,
    };
    match strato_blobs::remote::fetch(&c.blobs, kind, sha, &location.url).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(kind = kind.name(), sha256 = sha, error = %e, "cannot fetch a blob from another controller");
            false
        }
    }
}

/// Asks the controller that runs staging task `task` for its lines from `from`; `None`
/// when no controller knows the task.
pub async fn staging_lines(c: &Shared, task: &str, from: usize) -> Option<StagingLogChunk> {
    let req = StagingLogRequest {
        task: task.to_string(),
        from,
    };
    strato_bus::request_json(
        c.bus.as_ref(),
        STAGING_LOG,
        &req,
        LOG_POLL + Duration::from_secs(2),
    )
    .await
    .ok()
}

/// Registers `api.DOMAIN` at `addr` with every router, again every register interval and
/// whenever a router starts; unregisters it when the controller stops.
async fn register_api(
    c: Shared,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registration = RouteRegistration {
        dea: String::new(),
        app: String::new(),
        uris: vec![format!("api.{}", c.cfg.domain)],
        host: addr.ip().to_string(),
        port: addr.port(),
        tags: [("component".to_string(), "CloudController".to_string())].into(),
        private_instance_id: c.id.clone(),
    };
    let mut routers = c.bus.subscribe(subjects::ROUTER_START).await?;
    tokio::spawn(async move {
        let mut every = tokio::time::interval(strato_core::timings::ROUTE_REGISTER_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {}
                m = routers.next() => {
                    let Some(m) = m else { break };
                    if strato_bus::decode::<RouterStart>(&m).is_err() { continue }
                }
            }
            let _ =
                strato_bus::publish_json(c.bus.as_ref(), subjects::ROUTER_REGISTER, &registration)
                    .await;
        }
        let _ =
            strato_bus::publish_json(c.bus.as_ref(), subjects::ROUTER_UNREGISTER, &registration)
                .await;
        let _ = c.bus.flush().await;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relayed_log_answer_fits_a_nats_message() {
        let lines: Vec<String> = (0..1000).map(|i| format!("{i:01000}")).collect();
        let first = within_a_message(lines.clone());
        assert!(first.len() < lines.len() && !first.is_empty());
        assert!(first.iter().map(|l| l.len() + 1).sum::<usize>() <= CHUNK_BYTES + 1001);
        assert_eq!(first[0], lines[0]);
        let huge = within_a_message(vec!["é".repeat(CHUNK_BYTES), "next".into()]);
        assert_eq!(huge.len(), 1);
        assert!(huge[0].len() <= CHUNK_BYTES);
        assert!(!is_http("file:///etc/shadow") && is_http("http://10.0.0.1:1/v2/blobs"));
    }
}
