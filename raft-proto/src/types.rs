//! Plain value types shared by the protocol, the traits and every backend.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! newtype_u64 {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }

        impl From<u64> for $name {
            fn from(value: u64) -> Self {
                $name(value)
            }
        }
    };
}

newtype_u64!(
    /// A member of the cluster. IDs are chosen by the operator, are never 0 and are never reused.
    NodeId,
    "n"
);
newtype_u64!(
    /// One life of a node's state: how many times the node has started without the state it
    /// had before (an in-memory store after a crash, a wiped disk). A node whose storage
    /// survives restarts keeps one incarnation for good (0 unless its data was lost once).
    ///
    /// The membership records each member's incarnation, and a vote, an acknowledgement or a
    /// heartbeat answer counts only when it comes from the recorded one: promises made by an
    /// earlier life are gone with its memory, so a restarted amnesiac node must neither vote
    /// nor count toward a commit under its old identity. The leader that hears a newer
    /// incarnation records it through a membership change (a voter steps down to a learner and
    /// is promoted back once caught up), with no operator action; messages from an older
    /// incarnation than recorded come from a dead process and are dropped. See
    /// [`crate::Config::incarnation`].
    Incarnation,
    "life"
);
newtype_u64!(
    /// A Raft term: a logical clock that grows by one with every election.
    Term,
    "t"
);
newtype_u64!(
    /// A position in the replicated log. The first entry has index 1; index 0 means "nothing".
    LogIndex,
    "i"
);
newtype_u64!(
    /// An identifier the caller gives a proposal so it can match the outcome to the request.
    ProposalId,
    "p"
);

newtype_u64!(
    /// A client session: the proposals made in one session carry increasing sequence numbers,
    /// and the runtime applies each (session, sequence) at most once however often it reaches
    /// the log (see `raft_core::sessions`). Pick one with [`SessionId::random`].
    SessionId,
    "s"
);

impl SessionId {
    /// A new session ID, random enough that two clients (or two lives of one) never pick the
    /// same. Not for the protocol, which takes no OS randomness: for clients and the runtime.
    pub fn random() -> SessionId {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static DRAWN: AtomicU64 = AtomicU64::new(0);
        // std's RandomState holds keys drawn from the OS; hashing a counter and the clock with
        // a fresh one gives independent values without a dependency.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(DRAWN.fetch_add(1, Ordering::Relaxed));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        hasher.write_u64(nanos);
        SessionId(hasher.finish())
    }
}

/// A proposal's place in its client session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionTag {
    /// The session.
    pub session: SessionId,
    /// The proposal's sequence number in the session. A retry of a command reuses it; the next
    /// command of the session takes a higher one.
    pub sequence: u64,
}

impl fmt::Display for SessionTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.session, self.sequence)
    }
}

/// A command proposed in a client session (see `raft_core::sessions`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCommand {
    /// The session and the command's sequence number in it.
    pub tag: SessionTag,
    /// The opaque command for the state machine.
    pub command: Bytes,
}

/// Bytes a [`SessionCommand`] counts for beyond its command (the session and sequence).
pub const SESSION_TAG_BYTES: usize = 16;

impl LogIndex {
    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one, saturating at zero.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

impl Term {
    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by every new leader so that it can commit entries of its own term (Raft §5.4.2).
    /// State machines never see it.
    Blank,
    /// An opaque command for the state machine.
    Command(Bytes),
    /// A new cluster membership, in force from the moment it is in a node's log (Raft thesis
    /// §4.1). State machines never see it.
    Membership(crate::membership::Membership),
    /// A command proposed in a client session. The runtime hands the state machine its
    /// command only the first time the entry's (session, sequence) is applied; a copy applied
    /// again answers the first result instead (see `raft_core::sessions`).
    SessionCommand(SessionCommand),
}

impl EntryPayload {
    /// Bytes of user payload, for the flow-control and memory limits.
    pub fn payload_bytes(&self) -> usize {
        match self {
            EntryPayload::Blank => 0,
            EntryPayload::Command(data) => data.len(),
            EntryPayload::Membership(membership) => 16 * membership.members().len(),
            EntryPayload::SessionCommand(command) => SESSION_TAG_BYTES + command.command.len(),
        }
    }
}

/// One record of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
    /// What the entry carries.
    pub payload: EntryPayload,
}

/// A fixed per-entry overhead (index, term, tag) counted on top of the payload by every byte
/// limit, so that a flood of empty entries is still bounded.
pub const ENTRY_OVERHEAD_BYTES: usize = 24;

impl Entry {
    /// The size this entry counts for against byte limits (payload plus a fixed overhead).
    pub fn size_bytes(&self) -> usize {
        ENTRY_OVERHEAD_BYTES + self.payload.payload_bytes()
    }
}

/// The part of a node's state that must survive a crash before it may act on it.
///
/// Invariant: `term` and `commit` never decrease; `vote`, once set for a term, is never changed
/// within that term.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// Whom this node voted for in `term`, if anyone.
    pub vote: Option<NodeId>,
    /// The highest index this node knows to be committed.
    pub commit: LogIndex,
}
