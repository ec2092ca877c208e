//! What runs on the simulated cluster: a [`Workload`] brings the state machine, the
//! operations its clients send, and the [`Model`] their history is checked against. The
//! simulator's own is [`KvWorkload`]; a user runs *their* machine the same way with
//! [`run_workload`](super::run_workload).

use super::machine::KvMachine;
use crate::state_machine::StateMachine;
use crate::testkit::linearizability::{CheckLimits, KvInput, KvModel, KvOutput, Model};
use crate::testkit::sim::kv::{decode_output, encode, KvStore};
use crate::testkit::sim::rng::SimRng;
use bytes::Bytes;
use std::fmt::Debug;

/// How a client's operation reaches the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// Proposed as this command ([`RaftNode::propose`](crate::runtime::RaftNode::propose));
    /// the answer goes through [`Workload::decode`].
    Propose(Bytes),
    /// Read from the node's state machine after a read barrier
    /// ([`RaftNode::read`](crate::runtime::RaftNode::read)), with [`Workload::read`].
    Read,
}

/// One operation a client sends: what the model sees, and how it is carried out.
#[derive(Clone, Debug)]
pub struct Call<I> {
    /// The operation as the model knows it.
    pub input: I,
    /// How it reaches the cluster.
    pub via: Via,
}

/// A state machine under test, with its clients' operations and its model. Everything must
/// be a function of its arguments (the seed's RNG included): the same seed must replay the
/// same run.
///
/// ```
/// use raft_core::testkit::runtime_sim::{run_workload, KvWorkload, RuntimeSimOptions};
///
/// let mut options = RuntimeSimOptions::from_seed(7);
/// options.fault_phase_ms = 500; // a short run for the example
/// let report = run_workload(&options, KvWorkload);
/// assert!(report.operations > 0);
/// ```
pub trait Workload: Send + Sync + 'static {
    /// The state machine each node runs (a fresh one per life: a restart replays into it).
    type Machine: StateMachine;
    /// What a client asks, as the model sees it.
    type Input: Clone + Debug + Send + 'static;
    /// What a client gets back.
    type Output: Clone + Debug + Send + 'static;
    /// What every node must agree on at the end (compared across nodes).
    type State: PartialEq + Debug + Send + 'static;
    /// The model of the machine: the client history must be linearizable against it.
    type Model: Model<Input = Self::Input, Output = Self::Output>;

    /// A fresh state machine, for a node's new life.
    fn machine(&self) -> Self::Machine;

    /// The model the client history is checked against.
    fn model(&self) -> Self::Model;

    /// Client `client`'s next operation, its `counter`th (from 1), drawn from `rng`.
    fn next_call(&self, client: usize, counter: u64, rng: &mut SimRng) -> Call<Self::Input>;

    /// The operation's output from the machine's answer to its command; `None` when the
    /// answer does not decode, which fails the run (every node must answer alike, and in a
    /// form the client understands).
    fn decode(&self, input: &Self::Input, answer: &Bytes) -> Option<Self::Output>;

    /// Serves a read ([`Via::Read`]) from a node's machine, past its read barrier.
    fn read(&self, machine: &Self::Machine, input: &Self::Input) -> Self::Output;

    /// What the nodes must agree on once every write is applied.
    fn state(&self, machine: &Self::Machine) -> Self::State;

    /// A command the simulator proposes once the faults end, to see the cluster commit and
    /// apply a fresh write everywhere. It is not in the client history, so it must not change
    /// anything a client can observe (a no-op, or a write outside the clients' keys), and it
    /// must differ from every client command. `seed` is the run's.
    fn liveness_command(&self, seed: u64) -> Bytes;

    /// How long the linearizability search may take. A model whose history cannot be split
    /// into independent parts (a ledger whose transfers join accounts) searches the whole
    /// history at once, and every operation whose outcome is unknown (a timeout, a crash)
    /// doubles what it may have to try: give it more steps, or fewer faults and clients.
    fn check_limits(&self) -> CheckLimits {
        CheckLimits::default()
    }
}

/// The simulator's own workload: puts, compare-and-swaps and gets on three keys, gets both
/// through the log and through [`Via::Read`].
#[derive(Clone, Copy, Debug, Default)]
pub struct KvWorkload;

const KEYS: [&str; 3] = ["x", "y", "z"];

impl Workload for KvWorkload {
    type Machine = KvMachine;
    type Input = KvInput;
    type Output = KvOutput;
    type State = std::collections::BTreeMap<String, Bytes>;
    type Model = KvModel;

    fn machine(&self) -> KvMachine {
        KvMachine::default()
    }

    fn model(&self) -> KvModel {
        KvModel
    }

    fn next_call(&self, client: usize, counter: u64, rng: &mut SimRng) -> Call<KvInput> {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        let value = Bytes::from(format!("{client}.{counter}"));
        let kind = rng.below(4);
        let input = match kind {
            0 | 1 => KvInput::put(key, value),
            2 => {
                let expected =
                    (counter > 1).then(|| Bytes::from(format!("{client}.{}", counter - 1)));
                KvInput::cas(key, expected, value)
            }
            _ => KvInput::get(key),
        };
        let via = if kind == 3 && rng.chance(0.5) {
            Via::Read
        } else {
            Via::Propose(encode(&input))
        };
        Call { input, via }
    }

    fn decode(&self, _input: &KvInput, answer: &Bytes) -> Option<KvOutput> {
        decode_output(answer)
    }

    fn read(&self, machine: &KvMachine, input: &KvInput) -> KvOutput {
        KvOutput::Value(machine.store().get(input.key()).cloned())
    }

    fn state(&self, machine: &KvMachine) -> Self::State {
        machine.store().data().clone()
    }

    fn liveness_command(&self, seed: u64) -> Bytes {
        encode(&KvInput::put("liveness", format!("seed {seed}")))
    }
}

impl KvMachine {
    /// The key-value data applied so far.
    pub fn store(&self) -> &KvStore {
        &self.store
    }
}
