//! The simulated cluster: N protocol instances, each with a simulated disk and state machine,
//! joined by a simulated network, on one virtual clock.

use super::invariants::Invariants;
use super::kv::{self, KvReplica, KvStore};
use super::rng::{mix, SimRng};
use super::trace::{ShowEntries, ShowMessage, Trace, TRACE_BYTES_MAX_DEFAULT};
use crate::config::Config;
use crate::membership::{MembershipChange, MembershipError};
use crate::message::{Message, MessageBody};
use crate::protocol::plan::{self, ReadyPlan, WriteGroup, WriteJob, WriteStep};
use crate::protocol::{
    ProposeError, RawNode, Ready, Restore, Role, SnapshotRequest, SnapshotWrite, TransferError,
};
use crate::sessions::{SessionError, SessionLimits, SessionTable};
use crate::snapshot::SnapshotMeta;
use crate::storage::LogWrite;
use crate::testkit::linearizability::{KvInput, KvOutput};
use crate::types::{Entry, HardState, LogIndex, NodeId, ProposalId, SessionId, SessionTag, Term};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// Most messages in flight at once; more means a runaway (a bug), and the run stops.
pub const MESSAGES_IN_FLIGHT_MAX: usize = 1 << 20;
/// Most writes one node may have in flight; more means a runaway, and the run stops.
pub const WRITES_IN_FLIGHT_MAX: usize = 1 << 16;
/// Most empty readies a node may hand out in a row while `has_ready` says there is work: past
/// it the simulator calls it a spin (a `has_ready` that never turns false).
pub const EMPTY_READIES_MAX: usize = 4;
/// Most readies one input may produce in a row (one per apply batch while a restarted node
/// replays its log, so this is large); past it the run stops as a runaway.
pub const READY_ROUNDS_MAX: usize = 1 << 20;
/// Most delivery rounds [`Cluster::stabilize`] runs before it calls the cluster unstable.
pub const STABILIZE_ROUNDS_MAX: usize = 10_000;
/// Most proposal outcomes kept before [`Cluster::take_outcomes`] collects them.
pub const OUTCOMES_UNTAKEN_MAX: usize = 1 << 20;
/// Most readies kept by [`ClusterBuilder::record_readies`]; older ones are dropped first.
pub const READY_RECORDS_MAX: usize = 1 << 16;

/// How time passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// Nothing happens unless asked: no automatic ticks, messages wait for
    /// [`Cluster::deliver_all`], writes complete as soon as a ready is handled. For scenario
    /// tests.
    Manual,
    /// Every node ticks every `tick_ms` plus its own fixed skew (up to `tick_skew_ms_max`) plus
    /// up to `tick_jitter_ms` of virtual time, from a seeded phase; messages and writes complete
    /// after seeded delays. For randomized runs.
    ///
    /// A node's tick interval thus stays within `[tick_ms, tick_ms + tick_skew_ms_max +
    /// tick_jitter_ms]`: clocks run at different rates, within that bound. Lease reads assume
    /// such a bound (see [`crate::config::Config::lease_reads`]); [`Timing::tick_rate_ratio_max`]
    /// gives it.
    Simulated {
        /// Virtual milliseconds between two ticks of a node.
        tick_ms: u64,
        /// Extra random milliseconds added to each tick interval (jitter).
        tick_jitter_ms: u64,
        /// Largest fixed extra interval of one node's ticks, drawn per node from the seed: a
        /// clock that runs slow for good (drift).
        tick_skew_ms_max: u64,
    },
}

impl Timing {
    /// With simulated timing, the most one node's tick interval can exceed another's, as a
    /// ratio (slowest over fastest); `None` for manual timing.
    pub fn tick_rate_ratio_max(&self) -> Option<f64> {
        match *self {
            Timing::Manual => None,
            Timing::Simulated {
                tick_ms,
                tick_jitter_ms,
                tick_skew_ms_max,
            } => {
                let slowest = tick_ms + tick_skew_ms_max + tick_jitter_ms;
                Some(slowest as f64 / tick_ms.max(1) as f64)
            }
        }
    }
}

/// What the network does to messages. Each message is dropped with `drop_probability`, else
/// delivered after a delay in `[delay_ms_min, delay_ms_max]`, or with `long_delay_probability`
/// after up to `long_delay_ms_max`; with `duplicate_probability` a second copy travels with its
/// own delay. A link keeps its messages in order (as transports must within a lane), except
/// that a message overtakes or falls behind the others with `reorder_probability`, and a long
/// delay always lets later messages pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetworkFaults {
    /// Chance a message is lost.
    pub drop_probability: f64,
    /// Chance a message is delivered twice.
    pub duplicate_probability: f64,
    /// Chance a message ignores the order of its link (reordering).
    pub reorder_probability: f64,
    /// Shortest delay, in virtual milliseconds.
    pub delay_ms_min: u64,
    /// Longest ordinary delay, in virtual milliseconds.
    pub delay_ms_max: u64,
    /// Chance a message is held back much longer (so it arrives stale).
    pub long_delay_probability: f64,
    /// Longest such delay, in virtual milliseconds.
    pub long_delay_ms_max: u64,
    /// Chance that a message in flight to or from a node survives that node's crash (the
    /// network does not know a process died): it arrives as scheduled, at the node's next
    /// life if it has restarted by then (else it is lost), and with `duplicate_probability`
    /// a second copy arrives up to `long_delay_ms_max` later. 0 drops every such message.
    pub crash_survive_probability: f64,
}

impl NetworkFaults {
    /// A perfect network: no loss, no duplicates, no delay.
    pub const NONE: NetworkFaults = NetworkFaults {
        drop_probability: 0.0,
        duplicate_probability: 0.0,
        reorder_probability: 0.0,
        delay_ms_min: 0,
        delay_ms_max: 0,
        long_delay_probability: 0.0,
        long_delay_ms_max: 0,
        crash_survive_probability: 0.0,
    };
}

/// How long a disk takes to make a write durable: a delay in `[write_delay_ms_min,
/// write_delay_ms_max]` virtual milliseconds, writes completing in order; with
/// `slow_write_probability` an fsync stalls for `[slow_write_ms_min, slow_write_ms_max]`
/// instead (the writes queued behind it wait too). With `write_fail_probability` a write
/// fails: nothing of it becomes durable and the node fail-stops, as a driver must on a
/// storage error (it releases none of the write's messages and never reports it persisted);
/// it restarts from its disk after up to `fail_restart_ms_max`.
///
/// The disk writes as the runtime's writer does, with the same pieces
/// ([`crate::protocol::plan`]): it takes every queued job as one group (group commit), holds a
/// group whose writes may all wait ([`Ready::write_may_wait`]) for up to
/// `leader_write_hold_ms` (the runtime's `leader_write_delay_max`), and releases a group's
/// messages once all of it is durable.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiskTiming {
    /// Fastest write.
    pub write_delay_ms_min: u64,
    /// Slowest write.
    pub write_delay_ms_max: u64,
    /// Chance that a write stalls.
    pub slow_write_probability: f64,
    /// Shortest stall, in virtual milliseconds.
    pub slow_write_ms_min: u64,
    /// Longest stall, in virtual milliseconds.
    pub slow_write_ms_max: u64,
    /// Chance that a write fails.
    pub write_fail_probability: f64,
    /// Longest time a node that fail-stopped stays down.
    pub fail_restart_ms_max: u64,
    /// Longest time a group of writes that may all wait is held for a later one (0: never).
    pub leader_write_hold_ms: u64,
}

impl DiskTiming {
    /// A disk that completes every write at once and never fails.
    pub const INSTANT: DiskTiming = DiskTiming {
        write_delay_ms_min: 0,
        write_delay_ms_max: 0,
        slow_write_probability: 0.0,
        slow_write_ms_min: 0,
        slow_write_ms_max: 0,
        write_fail_probability: 0.0,
        fail_restart_ms_max: 0,
        leader_write_hold_ms: 0,
    };
}

/// A set of cut links made by [`Cluster::partition`], [`Cluster::isolate`] or
/// [`Cluster::cut_one_way`], healed with [`Cluster::heal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CutId(pub u64);

/// How a proposal ended, as its proposer saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposalOutcome {
    /// Its entry applied at the proposer, with the state machine's answer (`None` for bytes that
    /// are not a key-value command, and for entries without a command).
    Applied {
        /// The proposer.
        node: NodeId,
        /// Where the entry is.
        index: LogIndex,
        /// Its term.
        term: Term,
        /// The state machine's answer.
        output: Option<KvOutput>,
        /// For a command in a session that the session table kept from the state machine (a
        /// copy of a command applied before: a retry, a duplicated forward), where the first
        /// copy applied; `output` is the answer it got then. `None` when the state machine
        /// applied this entry's command.
        duplicate_of: Option<LogIndex>,
        /// Virtual time of the answer.
        at_ms: u64,
    },
    /// Its entry, a command in a session, applied at the proposer, but the session table
    /// answered it without the state machine and without an answer: the command applied once
    /// before and its answer was not kept ([`SessionError::AnswerNotKept`]), or the session
    /// had moved past it ([`SessionError::SequenceStale`], never applied).
    Session {
        /// The proposer.
        node: NodeId,
        /// Where the entry is.
        index: LogIndex,
        /// Why there is no answer.
        error: SessionError,
        /// Virtual time of the answer.
        at_ms: u64,
    },
    /// The protocol reported it failed.
    Failed {
        /// The proposer.
        node: NodeId,
        /// Why.
        error: ProposeError,
        /// Virtual time of the answer.
        at_ms: u64,
    },
    /// A read without the log ([`Cluster::read_kv`]) was served: the node learnt a read index
    /// and answered from its state machine once it had applied that far.
    Read {
        /// The node that served it.
        node: NodeId,
        /// The read index the protocol gave.
        index: LogIndex,
        /// The state machine's answer (the key's value).
        output: KvOutput,
        /// Virtual time of the answer.
        at_ms: u64,
    },
    /// The proposer crashed before answering: the outcome is unknown.
    Lost {
        /// The proposer.
        node: NodeId,
        /// Virtual time of the crash.
        at_ms: u64,
    },
}

/// What a node's simulated disk holds: exactly what completed writes made durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableState {
    /// The last hard state written.
    pub hard_state: HardState,
    /// The log, starting at `first_index`.
    pub entries: Vec<Entry>,
    /// The index of the first entry held (1 until the log is purged).
    pub first_index: LogIndex,
    /// The latest complete snapshot, with its data.
    pub snapshot: Option<(SnapshotMeta, Bytes)>,
}

impl Default for DurableState {
    fn default() -> Self {
        DurableState {
            hard_state: HardState::default(),
            entries: Vec::new(),
            first_index: LogIndex(1),
            snapshot: None,
        }
    }
}

impl DurableState {
    /// The last durable index.
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.first_index.0 + self.entries.len() as u64 - 1)
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let k = index.0.checked_sub(self.first_index.0)?;
        self.entries.get(k as usize)
    }

    /// The last index of the snapshot held (0 without one).
    pub fn snapshot_index(&self) -> LogIndex {
        self.snapshot
            .as_ref()
            .map_or(LogIndex(0), |(meta, _)| meta.last_index)
    }
}

/// A ready as a node handed it out, kept by [`ClusterBuilder::record_readies`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyRecord {
    /// The node.
    pub node: NodeId,
    /// The ready's number.
    pub number: u64,
    /// Its write.
    pub write: LogWrite,
    /// Messages it allowed at once.
    pub messages: Vec<Message>,
    /// Messages it held until the write was durable.
    pub messages_after_write: Vec<Message>,
    /// Indexes of the entries it handed to the state machine.
    pub committed: Vec<LogIndex>,
}

/// Counters of what happened in a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Events processed (deliveries, ticks, write completions, driver timers, commands).
    pub steps: u64,
    /// Messages nodes sent.
    pub messages_sent: u64,
    /// Messages a node received.
    pub messages_delivered: u64,
    /// Messages the network dropped at random.
    pub messages_dropped: u64,
    /// Extra copies the network made.
    pub messages_duplicated: u64,
    /// Messages that left their link's order (reordered or held back long).
    pub messages_reordered: u64,
    /// Messages lost to a cut link.
    pub messages_cut: u64,
    /// Messages held back on a link ([`Cluster::hold_back`]).
    pub messages_held: u64,
    /// Messages lost because the sender or receiver crashed.
    pub messages_lost_to_crashes: u64,
    /// Messages delivered to a later life of their receiver, or from an earlier life of
    /// their sender, than the one they were sent to or from.
    pub messages_across_restarts: u64,
    /// Writes that stalled (a slow fsync).
    pub writes_slow: u64,
    /// Writes that failed (each fail-stopped its node).
    pub writes_failed: u64,
    /// Writes that became durable.
    pub writes_completed: u64,
    /// Writes lost in crashes.
    pub writes_lost: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Node restarts.
    pub restarts: u64,
    /// Restarts with a wiped disk, in a new incarnation.
    pub amnesias: u64,
    /// Times a node became leader.
    pub leader_elections: u64,
    /// Proposals made.
    pub proposals: u64,
    /// Reads without the log asked for ([`Cluster::read_kv`]).
    pub reads: u64,
    /// Of those, reads a leader of several voters answered at once: served from its lease.
    pub lease_reads: u64,
    /// Leadership transfers a leader accepted ([`Cluster::transfer_leadership`]).
    pub transfers: u64,
    /// Writes that carried snapshot data or a purge.
    pub snapshot_writes: u64,
    /// Snapshot chunks sent.
    pub snapshot_chunks_sent: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Snapshots built by state machines.
    pub snapshots_built: u64,
    /// Membership changes accepted by a leader.
    pub membership_changes: u64,
    /// Proposals made in a client session ([`Cluster::propose_in_session`]).
    pub session_proposals: u64,
    /// Copies of commands in sessions that a node's session table kept from its state machine
    /// (each node's count: a copy in the log counts once per node that applies it).
    pub session_copies_filtered: u64,
}

/// A leadership transfer the protocol abandoned ([`Ready::transfer_failed`]), with the state of
/// the node that reported it at that moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferFailure {
    /// The node that was handing over.
    pub node: NodeId,
    /// Why it gave up.
    pub error: TransferError,
    /// Its role when it reported it.
    pub role: Role,
    /// Its term when it reported it.
    pub term: Term,
    /// Virtual time of the report.
    pub at_ms: u64,
}

/// A read without the log that has no answer yet.
#[derive(Clone, Debug)]
struct PendingRead {
    node: NodeId,
    key: String,
    /// How many entries the cluster was known to have committed when the read was asked:
    /// its read index may not be lower (every one of them may have been acknowledged).
    committed_at_call: usize,
}

/// Builds a [`Cluster`]. Defaults: seed 0, [`Config::new`] settings, manual timing, a perfect
/// network and disk, no trace.
#[derive(Debug)]
pub struct ClusterBuilder {
    voters: usize,
    spares: usize,
    seed: u64,
    template: Config,
    restores: BTreeMap<NodeId, Restore>,
    timing: Timing,
    network: NetworkFaults,
    disk: DiskTiming,
    trace: bool,
    trace_bytes_max: usize,
    replay_hint: String,
    record_readies: bool,
    forward_sessions: bool,
    clocks_at_extremes: bool,
}

impl ClusterBuilder {
    /// Adds `count` nodes after the voters that start outside the cluster (with no initial
    /// voters, as joining nodes do): add them with [`Cluster::change_membership`].
    pub fn spare_nodes(mut self, count: usize) -> Self {
        self.spares = count;
        self
    }

    /// The seed every random choice derives from.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Adjusts the protocol configuration every node starts from (`id`, `voters` and `seed` are
    /// set per node).
    pub fn config(mut self, adjust: impl FnOnce(&mut Config)) -> Self {
        adjust(&mut self.template);
        self
    }

    /// Starts `node` from this durable state instead of an empty one (its `applied` is
    /// ignored: the simulated state machine is in memory and replays from index 1).
    pub fn restore(mut self, node: impl Into<NodeId>, restore: Restore) -> Self {
        self.restores.insert(node.into(), restore);
        self
    }

    /// How time passes.
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// What the network does to messages.
    pub fn network(mut self, network: NetworkFaults) -> Self {
        self.network = network;
        self
    }

    /// How long writes take (with [`Timing::Simulated`]).
    pub fn disk(mut self, disk: DiskTiming) -> Self {
        self.disk = disk;
        self
    }

    /// Records a trace of every event, up to `bytes_max` bytes.
    pub fn trace(mut self, enabled: bool, bytes_max: usize) -> Self {
        self.trace = enabled;
        self.trace_bytes_max = bytes_max;
        self
    }

    /// The command printed with a violation, to replay the failing run.
    pub fn replay_hint(mut self, hint: impl Into<String>) -> Self {
        self.replay_hint = hint.into();
        self
    }

    /// Keeps a [`ReadyRecord`] of every ready (see [`Cluster::ready_records`]).
    pub fn record_readies(mut self, enabled: bool) -> Self {
        self.record_readies = enabled;
        self
    }

    /// Makes every node forward proposals in one-off sessions, as the runtime does
    /// ([`RawNode::set_forward_sessions`], numbered from a value drawn from the seed per node
    /// and life). Off by default, so scenarios see the protocol's own forward de-duplication.
    pub fn forward_sessions(mut self, enabled: bool) -> Self {
        self.forward_sessions = enabled;
        self
    }

    /// With [`Timing::Simulated`], gives each node's clock either no skew or the largest
    /// (`tick_skew_ms_max`), drawn per node from the seed, instead of any skew in between: the
    /// clocks then sit at both ends of the rates the timing allows, as far apart as a lease's
    /// drift assumption lets them be. Off by default.
    pub fn clocks_at_extremes(mut self, enabled: bool) -> Self {
        self.clocks_at_extremes = enabled;
        self
    }

    /// Builds the cluster and starts every node.
    pub fn build(self) -> Cluster {
        Cluster::start(self)
    }
}

/// A message on its way, with the lives of its two ends when it left.
#[derive(Clone, Debug)]
struct Envelope {
    message: Message,
    from_incarnation: u64,
    to_incarnation: u64,
}

/// The group of writes the disk is making durable.
#[derive(Debug)]
struct GroupInFlight {
    group: WriteGroup,
    /// Jobs merged into it.
    jobs: usize,
    /// The disk will fail this group (the node fail-stops when it would complete).
    fails: bool,
}

/// Something scheduled on the virtual clock other than a message.
#[derive(Clone, Copy, Debug)]
enum Timer {
    Tick {
        node: NodeId,
        incarnation: u64,
    },
    WriteDone {
        node: NodeId,
        incarnation: u64,
    },
    /// Writes held back for a later one ([`DiskTiming::leader_write_hold_ms`]) go now.
    WriteHoldEnds {
        node: NodeId,
        incarnation: u64,
    },
    /// A node that fail-stopped in life `incarnation - 1` comes back.
    Restart {
        node: NodeId,
        incarnation: u64,
    },
    Driver(u64),
}

/// One simulated server.
#[derive(Debug)]
struct SimNode {
    id: NodeId,
    /// `None` while crashed.
    raw: Option<RawNode>,
    durable: DurableState,
    /// A snapshot being received: its data so far (lost in a crash).
    receiving: Option<(SnapshotMeta, Vec<u8>)>,
    /// Where received snapshot data goes, checked as the runtime's writer checks it.
    snapshot_cursor: plan::SnapshotCursor,
    /// Jobs waiting for the disk. Invariant: in ready-number order, all after `writing`'s.
    queued: VecDeque<WriteJob>,
    /// The group the disk is writing.
    writing: Option<GroupInFlight>,
    /// While queued jobs that may all wait are held: when the hold ends.
    hold_ends_ms: Option<u64>,
    /// The state machine behind its session table.
    kv: KvReplica,
    /// Reads whose read index is known, waiting for `kv` to apply it: (index, read) -> key.
    /// The value is the key and the ticks waited: a read that waits longer than
    /// `proposal_wait_ticks` (a node that stopped applying, removed without knowing) fails.
    reads_awaiting_apply: BTreeMap<(LogIndex, ProposalId), (String, u32)>,
    /// This node's fixed extra tick interval (a clock that runs slow), in virtual milliseconds.
    tick_skew_ms: u64,
    /// Grows at every crash; messages and timers of an earlier life are discarded.
    incarnation: u64,
    restarts: u64,
    /// How many times the node restarted with a wiped disk: its protocol
    /// [`Incarnation`](crate::Incarnation) ([`Cluster::restart_amnesiac`]).
    amnesias: u64,
    /// Role and term last seen, for the trace.
    seen: (Role, Term),
    /// The next write that carries anything fails ([`Cluster::fail_next_write`]).
    fail_next_write: bool,
}

/// What [`Cluster::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stepped {
    /// Delivered (or lost) a message, ticked a node or completed a write.
    Internal,
    /// A timer set with [`Cluster::schedule`] fired: the caller handles `tag`.
    Timer(u64),
}

/// A simulated cluster. See the [module documentation](super) for an example.
#[derive(Debug)]
pub struct Cluster {
    seed: u64,
    now_ms: u64,
    template: Config,
    timing: Timing,
    network: NetworkFaults,
    disk: DiskTiming,
    /// `nodes[k]` is node `k + 1`.
    nodes: Vec<SimNode>,
    /// Nodes `1..=initial_voters` start as the cluster; the others start outside it.
    initial_voters: usize,
    cuts: BTreeMap<CutId, Vec<(NodeId, NodeId)>>,
    next_cut: u64,
    /// Messages by (delivery time, sequence number).
    in_flight: BTreeMap<(u64, u64), Envelope>,
    /// The latest delivery time of an in-order message on each link (from, to): the next
    /// in-order message on that link arrives no earlier.
    link_tail_ms: BTreeMap<(NodeId, NodeId), u64>,
    /// Links (from, to) whose messages are held back until the time given
    /// ([`Cluster::hold_back`]).
    held_until_ms: BTreeMap<(NodeId, NodeId), u64>,
    /// Timers by (time, sequence number); sequence numbers are shared with messages, so equal
    /// times resolve in scheduling order.
    timers: BTreeMap<(u64, u64), Timer>,
    sequence: u64,
    network_rng: SimRng,
    disk_rng: SimRng,
    tick_rng: SimRng,
    invariants: Invariants,
    trace: Trace,
    stats: ClusterStats,
    /// Proposals not answered yet, and their proposer.
    pending: BTreeMap<ProposalId, NodeId>,
    outcomes: BTreeMap<ProposalId, ProposalOutcome>,
    next_proposal: u64,
    ready_records: Option<VecDeque<ReadyRecord>>,
    /// Reads without the log not answered yet.
    pending_reads: BTreeMap<ProposalId, PendingRead>,
    /// The read [`Cluster::read_kv`] is asking for, and whether its index came at once.
    read_in_call: Option<(ProposalId, bool)>,
    /// Transfers abandoned and not yet taken by [`Cluster::take_transfer_failures`].
    transfer_failures: Vec<TransferFailure>,
    /// The bounds of every node's session table (from the configuration's template).
    session_limits: SessionLimits,
    /// Nodes forward proposals in one-off sessions ([`ClusterBuilder::forward_sessions`]).
    forward_sessions: bool,
}

impl Cluster {
    /// A builder for a cluster of `voters` nodes, `n1` to `n{voters}`.
    pub fn builder(voters: usize) -> ClusterBuilder {
        assert!(voters >= 1, "a cluster needs a node");
        let ids: Vec<NodeId> = (1..=voters as u64).map(NodeId).collect();
        ClusterBuilder {
            voters,
            spares: 0,
            seed: 0,
            template: Config::new(NodeId(1), ids),
            restores: BTreeMap::new(),
            timing: Timing::Manual,
            network: NetworkFaults::NONE,
            disk: DiskTiming::INSTANT,
            trace: false,
            trace_bytes_max: TRACE_BYTES_MAX_DEFAULT,
            replay_hint: "rerun the test that printed this".into(),
            record_readies: false,
            forward_sessions: false,
            clocks_at_extremes: false,
        }
    }

    /// A cluster of `voters` nodes with every default (manual timing, perfect network).
    pub fn new(voters: usize) -> Cluster {
        Cluster::builder(voters).build()
    }

    fn start(builder: ClusterBuilder) -> Cluster {
        let seed = builder.seed;
        let session_limits = SessionLimits::from_config(&builder.template);
        let mut cluster = Cluster {
            seed,
            now_ms: 0,
            template: builder.template,
            timing: builder.timing,
            network: builder.network,
            disk: builder.disk,
            nodes: Vec::new(),
            initial_voters: builder.voters,
            cuts: BTreeMap::new(),
            next_cut: 1,
            in_flight: BTreeMap::new(),
            link_tail_ms: BTreeMap::new(),
            held_until_ms: BTreeMap::new(),
            timers: BTreeMap::new(),
            sequence: 0,
            network_rng: SimRng::stream(seed, 1),
            disk_rng: SimRng::stream(seed, 2),
            tick_rng: SimRng::stream(seed, 3),
            invariants: Invariants::new(seed, builder.replay_hint, session_limits),
            trace: Trace::new(builder.trace, builder.trace_bytes_max),
            stats: ClusterStats::default(),
            pending: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            next_proposal: 1,
            ready_records: builder.record_readies.then(VecDeque::new),
            pending_reads: BTreeMap::new(),
            read_in_call: None,
            transfer_failures: Vec::new(),
            session_limits,
            forward_sessions: builder.forward_sessions,
        };
        let mut skew_rng = SimRng::stream(seed, 6);
        let skew_max = match builder.timing {
            Timing::Simulated {
                tick_skew_ms_max, ..
            } => tick_skew_ms_max,
            Timing::Manual => 0,
        };
        let mut restores = builder.restores;
        for k in 0..builder.voters + builder.spares {
            let id = NodeId(k as u64 + 1);
            let restore = restores.remove(&id).unwrap_or_default();
            cluster
                .invariants
                .on_preset(id, restore.hard_state, &restore.entries);
            cluster.nodes.push(SimNode {
                id,
                raw: None,
                durable: DurableState {
                    hard_state: restore.hard_state,
                    first_index: restore.entries.first().map_or(LogIndex(1), |e| e.index),
                    entries: restore.entries,
                    snapshot: None,
                },
                receiving: None,
                snapshot_cursor: plan::SnapshotCursor::default(),
                queued: VecDeque::new(),
                writing: None,
                hold_ends_ms: None,
                kv: KvReplica::new(session_limits),
                reads_awaiting_apply: BTreeMap::new(),
                tick_skew_ms: if builder.clocks_at_extremes {
                    skew_max * u64::from(skew_rng.chance(0.5))
                } else {
                    skew_rng.between(0, skew_max)
                },
                incarnation: 0,
                restarts: 0,
                amnesias: 0,
                seen: (Role::Follower, Term(0)),
                fail_next_write: false,
            });
        }
        assert!(
            restores.is_empty(),
            "restores for nodes outside the cluster"
        );
        for k in 0..cluster.nodes.len() {
            cluster.start_node(k);
        }
        cluster.after_step();
        cluster
    }

    fn fail(&self, what: fmt::Arguments<'_>) -> ! {
        self.invariants.fail(what)
    }

    fn index_of(&self, node: NodeId) -> usize {
        let k = node.0.wrapping_sub(1) as usize;
        if k >= self.nodes.len() {
            panic!(
                "{node} is not in this cluster of {} nodes",
                self.nodes.len()
            );
        }
        k
    }

    fn start_node(&mut self, k: usize) {
        let node = &self.nodes[k];
        let id = node.id;
        let mut config = self.template.clone();
        config.id = id;
        config.voters = if k < self.initial_voters {
            (1..=self.initial_voters as u64).map(NodeId).collect()
        } else {
            Vec::new()
        };
        config.seed = mix(mix(self.seed, id.0), node.restarts);
        config.incarnation = crate::Incarnation(node.amnesias);
        self.drop_entries_replaced_by_snapshot(k);
        let node = &self.nodes[k];
        let limits = self.session_limits;
        let (kv, applied) = match &node.durable.snapshot {
            Some((meta, data)) => match KvReplica::from_snapshot(data, meta.last_index, limits) {
                Ok(kv) => (kv, meta.last_index),
                Err(why) => self.fail(format_args!(
                    "{id} holds a snapshot that does not decode: {why}"
                )),
            },
            None => (KvReplica::new(limits), LogIndex(0)),
        };
        let restore = Restore {
            hard_state: node.durable.hard_state,
            snapshot: node.durable.snapshot.as_ref().map(|(meta, _)| meta.clone()),
            entries: node.durable.entries.clone(),
            applied,
        };
        let mut raw = match RawNode::new(config, restore) {
            Ok(raw) => raw,
            Err(error) => self.fail(format_args!("{id} cannot start from its disk: {error}")),
        };
        if self.forward_sessions {
            // What the runtime draws at random, from the seed: a new range every life.
            let first = mix(mix(mix(self.seed, 0x5e55), id.0), node.restarts);
            raw.set_forward_sessions(SessionId(first));
        }
        self.invariants.on_start(id, &raw, applied);
        let node = &mut self.nodes[k];
        node.seen = (raw.role(), raw.term());
        node.raw = Some(raw);
        node.kv = kv;
        let incarnation = node.incarnation;
        if let Timing::Simulated { tick_ms, .. } = self.timing {
            let phase = 1 + self.tick_rng.below(tick_ms.max(1));
            self.add_timer(
                self.now_ms + phase,
                Timer::Tick {
                    node: id,
                    incarnation,
                },
            );
        }
        self.process_ready(id);
    }

    /// What the runtime does at start-up: entries a crash left below a snapshot that does
    /// not match them (an install cut short before its purge) are dropped.
    fn drop_entries_replaced_by_snapshot(&mut self, k: usize) {
        let durable = &mut self.nodes[k].durable;
        let Some((meta, _)) = &durable.snapshot else {
            return;
        };
        let at = meta.last_index;
        let matches = match durable.entry(at) {
            Some(entry) => entry.term == meta.last_term,
            None => durable.first_index == at.next(),
        };
        if !matches {
            durable.entries.clear();
            durable.first_index = at.next();
        }
    }

    fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    fn add_timer(&mut self, at_ms: u64, timer: Timer) {
        let key = (at_ms.max(self.now_ms), self.next_sequence());
        self.timers.insert(key, timer);
    }

    // ----- the ready loop -----------------------------------------------------------------

    /// Handles readies of `node` until it has no more work.
    fn process_ready(&mut self, node: NodeId) {
        let k = self.index_of(node);
        let mut empty_in_a_row = 0;
        for _ in 0..READY_ROUNDS_MAX {
            let Some(raw) = self.nodes[k].raw.as_mut() else {
                return;
            };
            if !raw.has_ready() {
                return;
            }
            let ready = raw.ready();
            empty_in_a_row = if ready.is_empty() {
                empty_in_a_row + 1
            } else {
                0
            };
            if empty_in_a_row > EMPTY_READIES_MAX {
                self.fail(format_args!(
                    "{node} handed out {empty_in_a_row} empty readies in a row: has_ready \
                     says there is work when there is none"
                ));
            }
            self.handle_ready(k, ready);
        }
        self.fail(format_args!(
            "{node} handed out {READY_ROUNDS_MAX} readies in a row"
        ))
    }

    /// Carries out a ready as the runtime does ([`ReadyPlan`]), with the write completing
    /// later.
    fn handle_ready(&mut self, k: usize, ready: Ready) {
        let id = self.nodes[k].id;
        self.record_ready(id, &ready);
        let plan = ReadyPlan::new(ready);
        for message in plan.send_now {
            self.check_promises(k, &message);
            self.send(message);
        }
        for chunk in plan.snapshot_chunks {
            self.send_snapshot_chunk(k, chunk);
        }
        if let Some(job) = plan.write {
            self.queue_write(k, job);
            if self.nodes[k].raw.is_none() {
                return; // the write failed at once (manual timing) and the node fail-stopped
            }
        }
        if let Some(meta) = plan.install_snapshot {
            self.install_snapshot(k, meta);
        }
        self.apply(k, &plan.apply);
        if let Some(request) = plan.build_snapshot {
            self.build_snapshot(k, request);
        }
        self.reads_indexed(k, plan.reads, plan.failed_reads);
        self.serve_reads(k);
        if let Some(error) = plan.transfer_failed {
            self.transfer_failed(k, error);
        }
        for (proposal, error) in plan.failed_proposals {
            self.trace_line(format_args!(
                "{id} proposal {:x} failed: {error:?}",
                proposal.0
            ));
            let at_ms = self.now_ms;
            self.finish(
                proposal,
                ProposalOutcome::Failed {
                    node: id,
                    error,
                    at_ms,
                },
            );
        }
    }

    fn record_ready(&mut self, node: NodeId, ready: &Ready) {
        if self.trace.enabled() && !ready.write.is_empty() {
            let write = &ready.write;
            self.trace_line(format_args!(
                "{node} write #{} truncate={:?} [{}] hard_state={:?}",
                ready.number,
                write.truncate_from.map(|i| i.0),
                ShowEntries(&write.entries),
                write
                    .hard_state
                    .map(|h| (h.term.0, h.vote.map(|v| v.0), h.commit.0)),
            ));
        }
        let Some(records) = self.ready_records.as_mut() else {
            return;
        };
        if records.len() >= READY_RECORDS_MAX {
            records.pop_front();
        }
        records.push_back(ReadyRecord {
            node,
            number: ready.number,
            write: ready.write.clone(),
            messages: ready.messages.clone(),
            messages_after_write: ready.messages_after_write.clone(),
            committed: ready.committed.iter().map(|c| c.entry.index).collect(),
        });
    }

    /// Queues a job for the disk, which starts on it when idle.
    fn queue_write(&mut self, k: usize, job: WriteJob) {
        let node = &mut self.nodes[k];
        let in_flight = node.queued.len() + node.writing.as_ref().map_or(0, |w| w.jobs);
        if in_flight >= WRITES_IN_FLIGHT_MAX {
            let id = node.id;
            self.fail(format_args!(
                "{id} has {WRITES_IN_FLIGHT_MAX} writes in flight"
            ));
        }
        node.queued.push_back(job);
        self.start_write(k);
    }

    /// An idle disk takes every queued job as one group, as the runtime's writer does: at
    /// once, unless they may all wait and the hold has not ended.
    fn start_write(&mut self, k: usize) {
        let node = &mut self.nodes[k];
        if node.writing.is_some() || node.queued.is_empty() || node.raw.is_none() {
            return;
        }
        let hold_ms = self.disk.leader_write_hold_ms;
        if let Timing::Simulated { .. } = self.timing {
            node.queued.make_contiguous();
            let holding = hold_ms > 0
                && plan::group_may_wait(node.queued.as_slices().0)
                && node.hold_ends_ms.is_none_or(|end| self.now_ms < end);
            if holding {
                if node.hold_ends_ms.is_none() {
                    let end = self.now_ms + hold_ms;
                    node.hold_ends_ms = Some(end);
                    let timer = Timer::WriteHoldEnds {
                        node: node.id,
                        incarnation: node.incarnation,
                    };
                    self.add_timer(end, timer);
                }
                return;
            }
        }
        node.hold_ends_ms = None;
        let count = plan::group_len(&node.queued);
        let group = WriteGroup::merge(node.queued.drain(..count));
        let empty = group.is_empty();
        let delay = if empty {
            0
        } else if self.disk_rng.chance(self.disk.slow_write_probability) {
            self.stats.writes_slow += 1;
            let disk = self.disk;
            let slowest = disk.slow_write_ms_max.max(disk.slow_write_ms_min);
            self.disk_rng.between(disk.slow_write_ms_min, slowest)
        } else {
            self.disk_rng
                .between(self.disk.write_delay_ms_min, self.disk.write_delay_ms_max)
        };
        let node = &mut self.nodes[k];
        let planned = !empty && std::mem::take(&mut node.fail_next_write);
        let fails = planned || (!empty && self.disk_rng.chance(self.disk.write_fail_probability));
        node.writing = Some(GroupInFlight {
            group,
            jobs: count,
            fails,
        });
        match self.timing {
            Timing::Manual => self.complete_write(k),
            Timing::Simulated { .. } => {
                let timer = Timer::WriteDone {
                    node: node.id,
                    incarnation: node.incarnation,
                };
                self.add_timer(self.now_ms + delay, timer);
            }
        }
    }

    /// The group node `k`'s disk was writing is durable: update the disk, release the
    /// messages that waited for it, tell the protocol; then start on the next group.
    fn complete_write(&mut self, k: usize) {
        let node = &mut self.nodes[k];
        let id = node.id;
        let Some(writing) = node.writing.take() else {
            self.fail(format_args!("{id} completed a write it never queued"));
        };
        if writing.fails {
            self.nodes[k].writing = Some(writing);
            self.fail_stop(k);
            return;
        }
        let group = writing.group;
        let mut snapshot_steps = false;
        for step in group.steps {
            match step {
                WriteStep::Snapshot(write) => {
                    snapshot_steps = true;
                    self.write_snapshot_data(k, write);
                }
                WriteStep::Purge(up_to) => {
                    snapshot_steps = true;
                    self.purge(k, up_to);
                }
                WriteStep::Log(write) => self.write_log(k, write),
            }
        }
        self.stats.writes_completed += 1;
        if snapshot_steps {
            self.stats.snapshot_writes += 1;
        }
        self.trace_line(format_args!("{id} write #{} durable", group.persisted));
        for message in group.release {
            self.check_promises(k, &message);
            self.send(message);
        }
        if let Some(raw) = self.nodes[k].raw.as_mut() {
            raw.persisted(group.persisted);
        }
        self.start_write(k);
    }

    /// Received snapshot data reaches the disk, placed as the runtime's writer places it; the
    /// last piece makes the snapshot durable once its data checks out.
    fn write_snapshot_data(&mut self, k: usize, write: SnapshotWrite) {
        let node = &mut self.nodes[k];
        let id = node.id;
        let place = match node.snapshot_cursor.place(&write) {
            Ok(place) => place,
            Err(error) => self.fail(format_args!("{id}: {error}")),
        };
        if place.opens {
            node.receiving = Some((write.meta.clone(), Vec::new()));
        }
        let (_, data) = node
            .receiving
            .as_mut()
            .expect("the cursor places data only in an open sink");
        data.extend_from_slice(&write.data);
        if place.finishes {
            let (meta, data) = node.receiving.take().expect("open above");
            if crate::snapshot::checksum(&data) != meta.checksum
                || data.len() as u64 != meta.data_bytes
            {
                self.fail(format_args!(
                    "{id} finished a snapshot at {} whose data fails its checksum",
                    meta.last_index
                ));
            }
            if meta.last_index > node.durable.snapshot_index() {
                node.durable.snapshot = Some((meta, Bytes::from(data)));
            }
        }
    }

    /// The disk drops its log up to `up_to`, which its snapshot must cover.
    fn purge(&mut self, k: usize, up_to: LogIndex) {
        let node = &mut self.nodes[k];
        let id = node.id;
        let durable = &mut node.durable;
        if up_to > durable.snapshot_index() {
            let covered = durable.snapshot_index();
            self.fail(format_args!(
                "{id} purged its log up to {up_to}, beyond its snapshot at {covered}"
            ));
        }
        if up_to >= durable.first_index {
            let count = ((up_to.0 - durable.first_index.0 + 1) as usize).min(durable.entries.len());
            durable.entries.drain(..count);
            durable.first_index = up_to.next();
        }
    }

    /// One log write reaches the disk.
    fn write_log(&mut self, k: usize, write: LogWrite) {
        let node = &mut self.nodes[k];
        let id = node.id;
        let durable = &mut node.durable;
        if let Some(from) = write.truncate_from {
            let keep =
                (from.0.saturating_sub(durable.first_index.0) as usize).min(durable.entries.len());
            self.invariants.on_truncate(id, &durable.entries[keep..]);
            durable.entries.truncate(keep);
        }
        if let Some(first) = write.entries.first() {
            let previous = if first.index.prev() == durable.snapshot_index() {
                durable
                    .snapshot
                    .as_ref()
                    .map_or(Term(0), |(meta, _)| meta.last_term)
            } else {
                durable
                    .entry(first.index.prev())
                    .map_or(Term(0), |e| e.term)
            };
            self.invariants.on_entries(id, previous, &write.entries);
        }
        let durable = &mut self.nodes[k].durable;
        for entry in &write.entries {
            if entry.index != durable.last_index().next() {
                let last = durable.last_index();
                self.fail(format_args!(
                    "{id} wrote {} after {last}: a hole",
                    entry.index
                ));
            }
            durable.entries.push(entry.clone());
        }
        if let Some(hard_state) = write.hard_state {
            if hard_state.commit > durable.last_index() {
                self.fail(format_args!(
                    "{id} saved commit {} past its log",
                    hard_state.commit
                ));
            }
            self.invariants.on_durable_hard_state(id, hard_state);
            durable.hard_state = hard_state;
        }
        self.invariants.on_durable_entries(id, &write.entries);
        self.invariants.on_durable_write(id, durable);
    }

    /// A message is about to leave node `k`: every promise it makes must be durable on its
    /// disk now (see the invariants).
    fn check_promises(&mut self, k: usize, message: &Message) {
        if let MessageBody::Append {
            prev_log_term,
            entries,
            ..
        } = &message.body
        {
            // Entries exist for Log Matching once they leave their node (or reach its disk):
            // an entry that died in a crashed node's memory before either was never in a log.
            self.invariants
                .on_entries(message.from, *prev_log_term, entries);
        }
        let node = &self.nodes[k];
        let receiving = node
            .receiving
            .as_ref()
            .map(|(meta, data)| (meta, data.len()));
        self.invariants
            .on_message_sent(message, &node.durable, receiving);
    }

    /// The oldest write of node `k` failed: the node fail-stops. Nothing of the write is
    /// durable; it and every write queued after it are lost with the messages they held back,
    /// and the protocol never hears of them. The node restarts from its disk later.
    fn fail_stop(&mut self, k: usize) {
        let id = self.nodes[k].id;
        let node = &self.nodes[k];
        let queued: usize = node
            .queued
            .iter()
            .map(|job| job.messages_after_write.len())
            .sum();
        let writing = node.writing.as_ref();
        let held_back = queued + writing.map_or(0, |w| w.group.release.len());
        self.trace_line(format_args!(
            "{id} write #{} failed: fail-stop, {held_back} messages never sent",
            writing.map_or(0, |w| w.group.persisted)
        ));
        self.stats.writes_failed += 1;
        self.crash(id);
        if self.timing == Timing::Manual {
            return; // a scenario restarts it when it wants
        }
        let wait = self
            .disk_rng
            .between(1, self.disk.fail_restart_ms_max.max(1));
        let incarnation = self.nodes[k].incarnation;
        self.add_timer(
            self.now_ms + wait,
            Timer::Restart {
                node: id,
                incarnation,
            },
        );
    }

    /// Makes the next write of `node` that carries anything fail: the node fail-stops when it
    /// would complete (at once with manual timing), and stays down until restarted.
    pub fn fail_next_write(&mut self, node: impl Into<NodeId>) {
        let node = node.into();
        let k = self.index_of(node);
        self.trace_line(format_args!("{node}'s next write will fail"));
        self.nodes[k].fail_next_write = true;
    }

    /// A leader's snapshot chunk: its bytes come from the node's disk, as a driver reads them
    /// from its store. A chunk of a snapshot no longer held is dropped.
    fn send_snapshot_chunk(&mut self, k: usize, mut chunk: Message) {
        let durable = &self.nodes[k].durable;
        if let MessageBody::SnapshotChunk {
            meta,
            offset,
            data,
            len,
        } = &mut chunk.body
        {
            match &durable.snapshot {
                Some((held, bytes)) if held.same_snapshot(meta) => {
                    let start = *offset as usize;
                    *data = bytes.slice(start..start + *len as usize);
                }
                _ => return,
            }
        }
        self.stats.snapshot_chunks_sent += 1;
        self.check_promises(k, &chunk);
        self.send(chunk);
    }

    /// The state machine installs a durable received snapshot.
    fn install_snapshot(&mut self, k: usize, meta: SnapshotMeta) {
        let id = self.nodes[k].id;
        let Some((held, data)) = &self.nodes[k].durable.snapshot else {
            self.fail(format_args!(
                "{id} installs a snapshot its disk does not hold"
            ));
        };
        if held.last_index < meta.last_index {
            self.fail(format_args!(
                "{id} installs the snapshot at {} but its disk holds {}",
                meta.last_index, held.last_index
            ));
        }
        let kv = match KvReplica::from_snapshot(data, meta.last_index, self.session_limits) {
            Ok(kv) => kv,
            Err(why) => self.fail(format_args!(
                "{id} received a snapshot that does not decode: {why}"
            )),
        };
        self.trace_line(format_args!(
            "{id} installs the snapshot at {}/{} ({} bytes)",
            meta.last_index, meta.last_term, meta.data_bytes
        ));
        self.invariants.on_install(id, &meta, &kv);
        self.stats.snapshots_installed += 1;
        self.nodes[k].kv = kv;
        self.nodes[k]
            .raw
            .as_mut()
            .expect("a ready comes from a live node")
            .snapshot_installed(meta.last_index);
    }

    /// The state machine builds the snapshot asked for; the simulated disk makes it durable
    /// at once.
    fn build_snapshot(&mut self, k: usize, request: SnapshotRequest) {
        let id = self.nodes[k].id;
        let kv = &self.nodes[k].kv;
        if kv.applied_index() != request.last_index {
            let applied = kv.applied_index();
            self.fail(format_args!(
                "{id} asked for a snapshot at {} with its state machine at {applied}",
                request.last_index
            ));
        }
        // The session table heads the data, as the runtime writes it.
        let data = kv.snapshot_bytes();
        let meta = SnapshotMeta {
            last_index: request.last_index,
            last_term: request.last_term,
            membership: request.membership,
            data_bytes: data.len() as u64,
            checksum: crate::snapshot::checksum(&data),
            format_version: 1,
        };
        self.trace_line(format_args!(
            "{id} built a snapshot at {}/{} ({} bytes)",
            meta.last_index,
            meta.last_term,
            data.len()
        ));
        self.stats.snapshots_built += 1;
        let node = &mut self.nodes[k];
        if meta.last_index > node.durable.snapshot_index() {
            node.durable.snapshot = Some((meta.clone(), data));
        }
        // The entries this snapshot lets the node compact must be seen committed first.
        let raw = node.raw.as_ref().expect("a ready comes from a live node");
        self.invariants.observe(id, raw);
        let node = &mut self.nodes[k];
        node.raw
            .as_mut()
            .expect("a ready comes from a live node")
            .snapshot_built(Ok(meta));
    }

    /// Applies committed entries as the runtime's applier does: one batch through the session
    /// table ([`KvReplica::apply`]), then each proposer is answered.
    fn apply(&mut self, k: usize, committed: &[crate::protocol::CommittedEntry]) {
        let Some(last) = committed.last().map(|c| c.entry.index) else {
            return;
        };
        let id = self.nodes[k].id;
        if let Some(raw) = self.nodes[k].raw.as_ref() {
            // A commit raised in this very step is checked before anything applies it.
            self.invariants.observe(id, raw);
        }
        let entries: Vec<Entry> = committed.iter().map(|c| c.entry.clone()).collect();
        for entry in &entries {
            self.invariants.on_apply(id, entry);
        }
        let answers = self.nodes[k].kv.apply(entries);
        for answer in &answers {
            self.invariants.on_command_answered(id, answer);
            if !answer.applied() {
                self.stats.session_copies_filtered += 1;
            }
        }
        // Both lists are in log order; every command entry has an answer.
        let mut answers = answers.into_iter().peekable();
        for item in committed {
            let index = item.entry.index;
            let answer = answers.next_if(|a| a.index == index);
            let Some(proposal) = item.proposal else {
                continue;
            };
            let (term, at_ms) = (item.entry.term, self.now_ms);
            let outcome = match answer {
                None => ProposalOutcome::Applied {
                    node: id,
                    index,
                    term,
                    output: None,
                    duplicate_of: None,
                    at_ms,
                },
                Some(answer) => match answer.answer {
                    Ok(bytes) => ProposalOutcome::Applied {
                        node: id,
                        index,
                        term,
                        output: kv::decode_output(&bytes),
                        duplicate_of: answer.applied_at.filter(|at| *at != index),
                        at_ms,
                    },
                    Err(error) => ProposalOutcome::Session {
                        node: id,
                        index,
                        error,
                        at_ms,
                    },
                },
            };
            if self.trace.enabled() {
                let shown = match &outcome {
                    ProposalOutcome::Applied {
                        output,
                        duplicate_of: Some(first),
                        ..
                    } => format!("{output:?}, the answer of the copy at {first}"),
                    ProposalOutcome::Applied { output, .. } => format!("{output:?}"),
                    ProposalOutcome::Session { error, .. } => format!("{error}"),
                    other => format!("{other:?}"),
                };
                self.trace_line(format_args!(
                    "{id} proposal {:x} applied at {index}/{term}: {shown}",
                    proposal.0
                ));
            }
            self.invariants.on_acknowledged(index, term);
            self.finish(proposal, outcome);
        }
        assert!(answers.next().is_none(), "every answer belongs to an entry");
        self.nodes[k]
            .raw
            .as_mut()
            .expect("a ready comes from a live node")
            .applied(last);
    }

    /// Read indexes (and read failures) the protocol handed out: each read waits for the state
    /// machine to apply its index. A read index below what the cluster had committed when the
    /// read was asked is a stale read: the run fails.
    fn reads_indexed(
        &mut self,
        k: usize,
        reads: Vec<(ProposalId, LogIndex)>,
        failed: Vec<(ProposalId, ProposeError)>,
    ) {
        let id = self.nodes[k].id;
        let at_ms = self.now_ms;
        for (read, error) in failed {
            self.trace_line(format_args!("{id} read {:x} failed: {error:?}", read.0));
            if self.pending_reads.get(&read).is_some_and(|p| p.node == id) {
                let outcome = ProposalOutcome::Failed {
                    node: id,
                    error,
                    at_ms,
                };
                self.finish_read(read, outcome);
            }
        }
        for (read, index) in reads {
            let Some(pending) = self.pending_reads.get(&read) else {
                continue; // lost in a crash of this node's earlier life, or already answered
            };
            if pending.node != id {
                self.fail(format_args!(
                    "{id} answered read {:x}, which {} asked",
                    read.0, pending.node
                ));
            }
            if index.0 < pending.committed_at_call as u64 {
                self.fail(format_args!(
                    "stale read: {id} gave read {:x} the read index {index}, yet entries up to \
                     i{} were known committed when it was asked",
                    read.0, pending.committed_at_call
                ));
            }
            let key = pending.key.clone();
            self.trace_line(format_args!(
                "{id} read {:x} may be served at {index}",
                read.0
            ));
            if let Some((asked, at_once)) = self.read_in_call.as_mut() {
                *at_once |= *asked == read;
            }
            self.nodes[k]
                .reads_awaiting_apply
                .insert((index, read), (key, 0));
        }
    }

    /// A tick passed: reads that waited too long for the state machine fail (what a driver
    /// does, so that a read on a node that stopped applying does not wait for ever).
    fn expire_reads(&mut self, k: usize) {
        let Some(raw) = self.nodes[k].raw.as_ref() else {
            return;
        };
        let wait = raw.config().proposal_wait_ticks;
        let id = self.nodes[k].id;
        let mut expired = Vec::new();
        for ((_, read), (_, ticks)) in self.nodes[k].reads_awaiting_apply.iter_mut() {
            *ticks += 1;
            if *ticks > wait {
                expired.push(*read);
            }
        }
        self.nodes[k]
            .reads_awaiting_apply
            .retain(|(_, read), _| !expired.contains(read));
        let at_ms = self.now_ms;
        for read in expired {
            let error = ProposeError::ReadAborted;
            self.trace_line(format_args!(
                "{id} read {:x} gave up waiting to apply",
                read.0
            ));
            self.finish_read(
                read,
                ProposalOutcome::Failed {
                    node: id,
                    error,
                    at_ms,
                },
            );
        }
    }

    /// Answers the reads of node `k` whose read index its state machine has applied.
    fn serve_reads(&mut self, k: usize) {
        let id = self.nodes[k].id;
        let applied = self.nodes[k].kv.applied_index();
        while let Some(entry) = self.nodes[k].reads_awaiting_apply.first_entry() {
            if entry.key().0 > applied {
                break;
            }
            let ((index, read), (key, _)) = entry.remove_entry();
            let output = KvOutput::Value(self.nodes[k].kv.store().get(&key).cloned());
            self.trace_line(format_args!(
                "{id} read {:x} served at {applied}: {output:?}",
                read.0
            ));
            let at_ms = self.now_ms;
            let outcome = ProposalOutcome::Read {
                node: id,
                index,
                output,
                at_ms,
            };
            self.finish_read(read, outcome);
        }
    }

    fn finish_read(&mut self, read: ProposalId, outcome: ProposalOutcome) {
        if self.pending_reads.remove(&read).is_none() {
            return;
        }
        if self.outcomes.len() >= OUTCOMES_UNTAKEN_MAX {
            self.fail(format_args!(
                "{OUTCOMES_UNTAKEN_MAX} outcomes were never taken"
            ));
        }
        self.outcomes.insert(read, outcome);
    }

    fn transfer_failed(&mut self, k: usize, error: TransferError) {
        let id = self.nodes[k].id;
        let raw = self.nodes[k]
            .raw
            .as_ref()
            .expect("a ready comes from a live node");
        let failure = TransferFailure {
            node: id,
            error,
            role: raw.role(),
            term: raw.term(),
            at_ms: self.now_ms,
        };
        self.trace_line(format_args!(
            "{id} transfer failed: {:?} ({:?} in {})",
            failure.error, failure.role, failure.term
        ));
        if self.transfer_failures.len() >= OUTCOMES_UNTAKEN_MAX {
            self.fail(format_args!(
                "{OUTCOMES_UNTAKEN_MAX} transfer failures were never taken"
            ));
        }
        self.transfer_failures.push(failure);
    }

    fn finish(&mut self, proposal: ProposalId, outcome: ProposalOutcome) {
        if self.pending.remove(&proposal).is_none() {
            return; // not proposed through this cluster, or already lost in a crash
        }
        if self.outcomes.len() >= OUTCOMES_UNTAKEN_MAX {
            self.fail(format_args!(
                "{OUTCOMES_UNTAKEN_MAX} outcomes were never taken"
            ));
        }
        self.outcomes.insert(proposal, outcome);
    }

    // ----- the network --------------------------------------------------------------------

    fn send(&mut self, message: Message) {
        self.stats.messages_sent += 1;
        let network = self.network;
        if self.network_rng.chance(network.drop_probability) {
            self.stats.messages_dropped += 1;
            self.trace_line(format_args!("drop {}", ShowMessage(&message)));
            return;
        }
        let copies = if self.network_rng.chance(network.duplicate_probability) {
            self.stats.messages_duplicated += 1;
            2
        } else {
            1
        };
        let from_incarnation = self.nodes[self.index_of(message.from)].incarnation;
        let to_incarnation = self.nodes[self.index_of(message.to)].incarnation;
        for copy in 0..copies {
            let at_ms = self.delivery_time(message.from, message.to);
            if self.trace.enabled() {
                let dup = if copy > 0 { " (duplicate)" } else { "" };
                self.trace_line(format_args!(
                    "send {} arrives {at_ms}{dup}",
                    ShowMessage(&message)
                ));
            }
            if self.in_flight.len() >= MESSAGES_IN_FLIGHT_MAX {
                self.fail(format_args!("{MESSAGES_IN_FLIGHT_MAX} messages in flight"));
            }
            let key = (at_ms, self.next_sequence());
            let envelope = Envelope {
                message: message.clone(),
                from_incarnation,
                to_incarnation,
            };
            self.in_flight.insert(key, envelope);
        }
    }

    /// When a message sent now on the link `from` -> `to` arrives.
    fn delivery_time(&mut self, from: NodeId, to: NodeId) -> u64 {
        if let Some(at_ms) = self.held_at_ms(from, to) {
            return at_ms;
        }
        let network = self.network;
        let rng = &mut self.network_rng;
        if rng.chance(network.long_delay_probability) {
            let longest = network.long_delay_ms_max.max(network.delay_ms_max);
            self.stats.messages_reordered += 1;
            return self.now_ms + rng.between(network.delay_ms_max, longest);
        }
        let at_ms = self.now_ms + rng.between(network.delay_ms_min, network.delay_ms_max);
        if rng.chance(network.reorder_probability) {
            self.stats.messages_reordered += 1;
            return at_ms;
        }
        let tail = self.link_tail_ms.entry((from, to)).or_insert(0);
        *tail = (*tail).max(at_ms);
        *tail
    }

    /// While the link `from` -> `to` is held back, when a message on it arrives: after the
    /// hold, within the network's ordinary delay, in no particular order.
    fn held_at_ms(&mut self, from: NodeId, to: NodeId) -> Option<u64> {
        let until_ms = *self.held_until_ms.get(&(from, to))?;
        if until_ms <= self.now_ms {
            self.held_until_ms.remove(&(from, to));
            return None;
        }
        self.stats.messages_held += 1;
        let spread_ms = self.network.delay_ms_max.max(1);
        Some(until_ms + self.network_rng.between(0, spread_ms))
    }

    /// Holds back every message between `a` and `b`, both ways, in flight now or sent before
    /// `until_ms`: they all arrive after `until_ms`, within the network's ordinary delay, in a
    /// seeded order that ignores the order they were sent in (a stalled connection that
    /// resumes, its lanes racing each other). Messages on other links pass as usual, so the
    /// two ends hear the rest of the cluster long before they hear each other.
    pub fn hold_back(&mut self, a: impl Into<NodeId>, b: impl Into<NodeId>, until_ms: u64) {
        let (a, b) = (a.into(), b.into());
        assert_ne!(a, b, "a link joins two nodes");
        self.trace_line(format_args!("hold back {a}<->{b} until {until_ms}"));
        for link in [(a, b), (b, a)] {
            let until = self.held_until_ms.entry(link).or_insert(0);
            *until = (*until).max(until_ms);
        }
        let held: Vec<(u64, u64)> = self
            .in_flight
            .iter()
            .filter(|(_, e)| {
                let link = (e.message.from, e.message.to);
                link == (a, b) || link == (b, a)
            })
            .map(|(key, _)| *key)
            .collect();
        for key in held {
            let envelope = self.in_flight.remove(&key).expect("listed above");
            let (from, to) = (envelope.message.from, envelope.message.to);
            let at_ms = self.held_at_ms(from, to).unwrap_or(key.0).max(key.0);
            let key = (at_ms, self.next_sequence());
            self.in_flight.insert(key, envelope);
        }
    }

    /// True when no cut blocks messages from `from` to `to`.
    pub fn link_open(&self, from: NodeId, to: NodeId) -> bool {
        !self.cuts.values().any(|links| links.contains(&(from, to)))
    }

    /// Delivers one message if its link is open and both ends are still in the life they had
    /// when it left. Returns true when the receiver stepped it.
    fn deliver(&mut self, envelope: Envelope) -> bool {
        let Envelope {
            message,
            from_incarnation,
            to_incarnation,
        } = envelope;
        if !self.link_open(message.from, message.to) {
            self.stats.messages_cut += 1;
            self.trace_line(format_args!("cut {}", ShowMessage(&message)));
            return false;
        }
        let from_life = self.nodes[self.index_of(message.from)].incarnation;
        let k = self.index_of(message.to);
        let receiver = &self.nodes[k];
        if receiver.raw.is_none() {
            self.stats.messages_lost_to_crashes += 1;
            self.trace_line(format_args!("lost {}", ShowMessage(&message)));
            return false;
        }
        if receiver.incarnation != to_incarnation || from_life != from_incarnation {
            self.stats.messages_across_restarts += 1;
        }
        self.stats.messages_delivered += 1;
        self.trace_line(format_args!("recv {}", ShowMessage(&message)));
        let to = message.to;
        self.nodes[k]
            .raw
            .as_mut()
            .expect("checked alive above")
            .step(message);
        self.process_ready(to);
        true
    }

    // ----- stepping -----------------------------------------------------------------------

    /// Processes the next event in virtual time (a message, a tick, a write completing, a
    /// timer). Returns `None` when nothing is scheduled.
    pub fn step(&mut self) -> Option<Stepped> {
        let next_message = self.in_flight.keys().next().copied();
        let next_timer = self.timers.keys().next().copied();
        let message_first = match (next_message, next_timer) {
            (None, None) => return None,
            (Some(m), Some(t)) => m < t,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        let stepped = if message_first {
            let ((at_ms, _), envelope) = self.in_flight.pop_first().expect("peeked above");
            self.now_ms = self.now_ms.max(at_ms);
            self.deliver(envelope);
            Stepped::Internal
        } else {
            let ((at_ms, _), timer) = self.timers.pop_first().expect("peeked above");
            self.now_ms = self.now_ms.max(at_ms);
            match timer {
                Timer::Driver(tag) => Stepped::Timer(tag),
                Timer::Tick { node, incarnation } => {
                    self.tick_timer(node, incarnation);
                    Stepped::Internal
                }
                Timer::WriteDone { node, incarnation } => {
                    let k = self.index_of(node);
                    if self.nodes[k].incarnation == incarnation && self.nodes[k].raw.is_some() {
                        self.complete_write(k);
                        self.process_ready(node);
                    }
                    Stepped::Internal
                }
                Timer::WriteHoldEnds { node, incarnation } => {
                    let k = self.index_of(node);
                    if self.nodes[k].incarnation == incarnation && self.nodes[k].raw.is_some() {
                        self.start_write(k);
                    }
                    Stepped::Internal
                }
                Timer::Restart { node, incarnation } => {
                    // Unless it was restarted (and perhaps crashed again) meanwhile.
                    if self.nodes[self.index_of(node)].incarnation == incarnation {
                        self.restart(node);
                    }
                    Stepped::Internal
                }
            }
        };
        self.after_step();
        Some(stepped)
    }

    fn tick_timer(&mut self, node: NodeId, incarnation: u64) {
        let k = self.index_of(node);
        if self.nodes[k].incarnation != incarnation || self.nodes[k].raw.is_none() {
            return;
        }
        if let Some(raw) = self.nodes[k].raw.as_mut() {
            raw.tick();
        }
        self.expire_reads(k);
        self.process_ready(node);
        if let Timing::Simulated {
            tick_ms,
            tick_jitter_ms,
            ..
        } = self.timing
        {
            let interval = tick_ms + self.nodes[k].tick_skew_ms;
            let next = self.now_ms + interval + self.tick_rng.below(tick_jitter_ms + 1);
            self.add_timer(next, Timer::Tick { node, incarnation });
        }
    }

    /// Schedules a timer that [`Cluster::step`] returns as [`Stepped::Timer`]`(tag)` at
    /// virtual time `at_ms` (or now, if that has passed).
    pub fn schedule(&mut self, at_ms: u64, tag: u64) {
        self.add_timer(at_ms, Timer::Driver(tag));
    }

    /// Virtual time, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn after_step(&mut self) {
        self.stats.steps += 1;
        let live = self
            .nodes
            .iter()
            .filter_map(|n| n.raw.as_ref().map(|raw| (n.id, raw)));
        self.invariants.after_step(live);
        for k in 0..self.nodes.len() {
            let Some(raw) = self.nodes[k].raw.as_ref() else {
                continue;
            };
            let seen = (raw.role(), raw.term());
            if seen != self.nodes[k].seen {
                self.nodes[k].seen = seen;
                if seen.0 == Role::Leader {
                    self.stats.leader_elections += 1;
                }
                let id = self.nodes[k].id;
                self.trace_line(format_args!("{id} is {:?} in {}", seen.0, seen.1));
            }
        }
    }

    // ----- commands -----------------------------------------------------------------------

    fn raw_mut(&mut self, node: NodeId) -> &mut RawNode {
        let k = self.index_of(node);
        match self.nodes[k].raw.as_mut() {
            Some(raw) => raw,
            None => panic!("{node} is down"),
        }
    }

    /// Makes `node` start an election now.
    pub fn campaign(&mut self, node: impl Into<NodeId>) {
        let node = node.into();
        self.trace_line(format_args!("{node} campaigns"));
        self.raw_mut(node).campaign();
        self.process_ready(node);
        self.after_step();
    }

    /// Proposes `data` at `node` and returns the proposal's ID; its outcome appears in
    /// [`Cluster::outcome`].
    pub fn propose(&mut self, node: impl Into<NodeId>, data: impl Into<Bytes>) -> ProposalId {
        let node = node.into();
        let data = data.into();
        let id = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        self.stats.proposals += 1;
        self.pending.insert(id, node);
        self.trace_line(format_args!(
            "{node} proposal {:x} of {}B",
            id.0,
            data.len()
        ));
        self.raw_mut(node).propose(id, data);
        self.process_ready(node);
        self.after_step();
        id
    }

    /// Proposes a key-value command at `node`.
    pub fn propose_kv(&mut self, node: impl Into<NodeId>, input: &KvInput) -> ProposalId {
        self.propose(node, kv::encode(input))
    }

    /// Proposes `data` at `node` in the client session `tag` ([`RawNode::propose_in_session`])
    /// and returns the proposal's ID. Proposing the same `tag` again (here or at another node)
    /// is a retry: the command applies once, and every copy is answered with the first answer
    /// (see [`crate::sessions`]).
    pub fn propose_in_session(
        &mut self,
        node: impl Into<NodeId>,
        tag: SessionTag,
        data: impl Into<Bytes>,
    ) -> ProposalId {
        let node = node.into();
        let data = data.into();
        let id = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        self.stats.proposals += 1;
        self.stats.session_proposals += 1;
        self.pending.insert(id, node);
        self.trace_line(format_args!(
            "{node} proposal {:x} in session {tag} of {}B",
            id.0,
            data.len()
        ));
        self.raw_mut(node).propose_in_session(id, tag, data);
        self.process_ready(node);
        self.after_step();
        id
    }

    /// Proposes a key-value command at `node` in the client session `tag`.
    pub fn propose_kv_in_session(
        &mut self,
        node: impl Into<NodeId>,
        tag: SessionTag,
        input: &KvInput,
    ) -> ProposalId {
        self.propose_in_session(node, tag, kv::encode(input))
    }

    /// Reads `key` at `node` without the log: the node asks the protocol for a read index
    /// ([`RawNode::read_index`]; a leader confirms it with a heartbeat round or its lease, a
    /// follower asks the leader) and answers from its state machine once it has applied that
    /// index. Returns the read's ID; its outcome appears in [`Cluster::outcome`] as
    /// [`ProposalOutcome::Read`] or `Failed`.
    ///
    /// The simulator fails the run if the read index is below an entry known committed when
    /// the read was asked (a stale read).
    pub fn read_kv(&mut self, node: impl Into<NodeId>, key: &str) -> ProposalId {
        let id = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        self.ask_read(node.into(), id, key);
        id
    }

    /// Asks for read `read` of `key` at `node` again, under the same ID, as a client that
    /// retries would: an answer to the earlier request may still be on its way and must not
    /// answer this one. Forgets the earlier outcome.
    ///
    /// # Panics
    /// If `read` is still waiting for an answer.
    pub fn retry_read(&mut self, node: impl Into<NodeId>, read: ProposalId, key: &str) {
        assert!(
            !self.pending_reads.contains_key(&read),
            "read {:x} has no outcome yet",
            read.0
        );
        self.outcomes.remove(&read);
        self.ask_read(node.into(), read, key);
    }

    fn ask_read(&mut self, node: NodeId, id: ProposalId, key: &str) {
        self.stats.reads += 1;
        let pending = PendingRead {
            node,
            key: key.to_string(),
            committed_at_call: self.invariants.committed_len(),
        };
        self.pending_reads.insert(id, pending);
        self.trace_line(format_args!("{node} read {:x} of {key:?}", id.0));
        let raw = self.raw_mut(node);
        let leads_others = raw.role() == Role::Leader && raw.config().voters.len() > 1;
        raw.read_index(id);
        self.read_in_call = Some((id, false));
        self.process_ready(node);
        if let Some((_, true)) = self.read_in_call.take() {
            if leads_others {
                self.stats.lease_reads += 1;
            }
        }
        self.after_step();
    }

    /// Asks `node` to change the membership ([`RawNode::change_membership`]). Returns the
    /// proposal whose outcome says when the change's first entry applied, or why it was
    /// refused.
    pub fn change_membership(
        &mut self,
        node: impl Into<NodeId>,
        change: &MembershipChange,
    ) -> Result<ProposalId, MembershipError> {
        let node = node.into();
        let id = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        self.trace_line(format_args!("{node} membership change {change:?}"));
        let result = self.raw_mut(node).change_membership(id, change);
        match &result {
            Ok(()) => {
                self.stats.membership_changes += 1;
                self.pending.insert(id, node);
            }
            Err(error) => self.trace_line(format_args!("{node} refused the change: {error}")),
        }
        self.process_ready(node);
        self.after_step();
        result.map(|()| id)
    }

    /// Asks `node` to take a snapshot now ([`RawNode::request_snapshot`]).
    pub fn request_snapshot(&mut self, node: impl Into<NodeId>) -> bool {
        let node = node.into();
        let asked = self.raw_mut(node).request_snapshot();
        self.process_ready(node);
        self.after_step();
        asked
    }

    /// Asks leader `node` to hand leadership to `target` ([`RawNode::transfer_leadership`]).
    /// An abandoned transfer shows up in [`Cluster::take_transfer_failures`].
    pub fn transfer_leadership(
        &mut self,
        node: impl Into<NodeId>,
        target: impl Into<NodeId>,
    ) -> Result<(), TransferError> {
        let (node, target) = (node.into(), target.into());
        self.trace_line(format_args!("{node} transfers leadership to {target}"));
        let result = self.raw_mut(node).transfer_leadership(target);
        match &result {
            Ok(()) if node != target => self.stats.transfers += 1,
            Ok(()) => {}
            Err(error) => self.trace_line(format_args!("{node} refused the transfer: {error:?}")),
        }
        self.process_ready(node);
        self.after_step();
        result
    }

    /// Ticks `node` `count` times, handling its readies after each.
    pub fn tick(&mut self, node: impl Into<NodeId>, count: u32) {
        let node = node.into();
        for _ in 0..count {
            self.raw_mut(node).tick();
            self.process_ready(node);
            self.after_step();
        }
    }

    /// Ticks every live node `count` times, in node order.
    pub fn tick_all(&mut self, count: u32) {
        for _ in 0..count {
            for node in self.live_nodes() {
                self.tick(node, 1);
            }
        }
    }

    /// Delivers every message in flight now (whatever its delivery time), in order, and
    /// returns those that reached their receiver. Messages they cause stay in flight.
    pub fn deliver_all(&mut self) -> Vec<Message> {
        self.deliver_matching(|_| true)
    }

    /// Delivers the messages in flight that `filter` picks (in order), leaving the others in
    /// flight; returns those that reached their receiver.
    pub fn deliver_matching(&mut self, mut filter: impl FnMut(&Message) -> bool) -> Vec<Message> {
        let keys: Vec<(u64, u64)> = self
            .in_flight
            .iter()
            .filter(|(_, envelope)| filter(&envelope.message))
            .map(|(key, _)| *key)
            .collect();
        let mut delivered = Vec::new();
        for key in keys {
            let envelope = self.in_flight.remove(&key).expect("listed above");
            let message = envelope.message.clone();
            if self.deliver(envelope) {
                delivered.push(message);
            }
            self.after_step();
        }
        delivered
    }

    /// Adds a second copy of each message in flight that `filter` picks, delivered after
    /// everything now in flight; returns how many were copied.
    pub fn duplicate_in_flight(&mut self, mut filter: impl FnMut(&Message) -> bool) -> usize {
        let copies: Vec<(u64, Envelope)> = self
            .in_flight
            .iter()
            .filter(|(_, envelope)| filter(&envelope.message))
            .map(|((at_ms, _), envelope)| (*at_ms, envelope.clone()))
            .collect();
        for (at_ms, envelope) in &copies {
            self.trace_line(format_args!("duplicate {}", ShowMessage(&envelope.message)));
            let key = (*at_ms, self.next_sequence());
            self.in_flight.insert(key, envelope.clone());
        }
        self.stats.messages_duplicated += copies.len() as u64;
        copies.len()
    }

    /// Delivers messages until none is in flight; returns how many were delivered.
    ///
    /// # Panics
    /// If messages still flow after [`STABILIZE_ROUNDS_MAX`] rounds.
    pub fn stabilize(&mut self) -> usize {
        let mut delivered = 0;
        for _ in 0..STABILIZE_ROUNDS_MAX {
            if self.in_flight.is_empty() {
                return delivered;
            }
            delivered += self.deliver_all().len();
        }
        self.fail(format_args!(
            "still not stable after {STABILIZE_ROUNDS_MAX} rounds"
        ))
    }

    /// Flips one bit in the data of the first snapshot chunk in flight that `filter` picks
    /// (a corruption the transport did not catch). Returns false when none matched.
    pub fn corrupt_in_flight(&mut self, mut filter: impl FnMut(&Message) -> bool) -> bool {
        for envelope in self.in_flight.values_mut() {
            if !filter(&envelope.message) {
                continue;
            }
            if let MessageBody::SnapshotChunk { data, .. } = &mut envelope.message.body {
                if let Some(first) = data.first() {
                    let mut copy = data.to_vec();
                    copy[0] = first ^ 1;
                    *data = Bytes::from(copy);
                    return true;
                }
            }
        }
        false
    }

    /// The messages in flight, in delivery order.
    pub fn in_flight(&self) -> Vec<Message> {
        self.in_flight.values().map(|e| e.message.clone()).collect()
    }

    /// Removes the messages in flight that `filter` picks; returns how many.
    pub fn drop_in_flight(&mut self, mut filter: impl FnMut(&Message) -> bool) -> usize {
        let before = self.in_flight.len();
        let mut dropped = Vec::new();
        self.in_flight.retain(|_, envelope| {
            let drop = filter(&envelope.message);
            if drop {
                dropped.push(envelope.message.clone());
            }
            !drop
        });
        for message in &dropped {
            self.trace_line(format_args!("removed {}", ShowMessage(message)));
        }
        before - self.in_flight.len()
    }

    /// Cuts every link between `side` and the other nodes, both ways.
    pub fn partition(&mut self, side: &[NodeId]) -> CutId {
        let mut links = Vec::new();
        for a in side {
            for b in self.ids() {
                if !side.contains(&b) {
                    links.push((*a, b));
                    links.push((b, *a));
                }
            }
        }
        self.add_cut(links)
    }

    /// Cuts `node` off from every other node, both ways.
    pub fn isolate(&mut self, node: impl Into<NodeId>) -> CutId {
        self.partition(&[node.into()])
    }

    /// Cuts the link from `from` to `to` only: `to` still reaches `from`.
    pub fn cut_one_way(&mut self, from: impl Into<NodeId>, to: impl Into<NodeId>) -> CutId {
        self.add_cut(vec![(from.into(), to.into())])
    }

    fn add_cut(&mut self, links: Vec<(NodeId, NodeId)>) -> CutId {
        let id = CutId(self.next_cut);
        self.next_cut += 1;
        if self.trace.enabled() {
            let shown: Vec<String> = links.iter().map(|(a, b)| format!("{a}->{b}")).collect();
            self.trace_line(format_args!("cut #{} {}", id.0, shown.join(" ")));
        }
        self.cuts.insert(id, links);
        id
    }

    /// Restores the links `cut` removed (those no other cut removes).
    pub fn heal(&mut self, cut: CutId) {
        if self.cuts.remove(&cut).is_some() {
            self.trace_line(format_args!("heal #{}", cut.0));
        }
    }

    /// Restores every link.
    pub fn heal_all(&mut self) {
        if !self.cuts.is_empty() {
            self.cuts.clear();
            self.trace_line(format_args!("heal all"));
        }
    }

    /// How many cuts are in force.
    pub fn cuts_active(&self) -> usize {
        self.cuts.len()
    }

    /// Crashes `node`: its protocol state, unfinished writes, state machine and the messages
    /// to and from it are lost; its disk keeps what completed writes made durable. Its
    /// unanswered proposals end as [`ProposalOutcome::Lost`].
    pub fn crash(&mut self, node: impl Into<NodeId>) {
        let node = node.into();
        let k = self.index_of(node);
        if self.nodes[k].raw.is_none() {
            return;
        }
        self.trace_line(format_args!("{node} crashes"));
        if let Some(raw) = self.nodes[k].raw.as_ref() {
            // What it did in this step counts (a commit its messages already carry).
            self.invariants.observe(node, raw);
        }
        let sim = &mut self.nodes[k];
        sim.raw = None;
        sim.incarnation += 1;
        let jobs = sim.queued.len() + sim.writing.take().map_or(0, |w| w.jobs);
        self.stats.writes_lost += jobs as u64;
        sim.queued.clear();
        sim.hold_ends_ms = None;
        sim.receiving = None;
        sim.snapshot_cursor.reset();
        sim.kv = KvReplica::new(self.session_limits);
        self.stats.crashes += 1;
        self.messages_survive_crash(node);
        let lost: Vec<ProposalId> = self
            .pending
            .iter()
            .filter(|(_, proposer)| **proposer == node)
            .map(|(id, _)| *id)
            .collect();
        let at_ms = self.now_ms;
        for proposal in lost {
            self.finish(proposal, ProposalOutcome::Lost { node, at_ms });
        }
        self.nodes[k].reads_awaiting_apply.clear();
        let lost_reads: Vec<ProposalId> = self
            .pending_reads
            .iter()
            .filter(|(_, read)| read.node == node)
            .map(|(id, _)| *id)
            .collect();
        for read in lost_reads {
            self.finish_read(read, ProposalOutcome::Lost { node, at_ms });
        }
        self.after_step();
    }

    /// The network keeps each message in flight to or from crashed `node` with
    /// `crash_survive_probability` (and sometimes a late copy of it); the others are lost.
    fn messages_survive_crash(&mut self, node: NodeId) {
        let network = self.network;
        let touching: Vec<(u64, u64)> = self
            .in_flight
            .iter()
            .filter(|(_, e)| e.message.from == node || e.message.to == node)
            .map(|(key, _)| *key)
            .collect();
        for key in touching {
            if !self.network_rng.chance(network.crash_survive_probability) {
                self.in_flight.remove(&key);
                self.stats.messages_lost_to_crashes += 1;
                continue;
            }
            if self.network_rng.chance(network.duplicate_probability) {
                let copy = self.in_flight[&key].clone();
                let late = self.network_rng.between(
                    network.delay_ms_max,
                    network.long_delay_ms_max.max(network.delay_ms_max),
                );
                self.stats.messages_duplicated += 1;
                let at = (key.0.max(self.now_ms) + late, self.next_sequence());
                self.in_flight.insert(at, copy);
            }
        }
    }

    /// Replaces the disk's behaviour from now on (writes queued keep their delays and fates).
    pub fn set_disk(&mut self, disk: DiskTiming) {
        self.disk = disk;
    }

    /// Restarts a crashed `node` from its disk, with a fresh seed.
    pub fn restart(&mut self, node: impl Into<NodeId>) {
        let node = node.into();
        let k = self.index_of(node);
        if self.nodes[k].raw.is_some() {
            return;
        }
        self.nodes[k].restarts += 1;
        self.stats.restarts += 1;
        self.trace_line(format_args!("{node} restarts"));
        self.start_node(k);
        self.after_step();
    }

    /// Restarts a crashed `node` with nothing on its disk, as an in-memory store comes back
    /// after a crash, in a new [`Incarnation`](crate::Incarnation) (as `raft_storage_mem`'s
    /// counter gives one).
    pub fn restart_amnesiac(&mut self, node: impl Into<NodeId>) {
        let node = node.into();
        let k = self.index_of(node);
        if self.nodes[k].raw.is_some() {
            return;
        }
        self.nodes[k].durable = DurableState::default();
        self.nodes[k].amnesias += 1;
        self.invariants.on_amnesia(node);
        self.stats.amnesias += 1;
        let life = self.nodes[k].amnesias;
        self.trace_line(format_args!("{node} lost its disk (life {life})"));
        self.restart(node);
    }

    /// The incarnation `node` runs (or will restart) in: how often it lost its disk.
    pub fn incarnation(&self, node: impl Into<NodeId>) -> crate::Incarnation {
        crate::Incarnation(self.nodes[self.index_of(node.into())].amnesias)
    }

    /// Replaces the network's behaviour from now on (messages in flight keep their delays).
    pub fn set_network(&mut self, network: NetworkFaults) {
        self.network = network;
    }

    /// Adds a line to the trace.
    pub fn trace_line(&mut self, args: fmt::Arguments<'_>) {
        self.trace.line(self.now_ms, args);
    }

    // ----- inspection ---------------------------------------------------------------------

    /// Every node's ID, in order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The nodes that are up.
    pub fn live_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.raw.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// True when `node` is up.
    pub fn is_up(&self, node: impl Into<NodeId>) -> bool {
        self.nodes[self.index_of(node.into())].raw.is_some()
    }

    /// The protocol instance of a live `node`.
    ///
    /// # Panics
    /// If the node is down.
    pub fn node(&self, node: impl Into<NodeId>) -> &RawNode {
        let node = node.into();
        match self.nodes[self.index_of(node)].raw.as_ref() {
            Some(raw) => raw,
            None => panic!("{node} is down"),
        }
    }

    /// The live nodes that are leaders, with their terms.
    pub fn leaders(&self) -> Vec<(NodeId, Term)> {
        self.nodes
            .iter()
            .filter_map(|n| n.raw.as_ref())
            .filter(|raw| raw.role() == Role::Leader)
            .map(|raw| (raw.id(), raw.term()))
            .collect()
    }

    /// The leader of the highest term among the live members of the cluster, if that term
    /// has one that is up. Members are those of the newest leader's membership: a removed
    /// node that campaigns on, unaware of its removal, does not hide the leader.
    pub fn leader(&self) -> Option<NodeId> {
        let (newest, _) = self.leaders().into_iter().max_by_key(|(_, term)| *term)?;
        let members = self.node(newest).membership().members();
        let top = self
            .nodes
            .iter()
            .filter(|n| members.contains(&n.id))
            .filter_map(|n| n.raw.as_ref())
            .map(|raw| raw.term())
            .max()?;
        self.leaders()
            .into_iter()
            .find(|(_, term)| *term == top)
            .map(|(id, _)| id)
    }

    /// The in-memory log of a live `node`: every entry it holds, from its first index (1 until
    /// a snapshot compacted the log).
    pub fn log(&self, node: impl Into<NodeId>) -> Vec<Entry> {
        let raw = self.node(node);
        (raw.first_index().0..=raw.last_index().0)
            .map(|i| raw.entry(LogIndex(i)).expect("held").clone())
            .collect()
    }

    /// The terms of a live `node`'s log, from its first index: a compact view for assertions.
    pub fn log_terms(&self, node: impl Into<NodeId>) -> Vec<u64> {
        self.log(node).iter().map(|e| e.term.0).collect()
    }

    /// What `node`'s disk holds.
    pub fn durable(&self, node: impl Into<NodeId>) -> &DurableState {
        &self.nodes[self.index_of(node.into())].durable
    }

    /// `node`'s state machine (empty while it is down).
    pub fn kv(&self, node: impl Into<NodeId>) -> &KvStore {
        self.nodes[self.index_of(node.into())].kv.store()
    }

    /// `node`'s session table, at its state machine's applied index (empty while it is down).
    pub fn sessions(&self, node: impl Into<NodeId>) -> &SessionTable {
        self.nodes[self.index_of(node.into())].kv.sessions()
    }

    /// How `proposal` ended, if it has.
    pub fn outcome(&self, proposal: ProposalId) -> Option<&ProposalOutcome> {
        self.outcomes.get(&proposal)
    }

    /// Takes every outcome recorded so far, in proposal order.
    pub fn take_outcomes(&mut self) -> Vec<(ProposalId, ProposalOutcome)> {
        std::mem::take(&mut self.outcomes).into_iter().collect()
    }

    /// Proposals with no outcome yet.
    pub fn pending_proposals(&self) -> usize {
        self.pending.len()
    }

    /// Reads without the log with no outcome yet.
    pub fn pending_reads(&self) -> usize {
        self.pending_reads.len()
    }

    /// Takes the leadership transfers abandoned so far, oldest first.
    pub fn take_transfer_failures(&mut self) -> Vec<TransferFailure> {
        std::mem::take(&mut self.transfer_failures)
    }

    /// The command of every entry known committed, in index order (blank entries left out).
    pub fn committed_commands(&self) -> Vec<Bytes> {
        self.invariants.committed_commands()
    }

    /// The readies recorded with [`ClusterBuilder::record_readies`], oldest first.
    pub fn ready_records(&self) -> Vec<ReadyRecord> {
        self.ready_records
            .as_ref()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets the recorded readies.
    pub fn clear_ready_records(&mut self) {
        if let Some(records) = self.ready_records.as_mut() {
            records.clear();
        }
    }

    /// The counters.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// Terms that had a leader so far.
    pub fn leader_terms(&self) -> usize {
        self.invariants.leader_terms()
    }

    /// How many entries the cluster is known to have committed.
    pub fn committed_len(&self) -> usize {
        self.invariants.committed_len()
    }

    /// The trace.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Takes the trace text recorded so far.
    pub fn take_trace(&mut self) -> String {
        self.trace.take()
    }

    /// End-of-run checks: every disk holds every entry a client was told applied, and live
    /// nodes that applied the same index hold the same key-value state and session table.
    pub fn check_end_of_run(&self) {
        // Every voter of the final membership must hold every acknowledged write (removed
        // nodes stop receiving, learners may hold less).
        let voters = self
            .leader()
            .map(|leader| self.node(leader).membership().all_voters());
        self.invariants.check_acknowledged_held(
            self.nodes
                .iter()
                .filter(|n| voters.as_ref().is_none_or(|v| v.contains(&n.id)))
                .map(|n| (n.id, &n.durable)),
        );
        let live: Vec<&SimNode> = self.nodes.iter().filter(|n| n.raw.is_some()).collect();
        for (position, first) in live.iter().enumerate() {
            for second in &live[position + 1..] {
                let (a, b) = (&first.kv, &second.kv);
                if a.applied_index() == b.applied_index() && !a.same_state(b) {
                    self.fail(format_args!(
                        "{} and {} applied up to {} yet hold different data",
                        first.id,
                        second.id,
                        a.applied_index()
                    ));
                }
            }
        }
    }
}
