//! A linearizability checker for client histories: given what every client asked, when it
//! asked, and what it got back (or that it never heard back), decide whether some single,
//! sequential order of the operations explains every answer while respecting real time.
//!
//! The simulator records one [`History`] per run and checks it against [`KvModel`]; a
//! multi-process test can do the same with wall-clock nanoseconds. Any other service can be
//! checked by implementing [`Model`] for it.
//!
//! ```
//! use raft_core::testkit::linearizability::{check, CheckLimits, History, KvInput, KvModel, KvOutput};
//!
//! let mut history = History::new();
//! let put = history.call(1, KvInput::put("x", "1"), 0);
//! let get = history.call(2, KvInput::get("x"), 5); // overlaps the put
//! history.ret(put, KvOutput::Ok, 10);
//! history.ret(get, KvOutput::found("1"), 12); // saw the new value: fine, the put may come first
//! let stale = history.call(2, KvInput::get("x"), 20); // called after the put returned
//! history.ret(stale, KvOutput::absent(), 21); // ...yet saw nothing: no order explains that
//!
//! let result = check(&KvModel, &history, CheckLimits::default());
//! assert!(!result.is_linearizable());
//! assert!(result.to_string().contains("key \"x\""), "{result}");
//! ```
//!
//! # How the search works
//!
//! This follows the algorithm of Wing and Gong as improved by Lowe, the one the Porcupine
//! checker made popular. The model first splits the history into independent partitions (one
//! per key for [`KvModel`]), each checked on its own. A partition's calls and returns are
//! sorted by time once and threaded on a doubly linked list. The search walks that list: at a
//! call it tries to make the operation take effect now (the model must accept the recorded
//! output from the current state); on success the call and its return leave the list and the
//! walk restarts from the front. Reaching a return means that operation's response came before
//! it could be placed, so the search backtracks to the last choice. A memo of every
//! (set of placed operations, model state) pair already explored cuts repeated sub-searches;
//! the set is a bitset of `u64` words.
//!
//! Operations whose caller never heard back ([`Outcome::Unknown`]: a timeout, a crash) have no
//! return: they may take effect at any point after their call or never. The search succeeds
//! once every operation with a known outcome is placed; unknown ones left over never took
//! effect. An unknown-outcome read constrains nothing and is dropped before the search.
//!
//! Ties: a call and a return at the same time are treated as concurrent (calls sort first),
//! so coarse simulated ticks never make the checker stricter than real time is.
//!
//! # Limits
//!
//! The search is exponential in the worst case. [`CheckLimits::search_steps_max`] bounds the
//! steps per partition; the memo gains at most one entry per step, so it bounds memory too.
//! Running out gives [`CheckResult::GaveUp`], which is never a pass.

use bytes::Bytes;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Debug, Write as _};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// Most operations one [`History`] may hold; [`History::call`] panics past it. A history this
/// long is already far beyond what the search can check in reasonable time.
pub const HISTORY_OPERATIONS_MAX: usize = 1_000_000;

/// Most operations listed in a failure explanation; the rest are counted, not printed.
pub const EXPLANATION_OPERATIONS_MAX: usize = 64;

/// Most operations of the longest linearizable prefix a failure explanation prints: the last
/// ones, which are where the trouble is (the whole partition is listed after them anyway).
pub const EXPLANATION_PREFIX_TAIL_MAX: usize = 16;

/// What a service does, as a sequential specification the checker replays histories against.
///
/// The model must be deterministic: from a state, an input with a given output leads to at
/// most one next state.
pub trait Model {
    /// Everything the next operation's legality may depend on. Hashed into the search memo,
    /// so keep it small (for a key-value store partitioned by key: one key's value).
    type State: Clone + Eq + Hash + Debug;
    /// What a client asked for.
    type Input: Debug;
    /// What the client got back.
    type Output: Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Whether `output` is a legal answer to `input` in `state`; if so, the state after it.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    /// The state after `input` takes effect in `state` when nobody saw its output, or `None`
    /// if it cannot take effect there. Leaving an unknown operation out entirely is always
    /// tried too, so this only describes the case where it did happen.
    fn step_unknown(&self, state: &Self::State, input: &Self::Input) -> Option<Self::State>;

    /// True if `input` never changes the state. An unknown-outcome operation of such an input
    /// constrains nothing, so the checker drops it before the search. The default, `false`,
    /// is always correct, only slower.
    fn is_read_only(&self, input: &Self::Input) -> bool {
        let _ = input;
        false
    }

    /// Splits the history into independent sub-histories that can be checked one by one (a
    /// history is linearizable if and only if each partition is, when no operation of one
    /// partition can affect another). Each operation should appear in exactly one
    /// partition; one left out is not checked. The default keeps the whole history together.
    fn partition(&self, operations: &[Operation<Self::Input, Self::Output>]) -> Vec<Partition> {
        vec![Partition {
            description: "the whole history".to_string(),
            operations: operations.iter().map(|operation| operation.id).collect(),
        }]
    }
}

/// A sub-history that [`Model::partition`] found independent of the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// What the partition is, for failure messages, e.g. `key "x"`.
    pub description: String,
    /// Its operations. Invariant: no duplicates, every id from the history being split.
    pub operations: Vec<OpId>,
}

/// Names one operation of a [`History`]: its position, in call order of the builder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op#{}", self.0)
    }
}

/// The client that issued an operation. Only used to make failures readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

impl From<u64> for ClientId {
    fn from(value: u64) -> Self {
        ClientId(value)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}", self.0)
    }
}

/// How an operation ended, as far as its client knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<O> {
    /// The client got `output` at `time`. Invariant: `time` is not before the call time.
    Returned {
        /// The answer.
        output: O,
        /// When the answer arrived, on the same clock as the call time.
        time: u64,
    },
    /// No answer (yet): a timeout, a crash, a dropped reply. The operation may take effect at
    /// any time after its call, or never.
    Unknown,
}

/// One client operation: what was asked, when, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Its position in the history.
    pub id: OpId,
    /// Who asked.
    pub client: ClientId,
    /// What was asked.
    pub input: I,
    /// When it was asked: simulated ticks or nanoseconds, the same clock for every operation.
    pub call_time: u64,
    /// The answer and its time, or that no answer came.
    pub outcome: Outcome<O>,
}

/// The operations of a run, built as the run goes: [`History::call`] when a client sends a
/// request, [`History::ret`] when it gets the answer. Operations never returned stay
/// [`Outcome::Unknown`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History<I, O> {
    /// Invariant: `operations[i].id == OpId(i)`, and the length is at most
    /// [`HISTORY_OPERATIONS_MAX`].
    operations: Vec<Operation<I, O>>,
}

impl<I, O> Default for History<I, O> {
    fn default() -> Self {
        History {
            operations: Vec::new(),
        }
    }
}

impl<I, O> History<I, O> {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client` asked for `input` at `time`; the outcome is unknown until
    /// [`History::ret`] is called with the returned id.
    ///
    /// # Panics
    /// If the history already holds [`HISTORY_OPERATIONS_MAX`] operations.
    pub fn call(&mut self, client: impl Into<ClientId>, input: I, time: u64) -> OpId {
        assert!(
            self.operations.len() < HISTORY_OPERATIONS_MAX,
            "history is full: {HISTORY_OPERATIONS_MAX} operations (HISTORY_OPERATIONS_MAX)"
        );
        let id = OpId(self.operations.len());
        self.operations.push(Operation {
            id,
            client: client.into(),
            input,
            call_time: time,
            outcome: Outcome::Unknown,
        });
        id
    }

    /// Records that operation `op` got `output` at `time`.
    ///
    /// # Panics
    /// If `op` is not from this history, already returned, or `time` is before its call: each
    /// is a bug in the code recording the history, not in the system under test.
    pub fn ret(&mut self, op: OpId, output: O, time: u64) {
        let count = self.operations.len();
        let operation = self
            .operations
            .get_mut(op.0)
            .unwrap_or_else(|| panic!("{op} is not in this history of {count} operations"));
        assert!(
            matches!(operation.outcome, Outcome::Unknown),
            "{op} already returned"
        );
        assert!(
            time >= operation.call_time,
            "{op} returned at {time}, before its call at {}",
            operation.call_time
        );
        operation.outcome = Outcome::Returned { output, time };
    }

    /// Every operation, indexed by [`OpId`].
    pub fn operations(&self) -> &[Operation<I, O>] {
        &self.operations
    }

    /// The operation `op`, if it is in this history.
    pub fn get(&self, op: OpId) -> Option<&Operation<I, O>> {
        self.operations.get(op.0)
    }

    /// How many operations were recorded.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }
}

/// Bounds on one [`check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckLimits {
    /// Most search steps per partition (a step is one visit to an event of the list, so one
    /// model step at most, and one memo entry at most). Past it the check gives up.
    pub search_steps_max: u64,
}

impl Default for CheckLimits {
    /// A million steps per partition: a few hundred operations with a handful of clients need
    /// thousands; a million takes well under a second.
    fn default() -> Self {
        CheckLimits {
            search_steps_max: 1_000_000,
        }
    }
}

/// The verdict of a [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every partition has an order that explains every answer.
    Linearizable,
    /// A partition has no such order. When several fail, the first in partition order.
    NotLinearizable {
        /// Which partition, e.g. `key "x"`.
        partition: String,
        /// The longest sequence of operations the search could place, in order.
        longest_prefix: Vec<OpId>,
        /// The operations that could have come next after that prefix, none of which led to a
        /// full order (the one whose answer arrived too early is among them).
        unplaced: Vec<OpId>,
        /// A multi-line account: the prefix, the state after it, and why each candidate
        /// failed, followed by the partition's operations.
        explanation: String,
    },
    /// The search ran out of steps on a partition before deciding. Not a pass.
    GaveUp {
        /// Which partition.
        partition: String,
        /// The budget that ran out ([`CheckLimits::search_steps_max`]).
        search_steps_max: u64,
        /// What was decided before giving up, and how to go on.
        explanation: String,
    },
}

impl CheckResult {
    /// True only for [`CheckResult::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Linearizable => write!(f, "linearizable"),
            CheckResult::NotLinearizable { explanation, .. } => {
                write!(f, "NOT linearizable: {explanation}")
            }
            CheckResult::GaveUp { explanation, .. } => write!(f, "gave up: {explanation}"),
        }
    }
}

/// Checks `history` against `model`, one partition at a time.
///
/// Partitions are searched in the order [`Model::partition`] gives them, stopping at the first
/// that is not linearizable. One that gives up does not stop the others, so a definite
/// violation anywhere is reported in preference to [`CheckResult::GaveUp`].
///
/// # Panics
/// If the model's partitions name an operation twice or one not in the history.
pub fn check<M: Model>(
    model: &M,
    history: &History<M::Input, M::Output>,
    limits: CheckLimits,
) -> CheckResult {
    let operations = history.operations();
    let mut gave_up = None;
    for partition in model.partition(operations) {
        let search = PartitionSearch::new(model, operations, &partition);
        match search.run(limits.search_steps_max) {
            SearchEnd::Linearizable => {}
            SearchEnd::Failed(deepest) => {
                return search.violation(&partition.description, deepest);
            }
            SearchEnd::GaveUp(deepest) => {
                if gave_up.is_none() {
                    gave_up = Some(search.gave_up(&partition.description, deepest, limits));
                }
            }
        }
    }
    gave_up.unwrap_or(CheckResult::Linearizable)
}

/// Index of the list's head sentinel among a partition's events.
const HEAD: usize = 0;
/// "No event": the end of the list, or a call without a return.
const NONE: usize = usize::MAX;

/// One call or return in a partition's time-ordered event list.
#[derive(Clone, Copy, Debug)]
struct Event {
    /// Index into the partition's operations.
    operation: usize,
    /// For a call: the index of its return event, or [`NONE`] if the outcome is unknown.
    /// For a return: [`NONE`].
    return_event: usize,
    is_call: bool,
}

/// One partition prepared for the search: its operations and their time-ordered events.
struct PartitionSearch<'a, M: Model> {
    model: &'a M,
    operations: Vec<&'a Operation<M::Input, M::Output>>,
    events: Vec<Event>,
    /// The links with every event present, copied at the start of each search.
    initial_list: EventList,
    known_count: usize,
}

/// How a partition's search ended.
enum SearchEnd<S> {
    Linearizable,
    Failed(Deepest<S>),
    GaveUp(Option<Deepest<S>>),
}

/// The furthest the search got: the placed operations (partition indexes, in order), the
/// state after them, and the operations that were candidates to come next.
struct Deepest<S> {
    prefix: Vec<usize>,
    state: S,
    candidates: Vec<usize>,
    blocked_by: Option<usize>,
}

/// A placement the search may undo: the call event lifted and the state before it.
struct Frame<S> {
    call_event: usize,
    state_before: S,
}

impl<'a, M: Model> PartitionSearch<'a, M> {
    fn new(
        model: &'a M,
        history: &'a [Operation<M::Input, M::Output>],
        partition: &Partition,
    ) -> Self {
        let mut seen = vec![false; history.len()];
        let mut operations = Vec::with_capacity(partition.operations.len());
        for &id in &partition.operations {
            let operation = history.get(id.0).unwrap_or_else(|| {
                panic!("partition {} names unknown {id}", partition.description)
            });
            assert!(
                !seen[id.0],
                "partition {} names {id} twice",
                partition.description
            );
            seen[id.0] = true;
            let unknown = matches!(operation.outcome, Outcome::Unknown);
            if !(unknown && model.is_read_only(&operation.input)) {
                operations.push(operation);
            }
        }
        let mut search = PartitionSearch {
            model,
            known_count: 0,
            events: Vec::new(),
            initial_list: EventList {
                next: Vec::new(),
                previous: Vec::new(),
            },
            operations,
        };
        search.build_events();
        search
    }

    /// Sorts calls and returns by time once (calls before returns at equal times, then by
    /// operation) and links them into the list.
    fn build_events(&mut self) {
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * self.operations.len());
        for (index, operation) in self.operations.iter().enumerate() {
            order.push((operation.call_time, false, index));
            if let Outcome::Returned { time, .. } = operation.outcome {
                order.push((time, true, index));
                self.known_count += 1;
            }
        }
        order.sort_unstable();
        let mut call_event = vec![NONE; self.operations.len()];
        self.events.push(Event {
            operation: NONE,
            return_event: NONE,
            is_call: false,
        });
        for &(_, is_return, operation) in &order {
            let index = self.events.len();
            if is_return {
                assert_ne!(
                    call_event[operation], NONE,
                    "a return sorted before its call"
                );
                self.events[call_event[operation]].return_event = index;
            } else {
                call_event[operation] = index;
            }
            self.events.push(Event {
                operation,
                return_event: NONE,
                is_call: !is_return,
            });
        }
        let count = self.events.len();
        self.initial_list = EventList {
            next: (1..=count)
                .map(|i| if i == count { NONE } else { i })
                .collect(),
            previous: (0..count).map(|i| i.wrapping_sub(1)).collect(),
        };
        assert_eq!(self.initial_list.previous[HEAD], NONE);
    }

    /// The state after operation `index` takes effect in `state`, if it legally can.
    fn try_step(&self, state: &M::State, index: usize) -> Option<M::State> {
        let operation = self.operations[index];
        match &operation.outcome {
            Outcome::Returned { output, .. } => self.model.step(state, &operation.input, output),
            Outcome::Unknown => self.model.step_unknown(state, &operation.input),
        }
    }

    /// The depth-first search. Returns as soon as every known-outcome operation is placed.
    fn run(&self, search_steps_max: u64) -> SearchEnd<M::State> {
        let mut list = self.initial_list.clone();
        let mut linearized = Bitset::new(self.operations.len());
        let mut memo: Memo<M::State> = Memo::default();
        let mut stack: Vec<Frame<M::State>> = Vec::new();
        let mut state = self.model.init();
        let mut deepest: Option<Deepest<M::State>> = None;
        let mut known_remaining = self.known_count;
        let mut event = list.next[HEAD];
        let mut steps: u64 = 0;
        while known_remaining > 0 {
            if steps >= search_steps_max {
                return SearchEnd::GaveUp(deepest);
            }
            steps += 1;
            if event == NONE || !self.events[event].is_call {
                // A response arrived before its operation could be placed: undo the last choice.
                if deepest
                    .as_ref()
                    .is_none_or(|d| stack.len() > d.prefix.len())
                {
                    deepest = Some(self.snapshot(&list, &stack, &state, event));
                }
                let Some(frame) = stack.pop() else {
                    return SearchEnd::Failed(deepest.expect("recorded just above"));
                };
                let operation = self.events[frame.call_event].operation;
                linearized.clear(operation);
                if self.events[frame.call_event].return_event != NONE {
                    known_remaining += 1;
                }
                state = frame.state_before;
                list.unlift(&self.events, frame.call_event);
                event = list.next[frame.call_event];
                continue;
            }
            let operation = self.events[event].operation;
            if let Some(state_after) = self.try_step(&state, operation) {
                linearized.set(operation);
                if memo.insert_if_new(&linearized, &state_after) {
                    let state_before = std::mem::replace(&mut state, state_after);
                    stack.push(Frame {
                        call_event: event,
                        state_before,
                    });
                    list.lift(&self.events, event);
                    if self.events[event].return_event != NONE {
                        known_remaining -= 1;
                    }
                    event = list.next[HEAD];
                    continue;
                }
                linearized.clear(operation);
            }
            event = list.next[event];
        }
        SearchEnd::Linearizable
    }

    /// Records where the search stands at a dead end, for the failure message.
    fn snapshot(
        &self,
        list: &EventList,
        stack: &[Frame<M::State>],
        state: &M::State,
        dead_end: usize,
    ) -> Deepest<M::State> {
        let mut candidates = Vec::new();
        let mut event = list.next[HEAD];
        while event != dead_end && event != NONE {
            candidates.push(self.events[event].operation);
            event = list.next[event];
        }
        Deepest {
            prefix: stack
                .iter()
                .map(|frame| self.events[frame.call_event].operation)
                .collect(),
            state: state.clone(),
            candidates,
            blocked_by: (dead_end != NONE).then(|| self.events[dead_end].operation),
        }
    }

    fn violation(&self, partition: &str, deepest: Deepest<M::State>) -> CheckResult {
        let mut text = format!("{partition}: no order of its operations explains every answer.\n");
        self.describe_deepest(&mut text, &deepest);
        self.describe_partition(&mut text);
        CheckResult::NotLinearizable {
            partition: partition.to_string(),
            longest_prefix: deepest
                .prefix
                .iter()
                .map(|&i| self.operations[i].id)
                .collect(),
            unplaced: deepest
                .candidates
                .iter()
                .map(|&i| self.operations[i].id)
                .collect(),
            explanation: text,
        }
    }

    fn gave_up(
        &self,
        partition: &str,
        deepest: Option<Deepest<M::State>>,
        limits: CheckLimits,
    ) -> CheckResult {
        let mut text = format!(
            "{partition}: the search took {} steps (search_steps_max) without deciding; \
             raise the limit or record fewer concurrent or unknown-outcome operations.\n",
            limits.search_steps_max
        );
        if let Some(deepest) = &deepest {
            text.push_str("Furthest point reached before giving up:\n");
            self.describe_deepest(&mut text, deepest);
        }
        self.describe_partition(&mut text);
        CheckResult::GaveUp {
            partition: partition.to_string(),
            search_steps_max: limits.search_steps_max,
            explanation: text,
        }
    }

    fn describe_deepest(&self, text: &mut String, deepest: &Deepest<M::State>) {
        let _ = writeln!(
            text,
            "Longest linearizable prefix ({} of {} operations):",
            deepest.prefix.len(),
            self.operations.len()
        );
        let skipped = deepest
            .prefix
            .len()
            .saturating_sub(EXPLANATION_PREFIX_TAIL_MAX);
        if skipped > 0 {
            let _ = writeln!(
                text,
                "  ... {skipped} earlier ones (EXPLANATION_PREFIX_TAIL_MAX)"
            );
        }
        for (position, &index) in deepest.prefix.iter().enumerate().skip(skipped) {
            let _ = writeln!(text, "  {:>3}. {}", position + 1, self.describe(index));
        }
        let _ = writeln!(text, "State after it: {:?}", deepest.state);
        match deepest.blocked_by {
            Some(index) => {
                let _ = writeln!(
                    text,
                    "Then {} got its answer before it could take effect. Candidates to go next:",
                    self.operations[index].id
                );
            }
            None => text.push_str("Then nothing could go next. Candidates:\n"),
        }
        for &index in &deepest.candidates {
            let why = match self.try_step(&deepest.state, index) {
                None => "its answer is impossible from that state",
                Some(_) => "possible, but no order of the rest follows",
            };
            let _ = writeln!(text, "  - {}: {why}", self.describe(index));
        }
    }

    /// Lists the partition's operations by call time, up to [`EXPLANATION_OPERATIONS_MAX`].
    fn describe_partition(&self, text: &mut String) {
        let mut order: Vec<usize> = (0..self.operations.len()).collect();
        order.sort_by_key(|&i| (self.operations[i].call_time, self.operations[i].id));
        text.push_str("All operations of the partition, by call time:\n");
        for &index in order.iter().take(EXPLANATION_OPERATIONS_MAX) {
            let _ = writeln!(text, "  {}", self.describe(index));
        }
        if order.len() > EXPLANATION_OPERATIONS_MAX {
            let _ = writeln!(
                text,
                "  ... and {} more (EXPLANATION_OPERATIONS_MAX)",
                order.len() - EXPLANATION_OPERATIONS_MAX
            );
        }
    }

    fn describe(&self, index: usize) -> String {
        let operation = self.operations[index];
        match &operation.outcome {
            Outcome::Returned { output, time } => format!(
                "{} {} [{}..{}] {:?} -> {:?}",
                operation.id, operation.client, operation.call_time, time, operation.input, output
            ),
            Outcome::Unknown => format!(
                "{} {} [{}..no answer] {:?}",
                operation.id, operation.client, operation.call_time, operation.input
            ),
        }
    }
}

/// A doubly linked list over a partition's events; event [`HEAD`] is its sentinel. Removed
/// events keep their own links so they can be put back, in reverse order of removal (the
/// search backtracks in stack order, so it always is).
#[derive(Clone, Debug)]
struct EventList {
    next: Vec<usize>,
    previous: Vec<usize>,
}

impl EventList {
    fn unlink(&mut self, event: usize) {
        let (previous, next) = (self.previous[event], self.next[event]);
        self.next[previous] = next;
        if next != NONE {
            self.previous[next] = previous;
        }
    }

    fn relink(&mut self, event: usize) {
        let (previous, next) = (self.previous[event], self.next[event]);
        self.next[previous] = event;
        if next != NONE {
            self.previous[next] = event;
        }
    }

    /// Takes a placed operation's call and return out of the list.
    fn lift(&mut self, events: &[Event], call_event: usize) {
        self.unlink(call_event);
        if events[call_event].return_event != NONE {
            self.unlink(events[call_event].return_event);
        }
    }

    /// Undoes the matching [`Self::lift`]; lifts must be undone in reverse order.
    fn unlift(&mut self, events: &[Event], call_event: usize) {
        if events[call_event].return_event != NONE {
            self.relink(events[call_event].return_event);
        }
        self.relink(call_event);
    }
}

/// Which operations of a partition are placed, one bit each.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bitset {
    words: Box<[u64]>,
}

impl Bitset {
    fn new(bits: usize) -> Self {
        Bitset {
            words: vec![0; bits.div_ceil(64)].into_boxed_slice(),
        }
    }

    fn set(&mut self, bit: usize) {
        self.words[bit / 64] |= 1 << (bit % 64);
    }

    fn clear(&mut self, bit: usize) {
        self.words[bit / 64] &= !(1 << (bit % 64));
    }
}

/// The (placed set, state) pairs already explored, keyed by their 64-bit hash. Pairs are
/// compared in full, so a hash collision costs time, never a wrong verdict.
struct Memo<S> {
    slots: HashMap<u64, MemoSlot<S>, BuildHasherDefault<PrehashedHasher>>,
}

impl<S> Default for Memo<S> {
    fn default() -> Self {
        Memo {
            slots: HashMap::default(),
        }
    }
}

struct MemoSlot<S> {
    linearized: Bitset,
    state: S,
    /// Other pairs with the same hash; almost always empty (and then allocation-free).
    collided: Vec<(Bitset, S)>,
}

impl<S: Clone + Eq + Hash> Memo<S> {
    /// Remembers the pair and returns true, or returns false if it was already explored.
    fn insert_if_new(&mut self, linearized: &Bitset, state: &S) -> bool {
        let mut hasher = WordHasher::default();
        linearized.hash(&mut hasher);
        state.hash(&mut hasher);
        match self.slots.entry(hasher.finish()) {
            MapEntry::Vacant(vacant) => {
                vacant.insert(MemoSlot {
                    linearized: linearized.clone(),
                    state: state.clone(),
                    collided: Vec::new(),
                });
                true
            }
            MapEntry::Occupied(occupied) => {
                let slot = occupied.into_mut();
                let seen = (slot.linearized == *linearized && slot.state == *state)
                    || slot
                        .collided
                        .iter()
                        .any(|(bits, other)| bits == linearized && other == state);
                if !seen {
                    slot.collided.push((linearized.clone(), state.clone()));
                }
                !seen
            }
        }
    }
}

/// A fast, non-cryptographic hasher for the memo: each word is folded in with a rotate, xor
/// and multiply, and the result is mixed once at the end so every bit depends on the input.
#[derive(Default)]
struct WordHasher {
    hash: u64,
}

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8-byte chunk")));
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(tail) ^ ((rest.len() as u64) << 56));
    }

    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        let mut mixed = self.hash;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }
}

/// The memo's map hasher: its keys are already well-mixed hashes, so it passes them through.
#[derive(Default)]
struct PrehashedHasher {
    hash: u64,
}

impl Hasher for PrehashedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.hash = self.hash.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.hash = value;
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A request to a key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Bytes,
    },
    /// Read `key`.
    Get {
        /// The key.
        key: String,
    },
    /// Remove `key`; removing an absent key is not an error.
    Delete {
        /// The key.
        key: String,
    },
    /// Set `key` to `new` only if its current value is `expected` (`None`: absent).
    Cas {
        /// The key.
        key: String,
        /// The value the key must have for the swap; `None` means the key must be absent.
        expected: Option<Bytes>,
        /// The value stored if the swap happens.
        new: Bytes,
    },
}

impl KvInput {
    /// A [`KvInput::Put`].
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        KvInput::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// A [`KvInput::Get`].
    pub fn get(key: impl Into<String>) -> Self {
        KvInput::Get { key: key.into() }
    }

    /// A [`KvInput::Delete`].
    pub fn delete(key: impl Into<String>) -> Self {
        KvInput::Delete { key: key.into() }
    }

    /// A [`KvInput::Cas`]; `expected` is `None` to require the key be absent.
    pub fn cas(key: impl Into<String>, expected: Option<Bytes>, new: impl Into<Bytes>) -> Self {
        KvInput::Cas {
            key: key.into(),
            expected,
            new: new.into(),
        }
    }

    /// The key the request is about.
    pub fn key(&self) -> &str {
        match self {
            KvInput::Put { key, .. }
            | KvInput::Get { key }
            | KvInput::Delete { key }
            | KvInput::Cas { key, .. } => key,
        }
    }
}

/// An answer from a key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// A put or delete was done.
    Ok,
    /// What a get read: the value, or `None` if the key was absent.
    Value(Option<Bytes>),
    /// Whether a compare-and-swap swapped.
    Swapped(bool),
}

impl KvOutput {
    /// A get that found `value`.
    pub fn found(value: impl Into<Bytes>) -> Self {
        KvOutput::Value(Some(value.into()))
    }

    /// A get that found the key absent.
    pub fn absent() -> Self {
        KvOutput::Value(None)
    }
}

/// A linearizable key-value store: [`KvInput`] in, [`KvOutput`] out, partitioned by key.
///
/// The state is one key's value (`None`: absent), which is all a partition needs since
/// [`KvModel::partition`] puts each key in its own partition and [`check`] always partitions.
/// An answer of the wrong kind (a get answered with [`KvOutput::Ok`]) is never legal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvModel;

impl Model for KvModel {
    type State = Option<Bytes>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Self::State {
        None
    }

    fn step(&self, state: &Self::State, input: &KvInput, output: &KvOutput) -> Option<Self::State> {
        match (input, output) {
            (KvInput::Put { value, .. }, KvOutput::Ok) => Some(Some(value.clone())),
            (KvInput::Delete { .. }, KvOutput::Ok) => Some(None),
            (KvInput::Get { .. }, KvOutput::Value(read)) => (read == state).then(|| state.clone()),
            (KvInput::Cas { expected, new, .. }, KvOutput::Swapped(true)) => {
                (expected == state).then(|| Some(new.clone()))
            }
            (KvInput::Cas { expected, .. }, KvOutput::Swapped(false)) => {
                (expected != state).then(|| state.clone())
            }
            _ => None,
        }
    }

    fn step_unknown(&self, state: &Self::State, input: &KvInput) -> Option<Self::State> {
        Some(match input {
            KvInput::Put { value, .. } => Some(value.clone()),
            KvInput::Delete { .. } => None,
            KvInput::Get { .. } => state.clone(),
            KvInput::Cas { expected, new, .. } if expected == state => Some(new.clone()),
            KvInput::Cas { .. } => state.clone(),
        })
    }

    fn is_read_only(&self, input: &KvInput) -> bool {
        matches!(input, KvInput::Get { .. })
    }

    /// One partition per key, in key order, described as `key "name"`.
    fn partition(&self, operations: &[Operation<KvInput, KvOutput>]) -> Vec<Partition> {
        let mut by_key: BTreeMap<&str, Vec<OpId>> = BTreeMap::new();
        for operation in operations {
            by_key
                .entry(operation.input.key())
                .or_default()
                .push(operation.id);
        }
        by_key
            .into_iter()
            .map(|(key, operations)| Partition {
                description: format!("key {key:?}"),
                operations,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type KvHistory = History<KvInput, KvOutput>;

    // Short names so each recorded operation fits on one line, like a transcript.
    const OK: KvOutput = KvOutput::Ok;
    const SWAPPED: KvOutput = KvOutput::Swapped(true);
    const NOT_SWAPPED: KvOutput = KvOutput::Swapped(false);

    fn put(key: impl Into<String>, value: impl Into<Bytes>) -> KvInput {
        KvInput::put(key, value)
    }

    fn get(key: impl Into<String>) -> KvInput {
        KvInput::get(key)
    }

    fn delete(key: impl Into<String>) -> KvInput {
        KvInput::delete(key)
    }

    fn cas(key: impl Into<String>, expected: Option<Bytes>, new: impl Into<Bytes>) -> KvInput {
        KvInput::cas(key, expected, new)
    }

    fn found(value: impl Into<Bytes>) -> KvOutput {
        KvOutput::found(value)
    }

    fn absent() -> KvOutput {
        KvOutput::absent()
    }

    fn check_kv(history: &KvHistory) -> CheckResult {
        check(&KvModel, history, CheckLimits::default())
    }

    /// Records a completed operation in one go.
    fn done(
        history: &mut KvHistory,
        client: u64,
        input: KvInput,
        output: KvOutput,
        call: u64,
        ret: u64,
    ) -> OpId {
        let op = history.call(client, input, call);
        history.ret(op, output, ret);
        op
    }

    fn assert_accepted(history: &KvHistory) {
        let result = check_kv(history);
        assert!(
            result.is_linearizable(),
            "expected linearizable, got {result}"
        );
    }

    /// Asserts the history is rejected on `key` and returns the explanation.
    fn assert_rejected(history: &KvHistory, key: &str) -> String {
        match check_kv(history) {
            CheckResult::NotLinearizable {
                partition,
                explanation,
                ..
            } => {
                assert_eq!(partition, format!("key {key:?}"), "{explanation}");
                explanation
            }
            other => panic!("expected a violation on key {key:?}, got {other}"),
        }
    }

    /// A single integer register, to show the checker is not tied to [`KvModel`].
    struct RegisterModel;

    #[derive(Clone, Debug)]
    enum RegisterInput {
        Write(u64),
        Read,
    }

    #[derive(Clone, Debug)]
    enum RegisterOutput {
        Written,
        Read(u64),
    }

    impl Model for RegisterModel {
        type State = u64;
        type Input = RegisterInput;
        type Output = RegisterOutput;

        fn init(&self) -> u64 {
            0
        }

        fn step(&self, state: &u64, input: &RegisterInput, output: &RegisterOutput) -> Option<u64> {
            match (input, output) {
                (RegisterInput::Write(value), RegisterOutput::Written) => Some(*value),
                (RegisterInput::Read, RegisterOutput::Read(value)) => {
                    (value == state).then_some(*state)
                }
                _ => None,
            }
        }

        fn step_unknown(&self, state: &u64, input: &RegisterInput) -> Option<u64> {
            match input {
                RegisterInput::Write(value) => Some(*value),
                RegisterInput::Read => Some(*state),
            }
        }
    }

    #[test]
    fn sequential_history_is_accepted() {
        // Proves the simplest case: one client, no overlap, every read sees the last write.
        let mut history = KvHistory::new();
        done(&mut history, 1, get("x"), absent(), 0, 1);
        done(&mut history, 1, put("x", "1"), OK, 2, 3);
        done(&mut history, 1, get("x"), found("1"), 4, 5);
        done(&mut history, 1, put("x", "2"), OK, 6, 7);
        done(&mut history, 1, get("x"), found("2"), 8, 9);
        assert_accepted(&history);
        assert!(
            check_kv(&KvHistory::new()).is_linearizable(),
            "an empty history"
        );
    }

    #[test]
    fn overlapping_writes_may_take_effect_in_either_order() {
        // Proves concurrency is honoured: two overlapping puts, then a read that may see
        // either one, is accepted whichever it saw; a read during the writes may see nothing.
        for last in ["1", "2"] {
            let mut history = KvHistory::new();
            done(&mut history, 1, put("x", "1"), OK, 0, 10);
            done(&mut history, 2, put("x", "2"), OK, 5, 15);
            done(&mut history, 3, get("x"), absent(), 6, 7);
            done(&mut history, 3, get("x"), found(last), 20, 21);
            assert_accepted(&history);
        }
    }

    #[test]
    fn read_concurrent_with_a_write_may_see_old_or_new() {
        // Proves a read overlapping a put may return either side of it, and that once one
        // read saw the new value, a later read may not go back.
        for seen in [absent(), found("1")] {
            let mut history = KvHistory::new();
            done(&mut history, 1, put("x", "1"), OK, 0, 10);
            done(&mut history, 2, get("x"), seen, 2, 8);
            assert_accepted(&history);
        }
        let mut history = KvHistory::new();
        done(&mut history, 1, put("x", "1"), OK, 0, 10);
        done(&mut history, 2, get("x"), found("1"), 2, 4);
        done(&mut history, 3, get("x"), absent(), 5, 6);
        assert_rejected(&history, "x");
    }

    #[test]
    fn stale_read_after_a_completed_write_is_rejected() {
        // Proves real-time order is enforced: the put returned before the get was called.
        let mut history = KvHistory::new();
        done(&mut history, 1, put("x", "1"), OK, 0, 5);
        done(&mut history, 1, put("x", "2"), OK, 6, 10);
        let stale = done(&mut history, 2, get("x"), found("1"), 11, 12);
        let explanation = assert_rejected(&history, "x");
        assert!(explanation.contains(&stale.to_string()), "{explanation}");
        match check_kv(&history) {
            CheckResult::NotLinearizable {
                longest_prefix,
                unplaced,
                ..
            } => {
                assert_eq!(longest_prefix, vec![OpId(0), OpId(1)]);
                assert_eq!(unplaced, vec![stale]);
            }
            other => panic!("expected a violation, got {other}"),
        }
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        let mut history = KvHistory::new();
        done(&mut history, 1, put("x", "1"), OK, 0, 5);
        done(&mut history, 2, get("x"), found("ghost"), 1, 6);
        let explanation = assert_rejected(&history, "x");
        assert!(explanation.contains("ghost"), "{explanation}");
    }

    #[test]
    fn readers_disagreeing_on_the_order_of_writes_are_rejected() {
        // The classic non-linearizable register history: while two writes are in flight,
        // client 3 reads 1 then 2 and client 4 reads 2 then 1. Each reader alone is fine;
        // together no single order of the writes explains both.
        type RegisterHistory = History<RegisterInput, RegisterOutput>;
        let write = |history: &mut RegisterHistory, client: u64, value, call, ret| {
            let op = history.call(client, RegisterInput::Write(value), call);
            history.ret(op, RegisterOutput::Written, ret);
        };
        let read = |history: &mut RegisterHistory, client: u64, value, call, ret| {
            let op = history.call(client, RegisterInput::Read, call);
            history.ret(op, RegisterOutput::Read(value), ret);
        };
        let mut history = RegisterHistory::new();
        write(&mut history, 1, 1, 0, 100);
        write(&mut history, 2, 2, 0, 100);
        read(&mut history, 3, 1, 10, 20);
        read(&mut history, 3, 2, 30, 40);
        let mut both_readers = history.clone();
        let limits = CheckLimits::default();
        assert!(check(&RegisterModel, &history, limits).is_linearizable());

        read(&mut both_readers, 4, 2, 10, 20);
        read(&mut both_readers, 4, 1, 30, 40);
        match check(&RegisterModel, &both_readers, limits) {
            CheckResult::NotLinearizable { partition, .. } => {
                assert_eq!(partition, "the whole history")
            }
            other => panic!("expected a violation, got {other}"),
        }
    }

    #[test]
    fn unknown_write_observed_later_is_accepted() {
        // Proves a write whose client timed out may still have taken effect, even long after.
        let mut history = KvHistory::new();
        history.call(1, put("x", "1"), 0);
        done(&mut history, 2, get("x"), absent(), 10, 11);
        done(&mut history, 2, get("x"), found("1"), 50, 51);
        assert_accepted(&history);
        // But once observed, it cannot be undone by having "not happened".
        done(&mut history, 2, get("x"), absent(), 60, 61);
        assert_rejected(&history, "x");
    }

    #[test]
    fn unknown_write_never_observed_is_accepted() {
        // Proves an unknown-outcome write may never take effect: the reads all see "1".
        let mut history = KvHistory::new();
        done(&mut history, 1, put("x", "1"), OK, 0, 1);
        history.call(2, put("x", "2"), 2);
        history.call(2, get("x"), 3); // an unknown read: dropped, imposes nothing
        done(&mut history, 3, get("x"), found("1"), 10, 11);
        done(&mut history, 3, get("x"), found("1"), 20, 21);
        assert_accepted(&history);
    }

    #[test]
    fn unknown_write_observed_before_its_call_is_rejected() {
        // Proves an unknown outcome still respects its call time.
        let mut history = KvHistory::new();
        done(&mut history, 1, get("x"), found("1"), 0, 5);
        history.call(2, put("x", "1"), 6);
        assert_rejected(&history, "x");
    }

    #[test]
    fn compare_and_swap_succeeds_only_on_the_expected_value() {
        let one = || Some(Bytes::from("1"));
        // Accepted: a swap from absent, then a failed swap expecting absent, then a swap from 1.
        let mut history = KvHistory::new();
        done(&mut history, 1, cas("x", None, "1"), SWAPPED, 0, 1);
        done(&mut history, 1, cas("x", None, "9"), NOT_SWAPPED, 2, 3);
        done(&mut history, 1, cas("x", one(), "2"), SWAPPED, 4, 5);
        done(&mut history, 1, get("x"), found("2"), 6, 7);
        assert_accepted(&history);

        // Rejected: a swap reported done although the value did not match.
        let mut history = KvHistory::new();
        done(&mut history, 1, put("x", "0"), OK, 0, 1);
        done(&mut history, 1, cas("x", one(), "2"), SWAPPED, 2, 3);
        assert_rejected(&history, "x");

        // Rejected: a swap reported failed although the value matched.
        let mut history = KvHistory::new();
        done(&mut history, 1, put("x", "1"), OK, 0, 1);
        done(&mut history, 1, cas("x", one(), "2"), NOT_SWAPPED, 2, 3);
        assert_rejected(&history, "x");

        // Rejected: a failed swap must not change the value.
        let mut history = KvHistory::new();
        done(&mut history, 1, cas("x", one(), "2"), NOT_SWAPPED, 0, 1);
        done(&mut history, 1, get("x"), found("2"), 2, 3);
        assert_rejected(&history, "x");
    }

    #[test]
    fn concurrent_compare_and_swaps_pick_one_winner() {
        // Two clients race a CAS from absent: exactly one may win.
        let mut history = KvHistory::new();
        done(&mut history, 1, cas("x", None, "a"), SWAPPED, 0, 10);
        done(&mut history, 2, cas("x", None, "b"), NOT_SWAPPED, 1, 9);
        done(&mut history, 3, get("x"), found("a"), 11, 12);
        assert_accepted(&history);
        let mut history = KvHistory::new();
        done(&mut history, 1, cas("x", None, "a"), SWAPPED, 0, 10);
        done(&mut history, 2, cas("x", None, "b"), SWAPPED, 1, 9);
        assert_rejected(&history, "x");
    }

    #[test]
    fn delete_makes_the_key_absent() {
        let mut history = KvHistory::new();
        done(&mut history, 1, put("x", "1"), OK, 0, 1);
        done(&mut history, 1, delete("x"), OK, 2, 3);
        done(&mut history, 2, get("x"), absent(), 4, 5);
        done(&mut history, 2, delete("x"), OK, 6, 7); // deleting absent is fine
        assert_accepted(&history);
        done(&mut history, 2, get("x"), found("1"), 8, 9);
        assert_rejected(&history, "x");
    }

    #[test]
    fn keys_are_checked_independently() {
        // Proves partitioning: each key alone is linearizable, so the whole is, even though
        // the operations interleave in time; and a violation names only the guilty key.
        let mut history = KvHistory::new();
        done(&mut history, 1, put("a", "1"), OK, 0, 10);
        done(&mut history, 2, put("b", "1"), OK, 0, 10);
        done(&mut history, 3, get("b"), absent(), 1, 2);
        done(&mut history, 3, get("a"), found("1"), 3, 4);
        done(&mut history, 3, get("b"), found("1"), 11, 12);
        assert_accepted(&history);
        assert_eq!(KvModel.partition(history.operations()).len(), 2);

        let bad = done(&mut history, 3, get("b"), absent(), 13, 14);
        let explanation = assert_rejected(&history, "b");
        assert!(explanation.contains(&bad.to_string()), "{explanation}");
        assert!(
            !explanation.contains("key: \"a\""),
            "key a leaked in: {explanation}"
        );
    }

    #[test]
    fn call_and_return_at_the_same_time_count_as_concurrent() {
        // Proves the documented tie rule: with coarse ticks, a get called in the tick the put
        // returned may still be ordered before it.
        let mut history = KvHistory::new();
        done(&mut history, 1, put("x", "1"), OK, 0, 5);
        done(&mut history, 2, get("x"), absent(), 5, 6);
        assert_accepted(&history);
    }

    #[test]
    fn failure_explanation_names_the_key_and_the_operations() {
        // Proves the message a failing simulator seed prints is enough to see the bug.
        let mut history = KvHistory::new();
        done(&mut history, 7, put("user:1", "alice"), OK, 100, 110);
        done(&mut history, 8, get("user:1"), absent(), 120, 130);
        let message = check_kv(&history).to_string();
        for needle in [
            "NOT linearizable",
            "key \"user:1\"",
            "op#0 client 7 [100..110]",
            "op#1 client 8 [120..130]",
            "Longest linearizable prefix (1 of 2 operations)",
            "its answer is impossible from that state",
            "State after it: Some(b\"alice\")",
        ] {
            assert!(
                message.contains(needle),
                "missing {needle:?} in:\n{message}"
            );
        }
    }

    /// Ten concurrent puts, then a read of a value none wrote: proving it impossible means
    /// trying the puts' orders, which the memo cuts to subsets times states but not below.
    fn pathological_history() -> KvHistory {
        let mut history = KvHistory::new();
        for client in 0..10u64 {
            done(
                &mut history,
                client,
                put("x", format!("v{client}")),
                OK,
                0,
                100,
            );
        }
        done(&mut history, 99, get("x"), found("never"), 200, 201);
        history
    }

    #[test]
    fn tiny_step_budget_gives_up_instead_of_passing() {
        let history = pathological_history();
        let tiny = CheckLimits {
            search_steps_max: 50,
        };
        match check(&KvModel, &history, tiny) {
            CheckResult::GaveUp {
                partition,
                search_steps_max,
                explanation,
            } => {
                assert_eq!(partition, "key \"x\"");
                assert_eq!(search_steps_max, 50);
                assert!(explanation.contains("search_steps_max"), "{explanation}");
            }
            other => panic!("expected GaveUp, got {other}"),
        }
        assert!(!check(&KvModel, &history, tiny).is_linearizable());
        // With the default budget the same history is decided: it was the budget that ran out.
        assert_rejected(&history, "x");
    }

    #[test]
    fn a_partition_that_gives_up_does_not_hide_a_violation_elsewhere() {
        let mut history = pathological_history();
        done(&mut history, 1, put("y", "1"), OK, 0, 1);
        done(&mut history, 1, get("y"), absent(), 2, 3);
        let tiny = CheckLimits {
            search_steps_max: 50,
        };
        match check(&KvModel, &history, tiny) {
            CheckResult::NotLinearizable { partition, .. } => assert_eq!(partition, "key \"y\""),
            other => panic!("expected the violation on y, got {other}"),
        }
    }

    #[test]
    #[should_panic(expected = "op#0 already returned")]
    fn returning_twice_is_a_recording_bug() {
        let mut history = KvHistory::new();
        let op = history.call(1, get("x"), 0);
        history.ret(op, absent(), 1);
        history.ret(op, absent(), 2);
    }

    #[test]
    #[should_panic(expected = "before its call")]
    fn returning_before_the_call_is_a_recording_bug() {
        let mut history = KvHistory::new();
        let op = history.call(1, get("x"), 10);
        history.ret(op, absent(), 9);
    }

    /// SplitMix64: a tiny seeded generator, so random histories replay exactly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }

        fn percent(&mut self, chance: u64) -> bool {
            self.below(100) < chance
        }
    }

    /// A client's request in flight in the generator.
    struct InFlight {
        op: OpId,
        input: KvInput,
        /// The output, once the request has taken effect on the reference store.
        effect: Option<KvOutput>,
    }

    /// A history that is linearizable by construction: each operation takes effect on a
    /// reference map at a random tick between its call and its return, so the order of those
    /// ticks is a witness. Some clients give up waiting (unknown outcome), before or after the
    /// effect. Every written value is unique, so a read identifies the write it saw.
    fn generate(seed: u64, operations_count: usize, keys: u64, clients: u64) -> KvHistory {
        let mut rng = Rng(seed);
        let mut store: BTreeMap<String, Bytes> = BTreeMap::new();
        let mut history = KvHistory::new();
        let mut in_flight: Vec<Option<InFlight>> = (0..clients).map(|_| None).collect();
        let mut time = 0;
        while history.len() < operations_count || in_flight.iter().any(Option::is_some) {
            time += 1 + rng.below(3);
            let client = rng.below(clients);
            let slot = &mut in_flight[client as usize];
            match slot.take() {
                None if history.len() < operations_count => {
                    let input = random_input(&mut rng, &store, keys, history.len());
                    let op = history.call(client, input.clone(), time);
                    *slot = Some(InFlight {
                        op,
                        input,
                        effect: None,
                    });
                }
                None => {}
                Some(request) if rng.percent(2) => drop(request), // timed out: maybe never applied
                Some(InFlight {
                    op,
                    input,
                    effect: None,
                }) => {
                    let effect = Some(apply(&mut store, &input));
                    *slot = Some(InFlight { op, input, effect });
                }
                Some(InFlight {
                    op,
                    effect: Some(output),
                    ..
                }) => history.ret(op, output, time),
            }
        }
        history
    }

    fn random_input(
        rng: &mut Rng,
        store: &BTreeMap<String, Bytes>,
        keys: u64,
        serial: usize,
    ) -> KvInput {
        let key = format!("k{}", rng.below(keys));
        let fresh = Bytes::from(format!("v{serial}"));
        match rng.below(10) {
            0..=3 => get(key),
            4..=6 => put(key, fresh),
            7 => delete(key),
            // Half the swaps expect the current value, so some succeed.
            _ if rng.percent(50) => cas(key.clone(), store.get(&key).cloned(), fresh),
            _ => cas(key, Some(Bytes::from("v-stale")), fresh),
        }
    }

    /// The reference store: what a correct server answers.
    fn apply(store: &mut BTreeMap<String, Bytes>, input: &KvInput) -> KvOutput {
        match input {
            KvInput::Put { key, value } => {
                store.insert(key.clone(), value.clone());
                KvOutput::Ok
            }
            KvInput::Get { key } => KvOutput::Value(store.get(key).cloned()),
            KvInput::Delete { key } => {
                store.remove(key);
                KvOutput::Ok
            }
            KvInput::Cas { key, expected, new } => {
                let swapped = store.get(key) == expected.as_ref();
                if swapped {
                    store.insert(key.clone(), new.clone());
                }
                KvOutput::Swapped(swapped)
            }
        }
    }

    fn returned(operation: &Operation<KvInput, KvOutput>) -> Option<(&KvOutput, u64)> {
        match &operation.outcome {
            Outcome::Returned { output, time } => Some((output, *time)),
            Outcome::Unknown => None,
        }
    }

    /// Makes one get return a value that was certainly overwritten before it was called: a
    /// put P of value V returned before an unconditional write W to the key was called, and W
    /// returned before the get was called. Values are unique, so nothing brings V back.
    /// Returns the corrupted get's key, or `None` if the history has no such triple.
    fn corrupt_one_read(history: &mut KvHistory) -> Option<String> {
        let operations = history.operations().to_vec();
        let overwrites = |p: &Operation<KvInput, KvOutput>, w: &Operation<KvInput, KvOutput>| {
            let unconditional = matches!(w.input, KvInput::Put { .. } | KvInput::Delete { .. });
            let p_returned = returned(p).map(|(_, time)| time);
            unconditional
                && w.input.key() == p.input.key()
                && p_returned.is_some_and(|t| t < w.call_time)
        };
        for get in operations.iter().rev() {
            let (KvInput::Get { key }, Some((KvOutput::Value(seen), _))) =
                (&get.input, returned(get))
            else {
                continue;
            };
            for put in &operations {
                let KvInput::Put { value, .. } = &put.input else {
                    continue;
                };
                if put.input.key() != key || seen.as_ref() == Some(value) {
                    continue;
                }
                let overwritten_before_get = operations.iter().any(|w| {
                    overwrites(put, w) && returned(w).is_some_and(|(_, time)| time < get.call_time)
                });
                if overwritten_before_get {
                    let stale = KvOutput::Value(Some(value.clone()));
                    history.operations[get.id.0].outcome = Outcome::Returned {
                        output: stale,
                        time: returned(get)?.1,
                    };
                    return Some(key.clone());
                }
            }
        }
        None
    }

    /// How many operations were called while an earlier one was still in flight.
    fn overlaps(history: &KvHistory) -> usize {
        let mut in_flight_until = 0;
        let mut count = 0;
        for operation in history.operations() {
            let end = returned(operation).map_or(operation.call_time, |(_, time)| time);
            count += usize::from(operation.call_time <= in_flight_until);
            in_flight_until = in_flight_until.max(end);
        }
        count
    }

    #[test]
    fn random_valid_histories_are_accepted() {
        // Proves no false alarms on realistic histories: 300 operations over 5 keys from 5
        // clients with overlaps and timeouts, across many seeds.
        for seed in 0..200 {
            let history = generate(seed, 300, 5, 5);
            let unknown = history
                .operations()
                .iter()
                .filter(|op| returned(op).is_none())
                .count();
            assert!(unknown > 0, "seed {seed}: no unknown outcomes generated");
            assert!(overlaps(&history) > 30, "seed {seed}: too few overlaps");
            let result = check_kv(&history);
            assert!(result.is_linearizable(), "seed {seed}: {result}");
        }
    }

    #[test]
    fn random_history_with_one_stale_read_is_rejected() {
        // Proves the random test can fail: the same histories with one read made stale.
        for seed in 0..50 {
            let mut history = generate(seed, 300, 5, 5);
            let key = corrupt_one_read(&mut history)
                .expect("a 300-operation history has a stale candidate");
            let explanation = assert_rejected(&history, &key);
            assert!(
                explanation.contains("Longest linearizable prefix"),
                "{explanation}"
            );
        }
    }

    #[test]
    fn large_single_key_history_stays_fast() {
        // All 300 operations on one key and 5 clients, so one partition holds everything and
        // the bitset spans several words; still decided well within the default budget.
        let history = generate(7, 300, 1, 5);
        assert_accepted(&history);
        let mut corrupted = history.clone();
        let key = corrupt_one_read(&mut corrupted).expect("a stale candidate");
        assert_rejected(&corrupted, &key);
    }
}
