//! Version negotiation: what the broker offers (its ApiVersions answer), what this client
//! speaks (each request type's [`ClientRequest::CLIENT_VERSIONS`]), and the choice between
//! them: the highest version in both ranges, as Kafka clients choose.
//!
//! Owns the client's version ranges and the reading of ApiVersions answers, including the
//! UNSUPPORTED_VERSION answer that tells the client to ask again at v0. Never does I/O and
//! never guesses a version the broker did not offer.
//!
//! ```
//! use kafka_protocol::messages::{ApiKey, MetadataRequest};
//! use kafka_protocol::protocol::VersionRange;
//! use shardlog_client::versions::BrokerVersions;
//!
//! let broker = BrokerVersions::from_ranges([(ApiKey::Metadata as i16, 0, 9)]);
//! assert_eq!(broker.version_of::<MetadataRequest>().unwrap(), 9);
//! assert!(broker.pick(ApiKey::Fetch as i16, VersionRange { min: 4, max: 12 }).is_err());
//! ```

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, DeleteGroupsRequest,
    DeleteTopicsRequest, DescribeClusterRequest, DescribeConfigsRequest, DescribeGroupsRequest,
    FetchRequest, FindCoordinatorRequest, IncrementalAlterConfigsRequest, ListGroupsRequest,
    ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, OffsetFetchRequest, ProduceRequest,
};
use kafka_protocol::protocol::{Decodable, Request, VersionRange};

use crate::error::{Api, Error, Result};

/// Kafka's UNSUPPORTED_VERSION error code.
pub const UNSUPPORTED_VERSION: i16 = 35;
/// The ApiVersions version asked first: v3 (flexible, sends the client's software name), as
/// current Kafka clients do; older brokers answer it with UNSUPPORTED_VERSION.
pub const API_VERSIONS_FIRST: i16 = 3;
/// The ApiVersions version asked after UNSUPPORTED_VERSION: v0, which every broker answers.
pub const API_VERSIONS_FALLBACK: i16 = 0;

/// A request type this client builds, with the versions it builds and reads correctly.
///
/// Each range is a subset of the kafka-protocol crate's range, bounded below by the first
/// version that has every field the tools set (a field set at a version that lacks it is an
/// encode error), and above by the newest version whose answer the tools were checked against.
pub trait ClientRequest: Request {
    /// Versions of this request the client speaks.
    const CLIENT_VERSIONS: VersionRange;
}

macro_rules! client_versions {
    ($($request:ty => $min:literal ..= $max:literal, $why:literal;)*) => {$(
        #[doc = $why]
        impl ClientRequest for $request {
            const CLIENT_VERSIONS: VersionRange = VersionRange { min: $min, max: $max };
        }
    )*};
}

client_versions! {
    MetadataRequest => 4..=12,
        "v4+: `allow_auto_topic_creation = false` (a tool must never create a topic by asking).";
    CreateTopicsRequest => 2..=7, "v2+: the crate's oldest; v7 is the newest checked.";
    ListOffsetsRequest => 1..=7,
        "v1+: one offset per partition (v0 answers a list of old-style offsets).";
    ListGroupsRequest => 4..=5, "v4+: the answer carries each group's state.";
    DescribeGroupsRequest => 0..=5,
        "Up to v5: v6 answers an unknown group with an error instead of state Dead.";
    OffsetFetchRequest => 2..=7,
        "v2+: a null topic list means every partition; v8+ replaces `group_id` with a list.";
    OffsetCommitRequest => 2..=9, "v2+: the crate's oldest; commits outside group management.";
    DeleteGroupsRequest => 0..=2, "Every version.";
    DeleteTopicsRequest => 1..=5, "Up to v5: v6 names topics in a list of structs.";
    DescribeConfigsRequest => 1..=4, "v1+: the answer carries each config's source.";
    IncrementalAlterConfigsRequest => 0..=1, "Every version.";
    FindCoordinatorRequest => 1..=3,
        "v1+: the key type (group); v4+ asks for a list of keys instead of one.";
    DescribeClusterRequest => 0..=2, "Every version; v2 lists fenced brokers when asked.";
    ProduceRequest => 3..=9, "v3+: record batches (format v2); v10+ is not checked.";
    FetchRequest => 4..=12,
        "v4+: record batches with a last stable offset; v13+ names topics by id.";
}

/// The version ranges a broker offers, per API key, from its ApiVersions answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerVersions {
    /// (API key, min, max), as the broker listed them.
    ranges: Vec<(i16, VersionRange)>,
}

impl BrokerVersions {
    /// From (API key, min, max) triples.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (i16, i16, i16)>) -> BrokerVersions {
        BrokerVersions {
            ranges: ranges
                .into_iter()
                .map(|(key, min, max)| (key, VersionRange { min, max }))
                .collect(),
        }
    }

    /// The broker's range of `key`, if it offers that API.
    pub fn range(&self, key: i16) -> Option<VersionRange> {
        self.ranges
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, range)| *range)
    }

    /// The highest version of `key` in both the broker's range and `client`'s.
    pub fn pick(&self, key: i16, client: VersionRange) -> Result<i16> {
        let api = Api(key);
        let broker = self.range(key).ok_or(Error::NotOffered { api })?;
        let version = client.max.min(broker.max);
        if version < client.min.max(broker.min) {
            return Err(Error::NoCommonVersion {
                api,
                client,
                broker,
            });
        }
        Ok(version)
    }

    /// The highest version of `R` both sides speak.
    pub fn version_of<R: ClientRequest>(&self) -> Result<i16> {
        self.pick(R::KEY, R::CLIENT_VERSIONS)
    }
}

/// Reads an ApiVersions answer to a request of `version`. `Ok(None)` means the broker answered
/// UNSUPPORTED_VERSION, which it does in a v0 body whatever version was asked, so the caller
/// asks again at [`API_VERSIONS_FALLBACK`].
pub fn parse_api_versions(mut body: Bytes, version: i16) -> Result<Option<BrokerVersions>> {
    // The error code leads the body at every version: read it before decoding as `version`,
    // since an UNSUPPORTED_VERSION answer is a v0 body.
    if body.len() >= 2 && i16::from_be_bytes([body[0], body[1]]) == UNSUPPORTED_VERSION {
        return Ok(None);
    }
    let api = Api(ApiKey::ApiVersions as i16);
    let parsed = ApiVersionsResponse::decode(&mut body, version).map_err(|e| Error::Decode {
        api,
        version,
        detail: format!("{e:#}"),
    })?;
    if parsed.error_code != 0 {
        return Err(Error::ApiVersions {
            version,
            code: parsed.error_code,
        });
    }
    Ok(Some(BrokerVersions::from_ranges(
        parsed
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version)),
    )))
}

/// The ApiVersions request of `version`, naming the client's software at v3 and later
/// (Kafka requires a name of letters, digits, '-' and '.').
pub fn api_versions_request(software_name: &'static str, version: i16) -> ApiVersionsRequest {
    let request = ApiVersionsRequest::default();
    if version < 3 {
        return request;
    }
    request
        .with_client_software_name(kafka_protocol::protocol::StrBytes::from_static_str(
            software_name,
        ))
        .with_client_software_version(kafka_protocol::protocol::StrBytes::from_static_str(env!(
            "CARGO_PKG_VERSION"
        )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::protocol::Encodable;

    fn api_versions_body(error_code: i16, version: i16) -> Bytes {
        let keys = [(3, 0, 12), (0, 0, 9), (1, 4, 12), (2, 0, 7), (16, 0, 5)]
            .map(|(key, min, max)| {
                ApiVersion::default()
                    .with_api_key(key)
                    .with_min_version(min)
                    .with_max_version(max)
            })
            .to_vec();
        let response = ApiVersionsResponse::default()
            .with_error_code(error_code)
            .with_api_keys(keys);
        let mut body = BytesMut::new();
        response.encode(&mut body, version).unwrap();
        body.freeze()
    }

    #[test]
    fn the_highest_version_in_both_ranges_is_chosen() {
        let broker = BrokerVersions::from_ranges([(3, 0, 7), (16, 0, 5), (2, 0, 9)]);
        assert_eq!(broker.version_of::<MetadataRequest>().unwrap(), 7);
        assert_eq!(broker.version_of::<ListGroupsRequest>().unwrap(), 5);
        assert_eq!(broker.version_of::<ListOffsetsRequest>().unwrap(), 7);
        let newer_broker = BrokerVersions::from_ranges([(3, 0, 13)]);
        assert_eq!(newer_broker.version_of::<MetadataRequest>().unwrap(), 12);
    }

    #[test]
    fn disjoint_ranges_and_missing_apis_are_refused_by_name() {
        let broker = BrokerVersions::from_ranges([(3, 0, 3), (16, 5, 9)]);
        let error = broker.version_of::<MetadataRequest>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "no common version of Metadata: client 4..12, broker 0..3"
        );
        assert_eq!(broker.version_of::<ListGroupsRequest>().unwrap(), 5);
        let error = broker.version_of::<DeleteGroupsRequest>().unwrap_err();
        assert_eq!(error.to_string(), "the broker does not offer DeleteGroups");
    }

    #[test]
    fn every_client_range_lies_within_the_crates_range() {
        fn check<R: ClientRequest>() {
            let (client, known) = (R::CLIENT_VERSIONS, R::VERSIONS);
            assert!(
                known.min <= client.min && client.min <= client.max && client.max <= known.max,
                "{}: client {client}, crate {known}",
                Api(R::KEY)
            );
        }
        check::<MetadataRequest>();
        check::<CreateTopicsRequest>();
        check::<ListOffsetsRequest>();
        check::<ListGroupsRequest>();
        check::<DescribeGroupsRequest>();
        check::<OffsetFetchRequest>();
        check::<OffsetCommitRequest>();
        check::<DeleteGroupsRequest>();
    }

    #[test]
    fn an_unsupported_version_answer_means_asking_again_at_v0() {
        // What a broker without v3 sends: error 35 in a v0 body.
        assert_eq!(
            parse_api_versions(api_versions_body(UNSUPPORTED_VERSION, 0), 3).unwrap(),
            None
        );
        let at_v0 = parse_api_versions(api_versions_body(0, 0), 0)
            .unwrap()
            .unwrap();
        assert_eq!(at_v0.range(1), Some(VersionRange { min: 4, max: 12 }));
        let at_v3 = parse_api_versions(api_versions_body(0, 3), 3)
            .unwrap()
            .unwrap();
        assert_eq!(at_v3, at_v0);
    }

    #[test]
    fn other_api_versions_errors_and_garbage_are_errors_not_panics() {
        assert!(matches!(
            parse_api_versions(api_versions_body(42, 3), 3),
            Err(Error::ApiVersions { code: 42, .. })
        ));
        for garbage in [&[][..], &[0][..], &[0, 0, 0xff][..]] {
            assert!(matches!(
                parse_api_versions(Bytes::copy_from_slice(garbage), 3),
                Err(Error::Decode { .. })
            ));
        }
    }

    #[test]
    fn the_software_name_is_sent_only_where_the_version_has_it() {
        let mut out = BytesMut::new();
        let v0 = api_versions_request("shardlog-test", 0);
        v0.encode(&mut out, 0).unwrap();
        assert!(out.is_empty(), "ApiVersions v0 has no fields");
        let v3 = api_versions_request("shardlog-test", 3);
        assert_eq!(v3.client_software_name.as_str(), "shardlog-test");
        v3.encode(&mut out, 3).unwrap();
    }
}
