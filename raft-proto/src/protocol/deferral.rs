//! Whether a leader's own write of new entries may wait for a later one
//! ([`Ready::write_may_wait`](super::Ready::write_may_wait)).
//!
//! A leader sends its appends before its write is durable (the contract allows it), so its
//! own sync is not on the commit path while followers still have appends to answer: waiting
//! for the next ready's entries costs no commit latency and saves a sync. Once every follower
//! it pipelines to has been sent the new entries, the write is what the commit waits for, and
//! it may not wait any longer.

use super::progress::{Progress, ReplicationState};
use crate::message::{Message, MessageBody};
use crate::storage::LogWrite;
use crate::types::{LogIndex, NodeId};
use std::collections::BTreeMap;

/// The leader's count of appends sent against the followers that still answer.
///
/// Invariant: outside leadership both counts are zero and nothing is remembered, so a new
/// leader starts from nothing.
#[derive(Debug, Default)]
pub(super) struct WriteDeferral {
    /// Followers pipelined to that answered since the tick before (or have nothing in
    /// flight), counted at each tick: the leader's new entries have reached them all after
    /// this many appends. A follower that went silent drops out at the next tick, so the
    /// leader stops waiting for appends to it.
    pipelined_peers: usize,
    /// Each pipelined follower's match index at the last tick, to tell which still answer.
    match_at_tick: BTreeMap<NodeId, LogIndex>,
    /// Appends carrying entries sent since the leader last wrote without waiting.
    appends_since_write: usize,
}

impl WriteDeferral {
    /// A tick passed: counts the pipelined followers that answered since the last one. Called
    /// with `None` when this node does not lead, which forgets everything.
    pub(super) fn on_tick(&mut self, progress: Option<&BTreeMap<NodeId, Progress>>) {
        let previous = std::mem::take(&mut self.match_at_tick);
        self.pipelined_peers = 0;
        let Some(progress) = progress else {
            self.appends_since_write = 0;
            return;
        };
        for (id, peer) in progress {
            if peer.state != ReplicationState::Replicate {
                continue;
            }
            let answered = previous
                .get(id)
                .is_none_or(|before| peer.match_index > *before);
            if answered || peer.inflights.len() == 0 {
                self.pipelined_peers += 1;
            }
            self.match_at_tick.insert(*id, peer.match_index);
        }
    }

    /// Decides for one ready: true when its write is a leader's plain append of entries that
    /// have not yet gone to every pipelined follower. A ready with a write that may not wait
    /// starts the count again (it takes every waiting write with it).
    pub(super) fn decide(
        &mut self,
        leading: bool,
        messages: &[Message],
        write: &LogWrite,
        needs_writer: bool,
        plain: bool,
    ) -> bool {
        if !leading {
            self.appends_since_write = 0;
            return false;
        }
        self.appends_since_write += messages.iter().filter(|m| carries_entries(m)).count();
        let plain_append = plain && !write.entries.is_empty() && write.truncate_from.is_none();
        let may_wait = plain_append && self.appends_since_write < self.pipelined_peers;
        if needs_writer && !may_wait {
            self.appends_since_write = 0;
        }
        may_wait
    }
}

/// True for an append that carries entries (not one that only tells the commit index).
fn carries_entries(message: &Message) -> bool {
    matches!(&message.body, MessageBody::Append { entries, .. } if !entries.is_empty())
}
