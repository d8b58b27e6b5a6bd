//! Group admin APIs: FindCoordinator (which shard's broker address coordinates a group),
//! ListGroups (every shard), DescribeGroups, DeleteGroups. Never changes a group's members
//! or offsets except DeleteGroups of an empty group (through its coordinator).

use std::rc::Rc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    ListGroupsRequest, ListGroupsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{on_coordinator, str_bytes};
use crate::catalog::OFFSETS_TOPIC;
use crate::codes;
use crate::groups::group::GroupDescription;
use crate::groups::partition_for;
use crate::protocol::{decode_body, encode_response, Reply, Request};
use crate::shard::Shard;

/// FindCoordinator key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub async fn handle_find_coordinator(
    shard: &Rc<Shard>,
    request: &Request,
) -> Result<Reply, String> {
    let body: FindCoordinatorRequest = decode_body(request)?;
    // A group's coordinator is the leader of its `__consumer_offsets` partition (created
    // here on the first group request, as Kafka does); every broker answers the same, from
    // the catalog. There is no transaction
    // coordinator: TRANSACTIONAL_ID_AUTHORIZATION_FAILED is the answer that librdkafka and
    // the Java client both take as fatal here, so `init_transactions` fails at once with
    // this message; naming a broker instead sent them into an InitProducerId retry loop
    // until their timeout (see `admin::handle_init_producer_id`).
    let (mut error, message) = match body.key_type {
        KEY_TYPE_GROUP => (codes::NONE, None),
        KEY_TYPE_TRANSACTION => (
            codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            Some("transactions are not supported by this broker (shardlog)"),
        ),
        _ => (codes::INVALID_REQUEST, None),
    };
    let keys = if request.version >= 4 {
        body.coordinator_keys
    } else {
        vec![body.key]
    };
    if error == codes::NONE {
        if let Err((code, why)) = shard.ensure_offsets_topic().await {
            tracing::warn!(code, "creating the offsets topic: {why}");
        }
    }
    let catalog = shard.catalog();
    let offsets = catalog.topics.get(OFFSETS_TOPIC);
    let coordinators: Vec<(i32, String, i32)> = keys
        .iter()
        .map(|key| {
            let broker = offsets
                .and_then(|t| {
                    t.placement
                        .get(partition_for(key, t.partition_count()) as usize)
                })
                .and_then(|p| catalog.brokers.get(&p.leader))
                .filter(|b| !b.fenced);
            match broker {
                Some(b) if error == codes::NONE => (b.id, b.host.clone(), i32::from(b.port)),
                _ => (-1, String::new(), -1),
            }
        })
        .collect();
    if error == codes::NONE && coordinators.iter().any(|c| c.0 == -1) {
        error = codes::COORDINATOR_NOT_AVAILABLE;
    }
    let response = find_coordinator_response(request.version, keys, (error, message), coordinators);
    Ok(encode_response(request, &response))
}

/// v0-3 answer for the one key; v4+ for each of the batched keys. The error message goes
/// out from v1 (v0 has no field for it).
pub(super) fn find_coordinator_response(
    version: i16,
    keys: Vec<StrBytes>,
    (error, message): (i16, Option<&str>),
    coordinators: Vec<(i32, String, i32)>,
) -> FindCoordinatorResponse {
    let mut response = FindCoordinatorResponse::default();
    if version >= 4 {
        response.coordinators = keys
            .into_iter()
            .zip(coordinators)
            .map(|(key, (node, host, port))| {
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
        let (node, host, port) = coordinators
            .into_iter()
            .next()
            .unwrap_or((-1, String::new(), -1));
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

pub(super) fn listed_group(
    version: i16,
    id: String,
    protocol_type: String,
    state: String,
) -> ListedGroup {
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

/// One group of a DescribeGroups answer; `answer` is Err(code) if the coordinator cannot
/// answer here and Ok(None) if it does not know the group.
pub(super) fn described_group(
    version: i16,
    group_id: GroupId,
    answer: Result<Option<GroupDescription>, i16>,
) -> DescribedGroup {
    let mut out = DescribedGroup::default().with_group_id(group_id);
    match answer {
        Err(code) => out.error_code = code,
        // Kafka describes an unknown group as Dead, without an error.
        Ok(None) => out.group_state = str_bytes("Dead"),
        Ok(Some(d)) => {
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
        .unwrap_or_else(|code| code);
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
