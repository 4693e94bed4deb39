//! The cloud's own certificate authority: one long-lived CA created at setup, whose
//! certificate users trust once, and which then issues a short-lived leaf certificate for
//! every host name the router is asked for.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use crate::files::{self, PRIVATE, PUBLIC};
use crate::{fingerprint_of, names, TlsError};

/// File name of the CA certificate (PEM) in the authority's directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key (PEM, mode 0600) in the authority's directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// How long a new CA is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long an issued leaf is valid: a year, under the 398 days some clients allow.
pub(crate) const LEAF_VALIDITY: Duration = Duration::days(365);
/// Certificates start this far in the past, so clients with a slow clock accept them.
const BACKDATE: Duration = Duration::hours(1);
/// X.509's upper bound for a common name.
const MAX_COMMON_NAME: usize = 64;

/// The CA: its certificate, and the key it signs leaves with.
pub struct Authority {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    fingerprint: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the CA kept in `dir` (`ca.crt`, `ca.key`), or creates it there, named `name`
    /// (e.g. "Strato CA node1"), when neither file exists. A CA that is only half there, or
    /// whose key is not the certificate's, is an error rather than silently replaced:
    /// replacing it would break every client that trusts it.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<Authority, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Authority::load(dir, &cert_path, &key_path),
            (false, false) => Authority::create(dir, name),
            (true, false) => Err(broken(dir, format!("{} is missing", key_path.display()))),
            (false, true) => Err(broken(dir, format!("{} is missing", cert_path.display()))),
        }
    }

    fn create(dir: &Path, name: &str) -> Result<Authority, TlsError> {
        files::ensure_dir(dir, 0o700)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key)?;
        // The key first: a certificate without its key would block the next start.
        files::write_atomic(
            &dir.join(CA_KEY_FILE),
            key.serialize_pem().as_bytes(),
            PRIVATE,
        )?;
        files::write_atomic(&dir.join(CA_CERT_FILE), cert.pem().as_bytes(), PUBLIC)?;
        tracing::info!(dir = %dir.display(), name, "created the cloud's certificate authority");
        Authority::assemble(dir, cert.pem(), cert.der().clone(), key)
    }

    fn load(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<Authority, TlsError> {
        let ca_pem = files::read_text(cert_path)?;
        let key_pem = files::read_text(key_path)?;
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| {
            broken(
                dir,
                format!("{} is not a PEM certificate: {e}", cert_path.display()),
            )
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            broken(
                dir,
                format!("{} is not a PEM private key: {e}", key_path.display()),
            )
        })?;
        Authority::assemble(dir, ca_pem, ca_der, key)
    }

    fn assemble(
        dir: &Path,
        ca_pem: String,
        ca_der: CertificateDer<'static>,
        key: KeyPair,
    ) -> Result<Authority, TlsError> {
        let spki = crate::custom::subject_public_key_info(&ca_der)
            .map_err(|reason| broken(dir, format!("{CA_CERT_FILE}: {reason}")))?;
        if spki != key.subject_public_key_info() {
            return Err(broken(
                dir,
                format!("{CA_KEY_FILE} is not the key of {CA_CERT_FILE}"),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&ca_der, key)
            .map_err(|e| broken(dir, format!("{CA_CERT_FILE}: {e}")))?;
        Ok(Authority {
            fingerprint: fingerprint_of(&ca_der),
            ca_pem,
            ca_der,
            issuer,
        })
    }

    /// The CA certificate in PEM, for users to trust (`ca.crt`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate in DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// SHA-256 of the CA certificate, as upper-case hex pairs joined by ':' (what browsers
    /// and `openssl x509 -fingerprint -sha256` show), for users to check what they trust.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// Like [`Authority::issue`], for a server that reads PEM files (the cluster's NATS
    /// server): the chain `[leaf, CA]` and the leaf's private key, both PEM.
    pub fn issue_pem(&self, host: &str) -> Result<(String, String), TlsError> {
        let (leaf, key) = self.sign_leaf(host)?;
        Ok((
            format!("{}{}", leaf.pem(), self.ca_pem),
            key.serialize_pem(),
        ))
    }

    /// Issues a leaf certificate for exactly `host` (a lower-case DNS name, or an IP
    /// address), valid for a year, with a fresh key; the chain is `[leaf, CA]`. Wildcards
    /// are never issued.
    pub fn issue(&self, host: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let (leaf, key) = self.sign_leaf(host)?;
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(&private)?;
        Ok(Arc::new(CertifiedKey::new(
            vec![leaf.der().clone(), self.ca_der.clone()],
            signer,
        )))
    }

    /// A fresh key and a leaf certificate for exactly `host`, signed by this CA.
    fn sign_leaf(&self, host: &str) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
        let ip = host.parse::<IpAddr>().ok();
        if ip.is_none() {
            names::check_host(host).map_err(|reason| TlsError::InvalidHost {
                host: host.to_string(),
                reason,
            })?;
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        params.distinguished_name = if host.len() <= MAX_COMMON_NAME {
            common_name(host)
        } else {
            DistinguishedName::new()
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        let leaf = params.signed_by(&key, &self.issuer)?;
        Ok((leaf, key))
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn broken(dir: &Path, reason: String) -> TlsError {
    TlsError::BrokenAuthority {
        dir: PathBuf::from(dir),
        reason,
    }
}
