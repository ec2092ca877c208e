//! The driver task: owns the protocol and feeds it time, messages and proposals.

use super::applier::{Applier, ApplyJob};
use super::signals::Signals;
use super::stop::{NodeTask, SnapshotError, StopCause, StopReason};
use super::telemetry::{NodeMetrics, PeerMeters, Seen};
use super::writer;
use super::{MachineRead, NodeError, ProposalRequest, ReadResponder, Responder, RuntimeOptions};
use crate::membership::MembershipError;
use crate::message::{Message, MessageBody};
use crate::network::Network;
use crate::protocol::plan::{ReadyPlan, WriteJob};
use crate::protocol::{RawNode, Ready, Role, TransferError};
use crate::snapshot::SnapshotMeta;
use crate::state_machine::StateMachine;
use crate::storage::LogStore;
use crate::types::NodeId;
use crate::types::{LogIndex, ProposalId, SessionTag};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::MissedTickBehavior;
use tracing::Instrument;

/// Progress the writer and applier report to the driver, without a queue: the latest value
/// wins, and `notify` wakes the driver.
pub(super) struct Shared {
    /// Highest ready number whose write is durable.
    pub(super) persisted_number: AtomicU64,
    /// Highest log index applied to the state machine.
    pub(super) applied_index: AtomicU64,
    /// Set when the writer or applier failed; the node stops (fail-stop).
    pub(super) failure: Mutex<Option<StopCause>>,
    /// Snapshots the applier built (or failed to), in order.
    pub(super) snapshots_built: Mutex<Vec<Result<SnapshotMeta, SnapshotError>>>,
    pub(super) notify: Notify,
    /// The node's metric handles ([`super::telemetry`]).
    pub(super) metrics: NodeMetrics,
}

impl Shared {
    fn new(metrics: NodeMetrics) -> Shared {
        Shared {
            persisted_number: AtomicU64::new(0),
            applied_index: AtomicU64::new(0),
            failure: Mutex::new(None),
            snapshots_built: Mutex::new(Vec::new()),
            notify: Notify::new(),
            metrics,
        }
    }

    pub(super) fn fail(&self, cause: StopCause) {
        tracing::error!(%cause, "raft node failing stop");
        let mut failure = self.failure.lock().expect("failure lock poisoned");
        failure.get_or_insert(cause);
        drop(failure);
        self.notify.notify_one();
    }

    pub(super) fn snapshot_built(&self, result: Result<SnapshotMeta, SnapshotError>) {
        self.snapshots_built
            .lock()
            .expect("snapshot lock poisoned")
            .push(result);
        self.notify.notify_one();
    }

    fn failure(&self) -> Option<StopCause> {
        self.failure.lock().expect("failure lock poisoned").clone()
    }
}

pub(super) struct DriverParts {
    pub(super) raw: RawNode,
    pub(super) options: RuntimeOptions,
    pub(super) store: Arc<dyn LogStore>,
    pub(super) state_machine: Box<dyn StateMachine>,
    pub(super) network: Arc<dyn Network>,
    pub(super) inbox: mpsc::Receiver<Message>,
    pub(super) proposals: mpsc::Receiver<ProposalRequest>,
    /// Users' reads of the state machine, for the applier.
    pub(super) machine_reads: mpsc::Receiver<MachineRead>,
    pub(super) signals: Signals,
    pub(super) stopped: watch::Sender<Option<StopReason>>,
    pub(super) shutdown: Arc<Notify>,
    pub(super) applied: LogIndex,
    /// The session table at `applied`.
    pub(super) sessions: crate::sessions::SessionTable,
}

pub(super) struct Driver {
    raw: RawNode,
    options: RuntimeOptions,
    network: Arc<dyn Network>,
    inbox: mpsc::Receiver<Message>,
    proposals: mpsc::Receiver<ProposalRequest>,
    signals: Signals,
    stopped: watch::Sender<Option<StopReason>>,
    shutdown: Arc<Notify>,
    shared: Arc<Shared>,
    /// Proposers waiting for an outcome, by the ID given to the protocol.
    responders: HashMap<ProposalId, Responder>,
    /// Readers waiting for their read index.
    read_responders: HashMap<ProposalId, ReadResponder>,
    /// Readers whose read index is known, waiting for the state machine to reach it.
    /// Each with the ticks it waited: past `proposal_wait_ticks` it fails (a node that
    /// stopped applying, say removed without knowing it, must not keep a reader for ever).
    reads_awaiting_apply: BTreeMap<LogIndex, Vec<(ReadResponder, u32)>>,
    next_proposal: u64,
    /// A leadership transfer awaiting its outcome: (target, caller, ticks waited).
    transfer: Option<(NodeId, TransferResponder, u32)>,
    /// Callers waiting for a learner to catch up ([`super::RaftNode::wait_caught_up`]).
    catch_up_waiters: Vec<(NodeId, CatchUpResponder)>,
    /// Callers waiting for a snapshot taken by hand.
    snapshot_waiters: Vec<SnapshotResponder>,
    /// Snapshot chunks on their way to be read from the store and sent.
    snapshot_chunks: mpsc::Sender<Message>,
    writes: mpsc::Sender<WriteJob>,
    applies: mpsc::Sender<ApplyJob>,
    writer: tokio::task::JoinHandle<()>,
    applier: tokio::task::JoinHandle<()>,
    last_persisted_number: u64,
    last_applied: LogIndex,
    /// The index of the membership the network was last told of (`Network::members_changed`).
    members_told: Option<LogIndex>,
    /// How many committed removals the network was told of (`Network::removals_committed`).
    removals_told: usize,
    /// What the metrics last saw of the protocol.
    seen: Seen,
    /// The driver's own per-peer metric handles.
    meters: PeerMeters,
}

type TransferResponder = oneshot::Sender<Result<(), NodeError>>;
type SnapshotResponder = oneshot::Sender<Result<SnapshotMeta, NodeError>>;
type CatchUpResponder = oneshot::Sender<Result<(), NodeError>>;

/// Callers waiting for learners to catch up, at most; past it a wait fails at once with
/// `ProposeError::TooManyPending`.
const CATCH_UP_WAITERS_MAX: usize = 64;

/// How the driver's loop ended.
enum Exit {
    Shutdown,
    Failed(StopCause),
}

impl Driver {
    pub(super) fn new(parts: DriverParts) -> Driver {
        let shared = Arc::new(Shared::new(NodeMetrics::new(parts.raw.id())));
        let seen = shared.metrics.start(&parts.raw, parts.applied);
        let meters = shared.metrics.peer_meters();
        shared
            .applied_index
            .store(parts.applied.0, Ordering::Release);
        let (writes, write_queue) = mpsc::channel(parts.options.write_queue_readies_max);
        let (applies, apply_queue) = mpsc::channel(parts.options.apply_queue_batches_max);
        let (snapshot_chunks, chunk_queue) = mpsc::channel(parts.options.snapshot_send_queue_max);
        // Spawned within the node's span (see `RaftNode::start`), which every task keeps.
        tokio::spawn(
            send_snapshot_chunks(
                parts.store.clone(),
                parts.network.clone(),
                shared.clone(),
                chunk_queue,
            )
            .in_current_span(),
        );
        let writer = tokio::spawn(
            writer::run(
                parts.store.clone(),
                parts.network.clone(),
                write_queue,
                shared.clone(),
                parts.options.leader_write_delay_max,
            )
            .in_current_span(),
        );
        let applier = Applier {
            node: parts.raw.id(),
            state_machine: parts.state_machine,
            store: parts.store,
            shared: shared.clone(),
            chunk_bytes: parts.raw.config().snapshot_chunk_bytes_max,
            applied: parts.applied,
            sessions: parts.sessions,
        };
        let applier = tokio::spawn(
            applier
                .run(apply_queue, parts.machine_reads)
                .in_current_span(),
        );
        Driver {
            raw: parts.raw,
            options: parts.options,
            network: parts.network,
            inbox: parts.inbox,
            proposals: parts.proposals,
            signals: parts.signals,
            stopped: parts.stopped,
            shutdown: parts.shutdown,
            shared,
            responders: HashMap::new(),
            read_responders: HashMap::new(),
            reads_awaiting_apply: BTreeMap::new(),
            next_proposal: 1,
            transfer: None,
            catch_up_waiters: Vec::new(),
            snapshot_waiters: Vec::new(),
            snapshot_chunks,
            writes,
            applies,
            writer,
            applier,
            last_persisted_number: 0,
            last_applied: parts.applied,
            members_told: None,
            removals_told: 0,
            seen,
            meters,
        }
    }

    pub(super) async fn run(mut self) {
        let exit = self.event_loop().await;
        self.stop(exit).await;
    }

    async fn event_loop(&mut self) -> Exit {
        let mut ticker = tokio::time::interval(self.options.tick_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Both wake-ups are registered once, not on every turn of the loop: the driver turns
        // the loop for every batch, and re-registering showed in profiles.
        let shutdown = self.shutdown.clone();
        let shutdown_signal = shutdown.notified();
        tokio::pin!(shutdown_signal);
        let shared = self.shared.clone();
        let progress_signal = shared.notify.notified();
        tokio::pin!(progress_signal);
        loop {
            let mut ticked = false;
            let mut stepped = false;
            tokio::select! {
                biased;
                _ = &mut shutdown_signal => return Exit::Shutdown,
                _ = &mut progress_signal => progress_signal.set(shared.notify.notified()),
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.expire_reads();
                    self.meters.observe_lag(&self.raw);
                    ticked = true;
                }
                message = self.inbox.recv() => match message {
                    Some(message) => {
                        self.raw.step(message);
                        stepped = true;
                    }
                    None => return Exit::Shutdown,
                },
                proposal = self.proposals.recv() => match proposal {
                    Some(proposal) => {
                        self.propose(proposal);
                        stepped = true;
                    }
                    None => return Exit::Shutdown,
                },
            }
            if stepped {
                // The task that queued this item woke the driver, and tokio runs a task woken
                // that way next, ahead of every other ready task. Yielding once lets the other
                // ready tasks (the HTTP requests and connections of this node) queue their
                // proposals and messages first, so they join this ready: one forward, append
                // and write for all of them instead of one per request.
                tokio::task::yield_now().await;
                self.step_queued();
            }
            if let Some(cause) = self.shared.failure() {
                return Exit::Failed(cause);
            }
            self.absorb_progress();
            while self.raw.has_ready() {
                let mut ready = self.raw.ready();
                // Published before any answer for these entries can reach a caller, so a
                // caller that got an answer sees a commit index that covers it.
                self.publish_status(false);
                let transfer_failed = ready.transfer_failed.take();
                if transfer_failed.is_some() {
                    self.settle_transfer(false, transfer_failed);
                }
                if let Err(cause) = self.handle_ready(ready).await {
                    return Exit::Failed(cause);
                }
            }
            self.settle_transfer(ticked, None);
            self.publish_status(ticked);
            self.settle_catch_up();
        }
    }

    /// Steps the messages and proposals queued now, up to `step_batch_max` of each, so they
    /// join one ready.
    fn step_queued(&mut self) {
        for _ in 0..self.options.step_batch_max {
            match self.inbox.try_recv() {
                Ok(message) => self.raw.step(message),
                Err(_) => break,
            }
        }
        // Counted in commands: a batch of `propose_many` counts each of its commands.
        let mut stepped = 0;
        while stepped < self.options.step_batch_max {
            match self.proposals.try_recv() {
                Ok(request) => stepped += self.propose(request),
                Err(_) => break,
            }
        }
    }

    /// Hands a request to the protocol; returns how many commands it held (1 for every
    /// request but a batch).
    fn propose(&mut self, request: ProposalRequest) -> usize {
        let commands = match &request {
            ProposalRequest::ProposeMany { proposals } => proposals.len(),
            _ => 1,
        };
        self.handle_request(request);
        commands
    }

    fn next_proposal_id(&mut self) -> ProposalId {
        let id = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        id
    }

    fn propose_command(
        &mut self,
        command: Bytes,
        session: Option<SessionTag>,
        responder: Responder,
    ) {
        let id = self.next_proposal_id();
        self.shared.metrics.proposals.increment(1);
        tracing::debug!(proposal = id.0, "proposed");
        self.responders.insert(id, responder);
        match session {
            None => self.raw.propose(id, command),
            Some(tag) => self.raw.propose_in_session(id, tag, command),
        }
    }

    fn handle_request(&mut self, request: ProposalRequest) {
        match request {
            ProposalRequest::Propose {
                command,
                session,
                responder,
            } => self.propose_command(command, session, responder),
            ProposalRequest::ProposeMany { proposals } => {
                for (proposal, responder) in proposals {
                    let session = proposal
                        .session
                        .map(|(session, sequence)| SessionTag { session, sequence });
                    self.propose_command(proposal.command, session, responder);
                }
            }
            ProposalRequest::Read { responder } => {
                let id = self.next_proposal_id();
                self.shared.metrics.read_barriers.increment(1);
                self.read_responders.insert(id, responder);
                self.raw.read_index(id);
            }
            ProposalRequest::ChangeMembership { change, responder } => {
                let id = self.next_proposal_id();
                match self.raw.change_membership(id, &change) {
                    Ok(()) => {
                        self.responders.insert(id, responder);
                    }
                    Err(error) => {
                        let _ = responder.send(Err(NodeError::Membership(error)));
                    }
                }
            }
            ProposalRequest::WaitCaughtUp { id, responder } => {
                self.catch_up_waiters
                    .retain(|(_, waiter)| !waiter.is_closed());
                if self.catch_up_waiters.len() >= CATCH_UP_WAITERS_MAX {
                    let error = crate::protocol::ProposeError::TooManyPending;
                    let _ = responder.send(Err(NodeError::Propose(error)));
                    return;
                }
                self.catch_up_waiters.push((id, responder));
                self.settle_catch_up();
            }
            ProposalRequest::Snapshot { responder } => {
                if self.raw.request_snapshot() || self.raw.snapshot_building() {
                    self.snapshot_waiters.push(responder);
                } else {
                    let answer = match self.raw.snapshot() {
                        Some(meta) => Ok(meta.clone()),
                        None => Err(NodeError::Snapshot(SnapshotError::NothingApplied)),
                    };
                    let _ = responder.send(answer);
                }
            }
            ProposalRequest::Transfer { target, responder } => {
                if self.transfer.is_some() {
                    let error = TransferError::InProgress(target);
                    let _ = responder.send(Err(NodeError::Transfer(error)));
                    return;
                }
                match self.raw.transfer_leadership(target) {
                    Err(error) => {
                        let _ = responder.send(Err(NodeError::Transfer(error)));
                    }
                    Ok(()) if target == self.raw.id() => {
                        let _ = responder.send(Ok(()));
                    }
                    Ok(()) => self.transfer = Some((target, responder, 0)),
                }
            }
        }
    }

    /// Settles a pending transfer once this node stepped down and a leader is known, or
    /// after two maximum election timeouts without one.
    fn settle_transfer(&mut self, ticked: bool, failed: Option<TransferError>) {
        let Some((target, responder, mut waited)) = self.transfer.take() else {
            return;
        };
        if let Some(error) = failed {
            let _ = responder.send(Err(NodeError::Transfer(error)));
            return;
        }
        if ticked {
            waited += 1;
        }
        let outcome = match (self.raw.role(), self.raw.leader()) {
            (Role::Leader, _) if self.raw.transferring_to().is_some() => None,
            (_, Some(leader)) if leader == target => Some(Ok(())),
            (_, Some(leader)) => Some(Err(TransferError::OtherLeader { target, leader })),
            _ if waited > 2 * self.raw.config().election_timeout_ticks_max => {
                Some(Err(TransferError::TimedOut(target)))
            }
            _ => None,
        };
        match outcome {
            Some(result) => {
                let _ = responder.send(result.map_err(NodeError::Transfer));
            }
            None => self.transfer = Some((target, responder, waited)),
        }
    }

    /// Answers the reads whose index the state machine has reached.
    fn release_reads(&mut self) {
        while let Some(entry) = self.reads_awaiting_apply.first_entry() {
            if *entry.key() > self.last_applied {
                break;
            }
            let index = *entry.key();
            for (responder, _) in entry.remove() {
                let _ = responder.send(Ok(index));
            }
        }
    }

    /// A tick passed: reads that waited too long for the state machine fail.
    fn expire_reads(&mut self) {
        let wait = self.raw.config().proposal_wait_ticks;
        self.reads_awaiting_apply.retain(|_, waiting| {
            let mut kept = Vec::with_capacity(waiting.len());
            for (responder, ticks) in waiting.drain(..) {
                if ticks + 1 > wait {
                    let error = crate::protocol::ProposeError::ReadAborted;
                    let _ = responder.send(Err(NodeError::Propose(error)));
                } else {
                    kept.push((responder, ticks + 1));
                }
            }
            *waiting = kept;
            !waiting.is_empty()
        });
    }

    /// Tells the protocol what the writer and applier finished since the last look.
    fn absorb_progress(&mut self) {
        let persisted = self.shared.persisted_number.load(Ordering::Acquire);
        if persisted > self.last_persisted_number {
            self.last_persisted_number = persisted;
            self.raw.persisted(persisted);
        }
        let applied = LogIndex(self.shared.applied_index.load(Ordering::Acquire));
        if applied > self.last_applied {
            self.last_applied = applied;
            self.raw.applied(applied);
            self.release_reads();
        }
        let built = std::mem::take(
            &mut *self
                .shared
                .snapshots_built
                .lock()
                .expect("snapshot lock poisoned"),
        );
        for result in built {
            let reported = match &result {
                Ok(meta) => Ok(meta.clone()),
                Err(error) => Err(error as &dyn std::error::Error),
            };
            self.raw.snapshot_built(reported);
            // Callers told of the snapshot see it (and the compacted log) in the status.
            self.signals.publish(&self.raw, self.last_applied, true);
            for waiter in self.snapshot_waiters.drain(..) {
                let _ = waiter.send(result.clone().map_err(NodeError::Snapshot));
            }
        }
    }

    /// Tells the network of the membership in force when it changed since it was last told
    /// (and once at start), before any message to a new member leaves.
    fn tell_network_of_members(&mut self) {
        let index = self.raw.membership_index();
        if self.members_told != Some(index) {
            self.members_told = Some(index);
            self.network.members_changed(self.raw.membership());
        }
        // Removals are final, so the committed set only grows and its size tells news.
        let (_, committed) = self.raw.committed_membership();
        if committed.removed.len() != self.removals_told {
            self.removals_told = committed.removed.len();
            self.network.removals_committed(&committed.removed);
        }
    }

    /// Carries out one ready in the documented order ([`ReadyPlan`]): independent messages
    /// now; the write (and the messages behind it) to the writer; committed entries to the
    /// applier.
    async fn handle_ready(&mut self, ready: Ready) -> Result<(), StopCause> {
        self.tell_network_of_members();
        if let (Some(first), Some(last)) = (ready.write.entries.first(), ready.write.entries.last())
        {
            tracing::debug!(first = first.index.0, last = last.index.0, "appended");
        }
        let plan = ReadyPlan::new(ready);
        for message in plan.send_now {
            send(&*self.network, &mut self.meters, message);
        }
        for chunk in plan.snapshot_chunks {
            // A full queue drops the chunk: the leader resends from the last acknowledged byte.
            if self.snapshot_chunks.try_send(chunk).is_err() {
                tracing::debug!("snapshot chunk queue full; chunk dropped");
            }
        }
        for (id, error) in plan.failed_proposals {
            if let Some(responder) = self.responders.remove(&id) {
                let _ = responder.send(Err(NodeError::Propose(error)));
            }
        }
        for (id, error) in plan.failed_reads {
            if let Some(responder) = self.read_responders.remove(&id) {
                let _ = responder.send(Err(NodeError::Propose(error)));
            }
        }
        // Reads waiting for the state machine count against `pending_reads_max` on their own
        // (the protocol bounds the reads it tracks with the same number), so a machine that
        // stops applying holds at most that many; the rest fail at once, definitely.
        let reads_awaiting_max = self.raw.config().pending_reads_max;
        let mut reads_awaiting: usize = self.reads_awaiting_apply.values().map(Vec::len).sum();
        for (id, index) in plan.reads {
            if let Some(responder) = self.read_responders.remove(&id) {
                if index <= self.last_applied {
                    let _ = responder.send(Ok(index));
                } else if reads_awaiting >= reads_awaiting_max {
                    let error = crate::protocol::ProposeError::TooManyPending;
                    let _ = responder.send(Err(NodeError::Propose(error)));
                } else {
                    reads_awaiting += 1;
                    self.reads_awaiting_apply
                        .entry(index)
                        .or_default()
                        .push((responder, 0));
                }
            }
        }
        assert!(
            reads_awaiting <= reads_awaiting_max,
            "reads awaiting apply over pending_reads_max"
        );
        self.release_reads();
        if let Some(mut job) = plan.write {
            // Holding writes back is off when the wait is zero.
            job.may_wait &= !self.options.leader_write_delay_max.is_zero();
            self.writes
                .send(job)
                .await
                .map_err(|_| StopCause::TaskEnded(NodeTask::Writer))?;
        }
        if let Some(meta) = plan.install_snapshot {
            self.applies
                .send(ApplyJob::Install(meta))
                .await
                .map_err(|_| StopCause::TaskEnded(NodeTask::Applier))?;
        }
        if !plan.apply.is_empty() {
            let mut responders = Vec::new();
            let mut entries = Vec::with_capacity(plan.apply.len());
            for committed in plan.apply {
                if let Some(id) = committed.proposal {
                    tracing::debug!(
                        proposal = id.0,
                        index = committed.entry.index.0,
                        "committed"
                    );
                    if let Some(responder) = self.responders.remove(&id) {
                        responders.push((committed.entry.index, responder));
                    }
                }
                entries.push(committed.entry);
            }
            let job = ApplyJob::Entries {
                entries,
                responders,
            };
            self.applies
                .send(job)
                .await
                .map_err(|_| StopCause::TaskEnded(NodeTask::Applier))?;
        }
        if let Some(request) = plan.build_snapshot {
            self.applies
                .send(ApplyJob::Build(request))
                .await
                .map_err(|_| StopCause::TaskEnded(NodeTask::Applier))?;
        }
        Ok(())
    }

    /// Publishes the narrow signals that changed, and the display status on a tick.
    fn publish_status(&mut self, ticked: bool) {
        self.signals.publish(&self.raw, self.last_applied, ticked);
        self.shared.metrics.observe(&self.raw, &mut self.seen);
    }

    /// Answers the callers waiting for a learner to catch up once the protocol would accept
    /// its promotion, or can no longer (this node stopped leading; the learner is gone).
    /// Callers that gave up are dropped.
    fn settle_catch_up(&mut self) {
        if self.catch_up_waiters.is_empty() {
            return;
        }
        for (id, responder) in std::mem::take(&mut self.catch_up_waiters) {
            if responder.is_closed() {
                continue;
            }
            match self.raw.learner_caught_up(id) {
                Err(MembershipError::NotCaughtUp { .. }) => {
                    self.catch_up_waiters.push((id, responder));
                }
                verdict => {
                    let _ = responder.send(verdict.map_err(NodeError::Membership));
                }
            }
        }
    }

    async fn stop(mut self, exit: Exit) {
        let reason = StopReason {
            node: self.raw.id(),
            cause: match &exit {
                Exit::Shutdown => StopCause::Shutdown,
                Exit::Failed(cause) => cause.clone(),
            },
        };
        self.stopped.send_replace(Some(reason.clone()));
        // Requests still queued never reached the protocol: they certainly did nothing.
        self.proposals.close();
        while let Ok(request) = self.proposals.try_recv() {
            request.refuse(|| NodeError::NotRunning(reason.clone()));
        }
        // A stopped node leads nothing and knows no leader.
        self.signals.stopped();
        // Every proposal still tracked fails; queued writes and applies finish first.
        self.raw.abandon_proposals();
        let ready = self.raw.ready();
        for (id, error) in ready.failed_proposals {
            if let Some(responder) = self.responders.remove(&id) {
                let _ = responder.send(Err(NodeError::Propose(error)));
            }
        }
        for (_, responder) in self.responders.drain() {
            let _ = responder.send(Err(NodeError::Stopped(reason.clone())));
        }
        let readers = self.read_responders.drain().map(|(_, r)| r).chain(
            std::mem::take(&mut self.reads_awaiting_apply)
                .into_values()
                .flatten()
                .map(|(responder, _)| responder),
        );
        for responder in readers {
            let _ = responder.send(Err(NodeError::Stopped(reason.clone())));
        }
        if let Some((_, responder, _)) = self.transfer.take() {
            let _ = responder.send(Err(NodeError::Stopped(reason.clone())));
        }
        for (_, waiter) in self.catch_up_waiters.drain(..) {
            let _ = waiter.send(Err(NodeError::Stopped(reason.clone())));
        }
        for waiter in self.snapshot_waiters.drain(..) {
            let _ = waiter.send(Err(NodeError::Stopped(reason.clone())));
        }
        let Driver {
            writes,
            applies,
            snapshot_chunks,
            writer,
            applier,
            network,
            ..
        } = self;
        drop(writes);
        drop(applies);
        drop(snapshot_chunks);
        let _ = writer.await;
        let _ = applier.await;
        network.shutdown().await;
        if let Exit::Failed(cause) = exit {
            tracing::error!(%cause, "raft node stopped after a failure");
        }
    }
}

pub(super) fn send(network: &dyn Network, meters: &mut PeerMeters, message: Message) {
    meters.sent(&message);
    let (from, to) = (message.from, message.to);
    match network.send(message) {
        Ok(()) => {}
        // A member the transport cannot reach: a join whose address nobody recorded. Raft
        // would retry for ever in silence, so say it, at most every few seconds per peer.
        Err(error @ crate::network::SendError::UnknownPeer { .. }) => {
            if unknown_peer_warning_due(from, to) {
                tracing::warn!(node = %from, peer = %to, %error,
                    "message dropped: no address for this member (record it in the membership \
                     with MembershipChange::node_meta, or add it to the transport)");
            }
        }
        // Raft retries on its own; a dropped message only costs time.
        Err(error) => tracing::debug!(node = %from, %to, %error, "message dropped"),
    }
}

/// The least time between two warnings about the same unknown peer.
const UNKNOWN_PEER_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Peers (by sending node, several may share a process) warned about, at most this many.
const UNKNOWN_PEER_WARNINGS_MAX: usize = 1024;

/// True when no warning about `to` from `from` was given within the interval (and records one).
fn unknown_peer_warning_due(from: NodeId, to: NodeId) -> bool {
    use std::sync::OnceLock;
    static WARNED: OnceLock<Mutex<HashMap<(NodeId, NodeId), tokio::time::Instant>>> =
        OnceLock::new();
    let now = tokio::time::Instant::now();
    let mut warned = WARNED
        .get_or_init(Default::default)
        .lock()
        .expect("warning table lock");
    if warned.len() >= UNKNOWN_PEER_WARNINGS_MAX {
        warned.retain(|_, at| now.duration_since(*at) < UNKNOWN_PEER_WARNING_INTERVAL);
    }
    let due = warned
        .get(&(from, to))
        .is_none_or(|at| now.duration_since(*at) >= UNKNOWN_PEER_WARNING_INTERVAL);
    if due && warned.len() < UNKNOWN_PEER_WARNINGS_MAX {
        warned.insert((from, to), now);
    }
    due
}

/// Reads each snapshot chunk's bytes from the store and sends it, in order. A chunk whose
/// snapshot the store no longer holds is dropped; the leader moves on to the newer snapshot.
async fn send_snapshot_chunks(
    store: Arc<dyn LogStore>,
    network: Arc<dyn Network>,
    shared: Arc<Shared>,
    mut chunks: mpsc::Receiver<Message>,
) {
    let mut meters = shared.metrics.peer_meters();
    while let Some(mut message) = chunks.recv().await {
        if let MessageBody::SnapshotChunk {
            meta,
            offset,
            data,
            len,
        } = &mut message.body
        {
            match store.read_snapshot(meta, *offset, *len as usize).await {
                Ok(bytes) if bytes.len() as u64 == *len => *data = bytes,
                Ok(bytes) => {
                    tracing::warn!(
                        got = bytes.len(),
                        wanted = *len,
                        "short snapshot read; chunk dropped"
                    );
                    continue;
                }
                Err(error) => {
                    tracing::debug!(%error, "snapshot chunk not sent");
                    continue;
                }
            }
        }
        send(&*network, &mut meters, message);
    }
}
