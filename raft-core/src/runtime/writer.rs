//! The writer task: makes the protocol's writes durable in order, one store call for
//! everything queued (group commit), then releases the messages that waited for them. It also
//! writes received snapshot chunks into a store sink and purges the compacted log.

use super::driver::{send, Shared};
use crate::message::Message;
use crate::network::Network;
use crate::protocol::SnapshotWrite;
use crate::snapshot::{SnapshotMeta, SnapshotSink};
use crate::storage::{LogStore, LogWrite};
use crate::types::LogIndex;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One ready's write and the messages that may leave only once it is durable.
pub(super) struct WriteJob {
    pub(super) number: u64,
    /// A leader's write of entries not yet sent to every follower it pipelines to: it may
    /// wait, up to `leader_write_delay_max`, for a job that is not (see [`super::RuntimeOptions`]).
    pub(super) deferrable: bool,
    /// Received snapshot data, written before everything else.
    pub(super) snapshot_writes: Vec<SnapshotWrite>,
    /// Purge the log up to here, after the snapshot writes and before `write`.
    pub(super) purge_to: Option<LogIndex>,
    pub(super) write: LogWrite,
    pub(super) messages: Vec<Message>,
}

/// Writes merged into one store call at most; bounds the memory of one merged group.
const MERGED_WRITES_MAX: usize = 1024;

/// The snapshot being received: its sink and how much was written into it.
struct Receiving {
    meta: SnapshotMeta,
    sink: Box<dyn SnapshotSink>,
    written: u64,
}

pub(super) async fn run(
    store: Arc<dyn LogStore>,
    network: Arc<dyn Network>,
    mut jobs: mpsc::Receiver<WriteJob>,
    shared: Arc<Shared>,
    leader_write_delay_max: Duration,
) {
    let mut receiving: Option<Receiving> = None;
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        for _ in 1..MERGED_WRITES_MAX {
            let Ok(job) = jobs.try_recv() else { break };
            batch.push(job);
        }
        if batch.iter().all(|job| job.deferrable) {
            let deadline = Instant::now() + leader_write_delay_max;
            while batch.len() < MERGED_WRITES_MAX && batch.iter().all(|job| job.deferrable) {
                match tokio::time::timeout_at(deadline, jobs.recv()).await {
                    Ok(Some(job)) => batch.push(job),
                    // Waited long enough, or the driver stopped: write what there is.
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let number = batch.last().expect("one job at least").number;
        let mut merged = LogWrite::default();
        let mut messages = Vec::new();
        let mut result = Ok(());
        for job in batch {
            if !job.snapshot_writes.is_empty() || job.purge_to.is_some() {
                // Snapshot data and purges go in order with the log writes around them.
                result = write_merged(&*store, &mut merged).await;
                if result.is_ok() {
                    result = write_snapshot(&*store, &mut receiving, job.snapshot_writes).await;
                }
                if let (Ok(()), Some(up_to)) = (&result, job.purge_to) {
                    result = store
                        .purge(up_to)
                        .await
                        .map_err(|e| format!("log store purge failed: {e}"));
                }
                if result.is_err() {
                    break;
                }
            }
            merge(&mut merged, job.write);
            messages.extend(job.messages);
        }
        if result.is_ok() {
            result = write_merged(&*store, &mut merged).await;
        }
        if let Err(why) = result {
            shared.fail(why);
            return;
        }
        for message in messages {
            send(&*network, message);
        }
        shared.persisted_number.store(number, Ordering::Release);
        shared.notify.notify_one();
    }
}

async fn write_merged(store: &dyn LogStore, merged: &mut LogWrite) -> Result<(), String> {
    let write = std::mem::take(merged);
    if write.is_empty() {
        return Ok(());
    }
    store
        .write(&write)
        .await
        .map_err(|e| format!("log store write failed: {e}"))
}

/// Writes received chunks into the open sink (a chunk at offset 0 opens a new one) and
/// finishes it with the last chunk.
async fn write_snapshot(
    store: &dyn LogStore,
    receiving: &mut Option<Receiving>,
    writes: Vec<SnapshotWrite>,
) -> Result<(), String> {
    for write in writes {
        if write.offset == 0 {
            let sink = store
                .begin_snapshot()
                .await
                .map_err(|e| format!("starting to receive a snapshot: {e}"))?;
            *receiving = Some(Receiving {
                meta: write.meta.clone(),
                sink,
                written: 0,
            });
        }
        let Some(open) = receiving.as_mut() else {
            return Err(format!(
                "snapshot data at offset {} without a snapshot being received",
                write.offset
            ));
        };
        if !open.meta.same_snapshot(&write.meta) || open.written != write.offset {
            return Err(format!(
                "snapshot data for {} at offset {} does not continue the snapshot being received ({} at {})",
                write.meta.last_index, write.offset, open.meta.last_index, open.written
            ));
        }
        open.sink
            .write(&write.data)
            .await
            .map_err(|e| format!("writing a received snapshot: {e}"))?;
        open.written += write.data.len() as u64;
        if write.last {
            let done = receiving.take().expect("open above");
            done.sink
                .finish(&write.meta)
                .await
                .map_err(|e| format!("storing a received snapshot: {e}"))?;
        }
    }
    Ok(())
}

/// Folds `later` into `earlier` so that applying the result equals applying both in order.
pub(super) fn merge(earlier: &mut LogWrite, later: LogWrite) {
    if let Some(from) = later.truncate_from {
        earlier.entries.retain(|entry| entry.index < from);
        earlier.truncate_from = Some(earlier.truncate_from.map_or(from, |t| t.min(from)));
    }
    if let Some(first) = later.entries.first() {
        earlier.entries.retain(|entry| entry.index < first.index);
        if let Some(last_kept) = earlier.entries.last() {
            assert_eq!(
                last_kept.index.next(),
                first.index,
                "merged writes must stay contiguous"
            );
        }
    }
    earlier.entries.extend(later.entries);
    if later.hard_state.is_some() {
        earlier.hard_state = later.hard_state;
    }
}

#[cfg(test)]
mod tests {
    use super::merge;
    use crate::storage::LogWrite;
    use crate::types::{Entry, EntryPayload, HardState, LogIndex, Term};

    fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
        (from..=to)
            .map(|i| Entry {
                index: LogIndex(i),
                term: Term(term),
                payload: EntryPayload::Blank,
            })
            .collect()
    }

    #[test]
    fn merging_appends_concatenates_and_keeps_the_latest_hard_state() {
        let mut first = LogWrite {
            truncate_from: None,
            entries: entries(1, 3, 1),
            hard_state: Some(HardState::default()),
        };
        let hard_state = HardState {
            term: Term(2),
            vote: None,
            commit: LogIndex(2),
        };
        merge(
            &mut first,
            LogWrite {
                truncate_from: None,
                entries: entries(4, 5, 1),
                hard_state: Some(hard_state),
            },
        );
        assert_eq!(first.entries, entries(1, 5, 1));
        assert_eq!(first.hard_state, Some(hard_state));
    }

    #[test]
    fn a_later_truncation_cuts_earlier_unwritten_entries() {
        let mut first = LogWrite {
            truncate_from: None,
            entries: entries(4, 8, 1),
            hard_state: None,
        };
        merge(
            &mut first,
            LogWrite {
                truncate_from: Some(LogIndex(6)),
                entries: entries(6, 7, 2),
                hard_state: None,
            },
        );
        let mut expected = entries(4, 5, 1);
        expected.extend(entries(6, 7, 2));
        assert_eq!(first.entries, expected);
        assert_eq!(first.truncate_from, Some(LogIndex(6)));
    }

    #[test]
    fn a_later_truncation_below_earlier_entries_drops_them_all() {
        let mut first = LogWrite {
            truncate_from: Some(LogIndex(5)),
            entries: entries(5, 9, 2),
            hard_state: None,
        };
        merge(
            &mut first,
            LogWrite {
                truncate_from: Some(LogIndex(3)),
                entries: entries(3, 3, 3),
                hard_state: None,
            },
        );
        assert_eq!(first.truncate_from, Some(LogIndex(3)));
        assert_eq!(first.entries, entries(3, 3, 3));
    }
}
