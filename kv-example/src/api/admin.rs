//! The admin API: membership, leadership transfer and snapshots.
//!
//! | method and path | answer |
//! | --- | --- |
//! | `GET /v1/members` | 200: the membership this node has in force (see [`membership_json`]) |
//! | `POST /v1/members` with `{"id": N, "peer_address": "host:port", "client_address": "host:port"}` | 200: the membership, with N a learner |
//! | `POST /v1/members/{id}/promote[?wait_ms=N]` | 200: the membership, with the learner a voter; with `wait_ms`, the leader first waits up to N ms (at most 600000) for the learner to catch up |
//! | `DELETE /v1/members/{id}` | 200: the membership without it |
//! | `POST /v1/leader/transfer` with `{"to": N}` | 200 `{"leader": N}` once N leads |
//! | `POST /v1/snapshot` | 200 `{"index", "term", "bytes"}`: *this* node's snapshot (never forwarded: each node compacts its own log) |
//!
//! Membership changes and transfers are carried out by the leader. Any other node forwards
//! the request to the leader's HTTP address and returns its answer as it is; when it knows no
//! leader within `leader_wait_ms` it answers 503 `no_leader`, and when the leader cannot be
//! reached (or its address is unknown, or the request was already forwarded once) 503
//! `not_leader` naming the leader in `"leader"`. Both say `"applied": "no"`, so a client
//! tries another node.
//!
//! Adding a member takes its peer address (`peer_address`, or `addr`) unless the cluster
//! already knows it, and optionally its HTTP address. The leader first commits the addresses
//! through the log, so every member adds the new node to its transport (see
//! [`crate::members`]), then adds the learner. Start the new node with `kvnode --join` first
//! or after: the leader retries until it answers. Promote the learner once it has caught up
//! (its `lag` in the leader's `/v1/status`; a learner that never answered or lags more than
//! `promotion_lag_entries_max` entries is refused with 409 `not_caught_up`, and `wait_ms` waits
//! for it first), and one change at a time: each request returns once its change is committed
//! (after the joint configuration when voters change).
//!
//! Refusals are 4xx with the protocol's reason as the message: an unknown member is 404
//! `unknown_member`; a second change while one is in progress, removing the last voter, adding
//! a member twice or reusing a removed ID is 409; an ID of 0 or a bad body is 400. A change
//! that does not complete within `request_timeout_ms` is 503 `timeout` with
//! `"applied": "unknown"`: it may still complete (see `GET /v1/members`).

use super::{node_error, ApiError, AppContext, Context};
use crate::members::{node_meta, MemberAddress};
use axum::body::Body;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use raft_core::protocol::{Status, TransferError};
use raft_core::runtime::NodeError;
use raft_core::{Membership, MembershipChange, MembershipError, NodeId};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The header a node sets on a request it forwards, with its ID: the leader that receives it
/// never forwards it again (no loops while leadership moves).
pub const FORWARDED_HEADER: &str = "x-kv-forwarded-by";

/// How long a change refused by a leader not yet ready (see
/// `AppContext::change_when_leader_ready`) waits before it is asked again.
const LEADER_READY_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// The admin routes, merged into [`super::router`].
pub fn routes() -> Router<Arc<AppContext>> {
    Router::new()
        .route("/v1/members", get(list_members).post(add_member))
        .route("/v1/members/{id}", axum::routing::delete(remove_member))
        .route("/v1/members/{id}/promote", post(promote_member))
        .route("/v1/leader/transfer", post(transfer_leader))
        .route("/v1/snapshot", post(snapshot))
}

fn ids(set: &BTreeSet<NodeId>) -> Vec<u64> {
    set.iter().map(|id| id.0).collect()
}

/// A membership as JSON: `voters` (in a joint configuration, the incoming ones), `outgoing`
/// (the voters being replaced; empty unless joint), `joint`, `learners`, `removed`.
pub fn membership_json(membership: &Membership) -> Value {
    json!({
        "voters": ids(&membership.voters),
        "outgoing": ids(&membership.outgoing),
        "joint": membership.is_joint(),
        "learners": ids(&membership.learners),
        "removed": ids(&membership.removed),
    })
}

/// The answer of `GET /v1/members` and of every change: the membership in force here, the
/// index that set it and whether it is committed, the leader, and each member's role and
/// addresses (`members`).
pub fn members_json(context: &AppContext, status: &Status) -> Value {
    let membership = &status.membership;
    let members: Vec<Value> = membership
        .members()
        .into_iter()
        .map(|id| {
            let role = if membership.voters.contains(&id) {
                "voter"
            } else if membership.outgoing.contains(&id) {
                "outgoing"
            } else {
                "learner"
            };
            let address = context.address_book.get(id.0);
            json!({
                "id": id.0,
                "role": role,
                "peer_address": address.as_ref().map(|a| a.peer_address.to_string()),
                "client_address": address
                    .and_then(|a| a.client_address)
                    .map(|a| a.to_string()),
            })
        })
        .collect();
    let mut body = membership_json(membership);
    body["leader"] = json!(status.leader.map(|id| id.0));
    body["membership_index"] = json!(status.membership_index.0);
    body["committed"] = json!(status.commit_index >= status.membership_index);
    body["members"] = json!(members);
    body
}

async fn list_members(State(context): Context) -> Json<Value> {
    Json(members_json(&context, &context.raft.status()))
}

/// The body of `POST /v1/members`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMemberBody {
    id: u64,
    #[serde(default, alias = "addr")]
    peer_address: Option<SocketAddr>,
    #[serde(default)]
    client_address: Option<SocketAddr>,
}

/// The body of `POST /v1/leader/transfer`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    to: u64,
}

/// A request as received, kept whole so it can be forwarded unchanged.
struct Received {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body must be JSON {shape}: {e}")))
}

fn parse_id(id: Result<Path<u64>, PathRejection>) -> Result<u64, ApiError> {
    let Path(id) = id.map_err(|e| {
        ApiError::bad_request(format!("the member ID must be a number: {}", e.body_text()))
    })?;
    Ok(id)
}

fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::bad_request(format!("reading the body failed: {}", e.body_text())))
}

fn not_leader(leader: Option<u64>, why: &str) -> ApiError {
    let message = match leader {
        Some(leader) => format!("this node does not lead; the leader is {leader}: {why}"),
        None => format!("this node does not lead and knows no leader: {why}"),
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", message)
        .applied("no")
        .with_fields(json!({"leader": leader}))
}

impl AppContext {
    /// The leader, waiting up to `leader_wait` for one to be known.
    async fn wait_for_leader(&self) -> Result<u64, ApiError> {
        let mut leadership = self.raft.watch_leadership();
        let known = tokio::time::timeout(
            self.limits.leader_wait,
            leadership.wait_for(|l| l.leader.is_some()),
        )
        .await
        // The leader, not the borrowed value: that must not be held across the await below.
        .map(|waited| waited.map(|l| l.leader.expect("waited for a leader")));
        match known {
            Ok(Ok(leader)) => Ok(leader.0),
            // The signal closes once the driver ended, which publishes why first.
            Ok(Err(_)) => Err(node_error(
                NodeError::Stopped(self.raft.stopped().await),
                false,
            )),
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
                format!(
                    "no leader was known within leader_wait_ms ({} ms); nothing was changed; \
                     retry",
                    self.limits.leader_wait.as_millis()
                ),
            )
            .applied("no")),
        }
    }

    /// `None` when this node leads (carry the request out here); otherwise the leader's
    /// answer to the forwarded request.
    async fn forward_unless_leader(
        &self,
        request: &Received,
    ) -> Result<Option<Response>, ApiError> {
        let leader = self.wait_for_leader().await?;
        if leader == self.node.id {
            return Ok(None);
        }
        if request.headers.contains_key(FORWARDED_HEADER) {
            return Err(not_leader(
                Some(leader),
                "the request was forwarded already",
            ));
        }
        let Some(address) = self.address_book.get(leader).and_then(|a| a.client_address) else {
            return Err(not_leader(
                Some(leader),
                "its HTTP address is unknown here; ask it directly",
            ));
        };
        let path = request
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let url = format!("{}://{address}{path}", self.http_scheme);
        let mut forwarded = self
            .http
            .request(request.method.clone(), &url)
            .header(FORWARDED_HEADER, self.node.id.to_string())
            .body(request.body.clone());
        if let Some(kind) = request.headers.get(header::CONTENT_TYPE) {
            forwarded = forwarded.header(header::CONTENT_TYPE, kind);
        }
        let response = match forwarded.send().await {
            Ok(response) => response,
            Err(error) if error.is_connect() => {
                return Err(not_leader(
                    Some(leader),
                    &format!("forwarding to {url} failed: {error}"),
                ))
            }
            Err(error) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "forward_failed",
                    format!("forwarding to the leader {leader} at {url} failed: {error}"),
                )
                .applied("unknown"))
            }
        };
        let status = response.status();
        let bytes = response.bytes().await.map_err(|error| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "forward_failed",
                format!("reading the leader's answer from {url} failed: {error}"),
            )
            .applied("unknown")
        })?;
        let mut answer = Response::new(Body::from(bytes));
        *answer.status_mut() = status;
        answer.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        Ok(Some(answer))
    }

    /// Carries out a membership change here (the leader) within the request timeout.
    async fn change_membership(&self, change: MembershipChange) -> Result<Response, ApiError> {
        let request = self.change_when_leader_ready(change);
        match tokio::time::timeout(self.limits.request_timeout, request).await {
            Ok(Ok(_)) => Ok(Json(members_json(self, &self.raft.status())).into_response()),
            Ok(Err(NodeError::Membership(error))) => Err(membership_error(error)),
            Ok(Err(error)) => Err(node_error(error, true)),
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the membership change was not committed within request_timeout_ms ({} ms); \
                     it may still be: see GET /v1/members",
                    self.limits.request_timeout.as_millis()
                ),
            )
            .applied("unknown")),
        }
    }

    /// Asks for the change; while the protocol answers `ChangeInProgress` although no change
    /// is pending (a leader elected a moment ago first commits an entry of its own term, as
    /// after a transfer), asks again shortly. The caller bounds the wait.
    async fn change_when_leader_ready(
        &self,
        change: MembershipChange,
    ) -> Result<Membership, NodeError> {
        loop {
            let result = self.raft.change_membership(change.clone()).await;
            let status = self.raft.status();
            let settled =
                !status.membership.is_joint() && status.commit_index >= status.membership_index;
            match result {
                Err(NodeError::Membership(MembershipError::ChangeInProgress)) if settled => {
                    tokio::time::sleep(LEADER_READY_RETRY).await;
                }
                other => return other,
            }
        }
    }
}

/// A refused membership change as an HTTP answer, with the protocol's reason.
fn membership_error(error: MembershipError) -> ApiError {
    let message = error.to_string();
    let (status, code) = match &error {
        MembershipError::NotLeader(leader) => {
            return not_leader(leader.map(|id| id.0), "leadership moved; retry")
        }
        MembershipError::UnknownNode(_) => (StatusCode::NOT_FOUND, "unknown_member"),
        MembershipError::ChangeInProgress => (StatusCode::CONFLICT, "change_in_progress"),
        MembershipError::TransferInProgress => (StatusCode::CONFLICT, "transfer_in_progress"),
        MembershipError::AlreadyMember(_) => (StatusCode::CONFLICT, "already_member"),
        MembershipError::AlreadyVoter(_) => (StatusCode::CONFLICT, "already_voter"),
        MembershipError::IdRemoved(_) => (StatusCode::CONFLICT, "id_removed"),
        MembershipError::NoVotersLeft => (StatusCode::CONFLICT, "no_voters_left"),
        MembershipError::NotCaughtUp { .. } => (StatusCode::CONFLICT, "not_caught_up"),
        MembershipError::InvalidId(_) => (StatusCode::BAD_REQUEST, "invalid_id"),
        MembershipError::Empty | MembershipError::Duplicate(_) => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
    };
    ApiError::new(status, code, message).applied("no")
}

/// A failed transfer as an HTTP answer.
fn transfer_error(error: NodeError) -> ApiError {
    let NodeError::Transfer(error) = error else {
        return node_error(error, false);
    };
    let message = error.to_string();
    match error {
        TransferError::NotLeader { leader } => {
            not_leader(leader.map(|id| id.0), "leadership moved; retry")
        }
        TransferError::NotAVoter(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "not_a_voter", message)
        }
        TransferError::InProgress(_) => {
            ApiError::new(StatusCode::CONFLICT, "transfer_in_progress", message)
        }
        TransferError::TimedOut(_) | TransferError::OtherLeader { .. } => {
            ApiError::new(StatusCode::CONFLICT, "transfer_failed", message)
        }
    }
}

async fn add_member(
    State(context): Context,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = read_body(body)?;
    let shape = r#"{"id": N, "peer_address": "host:port", "client_address": "host:port"}"#;
    let request: AddMemberBody = parse_body(&body, shape)?;
    let received = Received {
        method,
        uri,
        headers,
        body,
    };
    if let Some(answer) = context.forward_unless_leader(&received).await? {
        return Ok(answer);
    }
    let change = MembershipChange::add_learner(NodeId(request.id));
    // Refuse early what the protocol would, before writing the address.
    context
        .raft
        .status()
        .membership
        .apply(&change)
        .map_err(membership_error)?;
    let known = context.address_book.get(request.id);
    let address = match (request.peer_address, known) {
        (Some(peer_address), known) => Some(MemberAddress {
            peer_address,
            client_address: request
                .client_address
                .or(known.and_then(|k| k.client_address)),
        }),
        (None, Some(_)) if request.client_address.is_none() => None,
        (None, Some(known)) => Some(MemberAddress {
            peer_address: known.peer_address,
            client_address: request.client_address,
        }),
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "peer_address is required: the cluster does not know where node {} listens",
                request.id
            )))
        }
    };
    let mut change = change;
    if let Some(address) = address {
        // Committed with the membership: every member's transport learns the peer address
        // (raft_core::Network::members_changed), every address book the client address.
        let meta = node_meta(address.peer_address, address.client_address);
        change.node_meta.insert(NodeId(request.id), meta);
    }
    context.change_membership(change).await
}

async fn promote_member(
    State(context): Context,
    id: Result<Path<u64>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let wait = promote_wait(&uri)?;
    let received = Received {
        method,
        uri,
        headers,
        body: Bytes::new(),
    };
    let id = parse_id(id)?;
    if let Some(answer) = context.forward_unless_leader(&received).await? {
        return Ok(answer);
    }
    if let Some(wait) = wait {
        match context.raft.wait_caught_up(NodeId(id), wait).await {
            Ok(()) => {}
            Err(NodeError::Membership(error)) => return Err(membership_error(error)),
            Err(error) => return Err(node_error(error, true)),
        }
    }
    context
        .change_membership(MembershipChange::promote(NodeId(id)))
        .await
}

/// The longest `wait_ms` a promotion may ask for.
const PROMOTE_WAIT_MS_MAX: u64 = 600_000;

/// The `wait_ms` of a promotion: how long the leader waits for the learner to catch up.
fn promote_wait(uri: &Uri) -> Result<Option<Duration>, ApiError> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    let mut wait = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "wait_ms" {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {name:?} (promote takes wait_ms)"
            )));
        }
        let ms: u64 = value.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "wait_ms must be a number of milliseconds, not {value:?}"
            ))
        })?;
        if ms > PROMOTE_WAIT_MS_MAX {
            return Err(ApiError::bad_request(format!(
                "wait_ms {ms} is above the limit of {PROMOTE_WAIT_MS_MAX}"
            )));
        }
        wait = Some(Duration::from_millis(ms));
    }
    Ok(wait)
}

async fn remove_member(
    State(context): Context,
    id: Result<Path<u64>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let received = Received {
        method,
        uri,
        headers,
        body: Bytes::new(),
    };
    change_named_member(&context, id, received, MembershipChange::remove).await
}

/// A change that the path alone names (promote, remove): forwarded to the leader when this
/// node does not lead, carried out here otherwise.
async fn change_named_member(
    context: &AppContext,
    id: Result<Path<u64>, PathRejection>,
    received: Received,
    change: fn(NodeId) -> MembershipChange,
) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    if let Some(answer) = context.forward_unless_leader(&received).await? {
        return Ok(answer);
    }
    context.change_membership(change(NodeId(id))).await
}

async fn transfer_leader(
    State(context): Context,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = read_body(body)?;
    let request: TransferBody = parse_body(&body, r#"{"to": N}"#)?;
    if request.to == 0 {
        return Err(ApiError::bad_request(
            "node 0 is not a node; give the ID of a voter",
        ));
    }
    let received = Received {
        method,
        uri,
        headers,
        body,
    };
    if let Some(answer) = context.forward_unless_leader(&received).await? {
        return Ok(answer);
    }
    let transfer = context.raft.transfer_leadership(NodeId(request.to));
    match tokio::time::timeout(context.limits.request_timeout, transfer).await {
        Ok(Ok(())) => Ok(Json(json!({"leader": request.to})).into_response()),
        Ok(Err(error)) => Err(transfer_error(error)),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the transfer did not finish within request_timeout_ms; see GET /v1/status",
        )
        .applied("unknown")),
    }
}

async fn snapshot(State(context): Context) -> Result<Response, ApiError> {
    if context.raft.status().applied_index.0 == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "nothing_applied",
            "this node has applied nothing yet, so there is nothing to snapshot",
        ));
    }
    let request = context.raft.snapshot();
    match tokio::time::timeout(context.limits.request_timeout, request).await {
        Ok(Ok(meta)) => Ok(Json(json!({
            "node": context.node.id,
            "index": meta.last_index.0,
            "term": meta.last_term.0,
            "bytes": meta.data_bytes,
        }))
        .into_response()),
        Ok(Err(NodeError::Snapshot(why))) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "snapshot_failed",
            format!("no snapshot taken: {why}"),
        )),
        Ok(Err(error)) => Err(node_error(error, false)),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the snapshot was not finished within request_timeout_ms; it may still finish",
        )),
    }
}
