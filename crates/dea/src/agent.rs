//! The DEA's event loop and instance lifecycle: start (droplet → container → health check →
//! routes), crash, stop, shutdown, and the periodic advertise/heartbeat/register messages.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use strato_bus::{decode, publish_json, reply_json, Message, SharedBus};
use strato_container::{ContainerDriver, ContainerSpec, Mount, APP_HOME};
use strato_core::messages::{
    DeaAdvertise, DeaHeartbeat, ExecReply, ExecRequest, ExitReason, FindDroplet, InstanceInfo,
    InstanceState, LogLine, PlacementProperties, SessionReply, SessionRequest, StartRequest,
    StopRequest,
};
use strato_core::{subjects, timings};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::droplet;
use crate::env::instance_env;
use crate::files::{read_beneath, FilesReply, FilesRequest};
use crate::instance::{now, Instance};
use crate::ports::PortAllocator;
use crate::session::Sessions;
use crate::{DeaConfig, CONTAINER_PREFIX};

/// How often a starting instance's health is probed.
const HEALTH_POLL: Duration = Duration::from_millis(100);
/// After SIGKILL, how long to wait for the container to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_FDS: u64 = 16384;
const PIDS_LIMIT: i64 = 4096;

pub struct Dea {
    cfg: DeaConfig,
    bus: SharedBus,
    driver: Arc<dyn ContainerDriver>,
    instances: Mutex<HashMap<String, Instance>>,
    ports: Mutex<PortAllocator>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// The session endpoint, started with the first session.
    sessions: tokio::sync::OnceCell<Arc<Sessions>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dea {
    pub fn new(
        cfg: DeaConfig,
        bus: SharedBus,
        driver: Arc<dyn ContainerDriver>,
        shutdown: CancellationToken,
    ) -> Arc<Dea> {
        Arc::new(Dea {
            ports: Mutex::new(PortAllocator::new(cfg.port_range)),
            cfg,
            bus,
            driver,
            instances: Mutex::new(HashMap::new()),
            shutdown,
            tasks: TaskTracker::new(),
            sessions: tokio::sync::OnceCell::new(),
        })
    }

    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        self.prepare_dirs()?;
        self.clean_stale().await;
        let id = self.cfg.id.clone();
        let mut start = self.bus.subscribe(&subjects::dea_start(&id)).await?;
        let mut stop = self.bus.subscribe(subjects::DEA_STOP).await?;
        let mut find = self.bus.subscribe(subjects::DEA_FIND_DROPLET).await?;
        let mut exec = self.bus.subscribe(&subjects::dea_exec(&id)).await?;
        let mut files = self.bus.subscribe(&subjects::dea_files(&id)).await?;
        let mut session = self.bus.subscribe(&subjects::dea_session(&id)).await?;
        let mut router_start = self.bus.subscribe(subjects::ROUTER_START).await?;
        let mut update = self.bus.subscribe(subjects::DEA_UPDATE).await?;
        let mut advertise = tokio::time::interval(self.cfg.advertise_interval);
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat_interval);
        let mut register = tokio::time::interval(self.cfg.register_interval);
        info!(dea = %id, driver = self.driver.name(), isolated = self.driver.isolated(), "DEA running");
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                Some(msg) = start.next() => self.spawn_handler(msg, Dea::handle_start),
                Some(msg) = stop.next() => self.spawn_handler(msg, Dea::handle_stop),
                Some(msg) = find.next() => self.spawn_handler(msg, Dea::handle_find),
                Some(msg) = exec.next() => self.spawn_handler(msg, Dea::handle_exec),
                Some(msg) = files.next() => self.spawn_handler(msg, Dea::handle_files),
                Some(msg) = session.next() => self.spawn_handler(msg, Dea::handle_session),
                Some(_) = router_start.next() => self.register_all().await,
                Some(msg) = update.next() => self.spawn_handler(msg, Dea::handle_update),
                _ = advertise.tick() => self.advertise().await,
                _ = heartbeat.tick() => self.heartbeat().await,
                _ = register.tick() => self.register_all().await,
                else => break,
            }
        }
        self.stop_everything().await;
        Ok(())
    }

    fn spawn_handler<F, Fut>(self: &Arc<Self>, msg: Message, handler: F)
    where
        F: FnOnce(Arc<Dea>, Message) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(handler(self.clone(), msg));
    }

    fn prepare_dirs(&self) -> anyhow::Result<()> {
        for dir in [&self.cfg.containers_dir, &self.cfg.droplets_cache] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("create the DEA dir {}", dir.display()))?;
        }
        crate::tools::install(&self.tools_dir()).with_context(|| {
            format!(
                "install the instance tools in {}",
                self.tools_dir().display()
            )
        })?;
        Ok(())
    }

    /// The host dir of the tools mounted into every instance (`dbexport`, `dbshell`).
    fn tools_dir(&self) -> std::path::PathBuf {
        self.cfg.containers_dir.with_file_name("tools")
    }

    /// Removes containers and instance dirs a previous run left behind.
    async fn clean_stale(&self) {
        match self.driver.list().await {
            Ok(ids) => {
                for id in ids.iter().filter(|id| id.starts_with(CONTAINER_PREFIX)) {
                    info!(container = %id, "removing a container left by a previous run");
                    if let Err(e) = self.driver.delete(id).await {
                        warn!(container = %id, "cannot remove stale container: {e}");
                    }
                }
            }
            Err(e) => warn!("cannot list containers: {e}"),
        }
        if let Ok(entries) = std::fs::read_dir(&self.cfg.containers_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    remove_instance_dir(&path);
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }

    // ---- start ----------------------------------------------------------------------

    async fn handle_start(self: Arc<Self>, msg: Message) {
        let req: StartRequest = match decode(&msg) {
            Ok(req) => req,
            Err(e) => return warn!("ignoring a malformed start request: {e}"),
        };
        let Some(port) = lock(&self.ports).allocate() else {
            warn!(app = %req.droplet, "no free port in {:?}", self.cfg.port_range);
            self.app_log(
                &req.droplet,
                Some(req.index),
                "no free port on this DEA; instance not started",
            )
            .await;
            return;
        };
        let instance_id = uuid::Uuid::new_v4().simple().to_string();
        let (exit_tx, exit_rx) = watch::channel(None);
        let instance = Instance {
            id: instance_id.clone(),
            container_id: format!("{CONTAINER_PREFIX}{instance_id}"),
            req: req.clone(),
            state: InstanceState::Starting,
            state_timestamp: now(),
            port,
            address: None,
            dir: self.cfg.containers_dir.join(&instance_id),
            running_since: None,
            exit: exit_rx.clone(),
            cpu_sample: None,
            inspection: None,
        };
        lock(&self.instances).insert(instance_id.clone(), instance);
        info!(app = %req.droplet, index = req.index, instance = %instance_id, port, "starting an instance");
        self.heartbeat().await;
        self.start_instance(&instance_id, &req, port, exit_tx, exit_rx)
            .await;
    }

    async fn start_instance(
        self: &Arc<Self>,
        id: &str,
        req: &StartRequest,
        port: u16,
        exit_tx: watch::Sender<Option<i32>>,
        mut exit_rx: watch::Receiver<Option<i32>>,
    ) {
        let launched = self.launch(id, req, port).await;
        let waiter = match launched {
            Ok(waiter) => waiter,
            Err(e) => {
                let _ = exit_tx.send(Some(-1));
                let message = format!("{e:#}");
                self.crashed(id, None, &format!("failed to start: {message}"))
                    .await;
                return;
            }
        };
        let container_id = waiter.id.clone();
        self.tasks.spawn(wait_for_exit(waiter, exit_tx));
        if self.state(id) == Some(InstanceState::Stopping) {
            // A stop arrived while the container was being made; the stop handler waits.
            let _ = self.driver.delete(&container_id).await;
            return;
        }
        match self.health_check(id, req, port, &mut exit_rx).await {
            Health::Passed => self.mark_running(id).await,
            Health::Stopping => return,
            Health::Exited(status) => {
                self.crashed(
                    id,
                    Some(status),
                    &format!("exited with status {status} while starting"),
                )
                .await;
                return;
            }
            Health::TimedOut(limit) => {
                let _ = self.driver.delete(&container_id).await;
                let _ = exit_rx.wait_for(|s| s.is_some()).await;
                self.crashed(
                    id,
                    None,
                    &format!("did not pass its health check within {}s", limit.as_secs()),
                )
                .await;
                return;
            }
        }
        let status = exit_rx
            .wait_for(|s| s.is_some())
            .await
            .ok()
            .and_then(|s| *s);
        if self.state(id) == Some(InstanceState::Running) {
            let status = status.unwrap_or(-1);
            self.crashed(id, Some(status), &format!("exited with status {status}"))
                .await;
        }
    }

    /// Unpacks the droplet and starts the container; returns its waiter.
    async fn launch(
        self: &Arc<Self>,
        id: &str,
        req: &StartRequest,
        port: u16,
    ) -> anyhow::Result<strato_container::ContainerWaiter> {
        let cached = droplet::ensure_cached(
            &self.cfg.droplets_cache,
            &req.droplet_sha256,
            &req.droplet_uri,
        )
        .await?;
        let dir = self.cfg.containers_dir.join(id);
        if self.cfg.disk_quota && req.limits.disk > 0 {
            // The instance dir is a filesystem of the app's disk quota (droplet included).
            let (image, mount, mb) = (dir.with_extension("disk"), dir.clone(), req.limits.disk);
            tokio::task::spawn_blocking(move || {
                strato_container::disk::DiskQuota::create(&image, &mount, mb)
            })
            .await??;
        }
        let (uid, gid) = (self.cfg.uid, self.cfg.gid);
        let unpack_dir = dir.clone();
        let info =
            tokio::task::spawn_blocking(move || droplet::unpack(&cached, &unpack_dir, uid, gid))
                .await??;
        let command = req
            .start_command
            .clone()
            .filter(|c| !c.trim().is_empty())
            .unwrap_or_else(|| info.start_command.clone());
        if command.trim().is_empty() {
            anyhow::bail!("no start command: set one in stackato.yml/manifest.yml (command:) or use a buildpack that provides one");
        }
        // A process-checked instance is healthy once its start script reaches the command.
        let _ = std::fs::remove_file(dir.join("app").join(STARTED_MARKER));
        let script = start_script(&command, &info, req.index);
        let spec = self.container_spec(id, req, port, &dir, &script);
        let running = self.driver.run(spec).await?;
        // A published instance is reached at this host's address, like one on the host
        // network.
        if let Some(address) = running.address.filter(|_| !self.cfg.publish) {
            if let Some(inst) = lock(&self.instances).get_mut(id) {
                inst.address = Some(address.to_string());
            }
        }
        let (output, waiter) = running.into_parts();
        self.tasks.spawn(forward_output(
            self.bus.clone(),
            req.droplet.clone(),
            req.index,
            output,
        ));
        Ok(waiter)
    }

    fn container_spec(
        &self,
        id: &str,
        req: &StartRequest,
        port: u16,
        dir: &Path,
        script: &str,
    ) -> ContainerSpec {
        let argv = vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()];
        let mut spec = ContainerSpec::new(
            format!("{CONTAINER_PREFIX}{id}"),
            argv,
            self.cfg.uid,
            self.cfg.gid,
        );
        spec.env = instance_env(req, id, port, &self.cfg.extra_env);
        if self.cfg.publish {
            spec.publish = vec![port];
        }
        spec.hostname = format!("{}-{}", sanitize_hostname(&req.name), req.index);
        spec.mounts.push(Mount {
            source: dir.join("app"),
            destination: APP_HOME.to_string(),
            read_only: false,
        });
        spec.mounts.push(Mount {
            source: self.tools_dir(),
            destination: crate::tools::CONTAINER_DIR.to_string(),
            read_only: true,
        });
        // Filesystem services: the controller names the paths; only absolute paths
        // without `..` are mounted.
        for v in req.volumes.iter().filter(|v| volume_is_sane(v)) {
            spec.mounts.push(Mount {
                source: v.host_path.clone().into(),
                destination: v.container_path.clone(),
                read_only: false,
            });
        }
        spec.memory_limit_bytes = (req.limits.mem > 0).then(|| req.limits.mem * 1024 * 1024);
        spec.pids_limit = Some(PIDS_LIMIT);
        spec.nofile = if req.limits.fds > 0 {
            req.limits.fds
        } else {
            DEFAULT_FDS
        };
        spec
    }

    async fn health_check(
        &self,
        id: &str,
        req: &StartRequest,
        port: u16,
        exit_rx: &mut watch::Receiver<Option<i32>>,
    ) -> Health {
        let limit = if req.health_check.timeout > 0 {
            Duration::from_secs(req.health_check.timeout)
        } else {
            timings::START_TIMEOUT
        };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = *exit_rx.borrow() {
                return Health::Exited(status);
            }
            if self.state(id) != Some(InstanceState::Starting) {
                return Health::Stopping;
            }
            // `process` health checks and routeless workers have no port to probe: running
            // past the `pre-running` hooks (the start script's marker) is enough.
            let healthy = if req.health_check.process_only || req.uris.is_empty() {
                self.cfg
                    .containers_dir
                    .join(id)
                    .join("app")
                    .join(STARTED_MARKER)
                    .exists()
            } else {
                let host = lock(&self.instances)
                    .get(id)
                    .and_then(|i| i.address.clone())
                    .unwrap_or_else(|| self.cfg.host_ip.clone());
                probe(&host, port, req.health_check.http_path.as_deref()).await
            };
            if healthy {
                return Health::Passed;
            }
            if Instant::now() >= deadline {
                return Health::TimedOut(limit);
            }
            tokio::select! {
                _ = tokio::time::sleep(HEALTH_POLL) => {}
                _ = exit_rx.changed() => {}
            }
        }
    }

    async fn mark_running(&self, id: &str) {
        let route = {
            let mut instances = lock(&self.instances);
            let Some(inst) = instances.get_mut(id) else {
                return;
            };
            if inst.state != InstanceState::Starting {
                return;
            }
            inst.set_state(InstanceState::Running);
            inst.running_since = Some(Instant::now());
            (!inst.req.uris.is_empty()).then(|| inst.route(&self.cfg.id, &self.cfg.host_ip))
        };
        if let Some(route) = route {
            self.publish(subjects::ROUTER_REGISTER, &route).await;
        }
        self.heartbeat().await;
    }

    /// The instance died on its own (or never came up): routes out, `droplet.exited
    /// CRASHED`, container removed, files kept for `crash_retention`.
    async fn crashed(self: &Arc<Self>, id: &str, status: Option<i32>, description: &str) {
        let (route, exited, container_id, app, index) = {
            let mut instances = lock(&self.instances);
            let Some(inst) = instances.get_mut(id) else {
                return;
            };
            if matches!(inst.state, InstanceState::Stopping | InstanceState::Crashed) {
                return;
            }
            let route = (inst.state == InstanceState::Running && !inst.req.uris.is_empty())
                .then(|| inst.route(&self.cfg.id, &self.cfg.host_ip));
            inst.set_state(InstanceState::Crashed);
            inst.running_since = None;
            let exited = inst.exited(ExitReason::Crashed, status, description);
            (
                route,
                exited,
                inst.container_id.clone(),
                inst.req.droplet.clone(),
                inst.req.index,
            )
        };
        warn!(instance = %id, app = %app, "instance crashed: {description}");
        if let Some(route) = route {
            self.publish(subjects::ROUTER_UNREGISTER, &route).await;
        }
        self.app_log(
            &app,
            Some(index),
            &format!("instance {index} {description}"),
        )
        .await;
        self.publish(subjects::DROPLET_EXITED, &exited).await;
        let _ = self.driver.delete(&container_id).await;
        self.release_port(id);
        self.heartbeat().await;
        let dea = self.clone();
        let id = id.to_string();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(dea.cfg.crash_retention) => {}
                _ = dea.shutdown.cancelled() => {}
            }
            dea.forget_crashed(&id).await;
        });
    }

    async fn forget_crashed(&self, id: &str) {
        let removed = {
            let mut instances = lock(&self.instances);
            match instances.get(id) {
                Some(inst) if inst.state == InstanceState::Crashed => instances.remove(id),
                _ => None,
            }
        };
        if let Some(inst) = removed {
            if let Some(container) = &inst.inspection {
                let _ = self.driver.delete(container).await;
            }
            remove_instance_dir(&inst.dir);
        }
    }

    /// The container for looking at a crashed instance: the app's own container spec on
    /// its kept files, running a shell that waits, started at the first `run`/`ssh` and
    /// removed with the files when the retention period ends (Stackato let users ssh into
    /// a crashed instance this way).
    async fn inspection(self: &Arc<Self>, id: &str) -> anyhow::Result<String> {
        let (req, port, dir, existing) = {
            let instances = lock(&self.instances);
            let inst = instances
                .get(id)
                .ok_or_else(|| anyhow::anyhow!("it is gone"))?;
            (
                inst.req.clone(),
                inst.port,
                inst.dir.clone(),
                inst.inspection.clone(),
            )
        };
        if let Some(container) = existing {
            return Ok(container);
        }
        anyhow::ensure!(dir.join("app").is_dir(), "its files are gone");
        let wait = self.cfg.crash_retention.as_secs().max(1);
        let mut spec = self.container_spec(
            &format!("{id}-inspect"),
            &req,
            port,
            &dir,
            &format!("exec sleep {wait}"),
        );
        spec.memory_limit_bytes = spec.memory_limit_bytes.map(|m| m.max(64 * 1024 * 1024));
        let running = self.driver.run(spec).await?;
        let container = running.id.clone();
        let (_output, mut waiter) = running.into_parts();
        self.tasks.spawn(async move {
            let _ = waiter.wait().await;
        });
        let mut instances = lock(&self.instances);
        match instances.get_mut(id) {
            Some(inst) => {
                inst.inspection = Some(container.clone());
                Ok(container)
            }
            None => {
                // Forgotten meanwhile: nothing keeps the container.
                let driver = self.driver.clone();
                let stale = container.clone();
                self.tasks.spawn(async move {
                    let _ = driver.delete(&stale).await;
                });
                anyhow::bail!("it was just removed")
            }
        }
    }

    fn release_port(&self, id: &str) {
        if let Some(port) = lock(&self.instances).get(id).map(|i| i.port) {
            lock(&self.ports).release(port);
        }
    }

    fn state(&self, id: &str) -> Option<InstanceState> {
        lock(&self.instances).get(id).map(|i| i.state)
    }

    // ---- stop -----------------------------------------------------------------------

    async fn handle_stop(self: Arc<Self>, msg: Message) {
        let req: StopRequest = match decode(&msg) {
            Ok(req) => req,
            Err(e) => return warn!("ignoring a malformed stop request: {e}"),
        };
        let ids: Vec<String> = lock(&self.instances)
            .values()
            .filter(|i| stop_matches(&req, i))
            .map(|i| i.id.clone())
            .collect();
        let stops = ids
            .iter()
            .map(|id| self.stop_instance(id, ExitReason::Stopped, "stopped"));
        futures::future::join_all(stops).await;
    }

    /// Routes out, SIGTERM, SIGKILL after the grace period, `droplet.exited`, everything
    /// removed.
    async fn stop_instance(&self, id: &str, reason: ExitReason, description: &str) {
        let (route, container_id, mut exit_rx, grace) = {
            let mut instances = lock(&self.instances);
            let Some(inst) = instances.get_mut(id) else {
                return;
            };
            if !matches!(inst.state, InstanceState::Starting | InstanceState::Running) {
                return;
            }
            let route = (inst.state == InstanceState::Running && !inst.req.uris.is_empty())
                .then(|| inst.route(&self.cfg.id, &self.cfg.host_ip));
            inst.set_state(InstanceState::Stopping);
            let grace = stop_grace(&inst.req.env).unwrap_or(self.cfg.stop_grace);
            (route, inst.container_id.clone(), inst.exit.clone(), grace)
        };
        if let Some(route) = route {
            self.publish(subjects::ROUTER_UNREGISTER, &route).await;
        }
        let _ = self.driver.signal(&container_id, libc::SIGTERM).await;
        let graceful = tokio::time::timeout(grace, exit_rx.wait_for(|s| s.is_some()))
            .await
            .is_ok();
        if !graceful {
            let _ = self.driver.signal(&container_id, libc::SIGKILL).await;
            let _ = self.driver.delete(&container_id).await;
            let _ = tokio::time::timeout(KILL_WAIT, exit_rx.wait_for(|s| s.is_some()))
                .await
                .is_ok();
        }
        let status = *exit_rx.borrow();
        if let Err(e) = self.driver.delete(&container_id).await {
            warn!(container = %container_id, "cannot delete container: {e}");
        }
        let removed = lock(&self.instances).remove(id);
        if let Some(inst) = removed {
            lock(&self.ports).release(inst.port);
            remove_instance_dir(&inst.dir);
            self.publish(
                subjects::DROPLET_EXITED,
                &inst.exited(reason, status, description),
            )
            .await;
        }
        self.heartbeat().await;
    }

    async fn stop_everything(&self) {
        let ids: Vec<String> = lock(&self.instances).keys().cloned().collect();
        let stops = ids
            .iter()
            .map(|id| self.stop_instance(id, ExitReason::DeaShutdown, "DEA shutting down"));
        futures::future::join_all(stops).await;
        let leftovers: Vec<Instance> = lock(&self.instances).drain().map(|(_, i)| i).collect();
        for inst in leftovers {
            if let Some(inspection) = &inst.inspection {
                let _ = self.driver.delete(inspection).await;
            }
            let _ = self.driver.delete(&inst.container_id).await;
            remove_instance_dir(&inst.dir);
        }
        self.publish(
            subjects::DEA_SHUTDOWN,
            &serde_json::json!({"id": self.cfg.id}),
        )
        .await;
        let _ = self.bus.flush().await;
        self.tasks.close();
        if tokio::time::timeout(KILL_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("some DEA tasks did not finish at shutdown");
        }
    }

    // ---- queries --------------------------------------------------------------------

    async fn handle_find(self: Arc<Self>, msg: Message) {
        let req: FindDroplet = match decode(&msg) {
            Ok(req) => req,
            Err(e) => return warn!("ignoring a malformed dea.find.droplet: {e}"),
        };
        let mut found: Vec<(InstanceInfo, String, PathBuf)> = lock(&self.instances)
            .values()
            .filter(|i| i.req.droplet == req.droplet)
            .map(|i| {
                (
                    i.info(&self.cfg.id, &self.cfg.host_ip),
                    i.container_id.clone(),
                    i.dir.clone(),
                )
            })
            .collect();
        if req.include_stats {
            for (info, container_id, dir) in &mut found {
                if info.state == InstanceState::Running {
                    self.fill_stats(info, container_id, dir).await;
                }
            }
        }
        let infos: Vec<InstanceInfo> = found.into_iter().map(|(i, _, _)| i).collect();
        if let Err(e) = reply_json(self.bus.as_ref(), &msg, &infos).await {
            warn!("cannot answer dea.find.droplet: {e}");
        }
    }

    async fn fill_stats(&self, info: &mut InstanceInfo, container_id: &str, dir: &Path) {
        if let Ok(stats) = self.driver.stats(container_id).await {
            info.mem_bytes = stats.memory_bytes;
            let sample = (Instant::now(), stats.cpu_ns);
            let previous = lock(&self.instances)
                .get_mut(&info.instance)
                .and_then(|i| i.cpu_sample.replace(sample));
            if let Some((at, cpu_ns)) = previous {
                let wall = at.elapsed().as_nanos() as f64;
                if wall > 0.0 {
                    info.cpu_percent = stats.cpu_ns.saturating_sub(cpu_ns) as f64 * 100.0 / wall;
                }
            }
        }
        let dir = dir.to_path_buf();
        info.disk_bytes = tokio::task::spawn_blocking(move || disk_usage(&dir))
            .await
            .unwrap_or(0);
    }

    async fn handle_exec(self: Arc<Self>, msg: Message) {
        let req: ExecRequest = match decode(&msg) {
            Ok(req) => req,
            Err(e) => return warn!("ignoring a malformed exec request: {e}"),
        };
        let container = lock(&self.instances)
            .get(&req.instance)
            .filter(|i| matches!(i.state, InstanceState::Starting | InstanceState::Running))
            .map(|i| i.container_id.clone());
        let reply = match container {
            None => exec_error(format!(
                "instance {} is not running on DEA {}",
                req.instance, self.cfg.id
            )),
            Some(container) => {
                let timeout = if req.timeout_secs > 0 {
                    Duration::from_secs(req.timeout_secs)
                } else {
                    DEFAULT_EXEC_TIMEOUT
                };
                match self.driver.exec(&container, &req.argv, &[], timeout).await {
                    Ok(out) => ExecReply {
                        exit_status: out.exit_status,
                        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    },
                    Err(e) => exec_error(e.to_string()),
                }
            }
        };
        let _ = reply_json(self.bus.as_ref(), &msg, &reply).await;
    }

    async fn handle_files(self: Arc<Self>, msg: Message) {
        let reply = match decode::<FilesRequest>(&msg) {
            Err(e) => FilesReply::error(format!("malformed files request: {e}")),
            Ok(req) => {
                let dir = lock(&self.instances)
                    .get(&req.instance)
                    .map(|i| i.dir.clone());
                match dir {
                    None => FilesReply::error(format!(
                        "instance {} is not on DEA {}",
                        req.instance, self.cfg.id
                    )),
                    Some(dir) => tokio::task::spawn_blocking(move || read_beneath(&dir, &req.path))
                        .await
                        .unwrap_or_else(|e| FilesReply::error(e.to_string())),
                }
            }
        };
        let _ = reply_json(self.bus.as_ref(), &msg, &reply).await;
    }

    /// `dea.<id>.session`: a one-time WebSocket session for a command in a running
    /// instance (see [`crate::session`]).
    async fn handle_session(self: Arc<Self>, msg: Message) {
        let reply = match decode::<SessionRequest>(&msg) {
            Ok(req) => self.open_session(&req).await,
            Err(e) => session_error(format!("malformed session request: {e}")),
        };
        let _ = reply_json(self.bus.as_ref(), &msg, &reply).await;
    }

    async fn open_session(self: &Arc<Self>, req: &SessionRequest) -> SessionReply {
        let container = lock(&self.instances)
            .get(&req.instance)
            .map(|i| (i.state, i.container_id.clone()));
        let container = match container {
            Some((InstanceState::Starting | InstanceState::Running, id)) => id,
            Some((InstanceState::Crashed, _)) => match self.inspection(&req.instance).await {
                Ok(id) => id,
                Err(e) => {
                    return session_error(format!(
                        "instance {} has crashed and cannot be inspected: {e:#}; its files stay readable with `strato files` for a while",
                        req.instance
                    ))
                }
            },
            _ => {
                return session_error(format!(
                    "instance {} is not running on DEA {}",
                    req.instance, self.cfg.id
                ))
            }
        };
        let sessions = self
            .sessions
            .get_or_try_init(|| {
                Sessions::start(
                    &self.cfg.host_ip,
                    self.driver.clone(),
                    self.shutdown.clone(),
                )
            })
            .await;
        match sessions {
            Ok(sessions) => sessions.offer(container, req),
            Err(e) => session_error(format!(
                "cannot open the DEA's session endpoint on {}: {e}",
                self.cfg.host_ip
            )),
        }
    }

    // ---- periodic messages ----------------------------------------------------------

    async fn heartbeat(&self) {
        let droplets = lock(&self.instances)
            .values()
            .filter(|i| {
                matches!(
                    i.state,
                    InstanceState::Starting | InstanceState::Running | InstanceState::Crashed
                )
            })
            .map(Instance::heartbeat)
            .collect();
        let hb = DeaHeartbeat {
            dea: self.cfg.id.clone(),
            droplets,
        };
        self.publish(subjects::DEA_HEARTBEAT, &hb).await;
    }

    async fn advertise(&self) {
        let (reserved, app_id_to_count) = {
            let instances = lock(&self.instances);
            let mut counts = BTreeMap::new();
            let mut reserved = 0u64;
            for inst in instances.values().filter(|i| i.is_active()) {
                reserved += inst.req.limits.mem;
                if inst.state != InstanceState::Stopping {
                    *counts.entry(inst.req.droplet.clone()).or_insert(0u32) += 1;
                }
            }
            (reserved, counts)
        };
        let ad = DeaAdvertise {
            id: self.cfg.id.clone(),
            stacks: vec![self.cfg.stack.clone()],
            available_memory: self.cfg.memory_mb as i64 - reserved as i64,
            available_disk: free_disk_mb(&self.cfg.containers_dir),
            app_id_to_count,
            placement_properties: PlacementProperties {
                zone: self.cfg.zone.clone(),
            },
        };
        self.publish(subjects::DEA_ADVERTISE, &ad).await;
    }

    /// `dea.update`: an app's uris changed; running instances unregister the uris that
    /// went away (routers drain them) and register the new set.
    async fn handle_update(self: Arc<Self>, msg: Message) {
        let Ok(update) = strato_bus::decode::<strato_core::messages::DeaUpdate>(&msg) else {
            return warn!("ignoring a malformed dea.update");
        };
        let mut gone = Vec::new();
        let mut fresh = Vec::new();
        {
            let mut instances = lock(&self.instances);
            for inst in instances
                .values_mut()
                .filter(|i| i.req.droplet == update.droplet)
            {
                let removed: Vec<String> = inst
                    .req
                    .uris
                    .iter()
                    .filter(|u| !update.uris.contains(u))
                    .cloned()
                    .collect();
                let running = inst.state == InstanceState::Running;
                if running && !removed.is_empty() {
                    let mut r = inst.route(&self.cfg.id, &self.cfg.host_ip);
                    r.uris = removed;
                    gone.push(r);
                }
                inst.req.uris = update.uris.clone();
                if running && !update.uris.is_empty() {
                    fresh.push(inst.route(&self.cfg.id, &self.cfg.host_ip));
                }
            }
        }
        for r in &fresh {
            self.publish(subjects::ROUTER_REGISTER, r).await;
        }
        for r in &gone {
            self.publish(subjects::ROUTER_UNREGISTER, r).await;
        }
    }

    async fn register_all(&self) {
        let routes: Vec<_> = lock(&self.instances)
            .values()
            .filter(|i| i.state == InstanceState::Running && !i.req.uris.is_empty())
            .map(|i| i.route(&self.cfg.id, &self.cfg.host_ip))
            .collect();
        for route in routes {
            self.publish(subjects::ROUTER_REGISTER, &route).await;
        }
    }

    async fn publish<T: serde::Serialize>(&self, subject: &str, value: &T) {
        if let Err(e) = publish_json(self.bus.as_ref(), subject, value).await {
            warn!(subject, "cannot publish: {e}");
        }
    }

    /// A line from the DEA itself in the app's log stream.
    async fn app_log(&self, app: &str, index: Option<u32>, text: &str) {
        let line = LogLine {
            app: app.to_string(),
            source: "dea".to_string(),
            instance_index: index,
            stream: "stdout".to_string(),
            timestamp: now(),
            text: text.to_string(),
        };
        self.publish(&subjects::apptail(app), &line).await;
    }
}

enum Health {
    Passed,
    Stopping,
    Exited(i32),
    TimedOut(Duration),
}

fn stop_matches(req: &StopRequest, inst: &Instance) -> bool {
    inst.req.droplet == req.droplet
        && req.version.as_ref().is_none_or(|v| *v == inst.req.version)
        && req
            .indices
            .as_ref()
            .is_none_or(|ix| ix.contains(&inst.req.index))
        && req
            .instances
            .as_ref()
            .is_none_or(|ids| ids.contains(&inst.id))
}

fn session_error(message: String) -> SessionReply {
    SessionReply {
        error: Some(message),
        ..SessionReply::default()
    }
}

fn exec_error(message: String) -> ExecReply {
    ExecReply {
        exit_status: -1,
        stdout: String::new(),
        stderr: message,
    }
}

async fn wait_for_exit(
    mut waiter: strato_container::ContainerWaiter,
    exit_tx: watch::Sender<Option<i32>>,
) {
    let status = waiter.wait().await.unwrap_or(-1);
    let _ = exit_tx.send(Some(status));
}

/// Publishes every output line as a `LogLine` on `apptail.<app>`.
async fn forward_output(
    bus: SharedBus,
    app: String,
    index: u32,
    mut output: tokio::sync::mpsc::Receiver<strato_container::OutputLine>,
) {
    let subject = subjects::apptail(&app);
    while let Some(line) = output.recv().await {
        let log = LogLine {
            app: app.clone(),
            source: "app".to_string(),
            instance_index: Some(index),
            stream: line.stream.as_str().to_string(),
            timestamp: now(),
            text: line.text,
        };
        let _ = publish_json(bus.as_ref(), &subject, &log).await;
    }
}

/// Whether the instance answers: a TCP connect, or an HTTP GET answered below 500.
/// Written (relative to the app dir) by the start script right before it execs the app.
const STARTED_MARKER: &str = ".strato/started";

/// Quotes `s` as one shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The instance's `sh -c` script: `.profile.d`, the `pre-running` hooks (a failing one ends
/// the start with its exit code; a `-` one is only reported), the `cron:` scheduler in
/// instance 0, the started marker, then `exec` of the start command.
fn start_script(command: &str, info: &droplet::StagingInfo, index: u32) -> String {
    let mut s =
        format!("cd {APP_HOME} && for f in .profile.d/*.sh; do [ -f \"$f\" ] && . \"$f\"; done\n");
    if !info.pre_running.is_empty() {
        s.push_str(concat!(
            "strato_hook() {\n",
            "  echo \"-----> Running pre-running hook: $2\"\n",
            "  (cd \"$HOME\" && /bin/sh -c \"$2\")\n",
            "  strato_rc=$?\n",
            "  [ \"$strato_rc\" -eq 0 ] && return 0\n",
            "  if [ \"$1\" = ignore ]; then echo \"-----> pre-running hook exited with $strato_rc (ignored): $2\"; return 0; fi\n",
            "  echo \"-----> pre-running hook failed with exit code $strato_rc: $2\" >&2\n",
            "  exit \"$strato_rc\"\n",
            "}\n",
        ));
        for hook in &info.pre_running {
            let mode = if hook.ignore_failure {
                "ignore"
            } else {
                "strict"
            };
            s.push_str(&format!(
                "strato_hook {mode} {}\n",
                shell_quote(&hook.command)
            ));
        }
    }
    if index == 0 && !info.cron.is_empty() {
        let lines: Vec<String> = info.cron.iter().map(|l| shell_quote(l)).collect();
        s.push_str(&format!(
            "/usr/bin/python3 {}/{} {} &\n",
            crate::tools::CONTAINER_DIR,
            crate::tools::CRON_SCHEDULER,
            lines.join(" ")
        ));
    }
    s.push_str(&format!(
        "mkdir -p .strato && : > {STARTED_MARKER}\nexec {command}"
    ));
    s
}

/// The grace period an app asks for between SIGTERM and SIGKILL: `STRATO_STOP_GRACE` (or
/// `STACKATO_STOP_GRACE`) in its environment, in seconds, 1 to 300. `None` for the DEA's
/// own (`dea_ng/stop_grace`).
fn stop_grace(env: &[String]) -> Option<Duration> {
    env.iter()
        .rev()
        .find_map(|kv| {
            kv.strip_prefix("STRATO_STOP_GRACE=")
                .or_else(|| kv.strip_prefix("STACKATO_STOP_GRACE="))
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite())
        .map(|s| Duration::from_secs_f64(s.clamp(1.0, 300.0)))
}

/// Whether the instance accepts connections at `host:port` (and answers `http_path` with
/// a status below 500, when given).
async fn probe(host: &str, port: u16, http_path: Option<&str>) -> bool {
    let connect = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await;
    if !matches!(connect, Ok(Ok(_))) {
        return false;
    }
    let Some(path) = http_path else { return true };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build();
    let Ok(client) = client else { return false };
    match client
        .get(format!("http://{host}:{port}{path}"))
        .send()
        .await
    {
        Ok(resp) => resp.status().as_u16() < 500,
        Err(_) => false,
    }
}

fn sanitize_hostname(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    if cleaned.is_empty() {
        "app".to_string()
    } else {
        cleaned
    }
}

// fsblkcnt_t and c_ulong are u64 here but not on every target.
#[allow(clippy::unnecessary_cast)]
fn free_disk_mb(path: &Path) -> i64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| (s.blocks_available() as u64 * s.fragment_size() as u64 / (1024 * 1024)) as i64)
        .unwrap_or(0)
}

/// Bytes used by regular files under `dir` (symlinks not followed).
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

/// Removes an instance's dir: unmounts its disk quota (if it has one) and deletes the
/// image, or just deletes the dir.
fn remove_instance_dir(dir: &std::path::Path) {
    let quota = strato_container::disk::DiskQuota {
        image: dir.with_extension("disk"),
        mount_point: dir.to_path_buf(),
    };
    if let Err(e) = quota.release() {
        warn!(dir = %dir.display(), "cannot release the instance's disk quota: {e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A volume the DEA is willing to mount: absolute paths on both sides, no `..`.
fn volume_is_sane(v: &strato_core::messages::VolumeMount) -> bool {
    let ok = |p: &str| p.starts_with('/') && !p.split('/').any(|c| c == "..");
    ok(&v.host_path) && ok(&v.container_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_choose_their_stop_grace_within_bounds() {
        let env = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(stop_grace(&env(&["A=1"])), None);
        assert_eq!(
            stop_grace(&env(&["STRATO_STOP_GRACE=30"])),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            stop_grace(&env(&["STACKATO_STOP_GRACE=0.5"])),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            stop_grace(&env(&["STRATO_STOP_GRACE=100000"])),
            Some(Duration::from_secs(300))
        );
        assert_eq!(stop_grace(&env(&["STRATO_STOP_GRACE=soon"])), None);
        assert_eq!(stop_grace(&env(&["STRATO_STOP_GRACE=NaN"])), None);
    }

    /// Runs a start script on the host with the app dir moved to `dir`.
    fn run_script(script: &str, dir: &Path) -> std::process::Output {
        let script = script.replace(APP_HOME, &dir.display().to_string());
        std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .env("HOME", dir)
            .output()
            .unwrap()
    }

    #[test]
    fn start_script_runs_hooks_in_order_then_the_command() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".profile.d")).unwrap();
        std::fs::write(
            dir.path().join(".profile.d/a.sh"),
            "export FROM_PROFILE=yes\n",
        )
        .unwrap();
        let hook = |command: &str, ignore_failure| droplet::Hook {
            command: command.into(),
            ignore_failure,
        };
        let mut info = droplet::StagingInfo {
            pre_running: vec![
                hook("echo \"one $FROM_PROFILE\" >> order.txt", false),
                hook("false", true),
                hook("echo 'two' >> order.txt", false),
            ],
            cron: vec!["* * * * * echo tick".into()],
            ..Default::default()
        };
        let script = start_script("echo started >> order.txt", &info, 1);
        assert!(
            !script.contains(crate::tools::CRON_SCHEDULER),
            "cron only in instance 0"
        );
        assert!(start_script("x", &info, 0).contains("'* * * * * echo tick' &"));
        let out = run_script(&script, dir.path());
        assert!(out.status.success(), "{out:?}");
        let order = std::fs::read_to_string(dir.path().join("order.txt")).unwrap();
        assert_eq!(order, "one yes\ntwo\nstarted\n");
        assert!(String::from_utf8_lossy(&out.stdout).contains("exited with 1 (ignored): false"));
        assert!(dir.path().join(STARTED_MARKER).exists());

        // A failing hook ends the start with its code, before the marker and the command.
        let dir = tempfile::tempdir().unwrap();
        info.pre_running = vec![hook("echo broken; exit 3", false)];
        let out = run_script(
            &start_script("echo started > ran.txt", &info, 0),
            dir.path(),
        );
        assert_eq!(out.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&out.stderr).contains("failed with exit code 3"));
        assert!(String::from_utf8_lossy(&out.stdout).contains("broken"));
        assert!(!dir.path().join("ran.txt").exists());
        assert!(!dir.path().join(STARTED_MARKER).exists());
    }

    #[test]
    fn hostnames_are_sanitized() {
        assert_eq!(sanitize_hostname("my_app.v2"), "my-app-v2");
        assert_eq!(sanitize_hostname(""), "app");
    }
}
