//! A service type's gateway: the Open Service Broker API v2 ([`crate::osb`]) in front of
//! its [`ServiceNode`], with HTTP basic auth. The controller is its only client.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::json;

use crate::osb::{
    self, BindRequest, BindResponse, Catalog, CatalogPlan, CatalogService, ProvisionRequest,
};
use crate::{InstanceId, Plan, ServiceError, ServiceNode};

/// What a gateway serves: one node and its plans.
pub struct Gateway {
    node: Arc<dyn ServiceNode>,
    plans: Vec<Plan>,
    username: String,
    password: String,
}

impl Gateway {
    /// `plans` must not be empty; the first is the default.
    pub fn new(
        node: Arc<dyn ServiceNode>,
        plans: Vec<Plan>,
        username: &str,
        password: &str,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            node,
            plans,
            username: username.to_string(),
            password: password.to_string(),
        })
    }

    pub fn catalog(&self) -> Catalog {
        let kind = self.node.kind();
        Catalog {
            services: vec![CatalogService {
                id: osb::service_id(kind),
                name: kind.label().to_string(),
                description: description(kind).to_string(),
                bindable: true,
                tags: kind.tags().iter().map(|t| t.to_string()).collect(),
                plans: self
                    .plans
                    .iter()
                    .map(|p| CatalogPlan {
                        id: osb::plan_id(kind, &p.name),
                        name: p.name.clone(),
                        description: format!("{} MB", p.size_mb),
                        free: true,
                    })
                    .collect(),
            }],
        }
    }

    fn plan(&self, plan_id: &str) -> Option<&Plan> {
        let kind = self.node.kind();
        self.plans
            .iter()
            .find(|p| osb::plan_id(kind, &p.name) == plan_id)
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        use base64::Engine;
        let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some(encoded) = value.strip_prefix("Basic ") else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let expected = format!("{}:{}", self.username, self.password);
        constant_time_eq(&decoded, expected.as_bytes())
    }
}

fn description(kind: crate::ServiceKind) -> &'static str {
    match kind {
        crate::ServiceKind::Postgresql => "PostgreSQL database",
        crate::ServiceKind::Mysql => "MySQL database (MariaDB)",
        crate::ServiceKind::Redis => "Redis key-value store",
        crate::ServiceKind::Filesystem => "Persistent filesystem shared by an app's instances",
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The broker API for `gw`.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v2/catalog", get(catalog))
        .route(
            "/v2/service_instances/{id}",
            put(provision).delete(deprovision),
        )
        .route(
            "/v2/service_instances/{id}/service_bindings/{binding}",
            put(bind).delete(unbind),
        )
        .route("/v2/service_instances/{id}/export", get(export))
        .route("/v2/service_instances/{id}/import", put(import))
        .route("/v2/service_instances/{id}/usage", get(usage))
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            require_auth,
        ))
        .with_state(gw)
}

async fn require_auth(
    State(gw): State<Arc<Gateway>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if gw.authorised(req.headers()) {
        next.run(req).await
    } else {
        fail(
            StatusCode::UNAUTHORIZED,
            "broker credentials missing or wrong",
        )
    }
}

fn fail(status: StatusCode, description: &str) -> Response {
    (status, Json(json!({ "description": description }))).into_response()
}

fn service_fail(e: ServiceError) -> Response {
    let status = match &e {
        ServiceError::NotFound(_) => StatusCode::GONE,
        ServiceError::Conflict(_) => StatusCode::CONFLICT,
        ServiceError::BadId(_) | ServiceError::UnknownKind(_) => StatusCode::BAD_REQUEST,
        ServiceError::Capacity { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "service node failed");
    }
    fail(status, &e.to_string())
}

async fn catalog(State(gw): State<Arc<Gateway>>) -> Json<Catalog> {
    Json(gw.catalog())
}

async fn provision(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let id = match InstanceId::new(&id) {
        Ok(id) => id,
        Err(e) => return service_fail(e),
    };
    let req: ProvisionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                &format!("bad provision request: {e}"),
            )
        }
    };
    let Some(plan) = gw.plan(&req.plan_id).cloned() else {
        return fail(
            StatusCode::BAD_REQUEST,
            &format!("unknown plan '{}'; see the catalog", req.plan_id),
        );
    };
    match gw.node.provision(&id, &plan).await {
        Ok(_) => (StatusCode::CREATED, Json(json!({}))).into_response(),
        Err(e) => service_fail(e),
    }
}

async fn deprovision(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    let id = match InstanceId::new(&id) {
        Ok(id) => id,
        Err(e) => return service_fail(e),
    };
    if !gw
        .node
        .instances()
        .await
        .map(|ids| ids.contains(&id))
        .unwrap_or(true)
    {
        return fail(StatusCode::GONE, "no such service instance");
    }
    match gw.node.deprovision(&id).await {
        Ok(()) => Json(json!({})).into_response(),
        Err(e) => service_fail(e),
    }
}

async fn bind(
    State(gw): State<Arc<Gateway>>,
    Path((id, binding)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let id = match InstanceId::new(&id) {
        Ok(id) => id,
        Err(e) => return service_fail(e),
    };
    if let Err(e) = serde_json::from_slice::<BindRequest>(&body) {
        return fail(StatusCode::BAD_REQUEST, &format!("bad bind request: {e}"));
    }
    match gw.node.bind(&id, &binding).await {
        Ok(c) => {
            let credentials = serde_json::to_value(&c).unwrap_or_default();
            (StatusCode::CREATED, Json(BindResponse { credentials })).into_response()
        }
        Err(e) => service_fail(e),
    }
}

async fn unbind(
    State(gw): State<Arc<Gateway>>,
    Path((id, binding)): Path<(String, String)>,
) -> Response {
    let id = match InstanceId::new(&id) {
        Ok(id) => id,
        Err(e) => return service_fail(e),
    };
    match gw.node.unbind(&id, &binding).await {
        Ok(()) => Json(json!({})).into_response(),
        Err(e) => service_fail(e),
    }
}

async fn export(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    let id = match InstanceId::new(&id) {
        Ok(id) => id,
        Err(e) => return service_fail(e),
    };
    if !gw
        .node
        .instances()
        .await
        .map(|ids| ids.contains(&id))
        .unwrap_or(false)
    {
        return fail(StatusCode::NOT_FOUND, "no such service instance");
    }
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let node = gw.node.clone();
    tokio::spawn(async move {
        let result = node.export(&id, &mut writer).await;
        drop(writer);
        let _ = done_tx.send(result);
    });
    // The dump streams as it is made; if it fails midway the body ends in an error so
    // the client never mistakes half a dump for a whole one.
    let data = tokio_util::io::ReaderStream::new(reader).map(|r| r.map_err(axum::Error::new));
    let end = futures::stream::once(async move {
        match done_rx.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Err(axum::Error::new(e))),
            Err(_) => Some(Err(axum::Error::new(std::io::Error::other(
                "export task died",
            )))),
        }
    })
    .filter_map(|x| async move { x });
    Body::from_stream(data.chain(end)).into_response()
}

async fn import(State(gw): State<Arc<Gateway>>, Path(id): Path<String>, body: Body) -> Response {
    let id = match InstanceId::new(&id) {
        Ok(id) => id,
        Err(e) => return service_fail(e),
    };
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let mut reader = tokio_util::io::StreamReader::new(stream);
    match gw.node.import(&id, &mut reader).await {
        Ok(()) => Json(json!({})).into_response(),
        Err(e) => service_fail(e),
    }
}

async fn usage(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    let id = match InstanceId::new(&id) {
        Ok(id) => id,
        Err(e) => return service_fail(e),
    };
    match gw.node.usage_bytes(&id).await {
        Ok(bytes) => Json(osb::Usage { bytes }).into_response(),
        Err(e) => service_fail(e),
    }
}

/// Serves `gw` on `listener` until `shutdown`.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(gw))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"a:b", b"a:b"));
        assert!(!constant_time_eq(b"a:b", b"a:c"));
        assert!(!constant_time_eq(b"a:b", b"a:bc"));
    }
}
