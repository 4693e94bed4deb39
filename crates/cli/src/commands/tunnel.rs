//! Reaching a service from the developer's machine: `tunnel` (a local port carried over a
//! WebSocket by the API to the service, then optionally `psql`, `mysql`, `mysqldump`,
//! `pg_dump` or `redis-cli` started against it), `dbexport` (a consistent dump to stdout)
//! and `dbshell` (a dump from stdin restored into the service, or an interactive client).

use std::io::IsTerminal;
use std::process::Stdio;

use super::services::{require_instance, InstanceEntity};
use super::{Ctx, Scope};
use crate::cf::Resource;
use crate::error::usage;
use crate::prompt;
use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

type Ws = crate::api::WsStream;

/// What the API says about the tunnel's service when the WebSocket opens.
#[derive(Clone, Debug)]
struct Hello {
    name: String,
    label: String,
    credentials: Value,
}

async fn open(scope: &Scope, guid: &str) -> Result<(Ws, Hello)> {
    let request = scope
        .api
        .websocket_request(&format!("/v2/service_instances/{guid}/tunnel"))?;
    let (mut ws, _) = scope.api.websocket_connect(request).await.map_err(|e| {
        refused(&e).unwrap_or_else(|| anyhow!("cannot open a tunnel through {}: {e}", scope.target))
    })?;
    let first = match ws.next().await {
        Some(Ok(Message::Text(t))) => t,
        other => bail!("the API closed the tunnel before saying where it goes ({other:?})"),
    };
    let v: Value = serde_json::from_str(first.as_str())?;
    let hello = Hello {
        name: v["name"].as_str().unwrap_or_default().to_string(),
        label: v["label"].as_str().unwrap_or_default().to_string(),
        credentials: v["credentials"].clone(),
    };
    Ok((ws, hello))
}

/// The API's own reason when it refused the WebSocket with an error body.
fn refused(e: &tokio_tungstenite::tungstenite::Error) -> Option<anyhow::Error> {
    let tokio_tungstenite::tungstenite::Error::Http(response) = e else {
        return None;
    };
    let body: Value = serde_json::from_slice(response.body().as_deref()?).ok()?;
    let description = body["description"].as_str()?;
    Some(anyhow!("{description}"))
}

/// Asks the API to connect `ws` to the service; then bytes flow.
async fn connect(ws: &mut Ws) -> Result<()> {
    ws.send(Message::Text(json!({"connect": true}).to_string()))
        .await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) => {
            let v: Value = serde_json::from_str(t.as_str()).unwrap_or(json!({}));
            if v["connected"] == true {
                Ok(())
            } else {
                bail!(
                    "{}",
                    v["error"]
                        .as_str()
                        .unwrap_or("the API refused the connection")
                )
            }
        }
        other => bail!("the tunnel closed while connecting ({other:?})"),
    }
}

/// Copies one local TCP connection through a fresh tunnel WebSocket.
async fn carry(scope: &Scope, guid: &str, mut tcp: tokio::net::TcpStream) -> Result<()> {
    let (mut ws, _) = open(scope, guid).await?;
    connect(&mut ws).await?;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rx, mut tx) = tcp.split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = bytes_of(&buf[..n]);
                    if ws_tx.send(Message::Binary(chunk)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    let down = async {
        while let Some(Ok(m)) = ws_rx.next().await {
            match m {
                Message::Binary(b) if tx.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = tx.shutdown().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    Ok(())
}

fn bytes_of(data: &[u8]) -> Vec<u8> {
    data.to_vec()
}

/// The clients `tunnel` can start for a type, the first being the default.
fn clients_for(label: &str) -> &'static [&'static str] {
    match label {
        "postgresql" => &["psql", "pg_dump"],
        "mysql" => &["mysql", "mysqldump"],
        "redis" => &["redis-cli"],
        _ => &[],
    }
}

fn text(creds: &Value, key: &str) -> String {
    creds[key].as_str().unwrap_or_default().to_string()
}

/// The command line (and secret-carrying environment) of `client` against the local port.
fn client_command(
    client: &str,
    port: u16,
    creds: &Value,
    extra: &[String],
) -> Result<tokio::process::Command> {
    let user = text(creds, "username").to_string();
    let user = if user.is_empty() {
        text(creds, "user")
    } else {
        user
    };
    let password = text(creds, "password");
    let db = text(creds, "name");
    let port = port.to_string();
    let mut cmd = tokio::process::Command::new(client);
    match client {
        "psql" | "pg_dump" => {
            cmd.args(["-h", "127.0.0.1", "-p", &port, "-U", &user]);
            cmd.args(extra).arg(&db).env("PGPASSWORD", &password);
        }
        "mysql" | "mysqldump" => {
            cmd.args([
                "--protocol=TCP",
                "-h",
                "127.0.0.1",
                "-P",
                &port,
                "-u",
                &user,
            ]);
            if client == "mysqldump" {
                cmd.arg("--single-transaction");
            }
            cmd.args(extra).arg(&db).env("MYSQL_PWD", &password);
        }
        "redis-cli" => {
            cmd.args(["-h", "127.0.0.1", "-p", &port]).args(extra);
            if !password.is_empty() {
                cmd.env("REDISCLI_AUTH", &password);
            }
        }
        other => bail!(
            "strato cannot start {other:?}; clients: psql, pg_dump, mysql, mysqldump, redis-cli"
        ),
    }
    Ok(cmd)
}

/// `strato tunnel SERVICE [--port N] [CLIENT [ARGS...]]`.
pub async fn tunnel_cmd(
    ctx: &Ctx,
    service: &str,
    port: Option<u16>,
    client: Option<&str>,
    client_args: &[String],
) -> Result<()> {
    let scope = ctx.scope()?;
    let si = require_instance(&scope, service).await?;
    let (ws, hello) = open(&scope, &si.metadata.guid).await?;
    drop(ws);
    let offered = clients_for(&hello.label);
    if let Some(c) = client {
        if !offered.contains(&c) {
            return usage(format!(
                "{c} does not work with a {} service; {}",
                hello.label,
                if offered.is_empty() {
                    "no client is offered for it".to_string()
                } else {
                    format!("use one of: {}", offered.join(", "))
                }
            ));
        }
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.unwrap_or(0)))
        .await
        .with_context(|| match port {
            Some(p) => format!("cannot listen on 127.0.0.1:{p}; choose another --port"),
            None => "cannot listen on a local port".to_string(),
        })?;
    let local = listener.local_addr()?.port();
    let scope = std::sync::Arc::new(scope);
    let guid = si.metadata.guid.clone();
    let accept_scope = scope.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let s = accept_scope.clone();
            let g = guid.clone();
            tokio::spawn(async move {
                if let Err(e) = carry(&s, &g, tcp).await {
                    eprintln!("tunnel: {e:#}");
                }
            });
        }
    });
    describe(&hello, local);
    let chosen = match client {
        Some(c) => Some(c.to_string()),
        None if prompt::interactive(ctx.no_prompt) && !offered.is_empty() => {
            let answer = prompt::ask(&format!(
                "Start a client? ({}, or Enter for none) ",
                offered.join(", ")
            ))?;
            let answer = answer.trim().to_string();
            (!answer.is_empty()).then_some(answer)
        }
        None => None,
    };
    match chosen {
        Some(c) => {
            let mut cmd = client_command(&c, local, &hello.credentials, client_args)?;
            let status = cmd
                .stdin(Stdio::inherit())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit())
                .status()
                .await
                .with_context(|| format!("cannot start {c}; is it installed on this machine?"))?;
            if !status.success() {
                bail!("{c} exited with {status}");
            }
            Ok(())
        }
        None => {
            eprintln!("Press Ctrl-C to close the tunnel.");
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
    }
}

fn describe(hello: &Hello, port: u16) {
    let c = &hello.credentials;
    eprintln!(
        "Tunnel to {} ({}) open on 127.0.0.1:{port}",
        hello.name, hello.label
    );
    for key in ["name", "username", "password"] {
        let v = text(c, key);
        if !v.is_empty() {
            eprintln!("  {key}: {v}");
        }
    }
}

/// `strato dbexport SERVICE > dump`: a consistent dump (SQL for PostgreSQL and MySQL, an
/// RDB file for Redis, a tar for a filesystem) on stdout.
pub async fn dbexport_cmd(ctx: &Ctx, service: &str) -> Result<()> {
    if std::io::stdout().is_terminal() {
        return usage(format!(
            "the dump goes to stdout; redirect it: strato dbexport {service} > {service}.dump"
        ));
    }
    let scope = ctx.scope()?;
    let si = require_instance(&scope, service).await?;
    let url = scope.api.url(&format!(
        "/v2/service_instances/{}/export",
        si.metadata.guid
    ));
    let response = scope.api.send(|c| c.get(&url)).await?;
    let mut body = response.bytes_stream();
    let mut out = tokio::io::stdout();
    let mut total = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| anyhow!("the dump of {service} broke off after {total} bytes: {e}"))?;
        total += chunk.len() as u64;
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    eprintln!("Exported {service}: {total} bytes");
    Ok(())
}

/// The service a `dbshell` invocation means: `[APP] [SERVICE]` as Stackato took them.
async fn dbshell_target(scope: &Scope, args: &[String]) -> Result<Resource<InstanceEntity>> {
    match args {
        [app, service] => {
            let a = scope.require_app(app).await?;
            let si = require_instance(scope, service).await?;
            if si
                .entity
                .service_bindings
                .iter()
                .all(|b| b.entity.app_guid != a.metadata.guid)
            {
                bail!("{service} is not bound to {app}; see `strato services`");
            }
            Ok(si)
        }
        [one] => match require_instance(scope, one).await {
            Ok(si) => Ok(si),
            Err(_) => only_database_of(scope, one).await,
        },
        [] => {
            let dir = std::env::current_dir()?;
            let Some(app) = crate::manifest::app_name_in(&dir) else {
                return usage("name the service (`strato dbshell SERVICE`) or the app; there is no stackato.yml with a name here");
            };
            only_database_of(scope, &app).await
        }
        _ => usage("dbshell takes at most an app and a service: strato dbshell [APP] [SERVICE]"),
    }
}

async fn only_database_of(scope: &Scope, app: &str) -> Result<Resource<InstanceEntity>> {
    let a = scope.require_app(app).await?;
    let all = super::services::space_instances(scope).await?;
    let bound: Vec<_> = all
        .into_iter()
        .filter(|s| {
            s.entity
                .service_bindings
                .iter()
                .any(|b| b.entity.app_guid == a.metadata.guid)
        })
        .filter(|s| !clients_for(&s.entity.label()).is_empty())
        .collect();
    match bound.len() {
        1 => Ok(bound.into_iter().next().expect("one element")),
        0 => bail!("{app} has no database service bound; see `strato services`"),
        _ => {
            let names: Vec<_> = bound.iter().map(|s| s.entity.name.clone()).collect();
            bail!(
                "{app} has several database services ({}); name one: strato dbshell {app} SERVICE",
                names.join(", ")
            )
        }
    }
}

/// `strato dbshell [APP] [SERVICE]`: with a dump on stdin, restores it into the service;
/// on a terminal, starts the type's client through a tunnel.
pub async fn dbshell_cmd(ctx: &Ctx, args: &[String]) -> Result<()> {
    let scope = ctx.scope()?;
    let si = dbshell_target(&scope, args).await?;
    let name = si.entity.name.clone();
    if std::io::stdin().is_terminal() {
        let label = si.entity.label();
        let client = clients_for(&label)
            .first()
            .ok_or_else(|| anyhow!("{name} is a {label} service; there is no shell for it"))?;
        return tunnel_cmd(ctx, &name, None, Some(client), &[]).await;
    }
    let stdin = tokio_util_reader(tokio::io::stdin());
    let url = scope.api.url(&format!(
        "/v2/service_instances/{}/import",
        si.metadata.guid
    ));
    let body = reqwest::Body::wrap_stream(stdin);
    // The body is a stream and can be sent once: no token-refresh retry here, so make
    // sure the token is fresh first.
    let _: Value = scope.api.get("/v2/info").await?;
    let response = scope
        .api
        .send_once(|c| {
            c.put(&url)
                .header("content-type", "application/octet-stream")
                .body(body)
        })
        .await?;
    drop(response);
    eprintln!("Restored into {name}");
    Ok(())
}

/// stdin as a stream of chunks for an upload body.
fn tokio_util_reader(
    mut input: tokio::io::Stdin,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    async_stream(move |tx| async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match input.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(Ok(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
    })
}

/// A stream fed by a task through a small channel (bounded: reading waits for sending).
fn async_stream<F, Fut>(
    producer: F,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(producer(tx));
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_commands_carry_secrets_in_the_environment_only() {
        let creds = json!({"name": "d1", "username": "u1", "password": "s3cret"});
        for client in ["psql", "pg_dump", "mysql", "mysqldump", "redis-cli"] {
            let cmd = client_command(client, 4000, &creds, &[]).unwrap();
            let argv: Vec<String> = cmd
                .as_std()
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            assert!(
                !argv.iter().any(|a| a.contains("s3cret")),
                "{client}: {argv:?}"
            );
            assert!(argv.contains(&"4000".to_string()), "{client}: {argv:?}");
        }
        assert!(client_command("rm", 1, &creds, &[]).is_err());
    }

    #[test]
    fn every_database_type_has_a_default_client() {
        assert_eq!(clients_for("postgresql")[0], "psql");
        assert_eq!(clients_for("mysql")[0], "mysql");
        assert_eq!(clients_for("redis")[0], "redis-cli");
        assert!(clients_for("filesystem").is_empty());
    }
}
