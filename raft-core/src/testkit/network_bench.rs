//! Loopback throughput and latency of a transport, measured through a [`NetworkHarness`], for
//! the transports' `cargo bench` targets (`harness = false` binaries that print a table).
//!
//! Three figures per transport: small messages pipelined (messages/s and MB/s of frames), a
//! stream of large snapshot-lane chunks (MB/s), and the round-trip time of a small message
//! (one node sends, the other's loop answers at once; median and 99th percentile). Every loop
//! is bounded by a message count and a time limit.

use crate::message::{Lane, Message, MessageBody};
use crate::network::{Network, SendError};
use crate::testkit::network_suite::{chunk, numbered, start_cluster, NetworkHarness, SuiteNode};
use crate::types::{LogIndex, NodeId};
use crate::wire;
use std::time::Duration;
use tokio::time::{timeout, Instant};

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct BenchPlan {
    /// Small messages sent back to back.
    pub small_messages: u64,
    /// Payload of each small message (an append of one entry).
    pub small_payload_bytes: usize,
    /// Snapshot-lane chunks sent back to back.
    pub snapshot_chunks: u64,
    /// Payload of each chunk.
    pub snapshot_chunk_bytes: usize,
    /// Round trips timed one at a time.
    pub round_trips: u64,
    /// Longest any one measurement may run.
    pub time_limit: Duration,
}

impl Default for BenchPlan {
    fn default() -> BenchPlan {
        BenchPlan {
            small_messages: 200_000,
            small_payload_bytes: 64,
            snapshot_chunks: 256,
            snapshot_chunk_bytes: 1 << 20,
            round_trips: 5_000,
            time_limit: Duration::from_secs(60),
        }
    }
}

/// The figures of one transport.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Small messages per second.
    pub small_messages_per_second: f64,
    /// Frame megabytes (10^6 bytes) per second of the small messages.
    pub small_megabytes_per_second: f64,
    /// Bytes of one small message's frame.
    pub small_frame_bytes: usize,
    /// Frame megabytes per second of the snapshot stream.
    pub snapshot_megabytes_per_second: f64,
    /// Median round-trip time.
    pub round_trip_median: Duration,
    /// 99th-percentile round-trip time.
    pub round_trip_p99: Duration,
}

impl BenchReport {
    /// The table's header line.
    pub fn header() -> String {
        format!(
            "{:<22} {:>12} {:>10} {:>14} {:>12} {:>12}",
            "transport", "small msg/s", "small MB/s", "snapshot MB/s", "RTT p50 µs", "RTT p99 µs"
        )
    }

    /// One line of the table.
    pub fn row(&self, name: &str) -> String {
        format!(
            "{:<22} {:>12.0} {:>10.1} {:>14.1} {:>12.1} {:>12.1}",
            name,
            self.small_messages_per_second,
            self.small_megabytes_per_second,
            self.snapshot_megabytes_per_second,
            self.round_trip_median.as_secs_f64() * 1e6,
            self.round_trip_p99.as_secs_f64() * 1e6,
        )
    }
}

/// `template` with `sequence` as its previous log index; the payload is shared, not copied.
fn renumbered(template: &Message, sequence: u64) -> Message {
    let mut message = template.clone();
    if let MessageBody::Append { prev_log_index, .. } = &mut message.body {
        *prev_log_index = LogIndex(sequence);
    }
    message
}

/// Sends from `nodes[0]` to `nodes[1]` as fast as the queue takes it; counts arrivals.
async fn stream<H: NetworkHarness>(
    harness: &H,
    nodes: &mut [SuiteNode<H::Transport>],
    lane: Lane,
    count: u64,
    make: impl Fn(u64) -> Message,
    time_limit: Duration,
) -> Duration {
    let (sender, receiver) = nodes.split_at_mut(1);
    let transport = &sender[0].transport;
    let inbox = &mut receiver[0].inbox;
    let started = Instant::now();
    let deadline = started + time_limit;
    let mut sent = 0u64;
    let mut received = 0u64;
    while received < count {
        assert!(
            Instant::now() < deadline,
            "the benchmark ran past its time limit"
        );
        while sent < count {
            match harness.send_on(transport, lane, make(sent)) {
                Ok(()) => sent += 1,
                Err(SendError::QueueFull { .. }) => break,
                Err(error) => panic!("send failed: {error}"),
            }
        }
        // Drain what arrived; wait briefly for more when nothing has.
        match timeout(Duration::from_millis(1), inbox.recv()).await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the inbox closed"),
            Err(_) => continue,
        }
        while let Ok(_message) = inbox.try_recv() {
            received += 1;
        }
    }
    started.elapsed()
}

/// Measures one transport: builds two nodes through `harness`, runs the plan, shuts them down.
pub async fn measure<H: NetworkHarness>(harness: &H, plan: BenchPlan) -> BenchReport {
    let mut nodes = start_cluster(harness, 2).await;
    let (from, to) = (NodeId(1), NodeId(2));
    let frame_bytes = |message: &Message| {
        wire::encode_message(message, usize::MAX)
            .expect("no limit")
            .len()
    };

    // Payloads are built once and shared (`Bytes`), so the figures measure the transport, not
    // the making of test data.
    let small_template = chunk(from, to, 0, plan.small_payload_bytes);
    let small = |sequence| renumbered(&small_template, sequence);
    let small_frame_bytes = frame_bytes(&small(1));
    // Warm up: connections dialled, buffers grown.
    stream(
        harness,
        &mut nodes,
        Lane::Ordinary,
        1_000,
        small,
        plan.time_limit,
    )
    .await;
    let elapsed = stream(
        harness,
        &mut nodes,
        Lane::Ordinary,
        plan.small_messages,
        small,
        plan.time_limit,
    )
    .await;
    let small_messages_per_second = plan.small_messages as f64 / elapsed.as_secs_f64();

    let big_template = chunk(from, to, 0, plan.snapshot_chunk_bytes);
    let big = |sequence| renumbered(&big_template, sequence);
    let big_frame_bytes = frame_bytes(&big(1));
    stream(harness, &mut nodes, Lane::Snapshot, 4, big, plan.time_limit).await;
    let elapsed = stream(
        harness,
        &mut nodes,
        Lane::Snapshot,
        plan.snapshot_chunks,
        big,
        plan.time_limit,
    )
    .await;
    let snapshot_megabytes_per_second =
        (plan.snapshot_chunks as f64 * big_frame_bytes as f64) / elapsed.as_secs_f64() / 1e6;

    let mut round_trips = Vec::with_capacity(plan.round_trips as usize);
    let deadline = Instant::now() + plan.time_limit;
    for sequence in 0..plan.round_trips {
        assert!(
            Instant::now() < deadline,
            "the benchmark ran past its time limit"
        );
        let started = Instant::now();
        nodes[0]
            .transport
            .send(numbered(from, to, sequence))
            .expect("the queue is empty");
        let ping = nodes[1].inbox.recv().await.expect("ping");
        nodes[1]
            .transport
            .send(numbered(to, from, sequence))
            .expect("the queue is empty");
        let pong = nodes[0].inbox.recv().await.expect("pong");
        round_trips.push(started.elapsed());
        assert_eq!((ping.from, pong.from), (from, to));
    }
    round_trips.sort();
    let percentile = |p: f64| round_trips[((round_trips.len() - 1) as f64 * p) as usize];

    for node in &nodes {
        node.transport.shutdown().await;
    }
    BenchReport {
        small_messages_per_second,
        small_megabytes_per_second: small_messages_per_second * small_frame_bytes as f64 / 1e6,
        small_frame_bytes,
        snapshot_megabytes_per_second,
        round_trip_median: percentile(0.5),
        round_trip_p99: percentile(0.99),
    }
}

/// Measures each `(name, harness)` in turn with `plan` and prints the plan, the table's header,
/// a row per harness, and the small frame's size (from the first): what a transport's
/// `cargo bench` target prints.
pub async fn print_table<H: NetworkHarness>(plan: BenchPlan, runs: &[(&str, &H)]) {
    println!("{plan:?}");
    println!("{}", BenchReport::header());
    let mut small_frame_bytes = None;
    for (name, harness) in runs {
        let report = measure(*harness, plan).await;
        println!("{}", report.row(name));
        small_frame_bytes.get_or_insert(report.small_frame_bytes);
    }
    if let Some(bytes) = small_frame_bytes {
        println!("small frame: {bytes} bytes");
    }
}
