//! Commands and files inside app instances (`strato run`, `ssh`, `scp`, `files`), always
//! through the DEA that runs the instance (DESIGN "Decisions"): the controller never
//! touches a container.
//!
//! - `GET /v2/apps/{guid}/instances/{index}/ssh` (WebSocket upgrade). Query: `argv`
//!   (repeated, in order; none = an interactive shell), `tty=1` with `rows`, `cols` and
//!   `term` for a terminal. The controller asks the DEA for a one-time session over the bus
//!   (`dea.<id>.session`), connects to the DEA's WebSocket endpoint *before* accepting the
//!   client's upgrade (so refusals are ordinary HTTP errors), then relays frames both ways
//!   unchanged; their framing is [`strato_core::messages::exec_frames`].
//! - `GET /v2/apps/{guid}/instances/{index}/files[/{path}]`: a directory listing or a
//!   file's content, `path` relative to the app dir (no `..`; the DEA resolves it beneath
//!   the instance dir in the kernel). Plain text as Cloud Foundry's files endpoint gave it,
//!   or the DEA's JSON with `?json=1`. Works for a crashed instance while the DEA keeps its
//!   files.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{SinkExt, StreamExt};
use strato_core::messages::{
    FilesReply, FilesRequest, InstanceInfo, InstanceState, SessionReply, SessionRequest,
    TerminalSize,
};
use strato_core::{subjects, ApiError};
use tokio_tungstenite::tungstenite;

use crate::access::{Access, Action};
use crate::api::{ep, Endpoint};
use crate::cf::{parse_query, CfResult};
use crate::Shared;

/// How long a DEA may take to answer a session or files request.
const DEA_TIMEOUT: Duration = Duration::from_secs(10);

type DeaSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        ep(Method::GET, "/v2/apps/{guid}/instances/{index}/ssh", ssh),
        ep(
            Method::GET,
            "/v2/apps/{guid}/instances/{index}/files",
            files_root,
        ),
        ep(
            Method::GET,
            "/v2/apps/{guid}/instances/{index}/files/{*path}",
            files,
        ),
    ]
}

/// The session the client asks for, from the query string.
fn session_request(query: Option<&str>) -> CfResult<SessionRequest> {
    let mut req = SessionRequest::default();
    let (mut tty, mut rows, mut cols) = (false, 24u16, 80u16);
    for (key, value) in parse_query(query.unwrap_or("")) {
        let number = |v: &str| {
            v.parse::<u16>().map_err(|_| {
                ApiError::invalid_request(format!("{key} must be a number from 1 to 65535"))
            })
        };
        match key.as_str() {
            "argv" => req.argv.push(value),
            "tty" => tty = matches!(value.as_str(), "1" | "true"),
            "rows" => rows = number(&value)?,
            "cols" => cols = number(&value)?,
            "term" => req.term = Some(value),
            _ => {}
        }
    }
    if tty {
        req.tty = Some(TerminalSize { rows, cols });
    }
    Ok(req)
}

async fn ssh(
    State(c): State<Shared>,
    access: Access,
    Path((guid, index)): Path<(String, u32)>,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> CfResult<Response> {
    crate::api::app_for(&c, &access, Action::Develop, &guid).await?;
    let mut req = session_request(query.as_deref())?;
    let (name, inst) = instance(&c, &guid, index, true).await?;
    req.instance = inst.instance.clone();
    let reply: SessionReply = strato_bus::request_json(
        c.bus.as_ref(),
        &subjects::dea_session(&inst.dea),
        &req,
        DEA_TIMEOUT,
    )
    .await
    .map_err(|e| dea_unavailable(&inst.dea, e))?;
    if let Some(error) = reply.error {
        return Err(ApiError::instances_error(error).into());
    }
    let dea = connect_dea(&reply).await?;
    tracing::info!(user = %access.user.username, app = %name, index, argv = ?req.argv, tty = req.tty.is_some(), "exec session");
    Ok(ws.on_upgrade(move |socket| relay(socket, dea)))
}

async fn connect_dea(reply: &SessionReply) -> CfResult<DeaSocket> {
    use tungstenite::client::IntoClientRequest;
    let unreachable = |e: String| {
        ApiError::unavailable(format!(
            "cannot reach the DEA's session endpoint {}: {e}",
            reply.url
        ))
    };
    let mut request = reply
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| unreachable(e.to_string()))?;
    let auth = format!("Bearer {}", reply.token)
        .parse()
        .map_err(|_| unreachable("the DEA sent an unusable token".to_string()))?;
    request.headers_mut().insert(header::AUTHORIZATION, auth);
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(socket)
}

/// Relays frames between the client and the DEA until either side ends.
async fn relay(client: WebSocket, dea: DeaSocket) {
    let (mut client_tx, mut client_rx) = client.split();
    let (mut dea_tx, mut dea_rx) = dea.split();
    let up = async {
        while let Some(Ok(msg)) = client_rx.next().await {
            let data = match msg {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let frame = tungstenite::Message::Binary(data.to_vec());
            if dea_tx.send(frame).await.is_err() {
                break;
            }
        }
        let _ = dea_tx.close().await;
    };
    let down = async {
        while let Some(Ok(msg)) = dea_rx.next().await {
            let data = match msg {
                tungstenite::Message::Binary(data) => data,
                tungstenite::Message::Close(_) => break,
                _ => continue,
            };
            if client_tx.send(Message::Binary(data.into())).await.is_err() {
                break;
            }
        }
        let _ = client_tx.close().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn files_root(
    state: State<Shared>,
    user: Access,
    Path((guid, index)): Path<(String, u32)>,
    query: RawQuery,
) -> CfResult<Response> {
    serve_files(state, user, guid, index, String::new(), query).await
}

async fn files(
    state: State<Shared>,
    user: Access,
    Path((guid, index, path)): Path<(String, u32, String)>,
    query: RawQuery,
) -> CfResult<Response> {
    serve_files(state, user, guid, index, path, query).await
}

async fn serve_files(
    State(c): State<Shared>,
    access: Access,
    guid: String,
    index: u32,
    path: String,
    RawQuery(query): RawQuery,
) -> CfResult<Response> {
    crate::api::app_for(&c, &access, Action::Develop, &guid).await?;
    let rel = app_relative(&path)?;
    let (_, inst) = instance(&c, &guid, index, true).await?;
    let req = FilesRequest {
        instance: inst.instance.clone(),
        path: rel,
    };
    let reply: FilesReply = strato_bus::request_json(
        c.bus.as_ref(),
        &subjects::dea_files(&inst.dea),
        &req,
        DEA_TIMEOUT,
    )
    .await
    .map_err(|e| dea_unavailable(&inst.dea, e))?;
    if let Some(error) = reply.error {
        let status = if error.contains("does not exist") {
            404
        } else {
            400
        };
        return Err(ApiError::new(status, 190001, "CF-FileError", error).into());
    }
    let json = parse_query(query.as_deref().unwrap_or(""))
        .iter()
        .any(|(k, v)| k == "json" && matches!(v.as_str(), "1" | "true"));
    if json {
        return Ok(Json(reply).into_response());
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        as_text(&reply),
    )
        .into_response())
}

/// `path` under the app dir, as the DEA's path relative to the instance dir.
fn app_relative(path: &str) -> CfResult<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(ApiError::invalid_request(format!(
                    "'{path}': paths are relative to the app dir and may not contain '..'"
                ))
                .into())
            }
            p => parts.push(p),
        }
    }
    Ok(if parts.is_empty() {
        "app".to_string()
    } else {
        format!("app/{}", parts.join("/"))
    })
}

/// Cloud Foundry's plain-text shape: a file's content, or one `name  size` line per entry
/// (directories end in `/` and have `-` as size).
fn as_text(reply: &FilesReply) -> String {
    if let Some(content) = &reply.content {
        return content.clone();
    }
    let mut out = String::new();
    for e in reply.entries.iter().flatten() {
        let (name, size) = if e.kind == "dir" {
            (format!("{}/", e.name), "-".to_string())
        } else {
            (e.name.clone(), human_size(e.size))
        };
        out.push_str(&format!("{name:<40} {size}\n"));
    }
    out
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "K", "M", "G"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn dea_unavailable(dea: &str, e: strato_bus::BusError) -> ApiError {
    ApiError::unavailable(format!("DEA {dea} did not answer: {e}"))
}

/// The app's name and instance `index` of its current version: running (or starting), or
/// with `crashed_ok` also a crashed one the DEA still keeps.
async fn instance(
    c: &Shared,
    guid: &str,
    index: u32,
    crashed_ok: bool,
) -> CfResult<(String, InstanceInfo)> {
    let a = crate::api::app(c, guid).await?;
    if a.state == "STOPPED" {
        return Err(ApiError::instances_error(format!(
            "app {} is stopped; start it with `strato start {}`",
            a.name, a.name
        ))
        .into());
    }
    if i64::from(index) >= a.instances {
        return Err(ApiError::instances_error(format!(
            "app {} has {} instance(s); use --instance 0 to {}",
            a.name,
            a.instances,
            (a.instances - 1).max(0)
        ))
        .into());
    }
    let rank = |s: InstanceState| match s {
        InstanceState::Running => 3,
        InstanceState::Starting => 2,
        InstanceState::Crashed if crashed_ok => 1,
        _ => 0,
    };
    let found = c.runner.find(&a.guid, false).await;
    let best = found
        .into_iter()
        .filter(|x| x.index == index && x.version == a.version && rank(x.state) > 0)
        .max_by_key(|x| (rank(x.state), (x.state_timestamp * 1000.0) as i64));
    best.map(|x| (a.name.clone(), x)).ok_or_else(|| {
        ApiError::instances_error(format!(
            "instance {index} of app {} is not running{}; see `strato instances {}`",
            a.name,
            if crashed_ok {
                " and no crashed copy of it is kept"
            } else {
                " (a crashed instance's container is not kept; `strato files` can still read its files for a while)"
            },
            a.name
        ))
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_in_the_app_dir() {
        assert_eq!(app_relative("").unwrap(), "app");
        assert_eq!(app_relative("/logs/./x.txt").unwrap(), "app/logs/x.txt");
        assert!(app_relative("../staging_info.json").is_err());
        assert!(app_relative("a/../../b").is_err());
    }

    #[test]
    fn session_queries_are_parsed() {
        let req = session_request(Some(
            "argv=sh&argv=-c&argv=echo%20a%26b&tty=1&rows=30&cols=100",
        ))
        .unwrap();
        assert_eq!(req.argv, ["sh", "-c", "echo a&b"]);
        assert_eq!(
            req.tty,
            Some(TerminalSize {
                rows: 30,
                cols: 100
            })
        );
        assert!(session_request(Some("rows=x")).is_err());
        assert_eq!(session_request(None).unwrap().tty, None);
    }

    #[test]
    fn listings_look_like_cloud_foundry() {
        let reply = FilesReply {
            entries: Some(vec![
                strato_core::messages::FileEntry {
                    name: "logs".into(),
                    kind: "dir".into(),
                    size: 4096,
                },
                strato_core::messages::FileEntry {
                    name: "app.py".into(),
                    kind: "file".into(),
                    size: 2048,
                },
            ]),
            ..FilesReply::default()
        };
        let text = as_text(&reply);
        assert!(text.contains("logs/"));
        assert!(text
            .lines()
            .any(|l| l.starts_with("app.py") && l.ends_with("2.0K")));
    }
}
