//! Leader election on a PostgreSQL advisory lock, for the actors a cluster must run once
//! (the health manager): whoever holds the session lock leads; when its process or its
//! connection dies, PostgreSQL releases the lock and a standby takes over. Nothing
//! home-made: no lease clocks, no heartbeats of our own.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::DbError;

/// The lock of one named role, held for as long as this value lives.
pub struct Leadership {
    conn: PgConnection,
    name: String,
}

/// The advisory lock key of `name`: the first 8 bytes of its sha256.
pub fn lock_key(name: &str) -> i64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

impl Leadership {
    /// Waits until this process leads `name` (trying every `retry`), or `None` when
    /// `cancel` fires first. Fails only when the database cannot be reached at all.
    pub async fn acquire(
        url: &str,
        name: &str,
        retry: Duration,
        cancel: &CancellationToken,
    ) -> Result<Option<Leadership>, DbError> {
        let mut conn = PgConnection::connect(url).await.map_err(DbError::from)?;
        let key = lock_key(name);
        let mut said_standby = false;
        loop {
            let (held,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await
                .map_err(DbError::from)?;
            if held {
                tracing::info!(role = name, "leading: this node holds the lock");
                return Ok(Some(Leadership {
                    conn,
                    name: name.to_string(),
                }));
            }
            if !said_standby {
                tracing::info!(role = name, "standing by: another node leads");
                said_standby = true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }

    /// Resolves when the lock may be lost: the connection that holds it stopped answering.
    /// Checked every `every`.
    pub async fn lost(&mut self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let alive = tokio::time::timeout(every.max(Duration::from_secs(2)), self.conn.ping())
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false);
            if !alive {
                tracing::warn!(role = %self.name, "lost the database connection that holds the lock");
                return;
            }
        }
    }
}
