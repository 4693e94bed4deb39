//! Where instances run: the controller's view of the DEAs (from `dea.advertise`), the
//! placement rules of REFERENCE §5, and the start/stop/find messages sent to DEAs.
//!
//! The health manager's decisions arrive here too ([`serve_health_manager`]): it asks for
//! the desired state on `cloudcontrollers.hm.desired` and sends start/stop requests on
//! `cloudcontrollers.hm.requests`, which are carried out with the same placement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::seq::SliceRandom;
use strato_bus::SharedBus;
use strato_core::messages::*;
use strato_core::{subjects, ApiError};
use strato_db::{package_state, App};

use crate::Shared;

/// How long the runner trusts what it heard (config keys of `cloud_controller_ng`).
#[derive(Clone, Copy, Debug)]
pub struct RunnerTimings {
    /// A DEA is forgotten when it has not advertised for this long (`dea_expiry`).
    pub dea_expiry: Duration,
    /// A start sent for an index shields it from a second start for this long, unless
    /// the instance is known to have crashed (`start_shield`).
    pub start_shield: Duration,
}

impl Default for RunnerTimings {
    fn default() -> Self {
        RunnerTimings {
            // Two and a half advert intervals (2 s): a dead DEA gets no new instances for
            // long, and one slow advert does not drop a live one.
            dea_expiry: Duration::from_secs(5),
            start_shield: Duration::from_secs(15),
        }
    }
}

/// (app, version, index) of a start sent to a DEA.
type StartKey = (String, String, u32);

#[derive(Clone)]
pub struct Runner {
    bus: SharedBus,
    timings: RunnerTimings,
    deas: Arc<Mutex<HashMap<String, (DeaAdvertise, Instant)>>>,
    pending: Arc<Mutex<HashMap<StartKey, Instant>>>,
    /// (app, version) pairs a batched rolling replacement is starting: the health
    /// manager's starts for missing instances wait for it.
    rolling: Arc<Mutex<std::collections::HashSet<(String, String)>>>,
}

/// Marks a batched roll of one app version while alive.
struct RollingMark {
    set: Arc<Mutex<std::collections::HashSet<(String, String)>>>,
    key: (String, String),
}

impl Drop for RollingMark {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// Picks a DEA for one instance (REFERENCE §5): enough memory and the right stack; then
/// the availability zone with the fewest instances of this app (so losing a zone loses
/// as few as can be), in it the DEA with the fewest, preferring the upper half by free
/// memory, then random.
pub fn place<'a>(
    deas: &'a [DeaAdvertise],
    app: &str,
    mem_mb: i64,
    stack: &str,
) -> Option<&'a DeaAdvertise> {
    let mut fit: Vec<&DeaAdvertise> = deas
        .iter()
        .filter(|d| {
            d.available_memory >= mem_mb
                && (d.stacks.is_empty() || d.stacks.iter().any(|s| s == stack))
        })
        .collect();
    if fit.is_empty() {
        return None;
    }
    let count = |d: &DeaAdvertise| d.app_id_to_count.get(app).copied().unwrap_or(0);
    let mut per_zone: HashMap<&str, u32> = HashMap::new();
    for d in deas {
        *per_zone
            .entry(d.placement_properties.zone.as_str())
            .or_default() += count(d);
    }
    let zone_count = |d: &DeaAdvertise| per_zone[d.placement_properties.zone.as_str()];
    let emptiest = fit.iter().map(|d| zone_count(d)).min().unwrap_or(0);
    fit.retain(|d| zone_count(d) == emptiest);
    let fewest = fit.iter().map(|d| count(d)).min().unwrap_or(0);
    fit.retain(|d| count(d) == fewest);
    fit.sort_by_key(|d| std::cmp::Reverse(d.available_memory));
    let upper = fit.len().div_ceil(2);
    fit.truncate(upper);
    fit.choose(&mut rand::thread_rng()).copied()
}

impl Runner {
    pub fn new(bus: SharedBus, timings: RunnerTimings) -> Self {
        Runner {
            bus,
            timings,
            deas: Arc::default(),
            pending: Arc::default(),
            rolling: Arc::default(),
        }
    }

    fn mark_rolling(&self, app: &str, version: &str) -> RollingMark {
        let key = (app.to_string(), version.to_string());
        self.rolling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        RollingMark {
            set: self.rolling.clone(),
            key,
        }
    }

    /// Whether a batched roll is starting this app version's instances.
    pub fn is_rolling(&self, app: &str, version: &str) -> bool {
        self.rolling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(app.to_string(), version.to_string()))
    }

    /// Tracks DEA adverts and shutdowns.
    pub async fn listen(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        let mut adverts = self.bus.subscribe(subjects::DEA_ADVERTISE).await?;
        let mut gone = self.bus.subscribe(subjects::DEA_SHUTDOWN).await?;
        let deas = self.deas.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    m = adverts.next() => match m {
                        Some(m) => if let Ok(ad) = strato_bus::decode::<DeaAdvertise>(&m) {
                            deas.lock().unwrap_or_else(|p| p.into_inner()).insert(ad.id.clone(), (ad, Instant::now()));
                        },
                        None => break,
                    },
                    m = gone.next() => if let Some(m) = m {
                        if let Ok(v) = strato_bus::decode::<serde_json::Value>(&m) {
                            if let Some(id) = v.get("id").and_then(|i| i.as_str()) {
                                deas.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
                            }
                        }
                    },
                }
            }
        });
        Ok(())
    }

    /// The DEA table with expired adverts dropped.
    fn fresh_deas(&self) -> std::sync::MutexGuard<'_, HashMap<String, (DeaAdvertise, Instant)>> {
        let mut map = self.deas.lock().unwrap_or_else(|p| p.into_inner());
        let expiry = self.timings.dea_expiry;
        map.retain(|_, (_, seen)| seen.elapsed() < expiry);
        map
    }

    /// The DEAs heard from recently.
    pub fn live_deas(&self) -> Vec<DeaAdvertise> {
        self.fresh_deas().values().map(|(a, _)| a.clone()).collect()
    }

    /// Waits up to `wait` for at least one DEA to advertise.
    pub async fn wait_for_dea(&self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if !self.live_deas().is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        !self.live_deas().is_empty()
    }

    /// Starts the given indices of an app. With `force` the start shield is ignored (the
    /// instance is known to be gone). Returns the indices actually started.
    pub async fn start_instances(
        &self,
        template: &StartRequest,
        indices: &[u32],
        force: bool,
    ) -> Result<Vec<u32>, ApiError> {
        let mut started = Vec::new();
        for &index in indices {
            let key = (template.droplet.clone(), template.version.clone(), index);
            {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let shield = self.timings.start_shield;
                pending.retain(|_, t| t.elapsed() < shield);
                if !force && pending.contains_key(&key) {
                    continue;
                }
            }
            let dea_id = {
                let mut map = self.fresh_deas();
                let ads: Vec<DeaAdvertise> = map.values().map(|(a, _)| a.clone()).collect();
                let chosen = place(&ads, &template.droplet, template.limits.mem as i64, "default")
                    .map(|d| d.id.clone())
                    .ok_or_else(|| {
                        ApiError::instances_error(format!(
                            "no DEA can take an instance of {} MB right now ({} DEA(s) known); free memory or add a DEA node",
                            template.limits.mem,
                            ads.len()
                        ))
                    })?;
                // Account for the placement until the DEA's next advert.
                if let Some((ad, _)) = map.get_mut(&chosen) {
                    ad.available_memory -= template.limits.mem as i64;
                    *ad.app_id_to_count
                        .entry(template.droplet.clone())
                        .or_default() += 1;
                }
                chosen
            };
            let mut req = template.clone();
            req.index = index;
            strato_bus::publish_json(self.bus.as_ref(), &subjects::dea_start(&dea_id), &req)
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, Instant::now());
            started.push(index);
        }
        Ok(started)
    }

    /// Forgets start shields of an app (on stop or delete).
    pub fn clear_pending(&self, app: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| k.0 != app);
    }

    pub async fn stop(&self, req: &StopRequest) -> Result<(), ApiError> {
        if req.indices.is_none() && req.instances.is_none() && req.version.is_none() {
            self.clear_pending(&req.droplet);
        }
        strato_bus::publish_json(self.bus.as_ref(), subjects::DEA_STOP, req)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))
    }

    /// Asks every DEA for the instances of an app and gathers the answers.
    pub async fn find(&self, app: &str, include_stats: bool) -> Vec<InstanceInfo> {
        let expected = self.live_deas().len();
        if expected == 0 {
            return Vec::new();
        }
        let inbox = self.bus.new_inbox();
        let Ok(mut sub) = self.bus.subscribe(&inbox).await else {
            return Vec::new();
        };
        let _ = self.bus.flush().await;
        let body = serde_json::to_vec(&FindDroplet {
            droplet: app.to_string(),
            include_stats,
        })
        .unwrap_or_default();
        if self
            .bus
            .publish_with_reply(subjects::DEA_FIND_DROPLET, &inbox, Bytes::from(body))
            .await
            .is_err()
        {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut replies = 0;
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(if include_stats { 1500 } else { 700 });
        while replies < expected {
            match tokio::time::timeout_at(deadline, sub.next()).await {
                Ok(Some(m)) => {
                    replies += 1;
                    if let Ok(list) = strato_bus::decode::<Vec<InstanceInfo>>(&m) {
                        out.extend(list);
                    } else if let Ok(one) = strato_bus::decode::<InstanceInfo>(&m) {
                        out.push(one);
                    }
                }
                _ => break,
            }
        }
        out.sort_by_key(|i| i.index);
        out
    }
}

/// The message that starts one instance of `app` (index filled in per instance).
pub async fn start_request(c: &Shared, app: &App) -> Result<StartRequest, ApiError> {
    let droplet = app
        .droplet_hash
        .clone()
        .ok_or_else(ApiError::staging_in_progress)?;
    let space =
        c.db.space_by_guid(&app.space_guid)
            .await
            .map_err(|e| ApiError::server(e.to_string()))?;
    let uris = crate::api::app_uris(c, &app.guid).await?;
    let bound = crate::services::bound_services(c, &app.guid).await?;
    let services = crate::services::service_environment(&bound);
    // Service variables first, so a user's own DATABASE_URL (an external database) wins.
    let mut env = services.env;
    env.extend(app.env_pairs());
    Ok(StartRequest {
        droplet: app.guid.clone(),
        name: app.name.clone(),
        version: app.version.clone(),
        index: 0,
        droplet_sha256: droplet.clone(),
        droplet_uri: crate::staging::blob_uri(c, strato_blobs::BlobKind::Droplet, &droplet)?,
        uris,
        limits: Limits {
            mem: app.memory as u64,
            disk: app.disk_quota as u64,
            fds: 16384,
        },
        env,
        start_command: app.command.clone().filter(|c| !c.trim().is_empty()),
        health_check: health_check_of(app),
        space_id: app.space_guid.clone(),
        space_name: space.map(|s| s.name).unwrap_or_default(),
        services: services.vcap_services,
        volumes: services.volumes,
    })
}

/// How the DEA decides an instance of `app` is up: its `health_check_type` (`port`,
/// `http` on its endpoint, or `process`) within its timeout.
pub fn health_check_of(app: &App) -> HealthCheck {
    use strato_db::health_check_type as kind;
    HealthCheck {
        timeout: app.health_check_timeout.unwrap_or(60).clamp(1, 180) as u64,
        http_path: (app.health_check_type == kind::HTTP).then(|| {
            app.health_check_http_endpoint
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".to_string())
        }),
        process_only: app.health_check_type == kind::PROCESS,
    }
}

/// Starts the instances of a started, staged app that are not running or starting yet
/// (those already shielded by a recent start are skipped too).
pub async fn start_all(c: &Shared, app: &App) -> Result<(), ApiError> {
    if app.state != "STARTED" || app.package_state != package_state::STAGED {
        return Ok(());
    }
    // A batched rolling replacement is starting this version a few at a time.
    if c.runner.is_rolling(&app.guid, &app.version) {
        return Ok(());
    }
    c.runner.wait_for_dea(Duration::from_secs(10)).await;
    let req = start_request(c, app).await?;
    let live: Vec<u32> = c
        .runner
        .find(&app.guid, false)
        .await
        .into_iter()
        .filter(|i| {
            i.version == app.version
                && matches!(i.state, InstanceState::Running | InstanceState::Starting)
        })
        .map(|i| i.index)
        .collect();
    let indices: Vec<u32> = (0..app.instances.max(0) as u32)
        .filter(|i| !live.contains(i))
        .collect();
    c.runner.start_instances(&req, &indices, false).await?;
    Ok(())
}

/// Answers the health manager: the desired state, and its start/stop requests.
pub async fn serve_health_manager(
    c: Shared,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    // One controller of the cluster answers each: a start asked for once runs once.
    let mut desired = c
        .bus
        .queue_subscribe(subjects::CC_DESIRED, subjects::CC_GROUP)
        .await?;
    let mut requests = c
        .bus
        .queue_subscribe(subjects::CC_HM_REQUESTS, subjects::CC_GROUP)
        .await?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                m = desired.next() => {
                    let Some(m) = m else { break };
                    let apps = c.db.list_apps(&Default::default()).await.unwrap_or_default();
                    let out: Vec<DesiredApp> = apps.into_iter().filter(|a| a.state == "STARTED").map(|a| DesiredApp {
                        droplet: a.guid, version: a.version, instances: a.instances.max(0) as u32, state: a.state, package_state: a.package_state, has_droplet: a.droplet_hash.is_some(),
                    }).collect();
                    let _ = strato_bus::reply_json(c.bus.as_ref(), &m, &out).await;
                }
                m = requests.next() => {
                    let Some(m) = m else { break };
                    let Ok(req) = strato_bus::decode::<HmRequest>(&m) else { continue };
                    let c = c.clone();
                    tokio::spawn(async move { handle_hm_request(&c, req).await });
                }
            }
        }
    });
    Ok(())
}

async fn handle_hm_request(c: &Shared, req: HmRequest) {
    match req.op {
        // Stops need no app record: the app may be gone already.
        HmOp::Stop => {
            let stop = StopRequest {
                droplet: req.droplet.clone(),
                instances: Some(req.instances.clone()),
                ..Default::default()
            };
            match c.runner.stop(&stop).await {
                Ok(()) => {
                    let app = c.db.app_by_guid(&req.droplet).await.ok().flatten();
                    let what = serde_json::json!({"instances": req.instances});
                    hm_event(c, &req, app.as_ref(), what).await;
                }
                Err(e) => {
                    tracing::warn!(app = %req.droplet, error = %e, "cannot stop instances for the health manager")
                }
            }
        }
        HmOp::Start => {
            let Ok(Some(app)) = c.db.app_by_guid(&req.droplet).await else {
                return;
            };
            // The current droplet, also while the next staging waits or runs.
            if app.state != "STARTED" || app.version != req.version || app.droplet_hash.is_none() {
                return;
            }
            // A batched rolling replacement starts this version's instances itself.
            if !req.known_gone() && c.runner.is_rolling(&app.guid, &app.version) {
                return;
            }
            let indices: Vec<u32> = req
                .indices
                .iter()
                .copied()
                .filter(|i| (*i as i64) < app.instances)
                .collect();
            // A crash or a lost DEA is known to have ended the instance: no start shield
            // applies.
            let force = req.known_gone();
            let started = match start_request(c, &app).await {
                Ok(tpl) => c.runner.start_instances(&tpl, &indices, force).await,
                Err(e) => Err(e),
            };
            match started {
                Ok(started) if !started.is_empty() => {
                    tracing::info!(app = %app.name, ?started, reason = %req.reason, "health manager started instances");
                    let what = serde_json::json!({"indices": started});
                    hm_event(c, &req, Some(&app), what).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(app = %app.name, error = %e, "health manager could not start instances")
                }
            }
        }
    }
}

/// Records what the health manager had done to an app as one of the app's events
/// (`strato events APP`): `app.health_manager.start` or `.stop`, with the reason
/// (`crashed`, `lost`, `missing`, `extra`, `not desired`) in its metadata.
async fn hm_event(c: &Shared, req: &HmRequest, app: Option<&App>, mut what: serde_json::Value) {
    let kind = match req.op {
        HmOp::Start => "app.health_manager.start",
        HmOp::Stop => "app.health_manager.stop",
    };
    what["reason"] = req.reason.clone().into();
    let (name, space) = match app {
        Some(app) => (app.name.as_str(), Some(app.space_guid.as_str())),
        None => (req.droplet.as_str(), None),
    };
    let recorded =
        c.db.add_event(
            kind,
            "health_manager",
            "health_manager",
            &req.droplet,
            "app",
            name,
            space,
            &what,
        )
        .await;
    if let Err(e) = recorded {
        tracing::warn!(app = %name, error = %e, "could not record event {kind}");
    }
}

/// How a new version replaces the running one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Swap {
    /// New instances first; old ones stop once new ones run (no downtime). With
    /// `max_in_flight`, at most that many instances are replaced at a time.
    Rolling { max_in_flight: Option<u32> },
    /// The old instances stop first (for apps that must never run twice at once).
    Recreate,
}

impl Default for Swap {
    fn default() -> Swap {
        Swap::Rolling {
            max_in_flight: None,
        }
    }
}

impl std::str::FromStr for Swap {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Swap, ApiError> {
        match s {
            "rolling" => Ok(Swap::default()),
            "recreate" => Ok(Swap::Recreate),
            other => Err(ApiError::invalid_request(format!(
                "strategy must be rolling or recreate, not '{other}'"
            ))),
        }
    }
}

/// Replaces the instances of `old_version` by the app's current version, as `swap` says.
pub async fn swap(c: &Shared, app: &App, old_version: &str, swap: Swap) -> Result<(), ApiError> {
    match swap {
        Swap::Rolling {
            max_in_flight: None,
        } => roll_over(c, app, old_version).await,
        Swap::Rolling {
            max_in_flight: Some(n),
        } => roll_in_batches(c, app, old_version, n.max(1)).await,
        Swap::Recreate => {
            c.runner
                .stop(&StopRequest {
                    droplet: app.guid.clone(),
                    version: Some(old_version.to_string()),
                    ..Default::default()
                })
                .await?;
            start_all(c, app).await
        }
    }
}

/// How often a rolling replacement checks on the new version.
const ROLL_POLL: Duration = Duration::from_millis(250);

/// Replaces the running instances of `old_version` by the app's current version without a
/// gap: the new instances start first (a DEA routes an instance only after its health
/// check), and the old version is stopped once as many new instances run as the app
/// wants. If the new version never gets there within its start timeout, the old one keeps
/// serving next to whatever did start, and the event says so; the health manager stops
/// leftovers of an old version the same way once the new one runs.
pub async fn roll_over(c: &Shared, app: &App, old_version: &str) -> Result<(), ApiError> {
    start_all(c, app).await?;
    let c = c.clone();
    let app = app.clone();
    let old_version = old_version.to_string();
    let deadline = Instant::now()
        + Duration::from_secs(app.health_check_timeout.unwrap_or(60).clamp(1, 180) as u64)
        + Duration::from_secs(15);
    tokio::spawn(async move {
        let wanted = app.instances.max(0) as usize;
        loop {
            let Some(running) = running_indices(&c, &app).await else {
                return;
            };
            let running = running.len();
            if running >= wanted {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(app = %app.name, running, wanted, "the new version did not start in time; the previous one keeps serving");
                if running == 0 {
                    return;
                }
                break;
            }
            tokio::time::sleep(ROLL_POLL).await;
        }
        let stop = StopRequest {
            droplet: app.guid.clone(),
            version: Some(old_version),
            indices: None,
            instances: None,
        };
        if let Err(e) = c.runner.stop(&stop).await {
            tracing::warn!(app = %app.name, error = %e.description, "could not stop the previous version");
        }
    });
    Ok(())
}

/// The indices of `app`'s version that run now, or `None` once a newer change (a new
/// version, a stop, a delete) took the app over: that change decides from then on.
async fn running_indices(c: &Shared, app: &App) -> Option<Vec<u32>> {
    let current = c.db.app_by_guid(&app.guid).await.ok().flatten();
    if current.is_none_or(|a| a.version != app.version || a.state != "STARTED") {
        return None;
    }
    Some(
        c.runner
            .find(&app.guid, false)
            .await
            .iter()
            .filter(|i| i.version == app.version && i.state == InstanceState::Running)
            .map(|i| i.index)
            .collect(),
    )
}

/// A rolling replacement `batch` instances at a time: a batch of new instances starts,
/// and once it runs the old instances of the same indices stop, then the next batch. If a
/// batch does not run within the start timeout, the rest of the old version keeps serving.
async fn roll_in_batches(
    c: &Shared,
    app: &App,
    old_version: &str,
    batch: u32,
) -> Result<(), ApiError> {
    if app.state != "STARTED" || app.package_state != package_state::STAGED {
        return Ok(());
    }
    c.runner.wait_for_dea(Duration::from_secs(10)).await;
    let req = start_request(c, app).await?;
    let c = c.clone();
    let app = app.clone();
    let old_version = old_version.to_string();
    let timeout = Duration::from_secs(app.health_check_timeout.unwrap_or(60).clamp(1, 180) as u64)
        + Duration::from_secs(15);
    let mark = c.runner.mark_rolling(&app.guid, &app.version);
    tokio::spawn(async move {
        let _mark = mark;
        let indices: Vec<u32> = (0..app.instances.max(0) as u32).collect();
        for chunk in indices.chunks(batch as usize) {
            if let Err(e) = c.runner.start_instances(&req, chunk, false).await {
                tracing::warn!(app = %app.name, error = %e.description, "rolling: could not start a batch; the previous version keeps serving");
                return;
            }
            let deadline = Instant::now() + timeout;
            loop {
                let Some(running) = running_indices(&c, &app).await else {
                    return;
                };
                if chunk.iter().all(|i| running.contains(i)) {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(app = %app.name, "rolling: a batch of the new version did not start in time; the previous one keeps serving");
                    return;
                }
                tokio::time::sleep(ROLL_POLL).await;
            }
            let stop = StopRequest {
                droplet: app.guid.clone(),
                version: Some(old_version.clone()),
                indices: Some(chunk.to_vec()),
                instances: None,
            };
            if let Err(e) = c.runner.stop(&stop).await {
                tracing::warn!(app = %app.name, error = %e.description, "could not stop part of the previous version");
            }
        }
        // Instances of the old version beyond the new count.
        let stop = StopRequest {
            droplet: app.guid.clone(),
            version: Some(old_version),
            indices: None,
            instances: None,
        };
        let _ = c.runner.stop(&stop).await;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn dea(id: &str, mem: i64, app_count: u32) -> DeaAdvertise {
        let mut m = BTreeMap::new();
        if app_count > 0 {
            m.insert("app".to_string(), app_count);
        }
        DeaAdvertise {
            id: id.into(),
            stacks: vec!["default".into()],
            available_memory: mem,
            available_disk: 10_000,
            app_id_to_count: m,
            placement_properties: Default::default(),
        }
    }

    #[test]
    fn placement_needs_memory_and_prefers_fewest_instances() {
        let deas = vec![dea("a", 100, 0), dea("b", 4000, 2), dea("c", 3000, 0)];
        assert_eq!(
            place(&deas, "app", 256, "default").unwrap().id,
            "c",
            "a lacks memory, b has more of the app"
        );
        assert!(place(&deas, "app", 5000, "default").is_none());
        assert!(place(&deas, "app", 10, "other-stack").is_none());
    }

    proptest::proptest! {
        /// 1000 instances over any set of DEAs: each goes to a DEA with room, among those
        /// with room to one holding the fewest of the app, and wherever every DEA kept
        /// room the counts end up within one of each other.
        #[test]
        fn placement_stays_balanced_for_1000_instances(
            mems in proptest::collection::vec(64i64 * 20..64 * 2000, 1..16),
        ) {
            let mut deas: Vec<DeaAdvertise> = mems
                .iter()
                .enumerate()
                .map(|(i, m)| dea(&format!("d{i}"), *m, 0))
                .collect();
            let count = |d: &DeaAdvertise| d.app_id_to_count.get("app").copied().unwrap_or(0);
            for _ in 0..1000 {
                let room: Vec<&DeaAdvertise> =
                    deas.iter().filter(|d| d.available_memory >= 64).collect();
                let Some(chosen) = place(&deas, "app", 64, "default") else {
                    proptest::prop_assert!(room.is_empty(), "refused while a DEA had room");
                    break;
                };
                let fewest = room.iter().map(|d| count(d)).min().unwrap_or(0);
                proptest::prop_assert!(chosen.available_memory >= 64);
                proptest::prop_assert_eq!(count(chosen), fewest);
                let id = chosen.id.clone();
                let d = deas.iter_mut().find(|d| d.id == id).unwrap();
                d.available_memory -= 64;
                *d.app_id_to_count.entry("app".into()).or_default() += 1;
            }
            if deas.iter().all(|d| d.available_memory >= 64) {
                let counts: Vec<u32> = deas.iter().map(count).collect();
                let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                proptest::prop_assert!(max - min <= 1, "{:?}", counts);
            }
        }
    }

    #[test]
    fn placement_spreads_over_zones_before_deas() {
        let mut deas = vec![
            dea("a1", 10_000, 0),
            dea("a2", 10_000, 0),
            dea("b1", 10_000, 0),
        ];
        deas[0].placement_properties.zone = "a".into();
        deas[1].placement_properties.zone = "a".into();
        deas[2].placement_properties.zone = "b".into();
        for _ in 0..6 {
            let id = place(&deas, "app", 64, "default").unwrap().id.clone();
            let d = deas.iter_mut().find(|d| d.id == id).unwrap();
            *d.app_id_to_count.entry("app".into()).or_default() += 1;
        }
        let count = |id: &str| deas.iter().find(|d| d.id == id).unwrap().app_id_to_count["app"];
        assert_eq!(count("b1"), 3, "zone b holds half");
        assert_eq!(count("a1") + count("a2"), 3, "zone a the other half");
        assert!(count("a1") >= 1 && count("a2") >= 1);
    }

    #[test]
    fn placement_spreads_1000_instances_evenly() {
        let mut deas: Vec<DeaAdvertise> = (0..10)
            .map(|i| dea(&format!("d{i}"), 1_000_000, 0))
            .collect();
        for _ in 0..1000 {
            let id = place(&deas, "app", 64, "default").unwrap().id.clone();
            let d = deas.iter_mut().find(|d| d.id == id).unwrap();
            d.available_memory -= 64;
            *d.app_id_to_count.entry("app".into()).or_default() += 1;
        }
        for d in &deas {
            assert_eq!(d.app_id_to_count["app"], 100, "{}", d.id);
        }
    }
}
