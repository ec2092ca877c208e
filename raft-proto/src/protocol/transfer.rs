//! Leadership transfer (Raft thesis §3.10): the leader stops taking proposals, brings the
//! target up to date, and tells it to campaign at once. If the target has not taken over
//! within an election timeout, the leader resumes.

use super::{RawNode, Role};
use crate::message::MessageBody;
use crate::types::NodeId;
use std::fmt;

/// A transfer in progress.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transfer {
    pub(crate) target: NodeId,
    /// Ticks since the transfer began.
    pub(crate) elapsed: u32,
    /// Whether the target was told to campaign.
    pub(crate) timeout_now_sent: bool,
}

/// Why a leadership transfer failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferError {
    /// This node is not the leader.
    NotLeader {
        /// The leader it knows, if any.
        leader: Option<NodeId>,
    },
    /// The target is not a voter of the cluster.
    NotAVoter(NodeId),
    /// Another transfer is in progress.
    InProgress(NodeId),
    /// The target did not take over within an election timeout; the leader resumed.
    TimedOut(NodeId),
    /// The leader stepped down for the transfer, but another node won the election.
    OtherLeader {
        /// The node asked for.
        target: NodeId,
        /// The node that leads instead.
        leader: NodeId,
    },
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::NotLeader {
                leader: Some(leader),
            } => {
                write!(f, "this node is not the leader; ask {leader}")
            }
            TransferError::NotLeader { leader: None } => {
                write!(f, "this node is not the leader and no leader is known")
            }
            TransferError::NotAVoter(id) => write!(f, "{id} is not a voting member"),
            TransferError::InProgress(id) => {
                write!(f, "a transfer of leadership to {id} is already in progress")
            }
            TransferError::OtherLeader { target, leader } => {
                write!(f, "leadership went to {leader} instead of {target}")
            }
            TransferError::TimedOut(id) => write!(
                f,
                "{id} did not take over within an election timeout; the leader resumed"
            ),
        }
    }
}

impl std::error::Error for TransferError {}

impl RawNode {
    /// Starts handing leadership to `target`. Proposals are refused until the transfer ends;
    /// a failure after this call arrives in [`super::Ready::transfer_failed`]. Transferring
    /// to the current leader succeeds at once. With `lease_reads`, this leader serves no more
    /// reads from its lease in this term: a round confirms each (see the reads module).
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        if !self.membership().voters.contains(&target) {
            return Err(TransferError::NotAVoter(target));
        }
        if let Some(transfer) = self.transfer {
            return Err(TransferError::InProgress(transfer.target));
        }
        if target == self.id {
            return Ok(());
        }
        // The target may win without this node hearing of it while a lease would still run.
        self.revoke_lease();
        self.transfer = Some(Transfer {
            target,
            elapsed: 0,
            timeout_now_sent: false,
        });
        self.advance_transfer(target);
        Ok(())
    }

    /// The target of the transfer in progress, if any.
    pub fn transferring_to(&self) -> Option<NodeId> {
        self.transfer.map(|t| t.target)
    }

    /// Leader: tells the target to campaign once it holds the whole log; sends it what it
    /// lacks otherwise.
    pub(super) fn advance_transfer(&mut self, from: NodeId) {
        let Some(transfer) = self.transfer else {
            return;
        };
        if transfer.target != from || transfer.timeout_now_sent {
            return;
        }
        // A target heard in a life the membership has not recorded cannot win: wait (the
        // transfer times out, then the leader records that life).
        let caught_up = self.counts_for_quorum(from)
            && self
                .progress
                .get(&from)
                .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send(from, MessageBody::TimeoutNow);
            self.transfer = Some(Transfer {
                timeout_now_sent: true,
                ..transfer
            });
        } else {
            self.send_appends_to(from);
        }
    }

    /// Leader, every tick: a transfer that took an election timeout is abandoned.
    pub(super) fn tick_transfer(&mut self) {
        let Some(mut transfer) = self.transfer else {
            return;
        };
        transfer.elapsed += 1;
        if transfer.elapsed >= self.config.election_timeout_ticks_min {
            self.transfer = None;
            self.transfer_failed = Some(TransferError::TimedOut(transfer.target));
        } else {
            self.transfer = Some(transfer);
        }
    }
}
