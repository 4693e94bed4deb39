//! Multi-tenancy as users meet it: an administrator sets up an org, a space and a
//! developer; the developer logs in, lands in that space, pushes and reaches an app, cannot
//! see or touch the administrator's app elsewhere, and `strato passwd` ends their other
//! login.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use strato_e2e::{fixture, output_text, strato_as, MicroCloud};

fn text(out: &Output) -> String {
    output_text(out)
}

fn ok(mc: &MicroCloud, home: &Path, dir: &Path, args: &[&str]) -> String {
    let out = strato_as(home, dir, args);
    assert!(
        out.status.success(),
        "strato {args:?}: {}\nstratod log:\n{}",
        text(&out),
        mc.log_tail()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_developer_works_in_their_space_only() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let admin = mc.client_home.path();
    // The administrator's app lives in the default org.
    ok(
        &mc,
        admin,
        admin,
        &[
            "push",
            "adminapp",
            "-n",
            "--no-start",
            "--path",
            fixture("static").to_str().unwrap(),
        ],
    );
    ok(
        &mc,
        admin,
        admin,
        &["add-user", "bob", "--password", "bobpw1"],
    );
    ok(&mc, admin, admin, &["create-org", "acme"]);
    ok(&mc, admin, admin, &["create-space", "dev", "--org", "acme"]);
    ok(
        &mc,
        admin,
        admin,
        &["link-user-space", "bob", "dev", "--org", "acme"],
    );
    let users = ok(
        &mc,
        admin,
        admin,
        &["space-users", "dev", "--org", "acme", "--json"],
    );
    assert!(
        users.contains("bob") && users.contains("developer"),
        "{users}"
    );
    let listed = ok(&mc, admin, admin, &["users", "--json"]);
    assert!(listed.contains("\"bob\""), "{listed}");

    // Bob logs in (two logins, two homes) and lands in acme/dev.
    let bob = tempfile::tempdir().unwrap();
    let bob2 = tempfile::tempdir().unwrap();
    for home in [bob.path(), bob2.path()] {
        ok(&mc, home, home, &["target", &mc.url()]);
        let out = ok(&mc, home, home, &["login", "bob", "--password", "bobpw1"]);
        assert!(
            out.contains("acme") && out.contains("dev"),
            "bob lands in his space:\n{out}"
        );
    }
    let orgs = ok(&mc, bob.path(), bob.path(), &["orgs", "--json"]);
    assert!(
        orgs.contains("acme") && !orgs.contains("default"),
        "bob sees only his org: {orgs}"
    );

    // Bob pushes and reaches his app.
    ok(&mc, bob.path(), &fixture("static"), &["push", "-n"]);
    mc.wait_for(
        "staticfixture.localhost",
        "/",
        "hello from static",
        Duration::from_secs(60),
    );

    // The administrator's app is invisible to bob and out of his reach.
    let apps = ok(&mc, bob.path(), bob.path(), &["apps"]);
    assert!(
        apps.contains("staticfixture") && !apps.contains("adminapp"),
        "{apps}"
    );
    let out = strato_as(bob.path(), bob.path(), &["delete", "adminapp", "-n"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no app named"),
        "{}",
        text(&out)
    );
    let found = ok(
        &mc,
        admin,
        admin,
        &["curl", "GET", "/v2/apps?q=name:adminapp"],
    );
    let v: serde_json::Value = serde_json::from_str(&found).unwrap();
    let guid = v["resources"][0]["metadata"]["guid"].as_str().unwrap();
    let out = strato_as(
        bob.path(),
        bob.path(),
        &["curl", "DELETE", &format!("/v2/apps/{guid}")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CF-NotAuthorized"),
        "{}",
        text(&out)
    );
    let apps = ok(&mc, admin, admin, &["apps"]);
    assert!(
        apps.contains("adminapp"),
        "the admin's app is still there: {apps}"
    );

    // Bob is not an administrator.
    let out = strato_as(bob.path(), bob.path(), &["users"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // A password change ends bob's other login at once.
    ok(
        &mc,
        bob.path(),
        bob.path(),
        &["passwd", "--old", "bobpw1", "--new", "bobpw2"],
    );
    ok(&mc, bob.path(), bob.path(), &["apps"]);
    let out = strato_as(bob2.path(), bob2.path(), &["apps"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("login"),
        "{}",
        text(&out)
    );
    ok(
        &mc,
        bob2.path(),
        bob2.path(),
        &["login", "bob", "--password", "bobpw2"],
    );
}

#[test]
fn an_org_memory_quota_refuses_a_push_that_does_not_fit_and_allows_one_that_does() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let admin = mc.client_home.path();
    ok(
        &mc,
        admin,
        admin,
        &["quota", "create", "small", "--mem", "256"],
    );
    ok(&mc, admin, admin, &["quota-org", "default", "small"]);
    let quotas = ok(&mc, admin, admin, &["quotas", "--json"]);
    assert!(
        quotas.contains("\"small\"") && quotas.contains("256"),
        "{quotas}"
    );

    // 3 × 128 MB does not fit in 256 MB: the push is refused, naming the limit.
    let path = fixture("static");
    let push = [
        "push",
        "quotaapp",
        "-n",
        "--mem",
        "128",
        "--instances",
        "3",
        "--path",
        path.to_str().unwrap(),
    ];
    let out = strato_as(admin, admin, &push);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("You have exceeded your organization's memory limit")
            && stderr.contains("quota 'small' allows 256 MB")
            && stderr.contains("384 MB"),
        "{}",
        text(&out)
    );

    // 2 × 128 MB fits: scale, then start, and the app serves.
    ok(
        &mc,
        admin,
        admin,
        &["scale", "quotaapp", "--instances", "2"],
    );
    ok(&mc, admin, admin, &["start", "quotaapp"]);
    mc.wait_for(
        "quotaapp.localhost",
        "/",
        "hello from static",
        Duration::from_secs(60),
    );
    let org = ok(&mc, admin, admin, &["org", "default"]);
    assert!(
        org.contains("Quota: small") && org.contains("Memory usage: 256M of 256M"),
        "{org}"
    );
    // A third instance no longer fits.
    let out = strato_as(admin, admin, &["scale", "quotaapp", "--instances", "3"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("allows 256 MB"),
        "{}",
        text(&out)
    );
}

/// `kato node setup firstuser EMAIL ORG`: an administrator and their organization, who can
/// log in and land in the org's `default` space.
#[test]
fn kato_firstuser_creates_an_admin_and_their_org() {
    let mc = MicroCloud::start().expect("micro cloud");
    let out = mc.kato(&[
        "node",
        "setup",
        "firstuser",
        "ops@example.com",
        "acme",
        "--password",
        "first-pass-1",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("acme"));
    let again = mc.kato(&[
        "node",
        "setup",
        "firstuser",
        "ops@example.com",
        "acme",
        "--password",
        "x",
    ]);
    assert!(
        !again.status.success(),
        "a taken name or a short password is refused"
    );
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(strato_e2e::bin("strato"))
            .args(args)
            .env("HOME", home.path())
            .env_remove("STRATO_TARGET")
            .env_remove("STACKATO_TARGET")
            .output()
            .unwrap()
    };
    assert!(run(&["target", &mc.url()]).status.success());
    let login = run(&[
        "login",
        "ops@example.com",
        "--password",
        "first-pass-1",
        "--organization",
        "acme",
    ]);
    assert!(login.status.success(), "{login:?}");
    let info = run(&["info"]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("acme") && text.contains("default"), "{text}");
    let users = run(&["users"]);
    assert!(
        users.status.success(),
        "the first user is an administrator: {users:?}"
    );
}
