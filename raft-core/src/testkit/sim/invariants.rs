//! The safety properties of Raft (Figure 3 of the paper), checked as the simulation runs.
//!
//! Every check is incremental, so running them after every step stays cheap:
//! - **Election Safety**: `leaders` maps each term to the one node seen leading it.
//! - **Log Matching**: every entry that reaches a disk or leaves its node in an append is
//!   registered under (index, term) with its payload and the term of the entry before it (one
//!   that died in a crashed node's memory before either was in no log: a single voter whose
//!   write of its new term failed wins that term again after its restart, with other entries). A second entry under the same key must
//!   agree on both. By induction on the index, two logs that agree on the term at an index then
//!   agree on every entry before it, which is the property, without comparing whole logs.
//! - **Commits a durable quorum backs**: what counts as committed is computed from the disks,
//!   not from what nodes claim. For each node and each term, `durable_in_term` keeps the
//!   highest index of an entry of that term its durable log has held (history: it survives
//!   crashes and never shrinks). A leader of term T may raise its commit index to `c` only
//!   when a quorum of its membership has `durable_in_term[T] >= c`: then a majority holds an
//!   entry of term T at `c` or beyond durably, so every later election meets one of them,
//!   which votes only for a log at least as up to date (Raft §5.4.3), whatever term that
//!   voter has moved on to (a group commit may make an acknowledged entry and a later vote
//!   durable together). A durable majority of the entry alone is not enough: in Figure 8 an
//!   entry of term 2 sits on a majority and is still overwritten. A node's durable history is
//!   that of the life (incarnation) the leader's membership records, as the protocol counts
//!   only that life: an in-memory node that acknowledged, then lost its disk before the leader
//!   counted the acknowledgement, still counts (no protocol can see that loss) until a leader
//!   records its new life. `backed` is the highest index so verified; a node that claims a
//!   commit index beyond it (or applies an entry beyond it) is a violation at once.
//! - **Leader Completeness**: `committed` is the cluster's committed log, each entry with the
//!   term of the leader that committed it. Every leader of that term or a later one must hold
//!   it, whether it was elected before or after the commit; each leader is checked once per
//!   entry (a leader never rewrites its log, so an entry checked stays checked).
//! - **State Machine Safety**: `applied` is the first entry applied at each index, by any node,
//!   across restarts; every later apply must match it. Each node applies without gaps.
//! - **Monotonic indexes**: a node's commit and applied indexes never go back within one life.
//!   A restart may lower both: the commit index is saved lazily (only with entries, as the
//!   protocol documents), so the durable one can lag the volatile one, and the state machine is
//!   in memory, so applying restarts from index 1. The durable hard state itself never goes
//!   back (term, commit) and never changes its vote within a term.
//! - **Durability before promises**: checked on every message as it leaves (sent at once,
//!   released after a write, or a snapshot chunk), against the sender's disk at that moment:
//!   no message carries a term the sender's durable hard state has not reached (pre-votes,
//!   forwards and read requests and their answers excepted: they promise nothing); a vote request,
//!   a granted vote and every leader message (appends, heartbeats, snapshot chunks,
//!   `TimeoutNow`) need that term's vote durable too; an append acknowledgement needs the
//!   entries it acknowledges durable, and a snapshot answer the bytes it counts as received.
//!   A node that fail-stops on a write error releases nothing of that write; since durable
//!   state never goes back, nothing it promised before was undurable.
//! - **Lease safety**: while a leader would serve reads from its lease, no leader of a later
//!   term has committed anything (checked after every step, reads or not).
//! - **No acknowledged write lost**: no durable store ever drops a committed entry, and at the
//!   end of a run every log holds every entry whose proposer was told it applied.
//! - **Amnesia**: a node that restarts with a wiped disk (an in-memory store) starts a new
//!   durable history in a new incarnation; the checks above hold it to that history alone, so
//!   whatever its earlier life acknowledged must survive on the others.
//! - **Exactly-once sessions**: `session_applied` keeps, for every (session, sequence) whose
//!   command a state machine applied, the index where it first applied and the answer it gave.
//!   A state machine may apply that command again only at that same index (a node that lost
//!   its volatile state replays it from a snapshot and the log): anywhere else it applied
//!   twice, whichever node, life or snapshot the earlier application came from. Every copy the
//!   session table answers instead must name that first index, and an answer it gives must be
//!   the first answer, byte for byte; a command refused as stale must be older than a sequence
//!   its session applied. The check is exact only while no session is evicted or expires (a
//!   retry past the table's window applies again, by design), so a run that could evict one
//!   (more sessions than `sessions_max`, or more entries than `session_idle_entries_max`)
//!   fails as misconfigured rather than pass unchecked. Snapshots must carry the table: an
//!   installed snapshot's table is compared with the committed log replayed through a fresh
//!   one.

use super::cluster::DurableState;
use super::kv::KvReplica;
use super::trace::ShowMessage;
use crate::message::{AppendResponse, Message, MessageBody};
use crate::protocol::{RawNode, Role};
use crate::sessions::{CommandAnswer, SessionError, SessionLimits};
use crate::snapshot::SnapshotMeta;
use crate::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, SessionId, SessionTag, Term};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// An entry of the committed log, with the term of the leader that committed it.
#[derive(Clone, Debug)]
struct Committed {
    term: Term,
    payload: EntryPayload,
    committed_in: Term,
}

/// What the checker remembers about one node.
#[derive(Clone, Debug, Default)]
struct Watch {
    /// Commit index last seen in this life.
    commit: LogIndex,
    /// Highest commit index seen in any life.
    commit_max: LogIndex,
    /// Last index applied in this life.
    applied: LogIndex,
    /// The term this node was last seen leading, and how many committed entries its log has
    /// been checked against in that term.
    leader_term: Term,
    leader_checked: usize,
    durable: HardState,
    /// For each term: the highest index of an entry of that term the durable log has held.
    /// Invariant: never shrinks, kept across crashes (it records what the disk once promised,
    /// not what it holds now).
    durable_in_term: BTreeMap<Term, LogIndex>,
    /// The `durable_in_term` of each earlier life, lost with its disk: `earlier_lives[k]` is
    /// that of incarnation `k`. A leader whose membership still records such a life counts
    /// what it acknowledged before the loss, as the protocol does (see `check_backed`).
    earlier_lives: Vec<BTreeMap<Term, LogIndex>>,
}

/// The checker. Panics on the first violation, naming the seed.
#[derive(Debug)]
pub(crate) struct Invariants {
    seed: u64,
    replay_hint: String,
    leaders: BTreeMap<Term, NodeId>,
    /// (index, term) -> (payload, term of the previous entry). Only looked up, never iterated.
    entries: HashMap<(LogIndex, Term), (EntryPayload, Term)>,
    /// `committed[k]` is the entry at index `k + 1`.
    committed: Vec<Committed>,
    /// `applied[k]` is the first entry applied at index `k + 1`: (term, payload).
    applied: Vec<(Term, EntryPayload)>,
    nodes: BTreeMap<NodeId, Watch>,
    /// Entries whose proposer was told they applied: (index, term).
    acknowledged: Vec<(LogIndex, Term)>,
    /// The highest index a leader committed with a durable quorum of its term behind it.
    /// Invariant: `committed.len() <= backed` once every claim is observed; no node claims
    /// or applies beyond it.
    backed: LogIndex,
    /// The latest term whose leader committed an entry, and that entry's index.
    newest_commit: (Term, LogIndex),
    /// The bounds of every node's session table.
    session_limits: SessionLimits,
    /// Every (session, sequence) a state machine applied: where it first applied, and the
    /// answer it gave. Invariant: no state machine applies it anywhere else.
    session_applied: HashMap<SessionTag, (LogIndex, Bytes)>,
    /// The highest sequence applied in each session.
    session_sequence_max: HashMap<SessionId, u64>,
    /// The first entries applied (`applied`) applied in order through a fresh session table,
    /// as far as the latest snapshot install checked: installs mostly come at rising indexes,
    /// so each replays only the entries after the one before.
    reference: KvReplica,
}

impl Invariants {
    pub(crate) fn new(seed: u64, replay_hint: String, session_limits: SessionLimits) -> Invariants {
        Invariants {
            seed,
            replay_hint,
            leaders: BTreeMap::new(),
            entries: HashMap::new(),
            committed: Vec::new(),
            applied: Vec::new(),
            nodes: BTreeMap::new(),
            acknowledged: Vec::new(),
            backed: LogIndex(0),
            newest_commit: (Term(0), LogIndex(0)),
            session_limits,
            session_applied: HashMap::new(),
            session_sequence_max: HashMap::new(),
            reference: KvReplica::new(session_limits),
        }
    }

    pub(crate) fn fail(&self, what: fmt::Arguments<'_>) -> ! {
        panic!(
            "invariant violated (seed {}): {what}\nreplay: {}",
            self.seed, self.replay_hint
        )
    }

    /// How many entries the cluster is known to have committed.
    pub(crate) fn committed_len(&self) -> usize {
        self.committed.len()
    }

    /// The commands of the committed log, in index order.
    pub(crate) fn committed_commands(&self) -> Vec<bytes::Bytes> {
        self.committed
            .iter()
            .filter_map(|c| match &c.payload {
                EntryPayload::Command(data) => Some(data.clone()),
                EntryPayload::SessionCommand(command) => Some(command.command.clone()),
                EntryPayload::Blank | EntryPayload::Membership(_) => None,
            })
            .collect()
    }

    /// Terms that had a leader.
    pub(crate) fn leader_terms(&self) -> usize {
        self.leaders.len()
    }

    /// `node` starts from a preset durable state (a scenario's hand-made log).
    /// Its commit index is taken as backed: the scenario vouches for it.
    pub(crate) fn on_preset(&mut self, node: NodeId, hard_state: HardState, entries: &[Entry]) {
        self.on_entries(node, Term(0), entries);
        let watch = self.nodes.entry(node).or_default();
        watch.durable = hard_state;
        watch.commit_max = hard_state.commit;
        for entry in entries {
            watch.durable_in_term.insert(entry.term, entry.index);
        }
        self.backed = self.backed.max(hard_state.commit);
    }

    /// A write of `node` completed: `disk` is what it now holds. Records how far its durable
    /// log holds entries of its durable term (see `durable_in_term`).
    pub(crate) fn on_durable_write(&mut self, node: NodeId, disk: &DurableState) {
        let term = disk.hard_state.term;
        let last = disk.last_index();
        let last_term = match disk.entries.last() {
            Some(entry) => entry.term,
            None if disk.snapshot_index() == last && last > LogIndex(0) => disk
                .snapshot
                .as_ref()
                .map_or(Term(0), |(meta, _)| meta.last_term),
            None => Term(0),
        };
        if last_term > term {
            self.fail(format_args!(
                "{node}'s disk holds {last}/{last_term}, of a term beyond its durable term {term}"
            ));
        }
        if last_term > Term(0) {
            let watch = self.nodes.entry(node).or_default();
            let held = watch
                .durable_in_term
                .entry(last_term)
                .or_insert(LogIndex(0));
            *held = (*held).max(last);
        }
    }

    /// Entries of a write of `node` reached its disk (before [`Self::on_durable_write`]): an
    /// entry of term T at index i held durably counts toward commits of T up to i, whatever
    /// term the node has moved on to (a vote for a later candidate does not undo it: Raft's
    /// commit rule counts replicas of the leader's own-term entries, §5.4.2).
    pub(crate) fn on_durable_entries(&mut self, node: NodeId, entries: &[Entry]) {
        let watch = self.nodes.entry(node).or_default();
        for entry in entries {
            let held = watch
                .durable_in_term
                .entry(entry.term)
                .or_insert(LogIndex(0));
            *held = (*held).max(entry.index);
        }
    }

    /// Entries enter a node's log after the entry of term `previous_term` (Log Matching).
    pub(crate) fn on_entries(&mut self, node: NodeId, previous_term: Term, entries: &[Entry]) {
        let mut previous = previous_term;
        for entry in entries {
            let key = (entry.index, entry.term);
            match self.entries.get(&key) {
                Some((payload, before)) => {
                    if *payload != entry.payload || *before != previous {
                        self.fail(format_args!(
                            "log matching: {node} holds {}/{} after term {previous} with {:?}, \
                             but another log has it after term {before} with {:?}",
                            entry.index, entry.term, entry.payload, payload
                        ));
                    }
                }
                None => {
                    self.entries.insert(key, (entry.payload.clone(), previous));
                }
            }
            previous = entry.term;
        }
    }

    /// A durable store of `node` is about to remove `removed` (a conflicting suffix).
    pub(crate) fn on_truncate(&self, node: NodeId, removed: &[Entry]) {
        for entry in removed {
            if let Some(committed) = self.committed.get(entry.index.0 as usize - 1) {
                if committed.term == entry.term {
                    self.fail(format_args!(
                        "{node} removed committed entry {}/{} from its durable log",
                        entry.index, entry.term
                    ));
                }
            }
        }
    }

    /// A write of `node` made `hard_state` durable.
    pub(crate) fn on_durable_hard_state(&mut self, node: NodeId, hard_state: HardState) {
        let watch = self.nodes.entry(node).or_default();
        let old = watch.durable;
        let vote_changed = old.vote.is_some() && hard_state.vote != old.vote;
        if hard_state.term < old.term
            || hard_state.commit < old.commit
            || (hard_state.term == old.term && vote_changed)
        {
            self.fail(format_args!(
                "{node}'s durable hard state went from {old:?} to {hard_state:?}"
            ));
        }
        watch.durable = hard_state;
    }

    /// `node` lost its disk and comes back in a new incarnation: its durable history starts
    /// afresh. The old one is kept for leaders whose membership still records the old life
    /// (see `check_backed`); a committed entry that life alone held is then missed by Leader
    /// Completeness.
    pub(crate) fn on_amnesia(&mut self, node: NodeId) {
        let watch = self.nodes.entry(node).or_default();
        watch.durable = HardState::default();
        let lost = std::mem::take(&mut watch.durable_in_term);
        watch.earlier_lives.push(lost);
    }

    /// `node` starts (again) from its durable state.
    pub(crate) fn on_start(&mut self, node: NodeId, raw: &RawNode, applied: LogIndex) {
        let watch = self.nodes.entry(node).or_default();
        let commit = raw.commit_index();
        if commit > watch.commit_max {
            let max = watch.commit_max;
            self.fail(format_args!(
                "{node} restarted with commit {commit}, beyond the {max} it ever knew"
            ));
        }
        // A node restarted from a snapshot starts at it: what it covers was checked when the
        // snapshot was built or installed.
        watch.commit = raw.first_index().prev().min(commit);
        watch.applied = applied;
        watch.leader_term = Term(0);
        watch.leader_checked = 0;
        self.observe_commit(node, raw);
    }

    /// `node` applies `entry`.
    pub(crate) fn on_apply(&mut self, node: NodeId, entry: &Entry) {
        if entry.index > self.backed {
            self.fail(format_args!(
                "{node} applies {}/{} but no durable quorum backs a commit beyond {}",
                entry.index, entry.term, self.backed
            ));
        }
        let watch = self.nodes.entry(node).or_default();
        if entry.index != watch.applied.next() {
            let applied = watch.applied;
            self.fail(format_args!(
                "{node} applied {} right after {applied}",
                entry.index
            ));
        }
        watch.applied = entry.index;
        let k = entry.index.0 as usize - 1;
        match self.applied.get(k) {
            Some((term, payload)) => {
                if *term != entry.term || *payload != entry.payload {
                    self.fail(format_args!(
                        "state machine safety: {node} applied {}/{} {:?} where {term} {:?} was \
                         applied before",
                        entry.index, entry.term, entry.payload, payload
                    ));
                }
            }
            None => {
                assert_eq!(k, self.applied.len(), "applies are checked in index order");
                self.applied.push((entry.term, entry.payload.clone()));
            }
        }
    }

    /// `node`'s session table and state machine answered a command entry (see the module
    /// documentation, "Exactly-once sessions").
    pub(crate) fn on_command_answered(&mut self, node: NodeId, answered: &CommandAnswer) {
        let Some(tag) = answered.tag else {
            return; // outside sessions: the state machine applies every copy
        };
        let index = answered.index;
        if index.0 > self.session_limits.session_idle_entries_max {
            self.fail(format_args!(
                "{node} applied {tag} at {index}, beyond session_idle_entries_max {}: sessions \
                 may expire, and the exactly-once check needs them not to (raise the limit)",
                self.session_limits.session_idle_entries_max
            ));
        }
        let first = self.session_applied.get(&tag);
        match (answered.applied_at, first) {
            (Some(at), first) if at == index => {
                let Ok(answer) = &answered.answer else {
                    self.fail(format_args!(
                        "{node} applied {tag} at {index} and gave no answer: {:?}",
                        answered.answer
                    ));
                };
                match first {
                    Some((first, _)) if *first != index => self.fail(format_args!(
                        "exactly once: {node}'s state machine applied {tag} at {index}, but it \
                         applied at {first} before: the command took effect twice"
                    )),
                    Some((_, first_answer)) if first_answer != answer => self.fail(format_args!(
                        "{node} applied {tag} at {index} with the answer {answer:?}, where the \
                         first application answered {first_answer:?}"
                    )),
                    Some(_) => {}
                    None => self.first_session_apply(node, tag, index, answer.clone()),
                }
            }
            (Some(at), None) => self.fail(format_args!(
                "{node} answered {tag} at {index} as a copy of the command applied at {at}, but \
                 no state machine applied it"
            )),
            (Some(at), Some((first, first_answer))) => {
                if at != *first {
                    self.fail(format_args!(
                        "{node} answered {tag} at {index} as a copy of the command applied at \
                         {at}, but it applied at {first}"
                    ));
                }
                if let Ok(answer) = &answered.answer {
                    if answer != first_answer {
                        self.fail(format_args!(
                            "a retry got another answer: {node} answered the copy of {tag} at \
                             {index} with {answer:?}, where its first application at {first} \
                             answered {first_answer:?}"
                        ));
                    }
                }
            }
            (None, _) => {
                let highest = self.session_sequence_max.get(&tag.session).copied();
                let stale = match &answered.answer {
                    Err(SessionError::SequenceStale { last_sequence, .. }) => {
                        *last_sequence > tag.sequence && highest >= Some(*last_sequence)
                    }
                    _ => false,
                };
                if !stale {
                    self.fail(format_args!(
                        "{node} refused {tag} at {index} as stale with {:?}, while the highest \
                         sequence its session applied is {highest:?}",
                        answered.answer
                    ));
                }
            }
        }
    }

    /// The first application of `tag` anywhere, at `index`.
    fn first_session_apply(
        &mut self,
        node: NodeId,
        tag: SessionTag,
        index: LogIndex,
        answer: Bytes,
    ) {
        let highest = self.session_sequence_max.entry(tag.session).or_insert(0);
        if tag.sequence <= *highest {
            let highest = *highest;
            self.fail(format_args!(
                "{node} applied {tag} at {index} after its session applied sequence {highest}"
            ));
        }
        *highest = tag.sequence;
        let sessions = self.session_sequence_max.len();
        if sessions > self.session_limits.sessions_max {
            self.fail(format_args!(
                "{sessions} sessions applied, more than sessions_max {}: sessions may be \
                 evicted, and the exactly-once check needs them not to (raise the limit)",
                self.session_limits.sessions_max
            ));
        }
        self.session_applied.insert(tag, (index, answer));
    }

    /// `node` replaced its state machine with a snapshot: the snapshot must end on a committed
    /// entry, and its state (data and session table) must equal every committed entry up to
    /// it applied in order through a fresh session table.
    pub(crate) fn on_install(&mut self, node: NodeId, meta: &SnapshotMeta, kv: &KvReplica) {
        let at = meta.last_index;
        let k = at.0 as usize - 1;
        match self.committed.get(k) {
            Some(known) if known.term == meta.last_term => {}
            known => self.fail(format_args!(
                "{node} installed a snapshot at {at}/{} but the committed entry there is {:?}",
                meta.last_term,
                known.map(|c| c.term)
            )),
        }
        if self.applied.len() < at.0 as usize {
            self.fail(format_args!(
                "{node} installed a snapshot at {at} that no state machine reached"
            ));
        }
        if self.reference.applied_index() > at {
            self.reference = KvReplica::new(self.session_limits); // an older snapshot
        }
        let from = self.reference.applied_index().0 as usize;
        let entries: Vec<Entry> = self.applied[from..at.0 as usize]
            .iter()
            .zip(from as u64 + 1..)
            .map(|((term, payload), index)| Entry {
                term: *term,
                index: LogIndex(index),
                payload: payload.clone(),
            })
            .collect();
        self.reference.apply(entries);
        let reference = &self.reference;
        if reference.store().data() != kv.store().data() {
            self.fail(format_args!(
                "{node} installed a snapshot at {at} whose state differs from the committed log \
                 applied up to it"
            ));
        }
        if !reference.same_state(kv) {
            self.fail(format_args!(
                "{node} installed a snapshot at {at} whose session table differs from the \
                 committed log applied up to it through a fresh table"
            ));
        }
        let watch = self.nodes.entry(node).or_default();
        if at < watch.applied {
            let applied = watch.applied;
            self.fail(format_args!(
                "{node} installed a snapshot at {at}, behind its applied index {applied}"
            ));
        }
        watch.applied = at;
    }

    /// A client was told that the entry at `index` of `term` applied.
    pub(crate) fn on_acknowledged(&mut self, index: LogIndex, term: Term) {
        self.acknowledged.push((index, term));
    }

    /// After every step: leaders, commit indexes, leader completeness, then leases.
    pub(crate) fn after_step<'a>(
        &mut self,
        nodes: impl Iterator<Item = (NodeId, &'a RawNode)> + Clone,
    ) {
        for (id, raw) in nodes.clone() {
            self.observe(id, raw);
        }
        for (id, raw) in nodes {
            self.check_lease(id, raw);
        }
    }

    /// Lease safety, apart from any read: while a leader would serve reads from its lease, no
    /// leader of a later term may have committed anything (its lease rests on a majority that
    /// promised not to vote for as long). A lease read at that moment could miss that entry.
    fn check_lease(&self, node: NodeId, raw: &RawNode) {
        let (newest_term, index) = self.newest_commit;
        if newest_term > raw.term() && raw.serves_reads_from_lease() {
            self.fail(format_args!(
                "lease: {node}, leader of {}, would serve reads from its lease, yet the leader \
                 of {newest_term} has committed {index}",
                raw.term()
            ));
        }
    }

    /// Observes one node now: before a snapshot compacts away entries it committed in this
    /// very step.
    pub(crate) fn observe(&mut self, node: NodeId, raw: &RawNode) {
        // The leader first: a one-voter leader is elected and commits within one step, and its
        // commit is checked against the leader of its term.
        if raw.role() == Role::Leader {
            self.observe_leader(node, raw);
        }
        self.observe_commit(node, raw);
    }

    fn observe_commit(&mut self, node: NodeId, raw: &RawNode) {
        let watch = self.nodes.entry(node).or_default();
        let (from, to) = (watch.commit, raw.commit_index());
        if to < from {
            self.fail(format_args!(
                "{node}'s commit index went back from {from} to {to}"
            ));
        }
        if to > self.backed {
            self.check_backed(node, raw, to);
        }
        let watch = self.nodes.entry(node).or_default();
        watch.commit = to;
        watch.commit_max = watch.commit_max.max(to);
        let compacted = raw.first_index().prev();
        for index in (from.0 + 1)..=to.0 {
            let index = LogIndex(index);
            if index <= compacted {
                // Committed by a snapshot: checked in `on_install` (and the entry at the
                // compaction point against the committed log here).
                let known = self.committed.get(index.0 as usize - 1).map(|c| c.term);
                if index == compacted && known.is_some() && raw.entry_term(index) != known {
                    self.fail(format_args!(
                        "{node} holds a snapshot at {index} of term {:?}, committed as {known:?}",
                        raw.entry_term(index)
                    ));
                }
                if known.is_none() {
                    self.fail(format_args!(
                        "{node} committed {index} through a snapshot before anyone committed it"
                    ));
                }
                continue;
            }
            let Some(entry) = raw.entry(index) else {
                self.fail(format_args!("{node} committed {index} without holding it"));
            };
            self.observe_committed_entry(node, entry, raw.term());
        }
    }

    /// `node` claims commit index `to`, beyond every commit verified so far: only the leader
    /// of its term may (it may have stepped down in the same step, as a leader that removed
    /// itself does once the change commits), and only when a quorum of its membership held
    /// the entries up to `to` durably in its term (see `durable_in_term`). Raises `backed`.
    fn check_backed(&mut self, node: NodeId, raw: &RawNode, to: LogIndex) {
        if self.leaders.get(&raw.term()) != Some(&node) {
            self.fail(format_args!(
                "{node} ({:?} in {}) claims commit {to}, but no leader committed beyond {} with a \
                 durable quorum",
                raw.role(),
                raw.term(),
                self.backed
            ));
        }
        let term = raw.term();
        let membership = raw.membership();
        // The life the leader's membership records is the one whose acknowledgements count
        // (`Membership::counts`). A node that lost its disk since acknowledging, and whose new
        // life the membership has not recorded, still counts with what its earlier life held:
        // the leader cannot know of the loss, and that new life neither votes nor counts
        // until a leader records it (a commit that needs a quorum, so of the entry too), so
        // every election still meets a holder. Leader Completeness and the end-of-run checks
        // verify that this reasoning holds; counting a life the membership no longer records
        // is a violation here.
        let held = |id: NodeId| {
            let Some(watch) = self.nodes.get(&id) else {
                return LogIndex(0);
            };
            let life = membership.incarnation_of(id).0 as usize;
            let history = watch
                .earlier_lives
                .get(life)
                .unwrap_or(&watch.durable_in_term);
            history.get(&term).copied().unwrap_or(LogIndex(0))
        };
        if !membership.is_quorum(|id| held(id) >= to) {
            let holders: Vec<String> = membership
                .all_voters()
                .into_iter()
                .map(|id| format!("{id}:{}", held(id)))
                .collect();
            self.fail(format_args!(
                "{node}, leader of {term}, committed {to} ({:?}), but no quorum of its voters held \
                 it durably in {term} (durable in {term}: {})",
                raw.entry_term(to),
                holders.join(" ")
            ));
        }
        self.backed = to;
    }

    /// `now_term` is the term of the observing node: the leader that committed the entry, as
    /// every commit beyond `backed` is a leader's (or a scenario's preset, in its own term).
    fn observe_committed_entry(&mut self, node: NodeId, entry: &Entry, now_term: Term) {
        let k = entry.index.0 as usize - 1;
        match self.committed.get(k) {
            Some(known) => {
                if known.term != entry.term || known.payload != entry.payload {
                    self.fail(format_args!(
                        "{node} committed {}/{} where {} was committed before",
                        entry.index, entry.term, known.term
                    ));
                }
            }
            None => {
                assert_eq!(k, self.committed.len(), "a node commits its log in order");
                if now_term >= self.newest_commit.0 {
                    self.newest_commit = (now_term, entry.index);
                }
                self.committed.push(Committed {
                    term: entry.term,
                    payload: entry.payload.clone(),
                    committed_in: now_term,
                });
            }
        }
    }

    fn observe_leader(&mut self, node: NodeId, raw: &RawNode) {
        let term = raw.term();
        let leader = *self.leaders.entry(term).or_insert(node);
        if leader != node {
            self.fail(format_args!(
                "election safety: {leader} and {node} both lead {term}"
            ));
        }
        let watch = self.nodes.entry(node).or_default();
        if watch.leader_term != term {
            watch.leader_term = term;
            watch.leader_checked = 0;
        }
        // Entries committed by a leader of a later term do not bind this one (a stale leader
        // may still be around); every other is checked, in any order of commit terms.
        while let Some(committed) = self.committed.get(watch.leader_checked) {
            let index = LogIndex(watch.leader_checked as u64 + 1);
            watch.leader_checked += 1;
            if committed.committed_in > term {
                continue;
            }
            let held = raw.entry_term(index);
            let compacted = index < raw.first_index().prev();
            if !compacted && held != Some(committed.term) {
                self.fail(format_args!(
                    "leader completeness: {node}, leader of {term}, lacks {index}/{} committed \
                     in {}",
                    committed.term, committed.committed_in
                ));
            }
        }
    }

    /// `message` is about to leave its sender, whose disk holds `disk` and, of a snapshot
    /// being received, `receiving` (its meta and the bytes durable so far). Checks every
    /// promise the message makes against that disk (see the module documentation).
    pub(crate) fn on_message_sent(
        &self,
        message: &Message,
        disk: &DurableState,
        receiving: Option<(&SnapshotMeta, usize)>,
    ) {
        let node = message.from;
        let durable = disk.hard_state;
        // Messages a crash of their sender right after sending changes nothing of: pre-votes
        // (their term is only a proposal) and forwarding and read requests and answers. The
        // term they carry is one the sender neither voted nor led in, so a receiver that
        // adopts it loses nothing. Every other message rests on its term (written down here,
        // apart from the protocol's own `Promise`, so the two are checked against each other).
        let promises_nothing = matches!(
            message.body,
            MessageBody::VoteRequest { pre_vote: true, .. }
                | MessageBody::VoteResponse { pre_vote: true, .. }
                | MessageBody::Forward { .. }
                | MessageBody::ForwardResponse { .. }
                | MessageBody::ReadIndexRequest { .. }
                | MessageBody::ReadIndexResponse { .. }
        );
        if !promises_nothing && message.term > durable.term {
            self.fail(format_args!(
                "{node} sent {} in {} while its durable hard state is {durable:?}",
                ShowMessage(message),
                message.term
            ));
        }
        // The vote this message stands on: the candidate's own, the one it grants, or the
        // leader's for itself (a leader that could forget it might vote again in its term).
        let voted_for = match &message.body {
            MessageBody::VoteRequest {
                pre_vote: false, ..
            }
            | MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::SnapshotChunk { .. }
            | MessageBody::TimeoutNow => Some(node),
            MessageBody::VoteResponse {
                pre_vote: false,
                granted: true,
                ..
            } => Some(message.to),
            _ => None,
        };
        if let Some(voted_for) = voted_for {
            let promised = durable.term > message.term
                || (durable.term == message.term && durable.vote == Some(voted_for));
            if !promised {
                self.fail(format_args!(
                    "{node} sent {} resting on its {} vote for {voted_for}, while its durable \
                     hard state is {durable:?}",
                    ShowMessage(message),
                    message.term
                ));
            }
        }
        match &message.body {
            MessageBody::AppendResponse(AppendResponse::Accepted { match_index }) => {
                let durable_last = disk.last_index();
                if *match_index > durable_last {
                    self.fail(format_args!(
                        "{node} acknowledged entries up to {match_index} with only \
                         {durable_last} durable"
                    ));
                }
            }
            MessageBody::SnapshotResponse {
                last_index,
                checksum,
                received,
                ..
            } if *received > 0 => {
                let same = |meta: &SnapshotMeta| {
                    meta.last_index == *last_index && meta.checksum == *checksum
                };
                let held = match (receiving, &disk.snapshot) {
                    (Some((meta, bytes)), _) if same(meta) => bytes as u64,
                    (_, Some((meta, _))) if same(meta) => meta.data_bytes,
                    _ => 0,
                };
                if *received > held {
                    self.fail(format_args!(
                        "{node} reported {received} bytes of the snapshot at {last_index} \
                         received with {held} durable"
                    ));
                }
            }
            _ => {}
        }
    }

    /// At the end of a run: every log holds every acknowledged entry (in its log, or covered
    /// by its snapshot).
    pub(crate) fn check_acknowledged_held<'a>(
        &self,
        disks: impl Iterator<Item = (NodeId, &'a DurableState)>,
    ) {
        for (node, disk) in disks {
            for &(index, term) in &self.acknowledged {
                if index <= disk.snapshot_index() {
                    continue; // the snapshot was checked against the committed log
                }
                let held = disk.entry(index).map(|e| e.term);
                if held != Some(term) {
                    self.fail(format_args!(
                        "acknowledged entry {index}/{term} is missing from {node}'s log \
                         (holds {held:?})"
                    ));
                }
            }
        }
    }
}
