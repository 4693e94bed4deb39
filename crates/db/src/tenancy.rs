//! Repository methods for multi-tenancy: user accounts, organization and space roles,
//! renaming and deleting orgs and spaces, and feature flags.

use crate::{conflict_or, Db, Memberships, OrgRole, Organization, Result, Space, SpaceRole, User};
use strato_core::now_rfc3339;

impl Db {
    // ---- users ----

    pub async fn list_users(&self) -> Result<Vec<User>> {
        self.select_where("users", "created_at, username", &[])
            .await
    }

    /// Replaces a user's password hash.
    pub async fn set_password_hash(&self, user_guid: &str, hash: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE guid = $3")
            .bind(hash)
            .bind(now_rfc3339())
            .bind(user_guid)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Revokes every login of a user but `keep` (a password change keeps the session that
    /// made it); returns how many.
    pub async fn delete_other_sessions(&self, user_guid: &str, keep: &str) -> Result<u64> {
        let r = sqlx::query("DELETE FROM sessions WHERE user_guid = $1 AND id <> $2")
            .bind(user_guid)
            .bind(keep)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected())
    }

    /// Grants or revokes the administrator flag.
    pub async fn set_admin(&self, user_guid: &str, admin: bool) -> Result<bool> {
        let r = sqlx::query("UPDATE users SET admin = $1, updated_at = $2 WHERE guid = $3")
            .bind(admin as i64)
            .bind(now_rfc3339())
            .bind(user_guid)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Deletes a user with their roles and sessions.
    pub async fn delete_user(&self, user_guid: &str) -> Result<bool> {
        let dependents = [
            ("organization_roles", "user_guid"),
            ("space_roles", "user_guid"),
            ("sessions", "user_guid"),
        ];
        self.delete_by(&dependents, ("users", "guid"), user_guid)
            .await
    }

    // ---- roles ----

    /// Gives `user` `role` in the org; giving it twice is not an error.
    pub async fn add_org_role(&self, org_guid: &str, user_guid: &str, role: OrgRole) -> Result<()> {
        if self
            .has_role(
                "organization_roles",
                "organization_guid",
                org_guid,
                user_guid,
                role.as_str(),
            )
            .await?
        {
            return Ok(());
        }
        sqlx::query("INSERT INTO organization_roles (organization_guid, user_guid, role, created_at) VALUES ($1,$2,$3,$4)")
            .bind(org_guid).bind(user_guid).bind(role.as_str()).bind(now_rfc3339())
            .execute(self.pool()).await
            .map_err(|e| conflict_or(e, || "this role".to_string()))?;
        Ok(())
    }

    pub async fn remove_org_role(
        &self,
        org_guid: &str,
        user_guid: &str,
        role: OrgRole,
    ) -> Result<bool> {
        let r = sqlx::query("DELETE FROM organization_roles WHERE organization_guid = $1 AND user_guid = $2 AND role = $3")
            .bind(org_guid).bind(user_guid).bind(role.as_str())
            .execute(self.pool()).await?;
        Ok(r.rows_affected() > 0)
    }

    /// Gives `user` `role` in the space; giving it twice is not an error.
    pub async fn add_space_role(
        &self,
        space_guid: &str,
        user_guid: &str,
        role: SpaceRole,
    ) -> Result<()> {
        if self
            .has_role(
                "space_roles",
                "space_guid",
                space_guid,
                user_guid,
                role.as_str(),
            )
            .await?
        {
            return Ok(());
        }
        sqlx::query("INSERT INTO space_roles (space_guid, user_guid, role, created_at) VALUES ($1,$2,$3,$4)")
            .bind(space_guid).bind(user_guid).bind(role.as_str()).bind(now_rfc3339())
            .execute(self.pool()).await
            .map_err(|e| conflict_or(e, || "this role".to_string()))?;
        Ok(())
    }

    pub async fn remove_space_role(
        &self,
        space_guid: &str,
        user_guid: &str,
        role: SpaceRole,
    ) -> Result<bool> {
        let r = sqlx::query(
            "DELETE FROM space_roles WHERE space_guid = $1 AND user_guid = $2 AND role = $3",
        )
        .bind(space_guid)
        .bind(user_guid)
        .bind(role.as_str())
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn has_role(
        &self,
        table: &str,
        scope_col: &str,
        scope: &str,
        user_guid: &str,
        role: &str,
    ) -> Result<bool> {
        use sqlx::Row as _;
        let row = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM {table} WHERE {scope_col} = $1 AND user_guid = $2 AND role = $3"
        ))
        .bind(scope).bind(user_guid).bind(role)
        .fetch_one(self.pool()).await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// The users holding `role` in the org.
    pub async fn org_members(&self, org_guid: &str, role: OrgRole) -> Result<Vec<User>> {
        Ok(sqlx::query_as("SELECT u.* FROM users u JOIN organization_roles r ON r.user_guid = u.guid WHERE r.organization_guid = $1 AND r.role = $2 ORDER BY u.username")
            .bind(org_guid).bind(role.as_str()).fetch_all(self.pool()).await?)
    }

    /// The users holding `role` in the space.
    pub async fn space_members(&self, space_guid: &str, role: SpaceRole) -> Result<Vec<User>> {
        Ok(sqlx::query_as("SELECT u.* FROM users u JOIN space_roles r ON r.user_guid = u.guid WHERE r.space_guid = $1 AND r.role = $2 ORDER BY u.username")
            .bind(space_guid).bind(role.as_str()).fetch_all(self.pool()).await?)
    }

    /// Every org and space role of a user.
    pub async fn memberships(&self, user_guid: &str) -> Result<Memberships> {
        let orgs: Vec<(String, String)> = sqlx::query_as(
            "SELECT organization_guid, role FROM organization_roles WHERE user_guid = $1",
        )
        .bind(user_guid)
        .fetch_all(self.pool())
        .await?;
        let spaces: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT r.space_guid, s.organization_guid, r.role FROM space_roles r JOIN spaces s ON s.guid = r.space_guid WHERE r.user_guid = $1",
        )
        .bind(user_guid)
        .fetch_all(self.pool())
        .await?;
        Ok(Memberships {
            orgs: orgs
                .into_iter()
                .filter_map(|(o, r)| OrgRole::parse(&r).map(|r| (o, r)))
                .collect(),
            spaces: spaces
                .into_iter()
                .filter_map(|(s, o, r)| SpaceRole::parse(&r).map(|r| (s, o, r)))
                .collect(),
        })
    }

    // ---- organizations and spaces ----

    pub async fn rename_org(&self, guid: &str, name: &str) -> Result<Option<Organization>> {
        sqlx::query("UPDATE organizations SET name = $1, updated_at = $2 WHERE guid = $3")
            .bind(name)
            .bind(now_rfc3339())
            .bind(guid)
            .execute(self.pool())
            .await
            .map_err(|e| conflict_or(e, || format!("organization '{name}'")))?;
        self.org_by_guid(guid).await
    }

    pub async fn rename_space(&self, guid: &str, name: &str) -> Result<Option<Space>> {
        sqlx::query("UPDATE spaces SET name = $1, updated_at = $2 WHERE guid = $3")
            .bind(name)
            .bind(now_rfc3339())
            .bind(guid)
            .execute(self.pool())
            .await
            .map_err(|e| conflict_or(e, || format!("space '{name}'")))?;
        self.space_by_guid(guid).await
    }

    /// Deletes an empty space (no apps, routes or services left) and its roles.
    pub async fn delete_space(&self, guid: &str) -> Result<bool> {
        self.delete_by(&[("space_roles", "space_guid")], ("spaces", "guid"), guid)
            .await
    }

    /// Deletes an org with no spaces left, and its roles.
    pub async fn delete_org(&self, guid: &str) -> Result<bool> {
        self.delete_by(
            &[("organization_roles", "organization_guid")],
            ("organizations", "guid"),
            guid,
        )
        .await
    }

    // ---- feature flags ----

    /// Whether feature flag `name` is on (an unknown flag is off).
    pub async fn feature_flag(&self, name: &str) -> Result<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT enabled FROM feature_flags WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.is_some_and(|(e,)| e != 0))
    }

    pub async fn set_feature_flag(&self, name: &str, enabled: bool) -> Result<()> {
        let now = now_rfc3339();
        let n =
            sqlx::query("UPDATE feature_flags SET enabled = $1, updated_at = $2 WHERE name = $3")
                .bind(enabled as i64)
                .bind(&now)
                .bind(name)
                .execute(self.pool())
                .await?
                .rows_affected();
        if n == 0 {
            sqlx::query("INSERT INTO feature_flags (name, enabled, updated_at) VALUES ($1,$2,$3)")
                .bind(name)
                .bind(enabled as i64)
                .bind(&now)
                .execute(self.pool())
                .await?;
        }
        Ok(())
    }
}
