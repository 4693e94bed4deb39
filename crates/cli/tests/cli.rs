//! Runs the `strato` binary the way a user does, without a server: exit codes, target
//! precedence and the errors that must name what is wrong. End-to-end tests against a real
//! controller live in the e2e crate.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `strato ARGS` with HOME in `home`, the working directory `cwd`, no target variables and
/// no terminal.
fn strato(home: &Path, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strato"));
    cmd.args(args)
        .current_dir(cwd)
        .env("HOME", home)
        .stdin(Stdio::null());
    for var in [
        "STRATO_TARGET",
        "STACKATO_TARGET",
        "STRATO_ORG",
        "STACKATO_ORG",
        "STRATO_SPACE",
        "STACKATO_SPACE",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the strato binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A loopback URL where nothing listens.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn usage_errors_exit_2() {
    let home = tempfile::tempdir().unwrap();
    let out = strato(home.path(), home.path(), &[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = strato(home.path(), home.path(), &["app"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = strato(
        home.path(),
        home.path(),
        &["push", "web", "--mem", "lots"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--mem"), "{}", text(&out.stderr));
}

#[test]
fn push_without_a_name_and_no_prompt_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    std::fs::write(app.path().join("app.py"), "print(1)\n").unwrap();
    let out = strato(home.path(), app.path(), &["push", "-n"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no app name"),
        "{}",
        text(&out.stderr)
    );
    let out = strato(
        home.path(),
        app.path(),
        &["push", "-n", "--path", "/nonexistent/dir"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/nonexistent/dir"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn commands_without_a_target_say_how_to_set_one() {
    let home = tempfile::tempdir().unwrap();
    let out = strato(home.path(), home.path(), &["apps"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("strato target URL"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn target_precedence_flag_then_env_then_saved() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".strato");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"target":"http://saved.example","targets":{}}"#,
    )
    .unwrap();
    let out = strato(home.path(), home.path(), &["target"], &[]);
    assert_eq!(
        text(&out.stdout).lines().next(),
        Some("Target: http://saved.example")
    );
    let out = strato(
        home.path(),
        home.path(),
        &["target"],
        &[("STACKATO_TARGET", "http://env.example/")],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("http://env.example (from the STACKATO_TARGET environment variable)"),
        "{stdout}"
    );
    let out = strato(
        home.path(),
        home.path(),
        &["target", "--target", "http://flag.example", "--json"],
        &[("STRATO_TARGET", "http://env.example")],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["target"], "http://flag.example");
    assert_eq!(json["source"], "option");
}

#[test]
fn unreachable_target_is_refused_and_not_saved() {
    let home = tempfile::tempdir().unwrap();
    let url = closed_port_url();
    let out = strato(home.path(), home.path(), &["target", &url], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&url) && stderr.contains("/v2/info"),
        "{stderr}"
    );
    assert!(!home.path().join(".strato/config.json").exists());
}

#[test]
fn not_logged_in_and_login_without_password() {
    let home = tempfile::tempdir().unwrap();
    let url = closed_port_url();
    let out = strato(
        home.path(),
        home.path(),
        &["apps"],
        &[("STRATO_TARGET", &url)],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("strato login"),
        "{}",
        text(&out.stderr)
    );
    let out = strato(
        home.path(),
        home.path(),
        &["login", "admin"],
        &[("STRATO_TARGET", &url)],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--password"),
        "{}",
        text(&out.stderr)
    );
    let out = strato(
        home.path(),
        home.path(),
        &["login", "admin", "--password", "x"],
        &[("STRATO_TARGET", &url)],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach"),
        "{}",
        text(&out.stderr)
    );
}
