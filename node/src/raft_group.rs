//! floe's Raft group as floe-raft's transport sees it: group 0, members
//! reached at their `NodeInfo::raft_addr`, snapshot bodies streamed from and
//! into floe-storage's snapshot files. The transport knows neither type, so
//! this crate, which sees both, joins them.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use floe_raft::{GroupTransport, NodeAddress, Peers, SnapshotBodies, DEFAULT_GROUP};
use floe_state::{NodeId, NodeInfo, TypeConfig};
use floe_storage::snapshot::SnapshotFile;
use futures::future::BoxFuture;

/// The transport of the cluster's one Raft group; incoming snapshots are
/// written into `snapshot_dir` (the store's) before install.
pub fn transport(
    peers: Peers,
    node_id: NodeId,
    snapshot_dir: PathBuf,
) -> GroupTransport<TypeConfig> {
    GroupTransport::new(
        peers,
        DEFAULT_GROUP,
        node_id,
        NodeAddress::new(|info: &NodeInfo| info.raft_addr.as_str()),
        Arc::new(SnapshotFiles { dir: snapshot_dir }),
    )
}

/// Snapshot bodies are [`SnapshotFile`]s; incoming ones go to `dir`.
struct SnapshotFiles {
    dir: PathBuf,
}

impl SnapshotBodies<TypeConfig> for SnapshotFiles {
    fn len<'a>(&'a self, body: &'a SnapshotFile) -> BoxFuture<'a, io::Result<u64>> {
        Box::pin(body.len())
    }

    fn read_chunk<'a>(
        &'a self,
        body: &'a SnapshotFile,
        offset: u64,
        len: usize,
    ) -> BoxFuture<'a, io::Result<Vec<u8>>> {
        Box::pin(body.read_at(offset, len))
    }

    fn create_incoming(&self) -> BoxFuture<'_, io::Result<SnapshotFile>> {
        Box::pin(SnapshotFile::create_incoming(&self.dir))
    }

    fn write_chunk<'a>(
        &'a self,
        body: &'a mut SnapshotFile,
        chunk: &'a [u8],
    ) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(body.write_chunk(chunk))
    }

    fn finish_incoming<'a>(&'a self, body: &'a mut SnapshotFile) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(body.finish_receiving())
    }

    fn discard_incoming(&self, body: SnapshotFile) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Removed now rather than on drop, which would block the runtime.
            let _ = tokio::fs::remove_file(body.path()).await;
        })
    }
}
