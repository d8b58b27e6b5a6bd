//! The group coordinator of one shard: the groups whose id hashes to this shard, their
//! committed offsets, and the shard's internal offsets log.
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
//!
//! Group membership itself is not persisted: after a restart, members are unknown, get
//! UNKNOWN_MEMBER_ID and rejoin (a rebalance), then resume from their committed offsets.
//!
//! Runs on its shard only (`Rc`, `RefCell`, `Cell`); a `RefCell` borrow is never held
//! across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::group::{
    CommittedOffset, Group, GroupDescription, JoinArgs, JoinOutcome, Reply, SyncOutcome,
};
use super::offsets_log::{self, OffsetRecord, OffsetValue};
use super::{coordinator_shard, GroupsConfig};
use crate::clock::now_ms;
use crate::codes;
use crate::log::{LogConfig, PartitionLog, ShardStorage};

/// Period of the timer that expires sessions and ends join phases: the precision of session
/// and rebalance timeouts.
const TICK_MS: u64 = 100;
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

/// One partition of an OffsetCommit.
#[derive(Clone, Debug)]
pub struct CommitEntry {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// One partition of an OffsetFetch answer: (partition, offset, leader epoch, metadata, error).
pub type FetchedOffset = (i32, i64, i32, String, i16);

/// Offsets found at start that belong to another shard (after a change of `cores`), and the
/// logs of shards that no longer exist; `GroupCoordinator::migrate` moves them.
#[derive(Default)]
pub struct Migration {
    /// Latest value of each key found outside its coordinator's log (None: deleted).
    moving: HashMap<(String, String, i32), Option<OffsetValue>>,
    /// Live keys of this shard's own log that belong elsewhere: tombstoned once moved.
    leaving: Vec<(String, String, i32)>,
    /// Offsets logs of shards beyond the current count, deleted once moved.
    orphans: Vec<(std::path::PathBuf, Rc<PartitionLog>)>,
}

/// Group coordinator of one shard.
pub struct GroupCoordinator {
    shard_id: usize,
    nr_shards: usize,
    config: GroupsConfig,
    groups: RefCell<HashMap<String, Group>>,
    /// This shard's offsets directory: `CURRENT` and one log directory per generation.
    dir: std::path::PathBuf,
    log_config: LogConfig,
    log: RefCell<Rc<PartitionLog>>,
    generation: Cell<u64>,
    /// Records in the current log generation, and live offsets in memory: compaction input.
    log_records: Cell<u64>,
    live_offsets: Cell<u64>,
    /// Writes hold it shared; compaction holds it alone while it switches logs.
    switch_lock: glommio::sync::RwLock<()>,
    compacting: Cell<bool>,
    storage: Rc<ShardStorage>,
    member_seq: Cell<u64>,
    boot_id: u64,
    stopped: Cell<bool>,
    /// Set at shutdown: JoinGroup and SyncGroup no longer wait (they would hold the drain).
    closing: Cell<bool>,
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
    fn log(&self) -> Rc<PartitionLog> {
        self.log.borrow().clone()
    }

    /// Start the timers (session expiry and join deadlines; offset expiry).
    pub fn spawn_timers(self: &Rc<Self>) {
        let this = self.clone();
        glommio::spawn_local(async move {
            while !this.stopped.get() {
                glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
                let now = Instant::now();
                for group in this.groups.borrow_mut().values_mut() {
                    group.tick(now);
                }
                if this.needs_compaction() {
                    let compactor = this.clone();
                    glommio::spawn_local(async move { compactor.compact().await }).detach();
                }
            }
        })
        .detach();
        let this = self.clone();
        glommio::spawn_local(async move {
            let period = Duration::from_millis(this.config.offsets_retention_check_interval_ms);
            while !this.stopped.get() {
                glommio::timer::sleep(period).await;
                if !this.stopped.get() {
                    this.expire_offsets(now_ms()).await;
                }
            }
        })
        .detach();
    }

    /// First step of shutdown: answer every waiting JoinGroup/SyncGroup (clients retry at the
    /// next broker) and wait no more, so the drain of in-flight requests is not held up.
    pub fn quiesce(&self) {
        self.closing.set(true);
        for group in self.groups.borrow_mut().values_mut() {
            group.shutdown();
        }
    }

    /// Stop the timers, fail waiting requests, flush and close the offsets log.
    pub async fn close(&self) {
        self.stopped.set(true);
        for group in self.groups.borrow_mut().values_mut() {
            group.shutdown();
        }
        let _exclusive = self.switch_lock.write().await;
        let log = self.log();
        self.storage.unregister(&log);
        if let Err(e) = log.close().await {
            tracing::error!(shard = self.shard_id, "closing the offsets log failed: {e}");
        }
    }

    fn new_member_id(&self, prefix: &str) -> String {
        let seq = self.member_seq.get() + 1;
        self.member_seq.set(seq);
        format!("{prefix}-{:016x}-{}-{seq}", self.boot_id, self.shard_id)
    }

    /// The group, created if absent and allowed. Err(error code) otherwise.
    fn with_group<R>(
        &self,
        group_id: &str,
        create: bool,
        f: impl FnOnce(&mut Group) -> R,
    ) -> Result<R, i16> {
        let mut groups = self.groups.borrow_mut();
        if !groups.contains_key(group_id) {
            if !create {
                return Err(codes::UNKNOWN_MEMBER_ID);
            }
            if groups.len() >= self.config.max_groups_per_shard as usize {
                tracing::warn!(
                    shard = self.shard_id,
                    max = self.config.max_groups_per_shard,
                    "max_groups_per_shard reached; refusing a new group"
                );
                return Err(codes::COORDINATOR_NOT_AVAILABLE);
            }
            let delay = Duration::from_millis(u64::from(self.config.initial_rebalance_delay_ms));
            groups.insert(
                group_id.to_string(),
                Group::new(group_id.to_string(), Instant::now(), delay),
            );
        }
        Ok(f(groups.get_mut(group_id).expect("inserted above")))
    }

    /// JoinGroup: resolves when the join phase ends (or at once on error).
    pub async fn join(&self, group_id: String, args: JoinArgs) -> JoinOutcome {
        let member_id = args.member_id.clone();
        if self.closing.get() {
            return JoinOutcome::error(codes::COORDINATOR_NOT_AVAILABLE, &member_id);
        }
        // A member id for a group that does not exist is unknown; an empty one creates it.
        let create = member_id.is_empty();
        let reply = self.with_group(&group_id, create, |group| {
            group.join(args, Instant::now(), &self.config, |p| {
                self.new_member_id(p)
            })
        });
        match reply {
            Err(code) => JoinOutcome::error(code, &member_id),
            Ok(Reply::Now(outcome)) => outcome,
            Ok(Reply::Later(answer)) => answer.await.unwrap_or_else(|_| {
                JoinOutcome::error(codes::COORDINATOR_NOT_AVAILABLE, &member_id)
            }),
        }
    }

    /// SyncGroup: the leader's call hands out the assignment; others wait for it.
    #[allow(clippy::too_many_arguments)]
    pub async fn sync(
        &self,
        group_id: String,
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
        protocol_type: Option<String>,
        protocol_name: Option<String>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncOutcome {
        if self.closing.get() {
            return SyncOutcome::error(codes::COORDINATOR_NOT_AVAILABLE);
        }
        let reply = self.with_group(&group_id, false, |group| {
            group.sync(
                &member_id,
                instance_id.as_deref(),
                generation,
                (protocol_type.as_deref(), protocol_name.as_deref()),
                assignments,
                Instant::now(),
            )
        });
        match reply {
            Err(code) => SyncOutcome::error(code),
            Ok(Reply::Now(outcome)) => outcome,
            Ok(Reply::Later(answer)) => answer
                .await
                .unwrap_or_else(|_| SyncOutcome::error(codes::COORDINATOR_NOT_AVAILABLE)),
        }
    }

    /// Heartbeat: an error code.
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        self.with_group(group_id, false, |group| {
            group.heartbeat(member_id, instance_id, generation, Instant::now())
        })
        .unwrap_or_else(|code| code)
    }

    /// LeaveGroup of each (member id, instance id): (top-level error, one error per member).
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> (i16, Vec<i16>) {
        let outcome = self.with_group(group_id, false, |group| {
            members
                .iter()
                .map(|(id, instance)| group.leave(id, instance.as_deref(), Instant::now()))
                .collect::<Vec<i16>>()
        });
        match outcome {
            Ok(codes) => (codes::NONE, codes),
            Err(code) => (code, vec![code; members.len()]),
        }
    }

    /// OffsetCommit: one error code per entry, after the commit is durable.
    /// `known` says whether a topic partition exists.
    pub async fn commit(
        &self,
        group_id: String,
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
        entries: Vec<CommitEntry>,
        known: impl Fn(&str, i32) -> bool,
    ) -> Vec<i16> {
        let simple = generation < 0 && member_id.is_empty() && instance_id.is_none();
        let validation = {
            let groups = self.groups.borrow();
            match groups.get(&group_id) {
                Some(group) => {
                    let code =
                        group.validate_commit(&member_id, instance_id.as_deref(), generation);
                    (code, group.offsets.len())
                }
                None if simple => {
                    if groups.len() >= self.config.max_groups_per_shard as usize {
                        (codes::COORDINATOR_NOT_AVAILABLE, 0)
                    } else {
                        (codes::NONE, 0)
                    }
                }
                None => (codes::ILLEGAL_GENERATION, 0),
            }
        };
        let (code, mut stored) = validation;
        if code != codes::NONE {
            return vec![code; entries.len()];
        }
        let mut results = Vec::with_capacity(entries.len());
        let mut records = Vec::new();
        let mut written = Vec::new();
        let mut in_request = std::collections::HashSet::new();
        let now = now_ms();
        for (i, entry) in entries.into_iter().enumerate() {
            let metadata = entry.metadata.unwrap_or_default();
            let is_new = !self.has_offset(&group_id, &entry.topic, entry.partition)
                && !in_request.contains(&(entry.topic.clone(), entry.partition));
            let code = if metadata.len() > self.config.offset_metadata_max_bytes as usize {
                codes::OFFSET_METADATA_TOO_LARGE
            } else if !known(&entry.topic, entry.partition) {
                codes::UNKNOWN_TOPIC_OR_PARTITION
            } else if is_new && stored >= self.config.max_offsets_per_group as usize {
                codes::INVALID_COMMIT_OFFSET_SIZE
            } else {
                stored += usize::from(is_new);
                codes::NONE
            };
            results.push(code);
            if code == codes::NONE {
                in_request.insert((entry.topic.clone(), entry.partition));
                written.push(i);
                records.push(OffsetRecord {
                    group: group_id.clone(),
                    topic: entry.topic,
                    partition: entry.partition,
                    value: Some(OffsetValue {
                        offset: entry.offset,
                        leader_epoch: entry.leader_epoch,
                        metadata,
                        commit_time_ms: now,
                    }),
                });
            }
        }
        if records.is_empty() {
            return results;
        }
        if let Err(e) = self.write_all(records).await {
            tracing::error!(group = %group_id, "offset commit failed: {e}");
            for i in written {
                results[i] = codes::COORDINATOR_NOT_AVAILABLE;
            }
        }
        results
    }

    fn has_offset(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        self.groups
            .borrow()
            .get(group_id)
            .is_some_and(|g| g.offsets.contains_key(&(topic.to_string(), partition)))
    }

    /// Append records to the offsets log, wait until durable, then apply them in memory.
    async fn write(&self, records: Vec<OffsetRecord>) -> Result<(), String> {
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
    fn apply(&self, record: OffsetRecord, log_offset: i64) {
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
    fn needs_compaction(&self) -> bool {
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

    /// OffsetFetch: committed offsets of the asked partitions (all when `topics` is None).
    /// Partitions without a commit answer offset -1.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<(String, Vec<FetchedOffset>)> {
        let groups = self.groups.borrow();
        let group = groups.get(group_id);
        match topics {
            Some(topics) => topics
                .into_iter()
                .map(|(topic, partitions)| {
                    let answers = partitions
                        .into_iter()
                        .map(
                            |p| match group.and_then(|g| g.offsets.get(&(topic.clone(), p))) {
                                Some(c) => (p, c.offset, c.leader_epoch, c.metadata.clone(), 0),
                                None => (p, -1, -1, String::new(), 0),
                            },
                        )
                        .collect();
                    (topic, answers)
                })
                .collect(),
            None => {
                let mut by_topic: HashMap<String, Vec<FetchedOffset>> = HashMap::new();
                for ((topic, p), c) in group.map(|g| g.offsets.iter()).into_iter().flatten() {
                    by_topic.entry(topic.clone()).or_default().push((
                        *p,
                        c.offset,
                        c.leader_epoch,
                        c.metadata.clone(),
                        0,
                    ));
                }
                let mut out: Vec<_> = by_topic.into_iter().collect();
                out.sort_by(|a, b| a.0.cmp(&b.0));
                for (_, partitions) in &mut out {
                    partitions.sort_by_key(|p| p.0);
                }
                out
            }
        }
    }

    /// ListGroups: (group id, protocol type, state) of every group of this shard.
    pub fn list(&self) -> Vec<(String, String, String)> {
        let mut out: Vec<_> = self
            .groups
            .borrow()
            .values()
            .map(|g| {
                (
                    g.id.clone(),
                    g.protocol_type().to_string(),
                    g.state().name().to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// DescribeGroups of one group; None if this shard does not know it.
    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        self.groups.borrow().get(group_id).map(|g| g.describe())
    }

    /// DeleteGroups of one group: only an empty group; its offsets get tombstones.
    pub async fn delete_group(&self, group_id: &str) -> i16 {
        let tombstones = {
            let groups = self.groups.borrow();
            let Some(group) = groups.get(group_id) else {
                return codes::GROUP_ID_NOT_FOUND;
            };
            if group.member_count() > 0 {
                return codes::NON_EMPTY_GROUP;
            }
            tombstones(group_id, group.offsets.keys().cloned())
        };
        if !tombstones.is_empty() {
            if let Err(e) = self.write_all(tombstones).await {
                tracing::error!(group = %group_id, "deleting group offsets failed: {e}");
                return codes::COORDINATOR_NOT_AVAILABLE;
            }
        }
        let mut groups = self.groups.borrow_mut();
        if groups.get(group_id).is_some_and(|g| g.member_count() == 0) {
            if let Some(mut group) = groups.remove(group_id) {
                group.shutdown();
            }
        }
        codes::NONE
    }

    /// OffsetDelete: (top-level error, per topic the per-partition errors).
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        topics: Vec<(String, Vec<i32>)>,
    ) -> (i16, Vec<(String, Vec<(i32, i16)>)>) {
        let (answers, records) = {
            let groups = self.groups.borrow();
            let Some(group) = groups.get(group_id) else {
                return (codes::GROUP_ID_NOT_FOUND, Vec::new());
            };
            if group.member_count() > 0 && group.protocol_type() != "consumer" {
                return (codes::NON_EMPTY_GROUP, Vec::new());
            }
            let subscribed = if group.member_count() > 0 {
                group.subscribed_topics()
            } else {
                Vec::new()
            };
            let mut records = Vec::new();
            let mut answers = Vec::with_capacity(topics.len());
            for (topic, partitions) in topics {
                let in_use = subscribed.contains(&topic);
                let codes = partitions
                    .iter()
                    .map(|p| {
                        if in_use {
                            return (*p, codes::GROUP_SUBSCRIBED_TO_TOPIC);
                        }
                        if group.offsets.contains_key(&(topic.clone(), *p)) {
                            records.extend(tombstones(group_id, [(topic.clone(), *p)]));
                        }
                        (*p, codes::NONE)
                    })
                    .collect();
                answers.push((topic, codes));
            }
            (answers, records)
        };
        if !records.is_empty() {
            if let Err(e) = self.write_all(records).await {
                tracing::error!(group = %group_id, "deleting offsets failed: {e}");
                return (codes::COORDINATOR_NOT_AVAILABLE, Vec::new());
            }
        }
        (codes::NONE, answers)
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

fn tombstones(group_id: &str, keys: impl IntoIterator<Item = (String, i32)>) -> Vec<OffsetRecord> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    /// A test body on its own executor (512 KiB of I/O memory fits RLIMIT_MEMLOCK).
    fn run<G, F>(body: G)
    where
        G: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(512 << 10)
            .spawn(body)
            .expect("executor")
            .join()
            .expect("test body");
    }

    fn small_log() -> LogConfig {
        LogConfig {
            segment_bytes: 1 << 20,
            preallocate_bytes: 1 << 20,
            write_buffer_bytes: 64 << 10,
            ..LogConfig::default()
        }
    }

    fn entry(topic: &str, partition: i32, offset: i64) -> CommitEntry {
        CommitEntry {
            topic: topic.into(),
            partition,
            offset,
            leader_epoch: 2,
            metadata: Some(format!("m{offset}")),
        }
    }

    async fn open(dir: &Path, shard: usize, shards: usize) -> (Rc<GroupCoordinator>, Migration) {
        let config = GroupsConfig {
            offsets_compact_min_records: 10,
            ..GroupsConfig::default()
        };
        open_with(dir, shard, shards, config).await
    }

    async fn open_with(
        dir: &Path,
        shard: usize,
        shards: usize,
        config: GroupsConfig,
    ) -> (Rc<GroupCoordinator>, Migration) {
        let storage = ShardStorage::new(1_000, 1 << 20);
        GroupCoordinator::open(shard, shards, dir, small_log(), storage, config)
            .await
            .expect("open")
    }

    async fn simple_commit(
        c: &GroupCoordinator,
        group: &str,
        entries: Vec<CommitEntry>,
    ) -> Vec<i16> {
        c.commit(group.into(), String::new(), None, -1, entries, |_, _| true)
            .await
    }

    #[test]
    fn commits_survive_a_reopen_and_a_compaction_keeps_only_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        run(move || async move {
            let path = dir.path().to_path_buf();
            let (c, _) = open(&path, 0, 1).await;
            for n in 0..30 {
                let codes =
                    simple_commit(&c, "g", vec![entry("t", 0, n), entry("t", 1, 100 + n)]).await;
                assert_eq!(codes, vec![0, 0]);
            }
            assert!(c.needs_compaction());
            c.compact().await;
            assert_eq!(c.generation.get(), 1);
            assert_eq!(
                c.log_records.get(),
                2,
                "only the live offsets were rewritten"
            );
            assert!(
                !path.join(OFFSETS_DIR).join("0").join("0").exists(),
                "old generation deleted"
            );
            simple_commit(&c, "g", vec![entry("t", 0, 77)]).await;
            c.close().await;

            let (c, migration) = open(&path, 0, 1).await;
            assert!(migration.moving.is_empty());
            let fetched = c.fetch_offsets("g", None);
            assert_eq!(
                fetched,
                vec![(
                    "t".to_string(),
                    vec![
                        (0, 77, 2, "m77".to_string(), 0),
                        (1, 129, 2, "m129".to_string(), 0)
                    ]
                )]
            );
            c.close().await;
        });
    }

    #[test]
    fn offsets_of_groups_another_shard_now_coordinates_are_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        run(move || async move {
            let path = dir.path().to_path_buf();
            // With one shard, shard 0 coordinates every group.
            let groups: Vec<String> = (0..20).map(|i| format!("group-{i}")).collect();
            let (c, _) = open(&path, 0, 1).await;
            for (i, g) in groups.iter().enumerate() {
                simple_commit(&c, g, vec![entry("t", 0, i as i64)]).await;
            }
            c.close().await;
            // With two shards, shard 0 keeps its groups and hands the others over.
            let (c, migration) = open(&path, 0, 2).await;
            let moving: Vec<&String> = groups
                .iter()
                .filter(|g| coordinator_shard(g, 2) == 1)
                .collect();
            assert!(!moving.is_empty());
            assert_eq!(migration.moving.len(), moving.len());
            assert_eq!(migration.leaving.len(), moving.len());
            for g in &groups {
                let kept = c.fetch_offsets(g, None);
                assert_eq!(kept.is_empty(), coordinator_shard(g, 2) == 1, "{g}");
            }
            c.close().await;
        });
    }

    #[test]
    fn refused_commits_get_kafkas_errors_and_reach_no_log() {
        let dir = tempfile::tempdir().unwrap();
        run(move || async move {
            let (c, _) = open(dir.path(), 0, 1).await;
            let unknown = c
                .commit(
                    "g".into(),
                    "m".into(),
                    None,
                    3,
                    vec![entry("t", 0, 1)],
                    |_, _| true,
                )
                .await;
            assert_eq!(unknown, vec![codes::ILLEGAL_GENERATION]);
            let unknown_topic = c
                .commit(
                    "g".into(),
                    String::new(),
                    None,
                    -1,
                    vec![entry("t", 0, 1)],
                    |_, _| false,
                )
                .await;
            assert_eq!(unknown_topic, vec![codes::UNKNOWN_TOPIC_OR_PARTITION]);
            let mut big = entry("t", 0, 1);
            big.metadata = Some("x".repeat(5000));
            assert_eq!(
                simple_commit(&c, "g", vec![big]).await,
                vec![codes::OFFSET_METADATA_TOO_LARGE]
            );
            assert_eq!(c.log_records.get(), 0, "nothing refused reached the log");
            c.close().await;
        });
    }

    #[test]
    fn offsets_of_empty_groups_expire_with_a_tombstone_that_outlives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        run(move || async move {
            let path = dir.path().to_path_buf();
            let config = GroupsConfig {
                offsets_retention_ms: 60_000,
                ..GroupsConfig::default()
            };
            let (c, _) = open_with(&path, 0, 1, config.clone()).await;
            simple_commit(&c, "old", vec![entry("t", 0, 5)]).await;
            c.expire_offsets(now_ms() + 30_000).await;
            assert_eq!(c.fetch_offsets("old", None).len(), 1, "not yet expired");
            c.expire_offsets(now_ms() + 61_000).await;
            assert!(c.fetch_offsets("old", None).is_empty());
            assert!(
                c.list().is_empty(),
                "a group with nothing left is forgotten"
            );
            c.close().await;
            let (c, _) = open_with(&path, 0, 1, config).await;
            assert!(
                c.fetch_offsets("old", None).is_empty(),
                "the expiry is durable"
            );
            c.close().await;
        });
    }

    #[test]
    fn a_new_group_beyond_max_groups_per_shard_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        run(move || async move {
            let config = GroupsConfig {
                max_groups_per_shard: 1,
                ..GroupsConfig::default()
            };
            let (c, _) = open_with(dir.path(), 0, 1, config).await;
            assert_eq!(
                simple_commit(&c, "first", vec![entry("t", 0, 1)]).await,
                vec![0]
            );
            assert_eq!(
                simple_commit(&c, "second", vec![entry("t", 0, 1)]).await,
                vec![codes::COORDINATOR_NOT_AVAILABLE]
            );
            let args = JoinArgs {
                session_timeout_ms: 10_000,
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), Bytes::new())],
                ..JoinArgs::default()
            };
            let joined = c.join("third".into(), args).await;
            assert_eq!(joined.error, codes::COORDINATOR_NOT_AVAILABLE);
            c.close().await;
        });
    }
}
