//! The controller database.
//!
//! One schema, two real backends through sqlx's `Any` driver: SQLite (one file, the micro
//! cloud) and PostgreSQL (a cluster). Migrations are numbered and recorded in
//! `strato_migrations`, so a database made by an older Strato is brought forward at start.
//! Repositories are plain async methods on [`Db`]; the controller never writes SQL itself.

mod clients;
mod drains;
pub mod leader;
mod migrations;
mod models;
mod quotas;
mod releases;
mod repo;
mod secrets;
mod services;
mod tenancy;

pub use clients::NewOAuthClient;
pub use models::*;
pub use releases::NewRelease;
pub use repo::Filter;
pub use services::CatalogEntry;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyPool;

/// Which engine a [`Db`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What can go wrong in the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "unsupported database url '{0}': use sqlite://PATH or postgres://USER:PASS@HOST:PORT/DB"
    )]
    BadUrl(String),
    #[error("{what} already exists")]
    Conflict { what: String },
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migration {version} ({name}) failed: {error}")]
    Migration {
        version: i64,
        name: String,
        error: String,
    },
}

pub type Result<T> = std::result::Result<T, DbError>;

/// A handle on the controller database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

impl Db {
    /// Connects and brings the schema up to date.
    ///
    /// `sqlite:///path/to/file.sqlite` (created if missing) or `postgres://...`.
    pub async fn connect(url: &str) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::BadUrl(url.to_string()));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let max = if backend == Backend::Sqlite { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        use sqlx::Executor;
                        conn.execute("PRAGMA journal_mode=WAL").await?;
                        conn.execute("PRAGMA foreign_keys=ON").await?;
                        conn.execute("PRAGMA busy_timeout=5000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let db = Db { pool, backend };
        migrations::run(&db).await?;
        Ok(db)
    }

    /// The sqlite URL for a file path.
    pub fn sqlite_url(path: &std::path::Path) -> String {
        format!("sqlite://{}", path.display())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The highest migration applied.
    pub async fn schema_version(&self) -> Result<i64> {
        use sqlx::Row;
        let row: AnyRow =
            sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM strato_migrations")
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get::<i64, _>("v")?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Maps a unique-constraint violation to [`DbError::Conflict`].
pub(crate) fn conflict_or(e: sqlx::Error, what: impl FnOnce() -> String) -> DbError {
    if let sqlx::Error::Database(d) = &e {
        if d.is_unique_violation() {
            return DbError::Conflict { what: what() };
        }
    }
    DbError::Sql(e)
}
