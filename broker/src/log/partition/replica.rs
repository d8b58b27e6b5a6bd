//! Appending a leader's batches on a follower replica: byte for byte, at the offsets the
//! leader gave them (never re-stamped, never renumbered), through the same write path and
//! group commit as any append. Producer state is rebuilt from the batches, as on the leader,
//! so a follower that becomes leader deduplicates retries the same way.

use bytes::Bytes;

use super::PartitionLog;
use crate::log::{batch, LogError};

impl PartitionLog {
    /// Append batches fetched from the partition's leader. Batches that end before this
    /// log's end (already here, from an earlier fetch) are skipped; the first new one must
    /// start exactly at the log end, or the log refuses with `ReplicaGap` (the follower must
    /// truncate or refetch). Returns the new log end offset.
    pub async fn append_replica(&self, batches: Bytes, now_ms: i64) -> Result<i64, LogError> {
        // A leader's batch may be larger than this log's own limit would allow a producer
        // (a config changed meanwhile): the follower keeps what the leader kept.
        let parsed = batch::validate_all(&batches, usize::MAX)?;
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
        if first.base_offset() != end {
            return Err(LogError::ReplicaGap {
                log_end: end,
                batch_base: first.base_offset(),
            });
        }
        let records: i64 = fresh
            .iter()
            .map(|(_, h)| h.last_offset_delta() as i64 + 1)
            .sum();
        let bytes: usize = fresh.iter().map(|(_, h)| h.total_bytes()).sum();
        if self.should_roll(bytes as u64, records, now_ms) {
            self.roll().await.inspect_err(|e| self.fail(e))?;
        }
        // The leader's epochs stay as stamped (no epoch of ours); the epoch cache learns them.
        self.write_batches(&batches, fresh, None, None, now_ms)
            .await?;
        Ok(self.log_end_offset.get())
    }
}
