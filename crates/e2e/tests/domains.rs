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
