//! Snapshots in the protocol: when to take one and compact the log, how a leader streams one
//! to a follower that needs purged entries, and how that follower installs it.
//!
//! The protocol never holds snapshot data. A leader emits chunk messages without their bytes
//! ([`super::Ready::snapshot_chunks`]); the driver reads them from its store and sends them. A
//! follower passes each received chunk straight on ([`super::Ready::snapshot_writes`]) and
//! keeps only a running CRC-32, so at most a window of chunks is in memory on either side.
//!
//! A transfer resumes where the follower's copy ends: every chunk is answered with the bytes
//! received in order, so a lost chunk, a dropped connection (the leader resends from the last
//! acknowledged byte after `snapshot_resend_ticks` of silence) or a new leader that sends the
//! same snapshot continue from there. A follower installs only a complete snapshot whose
//! checksum matches; on a mismatch it drops what it had and the leader starts over.

use super::progress::SnapshotSend;
use super::RawNode;
use crate::membership::Membership;
use crate::message::{AppendResponse, Message, MessageBody};
use crate::snapshot::SnapshotMeta;
use crate::types::{LogIndex, NodeId, Term};
use bytes::Bytes;

/// The driver must build a snapshot of the state machine once it has applied every entry
/// handed out so far, which ends at `last_index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// The last index the state machine will have applied when it builds the snapshot.
    pub last_index: LogIndex,
    /// Term of that entry.
    pub last_term: Term,
    /// Membership in force at that entry.
    pub membership: Membership,
}

/// Received snapshot data to hand to the store, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotWrite {
    /// The snapshot the data belongs to. Offset 0 starts a new sink (dropping any unfinished
    /// one); later offsets continue the open sink.
    pub meta: SnapshotMeta,
    /// Where the data goes.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
    /// The last chunk: finish the sink with `meta` (the checksum was verified).
    pub last: bool,
}

/// A snapshot this node is receiving.
#[derive(Clone, Debug)]
pub(super) struct Receiving {
    meta: SnapshotMeta,
    received: u64,
    hasher: crc32fast::Hasher,
}

/// A received snapshot between its last write and its installation in the state machine.
#[derive(Clone, Debug)]
pub(super) enum Install {
    /// Its writes go out in the ready numbered here (`None`: the next ready, not taken yet).
    Writing {
        meta: SnapshotMeta,
        ready: Option<u64>,
    },
    /// Durable: the state machine may install it.
    Durable(SnapshotMeta),
}

impl RawNode {
    // ----- building and compaction --------------------------------------------------------

    /// Asks for a snapshot at the next ready, whatever the automatic policy says. Returns
    /// false when there is nothing new to snapshot or one is being built or installed.
    pub fn request_snapshot(&mut self) -> bool {
        let covered = self.snapshot.as_ref().map_or(LogIndex(0), |s| s.last_index);
        if self.snapshot_building || self.install.is_some() || self.log.applying <= covered {
            return false;
        }
        self.snapshot_wanted = true;
        true
    }

    /// True while a snapshot asked of the driver has not been reported.
    pub fn snapshot_building(&self) -> bool {
        self.snapshot_building
    }

    /// The latest snapshot this node holds.
    pub fn snapshot(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    /// The driver built the snapshot asked for in [`super::Ready::build_snapshot`] and its
    /// store holds it (`Ok`), or failed to (`Err`, with the driver's error, which is only
    /// logged; the node tries again after another interval). The log below the snapshot, less
    /// the configured tail, is purged.
    pub fn snapshot_built(&mut self, result: Result<SnapshotMeta, &dyn std::error::Error>) {
        self.snapshot_building = false;
        let meta = match result {
            Ok(meta) => meta,
            Err(error) => {
                tracing::warn!(%error, "building a snapshot failed");
                self.snapshot_next_auto =
                    self.log.applying.0 + self.config.snapshot_interval_entries;
                // The byte bound asks again after another half bound, not on every apply.
                self.snapshot_bytes_failed_at = Some(self.log.applied_bytes_held());
                return;
            }
        };
        let covered = self.snapshot.as_ref().map_or(LogIndex(0), |s| s.last_index);
        if meta.last_index <= covered || meta.last_index <= self.log.offset() {
            return; // an install overtook it
        }
        assert!(
            self.log.term(meta.last_index) == Some(meta.last_term),
            "a snapshot at {}/{} does not match the log",
            meta.last_index,
            meta.last_term
        );
        self.snapshot_next_auto = meta.last_index.0 + self.config.snapshot_interval_entries;
        self.snapshot_bytes_failed_at = None;
        self.snapshot = Some(meta.clone());
        let tail_bytes_max = self.config.log_bytes_max / 2;
        let purge = LogIndex(
            meta.last_index
                .0
                .saturating_sub(self.config.snapshot_tail_entries),
        )
        .max(self.log.tail_start_within(meta.last_index, tail_bytes_max))
        .min(self.log.applied)
        .min(self.log.persisted);
        if self.log.compact_to(purge) {
            self.forget_memberships_to(purge);
            self.purge_to = Some(self.purge_to.map_or(purge, |p| p.max(purge)));
        }
        self.assert_invariants();
    }

    /// True when the next ready asks for a snapshot.
    pub(super) fn wants_snapshot(&self) -> bool {
        if self.snapshot_building || self.install.is_some() {
            return false;
        }
        let index = self.log.applying;
        let covered = self.snapshot.as_ref().map_or(LogIndex(0), |s| s.last_index);
        if index <= covered || index <= self.log.offset() {
            return false;
        }
        self.snapshot_wanted
            || (self.config.snapshot_interval_entries > 0 && index.0 >= self.snapshot_next_auto)
            || self.log_bytes_over_bound()
    }

    /// True when the applied entries held in memory are over `log_bytes_max` (by another half
    /// bound after a failed build): the size policy, which holds even with
    /// `snapshot_interval_entries = 0`.
    fn log_bytes_over_bound(&self) -> bool {
        let held = self.log.applied_bytes_held();
        let bound = self.config.log_bytes_max;
        match self.snapshot_bytes_failed_at {
            None => held > bound,
            Some(failed_at) => held > bound.max(failed_at.saturating_add(bound / 2)),
        }
    }

    /// Ready-time: the snapshot to ask the driver for, if the policy or a request says so.
    pub(super) fn take_build_request(&mut self) -> Option<SnapshotRequest> {
        if self.snapshot_building || self.install.is_some() {
            return None;
        }
        let index = self.log.applying;
        let covered = self.snapshot.as_ref().map_or(LogIndex(0), |s| s.last_index);
        if index <= covered || index <= self.log.offset() {
            self.snapshot_wanted = false;
            return None;
        }
        let automatic = (self.config.snapshot_interval_entries > 0
            && index.0 >= self.snapshot_next_auto)
            || self.log_bytes_over_bound();
        if !automatic && !self.snapshot_wanted {
            return None;
        }
        self.snapshot_wanted = false;
        self.snapshot_building = true;
        Some(SnapshotRequest {
            last_index: index,
            last_term: self
                .log
                .term(index)
                .expect("an applied entry above the offset"),
            membership: self.membership_at(index).clone(),
        })
    }

    // ----- leader: sending ----------------------------------------------------------------

    /// Leader: `to` needs entries this node purged; send it the latest snapshot instead.
    pub(super) fn start_snapshot(&mut self, to: NodeId) {
        let meta = self
            .snapshot
            .clone()
            .expect("a compacted log always has a snapshot below it");
        let Some(progress) = self.progress.get_mut(&to) else {
            return;
        };
        progress.become_snapshot(SnapshotSend::new(meta));
        self.send_snapshot_chunks(to);
    }

    /// Leader: sends `to` the next chunks of its snapshot, as the window allows.
    pub(super) fn send_snapshot_chunks(&mut self, to: NodeId) {
        let chunk_max = self.config.snapshot_chunk_bytes_max as u64;
        let window = chunk_max * self.config.snapshot_inflight_chunks_max as u64;
        let term = self.term;
        let from = self.id;
        let incarnation = self.config.incarnation;
        let Some(send) = self.progress.get_mut(&to).and_then(|p| p.snapshot.as_mut()) else {
            return;
        };
        while !send.sent_last && send.next_offset - send.acked < window {
            let offset = send.next_offset;
            let len = chunk_max.min(send.meta.data_bytes - offset);
            send.next_offset += len;
            send.sent_last = send.next_offset == send.meta.data_bytes;
            self.snapshot_chunks.push(Message {
                from,
                to,
                term,
                incarnation,
                body: MessageBody::SnapshotChunk {
                    meta: send.meta.clone(),
                    offset,
                    data: Bytes::new(),
                    len,
                },
            });
        }
    }

    /// Leader: a follower reports how much of a snapshot it holds.
    pub(super) fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        last_index: LogIndex,
        last_term: Term,
        checksum: u32,
        received: u64,
    ) {
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        let Some(send) = progress.snapshot.as_mut() else {
            return;
        };
        let same = (
            send.meta.last_index,
            send.meta.last_term,
            send.meta.checksum,
        ) == (last_index, last_term, checksum);
        if !same || received > send.meta.data_bytes {
            return; // about another snapshot
        }
        send.idle_ticks = 0;
        if received < send.acked || received > send.next_offset {
            // The follower lost its copy (restart, failed check) or holds more than this leader
            // sent (another leader sent the same snapshot): continue from what it holds.
            send.next_offset = received;
            send.sent_last = false;
        }
        send.acked = received;
        if received == send.meta.data_bytes && send.sent_last {
            // Installing; its acceptance of the snapshot index arrives as an append answer.
            return;
        }
        self.send_snapshot_chunks(from);
    }

    /// Leader, every tick: a transfer without answers for `snapshot_resend_ticks` resends from
    /// the last acknowledged byte.
    pub(super) fn tick_snapshot_sends(&mut self) {
        let resend = self.config.snapshot_resend_ticks;
        let latest = self.snapshot.as_ref();
        let mut stalled = Vec::new();
        for (id, progress) in self.progress.iter_mut() {
            if let Some(send) = progress.snapshot.as_mut() {
                send.idle_ticks += 1;
                if send.idle_ticks >= resend {
                    match latest {
                        // A newer snapshot replaced the one being sent, which the store may no
                        // longer hold: send the newest, from the start.
                        Some(latest) if !latest.same_snapshot(&send.meta) => {
                            *send = SnapshotSend::new(latest.clone());
                        }
                        _ => {
                            send.idle_ticks = 0;
                            send.next_offset = send.acked;
                            send.sent_last = false;
                        }
                    }
                    stalled.push(*id);
                }
            }
        }
        for id in stalled {
            self.send_snapshot_chunks(id);
        }
    }

    // ----- follower: receiving ------------------------------------------------------------

    pub(super) fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Bytes,
        len: u64,
    ) {
        if data.len() as u64 != len
            || offset
                .checked_add(len)
                .is_none_or(|end| end > meta.data_bytes)
            || meta.membership.validate().is_err()
        {
            tracing::warn!(%from, "ignoring a malformed snapshot chunk");
            return;
        }
        if meta.last_index <= self.log.committed {
            // Everything it covers is here already.
            let match_index = self.log.committed;
            self.send(
                from,
                MessageBody::AppendResponse(AppendResponse::Accepted { match_index }),
            );
            return;
        }
        if self.install.is_some() {
            return; // the previous snapshot is being installed; the leader resends later
        }
        let same = self
            .receiving
            .as_ref()
            .is_some_and(|r| r.meta.same_snapshot(&meta));
        if !same {
            if offset != 0 {
                self.answer_chunk(from, &meta, 0);
                return;
            }
            self.receiving = Some(Receiving {
                meta: meta.clone(),
                received: 0,
                hasher: crc32fast::Hasher::new(),
            });
        }
        let receiving = self.receiving.as_mut().expect("set above");
        if offset != receiving.received {
            let received = receiving.received;
            self.answer_chunk(from, &meta, received);
            return;
        }
        receiving.hasher.update(&data);
        receiving.received += len;
        let received = receiving.received;
        let complete = received == meta.data_bytes;
        if !complete {
            self.snapshot_writes.push(SnapshotWrite {
                meta: meta.clone(),
                offset,
                data,
                last: false,
            });
            self.answer_chunk(from, &meta, received);
            return;
        }
        let receiving = self.receiving.take().expect("set above");
        if receiving.hasher.finalize() != meta.checksum {
            tracing::warn!(%from, index = %meta.last_index, "a received snapshot failed its checksum; starting over");
            self.answer_chunk(from, &meta, 0);
            return;
        }
        self.snapshot_writes.push(SnapshotWrite {
            meta: meta.clone(),
            offset,
            data,
            last: true,
        });
        self.install_received(from, meta);
    }

    fn answer_chunk(&mut self, to: NodeId, meta: &SnapshotMeta, received: u64) {
        self.send(
            to,
            MessageBody::SnapshotResponse {
                last_index: meta.last_index,
                last_term: meta.last_term,
                checksum: meta.checksum,
                received,
            },
        );
    }

    /// A complete, verified snapshot replaces the log below it. The store purges and
    /// truncates in the same ready as the snapshot's last write; the state machine installs it
    /// once that is durable.
    fn install_received(&mut self, from: NodeId, meta: SnapshotMeta) {
        let index = meta.last_index;
        let discarded = self.log.install_snapshot(index, meta.last_term);
        // Proposals at entries this node will never apply itself: their outcome is unknown.
        self.proposals.skipped_to(index);
        if discarded {
            self.proposals.truncated_from(index.next());
        }
        self.memberships.retain(|(at, _)| *at > index);
        self.base_membership = (index, meta.membership.clone());
        self.purge_to = Some(self.purge_to.map_or(index, |p| p.max(index)));
        self.snapshot = Some(meta.clone());
        self.snapshot_next_auto = index.0 + self.config.snapshot_interval_entries;
        self.install = Some(Install::Writing { meta, ready: None });
        let match_index = self.log.last_index();
        self.send(
            from,
            MessageBody::AppendResponse(AppendResponse::Accepted { match_index }),
        );
        self.assert_invariants();
    }

    /// The state machine installed the snapshot handed out in [`super::Ready::install_snapshot`].
    pub fn snapshot_installed(&mut self, index: LogIndex) {
        self.log.applied_to(index);
    }

    /// Ready-time: a durable received snapshot for the state machine to install.
    pub(super) fn take_install(&mut self) -> Option<SnapshotMeta> {
        match self.install.take() {
            Some(Install::Durable(meta)) => Some(meta),
            other => {
                self.install = other;
                None
            }
        }
    }

    /// Storage acknowledged ready `number`: a snapshot written in it is now durable.
    pub(super) fn install_persisted(&mut self, number: u64) {
        if let Some(Install::Writing { meta, ready }) = &self.install {
            if ready.is_some_and(|ready| ready <= number) {
                self.install = Some(Install::Durable(meta.clone()));
            }
        }
    }

    /// Ready-time: the ready being built carries the install's writes.
    pub(super) fn install_written_in(&mut self, number: u64) {
        if let Some(Install::Writing { ready, .. }) = &mut self.install {
            ready.get_or_insert(number);
        }
    }

    /// True while the follower's log waits for a snapshot install before applying more.
    pub(super) fn install_pending(&self) -> bool {
        self.install.is_some()
    }

    /// For status: a snapshot being received, as (bytes received, total).
    pub(super) fn receiving_progress(&self) -> Option<(u64, u64)> {
        self.receiving
            .as_ref()
            .map(|r| (r.received, r.meta.data_bytes))
    }
}
