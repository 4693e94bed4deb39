//! Droplets on a DEA: fetch by URI, verify the sha256, cache, unpack into an instance dir.
//!
//! The stager's contract: a gzip'd tarball `<sha256>.tgz` holding `app/` (the staged app)
//! and `staging_info.json` (`{"detected_buildpack": "...", "start_command": "..."}`).
//! `droplet_uri` is `file:///abs/path/<sha>.tgz` in the micro cloud, `http(s)://...` when
//! the controller serves blobs.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use strato_blobs::remote::{self, RemoteError};
use strato_blobs::{BlobError, BlobKind, BlobStore};

/// What can go wrong preparing a droplet.
#[derive(Debug, thiserror::Error)]
pub enum DropletError {
    #[error("droplet sha256 '{0}' is not 64 hex characters")]
    BadSha(String),
    #[error("unsupported droplet URI '{0}': use file:///abs/path or http(s)://")]
    BadUri(String),
    #[error("droplet {uri} has sha256 {actual}, expected {expected}: the blob is corrupt or the wrong one")]
    ShaMismatch {
        uri: String,
        expected: String,
        actual: String,
    },
    #[error("fetch droplet {uri}: {message}")]
    Fetch { uri: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("droplet cache: {0}")]
    Cache(String),
    #[error("droplet has no app/ directory: was it made by the stager?")]
    NoApp,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DropletError {
    let context = context.into();
    move |source| DropletError::Io { context, source }
}

/// `staging_info.json` inside a droplet.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct StagingInfo {
    #[serde(default)]
    pub detected_buildpack: String,
    #[serde(default)]
    pub start_command: String,
    /// `hooks: pre-running:`, run before the start command on every start.
    #[serde(default)]
    pub pre_running: Vec<Hook>,
    /// `cron:` lines, run in instance 0.
    #[serde(default)]
    pub cron: Vec<String>,
}

/// One `pre-running` hook.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Hook {
    pub command: String,
    /// Written with a leading `-`: its failure does not stop the start.
    #[serde(default)]
    pub ignore_failure: bool,
}

/// Returns the cached droplet `<cache>/<sha>.tgz`, fetching it first when it is not there
/// yet. The bytes are streamed into the cache and kept only when they hash to `sha`.
pub async fn ensure_cached(cache: &Path, sha: &str, uri: &str) -> Result<PathBuf, DropletError> {
    let sha = sha.to_ascii_lowercase();
    let store = BlobStore::open(cache).map_err(|e| DropletError::Cache(e.to_string()))?;
    match remote::fetch(&store, BlobKind::Droplet, &sha, uri).await {
        Ok(path) => Ok(path),
        Err(RemoteError::Blob(BlobError::InvalidSha(_))) => Err(DropletError::BadSha(sha)),
        Err(RemoteError::Blob(BlobError::ShaMismatch { expected, actual })) => {
            Err(DropletError::ShaMismatch {
                uri: uri.split('?').next().unwrap_or(uri).to_string(),
                expected,
                actual,
            })
        }
        Err(RemoteError::BadUri(uri)) => Err(DropletError::BadUri(uri)),
        Err(RemoteError::Fetch { uri, message }) => Err(DropletError::Fetch { uri, message }),
        Err(e) => Err(DropletError::Cache(e.to_string())),
    }
}

/// Unpacks `droplet` into `instance_dir` (`app/`, `staging_info.json`), hands `app/` to
/// `uid:gid`, and returns the staging info. Entries that would land outside the dir are
/// skipped by the tar reader.
pub fn unpack(
    droplet: &Path,
    instance_dir: &Path,
    uid: u32,
    gid: u32,
) -> Result<StagingInfo, DropletError> {
    fs::create_dir_all(instance_dir).map_err(io(format!("create {}", instance_dir.display())))?;
    let file = fs::File::open(droplet).map_err(io(format!("open {}", droplet.display())))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive
        .unpack(instance_dir)
        .map_err(io(format!("unpack {}", droplet.display())))?;
    let app = instance_dir.join("app");
    if !app.is_dir() {
        return Err(DropletError::NoApp);
    }
    chown_tree(&app, uid, gid)?;
    let info = match fs::read(instance_dir.join("staging_info.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => StagingInfo::default(),
    };
    Ok(info)
}

/// `chown -R` without following symlinks.
fn chown_tree(root: &Path, uid: u32, gid: u32) -> Result<(), DropletError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .map_err(io(format!("chown {}", path.display())))?;
        let meta = fs::symlink_metadata(&path).map_err(io(format!("stat {}", path.display())))?;
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(io(format!("list {}", path.display())))? {
                stack.push(
                    entry
                        .map_err(io(format!("list {}", path.display())))?
                        .path(),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_droplet(dir: &Path) -> (PathBuf, String) {
        let path = dir.join("d.tgz");
        let file = fs::File::create(&path).unwrap();
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut add = |name: &str, body: &[u8], mode: u32| {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(mode);
            header.set_cksum();
            tar.append_data(&mut header, name, body).unwrap();
        };
        add("app/run.sh", b"echo hi\n", 0o755);
        add(
            "staging_info.json",
            br#"{"detected_buildpack":"x","start_command":"./run.sh"}"#,
            0o644,
        );
        tar.into_inner().unwrap().finish().unwrap();
        let sha = strato_blobs::sha256_file(&path).unwrap();
        (path, sha)
    }

    #[tokio::test]
    async fn caches_verifies_and_unpacks() {
        let dir = tempfile::tempdir().unwrap();
        let (blob, sha) = make_droplet(dir.path());
        let uri = format!("file://{}", blob.display());
        let cache = dir.path().join("cache");
        let cached = ensure_cached(&cache, &sha, &uri).await.unwrap();
        assert_eq!(cached, cache.join(format!("{sha}.tgz")));
        let wrong = "0".repeat(64);
        assert!(matches!(
            ensure_cached(&cache, &wrong, &uri).await,
            Err(DropletError::ShaMismatch { .. })
        ));
        assert!(!cache.join(format!("{wrong}.tgz")).exists());
        let info = unpack(&cached, &dir.path().join("inst"), 4321, 4321).unwrap();
        assert_eq!(info.start_command, "./run.sh");
        let meta = fs::metadata(dir.path().join("inst/app/run.sh")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.uid(), 4321);
    }

    #[tokio::test]
    async fn refuses_bad_uris_and_shas() {
        let dir = tempfile::tempdir().unwrap();
        let sha = "a".repeat(64);
        assert!(matches!(
            ensure_cached(dir.path(), &sha, "ftp://x").await,
            Err(DropletError::BadUri(_))
        ));
        assert!(matches!(
            ensure_cached(dir.path(), "../x", "file:///x").await,
            Err(DropletError::BadSha(_))
        ));
    }
}
