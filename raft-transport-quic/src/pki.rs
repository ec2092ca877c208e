//! The cluster's certificates: generating a CA and node certificates for local use, loading
//! them from files for production, and checking which node a certificate names.

use raft_core::wire;
use raft_core::{NetworkError, NodeId};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The ALPN protocol both ends require, so a QUIC client of some other protocol fails the TLS
/// handshake instead of reaching the frame decoder.
pub const ALPN: &[u8] = b"raft/1";

/// The PEM files of a node's TLS identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate: peers must present a certificate it signed.
    pub ca_certificate: PathBuf,
    /// This node's certificate chain, leaf first, naming it as
    /// [`raft_core::wire::certificate_name`] says, for both server and client authentication.
    pub certificate: PathBuf,
    /// This node's private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

impl TlsFiles {
    /// The files [`generate_cluster_certificates`] wrote for `node` in `folder`.
    pub fn in_folder(folder: &Path, node: NodeId) -> TlsFiles {
        TlsFiles {
            ca_certificate: folder.join("ca.pem"),
            certificate: folder.join(format!("{}.pem", wire::certificate_name(node))),
            private_key: folder.join(format!("{}.key.pem", wire::certificate_name(node))),
        }
    }
}

fn error(what: &str, error: impl std::fmt::Display) -> NetworkError {
    NetworkError(format!("{what}: {error}"))
}

/// The CA's parameters. The same every time, so a node certificate issued later (by
/// [`generate_node_certificate`], from the saved CA key) names the same issuer.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "raft cluster CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// For local use and tests: creates `folder` (if needed), a new cluster CA in it (`ca.pem`,
/// and `ca.key.pem`, which must stay secret), and a certificate and key for each node
/// (`node-<id>.pem`, `node-<id>.key.pem`). Production deployments bring their own files.
pub fn generate_cluster_certificates(folder: &Path, nodes: &[NodeId]) -> Result<(), NetworkError> {
    std::fs::create_dir_all(folder).map_err(|e| error("creating the folder", e))?;
    let ca_key = KeyPair::generate().map_err(|e| error("generating the CA key", e))?;
    let ca_certificate = ca_params()
        .self_signed(&ca_key)
        .map_err(|e| error("signing the CA certificate", e))?;
    write(&folder.join("ca.pem"), &ca_certificate.pem())?;
    write(&folder.join("ca.key.pem"), &ca_key.serialize_pem())?;
    for &node in nodes {
        generate_node_certificate(folder, node)?;
    }
    Ok(())
}

/// Issues a certificate for `node` with the CA saved in `folder` (a node joining later).
pub fn generate_node_certificate(folder: &Path, node: NodeId) -> Result<(), NetworkError> {
    let ca_key_pem = std::fs::read_to_string(folder.join("ca.key.pem"))
        .map_err(|e| error("reading the CA key", e))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| error("parsing the CA key", e))?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate().map_err(|e| error("generating a node key", e))?;
    let mut params = CertificateParams::new(vec![wire::certificate_name(node)])
        .map_err(|e| error("naming the node", e))?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let certificate = params
        .signed_by(&key, &issuer)
        .map_err(|e| error("signing the node certificate", e))?;
    let files = TlsFiles::in_folder(folder, node);
    write(&files.certificate, &certificate.pem())?;
    write(&files.private_key, &key.serialize_pem())
}

fn write(path: &Path, contents: &str) -> Result<(), NetworkError> {
    std::fs::write(path, contents).map_err(|e| error(&format!("writing {}", path.display()), e))
}

/// A node's identity, loaded: rustls configurations for both directions, the verifier that
/// tells which node a peer's certificate names, and quinn's endpoint settings that depend on
/// the private key.
pub(crate) struct Identity {
    pub(crate) server: ServerConfig,
    pub(crate) client: ClientConfig,
    /// A stateless reset key derived from the private key, so that a node restarted with the
    /// same key closes its peers' connections to its earlier incarnation at once (see
    /// [`crate::restart`]).
    pub(crate) endpoint: quinn::EndpointConfig,
    /// A server verifier checks a CA-signed certificate against a name; node certificates
    /// carry the server-auth usage (every node is client and server), so it serves for
    /// certificates that clients present as well.
    names: Arc<WebPkiServerVerifier>,
}

impl Identity {
    pub(crate) fn load(files: &TlsFiles) -> Result<Identity, NetworkError> {
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
        let endpoint = crate::restart::endpoint_config(key.secret_der(), provider.secure_random);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| error("building the client verifier", e))?;
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| error("choosing TLS versions", e))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| error("loading the node certificate", e))?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| error("choosing TLS versions", e))?
            .with_root_certificates(Arc::clone(&roots))
            .with_client_auth_cert(chain, key)
            .map_err(|e| error("loading the node certificate", e))?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        let names = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| error("building the identity verifier", e))?;
        Ok(Identity {
            server,
            client,
            endpoint,
            names,
        })
    }

    /// Whether `chain` (verified against the CA during the TLS handshake) names `node`.
    pub(crate) fn names(&self, chain: &[CertificateDer<'static>], node: NodeId) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        let Ok(name) = ServerName::try_from(wire::certificate_name(node)) else {
            return false;
        };
        self.names
            .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated certificates load, name their own node and no other, and a node added later
    /// with the saved CA key is trusted like the first ones.
    #[test]
    fn generated_certificates_name_their_node() {
        let folder = std::env::temp_dir().join(format!("raft-quic-pki-{}", std::process::id()));
        generate_cluster_certificates(&folder, &[NodeId(1), NodeId(2)]).unwrap();
        generate_node_certificate(&folder, NodeId(3)).unwrap();
        let one = Identity::load(&TlsFiles::in_folder(&folder, NodeId(1))).unwrap();
        let chain = |node| {
            CertificateDer::pem_file_iter(TlsFiles::in_folder(&folder, node).certificate)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        };
        assert!(one.names(&chain(NodeId(2)), NodeId(2)));
        assert!(!one.names(&chain(NodeId(2)), NodeId(3)));
        assert!(one.names(&chain(NodeId(3)), NodeId(3)));
        assert!(!one.names(&[], NodeId(3)));
        std::fs::remove_dir_all(&folder).unwrap();
    }
}
