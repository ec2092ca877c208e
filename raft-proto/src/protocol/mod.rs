//! The Raft protocol as a deterministic state machine, with no IO of any kind.
//!
//! A [`RawNode`] takes four kinds of input — [`RawNode::tick`], [`RawNode::step`] (a peer's
//! message), [`RawNode::propose`] (a client command) and the acknowledgements
//! [`RawNode::persisted`] / [`RawNode::applied`] — and hands back its work as a [`Ready`]:
//! what to write to the log store, which messages to send (and which of them must wait for
//! that write), which committed entries to apply, and which proposals failed. Time is counted
//! in ticks and randomness comes from a generator seeded by the configuration, so the same
//! inputs always give the same outputs: one seed replays a whole simulated cluster.
//!
//! Handling a `Ready` follows the [IO contract](crate#the-io-contract), written once in the
//! crate docs with the ordering rules that keep committed data safe; [`plan`] holds its
//! decisions as pure functions, which raft-core's runtime (`raft_core::runtime`) and its
//! simulator share.
//!
//! # Reads without the log
//!
//! Linearizable reads need no log entry (Raft thesis §6.4): ReadIndex, lease reads,
//! and follower reads.
//!
//! A read gets a *read index*: a commit index that is at least as new as every write that
//! completed before the read began. The runtime serves the read from the state machine once
//! it has applied that far. The leader finds it as follows:
//! 1. it must have committed an entry of its own term (until then its commit index may be
//!    stale, so reads wait);
//! 2. it records its commit index and sends a heartbeat round tagged with a sequence number;
//! 3. once a majority (itself included) answered that round or a later one, no other leader
//!    can have existed when the round left, and the recorded index is the read index.
//!
//! Every read registered before a round leaves shares that round, so concurrent reads cost one
//! round. With `lease_reads`, a leader whose last confirmed round left less than
//! `read_lease_ticks` ago answers at once: followers refuse to vote for
//! `election_timeout_ticks_min` after hearing from it, so no new leader can exist yet. This
//! assumes that `read_lease_ticks` ticks of the leader's clock always end before
//! `election_timeout_ticks_min - 1` ticks of any follower's clock (ticks are whole steps, hence
//! the one tick less): with the defaults, 11 and 15, clock rates may differ by up to about 27%.
//! The simulator checks lease reads with node clocks that differ by up to 20%.
//!
//! A leader that begins a leadership transfer gives up its lease for the rest of its term and
//! confirms every later read with a round: the target campaigns with voters setting their
//! lease promise aside (possibly much later, if `TimeoutNow` is delayed), and followers whose
//! forwards it refuses forget it as leader; in both cases a new leader can be elected and
//! commit without this one hearing of it within its lease.

mod deferral;
mod election;
mod log;
mod members;
pub mod plan;
mod progress;
mod proposals;
mod reads;
mod replication;
mod rng;
mod snapshots;
mod transfer;

pub use progress::ReplicationState;
pub use proposals::ProposeError;
pub use snapshots::{SnapshotRequest, SnapshotWrite};
pub use transfer::TransferError;

use crate::config::{Config, ConfigError};
use crate::membership::Membership;
use crate::message::{Message, MessageBody, Promise};
use crate::snapshot::SnapshotMeta;
use crate::storage::LogWrite;
use crate::types::{Entry, HardState, LogIndex, NodeId, ProposalId, Term};
use bytes::Bytes;
use log::RaftLog;
use progress::Progress;
use proposals::Proposals;
use reads::Reads;
use rng::Rng;
use std::collections::{BTreeMap, VecDeque};

/// A node's role in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks whether it could win an election, without raising its term (PreVote).
    PreCandidate,
    /// Runs for election in its current term.
    Candidate,
    /// Leads its term: the only node that appends new entries.
    Leader,
}

/// What a node needs from storage to start: the durable state written by earlier runs.
#[derive(Clone, Debug, Default)]
pub struct Restore {
    /// The last saved hard state.
    pub hard_state: HardState,
    /// The latest snapshot the store holds, if any.
    pub snapshot: Option<SnapshotMeta>,
    /// The entries the store holds, in order, without holes: from index 1, or from anywhere
    /// up to the entry after the snapshot. Entries at or below the snapshot must match it (the
    /// one at its index has its term); the driver drops them otherwise.
    pub entries: Vec<Entry>,
    /// The last index the state machine already holds (entries up to it are not re-applied).
    /// At least the snapshot's index: install the snapshot first when the machine is behind.
    pub applied: LogIndex,
}

/// Why [`RawNode::new`] refused to start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// What storage restored does not fit together.
    #[error(transparent)]
    Restore(#[from] RestoreError),
}

/// Durable state whose parts do not fit together: the store lost or mixed up entries (a
/// corrupt log), or the [`Restore`] was put together wrongly. Found before anything is
/// changed. [`RawNode::new`] checks a [`Restore`]; the runtime also checks what it reads
/// from the store before it builds one (the variants that say so).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// Two neighbouring entries are not at consecutive indexes.
    #[error("the restored log has a hole between {before} and {after}")]
    LogHole {
        /// The index of the entry before the hole.
        before: LogIndex,
        /// The index of the entry after it.
        after: LogIndex,
    },
    /// The log starts after index 1 and no snapshot covers the entries before it.
    #[error("the restored log starts at {first} but no snapshot covers the entries before it")]
    NoSnapshotBeforeLog {
        /// The first index the log holds.
        first: LogIndex,
    },
    /// The log starts past the entry that follows the snapshot.
    #[error(
        "the restored log starts at {first}, after the snapshot at {snapshot}: entries are missing"
    )]
    EntriesMissingAfterSnapshot {
        /// The first index the log holds.
        first: LogIndex,
        /// The snapshot's last index.
        snapshot: LogIndex,
    },
    /// The log reaches the snapshot's index but does not hold its entry there.
    #[error("the restored log does not hold the snapshot's entry {index}/{term}")]
    SnapshotEntryMissing {
        /// The snapshot's last index.
        index: LogIndex,
        /// The snapshot's last term.
        term: Term,
    },
    /// The runtime's check of the store: the log's entry at the snapshot's index has another
    /// term, and the hard state says entries past it were committed, so the log cannot be
    /// cut back to the snapshot (below the commit index, that would be the leftover of an
    /// interrupted install, which the runtime drops).
    #[error("the log disagrees with the snapshot at {index}, below the commit index {commit}")]
    SnapshotConflictBelowCommit {
        /// The snapshot's last index.
        index: LogIndex,
        /// The hard state's commit index.
        commit: LogIndex,
    },
    /// The hard state's commit index is past the last entry restored.
    #[error("the restored commit index {commit} is beyond the last entry {last}")]
    CommitBeyondLog {
        /// The hard state's commit index.
        commit: LogIndex,
        /// The last index restored (log or snapshot).
        last: LogIndex,
    },
    /// The state machine is behind the snapshot: it must install the snapshot first.
    #[error(
        "the state machine applied up to {applied}, below the snapshot at {snapshot}: install \
         the snapshot first"
    )]
    AppliedBelowSnapshot {
        /// The state machine's applied index.
        applied: LogIndex,
        /// The snapshot's last index.
        snapshot: LogIndex,
    },
    /// The runtime's check of the store: the state machine holds entries the log and the
    /// snapshot do not.
    #[error("the state machine applied up to {applied} but the log ends at {last}")]
    AppliedBeyondLog {
        /// The state machine's applied index.
        applied: LogIndex,
        /// The last index the log (or, past it, the snapshot) holds.
        last: LogIndex,
    },
}

/// A committed entry to apply, with the proposal it answers when this node proposed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedEntry {
    /// The entry.
    pub entry: Entry,
    /// The local proposal this entry carries, whose proposer awaits the result.
    pub proposal: Option<ProposalId>,
}

/// One batch of work for the runtime. See the [module documentation](self) for the order.
#[derive(Debug, Default)]
pub struct Ready {
    /// Sequence number to pass to [`RawNode::persisted`] once `write` is durable.
    pub number: u64,
    /// What to make durable.
    pub write: LogWrite,
    /// Messages that may be sent at once: they promise nothing, or only a term that is
    /// already durable ([`Promise`]).
    pub messages: Vec<Message>,
    /// Messages that may be sent only once `write` (and every earlier ready's) is durable.
    pub messages_after_write: Vec<Message>,
    /// Committed, locally durable entries to apply, in order.
    pub committed: Vec<CommittedEntry>,
    /// Proposals that failed, with the reason.
    pub failed_proposals: Vec<(ProposalId, ProposeError)>,
    /// Reads whose read index is known: serve each once the state machine has applied it.
    pub reads: Vec<(ProposalId, LogIndex)>,
    /// Reads that failed, with the reason.
    pub failed_reads: Vec<(ProposalId, ProposeError)>,
    /// A leadership transfer that was abandoned (the leader resumed).
    pub transfer_failed: Option<TransferError>,
    /// Received snapshot data to write to the store before `write` (and before purging).
    pub snapshot_writes: Vec<SnapshotWrite>,
    /// Purge the stored log up to this index, after `snapshot_writes` and before `write`.
    pub purge_to: Option<LogIndex>,
    /// Snapshot chunks to send, without their bytes: read `len` bytes at `offset` of the
    /// snapshot `meta` from the store into `data`, then send. Drop a chunk whose snapshot the
    /// store no longer holds; the leader resends.
    pub snapshot_chunks: Vec<Message>,
    /// A durable received snapshot for the state machine to install, before `committed`;
    /// report it with [`RawNode::snapshot_installed`].
    pub install_snapshot: Option<SnapshotMeta>,
    /// Build a snapshot once everything handed out so far is applied, then report it with
    /// [`RawNode::snapshot_built`].
    pub build_snapshot: Option<SnapshotRequest>,
    /// The write may wait for a later ready's, to share one sync with it: a leader's plain
    /// append of entries whose appends have not yet gone to every follower it pipelines to, so
    /// its own sync is not yet what a commit waits for. An IO layer may hold such a write back
    /// for a bounded time (the runtime's `leader_write_delay_max`), but never past a ready
    /// whose write may not wait: that one takes every held write with it. Ignoring the hint
    /// is always correct.
    pub write_may_wait: bool,
}

impl Ready {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.write.is_empty()
            && self.messages.is_empty()
            && self.messages_after_write.is_empty()
            && self.committed.is_empty()
            && self.failed_proposals.is_empty()
            && self.reads.is_empty()
            && self.failed_reads.is_empty()
            && self.transfer_failed.is_none()
            && self.snapshot_writes.is_empty()
            && self.purge_to.is_none()
            && self.snapshot_chunks.is_empty()
            && self.install_snapshot.is_none()
            && self.build_snapshot.is_none()
    }
}

/// A leader's view of one follower, for status displays.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerProgress {
    /// The follower.
    pub id: NodeId,
    /// Highest index known to be replicated there.
    pub match_index: LogIndex,
    /// Next index the leader will send.
    pub next_index: LogIndex,
    /// Probing or pipelining.
    pub pipelined: bool,
    /// Appends in flight.
    pub inflight_messages: usize,
    /// Bytes in flight.
    pub inflight_bytes: usize,
    /// A snapshot being sent to it: (bytes it acknowledged, total bytes).
    pub snapshot_sent: Option<(u64, u64)>,
    /// True for a learner.
    pub learner: bool,
}

/// A snapshot of a node's state, for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// The life it runs in ([`crate::Incarnation`]); compare with
    /// `membership.incarnation_of(id)`: until they agree (and it is not `rejoining`), this
    /// node restarted without its state and has not rejoined yet.
    pub incarnation: crate::Incarnation,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// The leader it knows for this term, if any.
    pub leader: Option<NodeId>,
    /// Highest committed index it knows.
    pub commit_index: LogIndex,
    /// Highest index its state machine applied.
    pub applied_index: LogIndex,
    /// Its last log index.
    pub last_index: LogIndex,
    /// Highest index durable in its store.
    pub persisted_index: LogIndex,
    /// The voters (in a joint configuration, the incoming ones).
    pub voters: Vec<NodeId>,
    /// The membership in force (the newest in the log).
    pub membership: Membership,
    /// The index of the entry that set it (0: the initial voters; the snapshot's index when it
    /// came with one). The change is committed once `commit_index` reaches it.
    pub membership_index: LogIndex,
    /// The latest snapshot held: (last index, bytes).
    pub snapshot: Option<(LogIndex, u64)>,
    /// A snapshot being received: (bytes received, total bytes).
    pub snapshot_receiving: Option<(u64, u64)>,
    /// The first index still in the log (entries before it were compacted).
    pub first_index: LogIndex,
    /// For a leader: each follower's progress.
    pub progress: Vec<PeerProgress>,
}

impl Status {
    /// True when this node runs in the life its membership records and is not waiting to be
    /// promoted back: false for a node that restarted without its state until the leader has
    /// recorded it and, if it voted, promoted it back (it is then caught up to within
    /// [`Config::promotion_lag_entries_max`]).
    pub fn rejoined(&self) -> bool {
        self.membership.rejoined(self.id, self.incarnation)
    }
}

/// One node of the Raft protocol, without IO. See the [module documentation](self).
#[derive(Debug)]
pub struct RawNode {
    config: Config,
    id: NodeId,
    /// The membership at the log's offset: from the snapshot, or the initial voters.
    base_membership: (LogIndex, Membership),
    /// Memberships in the log after the offset, in index order. The newest one (or the base)
    /// is in force.
    memberships: Vec<(LogIndex, Membership)>,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    rng: Rng,
    /// The tick at which this node last heard from a leader (an append, heartbeat or snapshot
    /// chunk of its term). Unlike `leader`, a newer term does not clear it: the vote promise
    /// of CheckQuorum runs from here (see `vote_promised_to_leader`).
    leader_heard_at: Option<u64>,
    /// Ticks since this node last reset its election clock (heard from a leader, voted, or,
    /// for a leader, since its last quorum check).
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    /// This term's election timeout, drawn from `[min, max)`.
    election_timeout: u32,
    /// Ticks since start: deadlines of waiting proposals are measured against it.
    now: u64,
    /// Votes received in the current (pre-)election.
    votes: BTreeMap<NodeId, bool>,
    /// Leader only: each follower's progress (never this node's own).
    progress: BTreeMap<NodeId, Progress>,
    /// Leader only: payload bytes of entries appended this term and not yet committed.
    uncommitted_bytes: usize,
    /// Leader only: new entries or a new commit index must be sent to followers.
    needs_broadcast: bool,
    proposals: Proposals,
    reads: Reads,
    /// Leader only: a leadership transfer in progress.
    transfer: Option<transfer::Transfer>,
    transfer_failed: Option<TransferError>,
    messages: Vec<Message>,
    messages_after_write: Vec<Message>,
    /// The hard state last handed to storage.
    hard_state_written: HardState,
    /// The ready whose write carries the current term and vote (0: they came from storage).
    /// Until it is persisted no message leaves ahead of a write: every message carries the
    /// term, and a term that is not durable may be won again, differently, after a crash.
    term_written_in: u64,
    /// The highest ready number storage has made durable (with every earlier one).
    persisted_number: u64,
    ready_number: u64,
    /// Readies handed out whose writes storage has not acknowledged: (number, last entry).
    unacknowledged_writes: VecDeque<(u64, Option<(LogIndex, Term)>)>,
    /// The latest snapshot this node holds.
    snapshot: Option<SnapshotMeta>,
    /// A snapshot was asked of the driver and not reported yet.
    snapshot_building: bool,
    /// A snapshot was requested by hand.
    snapshot_wanted: bool,
    /// The applied index at which the automatic policy takes the next snapshot.
    snapshot_next_auto: u64,
    /// The applied bytes held when the last snapshot build failed, until one succeeds: the
    /// byte bound then waits for half a bound more before it asks again.
    snapshot_bytes_failed_at: Option<usize>,
    /// A snapshot being received from the leader.
    receiving: Option<snapshots::Receiving>,
    /// A received snapshot on its way into the state machine.
    install: Option<snapshots::Install>,
    snapshot_writes: Vec<SnapshotWrite>,
    snapshot_chunks: Vec<Message>,
    purge_to: Option<LogIndex>,
    /// Leader only: whether its own writes may wait (`Ready::write_may_wait`).
    write_deferral: deferral::WriteDeferral,
}

impl RawNode {
    /// Starts a node from its configuration and what storage holds.
    pub fn new(config: Config, restore: Restore) -> Result<RawNode, StartError> {
        config.validate()?;
        let hard_state = restore.hard_state;
        let RestoredLog {
            offset,
            offset_term,
            entries,
            base_membership,
        } = restore_log(&config, &restore)?;
        let last = LogIndex(offset.0 + entries.len() as u64);
        if hard_state.commit > last {
            return Err(RestoreError::CommitBeyondLog {
                commit: hard_state.commit,
                last,
            }
            .into());
        }
        let applied = restore.applied.min(last);
        if applied < offset && restore.snapshot.is_some() {
            return Err(RestoreError::AppliedBelowSnapshot {
                applied,
                snapshot: offset,
            }
            .into());
        }
        let memberships: Vec<(LogIndex, Membership)> = entries
            .iter()
            .filter_map(|e| match &e.payload {
                crate::types::EntryPayload::Membership(m) => Some((e.index, m.clone())),
                _ => None,
            })
            .collect();
        let snapshot_next_auto = restore.snapshot.as_ref().map_or(0, |s| s.last_index.0)
            + config.snapshot_interval_entries;
        let mut rng = Rng::new(config.seed ^ config.id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // Forward keys and read request keys count up from one random value per life (they
        // travel in different messages, so they may overlap).
        let first_key = rng.next_u64() & !0xFFFF_FFFF;
        let proposals = Proposals::new(first_key);
        let mut node = RawNode {
            id: config.id,
            base_membership,
            memberships,
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            log: RaftLog::restore(offset, offset_term, entries, hard_state.commit, applied),
            rng,
            leader_heard_at: None,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            election_timeout: 0,
            now: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            uncommitted_bytes: 0,
            needs_broadcast: false,
            proposals,
            reads: Reads::new(first_key),
            transfer: None,
            transfer_failed: None,
            messages: Vec::new(),
            messages_after_write: Vec::new(),
            hard_state_written: hard_state,
            term_written_in: 0,
            persisted_number: 0,
            ready_number: 0,
            unacknowledged_writes: VecDeque::new(),
            snapshot: restore.snapshot,
            snapshot_building: false,
            snapshot_wanted: false,
            snapshot_next_auto,
            snapshot_bytes_failed_at: None,
            receiving: None,
            install: None,
            snapshot_writes: Vec::new(),
            snapshot_chunks: Vec::new(),
            purge_to: None,
            write_deferral: deferral::WriteDeferral::default(),
            config,
        };
        node.reset_election_timeout();
        Ok(node)
    }

    // ----- inputs -------------------------------------------------------------------------

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.now += 1;
        self.proposals.expire(self.now);
        self.reads.expire(self.now);
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
        let leading = self.role == Role::Leader;
        self.write_deferral
            .on_tick(leading.then_some(&self.progress));
    }

    /// Handles a message from a peer. Messages for another node, from a non-member or with a
    /// stale term are ignored (the last may get an answer that tells the sender the new term).
    pub fn step(&mut self, message: Message) {
        if message.to != self.id || message.from == self.id {
            return;
        }
        // The leader of this term that removed itself hands over with one last TimeoutNow.
        let handover = message.body == MessageBody::TimeoutNow
            && message.term == self.term
            && self.leader == Some(message.from);
        if self.membership().removed.contains(&message.from) && !handover {
            // A removed node changes nothing here. One that still leads an old term (it never
            // learned of its removal) is told the newer term, so it steps down.
            if message.term < self.term {
                self.answer_stale_term(&message);
            }
            return;
        }
        if !self.admit_incarnation(&message) {
            return;
        }
        if message.term > self.term {
            if !self.adopt_higher_term(&message) {
                return;
            }
        } else if message.term < self.term {
            self.answer_stale_term(&message);
            return;
        }
        if matches!(
            message.body,
            MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::SnapshotChunk { .. }
        ) {
            // Only the leader of this term sends these: the vote promise runs from here.
            self.leader_heard_at = Some(self.now);
        }
        match message.body {
            MessageBody::ReadIndexRequest { id } => {
                self.handle_read_index_request(message.from, id)
            }
            MessageBody::ReadIndexResponse { id, index } => {
                self.handle_read_index_response(id, index)
            }
            MessageBody::VoteRequest {
                pre_vote,
                last_log_index,
                last_log_term,
                transfer,
            } => self.handle_vote_request(
                message.from,
                message.incarnation,
                message.term,
                pre_vote,
                last_log_index,
                last_log_term,
                transfer,
            ),
            MessageBody::SnapshotResponse {
                last_index,
                last_term,
                checksum,
                received,
            } if self.role == Role::Leader => self.handle_snapshot_response(
                message.from,
                last_index,
                last_term,
                checksum,
                received,
            ),
            body => match self.role {
                Role::Leader => self.step_leader(message.from, body),
                Role::Candidate | Role::PreCandidate => self.step_candidate(message.from, body),
                Role::Follower => self.step_follower(message.from, body),
            },
        }
        self.end_unanswerable_forwards();
        self.assert_invariants();
    }

    /// Proposes a command. The outcome arrives later: the committed entry that carries `id`,
    /// or an entry in [`Ready::failed_proposals`].
    pub fn propose(&mut self, id: ProposalId, data: Bytes) {
        let proposed = proposals::Proposed {
            data,
            session: None,
        };
        self.propose_command(id, proposed);
    }

    /// Starts an election now (as if the election timeout had passed).
    pub fn campaign(&mut self) {
        if self.role != Role::Leader {
            self.start_election();
        }
    }

    /// Storage made the write of ready `number` (and all earlier ones) durable.
    pub fn persisted(&mut self, number: u64) {
        assert!(
            number <= self.ready_number,
            "ready {number} was never handed out (last {})",
            self.ready_number
        );
        self.persisted_number = self.persisted_number.max(number);
        let mut last = None;
        while let Some(&(n, entry)) = self.unacknowledged_writes.front() {
            if n > number {
                break;
            }
            self.unacknowledged_writes.pop_front();
            last = entry.or(last);
        }
        self.install_persisted(number);
        if let Some((index, term)) = last {
            self.log.stable_to(index, term);
            if self.role == Role::Leader {
                self.maybe_commit();
            }
        }
        self.end_unanswerable_forwards();
        self.assert_invariants();
    }

    /// The state machine applied every entry up to `index`.
    pub fn applied(&mut self, index: LogIndex) {
        self.log.applied_to(index);
    }

    // ----- output -------------------------------------------------------------------------

    /// True when [`RawNode::ready`] would return work.
    pub fn has_ready(&self) -> bool {
        self.needs_broadcast
            || self.proposals.has_waiting_to_route(self.role, self.leader)
            || self.reads.has_work()
            || self.transfer_failed.is_some()
            || self.reads.has_waiting_to_route(self.role, self.leader)
            || !self.messages.is_empty()
            || !self.messages_after_write.is_empty()
            || !self.proposals.failures.is_empty()
            || self.log.has_unwritten()
            || (self.log.has_applicable() && !self.install_pending())
            || !self.snapshot_writes.is_empty()
            || !self.snapshot_chunks.is_empty()
            || self.purge_to.is_some()
            || matches!(self.install, Some(snapshots::Install::Durable(_)))
            || self.wants_snapshot()
            || (self.term, self.vote)
                != (self.hard_state_written.term, self.hard_state_written.vote)
    }

    /// Takes the work accumulated since the last call.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader && self.needs_broadcast {
            self.broadcast_append();
        }
        self.needs_broadcast = false;
        self.flush_waiting_proposals();
        self.flush_reads();
        self.flush_follower_reads();
        let (truncate_from, entries) = self.log.take_unwritten();
        let hard_state = self.hard_state();
        let vote_changed = (hard_state.term, hard_state.vote)
            != (self.hard_state_written.term, self.hard_state_written.vote);
        let commit_changed = hard_state.commit != self.hard_state_written.commit;
        let snapshot_writes = std::mem::take(&mut self.snapshot_writes);
        let installing = snapshot_writes.last().is_some_and(|w| w.last);
        // The commit index is saved when something else is written anyway: it may lag on
        // disk (it is recomputed from the cluster), so it never costs a sync of its own.
        let save_hard_state =
            vote_changed || (commit_changed && (!entries.is_empty() || installing));
        if save_hard_state {
            self.hard_state_written = hard_state;
        }
        self.ready_number += 1;
        if vote_changed {
            self.term_written_in = self.ready_number;
        }
        let (messages, messages_after_write) = self.take_messages();
        let mut last_written = entries.last().map(|e| (e.index, e.term));
        if installing {
            self.install_written_in(self.ready_number);
            if last_written.is_none() {
                last_written = Some((
                    self.log.offset(),
                    self.log.term(self.log.offset()).unwrap_or_default(),
                ));
            }
        }
        self.unacknowledged_writes
            .push_back((self.ready_number, last_written));
        let install_snapshot = self.take_install();
        let committed = if self.install_pending() {
            Vec::new()
        } else {
            self.take_committed()
        };
        let build_snapshot = self.take_build_request();
        let write = LogWrite {
            truncate_from,
            entries,
            hard_state: save_hard_state.then_some(hard_state),
        };
        let purge_to = self.purge_to.take();
        let needs_writer = !write.is_empty()
            || !messages_after_write.is_empty()
            || !snapshot_writes.is_empty()
            || purge_to.is_some();
        let plain =
            messages_after_write.is_empty() && snapshot_writes.is_empty() && purge_to.is_none();
        let write_may_wait = self.write_deferral.decide(
            self.role == Role::Leader,
            &messages,
            &write,
            needs_writer,
            plain,
        );
        Ready {
            snapshot_writes,
            purge_to,
            snapshot_chunks: std::mem::take(&mut self.snapshot_chunks),
            install_snapshot,
            build_snapshot,
            number: self.ready_number,
            write,
            write_may_wait,
            messages,
            messages_after_write,
            committed,
            failed_proposals: std::mem::take(&mut self.proposals.failures),
            reads: std::mem::take(&mut self.reads.ready),
            failed_reads: std::mem::take(&mut self.reads.failures),
            transfer_failed: self.transfer_failed.take(),
        }
    }

    /// Splits the queued messages into those that may leave at once and those that wait for
    /// the ready's write, by what each promises ([`Promise`]): a message that relies on the
    /// term waits while the ready that wrote the current term and vote is not durable.
    fn take_messages(&mut self) -> (Vec<Message>, Vec<Message>) {
        let term_durable = self.persisted_number >= self.term_written_in;
        let mut after_write = Vec::new();
        let mut now = Vec::new();
        for message in std::mem::take(&mut self.messages) {
            match message.body.promise() {
                Promise::Term if !term_durable => after_write.push(message),
                Promise::Writes => unreachable!("queued apart by send_message"),
                _ => now.push(message),
            }
        }
        after_write.append(&mut self.messages_after_write);
        assert!(
            now.iter()
                .all(|m| m.body.promise() == Promise::Nothing
                    || (term_durable && m.term <= self.term)),
            "a message leaves at once with a term that is not durable"
        );
        (now, after_write)
    }

    fn take_committed(&mut self) -> Vec<CommittedEntry> {
        let entries = self
            .log
            .take_applicable(self.config.apply_batch_entries_max);
        entries
            .into_iter()
            .map(|entry| CommittedEntry {
                proposal: self.proposals.match_applied(&entry),
                entry,
            })
            .collect()
    }

    /// Fails every tracked proposal with an indeterminate error (for shutdown); they appear
    /// in the next ready.
    pub fn abandon_proposals(&mut self) {
        self.proposals.fail_all();
    }

    // ----- queries ------------------------------------------------------------------------

    /// This node's ID.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The leader known for the current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The highest committed index known.
    pub fn commit_index(&self) -> LogIndex {
        self.log.committed
    }

    /// The last index in the log.
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.get(index)
    }

    /// The term of the entry at `index`, if known: held, or the one just before the first
    /// held (the compaction point).
    pub fn entry_term(&self, index: LogIndex) -> Option<Term> {
        self.log.term(index)
    }

    /// The first index held in the log (1 until the log is compacted).
    pub fn first_index(&self) -> LogIndex {
        self.log.offset().next()
    }

    /// The hard state as it stands (not necessarily durable yet).
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// On a leader, each follower's match index (the highest index known replicated on it);
    /// empty on other nodes. For metrics such as replication lag.
    pub fn follower_matches(&self) -> impl Iterator<Item = (NodeId, LogIndex)> + '_ {
        self.progress.iter().map(|(id, p)| (*id, p.match_index))
    }

    /// A status snapshot.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            incarnation: self.config.incarnation,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit_index: self.log.committed,
            applied_index: self.log.applied,
            last_index: self.log.last_index(),
            persisted_index: self.log.persisted,
            voters: self.membership().voters.iter().copied().collect(),
            membership: self.membership().clone(),
            membership_index: self.membership_index(),
            snapshot: self.snapshot.as_ref().map(|s| (s.last_index, s.data_bytes)),
            snapshot_receiving: self.receiving_progress(),
            first_index: self.log.offset().next(),
            progress: self
                .progress
                .iter()
                .map(|(id, p)| PeerProgress {
                    id: *id,
                    match_index: p.match_index,
                    next_index: p.next_index,
                    pipelined: p.state == ReplicationState::Replicate,
                    inflight_messages: p.inflights.len(),
                    inflight_bytes: p.inflights.bytes(),
                    snapshot_sent: p.snapshot.as_ref().map(|s| (s.acked, s.meta.data_bytes)),
                    learner: self.membership().learners.contains(id),
                })
                .collect(),
        }
    }

    // ----- shared helpers -----------------------------------------------------------------

    /// True when this node alone is a quorum (a one-voter cluster).
    fn alone_is_quorum(&self) -> bool {
        let me = self.id;
        self.membership().is_quorum(|id| id == me)
    }

    /// Queues a message. Those that promise writes (votes granted, acknowledgements) wait for
    /// the ready's write; the rest may leave at once, once the term is durable for those that
    /// carry it (see `take_messages`).
    fn send(&mut self, to: NodeId, body: MessageBody) {
        let message = Message {
            from: self.id,
            to,
            term: self.term,
            incarnation: self.config.incarnation,
            body,
        };
        self.send_message(message);
    }

    fn send_message(&mut self, message: Message) {
        if message.body.promise() == Promise::Writes {
            self.messages_after_write.push(message);
        } else {
            self.messages.push(message);
        }
    }

    /// Once an entry of a newer term than a forward's leader is committed here, that forward
    /// can get no answer that matters: it ends [`ProposeError::LeaderReplaced`] at once (see
    /// `Proposals::newer_term_committed`). Called wherever the commit index may have moved:
    /// after a step (appends, heartbeats, snapshots, a leader's acknowledgements) and after a
    /// write became durable (a leader counting itself).
    fn end_unanswerable_forwards(&mut self) {
        let committed_term = self
            .log
            .term(self.log.committed)
            .expect("the commit index is at or above the log's offset");
        self.proposals.newer_term_committed(committed_term);
    }

    fn reset_election_timeout(&mut self) {
        self.election_elapsed = 0;
        self.election_timeout = self.rng.range(
            self.config.election_timeout_ticks_min,
            self.config.election_timeout_ticks_max,
        );
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(term >= self.term, "terms never go backwards");
        if term > self.term {
            self.term = term;
            self.vote = None;
            let wait = u64::from(self.config.proposal_wait_ticks);
            self.proposals.new_term(term, wait);
        }
        self.abort_reads();
        self.transfer = None;
        self.role = Role::Follower;
        self.leader = leader;
        self.progress.clear();
        self.votes.clear();
        self.uncommitted_bytes = 0;
        self.needs_broadcast = false;
        self.reset_election_timeout();
    }

    fn assert_invariants(&self) {
        self.log.assert_invariants();
        if self.role == Role::Leader {
            assert_eq!(self.leader, Some(self.id), "a leader leads itself");
            assert_eq!(self.vote, Some(self.id), "a leader voted for itself");
        }
        if let Some((at, _)) = self.memberships.first() {
            assert!(
                *at > self.log.offset(),
                "a membership at or below the log offset"
            );
        }
        if self.role != Role::Follower {
            // A leader removed by a change keeps leading until the change commits; a node
            // removed by an uncommitted entry may campaign to commit it (`may_campaign`).
            assert!(
                self.may_campaign()
                    || (self.role == Role::Leader && self.membership_change_pending()),
                "only voters campaign or lead"
            );
        }
    }
}

/// The log a node starts from.
struct RestoredLog {
    /// The index before the first entry kept, and its term.
    offset: LogIndex,
    offset_term: Term,
    /// The entries after `offset`.
    entries: Vec<Entry>,
    /// The membership in force at `offset`.
    base_membership: (LogIndex, Membership),
}

/// Checks what storage restored and finds where the in-memory log starts: after the
/// snapshot, or (when the store kept a tail below it) at the first entry held.
fn restore_log(config: &Config, restore: &Restore) -> Result<RestoredLog, RestoreError> {
    let entries = &restore.entries;
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index.next() {
            return Err(RestoreError::LogHole {
                before: pair[0].index,
                after: pair[1].index,
            });
        }
    }
    let first = entries.first().map(|e| e.index);
    let Some(snapshot) = &restore.snapshot else {
        if let Some(first) = first.filter(|f| *f != LogIndex(1)) {
            return Err(RestoreError::NoSnapshotBeforeLog { first });
        }
        // A later life of a node whose storage did not survive: the cluster it started with
        // has moved on, so it knows no members until a leader tells it.
        let initial = if config.incarnation > crate::types::Incarnation(0) {
            Membership::default()
        } else {
            let mut initial = Membership::new(config.voters.iter().copied());
            initial.nodes = config.initial_nodes.clone();
            initial
        };
        return Ok(RestoredLog {
            offset: LogIndex(0),
            offset_term: Term(0),
            entries: entries.clone(),
            base_membership: (LogIndex(0), initial),
        });
    };
    let at = snapshot.last_index;
    let after_snapshot = RestoredLog {
        offset: at,
        offset_term: snapshot.last_term,
        entries: Vec::new(),
        base_membership: (at, snapshot.membership.clone()),
    };
    let Some(first) = first else {
        return Ok(after_snapshot);
    };
    if first > at.next() {
        return Err(RestoreError::EntriesMissingAfterSnapshot {
            first,
            snapshot: at,
        });
    }
    if first == at.next() {
        return Ok(RestoredLog {
            entries: entries.clone(),
            ..after_snapshot
        });
    }
    let position = (at.0 - first.0) as usize;
    let matches = entries
        .get(position)
        .is_some_and(|e| e.index == at && e.term == snapshot.last_term);
    if !matches {
        return Err(RestoreError::SnapshotEntryMissing {
            index: at,
            term: snapshot.last_term,
        });
    }
    // Keep the tail below the snapshot (lagging followers catch up from it): its first entry
    // becomes the offset. Memberships in the tail are re-read from the entries; the newest at
    // or below the snapshot is the snapshot's own, so the base is right for everything the
    // node acts on (it has applied past the tail).
    Ok(RestoredLog {
        offset: entries[0].index,
        offset_term: entries[0].term,
        entries: entries[1..].to_vec(),
        base_membership: (entries[0].index, snapshot.membership.clone()),
    })
}

#[cfg(test)]
mod tests;
