//! Mutual TLS from PEM files: both ends present a certificate signed by the cluster's CA, the
//! dialler checks that the listener's certificate names the peer it meant to reach, and the
//! listener checks that the dialler's certificate names the node its handshake claims.

use crate::config::TlsFiles;
use raft_core::wire;
use raft_core::{NetworkError, NodeId};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A node's TLS identity, loaded and ready for both directions.
#[derive(Clone)]
pub(crate) struct TlsContext {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) connector: TlsConnector,
    /// Checks that a certificate the CA signed names a given node. A server verifier does this
    /// for any certificate carrying the server-auth usage, which node certificates do, since
    /// every node is both client and server.
    identity: Arc<WebPkiServerVerifier>,
}

fn error(what: &str, error: impl std::fmt::Display) -> NetworkError {
    NetworkError(format!("{what}: {error}"))
}

impl TlsContext {
    pub(crate) fn load(files: &TlsFiles) -> Result<TlsContext, NetworkError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(&files.ca_certificate)
            .map_err(|e| error("reading the CA certificate", e))?
        {
            let certificate = certificate.map_err(|e| error("parsing the CA certificate", e))?;
            roots
                .add(certificate)
                .map_err(|e| error("adding the CA certificate", e))?;
        }
        if roots.is_empty() {
            return Err(NetworkError(format!(
                "{} holds no certificate",
                files.ca_certificate.display()
            )));
        }
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.certificate)
            .map_err(|e| error("reading the node certificate", e))?
            .collect::<Result<_, _>>()
            .map_err(|e| error("parsing the node certificate", e))?;
        let key = PrivateKeyDer::from_pem_file(&files.private_key)
            .map_err(|e| error("reading the node's private key", e))?;

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| error("building the client verifier", e))?;
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| error("choosing TLS versions", e))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| error("loading the node certificate", e))?;
        let client = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| error("choosing TLS versions", e))?
            .with_root_certificates(Arc::clone(&roots))
            .with_client_auth_cert(chain, key)
            .map_err(|e| error("loading the node certificate", e))?;
        let identity = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| error("building the identity verifier", e))?;
        Ok(TlsContext {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            identity,
        })
    }

    /// The name to ask for when dialling `node`.
    pub(crate) fn server_name(node: NodeId) -> ServerName<'static> {
        ServerName::try_from(wire::certificate_name(node)).expect("node names are DNS names")
    }

    /// Whether `chain` (already verified against the CA by the TLS handshake) names `node`.
    pub(crate) fn names(&self, chain: &[CertificateDer<'static>], node: NodeId) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.identity
            .verify_server_cert(
                leaf,
                intermediates,
                &TlsContext::server_name(node),
                &[],
                UnixTime::now(),
            )
            .is_ok()
    }
}
