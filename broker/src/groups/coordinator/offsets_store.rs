//! The durable half of a shard's group coordinator: loading an offsets partition this node
//! has come to lead, appending commits and tombstones to it, unloading it, expiring offsets.
//! Never answers a request itself (the coordinator in `coordinator.rs` does) and never
//! applies a write before the [`OffsetsAppender`](super::OffsetsAppender) says the high watermark covers it.
//!
//! Load: the shard hands the partition's log (this node leads it, so its log is the
//! partition's) and this replays it to its end, applying each record in log order (a later
//! record overrides an earlier one of the same key; a tombstone deletes it). Offsets of the
//! legacy per-shard logs waiting for import are written then, before the partition is
//! served, for keys the partition does not hold yet. Unload drops every group of the
//! partition: their members rejoin at the new coordinator.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{GroupCoordinator, Serving};
use crate::clock::now_ms;
use crate::codes;
use crate::groups::group::{CommittedOffset, Group};
use crate::groups::offsets_log::{self, OffsetRecord};
use crate::groups::partition_for;
use crate::log::PartitionLog;

/// Bytes read per step while replaying an offsets partition.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// Bytes of records per batch appended to an offsets partition (a large commit, an import,
/// an expiry are split at this size). A record is at most ~34 KiB (group id, topic name and
/// metadata are bounded), so a batch stays well below the topic's `max.message.bytes`.
const WRITE_BATCH_BYTES: usize = 256 << 10;

/// Every record of a log from its start to its end, in order, with its offset.
pub(crate) async fn read_log(log: &PartitionLog) -> Result<Vec<(i64, OffsetRecord)>, String> {
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

/// Records grouped into batches of at most `WRITE_BATCH_BYTES`.
fn chunks_of(records: Vec<OffsetRecord>) -> Vec<Vec<OffsetRecord>> {
    let mut out: Vec<Vec<OffsetRecord>> = Vec::new();
    let mut bytes = 0;
    for record in records {
        let size = 64
            + record.group.len()
            + record.topic.len()
            + record.value.as_ref().map_or(0, |v| v.metadata.len());
        if out.is_empty() || bytes + size > WRITE_BATCH_BYTES {
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
    /// The shard leads offsets partition `partition` at `epoch`: true if it must load it
    /// now (it was not held, or held at another epoch: then its groups are dropped first).
    pub fn begin_load(&self, partition: i32, epoch: i32) -> bool {
        let state = self.partition_state(partition);
        if matches!(state, Some(Serving::Loading(e) | Serving::Loaded(e)) if e == epoch) {
            return false;
        }
        if state.is_some() {
            self.unload(partition);
        }
        self.partitions
            .borrow_mut()
            .insert(partition, Serving::Loading(epoch));
        true
    }

    /// Replay `log` (offsets partition `partition`, led at `epoch`) into memory, write the
    /// legacy offsets of `imports` whose keys it does not hold, then serve the partition.
    /// Returns how many legacy offsets were written. Err if the load was overtaken (the
    /// partition was unloaded or reloaded meanwhile) or failed; the shard retries then.
    pub async fn load(
        &self,
        partition: i32,
        epoch: i32,
        log: Rc<PartitionLog>,
        imports: Vec<OffsetRecord>,
    ) -> Result<usize, String> {
        let records = read_log(&log).await?;
        self.replay(partition, epoch, records, imports).await
    }

    /// The load once the log is read: apply `records` (offset, record) in log order, write
    /// the imports the partition lacks, then serve it, unless the load was overtaken.
    pub(super) async fn replay(
        &self,
        partition: i32,
        epoch: i32,
        records: Vec<(i64, OffsetRecord)>,
        imports: Vec<OffsetRecord>,
    ) -> Result<usize, String> {
        if self.partition_state(partition) != Some(Serving::Loading(epoch)) {
            return Err(format!("offsets partition {partition}: load overtaken"));
        }
        let count = records.len();
        for (offset, record) in records {
            self.apply(record, offset);
        }
        let fresh: Vec<OffsetRecord> = imports
            .into_iter()
            .filter(|r| r.value.is_some() && !self.has_offset(&r.group, &r.topic, r.partition))
            .collect();
        let imported = fresh.len();
        if !fresh.is_empty() {
            self.write_all(partition, fresh)
                .await
                .map_err(|code| format!("importing legacy offsets: error {code}"))?;
        }
        let mut partitions = self.partitions.borrow_mut();
        if partitions.get(&partition) != Some(&Serving::Loading(epoch)) {
            return Err(format!("offsets partition {partition}: load overtaken"));
        }
        partitions.insert(partition, Serving::Loaded(epoch));
        drop(partitions);
        tracing::info!(
            shard = self.shard_id,
            partition,
            epoch,
            records = count,
            imported,
            "loaded offsets partition"
        );
        Ok(imported)
    }

    /// Stop serving offsets partition `partition`: its groups' waiting requests fail and
    /// their state is dropped (members rejoin at the new coordinator, as in Kafka).
    pub fn unload(&self, partition: i32) {
        if self.partitions.borrow_mut().remove(&partition).is_none() {
            return;
        }
        let count = self.partition_count.get().max(1);
        let mut groups = self.groups.borrow_mut();
        let mut dropped = 0;
        groups.retain(|id, group| {
            if partition_for(id, count) != partition {
                return true;
            }
            group.shutdown();
            dropped += 1;
            false
        });
        tracing::info!(
            shard = self.shard_id,
            partition,
            groups = dropped,
            "unloaded offsets partition"
        );
    }

    /// Write records to offsets partition `partition` in batches of bounded size.
    pub async fn write_all(&self, partition: i32, records: Vec<OffsetRecord>) -> Result<(), i16> {
        for chunk in chunks_of(records) {
            self.write(partition, chunk).await?;
        }
        Ok(())
    }

    /// Append records through the appender (acks=all), then apply them in memory if this
    /// coordinator still holds the partition at the epoch the write started in.
    async fn write(&self, partition: i32, records: Vec<OffsetRecord>) -> Result<(), i16> {
        if self.stopped.get() {
            return Err(codes::COORDINATOR_NOT_AVAILABLE);
        }
        let Some(state) = self.partition_state(partition) else {
            return Err(codes::NOT_COORDINATOR);
        };
        let batch = offsets_log::encode_batch(&records, now_ms()).map_err(|e| {
            tracing::error!(shard = self.shard_id, "encoding offsets: {e}");
            codes::UNKNOWN_SERVER_ERROR
        })?;
        let base = self.appender.append(partition, batch).await?;
        if self.partition_state(partition) != Some(state)
            && self.partition_state(partition) != Some(loaded(state))
        {
            // Deposed while waiting: the commit may or may not survive at the new leader.
            return Err(codes::NOT_COORDINATOR);
        }
        for (i, record) in records.into_iter().enumerate() {
            self.apply(record, base + i as i64);
        }
        Ok(())
    }

    /// Apply one record of an offsets partition to memory.
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
        group.apply_offset(&record.topic, record.partition, value);
        if group.is_dead() {
            groups.remove(&record.group);
        }
    }

    /// Expire offsets of groups empty for `offsets_retention_ms` (counted from the later of
    /// the commit and the moment the group became empty), and forget dead groups.
    pub async fn expire_offsets(&self, now: i64) {
        let retention = self.config.offsets_retention_ms as i64;
        let (mono_now, wall_now) = (Instant::now(), now_ms());
        let by_partition: Vec<(i32, Vec<OffsetRecord>)> = {
            let mut groups = self.groups.borrow_mut();
            groups.retain(|_, g| !g.is_dead());
            let mut by_partition: std::collections::BTreeMap<i32, Vec<OffsetRecord>> =
                Default::default();
            for g in groups.values().filter(|g| g.member_count() == 0) {
                let Ok(partition) = self.serving(&g.id) else {
                    continue;
                };
                // The group state machine keeps monotonic time; commits carry wall time.
                let empty_for = mono_now.saturating_duration_since(g.empty_since);
                let empty_since_ms = wall_now - empty_for.as_millis() as i64;
                let expired: Vec<_> = g
                    .offsets
                    .iter()
                    .filter(|(_, c)| c.commit_time_ms.max(empty_since_ms) + retention <= now)
                    .map(|(key, _)| key.clone())
                    .collect();
                if !expired.is_empty() {
                    by_partition
                        .entry(partition)
                        .or_default()
                        .extend(tombstones(&g.id, expired));
                }
            }
            by_partition.into_iter().collect()
        };
        for (partition, records) in by_partition {
            let count = records.len();
            match self.write_all(partition, records).await {
                Ok(()) => tracing::info!(
                    shard = self.shard_id,
                    partition,
                    count,
                    "expired committed offsets"
                ),
                Err(code) => tracing::warn!(
                    shard = self.shard_id,
                    partition,
                    code,
                    "expiring offsets failed"
                ),
            }
        }
    }
}

/// The state a load in `state` ends in.
fn loaded(state: Serving) -> Serving {
    match state {
        Serving::Loading(e) | Serving::Loaded(e) => Serving::Loaded(e),
    }
}
