//! Releases, rollback and restarts: what makes a deploy reversible and gap-free.
//!
//! Every successful staging records a release (number, droplet, environment, who, when);
//! `POST /v2/apps/{guid}/rollback` makes an older release current again and replaces the
//! instances with zero downtime ([`crate::runner::roll_over`]), recording that as a new
//! release. Only the last `max_releases` releases keep their droplets; older droplets are
//! deleted once nothing else uses them. Also here: the health check settings' rules,
//! `POST /v2/apps/{guid}/restart` with a strategy, and `GET /v2/apps/{guid}/crashes`.

use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use strato_blobs::BlobKind;
use strato_core::messages::InstanceState;
use strato_core::ApiError;
use strato_db::{health_check_type, package_state, App, NewRelease, Release};

use crate::access::{Access, Action};
use crate::api::{app_for, app_json, audit, check_staged, ep, release_blob, Endpoint};
use crate::auth::CurrentUser;
use crate::cf::{db_err, paginate, CfResult, ListParams};
use crate::Shared;

pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        ep(Method::GET, "/v2/apps/{guid}/releases", list_releases),
        ep(Method::POST, "/v2/apps/{guid}/rollback", rollback),
        ep(Method::POST, "/v2/apps/{guid}/restart", restart),
        ep(Method::GET, "/v2/apps/{guid}/crashes", crashes),
    ]
}

/// Who a release names.
#[derive(Clone, Debug)]
pub struct Actor {
    pub guid: String,
    pub name: String,
}

impl Actor {
    pub fn of(user: &CurrentUser) -> Actor {
        Actor {
            guid: user.guid.clone(),
            name: user.username.clone(),
        }
    }
}

/// Records the app's current droplet and environment as its next release, then lets go of
/// the droplets of releases older than the last `max_releases`.
pub async fn record(
    c: &Shared,
    app: &App,
    description: &str,
    actor: &Actor,
) -> Result<Release, strato_db::DbError> {
    let droplet = app.droplet_hash.clone().unwrap_or_default();
    let r =
        c.db.add_release(&NewRelease {
            app_guid: app.guid.clone(),
            droplet_hash: droplet,
            environment_json: app.environment_json.clone(),
            command: app.command.clone(),
            buildpack: app.buildpack.clone(),
            detected_buildpack: app.detected_buildpack.clone(),
            detected_start_command: app.detected_start_command.clone(),
            description: description.to_string(),
            actor: actor.guid.clone(),
            actor_name: actor.name.clone(),
        })
        .await?;
    prune(c, &app.guid).await;
    Ok(r)
}

/// Deletes the droplets of releases beyond the kept ones that no app or kept release uses.
async fn prune(c: &Shared, app_guid: &str) {
    match c
        .db
        .expire_releases(app_guid, c.cfg.max_releases.max(1))
        .await
    {
        Ok(gone) => {
            for d in gone {
                release_blob(c, BlobKind::Droplet, &d).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not expire old releases"),
    }
}

// ---------------------------------------------------------------- health check settings

/// `none` is CF v2's older name for `process`.
pub fn normal_health_check_type(t: &str) -> &'static str {
    match t {
        "http" => health_check_type::HTTP,
        "process" | "none" => health_check_type::PROCESS,
        _ => health_check_type::PORT,
    }
}

pub(crate) fn check_health_check_type(t: &str) -> CfResult<()> {
    if matches!(t, "port" | "http" | "process" | "none") {
        Ok(())
    } else {
        Err(ApiError::app_invalid(format!(
            "health_check_type must be port, http or process, not '{t}'"
        ))
        .into())
    }
}

pub(crate) fn check_http_endpoint(p: &str) -> CfResult<()> {
    if p.is_empty()
        || (p.starts_with('/') && p.len() <= 255 && !p.chars().any(|ch| ch.is_whitespace()))
    {
        Ok(())
    } else {
        Err(ApiError::app_invalid(format!(
            "health_check_http_endpoint must be a path such as /health (up to 255 characters, no spaces), not '{p}'"
        ))
        .into())
    }
}

// ---------------------------------------------------------------- releases

fn release_json(access: &Access, app: &App, r: &Release, current: i64) -> Value {
    let env: Value = serde_json::from_str(&r.environment_json).unwrap_or(json!({}));
    let mut v = json!({
        "metadata": {
            "guid": r.guid,
            "url": format!("/v2/apps/{}/releases/{}", app.guid, r.number),
            "created_at": r.created_at,
            "updated_at": r.created_at,
        },
        "entity": {
            "version": r.number, "app_guid": r.app_guid, "description": r.description,
            "droplet_hash": r.droplet_hash, "rollback_possible": r.droplet_hash.is_some(),
            "current": r.number == current, "environment_json": env, "command": r.command,
            "buildpack": r.buildpack, "detected_buildpack": r.detected_buildpack,
            "detected_start_command": r.detected_start_command,
            "actor": r.actor, "actor_name": r.actor_name,
        },
    });
    access.redact(&mut v, &app.space_guid);
    v
}

/// `GET /v2/apps/{guid}/releases`: oldest first, as CF lists.
async fn list_releases(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let a = app_for(&c, &access, Action::Read, &guid).await?;
    let rs = c.db.releases_of_app(&guid).await.map_err(db_err)?;
    let current = rs.last().map(|r| r.number).unwrap_or(0);
    Ok(Json(paginate(
        &format!("/v2/apps/{guid}/releases"),
        &p,
        rs.iter()
            .map(|r| release_json(&access, &a, r, current))
            .collect(),
    )))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackBody {
    release: Option<i64>,
}

/// `v1, v2, v3` (or `v1–v9` when there are many).
fn numbers(rs: &[&Release]) -> String {
    match rs {
        [] => "none".to_string(),
        [first, .., last] if rs.len() > 6 => format!("v{}–v{}", first.number, last.number),
        _ => rs
            .iter()
            .map(|r| format!("v{}", r.number))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The release a rollback goes to, or a one-line reason naming the ones there are.
fn pick_release<'a>(
    app: &App,
    rs: &'a [Release],
    wanted: Option<i64>,
    kept: u64,
) -> CfResult<&'a Release> {
    let name = &app.name;
    let Some(current) = rs.last() else {
        return Err(ApiError::app_invalid(format!(
            "{name} has no releases yet: each successful push makes one (`strato push`)"
        ))
        .into());
    };
    let all: Vec<&Release> = rs.iter().collect();
    let usable: Vec<&Release> = rs
        .iter()
        .filter(|r| r.droplet_hash.is_some() && r.number != current.number)
        .collect();
    let n = match wanted {
        Some(n) => n,
        None if current.number > 1 => current.number - 1,
        None => {
            return Err(ApiError::app_invalid(format!(
                "{name} has only one release (v{}); there is nothing to roll back to",
                current.number
            ))
            .into())
        }
    };
    let Some(r) = rs.iter().find(|r| r.number == n) else {
        return Err(ApiError::new(
            404,
            10000,
            "CF-NotFound",
            format!(
                "{name} has no release v{n}; its releases are {} (you can roll back to {})",
                numbers(&all),
                numbers(&usable)
            ),
        )
        .into());
    };
    if r.number == current.number {
        return Err(ApiError::app_invalid(format!(
            "v{n} is already the current release of {name}; you can roll back to {}",
            numbers(&usable)
        ))
        .into());
    }
    if r.droplet_hash.is_none() {
        return Err(ApiError::app_invalid(format!(
            "release v{n} of {name} is too old to roll back to: only the last {kept} releases keep their droplet (max_releases); you can roll back to {}",
            numbers(&usable)
        ))
        .into());
    }
    Ok(r)
}

/// `POST /v2/apps/{guid}/rollback` `{"release": N}` (default: the one before the current):
/// that release's droplet and environment become current, new instances start before the
/// old ones stop, and the rollback is itself recorded as a release.
async fn rollback(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<(StatusCode, Json<Value>)> {
    let before = app_for(&c, &access, Action::Develop, &guid).await?;
    let want: RollbackBody = crate::body::parse_json_or_default(&body)?;
    let rs = c.db.releases_of_app(&guid).await.map_err(db_err)?;
    let r = pick_release(&before, &rs, want.release, c.cfg.max_releases.max(1))?;
    let mut a = before.clone();
    a.droplet_hash = r.droplet_hash.clone();
    a.environment_json = r.environment_json.clone();
    a.command = r.command.clone();
    a.buildpack = r.buildpack.clone();
    a.detected_buildpack = r.detected_buildpack.clone();
    a.detected_start_command = r.detected_start_command.clone();
    a.package_state = package_state::STAGED.into();
    a.staging_error = None;
    // A staging still running would replace the rollback when it ends: the rollback wins.
    a.staging_task_id = None;
    a.version = strato_core::new_guid();
    let a = c.db.update_app(&a).await.map_err(db_err)?;
    let rel = record(
        &c,
        &a,
        &format!("rollback to v{}", r.number),
        &Actor::of(&access.user),
    )
    .await
    .map_err(db_err)?;
    audit(
        &c,
        &access.user,
        "audit.app.rollback",
        &a.guid,
        "app",
        &a.name,
        Some(&a.space_guid),
    )
    .await;
    if a.state == "STARTED" {
        crate::runner::roll_over(&c, &a, &before.version).await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(release_json(&access, &a, &rel, rel.number)),
    ))
}

// ---------------------------------------------------------------- restart

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RestartBody {
    strategy: Option<String>,
}

/// `POST /v2/apps/{guid}/restart` `{"strategy": "rolling" | "recreate"}`: new instances
/// of the same droplet replace the running ones; `rolling` (the default) starts them
/// first and stops the old ones once they run, `recreate` stops the old ones first.
async fn restart(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<(StatusCode, Json<Value>)> {
    let before = app_for(&c, &access, Action::Develop, &guid).await?;
    let want: RestartBody = crate::body::parse_json_or_default(&body)?;
    let strategy: crate::runner::Swap = want.strategy.as_deref().unwrap_or("rolling").parse()?;
    check_staged(&before)?;
    if before.state != "STARTED" {
        return Err(ApiError::app_invalid(format!(
            "{} is stopped; start it with `strato start {}`",
            before.name, before.name
        ))
        .into());
    }
    let mut a = before.clone();
    a.version = strato_core::new_guid();
    let a = c.db.update_app(&a).await.map_err(db_err)?;
    crate::runner::swap(&c, &a, &before.version, strategy).await?;
    audit(
        &c,
        &access.user,
        "audit.app.restart",
        &a.guid,
        "app",
        &a.name,
        Some(&a.space_guid),
    )
    .await;
    Ok((StatusCode::CREATED, Json(app_json(&a))))
}

// ---------------------------------------------------------------- crashes

/// `GET /v2/apps/{guid}/crashes`: the crashed instances the DEAs still keep, as CF v2
/// lists them (`instance`, `since`), plus their index and version.
async fn crashes(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    let a = app_for(&c, &access, Action::Read, &guid).await?;
    let found = if a.droplet_hash.is_some() {
        c.runner.find(&a.guid, false).await
    } else {
        Vec::new()
    };
    let out: Vec<Value> = found
        .iter()
        .filter(|x| x.state == InstanceState::Crashed)
        .map(|x| {
            json!({
                "instance": x.instance, "index": x.index, "since": x.state_timestamp,
                "version": x.version, "current_version": x.version == a.version,
            })
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(n: i64, droplet: Option<&str>) -> Release {
        Release {
            guid: format!("g{n}"),
            app_guid: "a".into(),
            number: n,
            droplet_hash: droplet.map(str::to_string),
            environment_json: "{}".into(),
            command: None,
            buildpack: None,
            detected_buildpack: None,
            detected_start_command: None,
            description: "staged".into(),
            actor: "u".into(),
            actor_name: "admin".into(),
            created_at: String::new(),
        }
    }

    fn app() -> App {
        App {
            guid: "a".into(),
            name: "web".into(),
            space_guid: "s".into(),
            instances: 1,
            memory: 64,
            disk_quota: 256,
            state: "STARTED".into(),
            command: None,
            buildpack: None,
            detected_buildpack: None,
            detected_start_command: None,
            environment_json: "{}".into(),
            health_check_timeout: None,
            health_check_type: "port".into(),
            health_check_http_endpoint: None,
            package_hash: None,
            package_state: package_state::STAGED.into(),
            staging_task_id: None,
            staging_error: None,
            droplet_hash: Some("d3".into()),
            version: "v".into(),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn reason(r: CfResult<&Release>) -> String {
        match r {
            Ok(r) => panic!("picked v{}", r.number),
            Err(e) => e.0.description,
        }
    }

    #[test]
    fn rollback_picks_the_previous_release_or_says_which_exist() {
        let rs = vec![
            release(1, None),
            release(2, Some("d2")),
            release(3, Some("d3")),
        ];
        assert_eq!(pick_release(&app(), &rs, None, 2).unwrap().number, 2);
        assert_eq!(
            reason(pick_release(&app(), &rs, Some(9), 2)),
            "web has no release v9; its releases are v1, v2, v3 (you can roll back to v2)"
        );
        assert!(reason(pick_release(&app(), &rs, Some(1), 2)).contains("too old"));
        assert!(reason(pick_release(&app(), &rs, Some(3), 2)).contains("already the current"));
        assert!(reason(pick_release(&app(), &rs[..0], None, 2)).contains("no releases yet"));
        assert!(reason(pick_release(&app(), &rs[..1], None, 2)).contains("only one release"));
    }

    #[test]
    fn health_check_settings_are_checked() {
        assert_eq!(normal_health_check_type("none"), "process");
        assert!(check_health_check_type("tcp").is_err());
        assert!(check_http_endpoint("/health").is_ok());
        assert!(check_http_endpoint("health").is_err());
        assert!(check_http_endpoint("/a b").is_err());
    }
}
