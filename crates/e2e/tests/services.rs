//! Data services as a user meets them: `services:` in stackato.yml creates and binds a
//! MySQL, a PostgreSQL, a Redis and a filesystem service at push; the app writes and reads
//! each through the variables the platform sets; seed 001's post-staging hook preloads
//! MySQL; data survives restart and redeploy; the filesystem is shared by two instances;
//! binding rules (DATABASE_URL with exactly one relational database) and bad input.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use strato_e2e::{fixture, MicroCloud};

const HOST: &str = "svcfixture.localhost";

/// GET through the router, as JSON (panics with the stratod log when it is not).
fn get_json(mc: &MicroCloud, path: &str) -> Value {
    let (status, body) = mc.get(HOST, path);
    let v: Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| {
        panic!(
            "{path}: status {status}, not JSON ({e}): {body}\n{}",
            mc.log_tail()
        )
    });
    assert_eq!(status, 200, "{path}: {v}");
    v
}

fn values(mc: &MicroCloud, service: &str) -> Vec<String> {
    get_json(mc, &format!("/get/{service}"))["values"]
        .as_array()
        .unwrap_or_else(|| panic!("no values for {service}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits until the marketplace offers every one of `labels` (the service roles start
/// with stratod; initdb and mariadb-install-db take a few seconds).
fn wait_until_offered(mc: &MicroCloud, dir: &Path, labels: &[&str]) {
    let until = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    while Instant::now() < until {
        let out = mc.strato(dir, &["marketplace", "--json"]);
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Ok(Value::Array(list)) = serde_json::from_str::<Value>(&last) {
            let offered: Vec<&str> = list
                .iter()
                .filter_map(|s| s["entity"]["label"].as_str())
                .collect();
            if labels.iter().all(|l| offered.contains(l)) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "the marketplace never offered {labels:?}; last: {last}\n{}",
        mc.log_tail()
    );
}

const ALL_TYPES: &[&str] = &["mysql", "postgresql", "redis", "filesystem"];

#[test]
fn services_are_created_bound_used_and_survive_redeploy() {
    let mc = MicroCloud::start_with_roles("micro").expect("micro cloud with services");
    mc.login();
    let here = mc.client_home.path();
    wait_until_offered(&mc, here, ALL_TYPES);

    // A copy of the fixture we can change for the redeploy.
    let app = tempfile::tempdir().unwrap();
    for f in ["app.py", "preload.py", "requirements.txt", "stackato.yml"] {
        std::fs::copy(fixture("services").join(f), app.path().join(f)).unwrap();
    }
    let out = mc.strato_ok(app.path(), &["push", "-n"]);
    assert!(
        out.contains("preloaded the mysql service") || mc.log_tail().contains("preloaded"),
        "the post-staging hook ran with the service bound:\n{out}"
    );
    mc.wait_for(HOST, "/", "services", Duration::from_secs(60));

    // Seed 001: the post-staging hook filled the database while staging.
    assert_eq!(values(&mc, "mysql"), vec!["preloaded"]);

    // What the app sees (REFERENCE §4).
    let env = get_json(&mc, "/env");
    assert!(
        env["DATABASE_URL"].is_null(),
        "two relational databases: no DATABASE_URL: {env}"
    );
    let mysql_url = env["MYSQL_URL"].as_str().expect("MYSQL_URL");
    assert!(mysql_url.starts_with("mysql://"), "{mysql_url}");
    assert!(
        !mysql_url.contains("127.0.0.1"),
        "credentials name the node's address, not loopback: {mysql_url}"
    );
    assert!(env["POSTGRESQL_URL"]
        .as_str()
        .unwrap()
        .starts_with("postgres://"));
    assert!(env["REDIS_URL"].as_str().unwrap().starts_with("redis://"));
    let vcap: Value = serde_json::from_str(env["VCAP_SERVICES"].as_str().unwrap()).unwrap();
    for label in ["mysql", "postgresql", "redis", "filesystem"] {
        assert!(
            vcap[label].is_array(),
            "VCAP_SERVICES keyed by type: {vcap}"
        );
    }
    assert_eq!(
        vcap["redis"][0]["name"], "svcfixture-redis",
        "${{name}}-redis"
    );
    assert_eq!(vcap["mysql"][0]["credentials"]["uri"], mysql_url);
    let stackato: Value = serde_json::from_str(env["STACKATO_SERVICES"].as_str().unwrap()).unwrap();
    assert!(stackato["mydb"]["password"].is_string(), "{stackato}");
    assert!(
        !env.to_string()
            .contains(&mc.home.path().to_string_lossy().to_string()),
        "no host path leaks into the app's environment: {env}"
    );

    // Write and read each service through the app.
    for (svc, value) in [("mysql", "m1"), ("postgresql", "p1"), ("redis", "r1")] {
        let put = get_json(&mc, &format!("/put/{svc}/{value}"));
        assert_eq!(put["ok"], true, "{svc}: {put}");
        assert!(values(&mc, svc).contains(&value.to_string()), "{svc}");
    }
    // Stackato's in-container tools: `strato run APP dbexport|dbshell SERVICE`.
    let dump = mc.strato_ok(here, &["run", "svcfixture", "dbexport", "mydb"]);
    assert!(
        dump.contains("preloaded"),
        "dbexport in the instance dumps MySQL:\n{dump}"
    );
    let out = mc.strato_input(
        here,
        &["run", "svcfixture", "dbshell", "pgdb"],
        b"SELECT v FROM kv;\n",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("p1"),
        "dbshell in the instance reads stdin: {out:?}"
    );

    // The filesystem is one for both instances: writes land on both (round robin).
    let mut writers = std::collections::BTreeSet::new();
    for i in 0..6 {
        let put = get_json(&mc, &format!("/put/filesystem/f{i}"));
        writers.insert(put["instance"].as_i64().unwrap());
    }
    assert_eq!(writers.len(), 2, "both instances wrote: {writers:?}");
    for _ in 0..4 {
        let seen = values(&mc, "filesystem");
        assert_eq!(seen.len(), 6, "every instance sees every write: {seen:?}");
    }

    // A restart and a redeploy (changed bits, restaged) keep the data.
    mc.strato_ok(here, &["restart", "svcfixture"]);
    mc.wait_for(HOST, "/", "services", Duration::from_secs(60));
    assert!(values(&mc, "postgresql").contains(&"p1".to_string()));
    std::fs::write(app.path().join("VERSION"), "2\n").unwrap();
    mc.strato_ok(app.path(), &["push", "-n"]);
    mc.wait_for(HOST, "/", "services", Duration::from_secs(60));
    assert_eq!(
        values(&mc, "mysql"),
        vec!["preloaded", "m1"],
        "the hook does not preload twice"
    );
    assert!(values(&mc, "redis").contains(&"r1".to_string()));
    assert_eq!(values(&mc, "filesystem").len(), 6);

    // `strato services` lists them with the app bound.
    let list = mc.strato_ok(here, &["services"]);
    for name in ["mydb", "pgdb", "svcfixture-redis", "files"] {
        assert!(list.contains(name), "{list}");
    }
    assert!(list.contains("svcfixture"), "{list}");

    // A bound service is not deleted unless forced, and nothing is lost by the refusal.
    let out = mc.strato(here, &["delete-service", "mydb", "-n"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("svcfixture"),
        "the refusal names the bound app: {err}"
    );
    assert!(values(&mc, "mysql").contains(&"m1".to_string()));

    // Unbinding PostgreSQL leaves one relational database: DATABASE_URL appears.
    let out = mc.strato_ok(here, &["unbind-service", "pgdb", "svcfixture"]);
    assert!(out.contains("Unbound"), "{out}");
    mc.strato_ok(here, &["restart", "svcfixture"]);
    mc.wait_for(HOST, "/", "services", Duration::from_secs(60));
    let env = get_json(&mc, "/env");
    assert_eq!(env["DATABASE_URL"].as_str(), Some(mysql_url));
    assert!(env["POSTGRESQL_URL"].is_null());

    // Bad input: unknown type, a name taken, a bad name.
    let out = mc.strato(here, &["create-service", "mongodb", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mysql"));
    let out = mc.strato(here, &["create-service", "redis", "mydb"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("taken"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mc.strato(here, &["create-service", "redis", "bad name"]);
    assert!(!out.status.success());

    // A user-provided service binds like the rest.
    mc.strato_ok(
        here,
        &[
            "create-user-provided-service",
            "extdb",
            r#"{"uri":"postgres://u:p@db.example.com:5432/x"}"#,
        ],
    );
    mc.strato_ok(here, &["bind-service", "extdb", "svcfixture"]);

    // Deleting the app unbinds; then the services can go, with their data.
    mc.strato_ok(here, &["delete", "svcfixture", "-n"]);
    for name in ["mydb", "pgdb", "svcfixture-redis", "files", "extdb"] {
        mc.strato_ok(here, &["delete-service", name, "-n"]);
    }
    let list = mc.strato_ok(here, &["services", "--json"]);
    assert_eq!(list.trim(), "[]", "{list}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&mc.home.path().to_string_lossy().to_string()),
        "the filesystem service is unmounted when deleted"
    );
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tunnel_dbexport_and_dbshell_work_with_the_real_clients() {
    let mc = MicroCloud::start_with_roles("micro").expect("micro cloud with services");
    mc.login();
    let here = mc.client_home.path();
    wait_until_offered(&mc, here, ALL_TYPES);
    for (kind, name) in [
        ("postgresql", "pg1"),
        ("postgresql", "pg2"),
        ("mysql", "my1"),
        ("mysql", "my2"),
        ("redis", "rd1"),
    ] {
        mc.strato_ok(here, &["create-service", kind, name]);
    }

    // No app exists: the tunnel reaches the services anyway, with the real clients.
    let sql =
        b"CREATE TABLE t (v text); INSERT INTO t VALUES ('through-the-tunnel'); SELECT v FROM t;\n";
    let out = mc.strato_input(
        here,
        &["tunnel", "pg1", "psql", "--", "-q", "-v", "ON_ERROR_STOP=1"],
        sql,
    );
    assert!(ok(&out, "tunnel psql").contains("through-the-tunnel"));
    let sql =
        b"CREATE TABLE t (v varchar(50)); INSERT INTO t VALUES ('my-tunnel'); SELECT v FROM t;\n";
    let out = mc.strato_input(here, &["tunnel", "my1", "mysql"], sql);
    assert!(ok(&out, "tunnel mysql").contains("my-tunnel"));
    let out = mc.strato_input(
        here,
        &["tunnel", "rd1", "redis-cli"],
        b"SET k redis-tunnel\nGET k\n",
    );
    assert!(ok(&out, "tunnel redis-cli").contains("redis-tunnel"));
    let out = mc.strato_input(here, &["tunnel", "my1", "mysqldump"], b"");
    assert!(
        ok(&out, "tunnel mysqldump").contains("my-tunnel"),
        "mysqldump through the tunnel"
    );

    // dbexport from one instance, dbshell into another: the data moves.
    for (from, to, check_client, check_sql, needle) in [
        (
            "pg1",
            "pg2",
            "psql",
            &b"SELECT v FROM t;\n"[..],
            "through-the-tunnel",
        ),
        (
            "my1",
            "my2",
            "mysql",
            &b"SELECT v FROM t;\n"[..],
            "my-tunnel",
        ),
    ] {
        let dump = mc.strato(here, &["dbexport", from]);
        let dump = ok(&dump, "dbexport");
        assert!(dump.contains(needle), "the dump of {from} holds its data");
        ok(
            &mc.strato_input(here, &["dbshell", to], dump.as_bytes()),
            "dbshell < dump",
        );
        let out = mc.strato_input(here, &["tunnel", to, check_client], check_sql);
        assert!(
            ok(&out, "read back").contains(needle),
            "{to} has {from}'s data"
        );
    }

    // Bad input: a tunnel to a filesystem service, an unknown client, an unknown service.
    mc.strato_ok(here, &["create-service", "filesystem", "fs1"]);
    let out = mc.strato(here, &["tunnel", "fs1", "-n"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no network address"));
    let out = mc.strato(here, &["tunnel", "pg1", "mysql"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a client of the wrong type is a usage error"
    );
    let out = mc.strato(here, &["tunnel", "nope"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pg1"),
        "lists the services"
    );
    // A dump into a database whose SQL fails changes nothing and says why.
    let out = mc.strato_input(
        here,
        &["dbshell", "pg2"],
        b"INSERT INTO missing VALUES (1);\n",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
}

/// Seed 001's `${name}-cache`: a filesystem service by that name is the staging cache, and
/// it outlives the app, so a fresh push after `delete` downloads nothing it already has.
#[test]
fn a_name_cache_filesystem_keeps_the_staging_cache_across_delete() {
    let roles = format!("{},filesystem", strato_e2e::APP_ROLES);
    let mc = MicroCloud::start_with_roles(&roles).expect("micro cloud with filesystem");
    mc.login();
    let here = mc.client_home.path();
    let app = tempfile::tempdir().unwrap();
    for f in ["app.py", "requirements.txt"] {
        std::fs::copy(fixture("python").join(f), app.path().join(f)).unwrap();
    }
    std::fs::write(
        app.path().join("stackato.yml"),
        "name: cachedapp\nmem: 128M\nservices:\n  ${name}-cache: filesystem\n",
    )
    .unwrap();
    wait_until_offered(&mc, here, &["filesystem"]);

    let started = Instant::now();
    let first = mc.strato_ok(app.path(), &["push", "-n"]);
    let first_time = started.elapsed();
    mc.wait_for(
        "cachedapp.localhost",
        "/",
        "hello from python",
        Duration::from_secs(30),
    );
    assert!(
        first.contains("Fetching dependencies into the staging cache"),
        "the first staging fetches:\n{first}"
    );

    mc.strato_ok(here, &["delete", "cachedapp", "-n"]);
    let list = mc.strato_ok(here, &["services"]);
    assert!(
        list.contains("cachedapp-cache"),
        "the cache outlives the app: {list}"
    );

    let started = Instant::now();
    let second = mc.strato_ok(app.path(), &["push", "-n"]);
    let second_time = started.elapsed();
    mc.wait_for(
        "cachedapp.localhost",
        "/",
        "hello from python",
        Duration::from_secs(30),
    );
    let downloads: Vec<&str> = second
        .lines()
        .filter(|l| l.contains("Downloading"))
        .collect();
    assert!(
        downloads.is_empty(),
        "the second staging downloads nothing it already has: {downloads:?}\n{second}"
    );
    assert!(second.contains("from the staging cache"), "{second}");
    println!(
        "MEASURED ${{name}}-cache: first push {:.2} s, push after delete {:.2} s (saved {:.2} s)",
        first_time.as_secs_f64(),
        second_time.as_secs_f64(),
        first_time.as_secs_f64() - second_time.as_secs_f64()
    );
}
