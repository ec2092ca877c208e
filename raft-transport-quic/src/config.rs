//! The transport's settings: addresses, identity, and a named limit for every queue, frame,
//! stream and connection.

use crate::pki::TlsFiles;
use raft_core::transport_kit::SharedLimits;
use raft_core::wire::ClusterId;
use raft_core::{NetworkError, NodeId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Settings of one node's QUIC transport. Build with [`QuicConfig::new`], adjust fields; the
/// transport validates them when it binds.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// The cluster; streams opening with another cluster's handshake are refused.
    pub cluster: ClusterId,
    /// This node.
    pub node: NodeId,
    /// The UDP address to listen on (port 0: the OS chooses).
    pub listen: SocketAddr,
    /// The peers and their addresses at start. More can be added and removed at run time.
    pub peers: HashMap<NodeId, SocketAddr>,
    /// This node's certificate, key and the cluster CA (always required: QUIC is always
    /// encrypted and both ends authenticate).
    pub tls: TlsFiles,
    /// Largest frame sent or accepted, length field included.
    pub frame_bytes_max: usize,
    /// Ordinary-lane messages queued per peer; past it `send` answers `QueueFull`.
    pub send_queue_messages_max: usize,
    /// Snapshot-lane messages queued per peer.
    pub snapshot_queue_messages_max: usize,
    /// Bytes of queued frames handed to the stream in one write.
    pub write_batch_bytes_max: usize,
    /// Inbound connections served at once; more are refused.
    pub inbound_connections_max: usize,
    /// Streams a peer may have open toward this node on one connection at once.
    pub inbound_streams_max: u32,
    /// How long a new connection may take to open its first stream with a valid handshake,
    /// and any later stream to present its handshake.
    pub handshake_timeout: Duration,
    /// How long dialling a peer may take (the QUIC and TLS handshakes).
    pub connect_timeout: Duration,
    /// A connection with no packet from the peer for this long is considered dead. A peer that
    /// crashes and restarts on its address is noticed long before (see the crate docs); this
    /// bounds how long a peer that vanished for good, or a partition, goes unnoticed.
    pub idle_timeout: Duration,
    /// How often to send a keep-alive on a quiet connection; below `idle_timeout`.
    pub keep_alive_interval: Duration,
    /// First wait before redialling a peer after a failure.
    pub reconnect_delay_min: Duration,
    /// Longest wait between redials; the wait doubles up to it, with jitter. Keep it below
    /// the election timeout: messages (votes too) wait for the redial.
    pub reconnect_delay_max: Duration,
    /// How long `shutdown` lets tasks finish on their own before aborting them.
    pub shutdown_grace: Duration,
}

impl QuicConfig {
    /// Defaults for node `node` of `cluster` on `listen` with identity `tls`, no peers yet.
    pub fn new(cluster: ClusterId, node: NodeId, listen: SocketAddr, tls: TlsFiles) -> QuicConfig {
        QuicConfig {
            cluster,
            node,
            listen,
            peers: HashMap::new(),
            tls,
            frame_bytes_max: 16 << 20,
            send_queue_messages_max: 1024,
            snapshot_queue_messages_max: 16,
            write_batch_bytes_max: 256 << 10,
            inbound_connections_max: 256,
            inbound_streams_max: 8,
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(2),
            reconnect_delay_min: Duration::from_millis(20),
            // Below the default minimum election timeout (150 ms): a restarted peer is
            // redialled before the cluster would elect without it (etcd redials every 100 ms).
            reconnect_delay_max: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(2),
        }
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), NetworkError> {
        let shared = SharedLimits {
            node: self.node,
            peers: &self.peers,
            frame_bytes_max: self.frame_bytes_max,
            send_queue_messages_max: self.send_queue_messages_max,
            snapshot_queue_messages_max: self.snapshot_queue_messages_max,
            write_batch_bytes_max: self.write_batch_bytes_max,
            inbound_connections_max: self.inbound_connections_max,
            more_counts: &[("inbound_streams_max", self.inbound_streams_max as usize)],
            handshake_timeout: self.handshake_timeout,
            connect_timeout: self.connect_timeout,
            reconnect_delay_min: self.reconnect_delay_min,
            reconnect_delay_max: self.reconnect_delay_max,
        };
        shared.check_sizes()?;
        if self.inbound_streams_max < 2 {
            return Err(NetworkError(
                "inbound_streams_max must be at least 2: one stream per lane".into(),
            ));
        }
        shared.check_timeouts()?;
        if self.keep_alive_interval.is_zero() || self.keep_alive_interval >= self.idle_timeout {
            return Err(NetworkError(format!(
                "need 0 < keep_alive_interval ({:?}) < idle_timeout ({:?})",
                self.keep_alive_interval, self.idle_timeout
            )));
        }
        shared.check_reconnect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults pass, and each kind of bad value is named in the refusal.
    #[test]
    fn validation_names_the_bad_setting() {
        let tls = TlsFiles::in_folder(std::path::Path::new("/unused"), NodeId(1));
        let address = "127.0.0.1:0".parse().unwrap();
        let base = QuicConfig::new(ClusterId(1), NodeId(1), address, tls);
        assert!(base.validate().is_ok());
        let mut config = base.clone();
        config.frame_bytes_max = usize::MAX;
        assert!(config.validate().unwrap_err().0.contains("frame_bytes_max"));
        let mut config = base.clone();
        config.inbound_streams_max = 1;
        assert!(config
            .validate()
            .unwrap_err()
            .0
            .contains("inbound_streams_max"));
        let mut config = base.clone();
        config.keep_alive_interval = config.idle_timeout;
        assert!(config
            .validate()
            .unwrap_err()
            .0
            .contains("keep_alive_interval"));
        let mut config = base;
        config.snapshot_queue_messages_max = 0;
        assert!(config
            .validate()
            .unwrap_err()
            .0
            .contains("snapshot_queue_messages_max"));
    }
}
