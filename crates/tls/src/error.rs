//! What can go wrong with the cloud's certificates, each worded to tell the operator what
//! to do about it.

use std::path::{Path, PathBuf};

/// Errors of the CA, the custom certificate store and the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read or write {path}: {source}; check that the directory exists and that this user may write it")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the certificate authority in {dir} cannot be loaded: {reason}; restore ca.crt and ca.key from a backup, or move both away to create a new CA (clients must then trust the new one)")]
    BrokenAuthority { dir: PathBuf, reason: String },
    #[error("cannot issue a certificate for '{host}': {reason}")]
    InvalidHost { host: String, reason: String },
    #[error("'{domain}' is not a domain a certificate can be installed for: {reason}; use lower-case DNS labels such as shop.example.com, or *.example.com for a wildcard")]
    InvalidDomain { domain: String, reason: String },
    #[error(
        "the {what} is not usable: {reason}; pass the PEM file (it starts with -----BEGIN …-----)"
    )]
    BadPem { what: &'static str, reason: String },
    #[error("the private key does not belong to the certificate for {domain}; pass the key that was created together with this certificate")]
    KeyMismatch { domain: String },
    #[error("the certificate does not cover '{domain}': it is for {names}; install it under one of those names, or get a certificate whose names include '{domain}'")]
    NotCovered { domain: String, names: String },
    #[error(
        "the certificate for '{domain}' expired on {not_after}; renew it and install the new one"
    )]
    Expired { domain: String, not_after: String },
    #[error("no custom certificate is installed for '{domain}'; installed: {installed}")]
    NotFound { domain: String, installed: String },
    #[error("cannot create a certificate: {0}")]
    Generate(String),
    #[error("cannot set up TLS: {0}")]
    Config(#[from] rustls::Error),
    #[error("a sealed message cannot be opened: it was sealed for another secret, or altered")]
    Unsealable,
}

impl TlsError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> TlsError {
        TlsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<rcgen::Error> for TlsError {
    fn from(error: rcgen::Error) -> TlsError {
        TlsError::Generate(error.to_string())
    }
}
