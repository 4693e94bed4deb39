//! Timing defaults. Each is also a config key so an operator can change it live; the
//! defaults aim at DESIGN's targets (sub-second to a few seconds), not CF's 10–30 s.

use std::time::Duration;

pub const DEA_ADVERTISE_INTERVAL: Duration = Duration::from_secs(2);
pub const DEA_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// An instance with no heartbeat for this long is considered gone.
pub const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(6);
/// How often a DEA re-sends `router.register` for its running instances.
pub const ROUTE_REGISTER_INTERVAL: Duration = Duration::from_secs(5);
/// A route not refreshed for this long expires from the router's table.
pub const ROUTE_TTL: Duration = Duration::from_secs(20);
/// An unmapped route's backends keep serving this long unless new ones arrive first.
pub const ROUTE_DRAIN: Duration = Duration::from_secs(5);
/// SIGTERM, then SIGKILL after this.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// An instance must pass its health check within this.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Crashed containers are kept this long for `files` and `ssh --instance`.
pub const CRASH_RETENTION: Duration = Duration::from_secs(3600);
pub const STAGING_TIMEOUT: Duration = Duration::from_secs(900);
/// Restarts at once for the first few crashes, then back off.
pub const CRASH_IMMEDIATE_RESTARTS: u32 = 3;
pub const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(60);
