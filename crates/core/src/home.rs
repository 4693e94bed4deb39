//! Where Strato keeps its files.
//!
//! `STRATO_HOME` wins; otherwise `/var/lib/strato` for root and `~/.local/share/strato` for
//! everyone else. The client's own files live in `~/.strato`, never here.

use std::path::PathBuf;

/// The node's data directory.
pub fn strato_home() -> PathBuf {
    if let Some(h) = std::env::var_os("STRATO_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    if is_root() {
        PathBuf::from("/var/lib/strato")
    } else {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        home.join(".local/share/strato")
    }
}

/// True when running as uid 0.
pub fn is_root() -> bool {
    // SAFETY-free check: the effective uid is in /proc/self/status; avoid libc in core.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The layout under `STRATO_HOME`: one configurable path per kind of data.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: PathBuf) -> Self {
        Layout { root }
    }
    /// `stratod`'s control socket, which `kato` talks to.
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("run/stratod.sock")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("run/stratod.pid")
    }
    pub fn config_store(&self) -> PathBuf {
        self.root.join("config.redb")
    }
    pub fn node_file(&self) -> PathBuf {
        self.root.join("node.json")
    }
    pub fn controller_db(&self) -> PathBuf {
        self.root.join("controller.sqlite")
    }
    /// The key the controller signs tokens with.
    pub fn token_secret_file(&self) -> PathBuf {
        self.root.join("token-secret")
    }
    pub fn admin_password_file(&self) -> PathBuf {
        self.root.join("admin-password")
    }
    /// Content-addressed packages and droplets (`strato_blobs::BlobStore`).
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    pub fn resource_cache(&self) -> PathBuf {
        self.root.join("resources")
    }
    pub fn buildpack_cache(&self) -> PathBuf {
        self.root.join("buildpack-cache")
    }
    /// Data of the service roles, one subdirectory per type (relocatable as one).
    pub fn services(&self) -> PathBuf {
        self.root.join("services")
    }
    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// The node's certificate authority (`ca.crt`, `ca.key`), which signs the router's
    /// per-host certificates.
    pub fn tls_ca(&self) -> PathBuf {
        self.root.join("tls/ca")
    }
    /// Operator-installed certificates (`kato op custom_ssl_cert`), chosen by SNI.
    pub fn tls_custom(&self) -> PathBuf {
        self.root.join("tls/custom")
    }
}
