//! Snapshots: the state machine's applied state at one log index, which lets the log before it
//! be purged and lets a follower that fell behind the purge point catch up.
//!
//! A snapshot is a byte stream the [`StateMachine`](crate::StateMachine) writes and reads, plus
//! [`SnapshotMeta`]: the last index and term it covers, the membership at that index, its
//! length, its CRC-32 and the format version of its data (which the state machine chooses, so
//! that its snapshot layout can change across a rolling upgrade: see
//! [`StateMachine::installs_snapshot_format`](crate::StateMachine::installs_snapshot_format)). The [`LogStore`] keeps it (a sink while it is
//! written, then the latest complete snapshot). Neither side ever holds a whole snapshot in
//! memory: the state machine writes through a [`SnapshotWriter`] and reads through a
//! [`SnapshotReader`], both of which move at most one chunk at a time, and a leader streams it
//! to a follower in chunks of at most `Config::snapshot_chunk_bytes_max`.
//!
//! ```
//! use raft_core::snapshot::{SnapshotReader, SnapshotWriter};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! // A state machine writes its state in pieces of any size...
//! let mut out = SnapshotWriter::in_memory();
//! out.write(b"key=value\n").await?;
//! out.write(b"other=thing\n").await?;
//! let (data, checksum) = out.into_bytes().expect("an in-memory writer");
//! assert_eq!(checksum, raft_core::snapshot::checksum(&data));
//! // ...and reads it back chunk by chunk (or whole, for a small state).
//! let mut input = SnapshotReader::from_bytes(data, 4);
//! assert_eq!(input.read_to_end().await?, b"key=value\nother=thing\n");
//! # Ok::<(), raft_core::StateMachineError>(())
//! # }).unwrap();
//! ```

use crate::state_machine::StateMachineError;
use crate::storage::{LogStore, StorageError};
use crate::types::LogIndex;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

// What a snapshot is, as data: defined in raft-proto, with the protocol.
pub use raft_proto::snapshot::{checksum, SnapshotMeta};

/// A snapshot whose data format this node's state machine does not install
/// ([`StateMachine::installs_snapshot_format`](crate::StateMachine::installs_snapshot_format)
/// said no). It is refused before any of its bytes reach the machine, so nothing is misread;
/// the store keeps the snapshot, and a release that reads the format installs it on start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the snapshot at {index} holds state machine data of format version {version}, which this \
     node's state machine does not install (it writes version {writes}); run a release that \
     reads version {version} on this node"
)]
pub struct SnapshotFormatError {
    /// The snapshot's last index.
    pub index: LogIndex,
    /// The snapshot's [`SnapshotMeta::format_version`].
    pub version: u32,
    /// The version this node's machine writes
    /// ([`StateMachine::snapshot_format_version`](crate::StateMachine::snapshot_format_version)).
    pub writes: u32,
}

impl SnapshotFormatError {
    /// `Ok` when `machine` installs the format of the snapshot `meta`, else the refusal.
    pub fn check(
        meta: &SnapshotMeta,
        machine: &dyn crate::StateMachine,
    ) -> Result<(), SnapshotFormatError> {
        if machine.installs_snapshot_format(meta.format_version) {
            return Ok(());
        }
        Err(SnapshotFormatError {
            index: meta.last_index,
            version: meta.format_version,
            writes: machine.snapshot_format_version(),
        })
    }
}

/// A snapshot being written into a [`LogStore`]. Dropping it unfinished
/// discards what was written.
#[async_trait]
pub trait SnapshotSink: Send {
    /// Appends data. Need not be durable until [`SnapshotSink::finish`].
    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError>;

    /// Checks that the data written has `meta.data_bytes` bytes and `meta.checksum` (a
    /// mismatch is `Corrupt` and changes nothing), makes it durable, and makes it the store's
    /// latest snapshot unless the store already holds one at the same or a higher index. Durable on return.
    async fn finish(self: Box<Self>, meta: &SnapshotMeta) -> Result<(), StorageError>;
}

/// Where a [`SnapshotWriter`] puts its data.
enum WriterTarget {
    Sink(Box<dyn SnapshotSink>),
    Memory(Vec<u8>),
}

/// What a state machine writes its snapshot into. Data is passed on in chunks, so memory stays
/// at one chunk whatever the snapshot's size.
pub struct SnapshotWriter {
    target: WriterTarget,
    buffer: Vec<u8>,
    chunk_bytes: usize,
    hasher: crc32fast::Hasher,
    written_bytes: u64,
}

impl SnapshotWriter {
    /// A writer into a store's sink, passing data on in chunks of `chunk_bytes`.
    pub fn new(sink: Box<dyn SnapshotSink>, chunk_bytes: usize) -> SnapshotWriter {
        SnapshotWriter {
            target: WriterTarget::Sink(sink),
            buffer: Vec::with_capacity(chunk_bytes.min(1 << 20)),
            chunk_bytes: chunk_bytes.max(1),
            hasher: crc32fast::Hasher::new(),
            written_bytes: 0,
        }
    }

    /// A writer that keeps everything in memory: for tests of a state machine.
    pub fn in_memory() -> SnapshotWriter {
        SnapshotWriter {
            target: WriterTarget::Memory(Vec::new()),
            buffer: Vec::new(),
            chunk_bytes: 1 << 16,
            hasher: crc32fast::Hasher::new(),
            written_bytes: 0,
        }
    }

    /// Appends `data` to the snapshot.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StateMachineError> {
        self.hasher.update(data);
        self.written_bytes += data.len() as u64;
        match &mut self.target {
            WriterTarget::Memory(all) => {
                all.extend_from_slice(data);
                Ok(())
            }
            WriterTarget::Sink(_) => {
                let mut rest = data;
                while !rest.is_empty() {
                    let room = self.chunk_bytes - self.buffer.len();
                    let take = room.min(rest.len());
                    self.buffer.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if self.buffer.len() >= self.chunk_bytes {
                        self.flush().await?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Bytes written so far.
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes
    }

    async fn flush(&mut self) -> Result<(), StateMachineError> {
        if let WriterTarget::Sink(sink) = &mut self.target {
            if !self.buffer.is_empty() {
                sink.write(&self.buffer)
                    .await
                    .map_err(|e| StateMachineError(format!("writing the snapshot: {e}")))?;
                self.buffer.clear();
            }
        }
        Ok(())
    }

    /// Passes on what is buffered and returns the sink with the data's length and checksum.
    /// `None` for an in-memory writer.
    pub async fn into_sink(
        mut self,
    ) -> Result<Option<(Box<dyn SnapshotSink>, u64, u32)>, StateMachineError> {
        self.flush().await?;
        let written = self.written_bytes;
        let checksum = self.hasher.finalize();
        match self.target {
            WriterTarget::Sink(sink) => Ok(Some((sink, written, checksum))),
            WriterTarget::Memory(_) => Ok(None),
        }
    }

    /// The data and checksum of an in-memory writer; `None` for a writer into a sink.
    pub fn into_bytes(self) -> Option<(Bytes, u32)> {
        let checksum = self.hasher.finalize();
        match self.target {
            WriterTarget::Memory(all) => Some((Bytes::from(all), checksum)),
            WriterTarget::Sink(_) => None,
        }
    }
}

/// Where a [`SnapshotReader`] gets its data.
enum ReaderSource {
    Store {
        store: Arc<dyn LogStore>,
        meta: Box<SnapshotMeta>,
    },
    Memory(Bytes),
}

/// What a state machine reads a snapshot from, a chunk at a time.
pub struct SnapshotReader {
    source: ReaderSource,
    /// Bytes taken from the source so far.
    offset: u64,
    total_bytes: u64,
    chunk_bytes: usize,
    /// Bytes taken from the source but handed back (see `unread`): the next chunk.
    pushback: Option<Bytes>,
    /// Bytes at the head that the runtime read for itself (the session header of
    /// [`crate::sessions`]); [`SnapshotReader::total_bytes`] leaves them out. Invariant: at
    /// most `offset`.
    base: u64,
}

impl SnapshotReader {
    /// A reader of the snapshot `meta` held by `store`, in chunks of `chunk_bytes`.
    pub fn new(store: Arc<dyn LogStore>, meta: SnapshotMeta, chunk_bytes: usize) -> SnapshotReader {
        SnapshotReader {
            total_bytes: meta.data_bytes,
            source: ReaderSource::Store {
                store,
                meta: Box::new(meta),
            },
            offset: 0,
            chunk_bytes: chunk_bytes.max(1),
            pushback: None,
            base: 0,
        }
    }

    /// A reader of data in memory: for tests of a state machine.
    pub fn from_bytes(data: Bytes, chunk_bytes: usize) -> SnapshotReader {
        SnapshotReader {
            total_bytes: data.len() as u64,
            source: ReaderSource::Memory(data),
            offset: 0,
            chunk_bytes: chunk_bytes.max(1),
            pushback: None,
            base: 0,
        }
    }

    /// Length of the snapshot's data for the state machine (the whole stream, less the
    /// runtime's session header when the runtime read one first).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes - self.base
    }

    /// Bytes not yet handed out.
    fn remaining_bytes(&self) -> u64 {
        self.total_bytes - self.offset + self.pushback.as_ref().map_or(0, |b| b.len() as u64)
    }

    /// Reads up to `bytes` bytes (fewer only at the end), keeping the rest of the last chunk
    /// for the next read.
    pub(crate) async fn read_prefix(&mut self, bytes: usize) -> Result<Vec<u8>, StateMachineError> {
        let mut prefix = Vec::with_capacity(bytes.min(self.chunk_bytes));
        while prefix.len() < bytes {
            let Some(mut chunk) = self.next_chunk().await? else {
                break;
            };
            let want = bytes - prefix.len();
            if chunk.len() > want {
                self.unread(chunk.split_off(want));
            }
            prefix.extend_from_slice(&chunk);
        }
        Ok(prefix)
    }

    /// Hands `bytes`, just read, back: the next chunk returns them.
    pub(crate) fn unread(&mut self, bytes: Bytes) {
        assert!(
            self.pushback.is_none(),
            "one chunk is handed back at a time"
        );
        if !bytes.is_empty() {
            self.pushback = Some(bytes);
        }
        assert!(self.remaining_bytes() <= self.total_bytes);
    }

    /// What was read so far belongs to the runtime: the state machine's data starts here.
    pub(crate) fn start_state_machine_data(&mut self) {
        self.base = self.total_bytes - self.remaining_bytes();
        assert!(self.base <= self.offset);
    }

    /// The next chunk, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, StateMachineError> {
        if let Some(chunk) = self.pushback.take() {
            return Ok(Some(chunk));
        }
        if self.offset >= self.total_bytes {
            return Ok(None);
        }
        let want = (self.total_bytes - self.offset).min(self.chunk_bytes as u64) as usize;
        let chunk = match &self.source {
            ReaderSource::Memory(data) => {
                let start = self.offset as usize;
                data.slice(start..start + want)
            }
            ReaderSource::Store { store, meta } => {
                let chunk = store
                    .read_snapshot(meta, self.offset, want)
                    .await
                    .map_err(|e| StateMachineError(format!("reading the snapshot: {e}")))?;
                if chunk.is_empty() || chunk.len() > want {
                    return Err(StateMachineError(format!(
                        "the store returned {} bytes at offset {} of a {}-byte snapshot",
                        chunk.len(),
                        self.offset,
                        self.total_bytes
                    )));
                }
                chunk
            }
        };
        self.offset += chunk.len() as u64;
        Ok(Some(chunk))
    }

    /// Reads everything left into one buffer: for state machines whose state is in memory
    /// anyway.
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>, StateMachineError> {
        let mut all = Vec::with_capacity(self.remaining_bytes() as usize);
        while let Some(chunk) = self.next_chunk().await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }
}
