//! Repository methods: every read and write the controller makes.

use crate::{conflict_or, App, Db, Domain, Event, Organization, Result, Route, Space, User};
use sqlx::any::AnyRow;
use strato_core::{new_guid, now_rfc3339};

/// Equality filters for list queries (`q=name:X` in the API). Empty fields match all.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub name: Option<String>,
    pub space_guid: Option<String>,
    pub organization_guid: Option<String>,
    pub host: Option<String>,
    pub domain_guid: Option<String>,
    pub app_guid: Option<String>,
    pub service_instance_guid: Option<String>,
    pub service_guid: Option<String>,
    pub label: Option<String>,
}

/// Builds `WHERE a = $1 AND b = $2` from the set fields, in a fixed order.
fn where_clause(columns: &[(&str, &Option<String>)]) -> (String, Vec<String>) {
    let mut parts = Vec::new();
    let mut binds = Vec::new();
    for (col, val) in columns {
        if let Some(v) = val {
            binds.push(v.clone());
            parts.push(format!("{col} = ${}", binds.len()));
        }
    }
    if parts.is_empty() {
        (String::new(), binds)
    } else {
        (format!(" WHERE {}", parts.join(" AND ")), binds)
    }
}

/// A row type the `Any` driver can decode.
pub(crate) trait Row: for<'r> sqlx::FromRow<'r, AnyRow> + Send + Unpin {}
impl<T: for<'r> sqlx::FromRow<'r, AnyRow> + Send + Unpin> Row for T {}

// Table, column and order names below are literals of this file, never user input;
// values always go through binds.
impl Db {
    /// `SELECT * FROM table [WHERE col = value AND ...] ORDER BY order`.
    pub(crate) async fn select_where<T: Row>(
        &self,
        table: &str,
        order: &str,
        columns: &[(&str, &Option<String>)],
    ) -> Result<Vec<T>> {
        let (w, binds) = where_clause(columns);
        let sql = format!("SELECT * FROM {table}{w} ORDER BY {order}");
        let mut q = sqlx::query_as(&sql);
        for b in binds {
            q = q.bind(b);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }

    /// The row of `table` with this guid.
    pub(crate) async fn by_guid<T: Row>(&self, table: &str, guid: &str) -> Result<Option<T>> {
        let sql = format!("SELECT * FROM {table} WHERE guid = $1");
        Ok(sqlx::query_as(&sql)
            .bind(guid)
            .fetch_optional(self.pool())
            .await?)
    }

    /// In one transaction, deletes the rows of each `dependents` table whose column is
    /// `key`, then the row of `table` whose `column` is `key`; true when that row existed.
    pub(crate) async fn delete_by(
        &self,
        dependents: &[(&str, &str)],
        (table, column): (&str, &str),
        key: &str,
    ) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        for (dep_table, dep_column) in dependents {
            sqlx::query(&format!("DELETE FROM {dep_table} WHERE {dep_column} = $1"))
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        let n = sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1"))
            .bind(key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// `SELECT COUNT(*)` with an optional `column = value` condition.
    pub(crate) async fn count(&self, table: &str, column: Option<(&str, &str)>) -> Result<i64> {
        use sqlx::Row as _;
        let row = match column {
            Some((col, value)) => {
                sqlx::query(&format!(
                    "SELECT COUNT(*) AS n FROM {table} WHERE {col} = $1"
                ))
                .bind(value)
                .fetch_one(self.pool())
                .await?
            }
            None => {
                sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
                    .fetch_one(self.pool())
                    .await?
            }
        };
        Ok(row.try_get::<i64, _>("n")?)
    }
}

impl Db {
    // ---- users ----

    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        admin: bool,
    ) -> Result<User> {
        let now = now_rfc3339();
        let u = User {
            guid: new_guid(),
            username: username.to_string(),
            password_hash: password_hash.to_string(),
            admin: admin as i64,
            created_at: now.clone(),
            updated_at: now,
        };
        sqlx::query("INSERT INTO users (guid, username, password_hash, admin, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6)")
            .bind(&u.guid).bind(&u.username).bind(&u.password_hash).bind(u.admin).bind(&u.created_at).bind(&u.updated_at)
            .execute(self.pool()).await
            .map_err(|e| conflict_or(e, || format!("user '{username}'")))?;
        Ok(u)
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        Ok(sqlx::query_as("SELECT * FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn user_by_guid(&self, guid: &str) -> Result<Option<User>> {
        self.by_guid("users", guid).await
    }

    // ---- sessions (one per login; tokens name theirs, so deleting it revokes them) ----

    pub async fn create_session(&self, id: &str, user_guid: &str, address: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (id, user_guid, client_address, created_at) VALUES ($1,$2,$3,$4)",
        )
        .bind(id)
        .bind(user_guid)
        .bind(address)
        .bind(now_rfc3339())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// True when session `id` of `user_guid` has not been revoked.
    pub async fn session_is_live(&self, id: &str, user_guid: &str) -> Result<bool> {
        use sqlx::Row as _;
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM sessions WHERE id = $1 AND user_guid = $2")
                .bind(id)
                .bind(user_guid)
                .fetch_one(self.pool())
                .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    pub async fn delete_session(&self, id: &str) -> Result<bool> {
        self.delete_by(&[], ("sessions", "id"), id).await
    }

    /// Revokes every login of a user (password change, deletion); returns how many.
    pub async fn delete_sessions_of(&self, user_guid: &str) -> Result<u64> {
        let r = sqlx::query("DELETE FROM sessions WHERE user_guid = $1")
            .bind(user_guid)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected())
    }

    pub async fn count_users(&self) -> Result<i64> {
        self.count("users", None).await
    }

    // ---- organizations and spaces ----

    /// Creates an org with the `default` quota (none when there is no `default`).
    pub async fn create_org(&self, name: &str) -> Result<Organization> {
        let now = now_rfc3339();
        let quota = self.quota_by_name("default").await?.map(|q| q.guid);
        let o = Organization {
            guid: new_guid(),
            name: name.to_string(),
            quota_definition_guid: quota,
            created_at: now.clone(),
            updated_at: now,
        };
        sqlx::query(
            "INSERT INTO organizations (guid, name, quota_definition_guid, created_at, updated_at) VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(&o.guid)
        .bind(&o.name)
        .bind(&o.quota_definition_guid)
        .bind(&o.created_at)
        .bind(&o.updated_at)
        .execute(self.pool())
        .await
        .map_err(|e| conflict_or(e, || format!("organization '{name}'")))?;
        Ok(o)
    }

    pub async fn list_orgs(&self, f: &Filter) -> Result<Vec<Organization>> {
        self.select_where("organizations", "created_at, name", &[("name", &f.name)])
            .await
    }

    pub async fn org_by_guid(&self, guid: &str) -> Result<Option<Organization>> {
        self.by_guid("organizations", guid).await
    }

    pub async fn create_space(&self, org_guid: &str, name: &str) -> Result<Space> {
        let now = now_rfc3339();
        let s = Space {
            guid: new_guid(),
            name: name.to_string(),
            organization_guid: org_guid.to_string(),
            space_quota_definition_guid: None,
            created_at: now.clone(),
            updated_at: now,
        };
        sqlx::query("INSERT INTO spaces (guid, name, organization_guid, created_at, updated_at) VALUES ($1,$2,$3,$4,$5)")
            .bind(&s.guid).bind(&s.name).bind(&s.organization_guid).bind(&s.created_at).bind(&s.updated_at)
            .execute(self.pool()).await
            .map_err(|e| conflict_or(e, || format!("space '{name}'")))?;
        Ok(s)
    }

    pub async fn list_spaces(&self, f: &Filter) -> Result<Vec<Space>> {
        self.select_where(
            "spaces",
            "created_at, name",
            &[
                ("name", &f.name),
                ("organization_guid", &f.organization_guid),
            ],
        )
        .await
    }

    pub async fn space_by_guid(&self, guid: &str) -> Result<Option<Space>> {
        self.by_guid("spaces", guid).await
    }

    // ---- domains ----

    pub async fn create_shared_domain(&self, name: &str) -> Result<Domain> {
        self.insert_domain(name, None).await
    }

    /// A domain owned by one organization (CF's private domain): only its spaces may make
    /// routes on it.
    pub async fn create_private_domain(&self, name: &str, org_guid: &str) -> Result<Domain> {
        self.insert_domain(name, Some(org_guid)).await
    }

    async fn insert_domain(&self, name: &str, owner: Option<&str>) -> Result<Domain> {
        let now = now_rfc3339();
        let d = Domain {
            guid: new_guid(),
            name: name.to_ascii_lowercase(),
            shared: i64::from(owner.is_none()),
            owning_organization_guid: owner.map(str::to_string),
            created_at: now.clone(),
            updated_at: now,
        };
        sqlx::query("INSERT INTO domains (guid, name, shared, owning_organization_guid, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6)")
            .bind(&d.guid).bind(&d.name).bind(d.shared).bind(&d.owning_organization_guid).bind(&d.created_at).bind(&d.updated_at)
            .execute(self.pool()).await
            .map_err(|e| conflict_or(e, || format!("domain '{name}'")))?;
        Ok(d)
    }

    pub async fn list_domains(&self, f: &Filter) -> Result<Vec<Domain>> {
        self.select_where("domains", "created_at, name", &[("name", &f.name)])
            .await
    }

    pub async fn domain_by_guid(&self, guid: &str) -> Result<Option<Domain>> {
        self.by_guid("domains", guid).await
    }

    /// Renames domain `from` to `to` (`kato node rename`): its routes follow, as they
    /// name the domain by guid. `Ok(None)` when there is no domain `from`;
    /// [`crate::DbError::Conflict`] when `to` is taken.
    pub async fn rename_domain(&self, from: &str, to: &str) -> Result<Option<Domain>> {
        let to = to.to_ascii_lowercase();
        let done = sqlx::query("UPDATE domains SET name = $1, updated_at = $2 WHERE name = $3")
            .bind(&to)
            .bind(now_rfc3339())
            .bind(from.to_ascii_lowercase())
            .execute(self.pool())
            .await
            .map_err(|e| conflict_or(e, || format!("domain '{to}'")))?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let found = self
            .list_domains(&Filter {
                name: Some(to),
                ..Default::default()
            })
            .await?;
        Ok(found.into_iter().next())
    }

    /// How many routes use the domain.
    pub async fn count_routes_of_domain(&self, guid: &str) -> Result<i64> {
        self.count("routes", Some(("domain_guid", guid))).await
    }

    /// Deletes a domain (callers refuse while routes use it).
    pub async fn delete_domain(&self, guid: &str) -> Result<bool> {
        self.delete_by(&[], ("domains", "guid"), guid).await
    }

    // ---- routes ----

    pub async fn create_route(
        &self,
        host: &str,
        domain_guid: &str,
        space_guid: &str,
    ) -> Result<Route> {
        let now = now_rfc3339();
        let r = Route {
            guid: new_guid(),
            host: host.to_ascii_lowercase(),
            domain_guid: domain_guid.to_string(),
            space_guid: space_guid.to_string(),
            created_at: now.clone(),
            updated_at: now,
        };
        sqlx::query("INSERT INTO routes (guid, host, domain_guid, space_guid, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6)")
            .bind(&r.guid).bind(&r.host).bind(&r.domain_guid).bind(&r.space_guid).bind(&r.created_at).bind(&r.updated_at)
            .execute(self.pool()).await
            .map_err(|e| conflict_or(e, || format!("route '{host}'")))?;
        Ok(r)
    }

    pub async fn list_routes(&self, f: &Filter) -> Result<Vec<Route>> {
        self.select_where(
            "routes",
            "created_at, host",
            &[
                ("host", &f.host),
                ("domain_guid", &f.domain_guid),
                ("space_guid", &f.space_guid),
            ],
        )
        .await
    }

    pub async fn route_by_guid(&self, guid: &str) -> Result<Option<Route>> {
        self.by_guid("routes", guid).await
    }

    pub async fn delete_route(&self, guid: &str) -> Result<bool> {
        self.delete_by(&[("app_routes", "route_guid")], ("routes", "guid"), guid)
            .await
    }

    pub async fn routes_of_app(&self, app_guid: &str) -> Result<Vec<Route>> {
        Ok(sqlx::query_as("SELECT r.* FROM routes r JOIN app_routes ar ON ar.route_guid = r.guid WHERE ar.app_guid = $1 ORDER BY r.created_at")
            .bind(app_guid).fetch_all(self.pool()).await?)
    }

    pub async fn apps_of_route(&self, route_guid: &str) -> Result<Vec<App>> {
        Ok(sqlx::query_as("SELECT a.* FROM apps a JOIN app_routes ar ON ar.app_guid = a.guid WHERE ar.route_guid = $1 ORDER BY a.created_at")
            .bind(route_guid).fetch_all(self.pool()).await?)
    }

    /// Maps a route to an app; mapping twice is not an error.
    pub async fn map_route(&self, app_guid: &str, route_guid: &str) -> Result<()> {
        let exists: Option<(String,)> = sqlx::query_as(
            "SELECT app_guid FROM app_routes WHERE app_guid = $1 AND route_guid = $2",
        )
        .bind(app_guid)
        .bind(route_guid)
        .fetch_optional(self.pool())
        .await?;
        if exists.is_none() {
            sqlx::query("INSERT INTO app_routes (app_guid, route_guid) VALUES ($1, $2)")
                .bind(app_guid)
                .bind(route_guid)
                .execute(self.pool())
                .await?;
        }
        Ok(())
    }

    pub async fn unmap_route(&self, app_guid: &str, route_guid: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM app_routes WHERE app_guid = $1 AND route_guid = $2")
            .bind(app_guid)
            .bind(route_guid)
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    // ---- apps ----

    pub async fn insert_app(&self, a: &App) -> Result<()> {
        sqlx::query("INSERT INTO apps (guid, name, space_guid, instances, memory, disk_quota, state, command, buildpack, detected_buildpack, detected_start_command, environment_json, health_check_timeout, package_hash, package_state, staging_task_id, staging_error, droplet_hash, version, created_at, updated_at, health_check_type, health_check_http_endpoint) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23)")
            .bind(&a.guid).bind(&a.name).bind(&a.space_guid).bind(a.instances).bind(a.memory).bind(a.disk_quota).bind(&a.state)
            .bind(&a.command).bind(&a.buildpack).bind(&a.detected_buildpack).bind(&a.detected_start_command).bind(&a.environment_json)
            .bind(a.health_check_timeout).bind(&a.package_hash).bind(&a.package_state).bind(&a.staging_task_id).bind(&a.staging_error)
            .bind(&a.droplet_hash).bind(&a.version).bind(&a.created_at).bind(&a.updated_at)
            .bind(&a.health_check_type).bind(&a.health_check_http_endpoint)
            .execute(self.pool()).await
            .map_err(|e| conflict_or(e, || format!("app '{}'", a.name)))?;
        Ok(())
    }

    /// Writes every column of `a` (by guid) and bumps `updated_at`.
    pub async fn update_app(&self, a: &App) -> Result<App> {
        let mut a = a.clone();
        a.updated_at = now_rfc3339();
        sqlx::query("UPDATE apps SET name=$1, space_guid=$2, instances=$3, memory=$4, disk_quota=$5, state=$6, command=$7, buildpack=$8, detected_buildpack=$9, detected_start_command=$10, environment_json=$11, health_check_timeout=$12, package_hash=$13, package_state=$14, staging_task_id=$15, staging_error=$16, droplet_hash=$17, version=$18, updated_at=$19, health_check_type=$21, health_check_http_endpoint=$22 WHERE guid=$20")
            .bind(&a.name).bind(&a.space_guid).bind(a.instances).bind(a.memory).bind(a.disk_quota).bind(&a.state)
            .bind(&a.command).bind(&a.buildpack).bind(&a.detected_buildpack).bind(&a.detected_start_command).bind(&a.environment_json)
            .bind(a.health_check_timeout).bind(&a.package_hash).bind(&a.package_state).bind(&a.staging_task_id).bind(&a.staging_error)
            .bind(&a.droplet_hash).bind(&a.version).bind(&a.updated_at).bind(&a.guid)
            .bind(&a.health_check_type).bind(&a.health_check_http_endpoint)
            .execute(self.pool()).await
            .map_err(|e| conflict_or(e, || format!("app '{}'", a.name)))?;
        Ok(a)
    }

    pub async fn app_by_guid(&self, guid: &str) -> Result<Option<App>> {
        self.by_guid("apps", guid).await
    }

    pub async fn list_apps(&self, f: &Filter) -> Result<Vec<App>> {
        self.select_where(
            "apps",
            "created_at, name",
            &[("name", &f.name), ("space_guid", &f.space_guid)],
        )
        .await
    }

    pub async fn delete_app(&self, guid: &str) -> Result<bool> {
        self.delete_by(
            &[("app_routes", "app_guid"), ("app_drains", "app_guid")],
            ("apps", "guid"),
            guid,
        )
        .await
    }

    /// How many apps and kept releases still use a droplet (so a droplet is deleted only
    /// when none does: a release one may roll back to keeps its droplet).
    pub async fn apps_using_droplet(&self, sha256: &str) -> Result<i64> {
        let apps = self.count("apps", Some(("droplet_hash", sha256))).await?;
        let releases = self
            .count("app_releases", Some(("droplet_hash", sha256)))
            .await?;
        Ok(apps + releases)
    }

    /// How many apps still use a package.
    pub async fn apps_using_package(&self, sha256: &str) -> Result<i64> {
        self.count("apps", Some(("package_hash", sha256))).await
    }

    // ---- events ----

    #[allow(clippy::too_many_arguments)]
    pub async fn add_event(
        &self,
        kind: &str,
        actor: &str,
        actor_name: &str,
        actee: &str,
        actee_type: &str,
        actee_name: &str,
        space_guid: Option<&str>,
        metadata: &serde_json::Value,
    ) -> Result<Event> {
        let e = Event {
            guid: new_guid(),
            kind: kind.to_string(),
            actor: actor.to_string(),
            actor_name: actor_name.to_string(),
            actee: actee.to_string(),
            actee_type: actee_type.to_string(),
            actee_name: actee_name.to_string(),
            space_guid: space_guid.map(str::to_string),
            metadata: metadata.to_string(),
            timestamp: now_rfc3339(),
        };
        sqlx::query("INSERT INTO events (guid, type, actor, actor_name, actee, actee_type, actee_name, space_guid, metadata, timestamp) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)")
            .bind(&e.guid).bind(&e.kind).bind(&e.actor).bind(&e.actor_name).bind(&e.actee).bind(&e.actee_type).bind(&e.actee_name)
            .bind(&e.space_guid).bind(&e.metadata).bind(&e.timestamp)
            .execute(self.pool()).await?;
        Ok(e)
    }

    pub async fn events_for(&self, actee: Option<&str>) -> Result<Vec<Event>> {
        Ok(match actee {
            Some(a) => {
                sqlx::query_as("SELECT * FROM events WHERE actee = $1 ORDER BY timestamp, guid")
                    .bind(a)
                    .fetch_all(self.pool())
                    .await?
            }
            None => {
                sqlx::query_as("SELECT * FROM events ORDER BY timestamp, guid")
                    .fetch_all(self.pool())
                    .await?
            }
        })
    }
}
