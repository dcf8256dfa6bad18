use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use openraft::{CommittedLeaderId, LogId};

use super::harness::{SnapshotMeta, TestConfig, Vote};
use crate::election::PreVoteRequest;
use crate::tls::PeerIdentity;
use crate::wire::{
    encode_frame, encode_request, read_frame, read_request, AppRequest, FrameError, GroupId,
    RemoteError, RequestBody, RequestFrame, ResponseBody, ResponseFrame, DEFAULT_GROUP,
    FORMAT_VERSION, GROUP_FORMAT_VERSION, MAX_FRAME_BYTES,
};

#[tokio::test]
async fn frames_round_trip() {
    let value: Result<Vec<u8>, RemoteError> = Err(RemoteError::Refused("no".to_string()));
    let frame = encode_frame(&value).unwrap();
    assert_eq!(frame[4], FORMAT_VERSION);
    let decoded: Result<Vec<u8>, RemoteError> = read_frame(&mut frame.as_slice()).await.unwrap();
    assert_eq!(decoded, value);
}

#[tokio::test]
async fn oversized_frames_are_refused_on_both_sides() {
    let huge = vec![0u8; MAX_FRAME_BYTES];
    match encode_frame(&huge) {
        Err(FrameError::TooLarge { len, max }) => assert!(len > max),
        other => panic!(
            "expected TooLarge, got {:?}",
            other.map(|frame| frame.len())
        ),
    }
    // A header announcing 100 MiB is refused before anything is allocated.
    let mut header = (100u32 * 1024 * 1024).to_be_bytes().to_vec();
    header.push(FORMAT_VERSION);
    let result: Result<Vec<u8>, FrameError> = read_frame(&mut header.as_slice()).await;
    assert!(
        matches!(result, Err(FrameError::TooLarge { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn unknown_format_version_is_refused() {
    let mut frame = encode_frame(&vec![1u8, 2, 3]).unwrap();
    frame[4] = FORMAT_VERSION + 1;
    let result: Result<Vec<u8>, FrameError> = read_frame(&mut frame.as_slice()).await;
    match result {
        Err(error @ FrameError::UnsupportedVersion { .. }) => {
            assert!(error.to_string().contains("version 2"), "{error}")
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

/// Request kinds are tagged by position: a new kind goes last, so that a
/// peer of the previous release still reads every kind it knows.
#[test]
fn request_kinds_keep_their_tags() {
    let tag = |body: &RequestBody<TestConfig>| encode_frame(body).unwrap()[5];
    assert_eq!(tag(&RequestBody::App(vec![])), 3);
    assert_eq!(
        tag(&RequestBody::PreVote(PreVoteRequest {
            term: 1,
            last_log_id: None
        })),
        4
    );
}

#[tokio::test]
async fn pre_vote_frames_round_trip() {
    use crate::election::PreVoteResponse;
    let answer: Result<PreVoteResponse, RemoteError> = Ok(PreVoteResponse {
        granted: false,
        term: 9,
        leader: Some(2),
        reason: "heard from leader 2 10 ms ago".into(),
    });
    let frame = encode_frame(&answer).unwrap();
    let decoded: Result<PreVoteResponse, RemoteError> =
        read_frame(&mut frame.as_slice()).await.unwrap();
    assert_eq!(decoded, answer);
}

fn log_id(term: u64, index: u64) -> Option<LogId<u64>> {
    Some(LogId::new(CommittedLeaderId::new(term, 1), index))
}

fn request<B>(group: GroupId, from: PeerIdentity, body: B) -> RequestFrame<B> {
    RequestFrame {
        group,
        from,
        cluster: "ab12".into(),
        body,
    }
}

fn heartbeat() -> RequestBody<TestConfig> {
    RequestBody::AppendEntries(AppendEntriesRequest {
        vote: Vote::new_committed(3, 1),
        prev_log_id: log_id(3, 41),
        entries: vec![],
        leader_commit: log_id(3, 40),
    })
}

/// Group-0 requests as the release before group ids encoded them (bytes
/// recorded from that release). A peer of that release must read what this
/// one sends, so these must never change.
#[test]
fn group_zero_requests_are_byte_identical_to_the_previous_release() {
    let node = |id| PeerIdentity::Node(id);
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "append-entries",
            encode_request(&request(DEFAULT_GROUP, node(1), heartbeat())).unwrap(),
            vec![
                0, 0, 0, 21, 1, 0, 1, 4, 97, 98, 49, 50, 0, 3, 1, 1, 1, 3, 1, 41, 0, 1, 3, 1, 40,
            ],
        ),
        (
            "vote",
            encode_request(&request(
                DEFAULT_GROUP,
                node(2),
                RequestBody::<TestConfig>::Vote(VoteRequest::new(Vote::new(4, 2), log_id(3, 41))),
            ))
            .unwrap(),
            vec![
                0, 0, 0, 16, 1, 0, 2, 4, 97, 98, 49, 50, 1, 4, 2, 0, 1, 3, 1, 41,
            ],
        ),
        (
            "snapshot",
            encode_request(&request(
                DEFAULT_GROUP,
                node(1),
                RequestBody::<TestConfig>::Snapshot {
                    vote: Vote::new_committed(3, 1),
                    meta: SnapshotMeta {
                        last_log_id: log_id(3, 41),
                        last_membership: Default::default(),
                        snapshot_id: "3-1-41-7".into(),
                    },
                    total_len: 1_048_577,
                },
            ))
            .unwrap(),
            vec![
                0, 0, 0, 33, 1, 0, 1, 4, 97, 98, 49, 50, 2, 3, 1, 1, 1, 3, 1, 41, 0, 0, 0, 8, 51,
                45, 49, 45, 52, 49, 45, 55, 252, 1, 0, 16, 0,
            ],
        ),
        (
            "app",
            encode_request(&request(
                DEFAULT_GROUP,
                PeerIdentity::Client("ops".into()),
                AppRequest(vec![1, 2, 3]),
            ))
            .unwrap(),
            vec![
                0, 0, 0, 16, 1, 1, 3, 111, 112, 115, 4, 97, 98, 49, 50, 3, 3, 1, 2, 3,
            ],
        ),
        (
            "pre-vote",
            encode_request(&request(
                DEFAULT_GROUP,
                node(3),
                RequestBody::<TestConfig>::PreVote(PreVoteRequest {
                    term: 4,
                    last_log_id: log_id(3, 41),
                }),
            ))
            .unwrap(),
            vec![0, 0, 0, 14, 1, 0, 3, 4, 97, 98, 49, 50, 4, 4, 1, 3, 1, 41],
        ),
    ];
    for (kind, encoded, previous_release) in cases {
        assert_eq!(encoded, previous_release, "{kind} request");
    }
}

#[test]
fn responses_are_byte_identical_to_the_previous_release() {
    let ok: ResponseFrame = Ok(ResponseBody::AppendEntries(AppendEntriesResponse::Success));
    assert_eq!(encode_frame(&ok).unwrap(), vec![0, 0, 0, 4, 1, 0, 0, 0]);
    let refused: ResponseFrame = Err(RemoteError::Refused("raft group 7".into()));
    assert_eq!(
        encode_frame(&refused).unwrap(),
        vec![0, 0, 0, 16, 1, 1, 0, 12, 114, 97, 102, 116, 32, 103, 114, 111, 117, 112, 32, 55]
    );
}

#[tokio::test]
async fn app_requests_encode_as_the_app_request_kind() {
    let from = PeerIdentity::Client("ops".into());
    let typed = request(
        DEFAULT_GROUP,
        from.clone(),
        RequestBody::<TestConfig>::App(vec![9, 8]),
    );
    let untyped = request(DEFAULT_GROUP, from, AppRequest(vec![9, 8]));
    let encoded = encode_request(&untyped).unwrap();
    assert_eq!(encoded, encode_request(&typed).unwrap());
    let read: RequestFrame<RequestBody<TestConfig>> =
        read_request(&mut encoded.as_slice()).await.unwrap();
    assert!(matches!(read.body, RequestBody::App(payload) if payload == vec![9, 8]));
}

#[tokio::test]
async fn version_1_requests_are_read_as_group_zero() {
    let encoded =
        encode_request(&request(DEFAULT_GROUP, PeerIdentity::Node(1), heartbeat())).unwrap();
    assert_eq!(encoded[4], FORMAT_VERSION);
    let read: RequestFrame<RequestBody<TestConfig>> =
        read_request(&mut encoded.as_slice()).await.unwrap();
    assert_eq!(read.group, DEFAULT_GROUP);
    assert_eq!(read.from, PeerIdentity::Node(1));
    assert!(
        matches!(read.body, RequestBody::AppendEntries(rpc) if rpc.prev_log_id == log_id(3, 41))
    );
}

#[tokio::test]
async fn version_2_requests_round_trip_with_their_group() {
    for group in [1, 7, 300, u64::MAX] {
        let encoded = encode_request(&request(group, PeerIdentity::Node(2), heartbeat())).unwrap();
        assert_eq!(encoded[4], GROUP_FORMAT_VERSION, "group {group}");
        let read: RequestFrame<RequestBody<TestConfig>> =
            read_request(&mut encoded.as_slice()).await.unwrap();
        assert_eq!(read.group, group);
        assert_eq!(read.from, PeerIdentity::Node(2));
        assert_eq!(read.cluster, "ab12");
        assert!(
            matches!(&read.body, RequestBody::AppendEntries(rpc) if rpc.leader_commit == log_id(3, 40)),
            "{:?}",
            read.body
        );
    }
}

#[tokio::test]
async fn version_2_is_version_1_payload_after_the_group_id() {
    let group_zero =
        encode_request(&request(DEFAULT_GROUP, PeerIdentity::Node(2), heartbeat())).unwrap();
    let group_seven = encode_request(&request(7, PeerIdentity::Node(2), heartbeat())).unwrap();
    // bincode writes 7 as one byte: the payload grows by exactly that byte.
    assert_eq!(group_seven[5], 7);
    assert_eq!(group_seven[6..], group_zero[5..]);
    // A reader of the previous release (version 1 only) refuses it by version.
    let result: Result<RequestFrame<RequestBody<TestConfig>>, FrameError> =
        read_frame(&mut group_seven.as_slice()).await;
    assert!(
        matches!(result, Err(FrameError::UnsupportedVersion { found: 2, .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn unknown_request_versions_are_refused_naming_the_version() {
    let mut encoded = encode_request(&request(7, PeerIdentity::Node(2), heartbeat())).unwrap();
    encoded[4] = GROUP_FORMAT_VERSION + 1;
    let result: Result<RequestFrame<RequestBody<TestConfig>>, FrameError> =
        read_request(&mut encoded.as_slice()).await;
    match result {
        Err(error @ FrameError::UnsupportedVersion { .. }) => {
            assert!(error.to_string().contains("version 3"), "{error}")
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_group_errors_round_trip_and_name_the_group() {
    let answer: ResponseFrame = Err(RemoteError::UnknownGroup { group: 42 });
    let frame = encode_frame(&answer).unwrap();
    let decoded: ResponseFrame = read_frame(&mut frame.as_slice()).await.unwrap();
    let error = decoded.unwrap_err();
    assert_eq!(error, RemoteError::UnknownGroup { group: 42 });
    assert!(error.to_string().contains("raft group 42"), "{error}");
}
