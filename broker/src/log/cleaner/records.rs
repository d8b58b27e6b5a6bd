//! The record reader of the cleaner: walks the records inside one RecordBatch v2
//! (decompressing when the batch is compressed) and writes a batch back with a subset of
//! its records, compressed with the same codec.
//!
//! Owns the record-level byte format (varints, key, value) and nothing else. Must never be
//! called from the log's append or read paths: only the cleaner and the produce-time
//! keyless-record check of compacted topics read inside batches.

use std::ops::Deref;

use bytes::BytesMut;
use kafka_protocol::compression::{self as codec, Compressor, Decompressor};

use crate::log::batch::{BatchHeader, ATTRIBUTE_CODEC_MASK, BATCH_HEADER_BYTES};
use crate::log::LogError;

const OFF_LENGTH: usize = 8;
const OFF_CRC: usize = 17;
const OFF_ATTRIBUTES: usize = 21;
const OFF_RECORD_COUNT: usize = 57;

/// One record of a batch, borrowed from the (decompressed) records section.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordView<'a> {
    /// Offset of the record relative to the batch's base offset.
    pub offset_delta: i64,
    /// Timestamp relative to the batch's base timestamp.
    pub timestamp_delta: i64,
    /// None for a record without a key.
    pub key: Option<&'a [u8]>,
    /// A null value: a tombstone.
    pub tombstone: bool,
    /// The whole record as stored, its length prefix included.
    pub raw: &'a [u8],
}

fn corrupt(what: &str) -> LogError {
    LogError::CorruptBatch(format!("record reader: {what}"))
}

/// Reads a zigzag varint (Kafka's signed varint and varlong) at `*at`.
fn varint(buf: &[u8], at: &mut usize) -> Result<i64, LogError> {
    let mut raw: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*at).ok_or_else(|| corrupt("varint past the end"))?;
        *at += 1;
        raw |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    Err(corrupt("varint longer than 10 bytes"))
}

/// A length-prefixed byte field (-1 = null).
fn bytes_field<'a>(buf: &'a [u8], at: &mut usize) -> Result<Option<&'a [u8]>, LogError> {
    let len = varint(buf, at)?;
    if len < 0 {
        return Ok(None);
    }
    let end = at
        .checked_add(len as usize)
        .filter(|&e| e <= buf.len())
        .ok_or_else(|| corrupt("field past the end of its record"))?;
    let field = &buf[*at..end];
    *at = end;
    Ok(Some(field))
}

/// A batch's records section: borrowed from the batch, or the decompressed copy.
pub(crate) enum Section<'a> {
    Borrowed(&'a [u8]),
    Owned(bytes::Bytes),
}

impl Deref for Section<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Section::Borrowed(b) => b,
            Section::Owned(b) => b,
        }
    }
}

/// The records section of `batch` (a whole, CRC-checked batch), decompressed if needed.
pub(crate) fn records_section(batch: &[u8], attributes: i16) -> Result<Section<'_>, LogError> {
    let body = batch
        .get(BATCH_HEADER_BYTES..)
        .ok_or_else(|| corrupt("batch shorter than its header"))?;
    let mut input = body;
    let take = |b: &mut bytes::Bytes| -> anyhow::Result<bytes::Bytes> { Ok(b.clone()) };
    let decoded = match attributes & ATTRIBUTE_CODEC_MASK {
        0 => return Ok(Section::Borrowed(body)),
        1 => codec::Gzip::decompress(&mut input, take),
        2 => codec::Snappy::decompress(&mut input, take),
        3 => codec::Lz4::decompress(&mut input, take),
        4 => codec::Zstd::decompress(&mut input, take),
        other => return Err(corrupt(&format!("unknown compression codec {other}"))),
    };
    decoded
        .map(Section::Owned)
        .map_err(|e| corrupt(&format!("cannot decompress: {e}")))
}

/// Calls `f` with each of the `count` records of a records section.
pub(crate) fn for_each_record<'a>(
    records: &'a [u8],
    count: i32,
    mut f: impl FnMut(RecordView<'a>) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let mut at = 0usize;
    for _ in 0..count.max(0) {
        let start = at;
        let len = varint(records, &mut at)?;
        let end = at
            .checked_add(usize::try_from(len).map_err(|_| corrupt("negative record length"))?)
            .filter(|&e| e <= records.len())
            .ok_or_else(|| corrupt("record past the end of its batch"))?;
        let body = &records[..end];
        let mut p = at + 1; // attributes, unused in v2
        let timestamp_delta = varint(body, &mut p)?;
        let offset_delta = varint(body, &mut p)?;
        let key = bytes_field(body, &mut p)?;
        let value = bytes_field(body, &mut p)?;
        f(RecordView {
            offset_delta,
            timestamp_delta,
            key,
            tombstone: value.is_none(),
            raw: &records[start..end],
        })?;
        at = end;
    }
    Ok(())
}

/// True when every record of every batch in `batches` (concatenated, validated batches, as
/// a Produce request carries them) has a key. Control batches carry no user records.
pub fn every_record_has_a_key(batches: &[u8]) -> Result<bool, LogError> {
    let mut at = 0usize;
    while at < batches.len() {
        let h = BatchHeader::parse(&batches[at..])?;
        let end = at + h.total_bytes();
        let batch = batches
            .get(at..end)
            .ok_or_else(|| corrupt("batch past the end"))?;
        if h.attributes() & crate::log::batch::ATTRIBUTE_CONTROL == 0 {
            let records = records_section(batch, h.attributes())?;
            let mut keyless = false;
            for_each_record(&records, h.record_count(), |r| {
                keyless |= r.key.is_none();
                Ok(())
            })?;
            if keyless {
                return Ok(false);
            }
        }
        at = end;
    }
    Ok(true)
}

/// Appends to `out` the batch `batch` (header `h`) holding only the records `keep` says
/// yes to, compressed with the batch's own codec; every header field but Length,
/// RecordCount and CRC stays as it was, so offsets, the last offset (LastOffsetDelta),
/// timestamps and the producer's id, epoch and sequences survive (as Kafka's cleaner keeps
/// them). Nothing is appended when no record is kept and `retain_empty` is false. Returns
/// how many records were kept.
pub(crate) fn filter_batch(
    batch: &[u8],
    h: &BatchHeader,
    mut keep: impl FnMut(&RecordView<'_>) -> bool,
    retain_empty: bool,
    out: &mut Vec<u8>,
) -> Result<usize, LogError> {
    let records = records_section(batch, h.attributes())?;
    // One pass to decide, so an all-kept batch is copied as is (no re-compression).
    let mut kept_ranges: Vec<(usize, usize)> = Vec::with_capacity(h.record_count().max(0) as usize);
    let base = records.as_ptr() as usize;
    for_each_record(&records, h.record_count(), |r| {
        if keep(&r) {
            let at = r.raw.as_ptr() as usize - base;
            kept_ranges.push((at, at + r.raw.len()));
        }
        Ok(())
    })?;
    let kept = kept_ranges.len();
    if kept == h.record_count().max(0) as usize {
        out.extend_from_slice(batch);
        return Ok(kept);
    }
    if kept == 0 && !retain_empty {
        return Ok(0);
    }
    let start = out.len();
    out.extend_from_slice(&batch[..BATCH_HEADER_BYTES]);
    let codec_id = h.attributes() & ATTRIBUTE_CODEC_MASK;
    if codec_id == 0 || kept == 0 {
        for (a, b) in &kept_ranges {
            out.extend_from_slice(&records[*a..*b]);
        }
        if kept == 0 && codec_id != 0 {
            // An empty batch has no records section to compress: say so in its attributes.
            let attributes = h.attributes() & !ATTRIBUTE_CODEC_MASK;
            out[start + OFF_ATTRIBUTES..start + OFF_ATTRIBUTES + 2]
                .copy_from_slice(&attributes.to_be_bytes());
        }
    } else {
        let fill = |tmp: &mut BytesMut| -> anyhow::Result<()> {
            for (a, b) in &kept_ranges {
                tmp.extend_from_slice(&records[*a..*b]);
            }
            Ok(())
        };
        let compressed = match codec_id {
            1 => codec::Gzip::compress(out, fill),
            2 => codec::Snappy::compress(out, fill),
            3 => codec::Lz4::compress(out, fill),
            _ => codec::Zstd::compress(out, fill),
        };
        compressed.map_err(|e| corrupt(&format!("cannot compress: {e}")))?;
    }
    let length = (out.len() - start - crate::log::batch::LOG_OVERHEAD_BYTES) as i32;
    out[start + OFF_LENGTH..start + OFF_LENGTH + 4].copy_from_slice(&length.to_be_bytes());
    out[start + OFF_RECORD_COUNT..start + OFF_RECORD_COUNT + 4]
        .copy_from_slice(&(kept as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[start + OFF_ATTRIBUTES..]);
    out[start + OFF_CRC..start + OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(kept)
}
