//! The simulated application: an in-memory key-value store whose commands are
//! [`KvInput`]s encoded as bytes, answering with [`KvOutput`]s encoded as bytes, so the
//! linearizability checker's [`KvModel`](crate::testkit::linearizability::KvModel) can judge
//! the history. A [`KvReplica`] puts the runtime's session table in front of it, as a node
//! does (see [`crate::sessions`]).

use crate::sessions::{self, CommandAnswer, SessionLimits, SessionTable};
use crate::testkit::linearizability::{KvInput, KvOutput};
use crate::types::{Entry, LogIndex};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;

const TAG_PUT: u8 = 1;
const TAG_GET: u8 = 2;
const TAG_DELETE: u8 = 3;
const TAG_CAS: u8 = 4;

const OUTPUT_OK: u8 = 1;
const OUTPUT_ABSENT: u8 = 2;
const OUTPUT_FOUND: u8 = 3;
const OUTPUT_SWAPPED: u8 = 4;
const OUTPUT_NOT_SWAPPED: u8 = 5;

/// Longest key a command may carry, in bytes (the encoding gives it a `u16` length).
pub const KEY_BYTES_MAX: usize = u16::MAX as usize;

/// Encodes a command: a tag byte, the key (`u16` length first), then for a put its value, for
/// a compare-and-swap a presence byte, the expected value (`u32` length first) and the new
/// value. The last field runs to the end.
pub fn encode(input: &KvInput) -> Bytes {
    let key = input.key().as_bytes();
    assert!(key.len() <= KEY_BYTES_MAX, "key of {} bytes", key.len());
    let mut out = BytesMut::with_capacity(16 + key.len());
    let tag = match input {
        KvInput::Put { .. } => TAG_PUT,
        KvInput::Get { .. } => TAG_GET,
        KvInput::Delete { .. } => TAG_DELETE,
        KvInput::Cas { .. } => TAG_CAS,
    };
    out.put_u8(tag);
    out.put_u16(key.len() as u16);
    out.put_slice(key);
    match input {
        KvInput::Put { value, .. } => out.put_slice(value),
        KvInput::Get { .. } | KvInput::Delete { .. } => {}
        KvInput::Cas { expected, new, .. } => {
            out.put_u8(u8::from(expected.is_some()));
            let expected = expected.clone().unwrap_or_default();
            out.put_u32(expected.len() as u32);
            out.put_slice(&expected);
            out.put_slice(new);
        }
    }
    out.freeze()
}

/// Decodes what [`encode`] wrote; `None` for anything else (the store ignores such commands,
/// so scenario tests may propose arbitrary bytes).
pub fn decode(data: &Bytes) -> Option<KvInput> {
    let (&tag, rest) = data.split_first()?;
    let key_len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
    let key = std::str::from_utf8(rest.get(2..2 + key_len)?)
        .ok()?
        .to_string();
    let body_start = 1 + 2 + key_len;
    match tag {
        TAG_PUT => Some(KvInput::Put {
            key,
            value: data.slice(body_start..),
        }),
        TAG_GET if data.len() == body_start => Some(KvInput::Get { key }),
        TAG_DELETE if data.len() == body_start => Some(KvInput::Delete { key }),
        TAG_CAS => {
            let present = *data.get(body_start)?;
            let len_bytes = data.get(body_start + 1..body_start + 5)?;
            let expected_len = u32::from_be_bytes(len_bytes.try_into().ok()?) as usize;
            let expected_start = body_start + 5;
            let expected_end = expected_start.checked_add(expected_len)?;
            if expected_end > data.len() || present > 1 {
                return None;
            }
            let expected = (present == 1).then(|| data.slice(expected_start..expected_end));
            Some(KvInput::Cas {
                key,
                expected,
                new: data.slice(expected_end..),
            })
        }
        _ => None,
    }
}

/// Encodes an answer: a tag byte, then for a found value the value. One byte except for a
/// value found, so a small `session_result_bytes_max` keeps some answers and not others.
pub fn encode_output(output: &KvOutput) -> Bytes {
    match output {
        KvOutput::Ok => Bytes::from_static(&[OUTPUT_OK]),
        KvOutput::Value(None) => Bytes::from_static(&[OUTPUT_ABSENT]),
        KvOutput::Value(Some(value)) => {
            let mut out = BytesMut::with_capacity(1 + value.len());
            out.put_u8(OUTPUT_FOUND);
            out.put_slice(value);
            out.freeze()
        }
        KvOutput::Swapped(true) => Bytes::from_static(&[OUTPUT_SWAPPED]),
        KvOutput::Swapped(false) => Bytes::from_static(&[OUTPUT_NOT_SWAPPED]),
    }
}

/// Decodes what [`encode_output`] wrote; `None` for anything else (the store answers bytes
/// that are not a command with no bytes).
pub fn decode_output(data: &Bytes) -> Option<KvOutput> {
    let (&tag, rest) = data.split_first()?;
    match tag {
        OUTPUT_FOUND => Some(KvOutput::Value(Some(data.slice(1..)))),
        _ if !rest.is_empty() => None,
        OUTPUT_OK => Some(KvOutput::Ok),
        OUTPUT_ABSENT => Some(KvOutput::Value(None)),
        OUTPUT_SWAPPED => Some(KvOutput::Swapped(true)),
        OUTPUT_NOT_SWAPPED => Some(KvOutput::Swapped(false)),
        _ => None,
    }
}

/// One node's key-value state machine. Volatile: a crash loses it and a restart replays the
/// log from its snapshot (or index 1).
///
/// Invariant: commands are applied in index order (`applied` is the last index passed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    data: BTreeMap<String, Bytes>,
    applied: LogIndex,
}

impl KvStore {
    /// Applies a batch of commands, as [`crate::StateMachine::apply_batch`] does: `commands`
    /// in index order (entries without a command for the machine left out), after which the
    /// store stands at `last_index`. Answers each command with its [`KvOutput`] encoded by
    /// [`encode_output`], or with no bytes for bytes that are not a key-value command.
    ///
    /// # Panics
    /// If a command is not after the last one applied, or lies past `last_index`.
    pub fn apply_batch(
        &mut self,
        commands: Vec<(LogIndex, Bytes)>,
        last_index: LogIndex,
    ) -> Vec<Bytes> {
        let mut answers = Vec::with_capacity(commands.len());
        for (index, data) in commands {
            assert!(
                index > self.applied && index <= last_index,
                "state machine applied {} and was handed {index} in a batch up to {last_index}",
                self.applied
            );
            self.applied = index;
            let output = decode(&data).map(|input| self.execute(input));
            answers.push(output.as_ref().map_or_else(Bytes::new, encode_output));
        }
        assert!(
            last_index >= self.applied,
            "a batch up to {last_index} after {}",
            self.applied
        );
        self.applied = last_index;
        answers
    }

    fn execute(&mut self, input: KvInput) -> KvOutput {
        match input {
            KvInput::Put { key, value } => {
                self.data.insert(key, value);
                KvOutput::Ok
            }
            KvInput::Get { key } => KvOutput::Value(self.data.get(&key).cloned()),
            KvInput::Delete { key } => {
                self.data.remove(&key);
                KvOutput::Ok
            }
            KvInput::Cas { key, expected, new } => {
                if self.data.get(&key) == expected.as_ref() {
                    self.data.insert(key, new);
                    KvOutput::Swapped(true)
                } else {
                    KvOutput::Swapped(false)
                }
            }
        }
    }

    /// The last index applied.
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.data.get(key)
    }

    /// Every key and value, in key order.
    pub fn data(&self) -> &BTreeMap<String, Bytes> {
        &self.data
    }

    /// The state as snapshot data.
    pub fn snapshot_bytes(&self) -> Bytes {
        let config = bincode::config::standard();
        Bytes::from(
            bincode::serde::encode_to_vec(&self.data, config)
                .expect("a map of strings and bytes encodes"),
        )
    }

    /// The state a snapshot holds, applied up to `index`; `None` when the data does not decode.
    pub fn from_snapshot(data: &[u8], index: LogIndex) -> Option<KvStore> {
        let config = bincode::config::standard();
        let (map, used): (BTreeMap<String, Bytes>, usize) =
            bincode::serde::decode_from_slice(data, config).ok()?;
        (used == data.len()).then_some(KvStore {
            data: map,
            applied: index,
        })
    }
}

/// One node's applied state, kept as the runtime keeps it: the session table in front of the
/// key-value state machine. Committed entries pass [`SessionTable::filter`] (the runtime's
/// own filter) before the store applies what it lets through, and a snapshot carries the
/// table at its head in the runtime's format ([`sessions::encode_snapshot_header`]).
///
/// Invariant: the table and the store stand at the same index.
#[derive(Clone, Debug)]
pub struct KvReplica {
    sessions: SessionTable,
    store: KvStore,
}

impl KvReplica {
    /// An empty replica at index 0.
    pub fn new(limits: SessionLimits) -> KvReplica {
        KvReplica {
            sessions: SessionTable::new(limits),
            store: KvStore::default(),
        }
    }

    /// Applies the next committed entries, through the session table; answers every command
    /// entry among them, in log order.
    ///
    /// # Panics
    /// If `entries` do not follow the last index applied without a gap.
    pub fn apply(&mut self, entries: Vec<Entry>) -> Vec<CommandAnswer> {
        let mut expected = self.applied_index();
        for entry in &entries {
            expected = expected.next();
            assert_eq!(
                entry.index,
                expected,
                "state machine applied {} and was handed {}",
                expected.prev(),
                entry.index
            );
        }
        let mut batch = self.sessions.filter(entries);
        let last_index = batch.last_index();
        let answers = self.store.apply_batch(batch.take_commands(), last_index);
        let answered = batch.answer(&mut self.sessions, answers);
        self.assert_invariants();
        answered
    }

    /// The key-value state machine.
    pub fn store(&self) -> &KvStore {
        &self.store
    }

    /// The session table.
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// The last index applied.
    pub fn applied_index(&self) -> LogIndex {
        self.store.applied_index()
    }

    /// The state as snapshot data: the session header, then the store's bytes.
    pub fn snapshot_bytes(&self) -> Bytes {
        let mut data = sessions::encode_snapshot_header(&self.sessions);
        data.extend_from_slice(&self.store.snapshot_bytes());
        Bytes::from(data)
    }

    /// The state a snapshot at `index` holds; why not, when its data does not decode.
    pub fn from_snapshot(
        data: &Bytes,
        index: LogIndex,
        limits: SessionLimits,
    ) -> Result<KvReplica, String> {
        let (sessions, rest) = sessions::split_snapshot(data, index, limits)?;
        let store = KvStore::from_snapshot(&rest, index)
            .ok_or_else(|| "the key-value data does not decode".to_string())?;
        let replica = KvReplica { sessions, store };
        replica.assert_invariants();
        Ok(replica)
    }

    /// True when both hold the same state: the same data and the same session table.
    pub fn same_state(&self, other: &KvReplica) -> bool {
        self.store == other.store && self.sessions == other.sessions
    }

    fn assert_invariants(&self) {
        assert_eq!(
            self.sessions.applied(),
            self.store.applied_index(),
            "the session table stands where the store does"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::SessionError;
    use crate::types::{EntryPayload, SessionCommand, SessionId, SessionTag, Term};

    const LIMITS: SessionLimits = SessionLimits {
        sessions_max: 4,
        session_idle_entries_max: 100,
        session_result_bytes_max: 1,
    };

    fn command(index: u64, input: &KvInput) -> Entry {
        Entry {
            term: Term(1),
            index: LogIndex(index),
            payload: EntryPayload::Command(encode(input)),
        }
    }

    fn in_session(index: u64, sequence: u64, input: &KvInput) -> Entry {
        let tag = SessionTag {
            session: SessionId(9),
            sequence,
        };
        Entry {
            term: Term(1),
            index: LogIndex(index),
            payload: EntryPayload::SessionCommand(SessionCommand {
                tag,
                command: encode(input),
            }),
        }
    }

    /// Applies one entry and returns its decoded answer (`None`: no command, or no answer).
    fn apply(replica: &mut KvReplica, entry: Entry) -> Option<KvOutput> {
        let answers = replica.apply(vec![entry]);
        answers
            .first()
            .and_then(|a| a.answer.as_ref().ok())
            .and_then(decode_output)
    }

    #[test]
    fn commands_and_answers_round_trip_and_garbage_is_refused() {
        let inputs = [
            KvInput::put("k", "v"),
            KvInput::put("", ""),
            KvInput::get("key"),
            KvInput::delete("x"),
            KvInput::cas("k", None, "new"),
            KvInput::cas("k", Some(Bytes::from_static(b"old")), ""),
        ];
        for input in inputs {
            assert_eq!(decode(&encode(&input)), Some(input));
        }
        assert_eq!(decode(&Bytes::from_static(b"")), None);
        assert_eq!(decode(&Bytes::from_static(b"hello")), None);
        assert_eq!(decode(&Bytes::from_static(&[2, 0, 1, b'k', 9])), None);
        let outputs = [
            KvOutput::Ok,
            KvOutput::absent(),
            KvOutput::found(""),
            KvOutput::found("value"),
            KvOutput::Swapped(true),
            KvOutput::Swapped(false),
        ];
        for output in outputs {
            assert_eq!(decode_output(&encode_output(&output)), Some(output));
        }
        assert_eq!(decode_output(&Bytes::new()), None);
        assert_eq!(decode_output(&Bytes::from_static(&[OUTPUT_OK, 0])), None);
        assert_eq!(decode_output(&Bytes::from_static(&[9])), None);
    }

    #[test]
    fn store_answers_like_the_model() {
        let mut replica = KvReplica::new(LIMITS);
        assert_eq!(
            apply(&mut replica, command(1, &KvInput::get("a"))),
            Some(KvOutput::absent())
        );
        assert_eq!(
            apply(&mut replica, command(2, &KvInput::put("a", "1"))),
            Some(KvOutput::Ok)
        );
        let swap = KvInput::cas("a", Some(Bytes::from_static(b"1")), "2");
        assert_eq!(
            apply(&mut replica, command(3, &swap)),
            Some(KvOutput::Swapped(true))
        );
        assert_eq!(
            apply(&mut replica, command(4, &swap)),
            Some(KvOutput::Swapped(false))
        );
        assert_eq!(
            apply(&mut replica, command(5, &KvInput::get("a"))),
            Some(KvOutput::found("2"))
        );
        assert_eq!(
            apply(&mut replica, command(6, &KvInput::delete("a"))),
            Some(KvOutput::Ok)
        );
        assert_eq!(replica.store().get("a"), None);
        assert_eq!(replica.applied_index(), LogIndex(6));
    }

    #[test]
    fn a_retried_command_in_a_session_applies_once_and_gets_the_first_answer() {
        let mut replica = KvReplica::new(LIMITS);
        let swap = KvInput::cas("a", None, "1");
        assert_eq!(
            apply(&mut replica, in_session(1, 1, &swap)),
            Some(KvOutput::Swapped(true))
        );
        // The retry would not swap again (the key is set), yet it answers as the first did.
        let answers = replica.apply(vec![in_session(2, 1, &swap)]);
        assert!(!answers[0].applied());
        assert_eq!(
            answers[0].answer.as_ref().ok().and_then(decode_output),
            Some(KvOutput::Swapped(true))
        );
        // A get's answer (two bytes or more) is over this table's one-byte limit.
        let get = KvInput::get("a");
        assert_eq!(
            apply(&mut replica, in_session(3, 2, &get)),
            Some(KvOutput::found("1"))
        );
        let answers = replica.apply(vec![in_session(4, 2, &get)]);
        assert!(matches!(
            answers[0].answer,
            Err(SessionError::AnswerNotKept {
                index: LogIndex(3),
                ..
            })
        ));
        // The snapshot carries the table: the restored replica refuses the copy too.
        let data = replica.snapshot_bytes();
        let mut restored = KvReplica::from_snapshot(&data, LogIndex(4), LIMITS).expect("decodes");
        assert!(restored.same_state(&replica));
        let answers = restored.apply(vec![in_session(5, 1, &swap)]);
        assert!(!answers[0].applied(), "{answers:?}");
        assert!(matches!(
            answers[0].answer,
            Err(SessionError::SequenceStale { .. })
        ));
        assert_eq!(restored.store().get("a").map(|v| &v[..]), Some(&b"1"[..]));
    }

    #[test]
    #[should_panic(expected = "state machine applied i0 and was handed i2")]
    fn a_gap_in_applying_is_a_bug() {
        KvReplica::new(LIMITS).apply(vec![command(2, &KvInput::get("a"))]);
    }
}
