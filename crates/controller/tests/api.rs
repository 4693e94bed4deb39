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
    let root = |headers: &[(&'static str, &'static str)]| {
        let mut request = api.http.get(format!("{}/", api.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let v = root(&[("host", "api.example.test:8080")]).await;
    assert_eq!(v["links"]["self"]["href"], "http://api.example.test:8080");
    assert_eq!(
        v["links"]["cloud_controller_v2"]["href"],
        "http://api.example.test:8080/v2"
    );
    assert_eq!(v["links"]["login"]["href"], "http://api.example.test:8080");
    assert_eq!(v["links"]["uaa"]["href"], "http://api.example.test:8080");
    assert!(
        v["links"].get("logging").is_none(),
        "no logging link: there is no log endpoint to point at: {v}"
    );
    // Through the router over HTTPS: the scheme the client used.
    let v = root(&[
        ("x-forwarded-host", "api.cloud.test"),
        ("x-forwarded-proto", "https"),
    ])
    .await;
    assert_eq!(v["links"]["self"]["href"], "https://api.cloud.test");
    assert_eq!(v["links"]["login"]["href"], "https://api.cloud.test");
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

#[tokio::test]
async fn deeply_nested_json_is_refused_before_parsing_and_the_server_carries_on() {
    let api = Api::start(10).await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for path in ["/v2/apps", "/v2/organizations", "/v2/routes"] {
        let r = api
            .req(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(deep.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error_code"], "CF-MessageParseError", "{path}: {v}");
        assert!(
            v["description"]
                .as_str()
                .unwrap()
                .contains("limit of 32 levels"),
            "{path}: {v}"
        );
    }
    // Deep inside a field too; brackets inside strings do not count.
    let space = api.space().await;
    let r = api
        .req(reqwest::Method::POST, "/v2/apps")
        .body(format!(
            r#"{{"name": "web", "space_guid": "{space}", "environment_json": {{"A": {}}}}}"#,
            deep
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = api
        .req(reqwest::Method::POST, "/v2/apps")
        .json(&json!({"name": "web", "space_guid": space, "environment_json": {"A": "[[[[[[".repeat(100)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "a string full of brackets is not nesting");
    // Not JSON at all is still a clear parse error, and the server still answers.
    let r = api
        .req(reqwest::Method::POST, "/v2/organizations")
        .body("name=acme")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error_code"], "CF-MessageParseError", "{v}");
    let (status, _) = api.create_app("after").await;
    assert_eq!(status, 201);
}

/// `POST /oauth/token` with the client_credentials grant and HTTP Basic auth.
async fn client_token(api: &Api, id: &str, secret: &str) -> (u16, Value) {
    let r = api
        .http
        .post(format!("{}/oauth/token", api.base))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn send_as(
    api: &Api,
    token: &str,
    m: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = api
        .http
        .request(m, format!("{}{path}", api.base))
        .header("authorization", format!("bearer {token}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

const CLIENT_SECRET: &str = "ci:top-secret";

fn ci_client() -> Value {
    json!({
        "client_id": "ci-bot", "client_secret": CLIENT_SECRET,
        "authorized_grant_types": ["client_credentials"],
        "authorities": ["cloud_controller.admin"], "scope": ["uaa.none"],
    })
}

#[tokio::test]
async fn admin_clients_get_tokens_that_act_as_admin_until_deleted() {
    use reqwest::Method as M;
    let api = Api::start(10).await;
    let admin = api.token.clone();
    let (status, created) =
        send_as(&api, &admin, M::POST, "/oauth/clients", Some(ci_client())).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["client_id"], "ci-bot");
    assert_eq!(created["authorities"], json!(["cloud_controller.admin"]));
    assert!(!created.to_string().contains(CLIENT_SECRET), "{created}");
    let (status, _) = send_as(&api, &admin, M::POST, "/oauth/clients", Some(ci_client())).await;
    assert_eq!(status, 409, "a client id is registered once");
    let mut reader = ci_client();
    reader["client_id"] = json!("reader");
    reader["authorities"] = json!(["cloud_controller.read"]);
    let (status, v) = send_as(&api, &admin, M::POST, "/oauth/clients", Some(reader)).await;
    assert_eq!(status, 400);
    assert!(
        v["description"]
            .as_str()
            .unwrap()
            .contains("cloud_controller.admin"),
        "{v}"
    );
    let (status, list) = send_as(&api, &admin, M::GET, "/oauth/clients", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["totalResults"], 1);
    assert_eq!(list["resources"][0]["client_id"], "ci-bot");
    assert!(!list.to_string().contains("top-secret"));

    // The client's token: short-lived, no refresh token, an administrator's rights.
    let (status, tok) = client_token(&api, "ci-bot", CLIENT_SECRET).await;
    assert_eq!(status, 200, "{tok}");
    assert!(tok.get("refresh_token").is_none(), "{tok}");
    assert!(tok["expires_in"].as_u64().unwrap() <= 3600);
    let bot = tok["access_token"].as_str().unwrap().to_string();
    let (status, _) = send_as(&api, &bot, M::GET, "/v2/organizations", None).await;
    assert_eq!(status, 200);
    let (status, org) = send_as(
        &api,
        &bot,
        M::POST,
        "/v2/organizations",
        Some(json!({"name": "from-ci"})),
    )
    .await;
    assert_eq!(status, 201, "{org}");
    // The form fields work as well as Basic auth.
    let r = api
        .http
        .post(format!("{}/oauth/token", api.base))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "ci-bot"),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Wrong secret, unknown client: 401 invalid_client.
    for (id, secret) in [("ci-bot", "ci:wrong"), ("nobody", CLIENT_SECRET)] {
        let (status, v) = client_token(&api, id, secret).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (401, Some("invalid_client")),
            "{id}: {v}"
        );
    }

    // Only administrators manage clients.
    let (status, _) = send_as(
        &api,
        &admin,
        M::POST,
        "/Users",
        Some(json!({"userName": "bob", "password": "pw"})),
    )
    .await;
    assert_eq!(status, 201);
    let bob = api.served.access_token("bob", "pw").await;
    let mut other = ci_client();
    other["client_id"] = json!("bobs-bot");
    let (status, _) = send_as(&api, &bob, M::POST, "/oauth/clients", Some(other.clone())).await;
    assert_eq!(status, 403);
    let (status, _) = send_as(&api, &bob, M::GET, "/oauth/clients", None).await;
    assert_eq!(status, 403);
    let (status, _) = send_as(&api, &bob, M::DELETE, "/oauth/clients/ci-bot", None).await;
    assert_eq!(status, 403);
    let r = api
        .http
        .post(format!("{}/oauth/clients", api.base))
        .json(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Deleting the client revokes its tokens at once; registering the id again does
    // not bring them back.
    let (status, gone) = send_as(&api, &admin, M::DELETE, "/oauth/clients/ci-bot", None).await;
    assert_eq!((status, gone["client_id"].as_str()), (200, Some("ci-bot")));
    let (status, v) = send_as(&api, &bot, M::GET, "/v2/organizations", None).await;
    assert_eq!(status, 401, "{v}");
    let (status, _) = client_token(&api, "ci-bot", CLIENT_SECRET).await;
    assert_eq!(status, 401);
    let (status, _) = send_as(&api, &admin, M::DELETE, "/oauth/clients/ci-bot", None).await;
    assert_eq!(status, 404);
    let (status, _) = send_as(&api, &admin, M::POST, "/oauth/clients", Some(ci_client())).await;
    assert_eq!(status, 201);
    let (status, _) = send_as(&api, &bot, M::GET, "/v2/organizations", None).await;
    assert_eq!(status, 401, "the old token names the deleted registration");

    // Both changes are audited, with the admin as actor.
    let (_, events) = send_as(&api, &admin, M::GET, "/v2/events", None).await;
    let kinds: Vec<&str> = events["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["entity"]["actee_name"] == "ci-bot")
        .map(|e| e["entity"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "audit.oauth_client.create")
            .count(),
        2,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"audit.oauth_client.delete"), "{kinds:?}");
    // Who, what, when, and from where.
    let created = events["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entity"]["type"] == "audit.oauth_client.create")
        .unwrap();
    assert_eq!(created["entity"]["actor_name"], "admin", "{created}");
    assert!(created["entity"]["timestamp"].is_string(), "{created}");
    assert_eq!(
        created["entity"]["metadata"]["request"]["ip"], "127.0.0.1",
        "{created}"
    );
}

#[tokio::test]
async fn failed_client_authentications_are_throttled() {
    let api = Api::start(10).await;
    let (status, _) = send_as(
        &api,
        &api.token.clone(),
        reqwest::Method::POST,
        "/oauth/clients",
        Some(ci_client()),
    )
    .await;
    assert_eq!(status, 201);
    for _ in 0..5 {
        let (status, _) = client_token(&api, "ci-bot", "guess").await;
        assert_eq!(status, 401);
    }
    let r = api
        .http
        .post(format!("{}/oauth/token", api.base))
        .basic_auth("ci-bot", Some(CLIENT_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "even the right secret waits now");
    assert!(r.headers().contains_key("retry-after"));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, _) = client_token(&api, "ci-bot", CLIENT_SECRET).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_private_domain_serves_only_its_own_organization() {
    use reqwest::Method as M;
    let api = Api::start(10).await;
    let admin = api.token.clone();
    let (_, orgs) = send_as(&api, &admin, M::GET, "/v2/organizations", None).await;
    let own_org = orgs["resources"][0]["metadata"]["guid"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, domain) = send_as(
        &api,
        &admin,
        M::POST,
        "/v2/private_domains",
        Some(json!({"name": "Shop.Example.Test", "owning_organization_guid": own_org})),
    )
    .await;
    assert_eq!(status, 201, "{domain}");
    assert_eq!(domain["entity"]["name"], "shop.example.test");
    let domain_guid = domain["metadata"]["guid"].as_str().unwrap().to_string();
    // Listed with the others in /v2/domains, not among the shared ones.
    let (_, all) = send_as(&api, &admin, M::GET, "/v2/domains", None).await;
    assert!(all.to_string().contains("shop.example.test"), "{all}");
    let (_, shared) = send_as(&api, &admin, M::GET, "/v2/shared_domains", None).await;
    assert!(
        !shared.to_string().contains("shop.example.test"),
        "{shared}"
    );

    // Another organization's space cannot route in it.
    let (_, other) = send_as(
        &api,
        &admin,
        M::POST,
        "/v2/organizations",
        Some(json!({"name": "other"})),
    )
    .await;
    let other_org = other["metadata"]["guid"].as_str().unwrap();
    let (_, space) = send_as(
        &api,
        &admin,
        M::POST,
        "/v2/spaces",
        Some(json!({"name": "s", "organization_guid": other_org})),
    )
    .await;
    let space_guid = space["metadata"]["guid"].as_str().unwrap();
    let (status, refused) = send_as(
        &api,
        &admin,
        M::POST,
        "/v2/routes",
        Some(json!({"host": "www", "domain_guid": domain_guid, "space_guid": space_guid})),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error_code"], "CF-DomainInvalid", "{refused}");
}

#[tokio::test]
async fn drains_get_the_apps_log_lines_over_tcp_and_udp() {
    use reqwest::Method as M;
    use std::time::Duration;
    use tokio::io::AsyncBufReadExt;
    let api = Api::start(10).await;
    let admin = api.token.clone();
    let (_, spaces) = send_as(&api, &admin, M::GET, "/v2/spaces", None).await;
    let space = spaces["resources"][0]["metadata"]["guid"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, app) = send_as(
        &api,
        &admin,
        M::POST,
        "/v2/apps",
        Some(json!({"name": "drained", "space_guid": space})),
    )
    .await;
    let guid = app["metadata"]["guid"].as_str().unwrap().to_string();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let drains = format!("/v2/apps/{guid}/stackato_drains");
    for (name, uri, as_json) in [
        (
            "text",
            format!("tcp://{}", tcp.local_addr().unwrap()),
            false,
        ),
        (
            "syslog",
            format!("udp://{}", udp.local_addr().unwrap()),
            true,
        ),
    ] {
        let (status, v) = send_as(
            &api,
            &admin,
            M::POST,
            &drains,
            Some(json!({"name": name, "uri": uri, "json": as_json})),
        )
        .await;
        assert_eq!(status, 201, "{v}");
    }
    // Bad input: one clear error each, nothing added.
    for (body, needle) in [
        (
            json!({"name": "f", "uri": "file:///etc/passwd"}),
            "not supported",
        ),
        (json!({"name": "no port", "uri": "tcp://h:1"}), "drain name"),
        (json!({"name": "text", "uri": "tcp://h:1"}), "already has"),
    ] {
        let (status, v) = send_as(&api, &admin, M::POST, &drains, Some(body)).await;
        assert_eq!(status, 400, "{v}");
        assert!(v["description"].as_str().unwrap().contains(needle), "{v}");
    }
    let (_, listed) = send_as(&api, &admin, M::GET, &drains, None).await;
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    // The forwarder picks the drains up within a second; then a line goes to both.
    tokio::time::sleep(strato_controller::drains::RELOAD * 2).await;
    let line = strato_core::messages::LogLine {
        app: guid.clone(),
        source: "app".into(),
        instance_index: Some(0),
        stream: "stdout".into(),
        timestamp: 1_700_000_000.0,
        text: "hello drains".into(),
    };
    strato_bus::publish_json(
        api.served.c.bus.as_ref(),
        &strato_core::subjects::apptail(&guid),
        &line,
    )
    .await
    .unwrap();
    let (stream, _) = tokio::time::timeout(Duration::from_secs(10), tcp.accept())
        .await
        .expect("the drain connects")
        .unwrap();
    let mut got = String::new();
    let mut reader = tokio::io::BufReader::new(stream);
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut got))
        .await
        .expect("a line arrives")
        .unwrap();
    assert_eq!(got, "2023-11-14T22:13:20Z app.0: hello drains\n");
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(10), udp.recv(&mut buf))
        .await
        .expect("a datagram arrives")
        .unwrap();
    let datagram = String::from_utf8_lossy(&buf[..n]);
    assert!(datagram.starts_with("<13>1 "), "{datagram}");
    assert!(datagram.contains(r#""text":"hello drains""#), "{datagram}");

    let (status, _) = send_as(&api, &admin, M::DELETE, &format!("{drains}/text"), None).await;
    assert_eq!(status, 204);
    let (status, _) = send_as(&api, &admin, M::DELETE, &format!("{drains}/text"), None).await;
    assert_eq!(status, 404);
}
