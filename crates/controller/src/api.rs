//! The HTTP surface: Cloud Foundry v2 routes, UAA's token endpoint, Strato's log and
//! staging-log streams. Handlers are thin: they check input, call the repositories,
//! [`crate::staging`] and [`crate::runner`], and shape the answer with [`crate::cf`].

use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Path, RawQuery, State};
use axum::handler::Handler;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use strato_blobs::BlobKind;
use strato_core::messages::StopRequest;
use strato_core::{names, ApiError};
use strato_db::{package_state, App, Domain, Filter, Organization, Route, Space};

use crate::access::{Access, Action, Scope};
use crate::auth::{CurrentUser, MaybeUser};
use crate::bits::WireResource;
use crate::cf::{db_err, paginate, resource, taken_or_db_err, CfError, CfResult, ListParams};
use crate::tenancy::{org_json, space_json};
use crate::Shared;

/// One endpoint: method, path (axum syntax) and its handler.
pub(crate) type Endpoint = (Method, &'static str, MethodRouter<Shared>);

/// An [`Endpoint`] whose handler answers `method` only.
pub(crate) fn ep<H, T>(method: Method, path: &'static str, handler: H) -> Endpoint
where
    H: Handler<T, Shared>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
    (method, path, on(filter, handler))
}

/// Every endpoint of the API; `upload_limit` is the body limit of the bits upload.
fn endpoints(upload_limit: usize) -> Vec<Endpoint> {
    let mut v = vec![
        ep(Method::GET, "/", root),
        ep(Method::GET, "/v2/info", info),
        ep(Method::GET, "/v2/organizations", list_orgs),
        ep(Method::GET, "/v2/organizations/{guid}", get_org),
        ep(Method::GET, "/v2/organizations/{guid}/spaces", org_spaces),
        ep(Method::GET, "/v2/spaces", list_spaces),
        ep(Method::GET, "/v2/spaces/{guid}", get_space),
        ep(Method::GET, "/v2/spaces/{guid}/summary", space_summary),
        ep(Method::GET, "/v2/spaces/{guid}/apps", space_apps),
        ep(Method::GET, "/v2/routes", list_routes),
        ep(Method::POST, "/v2/routes", create_route),
        ep(Method::GET, "/v2/routes/{guid}", get_route),
        ep(Method::DELETE, "/v2/routes/{guid}", delete_route),
        ep(Method::GET, "/v2/routes/{guid}/apps", route_apps),
        ep(Method::GET, "/v2/apps", list_apps),
        ep(Method::POST, "/v2/apps", create_app),
        ep(Method::GET, "/v2/apps/{guid}", get_app),
        ep(Method::PUT, "/v2/apps/{guid}", update_app),
        ep(Method::DELETE, "/v2/apps/{guid}", delete_app),
        ep(Method::GET, "/v2/apps/{guid}/summary", app_summary),
        ep(Method::GET, "/v2/apps/{guid}/routes", app_routes),
        ep(Method::PUT, "/v2/apps/{guid}/routes/{route}", map_route),
        ep(
            Method::DELETE,
            "/v2/apps/{guid}/routes/{route}",
            unmap_route,
        ),
        (
            Method::PUT,
            "/v2/apps/{guid}/bits",
            on(MethodFilter::PUT, upload_bits).layer(DefaultBodyLimit::max(upload_limit)),
        ),
        ep(Method::POST, "/v2/apps/{guid}/restage", restage),
        ep(Method::GET, "/v2/apps/{guid}/instances", instances),
        ep(Method::GET, "/v2/apps/{guid}/stats", stats),
        ep(
            Method::GET,
            "/v2/apps/{guid}/staging_log/{task}",
            staging_log,
        ),
        ep(Method::GET, "/v2/apps/{guid}/stackato_logs", app_logs),
        ep(Method::PUT, "/v2/resource_match", resource_match),
        ep(Method::GET, "/v2/events", list_events),
    ];
    v.extend(crate::tenancy::endpoints());
    v.extend(crate::quotas::endpoints());
    v.extend(crate::uaa::endpoints());
    v.extend(crate::clients::endpoints());
    v.extend(crate::domains::endpoints());
    v.extend(crate::drains::endpoints());
    v.extend(crate::services::endpoints());
    v.extend(crate::tunnel::endpoints());
    v.extend(crate::exec::endpoints());
    v.extend(crate::releases::endpoints());
    v.extend(crate::blob_urls::endpoints(upload_limit));
    v
}

/// The (method, path) of every endpoint, as the router serves them: the role matrix test
/// checks it has a row for each.
pub fn route_table() -> Vec<(Method, &'static str)> {
    endpoints(0).into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// All routes of the API.
pub fn router(c: Shared) -> Router {
    let upload_limit = (c.cfg.max_upload_mb as usize).saturating_mul(1024 * 1024) + 64 * 1024;
    let mut r = Router::new();
    for (_, path, handler) in endpoints(upload_limit) {
        // Routes on the same path merge (one method each).
        r = r.route(path, handler);
    }
    r.fallback(not_found).with_state(c)
}

/// The `strategy` (`rolling` when absent) and `max_in_flight` query parameters.
fn swap_param(query: Option<&str>) -> CfResult<crate::runner::Swap> {
    let params = crate::cf::parse_query(query.unwrap_or(""));
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let swap: crate::runner::Swap = param("strategy").unwrap_or("rolling").parse()?;
    let Some(n) = param("max_in_flight") else {
        return Ok(swap);
    };
    if swap == crate::runner::Swap::Recreate {
        return Err(ApiError::invalid_request(
            "max_in_flight applies to the rolling strategy only",
        )
        .into());
    }
    match n.parse::<u32>() {
        Ok(n) if n > 0 => Ok(crate::runner::Swap::Rolling {
            max_in_flight: Some(n),
        }),
        _ => Err(ApiError::invalid_request(format!(
            "max_in_flight must be a whole number of instances above 0, not '{n}'"
        ))
        .into()),
    }
}

async fn not_found() -> CfError {
    CfError(ApiError::new(404, 10000, "CF-NotFound", "Unknown request"))
}

/// `scheme://host` of the request, as the client reached us (through the router or not).
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    format!("{proto}://{host}")
}

pub(crate) use crate::body::parse_json;

/// Reads and checks the fields of an app create or update (the `api_body` fuzz target
/// calls it through [`crate::body::parse_as_each_request_type`]).
pub(crate) fn parse_app_fields(body: &[u8]) -> CfResult<()> {
    validate(&parse_json::<AppFields>(body)?)
}

// ---------------------------------------------------------------- root, info, tokens

async fn root(headers: HeaderMap) -> Json<Value> {
    let base = base_url(&headers);
    Json(json!({
        "links": {
            "self": {"href": base},
            "cloud_controller_v2": {"href": format!("{base}/v2"), "meta": {"version": "2.x"}},
            "login": {"href": base},
            "uaa": {"href": base},
        }
    }))
}

async fn info(
    State(c): State<Shared>,
    headers: HeaderMap,
    MaybeUser(user): MaybeUser,
) -> Json<Value> {
    let base = base_url(&headers);
    let mut v = json!({
        "name": "strato",
        "build": strato_core::VERSION,
        "support": "see the README",
        "version": 2,
        "description": "Strato, a self-hosted PaaS (Stackato 3 compatible)",
        "authorization_endpoint": base,
        "token_endpoint": base,
        "api_version": "2.x",
        "strato_version": strato_core::VERSION,
        "max_client_upload_mb": c.cfg.max_upload_mb,
    });
    if let Some(u) = user {
        v["user"] = json!(u.guid);
        v["user_name"] = json!(u.username);
        v["admin"] = json!(u.admin);
    }
    Json(v)
}

// ---------------------------------------------------------------- orgs, spaces, domains

async fn list_orgs(
    State(c): State<Shared>,
    access: Access,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let orgs =
        c.db.list_orgs(&p.db_filter(&["name"])?)
            .await
            .map_err(db_err)?;
    Ok(Json(paginate(
        "/v2/organizations",
        &p,
        orgs.iter()
            .filter(|o| access.can(Action::Read, Scope::Org(&o.guid)))
            .map(org_json)
            .collect(),
    )))
}

pub(crate) async fn org(c: &Shared, guid: &str) -> CfResult<Organization> {
    Ok(c.db
        .org_by_guid(guid)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError::not_found("organization", guid))?)
}

async fn get_org(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    let o = org(&c, &guid).await?;
    access.require(Action::Read, Scope::Org(&o.guid))?;
    Ok(Json(org_json(&o)))
}

async fn org_spaces(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let mut filter = p.db_filter(&["name"])?;
    filter.organization_guid = Some(guid.clone());
    org(&c, &guid).await?;
    access.require(Action::Read, Scope::Org(&guid))?;
    let spaces = c.db.list_spaces(&filter).await.map_err(db_err)?;
    Ok(Json(paginate(
        &format!("/v2/organizations/{guid}/spaces"),
        &p,
        spaces
            .iter()
            .filter(|s| access.can(Action::Read, Scope::Space(s)))
            .map(space_json)
            .collect(),
    )))
}

async fn list_spaces(
    State(c): State<Shared>,
    access: Access,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let filter = p.db_filter(&["name", "organization_guid"])?;
    let spaces = c.db.list_spaces(&filter).await.map_err(db_err)?;
    Ok(Json(paginate(
        "/v2/spaces",
        &p,
        spaces
            .iter()
            .filter(|s| access.can(Action::Read, Scope::Space(s)))
            .map(space_json)
            .collect(),
    )))
}

pub(crate) async fn space(c: &Shared, guid: &str) -> CfResult<Space> {
    Ok(c.db
        .space_by_guid(guid)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError::not_found("space", guid))?)
}

async fn get_space(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    Ok(Json(space_json(
        &access.space(&c, Action::Read, &guid).await?,
    )))
}

async fn space_apps(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let mut filter = p.db_filter(&["name"])?;
    filter.space_guid = Some(guid.clone());
    access.space(&c, Action::Read, &guid).await?;
    let apps = c.db.list_apps(&filter).await.map_err(db_err)?;
    Ok(Json(paginate(
        &format!("/v2/spaces/{guid}/apps"),
        &p,
        apps.iter().map(|a| app_json_for(&access, a)).collect(),
    )))
}

async fn space_summary(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    let s = access.space(&c, Action::Read, &guid).await?;
    let apps =
        c.db.list_apps(&Filter {
            space_guid: Some(guid.clone()),
            ..Default::default()
        })
        .await
        .map_err(db_err)?;
    // Each summary asks the DEAs and may wait for their answers: ask for all apps at once.
    let mut out = futures::future::try_join_all(apps.iter().map(|a| summary_of(&c, a))).await?;
    for v in &mut out {
        access.redact(v, &guid);
    }
    let services = crate::services::space_services_summary(&c, &guid).await?;
    Ok(Json(
        json!({"guid": s.guid, "name": s.name, "apps": out, "services": services}),
    ))
}

// ---------------------------------------------------------------- routes

fn route_json(r: &Route, domain: Option<&Domain>) -> Value {
    let mut v = resource(
        "routes",
        &r.guid,
        &r.created_at,
        &r.updated_at,
        json!({
            "host": r.host, "path": "", "domain_guid": r.domain_guid, "space_guid": r.space_guid,
            "domain_url": format!("/v2/shared_domains/{}", r.domain_guid),
            "space_url": format!("/v2/spaces/{}", r.space_guid),
            "apps_url": format!("/v2/routes/{}/apps", r.guid),
        }),
    );
    if let Some(d) = domain {
        v["entity"]["domain"] = crate::domains::domain_json(d);
    }
    v
}

async fn list_routes(
    State(c): State<Shared>,
    access: Access,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let filter = p.db_filter(&["host", "domain_guid", "space_guid"])?;
    let rs = c.db.list_routes(&filter).await.map_err(db_err)?;
    let visible = access.visible_spaces(&c).await?;
    let mut out = Vec::new();
    for r in rs
        .iter()
        .filter(|r| visible.as_ref().is_none_or(|v| v.contains(&r.space_guid)))
    {
        let d = if p.depth > 0 {
            c.db.domain_by_guid(&r.domain_guid).await.map_err(db_err)?
        } else {
            None
        };
        out.push(route_json(r, d.as_ref()));
    }
    Ok(Json(paginate("/v2/routes", &p, out)))
}

#[derive(Deserialize)]
pub(crate) struct NewRoute {
    host: String,
    domain_guid: String,
    space_guid: String,
}

async fn create_route(
    State(c): State<Shared>,
    access: Access,
    body: axum::body::Bytes,
) -> CfResult<(StatusCode, Json<Value>)> {
    let user = access.user.clone();
    let r: NewRoute = parse_json(&body)?;
    let space = access.space(&c, Action::Develop, &r.space_guid).await?;
    let host = r.host.to_ascii_lowercase();
    names::check_host(&host).map_err(ApiError::route_invalid)?;
    let d =
        c.db.domain_by_guid(&r.domain_guid)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ApiError::not_found("domain", &r.domain_guid))?;
    if let Some(owner) = &d.owning_organization_guid {
        if *owner != space.organization_guid {
            return Err(ApiError::new(
                400,
                210003,
                "CF-DomainInvalid",
                format!(
                    "the domain {} belongs to another organization; create one of your own with `strato create-domain`",
                    d.name
                ),
            )
            .into());
        }
    }
    if host == "api" {
        return Err(ApiError::route_host_taken(&format!(
            "{host}.{} (reserved for the API)",
            d.name
        ))
        .into());
    }
    crate::quotas::check_new_route(&c, &r.space_guid).await?;
    let route =
        c.db.create_route(&host, &d.guid, &r.space_guid)
            .await
            .map_err(taken_or_db_err(|| {
                ApiError::route_host_taken(&format!("{host}.{}", d.name))
            }))?;
    audit(
        &c,
        &user,
        "audit.route.create",
        &route.guid,
        "route",
        &format!("{host}.{}", d.name),
        Some(&route.space_guid),
    )
    .await;
    Ok((StatusCode::CREATED, Json(route_json(&route, Some(&d)))))
}

pub(crate) async fn route(c: &Shared, guid: &str) -> CfResult<Route> {
    Ok(c.db
        .route_by_guid(guid)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError::not_found("route", guid))?)
}

async fn get_route(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    let r = route(&c, &guid).await?;
    access.space(&c, Action::Read, &r.space_guid).await?;
    let d = c.db.domain_by_guid(&r.domain_guid).await.map_err(db_err)?;
    Ok(Json(route_json(&r, d.as_ref())))
}

async fn delete_route(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<StatusCode> {
    let user = access.user.clone();
    let r = route(&c, &guid).await?;
    access.space(&c, Action::Develop, &r.space_guid).await?;
    let apps = c.db.apps_of_route(&guid).await.map_err(db_err)?;
    c.db.delete_route(&guid).await.map_err(db_err)?;
    for a in apps {
        refresh_routes(&c, &a).await;
    }
    audit(
        &c,
        &user,
        "audit.route.delete",
        &r.guid,
        "route",
        &r.host,
        Some(&r.space_guid),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn route_apps(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let r = route(&c, &guid).await?;
    access.space(&c, Action::Read, &r.space_guid).await?;
    let apps = c.db.apps_of_route(&guid).await.map_err(db_err)?;
    Ok(Json(paginate(
        &format!("/v2/routes/{guid}/apps"),
        &p,
        apps.iter().map(|a| app_json_for(&access, a)).collect(),
    )))
}

/// `host.domain` for every route of an app.
pub async fn app_uris(c: &Shared, app_guid: &str) -> Result<Vec<String>, ApiError> {
    let routes =
        c.db.routes_of_app(app_guid)
            .await
            .map_err(|e| ApiError::server(e.to_string()))?;
    let mut uris = Vec::new();
    for r in routes {
        if let Some(d) =
            c.db.domain_by_guid(&r.domain_guid)
                .await
                .map_err(|e| ApiError::server(e.to_string()))?
        {
            uris.push(format!("{}.{}", r.host, d.name));
        }
    }
    Ok(uris)
}

/// After a route change, tells the DEAs the app's uris so its running instances
/// register the new ones and unregister (and so drain) the old ones, without a restart.
async fn refresh_routes(c: &Shared, app: &App) {
    if app.state == "STARTED" && app.package_state == package_state::STAGED {
        if let Ok(uris) = app_uris(c, &app.guid).await {
            let body = strato_core::messages::DeaUpdate {
                droplet: app.guid.clone(),
                uris,
            };
            let _ =
                strato_bus::publish_json(c.bus.as_ref(), strato_core::subjects::DEA_UPDATE, &body)
                    .await;
        }
    }
}

/// Tells the DEAs every started app's uris (at the controller's start): instances
/// registered under names that changed while no controller ran (`kato node rename`)
/// take their new ones.
pub async fn refresh_all_routes(c: Shared) {
    let Ok(apps) = c.db.list_apps(&Default::default()).await else {
        return;
    };
    for app in &apps {
        refresh_routes(&c, app).await;
    }
}

// ---------------------------------------------------------------- apps

pub(crate) fn app_json(a: &App) -> Value {
    let env: Value = serde_json::from_str(&a.environment_json).unwrap_or(json!({}));
    resource(
        "apps",
        &a.guid,
        &a.created_at,
        &a.updated_at,
        json!({
            "name": a.name, "space_guid": a.space_guid, "instances": a.instances, "memory": a.memory,
            "disk_quota": a.disk_quota, "state": a.state, "command": a.command, "buildpack": a.buildpack,
            "detected_buildpack": a.detected_buildpack, "detected_start_command": a.detected_start_command.clone().unwrap_or_default(),
            "environment_json": env, "health_check_timeout": a.health_check_timeout, "health_check_type": a.health_check_type,
            "health_check_http_endpoint": a.health_check_http_endpoint,
            "package_state": a.package_state, "staging_task_id": a.staging_task_id, "version": a.version,
            "staging_failed_reason": a.staging_failure().map(|f| f.0),
            "staging_failed_description": a.staging_failure().map(|f| f.1),
            "production": false, "stack_guid": null, "diego": false, "enable_ssh": true, "ports": null,
            "space_url": format!("/v2/spaces/{}", a.space_guid),
            "routes_url": format!("/v2/apps/{}/routes", a.guid),
            "events_url": format!("/v2/apps/{}/events", a.guid),
        }),
    )
}

/// An app's JSON with its environment hidden from non-developers.
pub(crate) fn app_json_for(access: &Access, a: &App) -> Value {
    let mut v = app_json(a);
    access.redact(&mut v, &a.space_guid);
    v
}

async fn summary_of(c: &Shared, a: &App) -> CfResult<Value> {
    let uris = app_uris(c, &a.guid).await?;
    let running = if a.state == "STARTED" {
        c.runner
            .find(&a.guid, false)
            .await
            .iter()
            .filter(|i| {
                i.state == strato_core::messages::InstanceState::Running && i.version == a.version
            })
            .count()
    } else {
        0
    };
    let mut v = app_json(a)["entity"].clone();
    v["guid"] = json!(a.guid);
    v["urls"] = json!(uris);
    v["running_instances"] = json!(running);
    Ok(v)
}

pub(crate) async fn app(c: &Shared, guid: &str) -> CfResult<App> {
    Ok(c.db
        .app_by_guid(guid)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError::not_found("app", guid))?)
}

async fn list_apps(
    State(c): State<Shared>,
    access: Access,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let filter = p.db_filter(&["name", "space_guid"])?;
    let apps = c.db.list_apps(&filter).await.map_err(db_err)?;
    let visible = access.visible_spaces(&c).await?;
    Ok(Json(paginate(
        "/v2/apps",
        &p,
        apps.iter()
            .filter(|a| visible.as_ref().is_none_or(|v| v.contains(&a.space_guid)))
            .map(|a| app_json_for(&access, a))
            .collect(),
    )))
}

/// Fields a client may set on create and update.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppFields {
    name: Option<String>,
    space_guid: Option<String>,
    instances: Option<i64>,
    memory: Option<i64>,
    disk_quota: Option<i64>,
    state: Option<String>,
    command: Option<Option<String>>,
    buildpack: Option<Option<String>>,
    environment_json: Option<serde_json::Map<String, Value>>,
    health_check_timeout: Option<Option<i64>>,
    #[serde(default, rename = "console")]
    _console: Option<bool>,
    #[serde(default, rename = "debug")]
    _debug: Option<Value>,
    #[serde(default, rename = "production")]
    _production: Option<bool>,
    #[serde(default, rename = "stack_guid")]
    _stack_guid: Option<Value>,
    health_check_type: Option<String>,
    health_check_http_endpoint: Option<Option<String>>,
    #[serde(default, rename = "diego")]
    _diego: Option<bool>,
}

fn validate(f: &AppFields) -> CfResult<()> {
    if let Some(n) = &f.name {
        names::check_app_name(n).map_err(ApiError::app_invalid)?;
    }
    if let Some(i) = f.instances {
        if !(0..=256).contains(&i) {
            return Err(ApiError::app_invalid(format!(
                "instances must be between 0 and 256, not {i}"
            ))
            .into());
        }
    }
    if let Some(m) = f.memory {
        if !(1..=65536).contains(&m) {
            return Err(ApiError::app_invalid(format!(
                "memory must be between 1 and 65536 MB, not {m}"
            ))
            .into());
        }
    }
    if let Some(d) = f.disk_quota {
        if !(1..=65536).contains(&d) {
            return Err(ApiError::app_invalid(format!(
                "disk_quota must be between 1 and 65536 MB, not {d}"
            ))
            .into());
        }
    }
    if let Some(s) = &f.state {
        if s != "STARTED" && s != "STOPPED" {
            return Err(ApiError::app_invalid(format!(
                "state must be STARTED or STOPPED, not '{s}'"
            ))
            .into());
        }
    }
    if let Some(Some(t)) = f.health_check_timeout {
        if !(1..=180).contains(&t) {
            return Err(ApiError::app_invalid(format!(
                "health_check_timeout must be between 1 and 180 seconds, not {t}"
            ))
            .into());
        }
    }
    if let Some(t) = &f.health_check_type {
        crate::releases::check_health_check_type(t)?;
    }
    if let Some(Some(p)) = &f.health_check_http_endpoint {
        crate::releases::check_http_endpoint(p)?;
    }
    if let Some(env) = &f.environment_json {
        for k in env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(ApiError::app_invalid(format!(
                    "the environment variable name '{k}' is not valid"
                ))
                .into());
            }
        }
    }
    Ok(())
}

async fn create_app(
    State(c): State<Shared>,
    access: Access,
    body: axum::body::Bytes,
) -> CfResult<Response> {
    let user = access.user.clone();
    let f: AppFields = parse_json(&body)?;
    validate(&f)?;
    let name = f
        .name
        .clone()
        .ok_or_else(|| ApiError::app_invalid("name is required"))?;
    let space_guid = f
        .space_guid
        .clone()
        .ok_or_else(|| ApiError::app_invalid("space_guid is required"))?;
    access.space(&c, Action::Develop, &space_guid).await?;
    let now = strato_core::now_rfc3339();
    let a = App {
        guid: strato_core::new_guid(),
        name: name.clone(),
        space_guid,
        instances: f.instances.unwrap_or(1),
        memory: f.memory.unwrap_or(c.cfg.default_memory_mb),
        disk_quota: f.disk_quota.unwrap_or(c.cfg.default_disk_mb),
        state: "STOPPED".into(),
        command: f.command.clone().flatten().filter(|s| !s.trim().is_empty()),
        buildpack: f
            .buildpack
            .clone()
            .flatten()
            .filter(|s| !s.trim().is_empty()),
        detected_buildpack: None,
        detected_start_command: None,
        environment_json: Value::Object(f.environment_json.clone().unwrap_or_default()).to_string(),
        health_check_timeout: f.health_check_timeout.flatten(),
        health_check_type: f
            .health_check_type
            .as_deref()
            .map(crate::releases::normal_health_check_type)
            .unwrap_or(strato_db::health_check_type::PORT)
            .to_string(),
        health_check_http_endpoint: f.health_check_http_endpoint.clone().flatten(),
        package_hash: None,
        package_state: package_state::PENDING.into(),
        staging_task_id: None,
        staging_error: None,
        droplet_hash: None,
        version: strato_core::new_guid(),
        created_at: now.clone(),
        updated_at: now,
    };
    crate::quotas::check_app(&c, &a.space_guid, None, None, demand(&a)).await?;
    c.db.insert_app(&a)
        .await
        .map_err(taken_or_db_err(|| ApiError::app_name_taken(&name)))?;
    audit(
        &c,
        &user,
        "audit.app.create",
        &a.guid,
        "app",
        &a.name,
        Some(&a.space_guid),
    )
    .await;
    Ok((StatusCode::CREATED, Json(app_json(&a))).into_response())
}

/// What an app asks of its quotas.
fn demand(a: &App) -> crate::quota::AppDemand {
    crate::quota::AppDemand {
        memory_mb: a.memory,
        instances: a.instances,
        started: a.state == "STARTED",
    }
}

/// The app by guid (404 when there is none) once `action` on its space is allowed.
pub(crate) async fn app_for(
    c: &Shared,
    access: &Access,
    action: Action,
    guid: &str,
) -> CfResult<App> {
    let a = app(c, guid).await?;
    access.space(c, action, &a.space_guid).await?;
    Ok(a)
}

async fn get_app(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    let a = app_for(&c, &access, Action::Read, &guid).await?;
    Ok(Json(app_json_for(&access, &a)))
}

async fn app_summary(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    let a = app_for(&c, &access, Action::Read, &guid).await?;
    let mut v = summary_of(&c, &a).await?;
    access.redact(&mut v, &a.space_guid);
    Ok(Json(v))
}

/// `PUT /v2/apps/{guid}[?strategy=rolling|recreate]`: how a new version (new bits, env,
/// memory...) replaces the running one; rolling (no downtime) unless asked.
async fn update_app(
    State(c): State<Shared>,
    access: Access,
    headers: HeaderMap,
    Path(guid): Path<String>,
    RawQuery(query): RawQuery,
    body: axum::body::Bytes,
) -> CfResult<Response> {
    let swap = swap_param(query.as_deref())?;
    let user = access.user.clone();
    let before = app_for(&c, &access, Action::Develop, &guid).await?;
    let f: AppFields = parse_json(&body)?;
    validate(&f)?;
    if let Some(to) = f.space_guid.as_deref().filter(|s| *s != before.space_guid) {
        access.space(&c, Action::Develop, to).await?;
    }
    let mut a = before.clone();
    if let Some(n) = &f.name {
        a.name = n.clone();
    }
    if let Some(i) = f.instances {
        a.instances = i;
    }
    if let Some(m) = f.memory {
        a.memory = m;
    }
    if let Some(d) = f.disk_quota {
        a.disk_quota = d;
    }
    if let Some(cmd) = &f.command {
        a.command = cmd.clone().filter(|s| !s.trim().is_empty());
    }
    if let Some(bp) = &f.buildpack {
        a.buildpack = bp.clone().filter(|s| !s.trim().is_empty());
        // The droplet was built by another buildpack: the next start stages again (the
        // running instances keep serving it until then).
        if a.buildpack != before.buildpack && a.package_hash.is_some() {
            a.package_state = package_state::PENDING.into();
        }
    }
    if let Some(env) = &f.environment_json {
        a.environment_json = Value::Object(env.clone()).to_string();
    }
    if let Some(t) = f.health_check_timeout {
        a.health_check_timeout = t;
    }
    if let Some(t) = &f.health_check_type {
        a.health_check_type = crate::releases::normal_health_check_type(t).to_string();
    }
    if let Some(p) = &f.health_check_http_endpoint {
        a.health_check_http_endpoint = p.clone().filter(|p| !p.is_empty());
    }
    if let Some(s) = &f.state {
        a.state = s.clone();
    }
    let starting = a.state == "STARTED" && (before.state != "STARTED" || f.state.is_some());
    if starting && a.package_hash.is_none() {
        return Err(ApiError::app_invalid(
            "the app has no bits yet; upload them first (`strato push`)",
        )
        .into());
    }
    let moved = a.space_guid != before.space_guid;
    let was = (!moved).then(|| demand(&before));
    crate::quotas::check_app(&c, &a.space_guid, Some(&a.guid), was, demand(&a)).await?;
    let needs_staging = starting
        && (a.package_state == package_state::PENDING
            || a.droplet_hash.is_none()
            || a.package_state == package_state::FAILED);
    // Memory, command and environment changes need new instances: a new version.
    if a.memory != before.memory
        || a.command != before.command
        || a.environment_json != before.environment_json
        || a.disk_quota != before.disk_quota
    {
        a.version = strato_core::new_guid();
    }
    let a =
        c.db.update_app(&a)
            .await
            .map_err(taken_or_db_err(|| ApiError::app_name_taken(&a.name)))?;
    audit(
        &c,
        &user,
        "audit.app.update",
        &a.guid,
        "app",
        &a.name,
        Some(&a.space_guid),
    )
    .await;

    let mut resp_headers = HeaderMap::new();
    if a.state == "STOPPED" && before.state == "STARTED" {
        c.runner
            .stop(&StopRequest {
                droplet: a.guid.clone(),
                ..Default::default()
            })
            .await?;
    } else if needs_staging {
        let task = crate::staging::begin(&c, &a.guid, &user, swap).await?;
        let url = format!(
            "{}/v2/apps/{}/staging_log/{}",
            base_url(&headers),
            a.guid,
            task
        );
        if let Ok(v) = HeaderValue::from_str(&url) {
            resp_headers.insert("x-app-staging-log", v);
        }
    } else if a.state == "STARTED" {
        if a.version != before.version && before.state == "STARTED" {
            // Rolling: new instances first; the old version stops once they run.
            crate::runner::swap(&c, &a, &before.version, swap).await?;
        }
        if a.instances < before.instances && a.version == before.version {
            let extra: Vec<u32> = (a.instances as u32..before.instances as u32).collect();
            c.runner
                .stop(&StopRequest {
                    droplet: a.guid.clone(),
                    indices: Some(extra),
                    ..Default::default()
                })
                .await?;
        }
        crate::runner::start_all(&c, &a).await?;
    }
    let a = app(&c, &guid).await?;
    Ok((StatusCode::CREATED, resp_headers, Json(app_json(&a))).into_response())
}

async fn delete_app(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<StatusCode> {
    let p = ListParams::parse(q.as_deref())?;
    let a = app_for(&c, &access, Action::Develop, &guid).await?;
    remove_app(&c, &access.user, &a, p.get("recursive") == Some("true")).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stops an app, unbinds its services, deletes it (and with `recursive` its routes no
/// other app uses) and releases its blobs.
pub(crate) async fn remove_app(
    c: &Shared,
    user: &CurrentUser,
    a: &App,
    recursive: bool,
) -> CfResult<()> {
    let guid = a.guid.clone();
    c.runner
        .stop(&StopRequest {
            droplet: a.guid.clone(),
            ..Default::default()
        })
        .await?;
    crate::services::unbind_app(c, &guid).await?;
    let routes = c.db.routes_of_app(&guid).await.map_err(db_err)?;
    let release_droplets = c.db.release_droplets_of_app(&guid).await.map_err(db_err)?;
    c.db.delete_app(&guid).await.map_err(db_err)?;
    if recursive {
        for r in routes {
            if c.db
                .apps_of_route(&r.guid)
                .await
                .map_err(db_err)?
                .is_empty()
            {
                c.db.delete_route(&r.guid).await.map_err(db_err)?;
            }
        }
    }
    if let Some(d) = &a.droplet_hash {
        release_blob(c, BlobKind::Droplet, d).await;
    }
    for d in release_droplets
        .iter()
        .filter(|d| Some(*d) != a.droplet_hash.as_ref())
    {
        release_blob(c, BlobKind::Droplet, d).await;
    }
    if let Some(p) = &a.package_hash {
        release_blob(c, BlobKind::Package, p).await;
    }
    c.logs.forget(&guid);
    audit(
        c,
        user,
        "audit.app.delete-request",
        &a.guid,
        "app",
        &a.name,
        Some(&a.space_guid),
    )
    .await;
    Ok(())
}

/// Removes a droplet or package blob once no app refers to it.
pub async fn release_blob(c: &Shared, kind: BlobKind, sha: &str) {
    if release_local_blob(c, kind, sha).await {
        crate::peers::blob_released(c, kind, sha).await;
    }
}

/// How long a newly stored blob is kept even when no app names it yet.
const BLOB_GRACE: Duration = Duration::from_secs(600);

fn recently_stored(c: &Shared, kind: BlobKind, sha: &str) -> bool {
    c.blobs
        .path_of(kind, sha)
        .ok()
        .and_then(|p| std::fs::metadata(p).ok())
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < BLOB_GRACE)
}

/// Releases the blob again once its grace is over (and tells the other controllers).
fn release_later(c: Shared, kind: BlobKind, sha: String) {
    tokio::spawn(async move {
        tokio::time::sleep(BLOB_GRACE).await;
        let again: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
            Box::pin(async move { release_blob(&c, kind, &sha).await });
        again.await;
    });
}

/// Deletes this controller's copy of a blob when no app uses it; true when it did.
pub(crate) async fn release_local_blob(c: &Shared, kind: BlobKind, sha: &str) -> bool {
    let users = match kind {
        BlobKind::Droplet => c.db.apps_using_droplet(sha).await,
        BlobKind::Package => c.db.apps_using_package(sha).await,
    };
    // In a cluster a blob stored moments ago may be one an upload or staging on another
    // controller is about to name: it stays for now, and is looked at again later.
    if c.blob_signer.is_some() && recently_stored(c, kind, sha) {
        release_later(c.clone(), kind, sha.to_string());
        return false;
    }
    if let Ok(0) = users {
        match c.blobs.delete(kind, sha) {
            Ok(_) => return true,
            Err(e) => tracing::warn!(error = %e, "could not remove an unused blob"),
        }
    }
    false
}

async fn app_routes(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    app_for(&c, &access, Action::Read, &guid).await?;
    let rs = c.db.routes_of_app(&guid).await.map_err(db_err)?;
    let mut out = Vec::new();
    for r in &rs {
        let d = c.db.domain_by_guid(&r.domain_guid).await.map_err(db_err)?;
        out.push(route_json(r, d.as_ref()));
    }
    Ok(Json(paginate(&format!("/v2/apps/{guid}/routes"), &p, out)))
}

async fn map_route(
    State(c): State<Shared>,
    access: Access,
    Path((guid, route)): Path<(String, String)>,
) -> CfResult<(StatusCode, Json<Value>)> {
    let a = app_for(&c, &access, Action::Develop, &guid).await?;
    let r =
        c.db.route_by_guid(&route)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ApiError::not_found("route", &route))?;
    if r.space_guid != a.space_guid {
        return Err(
            ApiError::invalid_request("the route and the app are in different spaces").into(),
        );
    }
    c.db.map_route(&guid, &route).await.map_err(db_err)?;
    refresh_routes(&c, &a).await;
    Ok((StatusCode::CREATED, Json(app_json(&a))))
}

async fn unmap_route(
    State(c): State<Shared>,
    access: Access,
    Path((guid, route)): Path<(String, String)>,
) -> CfResult<StatusCode> {
    let a = app_for(&c, &access, Action::Develop, &guid).await?;
    c.db.unmap_route(&guid, &route).await.map_err(db_err)?;
    refresh_routes(&c, &a).await;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- bits and staging

/// Any signed-in user may ask which files the cache already has (as in CF).
async fn resource_match(
    State(c): State<Shared>,
    _user: CurrentUser,
    body: axum::body::Bytes,
) -> CfResult<Json<Value>> {
    let wanted: Vec<WireResource> = parse_json(&body)?;
    let dir = c.cfg.resources_dir.clone();
    let matched = tokio::task::spawn_blocking(move || crate::bits::resource_match(&dir, &wanted))
        .await
        .map_err(|e| ApiError::server(e.to_string()))?;
    Ok(Json(serde_json::to_value(matched).unwrap_or(json!([]))))
}

async fn upload_bits(
    State(c): State<Shared>,
    access: Access,
    headers: HeaderMap,
    Path(guid): Path<String>,
    mut mp: Multipart,
) -> CfResult<(StatusCode, Json<Value>)> {
    let user = access.user.clone();
    app_for(&c, &access, Action::Develop, &guid).await?;
    let limit = c.cfg.max_upload_mb * 1024 * 1024;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit + 64 * 1024 {
            return Err(ApiError::upload_too_large(c.cfg.max_upload_mb).into());
        }
    }
    let mut a = app(&c, &guid).await?;
    let mp_err = |e: axum::extract::multipart::MultipartError, mb: u64| -> CfError {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::upload_too_large(mb).into()
        } else {
            ApiError::app_bits_upload_invalid(e.body_text()).into()
        }
    };
    let mut matched: Vec<WireResource> = Vec::new();
    let mut upload: Option<tempfile::NamedTempFile> = None;
    while let Some(mut field) = mp
        .next_field()
        .await
        .map_err(|e| mp_err(e, c.cfg.max_upload_mb))?
    {
        match field.name() {
            Some("resources") => {
                let text = field
                    .text()
                    .await
                    .map_err(|e| mp_err(e, c.cfg.max_upload_mb))?;
                crate::body::check_depth(text.as_bytes())?;
                matched = serde_json::from_str(&text).map_err(|e| {
                    ApiError::app_bits_upload_invalid(format!(
                        "'resources' is not a JSON list of {{fn, sha1, size}}: {e}"
                    ))
                })?;
            }
            Some("application") => {
                use std::io::Write;
                let mut tmp = tempfile::NamedTempFile::new_in(c.blobs.root())
                    .map_err(|e| ApiError::server(e.to_string()))?;
                let mut total = 0u64;
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| mp_err(e, c.cfg.max_upload_mb))?
                {
                    total += chunk.len() as u64;
                    if total > limit {
                        return Err(ApiError::upload_too_large(c.cfg.max_upload_mb).into());
                    }
                    tmp.write_all(&chunk)
                        .map_err(|e| ApiError::server(e.to_string()))?;
                }
                upload = Some(tmp);
            }
            _ => {}
        }
    }
    if upload.is_none() && matched.is_empty() {
        return Err(ApiError::app_bits_upload_invalid(
            "the upload has neither an 'application' zip nor matched 'resources'",
        )
        .into());
    }
    let res_dir = c.cfg.resources_dir.clone();
    let blobs = c.blobs.clone();
    let sha = tokio::task::spawn_blocking(move || {
        crate::bits::build_package(
            upload.as_ref().map(|t| t.path()),
            &matched,
            &res_dir,
            &blobs,
            crate::bits::MAX_EXPANDED_BYTES,
        )
    })
    .await
    .map_err(|e| ApiError::server(e.to_string()))??;
    crate::peers::blob_stored(&c, BlobKind::Package, &sha).await;
    if a.package_hash.as_deref() != Some(sha.as_str()) || a.package_state == package_state::FAILED {
        a.package_hash = Some(sha);
        a.package_state = package_state::PENDING.into();
        a.staging_error = None;
    }
    let a = c.db.update_app(&a).await.map_err(db_err)?;
    audit(
        &c,
        &user,
        "audit.app.upload-bits",
        &a.guid,
        "app",
        &a.name,
        Some(&a.space_guid),
    )
    .await;
    Ok((StatusCode::CREATED, Json(app_json(&a))))
}

async fn restage(
    State(c): State<Shared>,
    access: Access,
    headers: HeaderMap,
    Path(guid): Path<String>,
    RawQuery(query): RawQuery,
) -> CfResult<Response> {
    // A started app's instances are replaced as an update's would be.
    let swap = swap_param(query.as_deref())?;
    let a = app_for(&c, &access, Action::Develop, &guid).await?;
    let task = crate::staging::begin(&c, &a.guid, &access.user, swap).await?;
    let url = format!(
        "{}/v2/apps/{}/staging_log/{}",
        base_url(&headers),
        a.guid,
        task
    );
    let a = app(&c, &guid).await?;
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&url) {
        h.insert("x-app-staging-log", v);
    }
    Ok((StatusCode::CREATED, h, Json(app_json(&a))).into_response())
}

async fn staging_log(
    State(c): State<Shared>,
    access: Access,
    Path((guid, task)): Path<(String, String)>,
) -> CfResult<Response> {
    app_for(&c, &access, Action::Read, &guid).await?;
    let stream = match c.staging.get(&task) {
        Some(log) => futures::stream::unfold((log, 0usize), |(log, from)| async move {
            let lines = log.next_lines(from).await?;
            let n = lines.len();
            Some((Ok::<_, std::io::Error>(log_text(&lines)), (log, from + n)))
        })
        .boxed(),
        None => peer_staging_log(&c, &task).await?,
    };
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-content-type-options", "nosniff")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::server(e.to_string()))?)
}

fn log_text(lines: &[String]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// The staging log of a task another controller of the cluster runs, relayed: the lines
/// are asked for in turn from the controller that runs it (404 when none does).
async fn peer_staging_log(
    c: &Shared,
    task: &str,
) -> CfResult<futures::stream::BoxStream<'static, Result<String, std::io::Error>>> {
    let first = crate::peers::staging_lines(c, task, 0)
        .await
        .ok_or_else(|| {
            ApiError::new(404, 10000, "CF-NotFound", format!("no staging task {task}"))
        })?;
    let state = (c.clone(), task.to_string(), 0usize, Some(first));
    Ok(
        futures::stream::unfold(state, |(c, task, from, mut chunk)| async move {
            loop {
                let got = match chunk.take() {
                    Some(got) => got,
                    None => crate::peers::staging_lines(&c, &task, from).await?,
                };
                if !got.lines.is_empty() {
                    let n = got.lines.len();
                    return Some((Ok(log_text(&got.lines)), (c, task, from + n, None)));
                }
                if got.done {
                    return None;
                }
            }
        })
        .boxed(),
    )
}

// ---------------------------------------------------------------- instances, stats, logs

pub(crate) fn check_staged(a: &App) -> CfResult<()> {
    if let Some((kind, msg)) = a.staging_failure() {
        return Err(match kind {
            "NoAppDetected" => ApiError::no_app_detected(msg),
            _ => ApiError::staging_error(msg),
        }
        .into());
    }
    if a.package_state != package_state::STAGED {
        return Err(ApiError::staging_in_progress().into());
    }
    Ok(())
}

async fn instances(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    let a = app_for(&c, &access, Action::Read, &guid).await?;
    check_staged(&a)?;
    if a.state == "STOPPED" {
        return Err(ApiError::instances_error(format!(
            "Request failed for app: {} as the app is in stopped state.",
            a.name
        ))
        .into());
    }
    let found = c.runner.find(&a.guid, false).await;
    let mut out = serde_json::Map::new();
    for i in 0..a.instances.max(0) as u32 {
        let best = found
            .iter()
            .filter(|x| x.index == i && x.version == a.version)
            .max_by_key(|x| match x.state {
                strato_core::messages::InstanceState::Running => 3,
                strato_core::messages::InstanceState::Starting => 2,
                strato_core::messages::InstanceState::Crashed => 1,
                _ => 0,
            });
        let v = match best {
            Some(x) => {
                json!({"state": x.state.as_str(), "since": x.state_timestamp, "uptime": x.uptime, "host": x.host, "port": x.port, "instance": x.instance})
            }
            None => json!({"state": "DOWN", "since": strato_core::unix_now()}),
        };
        out.insert(i.to_string(), v);
    }
    Ok(Json(Value::Object(out)))
}

async fn stats(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    let a = app_for(&c, &access, Action::Read, &guid).await?;
    check_staged(&a)?;
    if a.state == "STOPPED" {
        return Err(ApiError::instances_error(format!(
            "Request failed for app: {} as the app is in stopped state.",
            a.name
        ))
        .into());
    }
    let uris = app_uris(&c, &a.guid).await?;
    let found = c.runner.find(&a.guid, true).await;
    let mut out = serde_json::Map::new();
    for x in found.iter().filter(|x| x.version == a.version) {
        out.insert(x.index.to_string(), json!({
            "state": x.state.as_str(),
            "stats": {
                "name": a.name, "uris": uris, "host": x.host, "port": x.port, "uptime": x.uptime,
                "mem_quota": x.mem_quota, "disk_quota": x.disk_quota, "fds_quota": 16384,
                "usage": {"time": strato_core::now_rfc3339(), "cpu": x.cpu_percent, "mem": x.mem_bytes, "disk": x.disk_bytes},
            }
        }));
    }
    Ok(Json(Value::Object(out)))
}

async fn app_logs(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<Response> {
    let p = ListParams::parse(q.as_deref())?;
    app_for(&c, &access, Action::Read, &guid).await?;
    let num: usize = match p.get("num") {
        Some(n) => n
            .parse()
            .ok()
            .filter(|n| *n <= 10_000)
            .ok_or_else(|| ApiError::invalid_request("num must be a number up to 10000"))?,
        None => 25,
    };
    let follow = p.get("follow") == Some("true");
    let recent = c.logs.tail(&guid, num);
    let head: String = recent
        .iter()
        .map(|l| format!("{}\n", serde_json::to_string(l).unwrap_or_default()))
        .collect();
    let body = if follow {
        let rx = c.logs.follow();
        let app_id = guid.clone();
        let live = futures::stream::unfold(rx, move |mut rx| {
            let app_id = app_id.clone();
            async move {
                loop {
                    match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
                        Ok(Ok(l)) if l.app == app_id => {
                            return Some((
                                Ok::<_, std::io::Error>(format!(
                                    "{}\n",
                                    serde_json::to_string(&l).unwrap_or_default()
                                )),
                                rx,
                            ))
                        }
                        Ok(Ok(_)) => continue,
                        Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                        Ok(Err(_)) => return None,
                        // Keep idle connections alive through proxies.
                        Err(_) => return Some((Ok(String::new()), rx)),
                    }
                }
            }
        });
        let first = futures::stream::once(async move { Ok::<_, std::io::Error>(head) });
        Body::from_stream(first.chain(live))
    } else {
        Body::from(head)
    };
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .map_err(|e| ApiError::server(e.to_string()))?)
}

/// Events: administrators see all; others those of the spaces they see.
async fn list_events(
    State(c): State<Shared>,
    access: Access,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    p.check_known(&["actee"])?;
    let evs =
        c.db.events_for(p.filter("actee").as_deref())
            .await
            .map_err(db_err)?;
    let visible = access.visible_spaces(&c).await?;
    let items = evs
        .iter()
        .filter(|e| match (&visible, &e.space_guid) {
            (None, _) => true,
            (Some(v), Some(s)) => v.contains(s),
            (Some(_), None) => false,
        })
        .map(|e| {
            resource("events", &e.guid, &e.timestamp, &e.timestamp, json!({
                "type": e.kind, "actor": e.actor, "actor_name": e.actor_name, "actee": e.actee,
                "actee_type": e.actee_type, "actee_name": e.actee_name, "timestamp": e.timestamp,
                "space_guid": e.space_guid, "metadata": serde_json::from_str::<Value>(&e.metadata).unwrap_or(json!({})),
            }))
        })
        .collect();
    Ok(Json(paginate("/v2/events", &p, items)))
}

pub(crate) async fn audit(
    c: &Shared,
    user: &CurrentUser,
    kind: &str,
    actee: &str,
    actee_type: &str,
    actee_name: &str,
    space: Option<&str>,
) {
    if let Err(e) =
        c.db.add_event(
            kind,
            &user.guid,
            &user.username,
            actee,
            actee_type,
            actee_name,
            space,
            &json!({"request": {"ip": user.origin.map(|ip| ip.to_string())}}),
        )
        .await
    {
        tracing::warn!(error = %e, "could not record event {kind}");
    }
}
