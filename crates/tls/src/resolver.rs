//! Which certificate a TLS handshake gets, chosen by the name the client asks for (SNI):
//! an operator-installed one when its domain matches (exact first, then a `*.parent`
//! wildcard standing for one label), otherwise a leaf the cloud's CA issues for exactly
//! that name, once, and keeps. Installed certificates are picked up without a restart.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{names, Authority, CustomCerts, TlsError};

/// Most issued leaves kept; when full the cache starts over (issuing is cheap).
pub const MAX_ISSUED: usize = 10_000;
/// An issued leaf is replaced after this, long before it expires.
const REISSUE_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);
/// The custom certificate directory is looked at no more often than this.
const CHECK_EVERY_MS: u64 = 1000;
/// A directory changed this shortly before it was read is read again, in case a second
/// change landed within the same modification-time tick.
const SETTLE: Duration = Duration::from_secs(2);

/// The router's certificate resolver (see the module docs).
pub struct CertResolver {
    authority: Arc<Authority>,
    custom: CustomCerts,
    default_name: String,
    installed: RwLock<Installed>,
    issued: Mutex<HashMap<String, Issued>>,
    /// Milliseconds since the epoch before which the directory is not looked at again.
    next_check_ms: AtomicU64,
    /// Which names the CA signs for (all valid names when `None`).
    issue_for: Option<NameFilter>,
}

/// Decides whether the CA signs a certificate for a name a client asked for.
pub type NameFilter = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// The custom certificates as last read, and when.
struct Installed {
    by_domain: HashMap<String, Arc<CertifiedKey>>,
    dir_mtime: Option<SystemTime>,
    read_at: SystemTime,
}

struct Issued {
    certified: Arc<CertifiedKey>,
    at: Instant,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("custom", &self.custom.dir())
            .field("default_name", &self.default_name)
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    /// A resolver issuing from `authority`, serving the certificates in `custom`, and
    /// answering clients that send no name (e.g. `https://<ip>/`) with a certificate for
    /// `default_name` (a DNS name or an IP address).
    pub fn new(
        authority: Arc<Authority>,
        custom: CustomCerts,
        default_name: &str,
    ) -> Result<CertResolver, TlsError> {
        let default_name = default_name
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if default_name.parse::<std::net::IpAddr>().is_err() {
            names::check_host(&default_name).map_err(|reason| TlsError::InvalidHost {
                host: default_name.clone(),
                reason,
            })?;
        }
        let resolver = CertResolver {
            authority,
            custom,
            default_name,
            installed: RwLock::new(Installed {
                by_domain: HashMap::new(),
                dir_mtime: None,
                read_at: UNIX_EPOCH,
            }),
            issued: Mutex::new(HashMap::new()),
            next_check_ms: AtomicU64::new(0),
            issue_for: None,
        };
        resolver.reload();
        Ok(resolver)
    }

    /// Signs certificates only for names `filter` accepts (and the default name), so a
    /// client cannot make the CA sign one for every name it invents. Installed custom
    /// certificates are served whatever the filter says.
    pub fn issuing_only_for(mut self, filter: NameFilter) -> CertResolver {
        self.issue_for = Some(filter);
        self
    }

    /// Reads the custom certificate directory again now.
    pub fn reload(&self) {
        let dir_mtime = mtime_of(self.custom.dir());
        let read_at = SystemTime::now();
        let previous = self.read_installed(|installed| installed.by_domain.clone());
        let by_domain = self.custom.load_all(&previous);
        if let Ok(mut installed) = self.installed.write() {
            *installed = Installed {
                by_domain,
                dir_mtime,
                read_at,
            };
        }
    }

    /// The certificate for a client asking for `server_name` (`None`: no SNI); `None` when
    /// the name is not one a certificate can be issued for.
    pub fn resolve_name(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.reload_if_changed();
        let name = match server_name {
            Some(name) => name.trim_end_matches('.').to_ascii_lowercase(),
            None => self.default_name.clone(),
        };
        if let Some(custom) = self.custom_for(&name) {
            return Some(custom);
        }
        self.issued_for(&name)
    }

    fn custom_for(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.read_installed(|installed| {
            let exact = installed.by_domain.get(name);
            let wildcard = || names::wildcard_over(name).and_then(|w| installed.by_domain.get(&w));
            exact.or_else(wildcard).cloned()
        })
    }

    fn issued_for(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(filter) = &self.issue_for {
            if name != self.default_name && !filter(name) {
                return None;
            }
        }
        if let Some(issued) = self.issued.lock().ok()?.get(name) {
            if issued.at.elapsed() < REISSUE_AFTER {
                return Some(issued.certified.clone());
            }
        }
        let certified = match self.authority.issue(name) {
            Ok(certified) => certified,
            Err(error) => {
                tracing::debug!(%error, "no certificate for a TLS client");
                return None;
            }
        };
        let mut issued = self.issued.lock().ok()?;
        if issued.len() >= MAX_ISSUED && !issued.contains_key(name) {
            issued.clear();
        }
        issued.insert(
            name.to_string(),
            Issued {
                certified: certified.clone(),
                at: Instant::now(),
            },
        );
        Some(certified)
    }

    /// Re-reads the directory when its modification time moved (or is too recent to tell),
    /// looking at most once a second across all threads.
    fn reload_if_changed(&self) {
        let now_ms = epoch_ms();
        let due = self.next_check_ms.load(Ordering::Relaxed);
        if now_ms < due
            || self
                .next_check_ms
                .compare_exchange(
                    due,
                    now_ms + CHECK_EVERY_MS,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let mtime = mtime_of(self.custom.dir());
        let stale = self.read_installed(|installed| {
            mtime != installed.dir_mtime
                || mtime.is_some_and(|m| {
                    installed
                        .read_at
                        .duration_since(m)
                        .map_or(true, |age| age < SETTLE)
                })
        });
        if stale {
            self.reload();
        }
    }

    fn read_installed<T: Default>(&self, read: impl FnOnce(&Installed) -> T) -> T {
        self.installed.read().map(|i| read(&i)).unwrap_or_default()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.resolve_name(client_hello.server_name())
    }
}

fn mtime_of(dir: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(dir).and_then(|m| m.modified()).ok()
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
