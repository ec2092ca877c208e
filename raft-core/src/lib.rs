//! raft-core: the Raft consensus protocol as a deterministic state machine, the traits that
//! connect it to storage, applications and networks, and the async runtime that drives them.
#![deny(missing_docs)]

pub mod config;
pub mod message;
pub mod network;
pub mod protocol;
pub mod state_machine;
pub mod storage;
pub mod types;
pub mod wire;

pub use config::{Config, ConfigError};
pub use message::{Lane, Message, MessageBody};
pub use network::{DeliverError, Inbound, Network, NetworkError, SendError};
pub use state_machine::{ApplyBatch, StateMachine, StateMachineError};
pub use storage::{LogBounds, LogStore, LogWrite, StorageError};
pub use types::{Entry, EntryPayload, HardState, LogIndex, NodeId, ProposalId, Term};

#[cfg(feature = "testkit")]
pub mod testkit;
