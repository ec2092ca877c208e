//! The TCP transport against raft-core's `Network` conformance suite, over plain TCP and over
//! mutual TLS, plus what only TCP has: TLS identity checks and the inbound connection bound.

mod harness;

use harness::*;
use raft_core::testkit::network_suite as suite;
use raft_core::wire::{self, ClusterId};
use raft_core::{Inbound, Network, NodeId};
use raft_transport_tcp::{TcpConfig, TcpTransport, TlsFiles};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

mod plain {
    use super::*;
    raft_core::network_suite_tests!(Harness::plain());
}

mod tls {
    use super::*;
    raft_core::network_suite_tests!(Harness::tls());
}

/// Proves: with TLS, a node whose certificate names node 2 cannot claim to be node 3, and a
/// certificate from another CA is refused by the TLS handshake itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_identity_is_checked() {
    let harness = Harness::tls();
    let nodes = suite::start_cluster(&harness, 3).await;
    let target = nodes[0].address;
    suite::credentials_must_name_the_sender(&harness, target).await;

    let foreign = Certificates::generate("foreign");
    let connector = tls_connector(&foreign.files(NodeId(2)));
    let tcp = TcpStream::connect(target).await.unwrap();
    let name = ServerName::try_from(wire::certificate_name(NodeId(1))).unwrap();
    assert!(
        connector.connect(name, tcp).await.is_err(),
        "a certificate from another CA is refused"
    );
    for node in &nodes {
        node.transport.shutdown().await;
    }
}

/// Proves: the listener serves at most `inbound_connections_max` connections at once. Two
/// silent connections fill both slots; a real peer's connection waits in the backlog until the
/// handshake timeout frees a slot, then its message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_connections_are_bounded() {
    let harness = Harness::plain();
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let handshake_timeout = Duration::from_secs(2);
    let mut config = harness.config(suite::SUITE_CLUSTER, NodeId(1), localhost);
    config.inbound_connections_max = 2;
    config.handshake_timeout = handshake_timeout;
    let target = TcpTransport::bind(config).await.unwrap();
    let (inbound, mut inbox) = Inbound::channel(NodeId(1), 16);
    target.start(inbound).await.unwrap();

    let sender = TcpTransport::bind(harness.config(suite::SUITE_CLUSTER, NodeId(2), localhost))
        .await
        .unwrap();
    sender
        .start(Inbound::channel(NodeId(2), 16).0)
        .await
        .unwrap();
    target.add_peer(NodeId(2), sender.local_addr());

    let silent_one = TcpStream::connect(target.local_addr()).await.unwrap();
    let silent_two = TcpStream::connect(target.local_addr()).await.unwrap();
    // Let the listener take both into its two slots.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    sender.add_peer(NodeId(1), target.local_addr());
    sender
        .send(suite::numbered(NodeId(2), NodeId(1), 1))
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(20), inbox.recv())
        .await
        .expect("the message arrives once a slot frees")
        .unwrap();
    assert_eq!(message, suite::numbered(NodeId(2), NodeId(1), 1));
    let waited = started.elapsed();
    assert!(
        waited >= handshake_timeout - Duration::from_millis(400),
        "the third connection was served after {waited:?}, before a slot could free"
    );
    drop((silent_one, silent_two));
    sender.shutdown().await;
    target.shutdown().await;
}

/// Proves: a configuration the transport cannot honour is refused at bind, naming the setting.
#[tokio::test]
async fn bad_configuration_is_refused() {
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = TcpConfig::new(ClusterId(1), NodeId(1), localhost);
    config.snapshot_queue_messages_max = 0;
    let error = TcpTransport::bind(config).await.err().expect("refused");
    assert!(error.0.contains("snapshot_queue_messages_max"), "{error}");
    let mut config = TcpConfig::new(ClusterId(1), NodeId(1), localhost);
    config.tls = Some(TlsFiles {
        ca_certificate: Path::new("/nonexistent/ca.pem").into(),
        certificate: Path::new("/nonexistent/1.pem").into(),
        private_key: Path::new("/nonexistent/1.key.pem").into(),
    });
    assert!(TcpTransport::bind(config).await.is_err());
}
