//! The router end to end over real TCP: backends register on an in-process bus and requests
//! go through the router's port.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use strato_core::messages::RouterStart;
use strato_core::subjects;
use support::{closed_port, send, EchoWsBackend, TestBackend, TestRouter};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn round_robin_alternates_between_instances() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let router = TestRouter::start(|_| {}).await;
    router.register("app.test", a.addr).await;
    router.register("app.test", b.addr).await;

    let mut bodies = Vec::new();
    for _ in 0..6 {
        let reply = router.get("app.test", "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        bodies.push(reply.body);
    }
    for pair in bodies.windows(2) {
        assert_ne!(pair[0], pair[1], "round robin should alternate: {bodies:?}");
    }
    assert_eq!((a.hits(), b.hits()), (3, 3));
}

#[tokio::test]
async fn unknown_host_gets_a_404_naming_it() {
    let router = TestRouter::start(|_| {}).await;
    let reply = router.get("Foo.LocalHost:8080", "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.body.trim(),
        "404 Not Found: Requested route ('foo.localhost') does not exist."
    );
    assert_eq!(reply.headers["x-cf-routererror"], "unknown_route");
}

#[tokio::test]
async fn host_matches_regardless_of_case_port_and_trailing_dot() {
    let a = TestBackend::start("a").await;
    let router = TestRouter::start(|_| {}).await;
    router.register("MyApp.Example.Test", a.addr).await;
    for host in [
        "myapp.example.test",
        "MYAPP.example.TEST:8080",
        "myapp.example.test.",
        "myapp.example.test.:80",
    ] {
        let reply = router.get(host, "/").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "a"),
            "host {host}"
        );
    }
    assert_eq!(
        router.get("other.example.test", "/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn dead_backend_gives_502() {
    let dead = closed_port().await;
    let router = TestRouter::start(|_| {}).await;
    router.register("dead.test", dead).await;
    let started = Instant::now();
    let reply = router.get("dead.test", "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.body.contains("502 Bad Gateway"), "{}", reply.body);
    println!("502 after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn refused_connection_is_retried_on_a_live_instance() {
    let live = TestBackend::start("live").await;
    let dead = closed_port().await;
    // No ejection, so every other request meets the dead instance first and must retry.
    let router = TestRouter::start(|cfg| cfg.backend_eject = Duration::ZERO).await;
    router.register("app.test", dead).await;
    router.register("app.test", live.addr).await;
    for i in 0..6 {
        let reply = router.get("app.test", "/").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "live"),
            "request {i}"
        );
    }
    // A request body survives the retry: it is only taken once a connection is up.
    for i in 0..4 {
        let payload = format!("payload {i}");
        let reply = send(
            router.addr,
            Method::POST,
            "app.test",
            "/echo",
            HeaderMap::new(),
            Bytes::from(payload.clone()),
        )
        .await;
        assert_eq!((reply.status, reply.body), (StatusCode::OK, payload));
    }
    assert_eq!(live.hits(), 10);
}

#[tokio::test]
async fn refusing_backend_is_ejected_for_a_while() {
    let live = TestBackend::start("live").await;
    let dead = closed_port().await;
    let router = TestRouter::start(|cfg| cfg.max_attempts = 1).await;
    router.register("app.test", dead).await;
    router.register("app.test", live.addr).await;
    // With a single attempt per request, at most one request can meet the dead instance
    // before it is ejected; every later one goes straight to the live one.
    let mut failures = 0;
    for _ in 0..6 {
        let reply = router.get("app.test", "/").await;
        if reply.status == StatusCode::BAD_GATEWAY {
            failures += 1;
        } else {
            assert_eq!(reply.body, "live");
        }
    }
    assert!(failures <= 1, "{failures} requests met the dead instance");
}

#[tokio::test]
async fn forwarding_headers_reach_the_backend() {
    let a = TestBackend::start("a").await;
    let router = TestRouter::start(|_| {}).await;
    router.register("app.test", a.addr).await;

    let before = epoch_ms();
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", HeaderValue::from_static("10.1.2.3"));
    let reply = send(
        router.addr,
        Method::GET,
        "App.Test:8080",
        "/headers",
        headers,
        Bytes::new(),
    )
    .await;
    let after = epoch_ms();
    assert_eq!(reply.status, StatusCode::OK);
    let seen: BTreeMap<String, String> = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(seen["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "App.Test:8080");
    assert_eq!(seen["host"], "App.Test:8080");
    let start: u64 = seen["x-request-start"].parse().unwrap();
    assert!(
        (before..=after).contains(&start),
        "{before} <= {start} <= {after}"
    );
    let id = uuid::Uuid::parse_str(&seen["x-vcap-request-id"]).unwrap();
    assert_eq!(id.get_version_num(), 4);

    let mut headers = HeaderMap::new();
    headers.insert(
        "x-vcap-request-id",
        HeaderValue::from_static("from-the-client"),
    );
    let reply = send(
        router.addr,
        Method::GET,
        "app.test",
        "/headers",
        headers,
        Bytes::new(),
    )
    .await;
    let seen: BTreeMap<String, String> = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(seen["x-vcap-request-id"], "from-the-client");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn unrefreshed_route_expires_after_the_ttl() {
    let a = TestBackend::start("a").await;
    let router = TestRouter::start(|cfg| cfg.route_ttl = Duration::from_millis(400)).await;
    // Taken before registering, so the measured age is never less than the real one.
    let registered = Instant::now();
    router.register("once.test", a.addr).await;
    router.register("kept.test", a.addr).await;
    assert_eq!(router.get("once.test", "/").await.status, StatusCode::OK);

    // kept.test is refreshed more often than the TTL; once.test never is.
    let mut once_gone = None;
    while registered.elapsed() < Duration::from_millis(1200) {
        router
            .publish(subjects::ROUTER_REGISTER, "kept.test", a.addr)
            .await;
        if once_gone.is_none() && router.get("once.test", "/").await.status == StatusCode::NOT_FOUND
        {
            once_gone = Some(registered.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let once_gone = once_gone.expect("once.test never expired");
    println!("unrefreshed route expired after {once_gone:?}");
    assert!(
        once_gone >= Duration::from_millis(350),
        "expired too early: {once_gone:?}"
    );
    assert_eq!(router.get("kept.test", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn unregistered_route_drains_then_404s() {
    let a = TestBackend::start("a").await;
    let router = TestRouter::start(|cfg| cfg.drain = Duration::from_millis(600)).await;
    router.register("app.test", a.addr).await;
    let unregistered = Instant::now();
    router.unregister("app.test", a.addr).await;
    // Give the unregister time to be applied, then the backend must still serve.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = router.get("app.test", "/").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "a"));
    loop {
        let status = router.get("app.test", "/").await.status;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            unregistered.elapsed() < Duration::from_secs(5),
            "drained route never went away"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("drained route went away after {:?}", unregistered.elapsed());
    assert!(unregistered.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn new_backend_ends_the_drain_at_once() {
    let old = TestBackend::start("old").await;
    let new = TestBackend::start("new").await;
    let router = TestRouter::start(|cfg| cfg.drain = Duration::from_secs(30)).await;
    router.register("app.test", old.addr).await;
    router.unregister("app.test", old.addr).await;
    router.register("app.test", new.addr).await;
    let want = vec![new.addr.to_string()];
    router.wait_for("app.test", |b| b == Some(&want)).await;
    for _ in 0..4 {
        assert_eq!(router.get("app.test", "/").await.body, "new");
    }
}

#[tokio::test]
async fn websocket_echo_through_the_router() {
    let ws = EchoWsBackend::start().await;
    let router = TestRouter::start(|_| {}).await;
    router.register("ws.test", ws.addr).await;

    let mut request = format!("ws://{}/chat", router.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("host", HeaderValue::from_static("ws.test"));
    let stream = tokio::net::TcpStream::connect(router.addr).await.unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "through", "the router"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("no echo within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    let big = vec![7u8; 256 * 1024];
    socket.send(Message::binary(big.clone())).await.unwrap();
    let echoed = socket.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_data().len(), big.len());
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn client_that_cancels_does_not_mark_the_backend_bad() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let router = TestRouter::start(|_| {}).await;
    router.register("app.test", a.addr).await;
    router.register("app.test", b.addr).await;

    // Two slow requests (one per instance) that the client abandons mid-flight.
    for _ in 0..2 {
        let cancelled = tokio::time::timeout(
            Duration::from_millis(150),
            send(
                router.addr,
                Method::GET,
                "app.test",
                "/slow",
                HeaderMap::new(),
                Bytes::new(),
            ),
        )
        .await;
        assert!(
            cancelled.is_err(),
            "the slow request should have been cancelled"
        );
    }
    assert_eq!((a.hits(), b.hits()), (1, 1));

    let mut bodies = Vec::new();
    for _ in 0..4 {
        let reply = router.get("app.test", "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        bodies.push(reply.body);
    }
    bodies.sort();
    assert_eq!(bodies, vec!["a", "a", "b", "b"]);
}

#[tokio::test]
async fn internal_hosts_go_to_the_api_backend() {
    let api = TestBackend::start("api").await;
    let app = TestBackend::start("app").await;
    let router = TestRouter::start(|cfg| {
        cfg.api_backend = Some(api.addr);
        cfg.domain = "Example.Test".into();
    })
    .await;
    router.register("app.example.test", app.addr).await;
    let own = router.addr.to_string();
    for host in [
        "api.example.test",
        "API.example.test:443",
        own.as_str(),
        "localhost:8080",
        "localhost",
        "[::1]:80",
    ] {
        let reply = router.get(host, "/").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "api"),
            "host {host}"
        );
    }
    assert_eq!(router.get("app.example.test", "/").await.body, "app");
    assert_eq!(
        router.get("apix.example.test", "/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn only_the_api_gets_the_routers_proof_and_clients_cannot_send_one() {
    let api = TestBackend::start("api").await;
    let app = TestBackend::start("app").await;
    let router = TestRouter::start(|cfg| {
        cfg.api_backend = Some(api.addr);
        cfg.domain = "example.test".into();
        cfg.api_proof = Some("proof-123".into());
    })
    .await;
    router.register("app.example.test", app.addr).await;
    let forged = || {
        let mut headers = HeaderMap::new();
        headers.insert("x-strato-router", HeaderValue::from_static("forged"));
        headers
    };
    let seen = |body: &str| -> BTreeMap<String, String> { serde_json::from_str(body).unwrap() };
    let reply = send(
        router.addr,
        Method::GET,
        "api.example.test",
        "/headers",
        forged(),
        Bytes::new(),
    )
    .await;
    assert_eq!(seen(&reply.body)["x-strato-router"], "proof-123");
    let reply = send(
        router.addr,
        Method::GET,
        "app.example.test",
        "/headers",
        forged(),
        Bytes::new(),
    )
    .await;
    assert!(
        !seen(&reply.body).contains_key("x-strato-router"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn without_an_api_backend_internal_hosts_are_unknown_routes() {
    let router = TestRouter::start(|_| {}).await;
    let reply = router.get("127.0.0.1", "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.body.contains("('127.0.0.1')"), "{}", reply.body);
}

#[tokio::test]
async fn serve_announces_router_start() {
    let bus: strato_bus::SharedBus = std::sync::Arc::new(strato_bus::InProcBus::new());
    let mut starts = bus.subscribe(subjects::ROUTER_START).await.unwrap();
    let router = TestRouter::start_on(bus, |cfg| cfg.route_ttl = Duration::from_secs(20)).await;
    let message = tokio::time::timeout(Duration::from_secs(5), starts.next())
        .await
        .expect("no router.start within 5 s")
        .unwrap();
    let start: RouterStart = strato_bus::decode(&message).unwrap();
    assert_eq!(start.prune_threshold_in_seconds, 20);
    assert_eq!(start.minimum_register_interval_in_seconds, 5);
    assert!(!start.id.is_empty());
    drop(router);
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let mut router = TestRouter::start(|_| {}).await;
    assert_eq!(
        router.get("x.test", "/").await.status,
        StatusCode::NOT_FOUND
    );
    router.shutdown.cancel();
    let task = router.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve did not return after shutdown")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(router.addr).await.is_err());
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let a = TestBackend::start("a").await;
    let router = TestRouter::start(|_| {}).await;
    router.register("app.test", a.addr).await;
    let stream = tokio::net::TcpStream::connect(router.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let _connection = support::TaskGuard(tokio::spawn(async move {
        let _ = connection.await;
    }));
    for _ in 0..3 {
        let request = http::Request::builder()
            .uri("http://App.Test:8080/headers")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), http::Version::HTTP_2);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let seen: BTreeMap<String, String> = serde_json::from_slice(&body).unwrap();
        // The backend speaks HTTP/1.1 and still learns the host.
        assert_eq!(seen["host"], "App.Test:8080");
    }
}

#[tokio::test]
async fn backend_connections_are_kept_alive_and_reused() {
    let a = TestBackend::start("a").await;
    let router = TestRouter::start(|_| {}).await;
    router.register("app.test", a.addr).await;
    // Each `get` is a new client connection; the backend connection outlives them all.
    for _ in 0..10 {
        let reply = router.get("app.test", "/").await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "a"));
    }
    assert_eq!(a.hits(), 10);
    assert_eq!(
        a.connections(),
        1,
        "requests did not reuse the pooled connection"
    );
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_replaced_without_an_error() {
    let a = TestBackend::start_with_idle_timeout("a", Some(Duration::from_millis(100))).await;
    let router = TestRouter::start(|_| {}).await;
    router.register("app.test", a.addr).await;
    for round in 0..3 {
        let reply = router.get("app.test", "/").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "a"),
            "round {round}"
        );
        // Long enough for the backend to close the idle connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Normally 3; a slow machine may let one idle connection live past 300 ms.
    assert!(a.connections() >= 2, "{} connections", a.connections());
}

#[tokio::test]
async fn idle_backend_connections_are_closed_after_the_idle_timeout() {
    let a = TestBackend::start("a").await;
    let router = TestRouter::start(|cfg| cfg.pool_idle_timeout = Duration::from_millis(150)).await;
    router.register("app.test", a.addr).await;
    assert_eq!(router.get("app.test", "/").await.status, StatusCode::OK);
    assert_eq!(router.get("app.test", "/").await.status, StatusCode::OK);
    assert_eq!(a.connections(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(router.get("app.test", "/").await.status, StatusCode::OK);
    assert_eq!(a.connections(), 2, "an expired idle connection was reused");
}

#[tokio::test]
async fn several_workers_share_the_load_and_stop_on_shutdown() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let mut router = TestRouter::start(|cfg| cfg.workers = 3).await;
    router.register("app.test", a.addr).await;
    router.register("app.test", b.addr).await;

    // Six keep-alive clients at once, ten requests each.
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let addr = router.addr;
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .unwrap();
                let _connection = support::TaskGuard(tokio::spawn(async move {
                    let _ = connection.await;
                }));
                let mut bodies = Vec::new();
                for _ in 0..10 {
                    let request = http::Request::get("/")
                        .header(http::header::HOST, "app.test")
                        .body(http_body_util::Empty::<Bytes>::new())
                        .unwrap();
                    let response = sender.send_request(request).await.unwrap();
                    assert_eq!(response.status(), StatusCode::OK);
                    let body = http_body_util::BodyExt::collect(response.into_body())
                        .await
                        .unwrap()
                        .to_bytes();
                    bodies.push(String::from_utf8_lossy(&body).into_owned());
                }
                bodies
            })
        })
        .collect();
    let mut served = 0;
    for client in clients {
        let bodies = client.await.unwrap();
        assert!(bodies.iter().all(|b| b == "a" || b == "b"), "{bodies:?}");
        served += bodies.len();
    }
    assert_eq!(served, 60);
    // Round robin is shared by every worker.
    assert_eq!((a.hits(), b.hits()), (30, 30));

    router.shutdown.cancel();
    let task = router.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve did not return after shutdown")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(router.addr).await.is_err());
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
