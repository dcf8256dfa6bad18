//! One Raft group's side of the transport.
//!
//! The transport knows nothing of a group's node records or snapshot format:
//! the node layer says how to find a member's QUIC address ([`NodeAddress`])
//! and how to read and write snapshot bodies ([`SnapshotBodies`]), and
//! [`GroupTransport`] carries both with the group id that every request
//! frame of the group names.

use std::fmt;
use std::io;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::peers::Peers;
use crate::wire::{GroupId, SnapshotSink, SnapshotSource};
use crate::{NodeId, RaftTypes};

/// How the transport finds a member's QUIC address (`host:port`) in its
/// membership record (`C::Node`).
pub struct NodeAddress<N> {
    address_of: Arc<dyn Fn(&N) -> &str + Send + Sync>,
}

impl<N> NodeAddress<N> {
    pub fn new(address_of: impl Fn(&N) -> &str + Send + Sync + 'static) -> Self {
        NodeAddress {
            address_of: Arc::new(address_of),
        }
    }

    /// The QUIC address of the member `node` describes.
    pub fn of<'a>(&self, node: &'a N) -> &'a str {
        (self.address_of)(node)
    }
}

impl<N> Clone for NodeAddress<N> {
    fn clone(&self) -> Self {
        NodeAddress {
            address_of: self.address_of.clone(),
        }
    }
}

/// What the transport does with snapshot bodies (`C::SnapshotData`): it
/// streams them in chunks and never interprets them, so it never holds a
/// whole snapshot in memory.
///
/// The sender reads its body with [`len`](Self::len) and
/// [`read_chunk`](Self::read_chunk); the receiver asks for a fresh body
/// ([`create_incoming`](Self::create_incoming)), writes every chunk into it,
/// and makes it durable ([`finish_incoming`](Self::finish_incoming)) before
/// Raft installs it. A body whose transfer failed is handed to
/// [`discard_incoming`](Self::discard_incoming) and never installed.
pub trait SnapshotBodies<C: RaftTypes>: Send + Sync + 'static {
    /// Sender: the body's total size in bytes.
    fn len<'a>(&'a self, body: &'a C::SnapshotData) -> BoxFuture<'a, io::Result<u64>>;

    /// Sender: up to `len` bytes at `offset`; fewer only at the end.
    fn read_chunk<'a>(
        &'a self,
        body: &'a C::SnapshotData,
        offset: u64,
        len: usize,
    ) -> BoxFuture<'a, io::Result<Vec<u8>>>;

    /// Receiver: a new, empty body to write an incoming snapshot into.
    fn create_incoming(&self) -> BoxFuture<'_, io::Result<C::SnapshotData>>;

    /// Receiver: appends `chunk` to what was written so far.
    fn write_chunk<'a>(
        &'a self,
        body: &'a mut C::SnapshotData,
        chunk: &'a [u8],
    ) -> BoxFuture<'a, io::Result<()>>;

    /// Receiver: every byte arrived; make them durable before install.
    fn finish_incoming<'a>(
        &'a self,
        body: &'a mut C::SnapshotData,
    ) -> BoxFuture<'a, io::Result<()>>;

    /// Receiver: the transfer failed; the body must never be installed.
    fn discard_incoming(&self, body: C::SnapshotData) -> BoxFuture<'_, ()>;
}

/// One Raft group's side of the transport: the shared [`Peers`], the group
/// id its frames carry, this node's id, and what the node layer supplies
/// about the group's types. Cheap to clone; give one to the group's
/// [`crate::NetworkFactory`] and [`crate::Elections`].
pub struct GroupTransport<C: RaftTypes> {
    pub(crate) peers: Peers,
    pub(crate) group: GroupId,
    pub(crate) our_id: NodeId,
    pub(crate) address: NodeAddress<C::Node>,
    pub(crate) snapshots: Arc<dyn SnapshotBodies<C>>,
}

impl<C: RaftTypes> GroupTransport<C> {
    pub fn new(
        peers: Peers,
        group: GroupId,
        our_id: NodeId,
        address: NodeAddress<C::Node>,
        snapshots: Arc<dyn SnapshotBodies<C>>,
    ) -> Self {
        GroupTransport {
            peers,
            group,
            our_id,
            address,
            snapshots,
        }
    }

    /// The Raft group this transport serves.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// This node's id.
    pub fn our_id(&self) -> NodeId {
        self.our_id
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }
}

impl<C: RaftTypes> Clone for GroupTransport<C> {
    fn clone(&self) -> Self {
        GroupTransport {
            peers: self.peers.clone(),
            group: self.group,
            our_id: self.our_id,
            address: self.address.clone(),
            snapshots: self.snapshots.clone(),
        }
    }
}

impl<C: RaftTypes> fmt::Debug for GroupTransport<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupTransport")
            .field("group", &self.group)
            .field("our_id", &self.our_id)
            .finish_non_exhaustive()
    }
}

/// A body being sent, read through its group's [`SnapshotBodies`].
pub(crate) struct OutgoingBody<'a, C: RaftTypes> {
    pub bodies: &'a dyn SnapshotBodies<C>,
    pub body: &'a C::SnapshotData,
}

impl<C: RaftTypes> SnapshotSource for OutgoingBody<'_, C> {
    async fn total_len(&self) -> io::Result<u64> {
        self.bodies.len(self.body).await
    }

    async fn read_chunk(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.bodies.read_chunk(self.body, offset, len).await
    }
}

/// A body being received, written through its group's [`SnapshotBodies`].
pub(crate) struct IncomingBody<'a, C: RaftTypes> {
    pub bodies: &'a dyn SnapshotBodies<C>,
    pub body: &'a mut C::SnapshotData,
}

impl<C: RaftTypes> SnapshotSink for IncomingBody<'_, C> {
    async fn write_chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.bodies.write_chunk(self.body, chunk).await
    }
}
