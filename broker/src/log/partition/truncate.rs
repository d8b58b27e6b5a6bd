//! Cutting a partition's log back: `truncate_to` (Kafka's `truncateTo`: a follower drops
//! what diverged from its new leader) and `reset_to` (`truncateFullyAndStartAt`: a follower
//! behind its leader's log start starts over there). Both take a place in the append line,
//! so they are ordered with appends, and run while no cleaning pass, roll finish, sync or
//! retention does (`truncating`).
//!
//! Crash safety comes from the order of the steps, each durable before the next: the
//! producer snapshot of the cut log first (it holds for the uncut log too: replay covers
//! the rest), then whole segments above the cut, newest first (a crash leaves a prefix of
//! the old log), then the cut of the last kept segment and its fdatasync, then the epoch
//! checkpoint (`open` drops epochs past the log end, so a stale one is harmless). A crash
//! anywhere reopens as the cut log or as a longer prefix of the old one. Must never cut
//! inside a batch, and never leave the in-memory view (offsets, cache, producer state,
//! epochs) describing more than the files hold once it returns.

use std::rc::Rc;

use super::open::REPLAY_READ_BYTES;
use super::write_queue::staging_over;
use super::{staging_capacity, PartitionLog};
use crate::log::epochs::EpochCache;
use crate::log::files;
use crate::log::producer::{ProducerSnapshot, ProducerStates};
use crate::log::segment::{find_cut, open_segment_file, scan_segment, Segment};
use crate::log::LogError;

impl PartitionLog {
    /// Removes every batch whose last offset is at or after `offset` (a batch holding
    /// `offset` goes whole, as in Kafka) and returns the new log end offset; at or past
    /// the log end it changes nothing. Appends continue right after the cut; producer state
    /// and epochs describe what stays; the cut is durable when this returns. Refuses an
    /// `offset` below the log start (see [`reset_to`](Self::reset_to)).
    pub async fn truncate_to(&self, offset: i64) -> Result<i64, LogError> {
        let place = self.reserve_append();
        place.acquired().await;
        self.check_usable()?;
        let (start, end) = (self.log_start_offset.get(), self.log_end_offset.get());
        if offset >= end {
            return Ok(end);
        }
        if offset < start {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        self.truncating.set(true);
        let result = match self.quiesce().await {
            Ok(()) => self.cut_at(offset).await,
            Err(e) => Err(e),
        };
        self.end_truncation(&result);
        tracing::info!(dir = %self.dir.display(), offset, old_end = end, result = ?result.as_ref().ok(), "truncated log");
        result
    }

    /// Empties the log and starts it again at `offset` (log start = log end = `offset`):
    /// every segment, producer state and epoch goes. For a follower whose log is behind
    /// its leader's log start (or past its end). Durable when it returns.
    pub async fn reset_to(&self, offset: i64) -> Result<(), LogError> {
        let place = self.reserve_append();
        place.acquired().await;
        self.check_usable()?;
        if offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start: self.log_start_offset.get(),
                end: self.log_end_offset.get(),
            });
        }
        let old_end = self.log_end_offset.get();
        self.truncating.set(true);
        let result = match self.quiesce().await {
            Ok(()) => self.start_over(offset).await,
            Err(e) => Err(e),
        };
        self.end_truncation(&result);
        tracing::info!(dir = %self.dir.display(), offset, old_end, ok = result.is_ok(), "reset log");
        result
    }

    fn end_truncation<T>(&self, result: &Result<T, LogError>) {
        self.truncating.set(false);
        self.finish_event.notify();
        if let Err(e) = result {
            // Files and memory may disagree halfway through: reopening recovers.
            self.fail(e);
        }
    }

    /// Waits until no cleaning pass, roll finish or sync runs, and everything appended is
    /// on the device. The caller holds the append line and set `truncating`, so none of
    /// them starts again.
    async fn quiesce(&self) -> Result<(), LogError> {
        while self.cleaning.get() || self.finishing.get() {
            self.finish_event.listen().await;
        }
        while self.syncing.get() {
            self.sync_event.listen().await;
        }
        self.write_staged().await?;
        self.check_failed()
    }

    async fn cut_at(&self, offset: i64) -> Result<i64, LogError> {
        // Where the cut falls. A compacted segment is walked from its start, so the new end
        // is right after the last batch kept, as a recovery scan would find it.
        let (index, base, file, size, compacted, (entry_offset, entry_position)) = {
            let st = self.state.borrow();
            let i = st
                .segments
                .partition_point(|s| s.base_offset <= offset)
                .saturating_sub(1);
            let seg = &st.segments[i];
            let entry = if seg.compacted {
                (seg.base_offset, 0)
            } else {
                seg.lookup(offset)
            };
            let (file, size) = (seg.file.clone(), seg.size_bytes);
            (i, seg.base_offset, file, size, seg.compacted, entry)
        };
        let (position, new_end) =
            find_cut(&file, offset, entry_offset, entry_position, size).await?;

        let producers = self.producers_at(new_end, base).await?;
        let snapshot = files::encode_checked(&producers.to_snapshot(new_end));
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || {
                files::write_atomic(&dir, files::PRODUCER_SNAPSHOT_FILE, &snapshot)
            })
            .await?;

        // Appends continue in the cut segment, over its last page as after recovery.
        let capacity = staging_capacity(&self.config.borrow());
        let appended_total = self.appended_total.get();
        let staging =
            staging_over(&file, base, position, capacity, new_end, appended_total).await?;
        // From here on readers see the cut log.
        let removed: Vec<Segment> = {
            let mut st = self.state.borrow_mut();
            let st = &mut *st;
            let removed = st.segments.drain(index + 1..).collect();
            while st
                .cache
                .back()
                .is_some_and(|b| b.header.last_offset() >= new_end)
            {
                let b = st.cache.pop_back().expect("back");
                st.cache_bytes -= b.header.total_bytes();
            }
            st.producers = producers;
            removed
        };
        *self.writes.staging.borrow_mut() = staging;
        self.writes.last_issued.set(None);
        self.log_end_offset.set(new_end);
        self.written_offset.set(new_end);
        self.written_total.set(appended_total);
        self.durable_offset
            .set(self.durable_offset.get().min(new_end));
        self.clean_point.set(self.clean_point.get().min(new_end));
        if let Some(hw) = self.high_watermark.get() {
            self.high_watermark.set(Some(hw.min(new_end)));
        }

        // Newest first: a crash leaves a prefix of the log.
        self.remove_segments(removed.into_iter().rev().collect())
            .await?;
        file.truncate(position).await?;
        file.fdatasync().await?;
        self.durable_offset.set(new_end);
        self.durable_total.set(appended_total);

        // The kept part's indexes, max timestamp and size, rebuilt as recovery would.
        let mut cut = Segment::new(base, file.clone(), position);
        {
            let st = self.state.borrow();
            let old = &st.segments[index];
            cut.index = old.index.clone();
            cut.time_index = old.time_index.clone();
            cut.created_ms = old.created_ms;
            cut.compacted = compacted;
        }
        let interval = self.config.borrow().index_interval_bytes.max(1) as u64;
        let outcome = scan_segment(&mut cut, position, true, interval).await?;
        if outcome.reason.is_some() || outcome.next_offset != new_end {
            return Err(LogError::CorruptBatch(format!(
                "segment {base} cut at byte {position} rescans to offset {} ({}), not {new_end}",
                outcome.next_offset,
                outcome.reason.unwrap_or_default()
            )));
        }
        cut.written_bytes = cut.size_bytes;
        if cut.size_bytes == 0 {
            cut.created_ms = None;
        }
        cut.rewrite_indexes(&self.dir)?;
        self.state.borrow_mut().segments[index] = cut;

        if self.epochs.borrow_mut().truncate_from_end(new_end) {
            self.persist_epochs().await?;
        }
        Ok(new_end)
    }

    /// Producer state as of `end` (a batch boundary at or after `segment_base`, the cut
    /// segment's base), rebuilt from batches as Kafka does: from the snapshot on disk when it
    /// was taken at or before `end`, else from the current state without what the cut
    /// segment and later ones hold, replaying the cut segment up to `end`. (Without such a
    /// snapshot a producer that wrote both before the cut segment and past `end` may keep
    /// fewer than five batches for dedupe; its newest kept batch is always there.)
    async fn producers_at(&self, end: i64, segment_base: i64) -> Result<ProducerStates, LogError> {
        let start = self.log_start_offset.get();
        let snapshot: Option<ProducerSnapshot> =
            files::read_checked(&self.dir.join(files::PRODUCER_SNAPSHOT_FILE));
        let (mut producers, mut at) = match snapshot {
            Some(s) if s.log_end_offset >= start && s.log_end_offset <= end => {
                let from = s.log_end_offset;
                (ProducerStates::from_snapshot(s), from)
            }
            _ => {
                let mut p = self.state.borrow().producers.clone();
                p.truncate_from(segment_base);
                (p, segment_base.max(start))
            }
        };
        while at < end {
            let batches = self.read_batches(at, REPLAY_READ_BYTES, end).await?;
            let Some(last) = batches.last() else { break };
            at = last.0.last_offset() + 1;
            for (h, _) in &batches {
                producers.record(h, h.base_offset());
            }
        }
        Ok(producers)
    }

    async fn start_over(&self, offset: i64) -> Result<(), LogError> {
        let old_end = self.log_end_offset.get();
        // Neither the old producer snapshot nor the old epochs may outlive the old log: a
        // crash from here on reopens what is left of it with producer state replayed from
        // its batches and epochs from its scanned tail.
        self.epochs.borrow_mut().clear();
        let dir = self.dir.clone();
        let empty = EpochCache::default().encode();
        glommio::executor()
            .spawn_blocking(move || -> std::io::Result<()> {
                for name in [files::PRODUCER_SNAPSHOT_FILE, files::RESET_SEGMENT_FILE] {
                    match std::fs::remove_file(dir.join(name)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                }
                files::write_atomic(&dir, files::LEADER_EPOCH_FILE, &empty)
            })
            .await?;
        // The new segment lives under a temporary name until it replaces the old ones.
        let file = Rc::new(open_segment_file(&self.dir.join(files::RESET_SEGMENT_FILE)).await?);
        let capacity = staging_capacity(&self.config.borrow());
        let appended_total = self.appended_total.get();
        let staging = staging_over(&file, offset, 0, capacity, offset, appended_total).await?;
        let removed = {
            let mut st = self.state.borrow_mut();
            st.cache.clear();
            st.cache_bytes = 0;
            st.producers = ProducerStates::default();
            std::mem::replace(&mut st.segments, vec![Segment::new(offset, file, 0)])
        };
        *self.writes.staging.borrow_mut() = staging;
        self.writes.last_issued.set(None);
        self.log_start_offset.set(offset);
        self.log_end_offset.set(offset);
        self.written_offset.set(offset);
        self.written_total.set(appended_total);
        self.durable_offset
            .set(self.durable_offset.get().min(offset));
        self.clean_point.set(offset);
        self.tombstone_expiry_ms.set(None);
        if self.high_watermark.get().is_some() {
            self.high_watermark.set(Some(offset));
        }

        let bases: Vec<i64> = removed.iter().map(|s| s.base_offset).collect();
        for seg in removed {
            if let Ok(file) = Rc::try_unwrap(seg.file) {
                let _ = file.close().await;
            }
        }
        let dir = self.dir.clone();
        let snapshot = files::encode_checked(&ProducerStates::default().to_snapshot(offset));
        glommio::executor()
            .spawn_blocking(move || -> std::io::Result<()> {
                let name = || -> std::io::Result<()> {
                    std::fs::rename(
                        dir.join(files::RESET_SEGMENT_FILE),
                        files::segment_path(&dir, offset, "log"),
                    )?;
                    std::fs::write(files::segment_path(&dir, offset, "index"), [])?;
                    std::fs::write(files::segment_path(&dir, offset, "timeindex"), [])
                };
                if offset > old_end {
                    // After the old log: a crash before the old segments are gone reopens
                    // them, the new empty one dropped as following a hole.
                    name()?;
                    for &base in &bases {
                        files::remove_segment(&dir, base)?;
                    }
                } else {
                    // Inside or before the old log (maybe at one of its bases): the old
                    // segments go first, newest first, so a crash leaves a prefix or nothing.
                    for &base in bases.iter().rev() {
                        files::remove_segment(&dir, base)?;
                    }
                    name()?;
                }
                files::sync_dir(&dir)?;
                files::write_atomic(&dir, files::PRODUCER_SNAPSHOT_FILE, &snapshot)
            })
            .await?;
        self.durable_offset.set(offset);
        self.durable_total.set(appended_total);
        Ok(())
    }
}
