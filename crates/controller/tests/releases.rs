//! Releases, rollback, health check settings and restart strategies over real HTTP
//! (SQLite, the in-process bus, a TCP port). Releases are recorded the way a finished
//! staging records them ([`releases::record`]) with droplets really in the blob store, so
//! the tests see which droplets a rollback keeps alive and which expire.

use std::io::Write;

use serde_json::{json, Value};
use strato_blobs::BlobKind;
use strato_controller::releases::{self, Actor};
use strato_controller::Shared;

mod common;
use common::Served;

struct Api {
    base: String,
    http: reqwest::Client,
    token: String,
    c: Shared,
    _served: Served,
}

impl Api {
    async fn start(max_releases: u64) -> Api {
        let served = Served::start(|cfg| cfg.max_releases = max_releases).await;
        let token = served.access_token("admin", common::ADMIN_PASSWORD).await;
        Api {
            base: served.base.clone(),
            http: served.http.clone(),
            token,
            c: served.c.clone(),
            _served: served,
        }
    }

    async fn call(&self, m: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(m, format!("{}{path}", self.base))
            .header("authorization", format!("bearer {}", self.token));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A new app (stopped) in the first space.
    async fn app(&self, body: Value) -> (u16, Value) {
        let (_, spaces) = self.call(reqwest::Method::GET, "/v2/spaces", None).await;
        let mut body = body;
        body["space_guid"] = spaces["resources"][0]["metadata"]["guid"].clone();
        self.call(reqwest::Method::POST, "/v2/apps", Some(body))
            .await
    }

    /// A droplet blob with `content`; returns its sha256.
    fn droplet(&self, content: &str) -> String {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        self.c.blobs.put_file(BlobKind::Droplet, f.path()).unwrap()
    }

    /// What a successful staging does: the droplet and `env` become current, a release
    /// is recorded.
    async fn stage(&self, guid: &str, droplet: &str, env: Value) -> i64 {
        let mut a = self.c.db.app_by_guid(guid).await.unwrap().unwrap();
        a.droplet_hash = Some(droplet.to_string());
        a.environment_json = env.to_string();
        a.package_state = "STAGED".into();
        let a = self.c.db.update_app(&a).await.unwrap();
        let who = Actor {
            guid: "u-guid".into(),
            name: "alice".into(),
        };
        releases::record(&self.c, &a, "staged", &who)
            .await
            .unwrap()
            .number
    }
}

use reqwest::Method;

#[tokio::test]
async fn releases_list_and_rollback_restores_droplet_and_environment() {
    let api = Api::start(5).await;
    let (status, app) = api.app(json!({"name": "web"})).await;
    assert_eq!(status, 201, "{app}");
    let guid = app["metadata"]["guid"].as_str().unwrap().to_string();
    let path = format!("/v2/apps/{guid}");

    let (status, v) = api
        .call(Method::POST, &format!("{path}/rollback"), None)
        .await;
    assert_eq!(status, 400, "no release yet: {v}");
    assert!(v["description"]
        .as_str()
        .unwrap()
        .contains("no releases yet"));

    let d1 = api.droplet("one");
    let d2 = api.droplet("two");
    assert_eq!(api.stage(&guid, &d1, json!({"COLOUR": "red"})).await, 1);
    assert_eq!(api.stage(&guid, &d2, json!({"COLOUR": "blue"})).await, 2);

    let (status, list) = api
        .call(Method::GET, &format!("{path}/releases"), None)
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total_results"], 2, "{list}");
    let r = &list["resources"];
    assert_eq!(r[0]["entity"]["version"], 1);
    assert_eq!(r[0]["entity"]["droplet_hash"], d1.as_str());
    assert_eq!(r[0]["entity"]["environment_json"]["COLOUR"], "red");
    assert_eq!(r[0]["entity"]["actor_name"], "alice");
    assert_eq!(r[0]["entity"]["current"], false);
    assert_eq!(r[1]["entity"]["current"], true);
    assert_eq!(r[1]["entity"]["rollback_possible"], true);

    // A release that does not exist: one line naming the ones there are; nothing changes.
    let (status, v) = api
        .call(
            Method::POST,
            &format!("{path}/rollback"),
            Some(json!({"release": 9})),
        )
        .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(
        v["description"],
        "web has no release v9; its releases are v1, v2 (you can roll back to v1)"
    );
    let (_, now) = api.call(Method::GET, &path, None).await;
    assert_eq!(now["entity"]["environment_json"]["COLOUR"], "blue");
    let (status, v) = api
        .call(
            Method::POST,
            &format!("{path}/rollback"),
            Some(json!({"release": 2})),
        )
        .await;
    assert_eq!(status, 400, "rolling back to the current release: {v}");
    let (status, _) = api
        .call(
            Method::POST,
            &format!("{path}/rollback"),
            Some(json!({"nope": 1})),
        )
        .await;
    assert_eq!(status, 400, "unknown fields are refused");

    // The default goes to the previous release, and is itself a release.
    let (status, rel) = api
        .call(Method::POST, &format!("{path}/rollback"), None)
        .await;
    assert_eq!(status, 201, "{rel}");
    assert_eq!(rel["entity"]["version"], 3);
    assert_eq!(rel["entity"]["description"], "rollback to v1");
    assert_eq!(rel["entity"]["actor_name"], "admin");
    let a = api.c.db.app_by_guid(&guid).await.unwrap().unwrap();
    assert_eq!(a.droplet_hash.as_deref(), Some(d1.as_str()));
    let (_, now) = api.call(Method::GET, &path, None).await;
    assert_eq!(now["entity"]["environment_json"]["COLOUR"], "red");
    assert!(
        api.c.blobs.exists(BlobKind::Droplet, &d2),
        "v2's droplet stays for a roll forward"
    );

    // Rolling forward to v2 works the same way.
    let (status, rel) = api
        .call(
            Method::POST,
            &format!("{path}/rollback"),
            Some(json!({"release": 2})),
        )
        .await;
    assert_eq!(status, 201, "{rel}");
    assert_eq!(rel["entity"]["description"], "rollback to v2");

    let events = api.c.db.events_for(Some(&guid)).await.unwrap();
    assert!(events.iter().any(|e| e.kind == "audit.app.rollback"));

    // Deleting the app deletes every droplet its releases held.
    let (status, _) = api.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 204);
    assert!(!api.c.blobs.exists(BlobKind::Droplet, &d1));
    assert!(!api.c.blobs.exists(BlobKind::Droplet, &d2));
}

#[tokio::test]
async fn only_the_last_max_releases_keep_their_droplets() {
    let api = Api::start(2).await;
    let (_, app) = api.app(json!({"name": "web"})).await;
    let guid = app["metadata"]["guid"].as_str().unwrap().to_string();
    let drops: Vec<String> = (1..=3).map(|i| api.droplet(&format!("d{i}"))).collect();
    for d in &drops {
        api.stage(&guid, d, json!({})).await;
    }
    assert!(
        !api.c.blobs.exists(BlobKind::Droplet, &drops[0]),
        "v1's droplet is deleted once two newer releases exist"
    );
    assert!(api.c.blobs.exists(BlobKind::Droplet, &drops[1]));
    assert!(api.c.blobs.exists(BlobKind::Droplet, &drops[2]));
    let (status, v) = api
        .call(
            Method::POST,
            &format!("/v2/apps/{guid}/rollback"),
            Some(json!({"release": 1})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let text = v["description"].as_str().unwrap();
    assert!(
        text.contains("too old") && text.contains("you can roll back to v2"),
        "{text}"
    );
    let (_, list) = api
        .call(Method::GET, &format!("/v2/apps/{guid}/releases"), None)
        .await;
    assert_eq!(list["resources"][0]["entity"]["rollback_possible"], false);
    assert_eq!(list["total_results"], 3, "expired releases stay listed");
}

#[tokio::test]
async fn health_check_settings_round_trip_and_reach_the_start_request() {
    let api = Api::start(5).await;
    let (status, app) = api.app(json!({"name": "web"})).await;
    assert_eq!(status, 201);
    assert_eq!(app["entity"]["health_check_type"], "port", "the default");
    let guid = app["metadata"]["guid"].as_str().unwrap().to_string();
    let path = format!("/v2/apps/{guid}");

    let (status, v) = api
        .call(
            Method::PUT,
            &path,
            Some(json!({"health_check_type": "http", "health_check_http_endpoint": "/health", "health_check_timeout": 30})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (_, v) = api.call(Method::GET, &path, None).await;
    assert_eq!(v["entity"]["health_check_type"], "http");
    assert_eq!(v["entity"]["health_check_http_endpoint"], "/health");
    assert_eq!(v["entity"]["health_check_timeout"], 30);
    let a = api.c.db.app_by_guid(&guid).await.unwrap().unwrap();
    let hc = strato_controller::runner::health_check_of(&a);
    assert_eq!(
        (hc.http_path.as_deref(), hc.process_only, hc.timeout),
        (Some("/health"), false, 30)
    );

    // `none` is the older name of `process`: no port check at all.
    let (status, _) = api
        .call(
            Method::PUT,
            &path,
            Some(json!({"health_check_type": "none"})),
        )
        .await;
    assert_eq!(status, 201);
    let a = api.c.db.app_by_guid(&guid).await.unwrap().unwrap();
    assert_eq!(a.health_check_type, "process");
    let hc = strato_controller::runner::health_check_of(&a);
    assert!(hc.process_only && hc.http_path.is_none());

    for bad in [
        json!({"health_check_type": "tcp"}),
        json!({"health_check_http_endpoint": "health"}),
    ] {
        let (status, v) = api.call(Method::PUT, &path, Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad} is refused: {v}");
        assert_eq!(v["error_code"], "CF-AppInvalid");
    }
    let (status, v) = api
        .app(json!({"name": "worker", "health_check_type": "process"}))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["entity"]["health_check_type"], "process");
}

#[tokio::test]
async fn restart_checks_its_strategy_and_the_app_state() {
    let api = Api::start(5).await;
    let (_, app) = api.app(json!({"name": "web"})).await;
    let guid = app["metadata"]["guid"].as_str().unwrap().to_string();
    let path = format!("/v2/apps/{guid}/restart");
    let (status, v) = api
        .call(Method::POST, &path, Some(json!({"strategy": "sideways"})))
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v["description"]
        .as_str()
        .unwrap()
        .contains("rolling or recreate"));
    let (status, v) = api
        .call(Method::POST, &path, Some(json!({"strategy": "rolling"})))
        .await;
    assert_eq!(status, 400, "an app never staged cannot restart: {v}");
    let d = api.droplet("x");
    api.stage(&guid, &d, json!({})).await;
    let (status, v) = api
        .call(Method::POST, &path, Some(json!({"strategy": "recreate"})))
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["description"].as_str().unwrap().contains("is stopped"),
        "{v}"
    );
    let (status, v) = api
        .call(Method::GET, &format!("/v2/apps/{guid}/crashes"), None)
        .await;
    assert_eq!((status, v), (200, json!([])), "no DEA here: no crashes");
}
