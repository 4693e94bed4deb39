//! The mysql node against a real MariaDB server (Debian's mariadbd) and the real
//! `mariadb` client: provisioning, isolation between tenants, durability across kill -9,
//! export/import and the quota enforcer. Each test runs its own server in its own temp dir.

mod common;
use common::{address, id, plan, uids};

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use strato_services::mysql::{MysqlNode, QuotaChange};
use strato_services::{Credentials, NodeConfig, ServiceError, ServiceNode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A node in a fresh temp dir; dropping it (also when a test fails) kills the server
/// before the directory is removed.
struct TestNode {
    node: Option<MysqlNode>,
    config: NodeConfig,
    _dir: tempfile::TempDir,
}

impl TestNode {
    async fn start(capacity: u64) -> TestNode {
        let dir = tempfile::Builder::new()
            .prefix("strato-mysql-")
            .tempdir()
            .unwrap();
        // The mysql user must pass through the test's directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let config = NodeConfig {
            dir: dir.path().join("mysql"),
            address: address(),
            port: 0,
            port_range: None,
            capacity,
        };
        let started = Instant::now();
        let node = MysqlNode::open(config.clone()).await.unwrap();
        eprintln!(
            "mysql node open (first start, with init): {:?}",
            started.elapsed()
        );
        TestNode {
            node: Some(node),
            config,
            _dir: dir,
        }
    }

    fn node(&self) -> &MysqlNode {
        self.node.as_ref().unwrap()
    }

    /// Shuts the server down cleanly and opens the same directory again.
    async fn restart(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
        let started = Instant::now();
        self.node = Some(MysqlNode::open(self.config.clone()).await.unwrap());
        eprintln!("mysql node re-open: {:?}", started.elapsed());
    }

    async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let Some(pid) = self.node.as_ref().and_then(|n| n.server_pid()) else {
            return;
        };
        // The runtime cannot run the supervisor while we block here, so nothing restarts
        // the server; wait until it is dead (a zombie counts) before the dir goes.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Ok(stat) if !stat.contains(") Z ") => std::thread::sleep(Duration::from_millis(20)),
                _ => break,
            }
        }
    }
}

/// Runs `sql` with the real client as the credentials' user over TCP; stdout or stderr.
async fn client(creds: &Credentials, database: &str, sql: &str) -> Result<String, String> {
    let out = tokio::process::Command::new("mariadb")
        .arg("--no-defaults")
        .arg(format!("--host={}", creds.host))
        .arg(format!("--port={}", creds.port))
        .arg(format!("--user={}", creds.user))
        .args(["--batch", "--skip-column-names", "--connect-timeout=5"])
        .arg(database)
        .arg("-e")
        .arg(sql)
        .env("MYSQL_PWD", &creds.password)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

async fn own(creds: &Credentials, sql: &str) -> Result<String, String> {
    client(creds, &creds.name, sql).await
}

/// ~`kib` KiB of incompressible rows in table `t` (created when absent).
async fn fill(creds: &Credentials, kib: u32) {
    own(
        creds,
        "CREATE TABLE IF NOT EXISTS t (id INT AUTO_INCREMENT PRIMARY KEY, v TEXT)",
    )
    .await
    .unwrap();
    own(
        creds,
        &format!("INSERT INTO t (v) SELECT REPEAT(MD5(RAND()), 32) FROM seq_1_to_{kib}"),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn provision_bind_write_read_usage_and_deprovision() {
    let test = TestNode::start(10).await;
    let node = test.node();

    let pid = node.server_pid().expect("mariadbd runs");
    let uids = uids(pid);
    assert!(
        uids.iter().all(|u| *u != 0),
        "mariadbd runs as root: {uids:?}"
    );

    let a = id("0f4e1c5a-7b2d-4c6e-9f00-123456789abc");
    let started = Instant::now();
    let creds = node.provision(&a, &plan(100)).await.unwrap();
    eprintln!("mysql provision: {:?}", started.elapsed());
    assert_eq!(creds.host, address().to_string());
    assert_eq!(creds.port, node.port());
    assert_eq!(creds.name, a.db_name("d"));
    assert!(creds.password.len() >= 24);
    assert_eq!(
        creds.uri,
        format!(
            "mysql://{}:{}@{}:{}/{}",
            creds.user, creds.password, creds.host, creds.port, creds.name
        )
    );

    own(
        &creds,
        "CREATE TABLE notes (n TEXT); INSERT INTO notes VALUES ('hello')",
    )
    .await
    .unwrap();
    assert_eq!(own(&creds, "SELECT n FROM notes").await.unwrap(), "hello");

    // Idempotent provision; another plan is a conflict.
    assert_eq!(node.provision(&a, &plan(100)).await.unwrap(), creds);
    assert!(matches!(
        node.provision(&a, &plan(5)).await,
        Err(ServiceError::Conflict(_))
    ));

    let bound = node.bind(&a, "binding-1").await.unwrap();
    assert_eq!(own(&bound, "SELECT n FROM notes").await.unwrap(), "hello");
    node.unbind(&a, "binding-1").await.unwrap();
    assert!(matches!(
        node.bind(&id("absent"), "b").await,
        Err(ServiceError::NotFound(_))
    ));

    // Only the node's address listens: loopback does not (when the address is not it).
    if !address().is_loopback() {
        let mut on_loopback = creds.clone();
        on_loopback.host = "127.0.0.1".into();
        let err = own(&on_loopback, "SELECT 1").await.unwrap_err();
        assert!(err.contains("Can't connect"), "{err}");
    }

    let before = node.usage_bytes(&a).await.unwrap();
    fill(&creds, 1024).await;
    let after = node.usage_bytes(&a).await.unwrap();
    eprintln!("usage before {before} B, after ~1 MiB of rows {after} B");
    assert!(after >= before + 1024 * 1024, "{before} -> {after}");

    assert_eq!(node.instances().await.unwrap(), vec![a.clone()]);
    let data_dir = test.config.dir.join("data").join(&creds.name);
    assert!(data_dir.is_dir());
    node.deprovision(&a).await.unwrap();
    assert!(!data_dir.exists(), "the database's files are gone");
    let err = own(&creds, "SELECT 1").await.unwrap_err();
    assert!(err.contains("Access denied"), "{err}");
    assert!(node.instances().await.unwrap().is_empty());
    node.deprovision(&a).await.unwrap();

    test.stop().await;
}

#[tokio::test]
async fn reopening_keeps_data_credentials_and_port() {
    let mut test = TestNode::start(10).await;
    let a = id("reopen-a");
    let creds = test.node().provision(&a, &plan(100)).await.unwrap();
    own(
        &creds,
        "CREATE TABLE kv (k TEXT); INSERT INTO kv VALUES ('kept')",
    )
    .await
    .unwrap();
    let port = test.node().port();

    test.restart().await;
    let node = test.node();
    assert_eq!(node.port(), port);
    assert_eq!(node.instances().await.unwrap(), vec![a.clone()]);
    assert_eq!(node.bind(&a, "b").await.unwrap(), creds);
    assert_eq!(own(&creds, "SELECT k FROM kv").await.unwrap(), "kept");
    test.stop().await;
}

#[tokio::test]
async fn capacity_is_enforced() {
    let test = TestNode::start(1).await;
    let node = test.node();
    node.provision(&id("cap-a"), &plan(10)).await.unwrap();
    match node.provision(&id("cap-b"), &plan(10)).await {
        Err(ServiceError::Capacity { limit, key }) => {
            assert_eq!(limit, 1);
            assert_eq!(key, "mysql_node/capacity");
        }
        other => panic!("expected a capacity error, got {other:?}"),
    }
    // Nothing of the refused instance exists; the existing one is still idempotent.
    assert_eq!(node.instances().await.unwrap(), vec![id("cap-a")]);
    node.provision(&id("cap-a"), &plan(10)).await.unwrap();
    test.stop().await;
}

#[tokio::test]
async fn one_tenant_cannot_reach_another_tenants_database() {
    let test = TestNode::start(10).await;
    let node = test.node();
    let a = node.provision(&id("tenant-a"), &plan(10)).await.unwrap();
    let b = node.provision(&id("tenant-b"), &plan(10)).await.unwrap();
    own(
        &b,
        "CREATE TABLE secrets (s TEXT); INSERT INTO secrets VALUES ('b-only')",
    )
    .await
    .unwrap();

    // A's login to B's database is refused at connect.
    let err = client(&a, &b.name, "SELECT 1").await.unwrap_err();
    assert!(
        err.contains("Access denied") && err.contains(&b.name),
        "{err}"
    );
    // From A's own database: no USE, no read, no write of B's.
    let db = &b.name;
    for sql in [
        format!("USE {db}"),
        format!("SELECT * FROM {db}.secrets"),
        format!("INSERT INTO {db}.secrets VALUES ('from a')"),
        format!("CREATE TABLE {db}.planted (x INT)"),
    ] {
        let err = own(&a, &sql).await.unwrap_err();
        assert!(
            err.contains("denied"),
            "A could run `{sql}` on B's database: {err}"
        );
    }
    // B's password does not log A in, nor A's B.
    let mut mixed = a.clone();
    mixed.password = b.password.clone();
    let err = own(&mixed, "SELECT 1").await.unwrap_err();
    assert!(err.contains("Access denied"), "{err}");
    assert_eq!(own(&b, "SELECT s FROM secrets").await.unwrap(), "b-only");
    test.stop().await;
}

#[tokio::test]
async fn an_acknowledged_write_survives_kill_9_of_the_server() {
    let test = TestNode::start(10).await;
    let node = test.node();
    let creds = node.provision(&id("durable"), &plan(10)).await.unwrap();
    own(&creds, "CREATE TABLE log (v TEXT)").await.unwrap();
    own(&creds, "INSERT INTO log VALUES ('acknowledged')")
        .await
        .unwrap();

    let first = node.server_pid().unwrap();
    let killed = Instant::now();
    unsafe { libc::kill(first as i32, libc::SIGKILL) };

    let deadline = Instant::now() + Duration::from_secs(60);
    let read = loop {
        let restarted = node.server_pid().is_some_and(|p| p != first);
        if restarted {
            if let Ok(out) = own(&creds, "SELECT v FROM log").await {
                break out;
            }
        }
        assert!(Instant::now() < deadline, "mariadbd did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("mariadbd kill -9 -> serving again: {:?}", killed.elapsed());
    assert_eq!(read, "acknowledged");
    let uids = uids(node.server_pid().unwrap());
    assert!(uids.iter().all(|u| *u != 0), "restarted as root: {uids:?}");
    test.stop().await;
}

#[tokio::test]
async fn export_from_one_instance_imports_into_another() {
    let test = TestNode::start(10).await;
    let node = test.node();
    let (ia, ib) = (id("export-a"), id("import-b"));
    let a = node.provision(&ia, &plan(10)).await.unwrap();
    let b = node.provision(&ib, &plan(10)).await.unwrap();
    own(
        &a,
        "CREATE TABLE people (name TEXT, photo BLOB);
         INSERT INTO people VALUES ('ada', UNHEX('00FF10')), ('alan', NULL);
         CREATE PROCEDURE count_people() SELECT COUNT(*) FROM people;",
    )
    .await
    .unwrap();

    let mut dump = Vec::new();
    node.export(&ia, &mut dump).await.unwrap();
    let text = String::from_utf8(dump.clone()).unwrap();
    assert!(text.contains("CREATE TABLE `people`"), "{text}");
    assert!(!text.contains("CREATE DATABASE"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("USE ")), "{text}");
    assert!(!text.contains(&a.password));

    node.import(&ib, &mut dump.as_slice()).await.unwrap();
    assert_eq!(
        own(&b, "SELECT name, HEX(photo) FROM people ORDER BY name")
            .await
            .unwrap(),
        "ada\t00FF10\nalan\tNULL"
    );
    assert_eq!(own(&b, "CALL count_people()").await.unwrap(), "2");

    // A broken dump fails with the server's own error.
    let err = node
        .import(&ib, &mut &b"INSERT INTO nowhere VALUES (1);"[..])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("doesn't exist"), "{err}");
    test.stop().await;
}

#[tokio::test]
async fn a_database_over_its_size_limit_refuses_writes_until_trimmed() {
    let mut test = TestNode::start(10).await;
    let (ia, ib) = (id("quota-a"), id("quota-b"));
    let a = test.node().provision(&ia, &plan(1)).await.unwrap();
    let b = test.node().provision(&ib, &plan(1)).await.unwrap();
    fill(&a, 2500).await;
    fill(&b, 10).await;

    // A session opened before the limit bites must not keep writing.
    let mut session = tokio::process::Command::new("mariadb")
        .arg("--no-defaults")
        .arg(format!("--host={}", a.host))
        .arg(format!("--port={}", a.port))
        .arg(format!("--user={}", a.user))
        .args([
            "--batch",
            "--skip-column-names",
            "--unbuffered",
            "--skip-reconnect",
        ])
        .arg(&a.name)
        .env("MYSQL_PWD", &a.password)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut session_in = session.stdin.take().unwrap();
    let mut session_out = BufReader::new(session.stdout.take().unwrap());
    session_in
        .write_all(b"SELECT 'connected';\n")
        .await
        .unwrap();
    let mut line = String::new();
    session_out.read_line(&mut line).await.unwrap();
    assert_eq!(line.trim(), "connected");

    let changes = test.node().enforce_size_limits().await.unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    let QuotaChange {
        id: changed,
        used_bytes,
        limit_bytes,
        writable,
    } = changes[0].clone();
    eprintln!("over the limit: {used_bytes} B used of {limit_bytes} B");
    assert_eq!(changed, ia);
    assert!(!writable);
    assert_eq!(limit_bytes, 1024 * 1024);
    assert!(used_bytes > 2 * 1024 * 1024, "{used_bytes}");

    session_in
        .write_all(b"INSERT INTO t (v) VALUES ('late');\n")
        .await
        .unwrap();
    drop(session_in);
    let ended = session.wait_with_output().await.unwrap();
    assert!(!ended.status.success(), "the old session still wrote");

    let err = own(&a, "INSERT INTO t (v) VALUES ('more')")
        .await
        .unwrap_err();
    assert!(err.contains("INSERT command denied"), "{err}");
    let err = own(&a, "UPDATE t SET v = 'x' WHERE id = 1")
        .await
        .unwrap_err();
    assert!(err.contains("UPDATE command denied"), "{err}");
    let err = own(&a, "CREATE TABLE t2 (x INT)").await.unwrap_err();
    assert!(err.contains("CREATE command denied"), "{err}");
    assert_eq!(
        own(&a, "SELECT COUNT(*) FROM t WHERE v = 'late'")
            .await
            .unwrap(),
        "0"
    );
    // The other instance is not affected.
    own(&b, "INSERT INTO t (v) VALUES ('b still writes')")
        .await
        .unwrap();

    // The state is remembered across a restart: nothing changes, writes stay refused.
    test.restart().await;
    assert!(test.node().enforce_size_limits().await.unwrap().is_empty());
    let err = own(&a, "INSERT INTO t (v) VALUES ('more')")
        .await
        .unwrap_err();
    assert!(err.contains("INSERT command denied"), "{err}");

    // Trimming works while over; once measured under, ALL is back.
    own(&a, "DELETE FROM t WHERE id > 10").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let restored = loop {
        let changes = test.node().enforce_size_limits().await.unwrap();
        if let Some(change) = changes.into_iter().find(|c| c.id == ia) {
            break change;
        }
        // InnoDB frees deleted rows' pages in the background (purge).
        assert!(Instant::now() < deadline, "never measured under the limit");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(restored.writable);
    assert!(restored.used_bytes <= restored.limit_bytes);
    own(
        &a,
        "INSERT INTO t (v) VALUES ('after trim'); OPTIMIZE TABLE t",
    )
    .await
    .unwrap();
    assert!(test.node().enforce_size_limits().await.unwrap().is_empty());
    test.stop().await;
}
