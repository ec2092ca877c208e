//! Exactly-once proposals (client sessions) through the async runtime: three `RaftNode`s over
//! the in-process network, with a tap on every node's endpoint that can keep copies of the
//! forwards it sends and lose the leader's answers to them. Each test states what it proves.

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::local_network::{LocalNetwork, LocalRouter};
use raft_core::message::{Message, MessageBody};
use raft_core::network::{Inbound, Network, NetworkError, SendError};
use raft_core::protocol::Role;
use raft_core::runtime::{NodeError, RaftNode, RuntimeOptions};
use raft_core::sessions::SessionError;
use raft_core::snapshot::{SnapshotMeta, SnapshotReader, SnapshotWriter};
use raft_core::{ApplyBatch, Config, LogIndex, NodeId, SessionId, StateMachine, StateMachineError};
use raft_storage_mem::MemLogStore;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records every command it applies, in order, and answers with its position. Snapshots are
/// the commands, one per line. A durable journal keeps its state across a restart and reports
/// its applied index, as a machine that persists its own state does: the runtime then does not
/// apply its entries again.
#[derive(Clone, Default)]
struct Journal {
    state: Arc<Mutex<JournalState>>,
    durable: bool,
}

#[derive(Default)]
struct JournalState {
    commands: Vec<Bytes>,
    applied: LogIndex,
}

#[async_trait]
impl StateMachine for Journal {
    async fn apply(&mut self, index: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
        let mut state = self.state.lock().unwrap();
        state.commands.push(command);
        state.applied = index;
        Ok(Bytes::from(state.commands.len().to_string()))
    }

    async fn apply_batch(&mut self, batch: ApplyBatch) -> Result<Vec<Bytes>, StateMachineError> {
        let mut answers = Vec::with_capacity(batch.commands.len());
        for (index, command) in batch.commands {
            answers.push(self.apply(index, command).await?);
        }
        self.state.lock().unwrap().applied = batch.last_index;
        Ok(answers)
    }

    async fn applied_index(&mut self) -> Result<LogIndex, StateMachineError> {
        Ok(if self.durable {
            self.state.lock().unwrap().applied
        } else {
            LogIndex(0)
        })
    }

    async fn build_snapshot(&mut self, out: &mut SnapshotWriter) -> Result<(), StateMachineError> {
        let lines: Vec<u8> = {
            let state = self.state.lock().unwrap();
            state
                .commands
                .iter()
                .flat_map(|c| [&c[..], b"\n"].concat())
                .collect()
        };
        out.write(&lines).await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: &mut SnapshotReader,
    ) -> Result<(), StateMachineError> {
        let bytes = data.read_to_end().await?;
        let mut state = self.state.lock().unwrap();
        state.commands = bytes
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(Bytes::copy_from_slice)
            .collect();
        state.applied = meta.last_index;
        Ok(())
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// What the taps do to the messages they carry.
#[derive(Default)]
struct Faults {
    /// Keep a copy of every `Forward` sent.
    capture_forwards: bool,
    /// The copies kept.
    captured: Vec<Message>,
    /// Lose every `ForwardResponse`: the leader's answer to a forward never arrives.
    lose_forward_answers: bool,
}

/// A node's endpoint on the router, with the faults applied on the way out.
struct Tap {
    inner: Arc<LocalNetwork>,
    faults: Arc<Mutex<Faults>>,
}

#[async_trait]
impl Network for Tap {
    async fn start(&self, inbound: Inbound) -> Result<(), NetworkError> {
        self.inner.start(inbound).await
    }

    fn send(&self, message: Message) -> Result<(), SendError> {
        {
            let mut faults = self.faults.lock().unwrap();
            match &message.body {
                MessageBody::Forward { .. } if faults.capture_forwards => {
                    faults.captured.push(message.clone())
                }
                MessageBody::ForwardResponse { .. } if faults.lose_forward_answers => {
                    return Ok(());
                }
                _ => {}
            }
        }
        self.inner.send(message)
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

struct Cluster {
    router: LocalRouter,
    faults: Arc<Mutex<Faults>>,
    voters: Vec<NodeId>,
    stores: Vec<MemLogStore>,
    machines: Vec<Journal>,
    nodes: Vec<Option<RaftNode>>,
    tune: fn(&mut Config),
}

impl Cluster {
    /// Starts `size` nodes with in-memory journals (`durable`: journals that keep their state
    /// across a restart).
    async fn start(size: u64, durable: bool, tune: fn(&mut Config)) -> Cluster {
        let voters: Vec<NodeId> = (1..=size).map(NodeId).collect();
        let mut cluster = Cluster {
            router: LocalRouter::new(),
            faults: Arc::default(),
            stores: voters.iter().map(|_| MemLogStore::new()).collect(),
            machines: voters
                .iter()
                .map(|_| Journal {
                    durable,
                    ..Journal::default()
                })
                .collect(),
            nodes: voters.iter().map(|_| None).collect(),
            voters,
            tune,
        };
        for position in 0..cluster.voters.len() {
            cluster.restart(position).await;
        }
        cluster
    }

    /// Starts node `position` on its existing store, with a fresh, empty journal unless its
    /// journal is durable.
    async fn restart(&mut self, position: usize) {
        let id = self.voters[position];
        let mut config = Config::new(id, self.voters.clone());
        config.seed = 42 + position as u64;
        // Long enough that a forward refused after the leader's restart is still waiting for
        // the next leader, not failed for want of one.
        config.proposal_wait_ticks = 5_000;
        (self.tune)(&mut config);
        if !self.machines[position].durable {
            self.machines[position] = Journal::default();
        }
        let network = Arc::new(Tap {
            inner: self.router.network(id),
            faults: self.faults.clone(),
        });
        let node = RaftNode::start(
            config,
            RuntimeOptions {
                tick_interval: Duration::from_millis(2),
                ..RuntimeOptions::default()
            },
            Arc::new(self.stores[position].clone()),
            Box::new(self.machines[position].clone()),
            network,
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

    /// How many times node `position`'s state machine applied `command`.
    fn times_applied(&self, position: usize, command: &str) -> usize {
        let state = self.machines[position].state.lock().unwrap();
        state.commands.iter().filter(|c| *c == command).count()
    }

    /// Waits until every running node applied the highest commit index any of them knows.
    async fn settle(&self) {
        let commit = self
            .nodes
            .iter()
            .flatten()
            .map(|node| node.status().commit_index)
            .max()
            .expect("a node runs");
        for node in self.nodes.iter().flatten() {
            tokio::time::timeout(TIMEOUT, node.wait_applied(commit))
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

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(TIMEOUT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// The duplicated forward of the issue, step by step: a follower forwards a command; the
/// leader appends it and it commits everywhere, but the leader's answer is lost. The leader
/// restarts in the same term (its forward de-duplication memory, in RAM, is gone) and a copy of
/// the forward the network kept arrives: it answers "not leader", so the follower forwards the
/// command again, to the next leader, which already holds the first copy. The command must
/// still apply once on every node, and the follower's caller gets the first copy's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_duplicated_across_a_leader_restart_applies_once() {
    let mut cluster = Cluster::start(3, false, |_| {}).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let term = cluster.node(leader).status().term;
    {
        let mut faults = cluster.faults.lock().unwrap();
        faults.capture_forwards = true;
        faults.lose_forward_answers = true;
    }
    let proposer = cluster.node(follower).clone();
    let proposal = tokio::spawn(async move { proposer.propose(Bytes::from("x")).await });
    for position in 0..3 {
        wait_until("every node applied the forwarded command", || {
            cluster.times_applied(position, "x") == 1
        })
        .await;
    }
    assert!(
        !proposal.is_finished(),
        "the answer to the forward was lost"
    );

    cluster.nodes[leader].take().unwrap().shutdown().await;
    let duplicate = {
        let mut faults = cluster.faults.lock().unwrap();
        faults.capture_forwards = false;
        faults.lose_forward_answers = false;
        assert_eq!(faults.captured.len(), 1, "one forward was sent");
        faults.captured.pop().unwrap()
    };
    cluster.restart(leader).await;
    assert_eq!(
        cluster.node(leader).status().term,
        term,
        "the old leader restarted in its term"
    );
    let follower_endpoint = cluster.router.network(cluster.voters[follower]);
    follower_endpoint
        .send(duplicate)
        .expect("the duplicate reaches the restarted node");

    let answer = tokio::time::timeout(TIMEOUT, proposal)
        .await
        .expect("the proposal ends in time")
        .expect("the task ran");
    cluster.leader().await;
    cluster.settle().await;
    for position in 0..3 {
        assert_eq!(
            cluster.times_applied(position, "x"),
            1,
            "node {position} applied the command twice"
        );
    }
    let answer = answer.expect("the follower's caller gets an answer");
    assert_eq!(answer, Bytes::from("1"), "the first copy's answer");
    cluster.shutdown().await;
}

async fn in_session(
    node: &RaftNode,
    session: SessionId,
    sequence: u64,
    command: &str,
) -> Result<Bytes, NodeError> {
    let command = Bytes::from(command.to_string());
    tokio::time::timeout(TIMEOUT, node.propose_in_session(session, sequence, command))
        .await
        .expect("the proposal ends in time")
}

/// A command retried in its session, through the leader and through followers, applies once
/// and every retry gets the first answer; the session's next sequence applies; an older
/// sequence is refused, unapplied, with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_command_applies_once_and_gets_the_first_answer() {
    let cluster = Cluster::start(3, false, |_| {}).await;
    let leader = cluster.leader().await;
    let session = SessionId::random();
    let first = in_session(cluster.node(leader), session, 1, "a").await;
    assert_eq!(first.expect("applies"), Bytes::from("1"));
    for position in [leader, (leader + 1) % 3, (leader + 2) % 3] {
        let retried = in_session(cluster.node(position), session, 1, "a").await;
        assert_eq!(
            retried.expect("answered"),
            Bytes::from("1"),
            "via {position}"
        );
    }
    let next = in_session(cluster.node((leader + 1) % 3), session, 2, "b").await;
    assert_eq!(next.expect("applies"), Bytes::from("2"));
    match in_session(cluster.node(leader), session, 1, "a").await {
        Err(NodeError::Session(SessionError::SequenceStale { tag, last_sequence })) => {
            assert_eq!((tag.session, tag.sequence, last_sequence), (session, 1, 2));
        }
        other => panic!("a stale sequence must be refused, got {other:?}"),
    }
    cluster.settle().await;
    for position in 0..3 {
        assert_eq!(cluster.times_applied(position, "a"), 1, "node {position}");
        assert_eq!(cluster.times_applied(position, "b"), 1, "node {position}");
    }
    cluster.shutdown().await;
}

/// The session table travels in snapshots: a node that was down while a command applied and
/// the log was compacted catches up from the leader's snapshot, then applies a retry of that
/// command through itself as a duplicate, answering the first result from the table it
/// installed. A node restarted with an in-memory machine replays its log and answers the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_snapshot_install_and_a_restart_applies_once() {
    let mut cluster = Cluster::start(3, false, |config| config.snapshot_tail_entries = 0).await;
    let leader = cluster.leader().await;
    let behind = (leader + 1) % 3;
    cluster.nodes[behind].take().unwrap().shutdown().await;
    let session = SessionId::random();
    let first = in_session(cluster.node(leader), session, 1, "a").await;
    assert_eq!(first.expect("applies"), Bytes::from("1"));
    let snapshot = tokio::time::timeout(TIMEOUT, cluster.node(leader).snapshot())
        .await
        .expect("in time")
        .expect("a snapshot is taken");
    cluster.stores[behind] = MemLogStore::new();
    cluster.restart(behind).await;
    tokio::time::timeout(
        TIMEOUT,
        cluster.node(behind).wait_applied(snapshot.last_index),
    )
    .await
    .expect("the node catches up in time")
    .expect("it runs");
    assert!(
        cluster.node(behind).status().snapshot.is_some(),
        "it caught up from the snapshot, not the log"
    );
    let retried = in_session(cluster.node(behind), session, 1, "a").await;
    assert_eq!(retried.expect("answered"), Bytes::from("1"));

    let other = (leader + 2) % 3;
    cluster.nodes[other].take().unwrap().shutdown().await;
    cluster.restart(other).await;
    let retried = in_session(cluster.node(other), session, 1, "a").await;
    assert_eq!(retried.expect("answered"), Bytes::from("1"));
    cluster.settle().await;
    for position in 0..3 {
        assert_eq!(cluster.times_applied(position, "a"), 1, "node {position}");
    }
    cluster.shutdown().await;
}

/// A machine that keeps its own state across a restart is not replayed: the runtime rebuilds
/// the session table from the log alone, without the answers. A retry of a command applied
/// before the restart is then refused as "applied once, answer not kept", never applied
/// again; a command applied after the restart still gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_machine_restarted_answers_a_retry_applied_once_without_applying_it() {
    let mut cluster = Cluster::start(1, true, |_| {}).await;
    cluster.leader().await;
    let session = SessionId::random();
    let first = in_session(cluster.node(0), session, 1, "a").await;
    assert_eq!(first.expect("applies"), Bytes::from("1"));
    cluster.nodes[0].take().unwrap().shutdown().await;
    cluster.restart(0).await;
    cluster.leader().await;
    match in_session(cluster.node(0), session, 1, "a").await {
        Err(NodeError::Session(SessionError::AnswerNotKept { tag, index })) => {
            assert_eq!((tag.session, tag.sequence), (session, 1));
            assert!(index > LogIndex(0));
        }
        other => panic!("expected applied-once-answer-not-kept, got {other:?}"),
    }
    let next = in_session(cluster.node(0), session, 2, "b").await;
    assert_eq!(next.expect("applies"), Bytes::from("2"));
    let retried = in_session(cluster.node(0), session, 2, "b").await;
    assert_eq!(retried.expect("answered"), Bytes::from("2"));
    assert_eq!(cluster.times_applied(0, "a"), 1);
    assert_eq!(cluster.times_applied(0, "b"), 1);
    cluster.shutdown().await;
}

/// The table's bounds are hit: with `sessions_max` 2, a third session evicts the one used
/// longest ago, whose retry is then a new command and applies again; with
/// `session_idle_entries_max` 3, a session whose last command is more than 3 entries back has
/// expired the same way. A session still held answers its first result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_bound_and_the_idle_expiry_forget_sessions() {
    let cluster = Cluster::start(1, false, |config| {
        config.sessions_max = 2;
        config.session_idle_entries_max = 3;
    })
    .await;
    cluster.leader().await;
    let node = cluster.node(0);
    let [one, two, three] = [SessionId(1), SessionId(2), SessionId(3)];
    in_session(node, one, 1, "one").await.expect("applies");
    in_session(node, two, 1, "two").await.expect("applies");
    in_session(node, three, 1, "three").await.expect("applies");
    let evicted = in_session(node, one, 1, "one")
        .await
        .expect("applies again");
    assert_eq!(
        evicted,
        Bytes::from("4"),
        "session 1 was evicted: applied again"
    );
    let kept = in_session(node, three, 1, "three").await.expect("answered");
    assert_eq!(kept, Bytes::from("3"), "session 3 is still held");

    let recent = in_session(node, two, 5, "recent").await.expect("applies");
    for filler in 0..4 {
        node.propose(Bytes::from(format!("filler {filler}")))
            .await
            .expect("applies");
    }
    let expired = in_session(node, two, 5, "recent")
        .await
        .expect("applies again");
    assert_ne!(expired, recent, "session 2 expired after 4 idle entries");
    assert_eq!(cluster.times_applied(0, "one"), 2);
    assert_eq!(cluster.times_applied(0, "three"), 1);
    assert_eq!(cluster.times_applied(0, "recent"), 2);
    cluster.shutdown().await;
}
