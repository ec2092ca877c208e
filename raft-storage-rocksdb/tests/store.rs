//! Behaviour of `RocksLogStore` beyond the shared conformance suite: recovery refuses damaged
//! stores (and leaves them as they were), group commit coalesces concurrent calls, pipelined
//! calls apply in call order, the queue and option limits answer with clear errors, the
//! protocol invariants the store enforces, and how snapshot files are written, kept and
//! cleaned up.

use raft_core::{
    Entry, EntryPayload, HardState, LogBounds, LogIndex, LogStore, LogWrite, NodeId, StorageError,
    Term,
};
use raft_storage_rocksdb::{
    Finished, RocksLogStore, RocksLogStoreOptions, SnapshotFiles, SnapshotId, SnapshotOptions,
};
use std::path::Path;
use std::sync::{Arc, Mutex};

fn entries(indexes: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    indexes
        .map(|index| Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Command(format!("{index}@{term}").into()),
        })
        .collect()
}

fn open(directory: &Path) -> Result<RocksLogStore, StorageError> {
    RocksLogStore::open(directory, RocksLogStoreOptions::default())
}

fn hard_state(term: u64, vote: Option<u64>, commit: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: vote.map(NodeId),
        commit: LogIndex(commit),
    }
}

/// Opens the raw database of a closed store, to damage it the way a bug or a bad disk would.
fn raw_database(directory: &Path) -> rocksdb::DB {
    let options = rocksdb::Options::default();
    rocksdb::DB::open_cf(&options, directory.join("db"), ["log", "meta"]).expect("raw open")
}

fn raw_log_keys(directory: &Path) -> Vec<u64> {
    let db = raw_database(directory);
    let log = db.cf_handle("log").expect("log family");
    db.iterator_cf(log, rocksdb::IteratorMode::Start)
        .map(|item| u64::from_be_bytes(item.expect("raw read").0[..].try_into().unwrap()))
        .collect()
}

/// A closed store holding entries 1..=10 of term 1, with commit 4.
async fn store_with_ten_entries(directory: &Path) {
    let store = open(directory).expect("open");
    store
        .write(&LogWrite {
            truncate_from: None,
            entries: entries(1..=10, 1),
            hard_state: Some(hard_state(1, Some(1), 4)),
        })
        .await
        .expect("write");
}

fn expect_corrupt(directory: &Path, mentions: &str) {
    match open(directory) {
        Err(StorageError::Corrupt(message)) => assert!(
            message.contains(mentions),
            "the error should mention {mentions:?}: {message}"
        ),
        Err(other) => panic!("expected Corrupt mentioning {mentions:?}, got {other}"),
        Ok(_) => panic!("a damaged store opened (expected an error mentioning {mentions:?})"),
    }
}

/// Proves each kind of damage is reported as `Corrupt` with what was found, and that the
/// refused store is not repaired: its keys are exactly as the damage left them.
#[tokio::test]
async fn damaged_stores_are_refused_and_left_untouched() {
    let root = tempfile::tempdir().unwrap();
    type Damage = fn(&rocksdb::DB);
    let cases: [(&str, Damage, &str, Vec<u64>); 6] = [
        (
            "hole",
            |db| {
                db.delete_cf(db.cf_handle("log").unwrap(), 6u64.to_be_bytes())
                    .unwrap()
            },
            "hole: entry i6 is missing",
            vec![1, 2, 3, 4, 5, 7, 8, 9, 10],
        ),
        (
            "entry past the bounds",
            |db| {
                let value = [0, 0, 0, 0, 0, 0, 0, 1, 0];
                db.put_cf(db.cf_handle("log").unwrap(), 11u64.to_be_bytes(), value)
                    .unwrap()
            },
            "entry i11 is stored past the last index i10",
            (1..=11).collect(),
        ),
        (
            "half-applied purge",
            |db| {
                let mut bounds = [0u8; 16];
                bounds[..8].copy_from_slice(&3u64.to_be_bytes());
                bounds[8..].copy_from_slice(&10u64.to_be_bytes());
                db.put_cf(db.cf_handle("meta").unwrap(), b"log_bounds", bounds)
                    .unwrap()
            },
            "entry i1 is stored below the first index i3",
            (1..=10).collect(),
        ),
        (
            "undecodable entry",
            |db| {
                db.put_cf(db.cf_handle("log").unwrap(), 5u64.to_be_bytes(), [1, 2])
                    .unwrap()
            },
            "log entry i5",
            (1..=10).collect(),
        ),
        (
            "lost entries under the commit index",
            |db| {
                let log = db.cf_handle("log").unwrap();
                db.delete_range_cf(log, 4u64.to_be_bytes(), 11u64.to_be_bytes())
                    .unwrap();
                let mut bounds = [0u8; 16];
                bounds[..8].copy_from_slice(&1u64.to_be_bytes());
                bounds[8..].copy_from_slice(&3u64.to_be_bytes());
                db.put_cf(db.cf_handle("meta").unwrap(), b"log_bounds", bounds)
                    .unwrap()
            },
            "commits i4 but the log ends at i3",
            vec![1, 2, 3],
        ),
        (
            "missing format marker",
            |db| {
                db.delete_cf(db.cf_handle("meta").unwrap(), b"format")
                    .unwrap()
            },
            "no format marker",
            (1..=10).collect(),
        ),
    ];
    for (name, damage, mentions, keys_left) in cases {
        let directory = root.path().join(name.replace(' ', "-"));
        store_with_ten_entries(&directory).await;
        damage(&raw_database(&directory));
        expect_corrupt(&directory, mentions);
        expect_corrupt(&directory, mentions);
        assert_eq!(
            raw_log_keys(&directory),
            keys_left,
            "{name}: the store was changed"
        );
    }
}

/// Proves the log and the snapshots are held to each other: a purge past the newest snapshot
/// is refused (it would lose entries), the newest snapshot cannot be deleted, and on open a log
/// purged past the newest snapshot or a damaged newest snapshot is `Corrupt`, never skipped.
#[tokio::test]
async fn snapshots_are_checked_against_the_log() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("store");
    let id = |index: u64| SnapshotId {
        last_index: LogIndex(index),
        last_term: Term(1),
    };
    {
        let store = open(&directory).unwrap();
        store.append(&entries(1..=10, 1)).await.unwrap();
        let snapshots = store.snapshots();
        for index in [3, 5] {
            let mut writer = snapshots.begin().unwrap();
            writer
                .write_chunk(format!("state up to {index}").as_bytes())
                .unwrap();
            writer.finish(id(index), "n1".into()).unwrap();
        }
        let refused = store.purge(LogIndex(7)).await;
        match refused {
            Err(StorageError::InvalidArgument(message)) => {
                assert!(message.contains("covers only up to i5"), "{message}")
            }
            other => panic!("a purge past the newest snapshot should be refused: {other:?}"),
        }
        assert_eq!(store.bounds().await.unwrap().first, LogIndex(1));
        store.purge(LogIndex(5)).await.unwrap();
        let kept = snapshots.delete(id(5));
        assert!(
            matches!(kept, Err(StorageError::InvalidArgument(_))),
            "{kept:?}"
        );
    }
    let store = open(&directory).expect("the newest snapshot covers the purged prefix");
    assert_eq!(store.bounds().await.unwrap().first, LogIndex(6));
    assert_eq!(store.snapshots().latest_id(), Some(id(5)));
    drop(store);

    // The newest snapshot file is lost (deleted behind the store's back): entries 4 and 5 are
    // now nowhere.
    let newest = directory
        .join("snapshots")
        .join(format!("snapshot-{:020}-{:020}.snap", 5, 1));
    let newest_bytes = std::fs::read(&newest).unwrap();
    std::fs::remove_file(&newest).unwrap();
    expect_corrupt(
        &directory,
        "purged up to i5 but the latest snapshot covers only up to i3",
    );

    // The newest snapshot is back but one byte of its data flipped (the data follows the
    // 8-byte magic).
    let mut damaged = newest_bytes;
    let data_at = 8 + 3;
    damaged[data_at] ^= 0x40;
    std::fs::write(&newest, damaged).unwrap();
    expect_corrupt(&directory, "data checksum mismatch");
}

/// Proves data of an earlier on-disk format is refused, never misread, with an error that
/// names the version found and the one this build reads: a store whose format marker is 1 or
/// 2 (this build writes 3), and snapshot files with the magic of formats 1 to 3 (this build
/// writes 4). Nothing refused is changed.
#[tokio::test]
async fn data_of_earlier_formats_is_refused_naming_both_versions() {
    let root = tempfile::tempdir().unwrap();
    for version in [1u32, 2] {
        let directory = root.path().join(format!("store-format-{version}"));
        store_with_ten_entries(&directory).await;
        let db = raw_database(&directory);
        db.put_cf(
            db.cf_handle("meta").unwrap(),
            b"format",
            version.to_be_bytes(),
        )
        .unwrap();
        drop(db);
        let mentions =
            format!("the store has format version {version}; this build reads version 3");
        expect_corrupt(&directory, &mentions);
        expect_corrupt(&directory, &mentions);
        assert_eq!(raw_log_keys(&directory), (1..=10).collect::<Vec<_>>());
    }

    let id = SnapshotId {
        last_index: LogIndex(5),
        last_term: Term(1),
    };
    for version in 1..=3 {
        let directory = root.path().join(format!("snapshots-format-{version}"));
        let snapshots = SnapshotFiles::open(&directory, SnapshotOptions::default()).unwrap();
        let mut writer = snapshots.begin().unwrap();
        writer.write_chunk(b"state up to 5").unwrap();
        writer.finish(id, "n1".into()).unwrap();
        drop(snapshots);
        let file = directory.join(format!("snapshot-{:020}-{:020}.snap", 5, 1));
        let mut earlier = std::fs::read(&file).unwrap();
        earlier[..8].copy_from_slice(format!("RAFTSNP{version}").as_bytes());
        std::fs::write(&file, &earlier).unwrap();
        match SnapshotFiles::open(&directory, SnapshotOptions::default()) {
            Err(StorageError::Corrupt(message)) => assert!(
                message.contains(&format!(
                    "the earlier snapshot format {version}; this build reads format 4"
                )),
                "{message}"
            ),
            Err(other) => panic!("format {version}: expected Corrupt, got {other}"),
            Ok(_) => panic!("a snapshot file of format {version} was opened"),
        }
        assert_eq!(std::fs::read(&file).unwrap(), earlier, "left as it was");
    }
}

/// Proves concurrent appends share synced batches (group commit) and all land in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_synced_batches() {
    let directory = tempfile::tempdir().unwrap();
    let store = Arc::new(open(directory.path()).unwrap());
    let next_index = Arc::new(Mutex::new(1u64));
    let writers_count = 16;
    let calls_per_writer = 20;
    let mut writers = Vec::new();
    for _ in 0..writers_count {
        let store = Arc::clone(&store);
        let next_index = Arc::clone(&next_index);
        writers.push(tokio::spawn(async move {
            for _ in 0..calls_per_writer {
                // The call is queued when made: holding the lock across it keeps call order
                // equal to index order; the wait for the sync happens outside the lock.
                let batch;
                let written = {
                    let mut next = next_index.lock().unwrap();
                    batch = entries(*next..=*next + 3, 1);
                    *next += 4;
                    store.append(&batch)
                };
                written.await.expect("append");
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let total = (writers_count * calls_per_writer * 4) as u64;
    assert_eq!(store.bounds().await.unwrap().last, LogIndex(total));
    let stats = store.write_stats();
    assert_eq!(stats.requests, (writers_count * calls_per_writer) as u64);
    assert_eq!(stats.entries, total);
    assert!(
        stats.batches * 2 <= stats.requests,
        "group commit should at least halve the syncs: {stats:?}"
    );
    let all = store
        .entries(LogIndex(1)..LogIndex(total + 1))
        .await
        .unwrap();
    assert_eq!(all, entries(1..=total, 1));
}

/// Proves calls apply in the order they are made even when their futures are awaited in the
/// opposite order, and that each acknowledged call is on disk.
#[tokio::test]
async fn pipelined_calls_apply_in_call_order() {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path()).unwrap();
    let (first_entries, third_entries) = (entries(1..=3, 1), entries(5..=5, 2));
    let first = store.append(&first_entries);
    let truncate = LogWrite {
        truncate_from: Some(LogIndex(3)),
        entries: entries(3..=4, 2),
        hard_state: Some(hard_state(2, Some(1), 2)),
    };
    let second = store.write(&truncate);
    let third = store.append(&third_entries);
    third.await.unwrap();
    second.await.unwrap();
    first.await.unwrap();
    drop(store);
    let store = open(directory.path()).unwrap();
    let mut expected = entries(1..=2, 1);
    expected.extend(entries(3..=5, 2));
    assert_eq!(
        store.entries(LogIndex(1)..LogIndex(6)).await.unwrap(),
        expected
    );
    assert_eq!(
        store.load_hard_state().await.unwrap(),
        hard_state(2, Some(1), 2)
    );
}

/// Proves the queue limits answer with a clear error that changes nothing, and that a zero
/// limit is refused when the store opens.
#[tokio::test]
async fn queue_limits_refuse_with_a_clear_error() {
    let directory = tempfile::tempdir().unwrap();
    let options = RocksLogStoreOptions {
        queue_writes_max: 1,
        queue_bytes_max: 4096,
        ..RocksLogStoreOptions::default()
    };
    let store = RocksLogStore::open(directory.path(), options).unwrap();

    let mut too_big = entries(1..=1, 1);
    too_big[0].payload = EntryPayload::Command(vec![7u8; 8192].into());
    match store.append(&too_big).await {
        Err(StorageError::InvalidArgument(message)) => {
            assert!(message.contains("queue_bytes_max = 4096"), "{message}")
        }
        other => panic!("an oversized call should be refused, got {other:?}"),
    }
    assert_eq!(store.bounds().await.unwrap(), LogBounds::EMPTY);

    // Calls made faster than one sync each: with room for one queued call, some are refused.
    let (mut next, mut refused) = (1u64, 0);
    for _ in 0..1000 {
        let batch = entries(next..=next, 1);
        // A queued call goes on when its future is dropped; a refused one is already complete.
        match poll_once(store.append(&batch)) {
            Some(Err(StorageError::InvalidArgument(message))) => {
                assert!(message.contains("queue_writes_max = 1"), "{message}");
                refused += 1;
            }
            Some(Err(other)) => panic!("unexpected error {other}"),
            Some(Ok(())) | None => next += 1,
        }
    }
    assert!(refused > 0, "1000 calls never filled a one-call queue");
    // Calls complete in call order: once an empty append is through, every accepted call is.
    loop {
        match store.append(&[]).await {
            Ok(()) => break,
            Err(StorageError::InvalidArgument(message)) if message.contains("queue is full") => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    let last = store.bounds().await.unwrap().last;
    assert_eq!(last, LogIndex(next - 1));
    let held = store.entries(LogIndex(1)..last.next()).await.unwrap();
    assert_eq!(held, entries(1..=next - 1, 1));
    drop(store);

    let zero = RocksLogStoreOptions {
        group_commit_entries_max: 0,
        ..RocksLogStoreOptions::default()
    };
    match RocksLogStore::open(tempfile::tempdir().unwrap().path(), zero) {
        Err(StorageError::InvalidArgument(message)) => {
            assert!(message.contains("group_commit_entries_max"), "{message}")
        }
        other => panic!("a zero limit should be refused, got {other:?}"),
    }
}

/// Polls a store future once: `Some` when it is already complete (a refused call), `None`
/// when it was queued (the write goes on; the caller no longer needs to wait for it).
fn poll_once<F: std::future::Future + Unpin>(mut future: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(&mut future).poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// Proves the store refuses to take the hard state backwards, to change a vote within a term,
/// to commit past the log and to truncate committed entries, changing nothing each time.
#[tokio::test]
async fn protocol_invariants_are_enforced() {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path()).unwrap();
    store.append(&entries(1..=5, 2)).await.unwrap();
    let saved = hard_state(3, Some(1), 3);
    store.save_hard_state(&saved).await.unwrap();
    let refused = [
        hard_state(2, Some(1), 3),
        hard_state(3, Some(2), 3),
        hard_state(3, None, 3),
        hard_state(3, Some(1), 2),
        hard_state(3, Some(1), 6),
    ];
    for candidate in refused {
        let result = store.save_hard_state(&candidate).await;
        assert!(
            matches!(result, Err(StorageError::InvalidArgument(_))),
            "{candidate:?} gave {result:?}"
        );
    }
    let result = store.truncate(LogIndex(3)).await;
    assert!(
        matches!(result, Err(StorageError::InvalidArgument(_))),
        "{result:?}"
    );
    drop(store);
    let store = open(directory.path()).unwrap();
    assert_eq!(store.load_hard_state().await.unwrap(), saved);
    assert_eq!(store.bounds().await.unwrap().last, LogIndex(5));
    store.truncate(LogIndex(4)).await.unwrap();
    assert_eq!(store.bounds().await.unwrap().last, LogIndex(3));
}

/// Proves snapshot files round-trip across chunk boundaries, that unfinished or abandoned
/// writers leave nothing behind, that limits are enforced without harming the writer, that an
/// older snapshot finished after a newer one is discarded, and that old snapshots can be listed
/// and removed.
#[test]
fn snapshot_files_round_trip_and_clean_up() {
    let directory = tempfile::tempdir().unwrap();
    let options = SnapshotOptions {
        snapshot_chunk_bytes_max: 1000,
        snapshot_membership_bytes_max: 16,
    };
    let snapshots = SnapshotFiles::open(directory.path(), options.clone()).unwrap();
    let id = |index: u64| SnapshotId {
        last_index: LogIndex(index),
        last_term: Term(2),
    };
    let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
    let mut writer = snapshots.begin().unwrap();
    for chunk in data.chunks(700) {
        writer.write_chunk(chunk).unwrap();
    }
    let oversized = writer.write_chunk(&[0; 1001]);
    assert!(
        matches!(oversized, Err(StorageError::InvalidArgument(_))),
        "{oversized:?}"
    );
    let Finished::Published(meta) = writer.finish(id(10), "n1,n2".into()).unwrap() else {
        panic!("the first snapshot is the newest");
    };
    assert_eq!(meta.data_bytes, 2500);

    let mut too_much_membership = snapshots.begin().unwrap();
    too_much_membership.write_chunk(b"state").unwrap();
    let refused = too_much_membership.finish(id(11), vec![0u8; 17].into());
    assert!(
        matches!(refused, Err(StorageError::InvalidArgument(_))),
        "{refused:?}"
    );
    let mut older = snapshots.begin().unwrap();
    older.write_chunk(b"older state").unwrap();
    let superseded = older.finish(id(9), "n1".into()).unwrap();
    assert_eq!(superseded, Finished::Superseded { latest: id(10) });
    let abandoned = snapshots.begin().unwrap();
    drop(abandoned);
    let crashed = snapshots.begin().unwrap();
    std::mem::forget(crashed); // as if the process died: the temporary file stays

    let reopened = SnapshotFiles::open(directory.path(), options).unwrap();
    let names: Vec<String> = std::fs::read_dir(directory.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        1,
        "only the finished snapshot remains: {names:?}"
    );
    let mut reader = reopened.open_latest().unwrap().unwrap();
    assert_eq!(reader.meta(), &meta);
    assert_eq!(&reader.meta().membership[..], b"n1,n2");
    let mut read = Vec::new();
    while let Some(chunk) = reader.next_chunk().unwrap() {
        assert!(chunk.len() <= 1000);
        read.extend_from_slice(&chunk);
    }
    assert_eq!(read, data);

    let mut writer = reopened.begin().unwrap();
    writer.write_chunk(b"newer").unwrap();
    writer.finish(id(20), "n1".into()).unwrap();
    let listed: Vec<SnapshotId> = reopened.list().unwrap().iter().map(|m| m.id).collect();
    assert_eq!(listed, vec![id(10), id(20)]);
    assert_eq!(reopened.retain_latest(1).unwrap(), 1);
    assert_eq!(reopened.latest().unwrap().unwrap().id, id(20));
    assert!(
        reopened.retain_latest(0).is_err(),
        "the newest snapshot is always kept"
    );
    assert_eq!(reopened.list().unwrap().len(), 1);
}

/// Proves a truncated snapshot file (a torn copy) is `Corrupt`, never read as a shorter one.
#[test]
fn truncated_snapshot_file_is_corrupt() {
    let directory = tempfile::tempdir().unwrap();
    let snapshots = SnapshotFiles::open(directory.path(), SnapshotOptions::default()).unwrap();
    let id = SnapshotId {
        last_index: LogIndex(3),
        last_term: Term(1),
    };
    let mut writer = snapshots.begin().unwrap();
    writer.write_chunk(&[9; 4096]).unwrap();
    writer.finish(id, "n1".into()).unwrap();
    let path = std::fs::read_dir(directory.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let result = snapshots.open_reader(id);
    assert!(
        matches!(result, Err(StorageError::Corrupt(_))),
        "{result:?}"
    );
    let reopened = SnapshotFiles::open(directory.path(), SnapshotOptions::default());
    assert!(
        matches!(reopened, Err(StorageError::Corrupt(_))),
        "{reopened:?}"
    );
}

/// The meta of a snapshot of `data` at `index` (term 1) with a one-voter membership.
fn snapshot_meta(index: u64, data: &[u8]) -> raft_core::SnapshotMeta {
    raft_core::SnapshotMeta {
        last_index: LogIndex(index),
        last_term: Term(1),
        membership: raft_core::Membership::new([NodeId(1)]),
        data_bytes: data.len() as u64,
        checksum: raft_core::snapshot::checksum(data),
        format_version: 1,
    }
}

fn snapshot_data(index: u64, bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| (i as u64 * 7 + index) as u8).collect()
}

/// Names of the files in the store's snapshot directory, sorted.
fn snapshot_file_names(store: &RocksLogStore) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.snapshots().directory())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Proves a sink's temporary file exists only while the sink does: dropping it, a finish that
/// fails the data check, and a finish superseded by a newer snapshot all remove it; and that a
/// sink splits writes larger than `snapshot_chunk_bytes_max` instead of refusing them.
#[tokio::test]
async fn snapshot_sinks_leave_no_temporary_files() {
    let directory = tempfile::tempdir().unwrap();
    let options = RocksLogStoreOptions {
        snapshots: SnapshotOptions {
            snapshot_chunk_bytes_max: 1000,
            ..SnapshotOptions::default()
        },
        ..RocksLogStoreOptions::default()
    };
    let store = RocksLogStore::open(directory.path(), options).unwrap();
    let data = snapshot_data(10, 4500);

    let mut sink = store.begin_snapshot().await.unwrap();
    sink.write(&data).await.unwrap();
    let names = snapshot_file_names(&store);
    assert!(
        names.len() == 1 && names[0].ends_with(".tmp"),
        "one temporary file while the sink is open: {names:?}"
    );
    drop(sink);
    assert_eq!(snapshot_file_names(&store), Vec::<String>::new());

    let mut sink = store.begin_snapshot().await.unwrap();
    sink.write(&data).await.unwrap();
    let wrong = raft_core::SnapshotMeta {
        checksum: 0,
        ..snapshot_meta(10, &data)
    };
    let result = sink.finish(&wrong).await;
    assert!(
        matches!(result, Err(StorageError::Corrupt(_))),
        "{result:?}"
    );
    assert_eq!(snapshot_file_names(&store), Vec::<String>::new());

    let mut sink = store.begin_snapshot().await.unwrap();
    sink.write(&data).await.unwrap();
    sink.finish(&snapshot_meta(10, &data)).await.unwrap();
    let mut older = store.begin_snapshot().await.unwrap();
    older.write(&data[..100]).await.unwrap();
    older.finish(&snapshot_meta(9, &data[..100])).await.unwrap();
    let names = snapshot_file_names(&store);
    assert_eq!(names, vec![format!("snapshot-{:020}-{:020}.snap", 10, 1)]);
    let read = store
        .read_snapshot(&snapshot_meta(10, &data), 0, 10_000)
        .await
        .unwrap();
    assert_eq!(read, data);
}

/// Proves the snapshot before the latest stays readable (a leader may be streaming it), the
/// one before that is removed, and the latest survives a reopen with its meta exactly.
#[tokio::test]
async fn previous_snapshot_stays_readable() {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path()).unwrap();
    let mut made = Vec::new();
    for index in [10, 20, 30] {
        let data = snapshot_data(index, 3000);
        let mut sink = store.begin_snapshot().await.unwrap();
        sink.write(&data).await.unwrap();
        let mut meta = snapshot_meta(index, &data);
        meta.membership = raft_core::Membership::new([NodeId(1), NodeId(index)]);
        sink.finish(&meta).await.unwrap();
        made.push((meta, data));
    }
    assert_eq!(snapshot_file_names(&store).len(), 2);
    let result = store.read_snapshot(&made[0].0, 0, 100).await;
    assert!(
        matches!(result, Err(StorageError::SnapshotNotHeld { .. })),
        "{result:?}"
    );
    for (meta, data) in &made[1..] {
        let read = store.read_snapshot(meta, 1000, 2500).await.unwrap();
        assert_eq!(read, data[1000..]);
    }
    drop(store);
    let store = open(directory.path()).unwrap();
    assert_eq!(store.snapshot().await.unwrap().as_ref(), Some(&made[2].0));
    assert!(store.stopped_reason().is_none());
}

/// Proves concurrent finishes publish exactly one latest: the highest index, with at most two
/// files left, whatever order the sinks finish in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_finishes_keep_the_highest() {
    let directory = tempfile::tempdir().unwrap();
    let store = Arc::new(open(directory.path()).unwrap());
    let mut tasks = Vec::new();
    for index in [7u64, 3, 16, 1, 12, 9, 15, 4, 11, 2, 14, 6, 13, 8, 5, 10] {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let data = snapshot_data(index, 20_000 + index as usize);
            let mut sink = store.begin_snapshot().await.unwrap();
            for piece in data.chunks(3000) {
                sink.write(piece).await.unwrap();
            }
            sink.finish(&snapshot_meta(index, &data)).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let latest = store.snapshot().await.unwrap().expect("a snapshot");
    assert_eq!(latest.last_index, LogIndex(16));
    // The highest is the newest file. One older file stays beside it when one was published
    // before it; when 16 finished first, every other finish was superseded and left nothing.
    let names = snapshot_file_names(&store);
    assert!((1..=2).contains(&names.len()), "{names:?}");
    assert!(
        names.last().unwrap().contains(&format!("{:020}", 16)),
        "{names:?}"
    );
    let data = snapshot_data(16, 20_016);
    assert_eq!(store.read_snapshot(&latest, 0, 30_000).await.unwrap(), data);
}

/// Proves a snapshot file whose membership field does not hold a `SnapshotMeta` (written by
/// hand through `SnapshotFiles`) is `Corrupt` when the store reads it, which stops the store:
/// no more snapshots are begun.
#[tokio::test]
async fn foreign_snapshot_meta_is_corrupt() {
    let directory = tempfile::tempdir().unwrap();
    let store = open(directory.path()).unwrap();
    let mut writer = store.snapshots().begin().unwrap();
    writer.write_chunk(b"state").unwrap();
    let id = SnapshotId {
        last_index: LogIndex(4),
        last_term: Term(1),
    };
    writer.finish(id, "n1,n2".into()).unwrap();
    let result = store.snapshot().await;
    assert!(
        matches!(&result, Err(StorageError::Corrupt(message)) if message.contains("does not decode")),
        "{result:?}"
    );
    let begun = store.begin_snapshot().await;
    assert!(
        matches!(begun, Err(StorageError::Stopped(_))),
        "a stopped store begins no snapshot"
    );
}
