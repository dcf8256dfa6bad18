//! openraft's errors as a client reads them: the cause in a few words.
//!
//! openraft's own Display of these errors carries the whole membership, the
//! vote and log ids; a client needs to know what failed and whether to
//! retry, and the operator finds the rest in `floe cluster status`.

use std::time::Duration;

use floe_state::{NodeId, NodeInfo};
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader, InitializeError, RaftError,
};

use crate::error::ApiError;

/// Why a linearizable read could not be confirmed by this node as leader.
pub fn leadership_error(
    node_id: NodeId,
    voters: usize,
    heartbeat: Duration,
    err: RaftError<NodeId, CheckIsLeaderError<NodeId, NodeInfo>>,
) -> ApiError {
    match err {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)) => not_leader(node_id, &forward),
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(quorum)) => ApiError::Unavailable(format!(
            "node {node_id} could not confirm it is still leader: {} of {voters} voters answered within {} ms",
            // The leader counts itself; openraft's set holds the others that answered.
            quorum.got.len() + 1,
            heartbeat.as_millis()
        )),
        RaftError::Fatal(fatal) => stopped(node_id, &fatal),
    }
}

/// Why a write (or membership change) proposed on this node failed.
pub fn write_error(
    node_id: NodeId,
    err: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>,
) -> ApiError {
    match err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            not_leader(node_id, &forward)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(err)) => {
            ApiError::FailedPrecondition(format!("membership change refused: {err}"))
        }
        // The entry may already be in the log and on a majority, to be
        // committed by the next leader: never call it "not applied".
        RaftError::Fatal(fatal) => ApiError::OutcomeUnknown(format!(
            "{}; the write may or may not have been applied",
            stopped_message(node_id, &fatal)
        )),
    }
}

/// Why `cluster init` was refused.
pub fn initialize_error(
    node_id: NodeId,
    err: RaftError<NodeId, InitializeError<NodeId, NodeInfo>>,
) -> ApiError {
    match err {
        RaftError::APIError(InitializeError::NotAllowed(_)) => ApiError::FailedPrecondition(
            format!("node {node_id} cannot initialize a cluster: it already holds Raft state"),
        ),
        RaftError::APIError(InitializeError::NotInMembers(_)) => ApiError::FailedPrecondition(
            format!("node {node_id} cannot initialize a cluster it is not a member of"),
        ),
        RaftError::Fatal(fatal) => stopped(node_id, &fatal),
    }
}

/// Refused before anything was proposed: safe to send elsewhere.
fn not_leader(node_id: NodeId, forward: &ForwardToLeader<NodeId, NodeInfo>) -> ApiError {
    let now = match forward.leader_id {
        Some(leader) => format!("node {leader} leads now"),
        None => "no leader is known yet".to_string(),
    };
    ApiError::Unavailable(format!(
        "node {node_id} is no longer the leader ({now}); retry"
    ))
}

fn stopped(node_id: NodeId, fatal: &Fatal<NodeId>) -> ApiError {
    ApiError::Unavailable(stopped_message(node_id, fatal))
}

fn stopped_message(node_id: NodeId, fatal: &Fatal<NodeId>) -> String {
    let cause = match fatal {
        Fatal::StorageError(_) => "its store failed (see the node's log)",
        Fatal::Panicked => "its Raft core panicked (see the node's log)",
        Fatal::Stopped => "it is shutting down",
    };
    format!("node {node_id} cannot serve Raft requests: {cause}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::error::QuorumNotEnough;

    #[test]
    fn a_lost_quorum_names_how_many_voters_answered_not_the_membership() {
        let quorum = QuorumNotEnough {
            cluster: "{voters:[{1:{raft_addr:..}},{2:..},{3:..}]}".into(),
            got: Default::default(),
        };
        let err = RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(quorum));
        let message = leadership_error(1, 3, Duration::from_millis(50), err).to_string();
        assert_eq!(message, "unavailable: node 1 could not confirm it is still leader: 1 of 3 voters answered within 50 ms");
    }

    #[test]
    fn a_moved_leader_is_named_briefly() {
        let forward = ForwardToLeader {
            leader_id: Some(2),
            leader_node: Some(NodeInfo::default()),
        };
        let err = RaftError::APIError(ClientWriteError::ForwardToLeader(forward));
        assert_eq!(
            write_error(1, err).to_string(),
            "unavailable: node 1 is no longer the leader (node 2 leads now); retry"
        );
        let err: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>> =
            RaftError::Fatal(Fatal::Stopped);
        assert_eq!(
            write_error(3, err).to_string(),
            "outcome unknown: node 3 cannot serve Raft requests: it is shutting down; the write may or may not have been applied"
        );
    }
}
