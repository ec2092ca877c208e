//! The outbound side every transport shares: per-peer bounded queues of encoded frames, one per
//! [`Lane`], and the front of the writer's loop (wait for a frame, then connect).

use super::tasks::{Backoff, Shutdown};
use crate::network::SendError;
use crate::wire::{self, FrameError};
use crate::{Lane, Message};
use bytes::Bytes;
use std::future::Future;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::sleep;

/// A peer's bounded queues of encoded frames, one per lane, so snapshot chunks never queue in
/// front of a heartbeat.
///
/// Invariant: the receiving ends are handed out at most once ([`LaneQueues::take_receivers`]).
pub struct LaneQueues {
    ordinary: mpsc::Sender<Bytes>,
    snapshot: mpsc::Sender<Bytes>,
    /// The queues' receiving ends until the writers start.
    waiting: Option<[(Lane, mpsc::Receiver<Bytes>); 2]>,
}

impl LaneQueues {
    /// Queues holding at most `ordinary_messages_max` and `snapshot_messages_max` frames (the
    /// transport's `send_queue_messages_max` and `snapshot_queue_messages_max`, both above 0).
    pub fn new(ordinary_messages_max: usize, snapshot_messages_max: usize) -> LaneQueues {
        let ordinary = mpsc::channel(ordinary_messages_max);
        let snapshot = mpsc::channel(snapshot_messages_max);
        LaneQueues {
            ordinary: ordinary.0,
            snapshot: snapshot.0,
            waiting: Some([(Lane::Ordinary, ordinary.1), (Lane::Snapshot, snapshot.1)]),
        }
    }

    /// The sending end of `lane`'s queue.
    pub fn sender(&self, lane: Lane) -> mpsc::Sender<Bytes> {
        match lane {
            Lane::Ordinary => self.ordinary.clone(),
            Lane::Snapshot => self.snapshot.clone(),
        }
    }

    /// The receiving ends, for the writers: `Some` the first time only.
    pub fn take_receivers(&mut self) -> Option<[(Lane, mpsc::Receiver<Bytes>); 2]> {
        self.waiting.take()
    }
}

/// Encodes `message` (refusing it over `frame_bytes_max`) and queues it on `queue` without
/// waiting: a full queue answers [`SendError::QueueFull`], a closed one [`SendError::Closed`].
pub fn enqueue(
    queue: &mpsc::Sender<Bytes>,
    message: &Message,
    frame_bytes_max: usize,
) -> Result<(), SendError> {
    let to = message.to;
    let frame = wire::encode_message(message, frame_bytes_max).map_err(|error| match error {
        FrameError::TooLarge { bytes, limit } => SendError::TooLarge { bytes, limit },
        other => unreachable!("encoding only fails on size: {other}"),
    })?;
    queue.try_send(frame).map_err(|error| match error {
        mpsc::error::TrySendError::Full(_) => SendError::QueueFull { to },
        mpsc::error::TrySendError::Closed(_) => SendError::Closed,
    })
}

/// One peer of a transport: how to reach it (`link`, the transport's own type), its lane
/// queues, and the writer tasks draining them.
pub struct Peer<L> {
    /// What the transport's writers need to reach the peer (an address, a shared connection).
    pub link: L,
    /// The peer's queues.
    pub queues: LaneQueues,
    /// The writer tasks started for the queues, aborted when the peer is replaced or removed.
    pub writers: Vec<AbortHandle>,
}

impl<L> Peer<L> {
    /// A peer with empty queues of the given bounds and no writers yet.
    pub fn new(link: L, ordinary_messages_max: usize, snapshot_messages_max: usize) -> Peer<L> {
        Peer {
            link,
            queues: LaneQueues::new(ordinary_messages_max, snapshot_messages_max),
            writers: Vec::new(),
        }
    }

    /// Starts one writer per lane with `spawn` (which answers `None` when the transport is
    /// closing), unless they were started already.
    pub fn start_writers(
        &mut self,
        mut spawn: impl FnMut(&L, Lane, mpsc::Receiver<Bytes>) -> Option<AbortHandle>,
    ) {
        let Some(queues) = self.queues.take_receivers() else {
            return;
        };
        for (lane, queue) in queues {
            self.writers.extend(spawn(&self.link, lane, queue));
        }
    }

    /// Aborts the writers; the queued frames are dropped with the peer.
    pub fn abort_writers(&self) {
        self.writers.iter().for_each(AbortHandle::abort);
    }
}

/// Why a writer's connection (or stream) ended.
pub enum Ended {
    /// Shutdown, or the peer was removed: the writer exits.
    Stop,
    /// The connection failed or the peer closed it: reconnect when there is something to send.
    Lost,
}

/// Waits for the next frame on `queue`: `None` once shutdown begins or the queue is closed
/// (the peer was dropped). A writer connects only when this answers a frame.
pub async fn next_frame(
    shutdown: &mut Shutdown,
    queue: &mut mpsc::Receiver<Bytes>,
) -> Option<Bytes> {
    tokio::select! {
        _ = shutdown.wait() => None,
        frame = queue.recv() => frame,
    }
}

/// Runs `attempt` until it succeeds, waiting [`Backoff::next_delay`] after each failure, and
/// resets `backoff` on success. `None` once shutdown begins, which also abandons an attempt in
/// progress. `attempt` reports its own failures (it knows what it was doing).
pub async fn connect_with_backoff<T, F, Fut>(
    shutdown: &mut Shutdown,
    backoff: &mut Backoff,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ()>>,
{
    loop {
        let outcome = tokio::select! {
            _ = shutdown.wait() => return None,
            outcome = attempt() => outcome,
        };
        if let Ok(connected) = outcome {
            backoff.reset();
            return Some(connected);
        }
        tokio::select! {
            _ = shutdown.wait() => return None,
            _ = sleep(backoff.next_delay()) => {}
        }
    }
}
