//! A command the state machine refuses is an answer, not a failure: every node gives the same
//! refusal and the cluster keeps serving. Only a machine that cannot go on (its disk failed)
//! returns `Err`, which stops the node (fail-stop), and, the entry being committed, stops it
//! again at every restart. The README's and the crate docs' counter used to return `Err` for a
//! command that did not parse: proposing "abc" stopped every node for good.

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::local_network::LocalRouter;
use raft_core::runtime::{RaftNode, RuntimeOptions, StopCause};
use raft_core::{Config, LogIndex, NodeId, StateMachine, StateMachineError};
use raft_storage_mem::MemLogStore;
use std::sync::Arc;
use std::time::Duration;

/// The counter of the README: it refuses a command that is not a number, as an answer.
#[derive(Default)]
struct Counter {
    total: u64,
}

#[async_trait]
impl StateMachine for Counter {
    async fn apply(
        &mut self,
        _index: LogIndex,
        command: Bytes,
    ) -> Result<Bytes, StateMachineError> {
        let amount = std::str::from_utf8(&command)
            .ok()
            .and_then(|t| t.parse::<u64>().ok());
        let Some(amount) = amount else {
            return Ok(Bytes::from("refused: not a number"));
        };
        self.total += amount;
        Ok(Bytes::from(self.total.to_string()))
    }
}

/// The counter as the README had it: a command that does not parse is an `Err`.
#[derive(Default)]
struct FailingCounter {
    total: u64,
}

#[async_trait]
impl StateMachine for FailingCounter {
    async fn apply(
        &mut self,
        _index: LogIndex,
        command: Bytes,
    ) -> Result<Bytes, StateMachineError> {
        let text = std::str::from_utf8(&command).map_err(|e| StateMachineError(e.to_string()))?;
        self.total += text
            .parse::<u64>()
            .map_err(|e| StateMachineError(e.to_string()))?;
        Ok(Bytes::from(self.total.to_string()))
    }
}

async fn cluster(machine: fn() -> Box<dyn StateMachine>) -> Vec<RaftNode> {
    let router = LocalRouter::new();
    let voters: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let mut nodes = Vec::new();
    for id in &voters {
        let mut config = Config::new(*id, voters.clone());
        config.seed = id.0;
        let options = RuntimeOptions {
            tick_interval: Duration::from_millis(2),
            ..RuntimeOptions::default()
        };
        let store = Arc::new(MemLogStore::new());
        let node = RaftNode::start(config, options, store, machine(), router.network(*id))
            .await
            .expect("starts");
        nodes.push(node);
    }
    nodes
}

async fn propose(node: &RaftNode, command: &'static str) -> Bytes {
    tokio::time::timeout(Duration::from_secs(10), node.propose(Bytes::from(command)))
        .await
        .expect("answered in time")
        .expect("applied")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_command_is_refused_as_an_answer_and_the_cluster_keeps_serving() {
    let nodes = cluster(|| Box::new(Counter::default())).await;
    assert_eq!(propose(&nodes[1], "5").await, "5");
    assert_eq!(propose(&nodes[0], "abc").await, "refused: not a number");
    assert_eq!(propose(&nodes[2], "2").await, "7");
    let commit = nodes[2].status().commit_index;
    for node in &nodes {
        tokio::time::timeout(Duration::from_secs(10), node.wait_applied(commit))
            .await
            .expect("every node applies past the refused command")
            .expect("running");
        assert!(node.stopped_reason().is_none(), "no node stopped");
    }
    for node in nodes {
        node.shutdown().await;
    }
}

/// What `Err` means: the machine cannot go on, so the node stops rather than skip an entry.
/// This is the old README counter: one malformed command stops every node that applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_err_from_the_state_machine_stops_the_node() {
    let nodes = cluster(|| Box::new(FailingCounter::default())).await;
    assert_eq!(propose(&nodes[1], "5").await, "5");
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        nodes[0].propose(Bytes::from("abc")),
    )
    .await;
    for node in &nodes {
        let reason = tokio::time::timeout(Duration::from_secs(10), node.stopped())
            .await
            .expect("the node stops");
        let StopCause::Apply { error, .. } = &reason.cause else {
            panic!("the state machine's error, got {reason}");
        };
        assert!(error.0.contains("invalid digit"), "{reason}");
    }
}
