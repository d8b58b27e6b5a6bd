//! One partition's log: its segments (see `segment`), the aligned staging buffers, the tail
//! cache, offsets, idempotence checks, durability tracking, roll, retention and recovery.
//!
//! Owns every file of its directory and every byte buffered for it. Must never block on a
//! lock shared with another shard, never hold a `RefCell` borrow across an `.await`, and
//! never hand out a `Bytes` backed by shard-local memory (`Rc`, `DmaBuffer`).
//!
//! The work is split along the data flow: `open` (recovery), `write_queue` (staging buffer
//! to device), `roll` (a new segment, and finishing the old one in the background), `read`
//! (tail cache, device, time index, long-poll waits, the high watermark limit), `epochs`
//! (leader epoch stamping and cache), `truncate` (cutting the log back) and `replica`
//! (a follower's appends). This file holds the state they
//! share, the append front (place in line, producer checks, offsets, the tail cache),
//! durability (`flush`) and close; `retention` deletes old segments.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

use bytes::Bytes;
use glommio::io::DmaFile;

use super::batch::{self, BatchHeader};
use super::epochs::EpochCache;
use super::event::Event;
use super::files::{self, CleanShutdown};
use super::producer::{ProducerStates, SequenceCheck};
use super::segment::{align_up, Segment, PAGE_BYTES};
use super::{AppendInfo, LogConfig, LogError};
use crate::sync::{FifoLock, Place};

use write_queue::WriteQueue;

pub(super) mod clean;
mod epochs;
mod open;
mod read;
mod replica;
mod retention;
mod roll;
mod truncate;
mod write_queue;

/// Relative offsets and positions are u32 in the index files, as in Kafka.
const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;

/// A batch kept in memory for readers near the head: the stamped head (base offset, length
/// and leader epoch, or the whole header under LogAppendTime) and the rest of the batch as
/// received, so serving it copies nothing.
struct CachedBatch {
    header: BatchHeader,
    segment_base: i64,
    end_position: u64,
    offset_chunk: Bytes,
    body: Bytes,
}

struct State {
    segments: Vec<Segment>,
    cache: VecDeque<CachedBatch>,
    cache_bytes: usize,
    producers: ProducerStates,
}

/// A partition's commit log. Used as `Rc<PartitionLog>` from one shard.
pub struct PartitionLog {
    me: Weak<PartitionLog>,
    dir: PathBuf,
    config: RefCell<LogConfig>,
    state: RefCell<State>,
    /// The write path: staging buffer, sealed and issued writes (see `write_queue`).
    writes: WriteQueue,
    /// Serialises appends in the order their places were taken (FIFO by construction):
    /// offsets, buffer order and producer checks must not interleave, and an append may
    /// never overtake one that took its place earlier.
    appends: FifoLock,
    syncing: Cell<bool>,
    /// A rolled segment is being finished in the background (`finish_segment`).
    finishing: Cell<bool>,
    /// The file of the next segment, opened ahead (`files::NEXT_SEGMENT_FILE`).
    next_file: RefCell<Option<Rc<DmaFile>>>,
    /// A task is creating `next_file`: one at a time, or two could open the same path.
    preparing_next: Cell<bool>,
    finish_event: Event,
    log_start_offset: Cell<i64>,
    log_end_offset: Cell<i64>,
    written_offset: Cell<i64>,
    durable_offset: Cell<i64>,
    appended_total: Cell<u64>,
    written_total: Cell<u64>,
    durable_total: Cell<u64>,
    data_event: Event,
    sync_event: Event,
    closed: Cell<bool>,
    failure: RefCell<Option<String>>,
    /// A cleaning pass is running (`clean`): retention waits, so segments stay put.
    cleaning: Cell<bool>,
    /// Offsets below this were cleaned in this run (not persisted: after a restart the
    /// first pass cleans everything once more, which changes nothing already clean).
    clean_point: Cell<i64>,
    /// When the earliest tombstone the last pass kept expires: a pass is due then even if
    /// nothing else is dirty (Kafka KIP-534).
    tombstone_expiry_ms: Cell<Option<i64>>,
    /// The epoch producer appends stamp into their batches; -1 stamps nothing.
    leader_epoch: Cell<i32>,
    /// Where each leader epoch starts (see `epochs`); changed only in the append line.
    epochs: RefCell<EpochCache>,
    /// The replication layer's high watermark; `None` for a log that is not replicated.
    high_watermark: Cell<Option<i64>>,
    /// A truncation or reset is running: no cleaning pass, retention or sync starts.
    truncating: Cell<bool>,
}

impl PartitionLog {
    fn check_usable(&self) -> Result<(), LogError> {
        if let Some(f) = &*self.failure.borrow() {
            return Err(LogError::Failed(f.clone()));
        }
        if self.closed.get() {
            return Err(LogError::Closed);
        }
        Ok(())
    }

    fn fail(&self, e: &LogError) {
        tracing::error!(dir = %self.dir.display(), error = %e, "log write failed; refusing further appends");
        self.failure
            .borrow_mut()
            .get_or_insert_with(|| e.to_string());
        self.writes.write_event.notify();
        self.sync_event.notify();
    }

    /// Validates and appends one or more concatenated RecordBatch v2 (a Produce partition's
    /// records field), assigning consecutive offsets. See `write_queue` for the write path.
    pub async fn append(&self, batches: Bytes, now_ms: i64) -> Result<AppendInfo, LogError> {
        self.append_in_place(self.reserve_append(), batches, now_ms)
            .await
    }

    /// Takes the next place in this log's append line, now. Appends made with
    /// [`append_in_place`](Self::append_in_place) take effect in the order their places were
    /// reserved, whatever order their tasks run in; a place dropped unused lets the next go.
    pub fn reserve_append(&self) -> Place {
        self.appends.enqueue()
    }

    /// [`append`](Self::append) at a place reserved earlier: waits until every place
    /// reserved before it was used or dropped.
    pub async fn append_in_place(
        &self,
        place: Place,
        batches: Bytes,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let max_batch_bytes = self.config.borrow().max_batch_bytes as usize;
        // Validation needs no place in line: a bad batch fails without waiting.
        let parsed = batch::validate_all(&batches, max_batch_bytes)?;
        place.acquired().await;
        self.check_usable()?;
        let headers: Vec<BatchHeader> = parsed.iter().map(|p| p.1).collect();
        let checks = self.state.borrow().producers.check_all(&headers)?;
        let duplicates: Vec<(i64, i64)> = checks
            .iter()
            .filter_map(|c| match c {
                SequenceCheck::Duplicate {
                    base_offset,
                    last_offset,
                } => Some((*base_offset, *last_offset)),
                SequenceCheck::Fresh => None,
            })
            .collect();
        if !duplicates.is_empty() {
            if duplicates.len() == checks.len() {
                return Ok(AppendInfo {
                    base_offset: duplicates[0].0,
                    last_offset: duplicates[duplicates.len() - 1].1,
                    log_append_time_ms: -1,
                    log_start_offset: self.log_start_offset.get(),
                    duplicate: true,
                    leader_epoch: self.leader_epoch.get(),
                });
            }
            let h = headers[checks
                .iter()
                .position(|c| *c != SequenceCheck::Fresh)
                .expect("one")];
            return Err(LogError::DuplicateSequence {
                producer_id: h.producer_id(),
                base_sequence: h.base_sequence(),
            });
        }
        let records: i64 = headers
            .iter()
            .map(|h| h.last_offset_delta() as i64 + 1)
            .sum();
        if self.should_roll(batches.len() as u64, records, now_ms) {
            self.roll().await.inspect_err(|e| self.fail(e))?;
        }
        let append_time_ms = self.config.borrow().log_append_time.then_some(now_ms);
        let leader_epoch = Some(self.leader_epoch.get()).filter(|e| *e >= 0);
        let base_offset = self
            .write_batches(&batches, parsed, leader_epoch, append_time_ms, now_ms)
            .await?;
        Ok(AppendInfo {
            base_offset,
            last_offset: self.log_end_offset.get() - 1,
            log_append_time_ms: append_time_ms.unwrap_or(-1),
            log_start_offset: self.log_start_offset.get(),
            duplicate: false,
            leader_epoch: leader_epoch.unwrap_or(-1),
        })
    }

    /// Write validated batches at the log end, each at the next offset (stamped with
    /// `leader_epoch` and `append_time_ms` if given), into the cache and the write queue.
    /// Returns the first batch's offset. The caller holds this log's place in line.
    async fn write_batches(
        &self,
        batches: &Bytes,
        parsed: Vec<(usize, BatchHeader)>,
        leader_epoch: Option<i32>,
        append_time_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<i64, LogError> {
        let base_offset = self.log_end_offset.get();
        // Before any byte of the batches can reach the device: a batch on disk always has
        // its epoch in the checkpoint (see `epochs`).
        self.note_epochs(&parsed, leader_epoch, base_offset).await?;
        let interval = self.config.borrow().index_interval_bytes.max(1) as u64;
        for (at, header) in parsed {
            let size = header.total_bytes();
            let offset = self.log_end_offset.get();
            let (stamped, offset_chunk, body) =
                batch::stamp(batches, at, header, offset, leader_epoch, append_time_ms);
            self.copy_into_staging(&offset_chunk).await?;
            self.copy_into_staging(&body).await?;
            let next = stamped.last_offset() + 1;
            let total = self.appended_total.get() + size as u64;
            {
                let mut st = self.state.borrow_mut();
                let st = &mut *st;
                let seg = st.segments.last_mut().expect("active segment");
                let position = seg.size_bytes;
                if seg.size_bytes == 0 {
                    seg.created_ms = Some(now_ms);
                }
                seg.note_batch(position, &stamped, interval);
                st.producers.record(&stamped, offset);
                st.cache.push_back(CachedBatch {
                    header: stamped,
                    segment_base: seg.base_offset,
                    end_position: position + size as u64,
                    offset_chunk,
                    body,
                });
                st.cache_bytes += size;
            }
            let mut staging = self.writes.staging.borrow_mut();
            staging.complete_offset = next;
            staging.complete_total = total;
            self.appended_total.set(total);
            self.log_end_offset.set(next);
        }
        self.evict_cache();
        self.data_event.notify();
        Ok(base_offset)
    }

    fn should_roll(&self, bytes: u64, records: i64, now_ms: i64) -> bool {
        let config = self.config.borrow();
        let st = self.state.borrow();
        let seg = st.segments.last().expect("active segment");
        if seg.size_bytes == 0 {
            return false;
        }
        let segment_bytes = config.segment_bytes.min(SEGMENT_BYTES_MAX);
        seg.size_bytes + bytes > segment_bytes
            || seg
                .created_ms
                .is_some_and(|c| now_ms.saturating_sub(c) >= config.segment_ms as i64)
            || self.log_end_offset.get() + records - seg.base_offset > u32::MAX as i64
    }

    fn check_failed(&self) -> Result<(), LogError> {
        match &*self.failure.borrow() {
            Some(f) => Err(LogError::Failed(f.clone())),
            None => Ok(()),
        }
    }

    /// Drops cached batches beyond `tail_cache_bytes`, oldest first, but only those already
    /// on the device: unwritten batches have no other copy a reader could use.
    fn evict_cache(&self) {
        let limit = self.config.borrow().tail_cache_bytes;
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        while st.cache_bytes > limit {
            let Some(front) = st.cache.front() else { break };
            let written = st
                .segments
                .iter()
                .rev()
                .find(|s| s.base_offset == front.segment_base)
                .map_or(u64::MAX, |s| s.written_bytes);
            if front.end_position > written {
                break;
            }
            st.cache_bytes -= front.header.total_bytes();
            st.cache.pop_front();
        }
    }

    /// fdatasyncs the active file until everything written so far is durable; callers that
    /// arrive during a sync wait for it and then share the next one (group commit).
    async fn sync_written(&self) -> Result<i64, LogError> {
        let mut target = self.written_offset.get();
        loop {
            self.check_failed()?;
            // A truncation may have moved the written offset back below the target.
            target = target.min(self.written_offset.get());
            if self.durable_offset.get() >= target {
                return Ok(self.durable_offset.get());
            }
            if self.syncing.get() {
                self.sync_event.listen().await;
                continue;
            }
            if self.finishing.get() || self.truncating.get() {
                // A rolled segment's data is durable only once its finish synced it, and
                // syncing the active file covers only what is in that file. A truncation
                // swaps the active file and syncs it itself.
                self.finish_event.listen().await;
                continue;
            }
            self.syncing.set(true);
            let covered = self.written_offset.get();
            let covered_total = self.written_total.get();
            let file = self
                .state
                .borrow()
                .segments
                .last()
                .expect("active segment")
                .file
                .clone();
            let result = file.fdatasync().await;
            self.syncing.set(false);
            if result.is_ok() {
                self.durable_offset
                    .set(self.durable_offset.get().max(covered));
                self.durable_total
                    .set(self.durable_total.get().max(covered_total));
            }
            self.sync_event.notify();
            if let Err(e) = result {
                let e = LogError::from(e);
                self.fail(&e);
                return Err(e);
            }
        }
    }

    /// Writes out everything buffered and fdatasyncs; returns the new durable offset.
    /// Concurrent callers share one sync (group commit).
    pub async fn flush(&self) -> Result<i64, LogError> {
        self.check_failed()?;
        if self.closed.get() {
            return Ok(self.durable_offset.get());
        }
        self.write_staged().await?;
        let durable = self.sync_written().await?;
        // Index entries go to the page cache after the data they point to is durable.
        self.state
            .borrow_mut()
            .segments
            .last_mut()
            .expect("active segment")
            .persist_indexes(&self.dir)?;
        Ok(durable)
    }

    /// Offset of the log's first batch.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset.get()
    }

    /// Next offset to be assigned.
    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset.get()
    }

    /// Offsets below this are fsynced.
    pub fn durable_offset(&self) -> i64 {
        self.durable_offset.get()
    }

    /// Bytes appended but not yet durable.
    pub fn dirty_bytes(&self) -> u64 {
        self.appended_total.get() - self.durable_total.get()
    }

    /// True once a write or sync failed: appends are refused until the log is reopened.
    pub fn is_failed(&self) -> bool {
        self.failure.borrow().is_some()
    }

    /// True once `close` or `delete` ran.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A copy of the current settings.
    pub fn config(&self) -> LogConfig {
        self.config.borrow().clone()
    }

    /// Replaces the settings; size limits apply from the next append or roll.
    pub fn set_config(&self, config: LogConfig) {
        *self.config.borrow_mut() = config;
        self.evict_cache();
    }

    /// Flushes, syncs, persists indexes and producer state, and leaves a clean-shutdown
    /// marker so that the next open needs no scan.
    pub async fn close(&self) -> Result<(), LogError> {
        if self.closed.get() {
            return Ok(());
        }
        let place = self.appends.enqueue();
        place.acquired().await;
        if self.closed.get() {
            return Ok(());
        }
        let result = self.close_locked().await;
        // Also after a failed close: a delete may follow, and must not pull the directory
        // from under a file being created.
        self.wait_background().await;
        self.closed.set(true);
        self.data_event.notify();
        self.sync_event.notify();
        self.writes.write_event.notify();
        result
    }

    async fn close_locked(&self) -> Result<(), LogError> {
        self.flush().await?;
        // A roll's finish may still be writing indexes or the producer snapshot.
        self.wait_finished().await?;
        self.wait_background().await;
        if self.next_file.borrow_mut().take().is_some() {
            match std::fs::remove_file(self.dir.join(files::NEXT_SEGMENT_FILE)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        let log_end_offset = self.log_end_offset.get();
        let (marker, snapshot) = {
            let mut st = self.state.borrow_mut();
            let seg = st.segments.last_mut().expect("active segment");
            seg.finish_time_index();
            seg.persist_indexes(&self.dir)?;
            let marker = CleanShutdown {
                active_base_offset: seg.base_offset,
                active_size_bytes: seg.size_bytes,
                log_end_offset,
            };
            (marker, st.producers.to_snapshot(log_end_offset))
        };
        files::write_atomic(
            &self.dir,
            files::PRODUCER_SNAPSHOT_FILE,
            &files::encode_checked(&snapshot),
        )?;
        files::write_atomic(
            &self.dir,
            files::CLEAN_SHUTDOWN_FILE,
            &files::encode_checked(&marker),
        )?;
        Ok(())
    }

    /// Closes the log and removes its directory.
    pub async fn delete(&self) -> Result<(), LogError> {
        let closed = self.close().await;
        if let Err(e) = &closed {
            tracing::warn!(dir = %self.dir.display(), error = %e, "close before delete failed");
        }
        self.closed.set(true);
        std::fs::remove_dir_all(&self.dir)?;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn cache_bytes(&self) -> usize {
        self.state.borrow().cache_bytes
    }

    #[cfg(test)]
    pub(crate) fn segment_bases(&self) -> Vec<i64> {
        self.state
            .borrow()
            .segments
            .iter()
            .map(|s| s.base_offset)
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn producer_count(&self) -> usize {
        self.state.borrow().producers.len()
    }

    /// Simulates a process crash at a quiet point: writes already handed to the device
    /// complete, the staging buffer is lost, and no clean-shutdown marker is left.
    #[cfg(test)]
    pub(crate) async fn crash(&self) {
        let place = self.appends.enqueue();
        place.acquired().await;
        // Only writes already handed to the device complete; nothing more is sealed.
        self.spawn_writer();
        let _ = self
            .wait_written_through(self.writes.sealed_seq.get())
            .await;
        // A roll's background finish runs to its end (one of the points a crash can hit).
        self.wait_background().await;
        self.closed.set(true);
        self.data_event.notify();
    }
}

/// Size of a staging buffer: whole pages, and at least two, so a partial last page carried
/// over always leaves room for new bytes.
fn staging_capacity(config: &LogConfig) -> usize {
    align_up(config.write_buffer_bytes.max(2 * PAGE_BYTES as usize) as u64) as usize
}
