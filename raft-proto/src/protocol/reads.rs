//! Reads without writing to the log: the rules are in the protocol module's docs
//! ([`super`], "Reads without the log").

use super::{ProposeError, RawNode, Role};
use crate::message::MessageBody;
use crate::types::{LogIndex, NodeId, ProposalId};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// Heartbeat rounds a leader tracks at most; the oldest round without reads is dropped first.
const READ_ROUNDS_MAX: usize = 1024;

/// Who asked for a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reader {
    /// A caller of `RawNode::read_index` on this node.
    Local(ProposalId),
    /// A follower, on behalf of its caller.
    Remote(NodeId, ProposalId),
}

/// One heartbeat round and the reads it confirms.
#[derive(Debug)]
struct Round {
    seq: u64,
    /// The commit index when the round left: the read index of its readers.
    index: LogIndex,
    /// Tick at which the round left (start of the lease it earns).
    sent_at: u64,
    readers: Vec<Reader>,
    acks: BTreeSet<NodeId>,
}

/// Read bookkeeping, for both the leader and follower sides.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    next_seq: u64,
    /// Leader: rounds sent and not yet confirmed, oldest first.
    rounds: VecDeque<Round>,
    /// Leader: reads waiting for the first commit of this term.
    awaiting_commit: Vec<Reader>,
    /// Leader: reads registered since the last round left.
    unsent: Vec<Reader>,
    /// Leader: the send tick of the newest confirmed round.
    lease_start: Option<u64>,
    /// Leader: a transfer began this term, so no lease holds until the term ends (see the
    /// module documentation).
    lease_revoked: bool,
    /// Follower: reads waiting for a leader to be known, with their deadline.
    waiting: Vec<(ProposalId, u64)>,
    /// Follower: reads asked of the leader, by request key: (read, deadline).
    asked: HashMap<u64, (ProposalId, u64)>,
    /// Follower: the key of the next request to a leader. Requests carry a key of their own,
    /// not the caller's read ID, so a late answer to an earlier request never answers a later
    /// one, even a retry under the same ID or a read of a restarted node that counts its IDs
    /// from 1 again: that answer's index may predate a write the later read must see. Starts
    /// at a random value in each life, like forward keys.
    next_request_key: u64,
    /// Reads whose index is known: (id, index).
    pub(crate) ready: Vec<(ProposalId, LogIndex)>,
    /// Reads that failed.
    pub(crate) failures: Vec<(ProposalId, ProposeError)>,
}

impl Reads {
    pub(crate) fn new(first_request_key: u64) -> Reads {
        Reads {
            next_request_key: first_request_key,
            ..Reads::default()
        }
    }

    pub(crate) fn tracked(&self) -> usize {
        self.rounds.iter().map(|r| r.readers.len()).sum::<usize>()
            + self.awaiting_commit.len()
            + self.unsent.len()
            + self.waiting.len()
            + self.asked.len()
    }

    pub(crate) fn has_waiting_to_route(&self, role: Role, leader: Option<NodeId>) -> bool {
        !self.waiting.is_empty() && (role == Role::Leader || leader.is_some())
    }

    pub(crate) fn has_work(&self) -> bool {
        !self.unsent.is_empty() || !self.ready.is_empty() || !self.failures.is_empty()
    }

    /// Fails every leader-side read (leadership was lost). Remote readers are told so.
    fn abort_leader_reads(&mut self) -> Vec<Reader> {
        let mut readers: Vec<Reader> = self.rounds.drain(..).flat_map(|r| r.readers).collect();
        readers.append(&mut self.awaiting_commit);
        readers.append(&mut self.unsent);
        self.lease_start = None;
        self.lease_revoked = false; // leadership ended; a later term earns its own lease
        readers
    }

    /// Follower side: drops reads past their deadline.
    pub(crate) fn expire(&mut self, now: u64) {
        let failures = &mut self.failures;
        self.waiting.retain(|(id, deadline)| {
            let keep = *deadline > now;
            if !keep {
                failures.push((*id, ProposeError::NoLeader));
            }
            keep
        });
        self.asked.retain(|_, (id, deadline)| {
            let keep = *deadline > now;
            if !keep {
                failures.push((*id, ProposeError::ReadAborted));
            }
            keep
        });
    }
}

impl RawNode {
    /// Asks for a read index for the read `id`. The answer arrives in [`super::Ready::reads`]
    /// (serve the read once the state machine has applied that index) or in
    /// [`super::Ready::failed_reads`]. On a follower the leader is asked (follower reads), under
    /// a request key of its own, so `id` may be reused once its read has ended.
    pub fn read_index(&mut self, id: ProposalId) {
        if self.reads.tracked() >= self.config.pending_reads_max {
            self.reads.failures.push((id, ProposeError::TooManyPending));
            return;
        }
        if self.role == Role::Leader {
            self.register_read(Reader::Local(id));
        } else {
            let deadline = self.now + u64::from(self.config.proposal_wait_ticks);
            self.reads.waiting.push((id, deadline));
        }
    }

    fn register_read(&mut self, reader: Reader) {
        debug_assert_eq!(self.role, Role::Leader);
        if !self.committed_in_current_term() {
            // Our commit index may be behind the last leader's: wait for our blank entry.
            self.reads.awaiting_commit.push(reader);
        } else if self.alone_is_quorum() || self.lease_valid() {
            let index = self.log.committed;
            self.answer_read(reader, Some(index));
        } else {
            self.reads.unsent.push(reader);
        }
    }

    pub(super) fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }

    /// True when this node, a leader of several voters, would answer a read from its lease
    /// right now, without a heartbeat round. No leader of a later term can have committed
    /// anything meanwhile (the simulator checks it after every step).
    pub fn serves_reads_from_lease(&self) -> bool {
        self.role == Role::Leader
            && self.committed_in_current_term()
            && !self.alone_is_quorum()
            && self.lease_valid()
    }

    fn lease_valid(&self) -> bool {
        self.config.lease_reads
            && !self.reads.lease_revoked
            && self
                .reads
                .lease_start
                .is_some_and(|start| self.now < start + u64::from(self.config.read_lease_ticks))
    }

    fn answer_read(&mut self, reader: Reader, index: Option<LogIndex>) {
        match (reader, index) {
            (Reader::Local(id), Some(index)) => self.reads.ready.push((id, index)),
            (Reader::Local(id), None) => self.reads.failures.push((id, ProposeError::ReadAborted)),
            (Reader::Remote(from, id), index) => {
                self.send(from, MessageBody::ReadIndexResponse { id, index })
            }
        }
    }

    /// Leader: the first entry of this term committed; reads waiting for it may proceed.
    pub(super) fn release_reads_awaiting_commit(&mut self) {
        if self.committed_in_current_term() && !self.reads.awaiting_commit.is_empty() {
            for reader in std::mem::take(&mut self.reads.awaiting_commit) {
                self.register_read(reader);
            }
        }
    }

    /// Leader: a leadership transfer begins; no lease read is served again in this term.
    pub(super) fn revoke_lease(&mut self) {
        self.reads.lease_revoked = true;
        self.reads.lease_start = None;
    }

    /// Leader: starts a heartbeat round. With `for_reads`, only when reads wait for one.
    /// Returns the round's sequence number.
    pub(super) fn start_read_round(&mut self) -> u64 {
        self.reads.next_seq += 1;
        let seq = self.reads.next_seq;
        if self.reads.rounds.len() >= READ_ROUNDS_MAX {
            if let Some(position) = self.reads.rounds.iter().position(|r| r.readers.is_empty()) {
                self.reads.rounds.remove(position);
            }
        }
        let readers = std::mem::take(&mut self.reads.unsent);
        self.reads.rounds.push_back(Round {
            seq,
            index: self.log.committed,
            sent_at: self.now,
            readers,
            acks: BTreeSet::new(),
        });
        seq
    }

    /// Leader: sends a round at once for reads registered since the last one.
    pub(super) fn flush_reads(&mut self) {
        if self.role == Role::Leader && !self.reads.unsent.is_empty() {
            self.broadcast_heartbeat();
        }
    }

    /// Leader: `from` answered the heartbeat of round `seq`, which confirms every round up to
    /// it.
    pub(super) fn read_round_answered(&mut self, from: NodeId, seq: u64) {
        if !self.counts_for_quorum(from) {
            return; // a life of the follower the membership has not recorded: it promised nothing
        }
        for round in self.reads.rounds.iter_mut() {
            if round.seq > seq {
                break;
            }
            round.acks.insert(from);
        }
        self.release_confirmed_reads();
    }

    /// Leader: answers the reads of every round, oldest first, whose acknowledgements form a
    /// quorum of the membership in force. Runs on each acknowledgement and when the membership
    /// changes: a change that leaves the leader a quorum with the acknowledgements it already
    /// has (down to itself alone) would otherwise wait for an answer that no remaining voter
    /// sends.
    pub(super) fn release_confirmed_reads(&mut self) {
        let me = self.id;
        while let Some(front) = self.reads.rounds.front() {
            let acks = &front.acks;
            if !self
                .membership()
                .is_quorum(|id| id == me || acks.contains(&id))
            {
                break;
            }
            let round = self.reads.rounds.pop_front().expect("front exists");
            self.reads.lease_start = Some(self.reads.lease_start.unwrap_or(0).max(round.sent_at));
            for reader in round.readers {
                self.answer_read(reader, Some(round.index));
            }
        }
    }

    /// Leader: a follower's read.
    pub(super) fn handle_read_index_request(&mut self, from: NodeId, id: ProposalId) {
        if self.role == Role::Leader {
            self.register_read(Reader::Remote(from, id));
        } else {
            self.send(from, MessageBody::ReadIndexResponse { id, index: None });
        }
    }

    /// Follower: the leader's answer to one of our requests (`key`, not a read ID).
    pub(super) fn handle_read_index_response(&mut self, key: ProposalId, index: Option<LogIndex>) {
        let Some((id, _)) = self.reads.asked.remove(&key.0) else {
            return; // late or duplicated, or for an earlier life of this node
        };
        match index {
            Some(index) => self.reads.ready.push((id, index)),
            None => self.reads.failures.push((id, ProposeError::ReadAborted)),
        }
    }

    /// Follower: asks the known leader for the reads waiting for one.
    pub(super) fn flush_follower_reads(&mut self) {
        if self.role == Role::Leader {
            self.adopt_waiting_reads();
            return;
        }
        let Some(leader) = self.leader else { return };
        for (id, deadline) in std::mem::take(&mut self.reads.waiting) {
            let key = self.reads.next_request_key;
            self.reads.next_request_key = key.wrapping_add(1);
            self.reads.asked.insert(key, (id, deadline));
            let id = ProposalId(key);
            self.send(leader, MessageBody::ReadIndexRequest { id });
        }
    }

    /// Leadership ended: every leader-side read fails (followers are told).
    pub(super) fn abort_reads(&mut self) {
        for reader in self.reads.abort_leader_reads() {
            self.answer_read(reader, None);
        }
    }

    /// A new leader: reads this node had waiting as a follower become its own.
    pub(super) fn adopt_waiting_reads(&mut self) {
        let waiting = std::mem::take(&mut self.reads.waiting);
        for (id, _) in waiting {
            self.register_read(Reader::Local(id));
        }
    }
}
