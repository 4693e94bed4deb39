//! `strato-bench router`: Strato's router against nginx in one run.
//!
//! One backend; nginx with N worker processes and Strato's router on N worker threads in
//! front of it; wrk loads the backend directly (the ceiling), then nginx, then the router,
//! and the report gives each one's throughput and p50/p99 latency and the ratios DESIGN.md's
//! targets are stated in (router ≥ 1.1 × nginx throughput, p99 ≤ nginx's).

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
    /// How long wrk loads each target (whole seconds).
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    duration: Duration,
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

/// One target's measurement.
struct Measured {
    name: &'static str,
    report: WrkReport,
}

/// Starts everything, measures, prints; stops everything on the way out (also on error).
pub fn run(options: &RouterOptions, as_json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.threads >= 1 && options.wrk_threads >= 1 && options.backend_threads >= 1,
        "thread counts must be at least 1"
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
    let measured = driver.block_on(async {
        tokio::select! {
            measured = measure_all(&targets, options) => measured,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    })?;
    let output = if as_json {
        serde_json::to_string_pretty(&to_json(&measured, options))?
    } else {
        table(&measured, options)
    };
    println!("{output}");
    Ok(())
}

async fn measure_all(
    targets: &[(&'static str, SocketAddr, Option<&'static str>)],
    options: &RouterOptions,
) -> anyhow::Result<Vec<Measured>> {
    let load = Load {
        duration: options.duration,
        connections: options.connections,
        threads: options.wrk_threads,
    };
    let warmup = Load {
        duration: options.warmup,
        ..load.clone()
    };
    let mut measured = Vec::new();
    for &(name, addr, host) in targets {
        eprintln!(
            "loading {name} ({addr}) for {}s",
            wrk::whole_seconds(options.duration)
        );
        wrk::run(addr, host, &warmup)
            .await
            .with_context(|| format!("warming up {name}"))?;
        let report = wrk::run(addr, host, &load)
            .await
            .with_context(|| format!("loading {name}"))?;
        measured.push(Measured { name, report });
    }
    Ok(measured)
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

fn find<'a>(measured: &'a [Measured], name: &str) -> Option<&'a WrkReport> {
    measured.iter().find(|m| m.name == name).map(|m| &m.report)
}

/// (throughput strato/nginx, p99 strato/nginx)
fn ratios(measured: &[Measured]) -> Option<(f64, f64)> {
    let nginx = find(measured, "nginx")?;
    let strato = find(measured, "strato")?;
    Some((
        strato.requests_per_sec / nginx.requests_per_sec,
        strato.p99.as_secs_f64() / nginx.p99.as_secs_f64(),
    ))
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn table(measured: &[Measured], options: &RouterOptions) -> String {
    let mut out = format!(
        "router benchmark: {}s per target, {} connections, {} wrk threads, {} proxy workers, {} backend threads\n\n",
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
    if let Some((throughput, p99)) = ratios(measured) {
        out.push_str(&format!(
            "\nthroughput strato/nginx: {throughput:.2}x (target >= {THROUGHPUT_TARGET:.2}x: {})\n",
            verdict(throughput >= THROUGHPUT_TARGET)
        ));
        out.push_str(&format!(
            "p99 latency strato/nginx: {p99:.2}x (target <= {P99_TARGET:.2}x: {})",
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

fn to_json(measured: &[Measured], options: &RouterOptions) -> serde_json::Value {
    let targets: serde_json::Map<String, serde_json::Value> = measured
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
    let (throughput, p99) = ratios(measured).unzip();
    json!({
        "benchmark": "router",
        "duration_secs": wrk::whole_seconds(options.duration),
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
