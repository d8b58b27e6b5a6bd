//! The group coordinator of one shard: the groups of the `__consumer_offsets` partitions
//! this shard owns and this node leads, and their committed offsets.
//!
//! This file is the request-facing half: JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit and OffsetFetch, the admin calls (List/Describe/Delete groups,
//! OffsetDelete), and the timer tick (every `TICK_MS`) that expires sessions and ends join
//! phases. The durable half (loading a partition, appending through the
//! [`OffsetsAppender`], unloading, expiry) is `offsets_store`; this file writes only
//! through `write_all`.
//!
//! A partition is served only once loaded: until then its groups' requests get
//! COORDINATOR_LOAD_IN_PROGRESS (see [`GroupCoordinator::serving`]); a partition this node
//! does not lead answers NOT_COORDINATOR. Group membership itself is not persisted: at a new
//! coordinator (failover or restart), members are unknown, get UNKNOWN_MEMBER_ID and rejoin
//! (a rebalance), then resume from their committed offsets.
//!
//! Runs on its shard only (`Rc`, `RefCell`, `Cell`); a `RefCell` borrow is never held
//! across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::group::{Group, GroupDescription, JoinArgs, JoinOutcome, Reply, SyncOutcome};
use super::offsets_log::{OffsetRecord, OffsetValue};
use super::{partition_for, GroupsConfig};
use crate::clock::now_ms;
use crate::codes;

pub(crate) use offsets_store::read_log;
use offsets_store::tombstones;

mod offsets_store;

/// Period of the timer that expires sessions and ends join phases: the precision of session
/// and rebalance timeouts.
const TICK_MS: u64 = 100;

/// How the coordinator writes: appends one record batch to an offsets partition with
/// acks=all semantics. Implemented by the shard (replicated produce path), so this layer
/// needs nothing of the shard, the mesh or replication.
pub trait OffsetsAppender {
    /// Append `batch` to offsets partition `partition`; resolves once the partition's high
    /// watermark covers it, with its base offset, or with the Kafka error code to answer
    /// (NOT_COORDINATOR once deposed, COORDINATOR_NOT_AVAILABLE on a timeout).
    fn append(
        &self,
        partition: i32,
        batch: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<i64, i16>>>>;
}

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

/// Where this coordinator stands with one offsets partition (by the leader epoch it took
/// it at).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serving {
    /// Replaying the partition: its groups get COORDINATOR_LOAD_IN_PROGRESS.
    Loading(i32),
    /// Loaded: its groups are served.
    Loaded(i32),
}

/// Group coordinator of one shard.
pub struct GroupCoordinator {
    shard_id: usize,
    config: GroupsConfig,
    groups: RefCell<HashMap<String, Group>>,
    /// Offsets partitions this shard leads, loading or loaded.
    partitions: RefCell<HashMap<i32, Serving>>,
    /// Partition count of `__consumer_offsets` (0 until the topic exists).
    partition_count: Cell<usize>,
    appender: Rc<dyn OffsetsAppender>,
    member_seq: Cell<u64>,
    boot_id: u64,
    stopped: Cell<bool>,
    /// Set at shutdown: JoinGroup and SyncGroup no longer wait (they would hold the drain).
    closing: Cell<bool>,
}

impl GroupCoordinator {
    /// A coordinator serving no partition yet; the shard loads partitions as it leads them.
    pub fn new(
        shard_id: usize,
        config: GroupsConfig,
        appender: Rc<dyn OffsetsAppender>,
    ) -> Rc<GroupCoordinator> {
        let boot_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rc::new(GroupCoordinator {
            shard_id,
            config,
            groups: RefCell::new(HashMap::new()),
            partitions: RefCell::new(HashMap::new()),
            partition_count: Cell::new(0),
            appender,
            member_seq: Cell::new(0),
            boot_id,
            stopped: Cell::new(false),
            closing: Cell::new(false),
        })
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

    /// The partition count of `__consumer_offsets`, as the catalog says.
    pub fn set_partition_count(&self, count: usize) {
        self.partition_count.set(count);
    }

    /// The offsets partition of a group, if the offsets topic exists.
    pub fn partition_of(&self, group_id: &str) -> Option<i32> {
        let count = self.partition_count.get();
        (count > 0).then(|| partition_for(group_id, count))
    }

    /// Whether this coordinator answers for a group now: Ok(its offsets partition), else
    /// as [`Self::serving_partition`] (NOT_COORDINATOR also before the topic is known here).
    pub fn serving(&self, group_id: &str) -> Result<i32, i16> {
        let partition = self.partition_of(group_id).ok_or(codes::NOT_COORDINATOR)?;
        self.serving_partition(partition).map(|()| partition)
    }

    /// Whether this coordinator serves offsets partition `partition` now: Ok once loaded,
    /// COORDINATOR_LOAD_IN_PROGRESS while loading, NOT_COORDINATOR when it does not hold it.
    /// "Not held" is only this coordinator's view: the shard's catalog says whether another
    /// broker leads the partition or this shard has not adopted it yet (see
    /// `protocol::groups::on_coordinator`).
    pub fn serving_partition(&self, partition: i32) -> Result<(), i16> {
        match self.partitions.borrow().get(&partition) {
            Some(Serving::Loaded(_)) => Ok(()),
            Some(Serving::Loading(_)) => Err(codes::COORDINATOR_LOAD_IN_PROGRESS),
            None => Err(codes::NOT_COORDINATOR),
        }
    }

    /// The state of one offsets partition here (None: not led by this shard).
    pub fn partition_state(&self, partition: i32) -> Option<Serving> {
        self.partitions.borrow().get(&partition).copied()
    }

    /// Offsets partitions this coordinator holds, loading or loaded.
    pub fn held_partitions(&self) -> Vec<i32> {
        self.partitions.borrow().keys().copied().collect()
    }

    /// First step of shutdown: answer every waiting JoinGroup/SyncGroup (clients retry at the
    /// next broker) and wait no more, so the drain of in-flight requests is not held up.
    pub fn quiesce(&self) {
        self.closing.set(true);
        for group in self.groups.borrow_mut().values_mut() {
            group.shutdown();
        }
    }

    /// Stop the timers and fail waiting requests. The offsets partitions' logs belong to
    /// the shard, which closes them with its other logs.
    pub async fn close(&self) {
        self.stopped.set(true);
        for group in self.groups.borrow_mut().values_mut() {
            group.shutdown();
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
        let Some(partition) = self.partition_of(&group_id) else {
            return vec![codes::NOT_COORDINATOR; entries.len()];
        };
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
        if let Err(code) = self.write_all(partition, records).await {
            tracing::warn!(group = %group_id, code, "offset commit not replicated");
            for i in written {
                results[i] = code;
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
            let Some(partition) = self.partition_of(group_id) else {
                return codes::NOT_COORDINATOR;
            };
            if let Err(code) = self.write_all(partition, tombstones).await {
                tracing::warn!(group = %group_id, code, "deleting group offsets failed");
                return code;
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
            let Some(partition) = self.partition_of(group_id) else {
                return (codes::NOT_COORDINATOR, Vec::new());
            };
            if let Err(code) = self.write_all(partition, records).await {
                tracing::warn!(group = %group_id, code, "deleting offsets failed");
                return (code, Vec::new());
            }
        }
        (codes::NONE, answers)
    }
}

#[cfg(test)]
mod tests;
