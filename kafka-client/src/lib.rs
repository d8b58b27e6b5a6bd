//! shardlog-client: a small blocking Kafka client for shardlog's command-line tools
//! (`shardlog groups ...`) and its load generator (`shardlog-bench`), over
//! `std::net::TcpStream` and the `kafka-protocol` crate's message types.
//!
//! - [`client`]: one connection, connected before a deadline; ApiVersions first (v3, then v0
//!   on UNSUPPORTED_VERSION); then one request at a time at the negotiated version.
//! - [`versions`]: the client's version range per request type ([`ClientRequest`]), the
//!   broker's ranges ([`BrokerVersions`]) and the choice between them.
//! - [`frame`]: size prefix, request and response headers (flexible versions included),
//!   correlation-id check; also used by the bench's own non-blocking loop.
//! - [`error`]: one typed [`Error`] per way a request fails.
//!
//! What this crate must never do: depend on the broker crate (the bench shares it and must
//! stay independent of the server), panic on anything a broker sends, or hide a failure by
//! retrying a request. It knows Kafka's wire format, not what the tools do with the answers.
//!
//! ```
//! use kafka_protocol::messages::{ApiKey, ListGroupsRequest};
//! use shardlog_client::{BrokerVersions, ClientRequest};
//!
//! // A broker offering ListGroups v0..=3 and a client speaking v4..=5 have no version in common.
//! let broker = BrokerVersions::from_ranges([(ApiKey::ListGroups as i16, 0, 3)]);
//! assert_eq!(ListGroupsRequest::CLIENT_VERSIONS.min, 4);
//! assert!(broker.version_of::<ListGroupsRequest>().is_err());
//! ```

pub mod client;
pub mod error;
pub mod frame;
pub mod versions;

pub use client::{connect_with_deadline, Client, Options};
pub use error::{Api, Error, Result};
pub use versions::{BrokerVersions, ClientRequest};
