//! The UAA side of the API: `POST /oauth/token` (password and refresh_token grants for
//! client `cf`; the client_credentials grant for clients an administrator registered, see
//! [`crate::clients`]), `GET /userinfo`, and `DELETE /oauth/token/revoke/{session}`.
//!
//! Every password login opens a session (a row in the database); both tokens name it, and
//! a request is only accepted while its session exists — so logout, a password change or
//! deleting the user revoke tokens at once, not when they expire. Failed logins are
//! throttled per user name and per client address ([`crate::throttle`]).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::Method;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use strato_core::ApiError;

use crate::api::{ep, Endpoint};
use crate::auth::CurrentUser;
use crate::cf::{db_err, CfError, CfResult};
use crate::Shared;

pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        ep(Method::POST, "/oauth/token", token),
        ep(Method::DELETE, "/oauth/token/revoke/{session}", revoke),
        ep(Method::GET, "/userinfo", userinfo),
    ]
}

/// True when the request carries the cluster routers' proof (compared in constant time).
fn from_a_router(parts: &Parts, c: &Shared) -> bool {
    let (Some(proof), Some(sent)) = (
        c.cfg.router_proof.as_deref(),
        parts.headers.get("x-strato-router"),
    ) else {
        return false;
    };
    let (a, b) = (proof.as_bytes(), sent.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The address a request came from: the peer, or — when the peer is the local router or
/// one of the cluster's (it sends their proof) — the last `X-Forwarded-For` entry, which
/// the router appends.
pub struct ClientAddress(pub Option<IpAddr>);

impl FromRequestParts<Shared> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, c: &Shared) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded = || {
            parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|ip| ip.trim().parse::<IpAddr>().ok())
        };
        Ok(ClientAddress(match peer {
            Some(p) if p.is_loopback() || from_a_router(parts, c) => forwarded().or(Some(p)),
            other => other,
        }))
    }
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// An error in UAA's shape (`{error, error_description}`).
pub(crate) fn uaa_error(status: StatusCode, error: &str, desc: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": desc})),
    )
        .into_response()
}

fn base64_decode(s: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// `(id, secret)` of an `Authorization: Basic` header (the secret may contain ':').
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64_decode(encoded)?;
    Some(match decoded.split_once(':') {
        Some((id, secret)) => (id.to_string(), secret.to_string()),
        None => (decoded, String::new()),
    })
}

async fn token(
    State(c): State<Shared>,
    ClientAddress(addr): ClientAddress,
    headers: HeaderMap,
    Form(f): Form<TokenForm>,
) -> Response {
    // The client's id and secret: HTTP Basic auth, else the form fields.
    let (client, secret) = match basic_credentials(&headers) {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (f.client_id.clone(), f.client_secret.clone()),
    };
    let address = addr.map(|a| a.to_string()).unwrap_or_default();
    if f.grant_type == crate::auth::CLIENT_CREDENTIALS {
        return crate::clients::client_credentials_grant(
            &c,
            client.as_deref(),
            secret.as_deref(),
            &address,
        )
        .await;
    }
    // Users log in through client `cf`, whose secret is empty.
    if client.as_deref().unwrap_or("cf") != "cf" {
        return uaa_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client; use client 'cf' with an empty secret (registered clients only use the client_credentials grant)",
        );
    }
    match f.grant_type.as_str() {
        "password" => password_grant(&c, &f, &address).await,
        "refresh_token" => refresh_grant(&c, &f).await,
        other => uaa_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("grant type '{other}' is not supported; use password, refresh_token or client_credentials"),
        ),
    }
}

async fn password_grant(c: &Shared, f: &TokenForm, address: &str) -> Response {
    let (Some(name), Some(pw)) = (f.username.as_deref(), f.password.as_deref()) else {
        return uaa_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the password grant needs username and password",
        );
    };
    let user_key = format!("user:{name}");
    let keys = [user_key.clone(), format!("addr:{address}")];
    if let Err(wait) = c.throttle.check(&keys) {
        let secs = wait.as_secs().max(1);
        let mut r = uaa_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            &format!(
                "too many failed logins for {name} or from this address; try again in {secs} s"
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let user = match c.db.user_by_name(name).await {
        Ok(Some(u)) if crate::auth::verify_password(pw, &u.password_hash) => u,
        Ok(_) => {
            c.throttle.failed(&keys);
            tracing::info!(user = %name, address, "failed login");
            return uaa_error(StatusCode::UNAUTHORIZED, "unauthorized", "Bad credentials");
        }
        Err(e) => return db_err(e).into_response(),
    };
    c.throttle.succeeded(&user_key);
    let session = strato_core::new_guid();
    if let Err(e) = c.db.create_session(&session, &user.guid, address).await {
        return db_err(e).into_response();
    }
    match c
        .auth
        .issue(&user.guid, &user.username, user.is_admin(), &session)
    {
        Ok(t) => Json(t).into_response(),
        Err(e) => CfError(e).into_response(),
    }
}

async fn refresh_grant(c: &Shared, f: &TokenForm) -> Response {
    let Some(rt) = f.refresh_token.as_deref() else {
        return uaa_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the refresh_token grant needs refresh_token",
        );
    };
    let invalid = || {
        uaa_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the refresh token is invalid, expired or revoked; log in again",
        )
    };
    let Ok(claims) = c.auth.verify(rt, "refresh") else {
        return invalid();
    };
    match c.db.session_is_live(&claims.sid, &claims.user_id).await {
        Ok(true) => {}
        Ok(false) => return invalid(),
        Err(e) => return db_err(e).into_response(),
    }
    let user = match c.db.user_by_guid(&claims.user_id).await {
        Ok(Some(u)) => u,
        Ok(None) => return invalid(),
        Err(e) => return db_err(e).into_response(),
    };
    match c
        .auth
        .issue(&user.guid, &user.username, user.is_admin(), &claims.sid)
    {
        Ok(t) => Json(t).into_response(),
        Err(e) => CfError(e).into_response(),
    }
}

/// Ends a session: its access and refresh tokens stop working at once. Users end their
/// own sessions; administrators anyone's.
async fn revoke(
    State(c): State<Shared>,
    user: CurrentUser,
    Path(session): Path<String>,
) -> CfResult<StatusCode> {
    if session != user.session && !user.admin {
        return Err(ApiError::not_authorized().into());
    }
    c.db.delete_session(&session).await.map_err(db_err)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn userinfo(user: CurrentUser) -> Json<Value> {
    Json(json!({
        "user_id": user.guid, "sub": user.guid, "user_name": user.username,
        "name": user.username, "admin": user.admin,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_decodes() {
        assert_eq!(base64_decode("Y2Y6").as_deref(), Some("cf:"));
        assert!(base64_decode("!!!").is_none());
    }

    #[test]
    fn basic_credentials_keep_colons_in_the_secret() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Y2k6YTpi"),
        );
        assert_eq!(basic_credentials(&h), Some(("ci".into(), "a:b".into())));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(basic_credentials(&h), None);
    }
}
