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
    /// How this node reaches its cluster (`kato node attach` writes it, mode 0600): the
    /// NATS URL with the node's own credentials, and the node's address.
    pub fn cluster_file(&self) -> PathBuf {
        self.root.join("cluster.json")
    }
    /// The cluster CA's certificate, as `kato node attach` pinned it.
    pub fn cluster_ca_file(&self) -> PathBuf {
        self.root.join("cluster-ca.pem")
    }
    /// On the core node: the cluster's NATS server (config, users, JetStream store).
    pub fn bus_server(&self) -> PathBuf {
        self.root.join("nats")
    }
    /// Operator-installed certificates (`kato op custom_ssl_cert`), chosen by SNI.
    pub fn tls_custom(&self) -> PathBuf {
        self.root.join("tls/custom")
    }
}

/// What `kato node attach` learned from the core, kept in [`Layout::cluster_file`]:
/// `stratod` joins the cluster with it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ClusterMembership {
    pub node_id: String,
    /// The cluster's NATS server, with this node's own credentials.
    pub nats_url: String,
    /// Where other nodes reach this one.
    pub address: std::net::IpAddr,
    /// The cluster CA's certificate (PEM), pinned at attach: the NATS server must present
    /// a certificate it signed.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// A node's identity, kept in `node.json` and made on first use (by `stratod`, or by
/// `kato node attach` before the node first starts).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeIdentity {
    pub id: String,
    pub created_at: String,
}

impl NodeIdentity {
    /// The node's identity, made and saved when it has none yet.
    pub fn load_or_create(layout: &Layout) -> std::io::Result<NodeIdentity> {
        let path = layout.node_file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} is damaged ({e}); move it away to make a new node id",
                        path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = NodeIdentity {
                    id: crate::new_guid(),
                    created_at: crate::now_rfc3339(),
                };
                let text = serde_json::to_vec_pretty(&id).map_err(std::io::Error::other)?;
                std::fs::write(&path, text)?;
                Ok(id)
            }
            Err(e) => Err(e),
        }
    }
}
