//! The message bus seam.
//!
//! Every role talks to every other through [`Bus`]: publish, subscribe (optionally in a
//! queue group), request/reply with a timeout, and NATS subject wildcards (`*` matches one
//! token, `>` the rest). Two real backends implement it — [`InProcBus`] for the micro cloud
//! and [`NatsBus`] on `async-nats` for a cluster — and one conformance suite
//! (`tests/conformance.rs`) runs against both, so code written against the trait behaves the
//! same on one machine and on many.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

mod inproc;
mod nats;
pub mod subject;

pub use inproc::InProcBus;
pub use nats::NatsBus;

/// A message as delivered to a subscriber.
#[derive(Clone, Debug)]
pub struct Message {
    pub subject: String,
    /// Where to send an answer, for requests.
    pub reply: Option<String>,
    pub payload: Bytes,
}

/// What can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("no subscriber is listening on '{0}'")]
    NoResponders(String),
    #[error("no reply on '{subject}' within {timeout:?}")]
    Timeout { subject: String, timeout: Duration },
    #[error("invalid subject '{0}': subjects are dot-separated tokens; '*' matches one token, '>' the rest and only at the end")]
    InvalidSubject(String),
    #[error(
        "invalid queue group '{0}': a queue group name must be non-empty and contain no whitespace"
    )]
    InvalidQueueGroup(String),
    #[error("the bus connection is closed")]
    Closed,
    #[error("bus error: {0}")]
    Backend(String),
    #[error("malformed payload on '{subject}': {error}")]
    Payload { subject: String, error: String },
}

/// A live subscription: a stream of messages until dropped or unsubscribed.
pub struct Subscription {
    stream: Pin<Box<dyn Stream<Item = Message> + Send>>,
    on_unsubscribe: Option<Box<dyn FnOnce() + Send>>,
}

impl Subscription {
    /// Builds a subscription from a backend's stream and a hook that cancels it.
    pub fn new(
        stream: Pin<Box<dyn Stream<Item = Message> + Send>>,
        on_unsubscribe: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        Subscription {
            stream,
            on_unsubscribe,
        }
    }

    /// The next message, or `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Message> {
        futures::StreamExt::next(&mut self.stream).await
    }

    /// Stops delivery; messages published afterwards are not received.
    pub fn unsubscribe(mut self) {
        if let Some(f) = self.on_unsubscribe.take() {
            f();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(f) = self.on_unsubscribe.take() {
            f();
        }
    }
}

impl Stream for Subscription {
    type Item = Message;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        self.stream.as_mut().poll_next(cx)
    }
}

/// The bus. Cheap to share as [`SharedBus`].
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `payload` on `subject` (no wildcards).
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError>;
    /// Publishes with a reply subject, for hand-made request patterns.
    async fn publish_with_reply(
        &self,
        subject: &str,
        reply: &str,
        payload: Bytes,
    ) -> Result<(), BusError>;
    /// Receives every message matching `subject` (wildcards allowed).
    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError>;
    /// Like `subscribe`, but each message goes to exactly one member of `group`.
    async fn queue_subscribe(&self, subject: &str, group: &str) -> Result<Subscription, BusError>;
    /// Sends a request and waits for the first reply. Fails at once with
    /// [`BusError::NoResponders`] when nobody listens, and with [`BusError::Timeout`] when
    /// nobody answers in time.
    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BusError>;
    /// Waits until everything published so far has reached the server (no-op in-process).
    async fn flush(&self) -> Result<(), BusError>;
    /// True while the bus can carry messages (a NATS client connected to a server); an
    /// in-process bus always can.
    fn is_connected(&self) -> bool {
        true
    }
    /// A fresh unique inbox subject for replies.
    fn new_inbox(&self) -> String {
        format!("_INBOX.{}", uuid::Uuid::new_v4().simple())
    }
}

pub type SharedBus = Arc<dyn Bus>;

/// Publishes `value` as JSON.
pub async fn publish_json<T: serde::Serialize + ?Sized>(
    bus: &dyn Bus,
    subject: &str,
    value: &T,
) -> Result<(), BusError> {
    let body = serde_json::to_vec(value).map_err(|e| BusError::Payload {
        subject: subject.to_string(),
        error: e.to_string(),
    })?;
    bus.publish(subject, Bytes::from(body)).await
}

/// Sends `value` as a JSON request and decodes the JSON reply.
pub async fn request_json<T: serde::Serialize + ?Sized, R: serde::de::DeserializeOwned>(
    bus: &dyn Bus,
    subject: &str,
    value: &T,
    timeout: Duration,
) -> Result<R, BusError> {
    let body = serde_json::to_vec(value).map_err(|e| BusError::Payload {
        subject: subject.to_string(),
        error: e.to_string(),
    })?;
    let msg = bus.request(subject, Bytes::from(body), timeout).await?;
    decode(&msg)
}

/// Decodes a message's JSON payload.
pub fn decode<R: serde::de::DeserializeOwned>(msg: &Message) -> Result<R, BusError> {
    serde_json::from_slice(&msg.payload).map_err(|e| BusError::Payload {
        subject: msg.subject.clone(),
        error: e.to_string(),
    })
}

/// Answers a request with `value` as JSON. A message without a reply subject is ignored.
pub async fn reply_json<T: serde::Serialize + ?Sized>(
    bus: &dyn Bus,
    msg: &Message,
    value: &T,
) -> Result<(), BusError> {
    match &msg.reply {
        Some(reply) => publish_json(bus, reply, value).await,
        None => Ok(()),
    }
}
