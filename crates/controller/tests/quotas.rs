//! Quotas over real HTTP (SQLite, the in-process bus, a TCP port): the `default` quota,
//! quota and space quota definitions, and each enforcement point (create app, start,
//! scale, create service, create route) refusing with CF's error code and the numbers.

use reqwest::Method as M;
use serde_json::{json, Value};
use strato_controller::Shared;
use strato_db::{package_state, CatalogEntry, Db};

mod common;
use common::Served;

struct Api {
    base: String,
    http: reqwest::Client,
    token: String,
    c: Shared,
    org: String,
    space: String,
    _served: Served,
}

impl Api {
    async fn start() -> Api {
        let served = Served::start(|_| {}).await;
        let (base, http, c) = (served.base.clone(), served.http.clone(), served.c.clone());
        let token = served.access_token("admin", common::ADMIN_PASSWORD).await;
        let org = c.db.list_orgs(&Default::default()).await.unwrap()[0]
            .guid
            .clone();
        let space = c.db.list_spaces(&Default::default()).await.unwrap()[0]
            .guid
            .clone();
        Api {
            base,
            http,
            token,
            c,
            org,
            space,
            _served: served,
        }
    }

    async fn call(&self, m: M, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.base))
            .header("authorization", format!("bearer {}", self.token));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A call that must succeed with `status`; returns the body.
    async fn ok(&self, status: u16, m: M, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(m.clone(), path, body).await;
        assert_eq!(s, status, "{m} {path}: {v}");
        v
    }

    /// A call that must be refused with 400 and CF code `code`/`name`; returns the message.
    async fn refused(&self, code: u64, name: &str, m: M, path: &str, body: Value) -> String {
        let (s, v) = self.call(m.clone(), path, Some(body)).await;
        assert_eq!(
            (s, v["code"].as_u64(), v["error_code"].as_str()),
            (400, Some(code), Some(name)),
            "{m} {path}: {v}"
        );
        v["description"].as_str().unwrap().to_string()
    }

    async fn create_quota(&self, body: Value) -> String {
        let v = self
            .ok(201, M::POST, "/v2/quota_definitions", Some(body))
            .await;
        v["metadata"]["guid"].as_str().unwrap().to_string()
    }

    async fn set_org_quota(&self, quota: &str) {
        let v = self
            .ok(
                201,
                M::PUT,
                &format!("/v2/organizations/{}", self.org),
                Some(json!({"quota_definition_guid": quota})),
            )
            .await;
        assert_eq!(v["entity"]["quota_definition_guid"], quota);
    }

    /// Creates a stopped app with bits and a droplet, so it can be started.
    async fn staged_app(&self, name: &str, memory: i64, instances: i64) -> String {
        let v = self
            .ok(
                201,
                M::POST,
                "/v2/apps",
                Some(json!({"name": name, "space_guid": self.space, "memory": memory, "instances": instances})),
            )
            .await;
        let guid = v["metadata"]["guid"].as_str().unwrap().to_string();
        let mut a = self.c.db.app_by_guid(&guid).await.unwrap().unwrap();
        a.package_hash = Some("pkg".into());
        a.droplet_hash = Some("droplet".into());
        a.package_state = package_state::STAGED.into();
        self.c.db.update_app(&a).await.unwrap();
        guid
    }

    /// Marks an app started in the database, as if it had been started and runs.
    async fn mark_started(&self, guid: &str) {
        let mut a = self.c.db.app_by_guid(guid).await.unwrap().unwrap();
        a.state = "STARTED".into();
        self.c.db.update_app(&a).await.unwrap();
    }
}

#[tokio::test]
async fn orgs_get_the_default_quota_with_cloud_foundrys_limits() {
    let api = Api::start().await;
    let list = api
        .ok(200, M::GET, "/v2/quota_definitions?q=name:default", None)
        .await;
    let d = &list["resources"][0];
    assert_eq!(list["total_results"], 1, "{list}");
    let e = &d["entity"];
    assert_eq!(
        (
            &e["memory_limit"],
            &e["total_routes"],
            &e["total_services"],
            &e["instance_memory_limit"],
            &e["app_instance_limit"],
            &e["non_basic_services_allowed"],
        ),
        (
            &json!(10240),
            &json!(1000),
            &json!(100),
            &json!(-1),
            &json!(-1),
            &json!(true)
        )
    );
    let default = d["metadata"]["guid"].as_str().unwrap();
    let org = api
        .ok(200, M::GET, &format!("/v2/organizations/{}", api.org), None)
        .await;
    assert_eq!(org["entity"]["quota_definition_guid"], default);
    let created = api
        .ok(
            201,
            M::POST,
            "/v2/organizations",
            Some(json!({"name": "acme"})),
        )
        .await;
    assert_eq!(created["entity"]["quota_definition_guid"], default);

    // Definitions: names are unique, numbers are -1 or more, unknown guids are 404.
    api.create_quota(json!({"name": "small", "memory_limit": 256}))
        .await;
    let m = api
        .refused(
            240002,
            "CF-QuotaDefinitionNameTaken",
            M::POST,
            "/v2/quota_definitions",
            json!({"name": "small"}),
        )
        .await;
    assert!(m.contains("small"), "{m}");
    let m = api
        .refused(
            240003,
            "CF-QuotaDefinitionInvalid",
            M::POST,
            "/v2/quota_definitions",
            json!({"name": "bad", "memory_limit": -2}),
        )
        .await;
    assert!(m.contains("memory_limit") && m.contains("-2"), "{m}");
    let (s, v) = api
        .call(
            M::PUT,
            &format!("/v2/organizations/{}", api.org),
            Some(json!({"quota_definition_guid": "nope"})),
        )
        .await;
    assert_eq!((s, v["code"].as_u64()), (404, Some(240001)), "{v}");

    // A quota in use is not deleted; once unused it is.
    let big = api
        .create_quota(json!({"name": "big", "memory_limit": 20480}))
        .await;
    api.set_org_quota(&big).await;
    let (s, v) = api
        .call(M::DELETE, &format!("/v2/quota_definitions/{big}"), None)
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error_code"], "CF-AssociationNotEmpty");
    assert!(
        v["description"].as_str().unwrap().contains("default"),
        "{v}"
    );
    api.set_org_quota(default).await;
    api.ok(
        204,
        M::DELETE,
        &format!("/v2/quota_definitions/{big}"),
        None,
    )
    .await;
}

#[tokio::test]
async fn push_start_and_scale_are_held_to_the_org_and_space_quotas() {
    let api = Api::start().await;
    let small = api
        .create_quota(json!({"name": "small", "memory_limit": 256, "instance_memory_limit": 200, "app_instance_limit": 3}))
        .await;
    api.set_org_quota(&small).await;

    // One instance may not have more than the instance memory limit, even stopped.
    let m = api
        .refused(
            100007,
            "CF-QuotaInstanceMemoryLimitExceeded",
            M::POST,
            "/v2/apps",
            json!({"name": "fat", "space_guid": api.space, "memory": 300}),
        )
        .await;
    assert!(
        m.contains("quota 'small' allows 200 MB per instance and this asks for 300 MB"),
        "{m}"
    );

    // push: created stopped (uses nothing), then started: 3 × 128 MB > 256 MB.
    let web = api.staged_app("web", 128, 3).await;
    let path = format!("/v2/apps/{web}");
    let m = api
        .refused(
            100005,
            "CF-AppMemoryQuotaExceeded",
            M::PUT,
            &path,
            json!({"state": "STARTED"}),
        )
        .await;
    assert!(
        m.starts_with("You have exceeded your organization's memory limit: quota 'small' allows 256 MB; other apps use 0 MB and this app would use 384 MB (3 × 128 MB)"),
        "{m}"
    );
    let app = api.c.db.app_by_guid(&web).await.unwrap().unwrap();
    assert_eq!(app.state, "STOPPED", "a refused start changes nothing");

    // scale to 2 fits; the app then runs and uses the whole quota.
    let v = api
        .ok(201, M::PUT, &path, Some(json!({"instances": 2})))
        .await;
    assert_eq!(v["entity"]["instances"], 2);
    api.mark_started(&web).await;
    let usage = api
        .ok(
            200,
            M::GET,
            &format!("/v2/organizations/{}/memory_usage", api.org),
            None,
        )
        .await;
    assert_eq!(usage, json!({"memory_usage_in_mb": 256}));

    // start of another app: the first one's 256 MB count against it.
    let other = api.staged_app("other", 64, 1).await;
    let m = api
        .refused(
            100005,
            "CF-AppMemoryQuotaExceeded",
            M::PUT,
            &format!("/v2/apps/{other}"),
            json!({"state": "STARTED"}),
        )
        .await;
    assert!(
        m.contains("allows 256 MB; other apps use 256 MB and this app would use 64 MB"),
        "{m}"
    );

    // scale of a running app past the instance limit (memory is plenty now).
    api.ok(
        201,
        M::PUT,
        &format!("/v2/quota_definitions/{small}"),
        Some(json!({"memory_limit": 10240})),
    )
    .await;
    let m = api
        .refused(
            100008,
            "CF-QuotaInstanceLimitExceeded",
            M::PUT,
            &path,
            json!({"instances": 4}),
        )
        .await;
    assert!(
        m.contains(
            "quota 'small' allows 3 app instance(s); other apps have 0 and this app would have 4"
        ),
        "{m}"
    );

    // A space quota applies too, and names itself when it is the tighter one.
    let v = api
        .ok(
            201,
            M::POST,
            "/v2/space_quota_definitions",
            Some(json!({"name": "tiny", "organization_guid": api.org, "memory_limit": 128})),
        )
        .await;
    let tiny = v["metadata"]["guid"].as_str().unwrap().to_string();
    let assignment = format!("/v2/space_quota_definitions/{tiny}/spaces/{}", api.space);
    api.ok(201, M::PUT, &assignment, None).await;
    let space = api
        .ok(200, M::GET, &format!("/v2/spaces/{}", api.space), None)
        .await;
    assert_eq!(
        space["entity"]["space_quota_definition_guid"],
        tiny.as_str()
    );
    let m = api
        .refused(
            310003,
            "CF-SpaceQuotaMemoryLimitExceeded",
            M::PUT,
            &format!("/v2/apps/{other}"),
            json!({"state": "STARTED"}),
        )
        .await;
    assert!(
        m.starts_with("You have exceeded your space's memory limit: space quota 'tiny' allows 128 MB; other apps use 256 MB and this app would use 64 MB"),
        "{m}"
    );
    api.ok(
        201,
        M::PUT,
        &format!("/v2/space_quota_definitions/{tiny}"),
        Some(json!({"memory_limit": 4096, "instance_memory_limit": 32})),
    )
    .await;
    let m = api
        .refused(
            310004,
            "CF-SpaceQuotaInstanceMemoryLimitExceeded",
            M::PUT,
            &format!("/v2/apps/{other}"),
            json!({"state": "STARTED"}),
        )
        .await;
    assert!(
        m.contains("space quota 'tiny' allows 32 MB per instance"),
        "{m}"
    );
    api.ok(204, M::DELETE, &assignment, None).await;
    assert!(api
        .c
        .db
        .space_by_guid(&api.space)
        .await
        .unwrap()
        .unwrap()
        .space_quota_definition_guid
        .is_none());
}

#[tokio::test]
async fn services_and_routes_are_counted() {
    let api = Api::start().await;
    let few = api
        .create_quota(json!({"name": "few", "total_services": 1, "total_routes": 1, "non_basic_services_allowed": false}))
        .await;
    api.set_org_quota(&few).await;
    let domain = api.c.db.list_domains(&Default::default()).await.unwrap()[0]
        .guid
        .clone();
    let route = |host: &str| json!({"host": host, "domain_guid": domain, "space_guid": api.space});
    api.ok(201, M::POST, "/v2/routes", Some(route("one"))).await;
    let m = api
        .refused(
            310006,
            "CF-OrgQuotaTotalRoutesExceeded",
            M::POST,
            "/v2/routes",
            route("two"),
        )
        .await;
    assert!(
        m.contains("quota 'few' allows 1 route(s) and 1 are in use"),
        "{m}"
    );

    // A catalog with a free and a paid plan (its broker never answers: the quota refuses
    // before it is asked).
    let db = &api.c.db;
    let broker = db
        .upsert_broker("mysql", "http://127.0.0.1:1", "u", "p")
        .await
        .unwrap();
    db.sync_catalog(
        &broker.guid,
        &[CatalogEntry {
            label: "mysql".into(),
            unique_id: "strato-mysql".into(),
            description: "MySQL".into(),
            bindable: true,
            tags: vec![],
            plans: vec![
                ("free".into(), "m-free".into(), "free".into(), true),
                ("gold".into(), "m-gold".into(), "paid".into(), false),
            ],
        }],
    )
    .await
    .unwrap();
    let plans = db.list_service_plans(&Default::default()).await.unwrap();
    let plan = |name: &str| plans.iter().find(|p| p.name == name).unwrap().guid.clone();
    let instance = |name: &str, p: String| json!({"name": name, "service_plan_guid": p, "space_guid": api.space});
    let m = api
        .refused(
            60007,
            "CF-ServiceInstanceServicePlanNotAllowed",
            M::POST,
            "/v2/service_instances",
            instance("db1", plan("gold")),
        )
        .await;
    assert!(m.contains("quota 'few'"), "{m}");
    let existing = Db::new_service_instance("db0", &api.space, Some(&plan("free")), "{}");
    db.insert_service_instance(&existing).await.unwrap();
    let m = api
        .refused(
            60005,
            "CF-ServiceInstanceQuotaExceeded",
            M::POST,
            "/v2/service_instances",
            instance("db1", plan("free")),
        )
        .await;
    assert!(
        m.contains("quota 'few' allows 1 service instance(s) and 1 are in use"),
        "{m}"
    );
    // User-provided instances are not counted (as in CF).
    api.ok(
        201,
        M::POST,
        "/v2/user_provided_service_instances",
        Some(json!({"name": "ups", "space_guid": api.space, "credentials": {}})),
    )
    .await;

    // A space quota counts the space's routes and services.
    api.ok(
        201,
        M::PUT,
        &format!("/v2/quota_definitions/{few}"),
        Some(
            json!({"total_routes": 100, "total_services": 100, "non_basic_services_allowed": true}),
        ),
    )
    .await;
    let v = api
        .ok(
            201,
            M::POST,
            "/v2/space_quota_definitions",
            Some(json!({"name": "narrow", "organization_guid": api.org, "total_routes": 1, "total_services": 1})),
        )
        .await;
    let narrow = v["metadata"]["guid"].as_str().unwrap();
    api.ok(
        201,
        M::PUT,
        &format!("/v2/space_quota_definitions/{narrow}/spaces/{}", api.space),
        None,
    )
    .await;
    let m = api
        .refused(
            310005,
            "CF-SpaceQuotaTotalRoutesExceeded",
            M::POST,
            "/v2/routes",
            route("three"),
        )
        .await;
    assert!(m.contains("space quota 'narrow' allows 1 route(s)"), "{m}");
    api.refused(
        60012,
        "CF-ServiceInstanceSpaceQuotaExceeded",
        M::POST,
        "/v2/service_instances",
        instance("db2", plan("free")),
    )
    .await;
}
