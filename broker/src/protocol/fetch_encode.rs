//! A hand-written encoder for Fetch responses (v4 to v12) that never copies record data.
//!
//! The `kafka-protocol` crate encodes into one contiguous buffer, which would copy every
//! fetched batch once more. Here the fixed fields go into one small buffer and each
//! partition's record chunks are spliced in as the very `Bytes` the log returned (tail
//! cache or disk read), so the connection writes them with one vectored send. The unit
//! tests decode the output with the crate and compare, at every version served.

use bytes::{BufMut, Bytes, BytesMut};

/// One partition of the response.
pub struct PartitionOut {
    pub partition: i32,
    pub error: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// Whole record batches, as the log returned them.
    pub records: Vec<Bytes>,
    /// A follower's divergence (epoch, end offset): the v12+ `diverging_epoch` tagged field.
    pub diverging: Option<(i32, i64)>,
}

/// One topic of the response.
pub struct TopicOut {
    pub name: Bytes,
    pub partitions: Vec<PartitionOut>,
}

fn put_uvarint(buf: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn put_array_len(buf: &mut BytesMut, flexible: bool, len: usize) {
    if flexible {
        put_uvarint(buf, len as u32 + 1);
    } else {
        buf.put_i32(len as i32);
    }
}

/// Encode a whole response frame (size prefix, header, body) as chunks.
pub fn encode(correlation_id: i32, version: i16, topics: Vec<TopicOut>) -> Vec<Bytes> {
    debug_assert!(
        (4..=12).contains(&version),
        "fetch v{version} is not served"
    );
    let flexible = version >= 12;
    let mut meta = BytesMut::with_capacity(64 + topics.len() * 64);
    // Where record chunks go: (offset in `meta` before which they are inserted, chunks).
    let mut splices: Vec<(usize, Vec<Bytes>)> = Vec::new();
    let mut data_bytes = 0usize;
    meta.put_i32(0); // size, patched below
    meta.put_i32(correlation_id);
    if flexible {
        put_uvarint(&mut meta, 0); // response header v1 tagged fields
    }
    meta.put_i32(0); // throttle_time_ms
    if version >= 7 {
        meta.put_i16(0); // top-level error_code
        meta.put_i32(0); // session_id: fetch sessions are not kept, clients send full requests
    }
    put_array_len(&mut meta, flexible, topics.len());
    for topic in topics {
        if flexible {
            put_uvarint(&mut meta, topic.name.len() as u32 + 1);
        } else {
            meta.put_i16(topic.name.len() as i16);
        }
        meta.put_slice(&topic.name);
        put_array_len(&mut meta, flexible, topic.partitions.len());
        for r in topic.partitions {
            meta.put_i32(r.partition);
            meta.put_i16(r.error);
            meta.put_i64(r.high_watermark);
            meta.put_i64(r.high_watermark); // last_stable_offset: no transactions
            if version >= 5 {
                meta.put_i64(r.log_start_offset);
            }
            // aborted_transactions: null (read_uncommitted data, no transactions)
            if flexible {
                put_uvarint(&mut meta, 0);
            } else {
                meta.put_i32(-1);
            }
            if version >= 11 {
                meta.put_i32(-1); // preferred_read_replica
            }
            let len: usize = r.records.iter().map(|c| c.len()).sum();
            if flexible {
                put_uvarint(&mut meta, len as u32 + 1);
            } else {
                meta.put_i32(len as i32);
            }
            if len > 0 {
                data_bytes += len;
                splices.push((meta.len(), r.records));
            }
            if flexible {
                // Partition tagged fields: diverging_epoch (tag 0) when a follower's log
                // no longer continues the leader's.
                match r.diverging {
                    Some((epoch, end_offset)) => {
                        put_uvarint(&mut meta, 1); // one tagged field
                        put_uvarint(&mut meta, 0); // tag 0
                        put_uvarint(&mut meta, 13); // its size: i32 + i64 + no tags
                        meta.put_i32(epoch);
                        meta.put_i64(end_offset);
                        put_uvarint(&mut meta, 0);
                    }
                    None => put_uvarint(&mut meta, 0),
                }
            }
        }
        if flexible {
            put_uvarint(&mut meta, 0); // topic tagged fields
        }
    }
    if flexible {
        put_uvarint(&mut meta, 0); // body tagged fields
    }
    let size = meta.len() - 4 + data_bytes;
    meta[..4].copy_from_slice(&(size as i32).to_be_bytes());
    let meta = meta.freeze();
    let mut out = Vec::with_capacity(1 + splices.len() * 2);
    let mut at = 0;
    for (offset, chunks) in splices {
        out.push(meta.slice(at..offset));
        out.extend(chunks);
        at = offset;
    }
    out.push(meta.slice(at..));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{FetchResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;

    fn partition(partition: i32, records: Vec<Bytes>, error: i16) -> PartitionOut {
        PartitionOut {
            partition,
            error,
            high_watermark: 42,
            log_start_offset: 7,
            records,
            diverging: None,
        }
    }

    fn sample() -> Vec<TopicOut> {
        vec![
            TopicOut {
                name: Bytes::from_static(b"orders"),
                partitions: vec![
                    partition(
                        0,
                        vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defg")],
                        0,
                    ),
                    PartitionOut {
                        diverging: Some((3, 99)),
                        ..partition(3, vec![], 1)
                    },
                ],
            },
            TopicOut {
                name: Bytes::from_static(b"audit"),
                partitions: vec![partition(1, vec![Bytes::from(vec![9u8; 300])], 0)],
            },
        ]
    }

    #[test]
    fn crate_decodes_every_served_version_and_sees_the_same_fields() {
        for version in 4..=12i16 {
            let chunks = encode(77, version, sample());
            let mut frame = BytesMut::new();
            for c in &chunks {
                frame.extend_from_slice(c);
            }
            let mut frame = frame.freeze();
            let size = i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(size, frame.len() - 4, "v{version} size prefix");
            let _ = frame.split_to(4);
            let header_version = if version >= 12 { 1 } else { 0 };
            let header = ResponseHeader::decode(&mut frame, header_version).unwrap();
            assert_eq!(header.correlation_id, 77);
            let body = FetchResponse::decode(&mut frame, version).unwrap();
            assert!(frame.is_empty(), "v{version}: trailing bytes");
            assert_eq!(body.responses.len(), 2);
            assert_eq!(body.responses[0].topic.0.as_str(), "orders");
            let p0 = &body.responses[0].partitions[0];
            assert_eq!(p0.partition_index, 0);
            assert_eq!(p0.high_watermark, 42);
            assert_eq!(p0.last_stable_offset, 42);
            assert_eq!(p0.log_start_offset, if version >= 5 { 7 } else { -1 });
            assert_eq!(p0.records.as_deref(), Some(&b"abcdefg"[..]));
            let p1 = &body.responses[0].partitions[1];
            assert_eq!((p1.partition_index, p1.error_code), (3, 1));
            assert_eq!(p1.records.as_deref(), Some(&b""[..]));
            if version >= 12 {
                assert_eq!(
                    (p1.diverging_epoch.epoch, p1.diverging_epoch.end_offset),
                    (3, 99)
                );
                assert_eq!(p0.diverging_epoch.epoch, -1, "absent: the default");
            }
            assert_eq!(
                body.responses[1].partitions[0]
                    .records
                    .as_ref()
                    .unwrap()
                    .len(),
                300
            );
        }
    }

    #[test]
    fn record_chunks_are_spliced_not_copied() {
        let data = Bytes::from(vec![5u8; 1000]);
        let topics = vec![TopicOut {
            name: Bytes::from_static(b"t"),
            partitions: vec![partition(0, vec![data.clone()], 0)],
        }];
        let chunks = encode(1, 11, topics);
        assert!(chunks
            .iter()
            .any(|c| c.as_ptr() == data.as_ptr() && c.len() == data.len()));
    }
}
