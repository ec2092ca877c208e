//! The HTTP API against a real three-process cluster (memory storage, TCP): every endpoint's
//! documented answer, and every error: bad input is a 4xx with a JSON error naming the
//! problem, no leader is a 503 that says nothing was applied, and a request that outlives its
//! timeout is a 503 that says the write may or may not have applied.

use kv_example::config::{StorageKind, TransportKind};
use kv_example::local_cluster::{fresh_temp_dir, ClusterSpec, LocalCluster};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn cluster(extra_args: &[&str]) -> LocalCluster {
    cluster_of(3, extra_args)
}

fn cluster_of(nodes: u64, extra_args: &[&str]) -> LocalCluster {
    LocalCluster::start(ClusterSpec {
        kvnode: env!("CARGO_BIN_EXE_kvnode").into(),
        nodes,
        storage: StorageKind::Mem,
        transport: TransportKind::Tcp,
        data_dir: fresh_temp_dir("kv-api-test").unwrap(),
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        log_filter: "info".into(),
    })
    .expect("nodes start")
}

/// Sends a request and returns the status and the body (JSON when it parses, else a string).
async fn call(method: Method, url: &str, body: Option<Vec<u8>>) -> (StatusCode, Value) {
    let http = Client::new();
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.expect("the node answers");
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

async fn call_json(method: Method, url: &str, body: Value) -> (StatusCode, Value) {
    let response = Client::new()
        .request(method, url)
        .json(&body)
        .send()
        .await
        .expect("the node answers");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Stops the cluster and removes its folder (a failed test keeps it, logs included).
fn finish(cluster: LocalCluster) {
    let folder = cluster.spec().data_dir.clone();
    drop(cluster);
    std::fs::remove_dir_all(folder).expect("the test folder is removed");
}

/// Asserts a JSON error with this status, code, and a message containing `says`.
fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: &str, says: &str) {
    let (got_status, body) = answer;
    assert_eq!(*got_status, status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{message:?} should say {says:?}");
}

/// Every endpoint answers as the API documents, from a follower and the leader alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_as_documented() {
    let cluster = cluster(&[]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let [one, two, three] = [1, 2, 3].map(|id| cluster.endpoint(id));

    let put = call(
        Method::PUT,
        &format!("{one}/v1/kv/a%2Fkey"),
        Some(b"v1".to_vec()),
    )
    .await;
    assert_eq!(put.0, StatusCode::OK, "{}", put.1);
    assert!(put.1["index"].as_u64().unwrap() > 0);
    let get = Client::new()
        .get(format!("{two}/v1/kv/a%2Fkey"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.bytes().await.unwrap().as_ref(), b"v1");

    // The same read through the log, and from this node's copy once it has applied the write.
    let logged = Client::new()
        .get(format!("{three}/v1/kv/a%2Fkey?consistency=log"))
        .send()
        .await
        .unwrap();
    assert_eq!(logged.status(), StatusCode::OK);
    assert_eq!(logged.bytes().await.unwrap().as_ref(), b"v1");
    let stale = call(
        Method::GET,
        &format!("{three}/v1/kv/a%2Fkey?consistency=stale"),
        None,
    )
    .await;
    assert_eq!(stale.1, "v1");

    // Compare-and-swap: a match swaps, a mismatch is 409 with the current value.
    let cas_url = format!("{three}/v1/kv/a%2Fkey/cas");
    let swapped = call_json(
        Method::POST,
        &cas_url,
        json!({"expected": "v1", "new": "v2"}),
    )
    .await;
    assert_eq!(swapped.0, StatusCode::OK, "{}", swapped.1);
    assert_eq!(swapped.1["swapped"], true);
    let refused = call_json(
        Method::POST,
        &cas_url,
        json!({"expected": "v1", "new": "v3"}),
    )
    .await;
    assert_eq!(refused.0, StatusCode::CONFLICT);
    assert_eq!(refused.1["current"], "v2");
    let create = format!("{three}/v1/kv/fresh/cas");
    let created = call_json(Method::POST, &create, json!({"expected": null, "new": "x"})).await;
    assert_eq!(created.1["swapped"], true, "{}", created.1);

    // Scan with a limit, linearizable and stale.
    for i in 0..5 {
        let url = format!("{one}/v1/kv/scan{i}");
        assert_eq!(
            call(Method::PUT, &url, Some(vec![b'0' + i])).await.0,
            StatusCode::OK
        );
    }
    let page = call(
        Method::GET,
        &format!("{two}/v1/kv?prefix=scan&limit=3"),
        None,
    )
    .await;
    assert_eq!(page.0, StatusCode::OK);
    assert_eq!(page.1["more"], true);
    let keys: Vec<&str> = page.1["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["scan0", "scan1", "scan2"]);
    // A stale read on a follower sees the write once it has applied it.
    let stale_url = format!("{two}/v1/kv?prefix=scan&limit=10&consistency=stale");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stale = call(Method::GET, &stale_url, None).await;
        if stale.1["entries"].as_array().map(Vec::len) == Some(5) {
            assert_eq!(stale.1["more"], false);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stale scan never saw 5 keys: {}",
            stale.1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Delete, then 404 on read.
    let deleted = call(Method::DELETE, &format!("{two}/v1/kv/fresh"), None).await;
    assert_eq!(deleted.1["deleted"], true, "{}", deleted.1);
    let gone = call(Method::GET, &format!("{one}/v1/kv/fresh"), None).await;
    assert_error(&gone, StatusCode::NOT_FOUND, "not_found", "does not exist");

    // Status, members, metrics, health.
    let status = call(Method::GET, &format!("{one}/v1/status"), None).await.1;
    let leader = status["leader"].as_u64().expect("a leader is known");
    let leader_status = call(
        Method::GET,
        &format!("{}/v1/status", cluster.endpoint(leader)),
        None,
    )
    .await
    .1;
    assert_eq!(leader_status["role"], "leader");
    assert_eq!(leader_status["progress"].as_array().unwrap().len(), 2);
    assert!(leader_status["commit_index"].as_u64().unwrap() >= 9);
    let members = call(Method::GET, &format!("{one}/v1/members"), None)
        .await
        .1;
    assert_eq!(members["members"].as_array().unwrap().len(), 3);
    assert_eq!(members["voters"], json!([1, 2, 3]), "{members}");
    assert_eq!(members["leader"], leader);
    assert_eq!(members["committed"], true);
    for field in [
        "membership",
        "first_index",
        "snapshot",
        "snapshot_receiving",
    ] {
        assert!(
            leader_status.get(field).is_some(),
            "/v1/status lacks {field}"
        );
    }
    assert_eq!(leader_status["membership"]["voters"], json!([1, 2, 3]));
    assert_eq!(leader_status["progress"][0]["learner"], false);
    let snapshot = call(Method::POST, &format!("{two}/v1/snapshot"), None).await;
    assert_eq!(snapshot.0, StatusCode::OK, "{}", snapshot.1);
    assert_eq!(snapshot.1["node"], 2, "a snapshot is the asked node's own");
    assert!(snapshot.1["index"].as_u64().unwrap() > 0);
    let two_status = call(Method::GET, &format!("{two}/v1/status"), None).await.1;
    assert_eq!(two_status["snapshot"]["index"], snapshot.1["index"]);
    assert_eq!(
        members["members"][1]["client_address"],
        cluster.members()[1].client_address.to_string()
    );
    let metrics = Client::new()
        .get(format!("{}/metrics", cluster.endpoint(leader)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "kv_proposals_total{op=\"put\"}",
        "raft_commit_index{node=",
        "raft_term{node=",
        "kv_apply_seconds_bucket",
        "raft_leader_changes_total{node=",
        "raft_log_last_index",
        "raft_peer_replication_lag_entries{peer=",
        "kv_request_seconds_count{op=\"put\"}",
        "raft_log_first_index",
        "raft_snapshot_index",
        "raft_snapshot_bytes",
        "raft_membership_voters 3",
        // From the library, through the metrics facade.
        "raft_proposals_total{node=",
        "raft_append_bytes_sent_total{node=",
        "raft_write_sync_seconds_bucket{node=",
        "raft_apply_seconds_count{node=",
        "raft_is_leader{node=",
        "kv_snapshots_built_total",
        "kv_snapshots_installed_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    assert_eq!(
        call(Method::GET, &format!("{one}/healthz"), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(Method::GET, &format!("{one}/readyz"), None).await.0,
        StatusCode::OK
    );
    finish(cluster);
}

/// Bad input is refused with a 4xx and a JSON error that says what was wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_json_error() {
    let cluster = cluster(&[
        "--key-bytes-max",
        "16",
        "--value-bytes-max",
        "64",
        "--scan-limit-max",
        "10",
    ]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let node = cluster.endpoint(1);
    let kv = |path: &str| format!("{node}/v1/kv/{path}");

    let long_key = "k".repeat(17);
    let answer = call(Method::PUT, &kv(&long_key), Some(b"v".to_vec())).await;
    assert_error(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "key_too_large",
        "key_bytes_max is 16",
    );
    let answer = call(Method::PUT, &kv("k"), Some(vec![b'v'; 65])).await;
    assert_error(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "value_too_large",
        "value_bytes_max is 64",
    );
    // Keys are bytes: `%FF` is a key like any other (absent here); only a malformed escape
    // is bad input.
    let answer = call(Method::GET, &kv("%FF"), None).await;
    assert_error(
        &answer,
        StatusCode::NOT_FOUND,
        "not_found",
        "does not exist",
    );
    let answer = call(Method::GET, &kv("a%F"), None).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "bad key");
    let answer = call(Method::GET, &kv("k?consistency=lease"), None).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "without --lease-reads",
    );
    let answer = call(Method::GET, &kv("k?consistency=eventual"), None).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "unknown");
    let answer = call(Method::GET, &kv("k?colour=blue"), None).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "colour");
    // Writes take no query parameters: one they do not know is refused, not ignored.
    let answer = call(Method::PUT, &kv("k?ttl=5"), Some(b"v".to_vec())).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "ttl");
    let answer = call(Method::DELETE, &kv("k?ttl=5"), None).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "ttl");
    // An empty key is bad input, not an unknown endpoint.
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let answer = call(method, &kv(""), Some(b"v".to_vec())).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "empty");
    }
    let answer = call(Method::POST, &kv("/cas"), Some(b"{}".to_vec())).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "empty");
    // A request line or headers over the node's limits: JSON errors too.
    let long_query = format!("k?consistency={}", "x".repeat(9000));
    let answer = call(Method::GET, &kv(&long_query), None).await;
    assert_error(
        &answer,
        StatusCode::URI_TOO_LONG,
        "uri_too_long",
        "http_uri_bytes_max",
    );
    let response = Client::new()
        .get(kv("k"))
        .header("x-padding", "p".repeat(20_000))
        .send()
        .await
        .expect("the node answers");
    let status = response.status();
    let answer = (status, response.json().await.unwrap_or(Value::Null));
    assert_error(
        &answer,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        "http_header_bytes_max",
    );

    let cas = kv("k/cas");
    let answer = call(Method::POST, &cas, Some(b"{not json".to_vec())).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "must be JSON",
    );
    let answer = call_json(Method::POST, &cas, json!({"expected": "a"})).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "new");
    let answer = call_json(Method::POST, &cas, json!({"new": "x".repeat(65)})).await;
    assert_error(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "value_too_large",
        "value_bytes_max is 64",
    );
    let answer = call_json(Method::POST, &cas, json!({"new": "x".repeat(5000)})).await;
    assert_error(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "compare-and-swap body",
    );

    let answer = call(Method::GET, &format!("{node}/v1/kv?limit=0"), None).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "scan_limit_max (10)",
    );
    let answer = call(Method::GET, &format!("{node}/v1/kv?limit=11"), None).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "got 11");
    let answer = call(Method::GET, &format!("{node}/v1/kv?limit=many"), None).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "limit");
    let answer = call(
        Method::GET,
        &format!("{node}/v1/kv?prefix={long_key}"),
        None,
    )
    .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "prefix");
    let answer = call(Method::GET, &format!("{node}/v1/kv?start={long_key}"), None).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "start");
    let answer = call(
        Method::GET,
        &format!("{node}/v1/kv?prefix=a&prefix_base64=YQ%3D%3D"),
        None,
    )
    .await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "prefix_base64",
    );
    let answer = call(Method::GET, &format!("{node}/v1/kv?colour=blue"), None).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "colour");

    let answer = call(Method::GET, &format!("{node}/v2/nothing"), None).await;
    assert_error(
        &answer,
        StatusCode::NOT_FOUND,
        "no_such_endpoint",
        "no such endpoint",
    );
    let answer = call(Method::PATCH, &kv("k"), None).await;
    assert_error(
        &answer,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method",
    );
    // Nothing of the above reached the log: the key was never written.
    let answer = call(Method::GET, &kv("k"), None).await;
    assert_eq!(answer.0, StatusCode::NOT_FOUND);
    finish(cluster);
}

/// Without a quorum: a write waits `leader_wait_ms` for a leader and gets a 503 that says
/// nothing was applied; a node whose request timeout is shorter answers a 503 that says the
/// write may or may not have applied. `/readyz` turns 503 while `/healthz` stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leader_is_a_bounded_503() {
    let mut cluster = cluster(&["--leader-wait-ms", "400", "--request-timeout-ms", "3000"]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    cluster.kill(2).unwrap();
    cluster.kill(3).unwrap();
    let node = cluster.endpoint(1);
    // check_quorum: a leader without followers steps down within an election timeout.
    let deadline = Instant::now() + Duration::from_secs(5);
    while call(Method::GET, &format!("{node}/v1/status"), None)
        .await
        .1["leader"]
        != Value::Null
    {
        assert!(
            Instant::now() < deadline,
            "node 1 kept a leader without a quorum"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let answer = call(Method::PUT, &format!("{node}/v1/kv/k"), Some(b"v".to_vec())).await;
    assert_error(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "no_leader",
        "nothing was applied",
    );
    assert_eq!(answer.1["applied"], "no");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let answer = call(Method::GET, &format!("{node}/v1/kv/k"), None).await;
    assert_error(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "no_leader",
        "no leader",
    );
    assert_eq!(
        call(Method::GET, &format!("{node}/readyz"), None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        call(Method::GET, &format!("{node}/healthz"), None).await.0,
        StatusCode::OK
    );

    // A request timeout below the leader wait: the answer cannot say whether it applied.
    cluster.set_member_args(
        1,
        vec![
            "--leader-wait-ms".into(),
            "5000".into(),
            "--request-timeout-ms".into(),
            "300".into(),
        ],
    );
    cluster.terminate(1, Duration::from_secs(10)).unwrap();
    cluster.start_member(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let response = Client::new()
            .put(format!("{node}/v1/kv/k"))
            .body("v")
            .send()
            .await;
        if let Ok(response) = response {
            let status = response.status();
            break (status, response.json::<Value>().await.unwrap());
        }
        assert!(Instant::now() < deadline, "node 1 did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_error(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        "may or may not have been applied",
    );
    assert_eq!(answer.1["applied"], "unknown");
    finish(cluster);
}

async fn post_json(url: &str, body: Value) -> (StatusCode, Value) {
    call_json(Method::POST, url, body).await
}

/// Waits until `check` holds for node `endpoint`'s answer to `path`, for up to `seconds`.
async fn wait_for(endpoint: &str, path: &str, seconds: u64, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let answer = call(Method::GET, &format!("{endpoint}{path}"), None)
            .await
            .1;
        if check(&answer) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never satisfied the check: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every admin refusal is a 4xx whose message is the protocol's reason, sent through a
/// follower (which forwards to the leader and returns its answer): bad bodies, an unknown
/// member, a member added twice, a voter promoted, a transfer to a non-voter, a second change
/// while one is in progress. A change that cannot commit is a 503 that says it may still take
/// effect, and with no leader an admin request is a bounded 503 that says nothing changed.
///
/// Long election timeouts (3-4 s) keep the leader in place for a moment after it loses its
/// quorum, which is how a change is held in progress: node 4 (a learner nobody runs) is
/// promoted while node 3 is down, so the joint configuration's new half has 2 of 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refusals_are_4xx_with_the_reason() {
    let mut cluster = cluster(&[
        "--election-timeout-ticks-min",
        "300",
        "--election-timeout-ticks-max",
        "400",
        "--request-timeout-ms",
        "1500",
        "--leader-wait-ms",
        "500",
    ]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let status = call(
        Method::GET,
        &format!("{}/v1/status", cluster.endpoint(1)),
        None,
    )
    .await;
    let leader = status.1["leader"].as_u64().expect("a leader");
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (follower, doomed) = (followers[0], followers[1]);
    let node = cluster.endpoint(follower);
    let members = format!("{node}/v1/members");

    let answer = call(Method::POST, &members, Some(b"{not json".to_vec())).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "must be JSON",
    );
    let answer = post_json(&members, json!({"id": 4, "colour": "blue"})).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "colour");
    let answer = post_json(&members, json!({"id": 4})).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "peer_address is required",
    );
    let answer = post_json(&members, json!({"id": 0, "peer_address": "127.0.0.1:9"})).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_id",
        "node id n0 is not allowed",
    );
    let answer = post_json(&members, json!({"id": 2, "peer_address": "127.0.0.1:9"})).await;
    assert_error(
        &answer,
        StatusCode::CONFLICT,
        "already_member",
        "node n2 is already a member",
    );
    let answer = call(Method::POST, &format!("{members}/9/promote"), None).await;
    assert_error(
        &answer,
        StatusCode::NOT_FOUND,
        "unknown_member",
        "node n9 is not a member",
    );
    let answer = call(Method::POST, &format!("{members}/2/promote"), None).await;
    assert_error(
        &answer,
        StatusCode::CONFLICT,
        "already_voter",
        "node n2 is already a voter",
    );
    let answer = call(Method::POST, &format!("{members}/two/promote"), None).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "must be a number",
    );
    let answer = call(Method::DELETE, &format!("{members}/9"), None).await;
    assert_error(
        &answer,
        StatusCode::NOT_FOUND,
        "unknown_member",
        "node n9 is not a member",
    );
    let transfer = format!("{node}/v1/leader/transfer");
    let answer = post_json(&transfer, json!({"to": 9})).await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "not_a_voter",
        "n9 is not a voting member",
    );
    let answer = post_json(&transfer, json!({"node": 2})).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "to");
    // A request that was already forwarded is not forwarded again: the answer names the leader.
    let answer = Client::new()
        .post(format!("{members}/9/promote"))
        .header("x-kv-forwarded-by", "7")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        (body["error"].as_str(), body["leader"].as_u64()),
        (Some("not_leader"), Some(leader))
    );
    assert_eq!(body["applied"], "no");

    // Node 4 is added (nothing runs there). Promoting it is refused: it never caught up
    // (waiting for it first runs out, too), and nothing changes.
    let port = kv_example::local_cluster::free_ports(1, false).unwrap()[0];
    let added = post_json(
        &members,
        json!({"id": 4, "peer_address": format!("127.0.0.1:{port}")}),
    )
    .await;
    assert_eq!(added.0, StatusCode::OK, "{}", added.1);
    assert_eq!(added.1["learners"], json!([4]));
    for query in ["", "?wait_ms=300"] {
        let answer = call(Method::POST, &format!("{members}/4/promote{query}"), None).await;
        assert_error(
            &answer,
            StatusCode::CONFLICT,
            "not_caught_up",
            "learner n4 has not caught up",
        );
        assert_eq!(answer.1["applied"], "no");
    }
    let answer = call(Method::POST, &format!("{members}/4/promote?ttl=5"), None).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request", "wait_ms");
    let unchanged = call(Method::GET, &members, None).await;
    assert_eq!(unchanged.1["learners"], json!([4]), "{}", unchanged.1);

    // With node 3 down, removing the other follower goes through a joint configuration whose
    // new half ({leader, doomed}) cannot commit, so a second change is refused while it is in
    // progress.
    cluster.kill(doomed).unwrap();
    let leader_endpoint = cluster.endpoint(leader);
    let remove_url = format!("{leader_endpoint}/v1/members/{follower}");
    let remove = tokio::spawn(async move { call(Method::DELETE, &remove_url, None).await });
    wait_for(&leader_endpoint, "/v1/members", 5, |m| m["joint"] == true).await;
    let answer = call(
        Method::DELETE,
        &format!("{leader_endpoint}/v1/members/4"),
        None,
    )
    .await;
    assert_error(
        &answer,
        StatusCode::CONFLICT,
        "change_in_progress",
        "another membership change is in progress",
    );
    let members = format!("{leader_endpoint}/v1/members");
    let answer = post_json(&members, json!({"id": 5, "peer_address": "127.0.0.1:9"})).await;
    assert_error(
        &answer,
        StatusCode::CONFLICT,
        "change_in_progress",
        "another membership change is in progress",
    );
    let answer = remove.await.unwrap();
    assert_error(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        "it may still be",
    );
    assert_eq!(answer.1["applied"], "unknown");

    // The leader steps down (check_quorum), and no leader can be elected: a bounded 503.
    wait_for(&node, "/v1/status", 20, |s| s["leader"].is_null()).await;
    let started = Instant::now();
    let answer = call(Method::POST, &format!("{members}/4/promote"), None).await;
    assert_error(
        &answer,
        StatusCode::SERVICE_UNAVAILABLE,
        "no_leader",
        "nothing was changed",
    );
    assert_eq!(answer.1["applied"], "no");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    finish(cluster);
}

/// One voter: removing it is refused; a learner added (with `addr`, the short name) and
/// removed leaves its ID retired, so adding it again or promoting it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_voter_and_removed_ids_are_refused() {
    let cluster = cluster_of(1, &[]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let node = cluster.endpoint(1);
    let members = format!("{node}/v1/members");
    let answer = call(Method::DELETE, &format!("{members}/1"), None).await;
    assert_error(
        &answer,
        StatusCode::CONFLICT,
        "no_voters_left",
        "the change would leave no voter",
    );
    let added = post_json(
        &members,
        json!({"id": 2, "addr": "127.0.0.1:9", "client_address": "127.0.0.1:10"}),
    )
    .await;
    assert_eq!(added.0, StatusCode::OK, "{}", added.1);
    assert_eq!(added.1["members"][1]["peer_address"], "127.0.0.1:9");
    assert_eq!(added.1["members"][1]["client_address"], "127.0.0.1:10");
    assert_eq!(added.1["members"][1]["role"], "learner");
    let removed = call(Method::DELETE, &format!("{members}/2"), None).await;
    assert_eq!(removed.0, StatusCode::OK, "{}", removed.1);
    assert_eq!(removed.1["removed"], json!([2]));
    let answer = post_json(&members, json!({"id": 2, "peer_address": "127.0.0.1:9"})).await;
    assert_error(
        &answer,
        StatusCode::CONFLICT,
        "id_removed",
        "node id n2 was removed and cannot be reused",
    );
    let answer = call(Method::POST, &format!("{members}/2/promote"), None).await;
    assert_error(
        &answer,
        StatusCode::NOT_FOUND,
        "unknown_member",
        "node n2 is not a member",
    );
    finish(cluster);
}

/// Sends a request with a `Request-Id` header and returns the status and JSON body.
async fn call_with_request_id(
    method: Method,
    url: &str,
    request_id: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let response = Client::new()
        .request(method, url)
        .header("request-id", request_id)
        .body(body)
        .send()
        .await
        .expect("the node answers");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A write retried with the request ID of one that already succeeded (as a client does after a
/// timeout, to any node) gets the original answer and does not apply again: the PUT keeps its
/// first index and does not overwrite the later write to the key, the CAS still reports its
/// swap instead of failing its comparison against its own value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_with_its_request_id_applies_once_with_the_first_answer() {
    let cluster = cluster(&[]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let [one, two, three] = [1, 2, 3].map(|id| cluster.endpoint(id));

    let first = call_with_request_id(
        Method::PUT,
        &format!("{one}/v1/kv/retried"),
        "put-1",
        b"first".to_vec(),
    )
    .await;
    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    let index = first.1["index"].as_u64().expect("an index");
    let later = call_with_request_id(
        Method::PUT,
        &format!("{two}/v1/kv/retried"),
        "put-2",
        b"later".to_vec(),
    )
    .await;
    assert_eq!(later.0, StatusCode::OK, "{}", later.1);
    for endpoint in [&one, &two, &three] {
        let retried = call_with_request_id(
            Method::PUT,
            &format!("{endpoint}/v1/kv/retried"),
            "put-1",
            b"first".to_vec(),
        )
        .await;
        assert_eq!(retried.0, StatusCode::OK, "{}", retried.1);
        assert_eq!(
            retried.1["index"].as_u64(),
            Some(index),
            "the original index"
        );
    }
    let value = Client::new()
        .get(format!("{three}/v1/kv/retried"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        value.bytes().await.unwrap().as_ref(),
        b"later",
        "the retried PUT did not apply again"
    );

    let cas = |endpoint: String| async move {
        let response = Client::new()
            .post(format!("{endpoint}/v1/kv/swapped/cas"))
            .header("request-id", "cas-1")
            .json(&json!({"expected": null, "new": "x"}))
            .send()
            .await
            .expect("the node answers");
        let status = response.status();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    let swapped = cas(two.clone()).await;
    assert_eq!(swapped.0, StatusCode::OK, "{}", swapped.1);
    let again = cas(one.clone()).await;
    assert_eq!(again, swapped, "the retried CAS answers its first outcome");

    let bad = call_with_request_id(
        Method::PUT,
        &format!("{one}/v1/kv/retried"),
        "",
        b"x".to_vec(),
    )
    .await;
    assert_eq!(bad.0, StatusCode::BAD_REQUEST, "{}", bad.1);
    assert_eq!(bad.1["error"], "bad_request", "{}", bad.1);
    finish(cluster);
}

/// `kvctl put KEY -` stores standard input as it is, and `kvctl get` writes the value back
/// byte for byte: it printed binary values decoded as lossy UTF-8 with a newline added (a
/// 262,144-byte value came out as 476,137 bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_put_and_get_round_trip_a_binary_value_byte_for_byte() {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let cluster = cluster(&[]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let endpoints = cluster.endpoints().join(",");
    let value: Vec<u8> = (0..262_144u32)
        .map(|k| (k.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let kvctl = env!("CARGO_BIN_EXE_kvctl");
    let mut put = Command::new(kvctl)
        .args(["--endpoints", &endpoints, "put", "binary", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("kvctl runs");
    put.stdin.take().expect("a pipe").write_all(&value).unwrap();
    assert!(put.wait().unwrap().success(), "kvctl put failed");
    let get = tokio::task::spawn_blocking(move || {
        Command::new(kvctl)
            .args(["--endpoints", &endpoints, "get", "binary"])
            .output()
            .expect("kvctl runs")
    })
    .await
    .unwrap();
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(get.stdout.len(), value.len(), "no byte added or lost");
    assert!(get.stdout == value, "the value comes back byte for byte");
}
