//! The postgresql node against a real PostgreSQL cluster from the Debian binaries: tenants
//! connect with the real `psql` over TCP at the node's reachable address, exactly as apps
//! would with the credentials from `VCAP_SERVICES`.

mod common;
use common::{address, id, plan, uids};

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use strato_services::address::default_route_address;
use strato_services::postgresql::{PostgresNode, QuotaChange};
use strato_services::{Credentials, NodeConfig, ServiceError, ServiceNode};

/// A node in its own temp dir; dropping it (also on a failed assertion) kills the server
/// before the directory goes.
struct TestNode {
    node: Option<PostgresNode>,
    config: NodeConfig,
    dir: tempfile::TempDir,
}

impl TestNode {
    async fn start(capacity: u64) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        // The postgres user must traverse the node dir's parents (DESIGN: 0711 parents).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let config = NodeConfig {
            dir: dir.path().join("postgresql"),
            address: address(),
            port: 0,
            port_range: None,
            capacity,
        };
        let started = Instant::now();
        let node = PostgresNode::open(config.clone()).await.expect("open node");
        eprintln!("open (first, with initdb): {:?}", started.elapsed());
        TestNode {
            node: Some(node),
            config,
            dir,
        }
    }

    fn node(&self) -> &PostgresNode {
        self.node.as_ref().expect("node is open")
    }

    /// Shuts the server down cleanly and opens the same directory again.
    async fn reopen(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
        let started = Instant::now();
        self.node = Some(
            PostgresNode::open(self.config.clone())
                .await
                .expect("reopen"),
        );
        eprintln!("open (existing cluster): {:?}", started.elapsed());
    }

    async fn finish(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
        let _ = &self.dir;
    }
}

/// Runs `sql` with the real psql as `creds` over TCP; Ok(output) or Err(stderr).
async fn psql(creds: &Credentials, database: &str, sql: &str) -> Result<String, String> {
    let out = tokio::process::Command::new("/usr/bin/psql")
        .args([
            "--no-psqlrc",
            "--tuples-only",
            "--no-align",
            "--set=ON_ERROR_STOP=1",
        ])
        .arg(format!("--host={}", creds.host))
        .arg(format!("--port={}", creds.port))
        .arg(format!("--username={}", creds.user))
        .arg(format!("--dbname={database}"))
        .arg("--command")
        .arg(sql)
        .env("PGPASSWORD", &creds.password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

async fn own(creds: &Credentials, sql: &str) -> Result<String, String> {
    psql(creds, &creds.name, sql).await
}

fn uid_of(pid: u32) -> u32 {
    let all = uids(pid);
    assert!(all.iter().all(|u| *u == all[0]), "{all:?}");
    all[0]
}

#[tokio::test]
async fn provision_write_read_bind_and_the_server_is_not_root() {
    let t = TestNode::start(10).await;
    let node = t.node();

    let pid = node.server_pid().expect("server runs");
    if nix::unistd::geteuid().is_root() {
        let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        assert_eq!(uid_of(pid), postgres.uid.as_raw());
        assert_ne!(uid_of(pid), 0);
    }

    let a = id("aaaa-1111");
    let started = Instant::now();
    let creds = node.provision(&a, &plan(10)).await.unwrap();
    eprintln!("provision: {:?}", started.elapsed());
    assert_eq!(creds.host, t.config.address.to_string());
    assert!(!creds.host.starts_with("127.") || default_route_address().is_none());
    assert_eq!(creds.port, node.port());
    assert!(creds.password.len() >= 24);
    assert!(creds.uri.starts_with("postgres://"));

    own(
        &creds,
        "create table notes (v text); insert into notes values ('hello')",
    )
    .await
    .unwrap();
    assert_eq!(own(&creds, "select v from notes").await.unwrap(), "hello");
    let owner = own(
        &creds,
        "select tableowner from pg_tables where tablename = 'notes'",
    )
    .await
    .unwrap();
    assert_eq!(owner, creds.user);

    // bind gives working credentials; provisioning again is idempotent; another plan conflicts.
    let bound = node.bind(&a, "binding-1").await.unwrap();
    assert_eq!(own(&bound, "select v from notes").await.unwrap(), "hello");
    node.unbind(&a, "binding-1").await.unwrap();
    assert_eq!(node.provision(&a, &plan(10)).await.unwrap(), creds);
    assert!(matches!(
        node.provision(&a, &plan(20)).await,
        Err(ServiceError::Conflict(_))
    ));
    assert!(matches!(
        node.bind(&id("nope"), "b").await,
        Err(ServiceError::NotFound(_))
    ));

    // The server listens only at the node's address, not on loopback as well.
    if !t.config.address.is_loopback() {
        let mut loopback = creds.clone();
        loopback.host = "127.0.0.1".into();
        let err = own(&loopback, "select 1").await.unwrap_err();
        assert!(err.contains("refused"), "{err}");
    }
    // Passwords never reach the server's log.
    let log = std::fs::read_to_string(t.config.dir.join("postgresql.log")).unwrap();
    assert!(log.contains("ready to accept connections"));
    assert!(!log.contains(&creds.password));

    // The superuser cannot log in over TCP, whatever the password.
    let mut superuser = creds.clone();
    superuser.user = "postgres".into();
    let err = psql(&superuser, "postgres", "select 1").await.unwrap_err();
    assert!(
        err.contains("rejects connection") || err.contains("authentication failed"),
        "{err}"
    );
    t.finish().await;
}

#[tokio::test]
async fn tenants_are_refused_at_connect_to_each_others_databases() {
    let t = TestNode::start(10).await;
    let node = t.node();
    let a = node.provision(&id("tenant-a"), &plan(10)).await.unwrap();
    let b = node.provision(&id("tenant-b"), &plan(10)).await.unwrap();
    own(
        &b,
        "create table secret (v text); insert into secret values ('b-only')",
    )
    .await
    .unwrap();

    for (database, sql) in [
        (b.name.as_str(), "select v from secret"),
        (b.name.as_str(), "insert into secret values ('from a')"),
        ("postgres", "select 1"),
        ("template1", "select 1"),
    ] {
        let err = psql(&a, database, sql).await.unwrap_err();
        assert!(
            err.contains("permission denied for database"),
            "A reached {database}: {err}"
        );
    }
    // B's password with A's login is not accepted either.
    let mut mixed = a.clone();
    mixed.password = b.password.clone();
    let err = own(&mixed, "select 1").await.unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");
    assert_eq!(own(&b, "select v from secret").await.unwrap(), "b-only");
    t.finish().await;
}

#[tokio::test]
async fn deprovision_removes_the_data_and_reopen_keeps_everything_else() {
    let mut t = TestNode::start(10).await;
    let keep = id("keep-1");
    let gone = id("gone-1");
    let kept = t.node().provision(&keep, &plan(10)).await.unwrap();
    let removed = t.node().provision(&gone, &plan(10)).await.unwrap();
    own(&kept, "create table t (v int); insert into t values (42)")
        .await
        .unwrap();
    own(&removed, "create table t (v int); insert into t values (7)")
        .await
        .unwrap();

    t.node().deprovision(&gone).await.unwrap();
    t.node().deprovision(&gone).await.unwrap(); // idempotent
    let err = own(&removed, "select v from t").await.unwrap_err();
    assert!(
        err.contains("authentication failed") || err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(t.node().instances().await.unwrap(), vec![keep.clone()]);

    // Provisioning the removed id again starts empty, with a new password.
    let fresh = t.node().provision(&gone, &plan(10)).await.unwrap();
    assert_ne!(fresh.password, removed.password);
    let err = own(&fresh, "select v from t").await.unwrap_err();
    assert!(err.contains("does not exist"), "{err}");

    let port = t.node().port();
    t.reopen().await;
    assert_eq!(t.node().port(), port, "the port is kept across restarts");
    let mut ids = t.node().instances().await.unwrap();
    ids.sort();
    assert_eq!(ids, vec![gone.clone(), keep.clone()]);
    assert_eq!(own(&kept, "select v from t").await.unwrap(), "42");
    assert_eq!(t.node().bind(&keep, "b").await.unwrap(), kept);
    t.finish().await;
}

#[tokio::test]
async fn capacity_is_enforced() {
    let t = TestNode::start(1).await;
    let node = t.node();
    node.provision(&id("first"), &plan(10)).await.unwrap();
    match node.provision(&id("second"), &plan(10)).await {
        Err(ServiceError::Capacity { limit, key }) => {
            assert_eq!(limit, 1);
            assert_eq!(key, "postgresql_node/capacity");
        }
        other => panic!("expected a capacity error, got {other:?}"),
    }
    // Nothing of the refused instance exists; the existing one still provisions idempotently.
    assert_eq!(node.instances().await.unwrap(), vec![id("first")]);
    node.provision(&id("first"), &plan(10)).await.unwrap();
    t.finish().await;
}

#[tokio::test]
async fn an_acknowledged_write_survives_kill_9_of_the_server() {
    let t = TestNode::start(10).await;
    let node = t.node();
    let creds = node.provision(&id("durable"), &plan(10)).await.unwrap();
    own(&creds, "create table t (v text)").await.unwrap();
    own(&creds, "insert into t values ('acknowledged')")
        .await
        .unwrap();

    let first = node.server_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    strato_services::server::wait_until(Duration::from_secs(30), "restart", || async {
        node.server_pid().is_some_and(|p| p != first)
    })
    .await
    .unwrap();
    node.wait_until_ready(Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!("kill -9 -> ready again: {:?}", killed.elapsed());
    assert!(node.server_starts() >= 2);
    assert_eq!(
        own(&creds, "select v from t").await.unwrap(),
        "acknowledged"
    );
    t.finish().await;
}

#[tokio::test]
async fn export_from_one_instance_imports_into_another() {
    let t = TestNode::start(10).await;
    let node = t.node();
    let (a_id, b_id) = (id("export-a"), id("import-b"));
    let a = node.provision(&a_id, &plan(10)).await.unwrap();
    let b = node.provision(&b_id, &plan(10)).await.unwrap();
    own(
        &a,
        "create table items (id serial primary key, name text); \
         insert into items (name) values ('one'), ('two'), ('three')",
    )
    .await
    .unwrap();

    let mut dump = Vec::new();
    node.export(&a_id, &mut dump).await.unwrap();
    let text = String::from_utf8_lossy(&dump);
    assert!(text.contains("CREATE TABLE public.items"), "{text}");
    assert!(
        !text.contains(&a.user),
        "the dump names no owner or grantee"
    );

    node.import(&b_id, &mut dump.as_slice()).await.unwrap();
    assert_eq!(
        own(&b, "select string_agg(name, ',' order by id) from items")
            .await
            .unwrap(),
        "one,two,three"
    );
    let owner = own(
        &b,
        "select tableowner from pg_tables where tablename = 'items'",
    )
    .await
    .unwrap();
    assert_eq!(owner, b.user, "imported objects belong to B's login");
    // The sequence came along: B can keep inserting.
    own(&b, "insert into items (name) values ('four')")
        .await
        .unwrap();

    // A dump that fails part-way leaves nothing behind (one transaction).
    let bad = b"create table half (v int);\nthis is not sql;\n";
    let err = node.import(&b_id, &mut bad.as_slice()).await.unwrap_err();
    assert!(err.to_string().contains("syntax error"), "{err}");
    assert!(!err.to_string().contains(&b.password));
    let half = own(
        &b,
        "select count(*) from pg_tables where tablename = 'half'",
    )
    .await;
    assert_eq!(half.unwrap(), "0");
    t.finish().await;
}

#[tokio::test]
async fn usage_grows_with_data() {
    let t = TestNode::start(10).await;
    let node = t.node();
    let i = id("usage-1");
    let creds = node.provision(&i, &plan(10)).await.unwrap();
    let empty = node.usage_bytes(&i).await.unwrap();
    assert!(
        empty < 64 * 1024,
        "an empty database counts ~0, got {empty}"
    );
    own(
        &creds,
        "create table t (v text); insert into t select repeat('x', 1000) from generate_series(1, 1000)",
    )
    .await
    .unwrap();
    let full = node.usage_bytes(&i).await.unwrap();
    assert!(full >= empty + 1_000_000, "{empty} -> {full}");
    t.finish().await;
}

async fn fill(creds: &Credentials, rows: u32) -> Result<String, String> {
    own(
        creds,
        &format!("insert into t select repeat('x', 1000) from generate_series(1, {rows})"),
    )
    .await
}

fn assert_refused(result: Result<String, String>, what: &str) {
    let err = result.expect_err(what);
    assert!(
        err.contains("permission denied") || err.contains("must be owner"),
        "{what}: {err}"
    );
}

#[tokio::test]
async fn over_its_size_limit_an_instance_refuses_writes_until_trimmed() {
    let mut t = TestNode::start(10).await;
    let (small, other) = (id("quota-small"), id("quota-other"));
    let creds = t.node().provision(&small, &plan(1)).await.unwrap();
    let neighbour = t.node().provision(&other, &plan(1)).await.unwrap();
    own(&creds, "create table t (v text)").await.unwrap();
    own(&neighbour, "create table n (v text)").await.unwrap();
    assert_eq!(t.node().enforce_size_limits().await.unwrap(), vec![]);

    fill(&creds, 2000).await.unwrap(); // ~2 MB against 1 MB
    let changes = t.node().enforce_size_limits().await.unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    let QuotaChange {
        id: changed,
        used_bytes,
        limit_bytes,
        writable,
    } = changes[0].clone();
    assert_eq!(
        (changed, writable, limit_bytes),
        (small.clone(), false, 1024 * 1024)
    );
    assert!(used_bytes > limit_bytes);
    assert!(!t.node().is_writable(&small).await.unwrap());

    // Writes fail with PostgreSQL's own error; reading still works.
    assert_refused(fill(&creds, 1).await, "insert over quota");
    assert_refused(
        own(&creds, "update t set v = 'y'").await,
        "update over quota",
    );
    assert_refused(
        own(&creds, "create table more (v text)").await,
        "create over quota",
    );
    assert_refused(
        own(&creds, "create temp table tmp (v text)").await,
        "temp over quota",
    );
    assert_eq!(own(&creds, "select count(*) from t").await.unwrap(), "2000");
    // ... and the tenant cannot undo it.
    let _ = own(&creds, "grant insert on t to current_user").await;
    assert_refused(fill(&creds, 1).await, "insert after self-grant");
    assert_refused(
        own(&creds, "alter table t owner to current_user").await,
        "alter owner",
    );
    let holder = own(
        &creds,
        "select tableowner from pg_tables where tablename = 't'",
    )
    .await
    .unwrap();
    assert_refused(own(&creds, &format!("set role {holder}")).await, "set role");
    assert_refused(
        own(
            &creds,
            &format!("alter database {} owner to current_user", creds.name),
        )
        .await,
        "alter database",
    );
    // Other instances are unaffected.
    own(&neighbour, "insert into n values ('fine')")
        .await
        .unwrap();

    // The state survives a restart.
    t.reopen().await;
    assert_eq!(t.node().enforce_size_limits().await.unwrap(), vec![]);
    assert_refused(fill(&creds, 1).await, "insert over quota after restart");

    // Trimming is allowed, and then writes come back.
    own(&creds, "delete from t").await.unwrap();
    let changes = t.node().enforce_size_limits().await.unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(changes[0].writable && changes[0].id == small);
    assert!(changes[0].used_bytes <= changes[0].limit_bytes);
    fill(&creds, 10).await.unwrap();
    own(&creds, "create table more (v text)").await.unwrap();
    let owner = own(
        &creds,
        "select tableowner from pg_tables where tablename = 't'",
    )
    .await
    .unwrap();
    assert_eq!(owner, creds.user);
    t.finish().await;
}
