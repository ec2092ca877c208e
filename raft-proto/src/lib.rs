//! raft-proto: the Raft consensus protocol as a deterministic state machine, with no IO.
//!
//! A [`protocol::RawNode`] is one member of a Raft cluster. It never touches a disk, a socket
//! or a clock: its inputs are ticks, peers' messages, proposals and acknowledgements of the
//! work it asked for, and its output is a [`protocol::Ready`], a batch of entries and hard
//! state to make durable, messages to send, committed entries to apply and answers to give.
//! Whoever drives it does the IO, following the [IO contract](#the-io-contract) below.
//!
//! Use this crate to drive the protocol yourself: with your own event loop, thread or async
//! runtime, or in a simulation where one seed replays a whole cluster bit for bit. Most
//! applications want raft-core instead, which re-exports everything here under the same
//! paths (`raft_core::protocol`, `raft_core::types`, `raft_core::Config`, ...) and adds the
//! async `LogStore`, `StateMachine` and `Network` traits, a tokio runtime (`RaftNode`) that
//! carries out this contract, and a test kit.
//!
//! The boundary is enforced, not only promised: this crate depends on no async runtime, no
//! `async-trait` and no IO crate, and raft-core's `boundary` test fails when its dependency
//! graph (`cargo tree -p raft-proto -e normal`) gains tokio or async-trait. Time reaches the
//! protocol only through [`protocol::RawNode::tick`] and randomness only through the seed in
//! [`Config`]. The one exception to "no OS randomness" is [`SessionId::random`], which the
//! protocol never calls: it is for clients picking a session.
//!
//! # Three nodes driven by hand
//!
//! Each node keeps its disk in a `Vec` and its state machine in another; messages go from
//! one node to the next through a loop. The numbers in the comments are the steps of the
//! contract below.
//!
//! ```
//! use bytes::Bytes;
//! use raft_proto::protocol::plan::{ReadyPlan, WriteGroup, WriteStep};
//! use raft_proto::protocol::{RawNode, Restore, Role};
//! use raft_proto::{Config, Entry, EntryPayload, HardState, LogIndex, Message, NodeId, ProposalId};
//!
//! /// One node and its IO: a disk (log and hard state) and a state machine (the commands).
//! struct Host {
//!     node: RawNode,
//!     log: Vec<Entry>,
//!     hard_state: HardState,
//!     applied: Vec<Bytes>,
//! }
//!
//! impl Host {
//!     fn new(id: NodeId, voters: &[NodeId]) -> Host {
//!         let config = Config::new(id, voters.to_vec());
//!         let node = RawNode::new(config, Restore::default()).expect("a valid config");
//!         Host { node, log: Vec::new(), hard_state: HardState::default(), applied: Vec::new() }
//!     }
//!
//!     /// Carries out every ready the node has, in the contract's order, and returns the
//!     /// messages to deliver.
//!     fn drive(&mut self) -> Vec<Message> {
//!         let mut outbox = Vec::new();
//!         while self.node.has_ready() {
//!             let plan = ReadyPlan::new(self.node.ready());
//!             outbox.extend(plan.send_now); // 1
//!             if let Some(job) = plan.write {
//!                 let group = WriteGroup::merge([job]);
//!                 for step in group.steps {
//!                     // 2 (a real store syncs before going on)
//!                     let WriteStep::Log(write) = step else {
//!                         unreachable!("no snapshots in this example: {step:?}")
//!                     };
//!                     if let Some(from) = write.truncate_from {
//!                         self.log.retain(|entry| entry.index < from);
//!                     }
//!                     self.log.extend(write.entries);
//!                     self.hard_state = write.hard_state.unwrap_or(self.hard_state);
//!                 }
//!                 outbox.extend(group.release); // 3
//!                 self.node.persisted(group.persisted); // 4
//!             }
//!             for committed in plan.apply {
//!                 // 5
//!                 if let EntryPayload::Command(command) = committed.entry.payload {
//!                     self.applied.push(command);
//!                 }
//!                 self.node.applied(committed.entry.index);
//!             }
//!             assert!(plan.failed_proposals.is_empty(), "6: nothing fails here");
//!             assert!(plan.snapshot_chunks.is_empty() && plan.install_snapshot.is_none());
//!         }
//!         outbox
//!     }
//! }
//!
//! /// Drives every node and delivers every message until none is left.
//! fn settle(hosts: &mut [Host]) {
//!     loop {
//!         let messages: Vec<Message> = hosts.iter_mut().flat_map(Host::drive).collect();
//!         if messages.is_empty() {
//!             return;
//!         }
//!         for message in messages {
//!             let to = hosts.iter_mut().find(|host| host.node.id() == message.to);
//!             to.expect("a member").node.step(message);
//!         }
//!     }
//! }
//!
//! let voters = [NodeId(1), NodeId(2), NodeId(3)];
//! let mut hosts: Vec<Host> = voters.iter().map(|id| Host::new(*id, &voters)).collect();
//! hosts[0].node.campaign(); // as if its election timeout had passed
//! settle(&mut hosts);
//! assert_eq!(hosts[0].node.role(), Role::Leader);
//!
//! hosts[0].node.propose(ProposalId(1), Bytes::from_static(b"x=1"));
//! settle(&mut hosts);
//! for host in &hosts {
//!     assert_eq!(host.applied, [Bytes::from_static(b"x=1")]);
//!     assert_eq!(host.log.len(), 2, "the leader's blank entry, then the command");
//!     assert_eq!(host.hard_state.term, host.node.term(), "the term on disk");
//! }
//!
//! // A node restarts from what its disk holds (its state machine here starts empty, so it
//! // applies the log again).
//! let disk = &hosts[2];
//! let restore = Restore {
//!     hard_state: disk.hard_state,
//!     entries: disk.log.clone(),
//!     snapshot: None,
//!     applied: LogIndex(0),
//! };
//! let restarted = RawNode::new(Config::new(NodeId(3), voters.to_vec()), restore)?;
//! assert_eq!(restarted.term(), hosts[0].node.term());
//! assert_eq!(restarted.last_index(), LogIndex(2));
//! # Ok::<(), raft_proto::protocol::StartError>(())
//! ```
//!
//! # The IO contract
//!
//! Each call to [`protocol::RawNode::ready`] returns a [`protocol::Ready`], and whoever drives
//! the protocol must, for every ready:
//!
//! 1. **Send** `ready.messages` at once. They are a leader's appends and heartbeats, which
//!    promise nothing about local durability, so a leader replicates in parallel with its own
//!    disk write.
//! 2. **Persist** `ready.write` (a [`LogWrite`]): truncate the conflicting suffix, append the
//!    entries, save the hard state. Writes are made durable in `ready.number` order; they may
//!    be merged (group commit). A write marked `ready.write_may_wait` may be held back, for a
//!    bounded time, to share a sync with a later one.
//! 3. **Then send** `ready.messages_after_write`: votes and acknowledgements of entries. A
//!    vote must never leave before the hard state that records it is durable, and a follower
//!    must never acknowledge an entry it could lose in a crash.
//! 4. **Acknowledge** with [`protocol::RawNode::persisted`]`(ready.number)`. Only now does a
//!    leader count its own copy of the entries toward a majority.
//! 5. **Apply** `ready.committed` to the state machine in order, answer the proposer of each
//!    entry that carries a proposal ID, and report progress with
//!    [`protocol::RawNode::applied`]. Committed entries are handed out only once they are
//!    durable locally, so a restarted node never has applied state beyond its log.
//!    An [`EntryPayload::SessionCommand`] passes a session table first: only the first copy
//!    of each (session, sequence) reaches the state machine, and later copies are answered
//!    from the table (raft-core's `sessions::SessionTable`, which its runtime applies for
//!    every machine).
//! 6. **Fail** each proposal in `ready.failed_proposals` with its error;
//!    [`protocol::ProposeError::is_definite`] says whether the command may still apply.
//! 7. **Snapshots**: before step 2, write `ready.snapshot_writes` into a store sink (the last
//!    one finishes it) and purge the log up to `ready.purge_to`; fill each message of
//!    `ready.snapshot_chunks` with its bytes from the store and send it; before step 5, install
//!    `ready.install_snapshot` in the state machine, once it says it reads the snapshot's
//!    format ([`SnapshotMeta::format_version`]); after step 5, build `ready.build_snapshot`,
//!    record the format version the machine wrote in its meta and report it with
//!    [`protocol::RawNode::snapshot_built`].
//! 8. **Reads and transfers**: answer each `(id, index)` of `ready.reads` once the state
//!    machine has applied `index`, fail those of `ready.failed_reads`, and tell whoever asked
//!    for a leadership transfer of `ready.transfer_failed`.
//!
//! A leader may send its appends before its own write is durable (step 1 before step 2); it
//! counts itself toward a commit majority only once step 4 says the entries are durable. No
//! message that carries a term ever leaves before that term is durable: a leader elected within
//! one step (a single voter) or before its candidate write was acknowledged finds its appends
//! in `messages_after_write`. Forwards and read requests promise nothing and never wait.
//!
//! [`protocol::plan`] holds these decisions as pure functions (which part of a ready goes
//! where, how queued writes merge into one group, where snapshot data goes); raft-core's
//! runtime and its simulator both carry readies out through them, as the example above does,
//! so what the simulator proves of the order holds for the code that runs in production.
//!
//! # What is here
//!
//! - [`protocol`]: [`protocol::RawNode`], [`protocol::Ready`], and [`protocol::plan`].
//! - [`types`], [`membership`], [`message`], [`config`]: the plain data the protocol reads
//!   and writes (log entries, terms, memberships, messages, its configuration).
//! - [`storage`] and [`snapshot`]: what the protocol asks of storage, as data
//!   ([`LogWrite`], [`SnapshotMeta`]); the traits that carry it out are raft-core's.
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
