//! The parts of an app's `stackato.yml` that staging needs: the `pre-staging` and
//! `post-staging` hooks (REFERENCE §3).
//!
//! Each hook is a shell command run in the app dir inside the staging container; a leading
//! `-` means its failure is ignored. Other keys belong to the client and the controller and
//! are ignored here.

use std::path::Path;

use serde::Deserialize;

/// One hook command.
#[derive(Clone, Debug, PartialEq, Eq)]
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

#[derive(Deserialize, Default)]
struct RawHooks {
    #[serde(rename = "pre-staging", default)]
    pre_staging: Option<Commands>,
    #[serde(rename = "post-staging", default)]
    post_staging: Option<Commands>,
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    hooks: Option<RawHooks>,
}

/// Parses the hooks out of `stackato.yml` text.
pub fn parse_hooks(yaml: &str) -> Result<StagingHooks, AppConfigError> {
    if yaml.trim().is_empty() {
        return Ok(StagingHooks::default());
    }
    let raw: Option<RawConfig> =
        serde_saphyr::from_str(yaml).map_err(|e| AppConfigError(e.to_string()))?;
    let hooks = raw.and_then(|r| r.hooks).unwrap_or_default();
    Ok(StagingHooks {
        pre_staging: hooks.pre_staging.map(Commands::hooks).unwrap_or_default(),
        post_staging: hooks.post_staging.map(Commands::hooks).unwrap_or_default(),
    })
}

/// Reads the hooks from `<app_dir>/stackato.yml`; none when the file is absent.
pub fn read_hooks(app_dir: &Path) -> Result<StagingHooks, AppConfigError> {
    match std::fs::read_to_string(app_dir.join("stackato.yml")) {
        Ok(text) => parse_hooks(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StagingHooks::default()),
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
