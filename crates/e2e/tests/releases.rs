//! Releases and rollback on a real micro cloud: two pushes make two releases, a rollback
//! brings the first version back while a client polling the app sees no failed request,
//! a rollback to a release that does not exist is refused in one line, and the health
//! check set with `strato health` round-trips and passes a rolling restart.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strato_e2e::MicroCloud;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Polls `host/` every 10 ms until stopped; returns (requests, failures).
fn poller(
    port: u16,
    host: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u32, Vec<String>)> {
    std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut requests = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let (status, body) = strato_e2e::http_get(port, host, "/");
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
}

/// Waits until ten answers in a row contain `needle` (the other version is retired).
fn only(mc: &MicroCloud, host: &str, needle: &str) -> bool {
    let until = Instant::now() + Duration::from_secs(45);
    while Instant::now() < until {
        if (0..10).all(|_| mc.get(host, "/").1.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn push_twice_rollback_without_a_failed_request_and_health_round_trips() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let home = mc.client_home.path();
    let app = tempfile::tempdir().unwrap();
    write(
        app.path(),
        "stackato.yml",
        "name: rel\nmem: 64M\ninstances: 1\n",
    );
    write(app.path(), "index.html", "<p>version one</p>\n");
    mc.strato_ok(app.path(), &["push", "-n"]);
    mc.wait_for("rel.localhost", "/", "version one", Duration::from_secs(30));
    write(app.path(), "index.html", "<p>version two</p>\n");
    mc.strato_ok(app.path(), &["push", "-n"]);
    mc.wait_for("rel.localhost", "/", "version two", Duration::from_secs(30));

    let list: serde_json::Value =
        serde_json::from_str(&mc.strato_ok(home, &["releases", "rel", "--json"])).unwrap();
    let list = list.as_array().expect("a JSON list of releases");
    assert_eq!(list.len(), 2, "two pushes, two releases: {list:?}");
    assert_eq!(list[1]["entity"]["current"], true);
    let table = mc.strato_ok(home, &["releases", "rel"]);
    assert!(
        table.contains("v2 (current)") && table.contains("v1"),
        "{table}"
    );

    // Roll back under a polling client: v1 serves again, no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let polling = poller(mc.port, "rel.localhost", stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let out = mc.strato_ok(home, &["rollback", "rel"]);
    assert!(
        out.contains("rollback to v1") && out.contains("v3"),
        "{out}"
    );
    let back = only(&mc, "rel.localhost", "version one");
    // Keep polling while the previous instances drain and stop.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (requests, failures) = polling.join().unwrap();
    assert!(back, "version one serves again after the rollback");
    assert!(requests > 20, "the client kept polling ({requests})");
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed during the rollback: {failures:?}",
        failures.len()
    );

    // A release that does not exist: one clear line, nothing changes.
    let out = mc.strato(home, &["rollback", "rel", "9"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("no release v9") && err.contains("v1, v2, v3"),
        "names the releases there are: {err}"
    );
    assert!(only(&mc, "rel.localhost", "version one"), "still v1");

    // Health check: set, shown back, and a rolling restart passes it.
    mc.strato_ok(
        home,
        &["health", "rel", "--type", "http", "--endpoint", "/"],
    );
    let hc: serde_json::Value =
        serde_json::from_str(&mc.strato_ok(home, &["health", "rel", "--json"])).unwrap();
    assert_eq!(hc["health_check_type"], "http", "{hc}");
    assert_eq!(hc["health_check_http_endpoint"], "/", "{hc}");
    let out = mc.strato_ok(home, &["restart", "rel", "--strategy", "rolling"]);
    assert!(out.contains("RUNNING"), "{out}");
    assert!(only(&mc, "rel.localhost", "version one"));
}

/// The texts after `MARKER ` in `app`'s log, in order (the lifecycle lines test apps
/// print when they start and stop).
fn marked_lines(mc: &MicroCloud, app: &str, marker: &str) -> Vec<String> {
    let log = mc.strato_ok(mc.client_home.path(), &["logs", app, "--num", "200"]);
    let marker = format!("{marker} ");
    log.lines()
        .filter_map(|l| {
            l.find(&marker)
                .map(|i| l[i + marker.len()..].trim().to_string())
        })
        .collect()
}

/// [`marked_lines`] once `done` holds for them, or as they are after `wait`.
fn wait_for_marked(
    mc: &MicroCloud,
    app: &str,
    marker: &str,
    wait: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let until = Instant::now() + wait;
    loop {
        let lines = marked_lines(mc, app, marker);
        if done(&lines) || Instant::now() > until {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Pushes `swapper` with `instances`, each printing `LIFE started $V` at start and
/// `LIFE stopped $V` at SIGTERM, at V=1, and waits until it serves.
fn push_swapper(mc: &MicroCloud, instances: u32) -> tempfile::TempDir {
    let app = tempfile::tempdir().unwrap();
    write(
        app.path(),
        "stackato.yml",
        &format!("name: swapper\nmem: 64M\ninstances: {instances}\n"),
    );
    write(app.path(), "index.html", "swapper\n");
    write(
        app.path(),
        "Procfile",
        "web: sh -c 'echo LIFE started $V; trap \"echo LIFE stopped $V; exit 0\" TERM; /usr/bin/python3 -m http.server $PORT & wait'\n",
    );
    mc.strato_ok(app.path(), &["push", "-n", "--env", "V=1"]);
    mc.wait_for("swapper.localhost", "/", "swapper", Duration::from_secs(60));
    app
}

/// `push --strategy recreate` stops the old version before the new one starts (for apps
/// that must never run twice); the default rolling push starts the new one first.
#[test]
fn push_strategy_recreate_stops_the_old_version_first() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let app = push_swapper(&mc, 1);
    let has = |line: &'static str| move |lines: &[String]| lines.iter().any(|l| l == line);

    // Rolling (the default): v2 starts before v1 stops.
    mc.strato_ok(app.path(), &["push", "-n", "--env", "V=2"]);
    let lines = wait_for_marked(
        &mc,
        "swapper",
        "LIFE",
        Duration::from_secs(30),
        has("stopped 1"),
    );
    let at = |needle: &str, lines: &[String]| lines.iter().position(|l| l == needle);
    assert!(
        at("started 2", &lines).is_some() && at("started 2", &lines) < at("stopped 1", &lines),
        "rolling: {lines:?}"
    );

    // Recreate: v2 stops before v3 starts.
    mc.strato_ok(
        app.path(),
        &["push", "-n", "--env", "V=3", "--strategy", "recreate"],
    );
    let lines = wait_for_marked(
        &mc,
        "swapper",
        "LIFE",
        Duration::from_secs(30),
        has("started 3"),
    );
    assert!(
        at("stopped 2", &lines).is_some() && at("stopped 2", &lines) < at("started 3", &lines),
        "recreate: {lines:?}"
    );
    mc.wait_for("swapper.localhost", "/", "swapper", Duration::from_secs(60));
    // A strategy the API does not know is refused in one line.
    let out = mc.strato(app.path(), &["push", "-n", "--strategy", "sideways"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        strato_e2e::output_text(&out)
    );
}

/// A new version that never passes its health check leaves the old one serving: a client
/// polling the app the whole time sees no failed request.
#[test]
fn a_broken_new_version_leaves_the_old_one_serving() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let app = tempfile::tempdir().unwrap();
    write(
        app.path(),
        "stackato.yml",
        "name: steady\nmem: 64M\ntimeout: 5\nhealth-check-type: http\nhealth-check-http-endpoint: /index.html\n",
    );
    write(app.path(), "index.html", "steady v1\n");
    write(
        app.path(),
        "Procfile",
        "web: /usr/bin/python3 -m http.server $PORT\n",
    );
    mc.strato_ok(app.path(), &["push", "-n"]);
    mc.wait_for(
        "steady.localhost",
        "/",
        "steady v1",
        Duration::from_secs(60),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let polling = poller(mc.port, "steady.localhost", stop.clone());
    // v2 stages fine but crashes at start, every time.
    write(app.path(), "index.html", "steady v2\n");
    write(app.path(), "Procfile", "web: echo broken; exit 1\n");
    let out = mc.strato(app.path(), &["push", "-n"]);
    println!(
        "push of the broken version: {}",
        strato_e2e::output_text(&out)
    );
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, Ordering::Relaxed);
    let (requests, failures) = polling.join().unwrap();
    println!(
        "{requests} requests during the broken push, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(requests > 50, "the poller ran: {requests}");
    assert!(only(&mc, "steady.localhost", "steady v1"));
}

/// An app picks its grace period between SIGTERM and SIGKILL with `STRATO_STOP_GRACE`.
#[test]
fn the_app_sets_its_stop_grace_period() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let app = tempfile::tempdir().unwrap();
    write(app.path(), "stackato.yml", "name: graceful\nmem: 64M\n");
    write(app.path(), "index.html", "graceful\n");
    write(
        app.path(),
        "Procfile",
        "web: sh -c 'trap \"echo GRACE draining; sleep 3; echo GRACE done; exit 0\" TERM; /usr/bin/python3 -m http.server $PORT & wait'\n",
    );
    let here = mc.client_home.path();
    let wait_for_line = |mc: &MicroCloud, line: &str| -> Vec<String> {
        wait_for_marked(mc, "graceful", "GRACE", Duration::from_secs(15), |lines| {
            lines.iter().any(|l| l == line)
        })
    };

    // One second is not enough for its 3-second shutdown: killed half-way.
    mc.strato_ok(app.path(), &["push", "-n", "--env", "STRATO_STOP_GRACE=1"]);
    mc.wait_for(
        "graceful.localhost",
        "/",
        "graceful",
        Duration::from_secs(60),
    );
    mc.strato_ok(here, &["stop", "graceful"]);
    let lines = wait_for_line(&mc, "draining");
    std::thread::sleep(Duration::from_secs(4));
    let lines_after = marked_lines(&mc, "graceful", "GRACE");
    assert!(lines.iter().any(|l| l == "draining"), "{lines:?}");
    assert!(
        !lines_after.iter().any(|l| l == "done"),
        "killed after 1 s: {lines_after:?}"
    );

    // Ten seconds are: it finishes.
    mc.strato_ok(here, &["env-add", "graceful", "STRATO_STOP_GRACE", "10"]);
    mc.strato_ok(here, &["start", "graceful"]);
    mc.strato_ok(here, &["stop", "graceful"]);
    let lines = wait_for_line(&mc, "done");
    assert!(lines.iter().any(|l| l == "done"), "{lines:?}");
}

/// `push --max-in-flight 1` replaces one instance at a time: each new instance runs before
/// one old instance stops, and the app never has fewer than its instances serving.
#[test]
fn a_rolling_push_replaces_max_in_flight_instances_at_a_time() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let app = push_swapper(&mc, 3);
    let stop = Arc::new(AtomicBool::new(false));
    let polling = poller(mc.port, "swapper.localhost", stop.clone());
    mc.strato_ok(
        app.path(),
        &["push", "-n", "--env", "V=2", "--max-in-flight", "1"],
    );
    let lines = wait_for_marked(&mc, "swapper", "LIFE", Duration::from_secs(60), |lines| {
        lines.iter().filter(|l| *l == "stopped 1").count() == 3
    });
    let events: Vec<&String> = lines
        .iter()
        .filter(|l| *l == "started 2" || *l == "stopped 1")
        .collect();
    stop.store(true, Ordering::Relaxed);
    let (_, failures) = polling.join().unwrap();
    assert_eq!(
        events,
        [
            "started 2",
            "stopped 1",
            "started 2",
            "stopped 1",
            "started 2",
            "stopped 1"
        ],
        "one instance at a time; log:\n{}",
        mc.log_tail()
    );
    assert!(failures.is_empty(), "{failures:?}");
    // Nonsense is refused in one line.
    let out = mc.strato(app.path(), &["push", "-n", "--max-in-flight", "0"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        strato_e2e::output_text(&out)
    );
}
