//! Starting and stopping apps: `start` streams the staging log from the
//! `X-App-Staging-Log` URL, then polls the instances until one runs, and prints the URLs.

use super::{routes, Ctx, Scope};
use crate::api::Api;
use crate::cf::{by_index, AppSummary, Instances};
use crate::cli::AppStartArgs;
use crate::output::Output;
use anyhow::{bail, Result};
use reqwest::Method;
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};

/// Seconds an app may take to start after staging, unless its manifest says otherwise.
pub const DEFAULT_START_TIMEOUT: u64 = 60;

/// How long staging itself may take before the client gives up waiting.
const STAGING_LIMIT: Duration = Duration::from_secs(15 * 60);

const POLL_INTERVAL: Duration = Duration::from_millis(400);

/// How to start an app.
#[derive(Clone, Copy, Debug)]
pub struct StartOptions {
    pub timeout_secs: u64,
    /// Stream the staging log.
    pub tail: bool,
    /// How a new version replaces a running one (`rolling`, the server's default, or
    /// `recreate`).
    pub strategy: Option<&'static str>,
    /// Rolling: replace at most this many instances at a time.
    pub max_in_flight: Option<u32>,
}

impl From<&AppStartArgs> for StartOptions {
    fn from(args: &AppStartArgs) -> Self {
        StartOptions {
            timeout_secs: args.health_timeout.unwrap_or(DEFAULT_START_TIMEOUT),
            tail: !args.no_tail,
            strategy: None,
            max_in_flight: None,
        }
    }
}

/// Sets the app STARTED, streams staging, waits for a running instance, prints the URLs.
pub async fn start_app(
    scope: &Scope,
    out: &Output,
    guid: &str,
    name: &str,
    opts: StartOptions,
) -> Result<()> {
    println!("Starting {name}...");
    let body = json!({"state": "STARTED"});
    let response = scope
        .api
        .request(
            Method::PUT,
            &update_path(
                guid,
                &["stage_async=true"],
                opts.strategy,
                opts.max_in_flight,
            ),
            Some(&body),
        )
        .await?;
    let log_url = staging_log_url(&response);
    drop(response);
    follow_staging(&scope.api, log_url.as_deref(), opts.tail).await;
    wait_running(&scope.api, guid, name, opts.timeout_secs).await?;
    print_urls(scope, out, guid, name).await
}

/// `PUT` path of an app update: `/v2/apps/GUID` with the `extra` query pairs and how a new
/// version replaces the running one (the server's defaults when `None`).
pub fn update_path(
    guid: &str,
    extra: &[&str],
    strategy: Option<&str>,
    max_in_flight: Option<u32>,
) -> String {
    with_swap(format!("/v2/apps/{guid}"), extra, strategy, max_in_flight)
}

/// `path` with the `extra` query pairs and the swap options.
fn with_swap(
    path: String,
    extra: &[&str],
    strategy: Option<&str>,
    max_in_flight: Option<u32>,
) -> String {
    let mut query: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    query.extend(strategy.map(|s| format!("strategy={s}")));
    query.extend(max_in_flight.map(|n| format!("max_in_flight={n}")));
    if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// Sets the app STOPPED.
pub async fn stop_app(scope: &Scope, guid: &str) -> Result<()> {
    let body = json!({"state": "STOPPED"});
    scope
        .api
        .request(Method::PUT, &format!("/v2/apps/{guid}"), Some(&body))
        .await?;
    Ok(())
}

fn staging_log_url(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("x-app-staging-log")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// Prints the staging log as it arrives. Losing the log is not fatal: the instance polling
/// that follows reports how staging ended.
async fn follow_staging(api: &Api, log_url: Option<&str>, tail: bool) {
    let Some(url) = log_url.filter(|_| tail) else {
        return;
    };
    let url = api.url(url);
    let mut response = match api.send(|c| c.get(&url)).await {
        Ok(r) => r,
        Err(e) if e.status() == Some(404) => return,
        Err(e) => {
            eprintln!("warning: cannot read the staging log: {e}");
            return;
        }
    };
    let mut stdout = std::io::stdout();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let _ = stdout.write_all(&chunk);
                let _ = stdout.flush();
            }
            Ok(None) => break,
            Err(e) => {
                eprintln!(
                    "warning: the staging log stopped early: {}",
                    crate::api::error_chain(&e)
                );
                break;
            }
        }
    }
}

/// What the instance states say about a start.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Running,
    Crashed,
    Waiting,
}

/// Running as soon as one instance runs; crashed when every instance crashed.
pub fn progress(instances: &Instances) -> Progress {
    if instances.values().any(|i| i.state == "RUNNING") {
        Progress::Running
    } else if !instances.is_empty() && instances.values().all(|i| i.state == "CRASHED") {
        Progress::Crashed
    } else {
        Progress::Waiting
    }
}

fn summary(instances: &Instances) -> String {
    by_index(instances)
        .iter()
        .map(|(i, s)| format!("{i}:{}", s.state))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Polls `GET /v2/apps/:guid/instances` until an instance runs.
pub async fn wait_running(api: &Api, guid: &str, name: &str, timeout_secs: u64) -> Result<()> {
    let staging_deadline = Instant::now() + STAGING_LIMIT;
    let mut start_deadline: Option<Instant> = None;
    let path = format!("/v2/apps/{guid}/instances");
    loop {
        match api.get::<Instances>(&path).await {
            Ok(instances) => {
                let deadline = *start_deadline
                    .get_or_insert_with(|| Instant::now() + Duration::from_secs(timeout_secs));
                match progress(&instances) {
                    Progress::Running => return Ok(()),
                    Progress::Crashed => bail!("{name} crashed while starting ({}); see `strato logs {name}`", summary(&instances)),
                    Progress::Waiting if Instant::now() > deadline => bail!(
                        "{name} did not start within {timeout_secs} s ({}); see `strato logs {name}`",
                        summary(&instances)
                    ),
                    Progress::Waiting => {}
                }
            }
            Err(e) if e.cf_code() == Some("CF-NotStaged") => {
                if Instant::now() > staging_deadline {
                    bail!(
                        "{name} was still staging after {} s; see `strato logs {name}`",
                        STAGING_LIMIT.as_secs()
                    );
                }
            }
            Err(e) if e.cf_code() == Some("CF-StagingError") => bail!("staging {name} failed: {e}"),
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Prints where the app answers.
async fn print_urls(scope: &Scope, out: &Output, guid: &str, name: &str) -> Result<()> {
    let app: AppSummary = scope.api.get(&format!("/v2/apps/{guid}/summary")).await?;
    println!("{name} is {}", out.state("RUNNING"));
    if app.urls.is_empty() {
        println!("{name} has no URL (no route mapped)");
    }
    for url in &app.urls {
        println!("{}", routes::public_url(&scope.target, url));
    }
    Ok(())
}

/// `strato start NAME`.
pub async fn start_cmd(ctx: &Ctx, args: AppStartArgs) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(&args.name).await?;
    if app.entity.state == "STARTED" {
        println!("{} is already started", args.name);
        return Ok(());
    }
    start_app(
        &scope,
        &ctx.out,
        &app.metadata.guid,
        &args.name,
        StartOptions::from(&args),
    )
    .await
}

/// `strato stop NAME`.
pub async fn stop_cmd(ctx: &Ctx, name: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    stop_app(&scope, &app.metadata.guid).await?;
    println!("Stopped {name}");
    Ok(())
}

/// `strato restage NAME`: stages the app's current bits again, following the log; a
/// started app then runs the new droplet, its instances replaced as the options say.
pub async fn restage_cmd(ctx: &Ctx, args: AppStartArgs) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(&args.name).await?;
    let guid = &app.metadata.guid;
    let opts = StartOptions::from(&args);
    println!("Restaging {}...", args.name);
    let path = with_swap(
        format!("/v2/apps/{guid}/restage"),
        &[],
        opts.strategy,
        opts.max_in_flight,
    );
    let response = scope.api.request(Method::POST, &path, None).await?;
    let log_url = staging_log_url(&response);
    drop(response);
    follow_staging(&scope.api, log_url.as_deref(), opts.tail).await;
    if app.entity.state == "STARTED" {
        wait_running(&scope.api, guid, &args.name, opts.timeout_secs).await?;
        print_urls(&scope, &ctx.out, guid, &args.name).await?;
    } else {
        println!(
            "Restaged {} (it is stopped; `strato start {}` runs it)",
            args.name, args.name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cf::InstanceState;

    fn instances(states: &[&str]) -> Instances {
        states
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    i.to_string(),
                    InstanceState {
                        state: s.to_string(),
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn progress_from_instance_states() {
        assert_eq!(
            progress(&instances(&["STARTING", "RUNNING"])),
            Progress::Running
        );
        assert_eq!(
            progress(&instances(&["CRASHED", "CRASHED"])),
            Progress::Crashed
        );
        assert_eq!(
            progress(&instances(&["CRASHED", "STARTING"])),
            Progress::Waiting
        );
        assert_eq!(progress(&instances(&[])), Progress::Waiting);
        assert_eq!(
            summary(&instances(&["DOWN", "RUNNING"])),
            "0:DOWN 1:RUNNING"
        );
    }
}
