//! The IO contract's decisions, as pure functions both IO layers share: raft-core's tokio
//! runtime (`raft_core::runtime`) and its simulator (`raft_core::testkit::sim`) carry out a
//! [`Ready`] with the same pieces, so what the simulator proves of the order of sends, writes
//! and applies holds for the code that runs in production. Only the IO itself differs (a
//! store call or a simulated disk, a socket or a simulated link).
//!
//! The pieces, in the order a ready goes through them:
//! 1. [`ReadyPlan::new`] splits a ready into what leaves at once, the job for the writer (the
//!    write and the messages that wait for it), and what goes to the state machine;
//! 2. the writer queues [`WriteJob`]s, and takes them as one group when the first may not
//!    wait ([`group_may_wait`]; [`group_len`] says how many);
//! 3. [`WriteGroup::merge`] folds the group into the fewest store operations that keep their
//!    order ([`WriteStep`]), and names the messages to release and the ready number to report
//!    once every step is durable;
//! 4. [`SnapshotCursor`] checks that received snapshot data continues the snapshot being
//!    written, and says when a sink opens and when it is finished.
//!
//! Nothing here does IO or keeps time: a caller that holds a write back
//! ([`Ready::write_may_wait`]) bounds the wait with its own clock.
//!
//! # Driving a node by hand
//!
//! For a runtime of your own, the [crate example](crate#three-nodes-driven-by-hand) drives
//! three nodes through these pieces, in the order of the [IO contract](crate#the-io-contract).

use super::snapshots::{SnapshotRequest, SnapshotWrite};
use super::{CommittedEntry, ProposeError, Ready, TransferError};
use crate::message::Message;
use crate::snapshot::SnapshotMeta;
use crate::storage::LogWrite;
use crate::types::{LogIndex, ProposalId};

/// Jobs merged into one group at most: bounds the memory of one merged write.
pub const MERGED_WRITES_MAX: usize = 1024;

/// One ready, sorted by where each part goes. Carry it out in field order: `send_now` and
/// `snapshot_chunks` at once, `write` to the writer (in order with earlier jobs), then
/// `install_snapshot`, `apply` and `build_snapshot` to the state machine in that order; the
/// answers (`failed_proposals`, `reads`, `failed_reads`, `transfer_failed`) to their callers.
#[derive(Debug, Default)]
pub struct ReadyPlan {
    /// Messages that promise nothing not yet durable: send them now.
    pub send_now: Vec<Message>,
    /// Snapshot chunks to fill from the store and send (see [`Ready::snapshot_chunks`]).
    pub snapshot_chunks: Vec<Message>,
    /// The job for the writer, when the ready has anything for it.
    pub write: Option<WriteJob>,
    /// A durable received snapshot to install in the state machine, before `apply`.
    pub install_snapshot: Option<SnapshotMeta>,
    /// Committed entries to apply, in order.
    pub apply: Vec<CommittedEntry>,
    /// A snapshot to build once everything before it is applied.
    pub build_snapshot: Option<SnapshotRequest>,
    /// Proposals that failed.
    pub failed_proposals: Vec<(ProposalId, ProposeError)>,
    /// Reads whose read index is known: serve each once the state machine reached it.
    pub reads: Vec<(ProposalId, LogIndex)>,
    /// Reads that failed.
    pub failed_reads: Vec<(ProposalId, ProposeError)>,
    /// A leadership transfer that was abandoned.
    pub transfer_failed: Option<TransferError>,
}

impl ReadyPlan {
    /// Sorts a ready. The writer gets a job when the ready writes anything (log, snapshot
    /// data, a purge) or holds messages back for a write: those must wait for every earlier
    /// job too, since a ready's write is durable only with all before it.
    pub fn new(ready: Ready) -> ReadyPlan {
        let needs_writer = !ready.write.is_empty()
            || !ready.messages_after_write.is_empty()
            || !ready.snapshot_writes.is_empty()
            || ready.purge_to.is_some();
        let write = needs_writer.then(|| WriteJob {
            number: ready.number,
            may_wait: ready.write_may_wait,
            snapshot_writes: ready.snapshot_writes,
            purge_to: ready.purge_to,
            write: ready.write,
            messages_after_write: ready.messages_after_write,
        });
        ReadyPlan {
            send_now: ready.messages,
            snapshot_chunks: ready.snapshot_chunks,
            write,
            install_snapshot: ready.install_snapshot,
            apply: ready.committed,
            build_snapshot: ready.build_snapshot,
            failed_proposals: ready.failed_proposals,
            reads: ready.reads,
            failed_reads: ready.failed_reads,
            transfer_failed: ready.transfer_failed,
        }
    }
}

/// One ready's work for the writer: its write and the messages that may leave only once it
/// (and every earlier job) is durable.
#[derive(Debug, Default)]
pub struct WriteJob {
    /// The ready's number, to report with [`RawNode::persisted`](super::RawNode::persisted).
    pub number: u64,
    /// The write may wait for a later one ([`Ready::write_may_wait`]).
    pub may_wait: bool,
    /// Received snapshot data, written first.
    pub snapshot_writes: Vec<SnapshotWrite>,
    /// Purge the log up to here, after the snapshot data and before `write`.
    pub purge_to: Option<LogIndex>,
    /// The log write.
    pub write: LogWrite,
    /// Messages released once the write is durable.
    pub messages_after_write: Vec<Message>,
}

/// True when a queued group may wait for more jobs before it is written: every job in it may
/// wait (one that may not takes the others with it), and the group is not full.
pub fn group_may_wait(jobs: &[WriteJob]) -> bool {
    !jobs.is_empty() && jobs.len() < MERGED_WRITES_MAX && jobs.iter().all(|job| job.may_wait)
}

/// How many of the queued jobs, front first, make the next group: at most
/// [`MERGED_WRITES_MAX`], and a job that takes away what an earlier job's messages promise
/// always starts a group, so that those messages leave while the promise is still true:
/// - one that opens a new snapshot sink: the acknowledgements queued before it (of the
///   earlier snapshot's bytes, even one that only repeats them) count bytes opening the new
///   sink drops;
/// - one that truncates the log: the acknowledgements queued before it may name entries the
///   truncation removes (an append of the old leader's, then a new leader's conflicting one);
///   released after the merged write, they would promise entries the disk no longer holds,
///   and the old leader could commit with them (seed 14969 of 20000).
///
/// At least one when any job is queued.
pub fn group_len<'a>(jobs: impl IntoIterator<Item = &'a WriteJob>) -> usize {
    let mut count = 0;
    for job in jobs.into_iter().take(MERGED_WRITES_MAX) {
        let opens = job.snapshot_writes.iter().any(|write| write.offset == 0);
        let truncates = job.write.truncate_from.is_some();
        if (opens || truncates) && count > 0 {
            break;
        }
        count += 1;
    }
    count
}

/// One store operation of a merged group.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteStep {
    /// A log write (one sync).
    Log(LogWrite),
    /// Received snapshot data ([`SnapshotCursor`] places it).
    Snapshot(SnapshotWrite),
    /// Purge the log up to and including this index.
    Purge(LogIndex),
}

/// Queued jobs folded into the fewest store operations that keep their order, with what to do
/// once all of them are durable.
///
/// Invariant: no two [`WriteStep::Log`] are adjacent (consecutive log writes are merged into
/// one), and a log write never moves across snapshot data or a purge.
#[derive(Debug, Default)]
pub struct WriteGroup {
    /// The store operations, in order.
    pub steps: Vec<WriteStep>,
    /// Messages to send once every step is durable, in the order their readies held them.
    pub release: Vec<Message>,
    /// The highest ready number in the group: report it once every step is durable.
    pub persisted: u64,
}

impl WriteGroup {
    /// Merges jobs, in the order they were queued.
    ///
    /// # Panics
    /// If `jobs` is empty, or their numbers do not increase.
    pub fn merge(jobs: impl IntoIterator<Item = WriteJob>) -> WriteGroup {
        let mut group = WriteGroup::default();
        let mut log = LogWrite::default();
        for job in jobs {
            assert!(
                job.number > group.persisted,
                "write jobs out of order: #{} after #{}",
                job.number,
                group.persisted
            );
            group.persisted = job.number;
            if !job.snapshot_writes.is_empty() || job.purge_to.is_some() {
                // Snapshot data and purges go in order with the log writes around them.
                if !log.is_empty() {
                    group.steps.push(WriteStep::Log(std::mem::take(&mut log)));
                }
                group
                    .steps
                    .extend(job.snapshot_writes.into_iter().map(WriteStep::Snapshot));
                group.steps.extend(job.purge_to.map(WriteStep::Purge));
            }
            merge(&mut log, job.write);
            group.release.extend(job.messages_after_write);
        }
        assert!(group.persisted > 0, "a write group needs a job");
        if !log.is_empty() {
            group.steps.push(WriteStep::Log(log));
        }
        group
    }

    /// True when the group writes nothing (it only releases messages and reports).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Folds `later` into `earlier` so that applying the result equals applying both in order.
///
/// # Panics
/// If the result would not be contiguous: `later`'s first entry must follow the last entry
/// of `earlier` that `later`'s truncation keeps (as [`LogWrite::entries`] must follow the
/// last kept entry of the log).
pub fn merge(earlier: &mut LogWrite, later: LogWrite) {
    if let Some(from) = later.truncate_from {
        earlier.entries.retain(|entry| entry.index < from);
        earlier.truncate_from = Some(earlier.truncate_from.map_or(from, |t| t.min(from)));
    }
    if let Some(first) = later.entries.first() {
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

/// Where a piece of received snapshot data goes ([`SnapshotCursor::place`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlace {
    /// Open a new sink first (dropping any unfinished one).
    pub opens: bool,
    /// Finish the sink with the data's snapshot after writing it.
    pub finishes: bool,
}

/// Received snapshot data that does not continue the snapshot being written: the protocol
/// handed out data out of order, a bug; the node must stop.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotDataError {
    /// Data past offset 0 while no snapshot is being received.
    #[error("snapshot data at offset {offset} without a snapshot being received")]
    NoSnapshotOpen {
        /// Where the data would go.
        offset: u64,
    },
    /// Data of another snapshot, or not at the end of what was written.
    #[error(
        "snapshot data for {index} at offset {offset} does not continue the snapshot being \
         received ({open_index} at {written})"
    )]
    Discontinuous {
        /// The data's snapshot.
        index: LogIndex,
        /// Where the data would go.
        offset: u64,
        /// The snapshot being received.
        open_index: LogIndex,
        /// How much of it was written.
        written: u64,
    },
}

/// How far the snapshot being received was written: the writer's check that each piece of
/// data continues it.
///
/// Invariant: `open` is the snapshot whose sink is open and `written` its byte count; a
/// finished snapshot closes it.
#[derive(Clone, Debug, Default)]
pub struct SnapshotCursor {
    open: Option<(SnapshotMeta, u64)>,
}

impl SnapshotCursor {
    /// Places one piece of data, and advances past it. On an error nothing changes.
    pub fn place(&mut self, write: &SnapshotWrite) -> Result<ChunkPlace, SnapshotDataError> {
        let opens = write.offset == 0;
        if !opens {
            let Some((meta, written)) = &self.open else {
                return Err(SnapshotDataError::NoSnapshotOpen {
                    offset: write.offset,
                });
            };
            if !meta.same_snapshot(&write.meta) || *written != write.offset {
                return Err(SnapshotDataError::Discontinuous {
                    index: write.meta.last_index,
                    offset: write.offset,
                    open_index: meta.last_index,
                    written: *written,
                });
            }
        }
        let end = write.offset + write.data.len() as u64;
        self.open = (!write.last).then(|| (write.meta.clone(), end));
        Ok(ChunkPlace {
            opens,
            finishes: write.last,
        })
    }

    /// Forgets the snapshot being received (its sink was lost: a crash or a failed write).
    pub fn reset(&mut self) {
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Entry, EntryPayload, HardState, Term};

    fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
        (from..=to)
            .map(|i| Entry {
                index: LogIndex(i),
                term: Term(term),
                payload: EntryPayload::Blank,
            })
            .collect()
    }

    fn job(number: u64, write: LogWrite) -> WriteJob {
        WriteJob {
            number,
            write,
            ..WriteJob::default()
        }
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
    fn a_later_truncation_without_entries_cuts_earlier_ones() {
        let mut first = LogWrite {
            truncate_from: None,
            entries: entries(4, 8, 1),
            hard_state: None,
        };
        merge(
            &mut first,
            LogWrite {
                truncate_from: Some(LogIndex(6)),
                entries: Vec::new(),
                hard_state: None,
            },
        );
        assert_eq!(first.entries, entries(4, 5, 1));
        assert_eq!(first.truncate_from, Some(LogIndex(6)));
    }

    #[test]
    #[should_panic(expected = "merged writes must stay contiguous")]
    fn a_later_write_that_overlaps_without_truncating_is_refused() {
        let mut first = LogWrite {
            truncate_from: None,
            entries: entries(4, 8, 1),
            hard_state: None,
        };
        merge(
            &mut first,
            LogWrite {
                truncate_from: None,
                entries: entries(6, 7, 2),
                hard_state: None,
            },
        );
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

    #[test]
    fn a_group_keeps_log_writes_on_their_side_of_a_purge() {
        let append = |from, to| LogWrite {
            entries: entries(from, to, 1),
            ..LogWrite::default()
        };
        let purge = WriteJob {
            number: 2,
            purge_to: Some(LogIndex(2)),
            write: append(4, 4),
            ..WriteJob::default()
        };
        let group = WriteGroup::merge([job(1, append(1, 3)), purge, job(3, append(5, 6))]);
        assert_eq!(
            group.steps,
            vec![
                WriteStep::Log(append(1, 3)),
                WriteStep::Purge(LogIndex(2)),
                WriteStep::Log(append(4, 6)),
            ]
        );
        assert_eq!(group.persisted, 3);
    }

    #[test]
    fn a_group_waits_only_while_every_job_may() {
        let waiting = |number| WriteJob {
            number,
            may_wait: true,
            ..WriteJob::default()
        };
        assert!(!group_may_wait(&[]));
        assert!(group_may_wait(&[waiting(1), waiting(2)]));
        assert!(!group_may_wait(&[waiting(1), job(2, LogWrite::default())]));
    }

    #[test]
    fn a_new_snapshot_starts_the_next_group() {
        let meta = |index| SnapshotMeta {
            last_index: LogIndex(index),
            last_term: Term(1),
            membership: crate::membership::Membership::new([crate::types::NodeId(1)]),
            data_bytes: 8,
            checksum: 0,
            format_version: 0,
        };
        let data = |number, index, offset| WriteJob {
            number,
            snapshot_writes: vec![SnapshotWrite {
                meta: meta(index),
                offset,
                data: bytes::Bytes::from(vec![0; 4]),
                last: false,
            }],
            ..WriteJob::default()
        };
        let queued = [data(1, 10, 0), data(2, 10, 4), job(3, LogWrite::default())];
        assert_eq!(group_len(&queued), 3);
        let queued = [data(1, 10, 0), job(2, LogWrite::default()), data(3, 20, 0)];
        assert_eq!(group_len(&queued), 2, "the newer snapshot waits");
        assert_eq!(group_len(&queued[2..]), 1);
        let queued = [job(1, LogWrite::default()), data(2, 20, 0)];
        assert_eq!(
            group_len(&queued),
            1,
            "even after a job without snapshot data"
        );
    }

    #[test]
    fn a_truncation_starts_the_next_group() {
        let append = |number, from, to, term| {
            job(
                number,
                LogWrite {
                    entries: entries(from, to, term),
                    ..LogWrite::default()
                },
            )
        };
        let truncate = |number, from, term| {
            job(
                number,
                LogWrite {
                    truncate_from: Some(LogIndex(from)),
                    entries: entries(from, from, term),
                    ..LogWrite::default()
                },
            )
        };
        let queued = [
            append(1, 241, 241, 7),
            append(2, 242, 242, 7),
            truncate(3, 240, 8),
        ];
        assert_eq!(
            group_len(&queued),
            2,
            "the acknowledgements of i241 and i242 leave before the truncation removes them"
        );
        assert_eq!(group_len(&queued[2..]), 1);
        let queued = [truncate(1, 240, 8), append(2, 241, 241, 8)];
        assert_eq!(group_len(&queued), 2, "a truncation may open a group");
    }

    #[test]
    fn snapshot_data_must_continue_the_open_snapshot() {
        let meta = SnapshotMeta {
            last_index: LogIndex(10),
            last_term: Term(1),
            membership: crate::membership::Membership::new([crate::types::NodeId(1)]),
            data_bytes: 8,
            checksum: 0,
            format_version: 0,
        };
        let data = |offset: u64, len: usize, last| SnapshotWrite {
            meta: meta.clone(),
            offset,
            data: bytes::Bytes::from(vec![0; len]),
            last,
        };
        let mut cursor = SnapshotCursor::default();
        assert_eq!(
            cursor.place(&data(4, 4, false)),
            Err(SnapshotDataError::NoSnapshotOpen { offset: 4 })
        );
        let opened = cursor.place(&data(0, 4, false)).expect("offset 0 opens");
        assert!(opened.opens && !opened.finishes);
        assert!(matches!(
            cursor.place(&data(5, 4, false)),
            Err(SnapshotDataError::Discontinuous { written: 4, .. })
        ));
        let finished = cursor.place(&data(4, 4, true)).expect("continues");
        assert!(!finished.opens && finished.finishes);
        assert!(
            cursor.place(&data(8, 1, true)).is_err(),
            "finished closes it"
        );
    }

    #[test]
    fn a_reset_cursor_forgets_the_open_snapshot() {
        let meta = SnapshotMeta {
            last_index: LogIndex(10),
            last_term: Term(1),
            membership: crate::membership::Membership::new([crate::types::NodeId(1)]),
            data_bytes: 8,
            checksum: 0,
            format_version: 0,
        };
        let data = |offset: u64| SnapshotWrite {
            meta: meta.clone(),
            offset,
            data: bytes::Bytes::from(vec![0; 4]),
            last: false,
        };
        let mut cursor = SnapshotCursor::default();
        cursor.place(&data(0)).expect("offset 0 opens");
        cursor.reset();
        assert_eq!(
            cursor.place(&data(4)),
            Err(SnapshotDataError::NoSnapshotOpen { offset: 4 }),
            "after a crash the sink is gone: data past offset 0 continues nothing"
        );
    }
}
