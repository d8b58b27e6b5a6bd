//! RecordBatch v2 header view: parse and validate the 61-byte header, check CRC-32C.
//!
//! Owns nothing but byte-offset arithmetic. Must never decode records or decompress:
//! everything here reads fixed header fields, so compressed batches cost the same.

use super::LogError;

/// Size of the fixed RecordBatch v2 header, up to and including RecordCount.
pub const BATCH_HEADER_BYTES: usize = 61;
/// BaseOffset + Length: the bytes not counted by the Length field.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// Smallest Length value: a header with no records.
const LENGTH_MIN_BYTES: usize = BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES;
/// The only record format this log stores.
pub const MAGIC_V2: i8 = 2;

const OFF_BASE_OFFSET: usize = 0;
const OFF_LENGTH: usize = 8;
const OFF_PARTITION_LEADER_EPOCH: usize = 12;
const OFF_MAGIC: usize = 16;
const OFF_CRC: usize = 17;
/// The CRC covers everything from Attributes to the end of the batch.
const OFF_ATTRIBUTES: usize = 21;
const OFF_LAST_OFFSET_DELTA: usize = 23;
const OFF_BASE_TIMESTAMP: usize = 27;
const OFF_MAX_TIMESTAMP: usize = 35;
const OFF_PRODUCER_ID: usize = 43;
const OFF_PRODUCER_EPOCH: usize = 51;
const OFF_BASE_SEQUENCE: usize = 53;
const OFF_RECORD_COUNT: usize = 57;

/// The fixed header fields of one RecordBatch v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    base_offset: i64,
    length: i32,
    partition_leader_epoch: i32,
    magic: i8,
    crc: u32,
    attributes: i16,
    last_offset_delta: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    record_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl BatchHeader {
    /// Parses the header at the start of `buf` and checks that the header is self-consistent
    /// (magic 2, Length at least a header). Does not need the records nor check the CRC.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, LogError> {
        if buf.len() < OFF_MAGIC + 1 {
            return Err(LogError::CorruptBatch(format!(
                "{} bytes cannot hold a batch header",
                buf.len()
            )));
        }
        let magic = buf[OFF_MAGIC] as i8;
        if magic != MAGIC_V2 {
            return Err(LogError::UnsupportedMagic(magic));
        }
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(LogError::CorruptBatch(format!(
                "{} bytes cannot hold a batch header of {BATCH_HEADER_BYTES}",
                buf.len()
            )));
        }
        let length = be_i32(buf, OFF_LENGTH);
        if length < LENGTH_MIN_BYTES as i32 {
            return Err(LogError::CorruptBatch(format!(
                "length {length} is below a header"
            )));
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, OFF_BASE_OFFSET),
            length,
            partition_leader_epoch: be_i32(buf, OFF_PARTITION_LEADER_EPOCH),
            magic,
            crc: be_i32(buf, OFF_CRC) as u32,
            attributes: be_i16(buf, OFF_ATTRIBUTES),
            last_offset_delta: be_i32(buf, OFF_LAST_OFFSET_DELTA),
            base_timestamp: be_i64(buf, OFF_BASE_TIMESTAMP),
            max_timestamp: be_i64(buf, OFF_MAX_TIMESTAMP),
            producer_id: be_i64(buf, OFF_PRODUCER_ID),
            producer_epoch: be_i16(buf, OFF_PRODUCER_EPOCH),
            base_sequence: be_i32(buf, OFF_BASE_SEQUENCE),
            record_count: be_i32(buf, OFF_RECORD_COUNT),
        })
    }

    /// Parses and fully validates the batch at the start of `buf` as a producer sent it:
    /// header, size limit, record count against LastOffsetDelta, and CRC-32C.
    pub fn validate(buf: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, LogError> {
        let header = BatchHeader::parse(buf)?;
        let total = header.total_bytes();
        if total > max_batch_bytes {
            return Err(LogError::BatchTooLarge {
                size: total,
                max: max_batch_bytes,
            });
        }
        if total > buf.len() {
            return Err(LogError::CorruptBatch(format!(
                "length says {total} bytes but only {} remain",
                buf.len()
            )));
        }
        if header.record_count < 1 || header.last_offset_delta != header.record_count - 1 {
            return Err(LogError::CorruptBatch(format!(
                "record count {} does not match last offset delta {}",
                header.record_count, header.last_offset_delta
            )));
        }
        if !crc_matches(&buf[..total], header.crc) {
            return Err(LogError::CorruptBatch("CRC-32C mismatch".into()));
        }
        Ok(header)
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }
    /// The Length field: bytes after itself.
    pub fn length(&self) -> i32 {
        self.length
    }
    /// Whole batch size in bytes, log overhead included.
    pub fn total_bytes(&self) -> usize {
        LOG_OVERHEAD_BYTES + self.length as usize
    }
    /// Leader epoch stamped by the broker that wrote the batch.
    pub fn partition_leader_epoch(&self) -> i32 {
        self.partition_leader_epoch
    }
    /// Record format; always 2 for a parsed header.
    pub fn magic(&self) -> i8 {
        self.magic
    }
    /// CRC-32C over Attributes..end as stored in the header.
    pub fn crc(&self) -> u32 {
        self.crc
    }
    /// Compression, timestamp type, transactional and control flags.
    pub fn attributes(&self) -> i16 {
        self.attributes
    }
    /// Offset of the last record relative to the base offset.
    pub fn last_offset_delta(&self) -> i32 {
        self.last_offset_delta
    }
    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }
    /// Timestamp of the first record.
    pub fn base_timestamp(&self) -> i64 {
        self.base_timestamp
    }
    /// Largest record timestamp in the batch.
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }
    /// Idempotent producer id, -1 for none.
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }
    /// Idempotent producer epoch.
    pub fn producer_epoch(&self) -> i16 {
        self.producer_epoch
    }
    /// Sequence number of the first record.
    pub fn base_sequence(&self) -> i32 {
        self.base_sequence
    }
    /// Sequence number of the last record; sequences wrap from i32::MAX to 0 as in Kafka.
    pub fn last_sequence(&self) -> i32 {
        let last = self.base_sequence as i64 + self.last_offset_delta as i64;
        (last % (i32::MAX as i64 + 1)) as i32
    }
    /// Number of records.
    pub fn record_count(&self) -> i32 {
        self.record_count
    }
    /// Returns the same header with another base offset, as stamped on append.
    pub(crate) fn with_base_offset(mut self, base_offset: i64) -> BatchHeader {
        self.base_offset = base_offset;
        self
    }
}

/// Attributes bits 0-2: the compression codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
pub const ATTRIBUTE_CODEC_MASK: i16 = 0x07;
/// The highest codec id Kafka defines (zstd).
pub const CODEC_ZSTD: i16 = 4;
/// Attributes bit 3: the batch's timestamps are the log append time, not the producer's.
pub const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;
/// Attributes bit 5: a control batch (written by transaction coordinators only).
pub const ATTRIBUTE_CONTROL: i16 = 0x20;

/// The attributes of each batch in concatenated batches split into `chunks` anywhere (a
/// Produce records field, or what a fetch returns), read from the headers in place without
/// copying. Stops at the first batch whose header is cut or whose length is impossible:
/// validating the rest is the log's job.
pub fn attributes_of_each(chunks: &[impl AsRef<[u8]>]) -> impl Iterator<Item = i16> + '_ {
    let byte_at = move |mut at: usize| -> Option<u8> {
        for chunk in chunks {
            let chunk = chunk.as_ref();
            if at < chunk.len() {
                return Some(chunk[at]);
            }
            at -= chunk.len();
        }
        None
    };
    let be = move |at: usize, len: usize| -> Option<u64> {
        (at..at + len).try_fold(0u64, |n, i| Some(n << 8 | u64::from(byte_at(i)?)))
    };
    let mut batch_at = 0usize;
    std::iter::from_fn(move || {
        let length = be(batch_at + OFF_LENGTH, 4)? as u32 as i32;
        let attributes = be(batch_at + OFF_ATTRIBUTES, 2)? as u16 as i16;
        if length < LENGTH_MIN_BYTES as i32 {
            return None;
        }
        batch_at += LOG_OVERHEAD_BYTES + length as usize;
        Some(attributes)
    })
}
/// The attribute bits Kafka keeps when it restamps a batch (codec, transactional, control,
/// delete horizon); it rebuilds the attributes from these and drops any other bit.
const ATTRIBUTES_KEPT_ON_RESTAMP: i16 = 0x77;

/// The chunks a log stores and serves for one validated batch of `batches` (at byte `at`):
/// its head stamped with `base_offset`, with `leader_epoch` when given (a leader stamps its
/// epoch; a follower keeps the leader's) and, for a LogAppendTime topic, with the append
/// time; and the rest of the batch as a slice of `batches` (never copied here). Returns the
/// stamped header too.
///
/// Without an append time only BaseOffset and PartitionLeaderEpoch may change, which the CRC
/// does not cover, so the head is the first 16 bytes (BaseOffset, Length, the epoch): one
/// small copy per batch whether or not an epoch is stamped. With an append time, the head
/// is the whole header rewritten as Kafka's LogValidator does for magic 2: the
/// timestamp-type attribute set, MaxTimestamp = the append time (BaseTimestamp and the
/// records' deltas untouched: a consumer reads every record's timestamp as MaxTimestamp
/// under LogAppendTime), and the CRC-32C recomputed over the new header fields and the
/// records, which it reads once but does not copy.
pub fn stamp(
    batches: &bytes::Bytes,
    at: usize,
    header: BatchHeader,
    base_offset: i64,
    leader_epoch: Option<i32>,
    log_append_time_ms: Option<i64>,
) -> (BatchHeader, bytes::Bytes, bytes::Bytes) {
    let end = at + header.total_bytes();
    let mut header = header.with_base_offset(base_offset);
    if let Some(epoch) = leader_epoch {
        header.partition_leader_epoch = epoch;
    }
    let Some(append_time_ms) = log_append_time_ms else {
        let mut head = [0u8; OFF_MAGIC];
        head[OFF_BASE_OFFSET..OFF_LENGTH].copy_from_slice(&base_offset.to_be_bytes());
        head[OFF_LENGTH..OFF_PARTITION_LEADER_EPOCH].copy_from_slice(&header.length.to_be_bytes());
        head[OFF_PARTITION_LEADER_EPOCH..OFF_MAGIC]
            .copy_from_slice(&header.partition_leader_epoch.to_be_bytes());
        let head = bytes::Bytes::copy_from_slice(&head);
        return (header, head, batches.slice(at + OFF_MAGIC..end));
    };
    let (header, head) = with_log_append_time(&batches[at..end], header, append_time_ms);
    let head = bytes::Bytes::copy_from_slice(&head);
    (header, head, batches.slice(at + BATCH_HEADER_BYTES..end))
}

/// The header of `batch` (validated, `header` its parsed header with the base offset to
/// stamp) rewritten for LogAppendTime at `append_time_ms`, and the header that describes it.
fn with_log_append_time(
    batch: &[u8],
    header: BatchHeader,
    append_time_ms: i64,
) -> (BatchHeader, [u8; BATCH_HEADER_BYTES]) {
    debug_assert_eq!(batch.len(), header.total_bytes());
    let mut head: [u8; BATCH_HEADER_BYTES] = batch[..BATCH_HEADER_BYTES]
        .try_into()
        .expect("a validated batch holds a whole header");
    let attributes = (header.attributes & ATTRIBUTES_KEPT_ON_RESTAMP) | ATTRIBUTE_LOG_APPEND_TIME;
    head[OFF_BASE_OFFSET..OFF_LENGTH].copy_from_slice(&header.base_offset.to_be_bytes());
    head[OFF_PARTITION_LEADER_EPOCH..OFF_MAGIC]
        .copy_from_slice(&header.partition_leader_epoch.to_be_bytes());
    head[OFF_ATTRIBUTES..OFF_LAST_OFFSET_DELTA].copy_from_slice(&attributes.to_be_bytes());
    head[OFF_MAX_TIMESTAMP..OFF_PRODUCER_ID].copy_from_slice(&append_time_ms.to_be_bytes());
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&head[OFF_ATTRIBUTES..]),
        &batch[BATCH_HEADER_BYTES..],
    );
    head[OFF_CRC..OFF_ATTRIBUTES].copy_from_slice(&crc.to_be_bytes());
    let stamped = BatchHeader {
        attributes,
        max_timestamp: append_time_ms,
        crc,
        ..header
    };
    (stamped, head)
}

/// True when the CRC-32C of `batch[Attributes..]` equals `crc`.
pub fn crc_matches(batch: &[u8], crc: u32) -> bool {
    batch.len() >= BATCH_HEADER_BYTES && crc32c::crc32c(&batch[OFF_ATTRIBUTES..]) == crc
}

/// Validates the Produce records field: one or more concatenated batches, all of them
/// before any is accepted. Returns each batch's byte range start and header.
pub fn validate_all(
    buf: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<(usize, BatchHeader)>, LogError> {
    if buf.is_empty() {
        return Err(LogError::CorruptBatch("no record batch".into()));
    }
    let mut batches = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let header = BatchHeader::validate(&buf[at..], max_batch_bytes)?;
        batches.push((at, header));
        at += header.total_bytes();
    }
    Ok(batches)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    /// A batch encoded by the kafka-protocol crate: `count` records of `value_bytes`,
    /// with the given producer id, epoch and base sequence.
    pub(crate) fn encode_batch(
        count: usize,
        value_bytes: usize,
        timestamp_ms: i64,
        producer: (i64, i16, i32),
        compression: Compression,
    ) -> Bytes {
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: producer.0,
                producer_epoch: producer.1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder starts a new batch whenever offset - sequence changes.
                sequence: if producer.0 < 0 {
                    i as i32 - 1
                } else {
                    producer.2 + i as i32
                },
                timestamp: timestamp_ms + i as i64,
                key: Some(Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(vec![b'v'; value_bytes])),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encode");
        buf.freeze()
    }

    pub(crate) fn plain(count: usize, ts: i64) -> Bytes {
        encode_batch(count, 100, ts, (-1, -1, -1), Compression::None)
    }

    #[test]
    fn a_batch_from_the_kafka_encoder_validates_with_its_fields() {
        let b = encode_batch(10, 100, 1_700_000_000_000, (7, 3, 42), Compression::None);
        let h = BatchHeader::validate(&b, 1 << 20).unwrap();
        assert_eq!(h.total_bytes(), b.len());
        assert_eq!(h.magic(), 2);
        assert_eq!(h.record_count(), 10);
        assert_eq!(h.last_offset_delta(), 9);
        assert_eq!(h.base_timestamp(), 1_700_000_000_000);
        assert_eq!(h.max_timestamp(), 1_700_000_000_009);
        assert_eq!(
            (h.producer_id(), h.producer_epoch(), h.base_sequence()),
            (7, 3, 42)
        );
        assert_eq!(h.last_sequence(), 51);
    }

    #[test]
    fn a_compressed_batch_validates_without_being_decompressed() {
        let b = encode_batch(50, 100, 5, (-1, -1, -1), Compression::Gzip);
        let h = BatchHeader::validate(&b, 1 << 20).unwrap();
        assert_eq!(h.record_count(), 50);
        assert_ne!(h.attributes() & 0x07, 0, "compression bits are set");
    }

    #[test]
    fn concatenated_batches_validate_together() {
        let mut all = BytesMut::new();
        all.extend_from_slice(&plain(3, 1));
        all.extend_from_slice(&plain(5, 2));
        let batches = validate_all(&all, 1 << 20).unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].0, plain(3, 1).len());
        assert_eq!(batches[1].1.record_count(), 5);
    }

    #[test]
    fn a_truncated_batch_is_corrupt() {
        let b = plain(3, 1);
        for cut in [0, 10, 16, 17, 60, b.len() - 1] {
            let err = BatchHeader::validate(&b[..cut], 1 << 20).unwrap_err();
            assert!(
                matches!(err, LogError::CorruptBatch(_)),
                "cut {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn a_flipped_byte_after_the_crc_fails_the_crc() {
        let b = plain(3, 1);
        for at in [OFF_ATTRIBUTES, OFF_MAX_TIMESTAMP, b.len() - 1] {
            let mut m = b.to_vec();
            m[at] ^= 0x40;
            let err = BatchHeader::validate(&m, 1 << 20).unwrap_err();
            assert!(matches!(err, LogError::CorruptBatch(_)), "at {at}: {err:?}");
        }
    }

    #[test]
    fn the_base_offset_is_outside_the_crc_so_stamping_keeps_it_valid() {
        let mut m = plain(3, 1).to_vec();
        m[..8].copy_from_slice(&12345i64.to_be_bytes());
        let h = BatchHeader::validate(&m, 1 << 20).unwrap();
        assert_eq!(h.base_offset(), 12345);
    }

    #[test]
    fn a_wrong_crc_field_is_corrupt() {
        let mut m = plain(3, 1).to_vec();
        m[OFF_CRC] ^= 1;
        assert!(matches!(
            BatchHeader::validate(&m, 1 << 20),
            Err(LogError::CorruptBatch(_))
        ));
    }

    #[test]
    fn magic_other_than_two_is_unsupported() {
        for magic in [0i8, 1, 3, -1] {
            let mut m = plain(3, 1).to_vec();
            m[OFF_MAGIC] = magic as u8;
            assert!(matches!(
                BatchHeader::validate(&m, 1 << 20),
                Err(LogError::UnsupportedMagic(x)) if x == magic
            ));
        }
    }

    #[test]
    fn lying_lengths_are_rejected() {
        let b = plain(3, 1);
        let too_long = (b.len() as i32 - 12) + 1;
        let too_short = (b.len() as i32 - 12) - 1;
        for (length, corrupt) in [(too_long, true), (too_short, true), (10, true), (-5, true)] {
            let mut m = b.to_vec();
            m[OFF_LENGTH..OFF_LENGTH + 4].copy_from_slice(&length.to_be_bytes());
            let r = BatchHeader::validate(&m, 1 << 20);
            assert_eq!(
                matches!(r, Err(LogError::CorruptBatch(_))),
                corrupt,
                "{length}: {r:?}"
            );
        }
        // A shorter length inside concatenated input leaves trailing garbage: rejected too.
        let mut m = b.to_vec();
        m[OFF_LENGTH..OFF_LENGTH + 4].copy_from_slice(&too_short.to_be_bytes());
        assert!(validate_all(&m, 1 << 20).is_err());
    }

    #[test]
    fn a_record_count_that_disagrees_with_the_last_offset_delta_is_corrupt() {
        let mut m = plain(3, 1).to_vec();
        m[OFF_RECORD_COUNT..OFF_RECORD_COUNT + 4].copy_from_slice(&4i32.to_be_bytes());
        assert!(matches!(
            BatchHeader::validate(&m, 1 << 20),
            Err(LogError::CorruptBatch(_))
        ));
    }

    #[test]
    fn a_batch_above_the_limit_is_too_large() {
        let b = plain(20, 1);
        let err = BatchHeader::validate(&b, b.len() - 1).unwrap_err();
        assert!(
            matches!(err, LogError::BatchTooLarge { size, max } if size == b.len() && max == b.len() - 1)
        );
        assert!(BatchHeader::validate(&b, b.len()).is_ok());
    }

    /// `stamp`'s two chunks joined: the bytes the log stores and serves for the batch.
    fn stamped_bytes(batches: &Bytes, at: usize, offset: i64, time: Option<i64>) -> Vec<u8> {
        let header = BatchHeader::parse(&batches[at..]).unwrap();
        let (_, head, rest) = stamp(batches, at, header, offset, None, time);
        [head.as_ref(), rest.as_ref()].concat()
    }

    #[test]
    fn log_append_time_stamps_the_header_and_keeps_the_crc_valid() {
        let batch = encode_batch(5, 100, 1_000, (7, 3, 42), Compression::Gzip);
        let header = BatchHeader::validate(&batch, 1 << 20).unwrap();

        let (stamped, head, rest) = stamp(&batch, 0, header, 500, None, Some(1_700_000_000_123));

        assert_eq!(head.len(), BATCH_HEADER_BYTES);
        assert_eq!(
            rest,
            batch.slice(BATCH_HEADER_BYTES..),
            "records are not rewritten"
        );
        let bytes = [head.as_ref(), rest.as_ref()].concat();
        let read = BatchHeader::validate(&bytes, 1 << 20).expect("CRC-32C valid after stamping");
        assert_eq!(read, stamped);
        assert_eq!(read.base_offset(), 500);
        assert_eq!(
            read.attributes() & ATTRIBUTE_LOG_APPEND_TIME,
            ATTRIBUTE_LOG_APPEND_TIME
        );
        assert_eq!(
            read.attributes() & 0x07,
            header.attributes() & 0x07,
            "codec kept"
        );
        assert_eq!(read.max_timestamp(), 1_700_000_000_123);
        assert_eq!(
            read.base_timestamp(),
            1_000,
            "BaseTimestamp is left as Kafka leaves it"
        );
        assert_eq!(
            (
                read.producer_id(),
                read.producer_epoch(),
                read.base_sequence()
            ),
            (7, 3, 42)
        );
        assert_eq!(read.record_count(), 5);
    }

    /// The kafka-protocol decoder checks the CRC and reads the timestamp type; it does not
    /// substitute MaxTimestamp for record times (real clients do: see the end-to-end test).
    #[test]
    fn a_stamped_batch_decodes_as_log_append_time_for_every_record() {
        let batch = encode_batch(3, 10, 1_000, (-1, -1, -1), Compression::Gzip);
        let mut bytes = Bytes::from(stamped_bytes(&batch, 0, 0, Some(9_999)));

        let decoded = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).unwrap();

        assert_eq!(decoded.records.len(), 3);
        for record in &decoded.records {
            assert_eq!(record.timestamp_type, TimestampType::LogAppend);
        }
    }

    #[test]
    fn without_an_append_time_only_the_base_offset_changes() {
        let mut all = BytesMut::new();
        all.extend_from_slice(&plain(3, 1));
        all.extend_from_slice(&plain(2, 2));
        let all = all.freeze();
        let at = plain(3, 1).len();
        let header = BatchHeader::parse(&all[at..]).unwrap();

        let (stamped, head, rest) = stamp(&all, at, header, 77, None, None);

        assert_eq!(head.len(), 16, "BaseOffset, Length and the epoch");
        assert_eq!(&head[..8], &77i64.to_be_bytes());
        let mut expected = all[at..].to_vec();
        expected[..8].copy_from_slice(&77i64.to_be_bytes());
        assert_eq!([head.as_ref(), rest.as_ref()].concat(), expected);
        assert_eq!(stamped, header.with_base_offset(77));
    }

    #[test]
    fn a_leader_epoch_is_stamped_outside_the_crc_with_or_without_an_append_time() {
        let batch = encode_batch(4, 50, 1_000, (7, 3, 42), Compression::Lz4);
        let header = BatchHeader::validate(&batch, 1 << 20).unwrap();
        for time in [None, Some(9_999)] {
            let (stamped, head, rest) = stamp(&batch, 0, header, 300, Some(17), time);

            let bytes = [head.as_ref(), rest.as_ref()].concat();
            let read = BatchHeader::validate(&bytes, 1 << 20).expect("CRC-32C still valid");
            assert_eq!(read, stamped, "{time:?}");
            assert_eq!(read.partition_leader_epoch(), 17);
            assert_eq!(read.base_offset(), 300);
            if time.is_none() {
                assert_eq!(&bytes[16..], &batch[16..], "nothing past the epoch changes");
            }
        }
        // Without an epoch to stamp, the batch keeps the one it carries (a follower's copy).
        let (kept, _, _) = stamp(&batch, 0, header, 300, None, None);
        assert_eq!(
            kept.partition_leader_epoch(),
            header.partition_leader_epoch()
        );
    }

    #[test]
    fn restamping_drops_attribute_bits_kafka_does_not_define() {
        let mut m = plain(2, 1).to_vec();
        m[OFF_ATTRIBUTES] = 0x80; // bit 15: undefined
        m[OFF_ATTRIBUTES + 1] = 0x10; // transactional
        let crc = crc32c::crc32c(&m[OFF_ATTRIBUTES..]);
        m[OFF_CRC..OFF_ATTRIBUTES].copy_from_slice(&crc.to_be_bytes());
        let m = Bytes::from(m);

        let bytes = stamped_bytes(&m, 0, 0, Some(5));

        let read = BatchHeader::validate(&bytes, 1 << 20).unwrap();
        assert_eq!(read.attributes(), 0x10 | ATTRIBUTE_LOG_APPEND_TIME);
    }

    #[test]
    fn empty_input_is_corrupt() {
        assert!(matches!(
            validate_all(&[], 1 << 20),
            Err(LogError::CorruptBatch(_))
        ));
    }
}
