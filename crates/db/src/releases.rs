//! Releases: every successful staging (and every rollback) of an app, numbered per app,
//! with the droplet and environment it made current, so `rollback` can return to one.

use crate::{conflict_or, Db, Release, Result};
use strato_core::{new_guid, now_rfc3339};

/// What a new release records; its number and guid are given by [`Db::add_release`].
#[derive(Clone, Debug, Default)]
pub struct NewRelease {
    pub app_guid: String,
    pub droplet_hash: String,
    pub environment_json: String,
    pub command: Option<String>,
    pub buildpack: Option<String>,
    pub detected_buildpack: Option<String>,
    pub detected_start_command: Option<String>,
    pub description: String,
    pub actor: String,
    pub actor_name: String,
}

impl Db {
    /// Records the next release of `r.app_guid` (1 for the first).
    pub async fn add_release(&self, r: &NewRelease) -> Result<Release> {
        // Two releases of one app at once are rare (one staging wins); retry once on a
        // number taken in between.
        let mut last = None;
        for _ in 0..3 {
            let number = self.last_release_number(&r.app_guid).await? + 1;
            let rel = Release {
                guid: new_guid(),
                app_guid: r.app_guid.clone(),
                number,
                droplet_hash: Some(r.droplet_hash.clone()),
                environment_json: r.environment_json.clone(),
                command: r.command.clone(),
                buildpack: r.buildpack.clone(),
                detected_buildpack: r.detected_buildpack.clone(),
                detected_start_command: r.detected_start_command.clone(),
                description: r.description.clone(),
                actor: r.actor.clone(),
                actor_name: r.actor_name.clone(),
                created_at: now_rfc3339(),
            };
            let done = sqlx::query("INSERT INTO app_releases (guid, app_guid, number, droplet_hash, environment_json, command, buildpack, detected_buildpack, detected_start_command, description, actor, actor_name, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)")
                .bind(&rel.guid).bind(&rel.app_guid).bind(rel.number).bind(&rel.droplet_hash).bind(&rel.environment_json)
                .bind(&rel.command).bind(&rel.buildpack).bind(&rel.detected_buildpack).bind(&rel.detected_start_command)
                .bind(&rel.description).bind(&rel.actor).bind(&rel.actor_name).bind(&rel.created_at)
                .execute(self.pool()).await
                .map_err(|e| conflict_or(e, || format!("release {number}")));
            match done {
                Ok(_) => return Ok(rel),
                Err(e @ crate::DbError::Conflict { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(crate::DbError::Conflict {
            what: "release".into(),
        }))
    }

    /// The highest release number of an app (0 when it has none).
    pub async fn last_release_number(&self, app_guid: &str) -> Result<i64> {
        use sqlx::Row as _;
        let row = sqlx::query(
            "SELECT COALESCE(MAX(number), 0) AS n FROM app_releases WHERE app_guid = $1",
        )
        .bind(app_guid)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get::<i64, _>("n")?)
    }

    /// Every release of an app, oldest first.
    pub async fn releases_of_app(&self, app_guid: &str) -> Result<Vec<Release>> {
        Ok(
            sqlx::query_as("SELECT * FROM app_releases WHERE app_guid = $1 ORDER BY number")
                .bind(app_guid)
                .fetch_all(self.pool())
                .await?,
        )
    }

    pub async fn release_by_number(&self, app_guid: &str, number: i64) -> Result<Option<Release>> {
        Ok(
            sqlx::query_as("SELECT * FROM app_releases WHERE app_guid = $1 AND number = $2")
                .bind(app_guid)
                .bind(number)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Lets go of the droplets of all but the newest `keep` releases of an app (their rows
    /// stay, as history). Returns the droplets no longer held by those releases; the caller
    /// deletes the ones nothing else uses.
    pub async fn expire_releases(&self, app_guid: &str, keep: u64) -> Result<Vec<String>> {
        let cutoff = self.last_release_number(app_guid).await? - keep as i64;
        if cutoff <= 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool().begin().await?;
        let rows: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT droplet_hash FROM app_releases WHERE app_guid = $1 AND number <= $2 AND droplet_hash IS NOT NULL")
            .bind(app_guid)
            .bind(cutoff)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE app_releases SET droplet_hash = NULL WHERE app_guid = $1 AND number <= $2",
        )
        .bind(app_guid)
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// The droplets the releases of an app still hold (to release them with the app).
    pub async fn release_droplets_of_app(&self, app_guid: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT droplet_hash FROM app_releases WHERE app_guid = $1 AND droplet_hash IS NOT NULL")
            .bind(app_guid)
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}
