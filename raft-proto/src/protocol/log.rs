//! The in-memory log: every entry after the compaction point, with the indexes that say how
//! far the log is durable, committed and applied.

use crate::types::{Entry, LogIndex, Term};
use std::collections::VecDeque;

/// The live part of the replicated log and its progress markers.
///
/// Invariants (checked by [`RaftLog::assert_invariants`]):
/// - `entries[k].index == offset + 1 + k`, terms never decrease along the log;
/// - `applied <= applying <= committed`, `applying <= persisted` (only durable entries are
///   applied), `committed <= last_index()`, `persisted <= last_index()`;
/// - `offset < unwritten_from <= last_index() + 1`: entries from `unwritten_from` on have not
///   been handed to storage yet.
#[derive(Debug)]
pub(crate) struct RaftLog {
    /// Index of the entry just before the first one held (0 until compaction).
    offset: LogIndex,
    /// Term of the entry at `offset`.
    offset_term: Term,
    entries: VecDeque<Entry>,
    /// Highest index known to be committed.
    pub(crate) committed: LogIndex,
    /// Highest index known to be durable in the local store and equal to the entry held here.
    pub(crate) persisted: LogIndex,
    /// Highest index handed to the state machine.
    pub(crate) applying: LogIndex,
    /// Highest index the state machine reported applied.
    pub(crate) applied: LogIndex,
    /// First index not yet handed to storage.
    unwritten_from: LogIndex,
    /// A truncation of the stored log not yet handed to storage.
    truncate_pending: Option<LogIndex>,
    /// Payload bytes of the held entries at or below `applying`: what a snapshot would free
    /// (the snapshot policy's byte bound, `Config::log_bytes_max`, is measured on it).
    /// Invariant: equals the sum over `entries` up to `applying` (checked by
    /// `assert_invariants` in debug builds: the sum costs a walk of the log).
    applied_bytes_held: usize,
}

impl RaftLog {
    /// A log restored from storage: `entries` follow `offset` and are all durable.
    pub(crate) fn restore(
        offset: LogIndex,
        offset_term: Term,
        entries: Vec<Entry>,
        committed: LogIndex,
        applied: LogIndex,
    ) -> RaftLog {
        let last = LogIndex(offset.0 + entries.len() as u64);
        let applied = applied.max(offset);
        let applied_bytes_held = entries
            .iter()
            .take_while(|e| e.index <= applied)
            .map(|e| e.payload.payload_bytes())
            .sum();
        let log = RaftLog {
            offset,
            offset_term,
            entries: entries.into(),
            committed: committed.max(applied),
            persisted: last,
            applying: applied,
            applied,
            unwritten_from: last.next(),
            truncate_pending: None,
            applied_bytes_held,
        };
        log.assert_invariants();
        log
    }

    /// Payload bytes of the held entries already handed to the state machine.
    pub(crate) fn applied_bytes_held(&self) -> usize {
        self.applied_bytes_held
    }

    /// The highest index at or below `to` such that the entries after it, up to `to`, hold at
    /// most `bytes_max` payload bytes: where to compact so that a tail kept below a snapshot
    /// at `to` stays within that many bytes.
    pub(crate) fn tail_start_within(&self, to: LogIndex, bytes_max: usize) -> LogIndex {
        let mut start = to.min(self.last_index());
        let mut bytes = 0usize;
        while start > self.offset {
            let entry = self.get(start).expect("a held entry");
            bytes += entry.payload.payload_bytes();
            if bytes > bytes_max {
                return start;
            }
            start = start.prev();
        }
        start
    }

    /// The index before the first entry held: everything at or below it was compacted.
    pub(crate) fn offset(&self) -> LogIndex {
        self.offset
    }

    /// Drops the entries at or below `index` from memory (they are covered by a snapshot and
    /// applied). Returns false when there was nothing to drop.
    pub(crate) fn compact_to(&mut self, index: LogIndex) -> bool {
        if index <= self.offset {
            return false;
        }
        assert!(
            index <= self.applied && index <= self.persisted,
            "compacting to {index} beyond applied {} or persisted {}",
            self.applied,
            self.persisted
        );
        let term = self.term(index).expect("a held entry");
        let count = (index.0 - self.offset.0) as usize;
        let freed: usize = self
            .entries
            .drain(..count)
            .map(|e| e.payload.payload_bytes())
            .sum();
        self.applied_bytes_held = self
            .applied_bytes_held
            .checked_sub(freed)
            .expect("compacted entries are applied, so counted");
        self.offset = index;
        self.offset_term = term;
        self.assert_invariants();
        true
    }

    /// Replaces the log's prefix by a snapshot that ends at `index`/`term`. When the log holds
    /// that entry, the entries after it stay and this returns false; otherwise the whole log
    /// goes, the store is told to drop any entry above the snapshot, and this returns true.
    pub(crate) fn install_snapshot(&mut self, index: LogIndex, term: Term) -> bool {
        assert!(index > self.committed, "a snapshot at or below commit");
        if self.term(index) == Some(term) {
            let count = (index.0 - self.offset.0) as usize;
            self.entries.drain(..count);
            self.offset = index;
            self.offset_term = term;
            self.committed = index;
            self.applying = index;
            self.applied_bytes_held = 0; // the entries kept are above `applying`
            self.persisted = self.persisted.max(index);
            self.unwritten_from = self.unwritten_from.max(index.next());
            self.assert_invariants();
            return false;
        }
        let held_beyond = self.last_index() > index;
        self.entries.clear();
        self.applied_bytes_held = 0;
        self.offset = index;
        self.offset_term = term;
        self.committed = index;
        self.applying = index;
        self.persisted = index;
        self.unwritten_from = index.next();
        // The store, once purged up to the snapshot, may still hold conflicting entries above.
        self.truncate_pending = held_beyond.then(|| index.next());
        self.assert_invariants();
        true
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        LogIndex(self.offset.0 + self.entries.len() as u64)
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.back().map_or(self.offset_term, |e| e.term)
    }

    /// The term of the entry at `index`, or `None` when it is not held (compacted or beyond the
    /// end). Index 0 has term 0.
    pub(crate) fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        self.get(index).map(|e| e.term)
    }

    pub(crate) fn get(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.offset {
            return None;
        }
        self.entries.get((index.0 - self.offset.0 - 1) as usize)
    }

    /// Entries from `from` on, stopping before `bytes_max` would be exceeded (but always at
    /// least one entry when any is available).
    pub(crate) fn slice(&self, from: LogIndex, bytes_max: usize) -> Vec<Entry> {
        assert!(
            from > self.offset,
            "slice from {from} reaches into the compacted log"
        );
        let start = (from.0 - self.offset.0 - 1) as usize;
        let mut bytes = 0;
        let mut out = Vec::new();
        for entry in self.entries.iter().skip(start) {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
        }
        out
    }

    /// Entries in `from..=to`, all of which must be held.
    pub(crate) fn range(&self, from: LogIndex, to: LogIndex) -> impl Iterator<Item = &Entry> {
        assert!(from > self.offset && to <= self.last_index());
        let start = (from.0 - self.offset.0 - 1) as usize;
        let end = (to.0 - self.offset.0) as usize;
        self.entries.range(start..end.max(start))
    }

    /// True when a candidate whose log ends at (`index`, `term`) is at least as up to date as
    /// this log (Raft §5.4.1).
    pub(crate) fn is_up_to_date(&self, index: LogIndex, term: Term) -> bool {
        (term, index) >= (self.last_term(), self.last_index())
    }

    /// The largest index at or below `index` whose term is at most `term`: where a leader should
    /// probe next after a rejection hint (or a follower, to build one).
    pub(crate) fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> LogIndex {
        let mut index = index.min(self.last_index());
        while index > self.offset {
            match self.term(index) {
                Some(t) if t <= term => return index,
                _ => index = index.prev(),
            }
        }
        index
    }

    /// Appends a leader's new entry.
    pub(crate) fn append(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index().next(),
            "log entries must be contiguous"
        );
        assert!(
            entry.term >= self.last_term(),
            "log terms must not decrease"
        );
        self.entries.push_back(entry);
    }

    /// A follower's append after the consistency check at `prev_index`/`prev_term`. Returns
    /// the index of the last entry the message covered and, when a conflicting suffix was cut,
    /// where the cut began; `None` when the check failed.
    pub(crate) fn try_append(
        &mut self,
        prev_index: LogIndex,
        prev_term: Term,
        entries: Vec<Entry>,
    ) -> Option<(LogIndex, Option<LogIndex>)> {
        if self.term(prev_index) != Some(prev_term) {
            return None;
        }
        let last_new = LogIndex(prev_index.0 + entries.len() as u64);
        let mut truncated = None;
        for entry in entries {
            match self.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    // Log Matching: a conflict can never reach a committed entry.
                    assert!(
                        entry.index > self.committed,
                        "conflicting entry at {} is at or below commit {}",
                        entry.index,
                        self.committed
                    );
                    truncated = truncated.or(Some(entry.index));
                    self.truncate_from(entry.index);
                    self.append(entry);
                }
                None => self.append(entry),
            }
        }
        Some((last_new, truncated))
    }

    fn truncate_from(&mut self, from: LogIndex) {
        assert!(from > self.committed && from > self.offset);
        self.entries.truncate((from.0 - self.offset.0 - 1) as usize);
        self.persisted = self.persisted.min(from.prev());
        if from < self.unwritten_from {
            self.unwritten_from = from;
            self.truncate_pending = Some(self.truncate_pending.map_or(from, |t| t.min(from)));
        }
    }

    /// Raises the commit index (never lowers it).
    pub(crate) fn commit_to(&mut self, index: LogIndex) -> bool {
        if index <= self.committed {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "commit {index} beyond last index {}",
            self.last_index()
        );
        self.committed = index;
        true
    }

    /// Storage reports durable everything up to `index`, whose entry had `term` when it was
    /// handed out. Ignored when that entry has since been replaced.
    pub(crate) fn stable_to(&mut self, index: LogIndex, term: Term) {
        if index > self.persisted && index < self.unwritten_from && self.term(index) == Some(term) {
            self.persisted = index;
        }
    }

    /// The writes storage has not been given yet: (truncate point, new entries).
    pub(crate) fn take_unwritten(&mut self) -> (Option<LogIndex>, Vec<Entry>) {
        let from = self.unwritten_from;
        let entries: Vec<Entry> = if from <= self.last_index() {
            self.range(from, self.last_index()).cloned().collect()
        } else {
            Vec::new()
        };
        self.unwritten_from = self.last_index().next();
        (self.truncate_pending.take(), entries)
    }

    /// The next committed, durable entries to apply, at most `entries_max`; marks them handed
    /// out.
    pub(crate) fn take_applicable(&mut self, entries_max: usize) -> Vec<Entry> {
        let to = self
            .committed
            .min(self.persisted)
            .min(LogIndex(self.applying.0 + entries_max as u64));
        if to <= self.applying {
            return Vec::new();
        }
        let out: Vec<Entry> = self.range(self.applying.next(), to).cloned().collect();
        self.applied_bytes_held += out.iter().map(|e| e.payload.payload_bytes()).sum::<usize>();
        self.applying = to;
        out
    }

    /// True when entries wait to be applied.
    pub(crate) fn has_applicable(&self) -> bool {
        self.committed.min(self.persisted) > self.applying
    }

    /// The state machine finished applying up to `index`.
    pub(crate) fn applied_to(&mut self, index: LogIndex) {
        assert!(
            index <= self.applying,
            "applied {index} was never handed out (applying {})",
            self.applying
        );
        self.applied = self.applied.max(index);
    }

    pub(crate) fn has_unwritten(&self) -> bool {
        self.truncate_pending.is_some() || self.unwritten_from <= self.last_index()
    }

    pub(crate) fn assert_invariants(&self) {
        if cfg!(debug_assertions) {
            let applied_bytes: usize = self
                .entries
                .iter()
                .take_while(|e| e.index <= self.applying)
                .map(|e| e.payload.payload_bytes())
                .sum();
            assert_eq!(
                applied_bytes, self.applied_bytes_held,
                "applied bytes miscounted"
            );
        }
        let last = self.last_index();
        assert!(self.applied <= self.applying, "applied beyond applying");
        assert!(self.applying <= self.committed, "applying beyond commit");
        assert!(
            self.applying <= self.persisted.max(self.offset),
            "applying beyond durable"
        );
        assert!(self.committed <= last, "commit beyond the log");
        assert!(self.persisted <= last, "persisted beyond the log");
        assert!(self.unwritten_from > self.offset && self.unwritten_from <= last.next());
        if let (Some(first), Some(back)) = (self.entries.front(), self.entries.back()) {
            assert_eq!(
                first.index,
                self.offset.next(),
                "log does not start after offset"
            );
            assert_eq!(back.index, last, "log has a hole");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index: LogIndex(index),
            term: Term(term),
            payload: EntryPayload::Blank,
        }
    }

    fn log_with(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, t)| entry(i as u64 + 1, *t))
            .collect();
        RaftLog::restore(LogIndex(0), Term(0), entries, LogIndex(0), LogIndex(0))
    }

    #[test]
    fn conflicting_suffix_is_replaced_and_storage_told_to_truncate() {
        let mut log = log_with(&[1, 1, 2, 2]);
        let last = log.try_append(LogIndex(2), Term(1), vec![entry(3, 3)]);
        assert_eq!(last, Some((LogIndex(3), Some(LogIndex(3)))));
        assert_eq!(log.last_index(), LogIndex(3));
        assert_eq!(log.term(LogIndex(3)), Some(Term(3)));
        assert_eq!(log.persisted, LogIndex(2));
        let (truncate, entries) = log.take_unwritten();
        assert_eq!(truncate, Some(LogIndex(3)));
        assert_eq!(entries, vec![entry(3, 3)]);
    }

    #[test]
    fn matching_entries_are_not_rewritten() {
        let mut log = log_with(&[1, 1, 2]);
        let last = log.try_append(LogIndex(0), Term(0), vec![entry(1, 1), entry(2, 1)]);
        assert_eq!(last, Some((LogIndex(2), None)));
        assert_eq!(
            log.last_index(),
            LogIndex(3),
            "a stale append must not cut the log"
        );
        assert!(!log.has_unwritten());
    }

    #[test]
    fn mismatched_previous_entry_is_rejected() {
        let mut log = log_with(&[1, 2]);
        assert_eq!(
            log.try_append(LogIndex(2), Term(1), vec![entry(3, 2)]),
            None
        );
        assert_eq!(log.try_append(LogIndex(5), Term(2), vec![]), None);
        assert_eq!(log.last_index(), LogIndex(2));
    }

    #[test]
    fn conflict_hint_skips_a_term_at_a_time() {
        let log = log_with(&[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]);
        assert_eq!(
            log.find_conflict_by_term(LogIndex(10), Term(3)),
            LogIndex(3)
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(10), Term(6)),
            LogIndex(10)
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(10), Term(0)),
            LogIndex(0)
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(20), Term(5)),
            LogIndex(7)
        );
    }

    #[test]
    fn only_durable_committed_entries_are_applied() {
        let mut log = log_with(&[]);
        log.append(entry(1, 1));
        log.append(entry(2, 1));
        log.commit_to(LogIndex(2));
        assert!(log.take_applicable(10).is_empty(), "nothing is durable yet");
        let _ = log.take_unwritten();
        log.stable_to(LogIndex(1), Term(1));
        assert_eq!(log.take_applicable(10), vec![entry(1, 1)]);
        log.stable_to(LogIndex(2), Term(1));
        assert_eq!(log.take_applicable(10), vec![entry(2, 1)]);
        log.applied_to(LogIndex(2));
        log.assert_invariants();
    }

    #[test]
    fn stale_durability_report_is_ignored_after_truncation() {
        let mut log = log_with(&[]);
        log.append(entry(1, 1));
        log.append(entry(2, 1));
        let _ = log.take_unwritten();
        let outcome = log.try_append(LogIndex(1), Term(1), vec![entry(2, 2)]);
        assert_eq!(outcome, Some((LogIndex(2), Some(LogIndex(2)))));
        log.stable_to(LogIndex(2), Term(1));
        assert_eq!(
            log.persisted,
            LogIndex(0),
            "entry 2 of term 1 is no longer in the log"
        );
    }

    /// Durable means handed to storage and reported back: a report naming an entry storage
    /// was never given (the log's unwritten tail) is ignored even when its term matches, and
    /// a report below what is durable already changes nothing.
    #[test]
    fn a_report_for_an_entry_not_yet_handed_to_storage_is_ignored() {
        let mut log = log_with(&[]);
        log.append(entry(1, 1));
        log.append(entry(2, 1));
        let _ = log.take_unwritten();
        log.stable_to(LogIndex(2), Term(1));
        assert_eq!(log.persisted, LogIndex(2));
        log.append(entry(3, 1));
        log.stable_to(LogIndex(3), Term(1));
        assert_eq!(
            log.persisted,
            LogIndex(2),
            "entry 3 was never handed to storage"
        );
        log.stable_to(LogIndex(1), Term(1));
        assert_eq!(
            log.persisted,
            LogIndex(2),
            "durable never goes back on a report"
        );
    }
}
