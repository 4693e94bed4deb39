//! The Open Service Broker API v2, as far as Strato speaks it: the wire types, and the
//! client the controller uses to talk to a gateway ([`crate::gateway`] is the server).
//!
//! Besides catalog, provision, bind, unbind and deprovision, Strato's gateways serve three
//! extensions under the instance's path: `GET .../export` (a consistent dump, streamed),
//! `PUT .../import` (restore one) and `GET .../usage` (bytes used).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use strato_core::messages::BrokerAnnounce;

/// The OSB version Strato speaks (sent as `X-Broker-API-Version`).
pub const API_VERSION: &str = "2.13";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Catalog {
    pub services: Vec<CatalogService>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CatalogService {
    pub id: String,
    /// The label (`mysql`).
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub bindable: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    pub plans: Vec<CatalogPlan>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CatalogPlan {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(default = "yes")]
    pub free: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProvisionRequest {
    pub service_id: String,
    pub plan_id: String,
    #[serde(default)]
    pub organization_guid: String,
    #[serde(default)]
    pub space_guid: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BindRequest {
    pub service_id: String,
    pub plan_id: String,
    #[serde(default)]
    pub app_guid: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BindResponse {
    pub credentials: Value,
}

/// An OSB error body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub description: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Usage {
    pub bytes: u64,
}

/// What went wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the {label} service broker at {url} cannot be reached: {reason}")]
    Unreachable {
        label: String,
        url: String,
        reason: String,
    },
    /// The broker refused, saying why (shown to the user as is).
    #[error("{description}")]
    Rejected { status: u16, description: String },
    #[error("the {label} service broker answered something unexpected: {reason}")]
    BadResponse { label: String, reason: String },
}

/// A client for one broker.
#[derive(Clone)]
pub struct BrokerClient {
    http: reqwest::Client,
    endpoint: BrokerAnnounce,
}

impl BrokerClient {
    pub fn new(endpoint: BrokerAnnounce) -> BrokerClient {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap_or_default();
        BrokerClient { http, endpoint }
    }

    pub fn label(&self) -> &str {
        &self.endpoint.label
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.endpoint.url.trim_end_matches('/'));
        self.http
            .request(method, url)
            .basic_auth(&self.endpoint.username, Some(&self.endpoint.password))
            .header("X-Broker-API-Version", API_VERSION)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, BrokerError> {
        let resp = req.send().await.map_err(|e| BrokerError::Unreachable {
            label: self.endpoint.label.clone(),
            url: self.endpoint.url.clone(),
            reason: e.to_string(),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let description = serde_json::from_str::<ErrorBody>(&body)
            .map(|e| e.description)
            .unwrap_or_else(|_| format!("the {} broker answered {status}", self.endpoint.label));
        Err(BrokerError::Rejected {
            status: status.as_u16(),
            description,
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
    ) -> Result<T, BrokerError> {
        resp.json().await.map_err(|e| BrokerError::BadResponse {
            label: self.endpoint.label.clone(),
            reason: e.to_string(),
        })
    }

    pub async fn catalog(&self) -> Result<Catalog, BrokerError> {
        let resp = self
            .send(self.request(reqwest::Method::GET, "/v2/catalog"))
            .await?;
        self.json(resp).await
    }

    pub async fn provision(&self, id: &str, req: &ProvisionRequest) -> Result<(), BrokerError> {
        let path = format!("/v2/service_instances/{id}");
        self.send(self.request(reqwest::Method::PUT, &path).json(req))
            .await
            .map(drop)
    }

    /// Removes the instance; one the broker does not know (410 Gone) counts as removed.
    pub async fn deprovision(
        &self,
        id: &str,
        service_id: &str,
        plan_id: &str,
    ) -> Result<(), BrokerError> {
        let path = format!("/v2/service_instances/{id}?service_id={service_id}&plan_id={plan_id}");
        match self
            .send(self.request(reqwest::Method::DELETE, &path))
            .await
        {
            Ok(_) | Err(BrokerError::Rejected { status: 410, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn bind(
        &self,
        id: &str,
        binding: &str,
        req: &BindRequest,
    ) -> Result<Value, BrokerError> {
        let path = format!("/v2/service_instances/{id}/service_bindings/{binding}");
        let resp = self
            .send(self.request(reqwest::Method::PUT, &path).json(req))
            .await?;
        let body: BindResponse = self.json(resp).await?;
        Ok(body.credentials)
    }

    pub async fn unbind(
        &self,
        id: &str,
        binding: &str,
        service_id: &str,
        plan_id: &str,
    ) -> Result<(), BrokerError> {
        let path = format!(
            "/v2/service_instances/{id}/service_bindings/{binding}?service_id={service_id}&plan_id={plan_id}"
        );
        match self
            .send(self.request(reqwest::Method::DELETE, &path))
            .await
        {
            Ok(_) | Err(BrokerError::Rejected { status: 410, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A consistent dump of the instance, as a response whose body streams it.
    pub async fn export(&self, id: &str) -> Result<reqwest::Response, BrokerError> {
        let path = format!("/v2/service_instances/{id}/export");
        self.send(self.request(reqwest::Method::GET, &path)).await
    }

    /// Restores a dump into the instance.
    pub async fn import<S>(&self, id: &str, body: S) -> Result<(), BrokerError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static,
    {
        let path = format!("/v2/service_instances/{id}/import");
        let body = reqwest::Body::wrap_stream(body);
        self.send(self.request(reqwest::Method::PUT, &path).body(body))
            .await
            .map(drop)
    }

    pub async fn usage(&self, id: &str) -> Result<u64, BrokerError> {
        let path = format!("/v2/service_instances/{id}/usage");
        let resp = self.send(self.request(reqwest::Method::GET, &path)).await?;
        Ok(self.json::<Usage>(resp).await?.bytes)
    }
}

/// Catalog ids are stable across restarts and nodes: `strato-<label>` and
/// `strato-<label>-<plan>`.
pub fn service_id(kind: crate::ServiceKind) -> String {
    format!("strato-{}", kind.label())
}

pub fn plan_id(kind: crate::ServiceKind, plan: &str) -> String {
    format!("strato-{}-{plan}", kind.label())
}
