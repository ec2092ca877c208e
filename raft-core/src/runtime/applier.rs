//! The applier task: applies committed entries to the state machine in order and answers
//! each proposer with the machine's result; builds and installs snapshots between batches.

use super::driver::Shared;
use super::{NodeError, Responder};
use crate::protocol::SnapshotRequest;
use crate::snapshot::{SnapshotMeta, SnapshotReader, SnapshotWriter};
use crate::state_machine::{ApplyBatch, StateMachine};
use crate::storage::LogStore;
use crate::types::{Entry, EntryPayload, LogIndex};
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
    pub(super) state_machine: Box<dyn StateMachine>,
    pub(super) store: Arc<dyn LogStore>,
    pub(super) shared: Arc<Shared>,
    pub(super) chunk_bytes: usize,
    /// The last index applied (or installed).
    pub(super) applied: LogIndex,
}

impl Applier {
    pub(super) async fn run(mut self, mut jobs: mpsc::Receiver<ApplyJob>) {
        let mut next = None;
        loop {
            let job = match next.take() {
                Some(job) => job,
                None => match jobs.recv().await {
                    Some(job) => job,
                    None => return,
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
            if let Err(why) = result {
                self.shared.fail(why);
                return;
            }
        }
    }

    async fn apply(
        &mut self,
        entries: Vec<Entry>,
        mut responders: HashMap<LogIndex, Responder>,
    ) -> Result<(), String> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let last_index = last.index;
        let commands: Vec<_> = entries
            .into_iter()
            .filter_map(|entry| match entry.payload {
                EntryPayload::Command(data) => Some((entry.index, data)),
                EntryPayload::Blank | EntryPayload::Membership(_) => None,
            })
            .collect();
        let indexes: Vec<LogIndex> = commands.iter().map(|(index, _)| *index).collect();
        let batch = ApplyBatch {
            commands,
            last_index,
        };
        let fail = |responders: &mut HashMap<LogIndex, Responder>, why: String| {
            for (_, responder) in responders.drain() {
                let _ = responder.send(Err(NodeError::Stopped(why.clone())));
            }
            Err(why)
        };
        match self.state_machine.apply_batch(batch).await {
            Ok(answers) if answers.len() != indexes.len() => {
                // A broken state machine is a fail-stop with a message that names the fault,
                // not a panic that silently ends this task.
                let why = format!(
                    "the state machine answered {} of {} commands in a batch; it must answer every command",
                    answers.len(),
                    indexes.len()
                );
                return fail(&mut responders, why);
            }
            Ok(answers) => {
                for (index, answer) in indexes.into_iter().zip(answers) {
                    if let Some(responder) = responders.remove(&index) {
                        let _ = responder.send(Ok(answer));
                    }
                }
                // Proposals of entries without a command (membership changes) are done too.
                for (_, responder) in responders.drain() {
                    let _ = responder.send(Ok(Bytes::new()));
                }
            }
            Err(error) => return fail(&mut responders, error.to_string()),
        }
        self.applied = last_index;
        self.shared
            .applied_index
            .store(last_index.0, Ordering::Release);
        self.shared.notify.notify_one();
        Ok(())
    }

    async fn install(&mut self, meta: SnapshotMeta) -> Result<(), String> {
        let mut reader = SnapshotReader::new(self.store.clone(), meta.clone(), self.chunk_bytes);
        self.state_machine
            .install_snapshot(&meta, &mut reader)
            .await
            .map_err(|e| format!("installing the snapshot at {}: {e}", meta.last_index))?;
        tracing::info!(index = %meta.last_index, bytes = meta.data_bytes, "installed a snapshot");
        self.applied = meta.last_index;
        self.shared
            .applied_index
            .fetch_max(meta.last_index.0, Ordering::AcqRel);
        self.shared.notify.notify_one();
        Ok(())
    }

    async fn build(&mut self, request: SnapshotRequest) -> Result<SnapshotMeta, String> {
        if self.applied != request.last_index {
            return Err(format!(
                "asked for a snapshot at {} but the state machine is at {}",
                request.last_index, self.applied
            ));
        }
        let sink = self
            .store
            .begin_snapshot()
            .await
            .map_err(|e| format!("starting a snapshot: {e}"))?;
        let mut out = SnapshotWriter::new(sink, self.chunk_bytes);
        self.state_machine
            .build_snapshot(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        let (sink, data_bytes, checksum) = out
            .into_sink()
            .await
            .map_err(|e| e.to_string())?
            .expect("a writer into a sink");
        let meta = SnapshotMeta {
            last_index: request.last_index,
            last_term: request.last_term,
            membership: request.membership,
            data_bytes,
            checksum,
        };
        sink.finish(&meta)
            .await
            .map_err(|e| format!("storing the snapshot: {e}"))?;
        tracing::info!(index = %meta.last_index, bytes = data_bytes, "built a snapshot");
        Ok(meta)
    }
}
