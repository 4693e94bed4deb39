//! The Redis node: one `redis-server` per service instance (Debian's binary, run as the
//! `redis` system user under [`SupervisedServer`]), each with its own data dir, port,
//! random password and `maxmemory` from the plan. Writes go to an append-only file with
//! `appendfsync always`, so a write Redis acknowledged survives kill -9. Commands that
//! would let an app change its own limits or persistence (CONFIG, DEBUG, SHUTDOWN, ...)
//! are renamed to secret names or disabled; the node reaches its servers over a unix
//! socket inside its own directory.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::server::{ServerSpec, ServerUser, SupervisedServer};
use crate::state::InstanceTable;
use crate::{
    random_secret, Credentials, InstanceId, NodeConfig, Plan, ServiceError, ServiceKind,
    ServiceNode,
};

const REDIS_SERVER: &str = "/usr/bin/redis-server";
const REDIS_CLI: &str = "redis-cli";
/// How long a server may take to answer PING after a start (loading a big AOF).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a BGSAVE or an AOF rewrite may take.
const PERSIST_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one redis-cli call may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// The RDB file format's magic (`REDIS0011` ...).
const RDB_MAGIC: &[u8] = b"REDIS";
const CAPACITY_KEY: &str = "redis_node/capacity";

/// Commands an app never gets: they would change limits, persistence, replication or
/// load code. The node does not need them either (it stops servers with SIGTERM).
const DISABLED_COMMANDS: &[&str] = &[
    "DEBUG",
    "SHUTDOWN",
    "SAVE",
    "BGREWRITEAOF",
    "REPLICAOF",
    "SLAVEOF",
    "SYNC",
    "PSYNC",
    "FAILOVER",
    "MODULE",
    "ACL",
    "MIGRATE",
];

/// What the node records per instance (in `instances.json`, mode 0600).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RedisInstance {
    plan: Plan,
    port: u16,
    password: String,
    /// The secret name CONFIG has on this server. The node only sends it while the
    /// server has no TCP port (imports), so it never shows in an app's SLOWLOG.
    config_command: String,
    /// The secret name BGSAVE has (exports). A different secret from CONFIG's, so an app
    /// that saw it in SLOWLOG learns nothing more than how to take a snapshot.
    bgsave_command: String,
}

impl RedisInstance {
    fn new(plan: &Plan, port: u16) -> RedisInstance {
        RedisInstance {
            plan: plan.clone(),
            port,
            password: random_secret(24),
            config_command: format!("CONFIG_{}", random_secret(24)),
            bgsave_command: format!("BGSAVE_{}", random_secret(24)),
        }
    }

    /// The commands renamed to secret names, as (command, secret name).
    fn admin_commands(&self) -> [(&'static str, &str); 2] {
        [
            ("CONFIG", &self.config_command),
            ("BGSAVE", &self.bgsave_command),
        ]
    }
}

/// How a server is configured: serving apps, or loading an imported RDB with no TCP port
/// and no AOF (turned on once the data is in, see [`RedisNode::import`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serving,
    Importing,
}

/// A node of the `redis` service type.
pub struct RedisNode {
    config: NodeConfig,
    user: ServerUser,
    table: InstanceTable<RedisInstance>,
    servers: Mutex<HashMap<InstanceId, SupervisedServer>>,
    /// Serialises provision, deprovision, import and the snapshot step of export.
    ops: Mutex<()>,
}

impl RedisNode {
    /// Prepares `config.dir` and starts a server for every instance it records (their
    /// data, ports and passwords as before). An instance whose server does not come up
    /// (its port taken meanwhile, ...) is logged and left to the supervisor's retries, so
    /// one broken instance does not take the node down.
    pub async fn open(config: NodeConfig) -> Result<Self, ServiceError> {
        let user = ServerUser::system("redis")?;
        let node = RedisNode {
            table: InstanceTable::load(&config.dir.join("instances.json"))?,
            config,
            user,
            servers: Mutex::new(HashMap::new()),
            ops: Mutex::new(()),
        };
        node.prepare_dirs()?;
        let mut starting = Vec::new();
        for id in node.table.ids().await {
            let Some(record) = node.table.get(&id).await else {
                continue;
            };
            match node.start_recorded(&id, &record).await {
                Ok(server) => starting.push((id, record, server)),
                Err(e) => {
                    tracing::error!(instance = %id, error = %e, "cannot start redis instance")
                }
            }
        }
        // All servers load their data in parallel; then wait for each.
        for (id, record, server) in starting {
            if let Err(e) = node.wait_ready(&id, &record, &server).await {
                tracing::error!(instance = %id, error = %e, "redis instance not ready; its supervisor keeps retrying");
            }
            node.servers.lock().await.insert(id, server);
        }
        Ok(node)
    }

    /// The pid of the instance's running redis-server, if one runs now.
    pub async fn server_pid(&self, id: &InstanceId) -> Option<u32> {
        self.servers.lock().await.get(id).and_then(|s| s.pid())
    }

    // ---- directories and files ----

    fn instances_dir(&self) -> PathBuf {
        self.config.dir.join("instances")
    }

    fn instance_dir(&self, id: &InstanceId) -> PathBuf {
        self.instances_dir().join(id.as_str())
    }

    fn run_dir(&self) -> PathBuf {
        self.config.dir.join("run")
    }

    fn socket(&self, record: &RedisInstance) -> PathBuf {
        self.run_dir().join(format!("redis-{}.sock", record.port))
    }

    fn aof_dir(&self, id: &InstanceId) -> PathBuf {
        self.instance_dir(id).join("appendonlydir")
    }

    fn aof_backup_dir(&self, id: &InstanceId) -> PathBuf {
        self.instance_dir(id).join("appendonlydir.before-import")
    }

    fn dump_file(&self, id: &InstanceId) -> PathBuf {
        self.instance_dir(id).join("dump.rdb")
    }

    /// `dir` (reachable by the server user), `dir/instances` and `dir/run` (the sockets,
    /// private to the server user).
    fn prepare_dirs(&self) -> Result<(), ServiceError> {
        let dir = &self.config.dir;
        create_dir(dir)?;
        let mode = std::fs::metadata(dir)
            .map_err(|e| ServiceError::io("cannot read services dir", dir, e))?
            .permissions()
            .mode();
        // The server user must be able to pass through (not list) the node's directory.
        set_mode(dir, (mode & 0o7777) | 0o011)?;
        create_dir(&self.instances_dir())?;
        set_mode(&self.instances_dir(), 0o711)?;
        create_dir(&self.run_dir())?;
        self.user.chown(&self.run_dir())?;
        set_mode(&self.run_dir(), 0o700)?;
        let longest = self.run_dir().join("redis-65535.sock");
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ServiceError::Other(format!(
                "the redis services dir {} is too long for unix sockets (at most {} bytes in all); relocate it to a shorter path",
                dir.display(),
                MAX_SOCKET_PATH
            )));
        }
        Ok(())
    }

    fn render_config(&self, id: &InstanceId, record: &RedisInstance, mode: Mode) -> String {
        let (port, appendonly) = match mode {
            Mode::Serving => (record.port, "yes"),
            Mode::Importing => (0, "no"),
        };
        let mut lines = vec![
            "# Written by the Strato redis node; it is rewritten on every start.".to_string(),
            format!("bind {}", self.config.address),
            format!("port {port}"),
            "protected-mode yes".to_string(),
            format!("unixsocket {}", quote(&self.socket(record))),
            "unixsocketperm 700".to_string(),
            "daemonize no".to_string(),
            "supervised no".to_string(),
            "logfile \"\"".to_string(),
            format!("dir {}", quote(&self.instance_dir(id))),
            "dbfilename dump.rdb".to_string(),
            "save \"\"".to_string(),
            format!("appendonly {appendonly}"),
            "appendfsync always".to_string(),
            "appenddirname appendonlydir".to_string(),
            format!("requirepass {}", record.password),
            format!("maxmemory {}mb", record.plan.size_mb),
            "maxmemory-policy noeviction".to_string(),
            "enable-protected-configs no".to_string(),
            "enable-debug-command no".to_string(),
            "enable-module-command no".to_string(),
        ];
        for command in DISABLED_COMMANDS {
            lines.push(format!("rename-command {command} \"\""));
        }
        for (command, secret) in record.admin_commands() {
            lines.push(format!("rename-command {command} {secret}"));
        }
        lines.push(String::new());
        lines.join("\n")
    }

    /// Writes the instance's config (it holds the password: 0600, owned by the server
    /// user), atomically.
    fn write_config(
        &self,
        id: &InstanceId,
        record: &RedisInstance,
        mode: Mode,
    ) -> Result<(), ServiceError> {
        let path = self.instance_dir(id).join("redis.conf");
        let tmp = path.with_extension("conf.tmp");
        let io = |e| ServiceError::io("cannot write redis config", &path, e);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(self.render_config(id, record, mode).as_bytes())
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        self.user.chown(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }

    // ---- servers ----

    fn spec(&self, id: &InstanceId) -> ServerSpec {
        let dir = self.instance_dir(id);
        ServerSpec {
            name: format!("redis {id}"),
            program: REDIS_SERVER.into(),
            // Only the config path: the password stays out of argv.
            args: vec![dir.join("redis.conf").into()],
            env: vec![],
            user: self.user.clone(),
            log: dir.join("redis.log"),
            stop_signal: Signal::SIGTERM,
            grace: STOP_GRACE,
        }
    }

    /// Starts the server of a recorded instance as it was left (finishing or undoing an
    /// interrupted import first), without waiting for it.
    async fn start_recorded(
        &self,
        id: &InstanceId,
        record: &RedisInstance,
    ) -> Result<SupervisedServer, ServiceError> {
        self.undo_uncommitted_import(id)?;
        remove_file(&self.dump_file(id))?;
        self.write_config(id, record, Mode::Serving)?;
        SupervisedServer::start(self.spec(id)).await
    }

    /// Starts a server and waits until it answers; a server that does not come up is
    /// stopped again.
    async fn start_ready(
        &self,
        id: &InstanceId,
        record: &RedisInstance,
    ) -> Result<SupervisedServer, ServiceError> {
        let server = SupervisedServer::start(self.spec(id)).await?;
        match self.wait_ready(id, record, &server).await {
            Ok(()) => Ok(server),
            Err(e) => {
                server.stop().await;
                Err(e)
            }
        }
    }

    /// Waits until the server answers PING; fails early when it exited (the supervisor
    /// counted a restart), quoting the end of its log.
    async fn wait_ready(
        &self,
        id: &InstanceId,
        record: &RedisInstance,
        server: &SupervisedServer,
    ) -> Result<(), ServiceError> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let starts = server.starts();
        loop {
            if self.ping(record).await {
                return Ok(());
            }
            let reason = if server.starts() > starts {
                "it exited"
            } else if tokio::time::Instant::now() >= deadline {
                "it did not answer in time"
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            return Err(ServiceError::Unavailable {
                server: format!("redis {id}"),
                reason: format!(
                    "{reason}; its log {} ends with: {}",
                    self.spec(id).log.display(),
                    log_tail(&self.spec(id).log)
                ),
            });
        }
    }

    async fn ping(&self, record: &RedisInstance) -> bool {
        matches!(self.cli(record, &["PING"]).await, Ok(out) if out.trim() == "PONG")
    }

    async fn stop_server(&self, id: &InstanceId) {
        let server = self.servers.lock().await.remove(id);
        if let Some(server) = server {
            server.stop().await;
        }
    }

    async fn require_running(&self, id: &InstanceId) -> Result<(), ServiceError> {
        if self.servers.lock().await.contains_key(id) {
            Ok(())
        } else {
            Err(ServiceError::Unavailable {
                server: format!("redis {id}"),
                reason: "the node was shut down; restart it".to_string(),
            })
        }
    }

    // ---- talking to a server ----

    /// Runs redis-cli against the instance's unix socket; the password goes through
    /// REDISCLI_AUTH. Returns stdout (redis-cli exits 0 on error replies: callers check
    /// for the reply they expect).
    async fn cli(&self, record: &RedisInstance, args: &[&str]) -> Result<String, ServiceError> {
        let mut cmd = tokio::process::Command::new(REDIS_CLI);
        cmd.arg("-s")
            .arg(self.socket(record))
            .arg("--no-auth-warning")
            .args(args)
            .env("REDISCLI_AUTH", &record.password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = tokio::time::timeout(CLI_TIMEOUT, cmd.output())
            .await
            .map_err(|_| ServiceError::Command {
                program: REDIS_CLI.to_string(),
                status: "timed out".to_string(),
                stderr: format!("no answer in {} s", CLI_TIMEOUT.as_secs()),
            })?
            .map_err(|e| {
                ServiceError::io(
                    "cannot run redis-cli; install the redis-tools package",
                    REDIS_CLI,
                    e,
                )
            })?;
        if !output.status.success() {
            return Err(ServiceError::Command {
                program: REDIS_CLI.to_string(),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs an admin command and checks its reply starts with `expect`.
    async fn admin(
        &self,
        record: &RedisInstance,
        args: &[&str],
        expect: &str,
    ) -> Result<(), ServiceError> {
        let out = self.cli(record, args).await?;
        if out.trim_start().starts_with(expect) {
            Ok(())
        } else {
            Err(ServiceError::Command {
                program: format!("redis-cli {}", args.get(1).copied().unwrap_or_default()),
                status: "error reply".to_string(),
                stderr: out.trim().to_string(),
            })
        }
    }

    /// One INFO section as a map.
    async fn info(
        &self,
        record: &RedisInstance,
        section: &str,
    ) -> Result<BTreeMap<String, String>, ServiceError> {
        let out = self.cli(record, &["INFO", section]).await?;
        let map: BTreeMap<String, String> = out
            .lines()
            .filter_map(|line| line.trim().split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if map.is_empty() {
            return Err(ServiceError::Command {
                program: "redis-cli INFO".to_string(),
                status: "error reply".to_string(),
                stderr: out.trim().to_string(),
            });
        }
        Ok(map)
    }

    /// Polls INFO `section` until `done` holds.
    async fn wait_info<F>(
        &self,
        id: &InstanceId,
        record: &RedisInstance,
        section: &str,
        what: &str,
        done: F,
    ) -> Result<BTreeMap<String, String>, ServiceError>
    where
        F: Fn(&BTreeMap<String, String>) -> bool,
    {
        let deadline = tokio::time::Instant::now() + PERSIST_TIMEOUT;
        loop {
            let info = self.info(record, section).await?;
            if done(&info) {
                return Ok(info);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ServiceError::Unavailable {
                    server: format!("redis {id}"),
                    reason: format!("{what} did not finish in {} s", PERSIST_TIMEOUT.as_secs()),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // ---- provisioning ----

    fn credentials(&self, id: &InstanceId, record: &RedisInstance) -> Credentials {
        // Redis authenticates with the password alone (AUTH <password>), so no user:
        // the uri becomes redis://:PASSWORD@HOST:PORT/, as Cloud Foundry brokers give it.
        Credentials::network(
            ServiceKind::Redis,
            &self.config.address.to_string(),
            record.port,
            &id.db_name("r"),
            "",
            &record.password,
        )
    }

    /// A port free on the node's address and not recorded for another instance: any
    /// free one (from `config.port_range`) when `config.port` is 0, else one from `config.port` up.
    async fn pick_port(&self) -> Result<u16, ServiceError> {
        let mut used = Vec::new();
        for id in self.table.ids().await {
            if let Some(record) = self.table.get(&id).await {
                used.push(record.port);
            }
        }
        let found = if self.config.port == 0 {
            crate::address::free_port(self.config.address, self.config.port_range, &used).ok()
        } else {
            crate::address::free_port(
                self.config.address,
                Some((self.config.port, u16::MAX)),
                &used,
            )
            .ok()
        };
        found.ok_or_else(|| {
            ServiceError::Other(format!(
                "no free port on {} for a new redis instance; free some or change redis_node/port",
                self.config.address
            ))
        })
    }

    /// Makes the instance's dir and config and starts its server.
    async fn create(
        &self,
        id: &InstanceId,
        record: &RedisInstance,
    ) -> Result<SupervisedServer, ServiceError> {
        let dir = self.instance_dir(id);
        // Anything left here is not recorded: never hand it to a new tenant.
        remove_dir(&dir)?;
        create_dir(&dir)?;
        self.user.chown(&dir)?;
        set_mode(&dir, 0o700)?;
        self.write_config(id, record, Mode::Serving)?;
        self.start_ready(id, record).await
    }

    async fn remove_instance_files(&self, id: &InstanceId, record: &RedisInstance) {
        for result in [
            remove_dir(&self.instance_dir(id)),
            remove_file(&self.socket(record)),
        ] {
            if let Err(e) = result {
                tracing::warn!(instance = %id, error = %e, "cannot remove redis instance files");
            }
        }
    }

    // ---- import ----

    /// Copies `input` to a file next to the instance's data, checking it is an RDB and
    /// not larger than `limit` bytes.
    async fn receive_rdb(
        &self,
        path: &Path,
        input: &mut (dyn AsyncRead + Send + Unpin),
        limit: u64,
    ) -> Result<(), ServiceError> {
        let io = |e| ServiceError::io("cannot store the imported RDB", path, e);
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .await
            .map_err(io)?;
        let copied = tokio::io::copy(&mut input.take(limit + 1), &mut file)
            .await
            .map_err(io)?;
        file.sync_all().await.map_err(io)?;
        drop(file);
        if copied > limit {
            return Err(ServiceError::Other(format!(
                "the dump is larger than {} MiB, too big for this instance's plan",
                limit >> 20
            )));
        }
        let mut magic = [0u8; 5];
        let mut head = tokio::fs::File::open(path).await.map_err(io)?;
        let is_rdb = head.read_exact(&mut magic).await.is_ok() && magic == RDB_MAGIC;
        if !is_rdb {
            return Err(ServiceError::Other(
                "the dump is not a Redis RDB file (write it with `export` of a redis instance)"
                    .to_string(),
            ));
        }
        self.user.chown(path)
    }

    /// The import after the RDB is in place as `dump.rdb` and the old AOF moved aside:
    /// load it with no TCP port and no AOF, turn the AOF on (Redis rewrites it from the
    /// loaded data), then restart serving.
    async fn load_imported(
        &self,
        id: &InstanceId,
        record: &RedisInstance,
    ) -> Result<SupervisedServer, ServiceError> {
        self.write_config(id, record, Mode::Importing)?;
        let loader = self.start_ready(id, record).await?;
        let made_aof = self.make_aof_current(id, record).await;
        loader.stop().await;
        made_aof?;
        // Commit point: from here on the new AOF is the instance's data.
        remove_dir(&self.aof_backup_dir(id))?;
        remove_file(&self.dump_file(id))?;
        self.write_config(id, record, Mode::Serving)?;
        self.start_ready(id, record).await
    }

    async fn make_aof_current(
        &self,
        id: &InstanceId,
        record: &RedisInstance,
    ) -> Result<(), ServiceError> {
        let config = &record.config_command;
        self.admin(record, &[config, "SET", "appendonly", "yes"], "OK")
            .await?;
        let info = self
            .wait_info(id, record, "persistence", "the AOF rewrite", |info| {
                field(info, "aof_enabled") == "1"
                    && field(info, "aof_rewrite_in_progress") == "0"
                    && field(info, "aof_rewrite_scheduled") == "0"
                    && field(info, "aof_rewrites") != "0"
            })
            .await?;
        let manifest = self.aof_dir(id).join("appendonly.aof.manifest");
        if field(&info, "aof_last_bgrewrite_status") != "ok" || !manifest.exists() {
            return Err(ServiceError::Unavailable {
                server: format!("redis {id}"),
                reason: format!(
                    "writing the append-only file of the imported data failed; see {}",
                    self.spec(id).log.display()
                ),
            });
        }
        Ok(())
    }

    /// Puts the instance back as it was before a failed import and starts it.
    async fn undo_import(
        &self,
        id: &InstanceId,
        record: &RedisInstance,
    ) -> Result<(), ServiceError> {
        self.undo_uncommitted_import(id)?;
        remove_file(&self.dump_file(id))?;
        self.write_config(id, record, Mode::Serving)?;
        let server = self.start_ready(id, record).await?;
        self.servers.lock().await.insert(id.clone(), server);
        Ok(())
    }

    /// If an import did not reach its commit point, its AOF backup is still there: put
    /// it back.
    fn undo_uncommitted_import(&self, id: &InstanceId) -> Result<(), ServiceError> {
        let backup = self.aof_backup_dir(id);
        if backup.exists() {
            let aof = self.aof_dir(id);
            remove_dir(&aof)?;
            std::fs::rename(&backup, &aof)
                .map_err(|e| ServiceError::io("cannot restore the AOF after an import", &aof, e))?;
        }
        Ok(())
    }

    async fn record(&self, id: &InstanceId) -> Result<RedisInstance, ServiceError> {
        self.table
            .get(id)
            .await
            .ok_or_else(|| ServiceError::NotFound(id.to_string()))
    }
}

#[async_trait]
impl ServiceNode for RedisNode {
    fn kind(&self) -> ServiceKind {
        ServiceKind::Redis
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
        if plan.size_mb == 0 {
            return Err(ServiceError::Other(format!(
                "plan '{}' gives 0 MB; a redis instance needs at least 1 MB (maxmemory 0 would mean no limit)",
                plan.name
            )));
        }
        if self.table.len().await as u64 >= self.config.capacity {
            return Err(ServiceError::Capacity {
                limit: self.config.capacity,
                key: CAPACITY_KEY.to_string(),
            });
        }
        let record = RedisInstance::new(plan, self.pick_port().await?);
        let server = match self.create(id, &record).await {
            Ok(server) => server,
            Err(e) => {
                self.remove_instance_files(id, &record).await;
                return Err(e);
            }
        };
        if let Err(e) = self.table.put(id, record.clone()).await {
            server.stop().await;
            self.remove_instance_files(id, &record).await;
            return Err(e);
        }
        self.servers.lock().await.insert(id.clone(), server);
        Ok(self.credentials(id, &record))
    }

    async fn deprovision(&self, id: &InstanceId) -> Result<(), ServiceError> {
        let _ops = self.ops.lock().await;
        let Some(record) = self.table.get(id).await else {
            return Ok(());
        };
        self.stop_server(id).await;
        remove_dir(&self.instance_dir(id))?;
        remove_file(&self.socket(&record))?;
        self.table.remove(id).await?;
        Ok(())
    }

    async fn bind(&self, id: &InstanceId, _binding: &str) -> Result<Credentials, ServiceError> {
        // One password per instance (as Cloud Foundry's redis brokers do): every binding
        // gets the instance's credentials.
        let record = self.record(id).await?;
        Ok(self.credentials(id, &record))
    }

    async fn export(
        &self,
        id: &InstanceId,
        out: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<(), ServiceError> {
        let dump = {
            let _ops = self.ops.lock().await;
            let record = self.record(id).await?;
            self.require_running(id).await?;
            let before = self.info(&record, "persistence").await?;
            let saves_before = field(&before, "rdb_saves").to_string();
            // SCHEDULE: wait for an AOF rewrite in progress instead of failing.
            let bgsave = &record.bgsave_command;
            self.admin(&record, &[bgsave, "SCHEDULE"], "Background saving")
                .await?;
            let info = self
                .wait_info(id, &record, "persistence", "the RDB snapshot", |info| {
                    field(info, "rdb_bgsave_in_progress") == "0"
                        && field(info, "rdb_saves") != saves_before
                })
                .await?;
            if field(&info, "rdb_last_bgsave_status") != "ok" {
                return Err(ServiceError::Unavailable {
                    server: format!("redis {id}"),
                    reason: format!(
                        "the RDB snapshot failed; see {}",
                        self.spec(id).log.display()
                    ),
                });
            }
            let path = self.dump_file(id);
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| ServiceError::io("cannot open the RDB snapshot", &path, e))?;
            // The open file stays readable; the snapshot takes no space once streamed.
            remove_file(&path)?;
            file
        };
        let mut dump = dump;
        tokio::io::copy(&mut dump, out)
            .await
            .map_err(|e| ServiceError::Other(format!("cannot write the export: {e}")))?;
        out.flush()
            .await
            .map_err(|e| ServiceError::Other(format!("cannot write the export: {e}")))?;
        Ok(())
    }

    async fn import(
        &self,
        id: &InstanceId,
        input: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<(), ServiceError> {
        let _ops = self.ops.lock().await;
        let record = self.record(id).await?;
        self.require_running(id).await?;
        let incoming = self.instance_dir(id).join("import.rdb.tmp");
        // An RDB is compact; allow a generous multiple of the plan and no more.
        let limit = (record.plan.size_mb.saturating_mul(4) + 16) << 20;
        if let Err(e) = self.receive_rdb(&incoming, input, limit).await {
            let _ = remove_file(&incoming);
            return Err(e);
        }
        self.stop_server(id).await;
        let aof = self.aof_dir(id);
        let placed = (|| {
            remove_dir(&self.aof_backup_dir(id))?;
            if aof.exists() {
                std::fs::rename(&aof, self.aof_backup_dir(id))
                    .map_err(|e| ServiceError::io("cannot set the AOF aside", &aof, e))?;
            }
            std::fs::rename(&incoming, self.dump_file(id))
                .map_err(|e| ServiceError::io("cannot place the imported RDB", &incoming, e))
        })();
        let loaded = match placed {
            Ok(()) => self.load_imported(id, &record).await,
            Err(e) => Err(e),
        };
        match loaded {
            Ok(server) => {
                self.servers.lock().await.insert(id.clone(), server);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "redis import failed; restoring the previous data");
                let _ = remove_file(&incoming);
                if let Err(undo) = self.undo_import(id, &record).await {
                    tracing::error!(instance = %id, error = %undo, "cannot restart redis instance after a failed import");
                }
                Err(e)
            }
        }
    }

    async fn usage_bytes(&self, id: &InstanceId) -> Result<u64, ServiceError> {
        let record = self.record(id).await?;
        self.require_running(id).await?;
        let info = self.info(&record, "memory").await?;
        field(&info, "used_memory")
            .parse()
            .map_err(|_| ServiceError::Other(format!("redis {id} reported no used_memory")))
    }

    async fn instances(&self) -> Result<Vec<InstanceId>, ServiceError> {
        Ok(self.table.ids().await)
    }

    async fn shutdown(&self) {
        let servers: Vec<SupervisedServer> =
            self.servers.lock().await.drain().map(|(_, s)| s).collect();
        for server in servers {
            server.stop().await;
        }
    }
}

// ---- helpers ----

fn field<'a>(info: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    info.get(key).map(String::as_str).unwrap_or_default()
}

/// A path as a double-quoted redis.conf string.
fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The last few hundred bytes of a server log, on one line.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(600);
    String::from_utf8_lossy(&text[start..])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn create_dir(path: &Path) -> Result<(), ServiceError> {
    std::fs::create_dir_all(path).map_err(|e| ServiceError::io("cannot create directory", path, e))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ServiceError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ServiceError::io("cannot set permissions", path, e))
}

/// Removes a directory tree; absent is fine.
fn remove_dir(path: &Path) -> Result<(), ServiceError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ServiceError::io("cannot remove directory", path, e))
        }
        _ => Ok(()),
    }
}

/// Removes a file; absent is fine.
fn remove_file(path: &Path) -> Result<(), ServiceError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ServiceError::io("cannot remove file", path, e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RedisInstance {
        RedisInstance {
            plan: Plan {
                name: "free".into(),
                size_mb: 64,
            },
            port: 7001,
            password: "pw0123".into(),
            config_command: "CONFIG_k9".into(),
            bgsave_command: "BGSAVE_k8".into(),
        }
    }

    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(quote(Path::new("/a \"b\"\\c")), "\"/a \\\"b\\\"\\\\c\"");
    }

    #[test]
    fn admin_commands_get_different_secret_names() {
        let one = RedisInstance::new(&Plan::default(), 7000);
        assert_ne!(one.config_command[7..], one.bgsave_command[7..]);
        assert!(one.config_command.len() > 24);
        let two = RedisInstance::new(&Plan::default(), 7001);
        assert_ne!(one.config_command, two.config_command);
    }

    #[test]
    fn the_log_tail_is_one_short_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("redis.log");
        std::fs::write(&log, format!("{}\nBind failed\n", "x".repeat(2000))).unwrap();
        let tail = log_tail(&log);
        assert!(tail.ends_with("Bind failed"), "{tail}");
        assert!(tail.len() <= 600);
    }

    #[test]
    fn info_fields_default_to_empty() {
        let mut info = BTreeMap::new();
        info.insert("rdb_saves".to_string(), "3".to_string());
        assert_eq!(field(&info, "rdb_saves"), "3");
        assert_eq!(field(&info, "missing"), "");
    }

    #[test]
    fn configs_hide_admin_commands_and_importing_has_no_port_and_no_aof() {
        let dir = tempfile::tempdir().unwrap();
        let node = RedisNode {
            config: NodeConfig {
                dir: dir.path().to_path_buf(),
                address: "10.0.0.5".parse().unwrap(),
                port: 0,
                port_range: None,
                capacity: 1,
            },
            user: ServerUser::current(),
            table: InstanceTable::load(&dir.path().join("instances.json")).unwrap(),
            servers: Mutex::new(HashMap::new()),
            ops: Mutex::new(()),
        };
        let id = InstanceId::new("abc-1").unwrap();
        let serving = node.render_config(&id, &record(), Mode::Serving);
        for line in [
            "bind 10.0.0.5",
            "port 7001",
            "appendonly yes",
            "appendfsync always",
            "maxmemory 64mb",
            "maxmemory-policy noeviction",
            "rename-command CONFIG CONFIG_k9",
            "rename-command BGSAVE BGSAVE_k8",
            "rename-command DEBUG \"\"",
            "rename-command SHUTDOWN \"\"",
        ] {
            assert!(serving.lines().any(|l| l == line), "{line} missing");
        }
        let importing = node.render_config(&id, &record(), Mode::Importing);
        assert!(importing.lines().any(|l| l == "port 0"));
        assert!(importing.lines().any(|l| l == "appendonly no"));
    }
}
