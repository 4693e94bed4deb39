//! The runc driver against the real `runc` (needs root, like the DEA in production).
//!
//! Every test owns a fresh state dir; a guard force-deletes its containers and the dir even
//! when an assertion fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strato_container::{
    ContainerDriver, ContainerSpec, Mount, OutputStream, RuncDriver, RunningContainer, Stack,
    APP_HOME,
};

const UID: u32 = 4321;
const GID: u32 = 4322;

struct Fixture {
    driver: Arc<RuncDriver>,
    state: tempfile::TempDir,
    app_dir: PathBuf,
    ids: Vec<String>,
}

impl Fixture {
    fn new() -> Fixture {
        let state = tempfile::tempdir().expect("temp dir");
        let app_dir = state.path().join("app");
        std::fs::create_dir(&app_dir).unwrap();
        std::os::unix::fs::chown(&app_dir, Some(UID), Some(GID)).unwrap();
        let driver = RuncDriver::new(state.path().join("containers"), Stack::host_default());
        driver
            .check_available()
            .expect("runc must be usable for these tests");
        Fixture {
            driver: Arc::new(driver),
            state,
            app_dir,
            ids: Vec::new(),
        }
    }

    fn spec(&mut self, name: &str, script: &str) -> ContainerSpec {
        let id = format!("t-{name}-{}", std::process::id());
        self.ids.push(id.clone());
        let mut spec = ContainerSpec::new(id, sh(script), UID, GID);
        spec.mounts.push(Mount {
            source: self.app_dir.clone(),
            destination: APP_HOME.to_string(),
            read_only: false,
        });
        spec
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = std::process::Command::new("/usr/sbin/runc")
                .arg("--root")
                .arg(self.state.path().join("containers/runc"))
                .args(["delete", "--force", id])
                .output();
        }
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

async fn collect(running: &mut RunningContainer) -> (Vec<String>, Vec<String>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let deadline = Duration::from_secs(30);
    while let Ok(Some(line)) = tokio::time::timeout(deadline, running.output.recv()).await {
        match line.stream {
            OutputStream::Stdout => out.push(line.text),
            OutputStream::Stderr => err.push(line.text),
        }
    }
    (out, err)
}

fn memory_cgroup(id: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup/memory/strato").join(id)
}

#[tokio::test]
async fn runs_unprivileged_on_a_read_only_stack() {
    let mut fx = Fixture::new();
    let spec = fx.spec(
        "basic",
        "id -u; id -g; id -un; \
         touch /usr/strato-probe 2>/dev/null && echo usr-writable || echo usr-readonly; \
         touch /etc/probe 2>/dev/null && echo etc-writable || echo etc-readonly; \
         touch /tmp/probe && echo tmp-writable; \
         touch $HOME/probe && echo home-writable; \
         test -e /etc/shadow && echo shadow-visible || echo no-shadow; \
         test -e /etc/ssl/certs/ca-certificates.crt && echo certs; \
         grep memory /proc/self/cgroup; \
         echo pid1=$(cat /proc/1/comm); hostname; echo to-stderr >&2",
    );
    let id = spec.id.clone();
    let mut spec = spec;
    spec.env.push(format!("HOME={APP_HOME}"));
    let started = Instant::now();
    let mut running = fx.driver.run(spec).await.expect("container starts");
    println!("runc container start took {:?}", started.elapsed());
    assert!(running.pid > 1);
    let (out, err) = collect(&mut running).await;
    let status = running.wait().await.unwrap();
    println!("container ran to exit in {:?}", started.elapsed());
    assert_eq!(status, 0, "stdout {out:?} stderr {err:?}");
    assert_eq!(out[0], UID.to_string());
    assert_eq!(out[1], GID.to_string());
    assert_eq!(out[2], "stackato");
    for expected in [
        "usr-readonly",
        "etc-readonly",
        "tmp-writable",
        "home-writable",
        "no-shadow",
        "certs",
        "pid1=tini",
    ] {
        assert!(
            out.iter().any(|l| l == expected),
            "{expected} missing in {out:?}"
        );
    }
    assert!(
        out.iter()
            .any(|l| l.contains("memory:/strato/") && l.ends_with(&id)),
        "{out:?}"
    );
    assert!(out.iter().any(|l| l == &id), "hostname missing in {out:?}");
    // tini may note a signal that reached it after the command exited; only the
    // command's own output matters here.
    let err: Vec<&String> = err.iter().filter(|l| !l.contains("tini (1)")).collect();
    assert_eq!(err, vec!["to-stderr"]);
    assert!(
        fx.app_dir.join("probe").exists(),
        "the app dir is the host dir"
    );
    fx.driver.delete(&id).await.unwrap();
}

#[tokio::test]
async fn memory_limit_is_enforced() {
    let mut fx = Fixture::new();
    let mut spec = fx.spec(
        "mem",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null; \
         python3 -c 'print(\"started\", flush=True); b = bytearray(200 * 1024 * 1024); print(\"allocated\")'",
    );
    spec.memory_limit_bytes = Some(48 * 1024 * 1024);
    let id = spec.id.clone();
    let mut running = fx.driver.run(spec).await.expect("container starts");
    let (out, _err) = collect(&mut running).await;
    // Read from inside: the OOM kill may end the container (and runc remove its cgroup)
    // before the host could look.
    assert_eq!(
        out.first().map(String::as_str),
        Some((48 * 1024 * 1024).to_string().as_str()),
        "the container's memory cgroup has the limit: {out:?}"
    );
    let status = running.wait().await.unwrap();
    assert!(out.iter().any(|l| l == "started"), "{out:?}");
    assert!(!out.iter().any(|l| l == "allocated"), "{out:?}");
    assert_eq!(
        status,
        128 + libc::SIGKILL,
        "the OOM killer ends the app: {out:?}"
    );
    fx.driver.delete(&id).await.unwrap();
}

#[tokio::test]
async fn exec_stats_sigterm_and_delete_clean_up() {
    let mut fx = Fixture::new();
    let mut spec = fx.spec(
        "life",
        "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
    );
    spec.env.push("GREETING=hello".into());
    spec.pids_limit = Some(64);
    spec.nofile = 777;
    let id = spec.id.clone();
    let mut running = fx.driver.run(spec).await.expect("container starts");
    let first = tokio::time::timeout(Duration::from_secs(10), running.output.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.text, "ready");
    assert_eq!(fx.driver.list().await.unwrap(), vec![id.clone()]);

    let exec = fx
        .driver
        .exec(
            &id,
            &sh("id -u; echo $GREETING $EXTRA; ulimit -n; cat /sys/fs/cgroup/pids/pids.max"),
            &["EXTRA=world".into()],
            Duration::from_secs(10),
        )
        .await
        .expect("exec works");
    let text = String::from_utf8_lossy(&exec.stdout);
    assert_eq!(
        exec.exit_status,
        0,
        "{text} {}",
        String::from_utf8_lossy(&exec.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [UID.to_string().as_str(), "hello world", "777", "64"],
        "uid, environment, open-file limit, pids limit"
    );

    let failing = fx
        .driver
        .exec(&id, &sh("exit 7"), &[], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(failing.exit_status, 7);
    let started = Instant::now();
    let slow = fx
        .driver
        .exec(&id, &sh("sleep 30"), &[], Duration::from_millis(500))
        .await;
    assert!(slow.is_err(), "a slow exec times out");
    assert!(started.elapsed() < Duration::from_secs(10));

    let stats = fx.driver.stats(&id).await.expect("stats");
    assert!(stats.memory_bytes > 0, "{stats:?}");
    assert!(memory_cgroup(&id).exists());

    fx.driver.signal(&id, libc::SIGTERM).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("tini forwards SIGTERM to the app")
        .unwrap();
    let (out, _) = collect(&mut running).await;
    assert_eq!(status, 0, "the app's trap ran: {out:?}");
    assert!(out.iter().any(|l| l == "got-term"), "{out:?}");

    fx.driver.delete(&id).await.unwrap();
    assert!(fx.driver.list().await.unwrap().is_empty());
    assert!(!memory_cgroup(&id).exists(), "cgroup removed");
    assert!(!fx.state.path().join("containers/runc").join(&id).exists());
    assert!(!fx
        .state
        .path()
        .join("containers/bundles")
        .join(&id)
        .exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&id),
        "no mount of the container is left on the host"
    );
    assert!(matches!(
        fx.driver
            .exec(&id, &sh("true"), &[], Duration::from_secs(5))
            .await,
        Err(strato_container::ContainerError::NotFound(_))
    ));
}

#[tokio::test]
async fn delete_kills_a_running_container() {
    let mut fx = Fixture::new();
    let spec = fx.spec("kill", "trap '' TERM; echo up; sleep 1000");
    let id = spec.id.clone();
    let mut running = fx.driver.run(spec).await.expect("container starts");
    // The first stdout line (tini may say something on stderr first).
    let up = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match running.output.recv().await {
                Some(line) if line.stream == OutputStream::Stdout => return Some(line.text),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await;
    assert_eq!(up.unwrap().as_deref(), Some("up"));
    fx.driver.delete(&id).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("the container is gone after delete")
        .unwrap();
    assert_ne!(status, 0);
    assert!(!memory_cgroup(&id).exists());
    assert!(fx.driver.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_bad_command_fails_to_start_cleanly() {
    let mut fx = Fixture::new();
    let mut spec = fx.spec("bad", "true");
    spec.argv = vec!["/nonexistent/binary".into()];
    let id = spec.id.clone();
    // tini starts (the container runs) and reports that it cannot exec the app.
    match fx.driver.run(spec).await {
        Ok(mut running) => {
            let status = running.wait().await.unwrap();
            assert_ne!(status, 0);
            fx.driver.delete(&id).await.unwrap();
        }
        Err(e) => println!("start refused: {e}"),
    }
    assert!(fx.driver.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_probe_runs_a_container_and_fails_where_runc_cannot() {
    let fx = Fixture::new();
    fx.driver.probe().await.expect("runc works on this machine");
    // The probe leaves nothing behind.
    let left: Vec<_> = std::fs::read_dir(fx.state.path().join("containers/runc"))
        .map(|dir| dir.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runc state left: {left:?}");
    // A runc that is installed but cannot run containers (here: one that always fails)
    // passes the cheap check and fails the probe.
    let broken = RuncDriver::new(fx.state.path().join("broken"), Stack::host_default())
        .with_runc_binary(PathBuf::from("/bin/false"));
    broken.check_available().expect("the binary is there");
    let err = broken
        .probe()
        .await
        .expect_err("/bin/false runs no container");
    assert!(!err.to_string().is_empty());
}
