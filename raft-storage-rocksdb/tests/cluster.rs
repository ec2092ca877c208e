//! A three-node cluster on RocksDB stores in one process: committed data survives stopping a
//! node and reopening its store from disk, and survives a restart of the whole cluster.
//! (Process crashes with SIGKILL are covered by `crash.rs`, which checks the store itself.)

use raft_core::local_network::LocalRouter;
use raft_core::runtime::RaftNode;
use raft_core::testkit::cluster::{
    commit_through_every_node, start_node, wait_applied, wait_for_leader, RecordingMachine,
    STEP_TIMEOUT,
};
use raft_core::{LogStore, Network, NodeId};
use raft_storage_rocksdb::{RocksLogStore, RocksLogStoreOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn open(directory: &Path) -> Arc<dyn LogStore> {
    Arc::new(RocksLogStore::open(directory, RocksLogStoreOptions::default()).expect("store opens"))
}

async fn propose(node: &RaftNode, command: &str) {
    tokio::time::timeout(STEP_TIMEOUT, node.propose(command.to_string().into()))
        .await
        .expect("write answered in time")
        .expect("write committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_writes_survive_node_and_cluster_restarts() {
    let root = tempfile::tempdir().unwrap();
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let directories: Vec<PathBuf> = ids
        .iter()
        .map(|id| root.path().join(format!("node-{id}")))
        .collect();
    let router = LocalRouter::new();
    let machines: Vec<RecordingMachine> = ids.iter().map(|_| RecordingMachine::default()).collect();
    let networks: Vec<Arc<dyn Network>> = ids.iter().map(|id| router.network(*id) as _).collect();
    let stores: Vec<Arc<dyn LogStore>> = directories.iter().map(|d| open(d)).collect();
    let mut nodes = commit_through_every_node(&ids, networks, stores, &machines, 5).await;

    // Stop the leader, let the others commit without it, then bring it back from its disk.
    let leader = wait_for_leader(&nodes).await;
    nodes[leader].shutdown().await;
    let survivor = wait_for_leader(&nodes).await;
    assert_ne!(survivor, leader, "a stopped node cannot lead");
    propose(&nodes[survivor], "while the old leader was down").await;
    machines[leader].reset();
    nodes[leader] = start_node(
        ids[leader],
        &ids,
        router.network(ids[leader]),
        open(&directories[leader]),
        machines[leader].clone(),
    )
    .await;
    propose(&nodes[leader], "after it came back").await;
    let commit = nodes[survivor].status().commit_index;
    wait_applied(&nodes, commit).await;
    let reference = machines[survivor].applied();
    assert_eq!(reference.len(), 17);
    assert_eq!(
        machines[leader].applied(),
        reference,
        "restarted node replayed a different log"
    );

    // Stop everything; every store is reopened from disk and the history is intact.
    for node in &nodes {
        node.shutdown().await;
    }
    let mut restarted = Vec::new();
    for (position, id) in ids.iter().enumerate() {
        machines[position].reset();
        restarted.push(
            start_node(
                *id,
                &ids,
                router.network(*id),
                open(&directories[position]),
                machines[position].clone(),
            )
            .await,
        );
    }
    let leader = wait_for_leader(&restarted).await;
    propose(&restarted[leader], "after the cluster restart").await;
    let commit = restarted[leader].status().commit_index;
    wait_applied(&restarted, commit).await;
    for machine in &machines {
        let applied = machine.applied();
        assert_eq!(applied.len(), 18, "a committed write was lost");
        assert_eq!(
            applied[..17],
            reference[..],
            "history changed across the restart"
        );
    }
    for node in restarted {
        node.shutdown().await;
    }
}
