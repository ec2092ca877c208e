//! The wire format both transports speak: length-prefixed, versioned frames carrying a
//! handshake or a [`Message`] encoded with bincode 2 through serde.
//!
//! # Frame layout
//!
//! ```text
//!  byte 0        4         5        6                              4 + length
//!       +--------+---------+--------+------------------------------+
//!       | length | version |  kind  | payload                      |
//!       | u32 BE |   u8    |   u8   | bincode 2, standard config   |
//!       +--------+---------+--------+------------------------------+
//! ```
//!
//! - `length`: big-endian `u32`, the number of bytes after the length field (version, kind and
//!   payload), so a frame is `length + 4` bytes long. The whole frame, length field included,
//!   must be at most the receiver's `frame_bytes_max`; a receiver checks this from the first four
//!   bytes, before it buffers or allocates anything for the frame.
//! - `version`: [`FORMAT_VERSION`]. A receiver refuses any other value, so a future format can
//!   change everything after this byte. Version 0 is never used, so a zeroed buffer is no frame.
//! - `kind`: [`KIND_HANDSHAKE`], [`KIND_MESSAGE`] or [`KIND_REFUSAL`]; 0 is never used.
//! - `payload`: the serde form of a [`Handshake`], a [`Message`] or a [`Refusal`], encoded by
//!   bincode 2.0 with its standard configuration (little-endian, variable-length integers,
//!   `u64` lengths as varints). It must fill the frame exactly: trailing bytes are an error.
//!
//! # The handshake
//!
//! Every connection (TCP) or stream (QUIC) opens with one handshake frame from the side that
//! dialled, naming the cluster, the sender, the intended recipient and the [`Lane`] the
//! connection carries. The receiving side checks it with [`check_handshake`]. Over TCP it then
//! answers with a handshake of its own, which the dialler checks the same way, so a dialler
//! knows it reached the node it meant in its own cluster. QUIC streams are one-way and TLS has
//! already proved both ends' identities (the dialler asked for the peer's
//! [`certificate_name`]), so there is no answer. Only message frames follow, and every one
//! must come from the peer the handshake named ([`check_sender`]). A refused handshake or a
//! garbled frame closes that connection only.
//!
//! A node that a committed membership removed is answered, over TCP, with a [`Refusal`]
//! instead of a handshake (QUIC closes the connection with an application code of its own),
//! so that it learns of its removal even if the entry that removed it never reached it. A
//! node that knows only the older kinds reads the refusal as an unknown kind and redials, as
//! it would after any refusal.
//!
//! # Decoding is a pure function over bytes
//!
//! [`check`] looks at a buffer and says whether it starts with a complete frame, needs more
//! bytes, or can never be a frame (oversized, unknown version or kind); [`parse`] decodes one
//! complete frame. Neither does IO. [`check`] refuses an oversized frame from its first four
//! bytes, so a reader never buffers more than `frame_bytes_max`. Inside the payload, a forged
//! length cannot make [`parse`] allocate what it claims: bincode counts every value it decodes
//! at its in-memory size (8 bytes for each `u64`, the length of each byte string) against a
//! budget of [`DECODED_BYTES_PER_PAYLOAD_BYTE_MAX`] times the payload's length, so the largest
//! byte string it will allocate is a small multiple of the frame, never the claimed gigabytes.
//! Sequences of entries, proposals and outcomes preallocate at most serde's "cautious" 1 MiB
//! and otherwise grow only as their elements are actually read from the frame.
//!
//! ```
//! use raft_core::wire::{self, ClusterId, Frame, Handshake};
//! use raft_core::{Incarnation, Lane, Message, MessageBody, NodeId, Term, LogIndex};
//!
//! let frame_bytes_max = 1 << 20;
//! let message = Message {
//!     from: NodeId(1),
//!     to: NodeId(2),
//!     term: Term(3),
//!     incarnation: Incarnation(0),
//!     body: MessageBody::Heartbeat {
//!         commit: LogIndex(7),
//!         read_seq: 0,
//!         follower_incarnation: Incarnation(0),
//!     },
//! };
//! let hello = Handshake { cluster: ClusterId(42), from: NodeId(1), to: NodeId(2), lane: Lane::Ordinary };
//!
//! // A stream of bytes: a handshake, then a message.
//! let mut stream = wire::encode_handshake(&hello).to_vec();
//! stream.extend_from_slice(&wire::encode_message(&message, frame_bytes_max).unwrap());
//!
//! let (first, used) = wire::decode(&stream, frame_bytes_max).unwrap().expect("a whole frame");
//! assert_eq!(first, Frame::Handshake(hello));
//! let (second, _) = wire::decode(&stream[used..], frame_bytes_max).unwrap().expect("a whole frame");
//! assert_eq!(second, Frame::Message(message));
//!
//! // Half a frame asks for more bytes; garbage is refused.
//! assert_eq!(wire::check(&stream[..3], frame_bytes_max), Ok(None));
//! assert!(wire::check(b"GET / HTTP/1.1\r\n", frame_bytes_max).is_err());
//! ```

use crate::message::{Lane, Message};
use crate::types::NodeId;
use bincode::de::read::Reader;
use bincode::de::{BorrowDecode, Decoder, DecoderImpl};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::RangeInclusive;

/// The format version this code writes and the only one it reads. Version 2: memberships
/// (in entries and snapshot metas) record what is known of each member. Version 3 added
/// client sessions: the `session` of a forwarded proposal and the session command entry
/// payload. Version 4 added incarnations: every message carries its sender's
/// ([`Message::incarnation`]), a vote answer the candidate's, and memberships record them;
/// and snapshot metas carry the format version of the state machine's data
/// ([`SnapshotMeta::format_version`](crate::SnapshotMeta::format_version)).
pub const FORMAT_VERSION: u8 = 4;

/// The `kind` byte of a handshake frame.
pub const KIND_HANDSHAKE: u8 = 1;

/// The `kind` byte of a message frame.
pub const KIND_MESSAGE: u8 = 2;

/// The `kind` byte of a refusal frame.
pub const KIND_REFUSAL: u8 = 3;

/// Bytes of the length field.
pub const LENGTH_BYTES: usize = 4;

/// Bytes before the payload: the length field, the version and the kind.
pub const HEADER_BYTES: usize = LENGTH_BYTES + 2;

/// The values a transport may choose for `frame_bytes_max`. The floor leaves room for the
/// largest handshake; the ceiling keeps one frame's buffer a sane allocation and its length
/// within the `u32` length field.
pub const FRAME_BYTES_MAX_RANGE: RangeInclusive<usize> = 64..=(1 << 30);

/// The decoding budget, in bytes of decoded values per byte of payload. A valid payload never
/// needs more: its densest values are `u64` varints of one byte, counted as eight.
pub const DECODED_BYTES_PER_PAYLOAD_BYTE_MAX: usize = 8;

/// Identifies one cluster. Nodes refuse connections from another cluster, so two clusters that
/// share hosts or reuse node IDs cannot mix their messages.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ClusterId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cluster-{:x}", self.0)
    }
}

/// The first frame on every connection or stream, in both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    /// The sender's cluster.
    pub cluster: ClusterId,
    /// The sender.
    pub from: NodeId,
    /// The node the sender means to reach.
    pub to: NodeId,
    /// What the connection carries.
    #[serde(with = "lane_code")]
    pub lane: Lane,
}

/// Why a node refuses a dialler, told to it in a [`Refusal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalReason {
    /// The refusing node's committed membership removed the dialler: it is no longer a
    /// member, and never will be again (IDs are not reused).
    Removed,
}

/// The answer, instead of a handshake, to a dialler that is refused for a reason it should
/// know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The refusing node's cluster.
    pub cluster: ClusterId,
    /// The refusing node.
    pub from: NodeId,
    /// The refused dialler.
    pub to: NodeId,
    /// Why.
    pub reason: RefusalReason,
}

/// One decoded frame.
// A frame lives only between `decode` and the match that hands its message on, so the size of
// a message (a snapshot chunk's meta is the largest part) costs nothing here, and boxing it
// would cost an allocation per message received.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Opens a connection or stream.
    Handshake(Handshake),
    /// A Raft message.
    Message(Message),
    /// A dialler is refused, and told why.
    Refusal(Refusal),
}

/// Why bytes are not a frame, or a message does not fit in one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The frame (or the encoded message) is over the limit.
    TooLarge {
        /// The frame's whole length, length field included.
        bytes: usize,
        /// The `frame_bytes_max` in force.
        limit: usize,
    },
    /// The length field claims fewer bytes than a version and a kind.
    TooShort {
        /// The value of the length field.
        length: u32,
    },
    /// The slice given to [`parse`] ends before the frame does.
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// The version byte is not [`FORMAT_VERSION`].
    UnknownVersion {
        /// The byte found.
        version: u8,
    },
    /// The kind byte is none of [`KIND_HANDSHAKE`], [`KIND_MESSAGE`] and [`KIND_REFUSAL`].
    UnknownKind {
        /// The byte found.
        kind: u8,
    },
    /// The payload is not a valid encoding of its kind.
    Malformed {
        /// What bincode or the trailing-bytes check said.
        reason: String,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { bytes, limit } => {
                write!(f, "frame of {bytes} bytes is over the {limit}-byte limit")
            }
            FrameError::TooShort { length } => {
                write!(f, "frame length {length} is shorter than its header")
            }
            FrameError::Truncated { needed, available } => {
                write!(
                    f,
                    "frame needs {needed} bytes but only {available} are there"
                )
            }
            FrameError::UnknownVersion { version } => write!(f, "unknown frame version {version}"),
            FrameError::UnknownKind { kind } => write!(f, "unknown frame kind {kind}"),
            FrameError::Malformed { reason } => write!(f, "malformed frame payload: {reason}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Why a handshake or a message on an established connection is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The sender belongs to another cluster.
    ForeignCluster {
        /// This node's cluster.
        expected: ClusterId,
        /// The cluster the sender named.
        received: ClusterId,
    },
    /// The sender is not a member this node knows.
    UnknownNode {
        /// The sender's claimed ID.
        from: NodeId,
    },
    /// The sender meant to reach another node (for example, an address now used by another
    /// member).
    WrongRecipient {
        /// This node.
        local: NodeId,
        /// Whom the sender meant to reach.
        to: NodeId,
    },
    /// The sender claims an identity other than the one the connection authenticated (its TLS
    /// certificate, the handshake that opened the connection, or the node that was dialled).
    PeerMismatch {
        /// The peer the connection belongs to.
        expected: NodeId,
        /// The identity claimed.
        claimed: NodeId,
    },
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::ForeignCluster { expected, received } => {
                write!(f, "peer is in {received}, not {expected}")
            }
            HandshakeError::UnknownNode { from } => write!(f, "{from} is not a known member"),
            HandshakeError::WrongRecipient { local, to } => {
                write!(f, "peer meant to reach {to}, this is {local}")
            }
            HandshakeError::PeerMismatch { expected, claimed } => {
                write!(
                    f,
                    "connection belongs to {expected} but the sender claims {claimed}"
                )
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

/// The bincode configuration of every payload. The limit is a placeholder that [`parse`]
/// narrows to the payload's own length (see [`decode_payload`]): bincode only takes limits as
/// constants.
fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ usize::MAX }>()
}

/// Encodes a handshake frame. A handshake is at most 34 bytes, below every allowed limit.
pub fn encode_handshake(handshake: &Handshake) -> Bytes {
    let frame = encode(KIND_HANDSHAKE, handshake);
    assert!(frame.len() <= *FRAME_BYTES_MAX_RANGE.start());
    Bytes::from(frame)
}

/// Encodes a refusal frame; like a handshake, it is below every allowed limit.
pub fn encode_refusal(refusal: &Refusal) -> Bytes {
    let frame = encode(KIND_REFUSAL, refusal);
    assert!(frame.len() <= *FRAME_BYTES_MAX_RANGE.start());
    Bytes::from(frame)
}

/// Encodes a message frame, or says it is over `frame_bytes_max`.
pub fn encode_message(message: &Message, frame_bytes_max: usize) -> Result<Bytes, FrameError> {
    let frame = encode(KIND_MESSAGE, message);
    if frame.len() > frame_bytes_max {
        return Err(FrameError::TooLarge {
            bytes: frame.len(),
            limit: frame_bytes_max,
        });
    }
    Ok(Bytes::from(frame))
}

fn encode<T: Serialize>(kind: u8, value: &T) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&[0; LENGTH_BYTES]);
    frame.push(FORMAT_VERSION);
    frame.push(kind);
    // Encoding into a Vec cannot fail for these types: every sequence has a known length and
    // every field is a plain integer, bool, byte string or enum.
    bincode::serde::encode_into_std_write(value, &mut frame, bincode_config())
        .expect("messages and handshakes always encode");
    let length = frame.len() - LENGTH_BYTES;
    // A frame over 4 GiB cannot be expressed; saturating makes `check` refuse it as too large
    // rather than wrap around to a small, wrong length.
    let length_field = u32::try_from(length).unwrap_or(u32::MAX);
    frame[..LENGTH_BYTES].copy_from_slice(&length_field.to_be_bytes());
    frame
}

/// Looks at the start of `buffer`. Returns `Ok(Some(n))` if it begins with a complete frame of
/// `n` bytes, `Ok(None)` if more bytes are needed to tell, and an error if the bytes can never
/// become a valid frame: the length field is over `frame_bytes_max` or too short, or the
/// version or kind byte is unknown. Reads at most the first six bytes, allocates nothing.
pub fn check(buffer: &[u8], frame_bytes_max: usize) -> Result<Option<usize>, FrameError> {
    let Some(length_field) = buffer.get(..LENGTH_BYTES) else {
        return Ok(None);
    };
    let length = u32::from_be_bytes(length_field.try_into().expect("four bytes"));
    let frame_bytes = LENGTH_BYTES + length as usize;
    if frame_bytes > frame_bytes_max {
        return Err(FrameError::TooLarge {
            bytes: frame_bytes,
            limit: frame_bytes_max,
        });
    }
    if frame_bytes < HEADER_BYTES {
        return Err(FrameError::TooShort { length });
    }
    if let Some(&version) = buffer.get(LENGTH_BYTES) {
        if version != FORMAT_VERSION {
            return Err(FrameError::UnknownVersion { version });
        }
    }
    if let Some(&kind) = buffer.get(LENGTH_BYTES + 1) {
        if kind != KIND_HANDSHAKE && kind != KIND_MESSAGE && kind != KIND_REFUSAL {
            return Err(FrameError::UnknownKind { kind });
        }
    }
    if buffer.len() < frame_bytes {
        return Ok(None);
    }
    Ok(Some(frame_bytes))
}

/// Decodes one complete frame: `frame` must be exactly the bytes [`check`] measured. Every
/// header check of [`check`] is repeated, so `parse` is safe on any input by itself.
pub fn parse(frame: &[u8], frame_bytes_max: usize) -> Result<Frame, FrameError> {
    let frame_bytes = match check(frame, frame_bytes_max)? {
        Some(frame_bytes) => frame_bytes,
        None => {
            let needed = match frame.get(..LENGTH_BYTES) {
                Some(field) => {
                    LENGTH_BYTES
                        + u32::from_be_bytes(field.try_into().expect("four bytes")) as usize
                }
                None => HEADER_BYTES,
            };
            return Err(FrameError::Truncated {
                needed,
                available: frame.len(),
            });
        }
    };
    if frame_bytes != frame.len() {
        return Err(FrameError::Malformed {
            reason: format!(
                "{} bytes follow a {frame_bytes}-byte frame",
                frame.len() - frame_bytes
            ),
        });
    }
    let payload = &frame[HEADER_BYTES..];
    match frame[LENGTH_BYTES + 1] {
        KIND_HANDSHAKE => decode_payload::<Handshake>(payload).map(Frame::Handshake),
        KIND_MESSAGE => decode_payload::<Message>(payload).map(Frame::Message),
        KIND_REFUSAL => decode_payload::<Refusal>(payload).map(Frame::Refusal),
        kind => Err(FrameError::UnknownKind { kind }),
    }
}

/// [`check`], then [`parse`] if a whole frame is there: returns the frame and its length.
pub fn decode(buffer: &[u8], frame_bytes_max: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    match check(buffer, frame_bytes_max)? {
        None => Ok(None),
        Some(frame_bytes) => {
            let frame = parse(&buffer[..frame_bytes], frame_bytes_max)?;
            Ok(Some((frame, frame_bytes)))
        }
    }
}

/// Decodes a payload that must fill `payload` exactly.
///
/// bincode allocates a byte string's buffer before reading it, trusting the length written in
/// front of it. Its only guard is the configured byte limit, which it checks (with
/// `claim_bytes_read`) for every value it decodes, at the value's in-memory size. The limit is a
/// constant, so this decoder claims all of it but the payload's budget up front: a forged length
/// then fails before anything is allocated for it.
fn decode_payload<'de, T: Deserialize<'de>>(payload: &'de [u8]) -> Result<T, FrameError> {
    let malformed = |error: bincode::error::DecodeError| FrameError::Malformed {
        reason: error.to_string(),
    };
    let reader = bincode::de::read::SliceReader::new(payload);
    let mut decoder = DecoderImpl::new(reader, bincode_config(), ());
    decoder
        .claim_bytes_read(usize::MAX - payload.len() * DECODED_BYTES_PER_PAYLOAD_BYTE_MAX)
        .map_err(malformed)?;
    let value =
        bincode::serde::BorrowCompat::<T>::borrow_decode(&mut decoder).map_err(malformed)?;
    if decoder.reader().peek_read(1).is_some() {
        return Err(FrameError::Malformed {
            reason: "bytes left over after the payload".to_string(),
        });
    }
    Ok(value.0)
}

/// Checks a handshake received by `local`, a member of `cluster`. `is_known` says whether a node
/// ID is a member this node talks to; `authenticated` is the peer the connection is already
/// known to belong to (from its TLS certificate, or the node that was dialled), if any.
pub fn check_handshake(
    handshake: &Handshake,
    cluster: ClusterId,
    local: NodeId,
    is_known: impl Fn(NodeId) -> bool,
    authenticated: Option<NodeId>,
) -> Result<(), HandshakeError> {
    if handshake.cluster != cluster {
        return Err(HandshakeError::ForeignCluster {
            expected: cluster,
            received: handshake.cluster,
        });
    }
    if handshake.to != local {
        return Err(HandshakeError::WrongRecipient {
            local,
            to: handshake.to,
        });
    }
    if let Some(expected) = authenticated {
        if handshake.from != expected {
            return Err(HandshakeError::PeerMismatch {
                expected,
                claimed: handshake.from,
            });
        }
    }
    if handshake.from == local || !is_known(handshake.from) {
        return Err(HandshakeError::UnknownNode {
            from: handshake.from,
        });
    }
    Ok(())
}

/// The DNS name in a node's certificate, where a transport authenticates peers with TLS: the
/// dialler asks for this name, and the listener checks the handshake's `from` against it.
pub fn certificate_name(node: NodeId) -> String {
    format!("node-{}", node.0)
}

/// Checks that a message arriving on a connection that belongs to `peer` comes from `peer`.
pub fn check_sender(message: &Message, peer: NodeId) -> Result<(), HandshakeError> {
    if message.from != peer {
        return Err(HandshakeError::PeerMismatch {
            expected: peer,
            claimed: message.from,
        });
    }
    Ok(())
}

/// `Lane` on the wire: one byte, 0 for ordinary and 1 for snapshot. Kept here rather than as a
/// derive on `Lane` so the wire format owns its encoding.
mod lane_code {
    use crate::message::Lane;
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(lane: &Lane, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(match lane {
            Lane::Ordinary => 0,
            Lane::Snapshot => 1,
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Lane, D::Error> {
        match u8::deserialize(deserializer)? {
            0 => Ok(Lane::Ordinary),
            1 => Ok(Lane::Snapshot),
            other => Err(de::Error::custom(format!("unknown lane {other}"))),
        }
    }
}
