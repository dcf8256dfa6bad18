//! Shared test fixtures: a CA in a tempdir, servers with fake Raft handlers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_state::{Snapshot, TypeConfig};
use floe_storage::{NodeId, Vote};
use futures::future::BoxFuture;
use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::certs::{create_ca, create_client, create_node};
use crate::election::{PreVoteRequest, PreVoteResponse};
use crate::server::{AppHandler, RaftRpcHandler, RaftServer, RaftServerOptions};
use crate::tls::{PeerIdentity, TlsMaterial};

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

impl RaftRpcHandler for FakeRaft {
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
        _rpc: AppendEntriesRequest<TypeConfig>,
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
            let file = snapshot.snapshot;
            let len = file.len().await.map_err(|_| Fatal::Panicked)?;
            let bytes = file
                .read_at(0, len as usize)
                .await
                .map_err(|_| Fatal::Panicked)?;
            *installed.lock().unwrap() = Some(bytes);
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

/// A running server with fake Raft and echo app handlers.
pub struct TestServer {
    pub server: RaftServer,
    pub shutdown: CancellationToken,
    pub raft: Arc<FakeRaft>,
    pub app: Arc<EchoApp>,
    pub _snapshots: TempDir,
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
        let snapshots = tempfile::tempdir().unwrap();
        let options = RaftServerOptions {
            node_id,
            bind_addr,
            snapshot_dir: snapshots.path().to_path_buf(),
            transport: Default::default(),
            admission,
        };
        let raft = Arc::new(raft);
        let app = Arc::new(EchoApp::default());
        let shutdown = CancellationToken::new();
        let server =
            RaftServer::start_with(options, tls, raft.clone(), app.clone(), shutdown.clone())
                .unwrap();
        TestServer {
            server,
            shutdown,
            raft,
            app,
            _snapshots: snapshots,
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
