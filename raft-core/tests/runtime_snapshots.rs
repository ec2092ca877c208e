//! Snapshots and membership changes through the async runtime: in-process network, in-memory
//! stores, and a state machine that builds and installs snapshots. Each test states what it
//! proves.

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::local_network::LocalRouter;
use raft_core::membership::{MembershipChange, MembershipError};
use raft_core::protocol::Role;
use raft_core::runtime::{NodeError, RaftNode, RuntimeOptions};
use raft_core::snapshot::{SnapshotMeta, SnapshotReader, SnapshotWriter};
use raft_core::{Config, LogIndex, LogStore, NodeId, StateMachine, StateMachineError};
use raft_storage_mem::MemLogStore;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every command applied, in order, plus the applied index. Its snapshot is the commands,
/// each prefixed by its length.
#[derive(Clone, Default)]
struct Table {
    state: Arc<Mutex<TableState>>,
}

#[derive(Default)]
struct TableState {
    rows: Vec<Bytes>,
    applied: LogIndex,
    installs: usize,
}

#[async_trait]
impl StateMachine for Table {
    async fn apply(&mut self, index: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
        let mut state = self.state.lock().unwrap();
        state.rows.push(command);
        state.applied = index;
        Ok(Bytes::from(state.rows.len().to_string()))
    }

    async fn apply_batch(
        &mut self,
        batch: raft_core::ApplyBatch,
    ) -> Result<Vec<Bytes>, StateMachineError> {
        let mut answers = Vec::new();
        for (index, command) in batch.commands {
            answers.push(self.apply(index, command).await?);
        }
        self.state.lock().unwrap().applied = batch.last_index;
        Ok(answers)
    }

    async fn build_snapshot(&mut self, out: &mut SnapshotWriter) -> Result<(), StateMachineError> {
        let rows = self.state.lock().unwrap().rows.clone();
        for row in rows {
            out.write(&(row.len() as u32).to_be_bytes()).await?;
            out.write(&row).await?;
        }
        Ok(())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: &mut SnapshotReader,
    ) -> Result<(), StateMachineError> {
        let bytes = data.read_to_end().await?;
        let mut rows = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let bad = || StateMachineError("a truncated snapshot row".into());
            let len = u32::from_be_bytes(rest.get(..4).ok_or_else(bad)?.try_into().unwrap());
            let row = rest.get(4..4 + len as usize).ok_or_else(bad)?;
            rows.push(Bytes::copy_from_slice(row));
            rest = &rest[4 + len as usize..];
        }
        let mut state = self.state.lock().unwrap();
        state.rows = rows;
        state.applied = meta.last_index;
        state.installs += 1;
        Ok(())
    }

    async fn applied_index(&mut self) -> Result<LogIndex, StateMachineError> {
        Ok(self.state.lock().unwrap().applied)
    }
}

impl Table {
    fn rows(&self) -> Vec<Bytes> {
        self.state.lock().unwrap().rows.clone()
    }

    fn installs(&self) -> usize {
        self.state.lock().unwrap().installs
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn options() -> RuntimeOptions {
    RuntimeOptions {
        tick_interval: Duration::from_millis(2),
        ..RuntimeOptions::default()
    }
}

fn config(id: NodeId, voters: &[NodeId]) -> Config {
    let mut config = Config::new(id, voters.to_vec());
    config.seed = 7 * id.0;
    config.snapshot_interval_entries = 20;
    config.snapshot_tail_entries = 5;
    config.snapshot_chunk_bytes_max = 256;
    config
}

struct Node {
    id: NodeId,
    store: MemLogStore,
    table: Table,
    raft: RaftNode,
}

async fn start(router: &LocalRouter, id: NodeId, voters: &[NodeId], store: MemLogStore) -> Node {
    let table = Table::default();
    let raft = RaftNode::start(
        config(id, voters),
        options(),
        Arc::new(store.clone()),
        Box::new(table.clone()),
        router.network(id),
    )
    .await
    .expect("node starts");
    Node {
        id,
        store,
        table,
        raft,
    }
}

async fn cluster(router: &LocalRouter, size: u64) -> Vec<Node> {
    let voters: Vec<NodeId> = (1..=size).map(NodeId).collect();
    let mut nodes = Vec::new();
    for id in &voters {
        nodes.push(start(router, *id, &voters, MemLogStore::new()).await);
    }
    nodes
}

async fn leader(nodes: &[Node]) -> usize {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(k) = nodes
                .iter()
                .position(|n| n.raft.status().role == Role::Leader)
            {
                return k;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("a leader is elected in time")
}

async fn write(node: &Node, count: usize, tag: &str) {
    for k in 0..count {
        let command = Bytes::from(format!("{tag} {k} padded to be a little longer"));
        node.raft.propose(command).await.expect("write commits");
    }
}

async fn wait_applied(node: &Node, index: LogIndex) {
    tokio::time::timeout(TIMEOUT, node.raft.wait_applied(index))
        .await
        .unwrap_or_else(|_| panic!("{} catches up in time", node.id))
        .expect("node is running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_compacted_entries_catches_up_by_snapshot_and_keeps_following() {
    let router = LocalRouter::new();
    let nodes = cluster(&router, 3).await;
    let first = leader(&nodes).await;
    let lagging = (first + 1) % 3;
    router.isolate(nodes[lagging].id);
    write(&nodes[first], 100, "while isolated").await;
    let status = nodes[first].raft.status();
    assert!(
        status.first_index > LogIndex(50),
        "the leader compacted its log: {status:?}"
    );
    let compacted = nodes[first].store.bounds().await.unwrap();
    assert!(
        compacted.first > LogIndex(50),
        "the store purged: {compacted:?}"
    );
    router.heal();
    let leader = leader(&nodes).await;
    write(&nodes[leader], 5, "after").await;
    let commit = nodes[leader].raft.status().commit_index;
    wait_applied(&nodes[lagging], commit).await;
    assert_eq!(nodes[lagging].table.rows(), nodes[leader].table.rows());
    assert!(
        nodes[lagging].table.installs() >= 1,
        "it caught up by a snapshot"
    );
    let status = nodes[lagging].raft.status();
    assert!(status.first_index > LogIndex(1) && status.snapshot.is_some());
    for node in &nodes {
        node.raft.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_by_hand_compacts_the_log_and_a_restart_installs_it() {
    let router = LocalRouter::new();
    let mut nodes = cluster(&router, 1).await;
    write(&nodes[0], 15, "before").await;
    let meta = nodes[0].raft.snapshot().await.expect("a snapshot");
    let status = nodes[0].raft.status();
    assert_eq!(meta.last_index, status.applied_index);
    assert_eq!(status.snapshot, Some((meta.last_index, meta.data_bytes)));
    // The purge follows the snapshot in the node's next write.
    let kept_from = LogIndex(meta.last_index.0 - 5 + 1);
    tokio::time::timeout(TIMEOUT, async {
        while nodes[0].store.bounds().await.unwrap().first != kept_from {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the store keeps 5 entries below the snapshot");
    let rows = nodes[0].table.rows();
    // A restart with an empty state machine installs the snapshot, then replays the rest.
    let old = nodes.remove(0);
    old.raft.shutdown().await;
    let node = start(&router, NodeId(1), &[NodeId(1)], old.store.clone()).await;
    wait_applied(&node, meta.last_index).await;
    assert_eq!(node.table.installs(), 1);
    assert_eq!(node.table.rows(), rows);
    write(&node, 1, "after").await;
    node.raft.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_is_added_as_a_learner_promoted_and_the_removed_leader_steps_down() {
    let router = LocalRouter::new();
    let mut nodes = cluster(&router, 3).await;
    let first = leader(&nodes).await;
    write(&nodes[first], 30, "before").await;
    // Node 4 starts with no voters: it joins once a member adds it.
    nodes.push(start(&router, NodeId(4), &[], MemLogStore::new()).await);
    let membership = nodes[first]
        .raft
        .change_membership(MembershipChange::add_learner(NodeId(4)))
        .await
        .expect("the learner is added");
    assert!(membership.learners.contains(&NodeId(4)));
    let commit = nodes[first].raft.status().commit_index;
    wait_applied(&nodes[3], commit).await;
    assert_eq!(nodes[3].table.rows(), nodes[first].table.rows());
    // A follower refuses, naming the leader.
    let follower = (first + 1) % 3;
    match nodes[follower]
        .raft
        .change_membership(MembershipChange::promote(NodeId(4)))
        .await
    {
        Err(NodeError::Membership(MembershipError::NotLeader(Some(leader)))) => {
            assert_eq!(leader, nodes[first].id)
        }
        other => panic!("a follower should refuse: {other:?}"),
    }
    // Promote 4 and remove the leader in one change: through a joint configuration.
    let change = MembershipChange {
        promote: vec![NodeId(4)],
        remove: vec![nodes[first].id],
        ..Default::default()
    };
    let membership = nodes[first]
        .raft
        .change_membership(change)
        .await
        .expect("the change commits");
    assert!(!membership.is_joint());
    assert_eq!(membership.voters.len(), 3);
    assert!(membership.voters.contains(&NodeId(4)));
    assert!(membership.removed.contains(&nodes[first].id));
    let removed = nodes.remove(first);
    tokio::time::timeout(TIMEOUT, async {
        while removed.raft.status().role == Role::Leader {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the removed leader steps down");
    let next = leader(&nodes).await;
    write(&nodes[next], 5, "after").await;
    let commit = nodes[next].raft.status().commit_index;
    for node in &nodes {
        wait_applied(node, commit).await;
        assert_eq!(node.table.rows(), nodes[next].table.rows());
    }
    removed.raft.shutdown().await;
    for node in &nodes {
        node.raft.shutdown().await;
    }
}
