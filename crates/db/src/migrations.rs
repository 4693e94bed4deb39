//! Numbered schema migrations, one SQL text per backend.
//!
//! Each migration runs in a transaction and is recorded in `strato_migrations`; a migration
//! already recorded is never run again. Add new ones at the end, never edit old ones.

use crate::{Backend, Db, DbError, Result};

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

const INITIAL: &str = r#"
CREATE TABLE users (
    guid TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    admin BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE organizations (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE spaces (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    organization_guid TEXT NOT NULL REFERENCES organizations(guid),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (organization_guid, name)
);
CREATE TABLE domains (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    shared BIGINT NOT NULL DEFAULT 1,
    owning_organization_guid TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE routes (
    guid TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    domain_guid TEXT NOT NULL REFERENCES domains(guid),
    space_guid TEXT NOT NULL REFERENCES spaces(guid),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (host, domain_guid)
);
CREATE TABLE apps (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    space_guid TEXT NOT NULL REFERENCES spaces(guid),
    instances BIGINT NOT NULL,
    memory BIGINT NOT NULL,
    disk_quota BIGINT NOT NULL,
    state TEXT NOT NULL,
    command TEXT,
    buildpack TEXT,
    detected_buildpack TEXT,
    detected_start_command TEXT,
    environment_json TEXT NOT NULL,
    health_check_timeout BIGINT,
    package_hash TEXT,
    package_state TEXT NOT NULL,
    staging_task_id TEXT,
    staging_error TEXT,
    droplet_hash TEXT,
    version TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (space_guid, name)
);
CREATE TABLE app_routes (
    app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,
    route_guid TEXT NOT NULL REFERENCES routes(guid) ON DELETE CASCADE,
    PRIMARY KEY (app_guid, route_guid)
);
CREATE TABLE events (
    guid TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    actor TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    actee TEXT NOT NULL,
    actee_type TEXT NOT NULL,
    actee_name TEXT NOT NULL,
    space_guid TEXT,
    metadata TEXT NOT NULL,
    timestamp TEXT NOT NULL
);
CREATE INDEX events_actee ON events (actee);
CREATE INDEX apps_space ON apps (space_guid);
"#;

const SERVICES: &str = r#"
CREATE TABLE service_brokers (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    username TEXT NOT NULL,
    password TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE services (
    guid TEXT PRIMARY KEY,
    label TEXT NOT NULL UNIQUE,
    unique_id TEXT NOT NULL,
    description TEXT NOT NULL,
    bindable BIGINT NOT NULL,
    tags TEXT NOT NULL,
    active BIGINT NOT NULL,
    service_broker_guid TEXT NOT NULL REFERENCES service_brokers(guid),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE service_plans (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    unique_id TEXT NOT NULL,
    description TEXT NOT NULL,
    free BIGINT NOT NULL,
    active BIGINT NOT NULL,
    service_guid TEXT NOT NULL REFERENCES services(guid),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (service_guid, name)
);
CREATE TABLE service_instances (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    space_guid TEXT NOT NULL REFERENCES spaces(guid),
    service_plan_guid TEXT REFERENCES service_plans(guid),
    credentials TEXT NOT NULL,
    syslog_drain_url TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (space_guid, name)
);
CREATE TABLE service_bindings (
    guid TEXT PRIMARY KEY,
    app_guid TEXT NOT NULL REFERENCES apps(guid),
    service_instance_guid TEXT NOT NULL REFERENCES service_instances(guid),
    credentials TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (app_guid, service_instance_guid)
);
CREATE INDEX service_bindings_app ON service_bindings (app_guid);
CREATE INDEX service_bindings_instance ON service_bindings (service_instance_guid)
"#;

const SESSIONS: &str = r#"
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_guid TEXT NOT NULL REFERENCES users(guid) ON DELETE CASCADE,
    client_address TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_guid)
"#;

const TENANCY: &str = r#"
CREATE TABLE organization_roles (
    organization_guid TEXT NOT NULL REFERENCES organizations(guid) ON DELETE CASCADE,
    user_guid TEXT NOT NULL REFERENCES users(guid) ON DELETE CASCADE,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (organization_guid, user_guid, role)
);
CREATE INDEX organization_roles_user ON organization_roles (user_guid);
CREATE TABLE space_roles (
    space_guid TEXT NOT NULL REFERENCES spaces(guid) ON DELETE CASCADE,
    user_guid TEXT NOT NULL REFERENCES users(guid) ON DELETE CASCADE,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (space_guid, user_guid, role)
);
CREATE INDEX space_roles_user ON space_roles (user_guid);
CREATE TABLE feature_flags (
    name TEXT PRIMARY KEY,
    enabled BIGINT NOT NULL,
    updated_at TEXT NOT NULL
);
INSERT INTO feature_flags (name, enabled, updated_at) VALUES ('user_org_creation', 0, '')
"#;

/// Quota definitions (org-wide, CF's defaults for `default`), space quotas owned by an
/// org, and which quota each org and space has. Existing orgs get `default`.
const QUOTAS: &str = r#"
CREATE TABLE quota_definitions (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    non_basic_services_allowed BIGINT NOT NULL,
    total_services BIGINT NOT NULL,
    total_routes BIGINT NOT NULL,
    memory_limit BIGINT NOT NULL,
    instance_memory_limit BIGINT NOT NULL,
    app_instance_limit BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
INSERT INTO quota_definitions (guid, name, non_basic_services_allowed, total_services, total_routes, memory_limit, instance_memory_limit, app_instance_limit, created_at, updated_at)
    VALUES ('5d1e2c1a-0000-4000-8000-000000000001', 'default', 1, 100, 1000, 10240, -1, -1, '', '');
ALTER TABLE organizations ADD COLUMN quota_definition_guid TEXT REFERENCES quota_definitions(guid);
UPDATE organizations SET quota_definition_guid = '5d1e2c1a-0000-4000-8000-000000000001';
CREATE TABLE space_quota_definitions (
    guid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    organization_guid TEXT NOT NULL REFERENCES organizations(guid) ON DELETE CASCADE,
    non_basic_services_allowed BIGINT NOT NULL,
    total_services BIGINT NOT NULL,
    total_routes BIGINT NOT NULL,
    memory_limit BIGINT NOT NULL,
    instance_memory_limit BIGINT NOT NULL,
    app_instance_limit BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (organization_guid, name)
);
ALTER TABLE spaces ADD COLUMN space_quota_definition_guid TEXT REFERENCES space_quota_definitions(guid) ON DELETE SET NULL
"#;

/// Health check settings per app (CF v2 names) and the releases of each app.
const RELEASES: &str = r#"
ALTER TABLE apps ADD COLUMN health_check_type TEXT NOT NULL DEFAULT 'port';
ALTER TABLE apps ADD COLUMN health_check_http_endpoint TEXT;
CREATE TABLE app_releases (
    guid TEXT PRIMARY KEY,
    app_guid TEXT NOT NULL REFERENCES apps(guid) ON DELETE CASCADE,
    number BIGINT NOT NULL,
    droplet_hash TEXT,
    environment_json TEXT NOT NULL,
    command TEXT,
    buildpack TEXT,
    detected_buildpack TEXT,
    detected_start_command TEXT,
    description TEXT NOT NULL,
    actor TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (app_guid, number)
);
CREATE INDEX app_releases_droplet ON app_releases (droplet_hash)
"#;

/// OAuth clients an administrator registered for the `client_credentials` grant. Their
/// tokens name the row's guid, so deleting the row revokes them (a new client with the
/// same id gets a new guid).
const OAUTH_CLIENTS: &str = r#"
CREATE TABLE oauth_clients (
    guid TEXT PRIMARY KEY,
    client_id TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    authorized_grant_types TEXT NOT NULL,
    authorities TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)
"#;

const APP_DRAINS: &str = r#"
CREATE TABLE app_drains (
    guid TEXT PRIMARY KEY,
    app_guid TEXT NOT NULL,
    name TEXT NOT NULL,
    uri TEXT NOT NULL,
    json BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    UNIQUE (app_guid, name)
)
"#;

const PLATFORM_SECRETS: &str = r#"
CREATE TABLE platform_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
)
"#;

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial schema: users, orgs, spaces, domains, routes, apps, events",
        sqlite: INITIAL,
        postgres: INITIAL,
    },
    Migration {
        version: 2,
        name: "services: brokers, services, plans, instances, bindings",
        sqlite: SERVICES,
        postgres: SERVICES,
    },
    Migration {
        version: 3,
        name: "sessions: revocable logins",
        sqlite: SESSIONS,
        postgres: SESSIONS,
    },
    Migration {
        version: 4,
        name: "tenancy: organization and space roles, feature flags",
        sqlite: TENANCY,
        postgres: TENANCY,
    },
    Migration {
        version: 5,
        name: "quotas: quota definitions, space quotas, org and space assignments",
        sqlite: QUOTAS,
        postgres: QUOTAS,
    },
    Migration {
        version: 6,
        name: "releases: app releases, health check type and endpoint",
        sqlite: RELEASES,
        postgres: RELEASES,
    },
    Migration {
        version: 7,
        name: "oauth clients: client_credentials grant for administrators' tools",
        sqlite: OAUTH_CLIENTS,
        postgres: OAUTH_CLIENTS,
    },
    Migration {
        version: 8,
        name: "app drains: where an app's log lines are also sent",
        sqlite: APP_DRAINS,
        postgres: APP_DRAINS,
    },
    Migration {
        version: 9,
        name: "platform secrets: one token-signing secret for every controller",
        sqlite: PLATFORM_SECRETS,
        postgres: PLATFORM_SECRETS,
    },
];

pub(crate) async fn run(db: &Db) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS strato_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
    )
    .execute(db.pool())
    .await?;
    let current = db.schema_version().await?;
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let sql = match db.backend() {
            Backend::Sqlite => m.sqlite,
            Backend::Postgres => m.postgres,
        };
        apply(db, m, sql).await.map_err(|e| DbError::Migration {
            version: m.version,
            name: m.name.to_string(),
            error: e.to_string(),
        })?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
    }
    Ok(())
}

async fn apply(db: &Db, m: &Migration, sql: &str) -> std::result::Result<(), sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        sqlx::query(stmt).execute(&mut *tx).await?;
    }
    sqlx::query("INSERT INTO strato_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
        .bind(m.version)
        .bind(m.name)
        .bind(strato_core::now_rfc3339())
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}
