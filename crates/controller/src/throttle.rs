//! Login throttling: failed password logins are counted per user name and per client
//! address; after a few, each further attempt must wait, the wait doubling up to a cap.
//! A success clears the user's count (not the address's: one address guessing many
//! users stays slowed down). Kept in memory: a restart forgets, which only helps a user
//! who was locked out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before waits begin.
const FREE_FAILURES: u32 = 5;
const FIRST_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(300);
/// A key with no failure for this long starts over.
const FORGET_AFTER: Duration = Duration::from_secs(900);
/// At most this many keys are tracked (oldest dropped first).
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Record {
    failures: u32,
    last: Instant,
}

impl Record {
    /// When the next attempt is allowed.
    fn open_at(&self) -> Instant {
        if self.failures < FREE_FAILURES {
            return self.last;
        }
        let doublings = (self.failures - FREE_FAILURES).min(16);
        let wait = FIRST_WAIT.saturating_mul(1 << doublings).min(MAX_WAIT);
        self.last + wait
    }
}

/// Failed-login counters by key (`user:NAME`, `addr:IP`).
#[derive(Default)]
pub struct LoginThrottle {
    records: Mutex<HashMap<String, Record>>,
}

impl LoginThrottle {
    /// `Err(wait)` when any of `keys` must still wait that long.
    pub fn check(&self, keys: &[String]) -> Result<(), Duration> {
        self.check_at(keys, Instant::now())
    }

    fn check_at(&self, keys: &[String], now: Instant) -> Result<(), Duration> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let wait = keys
            .iter()
            .filter_map(|k| records.get(k))
            .filter(|r| now.duration_since(r.last) < FORGET_AFTER)
            .map(|r| r.open_at().saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Counts a failed attempt against every key.
    pub fn failed(&self, keys: &[String]) {
        self.failed_at(keys, Instant::now());
    }

    fn failed_at(&self, keys: &[String], now: Instant) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() >= MAX_KEYS {
            records.retain(|_, r| now.duration_since(r.last) < FORGET_AFTER);
        }
        for k in keys {
            let r = records.entry(k.clone()).or_insert(Record {
                failures: 0,
                last: now,
            });
            if now.duration_since(r.last) >= FORGET_AFTER {
                r.failures = 0;
            }
            r.failures += 1;
            r.last = now;
        }
    }

    /// Clears a key after a successful login.
    pub fn succeeded(&self, key: &str) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        vec!["user:admin".to_string(), "addr:10.0.0.9".to_string()]
    }

    #[test]
    fn a_few_failures_are_free_then_waits_double() {
        let t = LoginThrottle::default();
        let start = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            t.failed_at(&keys(), start);
            assert!(t.check_at(&keys(), start).is_ok());
        }
        t.failed_at(&keys(), start);
        assert_eq!(t.check_at(&keys(), start), Err(FIRST_WAIT));
        t.failed_at(&keys(), start);
        assert_eq!(t.check_at(&keys(), start), Err(FIRST_WAIT * 2));
        assert!(t.check_at(&keys(), start + FIRST_WAIT * 2).is_ok());
    }

    #[test]
    fn waits_are_capped_and_forgotten() {
        let t = LoginThrottle::default();
        let start = Instant::now();
        for _ in 0..40 {
            t.failed_at(&keys(), start);
        }
        assert_eq!(t.check_at(&keys(), start), Err(MAX_WAIT));
        assert!(t.check_at(&keys(), start + FORGET_AFTER).is_ok());
    }

    #[test]
    fn success_clears_the_user_but_not_the_address() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        for _ in 0..FREE_FAILURES {
            t.failed_at(&keys(), now);
        }
        t.succeeded("user:admin");
        assert!(t.check_at(&["user:admin".to_string()], now).is_ok());
        assert!(t.check_at(&["addr:10.0.0.9".to_string()], now).is_err());
    }
}
