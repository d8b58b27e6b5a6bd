//! Appending a leader's batches on a follower replica: byte for byte, at the offsets the
//! leader gave them (never re-stamped, never renumbered), through the same write path and
//! group commit as any append. Producer state is rebuilt from the batches, as on the leader,
//! so a follower that becomes leader deduplicates retries the same way.

use bytes::Bytes;

use super::PartitionLog;
use crate::log::{batch, files, LogError};

impl PartitionLog {
    /// Append batches fetched from the partition's leader, at the leader's offsets. Batches
    /// that end before this log's end (already here, from an earlier fetch) are skipped; a
    /// batch overlapping the log end is refused with `ReplicaGap` (the follower must
    /// truncate or refetch). A batch may start past the log end, and batches may leave gaps
    /// between them: a compacted leader holds nothing there, and neither does its follower.
    /// Returns the new log end offset.
    pub async fn append_replica(&self, batches: Bytes, now_ms: i64) -> Result<i64, LogError> {
        // A leader's batch may be larger than this log's own limit would allow a producer
        // (a config changed meanwhile): the follower keeps what the leader kept.
        let parsed = batch::validate_all_stored(&batches)?;
        let place = self.reserve_append();
        place.acquired().await;
        self.check_usable()?;
        let end = self.log_end_offset.get();
        let fresh: Vec<_> = parsed
            .into_iter()
            .filter(|(_, h)| h.last_offset() >= end)
            .collect();
        let Some((_, first)) = fresh.first() else {
            return Ok(end);
        };
        let mut previous_end = end;
        for (_, h) in &fresh {
            if h.base_offset() < previous_end {
                return Err(LogError::ReplicaGap {
                    log_end: previous_end,
                    batch_base: h.base_offset(),
                });
            }
            previous_end = h.last_offset() + 1;
        }
        // Offsets the batches span, gaps included (for the segment's relative offsets).
        let records = previous_end - end;
        if records > u32::MAX as i64 {
            // Relative offsets in a segment are u32: a gap this wide is refused.
            return Err(LogError::ReplicaGap {
                log_end: end,
                batch_base: first.base_offset(),
            });
        }
        let bytes: usize = fresh.iter().map(|(_, h)| h.total_bytes()).sum();
        if self.should_roll(bytes as u64, records, now_ms) {
            self.roll().await.inspect_err(|e| self.fail(e))?;
        }
        let counted: i64 = fresh
            .iter()
            .map(|(_, h)| h.last_offset_delta() as i64 + 1)
            .sum();
        if counted != records {
            self.mark_active_gapped()?;
        }
        // The leader's epochs stay as stamped (no epoch of ours); the epoch cache learns them.
        self.write_batches(&batches, fresh, None, None, now_ms, true)
            .await?;
        Ok(self.log_end_offset.get())
    }

    /// The active segment is about to hold offset gaps: mark it as the cleaner marks the
    /// segments it rewrote (`<base>.compacted`), so reads and recovery expect gaps there. A
    /// crash before the mark is on disk makes recovery stop at the first gap, which the
    /// follower then fetches again.
    fn mark_active_gapped(&self) -> Result<(), LogError> {
        let mut st = self.state.borrow_mut();
        let seg = st.segments.last_mut().expect("active segment");
        if !seg.compacted {
            let marker = files::segment_path(&self.dir, seg.base_offset, files::COMPACTED_EXT);
            std::fs::File::create(&marker).map_err(LogError::from)?;
            seg.compacted = true;
        }
        Ok(())
    }
}
