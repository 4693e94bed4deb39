//! nginx as the router's peer: Debian's `/usr/sbin/nginx` with a generated config in a
//! temp dir (pid, logs and temp paths there, nothing under `/var`), proxying to the same
//! backend with upstream keep-alive; stopped with its whole process group on drop.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tempfile::TempDir;

const NGINX: &str = "/usr/sbin/nginx";

/// A running nginx master and its workers.
pub struct Nginx {
    addr: SocketAddr,
    child: Option<Child>,
    // Dropped after the child is stopped (field order), so logs stay readable until then.
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx with `workers` worker processes on a free port, proxying to `backend`.
    pub fn start(workers: usize, backend: SocketAddr) -> anyhow::Result<Nginx> {
        if !Path::new(NGINX).is_file() {
            anyhow::bail!("{NGINX} not found: install Debian's nginx package (apt-get install nginx-light or nginx)");
        }
        let dir = tempfile::Builder::new()
            .prefix("strato-bench-nginx-")
            .tempdir()
            .context("cannot create a temp dir for nginx; check that /tmp is writable")?;
        // Workers run as nobody when started as root: let them into the temp dir.
        let _ = std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], strato_testkit::free_port()));
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(workers, backend, addr, dir.path()))
            .with_context(|| format!("cannot write {}", conf.display()))?;
        let log = dir.path().join("error.log");
        let child = spawn(&conf, dir.path(), &log)?;
        let mut nginx = Nginx {
            addr,
            child: Some(child),
            dir,
        };
        nginx.wait_until_listening(Duration::from_secs(10))?;
        Ok(nginx)
    }

    /// Where nginx listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn wait_until_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                anyhow::bail!(
                    "nginx exited during start-up ({status}); its error log says:\n{}",
                    self.error_log()
                );
            }
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "nginx did not listen on {} within {timeout:?}; its error log says:\n{}",
                    self.addr,
                    self.error_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Fast shutdown (SIGTERM to the master), then SIGKILL to the whole process group.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let Ok(pid) = libc::pid_t::try_from(child.id()) else {
            let _ = child.kill();
            let _ = child.wait();
            return;
        };
        // SAFETY: plain syscall on our own, not yet reaped, child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // nginx leads its own process group, so this also reaches workers left behind.
        // SAFETY: plain syscall; the group id is our child's pid (process_group(0)).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(conf: &Path, prefix: &Path, log: &Path) -> anyhow::Result<Child> {
    let out =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let mut command = Command::new(NGINX);
    command
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .arg(log)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own group: Ctrl-C goes to us, and stop() can kill master and workers at once.
        .process_group(0);
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("cannot start {NGINX}"))
}

/// The nginx config: `workers` processes, upstream keep-alive to `backend`, no access log,
/// unlimited keep-alive requests on both sides (Strato's router has no such limit either).
fn config(workers: usize, backend: SocketAddr, listen: SocketAddr, dir: &Path) -> String {
    let path = |name: &str| -> PathBuf { dir.join(name) };
    format!(
        "worker_processes {workers};
daemon off;
master_process on;
user nobody nogroup;
pid {pid};
error_log {error_log} warn;
worker_rlimit_nofile 16384;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    keepalive_requests 1000000;
    keepalive_timeout 65s;
    upstream b {{
        server {backend};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://b;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
            # The same headers Strato's router adds, so both proxies do the same work.
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Request-Start $msec;
            proxy_set_header X-Vcap-Request-Id $request_id;
        }}
    }}
}}
",
        pid = path("nginx.pid").display(),
        error_log = path("error.log").display(),
        body = path("body").display(),
        proxy = path("proxy").display(),
        fastcgi = path("fastcgi").display(),
        uwsgi = path("uwsgi").display(),
        scgi = path("scgi").display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_uses_the_worker_count_backend_and_temp_dir() {
        let text = config(
            3,
            "127.0.0.1:4000".parse().unwrap(),
            "127.0.0.1:5000".parse().unwrap(),
            Path::new("/tmp/x"),
        );
        assert!(text.contains("worker_processes 3;"));
        assert!(text.contains("server 127.0.0.1:4000;"));
        assert!(text.contains("listen 127.0.0.1:5000;"));
        assert!(text.contains("pid /tmp/x/nginx.pid;"));
        assert!(!text.contains("/var/"));
    }
}
