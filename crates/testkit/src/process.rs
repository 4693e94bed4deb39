//! A server child process that is always stopped and reaped.
//!
//! Every server the harness starts goes through [`ServerProcess`]: output goes to a log file
//! (quoted in errors so a failed start says why), the child gets SIGKILL if the thread that
//! started it dies (so an aborted test run leaks nothing), and drop stops it with the
//! server's preferred signal, escalating to SIGKILL after a grace period.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A running server child.
pub(crate) struct ServerProcess {
    child: Option<Child>,
    name: String,
    log: PathBuf,
    stop_signal: libc::c_int,
    grace: Duration,
}

impl ServerProcess {
    /// Spawns `command` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(
        mut command: Command,
        name: &str,
        log: &Path,
        stop_signal: libc::c_int,
        grace: Duration,
    ) -> anyhow::Result<ServerProcess> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot create log file {}", log.display()))?;
        let err = out
            .try_clone()
            .context("cannot duplicate the log file handle")?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: the closure only calls prctl, which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}: {command:?}; is it installed?"))?;
        Ok(ServerProcess {
            child: Some(child),
            name: name.to_string(),
            log: log.to_path_buf(),
            stop_signal,
            grace,
        })
    }

    /// The exit status if the child has already exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(status)) => status,
            Some(Err(_)) | None => None,
        }
    }

    /// Polls `ready` until it returns true; fails if the child exits or `timeout` passes.
    pub(crate) fn wait_until_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                anyhow::bail!(
                    "{} exited during start-up ({status}); its log ends with:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{} was not ready within {timeout:?}; its log ends with:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Sends the stop signal, waits for the grace period, then kills. Always reaps.
    pub(crate) fn stop(&mut self) {
        self.stop_with(self.stop_signal, self.grace);
    }

    /// Kills at once with SIGKILL and reaps.
    pub(crate) fn kill(&mut self) {
        self.stop_with(libc::SIGKILL, Duration::ZERO);
    }

    fn stop_with(&mut self, signal: libc::c_int, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: plain syscall on our own, not yet reaped, child.
            unsafe { libc::kill(pid, signal) };
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
