//! Why a node stopped, and why a snapshot was not taken: typed, so that a caller can match on
//! the cause, and cheap to clone (sources that are not `Clone` sit behind an `Arc`), since one
//! cause goes to every waiter. Each error's message includes its source's, so a log line that
//! prints only the message says everything; `source()` walks the same chain typed.

use crate::protocol::plan::SnapshotDataError;
use crate::snapshot::SnapshotFormatError;
use crate::state_machine::StateMachineError;
use crate::storage::StorageError;
use crate::types::{LogIndex, NodeId};
use std::fmt;
use std::sync::Arc;

/// Why a node stopped: [`RaftNode::stopped`](super::RaftNode::stopped) returns it, and
/// [`NodeError::Stopped`](super::NodeError::Stopped) and
/// [`NodeError::NotRunning`](super::NodeError::NotRunning) carry it.
#[derive(Clone, Debug, thiserror::Error)]
#[error("raft node {node} stopped: {cause}")]
pub struct StopReason {
    /// The node that stopped.
    pub node: NodeId,
    /// Why.
    #[source]
    pub cause: StopCause,
}

/// What stopped a node: a shutdown, or a failure after which it cannot go on safely
/// (fail-stop: it acknowledges nothing more, and a restart resumes from what is durable).
#[derive(Clone, Debug, thiserror::Error)]
pub enum StopCause {
    /// [`RaftNode::shutdown`](super::RaftNode::shutdown) was called, or every handle to the
    /// node (or the transport's sender into its inbox) was dropped.
    #[error("shut down")]
    Shutdown,
    /// The log store failed an operation of the writer: a write of the log or hard state, a
    /// purge, or a step of storing a received snapshot. Nothing after it was acknowledged.
    #[error("the log store failed to {operation}: {error}")]
    LogStore {
        /// What the writer asked of the store.
        operation: StoreOperation,
        /// The store's error.
        #[source]
        error: Arc<StorageError>,
    },
    /// Received snapshot data does not continue the snapshot being received (the protocol
    /// handed it out of place: a bug).
    #[error("received snapshot data out of place: {0}")]
    SnapshotData(#[source] SnapshotDataError),
    /// The state machine failed to apply a batch of committed entries; the node stops rather
    /// than skip an entry.
    #[error("the state machine failed to apply the entries up to {last_index}: {error}")]
    Apply {
        /// The last index of the batch.
        last_index: LogIndex,
        /// The machine's error.
        #[source]
        error: Arc<StateMachineError>,
    },
    /// The state machine broke the `apply_batch` contract: it did not answer every command.
    #[error(
        "the state machine answered {answered} of {commands} commands in a batch; it must \
         answer every command"
    )]
    AnswerCount {
        /// How many answers it gave.
        answered: usize,
        /// How many commands the batch held.
        commands: usize,
    },
    /// A received snapshot's data has a format this node's state machine does not install.
    /// Nothing was misread, and the store keeps the snapshot: a release that reads the format
    /// installs it at the next start.
    #[error("{0}")]
    SnapshotFormat(#[source] SnapshotFormatError),
    /// Installing a received snapshot in the state machine failed (its session header, or the
    /// machine's own install).
    #[error("installing the snapshot at {index}: {error}")]
    SnapshotInstall {
        /// The snapshot's last index.
        index: LogIndex,
        /// The error.
        #[source]
        error: Arc<StateMachineError>,
    },
    /// A task of the node ended before the node stopped (it panicked): the driver could no
    /// longer hand it work, or (for the driver itself) it ended without saying why.
    #[error("the {0} task ended unexpectedly")]
    TaskEnded(NodeTask),
    /// A request lost its answer because a task of the node failed, and the driver, which
    /// publishes the cause, had not done so yet. [`RaftNode::stopped`](super::RaftNode::stopped)
    /// returns the cause once it is published.
    #[error("a task of the node failed; the cause is not yet published")]
    Unreported,
}

/// One of the tasks a node runs (see the [module documentation](super)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeTask {
    /// The driver, which owns the protocol.
    Driver,
    /// The writer, which makes the protocol's writes durable.
    Writer,
    /// The applier, which applies committed entries to the state machine.
    Applier,
}

impl fmt::Display for NodeTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeTask::Driver => "driver",
            NodeTask::Writer => "log writer",
            NodeTask::Applier => "state machine applier",
        })
    }
}

/// What the runtime asked of the log store when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOperation {
    /// [`LogStore::write`](crate::LogStore::write): entries, a truncation, the hard state.
    WriteLog,
    /// [`LogStore::purge`](crate::LogStore::purge) of the log a snapshot covers.
    PurgeLog,
    /// [`LogStore::begin_snapshot`](crate::LogStore::begin_snapshot), for a snapshot built
    /// here or received.
    BeginSnapshot,
    /// [`SnapshotSink::write`](crate::SnapshotSink::write) of received snapshot data.
    WriteSnapshot,
    /// [`SnapshotSink::finish`](crate::SnapshotSink::finish), storing a whole snapshot.
    FinishSnapshot,
}

impl fmt::Display for StoreOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreOperation::WriteLog => "write the log",
            StoreOperation::PurgeLog => "purge the log",
            StoreOperation::BeginSnapshot => "begin a snapshot",
            StoreOperation::WriteSnapshot => "write received snapshot data",
            StoreOperation::FinishSnapshot => "store a snapshot",
        })
    }
}

/// Why a snapshot was not taken ([`NodeError::Snapshot`](super::NodeError::Snapshot)). The node
/// runs on: the protocol asks for another after the next interval. Cheap to clone.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Nothing has been applied yet, so there is nothing to snapshot.
    #[error("nothing has been applied yet")]
    NothingApplied,
    /// The state machine was not at the index the protocol asked a snapshot of (a bug).
    #[error("asked for a snapshot at {requested} but the state machine is at {applied}")]
    NotAtIndex {
        /// The index asked for.
        requested: LogIndex,
        /// The index the machine had applied.
        applied: LogIndex,
    },
    /// The log store failed to begin or to store the snapshot.
    #[error("the log store failed to {operation}: {error}")]
    Store {
        /// What was asked of the store.
        operation: StoreOperation,
        /// The store's error.
        #[source]
        error: Arc<StorageError>,
    },
    /// Writing the snapshot's data failed: the session table at its head, or the state
    /// machine's own data (including the store errors the snapshot writer met on the way).
    #[error("writing the snapshot's data: {0}")]
    Data(#[source] Arc<StateMachineError>),
}
