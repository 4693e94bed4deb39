//! Body types of the proxy.
//!
//! [`OutboundBody`] lets a request body be sent again after a failed connect: the incoming
//! body sits in a shared slot and is only taken out when hyper first polls it, which happens
//! after the connection to the backend is up. A connect error therefore leaves the body in
//! the slot for the next backend, and a request that was sent can never be sent twice.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// What the router answers with: a backend's streamed body or a page of its own.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// An incoming request body waiting to be sent to whichever backend accepts a connection.
pub(crate) struct BodySlot {
    body: Option<Arc<Mutex<Option<Incoming>>>>,
    size_hint: SizeHint,
}

impl BodySlot {
    pub(crate) fn new(body: Incoming) -> BodySlot {
        let size_hint = body.size_hint();
        // An empty body needs no slot (and no allocation).
        let body = (!body.is_end_stream()).then(|| Arc::new(Mutex::new(Some(body))));
        BodySlot { body, size_hint }
    }

    /// A body for one attempt; it takes the incoming body only when polled.
    pub(crate) fn attempt(&self) -> OutboundBody {
        OutboundBody {
            slot: self.body.clone(),
            taken: None,
            size_hint: self.size_hint,
        }
    }

    /// Whether an attempt already started sending the body (so it cannot be retried).
    pub(crate) fn is_taken(&self) -> bool {
        self.body.as_ref().is_some_and(|slot| {
            slot.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .is_none()
        })
    }
}

/// The request body as sent to a backend.
pub struct OutboundBody {
    slot: Option<Arc<Mutex<Option<Incoming>>>>,
    taken: Option<Incoming>,
    size_hint: SizeHint,
}

impl Body for OutboundBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.taken.is_none() {
            let Some(slot) = self.slot.take() else {
                return Poll::Ready(None);
            };
            self.taken = slot
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
        }
        match self.taken.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(body) => body.is_end_stream(),
            None => self.slot.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(body) => body.size_hint(),
            None => self.size_hint,
        }
    }
}
