//! The `LogStore` trait: where a node keeps its log and hard state.
//!
//! The protocol keeps the live part of the log (everything after the last compaction point) in
//! memory, as etcd does with its `MemoryStorage`; the store is the durable copy. The runtime
//! writes to the store in the order the protocol asks, and reads from it only at start-up (and,
//! for a lagging follower, when the entries it needs have left the protocol's memory).

use crate::snapshot::{SnapshotMeta, SnapshotSink};
use crate::types::{Entry, HardState, LogIndex, Term};
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;

// The writes the protocol asks for, as data: defined in raft-proto, with the protocol.
pub use raft_proto::storage::LogWrite;

pub mod validate;

/// The first and last index a store holds.
///
/// Invariant: `first <= last + 1`; an empty log has `last = first - 1`. Entries
/// `first..=last` are all present (the log never has holes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogBounds {
    /// The first index still held (1 for a log that was never purged).
    pub first: LogIndex,
    /// The last index held (0 for a log that was never written).
    pub last: LogIndex,
}

impl LogBounds {
    /// Bounds of a store that holds nothing and was never purged.
    pub const EMPTY: LogBounds = LogBounds {
        first: LogIndex(1),
        last: LogIndex(0),
    };

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }
}

/// Why a store failed. A store that returns an error must not have acknowledged anything it did
/// not write; the runtime stops the node (fail-stop) on any error from a write.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The requested range is not (or no longer) held.
    #[error(
        "log range {}..{} is not held (the store holds {}..={})",
        requested.start, requested.end, bounds.first, bounds.last
    )]
    OutOfRange {
        /// What was asked for.
        requested: Range<LogIndex>,
        /// What the store holds.
        bounds: LogBounds,
    },
    /// The call breaks the store's contract (an append that would leave a hole, say).
    #[error("invalid log store call: {0}")]
    InvalidArgument(String),
    /// The stored data cannot be trusted (a checksum, ordering or decoding failure).
    #[error("log store is corrupt: {0}")]
    Corrupt(String),
    /// The underlying device or database failed.
    #[error("log store IO error: {0}")]
    Io(#[source] std::io::Error),
    /// The store stopped accepting writes, for the reason given.
    #[error("log store stopped accepting writes: {0}")]
    Stopped(#[source] StoreStopped),
    /// The snapshot asked for is not held (it was replaced by a newer one, or never existed).
    #[error("the snapshot at {last_index}/{last_term} is not held (replaced or never made)")]
    SnapshotNotHeld {
        /// Last index of the snapshot asked for.
        last_index: LogIndex,
        /// Its term.
        last_term: Term,
    },
}

/// Why a store (or one of its snapshot sinks) takes no more calls: the cause carried by
/// [`StorageError::Stopped`]. Cheap to clone, so a stopped store can hand the same cause to
/// every later caller.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreStopped {
    /// An earlier call failed with this error and the store stopped there (fail-stop), so
    /// that nothing after the failure is acknowledged.
    #[error("an earlier call failed: {0}")]
    Failed(#[source] Arc<StorageError>),
    /// A thread or task of the store that carries out calls ended (it panicked, or its
    /// runtime shut down) before it answered.
    #[error("a worker of the store ended before it answered")]
    WorkerEnded,
    /// This handle belongs to a life of the store that has ended: in the test kit's
    /// simulation, the process that held it crashed.
    #[error("the store's life ended (its process crashed)")]
    LifeEnded,
    /// This snapshot sink failed or was finished earlier; a new snapshot needs a new sink
    /// ([`LogStore::begin_snapshot`]).
    #[error("this snapshot sink failed or was finished earlier")]
    SinkSpent,
}

impl From<std::io::Error> for StorageError {
    fn from(error: std::io::Error) -> Self {
        StorageError::Io(error)
    }
}

/// Durable storage for one node's log and hard state.
///
/// Every method that writes must have made its effect durable (it survives power loss) when it
/// returns `Ok`; the runtime relies on this before it sends a vote or acknowledges entries. Calls
/// may come concurrently from several tasks (a store may coalesce them into one sync); the
/// runtime never issues two writes whose order matters at the same time.
///
/// The contract is checked by `raft_core::testkit::log_store_suite` (feature `testkit`): run
/// it against any new store.
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Appends `entries`, which are consecutive and start at `bounds().last + 1` (or, on an
    /// empty purged store, at `bounds().first`). Durable on return.
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError>;

    /// Removes every entry at or after `from` (a conflicting suffix). `from` must be above the
    /// purge point. Durable on return; a crash part-way leaves either the old or the new log,
    /// never a hole.
    async fn truncate(&self, from: LogIndex) -> Result<(), StorageError>;

    /// Removes every entry at or before `up_to` (a prefix covered by a snapshot). Purging past
    /// the last entry empties the log and the next append starts at `up_to + 1`. Need not be
    /// durable on return: a crash may bring back purged entries, never lose others.
    async fn purge(&self, up_to: LogIndex) -> Result<(), StorageError>;

    /// Reads the entries in `range` (end exclusive), all of which must be held.
    async fn entries(&self, range: Range<LogIndex>) -> Result<Vec<Entry>, StorageError>;

    /// The first and last index held.
    async fn bounds(&self) -> Result<LogBounds, StorageError>;

    /// Saves the hard state. Durable on return.
    async fn save_hard_state(&self, hard_state: &HardState) -> Result<(), StorageError>;

    /// Loads the last saved hard state, or the default for a new store.
    async fn load_hard_state(&self) -> Result<HardState, StorageError>;

    /// Starts writing a snapshot (built here, or received from the leader). Several may be
    /// written at once; nothing is visible until [`SnapshotSink::finish`].
    async fn begin_snapshot(&self) -> Result<Box<dyn SnapshotSink>, StorageError>;

    /// The latest complete snapshot, if any. It only moves forward: a finished snapshot at the
    /// same or a lower index than the latest never replaces it.
    async fn snapshot(&self) -> Result<Option<SnapshotMeta>, StorageError>;

    /// Reads at most `bytes_max` bytes of the snapshot `meta` from `offset` (fewer only at the
    /// end). Fails with [`StorageError::SnapshotNotHeld`] when that snapshot is gone; a store
    /// keeps at least the latest one.
    async fn read_snapshot(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        bytes_max: usize,
    ) -> Result<Bytes, StorageError>;

    /// Applies one group of writes in order: truncate, append, hard state. Durable on return.
    /// Stores should override this to make the group one atomic, synced write.
    async fn write(&self, write: &LogWrite) -> Result<(), StorageError> {
        if let Some(from) = write.truncate_from {
            self.truncate(from).await?;
        }
        if !write.entries.is_empty() {
            self.append(&write.entries).await?;
        }
        if let Some(hard_state) = &write.hard_state {
            self.save_hard_state(hard_state).await?;
        }
        Ok(())
    }
}
