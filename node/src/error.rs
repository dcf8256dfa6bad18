//! Errors the API returns, mapped to gRPC codes. They cross nodes too (a
//! forwarded request's failure travels back to the node the client called).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApiError {
    /// Nothing was applied; retrying elsewhere or later is safe.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request may or may not have been applied.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Out of capacity now (a full model queue); retrying later is safe.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The call names no identity floe accepts (appended: peers decode by position).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller's roles do not allow it; the message names the principal,
    /// the action and the namespace.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

/// The one mapping from apply's refusals to API errors (and so gRPC
/// codes). The message is apply's, unchanged.
pub fn rejection_error(rejection: floe_state::Rejection) -> ApiError {
    use floe_state::Rejection;
    match rejection {
        Rejection::NotFound(message) => ApiError::NotFound(message),
        Rejection::Invalid(message) => ApiError::InvalidArgument(message),
        Rejection::FailedPrecondition(message)
        | Rejection::Stale(message)
        | Rejection::LimitReached(message)
        | Rejection::Unapplied(message) => ApiError::FailedPrecondition(message),
    }
}

/// How a stream ends when its node stops: `UNAVAILABLE`, safe to resume elsewhere.
pub fn shutting_down(node_id: floe_state::NodeId) -> tonic::Status {
    ApiError::Unavailable(format!("node {node_id} is shutting down")).into()
}

/// An apply answer of a kind the command never produces (not a refusal:
/// those go through [`rejection_error`]).
pub fn unexpected_answer(response: &floe_state::CommandResponse) -> ApiError {
    ApiError::Internal(format!("unexpected apply result {response:?}"))
}

/// Longest message a gRPC status carries. Clients read it from a header,
/// and most refuse headers past 8–16 KiB, so a longer one would hide the
/// error it describes. Messages quote names through
/// `floe_engine::names::quote_bounded`; this is the last line of defence.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 4096;

/// `message` cut to [`MAX_STATUS_MESSAGE_BYTES`] at a character boundary,
/// saying how long it was.
pub fn bounded_message(message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE_BYTES {
        return message;
    }
    let mut cut = MAX_STATUS_MESSAGE_BYTES - 64;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}… (message cut, {} bytes in all)",
        &message[..cut],
        message.len()
    )
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> tonic::Status {
        let message = bounded_message(err.to_string());
        match err {
            ApiError::Unavailable(_) => {
                let mut status = tonic::Status::unavailable(message);
                // The node's word that nothing was applied: a client may send
                // a write elsewhere (leader_hint.rs).
                let unapplied = tonic::metadata::MetadataValue::from_static("1");
                status
                    .metadata_mut()
                    .insert(crate::leader_hint::UNAPPLIED_HEADER, unapplied);
                status
            }
            ApiError::OutcomeUnknown(_) => tonic::Status::deadline_exceeded(message),
            ApiError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            ApiError::NotFound(_) => tonic::Status::not_found(message),
            ApiError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            ApiError::Internal(_) => tonic::Status::internal(message),
            ApiError::ResourceExhausted(_) => tonic::Status::resource_exhausted(message),
            ApiError::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            ApiError::PermissionDenied(_) => tonic::Status::permission_denied(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_are_bounded() {
        let status =
            tonic::Status::from(ApiError::NotFound(format!("no run {}", "r".repeat(20_000))));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(
            status.message().len() <= MAX_STATUS_MESSAGE_BYTES,
            "{}",
            status.message().len()
        );
        assert!(
            status.message().starts_with("not found: no run rrr"),
            "{}",
            &status.message()[..40]
        );
        assert!(
            status
                .message()
                .ends_with("(message cut, 20018 bytes in all)"),
            "{}",
            status.message()
        );
        let short = tonic::Status::from(ApiError::InvalidArgument("key is empty".into()));
        assert_eq!(short.message(), "invalid argument: key is empty");
        // A cut never splits a character.
        let wide = bounded_message("é".repeat(3000));
        assert!(
            wide.len() <= MAX_STATUS_MESSAGE_BYTES && wide.contains("6000 bytes in all"),
            "{wide}"
        );
    }

    #[test]
    fn every_rejection_kind_has_one_code_and_keeps_its_message() {
        use floe_state::{CommandResponse, Rejection};
        let cases = [
            (
                Rejection::NotFound("no flow named \"x\"".into()),
                tonic::Code::NotFound,
            ),
            (
                Rejection::Invalid("run input is not JSON".into()),
                tonic::Code::InvalidArgument,
            ),
            (
                Rejection::FailedPrecondition("run r is finished".into()),
                tonic::Code::FailedPrecondition,
            ),
            (
                Rejection::Stale("stale attempt 2 for t".into()),
                tonic::Code::FailedPrecondition,
            ),
            (
                Rejection::LimitReached("task t not placed".into()),
                tonic::Code::FailedPrecondition,
            ),
            (
                Rejection::Unapplied("log entry 3: record".into()),
                tonic::Code::FailedPrecondition,
            ),
        ];
        for (rejection, code) in cases {
            let message = rejection.message().to_string();
            let response = CommandResponse::Rejected(rejection);
            let status = tonic::Status::from(rejection_error(response.rejection().unwrap()));
            assert_eq!(status.code(), code, "{message}");
            assert!(status.message().ends_with(&message), "{}", status.message());
        }
        // A leader of the previous release answers in free text.
        let legacy = CommandResponse::Missing {
            reason: "no flow named \"x\"".into(),
        };
        assert_eq!(
            rejection_error(legacy.rejection().unwrap()),
            ApiError::NotFound("no flow named \"x\"".into())
        );
        assert!(CommandResponse::RunUpdated.rejection().is_none());
    }
}
