//! kv-example: a replicated key-value service on `raft-core`, the program a newcomer runs first.
//!
//! Two binaries and the library they share:
//!
//! - **`kvnode`** runs one member: a [`state::KvStateMachine`] on a `raft_core` node, with
//!   the log in memory or RocksDB (`--storage mem|rocksdb`) and peers reached over TCP or QUIC
//!   (`--transport tcp|quic`), both chosen at run time as trait objects, and the HTTP API of
//!   [`api`]. `kvnode demo` starts a local three-node cluster; `kvnode certs` writes TLS
//!   certificates for QUIC (or TLS over TCP) and, with `--https`, for the client API.
//! - **`kvctl`** is the client ([`client`]): `put`, `get`, `del`, `cas`, `scan`, `status`, with
//!   fail-over between endpoints; `bench` ([`bench`](mod@bench)) for load against a running
//!   cluster or a fresh local one per backend combination; `failover` ([`failover`]), which
//!   kills a local cluster's leader again and again and measures how long writes stop.
//!   `member list|add|promote|remove`, `leader transfer` and `snapshot` drive the admin API
//!   ([`api::admin`]).
//!
//! # Snapshots and membership
//!
//! Each node snapshots its state every `--snapshot-interval-entries` applied entries (or on
//! `POST /v1/snapshot`) and compacts its log, keeping `--snapshot-tail-entries`; a follower
//! behind the compacted log receives the leader's snapshot in chunks of
//! `--snapshot-chunk-bytes-max` ([`state`] streams both ways, [`snapshot`] is the format). A
//! node joins a running cluster by starting with `--join` and being added as a learner, then
//! promoted; the cluster learns its addresses through the log ([`members`]):
//!
//! ```text
//! kvnode --id 4 --join --initial-cluster 1=h1:7001,2=h2:7001,3=h3:7001,4=h4:7001 \
//!        --client-address h4:8001 --data-dir data/4
//! kvctl member add 4 --peer-address h4:7001 --client-address h4:8001
//! kvctl status                      # wait until n4(learner) shows a lag near 0
//! kvctl member promote 4
//! kvctl member remove 2             # then stop node 2's process
//! ```
//!
//! The pieces:
//!
//! | module | what |
//! | --- | --- |
//! | [`command`] | the commands in the log (put, delete, compare-and-swap, get, scan) and their encoding |
//! | [`state`] | the map, in memory or in RocksDB with the applied index written in the same batch; building and installing snapshots |
//! | [`snapshot`] | the snapshot format: length-prefixed records, checked on install |
//! | [`api`] | the HTTP/JSON API and its errors; [`api::admin`]: membership, leadership transfer, snapshots |
//! | [`members`] | where each member is reached, and the transport's peers kept in step with membership |
//! | [`http_server`] | the HTTP connections: timeouts for slow and idle clients, the connection limit that closes the oldest idle connection rather than turning new clients away |
//! | [`tls`] | HTTPS on the client API: the server's TLS (client certificates required when a client CA is set), the clients' side, and the certificates `kvnode certs --https` issues |
//! | [`node`] | composing storage, transport, Raft and HTTP into a running node, and its shutdown |
//! | [`config`] | flags and TOML settings, with every limit named |
//! | [`metrics`] | Prometheus counters and histograms |
//! | [`local_cluster`] | starting `kvnode` child processes on free local ports (demo, tests, benchmarks) |
//!
//! # Consistency
//!
//! Writes are commands in the Raft log. Reads choose (`?consistency=`, see
//! [`api::Consistency`]): `linearizable` (default) asks the protocol for a read index
//! (ReadIndex: the leader confirms it still leads with one heartbeat round shared by all
//! concurrent reads; a follower asks the leader) and then reads this node's copy once it has
//! applied that far, so it sees every write acknowledged before it was sent, with no log
//! entry; `lease` is the same on nodes started with `--lease-reads`, whose leader answers from
//! its lease; `log` sends the read through the log as a command; `stale` reads this node's
//! copy as it is.
#![deny(missing_docs)]

pub mod api;
pub mod base64;
pub mod bench;
pub mod client;
pub mod command;
pub mod config;
pub mod failover;
pub mod guide;
pub mod http_server;
pub mod local_cluster;
pub mod members;
pub mod metrics;
pub mod node;
pub mod snapshot;
pub mod state;
pub mod tls;
