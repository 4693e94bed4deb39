//! OAuth clients for tools and CI: an administrator registers a client
//! (`POST /oauth/clients`, UAA's shape), the tool trades its id and secret for a
//! short-lived access token with the `client_credentials` grant of `/oauth/token`, and the
//! rest of the API takes that token as an administrator's.
//!
//! Only clients with the `cloud_controller.admin` authority can be registered (a client
//! has no org or space roles, so nothing else would be useful). Secrets are stored as
//! argon2id hashes and never returned or logged. Every request with a client's token looks
//! the client up, so `DELETE /oauth/clients/{client_id}` revokes its tokens at once.
//! Failed client authentications are throttled like failed logins ([`crate::throttle`]).

use std::sync::OnceLock;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use strato_core::ApiError;
use strato_db::{NewOAuthClient, OAuthClient};

use crate::access::Access;
use crate::api::{audit, ep, parse_json, Endpoint};
use crate::auth::{hash_password, verify_password, ADMIN_AUTHORITY, CLIENT_CREDENTIALS};
use crate::cf::{db_err, taken_or_db_err, CfError, CfResult};
use crate::uaa::uaa_error;
use crate::Shared;

pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        ep(Method::POST, "/oauth/clients", create_client),
        ep(Method::GET, "/oauth/clients", list_clients),
        ep(Method::DELETE, "/oauth/clients/{client_id}", delete_client),
    ]
}

/// The built-in client of the `strato` and `cf` command line tools (password grant).
const BUILTIN_CLIENT: &str = "cf";

/// Authorities a registered client may hold; it must hold [`ADMIN_AUTHORITY`].
const KNOWN_AUTHORITIES: &[&str] = &[
    ADMIN_AUTHORITY,
    "cloud_controller.read",
    "cloud_controller.write",
];

/// `POST /oauth/clients`: UAA's client registration. Fields UAA knows and Strato does not
/// use (`scope`, `resource_ids`, `redirect_uri`, ...) are accepted and ignored.
#[derive(Deserialize)]
pub(crate) struct NewClient {
    client_id: String,
    client_secret: Option<String>,
    authorized_grant_types: Option<Vec<String>>,
    authorities: Option<Vec<String>>,
}

/// The registration after its checks: what is stored (but the secret's hash).
struct CheckedClient {
    client_id: String,
    secret: String,
    grant_types: Vec<String>,
    authorities: Vec<String>,
}

fn invalid(msg: impl Into<String>) -> CfError {
    CfError(ApiError::new(400, 10001, "CF-InvalidClient", msg))
}

fn check_client_id(id: &str) -> CfResult<()> {
    let ok_chars = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if id.is_empty() || id.len() > 100 || !ok_chars {
        return Err(invalid(
            "client_id must be 1 to 100 letters, digits, '.', '_' or '-'",
        ));
    }
    if id == BUILTIN_CLIENT {
        return Err(invalid(
            "client_id 'cf' is the built-in client of the command line tools; choose another",
        ));
    }
    Ok(())
}

impl NewClient {
    fn check(self) -> CfResult<CheckedClient> {
        check_client_id(&self.client_id)?;
        let secret = self.client_secret.unwrap_or_default();
        if secret.is_empty() || secret.len() > 1024 {
            return Err(invalid("client_secret must be 1 to 1024 characters"));
        }
        let grant_types = self
            .authorized_grant_types
            .unwrap_or_else(|| vec![CLIENT_CREDENTIALS.to_string()]);
        if grant_types.is_empty() || grant_types.iter().any(|g| g != CLIENT_CREDENTIALS) {
            return Err(invalid(format!(
                "authorized_grant_types must be [\"{CLIENT_CREDENTIALS}\"]: registered clients only use the client_credentials grant (users log in with client 'cf')"
            )));
        }
        let authorities = self.authorities.unwrap_or_default();
        if let Some(unknown) = authorities
            .iter()
            .find(|a| !KNOWN_AUTHORITIES.contains(&a.as_str()))
        {
            return Err(invalid(format!(
                "unknown authority '{unknown}'; authorities here: {}",
                KNOWN_AUTHORITIES.join(", ")
            )));
        }
        if !authorities.iter().any(|a| a == ADMIN_AUTHORITY) {
            return Err(invalid(format!(
                "only administrator clients can be registered: add \"{ADMIN_AUTHORITY}\" to authorities"
            )));
        }
        let mut dedup = Vec::new();
        for a in authorities {
            if !dedup.contains(&a) {
                dedup.push(a);
            }
        }
        Ok(CheckedClient {
            client_id: self.client_id,
            secret,
            grant_types: vec![CLIENT_CREDENTIALS.to_string()],
            authorities: dedup,
        })
    }
}

/// Reads and checks a registration body (for the `api_body` fuzz target).
pub(crate) fn parse_new_client(body: &[u8]) -> CfResult<()> {
    parse_json::<NewClient>(body)?.check().map(drop)
}

/// A client in UAA's shape; never the secret.
fn client_json(c: &OAuthClient) -> Value {
    json!({
        "client_id": c.client_id,
        "scope": ["uaa.none"],
        "resource_ids": ["none"],
        "authorized_grant_types": c.grant_types(),
        "authorities": c.authority_list(),
        "autoapprove": [],
        "created_at": c.created_at,
    })
}

async fn create_client(
    State(c): State<Shared>,
    access: Access,
    body: axum::body::Bytes,
) -> CfResult<(StatusCode, Json<Value>)> {
    access.require_admin()?;
    let new = parse_json::<NewClient>(&body)?.check()?;
    let secret = new.secret;
    let secret_hash = tokio::task::spawn_blocking(move || hash_password(&secret))
        .await
        .map_err(|e| ApiError::server(e.to_string()))??;
    let client =
        c.db.create_oauth_client(&NewOAuthClient {
            client_id: new.client_id.clone(),
            secret_hash,
            authorized_grant_types: new.grant_types,
            authorities: new.authorities,
            created_by: access.user.guid.clone(),
        })
        .await
        .map_err(taken_or_db_err(|| {
            ApiError::new(
                409,
                10001,
                "CF-ClientAlreadyExists",
                format!(
                    "the OAuth client '{}' already exists; delete it first or choose another client_id",
                    new.client_id
                ),
            )
        }))?;
    record(&c, &access, "audit.oauth_client.create", &client).await;
    Ok((StatusCode::CREATED, Json(client_json(&client))))
}

async fn list_clients(State(c): State<Shared>, access: Access) -> CfResult<Json<Value>> {
    access.require_admin()?;
    let clients = c.db.list_oauth_clients().await.map_err(db_err)?;
    Ok(Json(json!({
        "resources": clients.iter().map(client_json).collect::<Vec<_>>(),
        "startIndex": 1,
        "itemsPerPage": clients.len(),
        "totalResults": clients.len(),
        "schemas": ["http://cloudfoundry.org/schema/scim/oauth-clients-1.0"],
    })))
}

/// UAA answers a delete with the client that was deleted.
async fn delete_client(
    State(c): State<Shared>,
    access: Access,
    Path(client_id): Path<String>,
) -> CfResult<Json<Value>> {
    access.require_admin()?;
    let client =
        c.db.oauth_client_by_id(&client_id)
            .await
            .map_err(db_err)?
            .ok_or_else(|| ApiError::not_found("OAuth client", &client_id))?;
    c.db.delete_oauth_client(&client.client_id)
        .await
        .map_err(db_err)?;
    record(&c, &access, "audit.oauth_client.delete", &client).await;
    Ok(Json(client_json(&client)))
}

async fn record(c: &Shared, access: &Access, kind: &str, client: &OAuthClient) {
    audit(
        c,
        &access.user,
        kind,
        &client.guid,
        "oauth_client",
        &client.client_id,
        None,
    )
    .await;
}

/// A hash to verify against when the client id is unknown, so that a wrong id takes as
/// long as a wrong secret (ids cannot be probed by timing).
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy secret").unwrap_or_default())
}

/// The `client_credentials` grant of `/oauth/token`: a registered client's id and secret
/// (from HTTP Basic auth or the form) for a short-lived access token.
pub(crate) async fn client_credentials_grant(
    c: &Shared,
    client_id: Option<&str>,
    secret: Option<&str>,
    address: &str,
) -> Response {
    let (Some(id), Some(secret)) = (client_id.filter(|i| !i.is_empty()), secret) else {
        return uaa_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "the client_credentials grant needs the client id and secret, by HTTP Basic auth or the client_id and client_secret fields",
        );
    };
    let client_key = format!("client:{id}");
    let keys = [client_key.clone(), format!("addr:{address}")];
    if let Err(wait) = c.throttle.check(&keys) {
        let secs = wait.as_secs().max(1);
        let mut r = uaa_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            &format!("too many failed authentications of client {id} or from this address; try again in {secs} s"),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let client = match c.db.oauth_client_by_id(id).await {
        Ok(found) => found,
        Err(e) => return db_err(e).into_response(),
    };
    let hash = client.as_ref().map(|c| c.secret_hash.clone());
    let secret = secret.to_string();
    let matches = tokio::task::spawn_blocking(move || {
        let hash = match &hash {
            Some(h) => h.as_str(),
            None => decoy_hash(),
        };
        verify_password(&secret, hash)
    })
    .await
    .unwrap_or(false);
    let client = match client {
        Some(client) if matches && client.has_authority(ADMIN_AUTHORITY) => client,
        _ => {
            c.throttle.failed(&keys);
            tracing::info!(client = %id, address, "failed client authentication");
            return uaa_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Bad credentials: unknown client or wrong secret",
            );
        }
    };
    c.throttle.succeeded(&client_key);
    match c
        .auth
        .issue_client(&client.guid, &client.client_id, &client.authority_list())
    {
        Ok(t) => Json(t).into_response(),
        Err(e) => CfError(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(body: Value) -> CfResult<CheckedClient> {
        serde_json::from_value::<NewClient>(body).unwrap().check()
    }

    #[test]
    fn only_admin_clients_with_the_client_credentials_grant_are_registered() {
        let ok = new(json!({"client_id": "ci", "client_secret": "s",
            "authorities": ["cloud_controller.admin", "cloud_controller.read", "cloud_controller.admin"]}))
        .unwrap();
        assert_eq!(ok.grant_types, vec![CLIENT_CREDENTIALS]);
        assert_eq!(ok.authorities.len(), 2, "duplicates are dropped");
        for (body, says) in [
            (
                json!({"client_id": "ci", "client_secret": "s", "authorities": ["cloud_controller.read"]}),
                "only administrator clients",
            ),
            (
                json!({"client_id": "ci", "client_secret": "s"}),
                "only administrator clients",
            ),
            (
                json!({"client_id": "ci", "client_secret": "s", "authorities": [ADMIN_AUTHORITY, "uaa.admin"]}),
                "unknown authority 'uaa.admin'",
            ),
            (
                json!({"client_id": "ci", "client_secret": "s", "authorities": [ADMIN_AUTHORITY], "authorized_grant_types": ["password"]}),
                "client_credentials",
            ),
            (
                json!({"client_id": "ci", "authorities": [ADMIN_AUTHORITY]}),
                "client_secret",
            ),
            (
                json!({"client_id": "cf", "client_secret": "s", "authorities": [ADMIN_AUTHORITY]}),
                "built-in",
            ),
            (
                json!({"client_id": "a b", "client_secret": "s", "authorities": [ADMIN_AUTHORITY]}),
                "letters, digits",
            ),
        ] {
            let e = new(body.clone())
                .err()
                .unwrap_or_else(|| panic!("{body} was accepted"));
            assert_eq!(e.0.status, 400);
            assert!(
                e.0.description.contains(says),
                "{body}: {}",
                e.0.description
            );
        }
    }
}
