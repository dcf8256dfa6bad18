//! Shared test fixtures: a CA in a tempdir, servers with fake Raft handlers,
//! and a type configuration of the tests' own (the transport knows no other).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::certs::{create_ca, create_client, create_node};
use crate::election::{PreVoteRequest, PreVoteResponse};
use crate::group::{GroupTransport, NodeAddress, SnapshotBodies};
use crate::peers::Peers;
use crate::server::{AppHandler, RaftRpcHandler, RaftServer, RaftServerOptions, ServedGroup};
use crate::tls::{PeerIdentity, TlsMaterial};
use crate::wire::{GroupId, DEFAULT_GROUP};
use crate::NodeId;

openraft::declare_raft_types!(
    /// A type configuration unlike floe's: string commands, openraft's
    /// `BasicNode`, and snapshot bodies held in memory.
    pub TestConfig:
        D = String,
        R = String,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TestConfig>,
        SnapshotData = Vec<u8>,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TestConfig>,
);

pub type Vote = openraft::Vote<NodeId>;
pub type Snapshot = openraft::Snapshot<TestConfig>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;

/// Snapshot bodies in memory; counts the bodies thrown away.
#[derive(Default)]
pub struct MemoryBodies {
    pub finished: AtomicUsize,
    pub discarded: AtomicUsize,
}

impl SnapshotBodies<TestConfig> for MemoryBodies {
    fn len<'a>(&'a self, body: &'a Vec<u8>) -> BoxFuture<'a, io::Result<u64>> {
        Box::pin(async move { Ok(body.len() as u64) })
    }

    fn read_chunk<'a>(
        &'a self,
        body: &'a Vec<u8>,
        offset: u64,
        len: usize,
    ) -> BoxFuture<'a, io::Result<Vec<u8>>> {
        let start = (offset as usize).min(body.len());
        let end = start.saturating_add(len).min(body.len());
        Box::pin(async move { Ok(body[start..end].to_vec()) })
    }

    fn create_incoming(&self) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn write_chunk<'a>(
        &'a self,
        body: &'a mut Vec<u8>,
        chunk: &'a [u8],
    ) -> BoxFuture<'a, io::Result<()>> {
        body.extend_from_slice(chunk);
        Box::pin(async { Ok(()) })
    }

    fn finish_incoming<'a>(&'a self, _body: &'a mut Vec<u8>) -> BoxFuture<'a, io::Result<()>> {
        self.finished.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }

    fn discard_incoming(&self, _body: Vec<u8>) -> BoxFuture<'_, ()> {
        self.discarded.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {})
    }
}

/// Group `group`'s transport from node `our_id`, with bodies in memory.
pub fn group_transport(peers: Peers, group: GroupId, our_id: NodeId) -> GroupTransport<TestConfig> {
    GroupTransport::new(
        peers,
        group,
        our_id,
        NodeAddress::new(|node: &BasicNode| node.addr.as_str()),
        Arc::new(MemoryBodies::default()),
    )
}

/// A cluster CA in its own tempdir; node and client material next to it.
pub struct TestCa {
    pub dir: TempDir,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        create_ca(&dir.path().join("ca"), name).unwrap();
        TestCa { dir }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn node(&self, node_id: NodeId) -> TlsMaterial {
        let out = self.dir.path().join(format!("node-{node_id}"));
        if !out.exists() {
            create_node(&self.ca_dir(), node_id, &["127.0.0.1".to_string()], &out).unwrap();
        }
        TlsMaterial::load(
            &out.join("ca.pem"),
            &out.join("node.pem"),
            &out.join("node-key.pem"),
        )
        .unwrap()
    }

    pub fn client(&self, name: &str) -> TlsMaterial {
        let out = self.dir.path().join(format!("client-{name}"));
        let paths = create_client(&self.ca_dir(), name, &out).unwrap();
        TlsMaterial::load(&paths.ca, &paths.cert, &paths.key).unwrap()
    }
}

/// Answers `"<identity>: <payload>"` and counts calls.
#[derive(Default)]
pub struct EchoApp {
    pub calls: AtomicUsize,
}

impl AppHandler for EchoApp {
    fn handle(
        &self,
        from: PeerIdentity,
        request: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let reply = format!("{from}: {}", String::from_utf8_lossy(&request));
        Box::pin(async move { Ok(reply.into_bytes()) })
    }
}

/// Grants every vote (after an optional delay) and counts Raft calls.
#[derive(Default)]
pub struct FakeRaft {
    pub calls: AtomicUsize,
    pub vote_delay: Duration,
    /// The bytes of the last installed snapshot.
    pub installed: Arc<Mutex<Option<Vec<u8>>>>,
}

impl RaftRpcHandler<TestConfig> for FakeRaft {
    fn vote(
        &self,
        rpc: VoteRequest<NodeId>,
    ) -> BoxFuture<'static, Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.vote_delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(VoteResponse::new(rpc.vote, None, true))
        })
    }

    fn append_entries(
        &self,
        _rpc: AppendEntriesRequest<TestConfig>,
    ) -> BoxFuture<'static, Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(AppendEntriesResponse::Success) })
    }

    fn install_full_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
    ) -> BoxFuture<'static, Result<SnapshotResponse<NodeId>, Fatal<NodeId>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let installed = self.installed.clone();
        Box::pin(async move {
            *installed.lock().unwrap() = Some(*snapshot.snapshot);
            Ok(SnapshotResponse::new(vote))
        })
    }

    /// Grants odd askers, refuses even ones naming node 7 as the leader.
    fn pre_vote(&self, from: NodeId, rpc: PreVoteRequest) -> BoxFuture<'static, PreVoteResponse> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let granted = from % 2 == 1;
        Box::pin(async move {
            PreVoteResponse {
                granted,
                term: rpc.term + 1,
                leader: (!granted).then_some(7),
                reason: if granted {
                    String::new()
                } else {
                    format!("node {from} asked")
                },
            }
        })
    }
}

/// Group 0 served by a default [`FakeRaft`], bodies in memory.
pub fn fake_groups() -> BTreeMap<GroupId, ServedGroup<TestConfig>> {
    let group = ServedGroup {
        raft: Arc::new(FakeRaft::default()) as Arc<dyn RaftRpcHandler<TestConfig>>,
        snapshots: Arc::new(MemoryBodies::default()) as Arc<dyn SnapshotBodies<TestConfig>>,
    };
    BTreeMap::from([(DEFAULT_GROUP, group)])
}

/// A running server with fake Raft and echo app handlers, serving one group.
pub struct TestServer {
    pub server: RaftServer,
    pub shutdown: CancellationToken,
    pub raft: Arc<FakeRaft>,
    pub snapshots: Arc<MemoryBodies>,
    pub app: Arc<EchoApp>,
}

impl TestServer {
    pub fn start(tls: &TlsMaterial, node_id: NodeId, bind_addr: SocketAddr) -> TestServer {
        TestServer::start_with(tls, node_id, bind_addr, FakeRaft::default())
    }

    pub fn start_with(
        tls: &TlsMaterial,
        node_id: NodeId,
        bind_addr: SocketAddr,
        raft: FakeRaft,
    ) -> TestServer {
        TestServer::start_admitting(tls, node_id, bind_addr, raft, Default::default())
    }

    pub fn start_admitting(
        tls: &TlsMaterial,
        node_id: NodeId,
        bind_addr: SocketAddr,
        raft: FakeRaft,
        admission: crate::RaftAdmission,
    ) -> TestServer {
        TestServer::start_serving(tls, node_id, bind_addr, raft, admission, DEFAULT_GROUP)
    }

    /// A server whose one Raft group is `group`.
    pub fn start_serving(
        tls: &TlsMaterial,
        node_id: NodeId,
        bind_addr: SocketAddr,
        raft: FakeRaft,
        admission: crate::RaftAdmission,
        served_group: GroupId,
    ) -> TestServer {
        let options = RaftServerOptions {
            node_id,
            bind_addr,
            transport: Default::default(),
            admission,
        };
        let raft = Arc::new(raft);
        let snapshots = Arc::new(MemoryBodies::default());
        let group = ServedGroup {
            raft: raft.clone() as Arc<dyn RaftRpcHandler<TestConfig>>,
            snapshots: snapshots.clone() as Arc<dyn SnapshotBodies<TestConfig>>,
        };
        let app = Arc::new(EchoApp::default());
        let shutdown = CancellationToken::new();
        let groups = BTreeMap::from([(served_group, group)]);
        let server =
            RaftServer::start_with(options, tls, groups, app.clone(), shutdown.clone()).unwrap();
        TestServer {
            server,
            shutdown,
            raft,
            snapshots,
            app,
        }
    }

    /// Binds `addr`, retrying until `until` while the old socket is released.
    pub async fn start_retrying(
        tls: &TlsMaterial,
        node_id: NodeId,
        addr: SocketAddr,
        until: Instant,
    ) -> TestServer {
        loop {
            let bound = std::net::UdpSocket::bind(addr).map(drop);
            match bound {
                Ok(()) => return TestServer::start(tls, node_id, addr),
                Err(error) if Instant::now() < until => {
                    tracing::debug!(error = %error, "port still held");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("cannot rebind {addr}: {error}"),
            }
        }
    }

    pub fn addr(&self) -> String {
        self.server.local_addr().to_string()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.server.stopped().await;
    }
}

pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub fn deadline(after: Duration) -> Instant {
    Instant::now() + after
}
