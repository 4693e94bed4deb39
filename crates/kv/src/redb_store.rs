//! The config store in one local redb file, for the micro cloud and single nodes.
//!
//! Layout (four tables): `leaves` maps a leaf path to (revision, JSON bytes); `dirs` maps
//! every interior path (a document) to the revision of the last write inside it, so a
//! document's revision also moves when a part of it is deleted; `meta` holds the store
//! revision and how far the change log was compacted; `changes` is the change log, keyed by
//! (revision, sequence within the write), holding (path, JSON bytes or none for a delete).
//!
//! Every write is one durable redb write transaction that also bumps the revision and
//! appends to the change log; after the commit the write's changes are broadcast to live
//! watchers. A mutex held across transaction, commit and broadcast keeps broadcasts in
//! commit order. redb is synchronous, so every operation runs on tokio's blocking pool
//! (`spawn_blocking`) and never stalls the async workers; an operation whose caller stops
//! waiting still completes.
//!
//! Watchers subscribe to the broadcast *before* reading the change log, then skip broadcast
//! commits the log already gave them, so nothing falls between replay and live delivery. A
//! watcher that lags behind the broadcast buffer re-reads the missed part from the log.

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use redb::{
    Database, DatabaseError, ReadTransaction, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};
use serde_json::Value;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::{
    document, path, Change, Condition, ConfigStore, KvError, Result, Versioned, WatchStream,
};

const LEAVES: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("leaves");
const DIRS: TableDefinition<&str, u64> = TableDefinition::new("dirs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Change log key: (revision, sequence of the change within its write).
type LogKey = (u64, u32);
/// Change log entry: (leaf path, JSON bytes, or none for a delete).
type LogEntry = (&'static str, Option<&'static [u8]>);
const CHANGES: TableDefinition<LogKey, LogEntry> = TableDefinition::new("changes");

const REVISION: &str = "revision";
const COMPACTED_THROUGH: &str = "compacted_through";

/// Tuning for [`RedbStore`].
#[derive(Clone, Debug)]
pub struct RedbOptions {
    /// How many leaf changes the persisted change log keeps (whole writes are dropped, oldest
    /// first; the latest write is always kept). Watches from older revisions get
    /// [`KvError::Compacted`].
    pub change_log_len: usize,
    /// How many writes the live broadcast buffers per watcher before a slow watcher has to
    /// catch up from the change log.
    pub watch_buffer: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            change_log_len: 10_000,
            watch_buffer: 1024,
        }
    }
}

/// A [`ConfigStore`] in a local redb file. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Serialises write transaction, commit and broadcast, so broadcasts follow commit order.
    write_lock: Mutex<()>,
    commits: broadcast::Sender<Arc<Commit>>,
    options: RedbOptions,
}

/// What one write changed, as broadcast to live watchers.
struct Commit {
    revision: u64,
    changes: Vec<Change>,
}

impl RedbStore {
    /// Opens (creating if needed, with parent directories) the store file at `path`.
    ///
    /// Blocks briefly on file I/O; the file is locked until every clone is dropped.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, RedbOptions::default())
    }

    /// Like [`RedbStore::open`], with explicit [`RedbOptions`].
    pub fn open_with(path: impl AsRef<Path>, options: RedbOptions) -> Result<Self> {
        let path = path.as_ref();
        let open_error = |message: String| KvError::Open {
            path: path.display().to_string(),
            message,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                open_error(format!("cannot create directory {}: {e}", parent.display()))
            })?;
        }
        let db = Database::create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => open_error(
                "it is already open (by another process or another RedbStore in this one); stop that user first".to_string(),
            ),
            other => open_error(other.to_string()),
        })?;
        create_tables(&db)?;
        let (commits, _) = broadcast::channel(options.watch_buffer.max(1));
        let options = RedbOptions {
            change_log_len: options.change_log_len.max(1),
            ..options
        };
        Ok(RedbStore {
            inner: Arc::new(Inner {
                db,
                write_lock: Mutex::new(()),
                commits,
                options,
            }),
        })
    }

    /// Runs `work` against the database on the blocking pool.
    async fn blocking<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        run_blocking(self.inner.clone(), work).await
    }

    /// Runs a write operation in one transaction on the blocking pool.
    async fn write<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer<'_>) -> Result<T> + Send + 'static,
    {
        self.blocking(move |inner| inner.write(op)).await
    }
}

async fn run_blocking<T, F>(inner: Arc<Inner>, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Inner) -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(move || work(&inner))
        .await
        .map_err(|e| KvError::Storage(format!("config store task failed: {e}")))?
}

fn create_tables(db: &Database) -> Result<()> {
    let txn = db.begin_write()?;
    txn.open_table(LEAVES)?;
    txn.open_table(DIRS)?;
    txn.open_table(META)?;
    txn.open_table(CHANGES)?;
    txn.commit()?;
    Ok(())
}

impl Inner {
    /// Applies `op` in one write transaction; commits and broadcasts if it changed anything.
    fn write<T>(&self, op: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<T> {
        let _serial = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self.db.begin_write()?;
        match apply(&txn, op, self.options.change_log_len) {
            Ok((value, Some(commit))) => {
                txn.commit()?;
                // No receivers is fine: nobody is watching.
                let _ = self.commits.send(Arc::new(commit));
                Ok(value)
            }
            Ok((value, None)) => {
                txn.abort()?;
                Ok(value)
            }
            Err(error) => {
                if let Err(abort_error) = txn.abort() {
                    tracing::warn!(%abort_error, "aborting a failed config store write");
                }
                Err(error)
            }
        }
    }
}

/// Runs `op` inside `txn`, then records its changes (revision, change log).
fn apply<T>(
    txn: &WriteTransaction,
    op: impl FnOnce(&mut Writer<'_>) -> Result<T>,
    change_log_len: usize,
) -> Result<(T, Option<Commit>)> {
    let mut meta = txn.open_table(META)?;
    let current = meta.get(REVISION)?.map(|g| g.value()).unwrap_or(0);
    let mut writer = Writer {
        leaves: txn.open_table(LEAVES)?,
        dirs: txn.open_table(DIRS)?,
        revision: current + 1,
        changes: Vec::new(),
    };
    let value = op(&mut writer)?;
    if writer.changes.is_empty() {
        return Ok((value, None));
    }
    let commit = Commit {
        revision: writer.revision,
        changes: writer.changes,
    };
    meta.insert(REVISION, commit.revision)?;
    append_to_log(txn, &mut meta, &commit, change_log_len)?;
    Ok((value, Some(commit)))
}

/// Appends a write's changes to the log and drops the oldest writes beyond `limit` changes.
fn append_to_log(
    txn: &WriteTransaction,
    meta: &mut Table<'_, &'static str, u64>,
    commit: &Commit,
    limit: usize,
) -> Result<()> {
    let mut log = txn.open_table(CHANGES)?;
    for (sequence, change) in commit.changes.iter().enumerate() {
        let sequence = u32::try_from(sequence)
            .map_err(|_| KvError::Storage("one write changed more than 2^32 leaves".into()))?;
        let bytes = change.value.as_ref().map(encode).transpose()?;
        log.insert(
            (commit.revision, sequence),
            (change.path.as_str(), bytes.as_deref()),
        )?;
    }
    let mut compacted_through = None;
    while log.len()? > limit as u64 {
        let oldest = match log.first()? {
            Some((key, _)) => key.value().0,
            None => break,
        };
        if oldest >= commit.revision {
            break;
        }
        while log.first()?.is_some_and(|(key, _)| key.value().0 == oldest) {
            log.pop_first()?;
        }
        compacted_through = Some(oldest);
    }
    if let Some(revision) = compacted_through {
        meta.insert(COMPACTED_THROUGH, revision)?;
    }
    Ok(())
}

/// The tables of one write transaction, and the changes the write makes at `revision`.
struct Writer<'t> {
    leaves: Table<'t, &'static str, (u64, &'static [u8])>,
    dirs: Table<'t, &'static str, u64>,
    revision: u64,
    changes: Vec<Change>,
}

impl Writer<'_> {
    fn leaf(&self, at: &str) -> Result<Option<Value>> {
        match self.leaves.get(at)? {
            Some(guard) => Ok(Some(decode(at, guard.value().1)?)),
            None => Ok(None),
        }
    }

    fn is_document(&self, at: &str) -> Result<bool> {
        Ok(self.dirs.get(at)?.is_some())
    }

    /// The revision of the leaf or document at `at`.
    fn revision_of(&self, at: &str) -> Result<Option<u64>> {
        if let Some(guard) = self.leaves.get(at)? {
            return Ok(Some(guard.value().0));
        }
        Ok(self.dirs.get(at)?.map(|g| g.value()))
    }

    /// The `set` semantics: replaces the subtree at `at` and any leaf above it with `value`.
    fn replace(&mut self, at: &str, value: Value) -> Result<()> {
        let mut removed = BTreeSet::new();
        for ancestor in path::ancestors(at) {
            if self.leaves.remove(ancestor)?.is_some() {
                removed.insert(ancestor.to_string());
            }
        }
        removed.extend(self.remove_subtree(at)?);
        let exploded = document::explode(at, value);
        for (leaf_path, leaf_value) in &exploded.leaves {
            let bytes = encode(leaf_value)?;
            self.leaves
                .insert(leaf_path.as_str(), (self.revision, bytes.as_slice()))?;
            removed.remove(leaf_path);
        }
        for dir in &exploded.dirs {
            self.dirs.insert(dir.as_str(), self.revision)?;
        }
        self.touch_ancestors(at)?;
        self.record_deleted(removed);
        let revision = self.revision;
        self.changes
            .extend(exploded.leaves.into_iter().map(|(path, value)| Change {
                path,
                value: Some(value),
                revision,
            }));
        Ok(())
    }

    /// Deletes the leaf or document at `at`; `false` if nothing was there.
    fn delete(&mut self, at: &str) -> Result<bool> {
        let removed = self.remove_subtree(at)?;
        if removed.is_empty() {
            return Ok(false);
        }
        self.touch_ancestors(at)?;
        self.record_deleted(removed);
        Ok(true)
    }

    /// Removes the leaf at `at`, every leaf below it and their documents; returns the leaves.
    fn remove_subtree(&mut self, at: &str) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        if self.leaves.remove(at)?.is_some() {
            removed.push(at.to_string());
        }
        self.dirs.remove(at)?;
        let (low, high) = path::below_bounds(at);
        let leaves_below = keys_between(&self.leaves, &low, &high)?;
        for leaf in &leaves_below {
            self.leaves.remove(leaf.as_str())?;
        }
        for dir in keys_between(&self.dirs, &low, &high)? {
            self.dirs.remove(dir.as_str())?;
        }
        removed.extend(leaves_below);
        Ok(removed)
    }

    /// After a change at `at`: ancestors that still hold leaves get this revision, the rest go.
    fn touch_ancestors(&mut self, at: &str) -> Result<()> {
        for ancestor in path::ancestors(at) {
            let (low, high) = path::below_bounds(ancestor);
            let occupied = self
                .leaves
                .range::<&str>(low.as_str()..high.as_str())?
                .next()
                .transpose()?
                .is_some();
            if occupied {
                self.dirs.insert(ancestor, self.revision)?;
            } else {
                self.dirs.remove(ancestor)?;
            }
        }
        Ok(())
    }

    fn record_deleted(&mut self, removed: impl IntoIterator<Item = String>) {
        let revision = self.revision;
        self.changes.extend(removed.into_iter().map(|path| Change {
            path,
            value: None,
            revision,
        }));
    }
}

fn keys_between<V: redb::Value + 'static>(
    table: &impl ReadableTable<&'static str, V>,
    low: &str,
    high: &str,
) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    for entry in table.range::<&str>(low..high)? {
        let (key, _) = entry?;
        keys.push(key.value().to_string());
    }
    Ok(keys)
}

fn encode(value: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| KvError::Storage(format!("cannot encode a value: {e}")))
}

fn decode(at: &str, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| KvError::Corrupt {
        path: at.to_string(),
        message: e.to_string(),
    })
}

fn read_revision(txn: &ReadTransaction) -> Result<u64> {
    let meta = txn.open_table(META)?;
    Ok(meta.get(REVISION)?.map(|g| g.value()).unwrap_or(0))
}

fn read_get(txn: &ReadTransaction, at: &str) -> Result<Option<Versioned>> {
    let leaves = txn.open_table(LEAVES)?;
    if let Some(guard) = leaves.get(at)? {
        let (revision, bytes) = guard.value();
        return Ok(Some(Versioned {
            value: decode(at, bytes)?,
            revision,
        }));
    }
    let dirs = txn.open_table(DIRS)?;
    let Some(revision) = dirs.get(at)?.map(|g| g.value()) else {
        return Ok(None);
    };
    let below = read_list(txn, at)?
        .into_iter()
        .map(|(leaf_path, versioned)| (leaf_path, versioned.value));
    Ok(Some(Versioned {
        value: document::assemble(at, below),
        revision,
    }))
}

fn read_list(txn: &ReadTransaction, prefix: &str) -> Result<Vec<(String, Versioned)>> {
    let leaves = txn.open_table(LEAVES)?;
    let entries = if prefix.is_empty() {
        leaves.iter()?
    } else {
        let (low, high) = path::below_bounds(prefix);
        if let Some(guard) = leaves.get(prefix)? {
            let (revision, bytes) = guard.value();
            let value = decode(prefix, bytes)?;
            return Ok(vec![(prefix.to_string(), Versioned { value, revision })]);
        }
        leaves.range::<&str>(low.as_str()..high.as_str())?
    };
    let mut out = Vec::new();
    for entry in entries {
        let (key, value) = entry?;
        let leaf_path = key.value();
        let (revision, bytes) = value.value();
        let value = decode(leaf_path, bytes)?;
        out.push((leaf_path.to_string(), Versioned { value, revision }));
    }
    Ok(out)
}

/// The logged changes within `prefix` after revision `after`.
fn read_log(txn: &ReadTransaction, prefix: &str, after: u64) -> Result<Vec<Change>> {
    let meta = txn.open_table(META)?;
    let compacted_through = meta.get(COMPACTED_THROUGH)?.map(|g| g.value()).unwrap_or(0);
    if after < compacted_through {
        return Err(KvError::Compacted {
            requested: after,
            compacted_through,
        });
    }
    let log = txn.open_table(CHANGES)?;
    let mut out = Vec::new();
    for entry in log.range((after.saturating_add(1), 0u32)..)? {
        let (key, value) = entry?;
        let (revision, _) = key.value();
        let (leaf_path, bytes) = value.value();
        if !path::is_within(leaf_path, prefix) {
            continue;
        }
        let value = bytes.map(|b| decode(leaf_path, b)).transpose()?;
        out.push(Change {
            path: leaf_path.to_string(),
            value,
            revision,
        });
    }
    Ok(out)
}

/// The log after `after` within `prefix`, and the revision the read saw.
fn read_log_and_head(inner: &Inner, prefix: &str, after: u64) -> Result<(Vec<Change>, u64)> {
    let txn = inner.db.begin_read()?;
    let changes = read_log(&txn, prefix, after)?;
    Ok((changes, read_revision(&txn)?.max(after)))
}

#[async_trait]
impl ConfigStore for RedbStore {
    async fn get(&self, at: &str) -> Result<Option<Versioned>> {
        path::validate(at)?;
        let at = at.to_string();
        self.blocking(move |inner| read_get(&inner.db.begin_read()?, &at))
            .await
    }

    async fn set(&self, at: &str, value: Value) -> Result<u64> {
        path::validate(at)?;
        let at = at.to_string();
        self.write(move |w| {
            w.replace(&at, value)?;
            Ok(w.revision)
        })
        .await
    }

    async fn set_if(&self, at: &str, value: Value, condition: Condition) -> Result<u64> {
        path::validate(at)?;
        let at = at.to_string();
        self.write(move |w| {
            let actual = w.revision_of(&at)?;
            let holds = match condition {
                Condition::Revision(expected) => actual == Some(expected),
                Condition::Absent => actual.is_none(),
            };
            if !holds {
                return Err(KvError::Conflict {
                    path: at,
                    expected: condition,
                    actual,
                });
            }
            w.replace(&at, value)?;
            Ok(w.revision)
        })
        .await
    }

    async fn del(&self, at: &str) -> Result<bool> {
        path::validate(at)?;
        let at = at.to_string();
        self.write(move |w| w.delete(&at)).await
    }

    async fn push(&self, at: &str, value: Value) -> Result<u64> {
        path::validate(at)?;
        let at = at.to_string();
        self.write(move |w| {
            let mut items = current_list(w, &at)?.unwrap_or_default();
            items.push(value);
            w.replace(&at, Value::Array(items))?;
            Ok(w.revision)
        })
        .await
    }

    async fn pop(&self, at: &str) -> Result<Option<Value>> {
        path::validate(at)?;
        let at = at.to_string();
        self.write(move |w| {
            let Some(mut items) = current_list(w, &at)? else {
                return Ok(None);
            };
            let last = items.pop();
            if last.is_some() {
                w.replace(&at, Value::Array(items))?;
            }
            Ok(last)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>> {
        path::validate_prefix(prefix)?;
        let prefix = prefix.to_string();
        self.blocking(move |inner| read_list(&inner.db.begin_read()?, &prefix))
            .await
    }

    async fn current_revision(&self) -> Result<u64> {
        self.blocking(|inner| read_revision(&inner.db.begin_read()?))
            .await
    }

    async fn watch(&self, prefix: &str, from_revision: Option<u64>) -> Result<WatchStream> {
        path::validate_prefix(prefix)?;
        // Subscribe before reading, so every commit is either in the read or in the receiver.
        let receiver = self.inner.commits.subscribe();
        let owned_prefix = prefix.to_string();
        let (history, head) = self
            .blocking(move |inner| match from_revision {
                Some(after) => read_log_and_head(inner, &owned_prefix, after),
                None => Ok((Vec::new(), read_revision(&inner.db.begin_read()?)?)),
            })
            .await?;
        let state = WatchState {
            store: Arc::downgrade(&self.inner),
            receiver,
            prefix: prefix.to_string(),
            queued_through: head,
            pending: history.into(),
            ended: false,
        };
        let stream = futures::stream::unfold(state, |mut state| async move {
            let item = state.next_change().await?;
            Some((item, state))
        });
        Ok(WatchStream::new(Box::pin(stream)))
    }
}

/// The list stored at `at`: `None` when absent, an error when something else is there.
fn current_list(w: &Writer<'_>, at: &str) -> Result<Option<Vec<Value>>> {
    match w.leaf(at)? {
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(other) => Err(KvError::NotAList {
            path: at.to_string(),
            found: document::kind(&other),
        }),
        None if w.is_document(at)? => Err(KvError::NotAList {
            path: at.to_string(),
            found: "a document (an object)",
        }),
        None => Ok(None),
    }
}

/// A watcher's position: changes queued for delivery and the last revision queued.
struct WatchState {
    /// Weak, so open watches do not keep the database file locked after the store is dropped.
    store: Weak<Inner>,
    receiver: broadcast::Receiver<Arc<Commit>>,
    prefix: String,
    queued_through: u64,
    pending: VecDeque<Change>,
    ended: bool,
}

impl WatchState {
    async fn next_change(&mut self) -> Option<Result<Change>> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Some(Ok(change));
            }
            if self.ended {
                return None;
            }
            match self.receiver.recv().await {
                Ok(commit) => self.queue(&commit),
                Err(RecvError::Lagged(_)) => {
                    if let Err(error) = self.catch_up().await {
                        self.ended = true;
                        return Some(Err(error));
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    fn queue(&mut self, commit: &Commit) {
        if commit.revision <= self.queued_through {
            return;
        }
        self.queued_through = commit.revision;
        let prefix = &self.prefix;
        self.pending.extend(
            commit
                .changes
                .iter()
                .filter(|c| path::is_within(&c.path, prefix))
                .cloned(),
        );
    }

    /// After missing broadcasts: reads what was missed from the change log.
    async fn catch_up(&mut self) -> Result<()> {
        let Some(inner) = self.store.upgrade() else {
            self.ended = true;
            return Ok(());
        };
        let prefix = self.prefix.clone();
        let after = self.queued_through;
        let (changes, head) =
            run_blocking(inner, move |inner| read_log_and_head(inner, &prefix, after)).await?;
        self.pending.extend(changes);
        self.queued_through = head;
        Ok(())
    }
}

macro_rules! storage_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for KvError {
            fn from(error: $error) -> Self {
                KvError::Storage(error.to_string())
            }
        }
    )*};
}

storage_errors!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
