//! The snapshot body streamed over a real mTLS QUIC stream.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::harness::{localhost, TestCa};
use crate::peers::{Peers, TransportOptions};
use crate::tls::RAFT_ALPN;
use crate::wire::{
    read_frame, receive_snapshot_body, send_snapshot_body, write_frame, FrameError, SnapshotSink,
    SnapshotSource,
};

/// An in-memory source that records the largest chunk it was asked for.
struct MemorySource {
    bytes: Vec<u8>,
    largest_read: std::sync::atomic::AtomicUsize,
}

impl SnapshotSource for MemorySource {
    async fn total_len(&self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }

    async fn read_chunk(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.largest_read
            .fetch_max(len, std::sync::atomic::Ordering::SeqCst);
        let start = (offset as usize).min(self.bytes.len());
        let end = (start + len).min(self.bytes.len());
        Ok(self.bytes[start..end].to_vec())
    }
}

/// An in-memory sink.
#[derive(Default)]
struct MemorySink {
    bytes: Vec<u8>,
}

impl SnapshotSink for MemorySink {
    async fn write_chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Sends `announced` as the length but streams `source`; returns what the
/// receiver got (or its error).
async fn transfer(source: MemorySource, announced: u64) -> Result<Vec<u8>, FrameError> {
    let ca = TestCa::new("snap");
    let server_tls = ca.node(1);
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(
        server_tls.server_config(&[RAFT_ALPN]).unwrap(),
    )
    .unwrap();
    let endpoint = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        localhost(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap().to_string();

    let receiver = tokio::spawn(async move {
        let connection = endpoint.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = connection.accept_bi().await.unwrap();
        let announced: u64 = read_frame(&mut recv).await.unwrap();
        let mut sink = MemorySink::default();
        let result = receive_snapshot_body(&mut recv, &mut sink, announced).await;
        let outcome = result.map(|()| sink.bytes);
        write_frame(&mut send, &true).await.unwrap();
        send.finish().unwrap();
        // Keep the connection until the sender has read the ack.
        let _ = tokio::time::timeout(Duration::from_secs(5), connection.closed()).await;
        outcome
    });

    let peers = Peers::new(&ca.node(2), TransportOptions::default()).unwrap();
    let connection = peers
        .connection(1, &addr, Duration::from_secs(5))
        .await
        .unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    write_frame(&mut send, &announced).await.unwrap();
    let total = source.bytes.len() as u64;
    send_snapshot_body(&mut send, &source, total, Duration::from_secs(5))
        .await
        .unwrap();
    send.finish().unwrap();
    let acked: bool = read_frame(&mut recv).await.unwrap();
    assert!(acked);
    assert!(
        source
            .largest_read
            .load(std::sync::atomic::Ordering::SeqCst)
            <= crate::wire::SNAPSHOT_CHUNK_BYTES,
        "the sender reads bounded chunks"
    );
    peers.close();
    receiver.await.unwrap()
}

#[tokio::test]
async fn multi_megabyte_snapshot_arrives_byte_identical() {
    let bytes = pseudo_random(5 * 1024 * 1024 + 12_345);
    let expected_hash = Sha256::digest(&bytes);
    let announced = bytes.len() as u64;
    let source = MemorySource {
        bytes,
        largest_read: Default::default(),
    };
    let received = transfer(source, announced).await.unwrap();
    assert_eq!(received.len() as u64, announced);
    assert_eq!(Sha256::digest(&received), expected_hash);
}

#[tokio::test]
async fn truncated_snapshot_is_detected() {
    let bytes = pseudo_random(2 * 1024 * 1024);
    let announced = bytes.len() as u64 + 10;
    let source = MemorySource {
        bytes,
        largest_read: Default::default(),
    };
    match transfer(source, announced).await {
        Err(FrameError::SnapshotLength { expected, received }) => {
            assert_eq!(expected, announced);
            assert_eq!(received, announced - 10);
        }
        other => panic!(
            "expected a length mismatch, got {:?}",
            other.map(|bytes| bytes.len())
        ),
    }
}

#[tokio::test]
async fn overlong_snapshot_is_detected() {
    let bytes = pseudo_random(1024 * 1024 + 7);
    let announced = bytes.len() as u64 - 7;
    let source = MemorySource {
        bytes,
        largest_read: Default::default(),
    };
    let result = transfer(source, announced).await;
    assert!(
        matches!(result, Err(FrameError::SnapshotLength { .. })),
        "{:?}",
        result.map(|b| b.len())
    );
}
