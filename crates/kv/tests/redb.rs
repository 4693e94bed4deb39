//! Behaviour specific to [`RedbStore`]: the bounded change log, slow watchers catching up
//! from it, the file lock, watches ending with the store, and broadcast order under
//! concurrent writers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use strato_kv::conformance::next_change;
use strato_kv::{ConfigStore, KvError, RedbOptions, RedbStore};

fn open(dir: &tempfile::TempDir, options: RedbOptions) -> RedbStore {
    RedbStore::open_with(dir.path().join("config.redb"), options).expect("open the store")
}

#[tokio::test]
async fn watch_older_than_the_change_log_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        &dir,
        RedbOptions {
            change_log_len: 5,
            ..RedbOptions::default()
        },
    );
    let mut revisions = Vec::new();
    for i in 0..10 {
        revisions.push(store.set("c/k", json!(i)).await.unwrap());
    }
    match store.watch("c", Some(revisions[0])).await {
        Err(KvError::Compacted {
            requested,
            compacted_through,
        }) => {
            assert_eq!(requested, revisions[0]);
            assert_eq!(compacted_through, revisions[4], "five changes are kept");
            let message = KvError::Compacted {
                requested,
                compacted_through,
            }
            .to_string();
            assert!(message.contains("current_revision"), "{message}");
        }
        Err(other) => panic!("expected Compacted, got {other}"),
        Ok(_) => panic!("expected Compacted, got a watch"),
    }
    let mut watch = store
        .watch("c", Some(revisions[4]))
        .await
        .expect("oldest kept");
    for (i, revision) in revisions.iter().enumerate().skip(5) {
        let change = next_change(&mut watch).await;
        assert_eq!((change.revision, change.value), (*revision, Some(json!(i))));
    }
}

#[tokio::test]
async fn the_latest_write_stays_in_the_log_even_when_larger_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        &dir,
        RedbOptions {
            change_log_len: 3,
            ..RedbOptions::default()
        },
    );
    let before = store.set("big/seed", json!(0)).await.unwrap();
    let doc = json!({"a": 1, "b": 2, "c": 3, "d": 4, "e": {"f": 5}});
    store.set("big/doc", doc).await.unwrap();
    let mut watch = store.watch("big/doc", Some(before)).await.unwrap();
    let mut paths = Vec::new();
    for _ in 0..5 {
        paths.push(next_change(&mut watch).await.path);
    }
    assert_eq!(
        paths,
        [
            "big/doc/a",
            "big/doc/b",
            "big/doc/c",
            "big/doc/d",
            "big/doc/e/f"
        ]
    );
}

#[tokio::test]
async fn a_watcher_slower_than_the_broadcast_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        &dir,
        RedbOptions {
            watch_buffer: 2,
            ..RedbOptions::default()
        },
    );
    let mut watch = store.watch("lag", None).await.unwrap();
    let mut revisions = Vec::new();
    for i in 0..50 {
        revisions.push(store.set("lag/k", json!(i)).await.unwrap());
    }
    for (i, revision) in revisions.iter().enumerate() {
        let change = next_change(&mut watch).await;
        assert_eq!((change.revision, change.value), (*revision, Some(json!(i))));
    }
}

#[tokio::test]
async fn a_second_open_of_the_same_file_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(&dir, RedbOptions::default());
    match RedbStore::open(dir.path().join("config.redb")) {
        Err(KvError::Open { path, message }) => {
            assert!(path.ends_with("config.redb"));
            assert!(message.contains("already open"), "{message}");
        }
        Err(other) => panic!("expected Open, got {other}"),
        Ok(_) => panic!("a second open succeeded"),
    }
    first.set("lock/k", json!(1)).await.unwrap();
    drop(first);
    let second = open(&dir, RedbOptions::default());
    assert_eq!(second.get("lock/k").await.unwrap().unwrap().value, json!(1));
}

#[tokio::test]
async fn dropping_the_store_ends_its_watches_and_releases_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, RedbOptions::default());
    let mut watch = store.watch("", None).await.unwrap();
    store.set("end/k", json!(1)).await.unwrap();
    assert_eq!(next_change(&mut watch).await.path, "end/k");
    drop(store);
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.next()).await;
    assert!(matches!(ended, Ok(None)), "watch should end, got {ended:?}");
    let reopened = open(&dir, RedbOptions::default());
    assert_eq!(reopened.current_revision().await.unwrap(), 1);
}

#[tokio::test]
async fn open_creates_missing_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/config.redb");
    let store = RedbStore::open(&path).unwrap();
    store.set("p/k", json!(1)).await.unwrap();
    assert!(path.exists());
}

#[tokio::test]
async fn watching_from_a_future_revision_starts_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, RedbOptions::default());
    let now = store.current_revision().await.unwrap();
    let mut watch = store.watch("fut", Some(now + 3)).await.unwrap();
    for i in 1..=5 {
        store.set("fut/k", json!(i)).await.unwrap();
    }
    let change = next_change(&mut watch).await;
    assert_eq!((change.revision, change.value), (now + 4, Some(json!(4))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_are_watched_in_revision_order() {
    const WRITERS: usize = 4;
    const EACH: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ConfigStore> = Arc::new(open(&dir, RedbOptions::default()));
    let mut live = store.watch("cw", None).await.unwrap();
    let start = store.current_revision().await.unwrap();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                for i in 0..EACH {
                    let path = format!("cw/w{writer}/k{i}");
                    revisions.push(store.set(&path, json!(i)).await.unwrap());
                }
                revisions
            })
        })
        .collect();
    let mut written = BTreeSet::new();
    for task in tasks {
        written.extend(task.await.unwrap());
    }
    assert_eq!(
        written.len(),
        WRITERS * EACH,
        "every write has its own revision"
    );
    let mut replay = store.watch("cw", Some(start)).await.unwrap();
    for watch in [&mut live, &mut replay] {
        let mut seen = Vec::new();
        for _ in 0..WRITERS * EACH {
            seen.push(next_change(watch).await.revision);
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
        assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), written);
    }
}
