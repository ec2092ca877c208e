//! The messages nodes exchange. Every message is one-way: a response is just another message,
//! which is what lets the leader pipeline appends without waiting for answers.

use crate::snapshot::SnapshotMeta;
use crate::types::{Entry, Incarnation, LogIndex, NodeId, ProposalId, SessionTag, Term};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A message between two members of one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The recipient.
    pub to: NodeId,
    /// The sender's term (for a pre-vote request, the term it would campaign in).
    pub term: Term,
    /// The sender's incarnation ([`Incarnation`]): its votes and acknowledgements count only
    /// when the membership records this one.
    pub incarnation: Incarnation,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// A (pre-)candidate asks for a vote (Raft §5.2; PreVote from the Raft thesis §9.6).
    VoteRequest {
        /// True for the pre-vote round, which changes no state on the receiver.
        pre_vote: bool,
        /// Index of the candidate's last entry.
        last_log_index: LogIndex,
        /// Term of the candidate's last entry.
        last_log_term: Term,
        /// The leader asked this candidate to campaign (leadership transfer): voters answer
        /// even if they heard from that leader recently.
        transfer: bool,
    },
    /// The answer to a `VoteRequest`.
    VoteResponse {
        /// Mirrors the request.
        pre_vote: bool,
        /// The incarnation of the candidate asked (the request's): a vote granted to an earlier
        /// life of the candidate judged that life's log, so a later life does not count it.
        candidate_incarnation: Incarnation,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// The leader replicates entries following `prev_log_index` (Raft §5.3).
    Append {
        /// Index of the entry just before `entries`.
        prev_log_index: LogIndex,
        /// Term of that entry, for the consistency check.
        prev_log_term: Term,
        /// The entries, in order and without gaps; may be empty (a probe).
        entries: Vec<Entry>,
        /// The leader's commit index.
        leader_commit: LogIndex,
    },
    /// The answer to an `Append`.
    AppendResponse(AppendResponse),
    /// The leader's periodic liveness signal; carries the commit index the follower may use.
    /// Also sent at once to confirm leadership for pending reads (ReadIndex).
    Heartbeat {
        /// `min(leader commit, follower's known match index)`: never beyond what the follower holds.
        commit: LogIndex,
        /// The leader's read round; echoed in the answer, so an answer confirms every read
        /// registered up to it.
        read_seq: u64,
        /// The follower's life that match index was learned from: a follower in another life
        /// (it restarted without its log and may since hold other entries) ignores `commit`.
        follower_incarnation: Incarnation,
    },
    /// The answer to a `Heartbeat`, which tells the leader the follower is alive.
    HeartbeatResponse {
        /// The `read_seq` of the heartbeat answered.
        read_seq: u64,
    },
    /// The leader hands over: the recipient, now as up to date as the leader, campaigns at
    /// once (leadership transfer, Raft thesis §3.10).
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of its client (follower reads).
    ReadIndexRequest {
        /// The follower's key for this request: new for every request, never the caller's
        /// read ID, so an answer matches only the request it answers.
        id: ProposalId,
    },
    /// The leader's answer: the index the follower must apply before serving the read.
    ReadIndexResponse {
        /// The key of the request answered.
        id: ProposalId,
        /// The read index, or `None` when the recipient could not serve it (not the leader).
        index: Option<LogIndex>,
    },
    /// The leader streams a snapshot to a follower whose next entry it has purged. Chunks of
    /// one snapshot travel in order on the snapshot lane.
    SnapshotChunk {
        /// The snapshot: a follower resumes a transfer only for the same snapshot.
        meta: SnapshotMeta,
        /// Where `data` starts in the snapshot.
        offset: u64,
        /// The bytes. A driver fills them in from its store before sending (see
        /// [`crate::protocol::Ready::snapshot_chunks`]); `len` says how many.
        data: Bytes,
        /// Length of the chunk.
        len: u64,
    },
    /// A follower reports how much of a snapshot it holds: the leader sends from there.
    SnapshotResponse {
        /// Last index of the snapshot.
        last_index: LogIndex,
        /// Its term.
        last_term: Term,
        /// Its checksum (with index and term, which snapshot this is).
        checksum: u32,
        /// Bytes of it received in order so far; 0 after a failed check.
        received: u64,
    },
    /// A follower hands client proposals to the leader it knows.
    Forward {
        /// The proposals, each tagged with the follower's own ID for it.
        proposals: Vec<ForwardedProposal>,
    },
    /// The leader says where each forwarded proposal went, or why it was refused.
    ForwardResponse {
        /// One outcome per forwarded proposal.
        outcomes: Vec<ForwardOutcome>,
    },
}

/// The answer to an `Append`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResponse {
    /// The follower's log now matches the leader's up to `match_index` and that is durable.
    Accepted {
        /// The last index known to match the leader's log.
        match_index: LogIndex,
    },
    /// The consistency check failed at `prev_log_index`.
    Rejected {
        /// The `prev_log_index` of the rejected append, so stale rejections can be recognised.
        rejected_index: LogIndex,
        /// Hint: the follower's term at `min(rejected_index, last index)`.
        hint_term: Term,
        /// Hint: the largest index at or below `rejected_index` whose term is at most
        /// `hint_term`, from which the leader resumes probing (a term at a time, not an entry).
        hint_index: LogIndex,
    },
}

/// A client proposal travelling from a follower to the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedProposal {
    /// The follower's ID for the proposal.
    pub id: ProposalId,
    /// The command.
    pub data: Bytes,
    /// The proposal's client session, if it has one: the leader appends it as a
    /// [`crate::EntryPayload::SessionCommand`], so however often the network or a re-forward
    /// delivers it, it takes effect once. A follower that forwards sessions
    /// ([`crate::protocol::RawNode::set_forward_sessions`]) gives every forward one.
    pub session: Option<SessionTag>,
}

/// Where the leader put a forwarded proposal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardOutcome {
    /// The follower's ID for the proposal.
    pub id: ProposalId,
    /// `Ok((term, index))` of the entry the leader appended, or why it did not.
    pub result: Result<(Term, LogIndex), ForwardRefusal>,
}

/// Why a leader refused a forwarded proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardRefusal {
    /// The recipient is not (or no longer) the leader.
    NotLeader,
    /// The leader's uncommitted log is at `uncommitted_bytes_max`.
    UncommittedFull,
    /// The command is larger than the leader accepts.
    TooLarge {
        /// The leader's `proposal_bytes_max`.
        limit: u64,
    },
}

impl Message {
    /// A rough wire size used by flow control: the entries' sizes plus a fixed header.
    pub fn size_bytes(&self) -> usize {
        const HEADER_BYTES: usize = 48;
        HEADER_BYTES
            + match &self.body {
                MessageBody::Append { entries, .. } => entries.iter().map(Entry::size_bytes).sum(),
                MessageBody::Forward { proposals } => {
                    proposals.iter().map(|p| p.data.len() + 32).sum()
                }
                MessageBody::ForwardResponse { outcomes } => outcomes.len() * 24,
                MessageBody::SnapshotChunk { meta, len, .. } => {
                    *len as usize + 32 * meta.membership.members().len()
                }
                _ => 0,
            }
    }
}

/// Which stream a transport should carry a message on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Votes, appends, heartbeats and forwarding: small, latency-sensitive, in order per peer.
    Ordinary,
    /// Bulk snapshot data: carried apart so it never delays a heartbeat.
    Snapshot,
}

impl Message {
    /// The lane a transport should use for this message. Transports must keep the order of
    /// messages within a lane to one peer; they need not keep order across lanes.
    pub fn lane(&self) -> Lane {
        match self.body {
            MessageBody::SnapshotChunk { .. } => Lane::Snapshot,
            _ => Lane::Ordinary,
        }
    }
}

/// What a message relies on being durable at its sender before it may leave. The protocol
/// sorts messages by this (not by the sender's role) into [`crate::protocol::Ready::messages`]
/// and [`crate::protocol::Ready::messages_after_write`], and simulators check it on every
/// message that leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Promise {
    /// Nothing: pre-votes (their term is only a proposal), forwarding and read requests and
    /// their answers. A crash of the sender right after sending changes nothing they said.
    Nothing,
    /// The sender's term and vote: appends, heartbeats, snapshot chunks and TimeoutNow from a
    /// leader, real vote requests, refused votes and heartbeat answers. A term that is not
    /// durable may be lived again, differently, after a crash.
    Term,
    /// Everything the sender's store was asked to write so far: a granted vote, and answers
    /// to appends and snapshot chunks (the leader counts them toward commits).
    Writes,
}

impl MessageBody {
    /// What this message relies on being durable at its sender.
    pub fn promise(&self) -> Promise {
        match self {
            MessageBody::VoteRequest { pre_vote: true, .. }
            | MessageBody::VoteResponse { pre_vote: true, .. }
            | MessageBody::ReadIndexRequest { .. }
            | MessageBody::ReadIndexResponse { .. }
            | MessageBody::Forward { .. }
            | MessageBody::ForwardResponse { .. } => Promise::Nothing,
            MessageBody::VoteResponse { granted: true, .. }
            | MessageBody::AppendResponse(_)
            | MessageBody::SnapshotResponse { .. } => Promise::Writes,
            MessageBody::VoteRequest { .. }
            | MessageBody::VoteResponse { .. }
            | MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::HeartbeatResponse { .. }
            | MessageBody::TimeoutNow
            | MessageBody::SnapshotChunk { .. } => Promise::Term,
        }
    }
}
