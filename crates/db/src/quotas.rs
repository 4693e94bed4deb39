//! Repository methods for quotas: org quota definitions, space quota definitions, which
//! org and space has which, and what an org or a space uses of them.

use crate::{
    conflict_or, Db, QuotaDefinition, QuotaLimits, QuotaUsage, Result, SpaceQuotaDefinition,
};
use sqlx::Row as _;
use strato_core::{new_guid, now_rfc3339};

const LIMIT_COLUMNS: &str = "non_basic_services_allowed, total_services, total_routes, memory_limit, instance_memory_limit, app_instance_limit";

impl Db {
    // ---- org quota definitions ----

    pub async fn create_quota(&self, name: &str, limits: &QuotaLimits) -> Result<QuotaDefinition> {
        let now = now_rfc3339();
        let q = QuotaDefinition {
            guid: new_guid(),
            name: name.to_string(),
            limits: limits.clone(),
            created_at: now.clone(),
            updated_at: now,
        };
        let sql = format!(
            "INSERT INTO quota_definitions (guid, name, {LIMIT_COLUMNS}, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"
        );
        bind_limits(sqlx::query(&sql).bind(&q.guid).bind(&q.name), limits)
            .bind(&q.created_at)
            .bind(&q.updated_at)
            .execute(self.pool())
            .await
            .map_err(|e| conflict_or(e, || format!("quota definition '{name}'")))?;
        Ok(q)
    }

    pub async fn list_quotas(&self) -> Result<Vec<QuotaDefinition>> {
        self.select_where("quota_definitions", "created_at, name", &[])
            .await
    }

    pub async fn quota_by_guid(&self, guid: &str) -> Result<Option<QuotaDefinition>> {
        self.by_guid("quota_definitions", guid).await
    }

    pub async fn quota_by_name(&self, name: &str) -> Result<Option<QuotaDefinition>> {
        Ok(
            sqlx::query_as("SELECT * FROM quota_definitions WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Writes the name and limits of `q` (by guid); `None` when there is no such quota.
    pub async fn update_quota(&self, q: &QuotaDefinition) -> Result<Option<QuotaDefinition>> {
        let sql = "UPDATE quota_definitions SET name=$1, non_basic_services_allowed=$2, total_services=$3, total_routes=$4, memory_limit=$5, instance_memory_limit=$6, app_instance_limit=$7, updated_at=$8 WHERE guid=$9";
        bind_limits(sqlx::query(sql).bind(&q.name), &q.limits)
            .bind(now_rfc3339())
            .bind(&q.guid)
            .execute(self.pool())
            .await
            .map_err(|e| conflict_or(e, || format!("quota definition '{}'", q.name)))?;
        self.quota_by_guid(&q.guid).await
    }

    /// Deletes a quota no org uses (see [`Db::orgs_using_quota`]).
    pub async fn delete_quota(&self, guid: &str) -> Result<bool> {
        self.delete_by(&[], ("quota_definitions", "guid"), guid)
            .await
    }

    /// The names of the orgs that have quota `guid`.
    pub async fn orgs_using_quota(&self, guid: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM organizations WHERE quota_definition_guid = $1 ORDER BY name",
        )
        .bind(guid)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    /// Gives an org a quota.
    pub async fn set_org_quota(&self, org_guid: &str, quota_guid: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE organizations SET quota_definition_guid = $1, updated_at = $2 WHERE guid = $3",
        )
        .bind(quota_guid)
        .bind(now_rfc3339())
        .bind(org_guid)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }

    // ---- space quota definitions ----

    pub async fn create_space_quota(
        &self,
        org_guid: &str,
        name: &str,
        limits: &QuotaLimits,
    ) -> Result<SpaceQuotaDefinition> {
        let now = now_rfc3339();
        let q = SpaceQuotaDefinition {
            guid: new_guid(),
            name: name.to_string(),
            organization_guid: org_guid.to_string(),
            limits: limits.clone(),
            created_at: now.clone(),
            updated_at: now,
        };
        let sql = format!(
            "INSERT INTO space_quota_definitions (guid, name, organization_guid, {LIMIT_COLUMNS}, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)"
        );
        bind_limits(
            sqlx::query(&sql)
                .bind(&q.guid)
                .bind(&q.name)
                .bind(&q.organization_guid),
            limits,
        )
        .bind(&q.created_at)
        .bind(&q.updated_at)
        .execute(self.pool())
        .await
        .map_err(|e| conflict_or(e, || format!("space quota definition '{name}'")))?;
        Ok(q)
    }

    /// Space quotas, all or those of one org.
    pub async fn list_space_quotas(
        &self,
        org_guid: Option<&str>,
    ) -> Result<Vec<SpaceQuotaDefinition>> {
        self.select_where(
            "space_quota_definitions",
            "created_at, name",
            &[("organization_guid", &org_guid.map(str::to_string))],
        )
        .await
    }

    pub async fn space_quota_by_guid(&self, guid: &str) -> Result<Option<SpaceQuotaDefinition>> {
        self.by_guid("space_quota_definitions", guid).await
    }

    pub async fn update_space_quota(
        &self,
        q: &SpaceQuotaDefinition,
    ) -> Result<Option<SpaceQuotaDefinition>> {
        let sql = "UPDATE space_quota_definitions SET name=$1, non_basic_services_allowed=$2, total_services=$3, total_routes=$4, memory_limit=$5, instance_memory_limit=$6, app_instance_limit=$7, updated_at=$8 WHERE guid=$9";
        bind_limits(sqlx::query(sql).bind(&q.name), &q.limits)
            .bind(now_rfc3339())
            .bind(&q.guid)
            .execute(self.pool())
            .await
            .map_err(|e| conflict_or(e, || format!("space quota definition '{}'", q.name)))?;
        self.space_quota_by_guid(&q.guid).await
    }

    /// Deletes a space quota; the spaces that had it keep only their org's quota.
    pub async fn delete_space_quota(&self, guid: &str) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("UPDATE spaces SET space_quota_definition_guid = NULL WHERE space_quota_definition_guid = $1")
            .bind(guid)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM space_quota_definitions WHERE guid = $1")
            .bind(guid)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Gives a space a space quota, or takes it away (`None`).
    pub async fn set_space_quota(
        &self,
        space_guid: &str,
        quota_guid: Option<&str>,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE spaces SET space_quota_definition_guid = $1, updated_at = $2 WHERE guid = $3",
        )
        .bind(quota_guid)
        .bind(now_rfc3339())
        .bind(space_guid)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }

    // ---- usage ----

    /// What the org uses, leaving out app `except_app` (the one being changed).
    pub async fn org_usage(&self, org_guid: &str, except_app: Option<&str>) -> Result<QuotaUsage> {
        self.usage("s.organization_guid = $1", org_guid, except_app)
            .await
    }

    /// What the space uses, leaving out app `except_app`.
    pub async fn space_usage(
        &self,
        space_guid: &str,
        except_app: Option<&str>,
    ) -> Result<QuotaUsage> {
        self.usage("s.guid = $1", space_guid, except_app).await
    }

    /// Sums over the spaces matching `scope` (a literal of this file, never input).
    async fn usage(
        &self,
        scope: &str,
        value: &str,
        except_app: Option<&str>,
    ) -> Result<QuotaUsage> {
        let apps = sqlx::query(&format!(
            "SELECT CAST(COALESCE(SUM(a.memory * a.instances), 0) AS BIGINT) AS mem, \
             CAST(COALESCE(SUM(a.instances), 0) AS BIGINT) AS inst \
             FROM apps a JOIN spaces s ON s.guid = a.space_guid \
             WHERE {scope} AND a.state = 'STARTED' AND a.guid <> $2"
        ))
        .bind(value)
        .bind(except_app.unwrap_or(""))
        .fetch_one(self.pool())
        .await?;
        let services = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM service_instances i JOIN spaces s ON s.guid = i.space_guid \
             WHERE {scope} AND i.service_plan_guid IS NOT NULL"
        ))
        .bind(value)
        .fetch_one(self.pool())
        .await?;
        let routes = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM routes r JOIN spaces s ON s.guid = r.space_guid WHERE {scope}"
        ))
        .bind(value)
        .fetch_one(self.pool())
        .await?;
        Ok(QuotaUsage {
            memory_mb: apps.try_get("mem")?,
            app_instances: apps.try_get("inst")?,
            services: services.try_get("n")?,
            routes: routes.try_get("n")?,
        })
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds the six limit columns in [`LIMIT_COLUMNS`] order.
fn bind_limits<'q>(q: AnyQuery<'q>, l: &QuotaLimits) -> AnyQuery<'q> {
    q.bind(l.non_basic_services_allowed)
        .bind(l.total_services)
        .bind(l.total_routes)
        .bind(l.memory_limit)
        .bind(l.instance_memory_limit)
        .bind(l.app_instance_limit)
}
