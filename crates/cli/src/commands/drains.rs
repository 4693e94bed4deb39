//! `strato drain add|delete|list`: where an app's log lines are also sent
//! (`tcp://HOST:PORT` lines or `udp://HOST:PORT` syslog datagrams), and `drain:` in
//! stackato.yml, added at push.

use anyhow::Result;
use serde::Deserialize;
use serde_json::json;

use super::{Ctx, Scope};

#[derive(Debug, Deserialize, serde::Serialize)]
struct Drain {
    name: String,
    uri: String,
    #[serde(default)]
    json: bool,
}

fn path(guid: &str) -> String {
    format!("/v2/apps/{guid}/stackato_drains")
}

async fn drains_of(scope: &Scope, guid: &str) -> Result<Vec<Drain>> {
    Ok(scope.api.get(&path(guid)).await?)
}

/// `strato drain add [--json] APP NAME URI`.
pub async fn add(ctx: &Ctx, app: &str, name: &str, uri: &str, as_json: bool) -> Result<()> {
    let scope = ctx.scope()?;
    let found = scope.require_app(app).await?;
    let _: serde_json::Value = scope
        .api
        .post(
            &path(&found.metadata.guid),
            &json!({"name": name, "uri": uri, "json": as_json}),
        )
        .await?;
    println!("Added drain {name} to {app}: its log lines now also go to {uri}");
    Ok(())
}

/// `strato drain delete APP NAME`.
pub async fn delete(ctx: &Ctx, app: &str, name: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let found = scope.require_app(app).await?;
    scope
        .api
        .delete(&format!("{}/{name}", path(&found.metadata.guid)))
        .await?;
    println!("Deleted drain {name} of {app}");
    Ok(())
}

/// `strato drain list APP`.
pub async fn list(ctx: &Ctx, app: &str) -> Result<()> {
    let scope = ctx.scope()?;
    let found = scope.require_app(app).await?;
    let drains = drains_of(&scope, &found.metadata.guid).await?;
    if ctx.out.json {
        return ctx.out.print_json(&drains);
    }
    let rows: Vec<Vec<String>> = drains
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.uri.clone(),
                if d.json { "json" } else { "text" }.into(),
            ]
        })
        .collect();
    ctx.out
        .print_table(&["Name", "URI", "Format"], &rows, "No drains.");
    Ok(())
}

/// Adds the manifest's drains the app does not have yet (by name).
pub async fn ensure_drains(scope: &Scope, guid: &str, wanted: &[(String, String)]) -> Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let have = drains_of(scope, guid).await?;
    for (name, uri) in wanted {
        match have.iter().find(|d| d.name == *name) {
            Some(d) if d.uri == *uri => {}
            Some(d) => eprintln!(
                "note: drain {name} stays at {} (stackato.yml says {uri}); `strato drain delete` it to change it",
                d.uri
            ),
            None => {
                let _: serde_json::Value = scope
                    .api
                    .post(&path(guid), &json!({"name": name, "uri": uri}))
                    .await?;
                println!("Added drain {name} ({uri})");
            }
        }
    }
    Ok(())
}
