//! `strato logs --follow` streams an app's new lines as they are written, and `strato
//! stats` shows each instance's CPU, memory and disk.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strato_e2e::{bin, MicroCloud};

#[test]
fn logs_follow_streams_new_lines_and_stats_show_usage() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let app = tempfile::tempdir().unwrap();
    std::fs::write(app.path().join("stackato.yml"), "name: ticker\nmem: 64M\n").unwrap();
    std::fs::write(app.path().join("index.html"), "ticker\n").unwrap();
    std::fs::write(
        app.path().join("Procfile"),
        "web: sh -c 'n=0; while true; do n=$((n+1)); echo tick-$n; sleep 0.3; done & exec /usr/bin/python3 -m http.server $PORT'\n",
    )
    .unwrap();
    mc.strato_ok(app.path(), &["push", "-n"]);
    mc.wait_for("ticker.localhost", "/", "ticker", Duration::from_secs(60));

    // --follow keeps printing lines written after it started.
    let mut follow = Command::new(bin("strato"))
        .args(["logs", "ticker", "--follow"])
        .current_dir(mc.client_home.path())
        .env("HOME", mc.client_home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("strato logs --follow");
    let started = Instant::now();
    let reader = BufReader::new(follow.stdout.take().unwrap());
    let mut ticks = 0;
    let mut seen = Vec::new();
    for line in reader.lines() {
        let line = line.unwrap();
        if line.contains("tick-") {
            ticks += 1;
            seen.push(line);
        }
        if ticks >= 8 || started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(ticks >= 8, "follow streamed {ticks} ticks: {seen:?}");
    assert!(
        started.elapsed() > Duration::from_millis(900),
        "new lines arrived over time, not one dump"
    );

    // stats: a row per instance with CPU, memory and disk figures.
    let stats = mc.strato_ok(mc.client_home.path(), &["stats", "ticker", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stats).expect("stats --json");
    let s = &v["0"]["stats"];
    assert_eq!(v["0"]["state"], "RUNNING", "{v}");
    assert!(
        s["usage"]["mem"].as_u64().unwrap_or(0) > 1024 * 1024,
        "memory in use: {v}"
    );
    assert!(s["usage"]["cpu"].as_f64().is_some(), "cpu: {v}");
    assert!(
        s["usage"]["disk"].as_u64().unwrap_or(0) > 0,
        "disk in use: {v}"
    );
    assert_eq!(s["mem_quota"].as_u64(), Some(64 * 1024 * 1024), "{v}");
    let table = mc.strato_ok(mc.client_home.path(), &["stats", "ticker"]);
    assert!(
        table.contains("CPU") && table.contains("Memory") && table.contains("Disk"),
        "{table}"
    );
}
