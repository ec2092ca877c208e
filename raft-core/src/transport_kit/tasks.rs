//! The tasks a transport starts, the signal that stops them, and the reconnect backoff.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

/// Every task the transport started. Finished tasks are reaped on each spawn, so the set holds
/// live tasks only (plus those finished since the last spawn).
///
/// Invariant: once `close` has begun, the set is `None` and nothing more is spawned.
pub struct Tasks {
    set: Mutex<Option<JoinSet<()>>>,
    runtime: Handle,
}

impl Tasks {
    /// An empty set whose tasks run on `runtime` (usually `Handle::current()` at bind time).
    pub fn new(runtime: Handle) -> Tasks {
        Tasks {
            set: Mutex::new(Some(JoinSet::new())),
            runtime,
        }
    }

    /// Spawns `task`, or drops it if the transport is closing.
    pub fn spawn<F>(&self, task: F) -> Option<AbortHandle>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut guard = self.set.lock().expect("task set lock");
        let set = guard.as_mut()?;
        while set.try_join_next().is_some() {}
        Some(set.spawn_on(task, &self.runtime))
    }

    /// Tasks started and not finished.
    pub fn running(&self) -> usize {
        let mut guard = self.set.lock().expect("task set lock");
        match guard.as_mut() {
            None => 0,
            Some(set) => {
                while set.try_join_next().is_some() {}
                set.len()
            }
        }
    }

    /// Waits up to `grace` for every task to finish on its own (they watch the shutdown
    /// signal), then aborts the rest and waits for them too.
    pub async fn close(&self, grace: Duration) {
        let Some(mut set) = self.set.lock().expect("task set lock").take() else {
            return;
        };
        let finished = tokio::time::timeout(grace, async {
            while let Some(result) = set.join_next().await {
                if let Err(error) = result {
                    if error.is_panic() {
                        tracing::error!(%error, "a transport task panicked");
                    }
                }
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                tasks = set.len(),
                "transport tasks did not stop within the grace period; aborting them"
            );
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
        assert!(set.is_empty(), "every task is joined");
    }
}

/// The shutdown signal as each task sees it.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// The sending side (send `true` to begin shutdown) and the first receiver; clone the
    /// receiver for each task.
    pub fn channel() -> (watch::Sender<bool>, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (sender, Shutdown(receiver))
    }

    /// Resolves once shutdown has begun (or the transport is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|&stopping| stopping).await;
    }
}

/// Exponential backoff with jitter between reconnection attempts: the n-th consecutive failure
/// waits a random time in `[d/2, d]` where `d = min(delay_max, delay_min * 2^n)`, so peers that
/// failed together do not retry together.
pub struct Backoff {
    delay_min: Duration,
    delay_max: Duration,
    failures: u32,
    random: u64,
}

impl Backoff {
    /// A backoff that has seen no failure yet. Panics unless `0 < delay_min <= delay_max`
    /// (transport settings are validated before this is built).
    pub fn new(delay_min: Duration, delay_max: Duration) -> Backoff {
        assert!(!delay_min.is_zero() && delay_min <= delay_max);
        // Jitter needs no quality, only different seeds per peer: the std hasher's random keys.
        let random = RandomState::new().hash_one(0u8) | 1;
        Backoff {
            delay_min,
            delay_max,
            failures: 0,
            random,
        }
    }

    /// The wait before the next attempt, counting one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let exponent = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let delay = self
            .delay_min
            .saturating_mul(1 << exponent)
            .min(self.delay_max);
        // xorshift64
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        let fraction = (self.random % 1024) as u32;
        let jittered = delay / 2 + (delay / 2) * fraction / 1024;
        assert!(jittered <= self.delay_max);
        jittered
    }

    /// A connection succeeded: the next failure starts from `delay_min` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The delays double up to the cap, each within its jitter window, and reset.
    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let min = Duration::from_millis(10);
        let max = Duration::from_millis(100);
        let mut backoff = Backoff::new(min, max);
        let windows = [10, 20, 40, 80, 100, 100];
        for ceiling in windows {
            let ceiling = Duration::from_millis(ceiling);
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= min);
    }
}
