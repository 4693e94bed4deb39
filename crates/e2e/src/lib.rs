//! The end-to-end harness: a real micro cloud (`stratod`) in a fresh temp dir on free
//! ports, driven through the real `strato` and `kato` binaries, and torn down completely
//! (daemon, containers, mounts) when the test ends, also when it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub mod cluster;

/// Where the workspace's binaries are: `STRATO_TEST_BIN_DIR`, else next to this binary.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STRATO_TEST_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable dir");
    // A binary such as strato-bench sits next to stratod; a test binary sits in
    // target/debug/deps, one below it.
    if dir.join("stratod").is_file() {
        return dir.to_path_buf();
    }
    dir.parent().map(Path::to_path_buf).expect("target dir")
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the binaries first (`cargo build --bins`, as scripts/test does)",
        p.display()
    );
    p
}

/// A fixture app under `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// A running micro cloud.
pub struct MicroCloud {
    pub home: tempfile::TempDir,
    pub client_home: tempfile::TempDir,
    pub port: u16,
    /// The router's HTTPS port (0: HTTPS off).
    pub https_port: u16,
    pub password: String,
    pub app_port_base: u16,
    roles: String,
    child: Option<Child>,
}

/// The roles of tests that push apps but use no data services (faster to start).
pub const APP_ROLES: &str = "controller,stager,dea,router,health_manager,logs";

/// The first of a block of 1000 ports for one cloud's apps (`STRATO_APP_PORT_BASE`).
pub fn random_port_base() -> u16 {
    // A block of 1000 ports per cloud so parallel tests never share app ports.
    let n = (std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0))
        % 30;
    20000 + (n as u16) * 1000
}

impl MicroCloud {
    /// Starts `stratod` and waits until the API answers through the router.
    pub fn start() -> anyhow::Result<MicroCloud> {
        Self::start_with_roles(APP_ROLES)
    }

    /// Starts a micro cloud whose router also serves HTTPS (on [`MicroCloud::https_port`]).
    pub fn start_with_https() -> anyhow::Result<MicroCloud> {
        Self::start_inner(APP_ROLES, strato_testkit::free_port())
    }

    /// Starts a micro cloud running `roles` (`STRATO_ROLES`, e.g. `micro` for everything
    /// including the data services).
    pub fn start_with_roles(roles: &str) -> anyhow::Result<MicroCloud> {
        Self::start_inner(roles, 0)
    }

    fn start_inner(roles: &str, https_port: u16) -> anyhow::Result<MicroCloud> {
        let home = tempfile::Builder::new().prefix("strato-e2e-").tempdir()?;
        let client_home = tempfile::Builder::new()
            .prefix("strato-client-")
            .tempdir()?;
        // Service users must be able to traverse the data dir.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o711))?;
        let port = strato_testkit::free_port();
        let password = format!("pw-{}", std::process::id());
        let mut mc = MicroCloud {
            home,
            client_home,
            port,
            // 0 (HTTPS off) unless a test asks with `start_with_https`: one port fewer to
            // race for when many micro clouds start at once.
            https_port,
            password,
            app_port_base: random_port_base(),
            roles: roles.to_string(),
            child: None,
        };
        mc.spawn()?;
        Ok(mc)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.path().join("stratod.log"))?;
        let child = Command::new(bin("stratod"))
            .env("STRATO_HOME", self.home.path())
            .env("STRATO_HTTP_PORT", self.port.to_string())
            .env("STRATO_HTTPS_PORT", self.https_port.to_string())
            .env("STRATO_HTTP_ADDR", "127.0.0.1")
            .env("STRATO_ADMIN_PASSWORD", &self.password)
            .env("STRATO_APP_PORT_BASE", self.app_port_base.to_string())
            .env("STRATO_LOG", "info,sqlx=warn")
            .env("STRATO_ROLES", &self.roles)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting stratod")?;
        self.child = Some(child);
        self.wait_api(Duration::from_secs(60))
    }

    fn wait_api(&mut self, wait: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    bail!("stratod exited ({st}); log:\n{}", self.log_tail());
                }
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = write!(
                    s,
                    "GET /v2/info HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                );
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.1 200") {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the API did not answer within {wait:?}; log:\n{}",
            self.log_tail()
        )
    }

    /// Pushes `tests/fixtures/static` (`staticfixture`) and waits until it serves.
    pub fn push_static(&self) {
        self.strato_ok(&fixture("static"), &["push", "-n"]);
        self.wait_for(
            "staticfixture.localhost",
            "/",
            "hello from static",
            Duration::from_secs(60),
        );
    }

    /// The TCP ports `stratod` itself listens on (the API, the node agent's endpoints,
    /// service gateways...), from `ss`.
    pub fn stratod_ports(&self) -> Vec<u16> {
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else {
            return Vec::new();
        };
        let out = Command::new("ss")
            .args(["-Htlnp"])
            .output()
            .expect("run ss (iproute2)");
        let needle = format!("pid={pid},");
        let mut ports: Vec<u16> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&needle))
            .filter_map(|l| {
                l.split_whitespace()
                    .nth(3)?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        ports.sort();
        ports.dedup();
        ports
    }

    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.home.path().join("stratod.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `strato` in `dir` as this test's user (its own `~/.strato`).
    pub fn strato(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(bin("strato"))
            .args(args)
            .current_dir(dir)
            .env("HOME", self.client_home.path())
            .env_remove("STRATO_TARGET")
            .env_remove("STACKATO_TARGET")
            .stdin(Stdio::null())
            .output()
            .expect("run strato")
    }

    /// Runs `strato` with `input` on its stdin.
    pub fn strato_input(&self, dir: &Path, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = Command::new(bin("strato"))
            .args(args)
            .current_dir(dir)
            .env("HOME", self.client_home.path())
            .env_remove("STRATO_TARGET")
            .env_remove("STACKATO_TARGET")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run strato");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("strato output");
        let _ = writer.join();
        out
    }

    /// `strato` that must succeed; returns stdout.
    pub fn strato_ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.strato(dir, args);
        assert!(
            out.status.success(),
            "strato {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}\nstratod log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn kato(&self, args: &[&str]) -> Output {
        kato_at(self.home.path(), args)
    }

    /// Targets and logs in as admin.
    pub fn login(&self) {
        let here = self.client_home.path();
        self.strato_ok(here, &["target", &self.url()]);
        self.strato_ok(here, &["login", "admin", "--password", &self.password]);
    }

    /// GET `http://HOST:PORT/PATH` through the router (Host header, since glibc does not
    /// resolve `*.localhost`).
    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        http_get(self.port, host, path)
    }

    /// Polls until `host/path` answers 200 with a body containing `needle`.
    pub fn wait_for(&self, host: &str, path: &str, needle: &str, wait: Duration) -> Duration {
        let start = Instant::now();
        let mut last = (0, String::new());
        while start.elapsed() < wait {
            last = self.get(host, path);
            if last.0 == 200 && last.1.contains(needle) {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{host}{path} did not answer with '{needle}' within {wait:?}; last: {last:?}\nstratod log:\n{}", self.log_tail());
    }

    /// Stops stratod (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, Duration::from_secs(45));
        }
    }

    /// Stops and starts stratod with the same data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Container ids runc knows under this cloud.
    pub fn containers(&self) -> Vec<String> {
        let root = self.home.path().join("containers/runc");
        let out = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect(),
            Err(_) => vec![],
        }
    }

    /// The host pid of the app's main process (the child of the container's init) in the
    /// container whose process tree mentions `hint`.
    pub fn app_pid(&self, hint: &str) -> Option<i32> {
        self.instance_inits()
            .iter()
            .flat_map(|init| children(&init.to_string()))
            .find(|c| tree_mentions(c, hint))
            .and_then(|c| c.parse().ok())
    }

    /// The host pid of the process, in any instance, whose own command line names `hint`,
    /// deepest first: the app's server itself, also when a shell runs it.
    pub fn process_naming(&self, hint: &str) -> Option<i32> {
        self.instance_inits()
            .iter()
            .find_map(|init| deepest_naming(&init.to_string(), hint))
            .and_then(|p| p.parse().ok())
    }

    /// Kills `pid` (SIGKILL), waits (up to 5 s) for `host` to stop answering 200, then
    /// until it serves `needle` again; the time from the kill.
    pub fn kill_and_wait_back(
        &self,
        pid: i32,
        host: &str,
        needle: &str,
        wait: Duration,
    ) -> Duration {
        let killed = Instant::now();
        // SAFETY: plain syscall.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let until = Instant::now() + Duration::from_secs(5);
        while self.get(host, "/").0 == 200 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait_for(host, "/", needle, wait);
        killed.elapsed()
    }

    /// The host pids of this cloud's container inits.
    fn instance_inits(&self) -> Vec<i32> {
        let root = self.home.path().join("containers/runc");
        self.containers()
            .iter()
            .filter_map(|id| {
                let out = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["state", id])
                    .output()
                    .ok()?;
                let state: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                Some(state["pid"].as_i64()? as i32)
            })
            .collect()
    }
}

impl Drop for MicroCloud {
    fn drop(&mut self) {
        self.stop();
        clean_up_home(self.home.path());
    }
}

/// Removes what a node under `home` may have left when its daemon died without cleaning
/// up: processes whose command line names `home` (service servers), its runc
/// containers, its mounts.
pub fn clean_up_home(home: &Path) {
    kill_processes_naming(home);
    let root = home.join("containers/runc");
    let listed = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["list", "-q"])
        .output();
    if let Ok(listed) = listed {
        for id in String::from_utf8_lossy(&listed.stdout).lines() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "-f", id])
                .output();
        }
    }
    unmount_under(home);
}

/// Kills every process whose command line names `home` (service servers left behind if
/// stratod died without stopping them).
fn kill_processes_naming(home: &Path) {
    let home = home.to_string_lossy().to_string();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&home) {
            // SAFETY: plain syscall.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

fn tree_mentions(pid: &str, hint: &str) -> bool {
    names(pid, hint) || children(pid).iter().any(|c| tree_mentions(c, hint))
}

/// The deepest process at or below `pid` whose command line names `hint`.
fn deepest_naming(pid: &str, hint: &str) -> Option<String> {
    children(pid)
        .iter()
        .find_map(|c| deepest_naming(c, hint))
        .or_else(|| names(pid, hint).then(|| pid.to_string()))
}

fn names(pid: &str, hint: &str) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(hint)
}

fn children(pid: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A plain HTTP/1.1 GET to 127.0.0.1:port with the given Host.
/// `strato ARGS` in `dir` as another user of this machine: HOME `home` (their own
/// `~/.strato`), none of the target/org/space/TLS variables, no terminal.
pub fn strato_as(home: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("strato"))
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env_remove("STRATO_TARGET")
        .env_remove("STACKATO_TARGET")
        .env_remove("STRATO_ORG")
        .env_remove("STRATO_SPACE")
        .env_remove("STRATO_SKIP_SSL_VALIDATION")
        .env_remove("STACKATO_SKIP_SSL_VALIDATION")
        .stdin(Stdio::null())
        .output()
        .expect("run strato")
}

/// Stops a daemon the way an operator does (SIGTERM), killing it after `grace`, and
/// reaps it.
pub fn stop_child(mut child: Child, grace: Duration) {
    // SAFETY: plain syscall on our own, not yet reaped, child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `kato ARGS` against the node whose `STRATO_HOME` is `home`.
pub fn kato_at(home: &Path, args: &[&str]) -> Output {
    Command::new(bin("kato"))
        .args(args)
        .env("STRATO_HOME", home)
        .stdin(Stdio::null())
        .output()
        .expect("run kato")
}

/// Unmounts anything a test's daemon left mounted under `dir` (instance disk images),
/// deepest first.
pub fn unmount_under(dir: &Path) {
    let prefix = dir.to_string_lossy().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = Command::new("umount").args(["-l", t]).output();
    }
}

/// A command's status, stdout and stderr, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn http_get(port: u16, host: &str, path: &str) -> (u16, String) {
    http_get_at(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        host,
        path,
    )
}

/// A plain HTTP/1.1 GET to `addr` with the given Host (status 0 when nothing answers).
pub fn http_get_at(addr: std::net::SocketAddr, host: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let port = addr.port();
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (0, "connect failed".into());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    );
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}
