//! The simulated disk: a [`LogStore`] over a durable image that a write reaches only when it
//! completes, after a seeded delay in virtual time (sometimes a slow one), or never (it
//! fails, or the node crashed first).

use super::world::{lock, SharedWorld};
use crate::snapshot::{SnapshotMeta, SnapshotSink};
use crate::storage::validate::{check_range, check_write};
use crate::storage::{LogBounds, LogStore, LogWrite, StorageError, StoreStopped};
use crate::testkit::sim::DurableState;
use crate::types::{Entry, HardState, LogIndex, NodeId, Term};
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// How a run's disks behave. Drawn from the seed by [`super::RuntimeSimOptions::from_seed`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiskFaults {
    /// Longest ordinary write, in virtual milliseconds (each draws from 0 to it).
    pub write_delay_ms_max: u64,
    /// Chance that a write is slow: it takes from `slow_write_ms_min` to `slow_write_ms_max`.
    pub slow_write_chance: f64,
    /// Shortest slow write (at least a heartbeat interval, so heartbeats overtake it).
    pub slow_write_ms_min: u64,
    /// Longest slow write.
    pub slow_write_ms_max: u64,
    /// Chance that a write fails (nothing of it becomes durable; the store refuses every later
    /// call of that life, and the node must stop).
    pub write_failure_chance: f64,
}

impl DiskFaults {
    /// A disk that never fails and writes within a millisecond.
    pub const FAST: DiskFaults = DiskFaults {
        write_delay_ms_max: 1,
        slow_write_chance: 0.0,
        slow_write_ms_min: 0,
        slow_write_ms_max: 0,
        write_failure_chance: 0.0,
    };
}

/// One life's handle on a node's simulated disk. The image outlives the handle: a crash ends
/// the life (the world's life counter moves on), and every write of the old life that had not
/// completed is dropped, whenever its delay runs out.
pub struct SimDisk {
    world: SharedWorld,
    node: NodeId,
    life: u64,
}

impl SimDisk {
    pub(crate) fn new(world: SharedWorld, node: NodeId, life: u64) -> SimDisk {
        SimDisk { world, node, life }
    }

    /// A disk of its own, outside any run (node 1, with `faults`, seeded by `seed`), to test
    /// it alone: [`SimDisk::reopen`] crashes and restarts it.
    pub fn standalone(faults: DiskFaults, seed: u64) -> SimDisk {
        let mut world = super::world::World::new(
            seed,
            "a standalone simulated disk".to_string(),
            vec![NodeId(1)],
            crate::sessions::SessionLimits::from_config(&crate::Config::new(
                NodeId(1),
                vec![NodeId(1)],
            )),
            super::NetworkFaults::CALM,
            faults,
            false,
        );
        world.checking = false;
        SimDisk::new(
            std::sync::Arc::new(std::sync::Mutex::new(world)),
            NodeId(1),
            0,
        )
    }

    /// Ends this handle's life, as a crash does (its writes not yet complete are lost), and
    /// returns a handle of the next life on the same durable image.
    pub fn reopen(&self) -> SimDisk {
        let mut world = lock(&self.world);
        let life = world.lives.get_mut(&self.node).expect("a disk per node");
        *life += 1;
        let next = *life;
        if let Some(disk) = world.disks.get_mut(&self.node) {
            disk.open_sinks.clear();
        }
        SimDisk::new(self.world.clone(), self.node, next)
    }

    /// What survives a crash now.
    pub fn durable(&self) -> DurableState {
        lock(&self.world).disks[&self.node].image.clone()
    }

    /// Refuses a call from a life that ended or whose store failed.
    fn check_life(&self) -> Result<(), StorageError> {
        let world = lock(&self.world);
        let disk = &world.disks[&self.node];
        if !world.is_current(self.node, self.life) {
            return Err(StorageError::Stopped(StoreStopped::LifeEnded));
        }
        match &disk.failed_life {
            Some((life, failure)) if *life == self.life => Err(StorageError::Stopped(
                StoreStopped::Failed(Arc::clone(failure)),
            )),
            _ => Ok(()),
        }
    }

    /// Waits for the write's seeded delay; then says whether it may complete: the life still
    /// runs, and the seed does not fail it.
    async fn complete(&self, what: &str) -> Result<(), StorageError> {
        self.check_life()?;
        let delay_ms = {
            let mut world = lock(&self.world);
            let faults = world.disk_faults;
            if world.rng.chance(faults.slow_write_chance) {
                world
                    .rng
                    .between(faults.slow_write_ms_min, faults.slow_write_ms_max)
            } else {
                world.rng.between(0, faults.write_delay_ms_max)
            }
        };
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        let mut world = lock(&self.world);
        if !world.is_current(self.node, self.life) {
            world.counters.writes_lost += 1;
            let (node, life) = (self.node, self.life);
            world.record(format_args!("{node} lost {what} of life {life} in a crash"));
            return Err(StorageError::Stopped(StoreStopped::LifeEnded));
        }
        let chance = world.disk_faults.write_failure_chance;
        if world.rng.chance(chance) {
            world.counters.writes_failed += 1;
            let now = world.now_ms();
            let node = self.node;
            let failure =
                || std::io::Error::other(format!("simulated failure of {what} on {node}"));
            let disk = world.disks.get_mut(&node).expect("a disk per node");
            // The same failure, kept for the calls this life makes after it.
            disk.failed_life = Some((self.life, Arc::new(StorageError::Io(failure()))));
            disk.failed_at_ms.get_or_insert(now);
            world.record(format_args!("{node} failed {what}"));
            return Err(StorageError::Io(failure()));
        }
        Ok(())
    }

    /// Applies `write` to the image, checking it first and telling the world what changes.
    fn apply(&self, write: &LogWrite) -> Result<(), StorageError> {
        let mut world = lock(&self.world);
        let node = self.node;
        let image = &world.disks[&node].image;
        let bounds = bounds_of(image);
        let last = check_write(
            bounds,
            &image.hard_state,
            write.truncate_from,
            &write.entries,
            write.hard_state.as_ref(),
        )?
        .last;
        let removed: Vec<Entry> = match write.truncate_from {
            Some(from) if from <= bounds.last => image.entries[offset(image, from)..].to_vec(),
            _ => Vec::new(),
        };
        let previous_term = write
            .entries
            .first()
            .and_then(|first| term_at(image, &removed, first.index.prev()));
        world.on_durable_write(
            node,
            &removed,
            previous_term,
            &write.entries,
            write.hard_state,
        );
        let disk = world.disks.get_mut(&node).expect("a disk per node");
        let image = &mut disk.image;
        if let Some(from) = write.truncate_from {
            if from <= bounds.last {
                let keep = offset(image, from);
                image.entries.truncate(keep);
            }
        }
        image.entries.extend(write.entries.iter().cloned());
        if let Some(hard_state) = write.hard_state {
            image.hard_state = hard_state;
        }
        assert_eq!(bounds_of(image).last, last, "the write lands where checked");
        assert!(image.hard_state.commit <= last.max(image.snapshot_index()));
        world.counters.writes_durable += 1;
        let (hard_state, last_index) = (write.hard_state, last);
        world.record(format_args!(
            "{node} durable: truncate {:?} append {} to {last_index} hard state {hard_state:?}",
            write.truncate_from,
            write.entries.len()
        ));
        world.after_durable_write(node);
        Ok(())
    }

    fn with_image<T>(&self, read: impl FnOnce(&DurableState) -> T) -> Result<T, StorageError> {
        self.check_life()?;
        let world = lock(&self.world);
        Ok(read(&world.disks[&self.node].image))
    }
}

fn bounds_of(image: &DurableState) -> LogBounds {
    LogBounds {
        first: image.first_index,
        last: image.last_index(),
    }
}

fn offset(image: &DurableState, index: LogIndex) -> usize {
    assert!(index >= image.first_index, "an index the log still holds");
    (index.0 - image.first_index.0) as usize
}

/// The term of the entry at `index` before a write removes `removed` (0 at index 0), if known.
fn term_at(image: &DurableState, removed: &[Entry], index: LogIndex) -> Option<Term> {
    if index == LogIndex(0) {
        return Some(Term(0));
    }
    if let Some((meta, _)) = &image.snapshot {
        if meta.last_index == index {
            return Some(meta.last_term);
        }
    }
    let held = image
        .entry(index)
        .filter(|_| !removed.iter().any(|r| r.index == index));
    held.map(|entry| entry.term)
}

#[async_trait]
impl LogStore for SimDisk {
    async fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let write = LogWrite {
            entries: entries.to_vec(),
            ..LogWrite::default()
        };
        self.write(&write).await
    }

    async fn truncate(&self, from: LogIndex) -> Result<(), StorageError> {
        let write = LogWrite {
            truncate_from: Some(from),
            ..LogWrite::default()
        };
        self.write(&write).await
    }

    async fn purge(&self, up_to: LogIndex) -> Result<(), StorageError> {
        // Need not be durable: done at once, no delay, never failed.
        self.check_life()?;
        let mut world = lock(&self.world);
        let node = self.node;
        let image = &mut world.disks.get_mut(&node).expect("a disk per node").image;
        let bounds = bounds_of(image);
        if up_to < bounds.first {
            return Ok(());
        }
        if up_to >= bounds.last {
            image.entries.clear();
        } else {
            let dropped = offset(image, up_to.next());
            image.entries.drain(..dropped);
        }
        image.first_index = up_to.next();
        world.record(format_args!("{node} purged to {up_to}"));
        Ok(())
    }

    async fn entries(&self, range: Range<LogIndex>) -> Result<Vec<Entry>, StorageError> {
        self.with_image(|image| {
            check_range(bounds_of(image), &range)?;
            if range.start == range.end {
                return Ok(Vec::new());
            }
            let (start, end) = (offset(image, range.start), offset(image, range.end));
            Ok(image.entries[start..end].to_vec())
        })?
    }

    async fn bounds(&self) -> Result<LogBounds, StorageError> {
        self.with_image(bounds_of)
    }

    async fn save_hard_state(&self, hard_state: &HardState) -> Result<(), StorageError> {
        let write = LogWrite {
            hard_state: Some(*hard_state),
            ..LogWrite::default()
        };
        self.write(&write).await
    }

    async fn load_hard_state(&self) -> Result<HardState, StorageError> {
        self.with_image(|image| image.hard_state)
    }

    async fn begin_snapshot(&self) -> Result<Box<dyn SnapshotSink>, StorageError> {
        self.check_life()?;
        let mut world = lock(&self.world);
        let number = world.rng.next_u64();
        let disk = world.disks.get_mut(&self.node).expect("a disk per node");
        disk.open_sinks.insert(number, 0);
        Ok(Box::new(SimSink {
            disk: SimDisk::new(self.world.clone(), self.node, self.life),
            number,
            data: Vec::new(),
        }))
    }

    async fn snapshot(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        self.with_image(|image| image.snapshot.as_ref().map(|(meta, _)| meta.clone()))
    }

    async fn read_snapshot(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        bytes_max: usize,
    ) -> Result<Bytes, StorageError> {
        self.with_image(|image| match &image.snapshot {
            Some((held, data)) if held.same_snapshot(meta) => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(bytes_max).min(data.len());
                Ok(data.slice(start..end))
            }
            _ => Err(StorageError::SnapshotNotHeld {
                last_index: meta.last_index,
                last_term: meta.last_term,
            }),
        })?
    }

    async fn write(&self, write: &LogWrite) -> Result<(), StorageError> {
        if write.is_empty() {
            return self.check_life();
        }
        self.complete("a log write").await?;
        self.apply(write)
    }
}

/// A snapshot being written into a [`SimDisk`]: its bytes count as held once written (the
/// protocol reports received bytes only after the writer wrote them), and it becomes durable,
/// after a seeded delay, at `finish`. A crash drops it.
struct SimSink {
    disk: SimDisk,
    number: u64,
    data: Vec<u8>,
}

impl Drop for SimSink {
    fn drop(&mut self) {
        let mut world = lock(&self.disk.world);
        if let Some(disk) = world.disks.get_mut(&self.disk.node) {
            disk.open_sinks.remove(&self.number);
        }
    }
}

#[async_trait]
impl SnapshotSink for SimSink {
    async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.disk.check_life()?;
        self.data.extend_from_slice(data);
        let mut world = lock(&self.disk.world);
        let disk = world
            .disks
            .get_mut(&self.disk.node)
            .expect("a disk per node");
        disk.open_sinks.insert(self.number, self.data.len());
        Ok(())
    }

    async fn finish(self: Box<Self>, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let checksum = crate::snapshot::checksum(&self.data);
        if self.data.len() as u64 != meta.data_bytes || checksum != meta.checksum {
            return Err(StorageError::Corrupt(format!(
                "snapshot at {} has {} bytes with checksum {checksum:08x}, expected {} bytes \
                 with {:08x}",
                meta.last_index,
                self.data.len(),
                meta.data_bytes,
                meta.checksum
            )));
        }
        self.disk.complete("a snapshot").await?;
        let mut world = lock(&self.disk.world);
        let node = self.disk.node;
        let disk = world.disks.get_mut(&node).expect("a disk per node");
        let newer = disk
            .image
            .snapshot
            .as_ref()
            .is_none_or(|(held, _)| meta.last_index > held.last_index);
        if newer {
            disk.image.snapshot = Some((meta.clone(), Bytes::from(self.data.clone())));
            world.counters.snapshots_stored += 1;
            world.record(format_args!(
                "{node} durable: snapshot at {}/{}",
                meta.last_index, meta.last_term
            ));
            world.after_durable_write(node);
        }
        Ok(())
    }
}
