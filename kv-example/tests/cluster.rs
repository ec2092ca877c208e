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
use kv_example::state::WAL_FLUSH_INTERVAL;
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
    // First let its state's WAL buffer reach the file (every WAL_FLUSH_INTERVAL), so that
    // check_replay can show the restart replays none of the writes above.
    tokio::time::sleep(WAL_FLUSH_INTERVAL * 3).await;
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

/// Writes `key` through `node` until acknowledged, and records it.
async fn write_through(
    cluster: &LocalCluster,
    acknowledged: &mut BTreeMap<String, String>,
    node: u64,
    key: String,
) -> Result<(), String> {
    let value = format!("{key}-via-{node}");
    let deadline = Instant::now() + Duration::from_secs(10);
    put_acknowledged(&client(cluster.endpoint(node)), &key, &value, deadline).await?;
    acknowledged.insert(key, value);
    Ok(())
}

/// Issue 12, scenario 4: in-memory nodes killed in turn (the leader, then the next leader, then
/// a follower), each restarted at once with nothing and written to while it comes back. Before
/// incarnations, a restarted node reported ready having applied nothing, the leader's progress
/// for it stayed at its old match index (so it counted toward commits it did not hold, and
/// never caught up), and the second kill lost acknowledged writes. Now each restart is a new
/// life: not ready until the cluster recorded it and promoted it back, then it holds every
/// acknowledged write; nothing acknowledged is lost.
async fn amnesia_scenario(cluster: &mut LocalCluster) -> Result<(), String> {
    cluster.wait_ready(READY_TIMEOUT).await?;
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..30u64 {
        write_through(
            cluster,
            &mut acknowledged,
            i % 3 + 1,
            format!("start/{i:03}"),
        )
        .await?;
    }
    let mut leader_now = leader(cluster, None).await?;
    // Kill the leader, then the leader after it, then a follower.
    for round in 1..=3u64 {
        let victim = if round < 3 {
            leader_now
        } else {
            (1..=3).find(|id| *id != leader_now).expect("a follower")
        };
        cluster.kill(victim).map_err(|e| e.to_string())?;
        cluster.start_member(victim).map_err(|e| e.to_string())?;
        let restarted_at = Instant::now();
        let others: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
        for i in 0..20u64 {
            let key = format!("round{round}/{i:03}");
            write_through(cluster, &mut acknowledged, others[i as usize % 2], key).await?;
        }
        let waited = restarted_at.elapsed();
        let ready = cluster
            .wait_member_ready(victim, Duration::from_secs(20))
            .await?;
        tracing_free_log(&format!(
            "round {round}: node {victim} ready {:?} after its restart",
            waited + ready
        ));
        let status = status(&cluster.endpoint(victim)).await?;
        if status["incarnation"].as_u64() == Some(0) || status["rejoined"] != true {
            return Err(format!(
                "node {victim} is ready but not rejoined in a new life: {status}"
            ));
        }
        // Its own copy holds every acknowledged write, the ones written while it was down too.
        let restarted = client(cluster.endpoint(victim));
        for (key, value) in &acknowledged {
            let read = restarted
                .get(key, "stale")
                .await
                .map_err(|e| format!("stale read of {key} from node {victim}: {e}"))?;
            if read.as_deref() != Some(value.as_bytes()) {
                return Err(format!(
                    "round {round}: node {victim} holds {key} = {read:?}, expected {value}"
                ));
            }
        }
        leader_now = leader(cluster, None).await?;
    }
    for node in 1..=3 {
        let reader = client(cluster.endpoint(node));
        for (key, value) in &acknowledged {
            let read = reader
                .get(key, "linearizable")
                .await
                .map_err(|e| format!("reading {key} from {node}: {e}"))?;
            if read.as_deref() != Some(value.as_bytes()) {
                return Err(format!("node {node}: {key} is {read:?}, expected {value}"));
            }
        }
    }
    Ok(())
}

async fn run_amnesia(transport: TransportKind) {
    let mut cluster = LocalCluster::start(spec(StorageKind::Mem, transport)).expect("nodes start");
    if let Err(error) = amnesia_scenario(&mut cluster).await {
        for id in 1..=3 {
            eprintln!(
                "----- node {id} log (tail) -----\n{}",
                cluster.log_tail(id, 60)
            );
        }
        panic!("mem+{transport}: {error}");
    }
    let data_dir = cluster.spec().data_dir.clone();
    drop(cluster);
    let _ = std::fs::remove_dir_all(data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_tcp_loses_nothing_when_nodes_lose_their_memory_in_turn() {
    run_amnesia(TransportKind::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_quic_loses_nothing_when_nodes_lose_their_memory_in_turn() {
    run_amnesia(TransportKind::Quic).await;
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

// ---------------------------------------------------------------------------------------------
// Membership changes and snapshots.

/// The flags of the membership clusters: the usual ones, and a snapshot every 20 applied
/// entries keeping 5 below it, so the leader's log is soon compacted past a lagging node.
fn snapshot_spec(storage: StorageKind, transport: TransportKind) -> ClusterSpec {
    let mut spec = spec(storage, transport);
    spec.data_dir = fresh_temp_dir(&format!("kv-members-{storage}-{transport}")).unwrap();
    spec.extra_args.extend(
        [
            "--snapshot-interval-entries",
            "20",
            "--snapshot-tail-entries",
            "5",
        ]
        .into_iter()
        .map(String::from),
    );
    spec
}

fn number(status: &Value, name: &str) -> u64 {
    status[name].as_u64().unwrap_or(0)
}

/// The value of an unlabelled metric on node `id`.
async fn metric(cluster: &LocalCluster, id: u64, name: &str) -> Result<u64, String> {
    let text = reqwest::get(format!("{}/metrics", cluster.endpoint(id)))
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .ok_or_else(|| format!("node {id}: no {name} in /metrics"))
}

/// Waits until node `id` has applied everything node `leader` had committed when asked.
async fn catch_up(cluster: &LocalCluster, id: u64, leader: u64) -> Result<Value, String> {
    let target = number(&status(&cluster.endpoint(leader)).await?, "commit_index");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = status(&cluster.endpoint(id)).await {
            if number(&s, "applied_index") >= target {
                return Ok(s);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("node {id} did not apply {target} within 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Writes `count` keys `prefix/NNN` through `through`, in turn, and records them.
async fn write_keys(
    cluster: &LocalCluster,
    through: &[u64],
    prefix: &str,
    count: usize,
    acknowledged: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    for i in 0..count {
        let node = through[i % through.len()];
        let (key, value) = (
            format!("{prefix}/{i:03}"),
            format!("{prefix}-{i}-via-{node}"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        put_acknowledged(&client(cluster.endpoint(node)), &key, &value, deadline).await?;
        acknowledged.insert(key, value);
    }
    Ok(())
}

/// Node `id`'s own copy (stale reads) holds every acknowledged write.
async fn check_copy(
    cluster: &LocalCluster,
    id: u64,
    acknowledged: &BTreeMap<String, String>,
) -> Result<(), String> {
    let reader = client(cluster.endpoint(id));
    for (key, value) in acknowledged {
        let read = reader
            .get(key, "stale")
            .await
            .map_err(|e| format!("stale read of {key} from node {id}: {e}"))?;
        if read.as_deref() != Some(value.as_bytes()) {
            return Err(format!("node {id}: {key} is {read:?}, expected {value}"));
        }
    }
    Ok(())
}

fn ids(members: &Value, name: &str) -> Vec<u64> {
    let list = members[name].as_array().into_iter().flatten();
    list.filter_map(Value::as_u64).collect()
}

/// 1. A follower killed while the leader compacts restarts behind the compacted log and
///    catches up by installing a snapshot: its status shows a snapshot and a first index past
///    1, its metrics count the install, and its copy holds every write.
async fn lagging_follower_installs_a_snapshot(
    cluster: &mut LocalCluster,
    acknowledged: &mut BTreeMap<String, String>,
) -> Result<u64, String> {
    let leader = leader(cluster, None).await?;
    write_keys(cluster, &[1, 2, 3], "early", 10, acknowledged).await?;
    let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
    let stopped_at = number(&catch_up(cluster, lagging, leader).await?, "applied_index");
    cluster.kill(lagging).map_err(|e| e.to_string())?;
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != lagging).collect();
    // More writes than the leader keeps in flight to one follower (256 appends): appends sent
    // before the compaction wait in the leader's transport queue and reach the follower when it
    // comes back, so the gap must be wider than those for the follower to need a snapshot.
    write_keys(cluster, &survivors, "while-down", 300, acknowledged).await?;
    let leader = leader_of(cluster, &survivors).await?;
    let leader_status = status(&cluster.endpoint(leader)).await?;
    if number(&leader_status, "first_index") <= stopped_at + 1 {
        return Err(format!(
            "the leader's log was not compacted past {stopped_at}: {leader_status}"
        ));
    }
    cluster.start_member(lagging).map_err(|e| e.to_string())?;
    let caught_up = catch_up(cluster, lagging, leader).await?;
    let snapshot_index = caught_up["snapshot"]["index"].as_u64().unwrap_or(0);
    if snapshot_index <= stopped_at || number(&caught_up, "first_index") <= 1 {
        return Err(format!(
            "node {lagging} caught up without a snapshot past {stopped_at}: {caught_up}"
        ));
    }
    if metric(cluster, lagging, "kv_snapshots_installed_total").await? == 0 {
        return Err(format!(
            "node {lagging} (stopped at {stopped_at}) installed no snapshot: {caught_up}; the \
             leader {leader} was {leader_status}"
        ));
    }
    check_copy(cluster, lagging, acknowledged).await?;
    tracing_free_log(&format!(
        "node {lagging} stopped at {stopped_at}, installed a snapshot at {snapshot_index}"
    ));
    Ok(leader)
}

/// The leader among `candidates`, as one of them reports it.
async fn leader_of(cluster: &LocalCluster, candidates: &[u64]) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for id in candidates {
            if let Ok(s) = status(&cluster.endpoint(*id)).await {
                if let Some(leader) = s["leader"].as_u64() {
                    return Ok(leader);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("no leader within 10 s".into())
}

/// 2. A node started with `--join` is added as a learner through a follower (which forwards
///    to the leader), catches up from a snapshot, is promoted through itself, takes writes,
///    and becomes leader by transfer.
async fn joining_node_is_added_and_promoted(
    cluster: &mut LocalCluster,
    leader: u64,
    acknowledged: &mut BTreeMap<String, String>,
) -> Result<u64, String> {
    let new = cluster.add_member().map_err(|e| e.to_string())?;
    cluster.start_member(new).map_err(|e| e.to_string())?;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let (peer, http) = {
        let member = &cluster.members()[(new - 1) as usize];
        (
            member.peer_address.to_string(),
            member.client_address.to_string(),
        )
    };
    let added = client(cluster.endpoint(follower))
        .add_member(new, Some(&peer), Some(&http))
        .await
        .map_err(|e| format!("adding node {new}: {e}"))?;
    if ids(&added, "learners") != [new] {
        return Err(format!("node {new} is not the learner: {added}"));
    }
    let caught_up = catch_up(cluster, new, leader).await?;
    if metric(cluster, new, "kv_snapshots_installed_total").await? == 0 {
        return Err(format!(
            "node {new} caught up without a snapshot: {caught_up}"
        ));
    }
    let promoted = client(cluster.endpoint(new))
        .promote_member(new, Some(Duration::from_secs(10)))
        .await
        .map_err(|e| format!("promoting node {new}: {e}"))?;
    if ids(&promoted, "voters") != [1, 2, 3, new] || !ids(&promoted, "learners").is_empty() {
        return Err(format!("node {new} is not a voter: {promoted}"));
    }
    write_keys(cluster, &[new], "joined", 10, acknowledged).await?;
    catch_up(cluster, new, leader).await?;
    check_copy(cluster, new, acknowledged).await?;
    client(cluster.endpoint(follower))
        .transfer_leader(new)
        .await
        .map_err(|e| format!("transferring leadership to {new}: {e}"))?;
    let now = status(&cluster.endpoint(new)).await?;
    if now["role"] != "leader" {
        return Err(format!(
            "node {new} does not lead after the transfer: {now}"
        ));
    }
    Ok(new)
}

/// 3. An original member is removed: the rest go on taking writes, and it stops receiving
///    (nothing written after the removal reaches its copy).
async fn removed_node_stops_receiving(
    cluster: &mut LocalCluster,
    leader: u64,
    acknowledged: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    let removed = (1..=3)
        .find(|id| *id != leader)
        .expect("an original follower");
    let remaining: Vec<u64> = (1..=leader.max(3))
        .filter(|id| *id != removed && cluster.is_running(*id))
        .collect();
    let after = client(cluster.endpoint(remaining[0]))
        .remove_member(removed)
        .await
        .map_err(|e| format!("removing node {removed}: {e}"))?;
    if ids(&after, "voters").contains(&removed) || !ids(&after, "removed").contains(&removed) {
        return Err(format!("node {removed} is still a member: {after}"));
    }
    let mut late = BTreeMap::new();
    write_keys(cluster, &remaining, "after-removal", 10, &mut late).await?;
    for id in &remaining {
        catch_up(cluster, *id, leader).await?;
        check_copy(cluster, *id, &late).await?;
    }
    acknowledged.extend(late.clone());
    // Give it time it would have needed to receive the writes, had it still been sent them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reader = client(cluster.endpoint(removed));
    for key in late.keys() {
        let read = reader.get(key, "stale").await.map_err(|e| e.to_string())?;
        if read.is_some() {
            return Err(format!("the removed node {removed} received {key}"));
        }
    }
    // It learns it was removed (the entry that removed it never reached it, so a member's
    // transport tells it) and says so: no "no leader", but "removed", to writes and health.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = reqwest::get(format!("{}/healthz", cluster.endpoint(removed)))
            .await
            .map_err(|e| e.to_string())?;
        let code = health.status();
        let body: Value = health.json().await.map_err(|e| e.to_string())?;
        if body["error"] == "removed" && code == 503 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "node {removed} never said it was removed: {code} {body}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = reqwest::Client::new()
        .put(format!(
            "{}/v1/kv/after-removal-write",
            cluster.endpoint(removed)
        ))
        .body("x")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let code = refused.status();
    let body: Value = refused.json().await.map_err(|e| e.to_string())?;
    if code != 410 || body["error"] != "removed" || body["applied"] != "no" {
        return Err(format!("a write on the removed node got {code} {body}"));
    }
    let commit = number(&status(&cluster.endpoint(leader)).await?, "commit_index");
    let removed_status = status(&cluster.endpoint(removed)).await?;
    if number(&removed_status, "applied_index") >= commit {
        return Err(format!(
            "the removed node kept up to {commit}: {removed_status}"
        ));
    }
    Ok(())
}

async fn membership_scenario(cluster: &mut LocalCluster) -> Result<(), String> {
    cluster.wait_ready(READY_TIMEOUT).await?;
    let mut acknowledged = BTreeMap::new();
    let leader = lagging_follower_installs_a_snapshot(cluster, &mut acknowledged).await?;
    let new_leader = joining_node_is_added_and_promoted(cluster, leader, &mut acknowledged).await?;
    removed_node_stops_receiving(cluster, new_leader, &mut acknowledged).await?;
    // 4. Every node, the removed one included, stops cleanly.
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

async fn run_membership(storage: StorageKind, transport: TransportKind) {
    let started = Instant::now();
    let mut cluster = LocalCluster::start(snapshot_spec(storage, transport)).expect("nodes start");
    if let Err(error) = membership_scenario(&mut cluster).await {
        for member in cluster.members() {
            eprintln!(
                "----- node {} log (tail) -----\n{}",
                member.id,
                cluster.log_tail(member.id, 40)
            );
        }
        panic!("{storage}+{transport} membership: {error}");
    }
    let data_dir = cluster.spec().data_dir.clone();
    drop(cluster);
    let _ = std::fs::remove_dir_all(data_dir);
    eprintln!(
        "{storage}+{transport} membership: passed in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_tcp_snapshots_and_membership_changes() {
    run_membership(StorageKind::Rocksdb, TransportKind::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_quic_snapshots_and_membership_changes() {
    run_membership(StorageKind::Mem, TransportKind::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_tcp_snapshots_and_membership_changes() {
    run_membership(StorageKind::Mem, TransportKind::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_quic_snapshots_and_membership_changes() {
    run_membership(StorageKind::Rocksdb, TransportKind::Quic).await;
}
