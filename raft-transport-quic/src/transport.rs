//! The transport: the endpoint, the peer table with one connection per peer, the per-lane
//! stream writers, and the accepting side, which also notices peers that restarted with new
//! credentials (see [`crate::restart`]).

use crate::config::QuicConfig;
use crate::pki::Identity;
use async_trait::async_trait;
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, TransportConfig, VarInt};
use raft_core::transport_kit::{
    connect_with_backoff, next_frame, read_inbound_handshake, Backoff, Ended, FrameReader,
    ReadError, Shutdown, TransportCore,
};
use raft_core::wire::{self, Frame, Handshake};
use raft_core::{Inbound, Lane, Message, Network, NetworkError, NodeId, SendError};
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::timeout;

/// Application error codes this transport closes connections with.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_REFUSED: u32 = 1;
const CLOSE_REPLACED: u32 = 2;
const CLOSE_PEER_RESTARTED: u32 = 3;
/// The dialler was removed from the cluster by a committed membership (`wire::Refusal` over
/// TCP): it reports so to its node.
const CLOSE_REMOVED: u32 = 4;

/// Stream priorities: quinn sends higher first, so a heartbeat never waits behind queued
/// snapshot data on the same connection.
const ORDINARY_PRIORITY: i32 = 1;
const SNAPSHOT_PRIORITY: i32 = 0;

/// A Raft transport over QUIC, always with mutual TLS.
///
/// Each peer gets one outbound connection, dialled when the first message for it is queued and
/// redialled with backoff after a failure. On it, one long-lived stream per [`Lane`] carries
/// that lane's frames in order; the ordinary stream has priority, and QUIC's per-stream flow
/// control keeps a slow snapshot from blocking it. Messages travel one way on a connection: each
/// node dials its peers and reads the connections its peers dialled. See the crate docs for an
/// example.
pub struct QuicTransport {
    inner: Arc<Inner>,
}

struct Inner {
    config: QuicConfig,
    local_addr: SocketAddr,
    identity: Identity,
    /// Until shutdown; taken then so the socket is released once every connection is gone.
    endpoint: Mutex<Option<Endpoint>>,
    /// The peers and their queues, the tasks, and the lifecycle.
    core: TransportCore<Arc<Link>>,
    /// The link of each peer in `core`, for the accepting side, which learns of a restart.
    /// Invariant: changed only together with `core`'s peers, under this lock.
    links: Mutex<HashMap<NodeId, Weak<Link>>>,
}

/// One peer: its link and a bounded queue of encoded frames per lane, whose writers start at
/// `start` (or at once afterwards).
type Peer = raft_core::transport_kit::Peer<Arc<Link>>;

/// The one outbound connection to a peer, shared by its lanes' writers.
struct Link {
    node: NodeId,
    address: SocketAddr,
    connection: tokio::sync::Mutex<Option<Connection>>,
}

fn transport_config(config: &QuicConfig) -> Result<Arc<TransportConfig>, NetworkError> {
    let mut transport = TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|error| NetworkError(format!("idle_timeout: {error}")))?;
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive_interval))
        .max_concurrent_uni_streams(VarInt::from_u32(config.inbound_streams_max))
        .max_concurrent_bidi_streams(VarInt::from_u32(0));
    Ok(Arc::new(transport))
}

impl QuicTransport {
    /// Validates `config`, loads the certificates, and binds the UDP endpoint. Nothing is sent
    /// or accepted until [`Network::start`].
    pub async fn bind(config: QuicConfig) -> Result<QuicTransport, NetworkError> {
        config.validate()?;
        let identity = Identity::load(&config.tls)?;
        let transport = transport_config(&config)?;
        let server_crypto = QuicServerConfig::try_from(identity.server.clone())
            .map_err(|error| NetworkError(format!("QUIC server TLS: {error}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(Arc::clone(&transport));
        let client_crypto = QuicClientConfig::try_from(identity.client.clone())
            .map_err(|error| NetworkError(format!("QUIC client TLS: {error}")))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);
        let socket = std::net::UdpSocket::bind(config.listen)
            .map_err(|error| NetworkError(format!("binding {}: {error}", config.listen)))?;
        let runtime = Arc::new(quinn::TokioRuntime);
        let mut endpoint = Endpoint::new(identity.endpoint.clone(), Some(server), socket, runtime)
            .map_err(|error| NetworkError(format!("binding {}: {error}", config.listen)))?;
        endpoint.set_default_client_config(client);
        let local_addr = endpoint
            .local_addr()
            .map_err(|error| NetworkError(format!("reading the bound address: {error}")))?;
        let inner = Arc::new(Inner {
            local_addr,
            identity,
            endpoint: Mutex::new(Some(endpoint)),
            core: TransportCore::new(
                config.node,
                config.frame_bytes_max,
                config.send_queue_messages_max,
                config.snapshot_queue_messages_max,
            ),
            links: Mutex::new(HashMap::new()),
            config,
        });
        let transport = QuicTransport { inner };
        for (&node, &address) in &transport.inner.config.peers {
            transport.add_peer(node, address);
        }
        Ok(transport)
    }

    /// The UDP address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Adds a peer, or moves it to a new address (its queued messages are dropped and its old
    /// connection closed).
    pub fn add_peer(&self, node: NodeId, address: SocketAddr) {
        let link = Arc::new(Link {
            node,
            address,
            connection: tokio::sync::Mutex::new(None),
        });
        let start = |peer: &mut Peer| self.inner.start_writers(peer);
        let replaced = {
            let mut links = self.inner.links();
            if node != self.inner.config.node {
                links.insert(node, Arc::downgrade(&link));
            }
            self.inner.core.add_peer(node, link, start)
        };
        if let Some(old) = replaced {
            retire(old, CLOSE_REPLACED);
        }
    }

    /// Forgets a peer: its queued messages are dropped and its connection closed.
    pub fn remove_peer(&self, node: NodeId) {
        let removed = {
            let mut links = self.inner.links();
            links.remove(&node);
            self.inner.core.remove_peer(node)
        };
        if let Some(peer) = removed {
            retire(peer, CLOSE_REPLACED);
        }
    }

    /// Queues `message` on `lane`. [`Network::send`] calls this with `message.lane()`; this
    /// method lets a caller (or a test) choose the lane.
    pub fn send_on(&self, lane: Lane, message: Message) -> Result<(), SendError> {
        self.inner.core.send_on(lane, &message)
    }

    /// Tasks this transport started that have not finished: the acceptor, one per inbound
    /// connection and stream, one per peer and lane. Zero after [`Network::shutdown`].
    pub fn tasks_running(&self) -> usize {
        self.inner.core.tasks.running()
    }
}

/// Stops the peer's writers and closes its connection.
fn retire(peer: Peer, code: u32) {
    peer.abort_writers();
    if let Ok(mut connection) = peer.link.connection.try_lock() {
        if let Some(connection) = connection.take() {
            connection.close(VarInt::from_u32(code), b"peer removed");
        }
    }
}

#[async_trait]
impl Network for QuicTransport {
    async fn start(&self, inbound: Inbound) -> Result<(), NetworkError> {
        self.inner.core.check_inbound(&inbound)?;
        let endpoint = self.inner.endpoint.lock().expect("endpoint lock").clone();
        let Some(endpoint) = endpoint else {
            return Err(NetworkError("the transport is shut down".into()));
        };
        if self.inner.core.mark_started() {
            return Err(NetworkError("the transport was already started".into()));
        }
        let inner = Arc::clone(&self.inner);
        self.inner
            .core
            .tasks
            .spawn(accept_loop(inner, endpoint, inbound));
        self.inner
            .core
            .start_writers(|_, peer| self.inner.start_writers(peer));
        Ok(())
    }

    fn send(&self, message: Message) -> Result<(), SendError> {
        self.send_on(message.lane(), message)
    }

    fn removals_committed(&self, removed: &std::collections::BTreeSet<NodeId>) {
        let dropped = {
            let mut links = self.inner.links();
            for node in removed {
                links.remove(node);
            }
            self.inner.core.set_removed(removed)
        };
        for peer in dropped {
            retire(peer, CLOSE_REMOVED);
        }
    }

    fn members_changed(&self, membership: &raft_core::Membership) {
        self.inner.core.follow_members(
            membership,
            |link| link.address,
            |node, address| self.add_peer(node, address),
            |node| self.remove_peer(node),
        );
    }

    async fn shutdown(&self) {
        self.inner.core.begin_shutdown();
        let endpoint = self.inner.endpoint.lock().expect("endpoint lock").take();
        if let Some(endpoint) = &endpoint {
            endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        }
        let peers = {
            let mut links = self.inner.links();
            links.clear();
            self.inner.core.drain_peers()
        };
        for peer in peers {
            retire(peer, CLOSE_SHUTDOWN);
        }
        self.inner
            .core
            .close_tasks(self.inner.config.shutdown_grace)
            .await;
        if let Some(endpoint) = endpoint {
            // Lets the close reach the peers, so they redial a restarted node at once rather
            // than after their idle timeout.
            let _ = timeout(self.inner.config.shutdown_grace, endpoint.wait_idle()).await;
        }
    }
}

impl Inner {
    fn start_writers(self: &Arc<Inner>, peer: &mut Peer) {
        peer.start_writers(|link, lane, queue| {
            let writer = run_writer(Arc::clone(self), Arc::clone(link), lane, queue);
            self.core.tasks.spawn(writer)
        });
    }

    fn is_known(&self, node: NodeId) -> bool {
        self.core.is_peer(node)
    }

    fn endpoint(&self) -> Option<Endpoint> {
        self.endpoint.lock().expect("endpoint lock").clone()
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Weak<Link>>> {
        self.links.lock().expect("links lock")
    }

    /// `peer` dialled this node presenting `certificate`: if our own connection to it presents
    /// another, close that one (see [`Link::forget_earlier_incarnation`]).
    fn peer_dialled(&self, peer: NodeId, certificate: &CertificateDer<'static>) {
        let link = self.links().get(&peer).and_then(Weak::upgrade);
        if let Some(link) = link {
            link.forget_earlier_incarnation(certificate);
        }
    }
}

/// The first certificate of the connection's peer (its own, not its issuers').
fn leaf_certificate(connection: &Connection) -> Option<CertificateDer<'static>> {
    let chain = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain.first().cloned()
}

// ---------------------------------------------------------------------------------------------
// Outbound: one connection per peer, one stream per lane.

impl Link {
    /// The live connection to the peer, dialling a new one if there is none.
    async fn connection(&self, inner: &Inner) -> Result<Connection, String> {
        let mut current = self.connection.lock().await;
        if let Some(connection) = current.as_ref() {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        *current = None;
        let endpoint = inner.endpoint().ok_or("the transport is shut down")?;
        let name = wire::certificate_name(self.node);
        let connecting = endpoint
            .connect(self.address, &name)
            .map_err(|error| format!("connect: {error}"))?;
        let connection = timeout(inner.config.connect_timeout, connecting)
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|error| format!("connect: {error}"))?;
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// The peer dialled this node presenting `certificate`. A transport loads its credentials
    /// once, when it binds, so if our connection to the peer presented another certificate, it
    /// leads to an earlier incarnation of the peer: one that crashed, whose successor (restarted
    /// with a new key) cannot end the connection with a valid stateless reset. Close it; the
    /// writers redial. A connection being dialled right now (the lock is held) reaches whoever
    /// listens now and is left alone, and so is one whose certificate cannot be read.
    fn forget_earlier_incarnation(&self, certificate: &CertificateDer<'static>) {
        let Ok(current) = self.connection.try_lock() else {
            return;
        };
        let Some(connection) = current.as_ref() else {
            return;
        };
        let earlier = connection.close_reason().is_none()
            && leaf_certificate(connection).is_some_and(|ours| ours != *certificate);
        if earlier {
            tracing::info!(
                node = %self.node,
                address = %self.address,
                "the peer dialled with new credentials: it restarted; redialling"
            );
            connection.close(VarInt::from_u32(CLOSE_PEER_RESTARTED), b"peer restarted");
        }
    }
}

/// Writes the frames queued for the peer on `lane` to that lane's stream, reopening the stream
/// (and the connection) as needed.
async fn run_writer(
    inner: Arc<Inner>,
    link: Arc<Link>,
    lane: Lane,
    mut queue: mpsc::Receiver<Bytes>,
) {
    let config = &inner.config;
    let mut shutdown = inner.core.shutdown.clone();
    let mut backoff = Backoff::new(config.reconnect_delay_min, config.reconnect_delay_max);
    loop {
        let Some(first) = next_frame(&mut shutdown, &mut queue).await else {
            return;
        };
        let attempt = || async {
            open_stream(&inner, &link, lane).await.map_err(|error| {
                tracing::debug!(node = %link.node, address = %link.address, ?lane, %error, "opening a stream failed");
            })
        };
        let Some((connection, stream)) =
            connect_with_backoff(&mut shutdown, &mut backoff, attempt).await
        else {
            return;
        };
        match pump(
            &inner,
            &connection,
            stream,
            first,
            &mut queue,
            &mut shutdown,
        )
        .await
        {
            Ended::Stop => return,
            Ended::Lost => {
                if removed_by_peer(&connection) {
                    inner.core.report_removed(link.node);
                }
                tracing::debug!(node = %link.node, ?lane, "stream lost; reopening");
            }
        }
    }
}

/// Whether the peer closed the connection because a committed membership removed this node.
fn removed_by_peer(connection: &Connection) -> bool {
    matches!(
        connection.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == VarInt::from_u32(CLOSE_REMOVED)
    )
}

async fn open_stream(
    inner: &Inner,
    link: &Link,
    lane: Lane,
) -> Result<(Connection, SendStream), String> {
    let connection = link.connection(inner).await?;
    let mut stream = connection
        .open_uni()
        .await
        .map_err(|error| format!("opening a stream: {error}"))?;
    let priority = match lane {
        Lane::Ordinary => ORDINARY_PRIORITY,
        Lane::Snapshot => SNAPSHOT_PRIORITY,
    };
    stream
        .set_priority(priority)
        .map_err(|error| format!("stream priority: {error}"))?;
    let hello = Handshake {
        cluster: inner.config.cluster,
        from: inner.config.node,
        to: link.node,
        lane,
    };
    stream
        .write_all(&wire::encode_handshake(&hello))
        .await
        .map_err(|error| format!("writing the handshake: {error}"))?;
    Ok((connection, stream))
}

/// Writes queued frames until the stream or connection fails or the writer stops. Frames
/// queued together are handed to quinn in one call, which packs them into as few packets as
/// it can.
async fn pump(
    inner: &Inner,
    connection: &Connection,
    mut stream: SendStream,
    first: Bytes,
    queue: &mut mpsc::Receiver<Bytes>,
    shutdown: &mut Shutdown,
) -> Ended {
    let mut batch = vec![first];
    loop {
        if !batch.is_empty() {
            let mut batched: usize = batch.iter().map(Bytes::len).sum();
            while batched < inner.config.write_batch_bytes_max {
                let Ok(frame) = queue.try_recv() else { break };
                batched += frame.len();
                batch.push(frame);
            }
            let written = stream.write_all_chunks(&mut batch);
            tokio::select! {
                _ = shutdown.wait() => return Ended::Stop,
                written = written => if let Err(error) = written {
                    tracing::debug!(%error, "stream write failed");
                    return Ended::Lost;
                },
            }
            batch.clear();
        }
        tokio::select! {
            _ = shutdown.wait() => return Ended::Stop,
            frame = queue.recv() => match frame {
                Some(frame) => batch.push(frame),
                None => return Ended::Stop,
            },
            _ = connection.closed() => return Ended::Lost,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inbound: connections, then the streams on each.

async fn accept_loop(inner: Arc<Inner>, endpoint: Endpoint, inbound: Inbound) {
    let mut shutdown = inner.core.shutdown.clone();
    let permits = Arc::new(Semaphore::new(inner.config.inbound_connections_max));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.wait() => return,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::warn!(
                remote = %incoming.remote_address(),
                limit = inner.config.inbound_connections_max,
                "refused a connection: inbound_connections_max reached"
            );
            incoming.refuse();
            continue;
        };
        let connection_inner = Arc::clone(&inner);
        let connection_inbound = inbound.clone();
        inner.core.tasks.spawn(async move {
            let _permit = permit;
            serve_connection(connection_inner, incoming, connection_inbound).await;
        });
    }
}

/// An authenticated stream: its frames, the peer it belongs to, and the peer's certificate.
struct OpenedStream {
    frames: FrameReader<RecvStream>,
    peer: NodeId,
    certificate: CertificateDer<'static>,
}

async fn serve_connection(inner: Arc<Inner>, incoming: Incoming, inbound: Inbound) {
    let remote = incoming.remote_address();
    let mut shutdown = inner.core.shutdown.clone();
    // The TLS handshake and the first stream's handshake must both come within the timeout:
    // a connection that authenticates and then says nothing holds no slot for long.
    let first = timeout(inner.config.handshake_timeout, async {
        let connection = incoming
            .accept()
            .map_err(|error| format!("accepting: {error}"))?
            .await
            .map_err(|error| format!("QUIC handshake: {error}"))?;
        let stream = connection
            .accept_uni()
            .await
            .map_err(|error| format!("awaiting the first stream: {error}"))?;
        let opened = open_stream_inbound(&inner, &connection, stream).await;
        Ok::<_, String>((connection, opened))
    });
    let first = tokio::select! {
        _ = shutdown.wait() => return,
        first = first => first,
    };
    let (connection, opened) = match first {
        Ok(Ok((connection, Ok(opened)))) => (connection, opened),
        Ok(Ok((connection, Err(StreamRefusal::Removed(peer))))) => {
            tracing::warn!(%remote, %peer, "refused a removed node, and told it so");
            connection.close(VarInt::from_u32(CLOSE_REMOVED), b"removed from the cluster");
            return;
        }
        Ok(Ok((connection, Err(StreamRefusal::Other(error))))) => {
            tracing::warn!(%remote, %error, "refused a connection");
            connection.close(VarInt::from_u32(CLOSE_REFUSED), b"refused");
            return;
        }
        Ok(Err(error)) => {
            tracing::warn!(%remote, %error, "refused a connection");
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "refused a connection: no handshake in time");
            // Dropping the connection future aborts it; an established one is closed by drop.
            return;
        }
    };
    let peer = opened.peer;
    inner.peer_dialled(peer, &opened.certificate);
    spawn_reader(&inner, &connection, opened, &inbound);
    loop {
        let stream = tokio::select! {
            _ = shutdown.wait() => {
                connection.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
                return;
            }
            stream = connection.accept_uni() => stream,
        };
        let Ok(stream) = stream else {
            tracing::debug!(%remote, %peer, "connection closed");
            return;
        };
        let stream_inner = Arc::clone(&inner);
        let stream_connection = connection.clone();
        let stream_inbound = inbound.clone();
        inner.core.tasks.spawn(async move {
            let handshake_timeout = stream_inner.config.handshake_timeout;
            let opened = timeout(
                handshake_timeout,
                open_stream_inbound(&stream_inner, &stream_connection, stream),
            )
            .await
            .unwrap_or_else(|_| Err(StreamRefusal::Other("no handshake in time".into())));
            match opened {
                Ok(opened) => {
                    let mut shutdown = stream_inner.core.shutdown.clone();
                    read_messages(
                        &stream_inner,
                        opened,
                        &stream_connection,
                        &stream_inbound,
                        &mut shutdown,
                    )
                    .await
                }
                Err(StreamRefusal::Removed(_)) => {
                    stream_connection
                        .close(VarInt::from_u32(CLOSE_REMOVED), b"removed from the cluster");
                }
                Err(StreamRefusal::Other(error)) => refuse(&stream_connection, &error),
            }
        });
    }
}

fn spawn_reader(
    inner: &Arc<Inner>,
    connection: &Connection,
    opened: OpenedStream,
    inbound: &Inbound,
) {
    let connection = connection.clone();
    let inbound = inbound.clone();
    let mut shutdown = inner.core.shutdown.clone();
    let reader_inner = Arc::clone(inner);
    inner.core.tasks.spawn(async move {
        read_messages(&reader_inner, opened, &connection, &inbound, &mut shutdown).await;
    });
}

/// Closes the whole connection: whatever one stream did wrong, the peer is misbehaving.
fn refuse(connection: &Connection, why: &str) {
    tracing::warn!(remote = %connection.remote_address(), why, "closed a connection");
    connection.close(VarInt::from_u32(CLOSE_REFUSED), b"refused");
}

/// Why an inbound stream is not read.
enum StreamRefusal {
    /// The dialler's handshake and certificate name a node a committed membership removed.
    Removed(NodeId),
    /// Anything else, described for the log.
    Other(String),
}

impl From<String> for StreamRefusal {
    fn from(why: String) -> StreamRefusal {
        StreamRefusal::Other(why)
    }
}

impl From<&str> for StreamRefusal {
    fn from(why: &str) -> StreamRefusal {
        StreamRefusal::Other(why.to_string())
    }
}

/// Reads and checks a stream's handshake against the connection's certificate.
async fn open_stream_inbound(
    inner: &Inner,
    connection: &Connection,
    stream: RecvStream,
) -> Result<OpenedStream, StreamRefusal> {
    let mut frames = FrameReader::new(stream, inner.config.frame_bytes_max);
    let (cluster, node) = (inner.config.cluster, inner.config.node);
    // A removed node passes the handshake check only to be told it was removed.
    let known = |peer| inner.is_known(peer) || inner.core.is_removed(peer);
    let handshake = read_inbound_handshake(&mut frames, cluster, node, known)
        .await?
        .ok_or("a stream closed before its handshake")?;
    let certificates = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("the connection has no peer certificate")?;
    if !inner.identity.names(&certificates, handshake.from) {
        return Err(StreamRefusal::Other(format!(
            "the peer's certificate does not name {}, whom its handshake claims",
            handshake.from
        )));
    }
    if inner.core.is_removed(handshake.from) {
        return Err(StreamRefusal::Removed(handshake.from));
    }
    let certificate = certificates
        .first()
        .cloned()
        .ok_or("the peer presented no certificate")?;
    Ok(OpenedStream {
        frames,
        peer: handshake.from,
        certificate,
    })
}

/// Delivers an authenticated stream's messages until it ends; a bad frame, a second
/// handshake or a message from another sender closes the connection.
async fn read_messages(
    inner: &Inner,
    mut opened: OpenedStream,
    connection: &Connection,
    inbound: &Inbound,
    shutdown: &mut Shutdown,
) {
    let mut removals_seen = 0;
    loop {
        let frame = tokio::select! {
            _ = shutdown.wait() => return,
            frame = opened.frames.next() => frame,
        };
        let message = match frame {
            Ok(Some(Frame::Message(message))) => message,
            Ok(Some(Frame::Handshake(_))) => return refuse(connection, "a second handshake"),
            Ok(Some(Frame::Refusal(_))) => return refuse(connection, "a refusal from a dialler"),
            Ok(None) => return,
            Err(ReadError::Io(error)) => {
                tracing::debug!(peer = %opened.peer, %error, "stream ended");
                return;
            }
            Err(ReadError::Frame(error)) => {
                return refuse(connection, &format!("bad frame: {error}"));
            }
        };
        if let Err(error) = wire::check_sender(&message, opened.peer) {
            return refuse(connection, &error.to_string());
        }
        if inner.core.removed_since(&mut removals_seen, opened.peer) {
            tracing::info!(peer = %opened.peer, "closing the connection of a removed node, telling it so");
            connection.close(VarInt::from_u32(CLOSE_REMOVED), b"removed from the cluster");
            return;
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            delivered = inbound.deliver(message) => if let Err(error) = delivered {
                return refuse(connection, &format!("delivery failed: {error}"));
            },
        }
    }
}
