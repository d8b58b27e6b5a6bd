//! Committed-offset APIs: OffsetCommit, OffsetFetch (one group or several), OffsetDelete.
//! Each decodes its request, runs it on the group's coordinator shard (which answers a
//! commit only once it is durable), and encodes the answer for the request's version. Never
//! changes group membership.

use std::rc::Rc;

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    GroupId, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};

use super::{invalid_group_id, on_coordinator, str_bytes};
use crate::codes;
use crate::groups::coordinator::{CommitEntry, FetchedOffset};
use crate::protocol::{decode_body, encode_response, Reply, Request};
use crate::shard::Shard;

pub async fn handle_offset_commit(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: OffsetCommitRequest = decode_body(request)?;
    let version = request.version;
    let group_id = body.group_id.0.to_string();
    let mut entries = Vec::new();
    let mut shape: Vec<(TopicName, Vec<i32>)> = Vec::with_capacity(body.topics.len());
    for topic in body.topics {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            partitions.push(p.partition_index);
            entries.push(CommitEntry {
                topic: name.clone(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: if version >= 6 {
                    p.committed_leader_epoch
                } else {
                    -1
                },
                metadata: p.committed_metadata.map(|m| m.to_string()),
            });
        }
        shape.push((topic.name, partitions));
    }
    let count = entries.len();
    let results = if invalid_group_id(&group_id) {
        vec![codes::INVALID_GROUP_ID; count]
    } else {
        let member_id = body.member_id.to_string();
        let instance_id = body.group_instance_id.map(|s| s.to_string());
        let generation = body.generation_id_or_member_epoch;
        let key = group_id.clone();
        on_coordinator(shard, &key, move |s, g| async move {
            let known = move |topic: &str, partition: i32| s.owner_of(topic, partition).is_some();
            g.commit(group_id, member_id, instance_id, generation, entries, known)
                .await
        })
        .await
        .unwrap_or_else(|code| vec![code; count])
    };
    let mut results = results.into_iter();
    let topics = shape
        .into_iter()
        .map(|(name, partitions)| {
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(
                                    results.next().unwrap_or(codes::UNKNOWN_SERVER_ERROR),
                                )
                        })
                        .collect(),
                )
        })
        .collect();
    Ok(encode_response(
        request,
        &OffsetCommitResponse::default().with_topics(topics),
    ))
}

/// Committed offsets of one group, from its coordinator; Err(code) if it cannot answer.
pub(super) async fn fetch_group_offsets(
    shard: &Rc<Shard>,
    group_id: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<(String, Vec<FetchedOffset>)>, i16> {
    let key = group_id.clone();
    on_coordinator(shard, &key, move |_, g| async move {
        g.fetch_offsets(&group_id, topics)
    })
    .await
}

pub async fn handle_offset_fetch(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: OffsetFetchRequest = decode_body(request)?;
    let version = request.version;
    let mut response = OffsetFetchResponse::default();
    if version >= 8 {
        for group in body.groups {
            let topics = group.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let answer = fetch_group_offsets(shard, group.group_id.0.to_string(), topics).await;
            response
                .groups
                .push(offset_fetch_group(group.group_id, answer));
        }
        return Ok(encode_response(request, &response));
    }
    let topics = body.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let answer = fetch_group_offsets(shard, body.group_id.0.to_string(), topics).await;
    Ok(encode_response(
        request,
        &offset_fetch_single(version, answer),
    ))
}

/// OffsetFetch v8+: one group of the batched answer.
pub(super) fn offset_fetch_group(
    group_id: GroupId,
    answer: Result<Vec<(String, Vec<FetchedOffset>)>, i16>,
) -> OffsetFetchResponseGroup {
    let mut out = OffsetFetchResponseGroup::default().with_group_id(group_id);
    match answer {
        Ok(topics) => {
            out.topics = topics
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetFetchResponseTopics::default()
                        .with_name(TopicName(str_bytes(name)))
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(p, offset, epoch, metadata, error)| {
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(epoch)
                                        .with_metadata(Some(str_bytes(metadata)))
                                        .with_error_code(error)
                                })
                                .collect(),
                        )
                })
                .collect();
        }
        Err(code) => out.error_code = code,
    }
    out
}

/// OffsetFetch v1-7: the one group's answer.
pub(super) fn offset_fetch_single(
    version: i16,
    answer: Result<Vec<(String, Vec<FetchedOffset>)>, i16>,
) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse::default();
    match answer {
        Ok(topics) => {
            response.topics = topics
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(str_bytes(name)))
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(p, offset, epoch, metadata, error)| {
                                    let mut out = OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_metadata(Some(str_bytes(metadata)))
                                        .with_error_code(error);
                                    if version >= 5 {
                                        out.committed_leader_epoch = epoch;
                                    }
                                    out
                                })
                                .collect(),
                        )
                })
                .collect();
        }
        // v1 has no top-level error: the answer is then an empty list.
        Err(code) if version >= 2 => response.error_code = code,
        Err(_) => {}
    }
    response
}

pub async fn handle_offset_delete(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: OffsetDeleteRequest = decode_body(request)?;
    let group_id = body.group_id.0.to_string();
    let topics: Vec<(String, Vec<i32>)> = body
        .topics
        .iter()
        .map(|t| {
            (
                t.name.0.to_string(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    let key = group_id.clone();
    let (error, answers) = on_coordinator(shard, &key, move |_, g| async move {
        g.delete_offsets(&group_id, topics).await
    })
    .await
    .unwrap_or_else(|code| (code, Vec::new()));
    let topics = answers
        .into_iter()
        .map(|(name, partitions)| {
            OffsetDeleteResponseTopic::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(p, code)| {
                            OffsetDeleteResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    Ok(encode_response(
        request,
        &OffsetDeleteResponse::default()
            .with_error_code(error)
            .with_topics(topics),
    ))
}
