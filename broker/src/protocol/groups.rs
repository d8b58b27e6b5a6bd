//! Group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//! OffsetFetch, ListGroups, DescribeGroups, DeleteGroups, OffsetDelete.
//!
//! Each handler decodes its request into plain data, forwards it to the group's coordinator
//! shard (`groups::coordinator_shard`), and encodes the answer for the request's version.
//! The crate refuses to encode a field set to a non-default value at a version without it,
//! so version-dependent fields are set only at versions that have them.

use std::future::Future;
use std::rc::Rc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
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
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{codes, decode_body, encode_response, Reply, Request};
use crate::groups::coordinator::{CommitEntry, FetchedOffset};
use crate::groups::group::{
    GroupDescription, JoinArgs, JoinOutcome, SyncOutcome, GROUP_ID_MAX_BYTES,
};
use crate::groups::{coordinator_shard, GroupCoordinator};
use crate::shard::Shard;

/// FindCoordinator key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

fn str_bytes(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

/// Kafka refuses an empty group id; we also refuse one longer than `GROUP_ID_MAX_BYTES`.
fn invalid_group_id(group_id: &str) -> bool {
    group_id.is_empty() || group_id.len() > GROUP_ID_MAX_BYTES
}

/// Run `f` with the group coordinator of `group_id`'s shard. None if that shard has no
/// coordinator (still starting, or stopping) or is gone.
async fn on_coordinator<R, F, Fut>(shard: &Rc<Shard>, group_id: &str, f: F) -> Option<R>
where
    R: Send + 'static,
    F: FnOnce(Rc<Shard>, Rc<GroupCoordinator>) -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
{
    let target = coordinator_shard(group_id, shard.nr_shards);
    shard
        .call(target, move |s| async move {
            let coordinator = s.groups.get().cloned()?;
            Some(f(s, coordinator).await)
        })
        .await
        .ok()
        .flatten()
}

pub async fn handle_find_coordinator(
    shard: &Rc<Shard>,
    request: &Request,
) -> Result<Reply, String> {
    let body: FindCoordinatorRequest = decode_body(request)?;
    let config = &shard.config;
    // One node: it coordinates every group (the coordinator *shard* is internal). There is
    // no transaction coordinator: TRANSACTIONAL_ID_AUTHORIZATION_FAILED is the answer that
    // librdkafka and the Java client both take as fatal here, so `init_transactions` fails
    // at once with this message; naming this node instead sent them into an InitProducerId
    // retry loop until their timeout (see `admin::handle_init_producer_id`).
    let (error, message) = match body.key_type {
        KEY_TYPE_GROUP => (codes::NONE, None),
        KEY_TYPE_TRANSACTION => (
            codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            Some("transactions are not supported by this broker (shardlog)"),
        ),
        _ => (codes::INVALID_REQUEST, None),
    };
    let (node, host, port) = if error == codes::NONE {
        (
            config.node_id,
            config.advertise_host.clone(),
            i32::from(config.advertise_port),
        )
    } else {
        (-1, String::new(), -1)
    };
    let response = find_coordinator_response(
        request.version,
        body.coordinator_keys,
        (error, message),
        (node, host, port),
    );
    Ok(encode_response(request, &response))
}

/// v0-3 answer for the one key; v4+ for each of the batched keys. The error message goes
/// out from v1 (v0 has no field for it).
fn find_coordinator_response(
    version: i16,
    keys: Vec<StrBytes>,
    (error, message): (i16, Option<&str>),
    (node, host, port): (i32, String, i32),
) -> FindCoordinatorResponse {
    let mut response = FindCoordinatorResponse::default();
    if version >= 4 {
        response.coordinators = keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(node))
                    .with_host(str_bytes(host.clone()))
                    .with_port(port)
                    .with_error_code(error)
                    .with_error_message(message.map(str_bytes))
            })
            .collect();
    } else {
        response.error_code = error;
        if version >= 1 {
            response.error_message = message.map(str_bytes);
        }
        response.node_id = BrokerId(node);
        response.host = str_bytes(host);
        response.port = port;
    }
    response
}

fn join_response(version: i16, outcome: JoinOutcome) -> JoinGroupResponse {
    let members = outcome
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let member = JoinGroupResponseMember::default()
                .with_member_id(str_bytes(id))
                .with_metadata(metadata);
            if version >= 5 {
                member.with_group_instance_id(instance.map(str_bytes))
            } else {
                member
            }
        })
        .collect();
    let mut response = JoinGroupResponse::default()
        .with_error_code(outcome.error)
        .with_generation_id(outcome.generation_id)
        .with_leader(str_bytes(outcome.leader))
        .with_member_id(str_bytes(outcome.member_id))
        .with_members(members);
    if version >= 7 {
        // Nullable from v7: absent until a protocol is chosen.
        response.protocol_type = outcome.protocol_type.map(str_bytes);
        response.protocol_name = outcome.protocol_name.map(str_bytes);
    } else {
        response.protocol_name = Some(str_bytes(outcome.protocol_name.unwrap_or_default()));
    }
    response
}

pub async fn handle_join_group(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: JoinGroupRequest = decode_body(request)?;
    let version = request.version;
    let group_id = body.group_id.0.to_string();
    let member_id = body.member_id.to_string();
    if invalid_group_id(&group_id) {
        let outcome = JoinOutcome::error(codes::INVALID_GROUP_ID, &member_id);
        return Ok(encode_response(request, &join_response(version, outcome)));
    }
    let args = JoinArgs {
        member_id: member_id.clone(),
        group_instance_id: body.group_instance_id.map(|s| s.to_string()),
        client_id: request
            .header
            .client_id
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        client_host: String::new(),
        session_timeout_ms: body.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            body.rebalance_timeout_ms
        } else {
            body.session_timeout_ms
        },
        protocol_type: body.protocol_type.to_string(),
        protocols: body
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let key = group_id.clone();
    let outcome = on_coordinator(shard, &key, move |_, g| async move {
        g.join(group_id, args).await
    })
    .await
    .unwrap_or_else(|| JoinOutcome::error(codes::COORDINATOR_NOT_AVAILABLE, &member_id));
    Ok(encode_response(request, &join_response(version, outcome)))
}

pub async fn handle_sync_group(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: SyncGroupRequest = decode_body(request)?;
    let group_id = body.group_id.0.to_string();
    let outcome = if invalid_group_id(&group_id) {
        SyncOutcome::error(codes::INVALID_GROUP_ID)
    } else {
        let member_id = body.member_id.to_string();
        let instance_id = body.group_instance_id.map(|s| s.to_string());
        let generation = body.generation_id;
        let protocol_type = body.protocol_type.map(|s| s.to_string());
        let protocol_name = body.protocol_name.map(|s| s.to_string());
        let assignments = body
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect();
        let key = group_id.clone();
        on_coordinator(shard, &key, move |_, g| async move {
            g.sync(
                group_id,
                member_id,
                instance_id,
                generation,
                protocol_type,
                protocol_name,
                assignments,
            )
            .await
        })
        .await
        .unwrap_or_else(|| SyncOutcome::error(codes::COORDINATOR_NOT_AVAILABLE))
    };
    Ok(encode_response(
        request,
        &sync_response(request.version, outcome),
    ))
}

fn sync_response(version: i16, outcome: SyncOutcome) -> SyncGroupResponse {
    let mut response = SyncGroupResponse::default()
        .with_error_code(outcome.error)
        .with_assignment(outcome.assignment);
    if version >= 5 {
        response.protocol_type = outcome.protocol_type.map(str_bytes);
        response.protocol_name = outcome.protocol_name.map(str_bytes);
    }
    response
}

pub async fn handle_heartbeat(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: HeartbeatRequest = decode_body(request)?;
    let group_id = body.group_id.0.to_string();
    let error = if invalid_group_id(&group_id) {
        codes::INVALID_GROUP_ID
    } else {
        let member_id = body.member_id.to_string();
        let instance_id = body.group_instance_id.map(|s| s.to_string());
        let generation = body.generation_id;
        let key = group_id.clone();
        on_coordinator(shard, &key, move |_, g| async move {
            g.heartbeat(&group_id, &member_id, instance_id.as_deref(), generation)
        })
        .await
        .unwrap_or(codes::COORDINATOR_NOT_AVAILABLE)
    };
    Ok(encode_response(
        request,
        &HeartbeatResponse::default().with_error_code(error),
    ))
}

pub async fn handle_leave_group(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: LeaveGroupRequest = decode_body(request)?;
    let version = request.version;
    let group_id = body.group_id.0.to_string();
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        body.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(body.member_id.to_string(), None)]
    };
    let (error, per_member) = if invalid_group_id(&group_id) {
        (
            codes::INVALID_GROUP_ID,
            vec![codes::INVALID_GROUP_ID; members.len()],
        )
    } else {
        let asked = members.clone();
        let key = group_id.clone();
        on_coordinator(shard, &key, move |_, g| async move {
            g.leave(&group_id, &asked)
        })
        .await
        .unwrap_or_else(|| {
            (
                codes::COORDINATOR_NOT_AVAILABLE,
                vec![codes::COORDINATOR_NOT_AVAILABLE; members.len()],
            )
        })
    };
    let response = leave_response(version, error, members, per_member);
    Ok(encode_response(request, &response))
}

/// v3+ answers per member; earlier versions carry the one member's error at the top.
fn leave_response(
    version: i16,
    error: i16,
    members: Vec<(String, Option<String>)>,
    per_member: Vec<i16>,
) -> LeaveGroupResponse {
    let mut response = LeaveGroupResponse::default();
    if version >= 3 {
        response.error_code = error;
        response.members = members
            .into_iter()
            .zip(per_member)
            .map(|((id, instance), code)| {
                MemberResponse::default()
                    .with_member_id(str_bytes(id))
                    .with_group_instance_id(instance.map(str_bytes))
                    .with_error_code(code)
            })
            .collect();
    } else {
        response.error_code = per_member.first().copied().unwrap_or(error);
    }
    response
}

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
        .unwrap_or_else(|| vec![codes::COORDINATOR_NOT_AVAILABLE; count])
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
async fn fetch_group_offsets(
    shard: &Rc<Shard>,
    group_id: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<(String, Vec<FetchedOffset>)>, i16> {
    let key = group_id.clone();
    on_coordinator(shard, &key, move |_, g| async move {
        g.fetch_offsets(&group_id, topics)
    })
    .await
    .ok_or(codes::COORDINATOR_NOT_AVAILABLE)
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
fn offset_fetch_group(
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
fn offset_fetch_single(
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

pub async fn handle_list_groups(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: ListGroupsRequest = decode_body(request)?;
    let version = request.version;
    let states: Vec<String> = body
        .states_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let types: Vec<String> = body
        .types_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let mut error = codes::NONE;
    let mut groups = Vec::new();
    for target in 0..shard.nr_shards {
        let listed = shard
            .call(target, |s| async move { s.groups.get().map(|g| g.list()) })
            .await
            .ok()
            .flatten();
        let Some(listed) = listed else {
            error = codes::COORDINATOR_NOT_AVAILABLE;
            continue;
        };
        for (id, protocol_type, state) in listed {
            if !states.is_empty() && !states.contains(&state.to_ascii_lowercase()) {
                continue;
            }
            // Every group here speaks the classic protocol.
            if !types.is_empty() && !types.iter().any(|t| t == "classic") {
                continue;
            }
            groups.push(listed_group(version, id, protocol_type, state));
        }
    }
    Ok(encode_response(
        request,
        &ListGroupsResponse::default()
            .with_error_code(error)
            .with_groups(groups),
    ))
}

fn listed_group(version: i16, id: String, protocol_type: String, state: String) -> ListedGroup {
    let mut group = ListedGroup::default()
        .with_group_id(GroupId(str_bytes(id)))
        .with_protocol_type(str_bytes(protocol_type));
    if version >= 4 {
        group.group_state = str_bytes(state);
    }
    if version >= 5 {
        group.group_type = str_bytes("classic");
    }
    group
}

pub async fn handle_describe_groups(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: DescribeGroupsRequest = decode_body(request)?;
    let version = request.version;
    let mut described = Vec::with_capacity(body.groups.len());
    for group_id in body.groups {
        let id = group_id.0.to_string();
        let key = id.clone();
        let answer = on_coordinator(shard, &key, move |_, g| async move { g.describe(&id) }).await;
        described.push(described_group(version, group_id, answer));
    }
    Ok(encode_response(
        request,
        &DescribeGroupsResponse::default().with_groups(described),
    ))
}

/// One group of a DescribeGroups answer; `answer` is None if the coordinator is away and
/// Some(None) if it does not know the group.
fn described_group(
    version: i16,
    group_id: GroupId,
    answer: Option<Option<GroupDescription>>,
) -> DescribedGroup {
    let mut out = DescribedGroup::default().with_group_id(group_id);
    match answer {
        None => out.error_code = codes::COORDINATOR_NOT_AVAILABLE,
        // Kafka describes an unknown group as Dead, without an error.
        Some(None) => out.group_state = str_bytes("Dead"),
        Some(Some(d)) => {
            out.group_state = str_bytes(d.state);
            out.protocol_type = str_bytes(d.protocol_type);
            out.protocol_data = str_bytes(d.protocol_name);
            out.members = d
                .members
                .into_iter()
                .map(|m| {
                    let mut member = DescribedGroupMember::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_client_id(str_bytes(m.client_id))
                        .with_client_host(str_bytes(m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment);
                    if version >= 4 {
                        member.group_instance_id = m.group_instance_id.map(str_bytes);
                    }
                    member
                })
                .collect();
        }
    }
    out
}

pub async fn handle_delete_groups(shard: &Rc<Shard>, request: &Request) -> Result<Reply, String> {
    let body: DeleteGroupsRequest = decode_body(request)?;
    let mut results = Vec::with_capacity(body.groups_names.len());
    for group_id in body.groups_names {
        let id = group_id.0.to_string();
        let key = id.clone();
        let code = on_coordinator(
            shard,
            &key,
            move |_, g| async move { g.delete_group(&id).await },
        )
        .await
        .unwrap_or(codes::COORDINATOR_NOT_AVAILABLE);
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code),
        );
    }
    Ok(encode_response(
        request,
        &DeleteGroupsResponse::default().with_results(results),
    ))
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
    .unwrap_or((codes::COORDINATOR_NOT_AVAILABLE, Vec::new()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::group::MemberDescription;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::protocol::{Decodable, Encodable};

    /// Every version this broker accepts for `api`.
    fn versions(api: ApiKey) -> Vec<i16> {
        let all: Vec<i16> = (0..=20)
            .filter(|v| super::super::versions::is_supported(api, *v))
            .collect();
        assert!(!all.is_empty(), "{api:?} is advertised");
        all
    }

    /// Encode and decode back: the crate refuses fields a version lacks, so this proves each
    /// builder sets version-dependent fields only where they exist.
    fn round_trip<T: Encodable + Decodable>(api: ApiKey, version: i16, response: &T) -> T {
        let mut buf = BytesMut::new();
        response
            .encode(&mut buf, version)
            .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
        T::decode(&mut buf.freeze(), version).unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"))
    }

    fn s(text: &str) -> String {
        text.to_string()
    }

    #[test]
    fn every_group_response_encodes_at_every_advertised_version() {
        for v in versions(ApiKey::FindCoordinator) {
            let keys = vec![str_bytes("g1"), str_bytes("g2")];
            let r = find_coordinator_response(v, keys, (0, None), (3, s("host"), 9092));
            let back = round_trip(ApiKey::FindCoordinator, v, &r);
            if v >= 4 {
                assert_eq!(back.coordinators.len(), 2);
                assert_eq!(back.coordinators[1].port, 9092);
            } else {
                assert_eq!((back.node_id.0, back.port), (3, 9092));
            }
            let refused = (codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED, Some("no txn"));
            let r = find_coordinator_response(v, vec![str_bytes("t")], refused, (-1, s(""), -1));
            let back = round_trip(ApiKey::FindCoordinator, v, &r);
            let (code, message) = if v >= 4 {
                let c = &back.coordinators[0];
                (c.error_code, c.error_message.clone())
            } else {
                (back.error_code, back.error_message.clone())
            };
            assert_eq!(code, codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
            if v >= 1 {
                assert_eq!(message.as_deref(), Some("no txn"), "v{v}");
            }
        }
        for v in versions(ApiKey::JoinGroup) {
            let outcome = JoinOutcome {
                error: 0,
                generation_id: 4,
                protocol_type: Some(s("consumer")),
                protocol_name: Some(s("range")),
                leader: s("m1"),
                member_id: s("m1"),
                members: vec![(s("m1"), Some(s("i1")), Bytes::from_static(b"meta"))],
            };
            let back = round_trip(ApiKey::JoinGroup, v, &join_response(v, outcome));
            assert_eq!(back.generation_id, 4);
            assert_eq!(back.protocol_name.as_deref(), Some("range"));
            assert_eq!(back.members[0].metadata, Bytes::from_static(b"meta"));
            let required = JoinOutcome::error(codes::MEMBER_ID_REQUIRED, "new-id");
            let back = round_trip(ApiKey::JoinGroup, v, &join_response(v, required));
            assert_eq!(back.member_id.as_str(), "new-id");
        }
        for v in versions(ApiKey::SyncGroup) {
            let outcome = SyncOutcome {
                error: 0,
                protocol_type: Some(s("consumer")),
                protocol_name: Some(s("range")),
                assignment: Bytes::from_static(b"assigned"),
            };
            let back = round_trip(ApiKey::SyncGroup, v, &sync_response(v, outcome));
            assert_eq!(back.assignment, Bytes::from_static(b"assigned"));
        }
        for v in versions(ApiKey::LeaveGroup) {
            let members = vec![(s("m1"), Some(s("i1")))];
            let r = leave_response(v, 0, members, vec![codes::UNKNOWN_MEMBER_ID]);
            let back = round_trip(ApiKey::LeaveGroup, v, &r);
            if v >= 3 {
                assert_eq!(back.members[0].error_code, codes::UNKNOWN_MEMBER_ID);
            } else {
                assert_eq!(back.error_code, codes::UNKNOWN_MEMBER_ID);
            }
        }
        let fetched = || Ok(vec![(s("t"), vec![(0, 42, 7, s("meta"), 0)])]);
        for v in versions(ApiKey::OffsetFetch) {
            if v >= 8 {
                let group = offset_fetch_group(GroupId(str_bytes("g")), fetched());
                let r = OffsetFetchResponse::default().with_groups(vec![group]);
                let back = round_trip(ApiKey::OffsetFetch, v, &r);
                assert_eq!(back.groups[0].topics[0].partitions[0].committed_offset, 42);
            } else {
                let back = round_trip(ApiKey::OffsetFetch, v, &offset_fetch_single(v, fetched()));
                assert_eq!(back.topics[0].partitions[0].committed_offset, 42);
                round_trip(ApiKey::OffsetFetch, v, &offset_fetch_single(v, Err(15)));
            }
        }
        for v in versions(ApiKey::ListGroups) {
            let group = listed_group(v, s("g"), s("consumer"), s("Stable"));
            let r = ListGroupsResponse::default().with_groups(vec![group]);
            let back = round_trip(ApiKey::ListGroups, v, &r);
            assert_eq!(back.groups[0].group_id.0.as_str(), "g");
        }
        for v in versions(ApiKey::DescribeGroups) {
            let description = GroupDescription {
                state: s("Stable"),
                protocol_type: s("consumer"),
                protocol_name: s("range"),
                members: vec![MemberDescription {
                    member_id: s("m1"),
                    group_instance_id: Some(s("i1")),
                    client_id: s("c"),
                    client_host: s("/127.0.0.1"),
                    metadata: Bytes::from_static(b"meta"),
                    assignment: Bytes::from_static(b"assigned"),
                }],
            };
            for answer in [Some(Some(description)), Some(None), None] {
                let group = described_group(v, GroupId(str_bytes("g")), answer);
                let r = DescribeGroupsResponse::default().with_groups(vec![group]);
                round_trip(ApiKey::DescribeGroups, v, &r);
            }
        }
    }
}
