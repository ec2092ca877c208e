//! kvnode at the edge of its resources, against a one-node cluster (memory storage, TCP): a
//! client that is slow or silent is cut after the timeout for what it is doing (sending
//! headers, sending a body, idling between requests), and past `http_connections_max` a new
//! client is still served, because the node closes its oldest connection that has no request
//! in progress; a connection in the middle of a request is never cut.

use kv_example::config::{StorageKind, TransportKind};
use kv_example::local_cluster::{fresh_temp_dir, ClusterSpec, LocalCluster};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one_node(extra_args: &[&str]) -> LocalCluster {
    LocalCluster::start(ClusterSpec {
        kvnode: env!("CARGO_BIN_EXE_kvnode").into(),
        nodes: 1,
        storage: StorageKind::Mem,
        transport: TransportKind::Tcp,
        data_dir: fresh_temp_dir("kv-edge-test").unwrap(),
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        log_filter: "info".into(),
    })
    .expect("the node starts")
}

/// Stops the cluster and removes its folder (a failed test keeps it, logs included).
fn finish(cluster: LocalCluster) {
    let folder = cluster.spec().data_dir.clone();
    drop(cluster);
    std::fs::remove_dir_all(folder).expect("the test folder is removed");
}

fn address(cluster: &LocalCluster) -> SocketAddr {
    cluster.members()[0].client_address
}

/// Reads until the node closes the connection, at most `limit` after `started`; returns when
/// that happened (since `started`) and what the node sent. A reset counts as closed.
async fn read_until_closed(
    stream: &mut TcpStream,
    started: Instant,
    limit: Duration,
) -> (Duration, String) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            stream.read(&mut buffer),
        )
        .await;
        match read {
            Err(_) => panic!(
                "the connection was still open after {limit:?}; received {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(count)) => received.extend_from_slice(&buffer[..count]),
        }
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&received).into_owned(),
    )
}

/// The value of one line of the node's `/metrics`, e.g.
/// `kv_http_connections_closed_total{reason="limit"}`.
async fn metric(cluster: &LocalCluster, line: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", cluster.endpoint(1)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|row| row.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("/metrics lacks {line}:\n{text}"))
}

fn closed_for(reason: &str) -> String {
    format!("kv_http_connections_closed_total{{reason=\"{reason}\"}}")
}

/// Reads one response whose body has a `content-length`, and returns it whole.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let count = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("a response within 5 s")
            .expect("the read succeeds");
        assert!(
            count > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buffer[..count]);
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("the response has a content-length");
            if body.len() >= length {
                return text;
            }
        }
    }
}

/// Each timeout closes the connection that exceeds it, and not much before: a request line
/// cut short after `http_header_read_timeout_ms` from its first byte; a connection that never
/// sends anything, and a keep-alive connection after its answer, after
/// `http_keep_alive_idle_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_closed_after_its_timeout() {
    let cluster = one_node(&[
        "--http-header-read-timeout-ms",
        "400",
        "--http-keep-alive-idle-timeout-ms",
        "1200",
    ]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let node = address(&cluster);
    let limit = Duration::from_secs(4);

    let mut kept_alive = TcpStream::connect(node).await.unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: node\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut kept_alive).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut silent = TcpStream::connect(node).await.unwrap();
    let mut half_headers = TcpStream::connect(node).await.unwrap();
    half_headers.write_all(b"GET /v1/sta").await.unwrap();
    let since = Instant::now();

    let (headers, _) = read_until_closed(&mut half_headers, since, limit).await;
    let (idle, _) = read_until_closed(&mut silent, since, limit).await;
    let (kept, _) = read_until_closed(&mut kept_alive, since, limit).await;
    assert!(
        headers >= Duration::from_millis(300) && headers < Duration::from_millis(1000),
        "half-sent headers closed after {headers:?}"
    );
    for took in [idle, kept] {
        assert!(
            took >= Duration::from_millis(1000),
            "an idle connection closed after {took:?}"
        );
    }
    println!("closed after: headers {headers:?}, silent {idle:?}, kept alive {kept:?}");
    assert_eq!(metric(&cluster, &closed_for("header_timeout")).await, 1);
    assert!(metric(&cluster, &closed_for("idle_timeout")).await >= 2);
    finish(cluster);
}

/// A body that does not arrive within `http_body_read_timeout_ms` is answered 408 with a JSON
/// error, the connection closes, and nothing was written; a large body that arrives in time is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_a_408_and_applies_nothing() {
    let cluster = one_node(&["--http-body-read-timeout-ms", "500"]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let node = address(&cluster);
    let mut half_body = TcpStream::connect(node).await.unwrap();
    half_body
        .write_all(b"PUT /v1/kv/slow HTTP/1.1\r\nhost: node\r\ncontent-length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let since = Instant::now();
    let (took, answer) = read_until_closed(&mut half_body, since, Duration::from_secs(3)).await;
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#""error":"body_read_timeout""#),
        "{answer}"
    );
    assert!(answer.contains("http_body_read_timeout_ms"), "{answer}");
    let url = format!("{}/v1/kv/slow", cluster.endpoint(1));
    let read = reqwest::get(&url).await.unwrap();
    assert_eq!(read.status(), reqwest::StatusCode::NOT_FOUND);
    // Counted as the node's task for the connection ends, just after the client saw it close.
    let deadline = Instant::now() + Duration::from_secs(2);
    while metric(&cluster, &closed_for("body_timeout")).await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&cluster, &closed_for("body_timeout")).await, 1);
    // A body as large as value_bytes_max still gets through hyper's smaller read buffer.
    let value = vec![b'v'; 256 << 10];
    let put = reqwest::Client::new()
        .put(&url)
        .body(value.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), reqwest::StatusCode::OK);
    let read = reqwest::get(&url).await.unwrap();
    assert_eq!(read.bytes().await.unwrap().as_ref(), value.as_slice());
    finish(cluster);
}

/// Raises this process's soft limit on open files to at least `wanted` (the hard limit
/// permitting), for tests that hold thousands of sockets; the kvnode children inherit it.
fn raise_open_files_limit(wanted: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted {
            assert!(
                limit.rlim_max >= wanted,
                "the hard limit on open files ({}) is below {wanted}",
                limit.rlim_max
            );
            limit.rlim_cur = wanted;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

/// With 2,000 idle and half-sent connections open against a node that holds 1,024, a new
/// client's PUT and GET still succeed within a second each; the node holds no more than its
/// limit; and the oldest connection of all, in the middle of sending a body, is not cut: its
/// PUT completes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_is_served_past_the_connection_limit() {
    const CONNECTIONS: usize = 2_000;
    const LIMIT: usize = 1_024;
    raise_open_files_limit(CONNECTIONS as libc::rlim_t + 512);
    // Long timeouts, so only the connection limit closes anything during the test.
    let cluster = one_node(&[
        "--http-connections-max",
        "1024",
        "--http-header-read-timeout-ms",
        "60000",
        "--http-body-read-timeout-ms",
        "60000",
    ]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let node = address(&cluster);

    let mut busy = TcpStream::connect(node).await.unwrap();
    busy.write_all(b"PUT /v1/kv/busy HTTP/1.1\r\nhost: node\r\ncontent-length: 4\r\n\r\nab")
        .await
        .unwrap();
    let mut crowd = Vec::with_capacity(CONNECTIONS);
    let opening = Instant::now();
    for index in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(node).await.expect("the node accepts");
        match index % 3 {
            0 => {} // connected, silent
            1 => stream.write_all(b"GET /v1/sta").await.unwrap(),
            _ => {
                // A keep-alive connection, idle after one answer. Past the limit, the node may
                // already have closed one of these before it answered; that is allowed.
                let request = b"GET /healthz HTTP/1.1\r\nhost: node\r\n\r\n";
                stream.write_all(request).await.unwrap();
            }
        }
        crowd.push(stream);
    }
    let opened_in = opening.elapsed();

    let http = reqwest::Client::new();
    let url = format!("http://{node}/v1/kv/fresh");
    let started = Instant::now();
    let put = tokio::time::timeout(Duration::from_secs(1), http.put(&url).body("v").send())
        .await
        .expect("the PUT is answered within 1 s")
        .unwrap();
    let put_took = started.elapsed();
    assert_eq!(put.status(), reqwest::StatusCode::OK);
    let started = Instant::now();
    let get = tokio::time::timeout(Duration::from_secs(1), http.get(&url).send())
        .await
        .expect("the GET is answered within 1 s")
        .unwrap();
    let get_took = started.elapsed();
    assert_eq!(get.status(), reqwest::StatusCode::OK);
    assert_eq!(get.bytes().await.unwrap().as_ref(), b"v");

    // The oldest connection was mid-request: it was kept, and its PUT completes.
    busy.write_all(b"cd").await.unwrap();
    let answer = read_response(&mut busy).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The node holds at most its limit: of the crowd, at least the surplus was closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let open = loop {
        let mut open = 0;
        for stream in &mut crowd {
            let mut buffer = [0u8; 512];
            loop {
                match stream.try_read(&mut buffer) {
                    Ok(0) => break,
                    Ok(_) => continue, // an answer to the keep-alive request
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        open += 1;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        // The busy connection and the new client's connection count too.
        if open + 2 <= LIMIT || Instant::now() >= deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(open + 2 <= LIMIT, "{open} of the crowd are still open");
    assert!(open >= LIMIT / 2, "only {open} of the crowd are still open");
    let held = metric(&cluster, "kv_http_connections_open").await;
    assert!(held <= LIMIT as u64, "{held}");
    let closed = metric(&cluster, &closed_for("limit")).await;
    assert!(closed >= (CONNECTIONS + 3 - LIMIT) as u64, "{closed}");
    println!(
        "{CONNECTIONS} connections opened in {opened_in:?}; PUT {put_took:?}, GET \
         {get_took:?}; {open} of them still open"
    );
    finish(cluster);
}

/// Starts a node under `ulimit <limit_flags> 300` (open files), opens 600 idle connections,
/// checks that a new client's PUT and GET are answered within a second each, and returns the
/// node's log without its colour codes.
async fn serve_with_few_files(limit_flags: &str) -> String {
    const CONNECTIONS: usize = 600;
    let folder = fresh_temp_dir("kv-edge-files").unwrap();
    let wrapper = folder.join("kvnode-few-files");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit {limit_flags} 300 || exit 1\nexec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_kvnode")
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cluster = LocalCluster::start(ClusterSpec {
        kvnode: wrapper,
        nodes: 1,
        storage: StorageKind::Mem,
        transport: TransportKind::Tcp,
        data_dir: folder.join("cluster"),
        extra_args: Vec::new(),
        log_filter: "info".into(),
    })
    .expect("the node starts");
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let node = address(&cluster);
    let mut crowd = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        crowd.push(TcpStream::connect(node).await.expect("the node accepts"));
    }
    let http = reqwest::Client::new();
    let url = format!("http://{node}/v1/kv/fresh");
    let put = tokio::time::timeout(Duration::from_secs(1), http.put(&url).body("v").send())
        .await
        .expect("the PUT is answered within 1 s")
        .unwrap();
    assert_eq!(put.status(), reqwest::StatusCode::OK);
    let get = tokio::time::timeout(Duration::from_secs(1), http.get(&url).send())
        .await
        .expect("the GET is answered within 1 s")
        .unwrap();
    assert_eq!(get.bytes().await.unwrap().as_ref(), b"v");
    let mut log = cluster.log_tail(1, 50);
    while let Some(start) = log.find('\u{1b}') {
        let end = log[start..]
            .find('m')
            .map_or(log.len(), |at| start + at + 1);
        log.replace_range(start..end, "");
    }
    drop(crowd);
    drop(cluster);
    std::fs::remove_dir_all(folder).expect("the test folder is removed");
    log
}

/// A node whose process may open fewer files than `http_connections_max` (300, soft and hard,
/// against 1,024) still serves a new client while 600 idle connections are open: when
/// accepting fails for want of a file, it closes its oldest idle connection to make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_is_served_when_the_node_is_out_of_files() {
    let log = serve_with_few_files("-n").await;
    assert!(log.contains("made_room=true"), "{log}");
}

/// A node started with a low soft limit on open files (300) raises it to the hard limit, so it
/// holds its connections without running out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_raises_its_soft_open_file_limit() {
    let log = serve_with_few_files("-Sn").await;
    assert!(log.contains("raised the open-file limit from=300"), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
}

/// What hyper answers itself, since it takes no custom answer there: bytes that are not HTTP
/// are a 400 with an empty body, and a head too large even for its buffer a 431; both close
/// the connection. The JSON 414 and 431 for heads over the node's own limits are in
/// tests/api.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_answers_malformed_http_and_closes() {
    let cluster = one_node(&[]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let node = address(&cluster);
    let mut garbage = TcpStream::connect(node).await.unwrap();
    garbage.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let since = Instant::now();
    let (_, answer) = read_until_closed(&mut garbage, since, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let mut huge = TcpStream::connect(node).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nhost: node\r\nx-padding: {}\r\n\r\n",
        "p".repeat(200_000)
    );
    // The node may close before it has read everything: a failed write is fine.
    let _ = huge.write_all(head.as_bytes()).await;
    let (_, answer) = read_until_closed(&mut huge, Instant::now(), Duration::from_secs(3)).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    finish(cluster);
}

/// When every connection the node holds is mid-request, a new one is closed at once, and the
/// busy ones are not cut: their requests complete afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_connections_busy_closes_the_new_one_not_a_busy_one() {
    let cluster = one_node(&["--http-connections-max", "2"]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let node = address(&cluster);
    let mut busy = Vec::new();
    for key in ["first", "second"] {
        let mut stream = TcpStream::connect(node).await.unwrap();
        let head =
            format!("PUT /v1/kv/{key} HTTP/1.1\r\nhost: node\r\ncontent-length: 4\r\n\r\nab");
        stream.write_all(head.as_bytes()).await.unwrap();
        busy.push(stream);
    }
    // Let the node read both heads, so both are busy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = TcpStream::connect(node).await.unwrap();
    let _ = refused
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: node\r\n\r\n")
        .await;
    let (_, answer) = read_until_closed(&mut refused, Instant::now(), Duration::from_secs(2)).await;
    assert_eq!(answer, "", "closed without an answer");
    for stream in &mut busy {
        stream.write_all(b"cd").await.unwrap();
        let answer = read_response(stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    drop(busy);
    // Both busy connections are idle now: a new client gets in, making room.
    let read = reqwest::get(format!("{}/v1/kv/second", cluster.endpoint(1)))
        .await
        .unwrap();
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"abcd");
    assert_eq!(metric(&cluster, &closed_for("all_busy")).await, 1);
    finish(cluster);
}
