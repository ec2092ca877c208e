//! Counters and histograms for `/metrics`, in the Prometheus text format: the node's own (a
//! few atomics rendered by hand) and the library's (`raft_core::runtime::telemetry`, through
//! the `metrics` facade and a Prometheus recorder installed once per process,
//! [`library_metrics`]). Nodes sharing one process (a local cluster) share that recorder: each
//! node's `/metrics` then shows every node's series, told apart by their `node` label.

use crate::api::Consistency;
use crate::http_server::{CloseReason, HttpCounters};
use raft_core::protocol::{Role, Status};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the library recorder drains its histogram samples into buckets when nobody
/// scrapes `/metrics` (without it the samples would pile up between scrapes).
const LIBRARY_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process's recorder of the library's metrics: installed as the global `metrics`
/// recorder by the first call (before the first node starts), with histogram buckets for
/// durations (`*_seconds`) and for write group sizes. If another recorder was installed first
/// (a program embedding the node, a test), that one keeps receiving the library's figures and
/// this one renders nothing.
pub fn library_metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    use std::sync::OnceLock;
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS_SECONDS)
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full("raft_write_batch_entries".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0],
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::info!(
                "a metrics recorder was installed before kvnode's: it keeps the library's metrics"
            );
        }
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(LIBRARY_UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            })
            .expect("spawning the metrics upkeep thread");
        handle
    })
}

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let separator = if labels.is_empty() { "" } else { "," };
        for (index, bound) in LATENCY_BUCKETS_SECONDS.iter().enumerate() {
            cumulative += self.buckets[index].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.buckets[LATENCY_BUCKETS_SECONDS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// The kinds of client request, as metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `PUT /v1/kv/{key}`.
    Put,
    /// `GET /v1/kv/{key}`.
    Get,
    /// `DELETE /v1/kv/{key}`.
    Delete,
    /// `POST /v1/kv/{key}/cas`.
    Cas,
    /// `GET /v1/kv?prefix=`.
    Scan,
}

impl Operation {
    const ALL: [Operation; 5] = [
        Operation::Put,
        Operation::Get,
        Operation::Delete,
        Operation::Cas,
        Operation::Scan,
    ];

    fn label(self) -> &'static str {
        match self {
            Operation::Put => "put",
            Operation::Get => "get",
            Operation::Delete => "delete",
            Operation::Cas => "cas",
            Operation::Scan => "scan",
        }
    }
}

/// Why a request failed, as metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Refused before reaching Raft (bad input: a 4xx).
    BadRequest,
    /// No leader within the wait, or the node is stopped or overloaded: definitely not applied.
    Unavailable,
    /// The outcome is unknown (leadership changed, or the request timed out).
    Indeterminate,
}

impl Failure {
    const ALL: [Failure; 3] = [
        Failure::BadRequest,
        Failure::Unavailable,
        Failure::Indeterminate,
    ];

    fn label(self) -> &'static str {
        match self {
            Failure::BadRequest => "bad_request",
            Failure::Unavailable => "unavailable",
            Failure::Indeterminate => "indeterminate",
        }
    }
}

/// Everything `/metrics` reports besides the Raft status.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Commands proposed to Raft, by operation.
    proposals: [AtomicU64; 5],
    /// Reads by operation (get, scan) and consistency.
    reads: [[AtomicU64; 4]; 2],
    /// Failed requests by operation and failure kind.
    failures: [[AtomicU64; 3]; 5],
    /// End-to-end request latency by operation (successful requests).
    request_seconds: [Histogram; 5],
    /// Time to apply one batch to the state machine.
    apply_seconds: Histogram,
    /// The HTTP server's connections.
    pub http: Arc<HttpCounters>,
    /// Commands applied.
    applied_commands: AtomicU64,
    /// Snapshots the state machine built.
    snapshots_built: AtomicU64,
    /// Bytes of those snapshots.
    snapshot_built_bytes: AtomicU64,
    /// Time to build one snapshot.
    snapshot_build_seconds: Histogram,
    /// Snapshots the state machine installed (received from a leader, or at a restart).
    snapshots_installed: AtomicU64,
    /// Bytes of those snapshots.
    snapshot_installed_bytes: AtomicU64,
}

fn slot(operation: Operation) -> usize {
    Operation::ALL
        .iter()
        .position(|o| *o == operation)
        .expect("every operation is listed")
}

impl Metrics {
    /// Counts a proposal.
    pub fn record_proposal(&self, operation: Operation) {
        self.proposals[slot(operation)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a read (`operation` is get or scan).
    pub fn record_read(&self, operation: Operation, consistency: Consistency) {
        let row = usize::from(operation == Operation::Scan);
        let column = Consistency::ALL
            .iter()
            .position(|c| *c == consistency)
            .expect("every consistency is listed");
        self.reads[row][column].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a successful request's latency.
    pub fn record_success(&self, operation: Operation, elapsed: Duration) {
        self.request_seconds[slot(operation)].observe(elapsed);
    }

    /// Counts a failed request.
    pub fn record_failure(&self, operation: Operation, failure: Failure) {
        let kind = Failure::ALL
            .iter()
            .position(|f| *f == failure)
            .expect("every failure is listed");
        self.failures[slot(operation)][kind].fetch_add(1, Ordering::Relaxed);
    }

    /// Records one apply batch.
    pub fn record_apply(&self, elapsed: Duration, commands: usize) {
        self.apply_seconds.observe(elapsed);
        self.applied_commands
            .fetch_add(commands as u64, Ordering::Relaxed);
    }

    /// Records a snapshot the state machine built.
    pub fn record_snapshot_built(&self, bytes: u64, elapsed: Duration) {
        self.snapshots_built.fetch_add(1, Ordering::Relaxed);
        self.snapshot_built_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        self.snapshot_build_seconds.observe(elapsed);
    }

    /// Records a snapshot the state machine installed.
    pub fn record_snapshot_installed(&self, bytes: u64) {
        self.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        self.snapshot_installed_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Apply batches so far.
    pub fn apply_batches(&self) -> u64 {
        self.apply_seconds.count()
    }

    /// The metrics and `status` in the Prometheus text format.
    pub fn render(&self, status: &Status) -> String {
        let mut out = String::with_capacity(8 * 1024);
        self.render_requests(&mut out);
        render_raft(&mut out, status);
        header(
            &mut out,
            "kv_apply_seconds",
            "histogram",
            "Time to apply one batch of committed commands to the state machine.",
        );
        self.apply_seconds.render(&mut out, "kv_apply_seconds", "");
        header(
            &mut out,
            "kv_applied_commands_total",
            "counter",
            "Commands applied to the state machine since the process started.",
        );
        let _ = writeln!(
            out,
            "kv_applied_commands_total {}",
            self.applied_commands.load(Ordering::Relaxed)
        );
        self.render_snapshots(&mut out);
        self.render_http(&mut out);
        out
    }

    fn render_http(&self, out: &mut String) {
        header(
            out,
            "kv_http_connections_open",
            "gauge",
            "HTTP connections held now (at most http_connections_max).",
        );
        let _ = writeln!(out, "kv_http_connections_open {}", self.http.open());
        header(
            out,
            "kv_http_connections_closed_total",
            "counter",
            "HTTP connections the node closed, by reason: a timeout, the connection limit, out of \
             files, all connections busy, or a failed TLS handshake.",
        );
        for reason in CloseReason::ALL {
            let _ = writeln!(
                out,
                "kv_http_connections_closed_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.http.closed(reason)
            );
        }
    }

    fn render_snapshots(&self, out: &mut String) {
        let counters = [
            (
                "kv_snapshots_built_total",
                "Snapshots of the key-value state built (automatic or asked for).",
                &self.snapshots_built,
            ),
            (
                "kv_snapshot_built_bytes_total",
                "Bytes of the snapshots built.",
                &self.snapshot_built_bytes,
            ),
            (
                "kv_snapshots_installed_total",
                "Snapshots installed into the key-value state (sent by a leader, or at a restart).",
                &self.snapshots_installed,
            ),
            (
                "kv_snapshot_installed_bytes_total",
                "Bytes of the snapshots installed.",
                &self.snapshot_installed_bytes,
            ),
        ];
        for (name, help, value) in counters {
            header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        header(
            out,
            "kv_snapshot_build_seconds",
            "histogram",
            "Time to build one snapshot of the key-value state.",
        );
        self.snapshot_build_seconds
            .render(out, "kv_snapshot_build_seconds", "");
    }

    fn render_requests(&self, out: &mut String) {
        header(
            out,
            "kv_proposals_total",
            "counter",
            "Commands proposed to Raft, by operation.",
        );
        for operation in Operation::ALL {
            let value = self.proposals[slot(operation)].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "kv_proposals_total{{op=\"{}\"}} {value}",
                operation.label()
            );
        }
        header(
            out,
            "kv_reads_total",
            "counter",
            "Reads by operation and consistency (log reads are also counted as proposals).",
        );
        for (row, operation) in [Operation::Get, Operation::Scan].iter().enumerate() {
            for (column, consistency) in Consistency::ALL.iter().enumerate() {
                let value = self.reads[row][column].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "kv_reads_total{{op=\"{}\",consistency=\"{}\"}} {value}",
                    operation.label(),
                    consistency.label()
                );
            }
        }
        header(
            out,
            "kv_request_failures_total",
            "counter",
            "Failed requests by operation and kind.",
        );
        for operation in Operation::ALL {
            for (kind, failure) in Failure::ALL.iter().enumerate() {
                let value = self.failures[slot(operation)][kind].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "kv_request_failures_total{{op=\"{}\",kind=\"{}\"}} {value}",
                    operation.label(),
                    failure.label()
                );
            }
        }
        header(
            out,
            "kv_request_seconds",
            "histogram",
            "Latency of successful requests, from the HTTP layer, by operation.",
        );
        for operation in Operation::ALL {
            let labels = format!("op=\"{}\"", operation.label());
            self.request_seconds[slot(operation)].render(out, "kv_request_seconds", &labels);
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The RocksDB log store's group-commit counters: how many appends and entries shared each
/// synced write batch.
pub fn render_log_store(out: &mut String, stats: &raft_storage_rocksdb::WriteStats) {
    let counters = [
        (
            "raft_log_store_batches_total",
            "Write batches the log store wrote (one fdatasync each when synced).",
            stats.batches,
        ),
        (
            "raft_log_store_requests_total",
            "Write calls those batches carried (group commit merges calls).",
            stats.requests,
        ),
        (
            "raft_log_store_entries_total",
            "Log entries those batches carried.",
            stats.entries,
        ),
    ];
    for (name, help, value) in counters {
        header(out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
}

fn render_raft(out: &mut String, status: &Status) {
    let gauges = [
        (
            "raft_log_last_index",
            "Last index in the log.",
            status.last_index.0,
        ),
        (
            "raft_log_first_index",
            "First index still in the log (entries before it were compacted into a snapshot).",
            status.first_index.0,
        ),
        (
            "raft_snapshot_index",
            "Last log index the latest snapshot covers (0: none).",
            status.snapshot.map_or(0, |(index, _)| index.0),
        ),
        (
            "raft_snapshot_bytes",
            "Size of the latest snapshot (0: none).",
            status.snapshot.map_or(0, |(_, bytes)| bytes),
        ),
        (
            "raft_snapshot_receiving_bytes",
            "Bytes received of a snapshot being received from the leader (0: none).",
            status
                .snapshot_receiving
                .map_or(0, |(received, _)| received),
        ),
        (
            "raft_membership_voters",
            "Voters in the membership in force (both halves when joint).",
            status.membership.all_voters().len() as u64,
        ),
        (
            "raft_membership_learners",
            "Learners in the membership in force.",
            status.membership.learners.len() as u64,
        ),
        (
            "raft_membership_joint",
            "1 while the cluster is in a joint configuration (a voter change in progress).",
            u64::from(status.membership.is_joint()),
        ),
        (
            "raft_persisted_index",
            "Highest log index durable in the log store.",
            status.persisted_index.0,
        ),
        (
            "raft_leader_id",
            "The leader this node knows (0: none).",
            status.leader.map_or(0, |id| id.0),
        ),
        (
            "raft_is_leader",
            "1 when this node leads.",
            u64::from(status.role == Role::Leader),
        ),
    ];
    for (name, help, value) in gauges {
        header(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    header(
        out,
        "raft_peer_replication_lag_entries",
        "gauge",
        "Leader only: entries the follower is missing (last index minus its match index).",
    );
    for peer in &status.progress {
        let lag = status.last_index.0.saturating_sub(peer.match_index.0);
        let _ = writeln!(
            out,
            "raft_peer_replication_lag_entries{{peer=\"{}\"}} {lag}",
            peer.id.0
        );
    }
    header(
        out,
        "raft_peer_snapshot_sent_bytes",
        "gauge",
        "Leader only: bytes of a snapshot the follower acknowledged, while one is being sent.",
    );
    for peer in &status.progress {
        if let Some((acknowledged, _)) = peer.snapshot_sent {
            let _ = writeln!(
                out,
                "raft_peer_snapshot_sent_bytes{{peer=\"{}\"}} {acknowledged}",
                peer.id.0
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets are cumulative, and the count and sum agree with what was observed.
    #[test]
    fn histogram_renders_cumulative_buckets() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(50));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(9));
        let mut out = String::new();
        histogram.render(&mut out, "x", "op=\"put\"");
        assert!(
            out.contains("x_bucket{op=\"put\",le=\"0.0001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{op=\"put\",le=\"0.005\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{op=\"put\",le=\"5\"} 2\n"), "{out}");
        assert!(
            out.contains("x_bucket{op=\"put\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_count{op=\"put\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{op=\"put\"} 9.00305\n"), "{out}");
    }
}
