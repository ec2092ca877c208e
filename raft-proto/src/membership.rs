//! Cluster membership: who votes, who only learns, and how a change moves from one set of
//! voters to another through a joint configuration (Raft thesis §4.3).
//!
//! A membership travels in the log as an entry ([`crate::EntryPayload::Membership`]) holding the
//! whole configuration, and every node acts on the newest one in its log, committed or not
//! (§4.1): a leader that cuts a log suffix also drops the configurations in it. Changing voters
//! takes two entries. The first is *joint*: old and new voters must each agree (a majority of
//! both) on elections and commits. Once it commits, the leader appends the second, which holds
//! the new voters alone. Only one change is in progress at a time.
//!
//! ```
//! use raft_proto::membership::{Membership, MembershipChange};
//! use raft_proto::NodeId;
//!
//! let current = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
//! // Add node 4 as a learner: no vote, no joint step needed.
//! let with_learner = current.apply(&MembershipChange::add_learner(NodeId(4)))?;
//! assert!(!with_learner.is_joint() && with_learner.learners.contains(&NodeId(4)));
//! // Promote 4 and remove 1 in one request: the cluster goes through a joint configuration.
//! let change = MembershipChange { promote: vec![NodeId(4)], remove: vec![NodeId(1)], ..Default::default() };
//! let joint = with_learner.apply(&change)?;
//! assert!(joint.is_joint());
//! let last = joint.leave_joint();
//! assert_eq!(last.voters.iter().copied().collect::<Vec<_>>(), [NodeId(2), NodeId(3), NodeId(4)]);
//! assert!(last.removed.contains(&NodeId(1)));
//! # Ok::<(), raft_proto::membership::MembershipError>(())
//! ```

use crate::types::{Incarnation, LogIndex, NodeId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What the cluster knows of a member besides its ID: where peers reach it and whatever the
/// application adds (its client address, a zone; openraft calls this a `Node`). It is
/// committed with the membership, so every node, and every node that joins later from the log
/// or a snapshot, learns it; raft-core's runtime hands it to the `Network` as memberships
/// change (`Network::members_changed`), so nobody adds peers by hand.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Where peers reach the node, in the form the transport reads (`host:port` for TCP and
    /// QUIC). Empty when the transport learns it some other way.
    pub address: String,
    /// Application data, opaque to the library.
    pub data: Bytes,
}

impl NodeMeta {
    /// A node reached at `address`, with no application data.
    pub fn at(address: impl Into<String>) -> NodeMeta {
        NodeMeta {
            address: address.into(),
            data: Bytes::new(),
        }
    }
}
use std::fmt;

/// Members of the cluster at one point of the log.
///
/// Invariants: `voters`, `learners` and `removed` are disjoint; `outgoing` and `learners` are
/// disjoint; `outgoing` and `removed` are disjoint (a voter leaving is recorded as removed once
/// the joint configuration is left); no set holds node 0; `nodes` and `incarnations` describe
/// members only; `rejoining` holds learners, or outgoing voters on their way to be learners,
/// and no incoming voter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The voters (in a joint configuration: the incoming voters).
    pub voters: BTreeSet<NodeId>,
    /// In a joint configuration, the outgoing voters; empty otherwise.
    pub outgoing: BTreeSet<NodeId>,
    /// Members that receive the log but neither vote nor count toward a commit.
    pub learners: BTreeSet<NodeId>,
    /// Nodes removed from the cluster. Their IDs are never reused, and messages from them are
    /// ignored.
    pub removed: BTreeSet<NodeId>,
    /// What is known of members beyond their IDs (their peer address, application data). A
    /// member may have no entry (the initial voters of a cluster whose transports were given
    /// their addresses at start).
    pub nodes: BTreeMap<NodeId, NodeMeta>,
    /// Each member's recorded [`Incarnation`] (0 when absent): only that life's votes and
    /// acknowledgements count. The leader records a newer one when it hears from it.
    pub incarnations: BTreeMap<NodeId, Incarnation>,
    /// Voters that restarted without their state and step down to learners: the leader
    /// promotes each back on its own once it has caught up.
    pub rejoining: BTreeSet<NodeId>,
}

impl Membership {
    /// A configuration of `voters` alone.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            ..Membership::default()
        }
    }

    /// True while the cluster moves between two sets of voters.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// The incarnation recorded for `id` (0 when none is).
    pub fn incarnation_of(&self, id: NodeId) -> Incarnation {
        self.incarnations.get(&id).copied().unwrap_or_default()
    }

    /// True when node `id`, running in life `incarnation`, is the life this membership
    /// records and is not waiting to be promoted back: false for a node that restarted
    /// without its state until the leader has recorded its new life and, if it voted,
    /// promoted it back. Life 0 (a node that keeps its state) needs no record.
    pub fn rejoined(&self, id: NodeId, incarnation: Incarnation) -> bool {
        let recorded = self.incarnation_of(id) == incarnation;
        let member = incarnation == Incarnation(0) || self.is_member(id);
        recorded && member && !self.rejoining.contains(&id)
    }

    /// True when what `id` says in its life `incarnation` counts toward quorums (votes,
    /// commits, CheckQuorum, reads): it votes (in either half of a joint configuration), the
    /// membership records that life, and it is not rejoining. A restarted life that the
    /// membership has not recorded counts nowhere, nor does a rejoining one until it is
    /// promoted back.
    pub fn counts(&self, id: NodeId, incarnation: Incarnation) -> bool {
        self.is_voter(id) && self.incarnation_of(id) == incarnation && !self.rejoining.contains(&id)
    }

    /// The configuration that records a newer life of member `id`, which restarted without
    /// its state; from then on that life counts nowhere until it is promoted back
    /// ([`Membership::rejoining`], [`Membership::counts`]).
    ///
    /// Outside a joint configuration, a voter steps down through a joint one (the incoming
    /// voters without it) to a learner. Within one (a change was under way), only the
    /// incoming half loses it: an incoming voter becomes a learner at once, an outgoing one
    /// when the joint configuration is left, and one the change was removing is simply
    /// recorded (it leaves as planned). The outgoing half (the voters before the change)
    /// stays as it was, so every quorum before and after still holds a majority of it, and with
    /// `id` counting nowhere those majorities meet outside `id`: that is what makes recording
    /// a restart safe even while another change is uncommitted. A learner keeps its role.
    /// Refused for a non-member, for an incarnation not newer than the recorded one, and when
    /// no incoming voter would be left.
    pub fn record_restart(
        &self,
        id: NodeId,
        incarnation: Incarnation,
    ) -> Result<Membership, MembershipError> {
        if !self.is_member(id) {
            return Err(MembershipError::UnknownNode(id));
        }
        if incarnation <= self.incarnation_of(id) {
            return Err(MembershipError::Empty);
        }
        let mut next = self.clone();
        next.incarnations.insert(id, incarnation);
        if next.voters.remove(&id) {
            if next.voters.is_empty() {
                return Err(MembershipError::NoVotersLeft);
            }
            if !self.is_joint() {
                next.outgoing = self.voters.clone();
            } else if !self.outgoing.contains(&id) {
                next.learners.insert(id); // it was being promoted: back to a learner now
            }
            next.rejoining.insert(id);
        }
        Ok(next)
    }

    /// True when `id` votes (in either half of a joint configuration).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    /// True when `id` is a voter or a learner.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every voter and learner, sorted, each once.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(self.outgoing.iter().copied());
        all.extend(self.learners.iter().copied());
        all
    }

    /// Every voter of either half, sorted, each once.
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(self.outgoing.iter().copied());
        all
    }

    /// True when the nodes for which `yes` holds form a majority of the voters (of both halves
    /// when joint).
    pub fn is_quorum(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        let majority = |set: &BTreeSet<NodeId>| {
            set.is_empty() || set.iter().filter(|id| yes(**id)).count() > set.len() / 2
        };
        !self.voters.is_empty() && majority(&self.voters) && majority(&self.outgoing)
    }

    /// True when a majority can no longer be reached: the nodes for which `no` holds keep one
    /// half from a majority.
    pub fn is_lost(&self, no: impl Fn(NodeId) -> bool) -> bool {
        let lost = |set: &BTreeSet<NodeId>| {
            !set.is_empty() && set.iter().filter(|id| no(**id)).count() >= set.len().div_ceil(2)
        };
        lost(&self.voters) || lost(&self.outgoing)
    }

    /// The highest index a majority holds (of both halves when joint), given each voter's
    /// matched index.
    pub fn committed_index(&self, matched: impl Fn(NodeId) -> LogIndex) -> LogIndex {
        let of = |set: &BTreeSet<NodeId>| {
            if set.is_empty() {
                return LogIndex(u64::MAX);
            }
            let mut indexes: Vec<LogIndex> = set.iter().map(|id| matched(*id)).collect();
            indexes.sort_unstable_by(|a, b| b.cmp(a));
            indexes[set.len() / 2]
        };
        if self.voters.is_empty() {
            return LogIndex(0);
        }
        of(&self.voters).min(of(&self.outgoing))
    }

    /// The configuration a change leads to: joint when the voters change, final otherwise.
    /// Checks the change against this configuration; an error changes nothing.
    pub fn apply(&self, change: &MembershipChange) -> Result<Membership, MembershipError> {
        if self.is_joint() {
            return Err(MembershipError::ChangeInProgress);
        }
        if change.add_learners.is_empty()
            && change.promote.is_empty()
            && change.remove.is_empty()
            && change.node_meta.is_empty()
        {
            return Err(MembershipError::Empty);
        }
        let mut seen = BTreeSet::new();
        for id in change
            .add_learners
            .iter()
            .chain(&change.promote)
            .chain(&change.remove)
        {
            if !seen.insert(*id) {
                return Err(MembershipError::Duplicate(*id));
            }
        }
        let mut next = self.clone();
        for &id in &change.add_learners {
            if id == NodeId(0) {
                return Err(MembershipError::InvalidId(id));
            }
            if self.removed.contains(&id) {
                return Err(MembershipError::IdRemoved(id));
            }
            if self.is_member(id) {
                return Err(MembershipError::AlreadyMember(id));
            }
            next.learners.insert(id);
        }
        for &id in &change.promote {
            if self.voters.contains(&id) {
                return Err(MembershipError::AlreadyVoter(id));
            }
            if !self.learners.contains(&id) {
                return Err(MembershipError::UnknownNode(id));
            }
            next.learners.remove(&id);
            next.rejoining.remove(&id);
            next.voters.insert(id);
        }
        for &id in &change.remove {
            if !self.is_member(id) {
                return Err(MembershipError::UnknownNode(id));
            }
            next.learners.remove(&id);
            next.rejoining.remove(&id);
            if !next.voters.remove(&id) {
                // A learner leaves at once; a voter leaves with the joint configuration.
                next.removed.insert(id);
            }
        }
        if next.voters.is_empty() {
            return Err(MembershipError::NoVotersLeft);
        }
        if next.voters != self.voters {
            next.outgoing = self.voters.clone();
        }
        for (id, meta) in &change.node_meta {
            if !next.is_member(*id) {
                return Err(MembershipError::UnknownNode(*id));
            }
            next.nodes.insert(*id, meta.clone());
        }
        next.forget_non_members();
        Ok(next)
    }

    /// Drops what is recorded of nodes that are no longer members.
    fn forget_non_members(&mut self) {
        let members = self.members();
        self.nodes.retain(|id, _| members.contains(id));
        self.incarnations.retain(|id, _| members.contains(id));
        self.rejoining.retain(|id| members.contains(id));
    }

    /// The final configuration that ends a joint one: the incoming voters alone, the outgoing
    /// voters that left recorded as removed (or, when rejoining after a restart, as learners).
    pub fn leave_joint(&self) -> Membership {
        let mut next = self.clone();
        for id in std::mem::take(&mut next.outgoing) {
            if next.rejoining.contains(&id) {
                next.learners.insert(id);
            } else if !next.voters.contains(&id) && !next.learners.contains(&id) {
                next.removed.insert(id);
            }
        }
        next.forget_non_members();
        next
    }

    /// Checks the invariants; a configuration received from elsewhere that breaks one is
    /// refused.
    pub fn validate(&self) -> Result<(), MembershipError> {
        let all = [&self.voters, &self.outgoing, &self.learners, &self.removed];
        if all.iter().any(|set| set.contains(&NodeId(0))) {
            return Err(MembershipError::InvalidId(NodeId(0)));
        }
        let overlap =
            |a: &BTreeSet<NodeId>, b: &BTreeSet<NodeId>| a.intersection(b).next().copied();
        let pairs = [
            (&self.voters, &self.learners),
            (&self.voters, &self.removed),
            (&self.learners, &self.removed),
            (&self.outgoing, &self.learners),
            (&self.outgoing, &self.removed),
        ];
        for (a, b) in pairs {
            if let Some(id) = overlap(a, b) {
                return Err(MembershipError::Duplicate(id));
            }
        }
        if self.voters.is_empty() {
            return Err(MembershipError::NoVotersLeft);
        }
        if let Some(id) = self
            .nodes
            .keys()
            .chain(self.incarnations.keys())
            .find(|id| !self.is_member(**id))
        {
            return Err(MembershipError::UnknownNode(*id));
        }
        if let Some(id) = self.rejoining.iter().find(|id| {
            self.voters.contains(id) || !(self.learners.contains(id) || self.outgoing.contains(id))
        }) {
            return Err(MembershipError::UnknownNode(*id));
        }
        Ok(())
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |set: &BTreeSet<NodeId>| {
            set.iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(f, "voters [{}]", list(&self.voters))?;
        if self.is_joint() {
            write!(f, " joint with [{}]", list(&self.outgoing))?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners [{}]", list(&self.learners))?;
        }
        Ok(())
    }
}

/// A request to change the members: any set of learners to add, learners to promote to voters
/// and members to remove, carried out as one change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChange {
    /// New nodes to add as learners. IDs must be new: never members, never removed.
    pub add_learners: Vec<NodeId>,
    /// Learners to make voters.
    pub promote: Vec<NodeId>,
    /// Voters or learners to remove.
    pub remove: Vec<NodeId>,
    /// What to record of members of the resulting configuration (new or existing ones):
    /// their peer address and application data. Replaces what was recorded for them.
    pub node_meta: BTreeMap<NodeId, NodeMeta>,
}

impl MembershipChange {
    /// Adds one learner.
    pub fn add_learner(id: NodeId) -> MembershipChange {
        MembershipChange {
            add_learners: vec![id],
            ..MembershipChange::default()
        }
    }

    /// Adds one learner and records how it is reached, so every member's transport can
    /// reach it once the change is in their logs.
    pub fn add_learner_at(id: NodeId, meta: NodeMeta) -> MembershipChange {
        MembershipChange {
            add_learners: vec![id],
            node_meta: BTreeMap::from([(id, meta)]),
            ..MembershipChange::default()
        }
    }

    /// Promotes one learner to voter.
    pub fn promote(id: NodeId) -> MembershipChange {
        MembershipChange {
            promote: vec![id],
            ..MembershipChange::default()
        }
    }

    /// Removes one member.
    pub fn remove(id: NodeId) -> MembershipChange {
        MembershipChange {
            remove: vec![id],
            ..MembershipChange::default()
        }
    }
}

/// Why a membership change was refused. A refused change changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipError {
    /// This node does not lead; the leader it knows, if any, is given.
    NotLeader(Option<NodeId>),
    /// Another change is still in progress (uncommitted, or the cluster is joint).
    ChangeInProgress,
    /// A leadership transfer is in progress.
    TransferInProgress,
    /// The request changes nothing.
    Empty,
    /// The node is not a member (or, to promote, not a learner).
    UnknownNode(NodeId),
    /// The node to add is already a member.
    AlreadyMember(NodeId),
    /// The learner to promote is already a voter.
    AlreadyVoter(NodeId),
    /// The ID belonged to a removed node; IDs are never reused.
    IdRemoved(NodeId),
    /// The ID is not allowed (0 means "no node").
    InvalidId(NodeId),
    /// The ID appears twice in the request (or in two roles of a configuration).
    Duplicate(NodeId),
    /// The change would leave no voter.
    NoVotersLeft,
    /// The learner to promote has not caught up with the leader's log: it holds entries up to
    /// `match_index` (0: it never answered), the leader's log ends at `last_index`, and a
    /// learner may be promoted only within `lag_entries_max` entries of it
    /// ([`crate::Config::promotion_lag_entries_max`]). A voter that cannot keep up would make
    /// the cluster one failure closer to losing its majority.
    NotCaughtUp {
        /// The learner.
        id: NodeId,
        /// The highest index the leader knows the learner holds.
        match_index: LogIndex,
        /// The leader's last index.
        last_index: LogIndex,
        /// The distance allowed.
        lag_entries_max: u64,
    },
}

impl fmt::Display for MembershipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembershipError::NotLeader(Some(leader)) => {
                write!(f, "this node does not lead; ask the leader {leader}")
            }
            MembershipError::NotLeader(None) => {
                write!(f, "this node does not lead and knows no leader")
            }
            MembershipError::ChangeInProgress => {
                write!(f, "another membership change is in progress")
            }
            MembershipError::TransferInProgress => {
                write!(f, "a leadership transfer is in progress")
            }
            MembershipError::Empty => write!(f, "the membership change is empty"),
            MembershipError::UnknownNode(id) => write!(f, "node {id} is not a member in that role"),
            MembershipError::AlreadyMember(id) => write!(f, "node {id} is already a member"),
            MembershipError::AlreadyVoter(id) => write!(f, "node {id} is already a voter"),
            MembershipError::IdRemoved(id) => {
                write!(f, "node id {id} was removed and cannot be reused")
            }
            MembershipError::InvalidId(id) => write!(f, "node id {id} is not allowed"),
            MembershipError::Duplicate(id) => write!(f, "node {id} appears twice"),
            MembershipError::NoVotersLeft => write!(f, "the change would leave no voter"),
            MembershipError::NotCaughtUp {
                id,
                match_index,
                last_index,
                lag_entries_max,
            } => write!(
                f,
                "learner {id} has not caught up: it holds entries up to {match_index} of the \
                 leader's {last_index}, and a promotion needs it within {lag_entries_max} entries \
                 (and to have answered at least once)"
            ),
        }
    }
}

impl std::error::Error for MembershipError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[u64]) -> BTreeSet<NodeId> {
        list.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn joint_quorum_needs_both_halves() {
        let mut joint = Membership::new(ids(&[1, 2, 3]));
        joint.outgoing = ids(&[1, 4, 5]);
        assert!(joint.is_quorum(|id| [1, 2, 4].contains(&id.0)));
        assert!(
            !joint.is_quorum(|id| [2, 3, 4].contains(&id.0)),
            "a majority of the new half alone is not enough"
        );
        let matched = |id: NodeId| LogIndex([0, 9, 8, 7, 6, 5][id.0 as usize]);
        assert_eq!(joint.committed_index(matched), LogIndex(6).min(LogIndex(8)));
        assert!(joint.is_lost(|id| [4, 5].contains(&id.0)));
        assert!(!joint.is_lost(|id| [3, 5].contains(&id.0)));
    }

    /// Member records travel with the membership: set for new and existing members, refused
    /// for non-members, dropped with the member when it leaves (after the joint step for a
    /// voter).
    #[test]
    fn member_records_follow_the_members() {
        let current = Membership::new(ids(&[1, 2, 3]));
        let add = MembershipChange::add_learner_at(NodeId(4), NodeMeta::at("10.0.0.4:7000"));
        let with_learner = current.apply(&add).unwrap();
        assert_eq!(
            with_learner.nodes[&NodeId(4)],
            NodeMeta::at("10.0.0.4:7000")
        );
        let readdress = MembershipChange {
            node_meta: [(NodeId(1), NodeMeta::at("10.0.0.1:7000"))].into(),
            ..MembershipChange::default()
        };
        let readdressed = with_learner.apply(&readdress).unwrap();
        assert!(!readdressed.is_joint(), "a record alone changes no voter");
        assert_eq!(readdressed.nodes.len(), 2);
        let stranger = MembershipChange {
            node_meta: [(NodeId(9), NodeMeta::at("10.0.0.9:7000"))].into(),
            ..MembershipChange::default()
        };
        assert_eq!(
            readdressed.apply(&stranger),
            Err(MembershipError::UnknownNode(NodeId(9)))
        );
        let joint = readdressed
            .apply(&MembershipChange::remove(NodeId(1)))
            .unwrap();
        assert!(
            joint.nodes.contains_key(&NodeId(1)),
            "still an outgoing voter"
        );
        let last = joint.leave_joint();
        assert!(!last.nodes.contains_key(&NodeId(1)), "gone with the member");
        let gone = last.apply(&MembershipChange::remove(NodeId(4))).unwrap();
        assert!(gone.nodes.is_empty());
        let mut broken = gone.clone();
        broken.nodes.insert(NodeId(7), NodeMeta::default());
        assert_eq!(
            broken.validate(),
            Err(MembershipError::UnknownNode(NodeId(7)))
        );
    }

    #[test]
    fn bad_changes_are_refused_with_the_reason() {
        let base = Membership::new(ids(&[1, 2, 3]));
        let remove_all = MembershipChange {
            remove: vec![NodeId(1), NodeId(2), NodeId(3)],
            ..Default::default()
        };
        assert_eq!(base.apply(&remove_all), Err(MembershipError::NoVotersLeft));
        assert_eq!(
            base.apply(&MembershipChange::remove(NodeId(9))),
            Err(MembershipError::UnknownNode(NodeId(9)))
        );
        assert_eq!(
            base.apply(&MembershipChange::promote(NodeId(9))),
            Err(MembershipError::UnknownNode(NodeId(9)))
        );
        assert_eq!(
            base.apply(&MembershipChange::add_learner(NodeId(2))),
            Err(MembershipError::AlreadyMember(NodeId(2)))
        );
        let removed = base
            .apply(&MembershipChange::remove(NodeId(3)))
            .unwrap()
            .leave_joint();
        assert_eq!(
            removed.apply(&MembershipChange::add_learner(NodeId(3))),
            Err(MembershipError::IdRemoved(NodeId(3)))
        );
        let joint = base.apply(&MembershipChange::remove(NodeId(3))).unwrap();
        assert_eq!(
            joint.apply(&MembershipChange::add_learner(NodeId(7))),
            Err(MembershipError::ChangeInProgress)
        );
        assert_eq!(
            base.apply(&MembershipChange::default()),
            Err(MembershipError::Empty)
        );
    }
}
