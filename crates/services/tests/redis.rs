//! The Redis node against real redis-server processes (Debian's), reached with the real
//! redis-cli through the credentials the node hands out: provision, bind, isolation
//! between instances, maxmemory, kill -9 durability, export/import, re-open.

mod common;
use common::{address, id, plan, uids};

use std::time::{Duration, Instant};

use strato_services::redis::RedisNode;
use strato_services::server::wait_until;
use strato_services::{Credentials, NodeConfig, ServiceError, ServiceNode};
use tempfile::TempDir;

/// A node in its own temp dir. Field order matters: the node (and its servers, killed on
/// drop) goes before the directory, also when a test fails.
struct TestNode {
    node: RedisNode,
    dir: TempDir,
}

fn config(dir: &TempDir, capacity: u64) -> NodeConfig {
    NodeConfig {
        dir: dir.path().to_path_buf(),
        address: address(),
        port: 0,
        port_range: None,
        capacity,
    }
}

async fn open(capacity: u64) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let node = RedisNode::open(config(&dir, capacity)).await.unwrap();
    eprintln!("open (empty): {:?}", started.elapsed());
    TestNode { node, dir }
}

async fn provision(t: &TestNode, name: &str, size_mb: u64) -> Credentials {
    let started = Instant::now();
    let creds = t.node.provision(&id(name), &plan(size_mb)).await.unwrap();
    eprintln!("provision {name}: {:?}", started.elapsed());
    creds
}

/// redis-cli with `password` against the credentials' host and port; stdout + stderr.
async fn cli_as(creds: &Credentials, password: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new("redis-cli")
        .args([
            "-h",
            &creds.host,
            "-p",
            &creds.port.to_string(),
            "--no-auth-warning",
        ])
        .args(args)
        .env("REDISCLI_AUTH", password)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text.trim().to_string()
}

async fn cli(creds: &Credentials, args: &[&str]) -> String {
    cli_as(creds, &creds.password, args).await
}

async fn set(creds: &Credentials, key: &str, value: &str) {
    assert_eq!(cli(creds, &["SET", key, value]).await, "OK");
}

async fn pid(t: &TestNode, name: &str) -> u32 {
    t.node.server_pid(&id(name)).await.expect("server running")
}

/// kill -9 of the instance's server, then waits until the supervisor's new one answers.
async fn kill_9_and_wait(t: &TestNode, name: &str, creds: &Credentials) {
    let old = pid(t, name).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(Duration::from_secs(15), "restarted redis", || async {
        t.node.server_pid(&id(name)).await.is_some_and(|p| p != old)
            && cli(creds, &["PING"]).await == "PONG"
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn provision_gives_working_credentials_and_a_server_that_is_not_root() {
    let t = open(4).await;
    let creds = provision(&t, "inst-a", 64).await;
    assert_eq!(creds.host, address().to_string());
    assert_eq!(creds.hostname, creds.host);
    assert!(creds.password.len() >= 24);
    assert_eq!(creds.name, id("inst-a").db_name("r"));
    assert_eq!(
        creds.uri,
        format!("redis://:{}@{}:{}/", creds.password, creds.host, creds.port)
    );
    set(&creds, "greeting", "hello").await;
    assert_eq!(cli(&creds, &["GET", "greeting"]).await, "hello");

    // Idempotent provision; another plan is a conflict.
    let again = t.node.provision(&id("inst-a"), &plan(64)).await.unwrap();
    assert_eq!(again, creds);
    let err = t
        .node
        .provision(&id("inst-a"), &plan(32))
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Conflict(_)), "{err}");

    // Binding gives credentials that work.
    let bound = t.node.bind(&id("inst-a"), "binding-1").await.unwrap();
    assert_eq!(cli(&bound, &["GET", "greeting"]).await, "hello");
    t.node.unbind(&id("inst-a"), "binding-1").await.unwrap();
    assert!(matches!(
        t.node.bind(&id("nope"), "b").await,
        Err(ServiceError::NotFound(_))
    ));

    // The server runs as the redis user, with no secret in argv, config private.
    let server = pid(&t, "inst-a").await;
    let uid = uids(server);
    assert!(uid.iter().all(|u| *u != 0), "uids {uid:?}");
    let cmdline = std::fs::read(format!("/proc/{server}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&creds.password));
    let conf = t.dir.path().join("instances/inst-a/redis.conf");
    let meta = std::fs::metadata(&conf).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        meta.uid(),
        uid[0],
        "the config belongs to the server's user"
    );

    // The app cannot change its own limits or persistence, nor stop the server.
    for command in [
        &["CONFIG", "SET", "maxmemory", "0"][..],
        &["CONFIG", "GET", "requirepass"],
        &["SHUTDOWN", "NOSAVE"],
        &["DEBUG", "SLEEP", "0"],
        &["BGREWRITEAOF"],
        &["ACL", "SETUSER", "default", "nopass"],
    ] {
        let out = cli(&creds, command).await;
        assert!(out.contains("unknown command"), "{command:?}: {out}");
    }
    assert_eq!(cli(&creds, &["PING"]).await, "PONG");
    t.node.shutdown().await;
}

#[tokio::test]
async fn deprovision_removes_the_server_and_its_data() {
    let t = open(4).await;
    let creds = provision(&t, "gone", 16).await;
    set(&creds, "k", "v").await;
    let data = t.dir.path().join("instances/gone");
    assert!(data.join("appendonlydir").exists());
    t.node.deprovision(&id("gone")).await.unwrap();
    assert!(!data.exists());
    assert!(t.node.instances().await.unwrap().is_empty());
    assert!(t.node.server_pid(&id("gone")).await.is_none());
    let out = cli(&creds, &["GET", "k"]).await;
    assert!(
        out.contains("refused") || out.contains("Could not connect"),
        "{out}"
    );
    // Idempotent, and a new instance of the same id starts empty with a new password.
    t.node.deprovision(&id("gone")).await.unwrap();
    let fresh = provision(&t, "gone", 16).await;
    assert_ne!(fresh.password, creds.password);
    assert_eq!(cli(&fresh, &["EXISTS", "k"]).await, "0");
    t.node.shutdown().await;
}

#[tokio::test]
async fn reopening_keeps_data_credentials_and_ports() {
    let t = open(4).await;
    let one = provision(&t, "keep-1", 16).await;
    let two = provision(&t, "keep-2", 16).await;
    set(&one, "a", "1").await;
    set(&two, "b", "2").await;
    t.node.shutdown().await;
    let out = cli(&one, &["PING"]).await;
    assert!(
        out.contains("refused") || out.contains("Could not connect"),
        "{out}"
    );

    let started = Instant::now();
    let node = RedisNode::open(config(&t.dir, 4)).await.unwrap();
    eprintln!("re-open with 2 instances: {:?}", started.elapsed());
    let t = TestNode { node, dir: t.dir };
    let mut ids = t.node.instances().await.unwrap();
    ids.sort();
    assert_eq!(ids, vec![id("keep-1"), id("keep-2")]);
    assert_eq!(t.node.bind(&id("keep-1"), "b").await.unwrap(), one);
    assert_eq!(cli(&one, &["GET", "a"]).await, "1");
    assert_eq!(cli(&two, &["GET", "b"]).await, "2");
    t.node.shutdown().await;
}

#[tokio::test]
async fn capacity_is_enforced() {
    let t = open(1).await;
    provision(&t, "only", 16).await;
    let err = t
        .node
        .provision(&id("second"), &plan(16))
        .await
        .unwrap_err();
    match &err {
        ServiceError::Capacity { limit, key } => {
            assert_eq!(*limit, 1);
            assert_eq!(key, "redis_node/capacity");
        }
        other => panic!("expected a capacity error, got {other}"),
    }
    assert!(!t.dir.path().join("instances/second").exists());
    assert_eq!(t.node.instances().await.unwrap(), vec![id("only")]);
    // A plan without memory is refused rather than run without a limit.
    t.node.deprovision(&id("only")).await.unwrap();
    assert!(t.node.provision(&id("zero"), &plan(0)).await.is_err());
    t.node.shutdown().await;
}

#[tokio::test]
async fn one_instance_cannot_reach_another() {
    let t = open(4).await;
    let a = provision(&t, "tenant-a", 16).await;
    let b = provision(&t, "tenant-b", 16).await;
    assert_ne!(a.port, b.port);
    assert_ne!(a.password, b.password);
    set(&b, "secret", "b-data").await;

    // A's password on B's port: refused at AUTH, then nothing can be read or written.
    let read = cli_as(&b, &a.password, &["GET", "secret"]).await;
    assert!(read.contains("WRONGPASS"), "{read}");
    assert!(read.contains("NOAUTH"), "{read}");
    assert!(!read.contains("b-data"), "{read}");
    let write = cli_as(&b, &a.password, &["SET", "secret", "a-was-here"]).await;
    assert!(write.contains("NOAUTH"), "{write}");
    let empty = cli_as(&b, "", &["GET", "secret"]).await;
    assert!(empty.contains("NOAUTH"), "{empty}");
    assert_eq!(cli(&b, &["GET", "secret"]).await, "b-data");
    // A's own instance does not have B's data.
    assert_eq!(cli(&a, &["EXISTS", "secret"]).await, "0");
    t.node.shutdown().await;
}

#[tokio::test]
async fn an_acknowledged_write_survives_kill_9() {
    let t = open(4).await;
    let creds = provision(&t, "durable", 16).await;
    set(&creds, "ack", "before-kill").await;
    assert_eq!(cli(&creds, &["INCR", "counter"]).await, "1");
    kill_9_and_wait(&t, "durable", &creds).await;
    assert_eq!(cli(&creds, &["GET", "ack"]).await, "before-kill");
    assert_eq!(cli(&creds, &["GET", "counter"]).await, "1");
    t.node.shutdown().await;
}

#[tokio::test]
async fn maxmemory_refuses_writes_with_redis_oom_error_and_spares_others() {
    let t = open(4).await;
    let small = provision(&t, "small", 2).await;
    let big = provision(&t, "big", 64).await;
    // 256 KiB per key: a 2 MiB instance is full after a few.
    let mut refused = None;
    for i in 0..40 {
        let out = cli(&small, &["SETRANGE", &format!("k{i}"), "262144", "x"]).await;
        if out.contains("OOM") {
            refused = Some((i, out));
            break;
        }
    }
    let (at, error) = refused.expect("writes over maxmemory are refused");
    assert!(
        error.contains("OOM command not allowed when used memory > 'maxmemory'"),
        "{error}"
    );
    assert!(at <= 12, "refused only after {at} writes of 256 KiB");
    // Reads still work, and other instances write 4 MiB without trouble.
    assert_eq!(cli(&small, &["EXISTS", "k0"]).await, "1");
    assert_eq!(
        cli(&big, &["SETRANGE", "large", "4194304", "x"]).await,
        "4194305"
    );
    // Trimming makes room again.
    let keys: Vec<String> = (0..at).map(|i| format!("k{i}")).collect();
    let mut del = vec!["DEL"];
    del.extend(keys.iter().map(String::as_str));
    assert_eq!(cli(&small, &del).await, at.to_string());
    assert_eq!(cli(&small, &["SET", "after", "trim"]).await, "OK");
    t.node.shutdown().await;
}

#[tokio::test]
async fn usage_grows_with_data() {
    let t = open(4).await;
    let creds = provision(&t, "used", 64).await;
    let before = t.node.usage_bytes(&id("used")).await.unwrap();
    assert!(before > 0);
    assert_eq!(
        cli(&creds, &["SETRANGE", "blob", "1048576", "x"]).await,
        "1048577"
    );
    let after = t.node.usage_bytes(&id("used")).await.unwrap();
    assert!(
        after >= before + 1_000_000,
        "before {before}, after {after}"
    );
    assert!(t.node.usage_bytes(&id("nope")).await.is_err());
    t.node.shutdown().await;
}

#[tokio::test]
async fn export_then_import_moves_the_data_and_it_survives_kill_9() {
    let t = open(4).await;
    let a = provision(&t, "source", 16).await;
    let b = provision(&t, "target", 16).await;
    set(&a, "from-a", "exported").await;
    assert_eq!(cli(&a, &["RPUSH", "list", "x", "y", "z"]).await, "3");
    set(&b, "only-in-b", "old").await;

    let started = Instant::now();
    let mut dump = Vec::new();
    t.node.export(&id("source"), &mut dump).await.unwrap();
    eprintln!("export: {:?} ({} bytes)", started.elapsed(), dump.len());
    assert!(dump.starts_with(b"REDIS"));
    // A garbage import is refused and leaves B as it was.
    let err = t
        .node
        .import(&id("target"), &mut &b"not an rdb"[..])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("RDB"), "{err}");
    assert_eq!(cli(&b, &["GET", "only-in-b"]).await, "old");

    let started = Instant::now();
    t.node.import(&id("target"), &mut &dump[..]).await.unwrap();
    eprintln!("import: {:?}", started.elapsed());
    // B keeps its own credentials and now has A's data only.
    assert_eq!(cli(&b, &["GET", "from-a"]).await, "exported");
    assert_eq!(cli(&b, &["LRANGE", "list", "0", "-1"]).await, "x\ny\nz");
    assert_eq!(cli(&b, &["EXISTS", "only-in-b"]).await, "0");
    // The imported data is in the AOF: it survives kill -9 (and so does a new write).
    set(&b, "after-import", "too").await;
    kill_9_and_wait(&t, "target", &b).await;
    assert_eq!(cli(&b, &["GET", "from-a"]).await, "exported");
    assert_eq!(cli(&b, &["GET", "after-import"]).await, "too");
    // A is untouched, and no snapshot file is left behind.
    assert_eq!(cli(&a, &["GET", "from-a"]).await, "exported");
    assert!(!t.dir.path().join("instances/source/dump.rdb").exists());
    assert!(!t.dir.path().join("instances/target/dump.rdb").exists());
    t.node.shutdown().await;
}

#[tokio::test]
async fn a_failed_import_leaves_the_previous_data() {
    let t = open(4).await;
    let creds = provision(&t, "keeps", 16).await;
    set(&creds, "mine", "still-here").await;
    // Passes the magic check, but redis-server refuses to load it.
    let mut broken = b"REDIS0011".to_vec();
    broken.extend_from_slice(&[0xfe; 64]);
    let err = t
        .node
        .import(&id("keeps"), &mut &broken[..])
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Unavailable { .. }), "{err}");
    assert_eq!(cli(&creds, &["GET", "mine"]).await, "still-here");
    kill_9_and_wait(&t, "keeps", &creds).await;
    assert_eq!(cli(&creds, &["GET", "mine"]).await, "still-here");
    t.node.shutdown().await;
}

#[tokio::test]
async fn reopening_undoes_an_import_interrupted_by_a_crash() {
    let t = open(4).await;
    let creds = provision(&t, "crashed", 16).await;
    set(&creds, "k", "before-import").await;
    t.node.shutdown().await;
    // What a crash between "AOF set aside" and the commit point leaves behind.
    let dir = t.dir.path().join("instances/crashed");
    std::fs::rename(
        dir.join("appendonlydir"),
        dir.join("appendonlydir.before-import"),
    )
    .unwrap();
    std::fs::create_dir(dir.join("appendonlydir")).unwrap();
    std::fs::write(dir.join("dump.rdb"), b"REDIS0011 half written").unwrap();

    let node = RedisNode::open(config(&t.dir, 4)).await.unwrap();
    let t = TestNode { node, dir: t.dir };
    assert_eq!(cli(&creds, &["GET", "k"]).await, "before-import");
    assert!(!dir.join("appendonlydir.before-import").exists());
    assert!(!dir.join("dump.rdb").exists());
    t.node.shutdown().await;
}

#[tokio::test]
async fn an_instance_whose_port_is_taken_does_not_stop_the_node() {
    let t = open(4).await;
    let blocked = provision(&t, "blocked", 16).await;
    let fine = provision(&t, "fine", 16).await;
    set(&blocked, "k", "v").await;
    t.node.shutdown().await;
    let squatter = std::net::TcpListener::bind((address(), blocked.port)).unwrap();

    let node = RedisNode::open(config(&t.dir, 4)).await.unwrap();
    let t = TestNode { node, dir: t.dir };
    assert_eq!(cli(&fine, &["PING"]).await, "PONG");
    assert!(t.node.usage_bytes(&id("blocked")).await.is_err());
    // Once the port is free again the supervisor's retries bring it back, data intact.
    drop(squatter);
    wait_until(Duration::from_secs(30), "blocked instance", || async {
        cli(&blocked, &["PING"]).await == "PONG"
    })
    .await
    .unwrap();
    assert_eq!(cli(&blocked, &["GET", "k"]).await, "v");
    t.node.shutdown().await;
}
