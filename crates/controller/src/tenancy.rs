//! Users, organizations, spaces and their members, in CF v2 and UAA shapes.
//!
//! - `/v2/users` (administrators list, grant `admin`, delete; everyone reads themselves),
//!   `/v2/users/{guid}/organizations|spaces`;
//! - UAA's `POST /Users` (create) and `PUT /Users/{id}/password` (own password with the
//!   old one; administrators set anyone's). A password change or a deletion revokes the
//!   user's logins (a password change keeps the session that made it);
//! - `/v2/organizations` create, rename, delete (`recursive=true` takes spaces, apps,
//!   services and routes with it) and members by role (`users`, `managers`,
//!   `billing_managers`, `auditors`), by guid or — so org managers need not list all
//!   users — by `{"username"}`;
//! - `/v2/spaces` create, rename, delete and members (`developers`, `managers`,
//!   `auditors`), who must belong to the space's organization first;
//! - `PUT /v2/organizations/{guid}` with `quota_definition_guid` (administrators) gives the
//!   org a quota ([`crate::quotas`]);
//! - `/v2/config/feature_flags` (`user_org_creation`: may non-administrators create orgs).
//!
//! Who may do what is [`crate::access`]'s business.

use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use strato_core::ApiError;
use strato_db::{DbError, Filter, OrgRole, Organization, Space, SpaceRole, User};

use crate::access::{Access, Action, Scope};
use crate::api::{audit, ep, org, parse_json, Endpoint};
use crate::cf::{db_err, paginate, resource, taken_or_db_err, CfError, CfResult, ListParams};
use crate::Shared;

/// The feature flags Strato knows, with their defaults.
const FEATURE_FLAGS: &[(&str, bool)] = &[("user_org_creation", false)];

const ORG_ROLE_PATHS: [(OrgRole, &str, &str); 4] = [
    (
        OrgRole::User,
        "/v2/organizations/{guid}/users",
        "/v2/organizations/{guid}/users/{user_guid}",
    ),
    (
        OrgRole::Manager,
        "/v2/organizations/{guid}/managers",
        "/v2/organizations/{guid}/managers/{user_guid}",
    ),
    (
        OrgRole::BillingManager,
        "/v2/organizations/{guid}/billing_managers",
        "/v2/organizations/{guid}/billing_managers/{user_guid}",
    ),
    (
        OrgRole::Auditor,
        "/v2/organizations/{guid}/auditors",
        "/v2/organizations/{guid}/auditors/{user_guid}",
    ),
];

const SPACE_ROLE_PATHS: [(SpaceRole, &str, &str); 3] = [
    (
        SpaceRole::Developer,
        "/v2/spaces/{guid}/developers",
        "/v2/spaces/{guid}/developers/{user_guid}",
    ),
    (
        SpaceRole::Manager,
        "/v2/spaces/{guid}/managers",
        "/v2/spaces/{guid}/managers/{user_guid}",
    ),
    (
        SpaceRole::Auditor,
        "/v2/spaces/{guid}/auditors",
        "/v2/spaces/{guid}/auditors/{user_guid}",
    ),
];

type Guid = Path<String>;
type Pair = Path<(String, String)>;
type Body = axum::body::Bytes;

pub(crate) fn endpoints() -> Vec<Endpoint> {
    let mut v = vec![
        ep(Method::GET, "/v2/users", list_users),
        ep(Method::GET, "/v2/users/{guid}", get_user),
        ep(Method::PUT, "/v2/users/{guid}", update_user),
        ep(Method::DELETE, "/v2/users/{guid}", delete_user),
        ep(Method::GET, "/v2/users/{guid}/organizations", user_orgs),
        ep(Method::GET, "/v2/users/{guid}/spaces", user_spaces),
        ep(Method::POST, "/Users", create_user),
        ep(Method::PUT, "/Users/{guid}/password", change_password),
        ep(Method::POST, "/v2/organizations", create_org),
        ep(Method::PUT, "/v2/organizations/{guid}", update_org),
        ep(Method::DELETE, "/v2/organizations/{guid}", delete_org),
        ep(Method::POST, "/v2/spaces", create_space),
        ep(Method::PUT, "/v2/spaces/{guid}", update_space),
        ep(Method::DELETE, "/v2/spaces/{guid}", delete_space),
        ep(Method::GET, "/v2/config/feature_flags", list_flags),
        ep(Method::GET, "/v2/config/feature_flags/{guid}", get_flag),
        ep(Method::PUT, "/v2/config/feature_flags/{guid}", set_flag),
    ];
    for (role, list, one) in ORG_ROLE_PATHS {
        v.push(ep(
            Method::GET,
            list,
            move |c: State<Shared>, a: Access, p: Guid, q: RawQuery| org_members(c, a, p, q, role),
        ));
        v.push(ep(
            Method::PUT,
            list,
            move |c: State<Shared>, a: Access, p: Guid, b: Body| org_add_by_name(c, a, p, b, role),
        ));
        v.push(ep(
            Method::PUT,
            one,
            move |c: State<Shared>, a: Access, p: Pair| org_add(c, a, p, role),
        ));
        v.push(ep(
            Method::DELETE,
            one,
            move |c: State<Shared>, a: Access, p: Pair| org_remove(c, a, p, role),
        ));
    }
    for (role, list, one) in SPACE_ROLE_PATHS {
        v.push(ep(
            Method::GET,
            list,
            move |c: State<Shared>, a: Access, p: Guid, q: RawQuery| {
                space_members(c, a, p, q, role)
            },
        ));
        v.push(ep(
            Method::PUT,
            list,
            move |c: State<Shared>, a: Access, p: Guid, b: Body| {
                space_add_by_name(c, a, p, b, role)
            },
        ));
        v.push(ep(
            Method::PUT,
            one,
            move |c: State<Shared>, a: Access, p: Pair| space_add(c, a, p, role),
        ));
        v.push(ep(
            Method::DELETE,
            one,
            move |c: State<Shared>, a: Access, p: Pair| space_remove(c, a, p, role),
        ));
    }
    v
}

// ---------------------------------------------------------------- shapes and lookups

fn user_json(u: &User) -> Value {
    resource(
        "users",
        &u.guid,
        &u.created_at,
        &u.updated_at,
        json!({
            "username": u.username, "admin": u.is_admin(), "active": true,
            "default_space_guid": null,
            "organizations_url": format!("/v2/users/{}/organizations", u.guid),
            "spaces_url": format!("/v2/users/{}/spaces", u.guid),
        }),
    )
}

pub(crate) fn org_json(o: &Organization) -> Value {
    resource(
        "organizations",
        &o.guid,
        &o.created_at,
        &o.updated_at,
        json!({
            "name": o.name, "billing_enabled": false, "status": "active",
            "quota_definition_guid": o.quota_definition_guid,
            "quota_definition_url": o.quota_definition_guid.as_ref().map(|q| format!("/v2/quota_definitions/{q}")),
            "space_quota_definitions_url": format!("/v2/organizations/{}/space_quota_definitions", o.guid),
            "memory_usage_url": format!("/v2/organizations/{}/memory_usage", o.guid),
            "spaces_url": format!("/v2/organizations/{}/spaces", o.guid),
            "users_url": format!("/v2/organizations/{}/users", o.guid),
            "managers_url": format!("/v2/organizations/{}/managers", o.guid),
            "billing_managers_url": format!("/v2/organizations/{}/billing_managers", o.guid),
            "auditors_url": format!("/v2/organizations/{}/auditors", o.guid),
        }),
    )
}

pub(crate) fn space_json(s: &Space) -> Value {
    resource(
        "spaces",
        &s.guid,
        &s.created_at,
        &s.updated_at,
        json!({
            "name": s.name, "organization_guid": s.organization_guid,
            "space_quota_definition_guid": s.space_quota_definition_guid,
            "organization_url": format!("/v2/organizations/{}", s.organization_guid),
            "apps_url": format!("/v2/spaces/{}/apps", s.guid),
            "developers_url": format!("/v2/spaces/{}/developers", s.guid),
            "managers_url": format!("/v2/spaces/{}/managers", s.guid),
            "auditors_url": format!("/v2/spaces/{}/auditors", s.guid),
        }),
    )
}

async fn user_row(c: &Shared, guid: &str) -> CfResult<User> {
    c.db.user_by_guid(guid)
        .await
        .map_err(db_err)?
        .ok_or_else(|| ApiError::not_found("user", guid).into())
}

async fn user_named(c: &Shared, name: &str) -> CfResult<User> {
    c.db.user_by_name(name).await.map_err(db_err)?.ok_or_else(|| {
        CfError(ApiError::new(
            404,
            20003,
            "CF-UserNotFound",
            format!("there is no user named {name}; an administrator adds users with `strato add-user`"),
        ))
    })
}

/// Users see themselves; administrators everyone.
fn require_self_or_admin(access: &Access, guid: &str) -> CfResult<()> {
    if access.user.guid == guid {
        Ok(())
    } else {
        access.require_admin()
    }
}

fn check_name(kind: &str, name: &str) -> CfResult<()> {
    let ok = !name.trim().is_empty()
        && name.len() <= 255
        && !name.chars().any(|c| c.is_control() || c == '/');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_request(format!(
            "'{name}' is not a valid {kind} name: use 1 to 255 characters, no '/' or control characters"
        ))
        .into())
    }
}

fn user_list(path: &str, p: &ListParams, users: &[User]) -> Json<Value> {
    Json(paginate(path, p, users.iter().map(user_json).collect()))
}

// ---------------------------------------------------------------- users

async fn list_users(
    State(c): State<Shared>,
    access: Access,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    access.require_admin()?;
    let p = ListParams::parse(q.as_deref())?;
    p.check_known(&["username"])?;
    let mut users = c.db.list_users().await.map_err(db_err)?;
    if let Some(name) = p.filter("username") {
        users.retain(|u| u.username == name);
    }
    Ok(user_list("/v2/users", &p, &users))
}

async fn get_user(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    let u = user_row(&c, &guid).await?;
    require_self_or_admin(&access, &u.guid)?;
    Ok(Json(user_json(&u)))
}

#[derive(Deserialize)]
pub(crate) struct UserUpdate {
    admin: Option<bool>,
}

/// `PUT /v2/users/{guid}` `{"admin": true}`: grants or revokes administration.
async fn update_user(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    body: Body,
) -> CfResult<(StatusCode, Json<Value>)> {
    access.require_admin()?;
    let req: UserUpdate = parse_json(&body)?;
    let u = user_row(&c, &guid).await?;
    if let Some(admin) = req.admin {
        if !admin && u.guid == access.user.guid {
            return Err(ApiError::invalid_request(
                "you cannot revoke your own administrator rights; ask another administrator",
            )
            .into());
        }
        c.db.set_admin(&u.guid, admin).await.map_err(db_err)?;
        let kind = if admin { "grant" } else { "revoke" };
        audit(
            &c,
            &access.user,
            &format!("audit.user.admin_{kind}"),
            &u.guid,
            "user",
            &u.username,
            None,
        )
        .await;
    }
    Ok((
        StatusCode::CREATED,
        Json(user_json(&user_row(&c, &guid).await?)),
    ))
}

async fn delete_user(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<StatusCode> {
    access.require_admin()?;
    let u = user_row(&c, &guid).await?;
    if u.guid == access.user.guid {
        return Err(ApiError::invalid_request(
            "you cannot delete yourself; ask another administrator",
        )
        .into());
    }
    c.db.delete_user(&u.guid).await.map_err(db_err)?;
    audit(
        &c,
        &access.user,
        "audit.user.delete",
        &u.guid,
        "user",
        &u.username,
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn user_orgs(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let u = user_row(&c, &guid).await?;
    require_self_or_admin(&access, &u.guid)?;
    let p = ListParams::parse(q.as_deref())?;
    let m = c.db.memberships(&u.guid).await.map_err(db_err)?;
    let orgs = c.db.list_orgs(&Filter::default()).await.map_err(db_err)?;
    let out = orgs
        .iter()
        .filter(|o| {
            m.orgs.iter().any(|(g, _)| *g == o.guid)
                || m.spaces.iter().any(|(_, g, _)| *g == o.guid)
        })
        .map(org_json)
        .collect();
    Ok(Json(paginate(
        &format!("/v2/users/{guid}/organizations"),
        &p,
        out,
    )))
}

async fn user_spaces(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let u = user_row(&c, &guid).await?;
    require_self_or_admin(&access, &u.guid)?;
    let p = ListParams::parse(q.as_deref())?;
    let m = c.db.memberships(&u.guid).await.map_err(db_err)?;
    let spaces = c.db.list_spaces(&Filter::default()).await.map_err(db_err)?;
    let out = spaces
        .iter()
        .filter(|s| m.spaces.iter().any(|(g, _, _)| *g == s.guid))
        .map(space_json)
        .collect();
    Ok(Json(paginate(&format!("/v2/users/{guid}/spaces"), &p, out)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NewUser {
    user_name: String,
    password: String,
    #[serde(default)]
    emails: Vec<Email>,
}

#[derive(Deserialize)]
struct Email {
    value: String,
}

/// UAA's `POST /Users`: administrators create users.
async fn create_user(
    State(c): State<Shared>,
    access: Access,
    body: Body,
) -> CfResult<(StatusCode, Json<Value>)> {
    access.require_admin()?;
    let req: NewUser = parse_json(&body)?;
    check_name("user", &req.user_name)?;
    if req.user_name.chars().any(char::is_whitespace) {
        return Err(ApiError::invalid_request("a user name cannot contain spaces").into());
    }
    check_password(&req.password)?;
    let hash = crate::auth::hash_password(&req.password)?;
    let u = match c.db.create_user(&req.user_name, &hash, false).await {
        Ok(u) => u,
        Err(DbError::Conflict { .. }) => {
            return Err(CfError(ApiError::new(
                409,
                20002,
                "CF-UaaIdTaken",
                format!("a user named {} already exists", req.user_name),
            )))
        }
        Err(e) => return Err(db_err(e)),
    };
    audit(
        &c,
        &access.user,
        "audit.user.create",
        &u.guid,
        "user",
        &u.username,
        None,
    )
    .await;
    let emails: Vec<Value> = req
        .emails
        .iter()
        .map(|e| json!({"value": e.value}))
        .collect();
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": u.guid, "userName": u.username, "emails": emails, "active": true,
            "meta": {"created": u.created_at, "lastModified": u.updated_at, "version": 0},
            "schemas": ["urn:scim:schemas:core:1.0"],
        })),
    ))
}

fn check_password(password: &str) -> CfResult<()> {
    if password.is_empty() || password.len() > 1024 {
        return Err(ApiError::invalid_request("the password must be 1 to 1024 characters").into());
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PasswordChange {
    #[serde(default)]
    old_password: Option<String>,
    password: String,
}

/// UAA's `PUT /Users/{id}/password`. Users change their own with the old password;
/// administrators set anyone's without it. Every other login of the user is revoked.
async fn change_password(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    body: Body,
) -> CfResult<Json<Value>> {
    let u = user_row(&c, &guid).await?;
    let own = u.guid == access.user.guid;
    if !own {
        access.require_admin()?;
    }
    let req: PasswordChange = parse_json(&body)?;
    check_password(&req.password)?;
    if own && !access.is_admin() {
        let old = req.old_password.as_deref().unwrap_or_default();
        if !crate::auth::verify_password(old, &u.password_hash) {
            return Err(CfError(ApiError::new(
                401,
                1000,
                "CF-InvalidAuthToken",
                "the old password is wrong",
            )));
        }
    }
    let hash = crate::auth::hash_password(&req.password)?;
    c.db.set_password_hash(&u.guid, &hash)
        .await
        .map_err(db_err)?;
    let revoked = if own {
        c.db.delete_other_sessions(&u.guid, &access.user.session)
            .await
    } else {
        c.db.delete_sessions_of(&u.guid).await
    }
    .map_err(db_err)?;
    audit(
        &c,
        &access.user,
        "audit.user.password_change",
        &u.guid,
        "user",
        &u.username,
        None,
    )
    .await;
    Ok(Json(
        json!({"status": "ok", "message": "password updated", "revoked_sessions": revoked}),
    ))
}

// ---------------------------------------------------------------- organizations

#[derive(Deserialize)]
pub(crate) struct NameOnly {
    name: String,
}

/// `PUT /v2/organizations/{guid}`: a new name (org managers) and/or a quota
/// (administrators).
#[derive(Deserialize)]
pub(crate) struct OrgUpdate {
    name: Option<String>,
    quota_definition_guid: Option<String>,
}

async fn create_org(
    State(c): State<Shared>,
    access: Access,
    body: Body,
) -> CfResult<(StatusCode, Json<Value>)> {
    let flag =
        c.db.feature_flag("user_org_creation")
            .await
            .map_err(db_err)?;
    if !access.is_admin() && !flag {
        let mut e = ApiError::not_authorized();
        e.description.push_str(": only administrators create organizations (the user_org_creation feature flag is off)");
        return Err(e.into());
    }
    let req: NameOnly = parse_json(&body)?;
    check_name("organization", &req.name)?;
    let o =
        c.db.create_org(&req.name)
            .await
            .map_err(taken_or_db_err(|| {
                name_taken("Organization", 30002, &req.name)
            }))?;
    if !access.is_admin() {
        // Whoever creates an org under the flag manages it.
        for role in [OrgRole::User, OrgRole::Manager] {
            c.db.add_org_role(&o.guid, &access.user.guid, role)
                .await
                .map_err(db_err)?;
        }
    }
    audit(
        &c,
        &access.user,
        "audit.organization.create",
        &o.guid,
        "organization",
        &o.name,
        None,
    )
    .await;
    Ok((StatusCode::CREATED, Json(org_json(&o))))
}

fn name_taken(kind: &str, code: u32, name: &str) -> CfError {
    CfError(ApiError::new(
        400,
        code,
        &format!("CF-{kind}NameTaken"),
        format!("The {} name is taken: {name}", kind.to_ascii_lowercase()),
    ))
}

async fn update_org(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    body: Body,
) -> CfResult<(StatusCode, Json<Value>)> {
    let o = org(&c, &guid).await?;
    access.require(Action::Update, Scope::Org(&o.guid))?;
    let req: OrgUpdate = parse_json(&body)?;
    if let Some(quota) = &req.quota_definition_guid {
        crate::quotas::assign_org_quota(&c, &access, &o, quota).await?;
    }
    let Some(name) = req.name else {
        return Ok((StatusCode::CREATED, Json(org_json(&org(&c, &guid).await?))));
    };
    check_name("organization", &name)?;
    let o =
        c.db.rename_org(&o.guid, &name)
            .await
            .map_err(taken_or_db_err(|| name_taken("Organization", 30002, &name)))?
            .ok_or_else(|| ApiError::not_found("organization", &guid))?;
    audit(
        &c,
        &access.user,
        "audit.organization.update",
        &o.guid,
        "organization",
        &o.name,
        None,
    )
    .await;
    Ok((StatusCode::CREATED, Json(org_json(&o))))
}

async fn delete_org(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<StatusCode> {
    let o = org(&c, &guid).await?;
    access.require(Action::Delete, Scope::Org(&o.guid))?;
    let recursive = ListParams::parse(q.as_deref())?.get("recursive") == Some("true");
    let spaces =
        c.db.list_spaces(&Filter {
            organization_guid: Some(o.guid.clone()),
            ..Default::default()
        })
        .await
        .map_err(db_err)?;
    if !spaces.is_empty() && !recursive {
        let names: Vec<&str> = spaces.iter().map(|s| s.name.as_str()).collect();
        return Err(ApiError::association_not_empty(format!(
            "organization {} still has spaces ({}); delete them first or delete recursively (`strato delete-org --recursive`)",
            o.name,
            names.join(", ")
        ))
        .into());
    }
    for s in &spaces {
        empty_space(&c, &access, s).await?;
        c.db.delete_space(&s.guid).await.map_err(db_err)?;
    }
    c.db.delete_org(&o.guid).await.map_err(db_err)?;
    audit(
        &c,
        &access.user,
        "audit.organization.delete-request",
        &o.guid,
        "organization",
        &o.name,
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes everything in a space: apps (stopped first), service instances (unbound and
/// deprovisioned), routes.
async fn empty_space(c: &Shared, access: &Access, s: &Space) -> CfResult<()> {
    let in_space = Filter {
        space_guid: Some(s.guid.clone()),
        ..Default::default()
    };
    for a in c.db.list_apps(&in_space).await.map_err(db_err)? {
        crate::api::remove_app(c, &access.user, &a, true).await?;
    }
    for si in
        c.db.list_service_instances(&in_space)
            .await
            .map_err(db_err)?
    {
        crate::services::remove_instance(c, &access.user, &si, true).await?;
    }
    for r in c.db.list_routes(&in_space).await.map_err(db_err)? {
        c.db.delete_route(&r.guid).await.map_err(db_err)?;
    }
    Ok(())
}

/// What still lives in a space, for the refusal to delete it.
async fn space_contents(c: &Shared, s: &Space) -> CfResult<Vec<String>> {
    let in_space = Filter {
        space_guid: Some(s.guid.clone()),
        ..Default::default()
    };
    let mut out = Vec::new();
    let apps = c.db.list_apps(&in_space).await.map_err(db_err)?.len();
    let services =
        c.db.list_service_instances(&in_space)
            .await
            .map_err(db_err)?
            .len();
    let routes = c.db.list_routes(&in_space).await.map_err(db_err)?.len();
    for (n, what) in [
        (apps, "app(s)"),
        (services, "service(s)"),
        (routes, "route(s)"),
    ] {
        if n > 0 {
            out.push(format!("{n} {what}"));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- spaces

#[derive(Deserialize)]
pub(crate) struct NewSpace {
    name: String,
    organization_guid: String,
}

async fn create_space(
    State(c): State<Shared>,
    access: Access,
    body: Body,
) -> CfResult<(StatusCode, Json<Value>)> {
    let req: NewSpace = parse_json(&body)?;
    let o = org(&c, &req.organization_guid).await?;
    access.require(Action::CreateSpace, Scope::Org(&o.guid))?;
    check_name("space", &req.name)?;
    let s =
        c.db.create_space(&o.guid, &req.name)
            .await
            .map_err(taken_or_db_err(|| name_taken("Space", 40002, &req.name)))?;
    audit(
        &c,
        &access.user,
        "audit.space.create",
        &s.guid,
        "space",
        &s.name,
        Some(&s.guid),
    )
    .await;
    Ok((StatusCode::CREATED, Json(space_json(&s))))
}

async fn update_space(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    body: Body,
) -> CfResult<(StatusCode, Json<Value>)> {
    let s = access.space(&c, Action::Update, &guid).await?;
    let req: NameOnly = parse_json(&body)?;
    check_name("space", &req.name)?;
    let s =
        c.db.rename_space(&s.guid, &req.name)
            .await
            .map_err(taken_or_db_err(|| name_taken("Space", 40002, &req.name)))?
            .ok_or_else(|| ApiError::not_found("space", &guid))?;
    audit(
        &c,
        &access.user,
        "audit.space.update",
        &s.guid,
        "space",
        &s.name,
        Some(&s.guid),
    )
    .await;
    Ok((StatusCode::CREATED, Json(space_json(&s))))
}

async fn delete_space(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
) -> CfResult<StatusCode> {
    let s = access.space(&c, Action::Delete, &guid).await?;
    let recursive = ListParams::parse(q.as_deref())?.get("recursive") == Some("true");
    let contents = space_contents(&c, &s).await?;
    if !contents.is_empty() && !recursive {
        return Err(ApiError::association_not_empty(format!(
            "space {} still has {}; delete them first or delete recursively (`strato delete-space --recursive`)",
            s.name,
            contents.join(", ")
        ))
        .into());
    }
    empty_space(&c, &access, &s).await?;
    c.db.delete_space(&s.guid).await.map_err(db_err)?;
    audit(
        &c,
        &access.user,
        "audit.space.delete-request",
        &s.guid,
        "space",
        &s.name,
        Some(&s.guid),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- members

#[derive(Deserialize)]
pub(crate) struct ByName {
    username: String,
}

async fn org_members(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
    role: OrgRole,
) -> CfResult<Json<Value>> {
    let o = org(&c, &guid).await?;
    access.require(Action::Read, Scope::Org(&o.guid))?;
    let p = ListParams::parse(q.as_deref())?;
    let users = c.db.org_members(&o.guid, role).await.map_err(db_err)?;
    Ok(user_list(
        &format!("/v2/organizations/{guid}/{}", role.as_str()),
        &p,
        &users,
    ))
}

async fn org_add_by_name(
    c: State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    body: Body,
    role: OrgRole,
) -> CfResult<(StatusCode, Json<Value>)> {
    let o = org(&c, &guid).await?;
    access.require(Action::ManageRoles, Scope::Org(&o.guid))?;
    let req: ByName = parse_json(&body)?;
    let u = user_named(&c, &req.username).await?;
    grant_org(&c, &access, &o, &u, role).await
}

async fn org_add(
    State(c): State<Shared>,
    access: Access,
    Path((guid, user_guid)): Path<(String, String)>,
    role: OrgRole,
) -> CfResult<(StatusCode, Json<Value>)> {
    let o = org(&c, &guid).await?;
    access.require(Action::ManageRoles, Scope::Org(&o.guid))?;
    let u = user_row(&c, &user_guid).await?;
    grant_org(&c, &access, &o, &u, role).await
}

/// Gives the role; any org role makes the user a member (`users`) too, as in CF.
async fn grant_org(
    c: &Shared,
    access: &Access,
    o: &Organization,
    u: &User,
    role: OrgRole,
) -> CfResult<(StatusCode, Json<Value>)> {
    c.db.add_org_role(&o.guid, &u.guid, OrgRole::User)
        .await
        .map_err(db_err)?;
    c.db.add_org_role(&o.guid, &u.guid, role)
        .await
        .map_err(db_err)?;
    audit(
        c,
        &access.user,
        &format!("audit.organization.add_{}", role.as_str()),
        &o.guid,
        "organization",
        &u.username,
        None,
    )
    .await;
    Ok((StatusCode::CREATED, Json(org_json(o))))
}

async fn org_remove(
    State(c): State<Shared>,
    access: Access,
    Path((guid, user_guid)): Path<(String, String)>,
    role: OrgRole,
) -> CfResult<StatusCode> {
    let o = org(&c, &guid).await?;
    access.require(Action::ManageRoles, Scope::Org(&o.guid))?;
    let u = user_row(&c, &user_guid).await?;
    c.db.remove_org_role(&o.guid, &u.guid, role)
        .await
        .map_err(db_err)?;
    if role == OrgRole::User {
        // Leaving the org means leaving its spaces and its other roles.
        for r in OrgRole::ALL {
            c.db.remove_org_role(&o.guid, &u.guid, r)
                .await
                .map_err(db_err)?;
        }
        let spaces =
            c.db.list_spaces(&Filter {
                organization_guid: Some(o.guid.clone()),
                ..Default::default()
            })
            .await
            .map_err(db_err)?;
        for s in spaces {
            for r in SpaceRole::ALL {
                c.db.remove_space_role(&s.guid, &u.guid, r)
                    .await
                    .map_err(db_err)?;
            }
        }
    }
    audit(
        &c,
        &access.user,
        &format!("audit.organization.remove_{}", role.as_str()),
        &o.guid,
        "organization",
        &u.username,
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn space_members(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    RawQuery(q): RawQuery,
    role: SpaceRole,
) -> CfResult<Json<Value>> {
    let s = access.space(&c, Action::Read, &guid).await?;
    let p = ListParams::parse(q.as_deref())?;
    let users = c.db.space_members(&s.guid, role).await.map_err(db_err)?;
    Ok(user_list(
        &format!("/v2/spaces/{guid}/{}", role.as_str()),
        &p,
        &users,
    ))
}

async fn space_add_by_name(
    c: State<Shared>,
    access: Access,
    Path(guid): Path<String>,
    body: Body,
    role: SpaceRole,
) -> CfResult<(StatusCode, Json<Value>)> {
    let s = access.space(&c, Action::ManageRoles, &guid).await?;
    let req: ByName = parse_json(&body)?;
    let u = user_named(&c, &req.username).await?;
    grant_space(&c, &access, &s, &u, role).await
}

async fn space_add(
    State(c): State<Shared>,
    access: Access,
    Path((guid, user_guid)): Path<(String, String)>,
    role: SpaceRole,
) -> CfResult<(StatusCode, Json<Value>)> {
    let s = access.space(&c, Action::ManageRoles, &guid).await?;
    let u = user_row(&c, &user_guid).await?;
    grant_space(&c, &access, &s, &u, role).await
}

/// Gives a space role to a member of the space's org (CF refuses anyone else).
async fn grant_space(
    c: &Shared,
    access: &Access,
    s: &Space,
    u: &User,
    role: SpaceRole,
) -> CfResult<(StatusCode, Json<Value>)> {
    let members = c.db.memberships(&u.guid).await.map_err(db_err)?;
    let in_org = members
        .orgs
        .iter()
        .any(|(o, r)| *o == s.organization_guid && *r == OrgRole::User);
    if !in_org {
        let o = org(c, &s.organization_guid).await?;
        return Err(CfError(ApiError::new(
            400,
            1002,
            "CF-InvalidRelation",
            format!(
                "{} is not a member of organization {}; add them first (`strato link-user-org {} {}`)",
                u.username, o.name, u.username, o.name
            ),
        )));
    }
    c.db.add_space_role(&s.guid, &u.guid, role)
        .await
        .map_err(db_err)?;
    audit(
        c,
        &access.user,
        &format!("audit.space.add_{}", role.as_str()),
        &s.guid,
        "space",
        &u.username,
        Some(&s.guid),
    )
    .await;
    Ok((StatusCode::CREATED, Json(space_json(s))))
}

async fn space_remove(
    State(c): State<Shared>,
    access: Access,
    Path((guid, user_guid)): Path<(String, String)>,
    role: SpaceRole,
) -> CfResult<StatusCode> {
    let s = access.space(&c, Action::ManageRoles, &guid).await?;
    let u = user_row(&c, &user_guid).await?;
    c.db.remove_space_role(&s.guid, &u.guid, role)
        .await
        .map_err(db_err)?;
    audit(
        &c,
        &access.user,
        &format!("audit.space.remove_{}", role.as_str()),
        &s.guid,
        "space",
        &u.username,
        Some(&s.guid),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- feature flags

fn flag_json(name: &str, enabled: bool) -> Value {
    json!({"name": name, "enabled": enabled, "error_message": null, "url": format!("/v2/config/feature_flags/{name}")})
}

fn known_flag(name: &str) -> CfResult<()> {
    if FEATURE_FLAGS.iter().any(|(n, _)| *n == name) {
        Ok(())
    } else {
        Err(CfError(ApiError::new(
            404,
            330000,
            "CF-FeatureFlagNotFound",
            format!(
                "there is no feature flag {name}; known: {}",
                FEATURE_FLAGS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )))
    }
}

async fn list_flags(State(c): State<Shared>, _access: Access) -> CfResult<Json<Value>> {
    let mut out = Vec::new();
    for (name, _) in FEATURE_FLAGS {
        out.push(flag_json(
            name,
            c.db.feature_flag(name).await.map_err(db_err)?,
        ));
    }
    Ok(Json(Value::Array(out)))
}

async fn get_flag(
    State(c): State<Shared>,
    _access: Access,
    Path(name): Path<String>,
) -> CfResult<Json<Value>> {
    known_flag(&name)?;
    let on = c.db.feature_flag(&name).await.map_err(db_err)?;
    Ok(Json(flag_json(&name, on)))
}

#[derive(Deserialize)]
pub(crate) struct FlagUpdate {
    enabled: bool,
}

async fn set_flag(
    State(c): State<Shared>,
    access: Access,
    Path(name): Path<String>,
    body: Body,
) -> CfResult<Json<Value>> {
    access.require_admin()?;
    known_flag(&name)?;
    let req: FlagUpdate = parse_json(&body)?;
    c.db.set_feature_flag(&name, req.enabled)
        .await
        .map_err(db_err)?;
    audit(
        &c,
        &access.user,
        "audit.feature_flag.update",
        &name,
        "feature_flag",
        &name,
        None,
    )
    .await;
    Ok(Json(flag_json(&name, req.enabled)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("space", "dev").is_ok());
        assert!(check_name("space", "").is_err());
        assert!(check_name("space", "a/b").is_err());
        assert!(check_password("").is_err());
    }
}
