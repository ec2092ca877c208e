//! The async runtime end to end: three `RaftNode`s over the in-process network with
//! in-memory stores. Each test states what it proves.

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::local_network::LocalRouter;
use raft_core::protocol::{ProposeError, Role, TransferError};
use raft_core::runtime::{
    NodeError, Proposal, RaftNode, RuntimeOptions, SnapshotError, StopCause, StoreOperation,
};
use raft_core::{
    Config, Entry, HardState, LogBounds, LogIndex, LogStore, NodeId, SessionId, StateMachine,
    StateMachineError, StorageError,
};
use raft_storage_mem::MemLogStore;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records every command it applies, in order, and answers with its position.
#[derive(Clone, Default)]
struct Recorder {
    applied: Arc<Mutex<Vec<(LogIndex, Bytes)>>>,
}

#[async_trait]
impl StateMachine for Recorder {
    async fn apply(&mut self, index: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
        let mut applied = self.applied.lock().unwrap();
        applied.push((index, command));
        Ok(Bytes::from(applied.len().to_string()))
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn options() -> RuntimeOptions {
    RuntimeOptions {
        tick_interval: Duration::from_millis(2),
        ..RuntimeOptions::default()
    }
}

struct Cluster {
    /// Adjusts each node's configuration.
    tune: fn(&mut Config),
    router: LocalRouter,
    voters: Vec<NodeId>,
    stores: Vec<MemLogStore>,
    machines: Vec<Recorder>,
    nodes: Vec<Option<RaftNode>>,
}

impl Cluster {
    async fn start(size: u64) -> Cluster {
        Cluster::start_tuned(size, |_| {}).await
    }

    async fn start_tuned(size: u64, tune: fn(&mut Config)) -> Cluster {
        let voters: Vec<NodeId> = (1..=size).map(NodeId).collect();
        let mut cluster = Cluster {
            tune,
            router: LocalRouter::new(),
            stores: voters.iter().map(|_| MemLogStore::new()).collect(),
            machines: voters.iter().map(|_| Recorder::default()).collect(),
            nodes: voters.iter().map(|_| None).collect(),
            voters,
        };
        for position in 0..cluster.voters.len() {
            cluster.restart(position).await;
        }
        cluster
    }

    /// Starts node `position` on its existing store with a fresh, empty state machine.
    async fn restart(&mut self, position: usize) {
        let id = self.voters[position];
        let mut config = Config::new(id, self.voters.clone());
        config.seed = 42 + position as u64;
        (self.tune)(&mut config);
        self.machines[position] = Recorder::default();
        let node = RaftNode::start(
            config,
            options(),
            Arc::new(self.stores[position].clone()),
            Box::new(self.machines[position].clone()),
            self.router.network(id),
        )
        .await
        .expect("node starts");
        self.nodes[position] = Some(node);
    }

    fn node(&self, position: usize) -> &RaftNode {
        self.nodes[position].as_ref().expect("node is running")
    }

    async fn leader(&self) -> usize {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                for (position, node) in self.nodes.iter().enumerate() {
                    if let Some(node) = node {
                        if node.status().role == Role::Leader {
                            return position;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("a leader is elected in time")
    }

    fn applied(&self, position: usize) -> Vec<(LogIndex, Bytes)> {
        self.machines[position].applied.lock().unwrap().clone()
    }

    async fn wait_applied_everywhere(&self, index: LogIndex) {
        for node in self.nodes.iter().flatten() {
            tokio::time::timeout(TIMEOUT, node.wait_applied(index))
                .await
                .expect("node catches up in time")
                .expect("node is running");
        }
    }

    async fn shutdown(self) {
        for node in self.nodes.into_iter().flatten() {
            node.shutdown().await;
        }
    }
}

async fn propose(node: &RaftNode, command: &str) -> Result<Bytes, NodeError> {
    tokio::time::timeout(TIMEOUT, node.propose(Bytes::from(command.to_string())))
        .await
        .expect("proposal finishes in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_every_node_apply_in_one_order_everywhere() {
    let cluster = Cluster::start(3).await;
    cluster.leader().await;
    for round in 0..10 {
        for position in 0..3 {
            let answer = propose(cluster.node(position), &format!("w{round}.{position}"))
                .await
                .expect("write commits");
            assert_eq!(answer, Bytes::from((round * 3 + position + 1).to_string()));
        }
    }
    // The last write was answered by the node it went through; the others may still be
    // catching up on the commit index, so wait for the highest one known.
    let last = (0..3)
        .map(|p| cluster.node(p).status().commit_index)
        .max()
        .unwrap();
    cluster.wait_applied_everywhere(last).await;
    let reference = cluster.applied(0);
    assert_eq!(reference.len(), 30);
    for position in 1..3 {
        assert_eq!(
            cluster.applied(position),
            reference,
            "node {position} diverged"
        );
    }
    cluster.shutdown().await;
}

/// A leader lets its own log write wait (up to `leader_write_delay_max`) while its new entries
/// have not reached every follower it pipelines to. With one append in flight per follower
/// (so that the write does wait) and a follower cut off, the entries reach only the other one:
/// the leader must still make every write durable, or nothing commits. Each write commits,
/// and the live follower applies them all in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_a_silent_follower_still_makes_its_writes_durable() {
    let cluster = Cluster::start_tuned(3, |config| config.inflight_messages_max = 1).await;
    let leader = cluster.leader().await;
    propose(cluster.node(leader), "warm-up")
        .await
        .expect("commits");
    cluster.router.isolate(cluster.voters[(leader + 1) % 3]);
    let mut expected = vec![Bytes::from("warm-up")];
    for i in 0..30 {
        let command = format!("w{i}");
        propose(cluster.node(leader), &command)
            .await
            .expect("commits with the leader and the live follower");
        expected.push(Bytes::from(command));
    }
    let live = (leader + 2) % 3;
    let commit = cluster.node(leader).status().commit_index;
    tokio::time::timeout(TIMEOUT, cluster.node(live).wait_applied(commit))
        .await
        .expect("the live follower applies in time")
        .expect("it runs");
    let applied: Vec<Bytes> = cluster.applied(live).into_iter().map(|(_, c)| c).collect();
    assert_eq!(applied, expected);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_and_catches_up_after_healing() {
    let cluster = Cluster::start(3).await;
    let old = cluster.leader().await;
    propose(cluster.node(old), "before").await.expect("commits");
    let old_term = cluster.node(old).status().term;
    cluster.router.isolate(cluster.voters[old]);

    let new = tokio::time::timeout(TIMEOUT, async {
        loop {
            let position = cluster.leader().await;
            if position != old && cluster.node(position).status().term > old_term {
                return position;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the majority elects a new leader");
    propose(cluster.node(new), "after").await.expect("commits");

    cluster.router.heal();
    let commit = cluster.node(new).status().commit_index;
    cluster.wait_applied_everywhere(commit).await;
    assert_ne!(cluster.node(old).status().role, Role::Leader);
    let commands: Vec<Bytes> = cluster.applied(old).into_iter().map(|(_, c)| c).collect();
    assert_eq!(commands, vec![Bytes::from("before"), Bytes::from("after")]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_recovers_its_log_and_replays_it() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    propose(cluster.node(leader), "one").await.expect("commits");
    cluster.nodes[follower].take().unwrap().shutdown().await;
    propose(cluster.node(leader), "two")
        .await
        .expect("commits with a majority");
    cluster.restart(follower).await;
    propose(cluster.node(leader), "three")
        .await
        .expect("commits");
    let commit = cluster.node(leader).status().commit_index;
    cluster.wait_applied_everywhere(commit).await;
    let commands: Vec<Bytes> = cluster
        .applied(follower)
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(commands, vec!["one", "two", "three"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_without_any_leader_fails_with_no_leader() {
    // One member of three running: it can never win an election.
    let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
    let router = LocalRouter::new();
    let node = RaftNode::start(
        Config::new(NodeId(1), voters),
        options(),
        Arc::new(MemLogStore::new()),
        Box::new(Recorder::default()),
        router.network(NodeId(1)),
    )
    .await
    .unwrap();
    let error = propose(&node, "lonely").await.expect_err("cannot commit");
    assert!(
        matches!(error, NodeError::Propose(ProposeError::NoLeader)),
        "got {error}"
    );
    assert!(error.is_definite());
    node.shutdown().await;
}

/// A store that fails every write once `broken` is set.
struct FailingStore {
    inner: MemLogStore,
    broken: Arc<AtomicBool>,
    /// Fails `begin_snapshot` while set.
    snapshots_broken: Arc<AtomicBool>,
}

#[async_trait]
impl LogStore for FailingStore {
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.check()?;
        self.inner.append(entries).await
    }
    async fn truncate(&self, from: LogIndex) -> Result<(), StorageError> {
        self.check()?;
        self.inner.truncate(from).await
    }
    async fn purge(&self, up_to: LogIndex) -> Result<(), StorageError> {
        self.inner.purge(up_to).await
    }
    async fn entries(&self, range: Range<LogIndex>) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(range).await
    }
    async fn bounds(&self) -> Result<LogBounds, StorageError> {
        self.inner.bounds().await
    }
    async fn save_hard_state(&self, hard_state: &HardState) -> Result<(), StorageError> {
        self.check()?;
        self.inner.save_hard_state(hard_state).await
    }
    async fn load_hard_state(&self) -> Result<HardState, StorageError> {
        self.inner.load_hard_state().await
    }
    async fn begin_snapshot(
        &self,
    ) -> Result<Box<dyn raft_core::snapshot::SnapshotSink>, StorageError> {
        if self.snapshots_broken.load(Ordering::SeqCst) {
            return Err(StorageError::Io(std::io::Error::other(
                "no room for a snapshot",
            )));
        }
        self.inner.begin_snapshot().await
    }
    async fn snapshot(&self) -> Result<Option<raft_core::snapshot::SnapshotMeta>, StorageError> {
        self.inner.snapshot().await
    }
    async fn read_snapshot(
        &self,
        meta: &raft_core::snapshot::SnapshotMeta,
        offset: u64,
        bytes_max: usize,
    ) -> Result<bytes::Bytes, StorageError> {
        self.inner.read_snapshot(meta, offset, bytes_max).await
    }
}

impl FailingStore {
    fn check(&self) -> Result<(), StorageError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StorageError::Io(std::io::Error::other("disk on fire")));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_failure_stops_the_node_and_acknowledges_nothing() {
    let broken = Arc::new(AtomicBool::new(false));
    let node = RaftNode::start(
        Config::new(NodeId(1), vec![NodeId(1)]),
        options(),
        Arc::new(FailingStore {
            inner: MemLogStore::new(),
            broken: broken.clone(),
            snapshots_broken: Arc::default(),
        }),
        Box::new(Recorder::default()),
        LocalRouter::new().network(NodeId(1)),
    )
    .await
    .unwrap();
    propose(&node, "fine")
        .await
        .expect("a single node commits alone");
    broken.store(true, Ordering::SeqCst);
    let error = propose(&node, "lost")
        .await
        .expect_err("cannot be made durable");
    assert!(
        !error.is_definite(),
        "the write may have reached no disk, or some: {error}"
    );
    // A caller can tell what failed by matching, and reach the store's own error.
    let reason = node.stopped_reason().expect("the node stopped");
    assert_eq!(reason.node, NodeId(1));
    let StopCause::LogStore {
        operation: StoreOperation::WriteLog,
        error,
    } = &reason.cause
    else {
        panic!("a log store write failure, got {reason}");
    };
    let StorageError::Io(io) = &**error else {
        panic!("the store's IO error, got {error}");
    };
    assert_eq!(io.to_string(), "disk on fire");
    assert!(reason.to_string().contains("disk on fire"), "{reason}");
    assert!(is_in_chain(&reason, "disk on fire"), "{reason:?}");
    let error = propose(&node, "after")
        .await
        .expect_err("a stopped node refuses");
    assert!(
        matches!(
            &error,
            NodeError::NotRunning(reason)
                if matches!(reason.cause, StopCause::LogStore { .. })
        ),
        "got {error}"
    );
    assert!(
        error.is_definite(),
        "it never reached the protocol: {error}"
    );
    assert!(error.to_string().contains("disk on fire"), "{error}");
    assert!(is_in_chain(&error, "disk on fire"), "{error:?}");
    // Every waiter gets the same cause.
    let waited = tokio::time::timeout(TIMEOUT, node.stopped())
        .await
        .expect("stopped already");
    assert!(
        matches!(waited.cause, StopCause::LogStore { .. }),
        "{waited}"
    );
    node.shutdown().await;
}

/// Issue 13: a snapshot that cannot be taken says why, typed, and the node runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_fails_says_why_and_the_node_runs_on() {
    let snapshots_broken = Arc::new(AtomicBool::new(true));
    let node = RaftNode::start(
        Config::new(NodeId(1), vec![NodeId(1)]),
        options(),
        Arc::new(FailingStore {
            inner: MemLogStore::new(),
            broken: Arc::default(),
            snapshots_broken: snapshots_broken.clone(),
        }),
        Box::new(Recorder::default()),
        LocalRouter::new().network(NodeId(1)),
    )
    .await
    .unwrap();
    propose(&node, "first").await.expect("commits alone");
    let snapshot = || async {
        tokio::time::timeout(TIMEOUT, node.snapshot())
            .await
            .expect("the snapshot settles in time")
            .expect_err("no snapshot can be taken")
    };
    let error = snapshot().await;
    let NodeError::Snapshot(SnapshotError::Store {
        operation: StoreOperation::BeginSnapshot,
        error: store_error,
    }) = &error
    else {
        panic!("the store's refusal to begin, got {error}");
    };
    assert!(
        matches!(&**store_error, StorageError::Io(_)),
        "{store_error}"
    );
    assert!(is_in_chain(&error, "no room for a snapshot"), "{error:?}");
    assert!(error.is_definite(), "{error}");
    // The store takes snapshots again, but this state machine builds none.
    snapshots_broken.store(false, Ordering::SeqCst);
    let error = snapshot().await;
    assert!(
        matches!(
            &error,
            NodeError::Snapshot(SnapshotError::Data(data))
                if data.0.contains("does not build snapshots")
        ),
        "got {error}"
    );
    assert!(
        node.stopped_reason().is_none(),
        "a failed snapshot stops nothing"
    );
    propose(&node, "after").await.expect("the node runs on");
    node.shutdown().await;
    assert!(
        matches!(node.stopped().await.cause, StopCause::Shutdown),
        "{}",
        node.stopped().await
    );
}

/// True when an error in `error`'s `source()` chain (past `error` itself) says exactly
/// `message`: the typed chain reaches the original error.
fn is_in_chain(error: &dyn std::error::Error, message: &str) -> bool {
    let mut source = error.source();
    while let Some(error) = source {
        if error.to_string() == message {
            return true;
        }
        source = error.source();
    }
    false
}

/// Issue 14: every call on a node that has already stopped says that it certainly did nothing
/// (`is_definite`), so a caller may retry it elsewhere without risking a second application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_on_a_stopped_node_is_definitely_refused() {
    let node = RaftNode::start(
        Config::new(NodeId(1), vec![NodeId(1)]),
        options(),
        Arc::new(MemLogStore::new()),
        Box::new(Recorder::default()),
        LocalRouter::new().network(NodeId(1)),
    )
    .await
    .unwrap();
    propose(&node, "fine").await.expect("commits alone");
    node.shutdown().await;
    let refused = |error: NodeError| {
        assert!(matches!(error, NodeError::NotRunning(_)), "got {error}");
        assert!(error.is_definite(), "{error}");
    };
    refused(propose(&node, "after").await.unwrap_err());
    refused(node.read_index().await.unwrap_err());
    refused(node.snapshot().await.unwrap_err());
    refused(node.transfer_leadership(NodeId(1)).await.unwrap_err());
    let change = raft_core::MembershipChange::add_learner(NodeId(2));
    refused(node.change_membership(change).await.unwrap_err());
    refused(node.read(|_: &Recorder| ()).await.unwrap_err());
    let answers = node
        .propose_many([Proposal::from(Bytes::from("a")), Bytes::from("b").into()])
        .await;
    assert_eq!(answers.len(), 2);
    answers.into_iter().for_each(|a| refused(a.unwrap_err()));
}

/// A batch through the leader and one through a follower: every command is answered, in the
/// order given, and applied in that order; a batch larger than one driver request
/// (`step_batch_max`) is split and answered whole; a retry in the same batch (same session
/// and sequence) applies once and both get the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propose_many_answers_every_command_in_the_order_given() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let batch_max = options().step_batch_max;
    for (position, tag, count) in [(leader, "l", 2 * batch_max + 7), (follower, "f", 50)] {
        let commands: Vec<Proposal> = (0..count)
            .map(|i| Proposal::from(Bytes::from(format!("{tag}{i}"))))
            .collect();
        let answers = tokio::time::timeout(TIMEOUT, cluster.node(position).propose_many(commands))
            .await
            .expect("answered in time");
        assert_eq!(answers.len(), count);
        let positions: Vec<u64> = answers
            .into_iter()
            .map(|answer| {
                let answer = answer.expect("committed");
                std::str::from_utf8(&answer).unwrap().parse().unwrap()
            })
            .collect();
        assert!(
            positions.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "answers follow the order given: {:?}..",
            &positions[..5]
        );
        let applied: Vec<Bytes> = cluster
            .applied(position)
            .into_iter()
            .map(|(_, command)| command)
            .filter(|command| command.starts_with(tag.as_bytes()))
            .collect();
        let expected: Vec<Bytes> = (0..count)
            .map(|i| Bytes::from(format!("{tag}{i}")))
            .collect();
        assert_eq!(applied, expected, "applied once each, in the order given");
    }
    let session = SessionId::random();
    let once = || Proposal::in_session(session, 1, Bytes::from("once"));
    let answers = cluster.node(follower).propose_many([once(), once()]).await;
    let answers: Vec<Bytes> = answers.into_iter().map(|a| a.expect("answered")).collect();
    assert_eq!(answers[0], answers[1], "the retry gets the first answer");
    let applied_once = cluster
        .applied(follower)
        .iter()
        .filter(|(_, command)| command.as_ref() == b"once")
        .count();
    assert_eq!(applied_once, 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_pending_proposal() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    cluster.router.isolate(cluster.voters[leader]);
    let node = cluster.node(leader).clone();
    let pending = tokio::spawn(async move { node.propose(Bytes::from("stuck")).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    cluster.node(leader).shutdown().await;
    let outcome = tokio::time::timeout(TIMEOUT, pending)
        .await
        .expect("answered in time")
        .unwrap();
    let error = outcome.expect_err("it could not commit");
    assert!(
        !error.is_definite(),
        "it may have reached a follower: {error}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_any_node_sees_every_write_completed_before_it() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    for position in 0..3 {
        propose(cluster.node(leader), &format!("write {position}"))
            .await
            .expect("commits");
        let written = cluster.node(leader).status().commit_index;
        let index = tokio::time::timeout(TIMEOUT, cluster.node(position).read_index())
            .await
            .expect("read answered in time")
            .expect("read confirmed");
        assert!(
            index >= written,
            "read index {index} misses write at {written}"
        );
        let seen = cluster.applied(position);
        assert_eq!(
            seen.last().map(|(_, c)| c.clone()),
            Some(Bytes::from(format!("write {position}"))),
            "node {position} served a read before applying the write"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_never_confirms_a_read() {
    let cluster = Cluster::start(3).await;
    let old = cluster.leader().await;
    propose(cluster.node(old), "before").await.expect("commits");
    cluster.router.isolate(cluster.voters[old]);
    let error = tokio::time::timeout(TIMEOUT, cluster.node(old).read_index())
        .await
        .expect("answered in time")
        .expect_err("a leader cut off from the majority cannot confirm a read");
    assert!(
        matches!(error, NodeError::Propose(ProposeError::ReadAborted)),
        "got {error}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_named_voter_and_writes_continue() {
    let cluster = Cluster::start(3).await;
    let old = cluster.leader().await;
    propose(cluster.node(old), "before").await.expect("commits");
    let target = (old + 1) % 3;
    tokio::time::timeout(
        TIMEOUT,
        cluster
            .node(old)
            .transfer_leadership(cluster.voters[target]),
    )
    .await
    .expect("answered in time")
    .expect("the transfer succeeds");
    let status = cluster.node(target).status();
    assert_eq!(status.role, Role::Leader, "the target leads");
    assert_eq!(
        cluster.node(old).status().leader,
        Some(cluster.voters[target])
    );
    propose(cluster.node(old), "after")
        .await
        .expect("the old leader forwards");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_an_unreachable_voter_times_out_and_the_leader_resumes() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let target = (leader + 1) % 3;
    let term = cluster.node(leader).status().term;
    cluster.router.isolate(cluster.voters[target]);
    let error = tokio::time::timeout(
        TIMEOUT,
        cluster
            .node(leader)
            .transfer_leadership(cluster.voters[target]),
    )
    .await
    .expect("answered in time")
    .expect_err("the target cannot take over");
    assert!(
        matches!(error, NodeError::Transfer(TransferError::TimedOut(id)) if id == cluster.voters[target]),
        "got {error}"
    );
    assert_eq!(cluster.node(leader).status().role, Role::Leader);
    assert_eq!(
        cluster.node(leader).status().term,
        term,
        "no election happened"
    );
    propose(cluster.node(leader), "resumed")
        .await
        .expect("the leader takes writes again");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_requests_that_cannot_work_are_refused_at_once() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let error = cluster
        .node(follower)
        .transfer_leadership(cluster.voters[leader])
        .await
        .expect_err("only the leader can transfer");
    assert!(
        matches!(error, NodeError::Transfer(TransferError::NotLeader { .. })),
        "got {error}"
    );
    let error = cluster
        .node(leader)
        .transfer_leadership(NodeId(99))
        .await
        .expect_err("not a member");
    assert!(
        matches!(
            error,
            NodeError::Transfer(TransferError::NotAVoter(NodeId(99)))
        ),
        "got {error}"
    );
    assert_eq!(
        cluster.node(leader).status().role,
        Role::Leader,
        "nothing changed"
    );
    cluster.shutdown().await;
}

/// Answers nothing, breaking the `apply_batch` contract.
struct Mute;

#[async_trait]
impl StateMachine for Mute {
    async fn apply(&mut self, _: LogIndex, _: Bytes) -> Result<Bytes, StateMachineError> {
        Ok(Bytes::new())
    }

    async fn apply_batch(
        &mut self,
        _: raft_core::ApplyBatch,
    ) -> Result<Vec<Bytes>, StateMachineError> {
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_machine_that_skips_answers_stops_the_node_with_a_clear_reason() {
    let node = RaftNode::start(
        Config::new(NodeId(1), vec![NodeId(1)]),
        options(),
        Arc::new(MemLogStore::new()),
        Box::new(Mute),
        LocalRouter::new().network(NodeId(1)),
    )
    .await
    .unwrap();
    let error = propose(&node, "lost").await.expect_err("no answer to give");
    assert!(
        matches!(
            &error,
            NodeError::Stopped(reason) if matches!(
                reason.cause,
                StopCause::AnswerCount { answered: 0, commands: 1 }
            )
        ),
        "got {error}"
    );
    assert!(!error.is_definite(), "{error}");
    // The caller hears first; the driver notices the failure on its next turn.
    let reason = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(reason) = node.stopped_reason() {
                return reason;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the node stops in time");
    assert!(
        matches!(
            reason.cause,
            StopCause::AnswerCount {
                answered: 0,
                commands: 1
            }
        ),
        "reason: {reason}"
    );
    assert!(
        reason.to_string().contains("answered 0 of 1 commands"),
        "reason: {reason}"
    );
    node.shutdown().await;
}

/// A register per key: `set <key> <value>` stores, and answers the value it replaced. Its state
/// is private: the only way to look at it is `RaftNode::read`.
#[derive(Default)]
struct Registers {
    values: std::collections::HashMap<String, String>,
}

#[async_trait]
impl StateMachine for Registers {
    async fn apply(&mut self, _: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
        let text = String::from_utf8_lossy(&command);
        let mut words = text.splitn(3, ' ');
        let (Some("set"), Some(key), Some(value)) = (words.next(), words.next(), words.next())
        else {
            return Ok(Bytes::from("refused: not `set <key> <value>`"));
        };
        let old = self.values.insert(key.to_string(), value.to_string());
        Ok(Bytes::from(old.unwrap_or_default()))
    }
}

/// Starts `size` voters with `Registers` machines on one in-process network.
async fn registers(size: u64) -> (LocalRouter, Vec<RaftNode>) {
    let router = LocalRouter::new();
    let voters: Vec<NodeId> = (1..=size).map(NodeId).collect();
    let mut nodes = Vec::new();
    for id in &voters {
        let mut config = Config::new(*id, voters.clone());
        config.seed = 90 + id.0;
        let node = RaftNode::start(
            config,
            options(),
            Arc::new(MemLogStore::new()),
            Box::new(Registers::default()),
            router.network(*id),
        )
        .await
        .expect("node starts");
        nodes.push(node);
    }
    (router, nodes)
}

async fn read_register(node: &RaftNode, key: &'static str) -> Option<String> {
    let read = node.read(move |machine: &Registers| machine.values.get(key).cloned());
    tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("read answered in time")
        .expect("read confirmed")
}

/// Issue 14, "reading your own state machine": a value written through one node is read back
/// through `RaftNode::read` on each other node, as the concrete machine type, right after the
/// write returned (the read barrier waits for that node to apply it), for writes through every
/// node in turn, leader and followers alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_written_through_one_node_is_read_back_through_the_closure_on_another() {
    let (_router, nodes) = registers(3).await;
    for round in 0..9usize {
        let writer = round % 3;
        let value = format!("v{round}");
        let command = Bytes::from(format!("set x {value}"));
        let replaced = tokio::time::timeout(TIMEOUT, nodes[writer].propose(command))
            .await
            .expect("write answered in time")
            .expect("write commits");
        let previous = round.checked_sub(1).map(|r| format!("v{r}"));
        assert_eq!(replaced, Bytes::from(previous.unwrap_or_default()));
        for reader in (0..3).filter(|&reader| reader != writer) {
            assert_eq!(
                read_register(&nodes[reader], "x").await,
                Some(value.clone()),
                "node {} read x after the write through node {}",
                reader + 1,
                writer + 1
            );
        }
    }
    assert_eq!(read_register(&nodes[0], "never written").await, None);
    for node in nodes {
        node.shutdown().await;
    }
}

/// `read` as a type the machine is not fails at once, definitely, naming the type asked for;
/// a panic in a read's closure unwinds in its caller, and the node goes on applying and
/// reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_as_the_wrong_type_is_refused_and_a_panicking_read_leaves_the_node_serving() {
    let (_router, nodes) = registers(1).await;
    let node = &nodes[0];
    propose(node, "set x 1").await.expect("commits alone");
    let error = node
        .read(|_: &Recorder| ())
        .await
        .expect_err("the machine is Registers");
    assert!(
        matches!(&error, NodeError::WrongStateMachineType { requested } if requested.ends_with("Recorder")),
        "got {error}"
    );
    assert!(error.is_definite());

    let panicking = node.clone();
    let outcome = tokio::spawn(async move {
        panicking
            .read(|_: &Registers| -> u32 { panic!("a bug in the reader") })
            .await
    })
    .await;
    let panic = outcome.expect_err("the caller's task panicked");
    assert!(panic.is_panic());
    assert!(node.stopped_reason().is_none(), "the node runs on");
    propose(node, "set x 2").await.expect("still commits");
    assert_eq!(read_register(node, "x").await, Some("2".to_string()));
    node.shutdown().await;
}

/// Applies a command only once the test hands it a permit: a state machine that stalls.
struct Stalled {
    permits: Arc<tokio::sync::Semaphore>,
}

#[async_trait]
impl StateMachine for Stalled {
    async fn apply(&mut self, _: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
        self.permits.acquire().await.expect("open").forget();
        Ok(command)
    }
}

/// Reads whose index is known wait for the state machine to reach it; while it stalls they
/// may not pile up without bound: past `pending_reads_max` of them a read fails at once with
/// the definite `TooManyPending`, and those admitted are served once the machine catches up.
/// Each read is asked alone, so the protocol's own bound (the reads it tracks) never refuses
/// one: only the runtime's queue can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_waiting_for_a_stalled_state_machine_are_bounded_by_pending_reads_max() {
    const READS_MAX: usize = 4;
    const READS: usize = 10;
    let mut config = Config::new(NodeId(1), vec![NodeId(1)]);
    config.pending_reads_max = READS_MAX;
    config.proposal_wait_ticks = 5_000; // admitted reads wait as long as the test needs
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let machine = Stalled {
        permits: permits.clone(),
    };
    let node = RaftNode::start(
        config,
        options(),
        Arc::new(MemLogStore::new()),
        Box::new(machine),
        LocalRouter::new().network(NodeId(1)),
    )
    .await
    .unwrap();
    let writer = node.clone();
    let write = tokio::spawn(async move { writer.propose(Bytes::from("stalls")).await });
    tokio::time::timeout(TIMEOUT, async {
        while node.status().commit_index <= node.status().applied_index {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the write commits; its apply stalls");
    let stalled_at = node.status().commit_index;

    let mut admitted = Vec::new();
    let mut refused = 0;
    for _ in 0..READS {
        let reader = node.clone();
        let mut read = tokio::spawn(async move { reader.read_index().await });
        match tokio::time::timeout(Duration::from_millis(200), &mut read).await {
            Ok(answer) => {
                let error = answer
                    .unwrap()
                    .expect_err("no read is served while stalled");
                assert!(
                    matches!(error, NodeError::Propose(ProposeError::TooManyPending)),
                    "got {error}"
                );
                assert!(error.is_definite());
                refused += 1;
            }
            Err(_) => admitted.push(read), // waits for the state machine
        }
    }
    assert_eq!(
        (admitted.len(), refused),
        (READS_MAX, READS - READS_MAX),
        "pending_reads_max reads wait, the rest fail at once"
    );

    permits.add_permits(1);
    write.await.unwrap().expect("the write applies");
    for read in admitted {
        let index = tokio::time::timeout(TIMEOUT, read)
            .await
            .expect("served once applied")
            .unwrap()
            .expect("confirmed");
        assert!(index >= stalled_at);
    }
    node.shutdown().await;
}

/// Proves: each of a node's narrow signals wakes for its own event only. Fifty commits on a
/// steady leader move the applied index everywhere but change no node's leadership (a
/// receiver that did not see a new value was not woken); a membership change shows in every
/// node's committed membership once committed; and a wait for a learner to catch up is decided
/// by the leader's protocol: at once on a follower (not the leader) and for a node that is no
/// learner, and with the latest figures when the learner never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_signal_wakes_for_its_own_event() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    propose(cluster.node(leader), "first")
        .await
        .expect("commits");
    let first = cluster.node(leader).status().commit_index;
    cluster.wait_applied_everywhere(first).await;
    let mut leaderships: Vec<_> = (0..3).map(|p| cluster.node(p).watch_leadership()).collect();
    let before: Vec<_> = leaderships
        .iter_mut()
        .map(|l| *l.borrow_and_update())
        .collect();
    let mut applied = cluster.node(leader).watch_applied();
    applied.borrow_and_update();
    for round in 0..50 {
        propose(cluster.node(leader), &format!("w{round}"))
            .await
            .expect("commits");
    }
    let last = cluster.node(leader).status().commit_index;
    assert!(
        last.0 >= first.0 + 50,
        "commit index {last} after 50 writes from {first}"
    );
    cluster.wait_applied_everywhere(last).await;
    assert!(
        applied.has_changed().expect("running"),
        "the applied index moved"
    );
    assert!(*applied.borrow() >= last);
    for (position, leadership) in leaderships.iter().enumerate() {
        let changed = leadership.has_changed().expect("running");
        let now = *leadership.borrow();
        assert_eq!(
            changed,
            now != before[position],
            "node {position}: woken with {now:?} after {:?}",
            before[position]
        );
    }

    let change = raft_core::MembershipChange::add_learner(NodeId(4));
    let membership = tokio::time::timeout(TIMEOUT, cluster.node(leader).change_membership(change))
        .await
        .expect("in time")
        .expect("the learner is added");
    assert!(membership.learners.contains(&NodeId(4)));
    for position in 0..3 {
        let mut committed = cluster.node(position).watch_membership();
        let seen = tokio::time::timeout(
            TIMEOUT,
            committed.wait_for(|c| c.membership.learners.contains(&NodeId(4))),
        )
        .await
        .expect("every node learns the committed membership")
        .expect("running")
        .clone();
        assert!(seen.index > LogIndex(0));
        assert_eq!(seen.membership, membership, "node {position}");
    }

    let follower = (leader + 1) % 3;
    let short = Duration::from_millis(300);
    match cluster
        .node(follower)
        .wait_caught_up(NodeId(4), TIMEOUT)
        .await
    {
        Err(NodeError::Membership(raft_core::MembershipError::NotLeader(Some(id)))) => {
            assert_eq!(id, cluster.voters[leader]);
        }
        other => panic!("a follower answers NotLeader at once, got {other:?}"),
    }
    match cluster
        .node(leader)
        .wait_caught_up(NodeId(9), TIMEOUT)
        .await
    {
        Err(NodeError::Membership(raft_core::MembershipError::UnknownNode(NodeId(9)))) => {}
        other => panic!("a node that is no learner is unknown at once, got {other:?}"),
    }
    match cluster.node(leader).wait_caught_up(NodeId(4), short).await {
        Err(NodeError::Membership(raft_core::MembershipError::NotCaughtUp {
            id,
            match_index,
            last_index,
            ..
        })) => {
            assert_eq!((id, match_index), (NodeId(4), LogIndex(0)));
            assert!(last_index >= last, "figures of now: {last_index}");
        }
        other => panic!("a silent learner never catches up, got {other:?}"),
    }
    cluster.shutdown().await;
}
