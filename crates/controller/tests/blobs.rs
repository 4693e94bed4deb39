//! Blobs for other nodes over real HTTP: a DEA downloads a droplet with the signed URL the
//! controller put in its start message, a stager uploads one with a signed PUT URL, and
//! anything else (no signature, an altered one, the wrong way, the wrong bytes) is refused
//! without storing anything.

use axum::http::Method;
use strato_blobs::BlobKind;
use strato_controller::staging::blob_uri;

mod common;
use common::Served;

/// The controller signs URLs for `PLACEHOLDER`; the test sends them to the real port.
const PLACEHOLDER: &str = "http://core.invalid:8080";

async fn cluster_controller() -> Served {
    Served::start(|cfg| cfg.blob_base_url = Some(PLACEHOLDER.to_string())).await
}

fn on_port(s: &Served, url: &str) -> String {
    url.replace(PLACEHOLDER, &s.base)
}

#[tokio::test]
async fn a_signed_url_serves_its_droplet_and_nothing_else() {
    let s = cluster_controller().await;
    let file = s.dir.path().join("d.tgz");
    std::fs::write(&file, b"droplet bytes").unwrap();
    let sha = s.c.blobs.put_file(BlobKind::Droplet, &file).unwrap();

    let url = blob_uri(&s.c, BlobKind::Droplet, &sha).unwrap();
    assert!(
        url.starts_with(&format!("{PLACEHOLDER}/v2/blobs/droplet/{sha}?expires=")),
        "{url}"
    );
    let got = s.http.get(on_port(&s, &url)).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"droplet bytes");

    let altered = on_port(&s, &url).replace("signature=", "signature=00");
    let refused = s.http.get(altered).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["description"].as_str().unwrap().contains("signature"),
        "{body}"
    );

    let unsigned = format!("{}/v2/blobs/droplet/{sha}", s.base);
    assert_eq!(s.http.get(unsigned).send().await.unwrap().status(), 403);

    let as_package = on_port(&s, &url).replace("/droplet/", "/package/");
    assert_eq!(s.http.get(as_package).send().await.unwrap().status(), 403);

    let upload_with_download_url = s
        .http
        .put(on_port(&s, &url))
        .body("other bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(upload_with_download_url.status(), 403);
}

#[tokio::test]
async fn a_missing_blob_is_404_even_with_a_good_signature() {
    let s = cluster_controller().await;
    let sha = "ab".repeat(32);
    let url = blob_uri(&s.c, BlobKind::Droplet, &sha).unwrap();
    assert_eq!(
        s.http.get(on_port(&s, &url)).send().await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn a_stager_uploads_a_droplet_that_must_match_its_sha() {
    let s = cluster_controller().await;
    let bytes = b"a droplet built elsewhere".to_vec();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let signer = s.c.blob_signer.clone().unwrap();
    let put = on_port(&s, &signer.fresh_url(&Method::PUT, BlobKind::Droplet, &sha));

    let wrong = s
        .http
        .put(&put)
        .body("not those bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 400);
    assert!(!s.c.blobs.exists(BlobKind::Droplet, &sha));
    let leftovers: Vec<_> = std::fs::read_dir(s.c.blobs.root())
        .unwrap()
        .flatten()
        .collect();
    assert!(leftovers.is_empty(), "nothing half-written: {leftovers:?}");

    let ok = s.http.put(&put).body(bytes.clone()).send().await.unwrap();
    assert_eq!(ok.status(), 201);
    let stored = s.c.blobs.path_of(BlobKind::Droplet, &sha).unwrap();
    assert_eq!(std::fs::read(stored).unwrap(), bytes);
}

#[tokio::test]
async fn a_micro_cloud_controller_serves_no_blobs() {
    let s = Served::start(|_| {}).await;
    let file = s.dir.path().join("d.tgz");
    std::fs::write(&file, b"x").unwrap();
    let sha = s.c.blobs.put_file(BlobKind::Droplet, &file).unwrap();
    let uri = blob_uri(&s.c, BlobKind::Droplet, &sha).unwrap();
    assert!(uri.starts_with("file:///"), "{uri}");
    let url = format!(
        "{}/v2/blobs/droplet/{sha}?expires=99999999999&signature=00",
        s.base
    );
    assert_eq!(s.http.get(url).send().await.unwrap().status(), 403);
}
