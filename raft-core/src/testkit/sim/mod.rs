//! A deterministic, single-threaded cluster simulator: N [`RawNode`](crate::protocol::RawNode)s,
//! each with a simulated disk and an in-memory key-value state machine, joined by a simulated
//! network, all on a virtual clock and driven by one `u64` seed. No threads, no clocks, no
//! OS randomness: the same seed replays the same run, byte for byte.
//!
//! Each node's readies are handled in the order the [protocol documents](crate::protocol):
//! `messages` leave at once; the `write` goes to the simulated disk, where it becomes durable
//! after a seeded delay, in order with earlier writes; only then do `messages_after_write`
//! leave and [`RawNode::persisted`](crate::protocol::RawNode::persisted) hear of it; committed
//! entries are applied to the state machine and their proposals answered. They pass the
//! runtime's own session filter first ([`SessionTable::filter`](crate::sessions::SessionTable::filter),
//! through [`kv::KvReplica`]): a copy of a command already applied in its client session
//! is answered from the table and never reaches the state machine, and every snapshot
//! carries the table at its head in the runtime's format. A crash drops the
//! node's protocol state, its unfinished writes and its state machine; messages in flight to
//! or from it survive with a seeded probability (arriving at its next life, sometimes twice)
//! and are otherwise lost. A write may stall (a slow fsync) or fail: then the node fail-stops,
//! releasing nothing of that write, and restarts later. A restart builds a new `RawNode` from
//! what the disk holds, with a seed derived from (run seed, node, restart count), and the
//! state machine and its session table start from the disk's snapshot and replay the log.
//! [`Cluster::restart_amnesiac`] restarts a node with a wiped disk instead, as an in-memory
//! store comes back, in a new [`Incarnation`](crate::Incarnation); the randomized runs do so on
//! about a third of the seeds, whenever the cluster can afford it (its membership settled,
//! every life recorded, a voter leaving two others), and require every such node to be
//! recorded and promoted back before the run ends.
//!
//! After every step, the [safety invariants](self#invariants) are checked; a violation panics
//! with the seed and the command that replays it.
//!
//! # Two ways to drive it
//!
//! **Interactively**, for scenario tests (in the spirit of etcd's `InteractionEnv`): with
//! [`Timing::Manual`] nothing happens unless asked. Messages wait in flight until
//! [`Cluster::deliver_all`] or [`Cluster::stabilize`]; writes complete as soon as a ready is
//! handled; time moves only with [`Cluster::tick`].
//!
//! ```
//! use raft_core::protocol::Role;
//! use raft_core::testkit::linearizability::{KvInput, KvOutput};
//! use raft_core::testkit::sim::{Cluster, ProposalOutcome};
//! use raft_core::NodeId;
//!
//! let mut cluster = Cluster::new(3);
//! cluster.campaign(1);
//! cluster.stabilize();
//! assert_eq!(cluster.node(1).role(), Role::Leader);
//!
//! // A follower forwards the proposal to the leader; the answer comes back to it.
//! let put = cluster.propose_kv(2, &KvInput::put("x", "1"));
//! cluster.stabilize();
//! let Some(ProposalOutcome::Applied { output, .. }) = cluster.outcome(put) else {
//!     panic!("not applied: {:?}", cluster.outcome(put));
//! };
//! assert_eq!(output, &Some(KvOutput::Ok));
//! for node in 1..=3 {
//!     assert_eq!(cluster.kv(node).get("x").map(|v| &v[..]), Some(&b"1"[..]));
//! }
//!
//! // Cut the leader off; the others elect a new one once their timers run out.
//! cluster.isolate(1);
//! for _ in 0..100 {
//!     cluster.tick(2, 1);
//!     cluster.tick(3, 1);
//!     cluster.stabilize();
//! }
//! let new_leader = cluster.leader().expect("n2 and n3 elect a leader");
//! assert_ne!(new_leader, NodeId(1));
//! ```
//!
//! **As a randomized run** ([`run`]): [`SimOptions::from_seed`] picks the cluster size (1, 2,
//! 3 or 5 voters, often with spare nodes that join as learners and are promoted), a fault mix
//! and a disk (slow fsyncs, failing writes) from the seed; closed-loop clients send puts,
//! gets and compare-and-swaps to random nodes while the seed drops, duplicates, delays and
//! reorders messages (some outliving a crash of their sender or receiver), cuts links both ways
//! or one way, crashes and restarts nodes, and asks the leader to hand leadership to another
//! voter (sometimes cutting the old leader off as the target campaigns). Gets go through the
//! log or, in a share the seed picks, are read without it ([`Cluster::read_kv`]: ReadIndex,
//! follower reads, and lease reads on seeds that turn `lease_reads` on). A share of the clients
//! the seed picks (none, half or all) propose in client sessions
//! ([`Cluster::propose_in_session`]) and retry: a command whose outcome is unknown (a timeout,
//! a failure that may have applied, a crash of the node asked) is proposed again with the
//! same session and sequence, to a node picked afresh, up to [`SESSION_ATTEMPTS_MAX`] times,
//! while the network duplicates forwards too; most seeds also forward in one-off sessions, as
//! the runtime does, and some keep few or no answers in the table
//! (`session_result_bytes_max`), so a retry learns only that its command applied once. A
//! retried command is one operation for the linearizability checker, from its first attempt
//! to its answer; one no attempt answered stays unknown, and it "did not happen" only when
//! every attempt failed definitely. Node clocks tick at
//! rates within the lease's drift assumption ([`lease_clock_margin_holds`]); on half the
//! lease seeds they sit at its edge (ticks of 20 ms, each clock exact or 4 ms slow per tick:
//! the slowest lease ends 5 ms before the fastest follower's vote promise), often with a
//! narrow election timeout (PreVote on), so followers time out as their promise ends. On
//! half the seeds the messages between two nodes are held back for a while, both ways, and
//! then arrive in a new order ([`Cluster::hold_back`]): at random, and around a campaign
//! (the campaigner and one other voter), where a late answer carrying a newer term can
//! overtake the request sent before it. On most seeds that lose disks, a voter also loses
//! its disk right after it acknowledged an entry only a bare quorum holds (once the leader
//! counted it), and the leader then crashes or is cut off while every other cut heals: a
//! stale leader may reach the amnesiac node, and a candidate lacking the entry may ask it for
//! the vote it needs. Then every cut
//! heals, every node restarts and loss stops, the leader hands over once more, and a leader
//! must exist, every operation in flight must be answered and a fresh write must apply on every
//! node, within a bounded virtual time of the last catch-up (a member applying an entry of the
//! longest log held when the faults ended: a member far behind is waited for while it catches
//! up at the rate the flow-control limits allow, see [`run`]). Finally the history goes through the
//! [linearizability checker](crate::testkit::linearizability); a read that failed is left out
//! of it (reads change nothing), and a write reported as never applied must not be committed.
//!
//! ```
//! use raft_core::testkit::sim::{run, SimOptions};
//!
//! let mut options = SimOptions::from_seed(7);
//! options.fault_phase_ms = 500; // a short run for the example
//! let report = run(&options);
//! assert!(report.operations > 0 && report.committed > 0);
//! ```
//!
//! # Invariants
//!
//! Checked after every step (see the checker for how each is kept cheap): at most one leader
//! per term; Log Matching; a commit index raised only by a leader, and only as far as a quorum
//! of its voters held durably in its term (computed from the disks, not from what nodes claim;
//! a claim or an apply beyond that fails at once); every committed entry held by every leader
//! of the term that committed it or a later one; no two nodes applying different entries at
//! one index, across restarts too; commit and applied indexes never going back within a node's
//! life (a restart lowers them: the commit index is saved lazily and the state machine is in
//! memory); the durable hard state never going back; every message that leaves (at once,
//! after a write, or a snapshot chunk) promising only durable state: its term, the vote it
//! rests on, the entries or snapshot bytes it acknowledges; no leader serving reads from its
//! lease once a leader of a later term has committed; no committed entry ever removed
//! from a disk, every acknowledged write on every disk at the end, and every pair of nodes
//! that applied as far holding the same state; no
//! read without the log given a read index below an entry known committed when it was asked
//! (a stale read); an abandoned leadership transfer reported only as a timeout by a leader
//! still in its term, and none lasting past an election timeout. Exactly-once sessions: no
//! state machine applies a (session, sequence) command at any index but the one where it first
//! applied (on any node, in any life, through any snapshot), every copy the session table
//! answers names that index and gets the first answer byte for byte, a command refused as
//! stale is older than one its session applied, and a snapshot installed carries the session
//! table that the committed log replayed through a fresh table gives (the check needs no
//! session evicted or expired in a run, and a run whose limits would allow it fails as
//! misconfigured).

mod cluster;
pub(crate) mod invariants;
pub mod kv;
pub mod rng;
mod run;
pub mod trace;

pub use cluster::{
    Cluster, ClusterBuilder, ClusterStats, CutId, DiskTiming, DurableState, NetworkFaults,
    ProposalOutcome, ReadyRecord, Stepped, Timing, TransferFailure, EMPTY_READIES_MAX,
    MESSAGES_IN_FLIGHT_MAX, OUTCOMES_UNTAKEN_MAX, READY_RECORDS_MAX, READY_ROUNDS_MAX,
    STABILIZE_ROUNDS_MAX, WRITES_IN_FLIGHT_MAX,
};
pub use run::{
    lease_clock_margin_holds, run, FaultRates, RunReport, SimOptions, TransferEnd,
    CHECK_STEPS_RETRY_MAX, DRIVER_TIMERS_MAX, OPERATIONS_MAX, SESSION_ATTEMPTS_MAX,
};
