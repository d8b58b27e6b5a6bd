//! Retention: deleting whole old segments by age or total size, oldest first. Never deletes
//! the active segment or one still being finished, and waits out a cleaning pass or a
//! truncation (they change the segment list themselves).

use std::rc::Rc;

use super::PartitionLog;
use crate::log::files;
use crate::log::segment::Segment;
use crate::log::LogError;

impl PartitionLog {
    /// Deletes whole segments (never the active one) older than `retention_ms` or beyond
    /// `retention_bytes`, oldest first; returns how many were deleted.
    pub async fn apply_retention(&self, now_ms: i64) -> Result<usize, LogError> {
        self.check_usable()?;
        // A segment being finished is not deleted under its finish.
        self.wait_finished().await?;
        if self.cleaning.get() || self.truncating.get() {
            // The pass swaps the segments it read, a truncation cuts or replaces them;
            // retention runs at its next check.
            return Ok(0);
        }
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
        for seg in &deleted {
            tracing::info!(dir = %self.dir.display(), base = seg.base_offset, "retention deletes segment");
        }
        // Oldest first: a crash leaves a suffix of the log.
        self.remove_segments(deleted).await?;
        Ok(count)
    }

    /// Closes segments no longer in the log, then unlinks them in the order given and syncs
    /// the directory. Each file is closed before it is unlinked, so the unlink, not the
    /// close, frees its blocks: a close of an unlinked file frees them in the closing
    /// thread on the way back from the syscall, which here would be the shard's thread,
    /// stalled for hundreds of milliseconds while the file system frees (and, mounted with
    /// `discard`, trims) a whole segment. Unlinks and the directory sync block: they run
    /// off the shard's thread.
    pub(super) async fn remove_segments(&self, removed: Vec<Segment>) -> Result<(), LogError> {
        if removed.is_empty() {
            return Ok(());
        }
        let bases: Vec<i64> = removed.iter().map(|s| s.base_offset).collect();
        for seg in removed {
            if let Ok(file) = Rc::try_unwrap(seg.file) {
                let _ = file.close().await;
            }
        }
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || -> std::io::Result<()> {
                for base in bases {
                    files::remove_segment(&dir, base)?;
                }
                files::sync_dir(&dir)
            })
            .await?;
        Ok(())
    }
}
