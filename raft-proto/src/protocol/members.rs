//! Membership in the protocol: which configuration is in force, how a leader proposes a
//! change and leaves a joint configuration, and what a removed leader does.

use super::progress::Progress;
use super::{RawNode, Role};
use crate::membership::{Membership, MembershipChange, MembershipError};
use crate::message::{Message, MessageBody};
use crate::types::{Entry, EntryPayload, LogIndex, NodeId, ProposalId};

impl RawNode {
    /// The membership in force: the newest in the log (committed or not), else the one at the
    /// log's start.
    pub fn membership(&self) -> &Membership {
        self.memberships
            .last()
            .map_or(&self.base_membership.1, |(_, m)| m)
    }

    /// The index of the entry that set the membership in force (the snapshot's, or 0 for the
    /// initial voters).
    pub fn membership_index(&self) -> LogIndex {
        self.memberships
            .last()
            .map_or(self.base_membership.0, |(at, _)| *at)
    }

    /// The newest committed membership and the index of the entry that set it: the one a
    /// caller may rely on (a membership in force but not committed may still be cut from the
    /// log by a new leader). A runtime publishes it as it changes.
    pub fn committed_membership(&self) -> (LogIndex, &Membership) {
        let committed = self.log.committed;
        self.memberships
            .iter()
            .rev()
            .find(|(at, _)| *at <= committed)
            .map_or(
                (self.base_membership.0, &self.base_membership.1),
                |(at, m)| (*at, m),
            )
    }

    /// The membership in force at `index` (at or after the log's offset).
    pub(super) fn membership_at(&self, index: LogIndex) -> &Membership {
        self.memberships
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .map_or(&self.base_membership.1, |(_, m)| m)
    }

    /// The log was compacted up to `index`: memberships at or below it fold into the base.
    pub(super) fn forget_memberships_to(&mut self, index: LogIndex) {
        let base = self.membership_at(index).clone();
        self.memberships.retain(|(at, _)| *at > index);
        self.base_membership = (index, base);
    }

    /// True when this node may campaign: it votes in the membership in force, or that
    /// membership is not committed yet and it voted in the one before (Raft thesis §4.2.2: a
    /// server removed by an entry that has not committed may still be needed to commit it).
    /// Without the second case a leader that removed itself, and whose final configuration
    /// reached no one else, left a two-voter cluster with no possible leader: it would not
    /// campaign, and its longer log kept the other voter from winning. Such a candidate does
    /// not count its own vote (it is not in the configuration the votes are counted in).
    ///
    /// Either way it must vote in this life ([`crate::Incarnation`]): a node that restarted
    /// without its state waits until the leader has recorded its new life and promoted it back.
    pub(super) fn may_campaign(&self) -> bool {
        let (me, life) = (self.id, self.config.incarnation);
        if self.membership().counts(me, life) {
            return true;
        }
        let at = self.membership_index();
        at > self.log.committed
            && at > LogIndex(0)
            && self.membership_at(at.prev()).counts(me, life)
    }

    /// Leader: true when what `id` says counts toward a quorum (commits, CheckQuorum, read
    /// confirmations): a voter the leader hears in the life the membership records, not
    /// rejoining ([`Membership::counts`]). A newer life lost what the recorded one promised.
    pub(super) fn counts_for_quorum(&self, id: NodeId) -> bool {
        self.progress
            .get(&id)
            .is_some_and(|p| self.membership().counts(id, p.incarnation))
    }

    /// Leader: true when it hears `id` in the life the membership records.
    fn heard_in_recorded_life(&self, id: NodeId) -> bool {
        self.progress
            .get(&id)
            .is_some_and(|p| p.incarnation == self.membership().incarnation_of(id))
    }

    /// Sorts out a message by its sender's life ([`crate::Incarnation`]) before anything else
    /// sees it. Returns false to drop it: it comes from an older life than the membership
    /// records (that process is dead), or it is a vote (request or answer) from a life the
    /// membership has not recorded (its promises died with the life before) or from a
    /// rejoining one. A leader that hears a newer life of a follower starts that follower's
    /// progress afresh: its log may be gone.
    pub(super) fn admit_incarnation(&mut self, message: &Message) -> bool {
        let recorded = self.membership().incarnation_of(message.from);
        if message.incarnation < recorded {
            return false;
        }
        let vote = matches!(
            message.body,
            MessageBody::VoteRequest { .. } | MessageBody::VoteResponse { .. }
        );
        // Only what this node knows of the sender: a lagging node may not know yet that the
        // sender votes, and must still answer it.
        let rejoining = self.membership().rejoining.contains(&message.from);
        if vote && (message.incarnation != recorded || rejoining) {
            return false;
        }
        if self.role == Role::Leader && message.term == self.term {
            let Some(progress) = self.progress.get_mut(&message.from) else {
                return true;
            };
            if message.incarnation < progress.incarnation {
                return false;
            }
            if message.incarnation > progress.incarnation {
                tracing::info!(
                    id = %message.from,
                    incarnation = message.incarnation.0,
                    "a member restarted without its state; replicating to it afresh"
                );
                // Its log went back to nothing: probe from the start (a snapshot if the log
                // was compacted), at once rather than at the next heartbeat answer.
                *progress = Progress::new(LogIndex(1), message.incarnation);
                self.send_appends(message.from, true);
            }
        }
        true
    }

    /// Leader: records the new life of a member that restarted without its state (a voter
    /// steps down to a learner), and promotes back a rejoining learner that has caught up.
    /// Only once this term committed. A restart is recorded even while another change is
    /// unfinished (see [`Membership::record_restart`] for why that is safe): that change may
    /// need the restarted node, whose new life counts nowhere, and would never finish. A
    /// promotion waits for the cluster to be settled, like any change.
    pub(super) fn replace_restarted_members(&mut self) {
        if self.role != Role::Leader || self.transfer.is_some() || !self.committed_in_current_term()
        {
            return;
        }
        let membership = self.membership();
        let restarted = self
            .progress
            .iter()
            .find(|(id, p)| p.incarnation > membership.incarnation_of(**id))
            .map(|(id, p)| (*id, p.incarnation));
        if let Some((id, incarnation)) = restarted {
            match membership.record_restart(id, incarnation) {
                Ok(next) => {
                    tracing::info!(%id, incarnation = incarnation.0, "recording a member's new life");
                    self.append_membership(next);
                }
                Err(why) => {
                    tracing::debug!(%id, %why, "cannot record a member's new life yet");
                }
            }
            return;
        }
        if self.membership_change_pending() {
            return;
        }
        let ready = self.membership().rejoining.iter().copied().find(|id| {
            self.membership().learners.contains(id)
                && self.heard_in_recorded_life(*id)
                && self.check_caught_up(*id).is_ok()
        });
        if let Some(id) = ready {
            let next = self
                .membership()
                .apply(&MembershipChange::promote(id))
                .expect("a rejoining learner can be promoted outside a joint configuration");
            tracing::info!(%id, "promoting a rejoining member back to voter");
            self.append_membership(next);
        }
    }

    /// True while a membership change is unfinished: its entry is uncommitted, or the cluster
    /// is in a joint configuration.
    pub fn membership_change_pending(&self) -> bool {
        self.membership_index() > self.log.committed || self.membership().is_joint()
    }

    /// Proposes a membership change (leader only). A change of voters goes through a joint
    /// configuration, which the leader leaves on its own once it commits. The proposal `id`
    /// completes like a command when the change's first entry applies; the change is finished
    /// when [`RawNode::membership`] is no longer joint and committed. Refused with a reason
    /// (and nothing changed) when this node does not lead, another change is unfinished, or
    /// the change is invalid.
    pub fn change_membership(
        &mut self,
        id: ProposalId,
        change: &MembershipChange,
    ) -> Result<(), MembershipError> {
        if self.role != Role::Leader {
            return Err(MembershipError::NotLeader(self.leader));
        }
        if self.transfer.is_some() {
            return Err(MembershipError::TransferInProgress);
        }
        // A new leader first commits its blank entry: it may hold an uncommitted change from an
        // earlier term, and two changes must never overlap.
        if self.membership_change_pending() || !self.committed_in_current_term() {
            return Err(MembershipError::ChangeInProgress);
        }
        let next = self.membership().apply(change)?;
        for id in &change.promote {
            self.check_caught_up(*id)?;
        }
        let index = self.append_membership(next);
        self.proposals.place(index, self.term, id);
        self.assert_invariants();
        Ok(())
    }

    /// Whether learner `id` may be promoted now, as [`RawNode::change_membership`] would
    /// decide: `Ok` once it answered in the life the membership records and holds the log
    /// within `Config::promotion_lag_entries_max` entries of this leader's last index;
    /// [`MembershipError::NotCaughtUp`] (with the figures) while it lags;
    /// [`MembershipError::NotLeader`] on a node that does not lead, and
    /// [`MembershipError::UnknownNode`] when `id` is not a learner. A runtime waiting for a
    /// learner to catch up asks this after each step.
    pub fn learner_caught_up(&self, id: NodeId) -> Result<(), MembershipError> {
        if self.role != Role::Leader {
            return Err(MembershipError::NotLeader(self.leader));
        }
        if !self.membership().learners.contains(&id) {
            return Err(MembershipError::UnknownNode(id));
        }
        self.check_caught_up(id)
    }

    /// Leader: refuses to promote a learner that never answered or lags too far behind.
    fn check_caught_up(&self, id: NodeId) -> Result<(), MembershipError> {
        let match_index = self
            .progress
            .get(&id)
            .map_or(LogIndex(0), |p| p.match_index);
        let last_index = self.log.last_index();
        let lag_entries_max = self.config.promotion_lag_entries_max;
        // Heard in the life the membership records: a learner that restarted without its
        // state and was not recorded yet holds nothing of what the leader believes.
        let caught_up = match_index > LogIndex(0)
            && last_index.0 - match_index.0 <= lag_entries_max
            && self.heard_in_recorded_life(id);
        if caught_up {
            return Ok(());
        }
        Err(MembershipError::NotCaughtUp {
            id,
            match_index,
            last_index,
            lag_entries_max,
        })
    }

    /// Leader: appends a membership entry, which is in force at once.
    fn append_membership(&mut self, membership: Membership) -> LogIndex {
        let index = self.log.last_index().next();
        self.log.append(Entry {
            term: self.term,
            index,
            payload: EntryPayload::Membership(membership.clone()),
        });
        self.memberships.push((index, membership));
        self.sync_progress();
        self.needs_broadcast = true;
        self.release_confirmed_reads();
        index
    }

    /// Leader: one progress per member other than itself; new members start probing at the
    /// end of the log.
    pub(super) fn sync_progress(&mut self) {
        let members = self.membership().members();
        let me = self.id;
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index();
        for id in members {
            if id != me {
                let incarnation = self.membership().incarnation_of(id);
                self.progress
                    .entry(id)
                    .or_insert_with(|| Progress::new(next, incarnation));
            }
        }
        if let Some(transfer) = self.transfer {
            if !self.membership().voters.contains(&transfer.target) {
                self.transfer = None;
            }
        }
    }

    /// Records the memberships among entries a follower just appended, after a cut of the log
    /// at `truncated_from` (whose memberships go with it).
    pub(super) fn follow_memberships(
        &mut self,
        truncated_from: Option<LogIndex>,
        appended: Vec<(LogIndex, Membership)>,
    ) {
        if let Some(from) = truncated_from {
            self.memberships.retain(|(at, _)| *at < from);
        }
        for (at, membership) in appended {
            let newer = self.memberships.last().is_none_or(|(last, _)| *last < at);
            if newer && at > self.log.offset() && self.log.last_index() >= at {
                self.memberships.push((at, membership));
            }
        }
    }

    /// Leader, after its commit index moved: leaves a committed joint configuration, and steps
    /// down once a committed configuration no longer counts it as a voter.
    pub(super) fn membership_committed(&mut self) {
        if self.role != Role::Leader || self.membership_index() > self.log.committed {
            return;
        }
        if self.membership().is_joint() {
            let last = self.membership().leave_joint();
            self.append_membership(last);
            return;
        }
        if !self.membership().is_voter(self.id) {
            // Removed: the change is done and committed. The most up-to-date voter is told to
            // campaign at once (as in a leadership transfer), so the cluster does not wait an
            // election timeout for a new leader.
            tracing::info!(id = %self.id, "this leader was removed from the voters; stepping down");
            let term = self.term;
            self.broadcast_append();
            let last = self.log.last_index();
            let successor = self
                .membership()
                .voters
                .iter()
                .filter_map(|id| self.progress.get(id).map(|p| (p.match_index, *id)))
                .filter(|(matched, _)| *matched == last)
                .max();
            if let Some((_, successor)) = successor {
                self.send(successor, crate::message::MessageBody::TimeoutNow);
            }
            self.become_follower(term, None);
        }
    }

    /// Voters other than this node, the ones asked for votes.
    pub(super) fn voter_peers(&self) -> Vec<NodeId> {
        let me = self.id;
        self.membership()
            .all_voters()
            .into_iter()
            .filter(|id| *id != me)
            .collect()
    }
}
