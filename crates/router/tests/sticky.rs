//! Sticky sessions through the router: an app that sets `JSESSIONID` gets its client back
//! on the same instance, over the relay (requests without a body) and hyper (with one),
//! until that instance is gone.

mod support;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use support::{instance_id, send, TestBackend, TestRouter};

async fn two_instances() -> (TestRouter, TestBackend, TestBackend) {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let router = TestRouter::start(|_| {}).await;
    router.register("app.test", a.addr).await;
    router.register("app.test", b.addr).await;
    (router, a, b)
}

fn cookies(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::COOKIE, HeaderValue::from_str(value).unwrap());
    headers
}

/// Who answers `method /` with the given cookies (a body with POST, so hyper serves it).
async fn who(router: &TestRouter, method: Method, cookie: &str) -> String {
    let body = match method {
        Method::POST => Bytes::from_static(b"form"),
        _ => Bytes::new(),
    };
    send(router.addr, method, "app.test", "/", cookies(cookie), body)
        .await
        .body
}

#[tokio::test]
async fn a_session_stays_on_its_instance_over_both_request_paths() {
    let (router, a, b) = two_instances().await;
    let started = router.get("app.test", "/session").await;
    let pinned: Vec<String> = started
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let answered_by = if started.body == "a" { &a } else { &b };
    let vcap = format!("__VCAP_ID__={}", instance_id(answered_by.addr));
    assert_eq!(
        pinned,
        [
            "JSESSIONID=s1; Path=/; HttpOnly".to_string(),
            format!("{vcap}; Path=/; HttpOnly")
        ]
    );
    let cookie = format!("JSESSIONID=s1; {vcap}");
    for method in [
        Method::GET,
        Method::POST,
        Method::GET,
        Method::POST,
        Method::GET,
    ] {
        assert_eq!(
            who(&router, method.clone(), &cookie).await,
            started.body,
            "{method}"
        );
    }
    // Without the cookie, requests go round the instances as usual.
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(who(&router, Method::GET, "JSESSIONID=s1; __VCAP_ID__=gone").await);
    }
    assert!(
        seen.contains(&"a".to_string()) && seen.contains(&"b".to_string()),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_session_whose_instance_is_gone_moves_to_another_and_is_pinned_there() {
    let (router, a, b) = two_instances().await;
    let cookie = format!("JSESSIONID=s1; __VCAP_ID__={}", instance_id(a.addr));
    assert_eq!(who(&router, Method::GET, &cookie).await, "a");
    drop(a);
    for method in [Method::GET, Method::POST] {
        let body = match method {
            Method::POST => Bytes::from_static(b"form"),
            _ => Bytes::new(),
        };
        let reply = send(
            router.addr,
            method.clone(),
            "app.test",
            "/",
            cookies(&cookie),
            body,
        )
        .await;
        assert_eq!(reply.body, "b", "{method}");
        let pinned = reply.headers.get(http::header::SET_COOKIE);
        let want = format!("__VCAP_ID__={}; Path=/; HttpOnly", instance_id(b.addr));
        assert_eq!(
            pinned.and_then(|v| v.to_str().ok()),
            Some(want.as_str()),
            "{method}"
        );
    }
}
