//! The client's errors: one variant per way a request can fail, each naming the API and the
//! broker's address or the version involved, so a tool can print it as is. The message of an
//! I/O error includes its cause (not also chained as `source`, so `{:#}` prints it once).

use std::fmt;
use std::io;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::VersionRange;

/// A Kafka API key, printed by name (`Metadata`), or by number when the crate does not know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Api(pub i16);

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match ApiKey::try_from(self.0) {
            Ok(key) => write!(f, "{key:?}"),
            Err(()) => write!(f, "API key {}", self.0),
        }
    }
}

impl From<ApiKey> for Api {
    fn from(key: ApiKey) -> Api {
        Api(key as i16)
    }
}

/// Everything that can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No TCP connection before the deadline (the last attempt's error).
    #[error("cannot connect to {address} within {timeout:?}: {cause}")]
    Connect {
        address: String,
        timeout: Duration,
        cause: io::Error,
    },
    /// The socket failed while sending a request or reading its response.
    #[error("{api}: {cause}")]
    Io { api: Api, cause: io::Error },
    /// The broker did not answer within the request timeout.
    #[error("{api}: no response within {timeout:?}")]
    Timeout { api: Api, timeout: Duration },
    /// The kafka-protocol crate refused to encode the request at this version (a field set
    /// that the version does not have).
    #[error("{api} v{version}: cannot encode the request: {detail}")]
    Encode {
        api: Api,
        version: i16,
        detail: String,
    },
    /// The response (header or body) does not decode at the version asked.
    #[error("{api} v{version}: cannot decode the response: {detail}")]
    Decode {
        api: Api,
        version: i16,
        detail: String,
    },
    /// A size prefix that is negative, too small for a response header, or above the limit.
    #[error("response frame of {size} bytes (expected 4..={max})")]
    FrameSize { size: i64, max: usize },
    /// The response answers another request: the stream is out of step.
    #[error("{api} response has correlation id {got}, expected {expected}")]
    CorrelationId { api: Api, expected: i32, got: i32 },
    /// The broker's ApiVersions answer does not list this API.
    #[error("the broker does not offer {api}")]
    NotOffered { api: Api },
    /// The broker's range and the client's range of an API do not overlap.
    #[error("no common version of {api}: client {client}, broker {broker}")]
    NoCommonVersion {
        api: Api,
        client: VersionRange,
        broker: VersionRange,
    },
    /// ApiVersions itself answered with an error code.
    #[error("ApiVersions v{version} answered error {code}")]
    ApiVersions { version: i16, code: i16 },
}

/// The client's result type.
pub type Result<T> = std::result::Result<T, Error>;
