//! Snapshots and membership changes through the async runtime: in-process network, in-memory
//! stores, and a state machine that builds and installs snapshots. Each test states what it
//! proves.

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::local_network::LocalRouter;
use raft_core::membership::{MembershipChange, MembershipError};
use raft_core::protocol::Role;
use raft_core::runtime::{NodeError, RaftNode, RuntimeOptions, StopCause};
use raft_core::snapshot::{SnapshotMeta, SnapshotReader, SnapshotWriter};
use raft_core::{
    Config, LogIndex, LogStore, NodeId, SnapshotFormatError, StateMachine, StateMachineError,
};
use raft_storage_mem::MemLogStore;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every command applied, in order, plus the applied index. Its snapshot is the commands,
/// each prefixed by its length, in the data format `formats` names.
#[derive(Clone, Default)]
struct Table {
    state: Arc<Mutex<TableState>>,
    formats: Formats,
}

/// The snapshot data formats a release of `Table` writes and reads: one release of the
/// application in a rolling upgrade. The layout is the same in every version; only the
/// version recorded in the snapshot meta differs.
#[derive(Clone, Copy, Debug)]
struct Formats {
    writes: u32,
    reads: (u32, u32),
}

impl Default for Formats {
    fn default() -> Self {
        Formats::OLD
    }
}

impl Formats {
    /// The release before the upgrade: writes and reads version 1.
    const OLD: Formats = Formats {
        writes: 1,
        reads: (1, 1),
    };
    /// The release after it: writes version 2, reads both.
    const NEW: Formats = Formats {
        writes: 2,
        reads: (1, 2),
    };
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

    fn snapshot_format_version(&self) -> u32 {
        self.formats.writes
    }

    fn installs_snapshot_format(&self, version: u32) -> bool {
        (self.formats.reads.0..=self.formats.reads.1).contains(&version)
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
    start_release(router, id, voters, store, Formats::OLD)
        .await
        .expect("node starts")
}

/// Starts a node whose state machine is the release with `formats`.
async fn start_release(
    router: &LocalRouter,
    id: NodeId,
    voters: &[NodeId],
    store: MemLogStore,
    formats: Formats,
) -> Result<Node, NodeError> {
    let table = Table {
        formats,
        ..Table::default()
    };
    let raft = RaftNode::start(
        config(id, voters),
        options(),
        Arc::new(store.clone()),
        Box::new(table.clone()),
        router.network(id),
    )
    .await?;
    Ok(Node {
        id,
        store,
        table,
        raft,
    })
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
    tokio::time::timeout(TIMEOUT, async {
        while removed.raft.removal().is_none() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the removed leader learns it was removed");
    removed.raft.shutdown().await;
    for node in &nodes {
        node.raft.shutdown().await;
    }
}

/// Issue 14, "snapshots that can evolve": a snapshot records the data format its state machine
/// writes; a node whose machine does not read that format refuses the stored snapshot on start
/// with a typed error naming both versions (nothing misread, the snapshot kept), and the next
/// release, which reads it, starts from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_snapshot_of_a_format_the_machine_cannot_read_is_refused_on_start() {
    let router = LocalRouter::new();
    let id = NodeId(1);
    let store = MemLogStore::new();
    let node = start_release(&router, id, &[id], store.clone(), Formats::NEW)
        .await
        .expect("node starts");
    write(&node, 15, "new release").await;
    let meta = node.raft.snapshot().await.expect("a snapshot");
    assert_eq!(meta.format_version, 2, "the machine's format is recorded");
    let stored = store.snapshot().await.unwrap().expect("the store holds it");
    assert_eq!(stored.format_version, 2);
    let rows = node.table.rows();
    node.raft.shutdown().await;

    // Rolled back to the old release, which reads only version 1.
    let refused = start_release(&router, id, &[id], store.clone(), Formats::OLD).await;
    match refused {
        Err(NodeError::SnapshotFormat(error)) => {
            assert_eq!(
                error,
                raft_core::SnapshotFormatError {
                    index: meta.last_index,
                    version: 2,
                    writes: 1,
                }
            );
            let message = error.to_string();
            assert!(message.contains("format version 2"), "{message}");
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("the old release started from a snapshot it cannot read"),
    }
    assert_eq!(store.snapshot().await.unwrap(), Some(stored), "kept");

    let node = start_release(&router, id, &[id], store.clone(), Formats::NEW)
        .await
        .expect("the new release starts from the snapshot");
    wait_applied(&node, meta.last_index).await;
    assert_eq!(node.table.installs(), 1);
    assert_eq!(node.table.rows(), rows);
    node.raft.shutdown().await;
}

/// A follower still on the old release, handed by the leader a snapshot in the new format,
/// stops (fail-stop) with the format in its reason instead of misreading it; once upgraded
/// on the same store, it installs the snapshot it kept and follows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_handed_a_snapshot_it_cannot_read_stops_and_an_upgrade_installs_it() {
    let router = LocalRouter::new();
    let voters: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let mut nodes = Vec::new();
    for id in &voters {
        let formats = if *id == NodeId(3) {
            Formats::OLD
        } else {
            Formats::NEW
        };
        let node = start_release(&router, *id, &voters, MemLogStore::new(), formats)
            .await
            .expect("node starts");
        nodes.push(node);
    }
    // Node 3 is behind: the upgraded nodes compact past it while it is cut off.
    router.isolate(NodeId(3));
    let first = leader(&nodes[..2]).await;
    write(&nodes[first], 100, "while node 3 is cut off").await;
    assert!(nodes[first].raft.status().first_index > LogIndex(50));
    router.heal();
    let reason = tokio::time::timeout(TIMEOUT, nodes[2].raft.stopped())
        .await
        .expect("node 3 stops in time");
    assert!(
        matches!(
            reason.cause,
            StopCause::SnapshotFormat(SnapshotFormatError { version: 2, .. })
        ),
        "reason: {reason}"
    );
    let message = reason.to_string();
    assert!(
        message.contains("format version 2") && message.contains("does not install"),
        "reason: {reason}"
    );
    assert_eq!(nodes[2].table.installs(), 0, "nothing was misread");

    let old = nodes.pop().expect("node 3");
    old.raft.shutdown().await;
    let upgraded = start_release(&router, old.id, &voters, old.store.clone(), Formats::NEW)
        .await
        .expect("the upgraded node starts");
    nodes.push(upgraded);
    let leader = leader(&nodes).await;
    write(&nodes[leader], 3, "after the upgrade").await;
    let commit = nodes[leader].raft.status().commit_index;
    wait_applied(&nodes[2], commit).await;
    assert_eq!(nodes[2].table.rows(), nodes[leader].table.rows());
    assert!(nodes[2].table.installs() >= 1);
    for node in &nodes {
        node.raft.shutdown().await;
    }
}
