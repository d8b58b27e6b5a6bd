//! Fetch (with long poll) and ListOffsets.
//!
//! Fetch reads every partition on its owner shard, concurrently across shards. When fewer
//! than `min_bytes` came back, it makes one call per owner that waits there until one of its
//! partitions grows past what was read (the append wakes the waiter) or the deadline, and
//! reads again there; the first owner to answer replaces its partitions' results, and the
//! other owners' waits are dropped at once (see `Shard::call_until_dropped`), never left
//! running to the deadline. Record batches are returned exactly as stored, spliced into the
//! response without a copy (`fetch_encode`).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{FetchRequest, ListOffsetsRequest, ListOffsetsResponse, TopicName};

use super::fetch_encode::{self, PartitionOut, TopicOut};
use super::{codes, decode_body, encode_response, Reply, Request};
use crate::log::batch;
use crate::shard::ops::{fetch_deadline, FetchPartition, FetchResult};
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: FetchRequest = decode_body(request)?;
    // A follower names itself (Fetch <= v14 carries it in the body); consumers send -1.
    let replica = body.replica_id.0.max(-1);
    let mut wanted: Vec<FetchPartition> = Vec::new();
    let mut topic_names: Vec<(TopicName, usize)> = Vec::with_capacity(body.topics.len());
    for topic in &body.topics {
        topic_names.push((topic.topic.clone(), topic.partitions.len()));
        for p in &topic.partitions {
            wanted.push(FetchPartition {
                topic: topic.topic.0.to_string(),
                partition: p.partition,
                offset: p.fetch_offset,
                // The request-wide limit bounds each partition too: a partition past it
                // still returns its first batch whole (the log always gives one), no more.
                max_bytes: p.partition_max_bytes.min(body.max_bytes).max(0) as usize,
                current_leader_epoch: p.current_leader_epoch,
                last_fetched_epoch: p.last_fetched_epoch,
                replica,
            });
        }
    }
    let deadline = fetch_deadline(body.max_wait_ms);
    let min_bytes = body.min_bytes.max(0) as usize;
    let owners: Vec<Result<usize, i16>> = wanted
        .iter()
        .map(|p| shard.route(&p.topic, p.partition))
        .collect();
    let mut results = read_all(shard, &wanted, &owners).await;
    loop {
        let total: usize = results.iter().map(|r| r.bytes).sum();
        let any_error = results.iter().any(|r| r.error != codes::NONE);
        // A shutdown answers long polls with what is there (the waits end at once).
        let stop = Instant::now() >= deadline || shard.is_shutting_down();
        if total >= min_bytes || any_error || stop || wanted.is_empty() {
            break;
        }
        wait_and_reread(shard, &wanted, &owners, &mut results, deadline).await;
    }
    // The request's max_bytes is a soft limit: the first partition with data always goes in
    // whole (so a batch larger than the limit still makes progress), later ones only if they fit.
    let max_bytes = body.max_bytes.max(0) as usize;
    let mut sent = 0usize;
    let mut results = results.into_iter();
    let mut partitions_in_order = wanted.iter();
    let mut topics = Vec::with_capacity(topic_names.len());
    for (name, count) in topic_names {
        let mut partitions = Vec::with_capacity(count);
        for _ in 0..count {
            let p = partitions_in_order.next().expect("one entry per partition");
            let mut result = results.next().expect("one result per partition");
            if request.version < ZSTD_FETCH_VERSION_MIN && holds_zstd(&result.chunks) {
                // A consumer this old cannot decompress zstd (Kafka answers the same).
                result.error = codes::UNSUPPORTED_COMPRESSION_TYPE;
                result.chunks.clear();
                result.bytes = 0;
            }
            if sent > 0 && sent + result.bytes > max_bytes {
                result.chunks.clear();
                result.bytes = 0;
            }
            sent += result.bytes;
            partitions.push(PartitionOut {
                partition: p.partition,
                error: result.error,
                high_watermark: result.high_watermark,
                log_start_offset: result.log_start_offset,
                records: result.chunks,
                diverging: result.diverging,
            });
        }
        topics.push(TopicOut {
            name: name.0.into_bytes(),
            partitions,
        });
    }
    Ok(Reply::Frame(fetch_encode::encode(
        request.header.correlation_id,
        request.version,
        topics,
    )))
}

/// Fetch versions below this predate zstd (KIP-110).
const ZSTD_FETCH_VERSION_MIN: i16 = 10;

/// Whether any batch in `chunks` (whole batches, split anywhere) is zstd-compressed. Reads
/// only the attributes of each batch header, across chunk boundaries, without copying.
fn holds_zstd(chunks: &[Bytes]) -> bool {
    batch::attributes_of_each(chunks).any(|a| a & batch::ATTRIBUTE_CODEC_MASK == batch::CODEC_ZSTD)
}

/// Read every wanted partition on its owner; results in the order of `wanted`.
async fn read_all(
    shard: &Rc<Shard>,
    wanted: &[FetchPartition],
    owners: &[Result<usize, i16>],
) -> Vec<FetchResult> {
    let mut results: Vec<FetchResult> = owners
        .iter()
        .map(|o| FetchResult::error(o.err().unwrap_or(codes::NONE)))
        .collect();
    let (slots, work): (Vec<usize>, Vec<(usize, FetchPartition)>) = wanted
        .iter()
        .zip(owners)
        .enumerate()
        .filter_map(|(i, (p, owner))| Some((i, ((*owner).ok()?, p.clone()))))
        .unzip();
    let answers = shard
        .fan_out(work, None, |s, partitions| async move {
            s.fetch_local(partitions).await
        })
        .await;
    for (slot, answer) in slots.into_iter().zip(answers) {
        results[slot] = answer.unwrap_or_else(|_| FetchResult::error(codes::KAFKA_STORAGE_ERROR));
    }
    results
}

/// One owner's share of a long-poll pass: the result slots it answers for, and each
/// partition with the offset to wait past.
type OwnerWork = (Vec<usize>, Vec<(FetchPartition, i64)>);

/// One pass of the long poll: each owner waits until one of its partitions has data past
/// what `results` already holds (or the deadline) and reads its partitions again, in one
/// call. The first owner to answer updates its partitions' results; the other calls are
/// dropped, which stops their waits on their shards.
async fn wait_and_reread(
    shard: &Rc<Shard>,
    wanted: &[FetchPartition],
    owners: &[Result<usize, i16>],
    results: &mut [FetchResult],
    deadline: Instant,
) {
    let mut per_owner: BTreeMap<usize, OwnerWork> = BTreeMap::new();
    for (i, (p, owner)) in wanted.iter().zip(owners).enumerate() {
        if let Ok(owner) = owner {
            // Wake only on data beyond what is already there.
            let wait_at = p.offset.max(results[i].high_watermark);
            let work = per_owner.entry(*owner).or_default();
            work.0.push(i);
            work.1.push((p.clone(), wait_at));
        }
    }
    let calls: Vec<_> = per_owner
        .into_iter()
        .map(|(owner, (slots, work))| {
            let shard = shard.clone();
            Box::pin(async move {
                let answer = shard
                    .call_until_dropped(owner, move |s| async move {
                        s.fetch_when_grown(work, deadline).await
                    })
                    .await;
                (slots, answer)
            })
        })
        .collect();
    if calls.is_empty() {
        return;
    }
    let ((slots, answer), _, _rest) = futures_util::future::select_all(calls).await;
    match answer {
        Ok(read) => {
            for (slot, result) in slots.into_iter().zip(read) {
                results[slot] = result;
            }
        }
        Err(_) => {
            for slot in slots {
                results[slot] = FetchResult::error(codes::KAFKA_STORAGE_ERROR);
            }
        }
    }
}

pub async fn handle_list_offsets(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: ListOffsetsRequest = decode_body(request)?;
    let version = request.version;
    let mut topics = Vec::with_capacity(body.topics.len());
    for topic in body.topics {
        let name = topic.name.0.to_string();
        let lookups = topic.partitions.iter().map(|p| {
            let shard = shard.clone();
            let name = name.clone();
            let (partition, timestamp) = (p.partition_index, p.timestamp);
            let current_epoch = p.current_leader_epoch;
            let leader_epoch = shard
                .catalog()
                .placement(&name, partition)
                .map_or(-1, |p| p.leader_epoch);
            async move {
                let answer = match shard.route(&name, partition) {
                    Err(code) => (code, -1, -1),
                    Ok(owner) => shard
                        .call(owner, move |s| async move {
                            s.list_offset_local(&name, partition, timestamp, current_epoch)
                                .await
                        })
                        .await
                        .unwrap_or((codes::KAFKA_STORAGE_ERROR, -1, -1)),
                };
                ListOffsetsPartitionResponse::default()
                    .with_partition_index(partition)
                    .with_error_code(answer.0)
                    .with_timestamp(answer.1)
                    .with_offset(answer.2)
                    .with_leader_epoch(if version >= 4 { leader_epoch } else { -1 })
            }
        });
        let partitions = futures_util::future::join_all(lookups).await;
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    Ok(encode_response(
        request,
        &ListOffsetsResponse::default().with_topics(topics),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(codec: u8) -> Vec<u8> {
        let mut b = vec![0u8; 70];
        b[8..12].copy_from_slice(&58u32.to_be_bytes());
        b[16] = 2;
        b[22] = codec;
        b
    }

    #[test]
    fn zstd_batches_are_found_across_chunk_splits() {
        let mut two = batch(1);
        two.extend(batch(4));
        let whole = Bytes::from(two);
        assert!(holds_zstd(std::slice::from_ref(&whole)));
        for split in [1, 8, 22, 70, 75, 92, 139] {
            assert!(
                holds_zstd(&[whole.slice(..split), whole.slice(split..)]),
                "split {split}"
            );
        }
        let mut plain = batch(1);
        plain.extend(batch(3));
        assert!(!holds_zstd(&[Bytes::from(plain)]));
        assert!(!holds_zstd(&[]));
    }
}
