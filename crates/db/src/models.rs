//! Rows of the controller database, one struct per table.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct User {
    pub guid: String,
    pub username: String,
    pub password_hash: String,
    pub admin: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.admin != 0
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Organization {
    pub guid: String,
    pub name: String,
    /// The org's quota (`None`: no limits).
    pub quota_definition_guid: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Space {
    pub guid: String,
    pub name: String,
    pub organization_guid: String,
    /// The space's own quota, within the org's (`None`: only the org's applies).
    pub space_quota_definition_guid: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Domain {
    pub guid: String,
    pub name: String,
    pub shared: i64,
    pub owning_organization_guid: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Route {
    pub guid: String,
    pub host: String,
    pub domain_guid: String,
    pub space_guid: String,
    pub created_at: String,
    pub updated_at: String,
}

/// Where an app's package stands: not uploaded/staged yet, staged, or staging failed.
pub mod package_state {
    pub const PENDING: &str = "PENDING";
    pub const STAGED: &str = "STAGED";
    pub const FAILED: &str = "FAILED";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct App {
    pub guid: String,
    pub name: String,
    pub space_guid: String,
    pub instances: i64,
    pub memory: i64,
    pub disk_quota: i64,
    /// `STARTED` or `STOPPED`: what the user asked for.
    pub state: String,
    pub command: Option<String>,
    pub buildpack: Option<String>,
    pub detected_buildpack: Option<String>,
    pub detected_start_command: Option<String>,
    pub environment_json: String,
    pub health_check_timeout: Option<i64>,
    /// `port` (default), `http` or `process` (CF v2's `health_check_type`).
    pub health_check_type: String,
    /// The path an `http` health check asks (default `/`).
    pub health_check_http_endpoint: Option<String>,
    /// sha256 of the uploaded package.
    pub package_hash: Option<String>,
    pub package_state: String,
    pub staging_task_id: Option<String>,
    pub staging_error: Option<String>,
    /// sha256 of the current droplet.
    pub droplet_hash: Option<String>,
    /// Changes whenever running instances must be replaced.
    pub version: String,
    pub created_at: String,
    pub updated_at: String,
}

impl App {
    /// The user's environment as `KEY=VALUE` pairs (strings unquoted, other JSON as text).
    pub fn env_pairs(&self) -> Vec<String> {
        let env: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&self.environment_json).unwrap_or_default();
        env.into_iter()
            .map(|(k, v)| match v.as_str() {
                Some(s) => format!("{k}={s}"),
                None => format!("{k}={v}"),
            })
            .collect()
    }

    /// Records why the last staging failed: a CF-style kind and a message.
    pub fn set_staging_failure(&mut self, kind: &str, message: &str) {
        self.staging_error = Some(format!("{kind}|{message}"));
    }

    /// The kind (`NoAppDetected`, `StagingError`, ...) and message of the last failed
    /// staging, if it failed.
    pub fn staging_failure(&self) -> Option<(&str, &str)> {
        self.staging_error
            .as_deref()
            .map(|e| e.split_once('|').unwrap_or(("StagingError", e)))
    }
}

/// The health check types an app can have, as CF v2 names them (`none` is stored as
/// `process`).
pub mod health_check_type {
    pub const PORT: &str = "port";
    pub const HTTP: &str = "http";
    pub const PROCESS: &str = "process";
}

/// One release of an app: what a successful staging (or a rollback) made current. Its
/// droplet stays in the blob store while the release is among the app's last kept ones;
/// `droplet_hash` is `None` once it was let go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Release {
    pub guid: String,
    pub app_guid: String,
    /// 1, 2, 3... per app.
    pub number: i64,
    pub droplet_hash: Option<String>,
    /// The app's environment (a JSON object) when the release was made.
    pub environment_json: String,
    /// The user's start command, if they set one.
    pub command: Option<String>,
    pub buildpack: Option<String>,
    pub detected_buildpack: Option<String>,
    pub detected_start_command: Option<String>,
    /// `staged`, `rollback to v3`.
    pub description: String,
    /// Guid and name of who asked for it.
    pub actor: String,
    pub actor_name: String,
    pub created_at: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Event {
    pub guid: String,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    pub actor: String,
    pub actor_name: String,
    pub actee: String,
    pub actee_type: String,
    pub actee_name: String,
    pub space_guid: Option<String>,
    pub metadata: String,
    pub timestamp: String,
}

#[derive(Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ServiceBroker {
    pub guid: String,
    pub name: String,
    pub url: String,
    pub username: String,
    pub password: String,
    pub created_at: String,
    pub updated_at: String,
}

impl std::fmt::Debug for ServiceBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBroker")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A service offering from a broker's catalog (`mysql`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Service {
    pub guid: String,
    pub label: String,
    /// The broker's id for it.
    pub unique_id: String,
    pub description: String,
    pub bindable: i64,
    /// JSON array of strings.
    pub tags: String,
    pub active: i64,
    pub service_broker_guid: String,
    pub created_at: String,
    pub updated_at: String,
}

impl Service {
    pub fn tag_list(&self) -> Vec<String> {
        serde_json::from_str(&self.tags).unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ServicePlan {
    pub guid: String,
    pub name: String,
    pub unique_id: String,
    pub description: String,
    pub free: i64,
    pub active: i64,
    pub service_guid: String,
    pub created_at: String,
    pub updated_at: String,
}

/// A service instance: managed (has a plan) or user-provided (has credentials).
#[derive(Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ServiceInstance {
    pub guid: String,
    pub name: String,
    pub space_guid: String,
    /// `None` for a user-provided instance.
    pub service_plan_guid: Option<String>,
    /// JSON object: the user's credentials for a user-provided instance, `{}` otherwise.
    pub credentials: String,
    pub syslog_drain_url: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl ServiceInstance {
    pub fn is_user_provided(&self) -> bool {
        self.service_plan_guid.is_none()
    }
}

impl std::fmt::Debug for ServiceInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceInstance")
            .field("guid", &self.guid)
            .field("name", &self.name)
            .field("space_guid", &self.space_guid)
            .field("service_plan_guid", &self.service_plan_guid)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ServiceBinding {
    pub guid: String,
    pub app_guid: String,
    pub service_instance_guid: String,
    /// JSON object from the broker (or the user-provided instance).
    pub credentials: String,
    pub created_at: String,
    pub updated_at: String,
}

impl std::fmt::Debug for ServiceBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBinding")
            .field("guid", &self.guid)
            .field("app_guid", &self.app_guid)
            .field("service_instance_guid", &self.service_instance_guid)
            .finish_non_exhaustive()
    }
}

/// A user's role in an organization; the names are the CF v2 URL segments
/// (`/v2/organizations/{guid}/managers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OrgRole {
    /// A member ("org user"): sees the org.
    User,
    Manager,
    BillingManager,
    Auditor,
}

impl OrgRole {
    pub const ALL: [OrgRole; 4] = [
        OrgRole::User,
        OrgRole::Manager,
        OrgRole::BillingManager,
        OrgRole::Auditor,
    ];

    /// The URL segment and the value stored: `users`, `managers`, `billing_managers`, `auditors`.
    pub fn as_str(self) -> &'static str {
        match self {
            OrgRole::User => "users",
            OrgRole::Manager => "managers",
            OrgRole::BillingManager => "billing_managers",
            OrgRole::Auditor => "auditors",
        }
    }

    pub fn parse(s: &str) -> Option<OrgRole> {
        OrgRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A user's role in a space; the names are the CF v2 URL segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SpaceRole {
    Developer,
    Manager,
    Auditor,
}

impl SpaceRole {
    pub const ALL: [SpaceRole; 3] = [SpaceRole::Developer, SpaceRole::Manager, SpaceRole::Auditor];

    /// `developers`, `managers`, `auditors`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpaceRole::Developer => "developers",
            SpaceRole::Manager => "managers",
            SpaceRole::Auditor => "auditors",
        }
    }

    pub fn parse(s: &str) -> Option<SpaceRole> {
        SpaceRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Every role a user holds, as loaded for one authorisation decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memberships {
    /// (organization guid, role)
    pub orgs: Vec<(String, OrgRole)>,
    /// (space guid, its organization guid, role)
    pub spaces: Vec<(String, String, SpaceRole)>,
}

/// A limit of `-1` means unlimited, as in Cloud Foundry.
pub const UNLIMITED: i64 = -1;

/// The limits a quota sets; the same fields for org quotas and space quotas. Memory is in
/// MB; every number may be [`UNLIMITED`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct QuotaLimits {
    /// May paid (non-free) service plans be used.
    pub non_basic_services_allowed: i64,
    /// Managed service instances.
    pub total_services: i64,
    pub total_routes: i64,
    /// Memory of all started instances together.
    pub memory_limit: i64,
    /// Memory of one instance.
    pub instance_memory_limit: i64,
    /// Instances of all started apps together.
    pub app_instance_limit: i64,
}

impl QuotaLimits {
    /// Cloud Foundry's `default` quota: 10 GB, 100 services, 1000 routes, paid plans allowed,
    /// no per-instance or instance-count limit.
    pub fn cf_default() -> QuotaLimits {
        QuotaLimits {
            non_basic_services_allowed: 1,
            total_services: 100,
            total_routes: 1000,
            memory_limit: 10240,
            instance_memory_limit: UNLIMITED,
            app_instance_limit: UNLIMITED,
        }
    }
}

/// An org quota (`/v2/quota_definitions`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct QuotaDefinition {
    pub guid: String,
    pub name: String,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub limits: QuotaLimits,
    pub created_at: String,
    pub updated_at: String,
}

/// A space quota (`/v2/space_quota_definitions`), owned by an org.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct SpaceQuotaDefinition {
    pub guid: String,
    pub name: String,
    pub organization_guid: String,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub limits: QuotaLimits,
    pub created_at: String,
    pub updated_at: String,
}

/// What an org or a space uses of its quota. Memory and instances count started apps only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUsage {
    /// MB: memory × instances of every started app.
    pub memory_mb: i64,
    /// Instances of every started app.
    pub app_instances: i64,
    /// Managed service instances (user-provided ones are free, as in CF).
    pub services: i64,
    pub routes: i64,
}

/// An OAuth client registered for the `client_credentials` grant. The secret is only
/// stored as an argon2id hash; the lists are JSON arrays of strings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct OAuthClient {
    pub guid: String,
    pub client_id: String,
    pub secret_hash: String,
    pub authorized_grant_types: String,
    pub authorities: String,
    /// The guid of the administrator who registered it.
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
}

impl OAuthClient {
    pub fn grant_types(&self) -> Vec<String> {
        serde_json::from_str(&self.authorized_grant_types).unwrap_or_default()
    }

    pub fn authority_list(&self) -> Vec<String> {
        serde_json::from_str(&self.authorities).unwrap_or_default()
    }

    pub fn has_authority(&self, authority: &str) -> bool {
        self.authority_list().iter().any(|a| a == authority)
    }
}

/// A log drain of an app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AppDrain {
    pub guid: String,
    pub app_guid: String,
    pub name: String,
    /// `tcp://host:port` or `udp://host:port`.
    pub uri: String,
    /// 1: lines as JSON; 0: the apptail text format.
    pub json: i64,
    pub created_at: String,
}
