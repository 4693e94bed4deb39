//! The cluster's NATS server, run by the core node's `stratod` (`kato node setup core`).
//!
//! Every node connects with credentials of its own, issued when it joins with a token and
//! revoked by `kato node remove` (the server reloads its users and drops the removed
//! node's connection). A restricted `join` user may only ask to join and read the answer,
//! so an attaching node needs nothing but the core's address and a token. The users, the
//! generated config and the JetStream store live under `STRATO_HOME/nats` (0700). The
//! server speaks TLS only, with a certificate from this node's CA for the core's address;
//! a joining node pins that CA by the fingerprint its join token carries.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The password of the restricted `join` user: not a secret, it grants only the join
/// request (the token is the secret).
pub const JOIN_PASSWORD: &str = "join";
/// Where Debian (and other installs) put `nats-server`.
const NATS_SERVER_PATHS: [&str; 3] = [
    "/usr/sbin/nats-server",
    "/usr/bin/nats-server",
    "/usr/local/bin/nats-server",
];

fn nats_server() -> anyhow::Result<&'static str> {
    NATS_SERVER_PATHS
        .iter()
        .copied()
        .find(|p| Path::new(p).is_file())
        .context("nats-server is not installed: `apt-get install nats-server` on the core node")
}

/// What `kato node setup core` decided, kept in `core.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoreSettings {
    pub address: IpAddr,
    pub port: u16,
    /// The controller database the core runs itself (`kato node setup core` without
    /// `STRATO_DATABASE_URL`): a PostgreSQL under `STRATO_HOME/controller-db`.
    #[serde(default)]
    pub database_url: Option<String>,
}

/// The cluster's NATS users: `core` (this node) and one per joined node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Users {
    pub passwords: BTreeMap<String, String>,
}

/// The user name of a node.
pub fn node_user(node_id: &str) -> String {
    format!("node-{node_id}")
}

/// A running NATS server, killed with the node.
pub struct BusServer {
    dir: PathBuf,
    settings: CoreSettings,
    child: std::process::Child,
    /// When the server's certificate (valid a year) was issued.
    certificate_issued: Instant,
}

/// A server certificate older than this is replaced (they are valid for a year).
pub const CERTIFICATE_RENEWAL: Duration = Duration::from_secs(180 * 24 * 3600);

fn random_password() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

impl BusServer {
    /// The settings of a core node, if `kato node setup core` made it one.
    pub fn settings(dir: &Path) -> anyhow::Result<Option<CoreSettings>> {
        match std::fs::read(dir.join("core.json")) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is damaged", dir.join("core.json").display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("cannot read the core settings"),
        }
    }

    /// Makes this node the core: records where the cluster's NATS server listens.
    pub fn set_up(dir: &Path, settings: &CoreSettings) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        write_private(
            &dir.join("core.json"),
            &serde_json::to_vec_pretty(settings)?,
        )
    }

    fn users_file(dir: &Path) -> PathBuf {
        dir.join("users.json")
    }

    /// The users, with a `core` user made on first use.
    pub fn users(dir: &Path) -> anyhow::Result<Users> {
        let mut users: Users = match std::fs::read(Self::users_file(dir)) {
            Ok(bytes) => serde_json::from_slice(&bytes).context("users.json is damaged")?,
            Err(_) => Users::default(),
        };
        if !users.passwords.contains_key("core") {
            users
                .passwords
                .insert("core".to_string(), random_password());
            write_private(&Self::users_file(dir), &serde_json::to_vec_pretty(&users)?)?;
        }
        Ok(users)
    }

    fn save_users(&self, users: &Users) -> anyhow::Result<()> {
        write_private(
            &Self::users_file(&self.dir),
            &serde_json::to_vec_pretty(users)?,
        )?;
        write_config(&self.dir, &self.settings, users)
    }

    /// Starts the server (TLS only, with a certificate for the core's address from
    /// `authority`) and waits until it accepts connections.
    pub fn start(
        dir: &Path,
        settings: CoreSettings,
        authority: &strato_tls::Authority,
    ) -> anyhow::Result<BusServer> {
        let users = Self::users(dir)?;
        write_certificate(dir, &settings, authority)?;
        write_private(&dir.join("ca.pem"), authority.ca_pem().as_bytes())?;
        write_config(dir, &settings, &users)?;
        let log = std::fs::File::create(dir.join("nats-server.log"))?;
        let mut server = BusServer {
            dir: dir.to_path_buf(),
            settings,
            child: spawn(dir, log)?,
            certificate_issued: Instant::now(),
        };
        server.wait_ready(Duration::from_secs(15))?;
        Ok(server)
    }

    fn wait_ready(&mut self, wait: Duration) -> anyhow::Result<()> {
        let addr = SocketAddr::new(self.settings.address, self.settings.port);
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "nats-server exited ({status}); its log: {}",
                    std::fs::read_to_string(self.dir.join("nats-server.log")).unwrap_or_default()
                );
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nats-server did not listen on {addr} within {wait:?}")
    }

    /// Replaces the server's certificate when it is older than `renew_after` and makes
    /// the server load it (clients keep their connections); true when it did.
    pub fn renew_certificate(
        &mut self,
        authority: &strato_tls::Authority,
        renew_after: Duration,
    ) -> anyhow::Result<bool> {
        if self.certificate_issued.elapsed() < renew_after {
            return Ok(false);
        }
        write_certificate(&self.dir, &self.settings, authority)?;
        self.reload()?;
        self.certificate_issued = Instant::now();
        Ok(true)
    }

    /// True while nats-server runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// nats-server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The cluster CA's certificate, which every client verifies the server with.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `ADDRESS:PORT`, what `kato node attach` is given.
    pub fn endpoint(&self) -> String {
        SocketAddr::new(self.settings.address, self.settings.port).to_string()
    }

    /// The URL this node (the core) connects with.
    pub fn core_url(&self) -> anyhow::Result<String> {
        let users = Self::users(&self.dir)?;
        Ok(self.url_for("core", &users.passwords["core"]))
    }

    fn url_for(&self, user: &str, password: &str) -> String {
        format!(
            "nats://{user}:{password}@{}",
            SocketAddr::new(self.settings.address, self.settings.port)
        )
    }

    /// Gives node `node_id` credentials of its own and returns its URL. Refused when the
    /// node already has some (an id in use).
    pub fn add_node(&mut self, node_id: &str) -> anyhow::Result<String> {
        let mut users = Self::users(&self.dir)?;
        let user = node_user(node_id);
        if users.passwords.contains_key(&user) {
            bail!("node id {node_id} has already joined; remove it first (`kato node remove {node_id}`) or attach with a fresh STRATO_HOME");
        }
        let password = random_password();
        users.passwords.insert(user.clone(), password.clone());
        self.save_users(&users)?;
        self.reload()?;
        Ok(self.url_for(&user, &password))
    }

    /// Revokes node `node_id`'s credentials; `false` when it had none. The server drops
    /// its connection on reload.
    pub fn remove_node(&mut self, node_id: &str) -> anyhow::Result<bool> {
        let mut users = Self::users(&self.dir)?;
        if users.passwords.remove(&node_user(node_id)).is_none() {
            return Ok(false);
        }
        self.save_users(&users)?;
        self.reload()?;
        Ok(true)
    }

    /// Makes the running server read its config again (SIGHUP).
    fn reload(&mut self) -> anyhow::Result<()> {
        // A reaped child's pid may be another process's by now: never signal it.
        if !self.running() {
            bail!("nats-server is not running (see STRATO_HOME/nats/nats-server.log); restart this node with `kato restart`");
        }
        // SAFETY: plain syscall on our own, unreaped child.
        if unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) } != 0 {
            bail!(
                "cannot signal nats-server: {}",
                std::io::Error::last_os_error()
            );
        }
        // The server applies a reload at once; give it a moment before the caller goes on.
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }
}

/// A new certificate for the server's address, from `authority`.
fn write_certificate(
    dir: &Path,
    settings: &CoreSettings,
    authority: &strato_tls::Authority,
) -> anyhow::Result<()> {
    let (chain, key) = authority
        .issue_pem(&settings.address.to_string())
        .context("issuing the NATS server's certificate")?;
    write_private(&dir.join("server.key"), key.as_bytes())?;
    write_private(&dir.join("server.pem"), chain.as_bytes())
}

/// The cluster's NATS server as the node shares it.
pub type SharedBusServer = std::sync::Arc<std::sync::Mutex<BusServer>>;

/// Gives node `node_id` credentials (see [`BusServer::add_node`]) off the async
/// workers: the files, the reload and its pause block.
pub async fn add_node(server: &SharedBusServer, node_id: &str) -> anyhow::Result<String> {
    let (server, id) = (server.clone(), node_id.to_string());
    tokio::task::spawn_blocking(move || lock(&server).add_node(&id)).await?
}

/// Revokes node `node_id`'s credentials (see [`BusServer::remove_node`]) off the async
/// workers.
pub async fn remove_node(server: &SharedBusServer, node_id: &str) -> anyhow::Result<bool> {
    let (server, id) = (server.clone(), node_id.to_string());
    tokio::task::spawn_blocking(move || lock(&server).remove_node(&id)).await?
}

/// Renews the server's certificate when due (see [`BusServer::renew_certificate`]) off
/// the async workers.
pub async fn renew_certificate(
    server: &SharedBusServer,
    authority: strato_tls::Authority,
) -> anyhow::Result<bool> {
    let server = server.clone();
    tokio::task::spawn_blocking(move || {
        lock(&server).renew_certificate(&authority, CERTIFICATE_RENEWAL)
    })
    .await?
}

fn lock(server: &SharedBusServer) -> std::sync::MutexGuard<'_, BusServer> {
    server.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes `nats.conf`: where to listen, the JetStream store, every user; the `join`
/// user may only publish join requests and read the answers.
fn write_config(dir: &Path, settings: &CoreSettings, users: &Users) -> anyhow::Result<()> {
    let mut entries: Vec<String> = users
        .passwords
        .iter()
        .map(|(user, pw)| format!("    {{ user: \"{user}\", password: \"{pw}\" }}"))
        .collect();
    entries.push(format!(
        "    {{ user: \"join\", password: \"{JOIN_PASSWORD}\", permissions: {{ publish: [\"{}\"], subscribe: [\"{}.>\"] }} }}",
        strato_core::subjects::CLUSTER_JOIN,
        strato_core::subjects::JOIN_INBOX_PREFIX
    ));
    let config = format!(
        "listen: \"{}\"\njetstream {{ store_dir: \"{}\" }}\ntls {{ cert_file: \"{}\", key_file: \"{}\", timeout: 5 }}\nauthorization {{\n  users: [\n{}\n  ]\n}}\n",
        SocketAddr::new(settings.address, settings.port),
        dir.join("jetstream").display(),
        dir.join("server.pem").display(),
        dir.join("server.key").display(),
        entries.join(",\n")
    );
    write_private(&dir.join("nats.conf"), config.as_bytes())
}

fn spawn(dir: &Path, log: std::fs::File) -> anyhow::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let err = log.try_clone()?;
    let mut cmd = std::process::Command::new(nats_server()?);
    cmd.arg("-c")
        .arg(dir.join("nats.conf"))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err);
    // SAFETY: prctl only; the server dies with stratod instead of outliving it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().context("cannot start nats-server")
}

impl Drop for BusServer {
    fn drop(&mut self) {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server takes a new certificate without a restart, and a client verifying it
    /// with the CA still connects.
    #[tokio::test]
    async fn the_certificate_is_renewed_in_place() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("nats");
        let authority =
            strato_tls::Authority::load_or_create(&home.path().join("ca"), "Strato CA test")
                .unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let settings = CoreSettings {
            address: "127.0.0.1".parse().unwrap(),
            port,
            database_url: None,
        };
        BusServer::set_up(&dir, &settings).unwrap();
        let mut server = BusServer::start(&dir, settings, &authority).unwrap();
        let pid = server.pid();
        let before = std::fs::read(dir.join("server.pem")).unwrap();
        assert!(!server
            .renew_certificate(&authority, CERTIFICATE_RENEWAL)
            .unwrap());
        assert!(server
            .renew_certificate(&authority, Duration::ZERO)
            .unwrap());
        let after = std::fs::read(dir.join("server.pem")).unwrap();
        assert_ne!(before, after, "a new certificate was written");
        assert_eq!(server.pid(), pid, "the server was not restarted");
        let url = server.core_url().unwrap();
        let bus = strato_bus::NatsBus::connect_tls(&url, &server.ca_file())
            .await
            .expect("a client verifying the CA connects after the renewal");
        strato_bus::Bus::flush(&bus).await.unwrap();
    }
}
