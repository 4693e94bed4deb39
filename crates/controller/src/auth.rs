//! Passwords and tokens: argon2id hashes, HS256 JWT access and refresh tokens (UAA shapes),
//! and the extractor that turns a bearer header into the signed-in user — or, for a
//! `client_credentials` token, into the registered client acting as an administrator.

use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use strato_core::ApiError;

use crate::cf::CfError;
use crate::Shared;

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::server(format!("hashing password: {e}")))
}

/// True when `password` matches the stored argon2 hash.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The claims of Strato's tokens (a subset of UAA's).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub jti: String,
    pub sub: String,
    pub user_id: String,
    pub user_name: String,
    pub client_id: String,
    pub scope: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    /// `access` or `refresh`.
    pub typ: String,
    /// The login session both tokens belong to; revoked sessions fail every check. For a
    /// `client_credentials` token: the guid of the registered client.
    #[serde(default)]
    pub sid: String,
    /// UAA's claim: `client_credentials` for a client's own token; empty for users'.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grant_type: String,
}

/// The `grant_type` claim of a registered client's token.
pub const CLIENT_CREDENTIALS: &str = "client_credentials";

/// The authority that makes a registered client an administrator (the only kind allowed).
pub const ADMIN_AUTHORITY: &str = "cloud_controller.admin";

/// Longest life of a client's token (shorter when the access token TTL is shorter); it
/// has no refresh token: the client authenticates again.
const CLIENT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// What `/oauth/token` returns for the `client_credentials` grant: no refresh token.
#[derive(Debug, Serialize)]
pub struct ClientTokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: String,
    pub jti: String,
}

/// Issues and checks tokens.
pub struct Tokens {
    enc: EncodingKey,
    dec: DecodingKey,
    ttl: Duration,
}

/// What `/oauth/token` returns.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub refresh_token: String,
    pub expires_in: u64,
    pub scope: String,
    pub jti: String,
}

impl Tokens {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        Tokens {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            ttl,
        }
    }

    fn sign(
        &self,
        user_guid: &str,
        username: &str,
        admin: bool,
        typ: &str,
        ttl: Duration,
        sid: &str,
    ) -> Result<(String, String), ApiError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut scope = vec![
            "cloud_controller.read".to_string(),
            "cloud_controller.write".to_string(),
            "openid".to_string(),
        ];
        if admin {
            scope.push("cloud_controller.admin".to_string());
        }
        let jti = strato_core::new_guid();
        let claims = Claims {
            jti: jti.clone(),
            sub: user_guid.to_string(),
            user_id: user_guid.to_string(),
            user_name: username.to_string(),
            client_id: "cf".to_string(),
            scope,
            iat: now,
            exp: now + ttl.as_secs() as i64,
            typ: typ.to_string(),
            sid: sid.to_string(),
            grant_type: String::new(),
        };
        Ok((self.encode(&claims)?, jti))
    }

    fn encode(&self, claims: &Claims) -> Result<String, ApiError> {
        jsonwebtoken::encode(&Header::default(), claims, &self.enc)
            .map_err(|e| ApiError::server(format!("signing token: {e}")))
    }

    /// A short-lived access token for registered client `client_id` (row `client_guid`)
    /// with its authorities as scopes.
    pub fn issue_client(
        &self,
        client_guid: &str,
        client_id: &str,
        authorities: &[String],
    ) -> Result<ClientTokenResponse, ApiError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let ttl = self.ttl.min(CLIENT_TOKEN_TTL);
        let claims = Claims {
            jti: strato_core::new_guid(),
            sub: client_id.to_string(),
            user_id: String::new(),
            user_name: String::new(),
            client_id: client_id.to_string(),
            scope: authorities.to_vec(),
            iat: now,
            exp: now + ttl.as_secs() as i64,
            typ: "access".to_string(),
            sid: client_guid.to_string(),
            grant_type: CLIENT_CREDENTIALS.to_string(),
        };
        Ok(ClientTokenResponse {
            access_token: self.encode(&claims)?,
            token_type: "bearer",
            expires_in: ttl.as_secs(),
            scope: authorities.join(" "),
            jti: claims.jti,
        })
    }

    /// A fresh access + refresh token pair for login session `sid`.
    pub fn issue(
        &self,
        user_guid: &str,
        username: &str,
        admin: bool,
        sid: &str,
    ) -> Result<TokenResponse, ApiError> {
        let (access, jti) = self.sign(user_guid, username, admin, "access", self.ttl, sid)?;
        let (refresh, _) = self.sign(
            user_guid,
            username,
            admin,
            "refresh",
            Duration::from_secs(30 * 24 * 3600),
            sid,
        )?;
        let mut scope = "cloud_controller.read cloud_controller.write openid".to_string();
        if admin {
            scope.push_str(" cloud_controller.admin");
        }
        Ok(TokenResponse {
            access_token: access,
            token_type: "bearer",
            refresh_token: refresh,
            expires_in: self.ttl.as_secs(),
            scope,
            jti,
        })
    }

    /// Checks signature, expiry and type.
    pub fn verify(&self, token: &str, typ: &str) -> Result<Claims, ApiError> {
        let mut v = Validation::default();
        v.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &v)
            .map_err(|_| ApiError::not_authenticated())?;
        if data.claims.typ != typ {
            return Err(ApiError::not_authenticated());
        }
        Ok(data.claims)
    }
}

/// The signed-in user of a request. Handlers that take it require a valid bearer token.
#[derive(Clone, Debug)]
pub struct CurrentUser {
    pub guid: String,
    pub username: String,
    pub admin: bool,
    /// The login session of the request's token.
    pub session: String,
    /// Where the request came from (the client's address), for audit events.
    pub origin: Option<std::net::IpAddr>,
}

impl FromRequestParts<Shared> for CurrentUser {
    type Rejection = CfError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                CfError(ApiError::new(
                    401,
                    1000,
                    "CF-NotAuthenticated",
                    "Authentication error: log in with `strato login`",
                ))
            })?;
        let token = header
            .strip_prefix("bearer ")
            .or_else(|| header.strip_prefix("Bearer "))
            .ok_or_else(|| CfError(ApiError::not_authenticated()))?;
        let claims = state.auth.verify(token.trim(), "access")?;
        let Ok(crate::uaa::ClientAddress(origin)) =
            crate::uaa::ClientAddress::from_request_parts(parts, state).await;
        if claims.grant_type == CLIENT_CREDENTIALS {
            return client_of(state, &claims)
                .await
                .map(|user| CurrentUser { origin, ..user });
        }
        let live = state
            .db
            .session_is_live(&claims.sid, &claims.user_id)
            .await
            .map_err(crate::cf::db_err)?;
        if !live {
            return Err(CfError(ApiError::new(
                401,
                1000,
                "CF-InvalidAuthToken",
                "Invalid Auth Token: this login was ended (logout, password change or a new token-signing secret); log in again with `strato login`",
            )));
        }
        let user = state
            .db
            .user_by_guid(&claims.user_id)
            .await
            .map_err(crate::cf::db_err)?
            .ok_or_else(|| CfError(ApiError::not_authenticated()))?;
        Ok(CurrentUser {
            guid: user.guid.clone(),
            username: user.username.clone(),
            admin: user.is_admin(),
            session: claims.sid,
            origin,
        })
    }
}

/// The registered client a `client_credentials` token names, acting as an administrator
/// (its guid stands for the user's, its id for the user name). A deleted client — or one
/// that lost the admin authority — fails every request at once.
async fn client_of(state: &Shared, claims: &Claims) -> Result<CurrentUser, CfError> {
    let client = state
        .db
        .oauth_client_by_guid(&claims.sid)
        .await
        .map_err(crate::cf::db_err)?
        .filter(|c| c.client_id == claims.client_id && c.has_authority(ADMIN_AUTHORITY))
        .ok_or_else(|| {
            CfError(ApiError::new(
                401,
                1000,
                "CF-InvalidAuthToken",
                "Invalid Auth Token: the OAuth client of this token was deleted; register it again and get a new token",
            ))
        })?;
    Ok(CurrentUser {
        guid: client.guid.clone(),
        username: client.client_id,
        admin: true,
        session: client.guid,
        origin: None,
    })
}

/// The user if the request carries a valid token, else `None` (for `/v2/info`).
pub struct MaybeUser(pub Option<CurrentUser>);

impl FromRequestParts<Shared> for MaybeUser {
    type Rejection = CfError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        Ok(MaybeUser(
            CurrentUser::from_request_parts(parts, state).await.ok(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("s3cret", "not a hash"));
    }

    #[test]
    fn tokens_round_trip_and_refuse_tampering() {
        let t = Tokens::new(b"k1", Duration::from_secs(60));
        let r = t.issue("g", "admin", true, "s1").unwrap();
        let c = t.verify(&r.access_token, "access").unwrap();
        assert_eq!(c.user_name, "admin");
        assert_eq!(c.sid, "s1", "both tokens name their session");
        assert!(
            t.verify(&r.refresh_token, "access").is_err(),
            "a refresh token is not an access token"
        );
        assert!(t.verify(&r.refresh_token, "refresh").is_ok());
        let other = Tokens::new(b"k2", Duration::from_secs(60));
        assert!(other.verify(&r.access_token, "access").is_err());
        assert!(c.grant_type.is_empty(), "a user's token is not a client's");
    }

    #[test]
    fn client_tokens_are_short_lived_and_name_their_client() {
        let t = Tokens::new(b"k1", Duration::from_secs(7 * 24 * 3600));
        let r = t
            .issue_client("guid-1", "ci", &[ADMIN_AUTHORITY.to_string()])
            .unwrap();
        assert_eq!(r.expires_in, CLIENT_TOKEN_TTL.as_secs());
        assert_eq!(r.scope, ADMIN_AUTHORITY);
        let c = t.verify(&r.access_token, "access").unwrap();
        assert_eq!(c.grant_type, CLIENT_CREDENTIALS);
        assert_eq!((c.sid.as_str(), c.client_id.as_str()), ("guid-1", "ci"));
        assert!(t.verify(&r.access_token, "refresh").is_err());
    }
}
