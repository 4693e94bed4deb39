//! Load generation with Debian's `wrk`: one run per target, and the parsing of its report
//! (requests/sec, the latency distribution, socket errors and non-2xx answers).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;

const WRK: &str = "/usr/bin/wrk";

/// How hard to load a target.
#[derive(Clone, Debug)]
pub struct Load {
    pub duration: Duration,
    pub connections: usize,
    pub threads: usize,
}

/// What one wrk run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct WrkReport {
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Connect, read, write and timeout errors added up.
    pub socket_errors: u64,
    /// Answers with a status outside 2xx/3xx.
    pub non_2xx: u64,
    pub requests: u64,
}

/// Runs wrk against `http://addr/` (with a `Host` header when given) and parses its report.
pub async fn run(addr: SocketAddr, host: Option<&str>, load: &Load) -> anyhow::Result<WrkReport> {
    if !std::path::Path::new(WRK).is_file() {
        anyhow::bail!("{WRK} not found: install Debian's wrk package (apt-get install wrk)");
    }
    let mut command = Command::new(WRK);
    command
        .arg("--threads")
        .arg(load.threads.to_string())
        .arg("--connections")
        .arg(load.connections.to_string())
        .arg("--duration")
        .arg(format!("{}s", whole_seconds(load.duration)))
        .arg("--latency");
    if let Some(host) = host {
        command.arg("--header").arg(format!("Host: {host}"));
    }
    let output = command
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {WRK}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        anyhow::bail!(
            "wrk failed ({}): {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse(&stdout).with_context(|| format!("cannot read wrk's report:\n{stdout}"))
}

/// wrk takes whole seconds: rounds to the nearest one, at least 1.
pub fn whole_seconds(duration: Duration) -> u64 {
    (duration.as_secs_f64().round() as u64).max(1)
}

/// Parses wrk's `--latency` report.
pub fn parse(text: &str) -> anyhow::Result<WrkReport> {
    let mut requests_per_sec = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut socket_errors = 0;
    let mut non_2xx = 0;
    let mut requests = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = rest.trim().parse::<f64>().ok();
        } else if let Some(rest) = line.strip_prefix("50%") {
            p50 = parse_time(rest.trim());
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99 = parse_time(rest.trim());
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = rest.trim().parse().unwrap_or(0);
        } else if line.contains(" requests in ") {
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    Ok(WrkReport {
        requests_per_sec: requests_per_sec.context("no 'Requests/sec:' line")?,
        p50: p50.context("no '50%' latency line (was --latency given?)")?,
        p99: p99.context("no '99%' latency line (was --latency given?)")?,
        socket_errors,
        non_2xx,
        requests: requests.context("no 'N requests in' line")?,
    })
}

/// Parses wrk's times: `635.00us`, `1.23ms`, `2.00s`, `1.00m`.
fn parse_time(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let micros = match unit {
        "us" => value,
        "ms" => value * 1e3,
        "s" => value * 1e6,
        "m" => value * 60e6,
        "h" => value * 3600e6,
        _ => return None,
    };
    Some(Duration::from_secs_f64(micros / 1e6))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   710.43us  301.22us  12.01ms   88.10%
    Req/Sec    44.71k     2.01k   49.80k    71.00%
  Latency Distribution
     50%  635.00us
     75%  812.00us
     90%    1.02ms
     99%    1.85ms
  889812 requests in 10.00s, 70.43MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:  88972.41
Transfer/sec:      7.04MB
";

    #[test]
    fn parses_a_latency_report() {
        let report = parse(SAMPLE).unwrap();
        assert_eq!(report.requests_per_sec, 88972.41);
        assert_eq!(report.p50, Duration::from_micros(635));
        assert_eq!(report.p99, Duration::from_micros(1850));
        assert_eq!(report.socket_errors, 5);
        assert_eq!(report.non_2xx, 7);
        assert_eq!(report.requests, 889812);
    }

    #[test]
    fn a_report_without_latency_is_an_error() {
        let without = SAMPLE
            .lines()
            .filter(|l| !l.trim_start().starts_with("50%"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(parse(&without).is_err());
    }

    #[test]
    fn durations_become_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(300)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(2600)), 3);
        assert_eq!(whole_seconds(Duration::from_secs(10)), 10);
    }

    #[test]
    fn times_in_every_unit() {
        assert_eq!(parse_time("2.00s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_time("1.50m"), Some(Duration::from_secs(90)));
        assert_eq!(parse_time("12.00ms"), Some(Duration::from_millis(12)));
        assert_eq!(parse_time("fast"), None);
    }
}
