//! Criterion benches of the protocol hot paths, with kafka-protocol 0.18 as the broker uses it:
//! Produce request decode and encode, Fetch response encode, and CRC-32C over a record batch.
//!
//! The batch is 1000 records of 100 B, the shape of the 4M msg/s target: at that rate the broker
//! handles 4000 such requests per second per core, so each of these must stay well under
//! 250 µs per batch to leave the core for I/O.
//!
//! `cargo bench -p shardlog-benches --bench protocol`

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kafka_protocol::messages::{
    fetch_response::{FetchableTopicResponse, PartitionData},
    produce_request::{PartitionProduceData, TopicProduceData},
    FetchResponse, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

const RECORDS: usize = 1000;
const VALUE_BYTES: usize = 100;

/// One RecordBatch v2 of `RECORDS` uncompressed records.
fn batch() -> Bytes {
    let records: Vec<Record> = (0..RECORDS)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // offset - sequence constant keeps the crate from splitting the batch
            sequence: i as i32 - 1,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(vec![(i % 251) as u8; VALUE_BYTES])),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode batch");
    buf.freeze()
}

fn produce_request(records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("bench")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])])
}

fn bench_produce(c: &mut Criterion) {
    let records = batch();
    let mut g = c.benchmark_group("produce_request");
    g.throughput(Throughput::Elements(RECORDS as u64));
    for version in [8i16, 9] {
        let request = produce_request(records.clone());
        let mut encoded = BytesMut::new();
        request.encode(&mut encoded, version).unwrap();
        let encoded = encoded.freeze();
        g.bench_function(format!("decode_v{version}_1000x100B"), |b| {
            b.iter(|| ProduceRequest::decode(&mut encoded.clone(), version).unwrap())
        });
        g.bench_function(format!("encode_v{version}_1000x100B"), |b| {
            b.iter_batched_ref(
                || BytesMut::with_capacity(encoded.len()),
                |out| request.encode(out, version).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_fetch(c: &mut Criterion) {
    let records = batch();
    // A typical full fetch: 8 partitions, each with 1 MiB of batches.
    let per_partition: Bytes = {
        let mut b = BytesMut::new();
        while b.len() < (1 << 20) {
            b.extend_from_slice(&records);
        }
        b.freeze()
    };
    let response = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
        .with_topic(TopicName(StrBytes::from_static_str("bench")))
        .with_partitions(
            (0..8)
                .map(|p| {
                    PartitionData::default()
                        .with_partition_index(p)
                        .with_high_watermark(1 << 30)
                        .with_records(Some(per_partition.clone()))
                })
                .collect(),
        )]);
    let mut g = c.benchmark_group("fetch_response");
    g.throughput(Throughput::Bytes(8 * per_partition.len() as u64));
    for version in [11i16, 12] {
        let size = response.compute_size(version).unwrap();
        g.bench_function(format!("encode_v{version}_8x1MiB"), |b| {
            b.iter_batched_ref(
                || BytesMut::with_capacity(size),
                |out| response.encode(out, version).unwrap(),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn bench_crc(c: &mut Criterion) {
    let records = batch();
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Bytes(records.len() as u64));
    g.bench_function("crc32c_1000x100B", |b| {
        b.iter(|| crc32c::crc32c(black_box(&records[21..])))
    });
    g.bench_function("validate_header_and_crc_1000x100B", |b| {
        b.iter(|| {
            let r = black_box(&records[..]);
            let length = i32::from_be_bytes(r[8..12].try_into().unwrap()) as usize;
            assert_eq!(length + 12, r.len());
            assert_eq!(r[16], 2);
            let crc = u32::from_be_bytes(r[17..21].try_into().unwrap());
            assert_eq!(crc32c::crc32c(&r[21..]), crc);
        })
    });
    g.finish();
}

criterion_group!(benches, bench_produce, bench_fetch, bench_crc);
criterion_main!(benches);
