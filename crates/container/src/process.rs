//! The process driver: runs the command as a plain child process, with no isolation.
//!
//! Only for machines where runc cannot run (no root, no cgroups); [`ProcessDriver::isolated`]
//! is `false` so callers can say so. There is no rootfs: mount destinations in `cwd`,
//! `argv` and `env` values are rewritten to their host sources (so `cd /home/stackato/app`
//! becomes `cd <app dir>`), and no memory/pids limit is enforced. Nothing survives a
//! restart of the owning process, so [`ProcessDriver::list`] only knows this run's children.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

use crate::output::spawn_readers;
use crate::{
    exit_code, validate_id, ChildWaiter, ContainerDriver, ContainerError, ContainerSpec,
    ExecCommand, ExecOutput, RunningContainer, Stats,
};

struct Entry {
    pid: u32,
    spec: ContainerSpec,
    exited: Arc<AtomicBool>,
}

/// Runs containers as ordinary child processes (each in its own process group).
#[derive(Default)]
pub struct ProcessDriver {
    entries: Mutex<HashMap<String, Entry>>,
}

impl ProcessDriver {
    pub fn new() -> Self {
        ProcessDriver::default()
    }

    fn entry<T>(&self, id: &str, f: impl FnOnce(&Entry) -> T) -> Result<T, ContainerError> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(id)
            .map(f)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))
    }

    fn command(spec: &ContainerSpec, argv: &[String], extra_env: &[String]) -> Command {
        let mut cmd = Self::base_command(spec, argv, extra_env);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd
    }

    /// The command with the container's environment, dir and user, without stdio.
    fn base_command(spec: &ContainerSpec, argv: &[String], extra_env: &[String]) -> Command {
        let translate = |s: &str| translate_paths(spec, s);
        let mut cmd = Command::new(translate(&argv[0]));
        cmd.args(argv[1..].iter().map(|a| translate(a)));
        cmd.env_clear();
        for kv in spec.env.iter().chain(extra_env) {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, translate(v));
            }
        }
        cmd.current_dir(translate(&spec.cwd));
        let euid = nix::unistd::geteuid().as_raw();
        if euid == 0 && spec.uid != 0 {
            cmd.uid(spec.uid).gid(spec.gid);
        }
        cmd
    }
}

/// Rewrites container paths (mount destinations) in `s` to their host sources.
fn translate_paths(spec: &ContainerSpec, s: &str) -> String {
    let mut mounts: Vec<_> = spec.mounts.iter().collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.destination.len()));
    let mut out = s.to_string();
    for m in mounts {
        out = out.replace(&m.destination, &m.source.to_string_lossy());
    }
    out
}

#[async_trait]
impl ContainerDriver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    fn isolated(&self) -> bool {
        false
    }

    async fn run(&self, spec: ContainerSpec) -> Result<RunningContainer, ContainerError> {
        validate_id(&spec.id)?;
        if spec.argv.is_empty() {
            return Err(ContainerError::InvalidSpec("argv is empty".to_string()));
        }
        if self.entry(&spec.id, |_| ()).is_ok() {
            return Err(ContainerError::AlreadyExists(spec.id.clone()));
        }
        let mut child = Self::command(&spec, &spec.argv, &[])
            .spawn()
            .map_err(ContainerError::io(format!("start {:?}", spec.argv)))?;
        let pid = child.id().unwrap_or_default();
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(ContainerError::InvalidSpec(
                "child pipes missing".to_string(),
            ));
        };
        let exited = Arc::new(AtomicBool::new(false));
        let id = spec.id.clone();
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.clone(),
                Entry {
                    pid,
                    spec,
                    exited: exited.clone(),
                },
            );
        Ok(RunningContainer::new(
            id,
            pid,
            spawn_readers(stdout, stderr),
            ChildWaiter::new(child, "wait for the app process").flag_exit(exited),
        ))
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        env: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, ContainerError> {
        if argv.is_empty() {
            return Err(ContainerError::InvalidSpec(
                "exec needs a command".to_string(),
            ));
        }
        let spec = self.entry(id, |e| e.spec.clone())?;
        let child = Self::command(&spec, argv, env)
            .kill_on_drop(true)
            .spawn()
            .map_err(ContainerError::io(format!("start {argv:?}")))?;
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(out) => {
                let out = out.map_err(ContainerError::io(format!("wait for {argv:?}")))?;
                Ok(ExecOutput {
                    exit_status: exit_code(out.status),
                    stdout: out.stdout,
                    stderr: out.stderr,
                })
            }
            Err(_) => Err(ContainerError::Timeout {
                what: format!("exec {argv:?} in {id}"),
                timeout,
            }),
        }
    }

    fn exec_command(
        &self,
        id: &str,
        argv: &[String],
        env: &[String],
        tty: bool,
    ) -> Result<ExecCommand, ContainerError> {
        if argv.is_empty() {
            return Err(ContainerError::InvalidSpec(
                "exec needs a command".to_string(),
            ));
        }
        let spec = self.entry(id, |e| e.spec.clone())?;
        let mut cmd = Self::base_command(&spec, argv, env);
        if tty {
            // A new session whose controlling terminal is the pty slave on stdin.
            // SAFETY: setsid and ioctl are async-signal-safe; nothing is allocated.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        } else {
            cmd.process_group(0);
        }
        Ok(ExecCommand::with_group(cmd))
    }

    async fn stats(&self, id: &str) -> Result<Stats, ContainerError> {
        let pid = self.entry(id, |e| e.pid)?;
        Ok(proc_stats(pid).unwrap_or_default())
    }

    async fn signal(&self, id: &str, signal: i32) -> Result<(), ContainerError> {
        let (pid, exited) = self.entry(id, |e| (e.pid, e.exited.load(Ordering::SeqCst)))?;
        if exited {
            return Err(ContainerError::NotFound(id.to_string()));
        }
        let signal = Signal::try_from(signal)
            .map_err(|_| ContainerError::InvalidSpec(format!("unknown signal {signal}")))?;
        killpg(Pid::from_raw(pid as i32), signal).map_err(|e| ContainerError::Io {
            context: format!("signal {id}"),
            source: e.into(),
        })
    }

    async fn delete(&self, id: &str) -> Result<(), ContainerError> {
        let entry = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(entry) = entry {
            if !entry.exited.load(Ordering::SeqCst) {
                let _ = killpg(Pid::from_raw(entry.pid as i32), Signal::SIGKILL);
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, ContainerError> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<String> = entries.keys().cloned().collect();
        ids.sort();
        Ok(ids)
    }
}

/// RSS and CPU time of one process from `/proc` (the process driver has no cgroup).
fn proc_stats(pid: u32) -> Option<Stats> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let rss_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Some(Stats {
        memory_bytes: rss_pages * page,
        cpu_ns: ticks * (1_000_000_000 / hz.max(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mount;

    #[tokio::test]
    async fn runs_with_translated_paths_and_reports_exit() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ContainerSpec::new(
            "p1",
            vec![
                "/bin/sh".into(),
                "-c".into(),
                "pwd; echo $HOME; exit 3".into(),
            ],
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        spec.env.push(format!("HOME={}", crate::APP_HOME));
        spec.mounts.push(Mount {
            source: dir.path().to_path_buf(),
            destination: crate::APP_HOME.to_string(),
            read_only: false,
        });
        let driver = ProcessDriver::new();
        assert!(!driver.isolated());
        let mut running = driver.run(spec).await.unwrap();
        let mut lines = Vec::new();
        while let Some(line) = running.output.recv().await {
            lines.push(line.text);
        }
        assert_eq!(running.wait().await.unwrap(), 3);
        let host = dir.path().to_string_lossy().to_string();
        assert_eq!(lines, vec![host.clone(), host]);
        assert_eq!(driver.list().await.unwrap(), vec!["p1".to_string()]);
        driver.delete("p1").await.unwrap();
        assert!(driver.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn signal_and_exec_reach_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ContainerSpec::new(
            "p2",
            vec!["sleep".into(), "30".into()],
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        spec.cwd = dir.path().to_string_lossy().into_owned();
        let driver = ProcessDriver::new();
        let mut running = driver.run(spec).await.unwrap();
        let out = driver
            .exec(
                "p2",
                &["echo".into(), "hi".into()],
                &[],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(out.stdout, b"hi\n");
        assert!(driver.stats("p2").await.unwrap().memory_bytes > 0);
        driver.signal("p2", libc::SIGTERM).await.unwrap();
        assert_eq!(running.wait().await.unwrap(), 128 + libc::SIGTERM);
        driver.delete("p2").await.unwrap();
    }

    #[tokio::test]
    async fn streaming_exec_takes_stdin_and_can_get_a_terminal() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ContainerSpec::new(
            "p3",
            vec!["sleep".into(), "30".into()],
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        spec.cwd = dir.path().to_string_lossy().into_owned();
        let driver = ProcessDriver::new();
        let _running = driver.run(spec).await.unwrap();

        let argv = [
            "sh".to_string(),
            "-c".into(),
            "read x; echo got $x; exit 5".into(),
        ];
        let mut cmd = driver.exec_command("p3", &argv, &[], false).unwrap();
        cmd.command_mut()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut proc = cmd.spawn().unwrap();
        let mut stdin = proc.child.stdin.take().unwrap();
        stdin.write_all(b"hello\n").await.unwrap();
        drop(stdin);
        let mut out = String::new();
        proc.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        assert_eq!(out, "got hello\n");
        assert_eq!(proc.wait().await.unwrap(), 5);

        // Under a pty it is the command's controlling terminal.
        let pty = nix::pty::openpty(None, None).unwrap();
        let argv = [
            "sh".to_string(),
            "-c".into(),
            "tty; [ -t 0 ] && echo ctty-ok < /dev/tty".into(),
        ];
        let mut cmd = driver.exec_command("p3", &argv, &[], true).unwrap();
        cmd.command_mut()
            .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::from(pty.slave));
        let mut proc = cmd.spawn().unwrap();
        assert_eq!(proc.wait().await.unwrap(), 0);
        let mut master = std::fs::File::from(pty.master);
        let mut buf = [0u8; 1024];
        let n = std::io::Read::read(&mut master, &mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.contains("/dev/pts/"), "{text}");
        driver.delete("p3").await.unwrap();
    }
}
