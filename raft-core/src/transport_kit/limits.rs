//! Validation of the settings every transport shares: who the node is, the frame limit, the
//! queue and connection limits, and the timeouts and reconnect delays.

use crate::network::NetworkError;
use crate::wire;
use crate::NodeId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The shared settings of a transport, borrowed from its configuration for validation. Each
/// limit keeps the name of the configuration field it comes from, and refusals name it.
#[derive(Clone, Copy, Debug)]
pub struct SharedLimits<'a> {
    /// This node; 0 is reserved.
    pub node: NodeId,
    /// The configured peers; the node must not be one of them.
    pub peers: &'a HashMap<NodeId, SocketAddr>,
    /// `frame_bytes_max`: within [`wire::FRAME_BYTES_MAX_RANGE`].
    pub frame_bytes_max: usize,
    /// `send_queue_messages_max`: at least 1.
    pub send_queue_messages_max: usize,
    /// `snapshot_queue_messages_max`: at least 1.
    pub snapshot_queue_messages_max: usize,
    /// `write_batch_bytes_max`: at least 1.
    pub write_batch_bytes_max: usize,
    /// `inbound_connections_max`: at least 1.
    pub inbound_connections_max: usize,
    /// The transport's own counts that must be at least 1, by field name, checked after the
    /// shared ones.
    pub more_counts: &'a [(&'static str, usize)],
    /// `handshake_timeout`: above zero.
    pub handshake_timeout: Duration,
    /// `connect_timeout`: above zero.
    pub connect_timeout: Duration,
    /// `reconnect_delay_min`: above zero and at most `reconnect_delay_max`.
    pub reconnect_delay_min: Duration,
    /// `reconnect_delay_max`.
    pub reconnect_delay_max: Duration,
}

fn fail(why: String) -> Result<(), NetworkError> {
    Err(NetworkError(why))
}

impl SharedLimits<'_> {
    /// Every check below, in order: [`check_sizes`](Self::check_sizes),
    /// [`check_timeouts`](Self::check_timeouts), [`check_reconnect`](Self::check_reconnect). A
    /// transport with checks of its own calls the three with its own in between.
    pub fn validate(&self) -> Result<(), NetworkError> {
        self.check_sizes()?;
        self.check_timeouts()?;
        self.check_reconnect()
    }

    /// The node id, the peer list, the frame limit and every count.
    pub fn check_sizes(&self) -> Result<(), NetworkError> {
        if self.node == NodeId(0) {
            return fail("node id 0 is reserved".into());
        }
        if self.peers.contains_key(&self.node) {
            return fail(format!("{} lists itself as a peer", self.node));
        }
        if !wire::FRAME_BYTES_MAX_RANGE.contains(&self.frame_bytes_max) {
            return fail(format!(
                "frame_bytes_max {} is outside {:?}",
                self.frame_bytes_max,
                wire::FRAME_BYTES_MAX_RANGE
            ));
        }
        let counts = [
            ("send_queue_messages_max", self.send_queue_messages_max),
            (
                "snapshot_queue_messages_max",
                self.snapshot_queue_messages_max,
            ),
            ("write_batch_bytes_max", self.write_batch_bytes_max),
            ("inbound_connections_max", self.inbound_connections_max),
        ];
        for &(name, value) in counts.iter().chain(self.more_counts) {
            if value == 0 {
                return fail(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }

    /// `handshake_timeout` and `connect_timeout`.
    pub fn check_timeouts(&self) -> Result<(), NetworkError> {
        if self.handshake_timeout.is_zero() || self.connect_timeout.is_zero() {
            return fail("handshake_timeout and connect_timeout must be above zero".into());
        }
        Ok(())
    }

    /// `reconnect_delay_min` and `reconnect_delay_max`, as [`Backoff::new`] requires them.
    ///
    /// [`Backoff::new`]: super::Backoff::new
    pub fn check_reconnect(&self) -> Result<(), NetworkError> {
        if self.reconnect_delay_min.is_zero() || self.reconnect_delay_min > self.reconnect_delay_max
        {
            return fail(format!(
                "need 0 < reconnect_delay_min ({:?}) <= reconnect_delay_max ({:?})",
                self.reconnect_delay_min, self.reconnect_delay_max
            ));
        }
        Ok(())
    }
}
