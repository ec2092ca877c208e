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
//!   the purge point;
//! - entries of every payload kind (blank, command, membership, session command) read back
//!   exactly.
//!
//! For snapshots, the model holds the latest snapshot's meta and data, and every check compares
//! `snapshot()` with it and reads its data back whole. Beyond the trait's documentation the
//! suite requires:
//!
//! - a new store has no snapshot, and `read_snapshot` of a snapshot never finished is
//!   [`StorageError::SnapshotNotHeld`], as is a meta that names a held snapshot's index and term
//!   with another length or checksum;
//! - `read_snapshot(meta, offset, bytes_max)` returns exactly `min(bytes_max, length - offset)`
//!   bytes, and nothing at or past the end;
//! - after a successful `finish`, `snapshot()` is the finished meta when its last index is above
//!   the previous latest's, and the previous latest otherwise (at an equal index either one, as
//!   long as its data reads back);
//! - a `finish` whose data does not match the meta's length or checksum fails with
//!   [`StorageError::Corrupt`] and changes nothing; a sink dropped unfinished changes nothing;
//! - a replaced snapshot reads back as `SnapshotNotHeld` or as exactly its own data (a store may
//!   keep older snapshots a while: a leader may be streaming one).
//!
//! The suite never keeps a sink open across a reopen: a store may clean up unfinished sinks when
//! it opens.
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

use crate::membership::Membership;
use crate::snapshot::{checksum, SnapshotMeta, SnapshotSink};
use crate::storage::{LogBounds, LogStore, LogWrite, StorageError};
use crate::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};
use async_trait::async_trait;
use bytes::Bytes;
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
    /// `store` and no open snapshot sink, so dropping it releases the store (its files, locks
    /// and threads).
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
    membership_entries_round_trip(harness).await;
    new_store_has_no_snapshot(harness).await;
    snapshot_round_trips_in_chunks(harness).await;
    empty_snapshot_round_trips(harness).await;
    mismatched_snapshot_is_corrupt_and_changes_nothing(harness).await;
    older_snapshot_never_replaces_newer(harness).await;
    two_sinks_open_at_once(harness).await;
    dropped_sink_leaves_nothing(harness).await;
    read_of_unknown_or_replaced_snapshot(harness).await;
    install_snapshot_past_the_log(harness).await;
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

/// Membership entries (a plain configuration, a joint one with learners and removed nodes, and
/// one with large IDs) and session commands read back exactly among commands and blanks,
/// appended alone, in a batch, and through a write group that truncates.
pub async fn membership_entries_round_trip<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "membership_entries_round_trip").await;
    let mut batch = entries(1..=6, 1);
    batch[1].payload = EntryPayload::Membership(Membership::new([NodeId(1)]));
    batch[3].payload = EntryPayload::Membership(joint_membership());
    batch[4].payload = session_command(u64::MAX, 1 << 40, b"in a session");
    session.append(batch).await;
    let mut single = entries(7..=7, 1);
    single[0].payload = EntryPayload::Membership(Membership::new([NodeId(u64::MAX), NodeId(2)]));
    session.append(single).await;
    session.check_all_ranges(LogIndex(1)..LogIndex(8)).await;
    let mut replacement = entries(6..=8, 2);
    replacement[0].payload = EntryPayload::Membership(Membership::new([NodeId(4), NodeId(5)]));
    replacement[1].payload = session_command(7, 1, b"");
    session
        .write(
            WritePath::Store,
            LogWrite {
                truncate_from: Some(LogIndex(6)),
                entries: replacement,
                hard_state: None,
            },
        )
        .await;
    session.check_all_ranges(LogIndex(1)..LogIndex(9)).await;
}

/// A new store has no snapshot, before and after a reopen, and holds no data for a snapshot
/// nobody made.
pub async fn new_store_has_no_snapshot<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "new_store_has_no_snapshot").await;
    session.verify().await;
    let latest = session.store().snapshot().await;
    session.check(
        matches!(latest, Ok(None)),
        format!("snapshot() is {latest:?}"),
    );
    let never_made = snapshot_meta(7, 1, &snapshot_data(7, 100));
    session
        .expect_not_held(&never_made, "a snapshot never made")
        .await;
}

/// A snapshot of a bit over 1 MiB, written in pieces of 1 byte to 1.1 MB (and an empty
/// write), finishes as the latest; it reads back whole and in ranges: from the start, across a
/// piece boundary, in the middle, overlapping the end, at the end, past the end, zero bytes,
/// and all at once; and all of that again after a reopen.
pub async fn snapshot_round_trips_in_chunks<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "snapshot_round_trips_in_chunks").await;
    session.append(entries(1..=40, 3)).await;
    let data = snapshot_data(40, SNAPSHOT_ROUND_TRIP_BYTES);
    let mut meta = snapshot_meta(40, 3, &data);
    meta.membership = joint_membership();
    let mut sink = session.begin_snapshot().await;
    session
        .write_pieces(&mut sink, &data, &[1, 4095, 0, 65_536, 1_100_000])
        .await;
    session.finish_snapshot(sink, &meta, &data).await;
    session.verify().await;
    let length = data.len() as u64;
    let ranges: [(u64, usize); 9] = [
        (0, 1000),
        (4000, 200),
        (length / 2, 10_000),
        (length - 10, 100),
        (length, 10),
        (length + 1, 10),
        (length + 1_000_000, usize::MAX),
        (5, 0),
        (0, data.len() + 1),
    ];
    for (offset, bytes_max) in ranges {
        session.expect_read(&meta, offset, bytes_max, &data).await;
    }
}

/// A snapshot with no data (a state machine with no state) finishes, survives a reopen and
/// reads back as nothing.
pub async fn empty_snapshot_round_trips<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "empty_snapshot_round_trips").await;
    let meta = snapshot_meta(3, 1, &[]);
    let sink = session.begin_snapshot().await;
    session.finish_snapshot(sink, &meta, &[]).await;
    session.verify().await;
    session.expect_read(&meta, 0, 10, &[]).await;
}

/// Finishing with a meta whose length is one byte more or less than the data, or whose checksum
/// differs, fails with `Corrupt` and leaves the previous latest (data included) in place, even
/// though the rejected snapshot is at a higher index; a correct snapshot then still finishes.
pub async fn mismatched_snapshot_is_corrupt_and_changes_nothing<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(
        harness,
        "mismatched_snapshot_is_corrupt_and_changes_nothing",
    )
    .await;
    let first = snapshot_data(5, 3000);
    let first_meta = snapshot_meta(5, 1, &first);
    let sink = session.begin_snapshot().await;
    let sink = session.write_all(sink, &first).await;
    session.finish_snapshot(sink, &first_meta, &first).await;

    let data = snapshot_data(9, 70_000);
    let good = snapshot_meta(9, 2, &data);
    let wrong = [
        (
            "one byte too many",
            SnapshotMeta {
                data_bytes: good.data_bytes + 1,
                ..good.clone()
            },
        ),
        (
            "one byte too few",
            SnapshotMeta {
                data_bytes: good.data_bytes - 1,
                ..good.clone()
            },
        ),
        (
            "a wrong checksum",
            SnapshotMeta {
                checksum: good.checksum ^ 1,
                ..good.clone()
            },
        ),
    ];
    for (what, meta) in wrong {
        let sink = session.begin_snapshot().await;
        let sink = session.write_all(sink, &data).await;
        let result = sink.finish(&meta).await;
        session.check(
            matches!(result, Err(StorageError::Corrupt(_))),
            format!("finishing with {what} should fail with Corrupt, got {result:?}"),
        );
        session.verify().await;
        session.expect_not_held(&meta, what).await;
    }
    let sink = session.begin_snapshot().await;
    let sink = session.write_all(sink, &data).await;
    session.finish_snapshot(sink, &good, &data).await;
    session.verify().await;
}

/// A snapshot at a lower index finished after a newer one does not replace it; one at the same
/// index with other data replaces it or not, but what `snapshot()` names reads back as its own
/// data.
pub async fn older_snapshot_never_replaces_newer<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "older_snapshot_never_replaces_newer").await;
    let newer = snapshot_data(10, 5000);
    let newer_meta = snapshot_meta(10, 2, &newer);
    let sink = session.begin_snapshot().await;
    let sink = session.write_all(sink, &newer).await;
    session.finish_snapshot(sink, &newer_meta, &newer).await;

    let older = snapshot_data(7, 6000);
    let sink = session.begin_snapshot().await;
    let sink = session.write_all(sink, &older).await;
    session
        .finish_snapshot(sink, &snapshot_meta(7, 2, &older), &older)
        .await;
    session.verify().await;

    let same_index = snapshot_data(10_010, 4000);
    let same_index_meta = snapshot_meta(10, 2, &same_index);
    let sink = session.begin_snapshot().await;
    let sink = session.write_all(sink, &same_index).await;
    let result = sink.finish(&same_index_meta).await;
    session.ok(result, "finishing a snapshot at the latest's index");
    let result = session.store().snapshot().await;
    let latest = session.ok(result, "snapshot()");
    if latest.as_ref() == Some(&same_index_meta) {
        session.model.snapshot = Some((same_index_meta, same_index.into()));
    }
    session.verify().await;
}

/// Two sinks written in turns finish in either order: the higher index ends up the latest, with
/// its own data (no bytes of the other); a third sink dropped meanwhile changes nothing.
pub async fn two_sinks_open_at_once<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "two_sinks_open_at_once").await;
    for (low, high, high_first) in [(8, 12, false), (15, 20, true)] {
        let (low_data, high_data) = (snapshot_data(low, 9000), snapshot_data(high, 11_000));
        let mut low_sink = session.begin_snapshot().await;
        let mut high_sink = session.begin_snapshot().await;
        let mut dropped = session.begin_snapshot().await;
        for piece in 0..3 {
            let write = low_sink
                .write(&low_data[piece * 3000..(piece + 1) * 3000])
                .await;
            session.ok(write, "writing the first sink");
            let write = high_sink
                .write(&high_data[piece * 3000..(piece + 1) * 3000])
                .await;
            session.ok(write, "writing the second sink");
            let write = dropped.write(&snapshot_data(99, 1000)).await;
            session.ok(write, "writing the third sink");
        }
        let write = high_sink.write(&high_data[9000..]).await;
        session.ok(write, "writing the second sink");
        drop(dropped);
        let low_meta = snapshot_meta(low, 1, &low_data);
        let high_meta = snapshot_meta(high, 1, &high_data);
        if high_first {
            session
                .finish_snapshot(high_sink, &high_meta, &high_data)
                .await;
            session
                .finish_snapshot(low_sink, &low_meta, &low_data)
                .await;
        } else {
            session
                .finish_snapshot(low_sink, &low_meta, &low_data)
                .await;
            session
                .finish_snapshot(high_sink, &high_meta, &high_data)
                .await;
        }
        session.verify().await;
    }
}

/// A sink dropped unfinished, with or without data, leaves no snapshot on a new store and does
/// not disturb the latest one on a store that has one, across reopens.
pub async fn dropped_sink_leaves_nothing<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "dropped_sink_leaves_nothing").await;
    let sink = session.begin_snapshot().await;
    drop(sink);
    let sink = session.begin_snapshot().await;
    let sink = session.write_all(sink, &snapshot_data(4, 200_000)).await;
    drop(sink);
    session.verify().await;

    let data = snapshot_data(5, 2500);
    let meta = snapshot_meta(5, 1, &data);
    let sink = session.begin_snapshot().await;
    let sink = session.write_all(sink, &data).await;
    session.finish_snapshot(sink, &meta, &data).await;
    let sink = session.begin_snapshot().await;
    let sink = session.write_all(sink, &snapshot_data(6, 3000)).await;
    drop(sink);
    session.verify().await;
}

/// `read_snapshot` of a snapshot never made, or of the latest's index and term with another
/// length or checksum, is `SnapshotNotHeld`; a replaced snapshot is `SnapshotNotHeld` or its
/// own data, never another's.
pub async fn read_of_unknown_or_replaced_snapshot<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "read_of_unknown_or_replaced_snapshot").await;
    let mut made = Vec::new();
    for index in [10, 20, 30] {
        let data = snapshot_data(index, 4000 + index as usize);
        let meta = snapshot_meta(index, 2, &data);
        let sink = session.begin_snapshot().await;
        let sink = session.write_all(sink, &data).await;
        session.finish_snapshot(sink, &meta, &data).await;
        made.push((meta, data));
    }
    session.verify().await;
    let (latest, _) = made.last().expect("three snapshots");
    let unknown = [
        ("a snapshot never made", snapshot_meta(99, 2, &[1, 2, 3])),
        (
            "an index between two snapshots",
            SnapshotMeta {
                last_index: LogIndex(25),
                ..latest.clone()
            },
        ),
        (
            "the latest's index in another term",
            SnapshotMeta {
                last_term: Term(3),
                ..latest.clone()
            },
        ),
        (
            "the latest's index and term with another length",
            SnapshotMeta {
                data_bytes: latest.data_bytes + 1,
                ..latest.clone()
            },
        ),
        (
            "the latest's index and term with another checksum",
            SnapshotMeta {
                checksum: latest.checksum ^ 0x8000_0000,
                ..latest.clone()
            },
        ),
    ];
    for (what, meta) in &unknown {
        session.expect_not_held(meta, what).await;
    }
    for (meta, data) in &made[..2] {
        let result = session.store().read_snapshot(meta, 0, data.len()).await;
        session.check(
            match &result {
                Ok(read) => read[..] == data[..],
                Err(StorageError::SnapshotNotHeld {
                    last_index,
                    last_term,
                }) => (*last_index, *last_term) == (meta.last_index, meta.last_term),
                Err(_) => false,
            },
            format!(
                "reading the replaced snapshot at {} should give SnapshotNotHeld or its own \
                 data, got {:?}",
                meta.last_index,
                result.map(|read| read.len())
            ),
        );
    }
}

/// A follower whose log ends at i5 installs a snapshot at i20, purges its log up to it, commits
/// it and appends after it: a log purged past its end, whose first index is above 1, with the
/// commit index at the snapshot, reopens as it was.
pub async fn install_snapshot_past_the_log<H: StoreHarness>(harness: &mut H) {
    let mut session = Session::start(harness, "install_snapshot_past_the_log").await;
    session.append(entries(1..=5, 1)).await;
    session
        .save_hard_state(HardState {
            term: Term(1),
            vote: Some(NodeId(2)),
            commit: LogIndex(3),
        })
        .await;
    let data = snapshot_data(20, 50_000);
    let meta = snapshot_meta(20, 2, &data);
    let sink = session.begin_snapshot().await;
    let sink = session.write_all(sink, &data).await;
    session.finish_snapshot(sink, &meta, &data).await;
    session.verify().await;
    session.purge(LogIndex(20)).await;
    session
        .save_hard_state(HardState {
            term: Term(2),
            vote: None,
            commit: LogIndex(20),
        })
        .await;
    session.append(entries(21..=23, 2)).await;
    let bounds = session.bounds().await;
    session.check(
        bounds.last == LogIndex(23) && bounds.first == LogIndex(21),
        format!("bounds are {bounds:?} after the install"),
    );
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

/// Bytes of the snapshot in [`snapshot_round_trips_in_chunks`]: above 1 MiB, so that a store
/// that buffers a chunk of 1 MiB moves data more than once.
const SNAPSHOT_ROUND_TRIP_BYTES: usize = 1_300_000;
/// The largest read the suite's whole-snapshot checks make.
const SNAPSHOT_READ_BYTES_MAX: usize = 64 * 1024;

/// `bytes` bytes of snapshot data drawn from `seed`, so that data of two snapshots (or a
/// misplaced range of one) never compares equal.
fn snapshot_data(seed: u64, bytes: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The meta of a snapshot of `data` at `index` in `term`, with a three-voter membership and
/// a data format other than the default, which a store must keep like every other field.
fn snapshot_meta(index: u64, term: u64, data: &[u8]) -> SnapshotMeta {
    SnapshotMeta {
        last_index: LogIndex(index),
        last_term: Term(term),
        membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
        data_bytes: data.len() as u64,
        checksum: checksum(data),
        format_version: 7,
    }
}

/// A command in session `session` at `sequence`.
fn session_command(session: u64, sequence: u64, command: &'static [u8]) -> EntryPayload {
    EntryPayload::SessionCommand(crate::types::SessionCommand {
        tag: crate::types::SessionTag {
            session: crate::types::SessionId(session),
            sequence,
        },
        command: bytes::Bytes::from_static(command),
    })
}

/// A joint configuration with every set of [`Membership`] in use.
fn joint_membership() -> Membership {
    let set = |ids: &[u64]| ids.iter().copied().map(NodeId).collect();
    Membership {
        voters: set(&[1, 2, 4]),
        outgoing: set(&[1, 2, 3]),
        learners: set(&[5, 300]),
        removed: set(&[6]),
        nodes: [(NodeId(4), crate::membership::NodeMeta::at("127.0.0.1:7004"))].into(),
        incarnations: [(NodeId(3), crate::types::Incarnation(2))].into(),
        rejoining: set(&[3]),
    }
}

/// A short description of a snapshot meta for failure messages.
fn describe(meta: &SnapshotMeta) -> String {
    format!(
        "{}/{} ({} bytes, checksum {:08x})",
        meta.last_index, meta.last_term, meta.data_bytes, meta.checksum
    )
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
    /// The latest snapshot and its data.
    snapshot: Option<(SnapshotMeta, Bytes)>,
}

impl Model {
    fn new() -> Model {
        Model {
            first: LogBounds::EMPTY.first,
            last: LogBounds::EMPTY.last,
            log: BTreeMap::new(),
            hard_state: HardState::default(),
            snapshot: None,
        }
    }

    /// A snapshot finished: it becomes the latest when its index is above the latest's.
    fn finish_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) {
        let newer = self
            .snapshot
            .as_ref()
            .is_none_or(|(latest, _)| meta.last_index > latest.last_index);
        if newer {
            self.snapshot = Some((meta.clone(), Bytes::copy_from_slice(data)));
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

    async fn begin_snapshot(&self) -> Box<dyn SnapshotSink> {
        let result = self.store().begin_snapshot().await;
        self.ok(result, "begin_snapshot()")
    }

    /// Writes `data` into `sink` in pieces of the given sizes, then the rest in one piece.
    async fn write_pieces(&self, sink: &mut Box<dyn SnapshotSink>, data: &[u8], pieces: &[usize]) {
        let mut rest = data;
        for &piece in pieces.iter().chain([&usize::MAX]) {
            let (now, later) = rest.split_at(piece.min(rest.len()));
            let result = sink.write(now).await;
            self.ok(
                result,
                &format!("writing {} bytes of a snapshot", now.len()),
            );
            rest = later;
        }
        assert!(rest.is_empty());
    }

    /// Writes `data` into `sink` in pieces of 1000 bytes.
    async fn write_all(
        &self,
        mut sink: Box<dyn SnapshotSink>,
        data: &[u8],
    ) -> Box<dyn SnapshotSink> {
        for piece in data.chunks(1000) {
            let result = sink.write(piece).await;
            self.ok(result, "writing a snapshot");
        }
        sink
    }

    /// Finishes `sink` with `meta` (which must succeed), updates the model and compares. No
    /// reopen: other sinks may be open.
    async fn finish_snapshot(
        &mut self,
        sink: Box<dyn SnapshotSink>,
        meta: &SnapshotMeta,
        data: &[u8],
    ) {
        let result = sink.finish(meta).await;
        self.ok(
            result,
            &format!("finishing the snapshot {}", describe(meta)),
        );
        self.model.finish_snapshot(meta, data);
        self.compare("").await;
    }

    /// Reads `bytes_max` bytes of the snapshot `meta` (whose whole data is `data`) at `offset`
    /// and checks the answer is exactly the bytes there, fewer only at the end.
    async fn expect_read(&self, meta: &SnapshotMeta, offset: u64, bytes_max: usize, data: &[u8]) {
        let result = self.store().read_snapshot(meta, offset, bytes_max).await;
        let what = format!("read_snapshot({}, {offset}, {bytes_max})", describe(meta));
        let read = self.ok(result, &what);
        let start = offset.min(data.len() as u64) as usize;
        let end = start.saturating_add(bytes_max).min(data.len());
        self.check(
            read[..] == data[start..end],
            format!(
                "{what} returned {} bytes, expected bytes {start}..{end}{}",
                read.len(),
                if read.len() == end - start {
                    " (same length, other bytes)"
                } else {
                    ""
                }
            ),
        );
    }

    async fn expect_not_held(&self, meta: &SnapshotMeta, what: &str) {
        let result = self.store().read_snapshot(meta, 0, 100).await;
        self.check(
            matches!(
                &result,
                Err(StorageError::SnapshotNotHeld { last_index, last_term })
                    if (*last_index, *last_term) == (meta.last_index, meta.last_term)
            ),
            format!(
                "reading {what} ({}) should fail with SnapshotNotHeld, got {:?}",
                describe(meta),
                result.map(|read| read.len())
            ),
        );
    }

    /// Checks `snapshot()` against the model and reads the latest snapshot's data back whole.
    async fn compare_snapshot(&self, when: &str) {
        let result = self.store().snapshot().await;
        let latest = self.ok(result, "snapshot()");
        let expected = self.model.snapshot.as_ref().map(|(meta, _)| meta);
        self.check(
            latest.as_ref() == expected,
            format!(
                "the latest snapshot{when} is {:?}, expected {:?}",
                latest.as_ref().map(describe),
                expected.map(describe)
            ),
        );
        let Some((meta, data)) = &self.model.snapshot else {
            return;
        };
        let mut offset = 0;
        while offset < data.len() {
            let result = self
                .store()
                .read_snapshot(meta, offset as u64, SNAPSHOT_READ_BYTES_MAX)
                .await;
            let read = self.ok(result, &format!("reading the latest snapshot{when}"));
            let end = (offset + SNAPSHOT_READ_BYTES_MAX).min(data.len());
            self.check(
                read[..] == data[offset..end],
                format!(
                    "the latest snapshot{when} returned {} bytes at offset {offset} that are not \
                     bytes {offset}..{end} of its data",
                    read.len()
                ),
            );
            offset = end;
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
        self.compare_snapshot(when).await;
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
