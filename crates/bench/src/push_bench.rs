//! `strato-bench push`: what a developer waits for. A micro cloud (the `stratod`, `strato`
//! and `kato` binaries next to this one, in a temp dir on free ports) gets each fixture app
//! pushed; the benchmark reports push to first 200 through the router (cold caches), a
//! re-push of unchanged bits, a push of a changed copy (warm caches: staged again, new
//! instances, until the new text is served) against DESIGN.md's 2 s target, and — against
//! its 1 s target — kill -9 of the app's process to serving again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use strato_e2e::{fixture, MicroCloud};

use crate::stats::human;

/// DESIGN.md's target for a crashed instance to serve again.
const CRASH_TARGET: Duration = Duration::from_secs(1);
/// DESIGN.md's target for a push of a small app with warm caches to its first 200.
const PUSH_TARGET: Duration = Duration::from_secs(2);
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
    /// A changed copy pushed, to the new version's first 200.
    changed: Duration,
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
                    "changed_push_warm_s": r.changed.as_secs_f64(),
                    "push_target_s": PUSH_TARGET.as_secs_f64(),
                    "crash_to_200_s": r.crash.map(|d| d.as_secs_f64()),
                    "crash_target_s": CRASH_TARGET.as_secs_f64(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<10} {:>12} {:>18} {:>20} {:>18}",
        "fixture", "push to 200", "re-push unchanged", "changed push (warm)", "kill -9 to 200"
    );
    for r in &rows {
        let crash = r
            .crash
            .map_or_else(|| "n/a".to_string(), |d| against(d, CRASH_TARGET));
        println!(
            "{:<10} {:>12} {:>18} {:>20} {:>18}",
            r.fixture,
            human(r.first_push),
            human(r.repush),
            against(r.changed, PUSH_TARGET),
            crash
        );
    }
    println!(
        "targets: a changed small app pushed with warm caches serves within {}; a crashed instance serves again within {}",
        human(PUSH_TARGET),
        human(CRASH_TARGET)
    );
    Ok(())
}

/// `1.23s (met)` or `(MISSED)`.
fn against(took: Duration, target: Duration) -> String {
    let verdict = if took <= target { "met" } else { "MISSED" };
    format!("{} ({verdict})", human(took))
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
    // Last, so the crash above hits the only instance (not one of a version being
    // replaced).
    let changed_copy = changed_copy(&dir, body)?;
    let started = Instant::now();
    push(mc, changed_copy.path())?;
    wait_200(mc, &host, &changed_text(body))?;
    let changed = started.elapsed();
    mc.strato_ok(mc.client_home.path(), &["delete", app, "-n"]);
    Ok(Row {
        fixture: name.to_string(),
        first_push,
        repush,
        changed,
        crash,
    })
}

/// The text a changed copy of a fixture answers with.
fn changed_text(body: &str) -> String {
    body.replacen("hello", "hello again", 1)
}

/// A copy of the fixture in a temp dir whose files say [`changed_text`] instead of `body`.
fn changed_copy(dir: &std::path::Path, body: &str) -> anyhow::Result<tempfile::TempDir> {
    let copy = tempfile::Builder::new()
        .prefix("strato-bench-push-")
        .tempdir()
        .context("cannot create a temp dir for the changed fixture")?;
    copy_tree(dir, copy.path(), body, &changed_text(body))
        .with_context(|| format!("cannot copy {}", dir.display()))?;
    Ok(copy)
}

/// Copies `from` into `to`, replacing `old` by `new` in files that are text.
fn copy_tree(
    from: &std::path::Path,
    to: &std::path::Path,
    old: &str,
    new: &str,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir(&target)?;
            copy_tree(&entry.path(), &target, old, new)?;
            continue;
        }
        let bytes = std::fs::read(entry.path())?;
        let bytes = match String::from_utf8(bytes) {
            Ok(text) => text.replace(old, new).into_bytes(),
            Err(binary) => binary.into_bytes(),
        };
        std::fs::write(&target, bytes)?;
        std::fs::set_permissions(&target, entry.metadata()?.permissions())?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_changed_copy_says_the_new_text_everywhere_and_keeps_modes() {
        let fixture = tempfile::tempdir().unwrap();
        std::fs::create_dir(fixture.path().join("www")).unwrap();
        std::fs::write(fixture.path().join("www/index.html"), "<p>hello from x</p>").unwrap();
        std::fs::write(fixture.path().join("run.sh"), "echo hello from x").unwrap();
        std::fs::set_permissions(
            fixture.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let copy = changed_copy(fixture.path(), "hello from x").unwrap();
        let read = |p: &str| std::fs::read_to_string(copy.path().join(p)).unwrap();
        assert_eq!(read("www/index.html"), "<p>hello again from x</p>");
        assert_eq!(read("run.sh"), "echo hello again from x");
        let mode = std::fs::metadata(copy.path().join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
