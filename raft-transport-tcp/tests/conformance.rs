//! The TCP transport against raft-core's `Network` conformance suite, over plain TCP and over
//! mutual TLS, plus what only TCP has: TLS identity checks and the inbound connection bound.

use async_trait::async_trait;
use raft_core::testkit::network_suite::{
    self as suite, IntrusionOutcome, NetworkHarness, SuiteLimits,
};
use raft_core::wire::{self, ClusterId, Handshake};
use raft_core::{Inbound, Lane, Message, Network, NetworkError, NodeId, SendError};
use raft_transport_tcp::{TcpConfig, TcpTransport, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMITS: SuiteLimits = SuiteLimits {
    frame_bytes_max: 4 << 20,
    send_queue_messages_max: 64,
    snapshot_queue_messages_max: 8,
};

/// A cluster CA and certificates for nodes 1..=9 and 99, written as PEM files in a fresh folder.
struct Certificates {
    folder: PathBuf,
}

impl Certificates {
    fn generate(cluster_name: &str) -> Certificates {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let folder = std::env::temp_dir().join(format!(
            "raft-tcp-tls-{}-{}-{}",
            std::process::id(),
            cluster_name,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&folder).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_certificate = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(folder.join("ca.pem"), ca_certificate.pem()).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        for node in (1..=9).chain([99]) {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(vec![wire::certificate_name(NodeId(node))]).unwrap();
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let certificate = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(folder.join(format!("{node}.pem")), certificate.pem()).unwrap();
            std::fs::write(folder.join(format!("{node}.key.pem")), key.serialize_pem()).unwrap();
        }
        Certificates { folder }
    }

    fn files(&self, node: NodeId) -> TlsFiles {
        TlsFiles {
            ca_certificate: self.folder.join("ca.pem"),
            certificate: self.folder.join(format!("{}.pem", node.0)),
            private_key: self.folder.join(format!("{}.key.pem", node.0)),
        }
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// A TLS client presenting `files`' identity, trusting `files`' CA.
fn tls_connector(files: &TlsFiles) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&files.ca_certificate).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_file(&files.certificate).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&files.private_key).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

struct Harness {
    tls: Option<Certificates>,
}

impl Harness {
    fn plain() -> Harness {
        Harness { tls: None }
    }

    fn tls() -> Harness {
        Harness {
            tls: Some(Certificates::generate("suite")),
        }
    }

    fn config(&self, cluster: ClusterId, node: NodeId, listen: SocketAddr) -> TcpConfig {
        let mut config = TcpConfig::new(cluster, node, listen);
        config.frame_bytes_max = LIMITS.frame_bytes_max;
        config.send_queue_messages_max = LIMITS.send_queue_messages_max;
        config.snapshot_queue_messages_max = LIMITS.snapshot_queue_messages_max;
        config.handshake_timeout = Duration::from_secs(1);
        config.reconnect_delay_min = Duration::from_millis(10);
        config.reconnect_delay_max = Duration::from_millis(200);
        config.tls = self
            .tls
            .as_ref()
            .map(|certificates| certificates.files(node));
        config
    }
}

/// Reads whatever the transport says until it closes the connection or `wait` passes.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    wait: Duration,
) -> IntrusionOutcome {
    let mut sink = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Err(_) => return IntrusionOutcome::StillOpen,
            Ok(Ok(0)) | Ok(Err(_)) => return IntrusionOutcome::Closed,
            Ok(Ok(_)) => continue,
        }
    }
}

#[async_trait]
impl NetworkHarness for Harness {
    type Transport = TcpTransport;

    fn limits(&self) -> SuiteLimits {
        LIMITS
    }

    async fn build(
        &self,
        cluster: ClusterId,
        node: NodeId,
        listen: SocketAddr,
    ) -> Result<TcpTransport, NetworkError> {
        TcpTransport::bind(self.config(cluster, node, listen)).await
    }

    fn local_addr(&self, transport: &TcpTransport) -> SocketAddr {
        transport.local_addr()
    }

    fn add_peer(&self, transport: &TcpTransport, peer: NodeId, address: SocketAddr) {
        transport.add_peer(peer, address);
    }

    fn remove_peer(&self, transport: &TcpTransport, peer: NodeId) {
        transport.remove_peer(peer);
    }

    fn send_on(
        &self,
        transport: &TcpTransport,
        lane: Lane,
        message: Message,
    ) -> Result<(), SendError> {
        transport.send_on(lane, message)
    }

    fn tasks_running(&self, transport: &TcpTransport) -> usize {
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
        let mut tcp = match TcpStream::connect(target).await {
            Ok(tcp) => tcp,
            Err(error) => return IntrusionOutcome::Refused(error.to_string()),
        };
        let Some(certificates) = &self.tls else {
            if let Err(error) = tcp.write_all(&bytes).await {
                return IntrusionOutcome::Refused(error.to_string());
            }
            return closed_within(&mut tcp, wait).await;
        };
        let connector = tls_connector(&certificates.files(credentials));
        let name = ServerName::try_from(wire::certificate_name(target_node)).unwrap();
        let mut tls = match connector.connect(name, tcp).await {
            Ok(tls) => tls,
            Err(error) => return IntrusionOutcome::Refused(error.to_string()),
        };
        if let Err(error) = tls.write_all(&bytes).await {
            return IntrusionOutcome::Refused(error.to_string());
        }
        let _ = tls.flush().await;
        closed_within(&mut tls, wait).await
    }
}

macro_rules! conformance {
    ($module:ident, $harness:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delivery_and_per_peer_order() {
                suite::delivery_and_per_peer_order(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn large_messages_up_to_the_limit() {
                suite::large_messages_up_to_the_limit(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unknown_and_removed_peers_are_refused() {
                suite::unknown_and_removed_peers_are_refused(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn full_queue_refuses_without_blocking() {
                suite::full_queue_refuses_without_blocking(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn restarted_peer_is_reached_again() {
                suite::restarted_peer_is_reached_again(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn snapshot_lane_does_not_delay_ordinary_messages() {
                suite::snapshot_lane_does_not_delay_ordinary_messages(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn intruders_are_refused_while_good_peers_carry_on() {
                suite::intruders_are_refused_while_good_peers_carry_on(&$harness).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shutdown_leaves_no_task_running() {
                suite::shutdown_leaves_no_task_running(&$harness).await;
            }
        }
    };
}

conformance!(plain, Harness::plain());
conformance!(tls, Harness::tls());

/// Proves: with TLS, a node whose certificate names node 2 cannot claim to be node 3, and a
/// certificate from another CA is refused by the TLS handshake itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_identity_is_checked() {
    let harness = Harness::tls();
    let nodes = suite::start_cluster(&harness, 3).await;
    let target = nodes[0].address;
    let impostor = Handshake {
        cluster: suite::SUITE_CLUSTER,
        from: NodeId(3),
        to: NodeId(1),
        lane: Lane::Ordinary,
    };
    let outcome = harness
        .intrude(
            target,
            NodeId(1),
            NodeId(2),
            wire::encode_handshake(&impostor).to_vec(),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(outcome, IntrusionOutcome::Closed, "node 2 posing as node 3");

    let honest = Handshake {
        from: NodeId(2),
        ..impostor
    };
    let outcome = harness
        .intrude(
            target,
            NodeId(1),
            NodeId(2),
            wire::encode_handshake(&honest).to_vec(),
            Duration::from_millis(300),
        )
        .await;
    assert_eq!(outcome, IntrusionOutcome::StillOpen, "node 2 as itself");

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
