//! A cluster of `kvnode` child processes on 127.0.0.1, for `kvnode demo`, the multi-process
//! tests and `kvctl bench --local`.
//!
//! Ports are found free by binding port 0 (TCP and, for QUIC, UDP on the same port) and
//! released just before the children start. Each child runs in its own process group, so a
//! Ctrl-C in the terminal reaches only the parent, which then stops the children one by one
//! with SIGTERM. Each child's log goes to `<data dir>/node-<id>.log`. Unless the flags say
//! otherwise, each child gets `--worker-threads` = cores / members (at least 1), since the
//! members share the machine's cores.
//!
//! [`LocalCluster::add_member`] prepares a node that joins later (`--join`, with a
//! certificate from the cluster's CA for QUIC); the caller starts it and adds it through the
//! admin API. Every member's `--initial-cluster` lists every member the cluster has prepared,
//! so a restarted original member also knows where joined members listen. Its voters from
//! that list matter only for a node whose storage holds no membership: a memory node that
//! restarts after the voters changed should be restarted as joining
//! ([`LocalCluster::set_joining`]).
//!
//! [`LocalCluster::start_with_https`] serves the client API over HTTPS: the cluster CA in
//! `<data dir>/tls` signs each member's HTTPS certificate (for 127.0.0.1 and localhost) and a
//! client certificate `client-admin.pem`; [`LocalCluster::client_tls`] gives a client the
//! files to use.

use crate::config::{StorageKind, TransportKind};
use std::fs::OpenOptions;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The `kvnode` executable.
    pub kvnode: PathBuf,
    /// Members (IDs 1..=nodes).
    pub nodes: u64,
    /// Their storage.
    pub storage: StorageKind,
    /// Their transport.
    pub transport: TransportKind,
    /// The folder for data, certificates and logs (created if missing).
    pub data_dir: PathBuf,
    /// More flags for every node (timeouts, limits).
    pub extra_args: Vec<String>,
    /// The children's `RUST_LOG`.
    pub log_filter: String,
}

/// HTTPS on a local cluster's client API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterHttps {
    /// Plain HTTP.
    #[default]
    Off,
    /// HTTPS; clients present no certificate.
    On,
    /// HTTPS, and every client must present a certificate signed by the cluster CA.
    ClientCertificates,
}

impl ClusterHttps {
    /// `http` or `https`.
    pub fn scheme(self) -> &'static str {
        match self {
            ClusterHttps::Off => "http",
            ClusterHttps::On | ClusterHttps::ClientCertificates => "https",
        }
    }
}

/// The name of the client certificate a local HTTPS cluster issues.
pub const ADMIN_CLIENT: &str = "admin";

/// One child.
#[derive(Debug)]
pub struct LocalMember {
    /// Its ID.
    pub id: u64,
    /// `http` or `https`.
    scheme: &'static str,
    /// Its peer address.
    pub peer_address: SocketAddr,
    /// Its HTTP address.
    pub client_address: SocketAddr,
    /// Flags that replace the spec's `extra_args` for this member, when set.
    extra_args: Option<Vec<String>>,
    /// Started with `--join`: it waits to be added to the running cluster.
    joining: bool,
    child: Option<Child>,
}

impl LocalMember {
    /// Its HTTP endpoint, `http://127.0.0.1:PORT` (or `https://`).
    pub fn endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.client_address)
    }

    /// The child's process ID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A running local cluster. Dropping it kills every child still running (SIGKILL); call
/// [`LocalCluster::stop`] for a graceful stop.
#[derive(Debug)]
pub struct LocalCluster {
    spec: ClusterSpec,
    https: ClusterHttps,
    members: Vec<LocalMember>,
}

/// Finds `count` distinct free ports on 127.0.0.1 (free for UDP too when `udp`).
pub fn free_ports(count: usize, udp: bool) -> io::Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    let mut attempts = 0;
    while ports.len() < count {
        attempts += 1;
        if attempts > 100 * count {
            return Err(io::Error::other("could not find free ports"));
        }
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        let udp_socket = if udp {
            match UdpSocket::bind(("127.0.0.1", port)) {
                Ok(socket) => Some(socket),
                Err(_) => continue,
            }
        } else {
            None
        };
        held.push((tcp, udp_socket));
        ports.push(port);
    }
    Ok(ports)
}

/// A new, empty folder under the system's temporary folder.
pub fn fresh_temp_dir(prefix: &str) -> io::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

fn member_list(members: &[LocalMember], address: impl Fn(&LocalMember) -> SocketAddr) -> String {
    members
        .iter()
        .map(|m| format!("{}={}", m.id, address(m)))
        .collect::<Vec<_>>()
        .join(",")
}

impl LocalCluster {
    /// Chooses ports, writes certificates (QUIC), and starts every member.
    pub fn start(spec: ClusterSpec) -> io::Result<LocalCluster> {
        LocalCluster::start_with_https(spec, ClusterHttps::Off)
    }

    /// [`LocalCluster::start`], with the client API served as `https` says (see the module
    /// docs for the certificates).
    pub fn start_with_https(spec: ClusterSpec, https: ClusterHttps) -> io::Result<LocalCluster> {
        std::fs::create_dir_all(&spec.data_dir)?;
        let scheme = https.scheme();
        let count = spec.nodes as usize;
        let peer_ports = free_ports(count, spec.transport == TransportKind::Quic)?;
        let client_ports = free_ports(count, false)?;
        let members = (0..count)
            .map(|i| LocalMember {
                id: i as u64 + 1,
                scheme,
                peer_address: SocketAddr::from(([127, 0, 0, 1], peer_ports[i])),
                client_address: SocketAddr::from(([127, 0, 0, 1], client_ports[i])),
                extra_args: None,
                joining: false,
                child: None,
            })
            .collect();
        let ids: Vec<raft_core::NodeId> = (1..=spec.nodes).map(raft_core::NodeId).collect();
        if spec.transport == TransportKind::Quic || https != ClusterHttps::Off {
            raft_transport_quic::generate_cluster_certificates(&spec.data_dir.join("tls"), &ids)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        if https != ClusterHttps::Off {
            issue_local_https(
                &spec.data_dir.join("tls"),
                &ids,
                &[ADMIN_CLIENT.to_string()],
            )?;
        }
        let mut cluster = LocalCluster {
            spec,
            https,
            members,
        };
        for id in 1..=cluster.spec.nodes {
            cluster.start_member(id)?;
        }
        Ok(cluster)
    }

    /// The spec it was started with.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// How the client API is served.
    pub fn https(&self) -> ClusterHttps {
        self.https
    }

    /// With HTTPS, what a client trusts and presents: the cluster CA and the `admin` client
    /// certificate.
    pub fn client_tls(&self) -> Option<crate::tls::ClientTlsFiles> {
        if self.https == ClusterHttps::Off {
            return None;
        }
        let folder = self.spec.data_dir.join("tls");
        let (certificate, private_key) = crate::tls::client_files(&folder, ADMIN_CLIENT);
        Some(crate::tls::ClientTlsFiles {
            ca_certificate: crate::tls::ca_files(&folder, false).0,
            certificate: Some(certificate),
            private_key: Some(private_key),
        })
    }

    /// The members.
    pub fn members(&self) -> &[LocalMember] {
        &self.members
    }

    /// Every member's HTTP endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(LocalMember::endpoint).collect()
    }

    /// A member's HTTP endpoint.
    pub fn endpoint(&self, id: u64) -> String {
        self.member(id).endpoint()
    }

    fn member(&self, id: u64) -> &LocalMember {
        &self.members[(id - 1) as usize]
    }

    /// Where member `id` logs.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.spec.data_dir.join(format!("node-{id}.log"))
    }

    /// The command line of member `id` (after the program name).
    pub fn args(&self, id: u64) -> Vec<String> {
        let member = self.member(id);
        let mut args = vec![
            "--id".to_string(),
            id.to_string(),
            "--initial-cluster".into(),
            member_list(&self.members, |m| m.peer_address),
            "--client-addresses".into(),
            member_list(&self.members, |m| m.client_address),
            "--data-dir".into(),
            node_dir(&self.spec.data_dir, id).display().to_string(),
            "--storage".into(),
            self.spec.storage.to_string(),
            "--transport".into(),
            self.spec.transport.to_string(),
        ];
        if self.spec.transport == TransportKind::Quic {
            args.push("--tls-dir".into());
            args.push(self.spec.data_dir.join("tls").display().to_string());
        }
        if self.https != ClusterHttps::Off {
            let folder = self.spec.data_dir.join("tls");
            let (certificate, private_key) = crate::tls::node_files(&folder, raft_core::NodeId(id));
            let ca = crate::tls::ca_files(&folder, false).0;
            let mut flag = |name: &str, path: &Path| {
                args.push(name.to_string());
                args.push(path.display().to_string());
            };
            flag("--http-tls-certificate", &certificate);
            flag("--http-tls-private-key", &private_key);
            flag("--http-tls-ca", &ca);
            if self.https == ClusterHttps::ClientCertificates {
                flag("--http-tls-client-ca", &ca);
            }
        }
        if member.joining {
            args.push("--join".into());
        }
        let extra = member.extra_args.as_ref().unwrap_or(&self.spec.extra_args);
        if !extra.iter().any(|flag| flag == "--worker-threads") {
            // Nodes that share the machine's cores run better without more threads than
            // cores: a thread per node on a 2-core machine raised 64-client write throughput
            // by about half over the default of one per core (fewer context switches).
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let threads = (cores / self.members.len()).max(1);
            args.push("--worker-threads".into());
            args.push(threads.to_string());
        }
        args.extend(extra.iter().cloned());
        args
    }

    /// Prepares a new member that joins the running cluster: free ports, a certificate
    /// (QUIC), `--join` in its flags. Returns its ID (the next after the last member); start
    /// it with [`LocalCluster::start_member`] and add it through the admin API.
    pub fn add_member(&mut self) -> io::Result<u64> {
        let id = self.members.len() as u64 + 1;
        let quic = self.spec.transport == TransportKind::Quic;
        let peer_port = free_ports(1, quic)?[0];
        let client_port = free_ports(1, false)?[0];
        let folder = self.spec.data_dir.join("tls");
        if quic || self.https != ClusterHttps::Off {
            raft_transport_quic::generate_node_certificate(&folder, raft_core::NodeId(id))
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        if self.https != ClusterHttps::Off {
            issue_local_https(&folder, &[raft_core::NodeId(id)], &[])?;
        }
        let scheme = self.https.scheme();
        self.members.push(LocalMember {
            id,
            scheme,
            peer_address: SocketAddr::from(([127, 0, 0, 1], peer_port)),
            client_address: SocketAddr::from(([127, 0, 0, 1], client_port)),
            extra_args: None,
            joining: true,
            child: None,
        });
        Ok(id)
    }

    /// Whether member `id` starts with `--join` from its next start on.
    pub fn set_joining(&mut self, id: u64, joining: bool) {
        self.members[(id - 1) as usize].joining = joining;
    }

    /// Replaces the spec's `extra_args` for member `id` from its next start on.
    pub fn set_member_args(&mut self, id: u64, extra_args: Vec<String>) {
        self.members[(id - 1) as usize].extra_args = Some(extra_args);
    }

    /// Starts member `id` (again), appending to its log.
    pub fn start_member(&mut self, id: u64) -> io::Result<()> {
        assert!(
            self.member(id).child.is_none(),
            "member {id} is already running"
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        let child = Command::new(&self.spec.kvnode)
            .args(self.args(id))
            .env("RUST_LOG", &self.spec.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()?;
        self.members[(id - 1) as usize].child = Some(child);
        Ok(())
    }

    /// Whether member `id` is running (started and not yet stopped).
    pub fn is_running(&self, id: u64) -> bool {
        self.member(id).child.is_some()
    }

    /// Kills member `id` with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self, id: u64) -> io::Result<()> {
        if let Some(mut child) = self.members[(id - 1) as usize].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops member `id` with SIGTERM and waits up to `grace` for it to exit (then SIGKILL).
    /// Returns its exit status.
    pub fn terminate(&mut self, id: u64, grace: Duration) -> io::Result<Option<ExitStatus>> {
        let Some(mut child) = self.members[(id - 1) as usize].child.take() else {
            return Ok(None);
        };
        send_sigterm(child.id())?;
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                child.kill()?;
                return Ok(Some(child.wait()?));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops every member gracefully (SIGTERM to all, then waits for each).
    pub fn stop(&mut self, grace: Duration) -> io::Result<Vec<(u64, Option<ExitStatus>)>> {
        for member in &self.members {
            if let Some(child) = &member.child {
                send_sigterm(child.id())?;
            }
        }
        let ids: Vec<u64> = self.members.iter().map(|m| m.id).collect();
        let mut statuses = Vec::new();
        for id in ids {
            statuses.push((id, self.terminate(id, grace)?));
        }
        Ok(statuses)
    }

    /// Waits until every running member answers `/readyz` with 200.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_member_ready(member.id, left).await?;
        }
        Ok(())
    }

    /// Waits until member `id` answers `/readyz` with 200, up to `timeout`; returns how long
    /// that took.
    pub async fn wait_member_ready(&self, id: u64, timeout: Duration) -> Result<Duration, String> {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(1));
        if let Some(tls) = self.client_tls() {
            http = crate::tls::configure_client(http, &tls).map_err(|e| e.to_string())?;
        }
        let http = http.build().map_err(|e| e.to_string())?;
        let started = Instant::now();
        let url = format!("{}/readyz", self.endpoint(id));
        loop {
            let ready = http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                return Err(format!(
                    "member {id} was not ready within {timeout:?}; its log is {}",
                    self.log_path(id).display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The tail of member `id`'s log (for test failures).
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Issues HTTPS certificates for `nodes` (127.0.0.1 and localhost) and `clients`, signed by the
/// cluster CA in `folder`.
fn issue_local_https(
    folder: &Path,
    nodes: &[raft_core::NodeId],
    clients: &[String],
) -> io::Result<()> {
    let hosts = vec![vec!["127.0.0.1".to_string(), "localhost".to_string()]; nodes.len()];
    crate::tls::issue_https_certificates(folder, false, true, nodes, &hosts, clients)
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Member `id`'s data folder.
pub fn node_dir(data_dir: &Path, id: u64) -> PathBuf {
    data_dir.join(format!("node-{id}"))
}

fn send_sigterm(pid: u32) -> io::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        // The process may have exited already; `wait` will tell.
        tracing::debug!(pid, "kill -TERM failed");
    }
    Ok(())
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
