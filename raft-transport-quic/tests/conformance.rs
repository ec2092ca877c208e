//! The QUIC transport against raft-core's `Network` conformance suite, plus what only QUIC has:
//! certificate identity checks, the ALPN and CA checks of the TLS handshake, raw UDP garbage,
//! and the inbound connection bound.

use async_trait::async_trait;
use quinn::crypto::rustls::QuicClientConfig;
use raft_core::testkit::network_suite::{
    self as suite, IntrusionOutcome, NetworkHarness, SuiteLimits,
};
use raft_core::wire::{self, ClusterId, Handshake};
use raft_core::{Inbound, Lane, Message, Network, NetworkError, NodeId, SendError};
use raft_transport_quic::{generate_cluster_certificates, QuicConfig, QuicTransport, TlsFiles};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LIMITS: SuiteLimits = SuiteLimits {
    frame_bytes_max: 4 << 20,
    send_queue_messages_max: 64,
    snapshot_queue_messages_max: 8,
};

/// A folder of generated certificates (CA, nodes 1..=9 and 99), removed when dropped.
struct Certificates {
    folder: PathBuf,
}

impl Certificates {
    fn generate(name: &str) -> Certificates {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let folder = std::env::temp_dir().join(format!(
            "raft-quic-{}-{name}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let nodes: Vec<NodeId> = (1..=9).chain([99]).map(NodeId).collect();
        generate_cluster_certificates(&folder, &nodes).unwrap();
        Certificates { folder }
    }

    fn files(&self, node: NodeId) -> TlsFiles {
        TlsFiles::in_folder(&self.folder, node)
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// A bare QUIC client presenting `files`' identity with the given ALPN.
fn intruder_endpoint(files: &TlsFiles, alpn: &[u8]) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&files.ca_certificate).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_file(&files.certificate).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&files.private_key).unwrap();
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    crypto.alpn_protocols = vec![alpn.to_vec()];
    let client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto).unwrap()));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    endpoint
}

struct Harness {
    certificates: Certificates,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            certificates: Certificates::generate("suite"),
        }
    }

    fn config(&self, cluster: ClusterId, node: NodeId, listen: SocketAddr) -> QuicConfig {
        let mut config = QuicConfig::new(cluster, node, listen, self.certificates.files(node));
        config.frame_bytes_max = LIMITS.frame_bytes_max;
        config.send_queue_messages_max = LIMITS.send_queue_messages_max;
        config.snapshot_queue_messages_max = LIMITS.snapshot_queue_messages_max;
        config.handshake_timeout = Duration::from_secs(1);
        config.connect_timeout = Duration::from_secs(2);
        config.reconnect_delay_min = Duration::from_millis(10);
        config.reconnect_delay_max = Duration::from_millis(200);
        config
    }
}

/// Connects as `files` says, writes `bytes` on a new stream, and waits for the connection to
/// be closed by the other end.
async fn intrude_with(
    endpoint: &quinn::Endpoint,
    target: SocketAddr,
    target_node: NodeId,
    bytes: &[u8],
    wait: Duration,
) -> IntrusionOutcome {
    let name = wire::certificate_name(target_node);
    let connecting = match endpoint.connect(target, &name) {
        Ok(connecting) => connecting,
        Err(error) => return IntrusionOutcome::Refused(error.to_string()),
    };
    let connection = match connecting.await {
        Ok(connection) => connection,
        Err(error) => return IntrusionOutcome::Refused(error.to_string()),
    };
    let mut stream = match connection.open_uni().await {
        Ok(stream) => stream,
        Err(error) => return IntrusionOutcome::Refused(error.to_string()),
    };
    if !bytes.is_empty() && stream.write_all(bytes).await.is_err() {
        // The transport closed the connection while we wrote: a refusal all the same.
        return IntrusionOutcome::Closed;
    }
    let outcome = match tokio::time::timeout(wait, connection.closed()).await {
        Ok(_) => IntrusionOutcome::Closed,
        Err(_) => IntrusionOutcome::StillOpen,
    };
    connection.close(quinn::VarInt::from_u32(0), b"done");
    outcome
}

#[async_trait]
impl NetworkHarness for Harness {
    type Transport = QuicTransport;

    fn limits(&self) -> SuiteLimits {
        LIMITS
    }

    async fn build(
        &self,
        cluster: ClusterId,
        node: NodeId,
        listen: SocketAddr,
    ) -> Result<QuicTransport, NetworkError> {
        QuicTransport::bind(self.config(cluster, node, listen)).await
    }

    fn local_addr(&self, transport: &QuicTransport) -> SocketAddr {
        transport.local_addr()
    }

    fn add_peer(&self, transport: &QuicTransport, peer: NodeId, address: SocketAddr) {
        transport.add_peer(peer, address);
    }

    fn remove_peer(&self, transport: &QuicTransport, peer: NodeId) {
        transport.remove_peer(peer);
    }

    fn send_on(
        &self,
        transport: &QuicTransport,
        lane: Lane,
        message: Message,
    ) -> Result<(), SendError> {
        transport.send_on(lane, message)
    }

    fn tasks_running(&self, transport: &QuicTransport) -> usize {
        transport.tasks_running()
    }

    async fn intrude(
        &self,
        target: SocketAddr,
        target_node: NodeId,
        credentials: NodeId,
        bytes: Vec<u8>,
        wait: Duration,
    ) -> IntrusionOutcome {
        let endpoint = intruder_endpoint(
            &self.certificates.files(credentials),
            raft_transport_quic::ALPN,
        );
        let outcome = intrude_with(&endpoint, target, target_node, &bytes, wait).await;
        endpoint.wait_idle().await;
        outcome
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_and_per_peer_order() {
    suite::delivery_and_per_peer_order(&Harness::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_up_to_the_limit() {
    suite::large_messages_up_to_the_limit(&Harness::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_removed_peers_are_refused() {
    suite::unknown_and_removed_peers_are_refused(&Harness::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_refuses_without_blocking() {
    suite::full_queue_refuses_without_blocking(&Harness::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_peer_is_reached_again() {
    suite::restarted_peer_is_reached_again(&Harness::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_lane_does_not_delay_ordinary_messages() {
    suite::snapshot_lane_does_not_delay_ordinary_messages(&Harness::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intruders_are_refused_while_good_peers_carry_on() {
    suite::intruders_are_refused_while_good_peers_carry_on(&Harness::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_no_task_running() {
    suite::shutdown_leaves_no_task_running(&Harness::new()).await;
}

/// Proves: node 2's certificate cannot claim to be node 3; a certificate from another CA and a
/// client speaking another ALPN protocol fail the TLS handshake; raw UDP garbage is ignored.
/// Node 2 as itself is the control. Good traffic flows afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_identity_and_garbage_datagrams() {
    let harness = Harness::new();
    let mut nodes = suite::start_cluster(&harness, 2).await;
    let target = nodes[0].address;
    let impostor = Handshake {
        cluster: suite::SUITE_CLUSTER,
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

    let foreign = Certificates::generate("foreign");
    let stranger = intruder_endpoint(&foreign.files(NodeId(2)), raft_transport_quic::ALPN);
    let outcome = intrude_with(&stranger, target, NodeId(1), b"", Duration::from_secs(5)).await;
    assert!(
        matches!(outcome, IntrusionOutcome::Refused(_)),
        "another CA's certificate: {outcome:?}"
    );
    let other_protocol = intruder_endpoint(&harness.certificates.files(NodeId(2)), b"h3");
    let outcome = intrude_with(
        &other_protocol,
        target,
        NodeId(1),
        b"",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        matches!(outcome, IntrusionOutcome::Refused(_)),
        "another ALPN protocol: {outcome:?}"
    );

    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for size in [1usize, 20, 1200, 1500] {
        let garbage: Vec<u8> = (0..size).map(|at| (at * 7 + size) as u8).collect();
        udp.send_to(&garbage, target).await.unwrap();
    }
    nodes[1]
        .transport
        .send(suite::numbered(NodeId(2), NodeId(1), 5))
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(20), nodes[0].inbox.recv())
        .await
        .expect("good traffic flows after the intruders")
        .unwrap();
    assert_eq!(message, suite::numbered(NodeId(2), NodeId(1), 5));
    for node in &nodes {
        node.transport.shutdown().await;
    }
}

/// Proves: connections beyond `inbound_connections_max` are refused while the slots are held,
/// and a peer is served again once a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_connections_are_bounded() {
    let harness = Harness::new();
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = harness.config(suite::SUITE_CLUSTER, NodeId(1), localhost);
    config.inbound_connections_max = 1;
    config.handshake_timeout = Duration::from_secs(10);
    let target = QuicTransport::bind(config).await.unwrap();
    let (inbound, mut inbox) = Inbound::channel(NodeId(1), 16);
    target.start(inbound).await.unwrap();
    target.add_peer(NodeId(2), "127.0.0.1:9".parse().unwrap());

    // One authenticated connection holds the only slot.
    let holder = intruder_endpoint(
        &harness.certificates.files(NodeId(2)),
        raft_transport_quic::ALPN,
    );
    let held = holder
        .connect(target.local_addr(), &wire::certificate_name(NodeId(1)))
        .unwrap()
        .await
        .unwrap();
    let second = intruder_endpoint(
        &harness.certificates.files(NodeId(2)),
        raft_transport_quic::ALPN,
    );
    let refused = second
        .connect(target.local_addr(), &wire::certificate_name(NodeId(1)))
        .unwrap()
        .await;
    assert!(
        refused.is_err(),
        "a second connection is refused while the slot is held"
    );

    // Free the slot: the next connection is served and its message delivered.
    held.close(quinn::VarInt::from_u32(0), b"done");
    let hello = Handshake {
        cluster: suite::SUITE_CLUSTER,
        from: NodeId(2),
        to: NodeId(1),
        lane: Lane::Ordinary,
    };
    let message = suite::numbered(NodeId(2), NodeId(1), 9);
    let mut bytes = wire::encode_handshake(&hello).to_vec();
    bytes.extend_from_slice(&wire::encode_message(&message, LIMITS.frame_bytes_max).unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let third = intruder_endpoint(
        &harness.certificates.files(NodeId(2)),
        raft_transport_quic::ALPN,
    );
    loop {
        let outcome = intrude_with(
            &third,
            target.local_addr(),
            NodeId(1),
            &bytes,
            Duration::from_millis(200),
        )
        .await;
        if outcome == IntrusionOutcome::StillOpen {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivered, message);
    target.shutdown().await;
}
