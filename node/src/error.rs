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
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> tonic::Status {
        let message = err.to_string();
        match err {
            ApiError::Unavailable(_) => tonic::Status::unavailable(message),
            ApiError::OutcomeUnknown(_) => tonic::Status::deadline_exceeded(message),
            ApiError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            ApiError::NotFound(_) => tonic::Status::not_found(message),
            ApiError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            ApiError::Internal(_) => tonic::Status::internal(message),
            ApiError::ResourceExhausted(_) => tonic::Status::resource_exhausted(message),
        }
    }
}
