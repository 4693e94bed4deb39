//! Body types of the proxy: what the router answers with, and a client's request body on
//! its way to a backend.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;
use tokio::time::Sleep;

pub use crate::upstream::PooledBody;

/// What the router answers with: a backend's streamed body (which gives its connection back
/// to the pool once read) or a page of its own.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

/// A client's request body on its way to a backend. It tells when the last of it has been
/// handed on: an app's time to answer ([`crate::RouterConfig::response_timeout`]) counts
/// from then, as with Go's `ResponseHeaderTimeout`, so a slow upload is not cut off. And it
/// gives up on a client that stops sending part-way
/// ([`crate::RouterConfig::body_read_timeout`]), which would otherwise hold its backend
/// connection for ever.
pub(crate) struct RequestBody {
    inner: Incoming,
    sent: Option<oneshot::Sender<()>>,
    stalled: Arc<AtomicBool>,
    idle_timeout: Duration,
    /// Runs while waiting for the client's next bytes (made the first time it waits).
    idle: Option<Pin<Box<Sleep>>>,
    /// Waiting for the client now: the last poll found nothing. While hyper does not ask
    /// for more (the app is not reading), the client is not waited for.
    waiting: bool,
}

/// Tells when the [`RequestBody`] it was made with has been sent whole, or that the client
/// stopped sending it.
pub(crate) struct BodySent {
    told: Option<oneshot::Receiver<()>>,
    stalled: Arc<AtomicBool>,
}

/// The client sent nothing more of its request body for the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no more of the request body arrived within {0:?}")]
pub(crate) struct BodyStalled(Duration);

impl RequestBody {
    /// `idle_timeout`: the longest wait for the client's next bytes.
    pub(crate) fn new(inner: Incoming, idle_timeout: Duration) -> (RequestBody, BodySent) {
        let stalled = Arc::new(AtomicBool::new(false));
        let (sent, told) = if inner.is_end_stream() {
            (None, None)
        } else {
            let (sent, told) = oneshot::channel();
            (Some(sent), Some(told))
        };
        let body = RequestBody {
            inner,
            sent,
            stalled: stalled.clone(),
            idle_timeout,
            idle: None,
            waiting: false,
        };
        (body, BodySent { told, stalled })
    }

    fn tell_sent(&mut self) {
        if let Some(sent) = self.sent.take() {
            let _ = sent.send(());
        }
    }

    /// Whether the client has been silent for the idle timeout since the router began
    /// waiting for it (which starts the timer).
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = tokio::time::Instant::now() + self.idle_timeout;
        let idle = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.waiting {
            self.waiting = true;
            idle.as_mut().reset(deadline);
        }
        idle.as_mut().poll(cx).is_ready()
    }
}

impl BodySent {
    /// Returns once the body has been sent whole, at once for a request without one. A
    /// body dropped unfinished counts as sent: hyper drops a body it has written whole
    /// without asking for its end, and a request whose body failed ends by itself.
    pub(crate) async fn wait(&mut self) {
        if let Some(told) = self.told.as_mut() {
            let _ = told.await;
            self.told = None;
        }
    }

    /// True when the request failed because the client stopped sending its body.
    pub(crate) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending if self.idle_expired(cx) => {
                self.stalled.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(BodyStalled(self.idle_timeout).into())))
            }
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.tell_sent();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                // hyper stops polling a body that says it has ended, or once it has
                // written the length it announced, or after trailers.
                let ended = frame.is_trailers()
                    || self.inner.is_end_stream()
                    || self.inner.size_hint().exact() == Some(0);
                if ended {
                    self.tell_sent();
                }
                self.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
