//! Requests for Raft groups other than 0, and for groups a node does not serve.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::error::RPCError;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::VoteRequest;
use openraft::BasicNode;

use super::harness::{group_transport, localhost, FakeRaft, TestCa, TestConfig, TestServer, Vote};
use crate::network::NetworkFactory;
use crate::peers::{Peers, TransportError, TransportOptions};
use crate::wire::{
    write_request, GroupId, RemoteError, RequestBody, ResponseBody, ResponseFrame, DEFAULT_GROUP,
};

const RPC_TIMEOUT: Duration = Duration::from_secs(5);

fn server_for_group(ca: &TestCa, group: GroupId) -> TestServer {
    TestServer::start_serving(
        &ca.node(1),
        1,
        localhost(),
        FakeRaft::default(),
        Default::default(),
        group,
    )
}

fn vote_request() -> RequestBody<TestConfig> {
    RequestBody::Vote(VoteRequest::new(Vote::new(1, 2), None))
}

#[tokio::test]
async fn a_group_other_than_zero_is_served_over_version_2_frames() {
    let ca = TestCa::new("c");
    let server = server_for_group(&ca, 7);
    let peers = Peers::new(&ca.node(2), TransportOptions::default()).unwrap();
    let mut factory = NetworkFactory::new(group_transport(peers, 7, 2));
    let mut network = factory.new_client(1, &BasicNode::new(server.addr())).await;
    let response = network
        .vote(
            VoteRequest::new(Vote::new(3, 2), None),
            RPCOption::new(RPC_TIMEOUT),
        )
        .await
        .unwrap();
    assert!(response.vote_granted);
    assert_eq!(server.raft.calls.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_request_for_an_unknown_group_is_answered_naming_the_group() {
    let ca = TestCa::new("c");
    let server = server_for_group(&ca, DEFAULT_GROUP);
    let peers = Peers::new(&ca.node(2), TransportOptions::default()).unwrap();

    let refused = peers
        .call(1, &server.addr(), 7, vote_request(), RPC_TIMEOUT)
        .await;
    match refused {
        Err(TransportError::Remote {
            target: 1,
            source: source @ RemoteError::UnknownGroup { group: 7 },
        }) => assert_eq!(
            source.to_string(),
            "raft group 7 is not served by this node"
        ),
        other => panic!("expected an unknown-group answer, got {other:?}"),
    }
    assert_eq!(server.raft.calls.load(Ordering::SeqCst), 0);

    // openraft backs off from a peer that does not serve the group.
    let mut factory = NetworkFactory::new(group_transport(peers.clone(), 9, 2));
    let mut network = factory.new_client(1, &BasicNode::new(server.addr())).await;
    let result = network
        .vote(
            VoteRequest::new(Vote::new(3, 2), None),
            RPCOption::new(RPC_TIMEOUT),
        )
        .await;
    match result {
        Err(RPCError::Unreachable(unreachable)) => {
            assert!(
                unreachable.to_string().contains("raft group 9"),
                "{unreachable}"
            )
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }

    // The connection still serves the group it knows, and the node's own requests.
    let served = peers
        .call(
            1,
            &server.addr(),
            DEFAULT_GROUP,
            vote_request(),
            RPC_TIMEOUT,
        )
        .await
        .unwrap();
    assert!(matches!(served, ResponseBody::Vote(vote) if vote.vote_granted));
    let reply = peers
        .call_app(1, &server.addr(), b"hi".to_vec(), RPC_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(reply, b"node 2: hi");
    server.stop().await;
}

#[tokio::test]
async fn a_truncated_snapshot_body_is_discarded_not_installed() {
    let ca = TestCa::new("c");
    let server = server_for_group(&ca, 5);
    let peers = Peers::new(&ca.node(2), TransportOptions::default()).unwrap();
    let connection = peers
        .connection(1, &server.addr(), RPC_TIMEOUT)
        .await
        .unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let header = peers.request_frame(
        5,
        RequestBody::<TestConfig>::Snapshot {
            vote: Vote::new_committed(4, 2),
            meta: Default::default(),
            total_len: 1000,
        },
    );
    write_request(&mut send, &header).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut send, &[1u8; 600])
        .await
        .unwrap();
    send.finish().unwrap();
    let response: ResponseFrame = crate::wire::read_frame(&mut recv).await.unwrap();
    match response {
        Err(RemoteError::Failed(reason)) => {
            assert!(reason.contains("expected 1000 bytes"), "{reason}")
        }
        other => panic!("expected a failed transfer, got {other:?}"),
    }
    assert_eq!(server.snapshots.discarded.load(Ordering::SeqCst), 1);
    assert_eq!(server.snapshots.finished.load(Ordering::SeqCst), 0);
    assert!(server.raft.installed.lock().unwrap().is_none());
    server.stop().await;
}
