//! Signed blob URLs: how stagers and DEAs on other nodes fetch packages and droplets from
//! the controller, and how a stager there hands its droplet back.
//!
//! On a micro cloud every role shares the node's blob directory, so blobs travel as
//! `file://` URIs. In a cluster the controller instead hands out
//! `http://CORE/v2/blobs/{droplet|package}/{sha256}?expires=UNIX&signature=HEX`: the signature
//! is an HMAC-SHA256 (key derived from the controller's token secret) over the method, the
//! kind, the sha256 and the expiry, so a URL grants exactly one blob, one way, for a while,
//! and nothing else; a DEA needs no credentials of its own to run what it was told to run.
//! The receiver still checks the sha256 of what it got (the content address).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use strato_blobs::{BlobError, BlobKind};
use strato_core::ApiError;

use crate::api::Endpoint;
use crate::cf::{CfError, CfResult};
use crate::Shared;

type HmacSha256 = Hmac<Sha256>;

/// How long a URL handed to a stager or DEA stays good.
pub const URL_TTL: Duration = Duration::from_secs(3600);

/// Makes and checks signed blob URLs for one controller.
#[derive(Clone)]
pub struct BlobSigner {
    key: Vec<u8>,
    /// `http://ADDRESS:PORT` where other nodes reach this controller.
    base: String,
}

/// Why a signed URL was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("this blob URL carries no expires/signature: ask the controller for a fresh one")]
    Missing,
    #[error("this blob URL expired: ask the controller for a fresh one")]
    Expired,
    #[error(
        "this blob URL's signature does not match: it was altered or made by another controller"
    )]
    Invalid,
}

impl BlobSigner {
    /// A signer whose key is derived from `secret` (the controller's token secret), so
    /// every controller of a cluster that shares the secret accepts every other's URLs.
    pub fn new(secret: &[u8], base: &str) -> BlobSigner {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
        mac.update(b"strato signed blob urls v1");
        BlobSigner {
            key: mac.finalize().into_bytes().to_vec(),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// A URL that lets its holder `method` (GET or PUT) the blob until `expires`.
    pub fn url(&self, method: &Method, kind: BlobKind, sha: &str, expires: u64) -> String {
        format!(
            "{}/v2/blobs/{}/{sha}?expires={expires}&signature={}",
            self.base,
            kind.name(),
            self.signature(method, kind, sha, expires)
        )
    }

    /// A URL good for [`URL_TTL`] from now.
    pub fn fresh_url(&self, method: &Method, kind: BlobKind, sha: &str) -> String {
        self.url(method, kind, sha, unix_now() + URL_TTL.as_secs())
    }

    /// Where the stager of staging task `task` uploads its droplet, good for
    /// [`URL_TTL`]: a template whose `{sha256}` the stager fills in (the droplet's name is
    /// not known before it is built, so this URL is bound to the task instead).
    pub fn droplet_upload_template(&self, task: &str) -> String {
        let expires = unix_now() + URL_TTL.as_secs();
        let task = encode_task(task);
        format!(
            "{}/v2/blobs/droplet/{{sha256}}?task={task}&expires={expires}&signature={}",
            self.base,
            self.signature(
                &Method::PUT,
                BlobKind::Droplet,
                &format!("task:{task}"),
                expires
            )
        )
    }

    fn mac(&self, method: &Method, kind: BlobKind, sha: &str, expires: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("any key length");
        mac.update(format!("{method}\n{}\n{sha}\n{expires}", kind.name()).as_bytes());
        mac
    }

    fn signature(&self, method: &Method, kind: BlobKind, sha: &str, expires: u64) -> String {
        hex::encode(self.mac(method, kind, sha, expires).finalize().into_bytes())
    }

    /// Checks a URL's `expires` and `signature` query parameters at time `now`.
    pub fn verify(
        &self,
        method: &Method,
        kind: BlobKind,
        sha: &str,
        query: &str,
        now: u64,
    ) -> Result<(), SignatureError> {
        let params = crate::cf::parse_query(query);
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let (Some(expires), Some(signature)) = (param("expires"), param("signature")) else {
            return Err(SignatureError::Missing);
        };
        // An upload URL is bound to a staging task, a download URL to its blob.
        let subject = match (method, param("task")) {
            (&Method::PUT, Some(task)) => format!("task:{}", encode_task(task)),
            _ => sha.to_string(),
        };
        let sha = subject.as_str();
        let expires: u64 = expires.parse().map_err(|_| SignatureError::Invalid)?;
        let signature = hex::decode(signature).map_err(|_| SignatureError::Invalid)?;
        // Constant-time comparison (hmac's verify), checked before the expiry so a forged
        // URL learns nothing from the answer.
        self.mac(method, kind, sha, expires)
            .verify_slice(&signature)
            .map_err(|_| SignatureError::Invalid)?;
        if expires < now {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }
}

/// A task id as it may appear in a URL: task ids are uuids, anything else is dropped.
fn encode_task(task: &str) -> String {
    task.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

fn parse_kind(name: &str) -> CfResult<BlobKind> {
    BlobKind::from_name(name).ok_or_else(|| ApiError::not_found("blob kind", name).into())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `GET` and `PUT /v2/blobs/{kind}/{sha}`; `upload_limit` bounds a droplet upload.
pub(crate) fn endpoints(upload_limit: usize) -> Vec<Endpoint> {
    vec![
        (
            Method::GET,
            "/v2/blobs/{kind}/{sha}",
            on(MethodFilter::GET, download),
        ),
        (
            Method::PUT,
            "/v2/blobs/{kind}/{sha}",
            on(MethodFilter::PUT, upload).layer(DefaultBodyLimit::max(upload_limit)),
        ),
    ]
}

/// Checks the URL against this controller's signer; a controller without one (a micro
/// cloud, where blobs are shared files) serves no blobs.
fn authorize(
    c: &Shared,
    method: &Method,
    kind: BlobKind,
    sha: &str,
    query: Option<&str>,
) -> CfResult<()> {
    let Some(signer) = &c.blob_signer else {
        return Err(ApiError::new(
            403,
            10003,
            "CF-NotAuthorized",
            "this controller serves blobs only in a cluster (its node has STRATO_NODE_ADDRESS and a NATS bus)",
        )
        .into());
    };
    signer
        .verify(method, kind, sha, query.unwrap_or(""), unix_now())
        .map_err(|e| CfError(ApiError::new(403, 10003, "CF-NotAuthorized", e.to_string())))
}

fn blob_err(e: BlobError) -> CfError {
    match e {
        BlobError::InvalidSha(sha) => ApiError::invalid_request(format!(
            "'{sha}' is not a sha256: expected 64 lowercase hex digits"
        ))
        .into(),
        BlobError::ShaMismatch { expected, actual } => ApiError::invalid_request(format!(
            "the upload has sha256 {actual}, not {expected}: it was cut short or altered; upload it again"
        ))
        .into(),
        e => ApiError::server(e.to_string()).into(),
    }
}

async fn download(
    State(c): State<Shared>,
    Path((kind, sha)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> CfResult<Response> {
    let kind = parse_kind(&kind)?;
    authorize(&c, &Method::GET, kind, &sha, query.as_deref())?;
    let path = c.blobs.path_of(kind, &sha).map_err(blob_err)?;
    // Another controller may hold it (it stored it while the copy here was on its way).
    if !path.is_file() {
        crate::peers::fetch_missing(&c, kind, &sha).await;
    }
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found(kind.name(), &sha).into())
        }
        Err(e) => return Err(ApiError::server(format!("open {}: {e}", path.display())).into()),
    };
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::server(e.to_string()))?
        .len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

/// A stager on another node stores the droplet it built. Only droplets are uploaded this
/// way (packages come from users through `/v2/apps/{guid}/bits`).
async fn upload(
    State(c): State<Shared>,
    Path((kind, sha)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Body,
) -> CfResult<StatusCode> {
    let kind = parse_kind(&kind)?;
    authorize(&c, &Method::PUT, kind, &sha, query.as_deref())?;
    if kind != BlobKind::Droplet {
        return Err(ApiError::invalid_request("only droplets are uploaded here").into());
    }
    let mut stream = body.into_data_stream();
    if c.blobs.exists(kind, &sha) {
        // Read the body anyway: answering before it is read makes the sender's write
        // fail (a stager on this node shares the store, so it always finds it here).
        while let Some(chunk) = stream.next().await {
            chunk.map_err(|e| {
                ApiError::invalid_request(format!("the upload broke off ({e}); upload it again"))
            })?;
        }
        crate::peers::blob_stored(&c, kind, &sha).await;
        return Ok(StatusCode::CREATED);
    }
    let mut writer = c.blobs.writer(kind).map_err(blob_err)?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::invalid_request(format!("the upload broke off ({e}); upload it again"))
        })?;
        std::io::Write::write_all(&mut writer, &chunk)
            .map_err(|e| ApiError::server(format!("storing the droplet: {e}")))?;
    }
    writer.commit_expecting(&sha).map_err(blob_err)?;
    crate::peers::blob_stored(&c, kind, &sha).await;
    Ok(StatusCode::CREATED)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn query_of(url: &str) -> &str {
        url.split_once('?').map(|(_, q)| q).unwrap()
    }

    #[test]
    fn a_url_grants_one_blob_one_way_until_it_expires() {
        let s = BlobSigner::new(b"secret", "http://10.0.0.1:8080/");
        let url = s.url(&Method::GET, BlobKind::Droplet, SHA, 1000);
        assert!(url.starts_with(&format!("http://10.0.0.1:8080/v2/blobs/droplet/{SHA}?")));
        let q = query_of(&url);
        assert_eq!(
            s.verify(&Method::GET, BlobKind::Droplet, SHA, q, 999),
            Ok(())
        );
        assert_eq!(
            s.verify(&Method::GET, BlobKind::Droplet, SHA, q, 1001),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            s.verify(&Method::PUT, BlobKind::Droplet, SHA, q, 999),
            Err(SignatureError::Invalid),
            "a download URL is no upload URL"
        );
        assert_eq!(
            s.verify(&Method::GET, BlobKind::Package, SHA, q, 999),
            Err(SignatureError::Invalid)
        );
        let other = SHA.replace('0', "1");
        assert_eq!(
            s.verify(&Method::GET, BlobKind::Droplet, &other, q, 999),
            Err(SignatureError::Invalid)
        );
        let later = q.replace("expires=1000", "expires=9999");
        assert_eq!(
            s.verify(&Method::GET, BlobKind::Droplet, SHA, &later, 999),
            Err(SignatureError::Invalid),
            "the expiry is signed"
        );
        assert_eq!(
            s.verify(&Method::GET, BlobKind::Droplet, SHA, "", 999),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn an_upload_url_is_bound_to_its_staging_task() {
        let s = BlobSigner::new(b"secret", "http://10.0.0.1:8080");
        let template = s.droplet_upload_template("task-1");
        let url = template.replace("{sha256}", SHA);
        assert!(url.starts_with(&format!(
            "http://10.0.0.1:8080/v2/blobs/droplet/{SHA}?task=task-1&"
        )));
        let q = query_of(&url);
        assert_eq!(s.verify(&Method::PUT, BlobKind::Droplet, SHA, q, 0), Ok(()));
        assert_eq!(
            s.verify(
                &Method::PUT,
                BlobKind::Droplet,
                SHA,
                &q.replace("task-1", "task-2"),
                0
            ),
            Err(SignatureError::Invalid),
            "another task's upload"
        );
        assert_eq!(
            s.verify(&Method::GET, BlobKind::Droplet, SHA, q, 0),
            Err(SignatureError::Invalid),
            "an upload URL downloads nothing"
        );
    }

    #[test]
    fn another_secret_makes_other_signatures() {
        let a = BlobSigner::new(b"one", "http://a");
        let b = BlobSigner::new(b"two", "http://a");
        let url = a.url(&Method::GET, BlobKind::Droplet, SHA, 1000);
        assert_eq!(
            b.verify(&Method::GET, BlobKind::Droplet, SHA, query_of(&url), 1),
            Err(SignatureError::Invalid)
        );
    }
}
