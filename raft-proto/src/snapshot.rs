//! What a snapshot is, as data: [`SnapshotMeta`] and the checksum it records.
//!
//! A snapshot is the state machine's applied state at one log index, a byte stream plus this
//! meta. The protocol decides when one is built, sent, received and installed (see
//! [`Ready::build_snapshot`](crate::protocol::Ready::build_snapshot) and
//! [`Ready::install_snapshot`](crate::protocol::Ready::install_snapshot)) and never holds the
//! data itself: the bytes live in the driver's store and state machine. raft-core's
//! `snapshot` module adds the async sink, writer and reader that move them, and re-exports
//! these items under the same names.

use crate::membership::Membership;
use crate::types::{LogIndex, Term};
use serde::{Deserialize, Serialize};

/// What a snapshot covers and how to check its data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last log index whose effect the snapshot holds.
    pub last_index: LogIndex,
    /// The term of that entry.
    pub last_term: Term,
    /// The membership in force at `last_index`.
    pub membership: Membership,
    /// Length of the data in bytes.
    pub data_bytes: u64,
    /// CRC-32 (IEEE) of the data ([`checksum`]).
    pub checksum: u32,
    /// The format of the state machine's part of the data, as the state machine said when the
    /// snapshot was built (raft-core's `StateMachine::snapshot_format_version`). A node
    /// installs the snapshot only when its state machine installs that format
    /// (`StateMachine::installs_snapshot_format`).
    pub format_version: u32,
}

impl SnapshotMeta {
    /// True when `other` describes the same data: a transfer of one can resume with the other.
    pub fn same_snapshot(&self, other: &SnapshotMeta) -> bool {
        (
            self.last_index,
            self.last_term,
            self.data_bytes,
            self.checksum,
            self.format_version,
        ) == (
            other.last_index,
            other.last_term,
            other.data_bytes,
            other.checksum,
            other.format_version,
        )
    }
}

/// The CRC-32 (IEEE) that [`SnapshotMeta::checksum`] holds, computed over `data` at once.
pub fn checksum(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}
