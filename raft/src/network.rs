//! openraft's network traits over [`Peers`].

use std::future::Future;
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError as RaftRemoteError,
    ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Snapshot, StorageError, StorageIOError, Vote};

use crate::group::{GroupTransport, OutgoingBody};
use crate::peers::TransportError;
use crate::wire::{
    read_frame, send_snapshot_body, write_request, FrameError, RemoteError, RequestBody,
    ResponseBody, ResponseFrame, SnapshotSource,
};
use crate::{NodeId, RaftTypes};

/// Builds one [`PeerNetwork`] per replication target of one Raft group;
/// give it to `Raft::new`.
pub struct NetworkFactory<C: RaftTypes> {
    transport: GroupTransport<C>,
}

impl<C: RaftTypes> NetworkFactory<C> {
    pub fn new(transport: GroupTransport<C>) -> Self {
        NetworkFactory { transport }
    }
}

impl<C: RaftTypes> Clone for NetworkFactory<C> {
    fn clone(&self) -> Self {
        NetworkFactory {
            transport: self.transport.clone(),
        }
    }
}

impl<C: RaftTypes> RaftNetworkFactory<C> for NetworkFactory<C> {
    type Network = PeerNetwork<C>;

    async fn new_client(&mut self, target: NodeId, node: &C::Node) -> PeerNetwork<C> {
        PeerNetwork {
            addr: self.transport.address.of(node).to_string(),
            transport: self.transport.clone(),
            target,
        }
    }
}

/// The connection to one peer as openraft sees it.
pub struct PeerNetwork<C: RaftTypes> {
    transport: GroupTransport<C>,
    target: NodeId,
    addr: String,
}

type RaftRpcError<C> = RPCError<NodeId, <C as openraft::RaftTypeConfig>::Node, RaftError<NodeId>>;
type SnapshotError<C> = StreamingError<C, Fatal<NodeId>>;

impl<C: RaftTypes> RaftNetwork<C> for PeerNetwork<C> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RaftRpcError<C>> {
        let entry_count = rpc.entries.len() as u64;
        let ttl = option.hard_ttl();
        let result = self
            .transport
            .peers
            .call(
                self.target,
                &self.addr,
                self.transport.group,
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
    ) -> Result<VoteResponse<NodeId>, RaftRpcError<C>> {
        let ttl = option.hard_ttl();
        let body = RequestBody::<C>::Vote(rpc);
        match self
            .transport
            .peers
            .call(self.target, &self.addr, self.transport.group, body, ttl)
            .await
        {
            Ok(ResponseBody::Vote(response)) => Ok(response),
            Ok(other) => Err(self.unexpected("vote", other)),
            Err(error) => Err(self.rpc_error(error, RPCTypes::Vote, ttl)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<C>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, SnapshotError<C>> {
        let ttl = option.hard_ttl();
        let signature = snapshot.meta.signature();
        let body = OutgoingBody {
            bodies: &*self.transport.snapshots,
            body: &*snapshot.snapshot,
        };
        let total_len = body.total_len().await.map_err(|error| {
            StreamingError::StorageError(StorageError::IO {
                source: StorageIOError::read_snapshot(Some(signature), &error),
            })
        })?;

        let connection = self
            .transport
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

        let header = self.transport.peers.request_frame(
            self.transport.group,
            RequestBody::<C>::Snapshot {
                vote,
                meta: snapshot.meta.clone(),
                total_len,
            },
        );
        let target = self.target;
        let stream_error = |source| TransportError::Stream { target, source };
        let outcome = {
            let transfer = async {
                tokio::time::timeout(ttl, write_request(&mut send, &header))
                    .await
                    .map_err(|_| TransportError::Timeout { target, after: ttl })?
                    .map_err(stream_error)?;
                send_snapshot_body(&mut send, &body, total_len, ttl)
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
            Ok(other) => Err(StreamingError::Network(NetworkError::new(
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

impl<C: RaftTypes> PeerNetwork<C> {
    fn rpc_error(&self, error: TransportError, action: RPCTypes, ttl: Duration) -> RaftRpcError<C> {
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

    fn snapshot_error(&self, error: TransportError, ttl: Duration) -> SnapshotError<C> {
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
            id: self.transport.our_id,
            target: self.target,
            timeout: ttl,
        }
    }

    fn unexpected(&self, expected: &'static str, got: ResponseBody) -> RaftRpcError<C> {
        let error = TransportError::UnexpectedResponse {
            target: self.target,
            expected,
            got: got.kind(),
        };
        RPCError::Network(NetworkError::new(&error))
    }
}

/// Errors after which openraft should back off rather than retry at once:
/// no connection, or a refusal that will not change on a retry (a peer
/// that does not serve the group included).
fn is_unreachable(error: &TransportError) -> bool {
    matches!(
        error,
        TransportError::Unreachable { .. }
            | TransportError::Remote {
                source: RemoteError::Refused(_) | RemoteError::UnknownGroup { .. },
                ..
            }
            | TransportError::Tls(_)
            | TransportError::Setup(_)
    )
}
