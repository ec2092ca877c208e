//! An in-process [`Network`]: nodes in one process reach each other through a shared router.
//! For examples, tests, benchmarks and single-process deployments; links can be cut to
//! simulate partitions.

use crate::message::Message;
use crate::network::{DeliverError, Inbound, Network, NetworkError, SendError};
use crate::types::NodeId;
use async_trait::async_trait;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

#[derive(Default)]
struct RouterState {
    inboxes: HashMap<NodeId, Inbound>,
    /// Cut links, as (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Removals committed, as (the node told, the node removed): messages from the removed
    /// node to that one are dropped and it is told it was removed.
    removed: BTreeSet<(NodeId, NodeId)>,
}

/// Connects the [`LocalNetwork`]s of one process. Cheap to clone.
#[derive(Clone, Default)]
pub struct LocalRouter {
    state: Arc<RwLock<RouterState>>,
}

impl LocalRouter {
    /// A router with no nodes.
    pub fn new() -> LocalRouter {
        LocalRouter::default()
    }

    /// The network endpoint for node `id`.
    pub fn network(&self, id: NodeId) -> Arc<LocalNetwork> {
        Arc::new(LocalNetwork {
            id,
            router: self.clone(),
        })
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: NodeId) {
        let mut state = self.state.write().expect("router lock poisoned");
        let others: Vec<NodeId> = state.inboxes.keys().copied().filter(|o| *o != id).collect();
        for other in others {
            state.cut.insert((id, other));
            state.cut.insert((other, id));
        }
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        self.state
            .write()
            .expect("router lock poisoned")
            .cut
            .clear();
    }

    fn deliver(&self, message: Message) -> Result<(), SendError> {
        let state = self.state.read().expect("router lock poisoned");
        if state.cut.contains(&(message.from, message.to)) {
            return Ok(()); // a cut link loses messages silently, like a real partition
        }
        let to = message.to;
        if state.removed.contains(&(to, message.from)) {
            if let Some(sender) = state.inboxes.get(&message.from) {
                sender.report_removed(to);
            }
            return Ok(()); // refused, as a transport refuses a removed node
        }
        let inbound = state
            .inboxes
            .get(&to)
            .ok_or(SendError::UnknownPeer { to })?;
        inbound.try_deliver(message).map_err(|error| match error {
            DeliverError::InboxFull => SendError::QueueFull { to },
            DeliverError::Closed | DeliverError::WrongRecipient { .. } => SendError::Closed,
        })
    }
}

/// One node's endpoint on a [`LocalRouter`].
pub struct LocalNetwork {
    id: NodeId,
    router: LocalRouter,
}

#[async_trait]
impl Network for LocalNetwork {
    async fn start(&self, inbound: Inbound) -> Result<(), NetworkError> {
        if inbound.local_id() != self.id {
            return Err(NetworkError(format!(
                "endpoint of {} started with the inbox of {}",
                self.id,
                inbound.local_id()
            )));
        }
        let mut state = self.router.state.write().expect("router lock poisoned");
        state.inboxes.insert(self.id, inbound);
        Ok(())
    }

    fn send(&self, message: Message) -> Result<(), SendError> {
        self.router.deliver(message)
    }

    fn removals_committed(&self, removed: &BTreeSet<NodeId>) {
        let mut state = self.router.state.write().expect("router lock poisoned");
        state
            .removed
            .extend(removed.iter().map(|node| (self.id, *node)));
    }

    async fn shutdown(&self) {
        let mut state = self.router.state.write().expect("router lock poisoned");
        state.inboxes.remove(&self.id);
    }
}
