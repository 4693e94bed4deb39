//! `strato-bench container`: how long the runc driver takes to start a container.
//!
//! Each run starts `/bin/true` in a fresh container (the driver adds tini as PID 1) and
//! times `run()` — bundle, rootfs and `runc run` until the init is running, DESIGN.md's
//! "container start to process running" (target ≤ 50 ms) — and `run()` until `wait()`
//! returns (the whole life of a container that exits at once). Every container is deleted,
//! and the driver's state lives in a temp dir removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use strato_container::{ContainerDriver, ContainerSpec, RuncDriver, Stack};

use crate::stats::{human, millis, percentile};

/// DESIGN.md's target for container start to process running.
const START_TARGET: Duration = Duration::from_millis(50);
/// The user the benchmark's containers run as (nobody).
const UID: u32 = 65534;
const GID: u32 = 65534;

#[derive(Args, Debug)]
pub struct ContainerOptions {
    /// How many containers to start, one after another.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Give each container a network namespace of its own (veth pair, nftables), as the
    /// DEA does with network isolation on.
    #[arg(long)]
    network: bool,
}

/// The times of one container.
struct Timing {
    started: Duration,
    exited: Duration,
}

/// Deletes whatever runc still knows under the driver's state root when dropped, in case
/// the benchmark stopped half-way (the async cleanup below is the normal path).
struct LeftoverGuard {
    runc_root: PathBuf,
}

impl Drop for LeftoverGuard {
    fn drop(&mut self) {
        for id in runc_ids(&self.runc_root) {
            let _ = Command::new("/usr/sbin/runc")
                .arg("--root")
                .arg(&self.runc_root)
                .args(["delete", "--force", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn runc_ids(runc_root: &Path) -> Vec<String> {
    std::fs::read_dir(runc_root)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Times `options.runs` containers, prints the figures, removes everything.
pub fn run(options: &ContainerOptions, as_json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(options.runs >= 1, "--runs must be at least 1");
    let state = tempfile::Builder::new()
        .prefix("strato-bench-runc-")
        .tempdir()
        .context("cannot create a temp dir for runc's state; check that /tmp is writable")?;
    let mut driver = RuncDriver::new(state.path().to_path_buf(), Stack::host_default());
    if options.network {
        let net = strato_container::network::IsolatedNetwork::setup(Default::default())
            .context("cannot set up the container network")?;
        driver = driver.with_network(std::sync::Arc::new(net));
    }
    driver
        .check_available()
        .context("the container benchmark needs the runc driver")?;
    let _leftovers = LeftoverGuard {
        runc_root: state.path().join("runc"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the benchmark's tokio runtime")?;
    let timings = runtime.block_on(async {
        let timed = tokio::select! {
            timed = time_runs(&driver, options.runs) => timed,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        remove_all(&driver).await;
        timed
    })?;
    let output = if as_json {
        serde_json::to_string_pretty(&to_json(&timings))?
    } else {
        table(&timings, options.network)
    };
    println!("{output}");
    Ok(())
}

async fn time_runs(driver: &RuncDriver, runs: usize) -> anyhow::Result<Vec<Timing>> {
    let mut timings = Vec::with_capacity(runs);
    for run in 0..runs {
        let id = format!("bench-{}-{run}", std::process::id());
        let timing = time_one(driver, &id).await;
        driver
            .delete(&id)
            .await
            .with_context(|| format!("cannot delete container {id}"))?;
        timings.push(timing?);
    }
    Ok(timings)
}

async fn time_one(driver: &RuncDriver, id: &str) -> anyhow::Result<Timing> {
    let spec = ContainerSpec::new(id, vec!["/bin/true".to_string()], UID, GID);
    let begin = Instant::now();
    let mut container = driver
        .run(spec)
        .await
        .with_context(|| format!("cannot start container {id}"))?;
    let started = begin.elapsed();
    let status = container
        .wait()
        .await
        .with_context(|| format!("cannot wait for container {id}"))?;
    let exited = begin.elapsed();
    anyhow::ensure!(
        status == 0,
        "/bin/true in container {id} exited with {status}"
    );
    Ok(Timing { started, exited })
}

/// Deletes every container the driver knows (the benchmarks' normal clean-up).
pub(crate) async fn remove_all(driver: &RuncDriver) {
    let Ok(ids) = driver.list().await else {
        return;
    };
    for id in ids {
        if let Err(error) = driver.delete(&id).await {
            eprintln!("warning: cannot delete container {id}: {error}");
        }
    }
}

/// min, p50, p99 and max of one measure.
fn summary(mut times: Vec<Duration>) -> [Duration; 4] {
    times.sort();
    let at = |p| percentile(&times, p).unwrap_or_default();
    [at(0.0), at(50.0), at(99.0), at(100.0)]
}

fn table(timings: &[Timing], network: bool) -> String {
    let started = summary(timings.iter().map(|t| t.started).collect());
    let exited = summary(timings.iter().map(|t| t.exited).collect());
    let mut out = format!(
        "container benchmark: {} runs of /bin/true with the runc driver{}\n\n",
        timings.len(),
        if network {
            ", each in its own network namespace"
        } else {
            ""
        }
    );
    out.push_str(&format!(
        "{:<22} {:>9} {:>9} {:>9} {:>9}\n",
        "measure", "min", "p50", "p99", "max"
    ));
    for (name, times) in [
        ("run -> process running", started),
        ("run -> exited", exited),
    ] {
        out.push_str(&format!(
            "{name:<22} {:>9} {:>9} {:>9} {:>9}\n",
            human(times[0]),
            human(times[1]),
            human(times[2]),
            human(times[3])
        ));
    }
    out.push_str(&format!(
        "\nstart to process running p50: {} (target <= {}: {})",
        human(started[1]),
        human(START_TARGET),
        if started[1] <= START_TARGET {
            "met"
        } else {
            "MISSED"
        }
    ));
    out
}

fn to_json(timings: &[Timing]) -> serde_json::Value {
    let started = summary(timings.iter().map(|t| t.started).collect());
    let exited = summary(timings.iter().map(|t| t.exited).collect());
    let figures = |s: [Duration; 4]| {
        json!({
            "min_ms": millis(s[0]),
            "p50_ms": millis(s[1]),
            "p99_ms": millis(s[2]),
            "max_ms": millis(s[3]),
        })
    };
    json!({
        "benchmark": "container",
        "runs": timings.len(),
        "start_to_running": figures(started),
        "start_to_exit": figures(exited),
        "start_target_ms": millis(START_TARGET),
        "start_target_met": started[1] <= START_TARGET,
    })
}
