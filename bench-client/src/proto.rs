//! Kafka wire protocol for the bench: the version ranges of the Produce and Fetch requests the
//! workers encode themselves, the blocking control-plane client (Metadata, CreateTopics,
//! ListOffsets), and the hand-written Produce request prefix that lets a batch be encoded
//! straight into a connection's send buffer.
//!
//! Connecting with a deadline, ApiVersions (v3, then v0 on UNSUPPORTED_VERSION), version
//! choice and framing come from the shared `shardlog-client` crate; everything except the
//! Produce prefix goes through the `kafka-protocol` crate, which handles flexible versions
//! (compact encodings, request header v2) from the version number alone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::BytesMut;
use kafka_protocol::messages::{
    create_topics_request::CreatableTopic, list_offsets_request::ListOffsetsPartition,
    list_offsets_request::ListOffsetsTopic, metadata_request::MetadataRequestTopic, ApiKey,
    BrokerId, CreateTopicsRequest, ListOffsetsRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes, VersionRange};
use shardlog_client::{BrokerVersions, Client, Options};

pub use shardlog_client::connect_with_deadline;
pub use shardlog_client::frame::{decode_response_header, take_frame};

/// Client id sent in every request header.
pub const CLIENT_ID: &str = "shardlog-bench";

/// Produce versions the hand-written prefix below encodes (checked against the crate's
/// decoder at each one): v3 is the first with record batches, v9 the last before topic ids.
pub const PRODUCE_VERSIONS: VersionRange = VersionRange { min: 3, max: 9 };
/// Fetch versions the workers' Fetch requests and response handling are written for.
pub const FETCH_VERSIONS: VersionRange = VersionRange { min: 4, max: 12 };

/// The versions agreed with one broker.
#[derive(Debug, Clone, Copy)]
pub struct Versions {
    pub metadata: i16,
    pub produce: i16,
    pub fetch: i16,
    pub list_offsets: i16,
    pub create_topics: i16,
}

/// Picks the highest version both sides support for each API the bench uses: the client
/// crate's ranges for the control plane, the bench's own for the Produce and Fetch it encodes.
pub fn negotiate(broker: &BrokerVersions) -> Result<Versions> {
    Ok(Versions {
        metadata: broker.version_of::<MetadataRequest>()?,
        produce: broker.pick(ApiKey::Produce as i16, PRODUCE_VERSIONS)?,
        fetch: broker.pick(ApiKey::Fetch as i16, FETCH_VERSIONS)?,
        list_offsets: broker.version_of::<ListOffsetsRequest>()?,
        create_topics: broker.version_of::<CreateTopicsRequest>()?,
    })
}

/// Appends a size-prefixed request frame (header + body) with the bench's client id to `out`.
pub fn encode_request<R: Request>(
    out: &mut BytesMut,
    correlation_id: i32,
    version: i16,
    body: &R,
) -> Result<()> {
    let client_id = StrBytes::from_static_str(CLIENT_ID);
    shardlog_client::frame::encode_request(out, correlation_id, version, &client_id, body)?;
    Ok(())
}

/// Whether Produce at `version` uses flexible encodings (compact strings, tagged fields).
fn produce_flexible(version: i16) -> bool {
    version >= 9
}

/// Appends a Produce request for one batch of one partition, up to and including the record
/// length prefix; the caller appends `records_bytes` of batch and then `produce_suffix`.
/// Hand-written so the batch is encoded once, in place; checked against the crate's decoder.
#[allow(clippy::too_many_arguments)] // each is one field of the request, named at the call
pub fn produce_prefix(
    out: &mut Vec<u8>,
    version: i16,
    correlation_id: i32,
    acks: i16,
    timeout_ms: i32,
    topic: &str,
    partition: i32,
    records_bytes: usize,
) {
    let flexible = produce_flexible(version);
    let start = out.len();
    out.extend_from_slice(&0i32.to_be_bytes()); // frame size, patched below
    out.extend_from_slice(&(ApiKey::Produce as i16).to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&correlation_id.to_be_bytes());
    out.extend_from_slice(&(CLIENT_ID.len() as i16).to_be_bytes()); // client id is never compact
    out.extend_from_slice(CLIENT_ID.as_bytes());
    if flexible {
        out.push(0); // header tagged fields
        out.push(0); // transactional id: compact null
    } else {
        out.extend_from_slice(&(-1i16).to_be_bytes()); // transactional id: null
    }
    out.extend_from_slice(&acks.to_be_bytes());
    out.extend_from_slice(&timeout_ms.to_be_bytes());
    if flexible {
        put_uvarint(out, 2); // one topic
        put_uvarint(out, topic.len() as u64 + 1);
    } else {
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    }
    out.extend_from_slice(topic.as_bytes());
    if flexible {
        put_uvarint(out, 2); // one partition
    } else {
        out.extend_from_slice(&1i32.to_be_bytes());
    }
    out.extend_from_slice(&partition.to_be_bytes());
    if flexible {
        put_uvarint(out, records_bytes as u64 + 1);
    } else {
        out.extend_from_slice(&(records_bytes as i32).to_be_bytes());
    }
    let suffix = produce_suffix(version).len();
    let size = (out.len() - start - 4 + records_bytes + suffix) as i32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// Bytes that follow the records in a one-partition Produce request: the tagged fields of the
/// partition, the topic and the request when flexible.
pub fn produce_suffix(version: i16) -> &'static [u8] {
    if produce_flexible(version) {
        &[0, 0, 0]
    } else {
        &[]
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut u: u64) {
    while u >= 0x80 {
        out.push((u as u8) | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}

/// Where each partition of a topic lives.
#[derive(Debug, Clone)]
pub struct TopicLayout {
    /// Leader address per partition index; empty when the partition has no leader now.
    pub leaders: Vec<String>,
    /// Every broker the Metadata response listed.
    pub brokers: Vec<String>,
}

/// Kafka error codes after which a client asks for Metadata again and retries: the request
/// reached a broker that does not lead the partition (any more), or could not be answered now.
pub fn retriable(error_code: i16) -> bool {
    matches!(
        error_code,
        3   // UNKNOWN_TOPIC_OR_PARTITION: a restarted broker that has not caught up yet
        | 5 // LEADER_NOT_AVAILABLE
        | 6 // NOT_LEADER_OR_FOLLOWER
        | 7 // REQUEST_TIMED_OUT
        | 19 // NOT_ENOUGH_REPLICAS
        | 20 // NOT_ENOUGH_REPLICAS_AFTER_APPEND
        | 74 // FENCED_LEADER_EPOCH
    )
}

/// A blocking connection for the control plane: one request at a time.
pub struct Control {
    client: Client,
    pub versions: Versions,
}

impl Control {
    /// Connects before `timeout` and negotiates versions (ApiVersions v3, falling back to v0
    /// on error 35), through the shared client crate.
    pub fn connect(address: &str, timeout: Duration) -> Result<Control> {
        let options = Options {
            client_id: CLIENT_ID,
            connect_timeout: timeout,
            request_timeout: timeout,
        };
        let client = Client::connect(address, &options)?;
        let versions =
            negotiate(client.versions()).with_context(|| format!("broker at {address}"))?;
        Ok(Control { client, versions })
    }

    /// Connects to the first of `addresses` (comma-separated) that answers.
    pub fn connect_any(addresses: &str, timeout: Duration) -> Result<Control> {
        let mut last = None;
        for address in addresses
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match Control::connect(address, timeout) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no bootstrap address in {addresses:?}")))
    }

    /// Metadata for `topic`; `None` if the broker does not know it.
    pub fn metadata(&mut self, topic: &str) -> Result<Option<TopicLayout>> {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(topic)))
            ]))
            .with_allow_auto_topic_creation(false);
        let response = self.client.send_at(&request, self.versions.metadata)?;
        let brokers: HashMap<i32, String> = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let t = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic))
            .ok_or_else(|| anyhow!("Metadata response does not mention topic {topic}"))?;
        match t.error_code {
            0 => {}
            3 => return Ok(None), // UNKNOWN_TOPIC_OR_PARTITION
            5 => {
                return Ok(Some(TopicLayout {
                    leaders: Vec::new(),
                    brokers: brokers.into_values().collect(),
                }))
            } // LEADER_NOT_AVAILABLE: retry
            e => bail!("Metadata for {topic}: error {e}"),
        }
        let mut leaders = vec![String::new(); t.partitions.len()];
        for p in &t.partitions {
            let i = p.partition_index as usize;
            ensure!(
                i < leaders.len(),
                "partition index {i} out of range in Metadata"
            );
            if p.error_code == 0 {
                leaders[i] = brokers.get(&p.leader_id.0).cloned().unwrap_or_default();
            }
        }
        let brokers = brokers.into_values().collect();
        Ok(Some(TopicLayout { leaders, brokers }))
    }

    /// Creates `topic`; an existing topic is not an error.
    pub fn create_topic(&mut self, topic: &str, partitions: i32) -> Result<()> {
        let request = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(-1)])
            .with_timeout_ms(30_000);
        let response = self.client.send_at(&request, self.versions.create_topics)?;
        for t in &response.topics {
            ensure!(
                t.error_code == 0 || t.error_code == 36, // TOPIC_ALREADY_EXISTS
                "CreateTopics {topic}: error {} {:?}",
                t.error_code,
                t.error_message.as_ref().map(|m| m.as_str())
            );
        }
        Ok(())
    }

    /// Waits until `topic` exists with a leader for every partition, creating it if missing.
    pub fn ensure_topic(
        &mut self,
        topic: &str,
        partitions: i32,
        timeout: Duration,
    ) -> Result<TopicLayout> {
        let deadline = Instant::now() + timeout;
        let mut created = false;
        loop {
            match self.metadata(topic)? {
                Some(layout)
                    if !layout.leaders.is_empty()
                        && layout.leaders.iter().all(|l| !l.is_empty()) =>
                {
                    return Ok(layout)
                }
                None if !created => {
                    self.create_topic(topic, partitions)?;
                    created = true;
                }
                _ => {}
            }
            ensure!(
                Instant::now() < deadline,
                "topic {topic} has no leader for every partition after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Per partition of `partitions`: its offset at `timestamp`, or the error code the broker
    /// answered for it (a partition the broker did not answer for is an error of the call).
    pub fn list_offsets_each(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<Vec<std::result::Result<i64, i16>>> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p)
                                .with_timestamp(timestamp)
                                .with_current_leader_epoch(-1)
                        })
                        .collect(),
                )]);
        let response = self.client.send_at(&request, self.versions.list_offsets)?;
        let mut out = vec![Ok(-1i64); partitions.len()];
        for t in &response.topics {
            for p in &t.partitions {
                if let Some(i) = partitions.iter().position(|&q| q == p.partition_index) {
                    out[i] = match p.error_code {
                        0 => Ok(p.offset),
                        code => Err(code),
                    };
                }
            }
        }
        ensure!(
            out.iter().all(|o| o.map_or(true, |o| o >= 0)),
            "ListOffsets did not answer every partition of {topic}: {out:?}"
        );
        Ok(out)
    }
}

/// A topic name for the crate's types.
pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, Bytes};
    use kafka_protocol::messages::{ProduceRequest, RequestHeader};
    use kafka_protocol::protocol::{Decodable, HeaderVersion};

    #[test]
    fn produce_prefix_decodes_with_the_crate_at_every_version() {
        let payloads = crate::batch::Payloads::new(50).unwrap();
        let mut batch = Vec::new();
        let spec = crate::batch::BatchSpec {
            producer_id: 1,
            first_sequence: 0,
            count: 3,
            timestamp_ms: 0,
            send_time_ns: &|_| 0,
        };
        crate::batch::encode_batch(&mut batch, &payloads, &spec);
        for version in PRODUCE_VERSIONS.min..=PRODUCE_VERSIONS.max {
            let mut out = Vec::new();
            produce_prefix(
                &mut out,
                version,
                42,
                -1,
                1500,
                "bench-topic",
                5,
                batch.len(),
            );
            out.extend_from_slice(&batch);
            out.extend_from_slice(produce_suffix(version));
            let mut frame = Bytes::from(out);
            let size = frame.get_i32() as usize;
            assert_eq!(size, frame.len(), "v{version}");
            let header =
                RequestHeader::decode(&mut frame, ProduceRequest::header_version(version)).unwrap();
            assert_eq!(
                (
                    header.request_api_key,
                    header.request_api_version,
                    header.correlation_id
                ),
                (0, version, 42)
            );
            assert_eq!(
                header.client_id.as_ref().map(|c| c.as_str()),
                Some(CLIENT_ID)
            );
            let request = ProduceRequest::decode(&mut frame, version).unwrap();
            assert_eq!(frame.len(), 0, "v{version}: trailing bytes");
            assert_eq!((request.acks, request.timeout_ms), (-1, 1500));
            assert!(request.transactional_id.is_none());
            let topic = &request.topic_data[0];
            assert_eq!(topic.name.0.as_str(), "bench-topic");
            assert_eq!(topic.partition_data[0].index, 5);
            assert_eq!(topic.partition_data[0].records.as_deref(), Some(&batch[..]));
        }
    }

    #[test]
    fn negotiation_takes_the_highest_common_version() {
        // (key, min, max): Metadata, Produce, Fetch, ListOffsets, CreateTopics.
        let broker = |produce_max| {
            BrokerVersions::from_ranges([
                (3, 0, 7),
                (0, 0, produce_max),
                (1, 4, 13),
                (2, 0, 5),
                (19, 0, 4),
            ])
        };
        let v = negotiate(&broker(11)).unwrap();
        assert_eq!(
            (
                v.metadata,
                v.produce,
                v.fetch,
                v.list_offsets,
                v.create_topics
            ),
            (7, 9, 12, 5, 4)
        );
        let error = negotiate(&broker(2)).unwrap_err();
        assert!(
            error.to_string().contains("no common version of Produce"),
            "{error}"
        );
    }
}
