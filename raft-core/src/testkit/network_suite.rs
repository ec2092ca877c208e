//! The `Network` conformance suite: one contract that every transport, ours or a third party's,
//! is held to.
//!
//! A transport joins by implementing [`NetworkHarness`] (build a transport for a node of a
//! cluster on a given address, reach its run-time controls, and play an intruder against it) and
//! calling [`run_all`], or each case from its own `#[tokio::test]` (multi-threaded runtime). Every
//! case builds its transports on `127.0.0.1` ports the OS chooses, and every wait is bounded: a
//! transport that loses, reorders, blocks or leaks fails a case with a message, never hangs it.
//!
//! What the suite requires beyond the trait's signatures:
//!
//! - messages to one peer on one lane arrive whole and in the order sent; with no faults and
//!   room in the queues, none is lost;
//! - a message whose frame is at most the transport's `frame_bytes_max` is carried whole; one
//!   byte more is refused by `send` with [`SendError::TooLarge`] naming the frame size and limit;
//! - `send` never blocks: toward a peer that is down it queues up to the per-peer limit and then
//!   answers [`SendError::QueueFull`]; toward a node it has no address for, [`SendError::UnknownPeer`];
//!   after `shutdown`, [`SendError::Closed`];
//! - a peer that restarts on the same address is reached again without help;
//! - messages on the snapshot lane travel apart from ordinary ones: a heartbeat sent while a
//!   snapshot stream fills its queue overtakes chunks queued before it;
//! - bytes that are not frames, handshakes from another cluster, from unknown nodes or for
//!   another node, a silent connection, and messages whose sender is not the connection's peer
//!   are all refused by closing that connection, and no such message reaches the node, while
//!   good peers' messages keep arriving;
//! - a node that a committed membership removed ([`Network::removals_committed`]) is refused in
//!   a way that tells it so: it gets a removal report ([`Inbound::report_removed`]) naming the
//!   member that refused it;
//! - after `shutdown` the transport runs no task, and the runtime is back to the tasks it had
//!   before the transports were built (transport libraries' own background tasks included);
//! - with [`RaftNode`]s on top, a node that joins with its address in the membership is
//!   reached by every member without anyone calling `add_peer` for it
//!   ([`joined_nodes_are_reached_through_the_membership`], which needs a log store and so is
//!   not among the cases of [`run_all`]).
//!
//! The protocol has no snapshot message kinds yet, so the suite sends big `Append` messages on
//! the snapshot lane through [`NetworkHarness::send_on`]; a transport's `Network::send` routes
//! each message by [`Message::lane`].
//!
//! ```
//! use async_trait::async_trait;
//! use raft_core::testkit::network_suite::{run_all, IntrusionOutcome, NetworkHarness, SuiteLimits};
//! use raft_core::wire::ClusterId;
//! use raft_core::{Lane, Message, Network, NetworkError, NodeId, SendError};
//! use std::net::SocketAddr;
//! use std::time::Duration;
//!
//! /// Runs the suite against some transport type `MyTransport` (here a stand-in, never built).
//! struct MyHarness;
//!
//! # struct MyTransport;
//! # #[async_trait]
//! # impl Network for MyTransport {
//! #     async fn start(&self, _: raft_core::Inbound) -> Result<(), NetworkError> { Ok(()) }
//! #     fn send(&self, _: Message) -> Result<(), SendError> { Ok(()) }
//! #     async fn shutdown(&self) {}
//! # }
//! #[async_trait]
//! impl NetworkHarness for MyHarness {
//!     type Transport = MyTransport;
//!     fn limits(&self) -> SuiteLimits {
//!         SuiteLimits { frame_bytes_max: 1 << 20, send_queue_messages_max: 64, snapshot_queue_messages_max: 8 }
//!     }
//!     async fn build(&self, _: ClusterId, _: NodeId, _: SocketAddr) -> Result<MyTransport, NetworkError> {
//!         Err(NetworkError("a stand-in".into()))
//!     }
//!     fn local_addr(&self, _: &MyTransport) -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], 0)) }
//!     fn add_peer(&self, _: &MyTransport, _: NodeId, _: SocketAddr) {}
//!     fn remove_peer(&self, _: &MyTransport, _: NodeId) {}
//!     fn send_on(&self, _: &MyTransport, _: Lane, _: Message) -> Result<(), SendError> { Ok(()) }
//!     fn tasks_running(&self, _: &MyTransport) -> usize { 0 }
//!     async fn intrude(&self, _: SocketAddr, _: NodeId, _: NodeId, _: Vec<u8>, _: Duration) -> IntrusionOutcome {
//!         IntrusionOutcome::Closed
//!     }
//! }
//!
//! // In the transport's tests:
//! // #[tokio::test(flavor = "multi_thread")]
//! // async fn conformance() { run_all(&MyHarness).await }
//! # let _ = run_all::<MyHarness>;
//! ```

use crate::config::Config;
use crate::membership::{MembershipChange, NodeMeta};
use crate::message::{Lane, Message, MessageBody};
use crate::network::{Inbound, Network, NetworkError, SendError};
use crate::runtime::{RaftNode, RuntimeOptions};
use crate::storage::LogStore;
use crate::testkit::cluster::{wait_applied, RecordingMachine};
use crate::types::{Entry, EntryPayload, Incarnation, LogIndex, NodeId, Term};
use crate::wire::{self, ClusterId, Handshake};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout, Instant};

/// The limits the harness configured its transports with; the suite fills and passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuiteLimits {
    /// Largest frame, length field included, that a transport sends or accepts.
    pub frame_bytes_max: usize,
    /// Messages queued per peer on the ordinary lane before `send` answers `QueueFull`.
    pub send_queue_messages_max: usize,
    /// Messages queued per peer on the snapshot lane before `send` answers `QueueFull`.
    pub snapshot_queue_messages_max: usize,
}

/// What became of an intruder's connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntrusionOutcome {
    /// The transport closed the connection (or the stream's connection) within the wait.
    Closed,
    /// The transport refused the connection before any byte was written (for example, the TLS
    /// handshake failed).
    Refused(String),
    /// The connection was still open when the wait ended.
    StillOpen,
}

/// Builds transports for the suite and reaches what the `Network` trait does not cover.
#[async_trait]
pub trait NetworkHarness: Send + Sync + 'static {
    /// The transport under test.
    type Transport: Network;

    /// The limits every transport this harness builds is configured with. Keep them small
    /// (a few MiB per frame, tens of messages per queue) so the cases run fast.
    fn limits(&self) -> SuiteLimits;

    /// Builds (and binds, but does not start) the transport of node `node` of `cluster`,
    /// listening on `listen`: `127.0.0.1:0` for a new node, a previous node's address for a
    /// restart. It knows no peers yet; the suite adds them.
    async fn build(
        &self,
        cluster: ClusterId,
        node: NodeId,
        listen: SocketAddr,
    ) -> Result<Self::Transport, NetworkError>;

    /// The address the transport listens on.
    fn local_addr(&self, transport: &Self::Transport) -> SocketAddr;

    /// Adds (or moves) a peer at run time.
    fn add_peer(&self, transport: &Self::Transport, peer: NodeId, address: SocketAddr);

    /// Forgets a peer at run time; sends to it then fail with `UnknownPeer`.
    fn remove_peer(&self, transport: &Self::Transport, peer: NodeId);

    /// Queues `message` on `lane`, whatever `message.lane()` says.
    fn send_on(
        &self,
        transport: &Self::Transport,
        lane: Lane,
        message: Message,
    ) -> Result<(), SendError>;

    /// Tasks the transport has started that have not finished.
    fn tasks_running(&self, transport: &Self::Transport) -> usize;

    /// Plays an intruder: connects to node `target_node`'s transport at `target` presenting
    /// the credentials of `credentials` where the transport authenticates peers (a certificate
    /// signed by the cluster's authority naming that node; plain TCP has none), writes `bytes`
    /// as the start of a connection (QUIC: of a stream), keeps it open and waits up to `wait`
    /// for the transport to close it.
    async fn intrude(
        &self,
        target: SocketAddr,
        target_node: NodeId,
        credentials: NodeId,
        bytes: Vec<u8>,
        wait: Duration,
    ) -> IntrusionOutcome;
}

/// The cluster every case runs in.
pub const SUITE_CLUSTER: ClusterId = ClusterId(0x5eed);

/// How long any single expectation may take before the case fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Capacity of each node's inbox in the suite.
const INBOX_MESSAGES_MAX: usize = 4096;

/// One started node: its transport and the inbox its messages arrive in.
pub struct SuiteNode<T> {
    /// The node.
    pub id: NodeId,
    /// Its transport, started.
    pub transport: Arc<T>,
    /// Where it listens.
    pub address: SocketAddr,
    /// What reached it.
    pub inbox: mpsc::Receiver<Message>,
    /// The peer that reported it removed, if one did ([`Inbound::report_removed`]).
    pub removal: watch::Receiver<Option<NodeId>>,
}

/// Builds and starts `count` nodes (IDs 1..=count) on OS-chosen ports, each knowing the others.
pub async fn start_cluster<H: NetworkHarness>(
    harness: &H,
    count: u64,
) -> Vec<SuiteNode<H::Transport>> {
    let mut nodes = Vec::new();
    for id in 1..=count {
        let node = start_node(harness, NodeId(id), localhost_any_port()).await;
        nodes.push(node);
    }
    for node in &nodes {
        for peer in &nodes {
            if peer.id != node.id {
                harness.add_peer(&node.transport, peer.id, peer.address);
            }
        }
    }
    nodes
}

/// Builds and starts one node on `listen`. A restart may find the address still held for a
/// moment by the previous transport's socket, so binding is retried within the suite's patience.
pub async fn start_node<H: NetworkHarness>(
    harness: &H,
    id: NodeId,
    listen: SocketAddr,
) -> SuiteNode<H::Transport> {
    let deadline = Instant::now() + PATIENCE;
    let transport = loop {
        match harness.build(SUITE_CLUSTER, id, listen).await {
            Ok(transport) => break transport,
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(%error, "building the transport failed; retrying");
                sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("could not build node {id} on {listen}: {error}"),
        }
    };
    let address = harness.local_addr(&transport);
    assert!(address.ip().is_loopback(), "transports listen on loopback");
    assert_ne!(address.port(), 0, "local_addr is the bound address");
    let (inbound, inbox) = Inbound::channel(id, INBOX_MESSAGES_MAX);
    let removal = inbound.removal_reports();
    transport
        .start(inbound)
        .await
        .unwrap_or_else(|error| panic!("node {id} did not start: {error}"));
    SuiteNode {
        id,
        transport: Arc::new(transport),
        address,
        inbox,
        removal,
    }
}

fn localhost_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A heartbeat that carries a sequence number in its commit index.
pub fn numbered(from: NodeId, to: NodeId, sequence: u64) -> Message {
    Message {
        from,
        to,
        term: Term(1),
        incarnation: Incarnation(0),
        body: MessageBody::Heartbeat {
            commit: LogIndex(sequence),
            read_seq: sequence,
            follower_incarnation: Incarnation(0),
        },
    }
}

fn sequence_of(message: &Message) -> Option<u64> {
    match message.body {
        MessageBody::Heartbeat { commit, .. } => Some(commit.0),
        _ => None,
    }
}

/// An append of one entry with `payload_bytes` of a pattern derived from `index`, so a receiver
/// can check every byte.
pub fn chunk(from: NodeId, to: NodeId, index: u64, payload_bytes: usize) -> Message {
    let payload: Vec<u8> = (0..payload_bytes)
        .map(|at| (at as u64).wrapping_mul(31).wrapping_add(index) as u8)
        .collect();
    Message {
        from,
        to,
        term: Term(2),
        incarnation: Incarnation(0),
        body: MessageBody::Append {
            prev_log_index: LogIndex(index),
            prev_log_term: Term(2),
            entries: vec![Entry {
                term: Term(2),
                index: LogIndex(index + 1),
                payload: EntryPayload::Command(Bytes::from(payload)),
            }],
            leader_commit: LogIndex(0),
        },
    }
}

/// The index of a [`chunk`] whose every byte is intact, or `None` for anything else.
fn intact_chunk_index(message: &Message) -> Option<u64> {
    let MessageBody::Append {
        prev_log_index,
        entries,
        ..
    } = &message.body
    else {
        return None;
    };
    let [Entry {
        payload: EntryPayload::Command(data),
        ..
    }] = entries.as_slice()
    else {
        return None;
    };
    let index = prev_log_index.0;
    let intact = data
        .iter()
        .enumerate()
        .all(|(at, &byte)| byte == (at as u64).wrapping_mul(31).wrapping_add(index) as u8);
    assert!(intact, "chunk {index} arrived with different bytes");
    Some(index)
}

/// A [`chunk`] whose encoded frame is exactly `frame_bytes` long.
pub fn chunk_of_frame_bytes(from: NodeId, to: NodeId, frame_bytes: usize) -> Message {
    let frame_len = |payload_bytes: usize| {
        wire::encode_message(&chunk(from, to, 0, payload_bytes), usize::MAX)
            .expect("no limit")
            .len()
    };
    let overhead = frame_len(0);
    assert!(frame_bytes > overhead + 16, "the frame limit leaves room");
    let mut payload_bytes = frame_bytes - overhead;
    // The payload's length prefix grows by a few bytes past 250 and 65535 bytes: step back.
    while frame_len(payload_bytes) > frame_bytes {
        payload_bytes -= 1;
    }
    let message = chunk(from, to, 0, payload_bytes);
    assert_eq!(
        frame_len(payload_bytes),
        frame_bytes,
        "no payload size gives a frame of exactly {frame_bytes} bytes"
    );
    message
}

/// Sends, waiting out `QueueFull` (the transport is draining); any other error fails the case.
async fn send_patiently<H: NetworkHarness>(
    harness: &H,
    transport: &H::Transport,
    lane: Lane,
    message: Message,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match harness.send_on(transport, lane, message.clone()) {
            Ok(()) => return,
            Err(SendError::QueueFull { .. }) if Instant::now() < deadline => {
                sleep(Duration::from_millis(1)).await;
            }
            Err(error) => panic!("sending {message:?} failed: {error}"),
        }
    }
}

/// The next message in `inbox`, or a failed case after the suite's patience.
async fn next_message(inbox: &mut mpsc::Receiver<Message>, waiting_for: &str) -> Message {
    match timeout(PATIENCE, inbox.recv()).await {
        Ok(Some(message)) => message,
        Ok(None) => panic!("the inbox closed while waiting for {waiting_for}"),
        Err(_) => panic!("nothing arrived within {PATIENCE:?} while waiting for {waiting_for}"),
    }
}

/// Runs every case, one after the other.
pub async fn run_all<H: NetworkHarness>(harness: &H) {
    delivery_and_per_peer_order(harness).await;
    large_messages_up_to_the_limit(harness).await;
    unknown_and_removed_peers_are_refused(harness).await;
    removed_nodes_are_told_they_were_removed(harness).await;
    full_queue_refuses_without_blocking(harness).await;
    restarted_peer_is_reached_again(harness).await;
    snapshot_lane_does_not_delay_ordinary_messages(harness).await;
    intruders_are_refused_while_good_peers_carry_on(harness).await;
    shutdown_leaves_no_task_running(harness).await;
}

async fn shutdown_all<T: Network>(nodes: &[SuiteNode<T>]) {
    for node in nodes {
        node.transport.shutdown().await;
    }
}

/// Proves: every message between three nodes arrives, once, in the order sent per peer, when
/// all of them send to each other at once.
pub async fn delivery_and_per_peer_order<H: NetworkHarness>(harness: &H) {
    const MESSAGES_PER_PEER: u64 = 500;
    let mut nodes = start_cluster(harness, 3).await;
    let ids: Vec<NodeId> = nodes.iter().map(|node| node.id).collect();
    for round in 0..MESSAGES_PER_PEER {
        for node in &nodes {
            for &peer in ids.iter().filter(|&&peer| peer != node.id) {
                let message = numbered(node.id, peer, round);
                send_patiently(harness, &node.transport, Lane::Ordinary, message).await;
            }
        }
    }
    for node in &mut nodes {
        let mut next_expected: HashMap<NodeId, u64> = HashMap::new();
        let expected_total = MESSAGES_PER_PEER * (ids.len() as u64 - 1);
        for _ in 0..expected_total {
            let message = next_message(&mut node.inbox, "ordered messages").await;
            assert_eq!(message.to, node.id);
            let sequence = sequence_of(&message).expect("only numbered heartbeats are sent");
            let expected = next_expected.entry(message.from).or_insert(0);
            assert_eq!(
                sequence, *expected,
                "node {} got message {sequence} from {} out of order",
                node.id, message.from
            );
            *expected += 1;
        }
        for &peer in ids.iter().filter(|&&peer| peer != node.id) {
            assert_eq!(next_expected.get(&peer), Some(&MESSAGES_PER_PEER));
        }
    }
    shutdown_all(&nodes).await;
}

/// Proves: a message whose frame is exactly `frame_bytes_max` arrives whole on either lane, and
/// one a byte larger is refused by `send` with its size and the limit.
pub async fn large_messages_up_to_the_limit<H: NetworkHarness>(harness: &H) {
    let limit = harness.limits().frame_bytes_max;
    let mut nodes = start_cluster(harness, 2).await;
    let (from, to) = (nodes[0].id, nodes[1].id);
    let largest = chunk_of_frame_bytes(from, to, limit);
    for lane in [Lane::Ordinary, Lane::Snapshot] {
        send_patiently(harness, &nodes[0].transport, lane, largest.clone()).await;
        let received = next_message(&mut nodes[1].inbox, "the largest message").await;
        assert_eq!(
            received, largest,
            "the largest message arrives whole on {lane:?}"
        );
    }

    let too_large = chunk_of_frame_bytes(from, to, limit + 1);
    for lane in [Lane::Ordinary, Lane::Snapshot] {
        assert_eq!(
            harness.send_on(&nodes[0].transport, lane, too_large.clone()),
            Err(SendError::TooLarge {
                bytes: limit + 1,
                limit
            })
        );
    }
    assert_eq!(
        nodes[0].transport.send(too_large),
        Err(SendError::TooLarge {
            bytes: limit + 1,
            limit
        })
    );
    // Nothing of the refused message arrives; the link still works after it.
    send_patiently(
        harness,
        &nodes[0].transport,
        Lane::Ordinary,
        numbered(from, to, 7),
    )
    .await;
    let after = next_message(&mut nodes[1].inbox, "a message after the refused one").await;
    assert_eq!(after, numbered(from, to, 7));
    shutdown_all(&nodes).await;
}

/// Proves: a send to a node without an address is refused as `UnknownPeer`, also after the peer
/// is removed at run time, and a peer added back is reached again.
pub async fn unknown_and_removed_peers_are_refused<H: NetworkHarness>(harness: &H) {
    let mut nodes = start_cluster(harness, 2).await;
    let (from, to) = (nodes[0].id, nodes[1].id);
    let stranger = NodeId(77);
    assert_eq!(
        nodes[0].transport.send(numbered(from, stranger, 0)),
        Err(SendError::UnknownPeer { to: stranger })
    );
    harness.remove_peer(&nodes[0].transport, to);
    assert_eq!(
        nodes[0].transport.send(numbered(from, to, 0)),
        Err(SendError::UnknownPeer { to })
    );
    harness.add_peer(&nodes[0].transport, to, nodes[1].address);
    send_patiently(
        harness,
        &nodes[0].transport,
        Lane::Ordinary,
        numbered(from, to, 1),
    )
    .await;
    let message = next_message(&mut nodes[1].inbox, "a message to a re-added peer").await;
    assert_eq!(message, numbered(from, to, 1));
    shutdown_all(&nodes).await;
}

/// Proves: once told that a committed membership removed node 2
/// ([`Network::removals_committed`]), node 1 drops it as a peer and refuses what it sends in a
/// way that tells it so: node 2, which still takes node 1 for a member, gets a removal report
/// naming node 1 ([`Inbound::report_removed`]), and none of its messages reach node 1.
pub async fn removed_nodes_are_told_they_were_removed<H: NetworkHarness>(harness: &H) {
    let mut nodes = start_cluster(harness, 2).await;
    let (one, two) = (nodes[0].id, nodes[1].id);
    nodes[0]
        .transport
        .removals_committed(&BTreeSet::from([two]));
    assert_eq!(
        nodes[0].transport.send(numbered(one, two, 0)),
        Err(SendError::UnknownPeer { to: two }),
        "a removed node is no longer a peer"
    );
    let deadline = Instant::now() + PATIENCE;
    let mut sequence = 1;
    while nodes[1].removal.borrow().is_none() {
        assert!(
            Instant::now() < deadline,
            "node 2 was never told it was removed"
        );
        let _ = nodes[1].transport.send(numbered(two, one, sequence));
        sequence += 1;
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        *nodes[1].removal.borrow(),
        Some(one),
        "the report names node 1"
    );
    assert!(
        nodes[0].inbox.try_recv().is_err(),
        "nothing from the removed node was delivered"
    );
    shutdown_all(&nodes).await;
}

/// Proves: toward a peer that is down, `send` never blocks; it queues up to the per-peer limit
/// on each lane and then answers `QueueFull`.
pub async fn full_queue_refuses_without_blocking<H: NetworkHarness>(harness: &H) {
    let limits = harness.limits();
    let nodes = start_cluster(harness, 1).await;
    let from = nodes[0].id;
    let down = NodeId(2);
    // An address where nothing listens: bind a port, then let it go.
    let vacant = std::net::TcpListener::bind(localhost_any_port())
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    harness.add_peer(&nodes[0].transport, down, vacant);
    for (lane, queue_max) in [
        (Lane::Ordinary, limits.send_queue_messages_max),
        (Lane::Snapshot, limits.snapshot_queue_messages_max),
    ] {
        let started = Instant::now();
        let mut accepted = 0usize;
        let refusal = loop {
            match harness.send_on(&nodes[0].transport, lane, numbered(from, down, 0)) {
                Ok(()) => accepted += 1,
                Err(error) => break error,
            }
            assert!(
                accepted <= queue_max + 2,
                "{lane:?}: {accepted} messages queued toward a dead peer, limit {queue_max}"
            );
        };
        assert_eq!(refusal, SendError::QueueFull { to: down }, "{lane:?}");
        // The writer may hold a message or two in hand while it waits to connect.
        assert!(
            (queue_max..=queue_max + 2).contains(&accepted),
            "{lane:?}: {accepted} messages queued before QueueFull, limit {queue_max}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{lane:?}: filling the queue took {:?}: send blocked",
            started.elapsed()
        );
    }
    shutdown_all(&nodes).await;
}

/// Proves: when a peer shuts down and a new transport for it starts on the same address, the
/// other node reaches it again, and it reaches the other node.
pub async fn restarted_peer_is_reached_again<H: NetworkHarness>(harness: &H) {
    let mut nodes = start_cluster(harness, 2).await;
    let (first, second) = (nodes[0].id, nodes[1].id);
    send_patiently(
        harness,
        &nodes[0].transport,
        Lane::Ordinary,
        numbered(first, second, 0),
    )
    .await;
    assert_eq!(
        next_message(&mut nodes[1].inbox, "a message before the restart").await,
        numbered(first, second, 0)
    );

    let old = nodes.pop().expect("two nodes");
    old.transport.shutdown().await;
    drop(old.inbox);
    let mut restarted = start_node(harness, second, old.address).await;
    assert_eq!(restarted.address, old.address);
    harness.add_peer(&restarted.transport, first, nodes[0].address);

    // Messages sent while the old connection dies are lost (Raft resends); keep sending until
    // one arrives, as a leader's heartbeats would.
    let deadline = Instant::now() + PATIENCE;
    let mut sequence = 1;
    let arrived = loop {
        assert!(
            Instant::now() < deadline,
            "the restarted peer was never reached"
        );
        match nodes[0].transport.send(numbered(first, second, sequence)) {
            Ok(()) | Err(SendError::QueueFull { .. }) => {}
            Err(error) => panic!("sending to a restarting peer failed: {error}"),
        }
        sequence += 1;
        if let Ok(Some(message)) = timeout(Duration::from_millis(50), restarted.inbox.recv()).await
        {
            break message;
        }
    };
    assert_eq!(arrived.from, first);
    assert!(sequence_of(&arrived).is_some_and(|received| received >= 1));

    send_patiently(
        harness,
        &restarted.transport,
        Lane::Ordinary,
        numbered(second, first, 0),
    )
    .await;
    assert_eq!(
        next_message(&mut nodes[0].inbox, "a message from the restarted peer").await,
        numbered(second, first, 0)
    );
    nodes[0].transport.shutdown().await;
    restarted.transport.shutdown().await;
}

/// Proves: a stream of snapshot-lane chunks arrives whole and in order while ordinary messages
/// keep flowing beside it: whenever the snapshot queue is full, a heartbeat is sent, and at
/// least one such heartbeat arrives before the chunk queued just before it. A transport that
/// carried both lanes on one ordered stream could never deliver that.
pub async fn snapshot_lane_does_not_delay_ordinary_messages<H: NetworkHarness>(harness: &H) {
    const CHUNKS: u64 = 96;
    let limits = harness.limits();
    let chunk_payload_bytes = (limits.frame_bytes_max / 2).min(512 << 10);
    let mut nodes = start_cluster(harness, 2).await;
    let (from, to) = (nodes[0].id, nodes[1].id);
    let sender = Arc::clone(&nodes[0].transport);

    let mut queued = 0u64;
    let mut heartbeats_sent = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while queued < CHUNKS {
        assert!(Instant::now() < deadline, "the snapshot stream stalled");
        let message = chunk(from, to, queued, chunk_payload_bytes);
        match harness.send_on(&sender, Lane::Snapshot, message) {
            Ok(()) => queued += 1,
            Err(SendError::QueueFull { .. }) => {
                // The snapshot lane is backed up: this heartbeat is tagged with the number of
                // chunks queued before it.
                if heartbeats_sent.last() != Some(&queued) {
                    send_patiently(harness, &sender, Lane::Ordinary, numbered(from, to, queued))
                        .await;
                    heartbeats_sent.push(queued);
                }
                sleep(Duration::from_millis(1)).await;
            }
            Err(error) => panic!("queueing a chunk failed: {error}"),
        }
    }
    assert!(
        !heartbeats_sent.is_empty(),
        "the snapshot queue never filled; the case proves nothing"
    );

    let mut chunks_received = 0u64;
    let mut heartbeats_received = Vec::new();
    let mut overtakes = 0;
    while chunks_received < CHUNKS || heartbeats_received.len() < heartbeats_sent.len() {
        let message = next_message(&mut nodes[1].inbox, "chunks and heartbeats").await;
        if let Some(tag) = sequence_of(&message) {
            // Chunks 0..tag were queued before this heartbeat; the last of them is tag - 1.
            if chunks_received < tag {
                overtakes += 1;
            }
            heartbeats_received.push(tag);
        } else {
            let index = intact_chunk_index(&message).expect("only chunks and heartbeats");
            assert_eq!(index, chunks_received, "chunks arrive in order");
            chunks_received += 1;
        }
    }
    assert_eq!(
        heartbeats_received, heartbeats_sent,
        "heartbeats arrive in order"
    );
    assert!(
        overtakes > 0,
        "none of {} heartbeats overtook the snapshot chunks queued before it",
        heartbeats_sent.len()
    );
    shutdown_all(&nodes).await;
}

/// A message no node should ever receive: intruders try to smuggle it in.
fn smuggled(from: NodeId, to: NodeId) -> Message {
    Message {
        from,
        to,
        term: Term(666),
        incarnation: Incarnation(0),
        body: MessageBody::HeartbeatResponse { read_seq: 0 },
    }
}

fn frames(handshake: &Handshake, messages: &[Message], frame_bytes_max: usize) -> Vec<u8> {
    let mut bytes = wire::encode_handshake(handshake).to_vec();
    for message in messages {
        let frame = wire::encode_message(message, frame_bytes_max).expect("fits");
        bytes.extend_from_slice(&frame);
    }
    bytes
}

/// Proves: each kind of bad connection is closed by the target, nothing it sends is delivered,
/// and a good peer's messages keep arriving throughout. A well-behaved intruder (a known peer
/// with a correct handshake) is the control: its connection stays open and its message arrives,
/// so the refusals are not an artefact of the harness.
pub async fn intruders_are_refused_while_good_peers_carry_on<H: NetworkHarness>(harness: &H) {
    let limits = harness.limits();
    let mut nodes = start_cluster(harness, 3).await;
    let (target, good, other) = (nodes[0].id, nodes[1].id, nodes[2].id);
    let target_address = nodes[0].address;
    let hello = Handshake {
        cluster: SUITE_CLUSTER,
        from: good,
        to: target,
        lane: Lane::Ordinary,
    };
    let stranger = NodeId(99);
    let max = limits.frame_bytes_max;
    let mut garbage = vec![0u8; 2048];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in &mut garbage {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let mut wrong_version = wire::encode_handshake(&hello).to_vec();
    wrong_version[wire::LENGTH_BYTES] = wire::FORMAT_VERSION + 1;
    let mut oversized = wire::encode_handshake(&hello).to_vec();
    oversized.extend_from_slice(&((max as u32).to_be_bytes()));
    oversized.extend_from_slice(&[wire::FORMAT_VERSION, wire::KIND_MESSAGE, 0, 0]);
    let mut garbled_payload = wire::encode_handshake(&hello).to_vec();
    garbled_payload.extend_from_slice(&[0, 0, 0, 6, wire::FORMAT_VERSION, wire::KIND_MESSAGE]);
    garbled_payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);

    let cases: Vec<(&str, NodeId, Vec<u8>)> = vec![
        ("random bytes", good, garbage),
        (
            "an HTTP request",
            good,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("an unknown format version", good, wrong_version),
        ("a frame over the limit", good, oversized),
        ("a garbled payload", good, garbled_payload),
        ("a silent connection", good, Vec::new()),
        (
            "a handshake from another cluster",
            good,
            frames(
                &Handshake {
                    cluster: ClusterId(SUITE_CLUSTER.0 + 1),
                    ..hello
                },
                &[smuggled(good, target)],
                max,
            ),
        ),
        (
            "a handshake from an unknown node",
            stranger,
            frames(
                &Handshake {
                    from: stranger,
                    ..hello
                },
                &[smuggled(stranger, target)],
                max,
            ),
        ),
        (
            "a handshake meant for another node",
            good,
            frames(
                &Handshake { to: other, ..hello },
                &[smuggled(good, target)],
                max,
            ),
        ),
        (
            "a message whose sender is not the connection's peer",
            good,
            frames(&hello, &[smuggled(other, target)], max),
        ),
        (
            "a handshake where a message belongs",
            good,
            frames(&hello, &[], max)
                .into_iter()
                .chain(frames(&hello, &[], max))
                .collect(),
        ),
    ];

    let good_sender = Arc::clone(&nodes[1].transport);
    let mut sent = 0u64;
    for (what, credentials, bytes) in cases {
        let outcome = harness
            .intrude(target_address, target, credentials, bytes, PATIENCE)
            .await;
        assert!(
            matches!(
                outcome,
                IntrusionOutcome::Closed | IntrusionOutcome::Refused(_)
            ),
            "{what}: the connection was not refused ({outcome:?})"
        );
        // The good peer carries on after each intruder.
        send_patiently(
            harness,
            &good_sender,
            Lane::Ordinary,
            numbered(good, target, sent),
        )
        .await;
        sent += 1;
    }

    let welcome = numbered(good, target, 1_000_000);
    let control = harness
        .intrude(
            target_address,
            target,
            good,
            frames(&hello, std::slice::from_ref(&welcome), max),
            Duration::from_millis(500),
        )
        .await;
    assert_eq!(
        control,
        IntrusionOutcome::StillOpen,
        "a correct connection is kept"
    );

    let mut good_received = 0;
    let mut welcome_received = false;
    while good_received < sent || !welcome_received {
        let message = next_message(&mut nodes[0].inbox, "the good peer's messages").await;
        assert_ne!(
            message.term,
            Term(666),
            "an intruder's message was delivered"
        );
        assert_eq!(message.from, good);
        if message == welcome {
            welcome_received = true;
        } else {
            assert_eq!(message, numbered(good, target, good_received));
            good_received += 1;
        }
    }
    // Anything still in flight must not be smuggled either.
    sleep(Duration::from_millis(100)).await;
    while let Ok(message) = nodes[0].inbox.try_recv() {
        assert_ne!(
            message.term,
            Term(666),
            "an intruder's message was delivered"
        );
    }
    shutdown_all(&nodes).await;
}

/// Proves: after messages flowed both ways on both lanes, `shutdown` ends every task the
/// transports started (by their own count and by the runtime's), and `send` then answers
/// `Closed`.
pub async fn shutdown_leaves_no_task_running<H: NetworkHarness>(harness: &H) {
    let runtime = tokio::runtime::Handle::current();
    let tasks_before = runtime.metrics().num_alive_tasks();
    let mut nodes = start_cluster(harness, 3).await;
    let ids: Vec<NodeId> = nodes.iter().map(|node| node.id).collect();
    for node in &nodes {
        for &peer in ids.iter().filter(|&&peer| peer != node.id) {
            for lane in [Lane::Ordinary, Lane::Snapshot] {
                send_patiently(harness, &node.transport, lane, numbered(node.id, peer, 0)).await;
            }
        }
    }
    for node in &mut nodes {
        for _ in 0..(ids.len() - 1) * 2 {
            next_message(&mut node.inbox, "messages before shutdown").await;
        }
    }
    assert!(
        nodes
            .iter()
            .all(|node| harness.tasks_running(&node.transport) > 0),
        "running transports report their tasks"
    );
    shutdown_all(&nodes).await;
    for node in &nodes {
        assert_eq!(
            harness.tasks_running(&node.transport),
            0,
            "node {} still runs tasks after shutdown",
            node.id
        );
        assert_eq!(
            node.transport.send(numbered(node.id, ids[0], 0)),
            Err(SendError::Closed)
        );
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let alive = runtime.metrics().num_alive_tasks();
        if alive <= tasks_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{alive} tasks alive after shutdown, {tasks_before} before the transports"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// For a transport that authenticates its peers: a connection to node 1 at `target` made
/// with node 2's credentials is closed when its handshake claims to come from node 3, and kept
/// open when it claims node 2 (the control). Node 1 must be started and know nodes 2 and 3 (as
/// [`start_cluster`] leaves it).
pub async fn credentials_must_name_the_sender<H: NetworkHarness>(harness: &H, target: SocketAddr) {
    let impostor = Handshake {
        cluster: SUITE_CLUSTER,
        from: NodeId(3),
        to: NodeId(1),
        lane: Lane::Ordinary,
    };
    let posing = harness
        .intrude(
            target,
            NodeId(1),
            NodeId(2),
            wire::encode_handshake(&impostor).to_vec(),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(posing, IntrusionOutcome::Closed, "node 2 posing as node 3");

    let honest = Handshake {
        from: NodeId(2),
        ..impostor
    };
    let control = harness
        .intrude(
            target,
            NodeId(1),
            NodeId(2),
            wire::encode_handshake(&honest).to_vec(),
            Duration::from_millis(300),
        )
        .await;
    assert_eq!(control, IntrusionOutcome::StillOpen, "node 2 as itself");
}

/// Builds (binds, does not start) node `id`'s transport on an OS-chosen loopback port.
pub async fn build_transport<H: NetworkHarness>(harness: &H, id: NodeId) -> Arc<H::Transport> {
    let transport = harness
        .build(SUITE_CLUSTER, id, localhost_any_port())
        .await
        .unwrap_or_else(|error| panic!("could not build node {id}: {error}"));
    Arc::new(transport)
}

/// Starts a [`RaftNode`] `id` over `transport` (built, not started) with test timing (2 ms
/// ticks), the initial `voters` (none for a node that joins) and the addresses of `initial`
/// recorded in its configuration (`Config::initial_nodes`).
pub async fn start_raft_node<H: NetworkHarness>(
    harness: &H,
    id: NodeId,
    voters: &[NodeId],
    initial: &[(NodeId, &H::Transport)],
    transport: Arc<H::Transport>,
    store: Arc<dyn LogStore>,
    machine: RecordingMachine,
) -> RaftNode {
    let mut config = Config::new(id, voters.to_vec());
    config.seed = id.0;
    config.initial_nodes = initial
        .iter()
        .map(|(id, t)| (*id, NodeMeta::at(harness.local_addr(t).to_string())))
        .collect();
    let options = RuntimeOptions {
        tick_interval: Duration::from_millis(2),
        ..RuntimeOptions::default()
    };
    RaftNode::start(config, options, store, Box::new(machine), transport)
        .await
        .unwrap_or_else(|error| panic!("node {id} did not start: {error}"))
}

/// Starts node `id` over `transport` knowing only where the leader is (at `leader_transport`),
/// has `leader` add it as a learner with its address recorded in the membership, waits until
/// the leader reached it and caught it up, and promotes it. No member's transport is told of
/// the new node by hand.
pub async fn join<H: NetworkHarness>(
    harness: &H,
    leader: &RaftNode,
    leader_transport: &H::Transport,
    id: NodeId,
    transport: &Arc<H::Transport>,
    store: Arc<dyn LogStore>,
) -> (RaftNode, RecordingMachine) {
    let leader_id = leader.status().id;
    harness.add_peer(transport, leader_id, harness.local_addr(leader_transport));
    let machine = RecordingMachine::default();
    let node = start_raft_node(
        harness,
        id,
        &[],
        &[],
        transport.clone(),
        store,
        machine.clone(),
    )
    .await;
    let meta = NodeMeta::at(harness.local_addr(transport).to_string());
    leader
        .change_membership(MembershipChange::add_learner_at(id, meta))
        .await
        .unwrap_or_else(|error| panic!("{id} was not added as a learner: {error}"));
    leader
        .wait_caught_up(id, PATIENCE)
        .await
        .unwrap_or_else(|error| panic!("the leader reaches {id} at its recorded address: {error}"));
    leader
        .change_membership(MembershipChange::promote(id))
        .await
        .unwrap_or_else(|error| panic!("{id} was not promoted: {error}"));
    (node, machine)
}

/// Waits until `node` sees `leader` lead.
async fn wait_for_leader_to_be(node: &RaftNode, leader: NodeId, why: &str) {
    let mut leadership = node.watch_leadership();
    timeout(PATIENCE, leadership.wait_for(|l| l.leader == Some(leader)))
        .await
        .unwrap_or_else(|_| panic!("{why}: {leader} did not lead within {PATIENCE:?}"))
        .unwrap_or_else(|_| panic!("{why}: the node stopped"));
}

/// Proves: node addresses live in the membership. Node 1 bootstraps alone with its own address
/// in its configuration; nodes 2 and 3 join knowing only node 1's address ([`join`]) and are
/// reached at the addresses committed with the changes that add them; node 3 learns node 2's
/// address and node 1's from the log, so when node 2 leads it reaches node 3 and node 3
/// forwards a write to it; removing node 1 commits, and the others commit without it. Every
/// node applies the same commands, and shutdown leaves no transport task running. `new_store`
/// gives each node an empty log store.
pub async fn joined_nodes_are_reached_through_the_membership<H: NetworkHarness>(
    harness: &H,
    new_store: impl Fn() -> Arc<dyn LogStore>,
) {
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let mut transports = Vec::new();
    for id in ids {
        transports.push(build_transport(harness, id).await);
    }
    let [t1, t2, t3] = [&transports[0], &transports[1], &transports[2]];
    let m1 = RecordingMachine::default();
    let n1 = start_raft_node(
        harness,
        ids[0],
        &ids[..1],
        &[(ids[0], &**t1)],
        t1.clone(),
        new_store(),
        m1.clone(),
    )
    .await;
    wait_for_leader_to_be(&n1, ids[0], "node 1 bootstraps alone").await;
    n1.propose(Bytes::from("before"))
        .await
        .expect("node 1 commits alone");

    // Node 2 joins knowing only where node 1 is; node 1's transport is told nothing by hand.
    let (n2, m2) = join(harness, &n1, t1, ids[1], t2, new_store()).await;
    // Node 3 joins knowing only the leader; it learns node 2's address from the membership.
    let (n3, m3) = join(harness, &n1, t1, ids[2], t3, new_store()).await;
    assert_eq!(
        n3.status().membership.nodes.get(&ids[0]),
        Some(&NodeMeta::at(harness.local_addr(t1).to_string())),
        "the initial voter's address travelled in the log"
    );
    // Node 2 leads now: it reaches node 3, and a write through node 3 is forwarded to node 2,
    // which nobody told node 3 of.
    n1.transfer_leadership(ids[1])
        .await
        .expect("node 2 takes over");
    wait_for_leader_to_be(
        &n3,
        ids[1],
        "node 2 reaches node 3, which it was never told of",
    )
    .await;
    n3.propose(Bytes::from("from three"))
        .await
        .expect("node 3 reaches the new leader");
    let nodes = [n1.clone(), n2.clone(), n3.clone()];
    wait_applied(&nodes, n2.status().commit_index).await;
    assert_eq!(m3.applied(), m1.applied(), "node 3 applied what node 1 did");
    assert_eq!(m2.applied(), m1.applied(), "node 2 applied what node 1 did");

    // Removing node 1 commits, and the others still commit without it.
    n2.change_membership(MembershipChange::remove(ids[0]))
        .await
        .expect("node 1 removed");
    n3.propose(Bytes::from("after"))
        .await
        .expect("nodes 2 and 3 commit without node 1");
    timeout(PATIENCE, async {
        while n1.removal().is_none() {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("node 1 learns it was removed");
    for node in nodes {
        node.shutdown().await;
    }
    for (id, transport) in ids.iter().zip(&transports) {
        assert_eq!(
            harness.tasks_running(transport),
            0,
            "a task of {id}'s transport outlived shutdown"
        );
    }
}

/// Expands to one `#[tokio::test]` per case of the suite (multi-threaded runtime, two worker
/// threads), named after the case, each running it against a fresh harness from `$harness`.
/// Invoke it inside a module to run the suite under several harnesses from one test target.
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread` features.
///
/// ```ignore
/// mod plain {
///     use super::*;
///     raft_core::network_suite_tests!(Harness::plain());
/// }
/// ```
#[macro_export]
macro_rules! network_suite_tests {
    ($harness:expr) => {
        $crate::network_suite_tests!(@cases $harness;
            delivery_and_per_peer_order,
            large_messages_up_to_the_limit,
            unknown_and_removed_peers_are_refused,
            removed_nodes_are_told_they_were_removed,
            full_queue_refuses_without_blocking,
            restarted_peer_is_reached_again,
            snapshot_lane_does_not_delay_ordinary_messages,
            intruders_are_refused_while_good_peers_carry_on,
            shutdown_leaves_no_task_running,
        );
    };
    (@cases $harness:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::testkit::network_suite::$case(&$harness).await;
            }
        )*
    };
}

/// Expands, inside an `impl NetworkHarness for …` block whose `Transport` is `$transport`, to
/// the run-time control methods ([`NetworkHarness::local_addr`], `add_peer`, `remove_peer`,
/// `send_on`, `tasks_running`), each calling the transport's inherent method of the same name
/// and signature.
#[macro_export]
macro_rules! network_harness_controls {
    ($transport:ty) => {
        fn local_addr(&self, transport: &$transport) -> ::std::net::SocketAddr {
            transport.local_addr()
        }

        fn add_peer(
            &self,
            transport: &$transport,
            peer: $crate::NodeId,
            address: ::std::net::SocketAddr,
        ) {
            transport.add_peer(peer, address);
        }

        fn remove_peer(&self, transport: &$transport, peer: $crate::NodeId) {
            transport.remove_peer(peer);
        }

        fn send_on(
            &self,
            transport: &$transport,
            lane: $crate::Lane,
            message: $crate::Message,
        ) -> ::std::result::Result<(), $crate::SendError> {
            transport.send_on(lane, message)
        }

        fn tasks_running(&self, transport: &$transport) -> usize {
            transport.tasks_running()
        }
    };
}
