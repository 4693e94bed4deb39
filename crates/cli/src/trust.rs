//! Which TLS certificates the client accepts for a target.
//!
//! By default: those the well-known public roots vouch for, plus the target's own
//! certificate authority when the user accepted it at `strato target` (after comparing its
//! SHA-256 fingerprint with what `kato info` shows on the server; a Strato node's router
//! presents certificates its CA issues per host name). `--skip-ssl-validation` or
//! `STRATO_SKIP_SSL_VALIDATION`/`STACKATO_SKIP_SSL_VALIDATION` turn checking off. The same
//! rules serve HTTPS requests (reqwest) and WebSockets (`wss://` for `run`, `ssh`, `tunnel`).

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::{CertificateDer, ServerName};

use crate::config::Session;

/// What a connection to one target trusts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    /// The target's own CA (PEM), accepted at `strato target`.
    pub ca_pem: Option<String>,
    /// Accept any certificate.
    pub skip: bool,
}

impl Trust {
    /// The trust saved with `session`, with the environment's skip switch.
    pub fn of(session: &Session) -> Trust {
        let env_skip = crate::config::env_pair("SKIP_SSL_VALIDATION")
            .is_some_and(|v| v != "0" && v != "false" && !v.is_empty());
        Trust {
            ca_pem: session.ca_pem.clone(),
            skip: session.skip_ssl_validation || env_skip,
        }
    }

    /// Applies this trust to a reqwest client.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder> {
        let mut builder = builder.danger_accept_invalid_certs(self.skip);
        if let Some(pem) = &self.ca_pem {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes())
                .context("the saved certificate authority is damaged; run `strato target` again")?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(builder)
    }

    /// A rustls client configuration with this trust (for `wss://`).
    pub fn rustls_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow!("TLS set-up: {e}"))?;
        let config = if self.skip {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(strato_tls::ChainRecorder::default()))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            if let Some(pem) = &self.ca_pem {
                for der in pem_certificates(pem)? {
                    roots
                        .add(der)
                        .context("the saved certificate authority is not usable")?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(Arc::new(config))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates `host:port` presents, leaf first, read without checking them (to show
/// the user what they are asked to trust).
pub async fn presented_chain(host: &str, port: u16) -> Result<Vec<CertificateDer<'static>>> {
    let verifier = Arc::new(strato_tls::ChainRecorder::default());
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS set-up: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| anyhow!("'{host}' is not a host name or address"))?;
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| anyhow!("{host}:{port} did not answer within 10 s"))?
    .with_context(|| format!("cannot connect to {host}:{port}"))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {host}:{port}"))?;
    let chain = verifier.chain();
    if chain.is_empty() {
        return Err(anyhow!("{host}:{port} presented no certificate"));
    }
    Ok(chain)
}

/// SHA-256 of a certificate, as upper-case hex pairs joined by `:` (as `kato info` shows).
pub fn fingerprint(der: &[u8]) -> String {
    strato_tls::fingerprint_of(der)
}

/// Whether two fingerprints are the same, ignoring case and separators.
pub fn same_fingerprint(a: &str, b: &str) -> bool {
    let a = strato_tls::normalize_fingerprint(a);
    !a.is_empty() && a == strato_tls::normalize_fingerprint(b)
}

/// A DER certificate as PEM.
pub fn to_pem(der: &[u8]) -> String {
    strato_tls::certificate_pem(der)
}

fn pem_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow!("the saved certificate authority is damaged ({e}); run `strato target` again")
        })
}

/// Whether an error (its full text) says the server's certificate is not trusted.
pub fn is_untrusted_certificate(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("unknownissuer")
        || e.contains("unknown issuer")
        || e.contains("invalid peer certificate")
        || e.contains("certificate verify failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_compare_loosely() {
        let fp = fingerprint(b"abc");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(same_fingerprint(&fp, &fp.replace(':', "").to_lowercase()));
        assert!(!same_fingerprint(&fp, &fingerprint(b"abd")));
        assert!(!same_fingerprint("", ""));
    }

    #[test]
    fn pem_round_trips() {
        let pem = to_pem(&[1, 2, 3, 4]);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        let back = pem_certificates(&pem).unwrap();
        assert_eq!(back[0].as_ref(), &[1, 2, 3, 4]);
    }
}
