//! Loopback throughput and latency of the TCP transport, plain and with mutual TLS:
//! `cargo bench -p raft-transport-tcp`. Prints a table (see raft-core's
//! `testkit::network_bench` for what each column measures).

#[path = "../tests/harness/mod.rs"]
mod harness;

use raft_core::testkit::network_bench::{print_table, BenchPlan};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; a name filter is not supported, so ignore arguments.
    let plain = harness::Harness::plain();
    let tls = harness::Harness::tls();
    print_table(BenchPlan::default(), &[("tcp", &plain), ("tcp+tls", &tls)]).await;
}
