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
///
/// # Evolving formats across a rolling upgrade
///
/// During a rolling upgrade, old and new releases apply the same log, and every node must reach
/// the same state from it. So a command format changes in two releases, never one:
///
/// 1. Tag every command with its format version (a leading byte is enough), and keep the code
///    that applies each version for as long as a log entry or snapshot of it may exist: a new
///    release applies an old command exactly as the old release did.
/// 2. The first release *reads* the new format but still *proposes* only the old one. An old
///    node handed a command it cannot parse would refuse it while new nodes apply it, and the
///    replicas would part ways; so nothing proposes the new format until every node runs a
///    release that reads it.
/// 3. Once every node does, switch, best with a committed command ("formats from here on: 2"):
///    the switch then happens at one log index on every node, and a machine can refuse, the
///    same way everywhere, a new-format command that comes before it.
///
/// Snapshots evolve the same way, with [`StateMachine::snapshot_format_version`] (the format
/// this machine writes now, recorded in [`SnapshotMeta::format_version`]) and
/// [`StateMachine::installs_snapshot_format`] (the formats it reads). The runtime checks the
/// second before any byte of a snapshot reaches [`StateMachine::install_snapshot`]: a node
/// handed a snapshot whose format it cannot read stops (fail-stop) with a
/// [`SnapshotFormatError`](crate::snapshot::SnapshotFormatError) in its reason rather than
/// misread it, and once upgraded it installs the snapshot it kept. So write the old snapshot
/// format until every node reads the new one, exactly as with commands.
///
/// The library's own formats name their version in one place each and refuse any other:
/// [`wire::FORMAT_VERSION`](crate::wire::FORMAT_VERSION) for frames between nodes, and the
/// stores' on-disk formats (`raft-storage-rocksdb` refuses to open a store of another version).
///
/// ```
/// use async_trait::async_trait;
/// use bytes::Bytes;
/// use raft_core::snapshot::{SnapshotMeta, SnapshotReader, SnapshotWriter};
/// use raft_core::{LogIndex, StateMachine, StateMachineError};
///
/// /// A counter in the release that brings format 2. Commands are `[version, ...]`: version 1
/// /// adds one byte, version 2 a big-endian u64. Snapshots: version 1 holds the total as
/// /// text, version 2 as 8 bytes. This release reads both, and proposes and writes version 2
/// /// only once the committed switch (command `[0]`) has been applied.
/// #[derive(Default)]
/// struct Counter {
///     total: u64,
///     switched: bool,
/// }
///
/// #[async_trait]
/// impl StateMachine for Counter {
///     async fn apply(&mut self, _index: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
///         let amount = match command.split_first() {
///             Some((1, [amount])) => u64::from(*amount),
///             Some((2, amount)) if self.switched && amount.len() == 8 => {
///                 u64::from_be_bytes(amount.try_into().expect("8 bytes"))
///             }
///             // Proposed by an operator once every node runs this release.
///             Some((0, [])) => {
///                 self.switched = true;
///                 return Ok(Bytes::from("switched to format 2"));
///             }
///             _ => return Ok(Bytes::from("refused: unknown command format")),
///         };
///         self.total += amount;
///         Ok(Bytes::from(self.total.to_string()))
///     }
///
///     fn snapshot_format_version(&self) -> u32 {
///         if self.switched { 2 } else { 1 }
///     }
///
///     fn installs_snapshot_format(&self, version: u32) -> bool {
///         matches!(version, 1 | 2)
///     }
///
///     async fn build_snapshot(&mut self, out: &mut SnapshotWriter) -> Result<(), StateMachineError> {
///         match self.snapshot_format_version() {
///             2 => out.write(&self.total.to_be_bytes()).await,
///             _ => out.write(self.total.to_string().as_bytes()).await,
///         }
///     }
///
///     async fn install_snapshot(
///         &mut self,
///         meta: &SnapshotMeta,
///         data: &mut SnapshotReader,
///     ) -> Result<(), StateMachineError> {
///         let bytes = data.read_to_end().await?;
///         let damaged = || StateMachineError(format!("snapshot at {} is damaged", meta.last_index));
///         self.total = match meta.format_version {
///             2 => u64::from_be_bytes(bytes.try_into().map_err(|_| damaged())?),
///             _ => std::str::from_utf8(&bytes).ok().and_then(|t| t.parse().ok()).ok_or_else(damaged)?,
///         };
///         self.switched = meta.format_version == 2;
///         Ok(())
///     }
/// }
/// ```
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

    /// The format version of the snapshot data this machine writes now: the runtime records it
    /// in the [`SnapshotMeta::format_version`] of every snapshot it builds, right after
    /// [`StateMachine::build_snapshot`]. Change it when the snapshot data's layout changes (see
    /// the rolling upgrade section above). The default is 1.
    fn snapshot_format_version(&self) -> u32 {
        1
    }

    /// Whether this machine can install a snapshot whose data has format `version`. The runtime
    /// asks before [`StateMachine::install_snapshot`] and refuses a snapshot it answers `false`
    /// for with a [`SnapshotFormatError`](crate::snapshot::SnapshotFormatError): on start the
    /// node does not start, and a snapshot received while running stops the node, which keeps
    /// the snapshot for a release that reads it. The default accepts only the version this
    /// machine writes now.
    fn installs_snapshot_format(&self, version: u32) -> bool {
        version == self.snapshot_format_version()
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
    /// `meta.last_index`, in the format `meta.format_version` (one this machine said it
    /// installs); afterwards `applied_index` must report at least that index (a durable
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
