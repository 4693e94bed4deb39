//! App log drains (`strato drain add APP NAME URI`): where an app's log lines are also
//! sent. The logs role reads them; deleting the app deletes its drains.

use crate::{conflict_or, AppDrain, Db, Result};
use strato_core::{new_guid, now_rfc3339};

impl Db {
    /// Adds a drain; [`crate::DbError::Conflict`] when the app has one by that name.
    pub async fn add_drain(
        &self,
        app_guid: &str,
        name: &str,
        uri: &str,
        json: bool,
    ) -> Result<AppDrain> {
        let d = AppDrain {
            guid: new_guid(),
            app_guid: app_guid.to_string(),
            name: name.to_string(),
            uri: uri.to_string(),
            json: i64::from(json),
            created_at: now_rfc3339(),
        };
        sqlx::query("INSERT INTO app_drains (guid, app_guid, name, uri, json, created_at) VALUES ($1,$2,$3,$4,$5,$6)")
            .bind(&d.guid).bind(&d.app_guid).bind(&d.name).bind(&d.uri).bind(d.json).bind(&d.created_at)
            .execute(self.pool()).await
            .map_err(|e| conflict_or(e, || format!("drain '{name}'")))?;
        Ok(d)
    }

    /// The drains of one app, or of every app with `None`, oldest first.
    pub async fn list_drains(&self, app_guid: Option<&str>) -> Result<Vec<AppDrain>> {
        self.select_where(
            "app_drains",
            "created_at, name",
            &[("app_guid", &app_guid.map(str::to_string))],
        )
        .await
    }

    /// Deletes the app's drain `name`; true when it existed.
    pub async fn delete_drain(&self, app_guid: &str, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM app_drains WHERE app_guid = $1 AND name = $2")
            .bind(app_guid)
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
