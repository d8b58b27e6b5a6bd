//! The shard's side of the group coordinator: it creates the `__consumer_offsets` topic,
//! appends the coordinator's records through the replicated produce path, and loads and
//! unloads offsets partitions as this node comes to lead them or stops leading them.
//!
//! The coordinator (`groups::GroupCoordinator`) holds the groups and the record format and
//! knows nothing of the shard: it writes through the [`OffsetsAppender`] implemented here,
//! and is told by [`Shard::adopt_offsets_partitions`] (run at every catalog adoption) which
//! partitions to load and unload. Invariant: a coordinator serves a partition only while
//! this node leads it and only after replaying it; a commit is answered only once the
//! partition's high watermark covers it (acks=all).

use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;

use super::ops::NewTopic;
use super::Shard;
use crate::catalog::{Catalog, OFFSETS_TOPIC};
use crate::codes;
use crate::groups::{legacy, GroupCoordinator, OffsetsAppender};

/// How long a commit waits for the offsets partition's ISR (Kafka:
/// offsets.commit.timeout.ms, default 5 s); then it answers COORDINATOR_NOT_AVAILABLE.
const OFFSETS_COMMIT_TIMEOUT_MS: i32 = 5_000;

/// Segment size of the offsets topic (Kafka: offsets.topic.segment.bytes): the cleaner
/// compacts closed segments only, so this bounds what stays uncompacted.
const OFFSETS_SEGMENT_BYTES: u64 = 100 << 20;

/// How long FindCoordinator waits for this node's shards to adopt the offsets topic.
const CATALOG_WAIT: Duration = Duration::from_secs(5);

/// Pause before retrying a failed load of an offsets partition.
const LOAD_RETRY: Duration = Duration::from_millis(500);

/// The coordinator's appends, through this shard's produce path with acks=all.
struct ShardAppender {
    shard: Weak<Shard>,
}

/// Kafka's translation of a produce error into an OffsetCommit error
/// (GroupMetadataManager.storeOffsets): clients retry the retriable ones at the
/// coordinator they find next.
fn commit_error(produce_error: i16) -> i16 {
    match produce_error {
        codes::UNKNOWN_TOPIC_OR_PARTITION
        | codes::NOT_ENOUGH_REPLICAS
        | codes::NOT_ENOUGH_REPLICAS_AFTER_APPEND
        | codes::REQUEST_TIMED_OUT => codes::COORDINATOR_NOT_AVAILABLE,
        codes::NOT_LEADER_OR_FOLLOWER | codes::KAFKA_STORAGE_ERROR => codes::NOT_COORDINATOR,
        codes::MESSAGE_TOO_LARGE | codes::INVALID_FETCH_SIZE => codes::INVALID_COMMIT_OFFSET_SIZE,
        other => other,
    }
}

impl OffsetsAppender for ShardAppender {
    fn append(
        &self,
        partition: i32,
        batch: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<i64, i16>>>> {
        let Some(shard) = self.shard.upgrade() else {
            return Box::pin(async { Err(codes::COORDINATOR_NOT_AVAILABLE) });
        };
        // Only the leader appends, and only on the partition's owner (the coordinator runs
        // there): checked synchronously, with the append line taken in the same step.
        match shard.route(OFFSETS_TOPIC, partition) {
            Ok(owner) if owner == shard.id => {}
            Ok(_) | Err(_) => return Box::pin(async { Err(codes::NOT_COORDINATOR) }),
        }
        let produced = shard.produce_local(
            vec![(OFFSETS_TOPIC.to_string(), partition, Some(batch))],
            -1,
            OFFSETS_COMMIT_TIMEOUT_MS,
        );
        Box::pin(async move {
            let result = produced.await.into_iter().next();
            match result {
                Some(r) if r.error == codes::NONE => Ok(r.base_offset),
                Some(r) => Err(commit_error(r.error)),
                None => Err(codes::COORDINATOR_NOT_AVAILABLE),
            }
        })
    }
}

impl Shard {
    /// Start this shard's group coordinator (serving nothing until it loads a partition);
    /// shard 0 also reads the offsets logs of an earlier version to import them. Called
    /// once per shard at start, before the shard accepts connections.
    pub async fn start_groups(self: &Rc<Self>) -> Result<(), String> {
        if self.id == 0 {
            let log_config = crate::log::LogConfig {
                tail_cache_bytes: 1 << 20,
                preallocate_bytes: 0,
                ..self.config.log_config()
            };
            let found = legacy::read(&self.config.data_dir, &log_config).await?;
            *self.legacy_offsets.borrow_mut() = found;
            self.legacy_read.set(true);
            self.legacy_event.notify();
        }
        let appender = Rc::new(ShardAppender {
            shard: Rc::downgrade(self),
        });
        let coordinator = GroupCoordinator::new(self.id, self.config.groups.clone(), appender);
        coordinator.spawn_timers();
        self.groups
            .set(coordinator)
            .map_err(|_| "group coordinator started twice".to_string())?;
        self.adopt_offsets_partitions(&self.catalog());
        Ok(())
    }

    /// Create `__consumer_offsets` if it does not exist yet (at the first group request, as
    /// Kafka does), and return once every shard of this node has adopted a catalog holding
    /// it: a FindCoordinator answer naming this node must not reach a client before the
    /// shard that will coordinate knows it does (shards adopt a catalog one after the other,
    /// and this shard replaces its catalog before it finishes adopting it). Its replication
    /// factor is `offsets_topic_replication_factor` capped at the live brokers, so a 1-node
    /// cluster works with the default of 3 (Kafka refuses instead, and groups never find a
    /// coordinator there). Err: the quorum's refusal, or the topic did not show up here.
    pub async fn ensure_offsets_topic(self: &Rc<Self>) -> Result<(), (i16, String)> {
        let has_topic = |c: &Catalog| c.topics.contains_key(OFFSETS_TOPIC);
        if !has_topic(&self.catalog()) {
            self.create_offsets_topic().await?;
            // Created by another broker or shard: wait until this node applied it too.
            if !self.wait_catalog(has_topic, CATALOG_WAIT).await {
                return Err((
                    codes::COORDINATOR_NOT_AVAILABLE,
                    "the offsets topic is not in this broker's metadata yet".into(),
                ));
            }
        }
        let version = self.catalog().version;
        self.wait_node_adopted(version, CATALOG_WAIT).await;
        Ok(())
    }

    /// Propose the creation of the offsets topic; Ok also if it exists already.
    async fn create_offsets_topic(self: &Rc<Self>) -> Result<(), (i16, String)> {
        let live = self.catalog().live_brokers().count() as i32;
        let groups = &self.config.groups;
        let replication_factor = groups.offsets_topic_replication_factor.min(live).max(1);
        let segment_bytes = OFFSETS_SEGMENT_BYTES.min(self.config.segment_bytes);
        let topic = NewTopic {
            name: OFFSETS_TOPIC.to_string(),
            partitions: groups.offsets_topic_num_partitions,
            replication_factor,
            assignments: Vec::new(),
            configs: vec![
                ("cleanup.policy".into(), "compact".into()),
                ("segment.bytes".into(), segment_bytes.to_string()),
            ],
        };
        let outcome = self.create_topics(vec![topic], false).await.remove(0);
        match outcome {
            (codes::NONE, _) => {
                tracing::info!(
                    partitions = groups.offsets_topic_num_partitions,
                    replication_factor,
                    "created the offsets topic"
                );
                Ok(())
            }
            // Another broker or shard created it first.
            (codes::TOPIC_ALREADY_EXISTS, _) => Ok(()),
            (code, message) => Err((code, message.unwrap_or_default())),
        }
    }

    /// After a catalog adoption: load the offsets partitions this shard owns and this node
    /// now leads (or leads at a new epoch), unload those it no longer leads.
    pub(crate) fn adopt_offsets_partitions(self: &Rc<Self>, catalog: &Catalog) {
        let Some(coordinator) = self.groups.get().cloned() else {
            return; // not started yet: `start_groups` adopts the catalog it finds
        };
        let me = self.node_id();
        let mut leading = std::collections::HashSet::new();
        if let Some(topic) = catalog.topics.get(OFFSETS_TOPIC) {
            let count = topic.partition_count();
            coordinator.set_partition_count(count);
            for (p, placement) in topic.placement.iter().enumerate() {
                let partition = p as i32;
                let owned = topic
                    .owners
                    .get(p)
                    .is_some_and(|o| *o as usize % self.nr_shards == self.id);
                if !owned || placement.leader != me || self.log(OFFSETS_TOPIC, partition).is_none()
                {
                    continue;
                }
                leading.insert(partition);
                if coordinator.begin_load(partition, placement.leader_epoch) {
                    self.load_offsets_partition(partition, placement.leader_epoch, count);
                }
            }
        }
        for partition in coordinator.held_partitions() {
            if !leading.contains(&partition) {
                coordinator.unload(partition);
            }
        }
    }

    /// In the background: replay an offsets partition (and import its legacy offsets, held
    /// by shard 0), retrying until it loads or this node stops leading it at `epoch`.
    fn load_offsets_partition(self: &Rc<Self>, partition: i32, epoch: i32, count: usize) {
        let shard = self.clone();
        glommio::spawn_local(async move {
            let Some(coordinator) = shard.groups.get().cloned() else {
                return;
            };
            loop {
                let still = coordinator.partition_state(partition)
                    == Some(crate::groups::coordinator::Serving::Loading(epoch));
                let Some(log) = shard.log(OFFSETS_TOPIC, partition).filter(|_| still) else {
                    return;
                };
                let imports = shard
                    .call(0, move |s| async move {
                        // Other shards start (and may load a partition) while shard 0
                        // still reads the legacy logs.
                        while !s.legacy_read.get() {
                            s.legacy_event.listen().await;
                        }
                        s.legacy_offsets
                            .borrow()
                            .as_ref()
                            .map(|l| l.take(partition, count))
                            .unwrap_or_default()
                    })
                    .await
                    .unwrap_or_default();
                let had_imports = !imports.is_empty();
                match coordinator.load(partition, epoch, log, imports).await {
                    Ok(_) => {
                        if had_imports {
                            let _ = shard
                                .call(
                                    0,
                                    move |s| async move { s.legacy_imported(partition, count) },
                                )
                                .await;
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(partition, epoch, "loading offsets partition: {e}");
                        glommio::timer::sleep(LOAD_RETRY).await;
                    }
                }
            }
        })
        .detach();
    }

    /// Shard 0: an offsets partition imported its legacy offsets; once all have, the old
    /// directory is renamed so no later start imports it again.
    fn legacy_imported(&self, partition: i32, count: usize) {
        let mut slot = self.legacy_offsets.borrow_mut();
        let Some(legacy) = slot.as_mut() else {
            return;
        };
        if legacy.mark_done(partition, count) {
            match legacy.retire() {
                Ok(()) => tracing::info!("imported every committed offset of the earlier version"),
                Err(e) => tracing::error!("retiring the imported offsets directory: {e}"),
            }
            *slot = None;
        }
    }

    /// Shutdown, before the drain of in-flight requests: waiting joins and syncs answer now.
    pub fn quiesce_groups(&self) {
        if let Some(coordinator) = self.groups.get() {
            coordinator.quiesce();
        }
    }

    /// Stop this shard's group coordinator: fail waiting requests, stop its timers.
    pub async fn stop_groups(&self) {
        if let Some(coordinator) = self.groups.get() {
            coordinator.close().await;
        }
    }
}
