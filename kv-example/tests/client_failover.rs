//! `kvctl` and `KvClient` fail over past endpoints that are not working kvnodes, against one
//! real kvnode process listed after them: a listener that accepts and never answers (a hung
//! node), and one that answers every request with a plain 404 (another server at the
//! address, whose 404 is not "key not found"). Reads and writes with a request ID move on and
//! succeed within a few client timeouts; a write without a request ID that may have reached
//! something is not sent again; errors show their cause.

use bytes::Bytes;
use kv_example::client::KvClient;
use kv_example::config::{StorageKind, TransportKind};
use kv_example::local_cluster::{fresh_temp_dir, ClusterSpec, LocalCluster};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Each request to a stand-in endpoint waits at most this long.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(500);

fn one_node() -> LocalCluster {
    LocalCluster::start(ClusterSpec {
        kvnode: env!("CARGO_BIN_EXE_kvnode").into(),
        nodes: 1,
        storage: StorageKind::Mem,
        transport: TransportKind::Tcp,
        data_dir: fresh_temp_dir("kv-client-failover-test").unwrap(),
        extra_args: Vec::new(),
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

/// A listener that accepts connections and never answers; returns its URL and how many
/// connections it accepted.
async fn hung_endpoint() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (url, accepted)
}

/// A listener that answers every request `404 Not Found` with a text body, as a web server
/// does; returns its URL and how many requests it answered.
async fn foreign_endpoint() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(answer_not_found(stream, count));
        }
    });
    (url, answered)
}

/// Reads one request (its head, then `content-length` bytes of body), counts it and answers
/// 404.
async fn answer_not_found(
    mut stream: TcpStream,
    answered: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        let count = stream.read(&mut buffer).await?;
        if count == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        received.extend_from_slice(&buffer[..count]);
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
    let body_bytes: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |n| n.trim().parse().unwrap_or(0));
    while received.len() < head_end + body_bytes {
        let count = stream.read(&mut buffer).await?;
        if count == 0 {
            break;
        }
        received.extend_from_slice(&buffer[..count]);
    }
    answered.fetch_add(1, Ordering::SeqCst);
    let answer = "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n\
                  connection: close\r\n\r\nNot Found";
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

/// Runs kvctl with these arguments; returns its output and how long it took.
async fn kvctl(args: Vec<String>) -> (std::process::Output, Duration) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .args(&args)
            .output()
            .expect("kvctl runs");
        (output, started.elapsed())
    })
    .await
    .unwrap()
}

/// kvctl, given a hung endpoint, then a foreign one, then the real node (as `host:port`,
/// without `http://`), puts, gets, compares-and-swaps and scans through the real node, each
/// command within a few client timeouts; both stand-ins were asked every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_fails_over_past_a_hung_and_a_foreign_endpoint() {
    let cluster = one_node();
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let (hung, accepted) = hung_endpoint().await;
    let (foreign, answered) = foreign_endpoint().await;
    let real = cluster.endpoint(1);
    let real_bare = real.strip_prefix("http://").unwrap();
    let endpoints = format!("{hung},{foreign},{real_bare}");
    let command = |rest: &[&str]| {
        let mut args = vec![
            "--endpoints".to_string(),
            endpoints.clone(),
            "--timeout-ms".to_string(),
            CLIENT_TIMEOUT.as_millis().to_string(),
        ];
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    };
    let steps: [(&[&str], &str); 4] = [
        (&["put", "fail/over", "v1"], "OK (index "),
        (&["get", "fail/over"], "v1"),
        (
            &["cas", "fail/over", "v2", "--expected", "v1"],
            "swapped (index ",
        ),
        (&["scan", "fail/"], "fail/over\tv2\n"),
    ];
    for (number, (rest, prints)) in steps.iter().enumerate() {
        let (output, took) = kvctl(command(rest)).await;
        assert!(
            output.status.success(),
            "kvctl {rest:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.starts_with(prints),
            "kvctl {rest:?} printed {stdout:?}"
        );
        assert!(
            took < Duration::from_secs(8),
            "kvctl {rest:?} took {took:?}"
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            number + 1,
            "the hung one was tried"
        );
        assert_eq!(
            answered.load(Ordering::SeqCst),
            number + 1,
            "the 404 one was tried"
        );
    }
    finish(cluster);
}

/// `KvClient` without request IDs: a read moves past a hung endpoint and past a foreign 404
/// (which is not "key not found"); a write that may have reached the hung or the foreign
/// endpoint is not sent to the real node, and says so; an unreachable endpoint's error names
/// the cause, not reqwest's "error sending request" alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_move_on_and_unsafe_writes_are_not_resent() {
    let cluster = one_node();
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let (hung, _) = hung_endpoint().await;
    let (foreign, answered) = foreign_endpoint().await;
    let real = cluster.endpoint(1);
    let direct = KvClient::new(vec![real.clone()], Duration::from_secs(5)).unwrap();
    direct.put("present", Bytes::from("v")).await.unwrap();

    for stand_in in [&hung, &foreign] {
        let endpoints = vec![stand_in.clone(), real.clone()];
        let client = KvClient::new(endpoints.clone(), CLIENT_TIMEOUT).unwrap();
        let started = Instant::now();
        let read = client.get("present", "linearizable").await;
        assert_eq!(read.unwrap(), Some(Bytes::from("v")), "through {stand_in}");
        let absent = client.get("absent", "linearizable").await;
        assert_eq!(absent.unwrap(), None, "through {stand_in}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        let client = KvClient::new(endpoints, CLIENT_TIMEOUT).unwrap();
        let error = client
            .put("unsent", Bytes::from("x"))
            .await
            .expect_err("the write is not sent past the stand-in")
            .to_string();
        let says = if stand_in == &hung {
            "timed out"
        } else {
            "not a kvnode"
        };
        assert!(error.contains(says), "{error}");
        assert!(
            error.contains("may or may not have taken effect"),
            "{error}"
        );
        let stored = direct.get("unsent", "linearizable").await.unwrap();
        assert_eq!(stored, None, "the real node never got the write");
    }
    // The first read and the write (each client starts at its first endpoint).
    assert_eq!(answered.load(Ordering::SeqCst), 2);

    let port = kv_example::local_cluster::free_ports(1, false).unwrap()[0];
    let closed = KvClient::new(vec![format!("127.0.0.1:{port}")], CLIENT_TIMEOUT).unwrap();
    let error = closed
        .get("present", "linearizable")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.to_lowercase().contains("connection refused"),
        "{error}"
    );
    finish(cluster);
}
