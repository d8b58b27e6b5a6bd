//! openraft's network adapter: each raft RPC to a peer is one frame on that peer's
//! controller port (`rpc.rs`), over one connection per peer that openraft's replication task
//! for it owns.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use super::rpc::{Peer, Request, Response};
use super::types::{NodeId, TypeConfig};

/// A raft RPC that gets no answer within this is failed (the peer is retried later).
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Snapshots are larger.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            target,
            peer: Peer::new(node.addr.clone()),
        }
    }
}

pub struct Connection {
    target: NodeId,
    peer: Peer,
}

type Failure<E> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Connection {
    async fn send<E: std::error::Error>(
        &mut self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, Failure<E>> {
        if self.peer.addr().is_empty() {
            return Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other("node has no controller address"),
            )));
        }
        self.peer.call(&request, timeout).await.map_err(|e| {
            let e = std::io::Error::other(e);
            if e.to_string().contains("connecting") {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })
    }

    fn unexpected<E: std::error::Error>(&self, response: Response) -> Failure<E> {
        RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
            "node {} answered a raft RPC with {response:?}",
            self.target
        ))))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    /// Retry an unreachable peer every 100 ms (openraft's default is 500 ms): a restarted
    /// node hears the leader, and can vote, within a heartbeat or two of coming back.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, Failure<openraft::error::Infallible>> {
        match self.send(Request::AppendEntries(rpc), RPC_TIMEOUT).await? {
            Response::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, Failure<InstallSnapshotError>> {
        match self
            .send(Request::InstallSnapshot(rpc), SNAPSHOT_TIMEOUT)
            .await?
        {
            Response::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, Failure<openraft::error::Infallible>> {
        match self.send(Request::Vote(rpc), RPC_TIMEOUT).await? {
            Response::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }
}
