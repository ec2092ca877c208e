//! Where each member is reached, and keeping the transport's peers in step with membership.
//!
//! Both transports refuse connections from nodes they do not know and can only dial peers
//! they have an address for, so a node added at run time must become known to every member.
//! The addresses come from two places:
//! - the flags (`--initial-cluster`, `--client-addresses`): the members a node was started
//!   with;
//! - the replicated state: `POST /v1/members` first commits a
//!   [`SetMemberAddress`](crate::command::Command::SetMemberAddress) command, which every node
//!   applies (and which snapshots carry), and only then adds the learner. Applying it calls
//!   [`AddressBook::set`], which adds the peer to this node's transport. A RocksDB node reads
//!   the addresses back from its state when it restarts, before binding its transport.
//!
//! When the replicated address and a flag disagree, the replicated one wins: it is newer.
//! A node removed from the cluster is removed from the transport once the membership that
//! removes it is committed ([`AddressBook::forget`]), and never added again: IDs are never
//! reused.
//!
//! Restrictions:
//! - A member's address is set when it is added; moving a member to another address means
//!   removing it and adding a node under a new ID.
//! - A node with memory storage restarts empty, so until it has replayed the log it knows
//!   only the addresses in its flags, and a leader it does not know is refused. Restart it
//!   with every current member in `--initial-cluster`, and with `--join` once the voters
//!   differ from the cluster's first ones (its empty log must not make it believe the old
//!   voters). RocksDB nodes need neither.
//! - A removed node does not always learn that it was removed (the entry that removes it may
//!   never reach it). Until its process is stopped it keeps trying to reach the others, which
//!   refuse it (a warning in their logs each time).

use crate::config::Member;
use crate::snapshot::MemberAddress;
use raft_core::NodeId;
use raft_transport_quic::QuicTransport;
use raft_transport_tcp::TcpTransport;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};

/// The concrete transport, for the peer changes the `Network` trait does not carry.
#[derive(Clone)]
pub enum PeerTransport {
    /// The TCP transport.
    Tcp(Arc<TcpTransport>),
    /// The QUIC transport.
    Quic(Arc<QuicTransport>),
}

impl PeerTransport {
    fn add_peer(&self, id: u64, address: SocketAddr) {
        match self {
            PeerTransport::Tcp(transport) => transport.add_peer(NodeId(id), address),
            PeerTransport::Quic(transport) => transport.add_peer(NodeId(id), address),
        }
    }

    fn remove_peer(&self, id: u64) {
        match self {
            PeerTransport::Tcp(transport) => transport.remove_peer(NodeId(id)),
            PeerTransport::Quic(transport) => transport.remove_peer(NodeId(id)),
        }
    }
}

/// Every member's addresses as this node knows them.
///
/// Invariant: once attached, the transport knows exactly the peers in `entries` other than
/// this node and the removed ones, at the addresses `entries` holds.
pub struct AddressBook {
    me: u64,
    entries: RwLock<BTreeMap<u64, MemberAddress>>,
    removed: RwLock<BTreeSet<u64>>,
    transport: OnceLock<PeerTransport>,
}

impl std::fmt::Debug for AddressBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressBook")
            .field("me", &self.me)
            .field("entries", &self.all())
            .finish()
    }
}

impl AddressBook {
    /// The book of node `me`: the configured members, then the replicated addresses over
    /// them.
    pub fn new(
        me: u64,
        configured: &[Member],
        replicated: BTreeMap<u64, MemberAddress>,
    ) -> AddressBook {
        let mut entries: BTreeMap<u64, MemberAddress> = configured
            .iter()
            .map(|member| {
                let address = MemberAddress {
                    peer_address: member.peer_address,
                    client_address: member.client_address,
                };
                (member.id, address)
            })
            .collect();
        for (id, address) in replicated {
            let entry = entries.entry(id).or_insert_with(|| address.clone());
            entry.peer_address = address.peer_address;
            // A replicated record without a client address keeps the configured one.
            entry.client_address = address.client_address.or(entry.client_address);
        }
        AddressBook {
            me,
            entries: RwLock::new(entries),
            removed: RwLock::new(BTreeSet::new()),
            transport: OnceLock::new(),
        }
    }

    /// The transport's peers: every member but this node.
    pub fn peers(&self) -> HashMap<NodeId, SocketAddr> {
        self.all()
            .into_iter()
            .filter(|(id, _)| *id != self.me)
            .map(|(id, address)| (NodeId(id), address.peer_address))
            .collect()
    }

    /// Attaches the transport bound with [`AddressBook::peers`]; later changes reach it.
    pub fn attach(&self, transport: PeerTransport) {
        if self.transport.set(transport).is_err() {
            panic!("the address book's transport is attached once");
        }
    }

    /// Records member `id`'s address (from the replicated state) and adds or moves the peer
    /// in the transport when its peer address is new.
    pub fn set(&self, id: u64, address: &MemberAddress) {
        let peer_changed = {
            let mut entries = self.entries.write().expect("address book lock");
            let previous = entries.insert(id, address.clone());
            previous.is_none_or(|p| p.peer_address != address.peer_address)
        };
        let removed = self.removed.read().expect("removed lock").contains(&id);
        if peer_changed && id != self.me && !removed {
            if let Some(transport) = self.transport.get() {
                tracing::info!(member = id, peer_address = %address.peer_address,
                    "member address known: added to the transport");
                transport.add_peer(id, address.peer_address);
            }
        }
    }

    /// Member `id` left the cluster: the transport drops it (its connections close, and its
    /// messages are refused from now on).
    pub fn forget(&self, id: u64) {
        if id == self.me || !self.removed.write().expect("removed lock").insert(id) {
            return;
        }
        if let Some(transport) = self.transport.get() {
            tracing::info!(member = id, "member removed: dropped from the transport");
            transport.remove_peer(id);
        }
    }

    /// Member `id`'s addresses, if known.
    pub fn get(&self, id: u64) -> Option<MemberAddress> {
        self.entries
            .read()
            .expect("address book lock")
            .get(&id)
            .cloned()
    }

    /// Every known address, removed members included.
    pub fn all(&self) -> BTreeMap<u64, MemberAddress> {
        self.entries.read().expect("address book lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(port: u16) -> MemberAddress {
        MemberAddress {
            peer_address: SocketAddr::from(([127, 0, 0, 1], port)),
            client_address: None,
        }
    }

    /// Replicated addresses win over flags, this node is never its own peer, and a removed
    /// member is not added back.
    #[test]
    fn replicated_addresses_win_and_removed_members_stay_out() {
        let configured = [
            Member {
                id: 1,
                peer_address: address(7001).peer_address,
                client_address: Some(SocketAddr::from(([127, 0, 0, 1], 8001))),
            },
            Member {
                id: 2,
                peer_address: address(7002).peer_address,
                client_address: None,
            },
        ];
        let replicated = BTreeMap::from([(2, address(7102)), (3, address(7003))]);
        let book = AddressBook::new(1, &configured, replicated);
        let peers = book.peers();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[&NodeId(2)], address(7102).peer_address);
        assert!(book.get(1).unwrap().client_address.is_some());
        book.forget(3);
        book.set(3, &address(7203));
        assert_eq!(book.get(3), Some(address(7203)), "the record is kept");
    }
}
