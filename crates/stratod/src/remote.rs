//! `kato … -n NODE` from any node of the cluster: the local control API forwards the call
//! over the bus (authenticated NATS, TLS) to that node's stratod, which runs it through
//! its own control API and answers. No SSH between nodes, no keys to arrange (seed 002
//! made operators set those up).
//!
//! Only what an operator runs against another node is forwarded (status, info, history,
//! processes, starting and stopping roles); set-up, tokens and certificates stay local.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::node::Node;

/// The subject one node's stratod takes forwarded control calls on.
pub fn subject(node_id: &str) -> String {
    format!("strato.node.{node_id}.control")
}

/// How long a forwarded call may take (stopping roles waits for them).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(90);

/// A control API call, forwarded.
#[derive(Debug, Serialize, Deserialize)]
pub struct RemoteCall {
    pub method: String,
    /// Path and query, as the local control API has them (`/roles/dea/stop`).
    pub path: String,
    #[serde(default)]
    pub body: Option<Value>,
}

/// The other node's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct RemoteAnswer {
    pub status: u16,
    pub body: Value,
}

/// True for the calls another node may make here.
pub fn forwardable(method: &Method, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        (method.as_str(), segments.as_slice()),
        ("GET", ["status"] | ["history"] | ["processes"])
            | ("POST", ["roles", "start" | "stop"])
            | ("POST", ["roles", _, "start" | "stop"])
            | ("POST", ["processes", _, "restart"])
    )
}

/// Takes forwarded calls for this node and runs them through `api` (its control API)
/// until `cancel`.
pub async fn serve(
    node: Arc<Node>,
    api: axum::Router,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut calls = node.bus.subscribe(&subject(&node.identity.id)).await?;
    Ok(tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                _ = cancel.cancelled() => return,
                m = calls.next() => match m { Some(m) => m, None => return },
            };
            let (node, api) = (node.clone(), api.clone());
            tokio::spawn(async move {
                let answer = match strato_bus::decode::<RemoteCall>(&m) {
                    Ok(call) => run(&api, call).await,
                    Err(e) => RemoteAnswer {
                        status: 400,
                        body: serde_json::json!({"error": e.to_string()}),
                    },
                };
                let _ = strato_bus::reply_json(node.bus.as_ref(), &m, &answer).await;
            });
        }
    }))
}

async fn run(api: &axum::Router, call: RemoteCall) -> RemoteAnswer {
    let refused = |status: u16, msg: String| RemoteAnswer {
        status,
        body: serde_json::json!({ "error": msg }),
    };
    let Ok(method) = call.method.parse::<Method>() else {
        return refused(400, format!("'{}' is not an HTTP method", call.method));
    };
    if !forwardable(&method, &call.path) {
        return refused(
            403,
            format!(
                "{} {} is not run for another node; run kato on that node",
                call.method, call.path
            ),
        );
    }
    let body = call
        .body
        .map(|b| Body::from(b.to_string()))
        .unwrap_or_else(Body::empty);
    let request = match Request::builder()
        .method(method)
        .uri(&call.path)
        .header("content-type", "application/json")
        .body(body)
    {
        Ok(r) => r,
        Err(e) => return refused(400, e.to_string()),
    };
    let response = match api.clone().oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    RemoteAnswer { status, body }
}

/// Sends `call` to node `node_id` and returns its answer.
pub async fn call(node: &Node, node_id: &str, call: &RemoteCall) -> Result<RemoteAnswer, String> {
    strato_bus::request_json(node.bus.as_ref(), &subject(node_id), call, CALL_TIMEOUT)
        .await
        .map_err(|e| match e {
            strato_bus::BusError::NoResponders(_) => format!(
                "node {node_id} does not answer: its stratod is not running or cannot reach the bus"
            ),
            e => format!("node {node_id}: {e}"),
        })
}

/// The status a forwarded answer carries, for the local control API's reply.
pub fn status_of(answer: &RemoteAnswer) -> StatusCode {
    StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_operator_calls_are_forwarded() {
        assert!(forwardable(&Method::GET, "/status"));
        assert!(forwardable(&Method::POST, "/roles/dea/stop"));
        assert!(forwardable(&Method::POST, "/roles/start"));
        assert!(forwardable(&Method::POST, "/processes/router/restart?x=1"));
        assert!(!forwardable(&Method::POST, "/setup/core"));
        assert!(!forwardable(&Method::POST, "/cluster/tokens"));
        assert!(!forwardable(&Method::PUT, "/tls/custom/x"));
        assert!(!forwardable(&Method::POST, "/stop"));
        assert!(!forwardable(&Method::GET, "/config/cluster"));
    }
}
