//! Data services (DESIGN "Roles", REFERENCE §4): one role per service type, each a *node*
//! that runs and supervises its own real server from the Debian binaries and carves
//! service instances out of it, behind a *gateway* that speaks the Open Service Broker
//! API v2 to the controller.
//!
//! The seam is [`ServiceNode`]: the gateway and the controller only ever see provision,
//! bind, unbind, deprovision, export, import and usage; how a type keeps its data
//! (a PostgreSQL cluster, one redis-server per instance, a loop-mounted image) stays in its
//! module. Servers run as an unprivileged system user ([`server::ServerUser`]) and
//! credentials name the node's reachable address ([`address`]), never 127.0.0.1.

pub mod address;
pub mod error;
pub mod filesystem;
pub mod gateway;
pub mod mysql;
pub mod osb;
pub mod postgresql;
pub mod redis;
pub mod role;
pub mod server;
pub mod state;

pub use error::ServiceError;

use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

/// The service types Strato runs itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Postgresql,
    Mysql,
    Redis,
    Filesystem,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 4] = [
        ServiceKind::Postgresql,
        ServiceKind::Mysql,
        ServiceKind::Redis,
        ServiceKind::Filesystem,
    ];

    /// The label users type (`strato create-service mysql`) and `VCAP_SERVICES` is keyed by.
    pub fn label(self) -> &'static str {
        match self {
            ServiceKind::Postgresql => "postgresql",
            ServiceKind::Mysql => "mysql",
            ServiceKind::Redis => "redis",
            ServiceKind::Filesystem => "filesystem",
        }
    }

    /// Tags as Cloud Foundry brokers publish them (`relational` drives `DATABASE_URL`).
    pub fn tags(self) -> &'static [&'static str] {
        match self {
            ServiceKind::Postgresql => &["postgresql", "relational"],
            ServiceKind::Mysql => &["mysql", "relational"],
            ServiceKind::Redis => &["redis", "key-value"],
            ServiceKind::Filesystem => &["filesystem"],
        }
    }

    /// The URI scheme of the credentials' `uri` (and of `MYSQL_URL` & co.).
    pub fn scheme(self) -> Option<&'static str> {
        match self {
            ServiceKind::Postgresql => Some("postgres"),
            ServiceKind::Mysql => Some("mysql"),
            ServiceKind::Redis => Some("redis"),
            ServiceKind::Filesystem => None,
        }
    }
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl std::str::FromStr for ServiceKind {
    type Err = ServiceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceKind::ALL
            .into_iter()
            .find(|k| k.label() == s)
            .ok_or_else(|| ServiceError::UnknownKind(s.to_string()))
    }
}

/// What a plan allows one instance. Values come from the node's config component
/// (`<type>_node/max_db_size`, ...), so an operator can change them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// `free`, `default`, ... (the plan's name in the catalog).
    pub name: String,
    /// Size limit in MiB: database size (enforced by the quota enforcer), Redis
    /// `maxmemory`, or the filesystem image size.
    pub size_mb: u64,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            name: "free".to_string(),
            size_mb: 100,
        }
    }
}

/// The opaque id the controller gives a service instance (a UUID in practice).
/// Only `[A-Za-z0-9-]` is accepted, so it can name files and, with `-` removed,
/// databases.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(String);

impl InstanceId {
    pub fn new(id: &str) -> Result<Self, ServiceError> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if ok {
            Ok(InstanceId(id.to_string()))
        } else {
            Err(ServiceError::BadId(id.to_string()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// A name usable as a database or user name: `prefix` + the id's alphanumerics,
    /// lower-case, at most 32 characters (MariaDB's user-name limit).
    pub fn db_name(&self, prefix: &str) -> String {
        let body: String = self
            .0
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let mut name = format!("{prefix}{body}");
        name.truncate(32);
        name
    }
}

impl TryFrom<String> for InstanceId {
    type Error = ServiceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        InstanceId::new(&s)
    }
}

impl From<InstanceId> for String {
    fn from(id: InstanceId) -> String {
        id.0
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Credentials as REFERENCE §4 shows them in `STACKATO_SERVICES` and `VCAP_SERVICES`:
/// `name` is the database (or instance) name on the server, `host` and `hostname` the
/// node's reachable address, `user` and `username` the same login, plus `uri`.
/// A filesystem instance has no login: it fills `dir` instead (the path inside
/// containers) and leaves the network fields empty.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Credentials {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    /// Filesystem services: the host directory to mount (never shown to apps) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<PathBuf>,
    /// ... and where it appears inside containers (`STACKATO_FILESYSTEM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

fn is_zero(p: &u16) -> bool {
    *p == 0
}

impl Credentials {
    /// Credentials for a network server; `uri` is `scheme://user:password@host:port/name`.
    pub fn network(
        kind: ServiceKind,
        host: &str,
        port: u16,
        name: &str,
        user: &str,
        password: &str,
    ) -> Credentials {
        let uri = match kind.scheme() {
            Some("redis") => format!("redis://{user}:{password}@{host}:{port}/"),
            Some(scheme) => format!("{scheme}://{user}:{password}@{host}:{port}/{name}"),
            None => String::new(),
        };
        Credentials {
            name: name.to_string(),
            host: host.to_string(),
            hostname: host.to_string(),
            port,
            user: user.to_string(),
            username: user.to_string(),
            password: password.to_string(),
            uri,
            host_path: None,
            dir: None,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are never logged: Debug shows everything but the password.
        f.debug_struct("Credentials")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("dir", &self.dir)
            .finish()
    }
}

/// A random secret of `len` characters from `[A-Za-z0-9]` (≈5.95 bits each; 24 chars
/// give > 128 bits), from the OS generator.
pub fn random_secret(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| rng.sample(rand::distributions::Alphanumeric) as char)
        .collect()
}

/// Where and how a node runs its servers.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This type's own directory (`STRATO_HOME/services/<type>`): data, logs, the
    /// instance table. One directory, so an operator can relocate it.
    pub dir: PathBuf,
    /// The address the servers listen on and credentials name (see [`address`]).
    pub address: IpAddr,
    /// The port of the node's shared server (postgres, mariadbd); `0` picks a free port
    /// on first start and keeps it (saved under `dir`) across restarts. Types with one
    /// server per instance (redis) pick a port per instance the same way.
    pub port: u16,
    /// Where ports picked for `port: 0` come from: `None` for any free port, else an
    /// inclusive range (the one app containers may connect to).
    pub port_range: Option<(u16, u16)>,
    /// The most instances this node holds (`<type>_node/capacity`).
    pub capacity: u64,
}

/// One service type's node: runs the server(s) and manages instances on them.
///
/// Every method is idempotent where the broker API wants it: provisioning an id that
/// exists with the same plan returns its credentials again, deprovisioning an unknown id
/// is `Ok`. Nothing is half-created: a failed provision removes what it made.
#[async_trait]
pub trait ServiceNode: Send + Sync {
    fn kind(&self) -> ServiceKind;

    /// Creates the instance (database + owner role, redis-server, image ...).
    async fn provision(&self, id: &InstanceId, plan: &Plan) -> Result<Credentials, ServiceError>;

    /// Removes the instance and its data.
    async fn deprovision(&self, id: &InstanceId) -> Result<(), ServiceError>;

    /// Credentials for one app binding.
    async fn bind(&self, id: &InstanceId, binding: &str) -> Result<Credentials, ServiceError>;

    /// Ends one app binding. Strato's own types give every binding the instance's
    /// credentials, so there is nothing to revoke per binding (the default).
    async fn unbind(&self, _id: &InstanceId, _binding: &str) -> Result<(), ServiceError> {
        Ok(())
    }

    /// Writes a consistent dump of the instance (SQL text, RDB file, tar) to `out`.
    async fn export(
        &self,
        id: &InstanceId,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<(), ServiceError>;

    /// Restores a dump written by `export` (of this or another instance of the type).
    async fn import(
        &self,
        id: &InstanceId,
        input: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<(), ServiceError>;

    /// Bytes the instance uses now (for quotas and `strato service`).
    async fn usage_bytes(&self, id: &InstanceId) -> Result<u64, ServiceError>;

    /// The instances this node holds.
    async fn instances(&self) -> Result<Vec<InstanceId>, ServiceError>;

    /// Measures each instance against its plan's size and takes write access away from
    /// those over it (giving it back once they are under again). Types whose server
    /// enforces its own limit (Redis `maxmemory`, a filesystem image) have nothing to do.
    async fn enforce_quotas(&self) -> Result<Vec<QuotaChange>, ServiceError> {
        Ok(Vec::new())
    }

    /// Stops the server processes (data stays).
    async fn shutdown(&self);
}

/// An instance whose write access the quota enforcer just changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaChange {
    pub id: InstanceId,
    pub used_bytes: u64,
    pub limit_bytes: u64,
    /// False: writes are refused until the instance is trimmed below its limit.
    pub writable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_checked_and_make_short_db_names() {
        assert!(InstanceId::new("../etc").is_err());
        assert!(InstanceId::new("").is_err());
        let id = InstanceId::new("0F4e1c5a-7b2d-4c6e-9f00-123456789abc").unwrap();
        let name = id.db_name("d");
        assert!(name.starts_with("d0f4e1c5a7b2d"));
        assert_eq!(name.len(), 32);
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn credentials_uri_and_debug_hide_the_password() {
        let c = Credentials::network(ServiceKind::Mysql, "10.0.0.5", 3306, "d1", "u9", "s3cret");
        assert_eq!(c.uri, "mysql://u9:s3cret@10.0.0.5:3306/d1");
        assert!(!format!("{c:?}").contains("s3cret"));
        let r = Credentials::network(ServiceKind::Redis, "10.0.0.5", 6380, "r1", "default", "pw");
        assert_eq!(r.uri, "redis://default:pw@10.0.0.5:6380/");
    }

    #[test]
    fn secrets_are_long_and_random() {
        let a = random_secret(24);
        assert_eq!(a.len(), 24);
        assert_ne!(a, random_secret(24));
    }

    #[test]
    fn kinds_parse_from_labels() {
        assert_eq!("redis".parse::<ServiceKind>().unwrap(), ServiceKind::Redis);
        let err = "mongodb".parse::<ServiceKind>().unwrap_err().to_string();
        assert!(err.contains("postgresql"), "{err}");
    }
}
