//! Watches: the bucket's stream read in order from a revision, then followed live.
//!
//! One ordered consumer over the whole bucket, starting right after the requested revision;
//! entries outside the prefix are skipped here. Every stream sequence must arrive exactly
//! once and in order: an earlier one (after resubscribing) is skipped, a later one means the
//! entries in between were dropped by the per-key history limit before this watch read them,
//! which is [`KvError::Compacted`]. A broken subscription (lost connection, restarted server)
//! is replaced by a new consumer starting at the next sequence this watch needs.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::push::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::Message;
use async_nats::Statistics;
use futures::StreamExt;

use super::nats::entry_of;
use super::Inner;
use crate::{path, Change, KvError, Result, WatchStream};

/// How often an idle watch checks whether the client reconnected.
const RECONNECT_CHECK: Duration = Duration::from_millis(200);
/// How often a quiet watch compares the stream's last entry with what it has read: in a
/// NATS cluster its consumer lives on one server, and when that server dies nothing is
/// delivered until the client's missed-heartbeat check (tens of seconds). Behind on two
/// checks in a row, the watch makes a new consumer.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Starts a watch of `prefix` after `from_revision` (or after the current revision).
///
/// The changes already in the stream are read before this returns, so a revision whose
/// successors were dropped fails here with [`KvError::Compacted`].
pub(super) async fn start(
    inner: Arc<Inner>,
    prefix: &str,
    from_revision: Option<u64>,
) -> Result<WatchStream> {
    let after = match from_revision {
        Some(revision) => revision,
        None => inner.settled_head().await?.sequence,
    };
    let last = inner.last_sequence().await?;
    if after < last {
        let first = inner.first_sequence().await?;
        if after + 1 < first {
            return Err(KvError::Compacted {
                requested: after,
                compacted_through: first - 1,
            });
        }
    }
    let mut watcher = Watcher {
        statistics: inner.context.client().statistics(),
        subscribed_at: 0,
        inner,
        prefix: prefix.to_string(),
        next: after + 1,
        messages: None,
        pending: VecDeque::new(),
        ended: false,
        quiet: Duration::ZERO,
        behind_at: None,
    };
    while watcher.next <= last {
        watcher.receive().await.map_err(|e| match e {
            KvError::Compacted {
                compacted_through, ..
            } => KvError::Compacted {
                requested: after,
                compacted_through,
            },
            other => other,
        })?;
    }
    let stream = futures::stream::unfold(watcher, |mut watcher| async move {
        let item = watcher.next_change().await?;
        Some((item, watcher))
    });
    Ok(WatchStream::new(Box::pin(stream)))
}

struct Watcher {
    inner: Arc<Inner>,
    /// The client's connection counters: a reconnect means the consumer may be gone.
    statistics: Arc<Statistics>,
    /// The client's connect count when the current subscription was made.
    subscribed_at: u64,
    prefix: String,
    /// The stream sequence this watch needs next.
    next: u64,
    messages: Option<Ordered>,
    pending: VecDeque<Change>,
    ended: bool,
    /// Quiet time since the last stall check.
    quiet: Duration,
    /// `next` when the last stall check found the stream ahead of this watch.
    behind_at: Option<u64>,
}

impl Watcher {
    async fn next_change(&mut self) -> Option<Result<Change>> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Some(Ok(change));
            }
            if self.ended {
                return None;
            }
            if let Err(error) = self.receive().await {
                self.ended = true;
                return Some(Err(error));
            }
        }
    }

    /// Reads the next stream entry, resubscribing as often as needed.
    async fn receive(&mut self) -> Result<()> {
        loop {
            let messages = match self.messages.as_mut() {
                Some(messages) => messages,
                None => {
                    self.subscribed_at = self.statistics.connects.load(Ordering::Relaxed);
                    let subscribed = subscribe(self.inner.clone(), self.next).await?;
                    self.messages.insert(subscribed)
                }
            };
            tokio::select! {
                next = messages.next() => match next {
                    Some(Ok(message)) => {
                        self.quiet = Duration::ZERO;
                        self.behind_at = None;
                        return self.accept(message);
                    }
                    Some(Err(error)) => {
                        tracing::info!(bucket = %self.inner.bucket, next = self.next, %error, "config store watch lost its subscription; resubscribing");
                        self.messages = None;
                    }
                    None => self.messages = None,
                },
                _ = tokio::time::sleep(RECONNECT_CHECK) => {
                    // async-nats can miss a quick disconnect-reconnect and then waits for
                    // missed heartbeats (seconds); a restarted server has lost the consumer.
                    if self.statistics.connects.load(Ordering::Relaxed) != self.subscribed_at {
                        tracing::info!(bucket = %self.inner.bucket, next = self.next, "NATS reconnected; resubscribing the config store watch");
                        self.messages = None;
                    }
                    self.quiet += RECONNECT_CHECK;
                    if self.quiet >= STALL_CHECK {
                        self.quiet = Duration::ZERO;
                        self.check_stalled().await;
                    }
                }
            }
        }
    }
}

/// A new ordered consumer over the whole bucket, starting at stream sequence `next`.
async fn subscribe(inner: Arc<Inner>, next: u64) -> Result<Ordered> {
    let inner = &inner;
    inner
        .retrying("following changes", || async {
            let consumer = inner
                .stream
                .create_consumer(OrderedConfig {
                    deliver_subject: inner.context.client().new_inbox(),
                    filter_subject: inner.subjects.below(""),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: next,
                    },
                    replay_policy: ReplayPolicy::Instant,
                    ..Default::default()
                })
                .await?;
            consumer.messages().await.map_err(async_nats::Error::from)
        })
        .await
}

impl Watcher {
    /// Resubscribes when the stream has had entries this watch has not been given for two
    /// checks in a row (its consumer died with the server that held it).
    async fn check_stalled(&mut self) {
        let Ok(last) = self.inner.last_sequence().await else {
            return;
        };
        if last < self.next {
            self.behind_at = None;
            return;
        }
        if self.behind_at == Some(self.next) {
            tracing::info!(bucket = %self.inner.bucket, next = self.next, last, "config store watch is not being fed; resubscribing");
            self.messages = None;
            self.behind_at = None;
        } else {
            self.behind_at = Some(self.next);
        }
    }

    /// Takes one stream entry: checks its sequence, and queues its change if in the prefix.
    fn accept(&mut self, message: Message) -> Result<()> {
        let sequence = message
            .info()
            .map_err(|e| KvError::Storage(format!("a watched entry has no metadata: {e}")))?
            .stream_sequence;
        if sequence < self.next {
            return Ok(());
        }
        if sequence > self.next {
            return Err(KvError::Compacted {
                requested: self.next - 1,
                compacted_through: sequence - 1,
            });
        }
        self.next = sequence + 1;
        let entry = entry_of(
            &self.inner.subjects,
            &message.subject,
            message.headers.as_ref(),
            &message.payload,
            sequence,
        )?;
        if let Some(entry) = entry.filter(|e| path::is_within(&e.path, &self.prefix)) {
            self.pending.push_back(Change {
                path: entry.path,
                value: entry.value,
                revision: entry.revision,
            });
        }
        Ok(())
    }
}
