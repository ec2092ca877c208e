//! Synced append throughput of `RocksLogStore`, as a table: entries of 256 bytes appended in
//! calls of 1, 16 and 256 entries by 1, 4 and 16 concurrent writers, each call awaited until
//! durable. Compare "calls/s" of one writer with raw `fdatasync` rates, and "entries/s" with
//! the raw group-commit rate of `shared/bench/phys/run.sh` (section c).
//!
//! `cargo bench -p raft-storage-rocksdb`; `BENCH_SECONDS` (default 2) sets each row's length,
//! `BENCH_DIRECTORY` where the stores live (default: a temporary directory).

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, LogIndex, LogStore, Term};
use raft_storage_rocksdb::{RocksLogStore, RocksLogStoreOptions};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PAYLOAD_BYTES: usize = 256;
const BATCH_ENTRIES: [usize; 3] = [1, 16, 256];
const WRITERS: [usize; 3] = [1, 4, 16];

struct Row {
    batch_entries: usize,
    writers: usize,
    calls: u64,
    elapsed: Duration,
    batches: u64,
}

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS").map_or(2.0, |v| v.parse().expect("seconds"));
    let root = match std::env::var("BENCH_DIRECTORY") {
        Ok(directory) => tempfile::tempdir_in(directory),
        Err(_) => tempfile::tempdir(),
    }
    .expect("a directory for the stores");
    println!(
        "RocksLogStore synced appends, {PAYLOAD_BYTES} B entries, {seconds} s per row, in {}",
        root.path().display()
    );
    println!(
        "{:>7} {:>7} {:>12} {:>10} {:>9} {:>10} {:>9}",
        "entries", "writers", "entries/s", "calls/s", "syncs/s", "calls/sync", "MiB/s"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for batch_entries in BATCH_ENTRIES {
        for writers in WRITERS {
            let directory = root.path().join(format!("b{batch_entries}-w{writers}"));
            let duration = Duration::from_secs_f64(seconds);
            let row = runtime.block_on(run(&directory, batch_entries, writers, duration));
            print_row(&row);
        }
    }
}

async fn run(
    directory: &std::path::Path,
    batch_entries: usize,
    writers: usize,
    duration: Duration,
) -> Row {
    let store =
        Arc::new(RocksLogStore::open(directory, RocksLogStoreOptions::default()).expect("open"));
    let next_index = Arc::new(Mutex::new(1u64));
    let payload = Bytes::from(vec![0x5A; PAYLOAD_BYTES]);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (store, next_index, payload) = (store.clone(), next_index.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            let mut batch: Vec<Entry> = (0..batch_entries)
                .map(|_| Entry {
                    term: Term(1),
                    index: LogIndex(0),
                    payload: EntryPayload::Command(payload.clone()),
                })
                .collect();
            while Instant::now() < deadline {
                let written = {
                    // The call is queued when made: index order is call order.
                    let mut next = next_index.lock().expect("index lock");
                    for (offset, entry) in batch.iter_mut().enumerate() {
                        entry.index = LogIndex(*next + offset as u64);
                    }
                    *next += batch_entries as u64;
                    store.append(&batch)
                };
                written.await.expect("append");
                calls += 1;
            }
            calls
        }));
    }
    let mut calls = 0;
    for task in tasks {
        calls += task.await.expect("writer");
    }
    let elapsed = started.elapsed();
    Row {
        batch_entries,
        writers,
        calls,
        elapsed,
        batches: store.write_stats().batches,
    }
}

fn print_row(row: &Row) {
    let seconds = row.elapsed.as_secs_f64();
    let entries = (row.calls * row.batch_entries as u64) as f64;
    println!(
        "{:>7} {:>7} {:>12.0} {:>10.0} {:>9.0} {:>10.1} {:>9.1}",
        row.batch_entries,
        row.writers,
        entries / seconds,
        row.calls as f64 / seconds,
        row.batches as f64 / seconds,
        row.calls as f64 / row.batches.max(1) as f64,
        entries * PAYLOAD_BYTES as f64 / seconds / (1024.0 * 1024.0)
    );
}
