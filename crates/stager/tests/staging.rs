//! End-to-end staging through real runc: the fixture apps in `tests/fixtures/` are zipped,
//! staged in a container by the built-in buildpacks, and the droplets checked. Also the
//! bus-facing role, on the in-process bus.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use strato_blobs::{sha256_file, BlobKind};
use strato_bus::{Bus, InProcBus};
use strato_container::{ContainerDriver, RuncDriver, Stack};
use strato_core::messages::{Limits, LogLine, StagingRequest, StagingResult};
use strato_core::subjects;
use strato_stager::droplet::read_staging_info;
use strato_stager::{Stager, StagerConfig, StagingLine};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The `strato-static` binary, built on demand when `cargo test` did not build it.
fn static_server() -> PathBuf {
    if let Some(found) = strato_stager::buildpacks::find_static_server() {
        return found;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = std::process::Command::new(cargo)
        .args(["build", "-p", "strato-static"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build -p strato-static");
    assert!(status.success(), "cargo build -p strato-static failed");
    strato_stager::buildpacks::find_static_server().expect("strato-static after building it")
}

/// Zips `dir` (keeping file modes) into `out`.
fn zip_dir(dir: &Path, out: &Path) {
    let mut zip = zip::ZipWriter::new(fs::File::create(out).unwrap());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&current)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let meta = fs::metadata(&path).unwrap();
            let options = zip::write::SimpleFileOptions::default()
                .unix_permissions(meta.permissions().mode() & 0o777);
            if meta.is_dir() {
                zip.add_directory(format!("{name}/"), options).unwrap();
                stack.push(path);
            } else {
                zip.start_file(name, options).unwrap();
                zip.write_all(&fs::read(&path).unwrap()).unwrap();
            }
        }
    }
    zip.finish().unwrap();
}

/// A stager on real runc in a fresh temp dir.
struct Harness {
    dir: tempfile::TempDir,
    stager: Arc<Stager>,
    driver: Arc<dyn ContainerDriver>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let runc = RuncDriver::new(dir.path().join("containers"), Stack::host_default());
        runc.check_available()
            .expect("these tests need runc, tini and root: apt-get install runc tini");
        let driver: Arc<dyn ContainerDriver> = Arc::new(runc);
        let mut cfg = StagerConfig::under(&dir.path().join("stager"));
        cfg.static_server_bin = Some(static_server());
        let stager = Arc::new(Stager::new(cfg, Arc::clone(&driver)).unwrap());
        Harness {
            dir,
            stager,
            driver,
        }
    }

    /// A staging request for the fixture (or any) app dir.
    fn request(&self, app_dir: &Path, task: &str) -> StagingRequest {
        let package = self.dir.path().join(format!("{task}.zip"));
        zip_dir(app_dir, &package);
        StagingRequest {
            app_id: format!("app-{task}"),
            app_name: task.to_string(),
            task_id: task.to_string(),
            package_sha256: sha256_file(&package).unwrap(),
            package_uri: format!("file://{}", package.display()),
            buildpack: None,
            environment: vec!["FROM_USER=yes".to_string()],
            limits: Limits {
                mem: 256,
                disk: 1024,
                fds: 1024,
            },
            timeout_secs: 300,
            volumes: vec![],
            cache_volume: None,
            droplet_upload_uri: None,
        }
    }

    async fn stage(&self, req: &StagingRequest) -> (StagingResult, Vec<StagingLine>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let result = self.stager.stage(req, tx, CancellationToken::new()).await;
        let mut lines = Vec::new();
        while let Ok(line) = rx.try_recv() {
            lines.push(line);
        }
        for line in &lines {
            println!("[{}] {}", line.stream, line.text);
        }
        (result, lines)
    }

    /// Asserts no staging containers or work dirs were left behind.
    async fn assert_clean(&self) {
        let left = self.driver.list().await.unwrap();
        assert!(left.is_empty(), "containers left behind: {left:?}");
        let work = fs::read_dir(&self.stager.config().work_dir)
            .unwrap()
            .count();
        assert_eq!(work, 0, "staging work dirs left behind");
    }
}

/// A staged droplet running in a container, as a DEA would run it; deleted on drop.
struct RunningDroplet {
    driver: Arc<dyn ContainerDriver>,
    id: String,
    port: u16,
}

impl RunningDroplet {
    async fn start(h: &Harness, sha: &str, command: &str, name: &str) -> RunningDroplet {
        let droplet = h.stager.blobs().path_of(BlobKind::Droplet, sha).unwrap();
        let dir = h.dir.path().join(format!("run-{name}"));
        fs::create_dir_all(&dir).unwrap();
        tar::Archive::new(flate2::read::GzDecoder::new(
            fs::File::open(&droplet).unwrap(),
        ))
        .unpack(&dir)
        .unwrap();
        std::process::Command::new("chown")
            .args(["-R", "1000:1000"])
            .arg(dir.join("app"))
            .status()
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let id = format!("stager-test-{name}-{}", std::process::id());
        let argv = vec!["/bin/sh".to_string(), "-c".to_string(), command.to_string()];
        let mut spec = strato_container::ContainerSpec::new(id.clone(), argv, 1000, 1000);
        spec.env.push(format!("PORT={port}"));
        spec.env.push("HOME=/home/stackato/app".to_string());
        spec.memory_limit_bytes = Some(256 << 20);
        spec.mounts.push(strato_container::Mount {
            source: dir.join("app"),
            destination: strato_container::APP_HOME.to_string(),
            read_only: false,
        });
        let mut running = h.driver.run(spec).await.unwrap();
        tokio::spawn(async move {
            while let Some(line) = running.output.recv().await {
                println!("[app {}] {}", line.stream.as_str(), line.text);
            }
        });
        RunningDroplet {
            driver: Arc::clone(&h.driver),
            id,
            port,
        }
    }

    /// GETs `path`, retrying while the app starts; returns the whole response.
    async fn get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
                s.write_all(req.as_bytes()).await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                return out;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "app never listened on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(mut self) {
        let id = std::mem::take(&mut self.id);
        self.driver.delete(&id).await.unwrap();
    }
}

impl Drop for RunningDroplet {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            let (driver, id) = (Arc::clone(&self.driver), std::mem::take(&mut self.id));
            // Runs while the test's runtime is still alive (the test is panicking).
            let _ = std::thread::spawn(move || {
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(driver.delete(&id))
            })
            .join();
        }
    }
}

fn staged(result: &StagingResult) -> (&str, &str, &str) {
    match result {
        StagingResult::Staged {
            droplet_sha256,
            detected_buildpack,
            start_command,
        } => (droplet_sha256, detected_buildpack, start_command),
        other => panic!("staging failed: {other:#?}"),
    }
}

fn texts(lines: &[StagingLine]) -> String {
    lines
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lists the droplet's entries.
fn droplet_entries(path: &Path) -> Vec<String> {
    let file = fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[tokio::test]
async fn static_fixture_stages_with_strato_static() {
    let h = Harness::new();
    let req = h.request(&fixtures().join("static"), "static1");
    let (result, lines) = h.stage(&req).await;
    let (sha, buildpack, command) = staged(&result);
    assert_eq!(buildpack, "static");
    assert_eq!(command, ".strato/bin/strato-static /home/stackato/app");
    let droplet = h.stager.blobs().path_of(BlobKind::Droplet, sha).unwrap();
    assert_eq!(sha256_file(&droplet).unwrap(), sha);
    let info = read_staging_info(&droplet).unwrap();
    assert_eq!(
        (
            info.detected_buildpack.as_str(),
            info.start_command.as_str()
        ),
        (buildpack, command)
    );
    let entries = droplet_entries(&droplet);
    for want in [
        "app/index.html",
        "app/.strato/bin/strato-static",
        "staging_info.json",
    ] {
        assert!(
            entries.iter().any(|e| e == want),
            "{want} missing from {entries:?}"
        );
    }
    let all = texts(&lines);
    assert!(all.contains("static app detected"), "{all}");
    assert!(
        all.contains("Installed the strato-static file server"),
        "{all}"
    );

    let app = RunningDroplet::start(&h, sha, command, "static").await;
    let page = app.get("/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("hello from static"), "{page}");
    app.stop().await;
    h.assert_clean().await;
}

#[tokio::test]
async fn python_fixture_stages_a_virtualenv_with_flask() {
    let h = Harness::new();
    let req = h.request(&fixtures().join("python"), "python1");
    let (result, lines) = h.stage(&req).await;
    let (sha, buildpack, command) = staged(&result);
    assert_eq!(buildpack, "python");
    assert_eq!(command, ".venv/bin/python app.py");
    let droplet = h.stager.blobs().path_of(BlobKind::Droplet, sha).unwrap();
    let entries = droplet_entries(&droplet);
    assert!(
        entries
            .iter()
            .any(|e| e.starts_with("app/.venv/lib/python3")
                && e.ends_with("site-packages/flask/__init__.py")),
        "flask not in the droplet's venv"
    );
    assert!(entries.iter().any(|e| e == "app/.profile.d/python.sh"));
    let all = texts(&lines);
    assert!(
        all.contains("Installing dependencies from requirements.txt"),
        "{all}"
    );
    assert!(
        all.contains("Successfully installed") || all.contains("already satisfied"),
        "{all}"
    );

    // The venv works where the droplet runs: unpack it and import flask with its python.
    let unpack = h.dir.path().join("unpacked");
    fs::create_dir_all(&unpack).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(
        fs::File::open(&droplet).unwrap(),
    ))
    .unpack(&unpack)
    .unwrap();
    let cfg = fs::read_to_string(unpack.join("app/.venv/pyvenv.cfg")).unwrap();
    assert!(
        cfg.contains("/usr/bin"),
        "venv not built on the host's python: {cfg}"
    );

    // The droplet runs as the DEA will run it: unprivileged, limited, /usr read-only.
    let app = RunningDroplet::start(&h, sha, command, "python").await;
    let page = app.get("/").await;
    assert!(page.contains("hello from python"), "{page}");
    let whoami = app.get("/whoami").await;
    let body: serde_json::Value =
        serde_json::from_str(whoami.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap();
    assert_eq!(body["uid"], 1000, "{body}");
    assert_eq!(body["memory_limit"], 256u64 << 20, "{body}");
    assert_eq!(body["usr_writable"], false, "{body}");
    app.stop().await;

    // The pip cache persisted for the next staging of this app.
    let cache = h.stager.config().cache_dir.join(&req.app_id).join("pip");
    assert!(cache.is_dir(), "no pip cache at {}", cache.display());

    // Changed code, the same requirements: the last staging's virtualenv, without pip.
    let changed = tempfile::tempdir().unwrap();
    for f in ["app.py", "requirements.txt", "stackato.yml"] {
        fs::copy(fixtures().join("python").join(f), changed.path().join(f)).unwrap();
    }
    fs::write(changed.path().join("extra.txt"), "changed").unwrap();
    let again = StagingRequest {
        app_id: req.app_id.clone(),
        ..h.request(changed.path(), "python1b")
    };
    let (result, lines) = h.stage(&again).await;
    let (sha, _, _) = staged(&result);
    let all = texts(&lines);
    assert!(
        all.contains("Reusing the virtualenv from the staging cache"),
        "{all}"
    );
    assert!(!all.contains("Installing dependencies"), "{all}");
    let droplet = h.stager.blobs().path_of(BlobKind::Droplet, sha).unwrap();
    assert!(
        droplet_entries(&droplet)
            .iter()
            .any(|e| e.ends_with("site-packages/flask/__init__.py")),
        "flask not in the reused venv"
    );

    // Changed requirements: installed again (from the wheels the cache already has).
    fs::write(
        changed.path().join("requirements.txt"),
        "flask\nmarkupsafe\n",
    )
    .unwrap();
    let third = StagingRequest {
        app_id: req.app_id.clone(),
        ..h.request(changed.path(), "python1c")
    };
    let (result, lines) = h.stage(&third).await;
    staged(&result);
    let all = texts(&lines);
    assert!(
        all.contains("Installing dependencies from requirements.txt"),
        "{all}"
    );
    assert!(!all.contains("Reusing the virtualenv"), "{all}");
    h.assert_clean().await;
}

#[tokio::test]
async fn node_fixture_installs_ws_and_serves() {
    let h = Harness::new();
    let req = h.request(&fixtures().join("node"), "node1");
    let (result, lines) = h.stage(&req).await;
    let (sha, buildpack, command) = staged(&result);
    assert_eq!(buildpack, "node");
    assert_eq!(command, "npm start");
    let entries = droplet_entries(&h.stager.blobs().path_of(BlobKind::Droplet, sha).unwrap());
    assert!(
        entries
            .iter()
            .any(|e| e == "app/node_modules/ws/package.json"),
        "ws not installed"
    );
    assert!(texts(&lines).contains("npm"), "no npm output streamed");
    let app = RunningDroplet::start(&h, sha, command, "node").await;
    let page = app.get("/").await;
    assert!(page.contains("hello from node"), "{page}");
    app.stop().await;

    // Changed code, the same package.json: the last staging's node_modules, without npm;
    // the droplet still serves.
    let changed = tempfile::tempdir().unwrap();
    for f in ["package.json", "server.js", "stackato.yml"] {
        fs::copy(fixtures().join("node").join(f), changed.path().join(f)).unwrap();
    }
    let server = fs::read_to_string(changed.path().join("server.js")).unwrap();
    fs::write(
        changed.path().join("server.js"),
        server.replace("hello from node", "hello again from node"),
    )
    .unwrap();
    let again = StagingRequest {
        app_id: req.app_id.clone(),
        ..h.request(changed.path(), "node1b")
    };
    let (result, lines) = h.stage(&again).await;
    let (sha, _, command) = staged(&result);
    let all = texts(&lines);
    assert!(
        all.contains("Reusing node_modules from the staging cache"),
        "{all}"
    );
    assert!(!all.contains("Installing dependencies"), "{all}");
    let app = RunningDroplet::start(&h, sha, command, "node").await;
    let page = app.get("/").await;
    assert!(page.contains("hello again from node"), "{page}");
    app.stop().await;

    // A changed package.json runs npm again.
    let package = fs::read_to_string(changed.path().join("package.json")).unwrap();
    fs::write(
        changed.path().join("package.json"),
        package.replacen('{', "{\n  \"description\": \"changed\",", 1),
    )
    .unwrap();
    let third = StagingRequest {
        app_id: req.app_id.clone(),
        ..h.request(changed.path(), "node1c")
    };
    let (result, lines) = h.stage(&third).await;
    staged(&result);
    assert!(
        texts(&lines).contains("Installing dependencies"),
        "{}",
        texts(&lines)
    );
    h.assert_clean().await;
}

#[tokio::test]
async fn procfile_fixture_runs_hooks_and_uses_the_procfile() {
    let h = Harness::new();
    let req = h.request(&fixtures().join("procfile"), "proc1");
    let (result, lines) = h.stage(&req).await;
    let (_, buildpack, command) = staged(&result);
    assert_eq!(buildpack, "procfile");
    assert_eq!(command, "/bin/sh ./run.sh");
    let all = texts(&lines);
    assert!(
        all.contains("pre-staging hook ran in /home/stackato/app"),
        "{all}"
    );
    assert!(
        all.contains("post-staging hook exited with 1 (ignored)"),
        "{all}"
    );
    h.assert_clean().await;
}

#[tokio::test]
async fn undetectable_app_fails_naming_the_buildpacks_tried() {
    let h = Harness::new();
    let app = h.dir.path().join("plain");
    fs::create_dir_all(&app).unwrap();
    fs::write(app.join("README"), "nothing to run").unwrap();
    let req = h.request(&app, "plain1");
    let (result, _) = h.stage(&req).await;
    match result {
        StagingResult::Failed {
            kind,
            message,
            exit_status,
            log_tail,
        } => {
            assert_eq!(kind, "NoAppDetected");
            assert!(
                message.contains("python, node, static, procfile"),
                "{message}"
            );
            assert_eq!(exit_status, Some(1));
            assert!(
                log_tail.iter().any(|l| l.contains("No buildpack detected")),
                "{log_tail:?}"
            );
        }
        other => panic!("expected NoAppDetected, got {other:?}"),
    }
    h.assert_clean().await;
}

#[tokio::test]
async fn failing_hook_fails_staging_and_slow_staging_times_out() {
    let h = Harness::new();
    let app = h.dir.path().join("hooked");
    fs::create_dir_all(&app).unwrap();
    fs::write(app.join("Procfile"), "web: sleep 1000\n").unwrap();
    fs::write(
        app.join("stackato.yml"),
        "name: hooked\nhooks:\n  pre-staging:\n    - echo \"uid=$(id -u) user=$FROM_USER cache=$BUILDPACK_CACHE\"\n    - exit 7\n",
    )
    .unwrap();
    let req = h.request(&app, "hook1");
    let (result, lines) = h.stage(&req).await;
    let all = texts(&lines);
    assert!(all.contains("uid=1000 user=yes cache=/tmp/cache"), "{all}");
    match result {
        StagingResult::Failed {
            kind,
            message,
            exit_status,
            ..
        } => {
            assert_eq!(kind, "StagingError");
            assert_eq!(exit_status, Some(7));
            assert!(
                message.contains("pre-staging hook failed with exit code 7"),
                "{message}"
            );
        }
        other => panic!("expected a hook failure, got {other:?}"),
    }

    fs::write(
        app.join("stackato.yml"),
        "name: hooked\nhooks:\n  pre-staging: [\"echo slow\", \"sleep 60\"]\n",
    )
    .unwrap();
    let mut req = h.request(&app, "hook2");
    req.timeout_secs = 2;
    let started = std::time::Instant::now();
    let (result, lines) = h.stage(&req).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "timeout took {:?}",
        started.elapsed()
    );
    assert!(texts(&lines).contains("slow"));
    assert!(
        matches!(&result, StagingResult::Failed { kind, .. } if kind == "Timeout"),
        "{result:?}"
    );
    h.assert_clean().await;
}

#[tokio::test]
async fn corrupted_package_is_refused() {
    let h = Harness::new();
    let mut req = h.request(&fixtures().join("static"), "bad1");
    req.package_sha256 = "0".repeat(64);
    let (result, _) = h.stage(&req).await;
    match result {
        StagingResult::Failed { kind, message, .. } => {
            assert_eq!(kind, "StagingError");
            assert!(message.contains("upload the app again"), "{message}");
        }
        other => panic!("expected a checksum failure, got {other:?}"),
    }
    h.assert_clean().await;
}

#[tokio::test]
async fn role_streams_lines_on_both_subjects_before_replying() {
    let h = Harness::new();
    let bus: Arc<dyn Bus> = Arc::new(InProcBus::new());
    let mut cfg = StagerConfig::under(&h.dir.path().join("role"));
    cfg.static_server_bin = Some(static_server());
    let shutdown = CancellationToken::new();
    let role = tokio::spawn(strato_stager::run(
        cfg,
        Arc::clone(&bus),
        Arc::clone(&h.driver),
        shutdown.clone(),
    ));
    let req = h.request(&fixtures().join("static"), "role1");
    let mut staging_log = bus
        .subscribe(&subjects::staging_log(&req.task_id))
        .await
        .unwrap();
    let mut apptail = bus
        .subscribe(&subjects::apptail(&req.app_id))
        .await
        .unwrap();

    // The role subscribes asynchronously; retry until it answers.
    let mut result = None;
    for _ in 0..100 {
        match strato_bus::request_json::<_, StagingResult>(
            bus.as_ref(),
            subjects::STAGER_QUEUE,
            &req,
            Duration::from_secs(120),
        )
        .await
        {
            Ok(r) => {
                result = Some(r);
                break;
            }
            Err(strato_bus::BusError::NoResponders(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("staging request failed: {e}"),
        }
    }
    let result = result.expect("the stager role never answered");
    let (_, buildpack, _) = staged(&result);
    assert_eq!(buildpack, "static");

    let collect = |sub: &mut strato_bus::Subscription| {
        let mut lines = Vec::new();
        while let Some(Some(msg)) = futures_now(sub) {
            lines.push(strato_bus::decode::<LogLine>(&msg).unwrap());
        }
        lines
    };
    let from_log = collect(&mut staging_log);
    let from_tail = collect(&mut apptail);
    assert!(
        from_log
            .iter()
            .any(|l| l.text.contains("static app detected")),
        "{from_log:?}"
    );
    assert_eq!(from_log.len(), from_tail.len());
    assert!(from_log
        .iter()
        .all(|l| l.source == "staging" && l.app == req.app_id));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), role)
        .await
        .expect("role stops on shutdown")
        .unwrap()
        .unwrap();
    h.assert_clean().await;
}

/// The next message if one is already queued, without waiting.
fn futures_now(sub: &mut strato_bus::Subscription) -> Option<Option<strato_bus::Message>> {
    futures::FutureExt::now_or_never(sub.next())
}

/// `requirements:` end to end: a Debian package this host lacks (`hello`) is fetched on the
/// host, unpacked into the droplet's `.apt` and runs from the app's PATH; a pip package is
/// added to requirements.txt and installed; `pre-running` hooks and `cron:` lines reach
/// staging_info.json for the DEA; pre- and post-staging hooks run in order.
#[tokio::test]
async fn requirements_and_hooks_reach_the_droplet() {
    let installed = std::process::Command::new("dpkg")
        .args(["-s", "hello"])
        .output()
        .unwrap();
    assert!(
        !installed.status.success(),
        "this test needs a host without the `hello` package"
    );
    let h = Harness::new();
    let app = h.dir.path().join("reqs");
    fs::create_dir_all(&app).unwrap();
    fs::write(app.join("app.py"), "print('hi')\n").unwrap();
    fs::write(app.join("requirements.txt"), "# no newline at the end").unwrap();
    // As `strato push` uploads it: the resolved manifest, in JSON.
    fs::write(
        app.join("stackato.yml"),
        r#"# Written by `strato push`
{
  "name": "reqs",
  "hooks": {
    "pre-staging": ["echo pre-staging >> hooks.txt"],
    "post-staging": ["hello >> hooks.txt", "echo post-staging >> hooks.txt"],
    "pre-running": ["-echo warm >> hooks.txt"]
  },
  "cron": ["*/5 * * * * ./tick.sh"],
  "requirements": {"pip": ["six"], "ubuntu": ["hello"]}
}
"#,
    )
    .unwrap();
    let req = h.request(&app, "reqs1");
    let (result, lines) = h.stage(&req).await;
    let all = texts(&lines);
    let (sha, buildpack, _) = staged(&result);
    assert_eq!(buildpack, "python");
    assert!(all.contains("Fetching Debian packages: hello"), "{all}");
    assert!(all.contains("Unpacking Debian packages into .apt"), "{all}");
    let droplet = h.stager.blobs().path_of(BlobKind::Droplet, sha).unwrap();
    let info = read_staging_info(&droplet).unwrap();
    assert_eq!(info.cron, vec!["*/5 * * * * ./tick.sh"]);
    assert_eq!(info.pre_running.len(), 1);
    assert!(info.pre_running[0].ignore_failure);
    let entries = droplet_entries(&droplet);
    assert!(
        entries.iter().any(|e| e == "app/.apt/usr/bin/hello"),
        "{entries:?}"
    );
    let command = "cd /home/stackato/app && for f in .profile.d/*.sh; do . \"$f\"; done; \
                   hello > out-hello.txt; python -c 'import six; print(six.__name__)' > out-six.txt; \
                   exec python3 -m http.server \"$PORT\"";
    let run = RunningDroplet::start(&h, sha, command, "reqs").await;
    let hooks = run.get("/hooks.txt").await;
    assert!(
        hooks.ends_with("pre-staging\nHello, world!\npost-staging\n"),
        "hooks ran in order, post-staging with the package on PATH: {hooks}"
    );
    assert!(run.get("/out-hello.txt").await.ends_with("Hello, world!\n"));
    assert!(run.get("/out-six.txt").await.ends_with("six\n"));
    let requirements = run.get("/requirements.txt").await;
    assert!(
        requirements.ends_with("# no newline at the end\nsix\n"),
        "{requirements}"
    );
    run.stop().await;

    // An unknown package fails staging with apt's reason.
    fs::write(
        app.join("stackato.yml"),
        "requirements:\n  ubuntu: [no-such-package-strato]\n",
    )
    .unwrap();
    let (result, _) = h.stage(&h.request(&app, "reqs2")).await;
    match result {
        StagingResult::Failed { message, .. } => assert!(
            message.contains("no-such-package-strato") && message.contains("apt-cache search"),
            "{message}"
        ),
        other => panic!("expected a failure, got {other:?}"),
    }
    h.assert_clean().await;
}
