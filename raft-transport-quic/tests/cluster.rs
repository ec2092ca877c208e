//! Three `RaftNode`s over QUIC with mutual TLS on 127.0.0.1 (ports chosen by the OS) elect a
//! leader, commit writes proposed through every node, and keep committing after the leader
//! stops.

use raft_core::testkit::cluster::{
    commit_after_the_leader_stops, commit_through_every_node, RecordingMachine,
};
use raft_core::wire::ClusterId;
use raft_core::{LogStore, Network, NodeId};
use raft_storage_mem::MemLogStore;
use raft_transport_quic::{generate_cluster_certificates, QuicConfig, QuicTransport, TlsFiles};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_quic_elect_a_leader_and_commit() {
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let folder = std::env::temp_dir().join(format!("raft-quic-cluster-{}", std::process::id()));
    generate_cluster_certificates(&folder, &ids).expect("certificates");
    let mut transports = Vec::new();
    for id in ids {
        let config = QuicConfig::new(
            ClusterId(12),
            id,
            "127.0.0.1:0".parse().unwrap(),
            TlsFiles::in_folder(&folder, id),
        );
        transports.push(Arc::new(QuicTransport::bind(config).await.expect("binds")));
    }
    for transport in &transports {
        for (id, peer) in ids.iter().zip(&transports) {
            transport.add_peer(*id, peer.local_addr());
        }
    }
    let networks: Vec<Arc<dyn Network>> = transports.iter().map(|t| t.clone() as _).collect();
    let stores: Vec<Arc<dyn LogStore>> = ids
        .iter()
        .map(|_| Arc::new(MemLogStore::new()) as _)
        .collect();
    let machines: Vec<RecordingMachine> = ids.iter().map(|_| RecordingMachine::default()).collect();
    let nodes = commit_through_every_node(&ids, networks, stores, &machines, 10).await;

    commit_after_the_leader_stops(&nodes).await;
    assert!(
        transports.iter().all(|t| t.tasks_running() == 0),
        "a transport task outlived shutdown"
    );
    std::fs::remove_dir_all(&folder).ok();
}
