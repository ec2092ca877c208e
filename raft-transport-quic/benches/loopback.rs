//! Loopback throughput and latency of the QUIC transport: `cargo bench -p raft-transport-quic`.
//! Prints a table (see raft-core's `testkit::network_bench` for what each column measures).

#[path = "../tests/harness/mod.rs"]
mod harness;

use raft_core::testkit::network_bench::{measure, BenchPlan, BenchReport};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let plan = BenchPlan::default();
    println!("{plan:?}");
    println!("{}", BenchReport::header());
    let report = measure(&harness::Harness::new(), plan).await;
    println!("{}", report.row("quic"));
    println!("small frame: {} bytes", report.small_frame_bytes);
}
