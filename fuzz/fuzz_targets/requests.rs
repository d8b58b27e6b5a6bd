//! Fuzz the broker's untrusted-input path without a network: split the input into frames
//! the way a connection does (`net::frame_size`), parse each request header
//! (`protocol::parse_request`), decode the body of every API at the request's version
//! (`kafka_protocol::messages::RequestKind::decode`, which the handlers use per API), and
//! validate Produce record batches as the log does on append (`log::batch::validate_all`).
//! Then, with `SHARDLOG_FUZZ_HANDLER=1`, hand the frame to the real handler entry point
//! (`protocol::handle`) of a one-shard broker on a scratch data dir.
//!
//! Nothing here may panic, abort or allocate beyond the frame limit: libFuzzer reports any
//! of these as a crash (`-rss_limit_mb`, `-malloc_limit_mb` in scripts/fuzz.sh).

#![no_main]

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestKind};
use kafka_protocol::protocol::Decodable;
use libfuzzer_sys::fuzz_target;
use shardlog::net::frame_size;
use shardlog::protocol::parse_request;

/// Small, so inputs reach past the framing; the broker's default is 100 MiB.
const MAX_FRAME_BYTES: usize = 1 << 20;
const MAX_BATCH_BYTES: usize = 1 << 20;

mod handler;

fuzz_target!(|data: &[u8]| {
    let mut stream = Bytes::copy_from_slice(data);
    loop {
        let size = match frame_size(&stream, MAX_FRAME_BYTES) {
            Ok(Some(size)) => size,
            Ok(None) | Err(_) => return, // need more bytes / connection closed
        };
        if stream.len() < 4 + size {
            return;
        }
        stream.advance(4);
        let frame = stream.split_to(size);
        one_frame(frame.clone());
        handler::run(frame);
    }
});

fn one_frame(frame: Bytes) {
    let Ok(request) = parse_request(frame) else {
        return;
    };
    let mut body = request.body.clone();
    let decoded = RequestKind::decode(request.api_key, &mut body, request.version);
    if request.api_key == ApiKey::Produce {
        let mut body = request.body.clone();
        if let Ok(produce) = ProduceRequest::decode(&mut body, request.version) {
            for topic in produce.topic_data {
                for partition in topic.partition_data {
                    if let Some(records) = partition.records {
                        let _ = shardlog::log::batch::validate_all(&records, MAX_BATCH_BYTES);
                    }
                }
            }
        }
    }
    drop(decoded);
}
