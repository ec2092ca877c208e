//! raft-transport-tcp: a Raft [`Network`](raft_core::Network) over TCP, with optional mutual
//! TLS.
//!
//! - Frames and handshakes are those of [`raft_core::wire`]. Every connection opens with a
//!   handshake naming the cluster, the sender, the recipient and the lane; the listener refuses
//!   other clusters, unknown nodes and connections meant for someone else, then answers with its
//!   own handshake, which the dialler checks the same way. Every later message must come from
//!   the node the handshake named. A bad frame closes that connection only.
//! - A node a committed membership removed (`Network::removals_committed`) is answered with a
//!   [`Refusal`](raft_core::wire::Refusal) instead of a handshake, and its open connections
//!   close, so it learns of its removal (`Inbound::report_removed`) even when the entry never
//!   reached it.
//! - One outbound connection per peer and [`Lane`](raft_core::Lane): snapshot chunks have their
//!   own connection, so heartbeats never wait behind them. Connections are dialled when there is
//!   something to send and redialled after failures with exponential backoff and jitter; sockets
//!   use `TCP_NODELAY`, and frames queued together leave in one write.
//! - `send` never blocks: each peer has a bounded queue per lane (`send_queue_messages_max`,
//!   `snapshot_queue_messages_max`); a full queue answers `QueueFull` and Raft's retries recover.
//!   Received messages go to the node with `Inbound::deliver`, whose bounded inbox pushes back
//!   onto the connection.
//! - With [`TlsFiles`], both ends present certificates signed by the cluster's CA, naming each
//!   node as [`raft_core::wire::certificate_name`] says; the dialler checks it reached the node it
//!   meant and the listener checks the handshake's sender against the certificate.
//! - `inbound_connections_max` bounds the connections served at once, `handshake_timeout` how
//!   long a silent connection holds a slot, and `shutdown` closes everything and waits for every
//!   task it started.
//!
//! ```
//! use raft_core::wire::ClusterId;
//! use raft_core::{Inbound, Incarnation, Message, MessageBody, Network, NodeId, Term, LogIndex};
//! use raft_transport_tcp::{TcpConfig, TcpTransport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = ClusterId(7);
//! let localhost = "127.0.0.1:0".parse()?;
//! let one = TcpTransport::bind(TcpConfig::new(cluster, NodeId(1), localhost)).await?;
//! let mut two_config = TcpConfig::new(cluster, NodeId(2), localhost);
//! two_config.peers.insert(NodeId(1), one.local_addr());
//! let two = TcpTransport::bind(two_config).await?;
//! one.add_peer(NodeId(2), two.local_addr());
//!
//! let (inbound, mut inbox) = Inbound::channel(NodeId(1), 64);
//! one.start(inbound).await?;
//! two.start(Inbound::channel(NodeId(2), 64).0).await?;
//!
//! let heartbeat = Message {
//!     from: NodeId(2),
//!     to: NodeId(1),
//!     term: Term(1),
//!     incarnation: Incarnation(0),
//!     body: MessageBody::Heartbeat {
//!         commit: LogIndex(0),
//!         read_seq: 0,
//!         follower_incarnation: Incarnation(0),
//!     },
//! };
//! two.send(heartbeat.clone())?;
//! assert_eq!(inbox.recv().await, Some(heartbeat));
//!
//! two.shutdown().await;
//! one.shutdown().await;
//! assert_eq!(one.tasks_running(), 0);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod config;
mod tls;
mod transport;

pub use config::{TcpConfig, TlsFiles};
pub use transport::TcpTransport;
