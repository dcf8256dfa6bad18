//! openraft's view of the transport: PeerNetwork over real QUIC.

use std::time::Duration;

use floe_state::Snapshot;
use floe_storage::snapshot::SnapshotFile;
use floe_storage::{NodeInfo, SnapshotMeta, Vote};
use openraft::error::{RPCError, ReplicationClosed, StreamingError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::VoteRequest;

use super::harness::{localhost, FakeRaft, TestCa, TestServer};
use crate::network::{NetworkFactory, PeerNetwork};
use crate::peers::{Peers, TransportOptions};

async fn network_to(ca: &TestCa, our_id: u64, target: u64, addr: &str) -> PeerNetwork {
    let peers = Peers::new(&ca.node(our_id), TransportOptions::default()).unwrap();
    let mut factory = NetworkFactory::new(peers, our_id);
    let node = NodeInfo {
        raft_addr: addr.to_string(),
        ..NodeInfo::default()
    };
    factory.new_client(target, &node).await
}

fn vote() -> VoteRequest<u64> {
    VoteRequest::new(Vote::new(3, 2), None)
}

#[tokio::test]
async fn vote_reaches_the_remote_raft() {
    let ca = TestCa::new("c");
    let server = TestServer::start(&ca.node(1), 1, localhost());
    let mut network = network_to(&ca, 2, 1, &server.addr()).await;
    let response = network
        .vote(vote(), RPCOption::new(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(response.vote_granted);
    assert_eq!(response.vote, Vote::new(3, 2));
    server.stop().await;
}

#[tokio::test]
async fn errors_map_to_what_openraft_expects() {
    let ca = TestCa::new("c");
    let slow = FakeRaft {
        vote_delay: Duration::from_secs(10),
        ..FakeRaft::default()
    };
    let server = TestServer::start_with(&ca.node(1), 1, localhost(), slow);

    let mut network = network_to(&ca, 2, 1, &server.addr()).await;
    let timed_out = network
        .vote(vote(), RPCOption::new(Duration::from_millis(300)))
        .await;
    assert!(
        matches!(timed_out, Err(RPCError::Timeout(ref t)) if t.target == 1 && t.id == 2),
        "{timed_out:?}"
    );

    // The address is node 1's, dialed as node 5: TLS refuses, openraft backs off.
    let mut wrong = network_to(&ca, 2, 5, &server.addr()).await;
    let refused = wrong
        .vote(vote(), RPCOption::new(Duration::from_secs(2)))
        .await;
    assert!(
        matches!(refused, Err(RPCError::Unreachable(_))),
        "{refused:?}"
    );

    // Nothing listens on a port we just released.
    let dead_addr = std::net::UdpSocket::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut dead = network_to(&ca, 2, 1, &dead_addr).await;
    let unreachable = dead
        .vote(vote(), RPCOption::new(Duration::from_millis(500)))
        .await;
    assert!(
        matches!(unreachable, Err(RPCError::Unreachable(_))),
        "{unreachable:?}"
    );
    server.stop().await;
}

async fn snapshot_of(bytes: &[u8], dir: &std::path::Path) -> Snapshot {
    let mut file = SnapshotFile::create_incoming(dir).await.unwrap();
    for chunk in bytes.chunks(300_000) {
        file.write_chunk(chunk).await.unwrap();
    }
    file.finish_receiving().await.unwrap();
    let meta = SnapshotMeta {
        snapshot_id: "test-1".to_string(),
        ..SnapshotMeta::default()
    };
    Snapshot {
        meta,
        snapshot: Box::new(file),
    }
}

#[tokio::test]
async fn full_snapshot_is_installed_byte_identical() {
    let ca = TestCa::new("c");
    let server = TestServer::start(&ca.node(1), 1, localhost());
    let mut network = network_to(&ca, 2, 1, &server.addr()).await;
    let source_dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..3_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let snapshot = snapshot_of(&bytes, source_dir.path()).await;

    let never = futures::future::pending::<ReplicationClosed>();
    let response = network
        .full_snapshot(
            Vote::new_committed(4, 2),
            snapshot,
            never,
            RPCOption::new(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(response.vote, Vote::new_committed(4, 2));
    let installed = server
        .raft
        .installed
        .lock()
        .unwrap()
        .clone()
        .expect("snapshot installed");
    assert_eq!(installed.len(), bytes.len());
    assert!(
        installed == bytes,
        "installed snapshot differs from the sent one"
    );
    server.stop().await;
}

#[tokio::test]
async fn cancelled_snapshot_is_not_installed() {
    let ca = TestCa::new("c");
    let server = TestServer::start(&ca.node(1), 1, localhost());
    let mut network = network_to(&ca, 2, 1, &server.addr()).await;
    let source_dir = tempfile::tempdir().unwrap();
    let snapshot = snapshot_of(&vec![7u8; 4_000_000], source_dir.path()).await;

    let cancel = futures::future::ready(ReplicationClosed::new("leader stepped down"));
    let result = network
        .full_snapshot(
            Vote::new_committed(4, 2),
            snapshot,
            cancel,
            RPCOption::new(Duration::from_secs(10)),
        )
        .await;
    assert!(
        matches!(result, Err(StreamingError::Closed(_))),
        "{result:?}"
    );

    // The same peer then receives a complete snapshot; only that one is installed.
    let complete = vec![9u8; 1_500_000];
    let snapshot = snapshot_of(&complete, source_dir.path()).await;
    let never = futures::future::pending::<ReplicationClosed>();
    network
        .full_snapshot(
            Vote::new_committed(4, 2),
            snapshot,
            never,
            RPCOption::new(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(
        server.raft.calls.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(server.raft.installed.lock().unwrap().as_deref() == Some(&complete[..]));
    server.stop().await;
}
