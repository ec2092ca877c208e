//! The transport: the peer table, the per-peer writers, and the listener with its readers.

use crate::config::TcpConfig;
use crate::tls::TlsContext;
use async_trait::async_trait;
use bytes::Bytes;
use raft_core::transport_kit::{
    connect_with_backoff, next_frame, read_inbound_handshake, Backoff, Ended, FrameReader,
    ReadError, Shutdown, TransportCore,
};
use raft_core::wire::{self, Frame, Handshake};
use raft_core::{Inbound, Lane, Message, Network, NetworkError, NodeId, SendError};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{sleep, timeout};

/// A byte stream: plain TCP or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}
type BoxStream = Box<dyn Stream>;

/// A Raft transport over TCP.
///
/// Each peer gets one outbound connection per [`Lane`], dialled when the first message for it
/// is queued and redialled with backoff after a failure, so snapshot chunks never queue in
/// front of a heartbeat. Messages travel one way on a connection: each node dials its peers, and
/// reads what its peers dialled. See the crate docs for an example.
pub struct TcpTransport {
    inner: Arc<Inner>,
}

struct Inner {
    config: TcpConfig,
    local_addr: SocketAddr,
    tls: Option<TlsContext>,
    /// The listener between `bind` and `start`.
    listener: Mutex<Option<TcpListener>>,
    /// The peers and their queues, the tasks, and the lifecycle.
    core: TransportCore<SocketAddr>,
}

/// One peer: its address and a bounded queue of encoded frames per lane, whose writers start
/// at `start` (or at once afterwards).
type Peer = raft_core::transport_kit::Peer<SocketAddr>;

impl TcpTransport {
    /// Validates `config`, loads the TLS files if any, and binds the listener. Nothing is sent
    /// or accepted until [`Network::start`].
    pub async fn bind(config: TcpConfig) -> Result<TcpTransport, NetworkError> {
        config.validate()?;
        let tls = config.tls.as_ref().map(TlsContext::load).transpose()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|error| NetworkError(format!("binding {}: {error}", config.listen)))?;
        let local_addr = listener
            .local_addr()
            .map_err(|error| NetworkError(format!("reading the bound address: {error}")))?;
        let inner = Arc::new(Inner {
            local_addr,
            tls,
            listener: Mutex::new(Some(listener)),
            core: TransportCore::new(
                config.node,
                config.frame_bytes_max,
                config.send_queue_messages_max,
                config.snapshot_queue_messages_max,
            ),
            config,
        });
        let transport = TcpTransport { inner };
        for (&node, &address) in &transport.inner.config.peers {
            transport.add_peer(node, address);
        }
        Ok(transport)
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Adds a peer, or moves it to a new address (its queued messages are dropped).
    pub fn add_peer(&self, node: NodeId, address: SocketAddr) {
        let start = |peer: &mut Peer| self.inner.start_writers(node, peer);
        if let Some(old) = self.inner.core.add_peer(node, address, start) {
            old.abort_writers();
        }
    }

    /// Forgets a peer: its queued messages are dropped and its connections closed.
    pub fn remove_peer(&self, node: NodeId) {
        if let Some(peer) = self.inner.core.remove_peer(node) {
            peer.abort_writers();
        }
    }

    /// Queues `message` on `lane`. [`Network::send`] calls this with `message.lane()`; this
    /// method lets a caller (or a test) choose the lane.
    pub fn send_on(&self, lane: Lane, message: Message) -> Result<(), SendError> {
        self.inner.core.send_on(lane, &message)
    }

    /// Tasks this transport started that have not finished: the listener, one per inbound
    /// connection, one per peer and lane. Zero after [`Network::shutdown`].
    pub fn tasks_running(&self) -> usize {
        self.inner.core.tasks.running()
    }
}

#[async_trait]
impl Network for TcpTransport {
    async fn start(&self, inbound: Inbound) -> Result<(), NetworkError> {
        self.inner.core.check_inbound(&inbound)?;
        let listener = self
            .inner
            .listener
            .lock()
            .expect("listener lock")
            .take()
            .ok_or_else(|| NetworkError("the transport was already started or shut down".into()))?;
        self.inner.core.mark_started();
        let inner = Arc::clone(&self.inner);
        self.inner
            .core
            .tasks
            .spawn(accept_loop(inner, listener, inbound));
        self.inner
            .core
            .start_writers(|node, peer| self.inner.start_writers(node, peer));
        Ok(())
    }

    fn send(&self, message: Message) -> Result<(), SendError> {
        self.send_on(message.lane(), message)
    }

    fn removals_committed(&self, removed: &std::collections::BTreeSet<NodeId>) {
        for peer in self.inner.core.set_removed(removed) {
            peer.abort_writers();
        }
    }

    fn members_changed(&self, membership: &raft_core::Membership) {
        self.inner.core.follow_members(
            membership,
            |address| *address,
            |node, address| self.add_peer(node, address),
            |node| self.remove_peer(node),
        );
    }

    async fn shutdown(&self) {
        self.inner.core.begin_shutdown();
        self.inner.listener.lock().expect("listener lock").take();
        drop(self.inner.core.drain_peers());
        self.inner
            .core
            .close_tasks(self.inner.config.shutdown_grace)
            .await;
    }
}

impl Inner {
    fn start_writers(self: &Arc<Inner>, node: NodeId, peer: &mut Peer) {
        peer.start_writers(|&address, lane, queue| {
            let writer = run_writer(Arc::clone(self), node, address, lane, queue);
            self.core.tasks.spawn(writer)
        });
    }

    fn is_known(&self, node: NodeId) -> bool {
        self.core.is_peer(node)
    }
}

// ---------------------------------------------------------------------------------------------
// Outbound: one writer per peer and lane.

/// Writes the frames queued for `node` on `lane`, (re)connecting as needed.
async fn run_writer(
    inner: Arc<Inner>,
    node: NodeId,
    address: SocketAddr,
    lane: Lane,
    mut queue: mpsc::Receiver<Bytes>,
) {
    let config = &inner.config;
    let mut shutdown = inner.core.shutdown.clone();
    let mut backoff = Backoff::new(config.reconnect_delay_min, config.reconnect_delay_max);
    loop {
        // Dial only when there is something to send.
        let Some(first) = next_frame(&mut shutdown, &mut queue).await else {
            return;
        };
        let attempt = || async {
            match timeout(config.connect_timeout, dial(&inner, node, address, lane)).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(error)) => {
                    tracing::debug!(%node, %address, ?lane, %error, "dial failed");
                    Err(())
                }
                Err(_) => {
                    tracing::debug!(%node, %address, ?lane, "dial timed out");
                    Err(())
                }
            }
        };
        let Some(stream) = connect_with_backoff(&mut shutdown, &mut backoff, attempt).await else {
            return;
        };
        tracing::debug!(%node, %address, ?lane, "connected");
        match pump(&inner, stream, first, &mut queue, &mut shutdown).await {
            Ended::Stop => return,
            Ended::Lost => tracing::debug!(%node, ?lane, "connection lost; will redial"),
        }
    }
}

/// Dials `node`, runs TLS if configured, and exchanges handshakes.
async fn dial(
    inner: &Inner,
    node: NodeId,
    address: SocketAddr,
    lane: Lane,
) -> Result<BoxStream, String> {
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    tcp.set_nodelay(true)
        .map_err(|error| format!("TCP_NODELAY: {error}"))?;
    let mut stream: BoxStream = match &inner.tls {
        None => Box::new(tcp),
        Some(tls) => Box::new(
            tls.connector
                .connect(TlsContext::server_name(node), tcp)
                .await
                .map_err(|error| format!("TLS: {error}"))?,
        ),
    };
    let hello = Handshake {
        cluster: inner.config.cluster,
        from: inner.config.node,
        to: node,
        lane,
    };
    stream
        .write_all(&wire::encode_handshake(&hello))
        .await
        .map_err(|error| format!("writing the handshake: {error}"))?;
    stream
        .flush()
        .await
        .map_err(|error| format!("writing the handshake: {error}"))?;
    // The reply proves the listener is the node we meant, in our cluster. It is read byte by
    // byte-exact frame length, so nothing after it is consumed here.
    let reply = match read_one_frame(&mut stream, inner.config.frame_bytes_max).await? {
        Frame::Handshake(reply) => reply,
        Frame::Refusal(refusal) => {
            let ours = refusal.cluster == inner.config.cluster
                && refusal.from == node
                && refusal.to == inner.config.node;
            if ours && refusal.reason == wire::RefusalReason::Removed {
                inner.core.report_removed(node);
                return Err("the peer refused this node: it was removed from the cluster".into());
            }
            return Err(format!("the peer refused this node: {refusal:?}"));
        }
        Frame::Message(_) => {
            return Err("the peer answered with a message, not a handshake".into());
        }
    };
    wire::check_handshake(
        &reply,
        inner.config.cluster,
        inner.config.node,
        |id| id == node,
        Some(node),
    )
    .map_err(|error| format!("the peer's handshake: {error}"))?;
    Ok(stream)
}

/// Reads exactly one frame, without reading past it.
async fn read_one_frame(stream: &mut BoxStream, frame_bytes_max: usize) -> Result<Frame, String> {
    let mut header = [0u8; wire::HEADER_BYTES];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|error| format!("reading a frame: {error}"))?;
    let frame_bytes = match wire::check(&header, frame_bytes_max) {
        Ok(Some(frame_bytes)) => frame_bytes,
        Ok(None) => {
            let length = u32::from_be_bytes(header[..4].try_into().expect("four bytes"));
            wire::LENGTH_BYTES + length as usize
        }
        Err(error) => return Err(error.to_string()),
    };
    let mut frame = vec![0u8; frame_bytes];
    frame[..wire::HEADER_BYTES].copy_from_slice(&header);
    stream
        .read_exact(&mut frame[wire::HEADER_BYTES..])
        .await
        .map_err(|error| format!("reading a frame: {error}"))?;
    wire::parse(&frame, frame_bytes_max).map_err(|error| error.to_string())
}

/// Writes queued frames until the connection fails, the peer closes it, or the writer stops.
/// Frames queued together go out in one write of up to `write_batch_bytes_max`.
async fn pump(
    inner: &Inner,
    stream: BoxStream,
    first: Bytes,
    queue: &mut mpsc::Receiver<Bytes>,
    shutdown: &mut Shutdown,
) -> Ended {
    let (mut reader, writer) = tokio::io::split(stream);
    let mut writer = BufWriter::with_capacity(inner.config.write_batch_bytes_max, writer);
    let mut next = Some(first);
    let mut probe = [0u8; 1];
    loop {
        if let Some(frame) = next.take() {
            let batch = write_batch(
                &mut writer,
                frame,
                queue,
                inner.config.write_batch_bytes_max,
            );
            tokio::select! {
                _ = shutdown.wait() => return Ended::Stop,
                written = batch => if let Err(error) = written {
                    tracing::debug!(%error, "write failed");
                    return Ended::Lost;
                },
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return Ended::Stop,
            frame = queue.recv() => match frame {
                Some(frame) => next = Some(frame),
                None => return Ended::Stop,
            },
            // The listener never writes after its handshake: a read that returns is the
            // connection closing (or a misbehaving peer), either way this connection is done.
            _ = reader.read(&mut probe) => return Ended::Lost,
        }
    }
}

async fn write_batch<W: AsyncWrite + Unpin>(
    writer: &mut BufWriter<W>,
    first: Bytes,
    queue: &mut mpsc::Receiver<Bytes>,
    write_batch_bytes_max: usize,
) -> std::io::Result<()> {
    let mut batched = first.len();
    writer.write_all(&first).await?;
    while batched < write_batch_bytes_max {
        let Ok(frame) = queue.try_recv() else { break };
        batched += frame.len();
        writer.write_all(&frame).await?;
    }
    writer.flush().await
}

// ---------------------------------------------------------------------------------------------
// Inbound: the listener and one reader per connection.

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, inbound: Inbound) {
    let mut shutdown = inner.core.shutdown.clone();
    let permits = Arc::new(Semaphore::new(inner.config.inbound_connections_max));
    loop {
        // Wait for a free slot before accepting: extra peers wait in the kernel's backlog.
        let permit = tokio::select! {
            _ = shutdown.wait() => return,
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // For example, out of file descriptors: wait rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let connection_inner = Arc::clone(&inner);
        let connection_inbound = inbound.clone();
        inner.core.tasks.spawn(async move {
            let _permit = permit;
            serve_inbound(connection_inner, tcp, remote, connection_inbound).await;
        });
    }
}

async fn serve_inbound(inner: Arc<Inner>, tcp: TcpStream, remote: SocketAddr, inbound: Inbound) {
    let mut shutdown = inner.core.shutdown.clone();
    let opened = timeout(inner.config.handshake_timeout, open_inbound(&inner, tcp));
    let opened = tokio::select! {
        _ = shutdown.wait() => return,
        opened = opened => opened,
    };
    let accepted = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(error)) => {
            tracing::warn!(%remote, %error, "refused a connection");
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "refused a connection: no handshake in time");
            return;
        }
    };
    let peer = accepted.peer;
    if let Err(error) = read_messages(&inner, accepted, &inbound, &mut shutdown).await {
        tracing::warn!(%remote, %peer, %error, "closed a connection");
    }
}

type Frames = FrameReader<tokio::io::ReadHalf<BoxStream>>;

/// An accepted, authenticated connection. Only the reader is used; the write half is kept so
/// the connection closes when both are dropped, not before.
struct Accepted {
    frames: Frames,
    _writer: tokio::io::WriteHalf<BoxStream>,
    peer: NodeId,
}

/// Runs TLS if configured, reads and checks the handshake, and answers it.
async fn open_inbound(inner: &Inner, tcp: TcpStream) -> Result<Accepted, String> {
    tcp.set_nodelay(true)
        .map_err(|error| format!("TCP_NODELAY: {error}"))?;
    let (stream, certificates): (BoxStream, Option<Vec<CertificateDer<'static>>>) = match &inner.tls
    {
        None => (Box::new(tcp), None),
        Some(tls) => {
            let stream = tls
                .acceptor
                .accept(tcp)
                .await
                .map_err(|error| format!("TLS: {error}"))?;
            let certificates = stream.get_ref().1.peer_certificates().map(<[_]>::to_vec);
            (Box::new(stream), Some(certificates.unwrap_or_default()))
        }
    };
    let (reader, mut writer) = tokio::io::split(stream);
    let mut frames = FrameReader::new(reader, inner.config.frame_bytes_max);
    let (cluster, node) = (inner.config.cluster, inner.config.node);
    // A removed node passes the handshake check only to be told it was removed.
    let known = |peer| inner.is_known(peer) || inner.core.is_removed(peer);
    let handshake = read_inbound_handshake(&mut frames, cluster, node, known)
        .await?
        .ok_or("closed before the handshake")?;
    if let (Some(tls), Some(certificates)) = (&inner.tls, &certificates) {
        if !tls.names(certificates, handshake.from) {
            return Err(format!(
                "the peer's certificate does not name {}, whom its handshake claims",
                handshake.from
            ));
        }
    }
    if inner.core.is_removed(handshake.from) {
        let refusal = wire::Refusal {
            cluster,
            from: node,
            to: handshake.from,
            reason: wire::RefusalReason::Removed,
        };
        // Best effort: the dialler learns of its removal, or redials and is told again.
        let _ = writer.write_all(&wire::encode_refusal(&refusal)).await;
        let _ = writer.flush().await;
        return Err(format!(
            "{} was removed from the cluster: told so and refused",
            handshake.from
        ));
    }
    let reply = Handshake {
        cluster: inner.config.cluster,
        from: inner.config.node,
        to: handshake.from,
        lane: handshake.lane,
    };
    writer
        .write_all(&wire::encode_handshake(&reply))
        .await
        .map_err(|error| format!("answering the handshake: {error}"))?;
    writer
        .flush()
        .await
        .map_err(|error| format!("answering the handshake: {error}"))?;
    Ok(Accepted {
        frames,
        _writer: writer,
        peer: handshake.from,
    })
}

/// Delivers the messages of an authenticated connection until it ends.
async fn read_messages(
    inner: &Inner,
    mut accepted: Accepted,
    inbound: &Inbound,
    shutdown: &mut Shutdown,
) -> Result<(), String> {
    let mut removals_seen = 0;
    loop {
        let frame = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            frame = accepted.frames.next() => frame,
        };
        let message = match frame {
            Ok(Some(Frame::Message(message))) => message,
            Ok(Some(Frame::Handshake(_))) => return Err("a second handshake".into()),
            Ok(Some(Frame::Refusal(_))) => return Err("a refusal from a dialler".into()),
            Ok(None) => return Ok(()),
            Err(ReadError::Io(error)) => return Err(format!("read failed: {error}")),
            Err(ReadError::Frame(error)) => return Err(format!("bad frame: {error}")),
        };
        wire::check_sender(&message, accepted.peer).map_err(|error| error.to_string())?;
        if inner.core.removed_since(&mut removals_seen, accepted.peer) {
            // Its next dial is answered with a refusal that tells it so.
            return Err("the peer was removed from the cluster".into());
        }
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            delivered = inbound.deliver(message) => {
                delivered.map_err(|error| format!("delivery failed: {error}"))?;
            }
        }
    }
}
