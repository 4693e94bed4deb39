//! The smaller app, routing and session commands of Stackato's client that need no module
//! of their own: `open`, `rename`, `mem`, `disk`, `crashes`, `crashlogs`, `events`,
//! `create-app`, `delete-route`, `user`, `completions`, plus `releases`, `rollback` and
//! `health` (in [`super::releases`]). [`MoreCommand`] is flattened into the top-level
//! command list, so these read like every other subcommand in `strato help`.

use super::{logs, releases, routes, Ctx};
use crate::cf::{AppEntity, AppSummary, LogLine, Named, Resource, RouteEntity};
use crate::error::usage;
use crate::output::{megabytes, unix_time};
use anyhow::{anyhow, Result};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Subcommand)]
pub enum MoreCommand {
    /// List an app's releases (each successful push is one).
    Releases { name: String },
    /// Return an app to release N (default: the previous one) without downtime.
    Rollback {
        name: String,
        /// Release number, e.g. 3 or v3 (see `strato releases APP`).
        release: Option<String>,
    },
    /// Show or set an app's health check (port, http ENDPOINT or process; timeout).
    Health(releases::HealthArgs),
    /// Create an app without pushing code to it.
    #[command(name = "create-app")]
    CreateApp {
        name: String,
        #[arg(long)]
        instances: Option<u32>,
        /// Memory per instance, e.g. 256M, 1G.
        #[arg(long, value_name = "SIZE")]
        mem: Option<String>,
        /// Disk per instance, e.g. 1G.
        #[arg(long, value_name = "SIZE")]
        disk: Option<String>,
        #[arg(long)]
        buildpack: Option<String>,
        /// Command that starts the app.
        #[arg(long)]
        command: Option<String>,
    },
    /// Rename an app.
    Rename { name: String, new_name: String },
    /// Show or set the memory per instance of an app (e.g. 512M, 1G).
    Mem { name: String, size: Option<String> },
    /// Show or set the disk per instance of an app (e.g. 2G).
    Disk { name: String, size: Option<String> },
    /// List an app's crashed instances.
    Crashes { name: String },
    /// Show the staging log and the log of an app's crashed instances.
    Crashlogs {
        name: String,
        /// Number of past lines to search.
        #[arg(long, default_value_t = 500)]
        num: u32,
    },
    /// List recent events (of one app when given).
    Events { name: Option<String> },
    /// Print an app's URL and open it in a browser (xdg-open) when there is one.
    Open { name: String },
    /// Delete a route (HOST.DOMAIN), unmapping it from its apps (asks first unless -n).
    #[command(name = "delete-route")]
    DeleteRoute { url: String },
    /// Show the user you are logged in as.
    User,
    /// Print a shell completion script: `source <(strato completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Runs one of [`MoreCommand`].
pub async fn run(ctx: &Ctx, cmd: MoreCommand) -> Result<()> {
    match cmd {
        MoreCommand::Releases { name } => releases::releases_cmd(ctx, &name).await,
        MoreCommand::Rollback { name, release } => {
            releases::rollback_cmd(ctx, &name, release.as_deref()).await
        }
        MoreCommand::Health(args) => releases::health_cmd(ctx, args).await,
        MoreCommand::CreateApp {
            name,
            instances,
            mem,
            disk,
            buildpack,
            command,
        } => {
            let mut body = json!({"name": name});
            if let Some(n) = instances {
                body["instances"] = json!(n);
            }
            if let Some(m) = mem {
                body["memory"] = json!(super::apps::mem_option(&m, "--mem")?);
            }
            if let Some(d) = disk {
                body["disk_quota"] = json!(super::apps::mem_option(&d, "--disk")?);
            }
            if let Some(b) = buildpack {
                body["buildpack"] = json!(b);
            }
            if let Some(c) = command {
                body["command"] = json!(c);
            }
            create_app(ctx, body).await
        }
        MoreCommand::Rename { name, new_name } => rename(ctx, &name, &new_name).await,
        MoreCommand::Mem { name, size } => {
            size_cmd(ctx, &name, size.as_deref(), SizeField::Memory).await
        }
        MoreCommand::Disk { name, size } => {
            size_cmd(ctx, &name, size.as_deref(), SizeField::Disk).await
        }
        MoreCommand::Crashes { name } => crashes(ctx, &name).await,
        MoreCommand::Crashlogs { name, num } => crashlogs(ctx, &name, num).await,
        MoreCommand::Events { name } => events(ctx, name.as_deref()).await,
        MoreCommand::Open { name } => open(ctx, &name).await,
        MoreCommand::DeleteRoute { url } => delete_route(ctx, &url).await,
        MoreCommand::User => user(ctx).await,
        MoreCommand::Completions { shell } => completions(shell),
    }
}

/// `strato create-app NAME`: the app exists, stopped, with no code and no URL yet.
async fn create_app(ctx: &Ctx, mut body: Value) -> Result<()> {
    let scope = ctx.scope()?;
    let name = body["name"].as_str().unwrap_or_default().to_string();
    body["space_guid"] = json!(scope.space_guid);
    let made: Resource<AppEntity> = match scope.api.post("/v2/apps", &body).await {
        Ok(a) => a,
        Err(e) if e.cf_code() == Some("CF-AppNameTaken") => {
            anyhow::bail!("an app named {name} already exists in this space ({e})")
        }
        Err(e) => return Err(e.into()),
    };
    if ctx.out.json {
        return ctx.out.print_json(&made);
    }
    println!(
        "Created {name} ({} instance(s), {}); `strato push {name}` uploads its code, `strato map {name} URL` gives it a URL",
        made.entity.instances,
        megabytes(made.entity.memory)
    );
    Ok(())
}

/// `strato rename APP NEW`.
async fn rename(ctx: &Ctx, name: &str, new_name: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    let _: Value = scope
        .api
        .put(
            &format!("/v2/apps/{}", app.metadata.guid),
            &json!({"name": new_name}),
        )
        .await?;
    println!("Renamed {name} to {new_name}");
    Ok(())
}

#[derive(Clone, Copy)]
enum SizeField {
    Memory,
    Disk,
}

/// `strato mem APP [SIZE]` and `strato disk APP [SIZE]`: show, or set like `scale`.
async fn size_cmd(ctx: &Ctx, name: &str, size: Option<&str>, field: SizeField) -> Result<()> {
    let (key, what, option) = match field {
        SizeField::Memory => ("memory", "memory", "SIZE"),
        SizeField::Disk => ("disk_quota", "disk", "SIZE"),
    };
    let mb = size
        .map(|s| super::apps::mem_option(s, option))
        .transpose()?;
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    let entity = match mb {
        Some(mb) => {
            let updated: Resource<AppEntity> = scope
                .api
                .put(
                    &format!("/v2/apps/{}", app.metadata.guid),
                    &json!({ key: mb }),
                )
                .await?;
            updated.entity
        }
        None => app.entity,
    };
    let value = match field {
        SizeField::Memory => entity.memory,
        SizeField::Disk => entity.disk_quota,
    };
    if ctx.out.json {
        return ctx.out.print_json(&json!({ key: value }));
    }
    match mb {
        Some(_) => println!(
            "Set the {what} of {name} to {} per instance",
            megabytes(value)
        ),
        None => println!("{name}: {} {what} per instance", megabytes(value)),
    }
    Ok(())
}

/// One entry of `GET /v2/apps/:guid/crashes`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Crash {
    #[serde(default)]
    pub instance: String,
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub since: f64,
    #[serde(default)]
    pub current_version: Option<bool>,
}

async fn crash_list(scope: &super::Scope, guid: &str) -> Result<Vec<Crash>> {
    Ok(scope
        .api
        .get::<Vec<Crash>>(&format!("/v2/apps/{guid}/crashes"))
        .await?)
}

/// `strato crashes APP`.
async fn crashes(ctx: &Ctx, name: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    let list = crash_list(&scope, &app.metadata.guid).await?;
    if ctx.out.json {
        return ctx.out.print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.index.map(|i| i.to_string()).unwrap_or_default(),
                c.instance.clone(),
                unix_time(c.since),
                match c.current_version {
                    Some(false) => "previous".into(),
                    _ => "current".into(),
                },
            ]
        })
        .collect();
    ctx.out.print_table(
        &["Index", "Instance", "Crashed", "Version"],
        &rows,
        &format!("{name} has no crashed instances."),
    );
    Ok(())
}

/// The log lines that tell why instances crashed: staging output and the lines of the
/// crashed indices.
fn crash_lines(lines: Vec<LogLine>, crashed: &[u32]) -> Vec<LogLine> {
    lines
        .into_iter()
        .filter(|l| {
            l.source == "staging"
                || l.instance_index
                    .is_some_and(|i| crashed.iter().any(|c| i64::from(*c) == i))
        })
        .collect()
}

/// `strato crashlogs APP`.
async fn crashlogs(ctx: &Ctx, name: &str, num: u32) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    let guid = &app.metadata.guid;
    let crashed: Vec<u32> = crash_list(&scope, guid)
        .await?
        .iter()
        .filter_map(|c| c.index)
        .collect();
    let response = scope
        .api
        .request(
            reqwest::Method::GET,
            &format!("/v2/apps/{guid}/stackato_logs?num={num}"),
            None,
        )
        .await?;
    let text = response.text().await.map_err(|e| anyhow!("{e}"))?;
    let lines: Vec<LogLine> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let picked = crash_lines(lines, &crashed);
    if ctx.out.json {
        return ctx.out.print_json(&picked);
    }
    if crashed.is_empty() {
        println!("{name} has no crashed instances; its staging log follows");
    }
    for l in &picked {
        println!("{}", logs::format_line(l));
    }
    Ok(())
}

/// `strato events [APP]`.
async fn events(ctx: &Ctx, name: Option<&str>) -> Result<()> {
    let (api, query) = match name {
        Some(n) => {
            let scope = ctx.scope()?;
            let app = scope.require_app(n).await?;
            let q = vec![("q", format!("actee:{}", app.metadata.guid))];
            (scope.api, q)
        }
        None => (ctx.api()?.0, Vec::new()),
    };
    let list = api.list::<Value>("/v2/events", &query).await?;
    if ctx.out.json {
        return ctx.out.print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            let t = |k: &str| e.entity[k].as_str().unwrap_or_default().to_string();
            vec![
                t("timestamp"),
                t("type"),
                t("actor_name"),
                format!("{} {}", t("actee_type"), t("actee_name")),
                event_detail(&e.entity["metadata"]),
            ]
        })
        .collect();
    ctx.out.print_table(
        &["Time", "Event", "Actor", "Target", "Detail"],
        &rows,
        "No events.",
    );
    Ok(())
}

/// What an event's metadata says worth a table cell: the health manager's reason and the
/// instance indices it acted on.
fn event_detail(metadata: &Value) -> String {
    let Some(reason) = metadata["reason"].as_str() else {
        return String::new();
    };
    match metadata["indices"].as_array() {
        Some(indices) if !indices.is_empty() => {
            let list: Vec<String> = indices.iter().map(Value::to_string).collect();
            format!("{reason} (index {})", list.join(", "))
        }
        _ => reason.to_string(),
    }
}

/// `strato open APP`.
async fn open(ctx: &Ctx, name: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let app = scope.require_app(name).await?;
    let s: AppSummary = scope
        .api
        .get(&format!("/v2/apps/{}/summary", app.metadata.guid))
        .await?;
    let Some(first) = s.urls.first() else {
        anyhow::bail!("{name} has no URL; map one with `strato map {name} URL`");
    };
    let url = routes::public_url(&scope.target, first);
    println!("{url}");
    if ctx.out.tty && which("xdg-open") {
        let _ = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    Ok(())
}

/// True when `program` is an executable on `PATH`.
fn which(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// `strato delete-route HOST.DOMAIN`.
async fn delete_route(ctx: &Ctx, url: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let domains = scope.api.list::<Named>("/v2/domains", &[]).await?;
    let (host, domain) = routes::split_url(url, &domains)?;
    let full = routes::fqdn(&host, &domain.entity.name);
    let query = [
        ("q", format!("host:{host}")),
        ("q", format!("domain_guid:{}", domain.metadata.guid)),
    ];
    let route = scope
        .api
        .list::<RouteEntity>("/v2/routes", &query)
        .await?
        .into_iter()
        .find(|r| r.entity.host == host && r.entity.domain_guid == domain.metadata.guid)
        .ok_or_else(|| anyhow!("{full} is not a route of this target; see `strato routes`"))?;
    if !ctx.no_prompt {
        if !crate::prompt::interactive(false) {
            return usage(format!(
                "refusing to delete {full} without confirmation; run `strato delete-route {full} -n`"
            ));
        }
        if !crate::prompt::confirm(&format!("Delete route {full}?"))? {
            println!("Not deleted");
            return Ok(());
        }
    }
    scope
        .api
        .delete(&format!("/v2/routes/{}", route.metadata.guid))
        .await?;
    println!("Deleted route {full}");
    Ok(())
}

/// `strato user`.
async fn user(ctx: &Ctx) -> Result<()> {
    let (api, target, _) = ctx.api()?;
    let info: Value = api.get("/v2/info").await?;
    let Some(name) = info["user_name"].as_str() else {
        anyhow::bail!(
            "{} does not know you any more; run `strato login`",
            target.url
        );
    };
    if ctx.out.json {
        return ctx.out.print_json(&json!({
            "user_name": name, "user": info["user"], "admin": info["admin"], "target": target.url,
        }));
    }
    println!("{name}");
    Ok(())
}

/// `strato completions SHELL` (a closed pipe, as with `| head`, is not an error).
fn completions(shell: clap_complete::Shell) -> Result<()> {
    use clap::CommandFactory;
    use std::io::Write;
    let mut cmd = crate::cli::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "strato", &mut script);
    match std::io::stdout().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(source: &str, index: Option<i64>) -> LogLine {
        LogLine {
            text: format!("{source}{index:?}"),
            source: source.into(),
            instance_index: index,
            ..Default::default()
        }
    }

    #[test]
    fn crash_logs_keep_staging_and_the_crashed_indices() {
        let lines = vec![
            line("staging", None),
            line("app", Some(0)),
            line("app", Some(1)),
            line("dea", Some(1)),
        ];
        let picked: Vec<String> = crash_lines(lines, &[1])
            .into_iter()
            .map(|l| l.text)
            .collect();
        assert_eq!(picked, vec!["stagingNone", "appSome(1)", "deaSome(1)"]);
    }

    #[test]
    fn completions_cover_the_added_commands() {
        use clap::CommandFactory;
        let mut cmd = crate::cli::Cli::command();
        let mut out = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "strato", &mut out);
        let text = String::from_utf8(out).unwrap();
        for word in ["rollback", "crashlogs", "completions", "push"] {
            assert!(text.contains(word), "bash completion knows {word}");
        }
    }
}
