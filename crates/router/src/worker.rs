//! One worker thread of the router: its own current-thread tokio runtime and its own
//! connections to backends, so a request is read, routed, forwarded and answered without
//! ever waking another thread (the way nginx's worker processes work). Only the route table
//! is shared, read lock-free.
//!
//! The router's acceptor hands each new client connection to the worker with the fewest
//! open connections ([`Workers::dispatch`]); that one cross-thread step per connection keeps
//! long-lived keep-alive connections evenly spread, which `SO_REUSEPORT`'s hashing does not.
//! HTTPS connections are handed over before their TLS handshake, which the worker then does
//! itself, so the acceptor never spends CPU on cryptography. HTTP/1.1 requests, plain or
//! over TLS, start on the relay ([`crate::relay`]); HTTP/2 and what the relay hands back
//! are served by hyper.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::proxy::{Peer, Proxy};
use crate::relay::{Relay, Relayed};
use crate::table::{Pool, RouteTable};
use crate::upstream::Upstream;
use crate::RouterConfig;

/// What every worker gets from the router.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) table: Arc<RouteTable>,
    pub(crate) api: Option<Arc<Pool>>,
    pub(crate) api_host: String,
    pub(crate) cfg: RouterConfig,
    pub(crate) stop: CancellationToken,
}

/// How a client connection is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    /// TLS first (handshake on the worker), then HTTP.
    Https,
}

/// A client connection on its way to a worker.
type Handoff = (std::net::TcpStream, SocketAddr, Scheme);

/// hyper refuses a smaller read buffer than this.
const MIN_MAX_BUF_SIZE: usize = 8192;

/// One running worker, as the acceptor sees it.
struct Handle {
    connections: mpsc::UnboundedSender<Handoff>,
    /// Client connections open on the worker (counted from hand-off to close).
    open: Arc<AtomicUsize>,
}

/// The running workers; [`Workers::finished`] completes once they all stopped.
pub(crate) struct Workers {
    handles: Vec<Handle>,
    finished: Vec<oneshot::Receiver<()>>,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub(crate) fn start(count: usize, shared: &Shared) -> io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::new(),
            finished: Vec::new(),
        };
        for index in 0..count.max(1) {
            let (connections, incoming) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            let finished = spawn(index, incoming, open.clone(), shared.clone())?;
            workers.handles.push(Handle { connections, open });
            workers.finished.push(finished);
        }
        Ok(workers)
    }

    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }

    /// Hands an accepted connection to the worker with the fewest open connections.
    pub(crate) fn dispatch(&self, stream: TcpStream, peer: SocketAddr, scheme: Scheme) {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, %peer, "cannot hand a client connection to a worker");
                return;
            }
        };
        let mut handoff = (stream, peer, scheme);
        let mut order: Vec<&Handle> = self.handles.iter().collect();
        order.sort_by_key(|handle| handle.open.load(Ordering::Relaxed));
        for handle in order {
            handle.open.fetch_add(1, Ordering::Relaxed);
            match handle.connections.send(handoff) {
                Ok(()) => return,
                // That worker has stopped: try the next one.
                Err(mpsc::error::SendError(back)) => {
                    handle.open.fetch_sub(1, Ordering::Relaxed);
                    handoff = back;
                }
            }
        }
    }

    /// Waits until every worker has stopped and closed its sockets (or died).
    pub(crate) async fn finished(self) {
        drop(self.handles);
        for done in self.finished {
            let _ = done.await;
        }
    }
}

/// Starts worker `index` on its own thread; the receiver completes once the worker has
/// stopped and closed its sockets (or died).
fn spawn(
    index: usize,
    incoming: mpsc::UnboundedReceiver<Handoff>,
    open: Arc<AtomicUsize>,
    shared: Shared,
) -> io::Result<oneshot::Receiver<()>> {
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("router-worker-{index}"))
        .spawn(move || {
            // Declared first, so dropped last: after the runtime and every socket it owns.
            let _done = done;
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, index, "cannot start a router worker's runtime");
                    return;
                }
            };
            runtime.block_on(run(incoming, open, shared));
            drop(runtime);
        })?;
    Ok(finished)
}

async fn run(incoming: mpsc::UnboundedReceiver<Handoff>, open: Arc<AtomicUsize>, shared: Shared) {
    let cfg = &shared.cfg;
    let upstream = Arc::new(Upstream::new(
        cfg.connect_timeout,
        cfg.pool_idle_timeout,
        cfg.pool_max_idle_per_backend,
    ));
    let proxy = Arc::new(Proxy {
        table: shared.table.clone(),
        upstream: upstream.clone(),
        api: shared.api.clone(),
        api_host: shared.api_host.clone(),
        api_proof: cfg
            .api_proof
            .as_deref()
            .and_then(|p| http::HeaderValue::from_str(p).ok()),
        max_attempts: cfg.max_attempts,
        eject_ms: cfg.backend_eject.as_millis() as u64,
        response_timeout: cfg.response_timeout,
        body_read_timeout: cfg.body_read_timeout,
        stop: shared.stop.clone(),
    });
    let sweeper = tokio::spawn(sweep(upstream, shared.stop.clone()));
    let tls = cfg.https.as_ref().map(|https| Tls {
        acceptor: TlsAcceptor::from(https.tls.clone()),
        handshake_timeout: https.handshake_timeout,
    });
    let relay = Arc::new(Relay {
        proxy: proxy.clone(),
        buffers: Default::default(),
        header_read_timeout: cfg.header_read_timeout,
        max_header_bytes: cfg.max_header_bytes.max(MIN_MAX_BUF_SIZE),
        stop: shared.stop.clone(),
    });
    serve_connections(incoming, open, proxy, relay, tls, &shared).await;
    let _ = sweeper.await;
}

/// One client connection and what serving it needs.
struct Connection {
    server: Arc<auto::Builder<TokioExecutor>>,
    proxy: Arc<Proxy>,
    client: Arc<Peer>,
    watcher: Watcher,
    peer: SocketAddr,
    /// A connection that has not brought a whole request by then is closed: hyper's own
    /// header timeout only starts once it knows the protocol, so a client that sends
    /// nothing (or dribbles an HTTP/2 preface) would otherwise be kept forever.
    first_request_timeout: Duration,
}

impl Connection {
    /// Serves HTTP/1 (with upgrades) or HTTP/2 requests on `io` until it closes.
    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            server,
            proxy,
            client,
            watcher,
            peer,
            first_request_timeout,
        } = self;
        let requested = Arc::new(AtomicBool::new(false));
        let seen = requested.clone();
        let service = service_fn(move |req| {
            seen.store(true, Ordering::Relaxed);
            let proxy = proxy.clone();
            let client = client.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, &client).await) }
        });
        let connection = server.serve_connection_with_upgrades(TokioIo::new(io), service);
        let connection = watcher.watch(connection);
        tokio::pin!(connection);
        let ended = tokio::select! {
            ended = &mut connection => ended,
            () = tokio::time::sleep(first_request_timeout) => {
                if !requested.load(Ordering::Relaxed) {
                    tracing::debug!(%peer, "no request within the header read timeout; closing");
                    return;
                }
                connection.await
            }
        };
        if let Err(error) = ended {
            tracing::debug!(%error, %peer, "client connection ended with an error");
        }
    }
}

/// The TLS handshake of an HTTPS client, given up after the handshake timeout.
async fn handshake(
    tls: &Tls,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%error, %peer, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Closes this worker's stale idle backend connections now and then, until `stop`.
async fn sweep(upstream: Arc<Upstream>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(upstream.sweep_interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => upstream.sweep(),
        }
    }
}

/// Decrements a worker's open connection count when a connection ends.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How this worker accepts TLS.
#[derive(Clone)]
struct Tls {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

/// The HTTP/1 and HTTP/2 server every connection of a worker is served by, with the
/// router's limits on request heads.
fn http_server(cfg: &RouterConfig) -> auto::Builder<TokioExecutor> {
    let mut server = auto::Builder::new(TokioExecutor::new());
    server
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes.max(MIN_MAX_BUF_SIZE));
    server
        .http2()
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
    server
}

/// Serves the connections handed to this worker until `stop`, then waits (up to the
/// shutdown grace) for open connections to end and drops the rest.
async fn serve_connections(
    mut incoming: mpsc::UnboundedReceiver<Handoff>,
    open: Arc<AtomicUsize>,
    proxy: Arc<Proxy>,
    relay: Arc<Relay>,
    tls: Option<Tls>,
    shared: &Shared,
) {
    let stop = &shared.stop;
    let grace = shared.cfg.shutdown_grace;
    let server = Arc::new(http_server(&shared.cfg));
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer, scheme) = tokio::select! {
            _ = stop.cancelled() => break,
            handed = incoming.recv() => match handed {
                Some(handed) => handed,
                None => break,
            },
        };
        let guard = OpenGuard(open.clone());
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, %peer, "a router worker cannot take a client connection");
                continue;
            }
        };
        let client = Arc::new(Peer::new(peer.ip().to_canonical(), scheme == Scheme::Https));
        let connection = Connection {
            server: server.clone(),
            proxy: proxy.clone(),
            client,
            watcher: graceful.watcher(),
            peer,
            first_request_timeout: shared.cfg.header_read_timeout,
        };
        match (scheme, &tls) {
            (Scheme::Http, _) => {
                let relay = relay.clone();
                connections.spawn(async move {
                    let _guard = guard;
                    // The relay serves plain HTTP/1.1 requests without bodies; hyper the
                    // rest of a connection once anything else comes.
                    if let Relayed::Handoff(io) = relay.serve(stream, &connection.client).await {
                        connection.serve(io).await;
                    }
                });
            }
            (Scheme::Https, Some(tls)) => {
                let tls = tls.clone();
                let relay = relay.clone();
                connections.spawn(async move {
                    let _guard = guard;
                    let Some(stream) = handshake(&tls, stream, peer).await else {
                        return;
                    };
                    // HTTP/2 (chosen by ALPN) is hyper's; HTTP/1.1 goes through the relay.
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        connection.serve(stream).await;
                    } else if let Relayed::Handoff(io) =
                        relay.serve(stream, &connection.client).await
                    {
                        connection.serve(io).await;
                    }
                });
            }
            (Scheme::Https, None) => {
                tracing::warn!(%peer, "an HTTPS connection reached a worker without TLS settings");
            }
        }
    }
    // Connections handed over but not started yet are closed with the channel.
    drop(incoming);
    drop(proxy);
    drop(relay);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within the shutdown grace period");
    }
    connections.abort_all();
}
