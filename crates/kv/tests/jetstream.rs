//! Behaviour specific to [`JetStreamStore`]: one revision per multi-leaf write on consecutive
//! stream sequences, concurrent conditional writers on a document, compaction by the per-key
//! history, watches and writes across a nats-server restart, a stalled writer being taken
//! over and fenced, and the JetStream guarantees the store relies on.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use serde_json::json;
use strato_kv::conformance::next_change;
use strato_kv::{Condition, ConfigStore, JetStreamOptions, JetStreamStore, KvError};
use strato_testkit::{NatsCluster, NatsServer};

const BUCKET: &str = "config";

async fn open(server: &NatsServer, options: JetStreamOptions) -> JetStreamStore {
    JetStreamStore::connect(&server.url(), BUCKET, options)
        .await
        .expect("open the JetStream store")
}

#[tokio::test]
async fn multi_leaf_write_shares_one_revision_on_consecutive_sequences() {
    let server = NatsServer::start().unwrap();
    let store = open(&server, JetStreamOptions::default()).await;
    let before = store.set("mlw/seed", json!(0)).await.unwrap();
    let mut watch = store.watch("mlw", Some(before)).await.unwrap();
    let revision = store
        .set("mlw/doc", json!({"a": 1, "b": {"c": 2}, "d": [3]}))
        .await
        .unwrap();
    assert_eq!(revision, before + 3, "three leaves, three sequences");
    for leaf in ["mlw/doc/a", "mlw/doc/b/c", "mlw/doc/d"] {
        assert_eq!(store.get(leaf).await.unwrap().unwrap().revision, revision);
    }
    for _ in 0..3 {
        assert_eq!(next_change(&mut watch).await.revision, revision);
    }
    assert_eq!(store.current_revision().await.unwrap(), revision);
}

#[tokio::test]
async fn concurrent_conditional_writers_on_a_document_one_wins() {
    let server = NatsServer::start().unwrap();
    let first = open(&server, JetStreamOptions::default()).await;
    let second = open(&server, JetStreamOptions::default()).await;
    first
        .set("race", json!({"owner": "none", "spec": {"x": 0}}))
        .await
        .unwrap();
    for round in 0..10 {
        let read = first.get("race").await.unwrap().unwrap().revision;
        let value_a = json!({"owner": "a", "spec": {"x": round, "y": "a"}});
        let value_b = json!({"owner": "b", "spec": {"x": round, "z": "b"}});
        let (a, b) = tokio::join!(
            first.set_if("race", value_a.clone(), Condition::Revision(read)),
            second.set_if("race", value_b.clone(), Condition::Revision(read)),
        );
        let (winner, revision) = match (a, b) {
            (Ok(revision), Err(KvError::Conflict { actual, .. })) => {
                assert_eq!(
                    actual,
                    Some(revision),
                    "the loser sees the winner's revision"
                );
                (value_a, revision)
            }
            (Err(KvError::Conflict { actual, .. }), Ok(revision)) => {
                assert_eq!(
                    actual,
                    Some(revision),
                    "the loser sees the winner's revision"
                );
                (value_b, revision)
            }
            other => panic!("round {round}: expected one winner and one conflict, got {other:?}"),
        };
        let stored = second.get("race").await.unwrap().unwrap();
        assert_eq!(stored.value, winner, "round {round}: no mix of both writes");
        assert_eq!(stored.revision, revision);
    }
}

#[tokio::test]
async fn watch_before_dropped_history_is_compacted() {
    let server = NatsServer::start().unwrap();
    let options = JetStreamOptions {
        history: 2,
        ..JetStreamOptions::default()
    };
    let store = open(&server, options).await;
    let start = store.set("cmp/other", json!("kept")).await.unwrap();
    let mut revisions = Vec::new();
    for i in 0..5 {
        revisions.push(store.set("cmp/hot", json!(i)).await.unwrap());
    }
    match store.watch("cmp", Some(start)).await {
        Err(KvError::Compacted {
            requested,
            compacted_through,
        }) => {
            assert_eq!(requested, start);
            assert_eq!(
                compacted_through, revisions[2],
                "the last two values are kept"
            );
        }
        Err(other) => panic!("expected Compacted, got {other}"),
        Ok(_) => panic!("expected Compacted, got a watch"),
    }
    let mut watch = store.watch("cmp", Some(revisions[2])).await.unwrap();
    for (value, revision) in [(3, revisions[3]), (4, revisions[4])] {
        let change = next_change(&mut watch).await;
        assert_eq!(
            (change.value, change.revision),
            (Some(json!(value)), revision)
        );
    }
    assert_eq!(
        store.get("cmp/other").await.unwrap().unwrap().value,
        json!("kept"),
        "history drops old values, never a key's latest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_writes_continue_across_a_server_restart() {
    let mut server = NatsServer::start().unwrap();
    let writer = open(&server, JetStreamOptions::default()).await;
    let watcher = open(&server, JetStreamOptions::default()).await;
    let start = writer.set("rs/a", json!(1)).await.unwrap();
    let mut watch = watcher.watch("rs", Some(start - 1)).await.unwrap();
    assert_eq!(next_change(&mut watch).await.path, "rs/a");

    server.restart().expect("restart nats-server");
    let b = writer
        .set("rs/b", json!(2))
        .await
        .expect("write after restart");
    let c = writer.push("rs/list", json!("x")).await.unwrap();
    let got = [next_change(&mut watch).await, next_change(&mut watch).await];
    assert_eq!(
        got.iter()
            .map(|c| (c.path.as_str(), c.revision))
            .collect::<Vec<_>>(),
        vec![("rs/b", b), ("rs/list", c)],
        "no change missed or repeated across the restart"
    );

    server.kill();
    let pending = tokio::spawn({
        let writer = writer.clone();
        async move { writer.push("rs/list", json!("y")).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!pending.is_finished(), "a write waits while NATS is down");
    server.restart().expect("start nats-server again");
    let d = pending
        .await
        .unwrap()
        .expect("the write completes once NATS is back");
    assert_eq!(
        writer.get("rs/list").await.unwrap().unwrap().value,
        json!(["x", "y"]),
        "applied exactly once"
    );
    let change = next_change(&mut watch).await;
    assert_eq!((change.path.as_str(), change.revision), ("rs/list", d));
    assert_eq!(writer.current_revision().await.unwrap(), d);
}

#[tokio::test]
async fn stalled_write_is_taken_over_and_its_writer_fenced() {
    let server = NatsServer::start().unwrap();
    let options = JetStreamOptions {
        stalled_write_timeout: Duration::from_millis(300),
        ..JetStreamOptions::default()
    };
    let store = open(&server, options).await;
    let head = store.set("st/seed", json!(0)).await.unwrap();
    // A writer that published the first of three entries of one write, then died.
    let context = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let partial = |expected: u64| {
        PublishMessage::build()
            .payload("1".into())
            .header("Strato-Commit", (head + 3).to_string().as_str())
            .expected_last_sequence(expected)
    };
    let ack = context
        .send_publish(format!("$KV.{BUCKET}.st.doc.a"), partial(head))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.sequence, head + 1);

    let started = std::time::Instant::now();
    let revision = store.set("st/other", json!(true)).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "waited for the stalled write"
    );
    assert_eq!(
        revision,
        head + 4,
        "after the stalled write's reserved revisions"
    );
    assert_eq!(store.current_revision().await.unwrap(), revision);
    assert_eq!(
        store.get("st/doc").await.unwrap().unwrap().revision,
        head + 3,
        "the finished part keeps its write's revision"
    );
    let zombie = context
        .send_publish(format!("$KV.{BUCKET}.st.doc.b"), partial(head + 1))
        .await
        .unwrap()
        .await;
    assert_eq!(
        zombie.map(|a| a.sequence).map_err(|e| e.kind()),
        Err(PublishErrorKind::WrongLastSequence),
        "the stalled writer cannot finish after the takeover"
    );
}

/// The store resends a publish whose acknowledgement was lost with the same message id and
/// expected sequence; JetStream must answer with the original sequence, not a conflict.
#[tokio::test]
async fn resent_publish_is_recognised_as_a_duplicate() {
    let server = NatsServer::start().unwrap();
    let store = open(&server, JetStreamOptions::default()).await;
    let head = store.set("dup/seed", json!(0)).await.unwrap();
    let context = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let message = PublishMessage::build()
        .payload("1".into())
        .message_id("dup-test-1")
        .expected_last_sequence(head);
    let subject = format!("$KV.{BUCKET}.dup.x");
    let first = context
        .send_publish(subject.clone(), message.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    let again = context
        .send_publish(subject, message)
        .await
        .unwrap()
        .await
        .expect("a resent publish is a duplicate, not a wrong sequence");
    assert!(again.duplicate);
    assert_eq!(again.sequence, first.sequence);
}

#[tokio::test]
async fn dotted_segments_are_separate_from_nested_paths() {
    let server = NatsServer::start().unwrap();
    let store = open(&server, JetStreamOptions::default()).await;
    store
        .set("node/10.0.0.1/roles/dea", json!(true))
        .await
        .unwrap();
    store.set("node/10/0/0/1", json!("nested")).await.unwrap();
    store
        .set("node/10.0.0.10/roles/dea", json!(false))
        .await
        .unwrap();
    let listed: Vec<String> = store
        .list("node/10.0.0.1")
        .await
        .unwrap()
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    assert_eq!(listed, vec!["node/10.0.0.1/roles/dea"]);
    assert_eq!(
        store.get("node/10").await.unwrap().unwrap().value,
        json!({"0": {"0": {"1": "nested"}}})
    );
    let all: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    assert_eq!(all.len(), 3, "{all:?}");
}

#[tokio::test]
async fn unreachable_nats_is_a_clear_error() {
    let server = NatsServer::start().unwrap();
    let url = server.url();
    drop(server);
    match JetStreamStore::connect(&url, BUCKET, JetStreamOptions::default()).await {
        Err(KvError::Open { path, message }) => {
            assert_eq!(path, url);
            assert!(message.contains("cannot connect"), "{message}");
        }
        Err(other) => panic!("expected Open, got {other}"),
        Ok(_) => panic!("connected to a stopped server"),
    }
}

/// On a NATS cluster of three with a bucket of three replicas, the whole conformance
/// suite passes, and losing any one server loses no write, no change and no watch.
#[tokio::test]
async fn a_bucket_of_three_replicas_survives_losing_a_server() {
    let mut cluster = NatsCluster::start().expect("start a NATS cluster of three");
    let options = || JetStreamOptions {
        replicas: 3,
        ..Default::default()
    };
    let store = JetStreamStore::connect(&cluster.urls(), "suite", options())
        .await
        .expect("open a bucket of three replicas");
    strato_kv::conformance::run_all(std::sync::Arc::new(store)).await;

    // A bucket made with one copy (a node that knew one server) gets three when opened
    // by one that knows the cluster.
    let one = JetStreamStore::connect(&cluster.url(1), "grown", JetStreamOptions::default())
        .await
        .unwrap();
    one.set("g/a", json!(1)).await.unwrap();
    drop(one);
    let three = JetStreamStore::connect(&cluster.urls(), "grown", options())
        .await
        .unwrap();
    assert_eq!(three.get("g/a").await.unwrap().unwrap().value, json!(1));
    let client = async_nats::connect(cluster.url(0)).await.unwrap();
    let mut stream = jetstream::new(client).get_stream("KV_grown").await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.num_replicas, 3);

    let writer = JetStreamStore::connect(&cluster.urls(), BUCKET, options())
        .await
        .unwrap();
    let watcher = JetStreamStore::connect(&cluster.url(2), BUCKET, options())
        .await
        .unwrap();
    let first = writer.set("ha/a", json!(1)).await.unwrap();
    let mut watch = watcher.watch("ha", Some(first - 1)).await.unwrap();
    assert_eq!(next_change(&mut watch).await.path, "ha/a");
    cluster.kill(0);
    let b = writer
        .set("ha/b", json!(2))
        .await
        .expect("a write with one server of three down");
    // The watch's consumer may have lived on the dead server: it is made again elsewhere.
    let change = tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("the watch carried on within 30 s")
        .expect("the watch is open")
        .expect("no watch error");
    assert_eq!((change.path.as_str(), change.revision), ("ha/b", b));
    assert_eq!(watcher.get("ha/a").await.unwrap().unwrap().value, json!(1));
}
