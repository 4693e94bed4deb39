//! `strato-bench push`: what a developer waits for. A micro cloud (the `stratod`, `strato`
//! and `kato` binaries next to this one, in a temp dir on free ports) gets each fixture app
//! pushed; the benchmark reports push to first 200 through the router, a re-push of
//! unchanged bits, and — against DESIGN.md's 1 s target — kill -9 of the app's process to
//! serving again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use strato_e2e::{fixture, MicroCloud};

use crate::stats::human;

/// DESIGN.md's target for a crashed instance to serve again.
const CRASH_TARGET: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(120);

#[derive(Args, Debug)]
pub struct PushOptions {
    /// Fixtures to push (directories under tests/fixtures).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "static,procfile,python,node"
    )]
    fixtures: Vec<String>,
}

/// What each fixture is called once pushed, what it answers, and a word of its process
/// command line (to find the process to kill).
fn fixture_facts(name: &str) -> anyhow::Result<(&'static str, &'static str, &'static str)> {
    Ok(match name {
        "static" => ("staticfixture", "hello from static", "strato-static"),
        "procfile" => ("procfixture", "hello from procfile", "http.server"),
        "python" => ("pyfixture", "hello from python", "app.py"),
        "node" => ("nodefixture", "hello from node", "server.js"),
        other => bail!("no fixture {other:?}; choose from static, procfile, python, node"),
    })
}

struct Row {
    fixture: String,
    first_push: Duration,
    repush: Duration,
    crash: Option<Duration>,
}

pub fn run(options: &PushOptions, json_out: bool) -> anyhow::Result<()> {
    // Check the names before starting anything.
    for f in &options.fixtures {
        fixture_facts(f)?;
    }
    let mc = MicroCloud::start().context(
        "starting a micro cloud (build the binaries first: cargo build --release --bins)",
    )?;
    mc.login();
    let mut rows = Vec::new();
    for f in &options.fixtures {
        rows.push(measure(&mc, f)?);
    }
    if json_out {
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "fixture": r.fixture,
                    "push_to_200_s": r.first_push.as_secs_f64(),
                    "repush_unchanged_s": r.repush.as_secs_f64(),
                    "crash_to_200_s": r.crash.map(|d| d.as_secs_f64()),
                    "crash_target_s": CRASH_TARGET.as_secs_f64(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<10} {:>14} {:>18} {:>16}",
        "fixture", "push to 200", "re-push unchanged", "kill -9 to 200"
    );
    for r in &rows {
        let crash = match r.crash {
            Some(d) => format!(
                "{} {}",
                human(d),
                if d <= CRASH_TARGET {
                    "(met)"
                } else {
                    "(MISSED)"
                }
            ),
            None => "n/a".to_string(),
        };
        println!(
            "{:<10} {:>14} {:>18} {:>16}",
            r.fixture,
            human(r.first_push),
            human(r.repush),
            crash
        );
    }
    println!(
        "target: a crashed instance serves again within {}",
        human(CRASH_TARGET)
    );
    Ok(())
}

fn measure(mc: &MicroCloud, name: &str) -> anyhow::Result<Row> {
    let (app, body, process_word) = fixture_facts(name)?;
    let dir: PathBuf = fixture(name);
    let host = format!("{app}.localhost");
    let started = Instant::now();
    push(mc, &dir)?;
    wait_200(mc, &host, body)?;
    let first_push = started.elapsed();
    let started = Instant::now();
    push(mc, &dir)?;
    wait_200(mc, &host, body)?;
    let repush = started.elapsed();
    let crash = match mc.app_pid(process_word) {
        Some(pid) => {
            let started = Instant::now();
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            // Wait until the old process is gone and the app answers again.
            wait_200_after(mc, &host, body, pid)?;
            Some(started.elapsed())
        }
        None => None,
    };
    mc.strato_ok(mc.client_home.path(), &["delete", app, "-n"]);
    Ok(Row {
        fixture: name.to_string(),
        first_push,
        repush,
        crash,
    })
}

fn push(mc: &MicroCloud, dir: &std::path::Path) -> anyhow::Result<()> {
    let out = mc.strato(dir, &["push", "-n"]);
    if !out.status.success() {
        bail!(
            "push of {} failed:\n{}\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn wait_200(mc: &MicroCloud, host: &str, body: &str) -> anyhow::Result<()> {
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        let (status, text) = mc.get(host, "/");
        if status == 200 && text.contains(body) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("{host} did not answer 200 within {WAIT:?}")
}

fn wait_200_after(mc: &MicroCloud, host: &str, body: &str, old_pid: i32) -> anyhow::Result<()> {
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        let gone = !std::path::Path::new(&format!("/proc/{old_pid}")).exists();
        if gone {
            let (status, text) = mc.get(host, "/");
            if status == 200 && text.contains(body) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("{host} did not serve again within {WAIT:?} after kill -9")
}
