//! Keep-alive connections from one worker thread to backends.
//!
//! Each worker owns an [`Upstream`]: its idle HTTP/1.1 connections per backend, opened with
//! hyper's low-level `client::conn::http1` and driven by a task on the worker's own
//! current-thread runtime. A request therefore never leaves the thread that accepted it (no
//! cross-thread wake-ups, unlike a shared pooled client). The locks here are only ever taken
//! by that one thread, so they never contend.
//!
//! A connection goes back to the pool when the response body it carries has been read to
//! the end ([`PooledBody`]); a body dropped half-way closes the connection instead, so a
//! client that goes away never leaves a confused connection behind nor marks a backend bad.
//!
//! The relay ([`crate::relay`]) speaks HTTP/1.1 to backends itself: its connections are
//! plain TCP streams, kept in a second set with the same limits.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;
use crate::table::Backend;

/// A sender for requests on one backend connection.
pub(crate) type Sender = SendRequest<RequestBody>;

/// Why no connection to a backend could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("cannot resolve {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("HTTP/1.1 handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// Whether an idle connection is still good for a request: the backend has neither closed
/// it nor sent anything unasked. Costs a system call only when the connection had an event.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        // Readiness may be left over from the last response: look.
        Poll::Ready(Ok(())) => matches!(
            stream.try_read(&mut [0u8; 1]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock
        ),
    }
}

/// Idle connections of one kind (hyper senders, raw streams) per backend, most recently
/// used last. Only the worker's own thread takes the lock.
struct IdleSet<C> {
    slots: Mutex<HashMap<Arc<str>, Slot<C>>>,
}

/// The idle connections to one backend, with the key handed to each checkout.
struct Slot<C> {
    key: Arc<str>,
    idle: Vec<(C, Instant)>,
}

impl<C> IdleSet<C> {
    fn new() -> IdleSet<C> {
        IdleSet {
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Pops the most recently used idle connection to `addr` younger than `max_age` that
    /// is `usable` (LIFO keeps the set of busy connections small); older or closed ones
    /// found on the way are dropped. Also gives the backend's key.
    fn take(
        &self,
        addr: &str,
        max_age: Duration,
        usable: impl Fn(&C) -> bool,
    ) -> (Arc<str>, Option<C>) {
        let mut slots = lock(&self.slots);
        let Some(slot) = slots.get_mut(addr) else {
            let key: Arc<str> = Arc::from(addr);
            let slot = Slot {
                key: key.clone(),
                idle: Vec::new(),
            };
            slots.insert(key.clone(), slot);
            return (key, None);
        };
        let now = Instant::now();
        while let Some((conn, since)) = slot.idle.pop() {
            if now.duration_since(since) < max_age && usable(&conn) {
                return (slot.key.clone(), Some(conn));
            }
        }
        (slot.key.clone(), None)
    }

    /// Keeps `conn` for the next request to `key`, unless `max` are kept already.
    fn put(&self, key: Arc<str>, conn: C, max: usize) {
        let mut slots = lock(&self.slots);
        let slot = slots.entry(key.clone()).or_insert_with(|| Slot {
            key,
            idle: Vec::new(),
        });
        if slot.idle.len() < max {
            slot.idle.push((conn, Instant::now()));
        }
    }

    /// Drops connections older than `max_age` or no longer `usable`, and backends with
    /// none left.
    fn sweep(&self, max_age: Duration, usable: impl Fn(&C) -> bool) {
        let now = Instant::now();
        lock(&self.slots).retain(|_, slot| {
            slot.idle
                .retain(|(conn, since)| now.duration_since(*since) < max_age && usable(conn));
            !slot.idle.is_empty()
        });
    }
}

/// One worker's connections to every backend it talked to.
pub(crate) struct Upstream {
    senders: IdleSet<Sender>,
    /// The relay's idle connections per backend.
    streams: IdleSet<TcpStream>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_backend: usize,
}

/// A connection ready for one request, and whether it was reused from the pool.
pub(crate) struct Checkout {
    pub(crate) sender: Sender,
    pub(crate) key: Arc<str>,
    pub(crate) reused: bool,
}

impl Upstream {
    pub(crate) fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle_per_backend: usize,
    ) -> Upstream {
        Upstream {
            senders: IdleSet::new(),
            streams: IdleSet::new(),
            connect_timeout,
            idle_timeout,
            max_idle_per_backend,
        }
    }

    /// An idle connection to `backend` when there is a usable one, else a new one.
    pub(crate) async fn checkout(&self, backend: &Backend) -> Result<Checkout, ConnectError> {
        let (key, pooled) =
            self.senders
                .take(&backend.addr, self.idle_timeout, SendRequest::is_ready);
        if let Some(sender) = pooled {
            return Ok(Checkout {
                sender,
                key,
                reused: true,
            });
        }
        let sender = self.connect(backend).await?;
        Ok(Checkout {
            sender,
            key,
            reused: false,
        })
    }

    /// The relay's connection to `backend`: (pool key, stream, reused from the pool). With
    /// `pooled` false, always a new one.
    pub(crate) async fn checkout_stream(
        &self,
        backend: &Backend,
        pooled: bool,
    ) -> Result<(Arc<str>, TcpStream, bool), ConnectError> {
        let (key, idle) = match pooled {
            true => self
                .streams
                .take(&backend.addr, self.idle_timeout, still_open),
            false => (Arc::from(backend.addr.as_str()), None),
        };
        if let Some(stream) = idle {
            return Ok((key, stream, true));
        }
        Ok((key, self.connect_stream(backend).await?, false))
    }

    /// Keeps a relay connection whose last exchange completed for the next request.
    pub(crate) fn give_back_stream(&self, key: Arc<str>, stream: TcpStream) {
        self.streams.put(key, stream, self.max_idle_per_backend);
    }

    async fn connect_stream(&self, backend: &Backend) -> Result<TcpStream, ConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout, connect_tcp(backend))
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Opens a TCP connection and starts its HTTP/1.1 task on this thread's runtime.
    async fn connect(&self, backend: &Backend) -> Result<Sender, ConnectError> {
        let stream = self.connect_stream(backend).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        let addr = backend.addr.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(backend = %addr, %error, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Keeps a connection whose last exchange completed for the next request to `key`.
    fn give_back(self: &Arc<Self>, key: Arc<str>, mut sender: Sender) {
        if sender.is_ready() {
            self.put(key, sender);
        } else if !sender.is_closed() {
            // The connection task has not yet noticed the exchange is over: wait for it on
            // this thread rather than throw a good connection away.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let upstream = Arc::downgrade(self);
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    if let Some(upstream) = upstream.upgrade() {
                        upstream.put(key, sender);
                    }
                }
            });
        }
    }

    fn put(&self, key: Arc<str>, sender: Sender) {
        self.senders.put(key, sender, self.max_idle_per_backend);
    }

    /// Closes idle connections older than the idle timeout or closed by the backend, and
    /// forgets backends with no connection left.
    pub(crate) fn sweep(&self) {
        self.senders
            .sweep(self.idle_timeout, |sender| !sender.is_closed());
        self.streams.sweep(self.idle_timeout, still_open);
    }

    /// How often [`Upstream::sweep`] should run.
    pub(crate) fn sweep_interval(&self) -> Duration {
        (self.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn connect_tcp(backend: &Backend) -> Result<TcpStream, ConnectError> {
    if let Some(addr) = backend.socket_addr {
        return Ok(TcpStream::connect(addr).await?);
    }
    let resolve_error = |source| ConnectError::Resolve {
        addr: backend.addr.clone(),
        source,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(backend.addr.as_str())
        .await
        .map_err(resolve_error)?
        .collect();
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = error,
        }
    }
    Err(ConnectError::Io(last_error))
}

/// A backend's response body that returns its connection to the worker's pool once read to
/// the end.
pub struct PooledBody {
    body: Incoming,
    /// `None` once given back, or when the connection must not be reused (an upgrade).
    conn: Option<(Arc<Upstream>, Arc<str>, Sender)>,
}

impl PooledBody {
    /// `reusable`: false for a connection that switches protocols with this response.
    pub(crate) fn new(
        body: Incoming,
        upstream: Arc<Upstream>,
        key: Arc<str>,
        sender: Sender,
        reusable: bool,
    ) -> PooledBody {
        PooledBody {
            body,
            conn: reusable.then_some((upstream, key, sender)),
        }
    }

    fn release(&mut self) {
        if let Some((upstream, key, sender)) = self.conn.take() {
            upstream.give_back(key, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            // Half a response on a connection: it cannot carry another request.
            Poll::Ready(Some(Err(_))) => self.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Servers stop polling once `is_end_stream` says the body is complete.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let backend = Backend::new(addr.to_string(), "").unwrap();
        let upstream = Upstream::new(Duration::from_secs(1), Duration::from_secs(60), 4);
        assert!(matches!(
            upstream.checkout(&backend).await,
            Err(ConnectError::Io(_))
        ));
        assert_eq!(upstream.sweep_interval(), Duration::from_secs(10));
    }
}
