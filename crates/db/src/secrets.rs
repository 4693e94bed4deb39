//! Secrets every controller of a cluster must share (the token-signing secret), kept in
//! the controller database so a second controller signs and accepts the same tokens and
//! blob URLs as the first. They are never logged and never served by the API.

use crate::{Db, Result};
use strato_core::now_rfc3339;

impl Db {
    /// The secret `name`; when there is none yet, `candidate` becomes it. Two controllers
    /// starting at once agree: the first insert wins and both read it back.
    pub async fn secret_or_insert(&self, name: &str, candidate: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO platform_secrets (name, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(now_rfc3339())
        .execute(self.pool())
        .await?;
        let (value,): (String,) =
            sqlx::query_as("SELECT value FROM platform_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(self.pool())
                .await?;
        Ok(value)
    }

    /// Replaces the secret `name` (or sets it).
    pub async fn set_secret(&self, name: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO platform_secrets (name, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(value)
        .bind(now_rfc3339())
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
