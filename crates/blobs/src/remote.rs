//! Blobs that travel between nodes: fetched from a `file://` or `http(s)://` URI into a
//! store (verified by their sha256 before they get their name), and uploaded with an
//! HTTP `PUT` (a stager on another node handing its droplet to the controller).
//!
//! In a cluster the URIs are the controller's signed blob URLs; on a micro cloud they are
//! `file://` paths into the node's shared blob directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{BlobError, BlobKind, BlobStore, BlobWriter};

/// Why a blob could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("unsupported blob URI '{0}': use file:///abs/path or http(s)://")]
    BadUri(String),
    #[error("fetch {uri}: {message}")]
    Fetch { uri: String, message: String },
    #[error("upload to {url}: {message}")]
    Upload { url: String, message: String },
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// Returns the stored blob `sha` of `kind`, fetching it from `uri` first when the store
/// does not hold it. A blob whose bytes hash to anything else is discarded.
pub async fn fetch(
    store: &BlobStore,
    kind: BlobKind,
    sha: &str,
    uri: &str,
) -> Result<PathBuf, RemoteError> {
    let path = store.path_of(kind, sha)?;
    if path.is_file() {
        return Ok(path);
    }
    let writer = fetch_into(uri, store.writer(kind)?).await?;
    writer.commit_expecting(sha)?;
    Ok(path)
}

/// Streams the bytes at `uri` into `writer` (not committed).
pub async fn fetch_into(uri: &str, mut writer: BlobWriter) -> Result<BlobWriter, RemoteError> {
    let shown = redact(uri);
    let fetch_err = move |message: String| RemoteError::Fetch {
        uri: shown.clone(),
        message,
    };
    if let Some(path) = uri.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(RemoteError::BadUri(uri.to_string()));
        }
        let path = path.to_string();
        let blocking_err = fetch_err.clone();
        return tokio::task::spawn_blocking(move || {
            let fetch_err = blocking_err;
            let mut file =
                std::fs::File::open(&path).map_err(|e| fetch_err(format!("open {path}: {e}")))?;
            std::io::copy(&mut file, &mut writer)
                .map_err(|e| fetch_err(format!("copy {path}: {e}")))?;
            Ok(writer)
        })
        .await
        .map_err(|e| fetch_err(e.to_string()))?;
    }
    if !(uri.starts_with("http://") || uri.starts_with("https://")) {
        return Err(RemoteError::BadUri(redact(uri)));
    }
    let mut response = client()
        .get(uri)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| fetch_err(chain(&e.without_url())))?;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| fetch_err(chain(&e.without_url())))?
    {
        writer
            .write_all(&chunk)
            .map_err(|e| fetch_err(format!("store: {e}")))?;
    }
    Ok(writer)
}

/// `PUT`s the file at `path` to `url`.
pub async fn upload(path: &Path, url: &str) -> Result<(), RemoteError> {
    let upload_err = |message: String| RemoteError::Upload {
        url: redact(url),
        message,
    };
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| upload_err(format!("open {}: {e}", path.display())))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| upload_err(e.to_string()))?
        .len();
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let response = client()
        .put(url)
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(body)
        .send()
        .await
        .map_err(|e| upload_err(chain(&e.without_url())))?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return Err(upload_err(format!("{status}: {}", text.trim())));
    }
    Ok(())
}

/// An HTTP client that gives up on an unreachable node instead of hanging: 10 s to
/// connect, 60 s without a byte read.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}

/// An error with its causes ("error sending request" alone says nothing).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A URI for messages: its query (which may carry a signature) cut off.
fn redact(uri: &str) -> String {
    match uri.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_stay_out_of_messages() {
        assert_eq!(
            redact("http://a/v2/blobs/droplet/x?expires=1&signature=abc"),
            "http://a/v2/blobs/droplet/x?…"
        );
        assert_eq!(redact("file:///x"), "file:///x");
    }

    #[tokio::test]
    async fn a_file_uri_is_fetched_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("store")).unwrap();
        let source = dir.path().join("src.zip");
        std::fs::write(&source, b"package").unwrap();
        let sha = crate::sha256_file(&source).unwrap();
        let uri = format!("file://{}", source.display());
        let path = fetch(&store, BlobKind::Package, &sha, &uri).await.unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"package");

        let wrong = "0".repeat(64);
        let err = fetch(&store, BlobKind::Package, &wrong, &uri)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RemoteError::Blob(BlobError::ShaMismatch { .. })),
            "{err}"
        );
        assert!(!store.exists(BlobKind::Package, &wrong));
        assert!(matches!(
            fetch(&store, BlobKind::Package, &wrong, "ftp://x").await,
            Err(RemoteError::BadUri(_))
        ));
    }
}
