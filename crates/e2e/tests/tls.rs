//! TLS as users meet it: the router serves HTTPS with certificates from the node's CA,
//! `strato target https://...` shows that CA's fingerprint and trusts it only when the user
//! accepts it (the API, `run` over `wss://` then work), and an operator's certificate
//! installed with `kato op custom_ssl_cert` is the one presented for its domain.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use strato_e2e::{output_text, strato_as, MicroCloud};

/// `strato ARGS` as a user whose HOME (and working dir) is `home`.
fn strato_in(home: &Path, args: &[&str]) -> Output {
    strato_as(home, home, args)
}

fn text(out: &Output) -> String {
    output_text(out)
}

/// A client trusting only `root`, reaching `host` at the router's HTTPS port.
fn client_trusting(root: &[u8], host: &str, port: u16) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root).unwrap())
        .resolve(host, SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap()
}

#[test]
fn https_with_the_node_ca_a_checked_target_and_a_custom_certificate() {
    let mc = MicroCloud::start_with_https().expect("micro cloud with HTTPS");
    mc.login();
    mc.push_static();
    let info = mc.kato(&["info", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("kato info --json");
    let fingerprint = info["ca_fingerprint"]
        .as_str()
        .expect("a CA fingerprint")
        .to_string();
    let https = format!("https://127.0.0.1:{}", mc.https_port);

    // An app over HTTPS, its certificate issued by the node's CA for its name (SNI).
    let ca = std::fs::read(mc.home.path().join("tls/ca/ca.crt")).expect("the CA certificate");
    let app = client_trusting(&ca, "staticfixture.localhost", mc.https_port)
        .get(format!(
            "https://staticfixture.localhost:{}/",
            mc.https_port
        ))
        .send()
        .expect("HTTPS to the app, verified against the node's CA");
    assert_eq!(app.status(), 200);
    assert!(app.text().unwrap().contains("hello from static"));

    // A new client is shown the CA and, without a terminal, refuses it.
    let home = tempfile::tempdir().unwrap();
    let out = strato_in(home.path(), &["target", &https]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&fingerprint),
        "the fingerprint is shown: {}",
        text(&out)
    );
    assert!(err.contains("--ca-fingerprint"), "{}", text(&out));
    assert!(
        !home.path().join(".strato/config.json").exists() || {
            let saved = std::fs::read_to_string(home.path().join(".strato/config.json")).unwrap();
            !saved.contains("127.0.0.1")
        }
    );

    // A wrong fingerprint is refused; the right one is saved and used from then on.
    let wrong = "00:".repeat(31) + "00";
    let out = strato_in(home.path(), &["target", &https, "--ca-fingerprint", &wrong]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the one you named"));
    let out = strato_in(
        home.path(),
        &["target", &https, "--ca-fingerprint", &fingerprint],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = strato_in(home.path(), &["login", "admin", "--password", &mc.password]);
    assert!(out.status.success(), "{}", text(&out));
    let out = strato_in(home.path(), &["apps"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("staticfixture"));
    // `run` goes over wss:// with the same trust.
    let out = strato_in(home.path(), &["run", "staticfixture", "echo", "over-tls"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over-tls\n");

    // --skip-ssl-validation: no question asked, nothing checked.
    let skip = tempfile::tempdir().unwrap();
    let out = strato_in(skip.path(), &["target", &https, "--skip-ssl-validation"]);
    assert!(out.status.success(), "{}", text(&out));

    // A custom certificate for a domain: presented by SNI once installed, gone once removed.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.example.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("shop.crt"), dir.path().join("shop.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    // A new client per request: no pooled connection or resumed TLS session hides which
    // certificate the router presents.
    let shop = || client_trusting(cert.pem().as_bytes(), "shop.example.test", mc.https_port);
    let url = format!("https://shop.example.test:{}/", mc.https_port);
    assert!(
        shop().get(&url).send().is_err(),
        "the CA's own certificate before install"
    );
    let install = || {
        mc.kato(&[
            "op",
            "custom_ssl_cert",
            "install",
            "shop.example.test",
            cert_file.to_str().unwrap(),
            key_file.to_str().unwrap(),
        ])
    };
    let out = install();
    assert!(out.status.success(), "{}", text(&out));
    let listed = mc.kato(&["op", "custom_ssl_cert", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("shop.example.test"));
    // Picked up live: the router presents it (the host has no app: 404 over a good TLS).
    let mut status = None;
    for _ in 0..50 {
        if let Ok(r) = shop().get(&url).send() {
            status = Some(r.status().as_u16());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        status,
        Some(404),
        "the custom certificate is presented for its domain"
    );
    // A key that does not match is refused, and nothing changes.
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&key_file, other.serialize_pem()).unwrap();
    let out = install();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        shop().get(&url).send().is_ok(),
        "the installed certificate stays"
    );
    let out = mc.kato(&["op", "custom_ssl_cert", "remove", "shop.example.test"]);
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        shop().get(&url).send().is_err(),
        "back to the CA's certificate"
    );
}
