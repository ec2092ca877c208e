//! Byte layouts of everything stored in the database (see the crate's `design` module).
//!
//! Each decoder is the exact inverse of its encoder and returns `Corrupt` with the offending
//! key instead of guessing: a value that does not decode is never skipped.

use bytes::Bytes;
use raft_core::membership::Membership;
use raft_core::{
    Entry, EntryPayload, HardState, LogBounds, LogIndex, NodeId, SessionCommand, SessionId,
    SessionTag, StorageError, Term,
};

/// The column family holding the log: key = index, value = term and payload.
pub(crate) const LOG_CF: &str = "log";
/// The column family holding the format marker, the log bounds and the hard state.
pub(crate) const META_CF: &str = "meta";

/// Meta key of the on-disk format version.
pub(crate) const FORMAT_KEY: &[u8] = b"format";
/// Meta key of the log bounds (first and last index).
pub(crate) const BOUNDS_KEY: &[u8] = b"log_bounds";
/// Meta key of the hard state.
pub(crate) const HARD_STATE_KEY: &[u8] = b"hard_state";

/// The on-disk format this build writes and reads.
///
/// Version 2: memberships record what is known of each member (`Membership::nodes`), so a
/// membership entry of version 1 no longer decodes; a version 1 store is refused on open.
/// Version 3: memberships record each member's incarnation and who is rejoining after a
/// restart ([`raft_core::Incarnation`]).
pub(crate) const FORMAT_VERSION: u32 = 3;

const PAYLOAD_BLANK: u8 = 0;
const PAYLOAD_COMMAND: u8 = 1;
/// A membership: its serde form, encoded by bincode 2 with the standard configuration.
const PAYLOAD_MEMBERSHIP: u8 = 2;
/// A command in a client session: session (8 bytes BE), sequence (8 bytes BE), the command.
const PAYLOAD_SESSION_COMMAND: u8 = 3;
/// The session and sequence before a session command's bytes.
const SESSION_TAG_BYTES: usize = 16;
/// Term (8 bytes) and payload kind (1 byte) before the payload.
const ENTRY_HEADER_BYTES: usize = 9;
const HARD_STATE_BYTES: usize = 25;
const BOUNDS_BYTES: usize = 16;

/// A log key: the index in big-endian, so that byte order is log order.
pub(crate) fn log_key(index: LogIndex) -> [u8; 8] {
    index.0.to_be_bytes()
}

/// Decodes a log key, which must be exactly 8 bytes.
pub(crate) fn decode_log_key(key: &[u8]) -> Result<LogIndex, StorageError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        StorageError::Corrupt(format!(
            "a log key has {} bytes instead of 8: {key:02x?}",
            key.len()
        ))
    })?;
    Ok(LogIndex(u64::from_be_bytes(bytes)))
}

/// An entry's value: term, payload kind, payload.
pub(crate) fn encode_entry(entry: &Entry) -> Vec<u8> {
    let payload_bytes = match &entry.payload {
        EntryPayload::Command(data) => data.len(),
        EntryPayload::SessionCommand(command) => SESSION_TAG_BYTES + command.command.len(),
        _ => 0,
    };
    let mut value = Vec::with_capacity(ENTRY_HEADER_BYTES + payload_bytes);
    value.extend_from_slice(&entry.term.0.to_be_bytes());
    match &entry.payload {
        EntryPayload::Blank => value.push(PAYLOAD_BLANK),
        EntryPayload::Command(data) => {
            value.push(PAYLOAD_COMMAND);
            value.extend_from_slice(data);
        }
        EntryPayload::SessionCommand(command) => {
            value.push(PAYLOAD_SESSION_COMMAND);
            value.extend_from_slice(&command.tag.session.0.to_be_bytes());
            value.extend_from_slice(&command.tag.sequence.to_be_bytes());
            value.extend_from_slice(&command.command);
        }
        EntryPayload::Membership(membership) => {
            value.push(PAYLOAD_MEMBERSHIP);
            // Sets of plain integers always encode into a Vec.
            bincode::serde::encode_into_std_write(membership, &mut value, bincode_config())
                .expect("a membership always encodes");
        }
    }
    value
}

/// The bincode configuration of everything this crate stores with serde. Part of the on-disk
/// format: changing it (or the field order of the stored types) makes old data undecodable.
pub(crate) fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Decodes a whole value with serde; trailing bytes are an error like any other.
pub(crate) fn decode_serde<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    match bincode::serde::decode_from_slice::<T, _>(value, bincode_config()) {
        Ok((decoded, read)) if read == value.len() => Ok(decoded),
        Ok((_, read)) => Err(format!(
            "{} trailing bytes after the value",
            value.len() - read
        )),
        Err(error) => Err(error.to_string()),
    }
}

/// Decodes the value stored under `index`.
pub(crate) fn decode_entry(index: LogIndex, value: &[u8]) -> Result<Entry, StorageError> {
    let corrupt = |why: &str| StorageError::Corrupt(format!("log entry {index}: {why}"));
    if value.len() < ENTRY_HEADER_BYTES {
        return Err(corrupt(&format!("value has only {} bytes", value.len())));
    }
    let term = Term(u64::from_be_bytes(value[..8].try_into().expect("8 bytes")));
    let payload = match value[8] {
        PAYLOAD_BLANK if value.len() == ENTRY_HEADER_BYTES => EntryPayload::Blank,
        PAYLOAD_BLANK => return Err(corrupt("a blank entry carries payload bytes")),
        PAYLOAD_COMMAND => {
            EntryPayload::Command(Bytes::copy_from_slice(&value[ENTRY_HEADER_BYTES..]))
        }
        PAYLOAD_SESSION_COMMAND => {
            let payload = &value[ENTRY_HEADER_BYTES..];
            if payload.len() < SESSION_TAG_BYTES {
                return Err(corrupt(&format!(
                    "a session command has {} bytes, fewer than its session and sequence",
                    payload.len()
                )));
            }
            let word = |at: usize| u64::from_be_bytes(payload[at..at + 8].try_into().expect("8"));
            EntryPayload::SessionCommand(SessionCommand {
                tag: SessionTag {
                    session: SessionId(word(0)),
                    sequence: word(8),
                },
                command: Bytes::copy_from_slice(&payload[SESSION_TAG_BYTES..]),
            })
        }
        PAYLOAD_MEMBERSHIP => EntryPayload::Membership(
            decode_serde::<Membership>(&value[ENTRY_HEADER_BYTES..])
                .map_err(|why| corrupt(&format!("membership does not decode: {why}")))?,
        ),
        kind => return Err(corrupt(&format!("unknown payload kind {kind}"))),
    };
    Ok(Entry {
        term,
        index,
        payload,
    })
}

/// Checks that a stored value decodes, without copying a command's payload.
pub(crate) fn check_entry(index: LogIndex, value: &[u8]) -> Result<(), StorageError> {
    let valid = value.len() >= ENTRY_HEADER_BYTES
        && match value[8] {
            PAYLOAD_BLANK => value.len() == ENTRY_HEADER_BYTES,
            PAYLOAD_COMMAND => true,
            PAYLOAD_SESSION_COMMAND => value.len() >= ENTRY_HEADER_BYTES + SESSION_TAG_BYTES,
            // Rare and small: decoding it is the check.
            _ => false,
        };
    if valid {
        Ok(())
    } else {
        decode_entry(index, value).map(|_| ())
    }
}

/// The hard state: term, vote flag, vote, commit.
pub(crate) fn encode_hard_state(hard_state: &HardState) -> [u8; HARD_STATE_BYTES] {
    let mut value = [0u8; HARD_STATE_BYTES];
    value[..8].copy_from_slice(&hard_state.term.0.to_be_bytes());
    if let Some(vote) = hard_state.vote {
        value[8] = 1;
        value[9..17].copy_from_slice(&vote.0.to_be_bytes());
    }
    value[17..].copy_from_slice(&hard_state.commit.0.to_be_bytes());
    value
}

/// Decodes the hard state.
pub(crate) fn decode_hard_state(value: &[u8]) -> Result<HardState, StorageError> {
    let corrupt = |why: String| StorageError::Corrupt(format!("hard state: {why}"));
    if value.len() != HARD_STATE_BYTES {
        return Err(corrupt(format!(
            "{} bytes instead of {HARD_STATE_BYTES}",
            value.len()
        )));
    }
    let word = |at: usize| u64::from_be_bytes(value[at..at + 8].try_into().expect("8 bytes"));
    let vote = match value[8] {
        0 if word(9) == 0 => None,
        1 => Some(NodeId(word(9))),
        flag => return Err(corrupt(format!("bad vote flag {flag} or stray vote bytes"))),
    };
    Ok(HardState {
        term: Term(word(0)),
        vote,
        commit: LogIndex(word(17)),
    })
}

/// The log bounds: first, last.
pub(crate) fn encode_bounds(bounds: LogBounds) -> [u8; BOUNDS_BYTES] {
    let mut value = [0u8; BOUNDS_BYTES];
    value[..8].copy_from_slice(&bounds.first.0.to_be_bytes());
    value[8..].copy_from_slice(&bounds.last.0.to_be_bytes());
    value
}

/// Decodes the log bounds and checks `1 <= first <= last + 1`.
pub(crate) fn decode_bounds(value: &[u8]) -> Result<LogBounds, StorageError> {
    if value.len() != BOUNDS_BYTES {
        return Err(StorageError::Corrupt(format!(
            "log bounds: {} bytes instead of {BOUNDS_BYTES}",
            value.len()
        )));
    }
    let first = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
    let last = u64::from_be_bytes(value[8..].try_into().expect("8 bytes"));
    if first == 0 || first > last.saturating_add(1) {
        return Err(StorageError::Corrupt(format!(
            "log bounds first i{first}, last i{last} break 1 <= first <= last + 1"
        )));
    }
    Ok(LogBounds {
        first: LogIndex(first),
        last: LogIndex(last),
    })
}

/// Decodes the format marker.
pub(crate) fn decode_format(value: &[u8]) -> Result<u32, StorageError> {
    let bytes: [u8; 4] = value.try_into().map_err(|_| {
        StorageError::Corrupt(format!(
            "format marker has {} bytes instead of 4",
            value.len()
        ))
    })?;
    Ok(u32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves big-endian keys sort in log order, which range deletes and iteration rely on.
    #[test]
    fn log_keys_sort_in_index_order() {
        let indexes = [0u64, 1, 255, 256, 65_535, 65_536, u64::MAX - 1, u64::MAX];
        for pair in indexes.windows(2) {
            assert!(log_key(LogIndex(pair[0])) < log_key(LogIndex(pair[1])));
            assert_eq!(
                decode_log_key(&log_key(LogIndex(pair[1]))).unwrap().0,
                pair[1]
            );
        }
    }

    /// Proves every value round-trips and that damaged values are reported, not guessed.
    #[test]
    fn values_round_trip_and_damage_is_corrupt() {
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Command(Bytes::from_static(b"x")),
            EntryPayload::Membership(joint_membership()),
            EntryPayload::Membership(Membership::default()),
            EntryPayload::SessionCommand(SessionCommand {
                tag: SessionTag {
                    session: SessionId(u64::MAX - 3),
                    sequence: 1 << 40,
                },
                command: Bytes::from_static(b"set x"),
            }),
        ] {
            let entry = Entry {
                term: Term(7),
                index: LogIndex(9),
                payload,
            };
            let value = encode_entry(&entry);
            assert_eq!(decode_entry(LogIndex(9), &value).unwrap(), entry);
            check_entry(LogIndex(9), &value).unwrap();
        }
        let hard_state = HardState {
            term: Term(3),
            vote: Some(NodeId(0)),
            commit: LogIndex(2),
        };
        assert_eq!(
            decode_hard_state(&encode_hard_state(&hard_state)).unwrap(),
            hard_state
        );
        let bounds = LogBounds {
            first: LogIndex(5),
            last: LogIndex(4),
        };
        assert_eq!(decode_bounds(&encode_bounds(bounds)).unwrap(), bounds);

        let corrupt = |result: Result<(), StorageError>| {
            assert!(
                matches!(result, Err(StorageError::Corrupt(_))),
                "{result:?}"
            )
        };
        corrupt(check_entry(LogIndex(1), &[0; 8]));
        corrupt(check_entry(LogIndex(1), &[0, 0, 0, 0, 0, 0, 0, 1, 9]));
        corrupt(check_entry(LogIndex(1), &[0, 0, 0, 0, 0, 0, 0, 1, 0, 42]));
        corrupt(decode_hard_state(&[0; 24]).map(|_| ()));
        corrupt(
            decode_bounds(&encode_bounds(LogBounds {
                first: LogIndex(0),
                last: LogIndex(0),
            }))
            .map(|_| ()),
        );
        corrupt(
            decode_bounds(&encode_bounds(LogBounds {
                first: LogIndex(7),
                last: LogIndex(5),
            }))
            .map(|_| ()),
        );
        corrupt(decode_log_key(&[1, 2, 3]).map(|_| ()));
    }

    /// A joint configuration with learners and removed nodes: every set of `Membership` holds
    /// something, with IDs of every varint width.
    fn joint_membership() -> Membership {
        let set = |ids: &[u64]| ids.iter().copied().map(NodeId).collect();
        Membership {
            voters: set(&[1, 2, 300]),
            outgoing: set(&[1, 2, 70_000]),
            learners: set(&[u64::MAX]),
            removed: set(&[9]),
            nodes: [(
                NodeId(300),
                raft_core::membership::NodeMeta {
                    address: "[::1]:7300".into(),
                    data: bytes::Bytes::from_static(b"zone a"),
                },
            )]
            .into(),
            incarnations: [(NodeId(2), raft_core::Incarnation(3))].into(),
            rejoining: set(&[2]),
        }
    }

    /// Proves a damaged membership value is `Corrupt`, whether cut short, followed by stray
    /// bytes, claiming a huge set, or random bytes; decoding never panics or over-allocates.
    #[test]
    fn damaged_membership_is_corrupt() {
        let entry = Entry {
            term: Term(4),
            index: LogIndex(2),
            payload: EntryPayload::Membership(joint_membership()),
        };
        let value = encode_entry(&entry);
        let corrupt = |value: &[u8]| {
            let decoded = decode_entry(LogIndex(2), value);
            assert!(
                matches!(decoded, Err(StorageError::Corrupt(_))),
                "{value:02x?} gave {decoded:?}"
            );
            let checked = check_entry(LogIndex(2), value);
            assert!(
                matches!(checked, Err(StorageError::Corrupt(_))),
                "{checked:?}"
            );
        };
        for cut in ENTRY_HEADER_BYTES..value.len() {
            corrupt(&value[..cut]);
        }
        let mut trailing = value.clone();
        trailing.push(0);
        corrupt(&trailing);
        // A set that claims u64::MAX members (varint marker 253, then 8 bytes).
        let mut huge = value[..ENTRY_HEADER_BYTES].to_vec();
        huge.extend_from_slice(&[253, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        corrupt(&huge);

        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut garbage = value[..ENTRY_HEADER_BYTES].to_vec();
            let length = (next() % 48) as usize;
            garbage.extend((0..length).map(|_| next() as u8));
            // Random bytes may happen to decode; what matters is an answer, never a panic.
            if let Err(error) = decode_entry(LogIndex(2), &garbage) {
                assert!(matches!(error, StorageError::Corrupt(_)), "{error}");
            }
            let _ = check_entry(LogIndex(2), &garbage);
        }
    }
}
