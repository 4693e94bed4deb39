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

/// The crash history of one index of an app.
#[derive(Clone, Debug)]
struct CrashRecord {
    count: u32,
    last: Instant,
    /// Back-off: no restart before this.
    not_before: Instant,
    /// A restart was asked for since the last crash; further starts of this index are
    /// ordinary (shielded) ones, so one crash never starts two instances.
    restart_sent: bool,
}

#[derive(Default)]
struct Actual {
    /// instance id → what the last heartbeat said, per app.
    apps: HashMap<String, HashMap<String, Seen>>,
    crashes: HashMap<(String, u32), CrashRecord>,
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
            let req = HmRequest::start(&e.droplet, &e.version, vec![e.index], "evacuated");
            request(bus, req).await;
        }
        ExitReason::Crashed => {
            let now = Instant::now();
            let record = a
                .crashes
                .entry((e.droplet.clone(), e.index))
                .or_insert(CrashRecord {
                    count: 0,
                    last: now,
                    not_before: now,
                    restart_sent: false,
                });
            if record.last.elapsed() > cfg.crash_reset {
                record.count = 0;
            }
            record.count += 1;
            record.last = now;
            let delay = backoff(cfg, record.count);
            record.not_before = now + delay;
            record.restart_sent = delay.is_zero();
            let count = record.count;
            drop(a);
            tracing::info!(target: "event", app = %e.droplet, index = e.index, crashes = count, delay_ms = delay.as_millis() as u64, "health_manager: instance crashed ({}); restarting", e.exit_description);
            if delay.is_zero() {
                let req = HmRequest::start(&e.droplet, &e.version, vec![e.index], "crashed");
                request(bus, req).await;
            }
        }
    }
}

/// No delay for the first crashes, then doubling from 2 s up to the maximum.
fn backoff(cfg: &HealthConfig, crashes: u32) -> Duration {
    if crashes <= cfg.immediate_restarts {
        Duration::ZERO
    } else {
        let exp = (crashes - cfg.immediate_restarts).min(10);
        Duration::from_secs(1u64 << exp).min(cfg.backoff_max)
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
        let mut guard = actual.lock().await;
        let a = &mut *guard;
        // Instances whose heartbeats stopped (their DEA died or was cut off) are gone: they
        // are started again at once, past the controller's start shield.
        let mut lost: std::collections::HashSet<(String, u32)> = Default::default();
        for (app, m) in a.apps.iter_mut() {
            m.retain(|_, s| {
                let alive = s.at.elapsed() < cfg.heartbeat_deadline;
                if !alive && matches!(s.state, InstanceState::Running | InstanceState::Starting) {
                    lost.insert((app.clone(), s.index));
                }
                alive
            });
        }
        let now = Instant::now();
        let empty = HashMap::new();
        for d in desired.iter().filter(|d| d.runnable()) {
            let seen = a.apps.get(&d.droplet).unwrap_or(&empty);
            let blocked = |i: u32| {
                a.crashes
                    .get(&(d.droplet.clone(), i))
                    .is_some_and(|c| c.not_before > now)
            };
            let p = plan(d, seen, &blocked);
            // A backed-off crash whose time has come is restarted as a crash (once), an
            // instance whose heartbeats stopped as lost; anything else missing is an
            // ordinary start.
            let mut crashed = Vec::new();
            let mut gone = Vec::new();
            let mut missing = Vec::new();
            for i in p.start {
                match a.crashes.get_mut(&(d.droplet.clone(), i)) {
                    Some(c) if !c.restart_sent => {
                        c.restart_sent = true;
                        crashed.push(i);
                    }
                    _ if lost.contains(&(d.droplet.clone(), i)) => gone.push(i),
                    _ => missing.push(i),
                }
            }
            for (indices, reason) in [(missing, "missing"), (crashed, "crashed"), (gone, "lost")] {
                if !indices.is_empty() {
                    todo.push(HmRequest::start(&d.droplet, &d.version, indices, reason));
                }
            }
            if !p.stop.is_empty() {
                todo.push(HmRequest::stop(&d.droplet, p.stop, "extra"));
            }
        }
        // Apps no longer desired (stopped or deleted) with live instances: stop them.
        let wanted: std::collections::HashSet<&String> =
            desired.iter().map(|d| &d.droplet).collect();
        for (app, seen) in a.apps.iter().filter(|(app, _)| !wanted.contains(app)) {
            let ids: Vec<String> = seen
                .iter()
                .filter(|(_, s)| {
                    matches!(s.state, InstanceState::Running | InstanceState::Starting)
                })
                .map(|(id, _)| id.clone())
                .collect();
            if !ids.is_empty() {
                todo.push(HmRequest::stop(app, ids, "not desired"));
            }
        }
    }
    for req in todo {
        request(bus, req).await;
    }
    Ok(())
}

async fn request(bus: &SharedBus, req: HmRequest) {
    tracing::info!(target: "event", app = %req.droplet, op = ?req.op, indices = ?req.indices, instances = ?req.instances, reason = %req.reason, "health_manager decision");
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
            has_droplet: true,
        }
    }

    #[test]
    fn an_app_waiting_for_staging_keeps_its_instances_only_if_it_has_a_droplet() {
        let restaging = DesiredApp {
            package_state: "PENDING".into(),
            ..desired(1)
        };
        assert!(
            restaging.runnable(),
            "new bits or buildpack: the old droplet runs"
        );
        let first_push = DesiredApp {
            package_state: "PENDING".into(),
            has_droplet: false,
            ..desired(1)
        };
        assert!(
            !first_push.runnable(),
            "nothing to run before the first staging"
        );
        let from_an_older_controller: DesiredApp = serde_json::from_value(serde_json::json!({
            "droplet": "a", "version": "v2", "instances": 1, "state": "STARTED",
            "package_state": "STAGED"
        }))
        .unwrap();
        assert!(from_an_older_controller.runnable());
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
    fn backoff_is_immediate_then_doubles_up_to_the_maximum() {
        let cfg = HealthConfig::default();
        assert_eq!(backoff(&cfg, cfg.immediate_restarts), Duration::ZERO);
        assert_eq!(
            backoff(&cfg, cfg.immediate_restarts + 1),
            Duration::from_secs(2)
        );
        assert_eq!(
            backoff(&cfg, cfg.immediate_restarts + 2),
            Duration::from_secs(4)
        );
        assert_eq!(backoff(&cfg, 100), cfg.backoff_max);
    }

    #[test]
    fn backing_off_index_is_not_started() {
        let p = plan(&desired(2), &HashMap::new(), &|i| i == 1);
        assert_eq!(p.start, vec![0]);
    }
}
