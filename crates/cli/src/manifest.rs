//! Reads `stackato.yml` (and `manifest.yml`, whose first application is used; Stackato-only
//! keys sit under its `stackato:` key) into the settings `push` needs, resolving `${...}`.
//! When both files exist, `stackato.yml` wins.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The push settings a manifest can give.
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
}

/// Values of the built-in `${...}` symbols that depend on the target.
#[derive(Clone, Debug, Default)]
pub struct Builtins {
    /// The app domain, e.g. `localhost`.
    pub target_base: Option<String>,
    /// The target URL.
    pub target_url: Option<String>,
}

/// Reads the manifest files in `dir`; `Ok(None)` when there are none.
pub fn load_dir(dir: &Path, builtins: &Builtins) -> Result<Option<Manifest>> {
    let stackato = read_yaml(&dir.join("stackato.yml"))?;
    let cf = read_yaml(&dir.join("manifest.yml"))?;
    if stackato.is_none() && cf.is_none() {
        return Ok(None);
    }
    let mut merged = match cf {
        Some(v) => manifest_yml_app(v)?,
        None => Map::new(),
    };
    if let Some(v) = stackato {
        match v {
            Value::Object(map) => merged.extend(map),
            Value::Null => {}
            _ => bail!("stackato.yml must be a mapping of keys such as `name:` and `mem:`"),
        }
    }
    from_map(merged, builtins).map(Some)
}

/// Parses the text of a `stackato.yml`.
#[cfg(test)]
pub fn parse_stackato(text: &str, builtins: &Builtins) -> Result<Manifest> {
    match parse_yaml(text).context("stackato.yml is not valid YAML")? {
        Value::Object(map) => from_map(map, builtins),
        Value::Null => Ok(Manifest::default()),
        _ => bail!("stackato.yml must be a mapping of keys such as `name:` and `mem:`"),
    }
}

fn read_yaml(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_yaml(&text)
            .map(Some)
            .with_context(|| format!("{} is not valid YAML", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn parse_yaml(text: &str) -> Result<Value> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_saphyr::from_str::<Value>(text)?)
}

/// The first application of a `manifest.yml`, with CF key names mapped to Stackato's.
fn manifest_yml_app(doc: Value) -> Result<Map<String, Value>> {
    let Value::Object(mut doc) = doc else {
        bail!("manifest.yml must be a mapping with an `applications:` list");
    };
    let mut app = match doc.remove("applications") {
        Some(Value::Array(apps)) => match apps.into_iter().next() {
            Some(Value::Object(app)) => app,
            Some(_) => bail!("manifest.yml: each entry of `applications:` must be a mapping"),
            None => Map::new(),
        },
        _ => doc,
    };
    for (cf_key, key) in [
        ("memory", "mem"),
        ("disk_quota", "disk"),
        ("path", "app-dir"),
    ] {
        if let Some(v) = app.remove(cf_key) {
            app.entry(key.to_string()).or_insert(v);
        }
    }
    if app.remove("no-route").and_then(|v| v.as_bool()) == Some(true) {
        app.insert("urls".into(), Value::Array(vec![]));
    } else if let Some(Value::Array(routes)) = app.remove("routes") {
        let urls = routes
            .iter()
            .filter_map(|r| r.get("route").cloned())
            .collect();
        app.insert("urls".into(), Value::Array(urls));
    } else if let Some(Value::String(host)) = app.remove("host") {
        let url = match app.remove("domain") {
            Some(Value::String(domain)) => format!("{host}.{domain}"),
            _ => format!("{host}.${{target-base}}"),
        };
        app.insert("url".into(), Value::String(url));
    }
    if let Some(Value::Object(extra)) = app.remove("stackato") {
        app.extend(extra);
    }
    Ok(app)
}

fn from_map(map: Map<String, Value>, builtins: &Builtins) -> Result<Manifest> {
    let map = Substituter::new(&map, builtins).resolve_map(&map)?;
    let text = |k: &str| -> Result<Option<String>> {
        match map.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => scalar(v)
                .map(Some)
                .ok_or_else(|| anyhow!("`{k}:` must be a single value")),
        }
    };
    let mb = |k: &str| -> Result<Option<u64>> {
        text(k)?
            .map(|v| parse_mem(&v).with_context(|| format!("bad `{k}:` in the manifest")))
            .transpose()
    };
    let number = |k: &str| -> Result<Option<u64>> {
        text(k)?
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| anyhow!("`{k}:` must be a whole number, not {v:?}"))
            })
            .transpose()
    };
    let instances = number("instances")?
        .map(|n| u32::try_from(n).map_err(|_| anyhow!("`instances:` is too large")))
        .transpose()?;
    Ok(Manifest {
        name: text("name")?,
        instances,
        mem_mb: mb("mem")?,
        disk_mb: mb("disk")?,
        urls: urls(&map)?,
        buildpack: text("buildpack")?,
        command: text("command")?,
        env: env(map.get("env"))?,
        ignores: string_list(map.get("ignores"), "ignores")?,
        timeout: number("timeout")?,
        app_dir: text("app-dir")?,
        services: services(map.get("services"))?,
    })
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

/// `services:` as `NAME: TYPE` (Stackato 3), the older `TYPE: NAME` (seed 001: when the
/// key is a known type and the value is not, it is the older form), or manifest.yml's
/// list of existing instance names.
fn services(v: Option<&Value>) -> Result<Vec<(String, String)>> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(_)) => Ok(string_list(v, "services")?
            .into_iter()
            .map(|name| (name, String::new()))
            .collect()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let v = scalar(v).ok_or_else(|| {
                    anyhow!("`services:` entry `{k}` must be a service type, e.g. `{k}: mysql`")
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
        Some(_) => bail!("`services:` must be a mapping of NAME: TYPE (e.g. `mydb: mysql`)"),
    }
}

/// The app name the manifest files in `dir` give, if any (for commands whose APP is
/// optional).
pub fn app_name_in(dir: &Path) -> Option<String> {
    load_dir(dir, &Builtins::default())
        .ok()
        .flatten()
        .and_then(|m| m.name)
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn string_list(v: Option<&Value>, key: &str) -> Result<Vec<String>> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| scalar(i).ok_or_else(|| anyhow!("`{key}:` must be a list of strings")))
            .collect(),
        Some(other) => scalar(other)
            .map(|s| vec![s])
            .ok_or_else(|| anyhow!("`{key}:` must be a string or a list of strings")),
    }
}

fn urls(map: &Map<String, Value>) -> Result<Option<Vec<String>>> {
    for key in ["urls", "url"] {
        if let Some(v) = map.get(key).filter(|v| !v.is_null()) {
            return string_list(Some(v), key).map(Some);
        }
    }
    Ok(None)
}

/// `env:` entries: a value, or `{default, required, inherit}` (prompts are not supported).
fn env(v: Option<&Value>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let entries = match v {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(m)) => m,
        Some(_) => bail!("`env:` must be a mapping of NAME: value"),
    };
    for (name, value) in entries {
        let resolved = match value {
            Value::Null => Some(String::new()),
            Value::Object(spec) => {
                let inherited = spec
                    .get("inherit")
                    .and_then(Value::as_bool)
                    .filter(|b| *b)
                    .and_then(|_| std::env::var(name).ok());
                let default = spec.get("default").and_then(scalar);
                let required = spec.get("required").and_then(Value::as_bool) == Some(true);
                match inherited.or(default) {
                    Some(v) => Some(v),
                    None if required => bail!("env `{name}` is required but has no value; give it a `default:` or set it with --env {name}=VALUE"),
                    None => None,
                }
            }
            other => {
                Some(scalar(other).ok_or_else(|| anyhow!("env `{name}` must be a single value"))?)
            }
        };
        if let Some(v) = resolved {
            out.insert(name.clone(), v);
        }
    }
    Ok(out)
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
        bail!("{input:?} is out of range; write a size like 256, 256M or 1.5G");
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

/// Resolves `${SYMBOL}` in keys and values.
struct Substituter<'a> {
    root: &'a Map<String, Value>,
    builtins: &'a Builtins,
    random_word: String,
}

impl<'a> Substituter<'a> {
    fn new(root: &'a Map<String, Value>, builtins: &'a Builtins) -> Self {
        Substituter {
            root,
            builtins,
            random_word: random_word(),
        }
    }

    fn resolve_map(&self, map: &Map<String, Value>) -> Result<Map<String, Value>> {
        map.iter()
            .map(|(k, v)| Ok((self.resolve_str(k, &mut vec![])?, self.resolve_value(v)?)))
            .collect()
    }

    fn resolve_value(&self, v: &Value) -> Result<Value> {
        Ok(match v {
            Value::String(s) => Value::String(self.resolve_str(s, &mut vec![])?),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.resolve_value(i))
                    .collect::<Result<_>>()?,
            ),
            Value::Object(m) => Value::Object(self.resolve_map(m)?),
            other => other.clone(),
        })
    }

    fn resolve_str(&self, s: &str, stack: &mut Vec<String>) -> Result<String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| anyhow!("unclosed `${{` in {s:?}"))?;
            out.push_str(&self.symbol(after[..end].trim(), stack)?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn symbol(&self, name: &str, stack: &mut Vec<String>) -> Result<String> {
        let needs_target = || anyhow::Error::new(NeedsTarget(name.to_string()));
        match name {
            "random-word" => return Ok(self.random_word.clone()),
            "target-base" | "space-base" => {
                return self.builtins.target_base.clone().ok_or_else(needs_target)
            }
            "target-url" => return self.builtins.target_url.clone().ok_or_else(needs_target),
            _ => {}
        }
        if stack.iter().any(|s| s == name) {
            bail!(
                "`${{{name}}}` refers to itself (through {})",
                stack.join(" → ")
            );
        }
        let found = self
            .root
            .get("properties")
            .and_then(|p| p.get(name))
            .or_else(|| self.root.get(name))
            .and_then(scalar)
            .ok_or_else(|| anyhow!("unknown symbol `${{{name}}}` in the manifest; define `{name}:` or use a built-in (random-word, target-base, target-url)"))?;
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
mod tests {
    use super::*;

    fn builtins() -> Builtins {
        Builtins {
            target_base: Some("localhost".into()),
            target_url: Some("http://127.0.0.1:8080".into()),
        }
    }

    #[test]
    fn services_in_both_forms_and_as_a_list() {
        let m = parse_stackato(
            "name: web\nservices:\n  mydb: mysql\n  redis: ${name}-cache\n",
            &builtins(),
        )
        .unwrap();
        assert_eq!(
            m.services,
            vec![
                ("mydb".to_string(), "mysql".to_string()),
                ("web-cache".to_string(), "redis".to_string())
            ]
        );
        let m = parse_stackato("services: [a, b]\n", &builtins()).unwrap();
        assert_eq!(m.services[1], ("b".to_string(), String::new()));
        let err = parse_stackato("services: 5\n", &builtins()).unwrap_err();
        assert!(err.to_string().contains("NAME: TYPE"), "{err}");
    }

    #[test]
    fn mem_sizes() {
        assert_eq!(parse_mem("256").unwrap(), 256);
        assert_eq!(parse_mem("256M").unwrap(), 256);
        assert_eq!(parse_mem("256mb").unwrap(), 256);
        assert_eq!(parse_mem("1.5G").unwrap(), 1536);
        assert_eq!(parse_mem(" 2GB ").unwrap(), 2048);
        assert!(parse_mem("lots").unwrap_err().to_string().contains("256M"));
        assert!(parse_mem("0").is_err());
        assert!(parse_mem("-5").is_err());
        assert!(parse_mem("12K").is_err());
    }

    #[test]
    fn stackato_yml_keys() {
        let m = parse_stackato(
            "name: myapp\ninstances: 2\nmem: 1.5G\ndisk: 512\nurl: [www.example.com, api.example.com]\nbuildpack: https://g/bp.git\ncommand: python app.py\nenv:\n  DEBUG: 1\n  MODE: {default: prod}\nignores: [tmp/, '*.log']\ntimeout: 90\n",
            &builtins(),
        )
        .unwrap();
        assert_eq!(m.name.as_deref(), Some("myapp"));
        assert_eq!(m.instances, Some(2));
        assert_eq!((m.mem_mb, m.disk_mb), (Some(1536), Some(512)));
        assert_eq!(
            m.urls,
            Some(vec![
                "www.example.com".to_string(),
                "api.example.com".to_string()
            ])
        );
        assert_eq!(m.buildpack.as_deref(), Some("https://g/bp.git"));
        assert_eq!(m.command.as_deref(), Some("python app.py"));
        assert_eq!(m.env.get("DEBUG").map(String::as_str), Some("1"));
        assert_eq!(m.env.get("MODE").map(String::as_str), Some("prod"));
        assert_eq!(m.ignores, vec!["tmp/", "*.log"]);
        assert_eq!(m.timeout, Some(90));
    }

    #[test]
    fn empty_url_list_means_no_route_and_string_url_is_one() {
        assert_eq!(
            parse_stackato("name: w\nurl: []\n", &builtins())
                .unwrap()
                .urls,
            Some(vec![])
        );
        assert_eq!(
            parse_stackato("urls: a.b\n", &builtins()).unwrap().urls,
            Some(vec!["a.b".to_string()])
        );
        assert_eq!(parse_stackato("name: w\n", &builtins()).unwrap().urls, None);
    }

    #[test]
    fn substitution_of_keys_builtins_and_errors() {
        let m = parse_stackato(
            "name: shop\nurl: ${name}-api.${target-base}\nenv:\n  SELF: ${target-url}\n",
            &builtins(),
        )
        .unwrap();
        assert_eq!(m.urls, Some(vec!["shop-api.localhost".to_string()]));
        assert_eq!(m.env["SELF"], "http://127.0.0.1:8080");
        let word = parse_stackato("name: app-${random-word}\n", &builtins())
            .unwrap()
            .name
            .unwrap();
        assert!(word.len() > "app-".len() && !word.contains('$'), "{word}");
        let err = parse_stackato("name: ${nope}\n", &builtins())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown symbol `${nope}`"), "{err}");
        let err = parse_stackato("a: ${b}\nb: ${a}\nname: ${a}\n", &builtins())
            .unwrap_err()
            .to_string();
        assert!(err.contains("refers to itself"), "{err}");
        let err = parse_stackato("url: x.${target-base}\n", &Builtins::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a target"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = format!(
            "{:#}",
            parse_stackato("mem: huge\n", &builtins()).unwrap_err()
        );
        assert!(err.contains("mem") && err.contains("256M"), "{err}");
        let err = parse_stackato("instances: two\n", &builtins())
            .unwrap_err()
            .to_string();
        assert!(err.contains("instances"), "{err}");
        let err = parse_stackato("env:\n  KEY: {required: true}\n", &builtins())
            .unwrap_err()
            .to_string();
        assert!(err.contains("KEY") && err.contains("required"), "{err}");
        assert!(parse_stackato("- a\n- b\n", &builtins()).is_err());
        assert!(parse_stackato("name: [unclosed\n", &builtins()).is_err());
    }

    #[test]
    fn manifest_yml_with_stackato_overrides() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("manifest.yml"),
            "applications:\n- name: cfapp\n  memory: 128M\n  instances: 3\n  host: web\n  domain: example.org\n  stackato:\n    ignores: [cache]\n",
        )
        .unwrap();
        let m = load_dir(dir.path(), &builtins()).unwrap().unwrap();
        assert_eq!(
            (m.name.as_deref(), m.mem_mb, m.instances),
            (Some("cfapp"), Some(128), Some(3))
        );
        assert_eq!(m.urls, Some(vec!["web.example.org".to_string()]));
        assert_eq!(m.ignores, vec!["cache"]);
        std::fs::write(dir.path().join("stackato.yml"), "name: stk\nmem: 64\n").unwrap();
        let m = load_dir(dir.path(), &builtins()).unwrap().unwrap();
        assert_eq!(
            (m.name.as_deref(), m.mem_mb, m.instances),
            (Some("stk"), Some(64), Some(3))
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(load_dir(empty.path(), &builtins()).unwrap(), None);
    }
}
