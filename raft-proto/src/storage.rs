//! What the protocol asks of storage, as data: one [`LogWrite`] per ready.
//!
//! The protocol keeps the live part of the log in memory and hands the driver the writes
//! that make it durable; the driver's store carries them out, in the order the
//! [IO contract](crate#the-io-contract) gives, and reports them with
//! [`RawNode::persisted`](crate::protocol::RawNode::persisted). raft-core's `storage` module
//! holds the async `LogStore` trait that does this, and re-exports [`LogWrite`].

use crate::types::{Entry, HardState, LogIndex};

/// One ordered group of writes the protocol asks for in a single step. A store should make
/// it durable with one sync (raft-core's default `LogStore::write` applies the parts in
/// order, one call each).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogWrite {
    /// Remove every entry at or after this index first (a conflicting suffix).
    pub truncate_from: Option<LogIndex>,
    /// Then append these entries; the first follows the last kept entry.
    pub entries: Vec<Entry>,
    /// Then save this hard state.
    pub hard_state: Option<HardState>,
}

impl LogWrite {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.truncate_from.is_none() && self.entries.is_empty() && self.hard_state.is_none()
    }
}
