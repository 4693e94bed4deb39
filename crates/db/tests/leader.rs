//! Leader election against a real PostgreSQL: one leader at a time, and a standby takes
//! over when the leader's connection goes.

use std::time::{Duration, Instant};

use strato_db::leader::Leadership;
use strato_testkit::Postgres;
use tokio_util::sync::CancellationToken;

const RETRY: Duration = Duration::from_millis(100);

#[tokio::test]
async fn one_leader_and_a_standby_that_takes_over() {
    let pg = Postgres::start().unwrap();
    let url = pg.url();
    let cancel = CancellationToken::new();
    let first = Leadership::acquire(&url, "health_manager", RETRY, &cancel)
        .await
        .unwrap()
        .expect("the first one leads");

    // A second candidate waits while the first leads.
    let standby = {
        let url = url.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let got = Leadership::acquire(&url, "health_manager", RETRY, &cancel).await;
            (got, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!standby.is_finished(), "two leaders at once");

    // Another name is another lock.
    let other = Leadership::acquire(&url, "something_else", RETRY, &cancel)
        .await
        .unwrap();
    assert!(other.is_some());

    // The leader goes (its connection closes): the standby leads soon after.
    let gone = Instant::now();
    drop(first);
    let (got, at) = tokio::time::timeout(Duration::from_secs(10), standby)
        .await
        .expect("the standby took over")
        .unwrap();
    assert!(got.unwrap().is_some());
    assert!(at.duration_since(gone) < Duration::from_secs(3));
}

#[tokio::test]
async fn a_standby_gives_up_when_cancelled() {
    let pg = Postgres::start().unwrap();
    let cancel = CancellationToken::new();
    let _leader = Leadership::acquire(&pg.url(), "hm", RETRY, &cancel)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let url = pg.url();
    let waiting = {
        let stop = stop.clone();
        tokio::spawn(async move { Leadership::acquire(&url, "hm", RETRY, &stop).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(got.is_none());
}
