//! The argument and hard-state checks every [`LogStore`](super::LogStore) makes before it
//! changes anything, shared so each store enforces the same contract with the same messages.
//!
//! A store runs them against the state its call will apply to (for a store that pipelines
//! calls, the *pending* state: the state after every call already queued). A call that fails a
//! check must change nothing. Each failure is a [`StorageError::InvalidArgument`], except a read
//! of entries that are not held, which is [`StorageError::OutOfRange`].

use super::{LogBounds, StorageError};
use crate::types::{Entry, HardState, LogIndex};
use std::ops::Range;

/// Checks that `entries` are consecutive and start right after `bounds.last`.
pub fn check_append(bounds: LogBounds, entries: &[Entry]) -> Result<(), StorageError> {
    let Some(first_entry) = entries.first() else {
        return Ok(());
    };
    let expected = bounds.last.next();
    if first_entry.index != expected {
        return Err(StorageError::InvalidArgument(format!(
            "an append must start at {expected} (the log holds {}..={}), not at {}",
            bounds.first, bounds.last, first_entry.index
        )));
    }
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index.next() {
            return Err(StorageError::InvalidArgument(format!(
                "appended entries are not consecutive: {} follows {}",
                pair[1].index, pair[0].index
            )));
        }
    }
    Ok(())
}

/// Checks that truncating at `from` keeps the purge point and every committed entry.
pub fn check_truncate(
    bounds: LogBounds,
    commit: LogIndex,
    from: LogIndex,
) -> Result<(), StorageError> {
    if from < bounds.first {
        return Err(StorageError::InvalidArgument(format!(
            "cannot truncate from {from}: the log is purged up to {} (first held is {})",
            bounds.first.prev(),
            bounds.first
        )));
    }
    // `commit <= bounds.last` always holds, so this only ever refuses to remove held entries.
    if from <= commit {
        return Err(StorageError::InvalidArgument(format!(
            "cannot truncate from {from}: entries up to the commit index {commit} are committed"
        )));
    }
    Ok(())
}

/// Checks that `new` does not take the hard state backwards and commits only held entries.
pub fn check_hard_state(
    saved: &HardState,
    new: &HardState,
    last: LogIndex,
) -> Result<(), StorageError> {
    let reject = |why: String| Err(StorageError::InvalidArgument(format!("hard state {why}")));
    if new.term < saved.term {
        return reject(format!(
            "term {} is behind the saved term {}",
            new.term, saved.term
        ));
    }
    if new.term == saved.term && saved.vote.is_some() && new.vote != saved.vote {
        return reject(format!(
            "changes the vote within {} from {:?} to {:?}",
            new.term, saved.vote, new.vote
        ));
    }
    if new.commit < saved.commit {
        return reject(format!(
            "commit {} is behind the saved commit {}",
            new.commit, saved.commit
        ));
    }
    if new.commit > last {
        return reject(format!(
            "commit {} is past the last entry {last} (purge past the end first to commit a snapshot)",
            new.commit
        ));
    }
    Ok(())
}

/// Checks a whole log write against the state it applies to (`bounds` and the `saved` hard
/// state): the truncation ([`check_truncate`]), then the entries against the shortened log
/// ([`check_append`]), then the hard state against the log's new end
/// ([`check_hard_state`]). Returns the log's bounds after the write. Every store runs this one
/// sequence, so a write one store refuses every store refuses, with the same message.
pub fn check_write(
    bounds: LogBounds,
    saved: &HardState,
    truncate_from: Option<LogIndex>,
    entries: &[Entry],
    hard_state: Option<&HardState>,
) -> Result<LogBounds, StorageError> {
    let mut after = bounds;
    if let Some(from) = truncate_from {
        check_truncate(bounds, saved.commit, from)?;
        after.last = after.last.min(from.prev());
    }
    check_append(after, entries)?;
    if let Some(last) = entries.last() {
        after.last = last.index;
    }
    if let Some(hard_state) = hard_state {
        check_hard_state(saved, hard_state, after.last)?;
    }
    Ok(after)
}

/// Checks that `range` is well formed and held.
pub fn check_range(bounds: LogBounds, range: &Range<LogIndex>) -> Result<(), StorageError> {
    if range.start > range.end {
        return Err(StorageError::InvalidArgument(format!(
            "read range {}..{} ends before it starts",
            range.start, range.end
        )));
    }
    if range.start < bounds.first || range.end > bounds.last.next() {
        return Err(StorageError::OutOfRange {
            requested: range.clone(),
            bounds,
        });
    }
    Ok(())
}
