//! Runs the config store conformance suite against [`JetStreamStore`], one test per case,
//! each on its own `nats-server` (free port, temporary JetStream directory, stopped and
//! removed when the test ends).

use std::sync::Arc;

use async_trait::async_trait;
use strato_kv::conformance::{self, Harness};
use strato_kv::{ConfigStore, JetStreamOptions, JetStreamStore};
use strato_testkit::NatsServer;

/// A nats-server of its own; `open` connects a new client to the same bucket.
struct JetStreamHarness {
    server: NatsServer,
}

impl JetStreamHarness {
    fn new() -> Self {
        JetStreamHarness {
            server: NatsServer::start().expect("start nats-server"),
        }
    }
}

#[async_trait]
impl Harness for JetStreamHarness {
    async fn open(&self) -> Arc<dyn ConfigStore> {
        let store =
            JetStreamStore::connect(&self.server.url(), "config", JetStreamOptions::default())
                .await
                .expect("open the JetStream store");
        Arc::new(store)
    }
}

strato_kv::conformance_tests!(JetStreamHarness::new());

/// All cases in sequence on one shared store, as `run_all` promises they can be.
#[tokio::test]
async fn run_all_on_one_store() {
    let harness = JetStreamHarness::new();
    conformance::run_all(harness.open().await).await;
}
