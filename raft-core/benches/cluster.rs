//! Committed proposals per second for three nodes in one process: in-memory logs, the
//! in-process network, a state machine that answers every command with its length.
//! Proposers are closed loops (one call in flight each) sent to the leader: one command per
//! `propose`, or, in the batch rows, `batch` commands per `propose_many` (as openraft's
//! benchmark does with batches of commands per client write).
//!
//! `cargo bench -p raft-core --bench cluster` prints one row per (proposers, payload, batch).
//! `BENCH_SECONDS` sets the measuring time per row (default 3).

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::local_network::LocalRouter;
use raft_core::protocol::Role;
use raft_core::runtime::{Proposal, RaftNode, RuntimeOptions};
use raft_core::{Config, LogIndex, NodeId, StateMachine, StateMachineError};
use raft_storage_mem::MemLogStore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Echo;

#[async_trait]
impl StateMachine for Echo {
    async fn apply(&mut self, _: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
        Ok(Bytes::from((command.len() as u64).to_le_bytes().to_vec()))
    }
}

async fn cluster(seed: u64) -> Vec<RaftNode> {
    let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
    let router = LocalRouter::new();
    let mut nodes = Vec::new();
    for id in &voters {
        let mut config = Config::new(*id, voters.clone());
        config.seed = seed;
        let options = RuntimeOptions {
            inbox_messages_max: 65536,
            ..RuntimeOptions::default()
        };
        let node = RaftNode::start(
            config,
            options,
            Arc::new(MemLogStore::new()),
            Box::new(Echo),
            router.network(*id),
        )
        .await
        .expect("node starts");
        nodes.push(node);
    }
    nodes
}

async fn leader(nodes: &[RaftNode]) -> RaftNode {
    loop {
        if let Some(node) = nodes.iter().find(|n| n.status().role == Role::Leader) {
            // One write proves the leader has committed in its term.
            node.propose(Bytes::new()).await.expect("first write");
            return node.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn measure(proposers: usize, payload_bytes: usize, batch: usize, seconds: f64) -> f64 {
    let nodes = cluster(proposers as u64 * 31 + payload_bytes as u64).await;
    let leader = leader(&nodes).await;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let payload = Bytes::from(vec![7u8; payload_bytes]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..proposers {
        let node = leader.clone();
        let done = done.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if batch == 1 {
                    node.propose(payload.clone())
                        .await
                        .expect("proposal commits");
                } else {
                    let commands = (0..batch).map(|_| Proposal::from(payload.clone()));
                    for answer in node.propose_many(commands).await {
                        answer.expect("proposal commits");
                    }
                }
                done.fetch_add(batch as u64, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("proposer task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    for node in &nodes {
        node.shutdown().await;
    }
    done.load(Ordering::Relaxed) as f64 / elapsed
}

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!("| proposers | payload bytes | batch | committed proposals/s |");
    println!("| --- | --- | --- | --- |");
    let rows = [1, 64, 256]
        .into_iter()
        .flat_map(|proposers| [0, 256].map(|payload| (proposers, payload, 1)))
        .chain([(256, 0, 4), (256, 256, 4)]);
    for (proposers, payload_bytes, batch) in rows {
        let rate = runtime.block_on(measure(proposers, payload_bytes, batch, seconds));
        println!("| {proposers} | {payload_bytes} | {batch} | {rate:.0} |");
    }
}
