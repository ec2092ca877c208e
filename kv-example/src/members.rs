//! Where each member is reached: the library's membership records it.
//!
//! Both transports refuse connections from nodes they do not know and can only dial peers
//! they have an address for, so a node added at run time must become known to every member.
//! raft-core does this: every membership entry carries each member's [`NodeMeta`], committed
//! with it (and carried by snapshots), and the runtime hands each committed membership to the
//! transport (`raft_core::Network::members_changed`), which adds new members at their
//! recorded peer address and drops removed ones. kvnode adds only its own part, the HTTP
//! address a request is forwarded to, in [`NodeMeta::data`] ([`node_meta`], [`client_address`]).
//!
//! The addresses come from two places:
//! - the flags (`--initial-cluster`, `--client-addresses`): the members a node was started
//!   with, which are also recorded in the cluster's first membership;
//! - the committed membership: `POST /v1/members` adds the learner with its addresses in its
//!   `NodeMeta`, so every member, and every node that joins later, learns them.
//!
//! When the membership and a flag disagree, the membership wins: it is newer.
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
//! - Clusters written by kvnode before the addresses moved into the membership kept client
//!   addresses in the key-value state (the `SetMemberAddress` command and `p` snapshot
//!   records): those are still read, and ignored. Members added then are forwarded to only
//!   when `--client-addresses` names them.

use crate::config::Member;
use bytes::Bytes;
use raft_core::{Membership, NodeId, NodeMeta};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::RwLock;

/// Where a member is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddress {
    /// Its peer (Raft) address.
    pub peer_address: SocketAddr,
    /// Its client (HTTP) address, when known.
    pub client_address: Option<SocketAddr>,
}

/// kvnode's part of a member's [`NodeMeta::data`]: JSON, so fields can be added later (an
/// older node ignores the ones it does not know).
#[derive(Debug, Default, Serialize, Deserialize)]
struct MetaData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_address: Option<SocketAddr>,
}

/// The membership record of a member reached at `peer_address` by peers and at
/// `client_address` (when given) by HTTP clients.
pub fn node_meta(peer_address: SocketAddr, client_address: Option<SocketAddr>) -> NodeMeta {
    let data = match client_address {
        Some(address) => {
            let data = MetaData {
                client_address: Some(address),
            };
            Bytes::from(serde_json::to_vec(&data).expect("member data encodes"))
        }
        None => Bytes::new(),
    };
    NodeMeta {
        address: peer_address.to_string(),
        data,
    }
}

/// The client address a membership record carries, if any (data another application wrote
/// there reads as none).
pub fn client_address(meta: &NodeMeta) -> Option<SocketAddr> {
    if meta.data.is_empty() {
        return None;
    }
    serde_json::from_slice::<MetaData>(&meta.data)
        .ok()
        .and_then(|data| data.client_address)
}

/// Every member's addresses as this node knows them: the flags, under the committed
/// membership's records.
///
/// Invariant: `recorded` holds exactly the members of the last membership given to
/// [`AddressBook::follow`] whose record has a peer address that parses.
#[derive(Debug)]
pub struct AddressBook {
    me: u64,
    configured: BTreeMap<u64, MemberAddress>,
    recorded: RwLock<BTreeMap<u64, MemberAddress>>,
}

impl AddressBook {
    /// The book of node `me`, knowing the configured members.
    pub fn new(me: u64, configured: &[Member]) -> AddressBook {
        let configured = configured
            .iter()
            .map(|member| {
                let address = MemberAddress {
                    peer_address: member.peer_address,
                    client_address: member.client_address,
                };
                (member.id, address)
            })
            .collect();
        AddressBook {
            me,
            configured,
            recorded: RwLock::new(BTreeMap::new()),
        }
    }

    /// The transport's peers at start: every configured member but this node (the runtime
    /// adds the ones its stored membership records as it starts).
    pub fn peers(&self) -> HashMap<NodeId, SocketAddr> {
        self.configured
            .iter()
            .filter(|(id, _)| **id != self.me)
            .map(|(id, address)| (NodeId(*id), address.peer_address))
            .collect()
    }

    /// Takes the addresses a committed membership records.
    pub fn follow(&self, membership: &Membership) {
        let recorded = membership
            .nodes
            .iter()
            .filter_map(|(id, meta)| {
                let peer_address = meta.address.parse().ok()?;
                let address = MemberAddress {
                    peer_address,
                    client_address: client_address(meta),
                };
                Some((id.0, address))
            })
            .collect();
        *self.recorded.write().expect("address book lock") = recorded;
    }

    /// Member `id`'s addresses, if known: the membership's record, with the configured
    /// client address when the record has none.
    pub fn get(&self, id: u64) -> Option<MemberAddress> {
        let configured = self.configured.get(&id);
        let recorded = self
            .recorded
            .read()
            .expect("address book lock")
            .get(&id)
            .cloned();
        match (recorded, configured) {
            (Some(mut recorded), configured) => {
                recorded.client_address = recorded
                    .client_address
                    .or(configured.and_then(|c| c.client_address));
                Some(recorded)
            }
            (None, configured) => configured.cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The membership's records win over flags, a record without a client address keeps the
    /// configured one, and this node is never its own peer.
    #[test]
    fn the_membership_wins_over_flags() {
        let configured = [
            Member {
                id: 1,
                peer_address: socket(7001),
                client_address: Some(socket(8001)),
            },
            Member {
                id: 2,
                peer_address: socket(7002),
                client_address: None,
            },
        ];
        let book = AddressBook::new(1, &configured);
        let peers = book.peers();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[&NodeId(2)], socket(7002));
        let mut membership = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
        membership
            .nodes
            .insert(NodeId(1), node_meta(socket(7001), None));
        membership
            .nodes
            .insert(NodeId(2), node_meta(socket(7102), Some(socket(8102))));
        membership
            .nodes
            .insert(NodeId(3), node_meta(socket(7003), Some(socket(8003))));
        book.follow(&membership);
        assert_eq!(book.get(1).unwrap().client_address, Some(socket(8001)));
        assert_eq!(
            book.get(2),
            Some(MemberAddress {
                peer_address: socket(7102),
                client_address: Some(socket(8102))
            })
        );
        assert_eq!(book.get(3).unwrap().client_address, Some(socket(8003)));
        assert_eq!(book.get(4), None);
    }

    #[test]
    fn foreign_member_data_reads_as_no_client_address() {
        let mut meta = node_meta(socket(7001), Some(socket(8001)));
        assert_eq!(client_address(&meta), Some(socket(8001)));
        meta.data = Bytes::from_static(b"zone=a");
        assert_eq!(client_address(&meta), None);
        assert_eq!(client_address(&node_meta(socket(7001), None)), None);
    }
}
