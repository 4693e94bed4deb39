//! The conformance suite every [`ConfigStore`] backend must pass (cargo feature `conformance`).
//!
//! Each case is a `pub async fn` over `&dyn ConfigStore` that panics on a violation, and uses
//! its own top-level component, so cases can share one store ([`run_all`]) or each get a
//! fresh one. A backend's test file gets one `#[tokio::test]` per case with
//! [`conformance_tests!`](crate::conformance_tests), given an expression that builds a
//! [`Harness`]:
//!
//! ```ignore
//! strato_kv::conformance_tests!(MyHarness::new().await);
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::{Change, Condition, ConfigStore, KvError, Versioned, WatchStream};

/// How long a case waits for a watched change before failing.
pub const WATCH_WAIT: Duration = Duration::from_secs(10);

/// Opens a backend's store; opening again after dropping every handle must reopen the same
/// data (for [`persists_across_reopen`]).
#[async_trait]
pub trait Harness: Send + Sync {
    async fn open(&self) -> Arc<dyn ConfigStore>;
}

/// Generates one `#[tokio::test]` per conformance case for a backend.
///
/// `$harness` is evaluated afresh in each test and must yield a value implementing
/// [`Harness`]; the caller's crate needs `tokio` (with `macros`) as a dependency.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            get_set_del,
            invalid_paths_are_rejected,
            nested_get_assembles_document,
            set_replaces_subtree_and_ancestor_leaf,
            set_if_revision_succeeds_then_conflicts,
            set_if_absent_creates_once,
            document_revision_tracks_deletes,
            push_pop,
            push_pop_on_non_list_fail,
            list_under_prefix,
            watch_from_now,
            late_watcher_replays_every_change,
            watch_filters_by_prefix,
            delete_visible_in_watch,
            revisions_strictly_increase,
            concurrent_cas_increments_lose_nothing
        );
        #[tokio::test]
        async fn persists_across_reopen() {
            let harness = $harness;
            $crate::conformance::persists_across_reopen(&harness).await;
        }
    };
    (@cases $harness:expr; $($case:ident),*) => {$(
        #[tokio::test]
        async fn $case() {
            let harness = $harness;
            let store = $crate::conformance::Harness::open(&harness).await;
            $crate::conformance::$case(&*store).await;
        }
    )*};
}

/// Runs every case that needs only one store, one after another, on `store`.
pub async fn run_all(store: Arc<dyn ConfigStore>) {
    let store = &*store;
    get_set_del(store).await;
    invalid_paths_are_rejected(store).await;
    nested_get_assembles_document(store).await;
    set_replaces_subtree_and_ancestor_leaf(store).await;
    set_if_revision_succeeds_then_conflicts(store).await;
    set_if_absent_creates_once(store).await;
    document_revision_tracks_deletes(store).await;
    push_pop(store).await;
    push_pop_on_non_list_fail(store).await;
    list_under_prefix(store).await;
    watch_from_now(store).await;
    late_watcher_replays_every_change(store).await;
    watch_filters_by_prefix(store).await;
    delete_visible_in_watch(store).await;
    revisions_strictly_increase(store).await;
    concurrent_cas_increments_lose_nothing(store).await;
}

async fn get_value(store: &dyn ConfigStore, path: &str) -> Option<Value> {
    store
        .get(path)
        .await
        .unwrap_or_else(|e| panic!("get {path}: {e}"))
        .map(|v| v.value)
}

async fn set(store: &dyn ConfigStore, path: &str, value: Value) -> u64 {
    store
        .set(path, value)
        .await
        .unwrap_or_else(|e| panic!("set {path}: {e}"))
}

async fn revision(store: &dyn ConfigStore) -> u64 {
    store.current_revision().await.expect("current_revision")
}

/// The next change on `watch`, failing the case if none comes within [`WATCH_WAIT`].
pub async fn next_change(watch: &mut WatchStream) -> Change {
    match tokio::time::timeout(WATCH_WAIT, watch.next()).await {
        Ok(Some(Ok(change))) => change,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended unexpectedly"),
        Err(_) => panic!("no change arrived within {WATCH_WAIT:?}"),
    }
}

/// Reads changes until one for `sentinel` arrives; returns those before it.
async fn changes_until(watch: &mut WatchStream, sentinel: &str) -> Vec<Change> {
    let mut seen = Vec::new();
    loop {
        let change = next_change(watch).await;
        if change.path == sentinel {
            return seen;
        }
        seen.push(change);
    }
}

fn summary(changes: &[Change]) -> Vec<(String, Option<Value>)> {
    changes
        .iter()
        .map(|c| (c.path.clone(), c.value.clone()))
        .collect()
}

fn assert_revisions_non_decreasing(changes: &[Change]) {
    for pair in changes.windows(2) {
        assert!(
            pair[0].revision <= pair[1].revision,
            "watch revisions went backwards: {pair:?}"
        );
    }
}

/// set, get, overwrite, del, and get of a missing path.
pub async fn get_set_del(store: &dyn ConfigStore) {
    assert_eq!(get_value(store, "gsd/missing").await, None);
    let first = set(store, "gsd/answer", json!(42)).await;
    assert_eq!(
        store.get("gsd/answer").await.unwrap(),
        Some(Versioned {
            value: json!(42),
            revision: first
        })
    );
    let second = set(store, "gsd/answer", json!({"nested": "no"})).await;
    assert!(second > first);
    assert_eq!(
        get_value(store, "gsd/answer").await,
        Some(json!({"nested": "no"}))
    );
    set(store, "gsd/null", Value::Null).await;
    assert_eq!(get_value(store, "gsd/null").await, Some(Value::Null));
    assert!(store.del("gsd/answer").await.unwrap());
    assert_eq!(get_value(store, "gsd/answer").await, None);
    assert!(!store.del("gsd/answer").await.unwrap(), "second del");
    assert_eq!(get_value(store, "gsd/null").await, Some(Value::Null));
}

/// Every operation rejects malformed paths with [`KvError::InvalidPath`].
pub async fn invalid_paths_are_rejected(store: &dyn ConfigStore) {
    for bad in ["", "/ip", "ip/", "ip//x", "ip/a b", "ip/*"] {
        let results = [
            store.get(bad).await.err(),
            store.set(bad, json!(1)).await.err(),
            store.del(bad).await.err(),
            store.push(bad, json!(1)).await.err(),
            store.pop(bad).await.err(),
        ];
        for result in results {
            assert!(
                matches!(result, Some(KvError::InvalidPath { .. })),
                "{bad:?} gave {result:?}"
            );
        }
    }
    for bad in ["/ip", "ip//x"] {
        assert!(matches!(
            store.list(bad).await,
            Err(KvError::InvalidPath { .. })
        ));
        assert!(matches!(
            store.watch(bad, None).await,
            Err(KvError::InvalidPath { .. })
        ));
    }
    assert_eq!(get_value(store, "ip").await, None);
}

/// Getting a component returns the document assembled from its keys, and vice versa.
pub async fn nested_get_assembles_document(store: &dyn ConfigStore) {
    set(store, "nga_dea/resources/memory_max_percent", json!(80)).await;
    set(store, "nga_dea/resources/dirs", json!(["/a", "/b"])).await;
    let last = set(store, "nga_dea/enabled", json!(true)).await;
    let doc = store.get("nga_dea").await.unwrap().expect("document");
    assert_eq!(
        doc.value,
        json!({"resources": {"memory_max_percent": 80, "dirs": ["/a", "/b"]}, "enabled": true})
    );
    assert_eq!(
        doc.revision, last,
        "a document has its last write's revision"
    );
    assert_eq!(
        get_value(store, "nga_dea/resources").await,
        Some(json!({"memory_max_percent": 80, "dirs": ["/a", "/b"]}))
    );

    let set_doc = set(
        store,
        "nga_stager",
        json!({"app_memory_multiplier": 2, "limits": {"disk": 2048, "odd": {"*.x": 1}, "empty": {}}}),
    )
    .await;
    assert_eq!(
        store.get("nga_stager/limits/disk").await.unwrap(),
        Some(Versioned {
            value: json!(2048),
            revision: set_doc
        })
    );
    assert_eq!(
        get_value(store, "nga_stager/limits/odd").await,
        Some(json!({"*.x": 1}))
    );
    assert_eq!(
        get_value(store, "nga_stager/limits/empty").await,
        Some(json!({}))
    );
    assert_eq!(
        get_value(store, "nga_stager").await,
        Some(
            json!({"app_memory_multiplier": 2, "limits": {"disk": 2048, "odd": {"*.x": 1}, "empty": {}}})
        )
    );
    assert_eq!(
        get_value(store, "nga").await,
        None,
        "'nga' is not a prefix segment"
    );
    assert!(store.del("nga_stager/limits").await.unwrap());
    assert_eq!(
        get_value(store, "nga_stager").await,
        Some(json!({"app_memory_multiplier": 2}))
    );
}

/// `set` replaces the whole subtree, and a scalar where a document is needed.
pub async fn set_replaces_subtree_and_ancestor_leaf(store: &dyn ConfigStore) {
    set(store, "srs/doc", json!({"a": 1, "b": {"c": 2}})).await;
    set(store, "srs/doc", json!({"b": {"d": 3}})).await;
    assert_eq!(
        get_value(store, "srs/doc").await,
        Some(json!({"b": {"d": 3}}))
    );
    assert_eq!(get_value(store, "srs/doc/a").await, None);
    set(store, "srs/doc", json!("flat")).await;
    assert_eq!(get_value(store, "srs/doc").await, Some(json!("flat")));
    assert_eq!(get_value(store, "srs/doc/b/d").await, None);
    set(store, "srs/doc/inner", json!(5)).await;
    assert_eq!(get_value(store, "srs/doc").await, Some(json!({"inner": 5})));
    let listed: Vec<String> = store
        .list("srs")
        .await
        .unwrap()
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    assert_eq!(listed, vec!["srs/doc/inner"]);
}

/// Compare-and-set on a revision: the current one wins, a stale one is a conflict.
pub async fn set_if_revision_succeeds_then_conflicts(store: &dyn ConfigStore) {
    let first = set(store, "cas/mode", json!("off")).await;
    let second = store
        .set_if("cas/mode", json!("on"), Condition::Revision(first))
        .await
        .expect("CAS with the current revision");
    assert!(second > first);
    let before = revision(store).await;
    match store
        .set_if("cas/mode", json!("stale"), Condition::Revision(first))
        .await
    {
        Err(KvError::Conflict {
            path,
            expected,
            actual,
        }) => {
            assert_eq!(path, "cas/mode");
            assert_eq!(expected, Condition::Revision(first));
            assert_eq!(actual, Some(second));
        }
        other => panic!("stale CAS gave {other:?}"),
    }
    assert_eq!(revision(store).await, before, "a conflict writes nothing");
    assert_eq!(get_value(store, "cas/mode").await, Some(json!("on")));
    match store
        .set_if("cas/missing", json!(1), Condition::Revision(second))
        .await
    {
        Err(KvError::Conflict { actual: None, .. }) => {}
        other => panic!("CAS on a missing key gave {other:?}"),
    }
    let doc_revision = store
        .get("cas")
        .await
        .unwrap()
        .expect("cas document")
        .revision;
    store
        .set_if(
            "cas",
            json!({"mode": "doc"}),
            Condition::Revision(doc_revision),
        )
        .await
        .expect("CAS on a document's revision");
    assert_eq!(get_value(store, "cas").await, Some(json!({"mode": "doc"})));
}

/// Create-if-absent succeeds once, then conflicts.
pub async fn set_if_absent_creates_once(store: &dyn ConfigStore) {
    let created = store
        .set_if("absent/leader", json!("node-a"), Condition::Absent)
        .await
        .expect("create if absent");
    match store
        .set_if("absent/leader", json!("node-b"), Condition::Absent)
        .await
    {
        Err(KvError::Conflict {
            expected: Condition::Absent,
            actual,
            ..
        }) => assert_eq!(actual, Some(created)),
        other => panic!("second create gave {other:?}"),
    }
    assert_eq!(
        get_value(store, "absent/leader").await,
        Some(json!("node-a"))
    );
    match store.set_if("absent", json!(1), Condition::Absent).await {
        Err(KvError::Conflict { .. }) => {}
        other => panic!("create over a document gave {other:?}"),
    }
    assert!(store.del("absent/leader").await.unwrap());
    store
        .set_if("absent/leader", json!("node-c"), Condition::Absent)
        .await
        .expect("create again after delete");
}

/// Deleting part of a document changes the document's revision, so a CAS on it fails.
pub async fn document_revision_tracks_deletes(store: &dyn ConfigStore) {
    set(store, "drt/a", json!(1)).await;
    set(store, "drt/b", json!(2)).await;
    let read = store.get("drt").await.unwrap().expect("document").revision;
    assert!(store.del("drt/a").await.unwrap());
    let after = store.get("drt").await.unwrap().expect("document").revision;
    assert!(
        after > read,
        "delete inside a document must move its revision"
    );
    assert!(matches!(
        store
            .set_if("drt", json!({"b": 3}), Condition::Revision(read))
            .await,
        Err(KvError::Conflict { .. })
    ));
}

/// push appends (creating the list), pop removes from the end.
pub async fn push_pop(store: &dyn ConfigStore) {
    let path = "pp/app_uris/reserved_list";
    let first = store.push(path, json!("api")).await.expect("push creates");
    assert_eq!(get_value(store, path).await, Some(json!(["api"])));
    let second = store.push(path, json!({"host": "www"})).await.unwrap();
    assert!(second > first);
    assert_eq!(
        store.get(path).await.unwrap(),
        Some(Versioned {
            value: json!(["api", {"host": "www"}]),
            revision: second
        })
    );
    assert_eq!(store.pop(path).await.unwrap(), Some(json!({"host": "www"})));
    assert_eq!(store.pop(path).await.unwrap(), Some(json!("api")));
    assert_eq!(get_value(store, path).await, Some(json!([])));
    let before = revision(store).await;
    assert_eq!(store.pop(path).await.unwrap(), None, "pop on an empty list");
    assert_eq!(
        store.pop("pp/missing").await.unwrap(),
        None,
        "pop on nothing"
    );
    assert_eq!(revision(store).await, before, "empty pops write nothing");
}

/// push and pop refuse values that are not lists, and leave them alone.
pub async fn push_pop_on_non_list_fail(store: &dyn ConfigStore) {
    set(store, "pnl/name", json!("x")).await;
    set(store, "pnl/doc/a", json!(1)).await;
    for path in ["pnl/name", "pnl/doc"] {
        match store.pop(path).await {
            Err(KvError::NotAList { path: p, found }) => {
                assert_eq!(p, path);
                assert!(!found.is_empty());
            }
            other => panic!("pop {path} gave {other:?}"),
        }
        assert!(matches!(
            store.push(path, json!(1)).await,
            Err(KvError::NotAList { .. })
        ));
    }
    assert_eq!(get_value(store, "pnl/name").await, Some(json!("x")));
    assert_eq!(get_value(store, "pnl/doc").await, Some(json!({"a": 1})));
}

/// list returns the leaves at or under a path, not those sharing only a string prefix.
pub async fn list_under_prefix(store: &dyn ConfigStore) {
    let a = set(store, "lup/node/n1/roles/dea", json!(true)).await;
    let b = set(store, "lup/node/n1/roles/router", json!(false)).await;
    set(store, "lup/node/n10/roles/dea", json!(true)).await;
    let listed = store.list("lup/node/n1").await.unwrap();
    assert_eq!(
        listed,
        vec![
            (
                "lup/node/n1/roles/dea".to_string(),
                Versioned {
                    value: json!(true),
                    revision: a
                }
            ),
            (
                "lup/node/n1/roles/router".to_string(),
                Versioned {
                    value: json!(false),
                    revision: b
                }
            ),
        ]
    );
    assert_eq!(store.list("lup/node/n1/roles/dea").await.unwrap().len(), 1);
    assert!(store.list("lup/none").await.unwrap().is_empty());
    let everything = store.list("").await.unwrap();
    assert!(everything
        .iter()
        .any(|(p, _)| p == "lup/node/n10/roles/dea"));
}

/// A watch without a revision sees only later changes, in order, with their revisions.
pub async fn watch_from_now(store: &dyn ConfigStore) {
    set(store, "wfn/before", json!(0)).await;
    let mut watch = store.watch("wfn", None).await.expect("watch");
    let r1 = set(store, "wfn/a", json!(1)).await;
    let r2 = set(store, "wfn/a", json!(2)).await;
    assert!(store.del("wfn/a").await.unwrap());
    let r3 = revision(store).await;
    let got = [
        next_change(&mut watch).await,
        next_change(&mut watch).await,
        next_change(&mut watch).await,
    ];
    assert_eq!(
        summary(&got),
        vec![
            ("wfn/a".to_string(), Some(json!(1))),
            ("wfn/a".to_string(), Some(json!(2))),
            ("wfn/a".to_string(), None),
        ]
    );
    assert_eq!(got[0].revision, r1);
    assert_eq!(got[1].revision, r2);
    assert_eq!(got[2].revision, r3);
}

/// A watcher that starts late from a revision sees every later change, in order, then live ones.
pub async fn late_watcher_replays_every_change(store: &dyn ConfigStore) {
    let start = set(store, "late/seed", json!(0)).await;
    let mut expected = Vec::new();
    for i in 1..=20 {
        let revision = set(store, "late/counter", json!(i)).await;
        expected.push(("late/counter".to_string(), Some(json!(i)), revision));
    }
    store.push("late/list", json!("x")).await.unwrap();
    expected.push((
        "late/list".to_string(),
        Some(json!(["x"])),
        revision(store).await,
    ));
    store.del("late/counter").await.unwrap();
    expected.push(("late/counter".to_string(), None, revision(store).await));

    let mut watch = store.watch("late", Some(start)).await.expect("late watch");
    let live = set(store, "late/live", json!("after")).await;
    expected.push(("late/live".to_string(), Some(json!("after")), live));
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        let change = next_change(&mut watch).await;
        got.push((change.path, change.value, change.revision));
    }
    assert_eq!(got, expected, "replay then live, no gaps or duplicates");

    let middle = expected[9].2;
    let mut from_middle = store.watch("late", Some(middle)).await.unwrap();
    let first = next_change(&mut from_middle).await;
    assert_eq!(
        first.revision, expected[10].2,
        "replay starts strictly after the revision"
    );
    assert_eq!(first.value, Some(json!(11)));
}

/// A watch sees only paths within its prefix (segment-wise, not by string prefix).
pub async fn watch_filters_by_prefix(store: &dyn ConfigStore) {
    let mut watch = store.watch("wfp/a", None).await.expect("watch");
    set(store, "wfp/ab", json!("sibling")).await;
    set(store, "wfp/b/x", json!("other")).await;
    set(store, "wfp/a/x", json!(1)).await;
    set(store, "wfp/other", json!("other")).await;
    set(store, "wfp/a/y/z", json!(2)).await;
    set(store, "wfp/a/zz_sentinel", json!(true)).await;
    let seen = changes_until(&mut watch, "wfp/a/zz_sentinel").await;
    assert_eq!(
        summary(&seen),
        vec![
            ("wfp/a/x".to_string(), Some(json!(1))),
            ("wfp/a/y/z".to_string(), Some(json!(2))),
        ]
    );
    let mut exact = store.watch("wfp/a/x", Some(0)).await.expect("exact watch");
    let change = next_change(&mut exact).await;
    assert_eq!(
        (change.path.as_str(), change.value),
        ("wfp/a/x", Some(json!(1)))
    );
}

/// Deleting a document shows every leaf it held as deleted.
pub async fn delete_visible_in_watch(store: &dyn ConfigStore) {
    let created = set(store, "dvw/doc", json!({"a": 1, "b": {"c": 2}})).await;
    let mut watch = store.watch("dvw", Some(created)).await.expect("watch");
    assert!(store.del("dvw/doc").await.unwrap());
    let deleted_at = revision(store).await;
    set(store, "dvw/sentinel", json!(true)).await;
    let mut seen = changes_until(&mut watch, "dvw/sentinel").await;
    assert_revisions_non_decreasing(&seen);
    for change in &seen {
        assert!(change.revision > created && change.revision <= deleted_at);
    }
    seen.sort_by(|x, y| x.path.cmp(&y.path));
    assert_eq!(
        summary(&seen),
        vec![
            ("dvw/doc/a".to_string(), None),
            ("dvw/doc/b/c".to_string(), None)
        ]
    );
}

/// Every write gets a larger revision; reads report it; non-writes do not consume one.
pub async fn revisions_strictly_increase(store: &dyn ConfigStore) {
    let mut last = revision(store).await;
    let mut writes = Vec::new();
    writes.push(set(store, "rsi/a", json!(1)).await);
    writes.push(store.push("rsi/l", json!(1)).await.unwrap());
    writes.push(
        store
            .set_if("rsi/new", json!(1), Condition::Absent)
            .await
            .unwrap(),
    );
    writes.push(set(store, "rsi/doc", json!({"x": 1, "y": 2})).await);
    for write in writes {
        assert!(write > last, "revision {write} after {last}");
        last = write;
    }
    assert_eq!(revision(store).await, last);
    assert_eq!(store.get("rsi/doc").await.unwrap().unwrap().revision, last);
    assert!(!store.del("rsi/nothing").await.unwrap());
    assert_eq!(
        revision(store).await,
        last,
        "deleting nothing writes nothing"
    );
    assert!(store.del("rsi/a").await.unwrap());
    assert!(revision(store).await > last, "a delete is a write");
}

/// Concurrent read-modify-write loops with CAS lose no increment.
pub async fn concurrent_cas_increments_lose_nothing(store: &dyn ConfigStore) {
    const WORKERS: u64 = 4;
    const EACH: u64 = 10;
    set(store, "ccas/counter", json!(0)).await;
    let workers = (0..WORKERS).map(|_| async {
        for _ in 0..EACH {
            increment(store, "ccas/counter").await;
        }
    });
    futures::future::join_all(workers).await;
    assert_eq!(
        get_value(store, "ccas/counter").await,
        Some(json!(WORKERS * EACH))
    );
}

async fn increment(store: &dyn ConfigStore, path: &str) {
    loop {
        let current = store.get(path).await.unwrap().expect("counter");
        let next = current.value.as_u64().expect("a counter") + 1;
        match store
            .set_if(path, json!(next), Condition::Revision(current.revision))
            .await
        {
            Ok(_) => return,
            Err(KvError::Conflict { .. }) => continue,
            Err(e) => panic!("increment: {e}"),
        }
    }
}

/// Values, revisions and the change log survive closing and reopening the store.
pub async fn persists_across_reopen(harness: &dyn Harness) {
    let (value_revision, start, end) = {
        let store = harness.open().await;
        let start = revision(&*store).await;
        let value_revision = set(&*store, "par/cluster/endpoint", json!("api.example.com")).await;
        store.push("par/list", json!(1)).await.unwrap();
        store.del("par/list").await.unwrap();
        (value_revision, start, revision(&*store).await)
    };
    let store = harness.open().await;
    assert_eq!(revision(&*store).await, end);
    assert_eq!(
        store.get("par/cluster/endpoint").await.unwrap(),
        Some(Versioned {
            value: json!("api.example.com"),
            revision: value_revision
        })
    );
    assert_eq!(get_value(&*store, "par/list").await, None);
    let mut watch = store
        .watch("par", Some(start))
        .await
        .expect("watch after reopen");
    let replayed = [
        next_change(&mut watch).await,
        next_change(&mut watch).await,
        next_change(&mut watch).await,
    ];
    assert_eq!(
        summary(&replayed),
        vec![
            (
                "par/cluster/endpoint".to_string(),
                Some(json!("api.example.com"))
            ),
            ("par/list".to_string(), Some(json!([1]))),
            ("par/list".to_string(), None),
        ]
    );
    assert!(set(&*store, "par/after", json!(1)).await > end);
}
