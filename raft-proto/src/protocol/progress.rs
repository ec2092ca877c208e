//! What a leader knows about each follower's log, and how fast it may send to it.

use crate::snapshot::SnapshotMeta;
use crate::types::{Incarnation, LogIndex};
use std::collections::VecDeque;

/// How a leader is sending to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// The leader does not know where the follower's log matches; it sends one append at a
    /// time and waits for the answer (or for the next heartbeat answer) before sending another.
    Probe,
    /// The follower's log matches up to `match_index`; the leader streams appends ahead of the
    /// answers, bounded by the in-flight limits.
    Replicate,
    /// The follower needs entries the leader purged: it is sent a snapshot, and nothing else
    /// until it has installed it.
    Snapshot,
}

/// A snapshot transfer to one follower.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotSend {
    pub(crate) meta: SnapshotMeta,
    /// The next byte to send.
    pub(crate) next_offset: u64,
    /// Bytes the follower reported holding.
    pub(crate) acked: u64,
    /// The chunk that ends the snapshot was sent (since the last rewind).
    pub(crate) sent_last: bool,
    /// Ticks since the follower last answered.
    pub(crate) idle_ticks: u32,
}

impl SnapshotSend {
    pub(crate) fn new(meta: SnapshotMeta) -> SnapshotSend {
        SnapshotSend {
            meta,
            next_offset: 0,
            acked: 0,
            sent_last: false,
            idle_ticks: 0,
        }
    }
}

/// Appends sent in the `Replicate` state and not yet acknowledged.
///
/// Invariant: `bytes` is the sum of the queued sizes; last indexes strictly increase.
#[derive(Clone, Debug, Default)]
pub(crate) struct Inflights {
    queue: VecDeque<(LogIndex, usize)>,
    bytes: usize,
}

impl Inflights {
    pub(crate) fn add(&mut self, last: LogIndex, bytes: usize) {
        if let Some((previous, _)) = self.queue.back() {
            assert!(last > *previous, "inflight appends must move forward");
        }
        self.queue.push_back((last, bytes));
        self.bytes += bytes;
        self.assert_invariants();
    }

    /// Frees every append whose last index is at or below `index`.
    pub(crate) fn free_to(&mut self, index: LogIndex) {
        while let Some(&(last, bytes)) = self.queue.front() {
            if last > index {
                break;
            }
            self.queue.pop_front();
            self.bytes -= bytes;
        }
        self.assert_invariants();
    }

    /// The queue is bounded by `inflight_messages_max`, so the sum stays cheap.
    fn assert_invariants(&self) {
        debug_assert_eq!(
            self.bytes,
            self.queue.iter().map(|(_, bytes)| bytes).sum::<usize>(),
            "inflight bytes must sum the queued appends"
        );
    }

    pub(crate) fn clear(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }

    pub(crate) fn is_full(&self, messages_max: usize, bytes_max: usize) -> bool {
        self.queue.len() >= messages_max || self.bytes >= bytes_max
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A leader's view of one follower.
///
/// Invariant: `match_index < next_index`.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// The highest index known to match the leader's log and be durable on the follower.
    pub(crate) match_index: LogIndex,
    /// The next index to send.
    pub(crate) next_index: LogIndex,
    pub(crate) state: ReplicationState,
    /// In `Probe`: an append is outstanding, so no other is sent until an answer arrives.
    pub(crate) probe_sent: bool,
    pub(crate) inflights: Inflights,
    /// Heard from since the last quorum check (CheckQuorum).
    pub(crate) recent_active: bool,
    /// Heartbeat answers received in `Replicate` while appends were outstanding and
    /// `match_index` did not move: a sign an append was lost, which sends the follower back to
    /// `Probe`.
    pub(crate) stalled_heartbeats: u32,
    /// In `Snapshot`: the transfer.
    pub(crate) snapshot: Option<SnapshotSend>,
    /// The highest commit index the follower can have learned from what was sent to it: an
    /// append tells it `min(leader commit, last index the message covers)`. When the leader's
    /// commit index passes it, an ack is followed by an empty append, so a follower whose ack
    /// came in after the commit still learns of it without waiting for a heartbeat.
    pub(crate) sent_commit: LogIndex,
    /// The follower's life this progress describes: the one the membership records when the
    /// leader took office, or a newer one it heard from since (then everything above was
    /// started afresh: that life's log may have gone back to nothing).
    pub(crate) incarnation: Incarnation,
}

impl Progress {
    pub(crate) fn new(next_index: LogIndex, incarnation: Incarnation) -> Progress {
        Progress {
            incarnation,
            match_index: LogIndex(0),
            next_index,
            state: ReplicationState::Probe,
            probe_sent: false,
            inflights: Inflights::default(),
            recent_active: true,
            stalled_heartbeats: 0,
            snapshot: None,
            sent_commit: LogIndex(0),
        }
    }

    /// Records that the follower was sent `commit` as the leader's commit index.
    pub(crate) fn commit_sent(&mut self, commit: LogIndex) {
        self.sent_commit = self.sent_commit.max(commit);
    }

    /// True when an empty append would tell the follower a higher commit index than it was
    /// sent so far (it can learn at most up to the last entry it was sent).
    pub(crate) fn can_bump_commit(&self, committed: LogIndex) -> bool {
        committed.min(self.next_index.prev()) > self.sent_commit
    }

    pub(crate) fn is_paused(&self, messages_max: usize, bytes_max: usize) -> bool {
        match self.state {
            ReplicationState::Probe => self.probe_sent,
            ReplicationState::Replicate => self.inflights.is_full(messages_max, bytes_max),
            ReplicationState::Snapshot => true,
        }
    }

    /// Records that the follower holds everything up to `index`. Returns true when that is news.
    pub(crate) fn update_match(&mut self, index: LogIndex) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
            self.probe_sent = false;
            self.stalled_heartbeats = 0;
        }
        self.next_index = self.next_index.max(index.next());
        self.inflights.free_to(index);
        self.assert_invariants();
        advanced
    }

    pub(crate) fn become_snapshot(&mut self, send: SnapshotSend) {
        self.state = ReplicationState::Snapshot;
        self.probe_sent = false;
        self.stalled_heartbeats = 0;
        self.inflights.clear();
        self.snapshot = Some(send);
    }

    pub(crate) fn become_probe(&mut self) {
        self.snapshot = None;
        self.state = ReplicationState::Probe;
        // The follower may have restarted and forgotten its commit index.
        self.sent_commit = LogIndex(0);
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.stalled_heartbeats = 0;
        self.inflights.clear();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.snapshot = None;
        self.state = ReplicationState::Replicate;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.stalled_heartbeats = 0;
        self.inflights.clear();
    }

    /// Handles a rejection of the append at `rejected_index`, resuming at `resume_after + 1`.
    /// Returns false when the rejection is stale and was ignored.
    pub(crate) fn back_off(&mut self, rejected_index: LogIndex, resume_after: LogIndex) -> bool {
        if rejected_index <= self.match_index || self.state == ReplicationState::Snapshot {
            // Answers an append older than what we already know matches, or sent before the
            // snapshot transfer began.
            return false;
        }
        if self.state == ReplicationState::Probe && rejected_index != self.next_index.prev() {
            return false; // answers an older probe
        }
        self.state = ReplicationState::Probe;
        self.inflights.clear();
        self.probe_sent = false;
        self.next_index = resume_after
            .next()
            .min(rejected_index)
            .max(self.match_index.next());
        self.assert_invariants();
        true
    }

    fn assert_invariants(&self) {
        assert!(
            self.match_index < self.next_index,
            "progress invariant broken: match {} >= next {}",
            self.match_index,
            self.next_index
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_limits_pause_replication_and_acks_resume_it() {
        let mut progress = Progress::new(LogIndex(1), Incarnation(0));
        progress.become_replicate();
        progress.inflights.add(LogIndex(5), 100);
        progress.inflights.add(LogIndex(9), 100);
        assert!(
            progress.is_paused(2, 1000),
            "two messages fill a window of two"
        );
        assert!(
            progress.is_paused(10, 200),
            "200 bytes fill a window of 200"
        );
        progress.update_match(LogIndex(5));
        assert!(!progress.is_paused(2, 1000));
        assert_eq!(progress.inflights.len(), 1);
        assert_eq!(progress.inflights.bytes(), 100);
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut progress = Progress::new(LogIndex(11), Incarnation(0));
        progress.update_match(LogIndex(7));
        assert!(
            !progress.back_off(LogIndex(6), LogIndex(3)),
            "below match: stale"
        );
        assert!(
            !progress.back_off(LogIndex(8), LogIndex(3)),
            "probe answer for an older probe"
        );
        assert!(progress.back_off(LogIndex(10), LogIndex(9)));
        assert_eq!(progress.next_index, LogIndex(10));
    }

    #[test]
    fn back_off_never_goes_below_match() {
        let mut progress = Progress::new(LogIndex(21), Incarnation(0));
        progress.update_match(LogIndex(12));
        progress.become_replicate();
        progress.next_index = LogIndex(21);
        assert!(progress.back_off(LogIndex(20), LogIndex(2)));
        assert_eq!(progress.next_index, LogIndex(13));
        assert_eq!(progress.state, ReplicationState::Probe);
    }
}
