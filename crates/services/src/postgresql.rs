//! The `postgresql` service node: one PostgreSQL 15 cluster (Debian binaries, `initdb`
//! into `dir/data`, fsync on) run by the `postgres` system user under a
//! [`SupervisedServer`], listening on TCP only at the node's address and on a unix socket
//! inside `dir/socket` (mode 0700, owned by the server user) for the node's own admin
//! connections.
//!
//! Each service instance is a database `d<id>` owned by a login role `u<id>` with a random
//! password. `CONNECT` and `TEMPORARY` on it are revoked from PUBLIC (and on `postgres` and
//! `template1`), so another tenant's role is refused at connect. `pg_hba.conf` allows the
//! superuser only on the socket (trust; the socket directory is 0700, so only root and the
//! server user reach it) and every other role only with scram-sha-256 over TCP.
//!
//! # Size limits
//!
//! PostgreSQL has no per-database size limit, so [`PostgresNode::enforce_size_limits`]
//! measures each instance (the sum of `pg_total_relation_size` over its tables, plus its
//! large objects) against the plan. Revoking table privileges from the login role would not
//! hold: it owns its tables and can grant them back to itself. So while an instance is over
//! its limit, ownership is taken away from it:
//!
//! - `REASSIGN OWNED BY u<id> TO h<id>` moves the database, its schemas, tables, views,
//!   sequences and functions to a per-instance NOLOGIN *holder* role that the login role is
//!   not a member of (so `SET ROLE` and re-granting fail: "must be owner");
//! - the login role gets back `CONNECT`, `USAGE` on the schemas and `SELECT`, `DELETE`,
//!   `TRUNCATE` on the tables, so the app can read and trim; `INSERT`/`UPDATE` fail with
//!   PostgreSQL's own "permission denied for table ..."; `CREATE` (tables, schemas,
//!   temporary tables) fails the same way because it owns neither the database nor schemas;
//! - `INSERT` and `UPDATE` are also revoked from the holder itself, because rules and views
//!   run with their owner's rights (an `ON DELETE DO ALSO INSERT` rule would otherwise still
//!   write), and `SECURITY DEFINER` functions are handed to a second NOLOGIN role `n<id>`
//!   that owns nothing, so they cannot write (nor re-grant) either.
//!
//! When the instance is under its limit again (the enforcer runs `VACUUM` on over-limit
//! instances first, so space freed by `DELETE` counts), `REASSIGN OWNED BY h, n TO u` and a
//! `GRANT ALL` on its tables give everything back. The state is kept in the instance table
//! (`writable`), so it survives a restart. Known gap: any role may create large objects
//! (`lo_create`); they are counted, but not refused while over the limit.
//!
//! Admin SQL goes to `psql` on stdin; new passwords travel in an environment variable read
//! with `\getenv`, never in argv, and the admin session sets `log_min_error_statement =
//! panic` so a failing statement that carries one is not written to the server log.

use std::ffi::OsString;
use std::io::Write;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;

use crate::server::{wait_until, ServerSpec, ServerUser, SupervisedServer};
use crate::state::InstanceTable;
use crate::{
    random_secret, Credentials, InstanceId, NodeConfig, Plan, ServiceError, ServiceKind,
    ServiceNode,
};

const INSTALL_ROOT: &str = "/usr/lib/postgresql";
/// The cluster's superuser; it can only log in on the node's private socket.
const SUPERUSER: &str = "postgres";
const CAPACITY_KEY: &str = "postgresql_node/capacity";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long admin statements wait for a tenant's locks before giving up (retried later).
const ADMIN_LOCK_TIMEOUT: &str = "10s";
/// The environment variable that carries a new password to `psql`'s `\getenv`.
const PASSWORD_ENV: &str = "STRATO_PG_NEW_PASSWORD";
/// Longest unix socket path (sun_path is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Schemas that belong to the tenant: everything but the catalogs, TOAST and temp schemas.
const USER_SCHEMAS: &str = "SELECT nspname FROM pg_namespace \
     WHERE nspname NOT IN ('pg_catalog', 'information_schema') \
     AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp\\_%'";

pub use crate::QuotaChange;

/// What the node remembers of an instance (the instance table is 0600: it holds passwords).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct InstanceRecord {
    plan: Plan,
    password: String,
    /// `false` while the quota enforcer holds the instance read-only.
    #[serde(default = "writable_by_default")]
    writable: bool,
}

fn writable_by_default() -> bool {
    true
}

/// The server-side names of one instance, all derived from its id (alphanumeric only, so
/// they can be written into SQL as identifiers).
struct Names {
    database: String,
    login: String,
    /// NOLOGIN role that owns the instance's objects while it is over its size limit.
    holder: String,
    /// NOLOGIN role that owns its SECURITY DEFINER functions meanwhile (and nothing else).
    definer: String,
}

impl Names {
    fn of(id: &InstanceId) -> Names {
        Names {
            database: id.db_name("d"),
            login: id.db_name("u"),
            holder: id.db_name("h"),
            definer: id.db_name("n"),
        }
    }
}

/// Where the node keeps its files under `NodeConfig::dir`.
struct Layout {
    dir: PathBuf,
    data: PathBuf,
    socket: PathBuf,
    port_file: PathBuf,
    instances: PathBuf,
    log: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
            data: dir.join("data"),
            socket: dir.join("socket"),
            port_file: dir.join("port"),
            instances: dir.join("instances.json"),
            log: dir.join("postgresql.log"),
        }
    }
}

/// The PostgreSQL node. Dropping it kills the server; [`ServiceNode::shutdown`] stops it
/// cleanly (fast shutdown).
pub struct PostgresNode {
    config: NodeConfig,
    port: u16,
    bin: PathBuf,
    layout: Layout,
    table: InstanceTable<InstanceRecord>,
    server: std::sync::Mutex<Option<SupervisedServer>>,
    /// Serialises provision, deprovision, import and the enforcer, which all change roles.
    ops: tokio::sync::Mutex<()>,
}

impl PostgresNode {
    /// Prepares `config.dir` (first time: `initdb`), starts the server as the `postgres`
    /// user (the current user when not root) and waits until it accepts connections.
    pub async fn open(config: NodeConfig) -> Result<Self, ServiceError> {
        let bin = find_bin_dir()?;
        let user = ServerUser::system("postgres")?;
        let layout = Layout::new(&config.dir);
        prepare_dirs(&layout, &user)?;
        let port = choose_port(&config, &layout)?;
        check_socket_path(&layout, port)?;
        if !layout.data.join("PG_VERSION").exists() {
            init_cluster(&bin, &layout, &user).await?;
        }
        write_hba(&layout, &user)?;
        let table = InstanceTable::load(&layout.instances)?;
        let spec = server_spec(&bin, &layout, &config, port, user);
        let server = SupervisedServer::start(spec).await?;
        let node = PostgresNode {
            config,
            port,
            bin,
            layout,
            table,
            server: std::sync::Mutex::new(Some(server)),
            ops: tokio::sync::Mutex::new(()),
        };
        node.wait_until_ready(START_TIMEOUT).await?;
        node.secure_cluster().await?;
        Ok(node)
    }

    /// The TCP port the server listens on (stable across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pid of the running `postgres` (postmaster), if one runs now.
    pub fn server_pid(&self) -> Option<u32> {
        self.lock_server().as_ref().and_then(|s| s.pid())
    }

    /// How many times the server was started by this node (1 + restarts after crashes).
    pub fn server_starts(&self) -> u32 {
        self.lock_server().as_ref().map_or(0, |s| s.starts())
    }

    /// Waits until the server this node started (not a stale one) accepts connections.
    pub async fn wait_until_ready(&self, timeout: Duration) -> Result<(), ServiceError> {
        wait_until(timeout, "postgresql", || self.is_ready()).await
    }

    /// Whether the instance accepts writes (false while the enforcer holds it read-only).
    pub async fn is_writable(&self, id: &InstanceId) -> Result<bool, ServiceError> {
        Ok(self.record(id).await?.writable)
    }

    /// Measures every instance against its plan's `size_mb`; takes write privileges away
    /// from those over it and gives them back to those under it again. Returns the
    /// instances whose state changed. An instance that cannot be handled now (a tenant's
    /// lock held too long) is logged and tried again on the next run.
    pub async fn enforce_size_limits(&self) -> Result<Vec<QuotaChange>, ServiceError> {
        let _ops = self.ops.lock().await;
        self.ensure_running()?;
        let mut changes = Vec::new();
        for id in self.table.ids().await {
            match self.enforce_one(&id).await {
                Ok(Some(change)) => changes.push(change),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "cannot enforce the size limit now; will retry")
                }
            }
        }
        Ok(changes)
    }

    async fn enforce_one(&self, id: &InstanceId) -> Result<Option<QuotaChange>, ServiceError> {
        let Some(record) = self.table.get(id).await else {
            return Ok(None);
        };
        let names = Names::of(id);
        if !record.writable {
            // Space freed by DELETE only counts once VACUUM gives the pages back; the
            // tenant cannot vacuum tables it no longer owns.
            self.admin(&names.database, "VACUUM;\n", None).await?;
        }
        let used_bytes = self.measure(&names).await?;
        let limit_bytes = record.plan.size_mb.saturating_mul(1024 * 1024);
        let writable = used_bytes <= limit_bytes;
        if writable == record.writable {
            return Ok(None);
        }
        if writable {
            self.restore_writes(&names).await?;
        } else {
            self.revoke_writes(&names).await?;
        }
        self.table
            .put(id, InstanceRecord { writable, ..record })
            .await?;
        tracing::info!(instance = %id, used_bytes, limit_bytes, writable, "size limit state changed");
        Ok(Some(QuotaChange {
            id: id.clone(),
            used_bytes,
            limit_bytes,
            writable,
        }))
    }

    /// Over the limit: ownership moves to the holder role (see the module doc).
    async fn revoke_writes(&self, n: &Names) -> Result<(), ServiceError> {
        let Names {
            database: d,
            login: u,
            holder: h,
            definer: f,
        } = n;
        let script = format!(
            "SET lock_timeout = '{ADMIN_LOCK_TIMEOUT}';\n\
             BEGIN;\n\
             REASSIGN OWNED BY \"{u}\" TO \"{h}\";\n\
             GRANT CONNECT ON DATABASE \"{d}\" TO \"{u}\";\n\
             DO $strato$\n\
             DECLARE f regprocedure; s name;\n\
             BEGIN\n\
               FOR f IN SELECT p.oid::regprocedure FROM pg_proc p\n\
                        WHERE p.prosecdef AND p.proowner = '\"{h}\"'::regrole LOOP\n\
                 EXECUTE format('ALTER ROUTINE %s OWNER TO \"{f}\"', f);\n\
               END LOOP;\n\
               FOR s IN {USER_SCHEMAS} LOOP\n\
                 EXECUTE format('GRANT USAGE ON SCHEMA %I TO \"{u}\"', s);\n\
                 EXECUTE format('REVOKE INSERT, UPDATE ON ALL TABLES IN SCHEMA %I FROM \"{h}\"', s);\n\
                 EXECUTE format('GRANT SELECT, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA %I TO \"{u}\"', s);\n\
                 EXECUTE format('GRANT SELECT ON ALL SEQUENCES IN SCHEMA %I TO \"{u}\"', s);\n\
               END LOOP;\n\
             END $strato$;\n\
             COMMIT;\n"
        );
        self.admin(d, &script, None).await.map(|_| ())
    }

    /// Under the limit again: everything goes back to the login role.
    async fn restore_writes(&self, n: &Names) -> Result<(), ServiceError> {
        let Names {
            database: d,
            login: u,
            holder: h,
            definer: f,
        } = n;
        let script = format!(
            "SET lock_timeout = '{ADMIN_LOCK_TIMEOUT}';\n\
             BEGIN;\n\
             REASSIGN OWNED BY \"{h}\", \"{f}\" TO \"{u}\";\n\
             DO $strato$\n\
             DECLARE s name;\n\
             BEGIN\n\
               FOR s IN {USER_SCHEMAS} LOOP\n\
                 EXECUTE format('GRANT ALL ON ALL TABLES IN SCHEMA %I TO \"{u}\"', s);\n\
               END LOOP;\n\
             END $strato$;\n\
             COMMIT;\n"
        );
        self.admin(d, &script, None).await.map(|_| ())
    }

    /// Bytes of the instance's tables (with indexes and TOAST) and large objects.
    async fn measure(&self, n: &Names) -> Result<u64, ServiceError> {
        let script = "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)\n\
             + pg_total_relation_size('pg_catalog.pg_largeobject')\n\
             FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace\n\
             WHERE c.relkind IN ('r', 'm')\n\
             AND s.nspname NOT IN ('pg_catalog', 'information_schema')\n\
             AND s.nspname NOT LIKE 'pg\\_toast%' AND s.nspname NOT LIKE 'pg\\_temp\\_%';\n";
        let out = self.admin(&n.database, script, None).await?;
        out.trim().parse::<u64>().map_err(|_| {
            ServiceError::Other(format!(
                "unexpected size from PostgreSQL for {}: '{}'",
                n.database,
                out.trim()
            ))
        })
    }

    async fn record(&self, id: &InstanceId) -> Result<InstanceRecord, ServiceError> {
        self.table
            .get(id)
            .await
            .ok_or_else(|| ServiceError::NotFound(id.to_string()))
    }

    fn credentials(&self, id: &InstanceId, record: &InstanceRecord) -> Credentials {
        let names = Names::of(id);
        Credentials::network(
            ServiceKind::Postgresql,
            &self.config.address.to_string(),
            self.port,
            &names.database,
            &names.login,
            &record.password,
        )
    }

    /// Creates database, login role and the two NOLOGIN roles of the quota enforcer.
    async fn create_instance(&self, n: &Names, password: &str) -> Result<(), ServiceError> {
        let Names {
            database: d,
            login: u,
            holder: h,
            definer: f,
        } = n;
        let roles = format!(
            "\\getenv pw {PASSWORD_ENV}\n\
             CREATE ROLE \"{u}\" LOGIN PASSWORD :'pw';\n\
             CREATE ROLE \"{h}\" NOLOGIN;\n\
             CREATE ROLE \"{f}\" NOLOGIN;\n\
             CREATE DATABASE \"{d}\" OWNER \"{u}\";\n\
             REVOKE ALL ON DATABASE \"{d}\" FROM PUBLIC;\n\
             GRANT CONNECT ON DATABASE \"{d}\" TO \"{u}\";\n"
        );
        self.admin("postgres", &roles, Some(password)).await?;
        self.admin(d, "REVOKE CREATE ON SCHEMA public FROM PUBLIC;\n", None)
            .await
            .map(|_| ())
    }

    /// Drops everything an instance has on the server (absent parts are fine).
    async fn drop_instance(&self, n: &Names) -> Result<(), ServiceError> {
        let Names {
            database: d,
            login: u,
            holder: h,
            definer: f,
        } = n;
        let script = format!(
            "DROP DATABASE IF EXISTS \"{d}\" WITH (FORCE);\n\
             DROP ROLE IF EXISTS \"{u}\", \"{h}\", \"{f}\";\n"
        );
        self.admin("postgres", &script, None).await.map(|_| ())
    }

    /// Two ids whose first 31 alphanumerics agree would share server names.
    async fn check_names_free(&self, id: &InstanceId) -> Result<(), ServiceError> {
        let database = id.db_name("d");
        for other in self.table.ids().await {
            if other != *id && other.db_name("d") == database {
                return Err(ServiceError::Other(format!(
                    "instance id {id} maps to database {database}, which instance {other} uses; use another id"
                )));
            }
        }
        Ok(())
    }

    /// Tenants may connect only to their own database, never to the maintenance ones.
    async fn secure_cluster(&self) -> Result<(), ServiceError> {
        let script = "REVOKE ALL ON DATABASE postgres FROM PUBLIC;\n\
                      REVOKE ALL ON DATABASE template1 FROM PUBLIC;\n";
        self.admin("postgres", script, None).await.map(|_| ())
    }

    async fn is_ready(&self) -> bool {
        let Some(pid) = self.server_pid() else {
            return false;
        };
        // The pid file names the postmaster that owns the data dir: ours, not a stale one.
        let owner = std::fs::read_to_string(self.layout.data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        if owner != Some(pid) {
            return false;
        }
        let mut cmd = self.client(&self.bin.join("pg_isready"));
        cmd.arg("--quiet")
            .arg("--timeout=2")
            .arg("--host")
            .arg(&self.layout.socket)
            .arg(format!("--port={}", self.port));
        run(cmd, None, "pg_isready", None).await.is_ok()
    }

    fn lock_server(&self) -> std::sync::MutexGuard<'_, Option<SupervisedServer>> {
        self.server.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ensure_running(&self) -> Result<(), ServiceError> {
        if self.lock_server().is_some() {
            Ok(())
        } else {
            Err(ServiceError::Unavailable {
                server: "postgresql".into(),
                reason: "the node was shut down; open it again".into(),
            })
        }
    }

    /// A client program with a clean environment (no PG* variables from the caller).
    fn client(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C")
            .env("PGCONNECT_TIMEOUT", "10")
            .current_dir(&self.layout.dir);
        cmd
    }

    /// Runs `script` with `psql` as the superuser on the private socket, stopping at the
    /// first error; returns the unaligned, tuples-only output. `secret` is handed over in
    /// [`PASSWORD_ENV`] and blanked out of error messages.
    async fn admin(
        &self,
        database: &str,
        script: &str,
        secret: Option<&str>,
    ) -> Result<String, ServiceError> {
        self.ensure_running()?;
        let mut cmd = self.client(&self.bin.join("psql"));
        cmd.args(["--no-psqlrc", "--quiet", "--no-align", "--tuples-only"])
            .arg("--set=ON_ERROR_STOP=1")
            .arg("--host")
            .arg(&self.layout.socket)
            .arg(format!("--port={}", self.port))
            .arg(format!("--username={SUPERUSER}"))
            .arg(format!("--dbname={database}"));
        if let Some(secret) = secret {
            cmd.env(PASSWORD_ENV, secret);
        }
        // Statements that fail are not copied into the server log (they may hold a secret).
        let script = format!("SET log_min_error_statement = panic;\n{script}");
        let out = run(cmd, Some(script.into_bytes()), "psql", secret).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

#[async_trait]
impl ServiceNode for PostgresNode {
    fn kind(&self) -> ServiceKind {
        ServiceKind::Postgresql
    }

    async fn provision(&self, id: &InstanceId, plan: &Plan) -> Result<Credentials, ServiceError> {
        let _ops = self.ops.lock().await;
        if let Some(record) = self.table.get(id).await {
            return if record.plan == *plan {
                Ok(self.credentials(id, &record))
            } else {
                Err(ServiceError::Conflict(id.to_string()))
            };
        }
        let limit = self.config.capacity;
        if self.table.len().await as u64 >= limit {
            return Err(ServiceError::Capacity {
                limit,
                key: CAPACITY_KEY.into(),
            });
        }
        self.check_names_free(id).await?;
        let names = Names::of(id);
        // Leftovers of an attempt that died half-way (no record was written for it).
        self.drop_instance(&names).await?;
        let record = InstanceRecord {
            plan: plan.clone(),
            password: random_secret(24),
            writable: true,
        };
        let created = match self.create_instance(&names, &record.password).await {
            Ok(()) => self.table.put(id, record.clone()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = created {
            if let Err(cleanup) = self.drop_instance(&names).await {
                tracing::warn!(instance = %id, error = %cleanup, "cannot remove a half-provisioned instance");
            }
            return Err(e);
        }
        tracing::info!(instance = %id, database = %names.database, "provisioned postgresql instance");
        Ok(self.credentials(id, &record))
    }

    async fn deprovision(&self, id: &InstanceId) -> Result<(), ServiceError> {
        let _ops = self.ops.lock().await;
        if self.table.get(id).await.is_none() {
            return Ok(());
        }
        self.drop_instance(&Names::of(id)).await?;
        self.table.remove(id).await?;
        tracing::info!(instance = %id, "deprovisioned postgresql instance");
        Ok(())
    }

    /// Every binding gets the instance's own login (the role that owns the database).
    async fn bind(&self, id: &InstanceId, _binding: &str) -> Result<Credentials, ServiceError> {
        let record = self.record(id).await?;
        Ok(self.credentials(id, &record))
    }

    /// `pg_dump --no-owner --no-privileges` of the instance's database (one snapshot).
    async fn export(
        &self,
        id: &InstanceId,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<(), ServiceError> {
        self.record(id).await?;
        self.ensure_running()?;
        let names = Names::of(id);
        let mut cmd = self.client(&self.bin.join("pg_dump"));
        cmd.args(["--no-owner", "--no-privileges", "--format=plain"])
            .arg("--host")
            .arg(&self.layout.socket)
            .arg(format!("--port={}", self.port))
            .arg(format!("--username={SUPERUSER}"))
            .arg(format!("--dbname={}", names.database));
        stream_out(cmd, "pg_dump", out).await
    }

    /// Runs a dump with `psql` as the instance's own login (so what it creates belongs to
    /// it), over TCP, in one transaction: a dump that fails part-way leaves nothing.
    async fn import(
        &self,
        id: &InstanceId,
        input: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<(), ServiceError> {
        let _ops = self.ops.lock().await;
        let record = self.record(id).await?;
        self.ensure_running()?;
        let names = Names::of(id);
        let mut cmd = self.client(&self.bin.join("psql"));
        cmd.args(["--no-psqlrc", "--quiet", "--single-transaction"])
            .arg("--set=ON_ERROR_STOP=1")
            .arg("--host")
            .arg(self.config.address.to_string())
            .arg(format!("--port={}", self.port))
            .arg(format!("--username={}", names.login))
            .arg(format!("--dbname={}", names.database))
            .env("PGPASSWORD", &record.password);
        stream_in(cmd, "psql", input, &record.password).await
    }

    async fn usage_bytes(&self, id: &InstanceId) -> Result<u64, ServiceError> {
        self.record(id).await?;
        self.measure(&Names::of(id)).await
    }

    async fn instances(&self) -> Result<Vec<InstanceId>, ServiceError> {
        Ok(self.table.ids().await)
    }

    async fn enforce_quotas(&self) -> Result<Vec<QuotaChange>, ServiceError> {
        self.enforce_size_limits().await
    }

    async fn shutdown(&self) {
        let server = self.lock_server().take();
        if let Some(server) = server {
            server.stop().await;
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has a `postgres` binary.
fn find_bin_dir() -> Result<PathBuf, ServiceError> {
    let entries = std::fs::read_dir(INSTALL_ROOT).map_err(|e| {
        ServiceError::io(
            "PostgreSQL is not installed; run `apt install postgresql`",
            INSTALL_ROOT,
            e,
        )
    })?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
        .ok_or_else(|| {
            ServiceError::Other(format!(
                "no {INSTALL_ROOT}/<version>/bin/postgres; install it with `apt install postgresql`"
            ))
        })
}

/// `dir` (0711: traversable by the server user), `dir/socket` (0700, server user's).
fn prepare_dirs(layout: &Layout, user: &ServerUser) -> Result<(), ServiceError> {
    let io = |what: &str, path: &Path, e| ServiceError::io(what, path, e);
    std::fs::create_dir_all(&layout.dir)
        .map_err(|e| io("cannot create the node directory", &layout.dir, e))?;
    set_mode(&layout.dir, 0o711)?;
    check_ancestors_traversable(&layout.dir, user)?;
    match std::fs::create_dir(&layout.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("cannot create the socket directory", &layout.socket, e)),
    }
    set_mode(&layout.socket, 0o700)?;
    user.chown(&layout.socket)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ServiceError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ServiceError::io("cannot change permissions", path, e))
}

/// The server user must be able to walk down to `dir`; say which directory stops it.
fn check_ancestors_traversable(dir: &Path, user: &ServerUser) -> Result<(), ServiceError> {
    if user.uid == nix::unistd::getuid().as_raw() {
        return Ok(());
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| ServiceError::io("cannot resolve the node directory", dir, e))?;
    for ancestor in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor)
            .map_err(|e| ServiceError::io("cannot inspect a parent directory", ancestor, e))?;
        let mode = meta.mode();
        let can_traverse = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !can_traverse {
            return Err(ServiceError::Other(format!(
                "the '{}' user cannot reach {} because {} is not traversable; run `chmod o+x {}` (DESIGN: 0711 parents)",
                user.name,
                dir.display(),
                ancestor.display(),
                ancestor.display()
            )));
        }
    }
    Ok(())
}

/// `config.port`, or the port saved under `dir`, or a free one (then saved).
fn choose_port(config: &NodeConfig, layout: &Layout) -> Result<u16, ServiceError> {
    if config.port != 0 {
        return Ok(config.port);
    }
    match std::fs::read_to_string(&layout.port_file) {
        Ok(text) => {
            return text.trim().parse().map_err(|_| {
                ServiceError::Other(format!(
                    "{} does not hold a port number; fix or delete it",
                    layout.port_file.display()
                ))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ServiceError::io(
                "cannot read the saved port",
                &layout.port_file,
                e,
            ))
        }
    }
    let port = free_port(config)?;
    let io = |e| ServiceError::io("cannot save the port", &layout.port_file, e);
    let mut file = std::fs::File::create(&layout.port_file).map_err(io)?;
    writeln!(file, "{port}").map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(port)
}

fn free_port(config: &NodeConfig) -> Result<u16, ServiceError> {
    let address = config.address;
    crate::address::free_port(address, config.port_range, &[])
        .map_err(|e| {
            ServiceError::Other(format!(
                "cannot find a free port on {address} ({e}); is `postgresql_node/address` an address of this host?"
            ))
        })
}

fn check_socket_path(layout: &Layout, port: u16) -> Result<(), ServiceError> {
    let path = layout.socket.join(format!(".s.PGSQL.{port}"));
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(ServiceError::Other(format!(
            "the socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter services directory",
            path.display()
        )));
    }
    Ok(())
}

/// `initdb` into a scratch directory, renamed into place only when it succeeded.
async fn init_cluster(bin: &Path, layout: &Layout, user: &ServerUser) -> Result<(), ServiceError> {
    let scratch = layout.dir.join("data.init");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .map_err(|e| ServiceError::io("cannot remove a failed initdb", &scratch, e))?;
    }
    std::fs::create_dir(&scratch)
        .map_err(|e| ServiceError::io("cannot create the data directory", &scratch, e))?;
    set_mode(&scratch, 0o700)?;
    user.chown(&scratch)?;
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C")
        .current_dir(&layout.dir)
        .arg("--pgdata")
        .arg(&scratch)
        .arg(format!("--username={SUPERUSER}"))
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        .args(["--encoding=UTF8", "--locale=C", "--no-instructions"]);
    user.apply(&mut cmd);
    run(cmd, None, "initdb", None).await?;
    std::fs::rename(&scratch, &layout.data)
        .map_err(|e| ServiceError::io("cannot move the new cluster into place", &layout.data, e))
}

/// Superuser on the private socket only; every other role with scram over TCP.
fn write_hba(layout: &Layout, user: &ServerUser) -> Result<(), ServiceError> {
    let path = layout.data.join("pg_hba.conf");
    let text = format!(
        "# Written by Strato's postgresql node at every start; edits are overwritten.\n\
         local all {SUPERUSER} trust\n\
         host  all {SUPERUSER} 0.0.0.0/0 reject\n\
         host  all {SUPERUSER} ::/0      reject\n\
         host  all all 0.0.0.0/0 scram-sha-256\n\
         host  all all ::/0      scram-sha-256\n"
    );
    std::fs::write(&path, text)
        .map_err(|e| ServiceError::io("cannot write pg_hba.conf", &path, e))?;
    set_mode(&path, 0o600)?;
    user.chown(&path)
}

fn server_spec(
    bin: &Path,
    layout: &Layout,
    config: &NodeConfig,
    port: u16,
    user: ServerUser,
) -> ServerSpec {
    let mut args: Vec<OsString> = vec!["-D".into(), layout.data.clone().into()];
    let mut setting = |key: &str, value: &str| {
        args.push("-c".into());
        args.push(format!("{key}={value}").into());
    };
    setting("port", &port.to_string());
    setting("listen_addresses", &config.address.to_string());
    setting("unix_socket_directories", &layout.socket.to_string_lossy());
    setting("unix_socket_permissions", "0700");
    setting("fsync", "on");
    setting("synchronous_commit", "on");
    setting("full_page_writes", "on");
    setting("password_encryption", "scram-sha-256");
    ServerSpec {
        name: "postgresql".into(),
        program: bin.join("postgres"),
        args,
        env: vec![("LC_ALL".into(), "C".into())],
        user,
        log: layout.log.clone(),
        stop_signal: Signal::SIGINT,
        grace: STOP_GRACE,
    }
}

/// Runs a client program to completion, feeding `stdin`; on failure the error quotes its
/// stderr with `secret` blanked out.
async fn run(
    mut cmd: Command,
    stdin: Option<Vec<u8>>,
    program: &str,
    secret: Option<&str>,
) -> Result<Vec<u8>, ServiceError> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| ServiceError::io(&format!("cannot run {program}"), program, e))?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error means the program exited early; its status tells why.
        tokio::spawn(async move {
            let _ = pipe.write_all(&bytes).await;
        });
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| ServiceError::io(&format!("cannot wait for {program}"), program, e))?;
    if !output.status.success() {
        return Err(command_error(
            program,
            output.status,
            &output.stderr,
            secret,
        ));
    }
    Ok(output.stdout)
}

fn command_error(
    program: &str,
    status: std::process::ExitStatus,
    stderr: &[u8],
    secret: Option<&str>,
) -> ServiceError {
    let mut stderr = String::from_utf8_lossy(stderr).trim().to_string();
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        stderr = stderr.replace(secret, "<redacted>");
    }
    ServiceError::Command {
        program: program.to_string(),
        status: status.to_string(),
        stderr,
    }
}

/// Runs `cmd` and copies its stdout to `out` as it comes.
async fn stream_out(
    mut cmd: Command,
    program: &str,
    out: &mut (dyn AsyncWrite + Send + Unpin),
) -> Result<(), ServiceError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| ServiceError::io(&format!("cannot run {program}"), program, e))?;
    let (Some(mut stdout), stderr) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ServiceError::Other(format!("{program} has no output pipe")));
    };
    // The pipe is moved into the copy, so it closes when the copy ends (or fails).
    let copy = async move { tokio::io::copy(&mut stdout, out).await };
    let (copied, errors) = tokio::join!(copy, read_all(stderr));
    let status = child
        .wait()
        .await
        .map_err(|e| ServiceError::io(&format!("cannot wait for {program}"), program, e))?;
    if !status.success() {
        return Err(command_error(program, status, &errors, None));
    }
    copied.map_err(|e| ServiceError::io("cannot write the dump", program, e))?;
    Ok(())
}

/// Runs `cmd` with `input` as its stdin. If reading `input` fails, the program is killed
/// before it sees end-of-input, so a transaction it has open is rolled back, not committed.
async fn stream_in(
    mut cmd: Command,
    program: &str,
    input: &mut (dyn AsyncRead + Send + Unpin),
    secret: &str,
) -> Result<(), ServiceError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| ServiceError::io(&format!("cannot run {program}"), program, e))?;
    let pid = child.id();
    let Some(mut stdin) = child.stdin.take() else {
        return Err(ServiceError::Other(format!("{program} has no input pipe")));
    };
    let feed = async move {
        let result = tokio::io::copy(input, &mut stdin).await;
        if result.is_err() {
            if let Some(pid) = pid {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        drop(stdin);
        result
    };
    let (fed, _, errors) = tokio::join!(
        feed,
        read_all(child.stdout.take()),
        read_all(child.stderr.take())
    );
    let status = child
        .wait()
        .await
        .map_err(|e| ServiceError::io(&format!("cannot wait for {program}"), program, e))?;
    if !status.success() && !errors.is_empty() {
        return Err(command_error(program, status, &errors, Some(secret)));
    }
    fed.map_err(|e| ServiceError::io("cannot read the dump to import", program, e))?;
    if !status.success() {
        return Err(command_error(program, status, &errors, Some(secret)));
    }
    Ok(())
}

async fn read_all(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut buf).await;
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_identifiers_and_distinct() {
        let id = InstanceId::new("0F4e1c5a-7b2d-4c6e-9f00-123456789abc").unwrap();
        let n = Names::of(&id);
        let all = [&n.database, &n.login, &n.holder, &n.definer];
        for name in all {
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
            assert!(name.len() <= 32);
        }
        let unique: std::collections::HashSet<_> = all.into_iter().collect();
        assert_eq!(unique.len(), 4);
    }

    #[test]
    fn errors_never_show_the_secret() {
        let status = std::process::Command::new("/bin/false").status().unwrap();
        let err = command_error(
            "psql",
            status,
            b"LINE 1: PASSWORD 'hunter2'",
            Some("hunter2"),
        );
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn records_without_a_writable_flag_are_writable() {
        let r: InstanceRecord =
            serde_json::from_str(r#"{"plan":{"name":"free","size_mb":5},"password":"p"}"#).unwrap();
        assert!(r.writable);
    }

    #[test]
    fn a_saved_port_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let config = NodeConfig {
            dir: dir.path().to_path_buf(),
            address: "127.0.0.1".parse().unwrap(),
            port: 0,
            port_range: None,
            capacity: 1,
        };
        let first = choose_port(&config, &layout).unwrap();
        assert_ne!(first, 0);
        assert_eq!(choose_port(&config, &layout).unwrap(), first);
    }
}
