//! Node-to-node requests that are not Raft RPCs: forwarded client writes and
//! reads, join/remove on the leader, probes for bootstrap and status. They ride
//! the QUIC transport's opaque `App` channel, bincode-encoded.

use std::time::Duration;

use floe_raft::PeerTransport;
use floe_state::{Command, CommandResponse, NodeId, NodeInfo};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Bumped when a message changes shape; a node refuses a version it cannot read.
/// 3: forwarded writes answer refusals as `CommandResponse::Rejected`.
const PEER_API_VERSION: u8 = 3;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Who are you, and do you hold Raft state? (bootstrap, join)
    Probe,
    /// Propose a command; only the leader accepts it.
    Write(Command),
    /// The leader's confirmed read index, for a linearizable read elsewhere.
    ReadIndex,
    Join {
        node_id: NodeId,
        raft_addr: String,
        learner_only: bool,
    },
    Remove {
        node_id: NodeId,
    },
    /// This node's own view: role, term, indexes.
    LocalStatus,
    /// A node's worker capacity and load, for the leader's scheduler.
    Report(crate::reports::NodeReport),
    /// Keep this blob (durably) before its reference is proposed.
    BlobPut {
        hash: String,
        bytes: serde_bytes::ByteBuf,
    },
    /// Send this node's copy of a blob, if it has one.
    BlobGet {
        hash: String,
    },
    /// Run this on a warm local replica of the model (no further hop).
    Infer {
        model: String,
        version: u64,
        inputs: floe_inference::TensorMap,
    },
    /// The leader's latest replica reports from every node (model status).
    ModelReports,
    /// Propose each command (a follower's forwarded writes, sent together);
    /// each is answered on its own.
    WriteMany(Vec<Command>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    Probe(ProbeInfo),
    Written(CommandResponse),
    ReadIndex(Option<u64>),
    Membership {
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
    },
    LocalStatus(LocalStatus),
    Ack,
    Blob(Option<serde_bytes::ByteBuf>),
    /// Outputs and the replica index; `None`: no warm replica here.
    Inferred(Option<(floe_inference::TensorMap, u32)>),
    ModelReports(Vec<(NodeId, Vec<crate::reports::ReplicaReport>)>),
    WrittenMany(Vec<Result<CommandResponse, ApiError>>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeInfo {
    pub node_id: NodeId,
    pub info: NodeInfo,
    pub has_raft_state: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocalStatus {
    pub node_id: NodeId,
    pub role: String,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub current_leader: Option<NodeId>,
}

pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, ApiError> {
    let mut bytes = vec![PEER_API_VERSION];
    let body = bincode::serde::encode_to_vec(message, bincode::config::standard())
        .map_err(|err| ApiError::Internal(format!("encoding peer message: {err}")))?;
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err(ApiError::Internal("empty peer message".into()));
    };
    if version != PEER_API_VERSION {
        return Err(ApiError::Internal(format!(
            "peer message version {version}, this node reads {PEER_API_VERSION}; upgrade all nodes to one release"
        )));
    }
    // The limit bounds what a length prefix may make the decoder allocate
    // before it finds the bytes missing: without it, a string that claims
    // exabytes aborts the process. A message rides one peer frame, so it
    // never needs more than a frame holds.
    let config = bincode::config::standard().with_limit::<{ floe_raft::wire::MAX_FRAME_BYTES }>();
    let (message, _) = bincode::serde::decode_from_slice(body, config)
        .map_err(|err| ApiError::Internal(format!("decoding peer message: {err}")))?;
    Ok(message)
}

/// Sends `request` to `target` and decodes its answer (reached through
/// `ClusterHandle::call`).
pub async fn call_via(
    network: &dyn PeerTransport,
    target: NodeId,
    raft_addr: &str,
    request: &PeerRequest,
    timeout: Duration,
) -> Result<PeerResponse, ApiError> {
    call_mapped(network, target, raft_addr, request, timeout, |err| err).await
}

async fn call_mapped(
    network: &dyn PeerTransport,
    target: NodeId,
    raft_addr: &str,
    request: &PeerRequest,
    timeout: Duration,
    transport: impl FnOnce(ApiError) -> ApiError,
) -> Result<PeerResponse, ApiError> {
    let payload = encode(request)?;
    let reply = network
        .call_app(target, raft_addr, payload, timeout)
        .await
        .map_err(|err| transport(transport_error(target, err)))?;
    decode::<Result<PeerResponse, ApiError>>(&reply)?
}

/// [`call_via`] to the leader with a forwarded client request: a transport
/// failure says that it was the leader that could not be reached or did not
/// answer, which a client needs to make sense of the refusal.
pub async fn call_leader(
    network: &dyn PeerTransport,
    leader: NodeId,
    raft_addr: &str,
    request: &PeerRequest,
    timeout: Duration,
) -> Result<PeerResponse, ApiError> {
    call_mapped(network, leader, raft_addr, request, timeout, |err| match err {
        ApiError::Unavailable(reason) => ApiError::Unavailable(format!("the leader, {reason}; retry")),
        ApiError::OutcomeUnknown(reason) => ApiError::OutcomeUnknown(format!(
            "the leader, {reason}; it may have failed or lost its quorum, and the request may or may not have been applied"
        )),
        other => other,
    })
    .await
}

fn transport_error(target: NodeId, err: floe_raft::TransportError) -> ApiError {
    // Only a request that provably never reached the peer is safe to call "unavailable".
    if matches!(err, floe_raft::TransportError::Unreachable { .. }) {
        ApiError::Unavailable(format!("node {target} unreachable: {err}"))
    } else {
        ApiError::OutcomeUnknown(format!("node {target} did not answer: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use floe_raft::TransportError;
    use futures::future::BoxFuture;

    use super::*;

    type Answer = fn(PeerRequest) -> Result<PeerResponse, ApiError>;

    /// An in-process network: each listed node answers with a function; any
    /// other node is unreachable.
    struct InMemory {
        nodes: HashMap<NodeId, Answer>,
    }

    impl PeerTransport for InMemory {
        fn call_app<'a>(
            &'a self,
            target: NodeId,
            addr: &'a str,
            payload: Vec<u8>,
            _timeout: Duration,
        ) -> BoxFuture<'a, Result<Vec<u8>, TransportError>> {
            Box::pin(async move {
                let Some(answer) = self.nodes.get(&target) else {
                    return Err(TransportError::Unreachable {
                        target,
                        addr: addr.to_string(),
                        reason: "not in the in-memory network".into(),
                    });
                };
                let outcome = decode::<PeerRequest>(&payload).and_then(answer);
                Ok(encode(&outcome).unwrap())
            })
        }

        fn rtts(&self) -> Vec<(NodeId, Duration)> {
            Vec::new()
        }
    }

    fn probe(request: PeerRequest) -> Result<PeerResponse, ApiError> {
        assert!(matches!(request, PeerRequest::Probe), "{request:?}");
        Ok(PeerResponse::Probe(ProbeInfo {
            node_id: 2,
            info: NodeInfo {
                raft_addr: "node-2:raft".into(),
                api_addr: "node-2:api".into(),
                http_addr: "node-2:http".into(),
            },
            has_raft_state: true,
        }))
    }

    /// A length prefix claiming 2^62 bytes for a blob's hash: refused as
    /// over the limit, where an unlimited decoder would try to allocate it
    /// and abort the process.
    #[test]
    fn a_length_past_the_frame_limit_is_refused_not_allocated() {
        let mut bytes = vec![PEER_API_VERSION, 8, 253];
        bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
        let hash = "9f86d081".to_string();
        let honest = encode(&PeerRequest::BlobGet { hash: hash.clone() }).unwrap();
        assert_eq!(honest[..2], bytes[..2], "variant 8 is BlobGet");
        match decode::<PeerRequest>(&bytes) {
            Err(ApiError::Internal(message)) => {
                assert!(message.contains("LimitExceeded"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(decode::<PeerRequest>(&honest), Ok(PeerRequest::BlobGet { hash: read }) if read == hash)
        );
    }

    #[tokio::test]
    async fn leader_calls_run_over_any_peer_transport() {
        let network = InMemory {
            nodes: HashMap::from([(2, probe as Answer)]),
        };
        let timeout = Duration::from_secs(1);
        let answer = call_leader(&network, 2, "node-2:raft", &PeerRequest::Probe, timeout)
            .await
            .unwrap();
        let PeerResponse::Probe(probe) = answer else {
            panic!("not a probe answer: {answer:?}");
        };
        assert_eq!(probe.node_id, 2);
        assert!(probe.has_raft_state);

        // A leader that cannot be reached is named as the leader and as unavailable.
        let error = call_leader(&network, 3, "node-3:raft", &PeerRequest::Probe, timeout)
            .await
            .unwrap_err();
        let ApiError::Unavailable(reason) = &error else {
            panic!("not unavailable: {error:?}");
        };
        assert!(
            reason.starts_with("the leader, node 3 unreachable"),
            "{reason}"
        );
    }

    #[test]
    fn a_message_of_another_release_is_refused_naming_both_versions() {
        let mut bytes = encode(&PeerRequest::ModelReports).unwrap();
        let back: PeerRequest = decode(&bytes).unwrap();
        assert!(matches!(back, PeerRequest::ModelReports));
        // The previous release wrote version 2.
        bytes[0] = 2;
        let error = decode::<PeerRequest>(&bytes).unwrap_err().to_string();
        assert!(
            error.contains("version 2") && error.contains("reads 3"),
            "{error}"
        );
    }
}
