//! The CA, the custom certificate store and the resolver against real files in fresh temp
//! directories, with certificates checked by rustls' own WebPKI verifier.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use strato_tls::{fingerprint_of, Authority, CertResolver, CustomCerts, TlsError};
use time::OffsetDateTime;

fn authority(dir: &std::path::Path) -> Arc<Authority> {
    Arc::new(Authority::load_or_create(&dir.join("ca"), "Strato CA test").unwrap())
}

/// Whether `chain` verifies for `name` against a client that trusts only `root`.
fn verifies(root: &CertificateDer<'static>, chain: &[CertificateDer<'static>], name: &str) -> bool {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &server_name, &[], UnixTime::now())
        .is_ok()
}

/// An outside CA, as an operator's certificates would come from.
struct OtherCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

impl OtherCa {
    fn new() -> OtherCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        OtherCa {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` valid until `not_after`: (chain PEM, key PEM, leaf DER).
    fn leaf(
        &self,
        names: &[&str],
        not_after: OffsetDateTime,
    ) -> (String, String, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.not_before = not_after - time::Duration::days(30);
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            format!("{}{}", cert.pem(), self.pem),
            key.serialize_pem(),
            cert.der().clone(),
        )
    }

    fn valid_leaf(&self, names: &[&str]) -> (String, String, CertificateDer<'static>) {
        self.leaf(names, OffsetDateTime::now_utc() + time::Duration::days(20))
    }
}

fn leaf_of(certified: &CertifiedKey) -> &CertificateDer<'static> {
    &certified.cert[0]
}

#[test]
fn ca_is_created_once_then_reloaded_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let first = Authority::load_or_create(&dir, "Strato CA node1").unwrap();
    let key_mode = std::fs::metadata(dir.join("ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    assert!(first.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        first.ca_pem()
    );

    let fingerprint = first.fingerprint();
    let pairs: Vec<&str> = fingerprint.split(':').collect();
    assert_eq!(pairs.len(), 32, "{fingerprint}");
    assert!(pairs.iter().all(|p| p.len() == 2
        && p.chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())));

    let again = Authority::load_or_create(&dir, "another name").unwrap();
    assert_eq!(again.fingerprint(), fingerprint);
    assert_eq!(again.ca_pem(), first.ca_pem());
    // A leaf the reloaded CA issues chains to the CA as first created.
    let leaf = again.issue("app.example.test").unwrap();
    assert!(verifies(first.ca_der(), &leaf.cert, "app.example.test"));

    let other = Authority::load_or_create(&tmp.path().join("other"), "Strato CA node1").unwrap();
    assert_ne!(
        other.fingerprint(),
        fingerprint,
        "each setup has its own CA"
    );
}

#[test]
fn a_half_or_mismatched_ca_is_refused_not_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    Authority::load_or_create(&a, "A").unwrap();
    Authority::load_or_create(&b, "B").unwrap();
    std::fs::copy(b.join("ca.key"), a.join("ca.key")).unwrap();
    let error = Authority::load_or_create(&a, "A").unwrap_err();
    assert!(matches!(error, TlsError::BrokenAuthority { .. }), "{error}");
    assert!(
        error.to_string().contains("is not the key of ca.crt"),
        "{error}"
    );

    std::fs::remove_file(b.join("ca.key")).unwrap();
    let error = Authority::load_or_create(&b, "B").unwrap_err();
    assert!(error.to_string().contains("ca.key is missing"), "{error}");
    assert!(b.join("ca.crt").exists(), "the certificate was left alone");
}

#[test]
fn issued_leaf_verifies_for_its_name_only() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = authority(tmp.path());
    let leaf = ca.issue("myapp.example.test").unwrap();
    assert_eq!(leaf.cert.len(), 2);
    assert_eq!(&leaf.cert[1], ca.ca_der());
    leaf.keys_match().unwrap();
    assert!(verifies(ca.ca_der(), &leaf.cert, "myapp.example.test"));
    assert!(!verifies(ca.ca_der(), &leaf.cert, "other.example.test"));
    assert!(!verifies(ca.ca_der(), &leaf.cert, "a.myapp.example.test"));
    // Another CA's client does not trust it.
    let stranger = OtherCa::new();
    assert!(!verifies(&stranger.der, &leaf.cert, "myapp.example.test"));

    let by_ip = ca.issue("127.0.0.1").unwrap();
    assert!(verifies(ca.ca_der(), &by_ip.cert, "127.0.0.1"));
    assert!(!verifies(ca.ca_der(), &by_ip.cert, "127.0.0.2"));

    for refused in ["*.example.test", "", "bad name", "a..b"] {
        assert!(
            matches!(ca.issue(refused), Err(TlsError::InvalidHost { .. })),
            "{refused:?}"
        );
    }
}

#[test]
fn install_checks_the_pair_the_domain_and_the_dates() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CustomCerts::new(tmp.path().join("custom"));
    let ca = OtherCa::new();
    let (chain, key, leaf) = ca.valid_leaf(&["shop.example.org", "www.shop.example.org"]);
    let (_, other_key, _) = ca.valid_leaf(&["shop.example.org"]);

    let error = store
        .install("shop.example.org", &chain, &other_key)
        .unwrap_err();
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    let error = store.install("blog.example.org", &chain, &key).unwrap_err();
    assert!(matches!(error, TlsError::NotCovered { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("shop.example.org, www.shop.example.org"),
        "{error}"
    );
    let error = store
        .install("shop.example.org", "not a certificate", &key)
        .unwrap_err();
    assert!(
        matches!(
            error,
            TlsError::BadPem {
                what: "certificate",
                ..
            }
        ),
        "{error}"
    );
    let error = store
        .install(
            "shop.example.org",
            &chain,
            "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
        )
        .unwrap_err();
    assert!(
        matches!(
            error,
            TlsError::BadPem {
                what: "private key",
                ..
            }
        ),
        "{error}"
    );
    let (old_chain, old_key, _) = ca.leaf(
        &["shop.example.org"],
        OffsetDateTime::now_utc() - time::Duration::days(1),
    );
    let error = store
        .install("shop.example.org", &old_chain, &old_key)
        .unwrap_err();
    assert!(matches!(error, TlsError::Expired { .. }), "{error}");
    for bad in ["../etc/passwd", "a/b", "*.org", ""] {
        let error = store.install(bad, &chain, &key).unwrap_err();
        assert!(
            matches!(error, TlsError::InvalidDomain { .. }),
            "{bad:?}: {error}"
        );
    }
    assert!(
        store.list().unwrap().is_empty(),
        "nothing refused was written"
    );

    let info = store.install("Shop.Example.org", &chain, &key).unwrap();
    assert_eq!(info.domain, "shop.example.org");
    assert_eq!(info.fingerprint, fingerprint_of(&leaf));
    assert_eq!(info.names, ["shop.example.org", "www.shop.example.org"]);
    let key_file = store.dir().join("shop.example.org.key");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(store.list().unwrap(), vec![info]);
}

#[test]
fn wildcard_install_list_and_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CustomCerts::new(tmp.path().join("custom"));
    let ca = OtherCa::new();
    let (wild_chain, wild_key, _) = ca.valid_leaf(&["*.example.org"]);
    // A wildcard certificate covers one label below, so it may be installed for that name.
    store
        .install("a.example.org", &wild_chain, &wild_key)
        .unwrap();
    store
        .install("*.example.org", &wild_chain, &wild_key)
        .unwrap();
    assert!(matches!(
        store.install("a.b.example.org", &wild_chain, &wild_key),
        Err(TlsError::NotCovered { .. })
    ));
    let (exact_chain, exact_key, _) = ca.valid_leaf(&["b.example.org"]);
    assert!(matches!(
        store.install("*.example.org", &exact_chain, &exact_key),
        Err(TlsError::NotCovered { .. })
    ));

    let domains: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.domain)
        .collect();
    assert_eq!(domains, ["*.example.org", "a.example.org"]);
    assert!(store.dir().join("_wildcard.example.org.crt").exists());

    store.remove("*.example.org").unwrap();
    let error = store.remove("*.example.org").unwrap_err();
    assert!(matches!(error, TlsError::NotFound { .. }), "{error}");
    assert!(
        error.to_string().contains("installed: a.example.org"),
        "{error}"
    );
    store.remove("a.example.org").unwrap();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(store.dir()).unwrap().count(),
        0,
        "no file left behind"
    );
}

#[test]
fn resolver_prefers_custom_exact_then_wildcard_then_issues() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = authority(tmp.path());
    let store = CustomCerts::new(tmp.path().join("custom"));
    let other = OtherCa::new();
    let (exact_chain, exact_key, exact_leaf) = other.valid_leaf(&["shop.example.org"]);
    let (wild_chain, wild_key, wild_leaf) = other.valid_leaf(&["*.example.org"]);
    store
        .install("shop.example.org", &exact_chain, &exact_key)
        .unwrap();
    store
        .install("*.example.org", &wild_chain, &wild_key)
        .unwrap();
    let resolver = CertResolver::new(ca.clone(), store, "node.example.test").unwrap();

    let served = |name: Option<&str>| resolver.resolve_name(name).expect("a certificate");
    assert_eq!(leaf_of(&served(Some("shop.example.org"))), &exact_leaf);
    assert_eq!(leaf_of(&served(Some("blog.example.org"))), &wild_leaf);
    for issued in ["a.b.example.org", "example.org", "myapp.example.test"] {
        let certified = served(Some(issued));
        assert!(verifies(ca.ca_der(), &certified.cert, issued), "{issued}");
    }
    let default = served(None);
    assert!(verifies(ca.ca_der(), &default.cert, "node.example.test"));
    // Issued once, then kept.
    assert!(Arc::ptr_eq(
        &served(Some("myapp.example.test")),
        &served(Some("myapp.example.test"))
    ));
    assert!(resolver.resolve_name(Some("not a name")).is_none());
    assert!(resolver.resolve_name(Some("*.example.test")).is_none());
}

#[test]
fn a_name_filter_limits_what_the_ca_signs_but_not_custom_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = authority(tmp.path());
    let store = CustomCerts::new(tmp.path().join("custom"));
    let (chain, key, leaf) = OtherCa::new().valid_leaf(&["shop.example.org"]);
    store.install("shop.example.org", &chain, &key).unwrap();
    let resolver = CertResolver::new(ca.clone(), store, "127.0.0.1")
        .unwrap()
        .issuing_only_for(Box::new(|name| name.ends_with(".example.test")));
    assert!(resolver.resolve_name(Some("app.example.test")).is_some());
    assert!(
        resolver
            .resolve_name(Some("invented.example.net"))
            .is_none(),
        "no certificate for a name outside the filter"
    );
    assert_eq!(
        leaf_of(&resolver.resolve_name(Some("shop.example.org")).unwrap()),
        &leaf
    );
    assert!(
        resolver.resolve_name(None).is_some(),
        "the default name stays"
    );
}

#[test]
fn resolver_picks_up_installs_and_removals_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = authority(tmp.path());
    let store = CustomCerts::new(tmp.path().join("custom"));
    let resolver = CertResolver::new(ca.clone(), store.clone(), "node.example.test").unwrap();
    let issued = resolver.resolve_name(Some("shop.example.org")).unwrap();
    assert!(verifies(ca.ca_der(), &issued.cert, "shop.example.org"));

    let other = OtherCa::new();
    let (chain, key, leaf) = other.valid_leaf(&["shop.example.org"]);
    store.install("shop.example.org", &chain, &key).unwrap();
    let served =
        wait_for(|| leaf_of(&resolver.resolve_name(Some("shop.example.org")).unwrap()) == &leaf);
    assert!(served, "the installed certificate was never served");

    // Replaced at once by a second install (same second: the settle rule must catch it).
    let (chain2, key2, leaf2) = other.valid_leaf(&["shop.example.org"]);
    store.install("shop.example.org", &chain2, &key2).unwrap();
    assert!(wait_for(|| leaf_of(
        &resolver.resolve_name(Some("shop.example.org")).unwrap()
    ) == &leaf2));

    store.remove("shop.example.org").unwrap();
    assert!(wait_for(|| {
        let certified = resolver.resolve_name(Some("shop.example.org")).unwrap();
        verifies(ca.ca_der(), &certified.cert, "shop.example.org")
    }));
    // reload() applies at once.
    store.install("shop.example.org", &chain, &key).unwrap();
    resolver.reload();
    assert_eq!(
        leaf_of(&resolver.resolve_name(Some("shop.example.org")).unwrap()),
        &leaf
    );
}

/// Polls `ok` for up to 5 s.
fn wait_for(ok: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn server_config_offers_h2_and_http11() {
    let tmp = tempfile::tempdir().unwrap();
    let resolver = CertResolver::new(
        authority(tmp.path()),
        CustomCerts::new(tmp.path().join("c")),
        "127.0.0.1",
    )
    .unwrap();
    let config = strato_tls::server_config(Arc::new(resolver)).unwrap();
    assert_eq!(
        config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
}
