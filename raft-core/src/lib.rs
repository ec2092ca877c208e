//! raft-core: the Raft consensus protocol as a deterministic state machine, the traits that
//! connect it to storage, applications and networks, and the async runtime that drives them.
//!
//! Use it to replicate an application across a few machines so that it keeps working, and
//! never loses an acknowledged write, while a minority of them fail. You write the
//! application as a [`StateMachine`]; you pick a [`LogStore`] (`raft-storage-mem`,
//! `raft-storage-rocksdb`) and a [`Network`] (`raft-transport-tcp`, `raft-transport-quic`, or
//! the in-process [`local_network`]); [`runtime::RaftNode`] runs the rest.
//!
//! New here? The guide in the repository's `docs/guide.md` (rendered as `kv_example::guide`)
//! walks a bank ledger from its state machine to a three-node cluster over TCP with RocksDB,
//! reads, sessions, metrics ([`runtime::telemetry`]) and a test under the simulator
//! (`testkit::runtime_sim::run_workload`, with the `testkit` feature).
//!
//! # A three-node cluster in one process
//!
//! ```
//! use async_trait::async_trait;
//! use bytes::Bytes;
//! use raft_core::local_network::LocalRouter;
//! use raft_core::runtime::{RaftNode, RuntimeOptions};
//! use raft_core::{Config, LogIndex, NodeId, StateMachine, StateMachineError};
//! use raft_storage_mem::MemLogStore;
//! use std::sync::Arc;
//!
//! /// The application: a counter. Each command adds a number and answers the new total.
//! #[derive(Default)]
//! struct Counter {
//!     total: u64,
//! }
//!
//! #[async_trait]
//! impl StateMachine for Counter {
//!     async fn apply(&mut self, _index: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
//!         // A command the machine refuses is an answer, the same on every node, and the
//!         // cluster goes on. `Err` is for a machine that cannot go on: the node stops.
//!         let amount = std::str::from_utf8(&command).ok().and_then(|t| t.parse::<u64>().ok());
//!         let Some(amount) = amount else {
//!             return Ok(Bytes::from("refused: not a number"));
//!         };
//!         self.total += amount;
//!         Ok(Bytes::from(self.total.to_string()))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
//! let router = LocalRouter::new();
//! let mut nodes = Vec::new();
//! for id in &voters {
//!     let node = RaftNode::start(
//!         Config::new(*id, voters.clone()),
//!         RuntimeOptions::default(),
//!         Arc::new(MemLogStore::new()),
//!         Box::new(Counter::default()),
//!         router.network(*id),
//!     )
//!     .await?;
//!     nodes.push(node);
//! }
//!
//! // Any node takes writes: a follower forwards them to the leader.
//! assert_eq!(nodes[0].propose(Bytes::from("5")).await?, Bytes::from("5"));
//! assert_eq!(nodes[2].propose(Bytes::from("7")).await?, Bytes::from("12"));
//! // A malformed command gets its refusal; nothing stops.
//! assert_eq!(nodes[1].propose(Bytes::from("abc")).await?, Bytes::from("refused: not a number"));
//!
//! // Read the state machine on any node, as the type it was started with: `read` passes a
//! // read barrier, so it sees every write completed before it, wherever it was proposed.
//! let total = nodes[1].read(|counter: &Counter| counter.total).await?;
//! assert_eq!(total, 12);
//!
//! let leader = nodes[0].status().leader.expect("a leader was elected");
//! println!("leader: {leader}");
//! for node in &nodes {
//!     node.shutdown().await;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Snapshots and membership changes
//!
//! A state machine that can write its state out and read it back lets the node compact its
//! log (every `Config::snapshot_interval_entries` applied entries, or when asked with
//! [`runtime::RaftNode::snapshot`]) and catch up a follower that fell behind the compaction
//! point: the leader streams the snapshot in chunks, and the follower's state machine
//! installs it. Members are added as learners (a node started with no initial voters joins),
//! promoted, and removed with [`runtime::RaftNode::change_membership`]; a change of voters
//! goes through a joint configuration.
//!
//! ```
//! use async_trait::async_trait;
//! use bytes::Bytes;
//! use raft_core::local_network::LocalRouter;
//! use raft_core::runtime::{RaftNode, RuntimeOptions};
//! use raft_core::snapshot::{SnapshotMeta, SnapshotReader, SnapshotWriter};
//! use raft_core::{Config, LogIndex, MembershipChange, NodeId, StateMachine, StateMachineError};
//! use raft_storage_mem::MemLogStore;
//! use std::sync::Arc;
//!
//! /// A counter whose snapshot is its total, as 8 bytes.
//! #[derive(Default)]
//! struct Counter {
//!     total: u64,
//! }
//!
//! #[async_trait]
//! impl StateMachine for Counter {
//!     async fn apply(&mut self, _index: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
//!         self.total += command.len() as u64;
//!         Ok(Bytes::from(self.total.to_string()))
//!     }
//!
//!     async fn build_snapshot(&mut self, out: &mut SnapshotWriter) -> Result<(), StateMachineError> {
//!         out.write(&self.total.to_be_bytes()).await
//!     }
//!
//!     async fn install_snapshot(
//!         &mut self,
//!         _meta: &SnapshotMeta,
//!         data: &mut SnapshotReader,
//!     ) -> Result<(), StateMachineError> {
//!         let bytes = data.read_to_end().await?;
//!         let total: [u8; 8] = bytes.try_into().map_err(|_| StateMachineError("not 8 bytes".into()))?;
//!         self.total = u64::from_be_bytes(total);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let router = LocalRouter::new();
//! let start = |id: u64, voters: Vec<NodeId>| {
//!     let mut config = Config::new(NodeId(id), voters);
//!     config.snapshot_tail_entries = 0; // keep no log below a snapshot
//!     RaftNode::start(
//!         config,
//!         RuntimeOptions::default(),
//!         Arc::new(MemLogStore::new()),
//!         Box::new(Counter::default()),
//!         router.network(NodeId(id)),
//!     )
//! };
//! let first = start(1, vec![NodeId(1)]).await?;
//! first.propose(Bytes::from("abc")).await?;
//! let snapshot = first.snapshot().await?; // the log before it is purged
//! println!("snapshot at {} of {} bytes", snapshot.last_index, snapshot.data_bytes);
//!
//! // Node 2 starts with no voters and joins: it catches up from the snapshot as a learner,
//! // then becomes a voter.
//! let second = start(2, Vec::new()).await?;
//! first.change_membership(MembershipChange::add_learner(NodeId(2))).await?;
//! first.wait_caught_up(NodeId(2), std::time::Duration::from_secs(5)).await?;
//! let members = first.change_membership(MembershipChange::promote(NodeId(2))).await?;
//! assert_eq!(members.voters.len(), 2);
//! assert_eq!(first.propose(Bytes::from("de")).await?, Bytes::from("5"));
//! second.wait_applied(first.status().commit_index).await?;
//! # first.shutdown().await;
//! # second.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # The protocol and its IO contract
//!
//! The protocol lives in a crate of its own, raft-proto, which depends on no async runtime
//! and no IO crate (the `boundary` test checks its dependency graph). raft-core re-exports it
//! under the paths it always had: [`protocol`], [`types`], [`membership`], [`message`],
//! [`config`], the crate-root names such as [`Config`] and [`Entry`], and [`LogWrite`] and
//! [`SnapshotMeta`] in [`storage`] and [`snapshot`].
//!
//! raft-proto's crate docs write the [IO contract](raft_proto#the-io-contract) once: what
//! whoever drives a [`protocol::RawNode`] must do with each [`protocol::Ready`], and in which
//! order, to keep committed data safe. [`runtime::RaftNode`] is that driver here: it persists
//! through [`LogStore::write`], sends through the [`Network`], applies to the
//! [`StateMachine`] behind a [`sessions::SessionTable`] (step 5), installs a snapshot only
//! once [`snapshot::SnapshotFormatError::check`] passes and records
//! [`StateMachine::snapshot_format_version`] in the meta of each one it builds (step 7).
//! `testkit::sim` carries out the same contract through the same [`protocol::plan`] pieces
//! under faults, so one seed replays a whole cluster bit for bit.
#![deny(missing_docs)]

pub mod local_network;
pub mod network;
pub mod runtime;
pub mod sessions;
pub mod snapshot;
pub mod state_machine;
pub mod storage;
pub mod wire;

// The protocol and its data live in raft-proto; these keep every `raft_core::` path to them.
pub use raft_proto::{config, membership, message, protocol, types};

#[cfg(feature = "transport-kit")]
pub mod transport_kit;

pub use config::{Config, ConfigError};
pub use membership::{Membership, MembershipChange, MembershipError, NodeMeta};
pub use message::{Lane, Message, MessageBody};
pub use network::{DeliverError, Inbound, Network, NetworkError, SendError};
pub use snapshot::{
    SnapshotFormatError, SnapshotMeta, SnapshotReader, SnapshotSink, SnapshotWriter,
};
pub use state_machine::{ApplyBatch, StateMachine, StateMachineError};
pub use storage::{LogBounds, LogStore, LogWrite, StorageError, StoreStopped};
pub use types::{
    Entry, EntryPayload, HardState, Incarnation, LogIndex, NodeId, ProposalId, SessionCommand,
    SessionId, SessionTag, Term,
};

#[cfg(feature = "testkit")]
pub mod testkit;
