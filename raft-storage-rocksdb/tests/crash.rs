//! Crash and fault tests on real processes.
//!
//! `acknowledged_writes_survive_sigkill` runs this test binary again as a child process
//! (`crash_child`) that writes to a store from several concurrent tasks: appends, write groups
//! that truncate a suffix and raise the term, hard-state saves and purges. Before each call it
//! prints the call (`issue <seq> <call>`), and after the call returns `Ok` it prints
//! `ack <seq>`. The parent SIGKILLs the child at a seeded random moment, reopens the store and
//! checks that it equals the result of replaying the first `m` issued calls for some `m` that
//! includes every acknowledged call: every acknowledged append is present, in order, with no
//! holes, the hard state is never behind what was acknowledged, and nothing else appeared.
//! Then the next cycle's child resumes on the same store.
//!
//! `failed_writes_stop_the_store` runs a child under a file-size limit (`RLIMIT_FSIZE`), so the
//! kernel fails a write-ahead-log write with `EFBIG`: the store must report the IO error, refuse
//! every later write with `Stopped`, and a reopened store must hold every acknowledged entry.
//!
//! Environment: `CRASH_CYCLES` (default 50) and `CRASH_SEED` (default fixed) choose the loop.

use raft_core::{
    Entry, EntryPayload, HardState, LogIndex, LogStore, LogWrite, NodeId, StorageError, Term,
};
use raft_storage_rocksdb::{RocksLogStore, RocksLogStoreOptions};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHILD_DIRECTORY_ENV: &str = "RAFT_STORAGE_CRASH_CHILD_DIRECTORY";
const CHILD_SEED_ENV: &str = "RAFT_STORAGE_CRASH_CHILD_SEED";
const FAIL_STOP_DIRECTORY_ENV: &str = "RAFT_STORAGE_FAIL_STOP_CHILD_DIRECTORY";
/// Concurrent writer tasks in the crash child.
const CHILD_WRITERS: usize = 4;
/// The crash child stops by itself after this long (the parent kills it much sooner).
const CHILD_RUN_SECONDS_MAX: u64 = 20;
/// How long the parent waits for a child to report that it opened the store.
const CHILD_READY_SECONDS_MAX: u64 = 20;
/// Latest kill, in milliseconds after the child opened the store.
const KILL_AFTER_READY_MS_MAX: u64 = 60;
/// Payload bytes of every entry the children write.
const PAYLOAD_BYTES: usize = 256;
/// The file-size limit of the fail-stop child.
const FAIL_STOP_FILE_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// A deterministic random source (SplitMix64): one seed replays a whole run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// The entry a child writes at `index` in `term`; the checker rebuilds it to compare.
fn entry(index: u64, term: u64) -> Entry {
    let mut payload = format!("{index}:{term}:").into_bytes();
    let fill = ((index * 31 + term) % 251) as u8;
    payload.resize(PAYLOAD_BYTES, fill);
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Command(payload.into()),
    }
}

fn entries(first: u64, count: u64, term: u64) -> Vec<Entry> {
    (first..first + count)
        .map(|index| entry(index, term))
        .collect()
}

fn hard_state(term: u64, commit: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: Some(NodeId(1)),
        commit: LogIndex(commit),
    }
}

/// One call the crash child makes; printed and parsed as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Append {
        first: u64,
        count: u64,
        term: u64,
    },
    /// Truncate from `from`, append `count` entries of `term` there, save (`term`, commit).
    Write {
        from: u64,
        count: u64,
        term: u64,
        commit: u64,
    },
    HardState {
        term: u64,
        commit: u64,
    },
    Purge {
        up_to: u64,
    },
}

impl Call {
    fn to_line(self) -> String {
        match self {
            Call::Append { first, count, term } => format!("append {first} {count} {term}"),
            Call::Write {
                from,
                count,
                term,
                commit,
            } => {
                format!("write {from} {count} {term} {commit}")
            }
            Call::HardState { term, commit } => format!("hard_state {term} {commit}"),
            Call::Purge { up_to } => format!("purge {up_to}"),
        }
    }

    fn parse(words: &[&str]) -> Option<Call> {
        let number = |at: usize| words.get(at)?.parse::<u64>().ok();
        Some(match *words.first()? {
            "append" => Call::Append {
                first: number(1)?,
                count: number(2)?,
                term: number(3)?,
            },
            "write" => Call::Write {
                from: number(1)?,
                count: number(2)?,
                term: number(3)?,
                commit: number(4)?,
            },
            "hard_state" => Call::HardState {
                term: number(1)?,
                commit: number(2)?,
            },
            "purge" => Call::Purge { up_to: number(1)? },
            _ => return None,
        })
    }
}

/// What a store holds, as the checker models it (entries by index → term).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Model {
    first: u64,
    last: u64,
    terms: BTreeMap<u64, u64>,
    hard_state: HardState,
}

impl Model {
    fn empty() -> Model {
        Model {
            first: 1,
            last: 0,
            terms: BTreeMap::new(),
            hard_state: HardState::default(),
        }
    }

    fn apply(&mut self, call: Call) {
        match call {
            Call::Append { first, count, term } => {
                assert_eq!(first, self.last + 1, "the child appended out of order");
                self.terms
                    .extend((first..first + count).map(|index| (index, term)));
                self.last = first + count - 1;
            }
            Call::Write {
                from,
                count,
                term,
                commit,
            } => {
                self.terms.retain(|index, _| *index < from);
                self.terms
                    .extend((from..from + count).map(|index| (index, term)));
                self.last = from + count - 1;
                self.hard_state = hard_state(term, commit);
            }
            Call::HardState { term, commit } => self.hard_state = hard_state(term, commit),
            Call::Purge { up_to } => {
                if up_to >= self.first {
                    self.terms.retain(|index, _| *index > up_to);
                    self.first = up_to + 1;
                    self.last = self.last.max(up_to);
                }
            }
        }
    }
}

/// Reads a whole store and checks every entry is the one the children wrote at its index.
async fn read_model(directory: &Path) -> Result<Model, String> {
    let store = RocksLogStore::open(directory, RocksLogStoreOptions::default())
        .map_err(|error| format!("reopening failed: {error}"))?;
    let bounds = store.bounds().await.map_err(|error| error.to_string())?;
    let hard_state = store
        .load_hard_state()
        .await
        .map_err(|error| error.to_string())?;
    let held = store
        .entries(bounds.first..bounds.last.next())
        .await
        .map_err(|error| format!("reading every entry failed: {error}"))?;
    let mut terms = BTreeMap::new();
    for (entry_read, index) in held.iter().zip(bounds.first.0..) {
        if *entry_read != entry(index, entry_read.term.0) {
            return Err(format!(
                "entry {index} is not what was written: {entry_read:?}"
            ));
        }
        terms.insert(index, entry_read.term.0);
    }
    Ok(Model {
        first: bounds.first.0,
        last: bounds.last.0,
        terms,
        hard_state,
    })
}

/// The crash child's plan: the pending state, from which every next call is chosen.
struct Plan {
    sequence: u64,
    model: Model,
    term: u64,
    rng: Rng,
}

impl Plan {
    fn next_call(&mut self) -> Call {
        let model = &self.model;
        let (last, commit) = (model.last, model.hard_state.commit.0);
        let roll = self.rng.below(100);
        let purge_to = commit.saturating_sub(50);
        if roll < 7 && last > commit {
            let back = 1 + self.rng.below((last - commit).min(8));
            self.term += 1;
            let count = 1 + self.rng.below(8);
            return Call::Write {
                from: last + 1 - back,
                count,
                term: self.term,
                commit,
            };
        }
        if roll < 15 {
            let new_commit = commit.max(last.saturating_sub(self.rng.below(20)));
            return Call::HardState {
                term: self.term,
                commit: new_commit,
            };
        }
        if roll < 20 && purge_to >= model.first {
            return Call::Purge { up_to: purge_to };
        }
        Call::Append {
            first: last + 1,
            count: 1 + self.rng.below(32),
            term: self.term,
        }
    }
}

/// The crash child: never returns normally before it is killed (it stops after
/// `CHILD_RUN_SECONDS_MAX` in case the parent is gone).
#[test]
#[ignore = "a child process of acknowledged_writes_survive_sigkill"]
fn crash_child() {
    let Ok(directory) = std::env::var(CHILD_DIRECTORY_ENV) else {
        eprintln!("crash_child runs only as the child of acknowledged_writes_survive_sigkill");
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV)
        .expect("seed")
        .parse()
        .expect("a number");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(crash_child_workload(Path::new(&directory), seed));
}

async fn crash_child_workload(directory: &Path, seed: u64) {
    let model = read_model(directory)
        .await
        .expect("the store the child resumes on");
    let store =
        Arc::new(RocksLogStore::open(directory, RocksLogStoreOptions::default()).expect("open"));
    let last_term = model.terms.values().last().copied().unwrap_or(0);
    let term = model.hard_state.term.0.max(last_term).max(1);
    let plan = Arc::new(Mutex::new(Plan {
        sequence: 0,
        model,
        term,
        rng: Rng(seed),
    }));
    println!("ready");
    let deadline = Instant::now() + Duration::from_secs(CHILD_RUN_SECONDS_MAX);
    let mut writers = Vec::new();
    for _ in 0..CHILD_WRITERS {
        let (store, plan) = (Arc::clone(&store), Arc::clone(&plan));
        writers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let (sequence, write, purge);
                let call_future = {
                    // Printing and calling under the lock: the issue order is the call order.
                    let mut plan = plan.lock().unwrap();
                    let call = plan.next_call();
                    sequence = plan.sequence;
                    plan.sequence += 1;
                    plan.model.apply(call);
                    println!("issue {sequence} {}", call.to_line());
                    (write, purge) = call_arguments(call);
                    match purge {
                        Some(up_to) => store.purge(up_to),
                        None => store.write(&write),
                    }
                };
                call_future
                    .await
                    .unwrap_or_else(|error| panic!("call {sequence}: {error}"));
                println!("ack {sequence}");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
}

/// The store call for `call`: a write group, or a purge.
fn call_arguments(call: Call) -> (LogWrite, Option<LogIndex>) {
    let write = match call {
        Call::Append { first, count, term } => LogWrite {
            entries: entries(first, count, term),
            ..LogWrite::default()
        },
        Call::Write {
            from,
            count,
            term,
            commit,
        } => LogWrite {
            truncate_from: Some(LogIndex(from)),
            entries: entries(from, count, term),
            hard_state: Some(hard_state(term, commit)),
        },
        Call::HardState { term, commit } => LogWrite {
            hard_state: Some(hard_state(term, commit)),
            ..LogWrite::default()
        },
        Call::Purge { up_to } => return (LogWrite::default(), Some(LogIndex(up_to))),
    };
    (write, None)
}

/// What one child printed.
#[derive(Default)]
struct Transcript {
    issued: Vec<Call>,
    acknowledged_max: Option<u64>,
    acknowledged: u64,
}

fn spawn_child(test: &str, environment: &[(&str, String)]) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            // Quiet: no "test <name> ... " prefix on the child's first line.
            "-q",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in environment {
        command.env(name, value);
    }
    command.spawn().expect("spawning the child")
}

/// Proves every acknowledged write survives SIGKILL at random moments (see the file docs).
#[test]
fn acknowledged_writes_survive_sigkill() {
    let cycles: u64 = std::env::var("CRASH_CYCLES").map_or(50, |v| v.parse().expect("a number"));
    let seed: u64 =
        std::env::var("CRASH_SEED").map_or(0x5EED_CAFE, |v| v.parse().expect("a number"));
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = Rng(seed);
    let mut model = Model::empty();
    let started = Instant::now();
    let (mut acknowledged_total, mut issued_total, mut lost_unacknowledged) = (0u64, 0u64, 0u64);
    for cycle in 1..=cycles {
        let replay = format!("cycle {cycle}; replay with CRASH_SEED={seed} CRASH_CYCLES={cycles}");
        let child_seed = rng.next();
        // One cycle in eight kills the child without waiting: often while it opens the store.
        let early_kill = rng.below(8) == 0;
        let kill_delay = Duration::from_millis(rng.below(KILL_AFTER_READY_MS_MAX + 1));
        let mut child = spawn_child(
            "crash_child",
            &[
                (CHILD_DIRECTORY_ENV, directory.display().to_string()),
                (CHILD_SEED_ENV, child_seed.to_string()),
            ],
        );
        let (lines, receiver) = read_lines(&mut child);
        if !early_kill {
            wait_for_ready(&receiver, &mut child, &replay);
        }
        std::thread::sleep(if early_kill {
            kill_delay / 2
        } else {
            kill_delay
        });
        let exited_early = child.try_wait().expect("try_wait").is_some();
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        let transcript = parse_transcript(&lines.join().expect("reader"), &replay);
        if exited_early || status.signal() != Some(9) {
            panic!(
                "{replay}: the child ended by itself ({status}): {}",
                stderr_of(&mut child)
            );
        }
        let recovered = runtime
            .block_on(read_model(&directory))
            .unwrap_or_else(|error| panic!("{replay}: {error}"));
        let applied = match_prefix(&model, &transcript, &recovered)
            .unwrap_or_else(|why| panic!("{replay}: {why}"));
        acknowledged_total += transcript.acknowledged;
        issued_total += transcript.issued.len() as u64;
        lost_unacknowledged += transcript.issued.len() as u64 - applied;
        model = recovered;
    }
    let elapsed = started.elapsed();
    println!(
        "{cycles} SIGKILL cycles in {:.1} s: {issued_total} calls issued, {acknowledged_total} \
         acknowledged, all acknowledged calls recovered; {lost_unacknowledged} unacknowledged \
         calls were lost; final log {}..={} (seed {seed})",
        elapsed.as_secs_f64(),
        model.first,
        model.last
    );
    assert!(
        acknowledged_total >= cycles,
        "too few acknowledged calls ({acknowledged_total}) for the loop to prove anything"
    );
}

/// Finds `m >= acknowledged_max + 1` such that replaying the first `m` issued calls on `start`
/// gives `recovered`; returns `m`.
fn match_prefix(start: &Model, transcript: &Transcript, recovered: &Model) -> Result<u64, String> {
    let required = transcript
        .acknowledged_max
        .map_or(0, |sequence| sequence + 1);
    let mut replayed = start.clone();
    let mut closest = None;
    for (count, call) in std::iter::once(None)
        .chain(transcript.issued.iter().map(Some))
        .enumerate()
    {
        if let Some(call) = call {
            replayed.apply(*call);
        }
        let count = count as u64;
        if count >= required {
            if replayed == *recovered {
                return Ok(count);
            }
            closest.get_or_insert((count, replayed.clone()));
        }
    }
    let (count, expected) = closest.unwrap_or((required, replayed));
    Err(format!(
        "the reopened store matches no prefix of the issued calls that holds the {required} \
         acknowledged ones; it holds {}..={} with {:?}, while after {count} calls it should hold \
         {}..={} with {:?} (first differing index: {:?})",
        recovered.first,
        recovered.last,
        recovered.hard_state,
        expected.first,
        expected.last,
        expected.hard_state,
        recovered
            .terms
            .iter()
            .zip(expected.terms.iter())
            .find(|(a, b)| a != b)
            .map(|(a, _)| a.0)
    ))
}

/// Reads the child's stdout lines on a thread; the receiver sees each line as it arrives.
fn read_lines(child: &mut Child) -> (std::thread::JoinHandle<Vec<String>>, mpsc::Receiver<String>) {
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, receiver) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = sender.send(line.clone());
            lines.push(line);
        }
        lines
    });
    (handle, receiver)
}

fn wait_for_ready(receiver: &mpsc::Receiver<String>, child: &mut Child, replay: &str) {
    let deadline = Instant::now() + Duration::from_secs(CHILD_READY_SECONDS_MAX);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) if line == "ready" => return,
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{replay}: the child never opened the store: {}",
                    stderr_of(child)
                );
            }
        }
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    stderr
}

/// Parses `issue` and `ack` lines. A SIGKILL can cut only the last line short.
fn parse_transcript(lines: &[String], replay: &str) -> Transcript {
    let mut transcript = Transcript::default();
    for (position, line) in lines.iter().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let is_last = position + 1 == lines.len();
        match words.first().copied() {
            Some("issue") => {
                let sequence = words.get(1).and_then(|word| word.parse::<u64>().ok());
                match (sequence, Call::parse(&words[2.min(words.len())..])) {
                    (Some(sequence), Some(call)) => {
                        assert_eq!(sequence, transcript.issued.len() as u64, "{replay}: {line}");
                        transcript.issued.push(call);
                    }
                    _ if is_last => {}
                    _ => panic!("{replay}: unreadable line {line:?}"),
                }
            }
            Some("ack") => match words.get(1).and_then(|word| word.parse::<u64>().ok()) {
                Some(sequence) => {
                    assert!(
                        sequence < transcript.issued.len() as u64,
                        "{replay}: {line}"
                    );
                    transcript.acknowledged += 1;
                    transcript.acknowledged_max = transcript.acknowledged_max.max(Some(sequence));
                }
                None if is_last => {}
                None => panic!("{replay}: unreadable line {line:?}"),
            },
            _ => {}
        }
    }
    transcript
}

/// The fail-stop child: writes under a file-size limit until the kernel refuses a write.
#[test]
#[ignore = "a child process of failed_writes_stop_the_store"]
fn fail_stop_child() {
    let Ok(directory) = std::env::var(FAIL_STOP_DIRECTORY_ENV) else {
        eprintln!("fail_stop_child runs only as the child of failed_writes_stop_the_store");
        return;
    };
    // SAFETY: plain libc calls with valid arguments; they change only this process's limits
    // and make an oversized write fail with EFBIG instead of killing the process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit {
            rlim_cur: FAIL_STOP_FILE_BYTES_MAX,
            rlim_max: FAIL_STOP_FILE_BYTES_MAX,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0, "setrlimit");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = RocksLogStore::open(&directory, RocksLogStoreOptions::default()).expect("open");
        let describe = |error: &StorageError| {
            let kind = match error {
                StorageError::Io(_) => "Io",
                StorageError::Stopped(_) => "Stopped",
                _ => "Other",
            };
            format!("{kind} {error}")
        };
        let batch_entries = 64;
        for batch in 0..1000u64 {
            let first = batch * batch_entries + 1;
            match store.append(&entries(first, batch_entries, 1)).await {
                Ok(()) => println!("ack {}", first + batch_entries - 1),
                Err(error) => {
                    println!("error {}", describe(&error));
                    let next = store.append(&entries(first, batch_entries, 1)).await;
                    println!(
                        "then {}",
                        next.map_or_else(|e| describe(&e), |_| "Ok".into())
                    );
                    let saved = store.save_hard_state(&hard_state(1, 0)).await;
                    println!(
                        "then {}",
                        saved.map_or_else(|e| describe(&e), |_| "Ok".into())
                    );
                    return;
                }
            }
        }
        println!("no error");
    });
}

/// Proves a failed write stops the store: the kernel's EFBIG surfaces as an IO error, every
/// later write is refused with `Stopped`, and a reopened store holds every acknowledged entry.
#[test]
fn failed_writes_stop_the_store() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("store");
    let child = spawn_child(
        "fail_stop_child",
        &[(FAIL_STOP_DIRECTORY_ENV, directory.display().to_string())],
    );
    let output = child.wait_with_output().expect("the child's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut acknowledged_last = 0;
    let mut answers = Vec::new();
    for line in stdout.lines() {
        if let Some(last) = line.strip_prefix("ack ") {
            acknowledged_last = last.parse().expect("a number");
        } else if let Some(answer) = line.strip_prefix("error ").or(line.strip_prefix("then ")) {
            answers.push(answer.to_string());
        }
    }
    assert!(
        acknowledged_last > 0,
        "nothing was written before the limit: {stdout}"
    );
    assert_eq!(answers.len(), 3, "{stdout}");
    assert!(
        answers[0].starts_with("Io") && answers[0].contains("File too large"),
        "the failed write should report the kernel's error: {}",
        answers[0]
    );
    for answer in &answers[1..] {
        assert!(
            answer.starts_with("Stopped"),
            "a write after the failure: {answer}"
        );
        assert!(
            answer.contains("File too large"),
            "the reason is kept: {answer}"
        );
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = RocksLogStore::open(&directory, RocksLogStoreOptions::default())
            .expect("the store reopens without the limit");
        let last = store.bounds().await.unwrap().last.0;
        assert!(
            last >= acknowledged_last,
            "acknowledged up to {acknowledged_last}, holds {last}"
        );
        let held = store
            .entries(LogIndex(1)..LogIndex(last + 1))
            .await
            .unwrap();
        assert_eq!(held, entries(1, last, 1));
        store
            .append(&entries(last + 1, 1, 1))
            .await
            .expect("writes work again");
    });
}
