//! The leader's side of replication on the shard that owns a partition: leader epochs on
//! requests, follower fetches (divergence check, progress, reads to the log end), the high
//! watermark, acks=all waiting for the ISR, and OffsetForLeaderEpoch.
//!
//! Invariants: only the partition's current leader answers followers and OffsetForLeaderEpoch;
//! a request naming an older leader epoch gets FENCED_LEADER_EPOCH, a newer one
//! UNKNOWN_LEADER_EPOCH (this broker has not heard of it yet); acks=all answers only once the
//! high watermark covers the batch (see `replicas` for how it moves), and stops waiting with
//! a retriable error as soon as this broker no longer leads the partition.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::ops::{log_error_code, Appended, FetchPartition, FetchResult, ProduceResult};
use super::Shard;
use crate::catalog::{Catalog, Placement, Topic};
use crate::clock::now_ms;
use crate::codes;
use crate::log::PartitionLog;

/// Longest an acks=all wait sleeps between checks of its partition's leadership and ISR
/// (catalog changes also wake it).
const REPLICATION_CHECK: Duration = Duration::from_millis(100);

/// The answer to an acks=all produce refused before appending.
pub(crate) fn not_enough_replicas(partition: i32) -> ProduceResult {
    ProduceResult {
        partition,
        error: codes::NOT_ENOUGH_REPLICAS,
        message: Some("fewer in-sync replicas than min.insync.replicas".into()),
        base_offset: -1,
        log_append_time_ms: -1,
        log_start_offset: -1,
    }
}

impl Shard {
    /// `min.insync.replicas` of a topic: its own config, else the broker default.
    pub fn min_insync(&self, topic: &Topic) -> usize {
        topic
            .configs
            .get("min.insync.replicas")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(self.config.min_insync_replicas)
            .max(1)
    }

    /// Whether the partition's ISR is at least its `min.insync.replicas` (unknown
    /// partitions pass: the append refuses them itself).
    pub(crate) fn enough_in_sync(&self, topic: &str, partition: i32) -> bool {
        let catalog = self.catalog();
        let Some(t) = catalog.topics.get(topic) else {
            return true;
        };
        t.placement
            .get(partition as usize)
            .is_none_or(|p| p.isr.len() >= self.min_insync(t))
    }

    /// KIP-320: a request's leader epoch against the partition's (-1 skips the check).
    pub(crate) fn check_leader_epoch(
        &self,
        topic: &str,
        partition: i32,
        requested: i32,
    ) -> Result<(), i16> {
        if requested < 0 {
            return Ok(());
        }
        let catalog = self.catalog();
        let Some(p) = catalog.placement(topic, partition) else {
            return Err(codes::UNKNOWN_TOPIC_OR_PARTITION);
        };
        match requested.cmp(&p.leader_epoch) {
            std::cmp::Ordering::Less => Err(codes::FENCED_LEADER_EPOCH),
            std::cmp::Ordering::Greater => Err(codes::UNKNOWN_LEADER_EPOCH),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// The placement of a partition this broker leads with replicas elsewhere.
    fn led_replicated(
        catalog: &Catalog,
        me: i32,
        topic: &str,
        partition: i32,
    ) -> Option<Placement> {
        let p = catalog.placement(topic, partition)?;
        (p.leader == me && p.replicas.len() > 1).then(|| p.clone())
    }

    /// Move the high watermark of a partition this broker leads as far as the ISR's durable
    /// ends allow (its own included).
    pub(crate) fn advance_high_watermark(&self, topic: &str, partition: i32, log: &PartitionLog) {
        let catalog = self.catalog();
        let Some(placement) = Self::led_replicated(&catalog, self.node_id(), topic, partition)
        else {
            return;
        };
        let Some(t) = catalog.topics.get(topic) else {
            return;
        };
        let current = log.high_watermark();
        let hw = self.leaders.high_watermark(
            (topic, partition),
            &placement,
            log.durable_offset(),
            current,
            self.min_insync(t),
            now_ms(),
        );
        if hw > current {
            log.set_high_watermark(Some(hw));
        }
    }

    /// acks=all, after this leader's own sync of the batch: wait until the high watermark
    /// covers it. Returns the error code to answer (NONE once replicated). An unreplicated
    /// partition needs nothing more; a partition this broker no longer leads in the epoch
    /// it appended in answers NOT_LEADER_OR_FOLLOWER at once (the batch may survive or not:
    /// the producer retries at the new leader, which deduplicates an idempotent retry).
    pub(crate) async fn wait_replicated(
        &self,
        appended: &Appended,
        partition: i32,
        deadline: Instant,
    ) -> i16 {
        let (topic, log, last) = (appended.topic.as_str(), &appended.log, appended.last);
        let me = self.node_id();
        loop {
            let catalog = self.catalog();
            let Some(t) = catalog.topics.get(topic) else {
                return codes::UNKNOWN_TOPIC_OR_PARTITION;
            };
            let Some(now) = t.placement.get(partition as usize) else {
                return codes::UNKNOWN_TOPIC_OR_PARTITION;
            };
            if now.replicas.len() < 2 {
                return codes::NONE;
            }
            if now.leader != me || now.leader_epoch != appended.leader_epoch {
                return codes::NOT_LEADER_OR_FOLLOWER;
            }
            if now.isr.len() < self.min_insync(t) {
                return codes::NOT_ENOUGH_REPLICAS_AFTER_APPEND;
            }
            self.advance_high_watermark(topic, partition, log);
            if log.high_watermark() > last {
                return codes::NONE;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return codes::REQUEST_TIMED_OUT;
            }
            let until = Instant::now() + left.min(REPLICATION_CHECK);
            let changed = self.catalog_event.listen();
            futures_util::future::select(
                std::pin::pin!(log.wait_for_data_upto(last, until, true)),
                std::pin::pin!(changed),
            )
            .await;
        }
    }

    /// Serve a follower's fetch of a partition this broker leads: check that its log still
    /// continues this leader's (else tell it where they diverge), record its durable end,
    /// move the high watermark, and read from the log end it asked for.
    pub(crate) async fn follower_read(
        self: &Rc<Self>,
        log: &Rc<PartitionLog>,
        p: &FetchPartition,
    ) -> FetchResult {
        let catalog = self.catalog();
        let me = self.node_id();
        let Some(placement) = catalog.placement(&p.topic, p.partition).cloned() else {
            return FetchResult::error(codes::UNKNOWN_TOPIC_OR_PARTITION);
        };
        if placement.leader != me || !placement.replicas.contains(&p.replica) {
            return FetchResult::error(codes::NOT_LEADER_OR_FOLLOWER);
        }
        let mut result = FetchResult {
            error: codes::NONE,
            high_watermark: log.high_watermark(),
            log_start_offset: log.log_start_offset(),
            chunks: Vec::new(),
            bytes: 0,
            diverging: None,
        };
        if p.last_fetched_epoch >= 0 {
            let (epoch, end) = log.end_offset_for_epoch(p.last_fetched_epoch);
            if epoch < 0 {
                // No epoch of this leader's is at or below the follower's last: nothing it
                // holds can be checked against this log, so it starts again at its start.
                result.diverging = Some((-1, log.log_start_offset()));
                return result;
            }
            if epoch < p.last_fetched_epoch || end < p.offset {
                result.diverging = Some((epoch, end));
                return result;
            }
        }
        let leader_end = log.log_end_offset();
        if p.offset <= leader_end && p.offset >= log.log_start_offset() {
            self.leaders.on_fetch(
                (&p.topic, p.partition),
                placement.leader_epoch,
                p.replica,
                p.offset,
                leader_end,
                now_ms(),
            );
            if log.durable_offset() < p.offset {
                // The follower holds more on disk than this leader has synced: sync now, so
                // acks=1 data becomes visible to consumers without waiting for the
                // background flush.
                self.sync_then_advance(&p.topic, p.partition, log, p.offset - 1);
            }
            self.advance_high_watermark(&p.topic, p.partition, log);
            result.high_watermark = log.high_watermark();
        }
        match log.read(p.offset, p.max_bytes).await {
            Ok(read) => {
                result.log_start_offset = read.log_start_offset;
                result.chunks = read.chunks;
                result.bytes = read.bytes;
            }
            Err(e) => result.error = log_error_code(&e),
        }
        result
    }

    /// In the background: sync the log up to `offset`, then move the high watermark.
    fn sync_then_advance(
        self: &Rc<Self>,
        topic: &str,
        partition: i32,
        log: &Rc<PartitionLog>,
        offset: i64,
    ) {
        if !self.leaders.start_sync(topic, partition) {
            return;
        }
        let shard = self.clone();
        let (topic, log) = (topic.to_string(), log.clone());
        glommio::spawn_local(async move {
            if let Err(e) = shard.storage.wait_durable(&log, offset).await {
                tracing::warn!(topic, partition, "leader sync for followers: {e}");
            }
            shard.leaders.sync_done(&topic, partition);
            shard.advance_high_watermark(&topic, partition, &log);
        })
        .detach();
    }

    /// OffsetForLeaderEpoch on the partition's leader: (error, epoch, end offset) for the
    /// largest epoch at or below `epoch` (KIP-101/279).
    pub fn offset_for_leader_epoch_local(
        &self,
        topic: &str,
        partition: i32,
        current_leader_epoch: i32,
        epoch: i32,
    ) -> (i16, i32, i64) {
        let Some(log) = self.log(topic, partition) else {
            return (codes::UNKNOWN_TOPIC_OR_PARTITION, -1, -1);
        };
        if self.leader_of(topic, partition) != Some(self.node_id()) {
            return (codes::NOT_LEADER_OR_FOLLOWER, -1, -1);
        }
        if let Err(code) = self.check_leader_epoch(topic, partition, current_leader_epoch) {
            return (code, -1, -1);
        }
        let (e, end) = log.end_offset_for_epoch(epoch);
        (codes::NONE, e, end)
    }

    /// Take up the role `placement` gives one log of this node: as leader, stamp its epoch
    /// on what it appends; replicated, read only to the high watermark. Called for a log
    /// before any request can reach it (a batch appended unstamped would be answered as
    /// deposed, and its retry stored twice).
    pub(crate) fn adopt_role(&self, log: &PartitionLog, placement: &Placement) {
        if placement.leader == self.node_id() {
            log.set_leader_epoch(placement.leader_epoch);
        }
        if placement.replicas.len() > 1 && !log.has_high_watermark() {
            // Unknown until the ISR reports (a follower learns it from its leader): start
            // from what is surely committed.
            log.set_high_watermark(Some(log.log_start_offset()));
        }
    }

    /// Take up the roles a newly adopted catalog gives this shard's replicas: a leader
    /// stamps its epoch on what it appends; a replicated partition's reads stop at its high
    /// watermark; leaders forget followers of partitions they no longer lead.
    pub(crate) fn adopt_roles(&self, catalog: &Catalog) {
        let me = self.node_id();
        for (name, topic) in &catalog.topics {
            for (partition, placement) in topic.placement.iter().enumerate() {
                let partition = partition as i32;
                if let Some(log) = self.log(name, partition) {
                    self.adopt_role(&log, placement);
                }
            }
        }
        self.leaders.retain(|topic, partition, epoch| {
            catalog
                .placement(topic, partition)
                .is_some_and(|p| p.leader == me && p.leader_epoch == epoch)
        });
    }
}
