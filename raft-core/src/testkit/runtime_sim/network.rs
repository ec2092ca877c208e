//! The simulated network: an in-process [`Network`] that checks every message as it leaves
//! (against the sender's disk), then loses, duplicates, delays and reorders it as the seed
//! says, across cut links and crashes.

use super::world::{lock, SharedWorld};
use crate::message::Message;
use crate::network::{Inbound, Network, NetworkError, SendError};
use crate::testkit::sim::trace::ShowMessage;
use crate::types::NodeId;
use async_trait::async_trait;
use std::time::Duration;

/// How a run's network behaves. Drawn from the seed by [`super::RuntimeSimOptions::from_seed`];
/// the loss rate changes during the fault phase and drops to zero once it ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetworkFaults {
    /// Chance that a message is lost.
    pub loss: f64,
    /// Chance that a message arrives twice.
    pub duplicate: f64,
    /// Longest ordinary delay, in virtual milliseconds (each message draws from 0 to it: so
    /// messages overtake each other).
    pub delay_ms_max: u64,
    /// Chance that a message is late: it takes up to `late_ms_max`.
    pub late_chance: f64,
    /// Longest delay of a late message.
    pub late_ms_max: u64,
    /// Chance that a message whose sender or receiver crashed while it was in flight still
    /// arrives (at the receiver's next life).
    pub survive_crash: f64,
}

impl NetworkFaults {
    /// A network that loses nothing and delivers within a millisecond.
    pub const CALM: NetworkFaults = NetworkFaults {
        loss: 0.0,
        duplicate: 0.0,
        delay_ms_max: 1,
        late_chance: 0.0,
        late_ms_max: 0,
        survive_crash: 0.0,
    };
}

/// One life's handle on the simulated network, for node `node`.
pub struct SimNetwork {
    world: SharedWorld,
    node: NodeId,
    life: u64,
}

impl SimNetwork {
    pub(crate) fn new(world: SharedWorld, node: NodeId, life: u64) -> SimNetwork {
        SimNetwork { world, node, life }
    }
}

#[async_trait]
impl Network for SimNetwork {
    async fn start(&self, inbound: Inbound) -> Result<(), NetworkError> {
        let mut world = lock(&self.world);
        if world.is_current(self.node, self.life) {
            world.inbound.insert(self.node, (self.life, inbound));
        }
        Ok(())
    }

    fn send(&self, message: Message) -> Result<(), SendError> {
        let mut world = lock(&self.world);
        if !world.is_current(self.node, self.life) {
            return Ok(()); // a crashed node sends nothing
        }
        assert_eq!(message.from, self.node, "a node sends as itself");
        world.counters.messages_sent += 1;
        world.record(format_args!("send {}", ShowMessage(&message)));
        world.on_message_sent(&message);
        let (from, to) = (message.from, message.to);
        let faults = world.network_faults;
        if world.cuts.contains(&(from, to)) || world.rng.chance(faults.loss) {
            return Ok(());
        }
        let copies = if world.rng.chance(faults.duplicate) {
            2
        } else {
            1
        };
        let lives = (
            world.lives.get(&from).copied(),
            world.lives.get(&to).copied(),
        );
        for _ in 0..copies {
            let delay_ms = if world.rng.chance(faults.late_chance) {
                world.rng.between(0, faults.late_ms_max)
            } else {
                world.rng.between(0, faults.delay_ms_max)
            };
            let world = self.world.clone();
            let message = message.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                deliver(&world, message, lives);
            });
        }
        Ok(())
    }

    async fn shutdown(&self) {
        let mut world = lock(&self.world);
        if world.inbound.get(&self.node).map(|(life, _)| *life) == Some(self.life) {
            world.inbound.remove(&self.node);
        }
    }
}

/// Hands `message` to its receiver, unless the link is cut now or the receiver does not run;
/// a message whose sender or receiver crashed since it left arrives only by the seed's chance.
fn deliver(world: &SharedWorld, message: Message, lives_at_send: (Option<u64>, Option<u64>)) {
    let mut world = lock(world);
    let (from, to) = (message.from, message.to);
    if world.cuts.contains(&(from, to)) {
        return;
    }
    let lives_now = (
        world.lives.get(&from).copied(),
        world.lives.get(&to).copied(),
    );
    if lives_now != lives_at_send {
        let chance = world.network_faults.survive_crash;
        if !world.rng.chance(chance) {
            return;
        }
    }
    let Some((life, inbound)) = world.inbound.get(&to) else {
        return;
    };
    if Some(*life) != lives_now.1 {
        return;
    }
    if inbound.try_deliver(message).is_ok() {
        world.counters.messages_delivered += 1;
    }
}
