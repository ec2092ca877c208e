//! The commands the replicated log carries and the answers the state machine gives, with their
//! binary encoding.
//!
//! Commands are encoded with bincode 2 (serde, standard configuration: variable-length
//! integers), behind a one-byte format version so that a later format can be told apart. A
//! `Put` of a 16-byte key and a 256-byte value costs 278 bytes in the log (6 bytes of framing).

use crate::members::MemberAddress;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The first byte of every encoded command and answer.
pub const FORMAT_VERSION: u8 = 1;

/// One state machine command. Reads are commands too: sent through the log, they observe every
/// write committed before them (linearizable reads, until the protocol gains ReadIndex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Removes `key` (absent keys are fine).
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Sets `key` to `new` only if its current value is `expected` (`None`: only if absent).
    Cas {
        /// The key.
        key: Bytes,
        /// The value the key must hold, or `None` for "must be absent".
        expected: Option<Bytes>,
        /// The value to set when the comparison holds.
        new: Bytes,
    },
    /// Reads `key`.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Reads up to `limit` keys that start with `prefix`, in key order, and at most
    /// `bytes_max` bytes of keys and values.
    Scan {
        /// The prefix (empty: every key).
        prefix: Bytes,
        /// Keys returned at most.
        limit: u32,
        /// Bytes of keys and values returned at most (at least one pair is always returned).
        bytes_max: u32,
    },
    /// Legacy: recorded where member `id` is reached, before member addresses moved into the
    /// membership ([`crate::members`]). No node proposes it any more; one in an older log is
    /// answered as before ([`Answer::MemberAddressSet`]) and changes nothing. Kept in its
    /// place: bincode numbers variants in order, so every command decodes unchanged.
    SetMemberAddress {
        /// The member.
        id: u64,
        /// Its addresses.
        address: MemberAddress,
    },
    /// A page of a scan: like [`Command::Scan`], from the first key at or after `start` (the
    /// `next` of the page before), answered by [`Answer::ScanFrom`], which says where the
    /// next page starts. Added after every older variant, so older logs decode unchanged.
    ScanFrom {
        /// The prefix (empty: every key).
        prefix: Bytes,
        /// The first key the page may return (inclusive; empty: from the prefix).
        start: Bytes,
        /// Keys returned at most.
        limit: u32,
        /// Bytes of keys and values returned at most (at least one pair is always returned).
        bytes_max: u32,
    },
}

/// What the state machine answers a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// A `Put` took effect at this log index.
    Written {
        /// The command's log index.
        index: u64,
    },
    /// A `Delete` took effect.
    Deleted {
        /// The command's log index.
        index: u64,
        /// Whether the key existed.
        existed: bool,
    },
    /// The outcome of a `Cas`.
    Cas {
        /// The command's log index.
        index: u64,
        /// True when the value was replaced.
        swapped: bool,
        /// The value the key held before the command (the new value is `new` when swapped).
        previous: Option<Bytes>,
    },
    /// The value a `Get` found.
    Value(Option<Bytes>),
    /// The pairs a `Scan` found, and whether more matching keys remained.
    Scan {
        /// Key and value pairs in key order.
        entries: Vec<(Bytes, Bytes)>,
        /// True when the limit stopped the scan before the last matching key.
        more: bool,
    },
    /// The command could not be decoded (a bug or a version mismatch). Every node gives the
    /// same answer, so the replicas stay identical; the state is not changed.
    Invalid(String),
    /// A `SetMemberAddress` took effect at this log index.
    MemberAddressSet {
        /// The command's log index.
        index: u64,
    },
    /// The pairs a `ScanFrom` found, and the key the next page starts at.
    ScanFrom {
        /// Key and value pairs in key order.
        entries: Vec<(Bytes, Bytes)>,
        /// The first matching key not returned (a limit stopped the page); `None` when the
        /// page reached the last matching key.
        next: Option<Bytes>,
    },
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot decode: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

fn encode<T: Serialize>(value: &T) -> Bytes {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .expect("encoding into a Vec cannot fail");
    Bytes::from(out)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError("empty input".into())),
        Some((&FORMAT_VERSION, rest)) => {
            let (value, used) =
                bincode::serde::decode_from_slice(rest, bincode::config::standard())
                    .map_err(|e| DecodeError(e.to_string()))?;
            if used != rest.len() {
                return Err(DecodeError(format!("{} trailing bytes", rest.len() - used)));
            }
            Ok(value)
        }
        Some((version, _)) => Err(DecodeError(format!(
            "format version {version}, expected {FORMAT_VERSION}"
        ))),
    }
}

impl Command {
    /// The command's bytes for the log.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    /// Reads a command from the log.
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        decode(bytes)
    }

    /// True for commands that change the state.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Put { .. }
                | Command::Delete { .. }
                | Command::Cas { .. }
                | Command::SetMemberAddress { .. }
        )
    }
}

impl Answer {
    /// The answer's bytes, as handed back to the proposer.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    /// Reads an answer.
    pub fn decode(bytes: &[u8]) -> Result<Answer, DecodeError> {
        decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command survives a round trip, and a put stays compact.
    #[test]
    fn commands_round_trip_compactly() {
        let commands = [
            Command::Put {
                key: Bytes::from_static(b"k000000000000001"),
                value: Bytes::from(vec![b'v'; 256]),
            },
            Command::Delete {
                key: Bytes::from_static(b"a"),
            },
            Command::Cas {
                key: Bytes::from_static(b"a"),
                expected: None,
                new: Bytes::from_static(b"1"),
            },
            Command::Get {
                key: Bytes::from_static(b"a"),
            },
            Command::Scan {
                prefix: Bytes::new(),
                limit: 10,
                bytes_max: 1 << 20,
            },
            Command::ScanFrom {
                prefix: Bytes::from_static(b"a/"),
                start: Bytes::from_static(b"a/\x00\xff"),
                limit: 10,
                bytes_max: 1 << 20,
            },
            Command::SetMemberAddress {
                id: 4,
                address: MemberAddress {
                    peer_address: "127.0.0.1:7004".parse().unwrap(),
                    client_address: Some("[::1]:8004".parse().unwrap()),
                },
            },
        ];
        for command in commands {
            assert_eq!(Command::decode(&command.encode()).unwrap(), command);
        }
        let put = Command::Put {
            key: Bytes::from(vec![b'k'; 16]),
            value: Bytes::from(vec![b'v'; 256]),
        };
        assert_eq!(put.encode().len(), 16 + 256 + 6);
    }

    /// The variants keep their numbers, so a log written before `ScanFrom` existed decodes
    /// as it was written: these bytes are what older nodes wrote (version byte, variant
    /// number, then the fields in order), and `ScanFrom` and its answer come after every
    /// older variant.
    #[test]
    fn older_commands_decode_unchanged_and_new_variants_come_last() {
        let get = [FORMAT_VERSION, 3, 1, b'a'];
        assert_eq!(
            Command::decode(&get).unwrap(),
            Command::Get {
                key: Bytes::from_static(b"a")
            }
        );
        let scan = [FORMAT_VERSION, 4, 1, b'p', 10, 100];
        assert_eq!(
            Command::decode(&scan).unwrap(),
            Command::Scan {
                prefix: Bytes::from_static(b"p"),
                limit: 10,
                bytes_max: 100,
            }
        );
        let scan_from = Command::ScanFrom {
            prefix: Bytes::from_static(b"p"),
            start: Bytes::from_static(b"q"),
            limit: 10,
            bytes_max: 100,
        };
        assert_eq!(
            scan_from.encode().as_ref(),
            [FORMAT_VERSION, 6, 1, b'p', 1, b'q', 10, 100]
        );
        let answer = Answer::ScanFrom {
            entries: vec![],
            next: None,
        };
        assert_eq!(answer.encode().as_ref(), [FORMAT_VERSION, 7, 0, 0]);
        assert_eq!(Answer::decode(&answer.encode()).unwrap(), answer);
    }

    /// Unknown versions, truncation and trailing garbage are refused, not misread.
    #[test]
    fn bad_bytes_are_refused() {
        let good = Command::Get {
            key: Bytes::from_static(b"key"),
        }
        .encode();
        assert!(Command::decode(&[]).is_err());
        let mut wrong_version = good.to_vec();
        wrong_version[0] = 9;
        assert!(Command::decode(&wrong_version)
            .unwrap_err()
            .0
            .contains("version 9"));
        assert!(Command::decode(&good[..good.len() - 1]).is_err());
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert!(Command::decode(&trailing)
            .unwrap_err()
            .0
            .contains("trailing"));
    }
}
