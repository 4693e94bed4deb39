//! App logs as the API serves them: the recent lines of each app, kept in a bounded ring
//! fed from the `apptail.<guid>` bus streams, and a live feed for `logs --follow`.
//!
//! This is the micro cloud's `logs` role in its first form; drains and durable storage
//! come with the logyard work.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use strato_bus::SharedBus;
use strato_core::messages::LogLine;
use tokio::sync::broadcast;

#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    per_app: usize,
    recent: Mutex<HashMap<String, VecDeque<LogLine>>>,
    live: broadcast::Sender<LogLine>,
}

impl LogStore {
    pub fn new(per_app: usize) -> Self {
        let (live, _) = broadcast::channel(4096);
        LogStore {
            inner: Arc::new(Inner {
                per_app,
                recent: Mutex::new(HashMap::new()),
                live,
            }),
        }
    }

    /// Starts consuming `apptail.>` from the bus.
    pub async fn listen(
        &self,
        bus: SharedBus,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        let mut sub = bus.subscribe("apptail.>").await?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    m = sub.next() => match m {
                        Some(m) => match strato_bus::decode::<LogLine>(&m) {
                            Ok(line) => me.push(line),
                            Err(e) => tracing::debug!(error = %e, "ignoring malformed log line"),
                        },
                        None => break,
                    }
                }
            }
        });
        Ok(())
    }

    /// Records one line.
    pub fn push(&self, line: LogLine) {
        {
            let mut map = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
            let q = map.entry(line.app.clone()).or_default();
            if q.len() >= self.inner.per_app {
                q.pop_front();
            }
            q.push_back(line.clone());
        }
        let _ = self.inner.live.send(line);
    }

    /// The last `n` lines of an app, oldest first.
    pub fn tail(&self, app: &str, n: usize) -> Vec<LogLine> {
        let map = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        map.get(app)
            .map(|q| q.iter().skip(q.len().saturating_sub(n)).cloned().collect())
            .unwrap_or_default()
    }

    /// Lines from now on, for every app (filter by `app`).
    pub fn follow(&self) -> broadcast::Receiver<LogLine> {
        self.inner.live.subscribe()
    }

    /// Forgets an app's lines (on delete).
    pub fn forget(&self, app: &str) {
        self.inner
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(app);
    }
}
