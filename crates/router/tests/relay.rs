//! The router's fast path for plain HTTP/1.1 requests without a body: every way a response
//! can be framed, keep-alive on both sides, pipelining, and the hand-over to hyper when a
//! request needs it. Backends here are raw TCP servers answering scripted bytes, so the
//! responses can be anything an app might send.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strato_router::RouterConfig;
use support::tls::{tls_connect, Tls};
use support::{TaskGuard, TestBackend, TestRouter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

/// A backend that answers each request head with the bytes its path is mapped to, and
/// closes the connection after answers marked so.
struct ScriptedBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Connections the router closed.
    closed_by_peer: Arc<AtomicUsize>,
    /// Every request head it got, as text.
    heads: Arc<Mutex<Vec<String>>>,
    _task: TaskGuard,
}

/// What the backend answers for a path: (raw response, close the connection afterwards).
/// Nothing and no close: it never answers (until the router closes the connection).
type Script = fn(&str) -> (Vec<u8>, bool);

impl ScriptedBackend {
    async fn start(script: Script) -> ScriptedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed_by_peer = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (accepted, closed, seen) = (connections.clone(), closed_by_peer.clone(), heads.clone());
        let task = tokio::spawn(async move {
            let mut served = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (closed, seen) = (closed.clone(), seen.clone());
                served.spawn(async move {
                    if serve_script(stream, script, seen).await {
                        closed.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        ScriptedBackend {
            addr,
            connections,
            closed_by_peer,
            heads,
            _task: TaskGuard(task),
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.heads.lock().unwrap().len()
    }

    fn last_head(&self) -> String {
        self.heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

/// Serves one connection; true when the peer closed it.
async fn serve_script(
    mut stream: TcpStream,
    script: Script,
    heads: Arc<Mutex<Vec<String>>>,
) -> bool {
    let mut buf = Vec::new();
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
        buf.drain(..end + 4);
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        heads.lock().unwrap().push(head);
        let (response, close) = script(&path);
        if stream.write_all(&response).await.is_err() || close {
            return false;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The responses the tests use, by path.
fn responses(path: &str) -> (Vec<u8>, bool) {
    let text = match path {
        "/chunked" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        "/until-close" => {
            return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close".to_vec(), true)
        }
        "/head" => "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        "/no-content" => "HTTP/1.1 204 No Content\r\n\r\n",
        "/hop" => "HTTP/1.1 200 OK\r\nConnection: x-drop\r\nX-Drop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\nContent-Length: 3\r\n\r\nhop",
        "/garbage" => "NOT HTTP AT ALL\r\n\r\n",
        "/early-hints" => "HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "/hang" => return (Vec::new(), false),
        "/drop" => return (Vec::new(), true),
        "/dated" => "HTTP/1.1 200 OK\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\nContent-Length: 0\r\n\r\n",
        "/http10" => "HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhttp10",
        "/huge" => {
            let mut huge = b"HTTP/1.1 200 OK\r\nContent-Length: 16777216\r\n\r\n".to_vec();
            huge.resize(huge.len() + 16 * 1024 * 1024, b'h');
            return (huge, false);
        }
        "/truncated" => {
            return (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this".to_vec(), true)
        }
        "/big" => {
            let mut big = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
            big.resize(big.len() + 1024 * 1024, b'x');
            return (big, false);
        }
        other => return (format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{other}", other.len()).into_bytes(), false),
    };
    (text.as_bytes().to_vec(), false)
}

/// A raw keep-alive client connection to the router (plain, or TLS over it).
struct Client<S = TcpStream> {
    stream: S,
    buf: Vec<u8>,
}

/// One response as the client read it.
#[derive(Debug)]
struct Answer {
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

impl Client {
    async fn connect(router: &TestRouter) -> Client {
        Client::over(TcpStream::connect(router.addr).await.unwrap())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn over(stream: S) -> Client<S> {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &str) {
        self.stream.write_all(raw.as_bytes()).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
            .await
            .expect("the router answers within 5 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads one response, framed by its headers (`head_request`: no body).
    async fn answer(&mut self, head_request: bool) -> Answer {
        let end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            assert!(
                self.fill().await,
                "connection closed before a response head"
            );
        };
        let head = String::from_utf8(self.buf.drain(..end).collect()).unwrap();
        let mut answer = Answer {
            head,
            body: Vec::new(),
        };
        let status = answer.status();
        if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            return answer;
        }
        if let Some(length) = answer.header("content-length") {
            let length: usize = length.parse().unwrap();
            while self.buf.len() < length {
                assert!(self.fill().await, "connection closed inside a body");
            }
            answer.body = self.buf.drain(..length).collect();
        } else if answer.header("transfer-encoding").is_some() {
            while find(&self.buf, b"0\r\n").is_none() || !self.buf.ends_with(b"\r\n\r\n") {
                assert!(self.fill().await, "connection closed inside a chunked body");
            }
            answer.body = std::mem::take(&mut self.buf);
        } else {
            while self.fill().await {}
            answer.body = std::mem::take(&mut self.buf);
        }
        answer
    }

    async fn get(&mut self, path: &str) -> Answer {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n"))
            .await;
        self.answer(false).await
    }

    /// True once the router has closed the connection.
    async fn closed(&mut self) -> bool {
        !self.fill().await
    }
}

/// A scripted backend, a router routing `app.test` to it, and a client connected to that.
async fn scripted() -> (ScriptedBackend, TestRouter, Client) {
    let backend = ScriptedBackend::start(responses).await;
    let router = router_with(backend.addr).await;
    let client = Client::connect(&router).await;
    (backend, router, client)
}

async fn router_with(backend: SocketAddr) -> TestRouter {
    router_set(backend, |_| {}).await
}

/// A router with settings of its own, routing `app.test` to `backend`.
async fn router_set(backend: SocketAddr, adjust: impl FnOnce(&mut RouterConfig)) -> TestRouter {
    let router = TestRouter::start(adjust).await;
    router.register("app.test", backend).await;
    router
}

/// A scripted backend, an HTTPS router routing `app.test` to it, and an HTTP/1.1 client
/// connected over TLS (the `Tls` to connect more).
async fn scripted_over_tls() -> (
    ScriptedBackend,
    Tls,
    TestRouter,
    Client<TlsStream<TcpStream>>,
) {
    let backend = ScriptedBackend::start(responses).await;
    let tls = Tls::new();
    let router = tls.router(|_| {}).await;
    router.register("app.test", backend.addr).await;
    let https = router.https_addr.unwrap();
    let stream = tls_connect(https, "app.test", tls.authority.ca_der(), &[b"http/1.1"])
        .await
        .unwrap();
    (backend, tls, router, Client::over(stream))
}

#[tokio::test]
async fn chunked_bodies_pass_through_and_both_connections_stay_open() {
    let (backend, _router, mut client) = scripted().await;
    for _ in 0..3 {
        let answer = client.get("/chunked").await;
        assert_eq!(answer.status(), 200);
        // A length beside chunked framing is wrong and is not passed on.
        assert_eq!(answer.header("content-length"), None, "{}", answer.head);
        let body = String::from_utf8(answer.body).unwrap();
        assert!(
            body.starts_with("5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n"),
            "{body}"
        );
    }
    let answer = client.get("/after").await;
    assert_eq!(answer.body, b"/after");
    assert_eq!(backend.connections(), 1, "the backend connection is reused");
}

#[tokio::test]
async fn a_body_ending_with_the_connection_closes_the_client_connection_too() {
    let (backend, router, mut client) = scripted().await;
    let answer = client.get("/until-close").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.body, b"until close");
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    // The next request gets a fresh backend connection.
    let mut client = Client::connect(&router).await;
    assert_eq!(client.get("/x").await.body, b"/x");
    assert_eq!(backend.connections(), 2);
}

#[tokio::test]
async fn head_and_no_content_answers_have_no_body_and_the_connection_goes_on() {
    let (backend, _router, mut client) = scripted().await;
    client
        .send("HEAD /head HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let answer = client.answer(true).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.header("content-length").as_deref(), Some("100"));
    assert_eq!(client.get("/no-content").await.status(), 204);
    assert_eq!(client.get("/then").await.body, b"/then");
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (_backend, _router, mut client) = scripted().await;
    client
        .send("GET /one HTTP/1.1\r\nHost: app.test\r\n\r\nGET /two HTTP/1.1\r\nHost: app.test\r\n\r\nGET /three HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await;
    for want in ["/one", "/two", "/three"] {
        assert_eq!(client.answer(false).await.body, want.as_bytes());
    }
    assert!(client.closed().await, "Connection: close is honoured");
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_both_ways() {
    let (backend, _router, mut client) = scripted().await;
    client
        .send("GET /hop HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: 300\r\nTE: trailers\r\nX-Strato-Router: forged\r\nX-Forwarded-For: 10.1.1.1\r\nX-Mine: yes\r\n\r\n")
        .await;
    let answer = client.answer(false).await;
    assert_eq!(answer.body, b"hop");
    assert_eq!(answer.header("x-kept").as_deref(), Some("1"));
    for gone in ["x-drop", "keep-alive", "connection"] {
        assert_eq!(
            answer.header(gone),
            None,
            "{gone} reached the client: {}",
            answer.head
        );
    }
    let head = backend.last_head().to_ascii_lowercase();
    for gone in [
        "x-secret",
        "keep-alive",
        "te:",
        "connection",
        "x-strato-router",
    ] {
        assert!(!head.contains(gone), "{gone} reached the backend:\n{head}");
    }
    for kept in [
        "host: app.test\r\n",
        "x-mine: yes\r\n",
        "x-forwarded-for: 10.1.1.1, 127.0.0.1\r\n",
        "x-forwarded-proto: http\r\n",
        "x-forwarded-host: app.test\r\n",
        "x-request-start: ",
        "x-vcap-request-id: ",
    ] {
        assert!(
            head.contains(kept),
            "{kept:?} missing at the backend:\n{head}"
        );
    }
    assert!(head.starts_with("get /hop http/1.1\r\n"), "{head}");
}

#[tokio::test]
async fn a_malformed_answer_is_a_502_and_the_client_may_go_on() {
    let (_backend, _router, mut client) = scripted().await;
    let answer = client.get("/garbage").await;
    assert_eq!(answer.status(), 502);
    assert_eq!(
        answer.header("x-cf-routererror").as_deref(),
        Some("endpoint_failure")
    );
    assert_eq!(client.get("/fine").await.body, b"/fine");
}

#[tokio::test]
async fn informational_answers_are_passed_on_before_the_final_one() {
    let (_backend, _router, mut client) = scripted().await;
    client
        .send("GET /early-hints HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let hints = client.answer(false).await;
    assert_eq!(hints.status(), 103);
    assert_eq!(hints.header("link").as_deref(), Some("</style.css>"));
    let answer = client.answer(false).await;
    assert_eq!((answer.status(), answer.body.as_slice()), (200, &b"ok"[..]));
}

#[tokio::test]
async fn an_http_1_0_backend_gets_a_fresh_connection_each_time() {
    let (backend, _router, mut client) = scripted().await;
    for _ in 0..2 {
        let answer = client.get("/http10").await;
        assert_eq!(answer.body, b"http10");
        assert!(answer.head.starts_with("HTTP/1.1 200"), "{}", answer.head);
    }
    assert_eq!(backend.connections(), 2);
}

#[tokio::test]
async fn a_large_body_streams_through_whole() {
    let (backend, _router, mut client) = scripted().await;
    let answer = client.get("/big").await;
    assert_eq!(answer.body.len(), 1024 * 1024);
    assert!(answer.body.iter().all(|&b| b == b'x'));
    assert_eq!(client.get("/small").await.body, b"/small");
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn a_request_with_a_body_hands_the_connection_to_hyper_which_serves_the_rest() {
    let backend = TestBackend::start("b").await;
    let router = router_with(backend.addr).await;
    let mut client = Client::connect(&router).await;
    assert_eq!(client.get("/").await.body, b"b");
    client
        .send("POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(client.answer(false).await.body, b"hello");
    assert_eq!(client.get("/").await.body, b"b");
    // An unknown host on a relayed connection gets the router's 404 page.
    client
        .send("GET / HTTP/1.1\r\nHost: nobody.test\r\n\r\n")
        .await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status(), 404);
    assert!(String::from_utf8_lossy(&answer.body).contains("nobody.test"));
}

#[tokio::test]
async fn a_502_to_a_head_request_has_no_body() {
    let (_backend, _router, mut client) = scripted().await;
    client
        .send("HEAD /garbage HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let answer = client.answer(true).await;
    assert_eq!(answer.status(), 502);
    assert!(answer.header("date").is_some(), "{}", answer.head);
    // Nothing of a body is left to be mistaken for the next answer.
    assert_eq!(client.get("/next").await.body, b"/next");
}

#[tokio::test]
async fn a_client_that_leaves_while_the_app_hangs_frees_the_backend_connection() {
    let (backend, _router, mut client) = scripted().await;
    client
        .send("GET /hang HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    while backend.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while backend.closed_by_peer.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the router kept the backend connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_request_an_instance_took_and_dropped_is_not_sent_to_another() {
    let first = ScriptedBackend::start(responses).await;
    let second = ScriptedBackend::start(responses).await;
    let router = router_with(first.addr).await;
    router.register("app.test", second.addr).await;
    let mut client = Client::connect(&router).await;
    assert_eq!(client.get("/drop").await.status(), 502);
    assert_eq!(
        first.requests() + second.requests(),
        1,
        "the request went to one instance only"
    );
    // Neither was ejected: both still get requests.
    for _ in 0..4 {
        assert_eq!(client.get("/ok").await.status(), 200);
    }
    assert!(first.requests() >= 2 && second.requests() >= 2);
}

#[tokio::test]
async fn a_date_is_added_when_the_app_sends_none_and_kept_when_it_does() {
    let (_backend, _router, mut client) = scripted().await;
    let answer = client.get("/x").await;
    let date = answer.header("date").expect("a date");
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
    let answer = client.get("/dated").await;
    assert_eq!(
        answer.header("date").as_deref(),
        Some("Tue, 01 Dec 2026 00:00:00 GMT")
    );
    assert_eq!(
        answer.head.matches("Date").count() + answer.head.matches("date:").count(),
        1
    );
}

#[tokio::test]
async fn a_host_named_in_connection_still_reaches_the_backend_and_forwarding_headers_are_renewed() {
    let (backend, _router, mut client) = scripted().await;
    client
        .send("GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: host, x-vcap-request-id\r\nX-Vcap-Request-Id: forged\r\n\r\n")
        .await;
    assert_eq!(client.answer(false).await.status(), 200);
    let head = backend.last_head().to_ascii_lowercase();
    assert!(head.contains("host: app.test\r\n"), "{head}");
    assert!(
        head.contains("x-vcap-request-id: ") && !head.contains("forged"),
        "{head}"
    );
}

#[tokio::test]
async fn http_1_1_over_tls_takes_the_relay_too_and_knows_it_is_https() {
    let (backend, tls, router, mut client) = scripted_over_tls().await;
    let https = router.https_addr.unwrap();
    let ca = tls.authority.ca_der();
    // Only the relay passes 1xx answers on (hyper's client drops them).
    client
        .send("GET /early-hints HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    assert_eq!(client.answer(false).await.status(), 103);
    assert_eq!(client.answer(false).await.body, b"ok");
    assert!(
        backend.last_head().contains("x-forwarded-proto: https\r\n"),
        "{}",
        backend.last_head()
    );
    // More pipelined requests than the relay reads at once: rustls keeps the rest
    // decrypted, and the relay must not wait on the socket for what is already there.
    let batch: String = (0..200)
        .map(|i| format!("GET /p{i} HTTP/1.1\r\nHost: app.test\r\n\r\n"))
        .collect();
    client.send(&batch).await;
    for i in 0..200 {
        assert_eq!(client.answer(false).await.body, format!("/p{i}").as_bytes());
    }
    // HTTP/2 chosen by ALPN is hyper's, and still served.
    let h2 = tls_connect(https, "app.test", ca, &[b"h2"]).await.unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(h2),
    )
    .await
    .unwrap();
    let _connection = TaskGuard(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let request = http::Request::get("https://app.test/over-h2")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"/over-h2");
}

#[tokio::test]
async fn over_tls_a_large_answer_to_a_slow_reader_arrives_whole_and_a_truncated_one_does_not_look_whole(
) {
    let (_backend, _tls, _router, mut client) = scripted_over_tls().await;
    client
        .send("GET /huge HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    // The client reads late: the socket fills, and the end of the answer must still be
    // sent, not left in the TLS session until the next response.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.body.len(), 16 * 1024 * 1024);
    assert!(answer.body.iter().all(|&b| b == b'h'));
    assert_eq!(client.get("/after").await.body, b"/after");

    // A body the app broke off: the router drops the connection without a close_notify,
    // so the client sees an error rather than what looks like an orderly end.
    client
        .send("GET /truncated HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), client.stream.read_to_end(&mut rest))
        .await
        .expect("the router ends the connection within 5 s");
    let error = ended.expect_err("a truncated body over TLS must not end in a clean close");
    assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{error}");
    let rest = [&client.buf[..], &rest[..]].concat();
    assert!(find(&rest, b"only this").is_some());
}

#[tokio::test]
async fn an_app_that_does_not_begin_its_response_in_time_gets_a_504_on_either_path() {
    let first = ScriptedBackend::start(responses).await;
    let second = ScriptedBackend::start(responses).await;
    let router = router_set(first.addr, |cfg| {
        cfg.response_timeout = Duration::from_millis(300)
    })
    .await;
    router.register("app.test", second.addr).await;
    let hung = || {
        [&first, &second]
            .iter()
            .map(|b| {
                let heads = b.heads.lock().unwrap();
                heads.iter().filter(|h| h.contains("/hang")).count()
            })
            .sum::<usize>()
    };
    let closed = || {
        first.closed_by_peer.load(Ordering::SeqCst) + second.closed_by_peer.load(Ordering::SeqCst)
    };
    let mut client = Client::connect(&router).await;

    // The relay's path.
    let answer = client.get("/hang").await;
    assert_eq!(answer.status(), 504);
    assert_eq!(
        answer.header("x-cf-routererror").as_deref(),
        Some("endpoint_timeout")
    );
    let text = String::from_utf8_lossy(&answer.body);
    assert!(text.contains("within 0.3 s"), "{text}");
    // The app got the request once: it is not tried on the other instance.
    assert_eq!(hung(), 1);
    // The router let go of the hung backend connection; the client's goes on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while closed() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend connection is kept"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(client.get("/after").await.body, b"/after");

    // hyper's path (a request with a body).
    client
        .send("POST /hang HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status(), 504);
    assert_eq!(hung(), 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while closed() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend connection is kept"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(client.get("/still-here").await.body, b"/still-here");
}

#[tokio::test]
async fn a_slow_upload_is_not_cut_off_the_app_s_time_runs_from_its_end() {
    let backend = TestBackend::start("b").await;
    let router = router_set(backend.addr, |cfg| {
        cfg.response_timeout = Duration::from_millis(300)
    })
    .await;
    let mut client = Client::connect(&router).await;
    client
        .send("POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\nhello")
        .await;
    // The upload takes longer than the app may take to answer.
    tokio::time::sleep(Duration::from_millis(700)).await;
    client.send("world").await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status(), 200, "{}", answer.head);
    assert_eq!(answer.body, b"helloworld");
}

#[tokio::test]
async fn a_chunked_upload_with_trailers_still_gets_the_app_s_time_limit() {
    let backend = TestBackend::start("b").await;
    let router = router_set(backend.addr, |cfg| {
        cfg.response_timeout = Duration::from_millis(300)
    })
    .await;
    let mut client = Client::connect(&router).await;
    // `/slow` answers after a second: longer than the app may take once the body is in.
    client
        .send(
            "POST /slow HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n",
        )
        .await;
    assert_eq!(client.answer(false).await.status(), 504);
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_a_408() {
    // `/echo` waits for the whole body.
    let backend = TestBackend::start("b").await;
    let router = router_set(backend.addr, |cfg| {
        cfg.body_read_timeout = Duration::from_millis(300)
    })
    .await;
    let mut client = Client::connect(&router).await;
    client
        .send("POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nhalf")
        .await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status(), 408, "{}", answer.head);
    assert_eq!(
        answer.header("x-cf-routererror").as_deref(),
        Some("client_timeout")
    );
    assert!(
        client.closed().await,
        "the connection is closed after a 408"
    );
    // A client that keeps sending is not cut off, however long the whole upload takes.
    let mut client = Client::connect(&router).await;
    client
        .send("POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n\r\n")
        .await;
    for byte in ["a", "b", "c", "d"] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        client.send(byte).await;
    }
    assert_eq!(client.answer(false).await.body, b"abcd");
}

#[tokio::test]
async fn an_app_that_reads_an_upload_slowly_does_not_make_the_client_look_stalled() {
    const SIZE: usize = 8 * 1024 * 1024;
    // An app that reads the body a megabyte at a time, pausing longer than the client may
    // be silent between reads: meanwhile the router, not the client, is the one waiting.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _app = TaskGuard(tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 65536];
            let n = stream.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end + 4;
            }
        };
        let mut got = buf.len() - head_end;
        let mut chunk = vec![0u8; 1024 * 1024];
        while got < SIZE {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let want = (SIZE - got).min(chunk.len());
            stream.read_exact(&mut chunk[..want]).await.unwrap();
            got += want;
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ngot")
            .await;
        // Keep the connection until the router is done with it.
        let _ = stream.read(&mut [0u8; 1]).await;
    }));
    let router = router_set(addr, |cfg| {
        cfg.body_read_timeout = Duration::from_millis(300)
    })
    .await;
    let stream = TcpStream::connect(router.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let _upload = TaskGuard(tokio::spawn(async move {
        let head =
            format!("PUT /bits HTTP/1.1\r\nHost: app.test\r\nContent-Length: {SIZE}\r\n\r\n");
        write.write_all(head.as_bytes()).await.unwrap();
        write.write_all(&vec![b'u'; SIZE]).await.unwrap();
        // Half-close would end the request early for some servers: keep the write side.
        std::future::pending::<()>().await;
    }));
    let mut answer = Vec::new();
    let read_all = async {
        while find(&answer, b"\r\n\r\n").is_none() {
            let mut chunk = [0u8; 4096];
            let n = read.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the router closed the connection: {answer:?}");
            answer.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("an answer within 20 s");
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
