//! The group coordinator of one shard: the groups whose id hashes to this shard, their
//! committed offsets, and the shard's internal offsets log.
//!
//! This file is the request-facing half: JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit and OffsetFetch, the admin calls (List/Describe/Delete groups,
//! OffsetDelete), and the timer tick (every `TICK_MS`) that expires sessions and ends join
//! phases. The durable half (the offsets log: writes, replay, compaction, hand-over after a
//! change of `cores`, expiry) is `offsets_store`; this file never touches that log directly,
//! only through `write_all`.
//!
//! Group membership itself is not persisted: after a restart, members are unknown, get
//! UNKNOWN_MEMBER_ID and rejoin (a rebalance), then resume from their committed offsets.
//!
//! Runs on its shard only (`Rc`, `RefCell`, `Cell`); a `RefCell` borrow is never held
//! across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::group::{Group, GroupDescription, JoinArgs, JoinOutcome, Reply, SyncOutcome};
use super::offsets_log::{OffsetRecord, OffsetValue};
use super::GroupsConfig;
use crate::clock::now_ms;
use crate::codes;
use crate::log::{LogConfig, PartitionLog, ShardStorage};

use offsets_store::tombstones;
pub use offsets_store::{Migration, OFFSETS_DIR};

mod offsets_store;

/// Period of the timer that expires sessions and ends join phases: the precision of session
/// and rebalance timeouts.
const TICK_MS: u64 = 100;

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

impl GroupCoordinator {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::coordinator_shard;
    use std::future::Future;
    use std::path::Path;

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
