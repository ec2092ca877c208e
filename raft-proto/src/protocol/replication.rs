//! Log replication (Raft §5.3): the leader's side (progress, pipelining, commit) and the
//! follower's (the consistency check and its rejection hint), plus proposal routing.

use super::progress::{Progress, ReplicationState};
use super::proposals::Proposed;
use super::{ProposeError, RawNode, Role};
use crate::message::{
    AppendResponse, ForwardOutcome, ForwardRefusal, ForwardedProposal, MessageBody,
};
use crate::types::{
    Entry, EntryPayload, Incarnation, LogIndex, NodeId, ProposalId, SessionCommand, SessionId,
    SessionTag, Term,
};
use bytes::Bytes;

/// Heartbeat answers without progress, while appends are outstanding, after which a leader
/// assumes an append was lost and probes the follower again.
const STALLED_HEARTBEATS_MAX: u32 = 2;

impl RawNode {
    // ----- leader -------------------------------------------------------------------------

    pub(super) fn become_leader(&mut self) {
        assert_eq!(
            self.vote,
            Some(self.id),
            "only a candidate that voted for itself leads"
        );
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.uncommitted_bytes = 0;
        let next = self.log.last_index().next();
        self.progress.clear();
        self.sync_progress();
        for progress in self.progress.values_mut() {
            *progress = Progress::new(next, progress.incarnation);
        }
        // A blank entry of the new term lets the leader commit, and so learn the commit index
        // of, everything before it (Raft §5.4.2, §8).
        self.log.append(Entry {
            term: self.term,
            index: next,
            payload: EntryPayload::Blank,
        });
        self.needs_broadcast = true;
        self.flush_waiting_proposals();
        self.adopt_waiting_reads();
    }

    pub(super) fn tick_leader(&mut self) {
        self.tick_transfer();
        self.tick_snapshot_sends();
        self.replace_restarted_members();
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_timeout_ticks_min {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.quorum_active() {
                self.become_follower(self.term, None);
                return;
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// CheckQuorum: true when a majority (this node included) was heard from since the last
    /// check. Clears the marks for the next period.
    fn quorum_active(&mut self) -> bool {
        let me = self.id;
        let progress = &self.progress;
        let membership = self.membership();
        let active = membership.is_quorum(|id| {
            id == me
                || progress
                    .get(&id)
                    .is_some_and(|p| p.recent_active && membership.counts(id, p.incarnation))
        });
        for progress in self.progress.values_mut() {
            progress.recent_active = false;
        }
        active
    }

    /// Sends a heartbeat round: liveness, the commit index, and confirmation for the reads
    /// registered so far.
    pub(super) fn broadcast_heartbeat(&mut self) {
        let read_seq = self.start_read_round();
        let committed = self.log.committed;
        let heartbeats: Vec<(NodeId, LogIndex, Incarnation)> = self
            .progress
            .iter()
            .map(|(id, p)| (*id, p.match_index.min(committed), p.incarnation))
            .collect();
        for (to, commit, follower_incarnation) in heartbeats {
            if let Some(progress) = self.progress.get_mut(&to) {
                progress.commit_sent(commit);
            }
            self.send(
                to,
                MessageBody::Heartbeat {
                    commit,
                    read_seq,
                    follower_incarnation,
                },
            );
        }
    }

    pub(super) fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in peers {
            self.send_appends(to, true);
        }
    }

    /// Sends `to` what it lacks (used by a leadership transfer).
    pub(super) fn send_appends_to(&mut self, to: NodeId) {
        self.send_appends(to, false);
    }

    /// Sends `to` what it lacks, as far as its state and the in-flight limits allow. With
    /// `allow_empty`, sends an empty append when there is nothing new (to carry the commit
    /// index or probe).
    pub(super) fn send_appends(&mut self, to: NodeId, allow_empty: bool) {
        let messages_max = self.config.inflight_messages_max;
        let bytes_max = self.config.inflight_bytes_max;
        let mut first = true;
        loop {
            let last = self.log.last_index();
            let Some(progress) = self.progress.get(&to) else {
                return;
            };
            if progress.state == ReplicationState::Snapshot {
                self.send_snapshot_chunks(to);
                return;
            }
            if progress.is_paused(messages_max, bytes_max) {
                return;
            }
            let next = progress.next_index;
            let committed = self.log.committed;
            if next > last && !(first && (allow_empty || progress.can_bump_commit(committed))) {
                return;
            }
            first = false;
            let prev_log_index = next.prev();
            let Some(prev_log_term) = self.log.term(prev_log_index) else {
                // Purged: the follower catches up from the snapshot.
                self.start_snapshot(to);
                return;
            };
            let entries = if next <= last {
                self.log.slice(next, self.config.message_bytes_max)
            } else {
                Vec::new()
            };
            let bytes: usize = entries.iter().map(Entry::size_bytes).sum();
            let sent_last = entries.last().map(|e| e.index);
            let progress = self.progress.get_mut(&to).expect("checked above");
            let keep_going = match progress.state {
                ReplicationState::Probe => {
                    progress.probe_sent = true;
                    false
                }
                ReplicationState::Snapshot => false,
                ReplicationState::Replicate => match sent_last {
                    Some(sent_last) => {
                        progress.next_index = sent_last.next();
                        progress.inflights.add(sent_last, bytes);
                        true
                    }
                    None => false,
                },
            };
            progress.commit_sent(committed.min(sent_last.unwrap_or(prev_log_index)));
            self.send(
                to,
                MessageBody::Append {
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit: committed,
                },
            );
            if !keep_going {
                return;
            }
        }
    }

    pub(super) fn step_leader(&mut self, from: NodeId, body: MessageBody) {
        match body {
            MessageBody::AppendResponse(response) => self.handle_append_response(from, response),
            MessageBody::HeartbeatResponse { read_seq } => {
                self.handle_heartbeat_response(from);
                self.read_round_answered(from, read_seq);
            }
            MessageBody::Forward { proposals } => self.handle_forward(from, proposals),
            MessageBody::ForwardResponse { outcomes } => self.forward_answered(from, outcomes),
            // Vote answers from a finished election, or (impossible between correct nodes)
            // an append from another leader of this term: nothing to do.
            _ => {}
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId) {
        let last = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        progress.probe_sent = false;
        if progress.state == ReplicationState::Replicate && progress.inflights.len() > 0 {
            progress.stalled_heartbeats += 1;
            if progress.stalled_heartbeats >= STALLED_HEARTBEATS_MAX {
                progress.become_probe();
            }
        }
        if progress.match_index < last {
            self.send_appends(from, false);
        }
    }

    fn handle_append_response(&mut self, from: NodeId, response: AppendResponse) {
        let last = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        match response {
            AppendResponse::Accepted { match_index } => {
                if match_index > last {
                    return; // cannot match more than the leader holds: not from this term
                }
                let state = progress.state;
                let advanced = progress.update_match(match_index);
                match state {
                    ReplicationState::Probe if advanced || progress.match_index == match_index => {
                        progress.become_replicate()
                    }
                    ReplicationState::Snapshot
                        if progress
                            .snapshot
                            .as_ref()
                            .is_some_and(|s| progress.match_index >= s.meta.last_index) =>
                    {
                        // Installed: replicate from the entry after the snapshot.
                        progress.become_replicate()
                    }
                    _ => {}
                }
                if advanced {
                    self.maybe_commit();
                }
                self.send_appends(from, false);
                self.advance_transfer(from);
            }
            AppendResponse::Rejected {
                rejected_index,
                hint_term,
                hint_index,
            } => {
                let resume_after = if hint_term > Term(0) {
                    self.log.find_conflict_by_term(hint_index, hint_term)
                } else {
                    hint_index
                };
                let progress = self.progress.get_mut(&from).expect("checked above");
                if progress.back_off(rejected_index, resume_after) {
                    self.send_appends(from, true);
                }
            }
        }
    }

    /// Commits the highest index a majority holds durably, if it is of this term (entries of
    /// earlier terms commit only with it: Raft §5.4.2, Figure 8).
    pub(super) fn maybe_commit(&mut self) -> bool {
        let me = self.id;
        let persisted = self.log.persisted;
        let progress = &self.progress;
        let membership = self.membership();
        let candidate = membership.committed_index(|id| {
            if id == me {
                persisted
            } else {
                progress
                    .get(&id)
                    .filter(|p| membership.counts(id, p.incarnation))
                    .map_or(LogIndex(0), |p| p.match_index)
            }
        });
        if candidate <= self.log.committed || self.log.term(candidate) != Some(self.term) {
            return false;
        }
        let newly_committed: usize = self
            .log
            .range(self.log.committed.next(), candidate)
            .map(|e| e.payload.payload_bytes())
            .sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(newly_committed);
        self.log.commit_to(candidate);
        self.needs_broadcast = true;
        self.release_reads_awaiting_commit();
        self.membership_committed();
        true
    }

    /// Appends a command as leader. Refused when the uncommitted log is full (but one entry
    /// is always allowed when nothing is uncommitted, so a large command cannot wedge it).
    fn append_proposal(&mut self, proposed: Proposed) -> Result<(Term, LogIndex), ForwardRefusal> {
        assert_eq!(self.role, Role::Leader);
        let payload = match proposed.session {
            None => EntryPayload::Command(proposed.data),
            Some(tag) => EntryPayload::SessionCommand(SessionCommand {
                tag,
                command: proposed.data,
            }),
        };
        // Counted as the commit path subtracts it.
        let bytes = payload.payload_bytes();
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + bytes > self.config.uncommitted_bytes_max
        {
            return Err(ForwardRefusal::UncommittedFull);
        }
        let index = self.log.last_index().next();
        self.log.append(Entry {
            term: self.term,
            index,
            payload,
        });
        self.uncommitted_bytes += bytes;
        self.needs_broadcast = true;
        Ok((self.term, index))
    }

    fn handle_forward(&mut self, from: NodeId, proposals: Vec<ForwardedProposal>) {
        let mut outcomes = Vec::with_capacity(proposals.len());
        for proposal in proposals {
            // Forwards are de-duplicated so a duplicated message cannot apply a command twice.
            if let Some(answer) = self.proposals.seen_forward(from, proposal.id.0) {
                outcomes.push(answer);
                continue;
            }
            let result = if self.transfer.is_some() {
                // The proposer keeps it and forwards it to the next leader.
                Err(ForwardRefusal::NotLeader)
            } else if proposal.data.len() > self.config.proposal_bytes_max {
                Err(ForwardRefusal::TooLarge {
                    limit: self.config.proposal_bytes_max as u64,
                })
            } else {
                self.append_proposal(Proposed {
                    data: proposal.data,
                    session: proposal.session,
                })
            };
            let outcome = ForwardOutcome {
                id: proposal.id,
                result,
            };
            self.proposals.remember_forward(from, outcome.clone());
            outcomes.push(outcome);
        }
        self.send(from, MessageBody::ForwardResponse { outcomes });
    }

    // ----- proposals ----------------------------------------------------------------------

    /// Proposes a command in a client session: it is appended as a
    /// [`EntryPayload::SessionCommand`], so however often it (or a retry with the same
    /// `session`) reaches the log, a runtime applies it once (see `raft_core::sessions`). The
    /// outcome arrives as for [`RawNode::propose`].
    pub fn propose_in_session(&mut self, id: ProposalId, session: SessionTag, data: Bytes) {
        self.propose_command(
            id,
            Proposed {
                data,
                session: Some(session),
            },
        );
    }

    /// From now on every proposal this node forwards without a session of its own travels in
    /// a new one-off session, numbered up from `first`: a forward that the network duplicates,
    /// or that a leader refuses after appending it (it restarted and forgot the forward), then
    /// still applies once. `first` must be random in every life of the node (the runtime draws
    /// it with [`SessionId::random`]); entries in these sessions need a session-aware applier.
    pub fn set_forward_sessions(&mut self, first: SessionId) {
        self.proposals.set_forward_sessions(first);
    }

    /// The checks every proposal passes before it is routed.
    pub(super) fn propose_command(&mut self, id: ProposalId, proposed: Proposed) {
        if proposed.data.len() > self.config.proposal_bytes_max {
            let limit = self.config.proposal_bytes_max;
            let bytes = proposed.data.len();
            self.proposals
                .fail(id, ProposeError::TooLarge { bytes, limit });
            return;
        }
        if let Some(transfer) = self.transfer {
            self.proposals
                .fail(id, ProposeError::TransferInProgress(transfer.target));
            return;
        }
        if self.proposals.tracked() >= self.config.pending_proposals_max {
            self.proposals.fail(id, ProposeError::TooManyPending);
            return;
        }
        let deadline = self.now + u64::from(self.config.proposal_wait_ticks);
        if self.role == Role::Leader {
            self.propose_as_leader(id, proposed);
        } else {
            // Forwarded (or kept until a leader is known) when the ready is taken, so the
            // proposals of one step travel in one message.
            self.proposals.wait_for_leader(id, proposed, deadline);
        }
    }

    fn propose_as_leader(&mut self, id: ProposalId, proposed: Proposed) {
        match self.append_proposal(proposed) {
            Ok((term, index)) => self.proposals.place(index, term, id),
            Err(_) => self.proposals.fail(id, ProposeError::UncommittedFull),
        }
    }

    /// Routes proposals that wait for a leader: appended here if this node leads, forwarded
    /// if a leader is known, kept (until their deadline) otherwise.
    pub(super) fn flush_waiting_proposals(&mut self) {
        match (self.role, self.leader) {
            (Role::Leader, _) => {
                for waiting in self.proposals.take_waiting() {
                    self.propose_as_leader(waiting.id, waiting.proposed);
                }
            }
            (_, Some(leader)) => {
                let waiting = self.proposals.take_waiting();
                let mut batch = Vec::new();
                let mut batch_bytes = 0;
                for waiting in waiting {
                    let data = waiting.proposed.data.clone();
                    if !batch.is_empty() && batch_bytes + data.len() > self.config.message_bytes_max
                    {
                        let proposals = std::mem::take(&mut batch);
                        self.send(leader, MessageBody::Forward { proposals });
                        batch_bytes = 0;
                    }
                    batch_bytes += data.len();
                    let (key, session) = self.proposals.forward(waiting, self.term);
                    batch.push(ForwardedProposal {
                        id: ProposalId(key),
                        data,
                        session,
                    });
                }
                if !batch.is_empty() {
                    self.send(leader, MessageBody::Forward { proposals: batch });
                }
            }
            _ => {}
        }
    }

    // ----- follower -----------------------------------------------------------------------

    pub(super) fn step_follower(&mut self, from: NodeId, body: MessageBody) {
        match body {
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                self.heard_from_leader(from);
                self.handle_append(from, prev_log_index, prev_log_term, entries, leader_commit);
            }
            MessageBody::Heartbeat {
                commit,
                read_seq,
                follower_incarnation,
            } => {
                self.heard_from_leader(from);
                // A commit index bounded by the match index of an earlier life of this node
                // says nothing of the entries this life holds (they may come from another
                // leader, at the same indexes).
                if !self.install_pending() && follower_incarnation == self.config.incarnation {
                    self.log.commit_to(commit.min(self.log.last_index()));
                }
                self.send(from, MessageBody::HeartbeatResponse { read_seq });
            }
            MessageBody::SnapshotChunk {
                meta,
                offset,
                data,
                len,
            } => {
                self.heard_from_leader(from);
                self.handle_snapshot_chunk(from, meta, offset, data, len);
            }
            MessageBody::Forward { proposals } => self.refuse_forwards(from, proposals),
            MessageBody::ForwardResponse { outcomes } => self.forward_answered(from, outcomes),
            MessageBody::TimeoutNow if self.leader == Some(from) => self.campaign_for_transfer(),
            _ => {}
        }
    }

    fn heard_from_leader(&mut self, leader: NodeId) {
        self.election_elapsed = 0;
        self.leader = Some(leader);
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) {
        if !entries_follow(prev_log_index, &entries, self.term) {
            tracing::warn!(%from, "ignoring an append whose entries are not contiguous");
            return;
        }
        if prev_log_index < self.log.committed {
            // Everything up to our commit index already matches the leader's log.
            let match_index = self.log.committed;
            self.send(
                from,
                MessageBody::AppendResponse(AppendResponse::Accepted { match_index }),
            );
            return;
        }
        let memberships: Vec<_> = entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some((e.index, m.clone())),
                _ => None,
            })
            .collect();
        match self.log.try_append(prev_log_index, prev_log_term, entries) {
            Some((last_new, truncated_from)) => {
                if let Some(from_index) = truncated_from {
                    // Proposals placed at cut entries may still commit elsewhere, or not.
                    self.proposals.truncated_from(from_index);
                }
                self.follow_memberships(truncated_from, memberships);
                self.log.commit_to(leader_commit.min(last_new));
                self.send(
                    from,
                    MessageBody::AppendResponse(AppendResponse::Accepted {
                        match_index: last_new,
                    }),
                );
            }
            None => {
                let probe_from = prev_log_index.min(self.log.last_index());
                let hint_index = self.log.find_conflict_by_term(probe_from, prev_log_term);
                let hint_term = self.log.term(hint_index).unwrap_or(Term(0));
                self.send(
                    from,
                    MessageBody::AppendResponse(AppendResponse::Rejected {
                        rejected_index: prev_log_index,
                        hint_term,
                        hint_index,
                    }),
                );
            }
        }
    }
}

/// True when `entries` follow `prev` without gaps and carry terms no newer than the leader's.
fn entries_follow(prev: LogIndex, entries: &[Entry], leader_term: Term) -> bool {
    entries
        .iter()
        .enumerate()
        .all(|(k, e)| e.index == LogIndex(prev.0 + 1 + k as u64) && e.term <= leader_term)
}
