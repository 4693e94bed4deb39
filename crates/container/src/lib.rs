//! The container driver seam.
//!
//! The DEA and the stager run app code through [`ContainerDriver`]; they never call `runc`
//! themselves. Two drivers implement it:
//!
//! - [`RuncDriver`]: an OCI container started with Debian's `runc` on a *stack* rootfs (the
//!   host's `/usr` read-only, a chosen few `/etc` files, a synthetic `passwd`, a private
//!   `/tmp`), `/usr/bin/tini -g --` as PID 1, memory/pids/file-descriptor limits, new
//!   pid/ipc/uts/mount namespaces, and either the host network or, with
//!   [`RuncDriver::with_network`], a network namespace of its own ([`network`]).
//! - [`ProcessDriver`]: a plain child process with no isolation, for machines where `runc`
//!   cannot run. [`ContainerDriver::isolated`] says which one you have.
//!
//! A container is started with [`ContainerDriver::run`]; its stdout/stderr arrive line by
//! line on [`RunningContainer::output`] and [`RunningContainer::wait`] gives its exit status.
//! Everything else (exec, stats, signals, delete) goes through the driver by container id,
//! so it also works for containers found again with [`ContainerDriver::list`] after a restart.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub mod disk;
mod exec;
pub mod network;
mod output;
mod process;
mod runc;
mod spec;
mod stack;

pub use exec::{ExecCommand, ExecProcess};
pub use process::ProcessDriver;
pub use runc::RuncDriver;
pub use stack::Stack;

/// Where the app's files live inside every container (the DEA mounts the droplet's `app/`
/// there, the stager the build dir).
pub const APP_HOME: &str = "/home/stackato/app";
/// The name of the unprivileged app user in the synthetic `/etc/passwd`.
pub const APP_USER: &str = "stackato";

/// An extra bind mount into the container (e.g. the app dir).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// A directory or file on the host.
    pub source: PathBuf,
    /// An absolute path inside the container.
    pub destination: String,
    pub read_only: bool,
}

/// Everything needed to start one container.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerSpec {
    /// Unique among this driver's containers: letters, digits, `-`, `_`, `.` (it names the
    /// runc container, its bundle dir and its cgroup).
    pub id: String,
    /// The app's command. The driver runs it under an init (`tini -g --`), so do not add one.
    pub argv: Vec<String>,
    /// `KEY=VALUE` pairs; the environment is exactly this (nothing is inherited).
    pub env: Vec<String>,
    /// Working directory inside the container (absolute).
    pub cwd: String,
    /// The user and group the app runs as.
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    /// Extra bind mounts, e.g. the app dir at [`APP_HOME`].
    pub mounts: Vec<Mount>,
    /// Memory limit (cgroup); `None` for unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// Maximum number of processes/threads (cgroup); `None` for unlimited.
    pub pids_limit: Option<i64>,
    /// `RLIMIT_NOFILE` (soft and hard).
    pub nofile: u64,
    /// TCP ports of the container reachable at the same port on every non-loopback
    /// address of the host (DNAT), for clients on other hosts. Only containers with a
    /// network namespace of their own need it; on the host network the ports already are
    /// the host's.
    pub publish: Vec<u16>,
}

impl ContainerSpec {
    /// A spec with sensible defaults: `cwd` [`APP_HOME`], hostname = id, 1024 pids, 16384
    /// file descriptors, no memory limit, no mounts.
    pub fn new(id: impl Into<String>, argv: Vec<String>, uid: u32, gid: u32) -> Self {
        let id = id.into();
        ContainerSpec {
            hostname: id.clone(),
            id,
            argv,
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string()],
            cwd: APP_HOME.to_string(),
            uid,
            gid,
            mounts: Vec::new(),
            memory_limit_bytes: None,
            pids_limit: Some(1024),
            nofile: 16384,
            publish: Vec::new(),
        }
    }
}

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    /// `"stdout"` or `"stderr"`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// One line of container output, without its trailing newline (invalid UTF-8 is replaced).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputLine {
    pub stream: OutputStream,
    pub text: String,
}

/// The result of [`ContainerDriver::exec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit code, or 128 + signal number when the command was killed by a signal.
    pub exit_status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Resource usage of a container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Memory in use (cgroup usage, or the process tree's RSS for the process driver).
    pub memory_bytes: u64,
    /// CPU time used so far, in nanoseconds.
    pub cpu_ns: u64,
}

/// What can go wrong in a driver.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("no container '{0}' (it may have exited and been deleted)")]
    NotFound(String),
    #[error("a container '{0}' already exists; delete it first or pick another id")]
    AlreadyExists(String),
    #[error("invalid container spec: {0}")]
    InvalidSpec(String),
    #[error("runc {op} failed for '{id}': {message}")]
    Runtime {
        op: &'static str,
        id: String,
        message: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("'{what}' did not finish within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
}

impl ContainerError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| ContainerError::Io { context, source }
    }
}

/// A started container: its output lines and a handle to wait for its exit.
pub struct RunningContainer {
    pub id: String,
    /// The host pid of the container's init (tini for runc; the process itself otherwise).
    pub pid: u32,
    /// Output lines, in order per stream. Ends when both streams are closed. Dropping the
    /// receiver discards further output without blocking the app.
    pub output: mpsc::Receiver<OutputLine>,
    /// The container's own address when it has a network namespace of its own; `None`
    /// when it shares the host's network (reach it at the host's addresses).
    pub address: Option<std::net::IpAddr>,
    waiter: ChildWaiter,
}

/// Waits on the child whose exit status is the container's: the app itself for the
/// process driver, the foreground `runc run` for runc.
pub(crate) struct ChildWaiter {
    child: tokio::process::Child,
    /// What the child is, for error messages.
    what: &'static str,
    status: Option<i32>,
    /// Set once the child has exited (the process driver's bookkeeping).
    exited: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl ChildWaiter {
    pub(crate) fn new(child: tokio::process::Child, what: &'static str) -> Self {
        ChildWaiter {
            child,
            what,
            status: None,
            exited: None,
        }
    }

    pub(crate) fn flag_exit(mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.exited = Some(flag);
        self
    }

    async fn wait(&mut self) -> Result<i32, ContainerError> {
        if let Some(code) = self.status {
            return Ok(code);
        }
        let status = self
            .child
            .wait()
            .await
            .map_err(ContainerError::io(self.what))?;
        if let Some(flag) = &self.exited {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let code = exit_code(status);
        self.status = Some(code);
        Ok(code)
    }
}

/// The exit code, or 128 + signal for a process killed by a signal.
pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

impl RunningContainer {
    pub(crate) fn new(
        id: String,
        pid: u32,
        output: mpsc::Receiver<OutputLine>,
        waiter: ChildWaiter,
    ) -> Self {
        RunningContainer {
            id,
            pid,
            output,
            address: None,
            waiter,
        }
    }

    /// Waits until the container's init exits and returns its exit status (128 + signal
    /// number when killed by a signal). Cancel-safe; call again to keep waiting. The
    /// container still exists afterwards (for inspection) until [`ContainerDriver::delete`].
    pub async fn wait(&mut self) -> Result<i32, ContainerError> {
        self.waiter.wait().await
    }

    /// Splits the handle into its output receiver and a waiter, for code that wants to
    /// consume both in different tasks.
    pub fn into_parts(self) -> (mpsc::Receiver<OutputLine>, ContainerWaiter) {
        (
            self.output,
            ContainerWaiter {
                id: self.id,
                pid: self.pid,
                waiter: self.waiter,
            },
        )
    }
}

/// The waiting half of [`RunningContainer::into_parts`].
pub struct ContainerWaiter {
    pub id: String,
    pub pid: u32,
    waiter: ChildWaiter,
}

impl ContainerWaiter {
    /// See [`RunningContainer::wait`].
    pub async fn wait(&mut self) -> Result<i32, ContainerError> {
        self.waiter.wait().await
    }
}

/// Runs, inspects and removes containers. Cheap to share as `Arc<dyn ContainerDriver>`.
#[async_trait]
pub trait ContainerDriver: Send + Sync + 'static {
    /// `"runc"` or `"process"`.
    fn name(&self) -> &'static str;
    /// `false` for the process driver: no namespaces, no limits, runs on the host's files.
    fn isolated(&self) -> bool;
    /// Starts a container; returns once its init process is running.
    async fn run(&self, spec: ContainerSpec) -> Result<RunningContainer, ContainerError>;
    /// Runs `argv` inside a running container as its user, with its environment plus `env`
    /// (`KEY=VALUE`), in its working directory. Killed after `timeout`
    /// ([`ContainerError::Timeout`]).
    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        env: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, ContainerError>;
    /// Prepares `argv` to run inside a running container like [`exec`](Self::exec), but
    /// with stdio the caller attaches (pipes or a pty) and no timeout: for streaming
    /// sessions. With `tty`, stdin/stdout/stderr must be the slave side of a pseudo-terminal
    /// the caller allocated; the command then gets a terminal of its own (runc: a pty inside
    /// the container, relayed by `runc exec --tty`; process driver: that pty as its
    /// controlling terminal).
    fn exec_command(
        &self,
        id: &str,
        argv: &[String],
        env: &[String],
        tty: bool,
    ) -> Result<ExecCommand, ContainerError>;
    /// Memory and CPU usage of a running container.
    async fn stats(&self, id: &str) -> Result<Stats, ContainerError>;
    /// Sends `signal` (e.g. `libc::SIGTERM`) to the container's init, which forwards it to
    /// the app's process group.
    async fn signal(&self, id: &str, signal: i32) -> Result<(), ContainerError>;
    /// Kills the container if it still runs and removes it, its cgroups, its mounts and its
    /// bundle. Deleting an unknown id is not an error.
    async fn delete(&self, id: &str) -> Result<(), ContainerError>;
    /// The ids of every container this driver owns, running or not (to clean up after a
    /// restart).
    async fn list(&self) -> Result<Vec<String>, ContainerError>;
}

/// Checks a container id: non-empty, at most 128 chars of `[A-Za-z0-9_.-]`, not starting
/// with `.`.
pub fn validate_id(id: &str) -> Result<(), ContainerError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::InvalidSpec(format!(
            "container id '{id}' must be 1-128 characters of letters, digits, '-', '_' or '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("abc-1_2.3").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("../x").is_err());
        assert!(validate_id(".hidden").is_err());
        assert!(validate_id("a/b").is_err());
    }
}
