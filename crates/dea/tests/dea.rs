//! The DEA end to end with the real runc driver and the in-process bus: a droplet made here
//! (a shell start script exec'ing `python3 -m http.server`) is started, routed, inspected,
//! crashed, stopped and shut down. Needs root, like the DEA in production.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use strato_bus::{publish_json, request_json, Bus, InProcBus, SharedBus, Subscription};
use strato_container::{ContainerDriver, ContainerSpec, RuncDriver, Stack};
use strato_core::messages::{
    exec_frames, DeaAdvertise, DeaHeartbeat, DropletExited, ExecReply, ExecRequest, ExitReason,
    FindDroplet, HealthCheck, InstanceInfo, InstanceState, Limits, LogLine, RouteRegistration,
    SessionExit, SessionReply, SessionRequest, StartRequest, StopRequest, TerminalSize,
};
use strato_core::subjects;
use strato_dea::{DeaConfig, FilesReply, FilesRequest};
use tokio_util::sync::CancellationToken;

const UID: u32 = 4401;
const GID: u32 = 4401;
const WAIT: Duration = Duration::from_secs(30);

const START_SH: &str = "#!/bin/sh\nid -u > whoami.txt\nenv > env.txt\necho starting on $PORT\nexec python3 -m http.server \"$PORT\"\n";

/// A DEA running on a fresh dir; dropping it cancels the DEA and force-removes every
/// container in its runc state dir.
struct Fixture {
    dir: tempfile::TempDir,
    bus: SharedBus,
    driver: Arc<RuncDriver>,
    shutdown: CancellationToken,
    dea: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    cfg: DeaConfig,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let driver = RuncDriver::new(dir.path().join("runc-state"), Stack::host_default());
        driver
            .check_available()
            .expect("runc must be usable for these tests");
        let base_port = free_port();
        let mut cfg = DeaConfig::new(
            format!("dea-{name}-{}", std::process::id()),
            "127.0.0.1",
            dir.path(),
        );
        cfg.port_range = (base_port, base_port.saturating_add(40));
        cfg.uid = UID;
        cfg.gid = GID;
        cfg.memory_mb = 2048;
        cfg.advertise_interval = Duration::from_millis(200);
        cfg.heartbeat_interval = Duration::from_millis(200);
        cfg.register_interval = Duration::from_millis(500);
        cfg.stop_grace = Duration::from_secs(3);
        cfg.crash_retention = Duration::from_secs(60);
        Fixture {
            dir,
            bus: Arc::new(InProcBus::new()),
            driver: Arc::new(driver),
            shutdown: CancellationToken::new(),
            dea: None,
            cfg,
        }
    }

    /// Starts the DEA and waits until it advertises (its subscriptions are in place).
    async fn start(&mut self) {
        let mut ads = self.bus.subscribe(subjects::DEA_ADVERTISE).await.unwrap();
        let driver: Arc<dyn ContainerDriver> = self.driver.clone();
        self.dea = Some(tokio::spawn(strato_dea::run(
            self.cfg.clone(),
            self.bus.clone(),
            driver,
            self.shutdown.clone(),
        )));
        let ad: DeaAdvertise = next(&mut ads, |ad: &DeaAdvertise| ad.id == self.cfg.id).await;
        assert_eq!(ad.available_memory, 2048);
        assert_eq!(ad.stacks, vec!["default".to_string()]);
    }

    async fn stop_dea(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.dea.take() {
            tokio::time::timeout(WAIT, handle)
                .await
                .expect("the DEA shuts down")
                .unwrap()
                .unwrap();
        }
    }

    fn droplet(&self, start_sh: &str) -> (String, String) {
        let path = make_droplet(self.dir.path(), start_sh);
        let sha = sha256(&path);
        (sha, format!("file://{}", path.display()))
    }

    fn start_request(&self, app: &str, index: u32, start_sh: &str) -> StartRequest {
        let (sha, uri) = self.droplet(start_sh);
        StartRequest {
            droplet: app.to_string(),
            name: "test-app".to_string(),
            version: "v1".to_string(),
            index,
            droplet_sha256: sha,
            droplet_uri: uri,
            uris: vec!["test-app.example.com".to_string()],
            limits: Limits {
                mem: 128,
                disk: 512,
                fds: 1024,
            },
            env: vec!["USER_VAR=from-user".to_string()],
            start_command: None,
            health_check: HealthCheck {
                timeout: 20,
                http_path: Some("/".to_string()),
                process_only: false,
            },
            space_id: "space-1".to_string(),
            space_name: "dev".to_string(),
            services: serde_json::Value::Null,
            volumes: vec![],
        }
    }

    fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc-state/runc")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let runc = |args: &[&str]| {
            std::process::Command::new("/usr/sbin/runc")
                .arg("--root")
                .arg(self.runc_root())
                .args(args)
                .output()
        };
        if let Ok(out) = runc(&["list", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = runc(&["delete", "--force", id]);
            }
        }
    }
}

fn free_port() -> u16 {
    // A base well inside the ephemeral range; the DEA skips ports it cannot bind.
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    port.min(65000)
}

fn make_droplet(dir: &Path, start_sh: &str) -> PathBuf {
    let path = dir.join(format!("droplet-{}.tgz", uuid::Uuid::new_v4().simple()));
    let file = std::fs::File::create(&path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, body: &[u8], mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        tar.append_data(&mut header, name, body).unwrap();
    };
    add("app/start.sh", start_sh.as_bytes(), 0o755);
    add("app/index.html", b"<h1>hello from strato</h1>\n", 0o644);
    add(
        "staging_info.json",
        br#"{"detected_buildpack":"test","start_command":"./start.sh"}"#,
        0o644,
    );
    tar.into_inner().unwrap().finish().unwrap();
    path
}

fn sha256(path: &Path) -> String {
    strato_blobs::sha256_file(path).unwrap()
}

/// The next message on `sub` that decodes as `T` and satisfies `pred`.
async fn next<T: DeserializeOwned>(sub: &mut Subscription, pred: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, sub.next())
            .await
            .expect("expected message did not arrive in time")
            .expect("subscription ended");
        if let Ok(value) = serde_json::from_slice::<T>(&msg.payload) {
            if pred(&value) {
                return value;
            }
        }
    }
}

async fn http_get(port: u16, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .expect("the instance serves HTTP");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

async fn exec(bus: &dyn Bus, dea: &str, instance: &str, argv: &[&str]) -> ExecReply {
    let req = ExecRequest {
        instance: instance.to_string(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        timeout_secs: 10,
    };
    request_json(bus, &subjects::dea_exec(dea), &req, WAIT)
        .await
        .expect("exec reply")
}

#[tokio::test]
async fn runs_routes_crashes_stops_and_shuts_down() {
    let mut fx = Fixture::new("life");
    let bus = fx.bus.clone();
    let app = format!("app-{}", uuid::Uuid::new_v4().simple());
    let mut registers = bus.subscribe(subjects::ROUTER_REGISTER).await.unwrap();
    let mut unregisters = bus.subscribe(subjects::ROUTER_UNREGISTER).await.unwrap();
    let mut exits = bus.subscribe(subjects::DROPLET_EXITED).await.unwrap();
    let mut heartbeats = bus.subscribe(subjects::DEA_HEARTBEAT).await.unwrap();
    let mut logs = bus.subscribe(&subjects::apptail(&app)).await.unwrap();
    fx.start().await;
    let dea_id = fx.cfg.id.clone();

    // Start: the instance passes its HTTP health check and is routed.
    let started = Instant::now();
    let req = fx.start_request(&app, 0, START_SH);
    publish_json(bus.as_ref(), &subjects::dea_start(&dea_id), &req)
        .await
        .unwrap();
    let route: RouteRegistration = next(&mut registers, |r: &RouteRegistration| r.app == app).await;
    println!("start request to router.register: {:?}", started.elapsed());
    assert_eq!(route.uris, vec!["test-app.example.com".to_string()]);
    assert_eq!(route.host, "127.0.0.1");
    assert_eq!(route.dea, dea_id);
    let instance = route.private_instance_id.clone();
    let (status, body) = http_get(route.port, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("hello from strato"), "{body}");

    // Runs as the unprivileged app user, with the platform's environment.
    let (_, whoami) = http_get(route.port, "/whoami.txt").await;
    assert_eq!(whoami.trim(), UID.to_string());
    let (_, env) = http_get(route.port, "/env.txt").await;
    let vcap = env
        .lines()
        .find_map(|l| l.strip_prefix("VCAP_APPLICATION="))
        .expect("VCAP_APPLICATION is set");
    let vcap: serde_json::Value = serde_json::from_str(vcap).unwrap();
    assert_eq!(vcap["application_name"], "test-app");
    assert_eq!(vcap["instance_id"], instance.as_str());
    assert!(env.contains(&format!("PORT={}\n", route.port)), "{env}");
    assert!(env.contains("USER_VAR=from-user"));
    assert!(env.contains("HOME=/home/stackato/app"));
    assert!(env.contains("MEMORY_LIMIT=128m"));

    // Output reaches apptail as LogLines with the index.
    let line: LogLine = next(&mut logs, |l: &LogLine| l.text.contains("starting on")).await;
    assert_eq!(line.source, "app");
    assert_eq!(line.instance_index, Some(0));
    let _: LogLine = next(&mut logs, |l: &LogLine| l.text.contains("GET /whoami.txt")).await;

    // Heartbeat and find.droplet (with stats) see it running.
    let _: DeaHeartbeat = next(&mut heartbeats, |hb: &DeaHeartbeat| {
        hb.droplets
            .iter()
            .any(|d| d.instance == instance && d.state == InstanceState::Running)
    })
    .await;
    let find = FindDroplet {
        droplet: app.clone(),
        include_stats: true,
    };
    let infos: Vec<InstanceInfo> =
        request_json(bus.as_ref(), subjects::DEA_FIND_DROPLET, &find, WAIT)
            .await
            .unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].port, route.port);
    assert!(infos[0].mem_bytes > 0, "{:?}", infos[0]);
    assert_eq!(infos[0].mem_quota, 128 * 1024 * 1024);
    // A DEA without instances of an app answers at once with none, so a collector
    // asking every DEA need not wait for its timeout.
    let other = FindDroplet {
        droplet: "no-such-app".into(),
        include_stats: false,
    };
    let none: Vec<InstanceInfo> =
        request_json(bus.as_ref(), subjects::DEA_FIND_DROPLET, &other, WAIT)
            .await
            .unwrap();
    assert!(none.is_empty());

    // Exec and files go through the DEA.
    let reply = exec(bus.as_ref(), &dea_id, &instance, &["id", "-u"]).await;
    assert_eq!(reply.stdout.trim(), UID.to_string(), "{reply:?}");
    let files: FilesReply = request_json(
        bus.as_ref(),
        &subjects::dea_files(&dea_id),
        &FilesRequest {
            instance: instance.clone(),
            path: "app/start.sh".into(),
        },
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(files.content.as_deref(), Some(START_SH));

    // Kill the app (python3 under tini): CRASHED with its status, routes out, files kept.
    // In the background, after this exec returned: killing the app ends the container,
    // and an exec still running in it would end with it.
    let kill = "{ sleep 0.3; kill -9 $(for p in /proc/[0-9]*; do [ \"$(cat $p/comm)\" = python3 ] && echo ${p#/proc/}; done); } >/dev/null 2>&1 &";
    let reply = exec(bus.as_ref(), &dea_id, &instance, &["sh", "-c", kill]).await;
    assert_eq!(reply.exit_status, 0, "{reply:?}");
    let exited: DropletExited = next(&mut exits, |e: &DropletExited| e.instance == instance).await;
    assert_eq!(exited.reason, ExitReason::Crashed);
    assert_eq!(exited.exit_status, Some(128 + 9));
    assert!(exited.crash_timestamp.is_some());
    let gone: RouteRegistration = next(&mut unregisters, |r: &RouteRegistration| {
        r.private_instance_id == instance
    })
    .await;
    assert_eq!(gone.port, route.port);
    let _: DeaHeartbeat = next(&mut heartbeats, |hb: &DeaHeartbeat| {
        hb.droplets
            .iter()
            .any(|d| d.instance == instance && d.state == InstanceState::Crashed)
    })
    .await;
    let files: FilesReply = request_json(
        bus.as_ref(),
        &subjects::dea_files(&dea_id),
        &FilesRequest {
            instance: instance.clone(),
            path: "app".into(),
        },
        WAIT,
    )
    .await
    .unwrap();
    let names: Vec<String> = files.entries.unwrap().into_iter().map(|e| e.name).collect();
    assert!(names.contains(&"env.txt".to_string()), "{names:?}");

    // A second instance, stopped with dea.stop: STOPPED, container and dir gone.
    let req = fx.start_request(&app, 1, START_SH);
    publish_json(bus.as_ref(), &subjects::dea_start(&dea_id), &req)
        .await
        .unwrap();
    let route: RouteRegistration = next(&mut registers, |r: &RouteRegistration| {
        r.app == app && r.private_instance_id != instance
    })
    .await;
    let second = route.private_instance_id.clone();
    let stop = StopRequest {
        droplet: app.clone(),
        indices: Some(vec![1]),
        ..StopRequest::default()
    };
    publish_json(bus.as_ref(), subjects::DEA_STOP, &stop)
        .await
        .unwrap();
    let _: RouteRegistration = next(&mut unregisters, |r: &RouteRegistration| {
        r.private_instance_id == second
    })
    .await;
    let exited: DropletExited = next(&mut exits, |e: &DropletExited| e.instance == second).await;
    assert_eq!(exited.reason, ExitReason::Stopped);
    assert!(!fx.dir.path().join("containers").join(&second).exists());
    let containers = fx.driver.list().await.unwrap();
    assert!(
        !containers.iter().any(|c| c.contains(&second)),
        "{containers:?}"
    );

    // A third instance is stopped by the DEA's shutdown.
    let req = fx.start_request(&app, 2, START_SH);
    publish_json(bus.as_ref(), &subjects::dea_start(&dea_id), &req)
        .await
        .unwrap();
    let route: RouteRegistration = next(&mut registers, |r: &RouteRegistration| {
        r.app == app && r.private_instance_id != instance && r.private_instance_id != second
    })
    .await;
    let third = route.private_instance_id.clone();
    fx.stop_dea().await;
    let exited: DropletExited = next(&mut exits, |e: &DropletExited| e.instance == third).await;
    assert_eq!(exited.reason, ExitReason::DeaShutdown);
    assert!(fx.driver.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn failed_health_check_crashes_and_stale_containers_are_removed() {
    let mut fx = Fixture::new("health");
    let bus = fx.bus.clone();
    // A container left by a "previous run".
    let stale_dir = fx.dir.path().join("stale-app");
    std::fs::create_dir(&stale_dir).unwrap();
    let mut stale = ContainerSpec::new("dea-stale", vec!["sleep".into(), "1000".into()], UID, GID);
    stale.cwd = "/".into();
    let _running = fx.driver.run(stale).await.unwrap();
    assert_eq!(
        fx.driver.list().await.unwrap(),
        vec!["dea-stale".to_string()]
    );

    let app = format!("app-{}", uuid::Uuid::new_v4().simple());
    let mut exits = bus.subscribe(subjects::DROPLET_EXITED).await.unwrap();
    fx.start().await;
    assert!(
        fx.driver.list().await.unwrap().is_empty(),
        "stale container removed"
    );

    let mut req = fx.start_request(
        &app,
        0,
        "#!/bin/sh\necho never listening\nexec sleep 1000\n",
    );
    req.health_check = HealthCheck {
        timeout: 1,
        http_path: None,
        process_only: false,
    };
    let started = Instant::now();
    publish_json(bus.as_ref(), &subjects::dea_start(&fx.cfg.id), &req)
        .await
        .unwrap();
    let exited: DropletExited = next(&mut exits, |e: &DropletExited| e.droplet == app).await;
    assert_eq!(exited.reason, ExitReason::Crashed);
    assert!(
        exited.exit_description.contains("health check"),
        "{exited:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        fx.driver.list().await.unwrap().is_empty(),
        "the container is removed"
    );

    // A droplet whose sha does not match is refused: CRASHED with the reason.
    let mut bad = fx.start_request(&app, 1, START_SH);
    bad.droplet_sha256 = "0".repeat(64);
    publish_json(bus.as_ref(), &subjects::dea_start(&fx.cfg.id), &bad)
        .await
        .unwrap();
    let exited: DropletExited = next(&mut exits, |e: &DropletExited| {
        e.droplet == app && e.index == 1
    })
    .await;
    assert!(exited.exit_description.contains("sha256"), "{exited:?}");
    fx.stop_dea().await;
}

// ---- streaming exec sessions (`dea.<id>.session` + the DEA's WebSocket endpoint) ----

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn offer_session(
    bus: &dyn Bus,
    dea: &str,
    instance: &str,
    argv: &[&str],
    tty: Option<TerminalSize>,
) -> SessionReply {
    let req = SessionRequest {
        instance: instance.to_string(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        tty,
        term: Some("xterm".into()),
    };
    request_json(bus, &subjects::dea_session(dea), &req, WAIT)
        .await
        .expect("session reply")
}

async fn connect_session(
    url: &str,
    token: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

async fn send_frame(ws: &mut Ws, channel: u8, data: &[u8]) {
    use futures::SinkExt;
    let mut frame = vec![channel];
    frame.extend_from_slice(data);
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(frame))
        .await
        .unwrap();
}

/// Output so far on (stdout, stderr), and the exit once it came.
#[derive(Default)]
struct SessionOutput {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<SessionExit>,
}

/// Reads frames until `done` holds for what arrived, or the session ends.
async fn read_until(ws: &mut Ws, out: &mut SessionOutput, done: impl Fn(&SessionOutput) -> bool) {
    use futures::StreamExt;
    let deadline = Instant::now() + WAIT;
    while !done(out) && out.exit.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "session output did not arrive in time; so far: {:?}",
                    String::from_utf8_lossy(&out.stdout)
                )
            });
        let Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(data))) = msg else {
            break;
        };
        match data.split_first() {
            Some((&exec_frames::STDOUT, rest)) => out.stdout.extend_from_slice(rest),
            Some((&exec_frames::STDERR, rest)) => out.stderr.extend_from_slice(rest),
            Some((&exec_frames::EXIT, rest)) => out.exit = serde_json::from_slice(rest).ok(),
            _ => {}
        }
    }
}

async fn run_to_exit(ws: &mut Ws) -> SessionOutput {
    let mut out = SessionOutput::default();
    read_until(ws, &mut out, |_| false).await;
    out
}

#[tokio::test]
async fn sessions_stream_commands_stdin_and_a_pty() {
    let mut fx = Fixture::new("session");
    let bus = fx.bus.clone();
    let app = format!("app-{}", uuid::Uuid::new_v4().simple());
    let mut registers = bus.subscribe(subjects::ROUTER_REGISTER).await.unwrap();
    fx.start().await;
    let dea = fx.cfg.id.clone();
    let req = fx.start_request(&app, 0, START_SH);
    publish_json(bus.as_ref(), &subjects::dea_start(&dea), &req)
        .await
        .unwrap();
    let route: RouteRegistration = next(&mut registers, |r: &RouteRegistration| r.app == app).await;
    let instance = route.private_instance_id;

    // Output on both streams, the exit code, the app dir and the app user.
    let offer = offer_session(
        bus.as_ref(),
        &dea,
        &instance,
        &["sh", "-c", "echo out; pwd; id -u; echo err >&2; exit 3"],
        None,
    )
    .await;
    assert!(offer.error.is_none(), "{offer:?}");
    assert_eq!(offer.token.len(), 32);
    let mut ws = connect_session(&offer.url, &offer.token).await.unwrap();
    let out = run_to_exit(&mut ws).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("out\n/home/stackato/app\n{UID}\n")
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.exit.unwrap().code, 3);

    // The token was used: a second connection is refused, and so is a made-up token.
    assert!(connect_session(&offer.url, &offer.token).await.is_err());
    assert!(connect_session(&offer.url, &"0".repeat(32)).await.is_err());

    // Stdin reaches the command, also more than a pipe buffer of it, until STDIN_EOF.
    let offer = offer_session(
        bus.as_ref(),
        &dea,
        &instance,
        &["sh", "-c", "cat > in.txt; wc -c < in.txt; head -c 5 in.txt"],
        None,
    )
    .await;
    let mut ws = connect_session(&offer.url, &offer.token).await.unwrap();
    let payload: Vec<u8> = b"hello"
        .iter()
        .copied()
        .chain((0..300_000u32).map(|i| b'a' + (i % 26) as u8))
        .collect();
    for chunk in payload.chunks(64 * 1024) {
        send_frame(&mut ws, exec_frames::STDIN, chunk).await;
    }
    send_frame(&mut ws, exec_frames::STDIN_EOF, b"").await;
    let out = run_to_exit(&mut ws).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\nhello", payload.len())
    );
    assert_eq!(out.exit.unwrap().code, 0);

    // A pty session: a terminal inside the container, its size, and a resize.
    let offer = offer_session(
        bus.as_ref(),
        &dea,
        &instance,
        &[],
        Some(TerminalSize { rows: 24, cols: 80 }),
    )
    .await;
    let mut ws = connect_session(&offer.url, &offer.token).await.unwrap();
    let mut out = SessionOutput::default();
    send_frame(&mut ws, exec_frames::STDIN, b"tty; stty size\n").await;
    read_until(&mut ws, &mut out, |o| {
        let text = String::from_utf8_lossy(&o.stdout);
        text.contains("/dev/pts/") && text.contains("24 80")
    })
    .await;
    let resize = serde_json::to_vec(&TerminalSize {
        rows: 40,
        cols: 100,
    })
    .unwrap();
    send_frame(&mut ws, exec_frames::RESIZE, &resize).await;
    // runc applies the size on SIGWINCH, asynchronously: ask until it shows.
    let deadline = Instant::now() + WAIT;
    while !String::from_utf8_lossy(&out.stdout).contains("40 100") {
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = out.stdout.len();
        send_frame(&mut ws, exec_frames::STDIN, b"stty size\n").await;
        read_until(&mut ws, &mut out, |o| {
            o.stdout.len() > before && o.stdout.ends_with(b"$ ")
        })
        .await;
    }
    send_frame(&mut ws, exec_frames::STDIN, b"exit 7\n").await;
    read_until(&mut ws, &mut out, |_| false).await;
    assert_eq!(
        out.exit.as_ref().map(|e| e.code),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Closing the socket early kills the command.
    let offer = offer_session(bus.as_ref(), &dea, &instance, &["sleep", "1000"], None).await;
    let ws = connect_session(&offer.url, &offer.token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(ws);
    let deadline = Instant::now() + WAIT;
    loop {
        let ps = exec(
            bus.as_ref(),
            &dea,
            &instance,
            &["sh", "-c", "cat /proc/[0-9]*/comm"],
        )
        .await;
        if !ps.stdout.lines().any(|l| l == "sleep") {
            break;
        }
        assert!(Instant::now() < deadline, "sleep still runs: {ps:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // No session for an instance this DEA does not run.
    let offer = offer_session(bus.as_ref(), &dea, "no-such-instance", &["true"], None).await;
    assert!(offer.error.unwrap().contains("not running"));
    fx.stop_dea().await;
}
