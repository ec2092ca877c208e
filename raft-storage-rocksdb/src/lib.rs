//! A durable [`LogStore`](raft_core::LogStore) for `raft-core` on RocksDB: the embedded store
//! for real deployments, which never loses a write it acknowledged.
//!
//! - **Synced, group-committed writes.** Every call that writes is checked and queued when it
//!   is made; one writer thread coalesces whatever is queued into one RocksDB write batch and
//!   syncs it once, so throughput grows with load instead of paying one sync per call. A call
//!   returns `Ok` only after its batch is on disk.
//! - **Atomic write groups.** A [`LogWrite`](raft_core::LogWrite) (truncate, append, hard
//!   state) is one batch: a crash leaves the old log or the new one, never a mix or a hole.
//!   Truncation and purge are range deletes in the same batch as the bounds they produce.
//! - **Call order is log order.** Calls apply in the order they are made, even when their
//!   futures are polled later or out of order, so a runtime may pipeline writes from one task;
//!   dropping a future does not cancel its write.
//! - **Recovery that refuses to guess.** Opening checks the metadata against every stored key
//!   and the latest snapshot; a store that fails a check is reported as
//!   [`StorageError::Corrupt`](raft_core::StorageError::Corrupt) and left as it is.
//! - **Fail-stop.** After a failed write (an IO error, a full disk) every later write returns
//!   [`StorageError::Stopped`](raft_core::StorageError::Stopped); nothing unwritten is ever
//!   acknowledged.
//! - **Reads see what is on disk.** `bounds`, `load_hard_state` and `entries` report the
//!   durable state: a call still queued is not visible yet. Log reads run on the caller's
//!   thread (RocksDB serves them from memory or a local disk), snapshot reads on tokio's
//!   blocking threads; a read that finds an IO error or damaged data also stops the store.
//! - **Snapshots in files** beside the database ([`SnapshotFiles`]): a
//!   [`SnapshotSink`](raft_core::SnapshotSink) streams into a temporary file on tokio's
//!   blocking threads (several may be open at once; dropping one removes its file), and
//!   `finish` checks the data's length and CRC-32 against the meta, then syncs and renames it.
//!   The latest snapshot only moves forward; the one before it is kept too, so that a leader
//!   streaming it to a follower can usually finish. Reads seek to any offset.
//!
//! The store enforces the invariants of [`HardState`](raft_core::HardState) (term and commit
//! never decrease, one vote per term), never truncates an entry at or below the saved commit
//! index, and never saves a commit index past the last entry: a call that would break one fails
//! with `InvalidArgument` and changes nothing. The [`design`] module documents the on-disk
//! layout.
//!
//! ```
//! use raft_core::{Entry, EntryPayload, HardState, LogIndex, LogStore, LogWrite, Term};
//! use raft_storage_rocksdb::{RocksLogStore, RocksLogStoreOptions};
//! use std::sync::Arc;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let directory = tempfile::tempdir()?;
//! let entry = |index: u64| Entry {
//!     term: Term(1),
//!     index: LogIndex(index),
//!     payload: EntryPayload::Command(format!("set x={index}").into()),
//! };
//! let store: Arc<dyn LogStore> =
//!     Arc::new(RocksLogStore::open(directory.path(), RocksLogStoreOptions::default())?);
//! store
//!     .write(&LogWrite {
//!         truncate_from: None,
//!         entries: vec![entry(1), entry(2), entry(3)],
//!         hard_state: Some(HardState { term: Term(1), vote: None, commit: LogIndex(2) }),
//!     })
//!     .await?; // synced: it survives a crash from here on
//! drop(store);
//!
//! let store = RocksLogStore::open(directory.path(), RocksLogStoreOptions::default())?;
//! assert_eq!(store.bounds().await?.last, LogIndex(3));
//! assert_eq!(store.entries(LogIndex(2)..LogIndex(4)).await?, vec![entry(2), entry(3)]);
//! assert_eq!(store.load_hard_state().await?.commit, LogIndex(2));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! Snapshots go through the [`LogStore`](raft_core::LogStore) trait like everything else:
//!
//! ```
//! use raft_core::membership::Membership;
//! use raft_core::snapshot::checksum;
//! use raft_core::{LogIndex, LogStore, NodeId, SnapshotMeta, Term};
//! use raft_storage_rocksdb::{RocksLogStore, RocksLogStoreOptions};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let directory = tempfile::tempdir()?;
//! let store = RocksLogStore::open(directory.path(), RocksLogStoreOptions::default())?;
//! let data = b"state machine bytes";
//! let mut sink = store.begin_snapshot().await?;
//! sink.write(&data[..6]).await?;
//! sink.write(&data[6..]).await?;
//! let meta = SnapshotMeta {
//!     last_index: LogIndex(120),
//!     last_term: Term(3),
//!     membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
//!     data_bytes: data.len() as u64,
//!     checksum: checksum(data),
//!     format_version: 1, // the state machine's data format
//! };
//! sink.finish(&meta).await?; // durable, whole and the latest from here on
//! drop(store);
//!
//! let store = RocksLogStore::open(directory.path(), RocksLogStoreOptions::default())?;
//! assert_eq!(store.snapshot().await?, Some(meta.clone()));
//! assert_eq!(&store.read_snapshot(&meta, 6, 7).await?[..], b"machine");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! Below the trait, [`SnapshotFiles`] can be used alone (its calls block on file IO):
//!
//! ```
//! use raft_core::{LogIndex, Term};
//! use raft_storage_rocksdb::{Finished, SnapshotFiles, SnapshotId, SnapshotOptions};
//!
//! let directory = tempfile::tempdir()?;
//! let snapshots = SnapshotFiles::open(directory.path(), SnapshotOptions::default())?;
//! let id = SnapshotId { last_index: LogIndex(120), last_term: Term(3) };
//! let mut writer = snapshots.begin()?;
//! writer.write_chunk(b"state machine ")?;
//! writer.write_chunk(b"bytes")?;
//! // Durable and whole from here on, named only now that the data is complete.
//! assert!(matches!(writer.finish(id, "n1,n2,n3".into())?, Finished::Published(_)));
//!
//! let mut reader = snapshots.open_latest()?.expect("one snapshot");
//! assert_eq!(reader.meta().id, id);
//! let mut data = Vec::new();
//! while let Some(chunk) = reader.next_chunk()? {
//!     data.extend_from_slice(&chunk);
//! }
//! assert_eq!(data, b"state machine bytes");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Building: the CRC32C instruction
//!
//! RocksDB checksums every write-ahead log record and every block with CRC32C. On x86-64,
//! `librocksdb-sys` compiles RocksDB's hardware CRC32C (SSE4.2, with PCLMULQDQ for long
//! buffers) only when the build asks for those instructions; otherwise RocksDB falls back, with
//! no warning, to a table-driven CRC32C, which was about 2% of all CPU in this workspace's
//! replicated write benchmark. This workspace asks in its own `.cargo/config.toml`, but Cargo
//! reads configuration only from the directory it runs in (and its parents) and from
//! `CARGO_HOME`, never from a dependency's, so a crate that depends on this one builds the
//! slow table unless it asks too. Either add to the `.cargo/config.toml` of the workspace that
//! builds your binary (flags for RocksDB's C++ only: no Rust crate rebuilds for them)
//!
//! ```toml
//! [env]
//! CXXFLAGS_x86_64_unknown_linux_gnu = "-msse4.2 -mpclmul"
//! ```
//!
//! or build with the Rust target features, which `librocksdb-sys` turns into the same flags
//! (and which apply to every Rust crate as well):
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+sse4.2,+pclmulqdq" cargo build --release
//! ```
//!
//! (or `-C target-cpu=native` for the machine that builds). Both need an x86-64 CPU with
//! SSE4.2 and PCLMULQDQ (Intel since 2010, AMD since 2011). A store opened by such a build
//! says `Fast CRC32 supported: Supported on x86` near the top of `<directory>/db/LOG`; a build
//! without them says `Not supported on x86`.
#![deny(missing_docs)]

mod codec;
mod options;
mod snapshot;
mod snapshot_store;
mod store;

pub use options::{RocksLogStoreOptions, SnapshotOptions};
pub use snapshot::{
    Finished, SnapshotFileMeta, SnapshotFiles, SnapshotId, SnapshotReader, SnapshotWriter,
};
pub use store::{RocksLogStore, WriteStats};

#[doc = include_str!("../DESIGN.md")]
pub mod design {}
