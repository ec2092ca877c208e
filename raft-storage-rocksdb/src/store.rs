//! `RocksLogStore`: opening and recovery, the call path, and the group-commit writer.

use crate::codec::{self, BOUNDS_KEY, FORMAT_KEY, FORMAT_VERSION, HARD_STATE_KEY, LOG_CF, META_CF};
use crate::options::RocksLogStoreOptions;
use crate::snapshot::{sync_directory, SnapshotFileMeta, SnapshotFiles};
use crate::snapshot_store;
use bytes::Bytes;
use raft_core::storage::validate::{check_range, check_write};
use raft_core::{
    Entry, HardState, LogBounds, LogIndex, LogStore, LogWrite, SnapshotMeta, SnapshotSink,
    StorageError, StoreStopped,
};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode, Direction,
    IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};
use std::collections::VecDeque;
use std::fs;
use std::future::{ready, Future};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::{self, JoinHandle};
use tokio::sync::oneshot;

/// The future every [`LogStore`] method returns (the shape `async_trait` expects).
type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send + 'a>>;

/// Where the database lives inside the store's directory.
const DATABASE_DIRECTORY: &str = "db";
/// Where the snapshot files live inside the store's directory.
const SNAPSHOT_DIRECTORY: &str = "snapshots";
/// Fixed bytes counted per queued call on top of its encoded entries.
const REQUEST_OVERHEAD_BYTES: usize = 64;
/// Entries a read reserves room for up front; longer reads grow as they go.
const READ_RESERVE_ENTRIES_MAX: usize = 4096;

/// A durable [`LogStore`] on RocksDB. See the crate documentation for the layout and the
/// guarantees.
///
/// Dropping the store finishes every queued write, stops the writer thread and closes the
/// database (it blocks for at most one synced write).
pub struct RocksLogStore {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    /// Shared with the snapshot sinks, which may outlive a call.
    snapshots: Arc<SnapshotFiles>,
    directory: PathBuf,
}

/// Counters of the group-commit writer since the store opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Write batches written to the database (one sync each when synced).
    pub batches: u64,
    /// Calls those batches carried.
    pub requests: u64,
    /// Entries those batches carried.
    pub entries: u64,
}

/// What the caller threads and the writer thread share.
struct Shared {
    db: DB,
    options: RocksLogStoreOptions,
    queue: Mutex<Queue>,
    /// Signalled when a call is queued or the store closes.
    queue_changed: Condvar,
    /// What the database holds. The writer holds it exclusively while it writes a batch that
    /// deletes entries, so a reader holding it shared never sees a key vanish inside `bounds`.
    durable: RwLock<LogState>,
    stats: [AtomicU64; 3],
}

/// Bounds and hard state together.
///
/// Invariant: `hard_state.commit <= bounds.last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LogState {
    bounds: LogBounds,
    hard_state: HardState,
}

/// Calls accepted and not yet written.
struct Queue {
    /// The state once every queued request is written; new calls are checked against it.
    pending: LogState,
    requests: VecDeque<Request>,
    /// Sum of `requests[..].bytes`. Invariant: `<= queue_bytes_max`.
    queued_bytes: usize,
    /// Why the store stopped accepting writes (fail-stop), if it did.
    stopped: Option<StoreStopped>,
    /// Set when the store is dropped: the writer finishes the queue and exits.
    closing: bool,
}

/// One accepted call, already checked and encoded; the writer only concatenates requests.
struct Request {
    /// Log keys to remove (a truncated suffix or a purged prefix).
    delete: Option<Range<LogIndex>>,
    puts: Vec<([u8; 8], Vec<u8>)>,
    hard_state: Option<HardState>,
    /// The state after this request.
    after: LogState,
    /// False only for purges (and calls that change nothing).
    sync: bool,
    bytes: usize,
    done: oneshot::Sender<Result<(), StorageError>>,
}

/// A call to queue.
enum Submission<'a> {
    Write(&'a LogWrite),
    Append(&'a [Entry]),
    /// Purge up to an index, which must not pass the newest snapshot (if there is one).
    Purge(LogIndex, Option<LogIndex>),
}

impl RocksLogStore {
    /// Opens the store in `directory` (created if missing): the database in `db/`, snapshot
    /// files in `snapshots/`. Recovers the hard state, the log bounds and the latest snapshot
    /// and checks them against each other and against every stored entry; a store that fails a
    /// check is reported as [`StorageError::Corrupt`] and left untouched.
    pub fn open(
        directory: impl AsRef<Path>,
        options: RocksLogStoreOptions,
    ) -> Result<RocksLogStore, StorageError> {
        options.validate()?;
        let directory = directory.as_ref().to_path_buf();
        let created = !directory.exists();
        fs::create_dir_all(directory.join(DATABASE_DIRECTORY))?;
        let snapshots = SnapshotFiles::open(
            directory.join(SNAPSHOT_DIRECTORY),
            options.snapshots.clone(),
        )?;
        sync_directory(&directory)?;
        if created {
            if let Some(parent) = directory.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_directory(parent)?;
            }
        }
        let db = open_database(&directory.join(DATABASE_DIRECTORY))?;
        let state = recover(&db, snapshots.latest_meta().as_ref())?;
        let shared = Arc::new(Shared {
            db,
            options,
            queue: Mutex::new(Queue {
                pending: state,
                requests: VecDeque::new(),
                queued_bytes: 0,
                stopped: None,
                closing: false,
            }),
            queue_changed: Condvar::new(),
            durable: RwLock::new(state),
            stats: Default::default(),
        });
        let writer_shared = Arc::clone(&shared);
        let writer = thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || run_writer(writer_shared))?;
        Ok(RocksLogStore {
            shared,
            writer: Some(writer),
            snapshots: Arc::new(snapshots),
            directory,
        })
    }

    /// The directory the store lives in.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The snapshot files beside the database (checked when the store opened). The store's
    /// own snapshots ([`LogStore::begin_snapshot`]) keep the whole `SnapshotMeta` in each
    /// file's membership field: a file written here by hand with another membership is read
    /// back by [`LogStore::snapshot`] as `Corrupt`.
    pub fn snapshots(&self) -> &SnapshotFiles {
        &self.snapshots
    }

    /// The limits the store was opened with.
    pub fn options(&self) -> &RocksLogStoreOptions {
        &self.shared.options
    }

    /// Why the store stopped accepting writes, if it did (fail-stop after a failed write).
    pub fn stopped_reason(&self) -> Option<StoreStopped> {
        self.shared.lock_queue().stopped.clone()
    }

    /// Counters of the group-commit writer: how many calls shared each synced batch.
    pub fn write_stats(&self) -> WriteStats {
        let [batches, requests, entries] = &self.shared.stats;
        WriteStats {
            batches: batches.load(Ordering::Relaxed),
            requests: requests.load(Ordering::Relaxed),
            entries: entries.load(Ordering::Relaxed),
        }
    }

    /// Checks and queues a call; the receiver answers once it is written.
    fn submit(&self, submission: Submission<'_>) -> StoreFuture<'static, ()> {
        let receiver = self.shared.enqueue(submission);
        Box::pin(async move {
            match receiver?.await {
                Ok(result) => result,
                Err(_) => Err(StorageError::Stopped(StoreStopped::WorkerEnded)),
            }
        })
    }

    /// The latest snapshot's meta; damaged data stops the store, as any failed read does.
    fn latest_snapshot(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        let result = snapshot_store::latest(&self.snapshots);
        if let Err(error @ StorageError::Corrupt(_)) = &result {
            self.shared
                .stop_on(failure("reading the latest snapshot failed", error));
        }
        result
    }

    fn read_entries(&self, range: Range<LogIndex>) -> Result<Vec<Entry>, StorageError> {
        let durable = self.shared.read_durable();
        check_range(durable.bounds, &range)?;
        let result = self.shared.read_held(range);
        if let Err(error @ (StorageError::Io(_) | StorageError::Corrupt(_))) = &result {
            self.shared.stop_on(failure("a read failed", error));
        }
        drop(durable);
        result
    }
}

impl Drop for RocksLogStore {
    fn drop(&mut self) {
        self.shared.lock_queue().closing = true;
        self.shared.queue_changed.notify_all();
        if let Some(writer) = self.writer.take() {
            // A panic in the writer already failed every queued call; nothing to add here.
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for RocksLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksLogStore")
            .field("directory", &self.directory)
            .field("durable", &*self.shared.read_durable())
            .finish_non_exhaustive()
    }
}

fn open_database(path: &Path) -> Result<DB, StorageError> {
    let mut db_options = Options::default();
    db_options.create_if_missing(true);
    db_options.create_missing_column_families(true);
    // A torn record at the very end of the write-ahead log is a write that was never
    // acknowledged (the crash came before its sync returned): drop it. Damage anywhere else
    // fails the open instead of silently cutting the log short.
    db_options.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    db_options.set_paranoid_checks(true);
    db_options.set_keep_log_file_num(4);
    db_options.set_max_log_file_size(16 * 1024 * 1024);
    let mut log_options = Options::default();
    log_options.set_compression_type(DBCompressionType::Lz4);
    let mut meta_options = Options::default();
    meta_options.set_compression_type(DBCompressionType::None);
    let families = vec![
        ColumnFamilyDescriptor::new(LOG_CF, log_options),
        ColumnFamilyDescriptor::new(META_CF, meta_options),
    ];
    DB::open_cf_descriptors(&db_options, path, families).map_err(database_error)
}

/// Reads and cross-checks the metadata and every entry; initializes a new database.
fn recover(db: &DB, latest_snapshot: Option<&SnapshotFileMeta>) -> Result<LogState, StorageError> {
    let meta = column_family(db, META_CF)?;
    let log = column_family(db, LOG_CF)?;
    let Some(format) = db.get_cf(meta, FORMAT_KEY).map_err(database_error)? else {
        return initialize(db);
    };
    let version = codec::decode_format(&format)?;
    if version != FORMAT_VERSION {
        return Err(StorageError::Corrupt(format!(
            "the store has format version {version}; this build reads version {FORMAT_VERSION}"
        )));
    }
    let bounds = codec::decode_bounds(&required(db, meta, BOUNDS_KEY)?)?;
    let hard_state = codec::decode_hard_state(&required(db, meta, HARD_STATE_KEY)?)?;
    check_log_keys(db, log, bounds)?;
    if hard_state.commit > bounds.last {
        return Err(StorageError::Corrupt(format!(
            "the hard state commits {} but the log ends at {}: committed entries are missing",
            hard_state.commit, bounds.last
        )));
    }
    // A purged log (first > 1) with no snapshot at all is legal: the trait lets a caller purge
    // without one, and a deployment may keep its snapshots elsewhere.
    if let Some(snapshot) = latest_snapshot {
        if snapshot.id.last_index < bounds.first.prev() {
            return Err(StorageError::Corrupt(format!(
                "the log is purged up to {} but the latest snapshot covers only up to {}: \
                 the entries between are lost",
                bounds.first.prev(),
                snapshot.id.last_index
            )));
        }
    }
    Ok(LogState { bounds, hard_state })
}

/// Writes the format marker, empty bounds and the default hard state into a new database,
/// after checking that it is indeed empty.
fn initialize(db: &DB) -> Result<LogState, StorageError> {
    for family in [LOG_CF, META_CF] {
        let handle = column_family(db, family)?;
        if let Some(item) = db.iterator_cf(handle, IteratorMode::Start).next() {
            let (key, _) = item.map_err(database_error)?;
            return Err(StorageError::Corrupt(format!(
                "the database has no format marker but its {family:?} column family holds \
                 key {key:02x?}: it was not written by this crate or lost its metadata"
            )));
        }
    }
    let state = LogState {
        bounds: LogBounds::EMPTY,
        hard_state: HardState::default(),
    };
    let meta = column_family(db, META_CF)?;
    let mut batch = WriteBatch::default();
    batch.put_cf(
        meta,
        HARD_STATE_KEY,
        codec::encode_hard_state(&state.hard_state),
    );
    batch.put_cf(meta, BOUNDS_KEY, codec::encode_bounds(state.bounds));
    // Last in the batch, and the batch is atomic: the marker means "metadata complete".
    batch.put_cf(meta, FORMAT_KEY, FORMAT_VERSION.to_be_bytes());
    let mut write_options = WriteOptions::default();
    write_options.set_sync(true);
    db.write_opt(batch, &write_options)
        .map_err(database_error)?;
    Ok(state)
}

/// Checks that the log holds exactly the keys `bounds.first..=bounds.last`, each decodable.
fn check_log_keys(db: &DB, log: &ColumnFamily, bounds: LogBounds) -> Result<(), StorageError> {
    let mut read_options = ReadOptions::default();
    read_options.fill_cache(false);
    let mut expected = bounds.first;
    for item in db.iterator_cf_opt(log, read_options, IteratorMode::Start) {
        let (key, value) = item.map_err(database_error)?;
        let index = codec::decode_log_key(&key)?;
        if index < bounds.first {
            return Err(StorageError::Corrupt(format!(
                "entry {index} is stored below the first index {} of the log bounds",
                bounds.first
            )));
        }
        if index > bounds.last {
            return Err(StorageError::Corrupt(format!(
                "entry {index} is stored past the last index {} of the log bounds",
                bounds.last
            )));
        }
        if index != expected {
            return Err(StorageError::Corrupt(format!(
                "the log has a hole: entry {expected} is missing before entry {index}"
            )));
        }
        codec::check_entry(index, &value)?;
        expected = expected.next();
    }
    if expected != bounds.last.next() {
        return Err(StorageError::Corrupt(format!(
            "entries {expected}..={} named by the log bounds are missing",
            bounds.last
        )));
    }
    Ok(())
}

fn required(db: &DB, meta: &ColumnFamily, key: &[u8]) -> Result<Vec<u8>, StorageError> {
    db.get_cf(meta, key)
        .map_err(database_error)?
        .ok_or_else(|| {
            StorageError::Corrupt(format!(
                "the metadata key {:?} is missing",
                String::from_utf8_lossy(key)
            ))
        })
}

fn column_family<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily, StorageError> {
    db.cf_handle(name)
        .ok_or_else(|| StorageError::Corrupt(format!("the column family {name:?} is missing")))
}

/// The error a store stops on for `error`, which goes back to its own caller unchanged
/// (`StorageError` is not `Clone`): the same kind of error, its message prefixed with what the
/// store was doing.
fn failure(during: &str, error: &StorageError) -> StorageError {
    match error {
        StorageError::Io(io) => {
            StorageError::Io(std::io::Error::new(io.kind(), format!("{during}: {io}")))
        }
        StorageError::Corrupt(why) => StorageError::Corrupt(format!("{during}: {why}")),
        other => StorageError::Io(std::io::Error::other(format!("{during}: {other}"))),
    }
}

fn database_error(error: rocksdb::Error) -> StorageError {
    match error.kind() {
        rocksdb::ErrorKind::Corruption => StorageError::Corrupt(format!("RocksDB: {error}")),
        _ => StorageError::Io(std::io::Error::other(format!("RocksDB: {error}"))),
    }
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        // Queue updates are complete before any call that could panic, so a poisoned lock
        // still guards consistent data.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_durable(&self) -> std::sync::RwLockReadGuard<'_, LogState> {
        self.durable
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks `submission` against the pending state and queues it; nothing changes when a
    /// check or a queue limit refuses it.
    fn enqueue(
        &self,
        submission: Submission<'_>,
    ) -> Result<oneshot::Receiver<Result<(), StorageError>>, StorageError> {
        let (truncate_from, entries, hard_state, purge) = match submission {
            Submission::Write(write) => (
                write.truncate_from,
                &write.entries[..],
                write.hard_state,
                None,
            ),
            Submission::Append(entries) => (None, entries, None, None),
            Submission::Purge(up_to, covered) => (None, &[][..], None, Some((up_to, covered))),
        };
        // Encoding needs no lock: concurrent callers encode in parallel.
        let puts: Vec<([u8; 8], Vec<u8>)> = entries
            .iter()
            .map(|entry| (codec::log_key(entry.index), codec::encode_entry(entry)))
            .collect();
        let bytes = REQUEST_OVERHEAD_BYTES
            + puts
                .iter()
                .map(|(key, value)| key.len() + value.len())
                .sum::<usize>();

        let mut queue = self.lock_queue();
        if let Some(reason) = &queue.stopped {
            return Err(StorageError::Stopped(reason.clone()));
        }
        let pending = queue.pending;
        let (after, delete) = match purge {
            Some((up_to, covered)) => plan_purge(pending, up_to, covered)?,
            None => plan_write(pending, truncate_from, entries, hard_state.as_ref())?,
        };
        let limits = &self.options;
        if queue.requests.len() >= limits.queue_writes_max
            || queue.queued_bytes + bytes > limits.queue_bytes_max
        {
            return Err(StorageError::InvalidArgument(format!(
                "the write queue is full: {} calls and {} bytes queued, this call needs {bytes} \
                 bytes (queue_writes_max = {}, queue_bytes_max = {}); wait for earlier writes",
                queue.requests.len(),
                queue.queued_bytes,
                limits.queue_writes_max,
                limits.queue_bytes_max
            )));
        }
        let (done, receiver) = oneshot::channel();
        let sync =
            purge.is_none() && (delete.is_some() || !puts.is_empty() || hard_state.is_some());
        queue.requests.push_back(Request {
            delete,
            puts,
            hard_state,
            after,
            sync,
            bytes,
            done,
        });
        queue.queued_bytes += bytes;
        queue.pending = after;
        drop(queue);
        self.queue_changed.notify_one();
        Ok(receiver)
    }

    /// Reads `range`, which the caller checked against the durable bounds it holds.
    fn read_held(&self, range: Range<LogIndex>) -> Result<Vec<Entry>, StorageError> {
        let count = (range.end.0 - range.start.0) as usize;
        let mut entries = Vec::with_capacity(count.min(READ_RESERVE_ENTRIES_MAX));
        if count == 0 {
            return Ok(entries);
        }
        let log = column_family(&self.db, LOG_CF)?;
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(codec::log_key(range.end).to_vec());
        let start = codec::log_key(range.start);
        let mode = IteratorMode::From(&start, Direction::Forward);
        let mut expected = range.start;
        for item in self.db.iterator_cf_opt(log, read_options, mode) {
            let (key, value) = item.map_err(database_error)?;
            let index = codec::decode_log_key(&key)?;
            if index != expected {
                break;
            }
            entries.push(codec::decode_entry(index, &value)?);
            expected = expected.next();
        }
        if expected != range.end {
            return Err(StorageError::Corrupt(format!(
                "entry {expected} is missing although the log bounds hold it"
            )));
        }
        Ok(entries)
    }

    /// Fail-stop on `error`: refuses every later write and fails every queued one.
    fn stop_on(&self, error: StorageError) {
        self.stop(StoreStopped::Failed(Arc::new(error)));
    }

    /// Fail-stop: refuses every later write and fails every queued one, with the first
    /// reason given.
    fn stop(&self, reason: StoreStopped) {
        let mut queue = self.lock_queue();
        let reason = queue.stopped.get_or_insert(reason).clone();
        for request in queue.requests.drain(..) {
            let _ = request
                .done
                .send(Err(StorageError::Stopped(reason.clone())));
        }
        queue.queued_bytes = 0;
    }

    /// Waits for queued requests and takes the next group within the group-commit limits;
    /// `None` once the store is closing and the queue is empty.
    fn next_group(&self) -> Option<Vec<Request>> {
        let mut queue = self.lock_queue();
        while queue.requests.is_empty() {
            if queue.closing {
                return None;
            }
            queue = self
                .queue_changed
                .wait(queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        let mut group = Vec::new();
        let (mut entries, mut bytes) = (0usize, 0usize);
        while let Some(request) = queue.requests.front() {
            let fits = entries + request.puts.len() <= self.options.group_commit_entries_max
                && bytes + request.bytes <= self.options.group_commit_bytes_max;
            if !group.is_empty() && !fits {
                break;
            }
            entries += request.puts.len();
            bytes += request.bytes;
            group.push(queue.requests.pop_front().expect("front exists"));
        }
        queue.queued_bytes -= bytes;
        Some(group)
    }

    /// Writes one group as one batch (synced unless it only purges), then answers every call.
    fn write_group(&self, group: Vec<Request>) {
        let after = group.last().expect("a group is never empty").after;
        let log = column_family(&self.db, LOG_CF).expect("opened with the log column family");
        let meta = column_family(&self.db, META_CF).expect("opened with the meta column family");
        let mut batch = WriteBatch::default();
        let (mut sync, mut deletes, mut entries) = (false, false, 0u64);
        for request in &group {
            if let Some(range) = &request.delete {
                batch.delete_range_cf(log, codec::log_key(range.start), codec::log_key(range.end));
                deletes = true;
            }
            for (key, value) in &request.puts {
                batch.put_cf(log, key, value);
            }
            if let Some(hard_state) = &request.hard_state {
                batch.put_cf(meta, HARD_STATE_KEY, codec::encode_hard_state(hard_state));
            }
            sync |= request.sync;
            entries += request.puts.len() as u64;
        }
        // A purge of an empty log changes only the bounds: it still needs a batch.
        let unchanged = batch.is_empty() && after == *self.read_durable();
        let result = if unchanged {
            Ok(())
        } else {
            batch.put_cf(meta, BOUNDS_KEY, codec::encode_bounds(after.bounds));
            let mut write_options = WriteOptions::default();
            write_options.set_sync(sync);
            // Readers must not see keys vanish under bounds they already checked.
            let durable_guard = deletes.then(|| self.write_durable());
            let result = self.db.write_opt(batch, &write_options);
            if result.is_ok() {
                match durable_guard {
                    Some(mut durable) => *durable = after,
                    None => *self.write_durable() = after,
                }
            }
            result.map_err(database_error)
        };
        match result {
            Ok(()) => {
                let [batches, requests, written] = &self.stats;
                batches.fetch_add(1, Ordering::Relaxed);
                requests.fetch_add(group.len() as u64, Ordering::Relaxed);
                written.fetch_add(entries, Ordering::Relaxed);
                for request in group {
                    let _ = request.done.send(Ok(()));
                }
            }
            Err(error) => {
                let message = format!("a write batch failed: {error}");
                self.stop_on(failure("a write batch failed", &error));
                for request in group {
                    let _ = request
                        .done
                        .send(Err(StorageError::Io(std::io::Error::other(
                            message.clone(),
                        ))));
                }
            }
        }
    }

    fn write_durable(&self) -> std::sync::RwLockWriteGuard<'_, LogState> {
        self.durable
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The state after a write group, and the keys its truncation removes.
fn plan_write(
    pending: LogState,
    truncate_from: Option<LogIndex>,
    entries: &[Entry],
    hard_state: Option<&HardState>,
) -> Result<(LogState, Option<Range<LogIndex>>), StorageError> {
    let bounds = check_write(
        pending.bounds,
        &pending.hard_state,
        truncate_from,
        entries,
        hard_state,
    )?;
    let delete = truncate_from
        .filter(|from| *from <= pending.bounds.last)
        .map(|from| from..pending.bounds.last.next());
    let after = LogState {
        bounds,
        hard_state: hard_state.copied().unwrap_or(pending.hard_state),
    };
    debug_assert!(after.hard_state.commit <= after.bounds.last);
    Ok((after, delete))
}

/// The state after a purge, and the keys it removes. `covered` is the last index of the newest
/// snapshot, when there is one: purging past it would lose entries.
fn plan_purge(
    pending: LogState,
    up_to: LogIndex,
    covered: Option<LogIndex>,
) -> Result<(LogState, Option<Range<LogIndex>>), StorageError> {
    let mut bounds = pending.bounds;
    if up_to < bounds.first {
        return Ok((pending, None));
    }
    if let Some(covered) = covered.filter(|covered| up_to > *covered) {
        return Err(StorageError::InvalidArgument(format!(
            "cannot purge up to {up_to}: the newest snapshot covers only up to {covered}; \
             finish a newer snapshot first"
        )));
    }
    let delete = (!bounds.is_empty()).then(|| bounds.first..up_to.min(bounds.last).next());
    bounds.first = up_to.next();
    bounds.last = bounds.last.max(up_to);
    let after = LogState { bounds, ..pending };
    debug_assert!(after.bounds.first <= after.bounds.last.next());
    Ok((after, delete))
}

/// The writer thread: one group, one batch, one sync at a time.
fn run_writer(shared: Arc<Shared>) {
    /// Fails every queued call if the writer unwinds, so that no caller waits forever.
    struct StopOnPanic<'a>(&'a Shared);
    impl Drop for StopOnPanic<'_> {
        fn drop(&mut self) {
            if thread::panicking() {
                self.0.stop(StoreStopped::WorkerEnded);
            }
        }
    }
    let _guard = StopOnPanic(&shared);
    while let Some(group) = shared.next_group() {
        shared.write_group(group);
    }
}

// The methods are written out (not `async fn`) so that each call is checked and queued when it
// is made: calls made in order apply in that order, whenever their futures are polled.
impl LogStore for RocksLogStore {
    fn append<'life0, 'life1, 'async_trait>(
        &'life0 self,
        entries: &'life1 [Entry],
    ) -> StoreFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        self.submit(Submission::Append(entries))
    }

    fn truncate<'life0, 'async_trait>(&'life0 self, from: LogIndex) -> StoreFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let write = LogWrite {
            truncate_from: Some(from),
            ..LogWrite::default()
        };
        self.submit(Submission::Write(&write))
    }

    fn purge<'life0, 'async_trait>(&'life0 self, up_to: LogIndex) -> StoreFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let covered = self.snapshots.latest_id().map(|id| id.last_index);
        self.submit(Submission::Purge(up_to, covered))
    }

    fn entries<'life0, 'async_trait>(
        &'life0 self,
        range: Range<LogIndex>,
    ) -> StoreFuture<'async_trait, Vec<Entry>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(ready(self.read_entries(range)))
    }

    fn bounds<'life0, 'async_trait>(&'life0 self) -> StoreFuture<'async_trait, LogBounds>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(ready(Ok(self.shared.read_durable().bounds)))
    }

    fn save_hard_state<'life0, 'life1, 'async_trait>(
        &'life0 self,
        hard_state: &'life1 HardState,
    ) -> StoreFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let write = LogWrite {
            hard_state: Some(*hard_state),
            ..LogWrite::default()
        };
        self.submit(Submission::Write(&write))
    }

    fn load_hard_state<'life0, 'async_trait>(&'life0 self) -> StoreFuture<'async_trait, HardState>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(ready(Ok(self.shared.read_durable().hard_state)))
    }

    fn write<'life0, 'life1, 'async_trait>(
        &'life0 self,
        write: &'life1 LogWrite,
    ) -> StoreFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        self.submit(Submission::Write(write))
    }

    fn begin_snapshot<'life0, 'async_trait>(
        &'life0 self,
    ) -> StoreFuture<'async_trait, Box<dyn SnapshotSink>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        // A stopped store takes no more writes, snapshots included.
        if let Some(reason) = self.stopped_reason() {
            return Box::pin(ready(Err(StorageError::Stopped(reason))));
        }
        Box::pin(snapshot_store::begin(Arc::clone(&self.snapshots)))
    }

    fn snapshot<'life0, 'async_trait>(
        &'life0 self,
    ) -> StoreFuture<'async_trait, Option<SnapshotMeta>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(ready(self.latest_snapshot()))
    }

    fn read_snapshot<'life0, 'life1, 'async_trait>(
        &'life0 self,
        meta: &'life1 SnapshotMeta,
        offset: u64,
        bytes_max: usize,
    ) -> StoreFuture<'async_trait, Bytes>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let (files, shared) = (Arc::clone(&self.snapshots), Arc::clone(&self.shared));
        let read = snapshot_store::read(files, meta.clone(), offset, bytes_max);
        Box::pin(async move {
            let result = read.await;
            if let Err(error @ (StorageError::Io(_) | StorageError::Corrupt(_))) = &result {
                shared.stop_on(failure("reading a snapshot failed", error));
            }
            result
        })
    }
}
