//! Group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//! OffsetFetch, ListGroups, DescribeGroups, DeleteGroups, OffsetDelete.
//!
//! Each handler decodes its request into plain data, forwards it to the group's coordinator
//! shard (the owner of the group's `__consumer_offsets` partition, when this node leads
//! it), and encodes the answer for the request's version.
//! The crate refuses to encode a field set to a non-default value at a version without it,
//! so version-dependent fields are set only at versions that have them.
//!
//! Split by what the APIs serve: `membership` (JoinGroup, SyncGroup, Heartbeat, LeaveGroup),
//! `offsets` (OffsetCommit, OffsetFetch, OffsetDelete) and `admin` (FindCoordinator,
//! ListGroups, DescribeGroups, DeleteGroups). This file holds what they share: the group id
//! check and the hop to the coordinator shard.

use std::future::Future;
use std::rc::Rc;

use kafka_protocol::protocol::StrBytes;

use crate::catalog::OFFSETS_TOPIC;
use crate::codes;
use crate::groups::group::GROUP_ID_MAX_BYTES;
use crate::groups::{partition_for, GroupCoordinator};
use crate::shard::Shard;

mod admin;
mod membership;
mod offsets;

pub use admin::{
    handle_delete_groups, handle_describe_groups, handle_find_coordinator, handle_list_groups,
};
pub use membership::{handle_heartbeat, handle_join_group, handle_leave_group, handle_sync_group};
pub use offsets::{handle_offset_commit, handle_offset_delete, handle_offset_fetch};

fn str_bytes(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

/// Kafka refuses an empty group id; we also refuse one longer than `GROUP_ID_MAX_BYTES`.
fn invalid_group_id(group_id: &str) -> bool {
    group_id.is_empty() || group_id.len() > GROUP_ID_MAX_BYTES
}

/// Run `f` with the group coordinator of `group_id`: the shard owning the group's offsets
/// partition, if this node leads it. Kafka's answers otherwise, all retriable for clients:
/// NOT_COORDINATOR only when another broker leads the partition (the client asks
/// FindCoordinator again); COORDINATOR_NOT_AVAILABLE when the partition has no leader, the
/// offsets topic is not known here yet, or the shard has no coordinator (starting,
/// stopping); COORDINATOR_LOAD_IN_PROGRESS while this node is taking the partition over
/// (its shard has not adopted the catalog naming it leader, or is replaying the partition).
async fn on_coordinator<R, F, Fut>(shard: &Rc<Shard>, group_id: &str, f: F) -> Result<R, i16>
where
    R: Send + 'static,
    F: FnOnce(Rc<Shard>, Rc<GroupCoordinator>) -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
{
    // Without the topic here, this node cannot tell who coordinates: it was just created
    // elsewhere and this node's catalog is behind (a client only comes here after a
    // FindCoordinator, which creates it). NOT_COORDINATOR would be a claim it cannot make.
    let count = shard
        .catalog()
        .topics
        .get(OFFSETS_TOPIC)
        .map(|t| t.partition_count())
        .ok_or(codes::COORDINATOR_NOT_AVAILABLE)?;
    let partition = partition_for(group_id, count);
    let target = shard
        .route(OFFSETS_TOPIC, partition)
        .map_err(|code| unserved_error(Err(code), shard.id))?;
    shard
        .call(target, move |s| async move {
            let Some(coordinator) = s.groups.get().cloned() else {
                return Err(codes::COORDINATOR_NOT_AVAILABLE);
            };
            match coordinator.serving_partition(partition) {
                Ok(()) => Ok(f(s, coordinator).await),
                // The coordinator does not hold it: ask this shard's own catalog why, which
                // may be newer or older than the one that routed the request here.
                Err(codes::NOT_COORDINATOR) => {
                    Err(unserved_error(s.route(OFFSETS_TOPIC, partition), s.id))
                }
                Err(code) => Err(code),
            }
        })
        .await
        .unwrap_or(Err(codes::COORDINATOR_NOT_AVAILABLE))
}

/// The error for a group whose offsets partition is not served by the coordinator of shard
/// `me`, from where that shard's catalog routes the partition (`Shard::route`).
fn unserved_error(route: Result<usize, i16>, me: usize) -> i16 {
    match route {
        // This node leads it and this shard owns it: the shard is adopting the catalog that
        // says so (the load starts at the end of the adoption). Two shards adopt a catalog
        // one after the other, so another shard may have routed the request here first.
        Ok(owner) if owner == me => codes::COORDINATOR_LOAD_IN_PROGRESS,
        // The partition moved to another shard of this node meanwhile: retry.
        Ok(_) => codes::COORDINATOR_NOT_AVAILABLE,
        // This shard's catalog does not have the topic yet, while the routing shard's does.
        Err(codes::UNKNOWN_TOPIC_OR_PARTITION) => codes::COORDINATOR_LOAD_IN_PROGRESS,
        Err(codes::LEADER_NOT_AVAILABLE) => codes::COORDINATOR_NOT_AVAILABLE,
        // NOT_LEADER_OR_FOLLOWER: another broker leads it, so it coordinates the group.
        Err(_) => codes::NOT_COORDINATOR,
    }
}

#[cfg(test)]
mod tests {
    use super::admin::{described_group, find_coordinator_response, listed_group};
    use super::membership::{join_response, leave_response, sync_response};
    use super::offsets::{offset_fetch_group, offset_fetch_single};
    use super::*;
    use crate::groups::group::MemberDescription;
    use crate::groups::group::{GroupDescription, JoinOutcome, SyncOutcome};
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::messages::{
        DescribeGroupsResponse, GroupId, ListGroupsResponse, OffsetFetchResponse,
    };
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
    fn not_coordinator_is_answered_only_when_another_broker_leads_the_partition() {
        let me = 1;
        assert_eq!(
            unserved_error(Err(codes::NOT_LEADER_OR_FOLLOWER), me),
            codes::NOT_COORDINATOR
        );
        // Taking over: this shard's adoption has not reached the load yet, or has not
        // reached the topic at all while another shard of this node already routes to it.
        assert_eq!(
            unserved_error(Ok(me), me),
            codes::COORDINATOR_LOAD_IN_PROGRESS
        );
        assert_eq!(
            unserved_error(Err(codes::UNKNOWN_TOPIC_OR_PARTITION), me),
            codes::COORDINATOR_LOAD_IN_PROGRESS
        );
        assert_eq!(
            unserved_error(Err(codes::LEADER_NOT_AVAILABLE), me),
            codes::COORDINATOR_NOT_AVAILABLE
        );
        assert_eq!(unserved_error(Ok(0), me), codes::COORDINATOR_NOT_AVAILABLE);
    }

    #[test]
    fn every_group_response_encodes_at_every_advertised_version() {
        for v in versions(ApiKey::FindCoordinator) {
            let keys = vec![str_bytes("g1"), str_bytes("g2")];
            let coordinators = vec![(3, s("host"), 9092); keys.len()];
            let r = find_coordinator_response(v, keys, (0, None), coordinators);
            let back = round_trip(ApiKey::FindCoordinator, v, &r);
            if v >= 4 {
                assert_eq!(back.coordinators.len(), 2);
                assert_eq!(back.coordinators[1].port, 9092);
            } else {
                assert_eq!((back.node_id.0, back.port), (3, 9092));
            }
            let refused = (codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED, Some("no txn"));
            let r =
                find_coordinator_response(v, vec![str_bytes("t")], refused, vec![(-1, s(""), -1)]);
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
            for answer in [Ok(Some(description)), Ok(None), Err(codes::NOT_COORDINATOR)] {
                let group = described_group(v, GroupId(str_bytes("g")), answer);
                let r = DescribeGroupsResponse::default().with_groups(vec![group]);
                round_trip(ApiKey::DescribeGroups, v, &r);
            }
        }
    }
}
