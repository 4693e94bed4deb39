//! A micro cloud as a user meets it: `strato target/login/push`, apps answering through the
//! router by name, crash recovery, a daemon restart, and bad input refused clearly.
//! All in one test binary so the tests run in parallel, each with its own cloud.

use std::path::Path;
use std::time::{Duration, Instant};

use strato_e2e::{fixture, MicroCloud};

fn blobs(mc: &MicroCloud, ext: &str) -> usize {
    std::fs::read_dir(mc.home.path().join("blobs"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(ext))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn push_static_procfile_python_and_delete() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();

    let out = mc.strato_ok(&fixture("static"), &["push", "-n"]);
    assert!(
        out.contains("staticfixture.localhost"),
        "push prints the app's URL:\n{out}"
    );
    mc.wait_for(
        "staticfixture.localhost",
        "/",
        "hello from static",
        Duration::from_secs(30),
    );

    let out = mc.strato_ok(&fixture("procfile"), &["push", "-n"]);
    assert!(
        out.contains("pre-staging hook ran"),
        "staging output (with the hook) streams to the client:\n{out}"
    );
    mc.wait_for(
        "procfixture.localhost",
        "/",
        "hello from procfile",
        Duration::from_secs(30),
    );

    mc.strato_ok(&fixture("python"), &["push", "-n"]);
    mc.wait_for(
        "pyfixture.localhost",
        "/",
        "hello from python",
        Duration::from_secs(30),
    );
    let (_, body) = mc.get("pyfixture.localhost", "/whoami");
    let json_start = body.find('{').expect("json body");
    let who: serde_json::Value =
        serde_json::from_str(body[json_start..].trim_end_matches(|c: char| c != '}'))
            .expect("whoami json");
    assert_ne!(who["uid"], 0, "the app must not run as root: {who}");
    assert_eq!(
        who["memory_limit"],
        128 * 1024 * 1024,
        "the app runs under its 128M memory limit: {who}"
    );
    assert_eq!(
        who["usr_writable"], false,
        "/usr is read-only inside the instance: {who}"
    );

    // The app's output reaches `strato logs`.
    let until = Instant::now() + Duration::from_secs(10);
    let mut logs = String::new();
    while !logs.contains("GET /whoami") && Instant::now() < until {
        logs = mc.strato_ok(
            mc.client_home.path(),
            &["logs", "pyfixture", "--num", "200"],
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        logs.contains("GET /whoami"),
        "the app's access log is in `strato logs`:\n{logs}"
    );

    // map and unmap take effect on the running instance, no restart.
    mc.strato_ok(
        mc.client_home.path(),
        &["map", "pyfixture", "pyalias.localhost"],
    );
    mc.wait_for(
        "pyalias.localhost",
        "/",
        "hello from python",
        Duration::from_secs(15),
    );
    mc.strato_ok(
        mc.client_home.path(),
        &["unmap", "pyfixture", "pyalias.localhost"],
    );
    let until = Instant::now() + Duration::from_secs(30);
    while mc.get("pyalias.localhost", "/").0 != 404 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        mc.get("pyalias.localhost", "/").0,
        404,
        "an unmapped route stops serving after its drain"
    );
    mc.wait_for(
        "pyfixture.localhost",
        "/",
        "hello from python",
        Duration::from_secs(5),
    );

    let apps = mc.strato_ok(mc.client_home.path(), &["apps"]);
    for name in ["staticfixture", "procfixture", "pyfixture"] {
        assert!(apps.contains(name), "`strato apps` lists {name}:\n{apps}");
    }

    // Unknown hosts get the router's 404 page naming the host.
    let (status, body) = mc.get("nosuchapp.localhost", "/");
    assert_eq!(status, 404);
    assert!(body.contains("nosuchapp.localhost"), "{body}");

    // Delete removes the route, the container and the droplet.
    let containers_before = mc.containers().len();
    let droplets_before = blobs(&mc, ".tgz");
    let packages_before = blobs(&mc, ".zip");
    mc.strato_ok(mc.client_home.path(), &["delete", "staticfixture", "-n"]);
    let until = Instant::now() + Duration::from_secs(30);
    while mc.get("staticfixture.localhost", "/").0 != 404 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        mc.get("staticfixture.localhost", "/").0,
        404,
        "the route is gone after delete"
    );
    let until = Instant::now() + Duration::from_secs(30);
    while mc.containers().len() >= containers_before && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        mc.containers().len(),
        containers_before - 1,
        "the instance's container is gone"
    );
    assert_eq!(
        blobs(&mc, ".tgz"),
        droplets_before - 1,
        "the droplet is gone"
    );
    assert_eq!(
        blobs(&mc, ".zip"),
        packages_before - 1,
        "the package is gone"
    );
    let apps = mc.strato_ok(mc.client_home.path(), &["apps"]);
    assert!(!apps.contains("staticfixture"), "{apps}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_websocket_crash_recovery_and_restart() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let mut mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    mc.strato_ok(&fixture("node"), &["push", "-n"]);
    mc.wait_for(
        "nodefixture.localhost",
        "/",
        "hello from node",
        Duration::from_secs(30),
    );

    // A WebSocket echo through the router.
    let mut req = format!("ws://127.0.0.1:{}/", mc.port)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "host",
        format!("nodefixture.localhost:{}", mc.port)
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket through the router");
    ws.send(Message::Text("ping through strato".into()))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo in time")
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "ping through strato");
    drop(ws);

    // Kill the app's process: the health manager gets it serving again.
    let pid = mc.app_pid("server.js").expect("the node app's process");
    let back = mc.kill_and_wait_back(
        pid,
        "nodefixture.localhost",
        "hello from node",
        Duration::from_secs(60),
    );
    println!("crash -> serving again: {back:?}");
    // The health manager's decision is one of the app's events.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let events = mc.strato_ok(&fixture("node"), &["events", "nodefixture"]);
        if events
            .lines()
            .any(|l| l.contains("app.health_manager.start") && l.contains("crashed (index 0)"))
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "no health manager event for the crash:\n{events}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A restart of stratod brings the started app back.
    mc.restart().expect("stratod restarts");
    let t = mc.wait_for(
        "nodefixture.localhost",
        "/",
        "hello from node",
        Duration::from_secs(90),
    );
    println!("stratod restart -> app serving again: {t:?}");

    let status = mc.kato(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "kato status: {text}");
    for role in ["controller", "router", "dea", "stager", "health_manager"] {
        assert!(
            text.lines()
                .any(|l| l.contains(role) && l.contains("running")),
            "{role} running in:\n{text}"
        );
    }
}

/// `GET url` as the user `auth` names, as JSON.
async fn get_json(http: &reqwest::Client, auth: &str, url: String) -> serde_json::Value {
    http.get(url)
        .header("authorization", auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_streams_live_and_bad_input_is_refused() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();

    // Nothing detectable: the error names the buildpacks tried.
    let empty = tempfile::tempdir().unwrap();
    write(empty.path(), "README.txt", "no app here\n");
    let out = mc.strato(empty.path(), &["push", "nothing", "-n"]);
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("python") && all.contains("node") && all.contains("static"),
        "names the buildpacks tried:\n{all}"
    );

    // An invalid name is refused with CF's error.
    let out = mc.strato(&fixture("static"), &["push", "bad name!", "-n"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may contain only"), "{err}");

    // Staging output reaches the client while staging still runs.
    let slow = tempfile::tempdir().unwrap();
    write(slow.path(), "index.html", "<p>hello from slow</p>\n");
    write(
        slow.path(),
        "stackato.yml",
        "name: slow\nmem: 64M\nhooks:\n  pre-staging:\n    - echo staging-begins\n    - sleep 4\n",
    );
    mc.strato_ok(slow.path(), &["push", "-n", "--no-start"]);
    let http = reqwest::Client::new();
    let tok: serde_json::Value = http
        .post(format!("{}/oauth/token", mc.url()))
        .basic_auth("cf", Some(""))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", mc.password.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auth = format!("bearer {}", tok["access_token"].as_str().unwrap());
    let apps: serde_json::Value = http
        .get(format!("{}/v2/apps?q=name:slow", mc.url()))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let guid = apps["resources"][0]["metadata"]["guid"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = http
        .put(format!("{}/v2/apps/{guid}?stage_async=true", mc.url()))
        .header("authorization", &auth)
        .json(&serde_json::json!({"state": "STARTED"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let log_url = resp.headers()["x-app-staging-log"]
        .to_str()
        .unwrap()
        .to_string();
    let mut log = http
        .get(&log_url)
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("staging-begins") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), log.chunk())
            .await
            .expect("a staging line in time")
            .unwrap()
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let inst = http
        .get(format!("{}/v2/apps/{guid}/instances", mc.url()))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(
        inst.status(),
        400,
        "staging is still running when its first line arrived"
    );
    let body: serde_json::Value = inst.json().await.unwrap();
    assert_eq!(body["error_code"], "CF-NotStaged");
    while let Some(chunk) = log.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    mc.wait_for(
        "slow.localhost",
        "/",
        "hello from slow",
        Duration::from_secs(30),
    );

    // A failed staging leaves the running version serving.
    write(slow.path(), "index.html", "<p>version two</p>\n");
    write(
        slow.path(),
        "stackato.yml",
        "name: slow\nmem: 64M\nhooks:\n  pre-staging:\n    - echo about-to-fail\n    - exit 3\n",
    );
    let out = mc.strato(slow.path(), &["push", "-n"]);
    assert!(!out.status.success(), "a failed staging fails the push");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("about-to-fail"),
        "the log tail reaches the user:\n{all}"
    );
    assert!(
        all.contains("exit status 3"),
        "the hook's exit code reaches the user:\n{all}"
    );
    // And a client that did not follow the log finds it on the app.
    let apps = get_json(&http, &auth, format!("{}/v2/apps?q=name:slow", mc.url())).await;
    let entity = &apps["resources"][0]["entity"];
    assert_eq!(entity["staging_failed_reason"], "StagingError", "{entity}");
    assert!(
        entity["staging_failed_description"]
            .as_str()
            .is_some_and(|d| d.contains("exit status 3")),
        "{entity}"
    );
    let (status, body) = mc.get("slow.localhost", "/");
    assert_eq!(status, 200);
    assert!(
        body.contains("hello from slow"),
        "the previous droplet keeps serving: {body}"
    );

    // The operator's detection order: a typo is refused, naming the built-ins...
    let out = mc.kato(&["config", "set", "stager", "buildpack_order", "pythn,static"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a typo is refused");
    assert!(err.contains("'pythn'") && err.contains("procfile"), "{err}");
    // ...and with procfile before static, an app with both a Procfile and an index.html
    // is staged by the procfile pack.
    let set = mc.kato(&[
        "config",
        "set",
        "stager",
        "buildpack_order",
        "procfile,static",
    ]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    for args in [
        &["restart", "stager"][..],
        &["process", "ready", "stager", "-b", "30"],
    ] {
        let out = mc.kato(args);
        assert!(
            out.status.success(),
            "kato {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let both = tempfile::tempdir().unwrap();
    write(both.path(), "stackato.yml", "name: both\nmem: 64M\n");
    write(both.path(), "index.html", "<p>both</p>\n");
    write(
        both.path(),
        "Procfile",
        "web: /usr/bin/python3 -m http.server $PORT\n",
    );
    let pushed = mc.strato_ok(both.path(), &["push", "-n"]);
    assert!(pushed.contains("(buildpack procfile)"), "{pushed}");
    mc.wait_for(
        "both.localhost",
        "/",
        "<p>both</p>",
        Duration::from_secs(30),
    );
    // `push --buildpack` names the pack whatever the order, and a restage keeps it.
    let pushed = mc.strato_ok(both.path(), &["push", "-n", "--buildpack", "static"]);
    assert!(pushed.contains("(buildpack static)"), "{pushed}");
    let restaged = mc.strato_ok(both.path(), &["restage", "both"]);
    assert!(restaged.contains("(buildpack static)"), "{restaged}");
    mc.wait_for(
        "both.localhost",
        "/",
        "<p>both</p>",
        Duration::from_secs(30),
    );
    // `push --command` replaces the start command: here a server of another directory.
    let command = "/usr/bin/python3 -m http.server $PORT --directory /usr/share";
    mc.strato_ok(both.path(), &["push", "-n", "--command", command]);
    mc.wait_for(
        "both.localhost",
        "/",
        "Directory listing",
        Duration::from_secs(30),
    );

    // A buildpack changed through the API marks the app for staging, and until then its
    // crashed instances still come back on the droplet it has.
    let apps = get_json(&http, &auth, format!("{}/v2/apps?q=name:both", mc.url())).await;
    let guid = apps["resources"][0]["metadata"]["guid"]
        .as_str()
        .unwrap()
        .to_string();
    let updated: serde_json::Value = http
        .put(format!("{}/v2/apps/{guid}", mc.url()))
        .header("authorization", &auth)
        .json(&serde_json::json!({"buildpack": "procfile"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(updated["entity"]["package_state"], "PENDING", "{updated}");
    // The server itself (the app's command may run under a shell).
    let server = mc
        .process_naming("--directory /usr/share")
        .expect("the app's server process");
    mc.kill_and_wait_back(
        server,
        "both.localhost",
        "Directory listing",
        Duration::from_secs(30),
    );
}

/// A re-push with new bits, and an environment change, replace a running app without a
/// failed request: the new instances start first and the old ones stop once they run.
#[test]
fn repush_and_env_change_swap_without_a_failed_request() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let app = tempfile::tempdir().unwrap();
    write(
        app.path(),
        "stackato.yml",
        "name: rolling\nmem: 64M\ninstances: 2\n",
    );
    write(app.path(), "index.html", "<p>version one</p>\n");
    mc.strato_ok(app.path(), &["push", "-n"]);
    mc.wait_for(
        "rolling.localhost",
        "/",
        "version one",
        Duration::from_secs(30),
    );

    // A client hammering the app the whole time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = mc.port;
    let hammer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut requests = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = strato_e2e::http_get(port, "rolling.localhost", "/");
                requests += 1;
                if status != 200 {
                    failures.push(format!(
                        "{status} {}",
                        body.chars().take(80).collect::<String>()
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (requests, failures)
        })
    };

    write(app.path(), "index.html", "<p>version two</p>\n");
    mc.strato_ok(app.path(), &["push", "-n"]);
    mc.wait_for(
        "rolling.localhost",
        "/",
        "version two",
        Duration::from_secs(30),
    );
    mc.strato_ok(
        mc.client_home.path(),
        &["env-add", "rolling", "COLOUR", "blue"],
    );
    // The old version is gone once the new one runs: only version two answers.
    let until = Instant::now() + Duration::from_secs(30);
    let mut only_new = false;
    while Instant::now() < until && !only_new {
        only_new = (0..10).all(|_| mc.get("rolling.localhost", "/").1.contains("version two"));
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (requests, failures) = hammer.join().unwrap();
    assert!(only_new, "the previous version was retired");
    assert!(
        requests > 20,
        "the client kept asking ({requests} requests)"
    );
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed during the swaps: {failures:?}",
        failures.len()
    );
    let instances = mc.strato_ok(mc.client_home.path(), &["instances", "rolling", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&instances).unwrap();
    let count = list
        .as_object()
        .map(|o| o.len())
        .or_else(|| list.as_array().map(|a| a.len()));
    assert_eq!(count, Some(2), "two instances, not four: {instances}");
}

/// `kato op`: a smaller upload limit is refused with 413 naming it; a new token-signing
/// secret logs everybody out at once.
#[test]
fn kato_op_limits_uploads_and_regenerates_the_token_secret() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let here = mc.client_home.path();
    let out = mc.kato(&["op", "max_client_upload", "1"]);
    assert!(out.status.success(), "{out:?}");
    let shown = mc.kato(&["op", "max_client_upload"]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("1 MB"),
        "{shown:?}"
    );
    // The controller restarted with the new limit; wait for the API to answer again.
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until && !mc.strato(here, &["apps"]).status.success() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let app = tempfile::tempdir().unwrap();
    write(app.path(), "stackato.yml", "name: toobig\nmem: 64M\n");
    write(app.path(), "index.html", "<p>big</p>\n");
    // Random bytes do not compress: the upload is over 1 MB.
    let mut noise = vec![0u8; 3_000_000];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut noise)
        .unwrap();
    std::fs::write(app.path().join("noise.bin"), noise).unwrap();
    let out = mc.strato(app.path(), &["push", "-n"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an upload over the limit fails: {out:?}"
    );
    assert!(err.contains("1 MB"), "the refusal names the limit: {err}");

    let out = mc.kato(&["op", "regenerate", "token-signing-secret"]);
    assert!(out.status.success(), "{out:?}");
    let until = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < until {
        let out = mc.strato(here, &["apps"]);
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() && last.contains("strato login") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        last.contains("strato login"),
        "old tokens are refused: {last}"
    );
    mc.login();
    mc.strato_ok(here, &["apps"]);
}

/// Seed 001's blue-green deployment, command for command, under a client polling the
/// main URL the whole time: zero failed requests (the router's drain period on unmap is
/// what makes the seed's unmap-before-map order safe).
#[test]
fn blue_green_as_seed_001_shows_it_drops_no_request() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let here = mc.client_home.path();
    let blue = tempfile::tempdir().unwrap();
    write(blue.path(), "index.html", "<p>blue</p>\n");
    write(
        blue.path(),
        "stackato.yml",
        "name: customertracker\nmem: 64M\n",
    );
    mc.strato_ok(blue.path(), &["push", "-n"]);
    mc.wait_for(
        "customertracker.localhost",
        "/",
        "blue",
        Duration::from_secs(30),
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = mc.port;
    let poller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut requests, mut failures, mut seen_green) = (0u32, Vec::new(), false);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = strato_e2e::http_get(port, "customertracker.localhost", "/");
                requests += 1;
                if status != 200 {
                    failures.push(format!("{status}"));
                }
                seen_green |= body.contains("green");
                std::thread::sleep(Duration::from_millis(10));
            }
            (requests, failures, seen_green)
        })
    };

    mc.strato_ok(
        here,
        &["map", "customertracker", "customertracker1.localhost"],
    );
    let green = tempfile::tempdir().unwrap();
    write(green.path(), "index.html", "<p>green</p>\n");
    write(
        green.path(),
        "stackato.yml",
        "name: customertracker2\nmem: 64M\n",
    );
    mc.strato_ok(green.path(), &["push", "-n"]);
    mc.wait_for(
        "customertracker2.localhost",
        "/",
        "green",
        Duration::from_secs(30),
    );
    mc.strato_ok(
        here,
        &["unmap", "customertracker", "customertracker.localhost"],
    );
    mc.strato_ok(
        here,
        &["map", "customertracker2", "customertracker.localhost"],
    );
    mc.wait_for(
        "customertracker.localhost",
        "/",
        "green",
        Duration::from_secs(30),
    );
    mc.strato_ok(here, &["delete", "customertracker", "-n"]);
    // Keep polling a little after the delete.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (requests, failures, seen_green) = poller.join().unwrap();
    assert!(seen_green, "the main URL ends on the new app");
    assert!(requests > 20, "the client kept polling ({requests})");
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {failures:?}",
        failures.len()
    );
    let apps = mc.strato_ok(here, &["apps"]);
    assert!(
        apps.contains("customertracker2") && !apps.contains("customertracker1"),
        "{apps}"
    );
}

/// A part of `primary` taken away on its own: the node keeps primary's other parts (as
/// roles of their own), and stops only the one removed.
#[test]
fn a_part_of_primary_is_removed_on_its_own() {
    let mc = MicroCloud::start().expect("micro cloud");
    let ok = |args: &[&str]| {
        let out = mc.kato(args);
        assert!(
            out.status.success(),
            "kato {args:?}: {}",
            strato_e2e::output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&["role", "add", "primary"]);
    ok(&["role", "remove", "router"]);
    let info = ok(&["role", "info", "--json"]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let roles: Vec<&str> = info["roles"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert!(
        roles.contains(&"controller") && roles.contains(&"health_manager"),
        "{roles:?}"
    );
    assert!(!roles.contains(&"router"), "{roles:?}");
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", mc.port)).is_ok() {
        assert!(Instant::now() < until, "the router still listens");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Removing it again says it is not there.
    let out = mc.kato(&["role", "remove", "router"]);
    assert!(!out.status.success());
    assert!(strato_e2e::output_text(&out).contains("does not have the role router"));
    ok(&["role", "add", "router"]);
}

/// The operator's way: `kato start` launches stratod in the background (with kato's
/// environment), `kato node setup micro` gives the node the micro cloud's roles, `kato
/// stop` stops it all, and the next `kato start` brings it back with its data.
#[test]
fn kato_starts_sets_up_and_stops_a_micro_cloud() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    let home = tempfile::Builder::new()
        .prefix("strato-e2e-")
        .tempdir()
        .unwrap();
    // Service users must be able to traverse the data dir.
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let _cleanup = KatoNode(home.path().to_path_buf());
    let port = strato_testkit::free_port();
    let app_ports = strato_e2e::random_port_base().to_string();
    let kato = |args: &[&str]| {
        let out = Command::new(strato_e2e::bin("kato"))
            .args(args)
            .env("STRATO_HOME", home.path())
            .env("STRATO_HTTP_PORT", port.to_string())
            .env("STRATO_HTTPS_PORT", "0")
            .env("STRATO_HTTP_ADDR", "127.0.0.1")
            .env("STRATO_ADMIN_PASSWORD", "kato-pw")
            .env("STRATO_APP_PORT_BASE", &app_ports)
            .env("STRATO_LOG", "info,sqlx=warn")
            .env("STRATO_ROLES", strato_e2e::APP_ROLES)
            .stdin(Stdio::null())
            .output()
            .expect("run kato");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::read_to_string(home.path().join("logs/stratod.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        assert!(
            out.status.success(),
            "kato {args:?}:\n{text}\nstratod log, newest first:\n{}",
            tail.join("\n")
        );
        text
    };
    let api_answers = || strato_e2e::http_get(port, "127.0.0.1", "/v2/info").0 == 200;

    let started = kato(&["start"]);
    assert!(started.contains("starting stratod"), "{started}");
    assert!(api_answers(), "the API answers once kato start returns");
    let setup = kato(&["node", "setup", "micro"]);
    assert!(setup.contains("micro cloud"), "{setup}");
    for role in [
        "controller",
        "router",
        "dea",
        "mysql",
        "postgresql",
        "redis",
    ] {
        assert!(
            setup.contains(role),
            "{role} in the micro cloud's roles: {setup}"
        );
    }
    let status = kato(&["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.contains("dea") && l.contains("running")),
        "{status}"
    );

    let stopped = kato(&["stop"]);
    assert!(stopped.contains("stratod stopped"), "{stopped}");
    assert!(!api_answers(), "nothing answers after kato stop");
    // At once: the stopped daemon has let go of its files.
    kato(&["start"]);
    assert!(api_answers(), "kato start brings the node back");
    let status = kato(&["status"]);
    assert!(
        status.lines().any(|l| l.contains("mysql")),
        "the micro cloud's roles are kept: {status}"
    );
    kato(&["stop"]);
}

/// Stops the node a test started with kato, and removes what it left, also when the
/// test fails.
struct KatoNode(std::path::PathBuf);

impl Drop for KatoNode {
    fn drop(&mut self) {
        let _ = strato_e2e::kato_at(&self.0, &["stop"]);
        let pid = std::fs::read_to_string(self.0.join("run/stratod.pid")).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // Only that node's stratod, should the pid have gone to another process.
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let ours = format!("STRATO_HOME={}", self.0.display());
            if environ.split(|&b| b == 0).any(|v| v == ours.as_bytes()) {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        strato_e2e::clean_up_home(&self.0);
    }
}
