//! The snapshot half of `LogStore` for `RocksLogStore`: sinks that stream into snapshot files,
//! the latest snapshot's meta, and reads of a range of a held snapshot.
//!
//! Each file's opaque membership field holds the whole [`SnapshotMeta`] (bincode), which is
//! checked against the file's own id, length and data checksum whenever it is read back. The
//! file IO runs on tokio's blocking threads; a sink moves data there a buffer at a time.

use crate::codec;
use crate::snapshot::{Finished, SnapshotFileMeta, SnapshotFiles, SnapshotId, SnapshotWriter};
use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{SnapshotMeta, SnapshotSink, StorageError, StoreStopped};
use std::sync::Arc;

/// Snapshot files kept: the newest, and the one before it so that a leader streaming it to a
/// follower when a newer one is finished can usually complete the transfer.
pub(crate) const SNAPSHOT_FILES_KEPT: usize = 2;

/// Starts a sink on a new temporary file.
pub(crate) async fn begin(
    files: Arc<SnapshotFiles>,
) -> Result<Box<dyn SnapshotSink>, StorageError> {
    let (files, writer) = blocking(move || {
        let writer = files.begin()?;
        Ok((files, writer))
    })
    .await?;
    let sink: Box<dyn SnapshotSink> = Box::new(FileSink {
        buffer_bytes_max: files.options().snapshot_chunk_bytes_max,
        files,
        writer: Some(writer),
        buffer: Vec::new(),
    });
    Ok(sink)
}

/// The newest snapshot's meta, decoded from its file and checked against it.
pub(crate) fn latest(files: &SnapshotFiles) -> Result<Option<SnapshotMeta>, StorageError> {
    files.latest_meta().as_ref().map(decode_meta).transpose()
}

/// Reads at most `bytes_max` bytes of the snapshot `meta` from `offset`; `SnapshotNotHeld`
/// when no file holds exactly that snapshot.
pub(crate) async fn read(
    files: Arc<SnapshotFiles>,
    meta: SnapshotMeta,
    offset: u64,
    bytes_max: usize,
) -> Result<Bytes, StorageError> {
    blocking(move || {
        let reader = files.open_reader(id_of(&meta))?;
        let file = reader.meta();
        if file.data_bytes != meta.data_bytes || file.checksum != meta.checksum {
            return Err(not_held(&meta));
        }
        let data = reader.read_at(offset, bytes_max)?;
        debug_assert_eq!(
            data.len() as u64,
            meta.data_bytes.saturating_sub(offset).min(bytes_max as u64)
        );
        Ok(data)
    })
    .await
}

/// A snapshot streaming into a temporary file. Dropping it removes the file.
///
/// Invariant: `buffer.len() < buffer_bytes_max` between calls; `writer` is `None` once a write
/// failed (or its future was dropped mid-way), and every later call fails.
struct FileSink {
    files: Arc<SnapshotFiles>,
    writer: Option<SnapshotWriter>,
    /// Data not yet handed to the file: moved to a blocking thread once it holds
    /// `buffer_bytes_max`, so memory stays at one chunk whatever the callers' write sizes.
    buffer: Vec<u8>,
    /// `snapshot_chunk_bytes_max`: the largest chunk the writer takes.
    buffer_bytes_max: usize,
}

impl FileSink {
    /// Writes the buffer to the file on a blocking thread.
    async fn flush(&mut self) -> Result<(), StorageError> {
        let mut writer = self.writer.take().ok_or_else(failed_earlier)?;
        let buffer = std::mem::take(&mut self.buffer);
        // On an error or a cancelled call the writer is dropped on the blocking thread, which
        // removes the temporary file.
        let (writer, mut buffer) = blocking(move || {
            writer.write_chunk(&buffer)?;
            Ok((writer, buffer))
        })
        .await?;
        buffer.clear();
        self.writer = Some(writer);
        self.buffer = buffer;
        Ok(())
    }
}

#[async_trait]
impl SnapshotSink for FileSink {
    async fn write(&mut self, mut data: &[u8]) -> Result<(), StorageError> {
        if self.writer.is_none() {
            return Err(failed_earlier());
        }
        while !data.is_empty() {
            let room = self.buffer_bytes_max - self.buffer.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.buffer.extend_from_slice(now);
            data = rest;
            if self.buffer.len() == self.buffer_bytes_max {
                self.flush().await?;
            }
        }
        debug_assert!(self.buffer.len() < self.buffer_bytes_max);
        Ok(())
    }

    async fn finish(mut self: Box<Self>, meta: &SnapshotMeta) -> Result<(), StorageError> {
        if !self.buffer.is_empty() {
            self.flush().await?;
        }
        let writer = self.writer.take().ok_or_else(failed_earlier)?;
        let encoded = encode_meta(meta);
        let expected = meta.clone();
        let files = Arc::clone(&self.files);
        blocking(move || publish(&files, writer, &expected, encoded)).await
    }
}

/// Checks the data against `meta`, then publishes it unless a newer snapshot is held, and
/// removes the files no longer kept. On a mismatch `writer` is dropped: nothing changes.
fn publish(
    files: &SnapshotFiles,
    writer: SnapshotWriter,
    meta: &SnapshotMeta,
    encoded: Vec<u8>,
) -> Result<(), StorageError> {
    let (data_bytes, checksum) = (writer.data_bytes(), writer.data_checksum());
    if (data_bytes, checksum) != (meta.data_bytes, meta.checksum) {
        return Err(StorageError::Corrupt(format!(
            "snapshot at {} (term {}) has {data_bytes} bytes with checksum {checksum:08x}, \
             its meta says {} bytes with {:08x}; it was discarded",
            meta.last_index, meta.last_term, meta.data_bytes, meta.checksum
        )));
    }
    match writer.finish(id_of(meta), encoded.into())? {
        Finished::Published(file) => {
            debug_assert_eq!(decode_meta(&file).ok().as_ref(), Some(meta));
            files.retain_latest(SNAPSHOT_FILES_KEPT).map_err(|error| {
                StorageError::Io(std::io::Error::other(format!(
                    "snapshot at {} was published, but removing older snapshot files \
                         failed: {error}",
                    meta.last_index
                )))
            })?;
        }
        Finished::Superseded { latest } => {
            debug_assert!(latest.last_index >= meta.last_index);
        }
    }
    Ok(())
}

fn encode_meta(meta: &SnapshotMeta) -> Vec<u8> {
    // Integers and sets of integers always encode into a Vec.
    bincode::serde::encode_to_vec(meta, codec::bincode_config())
        .expect("a snapshot meta always encodes")
}

/// Decodes the meta a file holds and checks it names the file's own snapshot.
fn decode_meta(file: &SnapshotFileMeta) -> Result<SnapshotMeta, StorageError> {
    let corrupt = |why: String| {
        StorageError::Corrupt(format!(
            "snapshot at {} (term {}): {why}",
            file.id.last_index, file.id.last_term
        ))
    };
    let meta: SnapshotMeta = codec::decode_serde(&file.membership)
        .map_err(|why| corrupt(format!("its meta does not decode: {why}")))?;
    let describes_file = id_of(&meta) == file.id
        && meta.data_bytes == file.data_bytes
        && meta.checksum == file.checksum;
    if !describes_file {
        return Err(corrupt(format!(
            "its meta describes another snapshot: {meta:?}"
        )));
    }
    Ok(meta)
}

fn id_of(meta: &SnapshotMeta) -> SnapshotId {
    SnapshotId {
        last_index: meta.last_index,
        last_term: meta.last_term,
    }
}

fn not_held(meta: &SnapshotMeta) -> StorageError {
    StorageError::SnapshotNotHeld {
        last_index: meta.last_index,
        last_term: meta.last_term,
    }
}

fn failed_earlier() -> StorageError {
    // Its data was discarded.
    StorageError::Stopped(StoreStopped::SinkSpent)
}

/// Runs blocking file IO on tokio's blocking threads. A panic there is resumed here.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // Cancelled: the runtime is shutting down.
        Err(_) => Err(StorageError::Stopped(StoreStopped::WorkerEnded)),
    }
}
