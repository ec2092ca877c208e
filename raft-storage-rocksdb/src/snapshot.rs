//! Snapshot files beside the database, each written atomically and checked on read.
//!
//! A writer streams data into a temporary file. Which snapshot it is (last index and term) and
//! its membership are known only once the data is complete (a state machine or a leader says
//! so at the end), so they are given to [`SnapshotWriter::finish`], which appends them in a
//! footer, syncs the file, renames it to its final name and syncs the directory. A file with a
//! final name is therefore always whole; a crash leaves at most a temporary file, which the
//! next [`SnapshotFiles::open`] removes. Every file carries a CRC-32 of its footer and of its
//! data; a mismatch is reported as `Corrupt`, never skipped.
//!
//! The newest complete snapshot only moves forward: `finish` publishes a snapshot only when its
//! last index is above the newest one's, and otherwise discards it (a file is never replaced),
//! so the file a reader opened is never rewritten under it.
//!
//! The calls block on file IO: from async code, run them on a blocking thread
//! (`tokio::task::spawn_blocking`). One `SnapshotFiles` owns its directory.

use crate::options::SnapshotOptions;
use bytes::Bytes;
use raft_core::{LogIndex, StorageError, StoreStopped, Term};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The first bytes of every snapshot file of this format (4: the footer's membership records
/// each member's incarnation and the members rejoining after a restart, and the
/// `raft_core::SnapshotMeta` the store keeps there carries the state machine's data format).
const HEADER_MAGIC: &[u8; 8] = b"RAFTSNP4";
/// The format number that [`HEADER_MAGIC`] ends with, for messages.
const FORMAT_VERSION: u8 = 4;
const _: () = assert!(HEADER_MAGIC[7] == b'0' + FORMAT_VERSION);
/// The first bytes of files of earlier formats, no longer read: 1 (header before the data),
/// 2 (a membership without member records) and 3 (a membership without incarnations).
const FORMAT_1_MAGIC: &[u8; 8] = b"RAFTSNP1";
const FORMAT_2_MAGIC: &[u8; 8] = b"RAFTSNP2";
const FORMAT_3_MAGIC: &[u8; 8] = b"RAFTSNP3";
const HEADER_BYTES: u64 = HEADER_MAGIC.len() as u64;
const FOOTER_MAGIC: &[u8; 4] = b"SEND";
/// Last index, last term, data length, data CRC, membership length, footer CRC, magic.
const FOOTER_FIXED_BYTES: usize = 8 + 8 + 8 + 4 + 4 + 4 + 4;
/// Where the footer CRC sits in the fixed part; it covers the membership and everything before.
const FOOTER_CRC_AT: usize = 32;
const FILE_PREFIX: &str = "snapshot-";
const FILE_SUFFIX: &str = ".snap";
/// Temporary files are named `pending-<pid>-<sequence>.tmp`: which snapshot they hold is not
/// known until they are finished.
const TEMPORARY_PREFIX: &str = "pending-";
const TEMPORARY_SUFFIX: &str = ".tmp";
/// The buffer between a writer and its file.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Which snapshot: the last log index and term it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId {
    /// The last log index the snapshot covers.
    pub last_index: LogIndex,
    /// The term of that entry.
    pub last_term: Term,
}

/// What a complete snapshot file holds besides its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFileMeta {
    /// The last index and term covered.
    pub id: SnapshotId,
    /// The cluster membership at `id.last_index`, opaque to this module. Files written through
    /// [`LogStore::begin_snapshot`](raft_core::LogStore::begin_snapshot) hold the whole
    /// `raft_core::SnapshotMeta` here, encoded with bincode.
    pub membership: Bytes,
    /// Bytes of state-machine data.
    pub data_bytes: u64,
    /// CRC-32 (IEEE) of the data.
    pub checksum: u32,
}

/// What [`SnapshotWriter::finish`] did with a snapshot whose data was complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    /// The snapshot is durable, whole, and now the newest one.
    Published(SnapshotFileMeta),
    /// A snapshot at the same or a higher index was already complete: this one was discarded
    /// (the newest snapshot only moves forward, and a file is never replaced).
    Superseded {
        /// The newest snapshot, which stays.
        latest: SnapshotId,
    },
}

/// The snapshot files of one node, in one directory.
#[derive(Debug)]
pub struct SnapshotFiles {
    directory: PathBuf,
    options: SnapshotOptions,
    /// Makes temporary names unique among writers of this process.
    writer_sequence: AtomicU64,
    published: Arc<Published>,
}

/// The newest snapshot, shared by the files and their writers.
#[derive(Debug, Default)]
struct Published {
    /// Held while a snapshot is published or files are deleted, so that the comparison with
    /// the newest snapshot, the rename and the deletions each happen as one step.
    publishing: Mutex<()>,
    /// The newest complete snapshot. Changed only under `publishing`; it only moves forward,
    /// and its file is never deleted.
    latest: Mutex<Option<SnapshotFileMeta>>,
}

impl Published {
    fn latest(&self) -> Option<SnapshotFileMeta> {
        lock(&self.latest).clone()
    }

    fn latest_id(&self) -> Option<SnapshotId> {
        lock(&self.latest).as_ref().map(|meta| meta.id)
    }
}

impl SnapshotFiles {
    /// Opens (creating if missing) the snapshot directory: removes temporary files left by a
    /// crash, reads every complete snapshot's footer and verifies the latest snapshot's data
    /// checksum in full. A snapshot that fails a check is reported as `Corrupt`.
    pub fn open(
        directory: impl AsRef<Path>,
        options: SnapshotOptions,
    ) -> Result<SnapshotFiles, StorageError> {
        options.validate()?;
        let directory = directory.as_ref().to_path_buf();
        fs::create_dir_all(&directory)?;
        let files = SnapshotFiles {
            directory,
            options,
            writer_sequence: AtomicU64::new(0),
            published: Arc::default(),
        };
        let mut removed_any = false;
        for entry in fs::read_dir(&files.directory)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(TEMPORARY_SUFFIX) {
                // A temporary file was never finished, hence never reported durable.
                fs::remove_file(entry.path())?;
                removed_any = true;
            }
        }
        if removed_any {
            sync_directory(&files.directory)?;
        }
        if let Some(latest) = files.latest()? {
            let verified = files.verify(latest.id)?;
            *lock(&files.published.latest) = Some(verified);
        }
        Ok(files)
    }

    /// The directory the files live in.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The limits the files were opened with.
    pub fn options(&self) -> &SnapshotOptions {
        &self.options
    }

    /// Every complete snapshot, oldest first (by last index, then term).
    pub fn list(&self) -> Result<Vec<SnapshotFileMeta>, StorageError> {
        let mut snapshots = Vec::new();
        for entry in fs::read_dir(&self.directory)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = parse_file_name(&name.to_string_lossy()) else {
                continue;
            };
            let file = match File::open(entry.path()) {
                Ok(file) => file,
                // Deleted since the directory was read (by `retain_latest`, say).
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error.into()),
            };
            snapshots.push(self.read_meta(id, &mut BufReader::new(file))?);
        }
        snapshots.sort_by_key(|meta| meta.id);
        Ok(snapshots)
    }

    /// The newest complete snapshot on disk, if any.
    pub fn latest(&self) -> Result<Option<SnapshotFileMeta>, StorageError> {
        Ok(self.list()?.pop())
    }

    /// The newest complete snapshot, if any, without touching the disk.
    pub fn latest_meta(&self) -> Option<SnapshotFileMeta> {
        self.published.latest()
    }

    /// The id of the newest complete snapshot, if any, without touching the disk.
    pub fn latest_id(&self) -> Option<SnapshotId> {
        self.published.latest_id()
    }

    /// Starts writing a snapshot into a new temporary file. Nothing is visible until
    /// [`SnapshotWriter::finish`]; several writers may be open at once.
    pub fn begin(&self) -> Result<SnapshotWriter, StorageError> {
        let sequence = self.writer_sequence.fetch_add(1, Ordering::Relaxed);
        let temporary_path = self.directory.join(format!(
            "{TEMPORARY_PREFIX}{}-{sequence}{TEMPORARY_SUFFIX}",
            std::process::id()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary_path)?;
        let mut writer = SnapshotWriter {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            temporary_path,
            directory: self.directory.clone(),
            data_bytes: 0,
            data_crc: crc32fast::Hasher::new(),
            chunk_bytes_max: self.options.snapshot_chunk_bytes_max,
            membership_bytes_max: self.options.snapshot_membership_bytes_max,
            published: Arc::clone(&self.published),
        };
        writer.write_raw(HEADER_MAGIC)?;
        Ok(writer)
    }

    /// Opens a snapshot for reading. A snapshot that is not (or no longer) held is
    /// [`StorageError::SnapshotNotHeld`].
    pub fn open_reader(&self, id: SnapshotId) -> Result<SnapshotReader, StorageError> {
        let path = self.directory.join(file_name(id));
        let file = File::open(&path).map_err(|error| {
            if error.kind() == io::ErrorKind::NotFound {
                StorageError::SnapshotNotHeld {
                    last_index: id.last_index,
                    last_term: id.last_term,
                }
            } else {
                StorageError::Io(error)
            }
        })?;
        let mut file = BufReader::new(file);
        let meta = self.read_meta(id, &mut file)?;
        Ok(SnapshotReader {
            file,
            remaining_bytes: meta.data_bytes,
            meta,
            data_crc: crc32fast::Hasher::new(),
            chunk_bytes_max: self.options.snapshot_chunk_bytes_max,
            finished: false,
        })
    }

    /// Opens the newest complete snapshot for reading, if any.
    pub fn open_latest(&self) -> Result<Option<SnapshotReader>, StorageError> {
        match self.latest()? {
            Some(meta) => self.open_reader(meta.id).map(Some),
            None => Ok(None),
        }
    }

    /// Reads a snapshot to its end and checks its data checksum.
    pub fn verify(&self, id: SnapshotId) -> Result<SnapshotFileMeta, StorageError> {
        let mut reader = self.open_reader(id)?;
        while reader.next_chunk()?.is_some() {}
        Ok(reader.meta().clone())
    }

    /// Deletes one snapshot (and syncs the directory). Deleting a missing one is an error, and
    /// so is deleting the newest one: a log purged up to it would have nothing covering the
    /// purged entries (write a newer snapshot first).
    pub fn delete(&self, id: SnapshotId) -> Result<(), StorageError> {
        let _publishing = lock(&self.published.publishing);
        if self.latest_id() == Some(id) {
            return Err(StorageError::InvalidArgument(format!(
                "snapshot {id:?} is the newest one and is kept; finish a newer one first"
            )));
        }
        fs::remove_file(self.directory.join(file_name(id)))?;
        sync_directory(&self.directory)?;
        Ok(())
    }

    /// Deletes every snapshot but the newest `keep` (at least 1); returns how many it deleted.
    /// A reader that already opened a deleted file reads on to its end.
    pub fn retain_latest(&self, keep: usize) -> Result<usize, StorageError> {
        if keep == 0 {
            return Err(StorageError::InvalidArgument(
                "retain_latest keeps at least the newest snapshot".into(),
            ));
        }
        let _publishing = lock(&self.published.publishing);
        let mut snapshots = self.list()?;
        // The newest by id is the published one unless a file was put here behind our back;
        // either way the published one stays.
        let latest = self.latest_id();
        snapshots.retain(|meta| Some(meta.id) != latest);
        let excess = (snapshots.len() + usize::from(latest.is_some())).saturating_sub(keep);
        for meta in &snapshots[..excess] {
            fs::remove_file(self.directory.join(file_name(meta.id)))?;
        }
        if excess > 0 {
            sync_directory(&self.directory)?;
        }
        Ok(excess)
    }

    /// Reads and checks the header and the footer against the file length, and leaves `file`
    /// at the start of the data.
    fn read_meta(
        &self,
        id: SnapshotId,
        file: &mut BufReader<File>,
    ) -> Result<SnapshotFileMeta, StorageError> {
        let file_bytes = file.get_ref().metadata()?.len();
        let mut header = [0u8; HEADER_BYTES as usize];
        read_exact(id, file, &mut header, "header")?;
        for (old, version) in [
            (FORMAT_1_MAGIC, 1),
            (FORMAT_2_MAGIC, 2),
            (FORMAT_3_MAGIC, 3),
        ] {
            if &header == old {
                return Err(corrupt(
                    id,
                    format!(
                        "the file has the earlier snapshot format {version}; this build reads \
                         format {FORMAT_VERSION}"
                    ),
                ));
            }
        }
        if &header != HEADER_MAGIC {
            return Err(corrupt(
                id,
                "the file does not start with the snapshot magic".into(),
            ));
        }
        if file_bytes < HEADER_BYTES + FOOTER_FIXED_BYTES as u64 {
            return Err(corrupt(id, "the file ends before its footer".into()));
        }
        file.seek(SeekFrom::End(-(FOOTER_FIXED_BYTES as i64)))?;
        let mut fixed = [0u8; FOOTER_FIXED_BYTES];
        read_exact(id, file, &mut fixed, "footer")?;
        let footer = Footer::decode(&fixed);
        if &fixed[FOOTER_FIXED_BYTES - 4..] != FOOTER_MAGIC {
            return Err(corrupt(id, "the footer magic is missing".into()));
        }
        if footer.id != id {
            return Err(corrupt(id, format!("the footer names {:?}", footer.id)));
        }
        let membership_bytes = footer.membership_bytes as usize;
        if membership_bytes > self.options.snapshot_membership_bytes_max {
            return Err(corrupt(
                id,
                format!(
                    "membership of {membership_bytes} bytes (snapshot_membership_bytes_max = {})",
                    self.options.snapshot_membership_bytes_max
                ),
            ));
        }
        let expected_bytes = footer
            .data_bytes
            .checked_add(HEADER_BYTES + membership_bytes as u64 + FOOTER_FIXED_BYTES as u64);
        if expected_bytes != Some(file_bytes) {
            return Err(corrupt(
                id,
                format!(
                    "the file has {file_bytes} bytes, its footer says {} of data and {} of \
                     membership",
                    footer.data_bytes, membership_bytes
                ),
            ));
        }
        file.seek(SeekFrom::Start(HEADER_BYTES + footer.data_bytes))?;
        let mut membership = vec![0u8; membership_bytes];
        read_exact(id, file, &mut membership, "footer")?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&membership);
        hasher.update(&fixed[..FOOTER_CRC_AT]);
        if hasher.finalize() != footer.crc {
            return Err(corrupt(id, "footer checksum mismatch".into()));
        }
        file.seek(SeekFrom::Start(HEADER_BYTES))?;
        Ok(SnapshotFileMeta {
            id,
            membership: membership.into(),
            data_bytes: footer.data_bytes,
            checksum: footer.data_crc,
        })
    }
}

/// The fixed part of a footer.
struct Footer {
    id: SnapshotId,
    data_bytes: u64,
    data_crc: u32,
    membership_bytes: u32,
    /// CRC-32 of the membership bytes and of the fixed part before this field.
    crc: u32,
}

impl Footer {
    /// The whole footer of `meta`: membership bytes, then the fixed part.
    fn encode(meta: &SnapshotFileMeta) -> Vec<u8> {
        let mut fixed = [0u8; FOOTER_FIXED_BYTES];
        fixed[..8].copy_from_slice(&meta.id.last_index.0.to_be_bytes());
        fixed[8..16].copy_from_slice(&meta.id.last_term.0.to_be_bytes());
        fixed[16..24].copy_from_slice(&meta.data_bytes.to_be_bytes());
        fixed[24..28].copy_from_slice(&meta.checksum.to_be_bytes());
        let membership_bytes = u32::try_from(meta.membership.len()).expect("checked by finish");
        fixed[28..32].copy_from_slice(&membership_bytes.to_be_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&meta.membership);
        hasher.update(&fixed[..FOOTER_CRC_AT]);
        fixed[FOOTER_CRC_AT..FOOTER_CRC_AT + 4].copy_from_slice(&hasher.finalize().to_be_bytes());
        fixed[FOOTER_CRC_AT + 4..].copy_from_slice(FOOTER_MAGIC);
        let mut footer = Vec::with_capacity(meta.membership.len() + FOOTER_FIXED_BYTES);
        footer.extend_from_slice(&meta.membership);
        footer.extend_from_slice(&fixed);
        footer
    }

    fn decode(fixed: &[u8; FOOTER_FIXED_BYTES]) -> Footer {
        let word = |at: usize| u64::from_be_bytes(fixed[at..at + 8].try_into().expect("8 bytes"));
        let half = |at: usize| u32::from_be_bytes(fixed[at..at + 4].try_into().expect("4 bytes"));
        Footer {
            id: SnapshotId {
                last_index: LogIndex(word(0)),
                last_term: Term(word(8)),
            },
            data_bytes: word(16),
            data_crc: half(24),
            membership_bytes: half(28),
            crc: half(FOOTER_CRC_AT),
        }
    }
}

/// Writes one snapshot. Dropping it without [`finish`](SnapshotWriter::finish) removes the
/// temporary file: the snapshot never existed.
#[derive(Debug)]
pub struct SnapshotWriter {
    /// `None` after an IO error or after finishing.
    file: Option<BufWriter<File>>,
    temporary_path: PathBuf,
    directory: PathBuf,
    data_bytes: u64,
    data_crc: crc32fast::Hasher,
    chunk_bytes_max: usize,
    membership_bytes_max: usize,
    published: Arc<Published>,
}

impl SnapshotWriter {
    /// Bytes of data written so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// CRC-32 (IEEE) of the data written so far.
    pub fn data_checksum(&self) -> u32 {
        self.data_crc.clone().finalize()
    }

    /// Appends a chunk of state-machine data. A chunk above `snapshot_chunk_bytes_max` is
    /// refused and changes nothing; an IO error ends the writer (later calls fail).
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        if chunk.len() > self.chunk_bytes_max {
            return Err(StorageError::InvalidArgument(format!(
                "snapshot chunk of {} bytes (snapshot_chunk_bytes_max = {})",
                chunk.len(),
                self.chunk_bytes_max
            )));
        }
        self.write_raw(chunk)?;
        self.data_crc.update(chunk);
        self.data_bytes += chunk.len() as u64;
        Ok(())
    }

    /// Names the snapshot `id` with `membership` and publishes it when its last index is above
    /// the newest snapshot's: writes the footer, syncs the file, renames it to its final name
    /// and syncs the directory. Otherwise the data is discarded and nothing changes
    /// ([`Finished::Superseded`]). On `Published` the snapshot is durable, whole and the newest;
    /// on an error it does not exist. A membership over `snapshot_membership_bytes_max` is
    /// `InvalidArgument`.
    pub fn finish(mut self, id: SnapshotId, membership: Bytes) -> Result<Finished, StorageError> {
        if membership.len() > self.membership_bytes_max {
            self.abandon();
            return Err(StorageError::InvalidArgument(format!(
                "snapshot membership has {} bytes (snapshot_membership_bytes_max = {})",
                membership.len(),
                self.membership_bytes_max
            )));
        }
        // An older snapshot is not even synced; the check is repeated under the lock.
        if let Some(latest) = self.superseded_by(id) {
            self.abandon();
            return Ok(Finished::Superseded { latest });
        }
        let meta = SnapshotFileMeta {
            id,
            membership,
            data_bytes: self.data_bytes,
            checksum: self.data_checksum(),
        };
        self.write_raw(&Footer::encode(&meta))?;
        // The slow sync happens outside the lock: concurrent writers sync in parallel.
        if let Err(error) = self.sync() {
            self.abandon();
            return Err(error);
        }
        let published = Arc::clone(&self.published);
        let _publishing = lock(&published.publishing);
        if let Some(latest) = self.superseded_by(id) {
            self.abandon();
            return Ok(Finished::Superseded { latest });
        }
        let final_path = self.directory.join(file_name(id));
        if let Err(error) = fs::rename(&self.temporary_path, &final_path) {
            self.abandon();
            return Err(error.into());
        }
        // From here the file has its final name: a failed directory sync leaves a whole
        // snapshot that a crash may or may not keep, which is what an error means.
        sync_directory(&self.directory)?;
        *lock(&published.latest) = Some(meta.clone());
        Ok(Finished::Published(meta))
    }

    /// The newest snapshot when it is at `id`'s index or above.
    fn superseded_by(&self, id: SnapshotId) -> Option<SnapshotId> {
        self.published
            .latest_id()
            .filter(|latest| latest.last_index >= id.last_index)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        let writer = self.file.take().ok_or_else(stopped)?;
        let file = writer
            .into_inner()
            .map_err(|error| StorageError::Io(error.into_error()))?;
        file.sync_all()?;
        Ok(())
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        let file = self.file.as_mut().ok_or_else(stopped)?;
        if let Err(error) = file.write_all(bytes) {
            self.abandon();
            return Err(StorageError::Io(error));
        }
        Ok(())
    }

    /// Drops the file and removes the temporary (best effort: a leftover is removed on open).
    fn abandon(&mut self) {
        self.file = None;
        let _ = fs::remove_file(&self.temporary_path);
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            self.abandon();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single assignment: a poisoned lock still guards
    // consistent data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn stopped() -> StorageError {
    StorageError::Stopped(StoreStopped::SinkSpent)
}

/// Reads one snapshot's data: in chunks from the start, checking the checksum at the end, or
/// one range anywhere ([`read_at`](SnapshotReader::read_at)).
#[derive(Debug)]
pub struct SnapshotReader {
    file: BufReader<File>,
    meta: SnapshotFileMeta,
    remaining_bytes: u64,
    data_crc: crc32fast::Hasher,
    chunk_bytes_max: usize,
    finished: bool,
}

impl SnapshotReader {
    /// What the snapshot holds besides its data.
    pub fn meta(&self) -> &SnapshotFileMeta {
        &self.meta
    }

    /// The next chunk of data (at most `snapshot_chunk_bytes_max`), or `None` at the end,
    /// once the data checksum matched. A mismatch or a short file is `Corrupt`.
    pub fn next_chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
        if self.finished {
            return Ok(None);
        }
        if self.remaining_bytes == 0 {
            if self.data_crc.clone().finalize() != self.meta.checksum {
                return Err(corrupt(self.meta.id, "data checksum mismatch".into()));
            }
            self.finished = true;
            return Ok(None);
        }
        let chunk_bytes = self.remaining_bytes.min(self.chunk_bytes_max as u64) as usize;
        let mut chunk = vec![0u8; chunk_bytes];
        read_exact(self.meta.id, &mut self.file, &mut chunk, "data")?;
        self.data_crc.update(&chunk);
        self.remaining_bytes -= chunk_bytes as u64;
        Ok(Some(chunk.into()))
    }

    /// Reads `min(bytes_max, data_bytes - offset)` bytes of data from `offset` (none at or past
    /// the end). Random access does not check the data checksum: the receiver of the data
    /// does, and [`SnapshotFiles::open`] checked the newest snapshot whole.
    pub fn read_at(mut self, offset: u64, bytes_max: usize) -> Result<Bytes, StorageError> {
        let available = self.meta.data_bytes.saturating_sub(offset);
        let length = available.min(bytes_max as u64) as usize;
        if length == 0 {
            return Ok(Bytes::new());
        }
        self.file.seek(SeekFrom::Start(HEADER_BYTES + offset))?;
        let mut data = vec![0u8; length];
        read_exact(self.meta.id, &mut self.file, &mut data, "data")?;
        Ok(data.into())
    }
}

fn file_name(id: SnapshotId) -> String {
    format!(
        "{FILE_PREFIX}{:020}-{:020}{FILE_SUFFIX}",
        id.last_index.0, id.last_term.0
    )
}

fn parse_file_name(name: &str) -> Option<SnapshotId> {
    let digits = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    let (index, term) = digits.split_once('-')?;
    let id = SnapshotId {
        last_index: LogIndex(index.parse().ok()?),
        last_term: Term(term.parse().ok()?),
    };
    (file_name(id) == name).then_some(id)
}

fn read_exact(
    id: SnapshotId,
    file: &mut impl Read,
    buffer: &mut [u8],
    part: &str,
) -> Result<(), StorageError> {
    file.read_exact(buffer).map_err(|error| {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            corrupt(id, format!("the file ends inside its {part}"))
        } else {
            StorageError::Io(error)
        }
    })
}

fn corrupt(id: SnapshotId, why: String) -> StorageError {
    StorageError::Corrupt(format!(
        "snapshot at {} (term {}): {why}",
        id.last_index, id.last_term
    ))
}

/// Syncs a directory so that a rename or removal in it is durable.
pub(crate) fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}
