//! The HTTP server's connections: hyper serves each one (HTTP/1.1), and this module bounds how
//! many a node holds and how long a client may take, so that no client, slow or idle or many,
//! blocks the node for others.
//!
//! # A connection's phases and their timeouts
//!
//! | phase | from | until | closed after |
//! | --- | --- | --- | --- |
//! | TLS handshake (HTTPS only) | the accept | the handshake is complete | `http_header_read_timeout_ms` |
//! | idle | the accept (with HTTPS, the end of the handshake), or the end of an answer | the first byte of the next request | `http_keep_alive_idle_timeout_ms` |
//! | reading headers | that first byte | the request's head is complete | `http_header_read_timeout_ms` |
//! | busy | the complete head | the answer is handed to the socket | never by a timeout or the limit |
//!
//! A busy request is bounded otherwise: its body must arrive within `http_body_read_timeout_ms`
//! of its head (else it is answered 408 `body_read_timeout` and the connection closes), and
//! its handler waits at most `request_timeout_ms`. Hyper's own header read timeout is not used:
//! it also runs while a keep-alive connection is idle, so it cannot be set apart from the idle
//! timeout.
//!
//! With HTTPS ([`crate::tls`]), the TLS handshake is part of the header-read phase: it counts
//! from the accept, so a client that opens a connection and never sends its ClientHello (or
//! stalls in the middle of the handshake) is closed after `http_header_read_timeout_ms`, like
//! one that stalls in its request head. Bytes count as a request's first byte only once
//! decrypted. A handshake that fails (plain HTTP on the HTTPS port, a client certificate
//! missing or not signed by the client CA) closes the connection before any request is read.
//!
//! # The connection limit
//!
//! A node holds at most `http_connections_max` connections, and keeps accepting. A connection
//! accepted at the limit makes the node close its oldest connection that is idle or reading
//! headers (or still in its TLS handshake); a busy connection is never cut mid-request. So
//! idle or half-sent connections, however many, cannot keep a new client out: each new one
//! pushes an old one out. Only when every
//! held connection is busy (the node is then answering `http_connections_max` requests at once,
//! each bounded as above) is the new connection closed at once.
//!
//! # Limits on the request head
//!
//! A request target longer than `http_uri_bytes_max` is answered 414 `uri_too_long`, and headers
//! over `http_header_bytes_max` (names, values and 4 bytes per line) 431 `headers_too_large`,
//! both JSON like every other error. A head too large even for hyper's buffer (twice the two
//! limits, plus 8 KiB), more than 100 headers, or one that is not HTTP at all, is answered by
//! hyper itself with an empty 431 or 400, and the connection closes.

use crate::api::ApiError;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

/// The HTTP server's limits (the `http_*` settings of [`crate::config::NodeConfig`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections held at once; see the module docs for what happens past it.
    pub connections_max: usize,
    /// How long a request's head may take from its first byte.
    pub header_read_timeout: Duration,
    /// How long a request's body may take after its head.
    pub body_read_timeout: Duration,
    /// How long a connection may stay idle before and between requests.
    pub keep_alive_idle_timeout: Duration,
    /// Longest request target (path and query), in bytes.
    pub uri_bytes_max: usize,
    /// Most bytes of request headers: names, values and 4 bytes per line.
    pub header_bytes_max: usize,
}

impl HttpLimits {
    /// Hyper's read buffer, which bounds a request head: room for a head somewhat over the
    /// limits, so that those get the JSON answers, not hyper's empty ones.
    fn read_buffer_bytes(&self) -> usize {
        (2 * (self.uri_bytes_max + self.header_bytes_max) + 8192).max(8192)
    }
}

/// The error a request body yields when it did not arrive within `http_body_read_timeout_ms`.
#[derive(Debug)]
pub struct BodyReadTimeout {
    /// The timeout that passed.
    pub timeout: Duration,
}

impl fmt::Display for BodyReadTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request body did not arrive within http_body_read_timeout_ms ({} ms)",
            self.timeout.as_millis()
        )
    }
}

impl std::error::Error for BodyReadTimeout {}

/// Why the node closed a connection, as the `reason` label of
/// `kv_http_connections_closed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Idle past `http_keep_alive_idle_timeout_ms`.
    IdleTimeout,
    /// Headers not complete within `http_header_read_timeout_ms`.
    HeaderTimeout,
    /// A body not complete within `http_body_read_timeout_ms` (answered 408).
    BodyTimeout,
    /// The oldest without a request in progress, to make room for a new one at
    /// `http_connections_max`.
    Limit,
    /// The oldest without a request in progress, because the process ran out of files.
    OutOfFiles,
    /// A new connection closed at once: every held one had a request in progress.
    AllBusy,
    /// The TLS handshake failed: not TLS, no client certificate or one the client CA did not
    /// sign, or the client gave up during it.
    TlsHandshake,
}

impl CloseReason {
    /// Every reason, in metric order.
    pub const ALL: [CloseReason; 7] = [
        CloseReason::IdleTimeout,
        CloseReason::HeaderTimeout,
        CloseReason::BodyTimeout,
        CloseReason::Limit,
        CloseReason::OutOfFiles,
        CloseReason::AllBusy,
        CloseReason::TlsHandshake,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::BodyTimeout => "body_timeout",
            CloseReason::Limit => "limit",
            CloseReason::OutOfFiles => "out_of_files",
            CloseReason::AllBusy => "all_busy",
            CloseReason::TlsHandshake => "tls_handshake",
        }
    }
}

/// The HTTP server's counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Connections held now.
    open: AtomicU64,
    /// Connections the node closed, by [`CloseReason`].
    closed: [AtomicU64; CloseReason::ALL.len()],
}

impl HttpCounters {
    /// Connections held now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections the node closed for `reason` since it started.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize].load(Ordering::Relaxed)
    }

    fn record_close(&self, reason: CloseReason) {
        self.closed[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Where a connection is; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing of the next request received since `since` (the accept or the last answer).
    Idle { since: Instant },
    /// Part of a request head received, its first byte at `since`; or, with HTTPS, the TLS
    /// handshake under way since the accept at `since`.
    ReadingHeaders { since: Instant },
    /// `requests` (at least 1) requests between their complete head and the end of their
    /// answer.
    Busy { requests: usize },
    /// Closed by the node: no request may start on it any more.
    Closed,
}

/// One connection's state, shared by its task, its stream, its requests and the registry.
struct Connection {
    phase: Mutex<Phase>,
    /// Wakes the connection's task: its phase changed, or the node closed it.
    wake: Notify,
    /// A request's body was too slow: the connection closes after that request's answer.
    body_timed_out: AtomicBool,
}

impl Connection {
    fn new(now: Instant) -> Connection {
        Connection {
            phase: Mutex::new(Phase::Idle { since: now }),
            wake: Notify::new(),
            body_timed_out: AtomicBool::new(false),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        // The phase is a plain value: one left by a panicking holder is still consistent.
        self.phase
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An HTTPS connection: its handshake is bounded as a request head is (see the module
    /// docs).
    fn awaiting_handshake(now: Instant) -> Connection {
        let connection = Connection::new(now);
        *connection.phase() = Phase::ReadingHeaders { since: now };
        connection
    }

    /// The TLS handshake is complete: the connection is idle until its first request's first
    /// byte. False if the node closed it meanwhile.
    fn handshake_done(&self, now: Instant) -> bool {
        let mut phase = self.phase();
        match *phase {
            Phase::Closed => false,
            Phase::ReadingHeaders { .. } => {
                *phase = Phase::Idle { since: now };
                drop(phase);
                self.wake.notify_one();
                true
            }
            other => unreachable!("a handshake ended on a connection in phase {other:?}"),
        }
    }

    /// Bytes arrived: an idle connection starts reading a request head.
    fn received(&self, now: Instant) {
        let mut phase = self.phase();
        if let Phase::Idle { .. } = *phase {
            *phase = Phase::ReadingHeaders { since: now };
            drop(phase);
            // Its deadline moved (the header timeout is usually the shorter one).
            self.wake.notify_one();
        }
    }

    /// A request's head is complete; false if the node closed the connection already.
    fn begin_request(&self) -> bool {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Closed => return false,
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            Phase::Idle { .. } | Phase::ReadingHeaders { .. } => Phase::Busy { requests: 1 },
        };
        true
    }

    /// A request's answer was handed over (or the request was dropped).
    fn end_request(&self, now: Instant) {
        let mut phase = self.phase();
        match *phase {
            Phase::Busy { requests } => {
                assert!(requests >= 1, "a busy connection has a request");
                *phase = match requests {
                    1 => Phase::Idle { since: now },
                    _ => Phase::Busy {
                        requests: requests - 1,
                    },
                };
            }
            other => unreachable!("a request ended on a connection in phase {other:?}"),
        }
        drop(phase);
        self.wake.notify_one();
    }

    /// When the current phase times out (never while busy or closed).
    fn deadline(&self, limits: &HttpLimits) -> Option<Instant> {
        match *self.phase() {
            Phase::Idle { since } => Some(since + limits.keep_alive_idle_timeout),
            Phase::ReadingHeaders { since } => Some(since + limits.header_read_timeout),
            Phase::Busy { .. } | Phase::Closed => None,
        }
    }

    /// Closes the connection unless a request is in progress; with `only_if_expired`, only if
    /// its phase has also timed out by `now`. Returns the phase it was closed from (`Closed` if
    /// it was already), or `None` if it stays open.
    fn close_unless_busy(
        &self,
        limits: &HttpLimits,
        only_if_expired: Option<Instant>,
    ) -> Option<Phase> {
        let mut phase = self.phase();
        let expired = |since: Instant, timeout: Duration| {
            only_if_expired.is_none_or(|now| since + timeout <= now)
        };
        let close = match *phase {
            Phase::Busy { .. } => false,
            Phase::Closed => true,
            Phase::Idle { since } => expired(since, limits.keep_alive_idle_timeout),
            Phase::ReadingHeaders { since } => expired(since, limits.header_read_timeout),
        };
        close.then(|| std::mem::replace(&mut *phase, Phase::Closed))
    }
}

/// The connections a node holds, oldest first (IDs are given in accept order).
///
/// Invariant: at most `connections_max` entries.
struct Registry {
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
    counters: Arc<HttpCounters>,
}

impl Registry {
    fn new(counters: Arc<HttpCounters>) -> Registry {
        Registry {
            open: Mutex::default(),
            counters,
        }
    }

    fn open(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds a new connection; at the limit, first closes the oldest one without a request in
    /// progress. False (and nothing changed) when every held connection is busy.
    fn admit(&self, id: u64, connection: Arc<Connection>, limits: &HttpLimits) -> bool {
        let mut open = self.open();
        assert!(open.len() <= limits.connections_max);
        if open.len() == limits.connections_max {
            if !self.close_oldest_not_busy(&mut open, limits) {
                self.counters.record_close(CloseReason::AllBusy);
                return false;
            }
            self.counters.record_close(CloseReason::Limit);
        }
        let previous = open.insert(id, connection);
        assert!(previous.is_none(), "connection IDs are never reused");
        assert!(open.len() <= limits.connections_max);
        self.counters
            .open
            .store(open.len() as u64, Ordering::Relaxed);
        true
    }

    /// Closes the oldest connection without a request in progress, if there is one.
    fn close_oldest_not_busy(
        &self,
        open: &mut BTreeMap<u64, Arc<Connection>>,
        limits: &HttpLimits,
    ) -> bool {
        let oldest_not_busy = open
            .iter()
            .find(|(_, held)| held.close_unless_busy(limits, None).is_some())
            .map(|(id, held)| (*id, held.clone()));
        let Some((id, closed)) = oldest_not_busy else {
            return false;
        };
        open.remove(&id);
        self.counters
            .open
            .store(open.len() as u64, Ordering::Relaxed);
        // Its task drops it, which closes the socket.
        closed.wake.notify_one();
        true
    }

    /// Frees a file descriptor when the process has none left to accept with.
    fn make_room(&self, limits: &HttpLimits) -> bool {
        let made_room = self.close_oldest_not_busy(&mut self.open(), limits);
        if made_room {
            self.counters.record_close(CloseReason::OutOfFiles);
        }
        made_room
    }

    fn remove(&self, id: u64) {
        let mut open = self.open();
        open.remove(&id);
        self.counters
            .open
            .store(open.len() as u64, Ordering::Relaxed);
    }
}

/// Serves `router` on `listener` until `stop` resolves, then stops accepting, closes the
/// connections that have no request in progress, lets the busy ones finish their request, and
/// returns once every connection is closed.
/// `counters` are kept up to date for `/metrics`. With `tls`, every connection is HTTPS (see
/// the module docs for the handshake's timeout).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    counters: Arc<HttpCounters>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let acceptor = tls.map(TlsAcceptor::from);
    let registry = Arc::new(Registry::new(counters));
    let (stopping_sender, stopping) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let mut refused_warned_at: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        while tasks.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors (the process limit is below http_connections_max):
                // close an idle connection, as the limit would, so new clients still get in.
                let out_of_files =
                    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                let made_room = out_of_files && registry.make_room(&limits);
                tracing::warn!(%error, made_room, "accepting an HTTP connection failed");
                // Give the closed connection's task time to drop its socket; do not spin.
                tokio::time::sleep(Duration::from_millis(if made_room { 1 } else { 50 })).await;
                continue;
            }
        };
        // Small requests and answers: do not wait to fill a segment.
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let connection = Arc::new(if acceptor.is_some() {
            Connection::awaiting_handshake(Instant::now())
        } else {
            Connection::new(Instant::now())
        });
        if !registry.admit(next_id, connection.clone(), &limits) {
            // Dropping the stream closes it. One warning a second at most: this is overload.
            let now = Instant::now();
            if refused_warned_at.is_none_or(|at| now >= at + Duration::from_secs(1)) {
                refused_warned_at = Some(now);
                tracing::warn!(
                    connections_max = limits.connections_max,
                    "every HTTP connection has a request in progress: closing a new one"
                );
            }
            continue;
        }
        let serving = Serving {
            id: next_id,
            connection,
            registry: registry.clone(),
            limits: limits.clone(),
        };
        tasks.spawn(serve_connection(
            stream,
            serving,
            router.clone(),
            acceptor.clone(),
            stopping.clone(),
        ));
    }
    let _ = stopping_sender.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Serves one connection until the client closes it, a timeout or the limit closes it, or the
/// server stops.
async fn serve_connection(
    stream: TcpStream,
    serving: Serving,
    router: Router,
    acceptor: Option<TlsAcceptor>,
    mut stopping: watch::Receiver<bool>,
) {
    match acceptor {
        None => serving.serve_http(stream, router, &mut stopping).await,
        Some(acceptor) => {
            if let Some(stream) = serving.handshake(&acceptor, stream, &mut stopping).await {
                serving.serve_http(stream, router, &mut stopping).await;
            }
        }
    }
    // Counted here: hyper may close the connection itself in the poll that ran out the body's
    // time, before the serving loop sees it.
    if serving.connection.body_timed_out.load(Ordering::Acquire) {
        serving
            .registry
            .counters
            .record_close(CloseReason::BodyTimeout);
    }
    serving.registry.remove(serving.id);
}

/// What serving one connection needs.
struct Serving {
    /// The connection's ID in the registry.
    id: u64,
    connection: Arc<Connection>,
    registry: Arc<Registry>,
    limits: Arc<HttpLimits>,
}

impl Serving {
    /// Runs the TLS handshake within the header-read phase the connection started in. `None`
    /// (the connection then ends) when it failed, timed out, or the node closed the connection
    /// meanwhile.
    async fn handshake(
        &self,
        acceptor: &TlsAcceptor,
        stream: TcpStream,
        stopping: &mut watch::Receiver<bool>,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let accepting = acceptor.accept(stream);
        tokio::pin!(accepting);
        loop {
            let deadline = self.connection.deadline(&self.limits);
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                accepted = accepting.as_mut() => {
                    return match accepted {
                        Ok(stream) => self.connection.handshake_done(Instant::now()).then_some(stream),
                        Err(error) => {
                            tracing::debug!(%error, "a TLS handshake failed");
                            self.registry.counters.record_close(CloseReason::TlsHandshake);
                            None
                        }
                    };
                }
                () = self.connection.wake.notified() => {}
                () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {}
                _ = stopping.changed(), if !*stopping.borrow() => {}
            }
            if self.close_if_due(*stopping.borrow()) {
                return None;
            }
        }
    }

    /// Closes the connection, unless a request is in progress, if the node closed it, its
    /// phase timed out, or the server `stop`s; true if it did (the caller then drops it, which
    /// closes the socket).
    fn close_if_due(&self, stop: bool) -> bool {
        let only_if_expired = (!stop).then(Instant::now);
        let Some(closed_from) = self
            .connection
            .close_unless_busy(&self.limits, only_if_expired)
        else {
            return false;
        };
        let timed_out = match closed_from {
            _ if stop => None,
            Phase::Idle { .. } => Some(CloseReason::IdleTimeout),
            Phase::ReadingHeaders { .. } => Some(CloseReason::HeaderTimeout),
            // Closed by the registry, which counted it.
            Phase::Closed | Phase::Busy { .. } => None,
        };
        if let Some(reason) = timed_out {
            self.registry.counters.record_close(reason);
        }
        true
    }

    /// Serves HTTP/1.1 on `stream` (TCP, or TLS over it) until the connection ends.
    async fn serve_http<S>(&self, stream: S, router: Router, stopping: &mut watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let connection = &self.connection;
        let limits = &self.limits;
        let io = TokioIo::new(TrackedStream {
            stream,
            connection: connection.clone(),
        });
        let service = {
            let (connection, limits) = (connection.clone(), limits.clone());
            hyper::service::service_fn(move |request| {
                handle(request, router.clone(), connection.clone(), limits.clone())
            })
        };
        // No timer for hyper: the phases time out here (see the module docs).
        let served = hyper::server::conn::http1::Builder::new()
            .max_buf_size(limits.read_buffer_bytes())
            .serve_connection(io, service);
        tokio::pin!(served);
        let mut draining = false;
        loop {
            let deadline = connection.deadline(limits);
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                result = served.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "an HTTP connection ended with an error");
                    }
                    break;
                }
                () = connection.wake.notified() => {}
                () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {}
                _ = stopping.changed(), if !*stopping.borrow() => {}
            }
            let stop = *stopping.borrow();
            // Closed by the registry, timed out, or the server stops: unless a request is in
            // progress, the connection ends here.
            if self.close_if_due(stop) {
                break;
            }
            let body_timed_out = connection.body_timed_out.load(Ordering::Acquire);
            if (stop || body_timed_out) && !draining {
                // Hyper finishes the request in progress, then closes.
                served.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// Answers one request: checks its head, gives its body a deadline, runs the router, and keeps
/// the connection busy until the answer is handed over.
async fn handle(
    request: Request<Incoming>,
    mut router: Router,
    connection: Arc<Connection>,
    limits: Arc<HttpLimits>,
) -> Result<Response<TrackedBody>, Infallible> {
    if !connection.begin_request() {
        // The node closed the connection as this head completed: nothing is done, and the
        // client sees the connection close (as for any keep-alive race).
        let refused = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection_closed",
            "the node closed this connection; nothing was done; retry on a new connection",
        );
        return Ok(refused.into_response().map(TrackedBody::untracked));
    }
    let request_guard = RequestGuard {
        connection: connection.clone(),
    };
    let response = match check_head(&request, &limits) {
        Err(refused) => refused.into_response(),
        Ok(()) => {
            let deadline = Instant::now() + limits.body_read_timeout;
            let timeout = limits.body_read_timeout;
            let request = request.map(|body| {
                Body::new(DeadlineBody {
                    inner: body,
                    deadline,
                    timeout,
                    timer: None,
                    connection: connection.clone(),
                })
            });
            // A Router is always ready (its poll_ready returns Ready at once).
            let response = match tower_service::Service::call(&mut router, request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if connection.body_timed_out.load(Ordering::Acquire) {
                // The handler saw its body fail; this is the reason it should say.
                let error = BodyReadTimeout { timeout };
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_read_timeout",
                    format!("{error}; nothing was done"),
                )
                .into_response()
            } else {
                response
            }
        }
    };
    Ok(response.map(|body| TrackedBody {
        inner: body,
        _request: Some(request_guard),
    }))
}

/// The request target and the headers within their limits, or the JSON answer that says not.
fn check_head(request: &Request<Incoming>, limits: &HttpLimits) -> Result<(), ApiError> {
    let uri = request.uri();
    let uri_bytes = uri
        .path_and_query()
        .map_or(0, |target| target.as_str().len())
        + uri
            .authority()
            .map_or(0, |authority| authority.as_str().len());
    if uri_bytes > limits.uri_bytes_max {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request target has {uri_bytes} bytes; http_uri_bytes_max is {}",
                limits.uri_bytes_max
            ),
        ));
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > limits.header_bytes_max {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request headers have {header_bytes} bytes; http_header_bytes_max is {}",
                limits.header_bytes_max
            ),
        ));
    }
    Ok(())
}

/// Ends a request's busy phase when dropped: when hyper has taken the whole answer, or when
/// the request is dropped unanswered.
struct RequestGuard {
    connection: Arc<Connection>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.connection.end_request(Instant::now());
    }
}

/// An answer's body, holding its request's busy phase until hyper drops it.
struct TrackedBody {
    inner: Body,
    _request: Option<RequestGuard>,
}

impl TrackedBody {
    fn untracked(inner: Body) -> TrackedBody {
        TrackedBody {
            inner,
            _request: None,
        }
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails with [`BodyReadTimeout`] once its deadline passes.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    timeout: Duration,
    /// Made on the first wait only: most bodies are empty or already buffered.
    timer: Option<Pin<Box<Sleep>>>,
    connection: Arc<Connection>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(context) {
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(context).is_pending() {
            return Poll::Pending;
        }
        this.connection
            .body_timed_out
            .store(true, Ordering::Release);
        this.connection.wake.notify_one();
        let error = BodyReadTimeout {
            timeout: this.timeout,
        };
        Poll::Ready(Some(Err(Box::new(error))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's socket (or its TLS stream, whose bytes are counted once decrypted) that
/// tells the connection when bytes arrive.
struct TrackedStream<S> {
    stream: S,
    connection: Arc<Connection>,
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buffer.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(context, buffer);
        if buffer.filled().len() > before {
            self.connection.received(Instant::now());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections_max: usize) -> HttpLimits {
        HttpLimits {
            connections_max,
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(10),
            keep_alive_idle_timeout: Duration::from_secs(60),
            uri_bytes_max: 8192,
            header_bytes_max: 16384,
        }
    }

    /// At the limit the oldest connection without a request in progress is closed, busy ones
    /// are skipped, and when all are busy the new one is refused and nothing changes.
    #[test]
    fn the_oldest_connection_not_busy_makes_room() {
        let limits = limits(3);
        let now = Instant::now();
        let registry = Registry::new(Arc::default());
        let held: Vec<Arc<Connection>> = (0..3).map(|_| Arc::new(Connection::new(now))).collect();
        for (id, connection) in held.iter().enumerate() {
            assert!(registry.admit(id as u64, connection.clone(), &limits));
        }
        assert!(held[0].begin_request());
        held[2].received(now);
        assert!(registry.admit(3, Arc::new(Connection::new(now)), &limits));
        assert_eq!(*held[1].phase(), Phase::Closed, "the oldest idle one");
        assert!(!held[1].begin_request(), "no request starts on it");
        assert!(matches!(*held[0].phase(), Phase::Busy { requests: 1 }));
        assert!(registry.admit(4, Arc::new(Connection::new(now)), &limits));
        assert_eq!(*held[2].phase(), Phase::Closed, "one reading headers");
        let ids: Vec<u64> = registry.open().keys().copied().collect();
        assert_eq!(ids, [0, 3, 4]);

        assert_eq!(registry.counters.closed(CloseReason::Limit), 2);
        assert_eq!(registry.counters.open(), 3);

        // Every one busy: the new one is refused.
        let registry = Registry::new(Arc::default());
        for id in 0..3 {
            let connection = Arc::new(Connection::new(now));
            assert!(connection.begin_request());
            assert!(registry.admit(id, connection, &limits));
        }
        assert!(!registry.admit(3, Arc::new(Connection::new(now)), &limits));
        assert_eq!(registry.open().len(), 3);
        assert_eq!(registry.counters.closed(CloseReason::AllBusy), 1);
    }

    /// An HTTPS connection starts on the header clock at the accept, may be pushed out at the
    /// limit while its handshake runs, and is idle (on the keep-alive clock) once it is done.
    #[test]
    fn a_tls_handshake_runs_on_the_header_clock() {
        let limits = limits(1);
        let start = Instant::now();
        let at = |seconds| Some(start + Duration::from_secs(seconds));
        let connection = Connection::awaiting_handshake(start);
        assert_eq!(connection.deadline(&limits), at(5), "the header timeout");
        assert_eq!(connection.close_unless_busy(&limits, at(4)), None);
        let done = start + Duration::from_secs(2);
        assert!(connection.handshake_done(done));
        assert_eq!(
            connection.deadline(&limits),
            Some(done + Duration::from_secs(60))
        );
        connection.received(done);
        assert_eq!(
            connection.deadline(&limits),
            Some(done + Duration::from_secs(5))
        );

        let registry = Registry::new(Arc::default());
        let handshaking = Arc::new(Connection::awaiting_handshake(start));
        assert!(registry.admit(0, handshaking.clone(), &limits));
        assert!(registry.admit(1, Arc::new(Connection::new(start)), &limits));
        assert_eq!(
            *handshaking.phase(),
            Phase::Closed,
            "pushed out at the limit"
        );
        assert!(
            !handshaking.handshake_done(done),
            "a closed one stays closed"
        );
        assert_eq!(registry.counters.closed(CloseReason::Limit), 1);
    }

    /// A phase expires after its own timeout: idle after the keep-alive one, reading headers
    /// after the header one from the first byte; busy never.
    #[test]
    fn each_phase_expires_after_its_timeout() {
        let limits = limits(3);
        let start = Instant::now();
        let connection = Connection::new(start);
        assert_eq!(
            connection.deadline(&limits),
            Some(start + Duration::from_secs(60))
        );
        let at = |seconds| Some(start + Duration::from_secs(seconds));
        assert_eq!(connection.close_unless_busy(&limits, at(59)), None);
        let first_byte = start + Duration::from_secs(1);
        connection.received(first_byte);
        assert_eq!(connection.deadline(&limits), at(6));
        assert_eq!(connection.close_unless_busy(&limits, at(5)), None);
        assert!(connection.begin_request());
        assert_eq!(connection.deadline(&limits), None);
        assert_eq!(connection.close_unless_busy(&limits, at(1000)), None);
        assert_eq!(
            connection.close_unless_busy(&limits, None),
            None,
            "not forced"
        );
        let answered = start + Duration::from_secs(7);
        connection.end_request(answered);
        assert_eq!(connection.deadline(&limits), at(67));
        assert_eq!(
            connection.close_unless_busy(&limits, at(67)),
            Some(Phase::Idle { since: answered })
        );
    }
}
