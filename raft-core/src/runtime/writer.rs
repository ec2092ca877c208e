//! The writer task: makes the protocol's writes durable in order, one store call for
//! everything queued (group commit), then releases the messages that waited for them.

use super::driver::{send, Shared};
use crate::message::Message;
use crate::network::Network;
use crate::storage::{LogStore, LogWrite};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

/// One ready's write and the messages that may leave only once it is durable.
pub(super) struct WriteJob {
    pub(super) number: u64,
    pub(super) write: LogWrite,
    pub(super) messages: Vec<Message>,
}

/// Writes merged into one store call at most; bounds the memory of one merged group.
const MERGED_WRITES_MAX: usize = 1024;

pub(super) async fn run(
    store: Arc<dyn LogStore>,
    network: Arc<dyn Network>,
    mut jobs: mpsc::Receiver<WriteJob>,
    shared: Arc<Shared>,
) {
    while let Some(first) = jobs.recv().await {
        let mut number = first.number;
        let mut merged = first.write;
        let mut messages = first.messages;
        for _ in 1..MERGED_WRITES_MAX {
            let Ok(job) = jobs.try_recv() else { break };
            number = job.number;
            merge(&mut merged, job.write);
            messages.extend(job.messages);
        }
        if !merged.is_empty() {
            if let Err(error) = store.write(&merged).await {
                shared.fail(format!("log store write failed: {error}"));
                return;
            }
        }
        for message in messages {
            send(&*network, message);
        }
        shared.persisted_number.store(number, Ordering::Release);
        shared.notify.notify_one();
    }
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
