//! Operator-installed certificates (`kato op custom_ssl_cert`): one directory with
//! `<domain>.crt` (the chain, leaf first) and `<domain>.key` (mode 0600) per domain; a
//! wildcard domain `*.example.com` is kept as `_wildcard.example.com.*`. Everything is
//! checked before it is written, so the router never meets a pair it cannot serve.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use crate::files::{self, PRIVATE, PUBLIC};
use crate::{fingerprint_of, names, TlsError};

const CERT_EXT: &str = "crt";
const KEY_EXT: &str = "key";
/// How a leading `*.` is spelled in file names.
const WILDCARD_FILE_PREFIX: &str = "_wildcard.";

/// What `kato op custom_ssl_cert list` shows about one installed certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomCertInfo {
    /// The domain it is served for (`shop.example.com` or `*.example.com`).
    pub domain: String,
    /// The leaf's subject, e.g. `CN=shop.example.com`.
    pub subject: String,
    /// The leaf's issuer.
    pub issuer: String,
    /// The leaf's DNS and IP subject alternative names.
    pub names: Vec<String>,
    /// When the leaf expires.
    pub not_after: OffsetDateTime,
    /// SHA-256 of the leaf, upper-case hex pairs joined by ':'.
    pub fingerprint: String,
}

/// The directory of operator-installed certificates.
#[derive(Clone, Debug)]
pub struct CustomCerts {
    dir: PathBuf,
}

impl CustomCerts {
    /// The store kept in `dir` (created on the first install).
    pub fn new(dir: impl Into<PathBuf>) -> CustomCerts {
        CustomCerts { dir: dir.into() }
    }

    /// Where the certificates are kept.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Installs (or replaces) the certificate served for `domain`, after checking that the
    /// PEM parses, the key is the leaf's, the leaf covers `domain` and has not expired.
    /// `cert_chain_pem` holds the leaf first, then any intermediates.
    pub fn install(
        &self,
        domain: &str,
        cert_chain_pem: &str,
        key_pem: &str,
    ) -> Result<CustomCertInfo, TlsError> {
        let domain = normalize_domain(domain)?;
        let certified = certified_key(&domain, cert_chain_pem, key_pem)?;
        let leaf = &certified.cert[0];
        let facts = inspect(leaf).map_err(|reason| TlsError::BadPem {
            what: "certificate",
            reason,
        })?;
        if !facts.names.iter().any(|name| names::covers(name, &domain)) {
            return Err(TlsError::NotCovered {
                domain,
                names: describe_names(&facts),
            });
        }
        if facts.not_after <= OffsetDateTime::now_utc() {
            return Err(TlsError::Expired {
                domain,
                not_after: facts.not_after.to_string(),
            });
        }
        files::ensure_dir(&self.dir, 0o755)?;
        // The key first: a reader that meets the new key with the old certificate skips the
        // pair for a moment and keeps serving what it had.
        files::write_atomic(&self.path(&domain, KEY_EXT), key_pem.as_bytes(), PRIVATE)?;
        files::write_atomic(
            &self.path(&domain, CERT_EXT),
            cert_chain_pem.as_bytes(),
            PUBLIC,
        )?;
        tracing::info!(%domain, "installed a custom certificate");
        Ok(facts.into_info(domain, leaf))
    }

    /// Removes the certificate installed for `domain`.
    pub fn remove(&self, domain: &str) -> Result<(), TlsError> {
        let domain = normalize_domain(domain)?;
        let cert = self.path(&domain, CERT_EXT);
        let key = self.path(&domain, KEY_EXT);
        if !cert.exists() && !key.exists() {
            let installed: Vec<String> = self.domains()?.into_iter().collect();
            return Err(TlsError::NotFound {
                domain,
                installed: if installed.is_empty() {
                    "none".to_string()
                } else {
                    installed.join(", ")
                },
            });
        }
        for path in [cert, key] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => return Err(TlsError::io(&path, source)),
            }
        }
        tracing::info!(%domain, "removed a custom certificate");
        Ok(())
    }

    /// The installed certificates, by domain. A file that cannot be read is left out.
    pub fn list(&self) -> Result<Vec<CustomCertInfo>, TlsError> {
        let mut infos = Vec::new();
        for domain in self.domains()? {
            match self.info(&domain) {
                Ok(info) => infos.push(info),
                Err(error) => {
                    tracing::warn!(%domain, %error, "skipping an unreadable custom certificate")
                }
            }
        }
        Ok(infos)
    }

    fn info(&self, domain: &str) -> Result<CustomCertInfo, TlsError> {
        let pem = files::read_text(&self.path(domain, CERT_EXT))?;
        let leaf =
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::BadPem {
                what: "certificate",
                reason: e.to_string(),
            })?;
        let facts = inspect(&leaf).map_err(|reason| TlsError::BadPem {
            what: "certificate",
            reason,
        })?;
        Ok(facts.into_info(domain.to_string(), &leaf))
    }

    /// The domains that have a certificate file, sorted.
    fn domains(&self) -> Result<Vec<String>, TlsError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(TlsError::io(&self.dir, source)),
        };
        let mut domains: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| domain_of_file(&entry.file_name().to_string_lossy()))
            .collect();
        domains.sort();
        Ok(domains)
    }

    /// Every installed pair as the router serves it. A pair that cannot be loaded now (say,
    /// half replaced) keeps its entry from `previous`, if it had one.
    pub(crate) fn load_all(
        &self,
        previous: &HashMap<String, Arc<CertifiedKey>>,
    ) -> HashMap<String, Arc<CertifiedKey>> {
        let domains = self.domains().unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the custom certificates");
            previous.keys().cloned().collect()
        });
        let mut loaded = HashMap::new();
        for domain in domains {
            match self.load(&domain) {
                Ok(certified) => {
                    loaded.insert(domain, certified);
                }
                Err(error) => {
                    tracing::warn!(%domain, %error, "cannot load a custom certificate");
                    if let Some(kept) = previous.get(&domain) {
                        loaded.insert(domain, kept.clone());
                    }
                }
            }
        }
        loaded
    }

    fn load(&self, domain: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let cert = files::read_text(&self.path(domain, CERT_EXT))?;
        let key = files::read_text(&self.path(domain, KEY_EXT))?;
        certified_key(domain, &cert, &key).map(Arc::new)
    }

    fn path(&self, domain: &str, ext: &str) -> PathBuf {
        let stem = match domain.strip_prefix("*.") {
            Some(parent) => format!("{WILDCARD_FILE_PREFIX}{parent}"),
            None => domain.to_string(),
        };
        self.dir.join(format!("{stem}.{ext}"))
    }
}

/// Lower-cases and checks a domain given by the operator.
fn normalize_domain(domain: &str) -> Result<String, TlsError> {
    let domain = domain.trim().to_ascii_lowercase();
    names::check_domain(&domain).map_err(|reason| TlsError::InvalidDomain {
        domain: domain.clone(),
        reason,
    })?;
    Ok(domain)
}

/// The domain a `<domain>.crt` file is for; `None` for other files.
fn domain_of_file(file_name: &str) -> Option<String> {
    let stem = file_name.strip_suffix(&format!(".{CERT_EXT}"))?;
    let domain = match stem.strip_prefix(WILDCARD_FILE_PREFIX) {
        Some(parent) => format!("*.{parent}"),
        None => stem.to_string(),
    };
    names::check_domain(&domain).ok().map(|()| domain)
}

/// The chain and key as rustls serves them, checked to belong together.
fn certified_key(
    domain: &str,
    cert_chain_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what: "certificate",
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::BadPem {
            what: "certificate",
            reason: "it holds no CERTIFICATE block".to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::BadPem {
        what: "private key",
        reason: e.to_string(),
    })?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::BadPem {
            what: "private key",
            reason: format!("not an RSA, ECDSA or Ed25519 key this server can use ({e})"),
        })?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| TlsError::KeyMismatch {
        domain: domain.to_string(),
    })?;
    Ok(certified)
}

/// What the checks and the listing need from a leaf certificate.
struct LeafFacts {
    subject: String,
    issuer: String,
    names: Vec<String>,
    not_after: OffsetDateTime,
}

impl LeafFacts {
    fn into_info(self, domain: String, leaf: &CertificateDer<'_>) -> CustomCertInfo {
        CustomCertInfo {
            domain,
            subject: self.subject,
            issuer: self.issuer,
            names: self.names,
            not_after: self.not_after,
            fingerprint: fingerprint_of(leaf),
        }
    }
}

fn inspect(der: &[u8]) -> Result<LeafFacts, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate cannot be parsed ({e})"))?;
    let mut names = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("its subject alternative names cannot be parsed ({e})"))?;
    for name in san.iter().flat_map(|san| san.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
            GeneralName::IPAddress(bytes) => names.extend(ip_of(bytes).map(|ip| ip.to_string())),
            _ => {}
        }
    }
    Ok(LeafFacts {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        names,
        not_after: cert.validity().not_after.to_datetime(),
    })
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn describe_names(facts: &LeafFacts) -> String {
    if facts.names.is_empty() {
        format!(
            "no DNS name at all (subject {}; clients ignore the subject)",
            facts.subject
        )
    } else {
        facts.names.join(", ")
    }
}

/// The DER SubjectPublicKeyInfo of a certificate.
pub(crate) fn subject_public_key_info(der: &[u8]) -> Result<Vec<u8>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate cannot be parsed ({e})"))?;
    Ok(cert.public_key().raw.to_vec())
}
