//! The HTTP client behind `kvctl`, with fail-over between endpoints.
//!
//! Keys are bytes (any bytes: [`encode_key`] percent-encodes them into the path), and so are
//! values, both ways: binary scan keys and CAS values travel as base64 in the JSON and come
//! back as the same bytes.
//!
//! A request goes to the endpoint that answered last. It moves on to the next endpoint when:
//! - the current one cannot be reached (nothing was sent);
//! - it answers 503 with `"applied": "no"` or without `applied` (nothing happened);
//! - for a request that is safe to send again (a read, or a write with a request ID, below):
//!   it does not answer within the timeout, the connection fails mid-way, or the answer is not
//!   a kvnode's (no [`crate::api::NODE_HEADER`] header and no kvnode JSON error: another
//!   server at that address, whose 404 is not "key not found").
//!
//! A write without a request ID that may have reached a node (a timeout, a broken connection,
//! an answer from something that is not a kvnode, perhaps a proxy in front of one) is not sent
//! again: the error says it may or may not have applied. A 503 with `"applied": "unknown"` is
//! returned to the caller as it is: resending a write whose outcome is unknown is the
//! caller's decision.
//!
//! A client made [`KvClient::with_request_ids`] (as `kvctl` is) sends every write with a new
//! random `Request-Id` header and keeps it on that write's fail-over retries. The cluster
//! applies such a write at most once however often it arrives, so such a client also moves on
//! to the next endpoint after a 503 `"applied": "unknown"` or a timeout, and gets the first
//! answer if the earlier attempt did apply.
//!
//! Errors carry their whole cause chain ([`error_chain`]): "connection refused", not
//! "error sending request".

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// No endpoint could be reached or every one was unavailable; the last reason is given.
    Unavailable(String),
    /// The server refused the request or failed it: its status and JSON error.
    Server {
        /// The HTTP status.
        status: StatusCode,
        /// The JSON body (or `{"message": text}` when it was not JSON).
        body: Value,
    },
    /// The client was given bad arguments.
    Usage(String),
    /// A request that is not safe to send twice (a write without a request ID, an admin
    /// change) may have reached a node, but no kvnode answer came back: it timed out, the
    /// connection broke, or something that is not a kvnode answered (perhaps a proxy in front
    /// of one). It was not sent again; what happened at each endpoint tried is given.
    MayHaveApplied(String),
    /// A kvnode's answer could not be read (a bug, or a version mismatch).
    BadAnswer(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unavailable(why) => {
                write!(f, "no endpoint could serve the request: {why}")
            }
            ClientError::Server { status, body } => {
                let message = body["message"].as_str().unwrap_or("");
                let code = body["error"].as_str().unwrap_or("error");
                write!(f, "{status}: {code}: {message}")?;
                if body["applied"] == "unknown" {
                    write!(f, " (the write may or may not have been applied)")?;
                }
                Ok(())
            }
            ClientError::Usage(why) => write!(f, "{why}"),
            ClientError::MayHaveApplied(why) => write!(
                f,
                "the request may or may not have taken effect, so it was not sent again: {why}"
            ),
            ClientError::BadAnswer(why) => write!(f, "unreadable answer: {why}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// The outcome of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    /// True when the new value was stored.
    pub swapped: bool,
    /// The value the key held when the comparison was made (`None`: absent): the old value
    /// when swapped, the current one when not.
    pub previous: Option<Bytes>,
    /// The server's JSON answer.
    pub body: Value,
}

/// A page of a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Key and value pairs, in key order.
    pub entries: Vec<(Bytes, Bytes)>,
    /// Where the next page starts (give it as `start`); `None` after the last matching key.
    pub next: Option<Bytes>,
}

/// A client for a cluster's HTTP API.
#[derive(Debug)]
pub struct KvClient {
    endpoints: Vec<String>,
    http: reqwest::Client,
    /// The endpoint to try first (the last that answered).
    preferred: AtomicUsize,
    /// Send writes with a `Request-Id` header and retry unknown outcomes.
    request_ids: bool,
}

/// The bytes [`encode_key`] leaves as they are: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes `key`'s bytes as one path segment or query value (everything but
/// unreserved characters: `/`, `%`, `+`, spaces and every byte over 0x7F are escaped).
pub fn encode_key(key: &[u8]) -> String {
    percent_encoding::percent_encode(key, UNRESERVED).to_string()
}

/// An error and every cause under it, joined by `: ` (a cause already in the text is not
/// repeated). reqwest's own text stops at "error sending request"; the reason is below it.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let more = error.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = error.source();
    }
    text
}

/// A reqwest error with its causes, without the URL (the caller names the endpoint).
fn describe(error: reqwest::Error) -> String {
    let timed_out = error.is_timeout();
    let mut text = error_chain(&error.without_url());
    if timed_out && !text.contains("timed out") {
        text.push_str(" (timed out)");
    }
    text
}

/// An endpoint as a base URL: `host:port` means `http://host:port`; any other scheme than
/// `http` or `https`, a path or a query is refused with the reason.
pub fn endpoint_url(text: &str) -> Result<String, ClientError> {
    let trimmed = text.trim().trim_end_matches('/');
    let bad = |why: &str| ClientError::Usage(format!("endpoint {text:?}: {why}"));
    if trimmed.is_empty() {
        return Err(bad("it is empty"));
    }
    let full = match trimmed.contains("://") {
        true => trimmed.to_string(),
        false => format!("http://{trimmed}"),
    };
    let url = reqwest::Url::parse(&full).map_err(|e| bad(&format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("give only scheme://host:port, without a path or query"));
    }
    Ok(full)
}

/// Whether an answer comes from a kvnode: its router marks every answer with
/// [`crate::api::NODE_HEADER`]; the HTTP layer's own refusals (408, 414, 431) are its JSON
/// errors.
fn from_kvnode(marked: bool, body: &[u8]) -> bool {
    if marked {
        return true;
    }
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    json["error"].is_string() && json["message"].is_string()
}

/// The bytes of `object[name]` (a string) or `object["<name>_base64"]`; `None` when neither is
/// there or the field is null.
pub fn json_bytes(object: &Value, name: &str) -> Result<Option<Bytes>, ClientError> {
    if let Some(text) = object[name].as_str() {
        return Ok(Some(Bytes::copy_from_slice(text.as_bytes())));
    }
    match &object[format!("{name}_base64")] {
        Value::String(encoded) => crate::base64::decode(encoded)
            .map(|bytes| Some(Bytes::from(bytes)))
            .map_err(|why| ClientError::BadAnswer(format!("{name}_base64: {why}"))),
        Value::Null => Ok(None),
        other => Err(ClientError::BadAnswer(format!(
            "{name}_base64 is {other}, not a string"
        ))),
    }
}

/// Puts `bytes` in `object` as text under `name` when it is UTF-8, else as base64 under
/// `<name>_base64`.
fn put_bytes(object: &mut Value, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object[name] = Value::from(text),
        Err(_) => object[format!("{name}_base64")] = Value::from(crate::base64::encode(bytes)),
    }
}

impl KvClient {
    /// A client for `endpoints` (`http://host:port`), each request bounded by `timeout`.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Result<KvClient, ClientError> {
        KvClient::with_tls(endpoints, timeout, None)
    }

    /// A client for `endpoints`, each request bounded by `timeout`; with `tls`, the endpoints
    /// are `https://host:port`, their certificates must be signed by its CA, and its client
    /// certificate (if any) is presented to nodes that require one. Without, they are
    /// `http://`. A mix, or a scheme that does not fit, is refused.
    pub fn with_tls(
        endpoints: Vec<String>,
        timeout: Duration,
        tls: Option<&crate::tls::ClientTlsFiles>,
    ) -> Result<KvClient, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Usage("no endpoints given".into()));
        }
        let scheme = if tls.is_some() { "https://" } else { "http://" };
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|endpoint| match endpoint.contains("://") {
                true => endpoint_url(endpoint),
                false => endpoint_url(&format!("{scheme}{}", endpoint.trim())),
            })
            .collect::<Result<_, _>>()?;
        if let Some(other) = endpoints.iter().find(|e| !e.starts_with(scheme)) {
            return Err(ClientError::Usage(match tls {
                Some(_) => format!("{other}: with a CA to trust (--cacert) endpoints are https://"),
                None => format!("{other}: an https:// endpoint needs the CA to trust (--cacert)"),
            }));
        }
        let mut http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            http = crate::tls::configure_client(http, tls)
                .map_err(|e| ClientError::Usage(e.to_string()))?;
        }
        let http = http
            .build()
            .map_err(|e| ClientError::Usage(error_chain(&e)))?;
        Ok(KvClient {
            endpoints,
            http,
            preferred: AtomicUsize::new(0),
            request_ids: false,
        })
    }

    /// Sends every write with a new random `Request-Id`, reused on its fail-over retries; a
    /// write whose outcome is unknown is then retried on the next endpoint too (see the module
    /// docs).
    pub fn with_request_ids(mut self) -> KvClient {
        self.request_ids = true;
        self
    }

    /// The endpoints, in order.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The endpoint that answered last (the first endpoint before any answer). With one
    /// request at a time, it is the endpoint that gave the last answer.
    pub fn last_endpoint(&self) -> &str {
        &self.endpoints[self.preferred.load(Ordering::Relaxed)]
    }

    /// Sends a request, failing over as the module docs say. Returns the status and body of the
    /// first kvnode answer that is not a retryable 503.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let first = self.preferred.load(Ordering::Relaxed);
        // Why each endpoint tried so far did not serve the request.
        let mut failures: Vec<String> = Vec::new();
        let read = method == Method::GET;
        let write = !read && path.starts_with("/v1/kv");
        // One ID per write, the same on every attempt: the cluster applies it once.
        let request_id = (self.request_ids && write)
            .then(|| format!("{:016x}", raft_core::SessionId::random().0));
        // Sending again is harmless for a read, and for a write the cluster applies once.
        let resend_safe = read || request_id.is_some();
        // Once a request that is not safe to resend may have reached a node, the failures so
        // far and this one are the answer.
        let may_have_applied = |mut failures: Vec<String>, failure: String| {
            failures.push(failure);
            ClientError::MayHaveApplied(failures.join("; "))
        };
        // An unknown outcome kept while another endpoint is tried with the same request ID.
        let mut unknown = None;
        for step in 0..self.endpoints.len() {
            let index = (first + step) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            let url = format!("{endpoint}{path}");
            let mut request = self.http.request(method.clone(), &url);
            if let Some(id) = &request_id {
                request = request.header("request-id", id);
            }
            match &body {
                Some(Body::Raw(bytes)) => request = request.body(bytes.clone()),
                Some(Body::Json(value)) => request = request.json(value),
                None => {}
            }
            let response = match request.send().await {
                Ok(response) => response,
                // A connect error sent nothing.
                Err(error) if resend_safe || error.is_connect() => {
                    failures.push(format!("{endpoint}: {}", describe(error)));
                    continue;
                }
                Err(error) => {
                    let failure = format!("{endpoint}: {}", describe(error));
                    return Err(may_have_applied(failures, failure));
                }
            };
            let status = response.status();
            let marked = response.headers().contains_key(crate::api::NODE_HEADER);
            let bytes = match response.bytes().await {
                Ok(bytes) => bytes,
                Err(error) => {
                    let failure = format!("{endpoint}: reading the answer: {}", describe(error));
                    if resend_safe {
                        failures.push(failure);
                        continue;
                    }
                    return Err(may_have_applied(failures, failure));
                }
            };
            if !from_kvnode(marked, &bytes) {
                let excerpt = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]);
                let foreign = format!(
                    "{endpoint}: answered {status} but is not a kvnode (no {} header): \
                     {excerpt:?}; check the endpoint",
                    crate::api::NODE_HEADER
                );
                if resend_safe {
                    failures.push(foreign);
                    continue;
                }
                return Err(may_have_applied(failures, foreign));
            }
            if status == StatusCode::SERVICE_UNAVAILABLE {
                let json = parse_json(&bytes);
                if json["applied"] != "unknown" {
                    let message = json["message"].as_str().unwrap_or("");
                    failures.push(format!("{endpoint}: {status}: {message}"));
                    continue;
                }
                if request_id.is_some() {
                    unknown = Some((status, bytes));
                    continue;
                }
            }
            self.preferred.store(index, Ordering::Relaxed);
            return Ok((status, bytes));
        }
        match unknown {
            Some(answer) => Ok(answer),
            None => Err(ClientError::Unavailable(failures.join("; "))),
        }
    }

    async fn send_ok(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<Value, ClientError> {
        let (status, bytes) = self.send(method, path, body).await?;
        if status.is_success() {
            Ok(parse_json(&bytes))
        } else {
            Err(server_error(status, &bytes))
        }
    }

    /// Sets `key` to `value`; returns the log index it took.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: Bytes) -> Result<u64, ClientError> {
        let path = format!("/v1/kv/{}", encode_key(key.as_ref()));
        match self
            .send_ok(Method::PUT, &path, Some(Body::Raw(value)))
            .await
        {
            Ok(body) => Ok(body["index"].as_u64().unwrap_or(0)),
            // A retry of a PUT that applied earlier, whose answer (its index) was not kept:
            // the server names the index anyway.
            Err(ClientError::Server { status, body })
                if status == StatusCode::GONE && body["applied"] == "yes" =>
            {
                Ok(body["index"].as_u64().unwrap_or(0))
            }
            Err(error) => Err(error),
        }
    }

    /// Reads `key` (`consistency`: linearizable, lease, log or stale); `None` when absent.
    pub async fn get(
        &self,
        key: impl AsRef<[u8]>,
        consistency: &str,
    ) -> Result<Option<Bytes>, ClientError> {
        let key = encode_key(key.as_ref());
        let path = format!(
            "/v1/kv/{key}?consistency={}",
            encode_key(consistency.as_bytes())
        );
        let (status, bytes) = self.send(Method::GET, &path, None).await?;
        match status {
            StatusCode::OK => Ok(Some(bytes)),
            // Only the node's own "no such key", not a 404 for another reason.
            StatusCode::NOT_FOUND if parse_json(&bytes)["error"] == "not_found" => Ok(None),
            other => Err(server_error(other, &bytes)),
        }
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool, ClientError> {
        let path = format!("/v1/kv/{}", encode_key(key.as_ref()));
        let body = self.send_ok(Method::DELETE, &path, None).await?;
        Ok(body["deleted"].as_bool().unwrap_or(false))
    }

    /// Sets `key` to `new` if it holds `expected` (`None`: if it is absent). Values that are
    /// not UTF-8 are sent as base64, so any bytes compare and swap exactly.
    pub async fn cas(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<CasOutcome, ClientError> {
        let path = format!("/v1/kv/{}/cas", encode_key(key.as_ref()));
        let mut body = serde_json::json!({});
        match expected {
            Some(expected) => put_bytes(&mut body, "expected", expected),
            None => body["expected"] = Value::Null,
        }
        put_bytes(&mut body, "new", new);
        let (status, bytes) = self
            .send(Method::POST, &path, Some(Body::Json(body)))
            .await?;
        let (swapped, field) = match status {
            StatusCode::OK => (true, "previous"),
            StatusCode::CONFLICT => (false, "current"),
            other => return Err(server_error(other, &bytes)),
        };
        let body = parse_json(&bytes);
        Ok(CasOutcome {
            swapped,
            previous: json_bytes(&body, field)?,
            body,
        })
    }

    /// A page of up to `limit` pairs whose keys start with `prefix`, from the first key at or
    /// after `start` (empty: from the prefix). Follow [`ScanPage::next`] for the next page.
    pub async fn scan(
        &self,
        prefix: impl AsRef<[u8]>,
        start: impl AsRef<[u8]>,
        limit: u32,
        consistency: &str,
    ) -> Result<ScanPage, ClientError> {
        let mut path = format!("/v1/kv?prefix={}", encode_key(prefix.as_ref()));
        if !start.as_ref().is_empty() {
            path.push_str(&format!("&start={}", encode_key(start.as_ref())));
        }
        let consistency = encode_key(consistency.as_bytes());
        path.push_str(&format!("&limit={limit}&consistency={consistency}"));
        let answer = self.send_ok(Method::GET, &path, None).await?;
        let mut page = ScanPage {
            entries: Vec::new(),
            next: json_bytes(&answer, "next")?,
        };
        let Some(entries) = answer["entries"].as_array() else {
            return Err(ClientError::BadAnswer(format!(
                "a scan without entries: {answer}"
            )));
        };
        for entry in entries {
            let key = json_bytes(entry, "key")?;
            let value = json_bytes(entry, "value")?;
            let (Some(key), Some(value)) = (key, value) else {
                return Err(ClientError::BadAnswer(format!("a scan entry {entry}")));
            };
            page.entries.push((key, value));
        }
        if (answer["more"] == true) != page.next.is_some() {
            return Err(ClientError::BadAnswer(format!(
                "a scan whose more and next disagree: {answer}"
            )));
        }
        Ok(page)
    }

    /// Every endpoint's `/v1/status`, in endpoint order (no fail-over: each is asked).
    pub async fn status_all(&self) -> Vec<(String, Result<Value, String>)> {
        self.ask_each(Method::GET, "/v1/status").await
    }

    /// Sends the same request to every endpoint in turn (no fail-over) and returns each JSON
    /// answer; a non-2xx answer is an error with its message.
    async fn ask_each(&self, method: Method, path: &str) -> Vec<(String, Result<Value, String>)> {
        let mut out = Vec::new();
        for endpoint in &self.endpoints {
            let result = async {
                let response = self
                    .http
                    .request(method.clone(), format!("{endpoint}{path}"))
                    .send()
                    .await
                    .map_err(describe)?;
                let status = response.status();
                let bytes = response.bytes().await.map_err(describe)?;
                if status.is_success() {
                    Ok(parse_json(&bytes))
                } else {
                    Err(server_error(status, &bytes).to_string())
                }
            }
            .await;
            out.push((endpoint.clone(), result));
        }
        out
    }

    /// The membership (`GET /v1/members`): voters, learners, joint, removed, the leader, and
    /// each member's addresses.
    pub async fn members(&self) -> Result<Value, ClientError> {
        self.send_ok(Method::GET, "/v1/members", None).await
    }

    /// Adds node `id` as a learner, telling the cluster where it listens for peers (required
    /// unless the cluster knows) and serves HTTP. Returns the new membership.
    pub async fn add_member(
        &self,
        id: u64,
        peer_address: Option<&str>,
        client_address: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut body = serde_json::json!({"id": id});
        if let Some(address) = peer_address {
            body["peer_address"] = address.into();
        }
        if let Some(address) = client_address {
            body["client_address"] = address.into();
        }
        self.send_ok(Method::POST, "/v1/members", Some(Body::Json(body)))
            .await
    }

    /// Promotes the learner `id` to voter, the leader first waiting up to `wait` for it to
    /// catch up when given. Returns the new membership.
    pub async fn promote_member(
        &self,
        id: u64,
        wait: Option<std::time::Duration>,
    ) -> Result<Value, ClientError> {
        let path = match wait {
            Some(wait) => format!("/v1/members/{id}/promote?wait_ms={}", wait.as_millis()),
            None => format!("/v1/members/{id}/promote"),
        };
        self.send_ok(Method::POST, &path, None).await
    }

    /// Removes member `id`. Returns the new membership.
    pub async fn remove_member(&self, id: u64) -> Result<Value, ClientError> {
        let path = format!("/v1/members/{id}");
        self.send_ok(Method::DELETE, &path, None).await
    }

    /// Hands leadership to the voter `to`; returns once it leads.
    pub async fn transfer_leader(&self, to: u64) -> Result<Value, ClientError> {
        let body = serde_json::json!({"to": to});
        self.send_ok(Method::POST, "/v1/leader/transfer", Some(Body::Json(body)))
            .await
    }

    /// Has the first endpoint that answers take a snapshot of its own state (`index`, `term`,
    /// `bytes`, `node`).
    pub async fn snapshot(&self) -> Result<Value, ClientError> {
        self.send_ok(Method::POST, "/v1/snapshot", None).await
    }

    /// Has every endpoint take a snapshot, in endpoint order.
    pub async fn snapshot_all(&self) -> Vec<(String, Result<Value, String>)> {
        self.ask_each(Method::POST, "/v1/snapshot").await
    }
}

/// A membership answer (`GET /v1/members` or a change) as text: one line per member with its
/// role and addresses, then the voters, learners and removed members.
pub fn members_text(members: &Value) -> String {
    let list = |name: &str| {
        members[name]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let mut rows = vec![["ID", "ROLE", "PEER", "HTTP"].map(String::from).to_vec()];
    for member in members["members"].as_array().into_iter().flatten() {
        let text = |name: &str| member[name].as_str().unwrap_or("-").to_string();
        let mut role = text("role");
        if member["id"] == members["leader"] {
            role.push_str(" (leader)");
        }
        rows.push(vec![
            member["id"].to_string(),
            role,
            text("peer_address"),
            text("client_address"),
        ]);
    }
    let mut out = format_table(&rows);
    out.push_str(&format!(
        "voters [{}]{} learners [{}] removed [{}]; set at index {}{}\n",
        list("voters"),
        if members["joint"] == true {
            format!(" joint with outgoing [{}]", list("outgoing"))
        } else {
            String::new()
        },
        list("learners"),
        list("removed"),
        members["membership_index"],
        if members["committed"] == true {
            ""
        } else {
            " (not committed yet)"
        },
    ));
    out
}

/// A request body.
enum Body {
    Raw(Bytes),
    Json(Value),
}

fn parse_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(
        |_| serde_json::json!({"message": String::from_utf8_lossy(bytes).into_owned()}),
    )
}

fn server_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    ClientError::Server {
        status,
        body: parse_json(bytes),
    }
}

/// `part` of `total` bytes as a percentage.
fn percent(part: &Value, total: &Value) -> String {
    let (part, total) = (part.as_u64().unwrap_or(0), total.as_u64().unwrap_or(0));
    format!("{}%", (part * 100).checked_div(total).unwrap_or(100))
}

/// A leader's follower progress: `n2:0` (entries behind), `n4(learner):3`, and for a
/// follower receiving a snapshot `n3:snapshot 40%`.
fn progress_cell(status: &Value) -> String {
    let peers = status["progress"].as_array().into_iter().flatten();
    peers
        .map(|p| {
            let learner = if p["learner"] == true {
                "(learner)"
            } else {
                ""
            };
            let sent = &p["snapshot_sent"];
            if sent.is_object() {
                let done = percent(&sent["acknowledged_bytes"], &sent["total_bytes"]);
                format!("n{}{learner}:snapshot {done}", p["id"])
            } else {
                format!("n{}{learner}:{}", p["id"], p["lag"])
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The latest snapshot (`index/bytes`, `-` for none), and one being received.
fn snapshot_cell(status: &Value) -> String {
    let snapshot = &status["snapshot"];
    let mut cell = if snapshot.is_object() {
        format!("{}/{}B", snapshot["index"], snapshot["bytes"])
    } else {
        "-".to_string()
    };
    let receiving = &status["snapshot_receiving"];
    if receiving.is_object() {
        let done = percent(&receiving["received_bytes"], &receiving["total_bytes"]);
        cell.push_str(&format!(" (receiving {done})"));
    }
    cell
}

/// The cluster status as a text table, one row per endpoint, then the membership the first
/// answering node has in force. `SNAPSHOT` is the latest snapshot's index and size; `LAG`
/// (a leader's row) is each follower's distance, or its snapshot transfer's progress.
pub fn status_table(statuses: &[(String, Result<Value, String>)]) -> String {
    let mut rows = vec![[
        "ENDPOINT", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "FIRST", "LAST",
        "SNAPSHOT", "READY", "LAG",
    ]
    .map(String::from)
    .to_vec()];
    for (endpoint, result) in statuses {
        let row = match result {
            Ok(s) => vec![
                endpoint.clone(),
                s["id"].to_string(),
                s["role"].as_str().unwrap_or("?").to_string(),
                s["term"].to_string(),
                s["leader"].to_string(),
                s["commit_index"].to_string(),
                s["applied_index"].to_string(),
                s["first_index"].to_string(),
                s["last_index"].to_string(),
                snapshot_cell(s),
                s["ready"].to_string(),
                progress_cell(s),
            ],
            Err(error) => vec![endpoint.clone(), format!("unreachable: {error}")],
        };
        rows.push(row);
    }
    let mut out = format_table(&rows);
    let first = statuses.iter().find_map(|(_, s)| s.as_ref().ok());
    if let Some(membership) = first.map(|s| &s["membership"]).filter(|m| m.is_object()) {
        let list = |name: &str| {
            let ids = membership[name].as_array().into_iter().flatten();
            ids.map(Value::to_string).collect::<Vec<_>>().join(",")
        };
        out.push_str(&format!("membership: voters [{}]", list("voters")));
        if membership["joint"] == true {
            out.push_str(&format!(" joint with outgoing [{}]", list("outgoing")));
        }
        out.push_str(&format!(
            " learners [{}] removed [{}]\n",
            list("learners"),
            list("removed")
        ));
    }
    out
}

/// Left-aligned columns separated by two spaces.
pub fn format_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            // A row's last cell is not padded, so it does not widen its column (an
            // "unreachable" note spans the row).
            rows.iter()
                .filter(|r| c + 1 < r.len())
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<width$}", width = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unreserved characters pass; everything else, `/`, `%`, `+` and bytes that are not
    /// UTF-8 included, is escaped.
    #[test]
    fn keys_are_one_path_segment() {
        assert_eq!(encode_key(b"abc-1.2_~"), "abc-1.2_~");
        assert_eq!(encode_key(b"a/b c"), "a%2Fb%20c");
        assert_eq!(encode_key("é".as_bytes()), "%C3%A9");
        assert_eq!(encode_key(b"\x00\xff%+"), "%00%FF%25%2B");
    }

    /// `host:port` is taken as `http://host:port`; what cannot be an endpoint is refused with
    /// the reason, not reqwest's bare "builder error".
    #[test]
    fn endpoints_are_checked_and_completed() {
        assert_eq!(
            endpoint_url(" 127.0.0.1:8001/ ").unwrap(),
            "http://127.0.0.1:8001"
        );
        assert_eq!(
            endpoint_url("localhost:8001").unwrap(),
            "http://localhost:8001"
        );
        assert_eq!(
            endpoint_url("https://kv.example:443").unwrap(),
            "https://kv.example:443"
        );
        for (bad, says) in [
            ("", "empty"),
            ("ftp://host:21", "scheme must be http:// or https://"),
            ("http://host:8001/v1", "without a path"),
            ("http://:8001", "not a URL"),
        ] {
            let error = endpoint_url(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }

    /// The causes under an error are shown, each once.
    #[test]
    fn error_chains_show_every_cause() {
        #[derive(Debug)]
        struct Layer(&'static str, Option<Box<Layer>>);
        impl fmt::Display for Layer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Layer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let refused = Layer("connection refused", None);
        let connect = Layer("connect: connection refused", Some(Box::new(refused)));
        let top = Layer("error sending request", Some(Box::new(connect)));
        assert_eq!(
            error_chain(&top),
            "error sending request: connect: connection refused"
        );
    }

    /// Binary values go as base64 and come back as the same bytes; text stays text.
    #[test]
    fn json_bytes_round_trip_binary_and_text() {
        let mut object = serde_json::json!({});
        put_bytes(&mut object, "new", b"\x00\xff");
        put_bytes(&mut object, "expected", b"plain");
        assert_eq!(
            object,
            serde_json::json!({"new_base64": "AP8=", "expected": "plain"})
        );
        let read = |name| json_bytes(&object, name).unwrap();
        assert_eq!(read("new").as_deref(), Some(&b"\x00\xff"[..]));
        assert_eq!(read("expected").as_deref(), Some(&b"plain"[..]));
        assert_eq!(read("absent"), None);
        let bad = serde_json::json!({"key_base64": "*"});
        assert!(matches!(
            json_bytes(&bad, "key"),
            Err(ClientError::BadAnswer(_))
        ));
    }

    /// A kvnode's answers are told from another server's: the header, or a kvnode JSON error.
    #[test]
    fn foreign_answers_are_recognised() {
        assert!(from_kvnode(true, b"raw value"));
        assert!(from_kvnode(
            false,
            br#"{"error": "uri_too_long", "message": "m"}"#
        ));
        assert!(!from_kvnode(false, b"Not Found"));
        assert!(!from_kvnode(false, br#"{"status": 404}"#));
    }

    /// The status table shows snapshots, learners and snapshot transfers, then the membership.
    #[test]
    fn status_table_shows_snapshots_and_membership() {
        let leader = serde_json::json!({
            "id": 1, "role": "leader", "term": 2, "leader": 1, "commit_index": 90,
            "applied_index": 90, "first_index": 61, "last_index": 90, "ready": true,
            "snapshot": {"index": 80, "bytes": 4096}, "snapshot_receiving": null,
            "membership": {"voters": [1, 2], "outgoing": [], "joint": false, "learners": [3],
                "removed": [4]},
            "progress": [
                {"id": 2, "lag": 0, "learner": false, "snapshot_sent": null},
                {"id": 3, "lag": 90, "learner": true,
                    "snapshot_sent": {"acknowledged_bytes": 1024, "total_bytes": 4096}},
            ],
        });
        let table = status_table(&[
            ("http://a".into(), Ok(leader)),
            ("http://b".into(), Err("refused".into())),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].contains("FIRST") && lines[0].contains("SNAPSHOT"),
            "{table}"
        );
        assert!(lines[1].contains(" 61 "), "{table}");
        assert!(lines[1].contains("80/4096B"), "{table}");
        assert!(
            lines[1].ends_with("n2:0 n3(learner):snapshot 25%"),
            "{table}"
        );
        assert!(lines[2].contains("unreachable: refused"), "{table}");
        assert_eq!(
            lines[3],
            "membership: voters [1,2] learners [3] removed [4]"
        );
    }

    /// A membership answer lists each member with its role and addresses, the leader marked.
    #[test]
    fn members_text_marks_the_leader() {
        let members = serde_json::json!({
            "leader": 2, "voters": [1, 2], "outgoing": [1, 2, 3], "joint": true, "learners": [],
            "removed": [], "membership_index": 7, "committed": false,
            "members": [
                {"id": 1, "role": "voter", "peer_address": "h:1", "client_address": null},
                {"id": 2, "role": "voter", "peer_address": "h:2", "client_address": "h:8002"},
                {"id": 3, "role": "outgoing", "peer_address": "h:3", "client_address": null},
            ],
        });
        let text = members_text(&members);
        assert!(text.contains("2   voter (leader)  h:2   h:8002"), "{text}");
        assert!(text.contains("3   outgoing        h:3   -"), "{text}");
        assert!(
            text.ends_with(
                "voters [1,2] joint with outgoing [1,2,3] learners [] removed []; set at index \
                 7 (not committed yet)\n"
            ),
            "{text}"
        );
    }

    /// Columns line up and unreachable rows do not widen the columns.
    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["A".to_string(), "BB".to_string(), "C".to_string()],
            vec!["aaa".to_string(), "b".to_string(), "c".to_string()],
            vec!["x".to_string(), "unreachable: a long reason".to_string()],
        ];
        assert_eq!(
            format_table(&rows),
            "A    BB  C\naaa  b   c\nx    unreachable: a long reason\n"
        );
    }
}
