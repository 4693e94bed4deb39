//! The NATS bus for a cluster: the same [`Bus`] contract over `async-nats`.
//!
//! Subjects are checked with [`crate::subject`] before they reach the client, so errors
//! match the in-process bus. A subscription is a NATS subscriber; dropping it (or calling
//! [`Subscription::unsubscribe`]) sends UNSUB on the same connection, ahead of anything
//! published afterwards. Requests rely on the server's no-responders status (NATS 2.2+)
//! to fail at once when nobody listens.

use std::time::Duration;

use async_nats::{PublishErrorKind, RequestErrorKind, SubscribeErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::subject;
use crate::{Bus, BusError, Message, Subscription};

/// A bus backed by one connection to a NATS server. Clones share the connection.
#[derive(Clone, Debug)]
pub struct NatsBus {
    client: async_nats::Client,
}

impl NatsBus {
    /// Connects to the NATS server at `url` (for example `nats://127.0.0.1:4222`), or to
    /// any server of a NATS cluster given as a comma-separated list of URLs: the client
    /// moves to another server of the list (or one the cluster told it about) when its
    /// own goes away.
    ///
    /// The connection is pinged every 2 s and reconnects within a second of the server
    /// being reachable again: a node cut off from the cluster notices soon, and is back
    /// (heartbeats, route registrations) soon after the network heals.
    pub async fn connect(url: &str) -> Result<NatsBus, BusError> {
        Self::connect_with(url, async_nats::ConnectOptions::new()).await
    }

    /// Like [`NatsBus::connect`], over TLS verified against the CA certificate(s) in the
    /// PEM file `ca` (a cluster's own NATS server).
    pub async fn connect_tls(url: &str, ca: &std::path::Path) -> Result<NatsBus, BusError> {
        Self::connect_with(url, tls(async_nats::ConnectOptions::new(), Some(ca))).await
    }

    /// Connects with replies under `prefix` instead of `_INBOX` (a user allowed to read
    /// only its own inbox subjects, such as a node joining a cluster), trying once, over
    /// TLS with the given client configuration (which decides what to trust).
    pub async fn connect_with_inbox_prefix(
        url: &str,
        prefix: &str,
        tls: rustls::ClientConfig,
    ) -> Result<NatsBus, BusError> {
        let options = async_nats::ConnectOptions::new()
            .custom_inbox_prefix(prefix)
            .connection_timeout(Duration::from_secs(5))
            .tls_client_config(tls)
            .require_tls(true);
        Self::connect_with(url, options).await
    }

    async fn connect_with(
        url: &str,
        options: async_nats::ConnectOptions,
    ) -> Result<NatsBus, BusError> {
        let options = options
            .ping_interval(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 200).min(1000))
            });
        let shown = strato_core::names::without_password(url);
        let (credentials, servers) = strato_core::names::nats_servers(url);
        let options = match credentials {
            Some((user, password)) => options.user_and_password(user, password),
            None => options,
        };
        let client = options.connect(servers).await.map_err(|e| {
            BusError::Backend(format!(
                "cannot connect to NATS at {shown}: {e}; check that nats-server is running and the URL is right"
            ))
        })?;
        Ok(NatsBus { client })
    }

    /// Wraps an already configured client (credentials, TLS, reconnect policy).
    pub fn from_client(client: async_nats::Client) -> NatsBus {
        NatsBus { client }
    }

    /// The underlying client, for JetStream and other NATS-only features.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

/// Requires TLS verified against the CA certificates in `ca`, when given.
pub fn tls(
    options: async_nats::ConnectOptions,
    ca: Option<&std::path::Path>,
) -> async_nats::ConnectOptions {
    match ca {
        Some(ca) => options
            .add_root_certificates(ca.to_path_buf())
            .require_tls(true),
        None => options,
    }
}

/// Converts a client message into a bus message.
fn to_bus_message(message: async_nats::Message) -> Message {
    Message {
        subject: message.subject.to_string(),
        reply: message.reply.map(|reply| reply.to_string()),
        payload: message.payload,
    }
}

fn publish_error(subject: &str, error: async_nats::PublishError) -> BusError {
    match error.kind() {
        PublishErrorKind::InvalidSubject => BusError::InvalidSubject(subject.to_string()),
        PublishErrorKind::Send => BusError::Closed,
        PublishErrorKind::MaxPayloadExceeded => BusError::Backend(format!(
            "cannot publish on '{subject}': {error}; send a smaller payload"
        )),
    }
}

fn subscribe_error(
    subject: &str,
    group: Option<&str>,
    error: async_nats::SubscribeError,
) -> BusError {
    match error.kind() {
        SubscribeErrorKind::InvalidSubject => BusError::InvalidSubject(subject.to_string()),
        SubscribeErrorKind::InvalidQueueName => {
            BusError::InvalidQueueGroup(group.unwrap_or_default().to_string())
        }
        SubscribeErrorKind::Other => {
            BusError::Backend(format!("cannot subscribe to '{subject}': {error}"))
        }
    }
}

fn request_error(subject: &str, timeout: Duration, error: async_nats::RequestError) -> BusError {
    match error.kind() {
        RequestErrorKind::NoResponders => BusError::NoResponders(subject.to_string()),
        RequestErrorKind::TimedOut => BusError::Timeout {
            subject: subject.to_string(),
            timeout,
        },
        RequestErrorKind::InvalidSubject => BusError::InvalidSubject(subject.to_string()),
        RequestErrorKind::MaxPayloadExceeded => BusError::Backend(format!(
            "cannot send request on '{subject}': {error}; send a smaller payload"
        )),
        RequestErrorKind::Other => {
            BusError::Backend(format!("request on '{subject}' failed: {error}"))
        }
    }
}

/// Wraps a NATS subscriber; dropping the stream unsubscribes at the server.
fn to_subscription(subscriber: async_nats::Subscriber) -> Subscription {
    Subscription::new(Box::pin(subscriber.map(to_bus_message)), None)
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        subject::validate_publish(subject)?;
        self.client
            .publish(subject.to_string(), payload)
            .await
            .map_err(|e| publish_error(subject, e))
    }

    async fn publish_with_reply(
        &self,
        subject: &str,
        reply: &str,
        payload: Bytes,
    ) -> Result<(), BusError> {
        subject::validate_publish(subject)?;
        subject::validate_publish(reply)?;
        self.client
            .publish_with_reply(subject.to_string(), reply.to_string(), payload)
            .await
            .map_err(|e| publish_error(subject, e))
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        subject::validate_filter(subject)?;
        let subscriber = self
            .client
            .subscribe(subject.to_string())
            .await
            .map_err(|e| subscribe_error(subject, None, e))?;
        Ok(to_subscription(subscriber))
    }

    async fn queue_subscribe(&self, subject: &str, group: &str) -> Result<Subscription, BusError> {
        subject::validate_filter(subject)?;
        subject::validate_queue_group(group)?;
        let subscriber = self
            .client
            .queue_subscribe(subject.to_string(), group.to_string())
            .await
            .map_err(|e| subscribe_error(subject, Some(group), e))?;
        Ok(to_subscription(subscriber))
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, BusError> {
        subject::validate_publish(subject)?;
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        self.client
            .send_request(subject.to_string(), request)
            .await
            .map(to_bus_message)
            .map_err(|e| request_error(subject, timeout, e))
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Backend(format!("cannot flush to the NATS server: {e}")))
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn new_inbox(&self) -> String {
        self.client.new_inbox()
    }
}
