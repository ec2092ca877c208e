//! Runs the `LogStore` conformance suite of `raft-core` against `MemLogStore`.
//!
//! A reopen hands back a clone of the same store (the way a test restarts a node on the same
//! data), so the suite's reopen checks run too: they prove the clone shares everything.

use async_trait::async_trait;
use raft_core::testkit::log_store_suite::{run_all, StoreHarness};
use raft_core::{LogStore, StorageError};
use raft_storage_mem::MemLogStore;
use std::sync::Arc;

#[derive(Default)]
struct MemHarness {
    /// The store of the current case, kept so that `reopen` can hand back the same data.
    current: Option<MemLogStore>,
}

#[async_trait]
impl StoreHarness for MemHarness {
    async fn create(&mut self) -> Result<Arc<dyn LogStore>, StorageError> {
        let store = MemLogStore::new();
        self.current = Some(store.clone());
        Ok(Arc::new(store))
    }

    async fn reopen(
        &mut self,
        store: Arc<dyn LogStore>,
    ) -> Result<Arc<dyn LogStore>, StorageError> {
        drop(store);
        let current = self.current.clone().expect("create() runs before reopen()");
        Ok(Arc::new(current))
    }

    fn durable(&self) -> bool {
        true
    }
}

/// Proves `MemLogStore` meets the whole `LogStore` contract, including reopen via a clone.
#[tokio::test]
async fn mem_log_store_passes_the_conformance_suite() {
    run_all(&mut MemHarness::default()).await;
}
