//! One conformance suite for every [`Bus`] backend.
//!
//! Each check is an async fn over a `SharedBus`; the `conformance!` macro runs every check
//! against the in-process bus and against a real `nats-server` started by the test kit, so
//! both backends are held to the same contract.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strato_bus::{
    decode, publish_json, reply_json, request_json, Bus, BusError, InProcBus, NatsBus, SharedBus,
    Subscription,
};
use strato_testkit::{NatsCluster, NatsServer};

/// How long a drained subscription stays quiet before we decide nothing more is coming.
const QUIET: Duration = Duration::from_millis(200);
/// Generous upper bound for anything that should happen "at once".
const PROMPTLY: Duration = Duration::from_secs(1);

fn text(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

fn payload_text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Receives one message or fails the test after a few seconds.
async fn receive(sub: &mut Subscription) -> strato_bus::Message {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a message should arrive within 5s")
        .expect("the subscription should still be open")
}

/// Collects payloads until the subscription stays quiet for [`QUIET`].
async fn drain(sub: &mut Subscription) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(QUIET, sub.next()).await {
        seen.push(payload_text(&message.payload));
    }
    seen
}

async fn subscribe(bus: &dyn Bus, filter: &str) -> Subscription {
    let sub = bus.subscribe(filter).await.expect("subscribe");
    bus.flush().await.expect("flush");
    sub
}

async fn wildcards_match_like_nats(bus: SharedBus) {
    let mut one_middle = subscribe(&*bus, "wild.*.c").await;
    let mut rest = subscribe(&*bus, "wild.>").await;
    let mut one_last = subscribe(&*bus, "wild.*").await;
    let mut exact = subscribe(&*bus, "wild.b").await;
    for subject in [
        "wild.b.c",
        "wild.b",
        "wild.b.c.d",
        "wild",
        "other.b.c",
        "wild.x.c",
    ] {
        bus.publish(subject, text(subject)).await.unwrap();
    }
    bus.flush().await.unwrap();
    assert_eq!(drain(&mut one_middle).await, ["wild.b.c", "wild.x.c"]);
    assert_eq!(
        drain(&mut rest).await,
        ["wild.b.c", "wild.b", "wild.b.c.d", "wild.x.c"]
    );
    assert_eq!(drain(&mut one_last).await, ["wild.b"]);
    assert_eq!(drain(&mut exact).await, ["wild.b"]);
}

async fn messages_carry_subject_and_reply(bus: SharedBus) {
    let mut sub = subscribe(&*bus, "carry.*").await;
    bus.publish_with_reply("carry.one", "answers.here", text("hi"))
        .await
        .unwrap();
    bus.publish("carry.two", text("there")).await.unwrap();
    let first = receive(&mut sub).await;
    assert_eq!(first.subject, "carry.one");
    assert_eq!(first.reply.as_deref(), Some("answers.here"));
    assert_eq!(payload_text(&first.payload), "hi");
    let second = receive(&mut sub).await;
    assert_eq!(second.subject, "carry.two");
    assert_eq!(second.reply, None);
}

async fn queue_group_delivers_each_message_to_exactly_one_member(bus: SharedBus) {
    const COUNT: usize = 200;
    let mut first = bus.queue_subscribe("jobs.*", "workers").await.unwrap();
    let mut second = bus.queue_subscribe("jobs.*", "workers").await.unwrap();
    let mut other_group = bus.queue_subscribe("jobs.>", "auditors").await.unwrap();
    let mut plain = bus.subscribe("jobs.new").await.unwrap();
    bus.flush().await.unwrap();
    for n in 0..COUNT {
        bus.publish("jobs.new", text(&n.to_string())).await.unwrap();
    }
    bus.flush().await.unwrap();

    let expected: BTreeSet<String> = (0..COUNT).map(|n| n.to_string()).collect();
    let (got_first, got_second) = (drain(&mut first).await, drain(&mut second).await);
    assert_eq!(
        got_first.len() + got_second.len(),
        COUNT,
        "no duplicates, none lost"
    );
    let union: BTreeSet<String> = got_first.iter().chain(&got_second).cloned().collect();
    assert_eq!(union, expected);
    assert!(
        !got_first.is_empty() && !got_second.is_empty(),
        "both members should share the load ({} / {})",
        got_first.len(),
        got_second.len()
    );
    assert_eq!(
        drain(&mut other_group).await.len(),
        COUNT,
        "each group gets every message"
    );
    assert_eq!(
        drain(&mut plain).await.len(),
        COUNT,
        "plain subscribers get every message"
    );
}

async fn request_to_a_queue_group_gets_one_reply(bus: SharedBus) {
    let mut members = Vec::new();
    for name in ["a", "b", "c"] {
        let mut sub = bus.queue_subscribe("svc.pick", "svc").await.unwrap();
        let responder = bus.clone();
        members.push(tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                let reply = message
                    .reply
                    .clone()
                    .expect("requests carry a reply subject");
                responder.publish(&reply, text(name)).await.unwrap();
            }
        }));
    }
    bus.flush().await.unwrap();
    for _ in 0..20 {
        let answer = bus
            .request("svc.pick", Bytes::new(), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(["a", "b", "c"].contains(&payload_text(&answer.payload).as_str()));
    }
    for member in members {
        member.abort();
    }
}

async fn request_reply_round_trip(bus: SharedBus) {
    let mut service = subscribe(&*bus, "echo.upper").await;
    let responder = bus.clone();
    let server = tokio::spawn(async move {
        while let Some(message) = service.next().await {
            let upper = payload_text(&message.payload).to_uppercase();
            let reply = message
                .reply
                .clone()
                .expect("requests carry a reply subject");
            responder.publish(&reply, text(&upper)).await.unwrap();
        }
    });
    let answer = bus
        .request("echo.upper", text("hello"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(payload_text(&answer.payload), "HELLO");

    // Many requests in flight at once each get their own answer.
    let pending: Vec<_> = (0..50)
        .map(|n| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let reply = bus
                    .request("echo.upper", text(&format!("m{n}")), Duration::from_secs(5))
                    .await
                    .unwrap();
                (n, payload_text(&reply.payload))
            })
        })
        .collect();
    for task in pending {
        let (n, reply) = task.await.unwrap();
        assert_eq!(reply, format!("M{n}"));
    }

    // A hand-made request: our own inbox and publish_with_reply.
    let inbox = bus.new_inbox();
    let mut replies = subscribe(&*bus, &inbox).await;
    bus.publish_with_reply("echo.upper", &inbox, text("manual"))
        .await
        .unwrap();
    assert_eq!(payload_text(&receive(&mut replies).await.payload), "MANUAL");
    server.abort();
}

async fn json_helpers_round_trip(bus: SharedBus) {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Ask {
        n: u32,
    }
    let mut service = subscribe(&*bus, "json.double").await;
    let responder = bus.clone();
    let server = tokio::spawn(async move {
        while let Some(message) = service.next().await {
            match decode::<Ask>(&message) {
                Ok(ask) => reply_json(&*responder, &message, &Ask { n: ask.n * 2 }).await,
                Err(_) => reply_json(&*responder, &message, "bad request").await,
            }
            .unwrap();
        }
    });
    let doubled: Ask = request_json(&*bus, "json.double", &Ask { n: 21 }, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(doubled, Ask { n: 42 });

    let mut watcher = subscribe(&*bus, "json.events").await;
    publish_json(&*bus, "json.events", &Ask { n: 7 })
        .await
        .unwrap();
    bus.publish("json.events", text("not json")).await.unwrap();
    assert_eq!(
        decode::<Ask>(&receive(&mut watcher).await).unwrap(),
        Ask { n: 7 }
    );
    let malformed = decode::<Ask>(&receive(&mut watcher).await);
    assert!(
        matches!(malformed, Err(BusError::Payload { subject, .. }) if subject == "json.events")
    );
    server.abort();
}

async fn request_without_responders_fails_at_once(bus: SharedBus) {
    let started = Instant::now();
    let outcome = bus
        .request("nobody.home", text("anyone?"), Duration::from_secs(10))
        .await;
    assert!(
        matches!(&outcome, Err(BusError::NoResponders(subject)) if subject == "nobody.home"),
        "expected NoResponders, got {outcome:?}"
    );
    assert!(started.elapsed() < PROMPTLY, "took {:?}", started.elapsed());
}

async fn request_times_out_when_nobody_answers(bus: SharedBus) {
    let _silent = subscribe(&*bus, "silent.service").await;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let outcome = bus.request("silent.service", text("hello?"), timeout).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(&outcome, Err(BusError::Timeout { subject, timeout: t }) if subject == "silent.service" && *t == timeout),
        "expected Timeout, got {outcome:?}"
    );
    assert!(elapsed >= timeout, "gave up early, after {elapsed:?}");
    assert!(
        elapsed < timeout + PROMPTLY,
        "gave up late, after {elapsed:?}"
    );
}

async fn order_is_kept_per_publisher(bus: SharedBus) {
    const COUNT: usize = 1000;
    let mut sub = subscribe(&*bus, "ordered.*").await;
    let publishers: Vec<_> = ["p1", "p2"]
        .into_iter()
        .map(|name| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let subject = format!("ordered.{name}");
                for n in 0..COUNT {
                    bus.publish(&subject, text(&n.to_string())).await.unwrap();
                }
                bus.flush().await.unwrap();
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let mut next_expected = std::collections::HashMap::from([("ordered.p1", 0), ("ordered.p2", 0)]);
    for _ in 0..2 * COUNT {
        let message = receive(&mut sub).await;
        let expected = next_expected
            .get_mut(message.subject.as_str())
            .expect("only the two publishers' subjects");
        assert_eq!(payload_text(&message.payload), expected.to_string());
        *expected += 1;
    }
    assert!(
        drain(&mut sub).await.is_empty(),
        "nothing beyond what was sent"
    );
}

async fn unsubscribe_and_drop_stop_delivery(bus: SharedBus) {
    let mut kept = subscribe(&*bus, "leaving.x").await;
    let mut leaving = subscribe(&*bus, "leaving.x").await;
    bus.publish("leaving.x", text("before")).await.unwrap();
    assert_eq!(payload_text(&receive(&mut leaving).await.payload), "before");
    leaving.unsubscribe();
    bus.flush().await.unwrap();
    bus.publish("leaving.x", text("after")).await.unwrap();
    assert_eq!(drain(&mut kept).await, ["before", "after"]);

    drop(kept);
    bus.flush().await.unwrap();
    let outcome = bus
        .request("leaving.x", Bytes::new(), Duration::from_secs(5))
        .await;
    assert!(
        matches!(outcome, Err(BusError::NoResponders(_))),
        "after unsubscribe and drop nobody listens, got {outcome:?}"
    );

    let dropped_group = bus.queue_subscribe("leaving.q", "g").await.unwrap();
    bus.flush().await.unwrap();
    drop(dropped_group);
    bus.flush().await.unwrap();
    let outcome = bus
        .request("leaving.q", Bytes::new(), Duration::from_secs(5))
        .await;
    assert!(
        matches!(outcome, Err(BusError::NoResponders(_))),
        "got {outcome:?}"
    );
}

async fn invalid_subjects_are_rejected(bus: SharedBus) {
    for bad in ["", "a..b", "a.", ".a", "a b", "wild.*", "wild.>", ">"] {
        let outcome = bus.publish(bad, Bytes::new()).await;
        assert!(
            matches!(&outcome, Err(BusError::InvalidSubject(s)) if s == bad),
            "publish {bad:?}: {outcome:?}"
        );
        let outcome = bus.request(bad, Bytes::new(), Duration::from_secs(1)).await;
        assert!(
            matches!(&outcome, Err(BusError::InvalidSubject(s)) if s == bad),
            "request {bad:?}: {outcome:?}"
        );
    }
    let outcome = bus
        .publish_with_reply("ok.subject", "reply.*", Bytes::new())
        .await;
    assert!(
        matches!(outcome, Err(BusError::InvalidSubject(_))),
        "{outcome:?}"
    );
    for bad in ["", "a.>.b", "a..b", "a b"] {
        assert!(
            matches!(bus.subscribe(bad).await, Err(BusError::InvalidSubject(s)) if s == bad),
            "subscribe {bad:?}"
        );
        assert!(
            matches!(bus.queue_subscribe(bad, "g").await, Err(BusError::InvalidSubject(s)) if s == bad),
            "queue_subscribe {bad:?}"
        );
    }
    for bad in ["", "two words"] {
        assert!(
            matches!(bus.queue_subscribe("ok.subject", bad).await, Err(BusError::InvalidQueueGroup(g)) if g == bad),
            "queue group {bad:?}"
        );
    }
}

/// Runs each named check against both backends.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod inproc {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(std::sync::Arc::new(super::InProcBus::new())).await;
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test]
                async fn $check() {
                    let server = super::NatsServer::start().expect("start nats-server");
                    let bus = super::NatsBus::connect(&server.url()).await.expect("connect");
                    super::$check(std::sync::Arc::new(bus)).await;
                    drop(server);
                }
            )*
        }
    };
}

conformance!(
    wildcards_match_like_nats,
    messages_carry_subject_and_reply,
    queue_group_delivers_each_message_to_exactly_one_member,
    request_to_a_queue_group_gets_one_reply,
    request_reply_round_trip,
    json_helpers_round_trip,
    request_without_responders_fails_at_once,
    request_times_out_when_nobody_answers,
    order_is_kept_per_publisher,
    unsubscribe_and_drop_stop_delivery,
    invalid_subjects_are_rejected,
);

#[tokio::test]
async fn connecting_to_a_dead_server_says_so() {
    let port = strato_testkit::free_port();
    let outcome = NatsBus::connect(&format!("nats://127.0.0.1:{port}")).await;
    match outcome {
        Err(BusError::Backend(message)) => assert!(message.contains("cannot connect"), "{message}"),
        other => panic!("expected a connection error, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn nats_bus_reconnects_and_resubscribes_after_a_server_restart() {
    let mut server = NatsServer::start().expect("start nats-server");
    let bus = NatsBus::connect(&server.url()).await.expect("connect");
    let mut sub = subscribe(&bus, "survivor.x").await;
    assert!(bus.is_connected());
    server.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while bus.is_connected() {
        assert!(
            Instant::now() < deadline,
            "the bus still says it is connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.restart().expect("restart nats-server");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // Publishes made while reconnecting may be lost; keep trying until one arrives.
        bus.publish("survivor.x", text("back")).await.unwrap();
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(250), sub.next()).await
        {
            assert_eq!(payload_text(&message.payload), "back");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery within 15s of the restart"
        );
    }
}

/// A NATS cluster of three: clients on different servers reach each other (subjects,
/// queue groups, request/reply), and a client given the whole list carries on through
/// another server when its own dies.
#[tokio::test]
async fn a_nats_cluster_of_three_routes_between_servers_and_survives_losing_one() {
    let mut cluster = NatsCluster::start().expect("start a NATS cluster of three");
    let a = NatsBus::connect(&cluster.url(0))
        .await
        .expect("connect to server 0");
    let b = NatsBus::connect(&cluster.url(1))
        .await
        .expect("connect to server 1");
    let mut on_b = subscribe(&b, "across.*").await;
    let mut group = b.queue_subscribe("work", "workers").await.unwrap();
    let mut responder = b.subscribe("ask").await.unwrap();
    tokio::spawn(async move {
        while let Some(m) = responder.next().await {
            let _ = reply_json(&b, &m, &"answer").await;
        }
    });
    // Interest travels between servers in the background: retry until it arrived.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        a.publish("across.one", text("hello")).await.unwrap();
        a.flush().await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), on_b.next()).await {
            assert_eq!(payload_text(&m.payload), "hello");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no message crossed from server 0 to server 1"
        );
    }
    // Each subscription's interest travels on its own: the queue group's may come later.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        a.publish("work", text("job")).await.unwrap();
        a.flush().await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), group.next()).await {
            assert_eq!(payload_text(&m.payload), "job");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no queue-group message crossed from server 0 to server 1"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer: String = loop {
        match request_json(&a, "ask", &"question", Duration::from_secs(2)).await {
            Ok(answer) => break answer,
            // "No responders" until the responder's interest reached server 0.
            Err(error) => assert!(
                Instant::now() < deadline,
                "no request answered through another server: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answer, "answer");

    // A client given every server loses its own and moves to another.
    let c = NatsBus::connect(&cluster.urls())
        .await
        .expect("connect to the cluster");
    let mut on_c = subscribe(&c, "survivor.y").await;
    let own = c.client().server_info().port;
    let dead = (0..3)
        .find(|i| cluster.port(*i) == own)
        .expect("c is on one of the three");
    let talker = NatsBus::connect(&cluster.url((dead + 1) % 3))
        .await
        .unwrap();
    cluster.kill(dead);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        talker
            .publish("survivor.y", text("still here"))
            .await
            .unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(250), on_c.next()).await {
            assert_eq!(payload_text(&m.payload), "still here");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client did not carry on through another server within 15 s"
        );
    }
    assert_ne!(c.client().server_info().port, own);
}
