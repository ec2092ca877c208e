//! Composing a node: storage and transport picked at run time as trait objects, the Raft node,
//! the state machine, the HTTP server (with its connection limit and timeouts, see
//! [`crate::http_server`]; HTTPS when configured, see [`crate::tls`]), and an orderly
//! shutdown. The TLS files are loaded before anything starts, so a bad one stops the node
//! with a message that names it.
//!
//! Shutdown order (SIGTERM, Ctrl-C, or the future given to [`run`]): the HTTP server stops
//! accepting, closes its idle connections and finishes the requests in flight (each bounded by
//! `http_body_read_timeout_ms` and `request_timeout_ms`), then
//! the Raft node stops (pending proposals fail, queued log writes finish, the transport
//! closes), then the stores close (RocksDB's writer thread finishes and joins).

use crate::api::{self, AppContext, Limits, NodeInfo, Readiness};
use crate::config::{NodeConfig, StorageKind, TransportKind};
use crate::members::AddressBook;
use crate::metrics::Metrics;
use crate::state::{KvState, KvStateMachine, WAL_FLUSH_INTERVAL};
use raft_core::runtime::{RaftNode, RuntimeOptions};
use raft_core::wire::ClusterId;
use raft_core::{LogStore, Network, NodeId};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A running node's handles, for tests and for the binary's shutdown.
pub struct RunningNode {
    /// The Raft node.
    pub raft: RaftNode,
    /// Where the HTTP API listens.
    pub client_address: SocketAddr,
    server: tokio::task::JoinHandle<io::Result<()>>,
    watcher: tokio::task::JoinHandle<()>,
    /// RocksDB state only.
    wal_flusher: Option<tokio::task::JoinHandle<()>>,
    state: Arc<KvState>,
    stop_http: Arc<tokio::sync::Notify>,
}

/// Opens the log store the configuration names; the RocksDB store is also returned as itself,
/// for its write statistics.
#[allow(clippy::type_complexity)]
fn open_log_store(
    config: &NodeConfig,
) -> Result<
    (
        Arc<dyn LogStore>,
        Option<Arc<raft_storage_rocksdb::RocksLogStore>>,
    ),
    String,
> {
    Ok(match config.storage {
        StorageKind::Mem => (Arc::new(raft_storage_mem::MemLogStore::new()), None),
        StorageKind::Rocksdb => {
            let path = config.data_dir.join("log");
            let store = raft_storage_rocksdb::RocksLogStore::open(
                &path,
                raft_storage_rocksdb::RocksLogStoreOptions::default(),
            )
            .map_err(|e| format!("opening the log store in {}: {e}", path.display()))?;
            let store = Arc::new(store);
            (store.clone(), Some(store))
        }
    })
}

/// The life this run starts in ([`raft_core::Incarnation`]). A RocksDB node keeps its state
/// across restarts: always 0. An in-memory node takes the next count from
/// `<data dir>/incarnation` (the only file it writes): every restart is a new life, which the
/// cluster records and promotes back on its own once it has caught up.
fn take_incarnation(config: &NodeConfig) -> Result<raft_core::Incarnation, String> {
    if config.storage != StorageKind::Mem {
        return Ok(raft_core::Incarnation(0));
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("creating {}: {e}", config.data_dir.display()))?;
    let path = config.data_dir.join("incarnation");
    let incarnation = raft_storage_mem::take_incarnation(&path)
        .map_err(|e| format!("taking the next incarnation from {}: {e}", path.display()))?;
    if incarnation > raft_core::Incarnation(0) {
        tracing::warn!(
            incarnation = incarnation.0,
            "in-memory storage: this node restarted without its log; it rejoins in a new life \
             (as a learner, promoted back once caught up) and is not ready until then"
        );
    }
    Ok(incarnation)
}

/// Opens the state machine's map the configuration names.
fn open_state(config: &NodeConfig) -> Result<Arc<KvState>, String> {
    Ok(Arc::new(match config.storage {
        StorageKind::Mem => KvState::in_memory(),
        StorageKind::Rocksdb => {
            let path = config.data_dir.join("state");
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
            KvState::open_rocksdb(&path)
                .map_err(|e| format!("opening the state in {}: {e}", path.display()))?
        }
    }))
}

/// The transports' reconnect delays, `(min, max)`: the wait between dials of an unreachable
/// peer doubles from the transport's minimum up to half the minimum election timeout.
///
/// Messages to a peer queue behind that wait, votes included, so a peer that comes back must
/// be reached again well within an election. With the transports' own 2 s maximum, a leader
/// that failed soon after another node restarted left the survivors' pre-votes waiting up to
/// 2 s, then released together into a split vote (`kvctl failover` showed elections of
/// 0.6-1.3 s where 0.15-0.3 s was the norm).
fn reconnect_delays(config: &NodeConfig, transport_min: Duration) -> (Duration, Duration) {
    let election_min = config.tick() * config.election_timeout_ticks_min;
    let max = (election_min / 2).max(Duration::from_millis(1));
    (transport_min.min(max), max)
}

/// Binds the transport the configuration names, with `peers` (members joining later reach it
/// through `Network::members_changed`).
async fn bind_transport(
    config: &NodeConfig,
    peers: std::collections::HashMap<NodeId, SocketAddr>,
) -> Result<Arc<dyn Network>, String> {
    let cluster = ClusterId(config.cluster_id);
    let node = NodeId(config.id);
    let listen = config.peer_listen_address()?;
    let tls = config.tls_paths()?;
    Ok(match config.transport {
        TransportKind::Tcp => {
            let mut tcp = raft_transport_tcp::TcpConfig::new(cluster, node, listen);
            tcp.peers = peers;
            (tcp.reconnect_delay_min, tcp.reconnect_delay_max) =
                reconnect_delays(config, tcp.reconnect_delay_min);
            tcp.tls = tls.map(|paths| raft_transport_tcp::TlsFiles {
                ca_certificate: paths.ca,
                certificate: paths.certificate,
                private_key: paths.private_key,
            });
            let transport = raft_transport_tcp::TcpTransport::bind(tcp)
                .await
                .map_err(|e| format!("binding the TCP transport on {listen}: {e}"))?;
            Arc::new(transport)
        }
        TransportKind::Quic => {
            let paths = tls.ok_or("QUIC needs TLS files")?;
            let files = raft_transport_quic::TlsFiles {
                ca_certificate: paths.ca,
                certificate: paths.certificate,
                private_key: paths.private_key,
            };
            let mut quic = raft_transport_quic::QuicConfig::new(cluster, node, listen, files);
            quic.peers = peers;
            (quic.reconnect_delay_min, quic.reconnect_delay_max) =
                reconnect_delays(config, quic.reconnect_delay_min);
            quic.idle_timeout = Duration::from_millis(config.quic_idle_timeout_ms);
            // Keep-alives well inside the idle timeout, so a quiet live peer is never dropped.
            quic.keep_alive_interval = (quic.idle_timeout / 4).min(quic.keep_alive_interval);
            let transport = raft_transport_quic::QuicTransport::bind(quic)
                .await
                .map_err(|e| format!("binding the QUIC transport on {listen}: {e}"))?;
            Arc::new(transport)
        }
    })
}

/// A seed for election timeouts that differs between nodes and between runs.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Open files a node needs besides its HTTP connections: the listeners, peers, and the
/// stores' files.
const OPEN_FILES_BESIDES_CONNECTIONS: libc::rlim_t = 512;

/// Raises this process's soft limit on open files to its hard limit. Each HTTP connection takes
/// one, and a common default soft limit (1024) is below `http_connections_max` (1024) plus the
/// node's own files; there, accepting fails (the server then closes an idle connection to make
/// room, at a cost). Warns when even the hard limit is short.
fn raise_open_files_limit(connections_max: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "reading the open-file limit");
        return;
    }
    // An unlimited hard limit is not a valid soft one for open files; Linux caps it at 2^20.
    let wanted = limit.rlim_max.min(1 << 20);
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                from = limit.rlim_cur,
                to = wanted,
                "raised the open-file limit"
            );
            limit = raised;
        } else {
            let error = io::Error::last_os_error();
            tracing::warn!(%error, "raising the open-file limit");
        }
    }
    let needed = connections_max as libc::rlim_t + OPEN_FILES_BESIDES_CONNECTIONS;
    if limit.rlim_cur < needed {
        tracing::warn!(
            open_files_max = limit.rlim_cur,
            needed,
            "the open-file limit is below http_connections_max plus the node's own files: \
             raise it (ulimit -n) or lower --http-connections-max"
        );
    }
}

/// Starts a node: stores, transport, Raft, the status watcher and the HTTP server.
pub async fn start(config: NodeConfig) -> Result<RunningNode, String> {
    config.validate()?;
    // Loaded before anything starts: a bad file stops the node with a message naming it.
    let https = config.https_paths()?;
    let server_tls = match &https {
        Some(paths) => Some(crate::tls::server_config(&paths.server).map_err(|e| e.to_string())?),
        None => None,
    };
    raise_open_files_limit(config.http_connections_max);
    let client_address = config.client_listen_address()?;
    let listener = TcpListener::bind(client_address)
        .await
        .map_err(|e| format!("binding the HTTP API on {client_address}: {e}"))?;
    let client_address = listener.local_addr().map_err(|e| e.to_string())?;
    let metrics = Arc::new(Metrics::default());
    let http_counters = metrics.http.clone();
    let (store, rocks_store) = open_log_store(&config)?;
    let state = open_state(&config)?;
    // The transport starts with the configured members; the runtime hands it the stored
    // membership's records as it starts, and every committed membership after.
    let address_book = Arc::new(AddressBook::new(config.id, &config.members()?));
    let network = bind_transport(&config, address_book.peers()).await?;
    let mut raft_config = config.raft_config();
    raft_config.seed = seed();
    raft_config.incarnation = take_incarnation(&config)?;
    let options = RuntimeOptions {
        tick_interval: config.tick(),
        proposal_queue_max: config.proposal_queue_max,
        ..RuntimeOptions::default()
    };
    // Installed before the node starts: the library registers its metric handles at start.
    crate::metrics::library_metrics();
    let machine = KvStateMachine::new(state.clone(), metrics.clone());
    let raft = RaftNode::start(raft_config, options, store, Box::new(machine), network)
        .await
        .map_err(|e| format!("starting raft: {e}"))?;
    let readiness = Arc::new(Readiness::default());
    let wal_flusher = matches!(config.storage, StorageKind::Rocksdb)
        .then(|| tokio::spawn(flush_wal_periodically(Arc::downgrade(&state))));
    let watcher = tokio::spawn(watch_status(
        raft.clone(),
        readiness.clone(),
        address_book.clone(),
    ));
    let mut http = reqwest::Client::builder()
        .timeout(config.request_timeout() + Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(2));
    if let Some(paths) = &https {
        http = crate::tls::configure_client(http, &paths.forwarding)
            .map_err(|e| format!("the HTTPS client for forwarding: {e}"))?;
    }
    let http = http
        .build()
        .map_err(|e| format!("building the HTTP client for forwarding: {e}"))?;
    // Every member uses the same scheme: the one this node serves.
    let http_scheme = if https.is_some() { "https" } else { "http" };
    let context = Arc::new(AppContext {
        raft: raft.clone(),
        state: state.clone(),
        metrics,
        limits: Limits {
            key_bytes_max: config.key_bytes_max,
            value_bytes_max: config.value_bytes_max,
            scan_limit_max: config.scan_limit_max,
            scan_bytes_max: config.scan_bytes_max,
            request_timeout: config.request_timeout(),
            leader_wait: Duration::from_millis(config.leader_wait_ms),
            lease_reads: config.lease_reads,
        },
        address_book,
        http,
        http_scheme,
        node: NodeInfo {
            id: config.id,
            storage: config.storage,
            transport: config.transport,
            client_address,
            peer_address: config.peer_listen_address()?,
        },
        readiness,
        log_store_stats: rocks_store
            .map(|store| Box::new(move || store.write_stats()) as api::LogStoreStats),
    });
    let stop_http = Arc::new(tokio::sync::Notify::new());
    let stop = stop_http.clone();
    let router = api::router(context);
    let server = tokio::spawn(crate::http_server::serve(
        listener,
        router,
        config.http_limits(),
        http_counters,
        server_tls,
        async move { stop.notified().await },
    ));
    tracing::info!(id = config.id, %client_address, scheme = http_scheme, storage = %config.storage,
        transport = %config.transport, "node started");
    Ok(RunningNode {
        raft,
        client_address,
        server,
        watcher,
        wal_flusher,
        state,
        stop_http,
    })
}

/// Hands the state's buffered WAL to its file every [`WAL_FLUSH_INTERVAL`] in which something
/// was applied, which bounds the applies a killed process loses (see [`crate::state`]). Ends
/// once the state is dropped.
async fn flush_wal_periodically(state: std::sync::Weak<KvState>) {
    let mut ticker = tokio::time::interval(WAL_FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flushed_at = None;
    loop {
        ticker.tick().await;
        let Some(state) = state.upgrade() else { return };
        let applied = state.applied_index();
        if flushed_at == Some(applied) {
            continue; // an idle node has nothing buffered
        }
        match state.flush_wal() {
            Ok(()) => flushed_at = Some(applied),
            Err(error) => tracing::warn!(%error, "flushing the state's WAL buffer"),
        }
    }
}

impl RunningNode {
    /// Stops the node in the documented order and waits until everything has ended.
    pub async fn shutdown(self) {
        self.stop_http.notify_one();
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "the HTTP server failed"),
            Err(error) => tracing::error!(%error, "the HTTP server task failed"),
        }
        self.raft.shutdown().await;
        self.watcher.abort();
        let _ = self.watcher.await;
        if let Some(flusher) = self.wal_flusher {
            flusher.abort();
            let _ = flusher.await;
        }
        // Nothing applies any more: what is buffered goes to the file now, so a restart
        // replays nothing even if the database is never closed.
        if let Err(error) = self.state.flush_wal() {
            tracing::warn!(%error, "flushing the state's WAL buffer at shutdown");
        }
        tracing::info!("node stopped");
    }
}

/// Runs a node until `stop` resolves (or the Raft node fails), then shuts it down.
pub async fn run(config: NodeConfig, stop: impl Future<Output = ()>) -> Result<(), String> {
    let node = start(config).await?;
    let raft = node.raft.clone();
    // Not a status receiver: that would wake this (main) thread on every commit, which cost
    // the followers about a tenth of their CPU under load.
    let failed = async move { Some(raft.stopped().await) };
    let failure = tokio::select! {
        _ = stop => None,
        reason = failed => reason,
    };
    node.shutdown().await;
    match failure {
        // "raft node <id> stopped: <cause>".
        Some(reason) => Err(reason.to_string()),
        None => Ok(()),
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn termination_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match terminate.as_mut() {
            Some(signal) => {
                signal.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = sigterm => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
    }
}

/// Keeps readiness up to date from the node's narrow signals
/// (leadership, the applied index, the committed membership), and the address book in step
/// with the committed membership.
async fn watch_status(raft: RaftNode, readiness: Arc<Readiness>, address_book: Arc<AddressBook>) {
    let status = raft.status();
    let (me, life) = (status.id, status.incarnation);
    let mut leadership = raft.watch_leadership();
    let mut applied = raft.watch_applied();
    let mut membership = raft.watch_membership();
    // The commit index seen when a leader was first known after start.
    let mut catch_up_target = None;
    loop {
        let current_leader = leadership.borrow_and_update().leader;
        let rejoined = {
            let committed = membership.borrow_and_update();
            let members = &committed.membership;
            address_book.follow(members);
            members.rejoined(me, life)
        };
        // A node that restarted without its state (in memory) is not ready until the leader
        // has recorded its new life and promoted it back (committed): before, the commit index
        // it hears is only as far as it holds, and it serves nothing it can vouch for.
        if !rejoined {
            catch_up_target = None;
        } else if current_leader.is_some() && catch_up_target.is_none() {
            catch_up_target = Some(raft.status().commit_index);
        }
        let applied_index = *applied.borrow_and_update();
        let caught_up = catch_up_target.is_some_and(|target| applied_index >= target);
        readiness.set(current_leader.is_some() && caught_up);
        // The applied index is watched only while readiness waits for it: once caught up, it
        // stays so (the applied index only grows) until leadership or the membership changes.
        let waiting_for_apply = catch_up_target.is_some() && !caught_up;
        let closed = tokio::select! {
            changed = leadership.changed() => changed.is_err(),
            changed = membership.changed() => changed.is_err(),
            changed = applied.changed(), if waiting_for_apply => changed.is_err(),
        };
        if closed {
            readiness.set(false);
            return;
        }
    }
}
