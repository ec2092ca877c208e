//! The key-value state machine: a map kept in memory or in its own RocksDB, shared between the
//! Raft applier (which writes it) and the HTTP API (which reads it for stale reads).
//!
//! # RocksDB layout
//!
//! The map lives in a RocksDB of its own under `<data dir>/state`, apart from the log store's
//! database (`<data dir>/log`), in the default column family:
//!
//! | key | value |
//! | --- | --- |
//! | `d` + user key | the value |
//! | `m:applied_index` | the last applied log index, 8 bytes big-endian |
//! | `p` + member ID (8 bytes big-endian) | legacy: where that member was reached (written before the addresses moved into the membership, [`crate::members`]; ignored) |
//!
//! Each apply batch is one RocksDB `WriteBatch` that carries the batch's writes *and* the new
//! applied index, so the two never disagree: after a crash the database holds some prefix of
//! the applied batches together with the index that prefix reached, and the runtime replays
//! the log from the entry after it. The log is the write-ahead log of this database, so these
//! writes are not synced, and the database's own WAL is written by hand (`manual_wal_flush`):
//! batches gather in a buffer of at most [`WAL_BUFFER_BYTES`] that reaches the file when it
//! fills, when the node calls [`KvState::flush_wal`] (every [`WAL_FLUSH_INTERVAL`]) and when
//! the database closes: one write per interval instead of one per batch, as etcd commits its
//! backend every 100 ms. A killed process loses at most the applies of the last interval,
//! which the runtime replays from the log. A batch that scans after a write is split at the
//! scan, each part with its own applied index, so a scan sees every earlier write of its batch.
//!
//! Invariant: the applied index only grows, and the stored data is exactly the effect of the
//! log's commands up to it.
//!
//! # Snapshots
//!
//! A snapshot is the `d` keys with the applied index, in the format of
//! [`crate::snapshot`]. Building one reads a RocksDB snapshot (a consistent view) on a
//! blocking thread and streams it out in pieces of [`SNAPSHOT_PIECE_BYTES`], at most
//! [`SNAPSHOT_PIECES_QUEUED`] ahead of the store; the memory backend does the same under its
//! read lock. Installing one into RocksDB first checks the header's index against the
//! snapshot's, then deletes every `d` (and legacy `p`) key and the applied index in one batch, writes
//! one batch per chunk received, and writes the applied index with the last batch: a crash
//! part-way leaves no applied index, so the runtime installs the snapshot (which the log store
//! keeps durably) again on restart. Stale reads during an install may see part of the new
//! state; linearizable reads wait until it is complete. The memory backend builds the new
//! map aside and swaps it in at the end.

use crate::command::{Answer, Command};
use crate::metrics::Metrics;
use crate::snapshot::{
    SnapshotDecoder, SnapshotEncoder, SnapshotFormatError, DATA_PREFIX, MEMBER_PREFIX,
};
use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{
    ApplyBatch, LogIndex, SnapshotMeta, SnapshotReader, SnapshotWriter, StateMachine,
    StateMachineError,
};
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

const APPLIED_INDEX_KEY: &[u8] = b"m:applied_index";
/// A snapshot being built is handed to the store in pieces of about this size.
pub const SNAPSHOT_PIECE_BYTES: usize = 64 << 10;
/// Pieces a snapshot build reads ahead of the store (so memory stays at a few pieces).
pub const SNAPSHOT_PIECES_QUEUED: usize = 2;
/// The RocksDB backend's WAL buffer (and that of every file RocksDB writes): apply batches
/// gather here and reach the WAL file in one write when it fills or is flushed.
pub const WAL_BUFFER_BYTES: usize = 1 << 20;
/// How often a node hands the WAL buffer to the file ([`KvState::flush_wal`]): the applies a
/// killed process can lose, to be replayed from the Raft log on restart.
pub const WAL_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// A page of a prefix scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Key and value pairs in key order.
    pub entries: Vec<(Bytes, Bytes)>,
    /// The first matching key a limit kept out of the page: where the next page starts.
    /// `None` when the page reached the last matching key.
    pub next: Option<Bytes>,
}

impl ScanPage {
    /// True when a limit stopped the scan before the last matching key.
    pub fn more(&self) -> bool {
        self.next.is_some()
    }
}

/// Where a scan of `prefix` from `start` begins: the later of the two (every key at or after
/// it that starts with `prefix` matches, until the first one that does not).
fn scan_origin<'a>(prefix: &'a [u8], start: &'a [u8]) -> &'a [u8] {
    prefix.max(start)
}

/// Where the map lives.
enum Backend {
    Memory(RwLock<BTreeMap<Bytes, Bytes>>),
    Rocks(DB),
}

/// The replicated map, shared by the applier and the readers.
pub struct KvState {
    backend: Backend,
    /// The last index applied (in memory for both backends; RocksDB also stores it).
    applied_index: AtomicU64,
}

impl std::fmt::Debug for KvState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Rocks(_) => "rocksdb",
        };
        f.debug_struct("KvState")
            .field("backend", &backend)
            .field("applied_index", &self.applied_index())
            .finish()
    }
}

fn rocks_error(error: rocksdb::Error) -> StateMachineError {
    StateMachineError(format!("state database: {error}"))
}

/// The RocksDB key of a user key.
fn data_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(DATA_PREFIX);
    out.extend_from_slice(key);
    out
}

impl KvState {
    /// An empty map in memory: a restarted node gets its state back from the log.
    pub fn in_memory() -> KvState {
        KvState {
            backend: Backend::Memory(RwLock::new(BTreeMap::new())),
            applied_index: AtomicU64::new(0),
        }
    }

    /// Opens (or creates) the map's RocksDB in `path` and reads the applied index it holds.
    pub fn open_rocksdb(path: &Path) -> Result<KvState, StateMachineError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_manual_wal_flush(true);
        options.set_writable_file_max_buffer_size(WAL_BUFFER_BYTES as u64);
        let db = DB::open(&options, path).map_err(rocks_error)?;
        let applied = decode_applied_index(db.get(APPLIED_INDEX_KEY).map_err(rocks_error)?)?;
        Ok(KvState {
            backend: Backend::Rocks(db),
            applied_index: AtomicU64::new(applied),
        })
    }

    /// Hands the RocksDB backend's buffered WAL to its file (not synced: a killed process
    /// keeps what reached the file). Nothing to do in memory.
    pub fn flush_wal(&self) -> Result<(), StateMachineError> {
        match &self.backend {
            Backend::Memory(_) => Ok(()),
            Backend::Rocks(db) => db.flush_wal(false).map_err(rocks_error),
        }
    }

    /// The last log index whose effect the map holds.
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    /// The value of `key` in the local map (a stale read on a follower).
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StateMachineError> {
        match &self.backend {
            Backend::Memory(map) => Ok(map.read().expect("map lock").get(key).cloned()),
            Backend::Rocks(db) => Ok(db
                .get_pinned(data_key(key))
                .map_err(rocks_error)?
                .map(|value| Bytes::copy_from_slice(&value))),
        }
    }

    /// Up to `limit` pairs whose key starts with `prefix` and is at or after `start` (empty:
    /// from the prefix), in key order, and about `bytes_max` bytes of keys and values (the
    /// first pair is always returned whole).
    pub fn scan(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
        bytes_max: usize,
    ) -> Result<ScanPage, StateMachineError> {
        match &self.backend {
            Backend::Memory(map) => Ok(scan_map(
                &map.read().expect("map lock"),
                prefix,
                start,
                limit,
                bytes_max,
            )),
            Backend::Rocks(db) => scan_rocks(db, prefix, start, limit, bytes_max),
        }
    }

    /// Applies a batch of committed commands in order and answers each one.
    pub fn apply_batch(&self, batch: ApplyBatch) -> Result<Vec<Bytes>, StateMachineError> {
        let last_index = batch.last_index.0;
        assert!(
            last_index >= self.applied_index(),
            "apply went backwards: {last_index} after {}",
            self.applied_index()
        );
        let answers = match &self.backend {
            Backend::Memory(map) => {
                let mut map = map.write().expect("map lock");
                batch
                    .commands
                    .into_iter()
                    .map(|(index, bytes)| apply_in_memory(&mut map, index.0, &bytes).encode())
                    .collect()
            }
            Backend::Rocks(db) => RocksBatch::new(db).apply(batch)?,
        };
        self.applied_index.store(last_index, Ordering::Release);
        Ok(answers)
    }

    /// Encodes the applied state as a snapshot (see [`crate::snapshot`]) and hands it to
    /// `send` in pieces of about `piece_bytes`; `send` answers false when the reader went
    /// away. Returns the applied index the snapshot holds. Blocks (it reads the whole state):
    /// run it on a blocking thread, never concurrently with `apply_batch`.
    pub fn write_snapshot(
        &self,
        piece_bytes: usize,
        mut send: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<u64, StateMachineError> {
        let mut emit = |encoder: &mut SnapshotEncoder| {
            if encoder.buffered_bytes() >= piece_bytes && !send(encoder.take()) {
                return Err(StateMachineError("the snapshot reader went away".into()));
            }
            Ok(())
        };
        let (applied, encoder) = match &self.backend {
            Backend::Memory(map) => {
                let map = map.read().expect("map lock");
                let applied = self.applied_index();
                let mut encoder = SnapshotEncoder::new(applied);
                let mut key = Vec::new();
                for (user_key, value) in map.iter() {
                    key.clear();
                    key.push(DATA_PREFIX);
                    key.extend_from_slice(user_key);
                    encoder.record(&key, value).map_err(format_error)?;
                    emit(&mut encoder)?;
                }
                (applied, encoder)
            }
            Backend::Rocks(db) => {
                let view = db.snapshot();
                let applied =
                    decode_applied_index(view.get(APPLIED_INDEX_KEY).map_err(rocks_error)?)?;
                let mut encoder = SnapshotEncoder::new(applied);
                for item in view.iterator(IteratorMode::Start) {
                    let (key, value) = item.map_err(rocks_error)?;
                    // Legacy member records (`p`) stay behind: the membership holds addresses.
                    if key.as_ref() == APPLIED_INDEX_KEY || key.first() == Some(&MEMBER_PREFIX) {
                        continue;
                    }
                    encoder.record(&key, &value).map_err(format_error)?;
                    emit(&mut encoder)?;
                }
                (applied, encoder)
            }
        };
        if !send(encoder.finish()) {
            return Err(StateMachineError("the snapshot reader went away".into()));
        }
        Ok(applied)
    }

    /// Replaces the whole state with the snapshot in `data`, which must hold the state at
    /// `last_index` (its header says so). Returns the records installed. See the module docs
    /// for the order of writes.
    pub async fn install_snapshot(
        &self,
        last_index: u64,
        data: &mut SnapshotReader,
    ) -> Result<u64, StateMachineError> {
        let mut decoder = SnapshotDecoder::default();
        match &self.backend {
            Backend::Memory(map) => {
                let mut fresh = BTreeMap::new();
                while let Some(chunk) = data.next_chunk().await? {
                    for (key, value) in decoder.feed(&chunk).map_err(format_error)? {
                        check_snapshot_index(&decoder, last_index)?;
                        // Legacy member records are read (the decoder checked them) and dropped.
                        if key.first() == Some(&DATA_PREFIX) {
                            fresh.insert(key.slice(1..), value);
                        }
                    }
                }
                decoder.finish().map_err(format_error)?;
                check_snapshot_index(&decoder, last_index)?;
                *map.write().expect("map lock") = fresh;
            }
            Backend::Rocks(db) => {
                install_into_rocks(db, &mut decoder, last_index, data).await?;
            }
        }
        self.applied_index.store(last_index, Ordering::Release);
        Ok(decoder.records())
    }
}

fn format_error(error: SnapshotFormatError) -> StateMachineError {
    StateMachineError(error.to_string())
}

/// Reads the applied index value (absent: 0).
fn decode_applied_index(bytes: Option<Vec<u8>>) -> Result<u64, StateMachineError> {
    let Some(bytes) = bytes else {
        return Ok(0);
    };
    let array: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
        StateMachineError(format!(
            "applied index has {} bytes, expected 8",
            bytes.len()
        ))
    })?;
    Ok(u64::from_be_bytes(array))
}

/// Once the header is read: it must name the index the snapshot is installed at.
fn check_snapshot_index(
    decoder: &SnapshotDecoder,
    last_index: u64,
) -> Result<(), StateMachineError> {
    match decoder.applied_index() {
        Some(index) if index != last_index => Err(StateMachineError(format!(
            "the snapshot's data holds the state at {index}, but it is installed as the state \
             at {last_index}"
        ))),
        _ => Ok(()),
    }
}

/// The RocksDB half of [`KvState::install_snapshot`]: clear once the header checks out, one
/// batch per chunk, the applied index with the last batch.
async fn install_into_rocks(
    db: &DB,
    decoder: &mut SnapshotDecoder,
    last_index: u64,
    data: &mut SnapshotReader,
) -> Result<(), StateMachineError> {
    let write = |batch: WriteBatch| {
        let mut options = WriteOptions::default();
        // As for applies: a crash before the applied index lands means a new install.
        options.set_sync(false);
        db.write_opt(batch, &options).map_err(rocks_error)
    };
    let mut cleared = false;
    let mut pending: Option<WriteBatch> = None;
    while let Some(chunk) = data.next_chunk().await? {
        let records = decoder.feed(&chunk).map_err(format_error)?;
        check_snapshot_index(decoder, last_index)?;
        if !cleared && decoder.applied_index().is_some() {
            let mut clear = WriteBatch::default();
            clear.delete(APPLIED_INDEX_KEY);
            clear.delete_range([DATA_PREFIX], [DATA_PREFIX + 1]);
            clear.delete_range([MEMBER_PREFIX], [MEMBER_PREFIX + 1]);
            write(clear)?;
            cleared = true;
        }
        if records.is_empty() {
            continue;
        }
        if let Some(batch) = pending.take() {
            write(batch)?;
        }
        let mut batch = WriteBatch::default();
        // Legacy member records are read (the decoder checked them) and dropped.
        for (key, value) in records
            .iter()
            .filter(|(key, _)| key.first() == Some(&DATA_PREFIX))
        {
            batch.put(key, value);
        }
        pending = Some(batch);
    }
    decoder.finish().map_err(format_error)?;
    assert!(cleared, "a finished snapshot has a header");
    let mut last = pending.unwrap_or_default();
    last.put(APPLIED_INDEX_KEY, last_index.to_be_bytes());
    write(last)
}

fn apply_in_memory(map: &mut BTreeMap<Bytes, Bytes>, index: u64, bytes: &[u8]) -> Answer {
    let command = match Command::decode(bytes) {
        Ok(command) => command,
        Err(error) => return Answer::Invalid(error.to_string()),
    };
    match command {
        Command::SetMemberAddress { id, .. } => legacy_member_address(id, index),
        Command::Put { key, value } => {
            map.insert(key, value);
            Answer::Written { index }
        }
        Command::Delete { key } => Answer::Deleted {
            index,
            existed: map.remove(&key).is_some(),
        },
        Command::Cas { key, expected, new } => {
            let previous = map.get(&key).cloned();
            let swapped = previous == expected;
            if swapped {
                map.insert(key, new);
            }
            Answer::Cas {
                index,
                swapped,
                previous,
            }
        }
        Command::Get { key } => Answer::Value(map.get(&key).cloned()),
        Command::Scan {
            prefix,
            limit,
            bytes_max,
        } => {
            let page = scan_map(map, &prefix, &[], limit as usize, bytes_max as usize);
            Answer::Scan {
                more: page.more(),
                entries: page.entries,
            }
        }
        Command::ScanFrom {
            prefix,
            start,
            limit,
            bytes_max,
        } => {
            let page = scan_map(map, &prefix, &start, limit as usize, bytes_max as usize);
            Answer::ScanFrom {
                entries: page.entries,
                next: page.next,
            }
        }
    }
}

fn scan_map(
    map: &BTreeMap<Bytes, Bytes>,
    prefix: &[u8],
    start: &[u8],
    limit: usize,
    bytes_max: usize,
) -> ScanPage {
    let mut page = ScanPage::default();
    let mut bytes = 0usize;
    let origin = Bound::Included(Bytes::copy_from_slice(scan_origin(prefix, start)));
    for (key, value) in map.range((origin, Bound::Unbounded)) {
        if !key.starts_with(prefix) {
            break;
        }
        let size = key.len() + value.len();
        if page.entries.len() >= limit || (!page.entries.is_empty() && bytes + size > bytes_max) {
            page.next = Some(key.clone());
            break;
        }
        bytes += size;
        page.entries.push((key.clone(), value.clone()));
    }
    page
}

/// One apply batch against RocksDB: writes gather in a `WriteBatch`, with an overlay so that
/// later commands of the batch see earlier ones.
struct RocksBatch<'a> {
    db: &'a DB,
    write: WriteBatch,
    /// Keys written in `write`, with their new value (`None`: deleted).
    overlay: HashMap<Bytes, Option<Bytes>>,
}

/// A `SetMemberAddress` of a log written before the addresses moved into the membership: it
/// answers as it did and changes nothing (member 0 is refused, as it was, identically on every
/// node).
fn legacy_member_address(id: u64, index: u64) -> Answer {
    if id == 0 {
        return Answer::Invalid("member ID 0 is reserved".into());
    }
    Answer::MemberAddressSet { index }
}

impl<'a> RocksBatch<'a> {
    fn new(db: &'a DB) -> RocksBatch<'a> {
        RocksBatch {
            db,
            write: WriteBatch::default(),
            overlay: HashMap::new(),
        }
    }

    fn apply(&mut self, batch: ApplyBatch) -> Result<Vec<Bytes>, StateMachineError> {
        let mut answers = Vec::with_capacity(batch.commands.len());
        let mut previous_index = LogIndex(0);
        for (index, bytes) in batch.commands {
            let answer = match Command::decode(&bytes) {
                Ok(command) => self.apply_one(index.0, previous_index, command)?,
                Err(error) => Answer::Invalid(error.to_string()),
            };
            answers.push(answer.encode());
            previous_index = index;
        }
        self.commit(batch.last_index)?;
        Ok(answers)
    }

    fn current(&self, key: &Bytes) -> Result<Option<Bytes>, StateMachineError> {
        if let Some(value) = self.overlay.get(key) {
            return Ok(value.clone());
        }
        Ok(self
            .db
            .get_pinned(data_key(key))
            .map_err(rocks_error)?
            .map(|value| Bytes::copy_from_slice(&value)))
    }

    fn set(&mut self, key: Bytes, value: Option<Bytes>) {
        match &value {
            Some(value) => self.write.put(data_key(&key), value),
            None => self.write.delete(data_key(&key)),
        }
        self.overlay.insert(key, value);
    }

    fn apply_one(
        &mut self,
        index: u64,
        previous_index: LogIndex,
        command: Command,
    ) -> Result<Answer, StateMachineError> {
        Ok(match command {
            Command::SetMemberAddress { id, .. } => legacy_member_address(id, index),
            Command::Put { key, value } => {
                self.set(key, Some(value));
                Answer::Written { index }
            }
            Command::Delete { key } => {
                let existed = self.current(&key)?.is_some();
                self.set(key, None);
                Answer::Deleted { index, existed }
            }
            Command::Cas { key, expected, new } => {
                let previous = self.current(&key)?;
                let swapped = previous == expected;
                if swapped {
                    self.set(key, Some(new));
                }
                Answer::Cas {
                    index,
                    swapped,
                    previous,
                }
            }
            Command::Get { key } => Answer::Value(self.current(&key)?),
            Command::Scan {
                prefix,
                limit,
                bytes_max,
            } => {
                // A scan reads the database, so earlier writes of this batch land first
                // (with the index they reach, keeping data and index together).
                if !self.overlay.is_empty() {
                    self.commit(previous_index)?;
                }
                let page = scan_rocks(self.db, &prefix, &[], limit as usize, bytes_max as usize)?;
                Answer::Scan {
                    more: page.more(),
                    entries: page.entries,
                }
            }
            Command::ScanFrom {
                prefix,
                start,
                limit,
                bytes_max,
            } => {
                // As for `Scan`: the database holds this batch's earlier writes first.
                if !self.overlay.is_empty() {
                    self.commit(previous_index)?;
                }
                let (limit, bytes_max) = (limit as usize, bytes_max as usize);
                let page = scan_rocks(self.db, &prefix, &start, limit, bytes_max)?;
                Answer::ScanFrom {
                    entries: page.entries,
                    next: page.next,
                }
            }
        })
    }

    /// Writes what is gathered together with `applied` as the applied index.
    fn commit(&mut self, applied: LogIndex) -> Result<(), StateMachineError> {
        let mut write = std::mem::take(&mut self.write);
        write.put(APPLIED_INDEX_KEY, applied.0.to_be_bytes());
        let mut options = WriteOptions::default();
        // The Raft log is this database's write-ahead log: a crash loses at most a suffix of
        // applied batches (those still in the WAL buffer), which the runtime replays.
        options.set_sync(false);
        self.db.write_opt(write, &options).map_err(rocks_error)?;
        self.overlay.clear();
        Ok(())
    }
}

fn scan_rocks(
    db: &DB,
    prefix: &[u8],
    start: &[u8],
    limit: usize,
    bytes_max: usize,
) -> Result<ScanPage, StateMachineError> {
    let mut page = ScanPage::default();
    let mut bytes = 0usize;
    let data_prefix = data_key(prefix);
    let origin = data_key(scan_origin(prefix, start));
    for item in db.iterator(IteratorMode::From(&origin, Direction::Forward)) {
        let (key, value) = item.map_err(rocks_error)?;
        if !key.starts_with(&data_prefix) {
            break;
        }
        let size = key.len() - 1 + value.len();
        if page.entries.len() >= limit || (!page.entries.is_empty() && bytes + size > bytes_max) {
            page.next = Some(Bytes::copy_from_slice(&key[1..]));
            break;
        }
        bytes += size;
        page.entries.push((
            Bytes::copy_from_slice(&key[1..]),
            Bytes::from(value.into_vec()),
        ));
    }
    Ok(page)
}

/// The [`StateMachine`] the Raft runtime drives: applies batches to a shared [`KvState`] and
/// records apply latency.
pub struct KvStateMachine {
    state: Arc<KvState>,
    metrics: Arc<Metrics>,
}

impl KvStateMachine {
    /// A machine over `state`.
    pub fn new(state: Arc<KvState>, metrics: Arc<Metrics>) -> KvStateMachine {
        KvStateMachine { state, metrics }
    }
}

#[async_trait]
impl StateMachine for KvStateMachine {
    async fn apply(&mut self, index: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
        let batch = ApplyBatch {
            commands: vec![(index, command)],
            last_index: index,
        };
        let mut answers = self.apply_batch(batch).await?;
        Ok(answers.pop().expect("one answer per command"))
    }

    async fn apply_batch(&mut self, batch: ApplyBatch) -> Result<Vec<Bytes>, StateMachineError> {
        let started = Instant::now();
        let commands = batch.commands.len();
        // RocksDB calls here block only briefly: writes are not synced (see the module docs).
        let answers = self.state.apply_batch(batch)?;
        self.metrics.record_apply(started.elapsed(), commands);
        Ok(answers)
    }

    async fn applied_index(&mut self) -> Result<LogIndex, StateMachineError> {
        Ok(LogIndex(self.state.applied_index()))
    }

    /// The snapshot layout's version (`snapshot::VERSION`), recorded in every snapshot's meta:
    /// a release that does not read it refuses the snapshot before reading a byte of it.
    fn snapshot_format_version(&self) -> u32 {
        u32::from(crate::snapshot::VERSION)
    }

    async fn build_snapshot(&mut self, out: &mut SnapshotWriter) -> Result<(), StateMachineError> {
        let started = Instant::now();
        let expected = self.state.applied_index();
        let (sender, mut pieces) = tokio::sync::mpsc::channel::<Vec<u8>>(SNAPSHOT_PIECES_QUEUED);
        let state = self.state.clone();
        // The state is read on a blocking thread; this task passes the pieces on. If writing
        // fails, dropping `pieces` stops the reader.
        let reader = tokio::task::spawn_blocking(move || {
            state.write_snapshot(SNAPSHOT_PIECE_BYTES, |piece| {
                sender.blocking_send(piece).is_ok()
            })
        });
        while let Some(piece) = pieces.recv().await {
            out.write(&piece).await?;
        }
        let applied = reader
            .await
            .map_err(|e| StateMachineError(format!("the snapshot reader failed: {e}")))??;
        if applied != expected {
            // The runtime never applies during a build; refuse the snapshot rather than store
            // one whose index could be wrong (a failed build is retried later, not fatal).
            return Err(StateMachineError(format!(
                "the state moved from {expected} to {applied} while a snapshot was built"
            )));
        }
        self.metrics
            .record_snapshot_built(out.written_bytes(), started.elapsed());
        Ok(())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: &mut SnapshotReader,
    ) -> Result<(), StateMachineError> {
        let records = self.state.install_snapshot(meta.last_index.0, data).await?;
        tracing::info!(
            index = meta.last_index.0,
            records,
            bytes = meta.data_bytes,
            "installed a key-value snapshot"
        );
        self.metrics.record_snapshot_installed(meta.data_bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(index: u64, command: Command) -> (LogIndex, Bytes) {
        (LogIndex(index), command.encode())
    }

    fn bytes(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    /// One batch that writes, compares, reads and scans: later commands see earlier ones, and
    /// both backends give the same answers.
    fn exercise(state: &KvState) {
        let batch = ApplyBatch {
            commands: vec![
                command(
                    1,
                    Command::Put {
                        key: bytes("a/1"),
                        value: bytes("x"),
                    },
                ),
                command(
                    2,
                    Command::Cas {
                        key: bytes("a/1"),
                        expected: Some(bytes("x")),
                        new: bytes("y"),
                    },
                ),
                command(
                    3,
                    Command::Cas {
                        key: bytes("a/2"),
                        expected: Some(bytes("x")),
                        new: bytes("z"),
                    },
                ),
                command(
                    4,
                    Command::Put {
                        key: bytes("a/3"),
                        value: bytes("w"),
                    },
                ),
                command(
                    5,
                    Command::Scan {
                        prefix: bytes("a/"),
                        limit: 1,
                        bytes_max: 1 << 20,
                    },
                ),
                command(6, Command::Delete { key: bytes("a/3") }),
                command(7, Command::Get { key: bytes("a/1") }),
                command(
                    8,
                    Command::Scan {
                        prefix: bytes("a/"),
                        limit: 10,
                        bytes_max: 1 << 20,
                    },
                ),
            ],
            last_index: LogIndex(9),
        };
        let answers: Vec<Answer> = state
            .apply_batch(batch)
            .unwrap()
            .iter()
            .map(|a| Answer::decode(a).unwrap())
            .collect();
        assert_eq!(answers[0], Answer::Written { index: 1 });
        assert_eq!(
            answers[1],
            Answer::Cas {
                index: 2,
                swapped: true,
                previous: Some(bytes("x"))
            }
        );
        assert_eq!(
            answers[2],
            Answer::Cas {
                index: 3,
                swapped: false,
                previous: None
            }
        );
        assert_eq!(
            answers[4],
            Answer::Scan {
                entries: vec![(bytes("a/1"), bytes("y"))],
                more: true
            }
        );
        assert_eq!(
            answers[5],
            Answer::Deleted {
                index: 6,
                existed: true
            }
        );
        assert_eq!(answers[6], Answer::Value(Some(bytes("y"))));
        assert_eq!(
            answers[7],
            Answer::Scan {
                entries: vec![(bytes("a/1"), bytes("y"))],
                more: false
            }
        );
        assert_eq!(state.applied_index(), 9);
        assert_eq!(state.get(b"a/1").unwrap(), Some(bytes("y")));
        assert_eq!(state.get(b"a/3").unwrap(), None);
        let garbage = ApplyBatch {
            commands: vec![(LogIndex(10), bytes("junk"))],
            last_index: LogIndex(10),
        };
        let answer = Answer::decode(&state.apply_batch(garbage).unwrap()[0]).unwrap();
        assert!(matches!(answer, Answer::Invalid(_)), "{answer:?}");
    }

    #[test]
    fn memory_backend_applies_in_order() {
        exercise(&KvState::in_memory());
    }

    /// RocksDB gives the same answers, and a reopened database holds the data and the applied
    /// index together.
    #[test]
    fn rocksdb_backend_applies_in_order_and_persists_the_applied_index() {
        let folder = std::env::temp_dir().join(format!("kv-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&folder);
        exercise(&KvState::open_rocksdb(&folder).unwrap());
        let reopened = KvState::open_rocksdb(&folder).unwrap();
        assert_eq!(reopened.applied_index(), 10);
        assert_eq!(reopened.get(b"a/1").unwrap(), Some(bytes("y")));
        assert_eq!(reopened.scan(b"", b"", 10, 2).unwrap().entries.len(), 1);
        drop(reopened);
        std::fs::remove_dir_all(&folder).unwrap();
    }

    fn temp_folder(name: &str) -> std::path::PathBuf {
        let folder = std::env::temp_dir().join(format!("kv-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&folder);
        folder
    }

    /// Fills a state with many keys (over several snapshot pieces) and a legacy member
    /// address command (answered, and leaving no trace).
    fn fill(state: &KvState, first_index: u64) -> u64 {
        let mut commands: Vec<(LogIndex, Bytes)> = (0..3000u64)
            .map(|i| {
                command(
                    first_index + i,
                    Command::Put {
                        key: bytes(&format!("key/{i:05}")),
                        value: Bytes::from(vec![b'v'; 40]),
                    },
                )
            })
            .collect();
        let last = first_index + commands.len() as u64;
        let address = crate::members::MemberAddress {
            peer_address: "127.0.0.1:7004".parse().unwrap(),
            client_address: Some("127.0.0.1:8004".parse().unwrap()),
        };
        commands.push(command(last, Command::SetMemberAddress { id: 4, address }));
        let answers = state
            .apply_batch(ApplyBatch {
                commands,
                last_index: LogIndex(last),
            })
            .unwrap();
        assert_eq!(
            Answer::decode(answers.last().unwrap()).unwrap(),
            Answer::MemberAddressSet { index: last }
        );
        last
    }

    /// Builds a snapshot of `state` the way the state machine does, as bytes.
    fn snapshot_of(state: &KvState) -> Bytes {
        let mut all = Vec::new();
        let mut pieces = 0;
        state
            .write_snapshot(SNAPSHOT_PIECE_BYTES, |piece| {
                assert!(piece.len() < 2 * SNAPSHOT_PIECE_BYTES, "a piece is bounded");
                pieces += 1;
                all.extend_from_slice(&piece);
                true
            })
            .unwrap();
        assert!(pieces > 1, "a 150 KB state goes out in several pieces");
        Bytes::from(all)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A snapshot from either backend installs into either backend and replaces the whole
    /// state: old keys go, the new keys and the applied index arrive. RocksDB keeps it all
    /// across a reopen.
    #[test]
    fn snapshots_move_between_backends() {
        let folder = temp_folder("snapshot-backends");
        let sources = [
            KvState::in_memory(),
            KvState::open_rocksdb(&folder.join("source")).unwrap(),
        ];
        for (n, source) in sources.iter().enumerate() {
            let last = fill(source, 1);
            let data = snapshot_of(source);
            let target_path = folder.join(format!("target-{n}"));
            let targets = [
                KvState::in_memory(),
                KvState::open_rocksdb(&target_path).unwrap(),
            ];
            for target in &targets {
                exercise(target); // keys a/1 (and an applied index of 10) to be replaced
                let mut reader = SnapshotReader::from_bytes(data.clone(), 4096);
                let records = runtime()
                    .block_on(target.install_snapshot(last, &mut reader))
                    .unwrap();
                assert_eq!(records, 3000);
                assert_eq!(target.applied_index(), last);
                assert_eq!(target.get(b"a/1").unwrap(), None, "old keys are gone");
                assert_eq!(
                    target
                        .scan(b"key/", b"", 5000, 1 << 30)
                        .unwrap()
                        .entries
                        .len(),
                    3000
                );
                assert_eq!(snapshot_of(target), data, "the same state, byte for byte");
            }
            drop(targets);
            let reopened = KvState::open_rocksdb(&target_path).unwrap();
            assert_eq!(reopened.applied_index(), last);
            assert_eq!(
                reopened.get(b"key/00042").unwrap().map(|v| v.len()),
                Some(40)
            );
        }
        drop(sources);
        std::fs::remove_dir_all(&folder).unwrap();
    }

    /// A snapshot written before member addresses moved into the membership carries `p`
    /// records: both backends install it, keep its data, and leave the records out.
    #[test]
    fn a_legacy_snapshot_with_member_records_installs() {
        let mut encoder = SnapshotEncoder::new(9);
        encoder.record(b"dcolour", b"blue").unwrap();
        let address = br#"{"peer_address":"127.0.0.1:7004","client_address":null}"#;
        encoder
            .record(&crate::snapshot::member_key(4), address)
            .unwrap();
        let legacy = Bytes::from(encoder.finish());
        let folder = temp_folder("snapshot-legacy");
        let targets = [
            KvState::in_memory(),
            KvState::open_rocksdb(&folder).unwrap(),
        ];
        for target in &targets {
            let mut reader = SnapshotReader::from_bytes(legacy.clone(), 16);
            let records = runtime()
                .block_on(target.install_snapshot(9, &mut reader))
                .unwrap();
            assert_eq!(records, 2, "both records read");
            assert_eq!(target.get(b"colour").unwrap(), Some(bytes("blue")));
            let mut rebuilt = Vec::new();
            target
                .write_snapshot(SNAPSHOT_PIECE_BYTES, |piece| {
                    rebuilt.extend_from_slice(&piece);
                    true
                })
                .unwrap();
            let mut decoder = SnapshotDecoder::default();
            let keys: Vec<Bytes> = decoder
                .feed(&rebuilt)
                .unwrap()
                .into_iter()
                .map(|(key, _)| key)
                .collect();
            decoder.finish().unwrap();
            assert_eq!(keys, [bytes("dcolour")], "the member record is left out");
        }
        drop(targets);
        std::fs::remove_dir_all(&folder).unwrap();
    }

    /// Garbage, a snapshot cut short, or one whose header names another index is refused
    /// with a StateMachineError, never a panic.
    #[test]
    fn bad_snapshots_are_refused() {
        let source = KvState::in_memory();
        let last = fill(&source, 1);
        let good = snapshot_of(&source);
        let folder = temp_folder("snapshot-refused");
        let rocks = KvState::open_rocksdb(&folder).unwrap();
        let cases: Vec<(Bytes, u64, &str)> = vec![
            (
                Bytes::from_static(b"garbage, not a snapshot"),
                last,
                "magic",
            ),
            (good.slice(..good.len() - 3), last, "end marker"),
            (good.clone(), last + 1, "installed as the state"),
        ];
        for target in [&KvState::in_memory(), &rocks] {
            for (data, index, says) in &cases {
                let mut reader = SnapshotReader::from_bytes(data.clone(), 1000);
                let error = runtime()
                    .block_on(target.install_snapshot(*index, &mut reader))
                    .unwrap_err();
                assert!(error.0.contains(says), "{error} should say {says:?}");
            }
        }
        drop(rocks);
        std::fs::remove_dir_all(&folder).unwrap();
    }

    /// The state machine streams its snapshot through a blocking reader into the writer.
    #[test]
    fn the_state_machine_builds_through_a_writer() {
        let state = Arc::new(KvState::in_memory());
        fill(&state, 1);
        let mut machine = KvStateMachine::new(state.clone(), Arc::new(Metrics::default()));
        let mut out = SnapshotWriter::in_memory();
        runtime()
            .block_on(machine.build_snapshot(&mut out))
            .unwrap();
        let (data, _) = out.into_bytes().unwrap();
        assert_eq!(data, snapshot_of(&state));
    }

    /// A scan stops at the byte budget, but always returns at least one pair.
    #[test]
    fn scan_respects_the_byte_budget() {
        let state = KvState::in_memory();
        let commands = (1..=3)
            .map(|i| {
                command(
                    i,
                    Command::Put {
                        key: bytes(&format!("k{i}")),
                        value: bytes("0123456789"),
                    },
                )
            })
            .collect();
        state
            .apply_batch(ApplyBatch {
                commands,
                last_index: LogIndex(3),
            })
            .unwrap();
        let page = state.scan(b"k", b"", 10, 25).unwrap();
        assert_eq!((page.entries.len(), page.next), (2, Some(bytes("k3"))));
        let page = state.scan(b"k", b"", 10, 1).unwrap();
        assert_eq!((page.entries.len(), page.next), (1, Some(bytes("k2"))));
    }

    /// Pages that each start at the `next` of the one before return every matching key once,
    /// in order, on both backends; a start before the prefix scans from the prefix, one past
    /// it finds nothing, and keys that merely sort after the prefix are never returned.
    fn page_through(state: &KvState) {
        let keys: Vec<Bytes> = [
            &b"a"[..],
            b"p",
            b"p\x00",
            b"p/1",
            b"p/2",
            b"p\xff",
            b"p\xff\xff",
            b"q",
        ]
        .iter()
        .map(|k| Bytes::copy_from_slice(k))
        .collect();
        let commands = keys
            .iter()
            .zip(1..)
            .map(|(key, i)| {
                let value = bytes("v");
                command(
                    i,
                    Command::Put {
                        key: key.clone(),
                        value,
                    },
                )
            })
            .collect();
        state
            .apply_batch(ApplyBatch {
                commands,
                last_index: LogIndex(keys.len() as u64),
            })
            .unwrap();
        for limit in 1..=3 {
            let mut seen = Vec::new();
            let mut start = Bytes::new();
            loop {
                let page = state.scan(b"p", &start, limit, 1 << 20).unwrap();
                assert!(page.entries.len() <= limit);
                seen.extend(page.entries.iter().map(|(key, _)| key.clone()));
                match page.next {
                    Some(next) => start = next,
                    None => break,
                }
            }
            assert_eq!(seen, keys[1..7], "limit {limit}");
        }
        let from_before = state.scan(b"p", b"a", 10, 1 << 20).unwrap();
        assert_eq!(from_before.entries.len(), 6);
        let from_inside = state.scan(b"p", b"p/2", 10, 1 << 20).unwrap();
        assert_eq!(from_inside.entries[0].0, bytes("p/2"));
        assert_eq!(from_inside.entries.len(), 3);
        let past = state.scan(b"p", b"q", 10, 1 << 20).unwrap();
        assert_eq!(past, ScanPage::default());
        // Through the log, the same pages.
        let scan_from = Command::ScanFrom {
            prefix: bytes("p"),
            start: bytes("p/2"),
            limit: 2,
            bytes_max: 1 << 20,
        };
        let batch = ApplyBatch {
            commands: vec![command(keys.len() as u64 + 1, scan_from)],
            last_index: LogIndex(keys.len() as u64 + 1),
        };
        let answer = Answer::decode(&state.apply_batch(batch).unwrap()[0]).unwrap();
        assert_eq!(
            answer,
            Answer::ScanFrom {
                entries: vec![(bytes("p/2"), bytes("v")), (keys[5].clone(), bytes("v"))],
                next: Some(keys[6].clone()),
            }
        );
    }

    #[test]
    fn memory_scans_page_from_a_start_key() {
        page_through(&KvState::in_memory());
    }

    #[test]
    fn rocksdb_scans_page_from_a_start_key() {
        let folder = tempfile::tempdir().unwrap();
        page_through(&KvState::open_rocksdb(folder.path()).unwrap());
    }
}
