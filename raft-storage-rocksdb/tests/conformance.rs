//! Runs the `LogStore` conformance suite of `raft-core` against `RocksLogStore`, reopening the
//! database from disk after every operation.

use async_trait::async_trait;
use raft_core::testkit::log_store_suite::{run_all, StoreHarness};
use raft_core::{LogStore, StorageError};
use raft_storage_rocksdb::{RocksLogStore, RocksLogStoreOptions};
use std::path::PathBuf;
use std::sync::Arc;
use tempfile::TempDir;

struct RocksHarness {
    root: TempDir,
    cases: usize,
    current: Option<PathBuf>,
}

#[async_trait]
impl StoreHarness for RocksHarness {
    async fn create(&mut self) -> Result<Arc<dyn LogStore>, StorageError> {
        self.cases += 1;
        let directory = self.root.path().join(format!("case-{}", self.cases));
        let store = RocksLogStore::open(&directory, RocksLogStoreOptions::default())?;
        self.current = Some(directory);
        Ok(Arc::new(store))
    }

    async fn reopen(
        &mut self,
        store: Arc<dyn LogStore>,
    ) -> Result<Arc<dyn LogStore>, StorageError> {
        // The suite holds no other reference: this closes the database.
        drop(store);
        let directory = self
            .current
            .as_ref()
            .expect("create() runs before reopen()");
        Ok(Arc::new(RocksLogStore::open(
            directory,
            RocksLogStoreOptions::default(),
        )?))
    }

    fn durable(&self) -> bool {
        true
    }
}

/// Proves `RocksLogStore` meets the whole `LogStore` contract and that a store reopened from
/// disk after every operation holds exactly what was acknowledged.
#[tokio::test]
async fn rocks_log_store_passes_the_conformance_suite() {
    let mut harness = RocksHarness {
        root: tempfile::tempdir().expect("a temporary directory"),
        cases: 0,
        current: None,
    };
    run_all(&mut harness).await;
}
