//! A three-node cluster in one process, over the in-process network with in-memory logs:
//! it elects a leader, takes writes through every node, loses its leader, elects another and
//! keeps going. `make demo` runs it until a runnable server exists.

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::local_network::LocalRouter;
use raft_core::runtime::{RaftNode, RuntimeOptions};
use raft_core::{Config, LogIndex, NodeId, StateMachine, StateMachineError};
use raft_storage_mem::MemLogStore;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A key-value map; commands are `key=value`, answered with the previous value.
#[derive(Default)]
struct KeyValue {
    map: BTreeMap<String, String>,
}

#[async_trait]
impl StateMachine for KeyValue {
    async fn apply(
        &mut self,
        _index: LogIndex,
        command: Bytes,
    ) -> Result<Bytes, StateMachineError> {
        let text = String::from_utf8_lossy(&command);
        let (key, value) = text.split_once('=').unwrap_or((&text, ""));
        let previous = self.map.insert(key.to_string(), value.to_string());
        Ok(Bytes::from(previous.unwrap_or_default()))
    }
}

async fn wait_for_leader(nodes: &[Option<RaftNode>]) -> NodeId {
    loop {
        for node in nodes.iter().flatten() {
            let status = node.status();
            if status.role == raft_core::protocol::Role::Leader {
                return status.id;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
    let router = LocalRouter::new();
    let mut nodes = Vec::new();
    for id in &voters {
        let mut config = Config::new(*id, voters.clone());
        config.seed = std::process::id() as u64;
        let node = RaftNode::start(
            config,
            RuntimeOptions::default(),
            Arc::new(MemLogStore::new()),
            Box::new(KeyValue::default()),
            router.network(*id),
        )
        .await?;
        nodes.push(Some(node));
    }
    let started = Instant::now();
    let leader = wait_for_leader(&nodes).await;
    println!("{leader} was elected leader after {:?}", started.elapsed());

    for (i, node) in nodes.iter().flatten().enumerate() {
        let command = format!("greeting=hello from client {i}");
        let previous = node.propose(Bytes::from(command.clone())).await?;
        println!(
            "wrote {command:?} through n{} (previous value {:?})",
            i + 1,
            String::from_utf8_lossy(&previous)
        );
    }

    let writes = 2000;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..16 {
        let node = nodes[writer % 3].clone().expect("running");
        tasks.push(tokio::spawn(async move {
            for i in 0..writes / 16 {
                node.propose(Bytes::from(format!("key{writer}={i}")))
                    .await?;
            }
            Ok::<_, raft_core::runtime::NodeError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!("{writes} writes from 16 clients in {:?}", started.elapsed());

    println!("stopping the leader {leader}");
    let old = nodes[(leader.0 - 1) as usize].take().expect("running");
    old.shutdown().await;
    let started = Instant::now();
    let new_leader = wait_for_leader(&nodes).await;
    println!("{new_leader} took over after {:?}", started.elapsed());
    let survivor = nodes.iter().flatten().next().expect("two nodes remain");
    survivor.propose(Bytes::from("greeting=still here")).await?;
    for node in nodes.iter().flatten() {
        let status = node.status();
        println!(
            "{}: {:?} term {} commit {} applied {}",
            status.id, status.role, status.term, status.commit_index, status.applied_index
        );
    }
    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
    Ok(())
}
