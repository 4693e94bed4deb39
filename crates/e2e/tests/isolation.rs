//! Tenant network isolation as seen from inside an app instance: each probe runs in the
//! instance with `strato run` and reports what a connection there does.
//!
//! Two tenants (two orgs, each with an app and a Redis service bound to it) share one
//! micro cloud. From tenant A's instance: the platform's own ports and any other host
//! daemon are refused, tenant B's instance is refused, tenant B's Redis answers only with
//! B's credentials (A's are refused), the package registry answers, and A's own Redis
//! works with A's credentials.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use strato_e2e::MicroCloud;

const PROBE: &str = r#"import socket, sys, urllib.request

def tcp(host, port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, int(port)))
        return "ok"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return "timeout" if "timed out" in str(e) else "error " + str(e)

def redis(host, port, password):
    s = socket.create_connection((host, int(port)), 3)
    s.sendall(b"AUTH " + password.encode() + b"\r\nPING\r\n")
    data = b""
    while data.count(b"\r\n") < 2:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode().split("\r\n")[1]

def get(url):
    with urllib.request.urlopen(url, timeout=20) as r:
        return str(r.status)

cmd, args = sys.argv[1], sys.argv[2:]
print({"tcp": tcp, "redis": redis, "get": get}[cmd](*args))
"#;

fn app_dir(name: &str, service: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("probe.py"), PROBE).unwrap();
    std::fs::write(
        dir.path().join("stackato.yml"),
        format!("name: {name}\nmem: 64M\nservices:\n  {service}: redis\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("Procfile"),
        "web: /usr/bin/python3 -m http.server $PORT --bind 0.0.0.0\n",
    )
    .unwrap();
    dir
}

/// Runs `probe.py ARGS` in `app`'s instance and returns its one-line answer.
fn probe(mc: &MicroCloud, app: &str, args: &[&str]) -> String {
    let mut argv = vec!["run", app, "/usr/bin/python3", "probe.py"];
    argv.extend_from_slice(args);
    mc.strato_ok(mc.client_home.path(), &argv)
        .trim()
        .to_string()
}

/// The Redis credentials bound to `app` (from its instance's environment).
fn redis_credentials(mc: &MicroCloud, app: &str) -> (String, String, String) {
    let env = mc.strato_ok(
        mc.client_home.path(),
        &["run", app, "printenv", "VCAP_SERVICES"],
    );
    let v: Value = serde_json::from_str(env.trim()).expect("VCAP_SERVICES is JSON");
    let c = &v["redis"][0]["credentials"];
    let s = |k: &str| match &c[k] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("redis credential {k}: {other} in {v}"),
    };
    (s("host"), s("port"), s("password"))
}

/// The address and port the router uses for `app`'s first instance.
fn instance_endpoint(mc: &MicroCloud, app: &str) -> (String, String) {
    let here = mc.client_home.path();
    let found = mc.strato_ok(here, &["curl", "GET", &format!("/v2/apps?q=name:{app}")]);
    let v: Value = serde_json::from_str(&found).unwrap();
    let guid = v["resources"][0]["metadata"]["guid"].as_str().unwrap();
    let stats = mc.strato_ok(here, &["curl", "GET", &format!("/v2/apps/{guid}/stats")]);
    let v: Value = serde_json::from_str(&stats).unwrap();
    let s = &v["0"]["stats"];
    (
        s["host"].as_str().expect("stats name the host").to_string(),
        s["port"].to_string(),
    )
}

fn push(mc: &MicroCloud, dir: &Path, host: &str) {
    mc.strato_ok(dir, &["push", "-n"]);
    mc.wait_for(host, "/", "probe.py", Duration::from_secs(90));
}

#[test]
fn an_instance_reaches_its_services_and_the_registry_but_nothing_of_other_tenants_or_the_platform()
{
    let roles = format!("{},redis", strato_e2e::APP_ROLES);
    let mc = MicroCloud::start_with_roles(&roles).expect("micro cloud with redis");
    mc.login();
    let here = mc.client_home.path();

    // Tenant A in the default org, tenant B in an org of its own.
    let a = app_dir("tenanta", "redis-a");
    let b = app_dir("tenantb", "redis-b");
    let mut pushed = false;
    for _ in 0..60 {
        // The Redis gateway announces itself a moment after start.
        let out = mc.strato(a.path(), &["push", "-n"]);
        if out.status.success() {
            pushed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        pushed,
        "tenant A's push never succeeded:\n{}",
        mc.log_tail()
    );
    mc.wait_for(
        "tenanta.localhost",
        "/",
        "probe.py",
        Duration::from_secs(90),
    );
    mc.strato_ok(here, &["create-org", "tenantb-org"]);
    mc.strato_ok(here, &["create-space", "prod", "--org", "tenantb-org"]);
    mc.strato_ok(here, &["switch-space", "prod", "--org", "tenantb-org"]);
    push(&mc, b.path(), "tenantb.localhost");
    // The instance has an address of its own, not the host's.
    let (b_host, b_port) = instance_endpoint(&mc, "tenantb");
    assert!(
        b_host.starts_with("10.213."),
        "B's instance address: {b_host}"
    );
    let (b_redis_host, b_redis_port, b_password) = redis_credentials(&mc, "tenantb");
    // Back to tenant A for the probes.
    mc.strato_ok(here, &["switch-space", "default", "--org", "default"]);

    // Another tenant's instance: refused.
    assert_eq!(probe(&mc, "tenanta", &["tcp", &b_host, &b_port]), "refused");

    // The platform's ports and any other daemon of the host: refused, though the host
    // itself reaches the daemon.
    let daemon = TcpListener::bind("0.0.0.0:0").unwrap();
    let daemon_port = daemon.local_addr().unwrap().port().to_string();
    let (a_redis_host, a_redis_port, a_password) = redis_credentials(&mc, "tenanta");
    let gateway = {
        let (a_host, _) = instance_endpoint(&mc, "tenanta");
        let ip: std::net::Ipv4Addr = a_host.parse().unwrap();
        std::net::Ipv4Addr::from(u32::from(ip) - 1).to_string()
    };
    for host in [a_redis_host.as_str(), gateway.as_str()] {
        assert_eq!(
            probe(&mc, "tenanta", &["tcp", host, &daemon_port]),
            "refused",
            "a host daemon at {host}:{daemon_port}"
        );
        let ports = mc.stratod_ports();
        println!("probing stratod ports {ports:?} at {host}");
        for port in ports {
            assert_eq!(
                probe(&mc, "tenanta", &["tcp", host, &port.to_string()]),
                "refused",
                "stratod's port {port} at {host}"
            );
        }
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", daemon.local_addr().unwrap().port())).is_ok()
    );

    // Its own service works with its own credentials.
    assert_eq!(
        probe(
            &mc,
            "tenanta",
            &["redis", &a_redis_host, &a_redis_port, &a_password]
        ),
        "+PONG"
    );
    // Another tenant's service: reachable only with that tenant's credentials.
    let with_ours = probe(
        &mc,
        "tenanta",
        &["redis", &b_redis_host, &b_redis_port, &a_password],
    );
    assert!(
        with_ours.starts_with("-NOAUTH"),
        "B's redis with A's password: {with_ours}"
    );
    assert_eq!(
        probe(
            &mc,
            "tenanta",
            &["redis", &b_redis_host, &b_redis_port, &b_password]
        ),
        "+PONG"
    );

    // The package registry (through the host's proxy and CA settings).
    assert_eq!(
        probe(&mc, "tenanta", &["get", "https://pypi.org/simple/six/"]),
        "200"
    );
}
