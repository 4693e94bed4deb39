//! First start: the admin user, the `default` quota, a default organization and space, and
//! the shared domain.
//!
//! The admin's password is `STRATO_ADMIN_PASSWORD` when set, otherwise generated; either
//! way it is written once, mode 0600, to the admin password file so `scripts/up` can show
//! it. It is never logged.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rand::distributions::Alphanumeric;
use rand::Rng;
use strato_db::{Db, DbError, Filter};

/// What bootstrap did, for the daemon to report.
#[derive(Debug, Default)]
pub struct Bootstrapped {
    pub created_admin: bool,
    /// Set only when the password was generated here (to print once).
    pub generated_password: Option<String>,
}

/// Creates whatever of the initial state is missing. Safe to run on every start.
pub async fn ensure(
    db: &Db,
    domain: &str,
    password_file: &Path,
    env_password: Option<String>,
) -> anyhow::Result<Bootstrapped> {
    let mut out = Bootstrapped::default();
    if db.user_by_name("admin").await?.is_none() {
        let (password, generated) = match env_password.filter(|p| !p.is_empty()) {
            Some(p) => (p, false),
            None => (
                rand::thread_rng()
                    .sample_iter(&Alphanumeric)
                    .take(20)
                    .map(char::from)
                    .collect::<String>(),
                true,
            ),
        };
        let hash =
            crate::auth::hash_password(&password).map_err(|e| anyhow::anyhow!(e.description))?;
        write_secret(password_file, format!("{password}\n").as_bytes())?;
        match db.create_user("admin", &hash, true).await {
            Ok(_) | Err(DbError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        out.created_admin = true;
        if generated {
            out.generated_password = Some(password);
        }
    }
    // The migration made `default`; an administrator may have deleted it since.
    if db.quota_by_name("default").await?.is_none() {
        match db
            .create_quota("default", &strato_db::QuotaLimits::cf_default())
            .await
        {
            Ok(_) | Err(DbError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let org = match db
        .list_orgs(&Filter {
            name: Some("default".into()),
            ..Default::default()
        })
        .await?
        .into_iter()
        .next()
    {
        Some(o) => o,
        None => db.create_org("default").await?,
    };
    if db
        .list_spaces(&Filter {
            organization_guid: Some(org.guid.clone()),
            ..Default::default()
        })
        .await?
        .is_empty()
    {
        db.create_space(&org.guid, "default").await?;
    }
    if db
        .list_domains(&Filter {
            name: Some(domain.to_ascii_lowercase()),
            ..Default::default()
        })
        .await?
        .is_empty()
    {
        db.create_shared_domain(domain).await?;
    }
    Ok(out)
}

/// The key tokens are signed with: read from `path`, or made (64 random bytes) and saved
/// there 0600 on first use.
pub fn token_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    if let Ok(s) = std::fs::read(path) {
        if s.len() >= 32 {
            return Ok(s);
        }
    }
    let secret: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
    write_secret(path, &secret)?;
    Ok(secret)
}

/// What `kato node setup firstuser` made.
#[derive(Debug)]
pub struct FirstUser {
    pub user_guid: String,
    pub org_guid: String,
    pub space_guid: String,
    pub created_org: bool,
}

/// `kato node setup firstuser EMAIL ORG`: an administrator named EMAIL, the organization
/// ORG (made if missing) with a space `default`, the user its manager and the space's
/// developer and manager — what Stackato's first-user setup did. A taken name is refused.
pub async fn first_user(
    db: &Db,
    username: &str,
    password: &str,
    org_name: &str,
) -> anyhow::Result<FirstUser> {
    if username.trim().is_empty() || org_name.trim().is_empty() {
        anyhow::bail!("give a user name (an email address) and an organization name");
    }
    if password.len() < 8 {
        anyhow::bail!("the password must have at least 8 characters");
    }
    if db.user_by_name(username).await?.is_some() {
        anyhow::bail!("a user named {username} exists already; give it admin rights with `strato admin grant {username}` instead");
    }
    let hash = crate::auth::hash_password(password).map_err(|e| anyhow::anyhow!(e.description))?;
    let existing = db
        .list_orgs(&Filter {
            name: Some(org_name.to_string()),
            ..Default::default()
        })
        .await?
        .into_iter()
        .next();
    let created_org = existing.is_none();
    let org = match existing {
        Some(o) => o,
        None => db.create_org(org_name).await?,
    };
    let space = match db
        .list_spaces(&Filter {
            organization_guid: Some(org.guid.clone()),
            name: Some("default".into()),
            ..Default::default()
        })
        .await?
        .into_iter()
        .next()
    {
        Some(s) => s,
        None => db.create_space(&org.guid, "default").await?,
    };
    let user = db.create_user(username, &hash, true).await?;
    for role in [strato_db::OrgRole::User, strato_db::OrgRole::Manager] {
        db.add_org_role(&org.guid, &user.guid, role).await?;
    }
    for role in [
        strato_db::SpaceRole::Developer,
        strato_db::SpaceRole::Manager,
    ] {
        db.add_space_role(&space.guid, &user.guid, role).await?;
    }
    Ok(FirstUser {
        user_guid: user.guid,
        org_guid: org.guid,
        space_guid: space.guid,
        created_org,
    })
}

/// Replaces the token-signing secret with a new random one: every token signed with the
/// old one stops working (`kato op regenerate token-signing-secret`). The controller must
/// be restarted to sign with the new one.
/// Where the token-signing secret lives in the controller database.
const TOKEN_SECRET: &str = "token_signing_secret";

/// The key tokens and blob URLs are signed with, one for every controller of a cluster:
/// kept in the controller database. The first controller to start stores the secret it
/// has in `path` (made there if missing, so a micro cloud's tokens stay good when the
/// secret moves into the database); `path` then mirrors the database's, 0600.
pub async fn shared_token_secret(db: &Db, path: &Path) -> anyhow::Result<Vec<u8>> {
    let candidate = token_secret(path)?;
    let stored = db
        .secret_or_insert(TOKEN_SECRET, &hex::encode(&candidate))
        .await?;
    let secret = hex::decode(stored.trim()).map_err(|_| {
        anyhow::anyhow!("the token-signing secret in the controller database is damaged; run `kato op regenerate token-signing-secret`")
    })?;
    if secret != candidate {
        write_secret(path, &secret)?;
    }
    Ok(secret)
}

/// `kato op regenerate token-signing-secret`: a new secret for every controller; each
/// one reads it when it starts again, and every token issued before stops working.
pub async fn regenerate_token_secret(db: &Db, path: &Path) -> anyhow::Result<()> {
    let secret: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
    db.set_secret(TOKEN_SECRET, &hex::encode(&secret)).await?;
    write_secret(path, &secret)?;
    Ok(())
}

/// Writes a file only its owner can read, atomically.
fn write_secret(path: &Path, secret: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(secret)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_secret_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token-secret");
        let first = token_secret(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(
            token_secret(&path).unwrap(),
            first,
            "the same key on the next start"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[tokio::test]
    async fn creates_admin_org_space_domain_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&Db::sqlite_url(&dir.path().join("c.sqlite")))
            .await
            .unwrap();
        let pw = dir.path().join("admin-password");
        let b = ensure(&db, "localhost", &pw, None).await.unwrap();
        let generated = b.generated_password.unwrap();
        assert_eq!(std::fs::read_to_string(&pw).unwrap().trim(), generated);
        assert_eq!(
            std::fs::metadata(&pw).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let admin = db.user_by_name("admin").await.unwrap().unwrap();
        assert!(crate::auth::verify_password(
            &generated,
            &admin.password_hash
        ));
        let again = ensure(&db, "localhost", &pw, Some("other".into()))
            .await
            .unwrap();
        assert!(!again.created_admin, "an existing admin is left alone");
        assert_eq!(db.list_orgs(&Default::default()).await.unwrap().len(), 1);
        let default = db.quota_by_name("default").await.unwrap().unwrap();
        assert_eq!(
            db.list_orgs(&Default::default()).await.unwrap()[0].quota_definition_guid,
            Some(default.guid.clone()),
            "the default org has the default quota"
        );
        let org = db.list_orgs(&Default::default()).await.unwrap()[0]
            .guid
            .clone();
        let spare = db.create_quota("spare", &default.limits).await.unwrap();
        db.set_org_quota(&org, &spare.guid).await.unwrap();
        assert!(db.delete_quota(&default.guid).await.unwrap());
        ensure(&db, "localhost", &pw, None).await.unwrap();
        assert_eq!(
            db.quota_by_name("default").await.unwrap().unwrap().limits,
            strato_db::QuotaLimits::cf_default(),
            "a deleted default quota is made again"
        );
        assert_eq!(
            db.list_domains(&Default::default()).await.unwrap()[0].name,
            "localhost"
        );
    }
}
