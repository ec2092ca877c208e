//! TLS on the client API (HTTPS): the node's server configuration, the client side shared by
//! `kvctl` ([`crate::client::KvClient`]) and a follower forwarding to its leader, and the
//! certificates `kvnode certs` issues for local use.
//!
//! # What a node checks
//!
//! A node started with `--http-tls-certificate` and `--http-tls-private-key` serves only
//! HTTPS (TLS 1.3, ALPN `http/1.1`) on its client address; a plain-HTTP request there fails the
//! handshake. With `--http-tls-client-ca` as well, every client **must** present a certificate
//! that CA signed (for client authentication): a client without one, or with one from another
//! CA, fails the handshake before any request is read, so nothing it sent is applied. There is
//! no optional mode: a request either comes from an authenticated client or is never read.
//!
//! The TLS handshake runs inside the HTTP server's header-read phase
//! ([`crate::http_server`]): from the accept, it must finish within
//! `http_header_read_timeout_ms`, and until it has, the connection is one the connection limit
//! may close to make room.
//!
//! # Forwarding
//!
//! Every member of a cluster uses the same scheme. A follower forwards admin requests to its
//! leader at `https://<leader's client address>`, trusting `--http-tls-ca` (default: the peer
//! CA, `--tls-ca` or the one in `--tls-dir`), and, when the leader requires client
//! certificates, presenting its own HTTPS certificate: that certificate must then be signed by
//! the client CA and allow client authentication (those of `kvnode certs` do). The node checks
//! this when it starts. A leader's certificate must name the IP address (or host) other
//! members reach it at, since that is what the forwarding client checks.
//!
//! # Files of `kvnode certs --https`
//!
//! | file | what |
//! | --- | --- |
//! | `ca.pem`, `ca.key.pem` | the cluster CA (also for the peers), signing the files below unless `--separate-http-ca` |
//! | `http-ca.pem`, `http-ca.key.pem` | with `--separate-http-ca`: a CA for the client API only |
//! | `http-node-<id>.pem`, `.key.pem` | node `<id>`'s HTTPS certificate (server and client use) for `--http-hosts` |
//! | `client-<name>.pem`, `.key.pem` | a client certificate for `kvctl --cert/--key` (client use only) |

use raft_core::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The only application protocol the HTTPS server speaks.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The host names and addresses `kvnode certs` puts in every node's HTTPS certificate unless
/// told otherwise: enough for a local cluster.
pub const DEFAULT_HTTP_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The longest client name `kvnode certs --clients` accepts (it becomes a file name).
pub const CLIENT_NAME_BYTES_MAX: usize = 64;

/// Why TLS files could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("reading {what} from {path}: {reason}")]
    Read {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A file holds nothing of what it should.
    #[error("{path} holds no {what}")]
    Empty {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: String,
    },
    /// The files are readable but do not fit together, or a setting is wrong.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was being done.
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A file could not be written.
    #[error("writing {path}: {reason}")]
    Write {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

fn invalid(what: &'static str, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        what,
        reason: reason.to_string(),
    }
}

fn read_error(what: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Read {
        what,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The files of a node's HTTPS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The node's certificate chain (PEM), leaf first.
    pub certificate: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// When set, clients must present a certificate this CA (PEM) signed.
    pub client_ca: Option<PathBuf>,
}

/// What a client trusts and presents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA (PEM) that signed the servers' certificates.
    pub ca_certificate: PathBuf,
    /// The client's certificate chain (PEM), for servers that require one; with
    /// `private_key`.
    pub certificate: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub private_key: Option<PathBuf>,
}

/// rustls' ring provider, the one every crate of this workspace uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let what = "CA certificates";
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path).map_err(|e| read_error(what, path, e))? {
        let certificate = certificate.map_err(|e| read_error(what, path, e))?;
        roots
            .add(certificate)
            .map_err(|e| read_error(what, path, e))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(Arc::new(roots))
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let what = "a certificate chain";
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(what, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_error(what, path, e))?;
    if chain.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| read_error("a private key", path, e))
}

/// The HTTPS server's rustls configuration: TLS 1.3, ALPN `http/1.1`, and client certificates
/// required when `files.client_ca` is set.
///
/// The node presents its own certificate to its leader when forwarding, so with a client CA
/// the certificate must pass as a client certificate too: refused here otherwise, before the
/// node starts.
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let chain = load_chain(&files.certificate)?;
    let key = load_key(&files.private_key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| invalid("choosing TLS versions", e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(client_ca) => {
            let roots = load_roots(client_ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| invalid("building the client certificate verifier", e))?;
            let (leaf, intermediates) = chain.split_first().expect("load_chain refuses none");
            verifier
                .verify_client_cert(leaf, intermediates, UnixTime::now())
                .map_err(|e| {
                    invalid(
                        "the node's HTTPS certificate is not a valid client certificate for \
                         --http-tls-client-ca, which it must be to forward requests to the \
                         leader",
                        e,
                    )
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid("loading the node's HTTPS certificate and key", e))?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Makes `builder` trust only `files.ca_certificate` and present the client certificate when
/// one is given (both its certificate and key, or neither).
pub fn configure_client(
    builder: reqwest::ClientBuilder,
    files: &ClientTlsFiles,
) -> Result<reqwest::ClientBuilder, TlsError> {
    let ca = &files.ca_certificate;
    let what = "CA certificates";
    let pem = std::fs::read(ca).map_err(|e| read_error(what, ca, e))?;
    // Parsed here as well, for an error that names the file.
    load_roots(ca)?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| read_error(what, ca, e))?;
    let mut builder = builder.use_rustls_tls().tls_built_in_root_certs(false);
    for root in roots {
        builder = builder.add_root_certificate(root);
    }
    match (&files.certificate, &files.private_key) {
        (None, None) => Ok(builder),
        (Some(certificate), Some(private_key)) => {
            load_chain(certificate)?;
            load_key(private_key)?;
            let mut pem = std::fs::read(certificate)
                .map_err(|e| read_error("a certificate chain", certificate, e))?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(private_key)
                    .map_err(|e| read_error("a private key", private_key, e))?,
            );
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| invalid("loading the client certificate and key", e))?;
            Ok(builder.identity(identity))
        }
        _ => Err(invalid(
            "a client certificate",
            "needs both the certificate and its private key",
        )),
    }
}

/// A node's HTTPS files as `kvnode certs` names them in `folder`.
pub fn node_files(folder: &Path, node: NodeId) -> (PathBuf, PathBuf) {
    let stem = format!("http-node-{}", node.0);
    (
        folder.join(format!("{stem}.pem")),
        folder.join(format!("{stem}.key.pem")),
    )
}

/// A client's files as `kvnode certs` names them in `folder`.
pub fn client_files(folder: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        folder.join(format!("client-{name}.pem")),
        folder.join(format!("client-{name}.key.pem")),
    )
}

/// The CA `kvnode certs` signs HTTPS certificates with: the cluster CA (`ca.pem`), or with
/// `separate` the client API's own (`http-ca.pem`). Returns the certificate and key files.
pub fn ca_files(folder: &Path, separate: bool) -> (PathBuf, PathBuf) {
    let stem = if separate { "http-ca" } else { "ca" };
    (
        folder.join(format!("{stem}.pem")),
        folder.join(format!("{stem}.key.pem")),
    )
}

/// Writes a new CA for the client API only: `http-ca.pem` and `http-ca.key.pem` (secret).
pub fn generate_http_ca(folder: &Path) -> Result<(), TlsError> {
    create_folder(folder)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "kv client API CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().map_err(|e| invalid("generating the CA key", e))?;
    let certificate = params
        .self_signed(&key)
        .map_err(|e| invalid("signing the CA certificate", e))?;
    let (certificate_path, key_path) = ca_files(folder, true);
    write_file(&certificate_path, &certificate.pem(), false)?;
    write_file(&key_path, &key.serialize_pem(), true)
}

/// A CA read back from its files, ready to sign.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// Reads a CA's certificate and private key (PEM).
    pub fn load(certificate: &Path, private_key: &Path) -> Result<CertificateAuthority, TlsError> {
        let certificate_pem = std::fs::read_to_string(certificate)
            .map_err(|e| read_error("a CA certificate", certificate, e))?;
        let key_pem = std::fs::read_to_string(private_key)
            .map_err(|e| read_error("the CA's private key", private_key, e))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| read_error("the CA's private key", private_key, e))?;
        let issuer = Issuer::from_ca_cert_pem(&certificate_pem, key)
            .map_err(|e| read_error("a CA certificate", certificate, e))?;
        Ok(CertificateAuthority { issuer })
    }

    /// Issues node `node`'s HTTPS certificate for `hosts` (DNS names or IP addresses; its
    /// name `node-<id>` is added), for server and client use, into [`node_files`].
    pub fn issue_node(
        &self,
        folder: &Path,
        node: NodeId,
        hosts: &[String],
    ) -> Result<(), TlsError> {
        if hosts.is_empty() {
            return Err(invalid(
                "an HTTPS certificate",
                format!("node {} has no host name or address", node.0),
            ));
        }
        let mut names = hosts.to_vec();
        names.push(raft_core::wire::certificate_name(node));
        let mut params = CertificateParams::new(names)
            .map_err(|e| invalid("naming the node's HTTPS certificate", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, raft_core::wire::certificate_name(node));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let (certificate, private_key) = node_files(folder, node);
        self.issue(params, &certificate, &private_key)
    }

    /// Issues a client certificate named `name` (letters, digits, `-` and `_`), for client use
    /// only, into [`client_files`].
    pub fn issue_client(&self, folder: &Path, name: &str) -> Result<(), TlsError> {
        check_client_name(name)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (certificate, private_key) = client_files(folder, name);
        self.issue(params, &certificate, &private_key)
    }

    fn issue(
        &self,
        params: CertificateParams,
        certificate_path: &Path,
        key_path: &Path,
    ) -> Result<(), TlsError> {
        let key = KeyPair::generate().map_err(|e| invalid("generating a key", e))?;
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| invalid("signing a certificate", e))?;
        write_file(certificate_path, &certificate.pem(), false)?;
        write_file(key_path, &key.serialize_pem(), true)
    }
}

/// Checks a client name for [`CertificateAuthority::issue_client`]: 1 to
/// [`CLIENT_NAME_BYTES_MAX`] letters, digits, `-` or `_` (it becomes part of a file name).
pub fn check_client_name(name: &str) -> Result<(), TlsError> {
    let valid = !name.is_empty()
        && name.len() <= CLIENT_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if valid {
        return Ok(());
    }
    Err(invalid(
        "a client name",
        format!("{name:?} must be 1 to {CLIENT_NAME_BYTES_MAX} letters, digits, '-' or '_'"),
    ))
}

/// Parses `kvnode certs --http-hosts`: `HOST` entries go into every node's certificate,
/// `ID=HOST` entries into node `ID`'s only. Returns each node's hosts, in `nodes` order.
pub fn hosts_per_node(entries: &[String], nodes: &[NodeId]) -> Result<Vec<Vec<String>>, TlsError> {
    let mut per_node: Vec<Vec<String>> = vec![Vec::new(); nodes.len()];
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        // An IPv6 address holds ':' but never '='.
        match entry.split_once('=') {
            None => per_node.iter_mut().for_each(|h| h.push(entry.to_string())),
            Some((id, host)) => {
                let id: u64 = id.trim().parse().map_err(|_| {
                    invalid("--http-hosts", format!("{entry:?} is not HOST or ID=HOST"))
                })?;
                let index = nodes.iter().position(|n| n.0 == id).ok_or_else(|| {
                    invalid(
                        "--http-hosts",
                        format!("{entry:?} names node {id}, which is not in --nodes"),
                    )
                })?;
                per_node[index].push(host.trim().to_string());
            }
        }
    }
    Ok(per_node)
}

fn create_folder(folder: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(folder).map_err(|e| TlsError::Write {
        path: folder.display().to_string(),
        reason: e.to_string(),
    })
}

/// Writes `contents` to `path`; a `secret` file is readable by its owner only.
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    let failed = |e: std::io::Error| TlsError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(failed)?;
    file.write_all(contents.as_bytes()).map_err(failed)
}

/// Issues what `kvnode certs --https` writes: with `separate_ca` a new client API CA (with
/// `reuse_ca`, the one in `folder`, which must exist), each node's HTTPS certificate for its
/// hosts, and each client's certificate, all signed by the CA [`ca_files`] names.
pub fn issue_https_certificates(
    folder: &Path,
    separate_ca: bool,
    reuse_ca: bool,
    nodes: &[NodeId],
    hosts: &[Vec<String>],
    clients: &[String],
) -> Result<(), TlsError> {
    assert_eq!(nodes.len(), hosts.len(), "one host list per node");
    let (ca_certificate, ca_key) = ca_files(folder, separate_ca);
    match (separate_ca, reuse_ca) {
        (true, false) => generate_http_ca(folder)?,
        // A new CA would not be trusted by the members already running.
        (true, true) if !ca_certificate.exists() => {
            return Err(invalid(
                "adding HTTPS certificates",
                format!("{} does not exist", ca_certificate.display()),
            ))
        }
        _ => {}
    }
    let ca = CertificateAuthority::load(&ca_certificate, &ca_key)?;
    for (node, hosts) in nodes.iter().zip(hosts) {
        ca.issue_node(folder, *node, hosts)?;
    }
    for client in clients {
        ca.issue_client(folder, client)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts for every node and for one node land where they belong; an unknown node or a
    /// malformed ID is refused.
    #[test]
    fn hosts_go_to_their_nodes() {
        let nodes = [NodeId(1), NodeId(2)];
        let entries: Vec<String> = ["127.0.0.1", "2=h2.example", "::1"]
            .map(String::from)
            .to_vec();
        let hosts = hosts_per_node(&entries, &nodes).unwrap();
        assert_eq!(hosts[0], ["127.0.0.1", "::1"]);
        assert_eq!(hosts[1], ["127.0.0.1", "h2.example", "::1"]);
        let error = hosts_per_node(&["3=h3".into()], &nodes).unwrap_err();
        assert!(error.to_string().contains("not in --nodes"), "{error}");
        let error = hosts_per_node(&["x=h3".into()], &nodes).unwrap_err();
        assert!(error.to_string().contains("ID=HOST"), "{error}");
    }

    /// Issued certificates load into a server that requires client certificates (the node's
    /// own passes as a client certificate), a certificate from another CA or a file without
    /// one is refused with a message that says so, and client names are checked.
    #[test]
    fn issued_certificates_load() {
        let folder = crate::local_cluster::fresh_temp_dir("kv-tls-unit").unwrap();
        raft_transport_quic::generate_cluster_certificates(&folder, &[NodeId(1)]).unwrap();
        issue_https_certificates(
            &folder,
            true,
            false,
            &[NodeId(1)],
            &[vec!["127.0.0.1".into()]],
            &["admin".into()],
        )
        .unwrap();
        let (certificate, private_key) = node_files(&folder, NodeId(1));
        let (http_ca, _) = ca_files(&folder, true);
        let files = ServerTlsFiles {
            certificate,
            private_key,
            client_ca: Some(http_ca),
        };
        server_config(&files).unwrap();
        // The peer CA did not sign the HTTPS certificate: refused as a client CA.
        let (peer_ca, _) = ca_files(&folder, false);
        let error = server_config(&ServerTlsFiles {
            client_ca: Some(peer_ca),
            ..files.clone()
        })
        .unwrap_err();
        assert!(
            error.to_string().contains("--http-tls-client-ca"),
            "{error}"
        );
        let (_, client_key) = client_files(&folder, "admin");
        let error = server_config(&ServerTlsFiles {
            certificate: client_key,
            ..files
        })
        .unwrap_err();
        assert!(matches!(error, TlsError::Empty { .. }), "{error}");
        let ca = CertificateAuthority::load(&ca_files(&folder, true).0, &ca_files(&folder, true).1)
            .unwrap();
        let long = "x".repeat(CLIENT_NAME_BYTES_MAX + 1);
        for bad in ["", "a/b", "../x", long.as_str()] {
            assert!(ca.issue_client(&folder, bad).is_err(), "{bad:?}");
        }
        std::fs::remove_dir_all(&folder).unwrap();
    }
}
