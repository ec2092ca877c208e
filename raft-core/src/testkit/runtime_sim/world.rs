//! What the simulated disks, network and state machines share: the durable images, the
//! network's links and faults, the seeded RNG, the trace, and the checks that hold them to
//! Raft's promises (the protocol-level simulator's [`Invariants`] where they apply).

use super::disk::DiskFaults;
use super::network::NetworkFaults;
use crate::message::{Message, MessageBody};
use crate::network::Inbound;
use crate::sessions::SessionLimits;
use crate::testkit::sim::invariants::Invariants;
use crate::testkit::sim::rng::SimRng;
use crate::testkit::sim::DurableState;
use crate::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

/// Trace lines kept in memory at most, when a trace is kept: past it only the hash goes on.
pub const TRACE_LINES_MAX: usize = 1_000_000;

/// One node's disk as it survives a crash, and the life that may write to it.
#[derive(Debug, Default)]
pub(crate) struct Disk {
    /// What completed writes made durable: all that survives a crash.
    pub(crate) image: DurableState,
    /// Bytes written into the snapshot sinks open in the current life (received or being
    /// built), by sink. Lost at a crash.
    pub(crate) open_sinks: BTreeMap<u64, usize>,
    /// The life whose write failed, and the failure: that life's store refuses every later
    /// call with it.
    pub(crate) failed_life: Option<(u64, std::sync::Arc<crate::storage::StorageError>)>,
    /// The virtual time (ms) of the first write that failed in the current life.
    pub(crate) failed_at_ms: Option<u64>,
}

/// The shared state of one run. Every method runs under the world's lock, never across an
/// `.await`, so the single-threaded runtime sees each one as a step.
pub(crate) struct World {
    pub(crate) seed: u64,
    pub(crate) replay_hint: String,
    /// The seeded RNG every fault decision draws from, in the (deterministic) order the
    /// runtime's tasks run.
    pub(crate) rng: SimRng,
    pub(crate) invariants: Invariants,
    pub(crate) voters: Vec<NodeId>,
    pub(crate) disks: BTreeMap<NodeId, Disk>,
    /// The current life of each node. Invariant: a store or network handle of an earlier life
    /// changes nothing (its writes are dropped, its messages lost).
    pub(crate) lives: BTreeMap<NodeId, u64>,
    /// The inbox of each node that runs, with the life it belongs to.
    pub(crate) inbound: BTreeMap<NodeId, (u64, Inbound)>,
    /// Links cut, as (from, to).
    pub(crate) cuts: BTreeSet<(NodeId, NodeId)>,
    pub(crate) network_faults: NetworkFaults,
    pub(crate) disk_faults: DiskFaults,
    /// The leader of each term, from the leader messages sent in it.
    pub(crate) leaders: BTreeMap<Term, NodeId>,
    /// The first command applied at each index, by any node in any life.
    pub(crate) applied: BTreeMap<LogIndex, Bytes>,
    /// Entries known committed (a state machine applied them), with their terms.
    pub(crate) committed: BTreeMap<LogIndex, Term>,
    /// The last index each node's current life applied a command at.
    pub(crate) applied_by: BTreeMap<NodeId, LogIndex>,
    pub(crate) trace: Trace,
    pub(crate) counters: Counters,
    /// False for a disk tested alone: the conformance suite writes logs no protocol would.
    pub(crate) checking: bool,
    /// The virtual start of the run.
    pub(crate) start: tokio::time::Instant,
}

/// Counts for the run's report.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) messages_sent: u64,
    pub(crate) messages_delivered: u64,
    pub(crate) writes_durable: u64,
    pub(crate) writes_failed: u64,
    pub(crate) writes_lost: u64,
    pub(crate) snapshots_stored: u64,
}

/// A running hash of every event, and the events as text when asked for.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    pub(crate) hash: u64,
    pub(crate) lines: Option<Vec<String>>,
    line: String,
}

impl Trace {
    pub(crate) fn record(&mut self, now_ms: u64, event: std::fmt::Arguments<'_>) {
        self.line.clear();
        let _ = write!(self.line, "{now_ms:>7} {event}");
        // FNV-1a: cheap, and enough to tell two traces apart.
        let mut hash = self.hash ^ 0xcbf2_9ce4_8422_2325;
        for byte in self.line.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.hash = hash;
        if let Some(lines) = &mut self.lines {
            if lines.len() < TRACE_LINES_MAX {
                lines.push(self.line.clone());
            }
        }
    }
}

/// The world, shared by every simulated component.
pub(crate) type SharedWorld = Arc<Mutex<World>>;

pub(crate) fn lock(world: &SharedWorld) -> MutexGuard<'_, World> {
    // A panic under the lock ends the run (the main loop reports it), so poisoning only
    // matters to the tasks still winding down.
    world
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl World {
    pub(crate) fn new(
        seed: u64,
        replay_hint: String,
        voters: Vec<NodeId>,
        session_limits: SessionLimits,
        network_faults: NetworkFaults,
        disk_faults: DiskFaults,
        keep_trace: bool,
    ) -> World {
        let disks = voters.iter().map(|&id| (id, Disk::default())).collect();
        let lives = voters.iter().map(|&id| (id, 0)).collect();
        World {
            seed,
            invariants: Invariants::new(seed, replay_hint.clone(), session_limits),
            replay_hint,
            rng: SimRng::stream(seed, 0x0057_0121),
            voters,
            disks,
            lives,
            inbound: BTreeMap::new(),
            cuts: BTreeSet::new(),
            network_faults,
            disk_faults,
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            committed: BTreeMap::new(),
            applied_by: BTreeMap::new(),
            trace: Trace {
                lines: keep_trace.then(Vec::new),
                ..Trace::default()
            },
            counters: Counters::default(),
            checking: true,
            start: tokio::time::Instant::now(),
        }
    }

    /// Virtual milliseconds since the run started.
    pub(crate) fn now_ms(&self) -> u64 {
        tokio::time::Instant::now()
            .duration_since(self.start)
            .as_millis() as u64
    }

    pub(crate) fn record(&mut self, event: std::fmt::Arguments<'_>) {
        let now = self.now_ms();
        self.trace.record(now, event);
    }

    pub(crate) fn fail(&self, what: std::fmt::Arguments<'_>) -> ! {
        panic!(
            "runtime invariant violated (seed {}): {what}\nreplay: {}",
            self.seed, self.replay_hint
        )
    }

    pub(crate) fn is_current(&self, node: NodeId, life: u64) -> bool {
        self.lives.get(&node) == Some(&life)
    }

    /// `message` leaves `message.from`: checks every promise it makes against the sender's
    /// disk now (the protocol-level checker's `on_message_sent`), Election Safety for leader
    /// messages, and Log Matching for the entries an append carries.
    pub(crate) fn on_message_sent(&mut self, message: &Message) {
        let node = message.from;
        let disk = self.disks.get(&node).expect("every sender has a disk");
        // A snapshot being received: the message's own snapshot, with the most bytes any open
        // sink of this life holds (the sink does not know its snapshot until it finishes).
        let receiving = match &message.body {
            MessageBody::SnapshotResponse {
                last_index,
                checksum,
                ..
            } => disk.open_sinks.values().max().map(|&bytes| {
                let meta = crate::snapshot::SnapshotMeta {
                    last_index: *last_index,
                    last_term: Term(0),
                    membership: Default::default(),
                    data_bytes: bytes as u64,
                    checksum: *checksum,
                    format_version: 0,
                };
                (meta, bytes)
            }),
            _ => None,
        };
        self.invariants.on_message_sent(
            message,
            &disk.image,
            receiving.as_ref().map(|(meta, bytes)| (meta, *bytes)),
        );
        let leads = matches!(
            message.body,
            MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::SnapshotChunk { .. }
                | MessageBody::TimeoutNow
        );
        if leads {
            let leader = *self.leaders.entry(message.term).or_insert(node);
            if leader != node {
                self.fail(format_args!(
                    "election safety: {leader} and {node} both lead term {}",
                    message.term
                ));
            }
        }
        if let MessageBody::Append {
            prev_log_term,
            entries,
            ..
        } = &message.body
        {
            self.invariants.on_entries(node, *prev_log_term, entries);
        }
    }

    /// A write of `node` is about to become durable: `removed` leaves its log (a conflicting
    /// suffix), then `appended` follows the entry of term `previous_term` (unknown when it is
    /// purged and no snapshot ends there), then `hard_state` is saved.
    pub(crate) fn on_durable_write(
        &mut self,
        node: NodeId,
        removed: &[Entry],
        previous_term: Option<Term>,
        appended: &[Entry],
        hard_state: Option<HardState>,
    ) {
        if !self.checking {
            return;
        }
        for entry in removed {
            if self.committed.get(&entry.index) == Some(&entry.term) {
                self.fail(format_args!(
                    "{node} removed committed entry {}/{} from its durable log",
                    entry.index, entry.term
                ));
            }
        }
        if let Some(previous_term) = previous_term {
            self.invariants.on_entries(node, previous_term, appended);
        }
        if let Some(hard_state) = hard_state {
            self.invariants.on_durable_hard_state(node, hard_state);
        }
    }

    /// A write of `node` completed; its disk holds `image` now.
    pub(crate) fn after_durable_write(&mut self, node: NodeId) {
        if !self.checking {
            return;
        }
        let disk = &self.disks[&node];
        self.invariants.on_durable_write(node, &disk.image);
    }

    /// The state machine of `node` (in life `life`) applied `command` at `index`. Applies of
    /// a life that ended are not the node's any more and are left out.
    pub(crate) fn on_apply(&mut self, node: NodeId, life: u64, index: LogIndex, command: &Bytes) {
        if !self.is_current(node, life) {
            return;
        }
        match self.applied.get(&index) {
            Some(first) if first != command => self.fail(format_args!(
                "state machine safety: {node} applied {command:?} at {index}, where {first:?} \
                 was applied before"
            )),
            Some(_) => {}
            None => {
                self.applied.insert(index, command.clone());
            }
        }
        let applied = self.applied_by.entry(node).or_default();
        *applied = (*applied).max(index);
        // Committed means held durably by a majority of the voters (or covered by their
        // snapshots): what a node's claims say does not count.
        let mut holders = Vec::new();
        let mut term = None;
        for voter in &self.voters {
            let image = &self.disks[voter].image;
            if image.snapshot_index() >= index {
                holders.push(*voter);
                continue;
            }
            if let Some(entry) = image.entry(index) {
                if command_of(&entry.payload) == Some(command) {
                    holders.push(*voter);
                    term = Some(entry.term);
                }
            }
        }
        if holders.len() * 2 <= self.voters.len() {
            self.fail(format_args!(
                "{node} applied {command:?} at {index}, which only {holders:?} of the voters \
                 {:?} hold durably",
                self.voters
            ));
        }
        if let Some(term) = term {
            self.committed.entry(index).or_insert(term);
        }
    }
}

/// The command an entry carries for the state machine, if any.
pub(crate) fn command_of(payload: &EntryPayload) -> Option<&Bytes> {
    match payload {
        EntryPayload::Command(data) => Some(data),
        EntryPayload::SessionCommand(command) => Some(&command.command),
        EntryPayload::Blank | EntryPayload::Membership(_) => None,
    }
}
