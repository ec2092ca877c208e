//! What a running node tells its callers, one narrow signal per question: who leads, how far
//! the state machine has applied, which membership is committed. Each is a `watch` the driver
//! sends on only when its value changes, so a caller waiting for one event wakes for that
//! event, not for every commit. The display [`Status`] is rebuilt on a tick and when one of
//! these changes, never per commit.

use crate::membership::Membership;
use crate::protocol::{RawNode, Role, Status};
use crate::types::{LogIndex, NodeId, Term};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Who this node is in its term, and whom it follows: what [`crate::runtime::RaftNode::watch_leadership`]
/// publishes, once per change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// The node's term.
    pub term: Term,
    /// Its role in that term.
    pub role: Role,
    /// The leader it knows for the term, if any (itself when it leads).
    pub leader: Option<NodeId>,
}

impl Leadership {
    fn of(raw: &RawNode) -> Leadership {
        Leadership {
            term: raw.term(),
            role: raw.role(),
            leader: raw.leader(),
        }
    }

    /// What a stopped node says: it leads nothing and knows no leader.
    fn stopped(self) -> Leadership {
        Leadership {
            role: Role::Follower,
            leader: None,
            ..self
        }
    }
}

/// The newest committed membership, and the index of the entry that set it: what
/// [`crate::runtime::RaftNode::watch_membership`] publishes, once per change. Unlike
/// [`Status::membership`] (the newest in the log, which a new leader may still cut), this one
/// is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedMembership {
    /// The index of the entry that set it (0 for the initial voters; a snapshot's index when
    /// it came with one).
    pub index: LogIndex,
    /// The membership.
    pub membership: Membership,
}

/// The driver's side of the signals.
pub(super) struct Signals {
    leadership: watch::Sender<Leadership>,
    applied: watch::Sender<LogIndex>,
    membership: watch::Sender<CommittedMembership>,
    status: watch::Sender<Status>,
    /// The commit index as of the driver's last ready: read by `RaftNode::status`, never
    /// waited on (waiting is for the applied index).
    commit_index: Arc<AtomicU64>,
}

/// The callers' side: cloned into every `RaftNode` handle.
#[derive(Clone)]
pub(super) struct SignalReceivers {
    pub(super) leadership: watch::Receiver<Leadership>,
    pub(super) applied: watch::Receiver<LogIndex>,
    pub(super) membership: watch::Receiver<CommittedMembership>,
    pub(super) status: watch::Receiver<Status>,
    commit_index: Arc<AtomicU64>,
}

impl Signals {
    /// The signals of a node about to start, at its restored state.
    pub(super) fn new(raw: &RawNode, applied: LogIndex) -> (Signals, SignalReceivers) {
        let (leadership, leadership_receiver) = watch::channel(Leadership::of(raw));
        let (applied_sender, applied_receiver) = watch::channel(applied);
        let (index, membership) = raw.committed_membership();
        let committed = CommittedMembership {
            index,
            membership: membership.clone(),
        };
        let (membership_sender, membership_receiver) = watch::channel(committed);
        let mut status = raw.status();
        status.applied_index = applied;
        let (status_sender, status_receiver) = watch::channel(status);
        let commit_index = Arc::new(AtomicU64::new(raw.commit_index().0));
        let receivers = SignalReceivers {
            leadership: leadership_receiver,
            applied: applied_receiver,
            membership: membership_receiver,
            status: status_receiver,
            commit_index: commit_index.clone(),
        };
        let signals = Signals {
            leadership,
            applied: applied_sender,
            membership: membership_sender,
            status: status_sender,
            commit_index,
        };
        (signals, receivers)
    }

    /// Publishes what changed since the last call. The display status is rebuilt when
    /// `refresh` (a tick, a snapshot) asks for it or when leadership or the committed
    /// membership changed; the other signals each send only on a change of their own.
    /// Called before any answer for the entries of a ready can reach a caller, so a caller
    /// that got an answer reads a commit index that covers it.
    pub(super) fn publish(&self, raw: &RawNode, applied: LogIndex, refresh: bool) {
        self.commit_index
            .store(raw.commit_index().0, Ordering::Release);
        let leadership = Leadership::of(raw);
        let leadership_changed = self.leadership.send_if_modified(|current| {
            let changed = *current != leadership;
            // A leader known for a new term is news worth a line; an election's gap is not.
            let new_leader = leadership.leader.is_some()
                && (leadership.leader != current.leader || leadership.term != current.term);
            if new_leader && leadership.leader == Some(raw.id()) {
                tracing::info!(term = leadership.term.0, "this node leads");
            } else if let Some(leader) = leadership.leader.filter(|_| new_leader) {
                tracing::info!(
                    term = leadership.term.0,
                    leader = leader.0,
                    "following a leader"
                );
            }
            *current = leadership;
            changed
        });
        let (index, membership) = raw.committed_membership();
        let membership_changed = self.membership.send_if_modified(|current| {
            // A membership is set once per index, so the index tells a change.
            let changed = current.index != index;
            if changed {
                current.index = index;
                current.membership = membership.clone();
            }
            changed
        });
        self.applied.send_if_modified(|current| {
            let changed = *current < applied;
            *current = (*current).max(applied);
            changed
        });
        if refresh || leadership_changed || membership_changed {
            let mut status = raw.status();
            status.applied_index = applied;
            self.status.send_replace(status);
        }
    }

    /// The node stopped: it leads nothing and knows no leader. Receivers then close as the
    /// driver drops these senders.
    pub(super) fn stopped(&self) {
        self.leadership
            .send_modify(|current| *current = current.stopped());
        self.status.send_modify(|status| {
            status.role = Role::Follower;
            status.leader = None;
            status.progress.clear();
        });
    }
}

impl SignalReceivers {
    /// The display status, with the commit and applied indexes as of now (the rest as of the
    /// last tick or change).
    pub(super) fn status(&self) -> Status {
        let mut status = self.status.borrow().clone();
        let leadership = *self.leadership.borrow();
        status.term = leadership.term;
        status.role = leadership.role;
        status.leader = leadership.leader;
        status.commit_index = status
            .commit_index
            .max(LogIndex(self.commit_index.load(Ordering::Acquire)));
        status.applied_index = status.applied_index.max(*self.applied.borrow());
        status
    }
}
