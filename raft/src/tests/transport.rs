//! Identity, refusal and reconnect behaviour of the QUIC transport.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::raft::VoteRequest;

use super::harness::{deadline, localhost, TestCa, TestConfig, TestServer, Vote};
use crate::peers::{Peers, TransportError, TransportOptions};
use crate::tls::PeerIdentity;
use crate::wire::{RemoteError, RequestBody, ResponseBody, DEFAULT_GROUP};

const RPC_TIMEOUT: Duration = Duration::from_secs(5);

fn peers(tls: &crate::TlsMaterial) -> Peers {
    Peers::new(tls, TransportOptions::default()).unwrap()
}

fn vote_request() -> RequestBody<TestConfig> {
    RequestBody::Vote(VoteRequest::new(Vote::new(1, 2), None))
}

fn refusal(result: Result<impl std::fmt::Debug, TransportError>) -> String {
    match result {
        Err(TransportError::Remote {
            source: RemoteError::Refused(reason),
            ..
        }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn unreachable(result: Result<impl std::fmt::Debug, TransportError>) -> String {
    match result {
        Err(TransportError::Unreachable { reason, .. }) => reason,
        other => panic!("expected unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn app_call_between_two_nodes_succeeds() {
    let ca = TestCa::new("c");
    let server = TestServer::start(&ca.node(1), 1, localhost());
    let client = peers(&ca.node(2));

    let reply = client
        .call_app(1, &server.addr(), b"hello".to_vec(), RPC_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(reply, b"node 2: hello");
    // The connection is reused, and its round-trip time is reported.
    let reply = client
        .call_app(1, &server.addr(), b"again".to_vec(), RPC_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(reply, b"node 2: again");
    let rtts = client.rtts();
    assert_eq!(rtts.len(), 1);
    assert_eq!(rtts[0].0, 1);
    assert!(rtts[0].1 < Duration::from_secs(1));
    assert_eq!(server.app.calls.load(Ordering::SeqCst), 2);
    server.stop().await;
}

#[tokio::test]
async fn raft_requests_are_refused_while_not_admitted_and_app_requests_still_served() {
    let ca = TestCa::new("c");
    let admitted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gate = admitted.clone();
    let admission = crate::RaftAdmission::new(move || {
        (!gate.load(Ordering::SeqCst)).then(|| "data dir /d is full".to_string())
    });
    let server =
        TestServer::start_admitting(&ca.node(1), 1, localhost(), Default::default(), admission);
    let client = peers(&ca.node(2));

    let reason = refusal(
        client
            .call(
                1,
                &server.addr(),
                DEFAULT_GROUP,
                vote_request(),
                RPC_TIMEOUT,
            )
            .await,
    );
    assert_eq!(reason, "data dir /d is full");
    assert_eq!(
        server.raft.calls.load(Ordering::SeqCst),
        0,
        "a refused request must not reach raft"
    );
    let reply = client
        .call_app(1, &server.addr(), b"hi".to_vec(), RPC_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(reply, b"node 2: hi");

    admitted.store(true, Ordering::SeqCst);
    let response = client
        .call(
            1,
            &server.addr(),
            DEFAULT_GROUP,
            vote_request(),
            RPC_TIMEOUT,
        )
        .await
        .unwrap();
    assert!(matches!(response, ResponseBody::Vote(vote) if vote.vote_granted));
    assert_eq!(server.raft.calls.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn node_can_send_raft_requests() {
    let ca = TestCa::new("c");
    let server = TestServer::start(&ca.node(1), 1, localhost());
    let client = peers(&ca.node(2));
    let response = client
        .call(
            1,
            &server.addr(),
            DEFAULT_GROUP,
            vote_request(),
            RPC_TIMEOUT,
        )
        .await
        .unwrap();
    assert!(matches!(response, ResponseBody::Vote(vote) if vote.vote_granted));
    assert_eq!(server.raft.calls.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn client_from_another_ca_is_refused_by_the_server() {
    let ca = TestCa::new("ours");
    let foreign = TestCa::new("theirs");
    let server = TestServer::start(&ca.node(1), 1, localhost());
    let intruder = peers(&foreign.node(2));

    let reason = unreachable(
        intruder
            .call_app(1, &server.addr(), b"x".to_vec(), RPC_TIMEOUT)
            .await,
    );
    assert!(reason.contains("handshake"), "{reason}");
    assert_eq!(server.app.calls.load(Ordering::SeqCst), 0);
    server.stop().await;
}

#[tokio::test]
async fn server_from_another_ca_is_refused_by_the_client() {
    let ca = TestCa::new("ours");
    let foreign = TestCa::new("theirs");
    let impostor = TestServer::start(&foreign.node(1), 1, localhost());
    let client = peers(&ca.node(2));

    let reason = unreachable(
        client
            .call_app(1, &impostor.addr(), b"x".to_vec(), RPC_TIMEOUT)
            .await,
    );
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    assert_eq!(impostor.app.calls.load(Ordering::SeqCst), 0);
    impostor.stop().await;
}

#[tokio::test]
async fn dialing_the_wrong_node_is_refused() {
    let ca = TestCa::new("c");
    let node_3 = TestServer::start(&ca.node(3), 3, localhost());
    let client = peers(&ca.node(1));

    let reason = unreachable(
        client
            .call_app(2, &node_3.addr(), b"x".to_vec(), RPC_TIMEOUT)
            .await,
    );
    assert!(reason.contains("node-2.floe"), "{reason}");
    assert_eq!(node_3.app.calls.load(Ordering::SeqCst), 0);
    // The same address answers when dialed as the node that lives there.
    let reply = client
        .call_app(3, &node_3.addr(), b"x".to_vec(), RPC_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(reply, b"node 1: x");
    node_3.stop().await;
}

#[tokio::test]
async fn request_claiming_another_node_is_refused() {
    let ca = TestCa::new("c");
    let server = TestServer::start(&ca.node(1), 1, localhost());
    let node_3 = ca.node(3);
    let liar = Peers::build(
        &node_3,
        PeerIdentity::Node(2),
        node_3.ca_fingerprint().to_string(),
        TransportOptions::default(),
    )
    .unwrap();

    let reason = refusal(
        liar.call(
            1,
            &server.addr(),
            DEFAULT_GROUP,
            vote_request(),
            RPC_TIMEOUT,
        )
        .await,
    );
    assert!(
        reason.contains("node 2") && reason.contains("node 3"),
        "{reason}"
    );
    let reason = refusal(
        liar.call_app(1, &server.addr(), b"x".to_vec(), RPC_TIMEOUT)
            .await,
    );
    assert!(reason.contains("claims"), "{reason}");
    assert_eq!(server.raft.calls.load(Ordering::SeqCst), 0);
    assert_eq!(server.app.calls.load(Ordering::SeqCst), 0);
    server.stop().await;
}

#[tokio::test]
async fn client_certificate_may_send_app_but_not_raft_requests() {
    let ca = TestCa::new("c");
    let server = TestServer::start(&ca.node(1), 1, localhost());
    let cli = peers(&ca.client("cli"));

    let reason = refusal(
        cli.call(
            1,
            &server.addr(),
            DEFAULT_GROUP,
            vote_request(),
            RPC_TIMEOUT,
        )
        .await,
    );
    assert!(
        reason.contains("client cli") && reason.contains("vote"),
        "{reason}"
    );
    assert_eq!(server.raft.calls.load(Ordering::SeqCst), 0);

    let reply = cli
        .call_app(1, &server.addr(), b"status".to_vec(), RPC_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(reply, b"client cli: status");
    server.stop().await;
}

#[tokio::test]
async fn fingerprint_mismatch_is_refused() {
    let ca = TestCa::new("c");
    let server = TestServer::start(&ca.node(1), 1, localhost());
    let node_2 = ca.node(2);
    let confused = Peers::build(
        &node_2,
        PeerIdentity::Node(2),
        "00".repeat(32),
        TransportOptions::default(),
    )
    .unwrap();

    let reason = refusal(
        confused
            .call_app(1, &server.addr(), b"x".to_vec(), RPC_TIMEOUT)
            .await,
    );
    assert!(reason.contains("fingerprint"), "{reason}");
    assert_eq!(server.app.calls.load(Ordering::SeqCst), 0);
    server.stop().await;
}

#[tokio::test]
async fn client_reconnects_after_the_server_restarts_on_the_same_port() {
    let ca = TestCa::new("c");
    let node_1 = ca.node(1);
    let server = TestServer::start(&node_1, 1, localhost());
    let addr = server.server.local_addr();
    let client = peers(&ca.node(2));
    client
        .call_app(1, &addr.to_string(), b"before".to_vec(), RPC_TIMEOUT)
        .await
        .unwrap();
    server.stop().await;

    // While the server is down calls fail fast instead of hanging.
    let down = client
        .call_app(
            1,
            &addr.to_string(),
            b"down".to_vec(),
            Duration::from_secs(2),
        )
        .await;
    assert!(down.is_err(), "{down:?}");

    let until = deadline(Duration::from_secs(15));
    let restarted = TestServer::start_retrying(&node_1, 1, addr, until).await;
    let reply = loop {
        match client
            .call_app(
                1,
                &addr.to_string(),
                b"after".to_vec(),
                Duration::from_secs(1),
            )
            .await
        {
            Ok(reply) => break reply,
            Err(error) if Instant::now() < until => {
                tracing::debug!(error = %error, "not reconnected yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("no reconnect before the deadline: {error}"),
        }
    };
    assert_eq!(reply, b"node 2: after");
    assert_eq!(restarted.app.calls.load(Ordering::SeqCst), 1);
    restarted.stop().await;
}

#[tokio::test]
async fn server_refuses_to_start_with_another_nodes_certificate() {
    let ca = TestCa::new("c");
    let options = crate::RaftServerOptions {
        node_id: 1,
        bind_addr: localhost(),
        transport: Default::default(),
        admission: Default::default(),
    };
    let result = crate::server::RaftServer::start_with(
        options,
        &ca.node(2),
        super::harness::fake_groups(),
        std::sync::Arc::new(super::harness::EchoApp::default()),
        tokio_util::sync::CancellationToken::new(),
    );
    assert!(matches!(
        result,
        Err(crate::ServerError::IdentityMismatch { expected: 1, .. })
    ));
}

#[tokio::test]
async fn dead_peer_is_backed_off_instead_of_redialed_per_call() {
    let ca = TestCa::new("c");
    let options = TransportOptions {
        backoff_initial_ms: 10_000,
        backoff_max_ms: 10_000,
        ..TransportOptions::default()
    };
    let client = Peers::new(&ca.node(2), options).unwrap();
    // Nothing listens on a port we just released.
    let dead_addr = std::net::UdpSocket::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();

    let first = unreachable(
        client
            .call_app(1, &dead_addr, b"x".to_vec(), Duration::from_millis(500))
            .await,
    );
    assert!(!first.contains("backing off"), "{first}");
    let started = Instant::now();
    let second = unreachable(
        client
            .call_app(1, &dead_addr, b"x".to_vec(), Duration::from_secs(5))
            .await,
    );
    assert!(second.contains("backing off"), "{second}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a backed-off call fails fast"
    );
}

/// Accepts any server certificate after a pause: a client that stalls in
/// the middle of its handshake while its connection stays alive.
#[derive(Debug)]
struct StallingVerifier {
    pause: Duration,
}

impl rustls::client::danger::ServerCertVerifier for StallingVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        std::thread::sleep(self.pause);
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        crate::tls::crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Dials `server` with a client that stalls `pause` in its handshake; the
/// outcome of the connection attempt. Runs on its own thread and runtime,
/// since the stall blocks the thread driving the client.
fn dial_stalling(
    tls: &crate::TlsMaterial,
    server: std::net::SocketAddr,
    pause: Duration,
) -> Result<(), String> {
    let mut crypto = tls.client_config(&[crate::RAFT_ALPN]).unwrap();
    crypto
        .dangerous()
        .set_certificate_verifier(std::sync::Arc::new(StallingVerifier { pause }));
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let transport = TransportOptions {
        idle_timeout_ms: 60_000,
        ..TransportOptions::default()
    };
    config.transport_config(std::sync::Arc::new(transport.transport_config().unwrap()));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let endpoint = quinn::Endpoint::client(localhost()).unwrap();
            let connecting = endpoint
                .connect_with(config, server, &crate::tls::node_dns_name(1))
                .map_err(|error| error.to_string())?;
            let connection = connecting.await.map_err(|error| error.to_string())?;
            // The server may have dropped the attempt only after the
            // client's side finished: the first stream then fails.
            let outcome = match tokio::time::timeout(Duration::from_secs(5), connection.open_bi())
                .await
            {
                Ok(Ok(_)) => {
                    match tokio::time::timeout(Duration::from_secs(2), connection.closed()).await {
                        Ok(reason) => Err(reason.to_string()),
                        Err(_) => Ok(()),
                    }
                }
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("no stream within 5 s".to_string()),
            };
            endpoint.close(0u32.into(), b"done");
            outcome
        })
    })
    .join()
    .unwrap()
}

fn server_with_handshake_timeout(
    ca: &TestCa,
    handshake_timeout_ms: u64,
) -> crate::server::RaftServer {
    let options = crate::RaftServerOptions {
        node_id: 1,
        bind_addr: localhost(),
        transport: TransportOptions {
            idle_timeout_ms: 60_000,
            handshake_timeout_ms,
            ..TransportOptions::default()
        },
        admission: Default::default(),
    };
    crate::server::RaftServer::start_with(
        options,
        &ca.node(1),
        super::harness::fake_groups(),
        std::sync::Arc::new(super::harness::EchoApp::default()),
        tokio_util::sync::CancellationToken::new(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_does_not_complete_in_time_is_dropped() {
    let ca = TestCa::new("c");
    let client = ca.node(2);
    // A stall shorter than the server's handshake timeout connects.
    let patient = server_with_handshake_timeout(&ca, 5_000);
    let addr = patient.local_addr();
    let outcome = tokio::task::spawn_blocking({
        let client = client.clone();
        move || dial_stalling(&client, addr, Duration::from_millis(200))
    })
    .await
    .unwrap();
    assert_eq!(
        outcome,
        Ok(()),
        "a handshake within the timeout must succeed"
    );

    // A stall longer than it is dropped, though the idle timeout (60 s) is far off.
    let strict = server_with_handshake_timeout(&ca, 500);
    let addr = strict.local_addr();
    let outcome =
        tokio::task::spawn_blocking(move || dial_stalling(&client, addr, Duration::from_secs(2)))
            .await
            .unwrap();
    assert!(
        outcome.is_err(),
        "the server kept a handshake past its timeout"
    );
}

fn pre_vote_request() -> RequestBody<TestConfig> {
    RequestBody::PreVote(crate::election::PreVoteRequest {
        term: 4,
        last_log_id: None,
    })
}

#[tokio::test]
async fn pre_vote_reaches_the_handler_with_the_askers_certified_id() {
    let ca = TestCa::new("c");
    let server = TestServer::start(&ca.node(1), 1, localhost());
    for (asker, granted) in [(3, true), (2, false)] {
        let client = peers(&ca.node(asker));
        let response = client
            .call(
                1,
                &server.addr(),
                DEFAULT_GROUP,
                pre_vote_request(),
                RPC_TIMEOUT,
            )
            .await
            .unwrap();
        let ResponseBody::PreVote(answer) = response else {
            panic!("expected a pre-vote answer, got {response:?}")
        };
        assert_eq!(answer.granted, granted, "{answer:?}");
        assert_eq!(answer.term, 5);
        if !granted {
            assert_eq!(answer.leader, Some(7));
            assert_eq!(answer.reason, format!("node {asker} asked"));
        }
    }
    assert_eq!(server.raft.calls.load(Ordering::SeqCst), 2);
    server.stop().await;
}

#[tokio::test]
async fn client_certificate_may_not_ask_for_pre_votes() {
    let ca = TestCa::new("c");
    let server = TestServer::start(&ca.node(1), 1, localhost());
    let cli = peers(&ca.client("cli"));
    let reason = refusal(
        cli.call(
            1,
            &server.addr(),
            DEFAULT_GROUP,
            pre_vote_request(),
            RPC_TIMEOUT,
        )
        .await,
    );
    assert!(
        reason.contains("client cli") && reason.contains("pre-vote"),
        "{reason}"
    );
    assert_eq!(server.raft.calls.load(Ordering::SeqCst), 0);
    server.stop().await;
}
