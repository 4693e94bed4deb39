//! Streaming exec: a process started inside a running container whose stdio the caller
//! owns (pipes, or the slave side of a pseudo-terminal), for interactive sessions and
//! long transfers where [`ContainerDriver::exec`](crate::ContainerDriver::exec)'s buffered
//! output does not fit.
//!
//! A driver prepares an [`ExecCommand`] (the `runc exec` or child-process invocation); the
//! caller sets stdin/stdout/stderr on [`ExecCommand::command_mut`] and spawns it. The
//! resulting [`ExecProcess`] can be killed *inside* the container: killing `runc exec`
//! alone would leave the exec'd process running, so runc's `--pid-file` names the real one.

use std::path::PathBuf;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::{exit_code, ContainerError};

/// How to reach the process that runs the command, to kill it.
#[derive(Debug)]
enum KillTarget {
    /// runc wrote the exec'd process's host pid here.
    PidFile(PathBuf),
    /// The child leads its own process group (or session).
    Group,
}

/// A prepared exec in a container; set its stdio, then [`spawn`](ExecCommand::spawn) it.
#[derive(Debug)]
pub struct ExecCommand {
    command: Command,
    target: KillTarget,
}

impl ExecCommand {
    pub(crate) fn with_pid_file(command: Command, pid_file: PathBuf) -> Self {
        ExecCommand {
            command,
            target: KillTarget::PidFile(pid_file),
        }
    }

    pub(crate) fn with_group(command: Command) -> Self {
        ExecCommand {
            command,
            target: KillTarget::Group,
        }
    }

    /// The command, to set stdin, stdout and stderr. For a tty exec all three must be the
    /// slave side of a pseudo-terminal.
    pub fn command_mut(&mut self) -> &mut Command {
        &mut self.command
    }

    pub fn spawn(mut self) -> Result<ExecProcess, ContainerError> {
        let child = self
            .command
            .kill_on_drop(true)
            .spawn()
            .map_err(ContainerError::io("start the exec process"))?;
        Ok(ExecProcess {
            child,
            target: self.target,
            exited: false,
        })
    }
}

/// A running exec. Dropping it kills the process if it still runs.
#[derive(Debug)]
pub struct ExecProcess {
    /// `runc exec` for runc (it relays the exit status), the command itself otherwise.
    pub child: Child,
    target: KillTarget,
    exited: bool,
}

impl ExecProcess {
    /// The host pid of [`child`](Self::child); for a tty exec under runc, send it
    /// `SIGWINCH` after resizing the terminal and runc resizes the container's terminal.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the exit status (128 + signal when killed by a signal).
    pub async fn wait(&mut self) -> Result<i32, ContainerError> {
        let status = self
            .child
            .wait()
            .await
            .map_err(ContainerError::io("wait for the exec process"))?;
        self.exited = true;
        self.forget_pid_file();
        Ok(exit_code(status))
    }

    /// SIGKILLs the command inside the container, then the local child.
    pub fn kill(&mut self) {
        if self.exited {
            return;
        }
        match &self.target {
            KillTarget::PidFile(path) => {
                let pid = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok());
                if let Some(pid) = pid.filter(|p| *p > 1) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            KillTarget::Group => {
                if let Some(pid) = self.child.id() {
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
        }
        let _ = self.child.start_kill();
    }

    fn forget_pid_file(&self) {
        if let KillTarget::PidFile(path) = &self.target {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for ExecProcess {
    fn drop(&mut self) {
        self.kill();
        self.forget_pid_file();
    }
}
