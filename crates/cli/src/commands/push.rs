//! `strato push`: reads the manifest, creates or updates the app, maps its URLs, uploads the
//! files the server does not have (resource matching), then starts it and waits until it runs.

use super::lifecycle::{self, StartOptions, DEFAULT_START_TIMEOUT};
use super::routes::{self, fqdn};
use super::{Ctx, Scope};
use crate::api::Api;
use crate::cf::{AppEntity, AppSummary, Named, Resource};
use crate::cli::PushArgs;
use crate::cli::Strategy;
use crate::commands::apps::mem_option;
use crate::error::usage;
use crate::manifest::{self, Builtins, LoadOptions, Manifest};
use crate::output::bytes;
use crate::prompt;
use crate::upload::{self, Ignores, ResourceEntry, Scan};
use anyhow::{anyhow, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Memory for a new app when neither the manifest nor `--mem` gives it.
const DEFAULT_MEM_MB: u64 = 256;

/// Everything push will ask the server for, after merging manifest and options.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub name: String,
    pub instances: Option<u32>,
    pub mem_mb: Option<u64>,
    pub disk_mb: Option<u64>,
    /// `None`: the default route; `Some(vec![])`: no route.
    pub urls: Option<Vec<String>>,
    pub buildpack: Option<String>,
    pub command: Option<String>,
    pub env: BTreeMap<String, String>,
    pub timeout_secs: u64,
    /// `services:` from the manifest: (name, type), type empty for existing ones.
    pub services: Vec<(String, String)>,
    /// `drain:` from the manifest: (name, URI), added when the app lacks them.
    pub drains: Vec<(String, String)>,
    /// The app's health check, when the manifest or options set it: type, HTTP path,
    /// seconds to pass it.
    pub health_check_type: Option<String>,
    pub health_check_endpoint: Option<String>,
    pub health_timeout: Option<u64>,
}

/// Command-line options win over the manifest.
pub fn merge(args: &PushArgs, manifest: Manifest, name: String) -> Result<Settings> {
    let mut env = manifest.env;
    for pair in &args.env {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                env.insert(k.to_string(), v.to_string());
            }
            _ => return usage(format!("--env {pair:?} must look like KEY=VALUE")),
        }
    }
    Ok(Settings {
        name,
        instances: args.instances.or(manifest.instances),
        mem_mb: args
            .mem
            .as_deref()
            .map(|m| mem_option(m, "--mem"))
            .transpose()?
            .or(manifest.mem_mb),
        disk_mb: args
            .disk
            .as_deref()
            .map(|d| mem_option(d, "--disk"))
            .transpose()?
            .or(manifest.disk_mb),
        urls: if args.urls.is_empty() {
            manifest.urls
        } else {
            Some(args.urls.clone())
        },
        buildpack: args.buildpack.clone().or(manifest.buildpack),
        command: args.command.clone().or(manifest.command),
        env,
        timeout_secs: args
            .health_timeout
            .or(manifest.timeout)
            .unwrap_or(DEFAULT_START_TIMEOUT),
        services: manifest.services,
        drains: manifest.drains,
        health_check_type: manifest.health_check_type,
        health_check_endpoint: manifest.health_check_endpoint,
        health_timeout: args.health_timeout.or(manifest.timeout),
    })
}

/// `strato push [NAME]`: every app of the manifest in `depends-on` order, or the one named.
pub async fn push(ctx: &Ctx, args: PushArgs) -> Result<()> {
    let manifest_dir = match &args.path {
        Some(p) if !p.is_dir() => {
            return usage(format!("--path {}: no such directory", p.display()))
        }
        Some(p) => p.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    // Check the options before any network call.
    merge(&args, Manifest::default(), String::new())?;
    let target_url = ctx.target().ok().map(|t| t.url);
    let mut scope: Option<Scope> = None;
    let mut builtins = Builtins {
        target_base: None,
        target_url: target_url.clone(),
    };
    if target_url.is_some() && manifest_mentions_target_base(&manifest_dir) {
        let s = ctx.scope()?;
        let domains = routes::shared_domains(&s.api).await?;
        builtins.target_base = Some(routes::app_domain(&domains)?.entity.name.clone());
        scope = Some(s);
    }
    let env_given: BTreeSet<String> = args
        .env
        .iter()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, _)| k.to_string())
        .collect();
    let ask = |question: &str| prompt::ask(question);
    let ask_ref: &dyn Fn(&str) -> Result<String> = &ask;
    let opts = LoadOptions {
        builtins: &builtins,
        ask: prompt::interactive(ctx.no_prompt).then_some(ask_ref),
        env_given: &env_given,
    };
    let apps = manifest::load_all(&manifest_dir, &opts, args.name.as_deref())?;
    let apps = if apps.is_empty() {
        vec![Manifest::default()]
    } else {
        apps
    };
    for app in &apps {
        manifest::check_client_version(app)?;
    }
    let unnamed = |a: &Manifest| a.name.as_deref().is_none_or(|n| n.trim().is_empty());
    if (apps.len() > 1 || args.name.is_none())
        && apps.iter().any(unnamed)
        && !prompt::interactive(ctx.no_prompt)
    {
        return usage("no app name; give it as `strato push NAME` or as `name:` in stackato.yml");
    }
    let scope = match scope {
        Some(s) => s,
        None => ctx.scope()?,
    };
    if apps.iter().any(|a| a.min_server.is_some()) {
        let info: Value = scope.api.get("/v2/info").await?;
        let server = ["strato_version", "build"]
            .iter()
            .find_map(|k| info.get(*k).and_then(Value::as_str));
        for app in &apps {
            manifest::check_server_version(app, server)?;
        }
    }
    let several = apps.len() > 1;
    if several {
        let names: Vec<&str> = apps.iter().filter_map(|a| a.name.as_deref()).collect();
        println!("Pushing {} apps in order: {}", apps.len(), names.join(", "));
    }
    for app in apps {
        push_one(ctx, &scope, &args, app, &manifest_dir, several).await?;
    }
    Ok(())
}

/// True when a manifest file in `dir` uses a symbol that needs the target's app domain.
fn manifest_mentions_target_base(dir: &Path) -> bool {
    ["stackato.yml", "manifest.yml"].iter().any(|f| {
        std::fs::read_to_string(dir.join(f))
            .map(|t| t.contains("target-base") || t.contains("space-base"))
            .unwrap_or(false)
    })
}

/// Pushes one app of the manifest: its pre-push hooks, then the deploy.
async fn push_one(
    ctx: &Ctx,
    scope: &Scope,
    args: &PushArgs,
    manifest: Manifest,
    manifest_dir: &Path,
    several: bool,
) -> Result<()> {
    let app_dir = match &manifest.app_dir {
        Some(d) if args.path.is_none() || !Path::new(d).is_absolute() => manifest_dir.join(d),
        _ => manifest_dir.to_path_buf(),
    };
    if !app_dir.is_dir() {
        return Err(anyhow!("app-dir {}: no such directory", app_dir.display()));
    }
    let given_name = if several { None } else { args.name.clone() };
    let name = match given_name
        .or(manifest.name.clone())
        .filter(|n| !n.trim().is_empty())
    {
        Some(n) => n,
        None if prompt::interactive(ctx.no_prompt) => prompt::ask("Application name: ")?,
        None => {
            return usage(
                "no app name; give it as `strato push NAME` or as `name:` in stackato.yml",
            )
        }
    };
    run_pre_push(&manifest.pre_push, &app_dir, &name)?;
    let ignores = Ignores::for_dir(&app_dir, &manifest.ignores)?;
    let config = staging_config_text(&manifest.staging_config, &name)?;
    let settings = merge(args, manifest, name)?;
    deploy(
        scope,
        ctx,
        &settings,
        &app_dir,
        &ignores,
        args,
        config.as_deref(),
    )
    .await
}

/// Runs `hooks: pre-push:` in the app dir; a failure stops the push unless the command was
/// written with a leading `-`.
pub fn run_pre_push(hooks: &[String], app_dir: &Path, app_name: &str) -> Result<()> {
    for raw in hooks {
        let raw = raw.trim();
        let (command, ignore_failure) = match raw.strip_prefix('-') {
            Some(rest) => (rest.trim_start(), true),
            None => (raw, false),
        };
        if command.is_empty() {
            continue;
        }
        println!("Running pre-push hook: {command}");
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .current_dir(app_dir)
            .env("STACKATO_APP_NAME", app_name)
            .env("STACKATO_HOOK_ACTION", "push")
            .status()
            .with_context(|| format!("cannot run the pre-push hook {command:?}"))?;
        if status.success() {
            continue;
        }
        let code = status
            .code()
            .map(|c| format!("exit code {c}"))
            .unwrap_or_else(|| "a signal".to_string());
        if ignore_failure {
            eprintln!("pre-push hook ended with {code} (ignored): {command}");
        } else {
            return Err(anyhow!(
                "pre-push hook failed with {code}: {command}; nothing was pushed (fix the hook, or write it as `- -{command}` to ignore its failure)"
            ));
        }
    }
    Ok(())
}

/// The resolved manifest of one app as the `stackato.yml` uploaded with it (JSON, which is
/// YAML), so staging and the DEA see its hooks, cron lines and requirements.
fn staging_config_text(config: &Map<String, Value>, name: &str) -> Result<Option<String>> {
    if config.is_empty() {
        return Ok(None);
    }
    let mut config = config.clone();
    config.insert("name".into(), json!(name));
    Ok(Some(format!(
        "# Written by `strato push` from this app's manifest, resolved; env values left out.\n{}\n",
        serde_json::to_string_pretty(&config)?
    )))
}

async fn deploy(
    scope: &Scope,
    ctx: &Ctx,
    settings: &Settings,
    app_dir: &Path,
    ignores: &Ignores,
    args: &PushArgs,
    config: Option<&str>,
) -> Result<()> {
    let name = &settings.name;
    let domains = routes::usable_domains(&scope.api).await?;
    let (guid, was_started, mapped) = match scope.find_app(name).await? {
        Some(app) => {
            println!("Updating {name}...");
            let guid = app.metadata.guid.clone();
            let was_started = app.entity.state == "STARTED";
            let body = update_body(settings, app.entity.environment_json.as_ref());
            if !body.is_empty() {
                let _: Value = scope
                    .api
                    .put(
                        &lifecycle::update_path(
                            &guid,
                            &[],
                            args.strategy.map(Strategy::name),
                            args.max_in_flight,
                        ),
                        &Value::Object(body),
                    )
                    .await?;
            }
            let summary: AppSummary = scope.api.get(&format!("/v2/apps/{guid}/summary")).await?;
            (guid, was_started, summary.urls)
        }
        None => {
            println!("Creating {name}...");
            let app: Resource<AppEntity> = scope
                .api
                .post("/v2/apps", &create_body(settings, &scope.space_guid))
                .await?;
            (app.metadata.guid, false, Vec::new())
        }
    };
    map_urls(scope, &guid, settings, &domains, &mapped).await?;
    // Services are bound before the bits go up, so staging (hooks, the `${name}-cache`
    // filesystem) already sees them.
    let newly_bound = super::services::ensure_bound(scope, &guid, &settings.services).await?;
    super::drains::ensure_drains(scope, &guid, &settings.drains).await?;
    // A running app keeps serving while the new bits stage; the controller swaps
    // instances only once the new droplet exists, so a failed staging changes nothing.
    upload_bits(&scope.api, &guid, app_dir, ignores, config, ctx.out.tty).await?;
    if newly_bound && was_started && !args.no_start {
        // Unchanged bits do not restage; instances must restart to see the new services.
        lifecycle::stop_app(scope, &guid).await?;
    }
    if args.no_start {
        println!("Uploaded {name}; not started (`strato start {name}` runs it)");
        return Ok(());
    }
    let opts = StartOptions {
        timeout_secs: settings.timeout_secs,
        tail: !args.no_tail,
        strategy: args.strategy.map(Strategy::name),
        max_in_flight: args.max_in_flight,
    };
    // New bits, or another buildpack (the controller marks the app for staging), stage
    // as the app starts.
    lifecycle::start_app(scope, &ctx.out, &guid, name, opts).await
}

/// `POST /v2/apps` body.
pub fn create_body(s: &Settings, space_guid: &str) -> Value {
    let mut body = Map::new();
    body.insert("name".into(), json!(s.name));
    body.insert("space_guid".into(), json!(space_guid));
    body.insert("instances".into(), json!(s.instances.unwrap_or(1)));
    body.insert("memory".into(), json!(s.mem_mb.unwrap_or(DEFAULT_MEM_MB)));
    if let Some(disk) = s.disk_mb {
        body.insert("disk_quota".into(), json!(disk));
    }
    if let Some(bp) = &s.buildpack {
        body.insert("buildpack".into(), json!(bp));
    }
    if let Some(cmd) = &s.command {
        body.insert("command".into(), json!(cmd));
    }
    body.insert("environment_json".into(), json!(s.env));
    insert_health(&mut body, s);
    Value::Object(body)
}

/// The health check keys the manifest or options set.
fn insert_health(body: &mut Map<String, Value>, s: &Settings) {
    if let Some(t) = &s.health_check_type {
        body.insert("health_check_type".into(), json!(t));
    }
    if let Some(p) = &s.health_check_endpoint {
        body.insert("health_check_http_endpoint".into(), json!(p));
    }
    if let Some(t) = s.health_timeout {
        body.insert("health_check_timeout".into(), json!(t));
    }
}

/// `PUT /v2/apps/:guid` body: only what the manifest or options set; variables are added
/// to the app's existing ones.
pub fn update_body(s: &Settings, current_env: Option<&Map<String, Value>>) -> Map<String, Value> {
    let mut body = Map::new();
    if let Some(n) = s.instances {
        body.insert("instances".into(), json!(n));
    }
    if let Some(m) = s.mem_mb {
        body.insert("memory".into(), json!(m));
    }
    if let Some(d) = s.disk_mb {
        body.insert("disk_quota".into(), json!(d));
    }
    if let Some(bp) = &s.buildpack {
        body.insert("buildpack".into(), json!(bp));
    }
    if let Some(cmd) = &s.command {
        body.insert("command".into(), json!(cmd));
    }
    if !s.env.is_empty() {
        let mut env = current_env.cloned().unwrap_or_default();
        env.extend(s.env.iter().map(|(k, v)| (k.clone(), json!(v))));
        body.insert("environment_json".into(), Value::Object(env));
    }
    insert_health(&mut body, s);
    body
}

/// The URLs to map: the given ones, or `NAME.DOMAIN`.
pub fn wanted_urls(settings: &Settings, domains: &[Resource<Named>]) -> Result<Vec<String>> {
    match &settings.urls {
        Some(urls) => Ok(urls.clone()),
        None => Ok(vec![fqdn(
            &settings.name.to_ascii_lowercase(),
            &routes::app_domain(domains)?.entity.name,
        )]),
    }
}

async fn map_urls(
    scope: &Scope,
    guid: &str,
    settings: &Settings,
    domains: &[Resource<Named>],
    mapped: &[String],
) -> Result<()> {
    for url in wanted_urls(settings, domains)? {
        let (host, domain) = routes::split_url(&url, domains)?;
        let full = fqdn(&host, &domain.entity.name);
        if mapped.iter().any(|m| m.eq_ignore_ascii_case(&full)) {
            continue;
        }
        routes::map_url(scope, guid, &url, domains).await?;
        println!("Mapped {full}");
    }
    Ok(())
}

/// Resource matching, then the multipart upload of the zip of what the server lacks.
async fn upload_bits(
    api: &Api,
    guid: &str,
    dir: &Path,
    ignores: &Ignores,
    config: Option<&str>,
    tty: bool,
) -> Result<()> {
    let (dir_owned, ignores_owned) = (dir.to_path_buf(), ignores.clone());
    let mut scan = tokio::task::spawn_blocking(move || upload::scan(&dir_owned, &ignores_owned))
        .await
        .context("scanning the app directory failed")??;
    let _config_file = match config {
        Some(text) => Some(add_config_file(&mut scan, text)?),
        None => None,
    };
    let asked: Vec<ResourceEntry> = scan.files.iter().map(|f| f.match_entry()).collect();
    let answer: Vec<ResourceEntry> = if asked.is_empty() {
        Vec::new()
    } else {
        api.put("/v2/resource_match", &serde_json::to_value(&asked)?)
            .await?
    };
    let matched = trusted_matches(&scan, &answer);
    let resources: Vec<ResourceEntry> = scan
        .files
        .iter()
        .filter(|f| matched.contains(&f.rel))
        .map(|f| f.resource_entry())
        .collect();
    let zip_file =
        tempfile::NamedTempFile::new().context("cannot create a temporary file for the upload")?;
    let zip_path = zip_file.path().to_path_buf();
    let (scan_for_zip, matched_for_zip, out) = (scan.clone(), matched.clone(), zip_file.reopen()?);
    tokio::task::spawn_blocking(move || upload::write_zip(&scan_for_zip, &matched_for_zip, out))
        .await
        .context("zipping the app failed")??;
    let zip_len = std::fs::metadata(&zip_path)?.len();
    // Say so before sending what the target would refuse (a refused upload otherwise
    // surfaces as a broken connection halfway through).
    if let Ok(Some(limit_mb)) = api.info().await.map(|i| i.max_client_upload_mb) {
        if zip_len > limit_mb.saturating_mul(1024 * 1024) {
            anyhow::bail!(
                "the upload is {} zipped, over this target's limit of {limit_mb} MB; leave files out with `ignores:` in stackato.yml or .stratoignore, or ask an administrator (kato op max_client_upload)",
                bytes(zip_len)
            );
        }
    }
    println!(
        "Uploading {} files ({}; {} already on the server), {} zipped...",
        scan.files.len(),
        bytes(scan.total_size()),
        matched.len(),
        bytes(zip_len)
    );
    let progress = progress_bar(zip_len, tty);
    let resources_json = serde_json::to_string(&resources)?;
    let url = api.url(&format!("/v2/apps/{guid}/bits"));
    let result = api
        .send(|c| {
            progress.set_position(0);
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/zip"));
            let body = reqwest::Body::wrap_stream(file_chunks(zip_path.clone(), progress.clone()));
            let part = Part::stream_with_length(body, zip_len)
                .file_name("application.zip")
                .headers(headers);
            let form = Form::new()
                .text("resources", resources_json.clone())
                .part("application", part);
            c.put(&url).multipart(form)
        })
        .await;
    progress.finish_and_clear();
    result?;
    println!("Upload done");
    drop(zip_file);
    Ok(())
}

/// Puts `text` in the upload as `stackato.yml` (replacing the app's own); the returned
/// temporary file must live until the upload is done.
fn add_config_file(scan: &mut Scan, text: &str) -> Result<tempfile::NamedTempFile> {
    let mut file =
        tempfile::NamedTempFile::new().context("cannot create a temporary file for the upload")?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .context("cannot write the app's resolved stackato.yml")?;
    let entry = upload::AppFile {
        rel: "stackato.yml".to_string(),
        abs: file.path().to_path_buf(),
        size: text.len() as u64,
        sha1: upload::sha1_file(file.path())?,
        mode: 0o644,
    };
    scan.files.retain(|f| f.rel != entry.rel);
    scan.files.push(entry);
    Ok(file)
}

/// The server's answer, kept only where it names a file we have with the same content.
fn trusted_matches(scan: &Scan, answer: &[ResourceEntry]) -> HashSet<String> {
    let local: HashSet<(&str, &str)> = scan
        .files
        .iter()
        .map(|f| (f.rel.as_str(), f.sha1.as_str()))
        .collect();
    answer
        .iter()
        .filter(|e| local.contains(&(e.path.as_str(), e.sha1.as_str())))
        .map(|e| e.path.clone())
        .collect()
}

fn progress_bar(len: u64, tty: bool) -> ProgressBar {
    if !tty || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// A file as a stream of chunks, counting bytes on `progress`; opened on first poll, so a
/// retried request reads it again from the start.
fn file_chunks(
    path: PathBuf,
    progress: ProgressBar,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    futures::stream::try_unfold((path, None::<tokio::fs::File>), move |(path, file)| {
        let progress = progress.clone();
        async move {
            let mut file = match file {
                Some(f) => f,
                None => tokio::fs::File::open(&path).await?,
            };
            let mut buf = vec![0u8; 64 * 1024];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            progress.inc(n as u64);
            Ok(Some((buf, (path, Some(file)))))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cf::Metadata;
    use clap::Parser;

    fn push_args(argv: &[&str]) -> PushArgs {
        let mut full = vec!["strato", "push"];
        full.extend_from_slice(argv);
        match crate::cli::Cli::parse_from(full).command {
            crate::cli::Command::Push(p) => p,
            _ => unreachable!("parsed as push"),
        }
    }

    #[test]
    fn options_override_the_manifest() {
        let manifest = Manifest {
            name: Some("m".into()),
            instances: Some(2),
            mem_mb: Some(128),
            urls: Some(vec![]),
            env: [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "2".to_string()),
            ]
            .into(),
            timeout: Some(30),
            ..Default::default()
        };
        let args = push_args(&[
            "--mem",
            "1G",
            "--url",
            "x.localhost",
            "--env",
            "B=3",
            "--instances",
            "4",
        ]);
        let s = merge(&args, manifest, "web".into()).unwrap();
        assert_eq!(
            (s.instances, s.mem_mb, s.timeout_secs),
            (Some(4), Some(1024), 30)
        );
        assert_eq!(s.urls, Some(vec!["x.localhost".to_string()]));
        assert_eq!(s.env["A"], "1");
        assert_eq!(s.env["B"], "3");
    }

    #[test]
    fn bad_options_are_usage_errors() {
        let err = merge(
            &push_args(&["--mem", "big"]),
            Manifest::default(),
            "w".into(),
        )
        .unwrap_err();
        assert!(err.downcast_ref::<crate::error::UsageError>().is_some());
        assert!(err.to_string().contains("--mem"), "{err}");
        let err = merge(
            &push_args(&["--env", "novalue"]),
            Manifest::default(),
            "w".into(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
    }

    #[test]
    fn request_bodies() {
        let s = Settings {
            name: "web".into(),
            env: [("K".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(
            create_body(&s, "sp"),
            json!({"name": "web", "space_guid": "sp", "instances": 1, "memory": 256, "environment_json": {"K": "v"}})
        );
        let current: Map<String, Value> =
            serde_json::from_value(json!({"OLD": "x", "K": "old"})).unwrap();
        let update = update_body(
            &Settings {
                mem_mb: Some(64),
                ..s.clone()
            },
            Some(&current),
        );
        assert_eq!(
            Value::Object(update),
            json!({"memory": 64, "environment_json": {"OLD": "x", "K": "v"}})
        );
        assert!(update_body(&Settings::default(), None).is_empty());
    }

    #[test]
    fn default_url_is_name_dot_domain() {
        let domains = vec![Resource {
            metadata: Metadata {
                guid: "d".into(),
                ..Default::default()
            },
            entity: Named {
                name: "localhost".into(),
            },
        }];
        let s = Settings {
            name: "MyApp".into(),
            ..Default::default()
        };
        assert_eq!(wanted_urls(&s, &domains).unwrap(), vec!["myapp.localhost"]);
        let worker = Settings {
            urls: Some(vec![]),
            ..s
        };
        assert!(wanted_urls(&worker, &domains).unwrap().is_empty());
        assert!(wanted_urls(&Settings::default(), &[]).is_err());
    }
}
