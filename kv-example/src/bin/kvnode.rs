//! kvnode: one member of the replicated key-value service, or `demo` (a local three-node
//! cluster) or `certs` (TLS files for QUIC or TLS over TCP, and for HTTPS on the client API).

use clap::{Parser, Subcommand};
use kv_example::config::{NodeFlags, StorageKind, TransportKind};
use kv_example::local_cluster::{fresh_temp_dir, ClusterHttps, ClusterSpec, LocalCluster};
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
        /// Serve the client API over HTTPS (certificates in <dir>/tls).
        #[arg(long)]
        https: bool,
        /// With --https, require a client certificate (<dir>/tls/client-admin.pem).
        #[arg(long, requires = "https")]
        client_certs: bool,
        /// More flags for every node, after `--` (e.g. `-- --lease-reads`).
        #[arg(last = true)]
        node_flags: Vec<String>,
    },
    /// Write a cluster CA and a certificate and key per node into a folder; with --https, also
    /// each node's HTTPS certificate and client certificates for the client API.
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
        /// Also issue each node's HTTPS certificate (http-node-<id>.pem, .key.pem), for server
        /// and client use (a follower presents it when forwarding to the leader).
        #[arg(long)]
        https: bool,
        /// Names and IP addresses the HTTPS certificates are valid for, comma separated: HOST
        /// for every node, ID=HOST for one (default: localhost,127.0.0.1,::1). Clients and
        /// other members must reach a node at one of them.
        #[arg(long, value_delimiter = ',', requires = "https")]
        http_hosts: Vec<String>,
        /// Client certificates to issue (client-<name>.pem, .key.pem), comma separated, e.g.
        /// admin: for `kvctl --cert/--key` against nodes started with --http-tls-client-ca.
        #[arg(long, value_delimiter = ',', requires = "https")]
        clients: Vec<String>,
        /// Sign the HTTPS and client certificates with a CA for the client API only
        /// (http-ca.pem, made unless --add), not the cluster CA (ca.pem).
        #[arg(long, requires = "https")]
        separate_http_ca: bool,
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
        Some(Commands::Certs {
            dir,
            nodes,
            add,
            https,
            http_hosts,
            clients,
            separate_http_ca,
        }) => {
            let https = https.then_some(HttpsCerts {
                hosts: http_hosts,
                clients,
                separate_ca: separate_http_ca,
            });
            // Bad names are refused before any file is written.
            https
                .as_ref()
                .map_or(Ok(()), |https| https.check(&dir, &nodes, add))
                .and_then(|()| certs(dir.clone(), nodes.clone(), add))
                .and_then(|()| https.map_or(Ok(()), |https| https.issue(&dir, &nodes, add)))
        }
        Some(Commands::Demo {
            nodes,
            storage,
            transport,
            dir,
            keep_data,
            https,
            client_certs,
            node_flags,
        }) => runtime().and_then(|rt| {
            let demo = Demo {
                nodes,
                storage,
                transport,
                dir,
                keep_data,
                https: match (https, client_certs) {
                    (false, _) => ClusterHttps::Off,
                    (true, false) => ClusterHttps::On,
                    (true, true) => ClusterHttps::ClientCertificates,
                },
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

/// What `kvnode certs --https` issues besides the peer certificates.
struct HttpsCerts {
    hosts: Vec<String>,
    clients: Vec<String>,
    separate_ca: bool,
}

impl HttpsCerts {
    /// Each node's hosts.
    fn hosts(&self, nodes: &[u64]) -> Result<Vec<Vec<String>>, String> {
        let ids: Vec<NodeId> = nodes.iter().copied().map(NodeId).collect();
        let hosts = match self.hosts.is_empty() {
            true => kv_example::tls::DEFAULT_HTTP_HOSTS
                .map(String::from)
                .to_vec(),
            false => self.hosts.clone(),
        };
        kv_example::tls::hosts_per_node(&hosts, &ids).map_err(|e| e.to_string())
    }

    /// Checks the hosts, the client names, and that the CA to add with exists.
    fn check(&self, dir: &std::path::Path, nodes: &[u64], add: bool) -> Result<(), String> {
        let (ca, _) = kv_example::tls::ca_files(dir, self.separate_ca);
        if add && !ca.exists() {
            return Err(format!(
                "--add signs with {}, which does not exist",
                ca.display()
            ));
        }
        if let Some(index) = self.hosts(nodes)?.iter().position(Vec::is_empty) {
            return Err(format!(
                "--http-hosts gives node {} no host name or address",
                nodes[index]
            ));
        }
        for client in &self.clients {
            kv_example::tls::check_client_name(client).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn issue(self, dir: &std::path::Path, nodes: &[u64], add: bool) -> Result<(), String> {
        let ids: Vec<NodeId> = nodes.iter().copied().map(NodeId).collect();
        let per_node = self.hosts(nodes)?;
        kv_example::tls::issue_https_certificates(
            dir,
            self.separate_ca,
            add,
            &ids,
            &per_node,
            &self.clients,
        )
        .map_err(|e| e.to_string())?;
        let (ca, _) = kv_example::tls::ca_files(dir, self.separate_ca);
        let dir = dir.display();
        println!(
            "wrote http-node-<id>.pem / http-node-<id>.key.pem for nodes {nodes:?}{} in {dir},              signed by {}
serve HTTPS with --http-tls-certificate {dir}/http-node-<id>.pem              --http-tls-private-key {dir}/http-node-<id>.key.pem --http-tls-ca {} (add              --http-tls-client-ca {} to require client certificates)",
            match self.clients.is_empty() {
                true => String::new(),
                false => format!(" and client-<name>.pem / .key.pem for {:?}", self.clients),
            },
            ca.display(),
            ca.display(),
            ca.display(),
        );
        Ok(())
    }
}

/// What `kvnode demo` starts.
struct Demo {
    nodes: u64,
    storage: StorageKind,
    transport: TransportKind,
    dir: Option<PathBuf>,
    keep_data: bool,
    https: ClusterHttps,
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
            https,
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
        let mut cluster = LocalCluster::start_with_https(spec, https)
            .map_err(|e| format!("starting nodes: {e}"))?;
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
    // The benchmark speaks plain HTTP only.
    let bench = match cluster.client_tls() {
        None => format!(
            "\n  {} --endpoints {endpoints} bench --clients 16 --ops 5000",
            kvctl.display()
        ),
        Some(_) => String::new(),
    };
    // With HTTPS, curl and kvctl trust the cluster CA and present the admin certificate.
    let (curl, kvctl) = match cluster.client_tls() {
        None => ("curl".to_string(), kvctl.display().to_string()),
        Some(tls) => {
            let shown = |path: Option<PathBuf>| path.unwrap_or_default().display().to_string();
            let ca = tls.ca_certificate.display();
            let certificate = shown(tls.certificate);
            let key = shown(tls.private_key);
            (
                format!("curl --cacert {ca} --cert {certificate} --key {key}"),
                format!(
                    "{} --cacert {ca} --cert {certificate} --key {key}",
                    kvctl.display()
                ),
            )
        }
    };
    println!(
        "\nA {}-node cluster is running ({storage} storage, {transport} transport).",
        cluster.members().len()
    );
    println!("data and logs: {}\n", cluster.spec().data_dir.display());
    for member in cluster.members() {
        println!(
            "  node {}: {}  (peers: {}, pid {})",
            member.id,
            member.endpoint(),
            member.peer_address,
            member.pid().unwrap_or(0)
        );
    }
    println!(
        "\nTry it (any node answers; followers forward to the leader):\n\
         \n  {curl} -X PUT --data-binary 'hello' {first}/v1/kv/greeting\
         \n  {curl} {first}/v1/kv/greeting\
         \n  {curl} '{first}/v1/kv/greeting?consistency=stale'\
         \n  {curl} -X POST -H 'content-type: application/json' -d '{{\"expected\":\"hello\",\"new\":\"hi\"}}' {first}/v1/kv/greeting/cas\
         \n  {curl} '{first}/v1/kv?prefix=gr&limit=10'\
         \n  {curl} -X DELETE {first}/v1/kv/greeting\
         \n  {curl} {first}/v1/status\
         \n  {curl} {first}/metrics\
         \n\
         \n  {kvctl} --endpoints {endpoints} put greeting hello\
         \n  {kvctl} --endpoints {endpoints} get greeting\
         \n  {kvctl} --endpoints {endpoints} status\
         \n  {kvctl} --endpoints {endpoints} member list\
         \n  {kvctl} --endpoints {endpoints} snapshot --all\
         {bench}\
         \n\nPress Ctrl-C to stop the cluster."
    );
}
