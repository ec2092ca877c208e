//! Reading frames from a byte stream with the pure decoder of `raft_core::wire`.

use crate::wire::{self, ClusterId, Frame, FrameError, Handshake};
use crate::NodeId;
use bytes::{Buf, BytesMut};
use std::fmt;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes asked of the socket at a time when the next frame's length is not yet known.
const READ_CHUNK_BYTES: usize = 16 << 10;

/// Why a connection's byte stream ended badly.
#[derive(Debug)]
pub enum ReadError {
    /// The byte stream itself failed.
    Io(std::io::Error),
    /// The bytes are not a valid frame (or the stream ended inside one).
    Frame(FrameError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(error) => write!(f, "read failed: {error}"),
            ReadError::Frame(error) => write!(f, "bad frame: {error}"),
        }
    }
}

/// Splits a byte stream into frames.
///
/// Invariant: the buffer never holds more than one frame's length (at most `frame_bytes_max`,
/// checked from its first four bytes before any of it is buffered) plus one read chunk.
pub struct FrameReader<R> {
    reader: R,
    buffer: BytesMut,
    frame_bytes_max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames of at most `frame_bytes_max` bytes from `reader`.
    pub fn new(reader: R, frame_bytes_max: usize) -> FrameReader<R> {
        FrameReader {
            reader,
            buffer: BytesMut::with_capacity(READ_CHUNK_BYTES),
            frame_bytes_max,
        }
    }

    /// The next frame; `Ok(None)` when the stream ended cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            let complete =
                wire::check(&self.buffer, self.frame_bytes_max).map_err(ReadError::Frame)?;
            if let Some(frame_bytes) = complete {
                let frame = wire::parse(&self.buffer[..frame_bytes], self.frame_bytes_max)
                    .map_err(ReadError::Frame)?;
                self.buffer.advance(frame_bytes);
                return Ok(Some(frame));
            }
            // Room for the rest of this frame when its length is known (already checked
            // against the limit), else for a chunk.
            let missing = match self.buffer.get(..wire::LENGTH_BYTES) {
                Some(field) => {
                    let length = u32::from_be_bytes(field.try_into().expect("four bytes"));
                    wire::LENGTH_BYTES + length as usize - self.buffer.len()
                }
                None => READ_CHUNK_BYTES,
            };
            self.buffer.reserve(missing.max(READ_CHUNK_BYTES));
            let read = self
                .reader
                .read_buf(&mut self.buffer)
                .await
                .map_err(ReadError::Io)?;
            if read == 0 {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                return Err(ReadError::Frame(
                    wire::parse(&self.buffer, self.frame_bytes_max)
                        .err()
                        .unwrap_or(FrameError::Truncated {
                            needed: wire::HEADER_BYTES,
                            available: self.buffer.len(),
                        }),
                ));
            }
        }
    }
}

/// Reads the first frame of an inbound connection (or stream), which must be a handshake, and
/// checks it with [`wire::check_handshake`] (no sender authenticated yet): `Ok(None)` when the
/// stream ended before any frame. Refusals are described for the log.
pub async fn read_inbound_handshake<R: AsyncRead + Unpin>(
    frames: &mut FrameReader<R>,
    cluster: ClusterId,
    node: NodeId,
    is_known: impl Fn(NodeId) -> bool,
) -> Result<Option<Handshake>, String> {
    let handshake = match frames.next().await.map_err(|error| error.to_string())? {
        Some(Frame::Handshake(handshake)) => handshake,
        Some(Frame::Message(_)) => return Err("a message before the handshake".into()),
        Some(Frame::Refusal(_)) => return Err("a refusal from a dialler".into()),
        None => return Ok(None),
    };
    wire::check_handshake(&handshake, cluster, node, is_known, None)
        .map_err(|error| error.to_string())?;
    Ok(Some(handshake))
}
