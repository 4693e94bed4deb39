//! TLS for the cloud: the certificate authority created at setup ([`Authority`]), the
//! operator-installed certificates of `kato op custom_ssl_cert` ([`CustomCerts`]), and the
//! SNI resolver that serves either ([`CertResolver`]) in the router's rustls
//! [`server_config`].
//!
//! rustls runs on the `ring` provider only; certificates are made with rcgen. Issued leaves
//! are ECDSA P-256, for exactly the name asked for (never a wildcard: clients reject one
//! directly under a one-label domain such as `*.localhost`), signed by the CA, valid a year.

mod authority;
mod custom;
mod error;
mod files;
mod names;
mod pinned;
mod resolver;
mod sealed;

use std::sync::Arc;

use rustls::server::ServerSessionMemoryCache;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

pub use authority::{Authority, CA_CERT_FILE, CA_KEY_FILE};
pub use custom::{CustomCertInfo, CustomCerts};
pub use error::TlsError;
pub use pinned::{certificate_pem, normalize_fingerprint, ChainRecorder, PinnedCa};
pub use resolver::{CertResolver, NameFilter, MAX_ISSUED};
pub use sealed::{open, seal, Handshake};

/// The protocols offered in ALPN: the router's server speaks both.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// TLS sessions kept for resumption.
const SESSION_CACHE: usize = 4096;

/// The rustls configuration the router serves HTTPS with: TLS 1.2 and 1.3 on `ring`,
/// certificates from `resolver`, ALPN `h2` and `http/1.1`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(Arc::new(config))
}

/// SHA-256 of `der` as upper-case hex pairs joined by ':'.
pub fn fingerprint_of(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
