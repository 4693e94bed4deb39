//! Services in Cloud Foundry v2 shapes: the catalog the gateways announce, service
//! instances (managed and user-provided) and their bindings to apps, and what a bound app
//! sees (REFERENCE §4: `VCAP_SERVICES`, `STACKATO_SERVICES`, `DATABASE_URL`, ...).
//!
//! The controller keeps the records; the work is the brokers'. It talks to each service
//! type's gateway through the Open Service Broker API ([`strato_services::osb`]), and
//! always in the order that leaves nothing half-made: a row is written only after the
//! broker said yes, and removed only after the broker removed the thing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use strato_core::messages::{BrokerAnnounce, VolumeMount};
use strato_core::{subjects, ApiError};
use strato_db::{CatalogEntry, Filter, Service, ServiceBinding, ServiceInstance, ServicePlan};
use strato_services::osb::{BindRequest, BrokerClient, BrokerError, ProvisionRequest};

use crate::access::{Access, Action};
use crate::api::{app_for, audit, ep, parse_json, Endpoint};
use crate::auth::CurrentUser;
use crate::cf::{db_err, paginate, resource, taken_or_db_err, CfError, CfResult, ListParams};
use crate::Shared;

/// The brokers this controller knows, by broker guid (clients are reused).
#[derive(Default)]
pub struct Brokers {
    clients: Mutex<HashMap<String, (String, BrokerClient)>>,
    /// label → url of the last catalog synced, so an unchanged announce costs nothing.
    synced: Mutex<HashMap<String, String>>,
}

impl Brokers {
    fn client(&self, broker: &strato_db::ServiceBroker) -> BrokerClient {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((url, client)) = clients.get(&broker.guid) {
            if *url == broker.url {
                return client.clone();
            }
        }
        let client = BrokerClient::new(BrokerAnnounce {
            label: broker.name.clone(),
            url: broker.url.clone(),
            username: broker.username.clone(),
            password: broker.password.clone(),
        });
        clients.insert(broker.guid.clone(), (broker.url.clone(), client.clone()));
        client
    }
}

/// Listens for gateway announcements and keeps brokers and their catalogs up to date;
/// asks every gateway to announce itself now.
pub async fn listen(
    c: Shared,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut sub = c.bus.subscribe(subjects::SERVICE_ANNOUNCE).await?;
    let _ = c.bus.flush().await;
    c.bus
        .publish(subjects::SERVICE_DISCOVER, bytes::Bytes::from_static(b"{}"))
        .await?;
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = sub.next() => match m { Some(m) => m, None => break },
                _ = shutdown.cancelled() => break,
            };
            let Ok(announce) = strato_bus::decode::<BrokerAnnounce>(&msg) else {
                tracing::warn!("ignoring a malformed service gateway announcement");
                continue;
            };
            if let Err(e) = register(&c, announce).await {
                tracing::warn!(error = %e, "could not register a service gateway");
            }
        }
    });
    Ok(())
}

async fn register(c: &Shared, a: BrokerAnnounce) -> anyhow::Result<()> {
    let seen = c
        .brokers
        .synced
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&a.label)
        .cloned();
    if seen.as_deref() == Some(a.url.as_str()) {
        return Ok(());
    }
    let broker =
        c.db.upsert_broker(&a.label, &a.url, &a.username, &a.password)
            .await?;
    let catalog = c.brokers.client(&broker).catalog().await?;
    let entries: Vec<CatalogEntry> = catalog
        .services
        .into_iter()
        .map(|s| CatalogEntry {
            label: s.name,
            unique_id: s.id,
            description: s.description,
            bindable: s.bindable,
            tags: s.tags,
            plans: s
                .plans
                .into_iter()
                .map(|p| (p.name, p.id, p.description, p.free))
                .collect(),
        })
        .collect();
    c.db.sync_catalog(&broker.guid, &entries).await?;
    c.brokers
        .synced
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(a.label.clone(), a.url.clone());
    tracing::info!(label = %a.label, url = %a.url, "service gateway registered");
    Ok(())
}

/// The service endpoints.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        ep(Method::GET, "/v2/services", list_services),
        ep(Method::GET, "/v2/services/{guid}", get_service),
        ep(
            Method::GET,
            "/v2/services/{guid}/service_plans",
            service_plans_of,
        ),
        ep(Method::GET, "/v2/service_plans", list_plans),
        ep(Method::GET, "/v2/service_plans/{guid}", get_plan),
        ep(Method::GET, "/v2/service_instances", list_instances),
        ep(Method::POST, "/v2/service_instances", create_instance),
        ep(Method::GET, "/v2/service_instances/{guid}", get_instance),
        ep(Method::PUT, "/v2/service_instances/{guid}", rename_instance),
        ep(
            Method::DELETE,
            "/v2/service_instances/{guid}",
            delete_instance,
        ),
        ep(
            Method::GET,
            "/v2/service_instances/{guid}/service_bindings",
            bindings_of_instance,
        ),
        ep(
            Method::GET,
            "/v2/service_instances/{guid}/export",
            export_instance,
        ),
        ep(
            Method::PUT,
            "/v2/service_instances/{guid}/import",
            import_instance,
        ),
        ep(
            Method::GET,
            "/v2/user_provided_service_instances",
            list_user_provided,
        ),
        ep(
            Method::POST,
            "/v2/user_provided_service_instances",
            create_user_provided,
        ),
        ep(
            Method::GET,
            "/v2/user_provided_service_instances/{guid}",
            get_instance,
        ),
        ep(
            Method::PUT,
            "/v2/user_provided_service_instances/{guid}",
            update_user_provided,
        ),
        ep(
            Method::DELETE,
            "/v2/user_provided_service_instances/{guid}",
            delete_instance,
        ),
        ep(Method::GET, "/v2/service_bindings", list_bindings),
        ep(Method::POST, "/v2/service_bindings", create_binding),
        ep(Method::GET, "/v2/service_bindings/{guid}", get_binding),
        ep(
            Method::DELETE,
            "/v2/service_bindings/{guid}",
            delete_binding,
        ),
        ep(
            Method::GET,
            "/v2/apps/{guid}/service_bindings",
            bindings_of_app,
        ),
        ep(
            Method::GET,
            "/v2/spaces/{guid}/service_instances",
            instances_of_space,
        ),
    ]
}

fn broker_err(e: BrokerError) -> CfError {
    CfError(ApiError::service_broker(e.to_string()))
}

// ---------------------------------------------------------------- JSON shapes

fn service_json(s: &Service) -> Value {
    resource(
        "services",
        &s.guid,
        &s.created_at,
        &s.updated_at,
        json!({
            "label": s.label, "provider": "core", "url": null, "description": s.description,
            "long_description": null, "version": null, "info_url": null, "active": s.active != 0,
            "bindable": s.bindable != 0, "unique_id": s.unique_id, "extra": null,
            "tags": s.tag_list(), "requires": [], "documentation_url": null,
            "service_broker_guid": s.service_broker_guid, "plan_updateable": false,
            "service_plans_url": format!("/v2/services/{}/service_plans", s.guid),
        }),
    )
}

fn plan_json(p: &ServicePlan) -> Value {
    resource(
        "service_plans",
        &p.guid,
        &p.created_at,
        &p.updated_at,
        json!({
            "name": p.name, "free": p.free != 0, "description": p.description,
            "service_guid": p.service_guid, "extra": null, "unique_id": p.unique_id,
            "public": true, "active": p.active != 0,
            "service_url": format!("/v2/services/{}", p.service_guid),
            "service_instances_url": format!("/v2/service_plans/{}/service_instances", p.guid),
        }),
    )
}

fn instance_json(si: &ServiceInstance) -> Value {
    let bindings_url = format!("/v2/service_instances/{}/service_bindings", si.guid);
    if si.is_user_provided() {
        let credentials: Value = serde_json::from_str(&si.credentials).unwrap_or(json!({}));
        resource(
            "user_provided_service_instances",
            &si.guid,
            &si.created_at,
            &si.updated_at,
            json!({
                "name": si.name, "credentials": credentials, "space_guid": si.space_guid,
                "type": "user_provided_service_instance", "syslog_drain_url": si.syslog_drain_url,
                "space_url": format!("/v2/spaces/{}", si.space_guid),
                "service_bindings_url": bindings_url,
            }),
        )
    } else {
        let plan = si.service_plan_guid.clone().unwrap_or_default();
        resource(
            "service_instances",
            &si.guid,
            &si.created_at,
            &si.updated_at,
            json!({
                "name": si.name, "credentials": {}, "service_plan_guid": plan,
                "space_guid": si.space_guid, "gateway_data": null, "dashboard_url": null,
                "type": "managed_service_instance", "tags": [],
                "space_url": format!("/v2/spaces/{}", si.space_guid),
                "service_plan_url": format!("/v2/service_plans/{plan}"),
                "service_bindings_url": bindings_url,
            }),
        )
    }
}

fn binding_json(b: &ServiceBinding) -> Value {
    let credentials = public_credentials(&b.credentials);
    resource(
        "service_bindings",
        &b.guid,
        &b.created_at,
        &b.updated_at,
        json!({
            "app_guid": b.app_guid, "service_instance_guid": b.service_instance_guid,
            "credentials": credentials, "binding_options": {}, "gateway_data": null,
            "gateway_name": "", "syslog_drain_url": null,
            "app_url": format!("/v2/apps/{}", b.app_guid),
            "service_instance_url": format!("/v2/service_instances/{}", b.service_instance_guid),
        }),
    )
}

/// Credentials as apps and users see them: without the host path of a filesystem.
fn public_credentials(raw: &str) -> Value {
    let mut v: Value = serde_json::from_str(raw).unwrap_or(json!({}));
    if let Some(o) = v.as_object_mut() {
        o.remove("host_path");
    }
    v
}

// ---------------------------------------------------------------- lookups

async fn service_row(c: &Shared, guid: &str) -> CfResult<Service> {
    c.db.service_by_guid(guid)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError::not_found("service", guid).into())
}

async fn plan_row(c: &Shared, guid: &str) -> CfResult<ServicePlan> {
    c.db.service_plan_by_guid(guid)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError::not_found("service plan", guid).into())
}

async fn instance_row(c: &Shared, guid: &str) -> CfResult<ServiceInstance> {
    c.db.service_instance_by_guid(guid)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError::not_found("service instance", guid).into())
}

/// The broker, service and plan behind a managed instance.
pub(crate) struct Managed {
    pub(crate) client: BrokerClient,
    pub(crate) service: Service,
    pub(crate) plan: ServicePlan,
}

pub(crate) async fn managed(c: &Shared, plan_guid: &str) -> CfResult<Managed> {
    let plan = plan_row(c, plan_guid).await?;
    let service = service_row(c, &plan.service_guid).await?;
    let broker = c
        .db
        .broker_by_guid(&service.service_broker_guid)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError::service_broker(format!("the {} broker is gone", service.label)))?;
    Ok(Managed {
        client: c.brokers.client(&broker),
        service,
        plan,
    })
}

// ---------------------------------------------------------------- catalog

async fn list_services(
    State(c): State<Shared>,
    _user: CurrentUser,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let f = p.db_filter(&["label"])?;
    let items = c.db.list_services(&f).await.map_err(db_err)?;
    let mut out = Vec::new();
    for s in &items {
        let mut v = service_json(s);
        if p.depth > 0 {
            let plans = plans_of(&c, &s.guid).await?;
            v["entity"]["service_plans"] = json!(plans.iter().map(plan_json).collect::<Vec<_>>());
        }
        out.push(v);
    }
    Ok(Json(paginate("/v2/services", &p, out)))
}

async fn plans_of(c: &Shared, service_guid: &str) -> CfResult<Vec<ServicePlan>> {
    c.db.list_service_plans(&Filter {
        service_guid: Some(service_guid.to_string()),
        ..Default::default()
    })
    .await
    .map_err(db_err)
}

async fn get_service(
    State(c): State<Shared>,
    _user: CurrentUser,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    Ok(Json(service_json(&service_row(&c, &guid).await?)))
}

async fn service_plans_of(
    State(c): State<Shared>,
    _user: CurrentUser,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    service_row(&c, &guid).await?;
    let out = plans_of(&c, &guid).await?.iter().map(plan_json).collect();
    Ok(Json(paginate(
        &format!("/v2/services/{guid}/service_plans"),
        &p,
        out,
    )))
}

async fn list_plans(
    State(c): State<Shared>,
    _user: CurrentUser,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let f = p.db_filter(&["service_guid", "name"])?;
    let out =
        c.db.list_service_plans(&f)
            .await
            .map_err(db_err)?
            .iter()
            .map(plan_json)
            .collect();
    Ok(Json(paginate("/v2/service_plans", &p, out)))
}

async fn get_plan(
    State(c): State<Shared>,
    _user: CurrentUser,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    Ok(Json(plan_json(&plan_row(&c, &guid).await?)))
}

// ---------------------------------------------------------------- instances

/// Service instance names end up in environment variable names
/// (`STACKATO_FILESYSTEM_<NAME>`) and URLs: letters, digits, `-`, `_` and `.`.
fn check_instance_name(name: &str) -> CfResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 50
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::service_instance_invalid(format!(
            "'{name}' is not a valid service name: use 1 to 50 letters, digits, '-', '_' or '.'"
        ))
        .into())
    }
}

async fn list_instances(
    State(c): State<Shared>,
    access: Access,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let f = p.db_filter(&["name", "space_guid"])?;
    let out = instances_json(&c, &access, &p, &f, None).await?;
    Ok(Json(paginate("/v2/service_instances", &p, out)))
}

async fn list_user_provided(
    State(c): State<Shared>,
    access: Access,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let f = p.db_filter(&["name", "space_guid"])?;
    let out = instances_json(&c, &access, &p, &f, Some(true)).await?;
    Ok(Json(paginate(
        "/v2/user_provided_service_instances",
        &p,
        out,
    )))
}

async fn instances_of_space(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    access.space(&c, Action::Read, &guid).await?;
    let p = ListParams::parse(q.as_deref())?;
    let mut f = p.db_filter(&["name"])?;
    f.space_guid = Some(guid.clone());
    let out = instances_json(&c, &access, &p, &f, None).await?;
    Ok(Json(paginate(
        &format!("/v2/spaces/{guid}/service_instances"),
        &p,
        out,
    )))
}

/// Instances as JSON; with depth ≥ 1 each carries its plan (and the plan its service)
/// and its bindings, which is what `strato services` shows.
/// Only the instances of spaces the user sees; credentials only for developers.
async fn instances_json(
    c: &Shared,
    access: &Access,
    p: &ListParams,
    f: &Filter,
    user_provided: Option<bool>,
) -> CfResult<Vec<Value>> {
    let items = c.db.list_service_instances(f).await.map_err(db_err)?;
    let visible = access.visible_spaces(c).await?;
    let mut out = Vec::new();
    for si in items.iter().filter(|si| {
        user_provided.is_none_or(|u| si.is_user_provided() == u)
            && visible.as_ref().is_none_or(|v| v.contains(&si.space_guid))
    }) {
        let mut v = instance_json(si);
        if p.depth > 0 {
            if let Some(plan_guid) = &si.service_plan_guid {
                let plan = plan_row(c, plan_guid).await?;
                let mut pv = plan_json(&plan);
                pv["entity"]["service"] = service_json(&service_row(c, &plan.service_guid).await?);
                v["entity"]["service_plan"] = pv;
            }
            let bindings =
                c.db.list_service_bindings(&Filter {
                    service_instance_guid: Some(si.guid.clone()),
                    ..Default::default()
                })
                .await
                .map_err(db_err)?;
            v["entity"]["service_bindings"] =
                json!(bindings.iter().map(binding_json).collect::<Vec<_>>());
            if !access.sees_secrets(&si.space_guid) {
                for b in v["entity"]["service_bindings"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                {
                    access.redact(b, &si.space_guid);
                }
            }
        }
        access.redact(&mut v, &si.space_guid);
        out.push(v);
    }
    Ok(out)
}

/// The instance by guid once `action` on its space is allowed.
async fn instance_for(
    c: &Shared,
    access: &Access,
    action: Action,
    guid: &str,
) -> CfResult<ServiceInstance> {
    let si = instance_row(c, guid).await?;
    access.space(c, action, &si.space_guid).await?;
    Ok(si)
}

async fn get_instance(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let si = instance_for(&c, &access, Action::Read, &guid).await?;
    let f = Filter {
        space_guid: Some(si.space_guid.clone()),
        name: Some(si.name.clone()),
        ..Default::default()
    };
    let mut out = instances_json(&c, &access, &p, &f, None).await?;
    Ok(Json(out.pop().unwrap_or_else(|| {
        let mut v = instance_json(&si);
        access.redact(&mut v, &si.space_guid);
        v
    })))
}

#[derive(Deserialize)]
pub(crate) struct NewInstance {
    name: String,
    service_plan_guid: String,
    space_guid: String,
}

async fn create_instance(
    State(c): State<Shared>,
    access: Access,
    body: axum::body::Bytes,
) -> CfResult<(StatusCode, Json<Value>)> {
    let user = access.user.clone();
    let req: NewInstance = parse_json(&body)?;
    let s = access.space(&c, Action::Develop, &req.space_guid).await?;
    check_instance_name(&req.name)?;
    let m = managed(&c, &req.service_plan_guid).await?;
    if m.plan.active == 0 || m.service.active == 0 {
        return Err(ApiError::service_instance_invalid(format!(
            "the plan '{}' of {} is no longer offered; see `strato marketplace`",
            m.plan.name, m.service.label
        ))
        .into());
    }
    crate::quotas::check_new_service(&c, &s.guid, m.plan.free == 0).await?;
    // Claim the name first (a taken name fails here, before the broker does any work);
    // if the broker then fails, the claim is dropped again.
    let si = strato_db::Db::new_service_instance(&req.name, &s.guid, Some(&m.plan.guid), "{}");
    c.db.insert_service_instance(&si)
        .await
        .map_err(taken_or_db_err(|| {
            ApiError::service_instance_name_taken(&req.name)
        }))?;
    let provision = ProvisionRequest {
        service_id: m.service.unique_id.clone(),
        plan_id: m.plan.unique_id.clone(),
        organization_guid: s.organization_guid.clone(),
        space_guid: s.guid.clone(),
    };
    if let Err(e) = m.client.provision(&si.guid, &provision).await {
        let _ = c.db.delete_service_instance(&si.guid).await;
        return Err(broker_err(e));
    }
    audit(
        &c,
        &user,
        "audit.service_instance.create",
        &si.guid,
        "service_instance",
        &si.name,
        Some(&si.space_guid),
    )
    .await;
    Ok((StatusCode::CREATED, Json(instance_json(&si))))
}

#[derive(Deserialize)]
pub(crate) struct InstanceUpdate {
    name: Option<String>,
    credentials: Option<Map<String, Value>>,
    syslog_drain_url: Option<String>,
}

async fn rename_instance(
    State(c): State<Shared>,
    user: Access,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<(StatusCode, Json<Value>)> {
    update_instance(c, user, guid, body, false).await
}

async fn update_user_provided(
    State(c): State<Shared>,
    user: Access,
    Path(guid): Path<String>,
    body: axum::body::Bytes,
) -> CfResult<(StatusCode, Json<Value>)> {
    update_instance(c, user, guid, body, true).await
}

async fn update_instance(
    c: Shared,
    access: Access,
    guid: String,
    body: axum::body::Bytes,
    user_provided: bool,
) -> CfResult<(StatusCode, Json<Value>)> {
    let user = access.user.clone();
    let mut si = instance_for(&c, &access, Action::Develop, &guid).await?;
    let req: InstanceUpdate = parse_json(&body)?;
    if let Some(name) = req.name {
        check_instance_name(&name)?;
        si.name = name;
    }
    if user_provided || si.is_user_provided() {
        if let Some(creds) = req.credentials {
            si.credentials = Value::Object(creds).to_string();
        }
        if req.syslog_drain_url.is_some() {
            si.syslog_drain_url = req.syslog_drain_url.filter(|u| !u.is_empty());
        }
    } else if req.credentials.is_some() {
        return Err(ApiError::service_instance_invalid(
            "the credentials of a managed service come from its broker and cannot be set",
        )
        .into());
    }
    c.db.update_service_instance(&si)
        .await
        .map_err(taken_or_db_err(|| {
            ApiError::service_instance_name_taken(&si.name)
        }))?;
    audit(
        &c,
        &user,
        "audit.service_instance.update",
        &si.guid,
        "service_instance",
        &si.name,
        Some(&si.space_guid),
    )
    .await;
    Ok((StatusCode::CREATED, Json(instance_json(&si))))
}

#[derive(Deserialize)]
pub(crate) struct NewUserProvided {
    name: String,
    space_guid: String,
    #[serde(default)]
    credentials: Map<String, Value>,
    #[serde(default)]
    syslog_drain_url: Option<String>,
}

async fn create_user_provided(
    State(c): State<Shared>,
    access: Access,
    body: axum::body::Bytes,
) -> CfResult<(StatusCode, Json<Value>)> {
    let user = access.user.clone();
    let req: NewUserProvided = parse_json(&body)?;
    let s = access.space(&c, Action::Develop, &req.space_guid).await?;
    check_instance_name(&req.name)?;
    let mut si = strato_db::Db::new_service_instance(
        &req.name,
        &s.guid,
        None,
        &Value::Object(req.credentials).to_string(),
    );
    si.syslog_drain_url = req.syslog_drain_url.filter(|u| !u.is_empty());
    c.db.insert_service_instance(&si)
        .await
        .map_err(taken_or_db_err(|| {
            ApiError::service_instance_name_taken(&req.name)
        }))?;
    audit(
        &c,
        &user,
        "audit.user_provided_service_instance.create",
        &si.guid,
        "user_provided_service_instance",
        &si.name,
        Some(&si.space_guid),
    )
    .await;
    Ok((StatusCode::CREATED, Json(instance_json(&si))))
}

async fn delete_instance(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<StatusCode> {
    let p = ListParams::parse(q.as_deref())?;
    let si = instance_for(&c, &access, Action::Develop, &guid).await?;
    remove_instance(&c, &access.user, &si, p.get("recursive") == Some("true")).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Unbinds (with `recursive`; else refuses while bound), deprovisions and forgets an
/// instance.
pub(crate) async fn remove_instance(
    c: &Shared,
    user: &CurrentUser,
    si: &ServiceInstance,
    recursive: bool,
) -> CfResult<()> {
    let bindings =
        c.db.list_service_bindings(&Filter {
            service_instance_guid: Some(si.guid.clone()),
            ..Default::default()
        })
        .await
        .map_err(db_err)?;
    if !bindings.is_empty() && !recursive {
        let mut apps = Vec::new();
        for b in &bindings {
            if let Ok(Some(a)) = c.db.app_by_guid(&b.app_guid).await {
                apps.push(a.name);
            }
        }
        return Err(ApiError::association_not_empty(format!(
            "the service {} is bound to {}; unbind it first, or delete with --force (recursive=true)",
            si.name,
            apps.join(", ")
        ))
        .into());
    }
    for b in &bindings {
        unbind(c, si, b).await?;
    }
    if let Some(plan_guid) = &si.service_plan_guid {
        let m = managed(c, plan_guid).await?;
        m.client
            .deprovision(&si.guid, &m.service.unique_id, &m.plan.unique_id)
            .await
            .map_err(broker_err)?;
    }
    c.db.delete_service_instance(&si.guid)
        .await
        .map_err(db_err)?;
    audit(
        c,
        user,
        "audit.service_instance.delete",
        &si.guid,
        "service_instance",
        &si.name,
        Some(&si.space_guid),
    )
    .await;
    Ok(())
}

/// Streams a consistent dump of a managed instance (Strato extension: the basis of
/// `strato dbexport` and `kato data export`).
async fn export_instance(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Response> {
    let si = instance_for(&c, &access, Action::Develop, &guid).await?;
    let plan_guid = si.service_plan_guid.clone().ok_or_else(|| {
        ApiError::invalid_request("a user-provided service is not run by Strato and has no dump")
    })?;
    let m = managed(&c, &plan_guid).await?;
    let resp = m.client.export(&si.guid).await.map_err(broker_err)?;
    let stream = resp
        .bytes_stream()
        .map(|r| r.map_err(std::io::Error::other));
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Restores a dump into a managed instance.
async fn import_instance(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    body: Body,
) -> CfResult<StatusCode> {
    let user = access.user.clone();
    let si = instance_for(&c, &access, Action::Develop, &guid).await?;
    let plan_guid = si.service_plan_guid.clone().ok_or_else(|| {
        ApiError::invalid_request(
            "a user-provided service is not run by Strato; import into it directly",
        )
    })?;
    let m = managed(&c, &plan_guid).await?;
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    m.client
        .import(&si.guid, stream)
        .await
        .map_err(broker_err)?;
    audit(
        &c,
        &user,
        "audit.service_instance.import",
        &si.guid,
        "service_instance",
        &si.name,
        Some(&si.space_guid),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- bindings

/// A binding's JSON for this user (credentials only for developers of its space), or
/// `None` when its app's space is not visible.
async fn binding_for(
    c: &Shared,
    access: &Access,
    visible: &Option<std::collections::HashSet<String>>,
    b: &ServiceBinding,
) -> CfResult<Option<Value>> {
    let Some(a) = c.db.app_by_guid(&b.app_guid).await.map_err(db_err)? else {
        return Ok(None);
    };
    if visible.as_ref().is_some_and(|v| !v.contains(&a.space_guid)) {
        return Ok(None);
    }
    let mut v = binding_json(b);
    access.redact(&mut v, &a.space_guid);
    Ok(Some(v))
}

async fn bindings_json(
    c: &Shared,
    access: &Access,
    bindings: &[ServiceBinding],
) -> CfResult<Vec<Value>> {
    let visible = access.visible_spaces(c).await?;
    let mut out = Vec::new();
    for b in bindings {
        if let Some(v) = binding_for(c, access, &visible, b).await? {
            out.push(v);
        }
    }
    Ok(out)
}

async fn list_bindings(
    State(c): State<Shared>,
    access: Access,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let f = p.db_filter(&["app_guid", "service_instance_guid"])?;
    let all = c.db.list_service_bindings(&f).await.map_err(db_err)?;
    let out = bindings_json(&c, &access, &all).await?;
    Ok(Json(paginate("/v2/service_bindings", &p, out)))
}

async fn bindings_of_app(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    app_for(&c, &access, Action::Read, &guid).await?;
    let p = ListParams::parse(q.as_deref())?;
    let all =
        c.db.list_service_bindings(&Filter {
            app_guid: Some(guid.clone()),
            ..Default::default()
        })
        .await
        .map_err(db_err)?;
    let out = bindings_json(&c, &access, &all).await?;
    Ok(Json(paginate(
        &format!("/v2/apps/{guid}/service_bindings"),
        &p,
        out,
    )))
}

async fn bindings_of_instance(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    instance_for(&c, &access, Action::Read, &guid).await?;
    let p = ListParams::parse(q.as_deref())?;
    let all =
        c.db.list_service_bindings(&Filter {
            service_instance_guid: Some(guid.clone()),
            ..Default::default()
        })
        .await
        .map_err(db_err)?;
    let out = bindings_json(&c, &access, &all).await?;
    Ok(Json(paginate(
        &format!("/v2/service_instances/{guid}/service_bindings"),
        &p,
        out,
    )))
}

async fn binding_row(c: &Shared, guid: &str) -> CfResult<ServiceBinding> {
    c.db.service_binding_by_guid(guid)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError::not_found("service binding", guid).into())
}

async fn get_binding(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    let b = binding_row(&c, &guid).await?;
    let a = app_for(&c, &access, Action::Read, &b.app_guid).await?;
    let mut v = binding_json(&b);
    access.redact(&mut v, &a.space_guid);
    Ok(Json(v))
}

#[derive(Deserialize)]
pub(crate) struct NewBinding {
    app_guid: String,
    service_instance_guid: String,
}

async fn create_binding(
    State(c): State<Shared>,
    access: Access,
    body: axum::body::Bytes,
) -> CfResult<(StatusCode, Json<Value>)> {
    let user = access.user.clone();
    let req: NewBinding = parse_json(&body)?;
    let a = app_for(&c, &access, Action::Develop, &req.app_guid).await?;
    let si = instance_for(&c, &access, Action::Develop, &req.service_instance_guid).await?;
    if a.space_guid != si.space_guid {
        return Err(CfError(ApiError::new(
            400,
            290003,
            "CF-SpaceMismatch",
            format!(
                "the app {} and the service {} are in different spaces; a service binds only to apps of its space",
                a.name, si.name
            ),
        )));
    }
    let existing =
        c.db.list_service_bindings(&Filter {
            app_guid: Some(a.guid.clone()),
            service_instance_guid: Some(si.guid.clone()),
            ..Default::default()
        })
        .await
        .map_err(db_err)?;
    if !existing.is_empty() {
        return Err(ApiError::binding_taken(&a.name, &si.name).into());
    }
    let binding_guid = strato_core::new_guid();
    let credentials = match &si.service_plan_guid {
        None => si.credentials.clone(),
        Some(plan_guid) => {
            let m = managed(&c, plan_guid).await?;
            let bind = BindRequest {
                service_id: m.service.unique_id.clone(),
                plan_id: m.plan.unique_id.clone(),
                app_guid: Some(a.guid.clone()),
            };
            let creds = m
                .client
                .bind(&si.guid, &binding_guid, &bind)
                .await
                .map_err(broker_err)?;
            creds.to_string()
        }
    };
    let b = match c
        .db
        .insert_service_binding(&a.guid, &si.guid, &binding_guid, &credentials)
        .await
    {
        Ok(b) => b,
        Err(e) => {
            // Undo the broker's binding so nothing is left half-made.
            if let Some(plan_guid) = &si.service_plan_guid {
                if let Ok(m) = managed(&c, plan_guid).await {
                    let _ = m
                        .client
                        .unbind(
                            &si.guid,
                            &binding_guid,
                            &m.service.unique_id,
                            &m.plan.unique_id,
                        )
                        .await;
                }
            }
            return Err(taken_or_db_err(|| {
                ApiError::binding_taken(&a.name, &si.name)
            })(e));
        }
    };
    audit(
        &c,
        &user,
        "audit.service_binding.create",
        &b.guid,
        "service_binding",
        &format!("{} -> {}", si.name, a.name),
        Some(&a.space_guid),
    )
    .await;
    Ok((StatusCode::CREATED, Json(binding_json(&b))))
}

async fn delete_binding(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<StatusCode> {
    let user = access.user.clone();
    let b = binding_row(&c, &guid).await?;
    app_for(&c, &access, Action::Develop, &b.app_guid).await?;
    let si = instance_row(&c, &b.service_instance_guid).await?;
    unbind(&c, &si, &b).await?;
    audit(
        &c,
        &user,
        "audit.service_binding.delete",
        &b.guid,
        "service_binding",
        &si.name,
        Some(&si.space_guid),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Unbinds at the broker, then forgets the binding.
async fn unbind(c: &Shared, si: &ServiceInstance, b: &ServiceBinding) -> CfResult<()> {
    if let Some(plan_guid) = &si.service_plan_guid {
        let m = managed(c, plan_guid).await?;
        m.client
            .unbind(&si.guid, &b.guid, &m.service.unique_id, &m.plan.unique_id)
            .await
            .map_err(broker_err)?;
    }
    c.db.delete_service_binding(&b.guid).await.map_err(db_err)?;
    Ok(())
}

/// Unbinds everything bound to `app_guid` (before the app is deleted).
pub async fn unbind_app(c: &Shared, app_guid: &str) -> CfResult<()> {
    let bindings =
        c.db.list_service_bindings(&Filter {
            app_guid: Some(app_guid.to_string()),
            ..Default::default()
        })
        .await
        .map_err(db_err)?;
    for b in &bindings {
        let si = instance_row(c, &b.service_instance_guid).await?;
        unbind(c, &si, b).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------- what apps see

/// One bound service, as the environment is built from it.
#[derive(Clone, Debug)]
pub struct BoundService {
    /// The instance's name (`mydb`).
    pub name: String,
    /// The type (`mysql`), `user-provided` for user-provided instances.
    pub label: String,
    pub plan: String,
    pub tags: Vec<String>,
    /// The binding's credentials as stored (including a filesystem's `host_path`).
    pub credentials: Value,
}

/// The services bound to `app_guid`, oldest binding first.
pub async fn bound_services(c: &Shared, app_guid: &str) -> Result<Vec<BoundService>, ApiError> {
    let server = |e: strato_db::DbError| ApiError::server(e.to_string());
    let bindings =
        c.db.list_service_bindings(&Filter {
            app_guid: Some(app_guid.to_string()),
            ..Default::default()
        })
        .await
        .map_err(server)?;
    let mut out = Vec::new();
    for b in bindings {
        let Some(si) =
            c.db.service_instance_by_guid(&b.service_instance_guid)
                .await
                .map_err(server)?
        else {
            continue;
        };
        let (label, plan, tags) = match &si.service_plan_guid {
            None => ("user-provided".to_string(), String::new(), Vec::new()),
            Some(plan_guid) => {
                let plan = c.db.service_plan_by_guid(plan_guid).await.map_err(server)?;
                let service = match &plan {
                    Some(p) => {
                        c.db.service_by_guid(&p.service_guid)
                            .await
                            .map_err(server)?
                    }
                    None => None,
                };
                (
                    service
                        .as_ref()
                        .map(|s| s.label.clone())
                        .unwrap_or_default(),
                    plan.map(|p| p.name).unwrap_or_default(),
                    service.map(|s| s.tag_list()).unwrap_or_default(),
                )
            }
        };
        out.push(BoundService {
            name: si.name,
            label,
            plan,
            tags,
            credentials: serde_json::from_str(&b.credentials).unwrap_or(json!({})),
        });
    }
    Ok(out)
}

/// What an instance of an app with these services sees (REFERENCE §4).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceEnvironment {
    /// `VCAP_SERVICES`, keyed by type with no version.
    pub vcap_services: Value,
    /// `STACKATO_SERVICES`, `DATABASE_URL`, `<TYPE>_URL`, `STACKATO_FILESYSTEM[_<NAME>]`.
    pub env: Vec<String>,
    /// Filesystem services to mount.
    pub volumes: Vec<VolumeMount>,
}

/// Builds the environment for `services` (pure: the rules of REFERENCE §4).
pub fn service_environment(services: &[BoundService]) -> ServiceEnvironment {
    let mut vcap: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut stackato = Map::new();
    let mut env = Vec::new();
    let mut volumes = Vec::new();
    let mut by_label: BTreeMap<String, Vec<&BoundService>> = BTreeMap::new();
    for s in services {
        let mut creds = s.credentials.clone();
        let host_path = creds
            .as_object_mut()
            .and_then(|o| o.remove("host_path"))
            .and_then(|v| v.as_str().map(str::to_string));
        let mut entry =
            json!({"name": s.name, "label": s.label, "tags": s.tags, "credentials": creds});
        if !s.plan.is_empty() {
            entry["plan"] = json!(s.plan);
        }
        vcap.entry(s.label.clone()).or_default().push(entry);
        let mut short = creds.clone();
        if let Some(o) = short.as_object_mut() {
            o.remove("uri");
        }
        stackato.insert(s.name.clone(), short);
        by_label.entry(s.label.clone()).or_default().push(s);
        if let (Some(host), Some(dir)) = (host_path, creds.get("dir").and_then(Value::as_str)) {
            volumes.push(VolumeMount {
                host_path: host,
                container_path: dir.to_string(),
            });
            env.push(format!("STACKATO_FILESYSTEM_{}={dir}", env_suffix(&s.name)));
        }
    }
    let uri = |s: &BoundService| {
        s.credentials
            .get("uri")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let relational: Vec<&BoundService> = services
        .iter()
        .filter(|s| matches!(s.label.as_str(), "mysql" | "postgresql"))
        .collect();
    if let [one] = relational.as_slice() {
        if let Some(u) = uri(one) {
            env.push(format!("DATABASE_URL={u}"));
        }
    }
    for (label, list) in &by_label {
        if let [one] = list.as_slice() {
            if label == "filesystem" {
                if let Some(dir) = one.credentials.get("dir").and_then(Value::as_str) {
                    env.push(format!("STACKATO_FILESYSTEM={dir}"));
                }
            } else if label != "user-provided" {
                if let Some(u) = uri(one) {
                    env.push(format!("{}_URL={u}", env_suffix(label)));
                }
            }
        }
    }
    env.push(format!("STACKATO_SERVICES={}", Value::Object(stackato)));
    ServiceEnvironment {
        vcap_services: json!(vcap),
        env,
        volumes,
    }
}

/// The host directory of a filesystem service named `<app>-cache` bound to the app: the
/// staging cache that outlives the app (seed 001's `${name}-cache`).
pub fn staging_cache(services: &[BoundService], app_name: &str) -> Option<String> {
    let wanted = format!("{app_name}-cache");
    services
        .iter()
        .find(|s| s.label == "filesystem" && s.name == wanted)
        .and_then(|s| s.credentials.get("host_path"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The `services` of a space summary: each instance with its plan, service and how many
/// apps it is bound to.
pub async fn space_services_summary(c: &Shared, space_guid: &str) -> CfResult<Vec<Value>> {
    let items =
        c.db.list_service_instances(&Filter {
            space_guid: Some(space_guid.to_string()),
            ..Default::default()
        })
        .await
        .map_err(db_err)?;
    let mut out = Vec::new();
    for si in items {
        let bound =
            c.db.list_service_bindings(&Filter {
                service_instance_guid: Some(si.guid.clone()),
                ..Default::default()
            })
            .await
            .map_err(db_err)?
            .len();
        let mut v = json!({"guid": si.guid, "name": si.name, "bound_app_count": bound});
        if let Some(plan_guid) = &si.service_plan_guid {
            let plan = plan_row(c, plan_guid).await?;
            let service = service_row(c, &plan.service_guid).await?;
            v["service_plan"] = json!({
                "guid": plan.guid, "name": plan.name,
                "service": {"guid": service.guid, "label": service.label, "provider": "core", "version": null},
            });
        }
        out.push(v);
    }
    Ok(out)
}

/// `my-db.1` → `MY_DB_1`.
fn env_suffix(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(name: &str, label: &str, creds: Value) -> BoundService {
        BoundService {
            name: name.into(),
            label: label.into(),
            plan: "free".into(),
            tags: vec![label.into()],
            credentials: creds,
        }
    }

    fn get<'a>(env: &'a ServiceEnvironment, key: &str) -> Option<&'a str> {
        env.env
            .iter()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
    }

    #[test]
    fn one_relational_database_gives_database_url() {
        let e = service_environment(&[
            bound(
                "mydb",
                "mysql",
                json!({"uri": "mysql://u:p@10.0.0.5:3306/d1", "name": "d1", "password": "p"}),
            ),
            bound(
                "cache",
                "redis",
                json!({"uri": "redis://:p@10.0.0.5:6379/"}),
            ),
        ]);
        assert_eq!(
            get(&e, "DATABASE_URL"),
            Some("mysql://u:p@10.0.0.5:3306/d1")
        );
        assert_eq!(get(&e, "MYSQL_URL"), Some("mysql://u:p@10.0.0.5:3306/d1"));
        assert_eq!(get(&e, "REDIS_URL"), Some("redis://:p@10.0.0.5:6379/"));
        assert_eq!(e.vcap_services["mysql"][0]["name"], "mydb");
        assert_eq!(e.vcap_services["mysql"][0]["plan"], "free");
        assert_eq!(e.vcap_services["mysql"][0]["credentials"]["password"], "p");
        let stackato: Value = serde_json::from_str(get(&e, "STACKATO_SERVICES").unwrap()).unwrap();
        assert_eq!(stackato["mydb"]["name"], "d1");
        assert!(
            stackato["mydb"].get("uri").is_none(),
            "STACKATO_SERVICES has no uri"
        );
    }

    #[test]
    fn two_relational_databases_give_no_database_url() {
        let e = service_environment(&[
            bound("a", "mysql", json!({"uri": "mysql://a"})),
            bound("b", "postgresql", json!({"uri": "postgres://b"})),
        ]);
        assert_eq!(get(&e, "DATABASE_URL"), None);
        assert_eq!(get(&e, "MYSQL_URL"), Some("mysql://a"));
        assert_eq!(get(&e, "POSTGRESQL_URL"), Some("postgres://b"));
        let e = service_environment(&[
            bound("a", "mysql", json!({"uri": "mysql://a"})),
            bound("b", "mysql", json!({"uri": "mysql://b"})),
        ]);
        assert_eq!(get(&e, "MYSQL_URL"), None, "two of a type: no <TYPE>_URL");
        assert_eq!(e.vcap_services["mysql"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn filesystems_are_mounted_and_named_without_leaking_the_host_path() {
        let e = service_environment(&[bound(
            "my-files",
            "filesystem",
            json!({"name": "fs1", "dir": "/home/stackato/fs/fs1", "host_path": "/var/lib/strato/services/filesystem/mounts/x"}),
        )]);
        assert_eq!(
            get(&e, "STACKATO_FILESYSTEM"),
            Some("/home/stackato/fs/fs1")
        );
        assert_eq!(
            get(&e, "STACKATO_FILESYSTEM_MY_FILES"),
            Some("/home/stackato/fs/fs1")
        );
        assert_eq!(e.volumes.len(), 1);
        assert_eq!(e.volumes[0].container_path, "/home/stackato/fs/fs1");
        assert!(!e.vcap_services.to_string().contains("/var/lib/strato"));
        assert!(!get(&e, "STACKATO_SERVICES")
            .unwrap()
            .contains("/var/lib/strato"));
    }

    #[test]
    fn user_provided_services_appear_under_their_own_key() {
        let mut s = bound("ext", "user-provided", json!({"uri": "postgres://ext"}));
        s.plan.clear();
        let e = service_environment(&[s]);
        assert_eq!(e.vcap_services["user-provided"][0]["name"], "ext");
        assert!(e.vcap_services["user-provided"][0].get("plan").is_none());
        assert_eq!(
            get(&e, "DATABASE_URL"),
            None,
            "only managed relational types count"
        );
        assert_eq!(get(&e, "USER-PROVIDED_URL"), None);
        assert_eq!(get(&e, "USER_PROVIDED_URL"), None);
    }

    #[test]
    fn instance_names_are_checked() {
        assert!(check_instance_name("my-db_1.x").is_ok());
        assert!(check_instance_name("").is_err());
        assert!(check_instance_name("a b").is_err());
        assert!(check_instance_name(&"x".repeat(51)).is_err());
    }
}
