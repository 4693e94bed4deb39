//! The stager role: takes staging requests off the bus queue, stages them, streams the
//! output and replies with the result.
//!
//! Requests arrive on `vcap.stager.default` in the `stagers` queue group, so each goes to
//! one stager. A stager takes a request only when it has a free slot; the rest stay on the
//! queue for other stagers. Every output line is published as a [`LogLine`] on both
//! `staging.<task_id>.log` (the pushing client's live view) and `apptail.<app_id>` (the
//! app's log), before the reply, so a client has all lines when it sees the result.

use std::sync::Arc;

use strato_bus::{Message, SharedBus};
use strato_container::ContainerDriver;
use strato_core::messages::{LogLine, StagingRequest, StagingResult};
use strato_core::subjects;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::StagerConfig;
use crate::stage::{Stager, StagingLine};

/// Runs the stager role until `shutdown` is cancelled. In-flight stagings are stopped and
/// still answered (as failed) before this returns.
pub async fn run(
    cfg: StagerConfig,
    bus: SharedBus,
    driver: Arc<dyn ContainerDriver>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if !driver.isolated() {
        tracing::warn!(
            driver = driver.name(),
            "staging runs WITHOUT isolation: app code and buildpacks run as plain processes on this host"
        );
    }
    let slots = Arc::new(Semaphore::new(cfg.max_concurrent.max(1)));
    let stager = Arc::new(Stager::new(cfg, driver)?);
    let mut requests = bus
        .queue_subscribe(subjects::STAGER_QUEUE, subjects::STAGER_GROUP)
        .await?;
    let mut tasks = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => permit?,
        };
        let msg = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                msg = requests.next() => break msg,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        };
        let Some(msg) = msg else { break };
        let (stager, bus, cancel) = (
            Arc::clone(&stager),
            Arc::clone(&bus),
            shutdown.child_token(),
        );
        tasks.spawn(async move {
            handle_request(&stager, &bus, msg, cancel).await;
            drop(permit);
        });
    }
    drop(requests);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Stages one request, publishing its output, and replies.
async fn handle_request(stager: &Stager, bus: &SharedBus, msg: Message, cancel: CancellationToken) {
    let req: StagingRequest = match strato_bus::decode(&msg) {
        Ok(req) => req,
        Err(e) => {
            let result = StagingResult::Failed {
                kind: "StagingError".to_string(),
                message: format!("malformed staging request: {e}"),
                exit_status: None,
                log_tail: Vec::new(),
            };
            reply(bus, &msg, &result).await;
            return;
        }
    };
    tracing::info!(app = %req.app_id, task = %req.task_id, "staging");
    let (tx, rx) = mpsc::unbounded_channel();
    let forwarder = tokio::spawn(forward_lines(
        Arc::clone(bus),
        req.app_id.clone(),
        req.task_id.clone(),
        rx,
    ));
    let result = stager.stage(&req, tx, cancel).await;
    let _ = forwarder.await;
    match &result {
        StagingResult::Staged { droplet_sha256, .. } => {
            tracing::info!(app = %req.app_id, droplet = %droplet_sha256, "staged")
        }
        StagingResult::Failed { kind, message, .. } => {
            tracing::info!(app = %req.app_id, %kind, %message, "staging failed")
        }
    }
    reply(bus, &msg, &result).await;
}

async fn reply(bus: &SharedBus, msg: &Message, result: &StagingResult) {
    if let Err(e) = strato_bus::reply_json(bus.as_ref(), msg, result).await {
        tracing::warn!(error = %e, "could not reply to a staging request");
    }
}

/// Publishes each line on the task's staging log and the app's log stream, in order.
async fn forward_lines(
    bus: SharedBus,
    app_id: String,
    task_id: String,
    mut lines: mpsc::UnboundedReceiver<StagingLine>,
) {
    let staging_subject = subjects::staging_log(&task_id);
    let app_subject = subjects::apptail(&app_id);
    while let Some(line) = lines.recv().await {
        let log_line = LogLine {
            app: app_id.clone(),
            source: "staging".to_string(),
            instance_index: None,
            stream: line.stream.to_string(),
            timestamp: strato_core::unix_now(),
            text: line.text,
        };
        for subject in [&staging_subject, &app_subject] {
            if let Err(e) = strato_bus::publish_json(bus.as_ref(), subject, &log_line).await {
                tracing::warn!(%subject, error = %e, "could not publish a staging line");
            }
        }
    }
}
