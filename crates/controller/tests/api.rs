//! The controller's HTTP surface served for real (SQLite, the in-process bus, a TCP port),
//! checked the way a CF client sees it: status codes, CF error codes, link shapes.

use std::io::Write;

use serde_json::{json, Value};

mod common;
use common::Served;

/// `POST /oauth/token` as client `cf` with an empty secret: status and JSON body.
async fn token(api: &Api, form: &[(&str, &str)]) -> (u16, Value) {
    api.served.token(form).await
}

struct Api {
    base: String,
    http: reqwest::Client,
    token: String,
    served: Served,
}

impl Api {
    async fn start(max_upload_mb: u64) -> Api {
        let served = Served::start(|cfg| cfg.max_upload_mb = max_upload_mb).await;
        let token = served.access_token("admin", common::ADMIN_PASSWORD).await;
        Api {
            base: served.base.clone(),
            http: served.http.clone(),
            token,
            served,
        }
    }

    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.base))
            .header("authorization", format!("bearer {}", self.token))
    }

    async fn space(&self) -> String {
        let v: Value = self
            .req(reqwest::Method::GET, "/v2/spaces")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["resources"][0]["metadata"]["guid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn create_app(&self, name: &str) -> (u16, Value) {
        let space = self.space().await;
        let r = self
            .req(reqwest::Method::POST, "/v2/apps")
            .json(&json!({"name": name, "space_guid": space}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

#[tokio::test]
async fn authentication_is_required_and_checked() {
    let api = Api::start(10).await;
    let r = api
        .http
        .get(format!("{}/v2/apps", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = api
        .http
        .get(format!("{}/v2/apps", api.base))
        .header("authorization", "bearer nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, v) = token(
        &api,
        &[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "wrong"),
        ],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(v["error"], "unauthorized");
    // The refresh grant gives a working access token.
    let (_, tok) = token(
        &api,
        &[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "s3cret"),
        ],
    )
    .await;
    let refresh = tok["refresh_token"].as_str().unwrap();
    let (status, fresh) = token(
        &api,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
    )
    .await;
    assert_eq!(status, 200);
    let info: Value = api
        .http
        .get(format!("{}/v2/info", api.base))
        .header(
            "authorization",
            format!("bearer {}", fresh["access_token"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["user_name"], "admin");
}

#[tokio::test]
async fn root_links_follow_the_host_the_client_used() {
    let api = Api::start(10).await;
    let v: Value = api
        .http
        .get(format!("{}/", api.base))
        .header("host", "api.example.test:8080")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["links"]["self"]["href"], "http://api.example.test:8080");
    assert_eq!(
        v["links"]["cloud_controller_v2"]["href"],
        "http://api.example.test:8080/v2"
    );
    let info: Value = api
        .http
        .get(format!("{}/v2/info", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["token_endpoint"], api.base);
    assert!(info.get("user").is_none(), "no user without a token");
}

#[tokio::test]
async fn bad_input_gets_cf_errors() {
    let api = Api::start(1).await;
    let (status, v) = api.create_app("bad name").await;
    assert_eq!(status, 400);
    assert_eq!(v["error_code"], "CF-AppInvalid");
    let (status, app) = api.create_app("web").await;
    assert_eq!(status, 201);
    let (status, v) = api.create_app("web").await;
    assert_eq!(
        (status, v["error_code"].as_str()),
        (400, Some("CF-AppNameTaken"))
    );
    assert_eq!(v["code"], 100002);
    let r = api
        .req(reqwest::Method::POST, "/v2/apps")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = api
        .req(reqwest::Method::GET, "/v2/apps?q=colour:blue")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "unknown filters are refused, not ignored");

    // Routes: a taken host is refused with CF's code.
    let domains: Value = api
        .req(reqwest::Method::GET, "/v2/shared_domains")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dom = domains["resources"][0]["metadata"]["guid"]
        .as_str()
        .unwrap()
        .to_string();
    let space = api.space().await;
    let body = json!({"host": "web", "domain_guid": dom, "space_guid": space});
    assert_eq!(
        api.req(reqwest::Method::POST, "/v2/routes")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let r = api
        .req(reqwest::Method::POST, "/v2/routes")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error_code"], "CF-RouteHostTaken");

    // Starting an app with no bits says what to do.
    let guid = app["metadata"]["guid"].as_str().unwrap();
    let r = api
        .req(reqwest::Method::PUT, &format!("/v2/apps/{guid}"))
        .json(&json!({"state": "STARTED"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["description"].as_str().unwrap().contains("upload"), "{v}");

    // An upload over the limit is 413 naming the limit.
    let big = vec![b'x'; 2 * 1024 * 1024 + 10];
    let form = reqwest::multipart::Form::new()
        .text("resources", "[]")
        .part(
            "application",
            reqwest::multipart::Part::bytes(big)
                .file_name("app.zip")
                .mime_str("application/zip")
                .unwrap(),
        );
    let r = api
        .req(reqwest::Method::PUT, &format!("/v2/apps/{guid}/bits"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert!(v["description"].as_str().unwrap().contains("1 MB"), "{v}");

    // A zip with `..` is refused and leaves the app without a package.
    let f = tempfile::NamedTempFile::new().unwrap();
    {
        let mut z = zip::ZipWriter::new(f.reopen().unwrap());
        z.start_file("../escape.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"x").unwrap();
        z.finish().unwrap();
    }
    let bytes = std::fs::read(f.path()).unwrap();
    let form = reqwest::multipart::Form::new()
        .text("resources", "[]")
        .part(
            "application",
            reqwest::multipart::Part::bytes(bytes).file_name("app.zip"),
        );
    let r = api
        .req(reqwest::Method::PUT, &format!("/v2/apps/{guid}/bits"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error_code"], "CF-AppBitsUploadInvalid");
    let a: Value = api
        .req(reqwest::Method::GET, &format!("/v2/apps/{guid}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["entity"]["package_state"], "PENDING");
}

/// The `sid` claim of a JWT (its payload, base64url, read without verifying).
fn session_of(jwt: &str) -> String {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: Value = serde_json::from_slice(&bytes).unwrap();
    claims["sid"].as_str().unwrap().to_string()
}

async fn login(api: &Api) -> Value {
    let (status, tok) = token(
        api,
        &[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "s3cret"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tok}");
    tok
}

async fn status_with(api: &Api, access: &str, path: &str) -> u16 {
    api.http
        .get(format!("{}{path}", api.base))
        .header("authorization", format!("bearer {access}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn logout_revokes_the_session_at_once_and_only_that_one() {
    let api = Api::start(10).await;
    let one = login(&api).await;
    let two = login(&api).await;
    let access = one["access_token"].as_str().unwrap();
    assert_eq!(status_with(&api, access, "/v2/apps").await, 200);
    let sid = session_of(access);
    let r = api
        .http
        .delete(format!("{}/oauth/token/revoke/{sid}", api.base))
        .header("authorization", format!("bearer {access}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // The access token is refused now, not when it expires, and so is its refresh token.
    assert_eq!(status_with(&api, access, "/v2/apps").await, 401);
    let (status, body) = token(
        &api,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", one["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(status, 401, "{body}");
    // Another login of the same user is untouched.
    let other = two["access_token"].as_str().unwrap();
    assert_eq!(status_with(&api, other, "/v2/apps").await, 200);
}

#[tokio::test]
async fn failed_logins_are_throttled_with_retry_after() {
    let api = Api::start(10).await;
    let wrong = [
        ("grant_type", "password"),
        ("username", "admin"),
        ("password", "guess"),
    ];
    for _ in 0..5 {
        let (status, _) = token(&api, &wrong).await;
        assert_eq!(status, 401);
    }
    // Even the right password waits now: guessing is slowed for this user.
    let r = api
        .http
        .post(format!("{}/oauth/token", api.base))
        .basic_auth("cf", Some(""))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "s3cret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("try again"),
        "{body}"
    );
    // Once the wait is over, the right password works and clears the count.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    login(&api).await;
}
