//! The runtime's metrics through the `metrics` facade: after a known workload on three nodes,
//! every figure of `raft_core::runtime::telemetry` holds the value the workload implies. A
//! binary of its own: the recorder is process-wide.

use async_trait::async_trait;
use bytes::Bytes;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use raft_core::local_network::LocalRouter;
use raft_core::protocol::Role;
use raft_core::runtime::{RaftNode, RuntimeOptions};
use raft_core::{Config, LogIndex, NodeId, StateMachine, StateMachineError};
use raft_storage_mem::MemLogStore;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

struct Echo;

#[async_trait]
impl StateMachine for Echo {
    async fn apply(&mut self, _: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
        Ok(command)
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);
const COMMAND_BYTES: usize = 100;

/// Proves: the metrics appear with the right values after a known workload. 20 writes through
/// the leader, 5 through a follower (forwarded), 3 read barriers on the leader: each node
/// counts the proposals made through it and the barriers asked of it; every node's commit and
/// applied gauges reach the leader's commit index and it applied every entry; the leader sent
/// each follower at least the bytes of the 25 commands and reports no lag once they hold
/// everything; one node leads (`raft_is_leader`), all share one term, an election was counted;
/// the writes went through the log store in groups whose entry counts add up to at least 25,
/// each timed; every apply batch was timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_count_a_known_workload() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this binary");

    let voters: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let router = LocalRouter::new();
    let mut nodes = Vec::new();
    for id in &voters {
        let mut config = Config::new(*id, voters.clone());
        config.seed = id.0;
        // The default 10 ms ticks: elections only at start, so the leader stays the leader.
        let options = RuntimeOptions::default();
        let node = RaftNode::start(
            config,
            options,
            Arc::new(MemLogStore::new()),
            Box::new(Echo),
            router.network(*id),
        )
        .await
        .expect("starts");
        nodes.push(node);
    }
    let leader = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(position) = nodes.iter().position(|n| n.status().role == Role::Leader) {
                return position;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("a leader in time");
    let follower = (leader + 1) % 3;
    let command = Bytes::from(vec![b'x'; COMMAND_BYTES]);
    for _ in 0..20 {
        nodes[leader]
            .propose(command.clone())
            .await
            .expect("commits");
    }
    for _ in 0..5 {
        nodes[follower]
            .propose(command.clone())
            .await
            .expect("commits");
    }
    for _ in 0..3 {
        nodes[leader].read_index().await.expect("confirmed");
    }
    let commit = nodes[leader].status().commit_index;
    for node in &nodes {
        tokio::time::timeout(TIMEOUT, node.wait_applied(commit))
            .await
            .expect("in time")
            .expect("running");
    }
    // Every follower holds everything; a few ticks refresh the lag gauges.
    let last = nodes[leader].status().last_index;
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let status = nodes[leader].status();
            if status.progress.iter().all(|p| p.match_index >= last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the followers catch up");
    tokio::time::sleep(Duration::from_millis(50)).await;

    let figures = Figures::take(&snapshotter);
    let id = |position: usize| voters[position].0.to_string();
    let (l, f) = (id(leader), id(follower));
    let other = id((leader + 2) % 3);
    assert_eq!(figures.counter("raft_proposals_total", &l, None), 20);
    assert_eq!(figures.counter("raft_proposals_total", &f, None), 5);
    assert_eq!(figures.counter("raft_proposals_total", &other, None), 0);
    assert_eq!(figures.counter("raft_read_barriers_total", &l, None), 3);
    let mut terms = Vec::new();
    let mut elections = 0;
    for position in 0..3 {
        let node = id(position);
        assert!(figures.gauge("raft_commit_index", &node, None) >= commit.0 as f64);
        assert!(figures.gauge("raft_applied_index", &node, None) >= commit.0 as f64);
        assert!(figures.counter("raft_committed_entries_total", &node, None) >= commit.0);
        assert!(figures.counter("raft_applied_entries_total", &node, None) >= commit.0);
        assert!(!figures.histogram("raft_apply_seconds", &node).is_empty());
        assert!(figures.counter("raft_leader_changes_total", &node, None) >= 1);
        let leads = if position == leader { 1.0 } else { 0.0 };
        assert_eq!(
            figures.gauge("raft_is_leader", &node, None),
            leads,
            "node {node}"
        );
        terms.push(figures.gauge("raft_term", &node, None));
        elections += figures.counter("raft_elections_total", &node, None);
    }
    assert!(
        terms.iter().all(|t| *t == terms[0] && *t >= 1.0),
        "terms {terms:?}"
    );
    assert!(elections >= 1);
    for peer in [&f, &other] {
        let sent = figures.counter("raft_append_bytes_sent_total", &l, Some(peer));
        assert!(sent >= 25 * COMMAND_BYTES as u64, "{sent} bytes to {peer}");
        assert_eq!(
            figures.gauge("raft_replication_lag_entries", &l, Some(peer)),
            0.0
        );
    }
    let batches = figures.histogram("raft_write_batch_entries", &l);
    assert!(
        batches.iter().sum::<f64>() >= 25.0,
        "leader write groups {batches:?}"
    );
    let syncs = figures.histogram("raft_write_sync_seconds", &l);
    assert_eq!(syncs.len(), batches.len(), "every write group is timed");
    for node in nodes {
        node.shutdown().await;
    }
}

/// One snapshot of the recorder, by name and labels.
struct Figures(HashMap<(String, Vec<(String, String)>), DebugValue>);

impl Figures {
    fn take(snapshotter: &metrics_util::debugging::Snapshotter) -> Figures {
        let mut figures = HashMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            labels.sort();
            figures.insert((key.name().to_string(), labels), value);
        }
        Figures(figures)
    }

    fn get(&self, name: &str, node: &str, peer: Option<&str>) -> Option<&DebugValue> {
        let mut labels = vec![("node".to_string(), node.to_string())];
        if let Some(peer) = peer {
            labels.push(("peer".to_string(), peer.to_string()));
        }
        labels.sort();
        self.0.get(&(name.to_string(), labels))
    }

    fn counter(&self, name: &str, node: &str, peer: Option<&str>) -> u64 {
        match self.get(name, node, peer) {
            Some(DebugValue::Counter(value)) => *value,
            other => panic!("{name} of node {node}: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, node: &str, peer: Option<&str>) -> f64 {
        match self.get(name, node, peer) {
            Some(DebugValue::Gauge(value)) => value.into_inner(),
            other => panic!("{name} of node {node}: {other:?}"),
        }
    }

    fn histogram(&self, name: &str, node: &str) -> Vec<f64> {
        match self.get(name, node, None) {
            Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
            other => panic!("{name} of node {node}: {other:?}"),
        }
    }
}
