//! `strato-bench`: the benchmarks DESIGN.md's performance targets are measured with.
//!
//! They are a command, not timed tests: `strato-bench router` runs Strato's router and nginx
//! in front of the same backend with the same worker count and prints the throughput ratio
//! and p50/p99 latencies; `strato-bench container` times container starts with runc;
//! `strato-bench push` times pushes of the fixture apps and crash recovery.

mod backend;
mod container_bench;
mod density_bench;
mod nginx;
mod push_bench;
mod router_bench;
mod stats;
mod strato;
mod wrk;

use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "strato-bench",
    version,
    about = "Benchmarks for Strato's performance targets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print the results as one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Strato's router against nginx: same backend, same worker count, one wrk run each.
    Router(router_bench::RouterOptions),
    /// Container start time with the runc driver (needs root).
    Container(container_bench::ContainerOptions),
    /// Push of each fixture app to its first 200, re-push, and kill -9 to serving again
    /// (a micro cloud from the binaries next to this one; needs root).
    Push(push_bench::PushOptions),
    /// How many instances of a tiny app one node holds, and what each costs (needs root).
    Density(density_bench::DensityOptions),
}

/// Parses `10s`, `500ms`, `1m` or a plain number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration; write e.g. 10s, 500ms or 1m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit '{unit}' in '{text}'; use ms, s or m")),
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("'{text}' must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Router(options) => router_bench::run(&options, cli.json),
        Command::Container(options) => container_bench::run(&options, cli.json),
        Command::Push(options) => push_bench::run(&options, cli.json),
        Command::Density(options) => density_bench::run(&options, cli.json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn bad_durations_are_refused() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
