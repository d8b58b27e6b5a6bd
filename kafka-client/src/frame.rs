//! Framing: a request becomes `size | request header | body`, a response arrives as
//! `size | response header | body`. The header versions come from the kafka-protocol crate
//! (`HeaderVersion`), so flexible versions get request header v2 and response header v1, and
//! ApiVersions always gets response header v0, as Kafka defines.
//!
//! Owns the size-prefix checks and the correlation-id check. Never does I/O except in
//! [`read_frame`], never picks a version (that is `versions`), and never panics on what a
//! broker sends: every bad size or header is an [`Error`].
//!
//! ```
//! use bytes::BytesMut;
//! use kafka_protocol::messages::MetadataRequest;
//! use kafka_protocol::protocol::StrBytes;
//! use shardlog_client::frame::{encode_request, take_frame};
//!
//! let mut out = BytesMut::new();
//! let client_id = StrBytes::from_static_str("doc");
//! encode_request(&mut out, 7, 12, &client_id, &MetadataRequest::default()).unwrap();
//! let frame = take_frame(&mut out).unwrap().expect("a whole frame");
//! assert_eq!(&frame[..2], &3i16.to_be_bytes()); // Metadata's API key leads the header
//! assert!(out.is_empty());
//! ```

use std::io::{ErrorKind, Read};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use crate::error::{Api, Error, Result};

/// Largest response frame accepted (a Fetch response can be large); a bigger size prefix means
/// a broken stream, not a big answer.
pub const FRAME_BYTES_MAX: usize = 256 << 20;
/// Smallest response frame: the correlation id of the response header.
const FRAME_BYTES_MIN: usize = 4;

/// Appends a size-prefixed request frame (header + body) to `out`.
pub fn encode_request<R: Request>(
    out: &mut BytesMut,
    correlation_id: i32,
    version: i16,
    client_id: &StrBytes,
    body: &R,
) -> Result<()> {
    let encode_error = |e| Error::Encode {
        api: Api(R::KEY),
        version,
        detail: detail(e),
    };
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(client_id.clone()));
    let header_version = R::header_version(version);
    let size = header.compute_size(header_version).map_err(encode_error)?
        + body.compute_size(version).map_err(encode_error)?;
    let start = out.len();
    out.extend_from_slice(&(size as i32).to_be_bytes());
    let encoded = header
        .encode(out, header_version)
        .and_then(|()| body.encode(out, version));
    if let Err(e) = encoded {
        out.truncate(start); // no half request left in the caller's buffer
        return Err(encode_error(e));
    }
    Ok(())
}

/// Splits the response header off `frame` and checks that it answers `correlation_id`.
pub fn decode_response_header<R: Request>(
    frame: &mut Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<()> {
    let header =
        ResponseHeader::decode(frame, R::Response::header_version(version)).map_err(|e| {
            Error::Decode {
                api: Api(R::KEY),
                version,
                detail: format!("header: {}", detail(e)),
            }
        })?;
    if header.correlation_id != correlation_id {
        return Err(Error::CorrelationId {
            api: Api(R::KEY),
            expected: correlation_id,
            got: header.correlation_id,
        });
    }
    Ok(())
}

/// Decodes a response body (after its header) at `version`.
pub fn decode_response<R: Request>(body: &mut Bytes, version: i16) -> Result<R::Response> {
    R::Response::decode(body, version).map_err(|e| Error::Decode {
        api: Api(R::KEY),
        version,
        detail: detail(e),
    })
}

/// The text of a kafka-protocol encode or decode error (an `anyhow::Error`) with its causes.
fn detail(error: impl std::fmt::Display) -> String {
    format!("{error:#}")
}

/// The frame size a 4-byte prefix announces, checked against the limits.
fn frame_size(prefix: [u8; 4]) -> Result<usize> {
    let size = i32::from_be_bytes(prefix);
    match usize::try_from(size) {
        Ok(size) if (FRAME_BYTES_MIN..=FRAME_BYTES_MAX).contains(&size) => Ok(size),
        _ => Err(Error::FrameSize {
            size: size.into(),
            max: FRAME_BYTES_MAX,
        }),
    }
}

/// Takes one complete frame (without its size prefix) off the front of `buf`, if there is
/// one; reserves room for the rest of a partial frame.
pub fn take_frame(buf: &mut BytesMut) -> Result<Option<Bytes>> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let size = frame_size([prefix[0], prefix[1], prefix[2], prefix[3]])?;
    if buf.len() < 4 + size {
        buf.reserve(4 + size - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size).freeze()))
}

/// Reads one frame (without its size prefix) from a blocking stream. Memory grows with the
/// bytes that actually arrive, not with the size a broken stream announces.
pub fn read_frame(stream: &mut impl Read, api: Api) -> Result<Bytes> {
    let io = |cause| Error::Io { api, cause };
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).map_err(io)?;
    let size = frame_size(prefix)?;
    let mut frame = Vec::new();
    stream
        .take(size as u64)
        .read_to_end(&mut frame)
        .map_err(io)?;
    if frame.len() < size {
        return Err(io(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            format!(
                "connection closed after {} of {size} response bytes",
                frame.len()
            ),
        )));
    }
    Ok(Bytes::from(frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{
        ApiKey, ApiVersionsRequest, ApiVersionsResponse, ListGroupsRequest, ListGroupsResponse,
        MetadataRequest,
    };

    fn client_id() -> StrBytes {
        StrBytes::from_static_str("test-client")
    }

    /// A response frame as a broker writes it: size, header at the response header version
    /// of `R` at `version`, body.
    fn response_frame<R: Request>(correlation_id: i32, version: i16, body: &R::Response) -> Bytes {
        let mut out = BytesMut::new();
        let header = ResponseHeader::default().with_correlation_id(correlation_id);
        let header_version = R::Response::header_version(version);
        let size =
            header.compute_size(header_version).unwrap() + body.compute_size(version).unwrap();
        out.extend_from_slice(&(size as i32).to_be_bytes());
        header.encode(&mut out, header_version).unwrap();
        body.encode(&mut out, version).unwrap();
        out.freeze()
    }

    #[test]
    fn a_request_frame_carries_its_size_and_the_header_version_of_its_api_version() {
        for (version, header_version) in [(2, 1), (3, 2), (5, 2)] {
            let mut out = BytesMut::new();
            encode_request(
                &mut out,
                41,
                version,
                &client_id(),
                &ListGroupsRequest::default(),
            )
            .unwrap();
            let mut frame = out.freeze();
            assert_eq!(frame.get_i32() as usize, frame.len(), "v{version}");
            let header = RequestHeader::decode(&mut frame, header_version).unwrap();
            assert_eq!(
                (
                    header.request_api_key,
                    header.request_api_version,
                    header.correlation_id
                ),
                (ApiKey::ListGroups as i16, version, 41)
            );
            assert_eq!(header.client_id.unwrap().as_str(), "test-client");
            ListGroupsRequest::decode(&mut frame, version).unwrap();
            assert!(frame.is_empty(), "v{version}: trailing bytes");
        }
    }

    #[test]
    fn a_field_the_version_lacks_is_an_encode_error_and_leaves_the_buffer_as_it_was() {
        let mut out = BytesMut::from(&b"earlier"[..]);
        // allow_auto_topic_creation = false exists from Metadata v4 on.
        let request = MetadataRequest::default().with_allow_auto_topic_creation(false);
        let error = encode_request(&mut out, 1, 3, &client_id(), &request).unwrap_err();
        assert!(matches!(error, Error::Encode { version: 3, .. }), "{error}");
        assert_eq!(&out[..], b"earlier");
    }

    #[test]
    fn flexible_responses_have_header_v1_but_api_versions_always_has_v0() {
        let body = ListGroupsResponse::default();
        let mut frame = response_frame::<ListGroupsRequest>(9, 4, &body);
        frame.advance(4);
        decode_response_header::<ListGroupsRequest>(&mut frame, 4, 9).unwrap();
        decode_response::<ListGroupsRequest>(&mut frame, 4).unwrap();
        assert!(frame.is_empty());

        let body = ApiVersionsResponse::default();
        let mut frame = response_frame::<ApiVersionsRequest>(10, 3, &body);
        frame.advance(4);
        decode_response_header::<ApiVersionsRequest>(&mut frame, 3, 10).unwrap();
        decode_response::<ApiVersionsRequest>(&mut frame, 3).unwrap();
        assert!(frame.is_empty());
    }

    #[test]
    fn a_response_to_another_request_is_refused() {
        let mut frame = response_frame::<ListGroupsRequest>(8, 4, &ListGroupsResponse::default());
        frame.advance(4);
        let error = decode_response_header::<ListGroupsRequest>(&mut frame, 4, 9).unwrap_err();
        assert!(
            matches!(
                error,
                Error::CorrelationId {
                    expected: 9,
                    got: 8,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn a_truncated_response_is_a_decode_error_not_a_panic() {
        let mut frame = response_frame::<ListGroupsRequest>(1, 4, &ListGroupsResponse::default());
        frame.advance(4);
        decode_response_header::<ListGroupsRequest>(&mut frame, 4, 1).unwrap();
        let mut cut = frame.slice(..frame.len() - 1);
        assert!(matches!(
            decode_response::<ListGroupsRequest>(&mut cut, 4),
            Err(Error::Decode { .. })
        ));
    }

    #[test]
    fn take_frame_waits_for_a_whole_frame() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0, 0, 0]);
        assert!(take_frame(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&[6, 1, 2, 3]);
        assert!(take_frame(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&[4, 5, 6, 0, 0]);
        assert_eq!(
            &take_frame(&mut buf).unwrap().unwrap()[..],
            &[1, 2, 3, 4, 5, 6]
        );
        assert_eq!(&buf[..], &[0, 0]);
    }

    #[test]
    fn sizes_outside_the_limits_mean_a_broken_stream() {
        for prefix in [
            [0x7f, 0xff, 0xff, 0xff],
            [0xff, 0xff, 0xff, 0xff],
            [0, 0, 0, 3],
        ] {
            let mut buf = BytesMut::from(&prefix[..]);
            assert!(
                matches!(take_frame(&mut buf), Err(Error::FrameSize { .. })),
                "{prefix:?}"
            );
            let mut stream = &prefix[..];
            assert!(matches!(
                read_frame(&mut stream, Api(0)),
                Err(Error::FrameSize { .. })
            ));
        }
    }

    #[test]
    fn read_frame_reads_exactly_one_frame_and_reports_a_short_one() {
        let bytes = [0, 0, 0, 5, 1, 2, 3, 4, 5, 9, 9];
        let mut stream = &bytes[..];
        assert_eq!(
            &read_frame(&mut stream, Api(0)).unwrap()[..],
            &[1, 2, 3, 4, 5]
        );
        assert_eq!(stream, &[9, 9]);
        let short = [0, 0, 0, 5, 1, 2];
        let error = read_frame(&mut &short[..], Api(3)).unwrap_err();
        assert!(error.to_string().contains("after 2 of 5"), "{error}");
    }
}
