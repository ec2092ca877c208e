//! Loopback throughput and latency of the QUIC transport: `cargo bench -p raft-transport-quic`.
//! Prints a table (see raft-core's `testkit::network_bench` for what each column measures).

#[path = "../tests/harness/mod.rs"]
mod harness;

use raft_core::testkit::network_bench::{print_table, BenchPlan};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quic = harness::Harness::new();
    print_table(BenchPlan::default(), &[("quic", &quic)]).await;
}
