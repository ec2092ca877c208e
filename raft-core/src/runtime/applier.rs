//! The applier task: applies committed entries to the state machine in order and answers
//! each proposer with the machine's result; builds and installs snapshots between batches,
//! and runs the users' reads of the machine ([`RaftNode::read`](super::RaftNode::read)).
//! Commands in client sessions pass the session table first (see [`crate::sessions`]): only
//! a session's new commands reach the state machine, and the table travels at the head of
//! every snapshot.

use super::driver::Shared;
use super::stop::{SnapshotError, StopCause, StopReason, StoreOperation};
use super::{MachineRead, NodeError, Responder};
use crate::protocol::SnapshotRequest;
use crate::sessions::{self, SessionLimits, SessionTable};
use crate::snapshot::{SnapshotFormatError, SnapshotMeta, SnapshotReader, SnapshotWriter};
use crate::state_machine::{ApplyBatch, StateMachine, StateMachineError};
use crate::storage::LogStore;
use crate::types::{Entry, EntryPayload, LogIndex, NodeId};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Work for the applier, in log order.
pub(super) enum ApplyJob {
    /// Committed entries and the proposers waiting on some of them.
    Entries {
        entries: Vec<Entry>,
        responders: Vec<(LogIndex, Responder)>,
    },
    /// Replace the state with a durable received snapshot.
    Install(SnapshotMeta),
    /// Build a snapshot of everything applied so far.
    Build(SnapshotRequest),
}

/// Queued jobs merged into one `apply_batch` call at most.
const MERGED_APPLY_JOBS_MAX: usize = 64;

pub(super) struct Applier {
    /// This node, named in the stop reason the proposers of a failed batch are given.
    pub(super) node: NodeId,
    pub(super) state_machine: Box<dyn StateMachine>,
    pub(super) store: Arc<dyn LogStore>,
    pub(super) shared: Arc<Shared>,
    pub(super) chunk_bytes: usize,
    /// The last index applied (or installed).
    pub(super) applied: LogIndex,
    /// The session table. Invariant: at `applied` (`sessions.applied() == applied`).
    pub(super) sessions: SessionTable,
}

/// The session table a snapshot carries at its head (an empty one at the snapshot's index for
/// a snapshot built before sessions existed), leaving `reader` at the state machine's data.
pub(super) async fn read_sessions(
    reader: &mut SnapshotReader,
    meta: &SnapshotMeta,
    limits: SessionLimits,
) -> Result<SessionTable, StateMachineError> {
    let table = sessions::read_snapshot_header(reader, limits).await?;
    sessions::table_at_snapshot(table, meta.last_index, limits).map_err(StateMachineError)
}

/// Runs entries the state machine already holds through the session table alone, as
/// `Applier::apply` would: the same sequences and evictions, but no answers.
pub(super) fn replay_sessions<'a>(
    table: &mut SessionTable,
    entries: impl Iterator<Item = &'a Entry>,
) {
    for entry in entries {
        if let EntryPayload::SessionCommand(command) = &entry.payload {
            table.decide(entry.index, command.tag);
        }
        table.passed(entry.index);
    }
    table.forget_pending();
}

impl Applier {
    pub(super) async fn run(
        mut self,
        mut jobs: mpsc::Receiver<ApplyJob>,
        mut reads: mpsc::Receiver<MachineRead>,
    ) {
        let mut next = None;
        // Every handle of the node dropped: no read comes any more.
        let mut reads_open = true;
        // Whose turn it is to go first when both a job and a read wait.
        let mut read_goes_first = false;
        loop {
            read_goes_first = !read_goes_first;
            if read_goes_first && next.is_none() {
                if let Ok(read) = reads.try_recv() {
                    read(&*self.state_machine);
                    continue;
                }
            }
            let job = match next.take() {
                Some(job) => job,
                // Neither kind of work waits behind the other for long: every other turn a
                // queued read goes first (above), else a queued job does, and a read needs no
                // job and every job is bounded. `biased;` rather than tokio's random pick, so
                // that one seed of the runtime-level simulation replays the same run.
                None => tokio::select! {
                    biased;
                    job = jobs.recv() => match job {
                        Some(job) => job,
                        None => return,
                    },
                    read = reads.recv(), if reads_open => {
                        match read {
                            // A read passed its barrier before it was queued: whatever is
                            // applied now is at its read index or past it.
                            Some(read) => read(&*self.state_machine),
                            None => reads_open = false,
                        }
                        continue;
                    }
                },
            };
            let result = match job {
                ApplyJob::Entries {
                    entries,
                    responders,
                } => {
                    let mut entries = entries;
                    let mut responders: HashMap<LogIndex, Responder> =
                        responders.into_iter().collect();
                    // Merge the entry jobs queued behind this one; stop at any other kind.
                    for _ in 1..MERGED_APPLY_JOBS_MAX {
                        match jobs.try_recv() {
                            Ok(ApplyJob::Entries {
                                entries: more,
                                responders: waiting,
                            }) => {
                                entries.extend(more);
                                responders.extend(waiting);
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.apply(entries, responders).await
                }
                ApplyJob::Install(meta) => self.install(meta).await,
                ApplyJob::Build(request) => {
                    let result = self.build(request).await;
                    self.shared.snapshot_built(result);
                    Ok(())
                }
            };
            if let Err(cause) = result {
                self.shared.fail(cause);
                return;
            }
        }
    }

    async fn apply(
        &mut self,
        entries: Vec<Entry>,
        mut responders: HashMap<LogIndex, Responder>,
    ) -> Result<(), StopCause> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let last_index = last.index;
        assert_eq!(
            self.sessions.applied(),
            self.applied,
            "the table is at the applied index"
        );
        let started = tokio::time::Instant::now();
        let first_index = entries[0].index;
        let mut filtered = self.sessions.filter(entries);
        let batch = ApplyBatch {
            commands: filtered.take_commands(),
            last_index,
        };
        let node = self.node;
        let fail = |responders: &mut HashMap<LogIndex, Responder>, cause: StopCause| {
            for (_, responder) in responders.drain() {
                let reason = StopReason {
                    node,
                    cause: cause.clone(),
                };
                let _ = responder.send(Err(NodeError::Stopped(reason)));
            }
            Err(cause)
        };
        match self.state_machine.apply_batch(batch).await {
            Ok(answers) if answers.len() != filtered.commands_len() => {
                // A broken state machine is a fail-stop with a cause that names the fault,
                // not a panic that silently ends this task.
                let cause = StopCause::AnswerCount {
                    answered: answers.len(),
                    commands: filtered.commands_len(),
                };
                return fail(&mut responders, cause);
            }
            Ok(answers) => {
                for answered in filtered.answer(&mut self.sessions, answers) {
                    if let Some(responder) = responders.remove(&answered.index) {
                        let _ = responder.send(answered.answer.map_err(NodeError::Session));
                    }
                }
                // Proposals of entries without a command (membership changes) are done too.
                for (_, responder) in responders.drain() {
                    let _ = responder.send(Ok(Bytes::new()));
                }
            }
            Err(error) => {
                let cause = StopCause::Apply {
                    last_index,
                    error: Arc::new(error),
                };
                return fail(&mut responders, cause);
            }
        }
        let took = started.elapsed();
        let applied_entries = last_index.0 - self.applied.0;
        self.shared
            .metrics
            .applied(last_index, applied_entries, took);
        tracing::debug!(
            first = first_index.0,
            last = last_index.0,
            micros = took.as_micros() as u64,
            "applied"
        );
        self.applied = last_index;
        self.shared
            .applied_index
            .store(last_index.0, Ordering::Release);
        self.shared.notify.notify_one();
        Ok(())
    }

    async fn install(&mut self, meta: SnapshotMeta) -> Result<(), StopCause> {
        // Refused before a byte reaches the machine; the store keeps the snapshot, so a
        // release that reads its format installs it at the next start.
        SnapshotFormatError::check(&meta, &*self.state_machine)
            .map_err(StopCause::SnapshotFormat)?;
        let mut reader = SnapshotReader::new(self.store.clone(), meta.clone(), self.chunk_bytes);
        let limits = self.sessions.limits();
        let failed = |error| StopCause::SnapshotInstall {
            index: meta.last_index,
            error: Arc::new(error),
        };
        let sessions = read_sessions(&mut reader, &meta, limits)
            .await
            .map_err(failed)?;
        self.state_machine
            .install_snapshot(&meta, &mut reader)
            .await
            .map_err(failed)?;
        tracing::info!(index = %meta.last_index, bytes = meta.data_bytes, "installed a snapshot");
        self.applied = meta.last_index;
        self.sessions = sessions;
        self.shared
            .applied_index
            .fetch_max(meta.last_index.0, Ordering::AcqRel);
        self.shared.notify.notify_one();
        Ok(())
    }

    async fn build(&mut self, request: SnapshotRequest) -> Result<SnapshotMeta, SnapshotError> {
        if self.applied != request.last_index {
            return Err(SnapshotError::NotAtIndex {
                requested: request.last_index,
                applied: self.applied,
            });
        }
        let store_failed = |operation| {
            move |error| SnapshotError::Store {
                operation,
                error: Arc::new(error),
            }
        };
        let data_failed = |error| SnapshotError::Data(Arc::new(error));
        let sink = self
            .store
            .begin_snapshot()
            .await
            .map_err(store_failed(StoreOperation::BeginSnapshot))?;
        let mut out = SnapshotWriter::new(sink, self.chunk_bytes);
        assert_eq!(self.sessions.applied(), self.applied);
        sessions::write_snapshot_header(&mut out, &self.sessions)
            .await
            .map_err(data_failed)?;
        self.state_machine
            .build_snapshot(&mut out)
            .await
            .map_err(data_failed)?;
        let (sink, data_bytes, checksum) = out
            .into_sink()
            .await
            .map_err(data_failed)?
            .expect("a writer into a sink");
        let meta = SnapshotMeta {
            last_index: request.last_index,
            last_term: request.last_term,
            membership: request.membership,
            data_bytes,
            checksum,
            // Asked right after the build, with nothing applied between: the format written.
            format_version: self.state_machine.snapshot_format_version(),
        };
        sink.finish(&meta)
            .await
            .map_err(store_failed(StoreOperation::FinishSnapshot))?;
        tracing::info!(index = %meta.last_index, bytes = data_bytes, "built a snapshot");
        Ok(meta)
    }
}
