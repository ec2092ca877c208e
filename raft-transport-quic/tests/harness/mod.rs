//! The harness that builds this crate's transports for raft-core's conformance suite and
//! benchmark. Shared by the test and bench targets (`#[path]` from the bench), each of which
//! uses part of it.
#![allow(dead_code)]

use async_trait::async_trait;
use quinn::crypto::rustls::QuicClientConfig;
use raft_core::testkit::network_suite::{IntrusionOutcome, NetworkHarness, SuiteLimits};
use raft_core::wire::{self, ClusterId};
use raft_core::{NetworkError, NodeId};
use raft_transport_quic::{generate_cluster_certificates, QuicConfig, QuicTransport, TlsFiles};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const LIMITS: SuiteLimits = SuiteLimits {
    frame_bytes_max: 4 << 20,
    send_queue_messages_max: 64,
    snapshot_queue_messages_max: 8,
};

/// A folder of generated certificates (CA, nodes 1..=9 and 99), removed when dropped.
pub struct Certificates {
    pub folder: PathBuf,
}

impl Certificates {
    pub fn generate(name: &str) -> Certificates {
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

    pub fn files(&self, node: NodeId) -> TlsFiles {
        TlsFiles::in_folder(&self.folder, node)
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// A bare QUIC client presenting `files`' identity with the given ALPN.
pub fn intruder_endpoint(files: &TlsFiles, alpn: &[u8]) -> quinn::Endpoint {
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

pub struct Harness {
    pub certificates: Certificates,
}

impl Harness {
    pub fn new() -> Harness {
        Harness {
            certificates: Certificates::generate("suite"),
        }
    }

    pub fn config(&self, cluster: ClusterId, node: NodeId, listen: SocketAddr) -> QuicConfig {
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
pub async fn intrude_with(
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

    raft_core::network_harness_controls!(QuicTransport);

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
