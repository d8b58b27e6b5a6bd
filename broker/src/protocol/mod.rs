//! The Kafka wire protocol: which APIs and versions the broker speaks, decoding a request
//! frame, dispatching it to its handler, and encoding the response frame.
//!
//! Request and response types come from the `kafka-protocol` crate (generated from Kafka's
//! own schemas). This layer knows nothing of files: it calls the shard layer, which owns the
//! logs. Input is untrusted here: every decode error becomes an error answer or a closed
//! connection, never a panic.

pub mod admin;
pub mod epochs;
pub mod fetch;
pub mod fetch_encode;
pub mod groups;
pub mod metadata;
pub mod produce;
pub mod versions;

pub use crate::codes;

use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::shard::Shard;
use crate::sync::Turn;

/// What the connection does with a request's outcome.
pub enum Reply {
    /// A whole response frame (size prefix included), as chunks written with one vectored send.
    Frame(Vec<Bytes>),
    /// No response (Produce with acks=0).
    None,
    /// Close the connection (what Kafka does for undecodable requests), with the reason logged.
    Close(String),
}

/// A decoded request header plus the undecoded body.
#[derive(Debug)]
pub struct Request {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
}

/// Parse the header of one request frame (without its size prefix).
///
/// ApiVersions is special: a version we do not know still gets an answer (error 35 with our
/// ranges), so clients can step down; that is handled by `versions`.
pub fn parse_request(mut frame: Bytes) -> Result<Request, String> {
    if frame.len() < 8 {
        return Err(format!(
            "frame of {} bytes is too short for a request header",
            frame.len()
        ));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api_key = ApiKey::try_from(key).map_err(|_| format!("unknown api key {key}"))?;
    if !versions::is_supported(api_key, version) && api_key != ApiKey::ApiVersions {
        return Err(format!("unsupported version {version} of {api_key:?}"));
    }
    let header_version =
        if api_key == ApiKey::ApiVersions && !versions::is_supported(api_key, version) {
            // Unknown ApiVersions version: read only what every header version shares.
            1
        } else {
            api_key.request_header_version(version)
        };
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|e| format!("bad request header for {api_key:?} v{version}: {e}"))?;
    Ok(Request {
        api_key,
        version,
        header,
        body: frame,
    })
}

/// Decode a request body of type `T`; a malformed body is an error, never a panic.
pub fn decode_body<T: Decodable>(request: &Request) -> Result<T, String> {
    let mut body = request.body.clone();
    let value = T::decode(&mut body, request.version)
        .map_err(|e| format!("bad {:?} v{} body: {e}", request.api_key, request.version))?;
    Ok(value)
}

/// Encode a response frame: size, response header, body.
pub fn encode_response<T: Encodable>(request: &Request, body: &T) -> Reply {
    encode_response_version(request, body, request.version)
}

/// Like [`encode_response`] with an explicit body version (ApiVersions error answers use v0).
pub fn encode_response_version<T: Encodable>(request: &Request, body: &T, version: i16) -> Reply {
    let header_version = if request.api_key == ApiKey::ApiVersions {
        0 // ApiVersions responses always use header v0, so any client can read the error.
    } else {
        request.api_key.response_header_version(version)
    };
    let header = ResponseHeader::default().with_correlation_id(request.header.correlation_id);
    let size = match (
        header.compute_size(header_version),
        body.compute_size(version),
    ) {
        (Ok(h), Ok(b)) => h + b,
        (Err(e), _) | (_, Err(e)) => {
            return Reply::Close(format!(
                "cannot size {:?} v{version} response: {e}",
                request.api_key
            ))
        }
    };
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(size as i32);
    if let Err(e) = header.encode(&mut buf, header_version) {
        return Reply::Close(format!("cannot encode response header: {e}"));
    }
    if let Err(e) = body.encode(&mut buf, version) {
        return Reply::Close(format!("cannot encode {:?} response: {e}", request.api_key));
    }
    Reply::Frame(vec![buf.freeze()])
}

/// Whether a request frame is a Produce request: those take a [`Turn`] of their connection.
pub fn is_produce(frame: &[u8]) -> bool {
    frame.first_chunk::<2>() == Some(&(ApiKey::Produce as i16).to_be_bytes())
}

/// Run one request to completion. `turn` orders a Produce request among its connection's
/// (see `produce::handle`); other requests ignore it.
pub async fn handle(shard: &Rc<Shard>, frame: Bytes, turn: Option<Turn>) -> Reply {
    let started = std::time::Instant::now();
    let request = match parse_request(frame) {
        Ok(request) => request,
        Err(why) => {
            let refused = &shard.metrics.requests_refused;
            refused.set(refused.get() + 1);
            return Reply::Close(why);
        }
    };
    let api_key = request.api_key as i16;
    let reply = dispatch(shard, request, turn).await;
    shard.metrics.request(api_key, started.elapsed());
    reply
}

/// The handler of the request's API.
async fn dispatch(shard: &Rc<Shard>, request: Request, turn: Option<Turn>) -> Reply {
    let outcome = match request.api_key {
        ApiKey::ApiVersions => Ok(versions::handle(&request)),
        ApiKey::Metadata => metadata::handle(shard, &request).await,
        ApiKey::DescribeCluster => metadata::handle_describe_cluster(shard, &request).await,
        ApiKey::Produce => produce::handle(shard, &request, turn).await,
        ApiKey::Fetch => fetch::handle(shard, &request).await,
        ApiKey::ListOffsets => fetch::handle_list_offsets(shard, &request).await,
        ApiKey::OffsetForLeaderEpoch => epochs::handle(shard, &request).await,
        ApiKey::CreateTopics => admin::handle_create_topics(shard, &request).await,
        ApiKey::DeleteTopics => admin::handle_delete_topics(shard, &request).await,
        ApiKey::CreatePartitions => admin::handle_create_partitions(shard, &request).await,
        ApiKey::DescribeConfigs => admin::handle_describe_configs(shard, &request).await,
        ApiKey::AlterConfigs => admin::handle_alter_configs(shard, &request).await,
        ApiKey::IncrementalAlterConfigs => {
            admin::handle_incremental_alter_configs(shard, &request).await
        }
        ApiKey::InitProducerId => admin::handle_init_producer_id(shard, &request).await,
        ApiKey::FindCoordinator => groups::handle_find_coordinator(shard, &request).await,
        ApiKey::JoinGroup => groups::handle_join_group(shard, &request).await,
        ApiKey::SyncGroup => groups::handle_sync_group(shard, &request).await,
        ApiKey::Heartbeat => groups::handle_heartbeat(shard, &request).await,
        ApiKey::LeaveGroup => groups::handle_leave_group(shard, &request).await,
        ApiKey::OffsetCommit => groups::handle_offset_commit(shard, &request).await,
        ApiKey::OffsetFetch => groups::handle_offset_fetch(shard, &request).await,
        ApiKey::ListGroups => groups::handle_list_groups(shard, &request).await,
        ApiKey::DescribeGroups => groups::handle_describe_groups(shard, &request).await,
        ApiKey::DeleteGroups => groups::handle_delete_groups(shard, &request).await,
        ApiKey::OffsetDelete => groups::handle_offset_delete(shard, &request).await,
        other => Err(format!("api {other:?} is not implemented")),
    };
    outcome.unwrap_or_else(Reply::Close)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use kafka_protocol::messages::ProduceRequest;

    /// A Produce v7 request header (key 0, version 7, correlation 9, client id "t").
    fn produce_v7_header() -> BytesMut {
        let mut frame = BytesMut::new();
        frame.put_i16(0);
        frame.put_i16(7);
        frame.put_i32(9);
        frame.put_i16(1);
        frame.put_slice(b"t");
        frame
    }

    #[test]
    fn hostile_array_count_fails_to_decode_without_reserving_memory() {
        let mut frame = produce_v7_header();
        frame.put_i16(-1); // transactional id: null
        frame.put_i16(1); // acks
        frame.put_i32(1000); // timeout
        frame.put_i32(i32::MAX); // topic count: 2^31-1 topics in a 30-byte frame
        let request = parse_request(frame.freeze()).unwrap();
        let err = decode_body::<ProduceRequest>(&request).err().unwrap();
        assert!(err.contains("Produce"), "{err}");
    }

    #[test]
    fn unknown_api_key_and_unsupported_version_are_refused() {
        let mut frame = BytesMut::new();
        frame.put_i16(999);
        frame.put_i16(0);
        frame.put_i32(1);
        frame.put_i16(-1);
        assert!(parse_request(frame.freeze())
            .unwrap_err()
            .contains("unknown api key"));
        let mut frame = BytesMut::new();
        frame.put_i16(0);
        frame.put_i16(2); // Produce v2: advertised floor, but pre-RecordBatch
        frame.put_i32(1);
        frame.put_i16(-1);
        assert!(parse_request(frame.freeze())
            .unwrap_err()
            .contains("unsupported version"));
        assert!(parse_request(Bytes::from_static(b"abc"))
            .unwrap_err()
            .contains("too short"));
    }
}
