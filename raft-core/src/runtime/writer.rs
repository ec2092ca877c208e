//! The writer task: makes the protocol's writes durable in order, one store call for
//! everything queued (group commit), then releases the messages that waited for them. It also
//! writes received snapshot chunks into a store sink and purges the compacted log.

use super::driver::{send, Shared};
use super::stop::{StopCause, StoreOperation};
use crate::network::Network;
use crate::protocol::plan::{self, WriteGroup, WriteJob, WriteStep, MERGED_WRITES_MAX};
use crate::protocol::SnapshotWrite;
use crate::snapshot::SnapshotSink;
use crate::storage::{LogStore, StorageError};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The writer's state between groups: the snapshot being received and its sink.
struct Receiving {
    cursor: plan::SnapshotCursor,
    sink: Option<Box<dyn SnapshotSink>>,
}

pub(super) async fn run(
    store: Arc<dyn LogStore>,
    network: Arc<dyn Network>,
    mut jobs: mpsc::Receiver<WriteJob>,
    shared: Arc<Shared>,
    leader_write_delay_max: Duration,
) {
    let mut receiving = Receiving {
        cursor: plan::SnapshotCursor::default(),
        sink: None,
    };
    let mut meters = shared.metrics.peer_meters();
    // Jobs received and not yet written, in order (a group may leave some for the next).
    let mut queued: VecDeque<WriteJob> = VecDeque::new();
    loop {
        if queued.is_empty() {
            match jobs.recv().await {
                Some(job) => queued.push_back(job),
                None => return,
            }
        }
        while queued.len() < MERGED_WRITES_MAX {
            let Ok(job) = jobs.try_recv() else { break };
            queued.push_back(job);
        }
        if plan::group_may_wait(queued.make_contiguous()) {
            let deadline = Instant::now() + leader_write_delay_max;
            while plan::group_may_wait(queued.make_contiguous()) {
                match tokio::time::timeout_at(deadline, jobs.recv()).await {
                    Ok(Some(job)) => queued.push_back(job),
                    // Waited long enough, or the driver stopped: write what there is.
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let count = plan::group_len(&queued);
        let group = WriteGroup::merge(queued.drain(..count));
        let started = Instant::now();
        let mut entries = 0;
        let mut last = None;
        for step in &group.steps {
            if let WriteStep::Log(write) = step {
                entries += write.entries.len();
                last = write.entries.last().map(|e| e.index).or(last);
            }
        }
        if let Err(cause) = write_group(&*store, &mut receiving, group.steps).await {
            shared.fail(cause);
            return;
        }
        shared.metrics.written(entries, started.elapsed());
        if let Some(last) = last {
            tracing::debug!(last = last.0, entries, "durable");
        }
        for message in group.release {
            send(&*network, &mut meters, message);
        }
        shared
            .persisted_number
            .store(group.persisted, Ordering::Release);
        shared.notify.notify_one();
    }
}

/// Carries out a group's store operations in order.
async fn write_group(
    store: &dyn LogStore,
    receiving: &mut Receiving,
    steps: Vec<WriteStep>,
) -> Result<(), StopCause> {
    for step in steps {
        match step {
            WriteStep::Log(write) => store
                .write(&write)
                .await
                .map_err(failed(StoreOperation::WriteLog))?,
            WriteStep::Purge(up_to) => store
                .purge(up_to)
                .await
                .map_err(failed(StoreOperation::PurgeLog))?,
            WriteStep::Snapshot(write) => write_snapshot(store, receiving, write).await?,
        }
    }
    Ok(())
}

/// Writes received data into the open sink (data at offset 0 opens a new one) and finishes
/// it with the last piece.
async fn write_snapshot(
    store: &dyn LogStore,
    receiving: &mut Receiving,
    write: SnapshotWrite,
) -> Result<(), StopCause> {
    let place = receiving
        .cursor
        .place(&write)
        .map_err(StopCause::SnapshotData)?;
    if place.opens {
        let sink = store
            .begin_snapshot()
            .await
            .map_err(failed(StoreOperation::BeginSnapshot))?;
        receiving.sink = Some(sink);
    }
    let sink = receiving
        .sink
        .as_mut()
        .expect("the cursor places data only in an open sink");
    sink.write(&write.data)
        .await
        .map_err(failed(StoreOperation::WriteSnapshot))?;
    if place.finishes {
        let sink = receiving.sink.take().expect("open above");
        sink.finish(&write.meta)
            .await
            .map_err(failed(StoreOperation::FinishSnapshot))?;
    }
    Ok(())
}

/// The fail-stop cause of a store error in `operation`.
fn failed(operation: StoreOperation) -> impl FnOnce(StorageError) -> StopCause {
    move |error| StopCause::LogStore {
        operation,
        error: Arc::new(error),
    }
}
