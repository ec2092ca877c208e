//! kvctl: the command-line client of the replicated key-value service.

use bytes::Bytes;
use clap::{Parser, Subcommand};
use kv_example::bench::{self, BenchResult, Workload};
use kv_example::client::{encode_key, members_text, status_table, ClientError, KvClient};
use kv_example::config::{StorageKind, TransportKind};
use kv_example::failover::{self, FailoverResult, FailoverSettings};
use kv_example::local_cluster::{fresh_temp_dir, ClusterSpec, LocalCluster};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The client of the replicated key-value service.
///
/// Requests go to the endpoint that answered last and move on to the next one when it cannot
/// be reached, has no leader, or (reads, and writes, which carry a request ID) does not answer
/// within --timeout-ms or is not a kvnode (another server's 404 is not "key not found").
///
/// Every write (put, del, cas) is sent with a new random Request-Id header, which it keeps on
/// its fail-over retries: if an attempt timed out or answered that the write may or may not
/// have applied, the next endpoint is asked with the same ID, and the cluster applies the
/// write at most once and answers as the first attempt did.
///
/// Keys and values are bytes. Give binary keys with --key-encoding (hex, base64, or url:
/// percent escapes as in a URL), binary values on standard input (`put KEY -`) or with
/// --value-encoding; `get` writes the value's bytes exactly.
#[derive(Parser)]
#[command(
    name = "kvctl",
    version,
    after_help = "Examples of binary keys and values:
  kvctl --key-encoding hex put 00ff2f25 - < value.bin
  kvctl --key-encoding url get 'a%00%FF'
  kvctl --value-encoding base64 cas greeting aGk= --expected aGVsbG8=
  kvctl scan logs/ --limit 500 --all

Exit status:
  0  success
  1  an error: no endpoint could serve the request, the node refused it, or bad input
  2  a bad command line
  3  cas: not swapped (the key holds another value, or exists with --absent)
  4  get: the key does not exist"
)]
struct Cli {
    /// The cluster's HTTP endpoints, comma separated (`host:port` means `http://host:port`);
    /// requests fail over between them.
    #[arg(
        long,
        env = "KVCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8001"
    )]
    endpoints: Vec<String>,
    /// How long one request to one endpoint may take, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// HTTPS: trust only node certificates signed by this CA (PEM); the endpoints are then
    /// https://.
    #[arg(long, env = "KVCTL_CACERT")]
    cacert: Option<PathBuf>,
    /// HTTPS: the client certificate (PEM) for nodes that require one (with --key).
    #[arg(long, env = "KVCTL_CERT", requires = "key", requires = "cacert")]
    cert: Option<PathBuf>,
    /// HTTPS: the client certificate's private key (PEM).
    #[arg(long, env = "KVCTL_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// How KEY, PREFIX and --start are written on the command line, and how scan prints keys:
    /// text (as typed; keys that are not UTF-8 print as base64:...), hex, base64, or url
    /// (percent escapes: %00%FF, %25 for '%').
    #[arg(long, global = true, value_enum, default_value_t = Encoding::Text)]
    key_encoding: Encoding,
    /// How values on the command line (put VALUE, cas NEW and --expected) are written, and
    /// how scan and cas print values: text, hex, base64 or url, as for --key-encoding.
    #[arg(long, global = true, value_enum, default_value_t = Encoding::Text)]
    value_encoding: Encoding,
    #[command(subcommand)]
    command: Commands,
}

/// How bytes are written on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Encoding {
    /// The argument's own bytes (UTF-8).
    Text,
    /// Two hex digits a byte.
    Hex,
    /// Standard padded base64.
    Base64,
    /// Percent escapes, as in a URL.
    Url,
}

impl Encoding {
    /// The bytes `text` stands for.
    fn decode(self, text: &str) -> Result<Vec<u8>, String> {
        match self {
            Encoding::Text => Ok(text.as_bytes().to_vec()),
            Encoding::Hex => decode_hex(text),
            Encoding::Base64 => kv_example::base64::decode(text),
            Encoding::Url => kv_example::api::percent_decode(text),
        }
        .map_err(|why| format!("{text:?} is not {}: {why}", self.name()))
    }

    /// `bytes` as this encoding writes them (text that is not UTF-8: `base64:...`).
    fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Text => match std::str::from_utf8(bytes) {
                Ok(text) => text.to_string(),
                Err(_) => format!("base64:{}", kv_example::base64::encode(bytes)),
            },
            Encoding::Hex => {
                const DIGITS: &[u8; 16] = b"0123456789abcdef";
                let mut out = String::with_capacity(2 * bytes.len());
                for byte in bytes {
                    out.push(DIGITS[usize::from(byte >> 4)] as char);
                    out.push(DIGITS[usize::from(byte & 15)] as char);
                }
                out
            }
            Encoding::Base64 => kv_example::base64::encode(bytes),
            Encoding::Url => encode_key(bytes),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Encoding::Text => "text",
            Encoding::Hex => "hex",
            Encoding::Base64 => "base64",
            Encoding::Url => "percent-encoded",
        }
    }
}

fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    if text.len() % 2 != 0 {
        return Err(format!("{} hex digits, not an even number", text.len()));
    }
    let digit = |c: u8| {
        (c as char)
            .to_digit(16)
            .ok_or_else(|| format!("{:?} is not a hex digit", c as char))
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| Ok((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

#[derive(Subcommand)]
enum Commands {
    /// Set a key (VALUE `-` reads standard input).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Write a key's value to standard output, byte for byte (no newline is added).
    Get {
        /// The key.
        key: String,
        /// linearizable (read index), lease, log (through the log) or stale (this node's copy).
        #[arg(long, default_value = "linearizable")]
        consistency: String,
    },
    /// Delete a key.
    Del {
        /// The key.
        key: String,
    },
    /// Compare and swap: set KEY to NEW only if it holds --expected (or is absent with
    /// --absent).
    Cas {
        /// The key.
        key: String,
        /// The new value.
        new: String,
        /// The value the key must hold.
        #[arg(long, conflicts_with = "absent", required_unless_present = "absent")]
        expected: Option<String>,
        /// The key must not exist.
        #[arg(long)]
        absent: bool,
    },
    /// List keys under a prefix, one `KEY<tab>VALUE` line each, in key order.
    Scan {
        /// The prefix (empty: all keys).
        #[arg(default_value = "")]
        prefix: String,
        /// Start at this key (inclusive), e.g. the next key a cut-short scan named.
        #[arg(long)]
        start: Option<String>,
        /// Most keys to list (with --all: per request).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Follow the pages to the last matching key.
        #[arg(long)]
        all: bool,
        /// linearizable, lease, log or stale.
        #[arg(long, default_value = "linearizable")]
        consistency: String,
    },
    /// A table of every endpoint's status.
    Status,
    /// Cluster membership: list, add (a node started with `kvnode --join`), promote, remove.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Leadership: hand it to another voter.
    #[command(subcommand)]
    Leader(LeaderCommand),
    /// Have a node take a snapshot of its state and compact its log.
    Snapshot {
        /// Every endpoint, each its own snapshot (default: the first that answers).
        #[arg(long)]
        all: bool,
    },
    /// Run a load and report throughput and latency.
    Bench(BenchArgs),
    /// Kill the leader of a fresh local 3-node cluster again and again while writers write
    /// through every node; report the time from each kill to the first write committed by a
    /// new leader (p50/p90/p99/max).
    Failover(FailoverArgs),
}

#[derive(clap::Args)]
struct FailoverArgs {
    /// Leader kills per cluster.
    #[arg(long, default_value_t = 50)]
    rounds: u32,
    /// Concurrent writers, spread over the endpoints (each fails over as `kvctl put` does).
    #[arg(long, default_value_t = 6)]
    writers: usize,
    /// The combinations, e.g. rocksdb+tcp,mem+quic (one cluster each, in turn).
    #[arg(long, value_delimiter = ',', default_value = "rocksdb+tcp")]
    combinations: Vec<String>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    /// A writer's pause after a failed write.
    #[arg(long, default_value_t = 10)]
    retry_pause_ms: u64,
    /// Steady writing between a restarted node's catch-up and the next kill.
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
    /// A round fails when no new leader's write is acknowledged within this time.
    #[arg(long, default_value_t = 10_000)]
    round_timeout_ms: u64,
    /// How long a restarted node may take to catch up.
    #[arg(long, default_value_t = 60_000)]
    catch_up_timeout_ms: u64,
    /// The longest random pause before a kill, so kills fall anywhere between heartbeats.
    #[arg(long, default_value_t = 50)]
    kill_jitter_ms: u64,
    /// Seeds the pauses before kills (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// The kvnode executable (default: next to kvctl).
    #[arg(long)]
    kvnode: Option<PathBuf>,
    /// Keep each cluster's data folder (node logs included) instead of removing it.
    #[arg(long)]
    keep_data: bool,
    /// The nodes' RUST_LOG, e.g. `info,raft_transport_tcp=debug` to see dials and reconnects.
    #[arg(long, default_value = "info")]
    node_log: String,
    /// Write the results as JSON here.
    #[arg(long, default_value = "kvctl-failover.json")]
    json: PathBuf,
    /// No line per round.
    #[arg(long)]
    quiet: bool,
    /// Flags for every kvnode, after `--` (e.g. `-- --leader-wait-ms 500`). Default: none,
    /// so nodes run with kvnode's defaults (10 ms ticks, 150-300 ms election timeout).
    #[arg(last = true)]
    node_flags: Vec<String>,
}

#[derive(Subcommand)]
enum MemberCommand {
    /// The members, their roles and addresses.
    List,
    /// Add node ID as a learner (start it with `kvnode --join` before or after).
    Add {
        /// The new node's ID (never used before in this cluster).
        id: u64,
        /// Where it listens for peers (host:port); required unless the cluster knows.
        #[arg(long)]
        peer_address: Option<String>,
        /// Where it serves HTTP (host:port), so followers can forward to it when it leads.
        #[arg(long)]
        client_address: Option<String>,
    },
    /// Make the learner ID a voter. A learner that has not caught up is refused (409
    /// not_caught_up); `--wait` lets the leader wait for it first.
    Promote {
        /// The learner's ID.
        id: u64,
        /// Wait up to this many seconds (default 30) for the learner to catch up.
        #[arg(long, num_args = 0..=1, default_missing_value = "30", value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// Remove member ID from the cluster.
    Remove {
        /// The member's ID.
        id: u64,
    },
}

#[derive(Subcommand)]
enum LeaderCommand {
    /// Hand leadership to the voter ID and wait until it leads.
    Transfer {
        /// The voter's ID.
        id: u64,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Concurrent clients (one request in flight each).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Operations per run.
    #[arg(long, default_value_t = 20_000)]
    ops: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Fraction of reads, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    read_ratio: f64,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keyspace: u64,
    /// Read consistency.
    #[arg(long, default_value = "linearizable")]
    consistency: String,
    /// Longest run, in seconds.
    #[arg(long, default_value_t = 60.0)]
    max_secs: f64,
    /// Start a fresh local 3-node cluster for each backend combination in turn instead of
    /// using --endpoints.
    #[arg(long)]
    local: bool,
    /// With --local: the combinations, e.g. mem+tcp,rocksdb+quic (default: all four).
    #[arg(long, value_delimiter = ',')]
    combinations: Vec<String>,
    /// With --local: the kvnode executable (default: next to kvctl).
    #[arg(long)]
    kvnode: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long, default_value = "kvctl-bench.json")]
    json: PathBuf,
    /// Draw the results as an SVG chart here.
    #[arg(long, default_value = "kvctl-bench.svg")]
    svg: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kvctl: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("kvctl: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let timeout = Duration::from_millis(cli.timeout_ms);
    let tls = cli
        .cacert
        .clone()
        .map(|ca_certificate| kv_example::tls::ClientTlsFiles {
            ca_certificate,
            certificate: cli.cert.clone(),
            private_key: cli.key.clone(),
        });
    let (keys, values) = (cli.key_encoding, cli.value_encoding);
    let client = || {
        KvClient::with_tls(cli.endpoints.clone(), timeout, tls.as_ref())
            .map(KvClient::with_request_ids)
            .map_err(|e| e.to_string())
    };
    let show = |e: ClientError| e.to_string();
    match cli.command {
        Commands::Put { key, value } => {
            let value = if value == "-" {
                let mut buffer = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buffer)
                    .map_err(|e| e.to_string())?;
                Bytes::from(buffer)
            } else {
                Bytes::from(values.decode(&value)?)
            };
            let index = client()?
                .put(keys.decode(&key)?, value)
                .await
                .map_err(show)?;
            println!("OK (index {index})");
        }
        Commands::Get { key, consistency } => {
            let found = client()?.get(keys.decode(&key)?, &consistency).await;
            match found.map_err(show)? {
                // The value's bytes exactly: no newline added, nothing decoded as text.
                Some(value) => {
                    let mut stdout = std::io::stdout().lock();
                    stdout
                        .write_all(&value)
                        .and_then(|()| stdout.flush())
                        .map_err(|e| format!("writing the value to standard output: {e}"))?;
                }
                None => {
                    eprintln!("key {key:?} not found");
                    return Ok(ExitCode::from(4));
                }
            }
        }
        Commands::Del { key } => {
            let existed = client()?.delete(keys.decode(&key)?).await.map_err(show)?;
            println!(
                "{}",
                if existed {
                    "deleted"
                } else {
                    "not found (nothing to delete)"
                }
            );
        }
        Commands::Cas {
            key,
            new,
            expected,
            absent: _,
        } => {
            let expected = expected.map(|text| values.decode(&text)).transpose()?;
            let outcome = client()?
                .cas(
                    keys.decode(&key)?,
                    expected.as_deref(),
                    &values.decode(&new)?,
                )
                .await
                .map_err(show)?;
            if outcome.swapped {
                println!("swapped (index {})", outcome.body["index"]);
            } else {
                match outcome.previous {
                    Some(current) => println!(
                        "not swapped: the current value is {}",
                        values.encode(&current)
                    ),
                    None => println!("not swapped: the key does not exist"),
                }
                return Ok(ExitCode::from(3));
            }
        }
        Commands::Scan {
            prefix,
            start,
            limit,
            all,
            consistency,
        } => {
            let client = client()?;
            let prefix = keys.decode(&prefix)?;
            let mut start = match start {
                Some(start) => keys.decode(&start)?,
                None => Vec::new(),
            };
            loop {
                let page = client
                    .scan(&prefix, &start, limit, &consistency)
                    .await
                    .map_err(show)?;
                let mut stdout = std::io::stdout().lock();
                for (key, value) in &page.entries {
                    writeln!(stdout, "{}\t{}", keys.encode(key), values.encode(value))
                        .map_err(|e| format!("writing to standard output: {e}"))?;
                }
                let Some(next) = page.next else { break };
                if next.as_ref() <= start.as_slice() {
                    return Err(format!(
                        "the scan did not advance: its next key {} is not after {}",
                        keys.encode(&next),
                        keys.encode(&start)
                    ));
                }
                if !all {
                    eprintln!("{}", continue_hint(keys, &next));
                    break;
                }
                start = next.to_vec();
            }
        }
        Commands::Status => {
            let statuses = client()?.status_all().await;
            print!("{}", status_table(&statuses));
            if statuses.iter().all(|(_, s)| s.is_err()) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Commands::Member(command) => {
            let client = client()?;
            let members = match command {
                MemberCommand::List => client.members().await,
                MemberCommand::Add {
                    id,
                    peer_address,
                    client_address,
                } => {
                    let (peer, http) = (peer_address.as_deref(), client_address.as_deref());
                    client.add_member(id, peer, http).await
                }
                MemberCommand::Promote { id, wait } => {
                    let wait = wait.map(std::time::Duration::from_secs);
                    client.promote_member(id, wait).await
                }
                MemberCommand::Remove { id } => client.remove_member(id).await,
            };
            print!("{}", members_text(&members.map_err(show)?));
        }
        Commands::Leader(LeaderCommand::Transfer { id }) => {
            client()?.transfer_leader(id).await.map_err(show)?;
            println!("node {id} leads");
        }
        Commands::Snapshot { all } => {
            let answers = match all {
                true => client()?.snapshot_all().await,
                false => {
                    let answer = client()?.snapshot().await.map_err(show)?;
                    vec![(String::new(), Ok(answer))]
                }
            };
            for (endpoint, answer) in &answers {
                match answer {
                    Ok(meta) => println!(
                        "node {}: snapshot at index {} (term {}, {} bytes)",
                        meta["node"], meta["index"], meta["term"], meta["bytes"]
                    ),
                    Err(error) => eprintln!("{endpoint}: {error}"),
                }
            }
            if answers.iter().any(|(_, a)| a.is_err()) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Commands::Bench(args) => bench_command(args, cli.endpoints).await?,
        Commands::Failover(args) => return failover_command(args, timeout).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// What a scan cut short says: the key the next page starts at, and how to ask for it.
fn continue_hint(keys: Encoding, next: &[u8]) -> String {
    let encoding = match (keys, std::str::from_utf8(next)) {
        // A key that is not UTF-8 cannot be typed as text: name it in base64.
        (Encoding::Text, Err(_)) => Encoding::Base64,
        (chosen, _) => chosen,
    };
    let switch = if encoding == keys {
        String::new()
    } else {
        "--key-encoding base64 ".to_string()
    };
    format!(
        "(more keys match: continue with {switch}--start '{}', or use --all)",
        encoding.encode(next)
    )
}

fn parse_combination(text: &str) -> Result<(StorageKind, TransportKind), String> {
    let (storage, transport) = text
        .split_once('+')
        .ok_or_else(|| format!("combination {text:?} is not STORAGE+TRANSPORT"))?;
    let storage = match storage {
        "mem" => StorageKind::Mem,
        "rocksdb" => StorageKind::Rocksdb,
        other => return Err(format!("unknown storage {other:?}")),
    };
    let transport = match transport {
        "tcp" => TransportKind::Tcp,
        "quic" => TransportKind::Quic,
        other => return Err(format!("unknown transport {other:?}")),
    };
    Ok((storage, transport))
}

/// The kvnode next to this kvctl, unless a path is given.
fn kvnode_path(given: &Option<PathBuf>) -> Result<PathBuf, String> {
    match given {
        Some(path) => Ok(path.clone()),
        None => Ok(std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("kvnode")),
    }
}

async fn failover_command(args: FailoverArgs, timeout: Duration) -> Result<ExitCode, String> {
    let settings = FailoverSettings {
        rounds: args.rounds,
        writers: args.writers,
        value_bytes: args.value_size,
        request_timeout_ms: timeout.as_millis() as u64,
        retry_pause_ms: args.retry_pause_ms,
        settle_ms: args.settle_ms,
        round_timeout_ms: args.round_timeout_ms,
        catch_up_timeout_ms: args.catch_up_timeout_ms,
        kill_jitter_ms: args.kill_jitter_ms,
        seed: args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        }),
    };
    settings.validate()?;
    let kvnode = kvnode_path(&args.kvnode)?;
    let mut results: Vec<FailoverResult> = Vec::new();
    for combination in &args.combinations {
        let (storage, transport) = parse_combination(combination)?;
        let label = format!("{storage}+{transport}");
        let data_dir = fresh_temp_dir("kvctl-failover").map_err(|e| e.to_string())?;
        let spec = ClusterSpec {
            kvnode: kvnode.clone(),
            nodes: 3,
            storage,
            transport,
            data_dir: data_dir.clone(),
            extra_args: args.node_flags.clone(),
            log_filter: args.node_log.clone(),
        };
        let mut cluster = LocalCluster::start(spec)
            .map_err(|e| format!("starting {} ({label}): {e}", kvnode.display()))?;
        cluster.wait_ready(Duration::from_secs(60)).await?;
        eprintln!(
            "{label}: {} rounds, {} writers, seed {}; node logs in {}",
            settings.rounds,
            settings.writers,
            settings.seed,
            data_dir.display()
        );
        let quiet = args.quiet;
        let rounds = settings.rounds;
        let report = |round: &failover::Round| {
            if !quiet {
                eprintln!("{label}: {}", failover::round_line(round, rounds));
            }
        };
        let result = failover::run(&mut cluster, &label, &settings, report).await;
        let _ = cluster.stop(Duration::from_secs(10));
        if !args.keep_data && result.as_ref().is_ok_and(|r| r.stopped.is_none()) {
            let _ = std::fs::remove_dir_all(&data_dir);
        }
        results.push(result?);
    }
    print!("{}", failover::table(&results));
    for result in &results {
        for sample in &result.error_samples {
            eprintln!("{}: failed write sample: {sample}", result.label);
        }
        if let Some(why) = &result.stopped {
            eprintln!("{}: {why}", result.label);
        }
    }
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(&args.json, json).map_err(|e| format!("{}: {e}", args.json.display()))?;
    println!("results: {}", args.json.display());
    let broken = results
        .iter()
        .any(|r| r.stopped.is_some() || r.rounds.iter().any(|round| round.error.is_some()));
    Ok(if broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn bench_command(args: BenchArgs, endpoints: Vec<String>) -> Result<(), String> {
    let workload = Workload {
        clients: args.clients,
        operations: args.ops,
        key_bytes: args.key_size,
        value_bytes: args.value_size,
        read_ratio: args.read_ratio,
        keyspace: args.keyspace,
        consistency: args.consistency.clone(),
        seconds_max: args.max_secs,
        request_timeout_ms: 10_000,
    };
    workload.validate()?;
    let mut results: Vec<BenchResult> = Vec::new();
    if args.local {
        let combinations = if args.combinations.is_empty() {
            vec!["mem+tcp", "mem+quic", "rocksdb+tcp", "rocksdb+quic"]
                .into_iter()
                .map(String::from)
                .collect()
        } else {
            args.combinations.clone()
        };
        let kvnode = kvnode_path(&args.kvnode)?;
        for combination in combinations {
            let (storage, transport) = parse_combination(&combination)?;
            let label = format!("{storage}+{transport}");
            let data_dir = fresh_temp_dir("kvctl-bench").map_err(|e| e.to_string())?;
            let spec = ClusterSpec {
                kvnode: kvnode.clone(),
                nodes: 3,
                storage,
                transport,
                data_dir: data_dir.clone(),
                extra_args: Vec::new(),
                log_filter: "warn".into(),
            };
            let mut cluster = LocalCluster::start(spec)
                .map_err(|e| format!("starting {} ({label}): {e}", kvnode.display()))?;
            cluster.wait_ready(Duration::from_secs(60)).await?;
            let progress = bench::progress_bar(workload.operations, &label, !args.quiet);
            let result = bench::run(&label, &cluster.endpoints(), &workload, &progress).await;
            progress.finish_and_clear();
            let _ = cluster.stop(Duration::from_secs(10));
            let _ = std::fs::remove_dir_all(&data_dir);
            results.push(result?);
        }
    } else {
        let label = "cluster".to_string();
        let progress = bench::progress_bar(workload.operations, &label, !args.quiet);
        let result = bench::run(&label, &endpoints, &workload, &progress).await;
        progress.finish_and_clear();
        results.push(result?);
    }
    print!("{}", bench::table(&results));
    for result in &results {
        for sample in &result.error_samples {
            eprintln!("{}: error sample: {sample}", result.label);
        }
    }
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(&args.json, json).map_err(|e| format!("{}: {e}", args.json.display()))?;
    let title = format!(
        "kvctl bench: {} clients, {} B values, {:.0}% reads",
        workload.clients,
        workload.value_bytes,
        workload.read_ratio * 100.0
    );
    std::fs::write(&args.svg, bench::svg_chart(&results, &title))
        .map_err(|e| format!("{}: {e}", args.svg.display()))?;
    println!(
        "results: {} and {}",
        args.json.display(),
        args.svg.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every encoding gives back the bytes it wrote, and refuses what it cannot read.
    #[test]
    fn encodings_round_trip_any_bytes() {
        let bytes = b"\x00\xff/%+ a";
        for encoding in [Encoding::Hex, Encoding::Base64, Encoding::Url] {
            let written = encoding.encode(bytes);
            assert_eq!(encoding.decode(&written).unwrap(), bytes, "{written}");
        }
        assert_eq!(Encoding::Hex.encode(bytes), "00ff2f252b2061");
        assert_eq!(Encoding::Url.encode(bytes), "%00%FF%2F%25%2B%20a");
        assert_eq!(Encoding::Text.encode(b"plain"), "plain");
        assert_eq!(Encoding::Text.encode(b"\xff"), "base64:/w==");
        assert_eq!(Encoding::Text.decode("a%00").unwrap(), b"a%00");
        assert_eq!(Encoding::Hex.decode("00FFaB").unwrap(), b"\x00\xff\xab");
        for (encoding, bad) in [
            (Encoding::Hex, "0"),
            (Encoding::Hex, "zz"),
            (Encoding::Base64, "***"),
            (Encoding::Url, "%G0"),
        ] {
            let error = encoding.decode(bad).unwrap_err();
            assert!(error.contains(encoding.name()), "{error}");
        }
    }

    /// A cut-short scan names its next key in a form that can be typed back.
    #[test]
    fn the_continue_hint_can_be_typed_back() {
        assert_eq!(
            continue_hint(Encoding::Text, b"k2"),
            "(more keys match: continue with --start 'k2', or use --all)"
        );
        assert_eq!(
            continue_hint(Encoding::Text, b"\xff"),
            "(more keys match: continue with --key-encoding base64 --start '/w==', or use --all)"
        );
        assert_eq!(
            continue_hint(Encoding::Hex, b"\xff"),
            "(more keys match: continue with --start 'ff', or use --all)"
        );
    }
}
