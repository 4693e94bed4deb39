//! Role supervision: each role runs as its own task; a role that fails or panics is
//! restarted with a doubling back-off (1 s up to 30 s) and the failure is logged as an
//! event. Roles can be started and stopped one by one while the node runs.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use strato_core::Role;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Builds one run of a role; called again for each restart.
pub type RoleFactory = Arc<
    dyn Fn(CancellationToken) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>
        + Send
        + Sync,
>;

/// What `kato status` shows for one role.
#[derive(Clone, Debug, Serialize)]
pub struct RoleStatus {
    pub role: String,
    /// `running`, `restarting`, `stopped`.
    pub state: String,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub since: String,
}

struct Slot {
    status: Arc<Mutex<RoleStatus>>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// The roles running on this node.
#[derive(Default)]
pub struct Supervisor {
    slots: Mutex<BTreeMap<Role, Slot>>,
    /// Set by [`Supervisor::shut_down`]: the node is going down, and a start asked for
    /// meanwhile (a role change arriving late, a control call) must not outlive it.
    stopping: AtomicBool,
}

fn set(status: &Arc<Mutex<RoleStatus>>, state: &str, err: Option<String>) {
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    s.state = state.to_string();
    s.since = strato_core::now_rfc3339();
    if err.is_some() {
        s.last_error = err;
    }
}

impl Supervisor {
    /// Starts `role` unless it already runs.
    pub fn start(&self, role: Role, factory: RoleFactory) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if self.stopping.load(Ordering::SeqCst) {
            tracing::info!(%role, "not starting: the node is stopping");
            return;
        }
        if let Some(s) = slots.get(&role) {
            if !s.task.is_finished() {
                return;
            }
        }
        let status = Arc::new(Mutex::new(RoleStatus {
            role: role.name().to_string(),
            state: "running".into(),
            restarts: 0,
            last_error: None,
            since: strato_core::now_rfc3339(),
        }));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(supervise(role, factory, status.clone(), cancel.clone()));
        slots.insert(
            role,
            Slot {
                status,
                cancel,
                task,
            },
        );
    }

    /// Stops `role` and waits (bounded) for it to finish.
    pub async fn stop(&self, role: Role, wait: Duration) -> bool {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&role);
        match slot {
            Some(s) => {
                s.cancel.cancel();
                let _ = tokio::time::timeout(wait, s.task).await;
                true
            }
            None => false,
        }
    }

    /// Stops every role at once and gives each up to `wait` to finish (the DEA uses it to
    /// stop its instances cleanly). Roles may be started again afterwards (`kato stop -n
    /// NODE` then `kato start -n NODE`).
    pub async fn stop_all(&self, wait: Duration) {
        let slots: Vec<(Role, Slot)> =
            std::mem::take(&mut *self.slots.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        for (_, s) in &slots {
            s.cancel.cancel();
        }
        for (role, s) in slots {
            if tokio::time::timeout(wait, s.task).await.is_err() {
                tracing::warn!(%role, "role did not stop in time");
            }
        }
    }

    /// Stops every role for good: the node is going down, and no role starts any more.
    pub async fn shut_down(&self, wait: Duration) {
        {
            // Under the slots lock, as `start` checks it: no start slips in between.
            let _slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            self.stopping.store(true, Ordering::SeqCst);
        }
        self.stop_all(wait).await;
    }

    pub fn status(&self) -> Vec<RoleStatus> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| s.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }

    pub fn running(&self) -> Vec<Role> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }
}

async fn supervise(
    role: Role,
    factory: RoleFactory,
    status: Arc<Mutex<RoleStatus>>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let child = cancel.child_token();
        let run = tokio::spawn(factory(child.clone()));
        set(&status, "running", None);
        let started = std::time::Instant::now();
        let outcome = run.await;
        if cancel.is_cancelled() {
            set(&status, "stopped", None);
            return;
        }
        child.cancel();
        let err = match outcome {
            Ok(Ok(())) => "exited unexpectedly".to_string(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) if e.is_panic() => "panicked".to_string(),
            Err(e) => e.to_string(),
        };
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        {
            let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
            s.restarts += 1;
        }
        set(&status, "restarting", Some(err.clone()));
        tracing::error!(target: "event", %role, error = %err, retry_in_ms = backoff.as_millis() as u64, "role failed; restarting");
        tokio::select! {
            _ = cancel.cancelled() => { set(&status, "stopped", None); return; }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_failing_role_is_restarted_and_can_be_stopped() {
        let sup = Supervisor::default();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let factory: RoleFactory = Arc::new(move |cancel: CancellationToken| {
            let r = r.clone();
            Box::pin(async move {
                if r.fetch_add(1, Ordering::SeqCst) == 0 {
                    anyhow::bail!("boom");
                }
                cancel.cancelled().await;
                Ok(())
            })
        });
        sup.start(Role::Router, factory);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "restarted once after the failure"
        );
        let st = sup.status();
        assert_eq!(st[0].restarts, 1);
        assert_eq!(st[0].state, "running");
        assert_eq!(st[0].last_error.as_deref(), Some("boom"));
        assert!(sup.stop(Role::Router, Duration::from_secs(2)).await);
        assert!(sup.status().is_empty());
    }

    #[tokio::test]
    async fn roles_start_again_after_stop_all_but_not_while_the_node_shuts_down() {
        let sup = Arc::new(Supervisor::default());
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let factory: RoleFactory = Arc::new(move |cancel: CancellationToken| {
            let r = r.clone();
            Box::pin(async move {
                r.fetch_add(1, Ordering::SeqCst);
                // Slow to stop, as a data service is.
                cancel.cancelled().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(())
            })
        });
        // Stopping every role (`kato stop -n NODE`) lets them start again.
        sup.start(Role::Dea, factory.clone());
        sup.stop_all(Duration::from_secs(2)).await;
        sup.start(Role::Dea, factory.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "started again after stop_all"
        );
        let stopping = tokio::spawn({
            let sup = sup.clone();
            async move { sup.shut_down(Duration::from_secs(2)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A start asked for while the node stops (a late role change) is refused.
        sup.start(Role::Router, factory);
        stopping.await.unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "nothing started while shutting down"
        );
        assert!(sup.status().is_empty(), "{:?}", sup.status());
    }
}
