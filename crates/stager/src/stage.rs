//! The staging pipeline: package → build dir → container (hooks, detect, compile, release)
//! → droplet.
//!
//! Everything the app's code or its buildpack runs happens inside one container started
//! through the [`ContainerDriver`], as the unprivileged staging user, with the build dir
//! mounted at the same path the app later runs from (`/home/stackato/app`), so virtualenvs
//! and other absolute paths stay valid. Every output line is sent as soon as it is read.

use std::collections::VecDeque;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strato_container::{ContainerDriver, ContainerSpec, Mount, OutputStream};
use strato_core::messages::{StagingRequest, StagingResult};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app_config;
use crate::buildpacks::{self, BuildpackChoice};
use crate::config::{inherited_env, EnvBuilder, StagerConfig};
use crate::droplet::{self, StagingInfo};
use crate::extract;
use crate::release;
use crate::script::{self, paths, ScriptBuildpack};
use strato_blobs::{sha256_file, BlobKind, BlobStore};

/// How many of the last output lines a failed staging reports.
pub const LOG_TAIL_LINES: usize = 20;
/// After the container exits, output still in flight is collected for this long.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// One line of staging output, as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagingLine {
    /// `"stdout"` or `"stderr"`.
    pub stream: &'static str,
    pub text: String,
}

/// Why the stager could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Blobs(#[from] strato_blobs::BlobError),
    #[error("buildpack_order names '{0}', which is not a built-in buildpack (built-ins: {1})")]
    UnknownBuiltin(String, String),
}

/// Stages apps. Cheap to share in an `Arc`.
pub struct Stager {
    cfg: StagerConfig,
    blobs: BlobStore,
    driver: Arc<dyn ContainerDriver>,
    inherited_env: Vec<String>,
}

/// A failed staging, before the log tail is attached.
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    message: String,
    exit_status: Option<i32>,
}

impl Failure {
    fn error(message: impl Into<String>) -> Self {
        Failure {
            kind: "StagingError",
            message: message.into(),
            exit_status: None,
        }
    }
}

impl Stager {
    /// Creates the stager's directories and writes out the built-in buildpacks.
    pub fn new(cfg: StagerConfig, driver: Arc<dyn ContainerDriver>) -> Result<Self, SetupError> {
        let builtins = buildpacks::builtin_names();
        if let Some(bad) = cfg
            .buildpack_order
            .iter()
            .find(|n| !builtins.contains(&n.as_str()))
        {
            return Err(SetupError::UnknownBuiltin(bad.clone(), builtins.join(", ")));
        }
        for dir in [&cfg.cache_dir, &cfg.work_dir, &cfg.buildpacks_dir] {
            fs::create_dir_all(dir).map_err(|source| SetupError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let static_server = cfg
            .static_server_bin
            .clone()
            .or_else(buildpacks::find_static_server);
        if static_server.is_none() {
            tracing::warn!(
                "strato-static not found; static apps will be served by python3 -m http.server"
            );
        }
        buildpacks::materialise(&cfg.buildpacks_dir, static_server.as_deref()).map_err(
            |source| SetupError::Io {
                path: cfg.buildpacks_dir.clone(),
                source,
            },
        )?;
        let blobs = BlobStore::open(&cfg.blobs_dir)?;
        Ok(Stager {
            inherited_env: inherited_env(std::env::vars()),
            cfg,
            blobs,
            driver,
        })
    }

    /// The blob store droplets are written to.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The configuration in use.
    pub fn config(&self) -> &StagerConfig {
        &self.cfg
    }

    /// Stages one app. Every output line goes to `lines` as it happens; the result says
    /// where the droplet is or why staging failed (with the last output lines). Cancelling
    /// `cancel` stops the staging container.
    pub async fn stage(
        &self,
        req: &StagingRequest,
        lines: mpsc::UnboundedSender<StagingLine>,
        cancel: CancellationToken,
    ) -> StagingResult {
        let mut log = LineLog::new(lines);
        let started = Instant::now();
        match self.stage_inner(req, &mut log, &cancel).await {
            Ok((sha, info)) => {
                log.out(format!(
                    "-----> Staging finished in {:.1}s",
                    started.elapsed().as_secs_f64()
                ));
                StagingResult::Staged {
                    droplet_sha256: sha,
                    detected_buildpack: info.detected_buildpack,
                    start_command: info.start_command,
                }
            }
            Err(failure) => {
                log.err(format!("-----> Staging failed: {}", failure.message));
                StagingResult::Failed {
                    kind: failure.kind.to_string(),
                    message: failure.message,
                    exit_status: failure.exit_status,
                    log_tail: log.tail(),
                }
            }
        }
    }

    async fn stage_inner(
        &self,
        req: &StagingRequest,
        log: &mut LineLog,
        cancel: &CancellationToken,
    ) -> Result<(String, StagingInfo), Failure> {
        log.out(format!("-----> Staging {} ({})", req.app_name, req.app_id));
        let work = WorkDir::create(&self.cfg.work_dir, &req.task_id)?;
        let package = self.package_path(req).await?;
        self.verify_and_extract(&package, &req.package_sha256, &work.app, log)
            .await?;
        let config =
            app_config::read_app_config(&work.app).map_err(|e| Failure::error(e.to_string()))?;
        let debs = !config.debian.is_empty();
        if debs {
            fetch_debs(&config.debian, &work.control.join(script::DEBS_DIR), log).await?;
        }
        let (script_buildpack, custom_dir) = self.prepare_buildpack(req, &work, log).await?;
        let script_path = work.control.join(script::SCRIPT_FILE);
        write_file_mode(
            &script_path,
            &script::staging_script_for(&config, debs, &script_buildpack),
            0o755,
        )?;
        // A `<app>-cache` filesystem service outlives the app; otherwise the stager's own.
        let cache = match &req.cache_volume {
            Some(dir) => PathBuf::from(dir),
            None => self.cfg.cache_dir.join(safe_name(&req.app_id)),
        };
        fs::create_dir_all(&cache)
            .map_err(|e| Failure::error(format!("cannot create the buildpack cache: {e}")))?;
        self.hand_over(&[&work.app, &work.control, &cache]).await?;

        let timeout = match req.timeout_secs {
            0 => self.cfg.default_timeout,
            secs => Duration::from_secs(secs),
        };
        let spec = self.container_spec(req, &work, &cache, custom_dir.as_deref(), timeout);
        let exit = self.run_container(spec, timeout, log, cancel).await?;
        if exit != 0 {
            return Err(read_failure(&work.control, exit));
        }
        let mut info = read_release(&work.control, &work.app)?;
        log.out(format!(
            "-----> Start command: {} (buildpack {})",
            info.start_command, info.detected_buildpack
        ));
        info.pre_running = config.pre_running.clone();
        info.cron = config.cron.clone();
        if !info.pre_running.is_empty() || !info.cron.is_empty() {
            log.out(format!(
                "-----> {} pre-running hook(s) run before each start; {} cron line(s) run in instance 0",
                info.pre_running.len(),
                info.cron.len()
            ));
        }
        let (sha, size) = self.store_droplet(&work.app, &info).await?;
        self.upload_droplet(req, &sha).await?;
        log.out(format!(
            "-----> Uploaded droplet ({}, sha256 {})",
            human_size(size),
            &sha[..12]
        ));
        Ok((sha, info))
    }

    /// The local file holding the package: a `file://` URI, an absolute path, the
    /// package blob in the store, or an `http(s)://` URL of the controller (a stager on
    /// another node), fetched into the store and verified first.
    async fn package_path(&self, req: &StagingRequest) -> Result<PathBuf, Failure> {
        let uri = req.package_uri.trim();
        if let Some(path) = uri.strip_prefix("file://") {
            return Ok(PathBuf::from(path));
        }
        if uri.starts_with('/') {
            return Ok(PathBuf::from(uri));
        }
        if uri.is_empty() || uri.starts_with("blob:") {
            return self
                .blobs
                .path_of(BlobKind::Package, &req.package_sha256)
                .map_err(|e| Failure::error(format!("bad package sha256: {e}")));
        }
        strato_blobs::remote::fetch(&self.blobs, BlobKind::Package, &req.package_sha256, uri)
            .await
            .map_err(|e| Failure::error(format!("cannot fetch the package: {e}")))
    }

    /// Hands the droplet to the controller when it lives on another node.
    async fn upload_droplet(&self, req: &StagingRequest, sha: &str) -> Result<(), Failure> {
        let Some(template) = &req.droplet_upload_uri else {
            return Ok(());
        };
        let path = self
            .blobs
            .path_of(BlobKind::Droplet, sha)
            .map_err(|e| Failure::error(e.to_string()))?;
        strato_blobs::remote::upload(&path, &template.replace("{sha256}", sha))
            .await
            .map_err(|e| Failure::error(format!("cannot hand the droplet to the controller: {e}")))
    }

    async fn verify_and_extract(
        &self,
        package: &Path,
        expected_sha: &str,
        app_dir: &Path,
        log: &mut LineLog,
    ) -> Result<(), Failure> {
        let (package, expected, app_dir) = (
            package.to_path_buf(),
            expected_sha.to_ascii_lowercase(),
            app_dir.to_path_buf(),
        );
        let max = self.cfg.max_app_bytes;
        let bytes = blocking(move || {
            let actual = sha256_file(&package).map_err(|e| {
                Failure::error(format!(
                    "cannot read the app package {}: {e}; upload the app again",
                    package.display()
                ))
            })?;
            if actual != expected {
                return Err(Failure::error(format!(
                    "the app package's sha256 is {actual}, not {expected}: it was damaged or replaced; upload the app again"
                )));
            }
            extract::extract_zip_file(&package, &app_dir, max)
                .map_err(|e| Failure::error(e.to_string()))
        })
        .await?;
        log.out(format!(
            "-----> Extracted app package ({})",
            human_size(bytes)
        ));
        Ok(())
    }

    /// Decides what the script runs; clones or checks a custom buildpack. Returns the
    /// host dir of a custom buildpack to mount.
    async fn prepare_buildpack(
        &self,
        req: &StagingRequest,
        work: &WorkDir,
        log: &mut LineLog,
    ) -> Result<(ScriptBuildpack, Option<PathBuf>), Failure> {
        let choice = buildpacks::choose(req.buildpack.as_deref(), &self.cfg.buildpack_order)
            .map_err(|e| Failure::error(e.to_string()))?;
        Ok(match choice {
            BuildpackChoice::Detect(order) => (ScriptBuildpack::Detect(order), None),
            BuildpackChoice::Builtin(name) => (ScriptBuildpack::Builtin(name), None),
            BuildpackChoice::Local(dir) => {
                buildpacks::check_buildpack_dir(&dir).map_err(|e| Failure::error(e.to_string()))?;
                let name = last_segment(&dir.to_string_lossy());
                (ScriptBuildpack::Custom { name }, Some(dir))
            }
            BuildpackChoice::Git { url, branch } => {
                log.out(format!("-----> Cloning buildpack {url}"));
                let dest = work.root.join("buildpack");
                buildpacks::clone(&url, branch.as_deref(), &dest)
                    .await
                    .map_err(|e| Failure::error(e.to_string()))?;
                buildpacks::check_buildpack_dir(&dest)
                    .map_err(|e| Failure::error(e.to_string()))?;
                self.hand_over(&[&dest]).await?;
                (
                    ScriptBuildpack::Custom {
                        name: last_segment(&url),
                    },
                    Some(dest),
                )
            }
        })
    }

    /// Gives the staging user ownership of `dirs` (when running as root).
    async fn hand_over(&self, dirs: &[&Path]) -> Result<(), Failure> {
        if !strato_core::home::is_root() {
            return Ok(());
        }
        let dirs: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
        let (uid, gid) = (self.cfg.uid, self.cfg.gid);
        blocking(move || {
            for dir in &dirs {
                chown_tree(dir, uid, gid).map_err(|e| {
                    Failure::error(format!("cannot hand {} to uid {uid}: {e}", dir.display()))
                })?;
            }
            Ok(())
        })
        .await
    }

    fn container_spec(
        &self,
        req: &StagingRequest,
        work: &WorkDir,
        cache: &Path,
        custom_buildpack: Option<&Path>,
        timeout: Duration,
    ) -> ContainerSpec {
        let id = format!(
            "staging-{}-{}",
            safe_name(&req.task_id).chars().take(64).collect::<String>(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut spec = ContainerSpec::new(id, script::script_argv(), self.cfg.uid, self.cfg.gid);
        spec.env = self.staging_env(req, timeout);
        spec.cwd = paths::APP.to_string();
        let mem_mb = req.limits.mem.max(self.cfg.min_staging_memory_mb);
        spec.memory_limit_bytes = Some(mem_mb * 1024 * 1024);
        let mount = |source: &Path, destination: &str, read_only: bool| Mount {
            source: source.to_path_buf(),
            destination: destination.to_string(),
            read_only,
        };
        spec.mounts = vec![
            mount(&work.app, paths::APP, false),
            mount(cache, paths::CACHE, false),
            mount(&self.cfg.buildpacks_dir, paths::BUILDPACKS, true),
            mount(&work.control, paths::CONTROL, false),
        ];
        if let Some(dir) = custom_buildpack {
            spec.mounts.push(mount(dir, paths::CUSTOM_BUILDPACK, true));
        }
        for v in &req.volumes {
            if v.host_path.starts_with('/') && v.container_path.starts_with('/') {
                spec.mounts
                    .push(mount(Path::new(&v.host_path), &v.container_path, false));
            }
        }
        spec
    }

    /// The staging environment: basics, inherited registry/proxy/CA settings, the
    /// operator's extras, the app's own variables, then what staging itself needs.
    fn staging_env(&self, req: &StagingRequest, timeout: Duration) -> Vec<String> {
        let mut env = EnvBuilder::default();
        env.set("PATH", "/usr/local/bin:/usr/bin:/bin");
        env.set("LANG", "C.UTF-8");
        env.set("TMPDIR", "/tmp");
        env.extend_pairs(&self.inherited_env);
        env.extend_pairs(&self.cfg.extra_env);
        env.extend_pairs(&req.environment);
        env.set("HOME", paths::APP);
        env.set("USER", strato_container::APP_USER);
        env.set("BUILDPACK_CACHE", paths::CACHE);
        env.set("STAGING_TIMEOUT", timeout.as_secs().to_string());
        env.set("MEMORY_LIMIT", format!("{}m", req.limits.mem));
        env.set("STACKATO_APP_ROOT", paths::APP);
        env.set("STACKATO_APP_NAME", req.app_name.clone());
        env.set(
            "STACKATO_APP_NAME_UPCASE",
            req.app_name.to_uppercase().replace('-', "_"),
        );
        env.set("PYTHONUNBUFFERED", "1");
        env.build()
    }

    /// Runs the staging container to its end, streaming its output; returns its exit code.
    async fn run_container(
        &self,
        spec: ContainerSpec,
        timeout: Duration,
        log: &mut LineLog,
        cancel: &CancellationToken,
    ) -> Result<i32, Failure> {
        let id = spec.id.clone();
        let running =
            self.driver.run(spec).await.map_err(|e| {
                Failure::error(format!("could not start the staging container: {e}"))
            })?;
        let guard = ContainerGuard {
            driver: Arc::clone(&self.driver),
            id: Some(id),
        };
        let (mut output, mut waiter) = running.into_parts();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut exit: Option<i32> = None;
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            let drain_at = drain_until;
            let drain = async move {
                match drain_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                line = output.recv() => match line {
                    Some(line) => log.push(stream_name(line.stream), line.text),
                    None if exit.is_some() => break,
                    None => {
                        // Output closed first; the exit follows.
                        let status = tokio::select! {
                            s = waiter.wait() => s,
                            _ = &mut deadline => return Err(timed_out(guard, timeout).await),
                            _ = cancel.cancelled() => return Err(cancelled(guard).await),
                        };
                        exit = Some(container_exit(status)?);
                        break;
                    }
                },
                status = waiter.wait(), if exit.is_none() => {
                    exit = Some(container_exit(status)?);
                    drain_until = Some(tokio::time::Instant::now() + OUTPUT_DRAIN);
                }
                _ = drain => break,
                _ = &mut deadline, if exit.is_none() => return Err(timed_out(guard, timeout).await),
                _ = cancel.cancelled(), if exit.is_none() => return Err(cancelled(guard).await),
            }
        }
        guard.delete().await;
        exit.ok_or_else(|| Failure::error("the staging container ended without an exit status"))
    }

    async fn store_droplet(
        &self,
        app_dir: &Path,
        info: &StagingInfo,
    ) -> Result<(String, u64), Failure> {
        let (store, app_dir, info) = (self.blobs.clone(), app_dir.to_path_buf(), info.clone());
        blocking(move || {
            droplet::write_droplet(&store, &app_dir, &info)
                .map_err(|e| Failure::error(format!("cannot store the droplet: {e}")))
        })
        .await
    }
}

fn stream_name(stream: OutputStream) -> &'static str {
    stream.as_str()
}

fn container_exit(status: Result<i32, strato_container::ContainerError>) -> Result<i32, Failure> {
    status.map_err(|e| Failure::error(format!("lost track of the staging container: {e}")))
}

async fn timed_out(guard: ContainerGuard, timeout: Duration) -> Failure {
    guard.delete().await;
    Failure {
        kind: "Timeout",
        message: format!(
            "staging did not finish within {}s; make staging faster or raise the app's staging timeout",
            timeout.as_secs()
        ),
        exit_status: None,
    }
}

async fn cancelled(guard: ContainerGuard) -> Failure {
    guard.delete().await;
    Failure::error("staging was cancelled because the stager is shutting down; push again")
}

/// What the script reported when the container exited with `exit`.
fn read_failure(control: &Path, exit: i32) -> Failure {
    let read = |name: &str| {
        fs::read_to_string(control.join(name))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let kind = match read(script::FAILURE_KIND_FILE).as_deref() {
        Some("NoAppDetected") => "NoAppDetected",
        _ => "StagingError",
    };
    let message = read(script::FAILURE_MESSAGE_FILE)
        .unwrap_or_else(|| format!("staging exited with status {exit}"));
    Failure {
        kind,
        message,
        exit_status: Some(exit),
    }
}

/// The detected buildpack and start command after a successful run.
fn read_release(control: &Path, app_dir: &Path) -> Result<StagingInfo, Failure> {
    let detected = fs::read_to_string(control.join(script::DETECTED_FILE))
        .map(|s| s.trim().to_string())
        .map_err(|e| {
            Failure::error(format!(
                "the staging script did not record a buildpack: {e}"
            ))
        })?;
    let release_yaml = fs::read_to_string(control.join(script::RELEASE_FILE)).unwrap_or_default();
    let info = release::parse_release(&release_yaml).map_err(|e| Failure::error(e.to_string()))?;
    let start_command = release::start_command(release::procfile_web(app_dir), &info)
        .ok_or_else(|| {
            Failure::error(format!(
                "buildpack {detected} did not say how to start the app; add a Procfile with a 'web:' line"
            ))
        })?;
    Ok(StagingInfo {
        detected_buildpack: detected,
        start_command,
        ..StagingInfo::default()
    })
}

/// How long fetching `requirements:` Debian packages may take.
const APT_TIMEOUT: Duration = Duration::from_secs(600);

/// Fetches Debian packages (and the dependencies the stack lacks) from the host's package
/// mirror into `dest`, on the host: the staging container has no apt configuration, and the
/// stack's `/usr` is read-only, so the script unpacks them into the droplet instead.
async fn fetch_debs(packages: &[String], dest: &Path, log: &mut LineLog) -> Result<(), Failure> {
    log.out(format!(
        "-----> Fetching Debian packages: {}",
        packages.join(" ")
    ));
    fs::create_dir_all(dest.join("partial"))
        .map_err(|e| Failure::error(format!("cannot create {}: {e}", dest.display())))?;
    let mut cmd = tokio::process::Command::new("apt-get");
    cmd.args([
        "install",
        "--download-only",
        "--no-install-recommends",
        "--yes",
        "--quiet",
    ])
    .args(["-o", &format!("Dir::Cache::Archives={}/", dest.display())])
    .args(["-o", "Debug::NoLocking=1"])
    .args(["-o", "Dir::Cache::pkgcache="])
    .args(["-o", "Dir::Cache::srcpkgcache="])
    .arg("--")
    .args(packages)
    .env("DEBIAN_FRONTEND", "noninteractive")
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let output = tokio::time::timeout(APT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            Failure::error(format!(
                "fetching Debian packages took over {}s; check that the package mirror is reachable",
                APT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| {
            Failure::error(format!(
                "cannot run apt-get to fetch `requirements:` packages: {e}; the stager's host needs apt"
            ))
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stdout.lines().chain(stderr.lines()) {
        if !line.trim().is_empty() {
            log.out(format!("       {line}"));
        }
    }
    if !output.status.success() {
        let why = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("apt-get failed")
            .trim()
            .to_string();
        return Err(Failure::error(format!(
            "could not fetch the Debian packages {}: {why}; check the names (apt-cache search NAME) and that the package mirror is reachable",
            packages.join(", ")
        )));
    }
    let _ = fs::remove_dir_all(dest.join("partial"));
    let _ = fs::remove_file(dest.join("lock"));
    Ok(())
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure::error(format!("internal error in the stager: {e}")))?
}

/// Keeps the last lines of output and forwards each one.
struct LineLog {
    sender: mpsc::UnboundedSender<StagingLine>,
    tail: VecDeque<String>,
}

impl LineLog {
    fn new(sender: mpsc::UnboundedSender<StagingLine>) -> Self {
        LineLog {
            sender,
            tail: VecDeque::with_capacity(LOG_TAIL_LINES),
        }
    }

    fn push(&mut self, stream: &'static str, text: String) {
        if self.tail.len() == LOG_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text.clone());
        let _ = self.sender.send(StagingLine { stream, text });
    }

    fn out(&mut self, text: String) {
        self.push("stdout", text);
    }

    fn err(&mut self, text: String) {
        self.push("stderr", text);
    }

    fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }
}

/// The scratch dirs of one staging; removed on drop.
struct WorkDir {
    root: PathBuf,
    app: PathBuf,
    control: PathBuf,
}

impl WorkDir {
    fn create(base: &Path, task_id: &str) -> Result<Self, Failure> {
        let root = base.join(format!(
            "{}-{}",
            safe_name(task_id).chars().take(64).collect::<String>(),
            uuid::Uuid::new_v4().simple()
        ));
        let work = WorkDir {
            app: root.join("app"),
            control: root.join("control"),
            root,
        };
        for dir in [&work.root, &work.app, &work.control] {
            fs::create_dir_all(dir)
                .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o755)))
                .map_err(|e| {
                    Failure::error(format!(
                        "cannot create the staging dir {}: {e}",
                        dir.display()
                    ))
                })?;
        }
        Ok(work)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Deletes the staging container when staging ends, however it ends.
struct ContainerGuard {
    driver: Arc<dyn ContainerDriver>,
    id: Option<String>,
}

impl ContainerGuard {
    async fn delete(mut self) {
        if let Some(id) = self.id.take() {
            if let Err(e) = self.driver.delete(&id).await {
                tracing::warn!(container = %id, error = %e, "could not delete the staging container");
            }
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let driver = Arc::clone(&self.driver);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = driver.delete(&id).await;
                });
            }
        }
    }
}

fn write_file_mode(path: &Path, content: &str, mode: u32) -> Result<(), Failure> {
    fs::write(path, content)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
        .map_err(|e| Failure::error(format!("cannot write {}: {e}", path.display())))
}

/// `lchown -R`: never follows symlinks.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// `s` with everything but `[A-Za-z0-9_.-]` replaced by `-` (and never empty or a dot
/// name), fit for file and container names.
pub(crate) fn safe_name(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_start_matches('.');
    if trimmed.is_empty() {
        "x".to_string()
    } else {
        trimmed.to_string()
    }
}

/// `https://host/org/pack.git#v1` → `pack`.
fn last_segment(s: &str) -> String {
    let s = s.split('#').next().unwrap_or(s).trim_end_matches('/');
    let last = s.rsplit('/').next().unwrap_or(s);
    let name = last.strip_suffix(".git").unwrap_or(last);
    if name.is_empty() {
        "custom".to_string()
    } else {
        name.to_string()
    }
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KB", bytes as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_name("../a b/c"), "-a-b-c");
        assert_eq!(safe_name(".."), "x");
        assert_eq!(safe_name("f0e1-guid"), "f0e1-guid");
        assert_eq!(
            last_segment("https://h/org/python-buildpack.git#v1"),
            "python-buildpack"
        );
        assert_eq!(last_segment("/srv/packs/mine/"), "mine");
    }

    #[test]
    fn failure_files_decide_the_kind() {
        let dir = tempfile::tempdir().unwrap();
        let f = read_failure(dir.path(), 3);
        assert_eq!((f.kind, f.exit_status), ("StagingError", Some(3)));
        assert!(f.message.contains("status 3"));
        fs::write(
            dir.path().join(script::FAILURE_KIND_FILE),
            "NoAppDetected\n",
        )
        .unwrap();
        fs::write(
            dir.path().join(script::FAILURE_MESSAGE_FILE),
            "tried: a, b\n",
        )
        .unwrap();
        let f = read_failure(dir.path(), 1);
        assert_eq!(
            (f.kind, f.message.as_str()),
            ("NoAppDetected", "tried: a, b")
        );
    }

    #[test]
    fn log_keeps_the_last_lines() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut log = LineLog::new(tx);
        for i in 0..30 {
            log.out(format!("line {i}"));
        }
        let tail = log.tail();
        assert_eq!(tail.len(), LOG_TAIL_LINES);
        assert_eq!(tail[0], "line 10");
        assert_eq!(rx.try_recv().unwrap().text, "line 0");
    }
}
