//! The simulated application: an in-memory key-value store whose commands are
//! [`KvInput`]s encoded as bytes, answering with [`KvOutput`]s, so the linearizability
//! checker's [`KvModel`](crate::testkit::linearizability::KvModel) can judge the history.

use crate::testkit::linearizability::{KvInput, KvOutput};
use crate::types::{Entry, EntryPayload, LogIndex};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;

const TAG_PUT: u8 = 1;
const TAG_GET: u8 = 2;
const TAG_DELETE: u8 = 3;
const TAG_CAS: u8 = 4;

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

/// One node's key-value state machine. Volatile: a crash loses it and a restart replays the
/// log from index 1.
///
/// Invariant: entries are applied in index order without gaps (`applied` is the last one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    data: BTreeMap<String, Bytes>,
    applied: LogIndex,
}

impl KvStore {
    /// Applies the next committed entry. Returns the answer for a key-value command, `None` for
    /// a blank entry or bytes that are not a command.
    ///
    /// # Panics
    /// If `entry` is not the entry right after the last one applied.
    pub fn apply(&mut self, entry: &Entry) -> Option<KvOutput> {
        assert_eq!(
            entry.index,
            self.applied.next(),
            "state machine applied {} and was handed {}",
            self.applied,
            entry.index
        );
        self.applied = entry.index;
        let EntryPayload::Command(data) = &entry.payload else {
            return None;
        };
        Some(self.execute(decode(data)?))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Term;

    fn command(index: u64, input: &KvInput) -> Entry {
        Entry {
            term: Term(1),
            index: LogIndex(index),
            payload: EntryPayload::Command(encode(input)),
        }
    }

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
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
    }

    #[test]
    fn store_answers_like_the_model() {
        let mut store = KvStore::default();
        assert_eq!(
            store.apply(&command(1, &KvInput::get("a"))),
            Some(KvOutput::absent())
        );
        assert_eq!(
            store.apply(&command(2, &KvInput::put("a", "1"))),
            Some(KvOutput::Ok)
        );
        let swap = KvInput::cas("a", Some(Bytes::from_static(b"1")), "2");
        assert_eq!(
            store.apply(&command(3, &swap)),
            Some(KvOutput::Swapped(true))
        );
        assert_eq!(
            store.apply(&command(4, &swap)),
            Some(KvOutput::Swapped(false))
        );
        assert_eq!(
            store.apply(&command(5, &KvInput::get("a"))),
            Some(KvOutput::found("2"))
        );
        assert_eq!(
            store.apply(&command(6, &KvInput::delete("a"))),
            Some(KvOutput::Ok)
        );
        assert_eq!(store.get("a"), None);
        assert_eq!(store.applied_index(), LogIndex(6));
    }

    #[test]
    #[should_panic(expected = "state machine applied i0 and was handed i2")]
    fn a_gap_in_applying_is_a_bug() {
        KvStore::default().apply(&command(2, &KvInput::get("a")));
    }
}
