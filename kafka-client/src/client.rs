//! One blocking connection to one broker: connect before a deadline, learn the broker's
//! versions with ApiVersions, then one request at a time, each at the highest version both
//! sides speak.
//!
//! Owns the socket, its timeouts and the correlation ids. Never pipelines, never reconnects
//! on its own, and never retries a request (a timed-out request may still have been served,
//! so only its caller can judge whether to send it again).

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Request, StrBytes};

use crate::error::{Api, Error, Result};
use crate::frame::{decode_response, decode_response_header, encode_request, read_frame};
use crate::versions::{
    api_versions_request, parse_api_versions, BrokerVersions, ClientRequest, API_VERSIONS_FALLBACK,
    API_VERSIONS_FIRST,
};

/// Pause between connection attempts while a broker is not accepting yet.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// How a [`Client`] names itself and how long it waits.
#[derive(Debug, Clone)]
pub struct Options {
    /// The client id of every request header, and the software name sent in ApiVersions.
    pub client_id: &'static str,
    /// How long to keep trying to connect (a refused connection is tried again until then).
    pub connect_timeout: Duration,
    /// How long one request may wait for its response, and for its bytes to be sent.
    pub request_timeout: Duration,
}

/// Connects to `address` (HOST:PORT), trying every address it resolves to, again and again
/// until `timeout` has passed: a broker that is still starting refuses connections for a
/// moment. Each attempt is bounded by the time left, so an unreachable host cannot hold the
/// caller past the deadline.
pub fn connect_with_deadline(address: &str, timeout: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let failed = |cause| Error::Connect {
        address: address.to_string(),
        timeout,
        cause,
    };
    loop {
        let attempt = address
            .to_socket_addrs()
            .and_then(|addrs| connect_any(addrs.collect(), deadline));
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() + CONNECT_RETRY_PAUSE < deadline => {
                let _ = e; // the last attempt's error is the one reported
                thread::sleep(CONNECT_RETRY_PAUSE);
            }
            Err(e) => return Err(failed(e)),
        }
    }
}

/// One attempt at each resolved address in turn; the last error if none connects.
fn connect_any(addrs: Vec<SocketAddr>, deadline: Instant) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "the address resolves to nothing",
    );
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A blocking Kafka client: one connection, one request at a time.
///
/// ```no_run
/// use kafka_protocol::messages::ListGroupsRequest;
/// use shardlog_client::{Client, Options};
/// use std::time::Duration;
///
/// let options = Options {
///     client_id: "example",
///     connect_timeout: Duration::from_secs(5),
///     request_timeout: Duration::from_secs(30),
/// };
/// let mut client = Client::connect("127.0.0.1:9092", &options)?;
/// let groups = client.send(&ListGroupsRequest::default())?;
/// println!("{} groups", groups.groups.len());
/// # Ok::<(), shardlog_client::Error>(())
/// ```
pub struct Client {
    stream: TcpStream,
    client_id: StrBytes,
    request_timeout: Duration,
    correlation_id: i32,
    versions: BrokerVersions,
}

impl Client {
    /// Connects (see [`connect_with_deadline`]) and asks the broker's versions: ApiVersions
    /// v3, then v0 if the broker answers UNSUPPORTED_VERSION, as Kafka clients do.
    pub fn connect(address: &str, options: &Options) -> Result<Client> {
        let stream = connect_with_deadline(address, options.connect_timeout)?;
        let mut client = Client::over(stream, options)?;
        client.versions = client.ask_versions(options.client_id)?;
        Ok(client)
    }

    /// A client over a connected stream, before versions are known.
    fn over(stream: TcpStream, options: &Options) -> Result<Client> {
        let setup = |cause| Error::Io {
            api: Api(ApiKey::ApiVersions as i16),
            cause,
        };
        stream
            .set_read_timeout(Some(options.request_timeout))
            .map_err(setup)?;
        stream
            .set_write_timeout(Some(options.request_timeout))
            .map_err(setup)?;
        // One small request at a time: waiting to coalesce only adds latency.
        stream.set_nodelay(true).map_err(setup)?;
        Ok(Client {
            stream,
            client_id: StrBytes::from_static_str(options.client_id),
            request_timeout: options.request_timeout,
            correlation_id: 0,
            versions: BrokerVersions::default(),
        })
    }

    fn ask_versions(&mut self, software_name: &'static str) -> Result<BrokerVersions> {
        for version in [API_VERSIONS_FIRST, API_VERSIONS_FALLBACK] {
            let request = api_versions_request(software_name, version);
            if let Some(versions) =
                parse_api_versions(self.round_trip(&request, version)?, version)?
            {
                return Ok(versions);
            }
        }
        Err(Error::ApiVersions {
            version: API_VERSIONS_FALLBACK,
            code: crate::versions::UNSUPPORTED_VERSION,
        })
    }

    /// The versions the broker offers.
    pub fn versions(&self) -> &BrokerVersions {
        &self.versions
    }

    /// The version `send` uses for `R`: the highest both sides speak.
    pub fn version_of<R: ClientRequest>(&self) -> Result<i16> {
        self.versions.version_of::<R>()
    }

    /// Sends `request` at the highest version both sides speak and returns the response.
    pub fn send<R: ClientRequest>(&mut self, request: &R) -> Result<R::Response> {
        let version = self.version_of::<R>()?;
        self.send_at(request, version)
    }

    /// Sends `request` at `version` (which the caller negotiated) and returns the response.
    pub fn send_at<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let mut body = self.round_trip(request, version)?;
        decode_response::<R>(&mut body, version)
    }

    /// Sends one request and returns the response body, its header checked and removed.
    fn round_trip<R: Request>(&mut self, request: &R, version: i16) -> Result<Bytes> {
        let api = Api(R::KEY);
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let mut out = BytesMut::new();
        encode_request(
            &mut out,
            self.correlation_id,
            version,
            &self.client_id,
            request,
        )?;
        let timeout = self.request_timeout;
        let io = |cause: std::io::Error| match cause.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                Error::Timeout { api, timeout }
            }
            _ => Error::Io { api, cause },
        };
        self.stream.write_all(&out).map_err(io)?;
        let mut frame = read_frame(&mut self.stream, api).map_err(|e| match e {
            Error::Io { cause, .. } => io(cause),
            other => other,
        })?;
        decode_response_header::<R>(&mut frame, version, self.correlation_id)?;
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_port_nobody_listens_on_fails_at_the_deadline_naming_the_address() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(); // the listener closes here: connections are refused
        let address = format!("127.0.0.1:{port}");
        let started = Instant::now();
        let error = connect_with_deadline(&address, Duration::from_millis(300)).unwrap_err();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        assert!(matches!(error, Error::Connect { .. }), "{error}");
        assert!(error.to_string().contains(&address), "{error}");
    }

    #[test]
    fn an_address_that_does_not_parse_is_a_connect_error() {
        let error = connect_with_deadline("no-port-here", Duration::from_millis(50)).unwrap_err();
        assert!(matches!(error, Error::Connect { .. }), "{error}");
    }
}
