//! `shardlog produce T` and `shardlog consume T`: quick checks of a topic from a shell, as
//! `rpk topic produce/consume` and kcat's `-P`/`-C` serve.
//!
//! - produce: one record per line of stdin (with `--key-separator S`, the text before the
//!   first S is the key). A keyed record goes to partition `murmur2(key) % partitions`, as
//!   Kafka's default partitioner puts it; an unkeyed one round-robin (or `--partition P`).
//!   Lines are sent in chunks of at most [`CHUNK_LINES`] lines or [`CHUNK_BYTES`] bytes: one
//!   uncompressed batch per partition, one Produce per leader, acks=all by default.
//! - consume: from the log start (`--from-beginning`) or the log end, by offset (no group),
//!   Fetch at each partition's leader; stops after `--max-messages N`, or at the log end of
//!   every partition with `--exit-at-end`, else runs until interrupted.
//!
//! What this module must never do: create a topic (it asks Metadata with auto-creation off
//! and refuses an unknown topic), or report records as produced that a leader refused.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{BrokerId, FetchRequest, ProduceRequest, TopicName};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde_json::json;

use super::output::Format;
use super::session::{by_leader, error_name, str_bytes, Session};
use super::topics::{offsets, EARLIEST, LATEST};
use super::{ConsumeCommand, ProduceCommand};

/// Most lines in one Produce round.
pub const CHUNK_LINES: usize = 1000;
/// Most bytes of lines in one Produce round.
pub const CHUNK_BYTES: usize = 512 * 1024;
/// How long the broker may wait for acks=all.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// How long a Fetch waits at the leader for new records.
const FETCH_MAX_WAIT_MS: i32 = 500;
/// Bytes one Fetch may return per partition and in all.
const FETCH_PARTITION_MAX_BYTES: i32 = 1 << 20;
const FETCH_MAX_BYTES: i32 = 8 << 20;
/// Bytes of a record batch before its length field ends (base offset, length).
const BATCH_LENGTH_END: usize = 12;

/// One line to produce: its key (with `--key-separator`) and value.
type Line = (Option<Bytes>, Bytes);

/// Kafka's murmur2 (its default partitioner's hash of a key).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner gives a key.
pub fn partition_of_key(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn record(offset: i64, timestamp: i64, key: Option<Bytes>, value: Bytes) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: -1,
        timestamp,
        key,
        value: Some(value),
        headers: Default::default(),
    }
}

/// Runs `shardlog produce`: lines of stdin to the topic; prints how many were produced.
pub fn produce(command: ProduceCommand) -> Result<()> {
    let mut session = Session::connect(&command.common.bootstrap, "shardlog-produce")?;
    let topic = command.topic.as_str();
    let meta = session.topic(topic)?;
    let count = meta.partitions.len() as i32;
    if let Some(p) = command.partition {
        if !(0..count).contains(&p) {
            bail!("topic {topic} has partitions 0..{count}, not {p}");
        }
    }
    let leaders = by_leader(&meta)?;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let (mut produced, mut next_unkeyed) = (0u64, 0i32);
    loop {
        let mut chunk: BTreeMap<i32, Vec<Line>> = BTreeMap::new();
        let (mut n, mut bytes) = (0, 0);
        while n < CHUNK_LINES && bytes < CHUNK_BYTES {
            let Some(line) = lines.next() else { break };
            let line = line.context("reading stdin")?;
            bytes += line.len();
            n += 1;
            let (key, value) = match &command.key_separator {
                Some(sep) if !sep.is_empty() => match line.split_once(sep.as_str()) {
                    Some((k, v)) => (Some(Bytes::from(k.to_string())), v.to_string()),
                    None => (None, line.clone()),
                },
                _ => (None, line.clone()),
            };
            let partition = match (command.partition, &key) {
                (Some(p), _) => p,
                (None, Some(k)) => partition_of_key(k, count),
                (None, None) => {
                    let p = next_unkeyed;
                    next_unkeyed = (next_unkeyed + 1) % count;
                    p
                }
            };
            chunk
                .entry(partition)
                .or_default()
                .push((key, Bytes::from(value)));
        }
        if n == 0 {
            break;
        }
        for (leader, partitions) in &leaders {
            let batches: Vec<_> = partitions
                .iter()
                .filter_map(|p| chunk.get(p).map(|records| (*p, records)))
                .collect();
            if !batches.is_empty() {
                send_batches(&mut session, *leader, topic, &batches, command.acks)?;
            }
        }
        produced += n as u64;
    }
    match command.common.format {
        Format::Json => println!("{}", json!({"topic": topic, "records": produced})),
        Format::Table => eprintln!("produced {produced} record(s) to {topic}"),
    }
    Ok(())
}

/// One Produce to `leader`: one batch per partition.
fn send_batches(
    session: &mut Session,
    leader: i32,
    topic: &str,
    batches: &[(i32, &Vec<Line>)],
    acks: i16,
) -> Result<()> {
    let timestamp = now_ms();
    let mut partition_data = Vec::with_capacity(batches.len());
    for (p, lines) in batches {
        let records: Vec<Record> = lines
            .iter()
            .enumerate()
            .map(|(i, (k, v))| record(i as i64, timestamp, k.clone(), v.clone()))
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options)
            .map_err(|e| anyhow!("encoding a batch for {topic}-{p}: {e}"))?;
        partition_data.push(
            PartitionProduceData::default()
                .with_index(*p)
                .with_records(Some(buf.freeze())),
        );
    }
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(PRODUCE_TIMEOUT_MS)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(str_bytes(topic)))
            .with_partition_data(partition_data)]);
    let response = session.send_to(leader, &request)?;
    if acks == 0 {
        return Ok(());
    }
    for t in response.responses {
        for p in t.partition_responses {
            if p.error_code != 0 {
                let detail = p
                    .error_message
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                bail!(
                    "Produce {topic}-{} at broker {leader}: {}{detail}",
                    p.index,
                    error_name(p.error_code)
                );
            }
        }
    }
    Ok(())
}

/// Runs `shardlog consume`: prints records of the topic, one per line.
pub fn consume(command: ConsumeCommand) -> Result<()> {
    let mut session = Session::connect(&command.common.bootstrap, "shardlog-consume")?;
    let topic = command.topic.as_str();
    let meta = session.topic(topic)?;
    let start = offsets(
        &mut session,
        &meta,
        if command.from_beginning {
            EARLIEST
        } else {
            LATEST
        },
    )?;
    let mut leaders = by_leader(&meta)?;
    if let Some(only) = command.partition {
        if !start.contains_key(&only) {
            bail!("topic {topic} has no partition {only}");
        }
        for partitions in leaders.values_mut() {
            partitions.retain(|p| *p == only);
        }
    }
    let mut next: BTreeMap<i32, i64> = start;
    let mut done: BTreeMap<i32, bool> = BTreeMap::new();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        for (leader, partitions) in &leaders {
            if partitions.is_empty() {
                continue;
            }
            let request = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(FETCH_MAX_WAIT_MS)
                .with_min_bytes(1)
                .with_max_bytes(FETCH_MAX_BYTES)
                .with_session_epoch(-1)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(TopicName(str_bytes(topic)))
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|p| {
                                FetchPartition::default()
                                    .with_partition(*p)
                                    .with_fetch_offset(next[p])
                                    .with_partition_max_bytes(FETCH_PARTITION_MAX_BYTES)
                            })
                            .collect(),
                    )]);
            let response = session.send_to(*leader, &request)?;
            if response.error_code != 0 {
                bail!(
                    "Fetch at broker {leader}: {}",
                    error_name(response.error_code)
                );
            }
            for data in response.responses.into_iter().flat_map(|t| t.partitions) {
                let p = data.partition_index;
                if data.error_code != 0 {
                    bail!(
                        "Fetch {topic}-{p} at broker {leader}: {}",
                        error_name(data.error_code)
                    );
                }
                let offset = next.get_mut(&p).ok_or_else(|| {
                    anyhow!("Fetch: broker {leader} answered for {topic}-{p}, not asked")
                })?;
                let records = data.records.unwrap_or_default();
                for r in complete_records(records, topic, p)? {
                    if r.offset < *offset {
                        continue; // a batch starts before the offset asked
                    }
                    *offset = r.offset + 1;
                    if r.control {
                        continue;
                    }
                    if command.max_messages.is_some_and(|max| printed >= max) {
                        break;
                    }
                    print_record(&mut out, &command, p, &r)?;
                    printed += 1;
                }
                done.insert(p, *offset >= data.high_watermark);
            }
        }
        out.flush().context("writing stdout")?;
        if command.max_messages.is_some_and(|max| printed >= max) {
            return Ok(());
        }
        let every_done = leaders
            .values()
            .flatten()
            .all(|p| done.get(p) == Some(&true));
        if command.exit_at_end && every_done {
            return Ok(());
        }
    }
}

/// The records of the complete batches in a Fetch answer (a last batch cut off by the
/// size limit is left for the next Fetch).
fn complete_records(mut bytes: Bytes, topic: &str, p: i32) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    while bytes.len() >= BATCH_LENGTH_END {
        let length = (&bytes[8..12]).get_i32();
        let total = BATCH_LENGTH_END + usize::try_from(length).unwrap_or(0);
        if length <= 0 || total > bytes.len() {
            break;
        }
        let mut batch = bytes.split_to(total);
        let set = RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| anyhow!("a record batch of {topic}-{p} does not decode: {e}"))?;
        out.extend(set.records);
    }
    Ok(out)
}

fn print_record(
    out: &mut impl Write,
    command: &ConsumeCommand,
    partition: i32,
    r: &Record,
) -> Result<()> {
    let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    match command.common.format {
        Format::Json => writeln!(
            out,
            "{}",
            json!({
                "topic": command.topic, "partition": partition, "offset": r.offset,
                "timestamp": r.timestamp, "key": text(&r.key), "value": text(&r.value),
            })
        ),
        Format::Table => match &command.key_separator {
            Some(sep) => writeln!(
                out,
                "{}{sep}{}",
                text(&r.key).unwrap_or_default(),
                text(&r.value).unwrap_or_default()
            ),
            None => writeln!(out, "{}", text(&r.value).unwrap_or_default()),
        },
    }
    .context("writing stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    #[test]
    fn a_cut_off_last_batch_is_left_for_the_next_fetch() {
        let records = vec![record(0, 1, None, Bytes::from_static(b"a"))];
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        let one = buf.clone().freeze();
        buf.extend_from_slice(&one[..one.len() - 3]);
        let decoded = complete_records(buf.freeze(), "t", 0).unwrap();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].value.as_deref(), Some(&b"a"[..]));
    }
}
