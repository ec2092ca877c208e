//! Terms, votes and elections (Raft §5.2, §5.4.1; PreVote and CheckQuorum from the Raft
//! thesis §9.6).

use super::{RawNode, Role};
use crate::message::{ForwardOutcome, ForwardRefusal, Message, MessageBody};
use crate::types::{Incarnation, LogIndex, NodeId, Term};

impl RawNode {
    /// A message carries a higher term. Returns false when the message is to be ignored.
    pub(super) fn adopt_higher_term(&mut self, message: &Message) -> bool {
        match message.body {
            MessageBody::VoteRequest {
                pre_vote, transfer, ..
            } => {
                if self.vote_promised_to_leader(transfer) {
                    return false;
                }
                if !pre_vote {
                    self.become_follower(message.term, None);
                }
                // A pre-vote request changes nothing here: its term is only a proposal.
                true
            }
            // A granted pre-vote echoes the term the pre-candidate would campaign in.
            MessageBody::VoteResponse {
                pre_vote: true,
                granted: true,
                ..
            } => true,
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::SnapshotChunk { .. } => {
                self.become_follower(message.term, Some(message.from));
                true
            }
            _ => {
                self.become_follower(message.term, None);
                true
            }
        }
    }

    /// CheckQuorum's promise: a node that heard from a live leader within the minimum
    /// election timeout votes for no one else (real vote or pre-vote), so a partitioned node
    /// cannot depose that leader and a leader's read lease holds. It holds however the node
    /// learned of a newer term meanwhile (a late answer carrying it makes the node forget the
    /// leader, not the promise). With lease reads, a node that just (re)started may have made
    /// that promise before crashing: it waits out one minimum timeout too. A transfer was
    /// asked for by the leader itself: its lease does not stand.
    pub(super) fn vote_promised_to_leader(&self, transfer: bool) -> bool {
        let min = self.config.election_timeout_ticks_min;
        let heard_recently = self
            .leader_heard_at
            .is_some_and(|at| self.now - at < u64::from(min));
        self.config.check_quorum
            && !transfer
            && ((self.leader.is_some() && self.election_elapsed < min)
                || heard_recently
                || (self.config.lease_reads && self.now < u64::from(min)))
    }

    /// A message carries a lower term: most are dropped, some answered so the sender learns
    /// the newer term.
    pub(super) fn answer_stale_term(&mut self, message: &Message) {
        match message.body {
            // A deposed leader (or one cut off and rejoining) learns it is stale from any
            // answer carrying our term; without it, PreVote and CheckQuorum could leave it
            // ignored forever.
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::SnapshotChunk { .. } => {
                self.send(message.from, MessageBody::HeartbeatResponse { read_seq: 0 })
            }
            MessageBody::VoteRequest { pre_vote: true, .. } => self.send(
                message.from,
                MessageBody::VoteResponse {
                    pre_vote: true,
                    granted: false,
                    candidate_incarnation: message.incarnation,
                },
            ),
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_vote_request(
        &mut self,
        from: NodeId,
        candidate_incarnation: Incarnation,
        request_term: Term,
        pre_vote: bool,
        last_log_index: LogIndex,
        last_log_term: Term,
        transfer: bool,
    ) {
        // A repeated request from the node this one already voted for gets the same answer:
        // that vote is durable and was given outside any lease.
        let promised = self.vote != Some(from) && self.vote_promised_to_leader(transfer);
        let can_vote = !promised
            && (self.vote == Some(from)
                || (self.vote.is_none() && self.leader.is_none())
                || (pre_vote && request_term > self.term));
        let granted = can_vote && self.log.is_up_to_date(last_log_index, last_log_term);
        if granted && !pre_vote {
            // Recorded before the answer leaves: the answer waits for the hard state write.
            self.vote = Some(from);
            self.election_elapsed = 0;
        }
        let term = if granted && pre_vote {
            request_term
        } else {
            self.term
        };
        self.send_message(Message {
            from: self.id,
            to: from,
            term,
            incarnation: self.config.incarnation,
            body: MessageBody::VoteResponse {
                pre_vote,
                granted,
                candidate_incarnation,
            },
        });
    }

    pub(super) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_timeout {
            // What this node proposed through a leader it no longer hears may never reach
            // it: a removed node may never learn of its removal, and a pre-vote that keeps
            // failing never starts a term.
            let wait = u64::from(self.config.proposal_wait_ticks);
            self.proposals.leader_silent(self.now, wait);
            if self.may_campaign() {
                self.start_election();
            } else {
                // Learners, joining and removed nodes never campaign. Silent for a whole
                // election timeout, the leader is no longer known: a learner that kept it
                // (with its clock restarted) would refuse every vote for ever under
                // CheckQuorum's promise (`vote_promised_to_leader`), while a promotion that
                // needs its vote waits for a leader (seed 1523 of 20000).
                self.leader = None;
                self.reset_election_timeout();
            }
        }
    }

    pub(super) fn start_election(&mut self) {
        if !self.may_campaign() {
            return;
        }
        if self.config.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate();
        }
    }

    fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate;
        // Forget the old leader: otherwise, with CheckQuorum, peers' lease checks and this
        // node's own can leave the cluster without any leader.
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timeout();
        if self.alone_is_quorum() {
            self.become_candidate();
            return;
        }
        self.request_votes(true, false);
    }

    /// The leader handed over (TimeoutNow): campaign at once, without a pre-vote, asking
    /// voters to set aside their lease. Not when this node may not campaign: a life the
    /// membership has not recorded yet (the leader did not know of it when it chose).
    pub(super) fn campaign_for_transfer(&mut self) {
        if self.may_campaign() {
            self.become_candidate_for(true);
        }
    }

    fn become_candidate(&mut self) {
        self.become_candidate_for(false);
    }

    fn become_candidate_for(&mut self, transfer: bool) {
        self.term = self.term.next();
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        let wait = u64::from(self.config.proposal_wait_ticks);
        self.proposals.new_term(self.term, wait);
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timeout();
        if self.alone_is_quorum() {
            self.become_leader();
            return;
        }
        self.request_votes(false, transfer);
    }

    fn request_votes(&mut self, pre_vote: bool, transfer: bool) {
        let term = if pre_vote {
            self.term.next()
        } else {
            self.term
        };
        let last_log_index = self.log.last_index();
        let last_log_term = self.log.last_term();
        for to in self.voter_peers() {
            self.send_message(Message {
                from: self.id,
                to,
                term,
                incarnation: self.config.incarnation,
                body: MessageBody::VoteRequest {
                    pre_vote,
                    last_log_index,
                    last_log_term,
                    transfer,
                },
            });
        }
    }

    pub(super) fn step_candidate(&mut self, from: NodeId, body: MessageBody) {
        match body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::SnapshotChunk { .. } => {
                // A leader won this term.
                self.become_follower(self.term, Some(from));
                self.step_follower(from, body);
            }
            MessageBody::VoteResponse {
                pre_vote,
                granted,
                candidate_incarnation,
            } => {
                if pre_vote != (self.role == Role::PreCandidate) {
                    return; // an answer from an earlier round
                }
                if candidate_incarnation != self.config.incarnation {
                    return; // an answer to an earlier life of this node, about its log
                }
                self.votes.insert(from, granted);
                let votes = &self.votes;
                let won = self
                    .membership()
                    .is_quorum(|id| votes.get(&id) == Some(&true));
                let lost = self
                    .membership()
                    .is_lost(|id| votes.get(&id) == Some(&false));
                if won {
                    if self.role == Role::PreCandidate {
                        self.become_candidate();
                    } else {
                        self.become_leader();
                    }
                } else if lost {
                    self.become_follower(self.term, None);
                }
            }
            MessageBody::Forward { proposals } => self.refuse_forwards(from, proposals),
            MessageBody::ForwardResponse { outcomes } => self.forward_answered(from, outcomes),
            _ => {}
        }
    }

    /// Answers forwards this node cannot take, not being the leader. A forward it already
    /// answered while it led this term (a duplicate arriving after it stepped down) gets that
    /// answer again: the command is in the log and may commit, and "not leader" would send the
    /// proposer to forward it again, applying it twice.
    pub(super) fn refuse_forwards(
        &mut self,
        from: NodeId,
        proposals: Vec<crate::message::ForwardedProposal>,
    ) {
        let outcomes = proposals
            .into_iter()
            .map(|p| {
                self.proposals
                    .seen_forward(from, p.id.0)
                    .unwrap_or(ForwardOutcome {
                        id: p.id,
                        result: Err(ForwardRefusal::NotLeader),
                    })
            })
            .collect();
        self.send(from, MessageBody::ForwardResponse { outcomes });
    }

    pub(super) fn forward_answered(&mut self, from: NodeId, outcomes: Vec<ForwardOutcome>) {
        let refused = outcomes
            .iter()
            .any(|o| o.result == Err(ForwardRefusal::NotLeader));
        if refused && self.leader == Some(from) && self.role != Role::Leader {
            // It says it does not lead (it stepped down, or is handing over): forget it, so
            // the refused proposals wait for the next leader instead of bouncing back to it.
            self.leader = None;
        }
        for outcome in &outcomes {
            self.proposals.forward_answered(outcome, self.log.applying);
        }
    }
}
