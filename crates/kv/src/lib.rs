//! The config store seam.
//!
//! Stackato kept small, watched, cluster-wide configuration in Doozer (later Redis); Strato
//! keeps it behind [`ConfigStore`], shared as `Arc<dyn ConfigStore>`. Values are JSON and live
//! at slash-separated paths `component/key/sub-key` (e.g. `dea_ng/resources/memory_max_percent`,
//! `node/<id>/roles/dea`); see [`path`] for the rules.
//!
//! # Data model
//!
//! * **Leaves and documents.** A store holds *leaves*: one JSON value per path, where no leaf
//!   path is a prefix of another. Setting a non-empty JSON object whose keys are all valid
//!   path segments *explodes* it into one leaf per nested non-object value, so
//!   `set("dea_ng", {"resources": {"memory_max_percent": 80}})` stores the leaf
//!   `dea_ng/resources/memory_max_percent = 80`. Reading a path that has leaves below it
//!   assembles them back into a JSON object (a *document*), so `get("dea_ng")` returns
//!   `{"resources":{"memory_max_percent":80}}` — what `kato config get COMPONENT` shows.
//!   Arrays, scalars, empty objects and objects with a key that is not a valid segment
//!   (e.g. `"*.example.com"`) are stored whole as one leaf. See [`document`].
//! * **Set replaces.** `set(p, v)` replaces everything at and below `p`, and a leaf at an
//!   ancestor of `p` (setting `a/b` when `a` is the scalar `1` turns `a` into a document);
//!   `kato config set --force` semantics (refusing type changes) belong to the caller.
//! * **Revisions.** The store has one revision counter (a `u64`, like etcd's) that every
//!   successful write increases. Every leaf carries the revision of the write that last set
//!   it; a document carries the revision of the last write anywhere inside it, deletes
//!   included. Writes that change nothing (deleting a missing path, popping an empty list, a
//!   failed condition) do not consume a revision.
//! * **Conditional writes.** [`ConfigStore::set_if`] with [`Condition::Revision`] is a
//!   compare-and-set against the path's current revision (leaf or document);
//!   [`Condition::Absent`] creates only if nothing is stored at the path. A failed condition
//!   is [`KvError::Conflict`].
//! * **Lists.** [`ConfigStore::push`] appends to a JSON array leaf (creating it);
//!   [`ConfigStore::pop`] removes and returns the last element.
//! * **Watches.** [`ConfigStore::watch`] streams one [`Change`] per leaf set or deleted under
//!   a prefix, in revision order. Started from a revision, it first replays the persisted
//!   change log and then continues live without gaps or duplicates; the log is bounded and a
//!   revision older than it is [`KvError::Compacted`]. One write may produce several changes
//!   (e.g. deleting a document removes each of its leaves); a backend may give them one
//!   revision (redb) or consecutive ones, but revisions never decrease along a stream.
//!
//! Backends: [`RedbStore`] (a local redb file, the micro cloud) and `JetStreamStore` (a NATS
//! JetStream key-value bucket shared by a cluster; cargo feature `jetstream`, on by default).
//! Both pass the [`conformance`] suite (cargo feature `conformance`).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::Stream;
use serde_json::Value;

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod document;
#[cfg(feature = "jetstream")]
mod jetstream;
pub mod path;
mod redb_store;

#[cfg(feature = "jetstream")]
pub use jetstream::{JetStreamOptions, JetStreamStore};
pub use redb_store::{RedbOptions, RedbStore};

/// A value with the revision of the write that last changed it.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    pub value: Value,
    pub revision: u64,
}

/// One leaf changed: set to `value`, or deleted when `value` is `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub path: String,
    pub value: Option<Value>,
    pub revision: u64,
}

/// What must hold for [`ConfigStore::set_if`] to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The path's current revision (leaf or document) is exactly this one.
    Revision(u64),
    /// Nothing is stored at the path (create if absent).
    Absent,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Revision(revision) => write!(f, "revision {revision}"),
            Condition::Absent => f.write_str("no value"),
        }
    }
}

/// What can go wrong in the config store.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("invalid config path '{path}': {reason}; paths look like component/key/sub-key, each segment made of letters, digits, '_', '.' or '-'")]
    InvalidPath { path: String, reason: String },
    #[error("conflict on '{path}': expected {expected}, but it has {}; re-read it and retry", describe_revision(.actual))]
    Conflict {
        path: String,
        expected: Condition,
        /// The path's revision when the write was tried; `None` when absent.
        actual: Option<u64>,
    },
    #[error("'{path}' holds {found}, not a list; set it to a list (e.g. []) before push or pop")]
    NotAList { path: String, found: &'static str },
    #[error("cannot watch from revision {requested}: the change log no longer holds revision {compacted_through} and older; re-read with get/list and watch from current_revision()")]
    Compacted {
        requested: u64,
        compacted_through: u64,
    },
    #[error("cannot open the config store at {path}: {message}")]
    Open { path: String, message: String },
    #[error("config store storage error: {0}")]
    Storage(String),
    #[error("config store data at '{path}' is corrupt: {message}")]
    Corrupt { path: String, message: String },
}

fn describe_revision(revision: &Option<u64>) -> String {
    match revision {
        Some(revision) => format!("revision {revision}"),
        None => "no value".to_string(),
    }
}

/// Result alias for config store operations.
pub type Result<T, E = KvError> = std::result::Result<T, E>;

/// A live watch: changes under a prefix in revision order, until dropped or the store closes.
///
/// An `Err` item (e.g. [`KvError::Compacted`] after a watcher fell too far behind) ends the
/// stream; re-read the state and start a new watch.
pub struct WatchStream {
    inner: Pin<Box<dyn Stream<Item = Result<Change>> + Send>>,
}

impl WatchStream {
    /// Wraps a backend's stream of changes.
    pub fn new(inner: Pin<Box<dyn Stream<Item = Result<Change>> + Send>>) -> Self {
        WatchStream { inner }
    }

    /// The next change, `Some(Err(_))` if the watch broke, or `None` once it has ended.
    pub async fn next(&mut self) -> Option<Result<Change>> {
        futures::StreamExt::next(&mut self.inner).await
    }
}

impl Stream for WatchStream {
    type Item = Result<Change>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// The config store: JSON at paths, with revisions, conditional writes, lists and watches.
///
/// Paths are validated by every operation ([`KvError::InvalidPath`]); `list` and `watch`
/// also accept the empty prefix, meaning the whole store.
#[async_trait]
pub trait ConfigStore: Send + Sync {
    /// The leaf at `path`, or the document assembled from the leaves below it, or `None`.
    async fn get(&self, path: &str) -> Result<Option<Versioned>>;

    /// Replaces everything at and below `path` with `value`; returns the new revision.
    async fn set(&self, path: &str, value: Value) -> Result<u64>;

    /// Like [`ConfigStore::set`], but only if `condition` holds ([`KvError::Conflict`] if not).
    async fn set_if(&self, path: &str, value: Value, condition: Condition) -> Result<u64>;

    /// Deletes the leaf or whole document at `path`; `false` if nothing was there.
    async fn del(&self, path: &str) -> Result<bool>;

    /// Appends `value` to the list at `path`, creating `[value]` if absent; returns the new revision.
    async fn push(&self, path: &str, value: Value) -> Result<u64>;

    /// Removes and returns the last element of the list at `path`; `None` if empty or absent.
    async fn pop(&self, path: &str) -> Result<Option<Value>>;

    /// Every leaf at or below `prefix`, sorted by path.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>>;

    /// The revision of the latest write (0 for an empty, never-written store).
    async fn current_revision(&self) -> Result<u64>;

    /// Changes to leaves at or below `prefix`: those after `from_revision` (replayed from
    /// the change log, then live), or with `None` only those made from now on.
    async fn watch(&self, prefix: &str, from_revision: Option<u64>) -> Result<WatchStream>;
}
