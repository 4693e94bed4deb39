//! `strato-bench router`: Strato's router against nginx in one run.
//!
//! One backend; nginx with N worker processes and Strato's router on N worker threads in
//! front of it; wrk loads the backend directly (the ceiling), then nginx and the router in
//! turns (rounds, the order swapped each round, so a machine that speeds up or slows down
//! during the run favours neither), and the report gives each one's throughput and p50/p99
//! latency and the ratios DESIGN.md's targets are stated in (router ≥ 1.1 × nginx
//! throughput, p99 ≤ nginx's): the median of the rounds' ratios.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::backend::{self, Backend};
use crate::nginx::Nginx;
use crate::stats::{human, millis};
use crate::strato::{StratoRouter, ROUTE_HOST};
use crate::wrk::{self, Load, WrkReport};

/// Throughput the router must reach, as a multiple of nginx's.
const THROUGHPUT_TARGET: f64 = 1.1;
/// The router's p99 latency may be at most this multiple of nginx's.
const P99_TARGET: f64 = 1.0;

#[derive(Args, Debug)]
pub struct RouterOptions {
    /// How long wrk loads each target in each round (whole seconds).
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Rounds of nginx and the router back to back, in alternating order (the verdict is
    /// the median round's, so an odd count).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Open connections wrk keeps.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Worker count of both proxies: nginx worker processes and router tokio threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// wrk's threads.
    #[arg(long, default_value_t = 2)]
    wrk_threads: usize,
    /// The backend's tokio threads.
    #[arg(long, default_value_t = 2)]
    backend_threads: usize,
    /// Load before each measured run, to fill connection pools (whole seconds, not counted).
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    warmup: Duration,
}

/// One target's measurement: its runs' mean throughput, median latencies, summed counts.
struct Measured {
    name: &'static str,
    report: WrkReport,
}

/// What one round measured: (throughput, p99) of the router over nginx's.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Round {
    throughput: f64,
    p99: f64,
}

/// Everything the report shows.
struct Results {
    targets: Vec<Measured>,
    rounds: Vec<Round>,
}

/// Starts everything, measures, prints; stops everything on the way out (also on error).
pub fn run(options: &RouterOptions, as_json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.threads >= 1 && options.wrk_threads >= 1 && options.backend_threads >= 1,
        "thread counts must be at least 1"
    );
    anyhow::ensure!(
        options.rounds % 2 == 1,
        "--rounds must be odd (1, 3, 5, ...): the verdict is the median round's"
    );
    anyhow::ensure!(
        options.connections >= options.wrk_threads,
        "--connections must be at least --wrk-threads (wrk gives each thread its connections)"
    );
    let backend = Backend::start(options.backend_threads)?;
    let nginx = Nginx::start(options.threads, backend.addr())?;
    let router = StratoRouter::start(options.threads, backend.addr())?;
    let targets = [
        ("direct", backend.addr(), None),
        ("nginx", nginx.addr(), None),
        ("strato", router.addr(), Some(ROUTE_HOST)),
    ];
    for (name, addr, host) in targets {
        check_answers_hello(name, addr, host)?;
    }
    let driver = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the benchmark driver's tokio runtime")?;
    let results = driver.block_on(async {
        tokio::select! {
            results = measure_all(&targets, options) => results,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    })?;
    let output = if as_json {
        serde_json::to_string_pretty(&to_json(&results, options))?
    } else {
        table(&results, options)
    };
    println!("{output}");
    Ok(())
}

/// A target: its name, address, and the Host header to send (the router needs one).
type Target = (&'static str, SocketAddr, Option<&'static str>);

async fn measure_all(targets: &[Target], options: &RouterOptions) -> anyhow::Result<Results> {
    let load = Load {
        duration: options.duration,
        connections: options.connections,
        threads: options.wrk_threads,
    };
    let [direct, nginx, strato] = targets else {
        anyhow::bail!("the router benchmark needs the direct, nginx and strato targets");
    };
    let direct_report = measure(direct, &load, options).await?;
    let (mut nginx_reports, mut strato_reports, mut rounds) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..options.rounds {
        eprintln!("round {} of {}", round + 1, options.rounds);
        let (n, s) = if round % 2 == 0 {
            let n = measure(nginx, &load, options).await?;
            (n, measure(strato, &load, options).await?)
        } else {
            let s = measure(strato, &load, options).await?;
            (measure(nginx, &load, options).await?, s)
        };
        rounds.push(Round {
            throughput: s.requests_per_sec / n.requests_per_sec,
            p99: s.p99.as_secs_f64() / n.p99.as_secs_f64(),
        });
        nginx_reports.push(n);
        strato_reports.push(s);
    }
    Ok(Results {
        targets: vec![
            Measured {
                name: direct.0,
                report: direct_report,
            },
            Measured {
                name: nginx.0,
                report: combine(&nginx_reports),
            },
            Measured {
                name: strato.0,
                report: combine(&strato_reports),
            },
        ],
        rounds,
    })
}

/// One warmed-up wrk run against a target.
async fn measure(
    target: &Target,
    load: &Load,
    options: &RouterOptions,
) -> anyhow::Result<WrkReport> {
    let &(name, addr, host) = target;
    eprintln!(
        "loading {name} ({addr}) for {}s",
        wrk::whole_seconds(options.duration)
    );
    let warmup = Load {
        duration: options.warmup,
        ..load.clone()
    };
    wrk::run(addr, host, &warmup)
        .await
        .with_context(|| format!("warming up {name}"))?;
    wrk::run(addr, host, load)
        .await
        .with_context(|| format!("loading {name}"))
}

/// Several runs of one target as one: mean throughput, median latencies, summed counts.
fn combine(reports: &[WrkReport]) -> WrkReport {
    let median_of = |pick: fn(&WrkReport) -> Duration| {
        let mut values: Vec<Duration> = reports.iter().map(pick).collect();
        values.sort();
        values.get(values.len() / 2).copied().unwrap_or_default()
    };
    WrkReport {
        requests_per_sec: reports.iter().map(|r| r.requests_per_sec).sum::<f64>()
            / reports.len().max(1) as f64,
        p50: median_of(|r| r.p50),
        p99: median_of(|r| r.p99),
        socket_errors: reports.iter().map(|r| r.socket_errors).sum(),
        non_2xx: reports.iter().map(|r| r.non_2xx).sum(),
        requests: reports.iter().map(|r| r.requests).sum(),
    }
}

/// The median of the rounds' (throughput, p99) ratios.
fn ratios(rounds: &[Round]) -> Option<(f64, f64)> {
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    };
    Some((
        median(rounds.iter().map(|r| r.throughput).collect())?,
        median(rounds.iter().map(|r| r.p99).collect())?,
    ))
}

/// One request through `addr` must come back `200 hello`, so a misrouted 404 is never
/// measured as throughput.
fn check_answers_hello(name: &str, addr: SocketAddr, host: Option<&str>) -> anyhow::Result<()> {
    let host = host.map_or_else(|| addr.to_string(), str::to_string);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("cannot connect to {name} at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .with_context(|| format!("no answer from {name} at {addr}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let body = std::str::from_utf8(backend::BODY).unwrap_or_default();
    if !answer.starts_with("HTTP/1.1 200") || !answer.ends_with(body) {
        anyhow::bail!(
            "{name} at {addr} did not pass the backend's answer through; it said:\n{answer}"
        );
    }
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn table(results: &Results, options: &RouterOptions) -> String {
    let measured = &results.targets;
    let mut out = format!(
        "router benchmark: {} rounds of {}s per target, {} connections, {} wrk threads, {} proxy workers, {} backend threads\n\n",
        options.rounds,
        wrk::whole_seconds(options.duration),
        options.connections,
        options.wrk_threads,
        options.threads,
        options.backend_threads
    );
    out.push_str(&format!(
        "{:<8} {:>12} {:>10} {:>10} {:>8}\n",
        "target", "req/s", "p50", "p99", "errors"
    ));
    for m in measured {
        let r = &m.report;
        out.push_str(&format!(
            "{:<8} {:>12.0} {:>10} {:>10} {:>8}\n",
            m.name,
            r.requests_per_sec,
            human(r.p50),
            human(r.p99),
            r.socket_errors + r.non_2xx
        ));
    }
    let each: Vec<String> = results
        .rounds
        .iter()
        .map(|r| format!("{:.2}x", r.throughput))
        .collect();
    out.push_str(&format!(
        "\nthroughput strato/nginx per round: {}",
        each.join(" ")
    ));
    if let Some((throughput, p99)) = ratios(&results.rounds) {
        out.push_str(&format!(
            "\nthroughput strato/nginx (median): {throughput:.2}x (target >= {THROUGHPUT_TARGET:.2}x: {})\n",
            verdict(throughput >= THROUGHPUT_TARGET)
        ));
        out.push_str(&format!(
            "p99 latency strato/nginx (median): {p99:.2}x (target <= {P99_TARGET:.2}x: {})",
            verdict(p99 <= P99_TARGET)
        ));
    }
    if measured
        .iter()
        .any(|m| m.report.socket_errors + m.report.non_2xx > 0)
    {
        out.push_str("\nwarning: some requests failed (errors column); their figures are suspect");
    }
    out
}

fn to_json(results: &Results, options: &RouterOptions) -> serde_json::Value {
    let targets: serde_json::Map<String, serde_json::Value> = results
        .targets
        .iter()
        .map(|m| {
            let r = &m.report;
            (
                m.name.to_string(),
                json!({
                    "requests_per_sec": r.requests_per_sec,
                    "requests": r.requests,
                    "p50_ms": millis(r.p50),
                    "p99_ms": millis(r.p99),
                    "socket_errors": r.socket_errors,
                    "non_2xx": r.non_2xx,
                }),
            )
        })
        .collect();
    let (throughput, p99) = ratios(&results.rounds).unzip();
    let rounds: Vec<serde_json::Value> = results
        .rounds
        .iter()
        .map(|r| json!({"throughput_ratio": r.throughput, "p99_ratio": r.p99}))
        .collect();
    json!({
        "benchmark": "router",
        "duration_secs": wrk::whole_seconds(options.duration),
        "rounds": rounds,
        "connections": options.connections,
        "wrk_threads": options.wrk_threads,
        "proxy_workers": options.threads,
        "backend_threads": options.backend_threads,
        "targets": targets,
        "throughput_ratio_strato_over_nginx": throughput,
        "p99_ratio_strato_over_nginx": p99,
        "throughput_target_met": throughput.map(|t| t >= THROUGHPUT_TARGET),
        "p99_target_met": p99.map(|p| p <= P99_TARGET),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rps: f64, p99_ms: u64) -> WrkReport {
        WrkReport {
            requests_per_sec: rps,
            p50: Duration::from_millis(1),
            p99: Duration::from_millis(p99_ms),
            socket_errors: 1,
            non_2xx: 0,
            requests: 10,
        }
    }

    #[test]
    fn runs_combine_into_mean_throughput_and_median_latency() {
        let combined = combine(&[report(100.0, 3), report(200.0, 1), report(300.0, 2)]);
        assert_eq!(combined.requests_per_sec, 200.0);
        assert_eq!(combined.p99, Duration::from_millis(2));
        assert_eq!((combined.socket_errors, combined.requests), (3, 30));
    }

    #[test]
    fn the_verdict_is_the_median_round() {
        let round = |throughput, p99| Round { throughput, p99 };
        let rounds = [round(1.3, 0.5), round(0.9, 1.2), round(1.15, 0.7)];
        assert_eq!(ratios(&rounds), Some((1.15, 0.7)));
        assert_eq!(ratios(&[]), None);
    }
}
