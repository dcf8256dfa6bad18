//! openraft's network traits over [`Peers`].

use std::future::Future;
use std::time::Duration;

use floe_state::{Snapshot, TypeConfig};
use floe_storage::{NodeId, NodeInfo, Vote};
use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError as RaftRemoteError,
    ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{StorageError, StorageIOError};

use crate::peers::{Peers, TransportError};
use crate::wire::{
    read_frame, send_snapshot_body, write_frame, FrameError, RemoteError, RequestBody,
    ResponseBody, ResponseFrame,
};

/// Builds one [`PeerNetwork`] per replication target; give it to `Raft::new`.
#[derive(Clone)]
pub struct NetworkFactory {
    peers: Peers,
    our_id: NodeId,
}

impl NetworkFactory {
    /// `our_id` is this node's id (openraft's timeout errors name both ends).
    pub fn new(peers: Peers, our_id: NodeId) -> Self {
        NetworkFactory { peers, our_id }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerNetwork {
        PeerNetwork {
            peers: self.peers.clone(),
            our_id: self.our_id,
            target,
            addr: node.raft_addr.clone(),
        }
    }
}

/// The connection to one peer as openraft sees it.
pub struct PeerNetwork {
    peers: Peers,
    our_id: NodeId,
    target: NodeId,
    addr: String,
}

type RaftRpcError = RPCError<NodeId, NodeInfo, RaftError<NodeId>>;
type SnapshotError = StreamingError<TypeConfig, Fatal<NodeId>>;

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RaftRpcError> {
        let entry_count = rpc.entries.len() as u64;
        let ttl = option.hard_ttl();
        let result = self
            .peers
            .call(
                self.target,
                &self.addr,
                RequestBody::AppendEntries(rpc),
                ttl,
            )
            .await;
        match result {
            Ok(ResponseBody::AppendEntries(response)) => Ok(response),
            Ok(other) => Err(self.unexpected("append-entries", other)),
            Err(TransportError::Stream {
                source: FrameError::TooLarge { .. },
                ..
            }) if entry_count > 1 => {
                // openraft retries with fewer entries per request.
                Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(entry_count / 2),
                ))
            }
            Err(error) => Err(self.rpc_error(error, RPCTypes::AppendEntries, ttl)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RaftRpcError> {
        let ttl = option.hard_ttl();
        match self
            .peers
            .call(self.target, &self.addr, RequestBody::Vote(rpc), ttl)
            .await
        {
            Ok(ResponseBody::Vote(response)) => Ok(response),
            Ok(other) => Err(self.unexpected("vote", other)),
            Err(error) => Err(self.rpc_error(error, RPCTypes::Vote, ttl)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, SnapshotError> {
        let ttl = option.hard_ttl();
        let signature = snapshot.meta.signature();
        let total_len = snapshot.snapshot.len().await.map_err(|error| {
            StreamingError::StorageError(StorageError::IO {
                source: StorageIOError::read_snapshot(Some(signature), &error),
            })
        })?;

        let connection = self
            .peers
            .connection(self.target, &self.addr, ttl)
            .await
            .map_err(|error| self.snapshot_error(error, ttl))?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|source| {
            self.snapshot_error(
                TransportError::Connection {
                    target: self.target,
                    source,
                },
                ttl,
            )
        })?;

        let header = self.peers.request_frame(RequestBody::Snapshot {
            vote,
            meta: snapshot.meta.clone(),
            total_len,
        });
        let target = self.target;
        let stream_error = |source| TransportError::Stream { target, source };
        let outcome = {
            let transfer = async {
                tokio::time::timeout(ttl, write_frame(&mut send, &header))
                    .await
                    .map_err(|_| TransportError::Timeout { target, after: ttl })?
                    .map_err(stream_error)?;
                send_snapshot_body(&mut send, &*snapshot.snapshot, total_len, ttl)
                    .await
                    .map_err(stream_error)?;
                let _ = send.finish();
                // The receiver fsyncs and installs before it answers.
                let response: ResponseFrame = tokio::time::timeout(ttl, read_frame(&mut recv))
                    .await
                    .map_err(|_| TransportError::Timeout { target, after: ttl })?
                    .map_err(stream_error)?;
                response.map_err(|source| TransportError::Remote { target, source })
            };
            tokio::select! {
                closed = cancel => Err(Cancelled(closed)),
                result = transfer => result.map_err(|error| Failed(Box::new(error))),
            }
        };
        match outcome {
            Ok(ResponseBody::Snapshot(response)) => Ok(response),
            Ok(other) => Err(SnapshotError::Network(NetworkError::new(
                &TransportError::UnexpectedResponse {
                    target,
                    expected: "snapshot",
                    got: other.kind(),
                },
            ))),
            Err(Cancelled(closed)) => {
                // Dropping a send stream would finish it; reset so the receiver discards the file.
                let _ = send.reset(1u32.into());
                Err(StreamingError::Closed(closed))
            }
            Err(Failed(error)) => {
                let _ = send.reset(1u32.into());
                Err(self.snapshot_error(*error, ttl))
            }
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Peers already paces redials; openraft's pause adds to it, so keep it short.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

enum SnapshotFailure {
    Cancelled(ReplicationClosed),
    Failed(Box<TransportError>),
}
use SnapshotFailure::{Cancelled, Failed};

impl PeerNetwork {
    fn rpc_error(&self, error: TransportError, action: RPCTypes, ttl: Duration) -> RaftRpcError {
        match error {
            TransportError::Timeout { .. } => RPCError::Timeout(self.timeout(action, ttl)),
            TransportError::Remote {
                source: RemoteError::Raft(raft_error),
                ..
            } => RPCError::RemoteError(RaftRemoteError::new(self.target, *raft_error)),
            error if is_unreachable(&error) => RPCError::Unreachable(Unreachable::new(&error)),
            error => RPCError::Network(NetworkError::new(&error)),
        }
    }

    fn snapshot_error(&self, error: TransportError, ttl: Duration) -> SnapshotError {
        match error {
            TransportError::Timeout { .. } => {
                StreamingError::Timeout(self.timeout(RPCTypes::InstallSnapshot, ttl))
            }
            TransportError::Remote {
                source: RemoteError::Fatal(fatal),
                ..
            } => StreamingError::RemoteError(RaftRemoteError::new(self.target, *fatal)),
            TransportError::Stream {
                source: FrameError::ChunkTimeout { .. },
                ..
            } => StreamingError::Timeout(self.timeout(RPCTypes::InstallSnapshot, ttl)),
            error if is_unreachable(&error) => {
                StreamingError::Unreachable(Unreachable::new(&error))
            }
            error => StreamingError::Network(NetworkError::new(&error)),
        }
    }

    fn timeout(&self, action: RPCTypes, ttl: Duration) -> Timeout<NodeId> {
        Timeout {
            action,
            id: self.our_id,
            target: self.target,
            timeout: ttl,
        }
    }

    fn unexpected(&self, expected: &'static str, got: ResponseBody) -> RaftRpcError {
        let error = TransportError::UnexpectedResponse {
            target: self.target,
            expected,
            got: got.kind(),
        };
        RPCError::Network(NetworkError::new(&error))
    }
}

/// Errors after which openraft should back off rather than retry at once:
/// no connection, or a refusal that will not change on a retry.
fn is_unreachable(error: &TransportError) -> bool {
    matches!(
        error,
        TransportError::Unreachable { .. }
            | TransportError::Remote {
                source: RemoteError::Refused(_),
                ..
            }
            | TransportError::Tls(_)
            | TransportError::Setup(_)
    )
}
