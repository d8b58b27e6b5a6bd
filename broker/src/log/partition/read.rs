//! The read path of a partition: whole batches from the tail cache (slices of the appended
//! `Bytes`, no copy) or from the device (CRC-checked, copied to heap `Bytes`), up to a
//! limit (the log end, or the high watermark for consumers), the time index lookup, and the
//! long-poll wait for new data. Must never return a batch whose CRC
//! failed, never change the log, and never hand out shard-local memory.

use std::time::Instant;

use bytes::Bytes;

use super::PartitionLog;
use crate::log::batch::BatchHeader;
use crate::log::segment::read_batches_at;
use crate::log::{LogError, ReadResult};

/// Bytes read per step while searching batches for a timestamp.
const TIME_LOOKUP_READ_BYTES: usize = 64 << 10;

impl PartitionLog {
    /// Whole batches from the one containing `offset`, up to `max_bytes` but at least one
    /// batch (KIP-74), up to the log end (what a follower fetches). `offset ==
    /// log_end_offset` gives no chunks.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult, LogError> {
        self.read_upto(offset, max_bytes, i64::MAX).await
    }

    /// [`read`](Self::read), serving only whole batches that end before `limit` (a
    /// consumer's fetch passes the high watermark). An `offset` at or past the limit but
    /// not past the log end gives no chunks, as does a limit inside the first batch.
    pub async fn read_upto(
        &self,
        offset: i64,
        max_bytes: usize,
        limit: i64,
    ) -> Result<ReadResult, LogError> {
        let batches = self.read_batches(offset, max_bytes, limit).await?;
        let mut out = ReadResult {
            chunks: Vec::with_capacity(batches.len() * 2),
            bytes: 0,
            log_start_offset: self.log_start_offset.get(),
            log_end_offset: self.log_end_offset.get(),
            high_watermark: self.high_watermark(),
        };
        for (_, chunks) in batches {
            for c in chunks {
                out.bytes += c.len();
                out.chunks.push(c);
            }
        }
        Ok(out)
    }

    /// Whole batches from the one holding `offset` that end before `limit` and the log end.
    pub(super) async fn read_batches(
        &self,
        offset: i64,
        max_bytes: usize,
        limit: i64,
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
        let limit = limit.min(end);
        if offset >= limit {
            return Ok(Vec::new());
        }
        if let Some(hit) = self.read_cache(offset, max_bytes, limit) {
            return Ok(hit);
        }
        self.read_disk(offset, max_bytes, limit).await
    }

    pub(super) fn read_cache(
        &self,
        offset: i64,
        max_bytes: usize,
        limit: i64,
    ) -> Option<Vec<(BatchHeader, Vec<Bytes>)>> {
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
            if b.header.last_offset() >= limit {
                break;
            }
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
    pub(super) async fn read_disk(
        &self,
        offset: i64,
        max_bytes: usize,
        limit: i64,
    ) -> Result<Vec<(BatchHeader, Vec<Bytes>)>, LogError> {
        let (file, segment_base, entry_offset, position, disk_end, gaps) = {
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
                seg.compacted,
            )
        };
        let found = read_batches_at(
            &file,
            offset,
            max_bytes,
            limit,
            entry_offset,
            position,
            disk_end,
            gaps,
        )
        .await;
        match found {
            Err(LogError::CorruptBatch(reason)) if position > 0 => {
                // A damaged index entry looks like damaged data: retry from the segment
                // start, which costs a longer read only when something is wrong.
                tracing::warn!(dir = %self.dir.display(), segment_base, %reason, "reading from the segment start");
                read_batches_at(
                    &file,
                    offset,
                    max_bytes,
                    limit,
                    segment_base,
                    0,
                    disk_end,
                    gaps,
                )
                .await
            }
            other => other,
        }
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
            let batches = self
                .read_batches(offset, TIME_LOOKUP_READ_BYTES, i64::MAX)
                .await?;
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
        self.wait_for_data_upto(offset, deadline, false).await
    }

    /// [`wait_for_data`](Self::wait_for_data) against the high watermark when
    /// `limit_is_hw` (a consumer's long poll), against the log end otherwise (a follower's).
    pub async fn wait_for_data_upto(
        &self,
        offset: i64,
        deadline: Instant,
        limit_is_hw: bool,
    ) -> bool {
        let limit = || {
            if limit_is_hw {
                self.high_watermark()
            } else {
                self.log_end_offset.get()
            }
        };
        loop {
            if limit() > offset {
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
                return limit() > offset;
            }
        }
    }

    /// Sets the high watermark from the replication layer, waking consumers' long polls it
    /// passes; `None` makes the log unreplicated again (the log end is the limit). It never
    /// moves back while set, except through `truncate_to` and `reset_to`.
    pub fn set_high_watermark(&self, hw: Option<i64>) {
        let before = self.high_watermark();
        let next = match (self.high_watermark.get(), hw) {
            (Some(old), Some(new)) => Some(old.max(new)),
            (_, new) => new,
        };
        self.high_watermark.set(next);
        if self.high_watermark() > before {
            self.data_event.notify();
        }
    }

    /// Whether a high watermark was set (the partition is replicated).
    pub fn has_high_watermark(&self) -> bool {
        self.high_watermark.get().is_some()
    }

    /// Offsets below this are committed: the high watermark capped at the log end (and not
    /// below the log start), or the log end for a log that is not replicated.
    pub fn high_watermark(&self) -> i64 {
        let end = self.log_end_offset.get();
        match self.high_watermark.get() {
            None => end,
            Some(hw) => hw.max(self.log_start_offset.get()).min(end),
        }
    }
}
