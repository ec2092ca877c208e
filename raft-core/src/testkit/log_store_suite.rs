//! The `LogStore` conformance suite: one contract that every store, ours or a third party's,
//! is held to.
//!
//! A store joins by implementing [`StoreHarness`] (create a new, empty store; close and reopen
//! one; say whether a reopened store must still hold what was acknowledged) and calling
//! [`run_all`] from one of its tests. Each case is also public, to run alone while debugging.
//!
//! Every case drives the store through the trait, keeps a model of what the store must hold, and
//! after every operation checks the bounds, every held entry and the hard state against the
//! model. For a durable store it then closes the store, reopens it and checks again: a reopened
//! store must hold exactly what was acknowledged (purged entries may come back, as the trait
//! allows, but nothing else may differ).
//!
//! What the suite requires beyond the trait's signatures:
//!
//! - `entries(a..b)` succeeds when `first <= a <= b <= last + 1` (an empty range included) and
//!   fails with [`StorageError::OutOfRange`] when the range reaches outside the held entries;
//!   a range that ends before it starts fails with `OutOfRange` or `InvalidArgument`;
//! - an append that would leave a hole, overlap held entries, or is not consecutive fails with
//!   [`StorageError::InvalidArgument`] and changes nothing; so does a truncation at or below the
//!   purge point;
//! - a [`LogWrite`] the store rejects changes nothing (stores override `write` to make the group
//!   atomic; the trait's default applies the parts one by one);
//! - truncating past the last entry changes nothing; purging at or below the purge point changes
//!   nothing; purging past the last entry empties the log and the next append starts right after
//!   the purge point.
//!
//! The cases use only logs a correct protocol produces: terms never decrease along the log, the
//! hard state never goes backwards, the commit index never passes the last entry, and committed
//! entries are never truncated.
//!
//! ```
//! use async_trait::async_trait;
//! use raft_core::testkit::log_store_suite::{run_all, StoreHarness};
//! use raft_core::{LogStore, StorageError};
//! use std::sync::Arc;
//!
//! /// Runs the suite against some store type `MyStore` (here a stand-in that is never built).
//! struct MyHarness;
//!
//! #[async_trait]
//! impl StoreHarness for MyHarness {
//!     async fn create(&mut self) -> Result<Arc<dyn LogStore>, StorageError> {
//!         Err(StorageError::InvalidArgument("open your store here".into()))
//!     }
//!     async fn reopen(
//!         &mut self,
//!         store: Arc<dyn LogStore>,
//!     ) -> Result<Arc<dyn LogStore>, StorageError> {
//!         drop(store); // close it, then open the same data again
//!         Err(StorageError::InvalidArgument("reopen your store here".into()))
//!     }
//!     fn durable(&self) -> bool {
//!         true
//!     }
//! }
//!
//! // In a test: `run_all(&mut MyHarness).await;` (it panics with the failing case's name).
//! # let _ = run_all::<MyHarness>;
//! ```

use crate::storage::{LogBounds, LogStore, LogWrite, StorageError};
use crate::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

/// How the suite gets stores to test.
#[async_trait]
pub trait StoreHarness: Send {
    /// Creates a new, empty store (no entries, never purged, default hard state). Called once at
    /// the start of every case; stores from earlier cases are already dropped.
    async fn create(&mut self) -> Result<Arc<dyn LogStore>, StorageError>;

    /// Closes `store` and opens the same store again. The suite holds no other reference to
    /// `store`, so dropping it releases the store (its files, locks and threads).
    async fn reopen(&mut self, store: Arc<dyn LogStore>)
        -> Result<Arc<dyn LogStore>, StorageError>;

    /// True when a reopened store must hold everything acknowledged before it was closed. The
    /// suite then reopens the store after every operation and checks its content.
    fn durable(&self) -> bool;
}

/// Runs every case, each on a new store. Panics, naming the case, at the first violation.
pub async fn run_all<H: StoreHarness>(harness: &mut H) {
    new_store_is_empty(harness).await;
    append_and_read_back(harness).await;
    reads_across_batch_boundaries(harness).await;
    truncate_at_first_index(harness).await;
    truncate_at_middle_index(harness).await;
    truncate_at_last_index(harness).await;
    truncate_after_purge(harness).await;
    purge_then_append(harness).await;
    purge_past_end_then_append(harness).await;
    write_groups_through_the_store(harness).await;
    write_groups_through_the_default(harness).await;
    hard_state_round_trips(harness).await;
    bounds_after_each_operation(harness).await;
    out_of_range_reads(harness).await;
    rejected_appends_change_nothing(harness).await;
    rejected_write_group_changes_nothing(harness).await;
}

/// A new store holds nothing, reports [`LogBounds::EMPTY`] and the default hard state, and a
/// reopened new store is still empty.
pub async fn new_store_is_empty<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "new_store_is_empty").await;
    session.verify().await;
    let bounds = session.bounds().await;
    session.check(bounds == LogBounds::EMPTY, format!("bounds are {bounds:?}"));
}

/// Entries appended in one batch read back whole and in every sub-range, before and after a
/// reopen; a second batch follows the first.
pub async fn append_and_read_back<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "append_and_read_back").await;
    session.append(entries(1..=10, 1)).await;
    session.check_all_ranges(LogIndex(1)..LogIndex(11)).await;
    session.append(entries(11..=12, 2)).await;
    session.check_all_ranges(LogIndex(1)..LogIndex(13)).await;
}

/// Reads that start and end inside different append batches (of 1, 3, 7 and 2 entries, one
/// with a 100 KiB payload) return exactly the entries asked for.
pub async fn reads_across_batch_boundaries<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "reads_across_batch_boundaries").await;
    session.append(entries(1..=1, 1)).await;
    session.append(entries(2..=4, 1)).await;
    let mut third = entries(5..=11, 2);
    third[3].payload = EntryPayload::Command(vec![0xA5; 100 * 1024].into());
    session.append(third).await;
    session.append(entries(12..=13, 3)).await;
    session.check_all_ranges(LogIndex(1)..LogIndex(14)).await;
}

/// Truncating at the first index empties the log; the next append starts at that index again
/// with new content.
pub async fn truncate_at_first_index<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "truncate_at_first_index").await;
    session.append(entries(1..=10, 1)).await;
    session.truncate(LogIndex(1)).await;
    session.append(entries(1..=3, 2)).await;
    session.check_all_ranges(LogIndex(1)..LogIndex(4)).await;
}

/// Truncating in the middle keeps the prefix; the replacement entries (of a new term) are what
/// reads return afterwards, never the old ones.
pub async fn truncate_at_middle_index<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "truncate_at_middle_index").await;
    session.append(entries(1..=10, 1)).await;
    session.truncate(LogIndex(5)).await;
    session.append(entries(5..=12, 2)).await;
    session.check_all_ranges(LogIndex(1)..LogIndex(13)).await;
}

/// Truncating at the last index removes only that entry; truncating past the end changes
/// nothing.
pub async fn truncate_at_last_index<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "truncate_at_last_index").await;
    session.append(entries(1..=10, 1)).await;
    session.truncate(LogIndex(10)).await;
    session.truncate(LogIndex(10)).await;
    session.truncate(LogIndex(15)).await;
    session.append(entries(10..=11, 3)).await;
}

/// On a purged log, truncation at the first held index empties the log and keeps the purge
/// point; the next append starts there.
pub async fn truncate_after_purge<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "truncate_after_purge").await;
    session.append(entries(1..=10, 1)).await;
    session.purge(LogIndex(4)).await;
    session.truncate(LogIndex(5)).await;
    session.append(entries(5..=6, 2)).await;
}

/// Purging a prefix moves the first index; purging again below it changes nothing; appends go
/// on after the last entry as before.
pub async fn purge_then_append<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "purge_then_append").await;
    session.append(entries(1..=10, 1)).await;
    session.purge(LogIndex(4)).await;
    session.purge(LogIndex(2)).await;
    session.append(entries(11..=12, 1)).await;
    session.purge(LogIndex(11)).await;
    session.append(entries(13..=13, 2)).await;
}

/// Purging past the last entry (of a new log, and of one with entries) empties the log with
/// `first = up_to + 1`; the next append starts there, and no hole appears between the old
/// entries and the new ones, even after a reopen.
pub async fn purge_past_end_then_append<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "purge_past_end_then_append").await;
    session.purge(LogIndex(2)).await;
    session.append(entries(3..=5, 1)).await;
    session.purge(LogIndex(9)).await;
    session.append(entries(10..=12, 2)).await;
    session.purge(LogIndex(20)).await;
    session.append(entries(21..=21, 3)).await;
}

/// [`LogStore::write`] as the store implements it: entries only, hard state only, everything
/// together, and an empty group.
pub async fn write_groups_through_the_store<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "write_groups_through_the_store").await;
    write_groups(&mut session, WritePath::Store).await;
}

/// The trait's default [`LogStore::write`] over the store's own `truncate`, `append` and
/// `save_hard_state`: the same groups must give the same results.
pub async fn write_groups_through_the_default<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "write_groups_through_the_default").await;
    write_groups(&mut session, WritePath::Default).await;
}

async fn write_groups<H: StoreHarness>(session: &mut Session<'_, H>, path: WritePath) {
    let group = |truncate_from: Option<u64>, entries: Vec<Entry>, hard_state| LogWrite {
        truncate_from: truncate_from.map(LogIndex),
        entries,
        hard_state,
    };
    let hard_state = |term: u64, vote: Option<u64>, commit: u64| HardState {
        term: Term(term),
        vote: vote.map(NodeId),
        commit: LogIndex(commit),
    };
    session
        .write(path, group(None, entries(1..=4, 1), None))
        .await;
    session
        .write(path, group(None, vec![], Some(hard_state(1, Some(2), 2))))
        .await;
    session.write(path, LogWrite::default()).await;
    session
        .write(
            path,
            group(Some(4), entries(4..=6, 2), Some(hard_state(2, None, 3))),
        )
        .await;
    session
        .write(
            path,
            group(Some(7), vec![], Some(hard_state(2, Some(3), 3))),
        )
        .await;
    session
        .write(path, group(Some(5), entries(5..=5, 3), None))
        .await;
    session
        .write(
            path,
            group(None, entries(6..=8, 3), Some(hard_state(3, None, 8))),
        )
        .await;
}

/// Hard states round-trip exactly: every field, a vote given and the vote cleared by a new term.
pub async fn hard_state_round_trips<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "hard_state_round_trips").await;
    session.append(entries(1..=3, 1)).await;
    let states = [
        (1, None, 0),
        (1, Some(7), 0),
        (2, None, 1),
        (2, Some(u64::MAX), 2),
        (u64::MAX - 1, Some(1), 3),
    ];
    for (term, vote, commit) in states {
        let hard_state = HardState {
            term: Term(term),
            vote: vote.map(NodeId),
            commit: LogIndex(commit),
        };
        session.save_hard_state(hard_state).await;
    }
}

/// The bounds match the model after every kind of operation, including the transitions to and
/// from an empty log.
pub async fn bounds_after_each_operation<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "bounds_after_each_operation").await;
    let expected = |first: u64, last: u64| LogBounds {
        first: LogIndex(first),
        last: LogIndex(last),
    };
    let steps: [(Step, LogBounds); 9] = [
        (Step::Append(1, 3, 1), expected(1, 3)),
        (Step::Append(4, 5, 1), expected(1, 5)),
        (Step::Truncate(4), expected(1, 3)),
        (Step::Purge(2), expected(3, 3)),
        (Step::Purge(3), expected(4, 3)),
        (Step::Append(4, 4, 2), expected(4, 4)),
        (Step::Purge(6), expected(7, 6)),
        (Step::Append(7, 8, 2), expected(7, 8)),
        (Step::Truncate(7), expected(7, 6)),
    ];
    for (step, bounds) in steps {
        match step {
            Step::Append(first, last, term) => session.append(entries(first..=last, term)).await,
            Step::Truncate(from) => session.truncate(LogIndex(from)).await,
            Step::Purge(up_to) => session.purge(LogIndex(up_to)).await,
        }
        // A reopen may bring purged entries back; compare what must hold exactly.
        let actual = session.bounds().await;
        session.check(
            actual.last == bounds.last && actual.first <= bounds.first,
            format!("after {step:?} the bounds are {actual:?}, expected {bounds:?}"),
        );
    }
}

/// Reads outside the held entries fail with `OutOfRange`: past the end, before the first index
/// after a purge, on an empty log; a range that ends before it starts is refused; empty ranges
/// inside the bounds return nothing.
pub async fn out_of_range_reads<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "out_of_range_reads").await;
    session.expect_out_of_range(1..2).await;
    session.expect_entries(1..1).await;
    session.append(entries(1..=10, 1)).await;
    session.expect_out_of_range(1..12).await;
    session.expect_out_of_range(11..12).await;
    session.expect_out_of_range(0..3).await;
    session.expect_entries(11..11).await;
    session.expect_entries(4..4).await;
    session.purge(LogIndex(5)).await;
    if session.bounds().await.first == LogIndex(6) {
        session.expect_out_of_range(5..7).await;
        session.expect_out_of_range(1..11).await;
    }
    session.expect_entries(6..11).await;
    let reversed = session.store().entries(LogIndex(8)..LogIndex(7)).await;
    session.check(
        matches!(
            reversed,
            Err(StorageError::OutOfRange { .. } | StorageError::InvalidArgument(_))
        ),
        format!("reading i8..i7 gave {reversed:?}"),
    );
}

/// Appends that would leave a hole, overlap held entries, skip an index, or start anywhere but
/// right after the last entry fail with `InvalidArgument` and change nothing; so does a
/// truncation below the purge point.
pub async fn rejected_appends_change_nothing<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "rejected_appends_change_nothing").await;
    session
        .reject_append(entries(2..=3, 1), "a hole on a new store")
        .await;
    session.reject_append(entries(0..=1, 1), "index 0").await;
    session.append(entries(1..=5, 1)).await;
    session
        .reject_append(entries(7..=8, 1), "a hole after i5")
        .await;
    session
        .reject_append(entries(5..=6, 1), "an overlap at i5")
        .await;
    session
        .reject_append(entries(1..=1, 1), "an overlap at i1")
        .await;
    let mut skipping = entries(6..=8, 1);
    skipping.remove(1);
    session.reject_append(skipping, "i6 then i8").await;
    session.purge(LogIndex(3)).await;
    if session.bounds().await.first == LogIndex(4) {
        let result = session.store().truncate(LogIndex(3)).await;
        session
            .expect_invalid(result, "truncate at the purge point")
            .await;
    }
    session.purge(LogIndex(8)).await;
    session
        .reject_append(entries(6..=9, 1), "below the purge point")
        .await;
    session
        .reject_append(entries(10..=10, 1), "a hole after a purge")
        .await;
    session.append(entries(9..=9, 2)).await;
}

/// A write group whose entries do not follow the truncation point, or that would take the hard
/// state backwards, is refused as a whole: the truncation in it does not happen either.
pub async fn rejected_write_group_changes_nothing<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "rejected_write_group_changes_nothing").await;
    session.append(entries(1..=6, 1)).await;
    let saved = HardState {
        term: Term(2),
        vote: Some(NodeId(1)),
        commit: LogIndex(2),
    };
    session.save_hard_state(saved).await;
    let hole_after_truncation = LogWrite {
        truncate_from: Some(LogIndex(4)),
        entries: entries(6..=7, 2),
        hard_state: None,
    };
    let result = session.store().write(&hole_after_truncation).await;
    session
        .expect_invalid(result, "entries after a hole behind the truncation")
        .await;
    let hard_state_backwards = LogWrite {
        truncate_from: Some(LogIndex(5)),
        entries: entries(5..=5, 2),
        hard_state: Some(HardState {
            term: Term(1),
            ..saved
        }),
    };
    let result = session.store().write(&hard_state_backwards).await;
    session
        .expect_invalid(result, "a hard state of an older term")
        .await;
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Append(u64, u64, u64),
    Truncate(u64),
    Purge(u64),
}

/// Which `write` a case exercises.
#[derive(Clone, Copy, Debug)]
enum WritePath {
    /// The store's own (usually overridden, atomic) `write`.
    Store,
    /// The trait's default `write`, built on the store's other methods.
    Default,
}

/// Entries `indexes` of `term`, with payloads that name their index and term (every fifth one
/// blank), so that an entry read back from the wrong position or term never compares equal.
pub fn entries(indexes: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    indexes
        .map(|index| Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: if index % 5 == 0 {
                EntryPayload::Blank
            } else {
                EntryPayload::Command(format!("entry {index} of term {term}").into())
            },
        })
        .collect()
}

/// What the store must hold.
///
/// Invariant: `log` holds exactly `first..=last` of the live log plus purged entries that may
/// still come back (at or after `reappear_from`); it never holds an index past `last`.
#[derive(Debug)]
struct Model {
    first: LogIndex,
    last: LogIndex,
    log: BTreeMap<LogIndex, Entry>,
    hard_state: HardState,
}

impl Model {
    fn new() -> Model {
        Model {
            first: LogBounds::EMPTY.first,
            last: LogBounds::EMPTY.last,
            log: BTreeMap::new(),
            hard_state: HardState::default(),
        }
    }

    fn apply(&mut self, write: &LogWrite) {
        if let Some(from) = write.truncate_from {
            self.log.retain(|index, _| *index < from);
            self.last = self.last.min(from.prev());
        }
        for entry in &write.entries {
            self.log.insert(entry.index, entry.clone());
            self.last = entry.index;
        }
        if let Some(hard_state) = write.hard_state {
            self.hard_state = hard_state;
        }
    }

    fn purge(&mut self, up_to: LogIndex) {
        if up_to < self.first {
            return;
        }
        self.first = up_to.next();
        if up_to > self.last {
            // Entries held before now sit below a gap: they can never come back.
            self.log.clear();
            self.last = up_to;
        }
    }
}

/// One case in progress: the harness, the open store and the model it must match.
struct Session<'h, H: StoreHarness> {
    harness: &'h mut H,
    store: Option<Arc<dyn LogStore>>,
    model: Model,
    case: &'static str,
}

impl<'h, H: StoreHarness> Session<'h, H> {
    async fn start(harness: &'h mut H, case: &'static str) -> Session<'h, H> {
        let store = match harness.create().await {
            Ok(store) => store,
            Err(error) => panic!("{case}: creating a store failed: {error}"),
        };
        Session {
            harness,
            store: Some(store),
            model: Model::new(),
            case,
        }
    }

    fn store(&self) -> &dyn LogStore {
        self.store
            .as_deref()
            .expect("the store is open between operations")
    }

    #[track_caller]
    fn check(&self, condition: bool, what: String) {
        assert!(condition, "{}: {what}", self.case);
    }

    #[track_caller]
    fn ok<T>(&self, result: Result<T, StorageError>, what: &str) -> T {
        match result {
            Ok(value) => value,
            Err(error) => panic!("{}: {what} failed: {error}", self.case),
        }
    }

    async fn bounds(&self) -> LogBounds {
        let result = self.store().bounds().await;
        self.ok(result, "bounds()")
    }

    async fn append(&mut self, entries: Vec<Entry>) {
        let result = self.store().append(&entries).await;
        let what = format!("append({:?})", index_span(&entries));
        self.ok(result, &what);
        self.model.apply(&LogWrite {
            entries,
            ..LogWrite::default()
        });
        self.verify().await;
    }

    async fn truncate(&mut self, from: LogIndex) {
        let result = self.store().truncate(from).await;
        self.ok(result, &format!("truncate({from})"));
        self.model.apply(&LogWrite {
            truncate_from: Some(from),
            ..LogWrite::default()
        });
        self.verify().await;
    }

    async fn purge(&mut self, up_to: LogIndex) {
        let result = self.store().purge(up_to).await;
        self.ok(result, &format!("purge({up_to})"));
        self.model.purge(up_to);
        self.verify().await;
    }

    async fn save_hard_state(&mut self, hard_state: HardState) {
        let result = self.store().save_hard_state(&hard_state).await;
        self.ok(result, &format!("save_hard_state({hard_state:?})"));
        self.model.hard_state = hard_state;
        self.verify().await;
    }

    async fn write(&mut self, path: WritePath, write: LogWrite) {
        let result = match path {
            WritePath::Store => self.store().write(&write).await,
            WritePath::Default => {
                let store = self.store.clone().expect("the store is open");
                DefaultWrite(store).write(&write).await
            }
        };
        self.ok(result, &format!("{path:?} write of {write:?}"));
        self.model.apply(&write);
        self.verify().await;
    }

    async fn reject_append(&mut self, entries: Vec<Entry>, what: &str) {
        let result = self.store().append(&entries).await;
        self.expect_invalid(result, &format!("an append with {what}"))
            .await;
    }

    /// Checks that `result` is `InvalidArgument` and that the store still matches the model.
    async fn expect_invalid(&mut self, result: Result<(), StorageError>, what: &str) {
        self.check(
            matches!(result, Err(StorageError::InvalidArgument(_))),
            format!("{what} should fail with InvalidArgument, got {result:?}"),
        );
        self.verify().await;
    }

    async fn expect_out_of_range(&self, range: Range<u64>) {
        let requested = LogIndex(range.start)..LogIndex(range.end);
        let result = self.store().entries(requested.clone()).await;
        self.check(
            matches!(result, Err(StorageError::OutOfRange { .. })),
            format!("reading {requested:?} should be out of range, got {result:?}"),
        );
    }

    async fn expect_entries(&self, range: Range<u64>) {
        let requested = LogIndex(range.start)..LogIndex(range.end);
        let result = self.store().entries(requested.clone()).await;
        let actual = self.ok(result, &format!("entries({requested:?})"));
        let expected: Vec<Entry> = self
            .model
            .log
            .range(requested)
            .map(|(_, e)| e.clone())
            .collect();
        self.check(
            actual == expected,
            format!("entries({range:?}) returned {:?}", index_span(&actual)),
        );
    }

    /// Reads every sub-range of `range` and compares it with the model.
    async fn check_all_ranges(&self, range: Range<LogIndex>) {
        for start in range.start.0..=range.end.0 {
            for end in start..=range.end.0 {
                self.expect_entries(start..end).await;
            }
        }
    }

    /// Compares the store with the model; for a durable store, reopens it and compares again.
    async fn verify(&mut self) {
        self.compare("").await;
        if self.harness.durable() {
            let store = self.store.take().expect("the store is open");
            let reopened = self.harness.reopen(store).await;
            let reopened = self.ok(reopened, "reopen");
            self.store = Some(reopened);
            self.compare(" after a reopen").await;
        }
    }

    async fn compare(&mut self, when: &str) {
        let bounds = self.bounds().await;
        let model = &self.model;
        self.check(
            bounds.last == model.last && bounds.first <= model.first && bounds.first.0 >= 1,
            format!(
                "bounds{when} are {bounds:?}, expected first {} and last {}",
                model.first, model.last
            ),
        );
        if bounds.first < model.first {
            // Purged entries came back (allowed): they must be the ones that were held.
            self.check(
                (bounds.first.0..model.first.0).all(|i| model.log.contains_key(&LogIndex(i))),
                format!(
                    "bounds{when} are {bounds:?}: entries before {} never existed",
                    model.first
                ),
            );
            self.model.first = bounds.first;
        }
        let result = self.store().entries(bounds.first..bounds.last.next()).await;
        let held = self.ok(result, &format!("reading every held entry{when}"));
        let expected: Vec<&Entry> = self
            .model
            .log
            .range(bounds.first..)
            .map(|(_, e)| e)
            .collect();
        self.check(
            held.iter().eq(expected.iter().copied()),
            format!(
                "held entries{when} are {:?}, expected {:?}",
                held.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
                expected
                    .iter()
                    .map(|e| (e.index, e.term))
                    .collect::<Vec<_>>()
            ),
        );
        let result = self.store().load_hard_state().await;
        let hard_state = self.ok(result, "load_hard_state()");
        self.check(
            hard_state == self.model.hard_state,
            format!(
                "hard state{when} is {hard_state:?}, expected {:?}",
                self.model.hard_state
            ),
        );
    }
}

fn index_span(entries: &[Entry]) -> Option<(LogIndex, LogIndex)> {
    Some((entries.first()?.index, entries.last()?.index))
}

/// A store seen through the trait's default `write` (every other method forwards).
struct DefaultWrite(Arc<dyn LogStore>);

#[async_trait]
impl LogStore for DefaultWrite {
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.0.append(entries).await
    }
    async fn truncate(&self, from: LogIndex) -> Result<(), StorageError> {
        self.0.truncate(from).await
    }
    async fn purge(&self, up_to: LogIndex) -> Result<(), StorageError> {
        self.0.purge(up_to).await
    }
    async fn entries(&self, range: Range<LogIndex>) -> Result<Vec<Entry>, StorageError> {
        self.0.entries(range).await
    }
    async fn bounds(&self) -> Result<LogBounds, StorageError> {
        self.0.bounds().await
    }
    async fn save_hard_state(&self, hard_state: &HardState) -> Result<(), StorageError> {
        self.0.save_hard_state(hard_state).await
    }
    async fn load_hard_state(&self) -> Result<HardState, StorageError> {
        self.0.load_hard_state().await
    }
    async fn begin_snapshot(&self) -> Result<Box<dyn crate::snapshot::SnapshotSink>, StorageError> {
        self.0.begin_snapshot().await
    }
    async fn snapshot(&self) -> Result<Option<crate::snapshot::SnapshotMeta>, StorageError> {
        self.0.snapshot().await
    }
    async fn read_snapshot(
        &self,
        meta: &crate::snapshot::SnapshotMeta,
        offset: u64,
        bytes_max: usize,
    ) -> Result<bytes::Bytes, StorageError> {
        self.0.read_snapshot(meta, offset, bytes_max).await
    }
}
