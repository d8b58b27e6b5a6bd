//! The record format of the `__consumer_offsets` topic: each OffsetCommit (or deletion) is
//! one RecordBatch v2, one record per partition, appended to the group's offsets partition.
//! The layout is Kafka's own offset-commit records, so Kafka's tools can read the topic:
//!
//! Record key   (big-endian, Kafka-style strings with an i16 length): Kafka's key v1
//!   version i16 = 1, group string, topic string, partition i32
//! Record value (absent for a tombstone: the offset was deleted or expired): Kafka's value v3
//!   version i16 = 3, offset i64, leader epoch i32, metadata string, commit time ms i64
//!
//! Earlier shardlog versions wrote the same value layout under version 1 (in per-shard
//! logs, see `legacy`); it is read as such. Later records override earlier ones for the
//! same key, as in a compacted Kafka topic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

const KEY_VERSION: i16 = 1;
const VALUE_VERSION: i16 = 3;
/// The value version earlier shardlog versions wrote, with v3's layout.
const LEGACY_VALUE_VERSION: i16 = 1;

/// One entry of the offsets log.
#[derive(Clone, Debug, PartialEq)]
pub struct OffsetRecord {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// None is a tombstone.
    pub value: Option<OffsetValue>,
}

/// A committed offset as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_time_ms: i64,
}

/// Longest string a record can hold (i16 length prefix).
pub const STRING_MAX_BYTES: usize = i16::MAX as usize;

fn put_str(buf: &mut BytesMut, s: &str) -> Result<(), String> {
    // Callers validate lengths (group id, topic name, metadata) against settings capped far
    // below this limit; a string past it is refused, never asserted on.
    let len = i16::try_from(s.len())
        .map_err(|_| format!("string of {} bytes in an offsets record", s.len()))?;
    buf.put_i16(len);
    buf.put_slice(s.as_bytes());
    Ok(())
}

fn get_str(buf: &mut Bytes) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = buf.get_i16();
    if len < 0 || buf.remaining() < len as usize {
        return None;
    }
    String::from_utf8(buf.split_to(len as usize).to_vec()).ok()
}

fn encode_key(r: &OffsetRecord) -> Result<Bytes, String> {
    let mut buf = BytesMut::with_capacity(8 + r.group.len() + r.topic.len());
    buf.put_i16(KEY_VERSION);
    put_str(&mut buf, &r.group)?;
    put_str(&mut buf, &r.topic)?;
    buf.put_i32(r.partition);
    Ok(buf.freeze())
}

fn encode_value(v: &OffsetValue) -> Result<Bytes, String> {
    let mut buf = BytesMut::with_capacity(24 + v.metadata.len());
    buf.put_i16(VALUE_VERSION);
    buf.put_i64(v.offset);
    buf.put_i32(v.leader_epoch);
    put_str(&mut buf, &v.metadata)?;
    buf.put_i64(v.commit_time_ms);
    Ok(buf.freeze())
}

fn decode_record(key: Option<Bytes>, value: Option<Bytes>) -> Option<OffsetRecord> {
    let mut key = key?;
    if key.remaining() < 2 || key.get_i16() != KEY_VERSION {
        return None;
    }
    let group = get_str(&mut key)?;
    let topic = get_str(&mut key)?;
    if key.remaining() < 4 {
        return None;
    }
    let partition = key.get_i32();
    let value = match value {
        None => None,
        Some(mut v) => {
            if v.remaining() < 14 {
                return None;
            }
            let version = v.get_i16();
            if version != VALUE_VERSION && version != LEGACY_VALUE_VERSION {
                return None;
            }
            let offset = v.get_i64();
            let leader_epoch = v.get_i32();
            let metadata = get_str(&mut v)?;
            if v.remaining() < 8 {
                return None;
            }
            Some(OffsetValue {
                offset,
                leader_epoch,
                metadata,
                commit_time_ms: v.get_i64(),
            })
        }
    };
    Some(OffsetRecord {
        group,
        topic,
        partition,
        value,
    })
}

/// One record batch holding `records`, ready for `PartitionLog::append`.
pub fn encode_batch(records: &[OffsetRecord], now_ms: i64) -> Result<Bytes, String> {
    let records = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: -1,
                timestamp: now_ms,
                key: Some(encode_key(r)?),
                value: r.value.as_ref().map(encode_value).transpose()?,
                headers: Default::default(),
            })
        })
        .collect::<Result<Vec<Record>, String>>()?;
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| format!("encoding offsets batch: {e}"))?;
    Ok(buf.freeze())
}

/// Every offset record in `bytes` (whole batches as read from the log), each with its
/// offset in the log. Records that do not parse are skipped with a warning: a damaged
/// entry must not stop the coordinator from loading the others.
pub fn decode_batches(mut bytes: Bytes) -> Result<Vec<(i64, OffsetRecord)>, String> {
    let mut out = Vec::new();
    while bytes.has_remaining() {
        let set = RecordBatchDecoder::decode(&mut bytes)
            .map_err(|e| format!("decoding offsets batch: {e}"))?;
        for record in set.records {
            if record.control {
                continue;
            }
            match decode_record(record.key, record.value) {
                Some(r) => out.push((record.offset, r)),
                None => tracing::warn!(
                    offset = record.offset,
                    "skipping an unreadable record of the offsets log"
                ),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(group: &str, topic: &str, partition: i32, offset: i64) -> OffsetRecord {
        OffsetRecord {
            group: group.into(),
            topic: topic.into(),
            partition,
            value: Some(OffsetValue {
                offset,
                leader_epoch: 3,
                metadata: "meta data".into(),
                commit_time_ms: 1_700_000_000_000,
            }),
        }
    }

    #[test]
    fn a_batch_of_commits_and_tombstones_reads_back_as_written() {
        let mut tombstone = commit("g", "orders", 1, 0);
        tombstone.value = None;
        let written = vec![
            commit("g", "orders", 0, 42),
            tombstone,
            commit("other", "t", 7, i64::MAX),
        ];
        let batch = encode_batch(&written, 5).unwrap();
        assert_eq!(batch[16], 2, "magic 2");
        let read = decode_batches(batch.clone()).unwrap();
        let offsets: Vec<i64> = read.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, vec![0, 1, 2]);
        let records: Vec<OffsetRecord> = read.into_iter().map(|(_, r)| r).collect();
        assert_eq!(records, written);

        // Two batches back to back, as a log read returns them.
        let mut both = BytesMut::new();
        both.extend_from_slice(&batch);
        both.extend_from_slice(&batch);
        assert_eq!(decode_batches(both.freeze()).unwrap().len(), 6);
    }

    #[test]
    fn a_record_with_an_unknown_key_version_is_skipped_not_fatal() {
        assert_eq!(
            decode_record(Some(Bytes::from_static(&[0, 9, 0, 0])), None),
            None
        );
        assert_eq!(decode_record(None, None), None);
        let truncated = encode_key(&commit("g", "t", 0, 1)).unwrap().slice(..5);
        assert_eq!(decode_record(Some(truncated), None), None);
    }
}
