//! Snapshot files beside the database, each written atomically and checked on read.
//!
//! A snapshot is written to a temporary file, synced, renamed to its final name and the
//! directory synced, so a file with a final name is always whole; a crash leaves at most a
//! temporary file, which the next [`SnapshotFiles::open`] removes. Every file carries a CRC-32
//! of its header and of its data; a mismatch is reported as `Corrupt`, never skipped.
//!
//! The calls block on file IO: from async code, run them on a blocking thread
//! (`tokio::task::spawn_blocking`). One `SnapshotFiles` owns its directory.

use crate::options::SnapshotOptions;
use bytes::Bytes;
use raft_core::{LogIndex, StorageError, Term};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const HEADER_MAGIC: &[u8; 8] = b"RAFTSNP1";
const TRAILER_MAGIC: &[u8; 4] = b"SEND";
/// Magic, last index, last term, membership length.
const HEADER_FIXED_BYTES: usize = 8 + 8 + 8 + 4;
const HEADER_CRC_BYTES: usize = 4;
/// Data length, data CRC, magic.
const TRAILER_BYTES: usize = 8 + 4 + 4;
const FILE_PREFIX: &str = "snapshot-";
const FILE_SUFFIX: &str = ".snap";
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
pub struct SnapshotMeta {
    /// The last index and term covered.
    pub id: SnapshotId,
    /// The cluster membership at `id.last_index`, opaque to this crate.
    pub membership: Bytes,
    /// Bytes of state-machine data.
    pub data_bytes: u64,
}

/// The snapshot files of one node, in one directory.
#[derive(Debug)]
pub struct SnapshotFiles {
    directory: PathBuf,
    options: SnapshotOptions,
    /// Makes temporary names unique among writers of this process.
    writer_sequence: AtomicU64,
    /// The newest complete snapshot. It only moves forward: the newest one is never deleted.
    latest: Arc<Mutex<Option<SnapshotId>>>,
}

impl SnapshotFiles {
    /// Opens (creating if missing) the snapshot directory: removes temporary files left by a
    /// crash, reads every complete snapshot's header and verifies the latest snapshot's data
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
            latest: Arc::new(Mutex::new(None)),
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
            files.verify(latest.id)?;
            *lock(&files.latest) = Some(latest.id);
        }
        Ok(files)
    }

    /// The directory the files live in.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Every complete snapshot, oldest first (by last index, then term).
    pub fn list(&self) -> Result<Vec<SnapshotMeta>, StorageError> {
        let mut snapshots = Vec::new();
        for entry in fs::read_dir(&self.directory)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = parse_file_name(&name.to_string_lossy()) else {
                continue;
            };
            let mut file = BufReader::new(File::open(entry.path())?);
            snapshots.push(self.read_meta(id, &mut file)?);
        }
        snapshots.sort_by_key(|meta| meta.id);
        Ok(snapshots)
    }

    /// The newest complete snapshot, if any.
    pub fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(self.list()?.pop())
    }

    /// The id of the newest complete snapshot, if any, without touching the disk.
    pub fn latest_id(&self) -> Option<SnapshotId> {
        *lock(&self.latest)
    }

    /// Starts writing a snapshot. Nothing is visible until [`SnapshotWriter::finish`].
    pub fn begin(&self, id: SnapshotId, membership: Bytes) -> Result<SnapshotWriter, StorageError> {
        if membership.len() > self.options.snapshot_membership_bytes_max {
            return Err(StorageError::InvalidArgument(format!(
                "snapshot membership has {} bytes (snapshot_membership_bytes_max = {})",
                membership.len(),
                self.options.snapshot_membership_bytes_max
            )));
        }
        let final_path = self.directory.join(file_name(id));
        let sequence = self.writer_sequence.fetch_add(1, Ordering::Relaxed);
        let temporary_path = self.directory.join(format!(
            "{}.{}-{sequence}{TEMPORARY_SUFFIX}",
            file_name(id),
            std::process::id()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary_path)?;
        let mut writer = SnapshotWriter {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            temporary_path,
            final_path,
            directory: self.directory.clone(),
            meta: SnapshotMeta {
                id,
                membership,
                data_bytes: 0,
            },
            data_crc: crc32fast::Hasher::new(),
            chunk_bytes_max: self.options.snapshot_chunk_bytes_max,
            latest: Arc::clone(&self.latest),
        };
        let header = encode_header(&writer.meta);
        writer.write_raw(&header)?;
        Ok(writer)
    }

    /// Opens a snapshot for reading in chunks of at most `snapshot_chunk_bytes_max`.
    pub fn open_reader(&self, id: SnapshotId) -> Result<SnapshotReader, StorageError> {
        let path = self.directory.join(file_name(id));
        let mut file = BufReader::new(File::open(&path).map_err(|error| {
            if error.kind() == io::ErrorKind::NotFound {
                StorageError::InvalidArgument(format!(
                    "no snapshot {id:?} in {}",
                    self.directory.display()
                ))
            } else {
                StorageError::Io(error)
            }
        })?);
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
    pub fn verify(&self, id: SnapshotId) -> Result<SnapshotMeta, StorageError> {
        let mut reader = self.open_reader(id)?;
        while reader.next_chunk()?.is_some() {}
        Ok(reader.meta().clone())
    }

    /// Deletes one snapshot (and syncs the directory). Deleting a missing one is an error, and
    /// so is deleting the newest one: a log purged up to it would have nothing covering the
    /// purged entries (write a newer snapshot first).
    pub fn delete(&self, id: SnapshotId) -> Result<(), StorageError> {
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
    pub fn retain_latest(&self, keep: usize) -> Result<usize, StorageError> {
        if keep == 0 {
            return Err(StorageError::InvalidArgument(
                "retain_latest keeps at least the newest snapshot".into(),
            ));
        }
        let snapshots = self.list()?;
        let excess = snapshots.len().saturating_sub(keep);
        for meta in &snapshots[..excess] {
            fs::remove_file(self.directory.join(file_name(meta.id)))?;
        }
        if excess > 0 {
            sync_directory(&self.directory)?;
        }
        Ok(excess)
    }

    /// Reads and checks the header and the trailer's data length against the file length, and
    /// leaves `file` at the start of the data.
    fn read_meta(
        &self,
        id: SnapshotId,
        file: &mut BufReader<File>,
    ) -> Result<SnapshotMeta, StorageError> {
        let (mut meta, header_bytes) = self.read_header(id, file)?;
        let file_bytes = file.get_ref().metadata()?.len();
        if file_bytes < header_bytes + TRAILER_BYTES as u64 {
            return Err(corrupt(id, "the file ends before its trailer".into()));
        }
        file.seek(SeekFrom::End(-(TRAILER_BYTES as i64)))?;
        let mut trailer = [0u8; TRAILER_BYTES];
        read_exact(id, file, &mut trailer, "trailer")?;
        if &trailer[12..] != TRAILER_MAGIC {
            return Err(corrupt(id, "the trailer magic is missing".into()));
        }
        meta.data_bytes = u64::from_be_bytes(trailer[..8].try_into().expect("8 bytes"));
        let expected_bytes = header_bytes + meta.data_bytes + TRAILER_BYTES as u64;
        if file_bytes != expected_bytes {
            return Err(corrupt(
                id,
                format!(
                    "the file has {file_bytes} bytes, its header and trailer say {expected_bytes}"
                ),
            ));
        }
        file.seek(SeekFrom::Start(header_bytes))?;
        Ok(meta)
    }

    /// Reads and checks the header; returns it and its length in bytes.
    fn read_header(
        &self,
        id: SnapshotId,
        file: &mut impl Read,
    ) -> Result<(SnapshotMeta, u64), StorageError> {
        let mut fixed = [0u8; HEADER_FIXED_BYTES];
        read_exact(id, file, &mut fixed, "header")?;
        if &fixed[..8] != HEADER_MAGIC {
            return Err(corrupt(
                id,
                "the file does not start with the snapshot magic".into(),
            ));
        }
        let word = |at: usize| u64::from_be_bytes(fixed[at..at + 8].try_into().expect("8 bytes"));
        let stored_id = SnapshotId {
            last_index: LogIndex(word(8)),
            last_term: Term(word(16)),
        };
        if stored_id != id {
            return Err(corrupt(id, format!("the header names {stored_id:?}")));
        }
        let membership_bytes =
            u32::from_be_bytes(fixed[24..28].try_into().expect("4 bytes")) as usize;
        if membership_bytes > self.options.snapshot_membership_bytes_max {
            return Err(corrupt(
                id,
                format!(
                    "membership of {membership_bytes} bytes (snapshot_membership_bytes_max = {})",
                    self.options.snapshot_membership_bytes_max
                ),
            ));
        }
        let mut rest = vec![0u8; membership_bytes + HEADER_CRC_BYTES];
        read_exact(id, file, &mut rest, "header")?;
        let (membership, crc) = rest.split_at(membership_bytes);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&fixed);
        hasher.update(membership);
        if hasher.finalize().to_be_bytes() != crc {
            return Err(corrupt(id, "header checksum mismatch".into()));
        }
        let meta = SnapshotMeta {
            id,
            membership: Bytes::copy_from_slice(membership),
            data_bytes: 0,
        };
        // The data length is in the trailer: `read_meta` fills it in.
        Ok((
            meta,
            (HEADER_FIXED_BYTES + membership_bytes + HEADER_CRC_BYTES) as u64,
        ))
    }
}

/// Writes one snapshot. Dropping it without [`finish`](SnapshotWriter::finish) removes the
/// temporary file: the snapshot never existed.
#[derive(Debug)]
pub struct SnapshotWriter {
    /// `None` after an IO error or after finishing.
    file: Option<BufWriter<File>>,
    temporary_path: PathBuf,
    final_path: PathBuf,
    directory: PathBuf,
    meta: SnapshotMeta,
    data_crc: crc32fast::Hasher,
    chunk_bytes_max: usize,
    latest: Arc<Mutex<Option<SnapshotId>>>,
}

impl SnapshotWriter {
    /// What is being written (the data length so far).
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
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
        self.meta.data_bytes += chunk.len() as u64;
        Ok(())
    }

    /// Writes the trailer, syncs the file, renames it to its final name and syncs the
    /// directory. On `Ok` the snapshot is durable and whole; on an error it does not exist.
    pub fn finish(mut self) -> Result<SnapshotMeta, StorageError> {
        let mut trailer = [0u8; TRAILER_BYTES];
        trailer[..8].copy_from_slice(&self.meta.data_bytes.to_be_bytes());
        trailer[8..12].copy_from_slice(&self.data_crc.clone().finalize().to_be_bytes());
        trailer[12..].copy_from_slice(TRAILER_MAGIC);
        self.write_raw(&trailer)?;
        let result = self.sync_and_rename();
        if result.is_err() {
            self.abandon();
        }
        result?;
        let mut latest = lock(&self.latest);
        *latest = (*latest).max(Some(self.meta.id));
        Ok(self.meta.clone())
    }

    fn sync_and_rename(&mut self) -> Result<(), StorageError> {
        let writer = self.file.take().ok_or_else(stopped)?;
        let file = writer
            .into_inner()
            .map_err(|error| StorageError::Io(error.into_error()))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.temporary_path, &self.final_path)?;
        sync_directory(&self.directory)?;
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

fn lock(latest: &Mutex<Option<SnapshotId>>) -> std::sync::MutexGuard<'_, Option<SnapshotId>> {
    latest
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn stopped() -> StorageError {
    StorageError::Stopped("this snapshot writer failed or finished earlier".into())
}

/// Reads one snapshot's data in chunks and checks its checksum at the end.
#[derive(Debug)]
pub struct SnapshotReader {
    file: BufReader<File>,
    meta: SnapshotMeta,
    remaining_bytes: u64,
    data_crc: crc32fast::Hasher,
    chunk_bytes_max: usize,
    finished: bool,
}

impl SnapshotReader {
    /// What the snapshot holds besides its data.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The next chunk of data (at most `snapshot_chunk_bytes_max`), or `None` at the end,
    /// once the data checksum matched. A mismatch or a short file is `Corrupt`.
    pub fn next_chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
        if self.finished {
            return Ok(None);
        }
        if self.remaining_bytes == 0 {
            let mut trailer = [0u8; TRAILER_BYTES];
            read_exact(self.meta.id, &mut self.file, &mut trailer, "trailer")?;
            if trailer[8..12] != self.data_crc.clone().finalize().to_be_bytes() {
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
}

fn encode_header(meta: &SnapshotMeta) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_FIXED_BYTES + meta.membership.len() + 4);
    header.extend_from_slice(HEADER_MAGIC);
    header.extend_from_slice(&meta.id.last_index.0.to_be_bytes());
    header.extend_from_slice(&meta.id.last_term.0.to_be_bytes());
    header.extend_from_slice(&(meta.membership.len() as u32).to_be_bytes());
    header.extend_from_slice(&meta.membership);
    let crc = crc32fast::hash(&header);
    header.extend_from_slice(&crc.to_be_bytes());
    header
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
