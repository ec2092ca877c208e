//! A randomized run: a seeded fault schedule and closed-loop clients drive a [`Cluster`], then
//! a liveness phase heals everything, and the client history is checked for linearizability.

use super::cluster::{Cluster, CutId, DiskTiming, NetworkFaults, ProposalOutcome, Stepped, Timing};
use super::rng::{mix, SimRng};
use crate::config::Config;
use crate::membership::{MembershipChange, MembershipError};
use crate::protocol::{ProposeError, Role, TransferError};
use crate::sessions::SessionError;
use crate::testkit::linearizability::{
    check, CheckLimits, CheckResult, History, KvInput, KvModel, KvOutput,
};
use crate::types::{LogIndex, NodeId, ProposalId, SessionId, SessionTag, Term};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;

/// Most driver timers (client requests, timeouts, faults, heals, restarts) pending at once.
pub const DRIVER_TIMERS_MAX: usize = 1 << 16;
/// The checker's search budget per key when the default budget did not decide a history.
pub const CHECK_STEPS_RETRY_MAX: u64 = 50_000_000;
/// Virtual milliseconds between two ticks in the runs [`SimOptions::from_seed`] makes.
const TICK_MS: u64 = 10;
/// Most client operations one run records (the checker's cost grows with them).
pub const OPERATIONS_MAX: usize = 100_000;
/// Most voters membership churn grows a cluster to.
pub const VOTERS_MAX: usize = 7;
/// Fewest voters membership churn shrinks a cluster to, on most seeds; the others (and every
/// cluster that starts with fewer) may shrink to one voter and grow back through two.
pub const VOTERS_MIN: usize = 3;
/// Most times a session client proposes one command (the first attempt and its retries)
/// before it gives up on it (outcome unknown) and moves to its next sequence.
pub const SESSION_ATTEMPTS_MAX: u32 = 4;

/// How often each kind of fault happens, and how hard the network and disks are.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultRates {
    /// The network during the fault phase (the liveness phase keeps only the ordinary delays).
    pub network: NetworkFaults,
    /// How long writes take.
    pub disk: DiskTiming,
    /// Shortest virtual time between two fault decisions.
    pub fault_interval_ms_min: u64,
    /// Longest virtual time between two fault decisions.
    pub fault_interval_ms_max: u64,
    /// Weight of crashing a random live node (it restarts after up to `down_ms_max`).
    pub crash_weight: u32,
    /// Weight of splitting the nodes in two groups (healed after up to `cut_ms_max`).
    pub partition_weight: u32,
    /// Weight of cutting one direction of one link.
    pub one_way_weight: u32,
    /// Weight of isolating the current leader.
    pub isolate_leader_weight: u32,
    /// Weight of healing every cut at once.
    pub heal_weight: u32,
    /// Weight of asking the current leader to hand leadership to a random other voter.
    pub transfer_weight: u32,
    /// Weight of doing nothing this time.
    pub quiet_weight: u32,
    /// Weight of changing the membership through the leader: add a spare node as a learner,
    /// promote learners, remove voters or learners (often several in one joint change).
    pub membership_weight: u32,
    /// Weight of asking a random live node for a snapshot.
    pub snapshot_weight: u32,
    /// Longest time a crashed node stays down.
    pub down_ms_max: u64,
    /// Longest time a cut lasts.
    pub cut_ms_max: u64,
    /// Most nodes down at once.
    pub crashed_nodes_max: usize,
    /// Chance that a crashed node comes back with a wiped disk in a new incarnation, as an
    /// in-memory store does ([`Cluster::restart_amnesiac`]), when the cluster can afford it:
    /// its membership is committed, nobody is rejoining, every member's recorded life is its
    /// current one, and a voter leaves at least two others.
    pub amnesia_probability: f64,
    /// Weight of wiping a voter's disk right after it acknowledged an entry that no more
    /// voters than a bare quorum hold (once the leader counted it), then taking the leader
    /// away: it crashes or is cut off, while every other cut heals. The fault waits up to two
    /// seconds for that moment.
    pub amnesia_after_ack_weight: u32,
    /// Weight of holding back the messages between two random nodes for up to
    /// `hold_back_ms_max`, both ways, then delivering them in a new order
    /// ([`Cluster::hold_back`]).
    pub hold_back_weight: u32,
    /// Chance that a node starting a campaign (PreVote or vote) has its messages with one
    /// other voter held back, both ways, for up to `hold_back_ms_max`: its requests, their
    /// answers and whatever else the pair sends each other around the election arrive late
    /// and out of order.
    pub election_hold_back_probability: f64,
    /// Longest hold of a link pair.
    pub hold_back_ms_max: u64,
}

/// Everything one randomized run depends on. [`SimOptions::from_seed`] derives all of it from a
/// seed, so a seed alone names a run.
#[derive(Clone, Debug, PartialEq)]
pub struct SimOptions {
    /// The seed every choice derives from.
    pub seed: u64,
    /// Voters the cluster starts with.
    pub nodes: usize,
    /// Nodes beyond the voters, outside the cluster until a membership change adds them.
    /// Membership churn keeps the voters between `voters_min` and `VOTERS_MAX` (7).
    pub spare_nodes: usize,
    /// Fewest voters membership churn shrinks the cluster to: `VOTERS_MIN`, or 1 (through
    /// the one- and two-voter configurations, and the bootstrap path back: add learners,
    /// promote them).
    pub voters_min: usize,
    /// Name of the fault mix, for reports.
    pub profile: &'static str,
    /// Closed-loop clients, each with one operation in flight.
    pub clients: usize,
    /// Of those, how many (the first ones) propose in a client session of their own
    /// ([`Cluster::propose_in_session`]): a write (or get through the log) whose outcome is
    /// unknown (a timeout, a failure that may have applied, a crash of the node asked) is
    /// proposed again with the same session and sequence, to a node picked afresh, up to
    /// [`SESSION_ATTEMPTS_MAX`] times, and stays one operation from the first attempt to the
    /// answer.
    pub session_clients: usize,
    /// Nodes forward proposals in one-off sessions, as the runtime's do
    /// ([`crate::protocol::RawNode::set_forward_sessions`]).
    pub forward_sessions: bool,
    /// Keys the clients use (fewer keys, more contention).
    pub keys: usize,
    /// Virtual time with faults and clients running.
    pub fault_phase_ms: u64,
    /// Virtual time the liveness phase may go without catching up before the run fails: the
    /// phase fails once this long has passed since the faults ended and since any member last
    /// applied an entry it lacked then (see [`run`]).
    pub liveness_ms_max: u64,
    /// A client gives up on an operation after this long (outcome unknown).
    pub client_timeout_ms: u64,
    /// Longest pause of a client between two operations.
    pub client_think_ms_max: u64,
    /// Virtual time between ticks.
    pub tick_ms: u64,
    /// Random extra time per tick interval.
    pub tick_jitter_ms: u64,
    /// Largest fixed extra time per tick interval of one node (its clock runs slow). With lease
    /// reads, `tick_ms`, this and `tick_jitter_ms` must keep clocks within the lease's drift
    /// assumption (see [`lease_clock_margin_holds`]); [`run`] refuses options that do not.
    pub tick_skew_ms_max: u64,
    /// Each node's clock runs with no skew or with `tick_skew_ms_max`, nothing in between
    /// ([`super::ClusterBuilder::clocks_at_extremes`]).
    pub clocks_at_extremes: bool,
    /// Chance that a client's get is a read without the log ([`Cluster::read_kv`]: ReadIndex on
    /// a leader, or from its lease with `config.lease_reads`; a follower read on a follower)
    /// instead of a command through the log.
    pub read_index_probability: f64,
    /// The fault mix.
    pub faults: FaultRates,
    /// The protocol settings every node starts from (`id`, `voters` and `seed` are set per
    /// node).
    pub config: Config,
    /// Record the trace in the report.
    pub trace: bool,
    /// Also write the trace to this file (pass or fail).
    pub trace_path: Option<PathBuf>,
    /// The command printed with a failure, to replay this run.
    pub replay_hint: String,
}

impl SimOptions {
    /// The run that `seed` names: 1, 2, 3 or 5 voters (one and two on a tenth of the seeds
    /// each, always with spare nodes to add as learners and promote) and one of five fault
    /// mixes (calm, lossy, partitions, crashes, chaos), with rates varied by the seed; then,
    /// from streams of their own: lease reads on half the seeds that have CheckQuorum, the
    /// share of gets read without the log (none, half, most or all), how often leadership is
    /// transferred (never on a quarter of the seeds), snapshots and membership churn, and the
    /// disk: slow fsyncs (a heartbeat interval or more) on half the seeds, failing writes on a
    /// fifth; and client sessions: none, half or all of the clients in sessions, forwards in
    /// one-off sessions on four seeds in five, and on two in five an answer limit
    /// (`session_result_bytes_max`) that keeps no answers or only one-byte ones; and on a
    /// quarter a `log_bytes_max` of a few hundred to a few thousand bytes, so the log's byte
    /// bound takes snapshots. Each from a stream of its own too: on half the lease seeds,
    /// clocks at the edge of the lease's drift assumption (see [`lease_clock_margin_holds`]),
    /// often with a narrow election timeout; on half the seeds, link pairs held back
    /// ([`Cluster::hold_back`]), at random and around campaigns; on seeds that lose disks, run
    /// PreVote and change no membership, a disk lost right after a bare-quorum acknowledgement
    /// (`FaultRates::amnesia_after_ack_weight`, at most once a run).
    pub fn from_seed(seed: u64) -> SimOptions {
        let mut rng = SimRng::stream(seed, 100);
        let nodes = [1, 2, 3, 5][rng.weighted(&[1, 1, 4, 4])];
        let profile = ["calm", "lossy", "partitions", "crashes", "chaos"][rng.below(5) as usize];
        let mut faults = fault_rates(&mut rng, profile, nodes);
        let mut config = protocol_settings(&mut rng, nodes);
        let mut reads_and_transfers = SimRng::stream(seed, 101);
        config.lease_reads = config.check_quorum && reads_and_transfers.chance(0.5);
        let read_index_probability =
            [0.0, 0.5, 0.8, 1.0][reads_and_transfers.weighted(&[1, 2, 2, 2])];
        faults.transfer_weight = reads_and_transfers.between(0, 3) as u32;
        // Snapshots and membership churn draw from a stream of their own, too.
        let mut churn = SimRng::stream(seed, 102);
        if churn.chance(0.75) {
            config.snapshot_interval_entries = churn.between(5, 150);
            config.snapshot_tail_entries = [0, 3, 40][churn.below(3) as usize];
        } else {
            config.snapshot_interval_entries = 0; // only by hand
        }
        config.snapshot_chunk_bytes_max = [24, 200, 4096][churn.below(3) as usize];
        config.snapshot_inflight_chunks_max = churn.between(1, 4) as usize;
        config.snapshot_resend_ticks = churn.between(5, 40) as u32;
        faults.snapshot_weight = churn.between(0, 2) as u32;
        let spare_nodes = if nodes < VOTERS_MIN || churn.chance(0.6) {
            faults.membership_weight = churn.between(1, 4) as u32;
            VOTERS_MAX + 2 - nodes
        } else {
            0
        };
        let voters_min = if nodes < VOTERS_MIN || churn.chance(0.2) {
            1
        } else {
            VOTERS_MIN
        };
        disk_faults(&mut SimRng::stream(seed, 103), &mut faults, &config);
        // A third of the seeds run in-memory nodes that lose everything when they crash.
        let mut amnesia = SimRng::stream(seed, 104);
        if amnesia.chance(0.35) {
            faults.amnesia_probability = amnesia.between(3, 10) as f64 / 10.0;
        }
        // On some seeds, a voter that acknowledged an entry only a bare quorum holds loses its
        // disk at once, and the leader goes away (a stream of its own, as below: seeds without
        // it replay as before).
        // Not with membership churn nor without PreVote: a change that drops a voter while
        // another's new life is unrecorded can leave a quorum that never records it (seed 587
        // of 3000), and without PreVote the entry's last holder may never win (seed 925); both
        // open, see MUTANTS.md.
        let mut amnesia_after_ack = SimRng::stream(seed, 108);
        let affordable = faults.membership_weight == 0 && config.pre_vote;
        if faults.amnesia_probability > 0.0 && affordable && amnesia_after_ack.chance(0.6) {
            faults.amnesia_after_ack_weight = amnesia_after_ack.between(1, 3) as u32;
        }
        // Held-back link pairs, at random and around elections, on half the seeds.
        let mut holds = SimRng::stream(seed, 107);
        if holds.chance(0.5) {
            faults.hold_back_weight = holds.between(0, 2) as u32;
            faults.election_hold_back_probability = holds.between(1, 5) as f64 / 10.0;
            let election_timeout_ms = u64::from(config.election_timeout_ticks_max) * TICK_MS;
            faults.hold_back_ms_max = holds.between(TICK_MS, election_timeout_ms);
        }
        let mut sessions = SimRng::stream(seed, 105);
        let session_share = [0.0, 0.5, 1.0][sessions.weighted(&[1, 2, 2])];
        let forward_sessions = sessions.chance(0.8);
        config.session_result_bytes_max = [1024, 1, 0][sessions.weighted(&[3, 1, 1])];
        // On a quarter of the seeds the in-memory log's byte bound is small enough to hit: the
        // nodes then snapshot by size too (also when the entry-count policy is off).
        let mut log_bytes = SimRng::stream(seed, 109);
        if log_bytes.chance(0.25) {
            config.log_bytes_max = log_bytes.between(300, 3_000) as usize;
            config.proposal_bytes_max = config.proposal_bytes_max.min(300);
        }
        let clients = rng.between(3, 6) as usize;
        // On half the lease seeds, clocks at the edge of the lease's drift assumption: ticks of
        // 20 ms, each node's clock either exact or 4 ms slow per tick (plus 1 ms of jitter), so
        // the slowest lease (11 ticks of 25 ms) ends 5 ms before the fastest follower's promise
        // (14 ticks of 20 ms; see lease_clock_margin_holds). Elsewhere ticks of 10 to 12 ms:
        // rates within 20% of each other, inside the margin (11 ticks of the slowest clock end
        // before 14 of the fastest).
        let mut clocks = SimRng::stream(seed, 106);
        let clocks_at_extremes = config.lease_reads && clocks.chance(0.5);
        let (tick_ms, tick_skew_ms_max) = if clocks_at_extremes {
            // Often with a narrow election timeout too: followers then time out about when
            // their promise ends, the moment a lease too long is caught at. Only with PreVote:
            // without it, a node with a stale log and a fast clock campaigns again before a
            // slow node with the longest log ever times out (each new term resets its timer),
            // and nobody is elected (etcd's reason for PreVote).
            if config.pre_vote && clocks.chance(0.6) {
                config.election_timeout_ticks_max = config.election_timeout_ticks_min + 2;
            }
            (2 * TICK_MS, 4)
        } else {
            (TICK_MS, 1)
        };
        SimOptions {
            seed,
            nodes,
            spare_nodes,
            voters_min,
            profile,
            config,
            clients,
            session_clients: (clients as f64 * session_share).round() as usize,
            forward_sessions,
            keys: rng.between(2, 5) as usize,
            fault_phase_ms: 20_000,
            liveness_ms_max: 10_000,
            client_timeout_ms: 1_500,
            client_think_ms_max: 40,
            tick_ms,
            tick_jitter_ms: 1,
            tick_skew_ms_max,
            clocks_at_extremes,
            read_index_probability,
            faults,
            trace: false,
            trace_path: None,
            replay_hint: format!(
                "SIM_SEED={seed} cargo test --release -p raft-core --test simulation -- --nocapture"
            ),
        }
    }
}

/// The fault mix `profile` names, with rates varied by `rng`.
fn fault_rates(rng: &mut SimRng, profile: &str, nodes: usize) -> FaultRates {
    let mut faults = FaultRates {
        network: NetworkFaults {
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            reorder_probability: 0.0,
            delay_ms_min: 1,
            delay_ms_max: rng.between(2, 8),
            long_delay_probability: 0.0,
            long_delay_ms_max: 0,
            crash_survive_probability: rng.between(0, 10) as f64 / 10.0,
        },
        disk: DiskTiming {
            write_delay_ms_max: rng.between(1, 5),
            ..DiskTiming::INSTANT
        },
        fault_interval_ms_min: 100,
        fault_interval_ms_max: 600,
        crash_weight: 0,
        partition_weight: 0,
        one_way_weight: 0,
        isolate_leader_weight: 0,
        heal_weight: 2,
        transfer_weight: 0,
        quiet_weight: 4,
        membership_weight: 0,
        snapshot_weight: 0,
        down_ms_max: 1500,
        cut_ms_max: 1500,
        // One- and two-voter clusters may lose their one node that matters, for a while.
        crashed_nodes_max: ((nodes - 1) / 2).max(1),
        amnesia_probability: 0.0,
        amnesia_after_ack_weight: 0,
        hold_back_weight: 0,
        election_hold_back_probability: 0.0,
        hold_back_ms_max: 0,
    };
    let lossy = |faults: &mut FaultRates, rng: &mut SimRng| {
        faults.network.drop_probability = rng.between(1, 20) as f64 / 100.0;
        faults.network.duplicate_probability = rng.between(1, 15) as f64 / 100.0;
        faults.network.reorder_probability = rng.between(0, 10) as f64 / 100.0;
        faults.network.delay_ms_max = rng.between(5, 30);
        faults.network.long_delay_probability = rng.between(0, 3) as f64 / 100.0;
        faults.network.long_delay_ms_max = rng.between(100, 800);
    };
    match profile {
        "calm" => {
            faults.crash_weight = 1;
            faults.partition_weight = 1;
            faults.quiet_weight = 10;
        }
        "lossy" => {
            lossy(&mut faults, rng);
            faults.isolate_leader_weight = 1;
        }
        "partitions" => {
            faults.partition_weight = 3;
            faults.one_way_weight = 3;
            faults.isolate_leader_weight = 2;
        }
        "crashes" => {
            faults.crash_weight = 4;
            faults.disk.write_delay_ms_max = rng.between(5, 25);
            if rng.chance(0.3) {
                faults.crashed_nodes_max = nodes; // the whole cluster may go down
            }
        }
        _ => {
            lossy(&mut faults, rng);
            faults.crash_weight = 2;
            faults.partition_weight = 2;
            faults.one_way_weight = 2;
            faults.isolate_leader_weight = 2;
            faults.disk.write_delay_ms_max = rng.between(2, 15);
        }
    }
    faults
}

/// Slow fsyncs on half the seeds (a share of writes stalls for one to four heartbeat
/// intervals), failing writes on a fifth (the node fail-stops and restarts from its disk), and
/// a leader's writes held back for a later one on most.
fn disk_faults(rng: &mut SimRng, faults: &mut FaultRates, config: &Config) {
    let heartbeat_ms = u64::from(config.heartbeat_interval_ticks) * TICK_MS;
    if rng.chance(0.5) {
        faults.disk.slow_write_probability = rng.between(2, 20) as f64 / 100.0;
        faults.disk.slow_write_ms_min = heartbeat_ms;
        faults.disk.slow_write_ms_max = heartbeat_ms * rng.between(1, 4);
    }
    if rng.chance(0.2) {
        faults.disk.write_fail_probability = rng.between(1, 10) as f64 / 1000.0;
        faults.disk.fail_restart_ms_max = rng.between(20, 1_000);
    }
    // A leader's writes held for the next one on most seeds, as the runtime does by default.
    if rng.chance(0.7) {
        faults.disk.leader_write_hold_ms = rng.between(1, 3);
    }
}

/// Protocol settings varied by the seed: PreVote and CheckQuorum sometimes off, and sometimes
/// limits small enough to be hit all the time (one entry per message, one append in flight,
/// a few hundred uncommitted bytes, one entry per apply batch).
fn protocol_settings(rng: &mut SimRng, nodes: usize) -> Config {
    let voters = (1..=nodes as u64).map(NodeId).collect();
    let mut config = Config::new(NodeId(1), voters);
    config.pre_vote = rng.chance(0.8);
    config.check_quorum = rng.chance(0.8);
    if rng.chance(0.4) {
        config.message_bytes_max = rng.between(1, 400) as usize;
    }
    if rng.chance(0.4) {
        config.inflight_messages_max = rng.between(1, 4) as usize;
        config.inflight_bytes_max = rng.between(100, 2_000) as usize;
    }
    if rng.chance(0.3) {
        config.uncommitted_bytes_max = rng.between(20, 400) as usize;
    }
    if rng.chance(0.3) {
        config.apply_batch_entries_max = rng.between(1, 3) as usize;
    }
    if rng.chance(0.2) {
        config.proposal_wait_ticks = rng.between(5, 30) as u32;
    }
    config
}

/// True when the clocks `options` simulate keep lease reads safe, or lease reads are off.
///
/// A lease assumes bounded clock drift (see `protocol::reads`): the leader serves from its
/// lease until `read_lease_ticks` of its own ticks have passed since a heartbeat round left,
/// that is for less than `read_lease_ticks` of its tick intervals; a follower that answered the
/// round refuses to vote until `election_timeout_ticks_min` of its own ticks have passed since,
/// that is for at least `election_timeout_ticks_min - 1` whole intervals (the first tick may
/// come at once). So the lease is safe when `read_lease_ticks` intervals of the slowest clock
/// end before `election_timeout_ticks_min - 1` intervals of the fastest. With the defaults (11
/// and 15 ticks) the slowest clock may tick up to 27% slower than the fastest; the runs
/// [`SimOptions::from_seed`] makes tick every 10 to 12 ms (20%).
pub fn lease_clock_margin_holds(options: &SimOptions) -> bool {
    if !options.config.lease_reads {
        return true;
    }
    let fastest_ms = options.tick_ms;
    let slowest_ms = options.tick_ms + options.tick_skew_ms_max + options.tick_jitter_ms;
    let lease_ms_max = slowest_ms * u64::from(options.config.read_lease_ticks);
    let promise_ms_min =
        fastest_ms * u64::from(options.config.election_timeout_ticks_min.saturating_sub(1));
    lease_ms_max < promise_ms_min
}

/// How a leadership transfer the driver asked for ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferEnd {
    /// The target led a later term.
    TargetLeads,
    /// The leader gave up after an election timeout and went on leading its term.
    TimedOut,
    /// Another node led a later term, or the leader crashed.
    Superseded,
}

/// What a run did, for the caller to aggregate and assert on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// The fault mix.
    pub profile: &'static str,
    /// Operations in the checked history (those that did not definitely fail).
    pub operations: usize,
    /// Operations whose client got an answer.
    pub returned: usize,
    /// Operations whose outcome stayed unknown (timeouts, crashes, lost leadership).
    pub unknown: usize,
    /// Operations that definitely did not happen (left out of the history).
    pub did_not_happen: usize,
    /// Operations that overlapped in time with another client's operation on the same key.
    pub concurrent: usize,
    /// Reads that returned a value written by a client.
    pub reads_found: usize,
    /// Compare-and-swaps that swapped, and that did not.
    pub cas_swapped: usize,
    /// Compare-and-swaps that found another value.
    pub cas_refused: usize,
    /// Gets answered without the log (ReadIndex, lease or follower reads).
    pub reads_without_log: usize,
    /// Of the reads without the log asked for, those served by a leader from its lease.
    pub lease_reads: u64,
    /// Reads without the log that failed, timed out or were lost (left out of the history).
    pub reads_dropped: usize,
    /// Proposals refused because their leader was handing over (did not happen).
    pub refused_for_transfer: usize,
    /// Leadership transfers a leader accepted during the fault phase.
    pub transfers: u64,
    /// Transfers after which the target led.
    pub transfers_to_target: u64,
    /// Transfers that timed out, the leader resuming in its term.
    pub transfers_timed_out: u64,
    /// Transfers overtaken by another election or a crash.
    pub transfers_superseded: u64,
    /// How the transfer asked for at the start of the liveness phase ended.
    pub liveness_transfer: Option<TransferEnd>,
    /// Node crashes.
    pub crashes: u64,
    /// Restarts with a wiped disk, in a new incarnation.
    pub amnesias: u64,
    /// Of those, disks wiped right after their voter acknowledged an entry only a bare
    /// quorum held (the leader then went away).
    pub amnesias_after_ack: u64,
    /// Link pairs held back (at random, and around campaigns).
    pub link_holds: u64,
    /// Two-sided partitions made (isolations included).
    pub partitions: u64,
    /// One-way cuts made.
    pub one_way_cuts: u64,
    /// Messages dropped at random.
    pub messages_dropped: u64,
    /// Messages duplicated.
    pub messages_duplicated: u64,
    /// Messages that left their link's order.
    pub messages_reordered: u64,
    /// Messages lost to cuts.
    pub messages_cut: u64,
    /// Messages delivered across a restart of their sender or receiver.
    pub messages_across_restarts: u64,
    /// Writes that stalled for a slow fsync.
    pub writes_slow: u64,
    /// Writes that failed, fail-stopping their node.
    pub writes_failed: u64,
    /// Fewest voters at once (in the membership of any leader seen after a change).
    pub voters_min: usize,
    /// Terms that had a leader.
    pub leader_terms: usize,
    /// Events processed.
    pub steps: u64,
    /// Membership changes leaders accepted.
    pub membership_changes: u64,
    /// Most voters at once (in the final membership of any leader seen).
    pub voters_max: usize,
    /// Snapshots built by state machines.
    pub snapshots_built: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Snapshot chunks sent.
    pub snapshot_chunks: u64,
    /// Clients that proposed in sessions.
    pub session_clients: usize,
    /// Operations proposed in sessions.
    pub session_operations: usize,
    /// Attempts beyond the first of operations in sessions (retries proposed).
    pub session_retries: u64,
    /// Operations in sessions answered for a copy the session table kept from the state
    /// machine: a retry (or re-forward) given the first answer.
    pub answered_from_table: u64,
    /// Operations answered "applied once, answer not kept": in a client session, or outside
    /// one when their forward travelled in a one-off session.
    pub answers_not_kept: u64,
    /// Copies of commands in sessions the nodes' session tables kept from their state
    /// machines (per node that applied them).
    pub session_copies_filtered: u64,
    /// Entries the cluster committed.
    pub committed: usize,
    /// Virtual time at the end.
    pub end_ms: u64,
    /// Virtual time the liveness phase took.
    pub liveness_ms: u64,
    /// Entries the members lacked when the faults ended, summed over the members: for each,
    /// the entries up to the longest log then held that it had not applied.
    pub catch_up_entries: u64,
    /// The trace, when asked for.
    pub trace: Option<String>,
}

/// Runs the simulation `options` describe and checks it: invariants after every step,
/// liveness after the faults, linearizability of the history at the end.
///
/// The liveness phase must settle, but it is not given a fixed time: it fails once
/// `options.liveness_ms_max` passes without catching up, that is without any member applying an
/// entry up to the longest log held when the faults ended. Raft promises that a calm cluster
/// elects a leader, commits, and brings every member's log up to the leader's; it does not
/// promise how fast a member far behind catches up, which the flow-control limits set
/// (`message_bytes_max` per append, `inflight_messages_max` appends in flight, one round trip
/// each). A fixed time failed seeds whose learner lagged more than that time could carry, while
/// it kept catching up. A stuck node, a leader that cannot commit, or a cluster whose elections
/// never end still fails within `liveness_ms_max`: once every member applied what any log held at
/// the end of the faults, nothing more counts (new terms' blank entries do not), and the phase then
/// has `liveness_ms_max` left to settle. The catch-up is bounded too: each entry counted buys at
/// most `liveness_ms_max`, so the phase ends within `liveness_ms_max * (catch_up_entries + 1)`.
///
/// # Panics
/// On any violation or protocol panic, with the seed and the replay command; the trace is
/// written to `options.trace_path` first when set.
pub fn run(options: &SimOptions) -> RunReport {
    let mut driver: Option<Driver<'_>> = None;
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let state = driver.insert(Driver::new(options));
        state.run()
    }));
    let trace = driver.as_mut().map(|d| d.cluster.take_trace());
    if let (Some(path), Some(text)) = (&options.trace_path, &trace) {
        if let Err(error) = std::fs::write(path, text) {
            eprintln!("could not write the trace to {}: {error}", path.display());
        }
    }
    match result {
        Ok(mut report) => {
            if options.trace {
                report.trace = trace;
            }
            report
        }
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            let mut notes = String::new();
            if !message.contains("\nreplay: ") {
                notes = format!("\nreplay: {}", options.replay_hint);
            }
            if let Some(path) = &options.trace_path {
                notes.push_str(&format!("\ntrace: {}", path.display()));
            }
            panic!(
                "simulation seed {} ({} nodes, {}) failed: {message}{notes}",
                options.seed, options.nodes, options.profile
            )
        }
    }
}

/// What a driver timer means.
#[derive(Clone, Copy, Debug)]
enum Event {
    Issue {
        client: usize,
    },
    /// The attempt `attempt` of `op` timed out (if it is still the live one).
    Timeout {
        op: usize,
        attempt: u32,
    },
    /// Propose `op`, in its session, once more.
    Retry {
        op: usize,
    },
    Fault,
    Heal(CutId),
    Restart(NodeId),
    /// Probe the lease of a leader just cut off (see [`LEASE_PROBE_MS`]).
    LeaseProbe {
        node: NodeId,
        term: Term,
        until_ms: u64,
    },
    EndFaults,
}

/// How an operation ended, as its client knows.
#[derive(Clone, Debug, PartialEq, Eq)]
enum OpOutcome {
    Pending,
    Returned { output: KvOutput, at_ms: u64 },
    Unknown,
    DidNotHappen,
}

#[derive(Clone, Debug)]
struct OpRecord {
    client: usize,
    input: KvInput,
    /// A get read without the log (it has no effect: a failure drops it from the history).
    without_log: bool,
    /// The first attempt's time: a retried operation is one operation, from its first
    /// attempt to its answer.
    call_ms: u64,
    outcome: OpOutcome,
    /// The session and sequence of an operation in a session; every attempt proposes them.
    session: Option<SessionTag>,
    /// Attempts started.
    attempts: u32,
    /// The attempt the client waits on now; `None` between a failed attempt and its retry.
    live_attempt: Option<u32>,
    /// Some attempt ended without a definite answer (it may have applied): the operation can
    /// no longer be one that did not happen.
    uncertain: bool,
}

#[derive(Clone, Debug, Default)]
struct Client {
    /// The operation in flight.
    busy: Option<usize>,
    /// The last value this client saw for each key (what its compare-and-swaps expect).
    seen: BTreeMap<String, Option<Bytes>>,
    written: u64,
    /// The client's session, for a session client.
    session: Option<SessionId>,
    /// The sequence of its last command in the session (one in flight at a time).
    sequence: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Faults,
    Liveness { since_ms: u64 },
}

/// How far the members have caught up, during the liveness phase, to the longest log held
/// when the faults ended (see [`run`] for why the liveness phase waits while it moves).
#[derive(Clone, Debug, PartialEq, Eq)]
struct CatchUp {
    /// The nodes some node counted as members (voters or learners) when the faults ended;
    /// spare nodes never added are left out, as they are sent nothing.
    members: BTreeSet<NodeId>,
    /// The last index of the longest log held when the faults ended.
    target: LogIndex,
    /// Entries up to `target` the members lacked then, summed over the members.
    lacking_at_start: u64,
    /// The sum over the members of `min(applied, target)`, the highest seen.
    applied_sum_max: u64,
    /// When `applied_sum_max` last rose (or the faults ended).
    moved_ms: u64,
}

impl CatchUp {
    /// The catch-up as `cluster` stands when the faults end.
    fn start(cluster: &Cluster) -> CatchUp {
        let ids = cluster.ids();
        let members: BTreeSet<NodeId> = ids
            .iter()
            .flat_map(|n| cluster.node(*n).membership().members())
            .collect();
        let target = ids
            .iter()
            .map(|n| cluster.node(*n).last_index())
            .max()
            .unwrap_or(LogIndex(0));
        let applied_sum = applied_sum(cluster, &members, target);
        CatchUp {
            lacking_at_start: target.0 * members.len() as u64 - applied_sum,
            members,
            target,
            applied_sum_max: applied_sum,
            moved_ms: cluster.now_ms(),
        }
    }

    /// Moves on when a member applied an entry up to the target since. A restart (a write
    /// queued before the faults ended may still fail) lowers a node's applied index; only a
    /// sum above the highest one seen counts, so a node replaying its log after a restart does
    /// not count twice.
    fn observe(&mut self, cluster: &Cluster) {
        let applied_sum = applied_sum(cluster, &self.members, self.target);
        if applied_sum > self.applied_sum_max {
            self.applied_sum_max = applied_sum;
            self.moved_ms = cluster.now_ms();
        }
    }
}

/// The sum over `members` of the index each applied, counted up to `target`.
fn applied_sum(cluster: &Cluster, members: &BTreeSet<NodeId>, target: LogIndex) -> u64 {
    members
        .iter()
        .map(|n| cluster.kv(*n).applied_index().min(target).0)
        .sum()
}

/// Virtual time between two attempts at the liveness phase's fresh write.
const FRESH_RETRY_MS: u64 = 50;

/// How long the driver follows a transfer whose leader stepped down while nobody leads a later
/// term (faults may keep it so); it then counts it superseded.
const TRANSFER_WATCH_MS_MAX: u64 = 5_000;

/// Chance that the driver cuts a transferring leader off once its target campaigns.
const TRANSFER_CUT_OFF_PROBABILITY: f64 = 0.3;

/// A leadership transfer the driver asked for, until it ends.
#[derive(Clone, Copy, Debug)]
struct TransferWatch {
    source: NodeId,
    target: NodeId,
    /// The leader's term when it accepted.
    term: Term,
    since_ms: u64,
    /// Asked for in the liveness phase.
    liveness: bool,
    /// Cut the leader off from everyone once the target campaigns: the old leader hears
    /// nothing of the new term, the hardest case for its reads.
    cut_off_source: bool,
}

/// How long the driver probes the lease of a leader it cut off: past the longest lease and the
/// followers' vote promise.
const LEASE_PROBE_MS: u64 = 600;

/// Disks a run loses right after an acknowledgement, at most: each costs a rejoin (a joint
/// change out and back), and a second loss before the first node is back can leave a quorum
/// that never records it (seed 587 of 3000 lost five; open, see MUTANTS.md).
const AMNESIAS_AFTER_ACK_MAX: u64 = 1;

/// How long the fault that wipes a voter's disk right after an acknowledgement waits for the
/// moment it needs (see [`Driver::watch_amnesia_after_ack`]).
const AMNESIA_ARMED_MS: u64 = 2_000;

/// The client reserved for the liveness phase's fresh write.
const FRESH_CLIENT: usize = usize::MAX;

struct Driver<'a> {
    options: &'a SimOptions,
    cluster: Cluster,
    fault_rng: SimRng,
    /// Draws whether a restart wipes the disk (its own stream: seeds without amnesia replay
    /// as before).
    amnesia_rng: SimRng,
    client_rng: SimRng,
    clients: Vec<Client>,
    ops: Vec<OpRecord>,
    /// Proposals whose client still waits, by proposal.
    waiting: BTreeMap<ProposalId, usize>,
    timers: BTreeMap<u64, Event>,
    next_tag: u64,
    phase: Phase,
    /// The fresh write of the liveness phase: its op, and its index once applied.
    fresh: Option<(usize, Option<LogIndex>)>,
    /// No fresh write is proposed before this time (a failed one is retried, not at every
    /// step).
    fresh_retry_ms: u64,
    /// The highest index whose proposer was told it applied.
    acknowledged_max: LogIndex,
    partitions: u64,
    one_way_cuts: u64,
    /// Transfers not ended yet.
    transfers: Vec<TransferWatch>,
    transfer_ends: BTreeMap<&'static str, u64>,
    liveness_transfer: Option<Option<TransferEnd>>,
    /// The liveness phase's catch-up, from the end of the faults.
    catch_up: Option<CatchUp>,
    /// Transfers the fault phase started.
    transfers_started: u64,
    refused_for_transfer: usize,
    voters_max: usize,
    voters_min: usize,
    /// Retries scheduled and not yet proposed.
    retries_scheduled: usize,
    session_retries: u64,
    answered_from_table: u64,
    answers_not_kept: u64,
    /// Draws the held-back link pairs (its own stream: seeds without holds replay as before).
    hold_rng: SimRng,
    /// Each node's (role, term) when last looked at, to see campaigns start.
    campaigns_seen: BTreeMap<NodeId, (Role, Term)>,
    /// Until when the driver waits for a voter to acknowledge an entry only a bare quorum
    /// holds, to wipe its disk then ([`Driver::arm_amnesia_after_ack`]).
    amnesia_armed_until_ms: Option<u64>,
    link_holds: u64,
    amnesias_after_ack: u64,
}

impl<'a> Driver<'a> {
    fn new(options: &'a SimOptions) -> Driver<'a> {
        assert!(
            lease_clock_margin_holds(options),
            "lease reads with clocks that drift apart more than the lease allows (ticks of {} \
             to {} ms, read_lease_ticks {}, election_timeout_ticks_min {}): see \
             lease_clock_margin_holds",
            options.tick_ms,
            options.tick_ms + options.tick_skew_ms_max + options.tick_jitter_ms,
            options.config.read_lease_ticks,
            options.config.election_timeout_ticks_min
        );
        let cluster = Cluster::builder(options.nodes)
            .spare_nodes(options.spare_nodes)
            .seed(options.seed)
            .timing(Timing::Simulated {
                tick_ms: options.tick_ms,
                tick_jitter_ms: options.tick_jitter_ms,
                tick_skew_ms_max: options.tick_skew_ms_max,
            })
            .network(options.faults.network)
            .disk(options.faults.disk)
            .config(|config| *config = options.config.clone())
            .trace(
                options.trace || options.trace_path.is_some(),
                super::trace::TRACE_BYTES_MAX_DEFAULT,
            )
            .replay_hint(options.replay_hint.clone())
            .forward_sessions(options.forward_sessions)
            .clocks_at_extremes(options.clocks_at_extremes)
            .build();
        let mut clients = vec![Client::default(); options.clients];
        for (client, state) in clients.iter_mut().enumerate() {
            if client < options.session_clients {
                // What a client draws at random, from the seed; far from the forwards' ranges.
                state.session = Some(SessionId(mix(mix(options.seed, 0xc11e), client as u64)));
            }
        }
        Driver {
            options,
            cluster,
            fault_rng: SimRng::stream(options.seed, 4),
            amnesia_rng: SimRng::stream(options.seed, 6),
            client_rng: SimRng::stream(options.seed, 5),
            clients,
            ops: Vec::new(),
            waiting: BTreeMap::new(),
            timers: BTreeMap::new(),
            next_tag: 0,
            phase: Phase::Faults,
            fresh: None,
            fresh_retry_ms: 0,
            acknowledged_max: LogIndex(0),
            partitions: 0,
            one_way_cuts: 0,
            transfers: Vec::new(),
            transfer_ends: BTreeMap::new(),
            liveness_transfer: None,
            catch_up: None,
            transfers_started: 0,
            refused_for_transfer: 0,
            voters_max: options.nodes,
            voters_min: options.nodes,
            retries_scheduled: 0,
            session_retries: 0,
            answered_from_table: 0,
            answers_not_kept: 0,
            hold_rng: SimRng::stream(options.seed, 7),
            campaigns_seen: BTreeMap::new(),
            amnesia_armed_until_ms: None,
            link_holds: 0,
            amnesias_after_ack: 0,
        }
    }

    fn schedule(&mut self, at_ms: u64, event: Event) {
        assert!(
            self.timers.len() < DRIVER_TIMERS_MAX,
            "{DRIVER_TIMERS_MAX} driver timers"
        );
        let tag = self.next_tag;
        self.next_tag += 1;
        self.timers.insert(tag, event);
        self.cluster.schedule(at_ms, tag);
    }

    fn run(&mut self) -> RunReport {
        for client in 0..self.clients.len() {
            let at = self.client_rng.between(0, self.options.client_think_ms_max);
            self.schedule(at, Event::Issue { client });
        }
        self.schedule(self.options.faults.fault_interval_ms_min, Event::Fault);
        self.schedule(self.options.fault_phase_ms, Event::EndFaults);
        loop {
            match self.cluster.step() {
                None => panic!("nothing left to simulate at {} ms", self.cluster.now_ms()),
                Some(Stepped::Timer(tag)) => {
                    let event = self
                        .timers
                        .remove(&tag)
                        .expect("every tag is scheduled once");
                    self.handle(event);
                }
                Some(Stepped::Internal) => {}
            }
            self.collect_outcomes();
            self.watch_transfers();
            if self.phase == Phase::Faults {
                self.watch_campaigns();
                self.watch_amnesia_after_ack();
            }
            if let Phase::Liveness { since_ms } = self.phase {
                if self.liveness_reached() {
                    return self.finish(since_ms);
                }
                let catch_up = self.catch_up.as_mut().expect("set when the faults end");
                catch_up.observe(&self.cluster);
                if self.cluster.now_ms() > catch_up.moved_ms + self.options.liveness_ms_max {
                    self.liveness_failed(since_ms);
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        let faults = self.phase == Phase::Faults;
        match event {
            Event::Issue { client } if faults => self.issue(client),
            Event::Issue { .. } => {}
            Event::Timeout { op, attempt } if faults => self.timeout(op, attempt),
            Event::Timeout { .. } => {}
            Event::Retry { op } => self.retry(op),
            Event::Fault if faults => self.fault(),
            Event::Fault => {}
            Event::Heal(cut) => self.cluster.heal(cut),
            Event::Restart(node) => self.restart(node),
            Event::LeaseProbe {
                node,
                term,
                until_ms,
            } => self.probe_lease(node, term, until_ms),
            Event::EndFaults => self.end_faults(),
        }
    }

    // ----- clients ------------------------------------------------------------------------

    fn issue(&mut self, client: usize) {
        if self.cluster.live_nodes().is_empty() || self.ops.len() >= OPERATIONS_MAX / 2 {
            let retry = self.cluster.now_ms() + self.options.client_think_ms_max.max(10);
            self.schedule(retry, Event::Issue { client });
            return;
        }
        let node = self.pick_node().expect("a node is up");
        let input = self.next_input(client);
        let without_log = matches!(input, KvInput::Get { .. })
            && self.client_rng.chance(self.options.read_index_probability);
        let op = if without_log {
            self.read(client, node, input)
        } else if self.clients[client].session.is_some() {
            self.propose_in_session(client, node, input)
        } else {
            self.propose(client, node, input)
        };
        let timeout = self.cluster.now_ms() + self.options.client_timeout_ms;
        self.schedule(timeout, Event::Timeout { op, attempt: 1 });
    }

    /// The node a client asks: a random live member (as a client given the member list
    /// would), any live node while no leader is known; `None` when every node is down.
    fn pick_node(&mut self) -> Option<NodeId> {
        let live = self.cluster.live_nodes();
        if live.is_empty() {
            return None;
        }
        let members = self.members();
        let targets: Vec<NodeId> = live
            .iter()
            .copied()
            .filter(|n| members.as_ref().is_none_or(|m| m.contains(n)))
            .collect();
        let targets = if targets.is_empty() { live } else { targets };
        Some(targets[self.client_rng.below(targets.len() as u64) as usize])
    }

    fn next_input(&mut self, client: usize) -> KvInput {
        let key = format!("k{}", self.client_rng.below(self.options.keys as u64));
        let state = &mut self.clients[client];
        state.written += 1;
        let value = Bytes::from(format!("c{client}.{}", state.written));
        match self.client_rng.weighted(&[4, 4, 3]) {
            0 => KvInput::Put { key, value },
            1 => KvInput::Get { key },
            _ => {
                let expected = state.seen.get(&key).cloned().flatten();
                KvInput::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
        }
    }

    fn start_op(&mut self, client: usize, input: &KvInput, without_log: bool) -> usize {
        let op = self.ops.len();
        assert!(
            op < OPERATIONS_MAX,
            "{OPERATIONS_MAX} operations in one run"
        );
        self.ops.push(OpRecord {
            client,
            input: input.clone(),
            without_log,
            call_ms: self.cluster.now_ms(),
            outcome: OpOutcome::Pending,
            session: None,
            attempts: 1,
            live_attempt: Some(1),
            uncertain: false,
        });
        if client != FRESH_CLIENT {
            self.clients[client].busy = Some(op);
        }
        op
    }

    fn read(&mut self, client: usize, node: NodeId, input: KvInput) -> usize {
        let op = self.start_op(client, &input, true);
        let read = self.cluster.read_kv(node, input.key());
        self.cluster.trace_line(format_args!(
            "client {client} op {op} at {node} as read {:x}: {input:?}",
            read.0
        ));
        self.waiting.insert(read, op);
        op
    }

    fn propose(&mut self, client: usize, node: NodeId, input: KvInput) -> usize {
        let op = self.start_op(client, &input, false);
        let proposal = self.cluster.propose_kv(node, &input);
        self.cluster.trace_line(format_args!(
            "client {client} op {op} at {node} as {:x}: {input:?}",
            proposal.0
        ));
        self.waiting.insert(proposal, op);
        op
    }

    /// Starts `client`'s next command in its session: sequence one above its last.
    fn propose_in_session(&mut self, client: usize, node: NodeId, input: KvInput) -> usize {
        let op = self.start_op(client, &input, false);
        let state = &mut self.clients[client];
        state.sequence += 1;
        let tag = SessionTag {
            session: state.session.expect("a session client"),
            sequence: state.sequence,
        };
        self.ops[op].session = Some(tag);
        self.propose_attempt(op, node);
        op
    }

    /// Proposes the live attempt of `op`, in its session, at `node`.
    fn propose_attempt(&mut self, op: usize, node: NodeId) {
        let record = &self.ops[op];
        let tag = record.session.expect("attempts are proposed in sessions");
        let (client, attempt, input) = (record.client, record.attempts, record.input.clone());
        let proposal = self.cluster.propose_kv_in_session(node, tag, &input);
        self.cluster.trace_line(format_args!(
            "client {client} op {op} attempt {attempt} at {node} as {:x} in {tag}: {input:?}",
            proposal.0
        ));
        self.waiting.insert(proposal, op);
    }

    /// A retry of `op` is due: proposes it again, at a node picked afresh.
    fn retry(&mut self, op: usize) {
        self.retries_scheduled -= 1;
        let record = &self.ops[op];
        if record.outcome != OpOutcome::Pending || record.live_attempt.is_some() {
            return;
        }
        let Some(node) = self.pick_node() else {
            let again = self.cluster.now_ms() + self.options.client_think_ms_max.max(10);
            self.retries_scheduled += 1;
            self.schedule(again, Event::Retry { op });
            return;
        };
        let record = &mut self.ops[op];
        record.attempts += 1;
        record.live_attempt = Some(record.attempts);
        let attempt = record.attempts;
        self.session_retries += 1;
        self.propose_attempt(op, node);
        let timeout = self.cluster.now_ms() + self.options.client_timeout_ms;
        self.schedule(timeout, Event::Timeout { op, attempt });
    }

    /// The live attempt of `op` in a session ended without an answer (`uncertain`: it may
    /// have applied): the client retries after a short pause while it has attempts left, and
    /// otherwise gives up on it.
    fn attempt_failed(&mut self, op: usize, uncertain: bool) {
        let record = &mut self.ops[op];
        record.live_attempt = None;
        record.uncertain |= uncertain;
        if record.attempts < SESSION_ATTEMPTS_MAX {
            let pause = self
                .client_rng
                .between(1, self.options.client_think_ms_max.max(1));
            self.retries_scheduled += 1;
            self.schedule(self.cluster.now_ms() + pause, Event::Retry { op });
            return;
        }
        let outcome = if record.uncertain {
            OpOutcome::Unknown
        } else {
            OpOutcome::DidNotHappen
        };
        self.end_op(op, outcome);
    }

    fn timeout(&mut self, op: usize, attempt: u32) {
        let record = &self.ops[op];
        if record.outcome != OpOutcome::Pending || record.live_attempt != Some(attempt) {
            return;
        }
        self.waiting.retain(|_, waiting_op| *waiting_op != op);
        self.cluster
            .trace_line(format_args!("op {op} attempt {attempt} timed out"));
        if self.ops[op].session.is_some() {
            self.attempt_failed(op, true);
            return;
        }
        let outcome = if self.ops[op].without_log {
            OpOutcome::DidNotHappen // a read changes nothing: one without an answer is dropped
        } else {
            OpOutcome::Unknown
        };
        self.end_op(op, outcome);
    }

    fn collect_outcomes(&mut self) {
        for (proposal, outcome) in self.cluster.take_outcomes() {
            if let ProposalOutcome::Applied { index, .. } | ProposalOutcome::Session { index, .. } =
                outcome
            {
                // Its proposer was told the entry applied (the invariants hold every disk to
                // it at the end), whether or not a client still waits on it: the liveness
                // phase waits for every node to apply that far.
                self.acknowledged_max = self.acknowledged_max.max(index);
            }
            let Some(op) = self.waiting.remove(&proposal) else {
                continue; // the client gave up on it
            };
            if let ProposalOutcome::Failed {
                error: ProposeError::TransferInProgress(_),
                ..
            } = outcome
            {
                self.refused_for_transfer += 1;
            }
            if self.ops[op].session.is_some() {
                self.session_outcome(op, outcome);
                continue;
            }
            let without_log = self.ops[op].without_log;
            let outcome = match outcome {
                ProposalOutcome::Read { output, at_ms, .. } => {
                    OpOutcome::Returned { output, at_ms }
                }
                ProposalOutcome::Applied { .. } if without_log => {
                    panic!("op {op}, a read without the log, applied an entry")
                }
                ProposalOutcome::Failed { .. } | ProposalOutcome::Lost { .. } if without_log => {
                    OpOutcome::DidNotHappen // reads change nothing: a failed one is dropped
                }
                ProposalOutcome::Applied {
                    output: Some(output),
                    at_ms,
                    index,
                    ..
                } => {
                    if let Some((fresh_op, fresh_index)) = self.fresh.as_mut() {
                        if *fresh_op == op {
                            *fresh_index = Some(index);
                        }
                    }
                    OpOutcome::Returned { output, at_ms }
                }
                ProposalOutcome::Applied { output: None, .. } => {
                    panic!("op {op}'s entry applied without an answer")
                }
                ProposalOutcome::Session {
                    error: SessionError::AnswerNotKept { .. },
                    ..
                } => {
                    // Its forward travelled in a one-off session and applied once; the copy
                    // its proposer placed was answered by the table, which kept no answer.
                    self.answers_not_kept += 1;
                    OpOutcome::Unknown
                }
                ProposalOutcome::Session { error, .. } => {
                    panic!("op {op}, outside client sessions, was refused: {error}")
                }
                ProposalOutcome::Failed { error, .. } if error.is_definite() => {
                    OpOutcome::DidNotHappen
                }
                ProposalOutcome::Failed { .. } | ProposalOutcome::Lost { .. } => OpOutcome::Unknown,
            };
            self.end_op(op, outcome);
        }
    }

    /// How the live attempt of `op`, in a session, ended. Any attempt's answer is the
    /// operation's (a copy answered by the session table carries the first copy's answer);
    /// one that may have applied leaves the operation uncertain, and a failure is retried.
    fn session_outcome(&mut self, op: usize, outcome: ProposalOutcome) {
        let tag = self.ops[op].session.expect("an operation in a session");
        match outcome {
            ProposalOutcome::Applied {
                output: Some(output),
                at_ms,
                duplicate_of,
                ..
            } => {
                if duplicate_of.is_some() {
                    self.answered_from_table += 1;
                }
                self.end_op(op, OpOutcome::Returned { output, at_ms });
            }
            ProposalOutcome::Applied { output: None, .. } => {
                panic!("op {op} ({tag})'s entry applied without an answer")
            }
            ProposalOutcome::Session {
                error: SessionError::AnswerNotKept { .. },
                ..
            } => {
                // It applied, once; what it answered is lost. The history cannot say "took
                // effect, answer unknown", so it stays unknown (that includes having applied).
                self.answers_not_kept += 1;
                self.end_op(op, OpOutcome::Unknown);
            }
            ProposalOutcome::Session { error, .. } => {
                panic!("op {op} ({tag}), whose client still waits on it, was refused: {error}")
            }
            ProposalOutcome::Failed { error, .. } => {
                self.attempt_failed(op, !error.is_definite());
            }
            ProposalOutcome::Lost { .. } => self.attempt_failed(op, true),
            ProposalOutcome::Read { .. } => panic!("op {op} ({tag}) was answered as a read"),
        }
    }

    fn end_op(&mut self, op: usize, outcome: OpOutcome) {
        let record = &mut self.ops[op];
        record.outcome = outcome;
        let client = record.client;
        if client == FRESH_CLIENT {
            return;
        }
        if let OpOutcome::Returned { output, .. } = &record.outcome {
            let seen = &mut self.clients[client].seen;
            match (&record.input, output) {
                (KvInput::Put { key, value }, _) => {
                    seen.insert(key.clone(), Some(value.clone()));
                }
                (KvInput::Get { key }, KvOutput::Value(value)) => {
                    seen.insert(key.clone(), value.clone());
                }
                (KvInput::Cas { key, new, .. }, KvOutput::Swapped(true)) => {
                    seen.insert(key.clone(), Some(new.clone()));
                }
                _ => {}
            }
        }
        self.clients[client].busy = None;
        let think = self.client_rng.between(0, self.options.client_think_ms_max);
        let at = self.cluster.now_ms() + think;
        self.schedule(at, Event::Issue { client });
    }

    // ----- faults -------------------------------------------------------------------------

    fn fault(&mut self) {
        let rates = self.options.faults;
        let weights = [
            rates.crash_weight,
            rates.partition_weight,
            rates.one_way_weight,
            rates.isolate_leader_weight,
            rates.heal_weight,
            rates.quiet_weight,
            rates.transfer_weight,
            rates.membership_weight,
            rates.snapshot_weight,
            // New kinds go last: seeds without them draw as before.
            rates.amnesia_after_ack_weight,
            rates.hold_back_weight,
        ];
        let now = self.cluster.now_ms();
        match self.fault_rng.weighted(&weights) {
            0 => self.crash_one(),
            1 => {
                let ids = self.cluster.ids();
                let mut side: Vec<NodeId> = ids
                    .iter()
                    .copied()
                    .filter(|_| self.fault_rng.chance(0.5))
                    .collect();
                if side.is_empty() || side.len() == ids.len() {
                    side = vec![ids[self.fault_rng.below(ids.len() as u64) as usize]];
                }
                let cut = self.cluster.partition(&side);
                self.partitions += 1;
                self.schedule_heal(cut);
            }
            2 => {
                let n = self.cluster.ids().len() as u64;
                let from = self.fault_rng.below(n);
                let to = (from + 1 + self.fault_rng.below(n - 1)) % n;
                let cut = self.cluster.cut_one_way(from + 1, to + 1);
                self.one_way_cuts += 1;
                self.schedule_heal(cut);
            }
            3 => {
                if let Some(leader) = self.cluster.leader() {
                    let cut = self.cluster.isolate(leader);
                    self.partitions += 1;
                    self.schedule_heal(cut);
                    if self.options.config.lease_reads {
                        let term = self.cluster.node(leader).term();
                        let until_ms = now + LEASE_PROBE_MS;
                        self.schedule(
                            now,
                            Event::LeaseProbe {
                                node: leader,
                                term,
                                until_ms,
                            },
                        );
                    }
                }
            }
            4 => self.cluster.heal_all(),
            5 => {}
            6 => self.transfer(false),
            7 => self.change_membership(),
            9 => self.arm_amnesia_after_ack(),
            10 => self.hold_back_random_pair(),
            _ => {
                let live = self.cluster.live_nodes();
                if !live.is_empty() {
                    let node = live[self.fault_rng.below(live.len() as u64) as usize];
                    self.cluster.request_snapshot(node);
                }
            }
        }
        let next = now
            + self
                .fault_rng
                .between(rates.fault_interval_ms_min, rates.fault_interval_ms_max);
        self.schedule(next, Event::Fault);
    }

    /// The members (voters and learners) of the current leader's membership, if a leader is
    /// known.
    fn members(&self) -> Option<Vec<NodeId>> {
        let leader = self.cluster.leader()?;
        Some(
            self.cluster
                .node(leader)
                .membership()
                .members()
                .into_iter()
                .collect(),
        )
    }

    /// Asks the leader for a random membership change that keeps the voters between
    /// `voters_min` and [`VOTERS_MAX`]: add a spare node as a learner, promote a learner
    /// (sometimes removing a voter in the same joint change), remove a voter, or remove a
    /// learner.
    fn change_membership(&mut self) {
        let Some(leader) = self.cluster.leader() else {
            return;
        };
        let membership = self.cluster.node(leader).membership().clone();
        let voters: Vec<NodeId> = membership.voters.iter().copied().collect();
        let learners: Vec<NodeId> = membership.learners.iter().copied().collect();
        // An operator promotes learners that are ready (kvnode's /readyz): not one that lost its
        // disk and has not rejoined, whose old life the leader may still believe caught up. In
        // a small cluster, promoting it can make a configuration whose majority needs it, and
        // its new life counts for nothing there: no leader could be elected to record it.
        let promotable: Vec<NodeId> = learners
            .iter()
            .copied()
            .filter(|n| membership.incarnation_of(*n) == self.cluster.incarnation(*n))
            .filter(|n| !membership.rejoining.contains(n))
            .collect();
        let spares: Vec<NodeId> = self
            .cluster
            .ids()
            .into_iter()
            .filter(|n| !membership.is_member(*n) && !membership.removed.contains(n))
            .filter(|n| n.0 as usize > self.options.nodes)
            .collect();
        let pick = |rng: &mut SimRng, list: &[NodeId]| list[rng.below(list.len() as u64) as usize];
        let mut change = MembershipChange::default();
        let voters_min = self.options.voters_min;
        match self.fault_rng.weighted(&[3, 3, 2, 1]) {
            0 if !spares.is_empty() => change.add_learners.push(pick(&mut self.fault_rng, &spares)),
            1 if !promotable.is_empty() && voters.len() < VOTERS_MAX => {
                change.promote.push(pick(&mut self.fault_rng, &promotable));
                if voters.len() > voters_min && self.fault_rng.chance(0.5) {
                    change.remove.push(pick(&mut self.fault_rng, &voters));
                }
            }
            2 if voters.len() > voters_min => {
                change.remove.push(pick(&mut self.fault_rng, &voters))
            }
            3 if !learners.is_empty() => change.remove.push(pick(&mut self.fault_rng, &learners)),
            _ => return,
        }
        match self.cluster.change_membership(leader, &change) {
            Ok(_) => {
                let voters = self.cluster.node(leader).membership().all_voters().len();
                self.voters_max = self.voters_max.max(voters);
                let incoming = self.cluster.node(leader).membership().voters.len();
                self.voters_min = self.voters_min.min(incoming);
            }
            Err(
                MembershipError::ChangeInProgress
                | MembershipError::TransferInProgress
                | MembershipError::NotCaughtUp { .. }
                | MembershipError::NotLeader(_),
            ) => {}
            Err(error) => panic!("leader {leader} refused {change:?}: {error}"),
        }
    }

    /// Restarts a crashed node, from its disk or, with `amnesia_probability` when the cluster
    /// can afford it, from nothing in a new incarnation.
    fn restart(&mut self, node: NodeId) {
        let amnesia = self.options.faults.amnesia_probability;
        if amnesia > 0.0 && self.amnesia_rng.chance(amnesia) && self.may_lose_disk(node) {
            self.cluster.restart_amnesiac(node);
        } else {
            self.cluster.restart(node);
        }
    }

    /// True when `node` may lose its disk without making the cluster unable to recover: the
    /// leader's membership is committed and settled (not joint, nobody rejoining, every
    /// member recorded in its current life), and a voter leaves at least two voters. Losing a
    /// second voter before the first has rejoined, or the only copy a two-voter cluster has,
    /// loses acknowledged writes with any Raft (or leaves no quorum): that is not a fault the
    /// protocol can mask, so the simulator does not inject it.
    fn may_lose_disk(&self, node: NodeId) -> bool {
        let Some(leader) = self.cluster.leader() else {
            return false;
        };
        let raw = self.cluster.node(leader);
        let membership = raw.membership();
        let settled = raw.commit_index() >= raw.membership_index()
            && !membership.is_joint()
            && membership.rejoining.is_empty()
            && self
                .cluster
                .ids()
                .into_iter()
                .all(|id| membership.incarnation_of(id) == self.cluster.incarnation(id));
        settled && (!membership.is_voter(node) || membership.voters.len() >= 3)
    }

    /// Arms the fault that wipes a voter's disk right after it acknowledged an entry no more
    /// voters than a bare quorum hold (the leader among them), for the next
    /// [`AMNESIA_ARMED_MS`]; see [`Driver::watch_amnesia_after_ack`].
    fn arm_amnesia_after_ack(&mut self) {
        if self.amnesias_after_ack >= AMNESIAS_AFTER_ACK_MAX {
            return;
        }
        let until_ms = self.cluster.now_ms() + AMNESIA_ARMED_MS;
        self.amnesia_armed_until_ms = Some(until_ms);
    }

    /// After every step while armed: once a voter other than the leader holds the leader's
    /// last durable entry, and no more voters than a bare quorum do, that voter crashes and
    /// comes back with a wiped disk at once, every cut heals and the leader goes away (it
    /// crashes or is cut off). The entry now survives on one voter too few for a quorum:
    /// whatever the amnesiac node acknowledges or votes in its new life must count for
    /// nothing until a leader has recorded that life. Two moments follow that the protocol
    /// must get right: a stale leader of an older term (cut off, still leading) reaches the
    /// amnesiac node, which accepts its entries; and a candidate that lacks the entry asks
    /// the amnesiac node for the vote it needs while the entry's other holders are away. Only
    /// when the cluster can afford the loss ([`Driver::may_lose_disk`]).
    fn watch_amnesia_after_ack(&mut self) {
        let Some(until_ms) = self.amnesia_armed_until_ms else {
            return;
        };
        if self.cluster.now_ms() > until_ms {
            self.amnesia_armed_until_ms = None;
            return;
        }
        let Some((leader, node)) = self.bare_quorum_holder() else {
            return;
        };
        self.amnesia_armed_until_ms = None;
        self.amnesias_after_ack += 1;
        self.cluster.trace_line(format_args!(
            "fault: {node} loses its disk right after acknowledging {leader}'s last entry, \
             committed by a bare quorum; {leader} goes away"
        ));
        self.cluster.crash(node);
        self.cluster.restart_amnesiac(node);
        self.cluster.heal_all();
        let down = self.cluster.ids().len() - self.cluster.live_nodes().len();
        if down < self.options.faults.crashed_nodes_max && self.fault_rng.chance(0.5) {
            self.cluster.crash(leader);
            let back =
                self.cluster.now_ms() + self.fault_rng.between(20, self.options.faults.down_ms_max);
            self.schedule(back, Event::Restart(leader));
        } else {
            let cut = self.cluster.isolate(leader);
            self.partitions += 1;
            self.schedule_heal(cut);
        }
    }

    /// The leader and a voter other than it, up, that hold the leader's last durable entry
    /// when only a bare quorum of the voters' disks does, and that may lose its disk. The
    /// leader has committed the entry and has nothing beyond it: every acknowledgement it can
    /// count was counted before the disk was lost, so the loss leaves the entry one holder
    /// short of a quorum, the case the fault is after.
    fn bare_quorum_holder(&self) -> Option<(NodeId, NodeId)> {
        let leader = self.cluster.leader()?;
        let raw = self.cluster.node(leader);
        let membership = raw.membership();
        let disk = self.cluster.durable(leader);
        let last = disk.last_index();
        let term = disk.entry(last)?.term;
        if raw.commit_index() < last || raw.last_index() > last {
            return None; // more to count, from a disk that will not hold it
        }
        let holders: Vec<NodeId> = membership
            .voters
            .iter()
            .copied()
            .filter(|n| {
                let entry = self.cluster.durable(*n).entry(last);
                entry.is_some_and(|e| e.term == term)
            })
            .collect();
        if holders.len() != membership.voters.len() / 2 + 1 || !holders.contains(&leader) {
            return None;
        }
        let node = holders
            .into_iter()
            .find(|n| *n != leader && self.cluster.is_up(*n) && self.may_lose_disk(*n))?;
        Some((leader, node))
    }

    /// Holds back the messages between two random nodes, both ways.
    fn hold_back_random_pair(&mut self) {
        let ids = self.cluster.ids();
        let n = ids.len() as u64;
        if n < 2 {
            return;
        }
        let a = self.hold_rng.below(n);
        let b = (a + 1 + self.hold_rng.below(n - 1)) % n;
        self.hold_back(ids[a as usize], ids[b as usize]);
    }

    fn hold_back(&mut self, a: NodeId, b: NodeId) {
        let hold_ms = self
            .hold_rng
            .between(1, self.options.faults.hold_back_ms_max.max(1));
        let until_ms = self.cluster.now_ms() + hold_ms;
        self.cluster.hold_back(a, b, until_ms);
        self.link_holds += 1;
    }

    /// After every step of the fault phase: a node that just started a campaign (a pre-vote
    /// or a vote) has, with `election_hold_back_probability`, its messages with one other
    /// voter held back. Its requests, the answers, and what the pair sends each other about
    /// the old leader then arrive late and out of order: a pre-vote rejection carrying a
    /// newer term can overtake the vote request sent before it, after the voter heard the
    /// old leader again.
    fn watch_campaigns(&mut self) {
        let probability = self.options.faults.election_hold_back_probability;
        if probability == 0.0 {
            return;
        }
        for node in self.cluster.live_nodes() {
            let raw = self.cluster.node(node);
            let seen = (raw.role(), raw.term());
            if self.campaigns_seen.insert(node, seen) == Some(seen) {
                continue;
            }
            if !matches!(seen.0, Role::PreCandidate | Role::Candidate)
                || !self.hold_rng.chance(probability)
            {
                continue;
            }
            let others: Vec<NodeId> = raw
                .membership()
                .voters
                .iter()
                .copied()
                .filter(|n| *n != node)
                .collect();
            if others.is_empty() {
                continue;
            }
            let peer = others[self.hold_rng.below(others.len() as u64) as usize];
            self.hold_back(node, peer);
        }
    }

    fn crash_one(&mut self) {
        let live = self.cluster.live_nodes();
        let down = self.cluster.ids().len() - live.len();
        if live.is_empty() || down >= self.options.faults.crashed_nodes_max {
            return;
        }
        let node = live[self.fault_rng.below(live.len() as u64) as usize];
        self.cluster.crash(node);
        let back =
            self.cluster.now_ms() + self.fault_rng.between(20, self.options.faults.down_ms_max);
        self.schedule(back, Event::Restart(node));
    }

    // ----- leadership transfers -----------------------------------------------------------

    /// Asks the current leader to hand over to a random other voter, and follows the transfer.
    fn transfer(&mut self, liveness: bool) {
        let Some(source) = self.cluster.leader() else {
            return;
        };
        let others: Vec<NodeId> = self
            .cluster
            .node(source)
            .membership()
            .voters
            .iter()
            .copied()
            .filter(|n| *n != source)
            .collect();
        if others.is_empty() {
            return;
        }
        let target = others[self.fault_rng.below(others.len() as u64) as usize];
        let cut_off_source = !liveness && self.fault_rng.chance(TRANSFER_CUT_OFF_PROBABILITY);
        let term = self.cluster.node(source).term();
        match self.cluster.transfer_leadership(source, target) {
            Ok(()) => {
                self.transfers_started += u64::from(!liveness);
                self.transfers.push(TransferWatch {
                    source,
                    target,
                    term,
                    since_ms: self.cluster.now_ms(),
                    liveness,
                    cut_off_source,
                })
            }
            Err(TransferError::InProgress(_)) if !liveness => {}
            Err(error) => panic!("leader {source} refused a transfer to {target}: {error}"),
        }
    }

    /// After every step: checks how transfers end. An abandoned transfer must be a timeout
    /// reported by a leader still in the term it began in (it resumes; or it stepped down for
    /// CheckQuorum in the same tick); a leader may not stay in a transfer for longer than an
    /// election timeout (proposals would be refused for ever).
    fn watch_transfers(&mut self) {
        for failure in self.cluster.take_transfer_failures() {
            let position = self
                .transfers
                .iter()
                .position(|w| w.source == failure.node && w.term == failure.term);
            let Some(position) = position else {
                panic!("a transfer nobody asked for failed: {failure:?}");
            };
            let watch = self.transfers.remove(position);
            let resumed = failure.role == Role::Leader
                || (failure.role == Role::Follower && self.options.config.check_quorum);
            if failure.error != TransferError::TimedOut(watch.target) || !resumed {
                panic!(
                    "transfer {watch:?} ended with {failure:?}: expected a timeout with the \
                     leader resuming in its term"
                );
            }
            self.transfer_ended(watch, TransferEnd::TimedOut);
        }
        let now = self.cluster.now_ms();
        let slowest_tick_ms =
            self.options.tick_ms + self.options.tick_skew_ms_max + self.options.tick_jitter_ms;
        let transfer_ms_max =
            u64::from(self.options.config.election_timeout_ticks_min + 2) * slowest_tick_ms;
        for mut watch in std::mem::take(&mut self.transfers) {
            if watch.cut_off_source && self.target_campaigns(&watch) {
                watch.cut_off_source = false;
                let cut = self.cluster.isolate(watch.source);
                self.partitions += 1;
                self.schedule_heal(cut);
            }
            match self.transfer_state(&watch) {
                Ok(Some(end)) => self.transfer_ended(watch, end),
                Ok(None) if now > watch.since_ms + TRANSFER_WATCH_MS_MAX => {
                    self.transfer_ended(watch, TransferEnd::Superseded)
                }
                Ok(None) => self.transfers.push(watch),
                Err(()) if now > watch.since_ms + transfer_ms_max => panic!(
                    "{} still hands over to {} {} ms after it began: a transfer must end \
                     within an election timeout",
                    watch.source,
                    watch.target,
                    now - watch.since_ms
                ),
                Err(()) => self.transfers.push(watch),
            }
        }
    }

    /// True when the target of `watch` is up and runs for (or leads) a later term.
    fn target_campaigns(&self, watch: &TransferWatch) -> bool {
        self.cluster.is_up(watch.target) && {
            let target = self.cluster.node(watch.target);
            target.term() > watch.term && target.role() != Role::Follower
        }
    }

    /// How `watch` ended, if it has: `Err` while the leader still hands over; once it does not,
    /// the target or another node leads a later term, or the leader crashed. (A leader cut
    /// off goes on handing over after a later leader was elected, until it times out.)
    fn transfer_state(&self, watch: &TransferWatch) -> Result<Option<TransferEnd>, ()> {
        if !self.cluster.is_up(watch.source) {
            return Ok(Some(TransferEnd::Superseded));
        }
        let source = self.cluster.node(watch.source);
        if source.role() == Role::Leader && source.term() == watch.term {
            if source.transferring_to().is_some() {
                return Err(());
            }
            panic!(
                "{} leads {} and no longer hands over to {}, yet reported no failure",
                watch.source, watch.term, watch.target
            );
        }
        let later = self
            .cluster
            .leaders()
            .into_iter()
            .filter(|(_, term)| *term > watch.term)
            .min_by_key(|(_, term)| *term);
        Ok(later.map(|(leader, _)| {
            if leader == watch.target {
                TransferEnd::TargetLeads
            } else {
                TransferEnd::Superseded
            }
        }))
    }

    fn transfer_ended(&mut self, watch: TransferWatch, end: TransferEnd) {
        self.cluster.trace_line(format_args!(
            "transfer {} -> {} of {} ended: {end:?}",
            watch.source, watch.target, watch.term
        ));
        if watch.liveness {
            self.liveness_transfer = Some(Some(end));
            return;
        }
        let name = match end {
            TransferEnd::TargetLeads => "target leads",
            TransferEnd::TimedOut => "timed out",
            TransferEnd::Superseded => "superseded",
        };
        *self.transfer_ends.entry(name).or_default() += 1;
    }

    /// While `node` still leads `term`, cut off, asks it for a read every tick until
    /// `until_ms`: reads nobody waits for, whose only use is the simulator's stale-read check.
    /// The end of a lease is where a lease longer than the followers' vote promise shows (a
    /// new leader has committed while the old one still serves from its lease), and a client
    /// rarely asks at that very moment.
    fn probe_lease(&mut self, node: NodeId, term: Term, until_ms: u64) {
        let now = self.cluster.now_ms();
        if now > until_ms || !self.cluster.is_up(node) {
            return;
        }
        let raw = self.cluster.node(node);
        if raw.role() != Role::Leader || raw.term() != term {
            return;
        }
        let key = format!("k{}", self.client_rng.below(self.options.keys as u64));
        self.cluster.read_kv(node, &key);
        self.schedule(
            now + self.options.tick_ms,
            Event::LeaseProbe {
                node,
                term,
                until_ms,
            },
        );
    }

    fn schedule_heal(&mut self, cut: CutId) {
        let at = self.cluster.now_ms() + self.fault_rng.between(20, self.options.faults.cut_ms_max);
        self.schedule(at, Event::Heal(cut));
    }

    // ----- liveness -----------------------------------------------------------------------

    fn end_faults(&mut self) {
        let now = self.cluster.now_ms();
        self.cluster
            .trace_line(format_args!("faults end: heal, restart, no more loss"));
        self.cluster.heal_all();
        for node in self.cluster.ids() {
            self.cluster.restart(node);
        }
        self.catch_up = Some(CatchUp::start(&self.cluster));
        self.phase = Phase::Liveness { since_ms: now };
        let mut disk = self.options.faults.disk;
        disk.write_fail_probability = 0.0; // writes queued now may still fail, once
        self.cluster.set_disk(disk);
        let mut calm = self.options.faults.network;
        calm.drop_probability = 0.0;
        calm.duplicate_probability = 0.0;
        calm.long_delay_probability = 0.0;
        calm.reorder_probability = 0.0;
        self.cluster.set_network(calm);
    }

    /// After the faults: a leader, a leadership transfer ended, no operation in flight, every
    /// node that lost its disk rejoined in its new life, and a fresh write (and everything
    /// acknowledged before) applied on every node. Proposes the
    /// fresh write once the transfer ended (again, if one fails).
    fn liveness_reached(&mut self) -> bool {
        let Some(leader) = self.cluster.leader() else {
            return false;
        };
        // First a transfer from the first leader to a random voter; whether the target takes
        // over or the transfer times out (a target still catching up), the cluster must settle.
        match self.liveness_transfer {
            // A transfer from the fault phase still runs: it ends within an election timeout.
            None if self.cluster.node(leader).transferring_to().is_some() => return false,
            None => {
                self.liveness_transfer = Some(None);
                self.transfer(true);
                if self.transfers.iter().all(|w| !w.liveness) {
                    self.liveness_transfer = Some(Some(TransferEnd::Superseded));
                }
                return false;
            }
            Some(None) => return false,
            Some(Some(_)) => {}
        }
        let fresh_outcome = self
            .fresh
            .map(|(op, index)| (self.ops[op].outcome.clone(), index));
        match fresh_outcome {
            None | Some((OpOutcome::Unknown | OpOutcome::DidNotHappen, _)) => {
                let now = self.cluster.now_ms();
                if now < self.fresh_retry_ms {
                    return false;
                }
                self.fresh_retry_ms = now + FRESH_RETRY_MS;
                let value = Bytes::from(format!("fresh.{}", self.ops.len()));
                let op = self.propose(FRESH_CLIENT, leader, KvInput::put("fresh", value));
                self.fresh = Some((op, None));
                false
            }
            Some((OpOutcome::Pending, _)) | Some((OpOutcome::Returned { .. }, None)) => false,
            Some((OpOutcome::Returned { .. }, Some(index))) => {
                let index = index.max(self.acknowledged_max);
                let membership = self.cluster.node(leader).membership();
                let members = membership.members();
                // Nodes that lost their disk are recorded in their new life and, if they
                // voted, promoted back, with no one asking.
                let rejoined = membership.rejoining.is_empty()
                    && members
                        .iter()
                        .all(|n| membership.incarnation_of(*n) == self.cluster.incarnation(*n));
                self.waiting.is_empty()
                    && rejoined
                    && self.retries_scheduled == 0
                    && !self.cluster.node(leader).membership_change_pending()
                    && members
                        .into_iter()
                        .all(|n| self.cluster.kv(n).applied_index() >= index)
            }
        }
    }

    fn liveness_failed(&self, since_ms: u64) -> ! {
        let catch_up = self.catch_up.as_ref().expect("set when the faults end");
        let mut state = String::new();
        for node in self.cluster.ids() {
            let raw = self.cluster.node(node);
            let _ = write!(
                state,
                "\n  {node}: {:?} {} leader={:?} commit={} applied={} last={}",
                raw.role(),
                raw.term(),
                raw.leader(),
                raw.commit_index(),
                self.cluster.kv(node).applied_index(),
                raw.last_index()
            );
        }
        let pending: Vec<String> = self
            .waiting
            .iter()
            .map(|(proposal, op)| format!("op {op} ({:x}) {:?}", proposal.0, self.ops[*op].input))
            .collect();
        panic!(
            "liveness: the faults ended at {since_ms} ms, and {} ms after no member applied more \
             of the log up to {} (the longest then, {} entries lacking in all) the cluster has \
             not settled (a leader, every operation answered, a fresh write applied \
             everywhere).{state}\n  unanswered: {pending:?}\n  fresh write: {:?}",
            self.options.liveness_ms_max, catch_up.target, catch_up.lacking_at_start, self.fresh
        )
    }

    // ----- the end ------------------------------------------------------------------------

    fn finish(&mut self, liveness_since_ms: u64) -> RunReport {
        self.cluster.check_end_of_run();
        self.check_definite_failures();
        let history = self.history();
        let mut result = check(&KvModel, &history, CheckLimits::default());
        if let CheckResult::GaveUp { .. } = result {
            // Rare long histories with many unknown outcomes on one key: decide them with a
            // larger budget rather than give up (giving up is never a pass).
            let limits = CheckLimits {
                search_steps_max: CHECK_STEPS_RETRY_MAX,
            };
            result = check(&KvModel, &history, limits);
        }
        if !result.is_linearizable() {
            panic!("the client history is not linearizable: {result}");
        }
        let stats = self.cluster.stats().clone();
        let mut report = RunReport {
            seed: self.options.seed,
            nodes: self.options.nodes,
            profile: self.options.profile,
            operations: history.len(),
            crashes: stats.crashes,
            amnesias: stats.amnesias,
            amnesias_after_ack: self.amnesias_after_ack,
            link_holds: self.link_holds,
            partitions: self.partitions,
            one_way_cuts: self.one_way_cuts,
            messages_dropped: stats.messages_dropped,
            messages_duplicated: stats.messages_duplicated,
            messages_reordered: stats.messages_reordered,
            messages_cut: stats.messages_cut,
            messages_across_restarts: stats.messages_across_restarts,
            writes_slow: stats.writes_slow,
            writes_failed: stats.writes_failed,
            voters_min: self.voters_min,
            leader_terms: self.cluster.leader_terms(),
            steps: stats.steps,
            membership_changes: stats.membership_changes,
            voters_max: self.voters_max,
            snapshots_built: stats.snapshots_built,
            snapshots_installed: stats.snapshots_installed,
            snapshot_chunks: stats.snapshot_chunks_sent,
            session_clients: self.options.session_clients,
            session_operations: self.ops.iter().filter(|op| op.session.is_some()).count(),
            session_retries: self.session_retries,
            answered_from_table: self.answered_from_table,
            answers_not_kept: self.answers_not_kept,
            session_copies_filtered: stats.session_copies_filtered,
            committed: self.cluster.committed_len(),
            end_ms: self.cluster.now_ms(),
            liveness_ms: self.cluster.now_ms() - liveness_since_ms,
            catch_up_entries: self.catch_up.as_ref().map_or(0, |c| c.lacking_at_start),
            concurrent: concurrent_operations(&self.ops),
            lease_reads: stats.lease_reads,
            refused_for_transfer: self.refused_for_transfer,
            transfers: self.transfers_started,
            transfers_to_target: self.transfer_ends.get("target leads").copied().unwrap_or(0),
            transfers_timed_out: self.transfer_ends.get("timed out").copied().unwrap_or(0),
            transfers_superseded: self.transfer_ends.get("superseded").copied().unwrap_or(0),
            liveness_transfer: self.liveness_transfer.flatten(),
            ..RunReport::default()
        };
        for op in &self.ops {
            match (&op.outcome, &op.input) {
                (OpOutcome::DidNotHappen, _) if op.without_log => report.reads_dropped += 1,
                (OpOutcome::Returned { .. }, _) if op.without_log => {
                    report.reads_without_log += 1;
                    report.returned += 1;
                    if let OpOutcome::Returned {
                        output: KvOutput::Value(Some(_)),
                        ..
                    } = op.outcome
                    {
                        report.reads_found += 1;
                    }
                }
                (OpOutcome::DidNotHappen, _) => report.did_not_happen += 1,
                (OpOutcome::Unknown | OpOutcome::Pending, _) => report.unknown += 1,
                (OpOutcome::Returned { output, .. }, input) => {
                    report.returned += 1;
                    match (input, output) {
                        (KvInput::Get { .. }, KvOutput::Value(Some(_))) => report.reads_found += 1,
                        (KvInput::Cas { .. }, KvOutput::Swapped(true)) => report.cas_swapped += 1,
                        (KvInput::Cas { .. }, KvOutput::Swapped(false)) => report.cas_refused += 1,
                        _ => {}
                    }
                }
            }
        }
        report
    }

    /// A write that definitely did not happen (its proposer said so, or a leader refused it
    /// during a transfer) must not be in the committed log. Every write carries a unique value,
    /// so its bytes name it; gets are left out (they are not unique, and change nothing).
    fn check_definite_failures(&self) {
        let committed: HashSet<Bytes> = self.cluster.committed_commands().into_iter().collect();
        for (op, record) in self.ops.iter().enumerate() {
            let write = !matches!(record.input, KvInput::Get { .. });
            let command = super::kv::encode(&record.input);
            if write && record.outcome == OpOutcome::DidNotHappen && committed.contains(&command) {
                panic!(
                    "op {op} ({:?}) was reported as never applied, yet it is committed",
                    record.input
                );
            }
        }
    }

    /// The history for the checker: every operation except those that definitely did not
    /// happen; those without an answer stay unknown.
    fn history(&self) -> History<KvInput, KvOutput> {
        let mut history = History::new();
        for op in &self.ops {
            if op.outcome == OpOutcome::DidNotHappen {
                continue;
            }
            let id = history.call(op.client as u64, op.input.clone(), op.call_ms);
            if let OpOutcome::Returned { output, at_ms } = &op.outcome {
                history.ret(id, output.clone(), *at_ms);
            }
        }
        history
    }
}

/// Operations that overlap in time with an operation of another client on the same key (an
/// unanswered operation overlaps everything after its call).
fn concurrent_operations(ops: &[OpRecord]) -> usize {
    let interval = |op: &OpRecord| match op.outcome {
        OpOutcome::Returned { at_ms, .. } => (op.call_ms, at_ms),
        _ => (op.call_ms, u64::MAX),
    };
    let mut by_key: BTreeMap<&str, Vec<&OpRecord>> = BTreeMap::new();
    for op in ops
        .iter()
        .filter(|op| op.outcome != OpOutcome::DidNotHappen)
    {
        by_key.entry(op.input.key()).or_default().push(op);
    }
    let mut concurrent = 0;
    for group in by_key.values() {
        for a in group {
            let (a_start, a_end) = interval(a);
            let overlaps = group.iter().any(|b| {
                let (b_start, b_end) = interval(b);
                b.client != a.client && a_start <= b_end && b_start <= a_end
            });
            concurrent += usize::from(overlaps);
        }
    }
    concurrent
}
