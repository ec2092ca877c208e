//! The state machines the simulated nodes run: any [`StateMachine`] inside [`Recorded`],
//! which reports every command it applies to the simulation's checks; the simulator's own is
//! [`KvMachine`], the protocol-level simulator's key-value store ([`KvStore`]).

use super::world::{lock, SharedWorld};
use crate::snapshot::{SnapshotMeta, SnapshotReader, SnapshotWriter};
use crate::state_machine::{ApplyBatch, StateMachine, StateMachineError};
use crate::testkit::sim::kv::KvStore;
use crate::types::{LogIndex, NodeId};
use async_trait::async_trait;
use bytes::Bytes;

/// The simulator's key-value state machine, in memory (a restart replays it from the disk's
/// snapshot and log).
#[derive(Debug, Default)]
pub struct KvMachine {
    pub(super) store: KvStore,
}

#[async_trait]
impl StateMachine for KvMachine {
    async fn apply(&mut self, index: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
        let batch = ApplyBatch {
            commands: vec![(index, command)],
            last_index: index,
        };
        let mut answers = self.apply_batch(batch).await?;
        Ok(answers.pop().expect("one answer per command"))
    }

    async fn apply_batch(&mut self, batch: ApplyBatch) -> Result<Vec<Bytes>, StateMachineError> {
        Ok(self.store.apply_batch(batch.commands, batch.last_index))
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
        Ok(())
    }
}

/// A node life's state machine `M`, reporting every command it applies (the checks compare
/// them across nodes and against the durable logs) and every snapshot it installs. The
/// simulator starts nodes with it; read it with
/// [`RaftNode::read`](crate::runtime::RaftNode::read) as a `Recorded<M>`.
pub struct Recorded<M> {
    world: SharedWorld,
    node: NodeId,
    life: u64,
    inner: M,
}

impl<M> Recorded<M> {
    pub(crate) fn new(world: SharedWorld, node: NodeId, life: u64, inner: M) -> Recorded<M> {
        Recorded {
            world,
            node,
            life,
            inner,
        }
    }

    /// The machine itself.
    pub fn inner(&self) -> &M {
        &self.inner
    }
}

#[async_trait]
impl<M: StateMachine> StateMachine for Recorded<M> {
    async fn apply(&mut self, index: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
        lock(&self.world).on_apply(self.node, self.life, index, &command);
        self.inner.apply(index, command).await
    }

    async fn apply_batch(&mut self, batch: ApplyBatch) -> Result<Vec<Bytes>, StateMachineError> {
        {
            let mut world = lock(&self.world);
            for (index, command) in &batch.commands {
                world.on_apply(self.node, self.life, *index, command);
            }
        }
        self.inner.apply_batch(batch).await
    }

    async fn applied_index(&mut self) -> Result<LogIndex, StateMachineError> {
        self.inner.applied_index().await
    }

    fn snapshot_format_version(&self) -> u32 {
        self.inner.snapshot_format_version()
    }

    fn installs_snapshot_format(&self, version: u32) -> bool {
        self.inner.installs_snapshot_format(version)
    }

    async fn build_snapshot(&mut self, out: &mut SnapshotWriter) -> Result<(), StateMachineError> {
        self.inner.build_snapshot(out).await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: &mut SnapshotReader,
    ) -> Result<(), StateMachineError> {
        self.inner.install_snapshot(meta, data).await?;
        let mut world = lock(&self.world);
        world.record(format_args!(
            "{} installed the snapshot at {}",
            self.node, meta.last_index
        ));
        Ok(())
    }
}
