//! The `StateMachine` trait: what a user writes to put an application on the replicated log.

use crate::snapshot::{SnapshotMeta, SnapshotReader, SnapshotWriter};
use crate::types::LogIndex;
use async_trait::async_trait;
use bytes::Bytes;
use std::any::Any;
use std::fmt;

/// A state machine that cannot go on: its disk failed, its state is damaged. Applying is not
/// allowed to fail in Raft (every node must reach the same state), so the runtime stops the
/// node on this error (fail-stop) rather than skip an entry; the entry is committed, so the
/// node stops again at every restart until the machine is mended.
///
/// A command the machine *refuses* (it does not parse, the account has too little money) is
/// not a failure: it is an answer, the same on every node. Return it as `Ok` with the refusal
/// encoded in the answer bytes, and the cluster goes on serving.
#[derive(Debug)]
pub struct StateMachineError(pub String);

impl fmt::Display for StateMachineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state machine failed: {}", self.0)
    }
}

impl std::error::Error for StateMachineError {}

/// Committed commands, in log order, handed to a state machine together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyBatch {
    /// The commands with their log indexes, strictly increasing.
    pub commands: Vec<(LogIndex, Bytes)>,
    /// The last log index this batch covers. It can be past the last command, because entries
    /// that carry no command (a new leader's blank entry) are applied too, invisibly.
    pub last_index: LogIndex,
}

/// An application replicated by Raft: a deterministic function from a sequence of commands to
/// a state, answering each command.
///
/// Every node applies the same commands in the same order, so `apply` must depend only on the
/// current state and the command (no clocks, no randomness, no reading other machines' state).
/// The simplest machine implements `apply` alone; a durable one also overrides `apply_batch`
/// (to write a batch and its `last_index` atomically) and `applied_index` (so a restart does not
/// replay what is already applied). The node owns the machine once started; read its state
/// with [`RaftNode::read`](crate::runtime::RaftNode::read), which hands it back as its own type.
#[async_trait]
pub trait StateMachine: AsAny + Send + 'static {
    /// Applies one committed command and returns the answer for its proposer. A refusal is an
    /// answer (`Ok`); `Err` stops the node (see [`StateMachineError`]).
    async fn apply(&mut self, index: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError>;

    /// Applies a batch in order and returns one answer per command. Override to make a batch
    /// one atomic write; the default calls `apply` for each command.
    async fn apply_batch(&mut self, batch: ApplyBatch) -> Result<Vec<Bytes>, StateMachineError> {
        let mut answers = Vec::with_capacity(batch.commands.len());
        for (index, command) in batch.commands {
            answers.push(self.apply(index, command).await?);
        }
        Ok(answers)
    }

    /// The last index whose effect the machine holds durably. The runtime replays the log from
    /// the entry after it when a node starts. An in-memory machine keeps the default, 0.
    async fn applied_index(&mut self) -> Result<LogIndex, StateMachineError> {
        Ok(LogIndex(0))
    }

    /// Writes the applied state (everything up to the last index applied) into `out`, which
    /// passes it on in chunks. Called between batches, never concurrently with `apply`. The
    /// default refuses: the node then never compacts its log. A failure here is not fatal; the
    /// node tries again later.
    async fn build_snapshot(&mut self, out: &mut SnapshotWriter) -> Result<(), StateMachineError> {
        let _ = out;
        Err(StateMachineError(
            "this state machine does not build snapshots".into(),
        ))
    }

    /// Replaces the whole state with the snapshot's, which covers the log up to
    /// `meta.last_index`; afterwards `applied_index` must report at least that index (a durable
    /// machine stores it with the data). Must be overridden along with `build_snapshot`. A
    /// failure is fatal (fail-stop): the state may be half-replaced.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: &mut SnapshotReader,
    ) -> Result<(), StateMachineError> {
        let _ = data;
        Err(StateMachineError(format!(
            "this state machine cannot install snapshots (asked to install one at {})",
            meta.last_index
        )))
    }
}

/// Lets the runtime hand a [`StateMachine`] back to its user as its own type
/// ([`RaftNode::read`](crate::runtime::RaftNode::read)). Implemented for every type: nothing
/// to write.
pub trait AsAny: Any {
    /// This value as `dyn Any`, whose concrete type is the implementing type.
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}
