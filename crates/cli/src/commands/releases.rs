//! Deploys you can undo and restarts without a gap: `releases`, `rollback`, `health` and
//! `restart --strategy`. Rollbacks and rolling restarts start the new instances before
//! the old ones stop (the controller's `roll_over`); the client waits until one runs.

use super::{lifecycle, routes, Ctx, Scope};
use crate::cf::{AppSummary, Resource};
use crate::error::usage;
use anyhow::Result;
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// One release as `GET /v2/apps/:guid/releases` lists it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ReleaseEntity {
    #[serde(default)]
    pub version: i64,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub droplet_hash: Option<String>,
    #[serde(default)]
    pub rollback_possible: bool,
    #[serde(default)]
    pub current: bool,
    #[serde(default)]
    pub actor_name: String,
    #[serde(default)]
    pub detected_buildpack: Option<String>,
    #[serde(default)]
    pub buildpack: Option<String>,
}

/// `strato releases APP`: newest first.
pub async fn releases_cmd(ctx: &Ctx, name: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    let list = scope
        .api
        .list::<ReleaseEntity>(&format!("/v2/apps/{}/releases", app.metadata.guid), &[])
        .await?;
    if ctx.out.json {
        return ctx.out.print_json(&list);
    }
    let rows: Vec<Vec<String>> = list.iter().rev().map(release_row).collect();
    ctx.out.print_table(
        &["Release", "Description", "Droplet", "By", "When"],
        &rows,
        &format!("{name} has no releases yet; each successful push makes one."),
    );
    Ok(())
}

fn release_row(r: &Resource<ReleaseEntity>) -> Vec<String> {
    let e = &r.entity;
    let marker = if e.current { " (current)" } else { "" };
    let droplet = match &e.droplet_hash {
        Some(d) => d.chars().take(12).collect(),
        None => "expired".to_string(),
    };
    vec![
        format!("v{}{marker}", e.version),
        e.description.clone(),
        droplet,
        e.actor_name.clone(),
        r.metadata.created_at.clone().unwrap_or_default(),
    ]
}

/// `3` or `v3`.
pub fn parse_release(text: &str) -> Result<i64> {
    let digits = text.trim().trim_start_matches(['v', 'V']);
    match digits.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => usage(format!(
            "{text:?} is not a release number; write it like 3 or v3 (see `strato releases APP`)"
        )),
    }
}

/// `strato rollback APP [N]`: to release N, or the one before the current.
pub async fn rollback_cmd(ctx: &Ctx, name: &str, release: Option<&str>) -> Result<()> {
    let number = release.map(parse_release).transpose()?;
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    let guid = &app.metadata.guid;
    let body = match number {
        Some(n) => json!({ "release": n }),
        None => json!({}),
    };
    let made: Resource<Value> = scope
        .api
        .post(&format!("/v2/apps/{guid}/rollback"), &body)
        .await?;
    let e = &made.entity;
    println!(
        "Rolled {name} back: {} (now release v{})",
        e["description"].as_str().unwrap_or("rollback"),
        e["version"]
    );
    if app.entity.state == "STARTED" {
        println!("The previous instances serve until the new ones run...");
        lifecycle::wait_running(&scope.api, guid, name, lifecycle::DEFAULT_START_TIMEOUT).await?;
        print_running(ctx, &scope, guid, name).await?;
    }
    Ok(())
}

async fn print_running(ctx: &Ctx, scope: &Scope, guid: &str, name: &str) -> Result<()> {
    let s: AppSummary = scope.api.get(&format!("/v2/apps/{guid}/summary")).await?;
    println!("{name} is {}", ctx.out.state("RUNNING"));
    for url in &s.urls {
        println!("{}", routes::public_url(&scope.target, url));
    }
    Ok(())
}

/// Options of `strato health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    pub name: String,
    /// port (the port accepts connections), http (GET ENDPOINT answers below 500) or
    /// process (running is enough; for workers).
    #[arg(long = "type", value_name = "TYPE", value_parser = ["port", "http", "process", "none"])]
    pub kind: Option<String>,
    /// The path an http check asks, e.g. /health (implies --type http when no type is set).
    #[arg(long, value_name = "PATH")]
    pub endpoint: Option<String>,
    /// Seconds a new instance may take to pass (1-180).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=180))]
    pub timeout: Option<u64>,
}

/// `strato health APP [--type T] [--endpoint P] [--timeout S]`: shows or sets the check.
pub async fn health_cmd(ctx: &Ctx, args: HealthArgs) -> Result<()> {
    let mut changes = Map::new();
    if let Some(t) = &args.kind {
        changes.insert("health_check_type".into(), json!(t));
    }
    if let Some(p) = &args.endpoint {
        if !p.starts_with('/') {
            return usage(format!("--endpoint {p:?}: write a path such as /health"));
        }
        changes.insert("health_check_http_endpoint".into(), json!(p));
        if args.kind.is_none() {
            changes.insert("health_check_type".into(), json!("http"));
        }
    }
    if let Some(s) = args.timeout {
        changes.insert("health_check_timeout".into(), json!(s));
    }
    let scope = ctx.scope()?;
    let app = scope.require_app(&args.name).await?;
    let path = format!("/v2/apps/{}", app.metadata.guid);
    let now: Resource<Value> = if changes.is_empty() {
        scope.api.get(&path).await?
    } else {
        scope
            .api
            .put(&path, &Value::Object(changes.clone()))
            .await?
    };
    let e = &now.entity;
    let kind = e["health_check_type"]
        .as_str()
        .unwrap_or("port")
        .to_string();
    let endpoint = e["health_check_http_endpoint"].as_str().map(str::to_string);
    let timeout = e["health_check_timeout"].as_u64().unwrap_or(60);
    if ctx.out.json {
        return ctx.out.print_json(&json!({
            "health_check_type": kind, "health_check_http_endpoint": endpoint, "health_check_timeout": timeout,
        }));
    }
    let shown_endpoint = match (kind.as_str(), &endpoint) {
        ("http", None) => "/".to_string(),
        (_, e) => e.clone().unwrap_or_default(),
    };
    let rows = vec![
        vec!["Type".to_string(), kind],
        vec!["Endpoint".to_string(), shown_endpoint],
        vec!["Timeout".to_string(), format!("{timeout}s")],
    ];
    ctx.out.print_table(&["Health check", "Value"], &rows, "");
    if !changes.is_empty() && app.entity.state == "STARTED" {
        println!(
            "New instances use it; `strato restart {} --strategy rolling` applies it now",
            args.name
        );
    }
    Ok(())
}

/// Options of `strato restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    pub name: String,
    /// rolling: new instances start first and the old ones stop once they run (no gap);
    /// recreate: stop, then start. Without it: stop, then start.
    #[arg(long, value_name = "STRATEGY", value_parser = ["rolling", "recreate"])]
    pub strategy: Option<String>,
    /// Seconds the app may take to start.
    #[arg(long = "health-timeout", value_name = "SECS")]
    pub health_timeout: Option<u64>,
    /// Do not stream the staging log.
    #[arg(long)]
    pub no_tail: bool,
}

/// `strato restart APP [--strategy rolling|recreate]`.
pub async fn restart_cmd(ctx: &Ctx, args: RestartArgs) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(&args.name).await?;
    let guid = app.metadata.guid.clone();
    let opts = lifecycle::StartOptions {
        timeout_secs: args
            .health_timeout
            .unwrap_or(lifecycle::DEFAULT_START_TIMEOUT),
        tail: !args.no_tail,
        strategy: None,
        max_in_flight: None,
    };
    let started = app.entity.state == "STARTED";
    if started && args.strategy.as_deref() == Some("rolling") {
        println!("Restarting {} (rolling)...", args.name);
        let _: Value = scope
            .api
            .post(
                &format!("/v2/apps/{guid}/restart"),
                &json!({"strategy": "rolling"}),
            )
            .await?;
        lifecycle::wait_running(&scope.api, &guid, &args.name, opts.timeout_secs).await?;
        return print_running(ctx, &scope, &guid, &args.name).await;
    }
    if started {
        lifecycle::stop_app(&scope, &guid).await?;
        println!("Stopped {}", args.name);
    }
    lifecycle::start_app(&scope, &ctx.out, &guid, &args.name, opts).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_numbers_with_or_without_v() {
        assert_eq!(parse_release("3").unwrap(), 3);
        assert_eq!(parse_release("v12").unwrap(), 12);
        for bad in ["0", "x", "v", "-1"] {
            let e = parse_release(bad).unwrap_err();
            assert_eq!(crate::error::exit_code(&e), 2, "{bad}");
        }
    }

    #[test]
    fn releases_show_newest_marks_and_expired_droplets() {
        let r: Resource<ReleaseEntity> = serde_json::from_value(json!({
            "metadata": {"guid": "g", "created_at": "2024-01-01T00:00:00Z"},
            "entity": {"version": 2, "description": "rollback to v1", "droplet_hash": null, "current": true, "actor_name": "admin"}
        }))
        .unwrap();
        assert_eq!(
            release_row(&r),
            vec![
                "v2 (current)",
                "rollback to v1",
                "expired",
                "admin",
                "2024-01-01T00:00:00Z"
            ]
        );
    }
}
