//! Group membership APIs: JoinGroup, SyncGroup, Heartbeat, LeaveGroup. Each decodes its
//! request, runs it on the group's coordinator shard, and encodes the answer for the
//! request's version. Never touches committed offsets, and never sets a field at a version
//! without it.

use std::rc::Rc;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, SyncGroupRequest, SyncGroupResponse,
};

use super::{invalid_group_id, on_coordinator, str_bytes};
use crate::codes;
use crate::groups::group::{JoinArgs, JoinOutcome, SyncOutcome};
use crate::protocol::{decode_body, encode_response, Reply, Request};
use crate::shard::Shard;

pub(super) fn join_response(version: i16, outcome: JoinOutcome) -> JoinGroupResponse {
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
    .unwrap_or_else(|code| JoinOutcome::error(code, &member_id));
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
        .unwrap_or_else(SyncOutcome::error)
    };
    Ok(encode_response(
        request,
        &sync_response(request.version, outcome),
    ))
}

pub(super) fn sync_response(version: i16, outcome: SyncOutcome) -> SyncGroupResponse {
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
        .unwrap_or_else(|code| code)
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
        .unwrap_or_else(|code| (code, vec![code; members.len()]))
    };
    let response = leave_response(version, error, members, per_member);
    Ok(encode_response(request, &response))
}

/// v3+ answers per member; earlier versions carry the one member's error at the top.
pub(super) fn leave_response(
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
