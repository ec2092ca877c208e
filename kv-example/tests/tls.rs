//! HTTPS on the client API, against local clusters of `kvnode` processes whose certificates
//! come from the cluster CA (see `kv_example::tls`): a client that trusts the CA is served; a
//! plain-HTTP client, or one that trusts another CA, is not; with client certificates
//! required, a client without one (or with one from another CA) fails the handshake and
//! nothing it sent is applied; a follower forwards to its leader over HTTPS, presenting its
//! own certificate; and the TLS handshake is bounded by the header-read timeout and counts
//! toward the connection limit like a half-sent request.

use bytes::Bytes;
use kv_example::client::KvClient;
use kv_example::config::{StorageKind, TransportKind};
use kv_example::local_cluster::{fresh_temp_dir, ClusterHttps, ClusterSpec, LocalCluster};
use kv_example::tls::ClientTlsFiles;
use raft_core::NodeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(5);

fn cluster(nodes: u64, https: ClusterHttps, extra_args: &[&str]) -> LocalCluster {
    let spec = ClusterSpec {
        kvnode: env!("CARGO_BIN_EXE_kvnode").into(),
        nodes,
        storage: StorageKind::Mem,
        transport: TransportKind::Tcp,
        data_dir: fresh_temp_dir("kv-tls-test").unwrap(),
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        log_filter: "info".into(),
    };
    LocalCluster::start_with_https(spec, https).expect("the nodes start")
}

/// Stops the cluster and removes its folder (a failed test keeps it, logs included).
fn finish(cluster: LocalCluster) {
    let folder = cluster.spec().data_dir.clone();
    drop(cluster);
    std::fs::remove_dir_all(folder).expect("the test folder is removed");
}

fn address(cluster: &LocalCluster, id: u64) -> SocketAddr {
    cluster.members()[(id - 1) as usize].client_address
}

/// The cluster's CA, without a client certificate.
fn ca_only(cluster: &LocalCluster) -> ClientTlsFiles {
    ClientTlsFiles {
        certificate: None,
        private_key: None,
        ..cluster.client_tls().expect("an HTTPS cluster")
    }
}

fn client(endpoints: Vec<String>, tls: &ClientTlsFiles) -> KvClient {
    KvClient::with_tls(endpoints, TIMEOUT, Some(tls)).expect("the client is built")
}

/// Another CA in `folder`, with a node certificate for 127.0.0.1 and a client certificate
/// `mallory`: files that look right but that the cluster never signed.
fn stranger(folder: &Path) -> ClientTlsFiles {
    raft_transport_quic::generate_cluster_certificates(folder, &[NodeId(1)]).unwrap();
    kv_example::tls::issue_https_certificates(
        folder,
        false,
        false,
        &[NodeId(1)],
        &[vec!["127.0.0.1".into()]],
        &["mallory".into()],
    )
    .unwrap();
    let (certificate, private_key) = kv_example::tls::client_files(folder, "mallory");
    ClientTlsFiles {
        ca_certificate: kv_example::tls::ca_files(folder, false).0,
        certificate: Some(certificate),
        private_key: Some(private_key),
    }
}

/// The value of one line of the node's `/metrics`, read over HTTPS.
async fn metric(cluster: &LocalCluster, line: &str) -> u64 {
    let tls = cluster.client_tls().unwrap();
    let http = kv_example::tls::configure_client(reqwest::Client::builder(), &tls)
        .unwrap()
        .build()
        .unwrap();
    let text = http
        .get(format!("{}/metrics", cluster.endpoint(1)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|row| row.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("/metrics lacks {line}:\n{text}"))
}

fn closed_for(reason: &str) -> String {
    format!("kv_http_connections_closed_total{{reason=\"{reason}\"}}")
}

/// A node serving HTTPS answers a client that trusts its CA; a plain-HTTP request on the same
/// port fails its handshake and changes nothing; a client that trusts another CA refuses the
/// node; and a client given mismatched schemes is refused before it sends anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_only_clients_that_trust_the_ca() {
    let cluster = cluster(1, ClusterHttps::On, &[]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let trusted = client(cluster.endpoints(), &ca_only(&cluster));
    trusted.put("greeting", Bytes::from("hello")).await.unwrap();
    assert_eq!(
        trusted.get("greeting", "linearizable").await.unwrap(),
        Some(Bytes::from("hello"))
    );

    let plain = reqwest::Client::new()
        .put(format!("http://{}/v1/kv/plain", address(&cluster, 1)))
        .body("sent in the clear")
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    assert_eq!(trusted.get("plain", "linearizable").await.unwrap(), None);
    assert_eq!(metric(&cluster, &closed_for("tls_handshake")).await, 1);

    let other = fresh_temp_dir("kv-tls-stranger").unwrap();
    let doubtful = ClientTlsFiles {
        certificate: None,
        private_key: None,
        ..stranger(&other)
    };
    let refused = client(cluster.endpoints(), &doubtful)
        .put("doubtful", Bytes::from("x"))
        .await;
    assert!(refused.is_err(), "an untrusted node was used: {refused:?}");
    assert_eq!(trusted.get("doubtful", "linearizable").await.unwrap(), None);

    let mixed = KvClient::with_tls(
        vec![format!("http://{}", address(&cluster, 1))],
        TIMEOUT,
        Some(&ca_only(&cluster)),
    );
    assert!(mixed.is_err(), "an http:// endpoint with a CA to trust");
    let no_ca = KvClient::new(cluster.endpoints(), TIMEOUT);
    assert!(no_ca.is_err(), "an https:// endpoint without a CA to trust");

    std::fs::remove_dir_all(other).unwrap();
    finish(cluster);
}

/// With client certificates required, a client without one, or with one another CA signed,
/// fails the TLS handshake and its write is never applied; a client with the cluster's
/// certificate is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_configured() {
    let cluster = cluster(1, ClusterHttps::ClientCertificates, &[]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let admin = client(cluster.endpoints(), &cluster.client_tls().unwrap());

    let anonymous = client(cluster.endpoints(), &ca_only(&cluster));
    let refused = anonymous.put("anonymous", Bytes::from("x")).await;
    assert!(
        refused.is_err(),
        "a client without a certificate: {refused:?}"
    );

    let other = fresh_temp_dir("kv-tls-stranger").unwrap();
    let mallory = ClientTlsFiles {
        ca_certificate: ca_only(&cluster).ca_certificate,
        ..stranger(&other)
    };
    let refused = client(cluster.endpoints(), &mallory)
        .put("mallory", Bytes::from("x"))
        .await;
    assert!(
        refused.is_err(),
        "a certificate from another CA: {refused:?}"
    );

    assert_eq!(admin.get("anonymous", "linearizable").await.unwrap(), None);
    assert_eq!(admin.get("mallory", "linearizable").await.unwrap(), None);
    assert_eq!(metric(&cluster, &closed_for("tls_handshake")).await, 2);
    admin.put("admin", Bytes::from("yes")).await.unwrap();
    assert_eq!(
        admin.get("admin", "linearizable").await.unwrap(),
        Some(Bytes::from("yes"))
    );
    std::fs::remove_dir_all(other).unwrap();
    finish(cluster);
}

/// In a 3-node cluster requiring client certificates, a write sent to a follower is applied
/// (through the protocol), and an admin request sent to a follower is forwarded to the leader
/// over HTTPS, the follower presenting its own certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_to_its_leader_over_https() {
    let cluster = cluster(3, ClusterHttps::ClientCertificates, &[]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let tls = cluster.client_tls().unwrap();
    let all = client(cluster.endpoints(), &tls);
    let started = Instant::now();
    let leader = loop {
        assert!(started.elapsed() < Duration::from_secs(20), "no leader");
        let statuses = all.status_all().await;
        let leader = statuses.iter().find_map(|(_, status)| {
            let status = status.as_ref().ok()?;
            (status["role"] == "leader").then(|| status["id"].as_u64())?
        });
        if let Some(leader) = leader {
            break leader;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let through_follower = client(vec![cluster.endpoint(follower)], &tls);
    through_follower
        .put("forwarded", Bytes::from("by a follower"))
        .await
        .unwrap();
    let on_leader = client(vec![cluster.endpoint(leader)], &tls);
    assert_eq!(
        on_leader.get("forwarded", "linearizable").await.unwrap(),
        Some(Bytes::from("by a follower"))
    );

    // Membership changes are carried out by the leader only: the follower forwards this one.
    let members = through_follower
        .add_member(4, Some("127.0.0.1:9"), Some("127.0.0.1:9"))
        .await
        .unwrap_or_else(|error| {
            panic!(
                "forwarding failed: {error}\n{}",
                cluster.log_tail(follower, 20)
            )
        });
    let learners: Vec<u64> = members["learners"]
        .as_array()
        .unwrap_or_else(|| panic!("no learners in {members}"))
        .iter()
        .filter_map(|learner| learner.as_u64().or_else(|| learner["id"].as_u64()))
        .collect();
    assert_eq!(learners, [4], "{members}");
    finish(cluster);
}

/// Reads until the node closes the connection, at most `limit` after `started`; returns how
/// long that took. A reset counts as closed.
async fn wait_closed(stream: &mut TcpStream, started: Instant, limit: Duration) -> Duration {
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            stream.read(&mut buffer),
        )
        .await;
        match read {
            Err(_) => panic!("the connection was still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// A TLS connector that trusts the cluster CA, for a handshake done by hand.
fn connector(cluster: &LocalCluster) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = ca_only(cluster).ca_certificate;
    for certificate in CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The handshake runs on the header-read clock from the accept: a client that opens TCP and
/// never sends its ClientHello is closed after `http_header_read_timeout_ms`, not the much
/// longer idle timeout. Once the handshake is done, the connection is idle: it may wait past
/// the header timeout before its request. And silent handshakes count toward the connection
/// limit as half-sent requests do: past it, each new client pushes the oldest one out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_client_is_closed_after_the_header_read_timeout() {
    let cluster = cluster(
        1,
        ClusterHttps::On,
        &[
            "--http-header-read-timeout-ms",
            "400",
            "--http-keep-alive-idle-timeout-ms",
            "20000",
            "--http-connections-max",
            "3",
        ],
    );
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let node = address(&cluster, 1);

    let started = Instant::now();
    let mut silent = TcpStream::connect(node).await.unwrap();
    let closed_after = wait_closed(&mut silent, started, Duration::from_secs(4)).await;
    assert!(
        closed_after >= Duration::from_millis(350) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}, not the header timeout of 400 ms"
    );
    assert_eq!(metric(&cluster, &closed_for("header_timeout")).await, 1);
    assert_eq!(metric(&cluster, &closed_for("tls_handshake")).await, 0);

    let tcp = TcpStream::connect(node).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector(&cluster).connect(name, tcp).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: node\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut answer))
        .await
        .expect("an answer within 5 s")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");

    // Three silent connections fill the limit; the metric readers and the client below each
    // push the oldest one out instead of being turned away.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(node).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tls = cluster.client_tls().unwrap();
    let served = client(cluster.endpoints(), &tls)
        .get("absent", "stale")
        .await;
    assert_eq!(served.unwrap(), None);
    assert!(metric(&cluster, &closed_for("limit")).await >= 1);
    finish(cluster);
}

/// `kvnode certs --https` writes each node's HTTPS certificate and the client certificates,
/// signed by a separate client API CA when asked, with keys readable by their owner only; a
/// node added later is signed by the same CA; a bad client name is refused before any file is
/// written.
#[test]
fn kvnode_certs_issues_https_and_client_certificates() {
    use std::os::unix::fs::PermissionsExt;
    let folder = fresh_temp_dir("kv-tls-certs").unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kvnode"))
            .arg("certs")
            .arg("--dir")
            .arg(&folder)
            .args(args)
            .output()
            .unwrap()
    };
    let refused = run(&["--nodes", "1,2", "--https", "--clients", "admin,../x"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("client name"), "{message}");
    assert_eq!(
        std::fs::read_dir(&folder).unwrap().count(),
        0,
        "nothing written"
    );

    let made = run(&[
        "--nodes",
        "1,2",
        "--https",
        "--http-hosts",
        "127.0.0.1,2=node2.example",
        "--clients",
        "admin",
        "--separate-http-ca",
    ]);
    let message = String::from_utf8_lossy(&made.stderr);
    assert!(made.status.success(), "{message}");
    let added = run(&["--nodes", "3", "--add", "--https", "--separate-http-ca"]);
    let message = String::from_utf8_lossy(&added.stderr);
    assert!(added.status.success(), "{message}");
    let (http_ca, _) = kv_example::tls::ca_files(&folder, true);
    for node in 1..=3 {
        let (certificate, private_key) = kv_example::tls::node_files(&folder, NodeId(node));
        let mode = std::fs::metadata(&private_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "node {node}'s key is secret");
        let files = kv_example::tls::ServerTlsFiles {
            certificate,
            private_key,
            client_ca: Some(http_ca.clone()),
        };
        kv_example::tls::server_config(&files)
            .unwrap_or_else(|error| panic!("node {node}: {error}"));
    }
    let (certificate, private_key) = kv_example::tls::client_files(&folder, "admin");
    assert!(certificate.exists() && private_key.exists());
    std::fs::remove_dir_all(&folder).unwrap();
}
