//! A tiny in-memory Kafka broker for testing the bench itself (`shardlog-bench mock-broker`),
//! and for measuring the bench's own ceiling against a broker that does almost nothing.
//!
//! It answers ApiVersions, Metadata, CreateTopics, ListOffsets, Produce and Fetch from one
//! thread per connection over a mutex-guarded map: correct, not fast, never a reference for
//! broker design. Fault injection (`--drop-every`, `--corrupt-every`) lets tests prove that
//! verification catches lost and corrupted messages.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use clap::Args;
use kafka_protocol::messages::{
    api_versions_response::ApiVersion,
    create_topics_response::CreatableTopicResult,
    fetch_response::{FetchableTopicResponse, PartitionData},
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
    produce_response::{PartitionProduceResponse, TopicProduceResponse},
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest,
    CreateTopicsResponse, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader,
};
use kafka_protocol::protocol::{
    decode_request_header_from_buffer, Decodable, Encodable, HeaderVersion, StrBytes,
};

/// Options of `mock-broker`.
#[derive(Args, Debug, Clone)]
pub struct MockArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Highest ApiVersions version answered; above it, error 35 with a v0 body.
    #[arg(long, default_value_t = 3)]
    pub api_versions_max: i16,
    /// Silently drop every n-th produced batch (acknowledging it): a lossy broker.
    #[arg(long)]
    pub drop_every: Option<u64>,
    /// Flip a payload byte in every n-th batch served by Fetch, after fixing its CRC.
    #[arg(long)]
    pub corrupt_every: Option<u64>,
}

#[derive(Default)]
struct PartitionLog {
    batches: Vec<(i64, Bytes)>,
    next_offset: i64,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Vec<PartitionLog>>,
    produced_batches: u64,
    served_batches: u64,
}

/// Serves forever (or until the process ends); prints `listening on ADDR` to stderr when ready.
pub fn serve(args: &MockArgs) -> Result<()> {
    let listener = TcpListener::bind(&args.listen)?;
    let address = listener.local_addr()?.to_string();
    eprintln!("listening on {address}");
    let state = Arc::new(Mutex::new(State::default()));
    for stream in listener.incoming() {
        let stream = stream?;
        let (state, args, address) = (state.clone(), args.clone(), address.clone());
        std::thread::spawn(move || {
            if let Err(e) = connection(stream, &state, &args, &address) {
                eprintln!("mock-broker connection: {e:#}");
            }
        });
    }
    Ok(())
}

/// Starts a mock broker on an ephemeral port in a background thread; returns its address.
#[cfg(test)]
pub fn spawn(mut args: MockArgs) -> String {
    args.listen = "127.0.0.1:0".into();
    let listener = TcpListener::bind(&args.listen).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let state = Arc::new(Mutex::new(State::default()));
    let a = address.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let (state, args, address) = (state.clone(), args.clone(), a.clone());
            std::thread::spawn(move || {
                let _ = connection(stream.unwrap(), &state, &args, &address);
            });
        }
    });
    address
}

fn respond<R: Encodable + HeaderVersion>(
    out: &mut BytesMut,
    correlation_id: i32,
    version: i16,
    r: &R,
) -> Result<()> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let hv = R::header_version(version);
    let size = header.compute_size(hv)? + r.compute_size(version)?;
    out.extend_from_slice(&(size as i32).to_be_bytes());
    header.encode(out, hv)?;
    r.encode(out, version)?;
    Ok(())
}

fn connection(
    mut stream: TcpStream,
    state: &Mutex<State>,
    args: &MockArgs,
    address: &str,
) -> Result<()> {
    stream.set_nodelay(true)?;
    let (host, port) = address.rsplit_once(':').context("address without port")?;
    let port: i32 = port.parse()?;
    loop {
        let mut size = [0u8; 4];
        if stream.read_exact(&mut size).is_err() {
            return Ok(());
        }
        let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
        stream.read_exact(&mut frame)?;
        let mut frame = Bytes::from(frame);
        let api_key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let mut out = BytesMut::new();
        if api_key == ApiKey::ApiVersions as i16 && version > args.api_versions_max {
            let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            respond(
                &mut out,
                correlation_id,
                0,
                &ApiVersionsResponse::default()
                    .with_error_code(35)
                    .with_api_keys(api_list()),
            )?;
            stream.write_all(&out)?;
            continue;
        }
        let header: RequestHeader = decode_request_header_from_buffer(&mut frame)?;
        let c = header.correlation_id;
        match ApiKey::try_from(api_key).map_err(|_| anyhow::anyhow!("unknown api key {api_key}"))? {
            ApiKey::ApiVersions => {
                ApiVersionsRequest::decode(&mut frame, version)?;
                respond(
                    &mut out,
                    c,
                    version,
                    &ApiVersionsResponse::default().with_api_keys(api_list()),
                )?;
            }
            ApiKey::Metadata => {
                let req = MetadataRequest::decode(&mut frame, version)?;
                let st = state.lock().unwrap();
                let topics = req
                    .topics
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|t| t.name)
                    .map(|name| match st.topics.get(name.0.as_str()) {
                        Some(parts) => MetadataResponseTopic::default()
                            .with_name(Some(name))
                            .with_partitions(
                                (0..parts.len() as i32)
                                    .map(|i| {
                                        MetadataResponsePartition::default()
                                            .with_partition_index(i)
                                            .with_leader_id(BrokerId(1))
                                            .with_replica_nodes(vec![BrokerId(1)])
                                            .with_isr_nodes(vec![BrokerId(1)])
                                    })
                                    .collect(),
                            ),
                        None => MetadataResponseTopic::default()
                            .with_name(Some(name))
                            .with_error_code(3),
                    })
                    .collect();
                let broker = MetadataResponseBroker::default()
                    .with_node_id(BrokerId(1))
                    .with_host(StrBytes::from_string(host.to_string()))
                    .with_port(port);
                respond(
                    &mut out,
                    c,
                    version,
                    &MetadataResponse::default()
                        .with_brokers(vec![broker])
                        .with_controller_id(BrokerId(1))
                        .with_topics(topics),
                )?;
            }
            ApiKey::CreateTopics => {
                let req = CreateTopicsRequest::decode(&mut frame, version)?;
                let mut st = state.lock().unwrap();
                let results = req
                    .topics
                    .into_iter()
                    .map(|t| {
                        let exists = st.topics.contains_key(t.name.0.as_str());
                        if !exists {
                            st.topics.insert(
                                t.name.0.to_string(),
                                (0..t.num_partitions)
                                    .map(|_| PartitionLog::default())
                                    .collect(),
                            );
                        }
                        CreatableTopicResult::default()
                            .with_name(t.name)
                            .with_error_code(if exists { 36 } else { 0 })
                    })
                    .collect();
                respond(
                    &mut out,
                    c,
                    version,
                    &CreateTopicsResponse::default().with_topics(results),
                )?;
            }
            ApiKey::ListOffsets => {
                let req = ListOffsetsRequest::decode(&mut frame, version)?;
                let st = state.lock().unwrap();
                let topics = req
                    .topics
                    .into_iter()
                    .map(|t| {
                        let parts = &st.topics[t.name.0.as_str()];
                        ListOffsetsTopicResponse::default()
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        let log = &parts[p.partition_index as usize];
                                        let offset = if p.timestamp == -2 {
                                            0
                                        } else {
                                            log.next_offset
                                        };
                                        ListOffsetsPartitionResponse::default()
                                            .with_partition_index(p.partition_index)
                                            .with_offset(offset)
                                            .with_timestamp(-1)
                                    })
                                    .collect(),
                            )
                            .with_name(t.name)
                    })
                    .collect();
                respond(
                    &mut out,
                    c,
                    version,
                    &ListOffsetsResponse::default().with_topics(topics),
                )?;
            }
            ApiKey::Produce => {
                let req = ProduceRequest::decode(&mut frame, version)?;
                let mut st = state.lock().unwrap();
                let mut responses = Vec::new();
                for t in req.topic_data {
                    let mut prs = Vec::new();
                    for p in t.partition_data {
                        let records = p.records.unwrap_or_default();
                        st.produced_batches += 1;
                        let drop_it = args
                            .drop_every
                            .is_some_and(|n| st.produced_batches.is_multiple_of(n));
                        let log = &mut st
                            .topics
                            .get_mut(t.name.0.as_str())
                            .context("unknown topic")?[p.index as usize];
                        let base = log.next_offset;
                        let count = i32::from_be_bytes(records[57..61].try_into()?) as i64;
                        let mut stamped = BytesMut::from(&records[..]);
                        stamped[..8].copy_from_slice(&base.to_be_bytes());
                        if drop_it {
                            // Lose the batch, but keep the offsets it was acked with in use.
                        } else {
                            log.batches.push((base, stamped.freeze()));
                        }
                        log.next_offset += count;
                        prs.push(
                            PartitionProduceResponse::default()
                                .with_index(p.index)
                                .with_base_offset(base)
                                .with_log_append_time_ms(-1),
                        );
                    }
                    responses.push(
                        TopicProduceResponse::default()
                            .with_name(t.name)
                            .with_partition_responses(prs),
                    );
                }
                drop(st);
                if req.acks != 0 {
                    respond(
                        &mut out,
                        c,
                        version,
                        &ProduceResponse::default().with_responses(responses),
                    )?;
                }
            }
            ApiKey::Fetch => {
                let req = FetchRequest::decode(&mut frame, version)?;
                let deadline =
                    Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
                let response = loop {
                    let mut st = state.lock().unwrap();
                    let mut total = 0usize;
                    let mut topics = Vec::new();
                    for t in &req.topics {
                        let mut parts = Vec::new();
                        for p in &t.partitions {
                            let log = &st.topics[t.topic.0.as_str()][p.partition as usize];
                            let mut records = BytesMut::new();
                            let start = log.batches.partition_point(|(b, bytes)| {
                                b + (i32::from_be_bytes(bytes[23..27].try_into().unwrap()) as i64)
                                    < p.fetch_offset
                            });
                            let mut n = 0usize;
                            for (_, b) in &log.batches[start..] {
                                if !records.is_empty()
                                    && records.len() + b.len() > p.partition_max_bytes as usize
                                {
                                    break;
                                }
                                n += 1;
                                records.extend_from_slice(b);
                            }
                            let high = log.next_offset;
                            if let Some(every) = args.corrupt_every {
                                for _ in 0..n {
                                    st.served_batches += 1;
                                    if st.served_batches.is_multiple_of(every)
                                        && records.len() > 100
                                    {
                                        // Corrupt a payload and re-seal the CRC: only the value checksum can tell.
                                        let at = records.len() - 10;
                                        records[at] ^= 0x01;
                                        let last = last_batch_start(&records);
                                        let crc = crc32c::crc32c(&records[last + 21..]);
                                        records[last + 17..last + 21]
                                            .copy_from_slice(&crc.to_be_bytes());
                                    }
                                }
                            }
                            total += records.len();
                            parts.push(
                                PartitionData::default()
                                    .with_partition_index(p.partition)
                                    .with_high_watermark(high)
                                    .with_records(Some(records.freeze())),
                            );
                        }
                        topics.push(
                            FetchableTopicResponse::default()
                                .with_topic(t.topic.clone())
                                .with_partitions(parts),
                        );
                    }
                    if total > 0 || Instant::now() >= deadline {
                        break FetchResponse::default().with_responses(topics);
                    }
                    drop(st);
                    std::thread::sleep(Duration::from_millis(1));
                };
                respond(&mut out, c, version, &response)?;
            }
            other => anyhow::bail!("mock-broker does not serve {other:?}"),
        }
        stream.write_all(&out)?;
    }
}

fn last_batch_start(records: &[u8]) -> usize {
    let mut pos = 0;
    let mut last = 0;
    while pos + 12 <= records.len() {
        last = pos;
        pos += 12 + i32::from_be_bytes(records[pos + 8..pos + 12].try_into().unwrap()) as usize;
    }
    last
}

fn api_list() -> Vec<ApiVersion> {
    [
        (ApiKey::Produce, 3, 9),
        (ApiKey::Fetch, 4, 12),
        (ApiKey::ListOffsets, 1, 7),
        (ApiKey::Metadata, 0, 12),
        (ApiKey::ApiVersions, 0, 3),
        (ApiKey::CreateTopics, 2, 7),
    ]
    .into_iter()
    .map(|(k, lo, hi)| {
        ApiVersion::default()
            .with_api_key(k as i16)
            .with_min_version(lo)
            .with_max_version(hi)
    })
    .collect()
}
