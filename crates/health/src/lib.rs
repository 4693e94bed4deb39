//! The health manager role: it compares what should run (asked of the controller on
//! `cloudcontrollers.hm.desired`) with what runs (DEA heartbeats), and asks the controller
//! to start missing instances and stop extra ones (`cloudcontrollers.hm.requests`).
//!
//! Crashes (`droplet.exited` with reason CRASHED) are restarted at once for the first few,
//! then with a doubling back-off. Every decision is logged as an event line.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strato_bus::SharedBus;
use strato_core::messages::*;
use strato_core::{subjects, timings};
use tokio::sync::Mutex;

/// Timings of the health manager; each is a config key.
#[derive(Clone, Debug)]
pub struct HealthConfig {
    /// How often desired and actual state are compared.
    pub interval: Duration,
    /// An instance with no heartbeat for this long is gone.
    pub heartbeat_deadline: Duration,
    /// Crashes restarted without delay.
    pub immediate_restarts: u32,
    pub backoff_max: Duration,
    /// Crash counts are forgotten after an instance runs this long.
    pub crash_reset: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(2),
            heartbeat_deadline: timings::HEARTBEAT_DEADLINE,
            immediate_restarts: timings::CRASH_IMMEDIATE_RESTARTS,
            backoff_max: timings::CRASH_BACKOFF_MAX,
            crash_reset: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Debug)]
struct Seen {
    version: String,
    index: u32,
    state: InstanceState,
    at: Instant,
}

#[derive(Default)]
struct Actual {
    /// instance id → what the last heartbeat said, per app.
    apps: HashMap<String, HashMap<String, Seen>>,
    /// (app, index) → (crash count, last crash, restart not before).
    crashes: HashMap<(String, u32), (u32, Instant, Instant)>,
}

/// What to ask of the controller for one app, computed from desired and actual state.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Plan {
    pub start: Vec<u32>,
    pub stop: Vec<String>,
}

/// Pure decision for one app: missing indices to start (unless backing off), extra
/// instances (index beyond desired, or an old version once the new one runs) to stop.
fn plan(desired: &DesiredApp, seen: &HashMap<String, Seen>, blocked: &dyn Fn(u32) -> bool) -> Plan {
    let mut p = Plan::default();
    let live = |s: &Seen| matches!(s.state, InstanceState::Running | InstanceState::Starting);
    for index in 0..desired.instances {
        let has = seen
            .values()
            .any(|s| s.index == index && s.version == desired.version && live(s));
        if !has && !blocked(index) {
            p.start.push(index);
        }
    }
    // Two live instances of one index and version: keep the one that sorts first.
    let mut kept: HashMap<u32, &String> = HashMap::new();
    let mut ids: Vec<&String> = seen.keys().collect();
    ids.sort();
    for id in ids {
        let s = &seen[id];
        if live(s) && s.version == desired.version && s.index < desired.instances {
            if let std::collections::hash_map::Entry::Vacant(e) = kept.entry(s.index) {
                e.insert(id);
            } else {
                p.stop.push(id.clone());
            }
        }
    }
    for (id, s) in seen {
        if !live(s) {
            continue;
        }
        let beyond = s.index >= desired.instances;
        let old = s.version != desired.version
            && seen.values().any(|n| {
                n.index == s.index
                    && n.version == desired.version
                    && n.state == InstanceState::Running
            });
        if beyond || old {
            p.stop.push(id.clone());
        }
    }
    p.start.sort();
    p.stop.sort();
    p
}

/// Runs the health manager until `shutdown`.
pub async fn run(
    cfg: HealthConfig,
    bus: SharedBus,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let actual = Arc::new(Mutex::new(Actual::default()));
    let mut hb = bus.subscribe(subjects::DEA_HEARTBEAT).await?;
    let mut exited = bus.subscribe(subjects::DROPLET_EXITED).await?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = hb.next() => {
                let Some(m) = m else { return Ok(()) };
                if let Ok(h) = strato_bus::decode::<DeaHeartbeat>(&m) {
                    let mut a = actual.lock().await;
                    for d in h.droplets {
                        a.apps.entry(d.droplet.clone()).or_default().insert(d.instance.clone(), Seen { version: d.version, index: d.index, state: d.state, at: Instant::now() });
                    }
                }
            }
            m = exited.next() => {
                let Some(m) = m else { return Ok(()) };
                if let Ok(e) = strato_bus::decode::<DropletExited>(&m) {
                    on_exit(&cfg, &bus, &actual, e).await;
                }
            }
            _ = tick.tick() => {
                // After a restart of the health manager, wait one deadline so heartbeats
                // arrive before anything is declared missing.
                if started.elapsed() < cfg.heartbeat_deadline {
                    continue;
                }
                if let Err(e) = reconcile(&cfg, &bus, &actual).await {
                    tracing::debug!(error = %e, "health manager could not reconcile");
                }
            }
        }
    }
}

async fn on_exit(
    cfg: &HealthConfig,
    bus: &SharedBus,
    actual: &Arc<Mutex<Actual>>,
    e: DropletExited,
) {
    let mut a = actual.lock().await;
    if let Some(m) = a.apps.get_mut(&e.droplet) {
        m.remove(&e.instance);
    }
    match e.reason {
        ExitReason::Stopped | ExitReason::DeaShutdown => {}
        ExitReason::DeaEvacuation => {
            drop(a);
            request(
                bus,
                HmOp::Start,
                &e.droplet,
                &e.version,
                vec![e.index],
                vec![],
                "evacuated",
            )
            .await;
        }
        ExitReason::Crashed => {
            let now = Instant::now();
            let entry = a
                .crashes
                .entry((e.droplet.clone(), e.index))
                .or_insert((0, now, now));
            if entry.1.elapsed() > cfg.crash_reset {
                entry.0 = 0;
            }
            entry.0 += 1;
            entry.1 = now;
            let count = entry.0;
            let delay = if count <= cfg.immediate_restarts {
                Duration::ZERO
            } else {
                let exp = (count - cfg.immediate_restarts).min(10);
                Duration::from_secs(1u64 << exp).min(cfg.backoff_max)
            };
            entry.2 = now + delay;
            drop(a);
            tracing::info!(target: "event", app = %e.droplet, index = e.index, crashes = count, delay_ms = delay.as_millis() as u64, "health_manager: instance crashed ({}); restarting", e.exit_description);
            if delay.is_zero() {
                request(
                    bus,
                    HmOp::Start,
                    &e.droplet,
                    &e.version,
                    vec![e.index],
                    vec![],
                    "crashed",
                )
                .await;
            }
        }
    }
}

async fn reconcile(
    cfg: &HealthConfig,
    bus: &SharedBus,
    actual: &Arc<Mutex<Actual>>,
) -> anyhow::Result<()> {
    let desired: Vec<DesiredApp> = strato_bus::request_json(
        bus.as_ref(),
        subjects::CC_DESIRED,
        &serde_json::json!({}),
        Duration::from_secs(5),
    )
    .await?;
    let mut todo = Vec::new();
    {
        let mut a = actual.lock().await;
        for m in a.apps.values_mut() {
            m.retain(|_, s| s.at.elapsed() < cfg.heartbeat_deadline);
        }
        let now = Instant::now();
        for d in &desired {
            if d.package_state != "STAGED" {
                continue;
            }
            let empty = HashMap::new();
            let seen = a.apps.get(&d.droplet).unwrap_or(&empty);
            let crashes = &a.crashes;
            let blocked = |i: u32| {
                crashes
                    .get(&(d.droplet.clone(), i))
                    .map(|c| c.2 > now)
                    .unwrap_or(false)
            };
            let p = plan(d, seen, &blocked);
            // Crash restarts due now: a backed-off crash whose time has come.
            let reason = |i: u32| {
                if crashes.contains_key(&(d.droplet.clone(), i)) {
                    "crashed"
                } else {
                    "missing"
                }
            };
            let (crashed, missing): (Vec<u32>, Vec<u32>) =
                p.start.iter().partition(|i| reason(**i) == "crashed");
            todo.push((
                d.droplet.clone(),
                d.version.clone(),
                missing,
                crashed,
                p.stop,
            ));
        }
        let wanted: std::collections::HashSet<&String> =
            desired.iter().map(|d| &d.droplet).collect();
        // Apps no longer desired (stopped or deleted) with live instances: stop them.
        for (app, seen) in &a.apps {
            if !wanted.contains(app) {
                let ids: Vec<String> = seen
                    .iter()
                    .filter(|(_, s)| {
                        matches!(s.state, InstanceState::Running | InstanceState::Starting)
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                if !ids.is_empty() {
                    todo.push((app.clone(), String::new(), vec![], vec![], ids));
                }
            }
        }
    }
    for (app, version, missing, crashed, stop) in todo {
        if !missing.is_empty() {
            request(bus, HmOp::Start, &app, &version, missing, vec![], "missing").await;
        }
        if !crashed.is_empty() {
            request(bus, HmOp::Start, &app, &version, crashed, vec![], "crashed").await;
        }
        if !stop.is_empty() {
            request(bus, HmOp::Stop, &app, &version, vec![], stop, "extra").await;
        }
    }
    Ok(())
}

async fn request(
    bus: &SharedBus,
    op: HmOp,
    app: &str,
    version: &str,
    indices: Vec<u32>,
    instances: Vec<String>,
    reason: &str,
) {
    tracing::info!(target: "event", app, ?op, ?indices, ?instances, reason, "health_manager decision");
    let req = HmRequest {
        op,
        droplet: app.to_string(),
        version: version.to_string(),
        indices,
        instances,
        reason: reason.to_string(),
    };
    if let Err(e) = strato_bus::publish_json(bus.as_ref(), subjects::CC_HM_REQUESTS, &req).await {
        tracing::warn!(error = %e, "health manager could not send its request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(v: &str, i: u32, st: InstanceState) -> Seen {
        Seen {
            version: v.into(),
            index: i,
            state: st,
            at: Instant::now(),
        }
    }

    fn desired(n: u32) -> DesiredApp {
        DesiredApp {
            droplet: "a".into(),
            version: "v2".into(),
            instances: n,
            state: "STARTED".into(),
            package_state: "STAGED".into(),
        }
    }

    #[test]
    fn starts_missing_and_stops_extra() {
        let mut m = HashMap::new();
        m.insert("i0".to_string(), seen("v2", 0, InstanceState::Running));
        m.insert("i3".to_string(), seen("v2", 3, InstanceState::Running));
        let p = plan(&desired(3), &m, &|_| false);
        assert_eq!(p.start, vec![1, 2]);
        assert_eq!(p.stop, vec!["i3".to_string()]);
    }

    #[test]
    fn old_version_stops_only_once_new_one_runs() {
        let mut m = HashMap::new();
        m.insert("old".to_string(), seen("v1", 0, InstanceState::Running));
        let p = plan(&desired(1), &m, &|_| false);
        assert_eq!(p.start, vec![0]);
        assert!(p.stop.is_empty(), "keep serving until the new version runs");
        m.insert("new".to_string(), seen("v2", 0, InstanceState::Running));
        let p = plan(&desired(1), &m, &|_| false);
        assert!(p.start.is_empty());
        assert_eq!(p.stop, vec!["old".to_string()]);
    }

    #[test]
    fn duplicate_index_is_stopped() {
        let mut m = HashMap::new();
        m.insert("a".to_string(), seen("v2", 0, InstanceState::Running));
        m.insert("b".to_string(), seen("v2", 0, InstanceState::Running));
        let p = plan(&desired(1), &m, &|_| false);
        assert_eq!(p.stop, vec!["b".to_string()]);
    }

    #[test]
    fn backing_off_index_is_not_started() {
        let p = plan(&desired(2), &HashMap::new(), &|i| i == 1);
        assert_eq!(p.start, vec![0]);
    }
}
