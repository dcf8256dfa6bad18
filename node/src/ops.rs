//! The limits every command is checked against before it is proposed
//! (`validate_command`); the key-value API is `kv.rs`. Writes, routing to the
//! leader and read barriers are the cluster component's (`cluster/`).

use floe_state::Command;

use crate::error::ApiError;
use crate::peer_api::PeerResponse;
use floe_engine::names::quote_bounded;

/// Largest key and value the key-value API accepts.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
pub const MAX_LIST_LIMIT: usize = 10_000;
pub const MAX_FLOW_BYTES: usize = 1024 * 1024;

pub(crate) fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::InvalidArgument("key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::ResourceExhausted(format!(
            "key is {} bytes, more than the fixed limit of {MAX_KEY_BYTES} (4 KiB)",
            key.len()
        )));
    }
    Ok(())
}

fn validate_value(key: &str, value: &[u8]) -> Result<(), ApiError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::ResourceExhausted(format!(
            "value for key {} is {} bytes, more than the fixed limit of {MAX_VALUE_BYTES} (1 MiB)",
            quote_bounded(key),
            value.len()
        )));
    }
    Ok(())
}

pub(crate) fn validate_command(command: &Command) -> Result<(), ApiError> {
    match command {
        Command::KvPut { key, value } => {
            validate_key(key)?;
            validate_value(key, value)
        }
        Command::KvDelete { key } => validate_key(key),
        Command::KvCas { key, expected, new } => {
            validate_key(key)?;
            for value in [expected, new].into_iter().flatten() {
                validate_value(key, value)?;
            }
            Ok(())
        }
        Command::TombstoneNode { .. } => Ok(()),
        Command::PutFlow {
            name, definition, ..
        } if definition.len() > MAX_FLOW_BYTES => Err(ApiError::ResourceExhausted(format!(
            "flow {} definition is {} bytes; the limit is {MAX_FLOW_BYTES}",
            quote_bounded(name),
            definition.len()
        ))),
        Command::PutFlow { .. } => Ok(()),
        Command::StartRun { .. }
        | Command::RunEvent { .. }
        | Command::RunEventTyped { .. }
        | Command::AssignTask { .. }
        | Command::UnassignTask { .. }
        | Command::PurgeRuns { .. }
        | Command::FireTimers { .. } => Ok(()),
        Command::SetLimit { name, .. } if name.is_empty() || name.len() > 256 => {
            Err(ApiError::InvalidArgument(format!(
                "limit name {} must be 1 to 256 bytes",
                quote_bounded(name)
            )))
        }
        Command::SetLimit { .. } => Ok(()),
        Command::PutModel { signature, .. } if signature.len() > MAX_FLOW_BYTES => {
            Err(ApiError::InvalidArgument(format!(
                "model signature is {} bytes; the limit is {MAX_FLOW_BYTES}",
                signature.len()
            )))
        }
        Command::PutModel { .. }
        | Command::DeployModel { .. }
        | Command::UndeployModel { .. }
        | Command::ChangeReplicas { .. }
        | Command::NodeSlots { .. }
        | Command::GrantRole { .. }
        | Command::RevokeRole { .. }
        | Command::CreateToken { .. }
        | Command::RevokeToken { .. } => Ok(()),
        Command::Batch(_) => Err(ApiError::InvalidArgument(
            "batches are formed by the leader, not sent to it".into(),
        )),
    }
}

pub(crate) fn clamp_limit(limit: usize) -> Result<usize, ApiError> {
    match limit {
        0 => Ok(100),
        n if n > MAX_LIST_LIMIT => Err(ApiError::InvalidArgument(format!(
            "limit {n} is above {MAX_LIST_LIMIT}"
        ))),
        n => Ok(n),
    }
}

pub(crate) fn internal(err: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(err.to_string())
}

pub(crate) fn unexpected(response: &PeerResponse) -> ApiError {
    ApiError::Internal(format!("unexpected peer response {response:?}"))
}
