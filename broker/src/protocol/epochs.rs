//! OffsetForLeaderEpoch (KIP-101/279): the end offset of a leader epoch, as the partition's
//! current leader knows it. Clients (librdkafka after a leader change) use it to find out
//! whether their position survived a failover; only the leader answers.

use std::rc::Rc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::{codes, decode_body, encode_response, Reply, Request};
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: OffsetForLeaderEpochRequest = decode_body(request)?;
    let mut topics = Vec::with_capacity(body.topics.len());
    for topic in body.topics {
        let name = topic.topic.0.to_string();
        let lookups = topic.partitions.iter().map(|p| {
            let shard = shard.clone();
            let name = name.clone();
            let (partition, current, epoch) = (p.partition, p.current_leader_epoch, p.leader_epoch);
            async move {
                let (error, epoch, end) = match shard.route(&name, partition) {
                    Err(code) => (code, -1, -1),
                    Ok(owner) => shard
                        .call(owner, move |s| async move {
                            s.offset_for_leader_epoch_local(&name, partition, current, epoch)
                        })
                        .await
                        .unwrap_or((codes::KAFKA_STORAGE_ERROR, -1, -1)),
                };
                EpochEndOffset::default()
                    .with_partition(partition)
                    .with_error_code(error)
                    .with_leader_epoch(epoch)
                    .with_end_offset(end)
            }
        });
        let partitions = futures_util::future::join_all(lookups).await;
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions),
        );
    }
    Ok(encode_response(
        request,
        &OffsetForLeaderEpochResponse::default().with_topics(topics),
    ))
}
