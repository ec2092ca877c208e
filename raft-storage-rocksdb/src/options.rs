//! The limits of a store, validated when it opens.

use raft_core::StorageError;

/// Limits and tuning of a [`RocksLogStore`](crate::RocksLogStore). Every limit is checked when
/// the store opens; a zero limit is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RocksLogStoreOptions {
    /// Entries one synced write batch may carry. The writer coalesces queued calls into one
    /// batch until the next call would pass this (a single larger call still goes alone).
    pub group_commit_entries_max: usize,
    /// Encoded bytes one synced write batch may carry, with the same rule.
    pub group_commit_bytes_max: usize,
    /// Calls queued and not yet written. A call beyond this is refused with
    /// `InvalidArgument` and changes nothing: a caller that pipelines must keep fewer writes in
    /// flight.
    pub queue_writes_max: usize,
    /// Encoded bytes queued and not yet written, with the same rule. A single call larger than
    /// this is always refused.
    pub queue_bytes_max: usize,
    /// The limits of the snapshot files beside the database.
    pub snapshots: SnapshotOptions,
}

impl Default for RocksLogStoreOptions {
    fn default() -> Self {
        RocksLogStoreOptions {
            group_commit_entries_max: 16 * 1024,
            group_commit_bytes_max: 16 * 1024 * 1024,
            queue_writes_max: 4096,
            queue_bytes_max: 256 * 1024 * 1024,
            snapshots: SnapshotOptions::default(),
        }
    }
}

impl RocksLogStoreOptions {
    /// Checks every limit; the error names the first bad one.
    pub fn validate(&self) -> Result<(), StorageError> {
        positive("group_commit_entries_max", self.group_commit_entries_max)?;
        positive("group_commit_bytes_max", self.group_commit_bytes_max)?;
        positive("queue_writes_max", self.queue_writes_max)?;
        positive("queue_bytes_max", self.queue_bytes_max)?;
        self.snapshots.validate()
    }
}

/// Limits of [`SnapshotFiles`](crate::SnapshotFiles).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// The largest chunk a writer accepts, and the size of the chunks a reader returns.
    pub snapshot_chunk_bytes_max: usize,
    /// The largest membership blob a snapshot may carry.
    pub snapshot_membership_bytes_max: usize,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            snapshot_chunk_bytes_max: 1024 * 1024,
            snapshot_membership_bytes_max: 1024 * 1024,
        }
    }
}

impl SnapshotOptions {
    /// Checks every limit; the error names the first bad one.
    pub fn validate(&self) -> Result<(), StorageError> {
        positive("snapshot_chunk_bytes_max", self.snapshot_chunk_bytes_max)?;
        positive(
            "snapshot_membership_bytes_max",
            self.snapshot_membership_bytes_max,
        )?;
        // The membership length is stored in 4 bytes.
        if self.snapshot_membership_bytes_max > u32::MAX as usize {
            return Err(StorageError::InvalidArgument(format!(
                "snapshot_membership_bytes_max is {} but the format stores at most {}",
                self.snapshot_membership_bytes_max,
                u32::MAX
            )));
        }
        Ok(())
    }
}

fn positive(name: &str, value: usize) -> Result<(), StorageError> {
    if value == 0 {
        return Err(StorageError::InvalidArgument(format!(
            "{name} must be at least 1"
        )));
    }
    Ok(())
}
