//! Runs the config store conformance suite against [`RedbStore`], one test per case, each on
//! a fresh store file in its own temporary directory (removed when the test ends).

use std::sync::Arc;

use async_trait::async_trait;
use strato_kv::conformance::{self, Harness};
use strato_kv::{ConfigStore, RedbStore};

/// A redb store file in a temporary directory; `open` reopens the same file.
struct RedbHarness {
    dir: tempfile::TempDir,
}

impl RedbHarness {
    fn new() -> Self {
        RedbHarness {
            dir: tempfile::tempdir().expect("create a temporary directory"),
        }
    }
}

#[async_trait]
impl Harness for RedbHarness {
    async fn open(&self) -> Arc<dyn ConfigStore> {
        let path = self.dir.path().join("config.redb");
        Arc::new(RedbStore::open(&path).expect("open the redb store"))
    }
}

strato_kv::conformance_tests!(RedbHarness::new());

/// All cases in sequence on one shared store, as `run_all` promises they can be.
#[tokio::test]
async fn run_all_on_one_store() {
    let harness = RedbHarness::new();
    conformance::run_all(harness.open().await).await;
}
