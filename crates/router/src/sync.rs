//! The router's side of the bus: applying route messages to the table, pruning it, and
//! announcing `router.start` so DEAs register everything they run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use strato_bus::{Message, SharedBus, Subscription};
use strato_core::messages::{DeaHeartbeat, RouteRegistration, RouterStart};
use strato_core::subjects;
use tokio_util::sync::CancellationToken;

use crate::config::RouterConfig;
use crate::table::{RouteChange, RouteTable};

/// One subscription for both register and unregister keeps them in publication order.
pub(crate) const ROUTE_SUBJECTS: &str = "router.*";

/// Most changes applied as one table swap when a burst arrives (e.g. after `router.start`).
const MAX_BATCH: usize = 1024;

/// Applies route messages until `stop` or the subscription ends.
pub(crate) async fn follow_routes(
    mut routes: Subscription,
    table: Arc<RouteTable>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            message = routes.next() => match message {
                Some(message) => message,
                None => {
                    tracing::warn!("route subscription ended; the route table no longer changes");
                    return;
                }
            },
        };
        let mut batch: Vec<RouteChange> = decode(&first).into_iter().collect();
        while batch.len() < MAX_BATCH {
            match routes.next().now_or_never() {
                Some(Some(message)) => batch.extend(decode(&message)),
                _ => break,
            }
        }
        if !batch.is_empty() {
            table.apply(batch);
        }
    }
}

/// Records DEA heartbeats in the table until `stop`, so the routes of a DEA that goes
/// silent are dropped (see [`RouteTable::with_dea_deadline`]).
pub(crate) async fn follow_heartbeats(
    mut heartbeats: Subscription,
    table: Arc<RouteTable>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = heartbeats.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        match strato_bus::decode::<DeaHeartbeat>(&message) {
            Ok(heartbeat) => table.dea_heartbeat(&heartbeat.dea),
            Err(error) => tracing::debug!(%error, "ignoring a malformed DEA heartbeat"),
        }
    }
}

/// The route change a bus message carries; other `router.*` subjects yield nothing.
fn decode(message: &Message) -> Option<RouteChange> {
    let wrap = match message.subject.as_str() {
        subjects::ROUTER_REGISTER => RouteChange::Register,
        subjects::ROUTER_UNREGISTER => RouteChange::Unregister,
        _ => return None,
    };
    match strato_bus::decode::<RouteRegistration>(message) {
        Ok(registration) => Some(wrap(registration)),
        Err(error) => {
            tracing::warn!(%error, "ignoring a malformed route message");
            None
        }
    }
}

/// Prunes the table every `interval`, except while the router cannot hear the bus (its
/// client is disconnected, or nothing came in for `deaf_after`, which a live DEA's
/// heartbeats never allow): then nobody can refresh a route, so none is taken for dead
/// and apps keep serving while the bus or the core is down (gorouter does the same). A
/// hold lasts at most `max_hold`: past that, ports may have been handed to other apps.
pub(crate) async fn prune(
    table: Arc<RouteTable>,
    bus: SharedBus,
    interval: Duration,
    deaf_after: Duration,
    max_hold: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut holding_since: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {
                let deaf = !bus.is_connected() || table.silent_for() >= deaf_after;
                match (deaf, holding_since) {
                    (false, held) => {
                        if held.is_some() {
                            tracing::info!("the bus is heard again: routes are pruned again");
                            holding_since = None;
                        }
                        table.prune();
                    }
                    (true, None) => {
                        tracing::warn!("the bus is not heard: keeping every route until it is");
                        holding_since = Some(std::time::Instant::now());
                        table.hold();
                    }
                    (true, Some(since)) if since.elapsed() < max_hold => table.hold(),
                    (true, Some(_)) => table.prune(),
                }
            }
        }
    }
}

/// What this router tells DEAs when it starts.
pub(crate) fn router_start(id: &str, addr: SocketAddr, cfg: &RouterConfig) -> RouterStart {
    RouterStart {
        id: id.to_string(),
        hosts: vec![addr.ip().to_string()],
        minimum_register_interval_in_seconds: whole_seconds(cfg.register_interval),
        prune_threshold_in_seconds: whole_seconds(cfg.route_ttl),
    }
}

/// Seconds rounded up, at least 1 (the wire format has no fractions).
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// Publishes `router.start` now and then every `every` until `stop`.
pub(crate) async fn announce(
    bus: SharedBus,
    start: RouterStart,
    every: Option<Duration>,
    stop: CancellationToken,
) {
    loop {
        if let Err(error) =
            strato_bus::publish_json(bus.as_ref(), subjects::ROUTER_START, &start).await
        {
            tracing::warn!(%error, "cannot announce router.start; DEAs re-register on their own schedule");
        }
        let Some(every) = every else { return };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(whole_seconds(Duration::from_millis(300)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(5500)), 6);
        assert_eq!(whole_seconds(Duration::from_secs(20)), 20);
    }

    #[test]
    fn other_router_subjects_are_ignored() {
        let message = Message {
            subject: subjects::ROUTER_START.into(),
            reply: None,
            payload: bytes::Bytes::from_static(b"{}"),
        };
        assert!(decode(&message).is_none());
    }
}
