//! Bus subject names (REFERENCE §5), in one place so publishers and subscribers agree.

pub const ROUTER_REGISTER: &str = "router.register";
pub const ROUTER_UNREGISTER: &str = "router.unregister";
pub const ROUTER_START: &str = "router.start";
pub const DEA_ADVERTISE: &str = "dea.advertise";
pub const DEA_HEARTBEAT: &str = "dea.heartbeat";
pub const DEA_SHUTDOWN: &str = "dea.shutdown";
pub const DEA_STOP: &str = "dea.stop";
pub const DEA_FIND_DROPLET: &str = "dea.find.droplet";
/// The controller tells DEAs an app's uris changed (map/unmap): [`crate::messages::DeaUpdate`].
pub const DEA_UPDATE: &str = "dea.update";
pub const DROPLET_EXITED: &str = "droplet.exited";
pub const HM_START: &str = "healthmanager.start";
/// Staging requests; stagers subscribe in the `stagers` queue group.
pub const STAGER_QUEUE: &str = "vcap.stager.default";
pub const STAGER_GROUP: &str = "stagers";
pub const COMPONENT_DISCOVER: &str = "vcap.component.discover";
pub const COMPONENT_ANNOUNCE: &str = "vcap.component.announce";
/// The controller's answer to "which instances should this app have" (health manager asks).
pub const CC_DESIRED: &str = "cloudcontrollers.hm.desired";
/// Health manager asks the controller to start or stop instances.
pub const CC_HM_REQUESTS: &str = "cloudcontrollers.hm.requests";
/// The queue group of the cluster's controllers, for what only one of them may handle.
pub const CC_GROUP: &str = "cloudcontrollers";

/// Direct start request to one DEA.
pub fn dea_start(dea_id: &str) -> String {
    format!("dea.{dea_id}.start")
}

/// Exec, file reads and stats for instances on one DEA.
pub fn dea_exec(dea_id: &str) -> String {
    format!("dea.{dea_id}.exec")
}
pub fn dea_files(dea_id: &str) -> String {
    format!("dea.{dea_id}.files")
}
/// Streaming exec sessions (`run`, `ssh`, `scp`) on one DEA: [`crate::messages::SessionRequest`].
pub fn dea_session(dea_id: &str) -> String {
    format!("dea.{dea_id}.session")
}

/// An app's output stream (logyard `apptail.<guid>`).
pub fn apptail(app_guid: &str) -> String {
    format!("apptail.{app_guid}")
}

/// A platform event stream (logyard `event.<type>`).
pub fn event(kind: &str) -> String {
    format!("event.{kind}")
}

/// Live output of one staging task.
pub fn staging_log(task_id: &str) -> String {
    format!("staging.{task_id}.log")
}
/// A service gateway announces its broker endpoint (`messages::BrokerAnnounce`).
pub const SERVICE_ANNOUNCE: &str = "strato.services.announce";
/// The controller asks every gateway to announce itself again (after its own start).
pub const SERVICE_DISCOVER: &str = "strato.services.discover";

/// A node asks the core to join the cluster (`kato node attach`), as the restricted
/// `join` NATS user: [`crate::messages::JoinRequest`].
pub const CLUSTER_JOIN: &str = "strato.cluster.join";
/// The inbox prefix of joining nodes: the only subjects the `join` user may read.
pub const JOIN_INBOX_PREFIX: &str = "_JOIN";
