//! The peer wire format.
//!
//! Each RPC is one QUIC bidirectional stream. The caller writes one request
//! frame (a snapshot request is followed by the raw snapshot bytes and the end
//! of the stream) and reads one response frame.
//!
//! A frame is a big-endian `u32` length, then that many bytes: one format
//! version byte and a bincode (serde, standard config) payload.
//!
//! Every request is for one Raft group. A request for group 0 (the only
//! group today) is written in format version 1, byte for byte as releases
//! before group ids wrote it, so those peers still read it; a request for
//! any other group is version 2: the group id, then version 1's payload.
//! Both are read. Responses are always version 1.

use std::future::Future;
use std::io;
use std::time::Duration;

use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::election::{PreVoteRequest, PreVoteResponse};
use crate::tls::PeerIdentity;
use crate::{NodeId, RaftTypes};

/// A Raft group's id. Several groups may share one connection; group 0 is
/// the one every cluster has.
pub type GroupId = u64;
/// The group of a cluster with one Raft group.
pub const DEFAULT_GROUP: GroupId = 0;

/// Version byte of responses and of group-0 requests; bump when the
/// payload types change shape.
pub const FORMAT_VERSION: u8 = 1;
/// Version byte of requests for groups other than 0: the group id precedes
/// version 1's payload.
pub const GROUP_FORMAT_VERSION: u8 = 2;
/// Largest accepted frame (version byte + payload), in bytes.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Size of the raw chunks a snapshot body is streamed in.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Errors reading or writing frames and snapshot bodies.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame would exceed [`MAX_FRAME_BYTES`].
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    /// The peer speaks a format version we do not know.
    #[error("unsupported frame format version {found} (this node reads up to version {newest})")]
    UnsupportedVersion { found: u8, newest: u8 },
    /// A zero-length frame has no version byte.
    #[error("empty frame")]
    Empty,
    /// The payload could not be encoded.
    #[error("encoding frame: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The payload could not be decoded.
    #[error("decoding frame: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// The stream ended before `expected` snapshot bytes arrived, or went on after.
    #[error("snapshot body length mismatch: expected {expected} bytes, received {received}")]
    SnapshotLength { expected: u64, received: u64 },
    /// One snapshot chunk took longer than allowed.
    #[error("snapshot chunk at offset {offset} not sent within {after:?}")]
    ChunkTimeout { offset: u64, after: Duration },
    /// Reading from or writing to the stream (or the snapshot body) failed.
    #[error("stream i/o: {0}")]
    Io(#[from] io::Error),
}

/// A request: for which group, who sends it, under which cluster CA, and
/// what it asks.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RequestFrame<B> {
    /// Not part of version 1's payload: a version 2 frame carries it before
    /// the payload (see [`encode_request`]).
    #[serde(skip)]
    pub group: GroupId,
    /// The identity the sender claims; must match its certificate.
    pub from: PeerIdentity,
    /// The sender's CA fingerprint; must match ours.
    pub cluster: String,
    pub body: B,
}

/// What a request asks for.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) enum RequestBody<C: RaftTypes> {
    AppendEntries(AppendEntriesRequest<C>),
    Vote(VoteRequest<NodeId>),
    /// Followed on the stream by `total_len` raw bytes, then the stream's end.
    Snapshot {
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, C::Node>,
        total_len: u64,
    },
    /// Opaque to the transport; handled by the node layer.
    App(Vec<u8>),
    /// Would the receiver vote for the sender? (appended: older variants keep their tags)
    PreVote(PreVoteRequest),
}

/// The tag of [`RequestBody::App`].
const APP_TAG: u32 = 3;

/// A node-layer request, encoded exactly as [`RequestBody::App`]: such
/// requests belong to no group, so they are sent without a type configuration.
pub(crate) struct AppRequest(pub Vec<u8>);

impl Serialize for AppRequest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_variant("RequestBody", APP_TAG, "App", &self.0)
    }
}

impl<C: RaftTypes> RequestBody<C> {
    /// Raft RPCs may only come from nodes.
    pub fn is_raft(&self) -> bool {
        !matches!(self, RequestBody::App(_))
    }

    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestBody::AppendEntries(_) => "append-entries",
            RequestBody::Vote(_) => "vote",
            RequestBody::Snapshot { .. } => "snapshot",
            RequestBody::App(_) => "app",
            RequestBody::PreVote(_) => "pre-vote",
        }
    }
}

/// A successful response.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ResponseBody {
    AppendEntries(AppendEntriesResponse<NodeId>),
    Vote(VoteResponse<NodeId>),
    Snapshot(SnapshotResponse<NodeId>),
    App(Vec<u8>),
    PreVote(PreVoteResponse),
}

impl ResponseBody {
    pub fn kind(&self) -> &'static str {
        match self {
            ResponseBody::AppendEntries(_) => "append-entries",
            ResponseBody::Vote(_) => "vote",
            ResponseBody::Snapshot(_) => "snapshot",
            ResponseBody::App(_) => "app",
            ResponseBody::PreVote(_) => "pre-vote",
        }
    }
}

/// Why the remote side did not answer a request with a result.
///
/// Raft errors are boxed: they are large and rare, and every result carries this type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    /// The server refused the request (identity, cluster or permission).
    #[error("refused: {0}")]
    Refused(String),
    /// Raft returned an error for a vote or append-entries.
    #[error("raft: {0}")]
    Raft(Box<RaftError<NodeId>>),
    /// Raft failed fatally while installing a snapshot.
    #[error("raft fatal: {0}")]
    Fatal(Box<Fatal<NodeId>>),
    /// The node layer's handler returned an error.
    #[error("{0}")]
    App(String),
    /// The request could not be processed (bad snapshot body, disk error, ...).
    #[error("request failed: {0}")]
    Failed(String),
    /// This node serves no Raft group with this id (appended: older
    /// variants keep their tags).
    #[error("raft group {group} is not served by this node")]
    UnknownGroup { group: GroupId },
}

/// Every response frame carries one of these.
pub(crate) type ResponseFrame = Result<ResponseBody, RemoteError>;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// Encodes `value` as one complete version 1 frame (length prefix included).
pub(crate) fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    encode_versioned(FORMAT_VERSION, value)
}

/// Encodes a request: version 1 for group 0, so that peers of releases
/// before group ids read it; version 2 with the group id otherwise.
pub(crate) fn encode_request<B: Serialize>(
    request: &RequestFrame<B>,
) -> Result<Vec<u8>, FrameError> {
    if request.group == DEFAULT_GROUP {
        encode_versioned(FORMAT_VERSION, request)
    } else {
        encode_versioned(GROUP_FORMAT_VERSION, &(request.group, request))
    }
}

fn encode_versioned<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, FrameError> {
    let payload = bincode::serde::encode_to_vec(value, bincode_config())?;
    let frame_len = payload.len() + 1;
    if frame_len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len: frame_len,
            max: MAX_FRAME_BYTES,
        });
    }
    let mut frame = Vec::with_capacity(4 + frame_len);
    // frame_len <= MAX_FRAME_BYTES (64 MiB) fits in u32.
    frame.extend_from_slice(&(frame_len as u32).to_be_bytes());
    frame.push(version);
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Writes one frame.
pub(crate) async fn write_frame<W, T>(writer: &mut W, value: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode_frame(value)?;
    writer.write_all(&frame).await?;
    Ok(())
}

/// Writes one request frame (see [`encode_request`]).
pub(crate) async fn write_request<W, B>(
    writer: &mut W,
    request: &RequestFrame<B>,
) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    B: Serialize,
{
    let frame = encode_request(request)?;
    writer.write_all(&frame).await?;
    Ok(())
}

/// Reads one version 1 frame (a response).
pub(crate) async fn read_frame<R, T>(reader: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let frame = read_frame_bytes(reader).await?;
    match frame[0] {
        FORMAT_VERSION => decode(&frame[1..]),
        found => Err(FrameError::UnsupportedVersion {
            found,
            newest: FORMAT_VERSION,
        }),
    }
}

/// Reads one request frame of either version; version 1 is group 0's.
pub(crate) async fn read_request<R, B>(reader: &mut R) -> Result<RequestFrame<B>, FrameError>
where
    R: AsyncRead + Unpin,
    B: DeserializeOwned,
{
    let frame = read_frame_bytes(reader).await?;
    match frame[0] {
        FORMAT_VERSION => decode(&frame[1..]),
        GROUP_FORMAT_VERSION => {
            let (group, mut request): (GroupId, RequestFrame<B>) = decode(&frame[1..])?;
            request.group = group;
            Ok(request)
        }
        found => Err(FrameError::UnsupportedVersion {
            found,
            newest: GROUP_FORMAT_VERSION,
        }),
    }
}

/// Reads one frame's bytes (version byte first); the length is checked
/// before anything is allocated.
async fn read_frame_bytes<R>(reader: &mut R) -> Result<Vec<u8>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut length_bytes = [0u8; 4];
    reader.read_exact(&mut length_bytes).await?;
    let frame_len = u32::from_be_bytes(length_bytes) as usize;
    if frame_len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len: frame_len,
            max: MAX_FRAME_BYTES,
        });
    }
    if frame_len == 0 {
        return Err(FrameError::Empty);
    }
    let mut frame = vec![0u8; frame_len];
    reader.read_exact(&mut frame).await?;
    Ok(frame)
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (value, _) = bincode::serde::decode_from_slice(payload, bincode_config())?;
    Ok(value)
}

/// Reads `bytes` as the peer server reads a request off a stream and
/// returns the request encoded again. Public for floe's fuzz targets
/// (`fuzz/`), which feed it arbitrary bytes: it must refuse them with an
/// error, and what it accepts must re-encode to a fixed point.
#[doc(hidden)]
pub fn reencode_request<C: RaftTypes>(bytes: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut reader = bytes;
    // A byte slice is always ready, so this never waits.
    let request = futures::executor::block_on(read_request::<_, RequestBody<C>>(&mut reader))?;
    encode_request(&request)
}

/// [`reencode_request`] for a response frame, as a caller reads it.
#[doc(hidden)]
pub fn reencode_response(bytes: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut reader = bytes;
    let response: ResponseFrame = futures::executor::block_on(read_frame(&mut reader))?;
    encode_frame(&response)
}

/// Where snapshot bytes come from on the sending side.
pub(crate) trait SnapshotSource: Sync {
    /// Total size in bytes.
    fn total_len(&self) -> impl Future<Output = io::Result<u64>> + Send;
    /// Reads up to `len` bytes at `offset`.
    fn read_chunk(
        &self,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = io::Result<Vec<u8>>> + Send;
}

/// Where snapshot bytes go on the receiving side.
pub(crate) trait SnapshotSink: Send {
    /// Appends bytes.
    fn write_chunk(&mut self, chunk: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
}

/// Streams `total_len` bytes of `source` in [`SNAPSHOT_CHUNK_BYTES`] chunks.
///
/// Only one chunk is in memory at a time. Each chunk (read plus write) must
/// finish within `chunk_timeout`: a stalled receiver is noticed without
/// bounding the whole transfer, whose duration grows with the snapshot.
pub(crate) async fn send_snapshot_body<W, S>(
    writer: &mut W,
    source: &S,
    total_len: u64,
    chunk_timeout: Duration,
) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    S: SnapshotSource,
{
    let mut offset = 0u64;
    while offset < total_len {
        let remaining = total_len - offset;
        let chunk_len = remaining.min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
        let send_chunk = async {
            let chunk = source.read_chunk(offset, chunk_len).await?;
            if chunk.is_empty() {
                // The file shrank under us; the receiver would wait forever.
                return Err(FrameError::SnapshotLength {
                    expected: total_len,
                    received: offset,
                });
            }
            writer.write_all(&chunk).await?;
            Ok(chunk.len() as u64)
        };
        let sent = tokio::time::timeout(chunk_timeout, send_chunk)
            .await
            .map_err(|_| FrameError::ChunkTimeout {
                offset,
                after: chunk_timeout,
            })??;
        offset += sent;
    }
    Ok(())
}

/// Receives exactly `total_len` bytes into `sink`, then requires the stream's end.
pub(crate) async fn receive_snapshot_body<R, K>(
    reader: &mut R,
    sink: &mut K,
    total_len: u64,
) -> Result<(), FrameError>
where
    R: AsyncRead + Unpin,
    K: SnapshotSink,
{
    let mut buffer = vec![0u8; SNAPSHOT_CHUNK_BYTES];
    let mut received = 0u64;
    while received < total_len {
        let wanted = (total_len - received).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
        let read = reader.read(&mut buffer[..wanted]).await?;
        if read == 0 {
            return Err(FrameError::SnapshotLength {
                expected: total_len,
                received,
            });
        }
        sink.write_chunk(&buffer[..read]).await?;
        received += read as u64;
    }
    // Anything after the announced length means sender and receiver disagree.
    let trailing = reader.read(&mut buffer[..1]).await?;
    if trailing != 0 {
        return Err(FrameError::SnapshotLength {
            expected: total_len,
            received: received + 1,
        });
    }
    Ok(())
}
