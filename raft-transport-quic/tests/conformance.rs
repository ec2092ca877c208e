//! The QUIC transport against raft-core's `Network` conformance suite, plus what only QUIC has:
//! certificate identity checks, the ALPN and CA checks of the TLS handshake, raw UDP garbage,
//! and the inbound connection bound.

mod harness;

use harness::*;
use raft_core::testkit::network_suite::{self as suite, IntrusionOutcome};
use raft_core::wire::{self, Handshake};
use raft_core::{Inbound, Lane, Network, NodeId};
use raft_transport_quic::QuicTransport;
use std::net::SocketAddr;
use std::time::Duration;

raft_core::network_suite_tests!(Harness::new());

/// Proves: node 2's certificate cannot claim to be node 3; a certificate from another CA and a
/// client speaking another ALPN protocol fail the TLS handshake; raw UDP garbage is ignored.
/// Node 2 as itself is the control. Good traffic flows afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_identity_and_garbage_datagrams() {
    let harness = Harness::new();
    let mut nodes = suite::start_cluster(&harness, 2).await;
    let target = nodes[0].address;
    suite::credentials_must_name_the_sender(&harness, target).await;

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

    // One authenticated connection holds the only slot.
    let holder = intruder_endpoint(
        &harness.certificates.files(NodeId(2)),
        raft_transport_quic::ALPN,
    );
    // Node 2 must be known to the target; nothing is ever sent to it.
    target.add_peer(NodeId(2), holder.local_addr().unwrap());
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

/// Proves: a peer may open at most `inbound_streams_max` streams at once on a connection: the
/// next `open_uni` waits for the target to grant more, which it does not while both are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_streams_are_bounded() {
    let harness = Harness::new();
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = harness.config(suite::SUITE_CLUSTER, NodeId(1), localhost);
    config.inbound_streams_max = 2;
    let target = QuicTransport::bind(config).await.unwrap();
    let (inbound, mut inbox) = Inbound::channel(NodeId(1), 16);
    target.start(inbound).await.unwrap();
    let peer = intruder_endpoint(
        &harness.certificates.files(NodeId(2)),
        raft_transport_quic::ALPN,
    );
    target.add_peer(NodeId(2), peer.local_addr().unwrap());
    let connection = peer
        .connect(target.local_addr(), &wire::certificate_name(NodeId(1)))
        .unwrap()
        .await
        .unwrap();
    let mut streams = Vec::new();
    for (lane, sequence) in [(Lane::Ordinary, 1), (Lane::Snapshot, 2)] {
        let hello = Handshake {
            cluster: suite::SUITE_CLUSTER,
            from: NodeId(2),
            to: NodeId(1),
            lane,
        };
        let mut stream = connection.open_uni().await.unwrap();
        stream
            .write_all(&wire::encode_handshake(&hello))
            .await
            .unwrap();
        let message = suite::numbered(NodeId(2), NodeId(1), sequence);
        let frame = wire::encode_message(&message, LIMITS.frame_bytes_max).unwrap();
        stream.write_all(&frame).await.unwrap();
        let delivered = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(delivered, message, "both permitted streams are served");
        streams.push(stream);
    }
    let third = tokio::time::timeout(Duration::from_millis(500), connection.open_uni()).await;
    assert!(third.is_err(), "a third concurrent stream was granted");
    drop(streams);
    connection.close(quinn::VarInt::from_u32(0), b"done");
    target.shutdown().await;
}
