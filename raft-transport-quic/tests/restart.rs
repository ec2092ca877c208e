//! A peer that crashes and restarts on the same address must be reached again well before the
//! idle timeout. A killed process sends no CONNECTION_CLOSE, so the surviving node's connection
//! to it looks alive until quinn's idle timeout (`QuicConfig::idle_timeout`, 10 s by default)
//! while every message written to it is lost; a Raft leader would lose its follower for that
//! long. Each case kills node 2 as a crash would (its tasks stop and its socket closes without
//! a packet leaving), starts a new transport for it on the same address with the default idle
//! timeout, and bounds how long node 1's heartbeats take to reach it.
//!
//! - `crashed_peer_restarted_with_its_credentials_is_reached_at_once`: the restarted node stays
//!   silent; the first packet node 1 sends on the old connection must get a stateless reset that
//!   node 1 accepts (the reset key is derived from the node's private key, so it survives the
//!   restart), and node 1 redials.
//! - `crashed_peer_restarted_with_new_credentials_is_reached_once_it_dials`: the node restarts
//!   with a new key (a rotated certificate), so no reset can be valid; when it dials node 1, the
//!   new certificate tells node 1 that its own connection leads to an earlier incarnation, and
//!   node 1 redials.

mod harness;

use harness::*;
use raft_core::testkit::network_suite::{self as suite, SuiteNode};
use raft_core::{Inbound, Message, Network, NodeId, SendError};
use raft_transport_quic::{generate_node_certificate, QuicConfig, QuicTransport};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};

/// The survivor's messages must reach the restarted node within this: a fifth of the default
/// idle timeout, and a few Raft election timeouts.
const REACHED_WITHIN: Duration = Duration::from_secs(2);

/// How long to keep trying before giving up: past the idle timeout, so a run against a
/// transport without restart detection reports how long it took instead of only failing.
const GIVE_UP_AFTER: Duration = Duration::from_secs(15);

/// How often the survivor sends, as a leader's heartbeats.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);

const SURVIVOR: NodeId = NodeId(1);
const VICTIM: NodeId = NodeId(2);

/// A node whose transport runs on a current-thread runtime of its own thread, so it can die as
/// a killed process does: [`Doomed::kill`] drops the transport and then the runtime without
/// polling either again, so no packet leaves (no CONNECTION_CLOSE) and the socket closes.
struct Doomed {
    address: SocketAddr,
    inbox: mpsc::Receiver<Message>,
    /// Messages for the node to send; closing it is the kill.
    outgoing: mpsc::UnboundedSender<Message>,
    thread: std::thread::JoinHandle<()>,
}

impl Doomed {
    /// Starts the node with `config`, knowing `peer` at `peer_address`.
    fn start(config: QuicConfig, peer: NodeId, peer_address: SocketAddr) -> Doomed {
        let (ready, started) = std::sync::mpsc::channel();
        let (outgoing, mut to_send) = mpsc::unbounded_channel::<Message>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the doomed node");
            let node = config.node;
            let transport = runtime.block_on(async move {
                let transport = QuicTransport::bind(config).await.expect("binds");
                transport.add_peer(peer, peer_address);
                let (inbound, inbox) = Inbound::channel(node, 1024);
                transport.start(inbound).await.expect("starts");
                ready
                    .send((transport.local_addr(), inbox))
                    .expect("the test waits");
                transport
            });
            runtime.block_on(async {
                while let Some(message) = to_send.recv().await {
                    transport.send(message).expect("queues the message");
                }
            });
            // The crash: nothing is polled from here on, so nothing more is sent.
            drop(transport);
            drop(runtime);
        });
        let (address, inbox) = started.recv().expect("the doomed node started");
        Doomed {
            address,
            inbox,
            outgoing,
            thread,
        }
    }

    fn send(&self, message: Message) {
        self.outgoing.send(message).expect("the doomed node runs");
    }

    /// Kills the node, answering the address it listened on.
    fn kill(self) -> SocketAddr {
        drop(self.outgoing);
        self.thread.join().expect("the doomed node's thread");
        self.address
    }
}

async fn expect_message(inbox: &mut mpsc::Receiver<Message>, what: &str) -> Message {
    timeout(Duration::from_secs(10), inbox.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} did not arrive"))
        .unwrap_or_else(|| panic!("the inbox closed while waiting for {what}"))
}

/// Sends numbered heartbeats from `survivor` to the victim, one every
/// [`HEARTBEAT_INTERVAL`], until one reaches `inbox`: answers how long that took, or `None`
/// after [`GIVE_UP_AFTER`]. Heartbeats sent on the dead connection are lost, as Raft allows.
async fn heartbeats_until_one_arrives(
    survivor: &QuicTransport,
    inbox: &mut mpsc::Receiver<Message>,
    first_sequence: u64,
) -> Option<Duration> {
    let started = Instant::now();
    let mut sequence = first_sequence;
    while started.elapsed() < GIVE_UP_AFTER {
        match survivor.send(suite::numbered(SURVIVOR, VICTIM, sequence)) {
            Ok(()) | Err(SendError::QueueFull { .. }) => {}
            Err(error) => panic!("sending to the restarted peer failed: {error}"),
        }
        sequence += 1;
        if let Ok(Some(message)) = timeout(HEARTBEAT_INTERVAL, inbox.recv()).await {
            assert_eq!(message.from, SURVIVOR);
            return Some(started.elapsed());
        }
    }
    None
}

/// Starts the survivor and the doomed node, checks that messages flow both ways (so each holds
/// a connection to the other), kills the doomed node and keeps sending to it for a while, as a
/// leader would while the node is down. Answers the survivor and the dead node's address.
async fn run_until_the_crash(harness: &Harness) -> (SuiteNode<QuicTransport>, SocketAddr) {
    let mut survivor = suite::start_node(harness, SURVIVOR, "127.0.0.1:0".parse().unwrap()).await;
    let config = harness.config(suite::SUITE_CLUSTER, VICTIM, "127.0.0.1:0".parse().unwrap());
    assert_eq!(
        config.idle_timeout,
        Duration::from_secs(10),
        "the default idle timeout"
    );
    let mut doomed = Doomed::start(config, SURVIVOR, survivor.address);
    survivor.transport.add_peer(VICTIM, doomed.address);
    let hello = suite::numbered(VICTIM, SURVIVOR, 0);
    doomed.send(hello.clone());
    assert_eq!(
        expect_message(&mut survivor.inbox, "the doomed node's hello").await,
        hello
    );
    let before = suite::numbered(SURVIVOR, VICTIM, 0);
    survivor.transport.send(before.clone()).unwrap();
    assert_eq!(
        expect_message(&mut doomed.inbox, "a message before the crash").await,
        before
    );

    let address = doomed.kill();
    for sequence in 1..=10 {
        let _ = survivor
            .transport
            .send(suite::numbered(SURVIVOR, VICTIM, sequence));
        sleep(HEARTBEAT_INTERVAL).await;
    }
    (survivor, address)
}

/// Proves: a node killed and restarted on the same address with the same credentials is reached
/// by its peer's next messages, without sending anything itself, well before the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_peer_restarted_with_its_credentials_is_reached_at_once() {
    let harness = Harness::new();
    let (mut survivor, address) = run_until_the_crash(&harness).await;

    let mut restarted = suite::start_node(&harness, VICTIM, address).await;
    restarted.transport.add_peer(SURVIVOR, survivor.address);
    let took = heartbeats_until_one_arrives(&survivor.transport, &mut restarted.inbox, 100).await;
    eprintln!("same credentials: the restarted node was reached after {took:?}");
    let took = took.expect("the restarted node was never reached");
    assert!(
        took < REACHED_WITHIN,
        "the restarted node was reached only after {took:?}"
    );

    let back = suite::numbered(VICTIM, SURVIVOR, 1);
    restarted.transport.send(back.clone()).unwrap();
    assert_eq!(
        expect_message(&mut survivor.inbox, "a message from the restarted node").await,
        back
    );
    survivor.transport.shutdown().await;
    restarted.transport.shutdown().await;
}

/// Proves: a node killed and restarted on the same address with a new key and certificate is
/// reached by its peer's messages as soon as it has dialled that peer, well before the idle
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_peer_restarted_with_new_credentials_is_reached_once_it_dials() {
    let harness = Harness::new();
    let (mut survivor, address) = run_until_the_crash(&harness).await;

    generate_node_certificate(&harness.certificates.folder, VICTIM).unwrap();
    let mut restarted = suite::start_node(&harness, VICTIM, address).await;
    restarted.transport.add_peer(SURVIVOR, survivor.address);
    // What a restarted Raft node sends first, a vote request, say.
    let first = suite::numbered(VICTIM, SURVIVOR, 1);
    restarted.transport.send(first.clone()).unwrap();
    assert_eq!(
        expect_message(&mut survivor.inbox, "the restarted node's first message").await,
        first
    );
    let took = heartbeats_until_one_arrives(&survivor.transport, &mut restarted.inbox, 100).await;
    eprintln!("new credentials: the restarted node was reached after {took:?}");
    let took = took.expect("the restarted node was never reached");
    assert!(
        took < REACHED_WITHIN,
        "the restarted node was reached only after {took:?}"
    );
    survivor.transport.shutdown().await;
    restarted.transport.shutdown().await;
}
