//! The NATS requests the JetStream store is built from, each retried while NATS is away.
//!
//! async-nats reconnects on its own; an operation that meets a dropped connection or a server
//! restarting (timeouts, "no responders" while JetStream recovers) retries with backoff for
//! [`JetStreamOptions::unavailable_timeout`](super::JetStreamOptions) before it fails with an
//! error naming the bucket. Publishes are retried *identically* (same `Nats-Msg-Id`, same
//! `Nats-Expected-Last-Sequence`), so a publish whose acknowledgement was lost is recognised by
//! the stream's duplicate window instead of being applied twice.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::header::HeaderMap;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::DirectGetErrorKind;
use futures::StreamExt;
use serde_json::Value;

use super::keys::Subjects;
use super::Inner;
use crate::{KvError, Result};

/// Header naming the revision of the write an entry belongs to, on every entry of a write
/// that spans several entries (the sequence of the write's last entry).
pub(crate) const COMMIT_HEADER: &str = "Strato-Commit";
const KV_OPERATION: &str = "KV-Operation";
/// How long a read of the entries below a path waits for the next one before starting over.
const SCAN_IDLE: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The latest entry of one key: a value, or a delete marker (`value: None`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub path: String,
    pub value: Option<Value>,
    /// The revision of the write that made this entry.
    pub revision: u64,
}

/// Why a publish did not land.
pub(crate) enum PublishFailure {
    /// The stream had moved past the expected last sequence: another writer came first.
    Raced,
    Failed(KvError),
}

/// The revision an entry belongs to: its write's commit header, or its own sequence.
pub(crate) fn commit_of(headers: Option<&HeaderMap>, sequence: u64) -> u64 {
    headers
        .and_then(|h| h.get(COMMIT_HEADER))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(sequence)
}

/// Whether an entry is a delete (or purge) marker rather than a value.
fn is_tombstone(headers: Option<&HeaderMap>) -> bool {
    headers
        .and_then(|h| h.get(KV_OPERATION))
        .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"))
}

/// Turns one stored message into an [`Entry`], or `None` for keys that are not paths.
pub(crate) fn entry_of(
    subjects: &Subjects,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    sequence: u64,
) -> Result<Option<Entry>> {
    let Some(path) = subjects.path_in(subject) else {
        return Ok(None);
    };
    let value = if is_tombstone(headers) {
        None
    } else {
        Some(
            serde_json::from_slice(payload).map_err(|e| KvError::Corrupt {
                path: path.clone(),
                message: format!("entry {sequence} is not JSON: {e}"),
            })?,
        )
    };
    Ok(Some(Entry {
        path,
        value,
        revision: commit_of(headers, sequence),
    }))
}

impl Inner {
    /// Runs `attempt` until it succeeds, retrying for `unavailable_timeout`.
    pub(crate) async fn retrying<T, E, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        E: Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        let deadline = Instant::now() + self.options.unavailable_timeout;
        let mut delay = FIRST_BACKOFF;
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) if Instant::now() < deadline => {
                    tracing::debug!(bucket = %self.bucket, %error, "{what} failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
                Err(error) => return Err(self.unavailable(what, error)),
            }
        }
    }

    pub(crate) fn unavailable(&self, what: &str, error: impl Display) -> KvError {
        KvError::Storage(format!(
            "{what} in NATS JetStream bucket '{}' failed for {:?}: {error}; check that nats-server is running with JetStream enabled and reachable",
            self.bucket, self.options.unavailable_timeout
        ))
    }

    /// The stream's last sequence (0 when nothing was ever written).
    pub(crate) async fn last_sequence(&self) -> Result<u64> {
        let info = self
            .retrying("reading the stream state", || self.stream.get_info())
            .await?;
        Ok(info.state.last_sequence)
    }

    /// The stream's first retained sequence.
    pub(crate) async fn first_sequence(&self) -> Result<u64> {
        let info = self
            .retrying("reading the stream state", || self.stream.get_info())
            .await?;
        Ok(info.state.first_sequence)
    }

    /// The headers of the message at `sequence`, `None` if it is gone.
    pub(crate) async fn headers_at(&self, sequence: u64) -> Result<Option<HeaderMap>> {
        let message = self
            .retrying("reading an entry", || async {
                match self.stream.direct_get(sequence).await {
                    Ok(message) => Ok(Some(message)),
                    Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(message.map(|m| m.headers))
    }

    /// The latest entry stored at exactly `path` (a value or a delete marker).
    pub(crate) async fn entry_at(&self, path: &str) -> Result<Option<Entry>> {
        let subject = self.subjects.of_path(path);
        let message = self
            .retrying("reading a key", || async {
                match self
                    .stream
                    .direct_get_last_for_subject(subject.as_str())
                    .await
                {
                    Ok(message) => Ok(Some(message)),
                    Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
        match message {
            Some(m) => entry_of(
                &self.subjects,
                &m.subject,
                Some(&m.headers),
                &m.payload,
                m.sequence,
            ),
            None => Ok(None),
        }
    }

    /// The latest entry of every key strictly below `path` (everything for `""`), delete
    /// markers included, in stream order.
    pub(crate) async fn entries_below(&self, path: &str) -> Result<Vec<Entry>> {
        let filter = self.subjects.below(path);
        let anything = self
            .retrying("reading keys", || async {
                match self
                    .stream
                    .direct_get_next_for_subject(filter.as_str(), None)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await?;
        if !anything {
            return Ok(Vec::new());
        }
        let messages = self
            .retrying("reading keys", || self.scan_latest(&filter))
            .await?;
        let mut entries = Vec::new();
        for (subject, headers, payload, sequence) in messages {
            if let Some(entry) = entry_of(
                &self.subjects,
                &subject,
                headers.as_ref(),
                &payload,
                sequence,
            )? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// The last message of every subject matching `filter`, through an ordered consumer.
    async fn scan_latest(&self, filter: &str) -> Result<Vec<RawMessage>, async_nats::Error> {
        let consumer = self
            .stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.context.client().new_inbox(),
                filter_subject: filter.to_string(),
                deliver_policy: DeliverPolicy::LastPerSubject,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await?;
        let name = consumer.cached_info().name.clone();
        let mut remaining = consumer.cached_info().num_pending;
        let mut out = Vec::new();
        if remaining > 0 {
            let mut messages = consumer.messages().await?;
            while remaining > 0 {
                let message = match tokio::time::timeout(SCAN_IDLE, messages.next()).await {
                    Ok(Some(message)) => message?,
                    Ok(None) => return Err("the key scan ended early".into()),
                    Err(_) => return Err("the key scan stalled".into()),
                };
                let info = message.info()?;
                remaining = info.pending;
                let sequence = info.stream_sequence;
                out.push((
                    message.subject.to_string(),
                    message.headers.clone(),
                    message.payload.to_vec(),
                    sequence,
                ));
            }
        }
        // Ordered consumers expire on their own; deleting it now just frees it sooner.
        let stream = self.stream.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        Ok(out)
    }

    /// Publishes one entry expecting the stream to end at `expected_last`; returns its
    /// sequence. Transport failures resend the identical message.
    pub(crate) async fn publish(
        &self,
        subject: &str,
        message: PublishMessage,
        expected_last: u64,
    ) -> std::result::Result<u64, PublishFailure> {
        let deadline = Instant::now() + self.options.unavailable_timeout;
        let mut delay = FIRST_BACKOFF;
        loop {
            let error = match self
                .context
                .send_publish(subject.to_string(), message.clone())
                .await
            {
                Ok(ack) => match ack.await {
                    Ok(ack) => return Ok(ack.sequence),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            match error.kind() {
                PublishErrorKind::WrongLastSequence => return Err(PublishFailure::Raced),
                PublishErrorKind::TimedOut
                | PublishErrorKind::BrokenPipe
                | PublishErrorKind::StreamNotFound
                    if Instant::now() < deadline =>
                {
                    tracing::debug!(bucket = %self.bucket, %error, expected_last, "publish failed; resending");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
                _ => {
                    return Err(PublishFailure::Failed(
                        self.unavailable("writing an entry", error),
                    ))
                }
            }
        }
    }
}

/// A message as read by a scan: subject, headers, payload, stream sequence.
type RawMessage = (String, Option<HeaderMap>, Vec<u8>, u64);
