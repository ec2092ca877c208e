//! The transport's settings: addresses, and a named limit for every queue, frame and connection.

use raft_core::transport_kit::SharedLimits;
use raft_core::wire::ClusterId;
use raft_core::{NetworkError, NodeId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of one node's TCP transport. Build with [`TcpConfig::new`], adjust fields; the
/// transport validates them when it binds.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// The cluster; connections from any other are refused.
    pub cluster: ClusterId,
    /// This node.
    pub node: NodeId,
    /// Where to listen for peers (port 0: the OS chooses).
    pub listen: SocketAddr,
    /// The peers and their addresses at start. More can be added and removed at run time.
    pub peers: HashMap<NodeId, SocketAddr>,
    /// Largest frame sent or accepted, length field included. A message over it is refused by
    /// `send`; a peer announcing a larger frame is disconnected.
    pub frame_bytes_max: usize,
    /// Ordinary-lane messages queued per peer; past it `send` answers `QueueFull`.
    pub send_queue_messages_max: usize,
    /// Snapshot-lane messages queued per peer (they are large, so the default is small).
    pub snapshot_queue_messages_max: usize,
    /// Bytes of queued frames gathered into one write before it is flushed.
    pub write_batch_bytes_max: usize,
    /// Inbound connections served at once; further peers wait in the listen backlog.
    pub inbound_connections_max: usize,
    /// How long a new connection may take to present its handshake (and TLS handshake).
    pub handshake_timeout: Duration,
    /// How long dialling a peer may take, TLS and handshake included.
    pub connect_timeout: Duration,
    /// First wait before redialling a peer after a failure.
    pub reconnect_delay_min: Duration,
    /// Longest wait between redials; the wait doubles from the minimum up to it, with jitter.
    /// Keep it below the election timeout: messages (votes too) wait for the redial.
    pub reconnect_delay_max: Duration,
    /// How long `shutdown` lets tasks finish on their own before aborting them.
    pub shutdown_grace: Duration,
    /// Mutual TLS, or plain TCP when `None`.
    pub tls: Option<TlsFiles>,
}

/// The PEM files of a node's TLS identity: the cluster's certificate authority, this node's
/// certificate (naming it as [`raft_core::wire::certificate_name`] says) and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate: peers must present a certificate it signed.
    pub ca_certificate: PathBuf,
    /// This node's certificate chain, leaf first.
    pub certificate: PathBuf,
    /// This node's private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

impl TcpConfig {
    /// Defaults for node `node` of `cluster` listening on `listen`, with no peers yet.
    pub fn new(cluster: ClusterId, node: NodeId, listen: SocketAddr) -> TcpConfig {
        TcpConfig {
            cluster,
            node,
            listen,
            peers: HashMap::new(),
            frame_bytes_max: 16 << 20,
            send_queue_messages_max: 1024,
            snapshot_queue_messages_max: 16,
            write_batch_bytes_max: 256 << 10,
            inbound_connections_max: 256,
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reconnect_delay_min: Duration::from_millis(20),
            // Below the default minimum election timeout (150 ms): a restarted peer is
            // redialled before the cluster would elect without it (etcd redials every 100 ms).
            reconnect_delay_max: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(2),
            tls: None,
        }
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), NetworkError> {
        SharedLimits {
            node: self.node,
            peers: &self.peers,
            frame_bytes_max: self.frame_bytes_max,
            send_queue_messages_max: self.send_queue_messages_max,
            snapshot_queue_messages_max: self.snapshot_queue_messages_max,
            write_batch_bytes_max: self.write_batch_bytes_max,
            inbound_connections_max: self.inbound_connections_max,
            more_counts: &[],
            handshake_timeout: self.handshake_timeout,
            connect_timeout: self.connect_timeout,
            reconnect_delay_min: self.reconnect_delay_min,
            reconnect_delay_max: self.reconnect_delay_max,
        }
        .validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults pass, and each kind of bad value is named in the refusal.
    #[test]
    fn validation_names_the_bad_setting() {
        let base = TcpConfig::new(ClusterId(1), NodeId(1), "127.0.0.1:0".parse().unwrap());
        assert!(base.validate().is_ok());
        let mut config = base.clone();
        config.frame_bytes_max = 8;
        assert!(config.validate().unwrap_err().0.contains("frame_bytes_max"));
        let mut config = base.clone();
        config.send_queue_messages_max = 0;
        assert!(config
            .validate()
            .unwrap_err()
            .0
            .contains("send_queue_messages_max"));
        let mut config = base.clone();
        config.inbound_connections_max = 0;
        assert!(config
            .validate()
            .unwrap_err()
            .0
            .contains("inbound_connections_max"));
        let mut config = base.clone();
        config.reconnect_delay_min = Duration::from_secs(5);
        assert!(config
            .validate()
            .unwrap_err()
            .0
            .contains("reconnect_delay_min"));
        let mut config = base;
        config
            .peers
            .insert(NodeId(1), "127.0.0.1:1".parse().unwrap());
        assert!(config.validate().unwrap_err().0.contains("itself"));
    }
}
