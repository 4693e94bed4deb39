//! OAuth clients (`client_credentials` grant): register, look up, list, delete. Deleting a
//! client is what revokes its tokens: every request made with one looks the client up by
//! the guid the token names.

use crate::{conflict_or, Db, OAuthClient, Result};
use strato_core::{new_guid, now_rfc3339};

/// What registering a client records; the guid and times are given by
/// [`Db::create_oauth_client`].
#[derive(Clone, Debug, Default)]
pub struct NewOAuthClient {
    pub client_id: String,
    /// An argon2id hash, never the secret.
    pub secret_hash: String,
    pub authorized_grant_types: Vec<String>,
    pub authorities: Vec<String>,
    pub created_by: String,
}

impl Db {
    /// Registers a client; [`crate::DbError::Conflict`] when the id is taken.
    pub async fn create_oauth_client(&self, new: &NewOAuthClient) -> Result<OAuthClient> {
        let now = now_rfc3339();
        let list = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        let c = OAuthClient {
            guid: new_guid(),
            client_id: new.client_id.clone(),
            secret_hash: new.secret_hash.clone(),
            authorized_grant_types: list(&new.authorized_grant_types),
            authorities: list(&new.authorities),
            created_by: new.created_by.clone(),
            created_at: now.clone(),
            updated_at: now,
        };
        sqlx::query("INSERT INTO oauth_clients (guid, client_id, secret_hash, authorized_grant_types, authorities, created_by, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)")
            .bind(&c.guid).bind(&c.client_id).bind(&c.secret_hash).bind(&c.authorized_grant_types)
            .bind(&c.authorities).bind(&c.created_by).bind(&c.created_at).bind(&c.updated_at)
            .execute(self.pool()).await
            .map_err(|e| conflict_or(e, || format!("OAuth client '{}'", new.client_id)))?;
        Ok(c)
    }

    pub async fn oauth_client_by_id(&self, client_id: &str) -> Result<Option<OAuthClient>> {
        Ok(
            sqlx::query_as("SELECT * FROM oauth_clients WHERE client_id = $1")
                .bind(client_id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// The client a token names (by guid, so a re-registered id does not revive old tokens).
    pub async fn oauth_client_by_guid(&self, guid: &str) -> Result<Option<OAuthClient>> {
        self.by_guid("oauth_clients", guid).await
    }

    pub async fn list_oauth_clients(&self) -> Result<Vec<OAuthClient>> {
        self.select_where("oauth_clients", "client_id", &[]).await
    }

    /// Deletes a client by id, revoking its tokens; true when it existed.
    pub async fn delete_oauth_client(&self, client_id: &str) -> Result<bool> {
        self.delete_by(&[], ("oauth_clients", "client_id"), client_id)
            .await
    }
}
