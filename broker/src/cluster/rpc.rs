//! The controller port: raft RPCs between nodes, and the requests brokers send the quorum
//! leader (register, heartbeat, propose a metadata change).
//!
//! A frame is a 4-byte big-endian length, then that many bytes of JSON (one `Request` or one
//! `Response`). A connection carries one request at a time, each answered before the next is
//! read. A length above `MAX_FRAME_BYTES`, a frame that does not decode, or a peer that
//! stops mid-frame for `READ_TIMEOUT` closes that connection and nothing else.

use std::net::SocketAddr;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::metadata::{Command, Registration, Reply};
use super::types::{NodeId, TypeConfig};

/// Largest frame either side accepts (a metadata snapshot of many topics fits easily).
pub const MAX_FRAME_BYTES: usize = 64 << 20;
/// A peer that starts a frame must finish it within this.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Debug)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A broker registers (or re-registers) with the quorum leader. `cluster_id` is the one
    /// its data dir belongs to, if it has joined a cluster before.
    Register {
        registration: Registration,
        cluster_id: Option<String>,
    },
    /// A broker's session heartbeat.
    Heartbeat {
        id: i32,
        epoch: u64,
    },
    /// A metadata change proposed by a broker that is not the leader.
    Propose(Command),
}

/// What the quorum leader answers a broker (or a node that is not the leader answers).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ControllerAnswer {
    /// Committed at log `index`; the reply of applying it.
    Applied { reply: Reply, index: u64 },
    /// A heartbeat was taken; `fenced` if the broker must register again.
    Alive { fenced: bool },
    /// Ask the leader instead (unknown if None).
    NotLeader {
        leader: Option<NodeId>,
        addr: Option<String>,
    },
    /// Refused for good (another cluster, a live broker with another incarnation...), or for
    /// now (`retriable`).
    Refused {
        code: i16,
        message: String,
        retriable: bool,
    },
}

#[derive(Serialize, Deserialize, Debug)]
pub enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Controller(ControllerAnswer),
}

/// Decode a frame's payload (the fuzz target's entry point).
pub fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, String> {
    serde_json::from_slice(payload).map_err(|e| format!("undecodable frame: {e}"))
}

/// A frame's payload and the bytes after it.
pub type Split<'a> = (&'a [u8], &'a [u8]);

/// Split one frame off the front of `buf`: Ok(Some((payload, rest))), Ok(None) if more
/// bytes are needed, Err if the length is above `MAX_FRAME_BYTES` (the connection closes).
pub fn split_frame(buf: &[u8]) -> Result<Option<Split<'_>>, String> {
    let Some(len) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let size = u32::from_be_bytes(*len) as usize;
    if size > MAX_FRAME_BYTES {
        return Err(format!(
            "frame of {size} bytes is above the {MAX_FRAME_BYTES} limit"
        ));
    }
    Ok(buf[4..].split_at_checked(size))
}

pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let body = serde_json::to_vec(message).expect("serializable");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Read one frame's payload: Ok(None) on a clean end of stream before a frame starts.
pub async fn read_frame(stream: &mut TcpStream) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let rest = async {
        stream.read_exact(&mut len[1..]).await?;
        let size = u32::from_be_bytes(len) as usize;
        if size > MAX_FRAME_BYTES {
            return Err(std::io::Error::other(format!(
                "frame of {size} bytes is above the {MAX_FRAME_BYTES} limit"
            )));
        }
        let mut payload = vec![0u8; size];
        stream.read_exact(&mut payload).await?;
        Ok(payload)
    };
    match tokio::time::timeout(READ_TIMEOUT, rest).await {
        Ok(Ok(payload)) => Ok(Some(payload)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("peer stopped in the middle of a frame".into()),
    }
}

/// One connection to a peer's controller port, opened on first use and again after an error.
pub struct Peer {
    addr: String,
    stream: Option<TcpStream>,
}

impl Peer {
    pub fn new(addr: impl Into<String>) -> Self {
        Peer {
            addr: addr.into(),
            stream: None,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Send a request and wait for its response, within `timeout` in all.
    pub async fn call(&mut self, request: &Request, timeout: Duration) -> Result<Response, String> {
        let frame = encode(request);
        let result = tokio::time::timeout(timeout, self.exchange(&frame)).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(format!("no answer from {} within {timeout:?}", self.addr)),
        };
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(&mut self, frame: &[u8]) -> Result<Response, String> {
        if self.stream.is_none() {
            let addr: SocketAddr = tokio::net::lookup_host(&self.addr)
                .await
                .map_err(|e| format!("{}: {e}", self.addr))?
                .next()
                .ok_or_else(|| format!("{}: no address", self.addr))?;
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connecting to {}: {e}", self.addr))?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream
            .write_all(frame)
            .await
            .map_err(|e| format!("{}: {e}", self.addr))?;
        match read_frame(stream).await? {
            Some(payload) => decode(&payload),
            None => Err(format!("{} closed the connection", self.addr)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_an_error() {
        let request = Request::Heartbeat { id: 3, epoch: 9 };
        let frame = encode(&request);
        assert_eq!(
            u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
            frame.len() - 4
        );
        match decode::<Request>(&frame[4..]).unwrap() {
            Request::Heartbeat { id: 3, epoch: 9 } => {}
            other => panic!("{other:?}"),
        }
        assert!(decode::<Request>(b"\xff\x00garbage").is_err());
        let (payload, rest) = split_frame(&frame).unwrap().unwrap();
        assert_eq!((payload, rest.len()), (&frame[4..], 0));
        assert_eq!(split_frame(&frame[..frame.len() - 1]).unwrap(), None);
        assert!(split_frame(&[0x7f, 0xff, 0xff, 0xff, 1]).is_err());
        assert!(decode::<Request>(&frame[4..frame.len() - 1]).is_err());
    }
}
