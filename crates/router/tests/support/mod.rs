//! Real TCP fixtures for the router tests: tiny hyper backends, a WebSocket echo backend,
//! a router on an in-process bus, and a plain HTTP/1.1 client. Everything binds
//! 127.0.0.1:0 and stops when its guard drops.

#![allow(dead_code)]

pub mod tls;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use strato_bus::{InProcBus, SharedBus};
use strato_core::messages::RouteRegistration;
use strato_core::subjects;
use strato_router::{RouteTable, Router, RouterConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Aborts a spawned task when dropped.
pub struct TaskGuard(pub JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A backend answering with its name; `/headers` returns the request headers as JSON,
/// `/echo` returns the request body, `/slow` answers after a second, `/session` sets a
/// `JSESSIONID` cookie.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub hits: Arc<AtomicUsize>,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    _task: TaskGuard,
}

impl TestBackend {
    pub async fn start(name: &'static str) -> TestBackend {
        Self::start_with_idle_timeout(name, None).await
    }

    /// A backend that closes a keep-alive connection after `idle` without a request, as
    /// many app servers do.
    pub async fn start_with_idle_timeout(
        name: &'static str,
        idle: Option<Duration>,
    ) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let counter = counter.clone();
                let service = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    answer(name, req)
                });
                connections.spawn(async move {
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    if let Some(idle) = idle {
                        builder
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(idle);
                    }
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestBackend {
            addr,
            name,
            hits,
            connections,
            _task: TaskGuard(task),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn answer(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.uri().path() {
        "/headers" => {
            let headers: BTreeMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            Bytes::from(serde_json::to_vec(&headers).unwrap())
        }
        "/echo" => req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Bytes::from_static(name.as_bytes())
        }
        "/session" => {
            let mut response = Response::new(Full::new(Bytes::from_static(name.as_bytes())));
            response.headers_mut().insert(
                http::header::SET_COOKIE,
                http::HeaderValue::from_static("JSESSIONID=s1; Path=/; HttpOnly"),
            );
            return Ok(response);
        }
        _ => Bytes::from_static(name.as_bytes()),
    };
    Ok(Response::new(Full::new(body)))
}

/// A WebSocket server echoing every text and binary message.
pub struct EchoWsBackend {
    pub addr: SocketAddr,
    _task: TaskGuard,
}

impl EchoWsBackend {
    pub async fn start() -> EchoWsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        if (message.is_text() || message.is_binary())
                            && ws.send(message).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        EchoWsBackend {
            addr,
            _task: TaskGuard(task),
        }
    }
}

/// The private instance id [`TestRouter::register`] gives a backend.
pub fn instance_id(backend: SocketAddr) -> String {
    format!("id-{}", backend.port())
}

/// A port nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A router serving on an in-process bus; shut down when dropped.
pub struct TestRouter {
    pub addr: SocketAddr,
    /// Where HTTPS is served, when the config asked for it.
    pub https_addr: Option<SocketAddr>,
    pub table: Arc<RouteTable>,
    pub bus: SharedBus,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<()>>,
}

impl TestRouter {
    pub async fn start(adjust: impl FnOnce(&mut RouterConfig)) -> TestRouter {
        let bus: SharedBus = Arc::new(InProcBus::new());
        Self::start_on(bus, adjust).await
    }

    pub async fn start_on(bus: SharedBus, adjust: impl FnOnce(&mut RouterConfig)) -> TestRouter {
        let mut cfg = RouterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            announce_interval: None,
            prune_interval: Duration::from_millis(20),
            ..RouterConfig::default()
        };
        adjust(&mut cfg);
        let router = Router::bind(cfg, bus.clone()).await.unwrap();
        let shutdown = CancellationToken::new();
        TestRouter {
            addr: router.local_addr(),
            https_addr: router.https_addr(),
            table: router.table(),
            bus,
            task: Some(tokio::spawn(router.serve(shutdown.clone()))),
            shutdown,
        }
    }

    pub async fn publish(&self, subject: &str, host: &str, backend: SocketAddr) {
        let registration = RouteRegistration {
            dea: "dea-test".into(),
            app: "app-guid".into(),
            uris: vec![host.to_string()],
            host: backend.ip().to_string(),
            port: backend.port(),
            tags: Default::default(),
            private_instance_id: instance_id(backend),
        };
        strato_bus::publish_json(self.bus.as_ref(), subject, &registration)
            .await
            .unwrap();
    }

    /// Registers `backend` for `host` and waits until the table has it.
    pub async fn register(&self, host: &str, backend: SocketAddr) {
        self.publish(subjects::ROUTER_REGISTER, host, backend).await;
        let want = backend.to_string();
        self.wait_for(host, |b| b.is_some_and(|b| b.contains(&want)))
            .await;
    }

    pub async fn unregister(&self, host: &str, backend: SocketAddr) {
        self.publish(subjects::ROUTER_UNREGISTER, host, backend)
            .await;
    }

    /// Waits up to 5 s for the table's backends of `host` to satisfy `ok`.
    pub async fn wait_for(&self, host: &str, ok: impl Fn(Option<&Vec<String>>) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let backends = self.table.lookup(host);
            if ok(backends.as_ref()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "route table for {host} never got as expected: {backends:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn get(&self, host: &str, path: &str) -> Reply {
        send(
            self.addr,
            Method::GET,
            host,
            path,
            HeaderMap::new(),
            Bytes::new(),
        )
        .await
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A response read in full.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn send(
    to: SocketAddr,
    method: Method,
    host: &str,
    path: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let stream = TcpStream::connect(to).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let _connection = TaskGuard(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
        .body(Full::new(body))
        .unwrap();
    request.headers_mut().extend(headers);
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}
