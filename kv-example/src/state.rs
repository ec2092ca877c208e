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
//!
//! Each apply batch is one RocksDB `WriteBatch` that carries the batch's writes *and* the new
//! applied index, so the two never disagree: after a crash the database holds some prefix of
//! the applied batches together with the index that prefix reached, and the runtime replays
//! the log from the entry after it (the log is the write-ahead log of this database, so these
//! writes are not synced). A batch that scans after a write is split at the scan, each part
//! with its own applied index, so a scan sees every earlier write of its batch.
//!
//! Invariant: the applied index only grows, and the stored data is exactly the effect of the
//! log's commands up to it.

use crate::command::{Answer, Command};
use crate::metrics::Metrics;
use async_trait::async_trait;
use bytes::Bytes;
use raft_core::{ApplyBatch, LogIndex, StateMachine, StateMachineError};
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

const DATA_PREFIX: u8 = b'd';
const APPLIED_INDEX_KEY: &[u8] = b"m:applied_index";

/// A page of a prefix scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Key and value pairs in key order.
    pub entries: Vec<(Bytes, Bytes)>,
    /// True when a limit stopped the scan before the last matching key.
    pub more: bool,
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
        let db = DB::open(&options, path).map_err(rocks_error)?;
        let applied = match db.get(APPLIED_INDEX_KEY).map_err(rocks_error)? {
            None => 0,
            Some(bytes) => {
                let array: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    StateMachineError(format!(
                        "applied index has {} bytes, expected 8",
                        bytes.len()
                    ))
                })?;
                u64::from_be_bytes(array)
            }
        };
        Ok(KvState {
            backend: Backend::Rocks(db),
            applied_index: AtomicU64::new(applied),
        })
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

    /// Up to `limit` pairs whose key starts with `prefix`, in key order, and about `bytes_max`
    /// bytes of keys and values (the first pair is always returned whole).
    pub fn scan(
        &self,
        prefix: &[u8],
        limit: usize,
        bytes_max: usize,
    ) -> Result<ScanPage, StateMachineError> {
        match &self.backend {
            Backend::Memory(map) => Ok(scan_map(
                &map.read().expect("map lock"),
                prefix,
                limit,
                bytes_max,
            )),
            Backend::Rocks(db) => scan_rocks(db, prefix, limit, bytes_max),
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
}

fn apply_in_memory(map: &mut BTreeMap<Bytes, Bytes>, index: u64, bytes: &[u8]) -> Answer {
    let command = match Command::decode(bytes) {
        Ok(command) => command,
        Err(error) => return Answer::Invalid(error.to_string()),
    };
    match command {
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
            let page = scan_map(map, &prefix, limit as usize, bytes_max as usize);
            Answer::Scan {
                entries: page.entries,
                more: page.more,
            }
        }
    }
}

fn scan_map(
    map: &BTreeMap<Bytes, Bytes>,
    prefix: &[u8],
    limit: usize,
    bytes_max: usize,
) -> ScanPage {
    let mut page = ScanPage::default();
    let mut bytes = 0usize;
    let start = Bound::Included(Bytes::copy_from_slice(prefix));
    for (key, value) in map.range((start, Bound::Unbounded)) {
        if !key.starts_with(prefix) {
            break;
        }
        let size = key.len() + value.len();
        if page.entries.len() >= limit || (!page.entries.is_empty() && bytes + size > bytes_max) {
            page.more = true;
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

impl<'a> RocksBatch<'a> {
    fn new(db: &'a DB) -> RocksBatch<'a> {
        RocksBatch {
            db,
            write: WriteBatch::default(),
            overlay: HashMap::new(),
        }
    }

    fn apply(mut self, batch: ApplyBatch) -> Result<Vec<Bytes>, StateMachineError> {
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
                let page = scan_rocks(self.db, &prefix, limit as usize, bytes_max as usize)?;
                Answer::Scan {
                    entries: page.entries,
                    more: page.more,
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
        // applied batches, which the runtime replays from the log.
        options.set_sync(false);
        self.db.write_opt(write, &options).map_err(rocks_error)?;
        self.overlay.clear();
        Ok(())
    }
}

fn scan_rocks(
    db: &DB,
    prefix: &[u8],
    limit: usize,
    bytes_max: usize,
) -> Result<ScanPage, StateMachineError> {
    let mut page = ScanPage::default();
    let mut bytes = 0usize;
    let start = data_key(prefix);
    for item in db.iterator(IteratorMode::From(&start, Direction::Forward)) {
        let (key, value) = item.map_err(rocks_error)?;
        if !key.starts_with(&start) {
            break;
        }
        let size = key.len() - 1 + value.len();
        if page.entries.len() >= limit || (!page.entries.is_empty() && bytes + size > bytes_max) {
            page.more = true;
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
        assert_eq!(reopened.scan(b"", 10, 2).unwrap().entries.len(), 1);
        drop(reopened);
        std::fs::remove_dir_all(&folder).unwrap();
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
        let page = state.scan(b"k", 10, 25).unwrap();
        assert_eq!((page.entries.len(), page.more), (2, true));
        let page = state.scan(b"k", 10, 1).unwrap();
        assert_eq!((page.entries.len(), page.more), (1, true));
    }
}
