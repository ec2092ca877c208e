//! Running many seeds of a simulation at once, for the simulation tests of both levels
//! ([`crate::testkit::sim`] and [`crate::testkit::runtime_sim`]) and for users' own.
//!
//! ```
//! use raft_core::testkit::seeds::run_seeds;
//!
//! let squares = run_seeds(1..5, |seed| seed * seed);
//! assert_eq!(squares, vec![1, 4, 9, 16]);
//! ```

use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Reads a number from the environment (`SIM_SEEDS`, `SIM_SEED_START`, `SIM_SEED`).
///
/// # Panics
/// If the variable is set to something that is not a number.
pub fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// Runs `run_one` for every seed, on every core, and returns the results in seed order.
///
/// # Panics
/// At the first seed that panics, once the seeds already started have ended, with the
/// messages of every seed that failed (a simulation's message names the seed and the command
/// that replays it).
pub fn run_seeds<R: Send>(seeds: Range<u64>, run_one: impl Fn(u64) -> R + Sync) -> Vec<R> {
    let next = AtomicU64::new(seeds.start);
    let failed = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end || failed.load(Ordering::Relaxed) {
                    return;
                }
                match panic::catch_unwind(AssertUnwindSafe(|| run_one(seed))) {
                    Ok(result) => results.lock().expect("results lock").push((seed, result)),
                    Err(payload) => {
                        failed.store(true, Ordering::Relaxed);
                        let message = payload
                            .downcast_ref::<String>()
                            .cloned()
                            .unwrap_or_else(|| format!("seed {seed} panicked"));
                        failures.lock().expect("failures lock").push(message);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().expect("failures lock");
    if !failures.is_empty() {
        panic!("{}", failures.join("\n\n"));
    }
    let mut results = results.into_inner().expect("results lock");
    results.sort_by_key(|(seed, _)| *seed);
    results.into_iter().map(|(_, result)| result).collect()
}
