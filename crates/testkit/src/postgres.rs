//! A throwaway PostgreSQL cluster for tests, from the Debian binaries, on a free port.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to
//! the `postgres` system user (created by `apt install postgresql`) and its programs run
//! under that user; otherwise they run as the current user. The cluster lives in a fresh
//! temp dir, listens on 127.0.0.1 (password auth, user and database `strato`) and on a unix
//! socket inside the temp dir (trust), with fsync off for speed.

use std::ffi::CString;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::process::ServerProcess;
use crate::TempDir;

const INSTALL_ROOT: &str = "/usr/lib/postgresql";
const USER: &str = "strato";
const DATABASE: &str = "strato";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 3;

/// A running throwaway cluster. Dropping it shuts the server down (fast shutdown, then
/// SIGKILL if needed), reaps it and removes its files. Like [`crate::NatsServer`], the
/// server dies if the thread that started it exits.
pub struct Postgres {
    process: Option<ServerProcess>,
    port: u16,
    password: String,
    bin: PathBuf,
    // Declared last so the server is stopped before its files are removed.
    dir: TempDir,
}

/// The user the cluster's programs run as: `None` means the current user.
#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

impl Postgres {
    /// Creates a cluster with `initdb`, starts `postgres` and creates database `strato`.
    pub fn start() -> anyhow::Result<Postgres> {
        Self::start_listening(None)
    }

    /// Like [`Postgres::start`], listening on `address` too (password auth from
    /// anywhere), for hosts on a test LAN: see [`Postgres::url_at`].
    pub fn start_on(address: IpAddr) -> anyhow::Result<Postgres> {
        Self::start_listening(Some(address))
    }

    fn start_listening(also: Option<IpAddr>) -> anyhow::Result<Postgres> {
        let bin = find_bin_dir()?;
        let owner = cluster_owner()?;
        let dir = crate::temp_dir()?;
        let password = random_password()?;
        prepare_dirs(dir.path(), &password, owner)?;
        init_cluster(&bin, dir.path(), owner)?;
        if also.is_some() {
            let hba = dir.path().join("data/pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba)
                .with_context(|| format!("cannot read {}", hba.display()))?;
            rules.push_str("host all all 0.0.0.0/0 scram-sha-256\n");
            std::fs::write(&hba, rules)
                .with_context(|| format!("cannot write {}", hba.display()))?;
        }
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = crate::free_port();
            match launch(&bin, dir.path(), port, owner, also) {
                Ok(process) => {
                    let postgres = Postgres {
                        process: Some(process),
                        port,
                        password,
                        bin,
                        dir,
                    };
                    postgres.create_database(DATABASE)?;
                    return Ok(postgres);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt was made"))
    }

    /// `postgres://strato:PASSWORD@127.0.0.1:PORT/strato`.
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// The URL of another database in this cluster (see [`Postgres::create_database`]).
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// The URL of database `strato` at `address` (one [`Postgres::start_on`] listens on).
    pub fn url_at(&self, address: IpAddr) -> String {
        format!(
            "postgres://{USER}:{}@{address}:{}/{DATABASE}",
            self.password, self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's name, `strato`.
    pub fn user(&self) -> &str {
        USER
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The database created at start, `strato`.
    pub fn database(&self) -> &str {
        DATABASE
    }

    /// The directory holding the server's unix socket (trust auth).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    /// Creates another database owned by `strato`.
    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let mut command = Command::new(self.bin.join("createdb"));
        self.client_args(&mut command).arg(name);
        run_to_completion(command, &format!("createdb {name}")).map(|_| ())
    }

    /// Runs `sql` with `psql` over TCP (password auth) and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let mut command = Command::new("/usr/bin/psql");
        command
            .arg("--no-psqlrc")
            .arg("--tuples-only")
            .arg("--no-align")
            .arg("--set=ON_ERROR_STOP=1")
            .arg("--command")
            .arg(sql)
            .arg(self.url());
        run_to_completion(command, "psql")
    }

    /// Connection arguments for the cluster's client programs (TCP, password auth).
    fn client_args<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command
            .arg("--host=127.0.0.1")
            .arg(format!("--port={}", self.port))
            .arg(format!("--username={USER}"))
            .arg("--no-password")
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10")
    }

    /// True while the server process is alive.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// Shuts the server down now (fast shutdown); the files stay until drop.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has a `postgres` binary.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let entries = std::fs::read_dir(INSTALL_ROOT).with_context(|| {
        format!("cannot read {INSTALL_ROOT}; install PostgreSQL with `apt install postgresql`")
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
        .with_context(|| {
            format!("no {INSTALL_ROOT}/<version>/bin/postgres; install it with `apt install postgresql`")
        })
}

/// The `postgres` system user when running as root, else the current user.
fn cluster_owner() -> anyhow::Result<Option<Owner>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").expect("no NUL in a literal");
    // SAFETY: passwd is plain old data; getpwnam_r fills it, pointing into `buffer`, which
    // outlives every use of `entry`.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        anyhow::bail!(
            "PostgreSQL cannot run as root and there is no `postgres` user; \
             install PostgreSQL with `apt install postgresql`"
        );
    }
    Ok(Some(Owner {
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    }))
}

/// 32 hex digits from the kernel's random source.
fn random_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for a password")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Lays out `dir`: `data/` (0700) and `socket/` owned by the cluster owner, and the
/// password file for initdb. `dir` itself becomes traversable for the owner.
fn prepare_dirs(dir: &Path, password: &str, owner: Option<Owner>) -> anyhow::Result<()> {
    set_mode(dir, 0o755)?;
    for (name, mode) in [("data", 0o700), ("socket", 0o755)] {
        let path = dir.join(name);
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        set_mode(&path, mode)?;
        give_to(&path, owner)?;
    }
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, format!("{password}\n"))
        .with_context(|| format!("cannot write {}", pwfile.display()))?;
    set_mode(&pwfile, 0o600)?;
    give_to(&pwfile, owner)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

fn give_to(path: &Path, owner: Option<Owner>) -> anyhow::Result<()> {
    match owner {
        Some(owner) => std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
            .with_context(|| format!("cannot chown {} to the postgres user", path.display())),
        None => Ok(()),
    }
}

/// A command for one of the cluster's server programs, run as the owner inside `dir`.
fn server_command(program: PathBuf, dir: &Path, owner: Option<Owner>) -> Command {
    let mut command = Command::new(program);
    command.current_dir(dir).env("LC_ALL", "C");
    if let Some(owner) = owner {
        command.uid(owner.uid).gid(owner.gid);
    }
    command
}

/// Runs initdb: superuser `strato` with the password file, scram over TCP, trust on the
/// socket.
fn init_cluster(bin: &Path, dir: &Path, owner: Option<Owner>) -> anyhow::Result<()> {
    let mut command = server_command(bin.join("initdb"), dir, owner);
    command
        .arg("--pgdata")
        .arg(dir.join("data"))
        .arg(format!("--username={USER}"))
        .arg("--pwfile")
        .arg(dir.join("pwfile"))
        .arg("--auth-host=scram-sha-256")
        .arg("--auth-local=trust")
        .arg("--encoding=UTF8")
        .arg("--locale=C")
        .arg("--no-sync")
        .arg("--no-instructions");
    run_to_completion(command, "initdb").map(|_| ())
}

/// Starts `postgres` on `port` and waits until it accepts connections.
fn launch(
    bin: &Path,
    dir: &Path,
    port: u16,
    owner: Option<Owner>,
    also: Option<IpAddr>,
) -> anyhow::Result<ServerProcess> {
    let listen = match also {
        Some(address) => format!("listen_addresses=127.0.0.1,{address}"),
        None => "listen_addresses=127.0.0.1".to_string(),
    };
    let mut command = server_command(bin.join("postgres"), dir, owner);
    command
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir.join("socket"))
        .arg("-c")
        .arg(listen)
        .args(["-c", "fsync=off"])
        .args(["-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off"])
        .args(["-c", "shared_buffers=32MB"]);
    let mut process = ServerProcess::spawn(
        command,
        "postgres",
        &dir.join("postgres.log"),
        libc::SIGINT,
        Duration::from_secs(10),
    )?;
    let is_ready = || {
        Command::new(bin.join("pg_isready"))
            .args(["--quiet", "--host=127.0.0.1", "--timeout=1"])
            .arg(format!("--port={port}"))
            .status()
            .is_ok_and(|status| status.success())
    };
    process.wait_until_ready(START_TIMEOUT, is_ready)?;
    Ok(process)
}

/// Runs a command to completion and returns its stdout; on failure the error quotes stderr.
fn run_to_completion(mut command: Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {what}: {command:?}"))?;
    if !output.status.success() {
        anyhow::bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
