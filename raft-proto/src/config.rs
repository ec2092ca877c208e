//! Protocol configuration: timing in ticks, and a named limit for every queue and batch.

use crate::types::{Incarnation, NodeId};
use std::fmt;

/// Settings of one protocol instance. Build with [`Config::new`], adjust fields, and call
/// [`Config::validate`] (the protocol calls it too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// The voters a new cluster starts with, this node included (like etcd's
    /// `--initial-cluster`). Used only while neither the log nor a snapshot holds a membership.
    /// Empty for a node that joins a running cluster: it learns the membership from the
    /// leader once added (as a learner) and never campaigns before.
    pub voters: Vec<NodeId>,
    /// What is known of the initial voters besides their IDs (their peer addresses), recorded
    /// in the initial membership so that nodes that join later learn it too. Optional; only
    /// initial voters may be named.
    pub initial_nodes: std::collections::BTreeMap<NodeId, crate::membership::NodeMeta>,
    /// This run's [`Incarnation`]: 0 for a node whose log store survives restarts, and for an
    /// amnesiac node's first start. A node whose store does not survive a restart (an
    /// in-memory store) must start every later run with a higher incarnation than any before
    /// (keep a counter in a file: `raft_storage_mem` has one). Such a node then starts with no
    /// membership at all (it does not trust `voters`: the cluster it bootstrapped moved on),
    /// never campaigns or counts until the leader has recorded its new incarnation, and rejoins
    /// as a learner that is promoted back automatically once caught up.
    pub incarnation: Incarnation,
    /// Seed of the node's random number generator (election timeouts). Mixed with `id`, so one
    /// seed serves a whole cluster.
    pub seed: u64,
    /// Lowest randomized election timeout, in ticks (inclusive).
    pub election_timeout_ticks_min: u32,
    /// Highest randomized election timeout, in ticks (exclusive).
    pub election_timeout_ticks_max: u32,
    /// How often a leader sends heartbeats, in ticks. Must be below the election timeout.
    pub heartbeat_interval_ticks: u32,
    /// Run a pre-vote round before a real election, so a node that cannot win does not raise
    /// the term and depose a healthy leader.
    pub pre_vote: bool,
    /// A leader that has not heard from a majority for an election timeout steps down, and a
    /// follower that heard from a leader within the minimum election timeout refuses votes.
    pub check_quorum: bool,
    /// Largest append a leader sends in one message, counted by [`crate::Entry::size_bytes`].
    /// One entry larger than this is still sent alone.
    pub message_bytes_max: usize,
    /// Appends a leader keeps unacknowledged per follower in the pipelined state.
    pub inflight_messages_max: usize,
    /// Bytes a leader keeps unacknowledged per follower in the pipelined state.
    pub inflight_bytes_max: usize,
    /// Payload bytes of uncommitted entries a leader holds before refusing proposals.
    pub uncommitted_bytes_max: usize,
    /// Largest command accepted in one proposal.
    pub proposal_bytes_max: usize,
    /// Proposals this node tracks at once (waiting for a leader, for the leader's answer, or
    /// for their entry to apply). Past it a proposal is refused.
    pub pending_proposals_max: usize,
    /// How long a proposal on a node without a known leader, or forwarded and not yet placed by
    /// the leader, waits before failing, in ticks.
    pub proposal_wait_ticks: u32,
    /// Committed entries handed to the state machine in one batch.
    pub apply_batch_entries_max: usize,
    /// A learner is promoted to voter only once it answered the leader and holds the log up to
    /// at most this many entries behind the leader's last index (etcd refuses to promote a
    /// learner that is not ready, too). Otherwise the promotion is refused with
    /// [`crate::membership::MembershipError::NotCaughtUp`].
    pub promotion_lag_entries_max: u64,
    /// Serve reads on the leader from a lease instead of a heartbeat round. Needs
    /// `check_quorum`, and assumes clocks drift apart by less than the gap between
    /// `read_lease_ticks` and `election_timeout_ticks_min` (see
    /// [the protocol's reads](crate::protocol#reads-without-the-log)).
    pub lease_reads: bool,
    /// How long after a confirmed heartbeat round the leader's lease lasts, in ticks. Must be
    /// below `election_timeout_ticks_min`.
    pub read_lease_ticks: u32,
    /// Reads this node tracks at once; past it a read is refused. The runtime
    /// (`raft_core::runtime`) holds at most as many again whose read index is known and that
    /// wait for the state machine to reach it; past that too a read fails at once with
    /// [`crate::protocol::ProposeError::TooManyPending`].
    pub pending_reads_max: usize,
    /// Take a snapshot once this many entries were applied since the last one; 0 turns the
    /// automatic policy off (a snapshot is then taken only when asked for).
    pub snapshot_interval_entries: u64,
    /// Most payload bytes of applied entries the in-memory log (and so the log store) holds:
    /// past it the node takes a snapshot and compacts, whatever `snapshot_interval_entries`
    /// says (0 included), and the tail it keeps below the snapshot is cut to half this many
    /// bytes, whatever `snapshot_tail_entries` says.
    ///
    /// A snapshot, not a refusal of proposals: the bytes are in entries already committed and
    /// applied, which refusing new commands would not free; the size trigger is what TiKV's
    /// `raft-log-gc-size-limit` does, while etcd and openraft count entries only, so large
    /// commands (or the count policy off) let their logs grow without bound. Entries not yet
    /// applied are bounded elsewhere: `uncommitted_bytes_max` on the leader, and a follower
    /// applies what it holds. Must be at least `proposal_bytes_max`.
    pub log_bytes_max: usize,
    /// Entries kept in the log below a new snapshot, so that a briefly lagging follower still
    /// catches up from the log instead of a snapshot (within `log_bytes_max / 2` bytes).
    pub snapshot_tail_entries: u64,
    /// Largest snapshot chunk sent in one message.
    pub snapshot_chunk_bytes_max: usize,
    /// Snapshot chunks a leader keeps unacknowledged per follower.
    pub snapshot_inflight_chunks_max: usize,
    /// Ticks a leader waits for a follower to acknowledge a snapshot chunk before it resends
    /// from the last acknowledged byte (a lost chunk or connection).
    pub snapshot_resend_ticks: u32,
    /// Client sessions the session table holds (see `raft_core::sessions`); a new session in a
    /// full table evicts the one whose last command is oldest in the log. Every forwarded
    /// proposal takes one, so this also bounds how late a duplicated forward is still caught.
    /// Must be the same on every node.
    pub sessions_max: usize,
    /// A session whose last command is more than this many entries behind the command being
    /// applied expires. Must be the same on every node.
    pub session_idle_entries_max: u64,
    /// Largest state machine answer a session keeps for a retry; a retry of a command with a
    /// longer answer gets "applied once, answer not kept". 0 keeps none. Must be the same on
    /// every node.
    pub session_result_bytes_max: usize,
}

/// Ticks are 10 ms in the runtime by default, so these defaults give a 150–300 ms election
/// timeout and a 50 ms heartbeat.
impl Config {
    /// A configuration with the defaults for node `id` in a cluster of `voters`.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Config {
        Config {
            id,
            voters,
            initial_nodes: std::collections::BTreeMap::new(),
            incarnation: Incarnation(0),
            seed: 0,
            election_timeout_ticks_min: 15,
            election_timeout_ticks_max: 30,
            heartbeat_interval_ticks: 5,
            pre_vote: true,
            check_quorum: true,
            message_bytes_max: 1 << 20,
            inflight_messages_max: 256,
            inflight_bytes_max: 16 << 20,
            uncommitted_bytes_max: 64 << 20,
            proposal_bytes_max: 1 << 20,
            pending_proposals_max: 1 << 16,
            proposal_wait_ticks: 60,
            apply_batch_entries_max: 4096,
            promotion_lag_entries_max: 1000,
            lease_reads: false,
            read_lease_ticks: 11,
            pending_reads_max: 1 << 16,
            snapshot_interval_entries: 100_000,
            log_bytes_max: 256 << 20,
            snapshot_tail_entries: 10_000,
            snapshot_chunk_bytes_max: 1 << 20,
            snapshot_inflight_chunks_max: 4,
            snapshot_resend_ticks: 30,
            sessions_max: 1 << 14,
            session_idle_entries_max: 1_000_000,
            session_result_bytes_max: 1024,
        }
    }

    /// Checks every setting and the relations between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |why: String| Err(ConfigError(why));
        if self.id == NodeId(0) {
            return fail("node id 0 is reserved for \"no node\"".into());
        }
        if !self.voters.is_empty() && !self.voters.contains(&self.id) {
            return fail(format!(
                "node {} is not among the initial voters {:?} (leave them empty to join a running cluster)",
                self.id, self.voters
            ));
        }
        let mut sorted = self.voters.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.voters.len() || sorted.contains(&NodeId(0)) {
            return fail(format!(
                "voters {:?} contain a duplicate or node 0",
                self.voters
            ));
        }
        if let Some(id) = self
            .initial_nodes
            .keys()
            .find(|id| !self.voters.contains(id))
        {
            return fail(format!(
                "initial_nodes names {id}, which is not among the initial voters {:?}",
                self.voters
            ));
        }
        if self.heartbeat_interval_ticks == 0 {
            return fail("heartbeat_interval_ticks must be at least 1".into());
        }
        if self.election_timeout_ticks_min <= self.heartbeat_interval_ticks {
            return fail(format!(
                "election_timeout_ticks_min ({}) must be above heartbeat_interval_ticks ({})",
                self.election_timeout_ticks_min, self.heartbeat_interval_ticks
            ));
        }
        if self.election_timeout_ticks_max <= self.election_timeout_ticks_min {
            return fail(format!(
                "election_timeout_ticks_max ({}) must be above election_timeout_ticks_min ({})",
                self.election_timeout_ticks_max, self.election_timeout_ticks_min
            ));
        }
        let positive = [
            ("message_bytes_max", self.message_bytes_max),
            ("inflight_messages_max", self.inflight_messages_max),
            ("inflight_bytes_max", self.inflight_bytes_max),
            ("uncommitted_bytes_max", self.uncommitted_bytes_max),
            ("proposal_bytes_max", self.proposal_bytes_max),
            ("pending_proposals_max", self.pending_proposals_max),
            ("apply_batch_entries_max", self.apply_batch_entries_max),
            ("pending_reads_max", self.pending_reads_max),
            ("log_bytes_max", self.log_bytes_max),
            ("snapshot_chunk_bytes_max", self.snapshot_chunk_bytes_max),
            (
                "snapshot_inflight_chunks_max",
                self.snapshot_inflight_chunks_max,
            ),
            ("snapshot_resend_ticks", self.snapshot_resend_ticks as usize),
            ("sessions_max", self.sessions_max),
        ];
        for (name, value) in positive {
            if value == 0 {
                return fail(format!("{name} must be at least 1"));
            }
        }
        if self.lease_reads && !self.check_quorum {
            return fail("lease_reads needs check_quorum: without it a deposed leader could serve stale reads".into());
        }
        // Ticks are whole steps, so a follower's promise may end a tick early: a lease is
        // safe only if it ends before `election_timeout_ticks_min - 1` of any follower's ticks
        // (see the `protocol` module's reads section).
        if u64::from(self.read_lease_ticks) + 1 >= u64::from(self.election_timeout_ticks_min) {
            return fail(format!(
                "read_lease_ticks ({}) must be below election_timeout_ticks_min - 1 ({}): a longer lease can outlast the followers' vote promise",
                self.read_lease_ticks,
                self.election_timeout_ticks_min.saturating_sub(1)
            ));
        }
        if self.log_bytes_max < self.proposal_bytes_max {
            return fail(format!(
                "log_bytes_max ({}) must be at least proposal_bytes_max ({}): else one entry calls for a snapshot",
                self.log_bytes_max, self.proposal_bytes_max
            ));
        }
        if self.session_idle_entries_max == 0 {
            return fail("session_idle_entries_max must be at least 1".into());
        }
        if self.proposal_wait_ticks == 0 {
            return fail("proposal_wait_ticks must be at least 1".into());
        }
        Ok(())
    }
}

/// A configuration that cannot work, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid raft configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log byte bound below the largest command would call for a snapshot at every entry
    /// (and 0 would mean none at all): both are refused by name.
    #[test]
    fn a_log_byte_bound_below_one_command_is_refused() {
        let mut config = Config::new(NodeId(1), vec![NodeId(1)]);
        config.log_bytes_max = config.proposal_bytes_max - 1;
        let error = config.validate().expect_err("a bound below one command");
        assert!(error.0.contains("log_bytes_max"), "{error}");
        config.log_bytes_max = 0;
        let error = config.validate().expect_err("a zero bound");
        assert!(
            error.0.contains("log_bytes_max must be at least 1"),
            "{error}"
        );
        config.log_bytes_max = config.proposal_bytes_max;
        assert_eq!(config.validate(), Ok(()));
    }

    /// Issue 12, scenario 3: `protocol/reads.rs` calls a lease as long as one tick less than
    /// the minimum election timeout unsafe even with clocks in step (a follower's promise may
    /// end a tick early); the configuration refuses it.
    #[test]
    fn a_lease_as_long_as_the_vote_promise_is_refused() {
        let mut config = Config::new(NodeId(1), vec![NodeId(1)]);
        config.lease_reads = true;
        config.read_lease_ticks = config.election_timeout_ticks_min - 1;
        let error = config.validate().expect_err("unsafe lease accepted");
        assert!(error.0.contains("read_lease_ticks"), "{error}");
        config.read_lease_ticks = config.election_timeout_ticks_min - 2;
        assert_eq!(config.validate(), Ok(()));
    }

    /// A session table needs room for one session and a window of at least one entry; an
    /// answer limit of 0 (keep no answers) is allowed.
    #[test]
    fn session_limits_are_validated() {
        let mut config = Config::new(NodeId(1), vec![NodeId(1)]);
        config.sessions_max = 0;
        let error = config.validate().expect_err("no room for a session");
        assert!(error.0.contains("sessions_max"), "{error}");
        config.sessions_max = 1;
        config.session_idle_entries_max = 0;
        let error = config.validate().expect_err("no window");
        assert!(error.0.contains("session_idle_entries_max"), "{error}");
        config.session_idle_entries_max = 1;
        config.session_result_bytes_max = 0;
        assert_eq!(config.validate(), Ok(()));
    }
}
