//! One partition's log: its segments (see `segment`), the aligned staging buffers, the tail
//! cache, offsets, idempotence checks, durability tracking, roll, retention and recovery.
//!
//! Owns every file of its directory and every byte buffered for it. Must never block on a
//! lock shared with another shard, never hold a `RefCell` borrow across an `.await`, and
//! never hand out a `Bytes` backed by shard-local memory (`Rc`, `DmaBuffer`).
//!
//! Write path: a batch is validated, its base offset stamped into an 8-byte chunk, and its
//! bytes copied once into the current staging `DmaBuffer` (`write_buffer_bytes`). A full
//! buffer is handed to the issuer task, which starts its write at once: up to
//! `max_writes_in_flight` buffers are on their way to the device while the next one fills,
//! and when that many are sealed and unfinished `append` waits (backpressure). Writes may
//! complete out of order; a write counts as written (readers, `flush`, recovery of the
//! durable offset) only once every write before it completed. A fresh buffer continues from
//! the partially filled last page, which its write rewrites whole, so a write that starts
//! inside the previous write's last page is issued only after everything before it landed.
//! `flush` writes the partial buffer and fdatasyncs; concurrent flushes share one fdatasync.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::Instant;

use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile};
use glommio::sync::Semaphore;

use super::batch::{self, BatchHeader};
use super::event::Event;
use super::files::{self, CleanShutdown};
use super::producer::{ProducerSnapshot, ProducerStates, SequenceCheck};
use super::segment::{
    align_down, align_up, open_segment_file, probe_direct_io, read_batches_at, scan_segment,
    Segment, PAGE_BYTES,
};
use super::{AppendInfo, LogConfig, LogError, ReadResult, RecoveryReport};
use crate::sync::{FifoLock, Place};

/// Bytes read per step while searching batches for a timestamp.
const TIME_LOOKUP_READ_BYTES: usize = 64 << 10;
/// Bytes read per step while replaying producer state on open.
const REPLAY_READ_BYTES: usize = 1 << 20;
/// Relative offsets and positions are u32 in the index files, as in Kafka.
const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;

/// A batch kept in memory for readers near the head: the stamped head (the base offset, or
/// the whole header under LogAppendTime) and the rest of the batch as received, so serving
/// it copies nothing.
struct CachedBatch {
    header: BatchHeader,
    segment_base: i64,
    end_position: u64,
    offset_chunk: Bytes,
    body: Bytes,
}

/// The buffer being filled, mapped onto the active segment from `file_start`.
struct Staging {
    buf: Option<DmaBuffer>,
    capacity: usize,
    segment_base: i64,
    file: Rc<DmaFile>,
    file_start: u64,
    len: usize,
    /// Leading bytes already handed to a write (the partial page carried over).
    carried: usize,
    /// Log end offset and appended byte total after the last whole batch in the buffer.
    complete_offset: i64,
    complete_total: u64,
}

/// A sealed buffer waiting for its write to be issued.
struct PendingWrite {
    seq: u64,
    buf: DmaBuffer,
    file: Rc<DmaFile>,
    segment_base: i64,
    file_start: u64,
    end_position: u64,
    covered_offset: i64,
    covered_total: u64,
}

/// A write handed to the device, in seal order; `done` is set when it completes.
struct IssuedWrite {
    seq: u64,
    done: Option<Result<(), LogError>>,
    segment_base: i64,
    end_position: u64,
    covered_offset: i64,
    covered_total: u64,
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
    staging: RefCell<Staging>,
    pending: RefCell<VecDeque<PendingWrite>>,
    issued: RefCell<VecDeque<IssuedWrite>>,
    /// Sequence number of the last sealed buffer, and the highest one that completed
    /// together with every write before it.
    sealed_seq: Cell<u64>,
    completed_seq: Cell<u64>,
    /// Segment and page-aligned end of the last issued write: a write starting before that
    /// end rewrites its last page and must wait for it.
    last_issued: Cell<Option<(i64, u64)>>,
    /// A written full-size buffer kept for reuse. At most one: an idle partition keeps it
    /// for good, so more would cost memory on every partition ever written.
    spare: RefCell<Option<DmaBuffer>>,
    /// Sealed buffers not yet on the device: bounded to `max_writes_in_flight` by
    /// `append`'s backpressure (one more when a `flush` or roll seals a partial buffer).
    writes_in_flight: Cell<usize>,
    /// Serialises appends in the order their places were taken (FIFO by construction):
    /// offsets, buffer order and producer checks must not interleave, and an append may
    /// never overtake one that took its place earlier.
    appends: FifoLock,
    /// One issuer at a time: writes are issued in seal order.
    write_lock: Semaphore,
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
    write_event: Event,
    sync_event: Event,
    closed: Cell<bool>,
    failure: RefCell<Option<String>>,
}

impl PartitionLog {
    /// Opens (creating if missing) the log in `dir`, recovering after an unclean stop.
    pub async fn open(
        dir: impl AsRef<Path>,
        config: LogConfig,
    ) -> Result<(Rc<PartitionLog>, RecoveryReport), LogError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        probe_direct_io(&dir).await?;
        let marker_path = dir.join(files::CLEAN_SHUTDOWN_FILE);
        let marker: Option<CleanShutdown> = files::read_checked(&marker_path);
        if marker_path.exists() {
            // Removed before any write: a stale marker would hide data appended later.
            std::fs::remove_file(&marker_path)?;
            files::sync_dir(&dir)?;
        }
        let mut bases = files::list_segments(&dir)?;
        let mut report = RecoveryReport::default();
        if files::remove_orphans(&dir, &bases)? > 0 {
            tracing::info!(dir = %dir.display(), "removed index files left without a segment");
        }
        let is_new = bases.is_empty();
        if is_new {
            bases.push(0);
        }
        let last_base = *bases.last().expect("one segment");
        let clean = marker.filter(|m| m.active_base_offset == last_base);
        // The marker vouches for a size: a last segment shorter than that was cut after the
        // clean stop (a torn copy, a bad disk), and its tail must be scanned, not trusted.
        let last_len =
            std::fs::metadata(files::segment_path(&dir, last_base, "log")).map_or(0, |m| m.len());
        let clean = clean.filter(|m| {
            let intact = m.active_size_bytes <= last_len;
            if !intact {
                tracing::warn!(dir = %dir.display(), base = last_base, marker_bytes = m.active_size_bytes,
                    file_bytes = last_len, "active segment is shorter than at the clean shutdown; scanning it");
            }
            intact
        });
        report.clean_shutdown = clean.is_some();
        report.segments = bases.len();
        let interval = config.index_interval_bytes.max(1) as u64;

        let mut segments = Vec::with_capacity(bases.len());
        let mut log_end_offset = last_base;
        for (i, &base) in bases.iter().enumerate() {
            let is_last = i + 1 == bases.len();
            let file = Rc::new(open_segment_file(&files::segment_path(&dir, base, "log")).await?);
            let file_len = file.file_size().await?;
            let mut seg = Segment::new(base, file, file_len);
            let size = match (&clean, is_last) {
                (Some(m), true) => m.active_size_bytes.min(file_len),
                _ => file_len,
            };
            let index = files::load_index(&files::segment_path(&dir, base, "index"), size);
            let time_index = files::load_time_index(&files::segment_path(&dir, base, "timeindex"));
            let indexes_ok = index.is_some() && time_index.is_some();
            seg.index = index.unwrap_or_default();
            seg.time_index = time_index.unwrap_or_default();
            seg.index_persisted = seg.index.len();
            seg.time_index_persisted = seg.time_index.len();
            seg.max_timestamp = seg.time_index.last().map_or(-1, |t| t.timestamp);
            seg.max_timestamp_relative = seg.time_index.last().map_or(0, |t| t.relative_offset);
            seg.created_ms = seg.time_index.first().map(|t| t.timestamp);
            // After an unclean stop the segment before the last may be unfinished (a roll
            // finishes it in the background): its tail is scanned like the last segment's.
            let trusted = clean.is_some() || i + 2 < bases.len();
            let mut hole = false;
            if trusted && indexes_ok {
                seg.size_bytes = size;
                seg.bytes_since_index = seg.index.last().map_or(0, |e| size - e.position as u64);
            } else {
                // An unclean stop (last segment) or a damaged index (any segment): scan.
                if !indexes_ok {
                    seg.index.clear();
                    seg.time_index.clear();
                }
                let outcome = scan_segment(&mut seg, file_len, !trusted, interval).await?;
                // Data missing at the end of an unfinished segment while the next one has
                // data: what follows a hole was never durable, so the log ends at the hole.
                hole = !trusted && !is_last && outcome.next_offset < bases[i + 1];
                if trusted {
                    tracing::warn!(dir = %dir.display(), base, "rebuilt a missing or damaged index");
                    report.rebuilt_indexes.push(base);
                } else if is_last || hole || outcome.reason.is_some() {
                    report.scanned_segment = Some(base);
                    report.scanned_from_bytes = outcome.start_position;
                    report.scanned_bytes = seg.size_bytes - outcome.start_position;
                    report.scanned_batches = outcome.batches;
                    report.truncated_bytes = outcome.garbage_bytes;
                    report.truncated_reason = outcome.reason.clone();
                    log_end_offset = outcome.next_offset;
                }
                if let Some(reason) = &outcome.reason {
                    tracing::warn!(dir = %dir.display(), base, %reason, "truncating the log at the first invalid batch");
                }
                if file_len > seg.size_bytes && (!trusted || outcome.reason.is_some()) {
                    // Cut torn bytes for good, so a later scan can never revive stale batches
                    // that happen to line up behind newly written ones.
                    seg.file.truncate(seg.size_bytes).await?;
                    seg.allocated_bytes = seg.size_bytes;
                }
                if !trusted || outcome.reason.is_some() {
                    // After a crash, written but unsynced data may sit in the device cache;
                    // everything found is reported durable, so make it so.
                    seg.file.fdatasync().await?;
                }
                seg.created_ms = seg.time_index.first().map(|t| t.timestamp);
                seg.rewrite_indexes(&dir)?;
            }
            if is_last && trusted {
                log_end_offset = clean.as_ref().map_or(base, |m| m.log_end_offset);
            }
            seg.written_bytes = seg.size_bytes;
            if !is_last && !hole {
                seg.thin_indexes();
            }
            segments.push(seg);
            if hole {
                for &later in &bases[i + 1..] {
                    tracing::warn!(dir = %dir.display(), base = later, "removing a segment that follows a hole");
                    files::remove_segment(&dir, later)?;
                }
                files::sync_dir(&dir)?;
                break;
            }
        }
        if is_new {
            segments[0].rewrite_indexes(&dir)?;
            // The directory and its first segment must survive a crash before any append.
            files::sync_dir(&dir)?;
            if let Some(parent) = dir.parent() {
                files::sync_dir(parent)?;
            }
        }
        let log_start_offset = segments[0].base_offset;

        let active = segments.last().expect("one segment");
        let file_start = align_down(active.size_bytes);
        let capacity = staging_capacity(&config);
        let mut buf = active.file.alloc_dma_buffer(capacity);
        let carried = (active.size_bytes - file_start) as usize;
        if carried > 0 {
            let page = active.file.read_at(file_start, carried).await?;
            if page.len() != carried {
                return Err(LogError::CorruptBatch("short read of the last page".into()));
            }
            buf.as_bytes_mut()[..carried].copy_from_slice(&page);
        }
        let staging = Staging {
            buf: Some(buf),
            capacity,
            segment_base: active.base_offset,
            file: active.file.clone(),
            file_start,
            len: carried,
            carried,
            complete_offset: log_end_offset,
            complete_total: 0,
        };

        let mut producers = ProducerStates::default();
        let snapshot: Option<ProducerSnapshot> =
            files::read_checked(&dir.join(files::PRODUCER_SNAPSHOT_FILE));
        let mut replay_from = log_start_offset;
        if let Some(s) = snapshot {
            report.producer_snapshot_offset = Some(s.log_end_offset);
            replay_from = s.log_end_offset.clamp(log_start_offset, log_end_offset);
            producers = ProducerStates::from_snapshot(s);
            producers.truncate_from(log_end_offset);
        }

        let log = Rc::new_cyclic(|me| PartitionLog {
            me: me.clone(),
            dir,
            config: RefCell::new(config),
            state: RefCell::new(State {
                segments,
                cache: VecDeque::new(),
                cache_bytes: 0,
                producers,
            }),
            staging: RefCell::new(staging),
            pending: RefCell::new(VecDeque::new()),
            issued: RefCell::new(VecDeque::new()),
            sealed_seq: Cell::new(0),
            completed_seq: Cell::new(0),
            last_issued: Cell::new(None),
            spare: RefCell::new(None),
            writes_in_flight: Cell::new(0),
            appends: FifoLock::default(),
            write_lock: Semaphore::new(1),
            syncing: Cell::new(false),
            finishing: Cell::new(false),
            next_file: RefCell::new(None),
            preparing_next: Cell::new(false),
            finish_event: Event::default(),
            log_start_offset: Cell::new(log_start_offset),
            log_end_offset: Cell::new(log_end_offset),
            written_offset: Cell::new(log_end_offset),
            durable_offset: Cell::new(log_end_offset),
            appended_total: Cell::new(0),
            written_total: Cell::new(0),
            durable_total: Cell::new(0),
            data_event: Event::default(),
            write_event: Event::default(),
            sync_event: Event::default(),
            closed: Cell::new(false),
            failure: RefCell::new(None),
        });

        // Producer state: whatever the snapshot does not cover is replayed from headers.
        let mut offset = replay_from;
        while offset < log_end_offset {
            let batches = match log.read_batches(offset, REPLAY_READ_BYTES).await {
                Ok(batches) => batches,
                Err(e) => {
                    // A batch damaged at rest below the scanned tail: reads refuse it too.
                    tracing::warn!(dir = %log.dir.display(), offset, error = %e, "producer state replay stopped");
                    break;
                }
            };
            let Some(last) = batches.last() else { break };
            offset = last.0.last_offset() + 1;
            let mut st = log.state.borrow_mut();
            for (h, _) in &batches {
                st.producers.record(h, h.base_offset());
            }
            report.producer_batches_replayed += batches.len() as u64;
        }
        report.log_start_offset = log_start_offset;
        report.log_end_offset = log_end_offset;
        if report.clean_shutdown {
            tracing::info!(dir = %log.dir.display(), %report, "opened log");
        } else if is_new {
            tracing::debug!(dir = %log.dir.display(), "created log");
        } else {
            tracing::warn!(dir = %log.dir.display(), %report, "recovered log");
        }
        log.prepare_next_file();
        Ok((log, report))
    }

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
        self.write_event.notify();
        self.sync_event.notify();
    }

    /// Validates and appends one or more concatenated RecordBatch v2 (a Produce partition's
    /// records field), assigning consecutive offsets. See the module doc for the write path.
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
        let base_offset = self.log_end_offset.get();
        let interval = self.config.borrow().index_interval_bytes.max(1) as u64;
        let append_time_ms = self.config.borrow().log_append_time.then_some(now_ms);
        for (at, header) in parsed {
            let size = header.total_bytes();
            let offset = self.log_end_offset.get();
            let (stamped, offset_chunk, body) =
                batch::stamp(&batches, at, header, offset, append_time_ms);
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
            let mut staging = self.staging.borrow_mut();
            staging.complete_offset = next;
            staging.complete_total = total;
            self.appended_total.set(total);
            self.log_end_offset.set(next);
        }
        self.evict_cache();
        self.data_event.notify();
        Ok(AppendInfo {
            base_offset,
            last_offset: self.log_end_offset.get() - 1,
            log_append_time_ms: append_time_ms.unwrap_or(-1),
            log_start_offset: self.log_start_offset.get(),
            duplicate: false,
        })
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

    /// Copies bytes into the staging buffer, sealing and handing off full buffers.
    async fn copy_into_staging(&self, mut rest: &[u8]) -> Result<(), LogError> {
        while !rest.is_empty() {
            let full = {
                let mut st = self.staging.borrow_mut();
                let st = &mut *st;
                let n = (st.capacity - st.len).min(rest.len());
                let buf = st.buf.as_mut().expect("staging buffer");
                buf.as_bytes_mut()[st.len..st.len + n].copy_from_slice(&rest[..n]);
                st.len += n;
                rest = &rest[n..];
                st.len == st.capacity
            };
            if full {
                // Backpressure: a full buffer waits while the write queue is full.
                while self.writes_in_flight.get() >= self.write_depth() {
                    self.check_usable()?;
                    self.write_event.listen().await;
                }
                self.check_usable()?;
                self.seal();
                self.spawn_writer();
            }
        }
        Ok(())
    }

    /// Hands the staging buffer's new bytes to the write queue and starts a fresh buffer
    /// holding the partially filled last page. Returns false when there was nothing new.
    fn seal(&self) -> bool {
        let mut st = self.staging.borrow_mut();
        if st.len == st.carried {
            return false;
        }
        let len = st.len;
        let aligned = align_up(len as u64) as usize;
        let mut old = st.buf.take().expect("staging buffer");
        old.as_bytes_mut()[len..aligned].fill(0);
        let partial_start = align_down(len as u64) as usize;
        let partial = len - partial_start;
        let spare = self
            .spare
            .borrow_mut()
            .take()
            .filter(|b| b.len() == st.capacity);
        let mut fresh = spare.unwrap_or_else(|| st.file.alloc_dma_buffer(st.capacity));
        fresh.as_bytes_mut()[..partial].copy_from_slice(&old.as_bytes()[partial_start..len]);
        if aligned < old.len() {
            // Trimming is for good: this buffer will not come back as a spare.
            old.trim_to_size(aligned);
        }
        let seq = self.sealed_seq.get() + 1;
        self.sealed_seq.set(seq);
        self.pending.borrow_mut().push_back(PendingWrite {
            seq,
            buf: old,
            file: st.file.clone(),
            segment_base: st.segment_base,
            file_start: st.file_start,
            end_position: st.file_start + len as u64,
            covered_offset: st.complete_offset,
            covered_total: st.complete_total,
        });
        self.writes_in_flight.set(self.writes_in_flight.get() + 1);
        st.buf = Some(fresh);
        st.file_start += partial_start as u64;
        st.len = partial;
        st.carried = partial;
        true
    }

    fn spawn_writer(&self) {
        if self.pending.borrow().is_empty() {
            return;
        }
        if let Some(me) = self.me.upgrade() {
            glommio::spawn_local(async move {
                // Errors are recorded in `failure` and reported to the next caller.
                let _ = me.issue_writes().await;
            })
            .detach();
        }
    }

    /// Issues every sealed buffer's write in seal order, each as its own task, keeping at
    /// most `max_writes_in_flight` on the device; returns once none is left to issue.
    async fn issue_writes(&self) -> Result<(), LogError> {
        let _permit = self
            .write_lock
            .acquire_permit(1)
            .await
            .map_err(|_| LogError::Closed)?;
        loop {
            self.check_failed()?;
            let Some((segment_base, start)) = self
                .pending
                .borrow()
                .front()
                .map(|w| (w.segment_base, w.file_start))
            else {
                return Ok(());
            };
            loop {
                self.check_failed()?;
                let issued = self.issued.borrow().len();
                let depth = self.write_depth();
                let rewrites_last_page = self
                    .last_issued
                    .get()
                    .is_some_and(|(base, end)| base == segment_base && start < end);
                if issued == 0 || (issued < depth && !rewrites_last_page) {
                    break;
                }
                self.write_event.listen().await;
            }
            let w = self.pending.borrow_mut().pop_front().expect("front write");
            if let Err(e) = self.grow_for(&w).await {
                self.writes_in_flight.set(self.writes_in_flight.get() - 1);
                self.fail(&e);
                return Err(e);
            }
            self.last_issued
                .set(Some((w.segment_base, align_up(w.end_position))));
            self.issued.borrow_mut().push_back(IssuedWrite {
                seq: w.seq,
                done: None,
                segment_base: w.segment_base,
                end_position: w.end_position,
                covered_offset: w.covered_offset,
                covered_total: w.covered_total,
            });
            let Some(me) = self.me.upgrade() else {
                return Err(LogError::Closed);
            };
            glommio::spawn_local(async move {
                let result = me.write_buffer(w.file, w.buf, w.file_start).await;
                me.complete_write(w.seq, result);
            })
            .detach();
        }
    }

    /// Preallocates the segment ahead of a write that would pass its allocated end.
    async fn grow_for(&self, w: &PendingWrite) -> Result<(), LogError> {
        let end = w.file_start + w.buf.len() as u64;
        let grow = {
            let st = self.state.borrow();
            let step = self.config.borrow().preallocate_bytes.max(PAGE_BYTES);
            st.segments
                .iter()
                .find(|s| s.base_offset == w.segment_base)
                .filter(|s| end > s.allocated_bytes)
                .map(|s| align_up(end.max(s.allocated_bytes + step)))
        };
        let Some(target) = grow else { return Ok(()) };
        // keep_size = false: the size is set once per step, so fdatasync after a write
        // inside the preallocated range has no file size to journal.
        w.file.pre_allocate(target, false).await?;
        let mut st = self.state.borrow_mut();
        if let Some(seg) = st
            .segments
            .iter_mut()
            .find(|s| s.base_offset == w.segment_base)
        {
            seg.allocated_bytes = seg.allocated_bytes.max(target);
        }
        Ok(())
    }

    async fn write_buffer(
        &self,
        file: Rc<DmaFile>,
        buf: DmaBuffer,
        at: u64,
    ) -> Result<(), LogError> {
        let len = buf.len();
        let buf = Rc::new(buf);
        let written = file.write_rc_at(buf.clone(), at).await?;
        if let Ok(buf) = Rc::try_unwrap(buf) {
            // A full buffer comes back as a later staging buffer: its pages are already
            // faulted in, where a fresh allocation costs a page fault per 4 KiB.
            let mut spare = self.spare.borrow_mut();
            if spare.is_none() && buf.len() == self.staging.borrow().capacity {
                *spare = Some(buf);
            }
        }
        if written != len {
            return Err(LogError::Io(std::io::Error::other(format!(
                "short write: {written} of {len} bytes"
            ))));
        }
        Ok(())
    }

    /// Records a finished write and accounts, in seal order, every write whose
    /// predecessors have all finished: only those count as written.
    fn complete_write(&self, seq: u64, result: Result<(), LogError>) {
        if let Some(w) = self.issued.borrow_mut().iter_mut().find(|w| w.seq == seq) {
            w.done = Some(result);
        }
        loop {
            let front = {
                let mut issued = self.issued.borrow_mut();
                if issued.front().is_some_and(|w| w.done.is_some()) {
                    issued.pop_front()
                } else {
                    None
                }
            };
            let Some(w) = front else { break };
            self.writes_in_flight.set(self.writes_in_flight.get() - 1);
            match w.done.expect("done") {
                Err(e) => self.fail(&e),
                Ok(()) if self.failure.borrow().is_none() => {
                    let mut st = self.state.borrow_mut();
                    if let Some(seg) = st
                        .segments
                        .iter_mut()
                        .find(|s| s.base_offset == w.segment_base)
                    {
                        seg.written_bytes = seg.written_bytes.max(w.end_position);
                    }
                    self.written_offset
                        .set(self.written_offset.get().max(w.covered_offset));
                    self.written_total
                        .set(self.written_total.get().max(w.covered_total));
                    self.completed_seq.set(w.seq);
                }
                Ok(()) => {}
            }
        }
        self.evict_cache();
        self.write_event.notify();
    }

    /// Seals the staging buffer and waits until it and every buffer before it are written.
    async fn write_staged(&self) -> Result<(), LogError> {
        self.seal();
        self.spawn_writer();
        self.wait_written_through(self.sealed_seq.get()).await
    }

    /// Waits until write `seq` and every write before it completed, or a write failed.
    async fn wait_written_through(&self, seq: u64) -> Result<(), LogError> {
        while self.completed_seq.get() < seq {
            self.check_failed()?;
            self.write_event.listen().await;
        }
        self.check_failed()
    }

    fn write_depth(&self) -> usize {
        self.config.borrow().max_writes_in_flight.max(1)
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

    /// Rolls to a new segment at the log end; the caller holds the append lock. Only what
    /// appends must see happens here: the old segment's last buffer is sealed into the
    /// write queue and the new file is opened. The old segment is finished by a background
    /// task (`finish_segment`: written, trimmed to its data, synced, final indexes, producer
    /// snapshot, directory sync), so a roll stalls neither this partition for the length of
    /// an fdatasync nor the shard for a blocking file-system call. At most one segment is
    /// unfinished at a time, which recovery relies on (see `open`), and `sync_written`
    /// waits for the finish, so nothing past the old segment is reported durable before it.
    async fn roll(&self) -> Result<(), LogError> {
        self.wait_finished().await?;
        self.finishing.set(true);
        let rolled = self.start_roll().await;
        if let Err(e) = &rolled {
            self.finishing.set(false);
            self.finish_event.notify();
            self.fail(e);
        }
        rolled
    }

    async fn start_roll(&self) -> Result<(), LogError> {
        self.seal();
        let sealed = self.sealed_seq.get();
        self.spawn_writer();
        let base = self.log_end_offset.get();
        // Creating a file can wait for a journal commit (tens of milliseconds on a busy
        // disk): the file made ahead is used when there is one, and named in the finish.
        let prepared = self.next_file.borrow_mut().take();
        let renamed = prepared.is_some();
        let file = match prepared {
            Some(file) => file,
            None => Rc::new(open_segment_file(&files::segment_path(&self.dir, base, "log")).await?),
        };
        let capacity = staging_capacity(&self.config.borrow());
        let buf = file.alloc_dma_buffer(capacity);
        let (old_base, old_file, old_size, producers) = {
            let mut st = self.state.borrow_mut();
            let old = st.segments.last().expect("active segment");
            let old = (old.base_offset, old.file.clone(), old.size_bytes);
            st.segments.push(Segment::new(base, file.clone(), 0));
            (old.0, old.1, old.2, st.producers.to_snapshot(base))
        };
        {
            let mut staging = self.staging.borrow_mut();
            let complete_total = staging.complete_total;
            *staging = Staging {
                buf: Some(buf),
                capacity,
                segment_base: base,
                file,
                file_start: 0,
                len: 0,
                carried: 0,
                complete_offset: base,
                complete_total,
            };
        }
        let Some(me) = self.me.upgrade() else {
            return Err(LogError::Closed);
        };
        glommio::spawn_local(async move {
            let new_base = renamed.then_some(base);
            let finished = me
                .finish_segment(old_base, old_file, old_size, sealed, producers, new_base)
                .await;
            if let Err(e) = &finished {
                me.fail(e);
            }
            me.finishing.set(false);
            me.finish_event.notify();
            if finished.is_ok() {
                me.prepare_next_file();
            }
        })
        .detach();
        Ok(())
    }

    /// The background half of a roll, for the segment at `base` whose last buffer is write
    /// `sealed`: waits for its writes, trims the preallocated tail, fdatasyncs (data and
    /// size), then persists its indexes and the producer snapshot taken at the roll and
    /// syncs the directory (which also makes the new segment's file entry durable). With
    /// `renamed_to`, the new segment was the file made ahead, and gets its name here.
    async fn finish_segment(
        &self,
        base: i64,
        file: Rc<DmaFile>,
        size: u64,
        sealed: u64,
        producers: ProducerSnapshot,
        renamed_to: Option<i64>,
    ) -> Result<(), LogError> {
        self.wait_written_through(sealed).await?;
        file.truncate(size).await?;
        file.fdatasync().await?;
        let (index, time_index) = {
            let mut st = self.state.borrow_mut();
            let Some(seg) = st.segments.iter_mut().find(|s| s.base_offset == base) else {
                // Deleted meanwhile (the partition was removed): nothing left to finish.
                return Ok(());
            };
            seg.allocated_bytes = size;
            seg.finish_time_index();
            let index = files::encode_index(&seg.index[seg.index_persisted..]);
            let time_index = files::encode_time_index(&seg.time_index[seg.time_index_persisted..]);
            seg.index_persisted = seg.index.len();
            seg.time_index_persisted = seg.time_index.len();
            seg.thin_indexes();
            (index, time_index)
        };
        let dir = self.dir.clone();
        let snapshot = files::encode_checked(&producers);
        glommio::executor()
            .spawn_blocking(move || -> std::io::Result<()> {
                files::append_file(&files::segment_path(&dir, base, "index"), &index)?;
                files::append_file(&files::segment_path(&dir, base, "timeindex"), &time_index)?;
                if let Some(new_base) = renamed_to {
                    std::fs::rename(
                        dir.join(files::NEXT_SEGMENT_FILE),
                        files::segment_path(&dir, new_base, "log"),
                    )?;
                }
                // Syncs the directory too: the rename is durable before anything in the
                // new segment is reported durable (`sync_written` waits for this finish).
                files::write_atomic(&dir, files::PRODUCER_SNAPSHOT_FILE, &snapshot)
            })
            .await?;
        Ok(())
    }

    /// Opens the next segment's file ahead of its roll, in the background.
    fn prepare_next_file(&self) {
        if self.closed.get() || self.preparing_next.get() || self.next_file.borrow().is_some() {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        self.preparing_next.set(true);
        glommio::spawn_local(async move {
            let opened = open_segment_file(&me.dir.join(files::NEXT_SEGMENT_FILE)).await;
            me.preparing_next.set(false);
            me.finish_event.notify();
            match opened {
                Ok(file) if !me.closed.get() => *me.next_file.borrow_mut() = Some(Rc::new(file)),
                Ok(file) => drop(file),
                // Not fatal: the next roll creates its file itself.
                Err(e) => tracing::warn!(dir = %me.dir.display(), error = %e, "could not create the next segment's file ahead"),
            }
        })
        .detach();
    }

    /// Waits until no background file work (a roll's finish, the next file's creation) is
    /// running: before a close, since glommio's open fails hard if the path vanishes under
    /// it, and a closed log must not create files.
    async fn wait_background(&self) {
        while self.finishing.get() || self.preparing_next.get() {
            self.finish_event.listen().await;
        }
    }

    /// Waits until no rolled segment is being finished.
    async fn wait_finished(&self) -> Result<(), LogError> {
        while self.finishing.get() {
            self.finish_event.listen().await;
        }
        self.check_failed()
    }

    /// fdatasyncs the active file until everything written so far is durable; callers that
    /// arrive during a sync wait for it and then share the next one (group commit).
    async fn sync_written(&self) -> Result<i64, LogError> {
        let target = self.written_offset.get();
        loop {
            self.check_failed()?;
            if self.durable_offset.get() >= target {
                return Ok(self.durable_offset.get());
            }
            if self.syncing.get() {
                self.sync_event.listen().await;
                continue;
            }
            if self.finishing.get() {
                // A rolled segment's data is durable only once its finish synced it, and
                // syncing the active file covers only what is in that file.
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

    /// Whole batches from the one containing `offset`, up to `max_bytes` but at least one
    /// batch (KIP-74). `offset == log_end_offset` gives no chunks.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult, LogError> {
        let batches = self.read_batches(offset, max_bytes).await?;
        let mut out = ReadResult {
            chunks: Vec::with_capacity(batches.len() * 2),
            bytes: 0,
            log_start_offset: self.log_start_offset.get(),
            log_end_offset: self.log_end_offset.get(),
        };
        for (_, chunks) in batches {
            for c in chunks {
                out.bytes += c.len();
                out.chunks.push(c);
            }
        }
        Ok(out)
    }

    async fn read_batches(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Vec<(BatchHeader, Vec<Bytes>)>, LogError> {
        if self.closed.get() {
            return Err(LogError::Closed);
        }
        let (start, end) = (self.log_start_offset.get(), self.log_end_offset.get());
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        if offset == end {
            return Ok(Vec::new());
        }
        if let Some(hit) = self.read_cache(offset, max_bytes) {
            return Ok(hit);
        }
        self.read_disk(offset, max_bytes).await
    }

    fn read_cache(&self, offset: i64, max_bytes: usize) -> Option<Vec<(BatchHeader, Vec<Bytes>)>> {
        let st = self.state.borrow();
        if st
            .cache
            .front()
            .is_none_or(|b| b.header.base_offset() > offset)
        {
            return None;
        }
        let first = st
            .cache
            .partition_point(|b| b.header.last_offset() < offset);
        let mut out = Vec::new();
        let mut bytes = 0;
        for b in st.cache.range(first..) {
            let size = b.header.total_bytes();
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push((b.header, vec![b.offset_chunk.clone(), b.body.clone()]));
            if bytes >= max_bytes {
                break;
            }
        }
        Some(out)
    }

    /// Reads whole batches of one segment from the device, checking each CRC so that a
    /// batch damaged at rest is never returned. Copies into heap `Bytes` because glommio's
    /// read buffers are shard-local.
    async fn read_disk(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Vec<(BatchHeader, Vec<Bytes>)>, LogError> {
        let (file, segment_base, entry_offset, position, disk_end) = {
            let st = self.state.borrow();
            let i = st.segments.partition_point(|s| s.base_offset <= offset);
            let Some(i) = i.checked_sub(1) else {
                return Ok(Vec::new());
            };
            let seg = &st.segments[i];
            let (entry_offset, position) = seg.lookup(offset);
            // A rolled segment may still be finishing its last writes.
            let disk_end = seg.written_bytes.min(seg.size_bytes);
            (
                seg.file.clone(),
                seg.base_offset,
                entry_offset,
                position,
                disk_end,
            )
        };
        let found =
            read_batches_at(&file, offset, max_bytes, entry_offset, position, disk_end).await;
        match found {
            Err(LogError::CorruptBatch(reason)) if position > 0 => {
                // A damaged index entry looks like damaged data: retry from the segment
                // start, which costs a longer read only when something is wrong.
                tracing::warn!(dir = %self.dir.display(), segment_base, %reason, "reading from the segment start");
                read_batches_at(&file, offset, max_bytes, segment_base, 0, disk_end).await
            }
            other => other,
        }
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

    /// First batch whose max timestamp is at or after `ts_ms`, as (base offset, max
    /// timestamp), found through the time index.
    pub async fn offset_for_timestamp(&self, ts_ms: i64) -> Result<Option<(i64, i64)>, LogError> {
        let mut offset = {
            let st = self.state.borrow();
            let Some(seg) = st
                .segments
                .iter()
                .find(|s| s.size_bytes > 0 && s.max_timestamp >= ts_ms)
            else {
                return Ok(None);
            };
            let at = seg.time_index.partition_point(|t| t.timestamp < ts_ms);
            match at.checked_sub(1) {
                Some(i) => seg.base_offset + seg.time_index[i].relative_offset as i64,
                None => seg.base_offset,
            }
        };
        loop {
            offset = offset.max(self.log_start_offset.get());
            if offset >= self.log_end_offset.get() {
                return Ok(None);
            }
            let batches = self.read_batches(offset, TIME_LOOKUP_READ_BYTES).await?;
            let Some(last) = batches.last() else {
                return Ok(None);
            };
            if let Some((h, _)) = batches.iter().find(|(h, _)| h.max_timestamp() >= ts_ms) {
                return Ok(Some((h.base_offset(), h.max_timestamp())));
            }
            offset = last.0.last_offset() + 1;
        }
    }

    /// Resolves true once `log_end_offset > offset`, false at the deadline or on close.
    pub async fn wait_for_data(&self, offset: i64, deadline: Instant) -> bool {
        loop {
            if self.log_end_offset.get() > offset {
                return true;
            }
            let now = Instant::now();
            if self.closed.get() || now >= deadline {
                return false;
            }
            let listen = self.data_event.listen();
            let timed_out = futures_lite::future::or(
                async {
                    listen.await;
                    false
                },
                async {
                    glommio::timer::sleep(deadline - now).await;
                    true
                },
            )
            .await;
            if timed_out {
                return self.log_end_offset.get() > offset;
            }
        }
    }

    /// Deletes whole segments (never the active one) older than `retention_ms` or beyond
    /// `retention_bytes`, oldest first; returns how many were deleted.
    pub async fn apply_retention(&self, now_ms: i64) -> Result<usize, LogError> {
        self.check_usable()?;
        // A segment being finished is not deleted under its finish.
        self.wait_finished().await?;
        let config = self.config.borrow().clone();
        let deleted: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            let mut total: u64 = st.segments.iter().map(|s| s.size_bytes).sum();
            let mut count = 0;
            // Neither the active segment nor one still being finished is deleted.
            let closed = st.segments.len() - 1 - usize::from(self.finishing.get());
            for seg in &st.segments[..closed] {
                let by_time = config.retention_ms >= 0
                    && now_ms.saturating_sub(seg.max_timestamp) > config.retention_ms;
                let by_size = config.retention_bytes >= 0
                    && total - seg.size_bytes >= config.retention_bytes as u64;
                if !(by_time || by_size) {
                    break;
                }
                total -= seg.size_bytes;
                count += 1;
            }
            let deleted: Vec<Segment> = st.segments.drain(..count).collect();
            if count > 0 {
                let start = st.segments[0].base_offset;
                while st
                    .cache
                    .front()
                    .is_some_and(|b| b.header.base_offset() < start)
                {
                    let b = st.cache.pop_front().expect("front");
                    st.cache_bytes -= b.header.total_bytes();
                }
                self.log_start_offset.set(start);
            }
            deleted
        };
        if deleted.is_empty() {
            return Ok(0);
        }
        let count = deleted.len();
        let bases: Vec<i64> = deleted.iter().map(|s| s.base_offset).collect();
        // Each file is closed before it is unlinked, so the unlink, not the close, frees
        // its blocks. A close of an unlinked file frees them in the closing thread, on the
        // way back from the syscall: here that would be the shard's thread, stalled for
        // hundreds of milliseconds while the file system frees (and, mounted with
        // `discard`, trims) a whole segment.
        for seg in deleted {
            if let Ok(file) = Rc::try_unwrap(seg.file) {
                let _ = file.close().await;
            }
        }
        // Unlinks and the directory sync block: they run off the shard's thread.
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || -> std::io::Result<()> {
                for base in bases {
                    tracing::info!(dir = %dir.display(), base, "retention deletes segment");
                    files::remove_segment(&dir, base)?;
                }
                files::sync_dir(&dir)
            })
            .await?;
        Ok(count)
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
        self.write_event.notify();
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
        let _ = self.wait_written_through(self.sealed_seq.get()).await;
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
