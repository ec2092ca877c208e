//! The applier task: applies committed entries to the state machine in order and answers
//! each proposer with the machine's result.

use super::driver::Shared;
use super::{NodeError, Responder};
use crate::state_machine::{ApplyBatch, StateMachine};
use crate::types::{Entry, EntryPayload, LogIndex};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Committed entries and the proposers waiting on some of them.
pub(super) struct ApplyJob {
    pub(super) entries: Vec<Entry>,
    pub(super) responders: Vec<(LogIndex, Responder)>,
}

/// Queued jobs merged into one `apply_batch` call at most.
const MERGED_APPLY_JOBS_MAX: usize = 64;

pub(super) async fn run(
    mut state_machine: Box<dyn StateMachine>,
    mut jobs: mpsc::Receiver<ApplyJob>,
    shared: Arc<Shared>,
) {
    while let Some(first) = jobs.recv().await {
        let mut entries = first.entries;
        let mut responders: HashMap<LogIndex, Responder> = first.responders.into_iter().collect();
        for _ in 1..MERGED_APPLY_JOBS_MAX {
            let Ok(job) = jobs.try_recv() else { break };
            entries.extend(job.entries);
            responders.extend(job.responders);
        }
        let Some(last) = entries.last() else { continue };
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
        match state_machine.apply_batch(batch).await {
            Ok(answers) if answers.len() != indexes.len() => {
                // A broken state machine is a fail-stop with a message that names the fault,
                // not a panic that silently ends this task.
                let why = format!(
                    "the state machine answered {} of {} commands in a batch; it must answer every command",
                    answers.len(),
                    indexes.len()
                );
                for (_, responder) in responders.drain() {
                    let _ = responder.send(Err(NodeError::Stopped(why.clone())));
                }
                shared.fail(why);
                return;
            }
            Ok(answers) => {
                for (index, answer) in indexes.into_iter().zip(answers) {
                    if let Some(responder) = responders.remove(&index) {
                        let _ = responder.send(Ok(answer));
                    }
                }
            }
            Err(error) => {
                let why = error.to_string();
                for (_, responder) in responders.drain() {
                    let _ = responder.send(Err(NodeError::Stopped(why.clone())));
                }
                shared.fail(why);
                return;
            }
        }
        shared.applied_index.store(last_index.0, Ordering::Release);
        shared.notify.notify_one();
    }
}
