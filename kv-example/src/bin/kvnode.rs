//! kvnode: one member of the replicated key-value service, or `demo` (a local three-node
//! cluster) or `certs` (TLS files for QUIC or TLS over TCP).

use clap::{Parser, Subcommand};
use kv_example::config::{NodeFlags, StorageKind, TransportKind};
use kv_example::local_cluster::{fresh_temp_dir, ClusterSpec, LocalCluster};
use raft_core::NodeId;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// A member of the replicated key-value service.
///
/// Example (three terminals, ids 1, 2 and 3):
///   kvnode --id 1 --initial-cluster 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
///          --client-addresses 1=127.0.0.1:8001,2=127.0.0.1:8002,3=127.0.0.1:8003
///          --data-dir data/1
#[derive(Parser)]
#[command(name = "kvnode", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Commands>,
    #[command(flatten)]
    node: NodeFlags,
}

#[derive(Subcommand)]
enum Commands {
    /// Start a local cluster of child processes, print how to reach it, stop it on Ctrl-C.
    Demo {
        /// Members to start.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Their storage.
        #[arg(long, value_enum, default_value_t = StorageKind::Rocksdb)]
        storage: StorageKind,
        /// Their transport.
        #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
        transport: TransportKind,
        /// Data folder (default: a fresh temporary folder, removed on exit).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the data folder on exit.
        #[arg(long)]
        keep_data: bool,
        /// More flags for every node, after `--` (e.g. `-- --lease-reads`).
        #[arg(last = true)]
        node_flags: Vec<String>,
    },
    /// Write a cluster CA and a certificate and key per node into a folder.
    Certs {
        /// The folder (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Node IDs, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u64>,
        /// Issue certificates for nodes joining a running cluster with the CA already in the
        /// folder (its ca.key.pem), instead of making a new CA.
        #[arg(long)]
        add: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Commands::Certs { dir, nodes, add }) => certs(dir, nodes, add),
        Some(Commands::Demo {
            nodes,
            storage,
            transport,
            dir,
            keep_data,
            node_flags,
        }) => runtime().and_then(|rt| {
            let demo = Demo {
                nodes,
                storage,
                transport,
                dir,
                keep_data,
                node_flags,
            };
            rt.block_on(demo.run())
        }),
        None => cli.node.resolve().and_then(|config| {
            runtime_with(config.worker_threads).and_then(|rt| {
                rt.block_on(kv_example::node::run(
                    config,
                    kv_example::node::termination_signal(),
                ))
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvnode: {error}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    runtime_with(0)
}

/// A multi-threaded runtime with `worker_threads` threads (0: one per CPU).
fn runtime_with(worker_threads: usize) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))
}

fn certs(dir: PathBuf, nodes: Vec<u64>, add: bool) -> Result<(), String> {
    if nodes.contains(&0) {
        return Err("node ID 0 is reserved".into());
    }
    let ids: Vec<NodeId> = nodes.iter().copied().map(NodeId).collect();
    if add {
        for id in ids {
            raft_transport_quic::generate_node_certificate(&dir, id).map_err(|e| e.to_string())?;
        }
        println!(
            "wrote node-<id>.pem / node-<id>.key.pem for nodes {nodes:?} in {}, signed by its \
             ca.pem\nstart each node with --tls-dir {} --join",
            dir.display(),
            dir.display()
        );
        return Ok(());
    }
    raft_transport_quic::generate_cluster_certificates(&dir, &ids).map_err(|e| e.to_string())?;
    println!(
        "wrote ca.pem, ca.key.pem (keep it secret) and node-<id>.pem / node-<id>.key.pem for \
         nodes {nodes:?} in {}\nstart each node with --tls-dir {}",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// What `kvnode demo` starts.
struct Demo {
    nodes: u64,
    storage: StorageKind,
    transport: TransportKind,
    dir: Option<PathBuf>,
    keep_data: bool,
    node_flags: Vec<String>,
}

impl Demo {
    async fn run(self) -> Result<(), String> {
        let Demo {
            nodes,
            storage,
            transport,
            dir,
            keep_data,
            node_flags,
        } = self;
        if nodes == 0 {
            return Err("a cluster needs at least one node".into());
        }
        let fresh = dir.is_none();
        let data_dir = match dir {
            Some(dir) => dir,
            None => fresh_temp_dir("kv-demo").map_err(|e| e.to_string())?,
        };
        let kvnode = std::env::current_exe().map_err(|e| e.to_string())?;
        let spec = ClusterSpec {
            kvnode: kvnode.clone(),
            nodes,
            storage,
            transport,
            data_dir: data_dir.clone(),
            extra_args: node_flags,
            log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        };
        let mut cluster = LocalCluster::start(spec).map_err(|e| format!("starting nodes: {e}"))?;
        if let Err(error) = cluster.wait_ready(Duration::from_secs(60)).await {
            let _ = cluster.stop(Duration::from_secs(5));
            return Err(error);
        }
        print_welcome(&cluster, &kvnode, storage, transport);
        kv_example::node::termination_signal().await;
        println!("\nstopping the cluster (SIGTERM to each node)...");
        let statuses = cluster
            .stop(Duration::from_secs(15))
            .map_err(|e| e.to_string())?;
        for (id, status) in statuses {
            match status {
                Some(status) => println!("  node {id}: {status}"),
                None => println!("  node {id}: was not running"),
            }
        }
        if fresh && !keep_data {
            std::fs::remove_dir_all(&data_dir).map_err(|e| e.to_string())?;
            println!("removed {}", data_dir.display());
        } else {
            println!("data kept in {}", data_dir.display());
        }
        Ok(())
    }
}

fn print_welcome(
    cluster: &LocalCluster,
    kvnode: &std::path::Path,
    storage: StorageKind,
    transport: TransportKind,
) {
    let endpoints = cluster.endpoints().join(",");
    let first = cluster.endpoint(1);
    let kvctl = kvnode.with_file_name("kvctl");
    let kvctl = kvctl.display();
    println!(
        "\nA {}-node cluster is running ({storage} storage, {transport} transport).",
        cluster.members().len()
    );
    println!("data and logs: {}\n", cluster.spec().data_dir.display());
    for member in cluster.members() {
        println!(
            "  node {}: http://{}  (peers: {}, pid {})",
            member.id,
            member.client_address,
            member.peer_address,
            member.pid().unwrap_or(0)
        );
    }
    println!(
        "\nTry it (any node answers; followers forward to the leader):\n\
         \n  curl -X PUT --data-binary 'hello' {first}/v1/kv/greeting\
         \n  curl {first}/v1/kv/greeting\
         \n  curl '{first}/v1/kv/greeting?consistency=stale'\
         \n  curl -X POST -H 'content-type: application/json' -d '{{\"expected\":\"hello\",\"new\":\"hi\"}}' {first}/v1/kv/greeting/cas\
         \n  curl '{first}/v1/kv?prefix=gr&limit=10'\
         \n  curl -X DELETE {first}/v1/kv/greeting\
         \n  curl {first}/v1/status\
         \n  curl {first}/metrics\
         \n\
         \n  {kvctl} --endpoints {endpoints} put greeting hello\
         \n  {kvctl} --endpoints {endpoints} get greeting\
         \n  {kvctl} --endpoints {endpoints} status\
         \n  {kvctl} --endpoints {endpoints} member list\
         \n  {kvctl} --endpoints {endpoints} snapshot --all\
         \n  {kvctl} --endpoints {endpoints} bench --clients 16 --ops 5000\
         \n\nPress Ctrl-C to stop the cluster."
    );
}
