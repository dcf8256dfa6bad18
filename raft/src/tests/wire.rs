use crate::wire::{
    encode_frame, read_frame, FrameError, RemoteError, FORMAT_VERSION, MAX_FRAME_BYTES,
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
    use crate::election::PreVoteRequest;
    use crate::wire::RequestBody;
    let tag = |body: &RequestBody| encode_frame(body).unwrap()[5];
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
