//! A user's own state machine under the runtime-level simulation
//! (`raft_core::testkit::runtime_sim::run_workload`): a bank ledger that refuses transfers
//! the payer cannot cover, with its own model, clients and snapshots, under the simulator's
//! crashes, partitions, loss and slow or failing disks. It keeps its books on every seed; the
//! same ledger with a planted bug in its snapshots is caught.
//!
//! `SIM_SEEDS=N` sets how many seeds each test runs (default 24).

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::snapshot::{SnapshotMeta, SnapshotReader, SnapshotWriter};
use raft_core::testkit::linearizability::{CheckLimits, Model};
use raft_core::testkit::runtime_sim::{run_workload, Call, RuntimeSimOptions, Via, Workload};
use raft_core::testkit::seeds::env_u64;
use raft_core::testkit::sim::rng::SimRng;
use raft_core::{LogIndex, StateMachine, StateMachineError};
use std::panic::{self, AssertUnwindSafe};

const ACCOUNTS: usize = 3;
const SEEDS_DEFAULT: u64 = 24;

/// The ledger: one balance per account. Commands are text: `deposit A N`, `transfer A B N`,
/// `balance A`. Every answer is text too: the balance after a deposit, `ok` or `refused` for
/// a transfer, the balance asked for. A command that does not parse is refused with an answer
/// (`malformed`), never an error: the cluster goes on serving.
#[derive(Default)]
struct Ledger {
    balances: [u64; ACCOUNTS],
    /// The planted bug: snapshots leave out the last account.
    forgets_last_account: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Op {
    Deposit(usize, u64),
    Transfer(usize, usize, u64),
    Balance(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Balance(u64),
    Transferred,
    Refused,
}

fn encode(op: &Op) -> Bytes {
    Bytes::from(match op {
        Op::Deposit(account, amount) => format!("deposit {account} {amount}"),
        Op::Transfer(from, to, amount) => format!("transfer {from} {to} {amount}"),
        Op::Balance(account) => format!("balance {account}"),
    })
}

fn parse(command: &[u8]) -> Option<Op> {
    let text = std::str::from_utf8(command).ok()?;
    let words: Vec<&str> = text.split(' ').collect();
    let account = |word: &str| word.parse::<usize>().ok().filter(|a| *a < ACCOUNTS);
    match words.as_slice() {
        ["deposit", a, n] => Some(Op::Deposit(account(a)?, n.parse().ok()?)),
        ["transfer", a, b, n] => Some(Op::Transfer(account(a)?, account(b)?, n.parse().ok()?)),
        ["balance", a] => Some(Op::Balance(account(a)?)),
        _ => None,
    }
}

impl Ledger {
    fn apply_op(&mut self, op: &Op) -> Answer {
        match *op {
            Op::Deposit(account, amount) => {
                self.balances[account] += amount;
                Answer::Balance(self.balances[account])
            }
            Op::Transfer(from, to, amount) => {
                if self.balances[from] < amount {
                    return Answer::Refused;
                }
                self.balances[from] -= amount;
                self.balances[to] += amount;
                Answer::Transferred
            }
            Op::Balance(account) => Answer::Balance(self.balances[account]),
        }
    }
}

#[async_trait]
impl StateMachine for Ledger {
    async fn apply(&mut self, _: LogIndex, command: Bytes) -> Result<Bytes, StateMachineError> {
        let Some(op) = parse(&command) else {
            return Ok(Bytes::from_static(b"malformed"));
        };
        Ok(Bytes::from(match self.apply_op(&op) {
            Answer::Balance(balance) => balance.to_string(),
            Answer::Transferred => "ok".to_string(),
            Answer::Refused => "refused".to_string(),
        }))
    }

    async fn build_snapshot(&mut self, out: &mut SnapshotWriter) -> Result<(), StateMachineError> {
        let kept = if self.forgets_last_account {
            ACCOUNTS - 1
        } else {
            ACCOUNTS
        };
        let mut bytes = Vec::with_capacity(8 * ACCOUNTS);
        for balance in &self.balances[..kept] {
            bytes.extend_from_slice(&balance.to_be_bytes());
        }
        bytes.resize(8 * ACCOUNTS, 0);
        out.write(&bytes).await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: &mut SnapshotReader,
    ) -> Result<(), StateMachineError> {
        let bytes = data.read_to_end().await?;
        if bytes.len() != 8 * ACCOUNTS {
            let index = meta.last_index;
            return Err(StateMachineError(format!(
                "the ledger at {index} is damaged"
            )));
        }
        for (balance, chunk) in self.balances.iter_mut().zip(bytes.chunks(8)) {
            *balance = u64::from_be_bytes(chunk.try_into().expect("8 bytes"));
        }
        Ok(())
    }
}

/// What the clients may observe: every balance.
struct LedgerModel;

impl Model for LedgerModel {
    type State = [u64; ACCOUNTS];
    type Input = Op;
    type Output = Answer;

    fn init(&self) -> Self::State {
        [0; ACCOUNTS]
    }

    fn step(&self, state: &Self::State, input: &Op, output: &Answer) -> Option<Self::State> {
        let mut ledger = Ledger {
            balances: *state,
            forgets_last_account: false,
        };
        (ledger.apply_op(input) == *output).then_some(ledger.balances)
    }

    fn step_unknown(&self, state: &Self::State, input: &Op) -> Option<Self::State> {
        let mut ledger = Ledger {
            balances: *state,
            forgets_last_account: false,
        };
        ledger.apply_op(input);
        Some(ledger.balances)
    }

    fn is_read_only(&self, input: &Op) -> bool {
        matches!(input, Op::Balance(_))
    }
}

struct LedgerWorkload {
    planted_bug: bool,
}

impl Workload for LedgerWorkload {
    type Machine = Ledger;
    type Input = Op;
    type Output = Answer;
    type State = [u64; ACCOUNTS];
    type Model = LedgerModel;

    fn machine(&self) -> Ledger {
        Ledger {
            balances: [0; ACCOUNTS],
            forgets_last_account: self.planted_bug,
        }
    }

    fn model(&self) -> LedgerModel {
        LedgerModel
    }

    fn next_call(&self, _client: usize, _counter: u64, rng: &mut SimRng) -> Call<Op> {
        let a = rng.below(ACCOUNTS as u64) as usize;
        let input = match rng.below(6) {
            0 | 1 => Op::Deposit(a, 1 + rng.below(5)),
            2 | 3 => {
                let b = (a + 1 + rng.below(ACCOUNTS as u64 - 1) as usize) % ACCOUNTS;
                Op::Transfer(a, b, 1 + rng.below(8))
            }
            _ => Op::Balance(a),
        };
        let via = match input {
            Op::Balance(_) if rng.chance(0.5) => Via::Read,
            _ => Via::Propose(encode(&input)),
        };
        Call { input, via }
    }

    fn decode(&self, input: &Op, answer: &Bytes) -> Option<Answer> {
        match (input, answer.as_ref()) {
            (Op::Transfer(..), b"ok") => Some(Answer::Transferred),
            (Op::Transfer(..), b"refused") => Some(Answer::Refused),
            (Op::Deposit(..) | Op::Balance(_), text) => std::str::from_utf8(text)
                .ok()?
                .parse()
                .ok()
                .map(Answer::Balance),
            _ => None,
        }
    }

    fn read(&self, machine: &Ledger, input: &Op) -> Answer {
        let Op::Balance(account) = input else {
            unreachable!("only balances are read from the machine")
        };
        Answer::Balance(machine.balances[*account])
    }

    fn state(&self, machine: &Ledger) -> [u64; ACCOUNTS] {
        machine.balances
    }

    /// The ledger's history is checked whole (transfers join the accounts).
    fn check_limits(&self) -> CheckLimits {
        CheckLimits {
            search_steps_max: 20_000_000,
        }
    }

    fn liveness_command(&self, _seed: u64) -> Bytes {
        // Moves nothing: a malformed command is answered, and changes no balance.
        Bytes::from_static(b"audit")
    }
}

/// Snapshots often, with a short tail, so that restarted and lagging nodes install them.
fn options(seed: u64) -> RuntimeSimOptions {
    let mut options = RuntimeSimOptions::from_seed(seed);
    options.snapshot_interval_entries = 10 + seed % 20;
    options.snapshot_tail_entries = seed % 3;
    // Two clients: each operation a crash or a timeout leaves unknown doubles the search of a
    // history that cannot be split by account.
    options.clients = 2;
    options.crash_chance = 0.01;
    options.fault_phase_ms = 2_500;
    options.replay_command = Some(format!(
        "SIM_SEEDS={seed} cargo test --release -p raft-core --test simulation_user_machine"
    ));
    options
}

fn seeds() -> std::ops::RangeInclusive<u64> {
    1..=env_u64("SIM_SEEDS").unwrap_or(SEEDS_DEFAULT)
}

/// Proves: a user's state machine runs under the simulator with its own model. The ledger
/// keeps its books on every seed: the client history (deposits, transfers, some refused,
/// balances through the log and through reads of the machine) is linearizable against the
/// ledger's model, and every node ends with the same balances.
#[test]
fn a_ledger_keeps_its_books_under_the_simulators_faults() {
    let mut operations = 0;
    for seed in seeds() {
        let report = run_workload(&options(seed), LedgerWorkload { planted_bug: false });
        operations += report.operations;
    }
    assert!(operations > 100, "only {operations} operations checked");
}

/// Proves: the simulator finds a bug in a user's state machine. Snapshots that leave out the
/// last account's balance pass every single-node test that never installs one; under the
/// simulator a restarted or lagging node installs one, and the run fails, naming the seed.
#[test]
fn a_planted_snapshot_bug_in_the_ledger_is_caught() {
    // The panics of the failing run are printed: the simulator's panic recorder must stay
    // the hook (it fails a run whose task panicked), so no quiet hook replaces it.
    let caught = seeds().find_map(|seed| {
        let run = panic::catch_unwind(AssertUnwindSafe(|| {
            run_workload(&options(seed), LedgerWorkload { planted_bug: true })
        }));
        run.err().map(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            (seed, message)
        })
    });
    let (seed, message) = caught.expect("a seed catches the ledger's snapshot bug");
    assert!(
        message.contains(&format!("seed {seed} failed")),
        "the failure names its seed: {message}"
    );
    println!("seed {seed} caught the planted bug: {message}");
}
