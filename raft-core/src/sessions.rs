//! Client sessions: exactly-once proposals for every state machine.
//!
//! A network may deliver a message twice, a leader may forget in a restart which forwards it
//! took, and a client whose write timed out does not know whether it applied. Any of them can
//! put the same command in the log twice. A proposal made in a session
//! ([`RaftNode::propose_in_session`](crate::runtime::RaftNode::propose_in_session)) carries a
//! [`SessionTag`]: a [`SessionId`] and a sequence number. The runtime keeps a
//! [`SessionTable`] beside the state machine and passes every committed batch through
//! [`SessionTable::filter`] before [`StateMachine::apply`](crate::StateMachine::apply) (the
//! simulator applies through the same filter), so the state machine does nothing:
//!
//! - a new session, or a sequence above the session's last: applied; the table records the
//!   sequence and the state machine's answer;
//! - the session's last sequence again (a retry, a duplicate, a re-forward): not applied; the
//!   proposer gets the first answer, or [`SessionError::AnswerNotKept`] when the table does not
//!   hold it (below);
//! - a sequence below the last: not applied, [`SessionError::SequenceStale`].
//!
//! A session holds one command in flight: its client waits for an answer (or gives up on it)
//! before it moves to the next sequence. The runtime's own forwarding uses one-off sessions
//! (a fresh session, sequence 1, per forwarded proposal), and so does the kv example's
//! request ID header: both need no order between sessions.
//!
//! # Replicated state
//!
//! The table is a function of the log alone: every node builds the same one by applying the
//! same entries, whatever its timing. Its bounds are therefore decided by log indexes, never
//! by clocks:
//!
//! - **Bound.** At most `Config::sessions_max` sessions. A new session in a full table evicts
//!   the one used longest ago, by the log index of its last applied command (unique per
//!   session, so the choice is the same everywhere).
//! - **Expiry.** A session whose last command is more than `Config::session_idle_entries_max`
//!   entries behind the command being applied is dropped. Idle expiry by index was chosen over
//!   a leader-proposed expiry entry: it needs no extra entries, no leader clock and no change
//!   to the protocol, and a node replaying its log or reading a snapshot reaches the same
//!   decisions by construction. The price is that "idle" is measured in entries, so a busy
//!   cluster forgets sooner in wall time and an idle one never forgets (the bound still
//!   holds). A retry must arrive within that window: once its session is gone, a retry is a
//!   new command and applies again.
//! - **Answers.** Answers up to `Config::session_result_bytes_max` bytes are kept; a longer
//!   one is not (the retry gets [`SessionError::AnswerNotKept`]). This bounds the table's
//!   memory at about `sessions_max * session_result_bytes_max`.
//!
//! These three settings must be the same on every node, like the state machine's code: a node
//! with a smaller bound would forget a session the others remember and apply a retry the
//! others refuse.
//!
//! # Snapshots and restarts
//!
//! The runtime writes the table at the head of every snapshot it builds, before the state
//! machine's bytes, and reads it back before it hands the rest to the state machine (see
//! [`write_snapshot_header`]); a snapshot without the header (written before sessions existed)
//! installs with an empty table. A node that restarts rebuilds the table from its snapshot's
//! header and the log entries after it. A durable state machine that already holds entries
//! past the snapshot ([`StateMachine::applied_index`](crate::StateMachine::applied_index)) does
//! not apply them again, so the runtime replays them through the table alone: sequences and
//! evictions come out exactly as elsewhere, but their answers are unknown. A retry of such a
//! command gets [`SessionError::AnswerNotKept`]: a definite "applied once, answer not kept",
//! never a second application.

use crate::snapshot::{SnapshotReader, SnapshotWriter};
use crate::state_machine::StateMachineError;
use crate::types::{Entry, EntryPayload, LogIndex, SessionId, SessionTag};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Why a command proposed in a session was not given its answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The session has already applied a higher sequence: this command is older than the
    /// session's last and was not applied.
    #[error(
        "sequence {} of session {} is below its last applied sequence {last_sequence}; the command was not applied",
        tag.sequence,
        tag.session
    )]
    SequenceStale {
        /// The command's session and sequence.
        tag: SessionTag,
        /// The session's last applied sequence.
        last_sequence: u64,
    },
    /// The command was applied exactly once, at `index`, and will not be applied again; its
    /// answer was not kept (too large for `session_result_bytes_max`, or applied before this
    /// node restarted with a state machine that kept its own state).
    #[error(
        "the command of session {} sequence {} was applied once, at {index}; its answer was not kept",
        tag.session,
        tag.sequence
    )]
    AnswerNotKept {
        /// The command's session and sequence.
        tag: SessionTag,
        /// Where it was applied.
        index: LogIndex,
    },
}

/// The bounds of a [`SessionTable`], from `Config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Sessions held at once (`Config::sessions_max`).
    pub sessions_max: usize,
    /// Entries after which an unused session expires (`Config::session_idle_entries_max`).
    pub session_idle_entries_max: u64,
    /// Largest answer kept (`Config::session_result_bytes_max`).
    pub session_result_bytes_max: usize,
}

impl SessionLimits {
    /// The limits a configuration sets.
    pub fn from_config(config: &crate::Config) -> SessionLimits {
        SessionLimits {
            sessions_max: config.sessions_max,
            session_idle_entries_max: config.session_idle_entries_max,
            session_result_bytes_max: config.session_result_bytes_max,
        }
    }
}

/// The answer a session holds for its last command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionAnswer {
    /// The state machine's answer.
    Kept(Bytes),
    /// Not kept (too large, or the command was replayed without the state machine).
    NotKept,
    /// The state machine has not answered yet: the command is in the batch being applied.
    Pending,
}

/// What to do with a command in a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionDecision {
    /// Apply it, then give its answer to [`SessionTable::answered`].
    Apply,
    /// Do not apply it: it was applied at `index`, with this answer.
    Duplicate {
        /// Where the first copy was applied.
        index: LogIndex,
        /// Its answer, as far as the table holds it.
        answer: SessionAnswer,
    },
    /// Do not apply it: the session has moved past it.
    Stale(SessionError),
}

/// One session's state.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Session {
    last_sequence: u64,
    /// The index of the entry that applied `last_sequence`.
    last_index: LogIndex,
    answer: SessionAnswer,
}

/// The session table: per session, the last sequence applied and its answer. Replicated
/// state, the same on every node at the same applied index (see the [module docs](self)).
/// Two tables are equal when they hold the same sessions, answers and index under the same
/// limits (an answer pending differs from one not kept: compare tables between batches).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionTable {
    limits: SessionLimits,
    /// Invariant: at most `limits.sessions_max` sessions.
    sessions: HashMap<SessionId, Session>,
    /// Sessions by the index of their last applied command, oldest first: the eviction and
    /// expiry order. Invariant: holds exactly the pairs `(s.last_index, id)` of `sessions`
    /// (one command per entry, so the keys are unique).
    by_last_index: BTreeMap<LogIndex, SessionId>,
    /// The highest index the table has seen (decided or passed over). Invariant: every
    /// `last_index` is at most this.
    applied: LogIndex,
}

impl SessionTable {
    /// An empty table at index 0.
    pub fn new(limits: SessionLimits) -> SessionTable {
        assert!(limits.sessions_max > 0, "sessions_max is validated above 0");
        SessionTable {
            limits,
            sessions: HashMap::new(),
            by_last_index: BTreeMap::new(),
            applied: LogIndex(0),
        }
    }

    /// The table's bounds.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The highest index the table has seen.
    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// The last sequence applied in `session`, if the table holds it.
    pub fn last_sequence(&self, session: SessionId) -> Option<u64> {
        self.sessions.get(&session).map(|s| s.last_sequence)
    }

    /// Decides the fate of the command tagged `tag` in the entry at `index`. Entries must come
    /// in increasing index order; an `Apply` must be followed by [`SessionTable::answered`]
    /// (or [`SessionTable::forget_pending`]) before the table is written out.
    pub fn decide(&mut self, index: LogIndex, tag: SessionTag) -> SessionDecision {
        assert!(
            index > self.applied,
            "session commands are decided in log order: {index} after {}",
            self.applied
        );
        self.applied = index;
        self.expire(index);
        if let Some(session) = self.sessions.get(&tag.session) {
            if tag.sequence == session.last_sequence {
                return SessionDecision::Duplicate {
                    index: session.last_index,
                    answer: session.answer.clone(),
                };
            }
            if tag.sequence < session.last_sequence {
                return SessionDecision::Stale(SessionError::SequenceStale {
                    tag,
                    last_sequence: session.last_sequence,
                });
            }
            let previous = session.last_index;
            self.by_last_index.remove(&previous);
        } else if self.sessions.len() >= self.limits.sessions_max {
            let (_, oldest) = self
                .by_last_index
                .pop_first()
                .expect("a full table holds sessions");
            self.sessions.remove(&oldest);
        }
        self.sessions.insert(
            tag.session,
            Session {
                last_sequence: tag.sequence,
                last_index: index,
                answer: SessionAnswer::Pending,
            },
        );
        self.by_last_index.insert(index, tag.session);
        self.assert_invariants();
        SessionDecision::Apply
    }

    /// Entries up to `index` were applied (commands outside sessions, blank and membership
    /// entries move the table's index too, so a snapshot's table says where it stands).
    pub fn passed(&mut self, index: LogIndex) {
        self.applied = self.applied.max(index);
    }

    /// The state machine answered the command `tag` applied at `index` (decided `Apply`).
    /// Nothing happens when the session has since been evicted or moved on.
    pub fn answered(&mut self, index: LogIndex, tag: SessionTag, answer: &Bytes) {
        let limit = self.limits.session_result_bytes_max;
        if let Some(session) = self.sessions.get_mut(&tag.session) {
            if session.last_index == index {
                assert_eq!(session.last_sequence, tag.sequence);
                session.answer = if answer.len() <= limit {
                    SessionAnswer::Kept(answer.clone())
                } else {
                    SessionAnswer::NotKept
                };
            }
        }
    }

    /// Marks every answer still pending as not kept: for commands replayed through the table
    /// without the state machine (see the [module docs](self)).
    pub fn forget_pending(&mut self) {
        for session in self.sessions.values_mut() {
            if session.answer == SessionAnswer::Pending {
                session.answer = SessionAnswer::NotKept;
            }
        }
    }

    /// Passes a batch of committed entries, in log order from the entry after the table's
    /// index, through the table: a command outside sessions goes to the state machine; a
    /// command in a session goes to it only when the table decides
    /// [`SessionDecision::Apply`]; the others are answered from the table (see
    /// [`FilteredBatch`]). Blank and membership entries only move the table's index.
    pub fn filter(&mut self, entries: impl IntoIterator<Item = Entry>) -> FilteredBatch {
        let mut batch = FilteredBatch {
            commands: Vec::new(),
            slots: Vec::new(),
            last_index: self.applied,
        };
        for entry in entries {
            let index = entry.index;
            assert!(
                index > batch.last_index,
                "entries pass the table in log order: {index} after {}",
                batch.last_index
            );
            batch.last_index = index;
            let (tag, slot) = match entry.payload {
                EntryPayload::Command(data) => {
                    let position = batch.commands.len();
                    batch.commands.push((index, data));
                    (None, Some(Slot::Applied { position }))
                }
                EntryPayload::SessionCommand(command) => {
                    let tag = command.tag;
                    let slot = match self.decide(index, tag) {
                        SessionDecision::Apply => {
                            let position = batch.commands.len();
                            batch.commands.push((index, command.command));
                            Slot::Applied { position }
                        }
                        SessionDecision::Duplicate {
                            index: first,
                            answer,
                        } => {
                            let answer = match answer {
                                SessionAnswer::Kept(bytes) => Some(Ok(bytes)),
                                SessionAnswer::NotKept => {
                                    Some(Err(SessionError::AnswerNotKept { tag, index: first }))
                                }
                                SessionAnswer::Pending => None,
                            };
                            Slot::Copy { first, answer }
                        }
                        SessionDecision::Stale(error) => Slot::Stale(error),
                    };
                    (Some(tag), Some(slot))
                }
                EntryPayload::Blank | EntryPayload::Membership(_) => (None, None),
            };
            if let Some(slot) = slot {
                batch.slots.push((index, tag, slot));
            }
            self.passed(index);
        }
        batch
    }

    /// Drops the sessions idle for more than `session_idle_entries_max` entries at `index`.
    fn expire(&mut self, index: LogIndex) {
        let idle = self.limits.session_idle_entries_max;
        while let Some((&last, &session)) = self.by_last_index.first_key_value() {
            if last.0.saturating_add(idle) >= index.0 {
                break;
            }
            self.by_last_index.pop_first();
            self.sessions.remove(&session);
        }
    }

    fn assert_invariants(&self) {
        assert!(self.sessions.len() <= self.limits.sessions_max);
        assert_eq!(self.sessions.len(), self.by_last_index.len());
        if let Some((&last, _)) = self.by_last_index.last_key_value() {
            assert!(
                last <= self.applied,
                "a session used past the table's index"
            );
        }
    }

    /// The table in its snapshot form: every answer pending is written as not kept.
    pub fn encode(&self) -> Vec<u8> {
        let image = TableImage {
            applied: self.applied,
            sessions: self
                .by_last_index
                .iter()
                .map(|(index, id)| {
                    let session = &self.sessions[id];
                    let answer = match &session.answer {
                        SessionAnswer::Kept(bytes) => Some(bytes.clone()),
                        SessionAnswer::NotKept | SessionAnswer::Pending => None,
                    };
                    (*id, session.last_sequence, *index, answer)
                })
                .collect(),
        };
        bincode::serde::encode_to_vec(&image, bincode::config::standard())
            .expect("a session table always encodes")
    }

    /// Reads a table written by [`SessionTable::encode`]. Checked: sessions in index order, no
    /// index past the table's, no session twice. A table of more sessions than `limits` allow
    /// (written under another bound) keeps the most recent ones.
    pub fn decode(limits: SessionLimits, bytes: &[u8]) -> Result<SessionTable, String> {
        let (image, read): (TableImage, usize) =
            bincode::serde::decode_from_slice(bytes, bincode::config::standard())
                .map_err(|e| format!("the session table does not decode: {e}"))?;
        if read != bytes.len() {
            return Err(format!(
                "{} bytes after the session table",
                bytes.len() - read
            ));
        }
        let mut table = SessionTable::new(limits);
        table.applied = image.applied;
        let keep_from = image.sessions.len().saturating_sub(limits.sessions_max);
        let mut previous = LogIndex(0);
        for (position, (id, last_sequence, last_index, answer)) in
            image.sessions.into_iter().enumerate()
        {
            if last_index <= previous || last_index > image.applied {
                return Err(format!(
                    "session {id} at {last_index} is out of order (after {previous}, table at {})",
                    image.applied
                ));
            }
            previous = last_index;
            if position < keep_from {
                continue;
            }
            let answer = answer.map_or(SessionAnswer::NotKept, SessionAnswer::Kept);
            let session = Session {
                last_sequence,
                last_index,
                answer,
            };
            if table.sessions.insert(id, session).is_some() {
                return Err(format!("session {id} appears twice"));
            }
            table.by_last_index.insert(last_index, id);
        }
        table.assert_invariants();
        Ok(table)
    }
}

/// A batch of committed entries after the session table: the commands for the state machine,
/// and how every command of the batch is answered once the state machine has answered those.
/// The one implementation of the filter: the runtime's applier and the simulator both apply
/// through it.
///
/// ```
/// use bytes::Bytes;
/// use raft_core::sessions::{SessionLimits, SessionTable};
/// use raft_core::{Entry, EntryPayload, LogIndex, SessionCommand, SessionId, SessionTag, Term};
///
/// let limits = SessionLimits {
///     sessions_max: 8,
///     session_idle_entries_max: 100,
///     session_result_bytes_max: 16,
/// };
/// let mut table = SessionTable::new(limits);
/// let tag = SessionTag { session: SessionId(7), sequence: 1 };
/// let command = |index| Entry {
///     term: Term(1),
///     index: LogIndex(index),
///     payload: EntryPayload::SessionCommand(SessionCommand { tag, command: Bytes::from("add 5") }),
/// };
/// // The command and a retry of it reach the log: only the first copy goes to the machine.
/// let mut batch = table.filter(vec![command(1), command(2)]);
/// let commands = batch.take_commands();
/// assert_eq!(commands, vec![(LogIndex(1), Bytes::from("add 5"))]);
/// let answers = batch.answer(&mut table, vec![Bytes::from("5")]);
/// assert_eq!(answers[0].answer, Ok(Bytes::from("5")));
/// assert_eq!(answers[1].answer, Ok(Bytes::from("5")), "the retry gets the first answer");
/// assert!(answers[0].applied() && !answers[1].applied());
/// assert_eq!(answers[1].applied_at, Some(LogIndex(1)));
/// ```
#[derive(Debug)]
pub struct FilteredBatch {
    /// For the state machine, in log order; taken by [`FilteredBatch::take_commands`].
    commands: Vec<(LogIndex, Bytes)>,
    /// Every command entry of the batch (plain or in a session), in log order.
    /// Invariant: the `Applied` slots number `commands` in order (`position` 0, 1, ...).
    slots: Vec<(LogIndex, Option<SessionTag>, Slot)>,
    /// The index of the batch's last entry, of any kind (the table's index for an empty
    /// batch).
    last_index: LogIndex,
}

/// How one command entry of a [`FilteredBatch`] is answered.
#[derive(Clone, Debug)]
enum Slot {
    /// The state machine applies it: its answer is the machine's `position`th.
    Applied { position: usize },
    /// A copy of the command applied at `first`, answered by the table: with `answer`, or,
    /// when `first` is in this batch (its answer still pending), with the answer that copy
    /// gets from the machine.
    Copy {
        first: LogIndex,
        answer: Option<Result<Bytes, SessionError>>,
    },
    /// A command older than its session's last: never applied.
    Stale(SessionError),
}

/// The answer to one command entry of a batch, from [`FilteredBatch::answer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandAnswer {
    /// The entry.
    pub index: LogIndex,
    /// Its session and sequence, for a command in a session.
    pub tag: Option<SessionTag>,
    /// Where its command took effect: at `index` when the state machine applied this entry's
    /// command; at an earlier index for a copy of a command applied there (the table answered
    /// it); `None` for a command older than its session's last, never applied.
    pub applied_at: Option<LogIndex>,
    /// What its proposer is told: the state machine's answer (for a copy, the first copy's),
    /// or why there is none.
    pub answer: Result<Bytes, SessionError>,
}

impl CommandAnswer {
    /// True when the state machine applied this entry's command (not the table for it).
    pub fn applied(&self) -> bool {
        self.applied_at == Some(self.index)
    }
}

impl FilteredBatch {
    /// The commands for the state machine, in log order (each taken once: a second call gives
    /// none).
    pub fn take_commands(&mut self) -> Vec<(LogIndex, Bytes)> {
        std::mem::take(&mut self.commands)
    }

    /// The index of the batch's last entry, of any kind: where the state machine stands once
    /// it has applied the batch.
    pub fn last_index(&self) -> LogIndex {
        self.last_index
    }

    /// How many commands the state machine is to answer.
    pub fn commands_len(&self) -> usize {
        self.slots
            .iter()
            .filter(|(_, _, slot)| matches!(slot, Slot::Applied { .. }))
            .count()
    }

    /// The state machine answered the batch's commands with `answers` (in order, one each):
    /// records the answers of commands in sessions in `table` and answers every command entry
    /// of the batch, in log order.
    ///
    /// # Panics
    /// If `answers` does not hold one answer per command (check
    /// [`FilteredBatch::commands_len`] first: a state machine that answers fewer is a fault
    /// to report, not a panic).
    pub fn answer(self, table: &mut SessionTable, answers: Vec<Bytes>) -> Vec<CommandAnswer> {
        assert_eq!(
            answers.len(),
            self.commands_len(),
            "one answer per command applied"
        );
        for (index, tag, slot) in &self.slots {
            if let (Some(tag), Slot::Applied { position }) = (tag, slot) {
                table.answered(*index, *tag, &answers[*position]);
            }
        }
        let first_answer = |first: LogIndex| {
            let k = self
                .slots
                .binary_search_by_key(&first, |(index, _, _)| *index)
                .ok()?;
            match &self.slots[k].2 {
                Slot::Applied { position } => Some(answers[*position].clone()),
                Slot::Copy { .. } | Slot::Stale(_) => None,
            }
        };
        let mut out = Vec::with_capacity(self.slots.len());
        for (index, tag, slot) in self.slots.iter().cloned() {
            let (applied_at, answer) = match slot {
                Slot::Applied { position } => (Some(index), Ok(answers[position].clone())),
                Slot::Copy {
                    first,
                    answer: Some(answer),
                } => (Some(first), answer),
                Slot::Copy {
                    first,
                    answer: None,
                } => {
                    let tag = tag.expect("only commands in sessions have copies");
                    let answer = first_answer(first)
                        .ok_or(SessionError::AnswerNotKept { tag, index: first });
                    (Some(first), answer)
                }
                Slot::Stale(error) => (None, Err(error)),
            };
            out.push(CommandAnswer {
                index,
                tag,
                applied_at,
                answer,
            });
        }
        out
    }
}

/// The serde form of a table: sessions oldest first, as (id, last sequence, its index, answer).
#[derive(Serialize, Deserialize)]
struct TableImage {
    applied: LogIndex,
    sessions: Vec<(SessionId, u64, LogIndex, Option<Bytes>)>,
}

/// The first bytes of every snapshot the runtime builds.
///
/// ```text
///  byte 0           8         9                17               17 + length
///       +-----------+---------+----------------+----------------+--------------------
///       | magic     | version | length         | session table  | state machine data
///       | "raftsess"|   u8    | u64 big-endian | (encode)       | (its own format)
///       +-----------+---------+----------------+----------------+--------------------
/// ```
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"raftsess";

/// The version byte of the snapshot header this code writes and the only one it reads.
pub const SNAPSHOT_HEADER_VERSION: u8 = 1;

/// Bytes of the header before the table: magic, version, length.
const SNAPSHOT_HEADER_BYTES: usize = 17;

/// The header and `table`, as they head a snapshot: the bytes [`write_snapshot_header`]
/// writes, for a driver that builds its snapshots in memory (the simulator does).
pub fn encode_snapshot_header(table: &SessionTable) -> Vec<u8> {
    let encoded = table.encode();
    let mut header = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + encoded.len());
    header.extend_from_slice(SNAPSHOT_MAGIC);
    header.push(SNAPSHOT_HEADER_VERSION);
    header.extend_from_slice(&(encoded.len() as u64).to_be_bytes());
    header.extend_from_slice(&encoded);
    header
}

/// Writes the header and `table` at the head of a snapshot; the state machine writes next.
pub async fn write_snapshot_header(
    out: &mut SnapshotWriter,
    table: &SessionTable,
) -> Result<(), StateMachineError> {
    out.write(&encode_snapshot_header(table)).await
}

/// The length of the table that the first [`SNAPSHOT_HEADER_BYTES`] of a snapshot of
/// `total_bytes` announce; `None` when they are not a header (a snapshot built before
/// sessions existed, or shorter than a header).
fn header_table_bytes(head: &[u8], total_bytes: u64) -> Result<Option<u64>, String> {
    if head.len() < SNAPSHOT_HEADER_BYTES || &head[..8] != SNAPSHOT_MAGIC {
        return Ok(None);
    }
    if head[8] != SNAPSHOT_HEADER_VERSION {
        return Err(format!(
            "version {} (this build reads {SNAPSHOT_HEADER_VERSION})",
            head[8]
        ));
    }
    let length = u64::from_be_bytes(head[9..17].try_into().expect("8 bytes"));
    let rest = total_bytes.saturating_sub(SNAPSHOT_HEADER_BYTES as u64);
    if length > rest {
        return Err(format!(
            "a {length}-byte table in a snapshot with {rest} bytes left"
        ));
    }
    Ok(Some(length))
}

/// Reads the header and table at the head of a snapshot, leaving `data` at the state
/// machine's first byte. A snapshot without the header (built before sessions existed) gives
/// `None` and is left whole for the state machine.
pub async fn read_snapshot_header(
    data: &mut SnapshotReader,
    limits: SessionLimits,
) -> Result<Option<SessionTable>, StateMachineError> {
    let fail = |why: String| StateMachineError(format!("the snapshot's session header: {why}"));
    let head = data.read_prefix(SNAPSHOT_HEADER_BYTES).await?;
    let Some(length) = header_table_bytes(&head, data.total_bytes()).map_err(fail)? else {
        data.unread(Bytes::from(head));
        return Ok(None);
    };
    let encoded = data.read_prefix(length as usize).await?;
    if encoded.len() as u64 != length {
        return Err(fail(format!("{} of {length} table bytes", encoded.len())));
    }
    let table = SessionTable::decode(limits, &encoded).map_err(fail)?;
    data.start_state_machine_data();
    Ok(Some(table))
}

/// The session table a snapshot at `last_index` carries (`None`: it carries none, built
/// before sessions existed), as the node that installs it holds it: at `last_index`, an
/// empty one for a snapshot without a header. Refused when the table claims entries past
/// the snapshot.
pub fn table_at_snapshot(
    table: Option<SessionTable>,
    last_index: LogIndex,
    limits: SessionLimits,
) -> Result<SessionTable, String> {
    let mut table = table.unwrap_or_else(|| SessionTable::new(limits));
    if table.applied() > last_index {
        return Err(format!(
            "the snapshot at {last_index} holds a session table at {}",
            table.applied()
        ));
    }
    table.passed(last_index);
    Ok(table)
}

/// Splits a snapshot held in memory, at `last_index`, into its session table (as
/// [`table_at_snapshot`] gives it) and the state machine's bytes: what
/// [`read_snapshot_header`] reads from a stored one.
pub fn split_snapshot(
    data: &Bytes,
    last_index: LogIndex,
    limits: SessionLimits,
) -> Result<(SessionTable, Bytes), String> {
    let fail = |why: String| format!("the snapshot's session header: {why}");
    let head = &data[..data.len().min(SNAPSHOT_HEADER_BYTES)];
    let (table, rest) = match header_table_bytes(head, data.len() as u64).map_err(fail)? {
        None => (None, data.clone()),
        Some(length) => {
            let end = SNAPSHOT_HEADER_BYTES + length as usize;
            let table =
                SessionTable::decode(limits, &data[SNAPSHOT_HEADER_BYTES..end]).map_err(fail)?;
            (Some(table), data.slice(end..))
        }
    };
    Ok((table_at_snapshot(table, last_index, limits)?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(sessions_max: usize, idle: u64) -> SessionLimits {
        SessionLimits {
            sessions_max,
            session_idle_entries_max: idle,
            session_result_bytes_max: 8,
        }
    }

    fn tag(session: u64, sequence: u64) -> SessionTag {
        SessionTag {
            session: SessionId(session),
            sequence,
        }
    }

    #[test]
    fn a_repeated_sequence_is_a_duplicate_with_the_first_answer_and_a_lower_one_is_stale() {
        let mut table = SessionTable::new(limits(4, 100));
        assert_eq!(table.decide(LogIndex(1), tag(7, 1)), SessionDecision::Apply);
        table.answered(LogIndex(1), tag(7, 1), &Bytes::from("one"));
        assert_eq!(
            table.decide(LogIndex(2), tag(7, 1)),
            SessionDecision::Duplicate {
                index: LogIndex(1),
                answer: SessionAnswer::Kept(Bytes::from("one"))
            }
        );
        assert_eq!(table.decide(LogIndex(3), tag(7, 3)), SessionDecision::Apply);
        table.answered(LogIndex(3), tag(7, 3), &Bytes::from("too long to keep"));
        assert_eq!(
            table.decide(LogIndex(4), tag(7, 2)),
            SessionDecision::Stale(SessionError::SequenceStale {
                tag: tag(7, 2),
                last_sequence: 3
            })
        );
        assert_eq!(
            table.decide(LogIndex(5), tag(7, 3)),
            SessionDecision::Duplicate {
                index: LogIndex(3),
                answer: SessionAnswer::NotKept
            },
            "an answer over session_result_bytes_max is not kept"
        );
    }

    #[test]
    fn a_full_table_evicts_the_session_used_longest_ago_and_idle_ones_expire() {
        let mut table = SessionTable::new(limits(2, 10));
        table.decide(LogIndex(1), tag(1, 1));
        table.decide(LogIndex(2), tag(2, 1));
        table.decide(LogIndex(3), tag(1, 2)); // session 1 used again: 2 is now the oldest
        table.decide(LogIndex(4), tag(3, 1));
        assert_eq!(table.len(), 2);
        assert_eq!(table.last_sequence(SessionId(2)), None, "evicted");
        assert_eq!(table.last_sequence(SessionId(1)), Some(2));
        // At 14, session 1 (last used at 3) is 11 entries idle; session 3 (at 4) is 10.
        table.decide(LogIndex(14), tag(4, 1));
        assert_eq!(table.last_sequence(SessionId(1)), None, "expired");
        assert_eq!(table.last_sequence(SessionId(3)), Some(1), "not yet idle");
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_table_reads_back_what_it_wrote_with_pending_answers_not_kept() {
        let mut table = SessionTable::new(limits(4, 100));
        table.decide(LogIndex(3), tag(1, 1));
        table.answered(LogIndex(3), tag(1, 1), &Bytes::from("a"));
        table.decide(LogIndex(5), tag(2, 4));
        table.passed(LogIndex(9));
        let decoded = SessionTable::decode(limits(4, 100), &table.encode()).expect("decodes");
        assert_eq!(decoded.applied(), LogIndex(9));
        assert_eq!(
            decoded.sessions[&SessionId(1)].answer,
            SessionAnswer::Kept("a".into())
        );
        assert_eq!(
            decoded.sessions[&SessionId(2)].answer,
            SessionAnswer::NotKept
        );
        assert_eq!(decoded.last_sequence(SessionId(2)), Some(4));

        let smaller = SessionTable::decode(limits(1, 100), &table.encode()).expect("decodes");
        assert_eq!(smaller.len(), 1);
        assert_eq!(
            smaller.last_sequence(SessionId(2)),
            Some(4),
            "the newest kept"
        );
        assert!(SessionTable::decode(limits(4, 100), &[0xFF, 0xFF]).is_err());
    }

    #[tokio::test]
    async fn a_snapshot_header_reads_back_and_a_snapshot_without_one_is_left_whole() {
        let mut table = SessionTable::new(limits(4, 100));
        table.decide(LogIndex(2), tag(9, 1));
        table.answered(LogIndex(2), tag(9, 1), &Bytes::from("ok"));
        let mut out = SnapshotWriter::in_memory();
        write_snapshot_header(&mut out, &table).await.unwrap();
        out.write(b"machine").await.unwrap();
        let (data, _) = out.into_bytes().unwrap();
        let mut reader = SnapshotReader::from_bytes(data, 3);
        let read = read_snapshot_header(&mut reader, limits(4, 100))
            .await
            .unwrap()
            .expect("a header");
        assert_eq!(read.last_sequence(SessionId(9)), Some(1));
        assert_eq!(reader.total_bytes(), 7, "the state machine's bytes only");
        assert_eq!(reader.read_to_end().await.unwrap(), b"machine");

        let mut legacy = SnapshotReader::from_bytes(Bytes::from_static(b"old state bytes"), 4);
        assert!(read_snapshot_header(&mut legacy, limits(4, 100))
            .await
            .unwrap()
            .is_none());
        assert_eq!(legacy.total_bytes(), 15);
        assert_eq!(legacy.read_to_end().await.unwrap(), b"old state bytes");
    }

    /// A session header of any version but this build's is refused with both versions named,
    /// not read as this version (the table after it would be misread).
    #[tokio::test]
    async fn a_snapshot_header_of_another_version_is_refused_naming_it() {
        let mut out = SnapshotWriter::in_memory();
        write_snapshot_header(&mut out, &SessionTable::new(limits(4, 100)))
            .await
            .unwrap();
        let (data, _) = out.into_bytes().unwrap();
        for version in [0, SNAPSHOT_HEADER_VERSION + 1, u8::MAX] {
            let mut other = data.to_vec();
            other[SNAPSHOT_MAGIC.len()] = version;
            let mut reader = SnapshotReader::from_bytes(Bytes::from(other), 5);
            let refused = read_snapshot_header(&mut reader, limits(4, 100)).await;
            let message = refused.map(|_| ()).unwrap_err().to_string();
            let expected =
                format!("version {version} (this build reads {SNAPSHOT_HEADER_VERSION})");
            assert!(message.contains(&expected), "{message}");
        }
    }
}
