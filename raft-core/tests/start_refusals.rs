//! Issue 13: durable state that does not fit together (a corrupt log, say) is refused at start
//! with a typed cause a caller can match on, not a configuration error holding a sentence; and
//! the refusal changes nothing on disk.

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::local_network::LocalRouter;
use raft_core::protocol::{RawNode, Restore, RestoreError, StartError};
use raft_core::runtime::{NodeError, RaftNode, RuntimeOptions};
use raft_core::{
    Config, ConfigError, Entry, EntryPayload, HardState, LogBounds, LogIndex, LogStore, NodeId,
    StateMachine, StateMachineError, Term,
};
use raft_storage_mem::MemLogStore;
use std::sync::Arc;

fn entry(index: u64) -> Entry {
    Entry {
        term: Term(1),
        index: LogIndex(index),
        payload: EntryPayload::Command(Bytes::from_static(b"x")),
    }
}

fn config() -> Config {
    Config::new(NodeId(1), vec![NodeId(1)])
}

#[test]
fn raw_node_names_the_part_of_a_restore_that_does_not_fit() {
    let with_hole = Restore {
        entries: vec![entry(1), entry(3)],
        ..Restore::default()
    };
    assert_eq!(
        RawNode::new(config(), with_hole).err(),
        Some(StartError::Restore(RestoreError::LogHole {
            before: LogIndex(1),
            after: LogIndex(3),
        }))
    );
    let uncovered = Restore {
        entries: vec![entry(4)],
        ..Restore::default()
    };
    assert_eq!(
        RawNode::new(config(), uncovered).err(),
        Some(StartError::Restore(RestoreError::NoSnapshotBeforeLog {
            first: LogIndex(4)
        }))
    );
    let commit_past_log = Restore {
        hard_state: HardState {
            commit: LogIndex(3),
            ..HardState::default()
        },
        entries: vec![entry(1)],
        ..Restore::default()
    };
    let error = RawNode::new(config(), commit_past_log).err();
    assert_eq!(
        error,
        Some(StartError::Restore(RestoreError::CommitBeyondLog {
            commit: LogIndex(3),
            last: LogIndex(1),
        }))
    );
    let message = error.expect("refused").to_string();
    assert!(message.contains("commit index i3"), "{message}");
}

#[test]
fn raw_node_refuses_a_bad_configuration_as_such() {
    let mut bad = config();
    bad.heartbeat_interval_ticks = 0;
    assert!(
        matches!(
            RawNode::new(bad, Restore::default()).err(),
            Some(StartError::Config(ConfigError(_)))
        ),
        "a configuration error, not a restore error"
    );
}

/// Claims to have applied more than any store holds.
struct AheadOfTheLog;

#[async_trait]
impl StateMachine for AheadOfTheLog {
    async fn apply(&mut self, _: LogIndex, _: Bytes) -> Result<Bytes, StateMachineError> {
        Ok(Bytes::new())
    }

    async fn applied_index(&mut self) -> Result<LogIndex, StateMachineError> {
        Ok(LogIndex(5))
    }
}

/// A machine past the end of the log means the log lost entries: the node refuses to start,
/// says so in a variant the caller can match, and leaves the store as it was.
#[tokio::test]
async fn a_node_refuses_to_start_from_a_log_that_ends_before_its_state_machine() {
    let store = Arc::new(MemLogStore::new());
    store.append(&[entry(1), entry(2)]).await.unwrap();
    let error = RaftNode::start(
        config(),
        RuntimeOptions::default(),
        store.clone(),
        Box::new(AheadOfTheLog),
        LocalRouter::new().network(NodeId(1)),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        matches!(
            error,
            NodeError::Restore(RestoreError::AppliedBeyondLog {
                applied: LogIndex(5),
                last: LogIndex(2),
            })
        ),
        "got {error}"
    );
    assert!(error.is_definite(), "{error}");
    let bounds = store.bounds().await.unwrap();
    assert_eq!(
        bounds,
        LogBounds {
            first: LogIndex(1),
            last: LogIndex(2)
        },
        "nothing changed"
    );
    assert_eq!(store.load_hard_state().await.unwrap(), HardState::default());
}

/// A log that starts past index 1 with no snapshot before it lost its head.
#[tokio::test]
async fn a_node_refuses_to_start_from_a_log_whose_head_no_snapshot_covers() {
    let store = Arc::new(MemLogStore::new());
    store.append(&[entry(1), entry(2), entry(3)]).await.unwrap();
    store.purge(LogIndex(1)).await.unwrap();
    let error = RaftNode::start(
        config(),
        RuntimeOptions::default(),
        store.clone(),
        Box::new(AheadOfTheLog),
        LocalRouter::new().network(NodeId(1)),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        matches!(
            error,
            NodeError::Restore(RestoreError::NoSnapshotBeforeLog { first: LogIndex(2) })
        ),
        "got {error}"
    );
    assert_eq!(
        store.entries(LogIndex(2)..LogIndex(4)).await.unwrap().len(),
        2
    );
}

#[tokio::test]
async fn invalid_runtime_options_are_a_configuration_error() {
    let options = RuntimeOptions {
        step_batch_max: 0,
        ..RuntimeOptions::default()
    };
    let error = RaftNode::start(
        config(),
        options,
        Arc::new(MemLogStore::new()),
        Box::new(AheadOfTheLog),
        LocalRouter::new().network(NodeId(1)),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        matches!(&error, NodeError::Config(ConfigError(why)) if why.contains("step_batch_max")),
        "got {error}"
    );
}
