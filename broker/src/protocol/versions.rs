//! ApiVersions: the APIs and version ranges this broker implements, and the answer that
//! lets every client step down to a version both sides speak.
//!
//! Advertise exactly what is implemented (librdkafka uses whatever is listed). Produce is
//! listed from v0 as Apache Kafka does, because older librdkafka turns off compression codecs
//! otherwise; versions below 3 (pre-RecordBatch message sets) are refused when used.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use super::{codes, encode_response_version, Reply, Request};

/// (api, min advertised, max advertised, min actually decodable).
const SUPPORTED: &[(ApiKey, i16, i16, i16)] = &[
    (ApiKey::Produce, 0, 9, 3),
    (ApiKey::Fetch, 4, 12, 4),
    (ApiKey::ListOffsets, 1, 6, 1),
    // v0-1 predate current_leader_epoch; Kafka 4 and the crate start at v2.
    (ApiKey::OffsetForLeaderEpoch, 2, 4, 2),
    (ApiKey::Metadata, 1, 12, 1),
    (ApiKey::DescribeCluster, 0, 2, 0),
    (ApiKey::ApiVersions, 0, 3, 0),
    (ApiKey::CreateTopics, 2, 7, 2),
    (ApiKey::DeleteTopics, 1, 6, 1),
    (ApiKey::InitProducerId, 0, 4, 0),
    (ApiKey::DescribeConfigs, 1, 4, 1),
    (ApiKey::AlterConfigs, 0, 2, 0),
    (ApiKey::IncrementalAlterConfigs, 0, 1, 0),
    (ApiKey::CreatePartitions, 0, 3, 0),
    // Consumer groups (protocol/groups.rs). OffsetCommit decodes from v2 in the crate.
    (ApiKey::FindCoordinator, 0, 6, 0),
    (ApiKey::JoinGroup, 0, 9, 0),
    (ApiKey::SyncGroup, 0, 5, 0),
    (ApiKey::Heartbeat, 0, 4, 0),
    (ApiKey::LeaveGroup, 0, 5, 0),
    (ApiKey::OffsetCommit, 2, 9, 2),
    (ApiKey::OffsetFetch, 1, 9, 1),
    (ApiKey::ListGroups, 0, 5, 0),
    (ApiKey::DescribeGroups, 0, 5, 0),
    (ApiKey::DeleteGroups, 0, 2, 0),
    (ApiKey::OffsetDelete, 0, 0, 0),
];

/// Whether a request of this api and version can be decoded and served.
pub fn is_supported(api: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|(key, _, max, decodable)| *key == api && (*decodable..=*max).contains(&version))
}

fn advertised() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|(key, min, max, _)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect()
}

/// Answer ApiVersions. An unknown version gets error 35 in a v0 body listing our ranges.
pub fn handle(request: &Request) -> Reply {
    let mut response = ApiVersionsResponse::default().with_api_keys(advertised());
    if is_supported(ApiKey::ApiVersions, request.version) {
        encode_response_version(request, &response, request.version)
    } else {
        response.error_code = codes::UNSUPPORTED_VERSION;
        encode_response_version(request, &response, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_is_advertised_from_v0_but_decoded_from_v3() {
        assert!(advertised()
            .iter()
            .any(|v| v.api_key == 0 && v.min_version == 0));
        assert!(!is_supported(ApiKey::Produce, 2));
        assert!(is_supported(ApiKey::Produce, 3));
        assert!(is_supported(ApiKey::Produce, 9));
        assert!(!is_supported(ApiKey::Produce, 10));
    }

    #[test]
    fn every_advertised_range_is_one_the_crate_can_decode() {
        for (key, _, max, decodable) in SUPPORTED {
            let range = key.valid_versions();
            assert!(range.min <= *decodable && *max <= range.max, "{key:?}");
        }
    }
}
