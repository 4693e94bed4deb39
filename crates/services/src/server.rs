//! Running a service's server process (postgres, mariadbd, redis-server) as an
//! unprivileged user and keeping it running: when it dies (crash, kill -9) it is started
//! again with a doubling back-off, and stopping sends the server's own shutdown signal
//! before SIGKILL.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ServiceError;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A run that lasted this long resets the back-off.
const STABLE_RUN: Duration = Duration::from_secs(30);

/// The user a server runs as: as root, a system user (the one the Debian package
/// created: `postgres`, `mysql`, `redis`); otherwise the current user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl ServerUser {
    /// `name` when running as root, the current user otherwise.
    pub fn system(name: &str) -> Result<ServerUser, ServiceError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(ServerUser::current());
        }
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) if !u.uid.is_root() => Ok(ServerUser {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            Ok(Some(_)) => Err(ServiceError::Other(format!(
                "system user '{name}' is root; servers never run as root"
            ))),
            _ => Err(ServiceError::Other(format!(
                "no system user '{name}'; install its Debian package (scripts/up does) or create the user"
            ))),
        }
    }

    /// The user this process runs as.
    pub fn current() -> ServerUser {
        let uid = nix::unistd::getuid();
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        ServerUser {
            name,
            uid: uid.as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    /// Makes `path` (and nothing else) owned by this user.
    pub fn chown(&self, path: &Path) -> Result<(), ServiceError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| ServiceError::io("cannot change owner", path, e))
    }

    /// Runs `cmd` as this user (no-op when it is the current user).
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        if self.uid != nix::unistd::getuid().as_raw() {
            cmd.uid(self.uid).gid(self.gid);
        }
    }
}

/// How to run one server.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// For logs: `postgresql`, `redis d0a6...`.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub user: ServerUser,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
    /// The server's own clean-shutdown signal (SIGINT for postgres' fast shutdown).
    pub stop_signal: Signal,
    /// How long to wait after `stop_signal` before SIGKILL.
    pub grace: Duration,
}

/// A server kept running until [`SupervisedServer::stop`] (or drop, which kills it).
pub struct SupervisedServer {
    name: String,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    pid: Arc<AtomicU32>,
    starts: Arc<AtomicU32>,
}

impl SupervisedServer {
    /// Starts the server now and restarts it whenever it exits. The first spawn's error
    /// (program missing, log not writable) is returned; later ones are logged and retried.
    pub async fn start(spec: ServerSpec) -> Result<SupervisedServer, ServiceError> {
        let first = spawn(&spec)?;
        let pid = Arc::new(AtomicU32::new(first.id().unwrap_or(0)));
        let starts = Arc::new(AtomicU32::new(1));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(supervise(
            spec.clone(),
            first,
            cancel.clone(),
            pid.clone(),
            starts.clone(),
        ));
        Ok(SupervisedServer {
            name: spec.name,
            cancel,
            task: Some(task),
            pid,
            starts,
        })
    }

    /// The pid of the running server, if one runs now.
    pub fn pid(&self) -> Option<u32> {
        match self.pid.load(Ordering::SeqCst) {
            0 => None,
            p => Some(p),
        }
    }

    /// How many times the server was started (1 + restarts).
    pub fn starts(&self) -> u32 {
        self.starts.load(Ordering::SeqCst)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Shuts the server down cleanly and waits for it.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SupervisedServer {
    fn drop(&mut self) {
        // The supervising task sees the cancel and stops the child; if the runtime is
        // going away instead, the child is killed on drop (kill_on_drop).
        self.cancel.cancel();
    }
}

fn spawn(spec: &ServerSpec) -> Result<tokio::process::Child, ServiceError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|e| ServiceError::io("cannot open server log", &spec.log, e))?;
    let err = log
        .try_clone()
        .map_err(|e| ServiceError::io("cannot open server log", &spec.log, e))?;
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true);
    spec.user.apply(&mut cmd);
    // If stratod dies without stopping its servers (kill -9, a crash), the kernel sends
    // each server its own stop signal, so a restarted stratod never finds an orphan
    // holding the data dir. Set after the uid change (which would clear it); spawning
    // happens on a runtime worker thread, which lives as long as stratod.
    let death_signal = spec.stop_signal as libc::c_int;
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        ServiceError::io(
            &format!(
                "cannot start {}; is its Debian package installed?",
                spec.name
            ),
            &spec.program,
            e,
        )
    })
}

async fn supervise(
    spec: ServerSpec,
    mut child: tokio::process::Child,
    cancel: CancellationToken,
    pid: Arc<AtomicU32>,
    starts: Arc<AtomicU32>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = tokio::time::Instant::now();
        tokio::select! {
            status = child.wait() => {
                pid.store(0, Ordering::SeqCst);
                tracing::warn!(server = %spec.name, ?status, log = %spec.log.display(), "service server exited; restarting");
            }
            _ = cancel.cancelled() => {
                stop_child(&spec, &mut child).await;
                pid.store(0, Ordering::SeqCst);
                return;
            }
        }
        if started.elapsed() >= STABLE_RUN {
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = cancel.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        loop {
            match spawn(&spec) {
                Ok(c) => {
                    child = c;
                    pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
                    starts.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(e) => {
                    tracing::error!(server = %spec.name, error = %e, "cannot restart service server");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = cancel.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

async fn stop_child(spec: &ServerSpec, child: &mut tokio::process::Child) {
    if let Some(id) = child.id() {
        let _ = kill(Pid::from_raw(id as i32), spec.stop_signal);
        if tokio::time::timeout(spec.grace, child.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(server = %spec.name, "server ignored its stop signal; killing it");
    }
    let _ = child.kill().await;
}

/// Polls `ready` every 100 ms until it is true or `timeout` passes.
pub async fn wait_until<F, Fut>(
    timeout: Duration,
    what: &str,
    mut ready: F,
) -> Result<(), ServiceError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if ready().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ServiceError::Unavailable {
                server: what.to_string(),
                reason: format!("not ready after {} s; see its log", timeout.as_secs()),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path) -> ServerSpec {
        ServerSpec {
            name: "sleeper".into(),
            program: "/bin/sleep".into(),
            args: vec!["300".into()],
            env: vec![],
            user: ServerUser::current(),
            log: dir.join("sleeper.log"),
            stop_signal: Signal::SIGTERM,
            grace: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn a_killed_server_is_started_again_and_stop_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let server = SupervisedServer::start(sleeper(dir.path())).await.unwrap();
        let first = server.pid().unwrap();
        kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
        wait_until(Duration::from_secs(5), "sleeper", || async {
            server.pid().is_some_and(|p| p != first)
        })
        .await
        .unwrap();
        assert_eq!(server.starts(), 2);
        let second = server.pid().unwrap();
        server.stop().await;
        // The process is gone (reaped): signalling it fails.
        assert!(kill(Pid::from_raw(second as i32), None).is_err());
    }

    #[tokio::test]
    async fn a_missing_program_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sleeper(dir.path());
        spec.program = "/nonexistent/server".into();
        let err = SupervisedServer::start(spec)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("Debian package"), "{err}");
    }
}
