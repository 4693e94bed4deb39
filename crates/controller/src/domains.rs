//! Domains: the shared ones every space routes in, and private domains (CF v2
//! `/v2/private_domains`) an organization owns, so its spaces can route their apps at
//! `HOST.example.com` besides the shared domain. Org
//! managers (and administrators) create and delete them; members of the org see them in
//! `/v2/domains`; routes on one can only be made by spaces of the owning org. The router
//! needs nothing: it routes any Host it has a registration for (HTTPS for such a domain
//! needs a custom certificate, `kato op custom_ssl_cert`).

use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use strato_core::{names, ApiError};
use strato_db::Domain;

use crate::access::{Access, Action, Scope};
use crate::api::{audit, ep, parse_json, Endpoint};
use crate::cf::{db_err, paginate, resource, taken_or_db_err, CfResult, ListParams};
use crate::Shared;

pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        ep(Method::GET, "/v2/domains", list),
        ep(Method::GET, "/v2/shared_domains", list),
        ep(Method::GET, "/v2/shared_domains/{guid}", get_shared),
        ep(Method::POST, "/v2/private_domains", create),
        ep(Method::GET, "/v2/private_domains", list),
        ep(Method::GET, "/v2/private_domains/{guid}", get),
        ep(Method::DELETE, "/v2/private_domains/{guid}", delete),
    ]
}

/// A domain in CF's shape: `shared_domains` or `private_domains` by what it is.
pub(crate) fn domain_json(d: &Domain) -> Value {
    match &d.owning_organization_guid {
        None => resource(
            "shared_domains",
            &d.guid,
            &d.created_at,
            &d.updated_at,
            json!({"name": d.name, "router_group_guid": null}),
        ),
        Some(org) => resource(
            "private_domains",
            &d.guid,
            &d.created_at,
            &d.updated_at,
            json!({"name": d.name, "owning_organization_guid": org}),
        ),
    }
}

/// Whether `access` may see domain `d` (shared ones: everybody).
pub(crate) fn visible(access: &Access, d: &Domain) -> bool {
    match &d.owning_organization_guid {
        None => true,
        Some(org) => access.can(Action::Read, Scope::Org(org)),
    }
}

#[derive(Deserialize)]
struct NewDomain {
    name: String,
    owning_organization_guid: String,
}

async fn create(
    State(c): State<Shared>,
    access: Access,
    body: axum::body::Bytes,
) -> CfResult<(StatusCode, Json<Value>)> {
    let want: NewDomain = parse_json(&body)?;
    let name = want.name.trim().trim_end_matches('.').to_ascii_lowercase();
    names::check_domain(&name).map_err(|m| ApiError::new(400, 130001, "CF-DomainInvalid", m))?;
    let org = crate::api::org(&c, &want.owning_organization_guid).await?;
    access.require(Action::Update, Scope::Org(&org.guid))?;
    let d =
        c.db.create_private_domain(&name, &org.guid)
            .await
            .map_err(taken_or_db_err(|| {
                ApiError::new(
                    400,
                    130003,
                    "CF-DomainNameTaken",
                    format!("the domain name is taken: {name}"),
                )
            }))?;
    audit(
        &c,
        &access.user,
        "audit.private_domain.create",
        &d.guid,
        "private_domain",
        &d.name,
        None,
    )
    .await;
    Ok((StatusCode::CREATED, Json(domain_json(&d))))
}

/// `/v2/domains` (shared and the private ones the user can see), `/v2/shared_domains`
/// and `/v2/private_domains`, by the path asked.
async fn list(
    State(c): State<Shared>,
    access: Access,
    uri: axum::http::Uri,
    RawQuery(q): RawQuery,
) -> CfResult<Json<Value>> {
    let p = ListParams::parse(q.as_deref())?;
    let ds =
        c.db.list_domains(&p.db_filter(&["name"])?)
            .await
            .map_err(db_err)?;
    let path = uri.path();
    let wanted = |d: &Domain| match path {
        "/v2/shared_domains" => d.owning_organization_guid.is_none(),
        "/v2/private_domains" => d.owning_organization_guid.is_some() && visible(&access, d),
        _ => visible(&access, d),
    };
    let items = ds.iter().filter(|d| wanted(d)).map(domain_json).collect();
    Ok(Json(paginate(path, &p, items)))
}

async fn get_shared(
    State(c): State<Shared>,
    _user: crate::auth::CurrentUser,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    let d =
        c.db.domain_by_guid(&guid)
            .await
            .map_err(db_err)?
            .filter(|d| d.owning_organization_guid.is_none())
            .ok_or_else(|| ApiError::not_found("domain", &guid))?;
    Ok(Json(domain_json(&d)))
}

async fn private_domain(c: &Shared, access: &Access, guid: &str) -> CfResult<Domain> {
    let d =
        c.db.domain_by_guid(guid)
            .await
            .map_err(db_err)?
            .filter(|d| d.owning_organization_guid.is_some())
            .ok_or_else(|| ApiError::not_found("private domain", guid))?;
    if let Some(org) = &d.owning_organization_guid {
        access.require(Action::Read, Scope::Org(org))?;
    }
    Ok(d)
}

async fn get(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<Json<Value>> {
    Ok(Json(domain_json(
        &private_domain(&c, &access, &guid).await?,
    )))
}

async fn delete(
    State(c): State<Shared>,
    access: Access,
    Path(guid): Path<String>,
) -> CfResult<StatusCode> {
    let d = private_domain(&c, &access, &guid).await?;
    if let Some(org) = &d.owning_organization_guid {
        access.require(Action::Update, Scope::Org(org))?;
    }
    let routes = c.db.count_routes_of_domain(&d.guid).await.map_err(db_err)?;
    if routes > 0 {
        return Err(ApiError::new(
            400,
            10006,
            "CF-AssociationNotEmpty",
            format!(
                "{} route(s) use the domain {}; delete them first (`strato delete-route`)",
                routes, d.name
            ),
        )
        .into());
    }
    c.db.delete_domain(&d.guid).await.map_err(db_err)?;
    audit(
        &c,
        &access.user,
        "audit.private_domain.delete",
        &d.guid,
        "private_domain",
        &d.name,
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
