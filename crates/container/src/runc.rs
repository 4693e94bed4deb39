//! The runc driver: OCI containers on a stack rootfs, started with Debian's `runc`.
//!
//! Layout under `state_root`: `runc/` is runc's own state dir (`runc --root`), so every
//! container there is ours; `bundles/<id>/` holds `config.json` and the `rootfs/`.
//! A container runs under a foreground `runc run` whose stdout/stderr are pipes the
//! container inherits (runc's pass-through mode); waiting on that `runc run` gives the app's
//! exit status, and runc removes the container and its cgroups when it exits.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::network::{Attachment, IsolatedNetwork};
use crate::output::spawn_readers;
use crate::spec::oci_config;
use crate::stack::Stack;
use crate::{
    exit_code, validate_id, ChildWaiter, ContainerDriver, ContainerError, ContainerSpec,
    ExecCommand, ExecOutput, RunningContainer, Stats,
};

/// How long the start-up probe's test container may take, and each step of removing it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `runc run` may take to get the container's init running.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// After a timed-out exec is killed, how long to wait for runc to notice.
const EXEC_KILL_GRACE: Duration = Duration::from_secs(5);
/// In a bundle: the network slot of an isolated container.
const NETWORK_SLOT_FILE: &str = "network-slot";
/// The ports a container publishes, one per line, so `delete` can withdraw them.
const PUBLISHED_FILE: &str = "published-ports";

/// Runs containers with `runc` (needs root and cgroups).
pub struct RuncDriver {
    runc_binary: PathBuf,
    runc_root: PathBuf,
    bundles: PathBuf,
    stack: Stack,
    network: Option<Arc<IsolatedNetwork>>,
}

impl RuncDriver {
    /// A driver keeping its state and bundles under `state_root` (created when needed),
    /// building rootfs dirs from `stack`, using `/usr/sbin/runc`.
    pub fn new(state_root: PathBuf, stack: Stack) -> Self {
        let state_root = absolute(state_root);
        RuncDriver {
            runc_binary: PathBuf::from("/usr/sbin/runc"),
            runc_root: state_root.join("runc"),
            bundles: state_root.join("bundles"),
            stack,
            network: None,
        }
    }

    /// Gives every container a network namespace of its own on `network` instead of the
    /// host network.
    pub fn with_network(mut self, network: Arc<IsolatedNetwork>) -> Self {
        self.network = Some(network);
        self
    }

    /// The container network, when containers are isolated.
    pub fn network(&self) -> Option<&Arc<IsolatedNetwork>> {
        self.network.as_ref()
    }

    /// Uses another `runc` binary.
    pub fn with_runc_binary(mut self, path: PathBuf) -> Self {
        self.runc_binary = path;
        self
    }

    /// Whether runc can run containers here: the binary exists and we are root. The error
    /// says what is missing (callers may fall back to the process driver and say so).
    pub fn check_available(&self) -> Result<(), ContainerError> {
        if !self.runc_binary.is_file() {
            return Err(ContainerError::InvalidSpec(format!(
                "{} not found: install Debian's runc package (apt-get install runc)",
                self.runc_binary.display()
            )));
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(ContainerError::InvalidSpec(
                "the runc driver needs root (cgroup limits and namespaces)".to_string(),
            ));
        }
        if !Path::new("/usr/bin/tini").is_file() {
            return Err(ContainerError::InvalidSpec(
                "/usr/bin/tini not found: install Debian's tini package".to_string(),
            ));
        }
        Ok(())
    }

    /// Runs a trivial container the way instances run (an unprivileged user, a memory
    /// limit, the read-only stack) and removes it: proves that runc works here, not only
    /// that it is installed. [`RuncDriver::check_available`] first. Bounded: a runc that
    /// hangs counts as one that cannot run containers.
    pub async fn probe(&self) -> Result<(), ContainerError> {
        const NOBODY: u32 = 65534;
        // One stratod per home (its pid lock): a probe container a killed one left behind
        // is this node's own, and removed first.
        const ID: &str = "strato-probe";
        let _ = tokio::time::timeout(PROBE_TIMEOUT, self.delete(ID)).await;
        let mut spec = ContainerSpec::new(ID, vec!["/bin/true".to_string()], NOBODY, NOBODY);
        spec.cwd = "/".to_string();
        spec.memory_limit_bytes = Some(64 * 1024 * 1024);
        let ran = tokio::time::timeout(PROBE_TIMEOUT, async {
            let mut running = self.run(spec).await?;
            running.wait().await
        })
        .await;
        let _ = tokio::time::timeout(PROBE_TIMEOUT, self.delete(ID)).await;
        match ran {
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(status)) => Err(ContainerError::InvalidSpec(format!(
                "a test container exited with status {status} instead of 0"
            ))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ContainerError::InvalidSpec(format!(
                "a test container did not finish within {} s",
                PROBE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The stack this driver builds containers from.
    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.bundles.join(id)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.runc_binary);
        cmd.arg("--root").arg(&self.runc_root);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs a short runc command and returns its stdout, or its stderr as the error.
    async fn runc(
        &self,
        op: &'static str,
        id: &str,
        args: &[&str],
    ) -> Result<Vec<u8>, ContainerError> {
        let out = self
            .command()
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(ContainerError::io(format!(
                "run {}",
                self.runc_binary.display()
            )))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if message.contains("does not exist") || message.contains("not found") {
                return Err(ContainerError::NotFound(id.to_string()));
            }
            Err(ContainerError::Runtime {
                op,
                id: id.to_string(),
                message,
            })
        }
    }

    /// Writes the bundle; with a network, also attaches the container to it (the slot is
    /// recorded in the bundle so [`delete`](ContainerDriver::delete) can free it).
    fn prepare_bundle(
        &self,
        spec: &ContainerSpec,
    ) -> Result<(PathBuf, Option<Attachment>), ContainerError> {
        let bundle = self.bundle(&spec.id);
        if bundle.exists() || self.runc_root.join(&spec.id).exists() {
            return Err(ContainerError::AlreadyExists(spec.id.clone()));
        }
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs)
            .map_err(ContainerError::io(format!("create {}", rootfs.display())))?;
        let prepared = self.stack.prepare_rootfs(&rootfs, spec.uid, spec.gid)?;
        let attachment = match &self.network {
            Some(net) => {
                let a = net.attach(&spec.id)?;
                let recorded = std::fs::write(bundle.join(NETWORK_SLOT_FILE), a.slot.to_string())
                    .map_err(ContainerError::io("record the network slot"))
                    .and_then(|()| publish(net, &bundle, &a, &spec.publish));
                if let Err(e) = recorded {
                    net.detach(a.slot);
                    let _ = std::fs::remove_dir_all(&bundle);
                    return Err(e);
                }
                Some(a)
            }
            None => None,
        };
        let netns = attachment.as_ref().map(|a| a.netns_path.as_path());
        let config = oci_config(spec, &rootfs, &prepared.mounts, netns)?;
        config
            .save(bundle.join("config.json"))
            .map_err(|e| ContainerError::InvalidSpec(format!("write config.json: {e}")))?;
        Ok((bundle, attachment))
    }

    /// Waits for `runc run` to write the init's pid, or fails with what runc said.
    async fn wait_for_start(
        &self,
        id: &str,
        child: &mut Child,
        pid_file: &Path,
        output: &mut tokio::sync::mpsc::Receiver<crate::OutputLine>,
    ) -> Result<u32, ContainerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(pid) = read_pid(pid_file) {
                return Ok(pid);
            }
            let exited = child
                .try_wait()
                .map_err(ContainerError::io("wait for runc run"))?;
            if let Some(status) = exited {
                if let Some(pid) = read_pid(pid_file) {
                    return Ok(pid);
                }
                let mut message = String::new();
                while let Ok(Some(line)) =
                    tokio::time::timeout(Duration::from_millis(200), output.recv()).await
                {
                    message.push_str(&line.text);
                    message.push('\n');
                }
                return Err(ContainerError::Runtime {
                    op: "run",
                    id: id.to_string(),
                    message: format!("{status}: {}", message.trim()),
                });
            }
            if Instant::now() > deadline {
                return Err(ContainerError::Timeout {
                    what: format!("runc run {id}"),
                    timeout: START_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<RunningContainer, ContainerError> {
        let (bundle, attachment) = self.prepare_bundle(spec)?;
        let pid_file = bundle.join("init.pid");
        let mut child = self
            .command()
            .arg("run")
            .arg("--bundle")
            .arg(&bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--no-new-keyring")
            .arg(&spec.id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(ContainerError::io(format!(
                "start {}",
                self.runc_binary.display()
            )))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(ContainerError::InvalidSpec(
                "runc pipes missing".to_string(),
            ));
        };
        let mut output = spawn_readers(stdout, stderr);
        let pid = match self
            .wait_for_start(&spec.id, &mut child, &pid_file, &mut output)
            .await
        {
            Ok(pid) => pid,
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(e);
            }
        };
        let mut running = RunningContainer::new(
            spec.id.clone(),
            pid,
            output,
            ChildWaiter::new(child, "wait for runc run"),
        );
        running.address = attachment.map(|a| IpAddr::V4(a.address));
        Ok(running)
    }

    /// Runs `runc exec`, killing the exec'd process after `timeout`.
    async fn exec_with_timeout(
        &self,
        id: &str,
        argv: &[String],
        env: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, ContainerError> {
        let pid_file = self.bundle(id).join(format!("exec-{}.pid", uuid_like()));
        let mut cmd = self.command();
        cmd.arg("exec").arg("--pid-file").arg(&pid_file);
        for kv in env {
            cmd.arg("--env").arg(kv);
        }
        cmd.arg(id).args(argv);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(ContainerError::io(format!(
                "start {}",
                self.runc_binary.display()
            )))?;
        let stdout = tokio::spawn(read_all(child.stdout.take()));
        let stderr = tokio::spawn(read_all(child.stderr.take()));
        let status = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status.map_err(ContainerError::io("wait for runc exec"))?,
            Err(_) => {
                if let Some(pid) = read_pid(&pid_file) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = tokio::time::timeout(EXEC_KILL_GRACE, child.wait()).await;
                let _ = child.start_kill();
                let _ = std::fs::remove_file(&pid_file);
                return Err(ContainerError::Timeout {
                    what: format!("exec {:?} in {id}", argv),
                    timeout,
                });
            }
        };
        let _ = std::fs::remove_file(&pid_file);
        let stdout = stdout.await.unwrap_or_default();
        let stderr = stderr.await.unwrap_or_default();
        let exit_status = exit_code(status);
        if exit_status != 0 && !self.runc_root.join(id).exists() {
            return Err(ContainerError::NotFound(id.to_string()));
        }
        Ok(ExecOutput {
            exit_status,
            stdout,
            stderr,
        })
    }
}

#[async_trait]
impl ContainerDriver for RuncDriver {
    fn name(&self) -> &'static str {
        "runc"
    }

    fn isolated(&self) -> bool {
        true
    }

    async fn run(&self, spec: ContainerSpec) -> Result<RunningContainer, ContainerError> {
        validate_id(&spec.id)?;
        match self.start(&spec).await {
            Ok(running) => Ok(running),
            Err(e) => {
                if !matches!(e, ContainerError::AlreadyExists(_)) {
                    let _ = self.delete(&spec.id).await;
                }
                Err(e)
            }
        }
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        env: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, ContainerError> {
        validate_id(id)?;
        if argv.is_empty() {
            return Err(ContainerError::InvalidSpec(
                "exec needs a command".to_string(),
            ));
        }
        if !self.runc_root.join(id).exists() {
            return Err(ContainerError::NotFound(id.to_string()));
        }
        self.exec_with_timeout(id, argv, env, timeout).await
    }

    fn exec_command(
        &self,
        id: &str,
        argv: &[String],
        env: &[String],
        tty: bool,
    ) -> Result<ExecCommand, ContainerError> {
        validate_id(id)?;
        if argv.is_empty() {
            return Err(ContainerError::InvalidSpec(
                "exec needs a command".to_string(),
            ));
        }
        if !self.runc_root.join(id).exists() {
            return Err(ContainerError::NotFound(id.to_string()));
        }
        let pid_file = self.bundle(id).join(format!("exec-{}.pid", uuid_like()));
        let mut cmd = self.command();
        cmd.arg("exec").arg("--pid-file").arg(&pid_file);
        if tty {
            // Foreground `runc exec --tty` makes a pty inside the container and relays it
            // to its own stdio (which must be a terminal: the caller's pty slave); on
            // SIGWINCH it copies its stdin's window size to the container's pty.
            cmd.arg("--tty");
        }
        for kv in env {
            cmd.arg("--env").arg(kv);
        }
        cmd.arg(id).args(argv);
        Ok(ExecCommand::with_pid_file(cmd, pid_file))
    }

    async fn stats(&self, id: &str) -> Result<Stats, ContainerError> {
        validate_id(id)?;
        let out = self.runc("events", id, &["events", "--stats", id]).await?;
        parse_stats(&out).ok_or_else(|| ContainerError::Runtime {
            op: "events",
            id: id.to_string(),
            message: format!("unexpected output: {}", String::from_utf8_lossy(&out)),
        })
    }

    async fn signal(&self, id: &str, signal: i32) -> Result<(), ContainerError> {
        validate_id(id)?;
        self.runc("kill", id, &["kill", id, &signal.to_string()])
            .await
            .map(|_| ())
    }

    async fn delete(&self, id: &str) -> Result<(), ContainerError> {
        validate_id(id)?;
        if self.runc_root.join(id).exists() {
            match self.runc("delete", id, &["delete", "--force", id]).await {
                Ok(_) | Err(ContainerError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let bundle = self.bundle(id);
        if let Some(net) = &self.network {
            if let Ok(ports) = std::fs::read_to_string(bundle.join(PUBLISHED_FILE)) {
                let ports: Vec<u16> = ports
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                net.unpublish(&ports);
            }
            let slot = std::fs::read_to_string(bundle.join(NETWORK_SLOT_FILE))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            if let Some(slot) = slot {
                net.detach(slot);
            }
        }
        match std::fs::remove_dir_all(&bundle) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ContainerError::Io {
                context: format!("remove {}", bundle.display()),
                source: e,
            }),
        }
    }

    async fn list(&self) -> Result<Vec<String>, ContainerError> {
        let mut ids = Vec::new();
        if self.runc_root.exists() {
            let out = self
                .runc("list", "*", &["list", "--format", "json"])
                .await?;
            let listed: Option<Vec<serde_json::Value>> =
                serde_json::from_slice(&out).unwrap_or_default();
            ids.extend(
                listed
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|c| c["id"].as_str().map(str::to_string)),
            );
        }
        if let Ok(entries) = std::fs::read_dir(&self.bundles) {
            ids.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok()),
            );
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

async fn read_all(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut buf).await;
    }
    buf
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn absolute(path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map(|d| d.join(&path))
            .unwrap_or(path)
    }
}

/// Reads `runc events --stats` JSON (same shape for cgroup v1 and v2).
fn parse_stats(out: &[u8]) -> Option<Stats> {
    let v: serde_json::Value = serde_json::from_slice(out).ok()?;
    let data = &v["data"];
    Some(Stats {
        memory_bytes: data["memory"]["usage"]["usage"].as_u64()?,
        cpu_ns: data["cpu"]["usage"]["total"].as_u64().unwrap_or(0),
    })
}

/// Publishes `ports` of the container at `attachment` and records them in its bundle
/// (recorded first, so a crash in between still lets `delete` withdraw them; removed
/// again when publishing fails, so `delete` never withdraws another container's ports).
fn publish(
    net: &IsolatedNetwork,
    bundle: &Path,
    attachment: &Attachment,
    ports: &[u16],
) -> Result<(), ContainerError> {
    if ports.is_empty() {
        return Ok(());
    }
    let record = bundle.join(PUBLISHED_FILE);
    let list: String = ports.iter().map(|p| format!("{p}\n")).collect();
    std::fs::write(&record, list).map_err(ContainerError::io("record the published ports"))?;
    net.publish(attachment, ports).inspect_err(|_| {
        let _ = std::fs::remove_file(&record);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_parse_runc_events_output() {
        let out = br#"{"type":"stats","id":"x","data":{"cpu":{"usage":{"total":1234}},"memory":{"usage":{"usage":4096}}}}"#;
        assert_eq!(
            parse_stats(out),
            Some(Stats {
                memory_bytes: 4096,
                cpu_ns: 1234
            })
        );
        assert_eq!(parse_stats(b"nonsense"), None);
    }
}
