//! `kvctl failover`: how long a local cluster cannot take writes after its leader crashes.
//!
//! A few writers put keys without pause through every endpoint (each writer its own
//! [`KvClient`], starting at a different endpoint and failing over as the client does). Each
//! round then:
//!
//! 1. finds the leader (the node that reports `role: leader` at the highest term), waits a
//!    random fraction of a heartbeat interval so kills do not line up with heartbeats, and
//!    kills it with SIGKILL;
//! 2. measures the time from the kill to the first write acknowledged *for a request that
//!    began after the killed process was reaped*, and, by polling `/v1/status` every few
//!    milliseconds, the time until a survivor reports that it leads a higher term;
//! 3. restarts the killed node, waits until it has applied what the leader had committed
//!    when it came back, and until every writer has had a write acknowledged again.
//!
//! # Why the first write counted was committed by a new leader
//!
//! A write acknowledged soon after the kill may have been committed by the old leader just
//! before it died (its answer was in flight, or a follower learned the commit late). Such
//! writes are not counted: only a request that *began* after the old leader's process had
//! ended counts. That request's command can only have been placed in the log by a leader that
//! was alive after the kill, which is not the old leader, so it leads a later term; an
//! acknowledged write was committed at that entry, so by that new leader. The round also
//! records the new leader and term from `/v1/status`, and fails if none is seen.
//!
//! The result is the distribution of both times over the rounds (nearest-rank percentiles), as
//! a table and as JSON. Each round in the JSON also holds a timeline of the survivors' roles,
//! terms and leaders, which shows where a slow round lost its time (a vote that waited in a
//! queue, a split vote).

use crate::client::{format_table, ClientError, KvClient};
use crate::local_cluster::LocalCluster;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How the measurement runs.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverSettings {
    /// Leader kills.
    pub rounds: u32,
    /// Concurrent writers, each with one write in flight.
    pub writers: usize,
    /// Value size in bytes.
    pub value_bytes: usize,
    /// How long a writer waits for one answer (the HTTP client's timeout).
    pub request_timeout_ms: u64,
    /// How long a writer pauses after a failed write before the next one.
    pub retry_pause_ms: u64,
    /// Steady writing between a caught-up restart and the next kill.
    pub settle_ms: u64,
    /// A round without a new leader's write within this time fails.
    pub round_timeout_ms: u64,
    /// How long a restarted node may take to catch up.
    pub catch_up_timeout_ms: u64,
    /// The longest random pause before a kill (a heartbeat interval by default).
    pub kill_jitter_ms: u64,
    /// Seeds the pauses before kills.
    pub seed: u64,
}

impl FailoverSettings {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), String> {
        if self.rounds == 0 || self.writers == 0 {
            return Err("rounds and writers must be at least 1".into());
        }
        if self.round_timeout_ms == 0 || self.catch_up_timeout_ms == 0 {
            return Err("the round and catch-up timeouts must be above zero".into());
        }
        if self.request_timeout_ms == 0 {
            return Err("the request timeout must be above zero".into());
        }
        Ok(())
    }
}

/// One leader kill.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Round {
    /// Its number, from 1.
    pub round: u32,
    /// The killed leader.
    pub killed: u64,
    /// The term it led.
    pub killed_term: u64,
    /// The leader of a later term that a survivor reported first.
    pub new_leader: Option<u64>,
    /// Its term.
    pub new_term: Option<u64>,
    /// From the kill until a survivor reported leading a later term (status polling, so a
    /// few milliseconds late at most).
    pub leader_seen_ms: Option<f64>,
    /// From the kill until the first acknowledged write that began after it.
    pub first_write_ms: Option<f64>,
    /// How long that write took, from its request to its answer.
    pub first_write_request_ms: Option<f64>,
    /// The node whose endpoint answered it.
    pub first_write_node: Option<u64>,
    /// Its log index.
    pub first_write_index: Option<u64>,
    /// Failed writes from the kill until both the new leader and the first write were seen.
    pub failed_writes: u64,
    /// Of those, writes the server answered with `"applied": "unknown"`.
    pub unknown_writes: u64,
    /// From the restart until the node had caught up.
    pub catch_up_ms: Option<f64>,
    /// Why the round failed, if it did.
    pub error: Option<String>,
    /// What the survivors reported from the kill until the round ended: one entry per change
    /// of a node's role, term or leader (status polled every few milliseconds).
    pub timeline: Vec<Observation>,
}

/// A survivor's status that differs from what it reported before.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Observation {
    /// Time since the kill.
    pub at_ms: f64,
    /// The node.
    pub node: u64,
    /// What it said (`None`: its status did not answer).
    pub view: Option<RoleView>,
}

/// A distribution in milliseconds (nearest-rank percentiles).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Distribution {
    /// Samples.
    pub count: usize,
    /// Smallest.
    pub min_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Distribution {
    /// The distribution of `samples` (NaN figures when there are none).
    pub fn of(samples: impl IntoIterator<Item = f64>) -> Distribution {
        let mut sorted: Vec<f64> = samples.into_iter().filter(|s| s.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let rank = |fraction: f64| -> f64 {
            if sorted.is_empty() {
                return f64::NAN;
            }
            let index = (fraction * (sorted.len() - 1) as f64).round() as usize;
            sorted[index.min(sorted.len() - 1)]
        };
        Distribution {
            count: sorted.len(),
            min_ms: rank(0.0),
            p50_ms: rank(0.5),
            p90_ms: rank(0.9),
            p99_ms: rank(0.99),
            max_ms: rank(1.0),
            mean_ms: if sorted.is_empty() {
                f64::NAN
            } else {
                sorted.iter().sum::<f64>() / sorted.len() as f64
            },
        }
    }
}

/// What one cluster measured.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverResult {
    /// The backend combination, e.g. `rocksdb+tcp`.
    pub label: String,
    /// The settings.
    pub settings: FailoverSettings,
    /// The flags every node ran with, beyond the cluster layout.
    pub node_flags: Vec<String>,
    /// Kill to the first write committed by a new leader.
    pub first_write: Distribution,
    /// Kill to a new leader reported by a survivor.
    pub leader_seen: Distribution,
    /// Writes acknowledged during the whole run.
    pub acknowledged_writes: u64,
    /// Writes that failed during the whole run.
    pub failed_writes: u64,
    /// Up to five failure messages.
    pub error_samples: Vec<String>,
    /// Every round.
    pub rounds: Vec<Round>,
    /// Why the run stopped before its last round, if it did.
    pub stopped: Option<String>,
}

/// An acknowledged write that began after the armed instant.
#[derive(Clone, Debug)]
struct Acknowledgement {
    begun: Instant,
    answered: Instant,
    index: u64,
    endpoint: String,
}

/// What the writers and the round share.
struct Shared {
    stop: AtomicBool,
    /// Writes that begin at or after this instant count for the round (none when unset).
    armed: Mutex<Option<Instant>>,
    first: Mutex<Option<Acknowledgement>>,
    first_arrived: Notify,
    /// Per writer: when its last write was acknowledged, in nanoseconds after `origin`.
    last_acknowledged: Vec<AtomicU64>,
    origin: Instant,
    acknowledged: AtomicU64,
    failed: AtomicU64,
    unknown: AtomicU64,
    error_samples: Mutex<Vec<String>>,
}

/// Failure messages kept for the report.
const ERROR_SAMPLES_MAX: usize = 5;
/// Keys per writer: writes cycle over them, so the map stays small however long the run.
const KEYS_PER_WRITER: u64 = 1000;
/// How often the round polls the survivors' status.
const STATUS_POLL_INTERVAL: Duration = Duration::from_millis(5);

impl Shared {
    fn new(writers: usize) -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            armed: Mutex::new(None),
            first: Mutex::new(None),
            first_arrived: Notify::new(),
            last_acknowledged: (0..writers).map(|_| AtomicU64::new(0)).collect(),
            origin: Instant::now(),
            acknowledged: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            error_samples: Mutex::new(Vec::new()),
        }
    }

    fn acknowledged(&self, writer: usize, acknowledgement: Acknowledgement) {
        self.acknowledged.fetch_add(1, Ordering::Relaxed);
        let nanos = acknowledgement
            .answered
            .duration_since(self.origin)
            .as_nanos();
        self.last_acknowledged[writer].store(nanos as u64, Ordering::Release);
        let armed = *self.armed.lock().expect("armed lock poisoned");
        if armed.is_some_and(|after| acknowledgement.begun >= after) {
            let mut first = self.first.lock().expect("first lock poisoned");
            if first.is_none() {
                *first = Some(acknowledgement);
                self.first_arrived.notify_one();
            }
        }
    }

    fn failed(&self, error: &ClientError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if matches!(error, ClientError::Server { body, .. } if body["applied"] == "unknown") {
            self.unknown.fetch_add(1, Ordering::Relaxed);
        }
        let mut samples = self.error_samples.lock().expect("samples lock poisoned");
        if samples.len() < ERROR_SAMPLES_MAX {
            samples.push(error.to_string());
        }
    }

    /// Arms the round for writes beginning at `after`, forgetting any earlier one.
    fn arm(&self, after: Option<Instant>) {
        *self.first.lock().expect("first lock poisoned") = None;
        *self.armed.lock().expect("armed lock poisoned") = after;
    }

    fn first(&self) -> Option<Acknowledgement> {
        self.first.lock().expect("first lock poisoned").clone()
    }

    /// Whether every writer has had a write acknowledged after `instant`.
    fn all_acknowledged_since(&self, instant: Instant) -> bool {
        let since = instant.duration_since(self.origin).as_nanos() as u64;
        self.last_acknowledged
            .iter()
            .all(|last| last.load(Ordering::Acquire) > since)
    }
}

/// One writer: puts without pause (after a failure, `retry_pause_ms`) until told to stop.
async fn writer(
    number: usize,
    client: KvClient,
    value: Bytes,
    retry_pause: Duration,
    shared: Arc<Shared>,
) {
    let mut sequence: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let key = format!("failover/w{number}/{}", sequence % KEYS_PER_WRITER);
        sequence += 1;
        let begun = Instant::now();
        match client.put(&key, value.clone()).await {
            Ok(index) => {
                let acknowledgement = Acknowledgement {
                    begun,
                    answered: Instant::now(),
                    index,
                    endpoint: client.last_endpoint().to_string(),
                };
                shared.acknowledged(number, acknowledgement);
            }
            Err(error) => {
                shared.failed(&error);
                tokio::time::sleep(retry_pause).await;
            }
        }
    }
}

/// Polls `/v1/status` of the running members.
struct StatusPoller {
    http: reqwest::Client,
}

impl StatusPoller {
    fn new() -> Result<StatusPoller, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_millis(200))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(StatusPoller { http })
    }

    async fn status(&self, endpoint: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{endpoint}/v1/status"))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// What each running member says of its role, term and leader (`None`: no answer).
    async fn views(&self, cluster: &LocalCluster) -> Vec<(u64, Option<RoleView>)> {
        let mut views = Vec::new();
        for member in cluster
            .members()
            .iter()
            .filter(|m| cluster.is_running(m.id))
        {
            let view = self
                .status(&member.endpoint())
                .await
                .map(|status| RoleView {
                    role: status["role"].as_str().unwrap_or("?").to_string(),
                    term: status["term"].as_u64().unwrap_or(0),
                    leader: status["leader"].as_u64(),
                });
            views.push((member.id, view));
        }
        views
    }

    /// The running member that reports leading the highest term, with that term.
    async fn leader(&self, cluster: &LocalCluster) -> Option<(u64, u64)> {
        leader_of(&self.views(cluster).await)
    }

    /// Waits up to `timeout` for a leader.
    async fn wait_leader(&self, cluster: &LocalCluster, timeout: Duration) -> Option<(u64, u64)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader(cluster).await {
                return Some(leader);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A member's role, term and leader, as its status reports them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoleView {
    /// `follower`, `pre-candidate`, `candidate` or `leader`.
    pub role: String,
    /// Its term.
    pub term: u64,
    /// The leader it knows.
    pub leader: Option<u64>,
}

/// The member that reports leading the highest term any member reports, with that term.
fn leader_of(views: &[(u64, Option<RoleView>)]) -> Option<(u64, u64)> {
    let highest_term = views.iter().flat_map(|(_, v)| v).map(|v| v.term).max()?;
    views.iter().find_map(|(id, view)| {
        let view = view.as_ref()?;
        (view.role == "leader" && view.term == highest_term).then_some((*id, view.term))
    })
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Runs `settings.rounds` leader kills on `cluster` (started and ready), calling `report`
/// after each round.
pub async fn run(
    cluster: &mut LocalCluster,
    label: &str,
    settings: &FailoverSettings,
    report: impl Fn(&Round),
) -> Result<FailoverResult, String> {
    settings.validate()?;
    let shared = Arc::new(Shared::new(settings.writers));
    let endpoints = cluster.endpoints();
    let value = Bytes::from(vec![b'v'; settings.value_bytes]);
    let mut writers = Vec::new();
    for number in 0..settings.writers {
        // Each writer starts at another endpoint, so writes arrive through every node.
        let mut rotated = endpoints.clone();
        rotated.rotate_left(number % endpoints.len());
        let timeout = Duration::from_millis(settings.request_timeout_ms);
        let client = KvClient::new(rotated, timeout).map_err(|e| e.to_string())?;
        let pause = Duration::from_millis(settings.retry_pause_ms);
        let task = writer(number, client, value.clone(), pause, shared.clone());
        writers.push(tokio::spawn(task));
    }
    let poller = StatusPoller::new()?;
    let started = Instant::now();
    let mut rounds = Vec::new();
    let mut stopped = None;
    wait_writers_flowing(&shared, started, settings).await;
    for number in 1..=settings.rounds {
        let round = one_round(cluster, &poller, &shared, settings, number).await;
        report(&round);
        // Every round that can go on ends with all nodes caught up; any other ends the run.
        let fatal = round.catch_up_ms.is_none();
        rounds.push(round);
        if fatal {
            stopped = Some(format!(
                "round {number} left the cluster broken (see its error); no further rounds ran"
            ));
            break;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for task in writers {
        let _ = task.await;
    }
    let error_samples = shared
        .error_samples
        .lock()
        .expect("samples lock poisoned")
        .clone();
    Ok(FailoverResult {
        label: label.to_string(),
        settings: settings.clone(),
        node_flags: cluster.spec().extra_args.clone(),
        first_write: Distribution::of(rounds.iter().filter_map(|r| r.first_write_ms)),
        leader_seen: Distribution::of(rounds.iter().filter_map(|r| r.leader_seen_ms)),
        acknowledged_writes: shared.acknowledged.load(Ordering::Relaxed),
        failed_writes: shared.failed.load(Ordering::Relaxed),
        error_samples,
        rounds,
        stopped,
    })
}

/// Waits until every writer has had a write acknowledged since `since`, then `settle_ms`.
async fn wait_writers_flowing(shared: &Shared, since: Instant, settings: &FailoverSettings) {
    let deadline = Instant::now() + Duration::from_millis(settings.round_timeout_ms);
    while !shared.all_acknowledged_since(since) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(settings.settle_ms)).await;
}

/// Kills the leader, measures, restarts the killed node and waits for it to catch up.
async fn one_round(
    cluster: &mut LocalCluster,
    poller: &StatusPoller,
    shared: &Shared,
    settings: &FailoverSettings,
    number: u32,
) -> Round {
    let mut round = Round {
        round: number,
        ..Round::default()
    };
    let round_timeout = Duration::from_millis(settings.round_timeout_ms);
    let Some((leader, term)) = poller.wait_leader(cluster, round_timeout).await else {
        round.error = Some("no leader before the kill".into());
        return round;
    };
    let jitter = splitmix64(settings.seed ^ u64::from(number)) % settings.kill_jitter_ms.max(1);
    tokio::time::sleep(Duration::from_millis(jitter)).await;
    // Leadership is stable without faults, but the kill must hit the leader of the moment.
    (round.killed, round.killed_term) = poller.leader(cluster).await.unwrap_or((leader, term));
    let (failed_before, unknown_before) = (
        shared.failed.load(Ordering::Relaxed),
        shared.unknown.load(Ordering::Relaxed),
    );
    let killed_at = Instant::now();
    if let Err(error) = cluster.kill(leader) {
        round.error = Some(format!("killing node {leader}: {error}"));
        return round;
    }
    // The process has been reaped: every request that begins from now on can only be placed
    // in the log by another node, leading a later term.
    shared.arm(Some(Instant::now()));
    observe_failover(
        cluster,
        poller,
        shared,
        &mut round,
        killed_at,
        round_timeout,
    )
    .await;
    shared.arm(None);
    round.failed_writes = shared.failed.load(Ordering::Relaxed) - failed_before;
    round.unknown_writes = shared.unknown.load(Ordering::Relaxed) - unknown_before;
    restart_and_catch_up(cluster, poller, &mut round, settings).await;
    if round.catch_up_ms.is_some() {
        wait_writers_flowing(shared, Instant::now(), settings).await;
    }
    round
}

/// Polls the survivors until one reports leading a later term and a write that began after
/// the kill is acknowledged, or the round times out.
async fn observe_failover(
    cluster: &LocalCluster,
    poller: &StatusPoller,
    shared: &Shared,
    round: &mut Round,
    killed_at: Instant,
    timeout: Duration,
) {
    let deadline = killed_at + timeout;
    loop {
        let views = poller.views(cluster).await;
        let at_ms = milliseconds(killed_at.elapsed());
        for (node, view) in views.iter().cloned() {
            let last = round.timeline.iter().rev().find(|o| o.node == node);
            if last.is_none_or(|last| last.view != view) {
                round.timeline.push(Observation { at_ms, node, view });
            }
        }
        if round.new_leader.is_none() {
            if let Some((leader, term)) = leader_of(&views) {
                if term > round.killed_term && leader != round.killed {
                    round.leader_seen_ms = Some(at_ms);
                    (round.new_leader, round.new_term) = (Some(leader), Some(term));
                }
            }
        }
        if round.first_write_ms.is_none() {
            if let Some(first) = shared.first() {
                round.first_write_ms = Some(milliseconds(first.answered - killed_at));
                round.first_write_request_ms = Some(milliseconds(first.answered - first.begun));
                round.first_write_index = Some(first.index);
                round.first_write_node = cluster
                    .members()
                    .iter()
                    .find(|m| m.endpoint() == first.endpoint)
                    .map(|m| m.id);
            }
        }
        if round.new_leader.is_some() && round.first_write_ms.is_some() {
            return;
        }
        if Instant::now() >= deadline {
            let missing = if round.new_leader.is_none() {
                "no survivor reported leading a later term"
            } else {
                "no write that began after the kill was acknowledged"
            };
            round.error = Some(format!("{missing} within {timeout:?}"));
            return;
        }
        tokio::select! {
            _ = shared.first_arrived.notified() => {}
            _ = tokio::time::sleep(STATUS_POLL_INTERVAL) => {}
        }
    }
}

/// Restarts the killed node and waits until it has applied what the leader had committed
/// once it answered again.
async fn restart_and_catch_up(
    cluster: &mut LocalCluster,
    poller: &StatusPoller,
    round: &mut Round,
    settings: &FailoverSettings,
) {
    let id = round.killed;
    let started = Instant::now();
    if let Err(error) = cluster.start_member(id) {
        round.error = Some(format!("restarting node {id}: {error}"));
        return;
    }
    let deadline = started + Duration::from_millis(settings.catch_up_timeout_ms);
    let endpoint = cluster.endpoint(id);
    let mut target = None;
    while Instant::now() < deadline {
        let applied = poller
            .status(&endpoint)
            .await
            .and_then(|s| s["applied_index"].as_u64());
        if target.is_none() && applied.is_some() {
            // The node answers: what the leader has committed by now is the bar.
            if let Some((leader, _)) = poller.leader(cluster).await {
                let status = poller.status(&cluster.endpoint(leader)).await;
                target = status.and_then(|s| s["commit_index"].as_u64());
            }
        }
        if let (Some(applied), Some(target)) = (applied, target) {
            if applied >= target {
                round.catch_up_ms = Some(milliseconds(started.elapsed()));
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let why = format!(
        "node {id} did not catch up within {} ms; its log is {}",
        settings.catch_up_timeout_ms,
        cluster.log_path(id).display()
    );
    round.error = Some(match round.error.take() {
        Some(earlier) => format!("{earlier}; {why}"),
        None => why,
    });
}

/// One line about a round, for the progress output.
pub fn round_line(round: &Round, rounds: u32) -> String {
    let show = |value: Option<f64>| value.map_or("-".to_string(), |ms| format!("{ms:.0} ms"));
    let mut line = format!(
        "round {}/{rounds}: killed node {} (term {}); ",
        round.round, round.killed, round.killed_term
    );
    match (round.new_leader, round.new_term) {
        (Some(leader), Some(term)) => line.push_str(&format!(
            "node {leader} leads term {term} at {}; ",
            show(round.leader_seen_ms)
        )),
        _ => line.push_str("no new leader seen; "),
    }
    line.push_str(&format!(
        "first write at {} (via node {}, {} failed)",
        show(round.first_write_ms),
        round
            .first_write_node
            .map_or("-".to_string(), |n| n.to_string()),
        round.failed_writes
    ));
    if let Some(error) = &round.error {
        line.push_str(&format!("; ERROR: {error}"));
    }
    line
}

/// The results as a text table: one row per cluster and measure.
pub fn table(results: &[FailoverResult]) -> String {
    let mut rows = vec![[
        "RUN",
        "MEASURE",
        "COUNT",
        "P50 MS",
        "P90 MS",
        "P99 MS",
        "MAX MS",
        "FAILED ROUNDS",
    ]
    .map(String::from)
    .to_vec()];
    for result in results {
        let failed = result.rounds.iter().filter(|r| r.error.is_some()).count();
        let measures = [
            ("kill -> first write", &result.first_write),
            ("kill -> leader seen", &result.leader_seen),
        ];
        for (name, distribution) in measures {
            rows.push(vec![
                result.label.clone(),
                name.to_string(),
                distribution.count.to_string(),
                format!("{:.1}", distribution.p50_ms),
                format!("{:.1}", distribution.p90_ms),
                format!("{:.1}", distribution.p99_ms),
                format!("{:.1}", distribution.max_ms),
                failed.to_string(),
            ]);
        }
    }
    format_table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Percentiles pick the nearest rank; with 50 samples the 99th is the largest.
    #[test]
    fn distribution_uses_nearest_rank() {
        let distribution = Distribution::of((1..=50).map(f64::from));
        assert_eq!(distribution.count, 50);
        assert_eq!(distribution.p50_ms, 26.0);
        assert_eq!(distribution.p90_ms, 45.0);
        assert_eq!(distribution.p99_ms, 50.0);
        assert_eq!(distribution.max_ms, 50.0);
        assert_eq!(distribution.mean_ms, 25.5);
        let empty = Distribution::of([]);
        assert_eq!(empty.count, 0);
        assert!(empty.p99_ms.is_nan());
    }

    /// Only writes that began at or after the armed instant count, and only the first.
    #[test]
    fn only_writes_begun_after_the_kill_count() {
        let shared = Shared::new(1);
        let before = Instant::now();
        let armed = before + Duration::from_millis(10);
        shared.arm(Some(armed));
        let write = |begun: Instant, index: u64| Acknowledgement {
            begun,
            answered: armed + Duration::from_millis(20),
            index,
            endpoint: "http://127.0.0.1:1".into(),
        };
        shared.acknowledged(0, write(before, 1));
        assert!(shared.first().is_none(), "a write begun before the kill");
        shared.acknowledged(0, write(armed, 2));
        shared.acknowledged(0, write(armed + Duration::from_millis(1), 3));
        assert_eq!(shared.first().map(|a| a.index), Some(2));
        shared.arm(None);
        assert!(shared.first().is_none());
        assert!(shared.all_acknowledged_since(before));
    }
}
