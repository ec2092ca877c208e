//! Bookkeeping for client proposals: those waiting for a leader, those forwarded to it, and
//! those placed in the log and waiting to be applied.

use crate::message::ForwardOutcome;
use crate::types::{Entry, LogIndex, NodeId, ProposalId, SessionId, SessionTag, Term};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

/// Why a proposal failed. [`ProposeError::is_definite`] tells whether the command may still
/// take effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// No leader was known within `proposal_wait_ticks`; the command was never appended.
    NoLeader,
    /// The command is larger than `proposal_bytes_max`; it was never appended.
    TooLarge {
        /// The command's size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The leader holds `uncommitted_bytes_max` of uncommitted entries; it was never appended.
    UncommittedFull,
    /// This node already tracks `pending_proposals_max` proposals; it was never appended.
    TooManyPending,
    /// Another entry was committed at the command's index: it never takes effect.
    Dropped,
    /// Leadership changed (or the leader did not answer a forward in time) after the command may
    /// have been appended: it may or may not take effect.
    OutcomeUnknown,
    /// The proposal was forwarded to the leader of an older term that never answered, and a
    /// leader of a newer term has since committed an entry here. No answer can come any more:
    /// whatever the old leader placed and that survives is committed below that entry, so the
    /// command may have been applied (without this node knowing where) or may never be. It
    /// ends at once rather than waiting out `proposal_wait_ticks`; retry on the new leader,
    /// in a session if it must not apply twice.
    LeaderReplaced,
    /// A read could not be confirmed (leadership changed, or the leader did not answer in
    /// time). Reads change nothing, so it is safe to retry.
    ReadAborted,
    /// The leader is handing leadership to this node and takes no proposals meanwhile; it
    /// was never appended. Retry on the new leader.
    TransferInProgress(NodeId),
}

impl ProposeError {
    /// True when the command certainly did not and will not take effect.
    pub fn is_definite(&self) -> bool {
        !matches!(
            self,
            ProposeError::OutcomeUnknown | ProposeError::LeaderReplaced
        )
    }
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NoLeader => write!(f, "no leader is known; the write was not applied"),
            ProposeError::TooLarge { bytes, limit } => {
                write!(f, "command of {bytes} bytes is over the {limit}-byte limit")
            }
            ProposeError::UncommittedFull => write!(
                f,
                "the leader's uncommitted log is full; retry when it has caught up"
            ),
            ProposeError::TooManyPending => {
                write!(f, "too many proposals are pending on this node")
            }
            ProposeError::Dropped => write!(f, "the write was overwritten by a new leader"),
            ProposeError::TransferInProgress(target) => write!(
                f,
                "leadership is being handed to {target}; the write was not applied, retry"
            ),
            ProposeError::ReadAborted => write!(
                f,
                "the read could not be confirmed by a leader in time; retry it"
            ),
            ProposeError::LeaderReplaced => write!(
                f,
                "the leader the write was forwarded to was replaced before it answered (a newer \
                 leader has committed since); it may or may not be applied"
            ),
            ProposeError::OutcomeUnknown => write!(
                f,
                "leadership changed while the write was in flight; it may or may not be applied"
            ),
        }
    }
}

impl std::error::Error for ProposeError {}

/// A command on its way into the log, with the client session it belongs to, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Proposed {
    pub(crate) data: Bytes,
    /// Kept across forwards and re-forwards: every copy of the command that reaches a log
    /// carries the same tag, so only the first one applied takes effect.
    pub(crate) session: Option<SessionTag>,
}

/// A proposal waiting for a leader to be known.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) id: ProposalId,
    pub(crate) proposed: Proposed,
    /// The tick at which it fails `NoLeader`.
    pub(crate) deadline: u64,
}

/// A forwarded proposal awaiting the leader's answer.
#[derive(Debug)]
struct Forwarded {
    proposal: ProposalId,
    proposed: Proposed,
    deadline: u64,
    /// The term of the leader it was sent to: once an entry of a later term is committed
    /// here, that leader's answer can no longer matter (see [`ProposeError::LeaderReplaced`]).
    term: Term,
}

/// Limits on the forward de-duplication window a leader keeps per follower.
const FORWARD_DEDUPE_WINDOW_MAX: usize = 4096;

/// Proposal bookkeeping. Every proposal is in exactly one of `waiting`, `forwarded` or
/// `placed` until its outcome is reported, so `tracked()` bounds the memory they use.
#[derive(Debug, Default)]
pub(crate) struct Proposals {
    /// Waiting for a leader to be known (or to become one).
    waiting: VecDeque<Waiting>,
    /// Forwarded to the leader and not answered yet, by forward key.
    forwarded: BTreeMap<u64, Forwarded>,
    /// Invariant: at most the lowest `term` in `forwarded` (a lower bound, so the check for
    /// forwards a newer leader made unanswerable costs nothing while none can be).
    forwarded_term_min: Term,
    /// Placed in the log at (index -> term, id), waiting for that index to apply.
    placed: BTreeMap<LogIndex, (Term, ProposalId)>,
    /// The next forward key; starts at a random value so a restarted node's keys do not
    /// collide with its earlier ones in a leader's de-duplication window.
    next_forward_key: u64,
    /// Leader side: recently seen forward keys per follower, with the answer given.
    seen_forwards: HashMap<NodeId, (VecDeque<u64>, HashMap<u64, ForwardOutcome>)>,
    /// Outcomes to report.
    pub(crate) failures: Vec<(ProposalId, ProposeError)>,
    /// The current term.
    term: Term,
    /// When set, the next session a forward without one gets: every forward then carries a
    /// one-off session (sequence 1), so a duplicated or re-forwarded copy applies once.
    /// Counts up from a value the driver draws at random each life, so no two lives and no two
    /// nodes (with overwhelming probability) hand out the same session.
    next_forward_session: Option<u64>,
    /// Proposals placed at an entry of an ended term, with the tick at which they end
    /// `OutcomeUnknown`. Such an entry may be neither committed nor written over for as long
    /// as the cluster is idle (the new leader's log may end before its index), and its
    /// proposer must still get an answer. Invariant: every key is also in `placed` unless that
    /// proposal ended otherwise (then the deadline is ignored).
    ended_term: BTreeMap<LogIndex, (ProposalId, u64)>,
    /// How long a placement of an ended term waits, in ticks (`proposal_wait_ticks`).
    ended_term_wait_ticks: u64,
    /// Some placement of an ended term may lack a deadline: the next `expire` gives it one.
    ended_term_unscheduled: bool,
}

impl Proposals {
    pub(crate) fn new(first_forward_key: u64) -> Proposals {
        Proposals {
            next_forward_key: first_forward_key,
            ..Proposals::default()
        }
    }

    pub(crate) fn tracked(&self) -> usize {
        self.waiting.len() + self.forwarded.len() + self.placed.len()
    }

    pub(crate) fn fail(&mut self, id: ProposalId, error: ProposeError) {
        self.failures.push((id, error));
    }

    pub(crate) fn wait_for_leader(&mut self, id: ProposalId, proposed: Proposed, deadline: u64) {
        self.waiting.push_back(Waiting {
            id,
            proposed,
            deadline,
        });
    }

    /// Every forward from now on carries a session, counting up from `first`.
    pub(crate) fn set_forward_sessions(&mut self, first: SessionId) {
        self.next_forward_session = Some(first.0);
    }

    /// True when waiting proposals can go somewhere: this node leads or knows the leader.
    pub(crate) fn has_waiting_to_route(&self, role: super::Role, leader: Option<NodeId>) -> bool {
        !self.waiting.is_empty() && (role == super::Role::Leader || leader.is_some())
    }

    pub(crate) fn take_waiting(&mut self) -> VecDeque<Waiting> {
        std::mem::take(&mut self.waiting)
    }

    /// Records a forward and returns its key and the session it travels in (a new one-off
    /// session when forward sessions are on and the proposal has none yet).
    pub(crate) fn forward(&mut self, waiting: Waiting, term: Term) -> (u64, Option<SessionTag>) {
        let Waiting {
            id: proposal,
            mut proposed,
            deadline,
        } = waiting;
        if proposed.session.is_none() {
            if let Some(next) = self.next_forward_session.as_mut() {
                proposed.session = Some(SessionTag {
                    session: SessionId(*next),
                    sequence: 1,
                });
                *next = next.wrapping_add(1);
            }
        }
        let session = proposed.session;
        let key = self.next_forward_key;
        self.next_forward_key = self.next_forward_key.wrapping_add(1);
        if self.forwarded.is_empty() || term < self.forwarded_term_min {
            self.forwarded_term_min = term;
        }
        self.forwarded.insert(
            key,
            Forwarded {
                proposal,
                proposed,
                deadline,
                term,
            },
        );
        (key, session)
    }

    /// The leader's answer to a forward. A refusal by a node that is no longer leader puts
    /// the proposal back to wait for the next leader (it was never appended).
    pub(crate) fn forward_answered(&mut self, outcome: &ForwardOutcome, applying: LogIndex) {
        let Some(forwarded) = self.forwarded.remove(&outcome.id.0) else {
            return; // a duplicate or late answer
        };
        match outcome.result {
            Ok((term, index)) if index > applying => self.place(index, term, forwarded.proposal),
            // Already applied before the answer arrived: the result was not captured.
            Ok(_) => self.fail(forwarded.proposal, ProposeError::OutcomeUnknown),
            Err(crate::message::ForwardRefusal::NotLeader) => {
                // Back to wait with its session: a copy the refusing node appended before it
                // stepped down (or lost its memory of the forward in a restart) and this one,
                // forwarded again, then apply once between them.
                self.wait_for_leader(forwarded.proposal, forwarded.proposed, forwarded.deadline);
            }
            Err(crate::message::ForwardRefusal::UncommittedFull) => {
                self.fail(forwarded.proposal, ProposeError::UncommittedFull)
            }
            Err(crate::message::ForwardRefusal::TooLarge { limit }) => self.fail(
                forwarded.proposal,
                ProposeError::TooLarge {
                    bytes: forwarded.proposed.data.len(),
                    limit: limit as usize,
                },
            ),
        }
    }

    /// The entry at this node's commit index has term `committed_term`: forwards sent to
    /// leaders of older terms and not answered end [`ProposeError::LeaderReplaced`] at once.
    ///
    /// Why no answer can matter any more: an entry of a newer term is committed, so every
    /// entry of an older term that will ever be committed is at a lower index and committed
    /// already (a later leader holds it; no leader of the older term can get a majority past
    /// it, and entries after it in any later log have newer terms). A forward placed by its
    /// leader is thus committed or lost for good; this node never heard where, so it cannot
    /// tell which.
    pub(crate) fn newer_term_committed(&mut self, committed_term: Term) {
        if self.forwarded.is_empty() || committed_term <= self.forwarded_term_min {
            return;
        }
        let unanswerable: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, f)| f.term < committed_term)
            .map(|(key, _)| *key)
            .collect();
        for key in unanswerable {
            let forwarded = self.forwarded.remove(&key).expect("key just listed");
            self.fail(forwarded.proposal, ProposeError::LeaderReplaced);
        }
        self.forwarded_term_min = self
            .forwarded
            .values()
            .map(|f| f.term)
            .min()
            .unwrap_or(committed_term);
        assert!(
            self.forwarded.values().all(|f| f.term >= committed_term),
            "a forward to a replaced leader is still waiting"
        );
    }

    /// Records that proposal `id` is the entry at (`index`, `term`). A proposal placed earlier
    /// at the same index is displaced: that happens when a leader's answer to a forward named an
    /// index this node later fills itself as a new leader (or another answer names it again).
    /// The displaced entry may still commit (a later leader may hold it) or not, so its outcome
    /// is unknown.
    pub(crate) fn place(&mut self, index: LogIndex, term: Term, id: ProposalId) {
        if let Some((_, displaced)) = self.placed.insert(index, (term, id)) {
            self.fail(displaced, ProposeError::OutcomeUnknown);
        }
        if term < self.term {
            self.ended_term_unscheduled = true; // a late answer to a forward
        }
    }

    /// Entries at or after `from` were removed from the local log: their proposals' fate is
    /// now unknown (another node may still hold and commit them).
    pub(crate) fn truncated_from(&mut self, from: LogIndex) {
        let lost = self.placed.split_off(&from);
        for (_, (_, id)) in lost {
            self.fail(id, ProposeError::OutcomeUnknown);
        }
    }

    /// Entries up to `index` were replaced by a snapshot: this node will not apply them, so
    /// their proposals' results are unknown (they may well have applied elsewhere).
    pub(crate) fn skipped_to(&mut self, index: LogIndex) {
        let kept = self.placed.split_off(&index.next());
        let skipped = std::mem::replace(&mut self.placed, kept);
        for (_, (_, id)) in skipped {
            self.fail(id, ProposeError::OutcomeUnknown);
        }
    }

    /// Matches entries about to be applied to the proposals placed at their indexes.
    pub(crate) fn match_applied(&mut self, entry: &Entry) -> Option<ProposalId> {
        let (term, id) = self.placed.remove(&entry.index)?;
        if term == entry.term {
            Some(id)
        } else {
            self.fail(id, ProposeError::Dropped);
            None
        }
    }

    /// Fails waiting and forwarded proposals whose deadline has passed.
    pub(crate) fn expire(&mut self, now: u64) {
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for waiting in self.waiting.drain(..) {
            if waiting.deadline <= now {
                self.failures.push((waiting.id, ProposeError::NoLeader));
            } else {
                kept.push_back(waiting);
            }
        }
        self.waiting = kept;
        let expired: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(key, _)| *key)
            .collect();
        for key in expired {
            let forwarded = self.forwarded.remove(&key).expect("key just listed");
            self.fail(forwarded.proposal, ProposeError::OutcomeUnknown);
        }
        self.expire_ended_term(now);
    }

    /// Gives placements of ended terms a deadline, and fails those past it.
    fn expire_ended_term(&mut self, now: u64) {
        if std::mem::take(&mut self.ended_term_unscheduled) {
            let deadline = now + self.ended_term_wait_ticks;
            for (index, (term, id)) in &self.placed {
                let scheduled = self.ended_term.get(index).map(|(p, _)| p) == Some(id);
                if *term < self.term && !scheduled {
                    self.ended_term.insert(*index, (*id, deadline));
                }
            }
        }
        let due: Vec<LogIndex> = self
            .ended_term
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(index, _)| *index)
            .collect();
        for index in due {
            let (id, _) = self.ended_term.remove(&index).expect("index just listed");
            if self.placed.get(&index).map(|(_, p)| *p) == Some(id) {
                self.placed.remove(&index);
                self.fail(id, ProposeError::OutcomeUnknown);
            }
        }
    }

    /// Leader side: the answer already given to a forward with this key, if it is a duplicate.
    pub(crate) fn seen_forward(&self, from: NodeId, key: u64) -> Option<ForwardOutcome> {
        self.seen_forwards
            .get(&from)
            .and_then(|(_, answers)| answers.get(&key).cloned())
    }

    /// Leader side: remembers the answer to a forward, within a bounded window.
    pub(crate) fn remember_forward(&mut self, from: NodeId, outcome: ForwardOutcome) {
        let (order, answers) = self.seen_forwards.entry(from).or_default();
        if order.len() >= FORWARD_DEDUPE_WINDOW_MAX {
            if let Some(oldest) = order.pop_front() {
                answers.remove(&oldest);
            }
        }
        order.push_back(outcome.id.0);
        answers.insert(outcome.id.0, outcome);
    }

    /// Term `term` began: forward answers of the old one are no longer needed, and proposals
    /// placed in ended terms get `wait_ticks` more to resolve (see `ended_term`).
    pub(crate) fn new_term(&mut self, term: Term, wait_ticks: u64) {
        self.seen_forwards.clear();
        self.term = term;
        self.ended_term_wait_ticks = wait_ticks;
        self.ended_term_unscheduled = !self.placed.is_empty();
    }

    /// No leader was heard for an election timeout by a node that will not campaign (a
    /// learner, or a node removed without knowing it): placed proposals get `wait_ticks` more
    /// to apply, then fail with `OutcomeUnknown`.
    pub(crate) fn leader_silent(&mut self, now: u64, wait_ticks: u64) {
        let deadline = now + wait_ticks;
        for (index, (_, id)) in &self.placed {
            if self.ended_term.get(index).map(|(p, _)| p) != Some(id) {
                self.ended_term.insert(*index, (*id, deadline));
            }
        }
    }

    /// Every tracked proposal fails with `OutcomeUnknown` (the node is shutting down).
    pub(crate) fn fail_all(&mut self) {
        let waiting: Vec<_> = self.waiting.drain(..).map(|w| w.id).collect();
        for id in waiting {
            self.fail(id, ProposeError::NoLeader);
        }
        let forwarded: Vec<_> = std::mem::take(&mut self.forwarded).into_values().collect();
        for f in forwarded {
            self.fail(f.proposal, ProposeError::OutcomeUnknown);
        }
        let placed: Vec<_> = std::mem::take(&mut self.placed).into_values().collect();
        for (_, id) in placed {
            self.fail(id, ProposeError::OutcomeUnknown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ForwardOutcome;

    fn waiting(id: u64, data: &'static [u8]) -> Waiting {
        Waiting {
            id: ProposalId(id),
            proposed: Proposed {
                data: Bytes::from_static(data),
                session: None,
            },
            deadline: 100,
        }
    }

    /// Seed 49 of the simulation: a follower's forward was placed at i51/t1 by the old leader;
    /// the follower then led t2 and placed its own proposal at i51/t2. Both used to meet at one
    /// index: a panic on the leader path, a silently lost proposal on the forward path.
    #[test]
    fn a_proposal_displaced_at_its_index_ends_unknown() {
        let mut proposals = Proposals::new(1 << 32);
        let (key, _) = proposals.forward(waiting(1, b"a"), Term(1));
        let answer = ForwardOutcome {
            id: ProposalId(key),
            result: Ok((Term(1), LogIndex(51))),
        };
        proposals.forward_answered(&answer, LogIndex(49));
        proposals.place(LogIndex(51), Term(2), ProposalId(2));
        assert_eq!(
            proposals.failures,
            vec![(ProposalId(1), ProposeError::OutcomeUnknown)]
        );
        assert_eq!(proposals.tracked(), 1);

        let (key, _) = proposals.forward(waiting(3, b"b"), Term(1));
        let answer = ForwardOutcome {
            id: ProposalId(key),
            result: Ok((Term(3), LogIndex(51))),
        };
        proposals.forward_answered(&answer, LogIndex(49));
        assert_eq!(
            proposals.failures.last(),
            Some(&(ProposalId(2), ProposeError::OutcomeUnknown)),
            "a forward answer displaces too, instead of losing the earlier proposal"
        );
        assert_eq!(proposals.tracked(), 1);
    }

    /// With forward sessions on, a forward without a session gets a new one-off session, and
    /// keeps it when the leader refuses it and it is forwarded again: both copies then carry
    /// one tag, so at most one applies. A proposal with a client session keeps that one.
    #[test]
    fn a_refused_forward_is_forwarded_again_in_the_same_session() {
        let mut proposals = Proposals::new(1 << 32);
        proposals.set_forward_sessions(SessionId(500));
        let (key, session) = proposals.forward(waiting(1, b"a"), Term(1));
        let expected = SessionTag {
            session: SessionId(500),
            sequence: 1,
        };
        assert_eq!(session, Some(expected));
        let refused = ForwardOutcome {
            id: ProposalId(key),
            result: Err(crate::message::ForwardRefusal::NotLeader),
        };
        proposals.forward_answered(&refused, LogIndex(0));
        let again = proposals.take_waiting().pop_front().expect("waits again");
        let (_, session_again) = proposals.forward(again, Term(1));
        assert_eq!(session_again, Some(expected), "the same session");

        let (_, next) = proposals.forward(waiting(2, b"b"), Term(1));
        assert_eq!(next.map(|t| t.session), Some(SessionId(501)), "a new one");
        let mut client = waiting(3, b"c");
        let tag = SessionTag {
            session: SessionId(9),
            sequence: 4,
        };
        client.proposed.session = Some(tag);
        assert_eq!(
            proposals.forward(client, Term(1)).1,
            Some(tag),
            "the client's own"
        );
    }

    /// Seed 2532 of the simulation: a follower's forward was placed at i260/t7 by a leader
    /// that was then cut off; the next leader's log ended at i259 and the cluster went idle, so
    /// index 260 was never applied nor truncated and the proposer never heard back.
    #[test]
    fn a_placement_of_an_ended_term_ends_unknown_after_the_wait() {
        let mut proposals = Proposals::new(1 << 32);
        proposals.new_term(Term(7), 10);
        proposals.place(LogIndex(260), Term(7), ProposalId(1));
        proposals.place(LogIndex(261), Term(7), ProposalId(2));
        proposals.expire(100);
        assert!(
            proposals.failures.is_empty(),
            "the current term's placements wait"
        );

        proposals.new_term(Term(8), 10);
        proposals.place(LogIndex(262), Term(7), ProposalId(3)); // a late forward answer
        proposals.place(LogIndex(263), Term(8), ProposalId(4));
        proposals.expire(101); // deadlines at 111
        let applied = Entry {
            term: Term(7),
            index: LogIndex(261),
            payload: crate::types::EntryPayload::Blank,
        };
        assert_eq!(proposals.match_applied(&applied), Some(ProposalId(2)));
        proposals.expire(110);
        assert!(proposals.failures.is_empty(), "{:?}", proposals.failures);
        proposals.expire(111);
        assert_eq!(
            proposals.failures,
            vec![
                (ProposalId(1), ProposeError::OutcomeUnknown),
                (ProposalId(3), ProposeError::OutcomeUnknown)
            ]
        );
        assert_eq!(proposals.tracked(), 1, "the term-8 placement still waits");
        assert!(proposals.ended_term.is_empty());
    }
}
