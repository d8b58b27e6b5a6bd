//! Kafka wire protocol for the bench: framing, version negotiation, the blocking control-plane
//! client (Metadata, CreateTopics, ListOffsets), and the hand-written Produce request prefix
//! that lets a batch be encoded straight into a connection's send buffer.
//!
//! Everything except the Produce prefix goes through the `kafka-protocol` crate, which handles
//! flexible versions (compact encodings, request header v2) from the version number alone.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{
    create_topics_request::CreatableTopic, list_offsets_request::ListOffsetsPartition,
    list_offsets_request::ListOffsetsTopic, metadata_request::MetadataRequestTopic, ApiKey,
    ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

/// Client id sent in every request header.
pub const CLIENT_ID: &str = "shardlog-bench";
/// Largest response frame accepted; a bigger size prefix means a broken stream.
pub const FRAME_BYTES_MAX: usize = 256 << 20;
/// Kafka's UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;

/// Versions this client speaks, per API: (key, min, max).
pub const CLIENT_VERSIONS: [(ApiKey, i16, i16); 5] = [
    (ApiKey::Metadata, 1, 12),
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::CreateTopics, 2, 7),
];

/// The versions agreed with one broker.
#[derive(Debug, Clone, Copy)]
pub struct Versions {
    pub metadata: i16,
    pub produce: i16,
    pub fetch: i16,
    pub list_offsets: i16,
    pub create_topics: i16,
}

/// The versions a broker supports, per API key, from an ApiVersions response body of
/// `version`; `None` when the broker answered UNSUPPORTED_VERSION, which it does in a v0 body
/// whatever version was asked, so the caller must ask again at v0.
fn parse_api_versions(mut body: Bytes, version: i16) -> Result<Option<HashMap<i16, (i16, i16)>>> {
    // The error code leads the body at every version: read it before decoding as `version`.
    if body.len() >= 2 && i16::from_be_bytes([body[0], body[1]]) == UNSUPPORTED_VERSION {
        return Ok(None);
    }
    let parsed = ApiVersionsResponse::decode(&mut body, version)?;
    ensure!(
        parsed.error_code == 0,
        "ApiVersions error {}",
        parsed.error_code
    );
    Ok(Some(
        parsed
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect(),
    ))
}

/// Picks the highest version both sides support for each API the bench uses.
pub fn negotiate(broker: &HashMap<i16, (i16, i16)>) -> Result<Versions> {
    let pick = |key: ApiKey| -> Result<i16> {
        let (_, lo, hi) = CLIENT_VERSIONS.iter().find(|(k, _, _)| *k == key).unwrap();
        let (blo, bhi) = broker
            .get(&(key as i16))
            .ok_or_else(|| anyhow!("broker does not offer {key:?}"))?;
        let v = (*hi).min(*bhi);
        ensure!(
            v >= (*lo).max(*blo),
            "no common version of {key:?}: client {lo}..{hi}, broker {blo}..{bhi}"
        );
        Ok(v)
    };
    Ok(Versions {
        metadata: pick(ApiKey::Metadata)?,
        produce: pick(ApiKey::Produce)?,
        fetch: pick(ApiKey::Fetch)?,
        list_offsets: pick(ApiKey::ListOffsets)?,
        create_topics: pick(ApiKey::CreateTopics)?,
    })
}

/// Appends a size-prefixed request frame (header + body) to `out`.
pub fn encode_request<R: Request>(
    out: &mut BytesMut,
    correlation_id: i32,
    version: i16,
    body: &R,
) -> Result<()> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let header_version = R::header_version(version);
    let size = header.compute_size(header_version)? + body.compute_size(version)?;
    out.extend_from_slice(&(size as i32).to_be_bytes());
    header.encode(out, header_version)?;
    body.encode(out, version)?;
    Ok(())
}

/// Splits the response header off `frame` and checks its correlation id.
pub fn decode_response_header<R: Request>(
    frame: &mut Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<()> {
    let header = ResponseHeader::decode(frame, R::Response::header_version(version))?;
    ensure!(
        header.correlation_id == correlation_id,
        "{:?} response has correlation id {}, expected {correlation_id}",
        ApiKey::try_from(R::KEY).ok(),
        header.correlation_id
    );
    Ok(())
}

/// Takes one complete frame off the front of `buf`, if there is one.
pub fn take_frame(buf: &mut BytesMut) -> Result<Option<Bytes>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = i32::from_be_bytes(buf[..4].try_into().unwrap());
    ensure!(
        size >= 4 && size as usize <= FRAME_BYTES_MAX,
        "response frame of {size} bytes"
    );
    if buf.len() < 4 + size as usize {
        buf.reserve(4 + size as usize - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size as usize).freeze()))
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
    /// Leader address per partition index.
    pub leaders: Vec<String>,
}

/// A blocking connection for the control plane: one request at a time.
pub struct Control {
    stream: TcpStream,
    correlation_id: i32,
    pub versions: Versions,
}

impl Control {
    /// Connects and negotiates versions (ApiVersions v3, falling back to v0 on error 35).
    pub fn connect(address: &str, timeout: Duration) -> Result<Control> {
        let stream = connect_with_deadline(address, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut c = Control {
            stream,
            correlation_id: 0,
            versions: Versions {
                metadata: 0,
                produce: 0,
                fetch: 0,
                list_offsets: 0,
                create_topics: 0,
            },
        };
        let broker = c.api_versions()?;
        c.versions = negotiate(&broker).with_context(|| format!("broker at {address}"))?;
        Ok(c)
    }

    fn api_versions(&mut self) -> Result<HashMap<i16, (i16, i16)>> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        if let Some(keys) = parse_api_versions(self.call_raw(&request, 3)?, 3)? {
            return Ok(keys);
        }
        parse_api_versions(self.call_raw(&request, 0)?, 0)?
            .ok_or_else(|| anyhow!("ApiVersions v0 answered: unsupported version"))
    }

    /// Sends one request and returns the response body (header checked and removed).
    fn call_raw<R: Request>(&mut self, request: &R, version: i16) -> Result<Bytes> {
        self.correlation_id += 1;
        let mut out = BytesMut::new();
        encode_request(&mut out, self.correlation_id, version, request)?;
        self.stream.write_all(&out)?;
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .with_context(|| format!("reading {:?} response", ApiKey::try_from(R::KEY).ok()))?;
        let size = i32::from_be_bytes(size);
        ensure!(
            size >= 4 && size as usize <= FRAME_BYTES_MAX,
            "response frame of {size} bytes"
        );
        let mut frame = vec![0u8; size as usize];
        self.stream.read_exact(&mut frame)?;
        let mut frame = Bytes::from(frame);
        decode_response_header::<R>(&mut frame, version, self.correlation_id)?;
        Ok(frame)
    }

    fn call<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let mut body = self.call_raw(request, version)?;
        R::Response::decode(&mut body, version)
    }

    /// Metadata for `topic`; `None` if the broker does not know it.
    pub fn metadata(&mut self, topic: &str) -> Result<Option<TopicLayout>> {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(topic)))
            ]))
            .with_allow_auto_topic_creation(false);
        let response: MetadataResponse = self.call(&request, self.versions.metadata)?;
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
        Ok(Some(TopicLayout { leaders }))
    }

    /// Creates `topic`; an existing topic is not an error.
    pub fn create_topic(&mut self, topic: &str, partitions: i32) -> Result<()> {
        let request = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(-1)])
            .with_timeout_ms(30_000);
        let response: CreateTopicsResponse = self.call(&request, self.versions.create_topics)?;
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

    /// Offsets of `partitions` at `timestamp` (-1 latest, -2 earliest).
    pub fn list_offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<Vec<i64>> {
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
        let response: ListOffsetsResponse = self.call(&request, self.versions.list_offsets)?;
        let mut out = vec![-1i64; partitions.len()];
        for t in &response.topics {
            for p in &t.partitions {
                ensure!(
                    p.error_code == 0,
                    "ListOffsets {topic}/{}: error {}",
                    p.partition_index,
                    p.error_code
                );
                if let Some(i) = partitions.iter().position(|&q| q == p.partition_index) {
                    out[i] = p.offset;
                }
            }
        }
        ensure!(
            out.iter().all(|&o| o >= 0),
            "ListOffsets did not answer every partition of {topic}: {out:?}"
        );
        Ok(out)
    }
}

/// A topic name for the crate's types.
pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Connects to `address`, retrying refused connections until `timeout`.
pub fn connect_with_deadline(address: &str, timeout: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect(address) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {address}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{api_versions_response::ApiVersion, ProduceRequest};

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
        for version in 3..=9i16 {
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
        let broker: HashMap<i16, (i16, i16)> = [
            (3, (0, 7)),
            (0, (0, 11)),
            (1, (4, 11)),
            (2, (0, 5)),
            (19, (0, 4)),
        ]
        .into_iter()
        .collect();
        let v = negotiate(&broker).unwrap();
        assert_eq!(
            (
                v.metadata,
                v.produce,
                v.fetch,
                v.list_offsets,
                v.create_topics
            ),
            (7, 9, 11, 5, 4)
        );
        let too_old: HashMap<i16, (i16, i16)> = [
            (3, (0, 7)),
            (0, (0, 2)),
            (1, (4, 11)),
            (2, (0, 5)),
            (19, (0, 4)),
        ]
        .into_iter()
        .collect();
        assert!(negotiate(&too_old).is_err());
    }

    fn api_versions_body(error_code: i16, version: i16) -> Bytes {
        let keys = [(3, 0, 12), (0, 0, 9), (1, 4, 12), (2, 0, 7), (19, 0, 7)]
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
    fn an_unsupported_api_versions_v3_means_asking_again_at_v0() {
        // What an older broker sends for v3: error 35 in a v0 body.
        assert!(parse_api_versions(api_versions_body(35, 0), 3)
            .unwrap()
            .is_none());
        let keys = parse_api_versions(api_versions_body(0, 0), 0)
            .unwrap()
            .unwrap();
        let v = negotiate(&keys).unwrap();
        assert_eq!((v.metadata, v.produce, v.fetch), (12, 9, 12));
        let keys = parse_api_versions(api_versions_body(0, 3), 3)
            .unwrap()
            .unwrap();
        assert_eq!(keys[&1], (4, 12));
        assert!(parse_api_versions(api_versions_body(42, 3), 3).is_err());
    }

    #[test]
    fn take_frame_waits_for_a_whole_frame() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0, 0, 0, 6, 1, 2, 3]);
        assert!(take_frame(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&[4, 5, 6, 0, 0]);
        assert_eq!(
            &take_frame(&mut buf).unwrap().unwrap()[..],
            &[1, 2, 3, 4, 5, 6]
        );
        assert_eq!(&buf[..], &[0, 0]);
        buf.clear();
        buf.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(
            take_frame(&mut buf).is_err(),
            "a 2 GiB frame means a broken stream"
        );
    }
}
