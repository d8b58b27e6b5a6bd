//! Fetch (with long poll) and ListOffsets.
//!
//! Fetch reads every partition on its owner shard, concurrently across shards. When fewer
//! than `min_bytes` came back, it asks each owner to wait until any of its partitions grows
//! (the append wakes the waiter), takes the first shard that reports data or the deadline,
//! and reads once more. Record batches are returned exactly as stored, spliced into the
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
use crate::shard::ops::{fetch_deadline, FetchPartition, FetchResult};
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: FetchRequest = decode_body(request)?;
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
            });
        }
    }
    let deadline = fetch_deadline(body.max_wait_ms);
    let min_bytes = body.min_bytes.max(0) as usize;
    let mut results = read_all(shard, &wanted).await;
    loop {
        let total: usize = results.iter().map(|r| r.bytes).sum();
        let any_error = results.iter().any(|r| r.error != codes::NONE);
        if total >= min_bytes || any_error || Instant::now() >= deadline || wanted.is_empty() {
            break;
        }
        // Wait from where the data read so far ends, so a partial batch set wakes us only
        // when something new arrives.
        wait_for_any(shard, &wanted, &results, deadline).await;
        results = read_all(shard, &wanted).await;
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
                result,
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
    const ATTRIBUTES_LOW_BYTE_AT: usize = 22;
    const CODEC_ZSTD: u8 = 4;
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let byte_at = |mut at: usize| -> Option<u8> {
        for chunk in chunks {
            if at < chunk.len() {
                return Some(chunk[at]);
            }
            at -= chunk.len();
        }
        None
    };
    let mut batch_at = 0usize;
    while batch_at + 61 <= total {
        let length = (8..12)
            .filter_map(|i| byte_at(batch_at + i))
            .fold(0u32, |n, b| n << 8 | b as u32);
        match byte_at(batch_at + ATTRIBUTES_LOW_BYTE_AT) {
            Some(low) if low & 0x07 == CODEC_ZSTD => return true,
            Some(_) => {}
            None => return false,
        }
        batch_at += 12 + length as usize;
    }
    false
}

/// Read every wanted partition on its owner; results in the order of `wanted`.
async fn read_all(shard: &Rc<Shard>, wanted: &[FetchPartition]) -> Vec<FetchResult> {
    let mut results: Vec<Option<FetchResult>> = vec![None; wanted.len()];
    let mut per_owner: BTreeMap<usize, (Vec<usize>, Vec<FetchPartition>)> = BTreeMap::new();
    for (i, p) in wanted.iter().enumerate() {
        match shard.owner_of(&p.topic, p.partition) {
            Some(owner) => {
                let work = per_owner.entry(owner).or_default();
                work.0.push(i);
                work.1.push(p.clone());
            }
            None => results[i] = Some(error_result(codes::UNKNOWN_TOPIC_OR_PARTITION)),
        }
    }
    let calls = per_owner.into_iter().map(|(owner, (indexes, work))| {
        let shard = shard.clone();
        async move {
            let answer = shard
                .call(owner, move |s| async move { s.fetch_local(work).await })
                .await;
            (indexes, answer)
        }
    });
    for (indexes, answer) in futures_util::future::join_all(calls).await {
        match answer {
            Ok(answers) => {
                for (i, answer) in indexes.into_iter().zip(answers) {
                    results[i] = Some(answer);
                }
            }
            Err(_) => {
                for i in indexes {
                    results[i] = Some(error_result(codes::KAFKA_STORAGE_ERROR));
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every partition answered"))
        .collect()
}

fn error_result(error: i16) -> FetchResult {
    FetchResult {
        error,
        high_watermark: -1,
        log_start_offset: -1,
        chunks: Vec::new(),
        bytes: 0,
    }
}

/// Wait until any owner shard reports new data for one of its partitions, or the deadline.
async fn wait_for_any(
    shard: &Rc<Shard>,
    wanted: &[FetchPartition],
    read: &[FetchResult],
    deadline: Instant,
) {
    let mut per_owner: BTreeMap<usize, Vec<(String, i32, i64)>> = BTreeMap::new();
    for (p, r) in wanted.iter().zip(read) {
        if let Some(owner) = shard.owner_of(&p.topic, p.partition) {
            // Wake only on data beyond what is already there.
            let wait_at = p.offset.max(r.high_watermark);
            per_owner
                .entry(owner)
                .or_default()
                .push((p.topic.clone(), p.partition, wait_at));
        }
    }
    let waits: Vec<_> = per_owner
        .into_iter()
        .map(|(owner, partitions)| {
            let shard = shard.clone();
            Box::pin(async move {
                let _ = shard
                    .call(owner, move |s| async move {
                        s.wait_any_local(partitions, deadline).await
                    })
                    .await;
            })
        })
        .collect();
    if !waits.is_empty() {
        futures_util::future::select_all(waits).await;
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
            async move {
                let answer = match shard.owner_of(&name, partition) {
                    None => (codes::UNKNOWN_TOPIC_OR_PARTITION, -1, -1),
                    Some(owner) => shard
                        .call(owner, move |s| async move {
                            s.list_offset_local(&name, partition, timestamp).await
                        })
                        .await
                        .unwrap_or((codes::KAFKA_STORAGE_ERROR, -1, -1)),
                };
                ListOffsetsPartitionResponse::default()
                    .with_partition_index(partition)
                    .with_error_code(answer.0)
                    .with_timestamp(answer.1)
                    .with_offset(answer.2)
                    .with_leader_epoch(if version >= 4 { 0 } else { -1 })
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
