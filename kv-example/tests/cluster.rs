//! Multi-process tests: three `kvnode` processes on 127.0.0.1 for each backend combination
//! (mem/rocksdb × tcp/quic). Each test proves, in order:
//! 1. the cluster takes writes through every node (followers forward);
//! 2. after the leader is killed with SIGKILL, another node becomes leader and takes writes;
//! 3. every acknowledged write is still readable, through every surviving node;
//! 4. the killed node restarts (RocksDB: from its data folder, resuming from its persisted
//!    applied index; memory: empty, replaying the whole log from the leader) and catches up:
//!    its own copy (stale reads) holds every acknowledged write.

use bytes::Bytes;
use kv_example::client::KvClient;
use kv_example::config::{StorageKind, TransportKind};
use kv_example::local_cluster::{fresh_temp_dir, ClusterSpec, LocalCluster};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn spec(storage: StorageKind, transport: TransportKind) -> ClusterSpec {
    ClusterSpec {
        kvnode: env!("CARGO_BIN_EXE_kvnode").into(),
        nodes: 3,
        storage,
        transport,
        data_dir: fresh_temp_dir(&format!("kv-test-{storage}-{transport}")).unwrap(),
        extra_args: match transport {
            // The QUIC clusters also serve leader reads from a lease (consistency=lease), and
            // drop a dead peer's connection after 1 s instead of 10 (see quic_idle_timeout_ms).
            TransportKind::Quic => ["--request-timeout-ms", "3000", "--lease-reads"]
                .into_iter()
                .chain(["--quic-idle-timeout-ms", "1000"])
                .map(String::from)
                .collect(),
            TransportKind::Tcp => vec!["--request-timeout-ms".into(), "3000".into()],
        },
        log_filter: "info".into(),
    }
}

fn client(endpoint: String) -> KvClient {
    KvClient::new(vec![endpoint], Duration::from_secs(5)).unwrap()
}

async fn status(endpoint: &str) -> Result<Value, String> {
    let answer = client(endpoint.to_string()).status_all().await;
    answer.into_iter().next().unwrap().1
}

/// Waits until some running node names a leader other than `not`, and returns it.
async fn leader(cluster: &LocalCluster, not: Option<u64>) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for member in cluster
            .members()
            .iter()
            .filter(|m| cluster.is_running(m.id))
        {
            if let Ok(s) = status(&member.endpoint()).await {
                if s["role"] == "leader" && Some(member.id) != not {
                    return Ok(member.id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("no new leader within 10 s".into())
}

/// Writes `key`, retrying a refused (definitely not applied) write until `deadline`.
async fn put_acknowledged(
    client: &KvClient,
    key: &str,
    value: &str,
    deadline: Instant,
) -> Result<(), String> {
    loop {
        match client.put(key, Bytes::from(value.to_string())).await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() < deadline => {
                tracing_free_log(&format!("retrying {key}: {error}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(format!("{key} was never acknowledged: {error}")),
        }
    }
}

fn tracing_free_log(line: &str) {
    eprintln!("[test] {line}");
}

async fn scenario(cluster: &mut LocalCluster) -> Result<(), String> {
    cluster.wait_ready(READY_TIMEOUT).await?;
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    // 1. Writes through every node.
    for i in 0..30 {
        let node = i % 3 + 1;
        let (key, value) = (format!("before/{i:03}"), format!("value-{i}-from-{node}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        put_acknowledged(&client(cluster.endpoint(node)), &key, &value, deadline).await?;
        acknowledged.insert(key, value);
    }
    // 2. Kill the leader; a new one takes over and takes writes through both survivors.
    let old_leader = leader(cluster, None).await?;
    cluster.kill(old_leader).map_err(|e| e.to_string())?;
    let killed_at = Instant::now();
    let new_leader = leader(cluster, Some(old_leader)).await?;
    tracing_free_log(&format!(
        "leader {old_leader} killed; {new_leader} leads after {:?}",
        killed_at.elapsed()
    ));
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != old_leader).collect();
    for i in 0..20 {
        let node = survivors[i % 2];
        let (key, value) = (format!("after/{i:03}"), format!("value-{i}-from-{node}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        put_acknowledged(&client(cluster.endpoint(node)), &key, &value, deadline).await?;
        acknowledged.insert(key, value);
    }
    // 3. Every acknowledged write is readable (linearizable) through every survivor.
    let consistency = match cluster.spec().transport {
        TransportKind::Quic => "lease",
        TransportKind::Tcp => "linearizable",
    };
    for node in &survivors {
        let reader = client(cluster.endpoint(*node));
        for (key, value) in &acknowledged {
            let read = reader
                .get(key, consistency)
                .await
                .map_err(|e| format!("reading {key} from {node}: {e}"))?;
            if read.as_deref() != Some(value.as_bytes()) {
                return Err(format!("node {node}: {key} is {read:?}, expected {value}"));
            }
        }
    }
    // 4. The killed node restarts and catches up.
    let leader_commit = status(&cluster.endpoint(new_leader)).await?["commit_index"]
        .as_u64()
        .unwrap_or(0);
    cluster
        .start_member(old_leader)
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied = status(&cluster.endpoint(old_leader))
            .await
            .ok()
            .and_then(|s| s["applied_index"].as_u64())
            .unwrap_or(0);
        if applied >= leader_commit {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "restarted node {old_leader} applied {applied} of {leader_commit} within 30 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let restarted = client(cluster.endpoint(old_leader));
    for (key, value) in &acknowledged {
        let read = restarted
            .get(key, "stale")
            .await
            .map_err(|e| format!("stale read of {key} from the restarted node: {e}"))?;
        if read.as_deref() != Some(value.as_bytes()) {
            return Err(format!(
                "restarted node: {key} is {read:?}, expected {value}"
            ));
        }
    }
    check_replay(cluster, old_leader, new_leader).await?;
    // A graceful stop ends every node with success.
    for (id, exit) in cluster
        .stop(Duration::from_secs(15))
        .map_err(|e| e.to_string())?
    {
        let exit = exit.ok_or(format!("node {id} was not running"))?;
        if !exit.success() {
            return Err(format!("node {id} exited with {exit} after SIGTERM"));
        }
    }
    Ok(())
}

/// RocksDB resumes from its persisted applied index, so the restarted node applies only the
/// commands it missed, not the 30 writes from before its crash; a memory node starts empty and
/// applies every command in the log again, as many as the leader (which never restarted) did.
async fn check_replay(cluster: &LocalCluster, restarted: u64, leader: u64) -> Result<(), String> {
    let restarted_applied = applied_commands(cluster, restarted).await?;
    let leader_applied = applied_commands(cluster, leader).await?;
    let ok = match cluster.spec().storage {
        StorageKind::Rocksdb => restarted_applied + 30 <= leader_applied,
        StorageKind::Mem => restarted_applied == leader_applied,
    };
    if !ok {
        return Err(format!(
            "{} storage: the restarted node applied {restarted_applied} commands, the leader \
             {leader_applied}",
            cluster.spec().storage
        ));
    }
    Ok(())
}

async fn applied_commands(cluster: &LocalCluster, id: u64) -> Result<u64, String> {
    let metrics = reqwest::get(format!("{}/metrics", cluster.endpoint(id)))
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("kv_applied_commands_total "))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("node {id}: no kv_applied_commands_total in /metrics"))
}

async fn run(storage: StorageKind, transport: TransportKind) {
    let started = Instant::now();
    let mut cluster = LocalCluster::start(spec(storage, transport)).expect("nodes start");
    let result = scenario(&mut cluster).await;
    if let Err(error) = result {
        for id in 1..=3 {
            eprintln!(
                "----- node {id} log (tail) -----\n{}",
                cluster.log_tail(id, 40)
            );
        }
        panic!("{storage}+{transport}: {error}");
    }
    let data_dir = cluster.spec().data_dir.clone();
    drop(cluster);
    let _ = std::fs::remove_dir_all(data_dir);
    eprintln!("{storage}+{transport}: passed in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_tcp_survives_leader_kill_and_restart() {
    run(StorageKind::Mem, TransportKind::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_quic_survives_leader_kill_and_restart() {
    run(StorageKind::Mem, TransportKind::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_tcp_survives_leader_kill_and_restart() {
    run(StorageKind::Rocksdb, TransportKind::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_quic_survives_leader_kill_and_restart() {
    run(StorageKind::Rocksdb, TransportKind::Quic).await;
}
