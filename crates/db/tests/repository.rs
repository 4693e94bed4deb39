//! The repository suite, run against both real backends: SQLite in a temp file and a
//! PostgreSQL cluster started from the Debian binaries.

use strato_db::{
    health_check_type, package_state, App, Db, DbError, Filter, NewOAuthClient, NewRelease,
    OrgRole, QuotaLimits, SpaceRole,
};

async fn suite(db: &Db) {
    assert_eq!(db.schema_version().await.unwrap(), 9);

    // users
    let u = db.create_user("admin", "hash", true).await.unwrap();
    assert!(u.is_admin());
    assert_eq!(
        db.user_by_name("admin").await.unwrap().unwrap().guid,
        u.guid
    );
    assert!(matches!(
        db.create_user("admin", "x", false).await,
        Err(DbError::Conflict { .. })
    ));
    assert_eq!(db.count_users().await.unwrap(), 1);

    // orgs, spaces, domains
    let org = db.create_org("default").await.unwrap();
    let space = db.create_space(&org.guid, "default").await.unwrap();
    assert!(matches!(
        db.create_space(&org.guid, "default").await,
        Err(DbError::Conflict { .. })
    ));
    let spaces = db
        .list_spaces(&Filter {
            organization_guid: Some(org.guid.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(spaces.len(), 1);
    let dom = db.create_shared_domain("LocalHost").await.unwrap();
    assert_eq!(dom.name, "localhost");

    // apps
    let now = strato_core::now_rfc3339();
    let app = App {
        guid: strato_core::new_guid(),
        name: "web".into(),
        space_guid: space.guid.clone(),
        instances: 2,
        memory: 128,
        disk_quota: 1024,
        state: "STOPPED".into(),
        command: None,
        buildpack: None,
        detected_buildpack: None,
        detected_start_command: None,
        environment_json: "{}".into(),
        health_check_timeout: None,
        health_check_type: health_check_type::PORT.into(),
        health_check_http_endpoint: None,
        package_hash: None,
        package_state: package_state::PENDING.into(),
        staging_task_id: None,
        staging_error: None,
        droplet_hash: None,
        version: "v1".into(),
        created_at: now.clone(),
        updated_at: now,
    };
    db.insert_app(&app).await.unwrap();
    let mut dup = app.clone();
    dup.guid = strato_core::new_guid();
    assert!(
        matches!(db.insert_app(&dup).await, Err(DbError::Conflict { .. })),
        "same name in a space is refused"
    );
    let mut changed = app.clone();
    changed.state = "STARTED".into();
    changed.droplet_hash = Some("abc".into());
    changed.package_hash = Some("pkg".into());
    db.update_app(&changed).await.unwrap();
    assert_eq!(db.apps_using_package("pkg").await.unwrap(), 1);
    assert_eq!(db.apps_using_package("other").await.unwrap(), 0);
    let got = db.app_by_guid(&app.guid).await.unwrap().unwrap();
    assert_eq!(got.state, "STARTED");
    assert_eq!(got.health_check_type, "port", "the default health check");
    assert_eq!(db.apps_using_droplet("abc").await.unwrap(), 1);
    let mut http = got.clone();
    http.health_check_type = health_check_type::HTTP.into();
    http.health_check_http_endpoint = Some("/health".into());
    db.update_app(&http).await.unwrap();
    let got = db.app_by_guid(&app.guid).await.unwrap().unwrap();
    assert_eq!(
        (
            got.health_check_type.as_str(),
            got.health_check_http_endpoint.as_deref()
        ),
        ("http", Some("/health"))
    );
    releases(db, &app.guid).await;
    let by_name = db
        .list_apps(&Filter {
            name: Some("web".into()),
            space_guid: Some(space.guid.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_name.len(), 1);
    assert!(db
        .list_apps(&Filter {
            name: Some("nope".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty());

    // routes
    let r = db
        .create_route("Web", &dom.guid, &space.guid)
        .await
        .unwrap();
    assert!(matches!(
        db.create_route("web", &dom.guid, &space.guid).await,
        Err(DbError::Conflict { .. })
    ));
    db.map_route(&app.guid, &r.guid).await.unwrap();
    db.map_route(&app.guid, &r.guid).await.unwrap();
    assert_eq!(db.routes_of_app(&app.guid).await.unwrap().len(), 1);
    assert_eq!(db.apps_of_route(&r.guid).await.unwrap()[0].guid, app.guid);
    assert!(db.unmap_route(&app.guid, &r.guid).await.unwrap());
    db.map_route(&app.guid, &r.guid).await.unwrap();

    // events
    db.add_event(
        "audit.app.create",
        &u.guid,
        "admin",
        &app.guid,
        "app",
        "web",
        Some(&space.guid),
        &serde_json::json!({"a":1}),
    )
    .await
    .unwrap();
    assert_eq!(
        db.events_for(Some(&app.guid)).await.unwrap()[0].kind,
        "audit.app.create"
    );

    // sessions: live until deleted, one by one or all of a user's
    db.create_session("s1", &u.guid, "10.0.0.9").await.unwrap();
    db.create_session("s2", &u.guid, "10.0.0.9").await.unwrap();
    assert!(db.session_is_live("s1", &u.guid).await.unwrap());
    assert!(!db.session_is_live("s1", "someone-else").await.unwrap());
    assert!(db.delete_session("s1").await.unwrap());
    assert!(!db.session_is_live("s1", &u.guid).await.unwrap());
    assert_eq!(db.delete_sessions_of(&u.guid).await.unwrap(), 1);
    assert!(!db.session_is_live("s2", &u.guid).await.unwrap());

    // services: a broker's catalog, an instance, a binding
    let broker = db
        .upsert_broker("mysql", "http://10.0.0.5:1", "u", "p")
        .await
        .unwrap();
    let again = db
        .upsert_broker("mysql", "http://10.0.0.5:2", "u", "p")
        .await
        .unwrap();
    assert_eq!(
        again.guid, broker.guid,
        "a re-announced broker is updated, not duplicated"
    );
    assert!(
        !format!("{again:?}").contains("\"p\""),
        "the broker password is not in Debug"
    );
    let entry = strato_db::CatalogEntry {
        label: "mysql".into(),
        unique_id: "strato-mysql".into(),
        description: "MySQL".into(),
        bindable: true,
        tags: vec!["mysql".into(), "relational".into()],
        plans: vec![(
            "free".into(),
            "strato-mysql-free".into(),
            "100 MB".into(),
            true,
        )],
    };
    db.sync_catalog(&broker.guid, std::slice::from_ref(&entry))
        .await
        .unwrap();
    db.sync_catalog(&broker.guid, &[entry]).await.unwrap();
    let services = db.list_services(&Filter::default()).await.unwrap();
    assert_eq!(services.len(), 1, "syncing twice keeps one service");
    assert_eq!(services[0].tag_list(), vec!["mysql", "relational"]);
    let plans = db
        .list_service_plans(&Filter {
            service_guid: Some(services[0].guid.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(plans.len(), 1);
    let si = Db::new_service_instance("mydb", &space.guid, Some(&plans[0].guid), "{}");
    db.insert_service_instance(&si).await.unwrap();
    let dup = Db::new_service_instance("mydb", &space.guid, None, "{}");
    assert!(matches!(
        db.insert_service_instance(&dup).await,
        Err(DbError::Conflict { .. })
    ));
    let b = db
        .insert_service_binding(&app.guid, &si.guid, "b-1", r#"{"password":"x"}"#)
        .await
        .unwrap();
    assert!(matches!(
        db.insert_service_binding(&app.guid, &si.guid, "b-2", "{}")
            .await,
        Err(DbError::Conflict { .. })
    ));
    let of_app = db
        .list_service_bindings(&Filter {
            app_guid: Some(app.guid.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(of_app, vec![b.clone()]);
    let mut renamed = si.clone();
    renamed.name = "maindb".into();
    db.update_service_instance(&renamed).await.unwrap();
    assert_eq!(
        db.service_instance_by_guid(&si.guid)
            .await
            .unwrap()
            .unwrap()
            .name,
        "maindb"
    );
    assert!(db.delete_service_binding(&b.guid).await.unwrap());
    assert!(db.delete_service_instance(&si.guid).await.unwrap());

    // tenancy: roles, memberships, renames, feature flags, user deletion
    let bob = db.create_user("bob", "hash", false).await.unwrap();
    db.add_org_role(&org.guid, &bob.guid, OrgRole::User)
        .await
        .unwrap();
    db.add_org_role(&org.guid, &bob.guid, OrgRole::User)
        .await
        .unwrap();
    db.add_org_role(&org.guid, &bob.guid, OrgRole::Auditor)
        .await
        .unwrap();
    db.add_space_role(&space.guid, &bob.guid, SpaceRole::Developer)
        .await
        .unwrap();
    let m = db.memberships(&bob.guid).await.unwrap();
    assert_eq!(m.orgs.len(), 2, "granting twice keeps one row: {m:?}");
    assert_eq!(
        m.spaces,
        vec![(space.guid.clone(), org.guid.clone(), SpaceRole::Developer)]
    );
    assert_eq!(
        db.org_members(&org.guid, OrgRole::User).await.unwrap()[0].username,
        "bob"
    );
    assert!(db
        .space_members(&space.guid, SpaceRole::Manager)
        .await
        .unwrap()
        .is_empty());
    assert!(db
        .remove_org_role(&org.guid, &bob.guid, OrgRole::Auditor)
        .await
        .unwrap());
    assert!(!db
        .remove_org_role(&org.guid, &bob.guid, OrgRole::Auditor)
        .await
        .unwrap());
    assert!(
        !db.feature_flag("user_org_creation").await.unwrap(),
        "off by default"
    );
    db.set_feature_flag("user_org_creation", true)
        .await
        .unwrap();
    assert!(db.feature_flag("user_org_creation").await.unwrap());
    assert!(!db.feature_flag("no_such_flag").await.unwrap());
    let other = db.create_org("other").await.unwrap();
    assert!(matches!(
        db.rename_org(&other.guid, "default").await,
        Err(DbError::Conflict { .. })
    ));
    assert_eq!(
        db.rename_org(&other.guid, "renamed")
            .await
            .unwrap()
            .unwrap()
            .name,
        "renamed"
    );
    let s2 = db.create_space(&other.guid, "s2").await.unwrap();
    assert_eq!(
        db.rename_space(&s2.guid, "s3").await.unwrap().unwrap().name,
        "s3"
    );
    db.add_space_role(&s2.guid, &bob.guid, SpaceRole::Auditor)
        .await
        .unwrap();
    assert!(db.delete_space(&s2.guid).await.unwrap());
    assert!(db.delete_org(&other.guid).await.unwrap());
    db.set_password_hash(&bob.guid, "new").await.unwrap();
    assert!(db.set_admin(&bob.guid, true).await.unwrap());
    assert!(db
        .user_by_guid(&bob.guid)
        .await
        .unwrap()
        .unwrap()
        .is_admin());
    db.create_session("sa", &bob.guid, "x").await.unwrap();
    db.create_session("sb", &bob.guid, "x").await.unwrap();
    assert_eq!(db.delete_other_sessions(&bob.guid, "sb").await.unwrap(), 1);
    assert!(db.session_is_live("sb", &bob.guid).await.unwrap());
    assert!(db.delete_user(&bob.guid).await.unwrap());
    assert!(!db.session_is_live("sb", &bob.guid).await.unwrap());
    assert_eq!(db.list_users().await.unwrap().len(), 1);

    quotas(db, &org.guid, &space.guid, &app).await;
    oauth_clients(db, &u.guid).await;

    // drains: one name per app, listed per app and all together
    db.add_drain(&app.guid, "pt", "udp://h:514", false)
        .await
        .unwrap();
    assert!(matches!(
        db.add_drain(&app.guid, "pt", "tcp://h:1", true).await,
        Err(DbError::Conflict { .. })
    ));
    db.add_drain(&app.guid, "raw", "tcp://h:1", true)
        .await
        .unwrap();
    let drains = db.list_drains(Some(&app.guid)).await.unwrap();
    assert_eq!(drains.len(), 2);
    assert_eq!(drains[1].json, 1);
    assert!(db.delete_drain(&app.guid, "raw").await.unwrap());
    assert!(!db.delete_drain(&app.guid, "raw").await.unwrap());
    assert_eq!(db.list_drains(None).await.unwrap().len(), 1);

    // delete cascades the mapping, the releases and the drains, not the route
    assert!(db.delete_app(&app.guid).await.unwrap());
    assert!(db.list_drains(None).await.unwrap().is_empty());
    assert!(db.releases_of_app(&app.guid).await.unwrap().is_empty());
    assert_eq!(db.apps_using_droplet("d3").await.unwrap(), 0);
    assert!(db.app_by_guid(&app.guid).await.unwrap().is_none());
    assert!(db.route_by_guid(&r.guid).await.unwrap().is_some());
    assert!(db.apps_of_route(&r.guid).await.unwrap().is_empty());
    assert!(db.delete_route(&r.guid).await.unwrap());

    // a domain renamed: taken names refused, unknown ones reported
    db.create_shared_domain("old.example").await.unwrap();
    db.create_shared_domain("taken.example").await.unwrap();
    assert!(matches!(
        db.rename_domain("old.example", "taken.example").await,
        Err(DbError::Conflict { .. })
    ));
    let renamed = db
        .rename_domain("old.example", "New.Example")
        .await
        .unwrap()
        .expect("renamed");
    assert_eq!(renamed.name, "new.example");
    assert!(db
        .rename_domain("old.example", "x.example")
        .await
        .unwrap()
        .is_none());

    // secrets: the first candidate wins, a second controller reads it back
    assert_eq!(
        db.secret_or_insert("token", "first").await.unwrap(),
        "first"
    );
    assert_eq!(
        db.secret_or_insert("token", "second").await.unwrap(),
        "first"
    );
    db.set_secret("token", "rotated").await.unwrap();
    assert_eq!(
        db.secret_or_insert("token", "third").await.unwrap(),
        "rotated"
    );
}

#[tokio::test]
async fn sqlite_backend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cc.sqlite");
    let db = Db::connect(&Db::sqlite_url(&path)).await.unwrap();
    suite(&db).await;
    db.close().await;
    // migrations are not re-run on reopen and data survives
    let db = Db::connect(&Db::sqlite_url(&path)).await.unwrap();
    assert_eq!(db.schema_version().await.unwrap(), 9);
    assert!(db.user_by_name("admin").await.unwrap().is_some());
}

#[tokio::test]
async fn postgres_backend() {
    let pg = strato_testkit::Postgres::start().expect("start PostgreSQL from the Debian binaries");
    let db = Db::connect(&pg.url()).await.unwrap();
    suite(&db).await;
    db.close().await;
    let db = Db::connect(&pg.url()).await.unwrap();
    assert_eq!(db.schema_version().await.unwrap(), 9);
}

#[tokio::test]
async fn bad_url_is_explained() {
    let err = Db::connect("mysql://x").await.unwrap_err().to_string();
    assert!(err.contains("sqlite://PATH"), "{err}");
}

/// Quotas: the migration's `default` (CF's limits) on every org, CRUD, space quotas, usage.
async fn quotas(db: &Db, org: &str, space: &str, app: &App) {
    let default = db.quota_by_name("default").await.unwrap().unwrap();
    assert_eq!(default.limits, QuotaLimits::cf_default());
    let o = db.org_by_guid(org).await.unwrap().unwrap();
    assert_eq!(
        o.quota_definition_guid.as_deref(),
        Some(default.guid.as_str())
    );
    let small = QuotaLimits {
        memory_limit: 256,
        ..QuotaLimits::cf_default()
    };
    let q = db.create_quota("small", &small).await.unwrap();
    assert!(matches!(
        db.create_quota("small", &small).await,
        Err(DbError::Conflict { .. })
    ));
    assert!(db.set_org_quota(org, &q.guid).await.unwrap());
    assert_eq!(db.orgs_using_quota(&q.guid).await.unwrap(), vec!["default"]);
    let mut bigger = q.clone();
    bigger.limits.memory_limit = 512;
    let got = db.update_quota(&bigger).await.unwrap().unwrap();
    assert_eq!(got.limits.memory_limit, 512);
    assert_eq!(db.list_quotas().await.unwrap().len(), 2);

    // The app (2 × 128 MB) counts once started; the route and the managed instance count.
    let usage = db.org_usage(org, None).await.unwrap();
    assert_eq!(
        (usage.memory_mb, usage.app_instances),
        (256, 2),
        "{usage:?}"
    );
    assert_eq!(usage.routes, 1);
    assert_eq!(
        db.org_usage(org, Some(&app.guid)).await.unwrap().memory_mb,
        0,
        "the app being changed is left out"
    );
    assert_eq!(db.space_usage(space, None).await.unwrap().memory_mb, 256);

    let sq = db.create_space_quota(org, "tiny", &small).await.unwrap();
    assert!(matches!(
        db.create_space_quota(org, "tiny", &small).await,
        Err(DbError::Conflict { .. })
    ));
    assert!(db.set_space_quota(space, Some(&sq.guid)).await.unwrap());
    assert_eq!(
        db.space_by_guid(space)
            .await
            .unwrap()
            .unwrap()
            .space_quota_definition_guid
            .as_deref(),
        Some(sq.guid.as_str())
    );
    let mut renamed = sq.clone();
    renamed.name = "wee".into();
    assert_eq!(
        db.update_space_quota(&renamed).await.unwrap().unwrap().name,
        "wee"
    );
    assert_eq!(db.list_space_quotas(Some(org)).await.unwrap().len(), 1);
    assert!(db.delete_space_quota(&sq.guid).await.unwrap());
    assert!(db
        .space_by_guid(space)
        .await
        .unwrap()
        .unwrap()
        .space_quota_definition_guid
        .is_none());
    assert!(db.set_org_quota(org, &default.guid).await.unwrap());
    assert!(db.delete_quota(&q.guid).await.unwrap());
}

/// Releases: numbered per app, hold their droplets until expired, keep their history.
async fn releases(db: &Db, app: &str) {
    assert_eq!(db.last_release_number(app).await.unwrap(), 0);
    for (i, droplet) in ["d1", "d2", "d3", "d2"].iter().enumerate() {
        let r = db
            .add_release(&NewRelease {
                app_guid: app.to_string(),
                droplet_hash: droplet.to_string(),
                environment_json: format!(r#"{{"N":"{i}"}}"#),
                description: "staged".into(),
                actor: "u".into(),
                actor_name: "admin".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(r.number, i as i64 + 1);
    }
    assert_eq!(
        db.apps_using_droplet("d1").await.unwrap(),
        1,
        "release 1 holds d1"
    );
    let v2 = db.release_by_number(app, 2).await.unwrap().unwrap();
    assert_eq!(v2.droplet_hash.as_deref(), Some("d2"));
    assert_eq!(v2.environment_json, r#"{"N":"1"}"#);
    assert!(db.release_by_number(app, 9).await.unwrap().is_none());
    // Keep the last two: releases 1 and 2 let go of d1 and d2 (d2 is still held by 4).
    let mut gone = db.expire_releases(app, 2).await.unwrap();
    gone.sort();
    assert_eq!(gone, vec!["d1", "d2"]);
    assert_eq!(db.apps_using_droplet("d1").await.unwrap(), 0);
    assert_eq!(db.apps_using_droplet("d2").await.unwrap(), 1);
    let all = db.releases_of_app(app).await.unwrap();
    assert_eq!(all.len(), 4, "expired releases stay as history");
    assert_eq!(all[0].droplet_hash, None);
    assert!(db.expire_releases(app, 2).await.unwrap().is_empty());
    let mut held = db.release_droplets_of_app(app).await.unwrap();
    held.sort();
    assert_eq!(held, vec!["d2", "d3"]);
}

/// OAuth clients: registered once per id, looked up by id and by guid, listed, deleted.
async fn oauth_clients(db: &Db, admin: &str) {
    let new = NewOAuthClient {
        client_id: "ci-bot".into(),
        secret_hash: "$argon2id$hash".into(),
        authorized_grant_types: vec!["client_credentials".into()],
        authorities: vec!["cloud_controller.admin".into()],
        created_by: admin.into(),
    };
    let c = db.create_oauth_client(&new).await.unwrap();
    assert!(matches!(
        db.create_oauth_client(&new).await,
        Err(DbError::Conflict { .. })
    ));
    let found = db.oauth_client_by_id("ci-bot").await.unwrap().unwrap();
    assert_eq!(found, c);
    assert!(found.has_authority("cloud_controller.admin"));
    assert_eq!(found.grant_types(), vec!["client_credentials"]);
    assert_eq!(
        db.oauth_client_by_guid(&c.guid).await.unwrap(),
        Some(c.clone())
    );
    let other = db
        .create_oauth_client(&NewOAuthClient {
            client_id: "another".into(),
            ..new.clone()
        })
        .await
        .unwrap();
    let ids: Vec<String> = db
        .list_oauth_clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    assert_eq!(ids, vec!["another", "ci-bot"]);
    assert!(db.delete_oauth_client("ci-bot").await.unwrap());
    assert!(!db.delete_oauth_client("ci-bot").await.unwrap());
    assert!(db.oauth_client_by_guid(&c.guid).await.unwrap().is_none());
    // The same id registered again is a new client: old tokens name the old guid.
    let again = db.create_oauth_client(&new).await.unwrap();
    assert_ne!(again.guid, c.guid);
    assert!(db.delete_oauth_client("ci-bot").await.unwrap());
    assert!(db.delete_oauth_client(&other.client_id).await.unwrap());
}
