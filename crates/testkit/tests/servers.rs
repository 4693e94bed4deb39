//! The harness's servers really start, accept clients and leave nothing behind.

use std::io::Read;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use strato_testkit::{NatsServer, Postgres};

fn nats_greeting(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut greeting = [0u8; 4];
    stream.read_exact(&mut greeting)?;
    Ok(String::from_utf8_lossy(&greeting).into_owned())
}

#[test]
fn nats_server_starts_survives_a_restart_and_is_gone_after_drop() {
    let mut server = NatsServer::start().expect("nats-server should start");
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    assert_eq!(nats_greeting(server.port()).unwrap(), "INFO");
    assert!(
        server.store_dir().exists(),
        "JetStream should create its store"
    );

    server.kill();
    assert!(!server.is_running());
    assert!(
        nats_greeting(server.port()).is_err(),
        "a killed server accepts nothing"
    );

    server.restart().expect("restart on the same port");
    assert!(server.is_running());
    assert_eq!(nats_greeting(server.port()).unwrap(), "INFO");

    let port = server.port();
    let store = server.store_dir();
    drop(server);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!store.exists(), "the temp dir must be removed");
}

#[test]
fn postgres_accepts_the_password_user_and_rejects_a_wrong_password() {
    let postgres = Postgres::start().expect("PostgreSQL should start");
    let port = postgres.port();
    assert_eq!(
        postgres.url(),
        format!(
            "postgres://strato:{}@127.0.0.1:{port}/strato",
            postgres.password()
        )
    );
    TcpStream::connect(("127.0.0.1", port)).expect("the server listens on loopback");

    let who = postgres
        .psql("select current_user || '|' || current_database()")
        .unwrap();
    assert_eq!(who.trim(), "strato|strato");
    postgres
        .psql("create table t (n int); insert into t values (41), (1)")
        .unwrap();
    assert_eq!(postgres.psql("select sum(n) from t").unwrap().trim(), "42");

    let wrong = postgres
        .url()
        .replace(postgres.password(), "not-the-password");
    let status = Command::new("/usr/bin/psql")
        .args(["--no-psqlrc", "--command", "select 1", &wrong])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    assert!(
        !status.status.success(),
        "a wrong password must be rejected"
    );
    assert!(String::from_utf8_lossy(&status.stderr).contains("password authentication failed"));

    postgres.create_database("other").unwrap();
    let other = Command::new("/usr/bin/psql")
        .args([
            "--no-psqlrc",
            "-At",
            "--command",
            "select current_database()",
        ])
        .arg(postgres.url_for("other"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&other.stdout).trim(), "other");

    let socket_dir = postgres.socket_dir();
    drop(postgres);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server must be stopped"
    );
    assert!(!socket_dir.exists(), "the temp dir must be removed");
}

#[test]
fn two_clusters_run_side_by_side() {
    let first = Postgres::start().unwrap();
    let second = Postgres::start().unwrap();
    assert_ne!(first.port(), second.port());
    first.psql("create table only_in_first (n int)").unwrap();
    assert!(second.psql("select * from only_in_first").is_err());
}
