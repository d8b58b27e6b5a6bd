//! Opening a partition's log: recovery after a clean or unclean stop (which segments to
//! trust, which to scan, where the log ends), the staging buffer over the last page, and
//! the producer state (snapshot, then replay from batch headers). Must never report as
//! durable anything that follows a hole, and never start a write before recovery is done.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;

use super::epochs::{load_epochs, recover_epochs};
use super::write_queue::{staging_over, WriteQueue};
use super::{staging_capacity, PartitionLog, State};
use crate::log::cleaner::swap;
use crate::log::epochs::EpochCache;
use crate::log::event::Event;
use crate::log::files::{self, CleanShutdown};
use crate::log::producer::{ProducerSnapshot, ProducerStates};
use crate::log::segment::{open_segment_file, probe_direct_io, scan_segment, Segment};
use crate::log::{LogConfig, LogError, RecoveryReport};
use crate::sync::FifoLock;

/// Bytes read per step while replaying producer state (on open, after a truncation).
pub(super) const REPLAY_READ_BYTES: usize = 1 << 20;

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
        // A cleaning pass a crash interrupted is finished or undone before segments are
        // listed, so the list holds either the old segments or the cleaned one.
        if let Some(did) = swap::recover(&dir)? {
            tracing::warn!(dir = %dir.display(), "{did}");
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
        // Epochs seen in the headers recovery reads: they restore a checkpoint write lost
        // with the file (see `epochs`).
        let mut epochs_seen = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let is_last = i + 1 == bases.len();
            let file = Rc::new(open_segment_file(&files::segment_path(&dir, base, "log")).await?);
            let file_len = file.file_size().await?;
            let mut seg = Segment::new(base, file, file_len);
            seg.compacted = files::segment_path(&dir, base, files::COMPACTED_EXT).exists();
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
                epochs_seen.extend_from_slice(&outcome.epochs);
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
        let capacity = staging_capacity(&config);
        let (file, base, size) = (&active.file, active.base_offset, active.size_bytes);
        let staging = staging_over(file, base, size, capacity, log_end_offset, 0).await?;
        let mut epochs = load_epochs(&dir);
        // Epochs of batches recovery cut off (or a truncation's crash left behind).
        let mut epochs_changed = epochs.truncate_from_end(log_end_offset);

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
            writes: WriteQueue::new(staging),
            appends: FifoLock::default(),
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
            sync_event: Event::default(),
            closed: Cell::new(false),
            failure: RefCell::new(None),
            cleaning: Cell::new(false),
            clean_point: Cell::new(log_start_offset),
            tombstone_expiry_ms: Cell::new(None),
            leader_epoch: Cell::new(-1),
            epochs: RefCell::new(EpochCache::default()),
            high_watermark: Cell::new(None),
            truncating: Cell::new(false),
        });

        // Producer state: whatever the snapshot does not cover is replayed from headers.
        let mut offset = replay_from;
        let mut replay_epoch_max = -1;
        while offset < log_end_offset {
            let batches = match log.read_batches(offset, REPLAY_READ_BYTES, i64::MAX).await {
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
                if h.partition_leader_epoch() > replay_epoch_max {
                    replay_epoch_max = h.partition_leader_epoch();
                    epochs_seen.push((replay_epoch_max, h.base_offset()));
                }
            }
            report.producer_batches_replayed += batches.len() as u64;
        }
        epochs_changed |= recover_epochs(&mut epochs, epochs_seen);
        if epochs_changed {
            files::write_atomic(&log.dir, files::LEADER_EPOCH_FILE, &epochs.encode())?;
        }
        *log.epochs.borrow_mut() = epochs;
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
}
