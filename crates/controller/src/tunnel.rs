//! `strato tunnel`: a TCP connection to a service instance, carried over a WebSocket by
//! the API, so a developer reaches a database that listens only inside the platform with
//! their own `psql`, `mysql` or `redis-cli` — also while no app is bound or running.
//!
//! Protocol of `GET /v2/service_instances/{guid}/tunnel` (WebSocket):
//! 1. the server first sends one text frame `{"name", "label", "credentials"}`;
//! 2. a client that wants a connection sends the text frame `{"connect": true}`; the
//!    server then connects to the instance's host and port (from its credentials, never
//!    from the client) and says `{"connected": true}` or `{"error": "..."}`;
//! 3. binary frames carry the TCP bytes both ways; either side closing ends both.
//!
//! A client that only wants the credentials closes after step 1.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::Method;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use strato_core::ApiError;
use strato_services::osb::BindRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::access::{Access, Action};
use crate::api::ep;
use crate::cf::{db_err, CfResult};
use crate::Shared;

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) fn endpoints() -> Vec<crate::api::Endpoint> {
    vec![ep(
        Method::GET,
        "/v2/service_instances/{guid}/tunnel",
        tunnel,
    )]
}

/// Where a tunnel to this instance goes, and what the user is shown.
struct Endpoint {
    name: String,
    label: String,
    credentials: Value,
    host: String,
    port: u16,
}

async fn tunnel(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    ws: WebSocketUpgrade,
) -> CfResult<Response> {
    let user = &access.user;
    if let Some(si) = c.db.service_instance_by_guid(&guid).await.map_err(db_err)? {
        access.space(&c, Action::Develop, &si.space_guid).await?;
    }
    // Resolve before upgrading, so a bad request gets a proper HTTP error.
    let endpoint = endpoint(&c, &guid).await?;
    tracing::info!(user = %user.username, service = %endpoint.name, "tunnel opened");
    Ok(ws.on_upgrade(move |socket| serve(socket, endpoint)))
}

async fn endpoint(c: &Shared, guid: &str) -> CfResult<Endpoint> {
    let si =
        c.db.service_instance_by_guid(guid)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ApiError::not_found("service instance", guid))?;
    let (label, credentials) = match &si.service_plan_guid {
        None => (
            "user-provided".to_string(),
            serde_json::from_str(&si.credentials).unwrap_or(json!({})),
        ),
        Some(plan_guid) => {
            let m = crate::services::managed(c, plan_guid).await?;
            // A binding of the instance to nobody: the broker hands out credentials the
            // same way it does for apps (idempotent for the same binding id).
            let creds = m
                .client
                .bind(
                    &si.guid,
                    &format!("tunnel-{}", si.guid),
                    &BindRequest {
                        service_id: m.service.unique_id.clone(),
                        plan_id: m.plan.unique_id.clone(),
                        app_guid: None,
                    },
                )
                .await
                .map_err(|e| ApiError::service_broker(e.to_string()))?;
            (m.service.label.clone(), creds)
        }
    };
    let (host, port) = host_port(&credentials).ok_or_else(|| {
        ApiError::invalid_request(format!(
            "the service {} has no network address to tunnel to{}",
            si.name,
            if label == "filesystem" {
                " (a filesystem service is reached with `strato files` and `strato scp` from an app)"
            } else {
                ""
            }
        ))
    })?;
    let mut shown = credentials.clone();
    if let Some(o) = shown.as_object_mut() {
        o.remove("host_path");
    }
    Ok(Endpoint {
        name: si.name,
        label,
        credentials: shown,
        host,
        port,
    })
}

/// `host`/`hostname` and `port` of the credentials, else those of `uri`.
fn host_port(creds: &Value) -> Option<(String, u16)> {
    let host = creds["host"]
        .as_str()
        .or_else(|| creds["hostname"].as_str())
        .filter(|h| !h.is_empty());
    let port = creds["port"]
        .as_u64()
        .or_else(|| creds["port"].as_str().and_then(|p| p.parse().ok()))
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    if let (Some(h), Some(p)) = (host, port) {
        return Some((h.to_string(), p));
    }
    let uri = creds["uri"].as_str()?;
    let rest = uri.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (h, p) = hostport.rsplit_once(':')?;
    Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?))
}

async fn serve(mut socket: WebSocket, ep: Endpoint) {
    let hello = json!({"name": ep.name, "label": ep.label, "credentials": ep.credentials});
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    // Wait for the client to ask for a connection (or leave).
    loop {
        match socket.recv().await {
            Some(Ok(Message::Text(t))) => {
                let asked: Value = serde_json::from_str(t.as_str()).unwrap_or(json!({}));
                if asked["connect"] == true {
                    break;
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            _ => return,
        }
    }
    let addr = (ep.host.as_str(), ep.port);
    let tcp =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return refuse(
                    socket,
                    &format!("cannot reach {} at {}:{}: {e}", ep.name, ep.host, ep.port),
                )
                .await
            }
            Err(_) => {
                return refuse(
                    socket,
                    &format!(
                        "{} at {}:{} did not answer within {} s",
                        ep.name,
                        ep.host,
                        ep.port,
                        CONNECT_TIMEOUT.as_secs()
                    ),
                )
                .await
            }
        };
    if socket
        .send(Message::Text(json!({"connected": true}).to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    pipe(socket, tcp).await;
}

async fn refuse(mut socket: WebSocket, why: &str) {
    let _ = socket
        .send(Message::Text(json!({"error": why}).to_string().into()))
        .await;
    let _ = socket.close().await;
}

/// Copies TCP ↔ WebSocket until either side ends.
async fn pipe(socket: WebSocket, tcp: tokio::net::TcpStream) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut tcp_rx, mut tcp_tx) = tcp.into_split();
    let upstream = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(b) if tcp_tx.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = tcp_tx.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tcp_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if ws_tx.send(Message::Binary(chunk)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    // Whichever side finishes first ends the tunnel.
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_come_from_fields_or_the_uri() {
        let c = json!({"host": "10.0.0.5", "port": 5432});
        assert_eq!(host_port(&c), Some(("10.0.0.5".into(), 5432)));
        let c = json!({"uri": "postgres://u:p@db.example.com:6543/x"});
        assert_eq!(host_port(&c), Some(("db.example.com".into(), 6543)));
        let c = json!({"uri": "redis://:p@[::1]:6380/"});
        assert_eq!(host_port(&c), Some(("::1".into(), 6380)));
        assert_eq!(host_port(&json!({"dir": "/home/stackato/fs/x"})), None);
    }
}
