//! The HTTP client behind `kvctl`, with fail-over between endpoints.
//!
//! A request goes to the endpoint that answered last. It moves on to the next endpoint when the
//! current one cannot be reached (nothing was sent) or answers 503 with `"applied": "no"` or
//! without `applied` (nothing happened). A 503 with `"applied": "unknown"` is returned to the
//! caller as it is: resending a write whose outcome is unknown is the caller's decision.
//!
//! A client made [`KvClient::with_request_ids`] (as `kvctl` is) sends every write with a new
//! random `Request-Id` header and keeps it on that write's fail-over retries. The cluster
//! applies such a write at most once however often it arrives, so such a client also moves on
//! to the next endpoint after a 503 `"applied": "unknown"` or a timeout, and gets the first
//! answer if the earlier attempt did apply.

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
        }
    }
}

impl std::error::Error for ClientError {}

/// The outcome of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    /// True when the new value was stored.
    pub swapped: bool,
    /// The server's JSON answer.
    pub body: Value,
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

/// Percent-encodes `key` as one path segment (everything but unreserved characters).
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
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
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .collect();
        let scheme = if tls.is_some() { "https://" } else { "http://" };
        if let Some(other) = endpoints.iter().find(|e| !e.starts_with(scheme)) {
            return Err(ClientError::Usage(match tls {
                Some(_) => format!("{other}: with a CA to trust (--cacert) endpoints are https://"),
                None if other.starts_with("https://") => {
                    format!("{other}: an https:// endpoint needs the CA to trust (--cacert)")
                }
                None => format!("{other}: endpoints are http://HOST:PORT or https://HOST:PORT"),
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
            .map_err(|e| ClientError::Usage(e.to_string()))?;
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
    /// first answer that is not a retryable 503.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last_error = String::new();
        let write = method != Method::GET && path.starts_with("/v1/kv");
        // One ID per write, the same on every attempt: the cluster applies it once.
        let request_id = (self.request_ids && write)
            .then(|| format!("{:016x}", raft_core::SessionId::random().0));
        // An unknown outcome kept while another endpoint is tried with the same request ID.
        let mut unknown = None;
        for step in 0..self.endpoints.len() {
            let index = (first + step) % self.endpoints.len();
            let url = format!("{}{path}", self.endpoints[index]);
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
                Err(error)
                    if error.is_connect() || (request_id.is_some() && error.is_timeout()) =>
                {
                    last_error = format!("{url}: {error}");
                    continue;
                }
                Err(error) => return Err(ClientError::Unavailable(format!("{url}: {error}"))),
            };
            let status = response.status();
            let bytes = response
                .bytes()
                .await
                .map_err(|e| ClientError::Unavailable(format!("{url}: {e}")))?;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                let json = parse_json(&bytes);
                if json["applied"] != "unknown" {
                    last_error = format!("{url}: {}", json["message"].as_str().unwrap_or(""));
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
            None => Err(ClientError::Unavailable(last_error)),
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
    pub async fn put(&self, key: &str, value: Bytes) -> Result<u64, ClientError> {
        let path = format!("/v1/kv/{}", encode_key(key));
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

    /// Reads `key` (`consistency`: linearizable or stale); `None` when absent.
    pub async fn get(&self, key: &str, consistency: &str) -> Result<Option<Bytes>, ClientError> {
        let path = format!("/v1/kv/{}?consistency={consistency}", encode_key(key));
        let (status, bytes) = self.send(Method::GET, &path, None).await?;
        match status {
            StatusCode::OK => Ok(Some(bytes)),
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(server_error(other, &bytes)),
        }
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, ClientError> {
        let path = format!("/v1/kv/{}", encode_key(key));
        let body = self.send_ok(Method::DELETE, &path, None).await?;
        Ok(body["deleted"].as_bool().unwrap_or(false))
    }

    /// Sets `key` to `new` if it holds `expected` (`None`: if it is absent).
    pub async fn cas(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
    ) -> Result<CasOutcome, ClientError> {
        let path = format!("/v1/kv/{}/cas", encode_key(key));
        let body = serde_json::json!({"expected": expected, "new": new});
        let (status, bytes) = self
            .send(Method::POST, &path, Some(Body::Json(body)))
            .await?;
        match status {
            StatusCode::OK => Ok(CasOutcome {
                swapped: true,
                body: parse_json(&bytes),
            }),
            StatusCode::CONFLICT => Ok(CasOutcome {
                swapped: false,
                body: parse_json(&bytes),
            }),
            other => Err(server_error(other, &bytes)),
        }
    }

    /// Up to `limit` pairs under `prefix`: the server's JSON (`entries`, `more`).
    pub async fn scan(
        &self,
        prefix: &str,
        limit: u32,
        consistency: &str,
    ) -> Result<Value, ClientError> {
        let path = format!(
            "/v1/kv?prefix={}&limit={limit}&consistency={consistency}",
            encode_key(prefix)
        );
        self.send_ok(Method::GET, &path, None).await
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
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                let bytes = response.bytes().await.map_err(|e| e.to_string())?;
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

    /// Unreserved characters pass; everything else, `/` included, is escaped.
    #[test]
    fn keys_are_one_path_segment() {
        assert_eq!(encode_key("abc-1.2_~"), "abc-1.2_~");
        assert_eq!(encode_key("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_key("é"), "%C3%A9");
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
