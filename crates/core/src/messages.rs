//! Bus payloads. Field names follow upstream Cloud Foundry (REFERENCE §5) so the JSON on the
//! wire is what a CF component would publish.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `router.register` / `router.unregister`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteRegistration {
    #[serde(default)]
    pub dea: String,
    #[serde(default)]
    pub app: String,
    pub uris: Vec<String>,
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub private_instance_id: String,
}

/// `router.start`: a router announces itself; DEAs answer by re-registering everything.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterStart {
    pub id: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(rename = "minimumRegisterIntervalInSeconds")]
    pub minimum_register_interval_in_seconds: u64,
    #[serde(rename = "pruneThresholdInSeconds")]
    pub prune_threshold_in_seconds: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementProperties {
    #[serde(default)]
    pub zone: String,
}

/// `dea.advertise`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeaAdvertise {
    pub id: String,
    pub stacks: Vec<String>,
    pub available_memory: i64,
    pub available_disk: i64,
    #[serde(default)]
    pub app_id_to_count: BTreeMap<String, u32>,
    #[serde(default)]
    pub placement_properties: PlacementProperties,
}

/// The state of an instance as a DEA reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    Starting,
    Running,
    Crashed,
    Stopping,
    Stopped,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "STARTING",
            InstanceState::Running => "RUNNING",
            InstanceState::Crashed => "CRASHED",
            InstanceState::Stopping => "STOPPING",
            InstanceState::Stopped => "STOPPED",
        }
    }
}

/// One instance in a `dea.heartbeat`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatInstance {
    /// The app guid.
    pub droplet: String,
    pub version: String,
    /// The instance id.
    pub instance: String,
    pub index: u32,
    pub state: InstanceState,
    pub state_timestamp: f64,
}

/// `dea.heartbeat`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeaHeartbeat {
    pub dea: String,
    pub droplets: Vec<HeartbeatInstance>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExitReason {
    Crashed,
    Stopped,
    DeaShutdown,
    DeaEvacuation,
}

/// `droplet.exited`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DropletExited {
    pub droplet: String,
    pub version: String,
    pub instance: String,
    pub index: u32,
    pub reason: ExitReason,
    pub exit_status: Option<i32>,
    pub exit_description: String,
    pub crash_timestamp: Option<i64>,
}

/// Resource limits of an instance: memory and disk in MB, file descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub mem: u64,
    pub disk: u64,
    pub fds: u64,
}

/// How a DEA decides an instance is up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Seconds the instance may take to pass.
    pub timeout: u64,
    /// `None`: the port accepting connections is enough.
    pub http_path: Option<String>,
    /// `true`: the instance is up once its process runs; no port is probed
    /// (`health_check_type: process`, for workers). Absent from older controllers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub process_only: bool,
}

/// `dea.<id>.start`: run one instance of a staged app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartRequest {
    /// The app guid.
    pub droplet: String,
    pub name: String,
    /// The app version (changes on every update that needs a restart).
    pub version: String,
    pub index: u32,
    /// sha256 of the droplet blob.
    pub droplet_sha256: String,
    /// Where the DEA can fetch the droplet when it is not in its cache.
    pub droplet_uri: String,
    pub uris: Vec<String>,
    pub limits: Limits,
    /// `KEY=VALUE` pairs from the user and bound services.
    pub env: Vec<String>,
    /// Overrides the droplet's start command.
    pub start_command: Option<String>,
    pub health_check: HealthCheck,
    pub space_id: String,
    pub space_name: String,
    #[serde(default)]
    pub services: serde_json::Value,
    /// Filesystem services to mount into the container.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
}

/// A host directory bind-mounted read-write into an app's containers: a filesystem
/// service (`STACKATO_FILESYSTEM`), or the staging cache (`BUILDPACK_CACHE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub host_path: String,
    pub container_path: String,
}

/// `dea.stop`: stop some or all instances of an app.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StopRequest {
    pub droplet: String,
    /// Only these versions (all when absent).
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub indices: Option<Vec<u32>>,
    #[serde(default)]
    pub instances: Option<Vec<String>>,
}

/// `dea.find.droplet` reply: one running or crashed instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub dea: String,
    pub droplet: String,
    pub version: String,
    pub instance: String,
    pub index: u32,
    pub state: InstanceState,
    pub state_timestamp: f64,
    pub host: String,
    pub port: u16,
    pub uptime: f64,
    #[serde(default)]
    pub mem_bytes: u64,
    #[serde(default)]
    pub cpu_percent: f64,
    #[serde(default)]
    pub disk_bytes: u64,
    #[serde(default)]
    pub mem_quota: u64,
    #[serde(default)]
    pub disk_quota: u64,
}

/// `dea.update`: the uris of an app changed; running instances re-register with them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeaUpdate {
    pub droplet: String,
    pub uris: Vec<String>,
}

/// `dea.find.droplet` request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FindDroplet {
    pub droplet: String,
    #[serde(default)]
    pub include_stats: bool,
}

/// A staging request on `vcap.stager.default` (request/reply; the reply is a
/// [`StagingResult`]). Output streams on `staging.<task_id>.log` and `apptail.<app>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StagingRequest {
    pub app_id: String,
    pub app_name: String,
    pub task_id: String,
    /// sha256 of the package (the app's uploaded bits, a zip).
    pub package_sha256: String,
    pub package_uri: String,
    /// A buildpack name, git URL or local path; `None` detects.
    pub buildpack: Option<String>,
    pub environment: Vec<String>,
    pub limits: Limits,
    pub timeout_secs: u64,
    /// Filesystem services bound to the app (hooks may use them).
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// A filesystem service named `<app>-cache`: used as `BUILDPACK_CACHE` instead of
    /// the stager's own cache, so it outlives the app.
    #[serde(default)]
    pub cache_volume: Option<String>,
    /// Where a stager on another node `PUT`s the droplet: a URL template whose
    /// `{sha256}` the stager fills in. `None` when the stager shares the controller's blob
    /// directory (a micro cloud).
    #[serde(default)]
    pub droplet_upload_uri: Option<String>,
}

/// The outcome of staging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StagingResult {
    Staged {
        droplet_sha256: String,
        detected_buildpack: String,
        start_command: String,
    },
    Failed {
        /// `NoAppDetected`, `StagingError`, `Timeout`.
        kind: String,
        message: String,
        exit_status: Option<i32>,
        log_tail: Vec<String>,
    },
}

/// One line of app or staging output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub app: String,
    /// `app`, `staging`, `dea`, `health_manager`, `controller`.
    pub source: String,
    pub instance_index: Option<u32>,
    pub stream: String,
    pub timestamp: f64,
    pub text: String,
}

/// Exec inside an instance (`dea.<id>.exec`), answered by [`ExecReply`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub instance: String,
    pub argv: Vec<String>,
    pub timeout_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecReply {
    pub exit_status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Controller → DEA (`dea.<id>.session`): open a one-time streaming exec session in an
/// instance (`strato run`, `ssh`, `scp`), answered by [`SessionReply`]. The bytes never
/// travel over the bus: the reply names a WebSocket endpoint on the DEA.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionRequest {
    pub instance: String,
    /// The command; empty for an interactive login shell.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Run under a pseudo-terminal of this size (`ssh` from a terminal).
    #[serde(default)]
    pub tty: Option<TerminalSize>,
    /// `TERM` for a tty session (e.g. `xterm-256color`).
    #[serde(default)]
    pub term: Option<String>,
}

/// Rows and columns of a terminal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    pub rows: u16,
    pub cols: u16,
}

/// Where to connect for a session: a `ws://` URL on the DEA and a token valid once, for a
/// few seconds, for this instance and command only (sent as `Authorization: Bearer`).
/// `error` instead when the DEA refuses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionReply {
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub error: Option<String>,
}

/// The framing of exec session WebSockets, the same on the DEA's session endpoint and on
/// the API's `GET /v2/apps/{guid}/instances/{index}/ssh` (the controller relays frames
/// unchanged). Every binary frame starts with one channel byte; the rest is the payload:
///
/// | byte | direction | payload |
/// | --- | --- | --- |
/// | 0 `STDIN` | client → instance | bytes for the command's stdin (or its terminal) |
/// | 1 `STDOUT` | instance → client | bytes of stdout (everything, under a tty) |
/// | 2 `STDERR` | instance → client | bytes of stderr |
/// | 3 `RESIZE` | client → instance | JSON [`TerminalSize`] |
/// | 4 `EXIT` | instance → client | JSON [`SessionExit`]; the last frame, then close |
/// | 5 `STDIN_EOF` | client → instance | none: closes the command's stdin |
///
/// A client that closes the WebSocket before `EXIT` kills the command.
pub mod exec_frames {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    pub const RESIZE: u8 = 3;
    pub const EXIT: u8 = 4;
    pub const STDIN_EOF: u8 = 5;
}

/// The payload of an [`exec_frames::EXIT`] frame: the command's exit code (128 + signal
/// when killed), or -1 with `error` when it could not run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionExit {
    pub code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `dea.<id>.files` request: a path relative to the instance dir (which holds `app/`);
/// empty or `/` lists the instance dir.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FilesRequest {
    pub instance: String,
    #[serde(default)]
    pub path: String,
}

/// One directory entry of a [`FilesReply`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
}

/// `dea.<id>.files` reply: `entries` for a directory, `content` for a file (lossy UTF-8,
/// cut at the DEA's limit with `truncated` set), or `error`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FilesReply {
    #[serde(default)]
    pub entries: Option<Vec<FileEntry>>,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub error: Option<String>,
}

impl FilesReply {
    pub fn error(message: impl Into<String>) -> Self {
        FilesReply {
            error: Some(message.into()),
            ..FilesReply::default()
        }
    }
}

/// Health manager → controller: what it decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HmRequest {
    pub op: HmOp,
    pub droplet: String,
    pub version: String,
    pub indices: Vec<u32>,
    #[serde(default)]
    pub instances: Vec<String>,
    pub reason: String,
}

impl HmRequest {
    /// Whether the instances this request starts are known to be gone (they crashed, or
    /// their heartbeats stopped with their DEA): no start shield or rolling replacement
    /// should hold them back.
    pub fn known_gone(&self) -> bool {
        matches!(self.reason.as_str(), "crashed" | "lost")
    }

    /// Start these indices of `droplet` at `version`.
    pub fn start(droplet: &str, version: &str, indices: Vec<u32>, reason: &str) -> Self {
        HmRequest {
            op: HmOp::Start,
            droplet: droplet.to_string(),
            version: version.to_string(),
            indices,
            instances: Vec::new(),
            reason: reason.to_string(),
        }
    }

    /// Stop these instances (ids) of `droplet`.
    pub fn stop(droplet: &str, instances: Vec<String>, reason: &str) -> Self {
        HmRequest {
            op: HmOp::Stop,
            droplet: droplet.to_string(),
            version: String::new(),
            indices: Vec::new(),
            instances,
            reason: reason.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HmOp {
    Start,
    Stop,
}

/// Controller → health manager: the desired state of every started app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesiredApp {
    pub droplet: String,
    pub version: String,
    pub instances: u32,
    pub state: String,
    pub package_state: String,
    /// The app has a droplet its instances run, also while new bits (or a new buildpack)
    /// wait to be staged (`PENDING`). Absent from older controllers.
    #[serde(default)]
    pub has_droplet: bool,
}

impl DesiredApp {
    /// Whether the health manager keeps this app's instances running: it has a droplet to
    /// run, staged or about to be replaced. A crash while the next staging waits or runs
    /// is restarted on the current droplet.
    pub fn runnable(&self) -> bool {
        self.package_state == "STAGED" || self.has_droplet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_uses_cf_field_names() {
        let hb = DeaHeartbeat {
            dea: "d1".into(),
            droplets: vec![HeartbeatInstance {
                droplet: "app".into(),
                version: "v".into(),
                instance: "i".into(),
                index: 0,
                state: InstanceState::Running,
                state_timestamp: 1.0,
            }],
        };
        let j = serde_json::to_value(&hb).unwrap();
        assert_eq!(j["droplets"][0]["state"], "RUNNING");
        assert_eq!(j["dea"], "d1");
    }

    #[test]
    fn router_start_uses_camel_case_keys() {
        let j = serde_json::to_value(RouterStart {
            id: "r".into(),
            hosts: vec![],
            minimum_register_interval_in_seconds: 5,
            prune_threshold_in_seconds: 20,
        })
        .unwrap();
        assert_eq!(j["minimumRegisterIntervalInSeconds"], 5);
    }

    #[test]
    fn exit_reason_is_screaming() {
        assert_eq!(
            serde_json::to_value(ExitReason::DeaEvacuation).unwrap(),
            "DEA_EVACUATION"
        );
    }
}

/// A service gateway's Open Service Broker endpoint, announced on
/// [`crate::subjects::SERVICE_ANNOUNCE`] at start, every few seconds, and when the
/// controller asks. The bus is platform-internal (authenticated in a cluster), so it may
/// carry the broker's basic-auth credentials.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BrokerAnnounce {
    /// The service type's label (`mysql`), which names the broker too.
    pub label: String,
    /// Base URL of the broker API (`http://10.0.0.5:41234`).
    pub url: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BrokerAnnounce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerAnnounce")
            .field("label", &self.label)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `strato.cluster.join`: a node presents a join token (`kato node attach`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    pub node_id: String,
    /// Where other nodes reach the joining one.
    pub address: String,
    /// The roles it starts with (`-e`); empty: `dea`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The joining node's ephemeral X25519 public key (hex): the answer is sealed to it
    /// and to the token (`strato_tls::Handshake`).
    #[serde(default)]
    pub public_key: String,
}

/// How the core sends a [`JoinReply`]: sealed (`strato_tls::seal`, hex) with the secret
/// of an X25519 exchange bound to the join token, so only the node that asked can read
/// its credentials; every client of the `join` user can read the answers' subjects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SealedJoinReply {
    pub sealed: String,
    /// The core's ephemeral X25519 public key (hex).
    pub public_key: String,
}

/// The core's answer to a [`JoinRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JoinReply {
    /// Joined: the node's own NATS URL (its credentials included).
    Joined {
        node_id: String,
        nats_url: String,
    },
    Refused {
        reason: String,
    },
}
