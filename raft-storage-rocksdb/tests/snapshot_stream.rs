//! A large snapshot streamed between two nodes on RocksDB stores, with the heap measured: the
//! state machine writes its state in pieces, the leader reads chunks from its snapshot file,
//! the follower writes them into its own and installs it chunk by chunk, so neither side ever
//! holds the snapshot in memory.
//!
//! `SNAPSHOT_STREAM_MIB` sets the snapshot size (default 64 MiB).

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::local_network::LocalRouter;
use raft_core::runtime::{RaftNode, RuntimeOptions};
use raft_core::snapshot::{SnapshotMeta, SnapshotReader, SnapshotWriter};
use raft_core::{Config, LogIndex, MembershipChange, NodeId, StateMachine, StateMachineError};
use raft_storage_rocksdb::{RocksLogStore, RocksLogStoreOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts the bytes allocated now and the most at once since the last reset.
struct CountingAllocator;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// A state of `size` pseudo-random bytes, generated on the fly from `size`: the machine never
/// holds it, so any large allocation during a transfer is the transfer's.
#[derive(Clone, Default)]
struct Synthetic {
    state: Arc<Mutex<(u64, LogIndex, usize)>>,
}

const PIECE_BYTES: usize = 64 * 1024;

fn piece(size: u64, offset: u64, into: &mut Vec<u8>) {
    into.clear();
    let mut x = size ^ offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let len = (size - offset).min(PIECE_BYTES as u64) as usize;
    while into.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        into.extend_from_slice(&x.to_le_bytes()[..(len - into.len()).min(8)]);
    }
}

#[async_trait]
impl StateMachine for Synthetic {
    async fn apply(&mut self, index: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
        let size: u64 = std::str::from_utf8(&command)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| StateMachineError("not a size".into()))?;
        let mut state = self.state.lock().unwrap();
        state.0 = size;
        state.1 = index;
        Ok(Bytes::new())
    }

    async fn build_snapshot(&mut self, out: &mut SnapshotWriter) -> Result<(), StateMachineError> {
        let size = self.state.lock().unwrap().0;
        out.write(&size.to_le_bytes()).await?;
        let mut buffer = Vec::with_capacity(PIECE_BYTES);
        let mut offset = 0;
        while offset < size {
            piece(size, offset, &mut buffer);
            out.write(&buffer).await?;
            offset += buffer.len() as u64;
        }
        Ok(())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: &mut SnapshotReader,
    ) -> Result<(), StateMachineError> {
        // Compare the stream with what it must be, a chunk at a time.
        let mut header = Vec::new();
        let mut expected = Vec::new();
        let mut size = None;
        let mut offset = 0u64;
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = data.next_chunk().await? {
            let mut chunk = &chunk[..];
            if size.is_none() {
                let take = (8 - header.len()).min(chunk.len());
                header.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if header.len() == 8 {
                    size = Some(u64::from_le_bytes(header.clone().try_into().unwrap()));
                }
            }
            pending.extend_from_slice(chunk);
            let size = size.unwrap_or(0);
            while pending.len() >= PIECE_BYTES.min((size - offset) as usize) && offset < size {
                piece(size, offset, &mut expected);
                if pending[..expected.len()] != expected[..] {
                    return Err(StateMachineError(format!("snapshot differs at {offset}")));
                }
                pending.drain(..expected.len());
                offset += expected.len() as u64;
            }
        }
        let size = size.ok_or_else(|| StateMachineError("no header".into()))?;
        if offset != size || !pending.is_empty() {
            return Err(StateMachineError("snapshot length differs".into()));
        }
        let mut state = self.state.lock().unwrap();
        *state = (size, meta.last_index, state.2 + 1);
        Ok(())
    }

    async fn applied_index(&mut self) -> Result<LogIndex, StateMachineError> {
        Ok(self.state.lock().unwrap().1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_streams_to_a_new_node_without_being_held_in_memory() {
    let mib: u64 = std::env::var("SNAPSHOT_STREAM_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let size = mib << 20;
    let root = tempfile::tempdir().unwrap();
    let router = LocalRouter::new();
    let machines = [Synthetic::default(), Synthetic::default()];
    let mut nodes = Vec::new();
    for (k, id) in [NodeId(1), NodeId(2)].into_iter().enumerate() {
        let voters = if k == 0 { vec![id] } else { Vec::new() };
        let mut config = Config::new(id, voters);
        config.snapshot_tail_entries = 0;
        let store = RocksLogStore::open(
            root.path().join(format!("node-{id}")),
            RocksLogStoreOptions::default(),
        )
        .unwrap();
        let node = RaftNode::start(
            config,
            RuntimeOptions::default(),
            Arc::new(store),
            Box::new(machines[k].clone()),
            router.network(id),
        )
        .await
        .unwrap();
        nodes.push(node);
    }
    nodes[0]
        .propose(Bytes::from(size.to_string()))
        .await
        .unwrap();
    let meta = nodes[0].snapshot().await.unwrap();
    // The machine's bytes, after the runtime's session header (an empty session table).
    let header_bytes = meta.data_bytes - (size + 8);
    assert!((17..64).contains(&header_bytes), "{header_bytes}");
    let baseline = CURRENT.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let started = Instant::now();
    nodes[0]
        .change_membership(MembershipChange::add_learner(NodeId(2)))
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(600),
        nodes[1].wait_applied(meta.last_index),
    )
    .await
    .expect("the snapshot arrives")
    .unwrap();
    let elapsed = started.elapsed();
    let peak = PEAK.load(Ordering::Relaxed) - baseline;
    println!(
        "streamed a {} MiB snapshot in {:.1} s; heap peak above the baseline {:.1} MiB (both nodes)",
        meta.data_bytes >> 20,
        elapsed.as_secs_f64(),
        peak as f64 / (1 << 20) as f64
    );
    assert_eq!(machines[1].state.lock().unwrap().2, 1, "installed once");
    assert_eq!(machines[1].state.lock().unwrap().0, size);
    // Chunks of 1 MiB, 4 in flight, queued once in each direction: far below the snapshot.
    assert!(
        peak < 48 << 20,
        "the transfer held {peak} bytes at once for a {size}-byte snapshot"
    );
    for node in &nodes {
        node.shutdown().await;
    }
}
