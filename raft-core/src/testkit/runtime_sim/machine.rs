//! The state machine the simulated nodes run: the protocol-level simulator's key-value store
//! ([`KvStore`]) behind the runtime's own session filter, reporting every command it applies.

use super::world::{lock, SharedWorld};
use crate::snapshot::{SnapshotMeta, SnapshotReader, SnapshotWriter};
use crate::state_machine::{ApplyBatch, StateMachine, StateMachineError};
use crate::testkit::sim::kv::KvStore;
use crate::types::{LogIndex, NodeId};
use async_trait::async_trait;
use bytes::Bytes;

/// One life's key-value state machine (in memory: a restart replays it from the disk's
/// snapshot and log). Read it with [`RaftNode::read`](crate::runtime::RaftNode::read) as a
/// `SimKvMachine`.
pub struct SimKvMachine {
    world: SharedWorld,
    node: NodeId,
    life: u64,
    store: KvStore,
}

impl SimKvMachine {
    pub(crate) fn new(world: SharedWorld, node: NodeId, life: u64) -> SimKvMachine {
        SimKvMachine {
            world,
            node,
            life,
            store: KvStore::default(),
        }
    }

    /// The key-value data applied so far.
    pub fn store(&self) -> &KvStore {
        &self.store
    }
}

#[async_trait]
impl StateMachine for SimKvMachine {
    async fn apply(&mut self, index: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
        let batch = ApplyBatch {
            commands: vec![(index, command)],
            last_index: index,
        };
        let mut answers = self.apply_batch(batch).await?;
        Ok(answers.pop().expect("one answer per command"))
    }

    async fn apply_batch(&mut self, batch: ApplyBatch) -> Result<Vec<Bytes>, StateMachineError> {
        {
            let mut world = lock(&self.world);
            for (index, command) in &batch.commands {
                world.on_apply(self.node, self.life, *index, command);
            }
        }
        let answers = self.store.apply_batch(batch.commands, batch.last_index);
        Ok(answers)
    }

    async fn build_snapshot(&mut self, out: &mut SnapshotWriter) -> Result<(), StateMachineError> {
        out.write(&self.store.snapshot_bytes()).await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: &mut SnapshotReader,
    ) -> Result<(), StateMachineError> {
        let bytes = data.read_to_end().await?;
        self.store = KvStore::from_snapshot(&bytes, meta.last_index).ok_or_else(|| {
            StateMachineError(format!(
                "the snapshot at {} does not decode",
                meta.last_index
            ))
        })?;
        let mut world = lock(&self.world);
        world.record(format_args!(
            "{} installed the snapshot at {}",
            self.node, meta.last_index
        ));
        Ok(())
    }
}
