//! HTTPS through the router over real TCP and real TLS: the cloud's CA issues per-host
//! certificates on demand, operator-installed ones win for their domain, and the limits
//! on request heads and slow clients hold on both ports.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use strato_router::rustls::pki_types::CertificateDer;
use strato_router::{HttpsSettings, Router, RouterConfig, RouterError};
use strato_tls::fingerprint_of;
use support::tls::{tls_connect, Tls};
use support::{EchoWsBackend, TaskGuard, TestBackend, TestRouter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn served_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test]
async fn https_reaches_the_backend_which_learns_the_scheme() {
    let tls = Tls::new();
    let backend = TestBackend::start("app").await;
    let router = tls.router(|_| {}).await;
    let https = router.https_addr.unwrap();
    router.register("myapp.example.test", backend.addr).await;

    let client = tls.client("myapp.example.test", https);
    let url = format!("https://myapp.example.test:{}/headers", https.port());
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen: BTreeMap<String, String> = response.json().await.unwrap();
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["host"], format!("myapp.example.test:{}", https.port()));
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");

    // Plain HTTP on the other port still says http.
    let reply = router.get("myapp.example.test", "/headers").await;
    let seen: BTreeMap<String, String> = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(seen["x-forwarded-proto"], "http");

    // An unknown host over HTTPS gets the router's 404, not a TLS failure.
    let client = tls.client("nobody.example.test", https);
    let url = format!("https://nobody.example.test:{}/", https.port());
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // A client that trusts only the system roots refuses the certificate.
    let stranger = reqwest::Client::builder()
        .use_rustls_tls()
        .resolve("myapp.example.test", https)
        .build()
        .unwrap();
    let url = format!("https://myapp.example.test:{}/", https.port());
    assert!(stranger.get(&url).send().await.is_err());
}

#[tokio::test]
async fn each_host_gets_its_own_certificate_from_the_ca() {
    let tls = Tls::new();
    let router = tls.router(|_| {}).await;
    let https = router.https_addr.unwrap();
    let ca = tls.authority.ca_der();
    let a = tls_connect(https, "a.example.test", ca, &[]).await.unwrap();
    let b = tls_connect(https, "b.example.test", ca, &[]).await.unwrap();
    assert_ne!(served_leaf(&a), served_leaf(&b));
    let again = tls_connect(https, "a.example.test", ca, &[]).await.unwrap();
    assert_eq!(
        served_leaf(&a),
        served_leaf(&again),
        "issued once, then kept"
    );
    // Trusting a different CA, the handshake fails.
    let other = Tls::new();
    assert!(
        tls_connect(https, "a.example.test", other.authority.ca_der(), &[])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn http2_is_negotiated_over_tls() {
    let tls = Tls::new();
    let backend = TestBackend::start("h2-app").await;
    let router = tls.router(|_| {}).await;
    router.register("myapp.example.test", backend.addr).await;
    let stream = tls_connect(
        router.https_addr.unwrap(),
        "myapp.example.test",
        tls.authority.ca_der(),
        &[b"h2", b"http/1.1"],
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let _connection = TaskGuard(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let request = Request::get("https://myapp.example.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"h2-app");
}

/// An outside CA and a leaf it signed for `names`: (chain PEM, key PEM, leaf, CA).
fn outside_certificate(
    names: &[&str],
) -> (
    String,
    String,
    CertificateDer<'static>,
    CertificateDer<'static>,
) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let leaf = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (
        format!("{}{}", leaf.pem(), ca.pem()),
        key.serialize_pem(),
        leaf.der().clone(),
        ca.der().clone(),
    )
}

#[tokio::test]
async fn an_installed_certificate_is_served_for_its_domain_without_a_restart() {
    let tls = Tls::new();
    let backend = TestBackend::start("shop").await;
    let router = tls.router(|_| {}).await;
    let https = router.https_addr.unwrap();
    router.register("shop.example.org", backend.addr).await;

    let (chain, key, leaf, outside_ca) = outside_certificate(&["shop.example.org"]);
    let info = tls
        .custom
        .install("shop.example.org", &chain, &key)
        .unwrap();
    assert_eq!(info.fingerprint, fingerprint_of(&leaf));

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        if let Ok(stream) = tls_connect(https, "shop.example.org", &outside_ca, &[]).await {
            break stream;
        }
        assert!(
            Instant::now() < deadline,
            "the installed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(fingerprint_of(&served_leaf(&stream)), info.fingerprint);
    // And the connection serves the app.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.example.org\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("shop"), "{response}");

    // Other names still get the cloud CA's certificates.
    let other = tls_connect(https, "blog.example.org", tls.authority.ca_der(), &[])
        .await
        .unwrap();
    assert_ne!(served_leaf(&other), leaf);

    // Removed: the CA issues for the domain again.
    tls.custom.remove("shop.example.org").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tls_connect(https, "shop.example.org", tls.authority.ca_der(), &[])
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the removed certificate was still served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn websocket_echo_over_https() {
    let tls = Tls::new();
    let ws = EchoWsBackend::start().await;
    let router = tls.router(|_| {}).await;
    router.register("ws.example.test", ws.addr).await;
    let stream = tls_connect(
        router.https_addr.unwrap(),
        "ws.example.test",
        tls.authority.ca_der(),
        &[b"http/1.1"],
    )
    .await
    .unwrap();
    let request = "wss://ws.example.test/chat".into_client_request().unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    socket.send(Message::text("over tls")).await.unwrap();
    let echoed = socket.next().await.unwrap().unwrap();
    assert_eq!(echoed, Message::text("over tls"));
    socket.close(None).await.unwrap();
}

/// Reads until the peer closes, for up to `limit`; what arrived, or `None` if still open.
async fn read_until_closed<S: AsyncReadExt + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Option<String> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&received).into_owned()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_client_trickling_headers_is_cut_off() {
    let backend = TestBackend::start("app").await;
    let router = TestRouter::start(|cfg| cfg.header_read_timeout = Duration::from_secs(1)).await;
    router.register("app.test", backend.addr).await;

    let mut stream = TcpStream::connect(router.addr).await.unwrap();
    // One whole request is answered; the next one's headers come a line every 200 ms.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let started = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
        .await
        .unwrap();
    let mut closed_after = None;
    for i in 0..40 {
        if stream
            .write_all(format!("X-Slow-{i}: x\r\n").as_bytes())
            .await
            .is_err()
        {
            closed_after = Some(started.elapsed());
            break;
        }
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the slow client was never disconnected");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(4),
        "closed after {closed_after:?}"
    );
    assert_eq!(
        backend.hits(),
        1,
        "the trickled request never reached the backend"
    );
}

#[tokio::test]
async fn silent_clients_are_closed_on_both_ports() {
    let tls = Tls::new();
    let router = tls
        .router(|cfg| {
            cfg.header_read_timeout = Duration::from_secs(1);
            if let Some(https) = cfg.https.as_mut() {
                https.handshake_timeout = Duration::from_secs(1);
            }
        })
        .await;
    // Connected, never a byte: plain HTTP, before any TLS handshake, and after one.
    let mut plain = TcpStream::connect(router.addr).await.unwrap();
    let mut no_handshake = TcpStream::connect(router.https_addr.unwrap())
        .await
        .unwrap();
    let mut after_handshake = tls_connect(
        router.https_addr.unwrap(),
        "idle.example.test",
        tls.authority.ca_der(),
        &[],
    )
    .await
    .unwrap();
    let started = Instant::now();
    let limit = Duration::from_secs(4);
    assert!(
        read_until_closed(&mut plain, limit).await.is_some(),
        "plain HTTP stayed open"
    );
    assert!(
        read_until_closed(&mut no_handshake, limit).await.is_some(),
        "TLS without a handshake stayed open"
    );
    assert!(
        read_until_closed(&mut after_handshake, limit)
            .await
            .is_some(),
        "TLS without a request stayed open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

/// A request whose `X-Big` header carries `size` bytes, on a fresh connection.
async fn request_with_header(to: SocketAddr, size: usize) -> String {
    let mut stream = TcpStream::connect(to).await.unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(size)
    );
    // The router may answer and close before reading all of an oversized head.
    let _ = stream.write_all(head.as_bytes()).await;
    read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the router neither answered nor closed")
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let backend = TestBackend::start("app").await;
    let router = TestRouter::start(|_| {}).await;
    router.register("app.test", backend.addr).await;
    let fits = request_with_header(router.addr, 32 * 1024).await;
    assert!(fits.starts_with("HTTP/1.1 200"), "{fits:.200}");
    let too_big = request_with_header(router.addr, 80 * 1024).await;
    assert!(too_big.starts_with("HTTP/1.1 431"), "{too_big:.200}");
    assert_eq!(backend.hits(), 1);

    let strict = TestRouter::start(|cfg| cfg.max_header_bytes = 16 * 1024).await;
    strict.register("app.test", backend.addr).await;
    let refused = request_with_header(strict.addr, 20 * 1024).await;
    assert!(refused.starts_with("HTTP/1.1 431"), "{refused:.200}");
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn a_taken_https_port_is_a_bind_error_naming_it() {
    let tls = Tls::new();
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = RouterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        https: Some(HttpsSettings::new(addr, tls.config.clone())),
        ..RouterConfig::default()
    };
    let bus: strato_bus::SharedBus = Arc::new(strato_bus::InProcBus::new());
    let error = match Router::bind(cfg, bus).await {
        Err(error) => error,
        Ok(_) => panic!("bound a port that is taken"),
    };
    assert!(
        matches!(error, RouterError::Bind { addr: a, .. } if a == addr),
        "{error}"
    );
    assert!(
        error.to_string().contains(&addr.port().to_string()),
        "{error}"
    );
}
