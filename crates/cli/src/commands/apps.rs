//! Commands that read or change one app or list them: `apps`, `app`, `delete`, `instances`,
//! `stats`, `scale`, `env`, `env-add`, `env-del`.

use super::Ctx;
use crate::cf::{
    by_index, AppEntity, AppSummary, InstanceStats, Instances, Resource, SpaceSummary,
};
use crate::cli::ScaleArgs;
use crate::error::usage;
use crate::manifest::parse_mem;
use crate::output::{bytes, duration, megabytes, unix_time};
use crate::prompt;
use anyhow::Result;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// `strato apps`.
pub async fn list(ctx: &Ctx) -> Result<()> {
    let scope = ctx.scope()?;
    let space: SpaceSummary = scope
        .api
        .get(&format!("/v2/spaces/{}/summary", scope.space_guid))
        .await?;
    if ctx.out.json {
        return ctx.out.print_json(&space.apps);
    }
    let mut apps = space.apps;
    apps.sort_by(|a, b| a.app.name.cmp(&b.app.name));
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            vec![
                a.app.name.clone(),
                instance_count(a),
                megabytes(a.app.memory),
                a.app.state.clone(),
                a.urls.join(", "),
            ]
        })
        .collect();
    ctx.out.print_table(
        &["Name", "#", "Mem", "State", "URLs"],
        &rows,
        "No apps in this space; `strato push` creates one.",
    );
    Ok(())
}

fn instance_count(app: &AppSummary) -> String {
    match app.running_instances {
        Some(running) => format!("{running}/{}", app.app.instances),
        None => app.app.instances.to_string(),
    }
}

/// `strato app NAME`.
pub async fn show(ctx: &Ctx, name: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    let summary: Value = scope
        .api
        .get(&format!("/v2/apps/{}/summary", app.metadata.guid))
        .await?;
    if ctx.out.json {
        return ctx.out.print_json(&summary);
    }
    let s: AppSummary = serde_json::from_value(summary).unwrap_or_default();
    let urls: Vec<String> = s
        .urls
        .iter()
        .map(|u| super::routes::public_url(&scope.target, u))
        .collect();
    let buildpack = s
        .app
        .buildpack
        .clone()
        .or(s.app.detected_buildpack.clone())
        .unwrap_or_default();
    let rows = vec![
        vec!["Name".into(), s.app.name.clone()],
        vec!["State".into(), s.app.state.clone()],
        vec!["Instances".into(), instance_count(&s)],
        vec!["Memory".into(), megabytes(s.app.memory)],
        vec!["Disk".into(), megabytes(s.app.disk_quota)],
        vec!["URLs".into(), urls.join(" ")],
        vec!["Buildpack".into(), buildpack],
        vec!["Command".into(), s.app.command.clone().unwrap_or_default()],
        vec![
            "Package".into(),
            s.app.package_state.clone().unwrap_or_default(),
        ],
        vec!["Guid".into(), app.metadata.guid.clone()],
    ];
    ctx.out.print_table(&["Property", "Value"], &rows, "");
    Ok(())
}

/// `strato delete NAME`: asks first unless `-n`.
pub async fn delete(ctx: &Ctx, name: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    if !ctx.no_prompt {
        if !prompt::interactive(false) {
            return usage(format!(
                "refusing to delete {name} without confirmation; run `strato delete {name} -n`"
            ));
        }
        if !prompt::confirm(&format!("Delete app {name}?"))? {
            println!("Not deleted");
            return Ok(());
        }
    }
    scope
        .api
        .delete(&format!("/v2/apps/{}?recursive=true", app.metadata.guid))
        .await?;
    println!("Deleted {name}");
    Ok(())
}

/// `strato instances NAME`.
pub async fn instances(ctx: &Ctx, name: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    let instances: Instances = match scope
        .api
        .get(&format!("/v2/apps/{}/instances", app.metadata.guid))
        .await
    {
        Ok(i) => i,
        Err(e) if e.cf_code() == Some("CF-NotStaged") => {
            anyhow::bail!("{name} has not been staged yet: {e}")
        }
        Err(e) => return Err(e.into()),
    };
    if ctx.out.json {
        return ctx.out.print_json(&instances);
    }
    let rows: Vec<Vec<String>> = by_index(&instances)
        .into_iter()
        .map(|(index, i)| {
            vec![
                index.clone(),
                i.state.clone(),
                i.since.map(unix_time).unwrap_or_default(),
                i.uptime.map(duration).unwrap_or_default(),
                i.host.clone().unwrap_or_default(),
            ]
        })
        .collect();
    ctx.out.print_table(
        &["Index", "State", "Since", "Uptime", "Host"],
        &rows,
        &format!("{name} has no instances."),
    );
    Ok(())
}

/// `strato stats NAME`.
pub async fn stats(ctx: &Ctx, name: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    let stats: BTreeMap<String, InstanceStats> = scope
        .api
        .get(&format!("/v2/apps/{}/stats", app.metadata.guid))
        .await?;
    if ctx.out.json {
        return ctx.out.print_json(&stats);
    }
    let rows: Vec<Vec<String>> = by_index(&stats)
        .into_iter()
        .map(|(index, i)| match &i.stats {
            Some(s) => vec![
                index.clone(),
                i.state.clone(),
                format!("{:.1}%", s.usage.cpu),
                format!("{} / {}", bytes(s.usage.mem), bytes(s.mem_quota)),
                format!("{} / {}", bytes(s.usage.disk), bytes(s.disk_quota)),
                duration(s.uptime),
                format!("{}:{}", s.host, s.port),
            ],
            None => vec![
                index.clone(),
                i.state.clone(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
        })
        .collect();
    ctx.out.print_table(
        &[
            "Index", "State", "CPU", "Memory", "Disk", "Uptime", "Address",
        ],
        &rows,
        &format!("{name} has no instances."),
    );
    Ok(())
}

/// `strato scale NAME [--instances N] [--mem M] [--disk D]`.
pub async fn scale(ctx: &Ctx, args: ScaleArgs) -> Result<()> {
    let mut changes = Map::new();
    if let Some(n) = args.instances {
        changes.insert("instances".into(), json!(n));
    }
    if let Some(mem) = &args.mem {
        changes.insert("memory".into(), json!(mem_option(mem, "--mem")?));
    }
    if let Some(disk) = &args.disk {
        changes.insert("disk_quota".into(), json!(mem_option(disk, "--disk")?));
    }
    if changes.is_empty() {
        return usage("nothing to change; give --instances N, --mem SIZE or --disk SIZE");
    }
    let scope = ctx.scope()?;
    let app = scope.require_app(&args.name).await?;
    let updated: Resource<AppEntity> = scope
        .api
        .put(
            &format!("/v2/apps/{}", app.metadata.guid),
            &Value::Object(changes),
        )
        .await?;
    let e = &updated.entity;
    println!(
        "Scaled {}: {} instance(s), {} memory, {} disk",
        args.name,
        e.instances,
        megabytes(e.memory),
        megabytes(e.disk_quota)
    );
    Ok(())
}

/// A size given on the command line, or a usage error naming the option.
pub fn mem_option(value: &str, option: &str) -> Result<u64> {
    match parse_mem(value) {
        Ok(mb) => Ok(mb),
        Err(e) => usage(format!("{option}: {e}")),
    }
}

/// `strato env NAME`.
pub async fn env(ctx: &Ctx, name: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    let vars = app.entity.environment_json.unwrap_or_default();
    if ctx.out.json {
        return ctx.out.print_json(&vars);
    }
    let rows: Vec<Vec<String>> = vars
        .iter()
        .map(|(k, v)| vec![k.clone(), env_text(v)])
        .collect();
    ctx.out.print_table(
        &["Variable", "Value"],
        &rows,
        &format!("{name} has no environment variables."),
    );
    Ok(())
}

fn env_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `strato env-add NAME K V` (value) and `strato env-del NAME K` (no value).
pub async fn env_set(ctx: &Ctx, name: &str, key: &str, value: Option<String>) -> Result<()> {
    if key.is_empty() || key.contains('=') {
        return usage(format!("{key:?} is not a variable name"));
    }
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    let mut vars = app.entity.environment_json.unwrap_or_default();
    let done = match value {
        Some(v) => {
            vars.insert(key.to_string(), Value::String(v));
            format!("Set {key} on {name}")
        }
        None => {
            if vars.remove(key).is_none() {
                anyhow::bail!("{name} has no variable {key}; see `strato env {name}`");
            }
            format!("Removed {key} from {name}")
        }
    };
    let body = json!({"environment_json": vars});
    let _: Value = scope
        .api
        .put(&format!("/v2/apps/{}", app.metadata.guid), &body)
        .await?;
    println!("{done}");
    if app.entity.state == "STARTED" {
        println!("Run `strato restart {name}` for the app to see the change");
    }
    Ok(())
}
