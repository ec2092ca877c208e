//! Node addresses live in the membership: a node that joins over TCP is reached by the
//! members because its address is committed with the change that adds it, without anyone
//! calling `add_peer` on their transports; a node that joins later learns the addresses of the
//! others (and of the initial voters, from `Config::initial_nodes`) the same way.

use bytes::Bytes;
use raft_core::runtime::{RaftNode, RuntimeOptions};
use raft_core::testkit::cluster::{wait_applied, RecordingMachine};
use raft_core::wire::ClusterId;
use raft_core::{Config, MembershipChange, NodeId, NodeMeta};
use raft_storage_mem::MemLogStore;
use raft_transport_tcp::{TcpConfig, TcpTransport};
use std::sync::Arc;
use std::time::Duration;

async fn transport(id: u64) -> Arc<TcpTransport> {
    let config = TcpConfig::new(ClusterId(12), NodeId(id), "127.0.0.1:0".parse().unwrap());
    Arc::new(TcpTransport::bind(config).await.expect("binds"))
}

async fn start(
    id: u64,
    voters: &[u64],
    initial: &[(u64, &TcpTransport)],
    transport: Arc<TcpTransport>,
    machine: RecordingMachine,
) -> RaftNode {
    let mut config = Config::new(NodeId(id), voters.iter().copied().map(NodeId).collect());
    config.seed = id;
    config.initial_nodes = initial
        .iter()
        .map(|(id, t)| (NodeId(*id), NodeMeta::at(t.local_addr().to_string())))
        .collect();
    let options = RuntimeOptions {
        tick_interval: Duration::from_millis(2),
        ..RuntimeOptions::default()
    };
    let store = Arc::new(MemLogStore::new());
    RaftNode::start(config, options, store, Box::new(machine), transport)
        .await
        .expect("starts")
}

/// Starts node `id` knowing only where `leader_transport`'s node is, has `leader` add it with
/// its address recorded in the membership, waits until the leader reached it and caught it
/// up, and promotes it.
async fn join(
    leader: &RaftNode,
    id: u64,
    transport: &Arc<TcpTransport>,
    leader_transport: &TcpTransport,
) -> (RaftNode, RecordingMachine) {
    let leader_id = leader.status().id;
    transport.add_peer(leader_id, leader_transport.local_addr());
    let machine = RecordingMachine::default();
    let node = start(id, &[], &[], transport.clone(), machine.clone()).await;
    let meta = NodeMeta::at(transport.local_addr().to_string());
    leader
        .change_membership(MembershipChange::add_learner_at(NodeId(id), meta))
        .await
        .expect("learner added");
    leader
        .wait_caught_up(NodeId(id), Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("the leader reaches n{id} at its recorded address: {e}"));
    leader
        .change_membership(MembershipChange::promote(NodeId(id)))
        .await
        .expect("promoted");
    (node, machine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_is_reached_through_the_address_in_the_membership() {
    let (t1, t2, t3) = (transport(1).await, transport(2).await, transport(3).await);
    // Node 1 bootstraps alone and records its own address for whoever joins later.
    let m1 = RecordingMachine::default();
    let n1 = start(1, &[1], &[(1, &t1)], t1.clone(), m1.clone()).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while n1.status().leader != Some(NodeId(1)) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("node 1 leads");
    n1.propose(Bytes::from("before")).await.expect("commits");

    // Node 2 joins knowing only where node 1 is; node 1's transport is told nothing by hand.
    let (n2, m2) = join(&n1, 2, &t2, &t1).await;
    // Node 3 joins knowing only the leader; it learns node 2's address from the membership.
    let (n3, m3) = join(&n1, 3, &t3, &t1).await;
    assert_eq!(
        n3.status().membership.nodes.get(&NodeId(1)),
        Some(&NodeMeta::at(t1.local_addr().to_string())),
        "the initial voter's address travelled in the log"
    );
    // Node 2 leads now: it reaches node 3, and a write through node 3 is forwarded to node 2,
    // which nobody told node 3 of.
    n1.transfer_leadership(NodeId(2))
        .await
        .expect("node 2 leads");
    tokio::time::timeout(Duration::from_secs(10), async {
        while n3.status().leader != Some(NodeId(2)) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("node 2 reaches node 3, which it was never told of");
    n3.propose(Bytes::from("from three"))
        .await
        .expect("node 3 reaches the new leader");
    let nodes = [n1.clone(), n2.clone(), n3.clone()];
    wait_applied(&nodes, n2.status().commit_index).await;
    assert_eq!(m3.applied(), m1.applied());
    assert_eq!(m2.applied(), m1.applied());

    // Removing node 1 commits, and the others still commit without it.
    n2.change_membership(MembershipChange::remove(NodeId(1)))
        .await
        .expect("removed");
    n3.propose(Bytes::from("after")).await.expect("commits");
    for node in nodes {
        node.shutdown().await;
    }
    for transport in [&t1, &t2, &t3] {
        assert_eq!(
            transport.tasks_running(),
            0,
            "a transport task outlived shutdown"
        );
    }
}
