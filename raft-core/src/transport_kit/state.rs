//! The state every transport keeps apart from its sockets: its peers and their queues, its
//! tasks, the shutdown signal, and whether it has started or been shut down.

use super::lanes::Peer;
use super::tasks::{Shutdown, Tasks};
use crate::membership::Membership;
use crate::network::{Inbound, NetworkError, SendError};
use crate::{Lane, Message, NodeId};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// A transport's peers, tasks and lifecycle, whatever carries its bytes. `L` is what the
/// transport's writers need to reach a peer (an address, a shared connection).
///
/// The lifecycle: built at bind time, [`mark_started`](Self::mark_started) at `start`, after
/// which peers added get their writers at once; [`begin_shutdown`](Self::begin_shutdown) makes
/// `send` answer `Closed` and signals every task, and [`close_tasks`](Self::close_tasks) waits
/// for them.
pub struct TransportCore<L> {
    node: NodeId,
    frame_bytes_max: usize,
    send_queue_messages_max: usize,
    snapshot_queue_messages_max: usize,
    /// Invariant: holds no entry for `node`.
    peers: Mutex<HashMap<NodeId, Peer<L>>>,
    /// The nodes a committed membership removed ([`Self::set_removed`]): refused as removed.
    removed: Mutex<BTreeSet<NodeId>>,
    /// How many nodes `removed` holds: lets a connection's reader notice a removal with one
    /// atomic load per message ([`Self::removed_since`]).
    removed_count: AtomicUsize,
    /// The node's inbound handle, kept at start for reports ([`Self::report_removed`]).
    inbound: OnceLock<Inbound>,
    /// Whether a peer reported this node removed yet (it is warned of once).
    removal_reported: AtomicBool,
    /// Every task the transport started.
    pub tasks: Tasks,
    /// The shutdown signal; each task watches a clone.
    pub shutdown: Shutdown,
    stop: watch::Sender<bool>,
    started: AtomicBool,
    closed: AtomicBool,
}

impl<L> TransportCore<L> {
    /// The state of node `node`'s transport, with no peers yet, whose tasks run on the current
    /// tokio runtime. Messages over `frame_bytes_max` are refused; each peer gets queues of
    /// `send_queue_messages_max` ordinary and `snapshot_queue_messages_max` snapshot frames.
    pub fn new(
        node: NodeId,
        frame_bytes_max: usize,
        send_queue_messages_max: usize,
        snapshot_queue_messages_max: usize,
    ) -> TransportCore<L> {
        let (stop, shutdown) = Shutdown::channel();
        TransportCore {
            node,
            frame_bytes_max,
            send_queue_messages_max,
            snapshot_queue_messages_max,
            peers: Mutex::new(HashMap::new()),
            removed: Mutex::new(BTreeSet::new()),
            removed_count: AtomicUsize::new(0),
            inbound: OnceLock::new(),
            removal_reported: AtomicBool::new(false),
            tasks: Tasks::new(tokio::runtime::Handle::current()),
            shutdown,
            stop,
            started: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    fn peers(&self) -> MutexGuard<'_, HashMap<NodeId, Peer<L>>> {
        self.peers.lock().expect("peers lock")
    }

    /// Checks that `inbound` delivers to this node, as `Network::start` requires, and keeps
    /// it for [`Self::report_removed`].
    pub fn check_inbound(&self, inbound: &Inbound) -> Result<(), NetworkError> {
        if inbound.local_id() != self.node {
            return Err(NetworkError(format!(
                "inbound delivers to {}, this transport is {}",
                inbound.local_id(),
                self.node
            )));
        }
        let _ = self.inbound.set(inbound.clone());
        Ok(())
    }

    /// Records the nodes a committed membership removed (`Network::removals_committed`):
    /// from now on the transport refuses each as removed, and drops it as a peer.
    pub fn set_removed(&self, removed: &BTreeSet<NodeId>) -> Vec<Peer<L>> {
        let mut known = self.removed.lock().expect("removed lock");
        let mut dropped = Vec::new();
        for &node in removed {
            if node != self.node && known.insert(node) {
                tracing::info!(local = %self.node, peer = %node,
                    "a committed membership removed this peer: it is refused as removed");
                dropped.extend(self.remove_peer(node));
            }
        }
        self.removed_count.store(known.len(), Ordering::Release);
        dropped
    }

    /// For the reader of a connection from `peer`: whether `peer` was removed since the
    /// reader last looked (`seen`, which starts at 0 and is updated). An established
    /// connection from a node that is then removed must close, so that its next dial is
    /// refused as removed.
    pub fn removed_since(&self, seen: &mut usize, peer: NodeId) -> bool {
        let count = self.removed_count.load(Ordering::Acquire);
        if count == *seen {
            return false;
        }
        *seen = count;
        self.is_removed(peer)
    }

    /// Whether a committed membership removed `node`.
    pub fn is_removed(&self, node: NodeId) -> bool {
        self.removed.lock().expect("removed lock").contains(&node)
    }

    /// `peer` refused this node as removed: tells the node (once started), with a warning
    /// the first time.
    pub fn report_removed(&self, peer: NodeId) {
        if !self.removal_reported.swap(true, Ordering::AcqRel) {
            tracing::warn!(local = %self.node, %peer,
                "a member refused this node: its committed membership removed it");
        }
        if let Some(inbound) = self.inbound.get() {
            inbound.report_removed(peer);
        }
    }

    /// Records that the transport started; answers whether it had started already.
    pub fn mark_started(&self) -> bool {
        self.started.swap(true, Ordering::AcqRel)
    }

    /// Starts the writers of every peer that has none yet, with `start` (see
    /// [`Peer::start_writers`]).
    pub fn start_writers(&self, mut start: impl FnMut(NodeId, &mut Peer<L>)) {
        for (&node, peer) in self.peers().iter_mut() {
            start(node, peer);
        }
    }

    /// Adds `node`, reached through `link`, answering the peer it replaces (whose writers the
    /// caller stops). If the transport has started, `start` starts the new peer's writers first.
    /// This node itself is refused with a warning.
    pub fn add_peer(
        &self,
        node: NodeId,
        link: L,
        start: impl FnOnce(&mut Peer<L>),
    ) -> Option<Peer<L>> {
        if node == self.node {
            tracing::warn!(%node, "refusing to add this node as its own peer");
            return None;
        }
        let mut peer = Peer::new(
            link,
            self.send_queue_messages_max,
            self.snapshot_queue_messages_max,
        );
        if self.started.load(Ordering::Acquire) {
            start(&mut peer);
        }
        self.peers().insert(node, peer)
    }

    /// Removes `node`, answering its peer.
    pub fn remove_peer(&self, node: NodeId) -> Option<Peer<L>> {
        self.peers().remove(&node)
    }

    /// Removes every peer, answering them.
    pub fn drain_peers(&self) -> Vec<Peer<L>> {
        self.peers().drain().map(|(_, peer)| peer).collect()
    }

    /// Whether `node` is a peer.
    pub fn is_peer(&self, node: NodeId) -> bool {
        self.peers().contains_key(&node)
    }

    /// What `read` makes of `node`'s link, if it is a peer.
    pub fn peer_link<R>(&self, node: NodeId, read: impl FnOnce(&L) -> R) -> Option<R> {
        self.peers().get(&node).map(|peer| read(&peer.link))
    }

    /// Brings the peers in step with `membership` (see [`member_changes`](Self::member_changes)):
    /// `add` (re)adds a peer at an address, `remove` drops one; both are the transport's own.
    pub fn follow_members(
        &self,
        membership: &Membership,
        address: impl Fn(&L) -> SocketAddr,
        add: impl Fn(NodeId, SocketAddr),
        remove: impl Fn(NodeId),
    ) {
        let (added, removed) = self.member_changes(membership, address);
        for (node, address) in added {
            tracing::info!(local = %self.node, peer = %node, %address,
                "reaching a member at its recorded address");
            add(node, address);
        }
        for node in removed {
            tracing::info!(local = %self.node, peer = %node, "no longer reaching a removed member");
            remove(node);
        }
    }

    /// The peers to add (or re-address) and to remove so that this transport reaches every
    /// member whose address `membership` records, and no removed node (see
    /// [`crate::Network::members_changed`]). `address` reads a peer's current address from its
    /// link. Peers the membership says nothing of (given at start) are kept. An address that
    /// is not `ip:port` is skipped with a warning.
    pub fn member_changes(
        &self,
        membership: &Membership,
        address: impl Fn(&L) -> SocketAddr,
    ) -> (Vec<(NodeId, SocketAddr)>, Vec<NodeId>) {
        let mut add = Vec::new();
        for (&id, meta) in &membership.nodes {
            if id == self.node || meta.address.is_empty() {
                continue;
            }
            let Ok(wanted) = meta.address.parse::<SocketAddr>() else {
                tracing::warn!(local = %self.node, peer = %id, address = %meta.address,
                    "a member's address is not ip:port; it cannot be reached from here");
                continue;
            };
            if self.peer_link(id, &address) != Some(wanted) {
                add.push((id, wanted));
            }
        }
        let remove = membership
            .removed
            .iter()
            .copied()
            .filter(|id| self.is_peer(*id))
            .collect();
        (add, remove)
    }

    /// Encodes `message` and queues it on `lane` for its recipient without waiting (see
    /// [`enqueue`](super::enqueue)); the table is locked only to find the queue.
    pub fn send_on(&self, lane: Lane, message: &Message) -> Result<(), SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let to = message.to;
        let queue = {
            let peers = self.peers();
            let peer = peers.get(&to).ok_or(SendError::UnknownPeer { to })?;
            peer.queues.sender(lane)
        };
        super::enqueue(&queue, message, self.frame_bytes_max)
    }

    /// Makes `send` answer `Closed` from now on and signals every task to stop.
    pub fn begin_shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        self.stop.send_replace(true);
    }

    /// Waits up to `grace` for the tasks to stop, then aborts the rest (see [`Tasks::close`]).
    pub async fn close_tasks(&self, grace: Duration) {
        self.tasks.close(grace).await;
    }
}
