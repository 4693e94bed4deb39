//! Strato's shared vocabulary.
//!
//! Everything here is plain data with no I/O: the role table, Cloud Foundry style API
//! errors, the bus subjects and their payloads (REFERENCE §5), timing defaults and where
//! data lives on disk. Every other crate speaks in these types, so a message published by a
//! DEA on one node is read by a router on another without either knowing the other's code.

pub mod error;
pub mod home;
pub mod messages;
pub mod names;
pub mod paths;
pub mod role;
pub mod subjects;
pub mod timings;

pub use error::ApiError;
pub use role::Role;

/// A new random guid, the identifier of every API resource.
pub fn new_guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Current time as RFC 3339 with second precision, as Cloud Foundry prints it.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Seconds since the epoch, as a float (heartbeat `state_timestamp`).
pub fn unix_now() -> f64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9
}

/// The version string every binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
