//! The `Network` trait: how a node's messages reach its peers, and how theirs reach it.

use crate::message::Message;
use crate::types::NodeId;
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Why a message could not be queued for sending. Raft retries on its own (heartbeats, probes,
/// resent appends), so a dropped message costs time, never safety.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The peer's send queue is at its limit.
    QueueFull {
        /// The peer.
        to: NodeId,
    },
    /// The encoded message is over the transport's frame limit.
    TooLarge {
        /// The message's encoded size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The transport knows no address for the peer.
    UnknownPeer {
        /// The peer.
        to: NodeId,
    },
    /// The transport is shut down.
    Closed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::QueueFull { to } => write!(f, "send queue to {to} is full"),
            SendError::TooLarge { bytes, limit } => {
                write!(
                    f,
                    "message of {bytes} bytes is over the {limit}-byte frame limit"
                )
            }
            SendError::UnknownPeer { to } => write!(f, "no address is known for peer {to}"),
            SendError::Closed => write!(f, "the transport is shut down"),
        }
    }
}

impl std::error::Error for SendError {}

/// A failure to start a transport (binding a socket, loading certificates, ...).
#[derive(Debug)]
pub struct NetworkError(pub String);

impl fmt::Display for NetworkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "network error: {}", self.0)
    }
}

impl std::error::Error for NetworkError {}

/// Why an inbound message was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverError {
    /// The message is addressed to another node.
    WrongRecipient {
        /// This node.
        local: NodeId,
        /// Whom the message was for.
        to: NodeId,
    },
    /// The node's inbox is at its limit (only from `try_deliver`).
    InboxFull,
    /// The node has shut down.
    Closed,
}

impl fmt::Display for DeliverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliverError::WrongRecipient { local, to } => {
                write!(f, "message for {to} reached node {local}")
            }
            DeliverError::InboxFull => write!(f, "the node's inbox is full"),
            DeliverError::Closed => write!(f, "the node has shut down"),
        }
    }
}

impl std::error::Error for DeliverError {}

/// The handle through which a transport hands received messages to its node. Cheap to clone;
/// backed by a bounded queue (`Config::inbox_messages_max`).
#[derive(Clone, Debug)]
pub struct Inbound {
    local: NodeId,
    sender: mpsc::Sender<Message>,
    /// The first peer that said this node was removed ([`Inbound::report_removed`]).
    removed_by: Arc<watch::Sender<Option<NodeId>>>,
}

impl Inbound {
    /// Creates a handle and the receiving end the node reads from.
    pub fn channel(local: NodeId, messages_max: usize) -> (Inbound, mpsc::Receiver<Message>) {
        assert!(
            messages_max > 0,
            "an inbox needs room for at least one message"
        );
        let (sender, receiver) = mpsc::channel(messages_max);
        let (removed_by, _) = watch::channel(None);
        let inbound = Inbound {
            local,
            sender,
            removed_by: Arc::new(removed_by),
        };
        (inbound, receiver)
    }

    /// Tells the node that `peer` refused it as a member its committed membership removed
    /// (see [`Network::removals_committed`]): the node learns of its removal even when the
    /// entry that removed it never reached it. The first report is kept; later ones change
    /// nothing. A transport calls it only for a refusal that came from `peer` itself (the
    /// node it dialled, in this cluster).
    pub fn report_removed(&self, peer: NodeId) {
        self.removed_by.send_if_modified(|by| {
            let first = by.is_none();
            by.get_or_insert(peer);
            first
        });
    }

    /// The peer that reported this node removed, if one did, as a watch.
    pub fn removal_reports(&self) -> watch::Receiver<Option<NodeId>> {
        self.removed_by.subscribe()
    }

    /// The node this handle delivers to.
    pub fn local_id(&self) -> NodeId {
        self.local
    }

    /// Delivers a message, waiting while the inbox is full (backpressure onto the connection).
    pub async fn deliver(&self, message: Message) -> Result<(), DeliverError> {
        self.check(&message)?;
        self.sender
            .send(message)
            .await
            .map_err(|_| DeliverError::Closed)
    }

    /// Delivers a message if there is room now, or drops it.
    pub fn try_deliver(&self, message: Message) -> Result<(), DeliverError> {
        self.check(&message)?;
        self.sender.try_send(message).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => DeliverError::InboxFull,
            mpsc::error::TrySendError::Closed(_) => DeliverError::Closed,
        })
    }

    fn check(&self, message: &Message) -> Result<(), DeliverError> {
        if message.to != self.local {
            return Err(DeliverError::WrongRecipient {
                local: self.local,
                to: message.to,
            });
        }
        Ok(())
    }
}

/// A transport between the members of one cluster.
///
/// The runtime calls `start` once, then `send` from its event loop, then `shutdown`. Messages to
/// one peer on one [`Lane`](crate::message::Lane) must arrive in the order sent, or not at all;
/// duplicates and losses are tolerated by the protocol. The contract is checked by
/// `raft_core::testkit::network_suite` (feature `testkit`).
#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// Starts delivering this node's incoming messages to `inbound`. Called once, before any
    /// `send`.
    async fn start(&self, inbound: Inbound) -> Result<(), NetworkError>;

    /// Queues `message` for `message.to`. Must not block: when the message cannot be queued it
    /// is dropped and the reason returned.
    fn send(&self, message: Message) -> Result<(), SendError>;

    /// Closes every connection and ends every task the transport started.
    async fn shutdown(&self);

    /// The membership in force changed (and once at start): reach every member whose
    /// [`crate::membership::NodeMeta::address`] it records, at that address, and stop
    /// reaching removed nodes. The runtime calls it from its event loop: it must not block.
    /// The default does nothing, for transports whose peers are fixed or found otherwise.
    fn members_changed(&self, membership: &crate::membership::Membership) {
        let _ = membership;
    }

    /// The nodes a committed membership records as removed (all of them, each time the set
    /// grows; removals are final). A transport should refuse them in a way that reaches them
    /// as a removal ([`Inbound::report_removed`] on their side), as etcd answers a removed
    /// member 410 Gone, so a node whose removal never reached it learns of it and says so.
    /// The default does nothing.
    fn removals_committed(&self, removed: &BTreeSet<NodeId>) {
        let _ = removed;
    }
}
