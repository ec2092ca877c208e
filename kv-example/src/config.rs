//! A node's settings: command-line flags over an optional TOML file over defaults, and the
//! checks that run before anything starts.
//!
//! Every flag has a TOML key of the same name with `_` for `-` (`--request-timeout-ms` is
//! `request_timeout_ms`). A flag given on the command line wins over the file.
//!
//! ```toml
//! id = 1
//! initial_cluster = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
//! client_addresses = "1=127.0.0.1:8001,2=127.0.0.1:8002,3=127.0.0.1:8003"
//! data_dir = "/var/lib/kv/1"
//! storage = "rocksdb"
//! transport = "tcp"
//! snapshot_interval_entries = 100000
//! ```
//!
//! A node that joins a running cluster starts with `join = true` (`--join`): its
//! `initial_cluster` then only says where the running members are (and where this node
//! listens), no voter is taken from it, and the node waits, without campaigning, until an
//! existing member adds it (`POST /v1/members`, `kvctl member add`), like etcd's
//! `--initial-cluster-state existing`.

use clap::{Args, ValueEnum};
use raft_core::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the log (and the state machine) live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// In memory: nothing survives the process; a restarted node catches up from the leader.
    Mem,
    /// RocksDB under the data folder: the log, the hard state and the applied map survive.
    Rocksdb,
}

/// How nodes reach each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// TCP, with mutual TLS when TLS files are given.
    Tcp,
    /// QUIC, always with mutual TLS (TLS files are required).
    Quic,
}

impl fmt::Display for StorageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageKind::Mem => "mem",
            StorageKind::Rocksdb => "rocksdb",
        })
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Quic => "quic",
        })
    }
}

/// A node's settings after the file and the flags are merged. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's ID (never 0).
    pub id: u64,
    /// Every member's peer (Raft) address: `1=127.0.0.1:7001,2=127.0.0.1:7002,...`.
    pub initial_cluster: String,
    /// Every member's client (HTTP) address, same format; optional, shown by `/v1/members`.
    pub client_addresses: String,
    /// Where this node serves the HTTP API. Default: its entry in `client_addresses`.
    pub client_address: Option<SocketAddr>,
    /// Where this node listens for peers. Default: its entry in `initial_cluster`.
    pub peer_address: Option<SocketAddr>,
    /// The data folder (`log/` and `state/` inside it with RocksDB storage).
    pub data_dir: PathBuf,
    /// The log and state machine storage.
    pub storage: StorageKind,
    /// The peer transport.
    pub transport: TransportKind,
    /// The cluster's ID: peers of another cluster are refused.
    pub cluster_id: u64,
    /// A folder made by `kvnode certs`: `ca.pem`, `node-<id>.pem`, `node-<id>.key.pem`.
    pub tls_dir: Option<PathBuf>,
    /// The cluster CA certificate (PEM); overrides the one in `tls_dir`.
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM); overrides the one in `tls_dir`.
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM); overrides the one in `tls_dir`.
    pub tls_key: Option<PathBuf>,
    /// Serve the client API over HTTPS with this certificate chain (PEM, leaf first), with
    /// `http_tls_private_key`; see [`crate::tls`].
    pub http_tls_certificate: Option<PathBuf>,
    /// The private key (PEM) of `http_tls_certificate`.
    pub http_tls_private_key: Option<PathBuf>,
    /// With HTTPS: require every client to present a certificate this CA (PEM) signed; a
    /// client without one fails the TLS handshake.
    pub http_tls_client_ca: Option<PathBuf>,
    /// With HTTPS: the CA (PEM) that signed the members' HTTPS certificates, trusted when
    /// forwarding to the leader. Default: the peer CA (`tls_ca`, or the one in `tls_dir`).
    pub http_tls_ca: Option<PathBuf>,
    /// Real time per Raft tick, in milliseconds.
    pub tick_ms: u64,
    /// Shortest election timeout, in ticks.
    pub election_timeout_ticks_min: u32,
    /// Longest election timeout, in ticks (exclusive).
    pub election_timeout_ticks_max: u32,
    /// Heartbeat interval, in ticks.
    pub heartbeat_interval_ticks: u32,
    /// How long a proposal waits for a leader to be known before failing with 503.
    pub leader_wait_ms: u64,
    /// How long a request waits for its command to apply before answering 503 (outcome
    /// unknown for writes).
    pub request_timeout_ms: u64,
    /// Largest key, in bytes.
    pub key_bytes_max: usize,
    /// Largest value, in bytes.
    pub value_bytes_max: usize,
    /// Most keys one scan returns.
    pub scan_limit_max: u32,
    /// Most bytes of keys and values one scan returns.
    pub scan_bytes_max: u32,
    /// HTTP connections a node holds at once. It keeps accepting past it: each new connection
    /// closes the oldest one that has no request in progress (idle, or still sending its
    /// headers); only when all are busy is the new one closed (see [`crate::http_server`]).
    pub http_connections_max: usize,
    /// How long a request's headers may take to arrive, from their first byte, before the
    /// connection is closed, in milliseconds.
    pub http_header_read_timeout_ms: u64,
    /// How long a request's body may take to arrive after its headers, in milliseconds; a
    /// slower one is answered 408 and the connection closed.
    pub http_body_read_timeout_ms: u64,
    /// How long a connection may stay idle (before its first request, between requests)
    /// before it is closed, in milliseconds.
    pub http_keep_alive_idle_timeout_ms: u64,
    /// Longest request target (path and query string), in bytes; a longer one is a 414.
    pub http_uri_bytes_max: usize,
    /// Most bytes of request headers (names, values, 4 per line); more is a 431.
    pub http_header_bytes_max: usize,
    /// Client proposals queued for the Raft driver before requests wait.
    pub proposal_queue_max: usize,
    /// Appends the leader keeps unacknowledged per follower. One (the default) makes the
    /// leader gather everything proposed during a follower's round trip into its next append:
    /// fewer, larger appends and syncs. On this project's 2-core benchmark machine that gave
    /// about 10% more writes per second at 64 clients than etcd's 256 (the `raft-core`
    /// default), at equal single-client latency. Raise it for links with a long round trip.
    pub inflight_messages_max: usize,
    /// Serve linearizable reads on the leader from a lease (no heartbeat round per read), and
    /// accept `consistency=lease`. Assumes clocks drift apart by less than a quarter of the
    /// election timeout.
    pub lease_reads: bool,
    /// Threads of the node's async runtime (0: one per CPU). Several nodes sharing a few
    /// cores (a local cluster) run better with fewer.
    pub worker_threads: usize,
    /// QUIC only: a connection silent this long is dropped and redialled, in milliseconds.
    /// A peer that restarted is reached again only once its old connection times out (the
    /// new process does not know it), so this bounds how long a restarted node stays cut off.
    pub quic_idle_timeout_ms: u64,
    /// Take a snapshot and compact the log once this many entries were applied since the
    /// last one (0: only when asked, `POST /v1/snapshot`).
    pub snapshot_interval_entries: u64,
    /// Entries kept in the log below a snapshot, so a follower that is only a little behind
    /// catches up from the log rather than a whole snapshot.
    pub snapshot_tail_entries: u64,
    /// Largest snapshot chunk sent to a follower in one message, in bytes (at most
    /// [`SNAPSHOT_CHUNK_BYTES_LIMIT`]).
    pub snapshot_chunk_bytes_max: usize,
    /// Request IDs (Raft client sessions) the cluster remembers for retries; the least
    /// recently used is forgotten first. Must be the same on every node.
    pub sessions_max: usize,
    /// Entries after which an unused request ID is forgotten. Must be the same on every node.
    pub session_idle_entries_max: u64,
    /// Largest answer kept for a retry, in bytes (a retry of a write with a longer answer gets
    /// 410 `answer_not_kept`). Must be the same on every node.
    pub session_result_bytes_max: usize,
    /// Join a running cluster: start with no voters and wait to be added (see the module
    /// docs). `initial_cluster` lists the running members' peer addresses.
    pub join: bool,
}

/// The largest `http_uri_bytes_max` and `http_header_bytes_max`: a request head is buffered
/// whole, once per connection.
pub const HTTP_HEAD_BYTES_LIMIT: usize = 1 << 20;

/// The largest `snapshot_chunk_bytes_max`: a chunk travels in one transport frame, which both
/// transports cap at 16 MiB by default; half of it leaves room for the message around it.
pub const SNAPSHOT_CHUNK_BYTES_LIMIT: usize = 8 << 20;

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 0,
            initial_cluster: String::new(),
            client_addresses: String::new(),
            client_address: None,
            peer_address: None,
            data_dir: PathBuf::from("kv-data"),
            storage: StorageKind::Rocksdb,
            transport: TransportKind::Tcp,
            cluster_id: 1,
            tls_dir: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            http_tls_certificate: None,
            http_tls_private_key: None,
            http_tls_client_ca: None,
            http_tls_ca: None,
            tick_ms: 10,
            election_timeout_ticks_min: 15,
            election_timeout_ticks_max: 30,
            heartbeat_interval_ticks: 5,
            leader_wait_ms: 2_000,
            request_timeout_ms: 5_000,
            key_bytes_max: 1024,
            value_bytes_max: 256 * 1024,
            scan_limit_max: 1000,
            scan_bytes_max: 4 << 20,
            http_connections_max: 1024,
            http_header_read_timeout_ms: 5_000,
            http_body_read_timeout_ms: 10_000,
            http_keep_alive_idle_timeout_ms: 60_000,
            http_uri_bytes_max: 8 << 10,
            http_header_bytes_max: 16 << 10,
            proposal_queue_max: 4096,
            inflight_messages_max: 1,
            lease_reads: false,
            worker_threads: 0,
            quic_idle_timeout_ms: 10_000,
            snapshot_interval_entries: 100_000,
            snapshot_tail_entries: 10_000,
            snapshot_chunk_bytes_max: 1 << 20,
            sessions_max: 1 << 14,
            session_idle_entries_max: 1_000_000,
            session_result_bytes_max: 1024,
            join: false,
        }
    }
}

/// The TLS files a node uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub certificate: PathBuf,
    /// This node's private key.
    pub private_key: PathBuf,
}

/// The client API's TLS files, when it serves HTTPS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpsPaths {
    /// The HTTPS server's files.
    pub server: crate::tls::ServerTlsFiles,
    /// What the node trusts and presents when it forwards to the leader: the members' CA and
    /// its own HTTPS certificate.
    pub forwarding: crate::tls::ClientTlsFiles,
}

/// A member of the cluster as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Its ID.
    pub id: u64,
    /// Its peer (Raft) address.
    pub peer_address: SocketAddr,
    /// Its client (HTTP) address, when configured.
    pub client_address: Option<SocketAddr>,
}

/// Parses `1=host:port,2=host:port`. Host names are resolved once, here.
pub fn parse_members(text: &str) -> Result<BTreeMap<NodeId, SocketAddr>, String> {
    let mut members = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, address) = item
            .split_once('=')
            .ok_or_else(|| format!("member {item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("member ID {id:?} is not a number"))?;
        if id == 0 {
            return Err("member ID 0 is reserved".into());
        }
        let address = address
            .trim()
            .to_socket_addrs()
            .map_err(|e| format!("member {id} address {address:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("member {id} address {address:?} resolves to nothing"))?;
        if members.insert(NodeId(id), address).is_some() {
            return Err(format!("member {id} is listed twice"));
        }
    }
    Ok(members)
}

impl NodeConfig {
    /// Reads a TOML file (unknown keys are refused).
    pub fn from_toml_file(path: &Path) -> Result<NodeConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The members, from `initial_cluster` and `client_addresses`.
    pub fn members(&self) -> Result<Vec<Member>, String> {
        let peers = parse_members(&self.initial_cluster)?;
        let clients = parse_members(&self.client_addresses)?;
        if let Some(extra) = clients.keys().find(|id| !peers.contains_key(id)) {
            return Err(format!(
                "client_addresses names {extra}, which is not in initial_cluster"
            ));
        }
        Ok(peers
            .iter()
            .map(|(id, peer)| Member {
                id: id.0,
                peer_address: *peer,
                client_address: clients.get(id).copied(),
            })
            .collect())
    }

    /// Where this node listens for peers.
    pub fn peer_listen_address(&self) -> Result<SocketAddr, String> {
        if let Some(address) = self.peer_address {
            return Ok(address);
        }
        parse_members(&self.initial_cluster)?
            .get(&NodeId(self.id))
            .copied()
            .ok_or_else(|| format!("node {} is not in initial_cluster", self.id))
    }

    /// Where this node serves HTTP.
    pub fn client_listen_address(&self) -> Result<SocketAddr, String> {
        if let Some(address) = self.client_address {
            return Ok(address);
        }
        parse_members(&self.client_addresses)?
            .get(&NodeId(self.id))
            .copied()
            .ok_or_else(|| {
                format!(
                    "no client address: give --client-address or list node {} in \
                     --client-addresses",
                    self.id
                )
            })
    }

    /// The TLS files, when any are configured. QUIC requires them.
    pub fn tls_paths(&self) -> Result<Option<TlsPaths>, String> {
        let from_dir = |name: String| self.tls_dir.as_ref().map(|dir| dir.join(name));
        let node_name = raft_core::wire::certificate_name(NodeId(self.id));
        let ca = self.tls_ca.clone().or_else(|| from_dir("ca.pem".into()));
        let certificate = self
            .tls_cert
            .clone()
            .or_else(|| from_dir(format!("{node_name}.pem")));
        let private_key = self
            .tls_key
            .clone()
            .or_else(|| from_dir(format!("{node_name}.key.pem")));
        match (ca, certificate, private_key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(certificate), Some(private_key)) => Ok(Some(TlsPaths {
                ca,
                certificate,
                private_key,
            })),
            _ => Err(
                "TLS needs all three of --tls-ca, --tls-cert and --tls-key (or --tls-dir)".into(),
            ),
        }
    }

    /// The client API's TLS files when it serves HTTPS (`None`: plain HTTP).
    pub fn https_paths(&self) -> Result<Option<HttpsPaths>, String> {
        let (certificate, private_key) =
            match (&self.http_tls_certificate, &self.http_tls_private_key) {
                (Some(certificate), Some(private_key)) => (certificate, private_key),
                (None, None) => {
                    return match (&self.http_tls_client_ca, &self.http_tls_ca) {
                        (None, None) => Ok(None),
                        _ => Err("--http-tls-client-ca and --http-tls-ca need HTTPS: give                                   --http-tls-certificate and --http-tls-private-key"
                            .into()),
                    }
                }
                _ => {
                    return Err(
                        "HTTPS needs both --http-tls-certificate and --http-tls-private-key".into(),
                    )
                }
            };
        let peer_ca = self.tls_paths()?.map(|paths| paths.ca);
        let Some(members_ca) = self.http_tls_ca.clone().or(peer_ca) else {
            return Err("HTTPS needs the CA of the members' HTTPS certificates, to forward to                         the leader: give --http-tls-ca (or the peer CA, --tls-ca or --tls-dir)"
                .into());
        };
        Ok(Some(HttpsPaths {
            server: crate::tls::ServerTlsFiles {
                certificate: certificate.clone(),
                private_key: private_key.clone(),
                client_ca: self.http_tls_client_ca.clone(),
            },
            forwarding: crate::tls::ClientTlsFiles {
                ca_certificate: members_ca,
                certificate: Some(certificate.clone()),
                private_key: Some(private_key.clone()),
            },
        }))
    }

    /// Real time per tick.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// How long a request waits for its command.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The HTTP server's limits.
    pub fn http_limits(&self) -> crate::http_server::HttpLimits {
        crate::http_server::HttpLimits {
            connections_max: self.http_connections_max,
            header_read_timeout: Duration::from_millis(self.http_header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(self.http_body_read_timeout_ms),
            keep_alive_idle_timeout: Duration::from_millis(self.http_keep_alive_idle_timeout_ms),
            uri_bytes_max: self.http_uri_bytes_max,
            header_bytes_max: self.http_header_bytes_max,
        }
    }

    /// The largest command a client request can produce: a compare-and-swap carries a key and
    /// two values.
    pub fn proposal_bytes_max(&self) -> usize {
        self.key_bytes_max + 2 * self.value_bytes_max + 64
    }

    /// Checks every setting and the relations between them; the error names the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("--id is required and must not be 0".into());
        }
        let members = self.members()?;
        if members.is_empty() {
            return Err("--initial-cluster is required (1=HOST:PORT,2=HOST:PORT,...)".into());
        }
        let listed = members.iter().any(|m| m.id == self.id);
        let joins_with_own_address = self.join && self.peer_address.is_some();
        if !(listed || joins_with_own_address) {
            return Err(format!(
                "node {} is not in --initial-cluster (a node that joins may give \
                 --peer-address instead)",
                self.id
            ));
        }
        if self.join && members.iter().all(|m| m.id == self.id) {
            return Err(
                "--join needs the running cluster's members in --initial-cluster, to reach \
                 them"
                    .into(),
            );
        }
        self.peer_listen_address()?;
        self.client_listen_address()?;
        let tls = self.tls_paths()?;
        if self.transport == TransportKind::Quic && tls.is_none() {
            return Err(
                "QUIC always uses TLS: give --tls-dir (see `kvnode certs`) or the three TLS files"
                    .into(),
            );
        }
        self.https_paths()?;
        let positive = [
            ("tick_ms", self.tick_ms),
            ("leader_wait_ms", self.leader_wait_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("key_bytes_max", self.key_bytes_max as u64),
            ("value_bytes_max", self.value_bytes_max as u64),
            ("scan_limit_max", u64::from(self.scan_limit_max)),
            ("scan_bytes_max", u64::from(self.scan_bytes_max)),
            ("http_connections_max", self.http_connections_max as u64),
            (
                "http_header_read_timeout_ms",
                self.http_header_read_timeout_ms,
            ),
            ("http_body_read_timeout_ms", self.http_body_read_timeout_ms),
            (
                "http_keep_alive_idle_timeout_ms",
                self.http_keep_alive_idle_timeout_ms,
            ),
            ("proposal_queue_max", self.proposal_queue_max as u64),
            ("inflight_messages_max", self.inflight_messages_max as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        // Room for a request line and the headers every client sends.
        let head_limits = [
            ("http_uri_bytes_max", self.http_uri_bytes_max, 256),
            ("http_header_bytes_max", self.http_header_bytes_max, 1024),
        ];
        for (name, value, least) in head_limits {
            if !(least..=HTTP_HEAD_BYTES_LIMIT).contains(&value) {
                return Err(format!(
                    "{name} ({value}) must be between {least} and {HTTP_HEAD_BYTES_LIMIT}"
                ));
            }
        }
        if self.quic_idle_timeout_ms < 100 {
            return Err(format!(
                "quic_idle_timeout_ms ({}) must be at least 100",
                self.quic_idle_timeout_ms
            ));
        }
        if self.snapshot_chunk_bytes_max == 0
            || self.snapshot_chunk_bytes_max > SNAPSHOT_CHUNK_BYTES_LIMIT
        {
            return Err(format!(
                "snapshot_chunk_bytes_max ({}) must be between 1 and {SNAPSHOT_CHUNK_BYTES_LIMIT} \
                 (one transport frame)",
                self.snapshot_chunk_bytes_max
            ));
        }
        let record_bytes = self.key_bytes_max.saturating_add(self.value_bytes_max);
        if record_bytes > crate::snapshot::RECORD_BYTES_MAX {
            return Err(format!(
                "key_bytes_max + value_bytes_max ({record_bytes}) must be at most {} (the \
                 largest snapshot record)",
                crate::snapshot::RECORD_BYTES_MAX
            ));
        }
        if self.leader_wait_ms < self.tick_ms {
            return Err(format!(
                "leader_wait_ms ({}) must be at least one tick ({} ms)",
                self.leader_wait_ms, self.tick_ms
            ));
        }
        self.raft_config().validate().map_err(|e| e.0)
    }

    /// The protocol's configuration for this node.
    pub fn raft_config(&self) -> raft_core::Config {
        let initial = match self.join {
            // A joining node learns the membership from the leader once added.
            true => BTreeMap::new(),
            false => parse_members(&self.initial_cluster).unwrap_or_default(),
        };
        let mut config = raft_core::Config::new(NodeId(self.id), initial.keys().copied().collect());
        // Recorded in the first membership, so nodes that join later learn where the first
        // voters listen, for peers (raft_core::Network::members_changed) and for clients.
        let clients = parse_members(&self.client_addresses).unwrap_or_default();
        config.initial_nodes = initial
            .iter()
            .map(|(id, address)| {
                let meta = crate::members::node_meta(*address, clients.get(id).copied());
                (*id, meta)
            })
            .collect();
        config.election_timeout_ticks_min = self.election_timeout_ticks_min;
        config.election_timeout_ticks_max = self.election_timeout_ticks_max;
        config.heartbeat_interval_ticks = self.heartbeat_interval_ticks;
        config.proposal_bytes_max = self.proposal_bytes_max();
        config.lease_reads = self.lease_reads;
        config.proposal_wait_ticks =
            u32::try_from((self.leader_wait_ms / self.tick_ms.max(1)).max(1)).unwrap_or(u32::MAX);
        config.snapshot_interval_entries = self.snapshot_interval_entries;
        config.snapshot_tail_entries = self.snapshot_tail_entries;
        config.snapshot_chunk_bytes_max = self.snapshot_chunk_bytes_max;
        config.inflight_messages_max = self.inflight_messages_max;
        config.sessions_max = self.sessions_max;
        config.session_idle_entries_max = self.session_idle_entries_max;
        config.session_result_bytes_max = self.session_result_bytes_max;
        config
    }
}

/// The node flags (`kvnode --help`). Each one overrides the TOML file's key of the same name.
#[derive(Args, Clone, Debug, Default)]
pub struct NodeFlags {
    /// A TOML file with any of the settings below (flags win over it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's ID.
    #[arg(long)]
    pub id: Option<u64>,
    /// Every member's peer address: 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003.
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Every member's client (HTTP) address, same format (optional).
    #[arg(long)]
    pub client_addresses: Option<String>,
    /// Where to serve the HTTP API (default: this node's entry in --client-addresses).
    #[arg(long)]
    pub client_address: Option<SocketAddr>,
    /// Where to listen for peers (default: this node's entry in --initial-cluster).
    #[arg(long)]
    pub peer_address: Option<SocketAddr>,
    /// The data folder.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Log and state storage (default rocksdb).
    #[arg(long, value_enum)]
    pub storage: Option<StorageKind>,
    /// Peer transport (default tcp).
    #[arg(long, value_enum)]
    pub transport: Option<TransportKind>,
    /// The cluster's ID (default 1).
    #[arg(long)]
    pub cluster_id: Option<u64>,
    /// A folder written by `kvnode certs`.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// The cluster CA certificate (PEM).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Serve the client API over HTTPS with this certificate chain (PEM; `kvnode certs
    /// --https` writes http-node-<id>.pem).
    #[arg(long)]
    pub http_tls_certificate: Option<PathBuf>,
    /// The HTTPS certificate's private key (PEM).
    #[arg(long)]
    pub http_tls_private_key: Option<PathBuf>,
    /// Require every HTTPS client to present a certificate signed by this CA (PEM).
    #[arg(long)]
    pub http_tls_client_ca: Option<PathBuf>,
    /// The CA of the members' HTTPS certificates, trusted when forwarding to the leader
    /// (default: the peer CA).
    #[arg(long)]
    pub http_tls_ca: Option<PathBuf>,
    /// Milliseconds per Raft tick (default 10).
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// Shortest election timeout in ticks (default 15).
    #[arg(long)]
    pub election_timeout_ticks_min: Option<u32>,
    /// Longest election timeout in ticks, exclusive (default 30).
    #[arg(long)]
    pub election_timeout_ticks_max: Option<u32>,
    /// Heartbeat interval in ticks (default 5).
    #[arg(long)]
    pub heartbeat_interval_ticks: Option<u32>,
    /// How long a request waits for a leader before a 503, in ms (default 2000).
    #[arg(long)]
    pub leader_wait_ms: Option<u64>,
    /// How long a request waits for its command to apply before a 503, in ms (default 5000).
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// Largest key in bytes (default 1024).
    #[arg(long)]
    pub key_bytes_max: Option<usize>,
    /// Largest value in bytes (default 262144).
    #[arg(long)]
    pub value_bytes_max: Option<usize>,
    /// Most keys per scan (default 1000).
    #[arg(long)]
    pub scan_limit_max: Option<u32>,
    /// Most bytes per scan (default 4 MiB).
    #[arg(long)]
    pub scan_bytes_max: Option<u32>,
    /// HTTP connections held at once; past it, a new one closes the oldest without a request
    /// in progress (default 1024).
    #[arg(long)]
    pub http_connections_max: Option<usize>,
    /// Close a connection whose request headers take longer than this from their first byte,
    /// in ms (default 5000).
    #[arg(long)]
    pub http_header_read_timeout_ms: Option<u64>,
    /// Answer 408 and close when a request body takes longer than this after its headers, in
    /// ms (default 10000).
    #[arg(long)]
    pub http_body_read_timeout_ms: Option<u64>,
    /// Close a connection idle (before or between requests) for this long, in ms (default
    /// 60000).
    #[arg(long)]
    pub http_keep_alive_idle_timeout_ms: Option<u64>,
    /// Longest request target in bytes; longer is a 414 (default 8192).
    #[arg(long)]
    pub http_uri_bytes_max: Option<usize>,
    /// Most bytes of request headers; more is a 431 (default 16384).
    #[arg(long)]
    pub http_header_bytes_max: Option<usize>,
    /// Proposals queued for the Raft driver (default 4096).
    #[arg(long)]
    pub proposal_queue_max: Option<usize>,
    /// Unacknowledged appends per follower (default 1; raise it for long round trips).
    #[arg(long)]
    pub inflight_messages_max: Option<usize>,
    /// Serve leader reads from a lease and accept consistency=lease (assumes bounded clock
    /// drift).
    #[arg(long)]
    pub lease_reads: bool,
    /// Async runtime threads (default 0: one per CPU).
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// QUIC: drop a silent connection after this many ms (default 10000).
    #[arg(long)]
    pub quic_idle_timeout_ms: Option<u64>,
    /// Snapshot and compact the log every N applied entries (default 100000; 0: only when
    /// asked, POST /v1/snapshot).
    #[arg(long)]
    pub snapshot_interval_entries: Option<u64>,
    /// Entries kept in the log below a snapshot for followers a little behind (default 10000).
    #[arg(long)]
    pub snapshot_tail_entries: Option<u64>,
    /// Largest snapshot chunk sent to a follower, in bytes (default 1 MiB, at most 8 MiB).
    #[arg(long)]
    pub snapshot_chunk_bytes_max: Option<usize>,
    /// Request IDs remembered for retries of writes (default 16384; the same on every node).
    #[arg(long)]
    pub sessions_max: Option<usize>,
    /// Entries after which an unused request ID is forgotten (default 1000000; the same on
    /// every node).
    #[arg(long)]
    pub session_idle_entries_max: Option<u64>,
    /// Largest write answer kept for a retry, in bytes (default 1024; the same on every node).
    #[arg(long)]
    pub session_result_bytes_max: Option<usize>,
    /// Join a running cluster: --initial-cluster lists its members' peer addresses (and this
    /// node's), none is taken as a voter, and the node waits until a member adds it
    /// (`kvctl member add`).
    #[arg(long)]
    pub join: bool,
}

macro_rules! override_fields {
    ($config:ident, $flags:ident, plain: [$($plain:ident),*], optional: [$($optional:ident),*]) => {
        $(if let Some(value) = $flags.$plain { $config.$plain = value; })*
        $(if $flags.$optional.is_some() { $config.$optional = $flags.$optional; })*
    };
}

impl NodeFlags {
    /// The TOML file (if any) with these flags on top.
    pub fn resolve(self) -> Result<NodeConfig, String> {
        let mut config = match &self.config {
            Some(path) => NodeConfig::from_toml_file(path)?,
            None => NodeConfig::default(),
        };
        let flags = self;
        override_fields!(config, flags,
            plain: [id, initial_cluster, client_addresses, data_dir, storage, transport,
                cluster_id, tick_ms, election_timeout_ticks_min, election_timeout_ticks_max,
                heartbeat_interval_ticks, leader_wait_ms, request_timeout_ms, key_bytes_max,
                value_bytes_max, scan_limit_max, scan_bytes_max, http_connections_max,
                http_header_read_timeout_ms, http_body_read_timeout_ms,
                http_keep_alive_idle_timeout_ms, http_uri_bytes_max, http_header_bytes_max,
                proposal_queue_max, inflight_messages_max, worker_threads, quic_idle_timeout_ms,
                snapshot_interval_entries, snapshot_tail_entries, snapshot_chunk_bytes_max,
                sessions_max, session_idle_entries_max, session_result_bytes_max],
            optional: [client_address, peer_address, tls_dir, tls_ca, tls_cert, tls_key,
                http_tls_certificate, http_tls_private_key, http_tls_client_ca, http_tls_ca]);
        if flags.lease_reads {
            config.lease_reads = true;
        }
        if flags.join {
            config.join = true;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> NodeConfig {
        NodeConfig {
            id: 2,
            initial_cluster: "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003".into(),
            client_addresses: "1=127.0.0.1:8001,2=127.0.0.1:8002,3=127.0.0.1:8003".into(),
            ..NodeConfig::default()
        }
    }

    /// A well-formed configuration passes and finds its own addresses.
    #[test]
    fn addresses_come_from_the_member_lists() {
        let config = three();
        config.validate().unwrap();
        assert_eq!(
            config.peer_listen_address().unwrap(),
            "127.0.0.1:7002".parse().unwrap()
        );
        assert_eq!(
            config.client_listen_address().unwrap(),
            "127.0.0.1:8002".parse().unwrap()
        );
        assert_eq!(config.members().unwrap().len(), 3);
        assert_eq!(config.raft_config().proposal_wait_ticks, 200);
        assert_eq!(config.raft_config().inflight_messages_max, 1);
        let mut tuned = three();
        tuned.sessions_max = 7;
        tuned.session_idle_entries_max = 70;
        tuned.session_result_bytes_max = 700;
        let raft = tuned.raft_config();
        assert_eq!(
            (
                raft.sessions_max,
                raft.session_idle_entries_max,
                raft.session_result_bytes_max
            ),
            (7, 70, 700),
            "the session limits reach the protocol"
        );
    }

    type Change = Box<dyn Fn(&mut NodeConfig)>;

    /// Each kind of mistake is refused with a message that names it.
    #[test]
    fn mistakes_are_named() {
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.id = 0), "--id"),
            (Box::new(|c| c.id = 9), "not in --initial-cluster"),
            (Box::new(|c| c.initial_cluster = "1=x".into()), "address"),
            (
                Box::new(|c| c.initial_cluster = "1=127.0.0.1:1,1=127.0.0.1:2".into()),
                "twice",
            ),
            (Box::new(|c| c.transport = TransportKind::Quic), "QUIC"),
            (Box::new(|c| c.tls_ca = Some("ca.pem".into())), "all three"),
            (
                Box::new(|c| c.http_tls_certificate = Some("http.pem".into())),
                "both --http-tls-certificate and --http-tls-private-key",
            ),
            (
                Box::new(|c| c.http_tls_client_ca = Some("ca.pem".into())),
                "--http-tls-client-ca and --http-tls-ca need HTTPS",
            ),
            (
                Box::new(|c| {
                    c.http_tls_certificate = Some("http.pem".into());
                    c.http_tls_private_key = Some("http.key.pem".into());
                }),
                "give --http-tls-ca",
            ),
            (Box::new(|c| c.value_bytes_max = 0), "value_bytes_max"),
            (
                Box::new(|c| c.http_header_read_timeout_ms = 0),
                "http_header_read_timeout_ms",
            ),
            (
                Box::new(|c| c.http_body_read_timeout_ms = 0),
                "http_body_read_timeout_ms",
            ),
            (
                Box::new(|c| c.http_keep_alive_idle_timeout_ms = 0),
                "http_keep_alive_idle_timeout_ms",
            ),
            (
                Box::new(|c| c.http_uri_bytes_max = 10),
                "http_uri_bytes_max",
            ),
            (
                Box::new(|c| c.http_header_bytes_max = 2 << 20),
                "http_header_bytes_max",
            ),
            (
                Box::new(|c| c.inflight_messages_max = 0),
                "inflight_messages_max",
            ),
            (
                Box::new(|c| c.election_timeout_ticks_min = 2),
                "election_timeout_ticks_min",
            ),
            (
                Box::new(|c| c.snapshot_chunk_bytes_max = 9 << 20),
                "snapshot_chunk_bytes_max",
            ),
            (
                Box::new(|c| c.value_bytes_max = 64 << 20),
                "largest snapshot record",
            ),
            (Box::new(|c| c.sessions_max = 0), "sessions_max"),
            (
                Box::new(|c| c.session_idle_entries_max = 0),
                "session_idle_entries_max",
            ),
            (
                Box::new(|c| {
                    c.join = true;
                    c.initial_cluster = "2=127.0.0.1:7002".into();
                    c.client_addresses = String::new();
                    c.client_address = Some("127.0.0.1:8002".parse().unwrap());
                }),
                "running cluster's members",
            ),
        ];
        for (change, expected) in cases {
            let mut config = three();
            change(&mut config);
            let error = config.validate().unwrap_err();
            assert!(
                error.contains(expected),
                "{error:?} should name {expected:?}"
            );
        }
    }

    /// A joining node takes no voters from the list, may give its own address apart, and
    /// carries the snapshot policy into the protocol's configuration.
    #[test]
    fn join_starts_without_voters() {
        let mut config = three();
        config.id = 4;
        config.join = true;
        config.peer_address = Some("127.0.0.1:7004".parse().unwrap());
        config.client_address = Some("127.0.0.1:8004".parse().unwrap());
        config.snapshot_interval_entries = 50;
        config.validate().unwrap();
        let raft = config.raft_config();
        assert!(raft.voters.is_empty());
        assert_eq!(raft.snapshot_interval_entries, 50);
        config.join = false;
        let error = config.validate().unwrap_err();
        assert!(error.contains("not in --initial-cluster"), "{error}");
    }

    /// HTTPS trusts the peer CA for forwarding unless `http_tls_ca` names another, and the
    /// node presents its own HTTPS certificate when it forwards.
    #[test]
    fn https_forwarding_trusts_the_members_ca() {
        let mut config = three();
        assert_eq!(config.https_paths().unwrap(), None);
        config.tls_dir = Some("tls".into());
        config.http_tls_certificate = Some("http.pem".into());
        config.http_tls_private_key = Some("http.key.pem".into());
        config.validate().unwrap();
        let https = config.https_paths().unwrap().unwrap();
        assert_eq!(https.forwarding.ca_certificate, PathBuf::from("tls/ca.pem"));
        assert_eq!(https.forwarding.certificate, Some("http.pem".into()));
        assert_eq!(https.server.client_ca, None);
        config.http_tls_ca = Some("http-ca.pem".into());
        config.http_tls_client_ca = Some("clients.pem".into());
        let https = config.https_paths().unwrap().unwrap();
        assert_eq!(
            https.forwarding.ca_certificate,
            PathBuf::from("http-ca.pem")
        );
        assert_eq!(https.server.client_ca, Some("clients.pem".into()));
    }

    /// The TOML file is read with the same names, unknown keys are refused, and flags win.
    #[test]
    fn flags_override_the_file() {
        let folder = std::env::temp_dir().join(format!("kv-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let file = folder.join("node.toml");
        std::fs::write(
            &file,
            "id = 1\ninitial_cluster = \"1=127.0.0.1:7001\"\n\
             client_address = \"127.0.0.1:8001\"\nstorage = \"mem\"\nrequest_timeout_ms = 700\n",
        )
        .unwrap();
        let flags = NodeFlags {
            config: Some(file.clone()),
            request_timeout_ms: Some(900),
            ..NodeFlags::default()
        };
        let config = flags.resolve().unwrap();
        assert_eq!(config.storage, StorageKind::Mem);
        assert_eq!(config.request_timeout_ms, 900);
        std::fs::write(&file, "id = 1\nnot_a_setting = 3\n").unwrap();
        let error = NodeConfig::from_toml_file(&file).unwrap_err();
        assert!(error.contains("not_a_setting"), "{error}");
        std::fs::remove_dir_all(&folder).unwrap();
    }
}
