//! raft-proto: the Raft protocol as a deterministic state machine, with no IO.
#![deny(missing_docs)]

pub mod config;
pub mod membership;
pub mod message;
pub mod protocol;
pub mod snapshot;
pub mod storage;
pub mod types;

pub use config::{Config, ConfigError};
pub use membership::{Membership, MembershipChange, MembershipError, NodeMeta};
pub use message::{Lane, Message, MessageBody};
pub use snapshot::SnapshotMeta;
pub use storage::LogWrite;
pub use types::{
    Entry, EntryPayload, HardState, Incarnation, LogIndex, NodeId, ProposalId, SessionCommand,
    SessionId, SessionTag, Term,
};
