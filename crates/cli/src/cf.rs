//! The Cloud Foundry v2 shapes the client reads: resources, pages and the entities it uses.
//! Every field the client does not strictly need is defaulted, so a server that leaves one
//! out still works.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Metadata {
    pub guid: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// `{metadata, entity}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Resource<T> {
    pub metadata: Metadata,
    pub entity: T,
}

/// One page of a list.
#[derive(Clone, Debug, Deserialize)]
pub struct Page<T> {
    #[serde(default)]
    pub next_url: Option<String>,
    #[serde(default = "Vec::new")]
    pub resources: Vec<Resource<T>>,
}

/// Organizations, spaces and domains: the client only needs their names.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Named {
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct AppEntity {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub space_guid: Option<String>,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub instances: u32,
    #[serde(default)]
    pub memory: u64,
    #[serde(default)]
    pub disk_quota: u64,
    #[serde(default)]
    pub buildpack: Option<String>,
    #[serde(default)]
    pub detected_buildpack: Option<String>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub environment_json: Option<Map<String, Value>>,
    #[serde(default)]
    pub package_state: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct RouteEntity {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub domain_guid: String,
    #[serde(default)]
    pub space_guid: Option<String>,
}

/// An app in `GET /v2/spaces/:guid/summary` and `GET /v2/apps/:guid/summary`: the app's
/// entity plus what the summary adds.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct AppSummary {
    #[serde(default)]
    pub guid: String,
    #[serde(default)]
    pub running_instances: Option<u32>,
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(flatten)]
    pub app: AppEntity,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct SpaceSummary {
    #[serde(default)]
    pub guid: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub apps: Vec<AppSummary>,
}

/// `GET /v2/info`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Info {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: Value,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub authorization_endpoint: String,
    #[serde(default)]
    pub token_endpoint: String,
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub user: Option<Value>,
    /// The largest app upload the target accepts (Strato).
    #[serde(default)]
    pub max_client_upload_mb: Option<u64>,
}

/// `POST /oauth/token`.
#[derive(Clone, Debug, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// One entry of `GET /v2/apps/:guid/instances`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct InstanceState {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub since: Option<f64>,
    #[serde(default)]
    pub uptime: Option<f64>,
    /// The DEA node's address (in a cluster, where the instance runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// `GET /v2/apps/:guid/instances`, keyed by index.
pub type Instances = BTreeMap<String, InstanceState>;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Usage {
    #[serde(default)]
    pub cpu: f64,
    #[serde(default)]
    pub mem: u64,
    #[serde(default)]
    pub disk: u64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Stats {
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub mem_quota: u64,
    #[serde(default)]
    pub disk_quota: u64,
    #[serde(default)]
    pub uptime: f64,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
}

/// One entry of `GET /v2/apps/:guid/stats`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct InstanceStats {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub stats: Option<Stats>,
}

/// One line of `GET /v2/apps/:guid/stackato_logs`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct LogLine {
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub instance_index: Option<i64>,
    #[serde(default)]
    pub timestamp: Value,
    #[serde(default)]
    pub stream: Option<String>,
}

/// Index keys ("0", "1", "10") in numeric order.
pub fn by_index<T>(map: &BTreeMap<String, T>) -> Vec<(&String, &T)> {
    let mut items: Vec<_> = map.iter().collect();
    items.sort_by_key(|(k, _)| (k.parse::<u64>().unwrap_or(u64::MAX), (*k).clone()));
    items
}
