//! End-to-end checks that any store or transport can run: a three-node cluster built from
//! the given backends must elect a leader, commit writes proposed through every node, apply
//! them in one order everywhere, and keep them across restarts.
//!
//! ```
//! use raft_core::local_network::LocalRouter;
//! use raft_core::testkit::cluster::{commit_through_every_node, RecordingMachine};
//! use raft_core::{LogStore, Network, NodeId};
//! use raft_storage_mem::MemLogStore;
//! use std::sync::Arc;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let router = LocalRouter::new();
//! let ids = [NodeId(1), NodeId(2), NodeId(3)];
//! let networks: Vec<Arc<dyn Network>> = ids.iter().map(|id| router.network(*id) as _).collect();
//! let stores: Vec<Arc<dyn LogStore>> = ids.iter().map(|_| Arc::new(MemLogStore::new()) as _).collect();
//! let machines: Vec<RecordingMachine> = ids.iter().map(|_| RecordingMachine::default()).collect();
//! let nodes = commit_through_every_node(&ids, networks, stores, &machines, 10).await;
//! for node in nodes {
//!     node.shutdown().await;
//! }
//! # });
//! ```

use crate::config::Config;
use crate::network::Network;
use crate::protocol::Role;
use crate::runtime::{RaftNode, RuntimeOptions};
use crate::state_machine::{StateMachine, StateMachineError};
use crate::storage::LogStore;
use crate::types::{LogIndex, NodeId};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long any one step of these checks may take before it fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// A state machine that records every command it applies and answers with the count so far.
/// Clones share the record, so a test keeps one to inspect.
#[derive(Clone, Default)]
pub struct RecordingMachine {
    applied: Arc<Mutex<Vec<(LogIndex, Bytes)>>>,
}

impl RecordingMachine {
    /// The commands applied so far, in order.
    pub fn applied(&self) -> Vec<(LogIndex, Bytes)> {
        self.applied.lock().expect("record lock poisoned").clone()
    }

    /// Forgets everything (a restarted in-memory machine).
    pub fn reset(&self) {
        self.applied.lock().expect("record lock poisoned").clear();
    }
}

#[async_trait]
impl StateMachine for RecordingMachine {
    async fn apply(&mut self, index: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
        let mut applied = self.applied.lock().expect("record lock poisoned");
        applied.push((index, command));
        Ok(Bytes::from(applied.len().to_string()))
    }
}

/// Starts one node with short timeouts suited to tests (2 ms ticks: 30–60 ms elections).
pub async fn start_node(
    id: NodeId,
    voters: &[NodeId],
    network: Arc<dyn Network>,
    store: Arc<dyn LogStore>,
    machine: RecordingMachine,
) -> RaftNode {
    let mut config = Config::new(id, voters.to_vec());
    config.seed = id.0;
    let options = RuntimeOptions {
        tick_interval: Duration::from_millis(2),
        ..RuntimeOptions::default()
    };
    RaftNode::start(config, options, store, Box::new(machine), network)
        .await
        .unwrap_or_else(|error| panic!("node {id} failed to start: {error}"))
}

/// Waits until one of the running `nodes` leads, and returns its position.
pub async fn wait_for_leader(nodes: &[RaftNode]) -> usize {
    tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            let leads =
                |n: &RaftNode| n.stopped_reason().is_none() && n.status().role == Role::Leader;
            if let Some(position) = nodes.iter().position(leads) {
                return position;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("no leader was elected in time")
}

/// Waits until every node has applied `index`.
pub async fn wait_applied(nodes: &[RaftNode], index: LogIndex) {
    for node in nodes {
        tokio::time::timeout(STEP_TIMEOUT, node.wait_applied(index))
            .await
            .unwrap_or_else(|_| panic!("{} did not apply {index} in time", node.status().id))
            .expect("node is running");
    }
}

/// Starts a cluster of `ids` on the given backends, proposes `rounds` writes through each
/// node in turn, and checks every node applied the same commands in the same order. Returns
/// the running nodes.
pub async fn commit_through_every_node(
    ids: &[NodeId],
    networks: Vec<Arc<dyn Network>>,
    stores: Vec<Arc<dyn LogStore>>,
    machines: &[RecordingMachine],
    rounds: usize,
) -> Vec<RaftNode> {
    assert_eq!(ids.len(), networks.len());
    assert_eq!(ids.len(), stores.len());
    let mut nodes = Vec::new();
    for ((id, network), (store, machine)) in ids
        .iter()
        .zip(networks)
        .zip(stores.into_iter().zip(machines.iter()))
    {
        nodes.push(start_node(*id, ids, network, store, machine.clone()).await);
    }
    wait_for_leader(&nodes).await;
    let before = machines[0].applied().len();
    for round in 0..rounds {
        for node in &nodes {
            let command = Bytes::from(format!("round {round} via {}", node.status().id));
            tokio::time::timeout(STEP_TIMEOUT, node.propose(command))
                .await
                .expect("write answered in time")
                .expect("write committed");
        }
    }
    let commit = nodes
        .iter()
        .map(|n| n.status().commit_index)
        .max()
        .expect("nodes");
    wait_applied(&nodes, commit).await;
    let reference = machines[0].applied();
    assert_eq!(reference.len(), before + rounds * ids.len());
    for (machine, id) in machines.iter().zip(ids) {
        assert_eq!(
            machine.applied(),
            reference,
            "{id} applied a different history"
        );
    }
    nodes
}

/// Stops the leader of `nodes`, waits for the others to elect a new one, commits a write
/// proposed through the first of them, then shuts them down: a majority keeps committing
/// after its leader stops.
pub async fn commit_after_the_leader_stops(nodes: &[RaftNode]) {
    let leader = wait_for_leader(nodes).await;
    nodes[leader].shutdown().await;
    let rest: Vec<_> = nodes
        .iter()
        .enumerate()
        .filter(|(position, _)| *position != leader)
        .map(|(_, node)| node.clone())
        .collect();
    wait_for_leader(&rest).await;
    rest[0]
        .propose("after the leader stopped".into())
        .await
        .expect("the remaining majority commits");
    for node in rest {
        node.shutdown().await;
    }
}
