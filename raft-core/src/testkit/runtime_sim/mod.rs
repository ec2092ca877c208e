//! A seeded, deterministic simulation of the *real* runtime: [`RaftNode`]s, with their
//! driver, writer and applier tasks, on one current-thread tokio runtime whose clock is
//! paused, joined by an in-process network and writing to simulated disks that apply the
//! seed's faults. Where [`crate::testkit::sim`] drives the protocol with its own IO loop, this
//! runs the glue users run: a bug in the runtime's ordering of writes and sends is caught here.
//!
//! # Why tokio's paused clock, not turmoil
//!
//! With `start_paused(true)` the clock moves only when every task waits, straight to the next
//! timer, so seconds of virtual time take milliseconds; a current-thread runtime runs ready
//! tasks first in, first out. Nothing else is needed to make a run a function of its seed: the
//! runtime's `select!`s are `biased;` (the applier alternates which side goes first), every
//! fault comes from one seeded RNG drawn in the order the tasks run, and the clients pause
//! after every answer until a moment no other client shares, so the order in which a crash
//! wakes them does not matter. Turmoil would add simulated hosts and sockets the runtime does
//! not use (the [`Network`](crate::Network) trait is the seam), and a second scheduler.
//!
//! # What a run does
//!
//! [`RuntimeSimOptions::from_seed`] picks 1, 3 or 5 voters, the network's and disks' faults,
//! and how often nodes snapshot. Closed-loop clients send puts, compare-and-swaps and gets
//! (through the log, or through [`RaftNode::read`]: a read barrier, then the state machine)
//! to random nodes, each with a deadline; an answer that does not come, or any error, leaves
//! the operation's outcome unknown. Meanwhile the seed crashes nodes (the life's tasks are
//! cut off at once: its writes not yet complete never become durable, its messages and
//! answers are lost, and the node restarts later from its durable image with a new
//! [`Config::seed`] from (run seed, node, life)), cuts links one way or both, changes the loss
//! rate, and asks leaders to hand over. Disks take a seeded time per write (sometimes longer
//! than a heartbeat interval) and sometimes fail one: the node must then stop (fail-stop),
//! releasing nothing of that write, and is restarted. Then every link heals, loss and disk
//! faults stop, every node restarts, and within [`LIVENESS_MS_MAX`] a leader must commit a
//! fresh write that every node applies. The client history goes through the
//! [linearizability checker](crate::testkit::linearizability), and every node must end with
//! the same state.
//!
//! # Checks
//!
//! At the disks, on every write as it becomes durable: the durable hard state never goes back
//! (nor changes its vote within a term), no committed entry is removed, and Log Matching holds
//! over every durable log and every append sent. At the network, on every message as it
//! leaves: its term, the vote it rests on, and the entries or snapshot bytes it acknowledges
//! are durable on the sender's disk (the protocol-level simulator's checks, run against the
//! simulated disk); at most one node sends leader messages in a term. At the state machines:
//! no two nodes apply different commands at one index, and a command applied is held durably
//! by a majority of the voters. A panic in any task of the run (a protocol or runtime
//! assertion included) fails the run. Every failure names the seed and the command that
//! replays it.
//!
//! ```
//! use raft_core::testkit::runtime_sim::{run, RuntimeSimOptions};
//!
//! let mut options = RuntimeSimOptions::from_seed(3);
//! options.fault_phase_ms = 1_000; // a short run for the example
//! let report = run(&options);
//! assert!(report.operations > 0);
//! // The same seed replays the same run.
//! assert_eq!(run(&options).trace_hash, report.trace_hash);
//! ```
//!
//! # Your own state machine
//!
//! [`run_workload`] runs a [`Workload`] instead of the key-value store: your
//! [`StateMachine`](crate::StateMachine), what your clients send, how answers decode, and a
//! [`Model`](crate::testkit::linearizability::Model) of the machine for the history check. The
//! faults and every check above stay the same. A counter:
//!
//! ```
//! use async_trait::async_trait;
//! use bytes::Bytes;
//! use raft_core::testkit::linearizability::Model;
//! use raft_core::testkit::runtime_sim::{run_workload, Call, RuntimeSimOptions, Via, Workload};
//! use raft_core::testkit::sim::rng::SimRng;
//! use raft_core::{LogIndex, StateMachine, StateMachineError};
//!
//! #[derive(Default)]
//! struct Counter { total: u64 }
//!
//! #[async_trait]
//! impl StateMachine for Counter {
//!     async fn apply(&mut self, _: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
//!         // "add N" adds N and answers the total; anything else is refused, as an answer.
//!         match std::str::from_utf8(&command).ok().and_then(|c| c.strip_prefix("add ")) {
//!             Some(n) if n.parse::<u64>().is_ok() => self.total += n.parse::<u64>().unwrap(),
//!             _ => return Ok(Bytes::from("refused")),
//!         }
//!         Ok(Bytes::from(self.total.to_string()))
//!     }
//! }
//!
//! #[derive(Clone, Debug)]
//! enum Op { Add(u64), Get }
//!
//! struct CounterModel;
//!
//! impl Model for CounterModel {
//!     type State = u64;
//!     type Input = Op;
//!     type Output = u64;
//!     fn init(&self) -> u64 { 0 }
//!     fn step(&self, total: &u64, op: &Op, seen: &u64) -> Option<u64> {
//!         let after = match op { Op::Add(n) => total + n, Op::Get => *total };
//!         (after == *seen).then_some(after)
//!     }
//!     fn step_unknown(&self, total: &u64, op: &Op) -> Option<u64> {
//!         Some(match op { Op::Add(n) => total + n, Op::Get => *total })
//!     }
//! }
//!
//! struct Counting;
//!
//! impl Workload for Counting {
//!     type Machine = Counter;
//!     type Input = Op;
//!     type Output = u64;
//!     type State = u64;
//!     type Model = CounterModel;
//!     fn machine(&self) -> Counter { Counter::default() }
//!     fn model(&self) -> CounterModel { CounterModel }
//!     fn next_call(&self, _client: usize, _counter: u64, rng: &mut SimRng) -> Call<Op> {
//!         if rng.chance(0.3) {
//!             return Call { input: Op::Get, via: Via::Read };
//!         }
//!         let n = 1 + rng.below(9);
//!         Call { input: Op::Add(n), via: Via::Propose(Bytes::from(format!("add {n}"))) }
//!     }
//!     fn decode(&self, _: &Op, answer: &Bytes) -> Option<u64> {
//!         std::str::from_utf8(answer).ok()?.parse().ok()
//!     }
//!     fn read(&self, machine: &Counter, _: &Op) -> u64 { machine.total }
//!     fn state(&self, machine: &Counter) -> u64 { machine.total }
//!     // Refused, so it changes nothing a client sees.
//!     fn liveness_command(&self, _seed: u64) -> Bytes { Bytes::from("noop") }
//! }
//!
//! let mut options = RuntimeSimOptions::from_seed(11);
//! options.fault_phase_ms = 1_000;
//! options.clients = 2;
//! let report = run_workload(&options, Counting);
//! assert!(report.operations > 0);
//! ```
//!
//! A failing seed panics with the seed and its replay command; `tests/simulation_user_machine.rs`
//! runs a bank ledger this way and shows a planted snapshot bug in it caught.

mod disk;
mod machine;
mod network;
mod workload;
mod world;

pub use disk::{DiskFaults, SimDisk};
pub use machine::{KvMachine, Recorded};
pub use network::{NetworkFaults, SimNetwork};
pub use workload::{Call, KvWorkload, Via, Workload};
pub use world::TRACE_LINES_MAX;

use crate::config::Config;
use crate::protocol::Role;
use crate::runtime::{NodeError, RaftNode, RuntimeOptions, StopCause};
use crate::sessions::SessionLimits;
use crate::testkit::linearizability::{check, CheckResult, History, OpId};
use crate::testkit::sim::rng::{mix, SimRng};
use crate::types::{LogIndex, NodeId};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;
use tokio::sync::watch;
use world::{lock, SharedWorld, World};

/// Longest the cluster may take, once the faults end, to elect a leader and apply a fresh
/// write on every node, in virtual milliseconds.
pub const LIVENESS_MS_MAX: u64 = 20_000;

/// Longest a client waits for an answer, in virtual milliseconds; then its outcome is unknown.
pub const CLIENT_WAIT_MS_MAX: u64 = 2_000;

/// Clients of one run at most.
pub const CLIENTS_MAX: usize = 8;

/// Operations one run records at most (the clients stop asking past it).
pub const OPERATIONS_MAX: usize = 20_000;

/// The settings of one run; [`RuntimeSimOptions::from_seed`] draws them all from the seed.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeSimOptions {
    /// The seed every choice of the run comes from.
    pub seed: u64,
    /// Voters, 1 to 7.
    pub nodes: usize,
    /// Closed-loop clients, 1 to [`CLIENTS_MAX`].
    pub clients: usize,
    /// How long faults go on, in virtual milliseconds.
    pub fault_phase_ms: u64,
    /// The network's faults during the fault phase.
    pub network: NetworkFaults,
    /// The disks' faults during the fault phase.
    pub disk: DiskFaults,
    /// Chance per fault step (10 to 50 ms) that a running node crashes.
    pub crash_chance: f64,
    /// Chance per fault step that the links change (a node cut off, one way or both, or
    /// every cut healed).
    pub partition_chance: f64,
    /// Chance per fault step that the leader is asked to hand over to another voter.
    pub transfer_chance: f64,
    /// `Config::snapshot_interval_entries` of every node.
    pub snapshot_interval_entries: u64,
    /// `Config::snapshot_tail_entries` of every node.
    pub snapshot_tail_entries: u64,
    /// Keep the trace as text (for a replay), not just its hash.
    pub keep_trace: bool,
    /// The command that replays this seed, printed with a failure; `None` names the
    /// simulator's own test (`tests/simulation_runtime.rs`). Set it for a [`Workload`] of your
    /// own, to your test's command.
    pub replay_command: Option<String>,
}

impl RuntimeSimOptions {
    /// Draws every setting from `seed`.
    pub fn from_seed(seed: u64) -> RuntimeSimOptions {
        let mut rng = SimRng::stream(seed, 0x0005_e771);
        let nodes = [1, 3, 3, 3, 5, 5][rng.below(6) as usize];
        let lossy = rng.chance(0.6);
        let network = NetworkFaults {
            loss: if lossy { 0.05 } else { 0.0 },
            duplicate: if rng.chance(0.5) { 0.03 } else { 0.0 },
            delay_ms_max: rng.between(1, 8),
            late_chance: if rng.chance(0.5) { 0.02 } else { 0.0 },
            late_ms_max: 400,
            survive_crash: 0.3,
        };
        let disk = DiskFaults {
            write_delay_ms_max: rng.between(0, 4),
            slow_write_chance: if rng.chance(0.5) { 0.03 } else { 0.0 },
            slow_write_ms_min: 60,
            slow_write_ms_max: 400,
            write_failure_chance: if rng.chance(0.4) { 0.003 } else { 0.0 },
        };
        let snapshots = rng.chance(0.5);
        RuntimeSimOptions {
            seed,
            nodes,
            clients: rng.between(2, 4) as usize,
            fault_phase_ms: 4_000,
            network,
            disk,
            crash_chance: [0.0, 0.01, 0.02][rng.below(3) as usize],
            partition_chance: [0.0, 0.01, 0.03][rng.below(3) as usize],
            transfer_chance: if rng.chance(0.5) { 0.005 } else { 0.0 },
            snapshot_interval_entries: if snapshots {
                rng.between(20, 80)
            } else {
                100_000
            },
            snapshot_tail_entries: if snapshots {
                rng.between(0, 10)
            } else {
                10_000
            },
            keep_trace: false,
            replay_command: None,
        }
    }

    /// The command that replays this seed.
    pub fn replay_hint(&self) -> String {
        if let Some(command) = &self.replay_command {
            return command.clone();
        }
        format!(
            "SIM_SEED={} cargo test --release -p raft-core --test simulation_runtime -- --nocapture",
            self.seed
        )
    }
}

/// What one run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeReport {
    /// Its seed.
    pub seed: u64,
    /// Its voters.
    pub nodes: usize,
    /// A hash of every event of the run (messages sent, writes made durable or lost, client
    /// calls and answers), in order: the same seed gives the same hash.
    pub trace_hash: u64,
    /// The events as text, when [`RuntimeSimOptions::keep_trace`] was set.
    pub trace: Option<Vec<String>>,
    /// Client operations checked for linearizability.
    pub operations: usize,
    /// Of them, those that got an answer.
    pub answered: usize,
    /// Commands applied (distinct indexes).
    pub applied: usize,
    /// Crashes (seeded ones, and stops after a failed write).
    pub crashes: u64,
    /// Writes that failed.
    pub writes_failed: u64,
    /// Writes a crash dropped before they were durable.
    pub writes_lost: u64,
    /// Snapshots made durable.
    pub snapshots: u64,
    /// Messages sent.
    pub messages: u64,
    /// Virtual time at the end, in milliseconds.
    pub end_ms: u64,
    /// Virtual time the liveness phase took, in milliseconds.
    pub liveness_ms: u64,
}

thread_local! {
    /// The first panic on this thread while a run is on it (from any of its tasks).
    static PANICKED: RefCell<Option<String>> = const { RefCell::new(None) };
    /// True while a run is on this thread.
    static RUNNING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Records every panic on a thread that runs a simulation, so that one in a runtime task
/// (which tokio catches) still fails the run.
fn install_panic_recorder() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = match info.payload().downcast_ref::<String>() {
                Some(text) => text.clone(),
                None => info
                    .payload()
                    .downcast_ref::<&str>()
                    .map_or_else(|| "a panic".to_string(), |t| t.to_string()),
            };
            let location = info
                .location()
                .map_or_else(String::new, |l| format!(" at {l}"));
            PANICKED.with(|first| {
                first
                    .borrow_mut()
                    .get_or_insert_with(|| format!("{message}{location}"));
            });
            previous(info);
        }));
    });
}

/// Runs one seed to the end.
///
/// # Panics
/// On any violated check, a panic in any task of the run, a cluster that does not settle
/// within [`LIVENESS_MS_MAX`] once the faults end, or a history that is not linearizable;
/// the message names the seed and the command that replays it.
pub fn run(options: &RuntimeSimOptions) -> RuntimeReport {
    run_workload(options, KvWorkload)
}

/// Runs one seed with `workload`'s state machine, clients and model instead of the
/// simulator's key-value store: the same faults and checks, and the client history checked
/// against `workload`'s model. This is how a user tests their own [`StateMachine`] under
/// crashes, partitions and slow or failing disks.
///
/// [`StateMachine`]: crate::StateMachine
///
/// # Panics
/// As [`run`] does.
pub fn run_workload<W: Workload>(options: &RuntimeSimOptions, workload: W) -> RuntimeReport {
    assert!((1..=7).contains(&options.nodes), "1 to 7 voters");
    assert!(
        (1..=CLIENTS_MAX).contains(&options.clients),
        "1 to {CLIENTS_MAX} clients"
    );
    install_panic_recorder();
    PANICKED.with(|first| first.borrow_mut().take());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    /// Clears the flag however the run ends.
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            RUNNING.with(|running| running.set(false));
        }
    }
    RUNNING.with(|running| running.set(true));
    let running = Running;
    // Built inside the runtime: the run's clock starts at the paused clock's start.
    let report = runtime.block_on(async { Sim::new(options, workload).run().await });
    drop(runtime);
    drop(running);
    report
}

/// One node's current life, if it runs.
struct Life {
    number: u64,
    node: RaftNode,
    /// Set to true when this life ends, so its clients stop waiting on it.
    ended: watch::Sender<bool>,
}

/// A handle a client takes on a node's current life.
#[derive(Clone)]
struct ClientHandle {
    node: RaftNode,
    ended: watch::Receiver<bool>,
}

struct Sim<W: Workload> {
    options: RuntimeSimOptions,
    workload: Arc<W>,
    world: SharedWorld,
    rng: SimRng,
    voters: Vec<NodeId>,
    lives: BTreeMap<NodeId, Option<Life>>,
    /// The virtual time (ms) each node that is down may restart at.
    down_until: BTreeMap<NodeId, u64>,
    handles: Arc<Mutex<BTreeMap<NodeId, ClientHandle>>>,
    history: Arc<Mutex<History<W::Input, W::Output>>>,
    /// Set when the clients are to stop (after the liveness phase).
    clients_stop: Arc<AtomicBool>,
    crashes: u64,
}

impl<W: Workload> Sim<W> {
    fn new(options: &RuntimeSimOptions, workload: W) -> Sim<W> {
        let voters: Vec<NodeId> = (1..=options.nodes as u64).map(NodeId).collect();
        let world = World::new(
            options.seed,
            options.replay_hint(),
            voters.clone(),
            SessionLimits::from_config(&Config::new(NodeId(1), voters.clone())),
            options.network,
            options.disk,
            options.keep_trace,
        );
        Sim {
            options: options.clone(),
            workload: Arc::new(workload),
            world: Arc::new(Mutex::new(world)),
            rng: SimRng::stream(options.seed, 0x5ced),
            lives: voters.iter().map(|&id| (id, None)).collect(),
            down_until: BTreeMap::new(),
            voters,
            handles: Arc::new(Mutex::new(BTreeMap::new())),
            history: Arc::new(Mutex::new(History::new())),
            clients_stop: Arc::new(AtomicBool::new(false)),
            crashes: 0,
        }
    }

    fn now_ms(&self) -> u64 {
        lock(&self.world).now_ms()
    }

    /// Fails the run if any of its tasks panicked.
    fn check_panics(&self) {
        if let Some(message) = PANICKED.with(|first| first.borrow().clone()) {
            panic!(
                "seed {} failed: {message}\nreplay: {}",
                self.options.seed,
                self.options.replay_hint()
            );
        }
    }

    fn fail(&self, what: std::fmt::Arguments<'_>) -> ! {
        panic!(
            "seed {} failed: {what}\nreplay: {}",
            self.options.seed,
            self.options.replay_hint()
        )
    }

    async fn run(mut self) -> RuntimeReport {
        for id in self.voters.clone() {
            self.start_node(id).await;
        }
        let clients: Vec<_> = (0..self.options.clients)
            .map(|index| {
                let client = Client {
                    workload: self.workload.clone(),
                    index,
                    clients: self.options.clients,
                    rng: SimRng::stream(self.options.seed, 0xc11e_0000 + index as u64),
                    handles: self.handles.clone(),
                    history: self.history.clone(),
                    world: self.world.clone(),
                    voters: self.voters.clone(),
                    stop: self.clients_stop.clone(),
                    answered: None,
                };
                tokio::spawn(client.run())
            })
            .collect();
        self.fault_phase().await;
        self.heal().await;
        let liveness_started = self.now_ms();
        self.liveness().await;
        let liveness_ms = self.now_ms() - liveness_started;
        // The clients stop (each finishes its operation, within its deadline).
        lock(&self.world).network_faults.loss = 0.0;
        self.clients_stop.store(true, Ordering::Relaxed);
        for client in clients {
            let _ = client.await;
        }
        self.check_panics();
        self.check_same_state().await;
        let operations = self.check_history();
        self.check_panics();
        for life in self.lives.values_mut() {
            if let Some(life) = life.take() {
                life.node.shutdown().await;
            }
        }
        self.check_panics();
        let world = lock(&self.world);
        RuntimeReport {
            seed: self.options.seed,
            nodes: self.options.nodes,
            trace_hash: world.trace.hash,
            trace: world.trace.lines.clone(),
            operations: operations.0,
            answered: operations.1,
            applied: world.applied.len(),
            crashes: self.crashes,
            writes_failed: world.counters.writes_failed,
            writes_lost: world.counters.writes_lost,
            snapshots: world.counters.snapshots_stored,
            messages: world.counters.messages_sent,
            end_ms: world.now_ms(),
            liveness_ms,
        }
    }

    fn config(&self, id: NodeId, life: u64) -> Config {
        let mut config = Config::new(id, self.voters.clone());
        config.seed = mix(mix(self.options.seed, id.0), life);
        config.snapshot_interval_entries = self.options.snapshot_interval_entries;
        config.snapshot_tail_entries = self.options.snapshot_tail_entries;
        config
    }

    /// Starts `id` in its current life on its durable image. A start that fails (a disk
    /// fault while it restores) leaves the node down, to be tried again.
    async fn start_node(&mut self, id: NodeId) {
        let life = lock(&self.world).lives[&id];
        let store = Arc::new(SimDisk::new(self.world.clone(), id, life));
        let network = Arc::new(SimNetwork::new(self.world.clone(), id, life));
        let machine = Box::new(Recorded::new(
            self.world.clone(),
            id,
            life,
            self.workload.machine(),
        ));
        let config = self.config(id, life);
        lock(&self.world).record(format_args!("{id} starts life {life}"));
        let started = {
            // The first forward session from the life's seed: a random one would make two
            // runs of a seed differ.
            let options = RuntimeOptions {
                forward_sessions_first: Some(crate::types::SessionId(mix(config.seed, 0xf0_4a4d))),
                ..RuntimeOptions::default()
            };
            RaftNode::start(config, options, store, machine, network).await
        };
        match started {
            Ok(node) => {
                let (ended, ended_receiver) = watch::channel(false);
                let handle = ClientHandle {
                    node: node.clone(),
                    ended: ended_receiver,
                };
                self.handles.lock().expect("handles").insert(id, handle);
                self.lives.insert(
                    id,
                    Some(Life {
                        number: life,
                        node,
                        ended,
                    }),
                );
                self.down_until.remove(&id);
            }
            Err(error) => {
                lock(&self.world).record(format_args!("{id} did not start: {error}"));
                self.end_life(id);
                let at = self.now_ms() + 50;
                self.down_until.insert(id, at);
            }
        }
    }

    /// Ends `id`'s current life at once: its disk and network handles stop counting (writes
    /// not yet durable never become so), its clients stop waiting, and its tasks wind down in
    /// the background.
    fn end_life(&mut self, id: NodeId) {
        {
            let mut world = lock(&self.world);
            *world.lives.get_mut(&id).expect("a voter") += 1;
            world.inbound.remove(&id);
            let disk = world.disks.get_mut(&id).expect("a disk per node");
            disk.open_sinks.clear();
            disk.failed_at_ms = None;
            world.applied_by.remove(&id);
            world.record(format_args!("{id} crashes"));
        }
        self.handles.lock().expect("handles").remove(&id);
        if let Some(life) = self.lives.insert(id, None).flatten() {
            let _ = life.ended.send(true);
            let node = life.node;
            tokio::spawn(async move { node.shutdown().await });
            let _ = life.number;
        }
    }

    fn crash(&mut self, id: NodeId, down_ms: u64) {
        self.crashes += 1;
        self.end_life(id);
        let at = self.now_ms() + down_ms;
        self.down_until.insert(id, at);
    }

    /// Notices nodes that stopped on their own (a failed write: fail-stop) and checks that
    /// every node whose disk failed a write did stop, within a second.
    fn check_stops(&mut self) {
        let now = self.now_ms();
        let stopped: Vec<(NodeId, StopCause)> = self
            .lives
            .iter()
            .filter_map(|(id, life)| {
                let life = life.as_ref()?;
                life.node.stopped_reason().map(|why| (*id, why.cause))
            })
            .collect();
        for (id, why) in stopped {
            lock(&self.world).record(format_args!("{id} stopped: {why}"));
            self.crash(id, 100);
        }
        let late = lock(&self.world)
            .disks
            .iter()
            .find_map(|(id, disk)| disk.failed_at_ms.map(|at| (*id, at)))
            .filter(|(_, at)| now > at + 1_000);
        if let Some((id, at)) = late {
            self.fail(format_args!(
                "{id}'s disk failed a write at {at} ms, and it still runs at {now} ms (it must \
                 stop)"
            ));
        }
    }

    /// Leaders seen in the statuses: one per term at most (the network checks the same from
    /// the messages they send).
    fn check_statuses(&self) {
        let mut world = lock(&self.world);
        for (id, life) in &self.lives {
            let Some(life) = life else { continue };
            let status = life.node.status();
            if status.role == Role::Leader {
                let leader = *world.leaders.entry(status.term).or_insert(*id);
                if leader != *id {
                    world.fail(format_args!(
                        "election safety: {leader} and {id} both lead term {}",
                        status.term
                    ));
                }
            }
        }
    }

    async fn step(&mut self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.check_panics();
        self.check_stops();
        self.check_statuses();
    }

    async fn fault_phase(&mut self) {
        let end = self.now_ms() + self.options.fault_phase_ms;
        while self.now_ms() < end {
            let pause = self.rng.between(10, 50);
            self.step(pause).await;
            self.restart_due().await;
            let options = self.options.clone();
            if self.rng.chance(options.crash_chance) {
                let up: Vec<NodeId> = self.running();
                if !up.is_empty() {
                    let id = up[self.rng.below(up.len() as u64) as usize];
                    let down_ms = self.rng.between(0, 1_000);
                    self.crash(id, down_ms);
                }
            }
            if self.rng.chance(options.partition_chance) {
                self.change_links();
            }
            if self.rng.chance(options.transfer_chance) {
                self.transfer();
            }
            if self.rng.chance(0.02) {
                let loss = [0.0, options.network.loss, 0.2][self.rng.below(3) as usize];
                lock(&self.world).network_faults.loss = loss;
            }
        }
    }

    fn running(&self) -> Vec<NodeId> {
        self.lives
            .iter()
            .filter(|(_, life)| life.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    async fn restart_due(&mut self) {
        let now = self.now_ms();
        let due: Vec<NodeId> = self
            .down_until
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.start_node(id).await;
        }
    }

    fn change_links(&mut self) {
        let mut world = lock(&self.world);
        match self.rng.below(3) {
            0 => world.cuts.clear(),
            kind => {
                let node = self.voters[self.rng.below(self.voters.len() as u64) as usize];
                for other in &self.voters {
                    if *other == node {
                        continue;
                    }
                    // Both ways, or only what it sends (it still hears the others).
                    world.cuts.insert((node, *other));
                    if kind == 1 {
                        world.cuts.insert((*other, node));
                    }
                }
                world.record(format_args!("cut {node} off (kind {kind})"));
            }
        }
    }

    fn transfer(&mut self) {
        let leader = self.lives.values().flatten().find_map(|life| {
            let status = life.node.status();
            (status.role == Role::Leader).then(|| (life.node.clone(), status.id))
        });
        let Some((node, id)) = leader else { return };
        let others: Vec<NodeId> = self.voters.iter().copied().filter(|v| *v != id).collect();
        if others.is_empty() {
            return;
        }
        let target = others[self.rng.below(others.len() as u64) as usize];
        lock(&self.world).record(format_args!("{id} hands over to {target}"));
        tokio::spawn(async move {
            let _ = node.transfer_leadership(target).await;
        });
    }

    async fn heal(&mut self) {
        {
            let mut world = lock(&self.world);
            world.cuts.clear();
            world.network_faults.loss = 0.0;
            world.network_faults.late_chance = 0.0;
            world.disk_faults.write_failure_chance = 0.0;
            world.disk_faults.slow_write_chance = 0.0;
            world.record(format_args!("heal"));
        }
        // Nodes stopped by a failure just before the heal are noticed, then all restart.
        self.step(10).await;
        for id in self.voters.clone() {
            if self.lives[&id].is_none() {
                self.start_node(id).await;
            }
        }
    }

    /// Within [`LIVENESS_MS_MAX`]: a leader commits a fresh write and every node applies it.
    async fn liveness(&mut self) {
        let deadline = self.now_ms() + LIVENESS_MS_MAX;
        let command = self.workload.liveness_command(self.options.seed);
        let mut applied_at: Option<LogIndex> = None;
        while self.now_ms() < deadline {
            self.step(20).await;
            self.restart_due().await;
            for id in self.voters.clone() {
                if self.lives[&id].is_none() {
                    self.start_node(id).await;
                }
            }
            let index = match applied_at {
                Some(index) => index,
                None => {
                    let leader = self.lives.values().flatten().find_map(|life| {
                        let status = life.node.status();
                        (status.role == Role::Leader).then(|| life.node.clone())
                    });
                    let Some(leader) = leader else { continue };
                    let wait = Duration::from_millis(1_000);
                    match tokio::time::timeout(wait, leader.propose(command.clone())).await {
                        Ok(Ok(_)) => {}
                        _ => continue,
                    }
                    let world = lock(&self.world);
                    let found = world
                        .applied
                        .iter()
                        .rev()
                        .find(|(_, applied)| **applied == command)
                        .map(|(index, _)| *index);
                    match found {
                        Some(index) => {
                            applied_at = Some(index);
                            index
                        }
                        None => continue,
                    }
                }
            };
            let everywhere = self.lives.values().all(|life| {
                life.as_ref()
                    .is_some_and(|life| life.node.status().applied_index >= index)
            });
            if everywhere {
                return;
            }
        }
        let statuses: Vec<String> = self
            .lives
            .iter()
            .map(|(id, life)| match life {
                Some(life) => {
                    let s = life.node.status();
                    format!(
                        "{id}: {:?} term {} leader {:?} commit {} applied {}",
                        s.role, s.term, s.leader, s.commit_index, s.applied_index
                    )
                }
                None => format!("{id}: down"),
            })
            .collect();
        self.fail(format_args!(
            "liveness: no fresh write applied on every node within {LIVENESS_MS_MAX} ms of the \
             heal (write applied at {applied_at:?}); {}",
            statuses.join("; ")
        ));
    }

    /// Every node ends with the same key-value data (read through the read barrier, so each
    /// is at least as far as the last write; no write comes any more).
    async fn check_same_state(&self) {
        let mut states = Vec::new();
        for (id, life) in &self.lives {
            let Some(life) = life else { continue };
            let wait = Duration::from_millis(5_000);
            let read = life.node.read({
                let workload = self.workload.clone();
                move |machine: &Recorded<W::Machine>| workload.state(machine.inner())
            });
            match tokio::time::timeout(wait, read).await {
                Ok(Ok(data)) => states.push((*id, data)),
                other => self.fail(format_args!(
                    "the final read of {id}'s state failed: {:?}",
                    other.map(|r| r.map(|_| ()))
                )),
            }
        }
        if let Some((first, data)) = states.first() {
            for (id, other) in &states[1..] {
                if other != data {
                    self.fail(format_args!(
                        "{first} and {id} end with different data: {data:?} and {other:?}"
                    ));
                }
            }
        }
    }

    /// Returns (operations, answered).
    fn check_history(&self) -> (usize, usize) {
        let history = self.history.lock().expect("history");
        let answered = history
            .operations()
            .iter()
            .filter(|op| {
                matches!(
                    op.outcome,
                    crate::testkit::linearizability::Outcome::Returned { .. }
                )
            })
            .count();
        match check(
            &self.workload.model(),
            &history,
            self.workload.check_limits(),
        ) {
            CheckResult::Linearizable => {}
            verdict => self.fail(format_args!("the client history: {verdict}")),
        }
        (history.len(), answered)
    }
}

/// A closed-loop client: one operation at a time, to a random node.
struct Client<W: Workload> {
    workload: Arc<W>,
    index: usize,
    clients: usize,
    rng: SimRng,
    handles: Arc<Mutex<BTreeMap<NodeId, ClientHandle>>>,
    history: Arc<Mutex<History<W::Input, W::Output>>>,
    world: SharedWorld,
    voters: Vec<NodeId>,
    stop: Arc<AtomicBool>,
    /// The last operation's outcome, noted at the client's next moment: (operation, node
    /// asked, input, answer if any, when it came).
    answered: Option<Answered<W::Input, W::Output>>,
}

type Answered<I, O> = (OpId, NodeId, I, Option<O>, u64);

impl<W: Workload> Client<W> {
    fn now_ns(&self) -> u64 {
        let world = lock(&self.world);
        tokio::time::Instant::now()
            .duration_since(world.start)
            .as_nanos() as u64
    }

    /// Sleeps until a millisecond no other client wakes at (`ms ≡ index mod clients`), at
    /// least `pause_ms` from now: the order in which one event woke several clients then
    /// leaves no trace.
    async fn pause(&mut self, pause_ms: u64) {
        let now_ms = self.now_ns() / 1_000_000;
        let clients = self.clients as u64;
        let mut at = now_ms + pause_ms + 1;
        at += (self.index as u64 + clients - at % clients) % clients;
        let start = lock(&self.world).start;
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
    }

    async fn run(mut self) {
        let mut counter = 0u64;
        loop {
            // Also after an answer: several clients' answers may come in one step, in an
            // order that is not the seed's (the runtime keeps its waiting callers in hash
            // maps), so each client notes its answer only at its own moment.
            let pause = self.rng.between(0, 20);
            self.pause(pause).await;
            if let Some((op, target, input, answer, time)) = self.answered.take() {
                let mut world = lock(&self.world);
                world.record(format_args!(
                    "client {} asked {target} {input:?}: {answer:?}",
                    self.index
                ));
                drop(world);
                if let Some(output) = answer {
                    self.history.lock().expect("history").ret(op, output, time);
                }
            }
            let target = self.voters[self.rng.below(self.voters.len() as u64) as usize];
            let handle = self.handles.lock().expect("handles").get(&target).cloned();
            if self.stop.load(Ordering::Relaxed)
                || self.history.lock().expect("history").len() >= OPERATIONS_MAX
            {
                return;
            }
            let Some(mut handle) = handle else { continue };
            counter += 1;
            let call = self.workload.next_call(self.index, counter, &mut self.rng);
            let input = call.input;
            let call_time = self.now_ns();
            let op = self.history.lock().expect("history").call(
                self.index as u64,
                input.clone(),
                call_time,
            );
            let node = handle.node.clone();
            let asked = input.clone();
            let workload = self.workload.clone();
            let ask = async move {
                match call.via {
                    Via::Read => node
                        .read(move |machine: &Recorded<W::Machine>| {
                            workload.read(machine.inner(), &asked)
                        })
                        .await
                        .map(Some),
                    Via::Propose(command) => node
                        .propose(command)
                        .await
                        .map(|answer| workload.decode(&asked, &answer)),
                }
            };
            let wait = Duration::from_millis(CLIENT_WAIT_MS_MAX);
            let outcome: Option<Result<Option<W::Output>, NodeError>> = tokio::select! {
                biased;
                answer = ask => Some(answer),
                _ = handle.ended.wait_for(|ended| *ended) => None,
                _ = tokio::time::sleep(wait) => None,
            };
            let answer = match outcome {
                Some(Ok(Some(output))) => Some(output),
                Some(Ok(None)) => {
                    panic!("{target} answered {input:?} with bytes that do not decode")
                }
                // An error, definite or not, leaves the outcome unknown: it may not have
                // happened, which the checker allows too.
                Some(Err(_)) | None => None,
            };
            self.answered = Some((op, target, input, answer, self.now_ns()));
        }
    }
}
