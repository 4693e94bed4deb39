//! The controller served for real in a test: a bootstrapped SQLite database in a temp dir
//! (admin password `s3cret`), the in-process bus, a free TCP port with client addresses.
//! Dropping it stops the server and removes the files.
#![allow(dead_code)] // each test binary uses its own part

use std::sync::Arc;

use serde_json::Value;
use strato_controller::{api, bootstrap, Controller, ControllerConfig, Shared};

pub const ADMIN_PASSWORD: &str = "s3cret";

pub struct Served {
    pub base: String,
    pub http: reqwest::Client,
    pub c: Shared,
    pub cancel: tokio_util::sync::CancellationToken,
    // Last, so the server stops before its files go.
    pub dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Served {
    /// Starts a controller; `configure` may change its settings first.
    pub async fn start(configure: impl FnOnce(&mut ControllerConfig)) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let layout = strato_core::home::Layout::new(dir.path().to_path_buf());
        let db = strato_db::Db::connect(&strato_db::Db::sqlite_url(&dir.path().join("c.sqlite")))
            .await
            .unwrap();
        bootstrap::ensure(
            &db,
            "localhost",
            &layout.admin_password_file(),
            Some(ADMIN_PASSWORD.into()),
        )
        .await
        .unwrap();
        let mut cfg = ControllerConfig::new(
            "localhost",
            &layout,
            b"test-secret-test-secret-test-secret".to_vec(),
        );
        configure(&mut cfg);
        let cancel = tokio_util::sync::CancellationToken::new();
        let bus: strato_bus::SharedBus = Arc::new(strato_bus::InProcBus::new());
        let c = Controller::start(cfg, db, bus, cancel.clone())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = api::router(c.clone());
        let stop = cancel.clone();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .unwrap();
        });
        Served {
            base,
            http: reqwest::Client::new(),
            c,
            cancel,
            dir,
        }
    }

    /// `POST /oauth/token` as client `cf`: status and JSON body.
    pub async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/oauth/token", self.base))
            .basic_auth("cf", Some(""))
            .form(form)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// An access token of `user`, whose login must succeed.
    pub async fn access_token(&self, user: &str, password: &str) -> String {
        let (status, tok) = self
            .token(&[
                ("grant_type", "password"),
                ("username", user),
                ("password", password),
            ])
            .await;
        assert_eq!(status, 200, "login of {user}: {tok}");
        tok["access_token"].as_str().unwrap().to_string()
    }
}
