//! A cleaning pass over one partition's closed segments (log compaction): build the offset
//! map of the dirty part, rewrite segments oldest first keeping each key's newest record,
//! and swap each rewritten group in crash-safely (see `cleaner::swap`).
//!
//! Reads only closed, finished segments (never the active one, never one being finished),
//! changes no offset, and must never hold a `RefCell` borrow across an `.await`. Retention
//! waits while a pass runs (`cleaning`), so the segments a pass read are the ones it swaps.

use std::rc::Rc;
use std::time::Instant;

use futures_lite::AsyncWriteExt;
use glommio::io::{DmaFile, DmaStreamWriterBuilder};

use super::PartitionLog;
use crate::log::batch::{
    self, BatchHeader, ATTRIBUTE_CONTROL, ATTRIBUTE_LOG_APPEND_TIME, BATCH_HEADER_BYTES,
};
use crate::log::cleaner::records::{filter_batch, for_each_record, records_section};
use crate::log::cleaner::swap::{self, FinishStep, SwapMarker};
use crate::log::cleaner::{CleanStats, CleanerSettings, IoBudget, OffsetMap};
use crate::log::files;
use crate::log::segment::{open_segment_file, Segment};
use crate::log::LogError;

/// Bytes of a segment read per step by a pass.
const CLEANER_READ_BYTES: usize = 1 << 20;
/// Attributes bit 4: a transactional batch. shardlog has no transactions; such a batch is
/// kept whole rather than half-understood.
const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;

/// Where a pass stops early, for tests that simulate a crash in the middle of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum StopAt {
    /// The first group's cleaned file is written and synced; no marker yet.
    CleanedWritten,
    /// The swap marker is durable; nothing replaced yet.
    MarkerWritten,
    /// The log serves the cleaned segment; the old files are still on disk.
    MemorySwapped,
    /// Inside the file swap (see `FinishStep`).
    Finish(FinishStep),
}

/// A closed segment as a pass sees it.
struct Closed {
    base: i64,
    file: Rc<DmaFile>,
    size: u64,
    /// Base offset of the next segment: this one holds offsets below it.
    end_offset: i64,
    created_ms: Option<i64>,
}

/// Whole, CRC-checked batches read from one segment.
struct Chunk {
    data: glommio::io::ReadResult,
    batches: Vec<(usize, BatchHeader)>,
}

impl Chunk {
    fn batch(&self, at: usize, h: &BatchHeader) -> &[u8] {
        &self.data[at..at + h.total_bytes()]
    }
}

/// Reads a segment front to back in large steps, whole batches at a time.
struct SegmentReader {
    file: Rc<DmaFile>,
    pos: u64,
    end: u64,
}

impl SegmentReader {
    fn new(file: Rc<DmaFile>, end: u64) -> SegmentReader {
        SegmentReader { file, pos: 0, end }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    async fn next(&mut self) -> Result<Option<Chunk>, LogError> {
        if self.at_end() {
            return Ok(None);
        }
        let mut want = (self.end - self.pos).min(CLEANER_READ_BYTES as u64) as usize;
        loop {
            let data = self.file.read_at(self.pos, want).await?;
            if data.len() < want {
                return Err(LogError::ShortRead {
                    position: self.pos,
                    wanted: want,
                    got: data.len(),
                });
            }
            let mut batches = Vec::new();
            let mut at = 0usize;
            while at + BATCH_HEADER_BYTES <= data.len() {
                let h = BatchHeader::parse(&data[at..])?;
                if at + h.total_bytes() > data.len() {
                    break;
                }
                if !batch::crc_matches(&data[at..at + h.total_bytes()], h.crc()) {
                    return Err(LogError::CorruptBatch(format!(
                        "cleaner: batch at byte {} fails its CRC-32C",
                        self.pos + at as u64
                    )));
                }
                batches.push((at, h));
                at += h.total_bytes();
            }
            if batches.is_empty() {
                // One batch larger than a step: read exactly it.
                let h = BatchHeader::parse(&data)?;
                if self.pos + h.total_bytes() as u64 > self.end || h.total_bytes() <= want {
                    return Err(LogError::CorruptBatch(format!(
                        "cleaner: batch at byte {} runs past its segment",
                        self.pos
                    )));
                }
                want = h.total_bytes();
                continue;
            }
            self.pos += at as u64;
            return Ok(Some(Chunk { data, batches }));
        }
    }
}

/// The timestamp a consumer sees for a record of a batch.
fn record_timestamp(h: &BatchHeader, timestamp_delta: i64) -> i64 {
    if h.attributes() & ATTRIBUTE_LOG_APPEND_TIME != 0 {
        h.max_timestamp()
    } else {
        h.base_timestamp().saturating_add(timestamp_delta)
    }
}

fn keeps_whole(h: &BatchHeader) -> bool {
    h.attributes() & (ATTRIBUTE_CONTROL | ATTRIBUTE_TRANSACTIONAL) != 0
}

impl PartitionLog {
    /// The segments a pass may read: closed and finished, oldest first, up to the first
    /// one holding a record younger than `min_compaction_lag_ms`.
    fn cleanable(&self, now_ms: i64) -> Vec<Closed> {
        let lag_ms = self.config.borrow().compaction.min_compaction_lag_ms;
        let st = self.state.borrow();
        let closed = st
            .segments
            .len()
            .saturating_sub(1 + usize::from(self.finishing.get()));
        let mut out = Vec::with_capacity(closed);
        for i in 0..closed {
            let s = &st.segments[i];
            if lag_ms > 0 && now_ms.saturating_sub(s.max_timestamp) < lag_ms {
                break;
            }
            out.push(Closed {
                base: s.base_offset,
                file: s.file.clone(),
                size: s.size_bytes,
                end_offset: st.segments[i + 1].base_offset,
                created_ms: s.created_ms,
            });
        }
        out
    }

    /// True when the topic is compacted (`cleanup.policy` holds `compact`).
    pub fn is_compacted(&self) -> bool {
        self.config.borrow().compaction.compact
    }

    /// Offsets below this were cleaned by the last pass of this run.
    pub fn clean_offset(&self) -> i64 {
        self.clean_point.get()
    }

    /// How much a pass is due: the share of cleanable bytes not yet cleaned, and whether
    /// a pass is due whatever the ratio (a dirty segment older than
    /// `max_compaction_lag_ms`, or a kept tombstone whose retention has passed).
    pub fn dirty_ratio(&self, now_ms: i64) -> (f64, bool) {
        if !self.is_compacted() || self.closed.get() {
            return (0.0, false);
        }
        let max_lag_ms = self.config.borrow().compaction.max_compaction_lag_ms;
        let segs = self.cleanable(now_ms);
        let clean_point = self.clean_point.get();
        let total: u64 = segs.iter().map(|s| s.size).sum();
        let dirty: u64 = segs
            .iter()
            .filter(|s| s.end_offset > clean_point)
            .map(|s| s.size)
            .sum();
        if total == 0 {
            return (0.0, false);
        }
        let overdue = segs.iter().any(|s| {
            s.end_offset > clean_point
                && s.created_ms
                    .is_some_and(|c| now_ms.saturating_sub(c) > max_lag_ms)
        });
        let tombstones_due = self
            .tombstone_expiry_ms
            .get()
            .is_some_and(|at| now_ms >= at);
        (dirty as f64 / total as f64, overdue || tombstones_due)
    }

    /// Runs one cleaning pass now (whatever the dirty ratio); `None` when the log is not
    /// compacted, a pass is already running, or nothing is cleanable.
    pub async fn clean(
        &self,
        settings: &CleanerSettings,
        now_ms: i64,
    ) -> Result<Option<CleanStats>, LogError> {
        self.clean_until(settings, now_ms, None).await
    }

    /// `clean`, stopping at `stop` as if the process died there (tests).
    pub(crate) async fn clean_until(
        &self,
        settings: &CleanerSettings,
        now_ms: i64,
        stop: Option<StopAt>,
    ) -> Result<Option<CleanStats>, LogError> {
        self.check_usable()?;
        if !self.is_compacted() || self.cleaning.get() || self.truncating.get() {
            return Ok(None);
        }
        self.wait_finished().await?;
        // Checked again after the wait: a truncation (or another pass) may have begun, and
        // it must not find its segments swapped under it.
        if self.cleaning.get() || self.truncating.get() {
            return Ok(None);
        }
        self.cleaning.set(true);
        let result = self.clean_pass(settings, now_ms, stop).await;
        self.cleaning.set(false);
        self.finish_event.notify();
        result
    }

    async fn clean_pass(
        &self,
        settings: &CleanerSettings,
        now_ms: i64,
        stop: Option<StopAt>,
    ) -> Result<Option<CleanStats>, LogError> {
        let started = Instant::now();
        let mut segs = self.cleanable(now_ms);
        let dirty_start = self.clean_point.get().max(self.log_start_offset.get());
        let tombstones_due = self
            .tombstone_expiry_ms
            .get()
            .is_some_and(|at| now_ms >= at);
        let first_dirty = match segs.iter().position(|s| s.end_offset > dirty_start) {
            Some(i) => i,
            // Nothing new, but kept tombstones expired: a pass with an empty map removes
            // them (a log that gets no more writes still loses its tombstones, KIP-534).
            None if tombstones_due && !segs.is_empty() => segs.len(),
            None => return Ok(None),
        };
        let mut budget = IoBudget::new(settings.io_bytes_per_s);
        let mut stats = CleanStats::default();
        let mut map = OffsetMap::with_memory(settings.dedupe_buffer_bytes);
        let mut map_end = segs.last().expect("a dirty segment").end_offset;
        'map: for s in &segs[first_dirty..] {
            let mut reader = SegmentReader::new(s.file.clone(), s.size);
            while let Some(chunk) = reader.next().await? {
                stats.bytes_read += chunk.data.len() as u64;
                budget.spend(chunk.data.len() as u64).await;
                for (at, h) in &chunk.batches {
                    if h.last_offset() < dirty_start || keeps_whole(h) {
                        continue;
                    }
                    if map.room() < h.record_count().max(0) as usize {
                        // The keys do not fit: clean up to here, the next pass goes on.
                        map_end = h.base_offset().max(dirty_start);
                        break 'map;
                    }
                    let records = records_section(chunk.batch(*at, h), h.attributes())?;
                    for_each_record(&records, h.record_count(), |r| {
                        let offset = h.base_offset() + r.offset_delta;
                        if let (Some(key), true) = (r.key, offset >= dirty_start) {
                            map.insert(key, offset);
                        }
                        Ok(())
                    })?;
                }
            }
        }
        if first_dirty < segs.len() && map_end <= dirty_start {
            return Err(LogError::Io(std::io::Error::other(format!(
                "the cleaner's dedupe buffer ({} bytes) cannot hold the keys of one batch",
                settings.dedupe_buffer_bytes
            ))));
        }
        stats.keys = map.len();
        let last = segs
            .iter()
            .position(|s| s.end_offset >= map_end)
            .expect("map_end within the cleanable segments");
        segs.truncate(last + 1);
        let mut groups = group_segments(segs, self.config.borrow().segment_bytes);
        let mut expiry: Option<i64> = None;
        while !groups.is_empty() {
            let group = groups.remove(0);
            stats.segments_cleaned += group.len();
            let stopped = self
                .clean_group(
                    group,
                    &map,
                    map_end,
                    now_ms,
                    &mut budget,
                    &mut stats,
                    &mut expiry,
                    stop,
                )
                .await?;
            stats.segments_written += 1;
            if stopped {
                return Ok(Some(stats));
            }
        }
        self.clean_point.set(self.clean_point.get().max(map_end));
        self.tombstone_expiry_ms.set(expiry);
        stats.clean_offset = map_end;
        stats.duration_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            dir = %self.dir.display(),
            bytes_read = stats.bytes_read,
            bytes_written = stats.bytes_written,
            records_removed = stats.records_removed,
            records_read = stats.records_read,
            keys = stats.keys,
            segments = stats.segments_cleaned,
            into = stats.segments_written,
            clean_offset = map_end,
            duration_ms = stats.duration_ms,
            "cleaned log"
        );
        Ok(Some(stats))
    }

    /// Rewrites one group of consecutive segments into one and swaps it in. Returns true
    /// when it stopped at `stop`.
    #[allow(clippy::too_many_arguments)]
    async fn clean_group(
        &self,
        group: Vec<Closed>,
        map: &OffsetMap,
        map_end: i64,
        now_ms: i64,
        budget: &mut IoBudget,
        stats: &mut CleanStats,
        expiry: &mut Option<i64>,
        stop: Option<StopAt>,
    ) -> Result<bool, LogError> {
        let base = group[0].base;
        let created_ms = group[0].created_ms;
        let (interval, delete_retention_ms) = {
            let config = self.config.borrow();
            (
                config.index_interval_bytes.max(1) as u64,
                config.compaction.delete_retention_ms,
            )
        };
        let path = swap::cleaned_path(&self.dir, base);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let mut writer = DmaStreamWriterBuilder::new(open_segment_file(&path).await?).build();
        let mut out: Vec<u8> = Vec::with_capacity(CLEANER_READ_BYTES + (64 << 10));
        let mut placed: Vec<(u64, BatchHeader)> = Vec::new();
        let mut written = 0u64;
        for (gi, s) in group.iter().enumerate() {
            let last_segment = gi + 1 == group.len();
            let mut reader = SegmentReader::new(s.file.clone(), s.size);
            while let Some(chunk) = reader.next().await? {
                stats.bytes_read += chunk.data.len() as u64;
                let last_chunk = last_segment && reader.at_end();
                for (bi, (at, h)) in chunk.batches.iter().enumerate() {
                    let batch = chunk.batch(*at, h);
                    let start = out.len();
                    stats.records_read += h.record_count().max(0) as u64;
                    if keeps_whole(h) || h.base_offset() >= map_end {
                        out.extend_from_slice(batch);
                    } else {
                        let group_last = last_chunk && bi + 1 == chunk.batches.len();
                        let producer_last = h.producer_id() >= 0
                            && self
                                .state
                                .borrow()
                                .producers
                                .last_offset_of(h.producer_id())
                                == Some(h.last_offset());
                        let kept = filter_batch(
                            batch,
                            h,
                            |r| {
                                let offset = h.base_offset() + r.offset_delta;
                                if offset >= map_end {
                                    return true;
                                }
                                let Some(key) = r.key else { return false };
                                if map.get(key).is_some_and(|newest| newest > offset) {
                                    return false;
                                }
                                if r.tombstone {
                                    let at = record_timestamp(h, r.timestamp_delta)
                                        .saturating_add(delete_retention_ms);
                                    if now_ms >= at {
                                        return false;
                                    }
                                    *expiry = Some(expiry.map_or(at, |e| e.min(at)));
                                }
                                true
                            },
                            group_last || producer_last,
                            &mut out,
                        )?;
                        stats.records_removed += (h.record_count().max(0) as usize - kept) as u64;
                    }
                    if out.len() > start {
                        let stamped = BatchHeader::parse(&out[start..])?;
                        debug_assert_eq!(stamped.base_offset(), h.base_offset());
                        debug_assert_eq!(stamped.last_offset(), h.last_offset());
                        placed.push((written + start as u64, stamped));
                    }
                }
                writer.write_all(&out).await?;
                budget
                    .spend(chunk.data.len() as u64 + out.len() as u64)
                    .await;
                written += out.len() as u64;
                out.clear();
            }
        }
        // Close pads the last page and truncates the file to what was written.
        writer.close().await?;
        let file = Rc::new(open_segment_file(&path).await?);
        file.fdatasync().await?;
        stats.bytes_written += written;
        let mut seg = Segment::new(base, file.clone(), written);
        seg.compacted = true;
        for (position, h) in &placed {
            seg.note_batch(*position, h, interval);
        }
        seg.finish_time_index();
        seg.created_ms = created_ms;
        seg.written_bytes = seg.size_bytes;
        let index = files::encode_index(&seg.index);
        let time_index = files::encode_time_index(&seg.time_index);
        seg.thin_indexes();
        if stop == Some(StopAt::CleanedWritten) {
            return Ok(true);
        }
        let marker = SwapMarker {
            base,
            replaced: group.iter().map(|s| s.base).collect(),
        };
        let unchanged = {
            let st = self.state.borrow();
            let i = st.segments.iter().position(|s| s.base_offset == base);
            i.is_some_and(|i| {
                group.iter().enumerate().all(|(k, g)| {
                    st.segments
                        .get(i + k)
                        .is_some_and(|s| Rc::ptr_eq(&s.file, &g.file))
                })
            })
        };
        if self.closed.get() || !unchanged {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(LogError::Closed);
        }
        let dir = self.dir.clone();
        let m = marker.clone();
        glommio::executor()
            .spawn_blocking(move || swap::write_marker(&dir, &m))
            .await?;
        if stop == Some(StopAt::MarkerWritten) {
            return Ok(true);
        }
        let group_end = group.last().expect("one segment").end_offset;
        let old: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            let st = &mut *st;
            let i = st
                .segments
                .iter()
                .position(|s| s.base_offset == base)
                .expect("checked above, and retention waits for the pass");
            let old = st.segments.splice(i..i + group.len(), [seg]).collect();
            // Recent batches of the replaced segments would serve pre-cleaning data.
            while st
                .cache
                .front()
                .is_some_and(|b| b.header.base_offset() < group_end)
            {
                let b = st.cache.pop_front().expect("front");
                st.cache_bytes -= b.header.total_bytes();
            }
            old
        };
        drop(group);
        // Closed before they are unlinked, so the unlink frees their blocks off this thread.
        for seg in old {
            if let Ok(f) = Rc::try_unwrap(seg.file) {
                let _ = f.close().await;
            }
        }
        if stop == Some(StopAt::MemorySwapped) {
            return Ok(true);
        }
        let step = match stop {
            Some(StopAt::Finish(step)) => step,
            _ => FinishStep::Done,
        };
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || swap::finish(&dir, &marker, Some((&index, &time_index)), step))
            .await?;
        Ok(step != FinishStep::Done)
    }
}

/// Consecutive segments merged while their sizes before cleaning fit in `segment_bytes`
/// and their offsets fit the index's 32-bit relative offsets (Kafka's grouping).
fn group_segments(segs: Vec<Closed>, segment_bytes: u64) -> Vec<Vec<Closed>> {
    let mut groups: Vec<Vec<Closed>> = Vec::new();
    let mut size = 0u64;
    for s in segs {
        let fits = groups.last().is_some_and(|g| {
            size + s.size <= segment_bytes && s.end_offset - 1 - g[0].base <= u32::MAX as i64
        });
        if fits {
            size += s.size;
            groups.last_mut().expect("a group").push(s);
        } else {
            size = s.size;
            groups.push(vec![s]);
        }
    }
    groups
}
