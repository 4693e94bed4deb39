//! Private domains as users meet them: an organization adds its own domain, maps an app
//! URL in it, reaches the app by that name through the router, and cannot delete the
//! domain while a route uses it.

use strato_e2e::{http_get, output_text, MicroCloud};

#[test]
fn an_org_routes_an_app_in_its_own_domain() {
    let mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let here = mc.client_home.path();
    mc.push_static();

    mc.strato_ok(here, &["create-domain", "shop.example.test"]);
    let listed = mc.strato_ok(here, &["domains"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("shop.example.test") && l.contains("private")),
        "{listed}"
    );
    // A bad name and a taken name: one clear line each.
    let out = mc.strato(here, &["create-domain", "nodots"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("two labels"));
    let out = mc.strato(here, &["create-domain", "shop.example.test"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("taken"));

    mc.strato_ok(here, &["map", "staticfixture", "www.shop.example.test"]);
    let (status, body) = http_get(mc.port, "www.shop.example.test", "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello from static"));

    let out = mc.strato(here, &["delete-domain", "shop.example.test"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("route(s) use"),
        "{}",
        output_text(&out)
    );
    mc.strato_ok(here, &["unmap", "staticfixture", "www.shop.example.test"]);
    mc.strato_ok(here, &["delete-route", "www.shop.example.test", "-n"]);
    mc.strato_ok(here, &["delete-domain", "shop.example.test"]);
    let listed = mc.strato_ok(here, &["domains"]);
    assert!(!listed.contains("shop.example.test"), "{listed}");
}

/// `kato node rename`: the cloud takes a new domain; the running app answers at its new
/// name (no restage, no restart), the old name is gone, the API answers at api.NEW, and
/// the rename survives a restart of stratod.
#[test]
fn kato_node_rename_moves_the_cloud_and_its_apps_to_a_new_domain() {
    let mut mc = MicroCloud::start().expect("micro cloud");
    mc.login();
    let here = mc.client_home.path();
    mc.push_static();
    assert_eq!(http_get(mc.port, "staticfixture.localhost", "/").0, 200);

    // Making this micro cloud a core would leave its app behind: refused, naming it.
    let out = mc.kato(&["node", "setup", "core", "192.0.2.1", "--no-restart"]);
    let text = output_text(&out);
    assert!(
        !out.status.success() && text.contains("staticfixture"),
        "{text}"
    );

    let out = mc.kato(&["node", "rename", "not a name"]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("not a domain name") || output_text(&out).contains("host"),
        "{}",
        output_text(&out)
    );

    let out = mc.kato(&["node", "rename", "Cloud.Example.Test"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("cloud.example.test"),
        "{}",
        output_text(&out)
    );
    assert!(wait_for(&mc, "staticfixture.cloud.example.test", 200).contains("hello from static"));
    wait_for(&mc, "staticfixture.localhost", 404);
    let (status, info) = {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let got = http_get(mc.port, "api.cloud.example.test", "/v2/info");
            if got.0 == 200 || std::time::Instant::now() > until {
                break got;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    assert_eq!(status, 200, "{info}");
    let apps = mc.strato_ok(here, &["apps"]);
    assert!(apps.contains("staticfixture.cloud.example.test"), "{apps}");

    // The name is kept: after a restart the cloud still has it.
    mc.restart().expect("restart stratod");
    wait_for(&mc, "staticfixture.cloud.example.test", 200);
    let info = mc.kato(&["info"]);
    assert!(
        output_text(&info).contains("cloud.example.test"),
        "{}",
        output_text(&info)
    );
}

/// Waits until `host` answers `want` through the micro cloud's router; returns the body.
fn wait_for(mc: &MicroCloud, host: &str, want: u16) -> String {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = http_get(mc.port, host, "/");
        if status == want {
            return body;
        }
        assert!(
            std::time::Instant::now() < until,
            "{host} answered {status}, not {want}: {body}\n{}",
            mc.log_tail()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
