//! The durable offsets store of one shard's group coordinator: its offsets log, written,
//! replayed, compacted, handed over and expired. Never answers a request itself (the
//! coordinator in `coordinator.rs` does) and never acknowledges a write before it is durable.
//!
//! A commit is appended to the offsets log as one batch (split at 256 KiB) and acknowledged
//! only once the log is durable (`ShardStorage::wait_durable`, shared with every other sync
//! of the shard: group commit); it then becomes visible to OffsetFetch. At start the log is
//! replayed into memory. A timer tick (every `TICK_MS`) expires sessions and ends join
//! phases; a slower one expires the offsets of groups that have been empty for
//! `offsets_retention_ms`.
//!
//! On disk, `<data_dir>/__consumer_offsets/<shard>/` holds `CURRENT` (the generation number,
//! absent = 0) and one log directory per generation. Compaction writes the live offsets into
//! generation n+1, makes it durable, switches `CURRENT` atomically, then deletes generation
//! n; a start removes any generation that is not current (an interrupted compaction).
//! After a change of `cores`, each shard hands the offsets of groups it no longer
//! coordinates to their new coordinator at start (and folds in the logs of shards beyond
//! the new count), so committed offsets survive a resize.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::GroupCoordinator;
use crate::clock::now_ms;
use crate::groups::group::{CommittedOffset, Group};
use crate::groups::offsets_log::{self, OffsetRecord, OffsetValue};
use crate::groups::{coordinator_shard, GroupsConfig};
use crate::log::{LogConfig, PartitionLog, ShardStorage};

/// Bytes read per step while replaying the offsets log at start.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// Bytes of records per batch written to the offsets log (a large commit, compaction,
/// migration are split at this size). A record is at most ~34 KiB (group id, topic name and
/// metadata are bounded), so a batch stays below `OFFSETS_BATCH_MAX_BYTES`.
const REWRITE_BATCH_BYTES: usize = 256 << 10;

/// Largest batch the offsets log accepts, whatever `max_message_bytes` user topics have.
const OFFSETS_BATCH_MAX_BYTES: u32 = 1 << 20;

/// The offsets log is compacted (live offsets rewritten into a new generation, the old one
/// deleted) once it holds `offsets_compact_min_records` records and more than this many
/// times the live ones. Bounds both its disk size and the replay time at start.
const COMPACT_GARBAGE_RATIO: u64 = 4;

/// How long start waits for the other shards' coordinators when moving offsets between
/// shards after a change of `cores`.
const MIGRATION_WAIT: Duration = Duration::from_secs(60);

/// Name of the directory (under the data dir) holding each shard's offsets log.
pub const OFFSETS_DIR: &str = "__consumer_offsets";

/// File in a shard's offsets directory naming its current log generation.
const CURRENT_FILE: &str = "CURRENT";

/// Offsets found at start that belong to another shard (after a change of `cores`), and the
/// logs of shards that no longer exist; `GroupCoordinator::migrate` moves them.
#[derive(Default)]
pub struct Migration {
    /// Latest value of each key found outside its coordinator's log (None: deleted).
    pub(super) moving: HashMap<(String, String, i32), Option<OffsetValue>>,
    /// Live keys of this shard's own log that belong elsewhere: tombstoned once moved.
    pub(super) leaving: Vec<(String, String, i32)>,
    /// Offsets logs of shards beyond the current count, deleted once moved.
    pub(super) orphans: Vec<(std::path::PathBuf, Rc<PartitionLog>)>,
}

/// Open the current generation of the offsets log in `dir`, removing leftovers of an
/// interrupted compaction (generations other than the current one).
async fn open_generation(
    dir: &Path,
    log_config: &LogConfig,
) -> Result<(Rc<PartitionLog>, u64), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let generation = match std::fs::read_to_string(dir.join(CURRENT_FILE)) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| {
            format!(
                "{}: bad generation '{}'",
                dir.join(CURRENT_FILE).display(),
                text.trim()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(format!("reading {}: {e}", dir.join(CURRENT_FILE).display())),
    };
    let entries = std::fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.parse::<u64>().is_ok_and(|g| g != generation) {
            tracing::info!(dir = %entry.path().display(), "removing a stale offsets log generation");
            std::fs::remove_dir_all(entry.path())
                .map_err(|e| format!("removing {}: {e}", entry.path().display()))?;
        }
    }
    let log_dir = dir.join(generation.to_string());
    let (log, report) = PartitionLog::open(&log_dir, log_config.clone())
        .await
        .map_err(|e| format!("opening offsets log {}: {e}", log_dir.display()))?;
    tracing::debug!(dir = %log_dir.display(), "opened offsets log: {report}");
    Ok((log, generation))
}

/// Every record of a log, in order, with its offset.
async fn read_log(log: &PartitionLog) -> Result<Vec<(i64, OffsetRecord)>, String> {
    let mut offset = log.log_start_offset();
    let mut out = Vec::new();
    while offset < log.log_end_offset() {
        let read = log
            .read(offset, REPLAY_READ_BYTES)
            .await
            .map_err(|e| format!("reading offsets log at {offset}: {e}"))?;
        if read.chunks.is_empty() {
            break;
        }
        let mut bytes = BytesMut::with_capacity(read.bytes);
        for chunk in &read.chunks {
            bytes.extend_from_slice(chunk);
        }
        let bytes = bytes.freeze();
        let Some(next) = next_offset_after(&bytes) else {
            return Err(format!("offsets log at {offset}: unreadable batch header"));
        };
        if next <= offset {
            return Err(format!("offsets log at {offset}: batch does not advance"));
        }
        for (record_offset, record) in offsets_log::decode_batches(bytes)? {
            // A batch read from the middle can hold records before `offset`: skip them.
            if record_offset >= offset {
                out.push((record_offset, record));
            }
        }
        offset = next;
    }
    Ok(out)
}

/// Replace `dir/CURRENT` atomically (write, fsync, rename, fsync the directory).
fn write_current(dir: &Path, generation: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{CURRENT_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(format!("{generation}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(CURRENT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Records grouped into batches of at most `REWRITE_BATCH_BYTES`.
fn chunks_of(records: Vec<OffsetRecord>) -> Vec<Vec<OffsetRecord>> {
    let mut out: Vec<Vec<OffsetRecord>> = Vec::new();
    let mut bytes = 0;
    for record in records {
        let size = 64
            + record.group.len()
            + record.topic.len()
            + record.value.as_ref().map_or(0, |v| v.metadata.len());
        if out.is_empty() || bytes + size > REWRITE_BATCH_BYTES {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        out.last_mut().expect("pushed above").push(record);
    }
    out
}

pub(super) fn tombstones(
    group_id: &str,
    keys: impl IntoIterator<Item = (String, i32)>,
) -> Vec<OffsetRecord> {
    keys.into_iter()
        .map(|(topic, partition)| OffsetRecord {
            group: group_id.to_string(),
            topic,
            partition,
            value: None,
        })
        .collect()
}

/// The offset after the last whole batch in `bytes` (base offset + last offset delta + 1),
/// read from the v2 batch headers; None if a header is cut short.
fn next_offset_after(bytes: &[u8]) -> Option<i64> {
    let mut pos = 0;
    let mut next = None;
    while pos + 27 <= bytes.len() {
        let base = i64::from_be_bytes(bytes[pos..pos + 8].try_into().ok()?);
        let length = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().ok()?);
        let delta = i32::from_be_bytes(bytes[pos + 23..pos + 27].try_into().ok()?);
        if length < 0 {
            return None;
        }
        next = Some(base + i64::from(delta) + 1);
        pos += 12 + length as usize;
    }
    next
}

impl GroupCoordinator {
    /// Open (or create) this shard's offsets log and load the committed offsets of the groups
    /// it coordinates. Offsets of other shards' groups (found after a change of `cores`,
    /// also in logs of shards that no longer exist) are returned for [`Self::migrate`].
    pub async fn open(
        shard_id: usize,
        nr_shards: usize,
        data_dir: &Path,
        log_config: LogConfig,
        storage: Rc<ShardStorage>,
        config: GroupsConfig,
    ) -> Result<(Rc<GroupCoordinator>, Migration), String> {
        let base = data_dir.join(OFFSETS_DIR);
        let dir = base.join(shard_id.to_string());
        // Committed offsets leave by expiry and compaction, never by time retention; the log
        // is small and read at start only, so it needs little cache.
        let log_config = LogConfig {
            retention_ms: -1,
            retention_bytes: -1,
            tail_cache_bytes: log_config.tail_cache_bytes.min(1 << 20),
            max_batch_bytes: OFFSETS_BATCH_MAX_BYTES,
            segment_bytes: log_config.segment_bytes.min(64 << 20),
            preallocate_bytes: log_config.preallocate_bytes.min(4 << 20),
            ..log_config
        };
        let (log, generation) = open_generation(&dir, &log_config).await?;
        storage.register(&log);
        let boot_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let coordinator = Rc::new(GroupCoordinator {
            shard_id,
            nr_shards,
            config,
            groups: RefCell::new(HashMap::new()),
            dir,
            log_config,
            log: RefCell::new(log.clone()),
            generation: Cell::new(generation),
            log_records: Cell::new(0),
            live_offsets: Cell::new(0),
            switch_lock: glommio::sync::RwLock::new(()),
            compacting: Cell::new(false),
            storage,
            member_seq: Cell::new(0),
            boot_id,
            stopped: Cell::new(false),
            closing: Cell::new(false),
        });
        let mut migration = Migration::default();
        let records = read_log(&log).await?;
        coordinator.log_records.set(records.len() as u64);
        let loaded = records.len();
        for (offset, record) in records {
            if coordinator_shard(&record.group, nr_shards) == shard_id {
                coordinator.apply(record, offset);
            } else {
                let key = (record.group, record.topic, record.partition);
                migration.moving.insert(key, record.value);
            }
        }
        // Keys already tombstoned here (moved by an earlier start) stay as they are.
        migration.moving.retain(|_, value| value.is_some());
        migration.leaving = migration.moving.keys().cloned().collect();
        // Logs of shards beyond the current count: every record moves.
        if let Ok(entries) = std::fs::read_dir(&base) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let Ok(other) = name.parse::<usize>() else {
                    continue;
                };
                if other < nr_shards || other % nr_shards != shard_id {
                    continue;
                }
                let (orphan, _) = open_generation(&entry.path(), &coordinator.log_config).await?;
                for (_, record) in read_log(&orphan).await? {
                    let key = (record.group, record.topic, record.partition);
                    let keep_newer = match (migration.moving.get(&key), &record.value) {
                        (Some(Some(old)), Some(new)) => new.commit_time_ms >= old.commit_time_ms,
                        (Some(Some(_)), None) => false,
                        _ => true,
                    };
                    if keep_newer {
                        migration.moving.insert(key, record.value);
                    }
                }
                migration.orphans.push((entry.path(), orphan));
            }
        }
        tracing::info!(
            shard = shard_id,
            records = loaded,
            groups = coordinator.groups.borrow().len(),
            moving = migration.moving.len(),
            "loaded committed offsets"
        );
        Ok((coordinator, migration))
    }

    /// Move offsets found at start to their coordinators (after a change of `cores`), then
    /// tombstone them here and delete the logs of shards that no longer exist.
    ///
    /// `deliver(target, records)` writes records on shard `target`'s coordinator: Ok(None)
    /// while that coordinator has not started yet (retried for `MIGRATION_WAIT`), Err when
    /// the shard is gone. Passed in, so this layer needs nothing of the shard mesh.
    pub async fn migrate<F, Fut>(&self, migration: Migration, deliver: F) -> Result<(), String>
    where
        F: Fn(usize, Vec<OffsetRecord>) -> Fut,
        Fut: std::future::Future<Output = Result<Option<Result<(), String>>, String>>,
    {
        let Migration {
            moving,
            leaving,
            orphans,
        } = migration;
        let mut by_target: HashMap<usize, Vec<OffsetRecord>> = HashMap::new();
        for ((group, topic, partition), value) in moving {
            if value.is_none() {
                continue;
            }
            let target = coordinator_shard(&group, self.nr_shards);
            by_target.entry(target).or_default().push(OffsetRecord {
                group,
                topic,
                partition,
                value,
            });
        }
        for (target, records) in by_target {
            let count = records.len();
            let deadline = Instant::now() + MIGRATION_WAIT;
            loop {
                let outcome = deliver(target, records.clone()).await?;
                match outcome {
                    Some(result) => {
                        result?;
                        break;
                    }
                    None if Instant::now() < deadline => {
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                    None => {
                        return Err(format!("shard {target}'s group coordinator did not start"))
                    }
                }
            }
            tracing::info!(
                from = self.shard_id,
                to = target,
                count,
                "moved committed offsets"
            );
        }
        if !leaving.is_empty() {
            let tombstones = leaving
                .into_iter()
                .map(|(group, topic, partition)| OffsetRecord {
                    group,
                    topic,
                    partition,
                    value: None,
                })
                .collect();
            self.write_all(tombstones).await?;
        }
        for (dir, log) in orphans {
            log.delete()
                .await
                .map_err(|e| format!("deleting {}: {e}", dir.display()))?;
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("removing {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// Write records in batches of bounded size (migration, compaction input).
    pub async fn write_all(&self, records: Vec<OffsetRecord>) -> Result<(), String> {
        for chunk in chunks_of(records) {
            self.write(chunk).await?;
        }
        Ok(())
    }

    /// The current offsets log.
    pub(super) fn log(&self) -> Rc<PartitionLog> {
        self.log.borrow().clone()
    }

    /// Append records to the offsets log, wait until durable, then apply them in memory.
    pub(super) async fn write(&self, records: Vec<OffsetRecord>) -> Result<(), String> {
        // Shared: a compaction switching logs waits for this write to finish, and this write
        // cannot land in a log that is being replaced.
        let _shared = self
            .switch_lock
            .read()
            .await
            .map_err(|_| "offsets log closed".to_string())?;
        if self.stopped.get() {
            return Err("offsets log closed".into());
        }
        let log = self.log();
        let now = now_ms();
        let batch = offsets_log::encode_batch(&records, now)?;
        let info = log
            .append(batch, now)
            .await
            .map_err(|e| format!("append: {e}"))?;
        self.storage
            .wait_durable(&log, info.last_offset)
            .await
            .map_err(|e| format!("sync: {e}"))?;
        self.log_records
            .set(self.log_records.get() + records.len() as u64);
        for (i, record) in records.into_iter().enumerate() {
            self.apply(record, info.base_offset + i as i64);
        }
        Ok(())
    }

    /// Apply one record of the offsets log to memory.
    pub(super) fn apply(&self, record: OffsetRecord, log_offset: i64) {
        let mut groups = self.groups.borrow_mut();
        let delay = Duration::from_millis(u64::from(self.config.initial_rebalance_delay_ms));
        let group = groups
            .entry(record.group.clone())
            .or_insert_with(|| Group::new(record.group.clone(), Instant::now(), delay));
        let value = record.value.map(|v| CommittedOffset {
            offset: v.offset,
            leader_epoch: v.leader_epoch,
            metadata: v.metadata,
            commit_time_ms: v.commit_time_ms,
            log_offset,
        });
        let before = group.offsets.len() as u64;
        group.apply_offset(&record.topic, record.partition, value);
        let after = group.offsets.len() as u64;
        self.live_offsets
            .set((self.live_offsets.get() + after).saturating_sub(before));
        if group.is_dead() {
            groups.remove(&record.group);
        }
    }

    /// Whether the log holds enough superseded records to be worth compacting.
    pub(super) fn needs_compaction(&self) -> bool {
        let records = self.log_records.get();
        records >= self.config.offsets_compact_min_records
            && records > COMPACT_GARBAGE_RATIO * self.live_offsets.get()
            && !self.compacting.get()
    }

    /// Rewrite the live offsets into a new log generation, make it current, delete the old
    /// one. Writes wait meanwhile (they hold the switch lock shared).
    pub async fn compact(self: &Rc<Self>) {
        if self.compacting.replace(true) {
            return;
        }
        let Ok(_exclusive) = self.switch_lock.write().await else {
            return;
        };
        if self.stopped.get() {
            return;
        }
        let generation = self.generation.get() + 1;
        let log_dir = self.dir.join(generation.to_string());
        match self.write_generation(generation, &log_dir).await {
            Ok((log, records)) => {
                let old = self.log.replace(log.clone());
                self.storage.register(&log);
                self.storage.unregister(&old);
                self.generation.set(generation);
                let before = self.log_records.replace(records);
                tracing::info!(
                    shard = self.shard_id,
                    generation,
                    records_before = before,
                    records_after = records,
                    "compacted the offsets log"
                );
                if let Err(e) = old.delete().await {
                    tracing::warn!(shard = self.shard_id, "deleting the old offsets log: {e}");
                }
            }
            Err(e) => {
                tracing::error!(
                    shard = self.shard_id,
                    "compacting the offsets log failed: {e}"
                );
                let _ = std::fs::remove_dir_all(&log_dir);
            }
        }
        self.compacting.set(false);
    }

    /// Write every live offset into generation `generation`, make it durable and current,
    /// and point memory at the new record offsets. Returns the new log and its record count.
    async fn write_generation(
        &self,
        generation: u64,
        log_dir: &Path,
    ) -> Result<(Rc<PartitionLog>, u64), String> {
        let _ = std::fs::remove_dir_all(log_dir);
        let (log, _) = PartitionLog::open(log_dir, self.log_config.clone())
            .await
            .map_err(|e| format!("opening {}: {e}", log_dir.display()))?;
        let records: Vec<OffsetRecord> = self
            .groups
            .borrow()
            .values()
            .flat_map(|g| {
                g.offsets
                    .iter()
                    .map(|((topic, partition), c)| OffsetRecord {
                        group: g.id.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        value: Some(OffsetValue {
                            offset: c.offset,
                            leader_epoch: c.leader_epoch,
                            metadata: c.metadata.clone(),
                            commit_time_ms: c.commit_time_ms,
                        }),
                    })
            })
            .collect();
        let count = records.len() as u64;
        let now = now_ms();
        let mut placed = Vec::with_capacity(records.len());
        let mut last = -1;
        for chunk in chunks_of(records) {
            let batch = offsets_log::encode_batch(&chunk, now)?;
            let info = log
                .append(batch, now)
                .await
                .map_err(|e| format!("append: {e}"))?;
            last = info.last_offset;
            for (i, r) in chunk.into_iter().enumerate() {
                placed.push((r.group, r.topic, r.partition, info.base_offset + i as i64));
            }
        }
        if last >= 0 {
            self.storage
                .wait_durable(&log, last)
                .await
                .map_err(|e| format!("sync: {e}"))?;
        }
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || write_current(&dir, generation))
            .await
            .map_err(|e| format!("writing {CURRENT_FILE}: {e}"))?;
        // From here on the new generation is the log; offsets in memory must be its offsets.
        let mut groups = self.groups.borrow_mut();
        for (group, topic, partition, offset) in placed {
            if let Some(c) = groups
                .get_mut(&group)
                .and_then(|g| g.offsets.get_mut(&(topic, partition)))
            {
                c.log_offset = offset;
            }
        }
        Ok((log, count))
    }

    /// Expire offsets of groups empty for `offsets_retention_ms` (counted from the later of
    /// the commit and the moment the group became empty), and forget dead groups.
    pub async fn expire_offsets(&self, now: i64) {
        let retention = self.config.offsets_retention_ms as i64;
        let (mono_now, wall_now) = (Instant::now(), now_ms());
        let records: Vec<OffsetRecord> = {
            let mut groups = self.groups.borrow_mut();
            groups.retain(|_, g| !g.is_dead());
            groups
                .values()
                .filter(|g| g.member_count() == 0)
                .flat_map(|g| {
                    // The group state machine keeps monotonic time; commits carry wall time.
                    let empty_for = mono_now.saturating_duration_since(g.empty_since);
                    let empty_since_ms = wall_now - empty_for.as_millis() as i64;
                    let expired = g
                        .offsets
                        .iter()
                        .filter(|(_, c)| c.commit_time_ms.max(empty_since_ms) + retention <= now)
                        .map(|(key, _)| key.clone())
                        .collect::<Vec<_>>();
                    tombstones(&g.id, expired)
                })
                .collect()
        };
        if records.is_empty() {
            return;
        }
        let count = records.len();
        match self.write_all(records).await {
            Ok(()) => tracing::info!(shard = self.shard_id, count, "expired committed offsets"),
            Err(e) => tracing::error!(shard = self.shard_id, "expiring offsets failed: {e}"),
        }
    }
}
