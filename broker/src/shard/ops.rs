//! What a shard does for requests: partition operations that run on the partition's owner,
//! and catalog changes that run on the controller (shard 0). Results are plain data with
//! Kafka error codes so they can travel back over the mesh; the protocol layer turns them
//! into responses.

use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::leading::not_enough_replicas;
use super::Shard;
use crate::catalog;
use crate::clock::now_ms;
use crate::cluster::{Command, Growth, NewTopicSpec, Reply};
use crate::codes;
use crate::log::{LogError, PartitionLog};
use crate::sync::Place;

/// Outcome of appending one partition's records.
#[derive(Debug, Clone)]
pub struct ProduceResult {
    pub partition: i32,
    pub error: i16,
    pub message: Option<String>,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

/// What acks=all waits for after an append: `last` durable, then (replicated partitions)
/// covered by the high watermark while still led in `leader_epoch`.
#[derive(Clone)]
pub struct Appended {
    pub log: Rc<PartitionLog>,
    pub last: i64,
    pub topic: String,
    pub leader_epoch: i32,
}

/// One partition of a fetch.
#[derive(Debug, Clone)]
pub struct FetchPartition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub max_bytes: usize,
    /// The leader epoch the fetcher knows (-1: none; else checked, KIP-320).
    pub current_leader_epoch: i32,
    /// A follower's: the epoch of the last batch it holds (-1: none), for the divergence
    /// check (KIP-320 via Fetch v12).
    pub last_fetched_epoch: i32,
    /// The fetching follower's broker id, or -1 for a consumer (reads stop at the high
    /// watermark).
    pub replica: i32,
}

/// Outcome of reading one partition.
#[derive(Debug, Clone)]
pub struct FetchResult {
    pub error: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub chunks: Vec<Bytes>,
    pub bytes: usize,
    /// For a follower whose log diverged: the leader's (epoch, end offset) to truncate by.
    pub diverging: Option<(i32, i64)>,
}

impl FetchResult {
    pub fn error(error: i16) -> FetchResult {
        FetchResult {
            error,
            high_watermark: -1,
            log_start_offset: -1,
            chunks: Vec::new(),
            bytes: 0,
            diverging: None,
        }
    }
}

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    /// -1: the broker default (`default_replication_factor`).
    pub replication_factor: i32,
    /// A manual assignment, one replica list per partition (empty: automatic placement).
    pub assignments: Vec<Vec<i32>>,
    pub configs: Vec<(String, String)>,
}

/// Kafka error code for a storage error.
pub fn log_error_code(error: &LogError) -> i16 {
    match error {
        LogError::CorruptBatch(_) => codes::CORRUPT_MESSAGE,
        LogError::BatchTooLarge { .. } => codes::MESSAGE_TOO_LARGE,
        LogError::UnsupportedMagic(_) => codes::UNSUPPORTED_FOR_MESSAGE_FORMAT,
        LogError::OffsetOutOfRange { .. } => codes::OFFSET_OUT_OF_RANGE,
        LogError::DuplicateSequence { .. } => codes::DUPLICATE_SEQUENCE_NUMBER,
        LogError::OutOfOrderSequence { .. } => codes::OUT_OF_ORDER_SEQUENCE_NUMBER,
        LogError::InvalidProducerEpoch { .. } => codes::INVALID_PRODUCER_EPOCH,
        LogError::Io(_) | LogError::ShortRead { .. } => codes::KAFKA_STORAGE_ERROR,
        #[allow(unreachable_patterns)]
        _ => codes::KAFKA_STORAGE_ERROR,
    }
}

impl Shard {
    /// Append each partition's records (this shard owns them all). With acks=-1 (all), answer
    /// only once the batches are durable; one group-commit round covers every partition.
    ///
    /// Not `async`: the call itself takes this request's place in the append line of every
    /// partition it writes, before returning the future that appends. Calls made in request
    /// order (see [`Shard::submit`]) therefore append in request order, however their
    /// futures interleave. The partitions of one request append concurrently.
    pub fn produce_local(
        self: &Rc<Self>,
        partitions: Vec<(String, i32, Option<Bytes>)>,
        acks: i16,
        timeout_ms: i32,
    ) -> impl Future<Output = Vec<ProduceResult>> + 'static {
        let deadline = fetch_deadline(timeout_ms);
        let placed: Vec<_> = partitions
            .into_iter()
            .map(|(topic, partition, records)| {
                // acks=all with fewer in-sync replicas than the topic's minimum: refused
                // before anything is appended (Kafka's NOT_ENOUGH_REPLICAS).
                let refused = acks == -1 && !self.enough_in_sync(&topic, partition);
                let place = self
                    .log(&topic, partition)
                    .filter(|log| !log.is_failed() && !refused)
                    .map(|log| (log.reserve_append(), log));
                let records = if refused { None } else { records };
                (topic, partition, records, place, refused)
            })
            .collect();
        let shard = self.clone();
        // Never dropped halfway: request handlers are detached tasks (`net`) and mesh jobs
        // run to their end, so an append is never stopped between the copies of one batch.
        async move {
            let appends = placed
                .into_iter()
                .map(|(topic, partition, records, place, refused)| {
                    let shard = shard.clone();
                    async move {
                        if refused {
                            return (not_enough_replicas(partition), None);
                        }
                        shard
                            .append_partition(topic, partition, records, place)
                            .await
                    }
                });
            let mut appended = futures_util::future::join_all(appends).await;
            if acks != -1 {
                return appended
                    .into_iter()
                    .map(|(result, _)| result)
                    .collect::<Vec<_>>();
            }
            // Every append is in before the first sync, so one group-commit round can
            // cover all of this request's partitions.
            let storage = shard.storage.clone();
            let waits = appended.iter().map(|(_, durable)| {
                let storage = storage.clone();
                async move {
                    match durable {
                        Some(a) => storage.wait_durable(&a.log, a.last).await,
                        None => Ok(()),
                    }
                }
            });
            let outcomes = futures_util::future::join_all(waits).await;
            for ((result, _), outcome) in appended.iter_mut().zip(outcomes) {
                if let Err(e) = outcome {
                    tracing::error!("sync failed: {e}");
                    result.error = codes::KAFKA_STORAGE_ERROR;
                    result.message = Some(e.to_string());
                }
            }
            // Then every in-sync replica must hold it durably: the high watermark covers it.
            let replicated = appended.iter().map(|(result, durable)| {
                let shard = shard.clone();
                async move {
                    match durable {
                        Some(a) if result.error == codes::NONE => {
                            shard.wait_replicated(a, result.partition, deadline).await
                        }
                        _ => codes::NONE,
                    }
                }
            });
            let outcomes = futures_util::future::join_all(replicated).await;
            for ((result, _), outcome) in appended.iter_mut().zip(outcomes) {
                if outcome != codes::NONE {
                    result.error = outcome;
                    result.message = None;
                }
            }
            appended.into_iter().map(|(result, _)| result).collect()
        }
    }

    /// Append one partition's records at the place reserved for them (none when its log had
    /// failed: a failed log is reopened first, if the disk has room again, and the append
    /// then takes the next place in the new log's line). Returns the result and, for a new
    /// (not duplicate) batch, the log and last offset that acks=all waits to be durable.
    async fn append_partition(
        self: Rc<Self>,
        topic: String,
        partition: i32,
        records: Option<Bytes>,
        place: Option<(Place, Rc<PartitionLog>)>,
    ) -> (ProduceResult, Option<Appended>) {
        let mut result = ProduceResult {
            partition,
            error: codes::NONE,
            message: None,
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
        };
        let (place, log) = match place {
            Some(reserved) => reserved,
            None => {
                self.reopen_if_failed(&topic, partition).await;
                let Some(log) = self.log(&topic, partition) else {
                    result.error = codes::UNKNOWN_TOPIC_OR_PARTITION;
                    return (result, None);
                };
                (log.reserve_append(), log)
            }
        };
        let Some(records) = records.filter(|r| !r.is_empty()) else {
            result.error = codes::CORRUPT_MESSAGE;
            result.message = Some("empty records".into());
            return (result, None);
        };
        // Compacted topics only (the one place the produce path reads inside batches): a
        // record without a key has nothing to be compacted by, and Kafka refuses it.
        if log.is_compacted() {
            let refused = match crate::log::cleaner::every_record_has_a_key(&records) {
                Ok(true) => None,
                Ok(false) => Some((
                    codes::INVALID_RECORD,
                    "compacted topic cannot accept a record without a key".to_string(),
                )),
                Err(e) => Some((codes::CORRUPT_MESSAGE, e.to_string())),
            };
            if let Some((error, message)) = refused {
                result.error = error;
                result.message = Some(message);
                return (result, None);
            }
        }
        match log.append_in_place(place, records, now_ms()).await {
            Ok(info) => {
                result.base_offset = info.base_offset;
                result.log_append_time_ms = info.log_append_time_ms;
                result.log_start_offset = info.log_start_offset;
                // A duplicate (a retry, maybe after a failover) waits like the original: the
                // batch it matches may not be durable on the ISR yet.
                let durable = Some(Appended {
                    log,
                    last: info.last_offset,
                    topic,
                    leader_epoch: info.leader_epoch,
                });
                (result, durable)
            }
            Err(e) => {
                result.error = log_error_code(&e);
                result.message = Some(e.to_string());
                if result.error == codes::KAFKA_STORAGE_ERROR {
                    tracing::error!(topic, partition, "append failed: {e}");
                }
                (result, None)
            }
        }
    }

    /// Read each partition (this shard owns them all): a consumer up to the high watermark,
    /// a follower up to the log end, after checking its epochs (see `leading`).
    pub async fn fetch_local(self: &Rc<Self>, partitions: Vec<FetchPartition>) -> Vec<FetchResult> {
        let mut results = Vec::with_capacity(partitions.len());
        for p in partitions {
            let Some(log) = self.log(&p.topic, p.partition) else {
                results.push(FetchResult::error(codes::UNKNOWN_TOPIC_OR_PARTITION));
                continue;
            };
            if let Err(code) =
                self.check_leader_epoch(&p.topic, p.partition, p.current_leader_epoch)
            {
                results.push(FetchResult::error(code));
                continue;
            }
            if p.replica >= 0 {
                results.push(self.follower_read(&log, &p).await);
                continue;
            }
            let high_watermark = log.high_watermark();
            let mut result = FetchResult {
                error: codes::NONE,
                high_watermark,
                log_start_offset: log.log_start_offset(),
                chunks: Vec::new(),
                bytes: 0,
                diverging: None,
            };
            match log.read_upto(p.offset, p.max_bytes, high_watermark).await {
                Ok(read) => {
                    result.log_start_offset = read.log_start_offset;
                    result.chunks = read.chunks;
                    result.bytes = read.bytes;
                }
                Err(e) => result.error = log_error_code(&e),
            }
            results.push(result);
        }
        results
    }

    /// Long-poll step of a fetch, on the owner: wait until any partition has data past its
    /// wait offset (or the deadline), then read every partition again.
    pub async fn fetch_when_grown(
        self: &Rc<Self>,
        partitions: Vec<(FetchPartition, i64)>,
        deadline: Instant,
    ) -> Vec<FetchResult> {
        let waits = partitions
            .iter()
            .map(|(p, wait_at)| (p.topic.clone(), p.partition, *wait_at, p.replica < 0))
            .collect();
        self.wait_any_local(waits, deadline).await;
        self.fetch_local(partitions.into_iter().map(|(p, _)| p).collect())
            .await
    }

    /// Resolve as soon as any partition has data past its offset (for a consumer, past the
    /// high watermark: the flag), or at the deadline. A shutdown ends the wait at once: the
    /// requests a shard took must finish promptly.
    pub async fn wait_any_local(
        &self,
        partitions: Vec<(String, i32, i64, bool)>,
        deadline: Instant,
    ) {
        if self.is_shutting_down() {
            return;
        }
        let shutdown = std::pin::pin!(self.shutdown_event.listen());
        let waits: Vec<_> = partitions
            .into_iter()
            .filter_map(|(topic, partition, offset, consumer)| {
                let log = self.log(&topic, partition)?;
                Some(Box::pin(async move {
                    log.wait_for_data_upto(offset, deadline, consumer).await
                }))
            })
            .collect();
        let any = async {
            if waits.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = glommio::timer::sleep(left).await;
            } else {
                futures_util::future::select_all(waits).await;
            }
        };
        futures_util::future::select(shutdown, std::pin::pin!(any)).await;
    }

    /// ListOffsets for one partition: -1 latest, -2 earliest, -3 max timestamp, else a time.
    /// Returns (error, timestamp, offset).
    pub async fn list_offset_local(
        &self,
        topic: &str,
        partition: i32,
        timestamp: i64,
        current_leader_epoch: i32,
    ) -> (i16, i64, i64) {
        let Some(log) = self.log(topic, partition) else {
            return (codes::UNKNOWN_TOPIC_OR_PARTITION, -1, -1);
        };
        if let Err(code) = self.check_leader_epoch(topic, partition, current_leader_epoch) {
            return (code, -1, -1);
        }
        match timestamp {
            // Consumers see the log up to the high watermark only.
            -1 => (codes::NONE, -1, log.high_watermark()),
            -2 => (codes::NONE, -1, log.log_start_offset()),
            -3 => match log.offset_for_timestamp(i64::MIN + 1).await {
                // Max-timestamp lookup (KIP-734) is not indexed: answer the latest batch.
                Ok(_) => (codes::NONE, -1, (log.high_watermark() - 1).max(-1)),
                Err(e) => (log_error_code(&e), -1, -1),
            },
            ts => match log.offset_for_timestamp(ts).await {
                Ok(Some((batch_offset, batch_max_ts))) => {
                    let (offset, found_ts) = first_record_at_or_after(&log, batch_offset, ts)
                        .await
                        .unwrap_or((batch_offset, batch_max_ts));
                    (codes::NONE, found_ts, offset)
                }
                Ok(None) => (codes::NONE, -1, -1),
                Err(e) => (log_error_code(&e), -1, -1),
            },
        }
    }

    /// Create topics through the metadata quorum; answers once this node's shards hold the
    /// result. Returns one (error code, message) per topic, in order.
    pub async fn create_topics(
        self: &Rc<Self>,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> Vec<(i16, Option<String>)> {
        let mut results = vec![(codes::NONE, None); topics.len()];
        let mut specs = Vec::new();
        let mut indexes = Vec::new();
        let mut more = 0usize;
        for (i, new) in topics.into_iter().enumerate() {
            let count = if new.assignments.is_empty() {
                new.partitions.max(0) as usize
            } else {
                new.assignments.len()
            };
            if let Err(msg) = self.check_partition_room(more + count) {
                results[i] = (codes::INVALID_PARTITIONS, Some(msg));
                continue;
            }
            more += count;
            indexes.push(i);
            specs.push(NewTopicSpec {
                name: new.name,
                id: catalog::new_topic_id(),
                partitions: new.partitions,
                replication_factor: if new.replication_factor == -1 {
                    self.config.default_replication_factor
                } else {
                    new.replication_factor
                },
                assignments: new.assignments,
                configs: new.configs,
            });
        }
        if specs.is_empty() {
            return results;
        }
        let command = Command::CreateTopics {
            topics: specs,
            validate_only,
        };
        let answer = self.change_metadata(command).await;
        fill_outcomes(&mut results, &indexes, answer, "create topics");
        results
    }

    /// Every partition keeps files open and buffers allocated: one CreateTopics asking for
    /// 100,000 of them used up the broker's file descriptors, after which it could accept
    /// no connection and not even open its own catalog again at start.
    fn check_partition_room(&self, more: usize) -> Result<(), String> {
        let now = self.catalog().partition_total();
        let max = self.config.max_partitions;
        if now + more > max {
            return Err(format!(
                "{more} more partitions would exceed max_partitions {max} ({now} exist)"
            ));
        }
        Ok(())
    }

    /// Delete topics through the metadata quorum. One error code per name.
    /// The internal offsets topic is refused (INVALID_TOPIC_EXCEPTION, as Kafka's
    /// produce path answers for it): deleting it would lose every group's offsets.
    pub async fn delete_topics(self: &Rc<Self>, names: Vec<String>) -> Vec<i16> {
        let mut results = vec![codes::INVALID_TOPIC_EXCEPTION; names.len()];
        let (indexes, names): (Vec<usize>, Vec<String>) = names
            .into_iter()
            .enumerate()
            .filter(|(_, name)| !catalog::is_internal(name))
            .unzip();
        if names.is_empty() {
            return results;
        }
        let count = names.len();
        let codes = match self.change_metadata(Command::DeleteTopics { names }).await {
            Ok(Reply::Outcomes(outcomes)) => outcomes.into_iter().map(|(code, _)| code).collect(),
            Ok(other) => {
                tracing::error!("delete topics: unexpected reply {other:?}");
                vec![codes::UNKNOWN_SERVER_ERROR; count]
            }
            Err((code, _)) => vec![code; count],
        };
        for (i, code) in indexes.into_iter().zip(codes) {
            results[i] = code;
        }
        results
    }

    /// Grow topics to a new partition count, through the metadata quorum.
    pub async fn create_partitions(
        self: &Rc<Self>,
        requests: Vec<Growth>,
        validate_only: bool,
    ) -> Vec<(i16, Option<String>)> {
        let catalog = self.catalog();
        let mut results = vec![(codes::NONE, None); requests.len()];
        let mut asks = Vec::new();
        let mut indexes = Vec::new();
        let mut more = 0usize;
        for (i, growth) in requests.into_iter().enumerate() {
            let count = growth.count;
            let current = catalog
                .topics
                .get(&growth.name)
                .map_or(0, |t| t.partition_count() as i32);
            if (current + 1..=100_000).contains(&count) {
                let extra = (count - current) as usize;
                if let Err(msg) = self.check_partition_room(more + extra) {
                    results[i] = (codes::INVALID_PARTITIONS, Some(msg));
                    continue;
                }
                more += extra;
            }
            indexes.push(i);
            asks.push(growth);
        }
        if asks.is_empty() {
            return results;
        }
        let command = Command::CreatePartitions {
            topics: asks,
            validate_only,
        };
        let answer = self.change_metadata(command).await;
        fill_outcomes(&mut results, &indexes, answer, "create partitions");
        results
    }

    /// Set (Some) or remove (None) topic config values, through the metadata quorum.
    pub async fn alter_topic_configs(
        self: &Rc<Self>,
        topic: String,
        set: Vec<(String, Option<String>)>,
        validate_only: bool,
    ) -> (i16, Option<String>) {
        let command = Command::SetTopicConfigs {
            topic,
            set,
            validate_only,
        };
        match self.change_metadata(command).await {
            Ok(Reply::Outcomes(mut outcomes)) if outcomes.len() == 1 => outcomes.remove(0),
            Ok(other) => (
                codes::UNKNOWN_SERVER_ERROR,
                Some(format!("unexpected reply {other:?}")),
            ),
            Err((code, message)) => (code, Some(message)),
        }
    }

    /// Hand out a producer id: from this shard's block, taking a new block of
    /// `PRODUCER_ID_BLOCK` from the quorum when it is used up, so ids are never reused
    /// across brokers or restarts.
    pub async fn allocate_producer_id(self: &Rc<Self>) -> Result<i64, String> {
        let _permit = self.controller_lock.acquire_permit(1).await;
        let (next, end) = self.producer_ids.get();
        if next < end {
            self.producer_ids.set((next + 1, end));
            return Ok(next);
        }
        let command = Command::AllocateProducerIds {
            count: PRODUCER_ID_BLOCK,
        };
        match self.change_metadata(command).await {
            Ok(Reply::ProducerIds { first }) => {
                self.producer_ids
                    .set((first + 1, first + PRODUCER_ID_BLOCK));
                Ok(first)
            }
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err((_, message)) => Err(message),
        }
    }

    /// Commit a metadata change through the quorum, then wait (bounded) until every shard
    /// of this node has adopted a catalog that includes it (logs opened or deleted), so the
    /// answer and what this broker serves next agree. Err holds a Kafka error code and why.
    pub async fn change_metadata(
        self: &Rc<Self>,
        command: Command,
    ) -> Result<Reply, (i16, String)> {
        let applied = self
            .control
            .propose(command)
            .await
            .map_err(|e| (e.code, e.message))?;
        self.wait_node_adopted(applied.index, Duration::from_secs(5))
            .await;
        Ok(applied.reply)
    }
}

/// Put a metadata change's per-item outcomes (or its one failure) into `results` at
/// `indexes`, the items that were proposed.
fn fill_outcomes(
    results: &mut [(i16, Option<String>)],
    indexes: &[usize],
    answer: Result<Reply, (i16, String)>,
    what: &str,
) {
    match answer {
        Ok(Reply::Outcomes(outcomes)) => {
            for (i, outcome) in indexes.iter().zip(outcomes) {
                results[*i] = outcome;
            }
        }
        Ok(other) => tracing::error!("{what}: unexpected reply {other:?}"),
        Err((code, message)) => {
            for i in indexes {
                results[*i] = (code, Some(message.clone()));
            }
        }
    }
}

/// Producer ids a shard takes from the quorum at once.
const PRODUCER_ID_BLOCK: i64 = 1000;

/// Deadline for a long poll: now + max_wait, capped so a hostile value cannot pin a task.
pub fn fetch_deadline(max_wait_ms: i32) -> Instant {
    Instant::now() + Duration::from_millis(max_wait_ms.clamp(0, 300_000) as u64)
}

/// The first record at or after `ts_ms` in the batch at `batch_offset`: the log indexes
/// batches, Kafka answers the exact record. The control path (ListOffsets) may decode and
/// decompress one batch; the produce and fetch paths never do.
async fn first_record_at_or_after(
    log: &crate::log::PartitionLog,
    batch_offset: i64,
    ts_ms: i64,
) -> Option<(i64, i64)> {
    let read = log.read(batch_offset, 1).await.ok()?;
    let mut batch = bytes::BytesMut::with_capacity(read.bytes);
    for chunk in &read.chunks {
        batch.extend_from_slice(chunk);
    }
    let mut batch = batch.freeze();
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut batch).ok()?;
    set.records
        .iter()
        .find(|r| r.offset >= batch_offset && r.timestamp >= ts_ms)
        .map(|r| (r.offset, r.timestamp))
}
