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
use std::fmt;
use std::ops::Range;

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
#[derive(Debug)]
pub enum StorageError {
    /// The requested range is not (or no longer) held.
    OutOfRange {
        /// What was asked for.
        requested: Range<LogIndex>,
        /// What the store holds.
        bounds: LogBounds,
    },
    /// The call breaks the store's contract (an append that would leave a hole, say).
    InvalidArgument(String),
    /// The stored data cannot be trusted (a checksum, ordering or decoding failure).
    Corrupt(String),
    /// The underlying device or database failed.
    Io(std::io::Error),
    /// The store stopped accepting writes after an earlier failure.
    Stopped(String),
    /// The snapshot asked for is not held (it was replaced by a newer one, or never existed).
    SnapshotNotHeld {
        /// Last index of the snapshot asked for.
        last_index: LogIndex,
        /// Its term.
        last_term: Term,
    },
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::OutOfRange { requested, bounds } => write!(
                f,
                "log range {}..{} is not held (the store holds {}..={})",
                requested.start, requested.end, bounds.first, bounds.last
            ),
            StorageError::InvalidArgument(why) => write!(f, "invalid log store call: {why}"),
            StorageError::Corrupt(why) => write!(f, "log store is corrupt: {why}"),
            StorageError::Io(error) => write!(f, "log store IO error: {error}"),
            StorageError::Stopped(why) => write!(f, "log store stopped accepting writes: {why}"),
            StorageError::SnapshotNotHeld {
                last_index,
                last_term,
            } => write!(
                f,
                "the snapshot at {last_index}/{last_term} is not held (replaced or never made)"
            ),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io(error) => Some(error),
            _ => None,
        }
    }
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
