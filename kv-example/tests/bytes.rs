//! Keys and values are bytes, end to end, and scans come in pages: against real kvnode
//! processes (three for the round trips, one where a limit is what is tested), through the
//! HTTP API and through `kvctl`.
//!
//! - A key holding 0x00, 0xFF, `/` and `%` is written, read, scanned and compared-and-swapped
//!   byte for byte, with binary values, over HTTP and with `kvctl`.
//! - A compare-and-swap's value limit counts the value's bytes, not their JSON escaping.
//! - A scan cut short by its limit or by `scan_bytes_max` names the key the next page starts
//!   at; following those pages returns every key once, in order, for reads from the node's
//!   copy and for reads through the log; `kvctl scan --all` prints them all.

use kv_example::config::{StorageKind, TransportKind};
use kv_example::local_cluster::{fresh_temp_dir, ClusterSpec, LocalCluster};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use std::process::Output;
use std::time::Duration;

fn cluster_of(nodes: u64, storage: StorageKind, extra_args: &[&str]) -> LocalCluster {
    LocalCluster::start(ClusterSpec {
        kvnode: env!("CARGO_BIN_EXE_kvnode").into(),
        nodes,
        storage,
        transport: TransportKind::Tcp,
        data_dir: fresh_temp_dir("kv-bytes-test").unwrap(),
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        log_filter: "info".into(),
    })
    .expect("nodes start")
}

/// Stops the cluster and removes its folder (a failed test keeps it, logs included).
fn finish(cluster: LocalCluster) {
    let folder = cluster.spec().data_dir.clone();
    drop(cluster);
    std::fs::remove_dir_all(folder).expect("the test folder is removed");
}

/// Sends a request; returns the status and the raw body.
async fn call(method: Method, url: &str, body: Option<Vec<u8>>) -> (StatusCode, Vec<u8>) {
    let mut request = Client::new().request(method, url);
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.expect("the node answers");
    let status = response.status();
    (status, response.bytes().await.unwrap().to_vec())
}

/// Sends a request; returns the status and the body as JSON (`null` when it is not JSON).
async fn call_json(method: Method, url: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = Client::new().request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the node answers");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Standard padded base64, written out here so the test does not trust the crate's own.
fn base64(bytes: &[u8]) -> String {
    const DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for position in 0..4 {
            if position <= chunk.len() {
                out.push(DIGITS[(n >> (18 - 6 * position)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-encodes every byte but the unreserved characters (the test's own encoder).
fn escape(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect::<Vec<_>>()
        .concat()
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for byte in bytes {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Runs kvctl with these arguments (and `stdin` on its standard input).
async fn kvctl(args: Vec<String>, stdin: Option<Vec<u8>>) -> Output {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kvctl runs");
        let mut input = child.stdin.take().expect("a pipe");
        if let Some(bytes) = stdin {
            input.write_all(&bytes).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn args(endpoints: &str, rest: &[&str]) -> Vec<String> {
    let mut all = vec!["--endpoints".to_string(), endpoints.to_string()];
    all.extend(rest.iter().map(|s| s.to_string()));
    all
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "kvctl failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A key of 0x00, 0xFF, `/`, `%` and `k` holds a value of every byte: written and read back
/// exactly over HTTP (the key percent-encoded in the path), found by a binary prefix (escaped
/// or base64) with its key and value in base64, compared and swapped with base64 values, and
/// the same through kvctl with hex, url and base64 encodings. `%FF` alone is a key like any
/// other (404: absent), and only a malformed escape is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keys_and_values_round_trip_byte_for_byte() {
    let cluster = cluster_of(3, StorageKind::Mem, &[]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let [one, two, three] = [1, 2, 3].map(|id| cluster.endpoint(id));
    let key: &[u8] = b"\x00\xff/%k";
    let path = "%00%FF%2F%25k";
    let value: Vec<u8> = (0..=255u8).collect();

    let put = call(
        Method::PUT,
        &format!("{one}/v1/kv/{path}"),
        Some(value.clone()),
    )
    .await;
    assert_eq!(put.0, StatusCode::OK, "{}", String::from_utf8_lossy(&put.1));
    for consistency in ["linearizable", "log"] {
        let url = format!("{two}/v1/kv/{path}?consistency={consistency}");
        let got = call(Method::GET, &url, None).await;
        assert_eq!(got.0, StatusCode::OK, "{consistency}");
        assert_eq!(got.1, value, "{consistency}: the value's bytes exactly");
    }
    // Lower-case escapes name the same key.
    let lower = call(Method::GET, &format!("{three}/v1/kv/%00%ff%2f%25k"), None).await;
    assert_eq!((lower.0, &lower.1), (StatusCode::OK, &value));
    let absent = call_json(Method::GET, &format!("{one}/v1/kv/%FF"), None).await;
    assert_eq!(absent.0, StatusCode::NOT_FOUND, "{}", absent.1);
    assert_eq!(absent.1["error"], "not_found");
    let malformed = call_json(Method::GET, &format!("{one}/v1/kv/%F"), None).await;
    assert_eq!(malformed.0, StatusCode::BAD_REQUEST, "{}", malformed.1);
    assert!(malformed.1["message"].as_str().unwrap().contains("bad key"));
    // A plus in a path is a plus.
    let plus = call(
        Method::PUT,
        &format!("{one}/v1/kv/a+b"),
        Some(b"p".to_vec()),
    )
    .await;
    assert_eq!(plus.0, StatusCode::OK);

    let expected_entry = json!({"key_base64": base64(key), "value_base64": base64(&value)});
    for query in [
        "prefix=%00%FF".to_string(),
        format!("prefix_base64={}", base64(b"\x00\xff").replace('=', "%3D")),
    ] {
        let page = call_json(Method::GET, &format!("{three}/v1/kv?{query}"), None).await;
        assert_eq!(page.0, StatusCode::OK, "{query}: {}", page.1);
        assert_eq!(page.1["entries"], json!([expected_entry]), "{query}");
        assert_eq!(page.1["more"], false);
    }
    let plus_page = call_json(Method::GET, &format!("{one}/v1/kv?prefix=a%2B"), None).await;
    assert_eq!(
        plus_page.1["entries"],
        json!([{"key": "a+b", "value": "p"}])
    );

    // Compare-and-swap with binary values: the old value comes back in base64.
    let cas_url = format!("{two}/v1/kv/{path}/cas");
    let new: &[u8] = b"\xfe\x00";
    let body = json!({"expected_base64": base64(&value), "new_base64": base64(new)});
    let swapped = call_json(Method::POST, &cas_url, Some(body.clone())).await;
    assert_eq!(swapped.0, StatusCode::OK, "{}", swapped.1);
    assert_eq!(swapped.1["swapped"], true);
    assert_eq!(swapped.1["previous_base64"], base64(&value));
    let refused = call_json(Method::POST, &cas_url, Some(body)).await;
    assert_eq!(refused.0, StatusCode::CONFLICT, "{}", refused.1);
    assert_eq!(refused.1["current_base64"], base64(new));
    let both = json!({"expected": "x", "expected_base64": base64(new), "new": "y"});
    let both = call_json(Method::POST, &cas_url, Some(both)).await;
    assert_eq!(both.0, StatusCode::BAD_REQUEST, "{}", both.1);
    let got = call(Method::GET, &format!("{one}/v1/kv/{path}"), None).await;
    assert_eq!(got.1, new, "the refused requests changed nothing");

    // kvctl: the same key in three spellings, a binary value from standard input.
    let endpoints = cluster.endpoints().join(",");
    let key_hex = hex(key);
    let stored: Vec<u8> = (0..=255u8).rev().collect();
    let put = kvctl(
        args(&endpoints, &["--key-encoding", "hex", "put", &key_hex, "-"]),
        Some(stored.clone()),
    )
    .await;
    assert_success(&put);
    let get = kvctl(
        args(&endpoints, &["--key-encoding", "url", "get", path]),
        None,
    )
    .await;
    assert_success(&get);
    assert_eq!(get.stdout, stored, "kvctl get writes the bytes exactly");
    let cas = kvctl(
        args(
            &endpoints,
            &[
                "--key-encoding",
                "base64",
                "--value-encoding",
                "hex",
                "cas",
                &base64(key),
                "00ff00",
                "--expected",
                &hex(&stored),
            ],
        ),
        None,
    )
    .await;
    assert_success(&cas);
    let again = kvctl(
        args(
            &endpoints,
            &[
                "--key-encoding",
                "hex",
                "--value-encoding",
                "hex",
                "cas",
                &key_hex,
                "01",
                "--expected",
                &hex(&stored),
            ],
        ),
        None,
    )
    .await;
    assert_eq!(again.status.code(), Some(3), "not swapped");
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        "not swapped: the current value is 00ff00\n"
    );
    let scan = kvctl(
        args(
            &endpoints,
            &[
                "--key-encoding",
                "hex",
                "--value-encoding",
                "hex",
                "scan",
                "00ff",
            ],
        ),
        None,
    )
    .await;
    assert_success(&scan);
    assert_eq!(
        String::from_utf8_lossy(&scan.stdout),
        format!("{key_hex}\t00ff00\n")
    );
    let text_scan = kvctl(args(&endpoints, &["scan", "a"]), None).await;
    assert_eq!(String::from_utf8_lossy(&text_scan.stdout), "a+b\tp\n");
    let missing = kvctl(
        args(&endpoints, &["--key-encoding", "url", "get", "%FF"]),
        None,
    )
    .await;
    assert_eq!(missing.status.code(), Some(4), "key not found");
    finish(cluster);
}

/// A compare-and-swap value is limited by `value_bytes_max` in bytes, however JSON escapes
/// it: 2048 control characters (12 KiB of `\u0001` escapes, twice) fit a 2048-byte limit,
/// 2049 bytes do not, as text or as base64, and a refused request changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cas_limit_counts_decoded_bytes_not_json() {
    let cluster = cluster_of(1, StorageKind::Mem, &["--value-bytes-max", "2048"]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let node = cluster.endpoint(1);
    let url = format!("{node}/v1/kv/escaped/cas");
    let ones = "\u{1}".repeat(2048);
    let twos = "\u{2}".repeat(2048);

    let created = call_json(Method::POST, &url, Some(json!({"new": ones}))).await;
    assert_eq!(created.0, StatusCode::OK, "{}", created.1);
    let swapped = call_json(
        Method::POST,
        &url,
        Some(json!({"expected": ones, "new": twos})),
    )
    .await;
    assert_eq!(swapped.0, StatusCode::OK, "{}", swapped.1);
    assert_eq!(swapped.1["previous"], ones);

    let too_long = "\u{1}".repeat(2049);
    let base64_too_long = base64(&[1u8; 2049]);
    for body in [
        json!({"expected": twos, "new": too_long}),
        json!({"expected": twos, "new_base64": base64_too_long}),
        json!({"expected": too_long, "new": "x"}),
    ] {
        let answer = call_json(Method::POST, &url, Some(body)).await;
        assert_eq!(answer.0, StatusCode::PAYLOAD_TOO_LARGE, "{}", answer.1);
        assert_eq!(answer.1["error"], "value_too_large", "{}", answer.1);
        assert!(answer.1["message"]
            .as_str()
            .unwrap()
            .contains("value_bytes_max is 2048"));
    }
    let huge = json!({"new": "x".repeat(40_000)});
    let answer = call_json(Method::POST, &url, Some(huge)).await;
    assert_eq!(answer.0, StatusCode::PAYLOAD_TOO_LARGE, "{}", answer.1);
    assert_eq!(answer.1["error"], "body_too_large", "{}", answer.1);
    let value = call(Method::GET, &format!("{node}/v1/kv/escaped"), None).await;
    assert_eq!(value.1, twos.as_bytes(), "nothing refused was applied");
    finish(cluster);
}

/// Follows a scan's pages with `start=` (or `start_base64=`) its `next` (or `next_base64`);
/// returns the keys in the order the pages gave them, and how many pages there were.
async fn follow_pages(endpoint: &str, query: &str) -> (Vec<Vec<u8>>, usize) {
    let mut keys = Vec::new();
    let mut start = String::new();
    for pages in 1..=100 {
        let url = format!("{endpoint}/v1/kv?{query}{start}");
        let (status, page) = call_json(Method::GET, &url, None).await;
        assert_eq!(status, StatusCode::OK, "{url}: {page}");
        for entry in page["entries"].as_array().unwrap() {
            keys.push(match entry["key"].as_str() {
                Some(text) => text.as_bytes().to_vec(),
                None => {
                    let encoded = entry["key_base64"].as_str().unwrap();
                    kv_example::base64::decode(encoded).unwrap()
                }
            });
        }
        if page["more"] == false {
            assert_eq!(page["next"], Value::Null, "{page}");
            return (keys, pages);
        }
        start = match page["next"].as_str() {
            Some(next) => format!("&start={}", escape(next.as_bytes())),
            None => {
                let next = page["next_base64"].as_str().expect("a next key");
                format!("&start_base64={}", next.replace('=', "%3D"))
            }
        };
    }
    panic!("{query}: more than 100 pages");
}

/// 25 keys under `page/` (one of them not UTF-8), between keys outside the prefix, read in
/// pages of 2 (the limit) and of 3 (`scan_bytes_max` 60: 17 bytes a pair) by following each
/// page's `next`: every key once, in order, from the node's copy (linearizable, stale) and
/// through the log, on RocksDB. A start inside the range begins there; kvctl `scan --all`
/// prints every key (pages of 3: the byte cap is below its limit of 4), and without `--all`
/// says how to continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_scans_return_every_key_once_in_order() {
    let cluster = cluster_of(3, StorageKind::Rocksdb, &["--scan-bytes-max", "60"]);
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let [one, two] = [1, 2].map(|id| cluster.endpoint(id));
    let mut keys: Vec<Vec<u8>> = (0..24)
        .map(|i| format!("page/{i:02}").into_bytes())
        .collect();
    keys.push(b"page/\xff".to_vec());
    for key in keys
        .iter()
        .chain([&b"pagd"[..].to_vec(), &b"pagf".to_vec()])
    {
        let url = format!("{one}/v1/kv/{}", escape(key));
        let put = call(Method::PUT, &url, Some(b"0123456789".to_vec())).await;
        assert_eq!(put.0, StatusCode::OK);
    }
    // A linearizable read on node 1 first: it has applied every write before its stale reads.
    let barrier = format!("{one}/v1/kv?prefix=page%2F&limit=1");
    assert_eq!(
        call_json(Method::GET, &barrier, None).await.0,
        StatusCode::OK
    );
    for consistency in ["linearizable", "log", "stale"] {
        for (limit, per_page) in [(2, 2), (100, 3)] {
            let query = format!("prefix=page%2F&limit={limit}&consistency={consistency}");
            // A stale read on a follower waits for the follower to have applied the writes.
            let endpoint = if consistency == "stale" { &one } else { &two };
            let (seen, pages) = follow_pages(endpoint, &query).await;
            assert_eq!(seen, keys, "{query}");
            assert_eq!(pages, keys.len().div_ceil(per_page), "{query}");
        }
    }
    let from_inside = call_json(
        Method::GET,
        &format!("{two}/v1/kv?prefix=page%2F&start=page%2F20&limit=2&consistency=log"),
        None,
    )
    .await;
    assert_eq!(
        from_inside.1,
        json!({
            "entries": [
                {"key": "page/20", "value": "0123456789"},
                {"key": "page/21", "value": "0123456789"},
            ],
            "more": true,
            "next": "page/22",
        })
    );

    let endpoints = cluster.endpoints().join(",");
    let all = kvctl(
        args(&endpoints, &["scan", "page/", "--limit", "4", "--all"]),
        None,
    )
    .await;
    assert_success(&all);
    let printed: Vec<String> = String::from_utf8(all.stdout)
        .unwrap()
        .lines()
        .map(|line| line.split('\t').next().unwrap().to_string())
        .collect();
    let mut wanted: Vec<String> = (0..24).map(|i| format!("page/{i:02}")).collect();
    wanted.push(format!("base64:{}", base64(b"page/\xff")));
    assert_eq!(printed, wanted);
    let first = kvctl(args(&endpoints, &["scan", "page/", "--limit", "2"]), None).await;
    assert_success(&first);
    assert_eq!(
        String::from_utf8_lossy(&first.stdout),
        "page/00\t0123456789\npage/01\t0123456789\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&first.stderr),
        "(more keys match: continue with --start 'page/02', or use --all)\n"
    );
    let rest = kvctl(
        args(&endpoints, &["scan", "page/", "--start", "page/22"]),
        None,
    )
    .await;
    assert_success(&rest);
    assert_eq!(String::from_utf8_lossy(&rest.stdout).lines().count(), 3);
    finish(cluster);
}
