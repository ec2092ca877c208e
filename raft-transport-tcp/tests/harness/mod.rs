//! The harness that builds this crate's transports for raft-core's conformance suite and
//! benchmark. Shared by the test and bench targets (`#[path]` from the bench), each of which
//! uses part of it.
#![allow(dead_code)]

use async_trait::async_trait;
use raft_core::testkit::network_suite::{IntrusionOutcome, NetworkHarness, SuiteLimits};
use raft_core::wire::{self, ClusterId};
use raft_core::{NetworkError, NodeId};
use raft_transport_tcp::{TcpConfig, TcpTransport, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const LIMITS: SuiteLimits = SuiteLimits {
    frame_bytes_max: 4 << 20,
    send_queue_messages_max: 64,
    snapshot_queue_messages_max: 8,
};

/// A cluster CA and certificates for nodes 1..=9 and 99, written as PEM files in a fresh folder.
pub struct Certificates {
    pub folder: PathBuf,
}

impl Certificates {
    pub fn generate(cluster_name: &str) -> Certificates {
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

    pub fn files(&self, node: NodeId) -> TlsFiles {
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
pub fn tls_connector(files: &TlsFiles) -> tokio_rustls::TlsConnector {
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

pub struct Harness {
    pub tls: Option<Certificates>,
}

impl Harness {
    pub fn plain() -> Harness {
        Harness { tls: None }
    }

    pub fn tls() -> Harness {
        Harness {
            tls: Some(Certificates::generate("suite")),
        }
    }

    pub fn config(&self, cluster: ClusterId, node: NodeId, listen: SocketAddr) -> TcpConfig {
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
pub async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
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

    raft_core::network_harness_controls!(TcpTransport);

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
