//! An in-memory [`LogStore`] for `raft-core`: for tests, simulation, and deployments that keep
//! no disk state.
//!
//! [`MemLogStore`] keeps the log and the hard state behind one `std::sync::Mutex`. Cloning it is
//! cheap and every clone shares the same data, so a test can "reopen" the store by handing a
//! clone of the original to a restarted node. Nothing survives the process.
//!
//! It enforces the same contract as the durable stores, so a runtime tested against it behaves
//! the same on disk:
//!
//! - appends start right after the last held entry and are consecutive (no holes, no overlap);
//! - truncation never reaches the purge point nor an entry at or below the saved commit index;
//! - the hard state never goes backwards: `term` and `commit` never decrease, the vote never
//!   changes within a term, and `commit` never points past the last entry;
//! - a [`LogWrite`] is checked as a whole before any part of it is applied, so a rejected group
//!   changes nothing;
//! - every call takes effect when it is made, not when its future is first polled, so calls made
//!   in order from one task apply in that order even when their futures are awaited later or out
//!   of order.
//!
//! The log lives in memory in full: its size is bounded by the protocol's compaction (`purge`),
//! which the runtime drives.
//!
//! # A restart is a new life
//!
//! A process that restarts with a new `MemLogStore` has lost its log and its vote. Raft's
//! safety rests on both: a node that came back under its old identity could vote a second time
//! in a term it already voted in, and its earlier acknowledgements counted toward commits of
//! entries it no longer holds. So an in-memory node starts every run after the first in a new
//! [`Incarnation`](raft_core::Incarnation) ([`raft_core::Config::incarnation`]), taken from a
//! small counter file with [`take_incarnation`] (the only thing it writes to disk). The
//! protocol then keeps it safe with no operator action:
//!
//! - the restarted node knows no membership (it does not bootstrap the cluster again) and never
//!   campaigns; its votes, acknowledgements and heartbeat answers count for nothing until the
//!   leader has recorded its new life, because the membership names the life that counts;
//! - the leader that hears the new life replicates to it from scratch (its log went back to
//!   nothing), records the new life through a membership change (a voter steps down to a
//!   learner), and promotes it back to voter once it has caught up;
//! - so what the old life acknowledged must still be held by a majority of the others: with
//!   three in-memory voters, one may lose its memory at a time, and the next only after the
//!   first has rejoined (the cluster waits, unavailable but correct, if a majority has lost
//!   its memory at once: what only they held is gone, as it would be with any Raft).
//!
//! A cluster whose every node restarts at once has lost its data: its nodes wait for a leader
//! that cannot exist. Start it afresh (remove the counter files) to bootstrap again. Tests that
//! "reopen" a store by handing a clone of it to the restarted node keep the data, keep the
//! incarnation, and are safe.
//!
//! ```
//! use raft_core::{Entry, EntryPayload, HardState, LogIndex, LogStore, LogWrite, Term};
//! use raft_storage_mem::MemLogStore;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = MemLogStore::new();
//! let entry = |index: u64| Entry {
//!     term: Term(1),
//!     index: LogIndex(index),
//!     payload: EntryPayload::Command(format!("command {index}").into()),
//! };
//! store
//!     .write(&LogWrite {
//!         truncate_from: None,
//!         entries: vec![entry(1), entry(2)],
//!         hard_state: Some(HardState { term: Term(1), vote: None, commit: LogIndex(1) }),
//!     })
//!     .await?;
//!
//! // A clone shares the data: this is how a test "restarts" a node on the same store.
//! let reopened = store.clone();
//! drop(store);
//! assert_eq!(reopened.bounds().await?.last, LogIndex(2));
//! assert_eq!(reopened.entries(LogIndex(2)..LogIndex(3)).await?, vec![entry(2)]);
//! assert_eq!(reopened.load_hard_state().await?.commit, LogIndex(1));
//! # Ok::<(), raft_core::StorageError>(())
//! # }).unwrap();
//! ```
#![deny(missing_docs)]

mod incarnation;

pub use incarnation::take_incarnation;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::storage::validate::{check_range, check_write};
use raft_core::{
    Entry, HardState, LogBounds, LogIndex, LogStore, LogWrite, SnapshotMeta, SnapshotSink,
    StorageError,
};
use std::collections::VecDeque;
use std::future::{ready, Future};
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

/// The future every [`LogStore`] method returns (the shape `async_trait` expects).
type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send + 'a>>;

/// An in-memory log store. Clones share the same log and hard state.
#[derive(Clone, Debug, Default)]
pub struct MemLogStore {
    state: Arc<Mutex<MemState>>,
}

/// The shared data.
///
/// Invariant: `entries[k].index == first + k` for every `k` (no holes), and
/// `hard_state.commit <= last()`.
#[derive(Debug)]
struct MemState {
    first: LogIndex,
    entries: VecDeque<Entry>,
    hard_state: HardState,
    /// The latest complete snapshot and its data.
    snapshot: Option<(SnapshotMeta, Bytes)>,
}

impl Default for MemState {
    fn default() -> Self {
        MemState {
            first: LogBounds::EMPTY.first,
            entries: VecDeque::new(),
            hard_state: HardState::default(),
            snapshot: None,
        }
    }
}

/// A snapshot being written into a [`MemLogStore`].
struct MemSnapshotSink {
    state: Arc<Mutex<MemState>>,
    data: Vec<u8>,
}

#[async_trait]
impl SnapshotSink for MemSnapshotSink {
    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.data.extend_from_slice(data);
        Ok(())
    }

    async fn finish(self: Box<Self>, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let checksum = raft_core::snapshot::checksum(&self.data);
        if self.data.len() as u64 != meta.data_bytes || checksum != meta.checksum {
            return Err(StorageError::Corrupt(format!(
                "snapshot at {} has {} bytes with checksum {checksum:08x}, expected {} bytes with {:08x}",
                meta.last_index,
                self.data.len(),
                meta.data_bytes,
                meta.checksum
            )));
        }
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let newer = state
            .snapshot
            .as_ref()
            .is_none_or(|(latest, _)| meta.last_index > latest.last_index);
        if newer {
            state.snapshot = Some((meta.clone(), Bytes::from(self.data)));
        }
        Ok(())
    }
}

impl MemLogStore {
    /// An empty store: no entries, never purged, default hard state.
    pub fn new() -> MemLogStore {
        MemLogStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        // A panic while the lock was held happened between two complete operations (every
        // operation checks before it mutates), so the data is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MemState {
    fn bounds(&self) -> LogBounds {
        LogBounds {
            first: self.first,
            last: LogIndex(self.first.0 + self.entries.len() as u64 - 1),
        }
    }

    fn offset(&self, index: LogIndex) -> usize {
        debug_assert!(index >= self.first);
        (index.0 - self.first.0) as usize
    }

    /// Checks a whole group against the current state, then applies it. Nothing changes when the
    /// check fails.
    fn write(&mut self, write: &LogWrite) -> Result<(), StorageError> {
        let last = check_write(
            self.bounds(),
            &self.hard_state,
            write.truncate_from,
            &write.entries,
            write.hard_state.as_ref(),
        )?
        .last;

        if let Some(from) = write.truncate_from {
            if from <= self.bounds().last {
                let keep = self.offset(from);
                self.entries.truncate(keep);
            }
        }
        self.entries.extend(write.entries.iter().cloned());
        if let Some(hard_state) = write.hard_state {
            self.hard_state = hard_state;
        }
        debug_assert_eq!(self.bounds().last, last);
        debug_assert!(self.hard_state.commit <= last);
        Ok(())
    }

    fn purge(&mut self, up_to: LogIndex) {
        let bounds = self.bounds();
        if up_to < bounds.first {
            return;
        }
        if up_to >= bounds.last {
            self.entries.clear();
        } else {
            let drop_count = self.offset(up_to.next());
            self.entries.drain(..drop_count);
        }
        self.first = up_to.next();
        debug_assert!(self.bounds().last >= up_to);
    }

    fn entries(&self, range: Range<LogIndex>) -> Result<Vec<Entry>, StorageError> {
        check_range(self.bounds(), &range)?;
        if range.start == range.end {
            return Ok(Vec::new());
        }
        let start = self.offset(range.start);
        let end = self.offset(range.end);
        let entries: Vec<Entry> = self.entries.range(start..end).cloned().collect();
        debug_assert!(entries
            .iter()
            .zip(range.start.0..)
            .all(|(entry, index)| entry.index.0 == index));
        Ok(entries)
    }
}

// The methods are written out (not `async fn`) so that each call takes effect when it is made:
// the returned future is already complete.
impl LogStore for MemLogStore {
    fn append<'life0, 'life1, 'async_trait>(
        &'life0 self,
        entries: &'life1 [Entry],
    ) -> StoreFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let write = LogWrite {
            truncate_from: None,
            entries: entries.to_vec(),
            hard_state: None,
        };
        Box::pin(ready(self.lock().write(&write)))
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
        Box::pin(ready(self.lock().write(&write)))
    }

    fn purge<'life0, 'async_trait>(&'life0 self, up_to: LogIndex) -> StoreFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        self.lock().purge(up_to);
        Box::pin(ready(Ok(())))
    }

    fn entries<'life0, 'async_trait>(
        &'life0 self,
        range: Range<LogIndex>,
    ) -> StoreFuture<'async_trait, Vec<Entry>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(ready(self.lock().entries(range)))
    }

    fn bounds<'life0, 'async_trait>(&'life0 self) -> StoreFuture<'async_trait, LogBounds>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(ready(Ok(self.lock().bounds())))
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
        Box::pin(ready(self.lock().write(&write)))
    }

    fn load_hard_state<'life0, 'async_trait>(&'life0 self) -> StoreFuture<'async_trait, HardState>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(ready(Ok(self.lock().hard_state)))
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
        Box::pin(ready(self.lock().write(write)))
    }

    fn begin_snapshot<'life0, 'async_trait>(
        &'life0 self,
    ) -> StoreFuture<'async_trait, Box<dyn SnapshotSink>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let sink: Box<dyn SnapshotSink> = Box::new(MemSnapshotSink {
            state: self.state.clone(),
            data: Vec::new(),
        });
        Box::pin(ready(Ok(sink)))
    }

    fn snapshot<'life0, 'async_trait>(
        &'life0 self,
    ) -> StoreFuture<'async_trait, Option<SnapshotMeta>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let meta = self.lock().snapshot.as_ref().map(|(meta, _)| meta.clone());
        Box::pin(ready(Ok(meta)))
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
        let state = self.lock();
        let result = match &state.snapshot {
            Some((latest, data)) if latest.same_snapshot(meta) => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(bytes_max).min(data.len());
                Ok(data.slice(start..end))
            }
            _ => Err(StorageError::SnapshotNotHeld {
                last_index: meta.last_index,
                last_term: meta.last_term,
            }),
        };
        Box::pin(ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::{EntryPayload, Term};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Command(format!("{index}@{term}").into()),
        }
    }

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
            .block_on(future)
    }

    /// Proves a call takes effect when it is made: the second append's future is awaited first
    /// and still succeeds, because the first append was applied when `append` was called.
    #[test]
    fn calls_apply_in_call_order_not_poll_order() {
        block_on(async {
            let store = MemLogStore::new();
            let first = [entry(1, 1), entry(2, 1)];
            let second = [entry(3, 1)];
            let first_future = store.append(&first);
            let second_future = store.append(&second);
            second_future
                .await
                .expect("the second append follows the first");
            first_future.await.expect("the first append");
            assert_eq!(store.bounds().await.unwrap().last, LogIndex(3));
        });
    }

    /// Proves the hard-state invariants are enforced and a rejected save changes nothing.
    #[test]
    fn hard_state_never_goes_backwards() {
        block_on(async {
            let store = MemLogStore::new();
            store.append(&[entry(1, 2), entry(2, 2)]).await.unwrap();
            let saved = HardState {
                term: Term(3),
                vote: Some(raft_core::NodeId(1)),
                commit: LogIndex(1),
            };
            store.save_hard_state(&saved).await.unwrap();
            let rejected = [
                HardState {
                    term: Term(2),
                    ..saved
                },
                HardState {
                    vote: Some(raft_core::NodeId(2)),
                    ..saved
                },
                HardState {
                    vote: None,
                    ..saved
                },
                HardState {
                    commit: LogIndex(0),
                    ..saved
                },
                HardState {
                    commit: LogIndex(3),
                    ..saved
                },
            ];
            for hard_state in rejected {
                let error = store.save_hard_state(&hard_state).await.unwrap_err();
                assert!(
                    matches!(error, StorageError::InvalidArgument(_)),
                    "{hard_state:?} gave {error}"
                );
                assert_eq!(store.load_hard_state().await.unwrap(), saved);
            }
            let next_term = HardState {
                term: Term(4),
                vote: None,
                commit: LogIndex(2),
            };
            store.save_hard_state(&next_term).await.unwrap();
            assert_eq!(store.load_hard_state().await.unwrap(), next_term);
        });
    }

    /// Proves truncation refuses to remove committed entries and leaves the log as it was.
    #[test]
    fn truncate_keeps_committed_entries() {
        block_on(async {
            let store = MemLogStore::new();
            store
                .append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
                .await
                .unwrap();
            store
                .save_hard_state(&HardState {
                    term: Term(1),
                    vote: None,
                    commit: LogIndex(2),
                })
                .await
                .unwrap();
            let error = store.truncate(LogIndex(2)).await.unwrap_err();
            assert!(matches!(error, StorageError::InvalidArgument(_)), "{error}");
            assert_eq!(store.bounds().await.unwrap().last, LogIndex(3));
            store.truncate(LogIndex(3)).await.unwrap();
            assert_eq!(store.bounds().await.unwrap().last, LogIndex(2));
        });
    }
}
