//! Body types of the proxy: what the router answers with, and a client's request body on
//! its way to a backend.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

pub use crate::upstream::PooledBody;

/// What the router answers with: a backend's streamed body (which gives its connection back
/// to the pool once read) or a page of its own.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

/// A client's request body on its way to a backend, which tells when the last of it has
/// been handed on: an app's time to answer ([`crate::RouterConfig::response_timeout`])
/// counts from then, as with Go's `ResponseHeaderTimeout`, so a slow upload is not cut off.
pub(crate) struct RequestBody {
    inner: Incoming,
    sent: Option<oneshot::Sender<()>>,
}

/// Tells when the [`RequestBody`] it was made with has been sent whole.
pub(crate) struct BodySent(Option<oneshot::Receiver<()>>);

impl RequestBody {
    pub(crate) fn new(inner: Incoming) -> (RequestBody, BodySent) {
        if inner.is_end_stream() {
            return (RequestBody { inner, sent: None }, BodySent(None));
        }
        let (sent, told) = oneshot::channel();
        let body = RequestBody {
            inner,
            sent: Some(sent),
        };
        (body, BodySent(Some(told)))
    }
}

impl BodySent {
    /// Returns once the body has been sent whole, at once for a request without one; never
    /// when the body was dropped unfinished (the request then fails, and says so itself).
    pub(crate) async fn wait(&mut self) {
        if let Some(told) = self.0.as_mut() {
            match told.await {
                Ok(()) => self.0 = None,
                Err(_) => std::future::pending().await,
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let finished = match &polled {
            Poll::Ready(None) => true,
            // hyper stops polling a body that says it has ended.
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if finished {
            if let Some(sent) = self.sent.take() {
                let _ = sent.send(());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
