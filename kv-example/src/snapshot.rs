//! The snapshot format of the key-value state: a header, length-prefixed records in key
//! order, and an end marker with the record count. Encoding and decoding are pure functions
//! over bytes that work a piece at a time, so neither side holds the whole state.
//!
//! ```text
//! header   "KVSNAP" | version u8 = 1 | applied index u64
//! record   key length u32 | key | value length u32 | value        (repeated, keys ascending)
//! end      u32::MAX | record count u64
//! ```
//!
//! Integers are big-endian. Keys are the state's own namespaced keys (see [`crate::state`]):
//! `d` + user key for data, and, in snapshots written before member addresses moved into the
//! membership ([`crate::members`]), `p` + member ID (8 bytes) for a member's addresses, whose
//! value is the JSON of [`MemberAddress`]: still read, never written. The decoder refuses,
//! with the reason, anything else: another magic or version, a key out of order or in an
//! unknown namespace, a record over [`RECORD_BYTES_MAX`], a count that disagrees, bytes after
//! the end, or data that stops before it. Raft already checks the snapshot's length and CRC; these checks catch a state
//! machine bug or a snapshot of another application.
//!
//! ```
//! use kv_example::snapshot::{SnapshotDecoder, SnapshotEncoder};
//!
//! let mut encoder = SnapshotEncoder::new(7);
//! encoder.record(b"dcolour", b"blue").unwrap();
//! encoder.record(b"dsize", b"9").unwrap();
//! let bytes = encoder.finish();
//! let mut decoder = SnapshotDecoder::default();
//! let mut records = Vec::new();
//! for piece in bytes.chunks(5) {
//!     records.extend(decoder.feed(piece).unwrap());
//! }
//! decoder.finish().unwrap();
//! assert_eq!(decoder.applied_index(), Some(7));
//! assert_eq!(records.len(), 2);
//! ```

use crate::members::MemberAddress;
use bytes::Bytes;
use std::fmt;

/// The first bytes of every snapshot.
pub const MAGIC: &[u8; 6] = b"KVSNAP";
/// The format version after the magic.
pub const VERSION: u8 = 1;
/// Header length: magic, version, applied index.
pub const HEADER_BYTES: usize = MAGIC.len() + 1 + 8;
/// The largest record (key plus value) accepted. Every record comes from one log entry, which
/// the transports bound at 16 MiB a frame, so this is generous; it bounds what a decoder
/// buffers for one record.
pub const RECORD_BYTES_MAX: usize = 32 << 20;
/// The key-length value that marks the end.
const END_MARKER: u32 = u32::MAX;
/// Namespace of data keys.
pub const DATA_PREFIX: u8 = b'd';
/// Namespace of member address keys.
pub const MEMBER_PREFIX: u8 = b'p';

/// The state key of member `id`'s address (legacy records, see [`crate::members`]).
pub fn member_key(id: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = MEMBER_PREFIX;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// The member ID of a member key.
pub fn member_id(key: &[u8]) -> Option<u64> {
    match key {
        [MEMBER_PREFIX, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// A snapshot that cannot be read, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFormatError(pub String);

impl fmt::Display for SnapshotFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad key-value snapshot: {}", self.0)
    }
}

impl std::error::Error for SnapshotFormatError {}

fn fail<T>(why: impl Into<String>) -> Result<T, SnapshotFormatError> {
    Err(SnapshotFormatError(why.into()))
}

/// Checks a record's key (namespace, order) and, for a member, its value.
fn check_record(previous: &[u8], key: &[u8], value: &[u8]) -> Result<(), SnapshotFormatError> {
    match key.first() {
        Some(&DATA_PREFIX) => {}
        Some(&MEMBER_PREFIX) => {
            if member_id(key).is_none_or(|id| id == 0) {
                return fail(format!("member key {key:?} is not 'p' and a non-zero u64"));
            }
            if let Err(error) = serde_json::from_slice::<MemberAddress>(value) {
                return fail(format!("member {key:?} has a bad address: {error}"));
            }
        }
        _ => return fail(format!("key {key:?} is in no known namespace")),
    }
    if !previous.is_empty() && key <= previous {
        return fail(format!("key {key:?} does not follow {previous:?}"));
    }
    Ok(())
}

/// Writes a snapshot. Call [`SnapshotEncoder::record`] in ascending key order, take the bytes
/// so far with [`SnapshotEncoder::take`] whenever convenient, and end with
/// [`SnapshotEncoder::finish`].
#[derive(Debug)]
pub struct SnapshotEncoder {
    buffer: Vec<u8>,
    records: u64,
    previous_key: Vec<u8>,
}

impl SnapshotEncoder {
    /// Starts a snapshot of the state at `applied_index`.
    pub fn new(applied_index: u64) -> SnapshotEncoder {
        let mut buffer = Vec::with_capacity(HEADER_BYTES);
        buffer.extend_from_slice(MAGIC);
        buffer.push(VERSION);
        buffer.extend_from_slice(&applied_index.to_be_bytes());
        SnapshotEncoder {
            buffer,
            records: 0,
            previous_key: Vec::new(),
        }
    }

    /// Appends a record. The same checks as the decoder's apply, so a snapshot written is one
    /// that can be read.
    pub fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), SnapshotFormatError> {
        if key.len() + value.len() > RECORD_BYTES_MAX {
            return fail(format!(
                "a record of {} bytes is over RECORD_BYTES_MAX ({RECORD_BYTES_MAX})",
                key.len() + value.len()
            ));
        }
        check_record(&self.previous_key, key, value)?;
        self.buffer
            .extend_from_slice(&(key.len() as u32).to_be_bytes());
        self.buffer.extend_from_slice(key);
        self.buffer
            .extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.buffer.extend_from_slice(value);
        self.previous_key.clear();
        self.previous_key.extend_from_slice(key);
        self.records += 1;
        Ok(())
    }

    /// Bytes encoded and not yet taken.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Takes the bytes encoded so far.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buffer)
    }

    /// Appends the end marker and returns the bytes not yet taken.
    pub fn finish(mut self) -> Vec<u8> {
        self.buffer.extend_from_slice(&END_MARKER.to_be_bytes());
        self.buffer.extend_from_slice(&self.records.to_be_bytes());
        self.buffer
    }
}

/// Where the decoder is in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Header,
    Records,
    Done,
}

/// Reads a snapshot a piece at a time. Holds at most one incomplete record between pieces.
#[derive(Debug)]
pub struct SnapshotDecoder {
    pending: Vec<u8>,
    stage: Stage,
    applied_index: Option<u64>,
    records: u64,
    previous_key: Vec<u8>,
}

impl Default for SnapshotDecoder {
    fn default() -> Self {
        SnapshotDecoder {
            pending: Vec::new(),
            stage: Stage::Header,
            applied_index: None,
            records: 0,
            previous_key: Vec::new(),
        }
    }
}

/// Reads a big-endian u32 at `at`, if the bytes are there.
fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let slice = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes(slice.try_into().expect("four bytes")))
}

impl SnapshotDecoder {
    /// The applied index the header names, once the header has been read.
    pub fn applied_index(&self) -> Option<u64> {
        self.applied_index
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Reads `piece` and returns the records it completed, in order.
    pub fn feed(&mut self, piece: &[u8]) -> Result<Vec<(Bytes, Bytes)>, SnapshotFormatError> {
        if self.stage == Stage::Done && !piece.is_empty() {
            return fail(format!("{} bytes after the end marker", piece.len()));
        }
        self.pending.extend_from_slice(piece);
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(next) = self.step(at, &mut out)? {
            at = next;
        }
        self.pending.drain(..at);
        Ok(out)
    }

    /// Parses one item at `at` in `pending`: the header, a record or the end. Returns where
    /// the next item starts, or `None` when the bytes there are not complete yet.
    fn step(
        &mut self,
        at: usize,
        out: &mut Vec<(Bytes, Bytes)>,
    ) -> Result<Option<usize>, SnapshotFormatError> {
        let bytes = &self.pending[at..];
        match self.stage {
            Stage::Done if !bytes.is_empty() => {
                fail(format!("{} bytes after the end marker", bytes.len()))
            }
            Stage::Done => Ok(None),
            Stage::Header => {
                if bytes.len() < HEADER_BYTES {
                    return Ok(None);
                }
                if &bytes[..MAGIC.len()] != MAGIC {
                    return fail("no KVSNAP magic: not a key-value snapshot");
                }
                if bytes[MAGIC.len()] != VERSION {
                    return fail(format!(
                        "format version {}, expected {VERSION}",
                        bytes[MAGIC.len()]
                    ));
                }
                let index = &bytes[MAGIC.len() + 1..HEADER_BYTES];
                self.applied_index = Some(u64::from_be_bytes(index.try_into().expect("8")));
                self.stage = Stage::Records;
                Ok(Some(at + HEADER_BYTES))
            }
            Stage::Records => {
                let Some(key_bytes) = read_u32(bytes, 0) else {
                    return Ok(None);
                };
                if key_bytes == END_MARKER {
                    let Some(count) = bytes.get(4..12) else {
                        return Ok(None);
                    };
                    let count = u64::from_be_bytes(count.try_into().expect("8"));
                    if count != self.records {
                        return fail(format!(
                            "the end says {count} records but {} were read",
                            self.records
                        ));
                    }
                    self.stage = Stage::Done;
                    return Ok(Some(at + 12));
                }
                let key_bytes = key_bytes as usize;
                if key_bytes > RECORD_BYTES_MAX {
                    return fail(format!(
                        "a key of {key_bytes} bytes is over RECORD_BYTES_MAX"
                    ));
                }
                let Some(value_bytes) = read_u32(bytes, 4 + key_bytes) else {
                    return Ok(None);
                };
                let value_bytes = value_bytes as usize;
                if key_bytes + value_bytes > RECORD_BYTES_MAX {
                    return fail(format!(
                        "a record of {} bytes is over RECORD_BYTES_MAX ({RECORD_BYTES_MAX})",
                        key_bytes + value_bytes
                    ));
                }
                let end = 8 + key_bytes + value_bytes;
                if bytes.len() < end {
                    return Ok(None);
                }
                let key = &bytes[4..4 + key_bytes];
                let value = &bytes[8 + key_bytes..end];
                check_record(&self.previous_key, key, value)?;
                self.previous_key.clear();
                self.previous_key.extend_from_slice(key);
                self.records += 1;
                out.push((Bytes::copy_from_slice(key), Bytes::copy_from_slice(value)));
                Ok(Some(at + end))
            }
        }
    }

    /// Checks that the snapshot ended where it should: the end marker read, nothing after it.
    pub fn finish(&self) -> Result<(), SnapshotFormatError> {
        match self.stage {
            Stage::Done => Ok(()),
            Stage::Header => fail(format!(
                "it ends after {} bytes, inside the header",
                self.pending.len()
            )),
            Stage::Records => fail(format!(
                "it ends after {} records without the end marker",
                self.records
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut encoder = SnapshotEncoder::new(42);
        encoder.record(b"da", b"1").unwrap();
        encoder.record(b"db/long", &[7u8; 300]).unwrap();
        let address = MemberAddress {
            peer_address: "127.0.0.1:7004".parse().unwrap(),
            client_address: None,
        };
        encoder
            .record(&member_key(4), &serde_json::to_vec(&address).unwrap())
            .unwrap();
        encoder.finish()
    }

    fn decode_in_pieces(bytes: &[u8], piece: usize) -> Result<Vec<(Bytes, Bytes)>, String> {
        let mut decoder = SnapshotDecoder::default();
        let mut records = Vec::new();
        for part in bytes.chunks(piece.max(1)) {
            records.extend(decoder.feed(part).map_err(|e| e.to_string())?);
        }
        decoder.finish().map_err(|e| e.to_string())?;
        Ok(records)
    }

    /// Any split into pieces gives the same records and the header's index.
    #[test]
    fn round_trip_in_any_pieces() {
        let bytes = sample();
        for piece in [1, 2, 3, 7, 64, bytes.len()] {
            let records = decode_in_pieces(&bytes, piece).unwrap();
            assert_eq!(records.len(), 3);
            assert_eq!(records[0], (Bytes::from("da"), Bytes::from("1")));
            assert_eq!(member_id(&records[2].0), Some(4));
        }
        let mut decoder = SnapshotDecoder::default();
        decoder.feed(&bytes).unwrap();
        assert_eq!(decoder.applied_index(), Some(42));
        assert_eq!(decoder.records(), 3);
    }

    /// Each kind of damage is refused with its reason.
    #[test]
    fn damage_is_named() {
        let good = sample();
        let mut magic = good.clone();
        magic[0] = b'X';
        let mut version = good.clone();
        version[6] = 9;
        let mut count = good.clone();
        let last = count.len() - 1;
        count[last] = 9;
        let mut trailing = good.clone();
        trailing.push(0);
        let mut huge = good[..HEADER_BYTES].to_vec();
        huge.extend_from_slice(&(RECORD_BYTES_MAX as u32 + 1).to_be_bytes());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (magic, "magic"),
            (version, "version 9"),
            (count, "records but 3"),
            (trailing, "after the end"),
            (good[..good.len() - 5].to_vec(), "without the end marker"),
            (good[..4].to_vec(), "inside the header"),
            (huge, "RECORD_BYTES_MAX"),
        ];
        for (bytes, says) in cases {
            let error = decode_in_pieces(&bytes, 5).unwrap_err();
            assert!(error.contains(says), "{error:?} should say {says:?}");
        }
    }

    /// The encoder refuses what the decoder would: keys out of order or namespace, bad members.
    #[test]
    fn encoder_refuses_what_cannot_be_read() {
        let mut encoder = SnapshotEncoder::new(1);
        encoder.record(b"db", b"").unwrap();
        assert!(encoder.record(b"da", b"").is_err(), "out of order");
        assert!(encoder.record(b"db", b"").is_err(), "a duplicate");
        assert!(encoder.record(b"xq", b"").is_err(), "unknown namespace");
        assert!(
            encoder.record(&member_key(3), b"{}").is_err(),
            "bad address"
        );
        assert!(encoder.record(&member_key(0), b"").is_err(), "member 0");
    }

    /// Garbage of every shape is refused without a panic (a poor man's fuzz run: a seeded
    /// generator mutates good snapshots and makes random ones).
    #[test]
    fn garbage_never_panics() {
        let good = sample();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..5000 {
            let mut bytes = if round % 2 == 0 {
                good.clone()
            } else {
                let length = (next() % 200) as usize;
                let mut random: Vec<u8> = (0..length).map(|_| next() as u8).collect();
                if round % 4 == 1 {
                    random.splice(0..0, good[..HEADER_BYTES].iter().copied());
                }
                random
            };
            for _ in 0..(next() % 4) {
                if !bytes.is_empty() {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
            }
            let piece = (next() % 17) as usize + 1;
            let _ = decode_in_pieces(&bytes, piece);
        }
    }
}
