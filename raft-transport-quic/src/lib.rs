//! raft-transport-quic: a Raft [`Network`](raft_core::Network) over QUIC (quinn), always
//! encrypted and mutually authenticated.
//!
//! - Every node presents a certificate signed by the cluster's CA that names it as
//!   [`raft_core::wire::certificate_name`] says. The dialler asks for the peer's name, so it only
//!   ever talks to the node it meant; the listener checks each stream's handshake (cluster,
//!   sender, recipient, lane) and that the certificate names the sender, and every message on
//!   the stream must come from that sender. A bad frame closes the connection; the node runs on.
//! - A node a committed membership removed (`Network::removals_committed`) has its connections
//!   closed with an application code of their own, which its dialler reads as its removal
//!   (`Inbound::report_removed`), even when the entry never reached it.
//! - One outbound connection per peer, dialled when the first message for it is queued and
//!   redialled with exponential backoff and jitter. On it, a long-lived stream per
//!   [`Lane`](raft_core::Lane) keeps each lane in order; the ordinary stream has priority and its
//!   own flow-control window, so a large snapshot never delays a heartbeat.
//! - A peer that crashes and restarts on the same address is reached again at once, not after
//!   `idle_timeout`: the stateless reset key derives from the node's private key, so the
//!   restarted node's answer to a packet of an old connection closes it and the sender redials;
//!   a peer restarted with a new key is recognised by its new certificate when it dials.
//! - `send` never blocks: each peer has a bounded queue per lane (`send_queue_messages_max`,
//!   `snapshot_queue_messages_max`); a full queue answers `QueueFull`. Received messages go to
//!   the node with `Inbound::deliver`, whose bounded inbox pushes back onto the stream.
//! - `inbound_connections_max` bounds connections (more are refused), `inbound_streams_max` the
//!   streams per connection, `handshake_timeout` how long a connection may stay silent, and
//!   `shutdown` closes the endpoint and waits for every task it started.
//! - [`generate_cluster_certificates`] writes a CA and node certificates for local use;
//!   production points [`TlsFiles`] at its own PEM files.
//!
//! ```
//! use raft_core::wire::ClusterId;
//! use raft_core::{Inbound, Incarnation, LogIndex, Message, MessageBody, Network, NodeId, Term};
//! use raft_transport_quic::{generate_cluster_certificates, QuicConfig, QuicTransport, TlsFiles};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let folder = std::env::temp_dir().join(format!("raft-quic-doc-{}", std::process::id()));
//! generate_cluster_certificates(&folder, &[NodeId(1), NodeId(2)])?;
//!
//! let cluster = ClusterId(7);
//! let localhost = "127.0.0.1:0".parse()?;
//! let config = |node| QuicConfig::new(cluster, node, localhost, TlsFiles::in_folder(&folder, node));
//! let one = QuicTransport::bind(config(NodeId(1))).await?;
//! let two = QuicTransport::bind(config(NodeId(2))).await?;
//! one.add_peer(NodeId(2), two.local_addr());
//! two.add_peer(NodeId(1), one.local_addr());
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
//! std::fs::remove_dir_all(&folder)?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod config;
mod pki;
mod restart;
mod transport;

pub use config::QuicConfig;
pub use pki::{generate_cluster_certificates, generate_node_certificate, TlsFiles, ALPN};
pub use transport::QuicTransport;
