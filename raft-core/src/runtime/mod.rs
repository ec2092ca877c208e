//! The async node runtime: one [`RawNode`] driven by tokio against a [`LogStore`], a
//! [`StateMachine`] and a [`Network`], following the numbered
//! [IO contract](raft_proto#the-io-contract) in raft-proto's crate docs.
//!
//! Three tasks share the work so that disk, network and application overlap:
//! - the *driver* owns the protocol: it ticks it, steps received messages and proposals in
//!   batches, sends the messages that depend on nothing local, and hands each ready's write to
//!   the writer and its committed entries to the applier;
//! - the *writer* makes writes durable in order, merging all queued writes into one store call
//!   (group commit), then sends the messages that waited for them and reports back; a leader's
//!   write of entries that have not reached all its followers yet may wait a moment for the
//!   next one ([`RuntimeOptions::leader_write_delay_max`]);
//! - the *applier* applies committed entries in order and answers each proposer. Commands
//!   proposed in a client session ([`RaftNode::propose_in_session`], and every forward)
//!   pass the session table first, so each (session, sequence) reaches the state machine
//!   once; the table rides at the head of every snapshot (see [`crate::sessions`]). Between
//!   batches it also runs the users' reads of the state machine ([`RaftNode::read`]): the
//!   machine has one owner, and a read never waits for the driver nor holds it up.

mod applier;
mod driver;
mod signals;
mod stop;
pub mod telemetry;
mod writer;

pub use signals::{CommittedMembership, Leadership};
pub use stop::{NodeTask, SnapshotError, StopCause, StopReason, StoreOperation};

use crate::config::{Config, ConfigError};
use crate::membership::{Membership, MembershipChange, MembershipError};
use crate::network::{Inbound, Network, NetworkError};
use crate::protocol::{
    ProposeError, RawNode, Restore, RestoreError, StartError, Status, TransferError,
};
use crate::sessions::{SessionError, SessionLimits, SessionTable};
use crate::snapshot::{SnapshotFormatError, SnapshotMeta, SnapshotReader};
use crate::state_machine::{AsAny, StateMachine, StateMachineError};
use crate::storage::{LogStore, StorageError};
use crate::types::NodeId;
use crate::types::{LogIndex, SessionId, SessionTag};
use bytes::Bytes;
use std::any::TypeId;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Settings of the runtime around the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Real time per protocol tick. With the protocol's default tick counts, 10 ms gives a
    /// 150–300 ms election timeout and a 50 ms heartbeat.
    pub tick_interval: Duration,
    /// Received messages queued for the driver before transports must wait.
    pub inbox_messages_max: usize,
    /// Client proposals queued for the driver before `propose` callers must wait.
    pub proposal_queue_max: usize,
    /// Messages and proposals the driver steps before it takes a ready: larger batches mean
    /// fewer, larger writes and messages.
    pub step_batch_max: usize,
    /// Readies queued for the writer before the driver waits (backpressure from the disk).
    pub write_queue_readies_max: usize,
    /// Batches of committed entries queued for the applier before the driver waits.
    pub apply_queue_batches_max: usize,
    /// Reads of the state machine ([`RaftNode::read`]) queued for the applier, past their
    /// read barrier, before more callers of `read` wait.
    pub machine_read_queue_max: usize,
    /// Snapshot chunks queued to be read from the store and sent; past it a chunk is dropped
    /// (the leader resends it).
    pub snapshot_send_queue_max: usize,
    /// How long a leader may hold back its own log write while the new entries in it have not
    /// yet gone out to every follower it pipelines to (zero: write at once). A commit needs a
    /// majority, and the followers' writes start only when the entries reach them; a leader
    /// write started with the last of those sends is still durable before their acks arrive,
    /// so commits come as soon, with one leader sync per round of appends instead of one per
    /// batch of proposals. The bound covers a follower that stopped answering; tokio's timer
    /// rounds it up to the next millisecond.
    pub leader_write_delay_max: Duration,
    /// The session ID of this life's first forward (a follower sends each forwarded command
    /// in a one-off session, numbered up from it). `None`, the default: a random one, drawn at
    /// start. Set it only where runs must repeat exactly (a simulator), and then to a value no
    /// other life of any node uses, or the session table would take one life's forward for a
    /// retry of another's.
    pub forward_sessions_first: Option<SessionId>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            tick_interval: Duration::from_millis(10),
            inbox_messages_max: 4096,
            proposal_queue_max: 4096,
            step_batch_max: 1024,
            write_queue_readies_max: 256,
            apply_queue_batches_max: 256,
            machine_read_queue_max: 1024,
            snapshot_send_queue_max: 64,
            leader_write_delay_max: Duration::from_millis(1),
            forward_sessions_first: None,
        }
    }
}

impl RuntimeOptions {
    fn validate(&self) -> Result<(), NodeError> {
        let counts = [
            ("inbox_messages_max", self.inbox_messages_max),
            ("proposal_queue_max", self.proposal_queue_max),
            ("step_batch_max", self.step_batch_max),
            ("write_queue_readies_max", self.write_queue_readies_max),
            ("apply_queue_batches_max", self.apply_queue_batches_max),
            ("machine_read_queue_max", self.machine_read_queue_max),
            ("snapshot_send_queue_max", self.snapshot_send_queue_max),
        ];
        for (name, value) in counts {
            if value == 0 {
                let error = ConfigError(format!("{name} must be at least 1"));
                return Err(NodeError::Config(error));
            }
        }
        if self.tick_interval.is_zero() {
            let error = ConfigError("tick_interval must be above zero".into());
            return Err(NodeError::Config(error));
        }
        Ok(())
    }
}

/// Why a node call failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The protocol refused or lost the proposal; see [`ProposeError::is_definite`].
    #[error(transparent)]
    Propose(ProposeError),
    /// A proposal in a client session was not given its answer: it is older than the
    /// session's last command (never applied), or it was applied once before and its answer
    /// was not kept (see [`crate::sessions`]).
    #[error(transparent)]
    Session(SessionError),
    /// A leadership transfer failed.
    #[error(transparent)]
    Transfer(TransferError),
    /// A membership change was refused.
    #[error(transparent)]
    Membership(MembershipError),
    /// A snapshot could not be taken; the node runs on.
    #[error("no snapshot taken: {0}")]
    Snapshot(#[source] SnapshotError),
    /// The node stopped (shut down, or failed on a storage or state machine error: see
    /// [`StopCause`]) while the request was in its hands: a command may or may not have been
    /// applied.
    #[error(transparent)]
    Stopped(StopReason),
    /// The node was not running when asked (shut down, or failed: the reason is given), so
    /// the request never reached the protocol: a command certainly was not and will not be
    /// applied.
    #[error("{0}; the request never reached it, so nothing was done")]
    NotRunning(#[source] StopReason),
    /// Starting failed: the configuration or options are invalid.
    #[error(transparent)]
    Config(ConfigError),
    /// Starting failed: the hard state, log, snapshot and state machine the node restored
    /// from do not fit together (a corrupt log, say). A store that finds its own data damaged
    /// reports [`StorageError::Corrupt`] instead ([`NodeError::Storage`]).
    #[error("cannot start from the stored state: {0}")]
    Restore(#[source] RestoreError),
    /// Starting failed: the store could not be read.
    #[error(transparent)]
    Storage(StorageError),
    /// Starting failed: the state machine could not report its applied index, or could not
    /// install the stored snapshot.
    #[error(transparent)]
    StateMachine(StateMachineError),
    /// Starting failed: the stored snapshot's data has a format this node's state machine does
    /// not install (see [`StateMachine::installs_snapshot_format`]). Nothing was misread and
    /// the snapshot is kept: a release that reads the format starts from it.
    #[error(transparent)]
    SnapshotFormat(SnapshotFormatError),
    /// [`RaftNode::read`] asked for the state machine as a type it is not (the node was
    /// started with a machine of another type). Nothing was read.
    #[error("this node's state machine is not a {requested}")]
    WrongStateMachineType {
        /// The type the caller asked for.
        requested: &'static str,
    },
    /// Starting failed: the transport could not start.
    #[error(transparent)]
    Network(NetworkError),
}

impl From<StartError> for NodeError {
    fn from(error: StartError) -> Self {
        match error {
            StartError::Config(error) => NodeError::Config(error),
            StartError::Restore(error) => NodeError::Restore(error),
        }
    }
}

impl NodeError {
    /// True when the command certainly did not and will not take effect. False for
    /// [`SessionError::AnswerNotKept`]: that command certainly did take effect, once.
    pub fn is_definite(&self) -> bool {
        match self {
            NodeError::Propose(error) => error.is_definite(),
            NodeError::Session(SessionError::SequenceStale { .. }) => true,
            NodeError::Session(SessionError::AnswerNotKept { .. }) => false,
            // A stopped node may have replicated the command before it stopped.
            NodeError::Stopped(_) => false,
            // The request never reached the protocol.
            NodeError::NotRunning(_) => true,
            _ => true,
        }
    }
}

type Responder = oneshot::Sender<Result<Bytes, NodeError>>;

/// One command of [`RaftNode::propose_many`], with its client session when it has one (see
/// [`RaftNode::propose_in_session`]). A plain command converts from [`Bytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The command.
    pub command: Bytes,
    /// Its session and sequence number, for a command that may be retried.
    pub session: Option<(SessionId, u64)>,
}

impl Proposal {
    /// A command in a client session.
    pub fn in_session(session: SessionId, sequence: u64, command: Bytes) -> Proposal {
        Proposal {
            command,
            session: Some((session, sequence)),
        }
    }
}

impl From<Bytes> for Proposal {
    fn from(command: Bytes) -> Proposal {
        Proposal {
            command,
            session: None,
        }
    }
}
type ReadResponder = oneshot::Sender<Result<LogIndex, NodeError>>;

/// A user's read of the state machine ([`RaftNode::read`]), run by the applier between
/// batches, on the state applied so far.
type MachineRead = Box<dyn FnOnce(&dyn StateMachine) + Send>;

impl ProposalRequest {
    /// Answers a request the driver never handed to the protocol.
    fn refuse(self, error: impl Fn() -> NodeError) {
        match self {
            ProposalRequest::Propose { responder, .. }
            | ProposalRequest::ChangeMembership { responder, .. } => {
                let _ = responder.send(Err(error()));
            }
            ProposalRequest::ProposeMany { proposals } => {
                for (_, responder) in proposals {
                    let _ = responder.send(Err(error()));
                }
            }
            ProposalRequest::Read { responder } => {
                let _ = responder.send(Err(error()));
            }
            ProposalRequest::Transfer { responder, .. } => {
                let _ = responder.send(Err(error()));
            }
            ProposalRequest::Snapshot { responder } => {
                let _ = responder.send(Err(error()));
            }
            ProposalRequest::WaitCaughtUp { responder, .. } => {
                let _ = responder.send(Err(error()));
            }
        }
    }
}

/// A client request on its way to the driver.
enum ProposalRequest {
    /// A command to replicate.
    Propose {
        command: Bytes,
        session: Option<SessionTag>,
        responder: Responder,
    },
    /// Commands to replicate, proposed together so that they join one ready (at most
    /// `step_batch_max` of them: [`RaftNode::propose_many`] splits larger batches).
    ProposeMany {
        proposals: Vec<(Proposal, Responder)>,
    },
    /// A linearizable read barrier.
    Read { responder: ReadResponder },
    /// A leadership transfer.
    Transfer {
        target: NodeId,
        responder: oneshot::Sender<Result<(), NodeError>>,
    },
    /// A membership change.
    ChangeMembership {
        change: MembershipChange,
        responder: Responder,
    },
    /// A wait, on the leader, for a learner to catch up.
    WaitCaughtUp {
        id: NodeId,
        responder: oneshot::Sender<Result<(), NodeError>>,
    },
    /// A snapshot by hand.
    Snapshot {
        responder: oneshot::Sender<Result<SnapshotMeta, NodeError>>,
    },
}

/// A handle to a running Raft node. Cheap to clone; every clone drives the same node.
/// The crate documentation shows a complete three-node cluster built with it.
#[derive(Clone)]
pub struct RaftNode {
    proposals: mpsc::Sender<ProposalRequest>,
    signals: signals::SignalReceivers,
    shutdown: Arc<tokio::sync::Notify>,
    driver: Arc<tokio::sync::Mutex<Option<JoinHandle<()>>>>,
    stopped: watch::Receiver<Option<StopReason>>,
    /// This node's ID, named in its stop reasons.
    id: NodeId,
    /// `Config::promotion_lag_entries_max`, for [`RaftNode::wait_caught_up`].
    promotion_lag_entries_max: u64,
    /// Reads for the applier, which owns the state machine.
    machine_reads: mpsc::Sender<MachineRead>,
    /// The concrete type of the state machine, checked by [`RaftNode::read`].
    machine_type: TypeId,
    /// Commands handed to the driver in one request at most (`step_batch_max`).
    batch_max: usize,
    /// The peer that refused this node as removed, if one did ([`Inbound::report_removed`]).
    removal_reports: watch::Receiver<Option<NodeId>>,
}

/// How a node knows it was removed from the cluster ([`RaftNode::removal`]). A removed node
/// keeps running (it answers status and stale reads of what it holds) but is no member: it
/// takes no writes and elects nothing; stop it when convenient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Its own committed membership records the removal.
    Committed,
    /// This peer refused it as removed: the peer's committed membership records the removal,
    /// which never reached this node (a removed node is no longer sent the entries after it).
    ReportedBy(NodeId),
}

impl RaftNode {
    /// Starts a node: restores the protocol from `store` and `state_machine`, starts the
    /// transport with this node's inbox, and spawns the runtime's tasks on the current tokio
    /// runtime.
    pub async fn start(
        config: Config,
        options: RuntimeOptions,
        store: Arc<dyn LogStore>,
        state_machine: Box<dyn StateMachine>,
        network: Arc<dyn Network>,
    ) -> Result<RaftNode, NodeError> {
        options.validate()?;
        config.validate().map_err(NodeError::Config)?;
        let mut state_machine = state_machine;
        // The machine's own type, not the box's.
        let machine_type = AsAny::as_any(&*state_machine).type_id();
        let limits = SessionLimits::from_config(&config);
        let chunk_bytes = config.snapshot_chunk_bytes_max;
        let (restore, sessions) =
            restore_from(&store, &mut *state_machine, chunk_bytes, limits).await?;
        let applied = restore.applied;
        let promotion_lag_entries_max = config.promotion_lag_entries_max;
        let batch_max = options.step_batch_max;
        let mut raw = RawNode::new(config.clone(), restore)?;
        // Every forward travels in a one-off session, numbered from a random value per life.
        raw.set_forward_sessions(
            options
                .forward_sessions_first
                .unwrap_or_else(SessionId::random),
        );
        let (inbound, inbox) = Inbound::channel(config.id, options.inbox_messages_max);
        let removal_reports = inbound.removal_reports();
        network.start(inbound).await.map_err(NodeError::Network)?;
        let (proposal_sender, proposal_receiver) = mpsc::channel(options.proposal_queue_max);
        let (machine_reads, machine_read_queue) = mpsc::channel(options.machine_read_queue_max);
        let (signals, signal_receivers) = signals::Signals::new(&raw, applied);
        let (stopped_sender, stopped) = watch::channel(None);
        let shutdown = Arc::new(tokio::sync::Notify::new());
        // Every line the node's tasks log carries its ID: several nodes may share a process.
        let span = tracing::info_span!("raft", node = %config.id);
        let driver = span.in_scope(|| {
            driver::Driver::new(driver::DriverParts {
                raw,
                options,
                store,
                state_machine,
                network,
                inbox,
                proposals: proposal_receiver,
                machine_reads: machine_read_queue,
                signals,
                stopped: stopped_sender,
                shutdown: shutdown.clone(),
                applied,
                sessions,
            })
        });
        let handle = tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
        Ok(RaftNode {
            proposals: proposal_sender,
            signals: signal_receivers,
            shutdown,
            driver: Arc::new(tokio::sync::Mutex::new(Some(handle))),
            stopped,
            id: config.id,
            promotion_lag_entries_max,
            machine_reads,
            machine_type,
            batch_max,
            removal_reports,
        })
    }

    /// Proposes a command and waits until it is committed and applied here, returning the
    /// state machine's answer. On a follower the command is forwarded to the leader; the
    /// answer is the same as if the leader had been asked.
    pub async fn propose(&self, command: Bytes) -> Result<Bytes, NodeError> {
        self.propose_tagged(command, None).await
    }

    /// Proposes a command in a client session (see [`crate::sessions`]): however often this
    /// `(session, sequence)` reaches the log (a retry after a timeout, here or on another
    /// node, or a copy the network duplicated), the state machine applies it once, and every
    /// caller gets the first answer. A sequence below the session's last fails with
    /// [`SessionError::SequenceStale`]; a retry whose first answer was not kept fails with
    /// [`SessionError::AnswerNotKept`] (it applied once). Start a session with
    /// [`SessionId::random`] and sequence 1; take the next sequence for the next command once
    /// the previous one is answered or given up.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use raft_core::{SessionId, runtime::{RaftNode, NodeError}};
    /// # async fn example(node: &RaftNode) -> Result<(), NodeError> {
    /// let session = SessionId::random();
    /// let first = node.propose_in_session(session, 1, Bytes::from("add 5")).await;
    /// // The answer was lost on the way (a timeout, say): retry with the same sequence.
    /// let retried = node.propose_in_session(session, 1, Bytes::from("add 5")).await?;
    /// assert_eq!(first.ok(), Some(retried)); // applied once either way
    /// node.propose_in_session(session, 2, Bytes::from("add 7")).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn propose_in_session(
        &self,
        session: SessionId,
        sequence: u64,
        command: Bytes,
    ) -> Result<Bytes, NodeError> {
        self.propose_tagged(command, Some(SessionTag { session, sequence }))
            .await
    }

    async fn propose_tagged(
        &self,
        command: Bytes,
        session: Option<SessionTag>,
    ) -> Result<Bytes, NodeError> {
        let (responder, answer) = oneshot::channel();
        let request = ProposalRequest::Propose {
            command,
            session,
            responder,
        };
        self.submit(request).await?;
        answer.await.unwrap_or_else(|_| Err(self.stopped_error()))
    }

    /// Proposes many commands at once and waits until each is committed and applied here (or
    /// failed), returning one result per command, in order, as [`RaftNode::propose`] (or
    /// [`RaftNode::propose_in_session`], for a [`Proposal`] with a session) would. The
    /// commands reach the driver in one request per `RuntimeOptions::step_batch_max` of them
    /// rather than one each, so they join one ready: one log write, and one append message per
    /// follower. On a follower each is forwarded to the leader, as `propose` does. Those that
    /// commit keep the order given, in the log and so in their answers.
    ///
    /// ```
    /// # use bytes::Bytes;
    /// # use raft_core::runtime::{NodeError, Proposal, RaftNode};
    /// # use raft_core::SessionId;
    /// # async fn example(node: &RaftNode) -> Result<(), NodeError> {
    /// let session = SessionId::random();
    /// let answers = node
    ///     .propose_many([
    ///         Proposal::from(Bytes::from("add 5")),
    ///         Proposal::in_session(session, 1, Bytes::from("add 7")),
    ///     ])
    ///     .await;
    /// for answer in answers {
    ///     println!("{:?}", answer?);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn propose_many(
        &self,
        proposals: impl IntoIterator<Item = Proposal>,
    ) -> Vec<Result<Bytes, NodeError>> {
        // Each command's answer: its receiver, or the error of a batch that never reached
        // the driver.
        let mut pending: Vec<Result<oneshot::Receiver<_>, NodeError>> = Vec::new();
        let mut proposals = proposals.into_iter().peekable();
        while proposals.peek().is_some() {
            let mut batch = Vec::new();
            let mut answers = Vec::new();
            for proposal in proposals.by_ref().take(self.batch_max) {
                let (responder, answer) = oneshot::channel();
                batch.push((proposal, responder));
                answers.push(answer);
            }
            let request = ProposalRequest::ProposeMany { proposals: batch };
            match self.submit(request).await {
                Ok(()) => pending.extend(answers.into_iter().map(Ok)),
                Err(_) => pending.extend(answers.iter().map(|_| Err(self.not_running_error()))),
            }
        }
        let mut results = Vec::with_capacity(pending.len());
        for answer in pending {
            results.push(match answer {
                Err(error) => Err(error),
                Ok(answer) => answer.await.unwrap_or_else(|_| Err(self.stopped_error())),
            });
        }
        results
    }

    /// Whether this node was removed from the cluster, and how it knows: from its own committed
    /// membership, or because a member refused it as removed (the transport's report, see
    /// [`Network::removals_committed`]). `None` while it is a member, as far as it knows.
    pub fn removal(&self) -> Option<Removal> {
        let committed = self
            .signals
            .membership
            .borrow()
            .membership
            .removed
            .contains(&self.id);
        if committed {
            return Some(Removal::Committed);
        }
        (*self.removal_reports.borrow()).map(Removal::ReportedBy)
    }

    /// A linearizable read barrier: returns once this node's state machine has applied every
    /// write that completed (anywhere in the cluster) before the call, so the caller may now
    /// read its state machine directly. No log entry is written: the leader confirms it still
    /// leads with one heartbeat round shared by all concurrent reads (ReadIndex), or answers
    /// from its lease when `Config::lease_reads` is on; a follower asks the leader for the
    /// index. Returns the read index.
    pub async fn read_index(&self) -> Result<LogIndex, NodeError> {
        let (responder, answer) = oneshot::channel();
        self.submit(ProposalRequest::Read { responder }).await?;
        answer.await.unwrap_or_else(|_| Err(self.stopped_error()))
    }

    /// Reads this node's state machine linearizably: passes a read barrier
    /// ([`RaftNode::read_index`]), then runs `read` on the machine, as the type `M` it was
    /// started with, once it has applied at least the read index. So `read` sees every write
    /// that completed anywhere in the cluster before this call, on any node, leader or not.
    ///
    /// `read` runs on the node's applier task, between two batches of committed entries; the
    /// driver goes on meanwhile, but applying waits, so copy out what you need and return. A
    /// panic in `read` unwinds in the caller of this method, not in the node. Fails with
    /// [`NodeError::WrongStateMachineType`] when the machine is not an `M` (at once, before the
    /// barrier), and as [`RaftNode::read_index`] does when the barrier fails.
    ///
    /// ```
    /// # use raft_core::runtime::{NodeError, RaftNode};
    /// # #[derive(Default)] struct Counter { total: u64 }
    /// # #[async_trait::async_trait]
    /// # impl raft_core::StateMachine for Counter {
    /// #     async fn apply(&mut self, _: raft_core::LogIndex, _: bytes::Bytes)
    /// #         -> Result<bytes::Bytes, raft_core::StateMachineError> {
    /// #         self.total += 1;
    /// #         Ok(bytes::Bytes::from(self.total.to_string()))
    /// #     }
    /// # }
    /// # async fn example(node: &RaftNode) -> Result<(), NodeError> {
    /// // The node was started with `Box::new(Counter::default())`.
    /// let total = node.read(|counter: &Counter| counter.total).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn read<M, R, F>(&self, read: F) -> Result<R, NodeError>
    where
        M: StateMachine,
        R: Send + 'static,
        F: FnOnce(&M) -> R + Send + 'static,
    {
        let requested = std::any::type_name::<M>();
        if self.machine_type != TypeId::of::<M>() {
            return Err(NodeError::WrongStateMachineType { requested });
        }
        self.read_index().await?;
        // The applier is at the read index or past it: `read_index` returned only then, and
        // the applied state never goes back.
        let (responder, answer) = oneshot::channel::<Result<std::thread::Result<R>, NodeError>>();
        let job: MachineRead = Box::new(move |machine: &dyn StateMachine| {
            let outcome = match AsAny::as_any(machine).downcast_ref::<M>() {
                Some(machine) => Ok(std::panic::catch_unwind(AssertUnwindSafe(|| read(machine)))),
                None => Err(NodeError::WrongStateMachineType { requested }),
            };
            let _ = responder.send(outcome);
        });
        self.machine_reads
            .send(job)
            .await
            .map_err(|_| self.stopped_error())?;
        match answer.await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(panic))) => std::panic::resume_unwind(panic),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(self.stopped_error()),
        }
    }

    /// Hands leadership to the voter `target` (this node must lead): the leader stops taking
    /// proposals, brings the target up to date and has it campaign at once. Returns once the
    /// target leads, or an error if it has not taken over within an election timeout (the
    /// leader then resumes).
    pub async fn transfer_leadership(&self, target: NodeId) -> Result<(), NodeError> {
        let (responder, answer) = oneshot::channel();
        let request = ProposalRequest::Transfer { target, responder };
        self.submit(request).await?;
        answer.await.unwrap_or_else(|_| Err(self.stopped_error()))
    }

    /// Changes the members (on the leader; a follower answers
    /// [`MembershipError::NotLeader`] naming the leader). Returns the new membership once the
    /// change is committed, after the joint configuration when voters change. A learner added
    /// here catches up from the log or a snapshot; promote it once it has caught up
    /// ([`RaftNode::wait_caught_up`]): a promotion of a learner that lags is refused with
    /// [`MembershipError::NotCaughtUp`].
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<Membership, NodeError> {
        let (responder, answer) = oneshot::channel();
        let request = ProposalRequest::ChangeMembership { change, responder };
        self.submit(request).await?;
        answer.await.unwrap_or_else(|_| Err(self.stopped_error()))?;
        // The first entry applied; with a joint configuration the leader (this one or the
        // next) appends the final one on its own.
        let mut membership = self.signals.membership.clone();
        let done = membership
            .wait_for(|committed| !committed.membership.is_joint())
            .await
            .map(|committed| committed.membership.clone());
        done.map_err(|_| self.stopped_error())
    }

    /// Waits, on the leader, until learner `id` has caught up enough to be promoted (it answered
    /// and holds the log within `Config::promotion_lag_entries_max` entries of the leader's
    /// last index), for at most `within`. Then a promotion is accepted unless it fell behind
    /// again meanwhile. Fails with [`MembershipError::NotCaughtUp`] (the latest figures) when
    /// `within` runs out, [`MembershipError::UnknownNode`] when `id` is not a learner, or
    /// [`MembershipError::NotLeader`] when this node does not lead.
    pub async fn wait_caught_up(&self, id: NodeId, within: Duration) -> Result<(), NodeError> {
        let (responder, answer) = oneshot::channel();
        self.submit(ProposalRequest::WaitCaughtUp { id, responder })
            .await?;
        match tokio::time::timeout(within, answer).await {
            Ok(answer) => answer.unwrap_or_else(|_| Err(self.stopped_error())),
            // Dropping the receiver withdraws the wait; the figures are the latest published.
            Err(_) => {
                let status = self.status();
                let match_index = status
                    .progress
                    .iter()
                    .find(|p| p.id == id)
                    .map_or(LogIndex(0), |p| p.match_index);
                Err(NodeError::Membership(MembershipError::NotCaughtUp {
                    id,
                    match_index,
                    last_index: status.last_index,
                    lag_entries_max: self.promotion_lag_entries_max,
                }))
            }
        }
    }

    /// Takes a snapshot now and compacts the log (keeping `Config::snapshot_tail_entries`);
    /// returns the snapshot's description. When nothing was applied since the last snapshot,
    /// returns that one.
    pub async fn snapshot(&self) -> Result<SnapshotMeta, NodeError> {
        let (responder, answer) = oneshot::channel();
        self.submit(ProposalRequest::Snapshot { responder }).await?;
        answer.await.unwrap_or_else(|_| Err(self.stopped_error()))
    }

    /// The node's current status, for display: role, term, leader, commit and applied indexes
    /// as of now; the rest (membership, log bounds, per-follower progress, snapshot) as of the
    /// last tick or the last change of leadership, committed membership or snapshot. To wait for
    /// an event, use the narrow signals instead: [`RaftNode::watch_leadership`],
    /// [`RaftNode::wait_applied`] and [`RaftNode::watch_applied`],
    /// [`RaftNode::watch_membership`], [`RaftNode::wait_caught_up`].
    pub fn status(&self) -> Status {
        self.signals.status()
    }

    /// A receiver of the display status, refreshed on every tick and when leadership, the
    /// committed membership or the snapshot changes (not on every commit: the status is built
    /// for display, and a rebuild copies the membership and every follower's progress).
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.signals.status.clone()
    }

    /// Who leads, as this node knows it now.
    pub fn leadership(&self) -> Leadership {
        *self.signals.leadership.borrow()
    }

    /// A receiver that wakes once per change of this node's term, role or known leader; it
    /// closes when the node stops (after publishing that a stopped node leads nothing).
    ///
    /// ```
    /// # use raft_core::runtime::RaftNode;
    /// # async fn example(node: &RaftNode) {
    /// let mut leadership = node.watch_leadership();
    /// // Wait until some leader is known; copy the value out (the borrow holds the channel).
    /// if let Ok(now) = leadership.wait_for(|l| l.leader.is_some()).await.map(|l| *l) {
    ///     println!("{:?} leads term {}", now.leader, now.term.0);
    /// }
    /// # }
    /// ```
    pub fn watch_leadership(&self) -> watch::Receiver<Leadership> {
        self.signals.leadership.clone()
    }

    /// A receiver of the highest index this node's state machine has applied, once per
    /// advance. [`RaftNode::wait_applied`] waits on it.
    pub fn watch_applied(&self) -> watch::Receiver<LogIndex> {
        self.signals.applied.clone()
    }

    /// A receiver of the newest committed membership, once per change (a membership in the
    /// log but not committed is not published: a new leader may still cut it).
    pub fn watch_membership(&self) -> watch::Receiver<CommittedMembership> {
        self.signals.membership.clone()
    }

    /// Why the node stopped, once it has. Match on its [`StopReason::cause`] to tell a
    /// shutdown from a failure, and which one:
    ///
    /// ```
    /// # use raft_core::runtime::{RaftNode, StopCause, StoreOperation};
    /// # fn example(node: &RaftNode) {
    /// if let Some(reason) = node.stopped_reason() {
    ///     match &reason.cause {
    ///         StopCause::Shutdown => {}
    ///         StopCause::LogStore { operation: StoreOperation::WriteLog, error } => {
    ///             eprintln!("node {}: the disk refused a write: {error}", reason.node);
    ///         }
    ///         other => eprintln!("node {} failed: {other}", reason.node),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn stopped_reason(&self) -> Option<StopReason> {
        self.stopped.borrow().clone()
    }

    /// Waits until the node stops (shut down, or failed) and returns why. Prefer this to
    /// waiting for a signal to close: this future wakes once.
    pub async fn stopped(&self) -> StopReason {
        let mut stopped = self.stopped.clone();
        let reason = match stopped.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The driver ended without saying why (it panicked): the sender was dropped.
            Err(_) => self.stopped_reason(),
        };
        reason.unwrap_or_else(|| self.reason(StopCause::TaskEnded(NodeTask::Driver)))
    }

    /// Waits until the node has applied at least `index` (or stopped).
    pub async fn wait_applied(&self, index: LogIndex) -> Result<(), NodeError> {
        let mut applied = self.signals.applied.clone();
        let result = applied
            .wait_for(|applied| *applied >= index)
            .await
            .map(|_| ());
        result.map_err(|_| self.stopped_error())
    }

    /// Stops the node: pending proposals fail with an indeterminate error, queued writes
    /// finish, the transport shuts down, and every task ends before this returns.
    pub async fn shutdown(&self) {
        self.shutdown.notify_one();
        let handle = self.driver.lock().await.take();
        if let Some(handle) = handle {
            if let Err(error) = handle.await {
                tracing::error!(%error, "raft driver task failed");
            }
        }
    }

    /// Hands a request to the driver; a node that is not running refuses it, definitely.
    async fn submit(&self, request: ProposalRequest) -> Result<(), NodeError> {
        if self.stopped.borrow().is_some() {
            return Err(self.not_running_error());
        }
        self.proposals
            .send(request)
            .await
            .map_err(|_| self.not_running_error())
    }

    fn not_running_error(&self) -> NodeError {
        NodeError::NotRunning(self.published_or_unreported())
    }

    fn stopped_error(&self) -> NodeError {
        NodeError::Stopped(self.published_or_unreported())
    }

    /// The published stop reason; before it is published, the driver ended without one (it
    /// panicked), or is still on its way to publish the failure of another task.
    fn published_or_unreported(&self) -> StopReason {
        if let Some(reason) = self.stopped_reason() {
            return reason;
        }
        let driver_gone = self.stopped.has_changed().is_err();
        self.reason(if driver_gone {
            StopCause::TaskEnded(NodeTask::Driver)
        } else {
            StopCause::Unreported
        })
    }

    fn reason(&self, cause: StopCause) -> StopReason {
        StopReason {
            node: self.id,
            cause,
        }
    }
}
/// Reads what the protocol needs to resume: the hard state, the snapshot, the log and the
/// state machine's applied index, checked against each other. A state machine behind the
/// snapshot installs it first; stale entries a crash left below an installed snapshot are
/// dropped. Also rebuilds the session table at the applied index: from the snapshot's header,
/// then the entries after it that the state machine already holds, replayed through the table
/// alone (their answers are not known: see [`crate::sessions`]).
async fn restore_from(
    store: &Arc<dyn LogStore>,
    state_machine: &mut dyn StateMachine,
    chunk_bytes: usize,
    limits: SessionLimits,
) -> Result<(Restore, SessionTable), NodeError> {
    let storage = NodeError::Storage;
    let hard_state = store.load_hard_state().await.map_err(storage)?;
    let snapshot = store.snapshot().await.map_err(storage)?;
    let mut bounds = store.bounds().await.map_err(storage)?;
    if let Some(snapshot) = &snapshot {
        let at = snapshot.last_index;
        if bounds.first > at.next() {
            return Err(NodeError::Restore(
                RestoreError::EntriesMissingAfterSnapshot {
                    first: bounds.first,
                    snapshot: at,
                },
            ));
        }
        let matches = if bounds.first <= at && at <= bounds.last {
            let entry = store.entries(at..at.next()).await.map_err(storage)?;
            entry.first().is_some_and(|e| e.term == snapshot.last_term)
        } else {
            bounds.first == at.next()
        };
        if !matches {
            // A crash during an install left entries the snapshot replaced.
            if hard_state.commit > at {
                return Err(NodeError::Restore(
                    RestoreError::SnapshotConflictBelowCommit {
                        index: at,
                        commit: hard_state.commit,
                    },
                ));
            }
            store.purge(at).await.map_err(storage)?;
            let purged = store.bounds().await.map_err(storage)?;
            if purged.last > at {
                store.truncate(at.next()).await.map_err(storage)?;
            }
            bounds = store.bounds().await.map_err(storage)?;
        }
    } else if bounds.first != LogIndex(1) {
        return Err(NodeError::Restore(RestoreError::NoSnapshotBeforeLog {
            first: bounds.first,
        }));
    }
    let entries = if bounds.is_empty() {
        Vec::new()
    } else {
        store
            .entries(bounds.first..bounds.last.next())
            .await
            .map_err(storage)?
    };
    let mut applied = state_machine
        .applied_index()
        .await
        .map_err(NodeError::StateMachine)?;
    let mut sessions = SessionTable::new(limits);
    if let Some(snapshot) = &snapshot {
        let mut reader = SnapshotReader::new(store.clone(), snapshot.clone(), chunk_bytes);
        sessions = applier::read_sessions(&mut reader, snapshot, limits)
            .await
            .map_err(NodeError::StateMachine)?;
        if applied < snapshot.last_index {
            SnapshotFormatError::check(snapshot, state_machine)
                .map_err(NodeError::SnapshotFormat)?;
            state_machine
                .install_snapshot(snapshot, &mut reader)
                .await
                .map_err(NodeError::StateMachine)?;
            applied = snapshot.last_index;
        }
    }
    if applied
        > bounds
            .last
            .max(snapshot.as_ref().map_or(LogIndex(0), |s| s.last_index))
    {
        return Err(NodeError::Restore(RestoreError::AppliedBeyondLog {
            applied,
            last: bounds.last,
        }));
    }
    let table_at = sessions.applied();
    let replayed = entries
        .iter()
        .filter(|e| e.index > table_at && e.index <= applied);
    applier::replay_sessions(&mut sessions, replayed);
    sessions.passed(applied);
    let restore = Restore {
        hard_state,
        snapshot,
        entries,
        applied,
    };
    Ok((restore, sessions))
}
