//! The manifest as a user writes it, against a micro cloud: a `manifest.yml` with two apps
//! pushed in `depends-on` order by a bare `strato push`, `${name}-x` substitution, hooks in
//! order (each appends to a file the app serves), a `processes: web: ~` worker without a
//! route, a `cron:` line running in instance 0 only, a `requirements: ubuntu:` package run
//! with `strato run`, and a `min_version` above this version refused before anything
//! changes on the server.

use std::path::Path;
use std::time::{Duration, Instant};

use strato_e2e::MicroCloud;

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const MANIFEST: &str = r#"applications:
- name: mfweb
  path: web
  memory: 64M
  instances: 2
  depends-on: mfworker
  stackato:
    url: ${name}-x.${target-base}
    env:
      GREETING: ${name}-x
      STRATO_CRON_TICK_SECONDS: "1"
    processes:
      web: python3 -m http.server $PORT
    hooks:
      pre-push: echo pre-push >> order.txt
      pre-staging: echo pre-staging >> order.txt
      post-staging: [echo post-staging >> order.txt]
      pre-running:
        - echo pre-running >> order.txt
        - echo "$GREETING" > greeting.txt
        - -false
    cron:
      - '* * * * * echo "tick $STACKATO_APP_NAME" >> cron.txt'
- name: mfworker
  path: worker
  memory: 64M
  command: sleep 100000
  stackato:
    processes:
      web: ~
    requirements:
      ubuntu: [hello]
"#;

#[test]
fn manifest_with_two_apps_hooks_cron_requirements_and_min_version() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "manifest.yml", MANIFEST);
    // The Procfile's web line is replaced by `processes: web:`.
    write(dir.path(), "web/Procfile", "web: exit 9\n");
    write(dir.path(), "web/index.html", "<p>manifest web</p>\n");
    write(dir.path(), "worker/Procfile", "web: exit 9\n");

    let out = mc.strato_ok(dir.path(), &["push", "-n"]);
    let worker_at = out.find("Creating mfworker").expect(&out);
    let web_at = out.find("Creating mfweb").expect(&out);
    assert!(
        worker_at < web_at,
        "depends-on pushes the worker first:\n{out}"
    );
    assert!(out.contains("Running pre-push hook"), "{out}");

    // Substitution in the URL, hooks in order (pre-push ran here and was uploaded).
    mc.wait_for(
        "mfweb-x.localhost",
        "/",
        "manifest web",
        Duration::from_secs(60),
    );
    let (status, order) = mc.get("mfweb-x.localhost", "/order.txt");
    assert_eq!(status, 200);
    assert_eq!(order, "pre-push\npre-staging\npost-staging\npre-running\n");
    let (_, greeting) = mc.get("mfweb-x.localhost", "/greeting.txt");
    assert_eq!(greeting, "mfweb-x\n");

    // The worker runs without a route, and its Debian package runs via `strato run`.
    let (status, _) = mc.get("mfworker.localhost", "/");
    assert_eq!(status, 404, "no route for a worker");
    let apps = mc.strato_ok(dir.path(), &["apps", "--json"]);
    let apps: serde_json::Value = serde_json::from_str(&apps).unwrap();
    let worker = apps
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "mfworker")
        .expect("mfworker listed");
    assert_eq!(worker["state"], "STARTED", "{worker}");
    assert!(
        worker["urls"].as_array().is_none_or(|u| u.is_empty()),
        "{worker}"
    );
    let hello = mc.strato_ok(dir.path(), &["run", "mfworker", "hello"]);
    assert_eq!(hello, "Hello, world!\n");

    // Cron runs in instance 0 only (the tick hook makes a minute a second).
    let started = Instant::now();
    loop {
        let out = mc.strato(
            dir.path(),
            &["run", "mfweb", "--instance", "0", "cat", "cron.txt"],
        );
        if out.status.success() && text(&out.stdout).contains("tick mfweb") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "cron never ran in instance 0: {} {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let other = mc.strato_ok(
        dir.path(),
        &[
            "run",
            "mfweb",
            "--instance",
            "1",
            "--",
            "sh",
            "-c",
            "test -e cron.txt && echo ran || echo none",
        ],
    );
    assert_eq!(other, "none\n", "cron does not run in instance 1");

    // `strato push NAME` pushes one app of the manifest.
    let out = mc.strato_ok(dir.path(), &["push", "mfworker", "-n"]);
    assert!(
        out.contains("Updating mfworker") && !out.contains("mfweb"),
        "{out}"
    );

    // A min_version above this version is refused, and nothing is created.
    let old = tempfile::tempdir().unwrap();
    write(
        old.path(),
        "stackato.yml",
        "name: toonew\nmem: 64M\nmin_version:\n  server: 99.0\n",
    );
    write(old.path(), "index.html", "x\n");
    let out = mc.strato(old.path(), &["push", "-n"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("needs server version 99.0"), "{err}");
    write(
        old.path(),
        "stackato.yml",
        "name: toonew\nmin_version:\n  client: 99.0\n",
    );
    let err = text(&mc.strato(old.path(), &["push", "-n"]).stderr);
    assert!(err.contains("needs strato client 99.0"), "{err}");
    let apps = mc.strato_ok(dir.path(), &["apps"]);
    assert!(!apps.contains("toonew"), "{apps}");

    // A failing pre-push hook stops the push before the server changes; bad YAML points
    // at its line.
    write(
        old.path(),
        "stackato.yml",
        "name: hookfail\nhooks:\n  pre-push: exit 4\n",
    );
    let out = mc.strato(old.path(), &["push", "-n"]);
    assert!(text(&out.stderr).contains("pre-push hook failed with exit code 4"));
    write(old.path(), "stackato.yml", "name: bad\nmem: [64\n");
    let err = text(&mc.strato(old.path(), &["push", "-n"]).stderr);
    assert!(err.contains("stackato.yml:2:6: not valid YAML"), "{err}");
    let apps = mc.strato_ok(dir.path(), &["apps"]);
    assert!(
        !apps.contains("hookfail") && !apps.contains("bad"),
        "{apps}"
    );
}
