//! The safety properties of Raft (Figure 3 of the paper), checked as the simulation runs.
//!
//! Every check is incremental, so running them after every step stays cheap:
//! - **Election Safety**: `leaders` maps each term to the one node seen leading it.
//! - **Log Matching**: every entry that enters any log is registered under (index, term) with
//!   its payload and the term of the entry before it. A second entry under the same key must
//!   agree on both. By induction on the index, two logs that agree on the term at an index then
//!   agree on every entry before it, which is the property, without comparing whole logs.
//! - **Leader Completeness**: `committed` is the cluster's committed log, each entry with the
//!   term in which it was first seen committed. A leader of term T must hold every committed
//!   entry first seen in a term up to T; each leader is checked once per entry (a leader never
//!   rewrites its log, so an entry checked stays checked).
//! - **State Machine Safety**: `applied` is the first entry applied at each index, by any node,
//!   across restarts; every later apply must match it. Each node applies without gaps.
//! - **Monotonic indexes**: a node's commit and applied indexes never go back within one life.
//!   A restart may lower both: the commit index is saved lazily (only with entries, as the
//!   protocol documents), so the durable one can lag the volatile one, and the state machine is
//!   in memory, so applying restarts from index 1. The durable hard state itself never goes
//!   back (term, commit) and never changes its vote within a term.
//! - **Durability before promises**: a granted vote leaves only once the vote is durable, and
//!   an append acknowledgement only once the entries it acknowledges are durable.
//! - **No acknowledged write lost**: no durable store ever drops a committed entry, and at the
//!   end of a run every log holds every entry whose proposer was told it applied.

use super::cluster::DurableState;
use super::kv::KvStore;
use crate::protocol::{RawNode, Role};
use crate::snapshot::SnapshotMeta;
use crate::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// An entry of the committed log, with the term in which the cluster first knew it committed.
#[derive(Clone, Debug)]
struct Committed {
    term: Term,
    payload: EntryPayload,
    observed_in: Term,
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
}

impl Invariants {
    pub(crate) fn new(seed: u64, replay_hint: String) -> Invariants {
        Invariants {
            seed,
            replay_hint,
            leaders: BTreeMap::new(),
            entries: HashMap::new(),
            committed: Vec::new(),
            applied: Vec::new(),
            nodes: BTreeMap::new(),
            acknowledged: Vec::new(),
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
    pub(crate) fn on_preset(&mut self, node: NodeId, hard_state: HardState, entries: &[Entry]) {
        self.on_entries(node, Term(0), entries);
        let watch = self.nodes.entry(node).or_default();
        watch.durable = hard_state;
        watch.commit_max = hard_state.commit;
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

    /// A client was told that the entry at `index` of `term` applied.
    /// `node` replaced its state machine with a snapshot: the snapshot must end on a committed
    /// entry, and its state must equal every committed entry up to it applied in order.
    pub(crate) fn on_install(&mut self, node: NodeId, meta: &SnapshotMeta, kv: &KvStore) {
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
        let mut reference = KvStore::default();
        for (position, (term, payload)) in self.applied[..at.0 as usize].iter().enumerate() {
            reference.apply(&Entry {
                term: *term,
                index: LogIndex(position as u64 + 1),
                payload: payload.clone(),
            });
        }
        if reference.data() != kv.data() {
            self.fail(format_args!(
                "{node} installed a snapshot at {at} whose state differs from the committed log                  applied up to it"
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

    pub(crate) fn on_acknowledged(&mut self, index: LogIndex, term: Term) {
        self.acknowledged.push((index, term));
    }

    /// After every step: leaders, commit indexes, leader completeness.
    pub(crate) fn after_step<'a>(&mut self, nodes: impl Iterator<Item = (NodeId, &'a RawNode)>) {
        for (id, raw) in nodes {
            self.observe_commit(id, raw);
            if raw.role() == Role::Leader {
                self.observe_leader(id, raw);
            }
        }
    }

    /// Observes one node now: before a snapshot compacts away entries it committed in this
    /// very step.
    pub(crate) fn observe(&mut self, node: NodeId, raw: &RawNode) {
        self.observe_commit(node, raw);
        if raw.role() == Role::Leader {
            self.observe_leader(node, raw);
        }
    }

    fn observe_commit(&mut self, node: NodeId, raw: &RawNode) {
        let watch = self.nodes.entry(node).or_default();
        let (from, to) = (watch.commit, raw.commit_index());
        if to < from {
            self.fail(format_args!(
                "{node}'s commit index went back from {from} to {to}"
            ));
        }
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
                self.committed.push(Committed {
                    term: entry.term,
                    payload: entry.payload.clone(),
                    observed_in: now_term,
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
        while let Some(committed) = self.committed.get(watch.leader_checked) {
            if committed.observed_in > term {
                break;
            }
            let index = LogIndex(watch.leader_checked as u64 + 1);
            let held = raw.entry_term(index);
            let compacted = index < raw.first_index().prev();
            if !compacted && held != Some(committed.term) {
                self.fail(format_args!(
                    "leader completeness: {node}, leader of {term}, lacks {index}/{} committed \
                     in {}",
                    committed.term, committed.observed_in
                ));
            }
            watch.leader_checked += 1;
        }
    }

    /// A granted vote for `candidate` in `term` is about to leave `node`, whose durable hard
    /// state is `durable`.
    pub(crate) fn on_vote_sent(
        &self,
        node: NodeId,
        candidate: NodeId,
        term: Term,
        durable: HardState,
    ) {
        let promised =
            durable.term > term || (durable.term == term && durable.vote == Some(candidate));
        if !promised {
            self.fail(format_args!(
                "{node} sent its {term} vote for {candidate} while its durable hard state is \
                 {durable:?}"
            ));
        }
    }

    /// An acknowledgement of entries up to `match_index` is about to leave `node`, whose
    /// durable log ends at `durable_last`.
    pub(crate) fn on_append_acknowledged(
        &self,
        node: NodeId,
        match_index: LogIndex,
        durable_last: LogIndex,
    ) {
        if match_index > durable_last {
            self.fail(format_args!(
                "{node} acknowledged entries up to {match_index} with only {durable_last} durable"
            ));
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
