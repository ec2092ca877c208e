//! Node addresses live in the membership: a node that joins over TCP (plain and with mutual
//! TLS) is reached by the members because its address is committed with the change that adds
//! it, without anyone calling `add_peer` on their transports; a node that joins later learns
//! the addresses of the others (and of the initial voters, from `Config::initial_nodes`) the
//! same way. The scenario is raft-core's, shared with every transport.

mod harness;

use harness::Harness;
use raft_core::testkit::network_suite;
use raft_core::LogStore;
use raft_storage_mem::MemLogStore;
use std::sync::Arc;

fn new_store() -> Arc<dyn LogStore> {
    Arc::new(MemLogStore::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_is_reached_through_the_address_in_the_membership() {
    network_suite::joined_nodes_are_reached_through_the_membership(&Harness::plain(), new_store)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_is_reached_through_the_address_in_the_membership_over_tls() {
    network_suite::joined_nodes_are_reached_through_the_membership(&Harness::tls(), new_store)
        .await;
}
