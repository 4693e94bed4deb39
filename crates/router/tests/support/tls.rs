//! The cloud's TLS as stratod sets it up (its CA, custom certificates, the rustls config)
//! and a raw TLS client, for the tests that go through the router's HTTPS port.

use std::net::SocketAddr;
use std::sync::Arc;

use strato_router::rustls::pki_types::{CertificateDer, ServerName};
use strato_router::rustls::{self, ClientConfig, RootCertStore};
use strato_router::{HttpsSettings, RouterConfig};
use strato_tls::{Authority, CertResolver, CustomCerts};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::TestRouter;

/// The cloud's CA and custom certificate store in a temp dir, and the rustls config made
/// from them, as stratod sets them up.
pub struct Tls {
    pub authority: Arc<Authority>,
    pub custom: CustomCerts,
    pub config: Arc<rustls::ServerConfig>,
    _dir: tempfile::TempDir,
}

impl Tls {
    pub fn new() -> Tls {
        let dir = tempfile::tempdir().unwrap();
        let authority =
            Arc::new(Authority::load_or_create(&dir.path().join("ca"), "Strato CA test").unwrap());
        let custom = CustomCerts::new(dir.path().join("custom"));
        let resolver = CertResolver::new(authority.clone(), custom.clone(), "127.0.0.1").unwrap();
        let config = strato_tls::server_config(Arc::new(resolver)).unwrap();
        Tls {
            authority,
            custom,
            config,
            _dir: dir,
        }
    }

    pub async fn router(&self, adjust: impl FnOnce(&mut RouterConfig)) -> TestRouter {
        let config = self.config.clone();
        TestRouter::start(move |cfg| {
            cfg.https = Some(HttpsSettings::new("127.0.0.1:0".parse().unwrap(), config));
            adjust(cfg);
        })
        .await
    }

    /// A reqwest client trusting only the cloud's CA, with `host` resolving to `addr`.
    pub fn client(&self, host: &str, addr: SocketAddr) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.authority.ca_pem().as_bytes()).unwrap();
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .resolve(host, addr)
            .build()
            .unwrap()
    }
}

/// A raw TLS client connection trusting only `root`, asking for `sni`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    root: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let stream = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
}
