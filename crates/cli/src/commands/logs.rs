//! `strato logs NAME [--follow]`: reads the app's ndjson log stream and prints each line in
//! the apptail format `TIME SOURCE.INDEX: TEXT` (or the raw JSON lines with `--json`).

use super::Ctx;
use crate::cf::LogLine;
use crate::cli::LogsArgs;
use crate::output::unix_time;
use anyhow::{Context, Result};
use serde_json::Value;
use std::io::Write;

/// `strato logs`.
pub async fn logs(ctx: &Ctx, args: LogsArgs) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(&args.name).await?;
    let mut query = vec![("num", args.num.to_string())];
    if args.follow {
        query.push(("follow", "true".to_string()));
    }
    let url = scope
        .api
        .url(&format!("/v2/apps/{}/stackato_logs", app.metadata.guid));
    let response = scope.api.send(|c| c.get(&url).query(&query)).await?;
    tokio::select! {
        result = print_stream(response, ctx.out.json, &args) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn print_stream(mut response: reqwest::Response, raw: bool, args: &LogsArgs) -> Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut stdout = std::io::stdout();
    loop {
        let chunk = response.chunk().await.context("the log stream broke off")?;
        let done = chunk.is_none();
        if let Some(chunk) = chunk {
            pending.extend_from_slice(&chunk);
        } else if !pending.is_empty() {
            pending.push(b'\n');
        }
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(text) = render(line.trim_end(), raw, args) {
                let _ = writeln!(stdout, "{text}");
            }
        }
        let _ = stdout.flush();
        if done {
            return Ok(());
        }
    }
}

/// One line of output for one ndjson line; `None` when filtered out or blank.
fn render(line: &str, raw: bool, args: &LogsArgs) -> Option<String> {
    if line.trim().is_empty() {
        return None;
    }
    let Ok(entry) = serde_json::from_str::<LogLine>(line) else {
        return Some(line.to_string());
    };
    if args
        .instance
        .is_some_and(|i| entry.instance_index != Some(i))
        || args.source.as_ref().is_some_and(|s| *s != entry.source)
    {
        return None;
    }
    Some(if raw {
        line.to_string()
    } else {
        format_line(&entry)
    })
}

/// `TIME SOURCE.INDEX: TEXT`.
pub fn format_line(entry: &LogLine) -> String {
    let index = entry
        .instance_index
        .map_or_else(|| "-".to_string(), |i| i.to_string());
    format!(
        "{} {}.{}: {}",
        human_time(&entry.timestamp),
        entry.source,
        index,
        entry.text.trim_end_matches(['\n', '\r'])
    )
}

/// A timestamp in seconds, milliseconds, microseconds or nanoseconds, or already text.
fn human_time(ts: &Value) -> String {
    match ts {
        Value::Number(n) => {
            let mut secs = n.as_f64().unwrap_or(0.0);
            while secs > 1e11 {
                secs /= 1000.0;
            }
            unix_time(secs)
        }
        Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> LogsArgs {
        let mut argv = vec!["strato", "logs", "web"];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Logs(a) => a,
            _ => unreachable!("parsed as logs"),
        }
    }

    #[test]
    fn apptail_format() {
        let line = r#"{"text":"listening on 8080\n","source":"app","instance_index":0,"timestamp":1700000000,"stream":"stdout"}"#;
        assert_eq!(
            render(line, false, &args(&[])).unwrap(),
            "2023-11-14T22:13:20Z app.0: listening on 8080"
        );
        let ms = r#"{"text":"x","source":"staging","timestamp":1700000000000}"#;
        assert_eq!(
            render(ms, false, &args(&[])).unwrap(),
            "2023-11-14T22:13:20Z staging.-: x"
        );
        let text_time =
            r#"{"text":"y","source":"app","instance_index":1,"timestamp":"2024-01-01T00:00:00Z"}"#;
        assert_eq!(
            render(text_time, false, &args(&[])).unwrap(),
            "2024-01-01T00:00:00Z app.1: y"
        );
    }

    #[test]
    fn json_lines_and_filters() {
        let line = r#"{"text":"a","source":"app","instance_index":1,"timestamp":1}"#;
        assert_eq!(render(line, true, &args(&[])).unwrap(), line);
        assert_eq!(render(line, false, &args(&["--instance", "0"])), None);
        assert_eq!(render(line, false, &args(&["--source", "staging"])), None);
        assert!(render(line, false, &args(&["--instance", "1", "--source", "app"])).is_some());
        assert_eq!(render("   ", false, &args(&[])), None);
        assert_eq!(render("not json", false, &args(&[])).unwrap(), "not json");
    }
}
