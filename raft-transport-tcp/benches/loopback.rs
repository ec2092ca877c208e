//! Loopback throughput and latency of the TCP transport, plain and with mutual TLS:
//! `cargo bench -p raft-transport-tcp`. Prints a table (see raft-core's
//! `testkit::network_bench` for what each column measures).

#[path = "../tests/harness/mod.rs"]
mod harness;

use raft_core::testkit::network_bench::{measure, BenchPlan, BenchReport};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; a name filter is not supported, so ignore arguments.
    let plan = BenchPlan::default();
    println!("{plan:?}");
    println!("{}", BenchReport::header());
    let plain = measure(&harness::Harness::plain(), plan).await;
    println!("{}", plain.row("tcp"));
    let tls = measure(&harness::Harness::tls(), plan).await;
    println!("{}", tls.row("tcp+tls"));
    println!("small frame: {} bytes", plain.small_frame_bytes);
}
