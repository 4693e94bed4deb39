//! The config store in a NATS JetStream key-value bucket, shared by every node of a cluster.
//!
//! # Mapping
//!
//! * **Keys.** Each leaf is one KV key (see [`keys`]): `/` becomes the token separator `.`
//!   and a segment's `.` becomes `=`, so `node/10.0.0.1/roles/dea` is
//!   `node.10=0=0=1.roles.dea` and everything below a path is the subject `key.>`.
//!   Values are the leaf's JSON; a deleted leaf is a KV delete marker (`KV-Operation: DEL`),
//!   never a purge, so it keeps its revision.
//! * **Revisions.** The store revision is the bucket stream's sequence. A write of one entry
//!   has that entry's sequence; a write of several entries (setting or deleting a document,
//!   a set that replaces an ancestor leaf) gets consecutive sequences and every one of them
//!   carries the header `Strato-Commit: <sequence of the last one>`, which is the write's
//!   revision, so all leaves of one write share one revision as the data model says. A
//!   document's revision is the largest revision among the latest entries below it, delete
//!   markers included, so deleting part of a document moves it.
//! * **Atomicity.** Every write publishes with `Nats-Expected-Last-Sequence`: it reads the
//!   stream's last sequence (the *head*), reads what it needs, decides, then publishes its
//!   first entry expecting the head and each further entry expecting the one before. If any
//!   other write landed since the head, JetStream refuses the first entry and the write starts
//!   over, so conditions (`set_if`, push/pop, replace) are checked against exactly the state
//!   they apply to, without a lock key and without spending revisions on bookkeeping. While a
//!   multi-entry write is under way the head's `Strato-Commit` is ahead of its sequence; other
//!   writers (and readers wanting a consistent view) wait for it to finish. A writer that
//!   stalls half-way for [`JetStreamOptions::stalled_write_timeout`] (it crashed) is taken
//!   over: the next writer fills the rest of its revisions with markers on an internal key,
//!   and the stalled writer's remaining entries are then refused (fencing). Its finished part
//!   stays: JetStream on nats-server 2.9 has no multi-message transactions.
//! * **Reads.** `get` and `list` read the head, read the entries, and re-read the head; if a
//!   write landed meanwhile they read again, so a document is never seen half-written.
//! * **Watches.** A watch reads the whole stream in order from the requested revision (an
//!   ordered consumer), skips entries outside its prefix, and follows live. JetStream keeps
//!   the last [`JetStreamOptions::history`] entries per key; an older entry dropped from the
//!   middle of the stream leaves a hole in the sequence, which the watch notices and reports
//!   as [`KvError::Compacted`]. After a lost connection or a server restart the watch
//!   resubscribes from the last sequence it saw, so it neither misses nor repeats a change.
//!
//! Only write to the bucket through this store: a plain `nats kv put` bypasses the
//! expected-sequence protocol.

mod keys;
mod nats;
mod watch;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, message::PublishMessage};
use async_trait::async_trait;
use serde_json::Value;

use self::keys::Subjects;
use self::nats::{Entry, PublishFailure, COMMIT_HEADER};
use crate::{document, path, Condition, ConfigStore, KvError, Result, Versioned, WatchStream};

/// How long to wait between looks at a head that is in the middle of a write.
const BUSY_POLL: Duration = Duration::from_millis(5);

/// Tuning for [`JetStreamStore`]. The bucket settings apply when the store creates the bucket.
#[derive(Clone, Debug)]
pub struct JetStreamOptions {
    /// Entries kept per key (1 to 64). Older ones are dropped, and a watch from a revision
    /// before a dropped entry gets [`KvError::Compacted`].
    pub history: i64,
    /// Largest bucket size in bytes (-1: unlimited). A full bucket refuses writes.
    pub max_bytes: i64,
    /// Copies of the bucket in a NATS cluster (1 for a single server, 3 for a cluster of three).
    pub replicas: usize,
    /// Keep the bucket in memory instead of on disk (tests).
    pub memory: bool,
    /// How long a write spanning several entries may stall half-done before other writers
    /// take over (its writer is presumed dead).
    pub stalled_write_timeout: Duration,
    /// How long one NATS request or publish waits for its answer before it is resent; short,
    /// because a request sent just before a reconnect is lost and only its timeout ends it.
    pub request_timeout: Duration,
    /// How long an operation keeps retrying while NATS is unreachable before it fails.
    pub unavailable_timeout: Duration,
    /// A PEM file of CA certificates: connect over TLS verified against them.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            history: 64,
            max_bytes: -1,
            replicas: 1,
            memory: false,
            stalled_write_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            unavailable_timeout: Duration::from_secs(30),
            ca_file: None,
        }
    }
}

/// A [`ConfigStore`] in a NATS JetStream KV bucket. Cheap to clone; clones share the
/// connection.
#[derive(Clone)]
pub struct JetStreamStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    context: jetstream::Context,
    stream: jetstream::stream::Stream,
    subjects: Subjects,
    bucket: String,
    options: JetStreamOptions,
}

/// The stream's last entry: its sequence, and the revision of the write it belongs to (ahead
/// of the sequence while that write is still being published).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    sequence: u64,
    commit: u64,
}

impl Head {
    fn mid_write(&self) -> bool {
        self.commit > self.sequence
    }
}

/// One entry a write publishes.
#[derive(Clone, Debug)]
enum Op {
    Put(String, Value),
    Delete(String),
}

impl Op {
    fn path(&self) -> &str {
        match self {
            Op::Put(path, _) | Op::Delete(path) => path,
        }
    }
}

/// A write operation, planned afresh on every attempt.
enum Write {
    Set(Value, Option<Condition>),
    Delete,
    Push(Value),
    Pop,
}

/// What an attempt decided: the entries to publish, and what the operation returns.
struct Plan {
    ops: Vec<Op>,
    popped: Option<Value>,
}

/// The outcome of a write: its revision (`None` if it changed nothing) and a popped value.
struct Written {
    revision: Option<u64>,
    popped: Option<Value>,
}

impl JetStreamStore {
    /// Connects to NATS at `nats_url` and opens (creating if needed) the KV bucket `bucket`.
    pub async fn connect(nats_url: &str, bucket: &str, options: JetStreamOptions) -> Result<Self> {
        let (credentials, servers) = strato_core::names::nats_servers(nats_url);
        let mut connect = async_nats::ConnectOptions::new().name("strato-kv");
        if let Some((user, password)) = credentials {
            connect = connect.user_and_password(user, password);
        }
        if let Some(ca) = &options.ca_file {
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = connect.connect(servers).await.map_err(|e| KvError::Open {
            path: strato_core::names::without_password(nats_url),
            message: format!("cannot connect to NATS: {e}"),
        })?;
        Self::with_client(client, bucket, options).await
    }

    /// Opens (creating if needed) the KV bucket `bucket` over an existing connection (e.g.
    /// one with the node's TLS credentials).
    pub async fn with_client(
        client: async_nats::Client,
        bucket: &str,
        options: JetStreamOptions,
    ) -> Result<Self> {
        let mut context = jetstream::new(client);
        context.set_timeout(options.request_timeout);
        let open_error = |message: String| KvError::Open {
            path: format!("NATS JetStream bucket '{bucket}'"),
            message,
        };
        if bucket.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            return Err(open_error(
                "a bucket name is made of letters, digits, '_' and '-'".to_string(),
            ));
        }
        // The bucket's stream, made as `nats kv add` makes it. (async-nats' own
        // `create_key_value` first asks for account info in a shape nats-server 2.9 lacks.)
        let stream = match context.get_stream(stream_name(bucket)).await {
            Ok(mut stream) => {
                // A bucket made when the cluster had fewer servers gets its copies now.
                let config = stream.cached_info().config.clone();
                if config.num_replicas < options.replicas {
                    let wanted = stream::Config {
                        num_replicas: options.replicas,
                        ..config
                    };
                    match context.update_stream(&wanted).await {
                        Ok(_) => {
                            tracing::info!(bucket, replicas = options.replicas, "config store bucket now kept on more servers");
                            let _ = stream.info().await;
                        }
                        Err(e) => tracing::warn!(bucket, error = %e, "cannot raise the config store's replicas; it keeps its copies"),
                    }
                }
                stream
            }
            Err(get_error) => context
                .create_stream(bucket_stream_config(bucket, &options))
                .await
                .map_err(|e| {
                    open_error(format!(
                        "it does not exist ({get_error}) and cannot be created: {e}; check that nats-server runs with JetStream (--jetstream)"
                    ))
                })?,
        };
        Ok(JetStreamStore {
            inner: Arc::new(Inner {
                context,
                stream,
                subjects: Subjects::new(bucket),
                bucket: bucket.to_string(),
                options,
            }),
        })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }
}

fn stream_name(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The stream of a KV bucket, with the settings `nats kv add` gives it.
fn bucket_stream_config(bucket: &str, options: &JetStreamOptions) -> stream::Config {
    stream::Config {
        name: stream_name(bucket),
        description: Some("Strato config store".to_string()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: options.history.clamp(1, 64),
        max_bytes: options.max_bytes,
        storage: if options.memory {
            StorageType::Memory
        } else {
            StorageType::File
        },
        num_replicas: options.replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        ..Default::default()
    }
}

impl Inner {
    async fn read_head(&self) -> Result<Head> {
        let sequence = self.last_sequence().await?;
        if sequence == 0 {
            return Ok(Head {
                sequence,
                commit: 0,
            });
        }
        let headers = self.headers_at(sequence).await?;
        Ok(Head {
            sequence,
            commit: nats::commit_of(headers.as_ref(), sequence),
        })
    }

    /// The head once no write is half-done, taking over a write that stalled.
    async fn settled_head(&self) -> Result<Head> {
        let mut stalled_since: Option<(u64, Instant)> = None;
        loop {
            let head = self.read_head().await?;
            if !head.mid_write() {
                return Ok(head);
            }
            match stalled_since {
                Some((sequence, since)) if sequence == head.sequence => {
                    if since.elapsed() >= self.options.stalled_write_timeout {
                        self.complete_abandoned(head).await?;
                        stalled_since = None;
                        continue;
                    }
                }
                _ => stalled_since = Some((head.sequence, Instant::now())),
            }
            tokio::time::sleep(BUSY_POLL).await;
        }
    }

    /// Fills the revisions a stalled write reserved with markers on an internal key, so
    /// revisions stay in order and its writer's remaining entries are refused.
    async fn complete_abandoned(&self, head: Head) -> Result<()> {
        tracing::warn!(
            bucket = %self.bucket,
            sequence = head.sequence,
            commit = head.commit,
            "a config store write stalled half-done; taking over (its finished part stays)"
        );
        let subject = self.subjects.of_key(keys::PAD_KEY);
        for expected in head.sequence..head.commit {
            let message = PublishMessage::build()
                .header("KV-Operation", "DEL")
                .header(COMMIT_HEADER, head.commit.to_string().as_str());
            match self.publish(&subject, message, expected).await {
                Ok(_) => {}
                // Someone else is completing it, or it finished after all.
                Err(PublishFailure::Raced) => return Ok(()),
                Err(PublishFailure::Failed(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// Runs `read` until it sees no write land while it reads.
    async fn consistent<T, F, Fut>(&self, read: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        loop {
            let head = self.settled_head().await?;
            let value = read().await?;
            if self.last_sequence().await? == head.sequence {
                return Ok(value);
            }
        }
    }

    /// The revision of the leaf or document at `at`, `None` if nothing is there.
    async fn revision_at(&self, at: &str) -> Result<Option<u64>> {
        if let Some(leaf) = self.live_leaf(at).await? {
            return Ok(Some(leaf.revision));
        }
        Ok(document_revision(&self.entries_below(at).await?))
    }

    async fn live_leaf(&self, at: &str) -> Result<Option<Entry>> {
        Ok(self.entry_at(at).await?.filter(|e| e.value.is_some()))
    }

    async fn read_get(&self, at: &str) -> Result<Option<Versioned>> {
        if let Some(leaf) = self.live_leaf(at).await? {
            return Ok(leaf.value.map(|value| Versioned {
                value,
                revision: leaf.revision,
            }));
        }
        let below = self.entries_below(at).await?;
        let Some(revision) = document_revision(&below) else {
            return Ok(None);
        };
        let leaves = below.into_iter().filter_map(|e| Some((e.path, e.value?)));
        Ok(Some(Versioned {
            value: document::assemble(at, leaves),
            revision,
        }))
    }

    async fn read_list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        if !prefix.is_empty() {
            if let Some(leaf) = self.live_leaf(prefix).await? {
                return Ok(live(vec![leaf]));
            }
        }
        let mut listed = live(self.entries_below(prefix).await?);
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(listed)
    }

    /// Entries replacing everything at and below `at`, and any leaf above it, with `value`.
    async fn plan_replace(&self, at: &str, value: Value) -> Result<Vec<Op>> {
        let mut deletes = BTreeSet::new();
        for ancestor in path::ancestors(at) {
            if self.live_leaf(ancestor).await?.is_some() {
                deletes.insert(ancestor.to_string());
            }
        }
        if self.live_leaf(at).await?.is_some() {
            deletes.insert(at.to_string());
        }
        for entry in self.entries_below(at).await? {
            if entry.value.is_some() {
                deletes.insert(entry.path);
            }
        }
        let exploded = document::explode(at, value);
        for (leaf_path, _) in &exploded.leaves {
            deletes.remove(leaf_path);
        }
        let mut ops: Vec<Op> = deletes.into_iter().map(Op::Delete).collect();
        ops.extend(
            exploded
                .leaves
                .into_iter()
                .map(|(leaf_path, leaf_value)| Op::Put(leaf_path, leaf_value)),
        );
        Ok(ops)
    }

    /// The entries deleting the leaf or document at `at` (none if nothing is there).
    async fn plan_delete(&self, at: &str) -> Result<Vec<Op>> {
        if self.live_leaf(at).await?.is_some() {
            return Ok(vec![Op::Delete(at.to_string())]);
        }
        let mut doomed: Vec<String> = self
            .entries_below(at)
            .await?
            .into_iter()
            .filter(|e| e.value.is_some())
            .map(|e| e.path)
            .collect();
        doomed.sort();
        Ok(doomed.into_iter().map(Op::Delete).collect())
    }

    /// The list stored at `at`: `None` when absent, an error when something else is there.
    async fn current_list(&self, at: &str) -> Result<Option<Vec<Value>>> {
        match self.live_leaf(at).await?.and_then(|e| e.value) {
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(KvError::NotAList {
                path: at.to_string(),
                found: document::kind(&other),
            }),
            None if document_revision(&self.entries_below(at).await?).is_some() => {
                Err(KvError::NotAList {
                    path: at.to_string(),
                    found: "a document (an object)",
                })
            }
            None => Ok(None),
        }
    }

    async fn plan(&self, at: &str, write: &Write) -> Result<Plan> {
        let ops = match write {
            Write::Set(value, condition) => {
                if let Some(condition) = condition {
                    let actual = self.revision_at(at).await?;
                    let holds = match condition {
                        Condition::Revision(expected) => actual == Some(*expected),
                        Condition::Absent => actual.is_none(),
                    };
                    if !holds {
                        return Err(KvError::Conflict {
                            path: at.to_string(),
                            expected: *condition,
                            actual,
                        });
                    }
                }
                self.plan_replace(at, value.clone()).await?
            }
            Write::Delete => self.plan_delete(at).await?,
            Write::Push(value) => {
                let mut items = self.current_list(at).await?.unwrap_or_default();
                items.push(value.clone());
                self.plan_replace(at, Value::Array(items)).await?
            }
            Write::Pop => {
                let Some(mut items) = self.current_list(at).await? else {
                    return Ok(Plan {
                        ops: Vec::new(),
                        popped: None,
                    });
                };
                let popped = items.pop();
                let ops = match popped {
                    Some(_) => self.plan_replace(at, Value::Array(items)).await?,
                    None => Vec::new(),
                };
                return Ok(Plan { ops, popped });
            }
        };
        Ok(Plan { ops, popped: None })
    }

    /// Plans and publishes `write` until an attempt lands with no other write in between.
    async fn write(&self, at: &str, write: Write) -> Result<Written> {
        loop {
            let head = self.settled_head().await?;
            let planned = self.plan(at, &write).await;
            let plan = match planned {
                Ok(plan) if !plan.ops.is_empty() => plan,
                // Nothing to write, or a refusal: valid only if the reads saw a still state.
                outcome => {
                    if self.last_sequence().await? != head.sequence {
                        continue;
                    }
                    let plan = outcome?;
                    return Ok(Written {
                        revision: None,
                        popped: plan.popped,
                    });
                }
            };
            if let Some(revision) = self.publish_write(head, &plan.ops).await? {
                return Ok(Written {
                    revision: Some(revision),
                    popped: plan.popped,
                });
            }
        }
    }

    /// Publishes a write's entries right after `head`; `None` if another write came first.
    async fn publish_write(&self, head: Head, ops: &[Op]) -> Result<Option<u64>> {
        let count = ops.len() as u64;
        let commit = head.sequence + count;
        let write_id = uuid::Uuid::new_v4();
        for (index, op) in (0u64..).zip(ops) {
            let expected = head.sequence + index;
            let mut message = PublishMessage::build()
                .message_id(format!("{write_id}.{index}"))
                .expected_last_sequence(expected);
            if count > 1 {
                message = message.header(COMMIT_HEADER, commit.to_string().as_str());
            }
            message = match op {
                Op::Put(_, value) => message.payload(encode(value)?.into()),
                Op::Delete(_) => message.header("KV-Operation", "DEL"),
            };
            let subject = self.subjects.of_path(op.path());
            match self.publish(&subject, message, expected).await {
                Ok(sequence) if sequence == expected + 1 => {}
                Ok(sequence) => {
                    return Err(KvError::Storage(format!(
                        "bucket '{}' stored an entry at sequence {sequence}, expected {}; is something else writing to it?",
                        self.bucket,
                        expected + 1
                    )))
                }
                Err(PublishFailure::Raced) if index == 0 => return Ok(None),
                Err(PublishFailure::Raced) => {
                    return Err(KvError::Storage(format!(
                        "the write to '{}' was interrupted after {index} of {count} entries: it stalled and another writer took over; re-read and retry",
                        ops[0].path()
                    )))
                }
                Err(PublishFailure::Failed(e)) => return Err(e),
            }
        }
        Ok(Some(commit))
    }
}

/// A document's revision: the largest among the latest entries below it (delete markers
/// included), if any of them is a value.
fn document_revision(below: &[Entry]) -> Option<u64> {
    if below.iter().any(|e| e.value.is_some()) {
        below.iter().map(|e| e.revision).max()
    } else {
        None
    }
}

fn live(entries: Vec<Entry>) -> Vec<(String, Versioned)> {
    entries
        .into_iter()
        .filter_map(|e| {
            let value = e.value?;
            Some((
                e.path,
                Versioned {
                    value,
                    revision: e.revision,
                },
            ))
        })
        .collect()
}

fn encode(value: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| KvError::Storage(format!("cannot encode a value: {e}")))
}

fn written_revision(written: Written) -> Result<u64> {
    written
        .revision
        .ok_or_else(|| KvError::Storage("a write changed nothing".to_string()))
}

#[async_trait]
impl ConfigStore for JetStreamStore {
    async fn get(&self, at: &str) -> Result<Option<Versioned>> {
        path::validate(at)?;
        self.inner.consistent(|| self.inner.read_get(at)).await
    }

    async fn set(&self, at: &str, value: Value) -> Result<u64> {
        path::validate(at)?;
        written_revision(self.inner.write(at, Write::Set(value, None)).await?)
    }

    async fn set_if(&self, at: &str, value: Value, condition: Condition) -> Result<u64> {
        path::validate(at)?;
        written_revision(
            self.inner
                .write(at, Write::Set(value, Some(condition)))
                .await?,
        )
    }

    async fn del(&self, at: &str) -> Result<bool> {
        path::validate(at)?;
        Ok(self
            .inner
            .write(at, Write::Delete)
            .await?
            .revision
            .is_some())
    }

    async fn push(&self, at: &str, value: Value) -> Result<u64> {
        path::validate(at)?;
        written_revision(self.inner.write(at, Write::Push(value)).await?)
    }

    async fn pop(&self, at: &str) -> Result<Option<Value>> {
        path::validate(at)?;
        Ok(self.inner.write(at, Write::Pop).await?.popped)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        path::validate_prefix(prefix)?;
        self.inner.consistent(|| self.inner.read_list(prefix)).await
    }

    async fn current_revision(&self) -> Result<u64> {
        Ok(self.inner.settled_head().await?.sequence)
    }

    async fn watch(&self, prefix: &str, from_revision: Option<u64>) -> Result<WatchStream> {
        path::validate_prefix(prefix)?;
        watch::start(self.inner.clone(), prefix, from_revision).await
    }
}
