//! Randomized simulation of the real runtime: `RaftNode`s (driver, writer and applier tasks)
//! on a paused-clock tokio runtime, over a simulated network and simulated disks, through
//! crashes that lose unfinished writes, partitions, loss, slow and failing disks and
//! leadership transfers; then liveness, the linearizability of the client history, and the
//! same state everywhere (see `raft_core::testkit::runtime_sim`).
//!
//! - `SIM_SEEDS=N` runs N seeds (default 200: this suite shares the seed budget of `make test`
//!   with `tests/simulation.rs`), `SIM_SEED_START=S` starts them at S (default 1).
//! - `SIM_SEED=S` replays seed S alone and writes its trace to `SIM_TRACE` (default: a file in
//!   the temporary directory, whose path is printed).
//!
//! A failing seed prints the command that replays it.

use raft_core::testkit::log_store_suite::{run_all, StoreHarness};
use raft_core::testkit::runtime_sim::{run, DiskFaults, RuntimeReport, RuntimeSimOptions, SimDisk};
use raft_core::testkit::seeds::{env_u64, run_seeds};
use raft_core::{LogStore, StorageError};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

const SEEDS_DEFAULT: u64 = 200;

/// The reports of every seed of this run, computed once (on every core) and shared by the
/// tests that assert on them. Empty when replaying a single seed.
fn reports() -> &'static [RuntimeReport] {
    static REPORTS: OnceLock<Vec<RuntimeReport>> = OnceLock::new();
    REPORTS.get_or_init(|| {
        if env_u64("SIM_SEED").is_some() {
            return Vec::new();
        }
        let start = env_u64("SIM_SEED_START").unwrap_or(1);
        let count = env_u64("SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
        let began = std::time::Instant::now();
        let reports = run_seeds(start..start + count, |seed| {
            run(&RuntimeSimOptions::from_seed(seed))
        });
        let seconds = began.elapsed().as_secs_f64();
        println!(
            "{count} runtime seeds in {seconds:.1} s ({:.1} seeds/s)",
            count as f64 / seconds
        );
        reports
    })
}

#[test]
fn every_seed_keeps_the_invariants_settles_and_is_linearizable() {
    let reports = reports();
    if reports.is_empty() {
        return; // replaying one seed: see replay_one_seed
    }
    let operations: usize = reports.iter().map(|r| r.operations).sum();
    let answered: usize = reports.iter().map(|r| r.answered).sum();
    let virtual_ms: u64 = reports.iter().map(|r| r.end_ms).sum();
    let liveness_max = reports.iter().map(|r| r.liveness_ms).max().unwrap_or(0);
    println!(
        "{} seeds: {operations} operations checked ({answered} answered), {} virtual \
         seconds; slowest liveness phase {liveness_max} ms",
        reports.len(),
        virtual_ms / 1000
    );
    let expected = env_u64("SIM_SEEDS").unwrap_or(SEEDS_DEFAULT) as usize;
    assert_eq!(reports.len(), expected);
    for report in reports {
        assert!(
            report.answered > 0 && report.applied > 0,
            "seed {}: no operation answered: {report:?}",
            report.seed
        );
    }
}

/// The faults the options promise happened, across the seeds: a check that sees no crash,
/// no lost or failed write and no snapshot proves little.
#[test]
fn faults_actually_happened() {
    let reports = reports();
    if reports.len() < 20 {
        return;
    }
    let sum = |f: fn(&RuntimeReport) -> u64| reports.iter().map(f).sum::<u64>();
    let crashes = sum(|r| r.crashes);
    let failed = sum(|r| r.writes_failed);
    let lost = sum(|r| r.writes_lost);
    let snapshots = sum(|r| r.snapshots);
    println!("{crashes} crashes, {failed} failed writes, {lost} writes lost in crashes, {snapshots} snapshots");
    assert!(crashes > reports.len() as u64 / 2, "{crashes} crashes");
    assert!(failed > 0, "no write failed");
    assert!(lost > 0, "no crash lost a write");
    assert!(snapshots > 0, "no snapshot");
    let sizes: Vec<usize> = [1, 3, 5]
        .iter()
        .map(|n| reports.iter().filter(|r| r.nodes == *n).count())
        .collect();
    assert!(sizes.iter().all(|&n| n > 0), "cluster sizes {sizes:?}");
}

/// Replays `SIM_SEED` alone, with its trace written to a file.
#[test]
fn replay_one_seed() {
    let Some(seed) = env_u64("SIM_SEED") else {
        return;
    };
    let mut options = RuntimeSimOptions::from_seed(seed);
    let path = std::env::var_os("SIM_TRACE")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("raft-runtime-sim-seed-{seed}.trace"))
        });
    eprintln!(
        "replaying seed {seed}: {options:?}; trace in {}",
        path.display()
    );
    options.keep_trace = true;
    let result = panic::catch_unwind(AssertUnwindSafe(|| run(&options)));
    match result {
        Ok(mut report) => {
            let trace = report.trace.take().expect("asked for a trace");
            std::fs::write(&path, trace.join("\n")).expect("the trace file is writable");
            eprintln!("{report:#?}");
        }
        Err(payload) => panic::resume_unwind(payload),
    }
}

#[test]
fn same_seed_same_trace_and_different_seeds_differ() {
    let traced = |seed: u64| {
        let mut options = RuntimeSimOptions::from_seed(seed);
        options.fault_phase_ms = 1_500;
        options.keep_trace = true;
        run(&options)
    };
    for seed in [42, 7, 11, 12, 13, 14] {
        let first = traced(seed);
        let again = traced(seed);
        let lines = first.trace.as_ref().expect("asked for a trace");
        assert!(lines.len() > 200, "a trace of {} events", lines.len());
        if first.trace != again.trace {
            let again_lines = again.trace.as_ref().expect("asked for a trace");
            let at = lines
                .iter()
                .zip(again_lines)
                .position(|(a, b)| a != b)
                .unwrap_or(lines.len().min(again_lines.len()));
            panic!(
                "seed {seed} gave two different traces, first at event {at}:\n{:?}\n{:?}",
                lines.get(at),
                again_lines.get(at)
            );
        }
        assert_eq!(first.trace_hash, again.trace_hash);
    }
    assert_ne!(traced(42).trace_hash, traced(43).trace_hash);
}

/// The simulated disk is a valid store: the conformance suite every `LogStore` runs, with
/// seeded write delays (and every reopen a crash and restart on the durable image).
#[test]
fn the_simulated_disk_passes_the_log_store_suite() {
    struct Harness {
        current: Option<Arc<SimDisk>>,
    }

    #[async_trait::async_trait]
    impl StoreHarness for Harness {
        async fn create(&mut self) -> Result<Arc<dyn LogStore>, StorageError> {
            let disk = Arc::new(SimDisk::standalone(DiskFaults::FAST, 5));
            self.current = Some(disk.clone());
            Ok(disk)
        }
        async fn reopen(
            &mut self,
            store: Arc<dyn LogStore>,
        ) -> Result<Arc<dyn LogStore>, StorageError> {
            drop(store);
            let old = self.current.take().expect("created before reopened");
            let disk = Arc::new(old.reopen());
            self.current = Some(disk.clone());
            Ok(disk)
        }
        fn durable(&self) -> bool {
            true
        }
    }

    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(run_all(&mut Harness { current: None }));
}
