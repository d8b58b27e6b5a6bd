//! Produce: split the request by owner shard, hand each owner its share in the connection's
//! request order, append on the owners concurrently, join the answers back into request
//! order. Record batches travel as `Bytes` slices of the request
//! frame; they are never decoded here (the log validates their headers).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

use super::{codes, decode_body, encode_response, Reply, Request};
use crate::log::batch;
use crate::shard::ops::ProduceResult;
use crate::shard::Shard;
use crate::sync::Turn;

/// (topic, partition, records) of one partition, as sent to its owner.
type PartitionRecords = (String, i32, Option<Bytes>);

/// Handles one Produce request. `turn` is its place among its connection's Produce requests
/// (see [`crate::sync::Turns`]): appends follow that order, so one producer's pipelined
/// requests to a partition are stored in the order it sent them.
pub async fn handle(
    shard: &Rc<Shard>,
    request: &Request,
    turn: Option<Turn>,
) -> Result<Reply, String> {
    let body: ProduceRequest = decode_body(request)?;
    let acks = body.acks;
    let timeout_ms = body.timeout_ms;
    // Index of every partition in request order, and the work per owner shard.
    let mut slots: Vec<(usize, usize, i32)> = Vec::new();
    let mut results: Vec<Vec<PartitionProduceResponse>> = Vec::with_capacity(body.topic_data.len());
    // Work for the owners: (owner, partition records), and the slot each answer fills.
    let mut work: Vec<(usize, PartitionRecords)> = Vec::new();
    let mut work_slots: Vec<usize> = Vec::new();
    let mut topic_names = Vec::with_capacity(body.topic_data.len());
    for (t, topic) in body.topic_data.into_iter().enumerate() {
        let name = topic.name.0.to_string();
        topic_names.push(topic.name);
        results.push(Vec::with_capacity(topic.partition_data.len()));
        for data in topic.partition_data {
            let slot = slots.len();
            slots.push((t, results[t].len(), data.index));
            results[t].push(partition_response(data.index, codes::NONE));
            if !matches!(acks, -1..=1) {
                results[t].last_mut().expect("just pushed").error_code =
                    codes::INVALID_REQUIRED_ACKS;
                continue;
            }
            if let Some(records) = &data.records {
                let refused = refuse_unreadable(records, request.version);
                if refused != codes::NONE {
                    results[t].last_mut().expect("just pushed").error_code = refused;
                    continue;
                }
            }
            // Only the group coordinator writes the internal topic (Kafka: "Cannot append
            // to internal topic", INVALID_TOPIC_EXCEPTION).
            let routed = if crate::catalog::is_internal(&name) {
                Err(codes::INVALID_TOPIC_EXCEPTION)
            } else {
                shard.route(&name, data.index)
            };
            match routed {
                Ok(owner) => {
                    work.push((owner, (name.clone(), data.index, data.records)));
                    work_slots.push(slot);
                }
                Err(code) => {
                    results[t].last_mut().expect("just pushed").error_code = code;
                }
            }
        }
    }
    // Hand the work to the owners in this connection's request order (the turn): the
    // owners take this request's places in each partition's append line as they receive
    // it, so the appends follow request order while still overlapping other requests'.
    let answers = shard
        .fan_out(work, turn, move |s, partitions| {
            s.produce_local(partitions, acks, timeout_ms)
        })
        .await;
    for (slot, answer) in work_slots.into_iter().zip(answers) {
        let (t, p, _) = slots[slot];
        match answer {
            Ok(answer) => fill(&mut results[t][p], answer, request.version),
            Err(_) => results[t][p].error_code = codes::KAFKA_STORAGE_ERROR,
        }
    }
    if acks == 0 {
        return Ok(Reply::None);
    }
    let responses = topic_names
        .into_iter()
        .zip(results)
        .map(|(name, partitions)| {
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(partitions)
        })
        .collect();
    Ok(encode_response(
        request,
        &ProduceResponse::default().with_responses(responses),
    ))
}

fn partition_response(index: i32, error_code: i16) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(error_code)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
}

fn fill(response: &mut PartitionProduceResponse, answer: ProduceResult, version: i16) {
    response.error_code = answer.error;
    response.base_offset = answer.base_offset;
    response.log_append_time_ms = answer.log_append_time_ms;
    // Fields newer than the request's version must keep their defaults.
    if version >= 5 {
        response.log_start_offset = answer.log_start_offset;
    }
    if version >= 8 {
        response.error_message = answer.message.map(StrBytes::from_string);
    }
}

/// Refuse batches that no consumer could read, as Kafka does: an unknown compression codec,
/// zstd from a producer too old to have negotiated it (Produce < 7), or a control batch
/// (those are written by transaction coordinators, never by producers). Looks only at each
/// batch header's attributes; anything else about the bytes is the log's to validate.
fn refuse_unreadable(records: &[u8], version: i16) -> i16 {
    for attributes in batch::attributes_of_each(&[records]) {
        let codec = attributes & batch::ATTRIBUTE_CODEC_MASK;
        if codec > batch::CODEC_ZSTD || (codec == batch::CODEC_ZSTD && version < 7) {
            return codes::UNSUPPORTED_COMPRESSION_TYPE;
        }
        if attributes & batch::ATTRIBUTE_CONTROL != 0 {
            return codes::INVALID_RECORD;
        }
    }
    codes::NONE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(attributes: i16) -> Vec<u8> {
        let mut batch = vec![0u8; 61];
        batch[8..12].copy_from_slice(&49i32.to_be_bytes());
        batch[16] = 2;
        batch[21..23].copy_from_slice(&attributes.to_be_bytes());
        batch
    }

    #[test]
    fn unreadable_batches_are_refused_with_kafkas_codes() {
        assert_eq!(refuse_unreadable(&header(0), 3), codes::NONE);
        assert_eq!(refuse_unreadable(&header(3), 3), codes::NONE);
        assert_eq!(refuse_unreadable(&header(4), 7), codes::NONE);
        assert_eq!(
            refuse_unreadable(&header(4), 6),
            codes::UNSUPPORTED_COMPRESSION_TYPE
        );
        assert_eq!(
            refuse_unreadable(&header(5), 9),
            codes::UNSUPPORTED_COMPRESSION_TYPE
        );
        assert_eq!(refuse_unreadable(&header(0x20), 9), codes::INVALID_RECORD);
        let mut two = header(0);
        two.extend(header(7));
        assert_eq!(
            refuse_unreadable(&two, 9),
            codes::UNSUPPORTED_COMPRESSION_TYPE
        );
    }
}
