//! One app instance as the DEA tracks it, and how it appears in bus payloads
//! (heartbeats, `dea.find.droplet` replies, route registrations, `droplet.exited`).

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use strato_core::messages::{
    DropletExited, ExitReason, HeartbeatInstance, InstanceInfo, InstanceState, RouteRegistration,
    StartRequest,
};
use tokio::sync::watch;

pub struct Instance {
    pub id: String,
    pub container_id: String,
    pub req: StartRequest,
    pub state: InstanceState,
    pub state_timestamp: f64,
    pub port: u16,
    /// The container's own address when it has a network namespace of its own; routes and
    /// probes then go there instead of to the DEA's host address.
    pub address: Option<String>,
    /// The instance dir (`app/` inside).
    pub dir: PathBuf,
    pub running_since: Option<Instant>,
    /// `Some(status)` once the container's init has exited (or never started: -1).
    pub exit: watch::Receiver<Option<i32>>,
    /// The last CPU sample, for `cpu_percent`.
    pub cpu_sample: Option<(Instant, u64)>,
    /// After a crash: the container started on the kept files so `run`/`ssh` can look at
    /// them, until the retention period ends.
    pub inspection: Option<String>,
}

/// Seconds since the epoch, as CF timestamps are.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Instance {
    pub fn set_state(&mut self, state: InstanceState) {
        self.state = state;
        self.state_timestamp = now();
    }

    /// Whether it holds resources (memory, a port, a container).
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            InstanceState::Starting | InstanceState::Running | InstanceState::Stopping
        )
    }

    pub fn heartbeat(&self) -> HeartbeatInstance {
        HeartbeatInstance {
            droplet: self.req.droplet.clone(),
            version: self.req.version.clone(),
            instance: self.id.clone(),
            index: self.req.index,
            state: self.state,
            state_timestamp: self.state_timestamp,
        }
    }

    /// Where routers and probes reach the instance: its own address, or the DEA's.
    pub fn reachable_at<'a>(&'a self, dea_host: &'a str) -> &'a str {
        self.address.as_deref().unwrap_or(dea_host)
    }

    pub fn route(&self, dea: &str, host: &str) -> RouteRegistration {
        RouteRegistration {
            dea: dea.to_string(),
            app: self.req.droplet.clone(),
            uris: self.req.uris.clone(),
            host: self.reachable_at(host).to_string(),
            port: self.port,
            tags: Default::default(),
            private_instance_id: self.id.clone(),
        }
    }

    pub fn info(&self, dea: &str, host: &str) -> InstanceInfo {
        InstanceInfo {
            dea: dea.to_string(),
            droplet: self.req.droplet.clone(),
            version: self.req.version.clone(),
            instance: self.id.clone(),
            index: self.req.index,
            state: self.state,
            state_timestamp: self.state_timestamp,
            host: self.reachable_at(host).to_string(),
            port: self.port,
            uptime: self
                .running_since
                .map(|t| t.elapsed().as_secs_f64())
                .unwrap_or(0.0),
            mem_bytes: 0,
            cpu_percent: 0.0,
            disk_bytes: 0,
            mem_quota: self.req.limits.mem * 1024 * 1024,
            disk_quota: self.req.limits.disk * 1024 * 1024,
        }
    }

    pub fn exited(
        &self,
        reason: ExitReason,
        exit_status: Option<i32>,
        description: impl Into<String>,
    ) -> DropletExited {
        DropletExited {
            droplet: self.req.droplet.clone(),
            version: self.req.version.clone(),
            instance: self.id.clone(),
            index: self.req.index,
            reason,
            exit_status,
            exit_description: description.into(),
            crash_timestamp: (reason == ExitReason::Crashed).then(|| now() as i64),
        }
    }
}
