//! The test kit (feature `testkit`): a deterministic cluster simulator of the protocol
//! ([`sim`]) and of the real runtime ([`runtime_sim`]), a linearizability checker, and
//! conformance suites that any `LogStore` or `Network` implementation can run.

pub mod cluster;
pub mod linearizability;
pub mod log_store_suite;
pub mod network_bench;
pub mod network_suite;
pub mod runtime_sim;
pub mod seeds;
pub mod sim;
