//! What the runtime measures, through the [`metrics`] facade: install any recorder (a
//! Prometheus exporter, say) before starting the nodes and every figure below appears in it,
//! each labelled with the node (`node="3"`), per-peer ones with the peer too. Without a recorder
//! the calls cost next to nothing. Handles are registered at start, so a recorder installed
//! after a node started does not see that node.
//!
//! | name | kind | what |
//! | --- | --- | --- |
//! | `raft_proposals_total` | counter | commands proposed through this node (forwarded ones included) |
//! | `raft_read_barriers_total` | counter | linearizable read barriers asked of this node |
//! | `raft_commit_index` | gauge | highest index known committed |
//! | `raft_committed_entries_total` | counter | entries this node learned committed |
//! | `raft_applied_index` | gauge | highest index applied to the state machine |
//! | `raft_applied_entries_total` | counter | entries applied (commands and blank ones) |
//! | `raft_apply_seconds` | histogram | time to apply one batch of committed entries |
//! | `raft_term` | gauge | the current term |
//! | `raft_is_leader` | gauge | 1 while this node leads |
//! | `raft_elections_total` | counter | elections this node started (terms it ran in as candidate) |
//! | `raft_leader_changes_total` | counter | times the leader this node knows changed to another node |
//! | `raft_write_batch_entries` | histogram | log entries per store write group (group commit) |
//! | `raft_write_sync_seconds` | histogram | time for one write group to become durable |
//! | `raft_append_bytes_sent_total` | counter, per `peer` | entry bytes sent in appends |
//! | `raft_snapshot_bytes_sent_total` | counter, per `peer` | snapshot data bytes sent |
//! | `raft_replication_lag_entries` | gauge, per `peer` | on the leader, each follower's distance from its last index (refreshed every tick) |
//!
//! A proposal's life is traced at DEBUG in the node's span: `proposed` (with the runtime's
//! proposal ID), `appended` (the index range whose write was queued), `durable` (the last
//! index of a finished write group), `committed` (the proposal ID and its index) and `applied`
//! (the index range and the time the batch took). Filter on a proposal ID to find its index,
//! then on the index to see where the time went.

use crate::message::{Message, MessageBody};
use crate::protocol::{RawNode, Role};
use crate::types::{LogIndex, NodeId};
use metrics::{Counter, Gauge, Histogram};
use std::collections::HashMap;
use std::time::Duration;

/// Peers with handles of their own, at most; a membership larger than this shares one set
/// of handles labelled `peer="other"` for the rest.
const PEERS_MAX: usize = 256;

/// One node's metric handles, shared by its tasks.
pub(super) struct NodeMetrics {
    node: String,
    pub(super) proposals: Counter,
    pub(super) read_barriers: Counter,
    commit_index: Gauge,
    committed_entries: Counter,
    applied_index: Gauge,
    applied_entries: Counter,
    apply_seconds: Histogram,
    term: Gauge,
    is_leader: Gauge,
    elections: Counter,
    leader_changes: Counter,
    write_batch_entries: Histogram,
    write_sync_seconds: Histogram,
}

/// One task's per-peer handles (the driver's, the writer's, the snapshot sender's): each task
/// that sends keeps its own, so counting a message takes no lock. Handles of the same peer in
/// two tasks are the same metric.
///
/// Invariant: at most [`PEERS_MAX`] peers have handles of their own; the rest share the
/// handles keyed `NodeId(u64::MAX)`, labelled `peer="other"`.
pub(super) struct PeerMeters {
    node: String,
    peers: HashMap<NodeId, PeerMetrics>,
}

struct PeerMetrics {
    append_bytes: Counter,
    snapshot_bytes: Counter,
    lag_entries: Gauge,
}

/// What the driver saw when it last published, to turn changes into counts.
pub(super) struct Seen {
    commit: LogIndex,
    term: u64,
    leader: Option<NodeId>,
    last_leader: Option<NodeId>,
    candidate_term: u64,
}

impl NodeMetrics {
    pub(super) fn new(node: NodeId) -> NodeMetrics {
        let node = node.0.to_string();
        let label = || [("node", node.clone())];
        NodeMetrics {
            proposals: metrics::counter!("raft_proposals_total", &label()),
            read_barriers: metrics::counter!("raft_read_barriers_total", &label()),
            commit_index: metrics::gauge!("raft_commit_index", &label()),
            committed_entries: metrics::counter!("raft_committed_entries_total", &label()),
            applied_index: metrics::gauge!("raft_applied_index", &label()),
            applied_entries: metrics::counter!("raft_applied_entries_total", &label()),
            apply_seconds: metrics::histogram!("raft_apply_seconds", &label()),
            term: metrics::gauge!("raft_term", &label()),
            is_leader: metrics::gauge!("raft_is_leader", &label()),
            elections: metrics::counter!("raft_elections_total", &label()),
            leader_changes: metrics::counter!("raft_leader_changes_total", &label()),
            write_batch_entries: metrics::histogram!("raft_write_batch_entries", &label()),
            write_sync_seconds: metrics::histogram!("raft_write_sync_seconds", &label()),
            node,
        }
    }

    /// Per-peer handles for one task that sends.
    pub(super) fn peer_meters(&self) -> PeerMeters {
        PeerMeters {
            node: self.node.clone(),
            peers: HashMap::new(),
        }
    }

    /// The gauges at start, and what the counts start from: entries committed before this
    /// life are not counted again.
    pub(super) fn start(&self, raw: &RawNode, applied: LogIndex) -> Seen {
        self.commit_index.set(raw.commit_index().0 as f64);
        self.applied_index.set(applied.0 as f64);
        self.term.set(raw.term().0 as f64);
        self.is_leader.set(0.0);
        Seen {
            commit: raw.commit_index(),
            term: raw.term().0,
            leader: None,
            last_leader: None,
            candidate_term: 0,
        }
    }

    /// Turns what changed in the protocol since the last call into counts and gauges.
    pub(super) fn observe(&self, raw: &RawNode, seen: &mut Seen) {
        let commit = raw.commit_index();
        if commit > seen.commit {
            self.committed_entries.increment(commit.0 - seen.commit.0);
            self.commit_index.set(commit.0 as f64);
            seen.commit = commit;
        }
        let term = raw.term().0;
        if term != seen.term {
            self.term.set(term as f64);
            seen.term = term;
        }
        if raw.role() == Role::Candidate && seen.candidate_term != term {
            seen.candidate_term = term;
            self.elections.increment(1);
        }
        let leader = raw.leader();
        if leader != seen.leader {
            // A change is a leader known that differs from the last one known (the gap of an
            // election between two terms of the same leader is none).
            if leader.is_some() && leader != seen.last_leader {
                self.leader_changes.increment(1);
                seen.last_leader = leader;
            }
            self.is_leader
                .set(if leader == Some(raw.id()) { 1.0 } else { 0.0 });
            seen.leader = leader;
        }
    }

    /// A write group became durable: `entries` log entries in `took`.
    pub(super) fn written(&self, entries: usize, took: Duration) {
        self.write_batch_entries.record(entries as f64);
        self.write_sync_seconds.record(took.as_secs_f64());
    }

    /// A batch of committed entries was applied up to `last`: `entries` of them in `took`.
    pub(super) fn applied(&self, last: LogIndex, entries: u64, took: Duration) {
        self.applied_entries.increment(entries);
        self.applied_index.set(last.0 as f64);
        self.apply_seconds.record(took.as_secs_f64());
    }
}

impl PeerMeters {
    /// A tick on the leader: each follower's lag in entries.
    pub(super) fn observe_lag(&mut self, raw: &RawNode) {
        if raw.role() != Role::Leader {
            return;
        }
        let last = raw.last_index().0;
        for (peer, match_index) in raw.follower_matches() {
            self.with_peer(peer, |p| {
                p.lag_entries.set(last.saturating_sub(match_index.0) as f64)
            });
        }
    }

    /// Counts the bytes a message carries to its peer.
    pub(super) fn sent(&mut self, message: &Message) {
        match &message.body {
            MessageBody::Append { entries, .. } if !entries.is_empty() => {
                let bytes: usize = entries.iter().map(|e| e.payload.payload_bytes()).sum();
                self.with_peer(message.to, |p| p.append_bytes.increment(bytes as u64));
            }
            MessageBody::SnapshotChunk { len, .. } => {
                self.with_peer(message.to, |p| p.snapshot_bytes.increment(*len));
            }
            _ => {}
        }
    }

    fn with_peer(&mut self, peer: NodeId, record: impl FnOnce(&PeerMetrics)) {
        let peers = &mut self.peers;
        let key = if peers.len() < PEERS_MAX || peers.contains_key(&peer) {
            peer
        } else {
            NodeId(u64::MAX)
        };
        let node = &self.node;
        let handles = peers.entry(key).or_insert_with(|| {
            let peer = if key == NodeId(u64::MAX) {
                "other".to_string()
            } else {
                key.0.to_string()
            };
            let labels = [("node", node.clone()), ("peer", peer)];
            PeerMetrics {
                append_bytes: metrics::counter!("raft_append_bytes_sent_total", &labels),
                snapshot_bytes: metrics::counter!("raft_snapshot_bytes_sent_total", &labels),
                lag_entries: metrics::gauge!("raft_replication_lag_entries", &labels),
            }
        });
        record(handles);
    }
}
