//! Quotas over HTTP, in CF v2 shapes, and the checks the app, route and service handlers
//! call before they change anything.
//!
//! - `/v2/quota_definitions`: every signed-in user lists and reads them; administrators
//!   create, update and delete them (not while an org has one); `PUT
//!   /v2/organizations/{guid}` with `quota_definition_guid` gives an org one;
//! - `/v2/space_quota_definitions`: owned by an org, managed by its managers (and
//!   administrators), seen by whoever sees the org; `PUT|DELETE
//!   /v2/space_quota_definitions/{guid}/spaces/{space_guid}` gives or takes a space's;
//! - `/v2/organizations/{guid}/memory_usage`: `{"memory_usage_in_mb": N}`.
//!
//! The arithmetic is [`crate::quota`]'s; this module loads the quotas and usage that apply.

use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use strato_core::ApiError;
use strato_db::{
    Organization, QuotaDefinition, QuotaLimits, QuotaUsage, Space, SpaceQuotaDefinition, UNLIMITED,
};

use crate::access::{Access, Action, Scope};
use crate::api::{audit, ep, org, parse_json, Endpoint};
use crate::auth::CurrentUser;
use crate::cf::{db_err, paginate, resource, taken_or_db_err, CfError, CfResult, ListParams};
use crate::quota::{AppDemand, Level, Quota};
use crate::Shared;

type Body = axum::body::Bytes;

pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        ep(Method::GET, "/v2/quota_definitions", list_quotas),
        ep(Method::POST, "/v2/quota_definitions", create_quota),
        ep(Method::GET, "/v2/quota_definitions/{guid}", get_quota),
        ep(Method::PUT, "/v2/quota_definitions/{guid}", update_quota),
        ep(Method::DELETE, "/v2/quota_definitions/{guid}", delete_quota),
        ep(
            Method::GET,
            "/v2/organizations/{guid}/memory_usage",
            memory_usage,
        ),
        ep(
            Method::GET,
            "/v2/space_quota_definitions",
            list_space_quotas,
        ),
        ep(
            Method::POST,
            "/v2/space_quota_definitions",
            create_space_quota,
        ),
        ep(
            Method::GET,
            "/v2/space_quota_definitions/{guid}",
            get_space_quota,
        ),
        ep(
            Method::PUT,
            "/v2/space_quota_definitions/{guid}",
            update_space_quota,
        ),
        ep(
            Method::DELETE,
            "/v2/space_quota_definitions/{guid}",
            delete_space_quota,
        ),
        ep(
            Method::PUT,
            "/v2/space_quota_definitions/{guid}/spaces/{space_guid}",
            assign_space,
        ),
        ep(
            Method::DELETE,
            "/v2/space_quota_definitions/{guid}/spaces/{space_guid}",
            unassign_space,
        ),
    ]
}

// ---------------------------------------------------------------- enforcement

/// The quotas over `space` (its org's, then its own), each with what is used under it
/// leaving out app `except_app`.
async fn quotas_over(
    c: &Shared,
    space: &Space,
    except_app: Option<&str>,
) -> CfResult<Vec<(Quota, QuotaUsage)>> {
    let mut out = Vec::new();
    let o = org(c, &space.organization_guid).await?;
    if let Some(guid) = &o.quota_definition_guid {
        if let Some(q) = c.db.quota_by_guid(guid).await.map_err(db_err)? {
            let used = c.db.org_usage(&o.guid, except_app).await.map_err(db_err)?;
            out.push((
                Quota {
                    level: Level::Org,
                    name: q.name,
                    limits: q.limits,
                },
                used,
            ));
        }
    }
    if let Some(guid) = &space.space_quota_definition_guid {
        if let Some(q) = c.db.space_quota_by_guid(guid).await.map_err(db_err)? {
            let used =
                c.db.space_usage(&space.guid, except_app)
                    .await
                    .map_err(db_err)?;
            out.push((
                Quota {
                    level: Level::Space,
                    name: q.name,
                    limits: q.limits,
                },
                used,
            ));
        }
    }
    Ok(out)
}

/// Refuses an app change that would pass a quota of `space_guid` (the app's space after
/// the change). `before` is `None` for a new app or one moving in from another space.
pub(crate) async fn check_app(
    c: &Shared,
    space_guid: &str,
    app_guid: Option<&str>,
    before: Option<AppDemand>,
    after: AppDemand,
) -> CfResult<()> {
    let space = crate::api::space(c, space_guid).await?;
    let quotas = quotas_over(c, &space, app_guid).await?;
    crate::quota::check_app(&quotas, before, after).map_err(|e| CfError(e.into()))
}

/// Refuses a new managed service instance in `space_guid` past a quota.
pub(crate) async fn check_new_service(c: &Shared, space_guid: &str, paid: bool) -> CfResult<()> {
    let space = crate::api::space(c, space_guid).await?;
    let quotas = quotas_over(c, &space, None).await?;
    crate::quota::check_service(&quotas, paid).map_err(|e| CfError(e.into()))
}

/// Refuses a new route in `space_guid` past a quota.
pub(crate) async fn check_new_route(c: &Shared, space_guid: &str) -> CfResult<()> {
    let space = crate::api::space(c, space_guid).await?;
    let quotas = quotas_over(c, &space, None).await?;
    crate::quota::check_route(&quotas).map_err(|e| CfError(e.into()))
}

// ---------------------------------------------------------------- shapes and input

fn limits_json(l: &QuotaLimits) -> Value {
    json!({
        "non_basic_services_allowed": l.non_basic_services_allowed != 0,
        "total_services": l.total_services, "total_routes": l.total_routes,
        "memory_limit": l.memory_limit, "instance_memory_limit": l.instance_memory_limit,
        "app_instance_limit": l.app_instance_limit, "trial_db_allowed": false,
    })
}

fn quota_json(q: &QuotaDefinition) -> Value {
    let mut entity = limits_json(&q.limits);
    entity["name"] = json!(q.name);
    resource(
        "quota_definitions",
        &q.guid,
        &q.created_at,
        &q.updated_at,
        entity,
    )
}

fn space_quota_json(q: &SpaceQuotaDefinition) -> Value {
    let mut entity = limits_json(&q.limits);
    entity["name"] = json!(q.name);
    entity["organization_guid"] = json!(q.organization_guid);
    entity["organization_url"] = json!(format!("/v2/organizations/{}", q.organization_guid));
    entity["spaces_url"] = json!(format!("/v2/space_quota_definitions/{}/spaces", q.guid));
    resource(
        "space_quota_definitions",
        &q.guid,
        &q.created_at,
        &q.updated_at,
        entity,
    )
}

/// The fields a client may send on create and update (others, e.g. CF's
/// `total_private_domains`, are ignored).
#[derive(Deserialize, Default)]
pub(crate) struct QuotaFields {
    name: Option<String>,
    organization_guid: Option<String>,
    non_basic_services_allowed: Option<bool>,
    total_services: Option<i64>,
    total_routes: Option<i64>,
    memory_limit: Option<i64>,
    instance_memory_limit: Option<i64>,
    app_instance_limit: Option<i64>,
}

/// Which quota kind an error is about: org (`240003`) or space (`310001`) codes.
#[derive(Clone, Copy)]
enum Kind {
    Org,
    Space,
}

impl Kind {
    fn invalid(self, msg: String) -> CfError {
        CfError(match self {
            Kind::Org => ApiError::new(
                400,
                240003,
                "CF-QuotaDefinitionInvalid",
                format!("Quota Definition is invalid: {msg}"),
            ),
            Kind::Space => ApiError::new(
                400,
                310001,
                "CF-SpaceQuotaDefinitionInvalid",
                format!("Space Quota Definition is invalid: {msg}"),
            ),
        })
    }

    fn name_taken(self, name: &str) -> CfError {
        CfError(match self {
            Kind::Org => ApiError::new(
                400,
                240002,
                "CF-QuotaDefinitionNameTaken",
                format!("Quota Definition is taken: {name}"),
            ),
            Kind::Space => ApiError::new(
                400,
                310002,
                "CF-SpaceQuotaDefinitionNameTaken",
                format!("The space quota definition name is taken: {name}"),
            ),
        })
    }
}

impl QuotaFields {
    /// `base` with the given fields applied, each checked.
    fn apply(&self, kind: Kind, base: &QuotaLimits) -> CfResult<QuotaLimits> {
        let mut l = base.clone();
        for (field, value, slot) in [
            ("total_services", self.total_services, &mut l.total_services),
            ("total_routes", self.total_routes, &mut l.total_routes),
            ("memory_limit", self.memory_limit, &mut l.memory_limit),
            (
                "instance_memory_limit",
                self.instance_memory_limit,
                &mut l.instance_memory_limit,
            ),
            (
                "app_instance_limit",
                self.app_instance_limit,
                &mut l.app_instance_limit,
            ),
        ] {
            if let Some(v) = value {
                if v < UNLIMITED {
                    return Err(
                        kind.invalid(format!("{field} must be -1 (unlimited) or more, not {v}"))
                    );
                }
                *slot = v;
            }
        }
        if let Some(b) = self.non_basic_services_allowed {
            l.non_basic_services_allowed = b as i64;
        }
        Ok(l)
    }

    fn checked_name(&self, kind: Kind) -> CfResult<Option<String>> {
        match &self.name {
            None => Ok(None),
            Some(n) if n.trim().is_empty() || n.len() > 255 || n.chars().any(char::is_control) => {
                Err(kind.invalid(format!(
                    "'{n}' is not a valid name: use 1 to 255 characters, no control characters"
                )))
            }
            Some(n) => Ok(Some(n.clone())),
        }
    }
}

fn quota_not_found(guid: &str) -> CfError {
    CfError(ApiError::new(
        404,
        240001,
        "CF-QuotaDefinitionNotFound",
        format!("Quota Definition could not be found: {guid}; see `strato quotas`"),
    ))
}

fn space_quota_not_found(guid: &str) -> CfError {
    CfError(ApiError::new(
        404,
        310007,
        "CF-SpaceQuotaDefinitionNotFound",
        format!("Space Quota Definition could not be found: {guid}"),
    ))
}

async fn quota_row(c: &Shared, guid: &str) -> CfResult<QuotaDefinition> {
    c.db.quota_by_guid(guid)
        .await
        .map_err(db_err)?
        .ok_or_else(|| quota_not_found(guid))
}

// ---------------------------------------------------------------- org quotas

async fn list_quotas(
    State(c): State<Shared>,
    _user: CurrentUser,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    p.check_known(&["name"])?;
    let mut quotas = c.db.list_quotas().await.map_err(db_err)?;
    if let Some(name) = p.filter("name") {
        quotas.retain(|q| q.name == name);
    }
    Ok(Json(paginate(
        "/v2/quota_definitions",
        &p,
        quotas.iter().map(quota_json).collect(),
    )))
}

async fn get_quota(
    State(c): State<Shared>,
    _user: CurrentUser,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    Ok(Json(quota_json(&quota_row(&c, &guid).await?)))
}

async fn create_quota(
    State(c): State<Shared>,
    access: Access,
    body: Body,
) -> CfResult<(StatusCode, Json<Value>)> {
    access.require_admin()?;
    let f: QuotaFields = parse_json(&body)?;
    let name = f
        .checked_name(Kind::Org)?
        .ok_or_else(|| Kind::Org.invalid("name is required".into()))?;
    let limits = f.apply(Kind::Org, &QuotaLimits::cf_default())?;
    let q =
        c.db.create_quota(&name, &limits)
            .await
            .map_err(taken_or_db_err(|| Kind::Org.name_taken(&name)))?;
    audit(
        &c,
        &access.user,
        "audit.quota_definition.create",
        &q.guid,
        "quota_definition",
        &q.name,
        None,
    )
    .await;
    Ok((StatusCode::CREATED, Json(quota_json(&q))))
}

async fn update_quota(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    body: Body,
) -> CfResult<(StatusCode, Json<Value>)> {
    access.require_admin()?;
    let mut q = quota_row(&c, &guid).await?;
    let f: QuotaFields = parse_json(&body)?;
    if let Some(name) = f.checked_name(Kind::Org)? {
        q.name = name;
    }
    q.limits = f.apply(Kind::Org, &q.limits)?;
    let q =
        c.db.update_quota(&q)
            .await
            .map_err(taken_or_db_err(|| Kind::Org.name_taken(&q.name)))?
            .ok_or_else(|| quota_not_found(&guid))?;
    audit(
        &c,
        &access.user,
        "audit.quota_definition.update",
        &q.guid,
        "quota_definition",
        &q.name,
        None,
    )
    .await;
    Ok((StatusCode::CREATED, Json(quota_json(&q))))
}

async fn delete_quota(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<StatusCode> {
    access.require_admin()?;
    let q = quota_row(&c, &guid).await?;
    let orgs = c.db.orgs_using_quota(&q.guid).await.map_err(db_err)?;
    if !orgs.is_empty() {
        return Err(ApiError::association_not_empty(format!(
            "quota {} is the quota of organization(s) {}; give them another first (`strato quota-org ORG QUOTA`)",
            q.name,
            orgs.join(", ")
        ))
        .into());
    }
    c.db.delete_quota(&q.guid).await.map_err(db_err)?;
    audit(
        &c,
        &access.user,
        "audit.quota_definition.delete",
        &q.guid,
        "quota_definition",
        &q.name,
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Gives org `o` quota `quota_guid`: administrators only.
pub(crate) async fn assign_org_quota(
    c: &Shared,
    access: &Access,
    o: &Organization,
    quota_guid: &str,
) -> CfResult<()> {
    access.require_admin()?;
    let q = quota_row(c, quota_guid).await?;
    c.db.set_org_quota(&o.guid, &q.guid).await.map_err(db_err)?;
    audit(
        c,
        &access.user,
        "audit.organization.update",
        &o.guid,
        "organization",
        &format!("{} (quota {})", o.name, q.name),
        None,
    )
    .await;
    Ok(())
}

async fn memory_usage(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    let o = org(&c, &guid).await?;
    access.require(Action::Read, Scope::Org(&o.guid))?;
    let used = c.db.org_usage(&o.guid, None).await.map_err(db_err)?;
    Ok(Json(json!({"memory_usage_in_mb": used.memory_mb})))
}

// ---------------------------------------------------------------- space quotas

/// The space quota by guid (404 when there is none) once `action` on its org is allowed.
async fn space_quota_for(
    c: &Shared,
    access: &Access,
    action: Action,
    guid: &str,
) -> CfResult<SpaceQuotaDefinition> {
    let q =
        c.db.space_quota_by_guid(guid)
            .await
            .map_err(db_err)?
            .ok_or_else(|| space_quota_not_found(guid))?;
    access.require(action, Scope::Org(&q.organization_guid))?;
    Ok(q)
}

async fn list_space_quotas(
    State(c): State<Shared>,
    access: Access,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    p.check_known(&["organization_guid", "name"])?;
    let org_filter = p.filter("organization_guid");
    let mut quotas =
        c.db.list_space_quotas(org_filter.as_deref())
            .await
            .map_err(db_err)?;
    if let Some(name) = p.filter("name") {
        quotas.retain(|q| q.name == name);
    }
    Ok(Json(paginate(
        "/v2/space_quota_definitions",
        &p,
        quotas
            .iter()
            .filter(|q| access.can(Action::Read, Scope::Org(&q.organization_guid)))
            .map(space_quota_json)
            .collect(),
    )))
}

async fn get_space_quota(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    let q = space_quota_for(&c, &access, Action::Read, &guid).await?;
    Ok(Json(space_quota_json(&q)))
}

async fn create_space_quota(
    State(c): State<Shared>,
    access: Access,
    body: Body,
) -> CfResult<(StatusCode, Json<Value>)> {
    let f: QuotaFields = parse_json(&body)?;
    let org_guid = f
        .organization_guid
        .clone()
        .ok_or_else(|| Kind::Space.invalid("organization_guid is required".into()))?;
    let o = org(&c, &org_guid).await?;
    access.require(Action::Update, Scope::Org(&o.guid))?;
    let name = f
        .checked_name(Kind::Space)?
        .ok_or_else(|| Kind::Space.invalid("name is required".into()))?;
    let limits = f.apply(Kind::Space, &QuotaLimits::cf_default())?;
    let q =
        c.db.create_space_quota(&o.guid, &name, &limits)
            .await
            .map_err(taken_or_db_err(|| Kind::Space.name_taken(&name)))?;
    audit(
        &c,
        &access.user,
        "audit.space_quota_definition.create",
        &q.guid,
        "space_quota_definition",
        &q.name,
        None,
    )
    .await;
    Ok((StatusCode::CREATED, Json(space_quota_json(&q))))
}

async fn update_space_quota(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    body: Body,
) -> CfResult<(StatusCode, Json<Value>)> {
    let mut q = space_quota_for(&c, &access, Action::Update, &guid).await?;
    let f: QuotaFields = parse_json(&body)?;
    if f.organization_guid
        .as_deref()
        .is_some_and(|o| o != q.organization_guid)
    {
        return Err(Kind::Space.invalid("a space quota cannot move to another organization".into()));
    }
    if let Some(name) = f.checked_name(Kind::Space)? {
        q.name = name;
    }
    q.limits = f.apply(Kind::Space, &q.limits)?;
    let q =
        c.db.update_space_quota(&q)
            .await
            .map_err(taken_or_db_err(|| Kind::Space.name_taken(&q.name)))?
            .ok_or_else(|| space_quota_not_found(&guid))?;
    audit(
        &c,
        &access.user,
        "audit.space_quota_definition.update",
        &q.guid,
        "space_quota_definition",
        &q.name,
        None,
    )
    .await;
    Ok((StatusCode::CREATED, Json(space_quota_json(&q))))
}

async fn delete_space_quota(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<StatusCode> {
    let q = space_quota_for(&c, &access, Action::Update, &guid).await?;
    c.db.delete_space_quota(&q.guid).await.map_err(db_err)?;
    audit(
        &c,
        &access.user,
        "audit.space_quota_definition.delete",
        &q.guid,
        "space_quota_definition",
        &q.name,
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The space quota and a space of the same org, once managing that org is allowed.
async fn quota_and_space(
    c: &Shared,
    access: &Access,
    guid: &str,
    space_guid: &str,
) -> CfResult<(SpaceQuotaDefinition, Space)> {
    let q = space_quota_for(c, access, Action::Update, guid).await?;
    let s = crate::api::space(c, space_guid).await?;
    if s.organization_guid != q.organization_guid {
        return Err(CfError(ApiError::new(
            400,
            1002,
            "CF-InvalidRelation",
            format!(
                "space {} is not in the organization of space quota {}",
                s.name, q.name
            ),
        )));
    }
    Ok((q, s))
}

async fn assign_space(
    State(c): State<Shared>,
    access: Access,
    Path((guid, space_guid)): Path<(String, String)>,
) -> CfResult<(StatusCode, Json<Value>)> {
    let (q, s) = quota_and_space(&c, &access, &guid, &space_guid).await?;
    c.db.set_space_quota(&s.guid, Some(&q.guid))
        .await
        .map_err(db_err)?;
    audit(
        &c,
        &access.user,
        "audit.space.update",
        &s.guid,
        "space",
        &format!("{} (space quota {})", s.name, q.name),
        Some(&s.guid),
    )
    .await;
    Ok((StatusCode::CREATED, Json(space_quota_json(&q))))
}

async fn unassign_space(
    State(c): State<Shared>,
    access: Access,
    Path((guid, space_guid)): Path<(String, String)>,
) -> CfResult<StatusCode> {
    let (q, s) = quota_and_space(&c, &access, &guid, &space_guid).await?;
    if s.space_quota_definition_guid.as_deref() == Some(q.guid.as_str()) {
        c.db.set_space_quota(&s.guid, None).await.map_err(db_err)?;
        audit(
            &c,
            &access.user,
            "audit.space.update",
            &s.guid,
            "space",
            &format!("{} (no space quota)", s.name),
            Some(&s.guid),
        )
        .await;
    }
    Ok(StatusCode::NO_CONTENT)
}
