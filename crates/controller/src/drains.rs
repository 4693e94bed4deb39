//! App log drains (Stackato's `stackato_drains`): besides the recent lines the API keeps,
//! an app's log lines go to the drains its developers add, `tcp://HOST:PORT` (one line
//! per log line) or `udp://HOST:PORT` (one syslog datagram per line), as text in the
//! apptail format (`TIME SOURCE.INDEX: TEXT`) or as JSON.
//!
//! [`run_forwarder`] follows `apptail.>` on the bus and the drain table (re-read every
//! [`RELOAD`]), with one sender task per drain: a drain that is down loses lines (a
//! bounded queue), never slows the others or the app, and is reconnected with back-off.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use strato_core::messages::LogLine;
use strato_core::ApiError;
use strato_db::AppDrain;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::access::{Access, Action};
use crate::api::{app_for, ep, parse_json, Endpoint};
use crate::cf::{db_err, taken_or_db_err, CfResult};
use crate::Shared;

/// How often the forwarder re-reads the drain table.
pub const RELOAD: Duration = Duration::from_secs(1);
/// The most drains one app may have.
const MAX_PER_APP: usize = 5;
/// Lines queued per drain while it is slow or down; more are dropped.
const QUEUE: usize = 1000;

pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        ep(Method::GET, "/v2/apps/{guid}/stackato_drains", list),
        ep(Method::POST, "/v2/apps/{guid}/stackato_drains", add),
        ep(
            Method::DELETE,
            "/v2/apps/{guid}/stackato_drains/{name}",
            delete,
        ),
    ]
}

fn drain_json(d: &AppDrain) -> Value {
    json!({"name": d.name, "uri": d.uri, "json": d.json != 0, "created_at": d.created_at})
}

async fn list(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    let app = app_for(&c, &access, Action::Read, &guid).await?;
    let drains = c.db.list_drains(Some(&app.guid)).await.map_err(db_err)?;
    Ok(Json(Value::Array(drains.iter().map(drain_json).collect())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDrain {
    name: String,
    uri: String,
    #[serde(default)]
    json: bool,
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(400, 1001, "CF-DrainInvalid", msg)
}

/// `tcp://HOST:PORT` or `udp://HOST:PORT`, as `(udp, "HOST:PORT")`.
fn parse_uri(uri: &str) -> Result<(bool, String), ApiError> {
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| {
        invalid(format!(
            "'{uri}' is not a drain URI; write tcp://HOST:PORT or udp://HOST:PORT"
        ))
    })?;
    let udp = match scheme.to_ascii_lowercase().as_str() {
        "tcp" => false,
        "udp" => true,
        other => {
            return Err(invalid(format!(
                "drains of type '{other}' are not supported; use tcp://HOST:PORT or udp://HOST:PORT"
            )))
        }
    };
    let addr = rest.trim_end_matches('/');
    let port_ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok || addr.contains('/') {
        return Err(invalid(format!(
            "'{uri}' needs a host and a port: {scheme}://HOST:PORT"
        )));
    }
    Ok((udp, addr.to_string()))
}

async fn add(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<(StatusCode, Json<Value>)> {
    let app = app_for(&c, &access, Action::Develop, &guid).await?;
    let want: NewDrain = parse_json(&body)?;
    let name = want.name.trim();
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_'));
    if !name_ok {
        return Err(invalid(format!(
            "drain name '{name}' must be 1-64 letters, digits, '-' or '_'"
        ))
        .into());
    }
    parse_uri(&want.uri)?;
    let existing = c.db.list_drains(Some(&app.guid)).await.map_err(db_err)?;
    if existing.len() >= MAX_PER_APP {
        return Err(invalid(format!(
            "{} has {} drains, the most an app may have; delete one first",
            app.name, MAX_PER_APP
        ))
        .into());
    }
    let d =
        c.db.add_drain(&app.guid, name, &want.uri, want.json)
            .await
            .map_err(taken_or_db_err(|| {
                invalid(format!("{} already has a drain named {name}", app.name))
            }))?;
    crate::api::audit(
        &c,
        &access.user,
        "audit.app.drain_add",
        &app.guid,
        "app",
        &app.name,
        Some(&app.space_guid),
    )
    .await;
    Ok((StatusCode::CREATED, Json(drain_json(&d))))
}

async fn delete(
    State(c): State<Shared>,
    access: Access,
    Path((guid, name)): Path<(String, String)>,
) -> CfResult<StatusCode> {
    let app = app_for(&c, &access, Action::Develop, &guid).await?;
    if !c.db.delete_drain(&app.guid, &name).await.map_err(db_err)? {
        return Err(ApiError::not_found("drain", &name).into());
    }
    crate::api::audit(
        &c,
        &access.user,
        "audit.app.drain_delete",
        &app.guid,
        "app",
        &app.name,
        Some(&app.space_guid),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// One line as a drain writes it.
fn format_line(line: &LogLine, json: bool) -> String {
    if json {
        return serde_json::to_string(line).unwrap_or_default();
    }
    let secs = line.timestamp.max(0.0);
    let time = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let index = line
        .instance_index
        .map(|i| i.to_string())
        .unwrap_or_else(|| "-".into());
    format!("{time} {}.{index}: {}", line.source, line.text)
}

/// A running sender for one drain.
struct Sink {
    uri: String,
    json: bool,
    lines: mpsc::Sender<String>,
    stop: CancellationToken,
}

/// Follows app logs and the drain table until `shutdown`.
pub async fn run_forwarder(c: Shared, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Each line goes to one controller of the cluster, so a drain receives it once.
    let mut sub = c
        .bus
        .queue_subscribe("apptail.>", "cloudcontrollers.drains")
        .await?;
    tokio::spawn(async move {
        let mut sinks: HashMap<String, Vec<(String, Sink)>> = HashMap::new();
        let mut reload = tokio::time::interval(RELOAD);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = reload.tick() => {
                    if let Ok(drains) = c.db.list_drains(None).await {
                        sync_sinks(&mut sinks, drains, &shutdown);
                    }
                }
                m = sub.next() => match m {
                    Some(m) => forward(&sinks, &m),
                    None => break,
                }
            }
        }
        for sink in sinks.values().flatten() {
            sink.1.stop.cancel();
        }
    });
    Ok(())
}

/// Hands one `apptail.<app>` message to that app's drains. Every app's log lines pass
/// here, so a line is decoded only when its app has a drain, and formatted at most once
/// per format.
fn forward(sinks: &HashMap<String, Vec<(String, Sink)>>, m: &strato_bus::Message) {
    let app = m.subject.strip_prefix("apptail.").unwrap_or_default();
    let Some(app_sinks) = sinks.get(app) else {
        return;
    };
    let Ok(line) = strato_bus::decode::<LogLine>(m) else {
        return;
    };
    let (mut text, mut json) = (None, None);
    for (_, sink) in app_sinks {
        let formatted = if sink.json { &mut json } else { &mut text };
        let formatted = formatted.get_or_insert_with(|| format_line(&line, sink.json));
        let _ = sink.lines.try_send(formatted.clone());
    }
}

/// Starts senders for new drains and stops those of deleted ones.
fn sync_sinks(
    sinks: &mut HashMap<String, Vec<(String, Sink)>>,
    drains: Vec<AppDrain>,
    shutdown: &CancellationToken,
) {
    let wanted: HashMap<&str, &AppDrain> = drains.iter().map(|d| (d.guid.as_str(), d)).collect();
    for list in sinks.values_mut() {
        list.retain(|(guid, sink)| {
            let keep = wanted
                .get(guid.as_str())
                .is_some_and(|d| d.uri == sink.uri && (d.json != 0) == sink.json);
            if !keep {
                sink.stop.cancel();
            }
            keep
        });
    }
    sinks.retain(|_, list| !list.is_empty());
    for d in &drains {
        let have = sinks
            .get(&d.app_guid)
            .is_some_and(|l| l.iter().any(|(g, _)| *g == d.guid));
        if have {
            continue;
        }
        let Ok((udp, addr)) = parse_uri(&d.uri) else {
            continue;
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let stop = shutdown.child_token();
        tokio::spawn(send_lines(udp, addr, d.app_guid.clone(), rx, stop.clone()));
        sinks.entry(d.app_guid.clone()).or_default().push((
            d.guid.clone(),
            Sink {
                uri: d.uri.clone(),
                json: d.json != 0,
                lines: tx,
                stop,
            },
        ));
    }
}

/// Sends queued lines to one drain, reconnecting (TCP) with back-off up to 10 s.
async fn send_lines(
    udp: bool,
    addr: String,
    app: String,
    mut lines: mpsc::Receiver<String>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    'connect: loop {
        if udp {
            let Ok(socket) = tokio::net::UdpSocket::bind("0.0.0.0:0").await else {
                return;
            };
            loop {
                let line = tokio::select! {
                    _ = stop.cancelled() => return,
                    l = lines.recv() => match l { Some(l) => l, None => return },
                };
                // RFC 5424: user-level notice, app guid as the app name.
                let msg = format!("<13>1 - strato {app} - - - {line}");
                let _ = socket.send_to(msg.as_bytes(), &addr).await;
            }
        }
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            c = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&addr)) => c,
        };
        let Ok(Ok(mut stream)) = connected else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
            continue 'connect;
        };
        backoff = Duration::from_millis(200);
        loop {
            let line = tokio::select! {
                _ = stop.cancelled() => return,
                l = lines.recv() => match l { Some(l) => l, None => return },
            };
            if stream
                .write_all(format!("{line}\n").as_bytes())
                .await
                .is_err()
            {
                continue 'connect;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_uris_are_checked() {
        assert_eq!(
            parse_uri("tcp://logs.example.com:514").unwrap(),
            (false, "logs.example.com:514".into())
        );
        assert_eq!(
            parse_uri("udp://10.0.0.1:514/").unwrap(),
            (true, "10.0.0.1:514".into())
        );
        for bad in [
            "logs.example.com:514",
            "file:///etc/passwd",
            "tcp://host",
            "tcp://:1",
            "tcp://h:0",
            "redis://h:6379",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_use_the_apptail_format() {
        let line = LogLine {
            app: "a".into(),
            source: "app".into(),
            instance_index: Some(2),
            stream: "stdout".into(),
            timestamp: 0.0,
            text: "hello".into(),
        };
        assert_eq!(
            format_line(&line, false),
            "1970-01-01T00:00:00Z app.2: hello"
        );
        assert!(format_line(&line, true).contains(r#""text":"hello""#));
    }
}
