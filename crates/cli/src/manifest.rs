//! Reads `stackato.yml` and `manifest.yml` into the settings `push` needs, one [`Manifest`]
//! per app, in `depends-on` order.
//!
//! `manifest.yml` may list several `applications:` (its top-level keys apply to each; the
//! Stackato-only keys of an app sit under its `stackato:` key); `stackato.yml` describes one
//! app and wins on conflicts for the app it names. `${...}` is resolved in keys and values:
//! the built-ins `random-word`, `target-base`, `space-base`, `target-url`, then scalar
//! look-up (`properties:`, the app's keys, the top-level keys). Errors name the file, line
//! and column with a hint; unknown keys are warned about once.

mod order;
mod source;
mod version;

use anyhow::{anyhow, Result};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use source::{application_blocks, Region, SourceFile};

/// The push settings a manifest gives one app.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifest {
    pub name: Option<String>,
    pub instances: Option<u32>,
    pub mem_mb: Option<u64>,
    pub disk_mb: Option<u64>,
    /// `Some(vec![])` means "no route" (a worker).
    pub urls: Option<Vec<String>>,
    pub buildpack: Option<String>,
    pub command: Option<String>,
    pub env: BTreeMap<String, String>,
    pub ignores: Vec<String>,
    /// Seconds the app may take to start.
    pub timeout: Option<u64>,
    /// Directory to push, relative to the manifest.
    pub app_dir: Option<String>,
    /// `services:` as (instance name, type); an empty type means "an existing instance"
    /// (manifest.yml's list of names).
    pub services: Vec<(String, String)>,
    /// `health-check-type:` (port, http, process) and `health-check-http-endpoint:`.
    pub health_check_type: Option<String>,
    pub health_check_endpoint: Option<String>,
    /// `drain:` as (name, URI): log drains the app gets at push.
    pub drains: Vec<(String, String)>,
    /// `hooks: pre-push:` commands, run on the client in the app dir before the upload; a
    /// leading `-` ignores failure.
    pub pre_push: Vec<String>,
    /// Apps of the same manifest pushed before this one.
    pub depends_on: Vec<String>,
    /// `min_version: client:`.
    pub min_client: Option<String>,
    /// `min_version: server:`.
    pub min_server: Option<String>,
    /// The resolved keys (without `env:`), uploaded as the app's `stackato.yml` so staging
    /// and the DEA see the hooks, cron lines and requirements of this app.
    pub staging_config: Map<String, Value>,
    /// Warnings about this app's keys (already printed once).
    pub warnings: Vec<String>,
}

/// Values of the built-in `${...}` symbols that depend on the target.
#[derive(Clone, Debug, Default)]
pub struct Builtins {
    /// The app domain, e.g. `localhost`.
    pub target_base: Option<String>,
    /// The target URL.
    pub target_url: Option<String>,
}

/// Asks the user one question and returns the answer.
pub type Ask<'a> = &'a dyn Fn(&str) -> Result<String>;

/// How to fill in what the manifest leaves to the user.
pub struct LoadOptions<'a> {
    pub builtins: &'a Builtins,
    /// Asks a question on the terminal; `None` when not interactive (`-n`, no TTY).
    pub ask: Option<Ask<'a>>,
    /// Variables given with `--env`, which need no prompt.
    pub env_given: &'a BTreeSet<String>,
}

/// The apps described by the manifest files in `dir`, in push order (dependencies first);
/// empty when there are none. With `only`, just that app (or the single app, which
/// `strato push NAME` may rename).
pub fn load_all(dir: &Path, opts: &LoadOptions, only: Option<&str>) -> Result<Vec<Manifest>> {
    let apps = resolve_all(load_docs(dir)?, opts, only)?;
    for app in &apps {
        print_warnings(&app.warnings);
    }
    Ok(apps)
}

/// As [`load_all`], from the texts of `manifest.yml` and `stackato.yml` (either may be
/// absent) instead of a directory, and without printing the warnings (they are in each
/// [`Manifest::warnings`]). The `manifest` fuzz target drives the reader through this.
pub fn parse_texts(
    manifest_yml: Option<&str>,
    stackato_yml: Option<&str>,
    opts: &LoadOptions,
    only: Option<&str>,
) -> Result<Vec<Manifest>> {
    let source = |name: &str, text: &str| {
        Arc::new(SourceFile {
            name: name.into(),
            text: text.into(),
        })
    };
    let docs = docs_from(
        manifest_yml.map(|t| source("manifest.yml", t)),
        stackato_yml.map(|t| source("stackato.yml", t)),
    )?;
    resolve_all(docs, opts, only)
}

/// The apps of `docs` in push order, or just `only`.
fn resolve_all(docs: Vec<AppDoc>, opts: &LoadOptions, only: Option<&str>) -> Result<Vec<Manifest>> {
    if docs.is_empty() {
        return Ok(vec![]);
    }
    let names: Vec<Option<String>> = docs
        .iter()
        .map(|d| d.resolved_name(opts.builtins))
        .collect::<Result<_>>()?;
    let chosen: Vec<usize> = match only {
        _ if docs.len() == 1 => vec![0],
        Some(wanted) => match names.iter().position(|n| n.as_deref() == Some(wanted)) {
            Some(i) => vec![i],
            None => {
                let known: Vec<&str> = names.iter().flatten().map(String::as_str).collect();
                return Err(crate::error::UsageError(format!(
                    "the manifest has no app named {wanted:?}; it has: {}",
                    known.join(", ")
                ))
                .into());
            }
        },
        None => push_order(&docs, &names)?,
    };
    chosen.into_iter().map(|i| docs[i].resolve(opts)).collect()
}

/// The app name the manifest files in `dir` give, if they describe exactly one app (for
/// commands whose APP is optional).
pub fn app_name_in(dir: &Path) -> Option<String> {
    let docs = load_docs(dir).ok()?;
    match docs.as_slice() {
        [doc] => doc.resolved_name(&Builtins::default()).ok().flatten(),
        _ => None,
    }
}

/// The ways a manifest can ask for a newer strato.
pub fn check_client_version(app: &Manifest) -> Result<()> {
    let Some(need) = &app.min_client else {
        return Ok(());
    };
    let have = env!("CARGO_PKG_VERSION");
    match version::at_least(have, need) {
        Some(true) => Ok(()),
        Some(false) => Err(anyhow!(
            "{} needs strato client {need} or newer, and this is {have}; upgrade strato to push it",
            app.name.as_deref().unwrap_or("this app")
        )),
        None => Err(anyhow!(
            "`min_version: client: {need}` is not a version like 1.2.3; fix the manifest"
        )),
    }
}

/// Checks `min_version: server:` against the target's version.
pub fn check_server_version(app: &Manifest, server_version: Option<&str>) -> Result<()> {
    let Some(need) = &app.min_server else {
        return Ok(());
    };
    let name = app.name.as_deref().unwrap_or("this app");
    let Some(have) = server_version else {
        return Err(anyhow!(
            "{name} needs a server of version {need} or newer, and the target does not say its version; push it to a newer target"
        ));
    };
    match version::at_least(have, need) {
        Some(true) => Ok(()),
        Some(false) => Err(anyhow!(
            "{name} needs server version {need} or newer, and the target runs {have}; push it to a newer target or ask the administrator to upgrade"
        )),
        None => Err(anyhow!(
            "`min_version: server: {need}` is not a version like 1.2.3 (the server says {have}); fix the manifest"
        )),
    }
}

/// Parses the text of a `stackato.yml`.
#[cfg(test)]
pub fn parse_stackato(text: &str, builtins: &Builtins) -> Result<Manifest> {
    let file = Arc::new(SourceFile {
        name: "stackato.yml".into(),
        text: text.into(),
    });
    let value = parse_yaml(&file)?;
    let mut docs = Vec::new();
    add_stackato(&mut docs, file, value)?;
    docs.iter_mut().for_each(check_known_keys);
    let none = BTreeSet::new();
    let opts = LoadOptions {
        builtins,
        ask: None,
        env_given: &none,
    };
    match docs.first() {
        Some(doc) => doc.resolve(&opts),
        None => Ok(Manifest::default()),
    }
}

// ---- reading --------------------------------------------------------------------------

/// One app's keys before substitution, with where each was written.
struct AppDoc {
    map: Map<String, Value>,
    /// `manifest.yml`'s top-level keys (for `${...}` look-up).
    top: Arc<Map<String, Value>>,
    /// For each key: the region it was written in and the name it was written as.
    origins: HashMap<String, (Region, String)>,
    /// Where the app as a whole was written.
    region: Region,
    warnings: Vec<String>,
}

impl AppDoc {
    fn new(region: Region, top: Arc<Map<String, Value>>) -> Self {
        AppDoc {
            map: Map::new(),
            top,
            origins: HashMap::new(),
            region,
            warnings: vec![],
        }
    }

    fn insert(&mut self, key: &str, written_as: &str, value: Value, region: &Region) {
        self.map.insert(key.to_string(), value);
        self.origins
            .insert(key.to_string(), (region.clone(), written_as.to_string()));
    }

    /// An error at `path` (the first element a key of the app).
    fn error(&self, path: &[&str], message: impl Into<String>, hint: &str) -> anyhow::Error {
        let (region, written) = match path.first().and_then(|k| self.origins.get(*k)) {
            Some((region, written)) => (region, written.as_str()),
            None => (&self.region, path.first().copied().unwrap_or("")),
        };
        let mut keys: Vec<&str> = vec![written];
        keys.extend(path.iter().skip(1));
        region.error_at(&keys, message, hint).into()
    }

    /// An error at the first place `needle` is written.
    fn error_at_text(&self, needle: &str, message: String, hint: &str) -> anyhow::Error {
        let regions = self
            .origins
            .values()
            .map(|(r, _)| r)
            .chain(std::iter::once(&self.region));
        for region in regions {
            if let Some((line, col)) = region.find_text(needle) {
                return region.error_at_position(line, col, message, hint).into();
            }
        }
        self.region.error_at(&[], message, hint).into()
    }

    fn warn(&mut self, path: &[&str], message: String) {
        let (region, written) = match path.first().and_then(|k| self.origins.get(*k)) {
            Some((region, written)) => (region.clone(), written.clone()),
            None => (self.region.clone(), path.first().unwrap_or(&"").to_string()),
        };
        let mut keys: Vec<&str> = vec![&written];
        keys.extend(path.iter().skip(1));
        let (line, col) = region.locate(&keys);
        self.warnings.push(format!(
            "warning: {}:{line}:{col}: {message}",
            region.file.name
        ));
    }

    /// The app's `name:` with `${...}` resolved.
    fn resolved_name(&self, builtins: &Builtins) -> Result<Option<String>> {
        let Some(raw) = self.map.get("name").and_then(scalar) else {
            return Ok(None);
        };
        let sub = Substituter::new(self, builtins);
        sub.resolve_str(&raw, &mut vec![])
            .map(Some)
            .map_err(|e| self.substitution_error(e))
    }
}

/// Reads both files; an empty list when neither exists.
fn load_docs(dir: &Path) -> Result<Vec<AppDoc>> {
    docs_from(
        read_file(&dir.join("manifest.yml"))?,
        read_file(&dir.join("stackato.yml"))?,
    )
}

/// The app documents of both files (either may be absent).
fn docs_from(
    manifest_yml: Option<Arc<SourceFile>>,
    stackato_yml: Option<Arc<SourceFile>>,
) -> Result<Vec<AppDoc>> {
    let mut docs = Vec::new();
    if let Some(file) = manifest_yml {
        let value = parse_yaml(&file)?;
        add_manifest_yml(&mut docs, file, value)?;
    }
    if let Some(file) = stackato_yml {
        let value = parse_yaml(&file)?;
        add_stackato(&mut docs, file, value)?;
    }
    for doc in &mut docs {
        check_known_keys(doc);
    }
    Ok(docs)
}

fn read_file(path: &Path) -> Result<Option<Arc<SourceFile>>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(Arc::new(SourceFile {
            name: path.display().to_string(),
            text,
        }))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn parse_yaml(file: &Arc<SourceFile>) -> Result<Value> {
    if file.text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_saphyr::from_str::<Value>(&file.text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line() as usize, l.column() as usize))
            .unwrap_or((1, 1));
        let text = e.to_string();
        let first = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("invalid YAML")
            .trim();
        let first = first.split(" at line ").next().unwrap_or(first);
        // serde-saphyr says "error: line 1 column 7: what"; the place is given already.
        let first = match first.find("column ") {
            Some(i) => first[i..].split_once(": ").map_or(first, |(_, what)| what),
            None => first,
        };
        Region::whole(file.clone())
            .error_at_position(
                line,
                column,
                format!("not valid YAML: {first}"),
                "check the indentation and close every bracket and quote",
            )
            .into()
    })
}

/// `manifest.yml`: its applications (or the file itself as one app), CF keys mapped.
fn add_manifest_yml(docs: &mut Vec<AppDoc>, file: Arc<SourceFile>, value: Value) -> Result<()> {
    let whole = Region::whole(file.clone());
    let mut doc = match value {
        Value::Object(map) => map,
        Value::Null => return Ok(()),
        _ => {
            return Err(whole
                .error_at(
                    &[],
                    "manifest.yml must be a mapping",
                    "start it with `applications:` and a list of apps, each with a `name:`",
                )
                .into())
        }
    };
    let applications = doc.remove("applications");
    let top = Arc::new(doc);
    let (starts, end) = application_blocks(&file.text);
    let items = match applications {
        None | Some(Value::Null) => {
            let mut app = AppDoc::new(whole.clone(), top.clone());
            for (k, v) in top.iter() {
                app.insert(k, k, v.clone(), &whole);
            }
            map_cf_keys(&mut app);
            docs.push(app);
            return Ok(());
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(whole
                .error_at(
                    &["applications"],
                    "`applications:` must be a list of apps",
                    "write each app as `- name: NAME` under `applications:`",
                )
                .into())
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let region = Region {
            file: file.clone(),
            first_line: starts.get(i).copied().unwrap_or(0),
            end_line: starts.get(i + 1).copied().unwrap_or(end),
        };
        let Value::Object(item) = item else {
            return Err(region
                .error_at(
                    &[],
                    "each entry of `applications:` must be a mapping",
                    "write it as `- name: NAME` followed by its keys",
                )
                .into());
        };
        let mut app = AppDoc::new(region.clone(), top.clone());
        for (k, v) in top.iter().filter(|(k, _)| k.as_str() != "properties") {
            app.insert(k, k, v.clone(), &whole);
        }
        for (k, v) in item {
            app.insert(&k, &k, v, &region);
        }
        map_cf_keys(&mut app);
        docs.push(app);
    }
    Ok(())
}

/// CF key names mapped to Stackato's; `stackato:` flattened.
fn map_cf_keys(app: &mut AppDoc) {
    let rename = |app: &mut AppDoc, from: &str, to: &str| {
        if let Some(v) = app.map.remove(from) {
            let origin = app.origins.remove(from);
            if !app.map.contains_key(to) {
                app.map.insert(to.to_string(), v);
                if let Some(o) = origin {
                    app.origins.insert(to.to_string(), o);
                }
            }
        }
    };
    rename(app, "memory", "mem");
    rename(app, "disk_quota", "disk");
    rename(app, "path", "app-dir");
    let region_of = |app: &AppDoc, k: &str| {
        app.origins
            .get(k)
            .map(|(r, _)| r.clone())
            .unwrap_or_else(|| app.region.clone())
    };
    if app.map.get("no-route").and_then(Value::as_bool) == Some(true) {
        let region = region_of(app, "no-route");
        app.insert("urls", "no-route", Value::Array(vec![]), &region);
    } else if let Some(Value::Array(routes)) = app.map.get("routes").cloned() {
        let region = region_of(app, "routes");
        let urls = routes
            .iter()
            .filter_map(|r| r.get("route").cloned())
            .collect();
        app.insert("urls", "routes", Value::Array(urls), &region);
    } else if let Some(Value::String(host)) = app.map.get("host").cloned() {
        let region = region_of(app, "host");
        let url = match app.map.get("domain") {
            Some(Value::String(domain)) => format!("{host}.{domain}"),
            _ => format!("{host}.${{target-base}}"),
        };
        app.insert("url", "host", Value::String(url), &region);
    }
    for k in ["no-route", "routes", "host", "domain"] {
        app.map.remove(k);
    }
    if let Some(Value::Object(extra)) = app.map.remove("stackato") {
        let region = region_of(app, "stackato");
        for (k, v) in extra {
            app.insert(&k, &k, v, &region);
        }
    }
}

/// `stackato.yml`: merged into the app it names (or the only app), else a new app.
fn add_stackato(docs: &mut Vec<AppDoc>, file: Arc<SourceFile>, value: Value) -> Result<()> {
    let whole = Region::whole(file);
    let map = match value {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        _ => {
            return Err(whole
                .error_at(
                    &[],
                    "stackato.yml must be a mapping of keys",
                    "write keys such as `name: myapp` and `mem: 256M`, one per line",
                )
                .into())
        }
    };
    let name = map.get("name").and_then(scalar);
    let target = match &name {
        Some(n) => docs
            .iter()
            .position(|d| d.map.get("name").and_then(scalar).as_deref() == Some(n.as_str())),
        None if docs.len() == 1 => Some(0),
        None => None,
    };
    let index = match target {
        Some(i) => i,
        None => {
            docs.push(AppDoc::new(whole.clone(), Arc::new(Map::new())));
            docs.len() - 1
        }
    };
    let doc = &mut docs[index];
    if target.is_some() {
        doc.region = whole.clone();
    }
    for (k, v) in map {
        doc.insert(&k, &k, v, &whole);
    }
    Ok(())
}

/// Keys an app may have (Stackato's and the CF ones not mapped).
const KNOWN_KEYS: &[&str] = &[
    "name",
    "instances",
    "mem",
    "disk",
    "framework",
    "buildpack",
    "command",
    "app-dir",
    "url",
    "urls",
    "services",
    "env",
    "hooks",
    "processes",
    "cron",
    "ignores",
    "requirements",
    "depends-on",
    "min_version",
    "timeout",
    "drain",
    "properties",
    "stack",
    "inherit",
    "hosts",
    "domains",
    "random-route",
    "health-check-type",
    "health-check-http-endpoint",
];

fn check_known_keys(doc: &mut AppDoc) {
    let unknown: Vec<String> = doc
        .map
        .keys()
        .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in unknown {
        doc.warn(&[&key], format!("unknown key `{key}:` is ignored"));
    }
}

/// Prints each warning once per run.
fn print_warnings(warnings: &[String]) {
    static PRINTED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut printed = PRINTED.lock().unwrap_or_else(|p| p.into_inner());
    let printed = printed.get_or_insert_with(HashSet::new);
    for w in warnings {
        if printed.insert(w.clone()) {
            eprintln!("{w}");
        }
    }
}

fn push_order(docs: &[AppDoc], names: &[Option<String>]) -> Result<Vec<usize>> {
    let deps: Vec<Vec<String>> = docs
        .iter()
        .map(|d| {
            string_list_raw(d.map.get("depends-on")).ok_or_else(|| {
                d.error(
                    &["depends-on"],
                    "`depends-on:` must be an app name or a list of them",
                    "write `depends-on: [db, api]`",
                )
            })
        })
        .collect::<Result<_>>()?;
    let fallback: Vec<String> = (0..docs.len()).map(|i| format!("app #{}", i + 1)).collect();
    let nodes: Vec<order::Node> = names
        .iter()
        .zip(&fallback)
        .zip(&deps)
        .map(|((n, f), d)| order::Node {
            name: n.as_deref().unwrap_or(f),
            depends_on: d,
        })
        .collect();
    order::push_order(&nodes).map_err(|e| match e {
        order::OrderError::Unknown { app, missing } => {
            let i = nodes.iter().position(|n| n.name == app).unwrap_or(0);
            docs[i].error(
                &["depends-on"],
                format!("{app} depends on {missing:?}, which this manifest does not define"),
                "name an app of the same manifest.yml",
            )
        }
        order::OrderError::Cycle(cycle) => {
            let i = nodes.iter().position(|n| n.name == cycle[0]).unwrap_or(0);
            docs[i].error(
                &["depends-on"],
                format!("`depends-on:` forms a cycle: {}", cycle.join(" → ")),
                "remove one of these dependencies",
            )
        }
    })
}

// ---- resolving one app ----------------------------------------------------------------

impl AppDoc {
    fn resolve(&self, opts: &LoadOptions) -> Result<Manifest> {
        let sub = Substituter::new(self, opts.builtins);
        let map = sub
            .resolve_map(&self.map)
            .map_err(|e| self.substitution_error(e))?;
        let mut warnings = self.warnings.clone();
        let keys = Keys {
            doc: self,
            map: &map,
        };
        let instances = keys
            .number("instances", "instances: 2")?
            .map(|n| {
                u32::try_from(n).map_err(|_| {
                    self.error(
                        &["instances"],
                        "`instances:` is too large",
                        "use a number like 2",
                    )
                })
            })
            .transpose()?;
        let timeout = keys.number("timeout", "timeout: 120")?;
        if let Some(t) = timeout.filter(|t| *t > MAX_TIMEOUT_SECS) {
            return Err(self.error(
                &["timeout"],
                format!(
                    "`timeout:` is {t}s; the most an app may take to start is {MAX_TIMEOUT_SECS}s"
                ),
                "make the app start faster or write a smaller timeout",
            ));
        }
        let (web, no_web) = keys.processes(&mut warnings)?;
        let hooks = keys.hooks(&mut warnings)?;
        keys.cron()?;
        keys.requirements(&mut warnings)?;
        let (min_client, min_server) = keys.min_version()?;
        let mut urls = keys.urls()?;
        if no_web {
            urls = Some(vec![]);
        }
        let buildpack = match keys.text("buildpack")? {
            Some(bp) => Some(bp),
            None => keys.framework(&mut warnings)?,
        };
        let mut staging_config = map.clone();
        staging_config.remove("env");
        Ok(Manifest {
            name: keys.text("name")?,
            instances,
            mem_mb: keys.mb("mem")?,
            disk_mb: keys.mb("disk")?,
            urls,
            buildpack,
            command: web.or(keys.text("command")?),
            env: keys.env(opts)?,
            ignores: keys.list("ignores")?,
            timeout,
            app_dir: keys.text("app-dir")?,
            services: keys.services()?,
            drains: keys.drains()?,
            health_check_type: keys.text("health-check-type")?,
            health_check_endpoint: keys.text("health-check-http-endpoint")?,
            pre_push: hooks,
            depends_on: keys.list("depends-on")?,
            min_client,
            min_server,
            staging_config,
            warnings,
        })
    }

    fn substitution_error(&self, e: SubstError) -> anyhow::Error {
        match e {
            SubstError::NeedsTarget(name) => anyhow::Error::new(NeedsTarget(name)),
            SubstError::Unknown(name) => self.error_at_text(
                &format!("${{{name}"),
                format!("unknown symbol `${{{name}}}`"),
                &format!("define `{name}:` (under `properties:` or as a key of the app) or use a built-in: random-word, target-base, space-base, target-url"),
            ),
            SubstError::Cycle(name, chain) => self.error_at_text(
                &format!("${{{name}"),
                format!("`${{{name}}}` refers to itself (through {chain})"),
                "break the cycle by writing one of the values out",
            ),
            SubstError::Unclosed(s) => self.error_at_text(
                &s,
                format!("unclosed `${{` in {s:?}"),
                "close it with `}`",
            ),
        }
    }
}

/// The longest start timeout an app may ask for (REFERENCE §3).
const MAX_TIMEOUT_SECS: u64 = 180;

/// Typed access to one app's resolved keys, with located errors.
struct Keys<'a> {
    doc: &'a AppDoc,
    map: &'a Map<String, Value>,
}

impl Keys<'_> {
    fn text(&self, k: &str) -> Result<Option<String>> {
        match self.map.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => scalar(v).map(Some).ok_or_else(|| {
                self.doc.error(
                    &[k],
                    format!("`{k}:` must be a single value"),
                    &format!("write it as `{k}: VALUE` on one line"),
                )
            }),
        }
    }

    fn number(&self, k: &str, example: &str) -> Result<Option<u64>> {
        self.text(k)?
            .map(|v| {
                v.trim().parse::<u64>().map_err(|_| {
                    self.doc.error(
                        &[k],
                        format!("`{k}:` must be a whole number, not {v:?}"),
                        &format!("write e.g. `{example}`"),
                    )
                })
            })
            .transpose()
    }

    fn mb(&self, k: &str) -> Result<Option<u64>> {
        self.text(k)?
            .map(|v| {
                parse_mem(&v).map_err(|e| {
                    self.doc.error(
                        &[k],
                        format!("bad `{k}:`: {e}"),
                        "sizes look like 256, 256M or 1.5G",
                    )
                })
            })
            .transpose()
    }

    fn list(&self, k: &str) -> Result<Vec<String>> {
        string_list_raw(self.map.get(k)).ok_or_else(|| {
            self.doc.error(
                &[k],
                format!("`{k}:` must be a string or a list of strings"),
                &format!("write `{k}: [a, b]` or one `- item` per line"),
            )
        })
    }

    fn urls(&self) -> Result<Option<Vec<String>>> {
        for key in ["urls", "url"] {
            if self.map.get(key).is_some_and(|v| !v.is_null()) {
                return self.list(key).map(Some);
            }
        }
        Ok(None)
    }

    /// `services:` as `NAME: TYPE` (Stackato 3), the older `TYPE: NAME` (seed 001: when
    /// the key is a known type and the value is not, it is the older form), or
    /// manifest.yml's list of existing instance names.
    fn services(&self) -> Result<Vec<(String, String)>> {
        match self.map.get("services") {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(_)) => Ok(self
                .list("services")?
                .into_iter()
                .map(|name| (name, String::new()))
                .collect()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    let v = scalar(v).ok_or_else(|| {
                        self.doc.error(
                            &["services", k],
                            format!("`services:` entry `{k}` must be a service type"),
                            &format!("write `{k}: mysql`"),
                        )
                    })?;
                    let key_is_type = SERVICE_TYPES.contains(&k.as_str());
                    let value_is_type = SERVICE_TYPES.contains(&v.as_str());
                    Ok(if key_is_type && !value_is_type {
                        (v, k.clone())
                    } else {
                        (k.clone(), v)
                    })
                })
                .collect(),
            Some(_) => Err(self.doc.error(
                &["services"],
                "`services:` must be a mapping of NAME: TYPE",
                "write e.g. `mydb: mysql`",
            )),
        }
    }

    /// `drain: {NAME: URI}`.
    fn drains(&self) -> Result<Vec<(String, String)>> {
        match self.map.get("drain") {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    let uri = scalar(v).ok_or_else(|| {
                        self.doc.error(
                            &["drain", k],
                            format!("`drain:` entry `{k}` must be a URI"),
                            &format!("write `{k}: tcp://logs.example.com:514`"),
                        )
                    })?;
                    Ok((k.clone(), uri))
                })
                .collect(),
            Some(_) => Err(self.doc.error(
                &["drain"],
                "`drain:` must be a mapping of NAME: URI",
                "write e.g. `papertrail: udp://logs.example.com:514`",
            )),
        }
    }

    /// `env:` entries: a value, or `{default, required, inherit, prompt, choices}`.
    fn env(&self, opts: &LoadOptions) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let entries = match self.map.get("env") {
            None | Some(Value::Null) => return Ok(out),
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(self.doc.error(
                    &["env"],
                    "`env:` must be a mapping of NAME: value",
                    "write one `NAME: value` per line under `env:`",
                ))
            }
        };
        for (name, value) in entries {
            let resolved = match value {
                Value::Null => Some(String::new()),
                Value::Object(spec) => self.env_spec(name, spec, opts)?,
                other => Some(scalar(other).ok_or_else(|| {
                    self.doc.error(
                        &["env", name],
                        format!("env `{name}` must be a single value"),
                        "give a string, or a mapping with `default:`",
                    )
                })?),
            };
            if let Some(v) = resolved {
                out.insert(name.clone(), v);
            }
        }
        Ok(out)
    }

    fn env_spec(
        &self,
        name: &str,
        spec: &Map<String, Value>,
        opts: &LoadOptions,
    ) -> Result<Option<String>> {
        if opts.env_given.contains(name) {
            return Ok(None);
        }
        let inherited = spec
            .get("inherit")
            .and_then(Value::as_bool)
            .filter(|b| *b)
            .and_then(|_| std::env::var(name).ok());
        if inherited.is_some() {
            return Ok(inherited);
        }
        let default = spec.get("default").and_then(scalar);
        let required = spec.get("required").and_then(Value::as_bool) == Some(true);
        let choices = match spec.get("choices") {
            None | Some(Value::Null) => vec![],
            v => string_list_raw(v).ok_or_else(|| {
                self.doc.error(
                    &["env", name, "choices"],
                    format!("env `{name}`: `choices:` must be a list of values"),
                    "write `choices: [small, large]`",
                )
            })?,
        };
        if let Some(d) = default
            .as_ref()
            .filter(|d| !choices.is_empty() && !choices.contains(d))
        {
            return Err(self.doc.error(
                &["env", name, "default"],
                format!(
                    "env `{name}`: the default {d:?} is not one of its choices ({})",
                    choices.join(", ")
                ),
                "make the default one of the choices",
            ));
        }
        let prompt = spec.get("prompt").and_then(scalar);
        let asks = prompt.is_some() || !choices.is_empty();
        if asks {
            if let Some(ask) = opts.ask {
                return ask_env(
                    ask,
                    name,
                    prompt.as_deref(),
                    &choices,
                    default.as_deref(),
                    required,
                )
                .map(Some);
            }
            if default.is_none() {
                return Err(self.doc.error(&["env", name], format!("env `{name}` asks for a value (`prompt:`), but no questions can be asked here (-n or no terminal) and it has no `default:`"), &format!("pass --env {name}=VALUE or give it a `default:`")));
            }
        }
        match default {
            Some(v) => Ok(Some(v)),
            None if required => Err(self.doc.error(
                &["env", name],
                format!("env `{name}` is required but has no value"),
                &format!("give it a `default:` or set it with --env {name}=VALUE"),
            )),
            None => Ok(None),
        }
    }

    /// `processes: web:`: the start command, or `~` for no web process.
    fn processes(&self, warnings: &mut Vec<String>) -> Result<(Option<String>, bool)> {
        let procs = match self.map.get("processes") {
            None | Some(Value::Null) => return Ok((None, false)),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(self.doc.error(
                &["processes"],
                "`processes:` must be a mapping",
                "write `processes:` and under it `web: COMMAND` (or `web: ~` for no web process)",
            )),
        };
        for other in procs.keys().filter(|k| k.as_str() != "web") {
            warnings.push(self.warning(
                &["processes", other],
                format!("process type `{other}:` is ignored; only `web:` is supported"),
            ));
        }
        match procs.get("web") {
            None => Ok((None, false)),
            Some(Value::Null) => Ok((None, true)),
            Some(v) => scalar(v).map(|c| (Some(c), false)).ok_or_else(|| {
                self.doc.error(
                    &["processes", "web"],
                    "`web:` must be a command or `~`",
                    "write `web: python app.py`",
                )
            }),
        }
    }

    /// Checks every hook and returns the `pre-push` ones.
    fn hooks(&self, warnings: &mut Vec<String>) -> Result<Vec<String>> {
        let hooks = match self.map.get("hooks") {
            None | Some(Value::Null) => return Ok(vec![]),
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(self.doc.error(
                    &["hooks"],
                    "`hooks:` must be a mapping of phase to commands",
                    "write `pre-staging: COMMAND` (or a list) under `hooks:`",
                ))
            }
        };
        let mut pre_push = vec![];
        for (phase, commands) in hooks {
            let list = string_list_raw(Some(commands)).ok_or_else(|| {
                self.doc.error(
                    &["hooks", phase],
                    format!("hook `{phase}:` must be a command or a list of commands"),
                    "write each command as a `- command` line",
                )
            })?;
            match phase.as_str() {
                "pre-push" => pre_push = list,
                "pre-staging" | "post-staging" | "pre-running" => {}
                other => warnings.push(self.warning(&["hooks", other], format!("unknown hook `{other}:` is ignored (hooks: pre-push, pre-staging, post-staging, pre-running)"))),
            }
        }
        Ok(pre_push)
    }

    /// Checks `cron:` lines: five crontab fields and a command, or `@hourly` and friends.
    fn cron(&self) -> Result<()> {
        for line in self.list("cron")? {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ok = match fields.first() {
                Some(f) if f.starts_with('@') => CRON_MACROS.contains(f) && fields.len() >= 2,
                _ => {
                    fields.len() >= 6
                        && fields[..5].iter().all(|f| {
                            f.chars()
                                .all(|c| c.is_ascii_alphanumeric() || "*/,-".contains(c))
                        })
                }
            };
            if !ok {
                return Err(self.doc.error_at_text(
                    &line,
                    format!("`cron:` line {line:?} is not crontab syntax"),
                    "write `MIN HOUR DAY MONTH WEEKDAY COMMAND`, e.g. `*/5 * * * * ./cleanup.sh`",
                ));
            }
        }
        Ok(())
    }

    /// Checks `requirements:` (`pip`, `ubuntu`/`unix`, also under `staging:`/`running:`).
    fn requirements(&self, warnings: &mut Vec<String>) -> Result<()> {
        let reqs = match self.map.get("requirements") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(self.doc.error(
                    &["requirements"],
                    "`requirements:` must be a mapping",
                    "write `ubuntu: [figlet]` or `pip: [requests]` under `requirements:`",
                ))
            }
        };
        self.requirement_kinds(reqs, &["requirements"], warnings)
    }

    fn requirement_kinds(
        &self,
        reqs: &Map<String, Value>,
        path: &[&str],
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        for (kind, v) in reqs {
            let mut here = path.to_vec();
            here.push(kind);
            match (kind.as_str(), v) {
                ("staging" | "running", Value::Object(inner)) if path.len() == 1 => {
                    self.requirement_kinds(inner, &here, warnings)?
                }
                ("pip" | "ubuntu" | "unix" | "cpan" | "redhat" | "ppm" | "pypm", _) => {
                    let list = string_list_raw(Some(v)).ok_or_else(|| {
                        self.doc.error(
                            &here,
                            format!("requirements `{kind}:` must be a list of package names"),
                            "write one `- package` per line",
                        )
                    })?;
                    if matches!(kind.as_str(), "ubuntu" | "unix") {
                        if let Some(bad) = list
                            .iter()
                            .find(|p| !strato_core::names::debian_package_name(p))
                        {
                            return Err(self.doc.error(
                                &here,
                                format!("{bad:?} is not a Debian package name"),
                                "use names like `figlet` or `libxml2-dev`",
                            ));
                        }
                    }
                    if !matches!(kind.as_str(), "pip" | "ubuntu" | "unix") {
                        warnings.push(self.warning(
                            &here,
                            format!("requirements `{kind}:` are not supported and are ignored"),
                        ));
                    }
                }
                _ => warnings.push(self.warning(
                    &here,
                    format!("unknown requirements key `{kind}:` is ignored"),
                )),
            }
        }
        Ok(())
    }

    fn min_version(&self) -> Result<(Option<String>, Option<String>)> {
        let m = match self.map.get("min_version") {
            None | Some(Value::Null) => return Ok((None, None)),
            Some(Value::Object(m)) => m,
            Some(v) => return Ok((scalar(v), None)),
        };
        let get = |k: &str| -> Result<Option<String>> {
            match m.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    let s = scalar(v)
                        .filter(|s| version::parse(s).is_some())
                        .ok_or_else(|| {
                            self.doc.error(
                                &["min_version", k],
                                format!("`min_version: {k}:` must be a version like 1.2.3"),
                                "write e.g. `client: 0.1.0`",
                            )
                        })?;
                    Ok(Some(s))
                }
            }
        };
        Ok((get("client")?, get("server")?))
    }

    /// `framework:` (a name or `{type: NAME}`) as a built-in buildpack.
    fn framework(&self, warnings: &mut Vec<String>) -> Result<Option<String>> {
        let name = match self.map.get("framework") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(m)) => m.get("type").and_then(scalar),
            Some(v) => scalar(v),
        };
        let Some(name) = name else {
            return Err(self.doc.error(
                &["framework"],
                "`framework:` must be a name or have a `type:`",
                "write `framework: python`",
            ));
        };
        let buildpack = match name.to_ascii_lowercase().as_str() {
            "python" | "python2" | "python3" | "wsgi" | "django" | "flask" => Some("python"),
            "node" | "nodejs" | "node.js" => Some("node"),
            "static" | "html" => Some("static"),
            "buildpack" | "generic" | "standalone" => None,
            _ => {
                warnings.push(self.warning(
                    &["framework"],
                    format!(
                        "framework {name:?} has no built-in buildpack; the buildpack is detected"
                    ),
                ));
                None
            }
        };
        Ok(buildpack.map(str::to_string))
    }

    fn warning(&self, path: &[&str], message: String) -> String {
        let (region, written) = match path.first().and_then(|k| self.doc.origins.get(*k)) {
            Some((region, written)) => (region, written.as_str()),
            None => (&self.doc.region, path.first().copied().unwrap_or("")),
        };
        let mut keys = vec![written];
        keys.extend(path.iter().skip(1));
        let (line, col) = region.locate(&keys);
        format!("warning: {}:{line}:{col}: {message}", region.file.name)
    }
}

/// `cron:` shortcuts the scheduler understands.
const CRON_MACROS: &[&str] = &[
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@yearly",
    "@annually",
];

/// Asks for an env value until the answer is acceptable.
fn ask_env(
    ask: &dyn Fn(&str) -> Result<String>,
    name: &str,
    prompt: Option<&str>,
    choices: &[String],
    default: Option<&str>,
    required: bool,
) -> Result<String> {
    let mut question = prompt.unwrap_or(name).to_string();
    if !choices.is_empty() {
        let listed: Vec<String> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{}. {c}", i + 1))
            .collect();
        question = format!("{question}\n  {}\nChoose", listed.join("\n  "));
    }
    if let Some(d) = default {
        question.push_str(&format!(" [{d}]"));
    }
    question.push_str(": ");
    for _ in 0..5 {
        let answer = ask(&question)?;
        let answer = answer.trim();
        let value = match (answer.is_empty(), default) {
            (true, Some(d)) => d.to_string(),
            (true, None) if required || !choices.is_empty() => continue,
            (true, None) => String::new(),
            (false, _) => answer.to_string(),
        };
        if choices.is_empty() {
            return Ok(value);
        }
        if let Some(c) = choices.iter().find(|c| **c == value) {
            return Ok(c.clone());
        }
        if let Some(c) = value
            .parse::<usize>()
            .ok()
            .and_then(|n| choices.get(n.wrapping_sub(1)))
        {
            return Ok(c.clone());
        }
    }
    Err(anyhow!(
        "no acceptable value for env `{name}`; pass it with --env {name}=VALUE"
    ))
}

/// Service types a `services:` entry can name (to tell `TYPE: NAME` from `NAME: TYPE`).
const SERVICE_TYPES: &[&str] = &[
    "mysql",
    "postgresql",
    "redis",
    "filesystem",
    "memcached",
    "mongodb",
    "rabbitmq",
    "rabbit",
];

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A scalar or a list of scalars as strings; `None` for other shapes.
fn string_list_raw(v: Option<&Value>) -> Option<Vec<String>> {
    match v {
        None | Some(Value::Null) => Some(vec![]),
        Some(Value::Array(items)) => items.iter().map(scalar).collect(),
        Some(other) => scalar(other).map(|s| vec![s]),
    }
}

/// A memory or disk size in MB: `256`, `256M`, `256MB`, `1.5G`, `2GB`.
pub fn parse_mem(input: &str) -> Result<u64> {
    let s = input.trim().to_ascii_uppercase();
    let s = s.strip_suffix('B').unwrap_or(&s);
    let (digits, factor) = match s.strip_suffix('G') {
        Some(d) => (d, 1024.0),
        None => (s.strip_suffix('M').unwrap_or(s), 1.0),
    };
    let value: f64 = digits
        .trim()
        .parse()
        .map_err(|_| anyhow!("{input:?} is not a size; write it like 256, 256M or 1.5G"))?;
    let mb = (value * factor).round();
    if !mb.is_finite() || !(1.0..=16.0 * 1024.0 * 1024.0).contains(&mb) {
        return Err(anyhow!(
            "{input:?} is out of range; write a size like 256, 256M or 1.5G"
        ));
    }
    Ok(mb as u64)
}

/// A built-in symbol needed a value from the target that was not given.
#[derive(Debug)]
pub struct NeedsTarget(pub String);

impl std::fmt::Display for NeedsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`${{{}}}` needs a target; run `strato target URL` and `strato login` first",
            self.0
        )
    }
}

impl std::error::Error for NeedsTarget {}

/// Why `${...}` could not be resolved.
#[derive(Debug)]
enum SubstError {
    NeedsTarget(String),
    Unknown(String),
    /// The symbol and the chain that leads back to it.
    Cycle(String, String),
    Unclosed(String),
}

/// Resolves `${SYMBOL}` in keys and values.
struct Substituter<'a> {
    doc: &'a AppDoc,
    builtins: &'a Builtins,
    random_word: String,
}

impl<'a> Substituter<'a> {
    fn new(doc: &'a AppDoc, builtins: &'a Builtins) -> Self {
        Substituter {
            doc,
            builtins,
            random_word: random_word(),
        }
    }

    fn resolve_map(&self, map: &Map<String, Value>) -> Result<Map<String, Value>, SubstError> {
        map.iter()
            .map(|(k, v)| Ok((self.resolve_str(k, &mut vec![])?, self.resolve_value(v)?)))
            .collect()
    }

    fn resolve_value(&self, v: &Value) -> Result<Value, SubstError> {
        Ok(match v {
            Value::String(s) => Value::String(self.resolve_str(s, &mut vec![])?),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.resolve_value(i))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(m) => Value::Object(self.resolve_map(m)?),
            other => other.clone(),
        })
    }

    fn resolve_str(&self, s: &str, stack: &mut Vec<String>) -> Result<String, SubstError> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| SubstError::Unclosed(s.to_string()))?;
            out.push_str(&self.symbol(after[..end].trim(), stack)?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn symbol(&self, name: &str, stack: &mut Vec<String>) -> Result<String, SubstError> {
        let needs_target = || SubstError::NeedsTarget(name.to_string());
        match name {
            "random-word" => return Ok(self.random_word.clone()),
            "target-base" | "space-base" => {
                return self.builtins.target_base.clone().ok_or_else(needs_target)
            }
            "target-url" => return self.builtins.target_url.clone().ok_or_else(needs_target),
            _ => {}
        }
        if stack.iter().any(|s| s == name) {
            let mut chain = stack.clone();
            chain.push(name.to_string());
            return Err(SubstError::Cycle(name.to_string(), chain.join(" → ")));
        }
        let app = &self.doc.map;
        let top = &self.doc.top;
        let found = [
            app.get("properties").and_then(|p| p.get(name)),
            top.get("properties").and_then(|p| p.get(name)),
            app.get(name),
            top.get(name),
        ]
        .into_iter()
        .flatten()
        .find_map(scalar)
        .ok_or_else(|| SubstError::Unknown(name.to_string()))?;
        stack.push(name.to_string());
        let resolved = self.resolve_str(&found, stack);
        stack.pop();
        resolved
    }
}

/// A short random lowercase word for `${random-word}`.
fn random_word() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let mut n = hasher.finish();
    let consonants = b"bcdfghjklmnprstvz";
    let vowels = b"aeiou";
    let mut word = String::new();
    for i in 0..6 {
        let set: &[u8] = if i % 2 == 0 { consonants } else { vowels };
        word.push(set[(n % set.len() as u64) as usize] as char);
        n /= set.len() as u64;
    }
    word
}

#[cfg(test)]
mod tests;
