//! The `mysql` service node: one MariaDB server (Debian's `mariadbd`) per node, run as the
//! `mysql` system user and supervised, with one database and one user per service
//! instance.
//!
//! The server listens on the node's address only (credentials name it) and on a Unix
//! socket inside the node's directory, where the node administers it as a socket-
//! authenticated account that nothing on the network can reach. Tenants get a user with
//! `ALL` on their database alone, so another tenant's database refuses them at connect.
//! MariaDB has no per-database size limit: [`MysqlNode::enforce_size_limits`] measures
//! each database against its plan and revokes the privileges that grow it while it is
//! over, as Cloud Foundry's MySQL broker does.

use std::ffi::OsString;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::Mutex;

use crate::server::{wait_until, ServerSpec, ServerUser, SupervisedServer};
use crate::state::InstanceTable;
use crate::{
    random_secret, Credentials, InstanceId, NodeConfig, Plan, ServiceError, ServiceKind,
    ServiceNode,
};

const SERVER: &str = "/usr/sbin/mariadbd";
const INSTALL_DB: &str = "mariadb-install-db";
const CLIENT: &str = "mariadb";
const ADMIN: &str = "mariadb-admin";
const DUMP: &str = "mysqldump";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(60);
const CAPACITY_KEY: &str = "mysql_node/capacity";
/// Unix socket paths are limited to 108 bytes by the kernel (`sun_path`).
const MAX_SOCKET_PATH: usize = 107;

pub use crate::QuotaChange;

/// What the node remembers of one instance (in `instances.json`, mode 0600).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct MysqlInstance {
    plan: Plan,
    database: String,
    user: String,
    password: String,
    /// `false` while the quota enforcer holds the write privileges back.
    #[serde(default = "writable_by_default")]
    writable: bool,
}

fn writable_by_default() -> bool {
    true
}

/// Where a node keeps its files, all under `NodeConfig::dir`.
#[derive(Clone, Debug)]
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    fn data_being_initialised(&self) -> PathBuf {
        self.dir.join("data.init")
    }
    /// Owned by the server user: socket and pid file.
    fn run(&self) -> PathBuf {
        self.dir.join("run")
    }
    /// The server's temporary files (never the shared /tmp, where parallel servers'
    /// names collide).
    fn tmp(&self) -> PathBuf {
        self.run().join("tmp")
    }
    fn socket(&self) -> PathBuf {
        self.run().join("mysqld.sock")
    }
    fn pid_file(&self) -> PathBuf {
        self.run().join("mysqld.pid")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("mariadbd.log")
    }
    fn port_file(&self) -> PathBuf {
        self.dir.join("port")
    }
    fn instance_table(&self) -> PathBuf {
        self.dir.join("instances.json")
    }
}

/// A MariaDB server and the service instances carved out of it.
pub struct MysqlNode {
    layout: Layout,
    address: IpAddr,
    port: u16,
    capacity: u64,
    /// The socket-authenticated MariaDB account the node administers the server as: the
    /// name of the OS user this process runs as (`root` in production).
    admin_user: String,
    server: std::sync::Mutex<Option<SupervisedServer>>,
    instances: InstanceTable<MysqlInstance>,
    /// Serialises provision, deprovision and quota enforcement.
    ops: Mutex<()>,
}

impl MysqlNode {
    /// Prepares `config.dir` (initialising a data directory the first time), starts
    /// `mariadbd` under supervision and waits until it answers.
    pub async fn open(config: NodeConfig) -> Result<Self, ServiceError> {
        let layout = Layout {
            dir: config.dir.clone(),
        };
        let user = ServerUser::system("mysql")?;
        let admin_user = ServerUser::current().name;
        prepare_dir(&layout, &user)?;
        let port = choose_port(&layout, &config)?;
        stop_orphaned_server(&layout).await;
        if !layout.data().join("mysql").is_dir() {
            init_data_dir(&layout, &user, &admin_user).await?;
        }
        let server =
            SupervisedServer::start(server_spec(&layout, &user, config.address, port)).await?;
        let node = MysqlNode {
            instances: InstanceTable::load(&layout.instance_table())?,
            layout,
            address: config.address,
            port,
            capacity: config.capacity,
            admin_user,
            server: std::sync::Mutex::new(Some(server)),
            ops: Mutex::new(()),
        };
        if let Err(e) = node.wait_ready().await {
            node.shutdown().await;
            return Err(e);
        }
        Ok(node)
    }

    /// The TCP port `mariadbd` listens on (on the node's address only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pid of the running `mariadbd`, if one runs now.
    pub fn server_pid(&self) -> Option<u32> {
        self.server
            .lock()
            .ok()
            .and_then(|s| s.as_ref().and_then(|s| s.pid()))
    }

    /// Measures every instance's database against its plan: one over its limit loses
    /// INSERT, UPDATE and CREATE (SELECT and DELETE stay, so its owner can trim it) and
    /// its open connections are killed so the revoke takes effect; one back under its
    /// limit gets ALL again. Returns only the instances whose state changed.
    pub async fn enforce_size_limits(&self) -> Result<Vec<QuotaChange>, ServiceError> {
        let _ops = self.ops.lock().await;
        let mut changes = Vec::new();
        let mut first_error = None;
        let mut measured = 0usize;
        for id in self.instances.ids().await {
            let Some(instance) = self.instances.get(&id).await else {
                continue;
            };
            match self.enforce_one(&id, instance).await {
                Ok(change) => {
                    measured += 1;
                    changes.extend(change);
                }
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "cannot enforce the size limit");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if measured == 0 => Err(e),
            _ => Ok(changes),
        }
    }

    async fn enforce_one(
        &self,
        id: &InstanceId,
        mut instance: MysqlInstance,
    ) -> Result<Option<QuotaChange>, ServiceError> {
        let used_bytes = self.database_size(&instance.database).await?;
        let limit_bytes = instance.plan.size_mb.saturating_mul(1024 * 1024);
        let writable = used_bytes <= limit_bytes;
        if writable == instance.writable {
            return Ok(None);
        }
        let (db, user) = (&instance.database, &instance.user);
        if writable {
            self.admin_sql(&format!("GRANT ALL ON `{db}`.* TO '{user}'@'%';"))
                .await?;
        } else {
            self.admin_sql(&format!(
                "REVOKE INSERT, UPDATE, CREATE ON `{db}`.* FROM '{user}'@'%';"
            ))
            .await?;
            // Database privileges are read when a session starts: open sessions would
            // keep writing.
            self.kill_connections(user).await?;
        }
        instance.writable = writable;
        self.instances.put(id, instance).await?;
        tracing::info!(instance = %id, used_bytes, limit_bytes, writable, "database size limit enforced");
        Ok(Some(QuotaChange {
            id: id.clone(),
            used_bytes,
            limit_bytes,
            writable,
        }))
    }

    /// InnoDB data + index bytes of `database`, with statistics refreshed first
    /// (`information_schema` otherwise lags behind recent writes and deletes).
    async fn database_size(&self, database: &str) -> Result<u64, ServiceError> {
        // The server quotes the table names (sys.quote_identifier); only the alphanumeric
        // database name is built into the SQL here.
        let sql = format!(
            "SET SESSION lock_wait_timeout = 30;
             SET SESSION group_concat_max_len = 4294967295;
             SET @strato_analyze = (SELECT COALESCE(CONCAT('ANALYZE TABLE ',
                 GROUP_CONCAT(CONCAT(sys.quote_identifier(table_schema), '.',
                                     sys.quote_identifier(table_name)))), 'DO 0')
               FROM information_schema.tables
               WHERE table_schema = '{database}' AND table_type = 'BASE TABLE');
             PREPARE strato_analyze FROM @strato_analyze;
             EXECUTE strato_analyze;
             DEALLOCATE PREPARE strato_analyze;
             SELECT 'size', COALESCE(SUM(data_length + index_length), 0)
               FROM information_schema.tables WHERE table_schema = '{database}';"
        );
        let out = self.admin_sql(&sql).await?;
        out.lines()
            .rev()
            .find_map(|line| line.strip_prefix("size\t"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ServiceError::Other(format!(
                    "cannot read the size of database {database} from the server's answer"
                ))
            })
    }

    /// Ends every session of `user` (its running statement is rolled back).
    async fn kill_connections(&self, user: &str) -> Result<(), ServiceError> {
        let out = self
            .admin_sql(&format!(
                "SELECT id FROM information_schema.processlist WHERE user = '{user}';"
            ))
            .await?;
        let kills: String = out
            .lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .map(|id| format!("KILL CONNECTION {id};\n"))
            .collect();
        if kills.is_empty() {
            return Ok(());
        }
        match self.run_admin(&kills, true).await {
            Ok(_) => Ok(()),
            // A session that ended between the SELECT and the KILL is fine.
            Err(ServiceError::Command { stderr, .. })
                if stderr.lines().all(|l| l.contains("Unknown thread id")) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `sql` as the node's admin account over the socket; returns its output
    /// (tab-separated, no column names).
    async fn admin_sql(&self, sql: &str) -> Result<String, ServiceError> {
        self.run_admin(sql, false).await
    }

    async fn run_admin(&self, sql: &str, force: bool) -> Result<String, ServiceError> {
        let mut cmd = self.admin_command(CLIENT);
        cmd.args(["--batch", "--skip-column-names"]);
        if force {
            cmd.arg("--force");
        }
        let out = run(cmd, CLIENT, Some(sql.as_bytes())).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// `program --no-defaults --socket=... --user=<admin>`, with no password in its
    /// environment (the account is socket-authenticated).
    fn admin_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("--no-defaults")
            .arg(opt("--socket=", &self.layout.socket()))
            .arg(format!("--user={}", self.admin_user))
            .env_remove("MYSQL_PWD")
            .env_remove("MYSQL_HOST");
        cmd
    }

    async fn ping(&self) -> bool {
        let mut cmd = self.admin_command(ADMIN);
        cmd.args(["--connect-timeout=2", "ping"]);
        run(cmd, ADMIN, None).await.is_ok()
    }

    async fn wait_ready(&self) -> Result<(), ServiceError> {
        let crashed = || {
            self.server
                .lock()
                .ok()
                .and_then(|s| s.as_ref().map(|s| s.starts() >= 3))
                .unwrap_or(true)
        };
        let crashed = &crashed;
        let ready = wait_until(READY_TIMEOUT, "mariadb", move || async move {
            // A server that keeps dying at start will not come up: give up early.
            crashed() || self.ping().await
        })
        .await;
        if ready.is_ok() && !crashed() {
            return Ok(());
        }
        Err(ServiceError::Unavailable {
            server: "mariadb".into(),
            reason: format!(
                "it did not start; the end of its log {}:\n{}",
                self.layout.log().display(),
                log_tail(&self.layout.log(), 8)
            ),
        })
    }

    fn credentials(&self, instance: &MysqlInstance) -> Credentials {
        Credentials::network(
            ServiceKind::Mysql,
            &self.address.to_string(),
            self.port,
            &instance.database,
            &instance.user,
            &instance.password,
        )
    }

    async fn instance(&self, id: &InstanceId) -> Result<MysqlInstance, ServiceError> {
        self.instances
            .get(id)
            .await
            .ok_or_else(|| ServiceError::NotFound(id.to_string()))
    }

    /// Drops `user` and `database` (both may be absent), ending the user's sessions.
    async fn drop_instance_objects(&self, database: &str, user: &str) -> Result<(), ServiceError> {
        self.admin_sql(&format!("DROP USER IF EXISTS '{user}'@'%';"))
            .await?;
        self.kill_connections(user).await?;
        self.admin_sql(&format!("DROP DATABASE IF EXISTS `{database}`;"))
            .await?;
        Ok(())
    }

    async fn create_instance_objects(&self, instance: &MysqlInstance) -> Result<(), ServiceError> {
        let (db, user, password) = (&instance.database, &instance.user, &instance.password);
        // The SQL goes through stdin, never argv; the password is alphanumeric.
        self.admin_sql(&format!(
            "CREATE DATABASE `{db}`;
             CREATE USER '{user}'@'%' IDENTIFIED BY '{password}';
             GRANT ALL ON `{db}`.* TO '{user}'@'%';"
        ))
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl ServiceNode for MysqlNode {
    fn kind(&self) -> ServiceKind {
        ServiceKind::Mysql
    }

    async fn provision(&self, id: &InstanceId, plan: &Plan) -> Result<Credentials, ServiceError> {
        let _ops = self.ops.lock().await;
        if let Some(existing) = self.instances.get(id).await {
            if &existing.plan != plan {
                return Err(ServiceError::Conflict(id.to_string()));
            }
            return Ok(self.credentials(&existing));
        }
        if self.instances.len().await as u64 >= self.capacity {
            return Err(ServiceError::Capacity {
                limit: self.capacity,
                key: CAPACITY_KEY.to_string(),
            });
        }
        let instance = MysqlInstance {
            plan: plan.clone(),
            database: id.db_name("d"),
            user: id.db_name("u"),
            password: random_secret(24),
            writable: true,
        };
        // Leftovers of a provision that never returned (the node died before recording
        // it) were never handed to anyone: start clean.
        self.drop_instance_objects(&instance.database, &instance.user)
            .await?;
        let created = match self.create_instance_objects(&instance).await {
            Ok(()) => self.instances.put(id, instance.clone()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = created {
            if let Err(cleanup) = self
                .drop_instance_objects(&instance.database, &instance.user)
                .await
            {
                tracing::error!(instance = %id, error = %cleanup, "cannot remove a half-provisioned instance");
            }
            return Err(e);
        }
        Ok(self.credentials(&instance))
    }

    async fn deprovision(&self, id: &InstanceId) -> Result<(), ServiceError> {
        let _ops = self.ops.lock().await;
        let Some(instance) = self.instances.get(id).await else {
            return Ok(());
        };
        self.drop_instance_objects(&instance.database, &instance.user)
            .await?;
        self.instances.remove(id).await?;
        Ok(())
    }

    /// Every binding of an instance shares its user (the quota enforcer then has one
    /// account to restrict).
    async fn bind(&self, id: &InstanceId, _binding: &str) -> Result<Credentials, ServiceError> {
        Ok(self.credentials(&self.instance(id).await?))
    }

    /// `mysqldump --single-transaction --routines` of the instance's database, without
    /// `CREATE DATABASE`/`USE`, and with the instance user as definer rewritten to
    /// `CURRENT_USER`, so it imports into any instance.
    async fn export(
        &self,
        id: &InstanceId,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<(), ServiceError> {
        let instance = self.instance(id).await?;
        let mut cmd = self.admin_command(DUMP);
        cmd.args([
            "--single-transaction",
            "--routines",
            "--triggers",
            "--hex-blob",
            "--skip-dump-date",
        ])
        .arg(&instance.database)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| spawn_error(DUMP, e))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let errors = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        let definer = format!("DEFINER=`{}`@`%`", instance.user);
        let copied = copy_rewriting_definer(stdout, out, definer.as_bytes()).await;
        let status = child.wait().await.map_err(|e| spawn_error(DUMP, e))?;
        let stderr = errors.await.unwrap_or_default();
        if !status.success() {
            return Err(command_error(DUMP, status, &stderr));
        }
        copied.map_err(|e| ServiceError::Other(format!("cannot write the export: {e}")))?;
        out.flush()
            .await
            .map_err(|e| ServiceError::Other(format!("cannot write the export: {e}")))
    }

    /// Feeds `input` to the `mariadb` client logged in as the instance's own user, so a
    /// dump can do nothing its owner could not.
    async fn import(
        &self,
        id: &InstanceId,
        input: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<(), ServiceError> {
        let instance = self.instance(id).await?;
        let mut cmd = Command::new(CLIENT);
        cmd.arg("--no-defaults")
            .arg(opt("--socket=", &self.layout.socket()))
            .arg(format!("--user={}", instance.user))
            .arg("--batch")
            .arg(&instance.database)
            .env("MYSQL_PWD", &instance.password)
            .env_remove("MYSQL_HOST")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| spawn_error(CLIENT, e))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let errors = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        // A client that stops at an error closes its stdin: its status says why.
        let fed = tokio::io::copy(input, &mut stdin).await;
        drop(stdin);
        let status = child.wait().await.map_err(|e| spawn_error(CLIENT, e))?;
        let stderr = errors.await.unwrap_or_default();
        if !status.success() {
            return Err(command_error(CLIENT, status, &stderr));
        }
        fed.map(|_| ())
            .map_err(|e| ServiceError::Other(format!("cannot read the import: {e}")))
    }

    async fn usage_bytes(&self, id: &InstanceId) -> Result<u64, ServiceError> {
        let instance = self.instance(id).await?;
        self.database_size(&instance.database).await
    }

    async fn instances(&self) -> Result<Vec<InstanceId>, ServiceError> {
        Ok(self.instances.ids().await)
    }

    async fn enforce_quotas(&self) -> Result<Vec<QuotaChange>, ServiceError> {
        self.enforce_size_limits().await
    }

    async fn shutdown(&self) {
        let server = self.server.lock().ok().and_then(|mut s| s.take());
        if let Some(server) = server {
            server.stop().await;
        }
    }
}

/// Creates the node's directory (0711: the server user passes through it) and the
/// server-owned `run` directory, after checking the server user can reach them.
fn prepare_dir(layout: &Layout, user: &ServerUser) -> Result<(), ServiceError> {
    let dir = &layout.dir;
    std::fs::create_dir_all(dir).map_err(|e| ServiceError::io("cannot create", dir, e))?;
    set_mode(dir, 0o711)?;
    check_traversable(dir, user)?;
    let socket = layout.socket();
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(ServiceError::Other(format!(
            "the MariaDB socket path {} is longer than {MAX_SOCKET_PATH} bytes; move the \
             services directory to a shorter path",
            socket.display()
        )));
    }
    for private in [layout.run(), layout.tmp()] {
        std::fs::create_dir_all(&private)
            .map_err(|e| ServiceError::io("cannot create", &private, e))?;
        user.chown(&private)?;
        set_mode(&private, 0o700)?;
    }
    Ok(())
}

/// Every directory above `dir` must let `user` through, or mariadbd cannot open its files.
fn check_traversable(dir: &Path, user: &ServerUser) -> Result<(), ServiceError> {
    if user.uid == nix::unistd::getuid().as_raw() {
        return Ok(());
    }
    for ancestor in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor)
            .map_err(|e| ServiceError::io("cannot inspect", ancestor, e))?;
        let mode = meta.mode();
        let passes = mode & 0o001 != 0
            || (meta.uid() == user.uid && mode & 0o100 != 0)
            || (meta.gid() == user.gid && mode & 0o010 != 0);
        if !passes {
            return Err(ServiceError::Other(format!(
                "the {} user cannot reach {}: {} is not traversable; make it 0711 (chmod o+x)",
                user.name,
                dir.display(),
                ancestor.display()
            )));
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ServiceError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ServiceError::io("cannot change permissions", path, e))
}

/// `config.port`, else the port saved by an earlier start, else a free one; saved.
fn choose_port(layout: &Layout, config: &NodeConfig) -> Result<u16, ServiceError> {
    let file = layout.port_file();
    let saved = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .filter(|p| *p != 0);
    let port = match (config.port, saved) {
        (0, Some(saved)) => saved,
        (0, None) => free_port(config)?,
        (port, _) => port,
    };
    if saved != Some(port) {
        std::fs::write(&file, format!("{port}\n"))
            .map_err(|e| ServiceError::io("cannot save the port", &file, e))?;
    }
    Ok(port)
}

fn free_port(config: &NodeConfig) -> Result<u16, ServiceError> {
    let address = config.address;
    crate::address::free_port(address, config.port_range, &[]).map_err(|e| {
        ServiceError::Other(format!(
            "cannot find a free port on {address} ({e}); is it this host's address? \
                 set mysql_node/address"
        ))
    })
}

/// A `mariadbd` left running by a node process that died without stopping it holds the
/// data directory's lock: stop it (only if it is this directory's server).
async fn stop_orphaned_server(layout: &Layout) {
    let Some(pid) = std::fs::read_to_string(layout.pid_file())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    let datadir = format!("--datadir={}", layout.data().display());
    if !cmdline.split('\0').any(|arg| arg == datadir) {
        return;
    }
    tracing::warn!(
        pid,
        "stopping a mariadbd left running by an earlier node process"
    );
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while kill(pid, None).is_ok() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// `mariadb-install-db` into a scratch directory, renamed into place only when it
/// worked, so an interrupted first start never leaves half a data directory.
async fn init_data_dir(
    layout: &Layout,
    user: &ServerUser,
    admin_user: &str,
) -> Result<(), ServiceError> {
    let scratch = layout.data_being_initialised();
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .map_err(|e| ServiceError::io("cannot remove", &scratch, e))?;
    }
    std::fs::create_dir(&scratch).map_err(|e| ServiceError::io("cannot create", &scratch, e))?;
    user.chown(&scratch)?;
    set_mode(&scratch, 0o700)?;
    let mut cmd = Command::new(INSTALL_DB);
    cmd.arg("--no-defaults")
        .arg(opt("--datadir=", &scratch))
        .arg(opt("--tmpdir=", &layout.tmp()))
        // The admin account is reachable only over the socket, by this OS user.
        .arg("--auth-root-authentication-method=socket")
        .arg(format!("--auth-root-socket-user={admin_user}"))
        .args(["--skip-test-db", "--skip-name-resolve"]);
    if user.uid != nix::unistd::getuid().as_raw() {
        cmd.arg(format!("--user={}", user.name));
    }
    run(cmd, INSTALL_DB, None).await?;
    let data = layout.data();
    std::fs::rename(&scratch, &data)
        .map_err(|e| ServiceError::io("cannot move into place", &data, e))
}

fn server_spec(layout: &Layout, user: &ServerUser, address: IpAddr, port: u16) -> ServerSpec {
    ServerSpec {
        name: "mariadb".into(),
        program: SERVER.into(),
        args: vec![
            // Must come first: /etc/mysql/my.cnf is the host's, not this node's.
            "--no-defaults".into(),
            opt("--datadir=", &layout.data()),
            opt("--socket=", &layout.socket()),
            opt("--pid-file=", &layout.pid_file()),
            opt("--tmpdir=", &layout.tmp()),
            format!("--port={port}").into(),
            format!("--bind-address={address}").into(),
            "--skip-name-resolve".into(),
            // Durable at commit: an acknowledged write survives kill -9.
            "--innodb-flush-log-at-trx-commit=1".into(),
            // Only InnoDB is crash-safe (and measured by the quota enforcer).
            "--enforce-storage-engine=InnoDB".into(),
            // What Debian's own configuration sets.
            "--character-set-server=utf8mb4".into(),
            "--collation-server=utf8mb4_general_ci".into(),
        ],
        env: vec![],
        user: user.clone(),
        log: layout.log(),
        stop_signal: Signal::SIGTERM,
        grace: STOP_GRACE,
    }
}

/// `--name=` followed by a path, without assuming the path is UTF-8.
fn opt(name: &str, path: &Path) -> OsString {
    let mut arg = OsString::from(name);
    arg.push(path.as_os_str());
    arg
}

/// Runs `cmd` with `stdin` (or nothing) on its input; its stdout, or its stderr as the
/// error.
async fn run(
    mut cmd: Command,
    program: &str,
    stdin: Option<&[u8]>,
) -> Result<Vec<u8>, ServiceError> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| spawn_error(program, e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // An early exit closes the pipe; the exit status below then tells why.
        let _ = pipe.write_all(input).await;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| spawn_error(program, e))?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(command_error(
            program,
            output.status,
            &String::from_utf8_lossy(&output.stderr),
        ))
    }
}

fn spawn_error(program: &str, e: std::io::Error) -> ServiceError {
    ServiceError::io(
        &format!(
            "cannot run {program}; is the mariadb-server (or mariadb-client) package installed?"
        ),
        program,
        e,
    )
}

fn command_error(program: &str, status: std::process::ExitStatus, stderr: &str) -> ServiceError {
    ServiceError::Command {
        program: program.to_string(),
        status: status.to_string(),
        stderr: stderr.trim().to_string(),
    }
}

/// Copies a dump line by line, replacing `definer` by `DEFINER=CURRENT_USER` outside
/// data lines (`INSERT INTO`), so routines, triggers and views import as their new owner.
async fn copy_rewriting_definer(
    from: impl AsyncRead + Unpin,
    to: &mut (dyn AsyncWrite + Send + Unpin),
    definer: &[u8],
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 16, from);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        if line.starts_with(b"INSERT INTO ") {
            to.write_all(&line).await?;
        } else {
            to.write_all(&replace_all(&line, definer, b"DEFINER=CURRENT_USER"))
                .await?;
        }
    }
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// The last `lines` lines of the server log, for error messages.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_user_as_definer_becomes_the_current_user() {
        let line = b"/*!50003 CREATE*/ /*!50020 DEFINER=`uab`@`%`*/ /*!50003 PROCEDURE `p`()\n";
        let out = replace_all(line, b"DEFINER=`uab`@`%`", b"DEFINER=CURRENT_USER");
        assert_eq!(
            out,
            b"/*!50003 CREATE*/ /*!50020 DEFINER=CURRENT_USER*/ /*!50003 PROCEDURE `p`()\n"
        );
        assert_eq!(
            replace_all(b"no definer", b"DEFINER=`x`@`%`", b"y"),
            b"no definer"
        );
    }

    #[test]
    fn a_saved_port_is_reused_and_an_explicit_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            dir: dir.path().to_path_buf(),
        };
        let mut config = NodeConfig {
            dir: dir.path().to_path_buf(),
            address: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            port_range: None,
            capacity: 1,
        };
        let first = choose_port(&layout, &config).unwrap();
        assert_ne!(first, 0);
        assert_eq!(choose_port(&layout, &config).unwrap(), first);
        config.port = 1;
        assert_eq!(choose_port(&layout, &config).unwrap(), 1);
    }

    #[test]
    fn the_log_tail_is_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&log, 2), "b\nc");
        assert_eq!(log_tail(&dir.path().join("absent"), 2), "");
    }
}
