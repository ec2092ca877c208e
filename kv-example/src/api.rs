//! The HTTP/JSON API (axum). Every node answers every request: writes and linearizable reads go
//! through Raft, which forwards a follower's proposals to the leader.
//!
//! | method and path | answer |
//! | --- | --- |
//! | `PUT /v1/kv/{key}` (body: the value) | 200 `{"index": N}` |
//! | `GET /v1/kv/{key}?consistency=linearizable\|lease\|log\|stale` | 200 with the raw value, or 404 |
//! | `DELETE /v1/kv/{key}` | 200 `{"index": N, "deleted": bool}` |
//! | `POST /v1/kv/{key}/cas` with `{"expected": "old" or null, "new": "value"}` (or `expected_base64`, `new_base64`) | 200 `{"swapped": true, "previous": ...}` or 409 `{"swapped": false, "current": ...}` |
//! | `GET /v1/kv?prefix=P&start=S&limit=N&consistency=...` | 200 `{"entries": [{"key", "value"}], "more": bool, "next": key or null}` |
//! | `GET /v1/status` | JSON: role, term, indexes, membership, snapshot, per-follower progress |
//! | `GET /v1/members`, `POST /v1/members`, `POST /v1/members/{id}/promote`, `DELETE /v1/members/{id}` | membership (see [`admin`]) |
//! | `POST /v1/leader/transfer` with `{"to": N}` | 200 `{"leader": N}` (see [`admin`]) |
//! | `POST /v1/snapshot` | this node takes a snapshot: 200 `{"index", "term", "bytes"}` |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz`, `GET /readyz` | 200 or 503 with JSON |
//!
//! Keys are bytes, any bytes: the path segment is percent-decoded to the key's bytes, so a key
//! holding `/` is sent as `a%2Fb` and the bytes 0x00 0xFF as `%00%FF`; a `%` not followed by
//! two hex digits is a 400. Scan parameters are percent-decoded to bytes the same way (`+` is
//! a space, as in any query string), or given as standard base64 (`prefix_base64=`,
//! `start_base64=`). In JSON answers, keys and values are strings when they are UTF-8, else
//! `<name>_base64` (`key_base64`, `value_base64`, `next_base64`, `previous_base64`,
//! `current_base64`) holds their base64. A compare-and-swap takes each value as text
//! (`expected`, `new`) or as base64 (`expected_base64`, `new_base64`), one of each pair; both
//! are limited by `value_bytes_max` once decoded, whatever their JSON escaping.
//!
//! A scan answers at most `limit` pairs and about `scan_bytes_max` bytes; when either cut it
//! short, `more` is true and `next` (or `next_base64`) is the first key it left out: the same
//! request with `start=` that key (inclusive) continues where the page ended, in the same key
//! order, until `more` is false. Each page is a read of its own (not one snapshot): a key
//! written between two requests shows in the later page only if it sorts at or after that
//! page's start.
//!
//! Every answer of the router carries a [`NODE_HEADER`] (`x-kv-node`) header with the node's
//! ID, so a client can tell a kvnode's answer (a 404 for a missing key) from another
//! server's.
//!
//! Every error is JSON: `{"error": "<code>", "message": "<what was wrong>"}`, plus
//! `"applied": "no" | "unknown"` for requests that reached Raft; those of the HTTP layer too
//! (408 `body_read_timeout`, 414 `uri_too_long`, 431 `headers_too_large`, see
//! [`crate::http_server`]). Bad input is a 4xx; no leader
//! within `leader_wait_ms`, an overloaded or stopped node, or no answer within
//! `request_timeout_ms` is a 503. A 503 with `"applied": "unknown"` means the write may or may
//! not have taken effect. A write sent to a follower, whose leader is replaced before it
//! answers, gets that 503 as soon as a newer leader has committed, not after `leader_wait_ms`
//! (see `AppContext::propose`): the client may retry on the new leader at once.
//!
//! Writes (`PUT`, `DELETE`, `POST .../cas`) take an optional `Request-Id` header: 1 to
//! [`REQUEST_ID_BYTES_MAX`] visible ASCII characters, unique per write (`kvctl` sends 16 random
//! hex digits). A write retried with the same request ID, on any node, after a timeout or a
//! 503 with `"applied": "unknown"`, applies at most once and answers as the first one did (the
//! same index, the same CAS outcome). The ID becomes a one-off Raft client session (see
//! `raft_core::sessions`), so the guarantee holds while the cluster remembers the session: up
//! to `sessions_max` more recent sessions and `session_idle_entries_max` entries. A retry of a
//! write whose answer the cluster did not keep (over `session_result_bytes_max`, or applied
//! before a node restarted) is a 410 `answer_not_kept` with `"applied": "yes"` and the index it
//! applied at: it took effect once and will not again. Reusing an ID for a different write
//! returns the first write's answer and changes nothing.
//!
//! Reads take `?consistency=` (see [`Consistency`]): `linearizable` (the default: the
//! protocol's ReadIndex, no log entry), `lease` (only on nodes started with `--lease-reads`,
//! where the leader answers from its lease; a 400 elsewhere), `log` (the read is a command in
//! the log) or `stale` (this node's copy).

pub mod admin;

use crate::command::{Answer, Command};
use crate::config::{StorageKind, TransportKind};
use crate::members::AddressBook;
use crate::metrics::{Failure, Metrics, Operation};
use crate::state::KvState;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use raft_core::protocol::ProposeError;
use raft_core::runtime::{NodeError, RaftNode, Removal};
use raft_core::sessions::SessionError;
use raft_core::SessionId;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limits on what a client may send.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest key, in bytes.
    pub key_bytes_max: usize,
    /// Largest value, in bytes.
    pub value_bytes_max: usize,
    /// Most keys one scan returns.
    pub scan_limit_max: u32,
    /// Most bytes of keys and values one scan returns.
    pub scan_bytes_max: u32,
    /// How long a request waits for its command to apply.
    pub request_timeout: Duration,
    /// How long an admin request waits for a leader to be known.
    pub leader_wait: Duration,
    /// Whether the node serves `consistency=lease` (its leader reads from a lease).
    pub lease_reads: bool,
}

/// What `/v1/status` says about the node itself.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The node's ID.
    pub id: u64,
    /// Its storage.
    pub storage: StorageKind,
    /// Its transport.
    pub transport: TransportKind,
    /// Where it serves HTTP.
    pub client_address: SocketAddr,
    /// Where it listens for peers.
    pub peer_address: SocketAddr,
}

/// Readiness: set once a leader is known and this node has applied everything that was
/// committed when it first learned of a leader after starting (so a restarted node is not
/// ready until it has caught up to where the cluster was when it came back). An in-memory node
/// that restarted is not ready before the cluster has recorded its new life and promoted it
/// back (`Status::rejoined`). Cleared whenever no leader is known.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
}

impl Readiness {
    /// Whether the node is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Sets readiness.
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

/// Everything the handlers share.
pub struct AppContext {
    /// The Raft node.
    pub raft: RaftNode,
    /// The local copy of the map (for stale reads).
    pub state: Arc<KvState>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Input limits and the request timeout.
    pub limits: Limits,
    /// Where every member is reached.
    pub address_book: Arc<AddressBook>,
    /// The HTTP client that forwards admin requests to the leader.
    pub http: reqwest::Client,
    /// `http` or `https`: the scheme of every member's client API (the one this node serves).
    pub http_scheme: &'static str,
    /// This node.
    pub node: NodeInfo,
    /// Readiness, kept by the node's status watcher.
    pub readiness: Arc<Readiness>,
    /// The RocksDB log store's group-commit counters, when the node uses it.
    pub log_store_stats: Option<LogStoreStats>,
}

/// Reads a log store's group-commit counters.
pub type LogStoreStats = Box<dyn Fn() -> raft_storage_rocksdb::WriteStats + Send + Sync>;

type Context = State<Arc<AppContext>>;

/// A JSON error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// For requests that reached Raft: "no", "unknown" or "yes".
    applied: Option<&'static str>,
    /// Extra fields for the body.
    extra: Option<Value>,
}

impl ApiError {
    /// An error with this status, code (the `error` field) and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            applied: None,
            extra: None,
        }
    }

    /// A 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// Says whether the request took effect: `"no"`, `"unknown"` or `"yes"`.
    pub fn applied(mut self, applied: &'static str) -> ApiError {
        self.applied = Some(applied);
        self
    }

    /// Adds the fields of `extra` (a JSON object) to the body.
    pub fn with_fields(mut self, extra: Value) -> ApiError {
        self.extra = Some(extra);
        self
    }

    fn failure(&self) -> Failure {
        if self.status.is_client_error() {
            Failure::BadRequest
        } else if self.applied == Some("unknown") {
            Failure::Indeterminate
        } else {
            Failure::Unavailable
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if let Some(applied) = self.applied {
            body["applied"] = json!(applied);
        }
        if let Some(Value::Object(extra)) = self.extra {
            for (key, value) in extra {
                body[key] = value;
            }
        }
        (self.status, Json(body)).into_response()
    }
}

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// A read index from the leader (ReadIndex: one heartbeat round shared by concurrent
    /// reads, or the leader's lease when the node runs with `--lease-reads`), then this node's
    /// copy once it has applied that far. No log entry.
    Linearizable,
    /// The same barrier, asked for by name: only on nodes started with `--lease-reads`.
    Lease,
    /// The read is a command in the log, answered by the state machine at its position.
    Log,
    /// This node's copy as it is, without asking anyone.
    Stale,
}

impl Consistency {
    /// Every kind, in metric order.
    pub const ALL: [Consistency; 4] = [
        Consistency::Linearizable,
        Consistency::Lease,
        Consistency::Log,
        Consistency::Stale,
    ];

    /// The name used in the query string and in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Log => "log",
            Consistency::Stale => "stale",
        }
    }
}

fn parse_consistency(text: Option<&str>, lease_reads: bool) -> Result<Consistency, ApiError> {
    match text.unwrap_or("linearizable") {
        "linearizable" => Ok(Consistency::Linearizable),
        "lease" if lease_reads => Ok(Consistency::Lease),
        "lease" => Err(ApiError::bad_request(
            "consistency=lease is not available on this node: it runs without --lease-reads \
             (leases assume bounded clock drift, so they are opt-in); use linearizable, log or \
             stale",
        )),
        "log" => Ok(Consistency::Log),
        "stale" => Ok(Consistency::Stale),
        other => Err(ApiError::bad_request(format!(
            "consistency={other:?} is unknown; use linearizable, lease, log or stale"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    consistency: Option<String>,
}

/// Writes take no query parameters: an unknown one (`?ttl=5`) is refused, not ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteParams {}

/// A scan's query string, its byte strings decoded (see [`parse_scan_query`]).
#[derive(Debug, Default, PartialEq, Eq)]
struct ScanParams {
    /// Every returned key starts with it (empty: every key).
    prefix: Bytes,
    /// The first key the page may return (inclusive; empty: from the prefix).
    start: Bytes,
    limit: Option<u32>,
    consistency: Option<String>,
}

/// The parameters a scan takes, for the message that refuses another one.
const SCAN_PARAMETERS: &str = "prefix, prefix_base64, start, start_base64, limit, consistency";

/// Reads a scan's query string. The byte strings (`prefix`, `start`) are percent-decoded to
/// bytes, not to text (so `%FF` is the byte 0xFF), or given as base64 by their `_base64`
/// twin; an unknown parameter, one given twice (or with its twin), a malformed escape, a
/// `limit` that is not a number or a text parameter that is not UTF-8 is refused.
fn parse_scan_query(query: &str) -> Result<ScanParams, ApiError> {
    let mut params = ScanParams::default();
    let mut seen: Vec<&'static str> = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = form_decode(name)
            .ok()
            .and_then(|name| String::from_utf8(name).ok())
            .ok_or_else(|| ApiError::bad_request(format!("bad query parameter name {name:?}")))?;
        let (slot, twin) = match name.as_str() {
            "prefix" | "prefix_base64" => ("prefix", "prefix_base64"),
            "start" | "start_base64" => ("start", "start_base64"),
            "limit" => ("limit", "limit"),
            "consistency" => ("consistency", "consistency"),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}; a scan takes {SCAN_PARAMETERS}"
                )))
            }
        };
        if seen.contains(&slot) {
            let given = if slot == twin {
                format!("{slot} is given twice")
            } else {
                format!("give {slot} or {twin}, once")
            };
            return Err(ApiError::bad_request(given));
        }
        seen.push(slot);
        let bytes =
            form_decode(value).map_err(|why| ApiError::bad_request(format!("{name}: {why}")))?;
        let bytes = if name.ends_with("_base64") {
            let text = String::from_utf8(bytes)
                .map_err(|_| ApiError::bad_request(format!("{name} is not base64")))?;
            crate::base64::decode(&text)
                .map_err(|why| ApiError::bad_request(format!("{name} is not base64: {why}")))?
        } else {
            bytes
        };
        let text = || {
            String::from_utf8(bytes.clone())
                .map_err(|_| ApiError::bad_request(format!("{name} is not UTF-8")))
        };
        match slot {
            "prefix" => params.prefix = Bytes::from(bytes),
            "start" => params.start = Bytes::from(bytes),
            "limit" => {
                let text = text()?;
                let limit = text.parse().map_err(|_| {
                    ApiError::bad_request(format!("limit must be a number; got {text:?}"))
                })?;
                params.limit = Some(limit);
            }
            _ => params.consistency = Some(text()?),
        }
    }
    Ok(params)
}

/// Percent-decodes `text` to bytes (`%FF` is the byte 0xFF, whatever it spells in UTF-8),
/// refusing a `%` not followed by two hex digits. The inverse of [`crate::client::encode_key`].
pub fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    for (at, _) in text.match_indices('%') {
        let escape = bytes.get(at + 1..at + 3);
        if !escape.is_some_and(|digits| digits.iter().all(u8::is_ascii_hexdigit)) {
            return Err(format!(
                "'%' at byte {at} is not followed by two hex digits (write a '%' as %25)"
            ));
        }
    }
    Ok(percent_encoding::percent_decode_str(text).collect())
}

/// Percent-decodes a query string's name or value: as [`percent_decode`], with `+` for a
/// space (the form encoding every query string uses; a `+` itself is `%2B`).
fn form_decode(text: &str) -> Result<Vec<u8>, String> {
    percent_decode(&text.replace('+', " "))
}

/// A compare-and-swap body. Each value comes as text or as base64 (its bytes exactly), never
/// both: `new` or `new_base64`, and `expected` or `expected_base64` (neither, or null: the key
/// must not exist).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasBody {
    #[serde(default)]
    expected: Option<String>,
    #[serde(default)]
    expected_base64: Option<String>,
    #[serde(default)]
    new: Option<String>,
    #[serde(default)]
    new_base64: Option<String>,
}

impl CasBody {
    /// The expected and new values' bytes, or why the body is bad.
    fn values(self) -> Result<(Option<Bytes>, Bytes), ApiError> {
        let expected = one_of("expected", self.expected, self.expected_base64)?;
        let new = one_of("new", self.new, self.new_base64)?.ok_or_else(|| {
            ApiError::bad_request("the body needs the new value: \"new\" or \"new_base64\"")
        })?;
        Ok((expected, new))
    }
}

/// The bytes of a value given as text (`name`) or base64 (`<name>_base64`); both is an error.
fn one_of(
    name: &str,
    text: Option<String>,
    base64: Option<String>,
) -> Result<Option<Bytes>, ApiError> {
    match (text, base64) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!(
            "give \"{name}\" or \"{name}_base64\", not both"
        ))),
        (Some(text), None) => Ok(Some(Bytes::from(text))),
        (None, Some(encoded)) => crate::base64::decode(&encoded)
            .map(|bytes| Some(Bytes::from(bytes)))
            .map_err(|why| ApiError::bad_request(format!("{name}_base64 is not base64: {why}"))),
        (None, None) => Ok(None),
    }
}

/// Keys a scan returns when the request gives no limit (capped by `scan_limit_max`).
const SCAN_LIMIT_DEFAULT: u32 = 100;

/// The most bytes of JSON one byte of a value can take in a compare-and-swap body: a control
/// character is escaped as `\u0001` (base64 takes 4 bytes per 3).
pub const CAS_JSON_BYTES_PER_VALUE_BYTE: usize = 6;

/// The largest compare-and-swap body: two values of `value_bytes_max` bytes however JSON
/// escapes them, and room for the JSON around them. The values' limit is checked on their
/// decoded bytes once the body is read.
fn cas_body_bytes_max(limits: &Limits) -> usize {
    2 * CAS_JSON_BYTES_PER_VALUE_BYTE * limits.value_bytes_max + 4096
}

/// The header every answer of the router carries, with the node's ID: it tells a client the
/// answer comes from a kvnode (a 404 from another server is not "key not found").
pub const NODE_HEADER: &str = "x-kv-node";

/// The router for a node.
pub fn router(context: Arc<AppContext>) -> Router {
    let put_body = DefaultBodyLimit::max(context.limits.value_bytes_max);
    let cas_body = DefaultBodyLimit::max(cas_body_bytes_max(&context.limits));
    let node_header = axum::middleware::map_response_with_state(context.clone(), mark_node);
    Router::new()
        .route(
            "/v1/kv/{key}",
            get(get_key).put(put_key).delete(delete_key).layer(put_body),
        )
        .route("/v1/kv/{key}/cas", post(cas_key).layer(cas_body))
        .route("/v1/kv", get(scan))
        .route("/v1/status", get(status))
        .merge(admin::routes())
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(node_header)
        .with_state(context)
}

/// Adds [`NODE_HEADER`] to an answer.
async fn mark_node(State(context): Context, mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(NODE_HEADER, HeaderValue::from(context.node.id));
    response
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    // `/v1/kv/{key}` does not match an empty key: say what is wrong with it.
    let path = uri.path();
    if path == "/v1/kv/" || path == "/v1/kv//cas" {
        return ApiError::bad_request("the key is empty");
    }
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_endpoint",
        "no such endpoint; see /v1/kv/{key}, /v1/kv?prefix=, /v1/status, /v1/members, \
         /v1/leader/transfer, /v1/snapshot, /metrics",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// The key of a `/v1/kv/{key}` or `/v1/kv/{key}/cas` request: its path segment, percent-decoded
/// to bytes (axum's own path extractor decodes to text, and refuses keys that are not UTF-8).
fn key_of(uri: &Uri) -> Result<Vec<u8>, ApiError> {
    let path = uri.path();
    let segment = path.strip_prefix("/v1/kv/").unwrap_or_default();
    let segment = segment.strip_suffix("/cas").unwrap_or(segment);
    percent_decode(segment).map_err(|why| ApiError::bad_request(format!("bad key: {why}")))
}

/// A key in a message: quoted text when it is UTF-8, else its base64.
fn key_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("(base64) {}", crate::base64::encode(key)),
    }
}

impl AppContext {
    fn check_key(&self, uri: &Uri) -> Result<Bytes, ApiError> {
        let key = key_of(uri)?;
        if key.is_empty() {
            return Err(ApiError::bad_request("the key is empty"));
        }
        if key.len() > self.limits.key_bytes_max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "key_too_large",
                format!(
                    "the key has {} bytes; key_bytes_max is {}",
                    key.len(),
                    self.limits.key_bytes_max
                ),
            ));
        }
        Ok(Bytes::from(key))
    }

    fn value_too_large(&self, bytes: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!(
                "the value has {bytes} bytes or more; value_bytes_max is {}",
                self.limits.value_bytes_max
            ),
        )
    }

    /// Proposes `command` and waits, within the request timeout, for its answer.
    ///
    /// On a follower the protocol forwards the command to the leader. If that leader is
    /// replaced before it answers, the protocol ends the forward as soon as a leader of a newer
    /// term has committed here ([`ProposeError::LeaderReplaced`], outcome unknown): clients
    /// can retry on the new leader without waiting out `leader_wait_ms`.
    ///
    /// A write with a request ID (`session`) goes in that one-off Raft session: a retry of it
    /// applies once and answers as the first did.
    async fn propose(
        &self,
        operation: Operation,
        command: Command,
        session: Option<SessionId>,
    ) -> Result<Answer, ApiError> {
        self.metrics.record_proposal(operation);
        self.refuse_if_removed()?;
        let write = command.is_write();
        let proposal = async {
            match session {
                Some(session) => {
                    self.raft
                        .propose_in_session(session, 1, command.encode())
                        .await
                }
                None => self.raft.propose(command.encode()).await,
            }
        };
        match tokio::time::timeout(self.limits.request_timeout, proposal).await {
            Ok(Ok(bytes)) => match Answer::decode(&bytes) {
                Ok(Answer::Invalid(why)) => Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "invalid_command",
                    format!("the state machine could not read the command: {why}"),
                )),
                Ok(answer) => Ok(answer),
                Err(error) => Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "bad_answer",
                    error.to_string(),
                )),
            },
            Ok(Err(error)) => Err(node_error(error, write)),
            Err(_) if write => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the write did not apply within request_timeout_ms ({} ms); it may or may \
                     not have been applied",
                    self.limits.request_timeout.as_millis()
                ),
            )
            .applied("unknown")),
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the read did not complete within request_timeout_ms ({} ms); retry",
                    self.limits.request_timeout.as_millis()
                ),
            )),
        }
    }

    /// Waits, within the request timeout, until this node has applied every write that
    /// completed before the call (the protocol's read index).
    async fn read_barrier(&self) -> Result<(), ApiError> {
        self.refuse_if_removed()?;
        match tokio::time::timeout(self.limits.request_timeout, self.raft.read_index()).await {
            Ok(Ok(_index)) => Ok(()),
            Ok(Err(error)) => Err(node_error(error, false)),
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the read did not complete within request_timeout_ms ({} ms); retry",
                    self.limits.request_timeout.as_millis()
                ),
            )),
        }
    }

    /// A node removed from the cluster takes no writes and serves no linearizable reads: it
    /// says so, rather than that no leader was known.
    fn refuse_if_removed(&self) -> Result<(), ApiError> {
        match self.raft.removal() {
            None => Ok(()),
            Some(removal) => Err(removed_error(removal)),
        }
    }

    fn state_error(error: raft_core::StateMachineError) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "state",
            error.to_string(),
        )
    }

    fn finish<T>(
        &self,
        operation: Operation,
        started: Instant,
        result: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match &result {
            Ok(_) => self.metrics.record_success(operation, started.elapsed()),
            Err(error) => self.metrics.record_failure(operation, error.failure()),
        }
        result
    }
}

/// Maps a Raft failure to an HTTP answer. `write` tells whether an unknown outcome matters.
pub fn node_error(error: NodeError, write: bool) -> ApiError {
    let unavailable =
        |code, message: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
    match error {
        NodeError::Propose(ProposeError::TooLarge { bytes, limit }) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "command_too_large",
            format!("the command has {bytes} bytes; the limit is {limit}"),
        )
        .applied("no"),
        NodeError::Propose(ProposeError::NoLeader) => unavailable(
            "no_leader",
            "no leader was known within leader_wait_ms; nothing was applied; retry".into(),
        )
        .applied("no"),
        NodeError::Propose(ProposeError::LeaderReplaced) => forward_unanswered(write),
        NodeError::Propose(ProposeError::OutcomeUnknown) if write => unavailable(
            "indeterminate",
            "leadership changed while the write was in flight: it may or may not have been \
             applied"
                .into(),
        )
        .applied("unknown"),
        NodeError::Session(SessionError::AnswerNotKept { index, .. }) => ApiError::new(
            StatusCode::GONE,
            "answer_not_kept",
            format!(
                "this request ID's write was applied once, at index {index}, and will not be \
                 applied again; its answer was not kept"
            ),
        )
        .applied("yes")
        .with_fields(json!({"index": index.0})),
        NodeError::Session(error @ SessionError::SequenceStale { .. }) => {
            ApiError::new(StatusCode::CONFLICT, "sequence_stale", error.to_string()).applied("no")
        }
        NodeError::Propose(ProposeError::OutcomeUnknown) => unavailable(
            "indeterminate",
            "leadership changed while the read was in flight; retry".into(),
        ),
        // Every other refusal is definite (is_definite): overload, a dropped entry, an aborted
        // read, a leadership transfer. Nothing happened; a retry may succeed.
        NodeError::Propose(error) => unavailable(
            "not_applied",
            format!("{error}; nothing was applied; retry"),
        )
        .applied("no"),
        error @ NodeError::Stopped(_) => {
            let outcome = if write { "unknown" } else { "no" };
            unavailable("stopped", format!("{error}")).applied(outcome)
        }
        // The node was not running when asked: the request never reached it.
        error @ NodeError::NotRunning(_) => {
            unavailable("stopped", format!("{error}")).applied("no")
        }
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            other.to_string(),
        ),
    }
}

/// The answer when the leader a follower forwarded to was replaced before it answered.
fn forward_unanswered(write: bool) -> ApiError {
    let error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "indeterminate",
        format!(
            "the leader this node forwarded the {} to was replaced before it answered (a newer \
             leader has committed since){}",
            if write { "write" } else { "read" },
            if write {
                ": it may or may not have been applied"
            } else {
                "; retry"
            }
        ),
    );
    if write {
        error.applied("unknown")
    } else {
        error
    }
}

fn unexpected(answer: Answer) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "unexpected_answer",
        format!("the state machine answered {answer:?}"),
    )
}

/// Longest `Request-Id` header accepted, in bytes.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

/// The header that makes a write safe to retry (see the module docs).
pub const REQUEST_ID_HEADER: &str = "request-id";

/// The Raft session of a write's `Request-Id` header, if it has one: the ID's 64-bit FNV-1a
/// hash, the same on every node (so a retry through any node finds the first copy).
pub fn request_session(headers: &HeaderMap) -> Result<Option<SessionId>, ApiError> {
    let Some(value) = headers.get(REQUEST_ID_HEADER) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty()
        || bytes.len() > REQUEST_ID_BYTES_MAX
        || !bytes.iter().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::bad_request(format!(
            "the Request-Id header must be 1 to {REQUEST_ID_BYTES_MAX} visible ASCII \
             characters; got {} bytes",
            bytes.len()
        )));
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    Ok(Some(SessionId(hash)))
}

async fn put_key(
    State(context): Context,
    headers: HeaderMap,
    uri: Uri,
    params: Result<Query<WriteParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = async {
        let session = request_session(&headers)?;
        let key = context.check_key(&uri)?;
        params.map_err(|e| ApiError::bad_request(e.body_text()))?;
        let value = body.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                context.value_too_large(context.limits.value_bytes_max + 1)
            } else {
                ApiError::bad_request(format!("reading the body failed: {}", e.body_text()))
            }
        })?;
        match context
            .propose(Operation::Put, Command::Put { key, value }, session)
            .await?
        {
            Answer::Written { index } => Ok(Json(json!({"index": index})).into_response()),
            other => Err(unexpected(other)),
        }
    }
    .await;
    context.finish(Operation::Put, started, result)
}

async fn get_key(
    State(context): Context,
    uri: Uri,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = async {
        let key = context.check_key(&uri)?;
        let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
        let consistency =
            parse_consistency(params.consistency.as_deref(), context.limits.lease_reads)?;
        context.metrics.record_read(Operation::Get, consistency);
        let value = match consistency {
            Consistency::Log => {
                match context
                    .propose(Operation::Get, Command::Get { key: key.clone() }, None)
                    .await?
                {
                    Answer::Value(value) => value,
                    other => return Err(unexpected(other)),
                }
            }
            Consistency::Linearizable | Consistency::Lease | Consistency::Stale => {
                if consistency != Consistency::Stale {
                    context.read_barrier().await?;
                }
                context.state.get(&key).map_err(AppContext::state_error)?
            }
        };
        match value {
            Some(value) => {
                Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response())
            }
            None => Ok(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("key {} does not exist", key_text(&key)),
            )
            .into_response()),
        }
    }
    .await;
    context.finish(Operation::Get, started, result)
}

async fn delete_key(
    State(context): Context,
    headers: HeaderMap,
    uri: Uri,
    params: Result<Query<WriteParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = async {
        let session = request_session(&headers)?;
        let key = context.check_key(&uri)?;
        params.map_err(|e| ApiError::bad_request(e.body_text()))?;
        match context
            .propose(Operation::Delete, Command::Delete { key }, session)
            .await?
        {
            Answer::Deleted { index, existed } => {
                Ok(Json(json!({"index": index, "deleted": existed})).into_response())
            }
            other => Err(unexpected(other)),
        }
    }
    .await;
    context.finish(Operation::Delete, started, result)
}

async fn cas_key(
    State(context): Context,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Json<CasBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = async {
        let session = request_session(&headers)?;
        let key = context.check_key(&uri)?;
        let Json(body) = body.map_err(|e| match e {
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the compare-and-swap body is over {} bytes (two values and some JSON)",
                    cas_body_bytes_max(&context.limits)
                ),
            ),
            other => ApiError::bad_request(format!(
                "the body must be JSON {{\"expected\" (or \"expected_base64\"): string or \
                 null, \"new\" (or \"new_base64\"): string}}: {}",
                other.body_text()
            )),
        })?;
        let (expected, new) = body.values()?;
        let longest = new.len().max(expected.as_ref().map_or(0, Bytes::len));
        if longest > context.limits.value_bytes_max {
            return Err(context.value_too_large(longest));
        }
        let command = Command::Cas { key, expected, new };
        match context.propose(Operation::Cas, command, session).await? {
            Answer::Cas {
                index,
                swapped: true,
                previous,
            } => {
                let mut answer = serde_json::Map::new();
                answer.insert("swapped".into(), json!(true));
                answer.insert("index".into(), json!(index));
                optional_text_or_base64(&mut answer, "previous", previous.as_deref());
                Ok(Json(Value::Object(answer)).into_response())
            }
            Answer::Cas {
                index,
                swapped: false,
                previous,
            } => {
                let mut fields = serde_json::Map::new();
                fields.insert("swapped".into(), json!(false));
                fields.insert("index".into(), json!(index));
                optional_text_or_base64(&mut fields, "current", previous.as_deref());
                let error = ApiError::new(
                    StatusCode::CONFLICT,
                    "compare_failed",
                    "the key does not hold the expected value; nothing was changed",
                )
                .with_fields(Value::Object(fields));
                Ok(error.into_response())
            }
            other => Err(unexpected(other)),
        }
    }
    .await;
    context.finish(Operation::Cas, started, result)
}

async fn scan(State(context): Context, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = async {
        let params = parse_scan_query(query.as_deref().unwrap_or_default())?;
        let limit_max = context.limits.scan_limit_max;
        let limit = params.limit.unwrap_or(SCAN_LIMIT_DEFAULT.min(limit_max));
        if limit == 0 || limit > limit_max {
            return Err(ApiError::bad_request(format!(
                "limit must be between 1 and scan_limit_max ({limit_max}); got {limit}"
            )));
        }
        let (prefix, start) = (params.prefix, params.start);
        for (name, bytes) in [("prefix", &prefix), ("start", &start)] {
            if bytes.len() > context.limits.key_bytes_max {
                return Err(ApiError::bad_request(format!(
                    "the {name} has {} bytes; key_bytes_max is {}",
                    bytes.len(),
                    context.limits.key_bytes_max
                )));
            }
        }
        let bytes_max = context.limits.scan_bytes_max;
        let consistency =
            parse_consistency(params.consistency.as_deref(), context.limits.lease_reads)?;
        context.metrics.record_read(Operation::Scan, consistency);
        let (entries, next) = match consistency {
            Consistency::Log => {
                let command = Command::ScanFrom {
                    prefix,
                    start,
                    limit,
                    bytes_max,
                };
                match context.propose(Operation::Scan, command, None).await? {
                    Answer::ScanFrom { entries, next } => (entries, next),
                    other => return Err(unexpected(other)),
                }
            }
            Consistency::Linearizable | Consistency::Lease | Consistency::Stale => {
                if consistency != Consistency::Stale {
                    context.read_barrier().await?;
                }
                let page = context
                    .state
                    .scan(&prefix, &start, limit as usize, bytes_max as usize)
                    .map_err(AppContext::state_error)?;
                (page.entries, page.next)
            }
        };
        let entries: Vec<Value> = entries
            .into_iter()
            .map(|(key, value)| {
                let mut entry = serde_json::Map::new();
                text_or_base64(&mut entry, "key", &key);
                text_or_base64(&mut entry, "value", &value);
                Value::Object(entry)
            })
            .collect();
        let mut answer = serde_json::Map::new();
        answer.insert("entries".into(), Value::Array(entries));
        answer.insert("more".into(), json!(next.is_some()));
        optional_text_or_base64(&mut answer, "next", next.as_deref());
        Ok(Json(Value::Object(answer)).into_response())
    }
    .await;
    context.finish(Operation::Scan, started, result)
}

/// Puts `bytes` under `name` as a string, or under `<name>_base64` when it is not UTF-8.
fn text_or_base64(object: &mut serde_json::Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(name.to_string(), json!(text)),
        Err(_) => object.insert(
            format!("{name}_base64"),
            json!(crate::base64::encode(bytes)),
        ),
    };
}

/// As [`text_or_base64`], with `"<name>": null` for no bytes at all (an absent key).
fn optional_text_or_base64(
    object: &mut serde_json::Map<String, Value>,
    name: &str,
    bytes: Option<&[u8]>,
) {
    match bytes {
        Some(bytes) => text_or_base64(object, name, bytes),
        None => {
            object.insert(name.to_string(), Value::Null);
        }
    }
}

/// The status JSON of this node.
pub fn status_json(context: &AppContext) -> Value {
    let status = context.raft.status();
    let progress: Vec<Value> = status
        .progress
        .iter()
        .map(|peer| {
            json!({
                "id": peer.id.0,
                "match_index": peer.match_index.0,
                "next_index": peer.next_index.0,
                "lag": status.last_index.0.saturating_sub(peer.match_index.0),
                "pipelined": peer.pipelined,
                "inflight_messages": peer.inflight_messages,
                "inflight_bytes": peer.inflight_bytes,
                "learner": peer.learner,
                "snapshot_sent": peer.snapshot_sent.map(|(acknowledged, total)| {
                    json!({"acknowledged_bytes": acknowledged, "total_bytes": total})
                }),
            })
        })
        .collect();
    let role = match status.role {
        raft_core::protocol::Role::Follower => "follower",
        raft_core::protocol::Role::PreCandidate => "pre-candidate",
        raft_core::protocol::Role::Candidate => "candidate",
        raft_core::protocol::Role::Leader => "leader",
    };
    json!({
        "id": status.id.0,
        "role": role,
        "term": status.term.0,
        "leader": status.leader.map(|id| id.0),
        "commit_index": status.commit_index.0,
        "applied_index": status.applied_index.0,
        "last_index": status.last_index.0,
        "persisted_index": status.persisted_index.0,
        "voters": status.voters.iter().map(|id| id.0).collect::<Vec<_>>(),
        "membership": admin::membership_json(&status.membership),
        "membership_index": status.membership_index.0,
        "first_index": status.first_index.0,
        "snapshot": status.snapshot.map(|(index, bytes)| json!({"index": index.0, "bytes": bytes})),
        "snapshot_receiving": status.snapshot_receiving.map(|(received, total)| {
            json!({"received_bytes": received, "total_bytes": total})
        }),
        "progress": progress,
        "ready": context.readiness.is_ready(),
        "incarnation": status.incarnation.0,
        "rejoined": status.rejoined(),
        "storage": context.node.storage.to_string(),
        "transport": context.node.transport.to_string(),
        "client_address": context.node.client_address.to_string(),
        "peer_address": context.node.peer_address.to_string(),
        "stopped": context.raft.stopped_reason().map(|reason| reason.to_string()),
        "removed": match context.raft.removal() {
            None => Value::Null,
            Some(Removal::Committed) => json!({"known_from": "committed membership"}),
            Some(Removal::ReportedBy(peer)) => json!({"reported_by": peer.0}),
        },
    })
}

async fn status(State(context): Context) -> Json<Value> {
    Json(status_json(&context))
}

async fn metrics(State(context): Context) -> Response {
    let mut text = context.metrics.render(&context.raft.status());
    // The library's own metrics (`raft_core::runtime::telemetry`), labelled by node.
    text.push_str(&crate::metrics::library_metrics().render());
    if let Some(stats) = &context.log_store_stats {
        crate::metrics::render_log_store(&mut text, &stats());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn healthz(State(context): Context) -> Response {
    if let Some(why) = context.raft.stopped_reason() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", why.to_string())
            .into_response();
    }
    if let Some(removal) = context.raft.removal() {
        let mut error = removed_error(removal);
        error.status = StatusCode::SERVICE_UNAVAILABLE;
        return error.into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

/// The answer of a node removed from the cluster (410 to requests, 503 to `/healthz`), with
/// how it knows.
fn removed_error(removal: Removal) -> ApiError {
    let how = match removal {
        Removal::Committed => "its committed membership records it".to_string(),
        Removal::ReportedBy(peer) => format!("member {} refused it as removed", peer.0),
    };
    ApiError::new(
        StatusCode::GONE,
        "removed",
        format!(
            "this node was removed from the cluster ({how}); it takes no writes and serves no              linearizable reads: use another member"
        ),
    )
    .applied("no")
}

async fn readyz(State(context): Context) -> Response {
    if context.readiness.is_ready() {
        return Json(json!({"status": "ready"})).into_response();
    }
    let status = context.raft.status();
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        format!(
            "not ready: leader {:?}, applied {} of commit {}, rejoined {} (ready once a \
             leader is known, this node runs in the life its membership records, and it applied \
             what was committed when it first saw both)",
            status.leader.map(|id| id.0),
            status.applied_index.0,
            status.commit_index.0,
            status.rejoined()
        ),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key's path segment decodes to its bytes, whatever they are; a malformed escape is
    /// refused, not kept as it is.
    #[test]
    fn keys_are_percent_decoded_to_bytes() {
        let key = |path: &str| key_of(&path.parse().unwrap());
        assert_eq!(key("/v1/kv/a%2Fb").unwrap(), b"a/b");
        assert_eq!(key("/v1/kv/%00%ff%2F%25/cas").unwrap(), b"\x00\xff/%");
        assert_eq!(key("/v1/kv/a+b").unwrap(), b"a+b", "a path keeps its plus");
        for bad in ["/v1/kv/%", "/v1/kv/a%F", "/v1/kv/%GG"] {
            let error = key(bad).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(
                error.message.contains("two hex digits"),
                "{}",
                error.message
            );
        }
    }

    /// A scan's byte strings decode to bytes, by escapes or base64; everything else about the
    /// query is checked.
    #[test]
    fn scan_queries_decode_to_bytes_and_refuse_what_they_do_not_know() {
        let params = parse_scan_query("prefix=%00%FF+x&start_base64=AP8%3D&limit=5").unwrap();
        assert_eq!(params.prefix.as_ref(), b"\x00\xff x");
        assert_eq!(params.start.as_ref(), b"\x00\xff");
        assert_eq!(params.limit, Some(5));
        assert_eq!(parse_scan_query("").unwrap(), ScanParams::default());
        let refused = |query: &str, says: &str| {
            let error = parse_scan_query(query).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{query}");
            assert!(error.message.contains(says), "{query}: {}", error.message);
        };
        refused("colour=blue", "unknown query parameter \"colour\"");
        refused(
            "prefix=a&prefix_base64=YQ%3D%3D",
            "give prefix or prefix_base64",
        );
        refused("limit=1&limit=2", "limit is given twice");
        refused("limit=many", "limit must be a number");
        refused("start=%ZZ", "two hex digits");
        refused("prefix_base64=***", "not base64");
        refused("consistency=%FF", "consistency is not UTF-8");
    }

    /// A compare-and-swap value comes as text or base64, exactly one of each pair.
    #[test]
    fn cas_values_come_as_text_or_base64() {
        let body = |json: Value| serde_json::from_value::<CasBody>(json).unwrap().values();
        let (expected, new) = body(json!({"expected_base64": "AP8=", "new": "x"})).unwrap();
        assert_eq!(expected.as_deref(), Some(&b"\x00\xff"[..]));
        assert_eq!(new.as_ref(), b"x");
        let (expected, new) = body(json!({"expected": null, "new_base64": "/w=="})).unwrap();
        assert_eq!((expected, new.as_ref()), (None, &b"\xff"[..]));
        for (json, says) in [
            (json!({"new": "a", "new_base64": "YQ=="}), "not both"),
            (
                json!({"expected": "a", "expected_base64": "YQ==", "new": "b"}),
                "not both",
            ),
            (json!({"expected": "a"}), "needs the new value"),
            (json!({"new_base64": "Y"}), "new_base64 is not base64"),
        ] {
            let error = body(json.clone()).unwrap_err();
            assert!(error.message.contains(says), "{json}: {}", error.message);
        }
    }

    /// A forward the protocol ends because its leader was replaced (a newer leader committed
    /// here) keeps the answer the API gave when it decided that itself: a 503 `indeterminate`
    /// that says so, with `applied: "unknown"` for a write and a plain retry for a read.
    #[test]
    fn a_forward_to_a_replaced_leader_answers_503_indeterminate() {
        let write = node_error(NodeError::Propose(ProposeError::LeaderReplaced), true);
        assert_eq!(write.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(write.code, "indeterminate");
        assert_eq!(write.applied, Some("unknown"));
        assert!(
            write
                .message
                .starts_with("the leader this node forwarded the write to was replaced"),
            "{}",
            write.message
        );
        assert_eq!(write.failure(), Failure::Indeterminate);

        let read = node_error(NodeError::Propose(ProposeError::LeaderReplaced), false);
        assert_eq!(read.code, "indeterminate");
        assert_eq!(read.applied, None);
        assert!(read.message.ends_with("; retry"), "{}", read.message);
    }
}
