//! Staging from the controller's side: hand the package to a stager over the bus, stream
//! its output to whoever follows the task's log URL, and record the droplet (or the
//! failure) on the app. A failed staging never touches instances already running.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strato_blobs::BlobKind;
use strato_bus::BusError;
use strato_core::messages::{LogLine, StagingRequest, StagingResult};
use strato_core::subjects;
use strato_db::package_state;
use tokio::sync::Notify;

use crate::Shared;

/// The output of one staging task, kept whole so a client that connects late sees it all.
#[derive(Default)]
pub struct TaskLog {
    state: Mutex<(Vec<String>, bool)>,
    changed: Notify,
}

impl TaskLog {
    pub fn push(&self, line: String) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .push(line);
        self.changed.notify_waiters();
    }

    pub fn finish(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.changed.notify_waiters();
    }

    /// Lines from `from` on; `None` once the task is over and everything was read.
    pub async fn next_lines(&self, from: usize) -> Option<Vec<String>> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if from < st.0.len() {
                    return Some(st.0[from..].to_vec());
                }
                if st.1 {
                    return None;
                }
            }
            notified.await;
        }
    }
}

/// Staging logs by task id.
#[derive(Default)]
pub struct StagingLogs {
    tasks: Mutex<HashMap<String, Arc<TaskLog>>>,
}

impl StagingLogs {
    pub fn create(&self, task: &str) -> Arc<TaskLog> {
        let log = Arc::new(TaskLog::default());
        let mut map = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 200 {
            // Keep memory bounded: forget finished tasks first.
            map.retain(|_, l| !l.state.lock().map(|s| s.1).unwrap_or(true));
        }
        map.insert(task.to_string(), log.clone());
        log
    }

    pub fn get(&self, task: &str) -> Option<Arc<TaskLog>> {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(task)
            .cloned()
    }
}

/// Begins staging the app's current package for `actor` (who the release will name);
/// returns the task id at once.
pub async fn begin(
    c: &Shared,
    app_guid: &str,
    actor: &crate::auth::CurrentUser,
    swap: crate::runner::Swap,
) -> Result<String, strato_core::ApiError> {
    let mut app =
        c.db.app_by_guid(app_guid)
            .await
            .map_err(|e| strato_core::ApiError::server(e.to_string()))?
            .ok_or_else(|| strato_core::ApiError::not_found("app", app_guid))?;
    let package = app.package_hash.clone().ok_or_else(|| {
        strato_core::ApiError::app_invalid("no bits uploaded yet; push the app's files first")
    })?;
    let task = strato_core::new_guid();
    app.staging_task_id = Some(task.clone());
    app.staging_error = None;
    if app.droplet_hash.is_none() {
        app.package_state = package_state::PENDING.to_string();
    }
    let app =
        c.db.update_app(&app)
            .await
            .map_err(|e| strato_core::ApiError::server(e.to_string()))?;
    let bound = crate::services::bound_services(c, &app.guid).await?;
    let cache_volume = crate::services::staging_cache(&bound, &app.name);
    let services = crate::services::service_environment(&bound);
    let mut environment = services.env;
    environment.push(format!("VCAP_SERVICES={}", services.vcap_services));
    environment.extend(app.env_pairs());
    let log = c.staging.create(&task);
    let req = StagingRequest {
        app_id: app.guid.clone(),
        app_name: app.name.clone(),
        task_id: task.clone(),
        package_sha256: package.clone(),
        package_uri: blob_uri(c, BlobKind::Package, &package)?,
        buildpack: app.buildpack.clone().filter(|b| !b.is_empty()),
        environment,
        limits: strato_core::messages::Limits {
            mem: app.memory.max(1024) as u64,
            disk: app.disk_quota as u64,
            fds: 16384,
        },
        timeout_secs: c.cfg.staging_timeout.as_secs(),
        volumes: services.volumes,
        cache_volume,
        droplet_upload_uri: c
            .blob_signer
            .as_ref()
            .map(|s| s.droplet_upload_template(&task)),
    };
    // Subscribe to the output before asking, so no line is lost.
    let mut sub = c
        .bus
        .subscribe(&subjects::staging_log(&task))
        .await
        .map_err(|e| strato_core::ApiError::unavailable(e.to_string()))?;
    let _ = c.bus.flush().await;
    let forward_log = log.clone();
    let forward = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(line) = strato_bus::decode::<LogLine>(&m) {
                forward_log.push(line.text);
            }
        }
    });
    let c2 = c.clone();
    let task2 = task.clone();
    let actor = crate::releases::Actor::of(actor);
    tokio::spawn(async move {
        let timeout = c2.cfg.staging_timeout + Duration::from_secs(30);
        let outcome = strato_bus::request_json::<_, StagingResult>(
            c2.bus.as_ref(),
            subjects::STAGER_QUEUE,
            &req,
            timeout,
        )
        .await;
        // Let the last published lines arrive before closing the log.
        tokio::time::sleep(Duration::from_millis(100)).await;
        forward.abort();
        let result = match outcome {
            Ok(r) => r,
            Err(BusError::NoResponders(_)) => StagingResult::Failed {
                kind: "StagingError".into(),
                message: "no stager is running; enable one with `kato role add stager`".into(),
                exit_status: None,
                log_tail: vec![],
            },
            Err(e) => StagingResult::Failed {
                kind: "StagingError".into(),
                message: e.to_string(),
                exit_status: None,
                log_tail: vec![],
            },
        };
        finish(&c2, &req.app_id, &task2, result, &log, &actor, swap).await;
        log.finish();
    });
    Ok(task)
}

/// Where a stager or DEA reads a blob: a signed URL of this controller in a cluster, the
/// shared file on a micro cloud.
pub fn blob_uri(c: &Shared, kind: BlobKind, sha: &str) -> Result<String, strato_core::ApiError> {
    if let Some(signer) = &c.blob_signer {
        return Ok(signer.fresh_url(&axum::http::Method::GET, kind, sha));
    }
    let path = c
        .blobs
        .path_of(kind, sha)
        .map_err(|e| strato_core::ApiError::server(e.to_string()))?;
    Ok(format!("file://{}", path.display()))
}

async fn finish(
    c: &Shared,
    app_guid: &str,
    task: &str,
    result: StagingResult,
    log: &TaskLog,
    actor: &crate::releases::Actor,
    swap: crate::runner::Swap,
) {
    let Ok(Some(mut app)) = c.db.app_by_guid(app_guid).await else {
        return;
    };
    if app.staging_task_id.as_deref() != Some(task) {
        log.push("-----> a newer staging replaced this one".into());
        return;
    }
    match result {
        StagingResult::Staged {
            droplet_sha256,
            detected_buildpack,
            start_command,
        } => {
            let old_version = app.version.clone();
            let old_droplet = app.droplet_hash.replace(droplet_sha256.clone());
            app.detected_buildpack = Some(detected_buildpack);
            app.detected_start_command = Some(start_command);
            app.package_state = package_state::STAGED.into();
            app.staging_error = None;
            app.version = strato_core::new_guid();
            let app = match c.db.update_app(&app).await {
                Ok(a) => a,
                Err(e) => {
                    log.push(format!("-----> could not record the droplet: {e}"));
                    return;
                }
            };
            event(c, &app, "audit.app.staged").await;
            match crate::releases::record(c, &app, "staged", actor).await {
                Ok(r) => log.push(format!("-----> release v{} of {}", r.number, app.name)),
                Err(e) => log.push(format!("-----> could not record the release: {e}")),
            }
            if app.state == "STARTED" {
                // The previous droplet keeps serving until the new one runs.
                if let Err(e) = crate::runner::swap(c, &app, &old_version, swap).await {
                    log.push(format!(
                        "-----> could not start instances: {}",
                        e.description
                    ));
                }
            }
            if let Some(old) = old_droplet.filter(|o| *o != droplet_sha256) {
                crate::api::release_blob(c, BlobKind::Droplet, &old).await;
            }
        }
        StagingResult::Failed {
            kind,
            message,
            exit_status,
            ..
        } => {
            // The log tail already streamed to the client line by line; clients that did
            // not follow it still learn how it ended from the app's failure description.
            let described = match exit_status {
                Some(s) => format!("{message} (exit status {s})"),
                None => message,
            };
            log.push(format!("-----> staging failed: {kind}: {described}"));
            if app.droplet_hash.is_some() {
                log.push("-----> the app keeps running its previous droplet".into());
                app.package_state = package_state::STAGED.into();
            } else {
                app.package_state = package_state::FAILED.into();
            }
            app.set_staging_failure(&kind, &described);
            let _ = c.db.update_app(&app).await;
        }
    }
}

async fn event(c: &Shared, app: &strato_db::App, kind: &str) {
    let _ =
        c.db.add_event(
            kind,
            "system",
            "system",
            &app.guid,
            "app",
            &app.name,
            Some(&app.space_guid),
            &serde_json::json!({}),
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_late_reader_sees_every_line_then_the_end() {
        let log = Arc::new(TaskLog::default());
        log.push("one".into());
        let reader = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(lines) = log.next_lines(got.len()).await {
                    got.extend(lines);
                }
                got
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        log.push("two".into());
        log.finish();
        assert_eq!(reader.await.unwrap(), vec!["one", "two"]);
    }
}
