//! The parts of an app's `stackato.yml` that staging and the running app need (REFERENCE
//! §3): the `pre-staging`, `post-staging` and `pre-running` hooks, `cron:` lines and
//! `requirements:` (`pip`, and `ubuntu`/`unix` Debian packages).
//!
//! Each hook is a shell command run in the app dir inside the container; a leading `-`
//! means its failure is ignored. `strato push` uploads the app's resolved manifest as
//! `stackato.yml`, so what is here is already substituted. Other keys belong to the client
//! and the controller and are ignored here.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One hook command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub command: String,
    /// The command was written with a leading `-`: its failure does not fail staging.
    pub ignore_failure: bool,
}

impl Hook {
    fn parse(raw: &str) -> Option<Hook> {
        let trimmed = raw.trim();
        let (command, ignore_failure) = match trimmed.strip_prefix('-') {
            Some(rest) => (rest.trim_start(), true),
            None => (trimmed, false),
        };
        (!command.is_empty()).then(|| Hook {
            command: command.to_string(),
            ignore_failure,
        })
    }
}

/// The staging hooks of an app.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StagingHooks {
    pub pre_staging: Vec<Hook>,
    pub post_staging: Vec<Hook>,
}

/// Why `stackato.yml` could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the app's stackato.yml is not valid: {0}; fix it and push again")]
pub struct AppConfigError(String);

/// A hook value: one command or a list. Items are any scalar (`- true` is the command
/// `true`); an item written `- - cmd` (a nested list) ignores failure like `- -cmd`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Commands {
    Many(Vec<serde_json::Value>),
    One(serde_json::Value),
}

impl Commands {
    fn hooks(self) -> Vec<Hook> {
        let items = match self {
            Commands::Many(items) => items,
            Commands::One(item) => vec![item],
        };
        items.iter().filter_map(hook_of_item).collect()
    }
}

fn hook_of_item(item: &serde_json::Value) -> Option<Hook> {
    match item {
        serde_json::Value::Array(inner) => {
            let command = inner
                .iter()
                .filter_map(scalar_text)
                .collect::<Vec<_>>()
                .join(" ");
            Hook::parse(&command).map(|h| Hook {
                ignore_failure: true,
                ..h
            })
        }
        other => Hook::parse(&scalar_text(other)?),
    }
}

fn scalar_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Commands {
    /// The items as plain text (for `cron:` lines and package names).
    fn texts(self) -> Vec<String> {
        let items = match self {
            Commands::Many(items) => items,
            Commands::One(item) => vec![item],
        };
        items
            .iter()
            .filter_map(scalar_text)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

#[derive(Deserialize, Default)]
struct RawHooks {
    #[serde(rename = "pre-staging", default)]
    pre_staging: Option<Commands>,
    #[serde(rename = "post-staging", default)]
    post_staging: Option<Commands>,
    #[serde(rename = "pre-running", default)]
    pre_running: Option<Commands>,
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    hooks: Option<RawHooks>,
    #[serde(default)]
    cron: Option<Commands>,
    #[serde(default)]
    requirements: Option<serde_json::Value>,
}

/// Everything of `stackato.yml` the stager acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppConfig {
    pub hooks: StagingHooks,
    /// Run in the instance before the start command, on every start.
    pub pre_running: Vec<Hook>,
    /// Crontab lines run on instance 0.
    pub cron: Vec<String>,
    /// Python packages added to `requirements.txt`.
    pub pip: Vec<String>,
    /// Debian packages unpacked into the droplet's `.apt`.
    pub debian: Vec<String>,
}

/// Parses the hooks out of `stackato.yml` text.
pub fn parse_hooks(yaml: &str) -> Result<StagingHooks, AppConfigError> {
    parse_app_config(yaml).map(|c| c.hooks)
}

/// Parses what staging needs out of `stackato.yml` text.
pub fn parse_app_config(yaml: &str) -> Result<AppConfig, AppConfigError> {
    if yaml.trim().is_empty() {
        return Ok(AppConfig::default());
    }
    let raw: Option<RawConfig> =
        serde_saphyr::from_str(yaml).map_err(|e| AppConfigError(e.to_string()))?;
    let raw = raw.unwrap_or_default();
    let hooks = raw.hooks.unwrap_or_default();
    let mut config = AppConfig {
        hooks: StagingHooks {
            pre_staging: hooks.pre_staging.map(Commands::hooks).unwrap_or_default(),
            post_staging: hooks.post_staging.map(Commands::hooks).unwrap_or_default(),
        },
        pre_running: hooks.pre_running.map(Commands::hooks).unwrap_or_default(),
        cron: raw.cron.map(Commands::texts).unwrap_or_default(),
        ..AppConfig::default()
    };
    if let Some(reqs) = &raw.requirements {
        add_requirements(&mut config, reqs)?;
    }
    Ok(config)
}

/// `requirements:` kinds, flat or under `staging:`/`running:` (both end up in the droplet:
/// the stack's `/usr` is read-only, so nothing is installed at run time).
fn add_requirements(
    config: &mut AppConfig,
    reqs: &serde_json::Value,
) -> Result<(), AppConfigError> {
    let Some(map) = reqs.as_object() else {
        return Ok(());
    };
    for (kind, value) in map {
        let list = || {
            serde_json::from_value::<Commands>(value.clone())
                .map(Commands::texts)
                .unwrap_or_default()
        };
        match kind.as_str() {
            "staging" | "running" => add_requirements(config, value)?,
            "pip" => config.pip.extend(list()),
            "ubuntu" | "unix" => {
                for name in list() {
                    if !strato_core::names::debian_package_name(&name) {
                        return Err(AppConfigError(format!(
                            "requirements: {name:?} is not a Debian package name"
                        )));
                    }
                    if !config.debian.contains(&name) {
                        config.debian.push(name);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Reads the hooks from `<app_dir>/stackato.yml`; none when the file is absent.
pub fn read_hooks(app_dir: &Path) -> Result<StagingHooks, AppConfigError> {
    read_app_config(app_dir).map(|c| c.hooks)
}

/// Reads `<app_dir>/stackato.yml`; empty when the file is absent.
pub fn read_app_config(app_dir: &Path) -> Result<AppConfig, AppConfigError> {
    match std::fs::read_to_string(app_dir.join("stackato.yml")) {
        Ok(text) => parse_app_config(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AppConfig::default()),
        Err(e) => Err(AppConfigError(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_are_lists_or_single_commands_with_optional_dash() {
        let hooks = parse_hooks(
            "name: app\nmem: 128M\nhooks:\n  pre-staging:\n    - echo one\n    - '- false'\n    - - exit 3\n    - true\n  post-staging: ls -l\n  pre-running: echo ignored\n",
        )
        .unwrap();
        assert_eq!(
            hooks.pre_staging,
            vec![
                Hook {
                    command: "echo one".into(),
                    ignore_failure: false
                },
                Hook {
                    command: "false".into(),
                    ignore_failure: true
                },
                Hook {
                    command: "exit 3".into(),
                    ignore_failure: true
                },
                Hook {
                    command: "true".into(),
                    ignore_failure: false
                },
            ]
        );
        assert_eq!(
            hooks.post_staging,
            vec![Hook {
                command: "ls -l".into(),
                ignore_failure: false
            }]
        );
    }

    #[test]
    fn pre_running_cron_and_requirements() {
        let c = parse_app_config(
            "{\"hooks\": {\"pre-running\": [\"echo a\", \"-false\"]}, \"cron\": [\"* * * * * date\"], \"requirements\": {\"pip\": [\"six\"], \"ubuntu\": [\"hello\"], \"running\": {\"unix\": [\"figlet\", \"hello\"]}, \"cpan\": [\"JSON\"]}}",
        )
        .unwrap();
        assert_eq!(
            c.pre_running,
            vec![
                Hook {
                    command: "echo a".into(),
                    ignore_failure: false
                },
                Hook {
                    command: "false".into(),
                    ignore_failure: true
                }
            ]
        );
        assert_eq!(c.cron, vec!["* * * * * date"]);
        assert_eq!(c.pip, vec!["six"]);
        assert_eq!(c.debian, vec!["hello", "figlet"]);
        let c = parse_app_config("cron: '@hourly ./x'\nrequirements:\n  ubuntu: figlet\n").unwrap();
        assert_eq!(
            (c.cron, c.debian),
            (vec!["@hourly ./x".to_string()], vec!["figlet".to_string()])
        );
        let err = parse_app_config("requirements:\n  ubuntu: ['--force-yes']\n").unwrap_err();
        assert!(
            err.to_string().contains("not a Debian package name"),
            "{err}"
        );
    }

    #[test]
    fn no_hooks_and_empty_files_are_fine() {
        assert_eq!(parse_hooks("name: x\n").unwrap(), StagingHooks::default());
        assert_eq!(parse_hooks("").unwrap(), StagingHooks::default());
        assert_eq!(
            parse_hooks("# only a comment\n").unwrap(),
            StagingHooks::default()
        );
    }

    #[test]
    fn broken_yaml_is_an_error_that_names_the_file() {
        let err = parse_hooks("hooks: [unclosed").unwrap_err();
        assert!(err.to_string().contains("stackato.yml"), "{err}");
    }
}
