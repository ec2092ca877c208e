//! Transport-agnostic tokio glue for network transports (feature `transport-kit`): the pieces
//! `raft-transport-tcp` and `raft-transport-quic` share, for any transport that carries
//! [`wire`](crate::wire) frames over byte streams.
//!
//! - [`Tasks`], [`Shutdown`]: every task a transport starts, tracked so `shutdown` can wait for
//!   them all, and the signal that asks them to stop.
//! - [`Backoff`]: exponential reconnect backoff with jitter; [`connect_with_backoff`] and
//!   [`next_frame`] are the front of a writer's loop (connect only when there is something to
//!   send, retry until connected or shut down).
//! - [`FrameReader`]: splits any `AsyncRead` into frames with the pure decoder of
//!   [`wire`](crate::wire), buffering at most one frame; [`read_inbound_handshake`] reads and
//!   checks the handshake an inbound connection opens with.
//! - [`LaneQueues`], [`Peer`]: per-peer bounded queues of encoded frames, one per
//!   [`Lane`](crate::Lane); [`enqueue`] encodes a message and queues it without waiting.
//! - [`TransportCore`]: the peer table that `send` looks the queues up in, with the tasks, the
//!   shutdown signal and the started/closed state around it.
//! - [`SharedLimits`]: validation of the settings every transport has, by their field names.

mod frames;
mod lanes;
mod limits;
mod state;
mod tasks;

pub use frames::{read_inbound_handshake, FrameReader, ReadError};
pub use lanes::{connect_with_backoff, enqueue, next_frame, Ended, LaneQueues, Peer};
pub use limits::SharedLimits;
pub use state::TransportCore;
pub use tasks::{Backoff, Shutdown, Tasks};
