//! The stager's configuration and the environment a staging container gets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use strato_core::timings;

/// Where the stager keeps its files and how it stages.
#[derive(Clone, Debug)]
pub struct StagerConfig {
    /// Droplets (`<sha256>.tgz`) and packages (`<sha256>.zip`).
    pub blobs_dir: PathBuf,
    /// The built-in buildpacks are written here at startup.
    pub buildpacks_dir: PathBuf,
    /// Per-app buildpack caches (`<cache_dir>/<app_id>`), kept between stagings.
    pub cache_dir: PathBuf,
    /// Scratch space for one staging (removed afterwards).
    pub work_dir: PathBuf,
    /// Built-ins tried in order when the app names no buildpack.
    pub buildpack_order: Vec<String>,
    /// The `strato-static` binary the static buildpack copies into apps; `None` looks next
    /// to the current executable and on `PATH`.
    pub static_server_bin: Option<PathBuf>,
    /// The unprivileged user and group staging runs as.
    pub uid: u32,
    pub gid: u32,
    /// Staging gets at least this much memory, whatever the app's own limit (MB).
    pub min_staging_memory_mb: u64,
    /// Largest size an app package may expand to.
    pub max_app_bytes: u64,
    /// Stagings run at once on this node; further requests stay on the queue for other
    /// stagers.
    pub max_concurrent: usize,
    /// Timeout when a request gives none.
    pub default_timeout: Duration,
    /// `KEY=VALUE` pairs added to every staging (e.g. an operator's proxy override); they
    /// win over what the stager inherits from its own environment.
    pub extra_env: Vec<String>,
}

impl StagerConfig {
    /// Defaults with every directory under `root` (e.g. `$STRATO_HOME/stager`).
    pub fn under(root: &Path) -> Self {
        StagerConfig {
            blobs_dir: root.join("blobs"),
            buildpacks_dir: root.join("buildpacks"),
            cache_dir: root.join("cache"),
            work_dir: root.join("work"),
            buildpack_order: crate::buildpacks::default_order(),
            static_server_bin: None,
            uid: 1000,
            gid: 1000,
            min_staging_memory_mb: 1024,
            max_app_bytes: 2 << 30,
            max_concurrent: 2,
            default_timeout: timings::STAGING_TIMEOUT,
            extra_env: Vec::new(),
        }
    }
}

/// Exact names of CA-bundle variables a staging inherits from the stager's environment.
const INHERITED_NAMES: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

/// True for variables that carry registry, proxy or CA settings (DESIGN: "Package
/// registries sit behind the host's TLS and proxy settings").
pub fn is_inherited(name: &str) -> bool {
    INHERITED_NAMES.contains(&name)
        || name.starts_with("PIP_")
        || name.to_ascii_uppercase().starts_with("NPM_CONFIG_")
}

/// The inherited `KEY=VALUE` pairs out of `vars` (normally `std::env::vars()`).
pub fn inherited_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut out: Vec<String> = vars
        .into_iter()
        .filter(|(k, _)| is_inherited(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.sort();
    out
}

/// An ordered environment where a later `set` of the same key replaces the earlier value.
#[derive(Clone, Debug, Default)]
pub struct EnvBuilder {
    pairs: Vec<(String, String)>,
}

impl EnvBuilder {
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.pairs.iter_mut().find(|(k, _)| k == key) {
            Some(pair) => pair.1 = value,
            None => self.pairs.push((key.to_string(), value)),
        }
    }

    /// Adds `KEY=VALUE` strings; entries without `=` or with an empty key are skipped.
    pub fn extend_pairs<'a>(&mut self, pairs: impl IntoIterator<Item = &'a String>) {
        for pair in pairs {
            if let Some((k, v)) = pair.split_once('=') {
                if !k.is_empty() {
                    self.set(k, v);
                }
            }
        }
    }

    pub fn build(self) -> Vec<String> {
        self.pairs
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherits_only_registry_proxy_and_ca_settings() {
        let vars = [
            ("PIP_INDEX_URL", "https://pypi.example/simple"),
            ("npm_config_registry", "https://npm.example"),
            ("NPM_CONFIG_CAFILE", "/etc/ssl/ca.pem"),
            ("https_proxy", "http://proxy:3128"),
            ("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
            ("AWS_SECRET_ACCESS_KEY", "nope"),
            ("HOME", "/root"),
            ("PATH", "/root/.pyenv/shims:/usr/bin"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let env = inherited_env(vars);
        assert_eq!(env.len(), 5, "{env:?}");
        assert!(env.contains(&"npm_config_registry=https://npm.example".to_string()));
        assert!(!env
            .iter()
            .any(|e| e.starts_with("AWS_") || e.starts_with("PATH=")));
    }

    #[test]
    fn later_values_replace_earlier_ones_in_place() {
        let mut env = EnvBuilder::default();
        env.set("A", "1");
        env.set("B", "2");
        env.extend_pairs(&[
            "A=3".to_string(),
            "junk".to_string(),
            "=x".to_string(),
            "C=a=b".to_string(),
        ]);
        assert_eq!(env.build(), vec!["A=3", "B=2", "C=a=b"]);
    }
}
