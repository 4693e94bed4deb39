//! The client's saved state: `~/.strato/config.json`, the current target and one session
//! (tokens, user, org, space) per target, plus the rule deciding which target a command uses
//! (`--target`, then `STRATO_TARGET`/`STACKATO_TARGET`, then the saved one).

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the client remembers about one target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_guid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_guid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_name: Option<String>,
    /// The target's own certificate authority (PEM), accepted at `strato target` after the
    /// user compared its fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// `strato target --skip-ssl-validation`: accept any certificate from this target.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_ssl_validation: bool,
}

impl Session {
    /// True when this session holds a token.
    pub fn logged_in(&self) -> bool {
        self.access_token.as_deref().is_some_and(|t| !t.is_empty())
    }
}

/// The whole `config.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default)]
    pub targets: BTreeMap<String, Session>,
}

/// Where `config.json` lives, and how it is read and written (dir 0700, file 0600).
#[derive(Clone, Debug)]
pub struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    /// `$HOME/.strato/config.json`.
    pub fn from_env() -> Result<Self> {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                anyhow!("HOME is not set; set it so strato can keep its settings in $HOME/.strato")
            })?;
        Ok(Self::at(
            Path::new(&home).join(".strato").join("config.json"),
        ))
    }

    pub fn at(path: PathBuf) -> Self {
        ConfigFile { path }
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; a missing file is an empty state.
    pub fn load(&self) -> Result<Config> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) if text.trim().is_empty() => Ok(Config::default()),
            Ok(text) => serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not valid JSON; fix or delete it and run `strato target` again",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path.display())),
        }
    }

    /// Writes the state atomically, private to the user.
    pub fn save(&self, config: &Config) -> Result<()> {
        let dir = self
            .path
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", self.path.display()))?;
        create_private_dir(dir)?;
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(config)?;
        write_private_file(&tmp, text.as_bytes())?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Loads, applies `change`, saves.
    pub fn update(&self, change: impl FnOnce(&mut Config)) -> Result<Config> {
        let mut config = self.load()?;
        change(&mut config);
        self.save(&config)?;
        Ok(config)
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))
}

fn write_private_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Where the target in use came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSource {
    /// The `--target` option.
    Flag,
    /// An environment variable, by name.
    Env(&'static str),
    /// `config.json`.
    Saved,
}

impl std::fmt::Display for TargetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetSource::Flag => write!(f, "the --target option"),
            TargetSource::Env(var) => write!(f, "the {var} environment variable"),
            TargetSource::Saved => write!(f, "the saved target"),
        }
    }
}

/// A target URL and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedTarget {
    pub url: String,
    pub source: TargetSource,
}

/// The variables that set the target, first wins.
pub const TARGET_VARS: [&str; 2] = ["STRATO_TARGET", "STACKATO_TARGET"];

/// Picks the target: `--target`, then the variables, then the saved one.
pub fn resolve_target(
    flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    saved: Option<&str>,
) -> Option<ResolvedTarget> {
    let clean = |s: &str| Some(trim_url(s)).filter(|s| !s.is_empty());
    if let Some(url) = flag.and_then(clean) {
        return Some(ResolvedTarget {
            url,
            source: TargetSource::Flag,
        });
    }
    for var in TARGET_VARS {
        if let Some(url) = env(var).as_deref().and_then(clean) {
            return Some(ResolvedTarget {
                url,
                source: TargetSource::Env(var),
            });
        }
    }
    saved.and_then(clean).map(|url| ResolvedTarget {
        url,
        source: TargetSource::Saved,
    })
}

/// The first non-empty variable among `STRATO_<suffix>` and `STACKATO_<suffix>`.
pub fn env_pair(suffix: &str) -> Option<String> {
    ["STRATO_", "STACKATO_"]
        .iter()
        .filter_map(|p| std::env::var(format!("{p}{suffix}")).ok())
        .find(|v| !v.is_empty())
}

/// A URL without surrounding blanks and trailing slashes.
pub fn trim_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn flag_wins_over_env_and_saved() {
        let env = env_of(&[("STRATO_TARGET", "http://env")]);
        let t = resolve_target(Some("http://flag/"), &env, Some("http://saved")).unwrap();
        assert_eq!(
            t,
            ResolvedTarget {
                url: "http://flag".into(),
                source: TargetSource::Flag
            }
        );
    }

    #[test]
    fn strato_var_wins_over_stackato_var_and_saved() {
        let env = env_of(&[
            ("STACKATO_TARGET", "http://old"),
            ("STRATO_TARGET", "http://new//"),
        ]);
        let t = resolve_target(None, &env, Some("http://saved")).unwrap();
        assert_eq!(t.url, "http://new");
        assert_eq!(t.source, TargetSource::Env("STRATO_TARGET"));
    }

    #[test]
    fn stackato_var_is_read() {
        let env = env_of(&[("STACKATO_TARGET", "http://old")]);
        let t = resolve_target(None, &env, Some("http://saved")).unwrap();
        assert_eq!(t.source, TargetSource::Env("STACKATO_TARGET"));
    }

    #[test]
    fn saved_is_last_and_empty_values_are_skipped() {
        let env = env_of(&[("STRATO_TARGET", "  ")]);
        let t = resolve_target(Some(""), &env, Some("http://saved/")).unwrap();
        assert_eq!(
            t,
            ResolvedTarget {
                url: "http://saved".into(),
                source: TargetSource::Saved
            }
        );
        assert_eq!(resolve_target(None, &env, None), None);
    }

    #[test]
    fn config_round_trip_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = ConfigFile::at(dir.path().join(".strato/config.json"));
        assert_eq!(file.load().unwrap(), Config::default());
        let saved = file
            .update(|c| {
                c.target = Some("http://a".into());
                c.targets.insert(
                    "http://a".into(),
                    Session {
                        access_token: Some("t".into()),
                        user: Some("u".into()),
                        ..Default::default()
                    },
                );
            })
            .unwrap();
        assert_eq!(file.load().unwrap(), saved);
        let file_mode = std::fs::metadata(file.path()).unwrap().permissions().mode() & 0o777;
        let dir_mode = std::fs::metadata(dir.path().join(".strato"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!((file_mode, dir_mode), (0o600, 0o700));
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(text.contains("\"access_token\": \"t\""), "{text}");
    }

    #[test]
    fn broken_config_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{nope").unwrap();
        let err = ConfigFile::at(path).load().unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("not valid JSON"),
            "{err}"
        );
    }
}
