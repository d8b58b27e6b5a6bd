//! RecordBatch v2 for the bench's fixed-shape record, and the self-checking message value.
//!
//! Owns: the value layout (producer id, sequence, send time, payload checksum), a hand-written
//! encoder for an uncompressed batch of such records (the crate's generic encoder allocates per
//! record, which costs more than the rest of the send path at millions of records per second),
//! the crate-based encoder for compressed batches, and a zero-copy view that walks the records
//! of fetched batches. Never touches sockets.
//!
//! ```text
//! value = producer_id u32 LE | sequence u64 LE | send_time_ns u64 LE | crc32c(payload) u32 LE | payload
//! ```

use anyhow::{bail, ensure, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Bytes of the value header that precedes the payload.
pub const VALUE_HEADER_BYTES: usize = 24;
/// Bytes of the RecordBatch v2 header.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Payload variants: the payload of sequence `s` is the filler rotated by `s % PAYLOAD_VARIANTS`,
/// so neighbouring messages differ and a swapped or shifted payload fails its checksum.
const PAYLOAD_VARIANTS: usize = 256;

/// Precomputed payloads and their checksums for one message size.
pub struct Payloads {
    value_bytes: usize,
    filler: Vec<u8>,
    crcs: Vec<u32>,
}

impl Payloads {
    /// Payloads for values of `value_bytes` bytes (at least `VALUE_HEADER_BYTES`).
    pub fn new(value_bytes: usize) -> Result<Payloads> {
        ensure!(
            value_bytes >= VALUE_HEADER_BYTES,
            "--message-bytes must be at least {VALUE_HEADER_BYTES} (producer id, sequence, time, checksum)"
        );
        let payload_bytes = value_bytes - VALUE_HEADER_BYTES;
        // xorshift: cheap, deterministic, not compressible to nothing.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let filler: Vec<u8> = (0..payload_bytes + PAYLOAD_VARIANTS)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b'a' + (x % 26) as u8
            })
            .collect();
        let crcs = (0..PAYLOAD_VARIANTS)
            .map(|v| crc32c::crc32c(&filler[v..v + payload_bytes]))
            .collect();
        Ok(Payloads {
            value_bytes,
            filler,
            crcs,
        })
    }

    /// Bytes of each value.
    pub fn value_bytes(&self) -> usize {
        self.value_bytes
    }

    fn payload(&self, sequence: u64) -> (&[u8], u32) {
        let variant = (sequence % PAYLOAD_VARIANTS as u64) as usize;
        let payload_bytes = self.value_bytes - VALUE_HEADER_BYTES;
        (
            &self.filler[variant..variant + payload_bytes],
            self.crcs[variant],
        )
    }

    /// Writes the value of message `sequence` into `out`.
    pub fn write_value(
        &self,
        out: &mut Vec<u8>,
        producer_id: u32,
        sequence: u64,
        send_time_ns: u64,
    ) {
        let (payload, crc) = self.payload(sequence);
        out.extend_from_slice(&producer_id.to_le_bytes());
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(&send_time_ns.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(payload);
    }
}

/// What one message value says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueView {
    pub producer_id: u32,
    pub sequence: u64,
    pub send_time_ns: u64,
    /// The payload matches the checksum in the header.
    pub intact: bool,
}

/// Reads and checks one value; `None` if it is too short to be one of ours.
pub fn read_value(value: &[u8]) -> Option<ValueView> {
    if value.len() < VALUE_HEADER_BYTES {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(value[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(value[i..i + 8].try_into().unwrap());
    let crc = u32_at(20);
    Some(ValueView {
        producer_id: u32_at(0),
        sequence: u64_at(4),
        send_time_ns: u64_at(12),
        intact: crc32c::crc32c(&value[VALUE_HEADER_BYTES..]) == crc,
    })
}

/// Zigzag varint (Kafka's signed varint) of `v`.
#[inline]
fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    while u >= 0x80 {
        out.push((u as u8) | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}

#[inline]
fn varint_bytes(v: i64) -> usize {
    let u = ((v << 1) ^ (v >> 63)) as u64;
    (64 - (u | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads a zigzag varint at `*pos`, advancing it.
#[inline]
fn get_varint(buf: &[u8], pos: &mut usize) -> Result<i64> {
    let mut u: u64 = 0;
    let mut shift = 0;
    loop {
        ensure!(*pos < buf.len(), "varint runs past the batch");
        let b = buf[*pos];
        *pos += 1;
        u |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        ensure!(shift < 64, "varint too long");
    }
    Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
}

/// A run of messages to put in one batch: `count` messages of one producer, sequences from
/// `first_sequence`, the i-th intended to be sent at `send_time_ns(i)`.
pub struct BatchSpec<'a> {
    pub producer_id: u32,
    pub first_sequence: u64,
    pub count: usize,
    pub timestamp_ms: i64,
    pub send_time_ns: &'a dyn Fn(usize) -> u64,
}

/// Bytes of the batch `encode_batch` writes for `count` records, computed without encoding it,
/// so the request prefix can be written first and the batch straight after it.
pub fn batch_bytes(payloads: &Payloads, count: usize) -> usize {
    let value_bytes = payloads.value_bytes();
    let fixed = 4 + varint_bytes(value_bytes as i64) + value_bytes;
    BATCH_HEADER_BYTES
        + (0..count)
            .map(|i| {
                let body = fixed + varint_bytes(i as i64);
                varint_bytes(body as i64) + body
            })
            .sum::<usize>()
}

/// Appends an uncompressed RecordBatch v2 of fixed-shape records (no key, no headers) to `out`.
pub fn encode_batch(out: &mut Vec<u8>, payloads: &Payloads, spec: &BatchSpec) {
    let start = out.len();
    let n = spec.count;
    out.extend_from_slice(&0i64.to_be_bytes()); // base offset: the broker stamps it
    out.extend_from_slice(&0i32.to_be_bytes()); // length, patched below
    out.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    out.push(2); // magic
    out.extend_from_slice(&0u32.to_be_bytes()); // crc, patched below
    out.extend_from_slice(&0i16.to_be_bytes()); // attributes: no compression, create time
    out.extend_from_slice(&(n as i32 - 1).to_be_bytes()); // last offset delta
    out.extend_from_slice(&spec.timestamp_ms.to_be_bytes()); // base timestamp
    out.extend_from_slice(&spec.timestamp_ms.to_be_bytes()); // max timestamp
    out.extend_from_slice(&(-1i64).to_be_bytes()); // producer id: not idempotent
    out.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    out.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    out.extend_from_slice(&(n as i32).to_be_bytes()); // record count
    let value_bytes = payloads.value_bytes();
    let value_len_varint = varint_bytes(value_bytes as i64);
    out.reserve(n * (value_bytes + 16));
    for i in 0..n {
        // attributes(1) + timestamp delta(1) + offset delta + key length(1) + value length + value + headers(1)
        let body = 1 + 1 + varint_bytes(i as i64) + 1 + value_len_varint + value_bytes + 1;
        put_varint(out, body as i64);
        out.push(0);
        out.push(0);
        put_varint(out, i as i64);
        out.push(1); // key length -1, zigzag
        put_varint(out, value_bytes as i64);
        let sequence = spec.first_sequence + i as u64;
        payloads.write_value(out, spec.producer_id, sequence, (spec.send_time_ns)(i));
        out.push(0);
    }
    let length = (out.len() - start - 12) as i32;
    out[start + 8..start + 12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[start + 21..]);
    out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
}

/// Appends a compressed batch built with the crate's encoder (slower; compression dominates anyway).
pub fn encode_batch_compressed(
    out: &mut Vec<u8>,
    payloads: &Payloads,
    spec: &BatchSpec,
    compression: Compression,
) -> Result<()> {
    let records: Vec<Record> = (0..spec.count)
        .map(|i| {
            let mut value = Vec::with_capacity(payloads.value_bytes());
            let sequence = spec.first_sequence + i as u64;
            payloads.write_value(
                &mut value,
                spec.producer_id,
                sequence,
                (spec.send_time_ns)(i),
            );
            Record {
                transactional: false,
                control: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The crate starts a new batch whenever offset - sequence changes, and a
                // Produce request must carry exactly one batch per partition: keep it constant,
                // with the batch's base sequence at -1 (no idempotence).
                sequence: i as i32 - 1,
                timestamp: spec.timestamp_ms,
                key: None,
                value: Some(Bytes::from(value)),
                headers: Default::default(),
                delete_horizon: false,
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )?;
    out.extend_from_slice(&buf);
    Ok(())
}

/// One record as seen by a consumer.
pub struct RecordView<'a> {
    pub offset: i64,
    pub value: &'a [u8],
}

/// What walking the batches of one fetched partition found.
#[derive(Debug, Default)]
pub struct WalkOutcome {
    /// Offset after the last complete batch seen, if any.
    pub next_offset: Option<i64>,
    /// Batches whose CRC-32C did not match.
    pub crc_errors: u64,
}

/// Calls `each` for every record of every complete batch in `records` (a fetched record set;
/// a trailing partial batch is ignored, as Kafka allows). Checks each batch's CRC-32C, and
/// stops after the first batch that fails it: the caller resumes past that batch with its next
/// fetch, so a bad batch counts the same whether it ended a fetched record set or not.
pub fn walk_batches(records: &Bytes, mut each: impl FnMut(RecordView)) -> Result<WalkOutcome> {
    let buf: &[u8] = records;
    let mut pos = 0;
    let mut outcome = WalkOutcome::default();
    while buf.len() - pos >= BATCH_HEADER_BYTES {
        let base_offset = i64::from_be_bytes(buf[pos..pos + 8].try_into().unwrap());
        let length = i32::from_be_bytes(buf[pos + 8..pos + 12].try_into().unwrap());
        ensure!(
            length >= 49,
            "batch at offset {base_offset} has length {length}"
        );
        let end = pos + 12 + length as usize;
        if end > buf.len() {
            break;
        }
        let batch = &buf[pos..end];
        ensure!(
            batch[16] == 2,
            "batch at offset {base_offset} has magic {}",
            batch[16]
        );
        let crc = u32::from_be_bytes(batch[17..21].try_into().unwrap());
        let last_offset_delta = i32::from_be_bytes(batch[23..27].try_into().unwrap());
        if crc32c::crc32c(&batch[21..]) != crc {
            outcome.crc_errors += 1;
            outcome.next_offset = Some(base_offset + last_offset_delta as i64 + 1);
            break;
        }
        let attributes = i16::from_be_bytes(batch[21..23].try_into().unwrap());
        let control = attributes & 0x20 != 0;
        let count = i32::from_be_bytes(batch[57..61].try_into().unwrap());
        if control {
            // transaction markers carry no messages of ours
        } else if attributes & 0x07 != 0 {
            let mut bytes = records.slice(pos..end);
            let set = RecordBatchDecoder::decode(&mut bytes)?;
            for r in &set.records {
                each(RecordView {
                    offset: r.offset,
                    value: r.value.as_deref().unwrap_or(&[]),
                });
            }
        } else {
            let mut p = BATCH_HEADER_BYTES;
            for _ in 0..count {
                let body = get_varint(batch, &mut p)? as usize;
                let record_end = p + body;
                ensure!(record_end <= batch.len(), "record runs past its batch");
                p += 1; // attributes
                get_varint(batch, &mut p)?; // timestamp delta
                let offset_delta = get_varint(batch, &mut p)?;
                let key_len = get_varint(batch, &mut p)?;
                if key_len > 0 {
                    p += key_len as usize;
                }
                let value_len = get_varint(batch, &mut p)?;
                let value: &[u8] = if value_len >= 0 {
                    ensure!(
                        p + value_len as usize <= record_end,
                        "value runs past its record"
                    );
                    &batch[p..p + value_len as usize]
                } else {
                    &[]
                };
                each(RecordView {
                    offset: base_offset + offset_delta,
                    value,
                });
                p = record_end;
            }
        }
        outcome.next_offset = Some(base_offset + last_offset_delta as i64 + 1);
        pos = end;
    }
    Ok(outcome)
}

/// Parses `none|gzip|snappy|lz4|zstd`.
pub fn parse_compression(s: &str) -> Result<Compression> {
    Ok(match s {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => bail!("unknown compression {other:?}: none, gzip, snappy, lz4 or zstd"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(count: usize) -> BatchSpec<'static> {
        BatchSpec {
            producer_id: 7,
            first_sequence: 1000,
            count,
            timestamp_ms: 1_700_000_000_000,
            send_time_ns: &|i| 5_000 + i as u64,
        }
    }

    #[test]
    fn hand_encoded_batch_decodes_with_the_crate() {
        let payloads = Payloads::new(100).unwrap();
        let mut out = Vec::new();
        encode_batch(&mut out, &payloads, &spec(1000));
        assert_eq!(out.len(), batch_bytes(&payloads, 1000));
        let mut bytes = Bytes::from(out);
        let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
        assert_eq!(set.records.len(), 1000);
        for (i, r) in set.records.iter().enumerate() {
            assert_eq!(r.offset, i as i64);
            assert_eq!(r.timestamp, 1_700_000_000_000);
            assert!(r.key.is_none());
            assert!(r.headers.is_empty());
            let v = read_value(r.value.as_ref().unwrap()).unwrap();
            assert_eq!(
                v,
                ValueView {
                    producer_id: 7,
                    sequence: 1000 + i as u64,
                    send_time_ns: 5_000 + i as u64,
                    intact: true
                }
            );
        }
    }

    #[test]
    fn walk_reads_what_the_crate_encodes_compressed() {
        let payloads = Payloads::new(200).unwrap();
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut out = Vec::new();
            encode_batch_compressed(&mut out, &payloads, &spec(50), c).unwrap();
            assert_eq!(
                i32::from_be_bytes(out[57..61].try_into().unwrap()),
                50,
                "{c:?}: one batch of 50"
            );
            assert_eq!(
                i32::from_be_bytes(out[53..57].try_into().unwrap()),
                -1,
                "{c:?}: base sequence"
            );
            assert_eq!(
                12 + i32::from_be_bytes(out[8..12].try_into().unwrap()) as usize,
                out.len(),
                "{c:?}: one batch"
            );
            encode_batch(&mut out, &payloads, &spec(3));
            let mut seen = Vec::new();
            let outcome = walk_batches(&Bytes::from(out), |r| {
                seen.push((r.offset, read_value(r.value).unwrap()))
            })
            .unwrap();
            assert_eq!(seen.len(), 53, "{c:?}");
            assert!(seen.iter().all(|(_, v)| v.intact && v.producer_id == 7));
            assert_eq!(seen[49].1.sequence, 1049);
            assert_eq!(outcome.crc_errors, 0);
            assert_eq!(outcome.next_offset, Some(3));
        }
    }

    #[test]
    fn walk_ignores_a_trailing_partial_batch_and_counts_a_bad_crc() {
        let payloads = Payloads::new(64).unwrap();
        let mut out = Vec::new();
        encode_batch(&mut out, &payloads, &spec(10));
        let first_len = out.len();
        encode_batch(&mut out, &payloads, &spec(10));
        out[first_len..first_len + 8].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 10]);
        let truncated = Bytes::from(out[..out.len() - 5].to_vec());
        let mut n = 0;
        let outcome = walk_batches(&truncated, |_| n += 1).unwrap();
        assert_eq!((n, outcome.next_offset), (10, Some(10)));

        let mut corrupt = out.clone();
        corrupt[100] ^= 1;
        let mut n = 0;
        let outcome = walk_batches(&Bytes::from(corrupt), |_| n += 1).unwrap();
        assert_eq!(
            (n, outcome.crc_errors, outcome.next_offset),
            (0, 1, Some(10)),
            "the walk stops past the bad batch"
        );
    }

    #[test]
    fn a_flipped_payload_byte_fails_the_value_checksum() {
        let payloads = Payloads::new(100).unwrap();
        let mut v = Vec::new();
        payloads.write_value(&mut v, 1, 2, 3);
        assert!(read_value(&v).unwrap().intact);
        v[60] ^= 0x40;
        assert!(!read_value(&v).unwrap().intact);
        assert!(read_value(&v[..10]).is_none());
    }

    #[test]
    fn varint_sizes_match_encoding() {
        for v in [
            0i64,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            8191,
            8192,
            1 << 40,
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_bytes(v), "{v}");
            let mut p = 0;
            assert_eq!(get_varint(&out, &mut p).unwrap(), v);
        }
    }
}
